//! Mutual TLS between the server and its agents: an agent serves only callers with a client
//! certificate of the CA it trusts (the server's), the server trusts an agent only when its
//! certificate, from the agents' CA, names the host of the registered address, and an agent
//! serves a renewed certificate without a restart.

use std::path::Path;
use std::time::Duration;

use coffer_client::proto;
use coffer_proto::agent::v1 as agent;
use coffer_proto::agent::v1::agent_service_client::AgentServiceClient;
use coffer_tests::{TestAgent, TestPki, TestServer, create_fs_location, run_backup, write};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::register;

fn path(path: &Path) -> String {
    path.display().to_string()
}

/// An agent serving TLS with `cert`/`key`, for callers with a certificate of `client_ca`.
async fn tls_agent(
    root: &Path,
    name: &str,
    cert: &Path,
    key: &Path,
    client_ca: &Path,
) -> TestAgent {
    let (cert, key, client_ca) = (path(cert), path(key), path(client_ca));
    TestAgent::start_with(
        root,
        name,
        "127.0.0.1:0",
        &[
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--tls-client-ca",
            &client_ca,
        ],
    )
    .await
}

/// Calls GetNodeInfo over a fresh connection trusting `ca`, presenting `identity`.
async fn node_info(
    agent: &TestAgent,
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<String, String> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(ca).expect("ca")));
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(cert).expect("cert"),
            std::fs::read(key).expect("key"),
        ));
    }
    let channel = Endpoint::from_shared(agent.process.url.clone())
        .expect("endpoint")
        .tls_config(tls)
        .map_err(|error| error.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|error| format!("{error:?}"))?;
    AgentServiceClient::new(channel)
        .get_node_info(agent::GetNodeInfoRequest {})
        .await
        .map(|response| {
            response
                .into_inner()
                .node
                .map(|node| node.node_id)
                .unwrap_or_default()
        })
        .map_err(|status| status.to_string())
}

#[tokio::test]
async fn server_and_agents_speak_mutual_tls_and_impostors_on_either_side_are_refused() {
    let root = tempfile::tempdir().expect("tempdir");
    let pki = TestPki::new(&root.path().join("pki"));
    let node = tls_agent(root.path(), "a", &pki.server_cert, &pki.server_key, &pki.ca).await;
    assert!(
        node.process.url.starts_with("https://"),
        "{}",
        node.process.url
    );
    write(&node.data.join("db/data"), b"rows\n");
    let (ca, cert, key) = (path(&pki.ca), path(&pki.client_cert), path(&pki.client_key));
    let server = TestServer::start_with(
        root.path(),
        &[
            "--agent-tls-ca",
            &ca,
            "--agent-tls-cert",
            &cert,
            "--agent-tls-key",
            &key,
        ],
    )
    .await;
    let client = server.client().await;
    let spec = |agent: &TestAgent| proto::NodeSpec {
        address: agent.process.url.clone(),
        datacenter: "dc1".into(),
        rack: "r1".into(),
    };
    client
        .clusters()
        .register_cluster(register("prod", vec![spec(&node)]))
        .await
        .expect("register over mutual TLS");
    create_fs_location(&client, "vault", &root.path().join("vault")).await;
    let run = run_backup(&client, "prod", "vault", proto::BackupKind::Full).await;
    assert_eq!(
        run.state(),
        proto::RunState::Succeeded,
        "{}",
        run.error_message
    );

    // Callers of the agent: with the server's certificate, yes; without one, with one of
    // another CA (someone impersonating the server), or in plaintext, no.
    assert_eq!(
        node_info(&node, &pki.ca, Some((&pki.client_cert, &pki.client_key))).await,
        Ok(node.node_id())
    );
    assert!(
        node_info(&node, &pki.ca, None).await.is_err(),
        "no client certificate"
    );
    assert!(
        node_info(
            &node,
            &pki.ca,
            Some((&pki.stranger_cert, &pki.stranger_key))
        )
        .await
        .is_err(),
        "a client certificate of another CA"
    );
    let plaintext =
        AgentServiceClient::connect(node.process.url.replacen("https://", "http://", 1)).await;
    if let Ok(mut plaintext) = plaintext {
        assert!(
            plaintext
                .get_node_info(agent::GetNodeInfoRequest {})
                .await
                .is_err(),
            "plaintext to a TLS agent"
        );
    }

    // An impostor at an address: its certificate is not from the agents' CA. Registering it
    // fails, naming the address.
    let impostor = tls_agent(
        root.path(),
        "impostor",
        &pki.stranger_server_cert,
        &pki.stranger_server_key,
        &pki.ca,
    )
    .await;
    let status = client
        .clusters()
        .register_cluster(register("fake", vec![spec(&impostor)]))
        .await
        .expect_err("an impostor is not registered");
    assert!(
        status.message().contains(impostor.process.host_port()),
        "{}",
        status.message()
    );

    // A renewed certificate is served without a restart: a certificate for another host makes
    // new connections fail the host check, the right one makes them work again.
    let agent_cert = pki.server_cert.clone();
    let agent_key = pki.server_key.clone();
    let good = (
        std::fs::read(&agent_cert).expect("cert"),
        std::fs::read(&agent_key).expect("key"),
    );
    std::fs::copy(&pki.elsewhere_cert, &agent_cert).expect("swap cert");
    std::fs::copy(&pki.elsewhere_key, &agent_key).expect("swap key");
    let identity = Some((pki.client_cert.as_path(), pki.client_key.as_path()));
    coffer_tests::eventually("the agent serving the swapped certificate", || async {
        node_info(&node, &pki.ca, identity)
            .await
            .is_err()
            .then_some(())
    })
    .await;
    std::fs::write(&agent_cert, &good.0).expect("restore cert");
    std::fs::write(&agent_key, &good.1).expect("restore key");
    coffer_tests::eventually("the agent serving its certificate again", || async {
        node_info(&node, &pki.ca, identity).await.ok()
    })
    .await;
}

