//! Restoring one backup node's files onto this node: the agent's part of a restore.
//!
//! A restore runs in phases, each finished before the next starts:
//!
//! 1. **Planning** streams the source node's manifest, keeps the files the patterns select
//!    (matched on the source path) and maps each onto this node: a file under the backup's data
//!    path `i` goes under this node's data path `i`, with the same relative path. Before anything
//!    is downloaded or written it refuses: a file outside the backup's data paths; a relative
//!    path with `..`, `.`, an empty part, or a first part naming the agent's own folders
//!    (`.coffer-restore`, `.coffer-snapshots`); a target below a symbolic link or a non-folder,
//!    or that is itself a symbolic link or not a regular file; a backup data path this node does
//!    not have; a path listed both as a file and as a folder; and, without `overwrite`, target
//!    files that exist (whatever their content). With `overwrite`, an existing file with the
//!    size, modification time and content (BLAKE3, re-read) of the backup's file is already in
//!    place: it is neither downloaded nor counted as replaced, so a restore interrupted while
//!    placing (an agent restart) finishes with `overwrite` without fetching anything again.
//! 2. **Downloading** fetches each distinct content once, `concurrency` at a time, into
//!    `<data path>/.coffer-restore/<backup id>/<hash>` on the target's own filesystem:
//!    [`download_object`] writes `<hash>.part` and checks its BLAKE3 hash and size; verified
//!    parts are committed in batches (about every second or 64 MiB): one `syncfs` makes the
//!    batch durable, and only then is each part renamed to `<hash>`. A `<hash>` file of the
//!    expected size is therefore verified, durable content, and a later attempt (after a
//!    failure, a cancel or an agent restart, even in another run) does not fetch it again; what
//!    was verified before a failure or a cancel is still committed. Content needed in several
//!    data paths is downloaded into one and copied into the others.
//! 3. **Placing**, only once every selected file is verified: each staged file gets its mode,
//!    modification time (and, for an agent running as root, the owner of the data path) and is
//!    renamed into place; when several files share content, all but the last get a copy. Folders
//!    are created and opened one component at a time without following symbolic links
//!    (`openat` with `O_NOFOLLOW`), so a link planted after planning cannot redirect a file
//!    either. The filesystem of each data path is synced once, then the staging folder of the
//!    backup is removed. Placing is not interrupted by a cancel: it is local and short, and a
//!    half-placed node is worse than a finished one.
//! 4. **Running the hook**, when one is given and the agent's configuration allows hooks: argv
//!    run directly (no shell) in the first data path, killed (with its process group) after its
//!    timeout. Its failure fails the node; the files stay placed.
//!
//! A dry run stops after planning: it reports what would be fetched (staged files as skipped)
//! and replaced, and creates nothing.
//!
//! Invariants: nothing is written outside the node's data paths; nothing is placed unless every
//! selected file was verified; staged content is only ever named `<hash>` once verified.
//!
//! Memory: the plan holds one small record per selected file (its path relative to its data
//! path, size, mode, time and hash: about 100 bytes plus the path, so ~150 MiB for a million
//! files) and one per distinct content. Streaming the manifest twice (plan, then place) would
//! bound it, at the cost of reading the manifest twice; not needed yet.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::{self, File, FileTimes, Permissions};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use coffer_format::manifest::{ManifestError, NodeManifestReader};
use coffer_format::object::{DownloadError, RateLimiter, download_object_sized, hash_file};
use coffer_format::{ClusterLayout, ContentHash};
use coffer_proto::agent::v1 as proto;
use futures::{StreamExt, TryStreamExt};
use globset::GlobSet;
use opendal::Operator;
use rustix::fs::{Gid, Mode, OFlags, Uid};
use rustix::io::Errno;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::snapshot::SNAPSHOTS_FOLDER;
use crate::snapshot::shell::{STDERR_TAIL_LINES, finish_reading, read_lines};

/// Files downloaded at once when the request does not say.
pub const DEFAULT_CONCURRENCY: usize = 8;
/// How long a hook may run when the request does not say.
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(600);
/// Name of the folder, at the root of each data path, where restores stage files.
pub const STAGING_FOLDER: &str = ".coffer-restore";
/// Most existing target paths reported in a summary.
pub const MAX_EXISTING_PATHS: usize = 20;
/// How often progress is reported.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(200);
/// Existing files named in the error that refuses them.
const EXISTING_NAMED: usize = 5;

/// Environment variables the hook receives.
pub const HOOK_ENV_RUN_ID: &str = "COFFER_RUN_ID";
/// The backup restored.
pub const HOOK_ENV_BACKUP_ID: &str = "COFFER_BACKUP_ID";
/// This node.
pub const HOOK_ENV_NODE_ID: &str = "COFFER_NODE_ID";
/// The backup node restored onto this node.
pub const HOOK_ENV_SOURCE_NODE_ID: &str = "COFFER_SOURCE_NODE_ID";

/// A command to run once the files are in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreHook {
    /// Program and arguments, run without a shell; never empty.
    pub argv: Vec<String>,
    /// How long it may run before it is killed.
    pub timeout: Duration,
}

/// Everything a node's restore needs.
#[derive(Debug)]
pub struct RestoreJob {
    /// The run restoring, for the hook's environment and logs.
    pub run_id: String,
    /// The location holding the backup.
    pub operator: Operator,
    /// Location name, for messages.
    pub location_name: String,
    /// Cluster the backup was taken from: its objects live under its folder.
    pub source_cluster_id: Uuid,
    /// The backup.
    pub backup_id: Uuid,
    /// The backup node restored onto this node.
    pub source_node_id: Uuid,
    /// Path of that node's manifest in the location.
    pub manifest_path: String,
    /// This node.
    pub node_id: Uuid,
    /// This node's data paths, in configuration order.
    pub data_paths: Vec<PathBuf>,
    /// Source paths to restore (empty: all).
    pub include: GlobSet,
    /// Source paths to leave out.
    pub exclude: GlobSet,
    /// Replace existing target files.
    pub overwrite: bool,
    /// Plan only.
    pub dry_run: bool,
    /// Shared download rate limit.
    pub limiter: Option<RateLimiter>,
    /// Objects downloaded at once.
    pub concurrency: usize,
    /// Command to run once the files are in place.
    pub hook: Option<RestoreHook>,
    /// Whether the agent's configuration allows hooks.
    pub allow_hooks: bool,
}

impl RestoreJob {
    /// Refuses a hook the agent's configuration does not allow (`restore-allow-hooks`).
    ///
    /// Fails with [`RestoreFailure::HooksNotAllowed`].
    pub fn check_hook_allowed(&self) -> Result<(), RestoreFailure> {
        if self.hook.is_some() && !self.allow_hooks {
            return Err(RestoreFailure::HooksNotAllowed);
        }
        Ok(())
    }
}

