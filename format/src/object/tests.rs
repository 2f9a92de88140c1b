//! Fixtures shared by the object tests, and the round trips through upload and download.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use bytes::Bytes;
use opendal::Operator;

use super::*;
use crate::layout::ContentHash;
use crate::storage::{StorageConfig, open_operator};

pub(super) fn fs_operator(root: &Path) -> Operator {
    open_operator(&StorageConfig {
        location_id: "loc".into(),
        name: "test".into(),
        scheme: "fs".into(),
        options: BTreeMap::from([("root".into(), root.to_string_lossy().into_owned())]),
        secrets: BTreeMap::new(),
    })
    .expect("open fs operator")
}

/// Incompressible bytes without a random-number crate: BLAKE3 in extendable-output mode.
pub(super) fn random_bytes(len: usize, seed: u8) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    blake3::Hasher::new()
        .update(&[seed])
        .finalize_xof()
        .fill(&mut bytes);
    bytes
}

/// Log-like text, compressible but not trivially.
pub(super) fn text_bytes(len: usize) -> Vec<u8> {
    let mut text = Vec::with_capacity(len + 100);
    let mut line = 0u64;
    while text.len() < len {
        writeln!(
            text,
            "2026-11-21T22:{:02}:{:02}Z INFO compaction of sstable {} finished: {} bytes in {} ms",
            line / 60 % 60,
            line % 60,
            line * 7919 % 100_003,
            line * 104_729 % 9_999_991,
            line % 977
        )
        .expect("format");
        line += 1;
    }
    text.truncate(len);
    text
}

pub(super) struct Fixture {
    _dir: tempfile::TempDir,
    pub(super) root: PathBuf,
    pub(super) files: PathBuf,
    pub(super) op: Operator,
}

pub(super) fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("location");
    let files = dir.path().join("files");
    std::fs::create_dir_all(&files).expect("mkdir");
    let op = fs_operator(&root);
    Fixture {
        _dir: dir,
        root,
        files,
        op,
    }
}

pub(super) async fn round_trip(fixture: &Fixture, name: &str, content: &[u8]) -> UploadOutcome {
    let source = fixture.files.join(name);
    std::fs::write(&source, content).expect("write source");
    let (hash, size) = hash_file(&source, &Keyring::plain(), None)
        .await
        .expect("hash");
    assert_eq!(hash, ContentHash::of(content));
    assert_eq!(size, content.len() as u64);

    let object = format!("objects/{}/{hash}", &hash.to_hex()[..2]);
    assert!(!object_exists(&fixture.op, &object).await.expect("exists"));
    let outcome = upload_file(
        &fixture.op,
        &object,
        &source,
        hash,
        &UploadOptions::default(),
    )
    .await
    .expect("upload");
    assert!(object_exists(&fixture.op, &object).await.expect("exists"));
    assert_eq!(outcome.read_bytes, content.len() as u64);
    let stored = std::fs::metadata(fixture.root.join(&object)).expect("stat object");
    assert_eq!(stored.len(), outcome.stored_bytes);

    let dest = fixture.files.join(format!("{name}.restored"));
    let size = download_object(&fixture.op, &object, &dest, hash, &Keyring::plain(), None)
        .await
        .expect("download");
    assert_eq!(size, content.len() as u64);
    assert!(std::fs::read(&dest).expect("read restored") == content);
    // Told the size, the download reports the stored size it streamed.
    let sized = download_object_sized(
        &fixture.op,
        &object,
        &dest,
        hash,
        Some(content.len() as u64),
        &Keyring::plain(),
        None,
    )
    .await
    .expect("download with the size");
    assert_eq!(
        sized,
        Downloaded {
            size: content.len() as u64,
            stored_bytes: outcome.stored_bytes,
            sealed_with: None,
        }
    );
    outcome
}

