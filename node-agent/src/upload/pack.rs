//! Small files into object storage, packed: their contents go one after another into packs of
//! about [`PACK_BYTES`], each stored as one object (named by the hash of its whole content, like
//! any other object), and each file's manifest entry says where in which pack its content lies
//! ([`PackSlice`]). Every object is at least one signed request, and with an object per file
//! the agent and the store spent their CPU on requests: 100 000 files of 1-4 KiB to SeaweedFS
//! took 77.8 s for a full backup that restic made in 15.6 s (and storing files several at a time
//! made it slower still, 102.8 s). A pack is one request for about a thousand such files.
//!
//! A file's entry is complete only once its pack is named, that is once the pack is full; so
//! the files of a pack wait for it, and the unit of work that fills a pack stores it and returns
//! the entries of all its files (the upload's last pack is stored by [`Packer::flush`]).
//! Packs are stored only in object storage, where a write is durable when it returns, so the
//! journal may learn where each content lies as soon as its pack is stored.
//!
//! Files are read in batches (one blocking call reads and hashes up to [`PACK_BATCH_FILES`]),
//! for the reason local folders' small files are (see [`super::small`]).
//!
//! What packs give up: a content is found again only through this agent's journal (a full
//! backup re-reads every file, and a file whose content the journal places in a pack that is
//! still there is entered at that place, the pack checked once per upload); a content packed by
//! another node, or before the journal was lost, is packed again. Within one upload a content
//! is packed once (among the last [`super::CONTENTS_REMEMBERED`] contents).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use coffer_format::manifest::NodeManifestEntry;
use coffer_format::object::{SmallFile, object_exists, read_small_file_blocking, upload_reusing};
use coffer_format::{ContentHash, PackSlice};

use super::{FileResult, Known, Shared, UploadFailure};
use crate::journal::{FileIdentity, HashRecord};
use crate::snapshot::SnapshotFile;

/// Files up to this size are packed (into object storage); larger ones are objects of their
/// own, where a request costs little beside the bytes.
pub(super) const PACKED_FILE: u64 = 256 * 1024;
/// A pack is stored once its content reaches this size...
const PACK_BYTES: usize = 4 * 1024 * 1024;
/// ... or it holds this many files (whose entries wait for it in memory).
const PACK_FILES: usize = 8192;
/// Packs being stored at once: each holds its content and its encoded copy (about 8 MiB).
const PACK_UPLOADS: usize = 2;
/// Files read by one blocking call at most...
pub(super) const PACK_BATCH_FILES: usize = 64;
/// ... and bytes (each batch's contents are held until they are copied into the open pack).
pub(super) const PACK_BATCH_BYTES: u64 = 1024 * 1024;

/// Whether `file` is packed: a small file for object storage whose content must be read (new,
/// changed, or known only by a hash the journal cannot place in this location).
pub(super) fn packable(shared: &Shared, file: &SnapshotFile, known: &Known) -> bool {
    shared.local_root.is_none()
        && !shared.job.dry_run
        && file.size <= PACKED_FILE
        && !matches!(known, Known::Stored(..))
}

/// A file waiting for its pack to be stored.
struct Pending {
    /// Its entry, the pack not yet set.
    entry: NodeManifestEntry,
    hashed: HashRecord,
    /// Its size when it was listed (what the progress counts).
    listed_size: u64,
    offset: u64,
    /// Whether its content was added to the pack for it (not for an earlier file).
    appended: bool,
}

/// The pack being filled.
#[derive(Default)]
struct OpenPack {
    content: Vec<u8>,
    files: Vec<Pending>,
    /// Where each content of the pack starts.
    offsets: HashMap<ContentHash, u64>,
}

#[derive(Default)]
struct Packing {
    open: OpenPack,
    /// Contents in packs this upload stored.
    stored: HashMap<ContentHash, PackSlice>,
}

/// The upload's packs.
pub(super) struct Packer {
    packing: std::sync::Mutex<Packing>,
    uploads: tokio::sync::Semaphore,
    /// Buffers of packs stored, and of their encoded copies, for the next packs: a pack's
    /// blocks allocated and freed one after another cost more memory than they held (see
    /// [`upload_reusing`]).
    spare: std::sync::Mutex<Spare>,
}

