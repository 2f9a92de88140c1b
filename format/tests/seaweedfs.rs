//! Upload, download, exists and list against a real S3 server: SeaweedFS (`weed mini`), through
//! the `s3` scheme with path-style addressing, with a file large enough for a multipart upload.
//!
//! Finds `weed` in `$COFFER_WEED`, else `<repo>/.tools/bin/weed` (`scripts/install-tools
//! seaweedfs`), else on `PATH`; without it the test prints why and passes. `weed mini` cannot take a
//! bound listener and opens ten ports, so the test binds ten loopback ports at once, releases them
//! and hands them to `weed` (a port could be taken in between: the test then fails at start-up,
//! with weed's log). `COFFER_TEST_LOG=1` prints weed's log at the end.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use coffer_format::object::{Codec, OBJECT_HEADER_LEN};
use coffer_format::{
    ContentHash, DownloadError, SecretSource, StorageConfig, UploadError, UploadOptions,
    download_object, hash_file, object_exists, open_operator, upload_file,
};

const ACCESS_KEY: &str = "coffer-test-key";
const SECRET_KEY: &str = "coffer-test-secret";
const BUCKET: &str = "coffer";

fn find_weed() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("COFFER_WEED") {
        return Some(PathBuf::from(path));
    }
    let tools = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/bin/weed");
    if tools.is_file() {
        return Some(tools);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("weed"))
            .find(|candidate| candidate.is_file())
    })
}

/// A running `weed mini`, stopped (SIGTERM, then SIGKILL) when dropped.
struct Weed {
    child: Child,
    log: PathBuf,
    s3_port: u16,
}

impl Weed {
    fn start(weed: &Path, dir: &Path) -> Self {
        // Ten distinct free ports: all bound at once, then released for weed.
        let listeners: Vec<TcpListener> = (0..10)
            .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a loopback port"))
            .collect();
        let ports: Vec<u16> = listeners
            .iter()
            .map(|listener| listener.local_addr().expect("local addr").port())
            .collect();
        drop(listeners);

        let data = dir.join("data");
        std::fs::create_dir_all(&data).expect("weed data dir");
        let credentials = dir.join("s3.json");
        std::fs::write(
            &credentials,
            format!(
                r#"{{"identities":[{{"name":"coffer","credentials":[{{"accessKey":"{ACCESS_KEY}","secretKey":"{SECRET_KEY}"}}],"actions":["Admin","Read","Write","List","Tagging"]}}]}}"#
            ),
        )
        .expect("write s3 credentials");
        let log = dir.join("weed.log");
        let log_file = std::fs::File::create(&log).expect("weed log");
        let child = Command::new(weed)
            .arg("mini")
            .arg(format!("-dir={}", data.display()))
            .args([
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                "-master.telemetry=false",
                "-admin.ui=false",
                "-webdav=false",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
            ])
            .arg(format!("-s3.config={}", credentials.display()))
            .arg(format!("-bucket={BUCKET}"))
            .arg(format!("-s3.port={}", ports[0]))
            .arg(format!("-s3.port.grpc={}", ports[1]))
            .arg(format!("-master.port={}", ports[2]))
            .arg(format!("-master.port.grpc={}", ports[3]))
            .arg(format!("-volume.port={}", ports[4]))
            .arg(format!("-volume.port.grpc={}", ports[5]))
            .arg(format!("-filer.port={}", ports[6]))
            .arg(format!("-filer.port.grpc={}", ports[7]))
            .arg(format!("-admin.port={}", ports[8]))
            .arg(format!("-admin.port.grpc={}", ports[9]))
            .arg(format!(
                "-filer.localSocket={}",
                dir.join("filer.sock").display()
            ))
            .arg(format!("-s3.localSocket={}", dir.join("s3.sock").display()))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("clone log"))
            .stderr(log_file)
            .spawn()
            .expect("start weed mini");
        Self {
            child,
            log,
            s3_port: ports[0],
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Fails the test with weed's log if weed has exited.
    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("weed mini exited ({status}); its log:\n{}", self.log_tail());
        }
    }
}

impl Drop for Weed {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::env::var_os("COFFER_TEST_LOG").is_some() {
            eprintln!("weed log:\n{}", self.log_tail());
        }
    }
}

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
    let Some(weed) = find_weed() else {
        eprintln!("skipped: weed not found (scripts/install-tools seaweedfs, or set COFFER_WEED)");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Weed::start(&weed, dir.path());

    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, format!("{SECRET_KEY}\n")).expect("write secret");
    let config = StorageConfig {
        location_id: "loc-s3".into(),
        name: "seaweedfs".into(),
        scheme: "s3".into(),
        options: BTreeMap::from([
            ("bucket".into(), BUCKET.into()),
            ("root".into(), "/coffer-test/".into()),
            (
                "endpoint".into(),
                format!("http://127.0.0.1:{}", server.s3_port),
            ),
            ("region".into(), "us-east-1".into()),
            ("access_key_id".into(), ACCESS_KEY.into()),
            ("disable_config_load".into(), "true".into()),
            // Keep start-up failures short: the readiness loop retries itself.
            ("retry_max_times".into(), "1".into()),
        ]),
        secrets: BTreeMap::from([("secret_access_key".into(), SecretSource::File(secret_file))]),
    };
    let op = open_operator(&config).expect("open s3 operator");

    // Ready when the S3 port answers and the bucket serves a listing.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        server.assert_running();
        let listening = TcpStream::connect(("127.0.0.1", server.s3_port)).is_ok();
        let last_error = if listening {
            match op.list("").await {
                Ok(_) => break,
                Err(error) => error.to_string(),
            }
        } else {
            "S3 port not listening".to_string()
        };
        assert!(
            Instant::now() < deadline,
            "seaweedfs not ready after 60 s: {last_error}\n{}",
            server.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

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
        let (hash, size) = hash_file(path, None).await.expect("hash");
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
        let size = download_object(&op, object, &dest, *hash, None)
            .await
            .expect("download");
        assert_eq!(size, content.len() as u64);
        assert!(std::fs::read(&dest).expect("read") == *content);
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
    let error = download_object(&op, "objects/00/missing", &files.join("x"), planned, None)
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
    let _ = std::io::stderr().flush();
}
