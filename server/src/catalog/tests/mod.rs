//! The catalog's own test suite: every operation of [`Catalog`] against a real database.
//!
//! The tests use the public methods of [`Catalog`] and the domain types only (no SQL, no row
//! structs), so that each engine the catalog runs on passes the same suite. A test is written
//! once, as a plain function, and listed in [`catalog_tests!`], which runs it once per engine;
//! an engine is a function that opens a fresh, empty, migrated catalog. Today that is SQLite: a
//! new file in a temporary directory, opened through [`Catalog::open`] exactly as the server
//! opens it. A second engine (PostgreSQL) adds its module to the macro and runs everything here.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tempfile::TempDir;
use uuid::Uuid;

use crate::catalog::Catalog;
use crate::model::backup::{BackupNodeRecord, BackupRecord};
use crate::model::location::{Compression, Location, LocationOptions};
use crate::model::run::{
    BackupKind, BackupSpec, NodeProgress, PathFilter, Run, RunKind, RunSpec, RunState,
    TransferLimits,
};
use crate::model::{AgentAddress, Cluster, DataPath, Labels, Name, Node, NodeInfo, NodeSpec};

/// Runs each listed test once per catalog engine: `async fn name(catalog: &Catalog)`, written
/// as a plain function beside the list (so rustfmt and the compiler see it as any other code),
/// becomes the test `<file>::<engine>::name`, run on a fresh catalog of that engine. A second
/// engine adds a module like `sqlite` with its own open function.
macro_rules! catalog_tests {
    ($($(#[$attribute:meta])* $name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                $(#[$attribute])*
                async fn $name() {
                    let test = $crate::catalog::tests::open_sqlite().await;
                    super::$name(&test.catalog).await;
                    test.catalog.close().await;
                }
            )*
        }
    };
}

mod backups;
mod clusters;
mod locations;
mod runs;
mod schedules;

/// A catalog opened for one test, with what keeps its database alive until the test ends.
pub(super) struct TestCatalog {
    pub catalog: Catalog,
    storage: Storage,
}

/// Where a test catalog's data lives.
enum Storage {
    /// A SQLite file inside a temporary directory removed when the test ends.
    SqliteFile { _dir: TempDir, path: PathBuf },
}

impl TestCatalog {
    /// Closes the catalog and opens the same database again, as a restarted server does.
    pub async fn reopen(self) -> Self {
        self.catalog.close().await;
        match self.storage {
            Storage::SqliteFile { _dir, path } => {
                let catalog = Catalog::open(&path).await.expect("reopen sqlite catalog");
                Self {
                    catalog,
                    storage: Storage::SqliteFile { _dir, path },
                }
            }
        }
    }
}

/// A fresh SQLite catalog: a new file in a folder that does not exist yet (`open` creates both,
/// as on a server's first start), with every migration applied.
pub(super) async fn open_sqlite() -> TestCatalog {
    let dir = tempfile::tempdir().expect("create temporary directory");
    let path = dir.path().join("state").join("catalog.db");
    let catalog = Catalog::open(&path).await.expect("open sqlite catalog");
    TestCatalog {
        catalog,
        storage: Storage::SqliteFile { _dir: dir, path },
    }
}

/// A moment `ms` milliseconds after the Unix epoch. The catalog keeps times to the millisecond,
/// so times written by the tests are whole milliseconds and must come back equal.
pub(crate) fn at(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// Milliseconds since the epoch of `time`, as listings' cursors carry them.
pub(super) fn ms_of(time: SystemTime) -> i64 {
    let since = time
        .duration_since(UNIX_EPOCH)
        .expect("time after the epoch");
    i64::try_from(since.as_millis()).expect("time fits in i64 milliseconds")
}

/// A moment in November 2025 that test times count from.
pub(crate) const T0: u64 = 1_763_700_000_000;

pub(crate) fn name(text: &str) -> Name {
    Name::parse("name", text).expect("valid name")
}

pub(crate) fn labels(pairs: &[(&str, &str)]) -> Labels {
    Labels::parse(
        "labels",
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())),
    )
    .expect("valid labels")
}

/// A node at `host:port` in `datacenter`/`rack`, with two data paths and distinct add and info
/// times, so that a field mixed up with another shows.
pub(crate) fn node(host: &str, port: u16, datacenter: &str, rack: &str) -> Node {
    Node {
        spec: NodeSpec {
            address: AgentAddress::parse("address", &format!("{host}:{port}"))
                .expect("valid address"),
            datacenter: datacenter.into(),
            rack: rack.into(),
        },
        info: NodeInfo {
            node_id: Uuid::now_v7(),
            hostname: format!("{host}-{port}.example"),
            data_paths: vec![
                DataPath {
                    path: format!("/var/lib/{host}/{port}/data"),
                    free_bytes: 1 << 40,
                    total_bytes: 4 << 40,
                },
                DataPath {
                    path: "/srv/commitlog".into(),
                    free_bytes: 12_345,
                    total_bytes: 67_890,
                },
            ],
            agent_version: "0.1.0-test".into(),
        },
        add_time: at(T0 + 1),
        info_time: at(T0 + 2),
    }
}

/// A cluster named `cluster_name` with these nodes, labelled, created at `T0` and updated at
/// `T0 + 5`.
pub(crate) fn cluster(cluster_name: &str, nodes: Vec<Node>) -> Cluster {
    Cluster {
        id: Uuid::now_v7(),
        name: name(cluster_name),
        labels: labels(&[("env", "test"), ("team/db", cluster_name)]),
        nodes,
        create_time: at(T0),
        update_time: at(T0 + 5),
    }
}

