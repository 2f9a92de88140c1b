//! Restores with real agents from real backups: verified placement, point in time, SQLite,
//! corruption, crafted manifests, other clusters, and resuming after an agent dies.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use coffer_client::{CofferClient, proto};
use coffer_tests::{
    TestAgent, TestServer, create_fs_location, get_run, noise, run_backup, watch_to_end, wipe,
    write,
};

use crate::{node, register};

/// Content, mode and mtime of every file below `root` (the snapshot folders aside).
fn described_tree(root: &Path) -> BTreeMap<String, (Vec<u8>, u32, i64)> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, (Vec<u8>, u32, i64)>) {
        for entry in std::fs::read_dir(dir).expect("read dir") {
            let path = entry.expect("entry").path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            if dir == base && name.starts_with(".coffer-") {
                continue;
            }
            let metadata = std::fs::symlink_metadata(&path).expect("metadata");
            if metadata.is_dir() {
                walk(base, &path, out);
            } else {
                let relative = path
                    .strip_prefix(base)
                    .expect("below")
                    .display()
                    .to_string();
                let mtime_ns = metadata.mtime() * 1_000_000_000 + metadata.mtime_nsec();
                out.insert(
                    relative,
                    (
                        std::fs::read(&path).expect("read"),
                        metadata.permissions().mode() & 0o7777,
                        mtime_ns,
                    ),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

async fn backup(client: &CofferClient, cluster: &str) -> proto::Backup {
    let run = run_backup(client, cluster, "local", proto::BackupKind::Full).await;
    assert_eq!(
        run.state(),
        proto::RunState::Succeeded,
        "{}",
        run.error_message
    );
    client
        .backups()
        .get_backup(proto::GetBackupRequest {
            backup_id: run.backup_id,
        })
        .await
        .expect("get backup")
        .into_inner()
        .backup
        .expect("backup")
}

fn restore_request(cluster: &str, backup_id: &str) -> proto::StartRestoreRequest {
    proto::StartRestoreRequest {
        cluster: cluster.into(),
        restore: Some(proto::RestoreSpec {
            source: Some(proto::restore_spec::Source::BackupId(backup_id.into())),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn restore(client: &CofferClient, request: proto::StartRestoreRequest) -> proto::Run {
    let run_id = client
        .restores()
        .start_restore(request)
        .await
        .expect("start restore")
        .into_inner()
        .run_id;
    watch_to_end(client, &run_id).await.pop().expect("final")
}

/// A tree with nested folders, odd modes, an empty file and old modification times.
fn populate(data: &Path, seed: u64) {
    write(&data.join("ks1/t1/big.db"), &noise(3 << 20, seed));
    write(
        &data.join("ks1/t1/index.txt"),
        "entry\n".repeat(5000).as_bytes(),
    );
    write(&data.join("ks1/t2/empty"), b"");
    write(
        &data.join("top.conf"),
        format!("seed = {seed}\n").as_bytes(),
    );
    std::fs::set_permissions(
        data.join("top.conf"),
        std::fs::Permissions::from_mode(0o600),
    )
    .expect("chmod");
    std::fs::set_permissions(
        data.join("ks1/t1/index.txt"),
        std::fs::Permissions::from_mode(0o444),
    )
    .expect("chmod");
    let old = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    std::fs::File::options()
        .write(true)
        .open(data.join("ks1/t1/big.db"))
        .and_then(|file| file.set_modified(old))
        .expect("set mtime");
}

async fn setup(root: &Path, nodes: &[&str]) -> (Vec<TestAgent>, TestServer, CofferClient) {
    let mut agents = Vec::new();
    for name in nodes {
        agents.push(TestAgent::start(root, name).await);
    }
    let server = TestServer::start(root).await;
    let client = server.client().await;
    create_fs_location(&client, "local", &root.join("backups")).await;
    (agents, server, client)
}

#[tokio::test]
async fn a_wiped_cluster_is_restored_identical_and_existing_files_are_refused() {
    let root = tempfile::tempdir().expect("tempdir");
    let (agents, _server, client) = setup(root.path(), &["a", "b", "c"]).await;
    for (index, agent) in agents.iter().enumerate() {
        populate(&agent.data, index as u64);
    }
    client
        .clusters()
        .register_cluster(register("prod", agents.iter().map(node).collect()))
        .await
        .expect("register");
    let before: Vec<_> = agents.iter().map(|a| described_tree(&a.data)).collect();
    let made = backup(&client, "prod").await;

    // A dry run over the live data says which files exist, and changes nothing.
    let mut dry = restore_request("prod", &made.id);
    dry.dry_run = true;
    let planned = restore(&client, dry).await;
    assert_eq!(
        planned.state(),
        proto::RunState::Succeeded,
        "{}",
        planned.error_message
    );
    assert!(
        planned.nodes.iter().all(
            |n| n.last_error.contains("without overwrite") && n.last_error.contains("top.conf")
        ),
        "{:?}",
        planned.nodes
    );

    // Restoring over the live data is refused without overwrite, naming a file, placing nothing.
    let refused = restore(&client, restore_request("prod", &made.id)).await;
    assert_eq!(refused.state(), proto::RunState::Failed);
    assert!(
        refused.error_message.contains("top.conf") || refused.error_message.contains("exist"),
        "{}",
        refused.error_message
    );

    // A dry run after the wipe plans every file and touches nothing.
    for agent in &agents {
        wipe(&agent.data);
    }
    let mut dry = restore_request("prod", &made.id);
    dry.dry_run = true;
    let planned = restore(&client, dry).await;
    assert_eq!(
        planned.state(),
        proto::RunState::Succeeded,
        "{}",
        planned.error_message
    );
    assert_eq!(planned.totals.as_ref().expect("totals").files_total, 12);
    for agent in &agents {
        assert!(
            described_tree(&agent.data).is_empty(),
            "dry run wrote nothing"
        );
    }

    let restored = restore(&client, restore_request("prod", &made.id)).await;
    assert_eq!(
        restored.state(),
        proto::RunState::Succeeded,
        "{}",
        restored.error_message
    );
    // Each node fetched its objects as stored: the noise raw (with its header), the text
    // compressed to almost nothing.
    for node in &restored.nodes {
        let counters = node.progress.expect("progress");
        assert!(
            (3 << 20) < counters.bytes_transferred
                && counters.bytes_transferred < (3 << 20) + 1024
                && counters.bytes_transferred < counters.bytes_done,
            "{counters:?}"
        );
    }
    for (agent, before) in agents.iter().zip(&before) {
        assert_eq!(
            &described_tree(&agent.data),
            before,
            "content, modes and mtimes are back"
        );
        let staging = std::fs::read_dir(agent.data.join(".coffer-restore"))
            .map(|d| d.count())
            .unwrap_or(0);
        assert_eq!(staging, 0, "staging is cleaned up");
    }

    // With overwrite, changed files are put back.
    write(&agents[0].data.join("top.conf"), b"changed");
    let mut again = restore_request("prod", &made.id);
    if let Some(spec) = again.restore.as_mut() {
        spec.overwrite = true;
    }
    let replaced = restore(&client, again).await;
    assert_eq!(
        replaced.state(),
        proto::RunState::Succeeded,
        "{}",
        replaced.error_message
    );
    assert_eq!(described_tree(&agents[0].data), before[0]);
}

#[tokio::test]
async fn point_in_time_picks_the_newest_backup_at_or_before_the_time() {
    let root = tempfile::tempdir().expect("tempdir");
    let (agents, _server, client) = setup(root.path(), &["a"]).await;
    client
        .clusters()
        .register_cluster(register("pit", vec![node(&agents[0])]))
        .await
        .expect("register");
    let data = &agents[0].data;
    let mut backups = Vec::new();
    for version in 1..=3 {
        write(
            &data.join("state.txt"),
            format!("version {version}\n").as_bytes(),
        );
        backups.push(backup(&client, "pit").await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Between the second and the third backup: the second one.
    let second_start = backups[1].start_time.expect("start");
    let third_start = backups[2].start_time.expect("start");
    let between_ms = (second_start.seconds * 1000
        + i64::from(second_start.nanos / 1_000_000)
        + third_start.seconds * 1000
        + i64::from(third_start.nanos / 1_000_000))
        / 2;
    wipe(data);
    let request = proto::StartRestoreRequest {
        cluster: "pit".into(),
        restore: Some(proto::RestoreSpec {
            source: Some(proto::restore_spec::Source::PointInTime(
                proto::PointInTime {
                    source_cluster: "pit".into(),
                    as_of_time: Some(prost_types::Timestamp {
                        seconds: between_ms / 1000,
                        nanos: i32::try_from((between_ms % 1000) * 1_000_000).expect("nanos"),
                    }),
                    location: String::new(),
                },
            )),
            ..Default::default()
        }),
        ..Default::default()
    };
    let run = restore(&client, request).await;
    assert_eq!(
        run.state(),
        proto::RunState::Succeeded,
        "{}",
        run.error_message
    );
    assert_eq!(run.backup_id, backups[1].id);
    assert_eq!(
        std::fs::read_to_string(data.join("state.txt")).expect("read"),
        "version 2\n"
    );

    // Before the first backup there is nothing to restore.
    let status = client
        .restores()
        .start_restore(proto::StartRestoreRequest {
            cluster: "pit".into(),
            restore: Some(proto::RestoreSpec {
                source: Some(proto::restore_spec::Source::PointInTime(
                    proto::PointInTime {
                        source_cluster: "pit".into(),
                        as_of_time: Some(prost_types::Timestamp {
                            seconds: 1_000_000,
                            nanos: 0,
                        }),
                        location: String::new(),
                    },
                )),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect_err("no backup that old");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
}

#[tokio::test]
async fn a_restored_sqlite_database_opens_and_holds_its_rows() {
    let root = tempfile::tempdir().expect("tempdir");
    let data = root.path().join("db/data");
    std::fs::create_dir_all(&data).expect("mkdir");
    let database = data.join("shop.db");
    {
        let connection = rusqlite::Connection::open(&database).expect("open");
        connection
            .execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE orders (id INTEGER PRIMARY KEY, item TEXT);")
            .expect("schema");
        for i in 0..500 {
            connection
                .execute(
                    "INSERT INTO orders (item) VALUES (?1)",
                    [format!("item {i}")],
                )
                .expect("insert");
        }
    }
    let database_arg = database.display().to_string();
    let agent = TestAgent::start_with(
        root.path(),
        "db",
        "127.0.0.1:0",
        &[
            "--snapshot-provider",
            "sqlite",
            "--sqlite-database",
            &database_arg,
        ],
    )
    .await;
    let server = TestServer::start(root.path()).await;
    let client = server.client().await;
    create_fs_location(&client, "local", &root.path().join("backups")).await;
    client
        .clusters()
        .register_cluster(register("shop", vec![node(&agent)]))
        .await
        .expect("register");
    let made = backup(&client, "shop").await;
    wipe(&data);
    let run = restore(&client, restore_request("shop", &made.id)).await;
    assert_eq!(
        run.state(),
        proto::RunState::Succeeded,
        "{}",
        run.error_message
    );
    let connection = rusqlite::Connection::open(&database).expect("open restored");
    let check: String = connection
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .expect("check");
    assert_eq!(check, "ok");
    let rows: i64 = connection
        .query_row("SELECT count(*) FROM orders", [], |row| row.get(0))
        .expect("count");
    assert_eq!(rows, 500);
}

/// Object files of a filesystem location.
fn objects(location: &Path) -> Vec<PathBuf> {
    coffer_tests::tree(location)
        .keys()
        .filter(|path| path.contains("/objects/"))
        .map(|path| location.join(path))
        .collect()
}

#[tokio::test]
async fn a_corrupted_object_fails_the_node_naming_the_file_and_places_nothing() {
    let root = tempfile::tempdir().expect("tempdir");
    let (agents, _server, client) = setup(root.path(), &["a"]).await;
    populate(&agents[0].data, 7);
    client
        .clusters()
        .register_cluster(register("bad", vec![node(&agents[0])]))
        .await
        .expect("register");
    let made = backup(&client, "bad").await;
    // Flip a byte in the stored body of big.db's object (the largest object).
    let mut stored = objects(&root.path().join("backups"));
    stored.sort_by_key(|path| std::fs::metadata(path).map(|m| m.len()).unwrap_or(0));
    let victim = stored.last().expect("an object").clone();
    let mut bytes = std::fs::read(&victim).expect("read object");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&victim, bytes).expect("corrupt");

    wipe(&agents[0].data);
    let run = restore(&client, restore_request("bad", &made.id)).await;
    assert_eq!(run.state(), proto::RunState::Failed);
    assert!(
        run.error_message.contains("big.db"),
        "{}",
        run.error_message
    );
    assert!(
        described_tree(&agents[0].data).is_empty(),
        "nothing of the node was placed"
    );
}

#[tokio::test]
async fn a_crafted_manifest_with_traversal_entries_is_refused() {
    let root = tempfile::tempdir().expect("tempdir");
    let (agents, _server, client) = setup(root.path(), &["a"]).await;
    write(&agents[0].data.join("innocent.txt"), b"hello");
    client
        .clusters()
        .register_cluster(register("evil", vec![node(&agents[0])]))
        .await
        .expect("register");
    let made = backup(&client, "evil").await;
    let node_id = agents[0].node_id();
    let location = root.path().join("backups");
    let operator = coffer_format::open_operator(&coffer_format::StorageConfig {
        location_id: "craft".into(),
        name: "craft".into(),
        scheme: "fs".into(),
        options: [("root".to_string(), location.display().to_string())].into(),
        secrets: Default::default(),
    })
    .expect("open");
    let cluster_id: uuid::Uuid = made.cluster_id.parse().expect("cluster id");
    let backup_id: uuid::Uuid = made.id.parse().expect("backup id");
    let node_uuid: uuid::Uuid = node_id.parse().expect("node id");
    let layout = coffer_format::ClusterLayout::new(cluster_id);
    let manifest_path = layout.node_manifest(backup_id, node_uuid);
    let hash = coffer_format::ContentHash::of(b"hello");
    let escape = root.path().join("escaped.txt");
    let data = agents[0].data.display().to_string();
    for evil in [
        format!("{data}/../escaped.txt"),
        escape.display().to_string(),
    ] {
        let header = coffer_format::NodeManifestHeader::new(
            cluster_id,
            backup_id,
            node_uuid,
            "evil",
            vec![data.clone()],
        );
        let mut writer =
            coffer_format::NodeManifestWriter::new(header).with_temp_dir(root.path().to_path_buf());
        writer
            .add(coffer_format::NodeManifestEntry {
                path: evil.clone(),
                size: 5,
                mode: 0o644,
                mtime_ns: 0,
                hash,
                packed: None,
            })
            .await
            .expect("add");
        writer
            .upload(
                &operator,
                &manifest_path,
                &coffer_format::object::Keyring::plain(),
            )
            .await
            .expect("replace manifest");
        wipe(&agents[0].data);
        let run = restore(&client, restore_request("evil", &made.id)).await;
        assert_eq!(
            run.state(),
            proto::RunState::Failed,
            "{evil} must be refused"
        );
        assert!(
            run.error_message.contains("escaped.txt"),
            "{}",
            run.error_message
        );
        assert!(!escape.exists(), "nothing written outside the data path");
        assert!(!root.path().join("a/escaped.txt").exists());
    }

    // A symlink in the target tree that leads outside is never followed.
    let outside = root.path().join("outside");
    std::fs::create_dir_all(&outside).expect("mkdir");
    let header = coffer_format::NodeManifestHeader::new(
        cluster_id,
        backup_id,
        node_uuid,
        "evil",
        vec![data.clone()],
    );
    let mut writer =
        coffer_format::NodeManifestWriter::new(header).with_temp_dir(root.path().to_path_buf());
    writer
        .add(coffer_format::NodeManifestEntry {
            path: format!("{data}/link/innocent.txt"),
            size: 5,
            mode: 0o644,
            mtime_ns: 0,
            hash,
            packed: None,
        })
        .await
        .expect("add");
    writer
        .upload(
            &operator,
            &manifest_path,
            &coffer_format::object::Keyring::plain(),
        )
        .await
        .expect("replace manifest");
    wipe(&agents[0].data);
    std::os::unix::fs::symlink(&outside, agents[0].data.join("link")).expect("symlink");
    let run = restore(&client, restore_request("evil", &made.id)).await;
    assert_eq!(run.state(), proto::RunState::Failed);
    assert!(run.error_message.contains("link"), "{}", run.error_message);
    assert!(!outside.join("innocent.txt").exists());
}

#[tokio::test]
async fn a_backup_restores_onto_another_cluster_and_onto_a_single_node() {
    let root = tempfile::tempdir().expect("tempdir");
    let (agents, _server, client) = setup(root.path(), &["a", "b", "x", "y", "z"]).await;
    populate(&agents[0].data, 1);
    populate(&agents[1].data, 2);
    client
        .clusters()
        .register_cluster(register("source", vec![node(&agents[0]), node(&agents[1])]))
        .await
        .expect("register source");
    client
        .clusters()
        .register_cluster(register("copy", vec![node(&agents[2]), node(&agents[3])]))
        .await
        .expect("register copy");
    client
        .clusters()
        .register_cluster(register("single", vec![node(&agents[4])]))
        .await
        .expect("register single");
    let made = backup(&client, "source").await;

    // Without a mapping, the other cluster's nodes do not match: refused, naming the way out.
    let status = client
        .restores()
        .start_restore(restore_request("copy", &made.id))
        .await
        .expect_err("no mapping");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert!(
        status.message().contains("node_mappings"),
        "{}",
        status.message()
    );

    let mapping = |source: &TestAgent, target: &TestAgent| proto::NodeMapping {
        source_node_id: source.node_id(),
        target_node_id: target.node_id(),
    };
    let mut request = restore_request("copy", &made.id);
    if let Some(spec) = request.restore.as_mut() {
        spec.node_mappings = vec![
            mapping(&agents[0], &agents[3]),
            mapping(&agents[1], &agents[2]),
        ];
    }
    let run = restore(&client, request).await;
    assert_eq!(
        run.state(),
        proto::RunState::Succeeded,
        "{}",
        run.error_message
    );
    assert_eq!(
        described_tree(&agents[3].data),
        described_tree(&agents[0].data)
    );
    assert_eq!(
        described_tree(&agents[2].data),
        described_tree(&agents[1].data)
    );

    // One node of the backup onto a one-node cluster.
    let mut request = restore_request("single", &made.id);
    if let Some(spec) = request.restore.as_mut() {
        spec.node_mappings = vec![mapping(&agents[1], &agents[4])];
    }
    let run = restore(&client, request).await;
    assert_eq!(
        run.state(),
        proto::RunState::Succeeded,
        "{}",
        run.error_message
    );
    assert_eq!(
        described_tree(&agents[4].data),
        described_tree(&agents[1].data)
    );

    // Bad mappings are refused, naming the field.
    let mut request = restore_request("single", &made.id);
    if let Some(spec) = request.restore.as_mut() {
        spec.node_mappings = vec![mapping(&agents[1], &agents[0])];
    }
    let status = client
        .restores()
        .start_restore(request)
        .await
        .expect_err("target not in cluster");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("node_mappings[0].target_node_id"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn an_agent_killed_mid_restore_does_not_fetch_verified_files_again() {
    let root = tempfile::tempdir().expect("tempdir");
    let (mut agents, _server, client) = setup(root.path(), &["a"]).await;
    for file in 0..12 {
        write(
            &agents[0].data.join(format!("f{file:02}.bin")),
            &noise(1 << 20, file),
        );
    }
    client
        .clusters()
        .register_cluster(register("resume", vec![node(&agents[0])]))
        .await
        .expect("register");
    let made = backup(&client, "resume").await;
    let before = described_tree(&agents[0].data);
    wipe(&agents[0].data);

    // Slowly, one file at a time, so the agent dies half-way.
    let mut slow = restore_request("resume", &made.id);
    if let Some(spec) = slow.restore.as_mut() {
        spec.limits = Some(proto::TransferLimits {
            rate_limit_bytes_per_second: 2 << 20,
            concurrency: 1,
            ..Default::default()
        });
    }
    let run_id = client
        .restores()
        .start_restore(slow)
        .await
        .expect("start")
        .into_inner()
        .run_id;
    loop {
        let run = get_run(&client, &run_id).await;
        if run.totals.as_ref().is_some_and(|t| t.files_done >= 3) {
            break;
        }
        assert!(
            run.finish_time.is_none(),
            "the restore ended too soon: {run:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let agent = agents.remove(0);
    let address = agent.process.host_port().to_string();
    agent.process.kill().await;
    let failed = watch_to_end(&client, &run_id).await.pop().expect("final");
    assert_eq!(failed.state(), proto::RunState::Failed);
    assert!(
        described_tree(&root.path().join("a/data")).is_empty(),
        "nothing placed"
    );

    let agent = TestAgent::start_on(root.path(), "a", &address).await;
    let run = restore(&client, restore_request("resume", &made.id)).await;
    assert_eq!(
        run.state(),
        proto::RunState::Succeeded,
        "{}",
        run.error_message
    );
    let totals = run.totals.expect("totals");
    assert!(
        totals.files_skipped >= 3,
        "verified files are not fetched again: {totals:?}"
    );
    assert_eq!(described_tree(&agent.data), before);
}
