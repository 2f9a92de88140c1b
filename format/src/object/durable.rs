//! Durability of what was written to a local (`fs`) location: the folders naming a file synced
//! up to the root, and the batched background sync of a writer's objects ([`LocationWriteback`]).
//! Object stores acknowledge a write once it is durable: everything here is a no-op for them.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use opendal::Operator;

use super::local::local_root;
use crate::storage::StorageError;

/// Makes the name of a file just written through `op` durable (a no-op for object stores).
///
/// OpenDAL's fs backend syncs the content of the file it closes, then renames it into place,
/// but syncs no folder: after a power loss the file, or a folder its write created, could be
/// gone although the write returned. A manifest or a backup's commit point must not be: this
/// syncs each folder from the file's up to the location's root, at once.
///
/// Fails when a folder cannot be opened or synced.
pub async fn sync_name(op: &Operator, path: &str) -> Result<(), StorageError> {
    let Some(root) = local_root(op) else {
        return Ok(());
    };
    let folders = folders_of(&root, path);
    tokio::task::spawn_blocking(move || sync_each(&folders))
        .await
        .map_err(io::Error::other)
        .and_then(|synced| synced)
        .map_err(|error| StorageError::local(op, "sync the folders of", path, error))
}

/// The folders holding `path` under `root`, from its own up to `root`.
fn folders_of(root: &Path, path: &str) -> Vec<PathBuf> {
    let mut folders = Vec::new();
    let mut relative = Path::new(path.trim_start_matches('/')).parent();
    while let Some(folder) = relative {
        folders.push(root.join(folder));
        relative = folder.parent();
    }
    folders
}

/// Bytes stored into a local folder after which [`LocationWriteback`] starts a background sync.
const WRITEBACK_BYTES: u64 = 64 * 1024 * 1024;
/// Up to this many objects, [`LocationWriteback::finish`] syncs each (and its folder) rather
/// than the whole filesystem.
const WRITEBACK_FEW_OBJECTS: usize = 64;

/// Makes the objects one writer stores into a location durable, overlapping the disk's work with
/// the writer's.
///
/// Objects land in a local folder without a sync each (see `local_root`). Syncing the whole
/// filesystem once at the end left the disk idle while objects were written, then the writer
/// idle while the disk wrote them all; instead, every `WRITEBACK_BYTES` stored start a `syncfs`
/// in the background, so [`LocationWriteback::finish`] only waits for the tail. A writer that
/// stored only a few objects (an incremental backup) syncs just those files and their folders:
/// a `syncfs` would also wait for everything else dirty on the filesystem. Object stores
/// acknowledge a write once it is durable: there is nothing to do for them.
#[derive(Debug)]
pub struct LocationWriteback {
    root: Option<PathBuf>,
    state: Mutex<WritebackState>,
}

#[derive(Debug)]
struct WritebackState {
    unsynced_bytes: u64,
    /// Objects stored while there are few of them; `None` once there are more than
    /// [`WRITEBACK_FEW_OBJECTS`] (or a background sync ran): the filesystem is synced instead.
    few: Option<Vec<PathBuf>>,
    in_flight: Option<tokio::task::JoinHandle<io::Result<()>>>,
}

impl Default for WritebackState {
    fn default() -> Self {
        Self {
            unsynced_bytes: 0,
            few: Some(Vec::new()),
            in_flight: None,
        }
    }
}

impl LocationWriteback {
    /// A writeback for objects stored through `op`.
    pub fn new(op: &Operator) -> Self {
        Self {
            root: local_root(op),
            state: Mutex::new(WritebackState::default()),
        }
    }

    /// Records that `bytes` were stored at `object_path` (relative to the location's root).
    /// Must be called from within a tokio runtime.
    pub fn stored(&self, object_path: &str, bytes: u64) {
        let Some(root) = &self.root else {
            return;
        };
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(few) = &mut state.few {
            if few.len() < WRITEBACK_FEW_OBJECTS {
                few.push(root.join(object_path));
            } else {
                state.few = None;
            }
        }
        state.unsynced_bytes += bytes;
        let idle = state
            .in_flight
            .as_ref()
            .is_none_or(tokio::task::JoinHandle::is_finished);
        if state.unsynced_bytes >= WRITEBACK_BYTES && idle {
            state.unsynced_bytes = 0;
            state.few = None;
            let root = root.clone();
            // A finished earlier sync's result does not matter: the final one covers its data.
            state.in_flight = Some(tokio::task::spawn_blocking(move || sync_folder_fs(&root)));
        }
    }

