//! The coordination of purges with backups, in the catalog: which purge deletes now, and the
//! generation backups key their agents' memory of a location by.

use uuid::Uuid;

use super::{ACTIVE_RUN_STATES, Catalog, database_error, write_error};
use crate::error::Result;

impl Catalog {
    /// Starts a deletion window of purge `run_id` for (`cluster_id`, `location_id`) when no
    /// backup of the cluster at the location is active: the check and the lock are one
    /// transaction, so no backup can be recorded in between. Returns the new generation, or
    /// `None` (not now) while a backup is active.
    pub async fn begin_deletion(
        &self,
        cluster_id: Uuid,
        location_id: Uuid,
        run_id: Uuid,
    ) -> Result<Option<u64>> {
        let (cluster, location) = (cluster_id.to_string(), location_id.to_string());
        let mut tx = self.begin_write().await?;
        // The state list is a constant of this module, not input.
        let active: Option<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT id FROM runs WHERE cluster_id = ? AND location_id = ? AND kind = 'backup' \
             AND state IN {ACTIVE_RUN_STATES} LIMIT 1"
        )))
        .bind(&cluster)
        .bind(&location)
        .fetch_optional(&mut *tx)
        .await
        .map_err(|error| database_error("look up active backups", error))?;
        if active.is_some() {
            return Ok(None);
        }
        let generation: i64 = sqlx::query_scalar(
            "INSERT INTO purge_state (cluster_id, location_id, generation, deleting_run_id) \
             VALUES (?, ?, 1, ?) ON CONFLICT (cluster_id, location_id) DO UPDATE SET \
             generation = generation + 1, deleting_run_id = excluded.deleting_run_id \
             RETURNING generation",
        )
        .bind(&cluster)
        .bind(&location)
        .bind(run_id.to_string())
        .fetch_one(&mut *tx)
        .await
        .map_err(|error| write_error("begin purge deletion", error))?;
        tx.commit()
            .await
            .map_err(|error| database_error("commit purge deletion", error))?;
        Ok(Some(u64::try_from(generation).unwrap_or(0)))
    }

    /// Ends the deletion window of (`cluster_id`, `location_id`).
    pub async fn end_deletion(&self, cluster_id: Uuid, location_id: Uuid) -> Result<()> {
        sqlx::query(
            "UPDATE purge_state SET deleting_run_id = NULL WHERE cluster_id = ? AND location_id = ?",
        )
        .bind(cluster_id.to_string())
        .bind(location_id.to_string())
        .execute(&self.pool)
        .await
        .map_err(|error| database_error("end purge deletion", error))?;
        Ok(())
    }

    /// The purge generation of (`cluster_id`, `location_id`), and whether an active purge is
    /// deleting there now.
    pub async fn purge_generation(
        &self,
        cluster_id: Uuid,
        location_id: Uuid,
    ) -> Result<(u64, bool)> {
        let row: Option<(i64, Option<String>)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT purge_state.generation, runs.id FROM purge_state \
             LEFT JOIN runs ON runs.id = purge_state.deleting_run_id \
             AND runs.state IN {ACTIVE_RUN_STATES} \
             WHERE purge_state.cluster_id = ? AND purge_state.location_id = ?"
        )))
        .bind(cluster_id.to_string())
        .bind(location_id.to_string())
        .fetch_optional(&self.pool)
        .await
        .map_err(|error| database_error("read purge state", error))?;
        Ok(match row {
            Some((generation, deleting)) => {
                (u64::try_from(generation).unwrap_or(0), deleting.is_some())
            }
            None => (0, false),
        })
    }

    /// Whether a backup of the cluster at the location is active (queued, running, canceling).
    pub async fn backup_active_at(&self, cluster_id: Uuid, location_id: Uuid) -> Result<bool> {
        let active: Option<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT id FROM runs WHERE cluster_id = ? AND location_id = ? AND kind = 'backup' \
             AND state IN {ACTIVE_RUN_STATES} LIMIT 1"
        )))
        .bind(cluster_id.to_string())
        .bind(location_id.to_string())
        .fetch_optional(&self.pool)
        .await
        .map_err(|error| database_error("look up active backups", error))?;
        Ok(active.is_some())
    }

    /// The backups that active backup runs of the cluster at the location write.
    pub async fn active_backup_ids(
        &self,
        cluster_id: Uuid,
        location_id: Uuid,
    ) -> Result<Vec<Uuid>> {
        let ids: Vec<Option<String>> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT backup_id FROM runs WHERE cluster_id = ? AND location_id = ? \
             AND kind = 'backup' AND state IN {ACTIVE_RUN_STATES}"
        )))
        .bind(cluster_id.to_string())
        .bind(location_id.to_string())
        .fetch_all(&self.pool)
        .await
        .map_err(|error| database_error("look up active backups", error))?;
        ids.into_iter()
            .flatten()
            .map(|id| super::parse_uuid(&id))
            .collect()
    }
}
