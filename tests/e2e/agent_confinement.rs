//! An agent opens only the storage its own configuration names, whatever a request asks for.
//! Through the server's API, a location whose endpoint is a listener of the caller's, naming
//! the variable that holds the agents' real storage secret, makes no agent send that secret
//! anywhere; straight to the agent's port, hostile requests cannot read or write files outside
//! its storage roots, nor inside its data paths or state directory, symbolic links included.

use std::collections::HashMap;
use std::time::Duration;

use coffer_client::proto;
use coffer_proto::agent::v1 as agent;
use coffer_proto::agent::v1::agent_service_client::AgentServiceClient;
use coffer_tests::{TestAgent, TestServer, credentials, run_backup, write};
use tonic::Code;

use crate::{node, register};

#[tokio::test]
async fn a_location_cannot_send_a_nodes_storage_secret_to_an_endpoint_of_the_callers_choosing() {
    let root = tempfile::tempdir().expect("tempdir");
    // The real storage the secret is for, and the attacker's listener.
    let real_endpoint = format!("http://{}", coffer_tests::closed_address());
    let attacker = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind attacker");
    let attacker_endpoint = format!("http://{}", attacker.local_addr().expect("address"));
    let agent = TestAgent::start_with_credentials(
        root.path(),
        "a",
        &[("REAL_KEY", "AKIAREAL"), ("REAL_SECRET", "the-real-secret")],
        &credentials(
            &["env:REAL_KEY", "env:REAL_SECRET"],
            &real_endpoint,
            &["backups"],
        ),
    )
    .await;
    write(&agent.data.join("db/data"), b"rows\n");
    let server = TestServer::start(root.path()).await;
    let client = server.client().await;
    client
        .clusters()
        .register_cluster(register("prod", vec![node(&agent)]))
        .await
        .expect("register");
    let env = |name: &str| proto::SecretRef {
        source: Some(proto::secret_ref::Source::Env(name.into())),
    };
    client
        .locations()
        .create_location(proto::CreateLocationRequest {
            name: "exfiltrate".into(),
            options: Some(proto::create_location_request::Options::S3(
                proto::S3LocationOptions {
                    bucket: "backups".into(),
                    endpoint: attacker_endpoint.clone(),
                    force_path_style: true,
                    access_key_id: Some(env("REAL_KEY")),
                    secret_access_key: Some(env("REAL_SECRET")),
                    ..Default::default()
                },
            )),
            compression: None,
            encryption_key: Default::default(),
        })
        .await
        .expect("the server cannot know the agents' bindings");
    let check = client
        .locations()
        .check_location(proto::CheckLocationRequest {
            location: "exfiltrate".into(),
            cluster: "prod".into(),
        })
        .await
        .expect("check")
        .into_inner();
    assert!(!check.ok);
    let node = &check.nodes[0];
    let refusal = format!(
        "{} {}",
        node.error_message,
        node.write
            .as_ref()
            .map(|step| step.error_message.as_str())
            .unwrap_or("")
    );
    assert!(
        refusal.contains("env:REAL_SECRET") || refusal.contains("env:REAL_KEY"),
        "{check:?}"
    );
    assert!(refusal.contains("[[credentials]]"), "{refusal}");
    let run = run_backup(&client, "prod", "exfiltrate", proto::BackupKind::Full).await;
    assert_eq!(run.state(), proto::RunState::Failed);
    assert!(
        run.error_message.contains("[[credentials]]")
            || run
                .nodes
                .iter()
                .any(|n| n.last_error.contains("[[credentials]]")),
        "{run:?}"
    );
    // Nobody ever knocked on the attacker's door.
    let knocked = tokio::time::timeout(Duration::from_millis(500), attacker.accept()).await;
    assert!(
        knocked.is_err(),
        "the agent connected to the caller's endpoint"
    );
    // Neither the secret's value nor its key id reached a log.
    for log in [
        root.path().join("a/agent.log"),
        root.path().join("server.log"),
    ] {
        let text = std::fs::read_to_string(&log).expect("log");
        assert!(
            !text.contains("the-real-secret") && !text.contains("AKIAREAL"),
            "a secret in {}",
            log.display()
        );
    }
}

fn fs_location(folder: &std::path::Path) -> Option<agent::StorageLocation> {
    Some(agent::StorageLocation {
        location_id: "hostile".into(),
        name: "hostile".into(),
        scheme: "fs".into(),
        options: HashMap::from([("root".to_string(), folder.display().to_string())]),
        secrets: HashMap::new(),
    })
}