    /// Waits until everything recorded is durable.
    ///
    /// Fails when a file, a folder or the filesystem cannot be synced.
    pub async fn finish(&self) -> io::Result<()> {
        let Some(root) = self.root.clone() else {
            return Ok(());
        };
        let (in_flight, few) = {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            (state.in_flight.take(), state.few.take())
        };
        if let Some(in_flight) = in_flight {
            // Its data is covered by the sync below; only a join failure is worth reporting.
            let _ = in_flight.await.map_err(io::Error::other)?;
        }
        tokio::task::spawn_blocking(move || {
            let Some(few) = few else {
                return sync_folder_fs(&root);
            };
            // The object's folder holds its name; the folder above, the folder's (when this
            // upload created it).
            let mut folders = std::collections::BTreeSet::new();
            for object in &few {
                if let Some(folder) = object.parent() {
                    folders.insert(folder.to_path_buf());
                    if let Some(above) = folder.parent() {
                        folders.insert(above.to_path_buf());
                    }
                }
            }
            // Objects and the folders naming them, all in one round: the upload reports them
            // durable only once every sync returned, whatever the order they completed in.
            let mut paths = few;
            paths.extend(folders);
            sync_each(&paths)
        })
        .await
        .map_err(io::Error::other)?
    }
}

/// `fsync` of each file or folder, by several threads at once: each waits on the disk rather than
/// the CPU, and the disk serves (and merges the cache flushes of) many at a time.
fn sync_each(paths: &[PathBuf]) -> io::Result<()> {
    const SYNC_THREADS: usize = 16;
    let per_thread = paths.len().div_ceil(SYNC_THREADS).max(1);
    std::thread::scope(|scope| {
        let workers: Vec<_> = paths
            .chunks(per_thread)
            .map(|chunk| {
                scope.spawn(move || {
                    chunk
                        .iter()
                        .try_for_each(|path| File::open(path)?.sync_all())
                })
            })
            .collect();
        workers.into_iter().try_for_each(|worker| {
            worker
                .join()
                .map_err(|_| io::Error::other("a sync thread panicked"))?
        })
    })
}

/// `syncfs` of the filesystem holding `folder`.
fn sync_folder_fs(folder: &Path) -> io::Result<()> {
    let folder = File::open(folder)?;
    rustix::fs::syncfs(&folder).map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::layout::ContentHash;
    use crate::object::tests::*;
    use crate::object::{UploadOptions, upload_bytes};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writeback_syncs_few_objects_one_by_one_and_many_by_filesystem() {
        let fixture = fixture();
        // A few objects: each, and its folders, synced at the end.
        let few = LocationWriteback::new(&fixture.op);
        for index in 0..3u8 {
            let content = random_bytes(1000, index);
            let hash = ContentHash::of(&content);
            let object = format!("objects/{}/{hash}", &hash.to_hex()[..2]);
            let outcome = upload_bytes(
                &fixture.op,
                &object,
                Bytes::from(content),
                &UploadOptions::default(),
            )
            .await
            .expect("upload");
            few.stored(&object, outcome.stored_bytes);
        }
        few.finish().await.expect("sync few");

        // Past the threshold, a sync of the filesystem starts in the background.
        let many = LocationWriteback::new(&fixture.op);
        many.stored("objects/00/large", WRITEBACK_BYTES);
        assert!(
            many.state.lock().expect("state").in_flight.is_some(),
            "a background sync started"
        );
        many.finish().await.expect("sync many");
        // A missing object fails the sync of few objects: nothing is silently skipped.
        let missing = LocationWriteback::new(&fixture.op);
        missing.stored("objects/00/missing", 10);
        assert!(missing.finish().await.is_err());

        // Object stores are durable on acknowledgement: nothing to do.
        let remote = LocationWriteback::new(&s3_operator());
        remote.stored("objects/00/missing", WRITEBACK_BYTES);
        remote.finish().await.expect("nothing to sync");
    }

    #[test]
    fn a_written_file_has_each_folder_up_to_the_root_synced() {
        let root = Path::new("/loc");
        assert_eq!(
            folders_of(root, "clusters/c/backups/b/backup.json"),
            [
                "/loc/clusters/c/backups/b",
                "/loc/clusters/c/backups",
                "/loc/clusters/c",
                "/loc/clusters",
                "/loc/",
            ]
            .map(PathBuf::from)
        );
        assert_eq!(folders_of(root, "/coffer.json"), [PathBuf::from("/loc/")]);
    }

    #[tokio::test]
    async fn syncing_a_written_name_needs_its_folders_and_skips_object_stores() {
        let fixture = fixture();
        let path = "clusters/c/backups/b/backup.json";
        fixture.op.write(path, b"{}".to_vec()).await.expect("write");
        sync_name(&fixture.op, path).await.expect("sync");
        // A folder that is not there is an error, not a silent success.
        let error = sync_name(&fixture.op, "clusters/gone/backup.json")
            .await
            .expect_err("no such folder");
        assert!(error.is_not_found(), "{error}");
        sync_name(&s3_operator(), path)
            .await
            .expect("nothing to sync on an object store");
    }
}
