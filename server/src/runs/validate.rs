//! What a validate run does: one listing of the cluster's objects in the location, recorded in
//! the catalog as it streams in, then every node manifest of every backup checked against it a
//! page at a time. The server holds neither the listing nor a manifest whole.

use std::collections::{BTreeSet, HashSet};
use std::time::SystemTime;

use coffer_format::ClusterLayout;

use crate::agents::storage;
use crate::error::{Error, Result};
use crate::model::Cluster;
use crate::model::backup::BackupRecord;
use crate::model::location::Location;
use crate::model::run::RunState;
use crate::model::validation::{BackupValidation, MAX_AFFECTED_FILES, ValidationResult};
use crate::runs::RunHandle;

/// Entries read from a node manifest at once: the agent decodes the manifest from its start for
/// every page, so a reader of whole manifests asks for the largest (50 000, about 10 MB).
const MANIFEST_PAGE: u32 = 50_000;

/// What a validate run checks.
#[derive(Debug, Clone)]
pub struct ValidatePlan {
    pub cluster: Cluster,
    pub location: Location,
    /// The cluster's committed backups in the location when the run was started, oldest first.
    pub backups: Vec<BackupRecord>,
}

/// Runs the validation to its end and records the outcome; the listing recorded for it goes.
pub async fn execute(mut handle: RunHandle, plan: ValidatePlan) {
    let run_id = handle.run().id;
    let outcome = validate(&mut handle, &plan).await;
    if let Err(error) = handle
        .manager()
        .catalog()
        .clear_listed_objects(run_id)
        .await
    {
        tracing::warn!(%error, "forget the validation's listing");
    }
    handle
        .finish(outcome, "the server shut down during the validation")
        .await;
}

/// Lists the cluster's objects in the location into the catalog (the run's listing), a page
/// at a time, telling `progress` how many so far; returns how many.
pub(super) async fn list_objects(
    handle: &mut RunHandle,
    cluster: &Cluster,
    location: &Location,
    mut progress: impl FnMut(&mut crate::model::run::Run, u64),
) -> Result<u64> {
    let run_id = handle.run().id;
    let cancel = handle.cancelled();
    let agents = handle.manager().agents().clone();
    let catalog = handle.manager().catalog().clone();
    let prefix = format!("{}objects/", ClusterLayout::new(cluster.id).root());
    let mut pages = storage::list_object_pages(&agents, cluster, location, &prefix).await?;
    let mut listed = 0u64;
    while let Some(page) = pages.next().await? {
        if cancel.is_cancelled() {
            return Err(Error::Canceled);
        }
        let objects: Vec<(String, u64)> = page
            .iter()
            .filter_map(|object| {
                object_hash(&object.path).map(|hash| (hash.to_string(), object.size))
            })
            .collect();
        catalog.add_listed_objects(run_id, &objects).await?;
        listed += objects.len() as u64;
        handle.progress(|run| progress(run, listed)).await;
    }
    Ok(listed)
}

/// The content hash an object path names (`.../objects/<aa>/<64 hex>`); `None` for anything
/// else (temporary files).
fn object_hash(path: &str) -> Option<&str> {
    let name = path.rsplit('/').next()?;
    (name.len() == 64
        && name
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
    .then_some(name)
}

async fn validate(handle: &mut RunHandle, plan: &ValidatePlan) -> Result<()> {
    let run_id = handle.run().id;
    let cancel = handle.cancelled();
    handle
        .transition(|run| {
            run.state = RunState::Running;
            run.start_time = Some(SystemTime::now());
            run.validation = Some(ValidationResult::default());
        })
        .await?;
    let catalog = handle.manager().catalog().clone();
    let listed = list_objects(handle, &plan.cluster, &plan.location, |run, listed| {
        if let Some(result) = run.validation.as_mut() {
            result.objects_listed = listed;
        }
    })
    .await?;

    let mut missing_everywhere: HashSet<String> = HashSet::new();
    for backup in &plan.backups {
        if cancel.is_cancelled() {
            return Err(Error::Canceled);
        }
        let checked = check_backup(handle, plan, backup, &mut missing_everywhere).await?;
        handle
            .progress(|run| {
                if let Some(result) = run.validation.as_mut() {
                    result.backups.push(checked);
                    result.objects_missing = missing_everywhere.len() as u64;
                }
            })
            .await;
    }

    let (referenced, orphaned, orphaned_bytes) = catalog.listed_object_counts(run_id).await?;
    handle
        .transition(|run| {
            if let Some(result) = run.validation.as_mut() {
                result.objects_referenced = referenced + missing_everywhere.len() as u64;
                result.objects_orphaned = orphaned;
                result.orphaned_bytes = orphaned_bytes;
            }
        })
        .await?;
    let unrestorable = handle
        .run()
        .validation
        .map(|result| result.backups.iter().filter(|b| !b.restorable).count())
        .unwrap_or(0);
    tracing::info!(
        backups = plan.backups.len(),
        unrestorable,
        objects = listed,
        orphaned,
        "validation done"
    );
    Ok(())
}

/// Checks every node manifest of `backup` against the listing.
async fn check_backup(
    handle: &RunHandle,
    plan: &ValidatePlan,
    backup: &BackupRecord,
    missing_everywhere: &mut HashSet<String>,
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
    };
    let mut missing_here: HashSet<String> = HashSet::new();
    for node in &backup.nodes {
        let mut offset = 0u64;
        loop {
            let page = storage::read_manifest_page(
                agents,
                &plan.cluster,
                &plan.location,
                &node.manifest_path,
                node.node_id,
                offset,
                MANIFEST_PAGE,
            )
            .await;
            let (files, more) = match page {
                Ok(page) => page,
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
            offset += files.len() as u64;
            checked.files_checked += files.len() as u64;
            let hashes: Vec<String> = files
                .iter()
                .map(|file| file.blake3_hash.clone())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            let missing: HashSet<String> = catalog
                .mark_referenced(run_id, &hashes)
                .await?
                .into_iter()
                .collect();
            for file in files
                .iter()
                .filter(|file| missing.contains(&file.blake3_hash))
            {
                if checked.affected_files.len() < MAX_AFFECTED_FILES {
                    checked.affected_files.push(format!(
                        "{}:{} (object {})",
                        file.node_id, file.path, file.blake3_hash
                    ));
                }
            }
            missing_here.extend(missing.iter().cloned());
            missing_everywhere.extend(missing);
            if !more {
                break;
            }
        }
    }
    checked.missing_objects = missing_here.len() as u64;
    if !missing_here.is_empty() {
        checked.restorable = false;
    }
    Ok(checked)
}

/// Whether an agent's error is about the manifest read (missing, unreadable) rather than about
/// reaching the storage at all.
fn is_about_the_manifest(error: &Error) -> bool {
    match error {
        Error::Agent { code, .. } => !matches!(
            code,
            crate::error::AgentCode::Unavailable | crate::error::AgentCode::DeadlineExceeded
        ),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_content_addressed_names_are_objects() {
        let hash = "ab".repeat(32);
        assert_eq!(
            object_hash(&format!("clusters/c/objects/ab/{hash}")),
            Some(hash.as_str())
        );
        assert_eq!(
            object_hash(&format!("clusters/c/objects/ab/{hash}.0123.tmp")),
            None
        );
        assert_eq!(object_hash("clusters/c/objects/ab/short"), None);
        assert_eq!(object_hash(&format!("x/{}", "AB".repeat(32))), None);
    }
}
