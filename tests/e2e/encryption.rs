//! Encryption at rest with real binaries: a location naming an agent's key stores every object
//! and manifest sealed and named by a keyed hash, so its storage holds no plaintext and no
//! plain content hash; backups restore byte-identical; an altered object is found by deep
//! validation and refused by a restore; a key rotation keeps old backups restorable; a key an
//! agent lacks, or does not bind to the location, is refused with a clear error.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use coffer_client::{CofferClient, proto};
use coffer_format::ContentHash;
use coffer_proto::agent::v1 as agent_proto;
use coffer_proto::agent::v1::agent_service_client::AgentServiceClient;
use coffer_tests::{
    TestAgent, TestServer, get_run, noise, run_backup, tree, watch_to_end, wipe, write,
};
use tonic::Code;

use crate::{key_file, node, register};

/// Text that must never be found in the location's storage.
const MARKER: &str = "ACCOUNT-LEDGER-ROW";

/// `[[keys]]` entries, each binding its key to the fs folder `root`.
fn keys_config(keys: &[(&str, &Path)], root: &Path) -> String {
    keys.iter()
        .map(|(name, file)| {
            format!(
                "[[keys]]\nname = {name:?}\nfile = {:?}\nroots = [{:?}]\n\n",
                file.display().to_string(),
                root.display().to_string()
            )
        })
        .collect()
}

async fn create_location(client: &CofferClient, name: &str, path: &Path, key: &str) {
    client
        .locations()
        .create_location(proto::CreateLocationRequest {
            name: name.into(),
            options: Some(proto::create_location_request::Options::Fs(
                proto::FsLocationOptions {
                    path: path.display().to_string(),
                },
            )),
            compression: None,
            encryption_key: key.into(),
        })
        .await
        .expect("create location");
}

/// Every regular file below `root`, with its content.
fn stored_files(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    let mut folders = vec![root.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                folders.push(path);
            } else {
                let content = std::fs::read(&path).expect("read stored file");
                files.push((path, content));
            }
        }
    }
    files
}

/// The key id a sealed object names (bytes 8..16 of its header).
fn key_id(stored: &[u8]) -> [u8; 8] {
    let mut id = [0u8; 8];
    id.copy_from_slice(&stored[8..16]);
    id
}

async fn restore(client: &CofferClient, backup_id: &str) -> proto::Run {
    coffer_tests::run_restore(client, "prod", backup_id).await
}

async fn deep_validate(client: &CofferClient) -> proto::ValidationResult {
    let run_id = client
        .locations()
        .validate_location(proto::ValidateLocationRequest {
            location: "sealed".into(),
            cluster: "prod".into(),
            depth: proto::ValidationDepth::Deep.into(),
            sample_percent: 0,
        })
        .await
        .expect("validate")
        .into_inner()
        .run_id;
    let run = watch_to_end(client, &run_id).await.pop().expect("final");
    assert_eq!(
        run.state(),
        proto::RunState::Succeeded,
        "{}",
        run.error_message
    );
    run.validation.expect("a validation result")
}

/// The run's error and its nodes' last errors, for assertions on why it failed.
fn failure_text(run: &proto::Run) -> String {
    std::iter::once(run.error_message.clone())
        .chain(run.nodes.iter().map(|node| node.last_error.clone()))
        .collect::<Vec<_>>()
        .join(" | ")
}