#[tokio::test]
async fn hostile_requests_straight_to_an_agent_stay_inside_its_storage_roots() {
    let root = tempfile::tempdir().expect("tempdir");
    let agent = TestAgent::start(root.path(), "a").await;
    write(&agent.data.join("db/secret.db"), b"customer rows\n");
    // Outside the agent's storage root (the test's folder), and a link from inside to it.
    let outside = tempfile::tempdir().expect("outside");
    write(&outside.path().join("shadow"), b"root:x:0:0\n");
    std::os::unix::fs::symlink(outside.path(), root.path().join("link")).expect("link");
    let mut client = AgentServiceClient::connect(agent.process.url.clone())
        .await
        .expect("connect to the agent");

    let refused = |status: tonic::Status, what: &str| {
        assert!(
            matches!(
                status.code(),
                Code::FailedPrecondition | Code::InvalidArgument
            ),
            "{what}: {status:?}"
        );
    };
    for folder in [
        outside.path().to_path_buf(),
        root.path().join("link"),
        root.path().join("link/deeper"),
        std::path::PathBuf::from("/"),
        std::path::PathBuf::from("/etc"),
        agent.data.clone(),
        agent.data.join("db"),
        agent.state.clone(),
        root.path().join("a"),
    ] {
        let status = client
            .get_object(agent::GetObjectRequest {
                location: fs_location(&folder),
                path: "shadow".into(),
            })
            .await
            .expect_err("read refused");
        refused(status, &format!("read in {}", folder.display()));
        let status = client
            .put_object(agent::PutObjectRequest {
                location: fs_location(&folder),
                path: "planted".into(),
                content: b"#!/bin/sh\n".to_vec(),
            })
            .await
            .expect_err("write refused");
        refused(status, &format!("write in {}", folder.display()));
        let status = client
            .list_objects(agent::ListObjectsRequest {
                location: fs_location(&folder),
                prefix: String::new(),
                recursive: true,
            })
            .await
            .expect_err("list refused");
        refused(status, &format!("list of {}", folder.display()));
    }
    assert!(!outside.path().join("planted").exists());
    assert!(!agent.data.join("planted").exists());
    assert!(!agent.data.join("db/planted").exists());

    // Inside a storage root, paths still cannot climb out.
    let vault = root.path().join("vault");
    for path in ["../a/data/db/secret.db", "/etc/passwd", "a/../../x", ""] {
        let status = client
            .get_object(agent::GetObjectRequest {
                location: fs_location(&vault),
                path: path.into(),
            })
            .await
            .expect_err("path refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{path}: {status:?}");
    }
    // And the storage it may use works.
    client
        .put_object(agent::PutObjectRequest {
            location: fs_location(&vault),
            path: "probe".into(),
            content: b"ok".to_vec(),
        })
        .await
        .expect("write inside a storage root");
    assert_eq!(std::fs::read(vault.join("probe")).expect("written"), b"ok");

    // A secret reference no [[credentials]] entry binds is never used.
    let status = client
        .get_object(agent::GetObjectRequest {
            location: Some(agent::StorageLocation {
                location_id: "s3".into(),
                name: "s3".into(),
                scheme: "s3".into(),
                options: HashMap::from([
                    ("bucket".to_string(), "any".to_string()),
                    ("endpoint".to_string(), "http://127.0.0.1:9".to_string()),
                    ("region".to_string(), "us-east-1".to_string()),
                ]),
                secrets: HashMap::from([(
                    "secret_access_key".to_string(),
                    agent::SecretRef {
                        source: Some(agent::secret_ref::Source::Env("HOME".into())),
                    },
                )]),
            }),
            path: "x".into(),
        })
        .await
        .expect_err("unbound secret");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("env:HOME"),
        "{}",
        status.message()
    );
}

/// Credentials an agent's process happens to have (the AWS variables in its environment) are
/// never used for a location that names none: its requests go unsigned, so a location naming
/// an endpoint of the caller's learns no key id and gets no signature.
#[tokio::test]
async fn an_agents_ambient_credentials_are_never_sent_for_a_location_that_names_none() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let root = tempfile::tempdir().expect("tempdir");
    let attacker = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind attacker");
    let attacker_endpoint = format!("http://{}", attacker.local_addr().expect("address"));
    let agent = TestAgent::start_with_credentials(
        root.path(),
        "a",
        &[
            ("AWS_ACCESS_KEY_ID", "AKIAAMBIENTKEY"),
            ("AWS_SECRET_ACCESS_KEY", "ambient-secret"),
        ],
        "",
    )
    .await;
    let server = TestServer::start(root.path()).await;
    let client = server.client().await;
    client
        .clusters()
        .register_cluster(register("prod", vec![node(&agent)]))
        .await
        .expect("register");
    client
        .locations()
        .create_location(proto::CreateLocationRequest {
            name: "ambient".into(),
            options: Some(proto::create_location_request::Options::S3(
                proto::S3LocationOptions {
                    bucket: "backups".into(),
                    endpoint: attacker_endpoint,
                    force_path_style: true,
                    ..Default::default()
                },
            )),
            compression: None,
            encryption_key: Default::default(),
        })
        .await
        .expect("create");
    // The attacker records every request it gets, and answers each with an error.
    let recorded = tokio::spawn(async move {
        let mut seen = Vec::new();
        while let Ok(Ok((mut stream, _))) =
            tokio::time::timeout(Duration::from_secs(3), attacker.accept()).await
        {
            let mut buffer = vec![0u8; 16 * 1024];
            if let Ok(Ok(read)) =
                tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buffer)).await
            {
                seen.extend_from_slice(&buffer[..read]);
            }
            let _ = stream
                .write_all(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n")
                .await;
        }
        seen
    });
    let check = client
        .locations()
        .check_location(proto::CheckLocationRequest {
            location: "ambient".into(),
            cluster: "prod".into(),
        })
        .await
        .expect("check")
        .into_inner();
    assert!(!check.ok);
    let seen = String::from_utf8_lossy(&recorded.await.expect("attacker")).into_owned();
    assert!(
        !seen.is_empty(),
        "the agent did send its (unsigned) request"
    );
    assert!(
        !seen.contains("AKIAAMBIENTKEY") && !seen.to_ascii_lowercase().contains("authorization:"),
        "the agent signed with its ambient credentials:\n{seen}"
    );
}
