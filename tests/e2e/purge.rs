//! Purges with the real binaries: what deleted backups held is freed, what remaining backups
//! refer to stays (stored bytes equal what they refer to), a dry run deletes nothing, and purges
//! run beside backups, many times over, never lose an object a committed backup refers to, in
//! particular the content an incremental backup finds stored already and does not upload.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use coffer_client::{CofferClient, proto};
use coffer_tests::{
    TestAgent, TestServer, create_fs_location, noise, run_backup, tree, watch_to_end, wipe, write,
};
use tonic::Code;

use crate::{node, register};

async fn purge(client: &CofferClient, dry_run: bool) -> proto::Run {
    let run_id = start_purge(client, dry_run).await;
    let run = watch_to_end(client, &run_id).await.pop().expect("final");
    assert_eq!(
        run.state(),
        proto::RunState::Succeeded,
        "{}",
        run.error_message
    );
    assert_eq!(run.kind(), proto::RunKind::Purge);
    run
}

async fn start_purge(client: &CofferClient, dry_run: bool) -> String {
    client
        .locations()
        .purge_location(proto::PurgeLocationRequest {
            location: "vault".into(),
            cluster: "prod".into(),
            dry_run,
        })
        .await
        .expect("purge")
        .into_inner()
        .run_id
}

/// Every object file of the cluster in the location, with its size.
fn stored_objects(objects: &Path) -> BTreeMap<String, u64> {
    let mut found = BTreeMap::new();
    let Ok(fans) = std::fs::read_dir(objects) else {
        return found;
    };
    for fan in fans.flatten() {
        for entry in std::fs::read_dir(fan.path()).expect("read fan").flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.len() == 64 {
                found.insert(name, entry.metadata().expect("stat").len());
            }
        }
    }
    found
}

async fn validation(client: &CofferClient) -> proto::ValidationResult {
    let run_id = client
        .locations()
        .validate_location(proto::ValidateLocationRequest {
            location: "vault".into(),
            cluster: "prod".into(),
            ..Default::default()
        })
        .await
        .expect("validate")
        .into_inner()
        .run_id;
    let run = watch_to_end(client, &run_id).await.pop().expect("final");
    run.validation.expect("a validation")
}

struct Setup {
    agent: TestAgent,
    server: TestServer,
    client: CofferClient,
    objects: PathBuf,
    vault: PathBuf,
}

async fn setup(root: &Path) -> Setup {
    let agent = TestAgent::start(root, "a").await;
    // Metrics on: the first test reads the purge and validation figures.
    let server = TestServer::start_with(root, &["--metrics-listen", "127.0.0.1:0"]).await;
    let client = server.client().await;
    let cluster = client
        .clusters()
        .register_cluster(register("prod", vec![node(&agent)]))
        .await
        .expect("register")
        .into_inner()
        .cluster
        .expect("cluster");
    let vault = root.join("vault");
    create_fs_location(&client, "vault", &vault).await;
    let objects = vault.join("clusters").join(&cluster.id).join("objects");
    Setup {
        agent,
        server,
        client,
        objects,
        vault,
    }
}

