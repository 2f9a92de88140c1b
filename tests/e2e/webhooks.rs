//! Webhooks called when runs end, against receivers the test runs: the run as signed JSON
//! (the signature checked here with an HMAC of our own), retried with the same delivery id
//! while the receiver fails, filtered by kind and outcome, and never holding up a run when a
//! receiver hangs. Configured as operators do: `[[webhooks]]` in the server's TOML file.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use coffer_client::proto;
use coffer_tests::{TestAgent, TestServer, eventually, noise, run_backup, watch_to_end, write};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::metrics::{get, metrics_address, sample};

/// One call a receiver got.
#[derive(Debug, Clone)]
struct Call {
    path: String,
    /// Header names lower-cased.
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl Call {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(String::as_str)
            .unwrap_or_default()
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

/// An HTTP receiver on a loopback port: answers 500 to its first `failures` calls, 200 after;
/// or, `silent`, reads each call and never answers.
struct Receiver {
    url: String,
    calls: Arc<Mutex<Vec<Call>>>,
    _task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start(failures: usize, silent: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a receiver");
        let url = format!(
            "http://{}/hooks/coffer",
            listener.local_addr().expect("receiver address")
        );
        let calls = Arc::new(Mutex::new(Vec::new()));
        let recorded = calls.clone();
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let Some(call) = read_call(&mut stream).await else {
                    continue;
                };
                let seen = {
                    let mut calls = recorded.lock().expect("calls");
                    calls.push(call);
                    calls.len()
                };
                if silent {
                    held.push(stream);
                    continue;
                }
                let status = if seen <= failures {
                    "500 Internal Server Error"
                } else {
                    "200 OK"
                };
                let answer =
                    format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                let _ = stream.write_all(answer.as_bytes()).await;
                let _ = stream.shutdown().await;
            }
        });
        Self {
            url,
            calls,
            _task: task,
        }
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().expect("calls").clone()
    }

    /// The calls about run `run_id`.
    fn calls_for(&self, run_id: &str) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|call| call.json()["run"]["id"] == run_id)
            .collect()
    }
}

/// One HTTP/1.1 request with a Content-Length body.
async fn read_call(stream: &mut tokio::net::TcpStream) -> Option<Call> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(end) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
            break end;
        }
        let read = stream.read(&mut chunk).await.ok()?;
        if read == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..read]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_string();
    let mut lines = head.lines();
    let path = lines.next()?.split_whitespace().nth(1)?.to_string();
    let headers: HashMap<String, String> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
        .collect();
    let length: usize = headers.get("content-length")?.parse().ok()?;
    let mut body = buffer[head_end + 4..].to_vec();
    while body.len() < length {
        let read = stream.read(&mut chunk).await.ok()?;
        if read == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..read]);
    }
    Some(Call {
        path,
        headers,
        body,
    })
}

/// `sha256=<hex>` of HMAC-SHA256(secret, "<timestamp>.<body>"), as docs/operating.md tells a
/// receiver to compute it.
fn signature(secret: &str, timestamp: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|byte| format!("{byte:02x}")).collect();
    format!("sha256={hex}")
}

fn secret_file(path: &Path, secret: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, format!("{secret}\n")).expect("write a secret");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod 600");
}

