//! Executing a restore run.
//!
//! Every mapped target node restores its source node's files (at most `node_parallelism` nodes
//! at once), streaming progress. Nodes are independent: a node that fails places nothing of its
//! own (the agent verifies everything before it moves anything) but does not stop the others;
//! the run fails naming every failed node. Staged, verified files stay on the nodes, so running
//! the restore again does not download them again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use coffer_proto::agent::v1 as agent;
use tokio::sync::Semaphore;
use uuid::Uuid;

use crate::agents::{AgentClients, call_error};
use crate::backups::BackupRecord;
use crate::error::{Error, Result};
use crate::locations::Location;
use crate::model::run::{NodePhase, RestoreSpec, RunState};
use crate::model::{Cluster, Node};
use crate::runs::RunHandle;

/// Everything a restore run needs, resolved when it was started.
#[derive(Debug, Clone)]
pub struct RestorePlan {
    /// The cluster restored onto.
    pub target: Cluster,
    /// The backup restored.
    pub backup: BackupRecord,
    /// Its location.
    pub location: Location,
    /// The recorded parameters.
    pub spec: RestoreSpec,
}

enum NodeEvent {
    Progress(Uuid, agent::RestoreProgress),
    Finished(Uuid, std::result::Result<agent::RestoreSummary, String>),
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
    let cancel = handle.cancelled();
    let node_count = plan.spec.mappings.len().max(1);
    let parallelism = match plan.spec.limits.node_parallelism {
        0 => node_count,
        n => (n as usize).min(node_count),
    };
    let permits = Arc::new(Semaphore::new(parallelism));
    let (events, mut received) = tokio::sync::mpsc::channel::<NodeEvent>(256);
    let mut tasks = tokio::task::JoinSet::new();
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
        let hook = plan
            .spec
            .hook
            .clone()
            .unwrap_or(crate::model::run::RestoreHook {
                command: Vec::new(),
                timeout_seconds: 0,
            });
        let request = agent::RestoreNodeRequest {
            run_id: run.id.to_string(),
            location: Some(plan.location.storage()),
            source_cluster_id: plan.backup.cluster_id.to_string(),
            backup_id: plan.backup.id.to_string(),
            source_node_id: source.node_id.to_string(),
            manifest_path: source.manifest_path.clone(),
            include: plan.spec.filter.include.clone(),
            exclude: plan.spec.filter.exclude.clone(),
            overwrite: plan.spec.overwrite,
            dry_run: run.dry_run,
            rate_limit_bytes_per_second: plan.spec.limits.rate_limit_bytes_per_second,
            concurrency: plan.spec.limits.concurrency,
            hook_command: hook.command,
            hook_timeout_seconds: hook.timeout_seconds,
        };
        let (agents, permits, cancel, events) = (
            agents.clone(),
            permits.clone(),
            cancel.clone(),
            events.clone(),
        );
        tasks.spawn(async move {
            let node_id = target.info.node_id;
            let outcome = tokio::select! {
                outcome = restore_node(&agents, &target, request, &permits, &events) => outcome,
                () = cancel.cancelled() => Err("canceled".to_string()),
            };
            let _ = events.send(NodeEvent::Finished(node_id, outcome)).await;
        });
    }
    drop(events);

    let mut meters: HashMap<Uuid, super::backup::RateMeter> = HashMap::new();
    let mut failures = Vec::new();
    while let Some(event) = received.recv().await {
        match event {
            NodeEvent::Progress(node_id, progress) => {
                let rate = meters
                    .entry(node_id)
                    .or_default()
                    .observe(progress.bytes_done);
                handle
                    .progress(|run| {
                        if let Some(node) = run.nodes.iter_mut().find(|n| n.node_id == node_id) {
                            node.phase = phase_of(&progress);
                            apply(&mut node.counters, &progress);
                            node.counters.rate_bytes_per_second = rate;
                            let remaining =
                                progress.bytes_total.saturating_sub(progress.bytes_done);
                            node.counters.eta = (rate > 0)
                                .then(|| Duration::from_secs_f64(remaining as f64 / rate as f64));
                        }
                    })
                    .await;
            }
            NodeEvent::Finished(node_id, Ok(summary)) => {
                let progress = summary.progress.unwrap_or_default();
                let note = if summary.existing_paths.is_empty() {
                    String::new()
                } else {
                    format!(
                        "{} existing file(s) {}: {}",
                        summary.files_overwritten,
                        match (run.dry_run, plan.spec.overwrite) {
                            (true, true) => "would be replaced",
                            (true, false) => "exist: without overwrite the restore refuses them",
                            _ => "replaced",
                        },
                        summary.existing_paths.join(", ")
                    )
                };
                handle
                    .progress(|run| {
                        if let Some(node) = run.nodes.iter_mut().find(|n| n.node_id == node_id) {
                            apply(&mut node.counters, &progress);
                            node.last_error = note;
                        }
                    })
                    .await;
                handle.node_phase(node_id, NodePhase::Done, None).await?;
            }
            NodeEvent::Finished(node_id, Err(reason)) if cancel.is_cancelled() => {
                tracing::info!(node_id = %node_id, reason, "node restore stopped by cancel");
                handle
                    .node_phase(node_id, NodePhase::Canceled, None)
                    .await?;
            }
            NodeEvent::Finished(node_id, Err(reason)) => {
                tracing::warn!(node_id = %node_id, reason, "node failed its restore");
                handle
                    .node_phase(node_id, NodePhase::Failed, Some(reason.clone()))
                    .await?;
                failures.push(format!("node {node_id}: {reason}"));
            }
        }
    }
    while tasks.join_next().await.is_some() {}
    if cancel.is_cancelled() {
        return Err(Error::FailedPrecondition("canceled".into()));
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(Error::FailedPrecondition(format!(
            "restore failed: {}",
            failures.join("; ")
        )))
    }
}