#[derive(Default)]
struct Spare {
    contents: Vec<Vec<u8>>,
    encoded: Vec<Vec<u8>>,
}

impl Default for Packer {
    fn default() -> Self {
        Self {
            packing: std::sync::Mutex::default(),
            uploads: tokio::sync::Semaphore::new(PACK_UPLOADS),
            spare: std::sync::Mutex::default(),
        }
    }
}

impl Packer {
    fn lock(&self) -> std::sync::MutexGuard<'_, Packing> {
        self.packing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn spare(&self) -> std::sync::MutexGuard<'_, Spare> {
        self.spare
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds a file read whole: its result at once when a pack stored by this upload holds its
    /// content; the results of every file of the pack when this file fills it (once stored);
    /// nothing otherwise (its result comes with its pack's).
    async fn add(
        &self,
        shared: &Shared,
        file: &SnapshotFile,
        small: SmallFile,
    ) -> Result<Vec<FileResult>, UploadFailure> {
        let full = {
            let mut packing = self.lock();
            let size = small.content.len() as u64;
            if let Some(slice) = packing.stored.get(&small.hash).copied() {
                drop(packing);
                shared.counters.files.done(1, file.size, true);
                return Ok(vec![packed_result(file, small.hash, size, slice, false)]);
            }
            let open = &mut packing.open;
            let (offset, appended) = match open.offsets.get(&small.hash) {
                Some(offset) => (*offset, false),
                None => {
                    if open.content.capacity() == 0 {
                        // A spare buffer, or one of the pack's whole size at once (grown by
                        // doubling, a pack copied itself four times).
                        open.content = self.spare().contents.pop().unwrap_or_else(|| {
                            Vec::with_capacity(PACK_BYTES + PACKED_FILE as usize)
                        });
                    }
                    let offset = open.content.len() as u64;
                    open.content.extend_from_slice(&small.content);
                    open.offsets.insert(small.hash, offset);
                    (offset, true)
                }
            };
            let mut read = file.clone();
            read.size = size;
            open.files.push(Pending {
                entry: super::entry(&read, small.hash),
                hashed: hash_record(file, small.hash),
                listed_size: file.size,
                offset,
                appended,
            });
            (open.content.len() >= PACK_BYTES || open.files.len() >= PACK_FILES)
                .then(|| std::mem::take(open))
        };
        match full {
            Some(pack) => self.store(shared, pack).await,
            None => Ok(Vec::new()),
        }
    }

    /// Stores the pack being filled, if it holds anything; the results of its files.
    pub(super) async fn flush(&self, shared: &Shared) -> Result<Vec<FileResult>, UploadFailure> {
        let pack = std::mem::take(&mut self.lock().open);
        if pack.files.is_empty() {
            return Ok(Vec::new());
        }
        self.store(shared, pack).await
    }

    /// Stores `pack` as the object named by the hash of its content; the results of its files.
    async fn store(
        &self,
        shared: &Shared,
        pack: OpenPack,
    ) -> Result<Vec<FileResult>, UploadFailure> {
        let _permit = self
            .uploads
            .acquire()
            .await
            .map_err(|_| UploadFailure::Canceled)?;
        let job = &shared.job;
        let keys = shared.options.keys.clone();
        let content = pack.content;
        let (content, hash) = tokio::task::spawn_blocking(move || {
            let hash = keys.content_hash(&content);
            (content, hash)
        })
        .await
        .map_err(|error| UploadFailure::File(format!("hash a pack: {error}")))?;
        let path = shared.layout.object(&hash);
        let encoded = self.spare().encoded.pop().unwrap_or_default();
        let (outcome, mut content, encoded) =
            upload_reusing(&job.operator, &path, content, encoded, &shared.options)
                .await
                .map_err(|error| error.in_location(&job.location_name))?;
        shared.stored(&path, outcome.stored_bytes);
        content.clear();
        {
            let mut spare = self.spare();
            spare.contents.push(content);
            spare.encoded.push(encoded);
        }
        {
            let mut packing = self.lock();
            if packing.stored.len() + pack.offsets.len() > super::CONTENTS_REMEMBERED {
                // Bounded: a content packed long ago in this upload is packed again.
                packing.stored.clear();
            }
            for (content, offset) in &pack.offsets {
                packing.stored.insert(
                    *content,
                    PackSlice {
                        pack: hash,
                        offset: *offset,
                    },
                );
            }
        }
        let mut results = Vec::with_capacity(pack.files.len());
        for (index, pending) in pack.files.into_iter().enumerate() {
            let slice = PackSlice {
                pack: hash,
                offset: pending.offset,
            };
            shared
                .counters
                .files
                .done(1, pending.listed_size, !pending.appended);
            let content = pending.entry.hash;
            let mut entry = pending.entry;
            entry.packed = Some(slice);
            results.push(FileResult {
                entry,
                hashed: Some(pending.hashed),
                // The pack is a known object of the location once, by its first file.
                object_present: (index == 0).then_some(hash),
                packed: pending.appended.then_some((content, slice)),
            });
        }
        Ok(results)
    }
}

