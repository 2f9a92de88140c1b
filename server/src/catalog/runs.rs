//! Runs and their per-node progress in the catalog.

use std::time::Duration;

use sqlx::Row;
use sqlx::sqlite::SqliteRow;
use uuid::Uuid;

use super::{
    ACTIVE_RUN_STATES, Catalog, database_error, from_millis, millis, parse_uuid, write_error,
};
use crate::error::{Error, Result};
use crate::model::run::{
    Counters, ListRuns, NodePhase, NodeProgress, Run, RunKind, RunSpec, RunState,
};

const RUN_COLUMNS: &str = "runs.id, runs.cluster_id, clusters.name AS cluster_name, runs.kind, \
    runs.state, runs.spec, runs.dry_run, runs.idempotency_key, runs.schedule_id, runs.backup_id, \
    runs.error, runs.create_time_ms, runs.start_time_ms, runs.finish_time_ms, runs.update_time_ms, \
    runs.result, runs.started_by";

/// What recording a new run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunInsert {
    /// The run was recorded.
    Inserted,
    /// A run with the same idempotency key and parameters exists: this one.
    Existing(Uuid),
}

impl Catalog {
    /// Records a new queued run with its nodes, unless the cluster has an active run or the
    /// idempotency key was used before.
    ///
    /// A reused key with the same parameters answers [`RunInsert::Existing`]; with other
    /// parameters ALREADY_EXISTS. Another active run of the cluster is FAILED_PRECONDITION
    /// naming it. Check and insert are one transaction.
    pub async fn insert_run(&self, run: &Run) -> Result<RunInsert> {
        let spec = spec_json(&run.spec)?;
        let mut tx = self.begin_write().await?;
        let cluster_id = run.cluster_id.to_string();
        if let Some(key) = &run.idempotency_key {
            let earlier = sqlx::query(
                "SELECT id, spec, dry_run FROM runs WHERE cluster_id = ? AND idempotency_key = ?",
            )
            .bind(&cluster_id)
            .bind(key)
            .fetch_optional(&mut *tx)
            .await
            .map_err(|error| database_error("look up idempotency key", error))?;
            if let Some(row) = earlier {
                let id: String = row.get(0);
                let earlier_spec: String = row.get(1);
                let earlier_dry_run: i64 = row.get(2);
                if earlier_spec == spec && (earlier_dry_run != 0) == run.dry_run {
                    return Ok(RunInsert::Existing(parse_uuid(&id)?));
                }
                return Err(Error::AlreadyExists(format!(
                    "idempotency key {key:?} belongs to run {id}, which has other parameters"
                )));
            }
        }
        if !run.kind.holds_cluster() {
            // A purge or a validation runs beside the cluster's other runs, but alone among
            // runs of its kind.
            let same: Option<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT id FROM runs WHERE cluster_id = ? AND kind = ? \
                 AND state IN {ACTIVE_RUN_STATES} LIMIT 1"
            )))
            .bind(&cluster_id)
            .bind(run.kind.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(|error| database_error("look up active runs of the kind", error))?;
            if let Some(same) = same {
                return Err(Error::FailedPrecondition(format!(
                    "cluster {:?} has an active {} run {same}; wait for it to end or cancel it",
                    run.cluster_name,
                    run.kind.as_str()
                )));
            }
        } else if let Some(active) = super::active_run(&mut tx, &cluster_id).await? {
            return Err(Error::FailedPrecondition(format!(
                "cluster {:?} has an active {} run {} ({}); wait for it to end or cancel it",
                run.cluster_name, active.kind, active.id, active.state
            )));
        }
        sqlx::query(
            "INSERT INTO runs (id, cluster_id, kind, state, create_time_ms, spec, dry_run, \
             idempotency_key, location_id, schedule_id, backup_id, update_time_ms, error, \
             started_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, '', ?)",
        )
        .bind(run.id.to_string())
        .bind(&cluster_id)
        .bind(run.kind.as_str())
        .bind(run.state.as_str())
        .bind(millis(run.create_time))
        .bind(&spec)
        .bind(i64::from(run.dry_run))
        .bind(&run.idempotency_key)
        .bind(run.spec.location_id().to_string())
        .bind(run.schedule_id.map(|id| id.to_string()))
        .bind(run.backup_id.map(|id| id.to_string()))
        .bind(millis(run.update_time))
        .bind(&run.started_by)
        .execute(&mut *tx)
        .await
        .map_err(|error| write_error("insert run", error))?;
        for (position, node) in run.nodes.iter().enumerate() {
            sqlx::query(
                "INSERT INTO run_nodes (run_id, node_id, source_node_id, position, phase) \
                 VALUES (?, ?, ?, ?, ?)",
            )
            .bind(run.id.to_string())
            .bind(node.node_id.to_string())
            .bind(
                node.source_node_id
                    .map(|id| id.to_string())
                    .unwrap_or_default(),
            )
            .bind(i64::try_from(position).unwrap_or(i64::MAX))
            .bind(node.phase.as_str())
            .execute(&mut *tx)
            .await
            .map_err(|error| write_error("insert run node", error))?;
        }
        tx.commit()
            .await
            .map_err(|error| database_error("commit new run", error))?;
        Ok(RunInsert::Inserted)
    }

    /// The run of a cluster recorded with this idempotency key, whatever its parameters.
    pub async fn run_with_key(&self, cluster_id: Uuid, key: &str) -> Result<Option<Uuid>> {
        let id: Option<String> =
            sqlx::query_scalar("SELECT id FROM runs WHERE cluster_id = ? AND idempotency_key = ?")
                .bind(cluster_id.to_string())
                .bind(key)
                .fetch_optional(&self.pool)
                .await
                .map_err(|error| database_error("look up idempotency key", error))?;
        id.map(|id| parse_uuid(&id)).transpose()
    }

    /// Writes a run's state, times, error and backup id, and every node's progress, in one
    /// transaction. Used for every transition, and (throttled) for progress.
    pub async fn save_run(&self, run: &Run) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let id = run.id.to_string();
        sqlx::query(
            "UPDATE runs SET state = ?, error = ?, start_time_ms = ?, finish_time_ms = ?, \
             backup_id = ?, update_time_ms = ?, result = ? WHERE id = ?",
        )
        .bind(run.state.as_str())
        .bind(&run.error)
        .bind(run.start_time.map(millis))
        .bind(run.finish_time.map(millis))
        .bind(run.backup_id.map(|id| id.to_string()))
        .bind(millis(run.update_time))
        .bind(result_json(run)?)
        .bind(&id)
        .execute(&mut *tx)
        .await
        .map_err(|error| database_error("save run", error))?;
        for node in &run.nodes {
            let c = &node.counters;
            sqlx::query(
                "UPDATE run_nodes SET phase = ?, files_total = ?, files_done = ?, files_skipped = ?, \
                 bytes_total = ?, bytes_done = ?, bytes_skipped = ?, bytes_uploaded = ?, \
                 objects_uploaded = ?, rate_bytes_per_s = ?, eta_ms = ?, last_error = ? \
                 WHERE run_id = ? AND node_id = ?",
            )
            .bind(node.phase.as_str())
            .bind(count(c.files_total))
            .bind(count(c.files_done))
            .bind(count(c.files_skipped))
            .bind(count(c.bytes_total))
            .bind(count(c.bytes_done))
            .bind(count(c.bytes_skipped))
            .bind(count(c.bytes_transferred))
            .bind(count(c.objects_uploaded))
            .bind(count(c.rate_bytes_per_second))
            .bind(c.eta.map(|eta| i64::try_from(eta.as_millis()).unwrap_or(i64::MAX)))
            .bind(&node.last_error)
            .bind(&id)
            .bind(node.node_id.to_string())
            .execute(&mut *tx)
            .await
            .map_err(|error| database_error("save run node", error))?;
        }
        tx.commit()
            .await
            .map_err(|error| database_error("commit run", error))
    }

    /// The run with this id.
    pub async fn get_run(&self, id: Uuid) -> Result<Option<Run>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {RUN_COLUMNS} FROM runs JOIN clusters ON clusters.id = runs.cluster_id \
             WHERE runs.id = ?"
        )))
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await
        .map_err(|error| database_error("read run", error))?;
        match row {
            Some(row) => Ok(Some(self.complete_run(&row).await?)),
            None => Ok(None),
        }
    }

    /// Runs newest first, filtered and paged.
    pub async fn list_runs(&self, query: &ListRuns) -> Result<(Vec<Run>, bool)> {
        let states: Vec<&str> = query.states.iter().map(|s| s.as_str()).collect();
        let states_json = serde_json::to_string(&states)
            .map_err(|error| Error::internal("encode state filter", error))?;
        let (after_ms, after_id) = query
            .after
            .map(|(ms, id)| (ms, id.to_string()))
            .unwrap_or((i64::MAX, String::new()));
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {RUN_COLUMNS} FROM runs JOIN clusters ON clusters.id = runs.cluster_id \
             WHERE (runs.create_time_ms < ? OR (runs.create_time_ms = ? AND runs.id < ?)) \
             AND (? IS NULL OR runs.cluster_id = ?) AND (? IS NULL OR runs.kind = ?) \
             AND (? = '[]' OR runs.state IN (SELECT value FROM json_each(?))) \
             AND (? IS NULL OR runs.create_time_ms >= ?) AND (? IS NULL OR runs.create_time_ms <= ?) \
             AND (? IS NULL OR runs.schedule_id = ?) \
             ORDER BY runs.create_time_ms DESC, runs.id DESC LIMIT ?"
        )))
        .bind(after_ms)
        .bind(after_ms)
        .bind(if after_id.is_empty() { "~".to_string() } else { after_id })
        .bind(query.cluster_id.map(|id| id.to_string()))
        .bind(query.cluster_id.map(|id| id.to_string()))
        .bind(query.kind.map(RunKind::as_str))
        .bind(query.kind.map(RunKind::as_str))
        .bind(&states_json)
        .bind(&states_json)
        .bind(query.min_create_ms)
        .bind(query.min_create_ms)
        .bind(query.max_create_ms)
        .bind(query.max_create_ms)
        .bind(query.schedule_id.map(|id| id.to_string()))
        .bind(query.schedule_id.map(|id| id.to_string()))
        .bind(i64::from(query.page_size) + 1)
        .fetch_all(&self.pool)
        .await
        .map_err(|error| database_error("list runs", error))?;
        let more = rows.len() > query.page_size as usize;
        let mut runs = Vec::new();
        for row in rows.iter().take(query.page_size as usize) {
            runs.push(self.complete_run(row).await?);
        }
        Ok((runs, more))
    }

    /// Runs that were queued, running or canceling: after a restart, what was in flight.
    pub async fn runs_in_flight(&self) -> Result<Vec<Run>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {RUN_COLUMNS} FROM runs JOIN clusters ON clusters.id = runs.cluster_id \
             WHERE runs.state IN {ACTIVE_RUN_STATES} ORDER BY runs.create_time_ms"
        )))
        .fetch_all(&self.pool)
        .await
        .map_err(|error| database_error("list runs in flight", error))?;
        let mut runs = Vec::new();
        for row in &rows {
            runs.push(self.complete_run(row).await?);
        }
        Ok(runs)
    }

    async fn complete_run(&self, row: &SqliteRow) -> Result<Run> {
        let mut run = read_run(row)?;
        let rows = sqlx::query(
            "SELECT node_id, source_node_id, phase, files_total, files_done, files_skipped, \
             bytes_total, bytes_done, bytes_skipped, bytes_uploaded, objects_uploaded, \
             rate_bytes_per_s, eta_ms, last_error FROM run_nodes WHERE run_id = ? ORDER BY position",
        )
        .bind(run.id.to_string())
        .fetch_all(&self.pool)
        .await
        .map_err(|error| database_error("read run nodes", error))?;
        run.nodes = rows.iter().map(read_node_progress).collect::<Result<_>>()?;
        Ok(run)
    }
}

