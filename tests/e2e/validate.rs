//! Validating a location: every backup checked against one listing of the objects; a missing
//! object makes the backup that needs it unrestorable, naming the file; a deleted backup leaves
//! orphans; cofferctl exits 8 when a backup would not restore.

use coffer_client::{CofferClient, proto};
use coffer_tests::{
    TestAgent, TestServer, create_fs_location, noise, run_backup, watch_to_end, write,
};
use tonic::Code;

use crate::{node, register};

async fn validate(client: &CofferClient) -> proto::Run {
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
    assert_eq!(
        run.state(),
        proto::RunState::Succeeded,
        "{}",
        run.error_message
    );
    assert_eq!(run.kind(), proto::RunKind::Validate);
    run
}

#[tokio::test]
async fn validation_finds_missing_objects_unreadable_manifests_and_orphans() {
    let root = tempfile::tempdir().expect("tempdir");
    let agent = TestAgent::start(root.path(), "a").await;
    let data = agent.data.clone();
    let big = noise(200 << 10, 5);
    write(&data.join("ks/t1/data.db"), &big);
    write(&data.join("ks/t1/index"), b"v1\n");
    let server = TestServer::start(root.path()).await;
    let client = server.client().await;
    let cluster = client
        .clusters()
        .register_cluster(register("prod", vec![node(&agent)]))
        .await
        .expect("register")
        .into_inner()
        .cluster
        .expect("cluster");
    let vault = root.path().join("vault");
    create_fs_location(&client, "vault", &vault).await;
    let first = run_backup(&client, "prod", "vault", proto::BackupKind::Full).await;
    write(&data.join("ks/t1/index"), b"v2\n");
    let second = run_backup(&client, "prod", "vault", proto::BackupKind::Incremental).await;
    assert_eq!(second.state(), proto::RunState::Succeeded);

    // Everything stored is needed and present.
    let run = validate(&client).await;
    let result = run.validation.expect("a result");
    assert_eq!(result.backups.len(), 2);
    assert!(
        result.backups.iter().all(|backup| backup.restorable),
        "{result:?}"
    );
    assert_eq!(result.backups[0].backup_id, first.backup_id, "oldest first");
    assert_eq!(result.backups[1].files_checked, 2);
    assert_eq!(
        (result.objects_missing, result.objects_orphaned),
        (0, 0),
        "{result:?}"
    );
    assert_eq!(
        result.objects_listed, 3,
        "data.db, index v1, index v2: {result:?}"
    );
    let cofferctl = |args: &'static [&'static str]| {
        let mut command = server.cofferctl();
        async move { command.args(args).output().await.expect("run cofferctl") }
    };
    let output = cofferctl(&[
        "location",
        "validate",
        "vault",
        "--cluster",
        "prod",
        "--watch",
    ])
    .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("2 of 2 backups restore"), "{stdout}");

    // The first backup deleted: what only it needed is orphaned.
    client
        .backups()
        .delete_backup(proto::DeleteBackupRequest {
            backup_id: first.backup_id.clone(),
        })
        .await
        .expect("delete backup");
    let result = validate(&client).await.validation.expect("a result");
    assert_eq!(result.backups.len(), 1);
    assert_eq!(result.objects_orphaned, 1, "index v1: {result:?}");
    assert!(result.orphaned_bytes > 0);

    // The object holding data.db is lost: the second backup would not restore, and says why.
    let hash = blake3::hash(&big).to_hex().to_string();
    let object = vault
        .join("clusters")
        .join(&cluster.id)
        .join("objects")
        .join(&hash[..2])
        .join(&hash);
    std::fs::remove_file(&object).expect("lose an object");
    let result = validate(&client).await.validation.expect("a result");
    let backup = &result.backups[0];
    assert!(!backup.restorable);
    assert_eq!(backup.missing_objects, 1);
    assert!(
        backup.affected_files[0].contains("ks/t1/data.db")
            && backup.affected_files[0].contains(&hash),
        "{:?}",
        backup.affected_files
    );
    assert_eq!(result.objects_missing, 1);
    let output = cofferctl(&[
        "location",
        "validate",
        "vault",
        "--cluster",
        "prod",
        "--watch",
    ])
    .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(8), "{stdout}");
    assert!(
        stdout.contains("0 of 1 backups restore") && stdout.contains("NO"),
        "{stdout}"
    );
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("1 of 1 backups would not restore"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // Its node manifest lost too: named as the problem.
    let manifests = vault
        .join("clusters")
        .join(&cluster.id)
        .join("backups")
        .join(&second.backup_id)
        .join("nodes");
    for entry in std::fs::read_dir(&manifests).expect("read manifests") {
        std::fs::remove_file(entry.expect("entry").path()).expect("lose a manifest");
    }
    let result = validate(&client).await.validation.expect("a result");
    assert!(!result.backups[0].restorable);
    assert!(
        result.backups[0].error.contains("manifest"),
        "{:?}",
        result.backups[0]
    );

    for (location, cluster, code) in [
        ("", "prod", Code::InvalidArgument),
        ("vault", "", Code::InvalidArgument),
        ("nowhere", "prod", Code::NotFound),
        ("vault", "staging", Code::NotFound),
    ] {
        let status = client
            .locations()
            .validate_location(proto::ValidateLocationRequest {
                location: location.into(),
                cluster: cluster.into(),
                ..Default::default()
            })
            .await
            .expect_err("refused");
        assert_eq!(status.code(), code, "{}", status.message());
    }
}
