//! Backups and restores on Azure Blob Storage (Azurite) and Google Cloud Storage
//! (fake-gcs-server), through locations created with the API: full, incremental, restore of a
//! wiped cluster, and the failures an operator meets first (a missing container or bucket, a
//! wrong key), which must fail the run quickly with the storage's message and the location's name.

use std::path::Path;
use std::time::{Duration, Instant};

use coffer_client::{CofferClient, proto};
use coffer_tests::{
    Azurite, FakeGcs, TestAgent, TestServer, noise, run_backup, tree, watch_to_end, wipe, write,
};

use crate::{node, register};

async fn get_backup(client: &CofferClient, run: &proto::Run) -> proto::Backup {
    assert_eq!(
        run.state(),
        proto::RunState::Succeeded,
        "{}",
        run.error_message
    );
    client
        .backups()
        .get_backup(proto::GetBackupRequest {
            backup_id: run.backup_id.clone(),
        })
        .await
        .expect("get backup")
        .into_inner()
        .backup
        .expect("backup")
}

/// Two agents (with `env` and the `[[credentials]]` entries `credentials`), a cluster `cloud`
/// of them, data on each, and a server.
async fn cluster(
    root: &Path,
    env: &[(&str, &str)],
    credentials: &str,
) -> (Vec<TestAgent>, TestServer, CofferClient) {
    let mut agents = Vec::new();
    for name in ["a", "b"] {
        agents.push(TestAgent::start_with_credentials(root, name, env, credentials).await);
    }
    for (index, agent) in agents.iter().enumerate() {
        // Larger than a chunk (8 MiB): block lists on Azure, several resumable parts on GCS.
        write(
            &agent.data.join("ks/t1/big.db"),
            &noise(9 << 20, index as u64),
        );
        write(
            &agent.data.join("ks/t1/index.txt"),
            format!("node {index}\n").repeat(1000).as_bytes(),
        );
        write(&agent.data.join("ks/t2/empty"), b"");
        write(
            &agent.data.join("top.conf"),
            format!("seed {index}\n").as_bytes(),
        );
    }
    let server = TestServer::start(root).await;
    let client = server.client().await;
    client
        .clusters()
        .register_cluster(register("cloud", agents.iter().map(node).collect()))
        .await
        .expect("register");
    (agents, server, client)
}

async fn create_location(
    client: &CofferClient,
    name: &str,
    options: proto::create_location_request::Options,
) {
    client
        .locations()
        .create_location(proto::CreateLocationRequest {
            name: name.into(),
            compression: None,
            options: Some(options),
            encryption_key: Default::default(),
        })
        .await
        .expect("create location");
}

