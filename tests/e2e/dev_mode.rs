//! Dev mode, the README's first command: everything on embedded defaults in one directory.

use coffer_client::proto;
use coffer_tests::{Process, binary, eventually, run_backup};

async fn start_dev(dir: &std::path::Path, log: &std::path::Path) -> Process {
    let mut command = tokio::process::Command::new(binary("coffer-server"));
    command
        .arg("dev")
        .arg("--dir")
        .arg(dir)
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--agent-listen")
        .arg("127.0.0.1:0")
        .arg("--status-listen")
        .arg("127.0.0.1:0")
        .arg("--metrics-listen")
        .arg("127.0.0.1:0");
    Process::start(command, log).await
}

#[tokio::test]
async fn dev_mode_runs_a_registered_dev_cluster_and_keeps_it_across_restarts() {
    let root = tempfile::tempdir().expect("tempdir");
    // The default folder name, so that cofferctl run beside it finds the token.
    let dir = root.path().join(".coffer-dev");
    let dev = start_dev(&dir, &root.path().join("dev.log")).await;
    for folder in ["data", "storage", "agent-state"] {
        assert!(dir.join(folder).is_dir(), "{folder} made");
    }
    assert!(dir.join("catalog.db").is_file());
    let token = std::fs::read_to_string(dir.join("admin.token")).expect("the dev admin token");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(dir.join("admin.token"))
            .expect("stat")
            .permissions()
            .mode()
            & 0o777,
        0o600,
        "only its owner reads the token"
    );

    // cofferctl in the folder that holds .coffer-dev presents the token without being told.
    let listed = tokio::process::Command::new(binary("cofferctl"))
        .current_dir(root.path())
        .env("COFFER_SERVER", dev.host_port())
        .env_remove("COFFER_TOKEN")
        .env_remove("COFFER_TOKEN_FILE")
        .args(["cluster", "list"])
        .output()
        .await
        .expect("run cofferctl");
    assert!(
        listed.status.success() && String::from_utf8_lossy(&listed.stdout).contains("dev"),
        "{}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let elsewhere = tokio::process::Command::new(binary("cofferctl"))
        .current_dir(&dir)
        .env("COFFER_SERVER", dev.host_port())
        .env_remove("COFFER_TOKEN")
        .env_remove("COFFER_TOKEN_FILE")
        .args(["cluster", "list"])
        .output()
        .await
        .expect("run cofferctl");
    assert_eq!(
        elsewhere.status.code(),
        Some(12),
        "no token found: UNAUTHENTICATED"
    );

    let client = coffer_client::CofferClient::connect(&dev.url)
        .await
        .expect("connect")
        .with_token(&token)
        .expect("token");
    let check = client
        .clusters()
        .check_cluster(proto::CheckClusterRequest {
            cluster: "dev".into(),
        })
        .await
        .expect("check dev")
        .into_inner();
    let cluster = check.cluster.expect("cluster");
    assert_eq!(cluster.nodes.len(), 1);
    let node_id = cluster.nodes[0].id.clone();
    assert_eq!(
        std::path::Path::new(&cluster.nodes[0].data_paths[0].path),
        std::fs::canonicalize(dir.join("data"))
            .expect("canonical")
            .as_path()
    );
    assert_eq!(check.nodes[0].health(), proto::NodeHealth::Serving);

    // Its first data folder holds a few files, so the README's first backup finds something.
    let data = dir.join("data");
    for seeded in [
        "hello.txt",
        "shop/orders-1/data.csv",
        "shop/orders-1/schema.txt",
    ] {
        assert!(data.join(seeded).is_file(), "{seeded} seeded");
    }
    let run = run_backup(&client, "dev", "dev-fs", proto::BackupKind::Full).await;
    assert_eq!(
        run.state(),
        proto::RunState::Succeeded,
        "{}",
        run.error_message
    );
    assert_eq!(run.totals.expect("totals").files_total, 3);
    // Its status page shows the cluster and the backup to the admin token.
    let status = crate::status_page::status_address(&root.path().join("dev.log")).await;
    let answer = crate::status_page::request(
        &status,
        "GET",
        "/status.json",
        &[format!("Authorization: Bearer {}", token.trim())],
        "",
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let report: serde_json::Value = serde_json::from_str(&answer.body).expect("JSON");
    assert_eq!(report["clusters"][0]["name"], "dev", "{report}");
    assert_eq!(report["backups"][0]["files"], 3, "{report}");
    // --metrics-listen is served in dev mode as by a plain server, counting that backup.
    let metrics = crate::metrics::metrics_address(&root.path().join("dev.log")).await;
    // The run's end is counted as its task ends, moments after watchers see it.
    eventually("the backup counted", || async {
        let (status_line, scrape) = crate::metrics::get(&metrics, "/metrics").await;
        assert!(status_line.contains("200"), "{status_line}");
        crate::metrics::sample(
            &scrape,
            "coffer_runs_finished_total{kind=\"backup\",outcome=\"succeeded\"}",
        )
        .filter(|finished| *finished == 1.0)
    })
    .await;
    dev.stop().await;
    // The folder is the user's from then on: nothing is seeded again.
    std::fs::remove_file(data.join("hello.txt")).expect("remove");

    // Restarted (on other ports), it finds its catalog, its node and its cluster again.
    let dev = start_dev(&dir, &root.path().join("dev2.log")).await;
    assert_eq!(
        std::fs::read_to_string(dir.join("admin.token")).expect("token"),
        token,
        "a restart keeps the token"
    );
    let client = coffer_client::CofferClient::connect(&dev.url)
        .await
        .expect("connect")
        .with_token(&token)
        .expect("token");
    let listed = client
        .clusters()
        .list_clusters(proto::ListClustersRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.clusters.len(), 1);
    let check = client
        .clusters()
        .check_cluster(proto::CheckClusterRequest {
            cluster: "dev".into(),
        })
        .await
        .expect("check dev")
        .into_inner();
    assert_eq!(check.nodes[0].node_id, node_id);
    assert_eq!(check.nodes[0].health(), proto::NodeHealth::Serving);
    assert!(!data.join("hello.txt").exists(), "not seeded again");
    dev.stop().await;
}
