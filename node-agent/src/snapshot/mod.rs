//! Snapshot providers: freeze the node's data under a tag so it can be read at leisure.
//!
//! A backup reads files for minutes or hours while the database keeps writing, so it never reads
//! the live data: it first takes a snapshot, a set of files whose content no longer changes, and
//! reads those. Every provider yields the same [`Snapshot`]: for each file, the path it has in
//! the live data (what manifests record and restores write to) and the path to read its frozen
//! content from.
//!
//! Providers (chosen by [`SnapshotConfig`]):
//! - `dir`: runs an optional pre-hook, hard-links every regular file of every data path into
//!   `<data path>/.coffer-snapshots/<tag>/` (mirroring the tree), then runs an optional post-hook,
//!   always, even when linking failed. A hard link shares the live file's inode: it freezes
//!   the *set* of files and every file that the database replaces (write a new file, rename it
//!   over the old one, as most databases do), but a write *into* an existing file shows through
//!   the link. Consistency therefore rests on the hooks: the pre-hook makes the files quiescent
//!   (`nodetool flush`, a lock, a pause) and the post-hook releases them.
//! - `command`: runs the database's own snapshot command (`nodetool snapshot -t {tag}`) and
//!   collects the files matching a glob. A file's live path is its path with the
//!   `snapshots/<tag>/` components removed (`ks/t/snapshots/<tag>/f` belongs to `ks/t/f`). The
//!   list is recorded in `<state dir>/snapshots/<tag>.json` so a restarted agent can
//!   [`Snapshotter::load`] it; deleting runs the configured cleanup command.
//! - `sqlite`: copies each configured database with SQLite's online backup API into
//!   `<data path>/.coffer-snapshots/<tag>/<relative path>`: a consistent copy even while another
//!   process writes. It snapshots ONLY the configured databases: other files of the data paths
//!   are not part of the snapshot.
//!
//! Invariants: snapshot folders live on the same filesystem as their data path (hard links
//! need it, and the copy's space is accounted where the data is); walks of the live data skip
//! `.coffer-snapshots` (and `.coffer-restore`, where restores stage files) at the root of a data
//! path, never follow symbolic links and record regular
//! files only (symlinks, sockets, fifos and devices are logged and skipped). A tag names at most
//! one snapshot: creating an existing tag fails, and a failed creation leaves nothing behind.
//! Creation and deletion run in their own task, so a caller that gives up (a cancelled request)
//! never leaves a pre-hook without its post-hook.
//!
//! A `dir` snapshot for an incremental backup ([`Snapshotter::create_incremental`]) leaves
//! unlinked the files that backup will not read: those the journal vouches for (same inode,
//! size and mtime as when they were hashed, their content known to be in the backup's
//! location). Linking them would only cost a link, an unlink and an inode update each, which
//! for a node of many files is most of an incremental backup's time. They are described from
//! the live file and carry the hash; the snapshot's file list (`<state dir>/snapshots/<tag>.files`,
//! see [`list`]) records them (without fsync, like the links themselves) so a restarted agent
//! loads the same set. Snapshots taken by older agents recorded them in
//! `<state dir>/snapshots/<tag>.unlinked.json`, which is still read.
//!
//! Deleting detaches a snapshot's folders at once (a rename to `.coffer-snapshots/.removing-*`,
//! which is not a tag) and frees their space in the background, as ZFS and Btrfs free a destroyed
//! snapshot's blocks: unlinking thousands of files otherwise sits on the path of every run that
//! ends with a deletion. A folder left detached by an agent that stopped is freed when the next
//! one starts.

mod command;
mod dir;
mod list;
pub(crate) mod shell;
mod sqlite;
mod walk;

use std::fmt;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::Instrument;

use coffer_format::ContentHash;