fn count(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn uncount(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

pub(super) fn spec_json(spec: &RunSpec) -> Result<String> {
    serde_json::to_string(spec).map_err(|error| Error::internal("encode run spec", error))
}

fn read_run(row: &SqliteRow) -> Result<Run> {
    let get = |error| database_error("decode run row", error);
    let text = |column: &str| row.try_get::<String, _>(column).map_err(get);
    let optional = |column: &str| row.try_get::<Option<String>, _>(column).map_err(get);
    let kind = text("kind")?;
    let state = text("state")?;
    let spec: RunSpec = serde_json::from_str(&text("spec")?)
        .map_err(|error| Error::internal("decode run spec", error))?;
    let optional_uuid = |value: Option<String>| {
        value
            .filter(|v| !v.is_empty())
            .map(|v| parse_uuid(&v))
            .transpose()
    };
    let result = optional("result")?;
    let decode = |what: &'static str| move |error: serde_json::Error| Error::internal(what, error);
    let (validation, purge) = match (kind.as_str(), result) {
        ("validate", Some(json)) => (
            Some(serde_json::from_str(&json).map_err(decode("decode validation result"))?),
            None,
        ),
        ("purge", Some(json)) => (
            None,
            Some(serde_json::from_str(&json).map_err(decode("decode purge result"))?),
        ),
        _ => (None, None),
    };
    Ok(Run {
        validation,
        purge,
        id: parse_uuid(&text("id")?)?,
        cluster_id: parse_uuid(&text("cluster_id")?)?,
        cluster_name: text("cluster_name")?,
        kind: RunKind::parse(&kind)
            .ok_or_else(|| Error::internal("decode run kind", format!("unknown kind {kind:?}")))?,
        state: RunState::parse(&state).ok_or_else(|| {
            Error::internal("decode run state", format!("unknown state {state:?}"))
        })?,
        spec,
        dry_run: row.try_get::<i64, _>("dry_run").map_err(get)? != 0,
        idempotency_key: optional("idempotency_key")?,
        schedule_id: optional_uuid(optional("schedule_id")?)?,
        started_by: text("started_by")?,
        backup_id: optional_uuid(optional("backup_id")?)?,
        error: optional("error")?.unwrap_or_default(),
        create_time: from_millis(row.try_get("create_time_ms").map_err(get)?),
        start_time: row
            .try_get::<Option<i64>, _>("start_time_ms")
            .map_err(get)?
            .map(from_millis),
        finish_time: row
            .try_get::<Option<i64>, _>("finish_time_ms")
            .map_err(get)?
            .map(from_millis),
        update_time: from_millis(row.try_get("update_time_ms").map_err(get)?),
        nodes: Vec::new(),
    })
}

fn read_node_progress(row: &SqliteRow) -> Result<NodeProgress> {
    let get = |error| database_error("decode run node row", error);
    let number = |column: &str| row.try_get::<i64, _>(column).map(uncount).map_err(get);
    let phase: String = row.try_get("phase").map_err(get)?;
    let source: String = row.try_get("source_node_id").map_err(get)?;
    Ok(NodeProgress {
        node_id: parse_uuid(&row.try_get::<String, _>("node_id").map_err(get)?)?,
        source_node_id: if source.is_empty() {
            None
        } else {
            Some(parse_uuid(&source)?)
        },
        phase: NodePhase::parse(&phase).ok_or_else(|| {
            Error::internal("decode node phase", format!("unknown phase {phase:?}"))
        })?,
        counters: Counters {
            files_total: number("files_total")?,
            files_done: number("files_done")?,
            files_skipped: number("files_skipped")?,
            bytes_total: number("bytes_total")?,
            bytes_done: number("bytes_done")?,
            bytes_skipped: number("bytes_skipped")?,
            bytes_transferred: number("bytes_uploaded")?,
            objects_uploaded: number("objects_uploaded")?,
            rate_bytes_per_second: number("rate_bytes_per_s")?,
            eta: row
                .try_get::<Option<i64>, _>("eta_ms")
                .map_err(get)?
                .map(|ms| Duration::from_millis(uncount(ms))),
        },
        last_error: row.try_get("last_error").map_err(get)?,
    })
}

/// The JSON of a run's result (a validation's or a purge's), for the `result` column.
fn result_json(run: &Run) -> Result<Option<String>> {
    let json = match (&run.validation, &run.purge) {
        (Some(validation), _) => Some(serde_json::to_string(validation)),
        (None, Some(purge)) => Some(serde_json::to_string(purge)),
        (None, None) => None,
    };
    json.transpose()
        .map_err(|error| Error::internal("encode run result", error))
}
