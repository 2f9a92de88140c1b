//! Restores from a real `fs` location, built with the format crate the way an upload writes it,
//! into real data paths; and the RestoreNode RPC of a real agent.
//!
//! Set `COFFER_TEST_LOG=1` (with `RUST_LOG` as wanted) to see the agent's logs.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, FileTimes};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

mod common;

use coffer_agent::reserved::{STAGING_FOLDER, staging_folder};
use coffer_agent::restore::{self, HookFailure, RestoreFailure, RestoreHook, RestoreJob};
use coffer_format::filter::{PathFilter, PathMatcher};
use coffer_format::manifest::{NodeManifestEntry, NodeManifestHeader, NodeManifestWriter};
use coffer_format::object::{UploadOptions, hash_file, upload_file};
use coffer_format::{ClusterLayout, ContentHash, StorageConfig, open_operator};
use coffer_proto::agent::v1 as proto;
use opendal::Operator;
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

fn init_logs() {
    if std::env::var_os("COFFER_TEST_LOG").is_some() {
        coffer_process::init_tracing();
    }
}

/// A source node with data paths, a location, and a target node with data paths, all in one
/// temporary folder.
struct Fixture {
    root: TempDir,
    operator: Operator,
    cluster_id: Uuid,
    backup_id: Uuid,
    source_node_id: Uuid,
    sources: Vec<PathBuf>,
    targets: Vec<PathBuf>,
}

impl Fixture {
    fn new(data_paths: usize) -> Self {
        init_logs();
        let root = tempfile::tempdir().expect("temp dir");
        let location = root.path().join("location");
        fs::create_dir_all(&location).expect("create location");
        let operator = open_operator(&StorageConfig {
            location_id: "loc".into(),
            name: "test-location".into(),
            scheme: "fs".into(),
            options: BTreeMap::from([("root".into(), location.display().to_string())]),
            secrets: BTreeMap::new(),
        })
        .expect("open location");
        let make = |name: &str| -> Vec<PathBuf> {
            (0..data_paths)
                .map(|index| {
                    let path = root.path().join(format!("{name}{index}"));
                    fs::create_dir_all(&path).expect("create data path");
                    path
                })
                .collect()
        };
        let sources = make("source");
        let targets = make("target");
        Self {
            root,
            operator,
            cluster_id: Uuid::new_v4(),
            backup_id: Uuid::new_v4(),
            source_node_id: Uuid::new_v4(),
            sources,
            targets,
        }
    }

    fn location(&self) -> PathBuf {
        self.root.path().join("location")
    }

    fn layout(&self) -> ClusterLayout {
        ClusterLayout::new(self.cluster_id)
    }

    fn manifest_path(&self) -> String {
        self.layout()
            .node_manifest(self.backup_id, self.source_node_id)
    }

    /// Path of the stored object of `hash` on disk.
    fn object_file(&self, hash: &ContentHash) -> PathBuf {
        self.location().join(self.layout().object(hash))
    }

    /// A folder outside every data path.
    fn outside(&self) -> PathBuf {
        let path = self.root.path().join("outside");
        fs::create_dir_all(&path).expect("create outside folder");
        path
    }

    /// Uploads a file's content and returns its manifest entry under `recorded_path`.
    async fn store(&self, file: &Path, recorded_path: String) -> NodeManifestEntry {
        let (hash, size) = hash_file(file, &coffer_format::object::Keyring::plain(), None)
            .await
            .expect("hash");
        upload_file(
            &self.operator,
            &self.layout().object(&hash),
            file,
            hash,
            &UploadOptions::default(),
        )
        .await
        .expect("upload object");
        let metadata = fs::metadata(file).expect("metadata");
        NodeManifestEntry {
            path: recorded_path,
            size,
            mode: metadata.mode(),
            mtime_ns: metadata.mtime() * 1_000_000_000 + metadata.mtime_nsec(),
            hash,
            packed: None,
        }
    }

    /// Backs up every file of the source data paths, as an upload would.
    async fn back_up(&self) -> Vec<NodeManifestEntry> {
        let mut entries = Vec::new();
        for source in &self.sources {
            for file in files_below(source) {
                let path = source.join(&file);
                entries.push(self.store(&path, path.display().to_string()).await);
            }
        }
        self.write_manifest(
            self.sources
                .iter()
                .map(|path| path.display().to_string())
                .collect(),
            entries.clone(),
        )
        .await;
        entries
    }

    async fn write_manifest(&self, data_paths: Vec<String>, entries: Vec<NodeManifestEntry>) {
        let header = NodeManifestHeader::new(
            self.cluster_id,
            self.backup_id,
            self.source_node_id,
            "source-host",
            data_paths,
        );
        let mut writer = NodeManifestWriter::new(header).with_temp_dir(self.root.path());
        for entry in entries {
            writer.add(entry).await.expect("add entry");
        }
        writer
            .upload(
                &self.operator,
                &self.manifest_path(),
                &coffer_format::object::Keyring::plain(),
            )
            .await
            .expect("write manifest");
    }

