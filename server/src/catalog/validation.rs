//! The objects a validate or purge run listed, kept in the catalog while it runs (a location's
//! listing can be far larger than the server's memory should hold), with whether a backup
//! refers to each.

use uuid::Uuid;

use super::{Catalog, database_error};
use crate::error::Result;

/// What a run's listing says of an object a backup refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedReference {
    pub hash: String,
    /// Its stored size; `None` when the listing does not hold it (missing).
    pub stored_size: Option<u64>,
    /// Why it is damaged, when that was found.
    pub damage: Option<String>,
}

/// What a run's listing counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListedCounts {
    /// Listed objects a backup refers to.
    pub referenced: u64,
    /// Objects a backup refers to that are not listed.
    pub missing: u64,
    pub orphaned: u64,
    pub orphaned_bytes: u64,
    /// Referenced objects found damaged.
    pub damaged: u64,
}

impl Catalog {
    /// Records a page of listed objects (content hash, stored size) of a validate run.
    pub async fn add_listed_objects(&self, run_id: Uuid, objects: &[(String, u64)]) -> Result<()> {
        let run = run_id.to_string();
        let mut tx = self.begin_write().await?;
        for (hash, size) in objects {
            sqlx::query(
                "INSERT OR IGNORE INTO validation_objects (run_id, hash, size) VALUES (?, ?, ?)",
            )
            .bind(&run)
            .bind(hash)
            .bind(i64::try_from(*size).unwrap_or(i64::MAX))
            .execute(&mut *tx)
            .await
            .map_err(|error| database_error("record listed object", error))?;
        }
        tx.commit()
            .await
            .map_err(|error| database_error("commit listed objects", error))
    }

    /// Marks `hashes` as referenced among a run's listed objects; returns what the listing
    /// says of each (in the order given): its stored size, `None` when it was not listed
    /// (missing from the location), and the damage recorded for it.
    pub async fn mark_referenced(
        &self,
        run_id: Uuid,
        hashes: &[String],
    ) -> Result<Vec<ListedReference>> {
        let run = run_id.to_string();
        let mut listed = Vec::with_capacity(hashes.len());
        let mut tx = self.begin_write().await?;
        for hash in hashes {
            let row: Option<(i64, Option<String>)> = sqlx::query_as(
                "UPDATE validation_objects SET referenced = 1 WHERE run_id = ? AND hash = ? \
                 RETURNING size, damage",
            )
            .bind(&run)
            .bind(hash)
            .fetch_optional(&mut *tx)
            .await
            .map_err(|error| database_error("mark referenced object", error))?;
            listed.push(ListedReference {
                hash: hash.clone(),
                // A row of size -1 is a missing object recorded by `record_missing`.
                stored_size: row.as_ref().and_then(|(size, _)| u64::try_from(*size).ok()),
                damage: row.and_then(|(_, damage)| damage),
            });
        }
        tx.commit()
            .await
            .map_err(|error| database_error("commit referenced objects", error))?;
        Ok(listed)
    }

    /// Records objects a backup refers to that the run's listing does not hold (missing from
    /// the location): counted once however many backups need them, and found missing again
    /// by [`Catalog::mark_referenced`].
    pub async fn record_missing(&self, run_id: Uuid, hashes: &[String]) -> Result<()> {
        let run = run_id.to_string();
        let mut tx = self.begin_write().await?;
        for hash in hashes {
            sqlx::query(
                "INSERT OR IGNORE INTO validation_objects (run_id, hash, size, referenced) \
                 VALUES (?, ?, -1, 1)",
            )
            .bind(&run)
            .bind(hash)
            .execute(&mut *tx)
            .await
            .map_err(|error| database_error("record missing object", error))?;
        }
        tx.commit()
            .await
            .map_err(|error| database_error("commit missing objects", error))
    }

    /// Records why listed objects of a run are damaged (hash, reason).
    pub async fn record_damage(&self, run_id: Uuid, damaged: &[(String, String)]) -> Result<()> {
        let run = run_id.to_string();
        let mut tx = self.begin_write().await?;
        for (hash, reason) in damaged {
            sqlx::query("UPDATE validation_objects SET damage = ? WHERE run_id = ? AND hash = ?")
                .bind(reason)
                .bind(&run)
                .bind(hash)
                .execute(&mut *tx)
                .await
                .map_err(|error| database_error("record damaged object", error))?;
        }
        tx.commit()
            .await
            .map_err(|error| database_error("commit damaged objects", error))
    }