/// Full backup, incremental after one change, wipe, restore: the trees come back identical.
async fn backup_change_wipe_restore(client: &CofferClient, agents: &[TestAgent], location: &str) {
    let full = get_backup(
        client,
        &run_backup(client, "cloud", location, proto::BackupKind::Full).await,
    )
    .await;
    let totals = full.totals.expect("totals");
    assert_eq!(totals.file_count, 8);
    // Per node, the large file is an object of its own and the three small files one pack.
    assert_eq!(totals.uploaded_objects, 4);

    write(&agents[0].data.join("ks/t1/index.txt"), b"changed\n");
    let incremental = get_backup(
        client,
        &run_backup(client, "cloud", location, proto::BackupKind::Incremental).await,
    )
    .await;
    assert_eq!(
        incremental.totals.expect("totals").uploaded_objects,
        1,
        "an incremental uploads only the change"
    );

    let before: Vec<_> = agents.iter().map(|agent| tree(&agent.data)).collect();
    for agent in agents {
        wipe(&agent.data);
    }
    let run_id = client
        .restores()
        .start_restore(proto::StartRestoreRequest {
            cluster: "cloud".into(),
            restore: Some(proto::RestoreSpec {
                source: Some(proto::restore_spec::Source::BackupId(
                    incremental.id.clone(),
                )),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("start restore")
        .into_inner()
        .run_id;
    let restored = watch_to_end(client, &run_id).await.pop().expect("final");
    assert_eq!(
        restored.state(),
        proto::RunState::Succeeded,
        "{}",
        restored.error_message
    );
    let after: Vec<_> = agents.iter().map(|agent| tree(&agent.data)).collect();
    assert_eq!(before, after, "restored trees differ");
}

/// A backup to `location` fails quickly, naming the location and saying what the storage said.
async fn fails_quickly(client: &CofferClient, location: &str, storage_says: &[&str]) {
    let started = Instant::now();
    let run = run_backup(client, "cloud", location, proto::BackupKind::Full).await;
    assert_eq!(run.state(), proto::RunState::Failed, "{run:?}");
    let message = &run.error_message;
    assert!(message.contains(location), "{message}");
    assert!(
        storage_says.iter().any(|said| message.contains(said)),
        "{message}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}: permanent errors must not be retried",
        started.elapsed()
    );
}

#[tokio::test]
async fn backups_and_restores_work_on_azure_blob_through_azurite() {
    let root = tempfile::tempdir().expect("tempdir");
    let azurite = Azurite::start(root.path()).await;
    // The agents read the account key from their environment: the catalog only names it.
    let (agents, _server, client) = cluster(
        root.path(),
        &[
            ("TEST_AZ_KEY", azurite.account_key.as_str()),
            ("TEST_AZ_WRONG", "bm90LXRoZS1rZXk="),
        ],
        &coffer_tests::credentials(
            &["env:TEST_AZ_KEY", "env:TEST_AZ_WRONG"],
            &azurite.endpoint,
            &[&azurite.container, "missing"],
        ),
    )
    .await;
    let options = |name: &str, container: &str, key_env: &str| {
        (
            name.to_string(),
            proto::create_location_request::Options::Azblob(proto::AzblobLocationOptions {
                container: container.into(),
                endpoint: azurite.endpoint.clone(),
                account_name: azurite.account_name.clone(),
                prefix: "team/backups".into(),
                account_key: Some(proto::SecretRef {
                    source: Some(proto::secret_ref::Source::Env(key_env.into())),
                }),
                ..Default::default()
            }),
        )
    };
    for (name, options) in [
        options("azure", &azurite.container, "TEST_AZ_KEY"),
        options("azure-no-container", "missing", "TEST_AZ_KEY"),
        options("azure-wrong-key", &azurite.container, "TEST_AZ_WRONG"),
    ] {
        create_location(&client, &name, options).await;
    }

    backup_change_wipe_restore(&client, &agents, "azure").await;
    // Coffer never creates containers: the error names the missing one.
    fails_quickly(&client, "azure-no-container", &["ContainerNotFound"]).await;
    fails_quickly(&client, "azure-wrong-key", &["AuthorizationFailure", "403"]).await;
}

#[tokio::test]
async fn backups_and_restores_work_on_gcs_through_fake_gcs_server() {
    let root = tempfile::tempdir().expect("tempdir");
    let gcs = FakeGcs::start(root.path()).await;
    let (agents, _server, client) = cluster(root.path(), &[], "").await;
    // `anonymous` marks the emulator: single-session writes and one-by-one deletes.
    let options = |bucket: &str| {
        proto::create_location_request::Options::Gcs(proto::GcsLocationOptions {
            bucket: bucket.into(),
            endpoint: gcs.endpoint.clone(),
            prefix: "team/backups".into(),
            anonymous: true,
            ..Default::default()
        })
    };
    create_location(&client, "gcs", options(&gcs.bucket)).await;
    create_location(&client, "gcs-no-bucket", options("missing")).await;

    backup_change_wipe_restore(&client, &agents, "gcs").await;
    fails_quickly(&client, "gcs-no-bucket", &["404", "not found", "NotFound"]).await;
}
