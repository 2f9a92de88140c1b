//! The `dir` provider: pre-hook, hard-link every regular file, post-hook.
//!
//! For an incremental backup, files the journal vouches for are described, not linked (see the
//! parent module's notes), and recorded in `<state dir>/snapshots/<tag>.unlinked.json`.
//!
//! The post-hook runs whenever linking was attempted, like a `finally`, so a pre-hook that
//! pauses or locks the database is always undone. When the pre-hook itself fails, nothing was
//! linked and the post-hook does not run: a pre-hook that fails halfway must undo its own work.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use coffer_format::ContentHash;
use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;
use serde::Deserialize;

use super::command::{recorded_data_path, remove_record};
use super::list::{self, FileList, ListWriter};
use super::walk::{describe_listed, is_folder, regular_files};
use super::{
    Settings, ShellStep, SnapshotError, SnapshotFile, UnchangedFiles, claim_tag_folders,
    discard_tag_folders, shell, tag_folder,
};
use crate::journal::FileIdentity;
use crate::reserved::{UNLINKED_RECORD_SUFFIX, is_reserved, snapshot_records};

fn unlinked_record_path(state_dir: &Path, tag: &str) -> PathBuf {
    snapshot_records(state_dir).join(format!("{tag}{UNLINKED_RECORD_SUFFIX}"))
}

/// The files a snapshot left unlinked, as agents recorded them before snapshots kept a file
/// list; read for the snapshots they left.
#[derive(Debug, Deserialize)]
struct UnlinkedRecord {
    /// The location whose content they are in.
    location_id: String,
    files: Vec<UnlinkedFile>,
}

/// One unlinked file; `live` is relative to `data_path`.
#[derive(Debug, Deserialize)]
struct UnlinkedFile {
    data_path: PathBuf,
    live: PathBuf,
    size: u64,
    mode: u32,
    mtime_ns: i64,
    inode: u64,
    hash: ContentHash,
}

/// Answers, for the files of one folder (the folder's live path, and each file's live path and
/// identity), the hash of each one the journal vouches for.
type Vouch<'a> = &'a (
        dyn Fn(&Path, &[(PathBuf, FileIdentity)]) -> Result<Vec<Option<ContentHash>>, SnapshotError>
            + Sync
    );

/// Takes a `dir` snapshot, leaving unlinked the files `unchanged` vouches for; its list is
/// written to the state folder as the walk goes. On failure removes the tag's folders and list.
pub(crate) async fn create(
    settings: &Settings,
    pre_hook: Option<&str>,
    post_hook: Option<&str>,
    tag: &str,
    unchanged: Option<&UnchangedFiles>,
) -> Result<FileList, SnapshotError> {
    let data_paths = settings.data_paths.clone();
    let owned_tag = tag.to_string();
    tokio::task::spawn_blocking(move || claim_tag_folders(&data_paths, &owned_tag)).await??;
    let result = hooks_and_links(settings, pre_hook, post_hook, tag, unchanged).await;
    if result.is_err() {
        let data_paths = settings.data_paths.clone();
        let state_dir = settings.state_dir.clone();
        let tag = tag.to_string();
        tokio::task::spawn_blocking(move || {
            discard_tag_folders(&data_paths, &tag);
            if let Err(error) = list::remove(&state_dir, &tag) {
                tracing::error!(%error, "remove the file list of a failed snapshot");
            }
        })
        .await?;
    }
    result
}