fn phase_of(progress: &agent::RestoreProgress) -> NodePhase {
    match agent::RestorePhase::try_from(progress.phase) {
        Ok(agent::RestorePhase::Placing) => NodePhase::Placing,
        Ok(agent::RestorePhase::RunningHook) => NodePhase::RunningHook,
        Ok(agent::RestorePhase::Planning) => NodePhase::Verifying,
        _ => NodePhase::Downloading,
    }
}

fn apply(counters: &mut crate::model::run::Counters, progress: &agent::RestoreProgress) {
    counters.files_total = progress.files_total;
    counters.files_done = progress.files_done;
    counters.files_skipped = progress.files_skipped;
    counters.bytes_total = progress.bytes_total;
    counters.bytes_done = progress.bytes_done;
    counters.bytes_skipped = progress.bytes_skipped;
    counters.bytes_transferred = progress.bytes_downloaded;
}

async fn restore_node(
    agents: &AgentClients,
    node: &Node,
    request: agent::RestoreNodeRequest,
    permits: &Semaphore,
    events: &tokio::sync::mpsc::Sender<NodeEvent>,
) -> std::result::Result<agent::RestoreSummary, String> {
    let _permit = permits
        .acquire()
        .await
        .map_err(|_| "canceled".to_string())?;
    let node_id = node.info.node_id;
    let mut client = agents
        .long_client(&node.spec.address)
        .map_err(|e| e.to_string())?;
    let mut stream = client
        .restore_node(request)
        .await
        .map_err(|status| call_error(&node.spec.address, &status).reason)?
        .into_inner();
    loop {
        match stream.message().await {
            Ok(Some(message)) => match message.event {
                Some(agent::restore_node_response::Event::Progress(progress)) => {
                    let _ = events.send(NodeEvent::Progress(node_id, progress)).await;
                }
                Some(agent::restore_node_response::Event::Done(summary)) => return Ok(summary),
                None => {}
            },
            Ok(None) => return Err("the agent ended the restore without a summary".into()),
            Err(status) => return Err(call_error(&node.spec.address, &status).reason),
        }
    }
}
