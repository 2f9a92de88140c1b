//! Committed backups in the catalog.

use std::time::SystemTime;

use sqlx::sqlite::SqliteRow;
use sqlx::{Row, Sqlite, Transaction};
use uuid::Uuid;

use super::{Catalog, database_error, from_millis, millis, parse_labels, parse_uuid, write_error};
use crate::error::{Error, Result};
use crate::model::backup::{BackupNodeRecord, BackupRecord, ListBackups};
use crate::model::run::{BackupKind, PathFilter, RunState};

const BACKUP_COLUMNS: &str = "backups.id, backups.cluster_id, clusters.name AS cluster_name, \
    backups.location_id, locations.name AS location_name, backups.kind, backups.parent_backup_id, \
    backups.filter, backups.labels, backups.run_id, backups.schedule_id, backups.start_time_ms, \
    backups.commit_time_ms";

const BACKUP_FROM: &str = "backups JOIN clusters ON clusters.id = backups.cluster_id \
    JOIN locations ON locations.id = backups.location_id";

impl Catalog {
    /// Each cluster's name and the commit time of its newest backup (clusters without one are
    /// left out): the metrics' last-successful-backup times after a restart.
    pub async fn last_backup_times(&self) -> Result<Vec<(String, SystemTime)>> {
        let rows = sqlx::query(
            "SELECT clusters.name, MAX(backups.commit_time_ms) FROM backups \
             JOIN clusters ON clusters.id = backups.cluster_id GROUP BY clusters.name",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(|error| database_error("read last backup times", error))?;
        rows.iter()
            .map(|row| {
                let name: String = row
                    .try_get(0)
                    .map_err(|error| database_error("decode last backup time", error))?;
                let ms: i64 = row
                    .try_get(1)
                    .map_err(|error| database_error("decode last backup time", error))?;
                Ok((name, from_millis(ms)))
            })
            .collect()
    }

    /// When the last backup each schedule started was committed, by schedule id.
    ///
    /// Fails when the catalog cannot be read.
    pub async fn last_backup_times_by_schedule(&self) -> Result<Vec<(Uuid, SystemTime)>> {
        let rows = sqlx::query(
            "SELECT schedule_id, MAX(commit_time_ms) FROM backups \
             WHERE schedule_id IS NOT NULL GROUP BY schedule_id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(|error| database_error("read last backup times", error))?;
        rows.iter()
            .map(|row| {
                let id: String = row
                    .try_get(0)
                    .map_err(|error| database_error("decode last backup time", error))?;
                let ms: i64 = row
                    .try_get(1)
                    .map_err(|error| database_error("decode last backup time", error))?;
                Ok((parse_uuid(&id)?, from_millis(ms)))
            })
            .collect()
    }

    /// Records a committed backup, if its run is still running (a cancel that won the race
    /// means the commit must not count). FAILED_PRECONDITION otherwise.
    pub async fn record_backup(&self, backup: &BackupRecord) -> Result<()> {
        let mut tx = self.begin_write().await?;
        if let Some(run_id) = backup.run_id {
            let state: Option<String> = sqlx::query("SELECT state FROM runs WHERE id = ?")
                .bind(run_id.to_string())
                .fetch_optional(&mut *tx)
                .await
                .map_err(|error| database_error("read run state", error))?
                .map(|row| row.get(0));
            if state.as_deref() != Some(RunState::Running.as_str()) {
                return Err(Error::FailedPrecondition(format!(
                    "run {run_id} is no longer running ({}); the backup is not recorded",
                    state.unwrap_or_else(|| "missing".into())
                )));
            }
        }
        insert_backup(&mut tx, backup).await?;
        tx.commit()
            .await
            .map_err(|error| database_error("commit backup record", error))
    }

    /// Records a backup read from its commit manifest in storage (a catalog rebuilt from a
    /// location), whatever became of the run that made it; a backup recorded already is left
    /// as it is. Returns whether it was recorded now.
    pub async fn import_backup(&self, backup: &BackupRecord) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let known: Option<String> = sqlx::query_scalar("SELECT id FROM backups WHERE id = ?")
            .bind(backup.id.to_string())
            .fetch_optional(&mut *tx)
            .await
            .map_err(|error| database_error("look up backup", error))?;
        if known.is_some() {
            return Ok(false);
        }
        insert_backup(&mut tx, backup).await?;
        tx.commit()
            .await
            .map_err(|error| database_error("commit imported backup", error))?;
        Ok(true)
    }

    /// Every backup of a cluster at a location, oldest first (a few hundred at most in
    /// practice; their files are in storage, not here).
    pub async fn backups_at(
        &self,
        cluster_id: Uuid,
        location_id: Uuid,
    ) -> Result<Vec<BackupRecord>> {
        let mut backups = Vec::new();
        let mut after = None;
        loop {
            let (page, more) = self
                .list_backups(&ListBackups {
                    page_size: 500,
                    after,
                    cluster_id: Some(cluster_id),
                    location_id: Some(location_id),
                    ..ListBackups::default()
                })
                .await?;
            after = page
                .last()
                .map(|backup| (millis(backup.start_time), backup.id));
            backups.extend(page);
            if !more {
                break;
            }
        }
        backups.reverse();
        Ok(backups)
    }

    /// The ids of every backup of a cluster at a location.
    pub async fn backup_ids(&self, cluster_id: Uuid, location_id: Uuid) -> Result<Vec<Uuid>> {
        let ids: Vec<String> =
            sqlx::query_scalar("SELECT id FROM backups WHERE cluster_id = ? AND location_id = ?")
                .bind(cluster_id.to_string())
                .bind(location_id.to_string())
                .fetch_all(&self.pool)
                .await
                .map_err(|error| database_error("list backup ids", error))?;
        ids.iter().map(|id| parse_uuid(id)).collect()
    }

    /// The backup with this id.
    pub async fn get_backup(&self, id: Uuid) -> Result<Option<BackupRecord>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {BACKUP_COLUMNS} FROM {BACKUP_FROM} WHERE backups.id = ?"
        )))
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await
        .map_err(|error| database_error("read backup", error))?;
        match row {
            Some(row) => Ok(Some(self.complete_backup(&row).await?)),
            None => Ok(None),
        }
    }

    /// The newest backup of a cluster in a location: the parent of an incremental one.
    pub async fn latest_backup(
        &self,
        cluster_id: Uuid,
        location_id: Uuid,
    ) -> Result<Option<BackupRecord>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {BACKUP_COLUMNS} FROM {BACKUP_FROM} WHERE backups.cluster_id = ? \
             AND backups.location_id = ? ORDER BY backups.start_time_ms DESC, backups.id DESC LIMIT 1"
        )))
        .bind(cluster_id.to_string())
        .bind(location_id.to_string())
        .fetch_optional(&self.pool)
        .await
        .map_err(|error| database_error("read latest backup", error))?;
        match row {
            Some(row) => Ok(Some(self.complete_backup(&row).await?)),
            None => Ok(None),
        }
    }

    /// The newest backup of a cluster that started at or before `as_of_ms`, optionally only in
    /// one location: the backup a point-in-time restore restores.
    pub async fn backup_at(
        &self,
        cluster_id: Uuid,
        location_id: Option<Uuid>,
        as_of_ms: i64,
    ) -> Result<Option<BackupRecord>> {
        let location = location_id.map(|id| id.to_string());
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {BACKUP_COLUMNS} FROM {BACKUP_FROM} WHERE backups.cluster_id = ? \
             AND (? IS NULL OR backups.location_id = ?) AND backups.start_time_ms <= ? \
             ORDER BY backups.start_time_ms DESC, backups.id DESC LIMIT 1"
        )))
        .bind(cluster_id.to_string())
        .bind(location.clone())
        .bind(location)
        .bind(as_of_ms)
        .fetch_optional(&self.pool)
        .await
        .map_err(|error| database_error("find backup at a point in time", error))?;
        match row {
            Some(row) => Ok(Some(self.complete_backup(&row).await?)),
            None => Ok(None),
        }
    }

    /// Backups newest first, filtered and paged; the flag says whether more follow.
    pub async fn list_backups(&self, query: &ListBackups) -> Result<(Vec<BackupRecord>, bool)> {
        let mut sql = format!(
            "SELECT {BACKUP_COLUMNS} FROM {BACKUP_FROM} \
             WHERE (backups.start_time_ms < ? OR (backups.start_time_ms = ? AND backups.id < ?)) \
             AND (? IS NULL OR backups.cluster_id = ?) AND (? IS NULL OR backups.location_id = ?) \
             AND (? IS NULL OR backups.kind = ?) \
             AND (? IS NULL OR backups.start_time_ms >= ?) AND (? IS NULL OR backups.start_time_ms <= ?)"
        );
        for _ in query.labels.iter() {
            sql.push_str(" AND json_extract(backups.labels, ?) IS ?");
        }
        sql.push_str(" ORDER BY backups.start_time_ms DESC, backups.id DESC LIMIT ?");
        let (after_ms, after_id) = query
            .after
            .map(|(ms, id)| (ms, id.to_string()))
            .unwrap_or((i64::MAX, "~".to_string()));
        let cluster = query.cluster_id.map(|id| id.to_string());
        let location = query.location_id.map(|id| id.to_string());
        let kind = query.kind.map(BackupKind::as_str);
        let mut statement = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(after_ms)
            .bind(after_ms)
            .bind(after_id)
            .bind(cluster.clone())
            .bind(cluster)
            .bind(location.clone())
            .bind(location)
            .bind(kind)
            .bind(kind)
            .bind(query.min_start_ms)
            .bind(query.min_start_ms)
            .bind(query.max_start_ms)
            .bind(query.max_start_ms);
        for (key, value) in &query.labels {
            // Keys are validated label keys: no quotes, safe inside a JSON path.
            statement = statement.bind(format!("$.\"{key}\"")).bind(value.clone());
        }
        let rows = statement
            .bind(i64::from(query.page_size) + 1)
            .fetch_all(&self.pool)
            .await
            .map_err(|error| database_error("list backups", error))?;
        let more = rows.len() > query.page_size as usize;
        let mut backups = Vec::new();
        for row in rows.iter().take(query.page_size as usize) {
            backups.push(self.complete_backup(row).await?);
        }
        Ok((backups, more))
    }

    /// Removes a backup's record. NOT_FOUND when there is none; FAILED_PRECONDITION while an
    /// active run reads or writes it.
    pub async fn delete_backup(&self, id: Uuid) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let active: Option<String> = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT id FROM runs WHERE backup_id = ? AND state IN {} LIMIT 1",
            super::ACTIVE_RUN_STATES
        )))
        .bind(id.to_string())
        .fetch_optional(&mut *tx)
        .await
        .map_err(|error| database_error("look up runs of backup", error))?
        .map(|row| row.get(0));
        if let Some(run) = active {
            return Err(Error::FailedPrecondition(format!(
                "backup {id} is used by active run {run}"
            )));
        }
        let deleted = sqlx::query("DELETE FROM backups WHERE id = ?")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await
            .map_err(|error| database_error("delete backup", error))?;
        if deleted.rows_affected() == 0 {
            return Err(Error::NotFound {
                kind: "backup",
                name: id.to_string(),
            });
        }
        tx.commit()
            .await
            .map_err(|error| database_error("commit backup deletion", error))
    }

    async fn complete_backup(&self, row: &SqliteRow) -> Result<BackupRecord> {
        let mut backup = read_backup(row)?;
        let rows = sqlx::query(
            "SELECT node_id, hostname, datacenter, rack, manifest_path, file_count, total_bytes, \
             uploaded_bytes, uploaded_objects FROM backup_nodes WHERE backup_id = ? ORDER BY position",
        )
        .bind(backup.id.to_string())
        .fetch_all(&self.pool)
        .await
        .map_err(|error| database_error("read backup nodes", error))?;
        for row in &rows {
            let get = |error| database_error("decode backup node", error);
            let number = |column: &str| row.try_get::<i64, _>(column).map(unsigned).map_err(get);
            backup.nodes.push(BackupNodeRecord {
                node_id: parse_uuid(&row.try_get::<String, _>("node_id").map_err(get)?)?,
                hostname: row.try_get("hostname").map_err(get)?,
                datacenter: row.try_get("datacenter").map_err(get)?,
                rack: row.try_get("rack").map_err(get)?,
                manifest_path: row.try_get("manifest_path").map_err(get)?,
                file_count: number("file_count")?,
                total_bytes: number("total_bytes")?,
                uploaded_bytes: number("uploaded_bytes")?,
                uploaded_objects: number("uploaded_objects")?,
            });
        }
        Ok(backup)
    }
}