async fn hooks_and_links(
    settings: &Settings,
    pre_hook: Option<&str>,
    post_hook: Option<&str>,
    tag: &str,
    unchanged: Option<&UnchangedFiles>,
) -> Result<FileList, SnapshotError> {
    if let Some(pre_hook) = pre_hook {
        shell::run(ShellStep::PreHook, pre_hook, tag).await?;
    }
    let data_paths = settings.data_paths.clone();
    let state_dir = settings.state_dir.clone();
    let owned_tag = tag.to_string();
    let unchanged = unchanged.cloned();
    let unchanged_location = unchanged
        .as_ref()
        .map(|unchanged| unchanged.location_id.clone());
    // The walk's lines belong to the snapshot's span (a blocking thread does not inherit it).
    let span = tracing::Span::current();
    let linked = tokio::task::spawn_blocking(move || {
        let _span = span.enter();
        let started = Instant::now();
        let timings = WalkTimings::default();
        // What the location holds, as the journal knows it, read once for the whole walk.
        let known = unchanged
            .as_ref()
            .map(|unchanged| {
                let asked = Instant::now();
                let known = unchanged
                    .journal
                    .known_objects_blocking(&unchanged.location_id);
                WalkTimings::add(&timings.journal_ns, asked);
                known
            })
            .transpose()?;
        let vouch = unchanged.zip(known).map(|(unchanged, known)| {
            let timings = &timings;
            move |folder: &Path, batch: &[(PathBuf, FileIdentity)]| {
                let asked = Instant::now();
                let found = unchanged.journal.folder_file_hashes_blocking(folder, batch);
                WalkTimings::add(&timings.journal_ns, asked);
                Ok(found?
                    .into_iter()
                    .map(|found| found.filter(|hash| known.contains(hash)))
                    .collect())
            }
        });
        let writer = ListWriter::create(&state_dir, &owned_tag, unchanged_location.as_deref())?;
        let writer = std::sync::Mutex::new(writer);
        let linked = link_data_paths(
            &data_paths,
            &owned_tag,
            vouch.as_ref().map(|vouch| vouch as Vouch<'_>),
            &timings,
            &writer,
        );
        let writer = writer.into_inner().unwrap_or_else(|e| e.into_inner());
        let linked = match linked {
            Ok(()) => writer.finish(),
            Err(error) => {
                writer.discard();
                Err(error)
            }
        };
        // Where a snapshot's time goes, for operators and the bench: the walk's wall time, and
        // the time its walkers spent in each kind of call, summed over them.
        tracing::info!(
            walk_ms = started.elapsed().as_millis() as u64,
            stat_ms = WalkTimings::millis(&timings.stat_ns),
            link_ms = WalkTimings::millis(&timings.link_ns),
            journal_ms = WalkTimings::millis(&timings.journal_ns),
            walkers = WALKERS,
            "snapshot walked"
        );
        linked
    })
    .await
    .map_err(SnapshotError::from)
    .and_then(|linked| linked);
    let post = match post_hook {
        Some(post_hook) => shell::run(ShellStep::PostHook, post_hook, tag).await,
        None => Ok(()),
    };
    match (linked, post) {
        (Ok(files), Ok(())) => Ok(files),
        (Ok(_), Err(post_error)) => Err(post_error),
        (Err(link_error), post) => {
            if let Err(post_error) = post {
                // The linking error is the one returned; this one needs a person all the same,
                // since the database may still be paused by the pre-hook.
                tracing::error!(error = %post_error, "post-hook failed after linking failed");
            }
            Err(link_error)
        }
    }
}

/// Hard-links every regular file of every data path into its snapshot folder and describes the
/// links into `list`, except the files `vouch` vouches for, described from the live file. Files
/// that vanish before they are linked are skipped.
fn link_data_paths(
    data_paths: &[PathBuf],
    tag: &str,
    vouch: Option<Vouch<'_>>,
    timings: &WalkTimings,
    list: &std::sync::Mutex<ListWriter>,
) -> Result<(), SnapshotError> {
    for (index, data_path) in data_paths.iter().enumerate() {
        link_tree(
            index,
            data_path,
            &tag_folder(data_path, tag),
            vouch,
            timings,
            list,
        )?;
    }
    Ok(())
}

/// Files a walker describes before it adds them to the list (under its lock).
const LISTED_AT_ONCE: usize = 1024;

/// Adds a walker's files to the list once there are enough of them (`all`: whatever there is).
fn add_to_list(
    list: &std::sync::Mutex<ListWriter>,
    files: &mut Vec<SnapshotFile>,
    all: bool,
) -> Result<(), SnapshotError> {
    if files.len() >= LISTED_AT_ONCE || all && !files.is_empty() {
        list.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .add(files)?;
        files.clear();
    }
    Ok(())
}

/// Nanoseconds the walkers spent in each kind of call, summed over them.
#[derive(Debug, Default)]
struct WalkTimings {
    stat_ns: AtomicU64,
    link_ns: AtomicU64,
    journal_ns: AtomicU64,
}

impl WalkTimings {
    fn add(counter: &AtomicU64, since: Instant) {
        let elapsed = u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX);
        counter.fetch_add(elapsed, Ordering::Relaxed);
    }

    fn millis(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed) / 1_000_000
    }
}