fn hash_record(file: &SnapshotFile, hash: ContentHash) -> HashRecord {
    HashRecord {
        live_path: file.live_path.clone(),
        identity: FileIdentity::from(file),
        hash,
    }
}

/// The result of a file whose content lies at `slice` already.
fn packed_result(
    file: &SnapshotFile,
    hash: ContentHash,
    size: u64,
    slice: PackSlice,
    learnt: bool,
) -> FileResult {
    let mut read = file.clone();
    read.size = size;
    let mut entry = super::entry(&read, hash);
    entry.packed = Some(slice);
    FileResult {
        entry,
        hashed: Some(hash_record(file, hash)),
        object_present: learnt.then_some(slice.pack),
        packed: learnt.then_some((hash, slice)),
    }
}

/// Packs a batch of small files: read and hashed in one blocking call, then added to the
/// upload's packs (files that grew past the small-file limit since they were listed go
/// through the general path afterwards).
pub(super) async fn process_batch(
    shared: &Arc<Shared>,
    files: Vec<(SnapshotFile, Known)>,
) -> Result<Vec<FileResult>, UploadFailure> {
    let worker = shared.clone();
    let (read, grown) = tokio::task::spawn_blocking(move || {
        let job = &worker.job;
        let mut read = Vec::with_capacity(files.len());
        let mut grown = Vec::new();
        for (file, known) in files {
            match read_small_file_blocking(&file.snapshot_path, &job.keys, job.limiter.as_ref()) {
                Ok(Some(small)) => read.push((file, known, small)),
                Ok(None) => grown.push(file),
                Err(error) => {
                    return Err(UploadFailure::File(format!(
                        "read {}: {error}",
                        file.snapshot_path.display()
                    )));
                }
            }
        }
        Ok((read, grown))
    })
    .await
    .map_err(|error| UploadFailure::File(format!("a batch of small files: {error}")))??;
    let mut results = Vec::with_capacity(read.len());
    for (file, known, small) in read {
        let size = small.content.len() as u64;
        shared
            .counters
            .bytes_read
            .fetch_add(size, Ordering::Relaxed);
        // Read again by a full backup, and still what the journal placed in a pack.
        if let Known::ProbablyStored(Some((remembered, slice))) = known
            && remembered == small.hash
            && pack_present(shared, slice.pack).await?
        {
            shared.counters.files.done(1, file.size, true);
            results.push(packed_result(&file, small.hash, size, slice, true));
            continue;
        }
        results.extend(shared.packer.add(shared, &file, small).await?);
    }
    for file in grown {
        results.push(super::process_file(shared, file, Known::Nothing).await?);
    }
    Ok(results)
}

/// Whether the location holds the pack `pack` (asked once per upload).
async fn pack_present(shared: &Shared, pack: ContentHash) -> Result<bool, UploadFailure> {
    let job = &shared.job;
    let cell = shared.object_cell(pack).await;
    let present = cell
        .get_or_try_init(|| async {
            object_exists(&job.operator, &shared.layout.object(&pack))
                .await
                .map_err(|error| UploadFailure::from(error.in_location(&job.location_name)))
        })
        .await?;
    Ok(*present)
}
