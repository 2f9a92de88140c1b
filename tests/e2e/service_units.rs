//! Running Coffer for real: the systemd units in `deploy/systemd` pass `systemd-analyze verify`
//! and keep a low exposure in `systemd-analyze security`, and both binaries write structured
//! JSON logs, one object per line, that carry what their text logs do.

use std::path::Path;
use std::process::Command;

use coffer_client::proto;
use coffer_tests::{
    TestAgent, TestServer, binary, create_fs_location, repo_root, run_backup, write,
};

use crate::{node, register};

/// `systemd-analyze`, which Debian's systemd package ships.
fn systemd_analyze(args: &[&str]) -> std::process::Output {
    Command::new("systemd-analyze")
        .args(args)
        .output()
        .expect("run systemd-analyze (Debian's systemd package)")
}

#[test]
fn the_service_units_verify_and_are_hardened() {
    let dir = tempfile::tempdir().expect("tempdir");
    for unit in ["coffer-server", "coffer-agent"] {
        let text =
            std::fs::read_to_string(repo_root().join(format!("deploy/systemd/{unit}.service")))
                .expect("read the unit");
        for directive in [
            "ProtectSystem=strict",
            "NoNewPrivileges=yes",
            "PrivateTmp=yes",
            "--log-format json",
            "Restart=on-failure",
        ] {
            assert!(text.contains(directive), "{unit}: no {directive}");
        }
        // Verified with the binary this build made where the unit expects the installed one
        // (verify checks that ExecStart is executable).
        let installed = format!("/usr/local/bin/{unit}");
        assert!(
            text.contains(&installed),
            "{unit}: ExecStart is not {installed}"
        );
        let local = dir.path().join(format!("{unit}.service"));
        std::fs::write(
            &local,
            text.replace(&installed, &binary(unit).display().to_string()),
        )
        .expect("write the unit");
        let local = local.display().to_string();
        let verified = systemd_analyze(&["verify", &local]);
        assert!(
            verified.status.success() && verified.stderr.is_empty(),
            "{unit}: {}",
            String::from_utf8_lossy(&verified.stderr)
        );
        let security = systemd_analyze(&["security", "--offline=yes", &local]);
        let report = String::from_utf8_lossy(&security.stdout);
        let exposure: f64 = report
            .lines()
            .find_map(|line| line.split("exposure level for ").nth(1))
            .and_then(|rest| rest.split_whitespace().nth(1))
            .and_then(|level| level.parse().ok())
            .unwrap_or_else(|| panic!("{unit}: no exposure level in {report}"));
        // 0 is fully locked down, 10 unprotected; systemd calls below 4 "OK".
        let most = if unit == "coffer-server" { 2.0 } else { 3.0 };
        assert!(exposure <= most, "{unit}: exposure {exposure}\n{report}");
    }
    // The agent's write access is its state directory and the paths the operator names.
    let agent = std::fs::read_to_string(repo_root().join("deploy/systemd/coffer-agent.service"))
        .expect("read");
    assert!(agent.contains("StateDirectory=coffer-agent"));
    assert!(agent.contains("ReadWritePaths="));
    let server = std::fs::read_to_string(repo_root().join("deploy/systemd/coffer-server.service"))
        .expect("read");
    assert!(server.contains("DynamicUser=yes") && server.contains("CapabilityBoundingSet=\n"));
}

/// Every line of a JSON log is one object with a timestamp, a level and a message; returns them.
fn json_lines(log: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(log).expect("read log");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|error| panic!("{}: not JSON ({error}): {line}", log.display()))
        })
        .collect();
    for line in &lines {
        assert!(line["timestamp"].is_string(), "{line}");
        assert!(line["level"].is_string(), "{line}");
        assert!(line["fields"]["message"].is_string(), "{line}");
    }
    lines
}

#[tokio::test]
async fn both_binaries_write_json_logs_on_request() {
    let root = tempfile::tempdir().expect("tempdir");
    let agent =
        TestAgent::start_with(root.path(), "a", "127.0.0.1:0", &["--log-format", "json"]).await;
    write(&agent.data.join("db/rows"), b"rows\n");
    let server = TestServer::start_with(root.path(), &["--log-format", "json"]).await;
    let client = server.client().await;
    client
        .clusters()
        .register_cluster(register("prod", vec![node(&agent)]))
        .await
        .expect("register");
    create_fs_location(&client, "local", &root.path().join("backups")).await;
    let run = run_backup(&client, "prod", "local", proto::BackupKind::Full).await;
    assert_eq!(run.state(), proto::RunState::Succeeded, "{run:?}");

    let agent_log = json_lines(&root.path().join("a/agent.log"));
    assert!(
        agent_log.iter().any(|line| {
            line["fields"]["message"] == "upload finished" && line["fields"]["objects"].is_number()
        }),
        "{agent_log:?}"
    );
    let server_log = json_lines(&root.path().join("server.log"));
    assert!(!server_log.is_empty());
    // An unknown format is refused up front.
    let refused = Command::new(binary("coffer-server"))
        .args(["--log-format", "yaml"])
        .output()
        .expect("run coffer-server");
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("use text or json"));
}