/// Threads that walk a data path's folders at once: on a cold cache the walk waits on the
/// disk for every folder and inode, and several walkers keep several reads in flight.
const WALKERS: usize = 4;

/// A folder still to walk: its path below the data path, and where to open it and its mirror.
struct Pending {
    relative: PathBuf,
    place: PendingPlace,
}

/// Where a pending folder is opened from.
enum PendingPlace {
    /// A data path's root and its mirror, opened.
    Root(OwnedFd, OwnedFd),
    /// The folder `name` found in a walked folder whose descriptors (of it and its mirror) it
    /// shares with its siblings: it is opened when it is walked, not when it is found, so a
    /// folder of ten thousand subfolders holds two descriptors, not twenty thousand (which ran
    /// a node of a million files out of descriptors).
    Below {
        parent: Arc<(OwnedFd, OwnedFd)>,
        name: CString,
    },
}

/// The folders left to walk, shared by the walkers.
struct WalkQueue {
    state: std::sync::Mutex<WalkState>,
    changed: std::sync::Condvar,
}

struct WalkState {
    folders: Vec<Pending>,
    /// Folders taken and not finished: more may come from them.
    busy: usize,
    failed: Option<SnapshotError>,
}

impl WalkQueue {
    /// The next folder to walk; `None` once every folder is walked or a walker failed.
    fn take(&self) -> Option<Pending> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if state.failed.is_some() {
                return None;
            }
            if let Some(folder) = state.folders.pop() {
                state.busy += 1;
                return Some(folder);
            }
            if state.busy == 0 {
                return None;
            }
            state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Stops the walk with `error` (unless one stopped it already).
    fn fail(&self, error: SnapshotError) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.failed.get_or_insert(error);
        self.changed.notify_all();
    }

    /// Ends the walk of one folder: the folders found below it join the queue, or its error
    /// stops the walk.
    fn done(&self, result: Result<Vec<Pending>, SnapshotError>) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.busy -= 1;
        match result {
            Ok(found) => state.folders.extend(found),
            Err(error) => {
                state.failed.get_or_insert(error);
            }
        }
        self.changed.notify_all();
    }
}