#[tokio::test]
async fn an_encrypted_location_holds_no_plaintext_restores_identical_and_refuses_wrong_keys() {
    let root = tempfile::tempdir().expect("tempdir");
    let keys = root.path().join("keys");
    std::fs::create_dir_all(&keys).expect("keys folder");
    let storage = root.path().join("storage");
    std::fs::create_dir_all(&storage).expect("storage folder");
    let old_key = key_file(&keys, "site-2026.key", 1);
    let new_key = key_file(&keys, "site-2027.key", 2);
    let config = keys_config(
        &[("site-2026", &old_key), ("site-2027", &new_key)],
        &storage,
    );
    let agent = TestAgent::start_with_credentials(root.path(), "a", &[], &config).await;
    let ledger = format!("{MARKER} 42 credit 1000.00\n").repeat(60_000);
    write(&agent.data.join("ks/t1/ledger.db"), ledger.as_bytes());
    write(&agent.data.join("ks/t1/ledger-copy.db"), ledger.as_bytes());
    write(&agent.data.join("ks/t1/blob.bin"), &noise(3 << 20, 9));
    write(&agent.data.join("ks/t1/empty"), b"");
    write(&agent.data.join("ks/t1/small.conf"), b"replication = 3\n");
    let before = tree(&agent.data);
    let plain_names: Vec<String> = before
        .values()
        .map(|content| ContentHash::of(content).to_hex())
        .collect();

    let server = TestServer::start(root.path()).await;
    let client = server.client().await;
    client
        .clusters()
        .register_cluster(register("prod", vec![node(&agent)]))
        .await
        .expect("register");
    let sealed = storage.join("sealed");
    create_location(&client, "sealed", &sealed, "site-2026").await;
    let shown = client
        .locations()
        .get_location(proto::GetLocationRequest {
            location: "sealed".into(),
        })
        .await
        .expect("get")
        .into_inner()
        .location
        .expect("location");
    assert_eq!(shown.encryption_key, "site-2026");

    let first = run_backup(&client, "prod", "sealed", proto::BackupKind::Full).await;
    assert_eq!(first.state(), proto::RunState::Succeeded, "{first:?}");

    // The storage: the format marker in the clear; every other file (objects, node manifest,
    // backup manifest, cluster description) sealed with the key, and no plaintext, no file
    // path, no plain BLAKE3 name anywhere.
    let stored = stored_files(&sealed);
    let old_id = {
        let (_, object) = stored
            .iter()
            .find(|(path, _)| path.to_string_lossy().contains("/objects/"))
            .expect("an object");
        key_id(object)
    };
    let mut objects = 0;
    for (path, content) in &stored {
        let shown = path.display();
        if path.file_name().is_some_and(|name| name == "coffer.json") {
            continue;
        }
        assert!(content.starts_with(b"COFFER\x01\x02"), "{shown} not sealed");
        assert_eq!(key_id(content), old_id, "{shown}");
        for text in [
            MARKER,
            "ks/t1/ledger.db",
            "replication",
            "backup_id",
            "hostname",
        ] {
            assert!(
                !content.windows(text.len()).any(|w| w == text.as_bytes()),
                "{shown} holds {text:?} in the clear"
            );
        }
        let name = path.to_string_lossy();
        assert!(
            !plain_names
                .iter()
                .any(|plain| name.contains(plain.as_str())),
            "{shown} is named by the plain hash of a file"
        );
        if name.contains("/objects/") {
            objects += 1;
        }
    }
    // Five files, four contents (the copy deduplicates): four objects.
    assert_eq!(objects, 4, "{stored:?}");

    // The format as docs/storage-format.md gives it opens them without Coffer: scripts/unseal
    // (Python's blake3 and cryptography) recovers a raw object and checks its keyed name, and
    // the commit manifest, and refuses the other key.
    let key = coffer_format::object::ObjectKey::from_hex(
        "site-2026",
        &std::fs::read_to_string(&old_key).expect("read key"),
    )
    .expect("parse key");
    let small_name = coffer_format::object::Keyring::new(Some(std::sync::Arc::new(key)), vec![])
        .content_hash(b"replication = 3\n")
        .to_hex();
    let (small_object, _) = stored
        .iter()
        .find(|(path, _)| path.ends_with(&small_name))
        .expect("the small file's object, by its keyed name");
    let unseal = |key: &Path, stored: &Path, name: Option<&str>| {
        let mut command = std::process::Command::new(crate::sdk_python::venv_python());
        command
            .arg(coffer_tests::repo_root().join("scripts/unseal"))
            .arg(key)
            .arg(stored);
        if let Some(name) = name {
            command.args(["--name", name]);
        }
        command.output().expect("run scripts/unseal")
    };
    let opened = unseal(&old_key, small_object, Some(&small_name));
    assert!(
        opened.status.success(),
        "{}",
        String::from_utf8_lossy(&opened.stderr)
    );
    assert_eq!(opened.stdout, b"COFFER\x01\x00replication = 3\n");
    let (commit, _) = stored
        .iter()
        .find(|(path, _)| path.ends_with("backup.json"))
        .expect("the commit manifest");
    let opened = unseal(&old_key, commit, None);
    assert!(opened.status.success());
    let manifest: serde_json::Value = serde_json::from_slice(&opened.stdout).expect("JSON");
    assert_eq!(manifest["backup_id"], first.backup_id.as_str());
    let refused = unseal(&new_key, commit, None);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("sealed with key id"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    // Straight to the agent's port: the commit manifest opens through GetObject (what the server
    // uses), an object does not (the agent API is no decryption service), and the key is not
    // used for a folder it is not bound to.
    let mut direct = AgentServiceClient::connect(agent.process.url.clone())
        .await
        .expect("connect to the agent");
    let direct_location = |root: &Path| agent_proto::StorageLocation {
        location_id: "direct".into(),
        name: "direct".into(),
        scheme: "fs".into(),
        options: HashMap::from([
            ("root".to_string(), root.display().to_string()),
            ("encryption_key".to_string(), "site-2026".to_string()),
        ]),
        secrets: HashMap::new(),
    };
    let relative = |path: &Path| {
        path.strip_prefix(&sealed)
            .expect("inside the location")
            .display()
            .to_string()
    };
    let opened = direct
        .get_object(agent_proto::GetObjectRequest {
            location: Some(direct_location(&sealed)),
            path: relative(commit),
        })
        .await
        .expect("the commit manifest, opened")
        .into_inner()
        .content;
    assert!(String::from_utf8_lossy(&opened).contains(&first.backup_id));
    let error = direct
        .get_object(agent_proto::GetObjectRequest {
            location: Some(direct_location(&sealed)),
            path: relative(small_object),
        })
        .await
        .expect_err("an object through GetObject");
    assert_eq!(error.code(), Code::InvalidArgument, "{error:?}");
    let error = direct
        .get_object(agent_proto::GetObjectRequest {
            location: Some(direct_location(&root.path().join("a"))),
            path: "coffer.json".into(),
        })
        .await
        .expect_err("a key towards a folder it is not bound to");
    assert_eq!(error.code(), Code::FailedPrecondition, "{error:?}");
    drop(direct);

    // Restored byte-identical after the data is wiped.
    wipe(&agent.data);
    let restored = restore(&client, &first.backup_id).await;
    assert_eq!(restored.state(), proto::RunState::Succeeded, "{restored:?}");
    assert_eq!(tree(&agent.data), before);

    // One bit flipped in the largest object: deep validation finds it damaged, a restore
    // refuses it and leaves no damaged file behind.
    let (largest, original) = stored_files(&sealed.join("clusters"))
        .into_iter()
        .filter(|(path, _)| path.to_string_lossy().contains("/objects/"))
        .max_by_key(|(_, content)| content.len())
        .expect("largest object");
    let mut altered = original.clone();
    let middle = altered.len() / 2;
    altered[middle] ^= 0x10;
    std::fs::write(&largest, &altered).expect("tamper");
    let validation = deep_validate(&client).await;
    assert_eq!(validation.objects_damaged, 1, "{validation:?}");
    assert!(!validation.backups[0].restorable, "{validation:?}");
    wipe(&agent.data);
    let refused = restore(&client, &first.backup_id).await;
    assert_eq!(refused.state(), proto::RunState::Failed, "{refused:?}");
    assert!(
        failure_text(&refused).contains("does not authenticate"),
        "{}",
        failure_text(&refused)
    );
    assert!(!agent.data.join("ks/t1/blob.bin").exists());
    std::fs::write(&largest, &original).expect("repair");

    // Rotation: the location now seals with the new key; the old one stays bound for reading.
    client
        .locations()
        .update_location(proto::UpdateLocationRequest {
            location: "sealed".into(),
            encryption_key: Some("site-2027".into()),
            ..Default::default()
        })
        .await
        .expect("rotate the key");
    let restored = restore(&client, &first.backup_id).await;
    assert_eq!(restored.state(), proto::RunState::Succeeded, "{restored:?}");
    write(
        &agent.data.join("ks/t2/new.db"),
        b"written after the rotation\n",
    );
    let after_rotation = tree(&agent.data);
    let second = run_backup(&client, "prod", "sealed", proto::BackupKind::Incremental).await;
    assert_eq!(second.state(), proto::RunState::Succeeded, "{second:?}");
    let new_ids: std::collections::BTreeSet<[u8; 8]> = stored_files(&sealed)
        .iter()
        .filter(|(path, _)| !stored.iter().any(|(old, _)| old == path))
        // The cluster's description is written in the background after each backup: the one
        // of the first backup may land after the listing above, sealed with the old key.
        .filter(|(path, _)| {
            path.file_name()
                .is_some_and(|name| name != "coffer.json" && name != "cluster.json")
        })
        .map(|(_, content)| key_id(content))
        .collect();
    assert!(
        !new_ids.is_empty() && !new_ids.contains(&old_id),
        "new files sealed with the old key"
    );
    wipe(&agent.data);
    let restored = restore(&client, &second.backup_id).await;
    assert_eq!(restored.state(), proto::RunState::Succeeded, "{restored:?}");
    assert_eq!(tree(&agent.data), after_rotation);

    // Encryption is chosen at creation; an encrypted location never returns to the clear.
    create_location(&client, "clear", &storage.join("clear"), "").await;
    let error = client
        .locations()
        .update_location(proto::UpdateLocationRequest {
            location: "clear".into(),
            encryption_key: Some("site-2027".into()),
            ..Default::default()
        })
        .await
        .expect_err("encrypt a clear location");
    assert_eq!(error.code(), Code::FailedPrecondition, "{error:?}");
    let error = client
        .locations()
        .update_location(proto::UpdateLocationRequest {
            location: "sealed".into(),
            encryption_key: Some(String::new()),
            ..Default::default()
        })
        .await
        .expect_err("decrypt an encrypted location");
    assert_eq!(error.code(), Code::InvalidArgument, "{error:?}");
    let error = client
        .locations()
        .create_location(proto::CreateLocationRequest {
            name: "bad-key-name".into(),
            options: Some(proto::create_location_request::Options::Fs(
                proto::FsLocationOptions {
                    path: storage.join("x").display().to_string(),
                },
            )),
            compression: None,
            encryption_key: "../etc/key".into(),
        })
        .await
        .expect_err("a key name that is no name");
    assert_eq!(error.code(), Code::InvalidArgument, "{error:?}");

    // A key the agent does not have, or does not bind to the location's folder: refused
    // before anything is stored.
    create_location(&client, "unknown-key", &storage.join("unknown"), "nope").await;
    let outside = root.path().join("elsewhere");
    create_location(&client, "unbound", &outside, "site-2027").await;
    for (location, reason) in [
        ("unknown-key", "no encryption key named \"nope\""),
        ("unbound", "not bound to this location"),
    ] {
        let run = run_backup(&client, "prod", location, proto::BackupKind::Full).await;
        assert_eq!(run.state(), proto::RunState::Failed, "{run:?}");
        assert!(
            failure_text(&run).contains(reason),
            "{location}: {}",
            failure_text(&run)
        );
    }
    assert!(
        !outside.join("clusters").exists(),
        "something was stored where the key is not bound"
    );

    // The agent restarted without the old key: the first backup's manifest, sealed with it,
    // cannot be opened, and the error names the key id it needs.
    let address = agent.process.host_port().to_string();
    agent.process.stop().await;
    let without_old = root.path().join("without-old.toml");
    std::fs::write(
        &without_old,
        keys_config(&[("site-2027", &new_key)], &storage),
    )
    .expect("write configuration");
    let agent = TestAgent::start_with(
        root.path(),
        "a",
        &address,
        &["--config", &without_old.display().to_string()],
    )
    .await;
    let refused = restore(&client, &first.backup_id).await;
    assert_eq!(refused.state(), proto::RunState::Failed, "{refused:?}");
    let old_hex: String = old_id.iter().map(|byte| format!("{byte:02x}")).collect();
    assert!(
        failure_text(&refused).contains(&old_hex),
        "{}",
        failure_text(&refused)
    );
    let run = get_run(&client, &refused.id).await;
    assert_eq!(run.state(), proto::RunState::Failed);
    drop(agent);

    // Neither key reached a log.
    for key in [&old_key, &new_key] {
        let secret = std::fs::read_to_string(key).expect("read key");
        for log in [
            root.path().join("a/agent.log"),
            root.path().join("server.log"),
        ] {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            assert!(!text.contains(secret.trim()), "a key in {}", log.display());
        }
    }
}