use crate::config::{AgentConfig, SnapshotConfig};
use crate::journal::{FileIdentity, Journal};
use crate::reserved::{
    FILE_LIST_SUFFIX, SNAPSHOTS_FOLDER, UNLINKED_RECORD_SUFFIX, snapshot_records,
};

pub use list::{Chunks, FileList, Totals};

/// How the folders of a deleted snapshot are named while their space is freed:
/// `.coffer-snapshots/.removing-<tag>-<uuid>`. Never a valid tag, so never listed as one.
const REMOVING_PREFIX: &str = ".removing-";

/// Environment variable that carries the snapshot tag to hooks and commands.
pub const TAG_ENV: &str = "COFFER_SNAPSHOT_TAG";

/// Longest tag accepted.
pub const MAX_TAG_LEN: usize = 64;

/// A frozen set of files under a tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The tag the snapshot was taken under.
    pub tag: String,
    /// Its files: in a list file for the `dir` provider (in the order the walk found them),
    /// in memory for the others (sorted by data path index, then live path). Shared: the
    /// snapshotter keeps the list of a snapshot it took for the upload that follows.
    pub files: FileList,
    /// The location whose stored content let files go unlinked (see
    /// [`SnapshotFile::stored_hash`]); `None` when every file is frozen.
    pub unlinked_for: Option<String>,
}

impl Snapshot {
    /// Sum of the sizes of the files.
    pub fn total_bytes(&self) -> u64 {
        self.files.totals().bytes
    }
}

/// One file of a snapshot (or of the live data, for a dry run).
///
/// `size`, `mtime_ns` and `inode` describe the file at `snapshot_path`, the content a backup
/// reads; `mode` holds the permission bits (`st_mode & 0o7777`). A hard-linked snapshot file
/// shares the live file's inode; a copied one (sqlite) has its own, and its mode is set to the
/// live database's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotFile {
    /// Index, in the agent's configured data paths, of the data path holding the file.
    pub data_path_index: usize,
    /// Absolute path the file has in the live data: what manifests record and restores write to.
    pub live_path: PathBuf,
    /// Absolute path to read the frozen content from.
    pub snapshot_path: PathBuf,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits.
    pub mode: u32,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// Inode number.
    pub inode: u64,
    /// Set for a file an incremental snapshot left unlinked because the journal vouches for it
    /// (see [`UnchangedFiles`]): the hash of its content, which the location holds. Such a
    /// file is never read: `snapshot_path` is its live path, whose content may have changed
    /// since.
    pub stored_hash: Option<ContentHash>,
}

impl From<&SnapshotFile> for FileIdentity {
    fn from(file: &SnapshotFile) -> Self {
        Self {
            inode: file.inode,
            size: file.size,
            mtime_ns: file.mtime_ns,
        }
    }
}

/// What lets an incremental backup's snapshot leave files unlinked: the agent's journal, asked
/// which files are unchanged since they were hashed and have their content in `location_id`.
#[derive(Debug, Clone)]
pub struct UnchangedFiles {
    /// The agent's journal.
    pub journal: Journal,
    /// The location the backup goes to.
    pub location_id: String,
}

/// A shell step of a snapshot, named in errors and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShellStep {
    /// The `dir` provider's pre-hook.
    PreHook,
    /// The `dir` provider's post-hook.
    PostHook,
    /// The `command` provider's snapshot command.
    SnapshotCommand,
    /// The `command` provider's cleanup command.
    CleanupCommand,
}

impl fmt::Display for ShellStep {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(match self {
            Self::PreHook => "pre-hook",
            Self::PostHook => "post-hook",
            Self::SnapshotCommand => "snapshot command",
            Self::CleanupCommand => "cleanup command",
        })
    }
}