/// Registers a one-node cluster on a port of its own and returns it as written.
pub(super) async fn insert_cluster(catalog: &Catalog, cluster_name: &str, port: u16) -> Cluster {
    let cluster = cluster(cluster_name, vec![node("10.0.0.1", port, "dc1", "r1")]);
    catalog
        .insert_cluster(&cluster)
        .await
        .expect("insert cluster");
    cluster
}

/// A filesystem location at `/backups/<name>`.
pub(crate) fn fs_location(location_name: &str) -> Location {
    Location {
        id: Uuid::now_v7(),
        name: name(location_name),
        options: LocationOptions::Fs {
            path: format!("/backups/{location_name}"),
        },
        compression: Compression::DEFAULT,
        encryption_key: None,
        create_time: at(T0 + 10),
        update_time: at(T0 + 11),
    }
}

pub(super) async fn insert_location(catalog: &Catalog, location_name: &str) -> Location {
    let location = fs_location(location_name);
    catalog
        .insert_location(&location)
        .await
        .expect("insert location");
    location
}

/// A queued backup run of every node of `cluster` into `location`, created at `create_ms`, as
/// the backup service records it.
pub(super) fn backup_run(cluster: &Cluster, location: &Location, create_ms: u64) -> Run {
    Run {
        id: Uuid::now_v7(),
        cluster_id: cluster.id,
        cluster_name: cluster.name.to_string(),
        kind: RunKind::Backup,
        state: RunState::Queued,
        spec: RunSpec::Backup(BackupSpec {
            kind: BackupKind::Full,
            location_id: location.id,
            location_name: location.name.to_string(),
            filter: PathFilter::default(),
            limits: TransferLimits::default(),
            labels: BTreeMap::new(),
        }),
        dry_run: false,
        idempotency_key: None,
        schedule_id: None,
        started_by: "token:admin".into(),
        backup_id: Some(Uuid::now_v7()),
        error: String::new(),
        validation: None,
        purge: None,
        create_time: at(create_ms),
        start_time: None,
        finish_time: None,
        update_time: at(create_ms),
        nodes: cluster
            .nodes
            .iter()
            .map(|node| NodeProgress::queued(node.info.node_id, None))
            .collect(),
    }
}

/// Writes `run` in `state` (final states get a finish time).
pub(super) async fn set_state(catalog: &Catalog, run: &mut Run, state: RunState) {
    run.state = state;
    if state.is_final() {
        run.finish_time = Some(run.update_time);
    }
    catalog.save_run(run).await.expect("save run");
}

/// A committed backup of every node of `cluster` in `location`, started at `start_ms`, made by
/// `run_id`.
pub(super) fn backup_record(
    cluster: &Cluster,
    location: &Location,
    start_ms: u64,
    run_id: Option<Uuid>,
) -> BackupRecord {
    BackupRecord {
        id: Uuid::now_v7(),
        cluster_id: cluster.id,
        cluster_name: cluster.name.to_string(),
        location_id: location.id,
        location_name: location.name.to_string(),
        kind: BackupKind::Full,
        parent_backup_id: None,
        filter: PathFilter::default(),
        labels: BTreeMap::new(),
        run_id,
        schedule_id: None,
        start_time: at(start_ms),
        commit_time: at(start_ms + 500),
        nodes: cluster
            .nodes
            .iter()
            .map(|node| BackupNodeRecord {
                node_id: node.info.node_id,
                hostname: node.info.hostname.clone(),
                datacenter: node.spec.datacenter.clone(),
                rack: node.spec.rack.clone(),
                manifest_path: format!("nodes/{}.manifest", node.info.node_id),
                file_count: 3,
                total_bytes: 3000,
                uploaded_bytes: 1000,
                uploaded_objects: 1,
            })
            .collect(),
    }
}

/// Records a backup without a run (as a catalog rebuilt from storage would).
pub(super) async fn record_backup(
    catalog: &Catalog,
    cluster: &Cluster,
    location: &Location,
    start_ms: u64,
) -> BackupRecord {
    let backup = backup_record(cluster, location, start_ms, None);
    catalog.record_backup(&backup).await.expect("record backup");
    backup
}

/// What a restarted server finds: every record a previous process committed, with the
/// migrations (already applied) run again harmlessly.
#[tokio::test]
async fn a_reopened_sqlite_catalog_has_everything_that_was_committed() {
    let test = open_sqlite().await;
    let cluster = insert_cluster(&test.catalog, "kept", 7400).await;
    let location = insert_location(&test.catalog, "kept-location").await;
    let mut run = backup_run(&cluster, &location, T0 + 100);
    test.catalog.insert_run(&run).await.expect("insert run");
    run.state = RunState::Running;
    run.start_time = Some(at(T0 + 101));
    test.catalog.save_run(&run).await.expect("save run");
    let backup = backup_record(&cluster, &location, T0 + 100, Some(run.id));
    test.catalog
        .record_backup(&backup)
        .await
        .expect("record backup");

    let test = test.reopen().await;
    let catalog = &test.catalog;
    assert_eq!(
        catalog
            .find_cluster(cluster.name.as_str())
            .await
            .expect("find"),
        Some(cluster)
    );
    assert_eq!(
        catalog
            .find_location(&location.id.to_string())
            .await
            .expect("find"),
        Some(location)
    );
    assert_eq!(catalog.get_run(run.id).await.expect("get run"), Some(run));
    assert_eq!(
        catalog.get_backup(backup.id).await.expect("get backup"),
        Some(backup)
    );
    test.catalog.close().await;
}
