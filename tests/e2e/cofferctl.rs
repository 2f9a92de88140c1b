//! `cofferctl`, the real binary: tables for people, JSON for scripts, exit codes scripts rely on.

use coffer_tests::{TestAgent, TestServer, binary};

struct Output {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn cofferctl(server: &TestServer, args: &[&str]) -> Output {
    let output = tokio::process::Command::new(binary("cofferctl"))
        .env("COFFER_SERVER", server.process.host_port())
        .args(args)
        .output()
        .await
        .expect("run cofferctl");
    Output {
        code: output.status.code().expect("exit code"),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

#[tokio::test]
async fn cofferctl_manages_clusters_with_tables_json_and_exit_codes() {
    let root = tempfile::tempdir().expect("tempdir");
    let (a, b) = tokio::join!(
        TestAgent::start(root.path(), "a"),
        TestAgent::start(root.path(), "b")
    );
    let server = TestServer::start(root.path()).await;

    let node_a = format!("{},dc=dc1,rack=r1", a.process.host_port());
    let registered = cofferctl(
        &server,
        &[
            "cluster", "register", "shop", "--node", &node_a, "--label", "env=prod",
        ],
    )
    .await;
    assert_eq!(registered.code, 0, "{}", registered.stderr);

    let table = cofferctl(&server, &["cluster", "list"]).await;
    assert_eq!(table.code, 0, "{}", table.stderr);
    let header = table.stdout.lines().next().expect("header line");
    assert!(header.contains("NAME"), "{}", table.stdout);
    assert!(
        table.stdout.lines().any(|line| line.starts_with("shop")),
        "{}",
        table.stdout
    );

    let json = cofferctl(&server, &["-o", "json", "cluster", "show", "shop"]).await;
    assert_eq!(json.code, 0, "{}", json.stderr);
    let shown: serde_json::Value = serde_json::from_str(&json.stdout).expect("json on stdout");
    assert_eq!(shown["cluster"]["name"], "shop");
    assert_eq!(shown["cluster"]["labels"]["env"], "prod");
    assert_eq!(shown["cluster"]["nodes"][0]["id"], a.node_id());
    assert_eq!(shown["cluster"]["nodes"][0]["datacenter"], "dc1");

    let added = cofferctl(
        &server,
        &[
            "cluster",
            "update",
            "shop",
            "--add-node",
            b.process.host_port(),
        ],
    )
    .await;
    assert_eq!(added.code, 0, "{}", added.stderr);
    let check = cofferctl(&server, &["cluster", "check", "shop"]).await;
    assert_eq!(check.code, 0, "{}", check.stderr);
    assert_eq!(
        check.stdout.matches("SERVING").count(),
        2,
        "{}",
        check.stdout
    );

    // Scripts can tell failures apart by exit code; the message is one line on stderr.
    let missing = cofferctl(&server, &["cluster", "show", "nope"]).await;
    assert_eq!(missing.code, 5, "{}", missing.stderr);
    assert_eq!(
        missing.stderr.trim().lines().count(),
        1,
        "{}",
        missing.stderr
    );
    assert!(missing.stderr.contains("not found"), "{}", missing.stderr);
    assert!(missing.stdout.is_empty());
    let duplicate = cofferctl(&server, &["cluster", "register", "shop", "--node", &node_a]).await;
    assert_eq!(duplicate.code, 6, "{}", duplicate.stderr);
    let invalid = cofferctl(
        &server,
        &["cluster", "register", "Bad Name", "--node", &node_a],
    )
    .await;
    assert_eq!(invalid.code, 4, "{}", invalid.stderr);
    let usage = cofferctl(
        &server,
        &[
            "cluster", "register", "x", "--node", &node_a, "--label", "novalue",
        ],
    )
    .await;
    assert_eq!(usage.code, 2, "{}", usage.stderr);

    // An unhealthy node makes `check` exit 8.
    b.process.kill().await;
    let check = cofferctl(&server, &["cluster", "check", "shop"]).await;
    assert_eq!(check.code, 8, "{}\n{}", check.stdout, check.stderr);
    assert!(check.stdout.contains("UNREACHABLE"), "{}", check.stdout);

    let deleted = cofferctl(&server, &["cluster", "delete", "shop"]).await;
    assert_eq!(deleted.code, 0, "{}", deleted.stderr);
    let listed = cofferctl(&server, &["-o", "json", "cluster", "list"]).await;
    let listed: serde_json::Value = serde_json::from_str(&listed.stdout).expect("json");
    assert!(
        listed["clusters"].as_array().is_none_or(Vec::is_empty),
        "{listed}"
    );

    server.process.stop().await;
    let unreachable = tokio::process::Command::new(binary("cofferctl"))
        .args([
            "--server",
            &coffer_tests::closed_address(),
            "cluster",
            "list",
        ])
        .output()
        .await
        .expect("run cofferctl");
    assert_eq!(unreachable.status.code(), Some(3));
}
