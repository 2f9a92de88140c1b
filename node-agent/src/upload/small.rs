//! Files handled in groups rather than one task each. Unchanged files the journal vouches for
//! go straight to the manifest ([`Work::Vouched`]). Small files into a local folder go in
//! batches: each batch of up to [`BATCH_FILES`] new or
//! changed small files is read, hashed and stored in one blocking call
//! ([`store_small_file_locally`] per file). On a node of a hundred thousand small files, handing
//! every file's read, stat and write to a blocking thread of its own cost more CPU in thread
//! switches than the file operations did (perf: a third of the agent's time in the scheduler).
//!
//! Small files into object storage are packed instead ([`super::pack`]): storing them as
//! objects of their own several at a time (64 requests in flight) made 100 000 files to
//! SeaweedFS slower, 102.8 s against 77.8 s, the agent (0.5 ms of CPU a file: two signed
//! requests) and the storage server bound by CPU per request, not by round trips.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use coffer_format::object::store_small_file_locally;
use coffer_format::{ContentHash, PackSlice};

use super::{FileResult, Known, Shared, UploadFailure, read_once};
use crate::snapshot::SnapshotFile;

/// Files up to this size go in batches; larger small files are worth a blocking call each.
pub(super) const BATCHED_FILE: u64 = 64 * 1024;
/// Small files handled by one blocking call at most...
pub(super) const BATCH_FILES: usize = 64;
/// ... and bytes read by it at most (the batch's contents are never held at once: each file
/// is read, stored and dropped before the next).
pub(super) const BATCH_BYTES: u64 = 4 * 1024 * 1024;

/// Unchanged files the journal vouches for, entered in the manifest by one unit of work.
pub(super) const VOUCHED_FILES: usize = 4096;

/// One unit of work of the file tasks.
pub(super) enum Work {
    /// A file on its own (the general path).
    One(SnapshotFile, Known),
    /// Small files of unknown hash for a local folder, handled in one blocking call.
    Batch(Vec<SnapshotFile>),
    /// Small files for object storage, read in one blocking call and packed ([`super::pack`]).
    Pack(Vec<(SnapshotFile, Known)>),
    /// Files of known hash whose objects the journal vouches the location holds (an
    /// incremental backup's unchanged files): nothing to read or store, only to enter in the
    /// manifest. A task per file cost more than the file did (100 000 unchanged files took
    /// 0.4 s that way).
    Vouched(Vec<(SnapshotFile, ContentHash, Option<PackSlice>)>),
}

/// Whether `file` can go in a batch: a real upload into a local folder of a small file whose
/// hash is not known (new, changed, or only probably stored: reading a small file whole costs
/// no more than hashing it, and its object is then looked for in the same call).
pub(super) fn batchable(shared: &Shared, file: &SnapshotFile, known: &Known) -> bool {
    shared.local_root.is_some()
        && !shared.job.dry_run
        && matches!(known, Known::Nothing | Known::ProbablyStored(_))
        && file.size <= BATCHED_FILE
}

/// Groups consecutive batchable files into batches and vouched files into theirs; every other
/// file is a unit of its own.
pub(super) fn plan(shared: &Shared, selected: Vec<SnapshotFile>, known: Vec<Known>) -> Vec<Work> {
    let mut work = Vec::new();
    let mut batch: Vec<SnapshotFile> = Vec::new();
    let mut batch_bytes = 0;
    let mut vouched = Vec::new();
    let mut packed: Vec<(SnapshotFile, Known)> = Vec::new();
    let mut packed_bytes = 0;
    for (file, known) in selected.into_iter().zip(known) {
        if let Known::Stored(hash, slice) = known
            && !shared.job.dry_run
        {
            vouched.push((file, hash, slice));
            if vouched.len() == VOUCHED_FILES {
                work.push(Work::Vouched(std::mem::take(&mut vouched)));
            }
            continue;
        }
        if super::pack::packable(shared, &file, &known) {
            if packed.len() == super::pack::PACK_BATCH_FILES
                || packed_bytes + file.size > super::pack::PACK_BATCH_BYTES && !packed.is_empty()
            {
                work.push(Work::Pack(std::mem::take(&mut packed)));
                packed_bytes = 0;
            }
            packed_bytes += file.size;
            packed.push((file, known));
            continue;
        }
        if !batchable(shared, &file, &known) {
            work.push(Work::One(file, known));
            continue;
        }
        if batch.len() == BATCH_FILES || batch_bytes + file.size > BATCH_BYTES && !batch.is_empty()
        {
            work.push(Work::Batch(std::mem::take(&mut batch)));
            batch_bytes = 0;
        }
        batch_bytes += file.size;
        batch.push(file);
    }
    if !batch.is_empty() {
        work.push(Work::Batch(batch));
    }
    if !packed.is_empty() {
        work.push(Work::Pack(packed));
    }
    if !vouched.is_empty() {
        work.push(Work::Vouched(vouched));
    }
    work
}