/// Why a snapshot could not be created, loaded or deleted.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The tag is not 1 to 64 characters of `A-Z a-z 0-9 -`.
    #[error("invalid snapshot tag {tag:?}: {reason}")]
    InvalidTag {
        /// The refused tag.
        tag: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A snapshot with this tag already exists (or is being created).
    #[error("snapshot {tag} already exists")]
    AlreadyExists { tag: String },
    /// No snapshot with this tag exists.
    #[error("snapshot {tag} does not exist")]
    NotFound { tag: String },
    /// The snapshot's creation did not finish (the agent stopped during it); delete it.
    #[error("snapshot {tag} was not completed; delete it and take a new one")]
    Incomplete { tag: String },
    /// A hook or command exited unsuccessfully.
    #[error("{step} failed ({status}): {stderr}")]
    StepFailed {
        step: ShellStep,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// The last lines of its standard error (`(no output)` when it wrote none).
        stderr: String,
    },
    /// A hook or command could not be started.
    #[error("start {step}: {source}")]
    StepNotStarted {
        step: ShellStep,
        /// Why `sh` could not be spawned.
        source: io::Error,
    },
    /// Reading, linking or writing a file or folder failed.
    #[error("{action} {path}: {source}")]
    File {
        /// What was being done, for example `hard-link`.
        action: &'static str,
        /// The file or folder involved.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// SQLite refused to open or copy a database.
    #[error("copy sqlite database {database}: {source}")]
    Database {
        /// The live database.
        database: PathBuf,
        /// The underlying error.
        source: rusqlite::Error,
    },
    /// A configured path is not inside any data path.
    #[error("{path} is not inside a data path")]
    OutsideDataPaths { path: PathBuf },
    /// The `files` glob of the `command` provider matched two files with the same live path.
    #[error(
        "snapshot files {first} and {second} would both restore to {live_path}: narrow the files pattern"
    )]
    DuplicateLivePath {
        /// The live path both map to.
        live_path: PathBuf,
        /// One snapshot file.
        first: PathBuf,
        second: PathBuf,
    },
    /// The `files` glob of the `command` provider does not compile.
    #[error("snapshot files pattern {pattern:?}: {source}")]
    FilesPattern {
        /// The pattern, with the tag substituted.
        pattern: String,
        /// Why it was refused.
        source: globset::Error,
    },
    /// The state-directory record of a `command` snapshot cannot be read or no longer fits the
    /// configuration.
    #[error("snapshot record {path}: {reason}")]
    Record {
        /// The record file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The journal could not tell which files are unchanged.
    #[error("journal: {0}")]
    Journal(#[from] crate::journal::JournalError),
    /// A background task running the snapshot panicked or was cancelled.
    #[error("snapshot task: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl SnapshotError {
    pub(crate) fn file(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::File {
            action,
            path: path.into(),
            source,
        }
    }
}

/// Checks that `tag` is 1 to [`MAX_TAG_LEN`] characters of `A-Z a-z 0-9 -`.
///
/// Tags become folder and file names and are substituted into shell commands, so nothing else
/// is accepted: no separators, no dots, no shell metacharacters.
pub fn validate_tag(tag: &str) -> Result<(), SnapshotError> {
    let refuse = |reason| {
        Err(SnapshotError::InvalidTag {
            tag: tag.to_string(),
            reason,
        })
    };
    if tag.is_empty() {
        return refuse("empty");
    }
    if tag.len() > MAX_TAG_LEN {
        return refuse("longer than 64 characters");
    }
    if !tag
        .bytes()
        .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-')
    {
        return refuse("only A-Z, a-z, 0-9 and - are allowed");
    }
    Ok(())
}

/// Takes, loads, lists and deletes the node's snapshots with the configured provider.
///
/// Cheap to clone; clones share the configuration.
#[derive(Debug, Clone)]
pub struct Snapshotter {
    inner: Arc<Settings>,
}

#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) data_paths: Vec<PathBuf>,
    pub(crate) state_dir: PathBuf,
    pub(crate) provider: SnapshotConfig,
    /// File lists of the snapshots this process took last, handed to their upload so it does
    /// not walk and stat the snapshot again (most recent last, at most [`TAKEN_KEPT`]).
    taken: std::sync::Mutex<Vec<Snapshot>>,
    /// Frees the space of deleted snapshots in the background.
    reclaimer: Reclaimer,
}