/// The keys of an encrypted location: one key, `current`.
pub(super) fn sealed_keys() -> Keyring {
    Keyring::new(
        Some(std::sync::Arc::new(ObjectKey::new("current", &[7; 32]))),
        Vec::new(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_path_seals_in_an_encrypted_location_and_restores_verify_and_open() {
    let fixture = fixture();
    let keys = sealed_keys();
    let options = UploadOptions {
        keys: keys.clone(),
        ..UploadOptions::default()
    };
    let text = text_bytes(900_000);
    let noise = random_bytes(300_000, 3);
    for (name, content) in [
        ("text", &text[..]),
        ("noise", &noise[..]),
        ("empty", &b""[..]),
    ] {
        let source = fixture.files.join(name);
        std::fs::write(&source, content).expect("write source");
        let (hash, _) = hash_file(&source, &keys, None).await.expect("hash");
        assert_eq!(hash, keys.content_hash(content), "keyed name");
        assert_ne!(hash, ContentHash::of(content), "not the plain BLAKE3");
        let small = read_small_file(&source, &keys, None)
            .await
            .expect("read")
            .expect("small");
        assert_eq!(small.hash, hash);
        for path in ["bytes", "file", "one-pass"] {
            let object = format!("objects/{name}-{path}/{hash}");
            let outcome = match path {
                "bytes" => upload_bytes(&fixture.op, &object, small.content.clone(), &options)
                    .await
                    .expect("upload bytes"),
                "file" => upload_file(&fixture.op, &object, &source, hash, &options)
                    .await
                    .expect("upload file"),
                _ => {
                    let pending = encode_into_folder(&fixture.op, &source, &options)
                        .await
                        .expect("encode")
                        .expect("a local folder");
                    assert_eq!(pending.hash, hash);
                    let outcome = pending.outcome;
                    pending.commit(&object).await.expect("commit");
                    outcome
                }
            };
            let stored = std::fs::read(fixture.root.join(&object)).expect("read object");
            assert_eq!(stored.len() as u64, outcome.stored_bytes, "{name} {path}");
            assert!(is_sealed(&stored), "{name} {path} not sealed");
            assert!(
                sealed_stored_size_range(content.len() as u64).contains(&(stored.len() as u64)),
                "{name} {path}: {} bytes stored",
                stored.len()
            );
            assert_eq!(outcome.compressed, name == "text", "{name} {path}");
            if content.len() > 32 {
                assert!(
                    !stored.windows(32).any(|window| window == &content[..32]),
                    "{name} {path}: plain bytes in storage"
                );
            }
            let dest = fixture.files.join(format!("{name}-{path}.restored"));
            download_object(&fixture.op, &object, &dest, hash, &keys, None)
                .await
                .expect("download");
            assert!(std::fs::read(&dest).expect("read restored") == content);
            verify_object(&fixture.op, &object, hash, None, &keys, None)
                .await
                .expect("verify");
            // Without the key, or with another: the missing key, and no file left.
            for other in [
                Keyring::plain(),
                Keyring::new(
                    Some(std::sync::Arc::new(ObjectKey::new("other", &[8; 32]))),
                    Vec::new(),
                ),
            ] {
                let error = download_object(&fixture.op, &object, &dest, hash, &other, None)
                    .await
                    .expect_err("no key");
                assert!(
                    matches!(
                        error,
                        DownloadError::Sealed {
                            source: SealError::MissingKey(_),
                            ..
                        }
                    ),
                    "{error}"
                );
                assert!(!dest.exists());
            }
        }
        // One bit flipped anywhere in a sealed object fails verification.
        let object = format!("objects/{name}-file/{hash}");
        let mut stored = std::fs::read(fixture.root.join(&object)).expect("read object");
        let middle = stored.len() / 2 + 20;
        stored[middle] ^= 0x04;
        std::fs::write(fixture.root.join(&object), &stored).expect("tamper");
        let error = verify_object(&fixture.op, &object, hash, None, &keys, None)
            .await
            .expect_err("tampered");
        assert!(
            matches!(
                error,
                DownloadError::Sealed {
                    source: SealError::Damaged(_),
                    ..
                }
            ),
            "{error}"
        );
    }
    // An object in the clear is refused by the encrypted location.
    let clear = fixture.files.join("clear");
    std::fs::write(&clear, b"clear content").expect("write");
    let plain_hash = ContentHash::of(b"clear content");
    upload_file(
        &fixture.op,
        "objects/clear",
        &clear,
        plain_hash,
        &UploadOptions::default(),
    )
    .await
    .expect("upload clear");
    let error = verify_object(&fixture.op, "objects/clear", plain_hash, None, &keys, None)
        .await
        .expect_err("clear object in an encrypted location");
    assert!(
        matches!(
            error,
            DownloadError::Sealed {
                source: SealError::NotSealed,
                ..
            }
        ),
        "{error}"
    );
}

/// An operator for an object store (never contacted).
pub(super) fn s3_operator() -> Operator {
    Operator::new(
        opendal::services::S3::default()
            .bucket("coffer")
            .region("us-east-1")
            .endpoint("http://127.0.0.1:9"),
    )
    .expect("s3 operator")
}

/// Stores `content` by each local write path (one write, a file whose hash is known, a file
/// stored in one pass) under `compression`; returns the three stored objects' bytes.
async fn stored_under(
    fixture: &Fixture,
    name: &str,
    content: &[u8],
    compression: Compression,
) -> Vec<Vec<u8>> {
    let options = UploadOptions {
        compression,
        ..UploadOptions::default()
    };
    let hash = ContentHash::of(content);
    let source = fixture.files.join(name);
    std::fs::write(&source, content).expect("write source");
    let mut stored = Vec::new();
    for path in ["bytes", "file", "one-pass"] {
        let object = format!("objects/{name}-{path}/{hash}");
        match path {
            "bytes" => {
                upload_bytes(
                    &fixture.op,
                    &object,
                    Bytes::from(content.to_vec()),
                    &options,
                )
                .await
                .map(drop)
                .expect("upload bytes");
            }
            "file" => {
                upload_file(&fixture.op, &object, &source, hash, &options)
                    .await
                    .map(drop)
                    .expect("upload file");
            }
            _ => {
                let pending = encode_into_folder(&fixture.op, &source, &options)
                    .await
                    .expect("encode")
                    .expect("a local folder");
                assert_eq!(pending.hash, hash);
                pending.commit(&object).await.expect("commit");
            }
        }
        let dest = fixture.files.join(format!("{name}-{path}.restored"));
        download_object(&fixture.op, &object, &dest, hash, &Keyring::plain(), None)
            .await
            .expect("download");
        assert!(std::fs::read(&dest).expect("read restored") == content);
        stored.push(std::fs::read(fixture.root.join(&object)).expect("read object"));
    }
    stored
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_path_stores_objects_as_the_location_compresses() {
    let fixture = fixture();
    let content = text_bytes(3 * 1024 * 1024 + 777);
    for object in stored_under(&fixture, "none", &content, Compression::None).await {
        assert_eq!(&object[..8], b"COFFER\x01\x00", "stored raw");
        assert!(object[8..] == content[..]);
    }
    let fast = stored_under(
        &fixture,
        "fast",
        &content,
        Compression::zstd(-7).expect("level"),
    )
    .await;
    let strong = stored_under(
        &fixture,
        "strong",
        &content,
        Compression::zstd(9).expect("level"),
    )
    .await;
    for (fast, strong) in fast.iter().zip(&strong) {
        assert_eq!(&fast[..8], b"COFFER\x01\x01");
        assert_eq!(&strong[..8], b"COFFER\x01\x01");
        assert!(
            strong.len() < fast.len() && fast.len() < content.len(),
            "level 9 stores {}, level -7 {}, of {} bytes",
            strong.len(),
            fast.len(),
            content.len()
        );
    }
}

#[tokio::test]
async fn empty_files_round_trip_as_a_bare_header() {
    let fixture = fixture();
    let outcome = round_trip(&fixture, "empty", b"").await;
    assert_eq!(outcome.stored_bytes, OBJECT_HEADER_LEN as u64);
    assert!(!outcome.compressed);
}

#[tokio::test]
async fn small_files_round_trip() {
    let fixture = fixture();
    let outcome = round_trip(&fixture, "small", b"hello, coffer\n").await;
    assert!(!outcome.compressed, "14 bytes do not shrink under zstd");
    assert_eq!(outcome.stored_bytes, OBJECT_HEADER_LEN as u64 + 14);
    let hash = ContentHash::of(b"hello, coffer\n");
    let stored = std::fs::read(
        fixture
            .root
            .join(format!("objects/{}/{hash}", &hash.to_hex()[..2])),
    )
    .expect("read object");
    assert_eq!(&stored[..8], b"COFFER\x01\x00");
    assert_eq!(&stored[8..], b"hello, coffer\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressible_multi_chunk_files_are_stored_compressed() {
    let fixture = fixture();
    let content = text_bytes(20 * 1024 * 1024 + 12_345);
    let outcome = round_trip(&fixture, "text", &content).await;
    assert!(outcome.compressed);
    assert!(
        outcome.stored_bytes < content.len() as u64 / 2,
        "stored {} of {}",
        outcome.stored_bytes,
        content.len()
    );
    // The stored form is the documented one: header, then zstd frames of the content (one
    // per MiB), which plain zstd decodes as one stream.
    let hash = ContentHash::of(&content);
    let stored = std::fs::read(
        fixture
            .root
            .join(format!("objects/{}/{hash}", &hash.to_hex()[..2])),
    )
    .expect("read object");
    assert_eq!(&stored[..8], b"COFFER\x01\x01");
    let decoded = zstd::stream::decode_all(&stored[8..]).expect("plain zstd decodes the body");
    assert!(decoded == content);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incompressible_files_are_stored_raw() {
    let fixture = fixture();
    let content = random_bytes(9 * 1024 * 1024 + 7, 1);
    let outcome = round_trip(&fixture, "random", &content).await;
    assert!(!outcome.compressed);
    assert_eq!(
        outcome.stored_bytes,
        content.len() as u64 + OBJECT_HEADER_LEN as u64
    );
}

/// `cargo test --release -p coffer-format -- --ignored --nocapture upload_throughput`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: writes 512 MiB; run in release"]
async fn upload_throughput() {
    let fixture = fixture();
    let size = 256 * 1024 * 1024;
    for (name, content) in [
        ("text", text_bytes(size)),
        ("random", random_bytes(size, 3)),
    ] {
        let source = fixture.files.join(name);
        std::fs::write(&source, &content).expect("write");
        drop(content);
        let started = Instant::now();
        let (hash, _) = hash_file(&source, &Keyring::plain(), None)
            .await
            .expect("hash");
        let hashed = started.elapsed();
        let object = format!("objects/{name}");
        let started = Instant::now();
        let outcome = upload_file(
            &fixture.op,
            &object,
            &source,
            hash,
            &UploadOptions::default(),
        )
        .await
        .expect("upload");
        let uploaded = started.elapsed();
        let dest = fixture.files.join(format!("{name}.restored"));
        let started = Instant::now();
        download_object(&fixture.op, &object, &dest, hash, &Keyring::plain(), None)
            .await
            .expect("download");
        let downloaded = started.elapsed();
        let mib = size as f64 / (1024.0 * 1024.0);
        println!(
            "{name}: hash_file {:.0} MiB/s; upload_file {:.0} MiB/s (stored {:.1} MiB, compressed: {}); download_object {:.0} MiB/s",
            mib / hashed.as_secs_f64(),
            mib / uploaded.as_secs_f64(),
            outcome.stored_bytes as f64 / (1024.0 * 1024.0),
            outcome.compressed,
            mib / downloaded.as_secs_f64(),
        );
        std::fs::remove_file(&dest).expect("remove");
        std::fs::remove_file(&source).expect("remove");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reused_buffers_store_objects_that_download_verified_whatever_they_held_before() {
    let fixture = fixture();
    let mut encoded = Vec::new();
    let mut content = Vec::new();
    // Compressible then incompressible, in the clear then sealed: each object encoded into the
    // buffer the one before left (longer or shorter), and read back verified.
    let cases = [
        (text_bytes(3 << 20), Keyring::plain(), true),
        (random_bytes(1 << 20, 5), Keyring::plain(), false),
        (text_bytes(200_000), sealed_keys(), true),
        (random_bytes(50_000, 6), sealed_keys(), false),
    ];
    for (index, (bytes, keys, compressible)) in cases.into_iter().enumerate() {
        content.clear();
        content.extend_from_slice(&bytes);
        let capacity = content.capacity();
        let hash = keys.content_hash(&content);
        let object = format!("objects/{}/{hash}", &hash.to_hex()[..2]);
        let options = UploadOptions {
            keys: keys.clone(),
            ..UploadOptions::default()
        };
        let (outcome, returned, returned_encoded) =
            upload_reusing(&fixture.op, &object, content, encoded, &options)
                .await
                .expect("upload");
        assert_eq!(returned, bytes, "the content comes back as it was");
        assert_eq!(returned.capacity(), capacity, "the same buffer");
        assert_eq!(outcome.compressed, compressible, "case {index}");
        assert_eq!(outcome.read_bytes, bytes.len() as u64);
        let stored = std::fs::metadata(fixture.root.join(&object)).expect("stat object");
        assert_eq!(stored.len(), outcome.stored_bytes);
        let dest = fixture.files.join(format!("reused-{index}"));
        let downloaded =
            download_object_sized(&fixture.op, &object, &dest, hash, None, &keys, None)
                .await
                .expect("download");
        assert_eq!(downloaded.size, bytes.len() as u64);
        assert!(std::fs::read(&dest).expect("read") == bytes);
        content = returned;
        encoded = returned_encoded;
    }
}