/// Mirrors the folders of `data_path` under `snapshot_root` and hard-links every regular file
/// into them, describing each link into `list`, with [`WALKERS`] threads. Each walker holds a descriptor of
/// the folder it reads and of its mirror, so each link and `stat` resolves one name instead of a
/// whole path (a snapshot of thousands of files spent most of its time walking paths). Like
/// [`regular_files`], it never follows symbolic links, skips the agent's own folders at the root,
/// and skips what vanishes meanwhile.
fn link_tree(
    index: usize,
    data_path: &Path,
    snapshot_root: &Path,
    vouch: Option<Vouch<'_>>,
    timings: &WalkTimings,
    list: &std::sync::Mutex<ListWriter>,
) -> Result<(), SnapshotError> {
    let open_root = |path: &Path| {
        rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|errno| SnapshotError::file("read folder", path, errno.into()))
    };
    let queue = WalkQueue {
        state: std::sync::Mutex::new(WalkState {
            folders: vec![Pending {
                relative: PathBuf::new(),
                place: PendingPlace::Root(open_root(data_path)?, open_root(snapshot_root)?),
            }],
            busy: 0,
            failed: None,
        }),
        changed: std::sync::Condvar::new(),
    };
    std::thread::scope(|scope| {
        let walkers: Vec<_> = (0..WALKERS)
            .map(|_| {
                scope.spawn(|| {
                    let mut files = Vec::new();
                    while let Some(folder) = queue.take() {
                        let result = link_folder(
                            index,
                            data_path,
                            snapshot_root,
                            vouch,
                            timings,
                            folder,
                            &mut files,
                        )
                        .and_then(|found| {
                            add_to_list(list, &mut files, false)?;
                            Ok(found)
                        });
                        queue.done(result);
                    }
                    if let Err(error) = add_to_list(list, &mut files, true) {
                        queue.fail(error);
                    }
                })
            })
            .collect();
        walkers
            .into_iter()
            .map(|walker| walker.join())
            .collect::<Result<Vec<_>, _>>()
    })
    .map_err(|_| {
        SnapshotError::file(
            "walk",
            data_path,
            io::Error::other("a walker thread panicked"),
        )
    })?;
    let state = queue.state.into_inner().unwrap_or_else(|e| e.into_inner());
    match state.failed {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

/// Flags of a folder opened during the walk: never through a symbolic link.
fn folder_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

/// Walks one folder: mirrors the folders in it (returned, to be walked) and links or describes
/// its files into `files`.
fn link_folder(
    index: usize,
    data_path: &Path,
    snapshot_root: &Path,
    vouch: Option<Vouch<'_>>,
    timings: &WalkTimings,
    pending: Pending,
    files: &mut Vec<SnapshotFile>,
) -> Result<Vec<Pending>, SnapshotError> {
    let relative_folder = pending.relative;
    let here = match pending.place {
        PendingPlace::Root(source, mirror) => Arc::new((source, mirror)),
        PendingPlace::Below { parent, name } => {
            match open_below(&parent, &name, data_path, snapshot_root, &relative_folder)? {
                Some(opened) => Arc::new(opened),
                // Gone, or replaced by something else since it was listed.
                None => return Ok(Vec::new()),
            }
        }
    };
    let (source, mirror) = (&here.0, &here.1);
    let mut folders = Vec::new();
    {
        let at_root = relative_folder.as_os_str().is_empty();
        let folder_error = |action: &'static str, errno: Errno| {
            SnapshotError::file(action, data_path.join(&relative_folder), errno.into())
        };
        let mut entries = Dir::read_from(source).map_err(|e| folder_error("read folder", e))?;
        let mut regular_files = Vec::new();
        while let Some(entry) = entries.read() {
            let entry = entry.map_err(|e| folder_error("read folder", e))?;
            let name = entry.file_name();
            let name_bytes = name.to_bytes();
            if name_bytes == b"." || name_bytes == b".." {
                continue;
            }
            let os_name = OsStr::from_bytes(name_bytes);
            if at_root && is_reserved(os_name) {
                continue;
            }
            let relative = relative_folder.join(os_name);
            let kind = match entry.file_type() {
                FileType::Unknown => {
                    match rustix::fs::statat(source, name, AtFlags::SYMLINK_NOFOLLOW) {
                        Ok(stat) => FileType::from_raw_mode(stat.st_mode),
                        Err(Errno::NOENT) => continue,
                        Err(errno) => {
                            return Err(SnapshotError::file(
                                "read file type",
                                data_path.join(&relative),
                                errno.into(),
                            ));
                        }
                    }
                }
                kind => kind,
            };
            match kind {
                FileType::Directory => folders.push(Pending {
                    relative,
                    place: PendingPlace::Below {
                        parent: Arc::clone(&here),
                        name: name.to_owned(),
                    },
                }),
                FileType::RegularFile => regular_files.push(name.to_owned()),
                other => {
                    tracing::warn!(
                        path = %data_path.join(&relative).display(),
                        kind = ?other,
                        "skip a file that is not a regular file"
                    );
                }
            }
        }
        let folder = Folder {
            index,
            live: data_path.join(&relative_folder),
            mirror_path: snapshot_root.join(&relative_folder),
            source,
            mirror,
            timings,
        };
        match vouch {
            Some(vouch) => folder.snapshot_unless_vouched(regular_files, vouch, files)?,
            None => {
                for name in regular_files {
                    folder.link(&name, files)?;
                }
            }
        }
    }
    Ok(folders)
}