/// File lists kept by [`Settings::taken`]; an upload usually follows its snapshot at once.
const TAKEN_KEPT: usize = 4;

impl Settings {
    fn taken(&self) -> std::sync::MutexGuard<'_, Vec<Snapshot>> {
        self.taken
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Snapshotter {
    /// A snapshotter for the agent's data paths, state directory and snapshot provider.
    pub fn new(config: &AgentConfig) -> Self {
        Self {
            inner: Arc::new(Settings {
                data_paths: config.data_paths.clone(),
                state_dir: config.state_dir.clone(),
                provider: config.snapshot.clone(),
                taken: std::sync::Mutex::new(Vec::new()),
                reclaimer: Reclaimer::default(),
            }),
        }
    }

    /// Starts freeing the folders of deleted snapshots in the background (those an earlier agent
    /// left detached, at start-up); returns at once.
    pub fn reclaim(&self) {
        Reclaimer::start(&self.inner);
    }

    /// Waits until no deleted snapshot's space is being freed.
    pub async fn reclaimed(&self) {
        self.inner.reclaimer.idle().await;
    }

    /// Stops freeing space (between two entries): the agent is stopping. What is left is freed
    /// when the next agent starts.
    pub fn stop_reclaiming(&self) {
        self.inner.reclaimer.stop.cancel();
    }

    /// The configured data paths; [`SnapshotFile::data_path_index`] indexes them.
    pub fn data_paths(&self) -> &[PathBuf] {
        &self.inner.data_paths
    }

    /// Takes a snapshot under `tag`.
    ///
    /// Fails when the tag is invalid or already names a snapshot, a hook or the snapshot command
    /// fails (the error carries its exit status and the end of its stderr), a file cannot be
    /// linked or copied, or a database cannot be copied. On failure nothing of the snapshot is
    /// left behind. The work runs in its own task: if the caller stops waiting, it still
    /// finishes (post-hook included) and the snapshot stays until deleted.
    pub async fn create(&self, tag: &str) -> Result<Snapshot, SnapshotError> {
        self.create_with(tag, None).await
    }

    /// Takes a snapshot under `tag` for an incremental backup into `unchanged.location_id`: as
    /// [`Snapshotter::create`], except that the `dir` provider leaves unlinked the files the
    /// journal vouches for (see the module's notes). Other providers freeze every file.
    pub async fn create_incremental(
        &self,
        tag: &str,
        unchanged: UnchangedFiles,
    ) -> Result<Snapshot, SnapshotError> {
        self.create_with(tag, Some(unchanged)).await
    }

    async fn create_with(
        &self,
        tag: &str,
        unchanged: Option<UnchangedFiles>,
    ) -> Result<Snapshot, SnapshotError> {
        validate_tag(tag)?;
        let settings = Arc::clone(&self.inner);
        let tag = tag.to_string();
        let span = tracing::info_span!(
            "create_snapshot",
            tag = %tag,
            provider = settings.provider.provider_name()
        );
        tokio::spawn(
            async move {
                let started = std::time::Instant::now();
                let files = match &settings.provider {
                    SnapshotConfig::Dir {
                        pre_hook,
                        post_hook,
                    } => {
                        dir::create(
                            &settings,
                            pre_hook.as_deref(),
                            post_hook.as_deref(),
                            &tag,
                            unchanged.as_ref(),
                        )
                        .await?
                    }
                    SnapshotConfig::Command {
                        command,
                        cleanup_command,
                        files,
                    } => in_memory(
                        command::create(
                            &settings,
                            command,
                            cleanup_command.as_deref(),
                            files,
                            &tag,
                        )
                        .await?,
                    ),
                    SnapshotConfig::Sqlite { databases } => {
                        in_memory(sqlite::create(&settings, databases, &tag).await?)
                    }
                };
                let totals = files.totals();
                tracing::info!(
                    files = totals.files,
                    unlinked = totals.unlinked,
                    bytes = totals.bytes,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "snapshot created"
                );
                let snapshot = Snapshot {
                    tag,
                    files,
                    unlinked_for: unchanged
                        .filter(|_| totals.unlinked > 0)
                        .map(|unchanged| unchanged.location_id),
                };
                {
                    let mut taken = settings.taken();
                    if taken.len() >= TAKEN_KEPT {
                        taken.remove(0);
                    }
                    taken.push(snapshot.clone());
                }
                Ok(snapshot)
            }
            .instrument(span),
        )
        .await?
    }

    /// The file list of an existing snapshot: the one [`Snapshotter::create`] found when this
    /// process took it (handed out once), or read again from disk, for example after an agent
    /// restart.
    ///
    /// Fails with [`SnapshotError::NotFound`] when no snapshot has this tag,
    /// [`SnapshotError::Incomplete`] when its creation never finished, and with a file error
    /// when a file it lists has disappeared.
    pub async fn load(&self, tag: &str) -> Result<Snapshot, SnapshotError> {
        validate_tag(tag)?;
        let settings = Arc::clone(&self.inner);
        let tag = tag.to_string();
        {
            let mut taken = settings.taken();
            if let Some(index) = taken.iter().position(|taken| taken.tag == tag) {
                return Ok(taken.remove(index));
            }
        }
        tokio::task::spawn_blocking(move || {
            let (files, unlinked_for) = match &settings.provider {
                SnapshotConfig::Dir { .. } => dir::load(&settings, &tag)?,
                SnapshotConfig::Command { .. } => {
                    (in_memory(command::load(&settings, &tag)?), None)
                }
                SnapshotConfig::Sqlite { databases } => {
                    (in_memory(sqlite::load(&settings, databases, &tag)?), None)
                }
            };
            Ok(Snapshot {
                tag,
                files,
                unlinked_for,
            })
        })
        .await?
    }

    /// Deletes the snapshot `tag`; returns whether anything was removed.
    ///
    /// Idempotent: deleting a missing snapshot returns `Ok(false)`. Detaches the tag's folders
    /// under every data path (their space is freed in the background, see the module's notes)
    /// and removes its state-directory record whatever the provider (so leftovers of another
    /// provider go too) and, for the `command` provider, runs the cleanup command when the
    /// snapshot existed. Fails when the tag is invalid, a folder cannot be detached, or the
    /// cleanup command fails (the record is then kept, so a later delete retries it).
    pub async fn delete(&self, tag: &str) -> Result<bool, SnapshotError> {
        validate_tag(tag)?;
        self.inner.taken().retain(|taken| taken.tag != tag);
        let settings = Arc::clone(&self.inner);
        let tag = tag.to_string();
        let span = tracing::info_span!("delete_snapshot", tag = %tag);
        tokio::spawn(
            async move {
                let removed_command_snapshot = command::delete(&settings, &tag).await?;
                let removed_folders = {
                    let data_paths = settings.data_paths.clone();
                    let state_dir = settings.state_dir.clone();
                    let tag = tag.clone();
                    // The record of unlinked files goes after the folders: a snapshot is never
                    // left listing fewer files than it was taken with.
                    tokio::task::spawn_blocking(move || {
                        let detached = detach_tag_folders(&data_paths, &tag)?;
                        let unlinked = dir::remove_unlinked_record(&state_dir, &tag)?;
                        let listed = list::remove(&state_dir, &tag)?;
                        Ok::<_, SnapshotError>(unlinked || listed || detached)
                    })
                    .await??
                };
                if removed_folders {
                    Reclaimer::start(&settings);
                }
                let removed = removed_command_snapshot || removed_folders;
                if removed {
                    tracing::info!("snapshot deleted");
                }
                Ok(removed)
            }
            .instrument(span),
        )
        .await?
    }

    /// Tags of the snapshots present on the node, sorted: the folders under every data path's
    /// `.coffer-snapshots` and the records of `command` snapshots, whatever the provider.
    ///
    /// Reported in the node info, so the server can remove what ended runs left; reads a few
    /// directories, so it blocks briefly.
    /// Unreadable directories are logged and treated as empty.
    pub fn list_tags(&self) -> Vec<String> {
        let mut tags = Vec::new();
        let mut read_names = |folder: &Path, suffix: &str| match std::fs::read_dir(folder) {
            Ok(entries) => {
                for entry in entries.flatten() {
                    let name = entry.file_name();
                    let Some(name) = name.to_str().and_then(|name| name.strip_suffix(suffix))
                    else {
                        continue;
                    };
                    if validate_tag(name).is_ok() {
                        tags.push(name.to_string());
                    }
                }
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => {
                tracing::warn!(folder = %folder.display(), %error, "list snapshots");
            }
        };
        for data_path in &self.inner.data_paths {
            read_names(&data_path.join(SNAPSHOTS_FOLDER), "");
        }
        read_names(&snapshot_records(&self.inner.state_dir), ".json");
        read_names(
            &snapshot_records(&self.inner.state_dir),
            UNLINKED_RECORD_SUFFIX,
        );
        read_names(&snapshot_records(&self.inner.state_dir), FILE_LIST_SUFFIX);
        tags.sort();
        tags.dedup();
        tags
    }

    /// The live files a snapshot would hold, for dry runs (`snapshot_path == live_path`).
    ///
    /// `dir`: every regular file of the data paths. `sqlite`: the configured databases.
    /// `command`: an estimate, as the database's command is not run: the files matching the
    /// glob with its `snapshots/{tag}/` part removed (and any other `{tag}` matching any name),
    /// outside any `snapshots` folder.
    pub async fn walk_live(&self) -> Result<Vec<SnapshotFile>, SnapshotError> {
        let settings = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let mut files = match &settings.provider {
                SnapshotConfig::Dir { .. } => walk::live_files(&settings.data_paths)?,
                SnapshotConfig::Command { files, .. } => command::walk_live(&settings, files)?,
                SnapshotConfig::Sqlite { databases } => sqlite::walk_live(&settings, databases)?,
            };
            sort_files(&mut files);
            Ok(files)
        })
        .await?
    }
}

