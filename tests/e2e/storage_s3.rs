//! The storage layer against a real S3 server, SeaweedFS: multipart uploads, compression,
//! listing, verified downloads, aborted uploads of changed files, and permanent errors.

use std::collections::BTreeMap;

use coffer_format::object::{Codec, OBJECT_HEADER_LEN};
use coffer_format::{
    ContentHash, DownloadError, SecretSource, StorageConfig, UploadError, UploadOptions,
    download_object, hash_file, object_exists, open_operator, upload_file,
};
use coffer_tests::SeaweedFs;

fn random_bytes(len: usize, seed: u8) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    blake3::Hasher::new()
        .update(&[seed])
        .finalize_xof()
        .fill(&mut bytes);
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_round_trip_through_seaweedfs_s3() {
    let dir = tempfile::tempdir().expect("tempdir");
    let weed = SeaweedFs::start(dir.path()).await;

    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, format!("{}\n", weed.secret_key)).expect("write secret");
    let config = StorageConfig {
        location_id: "loc-s3".into(),
        name: "seaweedfs".into(),
        scheme: "s3".into(),
        options: BTreeMap::from([
            ("bucket".into(), weed.bucket.clone()),
            ("root".into(), "/coffer-test/".into()),
            ("endpoint".into(), weed.endpoint.clone()),
            ("region".into(), "us-east-1".into()),
            ("access_key_id".into(), weed.access_key.clone()),
            ("disable_config_load".into(), "true".into()),
            // Keep start-up failures short: the readiness loop retries itself.
            ("retry_max_times".into(), "1".into()),
        ]),
        secrets: BTreeMap::from([("secret_access_key".into(), SecretSource::File(secret_file))]),
    };
    let op = open_operator(&config).expect("open s3 operator");

    let files = dir.path().join("files");
    std::fs::create_dir_all(&files).expect("mkdir");

    // 20 MiB of random bytes: raw, three 8 MiB parts.
    let big = random_bytes(20 * 1024 * 1024 + 5, 7);
    let big_path = files.join("big");
    std::fs::write(&big_path, &big).expect("write");
    // A small compressible file: one PUT.
    let small = "coffer ".repeat(4096).into_bytes();
    let small_path = files.join("small");
    std::fs::write(&small_path, &small).expect("write");

    let mut stored = Vec::new();
    for (path, content) in [(&big_path, &big), (&small_path, &small)] {
        let (hash, size) = hash_file(path, &coffer_format::object::Keyring::plain(), None)
            .await
            .expect("hash");
        assert_eq!(hash, ContentHash::of(content));
        assert_eq!(size, content.len() as u64);
        let object = format!("objects/{}/{hash}", &hash.to_hex()[..2]);
        assert!(!object_exists(&op, &object).await.expect("exists"));
        let outcome = upload_file(&op, &object, path, hash, &UploadOptions::default())
            .await
            .expect("upload");
        assert!(object_exists(&op, &object).await.expect("exists"));
        let metadata = op.stat(&object).await.expect("stat");
        assert_eq!(metadata.content_length(), outcome.stored_bytes);
        stored.push((object, hash, outcome, metadata));
    }
    let (big_object, big_hash, big_outcome, big_metadata) = &stored[0];
    assert!(!big_outcome.compressed);
    assert_eq!(
        big_outcome.stored_bytes,
        big.len() as u64 + OBJECT_HEADER_LEN as u64
    );
    // S3 names a multipart object's ETag "<md5 of part md5s>-<parts>".
    let etag = big_metadata.etag().unwrap_or_default();
    assert!(
        etag.trim_matches('"').ends_with("-3"),
        "expected a 3-part multipart upload, got ETag {etag:?}"
    );
    let (small_object, small_hash, small_outcome, _) = &stored[1];
    assert!(small_outcome.compressed);
    let raw = op.read(small_object).await.expect("read").to_vec();
    assert_eq!(&raw[..OBJECT_HEADER_LEN], &Codec::Zstd.header());

    // Listing finds both objects under the location's root.
    let mut listed: Vec<String> = op
        .list_with("objects/")
        .recursive(true)
        .await
        .expect("list")
        .into_iter()
        .filter(|entry| entry.metadata().is_file())
        .map(|entry| entry.path().to_string())
        .collect();
    listed.sort();
    let mut expected = vec![big_object.clone(), small_object.clone()];
    expected.sort();
    assert_eq!(listed, expected);

    // Downloads verify and restore the content.
    for (object, hash, content) in [
        (big_object, big_hash, &big),
        (small_object, small_hash, &small),
    ] {
        let dest = files.join("restored");
        let size = download_object(
            &op,
            object,
            &dest,
            *hash,
            &coffer_format::object::Keyring::plain(),
            None,
        )
        .await
        .expect("download");
        assert_eq!(size, content.len() as u64);
        assert!(std::fs::read(&dest).expect("read") == *content);
        // Told the size (as restores are), a small object is one plain GET, a large one a
        // ranged read; both report the stored size.
        let sized = coffer_format::object::download_object_sized(
            &op,
            object,
            &dest,
            *hash,
            Some(content.len() as u64),
            &coffer_format::object::Keyring::plain(),
            None,
        )
        .await
        .expect("download with the size");
        let stored = op.stat(object).await.expect("stat").content_length();
        assert_eq!(
            (sized.size, sized.stored_bytes),
            (content.len() as u64, stored)
        );
        assert!(std::fs::read(&dest).expect("read") == *content);
    }

    // Sealed (an encrypted location): streamed through the multipart writer and the ranged
    // reader, named by the keyed hash, nothing of the content visible, and a flipped bit in
    // storage refused.
    let keys = coffer_format::object::Keyring::new(
        Some(std::sync::Arc::new(coffer_format::object::ObjectKey::new(
            "s3-key", &[5; 32],
        ))),
        Vec::new(),
    );
    let sealed_options = UploadOptions {
        keys: keys.clone(),
        ..UploadOptions::default()
    };
    for (path, content) in [(&big_path, &big), (&small_path, &small)] {
        let (hash, _) = hash_file(path, &keys, None).await.expect("keyed hash");
        assert_eq!(hash, keys.content_hash(content));
        let object = format!("sealed/{}/{hash}", &hash.to_hex()[..2]);
        let outcome = upload_file(&op, &object, path, hash, &sealed_options)
            .await
            .expect("sealed upload");
        let stored = op.read(&object).await.expect("read").to_vec();
        assert_eq!(stored.len() as u64, outcome.stored_bytes);
        assert!(coffer_format::object::is_sealed(&stored));
        assert!(
            coffer_format::object::sealed_stored_size_range(content.len() as u64)
                .contains(&(stored.len() as u64))
        );
        assert!(
            !stored
                .windows(64)
                .any(|window| window == &content[1000..1064])
        );
        for size_hint in [None, Some(content.len() as u64)] {
            let dest = files.join("sealed-restored");
            let downloaded = coffer_format::object::download_object_sized(
                &op, &object, &dest, hash, size_hint, &keys, None,
            )
            .await
            .expect("sealed download");
            assert_eq!(downloaded.stored_bytes, stored.len() as u64);
            assert!(std::fs::read(&dest).expect("read") == *content);
        }
        let mut altered = stored.clone();
        let at = altered.len() - 1;
        altered[at] ^= 1;
        op.write(&object, altered).await.expect("alter");
        let error = download_object(&op, &object, &files.join("x"), hash, &keys, None)
            .await
            .expect_err("altered");
        assert!(matches!(error, DownloadError::Sealed { .. }), "{error}");
        assert!(!files.join("x").exists());
    }

    // A file changed after hashing: the multipart upload is aborted, no object appears.
    let changed_path = files.join("changed");
    std::fs::write(&changed_path, &big).expect("write");
    let planned = ContentHash::of(b"what the file held when it was hashed");
    let object = format!("objects/{}/{planned}", &planned.to_hex()[..2]);
    let error = upload_file(
        &op,
        &object,
        &changed_path,
        planned,
        &UploadOptions::default(),
    )
    .await
    .expect_err("changed");
    assert!(
        matches!(error, UploadError::ContentChanged { .. }),
        "{error}"
    );
    assert!(!object_exists(&op, &object).await.expect("exists"));

    // A missing object is a permanent not-found.
    let error = download_object(
        &op,
        "objects/00/missing",
        &files.join("x"),
        planned,
        &coffer_format::object::Keyring::plain(),
        None,
    )
    .await
    .expect_err("missing");
    match error {
        DownloadError::Storage(storage) => {
            assert!(storage.is_not_found(), "{storage}");
            assert!(storage.is_permanent());
        }
        other => panic!("unexpected error: {other}"),
    }

    // Bad credentials are permanent too, and name the location.
    let mut wrong = config.clone();
    wrong.secrets.clear();
    wrong
        .options
        .insert("secret_access_key".into(), "wrong".into());
    let wrong_op = open_operator(&wrong).expect("open");
    let error = object_exists(&wrong_op, big_object)
        .await
        .expect_err("bad credentials")
        .in_location(&wrong.name);
    assert!(error.is_permanent(), "{error}");
    assert!(error.to_string().contains("\"seaweedfs\""), "{error}");
}