/// Why a restore failed. The message names the file, the manifest path or the folder concerned.
#[derive(Debug, thiserror::Error)]
pub enum RestoreFailure {
    /// The backup cannot be restored here as asked: a path would leave the data paths, a target
    /// exists, the node lacks a data path, the manifest is not the one asked for. Nothing was
    /// downloaded or placed.
    #[error("{0}")]
    Refused(String),
    /// The request carries a hook and the agent does not allow them. Nothing was done.
    #[error(
        "this agent does not run restore hooks sent by the server: start it with \
         --restore-allow-hooks (COFFER_AGENT_RESTORE_ALLOW_HOOKS=true, or restore-allow-hooks = \
         true in its configuration file), or restore without a hook"
    )]
    HooksNotAllowed,
    /// The node manifest could not be read.
    #[error("read node manifest: {0}")]
    Manifest(#[source] ManifestError),
    /// A file's content could not be downloaded, or is not what its hash promises. Nothing of
    /// the node was placed.
    #[error("restore {} (object {hash}): {source}", file.display())]
    Download {
        /// Target path of (the first) file with this content.
        file: PathBuf,
        /// The content's hash.
        hash: ContentHash,
        /// What went wrong.
        #[source]
        source: Box<DownloadError>,
    },
    /// The object holds the content its hash names, but not the size the manifest gives.
    #[error(
        "restore {} (object {hash}): the manifest says {expected} bytes, the object holds {actual}",
        file.display()
    )]
    SizeMismatch {
        /// Target path of the file.
        file: PathBuf,
        /// The content's hash.
        hash: ContentHash,
        /// Size in the manifest.
        expected: u64,
        /// Size of the content.
        actual: u64,
    },
    /// A local file or folder could not be read or written.
    #[error("{action} {}: {source}", path.display())]
    Local {
        /// What was being done.
        action: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The post-restore hook failed; the files are in place.
    #[error(transparent)]
    Hook(#[from] HookFailure),
    /// The restore was cancelled; verified staged files stay for the next attempt.
    #[error("canceled")]
    Canceled,
}

impl RestoreFailure {
    fn local(action: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| Self::Local {
            action,
            path,
            source,
        }
    }
}

/// How the post-restore hook failed. The restored files are in place in every case.
#[derive(Debug, thiserror::Error)]
pub enum HookFailure {
    /// The program could not be started.
    #[error("start post-restore hook {program:?}: {source}; the files are in place")]
    NotStarted {
        /// The program.
        program: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The hook exited unsuccessfully.
    #[error("post-restore hook failed ({status}); the files are in place: {stderr}")]
    Failed {
        /// Its exit status.
        status: ExitStatus,
        /// The last lines of its standard error.
        stderr: String,
    },
    /// The hook ran longer than allowed and was killed.
    #[error(
        "post-restore hook still ran after {} s and was killed; the files are in place",
        timeout.as_secs()
    )]
    TimedOut {
        /// The limit.
        timeout: Duration,
    },
}

#[derive(Debug, Default)]
struct Counters {
    files_total: AtomicU64,
    files_done: AtomicU64,
    files_skipped: AtomicU64,
    bytes_total: AtomicU64,
    bytes_done: AtomicU64,
    bytes_skipped: AtomicU64,
    bytes_downloaded: AtomicU64,
    files_placed: AtomicU64,
}

impl Counters {
    fn snapshot(&self, phase: proto::RestorePhase) -> proto::RestoreProgress {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        proto::RestoreProgress {
            phase: phase.into(),
            files_total: get(&self.files_total),
            files_done: get(&self.files_done),
            files_skipped: get(&self.files_skipped),
            bytes_total: get(&self.bytes_total),
            bytes_done: get(&self.bytes_done),
            bytes_skipped: get(&self.bytes_skipped),
            bytes_downloaded: get(&self.bytes_downloaded),
            files_placed: get(&self.files_placed),
        }
    }

    /// `files` files of `size` bytes each are verified (in staging or in place).
    fn done(&self, files: u64, size: u64, skipped: bool) {
        let bytes = files.saturating_mul(size);
        self.files_done.fetch_add(files, Ordering::Relaxed);
        self.bytes_done.fetch_add(bytes, Ordering::Relaxed);
        if skipped {
            self.files_skipped.fetch_add(files, Ordering::Relaxed);
            self.bytes_skipped.fetch_add(bytes, Ordering::Relaxed);
        }
    }
}

/// What is at a file's target path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// Nothing.
    Absent,
    /// A regular file: replaced with `overwrite`, refused without it.
    Existing,
    /// With `overwrite`, the backup's file itself (same size, time and content): nothing to
    /// fetch, only its mode is set.
    InPlace,
}

/// One selected file of the manifest.
#[derive(Debug)]
struct PlannedFile {
    /// Index of its data path, the backup's and this node's.
    data_path: usize,
    /// Its path below the data path: normal components joined by `/`.
    relative: Box<str>,
    size: u64,
    mode: u32,
    mtime_ns: i64,
    hash: ContentHash,
    target: Target,
}

/// Where one content is needed: in which data path, by how many files, and whether a verified
/// copy is staged there already.
#[derive(Debug)]
struct Need {
    data_path: usize,
    files: u64,
    staged: bool,
}

/// One distinct content the restore needs (files already in place need none).
#[derive(Debug)]
struct ObjectPlan {
    size: u64,
    /// Index of the first file with this content, to name it in errors.
    first_file: usize,
    needs: Vec<Need>,
}

/// The result of planning.
#[derive(Debug)]
struct Plan {
    files: Vec<PlannedFile>,
    objects: HashMap<ContentHash, ObjectPlan>,
    existing_files: u64,
    existing_paths: Vec<String>,
}

/// Shared state of the restore's tasks.
#[derive(Debug)]
struct Shared {
    job: RestoreJob,
    layout: ClusterLayout,
    counters: Counters,
    phase: AtomicI32,
}

impl Shared {
    fn phase(&self) -> proto::RestorePhase {
        proto::RestorePhase::try_from(self.phase.load(Ordering::Relaxed))
            .unwrap_or(proto::RestorePhase::Unspecified)
    }

    fn set_phase(&self, phase: proto::RestorePhase) {
        self.phase.store(phase.into(), Ordering::Relaxed);
    }

    fn target(&self, file: &PlannedFile) -> PathBuf {
        self.job.data_paths[file.data_path].join(&*file.relative)
    }

    fn staging_folder(&self, data_path: usize) -> PathBuf {
        staging_folder(&self.job.data_paths[data_path], self.job.backup_id)
    }
}

/// The folder where a restore of `backup_id` stages files for `data_path`.
pub fn staging_folder(data_path: &Path, backup_id: Uuid) -> PathBuf {
    data_path.join(STAGING_FOLDER).join(backup_id.to_string())
}

/// The staging folders left by restores that did not finish (failed or cancelled), for a log
/// line at start-up.
pub fn staged_backups(data_paths: &[PathBuf]) -> Vec<PathBuf> {
    let mut folders = Vec::new();
    for data_path in data_paths {
        let staging = data_path.join(STAGING_FOLDER);
        if !fs::symlink_metadata(&staging).is_ok_and(|metadata| metadata.is_dir()) {
            continue;
        }
        if let Ok(entries) = fs::read_dir(&staging) {
            folders.extend(entries.filter_map(|entry| entry.ok().map(|entry| entry.path())));
        }
    }
    folders.sort();
    folders
}

