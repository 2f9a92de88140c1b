//! The manifest pass of a validation: every node manifest of every backup checked against the
//! run's listing, a page at a time.

use std::collections::{BTreeSet, HashSet};

use coffer_format::object::{sealed_stored_size_range, stored_size_range};

use super::{ValidatePlan, update};
use crate::error::{AgentCode, Error, Result};
use crate::model::backup::{BackupFile, BackupRecord};
use crate::model::validation::{BackupValidation, MAX_AFFECTED_FILES};
use crate::runs::RunHandle;
use crate::runs::listing::ManifestPages;

/// Checks every backup of the plan, oldest first, and makes the run's per-backup results
/// those found now (replacing any of an earlier pass).
pub(super) async fn check_backups(handle: &mut RunHandle, plan: &ValidatePlan) -> Result<()> {
    let cancel = handle.cancelled();
    let mut checked_backups = Vec::with_capacity(plan.backups.len());
    for backup in &plan.backups {
        if cancel.is_cancelled() {
            return Err(Error::Canceled);
        }
        checked_backups.push(check_backup(handle, plan, backup).await?);
        let so_far = checked_backups.clone();
        handle
            .progress(|run| update(run, |result| result.backups = so_far))
            .await;
    }
    Ok(())
}

/// What one manifest entry's object is, by the listing.
enum Found {
    Present,
    Missing,
    Damaged(String),
}

/// Checks every node manifest of `backup` against the listing, recording in the catalog the
/// objects found missing or (by their stored size) damaged.
async fn check_backup(
    handle: &RunHandle,
    plan: &ValidatePlan,
    backup: &BackupRecord,
) -> Result<BackupValidation> {
    let run_id = handle.run().id;
    let agents = handle.manager().agents();
    let catalog = handle.manager().catalog();
    let mut checked = BackupValidation {
        backup_id: backup.id,
        restorable: true,
        files_checked: 0,
        missing_objects: 0,
        affected_files: Vec::new(),
        error: String::new(),
        damaged_objects: 0,
    };
    let mut missing_here: HashSet<String> = HashSet::new();
    let mut damaged_here: HashSet<String> = HashSet::new();
    for node in &backup.nodes {
        let mut pages = ManifestPages::new(agents, &plan.cluster, &plan.location, node);
        loop {
            let files = match pages.next().await {
                Ok(Some(files)) => files,
                Ok(None) => break,
                // The storage itself cannot be reached: the validation failed, not the backup.
                Err(error @ Error::Agent { .. }) if !is_about_the_manifest(&error) => {
                    return Err(error);
                }
                Err(error) => {
                    checked.restorable = false;
                    checked.error = format!(
                        "node {} manifest {}: {error}",
                        node.node_id, node.manifest_path
                    );
                    break;
                }
            };
            checked.files_checked += files.len() as u64;
            // A file's own object holds exactly its content; a pack holds many, so its
            // stored size says nothing of one file's.
            let sizes: std::collections::HashMap<&str, u64> = files
                .iter()
                .filter(|file| file.pack_hash.is_none())
                .map(|file| (file.blake3_hash.as_str(), file.size_bytes))
                .collect();
            let hashes: Vec<String> = files
                .iter()
                .map(|file| file.object_hash().to_string())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            let mut newly_missing = Vec::new();
            let mut newly_damaged = Vec::new();
            let mut found: std::collections::HashMap<String, Found> = Default::default();
            for listed in catalog.mark_referenced(run_id, &hashes).await? {
                let condition = match (listed.stored_size, listed.damage) {
                    (None, _) => {
                        newly_missing.push(listed.hash.clone());
                        Found::Missing
                    }
                    (Some(_), Some(damage)) => Found::Damaged(damage),
                    (Some(stored), None) => {
                        let Some(content) = sizes.get(listed.hash.as_str()).copied() else {
                            found.insert(listed.hash, Found::Present);
                            continue;
                        };
                        let sealed = plan.location.encryption_key.is_some();
                        match impossible_size(stored, content, sealed) {
                            Some(damage) => {
                                newly_damaged.push((listed.hash.clone(), damage.clone()));
                                Found::Damaged(damage)
                            }
                            None => Found::Present,
                        }
                    }
                };
                found.insert(listed.hash, condition);
            }
            catalog.record_missing(run_id, &newly_missing).await?;
            catalog.record_damage(run_id, &newly_damaged).await?;
            for file in &files {
                match found.get(file.object_hash()) {
                    Some(Found::Missing) => {
                        missing_here.insert(file.object_hash().to_string());
                        affect(&mut checked, file, "missing");
                    }
                    Some(Found::Damaged(damage)) => {
                        damaged_here.insert(file.object_hash().to_string());
                        affect(&mut checked, file, &format!("damaged: {damage}"));
                    }
                    Some(Found::Present) | None => {}
                }
            }
        }
    }
    checked.missing_objects = missing_here.len() as u64;
    checked.damaged_objects = damaged_here.len() as u64;
    if !missing_here.is_empty() || !damaged_here.is_empty() {
        checked.restorable = false;
    }
    Ok(checked)
}

/// Names a file whose content is missing or damaged, up to [`MAX_AFFECTED_FILES`].
fn affect(checked: &mut BackupValidation, file: &BackupFile, what: &str) {
    if checked.affected_files.len() < MAX_AFFECTED_FILES {
        let object = match &file.pack_hash {
            Some(pack) => format!("pack {pack}"),
            None => format!("object {}", file.blake3_hash),
        };
        checked
            .affected_files
            .push(format!("{}:{} ({object} {what})", file.node_id, file.path));
    }
}

/// Why an object of `stored` bytes (`sealed` in an encrypted location) cannot hold a file of
/// `content` bytes; `None` when it can.
fn impossible_size(stored: u64, content: u64, sealed: bool) -> Option<String> {
    let range = if sealed {
        sealed_stored_size_range(content)
    } else {
        stored_size_range(content)
    };
    (!range.contains(&stored)).then(|| {
        format!(
            "stored as {stored} bytes; {content} bytes of content are stored in {} to {}",
            range.start(),
            range.end()
        )
    })
}

/// Whether an agent's error is about the manifest read (missing, unreadable) rather than about
/// reaching the storage at all.
fn is_about_the_manifest(error: &Error) -> bool {
    match error {
        Error::Agent { code, .. } => {
            !matches!(code, AgentCode::Unavailable | AgentCode::DeadlineExceeded)
        }
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_and_padded_objects_have_impossible_sizes() {
        assert_eq!(impossible_size(8 + 100, 100, false), None);
        assert_eq!(impossible_size(8 + 40, 100, false), None, "compressed");
        assert!(impossible_size(8, 100, false).is_some(), "header only");
        assert!(impossible_size(0, 0, false).is_some(), "no header");
        assert!(impossible_size(8 + 100 + 10_000, 100, false).is_some());
        // Sealed: a 40-byte header and a 16-byte tag per 64 KiB segment of the plain object.
        assert_eq!(impossible_size(40 + 8 + 100 + 16, 100, true), None);
        assert!(
            impossible_size(40, 100, true).is_some(),
            "sealed header only"
        );
        assert!(
            impossible_size(40 + 8 + 100 + 16 + 10_000, 100, true).is_some(),
            "padded"
        );
    }
}
