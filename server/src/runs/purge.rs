//! What a purge run does, under the safety rule of docs/storage-format.md:
//!
//! 1. **Mark.** List the cluster's objects in the location (into the catalog), then read every
//!    node manifest of every backup committed by then: what none refers to is marked. An
//!    object uploaded after the listing is never marked; one uploaded before it by a backup
//!    still running is marked, and saved by step 3.
//! 2. **Wait.** Deletion starts only when no backup of the cluster at the location is active:
//!    the check and the lock that makes new backups wait are one catalog transaction. So every
//!    backup that could have seen a marked object (in its upload, or as a reason to skip one)
//!    has ended, committed or not.
//! 3. **Re-check.** The manifests of the backups committed since the mark are read: what they
//!    refer to is unmarked (reclaimed).
//! 4. **Delete**, a batch at a time. A backup that starts meanwhile waits for the batch to end;
//!    then the purge lets it run (and goes back to step 2), and the backup's agents, keyed by
//!    the location's new purge generation, trust nothing they remembered of it: a deleted
//!    object is uploaded again, never assumed present.
//!
//! A manifest that cannot be read stops the purge before it deletes anything (its references
//! are unknown).

use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, SystemTime};

use coffer_format::{ClusterLayout, ContentHash};
use uuid::Uuid;

use super::listing::{ManifestPages, StaleTemporary, list_objects};
use crate::agents::storage;
use crate::error::{Error, Result};
use crate::model::Cluster;
use crate::model::backup::BackupRecord;
use crate::model::location::Location;
use crate::model::purge::PurgeResult;
use crate::model::run::RunState;
use crate::runs::RunHandle;

/// Objects deleted per batch; a waiting backup waits for at most one batch.
const DELETE_BATCH: u32 = 500;
/// How often a waiting purge looks whether the backups ended.
const WAIT_POLL: Duration = Duration::from_millis(200);

/// What a purge run works on.
#[derive(Debug, Clone)]
pub struct PurgePlan {
    pub cluster: Cluster,
    pub location: Location,
    /// Report only.
    pub dry_run: bool,
}

/// Runs the purge to its end; the deletion lock and the listing go whatever the outcome.
pub async fn execute(mut handle: RunHandle, plan: PurgePlan) {
    let run_id = handle.run().id;
    let outcome = purge(&mut handle, &plan).await;
    let catalog = handle.manager().catalog().clone();
    if let Err(error) = catalog
        .end_deletion(plan.cluster.id, plan.location.id)
        .await
    {
        tracing::warn!(%error, "end the purge's deletion window");
    }
    if let Err(error) = catalog.clear_listed_objects(run_id).await {
        tracing::warn!(%error, "forget the purge's listing");
    }
    handle
        .finish(
            outcome,
            "the server shut down during the purge; what it deleted was unreferenced, run it again",
        )
        .await;
}

fn update(handle_run: &mut crate::model::run::Run, change: impl FnOnce(&mut PurgeResult)) {
    if let Some(result) = handle_run.purge.as_mut() {
        change(result);
    }
}

