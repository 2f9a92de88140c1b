//! TLS on the API: the server serves TLS with an operator's certificate; cofferctl (--ca-cert),
//! the Rust SDK, grpcurl, `buf curl` and a generated Python client speak it; a client that does
//! not trust the CA, or speaks plaintext, gets nowhere; with --tls-client-ca only clients with a
//! certificate of that CA get in. Outside loopback, neither binary serves plaintext unless told.

use std::process::Stdio;

use coffer_client::{CofferClient, proto};
use coffer_tests::{TestPki, TestServer, tool};

async fn start_tls(root: &std::path::Path, pki: &TestPki, client_ca: bool) -> TestServer {
    let (cert, key, ca) = (
        pki.server_cert.display().to_string(),
        pki.server_key.display().to_string(),
        pki.ca.display().to_string(),
    );
    let mut args = vec!["--tls-cert", cert.as_str(), "--tls-key", key.as_str()];
    if client_ca {
        args.extend(["--tls-client-ca", ca.as_str()]);
    }
    let mut server = TestServer::start_with(root, &args).await;
    server.tls = Some(pki.client_tls(client_ca));
    server
}

async fn list_clusters(client: &CofferClient) -> Result<usize, tonic::Status> {
    client
        .clusters()
        .list_clusters(proto::ListClustersRequest::default())
        .await
        .map(|response| response.into_inner().clusters.len())
}

/// Connects and lists, as a client with `tls` would; `Err` when either fails.
async fn try_list(
    server: &TestServer,
    address: &str,
    tls: Option<&coffer_client::TlsSettings>,
) -> Result<usize, String> {
    let client = CofferClient::connect_with(address, tls)
        .await
        .map_err(|error| error.to_string())?
        .with_token(server.admin_token.as_deref().expect("token"))
        .map_err(|error| error.to_string())?;
    list_clusters(&client)
        .await
        .map_err(|status| status.to_string())
}

