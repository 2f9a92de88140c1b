//! The status page: its JSON behind the API's tokens (read scope, by header or by the cookie
//! the login form sets), and the page itself in Debian's chromium, headless, watching a real
//! backup's progress change and its end (tests/browser/status_page.py).

use std::path::Path;
use std::process::Stdio;

use coffer_client::{CofferClient, proto};
use coffer_tests::{TestAgent, TestServer, eventually, noise, repo_root, write};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::sdk_python::venv_python;
use crate::{node, register};

/// The status page address the server logged.
pub(crate) async fn status_address(log: &Path) -> String {
    coffer_tests::logged_address(log, "status page serving").await
}

/// An HTTP/1.1 answer: status code, head (lower-cased) and body.
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) head: String,
    pub(crate) body: String,
}

/// Sends one request with these extra header lines and body.
pub(crate) async fn request(
    address: &str,
    method: &str,
    path: &str,
    headers: &[String],
    body: &str,
) -> Answer {
    let stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect to the status page");
    exchange(stream, address, method, path, headers, body).await
}

/// [`request`] over TLS, trusting the CA in the PEM file `ca`.
async fn request_tls(
    address: &str,
    ca: &Path,
    method: &str,
    path: &str,
    headers: &[String],
    body: &str,
) -> Answer {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca).expect("read the CA") {
        roots
            .add(cert.expect("a CA certificate"))
            .expect("trust the CA");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect to the status page");
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
    let stream = connector.connect(name, tcp).await.expect("TLS handshake");
    exchange(stream, address, method, path, headers, body).await
}

async fn exchange<S>(
    mut stream: S,
    address: &str,
    method: &str,
    path: &str,
    headers: &[String],
    body: &str,
) -> Answer
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut text = format!("{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n");
    for header in headers {
        text.push_str(header);
        text.push_str("\r\n");
    }
    text.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(text.as_bytes()).await.expect("send");
    let mut response = Vec::new();
    // A TLS peer may close without close_notify after Connection: close; what came is enough.
    let _ = stream.read_to_end(&mut response).await;
    let response = String::from_utf8_lossy(&response).to_string();
    let (head, body) = response.split_once("\r\n\r\n").expect("a head and a body");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("a status code");
    Answer {
        status,
        head: head.to_ascii_lowercase(),
        body: body.to_string(),
    }
}

/// A server under `root` serving its status page (agents checked every second), and the
/// page's address.
async fn server_with_status_page(root: &Path) -> (TestServer, String) {
    let server = TestServer::start_with(
        root,
        &[
            "--status-listen",
            "127.0.0.1:0",
            "--agent-check-interval",
            "1s",
        ],
    )
    .await;
    let address = status_address(&root.join("server.log")).await;
    (server, address)
}

async fn create_token(admin: &CofferClient, name: &str, scope: proto::TokenScope) -> String {
    admin
        .tokens()
        .create_token(proto::CreateTokenRequest {
            name: name.into(),
            scope: scope.into(),
            expire_after: None,
        })
        .await
        .expect("create token")
        .into_inner()
        .secret
}