/// A provider's list, sorted, in memory.
fn in_memory(mut files: Vec<SnapshotFile>) -> FileList {
    sort_files(&mut files);
    FileList::from_vec(files)
}

fn sort_files(files: &mut [SnapshotFile]) {
    // Unstable: no two files share a data path and a live path, and a stable sort of a
    // million files would borrow a buffer of half a million of them.
    files.sort_unstable_by(|left, right| {
        (left.data_path_index, &left.live_path).cmp(&(right.data_path_index, &right.live_path))
    });
}

/// `<data path>/.coffer-snapshots/<tag>`.
pub(crate) fn tag_folder(data_path: &Path, tag: &str) -> PathBuf {
    data_path.join(SNAPSHOTS_FOLDER).join(tag)
}

/// Creates `<data path>/.coffer-snapshots/<tag>` under every data path, atomically claiming the
/// tag: if any of them exists already, removes the ones this call made and fails with
/// [`SnapshotError::AlreadyExists`]. `.coffer-snapshots` itself is made owner-only (0700): the
/// mirrored tree must not open files that the live tree's folders protect.
pub(crate) fn claim_tag_folders(data_paths: &[PathBuf], tag: &str) -> Result<(), SnapshotError> {
    let mut created: Vec<PathBuf> = Vec::new();
    let result = (|| {
        for data_path in data_paths {
            let snapshots = data_path.join(SNAPSHOTS_FOLDER);
            let folder = snapshots.join(tag);
            // The reclaimer removes `.coffer-snapshots` when it is empty: if it did so between
            // the two creations, create it again.
            let mut attempts = 0;
            loop {
                attempts += 1;
                match std::fs::DirBuilder::new().mode(0o700).create(&snapshots) {
                    Ok(()) => {}
                    Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(source) => {
                        return Err(SnapshotError::file("create folder", snapshots, source));
                    }
                }
                match std::fs::create_dir(&folder) {
                    Ok(()) => {
                        created.push(folder);
                        break;
                    }
                    Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
                        return Err(SnapshotError::AlreadyExists {
                            tag: tag.to_string(),
                        });
                    }
                    Err(error) if error.kind() == io::ErrorKind::NotFound && attempts < 3 => {}
                    Err(source) => {
                        return Err(SnapshotError::file("create folder", folder, source));
                    }
                }
            }
        }
        Ok(())
    })();
    if result.is_err() {
        for folder in created {
            if let Err(error) = std::fs::remove_dir(&folder) {
                tracing::warn!(folder = %folder.display(), %error, "remove claimed snapshot folder");
            }
        }
    }
    result
}