#[tokio::test]
async fn the_api_serves_tls_to_every_client_that_trusts_its_ca() {
    let root = tempfile::tempdir().expect("tempdir");
    let pki = TestPki::new(&root.path().join("pki"));
    let server = start_tls(root.path(), &pki, false).await;
    assert!(
        server.process.url.starts_with("https://"),
        "{}",
        server.process.url
    );
    let address = server.process.host_port().to_string();
    assert_eq!(
        list_clusters(&server.client().await)
            .await
            .expect("over TLS"),
        0
    );

    // Plaintext, or a CA the server's certificate is not from: no answer.
    assert!(
        try_list(&server, &format!("http://{address}"), None)
            .await
            .is_err()
    );
    let stranger = coffer_client::TlsSettings {
        ca_pem: std::fs::read(&pki.stranger_ca).expect("ca"),
        identity: None,
    };
    assert!(try_list(&server, &address, Some(&stranger)).await.is_err());

    // cofferctl with --ca-cert; without it, it cannot talk to the server.
    let output = server
        .cofferctl()
        .arg("--ca-cert")
        .arg(&pki.ca)
        .args(["cluster", "list"])
        .output()
        .await
        .expect("run cofferctl");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let output = server
        .cofferctl()
        .args(["cluster", "list"])
        .output()
        .await
        .expect("run cofferctl");
    assert!(!output.status.success(), "plaintext to a TLS server");

    let authorization = format!(
        "authorization: Bearer {}",
        server.admin_token.as_deref().expect("token")
    );
    // grpcurl, with reflection over TLS.
    let output = tokio::process::Command::new(tool("grpcurl"))
        .arg("-cacert")
        .arg(&pki.ca)
        .args(["-H", &authorization, "-d", "{}", &address])
        .arg("coffer.v1.ClusterService/ListClusters")
        .output()
        .await
        .expect("run grpcurl");
    assert!(
        output.status.success(),
        "grpcurl: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    // buf curl, with reflection over TLS.
    let output = tokio::process::Command::new(tool("buf"))
        .args(["curl", "--protocol", "grpc", "--cacert"])
        .arg(&pki.ca)
        .args(["-H", &authorization, "-d", "{}"])
        .arg(format!(
            "https://{address}/coffer.v1.ClusterService/ListClusters"
        ))
        .output()
        .await
        .expect("run buf curl");
    assert!(
        output.status.success(),
        "buf curl: {}",
        String::from_utf8_lossy(&output.stderr)
    );

    // A generated Python client with grpc.ssl_channel_credentials.
    let generated = root.path().join("python-client");
    crate::sdk_python::generate_python_client(&generated).await;
    let script = format!(
        r#"
import grpc
from coffer.v1 import cluster_pb2, cluster_pb2_grpc
credentials = grpc.ssl_channel_credentials(root_certificates=open({ca:?}, "rb").read())
with grpc.secure_channel({address:?}, credentials) as channel:
    listed = cluster_pb2_grpc.ClusterServiceStub(channel).ListClusters(
        cluster_pb2.ListClustersRequest(), metadata=[("authorization", "Bearer " + {token:?})], timeout=30)
    print("clusters", len(listed.clusters))
"#,
        ca = pki.ca.display().to_string(),
        token = server.admin_token.as_deref().expect("token"),
    );
    let output = tokio::process::Command::new(crate::sdk_python::venv_python())
        .args(["-B", "-c", &script])
        .env("PYTHONPATH", &generated)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run python");
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("clusters 0"),
        "python: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A renewed API certificate is served without a restart: one for another host makes new
/// connections fail the host check, the right one makes them work again.
#[tokio::test]
async fn a_renewed_api_certificate_is_served_without_a_restart() {
    let root = tempfile::tempdir().expect("tempdir");
    let pki = TestPki::new(&root.path().join("pki"));
    let server = start_tls(root.path(), &pki, false).await;
    let address = server.process.host_port().to_string();
    let tls = pki.client_tls(false);
    assert_eq!(try_list(&server, &address, Some(&tls)).await, Ok(0));
    let good = (
        std::fs::read(&pki.server_cert).expect("cert"),
        std::fs::read(&pki.server_key).expect("key"),
    );
    std::fs::copy(&pki.elsewhere_cert, &pki.server_cert).expect("swap cert");
    std::fs::copy(&pki.elsewhere_key, &pki.server_key).expect("swap key");
    coffer_tests::eventually("the server serving the swapped certificate", || async {
        try_list(&server, &address, Some(&tls))
            .await
            .is_err()
            .then_some(())
    })
    .await;
    std::fs::write(&pki.server_cert, &good.0).expect("restore cert");
    std::fs::write(&pki.server_key, &good.1).expect("restore key");
    coffer_tests::eventually("the server serving its certificate again", || async {
        try_list(&server, &address, Some(&tls)).await.ok()
    })
    .await;
}

#[tokio::test]
async fn with_a_client_ca_only_clients_with_its_certificates_get_in() {
    let root = tempfile::tempdir().expect("tempdir");
    let pki = TestPki::new(&root.path().join("pki"));
    let server = start_tls(root.path(), &pki, true).await;
    let address = server.process.host_port().to_string();
    assert_eq!(
        try_list(&server, &address, Some(&pki.client_tls(true))).await,
        Ok(0)
    );
    assert!(
        try_list(&server, &address, Some(&pki.client_tls(false)))
            .await
            .is_err(),
        "no client certificate"
    );
    let intruder = coffer_client::TlsSettings {
        ca_pem: std::fs::read(&pki.ca).expect("ca"),
        identity: Some((
            std::fs::read(&pki.stranger_cert).expect("cert"),
            std::fs::read(&pki.stranger_key).expect("key"),
        )),
    };
    assert!(
        try_list(&server, &address, Some(&intruder)).await.is_err(),
        "a certificate of another CA"
    );
    let output = server
        .cofferctl()
        .arg("--ca-cert")
        .arg(&pki.ca)
        .arg("--client-cert")
        .arg(&pki.client_cert)
        .arg("--client-key")
        .arg(&pki.client_key)
        .args(["token", "whoami"])
        .output()
        .await
        .expect("run cofferctl");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn neither_binary_serves_plaintext_off_loopback_unless_told() {
    let root = tempfile::tempdir().expect("tempdir");
    let server = tokio::process::Command::new(coffer_tests::binary("coffer-server"))
        .args(["--listen", "0.0.0.0:0", "--catalog"])
        .arg(root.path().join("catalog.db"))
        .output()
        .await
        .expect("run the server");
    assert!(!server.status.success());
    let said = String::from_utf8_lossy(&server.stderr);
    assert!(
        said.contains("not a loopback address") && said.contains("tls-cert"),
        "{said}"
    );
    assert!(
        !root.path().join("catalog.db").exists(),
        "refused before anything"
    );

    std::fs::create_dir_all(root.path().join("data")).expect("data");
    let agent = tokio::process::Command::new(coffer_tests::binary("coffer-agent"))
        .args(["--listen", "0.0.0.0:0", "--data-path"])
        .arg(root.path().join("data"))
        .arg("--state-dir")
        .arg(root.path().join("state"))
        .output()
        .await
        .expect("run the agent");
    assert!(!agent.status.success());
    let said = String::from_utf8_lossy(&agent.stderr);
    assert!(
        said.contains("not a loopback address") && said.contains("allow-plaintext"),
        "{said}"
    );
}