#[tokio::test]
async fn the_status_json_needs_a_read_token_by_header_or_login_cookie() {
    let root = tempfile::tempdir().expect("tempdir");
    let agent = TestAgent::start(root.path(), "a").await;
    write(&agent.data.join("db/table"), b"rows\n");
    let (server, address) = server_with_status_page(root.path()).await;
    let admin = server.client().await;
    admin
        .clusters()
        .register_cluster(register("prod", vec![node(&agent)]))
        .await
        .expect("register");
    let reader = create_token(&admin, "reader", proto::TokenScope::Read).await;

    // The page's own files load without a token: they show nothing by themselves.
    let page = request(&address, "GET", "/", &[], "").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("/status.js"), "{}", page.body);
    assert!(
        page.head
            .contains("content-security-policy: default-src 'none'"),
        "{}",
        page.head
    );
    let script = request(&address, "GET", "/status.js", &[], "").await;
    assert_eq!(script.status, 200);
    assert!(script.body.contains("textContent"), "values go in as text");

    // What the page shows does not.
    let anonymous = request(&address, "GET", "/status.json", &[], "").await;
    assert_eq!(anonymous.status, 401, "{}", anonymous.body);
    let status_with = |authorization: String| {
        let address = address.clone();
        async move {
            request(
                &address,
                "GET",
                "/status.json",
                &[format!("Authorization: {authorization}")],
                "",
            )
            .await
        }
    };
    let wrong = status_with("Bearer coffer_00000000000000000000000000000000_wrong".into()).await;
    assert_eq!(wrong.status, 401, "{}", wrong.body);
    let malformed = status_with("Basic eA==".into()).await;
    assert_eq!(malformed.status, 401, "{}", malformed.body);

    let by_header = status_with(format!("Bearer {reader}")).await;
    assert_eq!(by_header.status, 200, "{}", by_header.body);
    let report: serde_json::Value = serde_json::from_str(&by_header.body).expect("JSON");
    assert_eq!(report["clusters"][0]["name"], "prod", "{report}");
    assert_eq!(
        report["clusters"][0]["nodes"][0]["address"],
        agent.process.url.as_str()
    );

    // The agent check reaches the page.
    eventually("the node shown serving", || async {
        let answer = status_with(format!("Bearer {reader}")).await;
        let report: serde_json::Value = serde_json::from_str(&answer.body).ok()?;
        (report["clusters"][0]["nodes"][0]["health"] == "serving").then_some(())
    })
    .await;

    // The login form: a wrong token sets nothing; a right one sets an HttpOnly, SameSite
    // cookie that then reads the status; logging out clears it.
    let refused = request(
        &address,
        "POST",
        "/login",
        &["Content-Type: application/x-www-form-urlencoded".into()],
        "token=coffer_nope",
    )
    .await;
    assert_eq!(refused.status, 401, "{}", refused.body);
    assert!(!refused.head.contains("set-cookie"), "{}", refused.head);
    let login = request(
        &address,
        "POST",
        "/login",
        &["Content-Type: application/x-www-form-urlencoded".into()],
        &format!("token={reader}"),
    )
    .await;
    assert_eq!(login.status, 303, "{}", login.body);
    let cookie_line = login
        .head
        .lines()
        .find(|line| line.starts_with("set-cookie:"))
        .expect("a cookie")
        .to_string();
    assert!(cookie_line.contains("httponly"), "{cookie_line}");
    assert!(cookie_line.contains("samesite=strict"), "{cookie_line}");
    let by_cookie = request(
        &address,
        "GET",
        "/status.json",
        &[format!("Cookie: other=1; coffer_token={reader}")],
        "",
    )
    .await;
    assert_eq!(by_cookie.status, 200, "{}", by_cookie.body);
    let logout = request(&address, "POST", "/logout", &[], "").await;
    assert_eq!(logout.status, 303);
    assert!(
        logout.head.contains("coffer_token=; path=/; max-age=0"),
        "{}",
        logout.head
    );

    // Read-only: nothing but GET on the status, and no other paths.
    let post = request(
        &address,
        "POST",
        "/status.json",
        &[format!("Authorization: Bearer {reader}")],
        "",
    )
    .await;
    assert_eq!(post.status, 405);
    let missing = request(&address, "GET", "/admin", &[], "").await;
    assert_eq!(missing.status, 404);
}