/// Renames `<data path>/.coffer-snapshots/<tag>` under every data path to a detached name for
/// [`Reclaimer`] to remove; returns whether any folder existed.
fn detach_tag_folders(data_paths: &[PathBuf], tag: &str) -> Result<bool, SnapshotError> {
    let mut detached = false;
    for data_path in data_paths {
        let folder = tag_folder(data_path, tag);
        let removing = data_path.join(SNAPSHOTS_FOLDER).join(format!(
            "{REMOVING_PREFIX}{tag}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        match std::fs::rename(&folder, &removing) {
            Ok(()) => detached = true,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(SnapshotError::file("detach folder", folder, source)),
        }
    }
    Ok(detached)
}

/// Frees the space of detached snapshot folders on a blocking thread, one sweep at a time: a
/// deletion during a sweep makes it sweep again. A sweep stops between two entries of a folder
/// once `stop` is cancelled.
#[derive(Debug, Default)]
struct Reclaimer {
    state: std::sync::Mutex<ReclaimState>,
    /// Signalled whenever a sweep ends with nothing left to do.
    idle: tokio::sync::Notify,
    stop: tokio_util::sync::CancellationToken,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ReclaimState {
    #[default]
    Idle,
    Sweeping,
    /// Sweeping, and something was detached since the sweep listed the folders.
    SweepAgain,
}

impl Reclaimer {
    fn state(&self) -> std::sync::MutexGuard<'_, ReclaimState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn start(settings: &Arc<Settings>) {
        {
            let mut state = settings.reclaimer.state();
            if *state != ReclaimState::Idle {
                *state = ReclaimState::SweepAgain;
                return;
            }
            *state = ReclaimState::Sweeping;
        }
        let settings = Arc::clone(settings);
        // Bounded work that checks `stop` between entries.
        tokio::task::spawn_blocking(move || {
            let reclaimer = &settings.reclaimer;
            loop {
                for data_path in &settings.data_paths {
                    sweep_detached(data_path, &reclaimer.stop);
                }
                let mut state = reclaimer.state();
                if *state == ReclaimState::SweepAgain && !reclaimer.stop.is_cancelled() {
                    *state = ReclaimState::Sweeping;
                    continue;
                }
                *state = ReclaimState::Idle;
                reclaimer.idle.notify_waiters();
                return;
            }
        });
    }

    async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            if *self.state() == ReclaimState::Idle {
                return;
            }
            notified.await;
        }
    }
}

