//! Locations: create, rename, change options under the rules, check from every agent, delete.

use coffer_client::proto;
use coffer_tests::{TestAgent, TestServer, create_fs_location, run_backup};
use tonic::Code;

use crate::{node, register};

fn fs(path: &std::path::Path) -> proto::update_location_request::Options {
    proto::update_location_request::Options::Fs(proto::FsLocationOptions {
        path: path.display().to_string(),
    })
}

#[tokio::test]
async fn locations_are_checked_from_every_agent_and_changed_under_the_rules() {
    let root = tempfile::tempdir().expect("tempdir");
    let (a, b) = tokio::join!(
        TestAgent::start(root.path(), "a"),
        TestAgent::start(root.path(), "b")
    );
    std::fs::write(a.data.join("file"), b"content").expect("write");
    let server = TestServer::start(root.path()).await;
    let client = server.client().await;
    client
        .clusters()
        .register_cluster(register("pair", vec![node(&a), node(&b)]))
        .await
        .expect("register");
    let store = root.path().join("store");
    create_fs_location(&client, "local", &store).await;

    // Every agent writes, reads, lists and deletes its probe.
    let check = |location: &str| proto::CheckLocationRequest {
        location: location.into(),
        cluster: "pair".into(),
    };
    let checked = client
        .locations()
        .check_location(check("local"))
        .await
        .expect("check")
        .into_inner();
    assert!(checked.ok, "{checked:?}");
    assert_eq!(checked.nodes.len(), 2);
    for node in &checked.nodes {
        for step in [&node.write, &node.read, &node.list, &node.delete] {
            assert_eq!(
                step.as_ref().expect("step").status(),
                proto::LocationCheckStatus::Ok
            );
        }
    }
    let probes = coffer_tests::tree(&store.join("coffer-probe"));
    assert!(probes.is_empty(), "probes are deleted: {probes:?}");

    // A location whose folder cannot be created fails at the write step, with the reason.
    std::fs::write(root.path().join("blocker"), b"a file").expect("write");
    create_fs_location(&client, "blocked", &root.path().join("blocker/store")).await;
    let checked = client
        .locations()
        .check_location(check("blocked"))
        .await
        .expect("check")
        .into_inner();
    assert!(!checked.ok);
    let write = checked.nodes[0].write.as_ref().expect("write step");
    assert_eq!(write.status(), proto::LocationCheckStatus::Failed);
    assert!(!write.error_message.is_empty());
    assert_eq!(
        checked.nodes[0].read.as_ref().expect("read step").status(),
        proto::LocationCheckStatus::Skipped
    );

    // Rename, and move while nothing is stored there.
    let moved = root.path().join("moved");
    let renamed = client
        .locations()
        .update_location(proto::UpdateLocationRequest {
            location: "local".into(),
            compression: None,
            name: Some("main".into()),
            options: Some(fs(&moved)),
            encryption_key: Default::default(),
        })
        .await
        .expect("rename and move")
        .into_inner()
        .location
        .expect("location");
    assert_eq!(renamed.name, "main");

    // Once a backup is stored there, the data cannot move, and the kind never changes.
    let run = run_backup(&client, "pair", "main", proto::BackupKind::Full).await;
    assert_eq!(
        run.state(),
        proto::RunState::Succeeded,
        "{}",
        run.error_message
    );
    let status = client
        .locations()
        .update_location(proto::UpdateLocationRequest {
            location: "main".into(),
            compression: None,
            name: None,
            options: Some(fs(&root.path().join("elsewhere"))),
            encryption_key: Default::default(),
        })
        .await
        .expect_err("data would move");
    assert_eq!(
        status.code(),
        Code::FailedPrecondition,
        "{}",
        status.message()
    );
    let status = client
        .locations()
        .update_location(proto::UpdateLocationRequest {
            location: "main".into(),
            compression: None,
            encryption_key: Default::default(),
            name: None,
            options: Some(proto::update_location_request::Options::S3(
                proto::S3LocationOptions {
                    bucket: "bkt".into(),
                    ..Default::default()
                },
            )),
        })
        .await
        .expect_err("kind would change");
    assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
    let status = client
        .locations()
        .update_location(proto::UpdateLocationRequest {
            location: "main".into(),
            compression: None,
            name: Some("blocked".into()),
            options: None,
            encryption_key: Default::default(),
        })
        .await
        .expect_err("name taken");
    assert_eq!(status.code(), Code::AlreadyExists);
    let status = client
        .locations()
        .check_location(proto::CheckLocationRequest {
            location: "main".into(),
            cluster: "nope".into(),
        })
        .await
        .expect_err("unknown cluster");
    assert_eq!(status.code(), Code::NotFound);

    // Deleting the location forgets its backups (storage keeps them).
    client
        .locations()
        .delete_location(proto::DeleteLocationRequest {
            location: "main".into(),
        })
        .await
        .expect("delete");
    let backups = client
        .backups()
        .list_backups(proto::ListBackupsRequest::default())
        .await
        .expect("list")
        .into_inner()
        .backups;
    assert!(backups.is_empty());
    assert!(
        coffer_tests::tree(&moved)
            .keys()
            .any(|path| path.ends_with("backup.json"))
    );
}