#[tokio::test]
async fn webhooks_get_signed_run_ends_retried_filtered_and_never_hold_up_a_run() {
    let root = tempfile::tempdir().expect("tempdir");
    let agent = TestAgent::start(root.path(), "a").await;
    let node_id = agent.node_id();
    for n in 0..8 {
        write(
            &agent.data.join(format!("ks/t{n}.db")),
            &noise(512 << 10, n),
        );
    }
    // Fails twice, then takes it; takes failures only; never answers.
    let ops = Receiver::start(2, false).await;
    let failures = Receiver::start(0, false).await;
    let stuck = Receiver::start(0, true).await;
    let secrets = root.path().join("secrets");
    std::fs::create_dir_all(&secrets).expect("secrets folder");
    secret_file(&secrets.join("ops"), "ops-secret-1");
    secret_file(&secrets.join("failures"), "failures-secret-2");
    secret_file(&secrets.join("stuck"), "stuck-secret-3");
    let config = root.path().join("server.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[webhooks]]
name = "ops"
url = "{ops}"
secret-file = "{secrets}/ops"
first-retry-after = "200ms"

[[webhooks]]
name = "failures"
url = "{failures}"
secret-file = "{secrets}/failures"
kinds = ["backup"]
outcomes = ["failed"]

[[webhooks]]
name = "stuck"
url = "{stuck}"
secret-file = "{secrets}/stuck"
timeout = "1s"
attempts = 2
first-retry-after = "100ms"
"#,
            ops = ops.url,
            failures = failures.url,
            stuck = stuck.url,
            secrets = secrets.display(),
        ),
    )
    .expect("write the server's configuration");
    let server = TestServer::start_with(
        root.path(),
        &[
            "--config",
            config.to_str().expect("UTF-8 path"),
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    )
    .await;
    let metrics = metrics_address(&root.path().join("server.log")).await;
    let client = server.client().await;
    crate::prod_with_local(&client, &agent, root.path()).await;

    // A backup that succeeds, while one receiver fails and another hangs: the run ends as
    // it would without them.
    let full = run_backup(&client, "prod", "local", proto::BackupKind::Full).await;
    assert_eq!(full.state(), proto::RunState::Succeeded, "{full:?}");
    let run_id = full.id.clone();

    let calls = eventually(
        "ops to take the notification at the third attempt",
        || async {
            let calls = ops.calls_for(&run_id);
            (calls.len() >= 3).then_some(calls)
        },
    )
    .await;
    assert_eq!(calls.len(), 3, "two refusals, then delivered: {calls:?}");
    let delivery = calls[0].header("x-coffer-delivery").to_string();
    assert!(!delivery.is_empty());
    for call in &calls {
        assert_eq!(call.path, "/hooks/coffer");
        assert_eq!(call.header("content-type"), "application/json");
        assert_eq!(call.header("x-coffer-event"), "run.ended");
        assert_eq!(
            call.header("x-coffer-delivery"),
            delivery,
            "one id across retries"
        );
        let timestamp = call.header("x-coffer-timestamp");
        assert_eq!(
            call.header("x-coffer-signature"),
            signature("ops-secret-1", timestamp, &call.body),
            "signed with the secret over timestamp and body"
        );
        assert_ne!(
            call.header("x-coffer-signature"),
            signature("another-secret", timestamp, &call.body)
        );
    }
    let body = calls[2].json();
    assert_eq!(body["event"], "run.ended");
    let run = &body["run"];
    assert_eq!(run["id"], run_id);
    assert_eq!(run["kind"], "backup");
    assert_eq!(run["cluster"], "prod");
    assert_eq!(run["state"], "succeeded");
    assert_eq!(run["error"], "");
    assert_eq!(run["backup_id"], full.backup_id);
    assert_eq!(run["started_by"], "token:admin");
    assert_eq!(run["totals"]["files_done"], 8, "{run}");
    assert_eq!(run["totals"]["bytes_done"], 8 * (512 << 10), "{run}");
    assert_eq!(run["nodes"][0]["node_id"], node_id);
    assert_eq!(run["nodes"][0]["phase"], "done", "{run}");
    assert!(run["finish_time"].is_string(), "{run}");
    assert!(run["duration_seconds"].as_f64().is_some(), "{run}");
    // Only failed backups go to `failures`.
    assert!(failures.calls().is_empty(), "{:?}", failures.calls());

    // A backup that fails: its agent killed while bytes move.
    let run_id = coffer_tests::start_throttled_backup(&client, "prod", "local", 1 << 20).await;
    agent.process.kill().await;
    let failed = watch_to_end(&client, &run_id).await.pop().expect("final");
    assert_eq!(failed.state(), proto::RunState::Failed);
    let calls = eventually("failures to be told", || async {
        let calls = failures.calls_for(&run_id);
        (!calls.is_empty()).then_some(calls)
    })
    .await;
    assert_eq!(calls.len(), 1, "delivered at once: {calls:?}");
    let call = &calls[0];
    assert_eq!(
        call.header("x-coffer-signature"),
        signature(
            "failures-secret-2",
            call.header("x-coffer-timestamp"),
            &call.body
        )
    );
    let run = &call.json()["run"];
    assert_eq!(run["state"], "failed");
    assert_eq!(run["error"], failed.error_message.as_str());
    assert!(
        run["error"]
            .as_str()
            .is_some_and(|error| error.contains(&node_id)),
        "the error names the node: {run}"
    );
    eventually("ops to take the failure too", || async {
        (ops.calls_for(&run_id).len() == 1).then_some(())
    })
    .await;

    // The hung receiver got both runs, each given up after its two attempts, and counted.
    let scrape = eventually("the hung webhook's notifications given up", || async {
        let (_, scrape) = get(&metrics, "/metrics").await;
        (sample(
            &scrape,
            "coffer_webhook_notifications_total{webhook=\"stuck\",outcome=\"failed\"}",
        ) == Some(2.0))
        .then_some(scrape)
    })
    .await;
    assert_eq!(
        stuck.calls().len(),
        4,
        "two attempts for each of the two runs"
    );
    assert_eq!(
        sample(
            &scrape,
            "coffer_webhook_notifications_total{webhook=\"ops\",outcome=\"delivered\"}"
        ),
        Some(2.0),
        "{scrape}"
    );
    assert_eq!(
        sample(
            &scrape,
            "coffer_webhook_failed_attempts_total{webhook=\"ops\"}"
        ),
        Some(2.0)
    );
    assert_eq!(
        sample(
            &scrape,
            "coffer_webhook_failed_attempts_total{webhook=\"stuck\"}"
        ),
        Some(4.0)
    );
    assert_eq!(
        sample(
            &scrape,
            "coffer_webhook_notifications_total{webhook=\"failures\",outcome=\"delivered\"}"
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn a_webhook_with_an_unreadable_secret_stops_the_server_with_a_clear_error() {
    let root = tempfile::tempdir().expect("tempdir");
    let secret = root.path().join("open.secret");
    std::fs::write(&secret, "shared\n").expect("write");
    // World-readable: refused, as a key file would be.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }
    let config = root.path().join("server.toml");
    std::fs::write(
        &config,
        format!(
            "[[webhooks]]\nname = \"ops\"\nurl = \"http://127.0.0.1:9/\"\nsecret-file = \"{}\"\n",
            secret.display()
        ),
    )
    .expect("write config");
    let output = tokio::process::Command::new(coffer_tests::binary("coffer-server"))
        .arg("--config")
        .arg(&config)
        .args(["--listen", "127.0.0.1:0", "--catalog"])
        .arg(root.path().join("catalog.db"))
        .arg("--admin-token-file")
        .arg(root.path().join("admin.token"))
        .output()
        .await
        .expect("run coffer-server");
    assert!(!output.status.success());
    let stderr = coffer_tests::plain(&String::from_utf8_lossy(&output.stderr));
    assert!(stderr.contains("ops"), "{stderr}");
    assert!(stderr.contains("open.secret"), "{stderr}");

    // An unknown setting, a bad URL and a duplicate name are refused before anything starts.
    for (body, expected) in [
        (
            "[[webhooks]]\nname = \"a\"\nurl = \"ftp://x/\"\nsecret-file = \"/s\"\n",
            "http",
        ),
        (
            "[[webhooks]]\nname = \"a\"\nurl = \"http://x/\"\nsecret-file = \"/s\"\nretries = 3\n",
            "retries",
        ),
        (
            "[[webhooks]]\nname = \"a\"\nurl = \"http://x/\"\nsecret-file = \"/s\"\n[[webhooks]]\nname = \"a\"\nurl = \"http://y/\"\nsecret-file = \"/s\"\n",
            "a",
        ),
    ] {
        std::fs::write(&config, body).expect("write config");
        let output = tokio::process::Command::new(coffer_tests::binary("coffer-server"))
            .arg("--config")
            .arg(&config)
            .arg("--dump-config")
            .output()
            .await
            .expect("run coffer-server");
        let stderr = coffer_tests::plain(&String::from_utf8_lossy(&output.stderr));
        assert!(!output.status.success(), "{body}: {stderr}");
        assert!(stderr.contains(expected), "{body}: {stderr}");
    }
}
