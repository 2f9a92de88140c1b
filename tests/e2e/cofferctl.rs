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

#[tokio::test]
async fn cofferctl_backs_up_with_a_live_watch_and_lists_what_it_made() {
    let root = tempfile::tempdir().expect("tempdir");
    let agent = TestAgent::start(root.path(), "a").await;
    std::fs::write(agent.data.join("table.db"), vec![7u8; 3 << 20]).expect("write data");
    std::fs::write(agent.data.join("notes.txt"), "hello\n".repeat(1000)).expect("write data");
    let server = TestServer::start(root.path()).await;
    let store = root.path().join("store");
    let store_arg = store.display().to_string();
    let node = agent.process.host_port().to_string();
    let registered = cofferctl(&server, &["cluster", "register", "db", "--node", &node]).await;
    assert_eq!(registered.code, 0, "{}", registered.stderr);
    let created = cofferctl(
        &server,
        &[
            "location",
            "create",
            "local",
            "--fs",
            &store_arg,
            "--compression",
            "zstd:-3",
        ],
    )
    .await;
    assert_eq!(created.code, 0, "{}", created.stderr);
    assert!(
        created
            .stdout
            .lines()
            .any(|line| line.starts_with("Compression") && line.ends_with("zstd:-3")),
        "{}",
        created.stdout
    );

    // Table mode: the run id on stdout, then the summary; exit 0 for a succeeded run.
    let started = cofferctl(
        &server,
        &["backup", "start", "db", "--location", "local", "--watch"],
    )
    .await;
    assert_eq!(started.code, 0, "{}", started.stderr);
    let run_id = started
        .stdout
        .lines()
        .next()
        .expect("run id line")
        .trim()
        .to_string();
    assert!(started.stdout.contains("SUCCEEDED"), "{}", started.stdout);
    // The run keeps the location's id; `run show` names it.
    let shown = cofferctl(&server, &["run", "show", &run_id]).await;
    assert_eq!(shown.code, 0, "{}", shown.stderr);
    assert!(
        shown
            .stdout
            .lines()
            .any(|line| line.starts_with("Location:") && line.contains(" local (")),
        "{}",
        shown.stdout
    );

    // JSON mode: one WatchRunResponse per line, the last one final.
    let watched = cofferctl(&server, &["-o", "json", "run", "watch", &run_id]).await;
    assert_eq!(watched.code, 0, "{}", watched.stderr);
    let last: serde_json::Value =
        serde_json::from_str(watched.stdout.lines().last().expect("a line")).expect("ndjson");
    assert_eq!(last["run"]["state"], "RUN_STATE_SUCCEEDED");
    let backup_id = last["run"]["backupId"]
        .as_str()
        .expect("backup id")
        .to_string();

    let listed = cofferctl(
        &server,
        &["-o", "json", "backup", "list", "--cluster", "db"],
    )
    .await;
    let listed: serde_json::Value = serde_json::from_str(&listed.stdout).expect("json");
    assert_eq!(listed["backups"][0]["id"], backup_id.as_str());
    assert_eq!(listed["backups"][0]["totals"]["fileCount"], "2");
    let files = cofferctl(&server, &["backup", "files", &backup_id]).await;
    assert!(
        files.stdout.contains("table.db") && files.stdout.contains("notes.txt"),
        "{}",
        files.stdout
    );

    // Restore it with cofferctl after losing the data: by id, then by point in time.
    let original = std::fs::read(agent.data.join("table.db")).expect("read");
    std::fs::remove_file(agent.data.join("table.db")).expect("lose a file");
    std::fs::remove_file(agent.data.join("notes.txt")).expect("lose a file");
    let planned = cofferctl(
        &server,
        &["restore", "start", "--backup", &backup_id, "--dry-run"],
    )
    .await;
    assert_eq!(planned.code, 0, "{}", planned.stderr);
    assert!(
        !agent.data.join("table.db").exists(),
        "a dry run restores nothing"
    );
    let restored = cofferctl(
        &server,
        &["restore", "start", "--backup", &backup_id, "--watch"],
    )
    .await;
    assert_eq!(restored.code, 0, "{}\n{}", restored.stdout, restored.stderr);
    assert_eq!(
        std::fs::read(agent.data.join("table.db")).expect("restored"),
        original
    );
    let again = cofferctl(
        &server,
        &["restore", "start", "--backup", &backup_id, "--watch"],
    )
    .await;
    assert_eq!(
        again.code, 10,
        "existing files are refused: {}",
        again.stdout
    );
    std::fs::remove_file(agent.data.join("notes.txt")).expect("lose a file");
    let now = "2100-01-01T00:00:00Z";
    let by_time = cofferctl(
        &server,
        &[
            "restore",
            "start",
            "--cluster",
            "db",
            "--at",
            now,
            "--include",
            "**/notes.txt",
            "--watch",
        ],
    )
    .await;
    assert_eq!(by_time.code, 0, "{}\n{}", by_time.stdout, by_time.stderr);
    assert!(agent.data.join("notes.txt").exists());
    let usage = cofferctl(&server, &["restore", "start", "--at", now]).await;
    assert_eq!(usage.code, 2, "{}", usage.stderr);

    // A backup that fails exits 10: its location's folder cannot be created.
    std::fs::write(root.path().join("blocker"), b"a file, not a folder").expect("write");
    let blocked = format!("{}/blocker/store", root.path().display());
    let created = cofferctl(&server, &["location", "create", "broken", "--fs", &blocked]).await;
    assert_eq!(created.code, 0, "{}", created.stderr);
    let failed = cofferctl(
        &server,
        &["backup", "start", "db", "--location", "broken", "--watch"],
    )
    .await;
    assert_eq!(failed.code, 10, "{}\n{}", failed.stdout, failed.stderr);

    // Compression changes by `location update`; the server names a level it refuses, and
    // cofferctl refuses what is not a compression at all, or an update that changes nothing.
    let updated = cofferctl(
        &server,
        &["location", "update", "local", "--compression", "none"],
    )
    .await;
    assert_eq!(updated.code, 0, "{}", updated.stderr);
    assert!(
        updated
            .stdout
            .lines()
            .any(|line| line.starts_with("Compression") && line.ends_with("none")),
        "{}",
        updated.stdout
    );
    let refused = cofferctl(
        &server,
        &["location", "update", "local", "--compression", "zstd:40"],
    )
    .await;
    assert_eq!(refused.code, 4, "{}", refused.stderr);
    assert!(refused.stderr.contains("-7 to 12"), "{}", refused.stderr);
    for args in [
        vec!["location", "update", "local", "--compression", "lz4"],
        vec!["location", "update", "local"],
    ] {
        let usage = cofferctl(&server, &args).await;
        assert_eq!(usage.code, 2, "{args:?}: {}", usage.stderr);
    }

    // Deleting the backup makes it disappear from the catalog and from storage.
    let deleted = cofferctl(&server, &["backup", "delete", &backup_id]).await;
    assert_eq!(deleted.code, 0, "{}", deleted.stderr);
    let shown = cofferctl(&server, &["backup", "show", &backup_id]).await;
    assert_eq!(shown.code, 5, "{}", shown.stderr);
    let commits = coffer_tests::tree(&store)
        .keys()
        .filter(|path| path.ends_with("backup.json"))
        .count();
    assert_eq!(commits, 0);
}