    /// What a run's listing counts.
    pub async fn listed_object_counts(&self, run_id: Uuid) -> Result<ListedCounts> {
        let (referenced, missing, orphaned, orphaned_bytes, damaged): (i64, i64, i64, i64, i64) =
            sqlx::query_as(
                "SELECT \
                 coalesce(sum(CASE WHEN referenced = 1 AND size >= 0 THEN 1 ELSE 0 END), 0), \
                 coalesce(sum(CASE WHEN size < 0 THEN 1 ELSE 0 END), 0), \
                 coalesce(sum(1 - referenced), 0), \
                 coalesce(sum(CASE WHEN referenced = 0 THEN size ELSE 0 END), 0), \
                 coalesce(sum(CASE WHEN referenced = 1 AND damage IS NOT NULL THEN 1 ELSE 0 END), 0) \
                 FROM validation_objects WHERE run_id = ?",
            )
            .bind(run_id.to_string())
            .fetch_one(&self.pool)
            .await
            .map_err(|error| database_error("count listed objects", error))?;
        let unsigned = |value: i64| u64::try_from(value).unwrap_or(0);
        Ok(ListedCounts {
            referenced: unsigned(referenced),
            missing: unsigned(missing),
            orphaned: unsigned(orphaned),
            orphaned_bytes: unsigned(orphaned_bytes),
            damaged: unsigned(damaged),
        })
    }

    /// Chooses the referenced, undamaged objects of a run's listing that a deep validation
    /// verifies: `count` of them, those verified longest ago (or never) at the location first.
    /// Returns how many were chosen.
    pub async fn choose_objects_to_verify(
        &self,
        run_id: Uuid,
        cluster_id: Uuid,
        location_id: Uuid,
        count: u64,
    ) -> Result<u64> {
        let run = run_id.to_string();
        let chosen = sqlx::query(
            "UPDATE validation_objects SET to_verify = 1 WHERE run_id = ? AND hash IN ( \
               SELECT v.hash FROM validation_objects v LEFT JOIN verified_objects w \
                 ON w.cluster_id = ? AND w.location_id = ? AND w.hash = v.hash \
               WHERE v.run_id = ? AND v.referenced = 1 AND v.size >= 0 AND v.damage IS NULL \
               ORDER BY w.verify_time_ms IS NOT NULL, w.verify_time_ms, v.hash LIMIT ?)",
        )
        .bind(&run)
        .bind(cluster_id.to_string())
        .bind(location_id.to_string())
        .bind(&run)
        .bind(i64::try_from(count).unwrap_or(i64::MAX))
        .execute(&self.pool)
        .await
        .map_err(|error| database_error("choose objects to verify", error))?;
        Ok(chosen.rows_affected())
    }

