//! The catalog: every SQL statement of the server lives here.
//!
//! SQLite through sqlx, opened explicitly (created if missing, WAL, `synchronous = NORMAL`, foreign
//! keys on, a busy timeout) with the migrations of `migrations/` applied at open. Each method is
//! one operation and says what it makes durable. Methods that read and then write take the write
//! lock first (`BEGIN IMMEDIATE`), so a check ("no run is active") and the change it guards are
//! one atomic step even with several server tasks writing.
//!
//! Row structs stay private to this module; callers see domain types only. Constraint
//! violations are turned into domain errors here (unique -> ALREADY_EXISTS, foreign key ->
//! NOT_FOUND); everything unexpected becomes an internal error with the statement's context.

use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};
use uuid::Uuid;

mod backups;
mod locations;
mod purge;
mod runs;
mod schedules;
#[cfg(test)]
pub(crate) mod tests;
mod tokens;
mod validation;
pub use validation::{ListedCounts, ListedReference};

pub use runs::RunInsert;

use crate::error::{Error, Result};
use crate::model::page::Cursor;
use crate::model::{
    AgentAddress, Cluster, ClusterUpdate, DataPath, Labels, ListClusters, Name, Node, NodeInfo,
    NodeSpec, Page,
};

/// How long a statement waits for another writer before failing as unavailable.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Run states in which a run is active.
const ACTIVE_RUN_STATES: &str = "('queued', 'running', 'canceling')";

/// A run that holds a cluster: while it is active the cluster cannot be deleted or change nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveRun {
    pub id: Uuid,
    /// `backup` or `restore`.
    pub kind: String,
    /// Current state.
    pub state: String,
}

/// Handle on the catalog database; cheap to clone.
#[derive(Debug, Clone)]
pub struct Catalog {
    pool: SqlitePool,
}

