//! Small files in object storage go into packs (SeaweedFS, the real agent and server): one
//! object for many files, found again by incremental and full backups, restored whole, purged
//! once no backup refers to them, and missed by validation when gone.

use std::collections::BTreeMap;

use coffer_client::{CofferClient, proto};
use coffer_format::{SecretSource, StorageConfig, open_operator};
use coffer_tests::{SeaweedFs, TestServer, noise, run_backup, run_restore, tree, wipe, write};

/// The objects of cluster `cluster_id` in the bucket, with their sizes.
async fn stored_objects(op: &opendal::Operator, cluster_id: &str) -> BTreeMap<String, u64> {
    op.list_with(&format!("clusters/{cluster_id}/objects/"))
        .recursive(true)
        .await
        .expect("list objects")
        .into_iter()
        .filter(|entry| entry.metadata().is_file())
        .map(|entry| (entry.path().to_string(), entry.metadata().content_length()))
        .collect()
}

fn operator(weed: &SeaweedFs, dir: &std::path::Path) -> opendal::Operator {
    let secret = dir.join("weed-secret");
    std::fs::write(&secret, &weed.secret_key).expect("write secret");
    open_operator(&StorageConfig {
        location_id: "packs-test".into(),
        name: "weed".into(),
        scheme: "s3".into(),
        options: BTreeMap::from([
            ("bucket".into(), weed.bucket.clone()),
            ("endpoint".into(), weed.endpoint.clone()),
            ("region".into(), "us-east-1".into()),
            ("access_key_id".into(), weed.access_key.clone()),
            ("disable_config_load".into(), "true".into()),
        ]),
        secrets: BTreeMap::from([("secret_access_key".into(), SecretSource::File(secret))]),
    })
    .expect("open the bucket")
}

/// What a backup did: its id, and files skipped and objects uploaded.
struct Backed {
    id: String,
    files_total: u64,
    files_skipped: u64,
    uploaded_objects: u64,
}

async fn backup(client: &CofferClient, kind: proto::BackupKind) -> Backed {
    let run = run_backup(client, "small", "weed", kind).await;
    assert_eq!(
        run.state(),
        proto::RunState::Succeeded,
        "{}",
        run.error_message
    );
    let progress = run.totals.expect("totals");
    let stats = client
        .backups()
        .get_backup(proto::GetBackupRequest {
            backup_id: run.backup_id.clone(),
        })
        .await
        .expect("get backup")
        .into_inner()
        .backup
        .and_then(|backup| backup.totals)
        .expect("the backup's totals");
    Backed {
        id: run.backup_id,
        files_total: progress.files_total,
        files_skipped: progress.files_skipped,
        uploaded_objects: stats.uploaded_objects,
    }
}

async fn delete_backup(client: &CofferClient, backup_id: &str) {
    client
        .backups()
        .delete_backup(proto::DeleteBackupRequest {
            backup_id: backup_id.into(),
        })
        .await
        .expect("delete backup");
}

async fn finished(client: &CofferClient, run_id: String) -> proto::Run {
    coffer_tests::watch_to_end(client, &run_id)
        .await
        .pop()
        .expect("a final state")
}

