//! Room on disk for a restore, checked before anything is downloaded, and the disk given back
//! when a download runs out of it anyway (another writer filled it meanwhile).

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use super::{Plan, RestoreFailure, Shared};

/// What one filesystem must hold for the restore.
#[derive(Debug, PartialEq, Eq)]
struct Demand {
    /// The first data path on it, to name it.
    path: PathBuf,
    needed: u64,
}

/// Bytes the restore writes on each filesystem holding a data path: every content it downloads
/// or copies into a staging folder there, and every extra copy placing makes for files sharing
/// content; what a verified staged copy holds already is not counted again. Files replaced
/// (`overwrite`) free their space only once renamed over, so they are not counted as room.
fn demands(shared: &Shared, plan: &Plan) -> Result<BTreeMap<u64, Demand>, RestoreFailure> {
    let mut per_data_path = vec![0u64; shared.job.data_paths.len()];
    for (_, object) in plan.objects() {
        for need in object.needs.iter() {
            let copies = need.files.saturating_sub(u64::from(need.staged));
            if let Some(total) = per_data_path.get_mut(need.data_path) {
                *total = total.saturating_add(object.size.saturating_mul(copies));
            }
        }
    }
    let mut demands: BTreeMap<u64, Demand> = BTreeMap::new();
    for (index, needed) in per_data_path.into_iter().enumerate() {
        let path = &shared.job.data_paths[index];
        let device = std::fs::metadata(path)
            .map_err(RestoreFailure::local("read", path))?
            .dev();
        let demand = demands.entry(device).or_insert_with(|| Demand {
            path: path.clone(),
            needed: 0,
        });
        demand.needed = demand.needed.saturating_add(needed);
    }
    Ok(demands)
}

/// Refuses the restore when a filesystem would be left with less than the agent's
/// `restore-keep-free`: FAILED_PRECONDITION naming the path, what is needed and what is free.
pub(super) fn check_space(shared: &Shared, plan: &Plan) -> Result<(), RestoreFailure> {
    let keep_free = shared.job.keep_free;
    for demand in demands(shared, plan)?.into_values() {
        if demand.needed == 0 {
            continue;
        }
        let free = fs4::available_space(&demand.path).map_err(RestoreFailure::local(
            "read the free space of",
            &demand.path,
        ))?;
        if demand.needed.saturating_add(keep_free) > free {
            return Err(RestoreFailure::NoSpace {
                path: demand.path,
                needed: demand.needed,
                free,
                keep_free,
            });
        }
    }
    Ok(())
}

/// Whether a failure is the disk running full.
pub(super) fn is_disk_full(failure: &RestoreFailure) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(failure);
    while let Some(error) = cause {
        if let Some(io) = error.downcast_ref::<io::Error>()
            && io.kind() == io::ErrorKind::StorageFull
        {
            return true;
        }
        cause = error.source();
    }
    false
}

/// After a download ran out of space: removes the restore's staging folders, so the disk is as
/// it was before (what was verified is fetched again by the next attempt; a full disk is the
/// worse problem). Failures to remove are logged: the original error is the one to report.
pub(super) fn give_back(shared: &Shared) {
    for index in 0..shared.job.data_paths.len() {
        let folder = shared.staging_folder(index);
        match std::fs::remove_dir_all(&folder) {
            Ok(()) => tracing::info!(folder = %folder.display(),
                "the disk ran full: removed the restore's staging folder"),
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => tracing::warn!(folder = %folder.display(), %error,
                "the disk ran full and the restore's staging folder could not be removed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_found_through_the_error_chain() {
        let full = RestoreFailure::Local {
            action: "write",
            path: PathBuf::from("/data/x"),
            source: io::Error::from(io::ErrorKind::StorageFull),
        };
        assert!(is_disk_full(&full));
        let other = RestoreFailure::Local {
            action: "write",
            path: PathBuf::from("/data/x"),
            source: io::Error::from(io::ErrorKind::PermissionDenied),
        };
        assert!(!is_disk_full(&other));
        let download = RestoreFailure::Download {
            file: PathBuf::from("/data/x"),
            hash: coffer_format::ContentHash::of(b"x"),
            source: Box::new(coffer_format::object::DownloadError::Write {
                dest: PathBuf::from("/data/.coffer-restore/x.part"),
                source: io::Error::from_raw_os_error(28),
            }),
        };
        assert!(is_disk_full(&download), "ENOSPC, as the kernel reports it");
    }
}