/// Removes the detached folders under `<data_path>/.coffer-snapshots`, and that folder when it
/// is left empty. Failures are logged: the folder stays detached and the next sweep (the next
/// deletion, or the next agent's start) tries again.
fn sweep_detached(data_path: &Path, stop: &tokio_util::sync::CancellationToken) {
    let snapshots = data_path.join(SNAPSHOTS_FOLDER);
    let entries = match std::fs::read_dir(&snapshots) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return,
        Err(error) => {
            tracing::warn!(folder = %snapshots.display(), %error, "list deleted snapshots");
            return;
        }
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with(REMOVING_PREFIX) {
            continue;
        }
        let folder = entry.path();
        if let Err(error) = remove_tree(&folder, stop) {
            tracing::warn!(folder = %folder.display(), %error, "free a deleted snapshot's space");
        }
    }
    // Only succeeds when empty, which is exactly when it should go.
    let _ = std::fs::remove_dir(&snapshots);
}

/// Removes `folder` and everything in it, one entry at a time (`remove_dir_all` for a folder,
/// which never follows symbolic links), stopping with an error between two entries once `stop`
/// is cancelled.
fn remove_tree(folder: &Path, stop: &tokio_util::sync::CancellationToken) -> io::Result<()> {
    for entry in std::fs::read_dir(folder)? {
        if stop.is_cancelled() {
            return Err(io::Error::new(
                io::ErrorKind::Interrupted,
                "the agent is stopping",
            ));
        }
        let entry = entry?;
        let removed = if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(entry.path())
        } else {
            std::fs::remove_file(entry.path())
        };
        match removed {
            Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
            _ => {}
        }
    }
    std::fs::remove_dir(folder)
}

