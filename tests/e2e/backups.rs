//! Backups with real agents into a real filesystem location: content addressing, incremental
//! backups, SQLite snapshots, cancel, watchers and bad requests.

use std::path::Path;

use coffer_client::{CofferClient, proto};
use coffer_tests::{
    TestAgent, TestServer, create_fs_location, get_run, noise, watch_to_end, write,
};
use tonic::Code;

use crate::{node, register};

pub(crate) fn backup_request(
    cluster: &str,
    location: &str,
    kind: proto::BackupKind,
) -> proto::StartBackupRequest {
    proto::StartBackupRequest {
        cluster: cluster.into(),
        backup: Some(proto::BackupSpec {
            kind: kind.into(),
            location: location.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn start(client: &CofferClient, request: proto::StartBackupRequest) -> String {
    client
        .backups()
        .start_backup(request)
        .await
        .expect("start backup")
        .into_inner()
        .run_id
}

/// Runs a backup to its end and returns the final run and the backup it made.
async fn backup(
    client: &CofferClient,
    request: proto::StartBackupRequest,
) -> (proto::Run, proto::Backup) {
    let run_id = start(client, request).await;
    let run = watch_to_end(client, &run_id)
        .await
        .pop()
        .expect("final state");
    assert_eq!(
        run.state(),
        proto::RunState::Succeeded,
        "{}",
        run.error_message
    );
    let backup = client
        .backups()
        .get_backup(proto::GetBackupRequest {
            backup_id: run.backup_id.clone(),
        })
        .await
        .expect("get backup")
        .into_inner()
        .backup
        .expect("backup");
    (run, backup)
}

/// Object files in a filesystem location.
fn objects(location: &Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let clusters = location.join("clusters");
    for cluster in std::fs::read_dir(clusters).into_iter().flatten().flatten() {
        for fan in std::fs::read_dir(cluster.path().join("objects"))
            .into_iter()
            .flatten()
            .flatten()
        {
            for object in std::fs::read_dir(fan.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                found.push(object.path());
            }
        }
    }
    found
}

async fn files_of(client: &CofferClient, backup_id: &str) -> Vec<proto::BackupFile> {
    let mut files = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .backups()
            .list_backup_files(proto::ListBackupFilesRequest {
                backup_id: backup_id.into(),
                page_size: 7,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .expect("list files")
            .into_inner();
        files.extend(page.files);
        if page.next_page_token.is_empty() {
            return files;
        }
        token = page.next_page_token;
    }
}

#[tokio::test]
async fn full_backup_of_three_nodes_stores_each_content_once_and_incremental_uploads_only_changes()
{
    let root = tempfile::tempdir().expect("tempdir");
    // Node b counts the files its snapshots link, once linking is done.
    let links = root.path().join("b-links");
    let count_links = format!(
        "find '{}'/\"$COFFER_SNAPSHOT_TAG\" -type f | wc -l >> '{}'",
        root.path().join("b/data/.coffer-snapshots").display(),
        links.display()
    );
    let b_options = ["--snapshot-post-hook", count_links.as_str()];
    let (a, b, c) = tokio::join!(
        TestAgent::start(root.path(), "a"),
        TestAgent::start_with(root.path(), "b", "127.0.0.1:0", &b_options),
        TestAgent::start(root.path(), "c"),
    );
    let agents = [&a, &b, &c];
    // The same file (larger than the 1 MiB read in one go: new content is stored as it is
    // hashed, and the nodes after the first find it stored) on every node, plus files of each
    // node's own.
    let shared = noise((1 << 20) + 4096, 1);
    for (index, agent) in agents.iter().enumerate() {
        write(&agent.data.join("ks/shared.db"), &shared);
        write(
            &agent.data.join("ks/own.db"),
            &noise(300_000, 10 + index as u64),
        );
        for file in 0..10 {
            let text = format!("node {index} line {file}\n").repeat(2000);
            write(
                &agent.data.join(format!("ks/t{file}/data.txt")),
                text.as_bytes(),
            );
        }
        write(&agent.data.join("empty"), b"");
    }
    let server = TestServer::start(root.path()).await;
    let client = server.client().await;
    client
        .clusters()
        .register_cluster(register("shop", agents.iter().map(|a| node(a)).collect()))
        .await
        .expect("register");
    let location = root.path().join("backups");
    create_fs_location(&client, "local", &location).await;

    // One node at a time, so identical content is uploaded by the first node only.
    let mut request = backup_request("shop", "local", proto::BackupKind::Full);
    if let Some(spec) = request.backup.as_mut() {
        spec.limits = Some(proto::TransferLimits {
            node_parallelism: 1,
            ..Default::default()
        });
    }
    let (run, full) = backup(&client, request.clone()).await;
    let totals = full.totals.expect("totals");
    assert_eq!(totals.file_count, 3 * 13);
    let unique_contents = 1 + 3 + 3 * 10 + 1;
    assert_eq!(totals.uploaded_objects, unique_contents, "{totals:?}");
    assert_eq!(objects(&location).len() as u64, unique_contents);
    assert_eq!(full.kind(), proto::BackupKind::Full);
    let run_totals = run.totals.expect("run totals");
    assert_eq!(run_totals.files_done, 39);
    // Text compresses: stored bytes are well below the logical size. The run counts what it
    // stored as the backup does.
    assert!(totals.uploaded_bytes < totals.total_bytes, "{totals:?}");
    assert_eq!(run_totals.bytes_transferred, totals.uploaded_bytes);
    // The copies encoded by the other nodes were dropped, and nothing half-written is left:
    // neither in the temporary folder (files stored in one pass) nor next to the objects (the
    // count of files in the fan-out folders above is the count of objects).
    let temporary = std::fs::read_dir(location.join(coffer_format::storage::FS_ATOMIC_WRITE_DIR))
        .expect("temporary folder")
        .count();
    assert_eq!(temporary, 0, "temporary files left in the location");

    // The location says what it holds.
    let marker: serde_json::Value =
        serde_json::from_slice(&std::fs::read(location.join("coffer.json")).expect("marker"))
            .expect("json");
    assert_eq!(marker["format"], "coffer");

    // Every file is listed with its BLAKE3 hash and size.
    let files = files_of(&client, &full.id).await;
    assert_eq!(files.len(), 39);
    let shared_hash = blake3::hash(&shared).to_hex().to_string();
    let shared_entries: Vec<_> = files
        .iter()
        .filter(|f| f.path.ends_with("ks/shared.db"))
        .collect();
    assert_eq!(shared_entries.len(), 3);
    assert!(
        shared_entries
            .iter()
            .all(|f| f.blake3_hash == shared_hash && f.size_bytes == (1 << 20) + 4096)
    );

    // A second full backup of unchanged data re-reads everything but uploads nothing.
    let (_, again) = backup(&client, request).await;
    let totals = again.totals.expect("totals");
    assert_eq!(
        (totals.uploaded_objects, totals.uploaded_bytes),
        (0, 0),
        "{totals:?}"
    );

    // Change two files on one node: the incremental uploads exactly their new content.
    write(&b.data.join("ks/t3/data.txt"), b"changed text\n");
    write(&b.data.join("ks/own.db"), &noise(300_000, 99));
    write(&c.data.join("ks/new.db"), &noise(50_000, 7));
    let (_, incremental) = backup(
        &client,
        backup_request("shop", "local", proto::BackupKind::Incremental),
    )
    .await;
    assert_eq!(incremental.kind(), proto::BackupKind::Incremental);
    assert_eq!(incremental.parent_backup_id, again.id);
    let totals = incremental.totals.expect("totals");
    assert_eq!(totals.uploaded_objects, 3, "{totals:?}");
    assert_eq!(
        totals.file_count, 40,
        "an incremental backup lists the complete file set"
    );
    assert!(totals.uploaded_bytes < 360_000, "{totals:?}");
    assert_eq!(objects(&location).len() as u64, unique_contents + 3);
    // The full backups froze all 13 files of node b; the incremental only the two it had to
    // read, as it never reads the others (their content is stored).
    let linked: Vec<String> = std::fs::read_to_string(&links)
        .expect("link counts")
        .lines()
        .map(|line| line.trim().to_string())
        .collect();
    assert_eq!(linked, ["13", "13", "2"]);

    let listed = client
        .backups()
        .list_backups(proto::ListBackupsRequest {
            cluster: "shop".into(),
            ..Default::default()
        })
        .await
        .expect("list backups")
        .into_inner()
        .backups;
    let ids: Vec<_> = listed.iter().map(|b| b.id.as_str()).collect();
    assert_eq!(
        ids,
        [incremental.id.as_str(), again.id.as_str(), full.id.as_str()]
    );

    // The runs are listed newest first, filtered by cluster, kind and state.
    let runs = client
        .runs()
        .list_runs(proto::ListRunsRequest {
            cluster: "shop".into(),
            kind: proto::RunKind::Backup.into(),
            states: vec![proto::RunState::Succeeded.into()],
            page_size: 2,
            ..Default::default()
        })
        .await
        .expect("list runs")
        .into_inner();
    assert_eq!(runs.runs.len(), 2);
    assert_eq!(runs.runs[0].backup_id, incremental.id);
    assert!(!runs.next_page_token.is_empty());
    let rest = client
        .runs()
        .list_runs(proto::ListRunsRequest {
            cluster: "shop".into(),
            page_token: runs.next_page_token,
            page_size: 2,
            ..Default::default()
        })
        .await
        .expect("list runs")
        .into_inner();
    assert_eq!(rest.runs.len(), 1);
    assert_eq!(rest.runs[0].backup_id, full.id);
    assert!(rest.next_page_token.is_empty());
    let failed = client
        .runs()
        .list_runs(proto::ListRunsRequest {
            states: vec![proto::RunState::Failed.into()],
            ..Default::default()
        })
        .await
        .expect("list runs")
        .into_inner();
    assert!(failed.runs.is_empty());

    // No snapshot stays behind on any node, nor a record of one.
    for agent in agents {
        let left = coffer_tests::snapshots_left(&agent.data).await;
        assert!(
            left.is_empty(),
            "snapshots left in {}: {left:?}",
            agent.data.display()
        );
        let records: Vec<_> = std::fs::read_dir(agent.state.join("snapshots"))
            .map(|entries| {
                entries
                    .map(|entry| entry.expect("entry").file_name())
                    .collect()
            })
            .unwrap_or_default();
        assert!(records.is_empty(), "snapshot records left: {records:?}");
    }
}

/// Text that zstd shrinks several times over: `lines` numbered lines.
fn text(lines: usize, seed: &str) -> Vec<u8> {
    (0..lines)
        .map(|line| format!("{seed} row {line}: the quick brown fox jumps over the lazy dog\n"))
        .collect::<String>()
        .into_bytes()
}

/// The stored object of `content` in a filesystem location.
fn object_of(location: &Path, content: &[u8]) -> Vec<u8> {
    let hash = coffer_format::ContentHash::of(content).to_hex();
    let path = objects(location)
        .into_iter()
        .find(|path| path.file_name().is_some_and(|name| *name == *hash))
        .unwrap_or_else(|| panic!("no object {hash}"));
    std::fs::read(path).expect("read object")
}

#[tokio::test]
async fn a_location_compresses_new_objects_as_set_and_restores_any_mix() {
    let root = tempfile::tempdir().expect("tempdir");
    let agent = TestAgent::start(root.path(), "a").await;
    let server = TestServer::start(root.path()).await;
    let client = server.client().await;
    client
        .clusters()
        .register_cluster(register("solo", vec![node(&agent)]))
        .await
        .expect("register");
    // A small file (stored in one write) and one over the agent's large-file size (streamed).
    let small = text(2_000, "small");
    let large = text(150_000, "large");
    write(&agent.data.join("t/small.txt"), &small);
    write(&agent.data.join("t/large.txt"), &large);
    let store = root.path().join("store");
    let created = client
        .locations()
        .create_location(proto::CreateLocationRequest {
            name: "raw".into(),
            options: Some(proto::create_location_request::Options::Fs(
                proto::FsLocationOptions {
                    path: store.display().to_string(),
                },
            )),
            compression: Some(proto::Compression {
                codec: proto::CompressionCodec::None.into(),
                level: 0,
            }),
            encryption_key: Default::default(),
        })
        .await
        .expect("create")
        .into_inner()
        .location
        .expect("location");
    assert_eq!(
        created.compression.expect("compression").codec(),
        proto::CompressionCodec::None
    );

    // Without compression every object is the header and the content as read.
    let (_, full) = backup(
        &client,
        backup_request("solo", "raw", proto::BackupKind::Full),
    )
    .await;
    for content in [&small, &large] {
        let object = object_of(&store, content);
        assert_eq!(&object[..8], b"COFFER\x01\x00", "stored raw");
        assert!(object[8..] == content[..]);
    }
    let totals = full.totals.expect("totals");
    assert_eq!(
        totals.uploaded_bytes,
        (small.len() + large.len() + 16) as u64
    );

    // Compression changes while backups are stored; only new objects take it.
    let updated = client
        .locations()
        .update_location(proto::UpdateLocationRequest {
            location: "raw".into(),
            compression: Some(proto::Compression {
                codec: proto::CompressionCodec::Zstd.into(),
                level: 9,
            }),
            ..Default::default()
        })
        .await
        .expect("update")
        .into_inner()
        .location
        .expect("location")
        .compression
        .expect("compression");
    assert_eq!(
        (updated.codec(), updated.level),
        (proto::CompressionCodec::Zstd, 9)
    );
    let small_changed = text(2_000, "changed");
    let large_changed = text(150_000, "grown");
    write(&agent.data.join("t/small.txt"), &small_changed);
    write(&agent.data.join("t/large2.txt"), &large_changed);
    let (_, incremental) = backup(
        &client,
        backup_request("solo", "raw", proto::BackupKind::Incremental),
    )
    .await;
    for content in [&small_changed, &large_changed] {
        let object = object_of(&store, content);
        assert_eq!(&object[..8], b"COFFER\x01\x01", "stored as zstd");
        assert!(
            object.len() < content.len() / 4,
            "{} of {}",
            object.len(),
            content.len()
        );
    }
    assert_eq!(
        object_of(&store, &large)[7],
        0,
        "stored objects are not rewritten"
    );

    // The incremental refers to raw and zstd objects alike, and restores byte for byte.
    let before = coffer_tests::tree(&agent.data);
    coffer_tests::wipe(&agent.data);
    let run_id = client
        .restores()
        .start_restore(proto::StartRestoreRequest {
            cluster: "solo".into(),
            restore: Some(proto::RestoreSpec {
                source: Some(proto::restore_spec::Source::BackupId(incremental.id)),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("start restore")
        .into_inner()
        .run_id;
    let restored = watch_to_end(&client, &run_id).await.pop().expect("final");
    assert_eq!(
        restored.state(),
        proto::RunState::Succeeded,
        "{}",
        restored.error_message
    );
    assert_eq!(coffer_tests::tree(&agent.data), before);

    // A location made without a setting compresses at zstd level 1; bad settings are refused.
    create_fs_location(&client, "default", &root.path().join("default")).await;
    let default = client
        .locations()
        .get_location(proto::GetLocationRequest {
            location: "default".into(),
        })
        .await
        .expect("get")
        .into_inner()
        .location
        .expect("location")
        .compression
        .expect("compression");
    assert_eq!(
        (default.codec(), default.level),
        (proto::CompressionCodec::Zstd, 1)
    );
    for (codec, level, field) in [
        (
            proto::CompressionCodec::Zstd as i32,
            13,
            "compression.level",
        ),
        (
            proto::CompressionCodec::Zstd as i32,
            -8,
            "compression.level",
        ),
        (proto::CompressionCodec::None as i32, 3, "compression.level"),
        (7, 0, "compression.codec"),
    ] {
        let status = client
            .locations()
            .update_location(proto::UpdateLocationRequest {
                location: "default".into(),
                compression: Some(proto::Compression { codec, level }),
                ..Default::default()
            })
            .await
            .expect_err("bad compression");
        assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
        assert!(status.message().contains(field), "{}", status.message());
    }
}

#[tokio::test]
async fn a_sqlite_database_written_during_the_backup_is_copied_consistently() {
    let root = tempfile::tempdir().expect("tempdir");
    let data = root.path().join("db/data");
    std::fs::create_dir_all(&data).expect("mkdir");
    let database = data.join("app.db");
    {
        let connection = rusqlite::Connection::open(&database).expect("open");
        connection
            .execute_batch(
                "PRAGMA journal_mode = WAL; CREATE TABLE events (id INTEGER PRIMARY KEY, body TEXT);",
            )
            .expect("schema");
        for i in 0..2000 {
            connection
                .execute(
                    "INSERT INTO events (body) VALUES (?1)",
                    [format!("event {i} {}", "x".repeat(200))],
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
    client
        .clusters()
        .register_cluster(register("app", vec![node(&agent)]))
        .await
        .expect("register");
    let location = root.path().join("backups");
    create_fs_location(&client, "local", &location).await;

    // A writer keeps inserting while the backup runs.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let database = database.clone();
        std::thread::spawn(move || {
            let connection = rusqlite::Connection::open(&database).expect("open");
            connection
                .busy_timeout(std::time::Duration::from_secs(5))
                .expect("timeout");
            let mut written = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                connection
                    .execute(
                        "INSERT INTO events (body) VALUES (?1)",
                        [format!("live {written}")],
                    )
                    .expect("insert while backing up");
                written += 1;
            }
            written
        })
    };
    let (_, made) = backup(
        &client,
        backup_request("app", "local", proto::BackupKind::Full),
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let written = writer.join().expect("writer");
    assert!(written > 0);

    let files = files_of(&client, &made.id).await;
    assert_eq!(
        files.len(),
        1,
        "the sqlite provider backs up the configured databases"
    );
    assert_eq!(Path::new(&files[0].path), database.as_path());
    let hash = coffer_format::ContentHash::from_hex(&files[0].blake3_hash).expect("hash");
    let operator = coffer_format::open_operator(&coffer_format::StorageConfig {
        location_id: "read-back".into(),
        name: "read-back".into(),
        scheme: "fs".into(),
        options: [("root".to_string(), location.display().to_string())].into(),
        secrets: Default::default(),
    })
    .expect("open location");
    let layout = coffer_format::ClusterLayout::new(made.cluster_id.parse().expect("cluster id"));
    let copy = root.path().join("copy.db");
    coffer_format::download_object(
        &operator,
        &layout.object(&hash),
        &copy,
        hash,
        &coffer_format::object::Keyring::plain(),
        None,
    )
    .await
    .expect("the object holds the database copy");
    let connection = rusqlite::Connection::open(&copy).expect("open copy");
    let check: String = connection
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .expect("integrity check");
    assert_eq!(check, "ok");
    let rows: i64 = connection
        .query_row("SELECT count(*) FROM events", [], |row| row.get(0))
        .expect("count");
    assert!(
        (2000..=2000 + written).contains(&rows),
        "{rows} rows, {written} written live"
    );
}

#[tokio::test]
async fn a_failed_snapshot_fails_the_run_while_the_other_node_uploads_and_commits_nothing() {
    let root = tempfile::tempdir().expect("tempdir");
    let healthy = TestAgent::start(root.path(), "healthy").await;
    for file in 0..16 {
        write(
            &healthy.data.join(format!("f{file}.bin")),
            &noise(1 << 20, file),
        );
    }
    // Fails after the healthy node has started uploading: its snapshot is taken at once.
    let broken = TestAgent::start_with(
        root.path(),
        "broken",
        "127.0.0.1:0",
        &[
            "--snapshot-pre-hook",
            "sleep 0.3; echo flush refused >&2; exit 3",
        ],
    )
    .await;
    write(&broken.data.join("x"), b"x");
    let server = TestServer::start(root.path()).await;
    let client = server.client().await;
    client
        .clusters()
        .register_cluster(register("pair", vec![node(&healthy), node(&broken)]))
        .await
        .expect("register");
    create_fs_location(&client, "local", &root.path().join("backups")).await;

    let run_id = start(
        &client,
        backup_request("pair", "local", proto::BackupKind::Full),
    )
    .await;
    let last = watch_to_end(&client, &run_id).await.pop().expect("final");
    assert_eq!(last.state(), proto::RunState::Failed, "{last:?}");
    assert!(
        last.error_message.contains("snapshot") && last.error_message.contains("flush refused"),
        "{}",
        last.error_message
    );
    let failed: Vec<_> = last
        .nodes
        .iter()
        .filter(|node| node.phase() == proto::NodePhase::Failed)
        .collect();
    assert_eq!(failed.len(), 1, "{:?}", last.nodes);
    assert!(failed[0].last_error.contains("flush refused"), "{failed:?}");
    // The healthy node either finished its upload (done) or was stopped mid-way (canceled).
    let other = last
        .nodes
        .iter()
        .find(|node| node.phase() != proto::NodePhase::Failed)
        .expect("the healthy node");
    assert!(
        matches!(
            other.phase(),
            proto::NodePhase::Done | proto::NodePhase::Canceled
        ),
        "{other:?}"
    );
    // Nothing committed, nothing listed, no snapshot left on either node.
    let committed = coffer_tests::tree(&root.path().join("backups"))
        .keys()
        .filter(|path| path.ends_with("backup.json"))
        .count();
    assert_eq!(committed, 0);
    let backups = client
        .backups()
        .list_backups(proto::ListBackupsRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert!(backups.backups.is_empty());
    for agent in [&healthy, &broken] {
        let left = coffer_tests::snapshots_left(&agent.data).await;
        assert!(left.is_empty(), "{}: {left:?}", agent.data.display());
    }
}

/// A cluster of one agent with `megabytes` of random data, a location, and a client.
async fn slow_setup(root: &Path, megabytes: usize) -> (TestAgent, TestServer, CofferClient) {
    let agent = TestAgent::start(root, "a").await;
    for file in 0..megabytes {
        write(
            &agent.data.join(format!("f{file}.bin")),
            &noise(1 << 20, file as u64),
        );
    }
    let server = TestServer::start(root).await;
    let client = server.client().await;
    client
        .clusters()
        .register_cluster(register("slow", vec![node(&agent)]))
        .await
        .expect("register");
    create_fs_location(&client, "local", &root.join("backups")).await;
    (agent, server, client)
}

fn rate_limited(bytes_per_second: i64) -> proto::StartBackupRequest {
    let mut request = backup_request("slow", "local", proto::BackupKind::Full);
    if let Some(spec) = request.backup.as_mut() {
        spec.limits = Some(proto::TransferLimits {
            rate_limit_bytes_per_second: bytes_per_second,
            concurrency: 1,
            ..Default::default()
        });
    }
    request
}

#[tokio::test]
async fn cancel_mid_run_commits_nothing_and_leaves_no_snapshot() {
    let root = tempfile::tempdir().expect("tempdir");
    let (agent, _server, client) = slow_setup(root.path(), 8).await;
    let run_id = start(&client, rate_limited(1 << 20)).await;

    // Wait until bytes move, then cancel.
    let mut stream = client
        .runs()
        .watch_run(proto::WatchRunRequest {
            run_id: run_id.clone(),
            min_update_interval: None,
        })
        .await
        .expect("watch")
        .into_inner();
    while let Some(message) = stream.message().await.expect("watch stream") {
        let run = message.run.expect("run");
        if run.totals.as_ref().is_some_and(|t| t.bytes_done > 0) {
            break;
        }
        assert!(
            !matches!(
                run.state(),
                proto::RunState::Succeeded | proto::RunState::Failed
            ),
            "{run:?}"
        );
    }
    let canceling = client
        .runs()
        .cancel_run(proto::CancelRunRequest {
            run_id: run_id.clone(),
        })
        .await
        .expect("cancel")
        .into_inner()
        .run
        .expect("run");
    assert_eq!(canceling.state(), proto::RunState::Canceling);
    let last = watch_to_end(&client, &run_id).await.pop().expect("final");
    assert_eq!(
        last.state(),
        proto::RunState::Canceled,
        "{}",
        last.error_message
    );
    assert!(last.backup_id.is_empty());

    let backups = client
        .backups()
        .list_backups(proto::ListBackupsRequest::default())
        .await
        .expect("list")
        .into_inner()
        .backups;
    assert!(backups.is_empty());
    let committed = coffer_tests::tree(&root.path().join("backups"))
        .keys()
        .filter(|path| path.ends_with("backup.json"))
        .count();
    assert_eq!(committed, 0);
    let snapshots = coffer_tests::snapshots_left(&agent.data).await;
    assert!(snapshots.is_empty(), "{snapshots:?}");

    // Cancelling a finished run is refused; an unknown one is not found.
    let status = client
        .runs()
        .cancel_run(proto::CancelRunRequest { run_id })
        .await
        .expect_err("finished");
    assert_eq!(status.code(), Code::FailedPrecondition);
    let status = client
        .runs()
        .cancel_run(proto::CancelRunRequest {
            run_id: "0193a0b4-0000-7000-8000-000000000001".into(),
        })
        .await
        .expect_err("unknown");
    assert_eq!(status.code(), Code::NotFound);
}

#[tokio::test]
async fn watchers_see_the_same_progress_and_a_late_one_gets_the_current_state_first() {
    let root = tempfile::tempdir().expect("tempdir");
    let (_agent, _server, client) = slow_setup(root.path(), 6).await;
    let run_id = start(&client, rate_limited(3 << 20)).await;

    let early = {
        let (client, run_id) = (client.clone(), run_id.clone());
        tokio::spawn(async move { watch_to_end(&client, &run_id).await })
    };
    let second = {
        let (client, run_id) = (client.clone(), run_id.clone());
        tokio::spawn(async move { watch_to_end(&client, &run_id).await })
    };
    // Join late, once bytes moved: the first message is the state now, not the start.
    loop {
        let run = get_run(&client, &run_id).await;
        if run.totals.as_ref().is_some_and(|t| t.bytes_done > 0) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let late = watch_to_end(&client, &run_id).await;
    let early = early.await.expect("early watcher");
    let second = second.await.expect("second watcher");

    let first_late = late.first().expect("late first message");
    assert!(
        first_late.totals.as_ref().is_some_and(|t| t.bytes_done > 0),
        "{first_late:?}"
    );
    for seen in [&early, &second, &late] {
        let last = seen.last().expect("final");
        assert_eq!(last.state(), proto::RunState::Succeeded);
        // Coalesced: a few messages a second, not one per file.
        assert!(seen.len() < 200, "{} messages", seen.len());
        // Progress never goes backwards.
        let done: Vec<u64> = seen
            .iter()
            .map(|r| r.totals.as_ref().map_or(0, |t| t.bytes_done))
            .collect();
        assert!(done.windows(2).all(|w| w[0] <= w[1]), "{done:?}");
    }
    assert!(
        early.len() > 2,
        "progress was streamed: {} messages",
        early.len()
    );
    assert_eq!(early.last(), second.last());
    assert_eq!(
        early.last().map(|r| &r.totals),
        late.last().map(|r| &r.totals)
    );

    // A watcher of a finished run gets the final state, then the end of the stream.
    let after = watch_to_end(&client, &run_id).await;
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].state(), proto::RunState::Succeeded);
}

#[tokio::test]
async fn a_location_written_by_a_newer_coffer_is_refused_before_anything_is_written() {
    let root = tempfile::tempdir().expect("tempdir");
    let (agent, _server, client) = slow_setup(root.path(), 1).await;
    let newer = root.path().join("newer");
    write(
        &newer.join("coffer.json"),
        br#"{"format":"coffer","version":99}"#,
    );
    create_fs_location(&client, "newer", &newer).await;
    let run_id = start(
        &client,
        backup_request("slow", "newer", proto::BackupKind::Full),
    )
    .await;
    let last = watch_to_end(&client, &run_id).await.pop().expect("final");
    assert_eq!(last.state(), proto::RunState::Failed);
    assert!(
        last.error_message.contains("version 99"),
        "{}",
        last.error_message
    );
    assert_eq!(
        coffer_tests::tree(&newer).len(),
        1,
        "nothing but the marker"
    );
    assert!(!agent.data.join(".coffer-snapshots").join(&run_id).exists());
}

#[tokio::test]
async fn dry_run_reports_the_plan_and_changes_nothing() {
    let root = tempfile::tempdir().expect("tempdir");
    let (agent, _server, client) = slow_setup(root.path(), 2).await;
    let mut request = backup_request("slow", "local", proto::BackupKind::Full);
    request.dry_run = true;
    let run_id = start(&client, request).await;
    let last = watch_to_end(&client, &run_id).await.pop().expect("final");
    assert_eq!(
        last.state(),
        proto::RunState::Succeeded,
        "{}",
        last.error_message
    );
    assert!(last.dry_run);
    let totals = last.totals.expect("totals");
    assert_eq!(totals.files_total, 2);
    assert_eq!(totals.bytes_total, 2 << 20);
    assert!(coffer_tests::tree(&root.path().join("backups")).is_empty());
    assert!(!agent.data.join(".coffer-snapshots").join(&run_id).exists());
    let backups = client
        .backups()
        .list_backups(proto::ListBackupsRequest::default())
        .await
        .expect("list")
        .into_inner()
        .backups;
    assert!(backups.is_empty());
}

#[tokio::test]
async fn bad_backup_requests_get_the_right_codes() {
    let root = tempfile::tempdir().expect("tempdir");
    let (_agent, _server, client) = slow_setup(root.path(), 4).await;
    let with = |change: fn(&mut proto::StartBackupRequest)| {
        let mut request = backup_request("slow", "local", proto::BackupKind::Full);
        change(&mut request);
        request
    };
    let cases: Vec<(&str, proto::StartBackupRequest, Code, &str)> = vec![
        (
            "unknown cluster",
            with(|r| r.cluster = "nope".into()),
            Code::NotFound,
            "nope",
        ),
        (
            "unknown location",
            with(|r| r.backup.as_mut().expect("spec").location = "nowhere".into()),
            Code::NotFound,
            "nowhere",
        ),
        (
            "no spec",
            with(|r| r.backup = None),
            Code::InvalidArgument,
            "backup",
        ),
        (
            "bad glob",
            with(|r| {
                r.backup.as_mut().expect("spec").filter = Some(proto::PathFilter {
                    include: vec!["**/*.db".into(), "[unclosed".into()],
                    exclude: vec![],
                })
            }),
            Code::InvalidArgument,
            "backup.filter.include[1]",
        ),
        (
            "negative rate",
            with(|r| {
                r.backup.as_mut().expect("spec").limits = Some(proto::TransferLimits {
                    rate_limit_bytes_per_second: -1,
                    ..Default::default()
                })
            }),
            Code::InvalidArgument,
            "backup.limits.rate_limit_bytes_per_second",
        ),
        (
            "negative concurrency",
            with(|r| {
                r.backup.as_mut().expect("spec").limits = Some(proto::TransferLimits {
                    concurrency: -4,
                    ..Default::default()
                })
            }),
            Code::InvalidArgument,
            "backup.limits.concurrency",
        ),
        (
            "negative node parallelism",
            with(|r| {
                r.backup.as_mut().expect("spec").limits = Some(proto::TransferLimits {
                    node_parallelism: -1,
                    ..Default::default()
                })
            }),
            Code::InvalidArgument,
            "backup.limits.node_parallelism",
        ),
    ];
    for (case, request, code, needle) in cases {
        let status = client
            .backups()
            .start_backup(request)
            .await
            .expect_err(case);
        assert_eq!(status.code(), code, "{case}: {}", status.message());
        assert!(
            status.message().contains(needle),
            "{case}: {}",
            status.message()
        );
    }

    // Idempotency: the same key returns the same run; another backup meanwhile is refused.
    let keyed = |key: &str| {
        let mut request = rate_limited(1 << 20);
        request.idempotency_key = key.into();
        request
    };
    let first = start(&client, keyed("nightly-2026-11-21")).await;
    let again = start(&client, keyed("nightly-2026-11-21")).await;
    assert_eq!(first, again);
    let mut other = keyed("nightly-2026-11-21");
    other.dry_run = true;
    let status = client
        .backups()
        .start_backup(other)
        .await
        .expect_err("same key, other parameters");
    assert_eq!(status.code(), Code::AlreadyExists);
    let status = client
        .backups()
        .start_backup(backup_request("slow", "local", proto::BackupKind::Full))
        .await
        .expect_err("a backup is running");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains(&first), "{}", status.message());
    client
        .runs()
        .cancel_run(proto::CancelRunRequest {
            run_id: first.clone(),
        })
        .await
        .expect("cancel");
    watch_to_end(&client, &first).await;

    let status = client
        .backups()
        .get_backup(proto::GetBackupRequest {
            backup_id: "x".into(),
        })
        .await
        .expect_err("malformed id");
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = client
        .runs()
        .get_run(proto::GetRunRequest {
            run_id: "0193a0b4-0000-7000-8000-000000000001".into(),
        })
        .await
        .expect_err("unknown run");
    assert_eq!(status.code(), Code::NotFound);
}

#[tokio::test]
async fn a_server_killed_mid_run_finishes_the_run_truthfully_after_restart() {
    let root = tempfile::tempdir().expect("tempdir");
    let (agent, server, client) = slow_setup(root.path(), 8).await;
    let run_id = start(&client, rate_limited(1 << 20)).await;
    loop {
        let run = get_run(&client, &run_id).await;
        if run.totals.as_ref().is_some_and(|t| t.bytes_done > 0) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    server.process.kill().await;

    let restarted = TestServer::start(root.path()).await;
    let client = restarted.client().await;
    let mut last = None;
    for _ in 0..200 {
        let run = get_run(&client, &run_id).await;
        if matches!(
            run.state(),
            proto::RunState::Failed | proto::RunState::Succeeded
        ) {
            last = Some(run);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let run = last.expect("the interrupted run was finished");
    assert_eq!(run.state(), proto::RunState::Failed);
    assert!(
        run.error_message.contains("server stopped"),
        "{}",
        run.error_message
    );
    // Its snapshot was removed, and the cluster can back up again.
    for _ in 0..100 {
        if !agent.data.join(".coffer-snapshots").join(&run_id).exists() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(!agent.data.join(".coffer-snapshots").join(&run_id).exists());
    let (_, made) = backup(
        &client,
        backup_request("slow", "local", proto::BackupKind::Full),
    )
    .await;
    assert_eq!(made.totals.expect("totals").file_count, 8);
}

#[tokio::test]
async fn backups_go_to_seaweedfs_over_s3_with_credentials_by_reference() {
    let root = tempfile::tempdir().expect("tempdir");
    let weed = coffer_tests::SeaweedFs::start(root.path()).await;
    // The agents read the credentials from their environment: the catalog only names them.
    let agents = futures_free_start(root.path(), &weed).await;
    for (index, agent) in agents.iter().enumerate() {
        write(&agent.data.join("big.bin"), &noise(12 << 20, index as u64));
        write(
            &agent.data.join("small.txt"),
            format!("node {index}\n").repeat(100).as_bytes(),
        );
    }
    let server = TestServer::start(root.path()).await;
    let client = server.client().await;
    client
        .clusters()
        .register_cluster(register("s3", agents.iter().map(node).collect()))
        .await
        .expect("register");
    let location = crate::create_weed_location(
        &client,
        "weed",
        &weed,
        "team/backups",
        ("TEST_S3_KEY", "TEST_S3_SECRET"),
    )
    .await;
    let shown = format!("{location:?}");
    assert!(
        !shown.contains(&weed.secret_key),
        "no secret in answers: {shown}"
    );

    let (_, full) = backup(
        &client,
        backup_request("s3", "weed", proto::BackupKind::Full),
    )
    .await;
    let totals = full.totals.expect("totals");
    assert_eq!(totals.file_count, 6);
    assert_eq!(totals.uploaded_objects, 6);
    let files = files_of(&client, &full.id).await;
    assert_eq!(files.len(), 6);
    // The agent counted its requests to S3 by operation, and nothing names a bucket's path.
    let agent_metrics = crate::metrics::metrics_address(&root.path().join("a/agent.log")).await;
    let (_, scrape) = crate::metrics::get(&agent_metrics, "/metrics").await;
    let writes: f64 = scrape
        .lines()
        .filter(|line| {
            line.starts_with("coffer_agent_opendal_operation_duration_seconds_count{")
                && line.contains("scheme=\"s3\"")
                && line.contains("operation=\"write\"")
        })
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    assert!(
        writes >= 3.0,
        "two objects and a manifest from agent a: {scrape}"
    );
    assert!(
        !scrape.contains("team/backups"),
        "no storage path in a label"
    );

    // Read an object back through S3 and check it is the file's content.
    let operator = coffer_format::open_operator(&coffer_format::StorageConfig {
        location_id: "check".into(),
        name: "check".into(),
        scheme: "s3".into(),
        options: [
            ("bucket".to_string(), weed.bucket.clone()),
            ("endpoint".to_string(), weed.endpoint.clone()),
            ("region".to_string(), "us-east-1".to_string()),
            ("root".to_string(), "/team/backups/".to_string()),
            ("access_key_id".to_string(), weed.access_key.clone()),
            ("secret_access_key".to_string(), weed.secret_key.clone()),
        ]
        .into(),
        secrets: Default::default(),
    })
    .expect("open s3");
    let big = files
        .iter()
        .find(|f| f.path.ends_with("big.bin"))
        .expect("big file");
    let hash = coffer_format::ContentHash::from_hex(&big.blake3_hash).expect("hash");
    let layout = coffer_format::ClusterLayout::new(full.cluster_id.parse().expect("cluster id"));
    let copy = root.path().join("copy.bin");
    coffer_format::download_object(
        &operator,
        &layout.object(&hash),
        &copy,
        hash,
        &coffer_format::object::Keyring::plain(),
        None,
    )
    .await
    .expect("download");
    let node_of_big = agents
        .iter()
        .find(|a| Path::new(&big.path).starts_with(&a.data))
        .expect("owner");
    assert_eq!(
        std::fs::read(&copy).expect("copy"),
        std::fs::read(&big.path).expect("original")
    );
    assert!(node_of_big.data.exists());

    // An incremental with one changed file uploads one object.
    write(&agents[0].data.join("small.txt"), b"changed\n");
    let (_, incremental) = backup(
        &client,
        backup_request("s3", "weed", proto::BackupKind::Incremental),
    )
    .await;
    assert_eq!(incremental.totals.expect("totals").uploaded_objects, 1);

    // Wrong credentials fail the run quickly with the storage's message and the location's name.
    crate::create_weed_location(
        &client,
        "weed-wrong",
        &weed,
        "",
        ("TEST_S3_KEY", "TEST_S3_WRONG"),
    )
    .await;
    let run_id = start(
        &client,
        backup_request("s3", "weed-wrong", proto::BackupKind::Full),
    )
    .await;
    let last = watch_to_end(&client, &run_id).await.pop().expect("final");
    assert_eq!(last.state(), proto::RunState::Failed);
    assert!(
        last.error_message.contains("weed-wrong"),
        "{}",
        last.error_message
    );
}

/// Three agents with the S3 credentials in their environment.
async fn futures_free_start(root: &Path, weed: &coffer_tests::SeaweedFs) -> Vec<TestAgent> {
    let mut agents = Vec::new();
    for name in ["a", "b", "c"] {
        agents.push(
            TestAgent::start_with_credentials(
                root,
                name,
                &[
                    ("TEST_S3_KEY", weed.access_key.as_str()),
                    ("TEST_S3_SECRET", weed.secret_key.as_str()),
                    ("TEST_S3_WRONG", "not-the-secret"),
                ],
                &format!(
                    // The first agent serves metrics: its requests to S3 are counted there.
                    "{}{}",
                    if name == "a" {
                        "metrics-listen = \"127.0.0.1:0\"\n"
                    } else {
                        ""
                    },
                    coffer_tests::credentials(
                        &["env:TEST_S3_KEY", "env:TEST_S3_SECRET", "env:TEST_S3_WRONG"],
                        &weed.endpoint,
                        &[&weed.bucket],
                    )
                ),
            )
            .await,
        );
    }
    agents
}