/// Opens the folder `name` of `parent` without following links, and creates and opens its
/// mirror; `None` when it is gone or no longer a folder.
fn open_below(
    parent: &(OwnedFd, OwnedFd),
    name: &CString,
    data_path: &Path,
    snapshot_root: &Path,
    relative: &Path,
) -> Result<Option<(OwnedFd, OwnedFd)>, SnapshotError> {
    let below = match rustix::fs::openat(&parent.0, name, folder_flags(), Mode::empty()) {
        Ok(below) => below,
        Err(Errno::NOENT | Errno::LOOP | Errno::NOTDIR) => return Ok(None),
        Err(errno) => {
            return Err(SnapshotError::file(
                "read folder",
                data_path.join(relative),
                errno.into(),
            ));
        }
    };
    let mirror_error = |errno: Errno| {
        SnapshotError::file("create folder", snapshot_root.join(relative), errno.into())
    };
    match rustix::fs::mkdirat(&parent.1, name, Mode::from_raw_mode(0o777)) {
        Ok(()) | Err(Errno::EXIST) => {}
        Err(errno) => return Err(mirror_error(errno)),
    }
    let mirrored =
        rustix::fs::openat(&parent.1, name, folder_flags(), Mode::empty()).map_err(mirror_error)?;
    Ok(Some((below, mirrored)))
}

/// One folder of the live tree and its mirror in the snapshot.
struct Folder<'a> {
    index: usize,
    live: PathBuf,
    mirror_path: PathBuf,
    source: &'a OwnedFd,
    mirror: &'a OwnedFd,
    timings: &'a WalkTimings,
}

impl Folder<'_> {
    /// Hard-links the file `name` into the mirror and describes the link; skips a file that
    /// vanished.
    fn link(&self, name: &CString, files: &mut Vec<SnapshotFile>) -> Result<(), SnapshotError> {
        let os_name = OsStr::from_bytes(name.as_bytes());
        let linking = Instant::now();
        let linked = rustix::fs::linkat(self.source, name, self.mirror, name, AtFlags::empty());
        WalkTimings::add(&self.timings.link_ns, linking);
        match linked {
            Ok(()) => {}
            Err(Errno::NOENT) => {
                tracing::debug!(path = %self.live.join(os_name).display(), "file vanished before it was linked");
                return Ok(());
            }
            Err(errno) => {
                return Err(SnapshotError::file(
                    "hard-link",
                    self.live.join(os_name),
                    errno.into(),
                ));
            }
        }
        let stating = Instant::now();
        let stat = rustix::fs::statat(self.mirror, name, AtFlags::SYMLINK_NOFOLLOW);
        WalkTimings::add(&self.timings.stat_ns, stating);
        let stat = stat.map_err(|errno| {
            SnapshotError::file(
                "read metadata",
                self.mirror_path.join(os_name),
                errno.into(),
            )
        })?;
        files.push(describe(
            self.index,
            self.live.join(os_name),
            self.mirror_path.join(os_name),
            &stat,
        ));
        Ok(())
    }

    /// Describes the files `vouch` vouches for as they are, unlinked, and links the others.
    fn snapshot_unless_vouched(
        &self,
        names: Vec<CString>,
        vouch: Vouch<'_>,
        files: &mut Vec<SnapshotFile>,
    ) -> Result<(), SnapshotError> {
        let mut candidates = Vec::with_capacity(names.len());
        for name in names {
            let live_path = self.live.join(OsStr::from_bytes(name.as_bytes()));
            let stating = Instant::now();
            let stat = rustix::fs::statat(self.source, &name, AtFlags::SYMLINK_NOFOLLOW);
            WalkTimings::add(&self.timings.stat_ns, stating);
            let stat = match stat {
                Ok(stat) => stat,
                Err(Errno::NOENT) => continue,
                Err(errno) => {
                    return Err(SnapshotError::file(
                        "read metadata",
                        live_path,
                        errno.into(),
                    ));
                }
            };
            if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
                // Replaced since it was listed: linking says what is wrong with it.
                self.link(&name, files)?;
                continue;
            }
            candidates.push((
                name,
                describe(self.index, live_path.clone(), live_path, &stat),
            ));
        }
        let identities: Vec<_> = candidates
            .iter()
            .map(|(_, file)| (file.live_path.clone(), FileIdentity::from(file)))
            .collect();
        let hashes = vouch(&self.live, &identities)?;
        for ((name, mut file), hash) in candidates.into_iter().zip(hashes) {
            match hash {
                Some(hash) => {
                    file.stored_hash = Some(hash);
                    files.push(file);
                }
                None => self.link(&name, files)?,
            }
        }
        Ok(())
    }
}

