//! What a validate run does: one listing of the cluster's objects in the location, recorded in
//! the catalog as it streams in; every node manifest of every backup checked against it a page
//! at a time (missing objects, stored sizes no content of the file's size can have); and, deep,
//! a sample of the referenced objects downloaded and verified by the agents. The server holds
//! neither the listing nor a manifest whole.
//!
//! When verification finds damaged objects, the manifests are read once more, so that every
//! backup needing one is reported unrestorable with the files it affects.

mod deep;
mod manifests;

use std::time::SystemTime;

use crate::error::Result;
use crate::model::Cluster;
use crate::model::backup::BackupRecord;
use crate::model::location::Location;
use crate::model::run::{Run, RunState};
use crate::model::validation::{Depth, Thoroughness, ValidationResult};
use crate::runs::RunHandle;
use crate::runs::listing::list_objects;

/// What a validate run checks.
#[derive(Debug, Clone)]
pub struct ValidatePlan {
    pub cluster: Cluster,
    pub location: Location,
    /// The cluster's committed backups in the location when the run was started, oldest first.
    pub backups: Vec<BackupRecord>,
    pub thoroughness: Thoroughness,
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

/// Changes the run's result (there is one from the run's start).
fn update(run: &mut Run, change: impl FnOnce(&mut ValidationResult)) {
    if let Some(result) = run.validation.as_mut() {
        change(result);
    }
}

async fn validate(handle: &mut RunHandle, plan: &ValidatePlan) -> Result<()> {
    let run_id = handle.run().id;
    handle
        .transition(|run| {
            run.state = RunState::Running;
            run.start_time = Some(SystemTime::now());
            run.validation = Some(ValidationResult::default());
        })
        .await?;
    let catalog = handle.manager().catalog().clone();
    let listing = list_objects(handle, &plan.cluster, &plan.location, |run, listed| {
        update(run, |result| result.objects_listed = listed);
    })
    .await?;

    manifests::check_backups(handle, plan).await?;
    if plan.thoroughness.depth == Depth::Deep {
        let counts = catalog.listed_object_counts(run_id).await?;
        let wanted = plan
            .thoroughness
            .objects_to_verify(counts.referenced.saturating_sub(counts.damaged));
        let chosen = catalog
            .choose_objects_to_verify(run_id, plan.cluster.id, plan.location.id, wanted)
            .await?;
        handle
            .transition(|run| update(run, |result| result.objects_to_verify = chosen))
            .await?;
        let damaged = deep::verify(handle, plan).await?;
        if damaged > 0 {
            // Name the backups and files the damaged objects break.
            manifests::check_backups(handle, plan).await?;
        }
    }

    let counts = catalog.listed_object_counts(run_id).await?;
    let never_verified = match plan.thoroughness.depth {
        Depth::Deep => {
            catalog
                .never_verified_count(run_id, plan.cluster.id, plan.location.id)
                .await?
        }
        Depth::Quick => 0,
    };
    let forgotten = catalog
        .forget_unlisted_verifications(run_id, plan.cluster.id, plan.location.id)
        .await?;
    handle
        .transition(|run| {
            update(run, |result| {
                result.objects_referenced = counts.referenced + counts.missing;
                result.objects_missing = counts.missing;
                result.objects_damaged = counts.damaged;
                result.objects_orphaned = counts.orphaned;
                result.orphaned_bytes = counts.orphaned_bytes;
                result.objects_never_verified = never_verified;
            });
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
        objects = listing.objects,
        missing = counts.missing,
        damaged = counts.damaged,
        orphaned = counts.orphaned,
        never_verified,
        forgotten_verifications = forgotten,
        "validation done"
    );
    Ok(())
}
