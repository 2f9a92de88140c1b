//! Downloading: each needed content fetched once into the staging folder, verified, and
//! committed in durable batches (see the phases in the parent module).
use std::collections::HashSet;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use coffer_format::ContentHash;
use coffer_format::object::{DownloadError, download_object_sized};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::reserved::{STAGING_FOLDER, staging_folder};

use super::objects::{ContentId, Cursor};
use super::{Plan, RestoreFailure, Shared, blocking};

/// Creates the staging folders of the data paths that receive files (private to the agent).
pub(super) fn create_staging_folders(shared: &Shared, plan: &Plan) -> Result<(), RestoreFailure> {
    let used: HashSet<usize> = plan
        .objects()
        .flat_map(|(_, object)| {
            object
                .needs
                .iter()
                .map(|need| need.data_path)
                .collect::<Vec<_>>()
        })
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

/// Verified parts waiting for the committer, in messages of up to [`BATCH_OBJECTS`] parts:
/// downloads wait when this many are queued, so a committer slower than the downloads holds
/// them back instead of a queue that grows with the number of files.
const COMMIT_QUEUE: usize = 64;

/// A verified download (or copy) waiting to be committed: `<hash>.part` in its data path's
/// staging folder, to be named `<hash>`. No paths: they are derived when committed (two per
/// part were most of a million-file restore's queue).
#[derive(Debug)]
pub(super) struct StagedPart {
    pub(super) data_path: usize,
    pub(super) hash: ContentHash,
    /// Files of the plan it serves, and its size: counted as done once committed.
    pub(super) files: u64,
    pub(super) size: u64,
}

/// The name a content is downloaded to in a staging folder, until it is committed.
pub(super) fn part_name(hex: &str) -> String {
    format!("{hex}.part")
}

pub(super) async fn download_all(
    shared: &Arc<Shared>,
    plan: &Arc<Plan>,
    cancel: &CancellationToken,
) -> Result<(), RestoreFailure> {
    let batches = fetches(shared, plan.clone());
    let (commit, to_commit) = mpsc::channel(COMMIT_QUEUE);
    // Ends when every sender is gone (the downloads finished, failed or were cancelled), after
    // committing what was verified: a later attempt does not fetch it again.
    let committer = tokio::spawn(commit_staged(shared.clone(), to_commit));
    let mut results = futures::stream::iter(batches)
        .map(|batch| {
            let shared = shared.clone();
            let plan = plan.clone();
            let cancel = cancel.clone();
            let commit = commit.clone();
            async move {
                let staged = async {
                    match batch {
                        Fetch::One(id) => stage_object(&shared, &plan, id, &commit).await,
                        Fetch::Batch(ids) => {
                            stage_small_objects(&shared, &plan, ids, &commit).await
                        }
                        Fetch::Pack(ids) => {
                            super::packs::stage_pack(&shared, &plan, ids, &commit).await
                        }
                    }
                };
                tokio::select! {
                    result = staged => result,
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
    mut parts: mpsc::Receiver<Vec<StagedPart>>,
) -> Result<(), RestoreFailure> {
    let folders: Arc<[PathBuf]> = (0..shared.job.data_paths.len())
        .map(|data_path| shared.staging_folder(data_path))
        .collect();
    let mut pending: Vec<StagedPart> = Vec::new();
    let mut pending_bytes = 0u64;
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        // `None`: the deadline passed; `Some(None)`: no more parts will come.
        let received = match deadline {
            None => Some(parts.recv().await),
            Some(at) => tokio::time::timeout_at(at, parts.recv()).await.ok(),
        };
        let timed_out = received.is_none();
        let closed = matches!(received, Some(None));
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
            // What queued while the last batch was committed joins this one: one sync for all
            // (a queue closed meanwhile is found closed by the next receive).
            while let Ok(batch) = parts.try_recv() {
                pending.extend(batch);
            }
            let batch = std::mem::take(&mut pending);
            pending_bytes = 0;
            deadline = None;
            let data_paths = shared.job.data_paths.clone();
            let folders = folders.clone();
            let batch = blocking(move || commit_batch(&data_paths, &folders, batch)).await?;
            for part in batch {
                shared.counters.files.done(part.files, part.size, false);
            }
        }
        if closed {
            return Ok(());
        }
    }
}

/// Syncs the filesystem of each data path the batch is staged in, then names each part (in the
/// staging folder `folders[data_path]`).
fn commit_batch(
    data_paths: &[PathBuf],
    folders: &[PathBuf],
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
        let folder = &folders[part.data_path];
        let hex = part.hash.to_hex();
        let from = folder.join(part_name(&hex));
        fs::rename(&from, folder.join(&hex)).map_err(RestoreFailure::local("rename", &from))?;
    }
    Ok(batch)
}

/// Stages one content in every data path that needs it: downloaded once (unless a verified
/// copy is staged somewhere already), copied into the others, then handed to the committer.
async fn stage_object(
    shared: &Shared,
    plan: &Plan,
    id: ContentId,
    commit: &mpsc::Sender<Vec<StagedPart>>,
) -> Result<(), RestoreFailure> {
    let job = &shared.job;
    let object = plan.object(id);
    let hash = object.hash;
    let file = shared.target(plan.files.paths(), &plan.files[object.first_file]);
    let hex = hash.to_hex();
    let mut source = object
        .needs
        .iter()
        .find(|need| need.staged)
        .map(|need| shared.staging_folder(need.data_path).join(&hex));
    let mut parts = Vec::new();
    for need in object.needs.iter().filter(|need| !need.staged) {
        let folder = shared.staging_folder(need.data_path);
        let part = folder.join(part_name(&hex));
        match &source {
            None => {
                let object_path = shared.layout.object(&hash);
                let downloaded = download_object_sized(
                    &job.operator,
                    &object_path,
                    &part,
                    hash,
                    Some(object.size),
                    &job.keys,
                    job.limiter.as_ref(),
                )
                .await
                .map_err(|source| download_failure(shared, file.clone(), hash, source))?;
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
        source = Some(part);
        parts.push(StagedPart {
            data_path: need.data_path,
            hash,
            files: need.files,
            size: object.size,
        });
    }
    hand_to_committer(shared, commit, parts).await
}

/// Hands verified parts to the committer, which has stopped only if it failed (its error is
/// the one reported).
pub(super) async fn hand_to_committer(
    shared: &Shared,
    commit: &mpsc::Sender<Vec<StagedPart>>,
    parts: Vec<StagedPart>,
) -> Result<(), RestoreFailure> {
    commit.send(parts).await.map_err(|_| RestoreFailure::Local {
        action: "commit",
        path: shared.staging_folder(0),
        source: io::Error::other("the committer stopped"),
    })
}

/// Contents up to this size, from a local folder and needed in one data path, are fetched in
/// batches...
const BATCHED_OBJECT: u64 = 64 * 1024;
/// ... of at most this many.
const BATCH_OBJECTS: usize = 64;

/// One unit of the download phase's work.
enum Fetch {
    One(ContentId),
    /// Small contents fetched, decoded, verified and staged in one blocking call (a blocking
    /// call each made thread hand-overs most of the work of restoring small files).
    Batch(Vec<ContentId>),
    /// Contents of one pack, in the order they lie in it: the pack fetched once for all.
    Pack(Vec<ContentId>),
}

/// The contents to fetch: first the packed ones, a pack at a time (see
/// [`super::packs::by_pack`]); then the others in the order of their first files (the order
/// they were backed up in, and the order files are placed in), taken as the downloads go
/// rather than listed first (a list of a million contents and another of their batches were
/// most of a large restore's memory): the small contents of a local location that one data
/// path needs in batches, every other content a unit of its own.
fn fetches(shared: &Shared, plan: Arc<Plan>) -> impl Iterator<Item = Fetch> + Send + 'static {
    let local = coffer_format::object::is_local_folder(&shared.job.operator);
    let packs = super::packs::by_pack(&plan).map(Fetch::Pack);
    let mut cursor = Cursor::default();
    let mut batch = Vec::new();
    let others = std::iter::from_fn(move || {
        while let Some(id) = plan.objects.next(&mut cursor) {
            let object = plan.object(id);
            if object.needs.iter().all(|need| need.staged)
                || plan.files[object.first_file].pack != super::UNPACKED
            {
                continue;
            }
            let batchable = local
                && object.size <= BATCHED_OBJECT
                && object.needs.len() == 1
                && object.needs.iter().all(|need| !need.staged);
            if !batchable {
                return Some(Fetch::One(id));
            }
            batch.push(id);
            if batch.len() == BATCH_OBJECTS {
                return Some(Fetch::Batch(std::mem::take(&mut batch)));
            }
        }
        (!batch.is_empty()).then(|| Fetch::Batch(std::mem::take(&mut batch)))
    });
    packs.chain(others)
}

/// Fetches a batch of small contents into their data path's staging folder in one blocking
/// call, each verified as [`stage_object`] does, then hands them to the committer.
async fn stage_small_objects(
    shared: &Arc<Shared>,
    plan: &Arc<Plan>,
    ids: Vec<ContentId>,
    commit: &mpsc::Sender<Vec<StagedPart>>,
) -> Result<(), RestoreFailure> {
    let worker = shared.clone();
    let plan = plan.clone();
    // What was verified before a content failed is committed all the same: a retry does not
    // fetch it again.
    let (parts, failure) = blocking(move || {
        let job = &worker.job;
        let mut parts = Vec::with_capacity(ids.len());
        for id in ids {
            let object = plan.object(id);
            let hash = object.hash;
            let Some(need) = object.needs.first() else {
                continue;
            };
            let hex = hash.to_hex();
            let folder = worker.staging_folder(need.data_path);
            let part = folder.join(part_name(&hex));
            let downloaded = match coffer_format::object::download_local_object(
                &job.operator,
                &worker.layout.object(&hash),
                &part,
                hash,
                Some(object.size),
                &job.keys,
                job.limiter.as_ref(),
            ) {
                Ok(downloaded) => downloaded,
                Err(source) => {
                    let file = worker.target(plan.files.paths(), &plan.files[object.first_file]);
                    return Ok((parts, Some(download_failure(&worker, file, hash, source))));
                }
            };
            worker
                .counters
                .bytes_downloaded
                .fetch_add(downloaded.stored_bytes, Ordering::Relaxed);
            if downloaded.size != object.size {
                let _ = fs::remove_file(&part);
                let failure = RestoreFailure::SizeMismatch {
                    file: worker.target(plan.files.paths(), &plan.files[object.first_file]),
                    hash,
                    expected: object.size,
                    actual: downloaded.size,
                };
                return Ok((parts, Some(failure)));
            }
            parts.push(StagedPart {
                data_path: need.data_path,
                hash,
                files: need.files,
                size: object.size,
            });
        }
        Ok((parts, None))
    })
    .await?;
    hand_to_committer(shared, commit, parts).await?;
    failure.map_or(Ok(()), Err)
}

/// A failed download of `hash` for `file`, a storage error naming the location.
pub(super) fn download_failure(
    shared: &Shared,
    file: PathBuf,
    hash: ContentHash,
    source: DownloadError,
) -> RestoreFailure {
    RestoreFailure::Download {
        file,
        hash,
        source: Box::new(match source {
            DownloadError::Storage(error) => {
                DownloadError::Storage(error.in_location(&shared.job.location_name))
            }
            other => other,
        }),
    }
}

/// Copies verified staged content into another data path's staging (made durable with its
/// batch).
fn copy_part(from: &Path, to: &Path) -> Result<(), RestoreFailure> {
    let mut source = File::open(from).map_err(RestoreFailure::local("read", from))?;
    let mut dest = File::create(to).map_err(RestoreFailure::local("create", to))?;
    io::copy(&mut source, &mut dest).map_err(RestoreFailure::local("write", to))?;
    Ok(())
}
