//! The objects a validate or purge run listed, kept in the catalog while it runs (a location's
//! listing can be far larger than the server's memory should hold), with whether a backup
//! refers to each.

use uuid::Uuid;

use super::{Catalog, database_error};
use crate::error::Result;

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

    /// Marks `hashes` as referenced among a validate run's listed objects; returns those that
    /// were not listed (missing from the location).
    pub async fn mark_referenced(&self, run_id: Uuid, hashes: &[String]) -> Result<Vec<String>> {
        let run = run_id.to_string();
        let mut missing = Vec::new();
        let mut tx = self.begin_write().await?;
        for hash in hashes {
            let updated = sqlx::query(
                "UPDATE validation_objects SET referenced = 1 WHERE run_id = ? AND hash = ?",
            )
            .bind(&run)
            .bind(hash)
            .execute(&mut *tx)
            .await
            .map_err(|error| database_error("mark referenced object", error))?;
            if updated.rows_affected() == 0 {
                missing.push(hash.clone());
            }
        }
        tx.commit()
            .await
            .map_err(|error| database_error("commit referenced objects", error))?;
        Ok(missing)
    }

    /// (referenced, orphaned, orphaned bytes) among a validate run's listed objects.
    pub async fn listed_object_counts(&self, run_id: Uuid) -> Result<(u64, u64, u64)> {
        let (referenced, orphaned, orphaned_bytes): (i64, i64, i64) = sqlx::query_as(
            "SELECT coalesce(sum(referenced), 0), coalesce(sum(1 - referenced), 0), \
             coalesce(sum(CASE WHEN referenced = 0 THEN size ELSE 0 END), 0) \
             FROM validation_objects WHERE run_id = ?",
        )
        .bind(run_id.to_string())
        .fetch_one(&self.pool)
        .await
        .map_err(|error| database_error("count listed objects", error))?;
        let unsigned = |value: i64| u64::try_from(value).unwrap_or(0);
        Ok((
            unsigned(referenced),
            unsigned(orphaned),
            unsigned(orphaned_bytes),
        ))
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