impl Catalog {
    /// Opens (creating if missing) the catalog at `path` and applies pending migrations.
    ///
    /// Fails when the file cannot be opened or created, or a migration fails (for example a
    /// catalog written by a newer Coffer).
    pub async fn open(path: &Path) -> Result<Self> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|error| Error::internal("create catalog directory", error))?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // WAL with NORMAL: a commit is durable against a crash of the server (it is in the OS
            // before the call returns) and the file never corrupts; a power loss of the host can
            // roll back the last transactions. That is safe here because the authoritative
            // commit point of a backup is its manifest in storage, and start-up recovery finishes
            // any run the catalog shows in flight by looking there. FULL would put a disk flush
            // (behind every dirty page of the filesystem, on ext4) on every run transition.
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await
            .map_err(|error| Error::internal("open catalog", error))?;
        sqlx::migrate!("../migrations")
            .run(&pool)
            .await
            .map_err(|error| Error::internal("migrate catalog", error))?;
        Ok(Self { pool })
    }

    /// Closes every connection, checkpointing the WAL. Waits for in-flight statements.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    async fn begin_write(&self) -> Result<Transaction<'static, Sqlite>> {
        self.pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|error| database_error("begin write transaction", error))
    }

    /// Records a new cluster with its nodes, atomically.
    ///
    /// Fails with ALREADY_EXISTS when the name is taken or a node (by id or address) belongs to
    /// a cluster already; the message names the cluster that has it.
    pub async fn insert_cluster(&self, cluster: &Cluster) -> Result<()> {
        let mut tx = self.begin_write().await?;
        if let Some(existing) = sqlx::query("SELECT id FROM clusters WHERE name = ?")
            .bind(cluster.name.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(|error| database_error("look up cluster name", error))?
        {
            let _: String = existing.get(0);
            return Err(Error::AlreadyExists(format!(
                "a cluster named {:?} exists already",
                cluster.name.as_str()
            )));
        }
        check_nodes_unclaimed(&mut tx, &cluster.nodes).await?;
        sqlx::query(
            "INSERT INTO clusters (id, name, labels, create_time_ms, update_time_ms) \
             VALUES (?, ?, ?, ?, ?)",
        )
        .bind(cluster.id.to_string())
        .bind(cluster.name.as_str())
        .bind(labels_json(&cluster.labels)?)
        .bind(millis(cluster.create_time))
        .bind(millis(cluster.update_time))
        .execute(&mut *tx)
        .await
        .map_err(|error| write_error("insert cluster", error))?;
        for node in &cluster.nodes {
            insert_node(&mut tx, cluster.id, node).await?;
        }
        tx.commit()
            .await
            .map_err(|error| database_error("commit cluster registration", error))
    }

    /// Finds a cluster by id or, failing that, by name.
    pub async fn find_cluster(&self, reference: &str) -> Result<Option<Cluster>> {
        let row = sqlx::query(
            "SELECT id, name, labels, create_time_ms, update_time_ms FROM clusters \
             WHERE id = ? OR name = ? ORDER BY id = ? DESC LIMIT 1",
        )
        .bind(reference)
        .bind(reference)
        .bind(reference)
        .fetch_optional(&self.pool)
        .await
        .map_err(|error| database_error("look up cluster", error))?;
        match row {
            Some(row) => {
                let row = ClusterRow::read(&row)?;
                let nodes = self.nodes_of(&row.id).await?;
                Ok(Some(row.into_cluster(nodes)?))
            }
            None => Ok(None),
        }
    }

    /// Lists clusters by name, a page at a time, keeping those carrying all the query's labels.
    pub async fn list_clusters(&self, query: &ListClusters) -> Result<Page<Cluster>> {
        let mut sql = String::from(
            "SELECT id, name, labels, create_time_ms, update_time_ms FROM clusters WHERE name > ?",
        );
        for _ in query.labels.as_map() {
            // Keys are validated to hold no quotes, so the JSON path can be bound as a value.
            sql.push_str(" AND json_extract(labels, ?) IS ?");
        }
        sql.push_str(" ORDER BY name LIMIT ?");
        let after = query
            .after
            .as_ref()
            .map(|name| name.as_str().to_string())
            .unwrap_or_default();
        let mut statement = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(after);
        for (key, value) in query.labels.as_map() {
            statement = statement.bind(format!("$.\"{key}\"")).bind(value.clone());
        }
        let rows = statement
            .bind(i64::from(query.page_size) + 1)
            .fetch_all(&self.pool)
            .await
            .map_err(|error| database_error("list clusters", error))?;
        let mut clusters = Vec::with_capacity(rows.len());
        for row in rows.iter().take(query.page_size as usize) {
            let row = ClusterRow::read(row)?;
            let nodes = self.nodes_of(&row.id).await?;
            clusters.push(row.into_cluster(nodes)?);
        }
        let next_page_token = if rows.len() > query.page_size as usize {
            clusters
                .last()
                .map(|last| Cursor::AfterName(last.name.clone()).encode())
        } else {
            None
        };
        Ok(Page {
            items: clusters,
            next_page_token,
        })
    }

    /// Applies a cluster change atomically: new nodes (with the info their agents reported),
    /// removed nodes and labels. Returns the cluster as committed.
    ///
    /// Fails with NOT_FOUND when the cluster or a node to remove does not exist,
    /// FAILED_PRECONDITION when nodes change while a run is active or no node would remain, and
    /// ALREADY_EXISTS when a new node belongs to a cluster already.
    pub async fn update_cluster(
        &self,
        cluster_id: Uuid,
        update: &ClusterUpdate,
        new_nodes: &[Node],
        now: SystemTime,
    ) -> Result<Cluster> {
        let mut tx = self.begin_write().await?;
        let id = cluster_id.to_string();
        let row = sqlx::query(
            "SELECT id, name, labels, create_time_ms, update_time_ms FROM clusters WHERE id = ?",
        )
        .bind(&id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(|error| database_error("look up cluster", error))?
        .ok_or_else(|| Error::NotFound {
            kind: "cluster",
            name: update.cluster.clone(),
        })?;
        let row = ClusterRow::read(&row)?;
        if update.changes_nodes()
            && let Some(run) = active_run(&mut tx, &id).await?
        {
            return Err(Error::FailedPrecondition(format!(
                "cluster {:?} has an active {} run {} ({}); nodes can change once it ends",
                row.name, run.kind, run.id, run.state
            )));
        }
        let current: Vec<String> = sqlx::query("SELECT id FROM nodes WHERE cluster_id = ?")
            .bind(&id)
            .fetch_all(&mut *tx)
            .await
            .map_err(|error| database_error("read node ids", error))?
            .iter()
            .map(|row| row.get(0))
            .collect();
        // A node named twice is removed once.
        let removing: std::collections::BTreeSet<Uuid> =
            update.remove_node_ids.iter().copied().collect();
        for node_id in &removing {
            if !current.contains(&node_id.to_string()) {
                return Err(Error::NotFound {
                    kind: "node",
                    name: format!("{node_id} in cluster {}", row.name),
                });
            }
        }
        if current.len() + new_nodes.len() <= removing.len() {
            return Err(Error::FailedPrecondition(format!(
                "cluster {:?} would have no nodes left; delete the cluster instead",
                row.name
            )));
        }
        for node_id in &removing {
            sqlx::query("DELETE FROM nodes WHERE id = ?")
                .bind(node_id.to_string())
                .execute(&mut *tx)
                .await
                .map_err(|error| database_error("remove node", error))?;
        }
        check_nodes_unclaimed(&mut tx, new_nodes).await?;
        for node in new_nodes {
            insert_node(&mut tx, cluster_id, node).await?;
        }
        let labels = Labels::from_catalog(parse_labels(&row.labels)?)
            .apply(&update.set_labels, &update.remove_labels)?;
        sqlx::query("UPDATE clusters SET labels = ?, update_time_ms = ? WHERE id = ?")
            .bind(labels_json(&labels)?)
            .bind(millis(now))
            .bind(&id)
            .execute(&mut *tx)
            .await
            .map_err(|error| database_error("update cluster", error))?;
        tx.commit()
            .await
            .map_err(|error| database_error("commit cluster update", error))?;
        self.find_cluster(&id)
            .await?
            .ok_or_else(|| Error::NotFound {
                kind: "cluster",
                name: update.cluster.clone(),
            })
    }

    /// Deletes a cluster, its nodes, its run records and the catalog's records of its backups
    /// (the backups themselves stay in storage), unless a run of it is active.
    ///
    /// Fails with NOT_FOUND when the cluster does not exist and FAILED_PRECONDITION, naming the
    /// run, while a run is queued, running or canceling.
    pub async fn delete_cluster(&self, cluster_id: Uuid, reference: &str) -> Result<()> {
        let mut tx = self.begin_write().await?;
        let id = cluster_id.to_string();
        if let Some(run) = active_run(&mut tx, &id).await? {
            return Err(Error::FailedPrecondition(format!(
                "cluster {reference:?} has an active {} run {} ({}); cancel it or wait for it to end",
                run.kind, run.id, run.state
            )));
        }
        let deleted = sqlx::query("DELETE FROM clusters WHERE id = ?")
            .bind(&id)
            .execute(&mut *tx)
            .await
            .map_err(|error| database_error("delete cluster", error))?;
        if deleted.rows_affected() == 0 {
            return Err(Error::NotFound {
                kind: "cluster",
                name: reference.to_string(),
            });
        }
        tx.commit()
            .await
            .map_err(|error| database_error("commit cluster deletion", error))
    }

    /// Records fresh agent info for the nodes of a cluster that answered a check.
    pub async fn record_node_info(
        &self,
        cluster_id: Uuid,
        infos: &[NodeInfo],
        now: SystemTime,
    ) -> Result<()> {
        if infos.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        for info in infos {
            sqlx::query(
                "UPDATE nodes SET hostname = ?, data_paths = ?, agent_version = ?, info_time_ms = ? \
                 WHERE id = ? AND cluster_id = ?",
            )
            .bind(&info.hostname)
            .bind(data_paths_json(&info.data_paths)?)
            .bind(&info.agent_version)
            .bind(millis(now))
            .bind(info.node_id.to_string())
            .bind(cluster_id.to_string())
            .execute(&mut *tx)
            .await
            .map_err(|error| database_error("record node info", error))?;
        }
        sqlx::query("UPDATE clusters SET update_time_ms = ? WHERE id = ?")
            .bind(millis(now))
            .bind(cluster_id.to_string())
            .execute(&mut *tx)
            .await
            .map_err(|error| database_error("touch cluster", error))?;
        tx.commit()
            .await
            .map_err(|error| database_error("commit node info", error))
    }

    /// The active run of a cluster, if any.
    pub async fn active_run(&self, cluster_id: Uuid) -> Result<Option<ActiveRun>> {
        let mut connection = self
            .pool
            .acquire()
            .await
            .map_err(|error| database_error("acquire connection", error))?;
        active_run(&mut connection, &cluster_id.to_string()).await
    }

    async fn nodes_of(&self, cluster_id: &str) -> Result<Vec<Node>> {
        sqlx::query(
            "SELECT id, address, datacenter, rack, hostname, data_paths, agent_version, \
             add_time_ms, info_time_ms FROM nodes WHERE cluster_id = ? \
             ORDER BY datacenter, rack, address",
        )
        .bind(cluster_id)
        .fetch_all(&self.pool)
        .await
        .map_err(|error| database_error("read nodes", error))?
        .iter()
        .map(read_node)
        .collect()
    }
}

/// The run that holds a cluster: the active backup or restore run (purges and validations run
/// beside them; purges coordinate with backups through `purge_state`).
async fn active_run(
    connection: &mut sqlx::SqliteConnection,
    cluster_id: &str,
) -> Result<Option<ActiveRun>> {
    // The state list is a constant of this module, not input.
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT id, kind, state FROM runs WHERE cluster_id = ? AND state IN {ACTIVE_RUN_STATES} \
         AND kind IN ('backup', 'restore') ORDER BY create_time_ms LIMIT 1"
    )))
    .bind(cluster_id)
    .fetch_optional(&mut *connection)
    .await
    .map_err(|error| database_error("look up active runs", error))?;
    row.map(|row| {
        Ok(ActiveRun {
            id: parse_uuid(&row.get::<String, _>(0))?,
            kind: row.get(1),
            state: row.get(2),
        })
    })
    .transpose()
}

