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
//!    data paths is downloaded into one and copied into the others. Packed contents (small
//!    files in object storage) come a pack at a time: the pack is downloaded and verified
//!    once, and each content cut out of it is verified against its own hash ([`packs`]).
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

use std::fs::{self};
use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::time::Duration;

use coffer_format::filter::PathMatcher;
use coffer_format::manifest::ManifestError;
use coffer_format::object::{DownloadError, RateLimiter};
use coffer_format::{ClusterLayout, ContentHash};
use coffer_proto::agent::v1 as proto;
use opendal::Operator;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::progress::{FileCounters, ProgressReporter};
use crate::reserved::{STAGING_FOLDER, staging_folder};

mod download;
mod files;
mod hook;
mod objects;
mod packs;
mod place;
mod plan;
mod space;

use download::{create_staging_folders, download_all};
use files::{Paths, PlannedFile, PlannedFiles, Target, UNPACKED};
use hook::run_hook;
use objects::Objects;
use place::place_all;
use plan::plan;
use space::{check_space, give_back, is_disk_full};

/// Files downloaded at once when the request does not say.
pub const DEFAULT_CONCURRENCY: usize = 8;
/// How long a hook may run when the request does not say.
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(600);
/// Most existing target paths reported in a summary.
pub const MAX_EXISTING_PATHS: usize = 20;
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
    /// The location's keys, which open its sealed manifests and objects.
    pub keys: coffer_format::object::Keyring,
    /// Location name, for messages.
    pub location_name: String,
    /// Cluster the backup was taken from: its objects live under its folder.
    pub source_cluster_id: Uuid,
    pub backup_id: Uuid,
    /// The backup node restored onto this node.
    pub source_node_id: Uuid,
    /// Path of that node's manifest in the location.
    pub manifest_path: String,
    /// This node.
    pub node_id: Uuid,
    /// This node's data paths, in configuration order.
    pub data_paths: Vec<PathBuf>,
    /// The files to restore, matched on their path in the backup.
    pub filter: PathMatcher,
    /// Replace existing target files.
    pub overwrite: bool,
    /// Plan only.
    pub dry_run: bool,
    /// Shared download rate limit.
    pub limiter: Option<RateLimiter>,
    /// Objects downloaded at once.
    pub concurrency: usize,
    /// Command to run once the files are in place (one of the agent's configured hooks).
    pub hook: Option<RestoreHook>,
    /// Bytes to leave free on each data path's filesystem (`restore-keep-free`).
    pub keep_free: u64,
}

/// Why a restore failed. The message names the file, the manifest path or the folder concerned.
#[derive(Debug, thiserror::Error)]
pub enum RestoreFailure {
    /// The backup cannot be restored here as asked: a path would leave the data paths, a target
    /// exists, the node lacks a data path, the manifest is not the one asked for. Nothing was
    /// downloaded or placed.
    #[error("{0}")]
    Refused(String),
    /// A filesystem has not room enough for what the restore would write, with the space the
    /// agent's configuration keeps free. Nothing was downloaded.
    #[error(
        "not enough space on the filesystem of {}: the restore needs {needed} bytes there, \
         {free} are free and {keep_free} are to be kept free (restore-keep-free); free some \
         space or restore fewer files (--include)",
        path.display()
    )]
    NoSpace {
        path: PathBuf,
        needed: u64,
        free: u64,
        keep_free: u64,
    },
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
        program: String,
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
    TimedOut { timeout: Duration },
}

/// The restore's counters: the files (verified in staging or in place), what was fetched and
/// what was placed.
#[derive(Debug, Default)]
struct Counters {
    files: FileCounters,
    bytes_downloaded: AtomicU64,
    files_placed: AtomicU64,
}

impl Counters {
    fn reading(&self, phase: proto::RestorePhase) -> proto::RestoreProgress {
        let files = self.files.totals();
        proto::RestoreProgress {
            phase: phase.into(),
            files_total: files.files_total,
            files_done: files.files_done,
            files_skipped: files.files_skipped,
            bytes_total: files.bytes_total,
            bytes_done: files.bytes_done,
            bytes_skipped: files.bytes_skipped,
            bytes_downloaded: self.bytes_downloaded.load(Ordering::Relaxed),
            files_placed: self.files_placed.load(Ordering::Relaxed),
        }
    }
}

/// The result of planning.
#[derive(Debug)]
struct Plan {
    files: PlannedFiles,
    objects: Objects,
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
    /// Buffers of the packs fetched, reused by the next ones.
    pack_buffers: packs::Buffers,
}

impl Shared {
    fn phase(&self) -> proto::RestorePhase {
        proto::RestorePhase::try_from(self.phase.load(Ordering::Relaxed))
            .unwrap_or(proto::RestorePhase::Unspecified)
    }

    fn set_phase(&self, phase: proto::RestorePhase) {
        self.phase.store(phase.into(), Ordering::Relaxed);
    }

    /// Where `file` (with its path in `paths`) is restored to.
    fn target(&self, paths: &Paths, file: &PlannedFile) -> PathBuf {
        self.job.data_paths[file.data_path()].join(paths.of(file))
    }

    fn staging_folder(&self, data_path: usize) -> PathBuf {
        staging_folder(&self.job.data_paths[data_path], self.job.backup_id)
    }
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
/// Fails with [`RestoreFailure::Refused`] before
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
    let shared = Arc::new(Shared {
        layout: ClusterLayout::new(job.source_cluster_id),
        job,
        counters: Counters::default(),
        phase: AtomicI32::new(proto::RestorePhase::Planning.into()),
        pack_buffers: packs::Buffers::default(),
    });
    let reporter = ProgressReporter::start(progress.clone(), cancel.clone(), {
        let shared = shared.clone();
        move || shared.counters.reading(shared.phase())
    });
    let outcome = restore(&shared, &cancel).await;
    reporter.stop().await;
    let (files_overwritten, existing_paths) = outcome?;
    let final_progress = shared.counters.reading(shared.phase());
    let _ = progress.send(final_progress).await;
    Ok(proto::RestoreSummary {
        progress: Some(final_progress),
        files_overwritten,
        existing_paths,
    })
}

/// The phases; returns the files overwritten and the first existing paths.
async fn restore(
    shared: &Arc<Shared>,
    cancel: &CancellationToken,
) -> Result<(u64, Vec<String>), RestoreFailure> {
    let started = std::time::Instant::now();
    let plan = Arc::new(plan(shared, cancel).await?);
    let planned = started.elapsed();
    let existing = (plan.existing_files, plan.existing_paths.clone());
    {
        // A dry run says too whether the restore would fit.
        let shared = shared.clone();
        let plan = plan.clone();
        blocking(move || check_space(&shared, &plan)).await?;
    }
    if shared.job.dry_run {
        return Ok(existing);
    }

    shared.set_phase(proto::RestorePhase::Downloading);
    {
        let shared = shared.clone();
        let plan = plan.clone();
        blocking(move || create_staging_folders(&shared, &plan)).await?;
    }
    if let Err(failure) = download_all(shared, &plan, cancel).await {
        if is_disk_full(&failure) {
            let shared = shared.clone();
            let _ = tokio::task::spawn_blocking(move || give_back(&shared)).await;
        }
        return Err(failure);
    }
    if cancel.is_cancelled() {
        return Err(RestoreFailure::Canceled);
    }

    let downloaded = started.elapsed();
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
        plan_ms = planned.as_millis() as u64,
        download_ms = (downloaded - planned).as_millis() as u64,
        place_ms = (started.elapsed() - downloaded).as_millis() as u64,
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