/// Removes `<data path>/.coffer-snapshots/<tag>` under every data path (and `.coffer-snapshots`
/// when it is left empty) before returning; returns whether any folder existed. For a snapshot
/// that failed to be taken: deletions detach instead (see [`detach_tag_folders`]).
pub(crate) fn remove_tag_folders(data_paths: &[PathBuf], tag: &str) -> Result<bool, SnapshotError> {
    let mut removed = false;
    for data_path in data_paths {
        let folder = tag_folder(data_path, tag);
        // remove_dir_all does not follow symbolic links: it only ever unlinks inside the folder.
        match std::fs::remove_dir_all(&folder) {
            Ok(()) => removed = true,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(SnapshotError::file("remove folder", folder, source)),
        }
        // Only succeeds when empty, which is exactly when it should go.
        let _ = std::fs::remove_dir(data_path.join(SNAPSHOTS_FOLDER));
    }
    Ok(removed)
}

/// Removes a failed snapshot's folders, logging (not returning) what could not be removed: the
/// error that made the snapshot fail is the one to report.
pub(crate) fn discard_tag_folders(data_paths: &[PathBuf], tag: &str) {
    if let Err(error) = remove_tag_folders(data_paths, tag) {
        tracing::error!(%error, "remove the folders of a failed snapshot");
    }
}

/// Index of the data path holding `path`.
pub(crate) fn data_path_index(data_paths: &[PathBuf], path: &Path) -> Result<usize, SnapshotError> {
    data_paths
        .iter()
        .position(|data_path| path.starts_with(data_path))
        .ok_or_else(|| SnapshotError::OutsideDataPaths {
            path: path.to_path_buf(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_short_names_without_separators() {
        for tag in ["a", "backup-2026-01-01", "X9", &"a".repeat(64)] {
            assert!(validate_tag(tag).is_ok(), "{tag}");
        }
        for tag in [
            "",
            "../x",
            "a/b",
            "a b",
            "a.b",
            "a_b",
            "$(id)",
            "é",
            &"a".repeat(65),
        ] {
            assert!(
                matches!(validate_tag(tag), Err(SnapshotError::InvalidTag { .. })),
                "{tag}"
            );
        }
    }

    #[test]
    fn step_failures_name_the_step() {
        assert_eq!(ShellStep::PreHook.to_string(), "pre-hook");
        assert_eq!(ShellStep::CleanupCommand.to_string(), "cleanup command");
    }
}