/// Restores the job's files onto this node, sending progress on `progress` about every 200 ms.
///
/// Fails with [`RestoreFailure::HooksNotAllowed`] or [`RestoreFailure::Refused`] before
/// downloading anything; with [`RestoreFailure::Manifest`], [`RestoreFailure::Download`] or
/// [`RestoreFailure::SizeMismatch`] before placing anything; with [`RestoreFailure::Local`] when
/// the node's disk fails; with [`RestoreFailure::Hook`] after placing; with
/// [`RestoreFailure::Canceled`] when `cancel` fires (or `progress` is closed) before placing or
/// before the hook.
pub async fn run(
    job: RestoreJob,
    progress: mpsc::Sender<proto::RestoreProgress>,
    cancel: CancellationToken,
) -> Result<proto::RestoreSummary, RestoreFailure> {
    job.check_hook_allowed()?;
    let shared = Arc::new(Shared {
        layout: ClusterLayout::new(job.source_cluster_id),
        job,
        counters: Counters::default(),
        phase: AtomicI32::new(proto::RestorePhase::Planning.into()),
    });
    let stop_reporting = CancellationToken::new();
    let reporter = tokio::spawn(report_progress(
        shared.clone(),
        progress.clone(),
        cancel.clone(),
        stop_reporting.clone(),
    ));
    let outcome = restore(&shared, &cancel).await;
    stop_reporting.cancel();
    let _ = reporter.await;
    let (files_overwritten, existing_paths) = outcome?;
    let final_progress = shared.counters.snapshot(shared.phase());
    let _ = progress.send(final_progress).await;
    Ok(proto::RestoreSummary {
        progress: Some(final_progress),
        files_overwritten,
        existing_paths,
    })
}

async fn report_progress(
    shared: Arc<Shared>,
    progress: mpsc::Sender<proto::RestoreProgress>,
    cancel: CancellationToken,
    stop: CancellationToken,
) {
    loop {
        let update = shared.counters.snapshot(shared.phase());
        if progress.send(update).await.is_err() {
            // Nobody listens any more: the caller went away.
            cancel.cancel();
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(PROGRESS_INTERVAL) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// The phases; returns the files overwritten and the first existing paths.
async fn restore(
    shared: &Arc<Shared>,
    cancel: &CancellationToken,
) -> Result<(u64, Vec<String>), RestoreFailure> {
    let plan = plan(shared, cancel).await?;
    let existing = (plan.existing_files, plan.existing_paths.clone());
    if shared.job.dry_run {
        return Ok(existing);
    }
    let plan = Arc::new(plan);

    shared.set_phase(proto::RestorePhase::Downloading);
    {
        let shared = shared.clone();
        let plan = plan.clone();
        blocking(move || create_staging_folders(&shared, &plan)).await?;
    }
    download_all(shared, &plan, cancel).await?;
    if cancel.is_cancelled() {
        return Err(RestoreFailure::Canceled);
    }

    shared.set_phase(proto::RestorePhase::Placing);
    {
        let shared = shared.clone();
        let plan = plan.clone();
        blocking(move || place_all(&shared, &plan)).await?;
    }
    tracing::info!(
        backup_id = %shared.job.backup_id,
        files = plan.files.len(),
        overwritten = plan.existing_files,
        "restored files placed"
    );

    if let Some(hook) = &shared.job.hook {
        if cancel.is_cancelled() {
            return Err(RestoreFailure::Canceled);
        }
        shared.set_phase(proto::RestorePhase::RunningHook);
        run_hook(&shared.job, hook, cancel).await?;
    }
    Ok(existing)
}

/// Runs blocking file work off the async workers.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, RestoreFailure> + Send + 'static,
) -> Result<T, RestoreFailure> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| RestoreFailure::Local {
            action: "run file task",
            path: PathBuf::new(),
            source: io::Error::other(error),
        })?
}

// ---------------------------------------------------------------------------------------------
// Planning

async fn plan(shared: &Arc<Shared>, cancel: &CancellationToken) -> Result<Plan, RestoreFailure> {
    let job = &shared.job;
    let (source_prefixes, files) = read_selected(shared, cancel).await?;

    // What is on disk now: refuses links and non-folders; finds existing files.
    let (mut files, candidates) = {
        let data_paths = job.data_paths.clone();
        let cancel = cancel.clone();
        blocking(move || {
            let mut files = files;
            let candidates = inspect_targets(&data_paths, &source_prefixes, &mut files, &cancel)?;
            Ok((files, candidates))
        })
        .await?
    };
    if job.overwrite {
        let confirmed = tokio::select! {
            confirmed = find_in_place(shared, &files, candidates) => confirmed?,
            () = cancel.cancelled() => return Err(RestoreFailure::Canceled),
        };
        for index in confirmed {
            files[index].target = Target::InPlace;
        }
    }

    let mut existing_files = 0u64;
    let mut existing_paths = Vec::new();
    for file in files.iter().filter(|file| file.target == Target::Existing) {
        existing_files += 1;
        if existing_paths.len() < MAX_EXISTING_PATHS {
            existing_paths.push(shared.target(file).display().to_string());
        }
    }
    // A dry run reports what exists (in its summary) rather than failing on it: it is a plan.
    if existing_files > 0 && !job.overwrite && !job.dry_run {
        let named: Vec<&str> = existing_paths
            .iter()
            .take(EXISTING_NAMED)
            .map(String::as_str)
            .collect();
        let more = if existing_files > named.len() as u64 {
            format!(" and {} more", existing_files - named.len() as u64)
        } else {
            String::new()
        };
        return Err(RestoreFailure::Refused(format!(
            "{existing_files} of the files to restore exist on this node already: {}{more}; \
             restore with overwrite to replace them (those already identical to the \
             backup's are kept and not downloaded)",
            named.join(", ")
        )));
    }

    let mut objects: HashMap<ContentHash, ObjectPlan> = HashMap::new();
    for (index, file) in files.iter().enumerate() {
        if file.target == Target::InPlace {
            shared.counters.done(1, file.size, true);
            continue;
        }
        let object = objects.entry(file.hash).or_insert_with(|| ObjectPlan {
            size: file.size,
            first_file: index,
            needs: Vec::new(),
        });
        match object
            .needs
            .iter_mut()
            .find(|need| need.data_path == file.data_path)
        {
            Some(need) => need.files += 1,
            None => object.needs.push(Need {
                data_path: file.data_path,
                files: 1,
                staged: false,
            }),
        }
    }

    // Content a previous attempt verified is staged already.
    let objects = {
        let shared = shared.clone();
        blocking(move || {
            find_staged(&shared, &mut objects)?;
            Ok(objects)
        })
        .await?
    };
    for object in objects.values() {
        for need in object.needs.iter().filter(|need| need.staged) {
            shared.counters.done(need.files, object.size, true);
        }
    }
    Ok(Plan {
        files,
        objects,
        existing_files,
        existing_paths,
    })
}

