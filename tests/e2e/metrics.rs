//! Prometheus metrics of the server, scraped over HTTP during and after real backups: run
//! counters and outcomes, durations, bytes moved and deduplicated, and each cluster's last
//! successful backup, which survives a restart (read back from the catalog). Labels stay
//! bounded: no run or backup ids.

use std::path::Path;

use coffer_client::{CofferClient, proto};
use coffer_tests::{TestAgent, TestServer, eventually, run_backup, write};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The metrics address the server logged last.
pub(crate) async fn metrics_address(log: &Path) -> String {
    coffer_tests::logged_address(log, "metrics serving").await
}

/// `GET path` over HTTP/1.1: the status line and the body.
pub(crate) async fn get(address: &str, path: &str) -> (String, String) {
    let mut stream = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect to the metrics endpoint");
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .expect("send");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("read the response");
    let (head, body) = response.split_once("\r\n\r\n").expect("a head and a body");
    (
        head.lines().next().unwrap_or_default().to_string(),
        body.to_string(),
    )
}

/// The value of the sample `series` (name and labels as printed), if the scrape has it.
pub(crate) fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape.lines().find_map(|line| {
        line.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|value| value.split_whitespace().next())
            .and_then(|value| value.parse().ok())
    })
}

/// An agent and a server, both serving metrics, with the cluster `prod` of that agent and the
/// location `local` registered.
pub(crate) struct Metered {
    pub(crate) agent: TestAgent,
    /// The agent's metrics address.
    pub(crate) agent_metrics: String,
    pub(crate) server: TestServer,
    /// The server's metrics address.
    pub(crate) metrics: String,
    pub(crate) client: CofferClient,
}

/// [`Metered`] under `root`, the agent's data made by `populate` before the server starts.
pub(crate) async fn metered(root: &Path, populate: impl FnOnce(&Path)) -> Metered {
    let agent = TestAgent::start_with(
        root,
        "a",
        "127.0.0.1:0",
        &["--metrics-listen", "127.0.0.1:0"],
    )
    .await;
    let agent_metrics = metrics_address(&root.join("a/agent.log")).await;
    populate(&agent.data);
    let server = TestServer::start_with(
        root,
        &[
            "--metrics-listen",
            "127.0.0.1:0",
            "--agent-check-interval",
            "1s",
        ],
    )
    .await;
    let metrics = metrics_address(&root.join("server.log")).await;
    let client = server.client().await;
    crate::prod_with_local(&client, &agent, root).await;
    Metered {
        agent,
        agent_metrics,
        server,
        metrics,
        client,
    }
}