    fn job(&self) -> RestoreJob {
        RestoreJob {
            run_id: "run-1".into(),
            operator: self.operator.clone(),
            keys: coffer_format::object::Keyring::plain(),
            location_name: "test-location".into(),
            source_cluster_id: self.cluster_id,
            backup_id: self.backup_id,
            source_node_id: self.source_node_id,
            manifest_path: self.manifest_path(),
            node_id: Uuid::new_v4(),
            data_paths: self.targets.clone(),
            filter: PathMatcher::everything(),
            overwrite: false,
            dry_run: false,
            limiter: None,
            concurrency: restore::DEFAULT_CONCURRENCY,
            hook: None,
            keep_free: 0,
        }
    }

    /// Every file and folder below the target data paths and the outside folder, with content.
    fn target_state(&self) -> BTreeMap<PathBuf, Option<Vec<u8>>> {
        let mut state = BTreeMap::new();
        let mut roots = self.targets.clone();
        roots.push(self.root.path().join("outside"));
        for root in roots {
            let mut stack = vec![root];
            while let Some(folder) = stack.pop() {
                let Ok(entries) = fs::read_dir(&folder) else {
                    continue;
                };
                for entry in entries {
                    let path = entry.expect("entry").path();
                    let metadata = fs::symlink_metadata(&path).expect("metadata");
                    if metadata.is_dir() {
                        stack.push(path.clone());
                        state.insert(path, None);
                    } else if metadata.is_file() {
                        let content = fs::read(&path).expect("read");
                        state.insert(path, Some(content));
                    } else {
                        state.insert(path, None);
                    }
                }
            }
        }
        state
    }
}