/// A node of many small files backed up to SeaweedFS and restored from it: each content stored
/// once, an incremental stores only what changed, and the restore gives back every file.
#[tokio::test]
async fn many_small_files_go_to_seaweedfs_deduplicated_and_restore_whole() {
    use coffer_client::proto;
    use coffer_tests::{TestServer, run_backup, run_restore, tree, wipe, write};

    let root = tempfile::tempdir().expect("tempdir");
    let weed = SeaweedFs::start(root.path()).await;
    let agent = crate::weed_agent(root.path(), "a", &weed, "").await;
    // 300 files of 250 contents in three folders, duplicates across them.
    for index in 0..300 {
        write(
            &agent.data.join(format!("ks/t{}/f{index}.db", index % 3)),
            format!("content {}\n", index % 250).repeat(50).as_bytes(),
        );
    }
    let server = TestServer::start(root.path()).await;
    let client = server.client().await;
    client
        .clusters()
        .register_cluster(crate::register("small", vec![crate::node(&agent)]))
        .await
        .expect("register");
    crate::create_weed_location(
        &client,
        "weed",
        &weed,
        "",
        ("TEST_S3_KEY", "TEST_S3_SECRET"),
    )
    .await;

    let full = run_backup(&client, "small", "weed", proto::BackupKind::Full).await;
    assert_eq!(
        full.state(),
        proto::RunState::Succeeded,
        "{}",
        full.error_message
    );
    let totals = full.totals.expect("totals");
    assert_eq!(totals.files_total, 300);
    assert_eq!(
        totals.files_skipped, 50,
        "each content stored once: the 50 files of a content stored already skip it"
    );

    for index in [0, 1, 2, 150, 299] {
        write(
            &agent.data.join(format!("ks/t{}/f{index}.db", index % 3)),
            format!("changed {index}\n").as_bytes(),
        );
    }
    let incremental = run_backup(&client, "small", "weed", proto::BackupKind::Incremental).await;
    assert_eq!(
        incremental.state(),
        proto::RunState::Succeeded,
        "{}",
        incremental.error_message
    );
    assert_eq!(
        incremental.totals.expect("totals").files_skipped,
        295,
        "only what changed is stored"
    );

    let expected = tree(&agent.data);
    wipe(&agent.data);
    let restore = run_restore(&client, "small", &incremental.backup_id).await;
    assert_eq!(
        restore.state(),
        proto::RunState::Succeeded,
        "{}",
        restore.error_message
    );
    assert_eq!(
        tree(&agent.data),
        expected,
        "every file as it was backed up"
    );
}