/// Streams the manifest: checks it is the one asked for, keeps the selected files and maps each
/// onto this node (refusing what would leave the data paths). Returns the backup's data paths as
/// prefixes, and the files.
async fn read_selected(
    shared: &Shared,
    cancel: &CancellationToken,
) -> Result<(Vec<String>, Vec<PlannedFile>), RestoreFailure> {
    let job = &shared.job;
    let mut reader = NodeManifestReader::open(&job.operator, &job.manifest_path)
        .await
        .map_err(|error| RestoreFailure::Manifest(located(error, &job.location_name)))?;
    let header = reader.header().clone();
    if header.cluster_id != job.source_cluster_id
        || header.backup_id != job.backup_id
        || header.node_id != job.source_node_id
    {
        return Err(RestoreFailure::Refused(format!(
            "manifest {} belongs to cluster {}, backup {}, node {}, not to the restore's cluster \
             {}, backup {}, node {}",
            job.manifest_path,
            header.cluster_id,
            header.backup_id,
            header.node_id,
            job.source_cluster_id,
            job.backup_id,
            job.source_node_id
        )));
    }
    let source_prefixes = source_prefixes(&job.manifest_path, &header.data_paths)?;

    let mut files = Vec::new();
    let mut sizes: HashMap<ContentHash, (u64, usize)> = HashMap::new();
    loop {
        let entry = tokio::select! {
            entry = reader.next_entry(&job.operator) => entry
                .map_err(|error| RestoreFailure::Manifest(located(error, &job.location_name)))?,
            () = cancel.cancelled() => return Err(RestoreFailure::Canceled),
        };
        let Some(entry) = entry else {
            break;
        };
        if !(job.include.is_empty() || job.include.is_match(&entry.path))
            || job.exclude.is_match(&entry.path)
        {
            continue;
        }
        let (data_path, relative) = map_path(&entry.path, &source_prefixes, &job.data_paths)?;
        match sizes.get(&entry.hash) {
            Some(&(size, first)) if size != entry.size => {
                return Err(RestoreFailure::Refused(format!(
                    "the manifest gives {} and {} the same content {} but different sizes \
                     ({size} and {} bytes): it is corrupt",
                    source_path(&source_prefixes, &files[first]),
                    entry.path,
                    entry.hash,
                    entry.size
                )));
            }
            Some(_) => {}
            None => {
                sizes.insert(entry.hash, (entry.size, files.len()));
            }
        }
        shared.counters.files_total.fetch_add(1, Ordering::Relaxed);
        shared
            .counters
            .bytes_total
            .fetch_add(entry.size, Ordering::Relaxed);
        files.push(PlannedFile {
            data_path,
            relative: relative.into(),
            size: entry.size,
            mode: entry.mode,
            mtime_ns: entry.mtime_ns,
            hash: entry.hash,
            target: Target::Absent,
        });
    }
    drop(sizes);
    refuse_files_used_as_folders(&source_prefixes, &files)?;
    Ok((source_prefixes, files))
}

/// Of the existing files with the backup's size and time, those whose content is the backup's:
/// they are in place already.
async fn find_in_place(
    shared: &Shared,
    files: &[PlannedFile],
    candidates: Vec<usize>,
) -> Result<Vec<usize>, RestoreFailure> {
    futures::stream::iter(candidates)
        .map(|index| {
            let path = shared.target(&files[index]);
            let expected = (files[index].hash, files[index].size);
            async move {
                let (hash, size) = hash_file(&path, None)
                    .await
                    .map_err(RestoreFailure::local("read", &path))?;
                Ok::<_, RestoreFailure>(((hash, size) == expected).then_some(index))
            }
        })
        .buffer_unordered(shared.job.concurrency.max(1))
        .try_filter_map(|index| async move { Ok(index) })
        .try_collect()
        .await
}

fn located(error: ManifestError, location: &str) -> ManifestError {
    match error {
        ManifestError::Storage(error) => ManifestError::Storage(error.in_location(location)),
        other => other,
    }
}

/// Checks the backup's data paths (absolute, normal components, none inside another) and returns
/// them as prefixes ending with `/`.
fn source_prefixes(manifest: &str, data_paths: &[String]) -> Result<Vec<String>, RestoreFailure> {
    let refuse = |reason: String| {
        RestoreFailure::Refused(format!(
            "manifest {manifest} is not usable: its data paths {data_paths:?} {reason}"
        ))
    };
    let mut prefixes = Vec::with_capacity(data_paths.len());
    for path in data_paths {
        let trimmed = path.trim_end_matches('/');
        let normal =
            path.starts_with('/') && (trimmed.is_empty() || relative_is_normal(&trimmed[1..]));
        if !normal {
            return Err(refuse(format!(
                "include {path:?}, which is not an absolute path of normal components"
            )));
        }
        prefixes.push(format!("{trimmed}/"));
    }
    for (index, prefix) in prefixes.iter().enumerate() {
        if let Some(other) = prefixes[index + 1..]
            .iter()
            .find(|other| other.starts_with(prefix.as_str()) || prefix.starts_with(other.as_str()))
        {
            return Err(refuse(format!("overlap ({prefix} and {other})")));
        }
    }
    Ok(prefixes)
}

/// Whether `relative` is one or more normal components joined by single `/`.
fn relative_is_normal(relative: &str) -> bool {
    !relative.is_empty()
        && relative
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != ".." && !part.contains('\0'))
}

/// Maps a manifest path onto this node: the index of its data path and its relative path.
fn map_path<'a>(
    path: &'a str,
    source_prefixes: &[String],
    data_paths: &[PathBuf],
) -> Result<(usize, &'a str), RestoreFailure> {
    let Some((index, relative)) = source_prefixes
        .iter()
        .enumerate()
        .find_map(|(index, prefix)| path.strip_prefix(prefix.as_str()).map(|rest| (index, rest)))
    else {
        return Err(RestoreFailure::Refused(format!(
            "the manifest lists {path:?}, which is not below any of the backup's data paths \
             ({}): refusing to restore it",
            source_prefixes.join(", ")
        )));
    };
    if !relative_is_normal(relative) {
        return Err(RestoreFailure::Refused(format!(
            "the manifest lists {path:?}, whose path below its data path has `..`, `.` or empty \
             parts: refusing to restore it"
        )));
    }
    let first = relative.split('/').next().unwrap_or_default();
    if first == STAGING_FOLDER || first == SNAPSHOTS_FOLDER {
        return Err(RestoreFailure::Refused(format!(
            "the manifest lists {path:?}, inside the agent's own folder {first}: refusing to \
             restore it"
        )));
    }
    if index >= data_paths.len() {
        return Err(RestoreFailure::Refused(format!(
            "the manifest lists {path:?}, in the backup's data path #{} ({}), but this node has \
             {} data path(s): restore onto a node with at least {}, or leave those files out \
             with a pattern",
            index + 1,
            source_prefixes[index].trim_end_matches('/'),
            data_paths.len(),
            index + 1
        )));
    }
    Ok((index, relative))
}

fn source_path(source_prefixes: &[String], file: &PlannedFile) -> String {
    format!("{}{}", source_prefixes[file.data_path], file.relative)
}

/// Refuses a manifest that lists a path both as a file and as a folder of another file (`a` and
/// `a/b`): placing would fail halfway.
fn refuse_files_used_as_folders(
    source_prefixes: &[String],
    files: &[PlannedFile],
) -> Result<(), RestoreFailure> {
    let mut folders: HashSet<(usize, &str)> = HashSet::new();
    let mut last_parent: Option<(usize, &str)> = None;
    for file in files {
        let Some((parent, _)) = file.relative.rsplit_once('/') else {
            continue;
        };
        if last_parent == Some((file.data_path, parent)) {
            continue;
        }
        last_parent = Some((file.data_path, parent));
        for (slash, _) in parent.match_indices('/') {
            folders.insert((file.data_path, &parent[..slash]));
        }
        folders.insert((file.data_path, parent));
    }
    match files
        .iter()
        .find(|file| folders.contains(&(file.data_path, &*file.relative)))
    {
        Some(file) => Err(RestoreFailure::Refused(format!(
            "the manifest lists {} both as a file and as a folder of other files: it is corrupt",
            source_path(source_prefixes, file)
        ))),
        None => Ok(()),
    }
}