#[tokio::test]
async fn a_purge_frees_what_deleted_backups_held_and_keeps_what_backups_refer_to() {
    let root = tempfile::tempdir().expect("tempdir");
    let setup = setup(root.path()).await;
    let (client, data) = (&setup.client, setup.agent.data.clone());
    write(&data.join("ks/t1/data.db"), &noise(300 << 10, 1));
    write(&data.join("ks/t1/index"), &noise(50 << 10, 2));
    let first = run_backup(client, "prod", "vault", proto::BackupKind::Full).await;
    write(&data.join("ks/t1/index"), &noise(60 << 10, 3));
    let second = run_backup(client, "prod", "vault", proto::BackupKind::Incremental).await;
    assert_eq!(second.state(), proto::RunState::Succeeded);
    let kept_tree = tree(&data);
    client
        .backups()
        .delete_backup(proto::DeleteBackupRequest {
            backup_id: first.backup_id.clone(),
        })
        .await
        .expect("delete the first backup");
    let before = stored_objects(&setup.objects);
    assert_eq!(before.len(), 3);

    // A dry run says what would go and deletes nothing.
    let dry = purge(client, true).await;
    let planned = dry.purge_result.expect("a result");
    assert_eq!(
        (planned.objects_listed, planned.objects_unreferenced),
        (3, 1),
        "{planned:?}"
    );
    assert_eq!(planned.objects_deleted, 0);
    assert_eq!(
        planned.uncommitted_folders, 1,
        "the deleted backup's folder: {planned:?}"
    );
    assert_eq!(stored_objects(&setup.objects), before, "nothing deleted");
    let deleted_nodes = setup
        .objects
        .parent()
        .expect("cluster folder")
        .join("backups")
        .join(&first.backup_id)
        .join("nodes");
    let manifests = |folder: &Path| -> usize {
        std::fs::read_dir(folder)
            .map(|entries| entries.flatten().count())
            .unwrap_or(0)
    };
    assert_eq!(
        manifests(&deleted_nodes),
        1,
        "DeleteBackup leaves the node manifests"
    );

    // The purge frees the first index's object, exactly.
    let run = purge(client, false).await;
    let result = run.purge_result.expect("a result");
    let after = stored_objects(&setup.objects);
    assert_eq!(result.objects_deleted, 1, "{result:?}");
    assert_eq!(result.uncommitted_folders, 1, "{result:?}");
    assert_eq!(
        manifests(&deleted_nodes),
        0,
        "the deleted backup's node manifests are gone"
    );
    let gone: Vec<&String> = before
        .keys()
        .filter(|hash| !after.contains_key(*hash))
        .collect();
    assert_eq!(gone.len(), 1);
    assert_eq!(result.bytes_freed, before[gone[0]]);
    assert_eq!(result.bytes_freed, planned.bytes_unreferenced);
    // What stays is what the remaining backup refers to, no more: no orphans, all restorable.
    let checked = validation(client).await;
    assert_eq!(
        (checked.objects_orphaned, checked.objects_missing),
        (0, 0),
        "{checked:?}"
    );
    assert_eq!(checked.objects_referenced, after.len() as u64);
    assert!(checked.backups.iter().all(|backup| backup.restorable));
    // The server's metrics say the same: one object freed (a dry run frees nothing), the
    // validation's findings per cluster.
    let metrics = crate::metrics::metrics_address(&root.path().join("server.log")).await;
    let (_, scrape) = crate::metrics::get(&metrics, "/metrics").await;
    let sample = |series: &str| crate::metrics::sample(&scrape, series);
    assert_eq!(sample("coffer_purged_objects_total"), Some(1.0), "{scrape}");
    assert_eq!(
        sample("coffer_purged_bytes_total"),
        Some(result.bytes_freed as f64)
    );
    assert_eq!(
        sample("coffer_validation_unrestorable_backups{cluster=\"prod\"}"),
        Some(0.0)
    );
    assert_eq!(
        sample("coffer_validation_objects{cluster=\"prod\",problem=\"orphaned\"}"),
        Some(0.0)
    );
    assert!(sample("coffer_last_validation_timestamp_seconds{cluster=\"prod\"}") > Some(0.0));
    assert_eq!(
        sample("coffer_runs_finished_total{kind=\"purge\",outcome=\"succeeded\"}"),
        Some(2.0)
    );
    // Nothing left to purge; through cofferctl.
    let output = setup
        .server
        .cofferctl()
        .args(["location", "purge", "vault", "--cluster", "prod", "--watch"])
        .output()
        .await
        .expect("run cofferctl");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(stdout.contains("0 of 2 objects deleted"), "{stdout}");

    wipe(&data);
    let run_id = client
        .restores()
        .start_restore(proto::StartRestoreRequest {
            cluster: "prod".into(),
            restore: Some(proto::RestoreSpec {
                source: Some(proto::restore_spec::Source::BackupId(
                    second.backup_id.clone(),
                )),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("restore")
        .into_inner()
        .run_id;
    let restored = watch_to_end(client, &run_id).await.pop().expect("final");
    assert_eq!(
        restored.state(),
        proto::RunState::Succeeded,
        "{}",
        restored.error_message
    );
    assert_eq!(tree(&data), kept_tree);
}

/// Backups and purges at once, over and over: files change, some back to content a deleted
/// backup held (stored, unreferenced, marked by a purge) which an incremental backup then finds
/// stored and does not upload. In the end every committed backup restores byte for byte.
#[tokio::test]
async fn purges_beside_backups_never_lose_what_a_committed_backup_refers_to() {
    let root = tempfile::tempdir().expect("tempdir");
    let setup = setup(root.path()).await;
    let (client, data) = (&setup.client, setup.agent.data.clone());
    let contents: Vec<Vec<u8>> = (0..4).map(|n| noise(40 << 10, 100 + n)).collect();
    write(&data.join("ks/stable.db"), &noise(100 << 10, 7));
    let mut trees: BTreeMap<String, BTreeMap<String, Vec<u8>>> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    for round in 0..8usize {
        // Content comes back: round r uses contents[r % 4], which an earlier, deleted backup
        // may have held.
        write(&data.join("ks/flip.db"), &contents[round % contents.len()]);
        write(
            &data.join(format!("ks/new-{round}.db")),
            &noise(8 << 10, 1000 + round as u64),
        );
        let backup_id = client
            .backups()
            .start_backup(proto::StartBackupRequest {
                cluster: "prod".into(),
                backup: Some(proto::BackupSpec {
                    kind: proto::BackupKind::Incremental.into(),
                    location: "vault".into(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .expect("start backup")
            .into_inner()
            .run_id;
        let snapshot_tree = tree(&data);
        // The purge starts while the backup runs (or just before it ends).
        let purge_id = start_purge(client, false).await;
        let (backup, purged) = tokio::join!(
            watch_to_end(client, &backup_id),
            watch_to_end(client, &purge_id)
        );
        let backup = backup.last().expect("final").clone();
        let purged = purged.last().expect("final").clone();
        assert_eq!(
            backup.state(),
            proto::RunState::Succeeded,
            "{}",
            backup.error_message
        );
        assert_eq!(
            purged.state(),
            proto::RunState::Succeeded,
            "{}",
            purged.error_message
        );
        trees.insert(backup.backup_id.clone(), snapshot_tree);
        order.push(backup.backup_id.clone());
        // Keep the last two backups: what the others held becomes unreferenced.
        if order.len() > 2 {
            let oldest = order.remove(0);
            client
                .backups()
                .delete_backup(proto::DeleteBackupRequest {
                    backup_id: oldest.clone(),
                })
                .await
                .expect("delete backup");
            trees.remove(&oldest);
        }
    }
    let final_purge = purge(client, false).await;
    let checked = validation(client).await;
    assert!(
        checked.backups.iter().all(|backup| backup.restorable),
        "{checked:?}"
    );
    assert_eq!(
        checked.objects_orphaned, 0,
        "the last purge left nothing: {final_purge:?}"
    );
    for (backup_id, expected) in &trees {
        wipe(&data);
        let run_id = client
            .restores()
            .start_restore(proto::StartRestoreRequest {
                cluster: "prod".into(),
                restore: Some(proto::RestoreSpec {
                    source: Some(proto::restore_spec::Source::BackupId(backup_id.clone())),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .expect("restore")
            .into_inner()
            .run_id;
        let restored = watch_to_end(client, &run_id).await.pop().expect("final");
        assert_eq!(
            restored.state(),
            proto::RunState::Succeeded,
            "{}",
            restored.error_message
        );
        assert_eq!(
            &tree(&data),
            expected,
            "backup {backup_id} restores byte for byte"
        );
    }
}

/// A purge refuses to run while the location holds a committed backup the catalog does not
/// know (its objects would look unreferenced), and refuses bad input.
#[tokio::test]
async fn a_purge_refuses_a_location_with_backups_the_catalog_does_not_know() {
    let root = tempfile::tempdir().expect("tempdir");
    let setup = setup(root.path()).await;
    let client = &setup.client;
    write(&setup.agent.data.join("f.db"), &noise(10 << 10, 9));
    let backup = run_backup(client, "prod", "vault", proto::BackupKind::Full).await;
    let backups = setup
        .objects
        .parent()
        .expect("cluster folder")
        .join("backups");
    let unknown = backups.join(uuid::Uuid::now_v7().to_string());
    std::fs::create_dir_all(&unknown).expect("mkdir");
    std::fs::copy(
        backups.join(&backup.backup_id).join("backup.json"),
        unknown.join("backup.json"),
    )
    .expect("copy a commit manifest");
    let status = client
        .locations()
        .purge_location(proto::PurgeLocationRequest {
            location: "vault".into(),
            cluster: "prod".into(),
            dry_run: false,
        })
        .await
        .expect_err("refused");
    assert_eq!(
        status.code(),
        Code::FailedPrecondition,
        "{}",
        status.message()
    );
    assert!(status.message().contains("import"), "{}", status.message());
    assert!(setup.vault.exists());
    for (location, cluster, code) in [
        ("", "prod", Code::InvalidArgument),
        ("vault", "", Code::InvalidArgument),
        ("nowhere", "prod", Code::NotFound),
        ("vault", "staging", Code::NotFound),
    ] {
        let status = client
            .locations()
            .purge_location(proto::PurgeLocationRequest {
                location: location.into(),
                cluster: cluster.into(),
                dry_run: true,
            })
            .await
            .expect_err("refused");
        assert_eq!(status.code(), code, "{}", status.message());
    }
}

/// What an agent remembers of a location does not outlive a purge: a file left out of the
/// backups that remain (by a path filter) loses its object to a purge, and the next incremental
/// backup, whose agent remembers the file as unchanged and its content as stored, uploads it
/// again instead of trusting that memory.
#[tokio::test]
async fn after_a_purge_no_agent_trusts_what_it_remembered_of_the_location() {
    let root = tempfile::tempdir().expect("tempdir");
    let setup = setup(root.path()).await;
    let (client, data) = (&setup.client, setup.agent.data.clone());
    write(&data.join("ks/kept.db"), &noise(30 << 10, 1));
    write(&data.join("ks/other.db"), &noise(30 << 10, 2));
    let filtered = |include: &str, kind: proto::BackupKind| proto::StartBackupRequest {
        cluster: "prod".into(),
        backup: Some(proto::BackupSpec {
            kind: kind.into(),
            location: "vault".into(),
            filter: (!include.is_empty()).then(|| proto::PathFilter {
                include: vec![include.into()],
                exclude: vec![],
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let backup = |request: proto::StartBackupRequest| async move {
        let run_id = client
            .backups()
            .start_backup(request)
            .await
            .expect("start")
            .into_inner()
            .run_id;
        let run = watch_to_end(client, &run_id).await.pop().expect("final");
        assert_eq!(
            run.state(),
            proto::RunState::Succeeded,
            "{}",
            run.error_message
        );
        run
    };
    let everything = backup(filtered("", proto::BackupKind::Full)).await;
    let only_other = backup(filtered("**/other.db", proto::BackupKind::Incremental)).await;
    client
        .backups()
        .delete_backup(proto::DeleteBackupRequest {
            backup_id: everything.backup_id.clone(),
        })
        .await
        .expect("delete");
    let purged = purge(client, false).await.purge_result.expect("a result");
    assert_eq!(purged.objects_deleted, 1, "kept.db's content: {purged:?}");
    // kept.db is unchanged since the first backup, whose agent remembers its content stored.
    let next = backup(filtered("", proto::BackupKind::Incremental)).await;
    let checked = validation(client).await;
    assert!(checked.backups.iter().all(|b| b.restorable), "{checked:?}");
    assert_eq!(checked.objects_missing, 0);
    let expected = tree(&data);
    wipe(&data);
    let run_id = client
        .restores()
        .start_restore(proto::StartRestoreRequest {
            cluster: "prod".into(),
            restore: Some(proto::RestoreSpec {
                source: Some(proto::restore_spec::Source::BackupId(
                    next.backup_id.clone(),
                )),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("restore")
        .into_inner()
        .run_id;
    let restored = watch_to_end(client, &run_id).await.pop().expect("final");
    assert_eq!(
        restored.state(),
        proto::RunState::Succeeded,
        "{}",
        restored.error_message
    );
    assert_eq!(tree(&data), expected);
    drop(only_other);
}

/// A temporary object a writer left between writing and renaming (`<hash>.<uuid>.tmp`) is
/// removed by a purge once it went a day unwritten; a fresh one (a writer may be at it) stays.
/// A dry run counts the old one and removes nothing.
#[tokio::test]
async fn a_purge_removes_temporary_objects_left_a_day_ago() {
    let root = tempfile::tempdir().expect("tempdir");
    let setup = setup(root.path()).await;
    write(&setup.agent.data.join("ks/t1/data.db"), &noise(4096, 3));
    let backup = run_backup(&setup.client, "prod", "vault", proto::BackupKind::Full).await;
    assert_eq!(backup.state(), proto::RunState::Succeeded);
    let before = stored_objects(&setup.objects);
    let fan = setup.objects.join("ab");
    std::fs::create_dir_all(&fan).expect("fan");
    let hash = "ab".repeat(32);
    let stale = fan.join(format!("{hash}.0123456789abcdef.tmp"));
    let fresh = fan.join(format!("{hash}.fedcba9876543210.tmp"));
    std::fs::write(&stale, vec![7u8; 1000]).expect("stale");
    std::fs::write(&fresh, vec![7u8; 500]).expect("fresh");
    let two_days_ago =
        std::time::SystemTime::now() - std::time::Duration::from_secs(2 * 24 * 60 * 60);
    std::fs::File::options()
        .write(true)
        .open(&stale)
        .expect("open stale")
        .set_modified(two_days_ago)
        .expect("age it");

    let dry = purge(&setup.client, true)
        .await
        .purge_result
        .expect("result");
    assert_eq!(
        (dry.temporary_objects_deleted, dry.temporary_bytes_freed),
        (1, 1000),
        "{dry:?}"
    );
    assert!(
        stale.exists() && fresh.exists(),
        "a dry run removes nothing"
    );

    let done = purge(&setup.client, false)
        .await
        .purge_result
        .expect("result");
    assert_eq!(
        (done.temporary_objects_deleted, done.temporary_bytes_freed),
        (1, 1000),
        "{done:?}"
    );
    assert_eq!(done.objects_deleted, 0, "every object is referenced");
    assert!(!stale.exists(), "the day-old temporary object is gone");
    assert!(fresh.exists(), "a fresh one may still be written");
    assert_eq!(stored_objects(&setup.objects), before);
    let checked = validation(&setup.client).await;
    assert_eq!(checked.objects_orphaned, 0, "temporaries are not objects");
    assert!(checked.backups.iter().all(|backup| backup.restorable));

    // Without --cluster, cofferctl purges every registered cluster's objects there, in turn.
    let output = setup
        .server
        .cofferctl()
        .args(["location", "purge", "vault", "--dry-run", "--watch"])
        .output()
        .await
        .expect("run cofferctl");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        stdout.matches("(dry run)").count(),
        1,
        "one cluster: {stdout}"
    );
}
