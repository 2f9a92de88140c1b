//! Coffer under a real Prometheus (Debian's package, `scripts/install-tools prometheus`): the
//! shipped alerting rules pass `promtool check rules` and their unit tests, a Prometheus on a
//! loopback port loads them and scrapes a server and an agent through a real backup, the
//! figures read back through its query API are theirs, and every query of the shipped Grafana
//! dashboard is one Prometheus accepts.

use std::process::Stdio;
use std::time::Duration;

use coffer_client::proto;
use coffer_tests::{eventually, repo_root, run_backup, tool, write};

use crate::metrics::get;

#[test]
fn the_alerting_rules_pass_promtool() {
    let rules = repo_root().join("deploy/prometheus");
    for args in [
        vec!["check", "rules", "coffer-alerts.yml"],
        vec!["test", "rules", "coffer-alerts.test.yml"],
    ] {
        let output = std::process::Command::new(tool("promtool"))
            .args(&args)
            .current_dir(&rules)
            .output()
            .expect("run promtool");
        assert!(
            output.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// `text` percent-encoded for a query string.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (byte as char).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

/// The samples of an instant query, as (labels, value).
async fn query(prometheus: &str, promql: &str) -> Vec<(serde_json::Value, f64)> {
    let (status, body) = get(
        prometheus,
        &format!("/api/v1/query?query={}", encode(promql)),
    )
    .await;
    assert!(status.contains("200"), "{status}: {body}");
    let body: serde_json::Value = serde_json::from_str(&body).expect("query JSON");
    body["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|sample| {
            let value = sample["value"][1].as_str()?.parse().ok()?;
            Some((sample["metric"].clone(), value))
        })
        .collect()
}

#[tokio::test]
async fn a_real_prometheus_scrapes_the_server_and_loads_the_rules() {
    let root = tempfile::tempdir().expect("tempdir");
    // Every part bound: the agent and the server run while their bindings live.
    let crate::metrics::Metered {
        agent: _agent,
        agent_metrics,
        server: _server,
        metrics,
        client,
    } = crate::metrics::metered(root.path(), |data| {
        write(&data.join("db/big"), &coffer_tests::noise(1 << 20, 5));
    })
    .await;

    // Prometheus on a free loopback port (it takes an address, not a listener).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let web = format!("127.0.0.1:{port}");
    let config = root.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {:?}\n\
             scrape_configs:\n  - job_name: coffer-server\n    static_configs:\n      - targets: [{metrics:?}]\n\
             \x20 - job_name: coffer-agent\n    static_configs:\n      - targets: [{agent_metrics:?}]\n",
            repo_root()
                .join("deploy/prometheus/coffer-alerts.yml")
                .display()
                .to_string()
        ),
    )
    .expect("write prometheus.yml");
    let log = std::fs::File::create(root.path().join("prometheus.log")).expect("log");
    let _prometheus = tokio::process::Command::new(tool("prometheus"))
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            root.path().join("tsdb").display()
        ))
        .arg(format!("--web.listen-address={web}"))
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("start prometheus");
    eventually("prometheus ready", || async {
        let ready = tokio::time::timeout(Duration::from_secs(2), async {
            tokio::net::TcpStream::connect(&web).await.ok()?;
            let (status, _) = get(&web, "/-/ready").await;
            status.contains("200").then_some(())
        })
        .await;
        ready.ok().flatten()
    })
    .await;

    let run = run_backup(&client, "prod", "local", proto::BackupKind::Full).await;
    assert_eq!(run.state(), proto::RunState::Succeeded, "{run:?}");

    // What Prometheus scraped is what the server counted.
    let succeeded = eventually("prometheus seeing the backup", || async {
        let samples = query(
            &web,
            r#"coffer_runs_finished_total{job="coffer-server",kind="backup",outcome="succeeded"}"#,
        )
        .await;
        samples.first().filter(|(_, value)| *value == 1.0).cloned()
    })
    .await;
    assert_eq!(succeeded.0["instance"], metrics.as_str());
    let uploaded = query(
        &web,
        r#"coffer_transferred_bytes_total{direction="upload"}"#,
    )
    .await;
    assert!(uploaded[0].1 >= (1 << 20) as f64, "{uploaded:?}");
    let age = query(
        &web,
        r#"time() - coffer_last_successful_backup_timestamp_seconds{cluster="prod"}"#,
    )
    .await;
    assert!(age[0].1 >= 0.0 && age[0].1 < 120.0, "{age:?}");
    let up = query(&web, r#"up{job="coffer-server"}"#).await;
    assert_eq!(up[0].1, 1.0);
    // The server's check of the agent, and the agent's own requests to storage.
    let agent_up = eventually("prometheus seeing the agent checked", || async {
        query(&web, r#"coffer_agent_up{cluster="prod"}"#)
            .await
            .first()
            .filter(|(_, value)| *value == 1.0)
            .cloned()
    })
    .await;
    assert!(
        agent_up.0["node"]
            .as_str()
            .is_some_and(|node| node.starts_with("http://127.0.0.1:"))
    );
    let writes = eventually("prometheus seeing the agent's storage writes", || async {
        query(
            &web,
            r#"sum(coffer_agent_opendal_operation_duration_seconds_count{job="coffer-agent",operation="write"})"#,
        )
        .await
        .first()
        .map(|(_, value)| *value)
        .filter(|value| *value > 0.0)
    })
    .await;
    assert!(writes >= 2.0, "an object and a manifest: {writes}");
    // The agent's figures, scraped from the agent, agree with the server's.
    let agent_uploaded = eventually("prometheus seeing the agent's upload", || async {
        query(
            &web,
            r#"coffer_agent_uploaded_bytes_total{job="coffer-agent"}"#,
        )
        .await
        .first()
        .map(|(_, value)| *value)
        .filter(|value| *value > 0.0)
    })
    .await;
    assert_eq!(agent_uploaded, uploaded[0].1);

    // The shipped rules are loaded, and none fires for a cluster backed up a moment ago.
    let (_, rules) = get(&web, "/api/v1/rules").await;
    for alert in [
        "CofferBackupMissing",
        "CofferRunsFailing",
        "CofferBackupUnrestorable",
        "CofferAgentUnreachable",
        "CofferScheduleNotFiring",
        "CofferServerDown",
    ] {
        assert!(rules.contains(alert), "{alert} not loaded: {rules}");
    }
    let firing = query(&web, r#"ALERTS{alertstate="firing"}"#).await;
    assert!(firing.is_empty(), "{firing:?}");

    // Every query of the shipped Grafana dashboard is one Prometheus accepts, and the panels
    // on backups show this cluster.
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("deploy/grafana/coffer-dashboard.json"))
            .expect("read the dashboard"),
    )
    .expect("the dashboard is JSON");
    let mut expressions = 0;
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("an expression");
            // `query` asserts a 200: a bad expression is a 400.
            query(&web, expr).await;
            expressions += 1;
        }
    }
    assert!(expressions >= 12, "{expressions}");
    let age = query(
        &web,
        "time() - coffer_last_successful_backup_timestamp_seconds",
    )
    .await;
    assert_eq!(age[0].0["cluster"], "prod");
}
