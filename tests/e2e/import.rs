//! A catalog rebuilt from a location alone: back up, lose the catalog, start a new server,
//! import the location, and everything is back (the cluster with its id and nodes, the
//! backups with their kinds, parents and times, the schedule with its retention), restorable
//! byte for byte; importing again changes nothing; a conflicting name changes nothing.

use std::time::Duration;

use coffer_client::{CofferClient, proto};
use coffer_tests::{
    TestAgent, TestServer, create_fs_location, noise, run_backup, tree, watch_to_end, wipe, write,
};
use tonic::Code;

use crate::{node, register};

async fn import(
    client: &CofferClient,
    via: &str,
) -> Result<proto::ImportLocationResponse, tonic::Status> {
    client
        .locations()
        .import_location(proto::ImportLocationRequest {
            location: "vault".into(),
            agent: via.into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn backups(client: &CofferClient) -> Vec<proto::Backup> {
    client
        .backups()
        .list_backups(proto::ListBackupsRequest::default())
        .await
        .expect("list backups")
        .into_inner()
        .backups
}

#[tokio::test]
async fn a_lost_catalog_is_rebuilt_from_the_location_and_restores_byte_identical() {
    let root = tempfile::tempdir().expect("tempdir");
    let agent = TestAgent::start(root.path(), "a").await;
    let data = agent.data.clone();
    write(&data.join("ks/t1/data.db"), &noise(300 << 10, 1));
    write(&data.join("ks/t1/index"), b"v1\n");
    let vault = root.path().join("vault");

    // The first server: a cluster, a schedule, a full and an incremental backup.
    let first_root = root.path().join("first");
    std::fs::create_dir_all(&first_root).expect("mkdir");
    let first = TestServer::start(&first_root).await;
    let client = first.client().await;
    let mut registration = register("prod", vec![node(&agent)]);
    registration.labels = [("env".to_string(), "prod".to_string())].into();
    let cluster = client
        .clusters()
        .register_cluster(registration)
        .await
        .expect("register")
        .into_inner()
        .cluster
        .expect("cluster");
    create_fs_location(&client, "vault", &vault).await;
    let schedule = client
        .schedules()
        .create_schedule(proto::CreateScheduleRequest {
            name: "nightly".into(),
            cluster: "prod".into(),
            trigger: Some(proto::create_schedule_request::Trigger::Cron(
                proto::CronTrigger {
                    expression: "30 2 * * *".into(),
                    time_zone: "Europe/Berlin".into(),
                },
            )),
            backup: Some(proto::BackupSpec {
                kind: proto::BackupKind::Incremental.into(),
                location: "vault".into(),
                ..Default::default()
            }),
            retention: Some(proto::RetentionPolicy {
                keep_last: 5,
                keep_daily: 7,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("create schedule")
        .into_inner()
        .schedule
        .expect("schedule");
    let full = run_backup(&client, "prod", "vault", proto::BackupKind::Full).await;
    assert_eq!(
        full.state(),
        proto::RunState::Succeeded,
        "{}",
        full.error_message
    );
    write(&data.join("ks/t1/index"), b"v2\n");
    write(&data.join("ks/t2/more.db"), &noise(100 << 10, 2));
    let incremental = run_backup(&client, "prod", "vault", proto::BackupKind::Incremental).await;
    assert_eq!(incremental.state(), proto::RunState::Succeeded);
    let expected_tree = tree(&data);
    let before = backups(&client).await;
    assert_eq!(before.len(), 2);
    first.process.stop().await;

    // The catalog is lost: a new server on an empty one, the location created again.
    let second_root = root.path().join("second");
    std::fs::create_dir_all(&second_root).expect("mkdir");
    let second = TestServer::start(&second_root).await;
    let client = second.client().await;
    create_fs_location(&client, "vault", &vault).await;
    assert!(backups(&client).await.is_empty());
    let report = import(&client, agent.process.host_port())
        .await
        .expect("import");
    assert_eq!(
        (
            report.clusters_imported,
            report.backups_imported,
            report.schedules_imported,
            report.backups_uncommitted
        ),
        (1, 2, 1, 0),
        "{report:?}"
    );
    assert!(report.skipped.is_empty(), "{report:?}");

    // The same cluster, backups and schedule, by id.
    let imported = client
        .clusters()
        .get_cluster(proto::GetClusterRequest {
            cluster: cluster.id.clone(),
        })
        .await
        .expect("the cluster is back under its id")
        .into_inner()
        .cluster
        .expect("cluster");
    assert_eq!(imported.name, "prod");
    assert_eq!(imported.labels.get("env").map(String::as_str), Some("prod"));
    assert_eq!(imported.nodes.len(), 1);
    assert_eq!(imported.nodes[0].id, agent.node_id());
    let after = backups(&client).await;
    let summary = |list: &[proto::Backup]| -> Vec<(String, i32, String, Option<i64>)> {
        list.iter()
            .map(|backup| {
                (
                    backup.id.clone(),
                    backup.kind,
                    backup.parent_backup_id.clone(),
                    backup.start_time.map(|time| time.seconds),
                )
            })
            .collect()
    };
    assert_eq!(summary(&after), summary(&before));
    assert_eq!(after[0].totals, before[0].totals);
    let nightly = client
        .schedules()
        .get_schedule(proto::GetScheduleRequest {
            schedule: schedule.id.clone(),
        })
        .await
        .expect("the schedule is back under its id")
        .into_inner()
        .schedule
        .expect("schedule");
    assert_eq!(nightly.name, "nightly");
    assert_eq!(nightly.retention, schedule.retention);
    assert_eq!(nightly.trigger, schedule.trigger);
    assert_eq!(nightly.cluster_name, "prod");
    assert!(!nightly.upcoming_fire_times.is_empty());

    // Importing again changes nothing.
    let again = import(&client, agent.process.host_port())
        .await
        .expect("import again");
    assert_eq!(
        (
            again.clusters_imported,
            again.clusters_matched,
            again.backups_imported,
            again.backups_present,
            again.schedules_imported,
            again.schedules_present
        ),
        (0, 1, 0, 2, 0, 1),
        "{again:?}"
    );

    // The same through cofferctl.
    let output = second
        .cofferctl()
        .args([
            "location",
            "import",
            "vault",
            "--via",
            agent.process.host_port(),
        ])
        .output()
        .await
        .expect("run cofferctl");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("Backups:")
            && stdout.contains("0 imported, 2 there already, 0 without a commit manifest"),
        "{stdout}"
    );

    // Restorable by id and by point in time, byte for byte.
    wipe(&data);
    let restore = |source: proto::restore_spec::Source| proto::StartRestoreRequest {
        cluster: "prod".into(),
        restore: Some(proto::RestoreSpec {
            source: Some(source),
            overwrite: true,
            ..Default::default()
        }),
        ..Default::default()
    };
    for source in [
        proto::restore_spec::Source::BackupId(incremental.backup_id.clone()),
        proto::restore_spec::Source::PointInTime(proto::PointInTime {
            source_cluster: "prod".into(),
            as_of_time: Some(prost_types::Timestamp::from(
                std::time::SystemTime::now() + Duration::from_secs(60),
            )),
            location: String::new(),
        }),
    ] {
        let run_id = client
            .restores()
            .start_restore(restore(source))
            .await
            .expect("start restore")
            .into_inner()
            .run_id;
        let run = watch_to_end(&client, &run_id).await.pop().expect("final");
        assert_eq!(
            run.state(),
            proto::RunState::Succeeded,
            "{}",
            run.error_message
        );
        assert_eq!(run.backup_id, incremental.backup_id);
        assert_eq!(tree(&data), expected_tree);
    }
}

#[tokio::test]
async fn an_import_whose_names_are_taken_changes_nothing() {
    let root = tempfile::tempdir().expect("tempdir");
    let agent = TestAgent::start(root.path(), "a").await;
    let other = TestAgent::start(root.path(), "b").await;
    write(&agent.data.join("f"), b"content\n");
    let vault = root.path().join("vault");
    let first_root = root.path().join("first");
    std::fs::create_dir_all(&first_root).expect("mkdir");
    let first = TestServer::start(&first_root).await;
    let client = first.client().await;
    client
        .clusters()
        .register_cluster(register("prod", vec![node(&agent)]))
        .await
        .expect("register");
    create_fs_location(&client, "vault", &vault).await;
    let run = run_backup(&client, "prod", "vault", proto::BackupKind::Full).await;
    assert_eq!(run.state(), proto::RunState::Succeeded);
    first.process.stop().await;

    // Another catalog with another cluster named prod.
    let second_root = root.path().join("second");
    std::fs::create_dir_all(&second_root).expect("mkdir");
    let second = TestServer::start(&second_root).await;
    let client = second.client().await;
    client
        .clusters()
        .register_cluster(register("prod", vec![node(&other)]))
        .await
        .expect("register another prod");
    create_fs_location(&client, "vault", &vault).await;
    let status = import(&client, agent.process.host_port())
        .await
        .expect_err("the name is taken");
    assert_eq!(status.code(), Code::AlreadyExists, "{}", status.message());
    assert!(status.message().contains("prod"), "{}", status.message());
    assert!(backups(&client).await.is_empty(), "nothing imported");

    for (location, via, code) in [
        ("", agent.process.host_port(), Code::InvalidArgument),
        ("vault", "", Code::InvalidArgument),
        ("nowhere", agent.process.host_port(), Code::NotFound),
    ] {
        let status = client
            .locations()
            .import_location(proto::ImportLocationRequest {
                location: location.into(),
                agent: via.into(),
            })
            .await
            .expect_err("refused");
        assert_eq!(status.code(), code, "{}", status.message());
    }
}
