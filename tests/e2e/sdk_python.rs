//! A Python client generated from `proto/` with grpcio-tools drives a backup against the real
//! server and agent: what the README promises to SDK users, checked with a real generator.

use std::path::Path;
use std::process::Stdio;

use coffer_tests::{TestAgent, TestServer, repo_root};

/// The Python of `.tools/venv`, with grpcio and grpcio-tools (`scripts/install-tools python-sdk`).
pub(crate) fn venv_python() -> std::path::PathBuf {
    let python = repo_root().join(".tools/venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/install-tools python-sdk (scripts/test does)",
        python.display()
    );
    python
}

/// Generates the Python client of `coffer.v1` into `out`, as docs/clients.md says to.
pub(crate) async fn generate_python_client(out: &Path) {
    let root = repo_root();
    std::fs::create_dir_all(out).expect("create the generated client's folder");
    let mut protos: Vec<String> = std::fs::read_dir(root.join("proto/coffer/v1"))
        .expect("read proto/coffer/v1")
        .map(|entry| entry.expect("proto entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "proto"))
        .map(|path| {
            path.strip_prefix(&root)
                .expect("below the repository")
                .display()
                .to_string()
        })
        .collect();
    protos.sort();
    assert!(!protos.is_empty(), "no .proto files in proto/coffer/v1");
    let output = tokio::process::Command::new(venv_python())
        .args(["-m", "grpc_tools.protoc", "-I", "proto"])
        .arg(format!("--python_out={}", out.display()))
        .arg(format!("--grpc_python_out={}", out.display()))
        .args(&protos)
        .current_dir(&root)
        .output()
        .await
        .expect("run grpc_tools.protoc");
    assert!(
        output.status.success(),
        "grpc_tools.protoc failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    for module in ["backup_pb2.py", "backup_pb2_grpc.py", "run_pb2_grpc.py"] {
        assert!(
            out.join("coffer/v1").join(module).exists(),
            "generated {module}"
        );
    }
}

#[tokio::test]
async fn a_generated_python_client_backs_up_a_cluster_fires_a_schedule_and_watches_the_runs() {
    let root = tempfile::tempdir().expect("tempdir");
    let agent = TestAgent::start(root.path(), "a").await;
    let server = TestServer::start(root.path()).await;
    std::fs::write(agent.data.join("one.txt"), b"first file\n").expect("write file");
    std::fs::create_dir_all(agent.data.join("sub")).expect("create sub folder");
    std::fs::write(agent.data.join("sub/two.bin"), vec![7u8; 100_000]).expect("write file");

    let generated = root.path().join("python-client");
    generate_python_client(&generated).await;

    let location = root.path().join("backups");
    let output = tokio::process::Command::new(venv_python())
        .arg("-B")
        .arg(repo_root().join("tests/sdk/python_backup.py"))
        .arg(server.process.host_port())
        .arg(&agent.process.url)
        .arg(&location)
        .args(["--expect-files", "2"])
        .env("PYTHONPATH", &generated)
        .env(
            "COFFER_TOKEN",
            server.admin_token.as_deref().expect("the admin token"),
        )
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run tests/sdk/python_backup.py");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "python_backup.py exited {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );

    let states: Vec<&str> = stdout
        .lines()
        .filter_map(|line| line.strip_prefix("state "))
        .collect();
    assert_eq!(
        states.last(),
        Some(&"RUN_STATE_SUCCEEDED"),
        "states seen: {stdout}"
    );
    assert!(
        states[..states.len() - 1]
            .iter()
            .all(|state| ["RUN_STATE_QUEUED", "RUN_STATE_RUNNING"].contains(state)),
        "only QUEUED or RUNNING before the end: {stdout}"
    );
    assert!(
        stdout.contains("kind BACKUP_KIND_FULL files 2 bytes 100011"),
        "{stdout}"
    );
    assert!(stdout.contains("cluster py-sdk "), "{stdout}");
    // The schedule: its next fire times (02:30 in Berlin is 00:30 or 01:30 UTC), then the run
    // RunSchedule started, followed to its end.
    let upcoming: Vec<&str> = stdout
        .lines()
        .filter_map(|line| line.strip_prefix("upcoming "))
        .collect();
    assert_eq!(upcoming.len(), 5, "{stdout}");
    assert!(
        upcoming
            .iter()
            .all(|time| time.ends_with("T00:30:00Z") || time.ends_with("T01:30:00Z")),
        "{upcoming:?}"
    );
    assert!(
        stdout.contains("fired FIRE_OUTCOME_STARTED run "),
        "{stdout}"
    );
    assert!(
        stdout.contains("schedule-state RUN_STATE_SUCCEEDED"),
        "{stdout}"
    );
    assert!(
        stdout.contains("fires 1 first FIRE_CAUSE_RUN_NOW"),
        "{stdout}"
    );

    // The backup the script made is the one the Rust client sees.
    let client = server.client().await;
    let listed = client
        .backups()
        .list_backups(coffer_client::proto::ListBackupsRequest::default())
        .await
        .expect("list backups")
        .into_inner();
    assert_eq!(listed.backups.len(), 2, "the backup and the scheduled one");
    assert!(
        listed
            .backups
            .iter()
            .all(|backup| backup.cluster_name == "py-sdk")
    );
    let scheduled = &listed.backups[0];
    assert_eq!(
        scheduled.kind(),
        coffer_client::proto::BackupKind::Incremental
    );
    assert!(!scheduled.schedule_id.is_empty(), "names its schedule");
    assert!(location.exists(), "the location folder was created");
}