    /// Up to `limit` of the objects chosen for verification (hash, stored size), by hash,
    /// after `after` (empty: from the first).
    pub async fn objects_to_verify(
        &self,
        run_id: Uuid,
        after: &str,
        limit: u32,
    ) -> Result<Vec<(String, u64)>> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT hash, size FROM validation_objects \
             WHERE run_id = ? AND to_verify = 1 AND hash > ? ORDER BY hash LIMIT ?",
        )
        .bind(run_id.to_string())
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(|error| database_error("list objects to verify", error))?;
        Ok(rows
            .into_iter()
            .map(|(hash, size)| (hash, u64::try_from(size).unwrap_or(0)))
            .collect())
    }

    /// Records what verifying objects found: the intact ones verified at `now_ms` at the
    /// location, the damaged ones (hash, reason) damaged in the run's listing.
    pub async fn record_verified(
        &self,
        run_id: Uuid,
        cluster_id: Uuid,
        location_id: Uuid,
        intact: &[String],
        damaged: &[(String, String)],
        now_ms: i64,
    ) -> Result<()> {
        let (cluster, location) = (cluster_id.to_string(), location_id.to_string());
        let mut tx = self.begin_write().await?;
        for hash in intact {
            sqlx::query(
                "INSERT INTO verified_objects (cluster_id, location_id, hash, verify_time_ms) \
                 VALUES (?, ?, ?, ?) ON CONFLICT (cluster_id, location_id, hash) \
                 DO UPDATE SET verify_time_ms = excluded.verify_time_ms",
            )
            .bind(&cluster)
            .bind(&location)
            .bind(hash)
            .bind(now_ms)
            .execute(&mut *tx)
            .await
            .map_err(|error| database_error("record verified object", error))?;
        }
        let run = run_id.to_string();
        for (hash, reason) in damaged {
            sqlx::query("UPDATE validation_objects SET damage = ? WHERE run_id = ? AND hash = ?")
                .bind(reason)
                .bind(&run)
                .bind(hash)
                .execute(&mut *tx)
                .await
                .map_err(|error| database_error("record damaged object", error))?;
            sqlx::query(
                "DELETE FROM verified_objects WHERE cluster_id = ? AND location_id = ? AND hash = ?",
            )
            .bind(&cluster)
            .bind(&location)
            .bind(hash)
            .execute(&mut *tx)
            .await
            .map_err(|error| database_error("forget verified object", error))?;
        }
        tx.commit()
            .await
            .map_err(|error| database_error("commit verified objects", error))
    }

    /// Referenced objects of a run's listing that no deep validation verified intact at the
    /// location.
    pub async fn never_verified_count(
        &self,
        run_id: Uuid,
        cluster_id: Uuid,
        location_id: Uuid,
    ) -> Result<u64> {
        let count: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM validation_objects v LEFT JOIN verified_objects w \
               ON w.cluster_id = ? AND w.location_id = ? AND w.hash = v.hash \
             WHERE v.run_id = ? AND v.referenced = 1 AND v.size >= 0 AND w.hash IS NULL",
        )
        .bind(cluster_id.to_string())
        .bind(location_id.to_string())
        .bind(run_id.to_string())
        .fetch_one(&self.pool)
        .await
        .map_err(|error| database_error("count never verified objects", error))?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// Forgets the verifications of the cluster's objects at the location that a run's
    /// listing no longer holds (a purge deleted them): the table stays as large as the
    /// location.
    pub async fn forget_unlisted_verifications(
        &self,
        run_id: Uuid,
        cluster_id: Uuid,
        location_id: Uuid,
    ) -> Result<u64> {
        let forgotten = sqlx::query(
            "DELETE FROM verified_objects WHERE cluster_id = ? AND location_id = ? \
             AND hash NOT IN (SELECT hash FROM validation_objects WHERE run_id = ? AND size >= 0)",
        )
        .bind(cluster_id.to_string())
        .bind(location_id.to_string())
        .bind(run_id.to_string())
        .execute(&self.pool)
        .await
        .map_err(|error| database_error("forget unlisted verifications", error))?;
        Ok(forgotten.rows_affected())
    }

    /// Up to `limit` listed objects of the run that nothing references (content hash, size).
    pub async fn unreferenced_objects(
        &self,
        run_id: Uuid,
        limit: u32,
    ) -> Result<Vec<(String, u64)>> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT hash, size FROM validation_objects WHERE run_id = ? AND referenced = 0 \
             ORDER BY hash LIMIT ?",
        )
        .bind(run_id.to_string())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(|error| database_error("list unreferenced objects", error))?;
        Ok(rows
            .into_iter()
            .map(|(hash, size)| (hash, u64::try_from(size).unwrap_or(0)))
            .collect())
    }

    /// Drops objects from the run's listing (a purge deleted them).
    pub async fn forget_listed_objects(&self, run_id: Uuid, hashes: &[String]) -> Result<()> {
        let run = run_id.to_string();
        let mut tx = self.begin_write().await?;
        for hash in hashes {
            sqlx::query("DELETE FROM validation_objects WHERE run_id = ? AND hash = ?")
                .bind(&run)
                .bind(hash)
                .execute(&mut *tx)
                .await
                .map_err(|error| database_error("forget listed object", error))?;
        }
        tx.commit()
            .await
            .map_err(|error| database_error("commit forgotten objects", error))
    }

    /// Forgets a validate run's listing (when it ends, or after a restart).
    pub async fn clear_listed_objects(&self, run_id: Uuid) -> Result<()> {
        sqlx::query("DELETE FROM validation_objects WHERE run_id = ?")
            .bind(run_id.to_string())
            .execute(&self.pool)
            .await
            .map_err(|error| database_error("clear listed objects", error))?;
        Ok(())
    }
}