fn mtime_ns(stat: &Stat) -> i64 {
    stat.st_mtime
        .saturating_mul(1_000_000_000)
        .saturating_add(stat.st_mtime_nsec as i64)
}

fn describe(index: usize, live_path: PathBuf, snapshot_path: PathBuf, stat: &Stat) -> SnapshotFile {
    SnapshotFile {
        data_path_index: index,
        live_path,
        snapshot_path,
        size: u64::try_from(stat.st_size).unwrap_or(0),
        mode: stat.st_mode & 0o7777,
        mtime_ns: mtime_ns(stat),
        inode: stat.st_ino,
        stored_hash: None,
    }
}

/// Lists the files of an existing `dir` snapshot, with the location the files it left unlinked
/// are in: from its file list, or (a snapshot taken by an agent that wrote none) the files
/// linked in its folders and those its record of unlinked files names.
pub(crate) fn load(
    settings: &Settings,
    tag: &str,
) -> Result<(FileList, Option<String>), SnapshotError> {
    if let Some((files, unlinked_for)) = list::load(&settings.state_dir, tag)? {
        let mut any_folder = false;
        for data_path in &settings.data_paths {
            any_folder |= is_folder(&tag_folder(data_path, tag))?;
        }
        if !any_folder {
            return Err(SnapshotError::NotFound {
                tag: tag.to_string(),
            });
        }
        let unlinked_for = unlinked_for.filter(|_| files.totals().unlinked > 0);
        return Ok((files, unlinked_for));
    }
    let (files, unlinked_for) = load_recorded(settings, tag)?;
    Ok((super::in_memory(files), unlinked_for))
}

/// [`load`] for a snapshot an older agent took: its links, and its record of unlinked files.
fn load_recorded(
    settings: &Settings,
    tag: &str,
) -> Result<(Vec<SnapshotFile>, Option<String>), SnapshotError> {
    let mut found = false;
    let mut files = Vec::new();
    for (index, data_path) in settings.data_paths.iter().enumerate() {
        let folder = tag_folder(data_path, tag);
        if !is_folder(&folder)? {
            continue;
        }
        found = true;
        for relative in regular_files(&folder)? {
            files.push(describe_listed(
                index,
                data_path.join(&relative),
                folder.join(&relative),
            )?);
        }
    }
    if !found {
        return Err(SnapshotError::NotFound {
            tag: tag.to_string(),
        });
    }
    let path = unlinked_record_path(&settings.state_dir, tag);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok((files, None)),
        Err(source) => return Err(SnapshotError::file("read snapshot record", path, source)),
    };
    let record: UnlinkedRecord =
        serde_json::from_slice(&bytes).map_err(|error| SnapshotError::Record {
            path: path.clone(),
            reason: error.to_string(),
        })?;
    for file in record.files {
        let index = recorded_data_path(settings, &file.data_path, &path)?;
        let live_path = file.data_path.join(&file.live);
        files.push(SnapshotFile {
            data_path_index: index,
            live_path: live_path.clone(),
            snapshot_path: live_path,
            size: file.size,
            mode: file.mode,
            mtime_ns: file.mtime_ns,
            inode: file.inode,
            stored_hash: Some(file.hash),
        });
    }
    Ok((files, Some(record.location_id)))
}

/// Removes the record of the snapshot `tag`'s unlinked files; returns whether there was one.
pub(crate) fn remove_unlinked_record(state_dir: &Path, tag: &str) -> Result<bool, SnapshotError> {
    remove_record(&unlinked_record_path(state_dir, tag))
}
