//! Packed contents (small files backed up into object storage, see the upload's `pack` module):
//! each pack is fetched once, into memory, verified against its own name, and cut into the
//! contents the restore needs, each verified against its hash before it is staged (and a later
//! attempt finds them staged, as any other).

use std::fs::File;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use coffer_format::ContentHash;
use coffer_format::object::{DownloadError, download_object_to_memory};
use tokio::sync::mpsc;

use super::download::{StagedPart, download_failure, hand_to_committer, part_name};
use super::objects::ContentId;
use super::{Plan, RestoreFailure, Shared, blocking};

/// The packed contents to fetch (not staged everywhere they are needed), a list per pack in
/// the order the contents lie in it; packs in the order of their first files.
pub(super) fn by_pack(plan: &Plan) -> std::vec::IntoIter<Vec<ContentId>> {
    let mut packed: Vec<(u32, u32, ContentId)> = plan
        .objects()
        .filter(|(_, object)| object.needs.iter().any(|need| !need.staged))
        .filter_map(|(id, object)| {
            let file = &plan.files[object.first_file];
            (file.pack != super::UNPACKED).then_some((file.pack, file.pack_offset, id))
        })
        .collect();
    packed.sort_unstable_by_key(|(pack, offset, _)| (*pack, *offset));
    let mut groups: Vec<Vec<ContentId>> = Vec::new();
    let mut current = None;
    for (pack, _, id) in packed {
        if current != Some(pack) {
            groups.push(Vec::new());
            current = Some(pack);
        }
        if let Some(group) = groups.last_mut() {
            group.push(id);
        }
    }
    groups.into_iter()
}

/// Buffers packs were fetched into, for the next packs (at most one per download running at
/// once): blocks of a few MiB allocated and freed one after another cost more memory than they
/// held (a restore of 100 000 small files from SeaweedFS peaked at 167.3 MiB that way).
#[derive(Debug, Default)]
pub(super) struct Buffers(std::sync::Mutex<Vec<Vec<u8>>>);

impl Buffers {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Vec<u8>>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn take(&self) -> Vec<u8> {
        self.lock().pop().unwrap_or_default()
    }

    fn give_back(&self, buffer: Vec<u8>) {
        self.lock().push(buffer);
    }
}

/// Most bytes a pack may hold for this agent to read it: its writers make packs of about
/// 4 MiB (a file that grew while it was read can take one past that by up to 1 MiB).
const PACK_LIMIT: usize = 16 * 1024 * 1024;

/// Fetches the pack of the contents `ids` (all in one pack, in offset order) into memory,
/// cuts them out, verifies each, and hands them to the committer. What was verified before a
/// content failed is committed all the same. (A pack downloaded to a file first was written to
/// disk by the committer's syncs before it was cut and removed: a restore of 100 000 small files
/// wrote 586 MiB for 244 MiB of files.)
pub(super) async fn stage_pack(
    shared: &Arc<Shared>,
    plan: &Arc<Plan>,
    ids: Vec<ContentId>,
    commit: &mpsc::Sender<Vec<StagedPart>>,
) -> Result<(), RestoreFailure> {
    let job = &shared.job;
    let Some(first) = ids.first().map(|id| plan.object(*id)) else {
        return Ok(());
    };
    let first_file = &plan.files[first.first_file];
    let Some(slice) = plan.files.packed(first_file) else {
        return Ok(());
    };
    let pack = slice.pack;
    // The pack holds at least the end of the last content needed.
    let needed_end = ids
        .iter()
        .map(|id| {
            let object = plan.object(*id);
            let offset = u64::from(plan.files[object.first_file].pack_offset);
            offset.saturating_add(object.size)
        })
        .max()
        .unwrap_or(0);
    let (downloaded, content) = download_object_to_memory(
        &job.operator,
        &shared.layout.object(&pack),
        pack,
        shared.pack_buffers.take(),
        (needed_end, PACK_LIMIT),
        &job.keys,
        job.limiter.as_ref(),
    )
    .await
    .map_err(|source| {
        download_failure(
            shared,
            shared.target(plan.files.paths(), first_file),
            pack,
            source,
        )
    })?;
    shared
        .counters
        .bytes_downloaded
        .fetch_add(downloaded.stored_bytes, Ordering::Relaxed);
    let Some(hasher) = job.keys.content_hasher_of(downloaded.sealed_with) else {
        return Err(RestoreFailure::Download {
            file: shared.target(plan.files.paths(), first_file),
            hash: pack,
            source: Box::new(DownloadError::Malformed {
                path: shared.layout.object(&pack),
                reason: "sealed with a key this agent does not hold".into(),
            }),
        });
    };
    let worker = shared.clone();
    let cutting = plan.clone();
    let (parts, failure, content) = blocking(move || {
        let (parts, failure) = cut_pack(&worker, &cutting, &content, &ids, &hasher);
        Ok((parts, failure, content))
    })
    .await?;
    shared.pack_buffers.give_back(content);
    hand_to_committer(shared, commit, parts).await?;
    failure.map_or(Ok(()), Err)
}

/// Cuts the contents `ids` out of `pack` (the pack's content): the parts staged, and the
/// failure that stopped it, if one did.
fn cut_pack(
    shared: &Shared,
    plan: &Plan,
    pack: &[u8],
    ids: &[ContentId],
    hasher: &blake3::Hasher,
) -> (Vec<StagedPart>, Option<RestoreFailure>) {
    let mut parts = Vec::with_capacity(ids.len());
    for id in ids {
        let object = plan.object(*id);
        let file = &plan.files[object.first_file];
        let Some(slice) = plan.files.packed(file) else {
            continue;
        };
        let target = || shared.target(plan.files.paths(), file);
        let start = usize::try_from(slice.offset).unwrap_or(usize::MAX);
        let content = usize::try_from(object.size)
            .ok()
            .and_then(|size| pack.get(start..start.checked_add(size)?));
        let Some(content) = content else {
            let failure = RestoreFailure::SizeMismatch {
                file: target(),
                hash: object.hash,
                expected: object.size,
                actual: (pack.len() as u64).saturating_sub(slice.offset),
            };
            return (parts, Some(failure));
        };
        let actual = ContentHash::from(hasher.clone().update(content).finalize());
        if actual != object.hash {
            let failure = RestoreFailure::Download {
                file: target(),
                hash: object.hash,
                source: Box::new(DownloadError::Corrupt {
                    path: format!(
                        "{} at offset {}",
                        shared.layout.object(&slice.pack),
                        slice.offset
                    ),
                    expected: object.hash,
                    actual,
                }),
            };
            return (parts, Some(failure));
        }
        for need in object.needs.iter().filter(|need| !need.staged) {
            let part = shared
                .staging_folder(need.data_path)
                .join(part_name(&object.hash.to_hex()));
            let written = File::create(&part)
                .and_then(|mut out| out.write_all(content))
                .map_err(RestoreFailure::local("write", &part));
            if let Err(failure) = written {
                return (parts, Some(failure));
            }
            parts.push(StagedPart {
                data_path: need.data_path,
                hash: object.hash,
                files: need.files,
                size: object.size,
            });
        }
    }
    (parts, None)
}