/// Every location field is checked by its kind's own rules: the filesystem root, relative
/// paths, NUL bytes, `..`, kernel filesystems, bucket names no storage accepts (`../../`),
/// endpoints with credentials in them. Nothing is recorded, and `location check` never writes
/// probe objects at the filesystem root.
#[tokio::test]
async fn locations_that_break_their_kinds_rules_are_refused() {
    use proto::create_location_request::Options;
    let root = tempfile::tempdir().expect("tempdir");
    let server = TestServer::start(root.path()).await;
    let client = server.client().await;
    let fs = |path: &str| {
        Options::Fs(proto::FsLocationOptions {
            path: path.to_string(),
        })
    };
    let s3 = |bucket: &str, endpoint: &str, prefix: &str| {
        Options::S3(proto::S3LocationOptions {
            bucket: bucket.to_string(),
            endpoint: endpoint.to_string(),
            prefix: prefix.to_string(),
            ..Default::default()
        })
    };
    let cases = [
        (fs("/"), "fs.path", "root"),
        (fs("//"), "fs.path", "root"),
        (fs("relative/backups"), "fs.path", "absolute"),
        (fs("/srv/back\0ups"), "fs.path", "control"),
        (fs("/srv/../etc"), "fs.path", ".."),
        (fs("/proc/self"), "fs.path", "kernel"),
        (s3("../../", "", ""), "s3.bucket", "../../"),
        (s3("ab", "", ""), "s3.bucket", "3 to 63"),
        (s3("Backups", "", ""), "s3.bucket", "'B'"),
        (
            s3("backups", "http://user:secret@host:9000", ""),
            "s3.endpoint",
            "credentials",
        ),
        (s3("backups", "ftp://host", ""), "s3.endpoint", "http"),
        (s3("backups", "", "a/../../b"), "s3.prefix", ".."),
        (
            Options::Gcs(proto::GcsLocationOptions {
                bucket: "_bucket".into(),
                ..Default::default()
            }),
            "gcs.bucket",
            "start",
        ),
        (
            Options::Azblob(proto::AzblobLocationOptions {
                container: "a--b".into(),
                endpoint: "http://127.0.0.1:10000/devstoreaccount1".into(),
                ..Default::default()
            }),
            "azblob.container",
            "--",
        ),
    ];
    for (index, (options, field, says)) in cases.into_iter().enumerate() {
        let status = client
            .locations()
            .create_location(proto::CreateLocationRequest {
                name: format!("bad-{index}"),
                options: Some(options),
                compression: None,
                encryption_key: Default::default(),
            })
            .await
            .expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
        assert!(
            status.message().contains(field) && status.message().contains(says),
            "case {index}: {}",
            status.message()
        );
    }
    let listed = client
        .locations()
        .list_locations(proto::ListLocationsRequest::default())
        .await
        .expect("list")
        .into_inner()
        .locations;
    assert!(listed.is_empty(), "nothing recorded: {listed:?}");
    assert!(
        !std::path::Path::new("/coffer-probe").exists(),
        "no probe objects at the root"
    );
}

/// A storage outage, with `RUST_BACKTRACE=1` set as on these machines: each retry is one
/// warning line, never a backtrace (OpenDAL's own retry notice printed one per attempt).
#[tokio::test]
async fn a_storage_outage_is_logged_one_line_per_retry_without_backtraces() {
    let root = tempfile::tempdir().expect("tempdir");
    let endpoint = format!("http://{}", coffer_tests::closed_address());
    let agent = TestAgent::start_with_credentials(
        root.path(),
        "a",
        &[
            ("RUST_BACKTRACE", "1"),
            ("TEST_KEY_ID", "id"),
            ("TEST_SECRET", "secret"),
        ],
        &coffer_tests::credentials(
            &["env:TEST_KEY_ID", "env:TEST_SECRET"],
            &endpoint,
            &["coffer"],
        ),
    )
    .await;
    let server = TestServer::start(root.path()).await;
    let client = server.client().await;
    client
        .clusters()
        .register_cluster(register("prod", vec![node(&agent)]))
        .await
        .expect("register");
    let env = |name: &str| proto::SecretRef {
        source: Some(proto::secret_ref::Source::Env(name.into())),
    };
    client
        .locations()
        .create_location(proto::CreateLocationRequest {
            name: "down".into(),
            options: Some(proto::create_location_request::Options::S3(
                proto::S3LocationOptions {
                    bucket: "coffer".into(),
                    endpoint: endpoint.clone(),
                    force_path_style: true,
                    access_key_id: Some(env("TEST_KEY_ID")),
                    secret_access_key: Some(env("TEST_SECRET")),
                    ..Default::default()
                },
            )),
            compression: None,
            encryption_key: Default::default(),
        })
        .await
        .expect("create");
    let check = client
        .locations()
        .check_location(proto::CheckLocationRequest {
            location: "down".into(),
            cluster: "prod".into(),
        })
        .await
        .expect("check")
        .into_inner();
    assert!(!check.ok, "the storage is down: {check:?}");
    let log = std::fs::read_to_string(root.path().join("a/agent.log")).expect("agent log");
    let retries = log
        .lines()
        .filter(|line| line.contains("trying again"))
        .count();
    assert!(retries >= 1, "retries are said:\n{log}");
    assert!(
        !log.contains("Backtrace"),
        "no backtrace in the log:\n{log}"
    );
    assert!(
        log.lines().count() < 40 * retries.max(1),
        "{} lines for {retries} retries",
        log.lines().count()
    );
}