/// Regular files below `root`, relative, sorted; no links followed.
fn files_below(root: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(relative) = stack.pop() {
        for entry in fs::read_dir(root.join(&relative)).expect("read folder") {
            let entry = entry.expect("entry");
            let path = relative.join(entry.file_name());
            let file_type = entry.file_type().expect("file type");
            if file_type.is_dir() {
                stack.push(path);
            } else if file_type.is_file() {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

fn write_file(path: &Path, content: &[u8], mode: u32, mtime: SystemTime) {
    fs::create_dir_all(path.parent().expect("parent")).expect("create folders");
    fs::write(path, content).expect("write");
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
    File::options()
        .write(true)
        .open(path)
        .expect("open")
        .set_times(FileTimes::new().set_modified(mtime))
        .expect("set mtime");
}

/// Incompressible bytes without a random-number crate.
fn random_bytes(len: usize, seed: u8) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    let mut state = 0x9e37_79b9_7f4a_7c15_u64 ^ u64::from(seed);
    for byte in &mut bytes {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        *byte = (state >> 24) as u8;
    }
    bytes
}

fn at(seconds: u64, nanos: u32) -> SystemTime {
    UNIX_EPOCH + Duration::new(seconds, nanos)
}

/// A source tree with nested folders, modes, times, an empty file, compressible and
/// incompressible files, and content shared within and across data paths.
fn make_source_tree(fixture: &Fixture) {
    let first = &fixture.sources[0];
    write_file(
        &first.join("ks/t1/md-1-big-Data.db"),
        &"row,".repeat(400_000).into_bytes(),
        0o640,
        at(1_700_000_000, 123_456_789),
    );
    write_file(
        &first.join("ks/t1/md-1-big-Index.db"),
        &random_bytes(300_000, 1),
        0o600,
        at(1_700_000_001, 1),
    );
    write_file(
        &first.join("ks/t2/copy-a"),
        b"shared content",
        0o644,
        at(1_600_000_000, 0),
    );
    write_file(
        &first.join("ks/t2/deeper/copy-b"),
        b"shared content",
        0o755,
        at(1_600_000_002, 999_999_999),
    );
    write_file(&first.join("empty"), b"", 0o444, at(1_000, 5));
    if let Some(second) = fixture.sources.get(1) {
        write_file(
            &second.join("commitlog/log-1"),
            b"shared content",
            0o600,
            at(1_650_000_000, 42),
        );
        write_file(
            &second.join("commitlog/log-2"),
            &random_bytes(10_000, 2),
            0o640,
            at(1_650_000_001, 43),
        );
    }
}

async fn run(
    job: RestoreJob,
) -> (
    Result<proto::RestoreSummary, RestoreFailure>,
    Vec<proto::RestoreProgress>,
) {
    run_with(job, CancellationToken::new()).await
}

async fn run_with(
    job: RestoreJob,
    cancel: CancellationToken,
) -> (
    Result<proto::RestoreSummary, RestoreFailure>,
    Vec<proto::RestoreProgress>,
) {
    let (sender, mut receiver) = tokio::sync::mpsc::channel(16);
    let collector = tokio::spawn(async move {
        let mut updates = Vec::new();
        while let Some(update) = receiver.recv().await {
            updates.push(update);
        }
        updates
    });
    let result = restore::run(job, sender, cancel).await;
    let updates = collector.await.expect("collector");
    (result, updates)
}

fn progress(summary: &proto::RestoreSummary) -> proto::RestoreProgress {
    summary.progress.expect("summary has progress")
}

/// Every source file is at its target with the same content, mode and modification time, and
/// nothing else is in the target data paths.
fn assert_restored(fixture: &Fixture, entries: &[NodeManifestEntry]) {
    let mut expected = BTreeSet::new();
    for entry in entries {
        let (index, relative) = fixture
            .sources
            .iter()
            .enumerate()
            .find_map(|(index, source)| {
                Path::new(&entry.path)
                    .strip_prefix(source)
                    .ok()
                    .map(|relative| (index, relative.to_path_buf()))
            })
            .expect("entry below a source data path");
        let target = fixture.targets[index].join(&relative);
        let source = fixture.sources[index].join(&relative);
        assert_eq!(
            fs::read(&target).expect("read target"),
            fs::read(&source).expect("read source"),
            "{}",
            target.display()
        );
        let metadata = fs::symlink_metadata(&target).expect("target metadata");
        assert!(metadata.is_file());
        assert_eq!(
            metadata.mode() & 0o7777,
            entry.mode & 0o7777,
            "{}",
            target.display()
        );
        assert_eq!(
            metadata.mtime() * 1_000_000_000 + metadata.mtime_nsec(),
            entry.mtime_ns,
            "{}",
            target.display()
        );
        expected.insert((index, relative));
    }
    let mut found = BTreeSet::new();
    for (index, target) in fixture.targets.iter().enumerate() {
        for relative in files_below(target) {
            found.insert((index, relative));
        }
        assert!(
            !target.join(STAGING_FOLDER).exists(),
            "the staging folder is removed"
        );
    }
    assert_eq!(found, expected);
}

#[tokio::test]
async fn restores_a_tree_with_its_modes_and_times() {
    let fixture = Fixture::new(2);
    make_source_tree(&fixture);
    let entries = fixture.back_up().await;
    assert_eq!(entries.len(), 7);

    let (result, updates) = run(fixture.job()).await;
    let summary = result.expect("restore succeeds");
    assert_restored(&fixture, &entries);

    let progress = progress(&summary);
    let total_bytes: u64 = entries.iter().map(|entry| entry.size).sum();
    assert_eq!(progress.files_total, 7);
    assert_eq!(progress.bytes_total, total_bytes);
    assert_eq!(progress.files_done, 7);
    assert_eq!(progress.bytes_done, total_bytes);
    assert_eq!(progress.files_placed, 7);
    assert_eq!(progress.files_skipped, 0);
    // Five distinct contents, each fetched once (the shared one is copied, not fetched again).
    let stored: u64 = entries
        .iter()
        .map(|entry| entry.hash)
        .collect::<BTreeSet<_>>()
        .iter()
        .map(|hash| {
            fs::metadata(fixture.object_file(hash))
                .expect("object")
                .len()
        })
        .sum();
    assert_eq!(progress.bytes_downloaded, stored);
    assert_eq!(summary.files_overwritten, 0);
    assert!(summary.existing_paths.is_empty());
    assert!(!updates.is_empty(), "progress is reported");
    assert_eq!(updates.last(), Some(&progress), "the last update is final");
}

#[tokio::test]
async fn patterns_select_source_paths() {
    let fixture = Fixture::new(2);
    make_source_tree(&fixture);
    let entries = fixture.back_up().await;
    let mut job = fixture.job();
    job.filter = PathFilter {
        include: vec![format!("{}/ks/**", fixture.sources[0].display())],
        exclude: vec!["**/*Index.db".to_string()],
    }
    .compile()
    .expect("patterns compile");
    // Only the first data path is selected: a node with one data path will do.
    job.data_paths.truncate(1);
    let (result, _) = run(job).await;
    let summary = result.expect("restore succeeds");
    assert_eq!(progress(&summary).files_placed, 3);
    let selected: Vec<NodeManifestEntry> = entries
        .into_iter()
        .filter(|entry| entry.path.contains("/ks/") && !entry.path.ends_with("Index.db"))
        .collect();
    let one_path = Fixture {
        targets: fixture.targets[..1].to_vec(),
        sources: fixture.sources[..1].to_vec(),
        ..fixture
    };
    assert_restored(&one_path, &selected);
}

#[tokio::test]
async fn a_node_with_fewer_data_paths_is_refused() {
    let fixture = Fixture::new(2);
    make_source_tree(&fixture);
    fixture.back_up().await;
    let mut job = fixture.job();
    job.data_paths.truncate(1);
    let (result, _) = run(job).await;
    let error = result.expect_err("refused");
    assert!(matches!(error, RestoreFailure::Refused(_)), "{error}");
    assert!(error.to_string().contains("commitlog/log-1"), "{error}");
    assert!(error.to_string().contains("#2"), "{error}");
    assert!(files_below(&fixture.targets[0]).is_empty());
    assert!(!fixture.targets[0].join(STAGING_FOLDER).exists());
}

/// A restore that would leave less free space than the agent keeps is refused before anything
/// is downloaded or written, naming the data path, what it needs and what is free; a dry run
/// says so too; with room kept small enough it restores.
#[tokio::test]
async fn a_restore_without_room_for_it_is_refused_before_downloading() {
    let fixture = Fixture::new(2);
    make_source_tree(&fixture);
    fixture.back_up().await;
    let free = fs4::available_space(&fixture.targets[0]).expect("free space");
    for dry_run in [false, true] {
        let mut job = fixture.job();
        job.dry_run = dry_run;
        // Keep all the free space but a little: no backup fits in what is left.
        job.keep_free = free.saturating_sub(1000);
        let (result, _) = run(job).await;
        let error = result.expect_err("no room");
        let RestoreFailure::NoSpace {
            path,
            needed,
            free: reported,
            ..
        } = &error
        else {
            panic!("not NoSpace: {error}");
        };
        assert_eq!(path, &fixture.targets[0], "{error}");
        assert!(*needed > 1000, "{error}");
        assert!(*reported > 0, "{error}");
        assert!(error.to_string().contains("restore-keep-free"), "{error}");
        assert!(files_below(&fixture.targets[0]).is_empty());
        assert!(
            !fixture.targets[0].join(STAGING_FOLDER).exists(),
            "nothing staged"
        );
    }
    let (result, _) = run(fixture.job()).await;
    result.expect("room enough with nothing kept free");
}

/// Flips a byte in the middle of the stored object.
fn corrupt(path: &Path) -> Vec<u8> {
    let original = fs::read(path).expect("read object");
    let mut bytes = original.clone();
    let middle = 8 + (bytes.len() - 8) / 2;
    bytes[middle] ^= 0x55;
    fs::write(path, &bytes).expect("write object");
    original
}

#[tokio::test]
async fn a_corrupt_object_fails_naming_the_file_and_a_retry_reuses_staged_files() {
    let fixture = Fixture::new(1);
    let data = &fixture.sources[0];
    for index in 0..5u8 {
        write_file(
            &data.join(format!("f{index}")),
            &random_bytes(20_000 + usize::from(index), index),
            0o644,
            at(1_700_000_000, 0),
        );
    }
    let entries = fixture.back_up().await;
    // The last file in manifest order: with one download at a time, every other one is staged
    // before it fails.
    let broken = entries.last().expect("entries").clone();
    let object = fixture.object_file(&broken.hash);
    let original = corrupt(&object);

    let mut job = fixture.job();
    job.concurrency = 1;
    let (result, _) = run(job).await;
    let error = result.expect_err("corrupt object");
    assert!(
        matches!(&error, RestoreFailure::Download { .. }),
        "{error:?}"
    );
    let target = fixture.targets[0].join("f4");
    let message = error.to_string();
    assert!(message.contains(&target.display().to_string()), "{message}");
    assert!(message.contains(&broken.hash.to_hex()), "{message}");
    assert!(
        files_below(&fixture.targets[0])
            .iter()
            .all(|path| path.starts_with(STAGING_FOLDER)),
        "nothing placed"
    );
    let staging = staging_folder(&fixture.targets[0], fixture.backup_id);
    assert_eq!(
        fs::read_dir(&staging)
            .expect("staging folder")
            .filter(|entry| !entry
                .as_ref()
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .contains('.'))
            .count(),
        4,
        "the verified files stay staged"
    );

    // A dry run now reports the staged files as skipped, and changes nothing.
    let before = fixture.target_state();
    let mut dry = fixture.job();
    dry.dry_run = true;
    let (result, _) = run(dry).await;
    let summary = result.expect("dry run");
    let planned = progress(&summary);
    assert_eq!(planned.files_total, 5);
    assert_eq!(planned.files_skipped, 4);
    assert_eq!(planned.files_placed, 0);
    assert_eq!(planned.bytes_downloaded, 0);
    assert_eq!(fixture.target_state(), before, "a dry run touches nothing");

    // Repaired, a new attempt fetches only what was missing.
    fs::write(&object, &original).expect("repair object");
    let (result, _) = run(fixture.job()).await;
    let summary = result.expect("retry succeeds");
    let progress = progress(&summary);
    assert_eq!(progress.files_skipped, 4);
    assert_eq!(
        progress.bytes_skipped,
        entries[..4].iter().map(|entry| entry.size).sum::<u64>()
    );
    assert_eq!(progress.bytes_downloaded, original.len() as u64);
    assert_eq!(progress.files_placed, 5);
    assert_restored(&fixture, &entries);
}

#[tokio::test]
async fn a_missing_object_fails_naming_the_file() {
    let fixture = Fixture::new(1);
    make_source_tree(&fixture);
    let entries = fixture.back_up().await;
    let gone = &entries[0];
    fs::remove_file(fixture.object_file(&gone.hash)).expect("remove object");
    let (result, _) = run(fixture.job()).await;
    let error = result.expect_err("missing object");
    let RestoreFailure::Download { file, source, .. } = &error else {
        panic!("unexpected {error:?}");
    };
    assert!(
        matches!(source.as_ref(), coffer_format::DownloadError::Storage(storage) if storage.is_not_found()),
        "{source}"
    );
    assert_eq!(file, &fixture.targets[0].join("empty"));
    assert!(
        files_below(&fixture.targets[0])
            .iter()
            .all(|path| path.starts_with(STAGING_FOLDER))
    );
}

/// Writes a manifest of `paths` (each given the content of one real object) with `data_paths`
/// as the backup's, runs a restore, and checks it is refused naming `named` with nothing placed
/// or downloaded.
async fn assert_crafted_refused(
    fixture: &Fixture,
    data_paths: Vec<String>,
    paths: &[&str],
    named: &str,
) {
    let content = fixture.root.path().join("content");
    fs::write(&content, b"payload").expect("write content");
    let mut entries = Vec::new();
    for path in paths {
        entries.push(fixture.store(&content, (*path).to_string()).await);
    }
    fixture.write_manifest(data_paths, entries).await;
    let before = fixture.target_state();
    let (result, updates) = run(fixture.job()).await;
    let error = result.expect_err("refused");
    assert!(matches!(error, RestoreFailure::Refused(_)), "{error:?}");
    assert!(
        error.to_string().contains(named),
        "{error} names the manifest path {named}"
    );
    assert_eq!(fixture.target_state(), before, "nothing placed");
    assert!(
        updates.iter().all(|update| update.bytes_downloaded == 0),
        "nothing downloaded"
    );
    for target in &fixture.targets {
        assert!(!target.join(STAGING_FOLDER).exists(), "no staging folder");
    }
}

#[tokio::test]
async fn crafted_manifests_that_leave_the_data_paths_are_refused() {
    let fixture = Fixture::new(1);
    let source = fixture.sources[0].display().to_string();
    let outside = fixture.outside();

    // `..` below a data path.
    let escape = format!("{source}/ks/../../outside/escaped");
    assert_crafted_refused(&fixture, vec![source.clone()], &[&escape], &escape).await;
    assert!(!outside.join("escaped").exists());

    // An absolute path outside the data paths (sorted before a legitimate one).
    let foreign = format!("{}/passwd", outside.display());
    let fine = format!("{source}/fine");
    assert_crafted_refused(&fixture, vec![source.clone()], &[&foreign, &fine], &foreign).await;

    // `.` and empty parts, and the agent's own folders.
    let dotted = format!("{source}/./x");
    assert_crafted_refused(&fixture, vec![source.clone()], &[&dotted], &dotted).await;
    let staged = format!("{source}/{STAGING_FOLDER}/x");
    assert_crafted_refused(&fixture, vec![source.clone()], &[&staged], &staged).await;

    // A data path in the header that is itself crafted.
    let crafted_root = format!("{source}/..");
    let inside = format!("{source}/../x");
    assert_crafted_refused(
        &fixture,
        vec![crafted_root.clone()],
        &[&inside],
        &crafted_root,
    )
    .await;
}

#[tokio::test]
async fn symbolic_links_on_the_way_to_a_target_are_refused() {
    let fixture = Fixture::new(1);
    let source = fixture.sources[0].display().to_string();
    let outside = fixture.outside();
    let target = &fixture.targets[0];

    // A linked folder: the file would land outside.
    fs::create_dir_all(target.join("ks")).expect("mkdir");
    std::os::unix::fs::symlink(&outside, target.join("ks/t")).expect("symlink");
    let through = format!("{source}/ks/t/md-1-big-Data.db");
    assert_crafted_refused(&fixture, vec![source.clone()], &[&through], &through).await;
    assert!(!outside.join("md-1-big-Data.db").exists());
    fs::remove_file(target.join("ks/t")).expect("remove link");

    // A target file that is a link, even with overwrite.
    let victim = outside.join("victim");
    fs::write(&victim, b"keep me").expect("write victim");
    std::os::unix::fs::symlink(&victim, target.join("linked")).expect("symlink");
    let linked = format!("{source}/linked");
    assert_crafted_refused(&fixture, vec![source.clone()], &[&linked], &linked).await;
    let mut job = fixture.job();
    job.overwrite = true;
    let (result, _) = run(job).await;
    assert!(matches!(result, Err(RestoreFailure::Refused(_))));
    assert_eq!(fs::read(&victim).expect("read victim"), b"keep me");
}

#[tokio::test]
async fn existing_files_are_refused_without_overwrite_and_replaced_with_it() {
    let fixture = Fixture::new(1);
    make_source_tree(&fixture);
    let entries = fixture.back_up().await;
    let existing = fixture.targets[0].join("ks/t1/md-1-big-Index.db");
    write_file(&existing, b"newer data", 0o600, at(1_800_000_000, 0));

    let (result, _) = run(fixture.job()).await;
    let error = result.expect_err("refused");
    assert!(matches!(error, RestoreFailure::Refused(_)), "{error}");
    assert!(
        error.to_string().contains(&existing.display().to_string()),
        "{error}"
    );
    assert_eq!(fs::read(&existing).expect("read"), b"newer data");
    assert_eq!(files_below(&fixture.targets[0]).len(), 1, "nothing placed");

    // A dry run with overwrite says what would be replaced.
    let mut dry = fixture.job();
    dry.dry_run = true;
    dry.overwrite = true;
    let (result, _) = run(dry).await;
    let summary = result.expect("dry run");
    assert_eq!(summary.files_overwritten, 1);
    assert_eq!(summary.existing_paths, vec![existing.display().to_string()]);
    assert_eq!(fs::read(&existing).expect("read"), b"newer data");

    let mut job = fixture.job();
    job.overwrite = true;
    let (result, _) = run(job).await;
    let summary = result.expect("overwrite");
    assert_eq!(summary.files_overwritten, 1);
    assert_eq!(summary.existing_paths, vec![existing.display().to_string()]);
    assert_restored(&fixture, &entries);

    // Restoring again without overwrite is refused, even though every file is the backup's.
    let (result, _) = run(fixture.job()).await;
    let error = result.expect_err("refused");
    assert!(error.to_string().starts_with("5 of the files"), "{error}");

    // With overwrite, it finds every file in place (as after an agent restart while placing):
    // nothing to fetch, nothing replaced; a mode changed since is set back.
    fs::set_permissions(&existing, fs::Permissions::from_mode(0o666)).expect("chmod");
    let mut job = fixture.job();
    job.overwrite = true;
    let (result, _) = run(job).await;
    let summary = result.expect("files already in place");
    let progress = progress(&summary);
    assert_eq!(progress.files_skipped, progress.files_total);
    assert_eq!(progress.bytes_downloaded, 0);
    assert_eq!(summary.files_overwritten, 0);
    assert_restored(&fixture, &entries);
}

#[tokio::test]
async fn as_root_placed_files_and_new_folders_get_the_data_paths_owner() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root to give files away");
        return;
    }
    let fixture = Fixture::new(1);
    make_source_tree(&fixture);
    let entries = fixture.back_up().await;
    std::os::unix::fs::chown(&fixture.targets[0], Some(4321), Some(4322)).expect("chown");
    let (result, _) = run(fixture.job()).await;
    result.expect("restore");
    assert_restored(&fixture, &entries);
    for path in ["ks", "ks/t2/deeper", "ks/t2/deeper/copy-b", "empty"] {
        let metadata = fs::symlink_metadata(fixture.targets[0].join(path)).expect("metadata");
        assert_eq!((metadata.uid(), metadata.gid()), (4321, 4322), "{path}");
    }
}

#[tokio::test]
async fn a_dry_run_touches_nothing() {
    let fixture = Fixture::new(2);
    make_source_tree(&fixture);
    let entries = fixture.back_up().await;
    let mut job = fixture.job();
    job.dry_run = true;
    let (result, _) = run(job).await;
    let summary = result.expect("dry run");
    let progress = progress(&summary);
    assert_eq!(progress.files_total, entries.len() as u64);
    assert_eq!(
        progress.bytes_total,
        entries.iter().map(|entry| entry.size).sum::<u64>()
    );
    assert_eq!(progress.files_skipped, 0);
    assert_eq!(progress.files_placed, 0);
    assert_eq!(progress.bytes_downloaded, 0);
    assert!(fixture.target_state().is_empty(), "nothing created");
}

#[tokio::test]
async fn the_hook_runs_with_its_environment_when_allowed() {
    let fixture = Fixture::new(2);
    make_source_tree(&fixture);
    let entries = fixture.back_up().await;
    let report = fixture.root.path().join("hook-report");
    let mut job = fixture.job();
    let node_id = job.node_id;
    job.hook = Some(RestoreHook {
        argv: vec![
            "sh".into(),
            "-c".into(),
            "test -f ks/t2/copy-a && { pwd; echo \"$COFFER_RUN_ID $COFFER_BACKUP_ID $COFFER_NODE_ID $COFFER_SOURCE_NODE_ID\"; } > \"$1\"".into(),
            "hook".into(),
            report.display().to_string(),
        ],
        timeout: Duration::from_secs(30),
    });
    let (result, updates) = run(job).await;
    let summary = result.expect("restore with hook");
    assert_eq!(progress(&summary).phase(), proto::RestorePhase::RunningHook);
    assert!(
        updates
            .iter()
            .any(|update| update.phase() == proto::RestorePhase::Planning)
    );
    assert_restored(&fixture, &entries);
    let report = fs::read_to_string(&report).expect("the hook ran");
    assert_eq!(
        report,
        format!(
            "{}\nrun-1 {} {node_id} {}\n",
            fixture.targets[0].display(),
            fixture.backup_id,
            fixture.source_node_id
        )
    );
}

#[tokio::test]
async fn a_failing_or_slow_hook_fails_the_node_with_the_files_in_place() {
    let fixture = Fixture::new(1);
    make_source_tree(&fixture);
    let entries = fixture.back_up().await;
    let mut job = fixture.job();
    job.hook = Some(RestoreHook {
        argv: vec![
            "sh".into(),
            "-c".into(),
            "echo refresh failed >&2; exit 3".into(),
        ],
        timeout: Duration::from_secs(30),
    });
    let (result, _) = run(job).await;
    let error = result.expect_err("hook fails");
    let RestoreFailure::Hook(HookFailure::Failed { status, stderr }) = &error else {
        panic!("unexpected {error:?}");
    };
    assert_eq!(status.code(), Some(3));
    assert_eq!(stderr, "refresh failed");
    assert!(
        error.to_string().contains("the files are in place"),
        "{error}"
    );
    assert_restored(&fixture, &entries);

    // Again (over the files in place), with a hook that outlives its timeout.
    let mut job = fixture.job();
    job.overwrite = true;
    job.hook = Some(RestoreHook {
        argv: vec!["sh".into(), "-c".into(), "sleep 60 & sleep 60".into()],
        timeout: Duration::from_secs(1),
    });
    let started = Instant::now();
    let (result, _) = run(job).await;
    assert!(
        matches!(
            result,
            Err(RestoreFailure::Hook(HookFailure::TimedOut { .. }))
        ),
        "{result:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn a_cancelled_restore_stops_promptly_and_places_nothing() {
    let fixture = Fixture::new(1);
    write_file(
        &fixture.sources[0].join("big"),
        &random_bytes(2 * 1024 * 1024, 9),
        0o644,
        at(1_700_000_000, 0),
    );
    fixture.back_up().await;
    let mut job = fixture.job();
    job.limiter = Some(coffer_format::RateLimiter::new(256 * 1024));
    let cancel = CancellationToken::new();
    let started = Instant::now();
    let canceller = {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            cancel.cancel();
        })
    };
    let (result, _) = run_with(job, cancel).await;
    canceller.await.expect("canceller");
    assert!(
        matches!(result, Err(RestoreFailure::Canceled)),
        "{result:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(!fixture.targets[0].join("big").exists());
}

// ---------------------------------------------------------------------------------------------
// The RPC

mod rpc {
    use coffer_agent::Agent;
    use coffer_agent::config::{AgentConfig, SnapshotConfig};
    use coffer_proto::agent::v1::agent_service_client::AgentServiceClient;
    use tokio_stream::StreamExt;

    use super::*;

    async fn serve(
        fixture: &Fixture,
        hooks: &[(&str, &[&str])],
    ) -> AgentServiceClient<tonic::transport::Channel> {
        let config = AgentConfig {
            restore_hooks: hooks
                .iter()
                .map(|(name, argv)| {
                    (
                        name.to_string(),
                        argv.iter().map(|arg| arg.to_string()).collect(),
                    )
                })
                .collect(),
            ..common::agent_config(
                fixture.targets.clone(),
                fixture.root.path().join("agent-state"),
                SnapshotConfig::Dir {
                    pre_hook: None,
                    post_hook: None,
                },
            )
        };
        let agent = Agent::open(config).await.expect("open agent");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        tokio::spawn(coffer_agent::run(listener, agent, std::future::pending()));
        AgentServiceClient::connect(format!("http://{address}"))
            .await
            .expect("connect")
    }

    fn request(fixture: &Fixture) -> proto::RestoreNodeRequest {
        proto::RestoreNodeRequest {
            run_id: "run-rpc".into(),
            location: Some(proto::StorageLocation {
                location_id: "loc".into(),
                name: "test-location".into(),
                scheme: "fs".into(),
                options: [("root".to_string(), fixture.location().display().to_string())].into(),
                secrets: Default::default(),
            }),
            source_cluster_id: fixture.cluster_id.to_string(),
            backup_id: fixture.backup_id.to_string(),
            source_node_id: fixture.source_node_id.to_string(),
            manifest_path: fixture.manifest_path(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn restore_node_streams_progress_then_the_summary() {
        let fixture = Fixture::new(2);
        make_source_tree(&fixture);
        let entries = fixture.back_up().await;
        let mut client = serve(&fixture, &[("ok", &["true"])]).await;
        let mut stream = client
            .restore_node(request(&fixture))
            .await
            .expect("restore starts")
            .into_inner();
        let mut messages = Vec::new();
        while let Some(message) = stream.next().await {
            messages.push(message.expect("no error").event.expect("event"));
        }
        let Some(proto::restore_node_response::Event::Done(summary)) = messages.pop() else {
            panic!("the last message is the summary");
        };
        assert!(
            messages
                .iter()
                .all(|message| matches!(message, proto::restore_node_response::Event::Progress(_)))
        );
        assert_eq!(progress(&summary).files_placed, entries.len() as u64);
        assert_restored(&fixture, &entries);
    }

    #[tokio::test]
    async fn restore_node_maps_failures_to_statuses() {
        let fixture = Fixture::new(1);
        make_source_tree(&fixture);
        let entries = fixture.back_up().await;
        let mut client = serve(&fixture, &[("ok", &["true"])]).await;

        // A hook the agent's configuration does not name, or a command instead of a name:
        // refused at once, nothing restored.
        let mut with_hook = request(&fixture);
        with_hook.hook_command = vec!["rm".into()];
        let status = client
            .restore_node(with_hook)
            .await
            .expect_err("unknown hook");
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert!(
            status.message().contains("no restore hook named \"rm\"")
                && status.message().contains("ok"),
            "{status:?}"
        );
        let mut command = request(&fixture);
        command.hook_command = vec!["sh".into(), "-c".into(), "touch /tmp/pwned".into()];
        let status = client
            .restore_node(command)
            .await
            .expect_err("a command from the wire");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(fixture.target_state().is_empty(), "nothing restored");

        // A bad id.
        let mut bad = request(&fixture);
        bad.backup_id = "nope".into();
        let status = client.restore_node(bad).await.expect_err("bad id");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);

        // A corrupt object: DATA_LOSS naming the file.
        let broken = entries
            .iter()
            .find(|entry| entry.path.ends_with("md-1-big-Index.db"))
            .expect("entry");
        corrupt(&fixture.object_file(&broken.hash));
        let mut stream = client
            .restore_node(request(&fixture))
            .await
            .expect("restore starts")
            .into_inner();
        let mut status = None;
        while let Some(message) = stream.next().await {
            if let Err(error) = message {
                status = Some(error);
            }
        }
        let status = status.expect("the stream ends with an error");
        assert_eq!(status.code(), tonic::Code::DataLoss, "{status:?}");
        assert!(
            status.message().contains("ks/t1/md-1-big-Index.db"),
            "{status:?}"
        );

        // An existing file: FAILED_PRECONDITION naming it.
        fs::write(fixture.targets[0].join("empty"), b"x").expect("write");
        let mut stream = client
            .restore_node(request(&fixture))
            .await
            .expect("restore starts")
            .into_inner();
        let mut status = None;
        while let Some(message) = stream.next().await {
            if let Err(error) = message {
                status = Some(error);
            }
        }
        let status = status.expect("the stream ends with an error");
        assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
        assert!(status.message().contains("empty"), "{status:?}");
    }
}

#[tokio::test]
async fn many_files_in_new_folders_are_placed_by_several_threads() {
    let fixture = Fixture::new(1);
    let first = &fixture.sources[0];
    // 400 files in 40 folders, placed by several threads that create the same new folders
    // side by side; every tenth file shares its content with another in a different folder.
    for index in 0..400u32 {
        let content = if index % 10 == 0 {
            b"common to many".to_vec()
        } else {
            format!("file {index}").into_bytes()
        };
        write_file(
            &first.join(format!("ks/t{}/deep/md-{index}-Data.db", index % 40)),
            &content,
            0o600 + (index % 2) * 0o40,
            at(1_700_000_000 + u64::from(index), index),
        );
    }
    let entries = fixture.back_up().await;
    assert_eq!(entries.len(), 400);
    let (result, _) = run(fixture.job()).await;
    let summary = result.expect("restore succeeds");
    assert_restored(&fixture, &entries);
    assert_eq!(progress(&summary).files_placed, 400);
}
