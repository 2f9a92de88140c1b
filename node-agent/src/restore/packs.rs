//! Packed contents (small files backed up into object storage, see the upload's `pack` module):
//! each pack is fetched once, into the staging folder, verified against its own name, and cut
//! into the contents the restore needs, each verified against its hash before it is staged.
//! The pack's file goes once cut: only the contents stay staged (and a later attempt finds
//! them staged, as any other).

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use coffer_format::ContentHash;
use coffer_format::object::{DownloadError, download_object_sized};
use tokio::sync::mpsc;

use super::download::{StagedPart, copy_part, download_failure, hand_to_committer, part_name};
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

/// Size of the reads that cut contents out of a pack.
const CUT_BLOCK: usize = 64 * 1024;

/// Fetches the pack of the contents `ids` (all in one pack, in offset order), cuts them out,
/// verifies each, and hands them to the committer. What was verified before a content failed
/// is committed all the same.
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
    let data_path = first
        .needs
        .iter()
        .find(|need| !need.staged)
        .map_or(first_file.data_path, |need| need.data_path);
    let pack_file = shared
        .staging_folder(data_path)
        .join(format!("{}.pack", pack.to_hex()));
    let downloaded = download_object_sized(
        &job.operator,
        &shared.layout.object(&pack),
        &pack_file,
        pack,
        None,
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
        let _ = tokio::fs::remove_file(&pack_file).await;
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
    let pack_path = pack_file.clone();
    let cut = blocking(move || Ok(cut_pack(&worker, &cutting, &pack_path, &ids, &hasher))).await;
    if let Err(error) = fs::remove_file(&pack_file)
        && error.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!(path = %pack_file.display(), %error, "remove a restored pack");
    }
    let (parts, failure) = cut?;
    hand_to_committer(shared, commit, parts).await?;
    failure.map_or(Ok(()), Err)
}

/// Cuts the contents `ids` out of the pack at `pack_path`: the parts staged, and the failure
/// that stopped it, if one did.
fn cut_pack(
    shared: &Shared,
    plan: &Plan,
    pack_path: &std::path::Path,
    ids: &[ContentId],
    hasher: &blake3::Hasher,
) -> (Vec<StagedPart>, Option<RestoreFailure>) {
    let mut parts = Vec::with_capacity(ids.len());
    let pack = match File::open(pack_path) {
        Ok(pack) => pack,
        Err(error) => {
            return (parts, Some(RestoreFailure::local("read", pack_path)(error)));
        }
    };
    let pack_len = match pack.metadata() {
        Ok(metadata) => metadata.len(),
        Err(error) => {
            return (parts, Some(RestoreFailure::local("read", pack_path)(error)));
        }
    };
    let mut block = vec![0u8; CUT_BLOCK];
    for id in ids {
        let object = plan.object(*id);
        let file = &plan.files[object.first_file];
        let Some(slice) = plan.files.packed(file) else {
            continue;
        };
        let target = || shared.target(plan.files.paths(), file);
        let available = pack_len.saturating_sub(slice.offset);
        if available < object.size {
            let failure = RestoreFailure::SizeMismatch {
                file: target(),
                hash: object.hash,
                expected: object.size,
                actual: available,
            };
            return (parts, Some(failure));
        }
        let mut source: Option<std::path::PathBuf> = None;
        for need in object.needs.iter().filter(|need| !need.staged) {
            let part = shared
                .staging_folder(need.data_path)
                .join(part_name(&object.hash.to_hex()));
            let staged = match &source {
                None => cut_one(&pack, slice.offset, object.size, &part, hasher, &mut block)
                    .and_then(|actual| {
                        if actual == object.hash {
                            return Ok(());
                        }
                        let _ = fs::remove_file(&part);
                        Err(RestoreFailure::Download {
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
                        })
                    }),
                Some(from) => copy_part(from, &part),
            };
            if let Err(failure) = staged {
                return (parts, Some(failure));
            }
            source = Some(part);
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

/// Copies `size` bytes at `offset` of `pack` into a new file `part`, hashing them with (a copy
/// of) `hasher`; returns their hash.
fn cut_one(
    pack: &File,
    offset: u64,
    size: u64,
    part: &std::path::Path,
    hasher: &blake3::Hasher,
    block: &mut [u8],
) -> Result<ContentHash, RestoreFailure> {
    let mut hasher = hasher.clone();
    let mut out = File::create(part).map_err(RestoreFailure::local("create", part))?;
    let mut done = 0u64;
    while done < size {
        let want = usize::try_from(size - done)
            .unwrap_or(usize::MAX)
            .min(block.len());
        let bytes = &mut block[..want];
        pack.read_exact_at(bytes, offset + done)
            .map_err(RestoreFailure::local("read the pack for", part))?;
        hasher.update(bytes);
        out.write_all(bytes)
            .map_err(RestoreFailure::local("write", part))?;
        done += want as u64;
    }
    Ok(ContentHash::from(hasher.finalize()))
}