async fn purge(handle: &mut RunHandle, plan: &PurgePlan) -> Result<()> {
    let run_id = handle.run().id;
    let cancel = handle.cancelled();
    let catalog = handle.manager().catalog().clone();
    handle
        .transition(|run| {
            run.state = RunState::Running;
            run.start_time = Some(SystemTime::now());
            run.purge = Some(PurgeResult::default());
        })
        .await?;

    // 1. Mark: the listing first, then the references of every backup committed by now.
    let listing = list_objects(handle, &plan.cluster, &plan.location, |run, listed| {
        update(run, |result| result.objects_listed = listed);
    })
    .await?;
    let (listed, temporaries) = (listing.objects, listing.stale_temporaries);
    let temporary_bytes: u64 = temporaries.iter().map(|temporary| temporary.size).sum();
    let mut checked: HashSet<Uuid> = HashSet::new();
    mark_references(handle, plan, &mut checked).await?;
    let counts = catalog.listed_object_counts(run_id).await?;
    let (unreferenced, unreferenced_bytes) = (counts.orphaned, counts.orphaned_bytes);
    let uncommitted = uncommitted_folders(handle, plan).await?;
    handle
        .transition(|run| {
            update(run, |result| {
                result.objects_unreferenced = unreferenced;
                result.bytes_unreferenced = unreferenced_bytes;
                result.uncommitted_folders = uncommitted.len() as u64;
                result.temporary_objects_deleted = temporaries.len() as u64;
                result.temporary_bytes_freed = temporary_bytes;
            });
        })
        .await?;
    tracing::info!(
        listed,
        unreferenced,
        unreferenced_bytes,
        uncommitted = uncommitted.len(),
        temporaries = temporaries.len(),
        "purge marked"
    );
    if plan.dry_run || (unreferenced == 0 && uncommitted.is_empty() && temporaries.is_empty()) {
        return Ok(());
    }

    let layout = ClusterLayout::new(plan.cluster.id);
    let (mut deleted, mut freed, mut waits) = (0u64, 0u64, 0u64);
    'windows: loop {
        // 2. Wait until no backup of the cluster is active at the location, and lock.
        let mut waited = false;
        loop {
            if cancel.is_cancelled() {
                return Err(Error::Canceled);
            }
            if catalog
                .begin_deletion(plan.cluster.id, plan.location.id, run_id)
                .await?
                .is_some()
            {
                break;
            }
            if !waited {
                waited = true;
                waits += 1;
                handle
                    .progress(|run| update(run, |result| result.waits = waits))
                    .await;
            }
            tokio::time::sleep(WAIT_POLL).await;
        }
        // 3. What backups committed since refer to is not deleted.
        let before = catalog.listed_object_counts(run_id).await?.orphaned;
        mark_references(handle, plan, &mut checked).await?;
        let after = catalog.listed_object_counts(run_id).await?.orphaned;
        handle
            .progress(|run| {
                update(run, |result| result.objects_reclaimed += before - after);
            })
            .await;
        // 4. Delete, a batch at a time, while no backup waits.
        loop {
            if cancel.is_cancelled() {
                return Err(Error::Canceled);
            }
            let batch = catalog.unreferenced_objects(run_id, DELETE_BATCH).await?;
            if batch.is_empty() {
                // Still in the window: no backup of the cluster uploads or commits here now.
                let cleared = clear_uncommitted(handle, plan, &uncommitted).await?;
                let (removed, removed_bytes) =
                    remove_temporaries(handle, plan, &temporaries).await?;
                handle
                    .progress(|run| {
                        update(run, |result| {
                            result.uncommitted_folders = cleared;
                            result.temporary_objects_deleted = removed;
                            result.temporary_bytes_freed = removed_bytes;
                        });
                    })
                    .await;
                break 'windows;
            }
            let mut paths = Vec::with_capacity(batch.len());
            for (hash, _) in &batch {
                let hash = ContentHash::from_hex(hash).ok_or_else(|| {
                    Error::internal("decode a listed object", format!("bad hash {hash:?}"))
                })?;
                paths.push(layout.object(&hash));
            }
            storage::delete_objects(
                handle.manager().agents(),
                &plan.cluster,
                &plan.location,
                &paths,
            )
            .await?;
            let hashes: Vec<String> = batch.iter().map(|(hash, _)| hash.clone()).collect();
            catalog.forget_listed_objects(run_id, &hashes).await?;
            deleted += batch.len() as u64;
            freed += batch.iter().map(|(_, size)| size).sum::<u64>();
            handle
                .progress(|run| {
                    update(run, |result| {
                        result.objects_deleted = deleted;
                        result.bytes_freed = freed;
                    });
                })
                .await;
            if catalog
                .backup_active_at(plan.cluster.id, plan.location.id)
                .await?
            {
                // A backup waits: let it run, then start over from step 2.
                catalog
                    .end_deletion(plan.cluster.id, plan.location.id)
                    .await?;
                continue 'windows;
            }
        }
    }
    catalog
        .end_deletion(plan.cluster.id, plan.location.id)
        .await?;
    handle
        .transition(|run| {
            update(run, |result| {
                result.objects_deleted = deleted;
                result.bytes_freed = freed;
                result.waits = waits;
            });
        })
        .await?;
    tracing::info!(deleted, freed, waits, "purge done");
    Ok(())
}

/// The backup folders of the cluster at the location that hold no commit manifest and that no
/// active backup run writes: deleted backups (their node manifests stay) and runs that never
/// committed.
async fn uncommitted_folders(handle: &RunHandle, plan: &PurgePlan) -> Result<Vec<Uuid>> {
    let layout = ClusterLayout::new(plan.cluster.id);
    let agents = handle.manager().agents();
    let catalog = handle.manager().catalog();
    let folders = match storage::list_folder(
        agents,
        &plan.cluster,
        &plan.location,
        &layout.backups(),
    )
    .await
    {
        Ok(folders) => folders,
        Err(Error::NotFound { .. }) => return Ok(Vec::new()),
        Err(error) => return Err(error),
    };
    let committed: HashSet<Uuid> = catalog
        .backup_ids(plan.cluster.id, plan.location.id)
        .await?
        .into_iter()
        .collect();
    let active: HashSet<Uuid> = catalog
        .active_backup_ids(plan.cluster.id, plan.location.id)
        .await?
        .into_iter()
        .collect();
    let mut uncommitted = Vec::new();
    for folder in folders {
        let Some(backup_id) = layout.backup_of_folder(&folder) else {
            continue;
        };
        if committed.contains(&backup_id) || active.contains(&backup_id) {
            continue;
        }
        let manifest = layout.backup_manifest(backup_id);
        match storage::get_object(agents, &plan.cluster, &plan.location, &manifest).await {
            Err(Error::NotFound { .. }) => uncommitted.push(backup_id),
            // Committed and unknown to the catalog: the purge was refused for those at start.
            Ok(_) => {}
            Err(error) => return Err(error),
        }
    }
    Ok(uncommitted)
}