/// Enters vouched files in the manifest as they are: counted done and skipped, nothing to
/// learn (the journal knew their hashes and objects already).
pub(super) fn process_vouched(
    shared: &Shared,
    files: Vec<(SnapshotFile, ContentHash, Option<PackSlice>)>,
) -> Vec<FileResult> {
    files
        .into_iter()
        .map(|(file, hash, slice)| {
            shared.counters.files.done(1, file.size, true);
            let mut entry = super::entry(&file, hash);
            entry.packed = slice;
            FileResult {
                entry,
                hashed: None,
                object_present: None,
                packed: None,
            }
        })
        .collect()
}

/// Backs up a batch: one blocking call for all its files, each counted done as it is (files
/// that grew past the small-file limit since they were described go through the general path
/// afterwards).
pub(super) async fn process_batch(
    shared: &Arc<Shared>,
    files: Vec<SnapshotFile>,
) -> Result<Vec<FileResult>, UploadFailure> {
    let Some(root) = shared.local_root.clone() else {
        return Err(UploadFailure::File(
            "a batch of small files for a location that is not a local folder".into(),
        ));
    };
    let worker = shared.clone();
    let done = tokio::task::spawn_blocking(move || {
        let mut results = Vec::with_capacity(files.len());
        let mut grown = Vec::new();
        for file in files {
            let stored = store_small_file_locally(
                &root,
                &file.snapshot_path,
                &worker.options,
                |hash| worker.layout.object(hash),
                |hash| worker.claim_local(*hash),
            )
            .map_err(|error| {
                UploadFailure::File(format!(
                    "read or store {}: {error}",
                    file.snapshot_path.display()
                ))
            })?;
            let Some(stored) = stored else {
                grown.push(file);
                continue;
            };
            if let Some(bytes) = stored.stored_bytes {
                worker.stored(&worker.layout.object(&stored.hash), bytes);
            }
            worker
                .counters
                .bytes_read
                .fetch_add(stored.read_bytes, Ordering::Relaxed);
            results.push(read_once(
                &worker,
                &file,
                stored.hash,
                stored.read_bytes,
                stored.stored_bytes.is_some(),
            ));
        }
        Ok::<_, UploadFailure>((results, grown))
    })
    .await
    .map_err(|error| UploadFailure::File(format!("a batch of small files: {error}")))?;
    let (mut results, grown) = done?;
    for file in grown {
        results.push(super::process_file(shared, file, Known::Nothing).await?);
    }
    Ok(results)
}

/// The contents batches of this upload have claimed: the first file with a content stores it,
/// the others find it claimed (or, once forgotten, stored).
#[derive(Debug, Default)]
pub(super) struct LocalClaims(std::sync::Mutex<HashSet<ContentHash>>);

impl LocalClaims {
    /// Whether `hash` was not claimed before (and is now).
    pub(super) fn claim(&self, hash: ContentHash) -> bool {
        let mut claimed = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if claimed.len() >= super::CONTENTS_REMEMBERED {
            // Bounded: a content claimed long ago is found in the folder instead.
            claimed.clear();
        }
        claimed.insert(hash)
    }
}