#[tokio::test]
async fn a_headless_chromium_sees_a_backup_progress_and_end_on_the_status_page() {
    let chromedriver = repo_root().join(".tools/bin/chromedriver");
    assert!(
        chromedriver.exists(),
        "{} is missing: run scripts/install-tools browser (scripts/test does)",
        chromedriver.display()
    );
    let root = tempfile::tempdir().expect("tempdir");
    let agent = TestAgent::start(root.path(), "a").await;
    for file in 0..6 {
        write(
            &agent.data.join(format!("db/f{file}.bin")),
            &noise(1 << 20, file),
        );
    }
    let (server, address) = server_with_status_page(root.path()).await;
    let client = server.client().await;
    crate::prod_with_local(&client, &agent, root.path()).await;

    // 6 MiB at 1 MiB/s: several seconds of progress for the page to show.
    let mut request = crate::backups::backup_request("prod", "local", proto::BackupKind::Full);
    if let Some(spec) = request.backup.as_mut() {
        spec.limits = Some(proto::TransferLimits {
            rate_limit_bytes_per_second: 1 << 20,
            concurrency: 1,
            ..Default::default()
        });
    }
    let run_id = client
        .backups()
        .start_backup(request)
        .await
        .expect("start backup")
        .into_inner()
        .run_id;

    let output = tokio::process::Command::new(venv_python())
        .arg(repo_root().join("tests/browser/status_page.py"))
        .arg("--url")
        .arg(format!("http://{address}/"))
        .arg("--token-file")
        .arg(root.path().join("admin.token"))
        .arg("--run-id")
        .arg(&run_id)
        .arg("--bin")
        .arg(repo_root().join(".tools/bin"))
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run tests/browser/status_page.py");
    assert!(
        output.status.success(),
        "the browser test failed: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    );
    let seen: serde_json::Value = serde_json::from_str(
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .last()
            .expect("a line of what the page showed"),
    )
    .expect("JSON from the browser test");

    assert_eq!(seen["final"]["state"], "succeeded", "{seen}");
    assert!(
        seen["final"]["row"]
            .as_str()
            .is_some_and(|row| row.contains("succeeded")),
        "{seen}"
    );
    assert_eq!(seen["final"]["nodes"], serde_json::json!([1.0]), "{seen}");
    // The progress changed while the page watched: more than one fraction below the end.
    let fractions: Vec<f64> = seen["fractions"]
        .as_array()
        .expect("fractions")
        .iter()
        .filter_map(|node| node[0].as_f64())
        .collect();
    let partial: Vec<f64> = fractions
        .iter()
        .copied()
        .filter(|part| *part > 0.0 && *part < 1.0)
        .collect();
    assert!(
        partial.len() >= 2,
        "progress seen changing: {fractions:?} ({seen})"
    );
    assert!(
        fractions.windows(2).all(|pair| pair[0] <= pair[1]),
        "progress only grows: {fractions:?}"
    );
    let states = seen["states"].as_array().expect("states");
    assert!(states.iter().any(|state| state == "running"), "{seen}");
    assert_eq!(
        seen["node_health"],
        serde_json::json!(["serving"]),
        "{seen}"
    );
    assert_eq!(seen["backups"], 1, "{seen}");
    assert_eq!(seen["title"], "Coffer status");
    println!("the page showed: {seen}");
}

#[tokio::test]
async fn the_status_page_serves_the_apis_tls_and_marks_its_cookie_secure() {
    let root = tempfile::tempdir().expect("tempdir");
    let pki = coffer_tests::TestPki::new(&root.path().join("pki"));
    let (cert, key) = (
        pki.server_cert.display().to_string(),
        pki.server_key.display().to_string(),
    );
    let server = TestServer::start_with(
        root.path(),
        &[
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--status-listen",
            "127.0.0.1:0",
        ],
    )
    .await;
    let address = status_address(&root.path().join("server.log")).await;
    let token = server.admin_token.clone().expect("admin token");

    let answer = request_tls(
        &address,
        &pki.ca,
        "GET",
        "/status.json",
        &[format!("Authorization: Bearer {token}")],
        "",
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(answer.body.contains("\"clusters\":[]"), "{}", answer.body);
    let login = request_tls(
        &address,
        &pki.ca,
        "POST",
        "/login",
        &["Content-Type: application/x-www-form-urlencoded".into()],
        &format!("token={token}"),
    )
    .await;
    assert_eq!(login.status, 303, "{}", login.body);
    let cookie = login
        .head
        .lines()
        .find(|line| line.starts_with("set-cookie:"))
        .expect("a cookie");
    assert!(cookie.ends_with("; secure"), "only over TLS: {cookie}");

    // Plaintext to the TLS port gets nothing.
    let mut plain = tokio::net::TcpStream::connect(&address)
        .await
        .expect("connect");
    plain
        .write_all(b"GET /status.json HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("send");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        plain.read_to_end(&mut answer),
    )
    .await;
    assert!(
        !String::from_utf8_lossy(&answer).contains("200 OK"),
        "plaintext answered"
    );
}