/// `coffer-server agent-ca`, as docs/security.md shows it.
fn agent_ca(args: &[&str]) -> std::process::Output {
    std::process::Command::new(coffer_tests::binary("coffer-server"))
        .arg("agent-ca")
        .args(args)
        .output()
        .expect("run coffer-server agent-ca")
}

#[tokio::test]
async fn the_servers_own_agent_ca_sets_mutual_tls_up_in_four_commands() {
    use std::os::unix::fs::PermissionsExt;

    let root = tempfile::tempdir().expect("tempdir");
    let ca = root.path().join("agent-ca");
    let made = agent_ca(&["init", &path(&ca)]);
    assert!(made.status.success(), "{made:?}");
    let again = agent_ca(&["init", &path(&ca)]);
    assert!(!again.status.success(), "a second CA over the first");
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("exists already"),
        "{again:?}"
    );
    let mode = |file: &Path| std::fs::metadata(file).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&ca.join("ca.key")), 0o600);

    let node_files = root.path().join("node-a-tls");
    let issued = agent_ca(&[
        "issue",
        &path(&ca),
        "--host",
        "127.0.0.1",
        "--out",
        &path(&node_files),
    ]);
    assert!(issued.status.success(), "{issued:?}");
    assert_eq!(mode(&node_files.join("agent.key")), 0o600);
    let node = TestAgent::start_with(
        root.path(),
        "a",
        "127.0.0.1:0",
        &["--tls-dir", &path(&node_files)],
    )
    .await;
    write(
        &node.data.join("db/rows"),
        b"rows over the server's own CA\n",
    );
    let server = TestServer::start_with(root.path(), &["--agent-ca", &path(&ca)]).await;
    let client = server.client().await;
    let spec = |agent: &TestAgent| proto::NodeSpec {
        address: agent.process.url.clone(),
        datacenter: "dc1".into(),
        rack: "r1".into(),
    };
    client
        .clusters()
        .register_cluster(register("prod", vec![spec(&node)]))
        .await
        .expect("register over the agent CA's certificates");
    create_fs_location(&client, "vault", &root.path().join("vault")).await;
    let run = run_backup(&client, "prod", "vault", proto::BackupKind::Full).await;
    assert_eq!(
        run.state(),
        proto::RunState::Succeeded,
        "{}",
        run.error_message
    );
    // The agent serves only the CA's clients.
    assert_eq!(
        node_info(
            &node,
            &ca.join("ca.pem"),
            Some((&ca.join("server-client.pem"), &ca.join("server-client.key")))
        )
        .await,
        Ok(node.node_id())
    );
    assert!(node_info(&node, &ca.join("ca.pem"), None).await.is_err());

    // A certificate of the same CA for another host does not make an agent the node at this
    // address.
    let other_files = root.path().join("node-b-tls");
    let issued = agent_ca(&[
        "issue",
        &path(&ca),
        "--host",
        "db-b.invalid",
        "--out",
        &path(&other_files),
    ]);
    assert!(issued.status.success(), "{issued:?}");
    let impostor = TestAgent::start_with(
        root.path(),
        "b",
        "127.0.0.1:0",
        &["--tls-dir", &path(&other_files)],
    )
    .await;
    let status = client
        .clusters()
        .register_cluster(register("fake", vec![spec(&impostor)]))
        .await
        .expect_err("a certificate for another host");
    assert!(
        status.message().contains(impostor.process.host_port()),
        "{}",
        status.message()
    );

    // Renewal: issuing again for the node replaces its files in place (the reload itself is
    // checked above); the running agent goes on serving and a second backup works.
    let before = std::fs::read(node_files.join("agent.pem")).expect("cert");
    let renewed = agent_ca(&[
        "issue",
        &path(&ca),
        "--host",
        "127.0.0.1",
        "--out",
        &path(&node_files),
        "--days",
        "30",
    ]);
    assert!(renewed.status.success(), "{renewed:?}");
    assert_ne!(
        std::fs::read(node_files.join("agent.pem")).expect("cert"),
        before
    );
    let run = run_backup(&client, "prod", "vault", proto::BackupKind::Full).await;
    assert_eq!(
        run.state(),
        proto::RunState::Succeeded,
        "{}",
        run.error_message
    );
    // Bad input: a host with a port, a CA folder without a CA.
    for args in [
        vec![
            "issue",
            &*path(&ca),
            "--host",
            "db1:7400",
            "--out",
            "/tmp/x",
        ],
        vec!["issue", "/nonexistent", "--host", "db1", "--out", "/tmp/x"],
    ] {
        let refused = agent_ca(&args);
        assert!(!refused.status.success(), "{args:?}");
    }
}