/// Fails with ALREADY_EXISTS if any of `nodes` (by id or address) is in a cluster already.
async fn check_nodes_unclaimed(
    tx: &mut Transaction<'static, Sqlite>,
    nodes: &[Node],
) -> Result<()> {
    for node in nodes {
        let claimed = sqlx::query(
            "SELECT nodes.id, nodes.address, clusters.name FROM nodes \
             JOIN clusters ON clusters.id = nodes.cluster_id WHERE nodes.id = ? OR nodes.address = ?",
        )
        .bind(node.info.node_id.to_string())
        .bind(node.spec.address.as_str())
        .fetch_optional(&mut **tx)
        .await
        .map_err(|error| database_error("look up node", error))?;
        if let Some(row) = claimed {
            let (id, address, cluster): (String, String, String) =
                (row.get(0), row.get(1), row.get(2));
            return Err(Error::AlreadyExists(format!(
                "node {id} at {address} belongs to cluster {cluster:?} already (asked for {})",
                node.spec.address
            )));
        }
    }
    Ok(())
}

async fn insert_node(
    tx: &mut Transaction<'static, Sqlite>,
    cluster_id: Uuid,
    node: &Node,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO nodes (id, cluster_id, address, datacenter, rack, hostname, data_paths, \
         agent_version, add_time_ms, info_time_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(node.info.node_id.to_string())
    .bind(cluster_id.to_string())
    .bind(node.spec.address.as_str())
    .bind(&node.spec.datacenter)
    .bind(&node.spec.rack)
    .bind(&node.info.hostname)
    .bind(data_paths_json(&node.info.data_paths)?)
    .bind(&node.info.agent_version)
    .bind(millis(node.add_time))
    .bind(millis(node.info_time))
    .execute(&mut **tx)
    .await
    .map_err(|error| write_error("insert node", error))?;
    Ok(())
}

struct ClusterRow {
    id: String,
    name: String,
    labels: String,
    create_time_ms: i64,
    update_time_ms: i64,
}

impl ClusterRow {
    fn read(row: &SqliteRow) -> Result<Self> {
        let get = |error| database_error("decode cluster row", error);
        Ok(Self {
            id: row.try_get("id").map_err(get)?,
            name: row.try_get("name").map_err(get)?,
            labels: row.try_get("labels").map_err(get)?,
            create_time_ms: row.try_get("create_time_ms").map_err(get)?,
            update_time_ms: row.try_get("update_time_ms").map_err(get)?,
        })
    }

    fn into_cluster(self, nodes: Vec<Node>) -> Result<Cluster> {
        Ok(Cluster {
            id: parse_uuid(&self.id)?,
            name: Name::parse("catalog clusters.name", &self.name)
                .map_err(|error| Error::internal("decode cluster name", error))?,
            labels: Labels::from_catalog(parse_labels(&self.labels)?),
            nodes,
            create_time: from_millis(self.create_time_ms),
            update_time: from_millis(self.update_time_ms),
        })
    }
}

fn read_node(row: &SqliteRow) -> Result<Node> {
    let get = |error| database_error("decode node row", error);
    let data_paths: String = row.try_get("data_paths").map_err(get)?;
    Ok(Node {
        spec: NodeSpec {
            address: AgentAddress::from_catalog(row.try_get("address").map_err(get)?),
            datacenter: row.try_get("datacenter").map_err(get)?,
            rack: row.try_get("rack").map_err(get)?,
        },
        info: NodeInfo {
            node_id: parse_uuid(&row.try_get::<String, _>("id").map_err(get)?)?,
            hostname: row.try_get("hostname").map_err(get)?,
            data_paths: serde_json::from_str(&data_paths)
                .map_err(|error| Error::internal("decode node data paths", error))?,
            agent_version: row.try_get("agent_version").map_err(get)?,
        },
        add_time: from_millis(row.try_get("add_time_ms").map_err(get)?),
        info_time: from_millis(row.try_get("info_time_ms").map_err(get)?),
    })
}

fn parse_uuid(text: &str) -> Result<Uuid> {
    Uuid::from_str(text).map_err(|error| Error::internal("decode id from catalog", error))
}

fn parse_labels(json: &str) -> Result<BTreeMap<String, String>> {
    serde_json::from_str(json).map_err(|error| Error::internal("decode labels", error))
}

fn labels_json(labels: &Labels) -> Result<String> {
    serde_json::to_string(labels.as_map()).map_err(|error| Error::internal("encode labels", error))
}

fn data_paths_json(paths: &[DataPath]) -> Result<String> {
    serde_json::to_string(paths).map_err(|error| Error::internal("encode data paths", error))
}

/// Milliseconds since the Unix epoch (0 for times before it, which the server never makes).
fn millis(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map(|since| i64::try_from(since.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn from_millis(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// A failed statement: busy or unreachable database -> UNAVAILABLE, the rest INTERNAL.
fn database_error(context: &'static str, error: sqlx::Error) -> Error {
    let busy = match &error {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => true,
        // SQLITE_BUSY (5) and SQLITE_LOCKED (6), with their extended codes (primary in the low
        // byte): another writer held the lock past the busy timeout.
        sqlx::Error::Database(db) => db
            .code()
            .and_then(|code| code.parse::<i32>().ok())
            .is_some_and(|code| matches!(code & 0xff, 5 | 6)),
        _ => false,
    };
    if busy {
        tracing::warn!(%error, context, "catalog busy");
        Error::Unavailable(format!("the catalog is busy ({context}); try again"))
    } else {
        Error::internal(context, error)
    }
}

/// A failed write: a unique violation that the explicit checks did not catch (a concurrent
/// writer) becomes ALREADY_EXISTS, a foreign key violation NOT_FOUND.
fn write_error(context: &'static str, error: sqlx::Error) -> Error {
    if let sqlx::Error::Database(db) = &error {
        if db.is_unique_violation() {
            return Error::AlreadyExists(format!("{context}: {}", db.message()));
        }
        if db.is_foreign_key_violation() {
            return Error::NotFound {
                kind: "referenced record",
                name: context.to_string(),
            };
        }
    }
    database_error(context, error)
}