/// What is known of a folder below a data path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FolderState {
    Exists,
    Missing,
}

/// Looks at every target without following links: refuses a symbolic link or a non-folder on
/// the way, a target that is a link or not a regular file; marks existing files. Returns the
/// indexes of existing files of the backup's size and modification time (maybe in place).
fn inspect_targets(
    data_paths: &[PathBuf],
    source_prefixes: &[String],
    files: &mut [PlannedFile],
    cancel: &CancellationToken,
) -> Result<Vec<usize>, RestoreFailure> {
    let mut folders: HashMap<(usize, String), FolderState> = HashMap::new();
    // Entries are sorted, so files of one folder mostly follow each other: the folders of the
    // last file found existing need no second look.
    let mut last_parent: Option<(usize, String)> = None;
    let mut candidates = Vec::new();
    for (index, file) in files.iter_mut().enumerate() {
        if index % 1024 == 0 && cancel.is_cancelled() {
            return Err(RestoreFailure::Canceled);
        }
        let data_path = &data_paths[file.data_path];
        let refuse = |what: &Path, reason: &str| {
            RestoreFailure::Refused(format!(
                "the manifest's {} would be restored to {}, but {} {reason}: refusing to restore \
                 through it",
                source_path(source_prefixes, file),
                data_path.join(&*file.relative).display(),
                what.display()
            ))
        };
        let (parent, _) = file.relative.rsplit_once('/').unwrap_or(("", ""));
        let mut missing = false;
        let same_parent = matches!(&last_parent, Some((data_path, folder)) if *data_path == file.data_path && folder == parent);
        let ends = parent
            .match_indices('/')
            .map(|(slash, _)| slash)
            .chain((!parent.is_empty()).then_some(parent.len()));
        for end in ends.filter(|_| !same_parent) {
            let folder = &parent[..end];
            let key = (file.data_path, folder.to_string());
            let state = match folders.get(&key) {
                Some(state) => *state,
                None => {
                    let path = data_path.join(folder);
                    let state = match fs::symlink_metadata(&path) {
                        Ok(metadata) if metadata.file_type().is_symlink() => {
                            return Err(refuse(&path, "is a symbolic link"));
                        }
                        Ok(metadata) if metadata.is_dir() => FolderState::Exists,
                        Ok(_) => return Err(refuse(&path, "is not a folder")),
                        Err(error) if error.kind() == io::ErrorKind::NotFound => {
                            FolderState::Missing
                        }
                        Err(error) => {
                            return Err(RestoreFailure::local("inspect", path)(error));
                        }
                    };
                    folders.insert(key, state);
                    state
                }
            };
            if state == FolderState::Missing {
                missing = true;
                break;
            }
        }
        if missing {
            last_parent = None;
            continue;
        }
        last_parent = Some((file.data_path, parent.to_string()));
        let target = data_path.join(&*file.relative);
        match fs::symlink_metadata(&target) {
            Ok(metadata) if metadata.file_type().is_symlink() => {
                return Err(refuse(&target, "is a symbolic link"));
            }
            Ok(metadata) if metadata.is_file() => {
                file.target = Target::Existing;
                let mtime_ns = metadata
                    .mtime()
                    .saturating_mul(1_000_000_000)
                    .saturating_add(metadata.mtime_nsec());
                if metadata.len() == file.size && mtime_ns == file.mtime_ns {
                    candidates.push(index);
                }
            }
            Ok(_) => return Err(refuse(&target, "exists and is not a regular file")),
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(RestoreFailure::local("inspect", target)(error)),
        }
    }
    Ok(candidates)
}

