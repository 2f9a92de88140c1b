//! `cofferctl`, the real binary: tables for people, JSON for scripts, exit codes scripts rely on.

use coffer_tests::{TestAgent, TestServer, binary};

struct Output {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn cofferctl(server: &TestServer, args: &[&str]) -> Output {
    let output = server
        .cofferctl()
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

    // An encrypted location names the agents' key; a location in the clear stays so.
    let sealed_store = root.path().join("sealed").display().to_string();
    let created = cofferctl(
        &server,
        &[
            "location",
            "create",
            "sealed",
            "--fs",
            &sealed_store,
            "--encryption-key",
            "site-2026",
        ],
    )
    .await;
    assert_eq!(created.code, 0, "{}", created.stderr);
    assert!(
        created
            .stdout
            .lines()
            .any(|line| line.starts_with("Encryption key") && line.ends_with("site-2026")),
        "{}",
        created.stdout
    );
    let rotated = cofferctl(
        &server,
        &[
            "location",
            "update",
            "sealed",
            "--encryption-key",
            "site-2027",
        ],
    )
    .await;
    assert_eq!(rotated.code, 0, "{}", rotated.stderr);
    assert!(rotated.stdout.contains("site-2027"), "{}", rotated.stdout);
    let refused = cofferctl(
        &server,
        &[
            "location",
            "update",
            "local",
            "--encryption-key",
            "site-2027",
        ],
    )
    .await;
    assert_eq!(refused.code, 7, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("not encrypted"),
        "{}",
        refused.stderr
    );

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

/// `cofferctl schedule`: create with a cron in a time zone, show the next fire times, fire it
/// with `run --watch`, see the fire, pause, resume, change and delete, with the exit codes of
/// the other commands; and a schedule seen firing by itself, on the scheduler's clock.
#[tokio::test]
async fn cofferctl_manages_schedules_and_fires_them() {
    let root = tempfile::tempdir().expect("tempdir");
    let agent = TestAgent::start(root.path(), "a").await;
    std::fs::write(agent.data.join("table.db"), vec![3u8; 1 << 20]).expect("write data");
    // 2026-03-27 12:00 UTC: the next 02:30 in Berlin is CET, the one after it CEST.
    let clock = coffer_tests::SchedulerClock::new(root.path(), 1_774_612_800_000);
    let server = TestServer::start_with(root.path(), &clock.server_args()).await;
    let node = agent.process.host_port().to_string();
    let store = root.path().join("store").display().to_string();
    for args in [
        vec!["cluster", "register", "db", "--node", &node],
        vec!["location", "create", "local", "--fs", &store],
    ] {
        let done = cofferctl(&server, &args).await;
        assert_eq!(done.code, 0, "{}", done.stderr);
    }

    let created = cofferctl(
        &server,
        &[
            "schedule",
            "create",
            "nightly",
            "--cluster",
            "db",
            "--location",
            "local",
            "--cron",
            "30 2 * * *",
            "--time-zone",
            "Europe/Berlin",
            "--incremental",
            "--keep-last",
            "7",
            "--keep-within",
            "30d",
            "--retries",
            "3",
            "--retry-wait",
            "5m",
        ],
    )
    .await;
    assert_eq!(created.code, 0, "{}", created.stderr);
    for expected in [
        "cron 30 2 * * * Europe/Berlin",
        "Location:    local (",
        "keep last 7, within 30days",
        "3 attempts, first after 5m, at most 6h apart",
        // The fire times, in UTC and on the Berlin wall clock: the spring change on the 29th.
        "2026-03-28T01:30:00Z  2026-03-28 02:30 CET (+01:00)",
        "2026-03-30T00:30:00Z  2026-03-30 02:30 CEST (+02:00)",
    ] {
        assert!(
            created.stdout.contains(expected),
            "{expected}:\n{}",
            created.stdout
        );
    }
    assert!(!created.stdout.contains("2026-03-29"), "{}", created.stdout);

    let listed = cofferctl(&server, &["schedule", "list"]).await;
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    assert!(
        listed
            .stdout
            .lines()
            .next()
            .unwrap_or_default()
            .contains("NEXT FIRE")
    );
    assert!(
        listed
            .stdout
            .lines()
            .any(|line| line.starts_with("nightly") && line.contains("2026-03-28T01:30:00Z")),
        "{}",
        listed.stdout
    );

    // Fire now and follow the run: the run id first, the summary, exit 0.
    let fired = cofferctl(&server, &["schedule", "run", "nightly", "--watch"]).await;
    assert_eq!(fired.code, 0, "{}\n{}", fired.stdout, fired.stderr);
    let run_id = fired
        .stdout
        .lines()
        .next()
        .expect("run id")
        .trim()
        .to_string();
    assert!(fired.stdout.contains("SUCCEEDED"), "{}", fired.stdout);
    let runs = cofferctl(
        &server,
        &["-o", "json", "run", "list", "--schedule", "nightly"],
    )
    .await;
    assert_eq!(runs.code, 0, "{}", runs.stderr);
    let runs: serde_json::Value = serde_json::from_str(&runs.stdout).expect("json");
    assert_eq!(runs["runs"][0]["id"], run_id.as_str());
    assert_eq!(runs["runs"].as_array().map(Vec::len), Some(1));

    // The trigger fires by itself at 02:30 Berlin time.
    clock.set(1_774_661_400_000); // 2026-03-28T01:30:00Z
    let fires = coffer_tests::eventually("the schedule to fire by itself", || async {
        let fires = cofferctl(&server, &["-o", "json", "schedule", "fires", "nightly"]).await;
        let fires: serde_json::Value = serde_json::from_str(&fires.stdout).expect("json");
        (fires["fires"].as_array().map(Vec::len) == Some(2)).then_some(fires)
    })
    .await;
    assert_eq!(fires["fires"][0]["cause"], "FIRE_CAUSE_TRIGGER");
    assert_eq!(fires["fires"][0]["fireTime"], "2026-03-28T01:30:00Z");
    assert_eq!(fires["fires"][1]["cause"], "FIRE_CAUSE_RUN_NOW");
    let shown = cofferctl(&server, &["schedule", "show", "nightly"]).await;
    assert_eq!(shown.code, 0, "{}", shown.stderr);
    assert!(shown.stdout.contains("FIRE TIME"), "{}", shown.stdout);
    assert!(shown.stdout.contains("TRIGGER"), "{}", shown.stdout);

    // Pause, resume, change; the exit codes of bad input and unknown names.
    let paused = cofferctl(&server, &["schedule", "pause", "nightly"]).await;
    assert_eq!(paused.code, 0, "{}", paused.stderr);
    assert!(
        paused.stdout.contains("No upcoming fires (paused)."),
        "{}",
        paused.stdout
    );
    let resumed = cofferctl(&server, &["-o", "json", "schedule", "resume", "nightly"]).await;
    assert_eq!(resumed.code, 0, "{}", resumed.stderr);
    let resumed: serde_json::Value = serde_json::from_str(&resumed.stdout).expect("json");
    assert_ne!(
        resumed["schedule"]["paused"], true,
        "proto3 JSON omits false"
    );
    assert_eq!(
        resumed["schedule"]["nextFireTime"], "2026-03-30T00:30:00Z",
        "from the scheduler's now"
    );
    let changed = cofferctl(
        &server,
        &[
            "schedule",
            "update",
            "nightly",
            "--every",
            "6h",
            "--keep-last",
            "2",
        ],
    )
    .await;
    assert_eq!(changed.code, 0, "{}", changed.stderr);
    assert!(changed.stdout.contains("every 6h"), "{}", changed.stdout);
    assert!(
        changed.stdout.contains("keep last 2, within 30days"),
        "{}",
        changed.stdout
    );
    let nothing = cofferctl(&server, &["schedule", "update", "nightly"]).await;
    assert_eq!(nothing.code, 2, "{}", nothing.stderr);
    let bad = cofferctl(
        &server,
        &["schedule", "update", "nightly", "--cron", "61 * * * *"],
    )
    .await;
    assert_eq!(bad.code, 4, "invalid argument: {}", bad.stderr);
    assert!(bad.stderr.contains("cron.expression"), "{}", bad.stderr);
    let unknown = cofferctl(&server, &["schedule", "show", "weekly"]).await;
    assert_eq!(unknown.code, 5, "not found: {}", unknown.stderr);
    let deleted = cofferctl(&server, &["schedule", "delete", "nightly"]).await;
    assert_eq!(deleted.code, 0, "{}", deleted.stderr);
    assert!(
        deleted.stderr.contains("deleted schedule nightly"),
        "{}",
        deleted.stderr
    );
    let gone = cofferctl(&server, &["schedule", "run", "nightly"]).await;
    assert_eq!(gone.code, 5, "{}", gone.stderr);
}
