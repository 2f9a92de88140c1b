//! Executing a restore run.
//!
//! Every mapped target node restores its source node's files (at most `node_parallelism` nodes
//! at once), streaming progress. Nodes are independent: a node that fails places nothing of its
//! own (the agent verifies everything before it moves anything) but does not stop the others;
//! the run fails naming every failed node. Staged, verified files stay on the nodes, so running
//! the restore again does not download them again.

use std::time::SystemTime;

use crate::agents::restore::{RestoreOrder, restore_node};
use crate::error::{Error, Result};
use crate::model::Cluster;
use crate::model::backup::BackupRecord;
use crate::model::location::Location;
use crate::model::run::{RestoreSpec, RestoreSummary, RunState};
use crate::runs::RunHandle;
use crate::runs::fanout::{self, FanOut, NodeFailure, NodeWork, OnFailure};

/// Everything a restore run needs, resolved when it was started.
#[derive(Debug, Clone)]
pub struct RestorePlan {
    /// The cluster restored onto.
    pub target: Cluster,
    /// The backup restored.
    pub backup: BackupRecord,
    pub location: Location,
    /// The recorded parameters.
    pub spec: RestoreSpec,
}

/// Runs the restore described by `plan`; every outcome ends in a final, persisted state.
pub async fn execute(mut handle: RunHandle, plan: RestorePlan) {
    let outcome = run_restore(&mut handle, &plan).await;
    handle
        .finish(
            outcome,
            "the server shut down during the restore; run it again to finish (verified files are kept)",
        )
        .await;
}

async fn run_restore(handle: &mut RunHandle, plan: &RestorePlan) -> Result<()> {
    handle
        .transition(|run| {
            run.state = RunState::Running;
            run.start_time = Some(SystemTime::now());
        })
        .await?;
    let run = handle.run();
    let agents = handle.manager().agents().clone();
    let mut nodes = Vec::with_capacity(plan.spec.mappings.len());
    for mapping in &plan.spec.mappings {
        let Some(target) = plan
            .target
            .nodes
            .iter()
            .find(|n| n.info.node_id == mapping.target_node_id)
            .cloned()
        else {
            return Err(Error::FailedPrecondition(format!(
                "node {} is no longer in cluster {}",
                mapping.target_node_id, plan.target.name
            )));
        };
        let Some(source) = plan
            .backup
            .nodes
            .iter()
            .find(|n| n.node_id == mapping.source_node_id)
        else {
            return Err(Error::internal(
                "plan restore",
                "a mapped source node is not in the backup",
            ));
        };
        let order = RestoreOrder {
            run_id: run.id,
            location: plan.location.clone(),
            source_cluster_id: plan.backup.cluster_id,
            backup_id: plan.backup.id,
            source_node_id: source.node_id,
            manifest_path: source.manifest_path.clone(),
            filter: plan.spec.filter.clone(),
            overwrite: plan.spec.overwrite,
            dry_run: run.dry_run,
            limits: plan.spec.limits,
            hook: plan.spec.hook.clone(),
        };
        nodes.push((target.info.node_id, (target, order)));
    }
    let fan_out = FanOut {
        node_parallelism: plan.spec.limits.node_parallelism,
        on_failure: OnFailure::Continue,
        what: "restore",
    };
    let work = |(target, order), work: NodeWork| {
        let agents = agents.clone();
        async move {
            let _slot = work.slot().await?;
            restore_node(&agents, &target, &order, &work.updates)
                .await
                .map_err(|error| NodeFailure::Failed(error.reason))
        }
    };
    let (dry_run, overwrite) = (run.dry_run, plan.spec.overwrite);
    fanout::fan_out(
        handle,
        nodes,
        fan_out,
        work,
        |node, summary: &RestoreSummary| {
            summary.progress.apply_to(&mut node.counters);
            node.last_error = existing_files_note(summary, dry_run, overwrite);
        },
    )
    .await?;
    Ok(())
}

/// What a node's restore found already in place, for its node message.
fn existing_files_note(summary: &RestoreSummary, dry_run: bool, overwrite: bool) -> String {
    if summary.existing_paths.is_empty() {
        return String::new();
    }
    format!(
        "{} existing file(s) {}: {}",
        summary.files_overwritten,
        match (dry_run, overwrite) {
            (true, true) => "would be replaced",
            (true, false) => "exist: without overwrite the restore refuses them",
            _ => "replaced",
        },
        summary.existing_paths.join(", ")
    )
}