/// Whether `<data path>/.coffer-restore/<backup id>` is a folder: `Ok(false)` when it (or
/// `.coffer-restore`) does not exist; refused when either is a link or not a folder.
fn staging_exists(data_path: &Path, backup_id: Uuid) -> Result<bool, RestoreFailure> {
    for folder in [
        data_path.join(STAGING_FOLDER),
        staging_folder(data_path, backup_id),
    ] {
        match fs::symlink_metadata(&folder) {
            Ok(metadata) if metadata.is_dir() => {}
            Ok(_) => {
                return Err(RestoreFailure::Refused(format!(
                    "the restore staging folder {} is a symbolic link or not a folder: remove it",
                    folder.display()
                )));
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(error) => return Err(RestoreFailure::local("inspect", folder)(error)),
        }
    }
    Ok(true)
}

/// Marks the needs whose content is staged, verified, by an earlier attempt.
fn find_staged(
    shared: &Shared,
    objects: &mut HashMap<ContentHash, ObjectPlan>,
) -> Result<(), RestoreFailure> {
    let mut staging: HashMap<usize, bool> = HashMap::new();
    for (hash, object) in objects.iter_mut() {
        for need in &mut object.needs {
            let exists = match staging.get(&need.data_path) {
                Some(exists) => *exists,
                None => {
                    let exists = staging_exists(
                        &shared.job.data_paths[need.data_path],
                        shared.job.backup_id,
                    )?;
                    staging.insert(need.data_path, exists);
                    exists
                }
            };
            if !exists {
                continue;
            }
            let staged = shared.staging_folder(need.data_path).join(hash.to_hex());
            need.staged = match fs::symlink_metadata(&staged) {
                Ok(metadata) => metadata.is_file() && metadata.len() == object.size,
                Err(error) if error.kind() == io::ErrorKind::NotFound => false,
                Err(error) => return Err(RestoreFailure::local("inspect", staged)(error)),
            };
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Downloading

/// Creates the staging folders of the data paths that receive files (private to the agent).
fn create_staging_folders(shared: &Shared, plan: &Plan) -> Result<(), RestoreFailure> {
    let used: HashSet<usize> = plan
        .objects
        .values()
        .flat_map(|object| object.needs.iter().map(|need| need.data_path))
        .collect();
    for data_path in used {
        let root = &shared.job.data_paths[data_path];
        for folder in [
            root.join(STAGING_FOLDER),
            staging_folder(root, shared.job.backup_id),
        ] {
            match fs::DirBuilder::new().mode(0o700).create(&folder) {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {}
                Err(error) => return Err(RestoreFailure::local("create", folder)(error)),
            }
            // Each level is checked before the next is created through it: a link planted
            // since planning is refused, never followed.
            let metadata =
                fs::symlink_metadata(&folder).map_err(RestoreFailure::local("inspect", &folder))?;
            if !metadata.is_dir() {
                return Err(RestoreFailure::Refused(format!(
                    "the restore staging folder {} is a symbolic link or not a folder: remove it",
                    folder.display()
                )));
            }
        }
    }
    Ok(())
}

/// Verified staged content is committed (made durable, then named `<hash>`) at least this often...
const COMMIT_INTERVAL: Duration = Duration::from_secs(1);
/// ... or once this many bytes ...
const COMMIT_BYTES: u64 = 64 * 1024 * 1024;
/// ... or this many files wait.
const COMMIT_FILES: usize = 1000;

/// A verified download (or copy) waiting to be committed as `<hash>`.
#[derive(Debug)]
struct StagedPart {
    data_path: usize,
    part: PathBuf,
    staged: PathBuf,
    /// Files of the plan it serves, and its size: counted as done once committed.
    files: u64,
    size: u64,
}

async fn download_all(
    shared: &Arc<Shared>,
    plan: &Arc<Plan>,
    cancel: &CancellationToken,
) -> Result<(), RestoreFailure> {
    let mut work: Vec<(usize, ContentHash)> = plan
        .objects
        .iter()
        .filter(|(_, object)| object.needs.iter().any(|need| !need.staged))
        .map(|(hash, object)| (object.first_file, *hash))
        .collect();
    work.sort_unstable();
    let (commit, to_commit) = mpsc::unbounded_channel();
    // Ends when every sender is gone (the downloads finished, failed or were cancelled), after
    // committing what was verified: a later attempt does not fetch it again.
    let committer = tokio::spawn(commit_staged(shared.clone(), to_commit));
    let mut results = futures::stream::iter(work)
        .map(|(_, hash)| {
            let shared = shared.clone();
            let plan = plan.clone();
            let cancel = cancel.clone();
            let commit = commit.clone();
            async move {
                tokio::select! {
                    result = stage_object(&shared, &plan, hash, &commit) => result,
                    () = cancel.cancelled() => Err(RestoreFailure::Canceled),
                }
            }
        })
        .buffer_unordered(shared.job.concurrency.max(1));
    let mut downloaded = Ok(());
    while let Some(result) = results.next().await {
        if let Err(error) = result {
            downloaded = Err(error);
            break;
        }
    }
    drop(results);
    drop(commit);
    let committed = committer.await.unwrap_or_else(|error| {
        Err(RestoreFailure::Local {
            action: "commit staged files",
            path: PathBuf::new(),
            source: io::Error::other(error),
        })
    });
    // A committer that failed made the downloads fail too ("the committer stopped"): its error
    // is the cause to report.
    committed?;
    downloaded
}

/// Commits verified parts in batches: one `syncfs` of each data path's filesystem makes a whole
/// batch durable (instead of one `fsync` per file, which made the disk's flush latency the
/// limit), then each part is renamed to `<hash>`. Downloads go on meanwhile.
async fn commit_staged(
    shared: Arc<Shared>,
    mut parts: mpsc::UnboundedReceiver<Vec<StagedPart>>,
) -> Result<(), RestoreFailure> {
    let mut pending: Vec<StagedPart> = Vec::new();
    let mut pending_bytes = 0u64;
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        // `None`: the deadline passed; `Some(None)`: no more parts will come.
        let received = match deadline {
            None => Some(parts.recv().await),
            Some(at) => tokio::time::timeout_at(at, parts.recv()).await.ok(),
        };
        let closed = matches!(received, Some(None));
        let timed_out = received.is_none();
        if let Some(Some(batch)) = received {
            if pending.is_empty() {
                deadline = Some(tokio::time::Instant::now() + COMMIT_INTERVAL);
            }
            pending_bytes += batch.iter().map(|part| part.size).sum::<u64>();
            pending.extend(batch);
        }
        let due =
            timed_out || closed || pending_bytes >= COMMIT_BYTES || pending.len() >= COMMIT_FILES;
        if due && !pending.is_empty() {
            let batch = std::mem::take(&mut pending);
            pending_bytes = 0;
            deadline = None;
            let data_paths = shared.job.data_paths.clone();
            let batch = blocking(move || commit_batch(&data_paths, batch)).await?;
            for part in batch {
                shared.counters.done(part.files, part.size, false);
            }
        }
        if closed {
            return Ok(());
        }
    }
}

/// Syncs the filesystem of each data path the batch is staged in, then names each part.
fn commit_batch(
    data_paths: &[PathBuf],
    batch: Vec<StagedPart>,
) -> Result<Vec<StagedPart>, RestoreFailure> {
    let used: std::collections::BTreeSet<usize> = batch.iter().map(|part| part.data_path).collect();
    for data_path in used {
        let path = &data_paths[data_path];
        let folder = File::open(path).map_err(RestoreFailure::local("open", path))?;
        rustix::fs::syncfs(&folder)
            .map_err(|error| RestoreFailure::local("sync the filesystem of", path)(error.into()))?;
    }
    for part in &batch {
        fs::rename(&part.part, &part.staged)
            .map_err(RestoreFailure::local("rename", &part.part))?;
    }
    Ok(batch)
}

/// Stages one content in every data path that needs it: downloaded once (unless a verified
/// copy is staged somewhere already), copied into the others, then handed to the committer.
async fn stage_object(
    shared: &Shared,
    plan: &Plan,
    hash: ContentHash,
    commit: &mpsc::UnboundedSender<Vec<StagedPart>>,
) -> Result<(), RestoreFailure> {
    let job = &shared.job;
    let object = &plan.objects[&hash];
    let file = shared.target(&plan.files[object.first_file]);
    let hex = hash.to_hex();
    let mut source = object
        .needs
        .iter()
        .find(|need| need.staged)
        .map(|need| shared.staging_folder(need.data_path).join(&hex));
    let mut parts = Vec::new();
    for need in object.needs.iter().filter(|need| !need.staged) {
        let folder = shared.staging_folder(need.data_path);
        let part = folder.join(format!("{hex}.part"));
        let staged = folder.join(&hex);
        match &source {
            None => {
                let object_path = shared.layout.object(&hash);
                let downloaded = download_object_sized(
                    &job.operator,
                    &object_path,
                    &part,
                    hash,
                    Some(object.size),
                    job.limiter.as_ref(),
                )
                .await
                .map_err(|source| RestoreFailure::Download {
                    file: file.clone(),
                    hash,
                    source: Box::new(match source {
                        DownloadError::Storage(error) => {
                            DownloadError::Storage(error.in_location(&job.location_name))
                        }
                        other => other,
                    }),
                })?;
                let size = downloaded.size;
                shared
                    .counters
                    .bytes_downloaded
                    .fetch_add(downloaded.stored_bytes, Ordering::Relaxed);
                if size != object.size {
                    let _ = tokio::fs::remove_file(&part).await;
                    return Err(RestoreFailure::SizeMismatch {
                        file,
                        hash,
                        expected: object.size,
                        actual: size,
                    });
                }
            }
            Some(from) => {
                let from = from.clone();
                let to = part.clone();
                blocking(move || copy_part(&from, &to)).await?;
            }
        }
        // Copies for other data paths read this part before the committer renames it.
        source = Some(part.clone());
        parts.push(StagedPart {
            data_path: need.data_path,
            part,
            staged,
            files: need.files,
            size: object.size,
        });
    }
    commit.send(parts).map_err(|_| RestoreFailure::Local {
        action: "commit",
        path: shared.staging_folder(0),
        source: io::Error::other("the committer stopped"),
    })
}

/// Copies verified staged content into another data path's staging (made durable with its
/// batch).
fn copy_part(from: &Path, to: &Path) -> Result<(), RestoreFailure> {
    let mut source = File::open(from).map_err(RestoreFailure::local("read", from))?;
    let mut dest = File::create(to).map_err(RestoreFailure::local("create", to))?;
    io::copy(&mut source, &mut dest).map_err(RestoreFailure::local("write", to))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Placing

/// Flags of a folder opened on the way to a target: never through a symbolic link.
fn folder_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

/// A data path opened for placing.
#[derive(Debug)]
struct PlacingRoot {
    folder: OwnedFd,
    /// `None` when no file of the data path needs staged content (all are in place).
    staging: Option<OwnedFd>,
    staging_path: PathBuf,
    /// Owner given to placed files and created folders (an agent running as root gives them
    /// the data path's owner, so the database can read them).
    owner: Option<(Uid, Gid)>,
}

fn open_root(shared: &Shared, data_path: usize) -> Result<PlacingRoot, RestoreFailure> {
    let path = &shared.job.data_paths[data_path];
    let folder = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|error| RestoreFailure::local("open", path)(error.into()))?;
    let staging_path = shared.staging_folder(data_path);
    let staging = match open_relative(
        &folder,
        &[STAGING_FOLDER, &shared.job.backup_id.to_string()],
        Missing::Fail,
    ) {
        Ok(staging) => Some(staging),
        Err(error) if error.kind() == io::ErrorKind::NotFound => None,
        Err(error) => return Err(RestoreFailure::local("open", &staging_path)(error)),
    };
    let owner = if rustix::process::geteuid().is_root() {
        let stat = rustix::fs::fstat(&folder)
            .map_err(|error| RestoreFailure::local("inspect", path)(error.into()))?;
        let owner = (Uid::from_raw(stat.st_uid), Gid::from_raw(stat.st_gid));
        (!owner.0.is_root() || owner.1.as_raw() != 0).then_some(owner)
    } else {
        None
    };
    Ok(PlacingRoot {
        folder,
        staging,
        staging_path,
        owner,
    })
}

/// How [`open_relative`] treats a missing folder.
#[derive(Debug, Clone, Copy)]
enum Missing {
    /// As an error.
    Fail,
    /// Creates it, giving it this owner if any.
    Create(Option<(Uid, Gid)>),
}

/// Opens the folder `components` below `base` without following links, creating missing
/// folders as `missing` says.
fn open_relative(base: &OwnedFd, components: &[&str], missing: Missing) -> io::Result<OwnedFd> {
    let mut folder = base.try_clone()?;
    for component in components {
        folder = match rustix::fs::openat(&folder, *component, folder_flags(), Mode::empty()) {
            Ok(next) => next,
            Err(Errno::NOENT) if matches!(missing, Missing::Create(_)) => {
                match rustix::fs::mkdirat(&folder, *component, Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(error) => return Err(error.into()),
                }
                let next = rustix::fs::openat(&folder, *component, folder_flags(), Mode::empty())?;
                if let Missing::Create(Some((uid, gid))) = missing {
                    rustix::fs::fchown(&next, Some(uid), Some(gid))?;
                }
                next
            }
            Err(Errno::LOOP | Errno::NOTDIR) => {
                return Err(io::Error::other(format!(
                    "{component} is a symbolic link or not a folder"
                )));
            }
            Err(error) => return Err(error.into()),
        };
    }
    Ok(folder)
}

fn modified_time(mtime_ns: i64) -> SystemTime {
    let magnitude = Duration::from_nanos(mtime_ns.unsigned_abs());
    if mtime_ns >= 0 {
        UNIX_EPOCH.checked_add(magnitude)
    } else {
        UNIX_EPOCH.checked_sub(magnitude)
    }
    .unwrap_or(UNIX_EPOCH)
}

/// Gives a staged file its owner, modification time and mode, before it is renamed into place.
fn prepare_staged(
    staging: &OwnedFd,
    name: &str,
    file: &PlannedFile,
    owner: Option<(Uid, Gid)>,
) -> io::Result<()> {
    let staged = File::from(rustix::fs::openat(
        staging,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?);
    if let Some((uid, gid)) = owner {
        // Before the mode: a change of owner clears set-user-id and set-group-id bits.
        rustix::fs::fchown(&staged, Some(uid), Some(gid))?;
    }
    staged.set_times(FileTimes::new().set_modified(modified_time(file.mtime_ns)))?;
    staged.set_permissions(Permissions::from_mode(file.mode & 0o7777))
}

/// Copies the staged `<hash>` to `<hash>.copy` for a file that shares its content with others.
fn copy_staged(staging: &OwnedFd, hex: &str, copy: &str) -> io::Result<()> {
    let mut source = File::from(rustix::fs::openat(
        staging,
        hex,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?);
    let mut dest = File::from(rustix::fs::openat(
        staging,
        copy,
        OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )?);
    io::copy(&mut source, &mut dest)?;
    Ok(())
}

/// Moves every staged file into place, syncs each data path's filesystem once, and removes the
/// backup's staging folders.
fn place_all(shared: &Shared, plan: &Plan) -> Result<(), RestoreFailure> {
    let job = &shared.job;
    let mut remaining: HashMap<(usize, ContentHash), u64> = HashMap::new();
    for (hash, object) in &plan.objects {
        for need in &object.needs {
            remaining.insert((need.data_path, *hash), need.files);
        }
    }
    let mut roots: Vec<Option<PlacingRoot>> = job.data_paths.iter().map(|_| None).collect();
    let mut parent: Option<(usize, String, OwnedFd)> = None;
    for file in &plan.files {
        let target = shared.target(file);
        let place_error = |action: &'static str| RestoreFailure::local(action, &target);
        let root = match &mut roots[file.data_path] {
            Some(root) => root,
            slot @ None => slot.insert(open_root(shared, file.data_path)?),
        };
        let (folder, name) = file
            .relative
            .rsplit_once('/')
            .unwrap_or(("", &file.relative));
        let parent_fd = match &mut parent {
            Some((data_path, path, fd)) if *data_path == file.data_path && path == folder => fd,
            slot => {
                let components: Vec<&str> =
                    folder.split('/').filter(|part| !part.is_empty()).collect();
                let fd = open_relative(&root.folder, &components, Missing::Create(root.owner))
                    .map_err(place_error("open the folder of"))?;
                &mut slot.insert((file.data_path, folder.to_string(), fd)).2
            }
        };
        if file.target == Target::InPlace {
            let existing = rustix::fs::openat(
                parent_fd,
                name,
                OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|error| place_error("open")(error.into()))?;
            rustix::fs::fchmod(&existing, Mode::from_raw_mode(file.mode & 0o7777))
                .map_err(|error| place_error("set the mode of")(error.into()))?;
        } else {
            let staging = root.staging.as_ref().ok_or_else(|| {
                RestoreFailure::local("open", &root.staging_path)(io::ErrorKind::NotFound.into())
            })?;
            let hex = file.hash.to_hex();
            let left = remaining.entry((file.data_path, file.hash)).or_insert(1);
            *left = left.saturating_sub(1);
            let staged = if *left == 0 {
                hex
            } else {
                let copy = format!("{hex}.copy");
                copy_staged(staging, &hex, &copy)
                    .map_err(RestoreFailure::local("copy", root.staging_path.join(&hex)))?;
                copy
            };
            prepare_staged(staging, &staged, file, root.owner).map_err(RestoreFailure::local(
                "set the mode and time of",
                root.staging_path.join(&staged),
            ))?;
            rustix::fs::renameat(staging, staged.as_str(), parent_fd, name)
                .map_err(|error| place_error("move into place")(error.into()))?;
        }
        shared.counters.files_placed.fetch_add(1, Ordering::Relaxed);
    }
    drop(parent);
    for (index, root) in roots.iter().enumerate() {
        if let Some(root) = root {
            rustix::fs::syncfs(&root.folder).map_err(|error| {
                RestoreFailure::local("sync the filesystem of", &job.data_paths[index])(
                    error.into(),
                )
            })?;
        }
    }
    drop(roots);
    for data_path in &job.data_paths {
        remove_staging(data_path, job.backup_id);
    }
    Ok(())
}

/// Removes a finished restore's staging folder (and `.coffer-restore` when it is empty).
/// Failures are logged: the files are in place, only space is lost.
fn remove_staging(data_path: &Path, backup_id: Uuid) {
    match staging_exists(data_path, backup_id) {
        Ok(true) => {}
        Ok(false) => return,
        Err(error) => {
            tracing::warn!(%error, "leave the restore staging folder");
            return;
        }
    }
    let folder = staging_folder(data_path, backup_id);
    if let Err(error) = fs::remove_dir_all(&folder) {
        tracing::warn!(folder = %folder.display(), %error, "remove the restore staging folder");
    }
    // Another backup's restore may be staging there too.
    let _ = fs::remove_dir(data_path.join(STAGING_FOLDER));
}

// ---------------------------------------------------------------------------------------------
// The hook

async fn run_hook(
    job: &RestoreJob,
    hook: &RestoreHook,
    cancel: &CancellationToken,
) -> Result<(), RestoreFailure> {
    let Some((program, args)) = hook.argv.split_first() else {
        return Ok(());
    };
    let Some(working_folder) = job.data_paths.first() else {
        return Ok(());
    };
    tracing::info!(program, backup_id = %job.backup_id, "run post-restore hook");
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .current_dir(working_folder)
        .env(HOOK_ENV_RUN_ID, &job.run_id)
        .env(HOOK_ENV_BACKUP_ID, job.backup_id.to_string())
        .env(HOOK_ENV_NODE_ID, job.node_id.to_string())
        .env(HOOK_ENV_SOURCE_NODE_ID, job.source_node_id.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout kills what it started too.
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| HookFailure::NotStarted {
            program: program.clone(),
            source,
        })?;
    let stdout = child.stdout.take().map(|stdout| {
        tokio::spawn(read_lines(stdout, |line| {
            tracing::debug!(line, "restore hook stdout");
        }))
    });
    let tail = Arc::new(Mutex::new(VecDeque::with_capacity(STDERR_TAIL_LINES)));
    let stderr = child.stderr.take().map(|stderr| {
        let tail = Arc::clone(&tail);
        tokio::spawn(read_lines(stderr, move |line| {
            tracing::debug!(line, "restore hook stderr");
            let mut tail = tail.lock().unwrap_or_else(PoisonError::into_inner);
            if tail.len() == STDERR_TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(line.to_string());
        }))
    });
    let outcome = tokio::select! {
        status = child.wait() => Some(status),
        () = tokio::time::sleep(hook.timeout) => None,
        () = cancel.cancelled() => None,
    };
    let status = match outcome {
        Some(status) => status.map_err(|source| HookFailure::NotStarted {
            program: program.clone(),
            source,
        })?,
        None => {
            if let Some(pid) = child
                .id()
                .and_then(|id| rustix::process::Pid::from_raw(id as i32))
            {
                let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
            }
            let _ = child.kill().await;
            stdout
                .into_iter()
                .chain(stderr)
                .for_each(|reader| reader.abort());
            if cancel.is_cancelled() {
                return Err(RestoreFailure::Canceled);
            }
            return Err(HookFailure::TimedOut {
                timeout: hook.timeout,
            }
            .into());
        }
    };
    tokio::join!(finish_reading(stdout), finish_reading(stderr));
    if status.success() {
        tracing::info!(backup_id = %job.backup_id, "post-restore hook finished");
        return Ok(());
    }
    let tail = std::mem::take(&mut *tail.lock().unwrap_or_else(PoisonError::into_inner));
    let stderr = if tail.is_empty() {
        "(no output)".to_string()
    } else {
        Vec::from(tail).join("\n")
    };
    Err(HookFailure::Failed { status, stderr }.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefixes(paths: &[&str]) -> Vec<String> {
        source_prefixes(
            "m",
            &paths.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
        )
        .expect("valid data paths")
    }

    #[test]
    fn paths_map_onto_the_data_path_of_the_same_index() {
        let sources = prefixes(&["/var/lib/db/", "/mnt/db2"]);
        let targets = [PathBuf::from("/data/a"), PathBuf::from("/data/b")];
        assert_eq!(
            map_path("/var/lib/db/ks/t/f", &sources, &targets).expect("maps"),
            (0, "ks/t/f")
        );
        assert_eq!(
            map_path("/mnt/db2/x", &sources, &targets).expect("maps"),
            (1, "x")
        );
    }

    #[test]
    fn paths_that_would_leave_the_data_paths_are_refused() {
        let sources = prefixes(&["/var/lib/db"]);
        let targets = [PathBuf::from("/data")];
        for path in [
            "/var/lib/db/../../etc/passwd",
            "/var/lib/db/ks/../../x",
            "/var/lib/db/./x",
            "/var/lib/db//x",
            "/var/lib/db/x/",
            "/var/lib/db",
            "/var/lib/dbx/y",
            "/etc/passwd",
            "/var/lib/db/.coffer-restore/b/h",
            "/var/lib/db/.coffer-snapshots/t/x",
        ] {
            let error = map_path(path, &sources, &targets).expect_err(path);
            assert!(
                matches!(error, RestoreFailure::Refused(_)),
                "{path}: {error}"
            );
            assert!(error.to_string().contains(path), "{error}");
        }
    }

    #[test]
    fn a_node_with_fewer_data_paths_is_refused() {
        let sources = prefixes(&["/a", "/b"]);
        let error =
            map_path("/b/x", &sources, &[PathBuf::from("/data")]).expect_err("second data path");
        assert!(error.to_string().contains("#2"), "{error}");
    }

    #[test]
    fn crafted_data_paths_are_refused() {
        for paths in [
            vec!["relative"],
            vec!["/a/../b"],
            vec!["/a", "/a/b"],
            vec!["/a/./b"],
        ] {
            let paths: Vec<String> = paths.iter().map(|p| p.to_string()).collect();
            assert!(source_prefixes("m", &paths).is_err(), "{paths:?}");
        }
        assert_eq!(prefixes(&["/"]), vec!["/".to_string()]);
    }

    #[test]
    fn a_path_listed_as_file_and_folder_is_refused() {
        let file = |relative: &str| PlannedFile {
            data_path: 0,
            relative: relative.into(),
            size: 0,
            mode: 0o644,
            mtime_ns: 0,
            hash: ContentHash([0; 32]),
            target: Target::Absent,
        };
        let sources = prefixes(&["/src"]);
        let fine = [file("a-b"), file("a/b"), file("a/c/d"), file("ab")];
        refuse_files_used_as_folders(&sources, &fine).expect("no conflict");
        let conflict = [file("a"), file("a-b"), file("a/c/d")];
        let error = refuse_files_used_as_folders(&sources, &conflict).expect_err("conflict");
        assert!(error.to_string().contains("/src/a both"), "{error}");
        let deep = [file("a/b"), file("a/b/c/d")];
        assert!(refuse_files_used_as_folders(&sources, &deep).is_err());
    }

    #[test]
    fn times_before_the_epoch_convert() {
        assert_eq!(
            modified_time(1_500_000_000),
            UNIX_EPOCH + Duration::from_millis(1500)
        );
        assert_eq!(
            modified_time(-1_000_000_000),
            UNIX_EPOCH - Duration::from_secs(1)
        );
    }
}