#[tokio::test]
async fn the_server_exports_run_transfer_and_last_backup_metrics() {
    let root = tempfile::tempdir().expect("tempdir");
    let Metered {
        agent,
        agent_metrics,
        server,
        metrics: address,
        client,
    } = metered(root.path(), |data| {
        write(&data.join("db/big"), &coffer_tests::noise(2 << 20, 3));
        write(&data.join("db/small"), b"rows\n");
    })
    .await;

    let (status, before) = get(&address, "/metrics").await;
    assert!(status.contains("200"), "{status}");
    assert!(
        before.contains(&format!(
            "coffer_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )),
        "{before}"
    );
    assert_eq!(
        sample(
            &before,
            "coffer_last_successful_backup_timestamp_seconds{cluster=\"prod\"}"
        ),
        None
    );

    let full = run_backup(&client, "prod", "local", proto::BackupKind::Full).await;
    assert_eq!(full.state(), proto::RunState::Succeeded, "{full:?}");
    let incremental = run_backup(&client, "prod", "local", proto::BackupKind::Incremental).await;
    assert_eq!(incremental.state(), proto::RunState::Succeeded);
    let scrape = eventually("both backups counted", || async {
        let (_, scrape) = get(&address, "/metrics").await;
        (sample(
            &scrape,
            "coffer_runs_finished_total{kind=\"backup\",outcome=\"succeeded\"}",
        ) == Some(2.0))
        .then_some(scrape)
    })
    .await;
    assert_eq!(
        sample(&scrape, "coffer_runs_started_total{kind=\"backup\"}"),
        Some(2.0)
    );
    assert_eq!(
        sample(&scrape, "coffer_runs_in_progress{kind=\"backup\"}"),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &scrape,
            "coffer_run_duration_seconds_count{kind=\"backup\"}"
        ),
        Some(2.0)
    );
    let uploaded = sample(
        &scrape,
        "coffer_transferred_bytes_total{direction=\"upload\"}",
    )
    .expect("bytes uploaded");
    assert!(uploaded >= (2 << 20) as f64, "{uploaded}");
    let deduplicated = sample(&scrape, "coffer_deduplicated_bytes_total").expect("dedup");
    assert!(
        deduplicated >= (2 << 20) as f64,
        "the incremental's unchanged files: {deduplicated}"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    let last = sample(
        &scrape,
        "coffer_last_successful_backup_timestamp_seconds{cluster=\"prod\"}",
    )
    .expect("the last backup's time");
    assert!((now - last).abs() < 120.0, "{last} vs {now}");
    // Bounded labels: no run or backup id anywhere.
    for id in [&full.id, &full.backup_id, &incremental.id] {
        assert!(!scrape.contains(id.as_str()), "{id} in the metrics");
    }
    let (status, _) = get(&address, "/other").await;
    assert!(status.contains("404"), "{status}");

    // The agent's own figures for the same two backups, then for a restore.
    let (_, scrape) = get(&agent_metrics, "/metrics").await;
    assert!(
        scrape.contains("coffer_agent_build_info{version="),
        "{scrape}"
    );
    assert_eq!(
        sample(
            &scrape,
            "coffer_agent_snapshots_total{outcome=\"succeeded\"}"
        ),
        Some(2.0)
    );
    assert_eq!(
        sample(&scrape, "coffer_agent_uploads_total{outcome=\"succeeded\"}"),
        Some(2.0)
    );
    let agent_uploaded = sample(&scrape, "coffer_agent_uploaded_bytes_total").expect("uploaded");
    assert_eq!(agent_uploaded, uploaded, "the agent and the server agree");
    assert!(sample(&scrape, "coffer_agent_deduplicated_bytes_total") >= Some((2 << 20) as f64));
    assert!(sample(&scrape, "coffer_agent_read_bytes_total") >= Some((2 << 20) as f64));
    assert_eq!(
        sample(&scrape, "coffer_agent_objects_uploaded_total"),
        Some(2.0)
    );
    coffer_tests::wipe(&agent.data);
    let restored = coffer_tests::run_restore(&client, "prod", &full.backup_id).await;
    assert_eq!(restored.state(), proto::RunState::Succeeded, "{restored:?}");
    let (_, scrape) = get(&agent_metrics, "/metrics").await;
    assert_eq!(
        sample(
            &scrape,
            "coffer_agent_restores_total{outcome=\"succeeded\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&scrape, "coffer_agent_files_restored_total"),
        Some(2.0)
    );
    let downloaded = sample(&scrape, "coffer_agent_downloaded_bytes_total").expect("downloaded");
    assert!(downloaded >= (2 << 20) as f64, "{downloaded}");
    let server_scrape = eventually("the restore counted", || async {
        let (_, scrape) = get(&address, "/metrics").await;
        sample(
            &scrape,
            "coffer_transferred_bytes_total{direction=\"download\"}",
        )
        .map(|_| scrape)
    })
    .await;
    assert_eq!(
        sample(
            &server_scrape,
            "coffer_transferred_bytes_total{direction=\"download\"}"
        ),
        Some(downloaded)
    );

    // Every API call is counted by method and code, a refused one too, and its time observed.
    let anonymous = server.anonymous_client().await;
    let refused = anonymous
        .clusters()
        .list_clusters(proto::ListClustersRequest::default())
        .await
        .expect_err("no token");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let (_, scrape) = get(&address, "/metrics").await;
    assert_eq!(
        sample(
            &scrape,
            "coffer_grpc_requests_total{method=\"/coffer.v1.ClusterService/RegisterCluster\",code=\"Ok\"}"
        ),
        Some(1.0),
        "{scrape}"
    );
    assert_eq!(
        sample(
            &scrape,
            "coffer_grpc_requests_total{method=\"/coffer.v1.ClusterService/ListClusters\",code=\"Unauthenticated\"}"
        ),
        Some(1.0)
    );
    assert!(
        sample(
            &scrape,
            "coffer_grpc_request_duration_seconds_count{method=\"/coffer.v1.ClusterService/RegisterCluster\"}"
        ) == Some(1.0)
    );

    // After a restart the last successful backup comes back from the catalog.
    drop(client);
    server.process.stop().await;
    let server = TestServer::start_with(root.path(), &["--metrics-listen", "127.0.0.1:0"]).await;
    let address = metrics_address(&root.path().join("server.log")).await;
    let (_, scrape) = get(&address, "/metrics").await;
    let again = sample(
        &scrape,
        "coffer_last_successful_backup_timestamp_seconds{cluster=\"prod\"}",
    )
    .expect("the last backup's time after a restart");
    assert!((again - last).abs() < 2.0, "{again} vs {last}");
    drop(server);
}

/// The first sample named `name` with the label `label` (`key="value"`) among others.
fn sample_labelled(scrape: &str, name: &str, label: &str) -> Option<(String, f64)> {
    scrape.lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let labels = series.strip_prefix(name)?.strip_prefix('{')?;
        labels
            .split(',')
            .any(|pair| pair.trim_end_matches('}') == label)
            .then(|| value.parse().ok().map(|value| (series.to_string(), value)))
            .flatten()
    })
}

#[tokio::test]
async fn agents_reachable_schedule_success_and_storage_requests_are_exported() {
    let root = tempfile::tempdir().expect("tempdir");
    let Metered {
        agent,
        agent_metrics,
        server: _server,
        metrics: address,
        client,
    } = metered(root.path(), |data| {
        write(&data.join("db/table"), &coffer_tests::noise(256 << 10, 1));
    })
    .await;
    let up = format!(
        "coffer_agent_up{{cluster=\"prod\",node=\"{}\"}}",
        agent.process.url
    );
    eventually("the agent checked and up", || async {
        let (_, scrape) = get(&address, "/metrics").await;
        (sample(&scrape, &up) == Some(1.0)).then_some(())
    })
    .await;

    // A scheduled backup's success is the schedule's too.
    let schedule = client
        .schedules()
        .create_schedule(proto::CreateScheduleRequest {
            name: "nightly".into(),
            cluster: "prod".into(),
            trigger: Some(proto::create_schedule_request::Trigger::Interval(
                prost_types::Duration {
                    seconds: 86_400,
                    nanos: 0,
                },
            )),
            backup: Some(proto::BackupSpec {
                kind: proto::BackupKind::Full.into(),
                location: "local".into(),
                ..Default::default()
            }),
            paused: true,
            ..Default::default()
        })
        .await
        .expect("create schedule");
    assert!(schedule.into_inner().schedule.is_some());
    let fire = client
        .schedules()
        .run_schedule(proto::RunScheduleRequest {
            schedule: "nightly".into(),
        })
        .await
        .expect("run now")
        .into_inner()
        .fire
        .expect("fire");
    let run = coffer_tests::watch_to_end(&client, &fire.run_id)
        .await
        .pop()
        .expect("final");
    assert_eq!(run.state(), proto::RunState::Succeeded, "{run:?}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    let last = eventually("the schedule's last success exported", || async {
        let (_, scrape) = get(&address, "/metrics").await;
        sample(
            &scrape,
            "coffer_schedule_last_successful_backup_timestamp_seconds{schedule=\"nightly\"}",
        )
    })
    .await;
    assert!((now - last).abs() < 120.0, "{last} vs {now}");

    // The agent counts its requests to storage by operation (and errors by kind), with no
    // path or object name in any label.
    let (_, scrape) = get(&agent_metrics, "/metrics").await;
    let (series, writes) = sample_labelled(
        &scrape,
        "coffer_agent_opendal_operation_duration_seconds_count",
        "operation=\"write\"",
    )
    .unwrap_or_else(|| panic!("storage writes counted: {scrape}"));
    assert!(
        writes >= 2.0,
        "an object and a manifest at least: {series} {writes}"
    );
    assert!(series.contains("scheme=\"fs\""), "{series}");
    let (series, missing) = sample_labelled(
        &scrape,
        "coffer_agent_opendal_operation_errors_total",
        "error=\"NotFound\"",
    )
    .unwrap_or_else(|| panic!("an object looked for before it was written: {scrape}"));
    assert!(missing >= 1.0, "{series}");
    assert!(!scrape.contains("db/table"), "no file path in a label");
    assert!(
        !scrape.contains(&root.path().display().to_string()),
        "no storage root in a label"
    );

    // An agent that stops answering shows within a check or two.
    agent.process.kill().await;
    eventually("the agent seen down", || async {
        let (_, scrape) = get(&address, "/metrics").await;
        (sample(&scrape, &up) == Some(0.0)).then_some(())
    })
    .await;
}
