//! An agent lost in the middle of a backup: the run says which node was lost and what became of
//! its work, and the snapshot the lost agent kept is removed once it is back.

use coffer_client::proto;
use coffer_tests::{
    TestAgent, TestServer, create_fs_location, noise, snapshots_left, watch_to_end, write,
};

use crate::{node, register};

#[tokio::test]
async fn an_agent_killed_mid_backup_is_named_and_its_snapshot_goes_when_it_is_back() {
    let root = tempfile::tempdir().expect("tempdir");
    let agent = TestAgent::start(root.path(), "a").await;
    let address = agent.process.host_port().to_string();
    let node_id = agent.node_id();
    let data = agent.data.clone();
    // Many files, so that progress shows file by file long before the end.
    for n in 0..40 {
        write(&data.join(format!("ks/t{n}.db")), &noise(256 << 10, n));
    }
    let server = TestServer::start(root.path()).await;
    let client = server.client().await;
    client
        .clusters()
        .register_cluster(register("prod", vec![node(&agent)]))
        .await
        .expect("register");
    create_fs_location(&client, "vault", &root.path().join("vault")).await;
    let run_id = coffer_tests::start_throttled_backup(&client, "prod", "vault", 1 << 20).await;
    agent.process.kill().await;
    let run = watch_to_end(&client, &run_id).await.pop().expect("final");
    assert_eq!(run.state(), proto::RunState::Failed);
    println!("run error: {}", run.error_message);
    println!("node error: {}", run.nodes[0].last_error);
    assert!(
        run.error_message.contains(&node_id),
        "{}",
        run.error_message
    );
    assert!(
        run.error_message.contains("lost contact"),
        "{}",
        run.error_message
    );
    assert!(
        !run.error_message.contains("h2 protocol"),
        "{}",
        run.error_message
    );
    assert_eq!(
        snapshots_left(&data).await.len(),
        1,
        "the lost agent kept its snapshot"
    );

    // Back on its address: the next backup of the cluster first removes the failed run's
    // snapshot, then makes its own (and removes that one when done).
    let _agent = TestAgent::start_on(root.path(), "a", &address).await;
    let next = coffer_tests::run_backup(&client, "prod", "vault", proto::BackupKind::Full).await;
    assert_eq!(
        next.state(),
        proto::RunState::Succeeded,
        "{}",
        next.error_message
    );
    assert_eq!(snapshots_left(&data).await, Vec::<String>::new());
}

#[tokio::test]
async fn an_agent_killed_mid_restore_is_named_and_the_same_restore_finishes_it() {
    let root = tempfile::tempdir().expect("tempdir");
    let agent = TestAgent::start(root.path(), "a").await;
    let address = agent.process.host_port().to_string();
    let node_id = agent.node_id();
    let data = agent.data.clone();
    for n in 0..40 {
        write(
            &data.join(format!("ks/t{n}.db")),
            &noise(256 << 10, 100 + n),
        );
    }
    let original = coffer_tests::tree(&data);
    let server = TestServer::start(root.path()).await;
    let client = server.client().await;
    client
        .clusters()
        .register_cluster(register("prod", vec![node(&agent)]))
        .await
        .expect("register");
    create_fs_location(&client, "vault", &root.path().join("vault")).await;
    let backup = coffer_tests::run_backup(&client, "prod", "vault", proto::BackupKind::Full).await;
    assert_eq!(backup.state(), proto::RunState::Succeeded);
    coffer_tests::wipe(&data);
    let restore = |limits: Option<proto::TransferLimits>| proto::StartRestoreRequest {
        cluster: "prod".into(),
        restore: Some(proto::RestoreSpec {
            source: Some(proto::restore_spec::Source::BackupId(
                backup.backup_id.clone(),
            )),
            limits,
            ..Default::default()
        }),
        ..Default::default()
    };
    let run_id = client
        .restores()
        .start_restore(restore(Some(proto::TransferLimits {
            rate_limit_bytes_per_second: 1 << 20,
            ..Default::default()
        })))
        .await
        .expect("start restore")
        .into_inner()
        .run_id;
    coffer_tests::wait_until_bytes_move(&client, &run_id).await;
    agent.process.kill().await;
    let run = watch_to_end(&client, &run_id).await.pop().expect("final");
    assert_eq!(run.state(), proto::RunState::Failed);
    assert!(
        run.error_message.contains(&node_id)
            && run
                .error_message
                .contains("lost contact with the agent during the restore"),
        "{}",
        run.error_message
    );

    let _agent = TestAgent::start_on(root.path(), "a", &address).await;
    let again = client
        .restores()
        .start_restore(restore(None))
        .await
        .expect("restore again")
        .into_inner()
        .run_id;
    let finished = watch_to_end(&client, &again).await.pop().expect("final");
    assert_eq!(
        finished.state(),
        proto::RunState::Succeeded,
        "{}",
        finished.error_message
    );
    assert_eq!(coffer_tests::tree(&data), original);
}