/// Removes the node manifests of the uncommitted backup folders, inside a deletion window;
/// a folder an active run writes now (a backup waiting for the window) is left. Returns how
/// many folders were cleared.
async fn clear_uncommitted(handle: &RunHandle, plan: &PurgePlan, folders: &[Uuid]) -> Result<u64> {
    let layout = ClusterLayout::new(plan.cluster.id);
    let agents = handle.manager().agents();
    let active: HashSet<Uuid> = handle
        .manager()
        .catalog()
        .active_backup_ids(plan.cluster.id, plan.location.id)
        .await?
        .into_iter()
        .collect();
    let mut cleared = 0;
    for backup_id in folders.iter().filter(|id| !active.contains(id)) {
        let manifest = layout.backup_manifest(*backup_id);
        match storage::get_object(agents, &plan.cluster, &plan.location, &manifest).await {
            Err(Error::NotFound { .. }) => {}
            Ok(_) => continue,
            Err(error) => return Err(error),
        }
        let nodes = format!("{}{backup_id}/nodes/", layout.backups());
        let paths = match storage::list_folder(agents, &plan.cluster, &plan.location, &nodes).await
        {
            Ok(paths) => paths,
            Err(Error::NotFound { .. }) => Vec::new(),
            Err(error) => return Err(error),
        };
        let files: Vec<String> = paths
            .into_iter()
            .filter(|path| !path.ends_with('/'))
            .collect();
        if !files.is_empty() {
            storage::delete_objects(agents, &plan.cluster, &plan.location, &files).await?;
        }
        cleared += 1;
    }
    Ok(cleared)
}

/// Removes stale temporary objects (a day unwritten: no writer is still at them); returns how
/// many and their bytes.
async fn remove_temporaries(
    handle: &RunHandle,
    plan: &PurgePlan,
    temporaries: &[StaleTemporary],
) -> Result<(u64, u64)> {
    if temporaries.is_empty() {
        return Ok((0, 0));
    }
    let agents = handle.manager().agents();
    let mut removed = (0, 0);
    for batch in temporaries.chunks(DELETE_BATCH as usize) {
        let paths: Vec<String> = batch.iter().map(|t| t.path.clone()).collect();
        storage::delete_objects(agents, &plan.cluster, &plan.location, &paths).await?;
        removed.0 += batch.len() as u64;
        removed.1 += batch.iter().map(|t| t.size).sum::<u64>();
    }
    tracing::info!(
        removed = removed.0,
        bytes = removed.1,
        "purge removed temporary objects left by interrupted writes"
    );
    Ok(removed)
}

/// Marks as referenced, in the run's listing, everything the cluster's committed backups at the
/// location refer to, for the backups not in `checked` yet (which it then holds).
async fn mark_references(
    handle: &RunHandle,
    plan: &PurgePlan,
    checked: &mut HashSet<Uuid>,
) -> Result<()> {
    let backups = handle
        .manager()
        .catalog()
        .backups_at(plan.cluster.id, plan.location.id)
        .await?;
    for backup in backups {
        if checked.insert(backup.id) {
            mark_backup(handle, plan, &backup).await?;
        }
    }
    Ok(())
}

/// Marks what one backup refers to; a manifest that cannot be read fails the purge.
async fn mark_backup(handle: &RunHandle, plan: &PurgePlan, backup: &BackupRecord) -> Result<()> {
    let run_id = handle.run().id;
    let agents = handle.manager().agents();
    for node in &backup.nodes {
        let mut pages = ManifestPages::new(agents, &plan.cluster, &plan.location, node);
        loop {
            let files = match pages.next().await {
                Ok(Some(files)) => files,
                Ok(None) => break,
                Err(error) => {
                    return Err(Error::FailedPrecondition(format!(
                        "the purge deleted nothing: node manifest {} of backup {} cannot be \
                         read, so what it refers to is unknown ({error}); validate the location",
                        node.manifest_path, backup.id
                    )));
                }
            };
            // A packed file refers to its pack; the pack stays while any file refers to it.
            let hashes: Vec<String> = files
                .iter()
                .map(|file| file.object_hash().to_string())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            handle
                .manager()
                .catalog()
                .mark_referenced(run_id, &hashes)
                .await?;
        }
    }
    Ok(())
}