fn signed(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn unsigned(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

fn read_backup(row: &SqliteRow) -> Result<BackupRecord> {
    let get = |error| database_error("decode backup row", error);
    let text = |column: &str| row.try_get::<String, _>(column).map_err(get);
    let optional_uuid = |column: &str| -> Result<Option<Uuid>> {
        row.try_get::<Option<String>, _>(column)
            .map_err(get)?
            .filter(|v| !v.is_empty())
            .map(|v| parse_uuid(&v))
            .transpose()
    };
    let kind = text("kind")?;
    let filter: PathFilter = serde_json::from_str(&text("filter")?)
        .map_err(|error| Error::internal("decode backup filter", error))?;
    Ok(BackupRecord {
        id: parse_uuid(&text("id")?)?,
        cluster_id: parse_uuid(&text("cluster_id")?)?,
        cluster_name: text("cluster_name")?,
        location_id: parse_uuid(&text("location_id")?)?,
        location_name: text("location_name")?,
        kind: BackupKind::parse(&kind).ok_or_else(|| {
            Error::internal("decode backup kind", format!("unknown kind {kind:?}"))
        })?,
        parent_backup_id: optional_uuid("parent_backup_id")?,
        filter,
        labels: parse_labels(&text("labels")?)?,
        run_id: optional_uuid("run_id")?,
        schedule_id: optional_uuid("schedule_id")?,
        start_time: from_millis(row.try_get("start_time_ms").map_err(get)?),
        commit_time: from_millis(row.try_get("commit_time_ms").map_err(get)?),
        nodes: Vec::new(),
    })
}

/// Inserts a backup's row and its nodes' rows.
async fn insert_backup(tx: &mut Transaction<'static, Sqlite>, backup: &BackupRecord) -> Result<()> {
    let filter = serde_json::to_string(&backup.filter)
        .map_err(|error| Error::internal("encode filter", error))?;
    let labels = serde_json::to_string(&backup.labels)
        .map_err(|error| Error::internal("encode labels", error))?;
    sqlx::query(
        "INSERT INTO backups (id, cluster_id, location_id, kind, parent_backup_id, filter, \
             labels, run_id, schedule_id, start_time_ms, commit_time_ms) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(backup.id.to_string())
    .bind(backup.cluster_id.to_string())
    .bind(backup.location_id.to_string())
    .bind(backup.kind.as_str())
    .bind(backup.parent_backup_id.map(|id| id.to_string()))
    .bind(filter)
    .bind(labels)
    .bind(backup.run_id.map(|id| id.to_string()))
    .bind(backup.schedule_id.map(|id| id.to_string()))
    .bind(millis(backup.start_time))
    .bind(millis(backup.commit_time))
    .execute(&mut **tx)
    .await
    .map_err(|error| write_error("insert backup", error))?;
    for (position, node) in backup.nodes.iter().enumerate() {
        sqlx::query(
            "INSERT INTO backup_nodes (backup_id, node_id, position, hostname, datacenter, rack, \
                 manifest_path, file_count, total_bytes, uploaded_bytes, uploaded_objects) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(backup.id.to_string())
        .bind(node.node_id.to_string())
        .bind(i64::try_from(position).unwrap_or(i64::MAX))
        .bind(&node.hostname)
        .bind(&node.datacenter)
        .bind(&node.rack)
        .bind(&node.manifest_path)
        .bind(signed(node.file_count))
        .bind(signed(node.total_bytes))
        .bind(signed(node.uploaded_bytes))
        .bind(signed(node.uploaded_objects))
        .execute(&mut **tx)
        .await
        .map_err(|error| write_error("insert backup node", error))?;
    }
    Ok(())
}