async fn validation(client: &CofferClient) -> proto::ValidationResult {
    let run_id = client
        .locations()
        .validate_location(proto::ValidateLocationRequest {
            location: "weed".into(),
            cluster: "small".into(),
            ..Default::default()
        })
        .await
        .expect("validate")
        .into_inner()
        .run_id;
    finished(client, run_id)
        .await
        .validation
        .expect("a validation")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_files_are_packed_found_again_purged_with_their_backups_and_missed_when_gone() {
    let root = tempfile::tempdir().expect("tempdir");
    let weed = SeaweedFs::start(root.path()).await;
    let agent = crate::weed_agent(root.path(), "a", &weed, "").await;
    // 300 small files of 250 contents, and one file too large to pack.
    for index in 0..300 {
        write(
            &agent.data.join(format!("ks/t{}/f{index}.db", index % 3)),
            format!("content {}\n", index % 250).repeat(50).as_bytes(),
        );
    }
    write(&agent.data.join("ks/big.db"), &noise(1 << 20, 7));
    let server = TestServer::start(root.path()).await;
    let client = server.client().await;
    let cluster = client
        .clusters()
        .register_cluster(crate::register("small", vec![crate::node(&agent)]))
        .await
        .expect("register")
        .into_inner()
        .cluster
        .expect("the cluster");
    crate::create_weed_location(
        &client,
        "weed",
        &weed,
        "",
        ("TEST_S3_KEY", "TEST_S3_SECRET"),
    )
    .await;
    let op = operator(&weed, root.path());

    let totals = backup(&client, proto::BackupKind::Full).await;
    let first = totals.id.clone();
    assert_eq!(totals.files_total, 301);
    assert_eq!(
        totals.uploaded_objects, 2,
        "one pack for the 300 small files, one object for the large one"
    );
    assert_eq!(totals.files_skipped, 50, "each content packed once");
    let first_objects = stored_objects(&op, &cluster.id).await;
    assert_eq!(first_objects.len(), 2, "{first_objects:?}");

    for index in [0, 1, 2, 150, 299] {
        write(
            &agent.data.join(format!("ks/t{}/f{index}.db", index % 3)),
            format!("changed {index}\n").as_bytes(),
        );
    }
    let totals = backup(&client, proto::BackupKind::Incremental).await;
    let incremental = totals.id.clone();
    assert_eq!(
        totals.uploaded_objects, 1,
        "the five changed files, one pack"
    );
    assert_eq!(totals.files_skipped, 296);

    // A full backup reads every file again and finds each content where a pack holds it.
    let totals = backup(&client, proto::BackupKind::Full).await;
    let second_full = totals.id.clone();
    assert_eq!(totals.uploaded_objects, 0);
    assert_eq!(totals.files_skipped, 301);
    assert_eq!(stored_objects(&op, &cluster.id).await.len(), 3);

    // Every small file changed: the first packs are needed only by the backups before.
    for index in 0..300 {
        write(
            &agent.data.join(format!("ks/t{}/f{index}.db", index % 3)),
            format!("third {index}\n").as_bytes(),
        );
    }
    let totals = backup(&client, proto::BackupKind::Incremental).await;
    let last = totals.id.clone();
    assert_eq!(totals.uploaded_objects, 1);
    let expected = tree(&agent.data);
    for backup_id in [&first, &incremental, &second_full] {
        delete_backup(&client, backup_id).await;
    }
    let run_id = client
        .locations()
        .purge_location(proto::PurgeLocationRequest {
            location: "weed".into(),
            cluster: "small".into(),
            dry_run: false,
        })
        .await
        .expect("purge")
        .into_inner()
        .run_id;
    let purge = finished(&client, run_id).await;
    assert_eq!(
        purge.state(),
        proto::RunState::Succeeded,
        "{}",
        purge.error_message
    );
    let purged = purge.purge_result.expect("a result");
    assert_eq!(purged.objects_deleted, 2, "the first two packs: {purged:?}");
    let left = stored_objects(&op, &cluster.id).await;
    assert_eq!(
        left.len(),
        2,
        "the large file's object and the last pack: {left:?}"
    );

    // After the purge the agent trusts nothing it remembered: the next backup still restores.
    write(&agent.data.join("ks/t0/f0.db"), b"after the purge\n");
    let after_purge = backup(&client, proto::BackupKind::Incremental).await.id;
    let expected_after = tree(&agent.data);
    wipe(&agent.data);
    let restore = run_restore(&client, "small", &after_purge).await;
    assert_eq!(
        restore.state(),
        proto::RunState::Succeeded,
        "{}",
        restore.error_message
    );
    assert_eq!(
        tree(&agent.data),
        expected_after,
        "every file as it was backed up"
    );
    wipe(&agent.data);
    let restore = run_restore(&client, "small", &last).await;
    assert_eq!(
        restore.state(),
        proto::RunState::Succeeded,
        "{}",
        restore.error_message
    );
    assert_eq!(tree(&agent.data), expected);

    let result = validation(&client).await;
    assert!(
        result.backups.iter().all(|backup| backup.restorable),
        "{result:?}"
    );
    // The last pack gone: validation names the files it held, and a restore fails clearly.
    let pack = stored_objects(&op, &cluster.id)
        .await
        .into_iter()
        .find(|(_, size)| *size < 1 << 20)
        .map(|(path, _)| path)
        .expect("the pack");
    op.delete(&pack).await.expect("delete the pack");
    let result = validation(&client).await;
    let broken = result
        .backups
        .iter()
        .find(|backup| backup.backup_id == last)
        .expect("the last backup validated");
    assert!(!broken.restorable, "{broken:?}");
    assert_eq!(broken.missing_objects, 1);
    let pack_hash = pack.rsplit('/').next().expect("a name");
    assert!(
        broken
            .affected_files
            .iter()
            .all(|file| file.contains(&format!("(pack {pack_hash} missing)"))),
        "{broken:?}"
    );
    wipe(&agent.data);
    let restore = run_restore(&client, "small", &last).await;
    assert_eq!(restore.state(), proto::RunState::Failed);
    assert!(
        restore.error_message.contains(pack_hash),
        "{}",
        restore.error_message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_packs_hold_no_plaintext_and_restore_across_a_key_rotation() {
    const MARKER: &str = "PACKED-LEDGER-ROW";
    let root = tempfile::tempdir().expect("tempdir");
    let weed = SeaweedFs::start(root.path()).await;
    let mut keys = String::new();
    for (name, seed) in [("site-2026", 1), ("site-2027", 2)] {
        let file = crate::key_file(root.path(), &format!("{name}.key"), seed);
        keys.push_str(&format!(
            "\n[[keys]]\nname = {name:?}\nfile = {:?}\nendpoints = [{:?}]\nbuckets = [{:?}]\n",
            file.display().to_string(),
            weed.endpoint,
            weed.bucket
        ));
    }
    let agent = crate::weed_agent(root.path(), "a", &weed, &keys).await;
    for index in 0..40 {
        write(
            &agent.data.join(format!("ks/t1/f{index}.db")),
            format!("{MARKER} {index}\n").repeat(20).as_bytes(),
        );
    }
    let server = TestServer::start(root.path()).await;
    let client = server.client().await;
    let cluster = client
        .clusters()
        .register_cluster(crate::register("small", vec![crate::node(&agent)]))
        .await
        .expect("register")
        .into_inner()
        .cluster
        .expect("the cluster");
    let mut sealed =
        crate::weed_location_request("weed", &weed, "", ("TEST_S3_KEY", "TEST_S3_SECRET"));
    sealed.encryption_key = "site-2026".into();
    client
        .locations()
        .create_location(sealed)
        .await
        .expect("create an encrypted location");
    let op = operator(&weed, root.path());

    let first = backup(&client, proto::BackupKind::Full).await;
    assert_eq!(first.uploaded_objects, 1, "one sealed pack");
    client
        .locations()
        .update_location(proto::UpdateLocationRequest {
            location: "weed".into(),
            encryption_key: Some("site-2027".into()),
            ..Default::default()
        })
        .await
        .expect("rotate the key");
    write(&agent.data.join("ks/t1/f0.db"), b"after the rotation\n");
    let second = backup(&client, proto::BackupKind::Incremental).await;
    assert_eq!(
        second.uploaded_objects, 1,
        "one pack, sealed with the new key"
    );
    for (path, _) in stored_objects(&op, &cluster.id).await {
        let stored = op.read(&path).await.expect("read a pack").to_vec();
        assert!(
            !String::from_utf8_lossy(&stored).contains(MARKER),
            "{path} holds plaintext"
        );
    }

    // The restore reads one pack sealed with each key, and checks every file against its name.
    let expected = tree(&agent.data);
    wipe(&agent.data);
    let restore = run_restore(&client, "small", &second.id).await;
    assert_eq!(
        restore.state(),
        proto::RunState::Succeeded,
        "{}",
        restore.error_message
    );
    assert_eq!(tree(&agent.data), expected);
}
