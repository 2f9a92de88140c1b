//! Executing a backup run.
//!
//! 1. Every node snapshots under the run's id as tag (all nodes first, so the backup is as close
//!    to one point in time as the cluster allows).
//! 2. Nodes upload their snapshots, at most `node_parallelism` at once, streaming progress.
//! 3. The backup's own manifest is written through an agent: the commit point. It is recorded in
//!    the catalog only if the run was not canceled meanwhile; otherwise it is removed again.
//! 4. Snapshots are removed on every node, whatever happened before.
//!
//! A node that fails stops the others; nothing is committed and the run fails naming the node.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tokio::sync::Semaphore;
use uuid::Uuid;

use crate::agents::snapshot::{self, IncrementalInto, UploadOrder};
use crate::agents::{AgentClients, stored};
use crate::error::{Error, Result};
use crate::model::backup::BackupRecord;
use crate::model::location::Location;
use crate::model::run::{BackupKind, BackupSpec, NodePhase, NodeUpdate, RunState, UploadSummary};
use crate::model::{Cluster, Node};
use crate::runs::RunHandle;
use crate::runs::fanout::{self, FanOut, NodeFailure, NodeWork, OnFailure};

/// Everything a backup run needs, resolved when it was started.
#[derive(Debug, Clone)]
pub struct BackupPlan {
    /// The cluster as it was when the run started.
    pub cluster: Cluster,
    pub location: Location,
    /// The recorded parameters.
    pub spec: BackupSpec,
    /// The kind actually taken (incremental without parent becomes full).
    pub kind: BackupKind,
    /// Parent of an incremental backup.
    pub parent_backup_id: Option<Uuid>,
    /// The location's purge generation when the run started.
    pub purge_generation: u64,
}

/// Runs the backup described by `plan`; every outcome ends in a final, persisted state.
pub async fn execute(mut handle: RunHandle, plan: BackupPlan) {
    let early_deletes = EarlyDeletes::default();
    let outcome = run_backup(&mut handle, &plan, &early_deletes).await;
    if !handle.run().dry_run {
        let mut cleanup = StepTimer::default();
        remove_snapshots(&mut handle, &plan, &early_deletes).await;
        tracing::debug!(cleanup_ms = cleanup.next(), "snapshots removed");
    }
    handle
        .finish(
            outcome,
            "the server shut down during the run; nothing was committed",
        )
        .await;
}

/// Snapshot deletions started as soon as a node finished its upload: they free the node's disk
/// space early and overlap the other nodes' uploads and the commit. The final sweep waits for
/// them and asks again only the nodes whose deletion did not succeed.
#[derive(Debug, Default, Clone)]
struct EarlyDeletes(Arc<std::sync::Mutex<Vec<EarlyDelete>>>);

/// A node, and whether its snapshot deletion succeeded (when it has finished).
type EarlyDelete = (Uuid, tokio::task::JoinHandle<bool>);

impl EarlyDeletes {
    fn start(&self, agents: Arc<AgentClients>, node: Node, tag: String) {
        let node_id = node.info.node_id;
        // Bounded work (one call); the sweep awaits it.
        let deletion = tokio::spawn(async move {
            match snapshot::delete(&agents, &node, tag).await {
                Ok(()) => true,
                Err(error) => {
                    tracing::warn!(node_id = %node_id, %error, "remove snapshot after upload");
                    false
                }
            }
        });
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((node_id, deletion));
    }

    /// Waits for the deletions started; returns the nodes whose snapshot is gone.
    async fn finished(&self) -> std::collections::HashSet<Uuid> {
        let deletions = std::mem::take(
            &mut *self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let mut done = std::collections::HashSet::new();
        for (node_id, deletion) in deletions {
            if matches!(deletion.await, Ok(true)) {
                done.insert(node_id);
            }
        }
        done
    }
}

async fn run_backup(
    handle: &mut RunHandle,
    plan: &BackupPlan,
    early_deletes: &EarlyDeletes,
) -> Result<()> {
    let mut steps = StepTimer::default();
    handle
        .transition(|run| {
            run.state = RunState::Running;
            run.start_time = Some(SystemTime::now());
        })
        .await?;
    let run = handle.run();
    let cancel = handle.cancelled();
    let running_ms = steps.next();
    // Before touching any node: the location must hold Coffer's format (or nothing yet).
    stored::ensure_format_marker(
        handle.manager().agents(),
        &plan.cluster,
        &plan.location,
        !run.dry_run,
    )
    .await?;
    let marker_ms = steps.next();
    if cancel.is_cancelled() {
        return Err(Error::Canceled);
    }
    let summaries = snapshot_and_upload_all(handle, plan, early_deletes).await?;
    let nodes_ms = steps.next();
    if run.dry_run {
        return Ok(());
    }
    let Some(backup_id) = run.backup_id else {
        return Err(Error::internal("commit backup", "the run has no backup id"));
    };
    commit(handle, plan, backup_id, &summaries).await?;
    tracing::debug!(
        running_ms,
        marker_ms,
        nodes_ms,
        commit_ms = steps.next(),
        "backup timings"
    );
    Ok(())
}

/// Milliseconds taken by each step of a run, for the debug log.
struct StepTimer(Instant);

impl Default for StepTimer {
    fn default() -> Self {
        Self(Instant::now())
    }
}

impl StepTimer {
    /// Milliseconds since the previous step ended (or the timer started).
    fn next(&mut self) -> u64 {
        let now = Instant::now();
        let elapsed = now.duration_since(self.0).as_millis() as u64;
        self.0 = now;
        elapsed
    }
}

/// Takes every node's snapshot and uploads each as soon as it is taken.
///
/// All snapshots are asked for at once (at the agents' call parallelism), so they are taken as
/// close together as before; a node's upload then starts when its own snapshot is ready (and an
/// upload slot is free) instead of when the slowest node's is: the nodes' work overlaps. A
/// snapshot that fails fails its node, which stops the others, as an upload failure does.
async fn snapshot_and_upload_all(
    handle: &mut RunHandle,
    plan: &BackupPlan,
    early_deletes: &EarlyDeletes,
) -> Result<Vec<(Node, UploadSummary)>> {
    let run = handle.run();
    let agents = handle.manager().agents().clone();
    let snapshot_permits = Arc::new(Semaphore::new(agents.options().parallelism.max(1)));
    if !run.dry_run {
        handle
            .transition(|run| {
                for node in &mut run.nodes {
                    node.phase = NodePhase::Snapshotting;
                }
            })
            .await?;
    }
    // An incremental backup reads only new and changed files: the agents need not freeze the
    // others.
    let journal_key = crate::model::location::journal_key(plan.location.id, plan.purge_generation);
    let incremental_location = match plan.kind {
        BackupKind::Incremental => Some(IncrementalInto::new(&plan.location, &journal_key)),
        BackupKind::Full => None,
    };
    let order = UploadOrder {
        tag: run.id.to_string(),
        location: plan.location.clone(),
        cluster_id: plan.cluster.id,
        backup_id: run.backup_id,
        kind: plan.kind,
        filter: plan.spec.filter.clone(),
        limits: plan.spec.limits,
        dry_run: run.dry_run,
        journal_key,
    };
    let nodes = plan
        .cluster
        .nodes
        .iter()
        .map(|node| (node.info.node_id, node.clone()))
        .collect();
    let fan_out = FanOut {
        node_parallelism: plan.spec.limits.node_parallelism,
        on_failure: OnFailure::StopOthers,
        what: "backup",
    };
    let work = |node: Node, work: NodeWork| {
        let (agents, order, early_deletes) = (agents.clone(), order.clone(), early_deletes.clone());
        let snapshot_permits = snapshot_permits.clone();
        let incremental_location = incremental_location.clone();
        async move {
            if !order.dry_run {
                let taken = {
                    let _permit = snapshot_permits
                        .acquire()
                        .await
                        .map_err(|_| NodeFailure::Canceled)?;
                    snapshot::create(&agents, &node, order.tag.clone(), incremental_location)
                        .await
                        .map_err(|error| NodeFailure::Failed(format!("snapshot: {error}")))?
                };
                let totals = NodeUpdate::Totals {
                    phase: NodePhase::Queued,
                    files_total: taken.file_count,
                    bytes_total: taken.total_bytes,
                };
                let _ = work.updates.send(totals).await;
            }
            let _slot = work.slot().await?;
            let summary = snapshot::upload(&agents, &node, &order, &work.updates)
                .await
                .map_err(|error| NodeFailure::Failed(error.reason))?;
            // The node's snapshot has served its purpose: free its disk space now rather than
            // when the slowest node finishes. (The final sweep retries failures.)
            if !order.dry_run {
                early_deletes.start(agents.clone(), node.clone(), order.tag.clone());
            }
            Ok(summary)
        }
    };
    let summaries = fanout::fan_out(
        handle,
        nodes,
        fan_out,
        work,
        |node, summary: &UploadSummary| {
            summary.progress.apply_to(&mut node.counters);
            node.counters.objects_uploaded = summary.objects_uploaded;
        },
    )
    .await?;
    Ok(summaries
        .into_iter()
        .filter_map(|(node_id, summary)| {
            let node = plan
                .cluster
                .nodes
                .iter()
                .find(|n| n.info.node_id == node_id);
            node.map(|node| (node.clone(), summary))
        })
        .collect())
}

async fn commit(
    handle: &mut RunHandle,
    plan: &BackupPlan,
    backup_id: Uuid,
    summaries: &[(Node, UploadSummary)],
) -> Result<()> {
    let run = handle.run();
    let format_time = coffer_format::manifest::format_time;
    let manifest = coffer_format::BackupManifest {
        format: coffer_format::manifest::BACKUP_MANIFEST_FORMAT.into(),
        version: coffer_format::manifest::MANIFEST_VERSION,
        backup_id,
        cluster_id: plan.cluster.id,
        cluster_name: plan.cluster.name.to_string(),
        kind: plan.kind,
        parent_backup_id: plan.parent_backup_id,
        location_id: plan.location.id.to_string(),
        labels: plan.spec.labels.clone(),
        start_time: format_time(run.start_time.unwrap_or(run.create_time)),
        commit_time: format_time(SystemTime::now()),
        run_id: Some(run.id),
        schedule_id: run.schedule_id,
        filter: plan.spec.filter.clone(),
        nodes: summaries
            .iter()
            .map(|(node, summary)| {
                let progress = summary.progress;
                coffer_format::BackupNode {
                    node_id: node.info.node_id,
                    hostname: node.info.hostname.clone(),
                    datacenter: node.spec.datacenter.clone(),
                    rack: node.spec.rack.clone(),
                    manifest_path: summary.manifest_path.clone(),
                    file_count: progress.files_total,
                    total_bytes: progress.bytes_total,
                    uploaded_bytes: progress.bytes_transferred,
                    uploaded_objects: summary.objects_uploaded,
                }
            })
            .collect(),
    };
    if handle.cancelled().is_cancelled() {
        return Err(Error::Canceled);
    }
    let agents = handle.manager().agents();
    stored::write_backup_manifest(agents, &plan.cluster, &plan.location, &manifest).await?;
    let record = BackupRecord::from_manifest(&manifest, &plan.location);
    if let Err(error) = handle.manager().catalog().record_backup(&record).await {
        // Canceled while the manifest was being written: take the commit back.
        tracing::warn!(%error, "backup not recorded; removing its commit manifest");
        stored::remove_backup_manifest(agents, &plan.cluster, &plan.location, backup_id).await?;
        return Err(error);
    }
    tracing::info!(backup_id = %backup_id, "backup committed");
    Ok(())
}

async fn remove_snapshots(handle: &mut RunHandle, plan: &BackupPlan, early_deletes: &EarlyDeletes) {
    let run = handle.run();
    let tag = run.id.to_string();
    let deleted = early_deletes.finished().await;
    let remaining: Vec<Node> = plan
        .cluster
        .nodes
        .iter()
        .filter(|node| !deleted.contains(&node.info.node_id))
        .cloned()
        .collect();
    if remaining.is_empty() {
        return;
    }
    let _ = handle
        .transition(|run| {
            for node in &mut run.nodes {
                let sweeping = remaining.iter().any(|n| n.info.node_id == node.node_id);
                if sweeping && !matches!(node.phase, NodePhase::Failed | NodePhase::Done) {
                    node.phase = NodePhase::CleaningUp;
                }
            }
        })
        .await;
    let agents = handle.manager().agents().clone();
    let failures = snapshot::delete_all(&agents, &remaining, &tag).await;
    for (node_id, reason) in failures {
        let _ = handle
            .progress(|run| {
                if let Some(node) = run.nodes.iter_mut().find(|n| n.node_id == node_id) {
                    node.last_error = format!("snapshot {tag} not removed: {reason}");
                }
            })
            .await;
    }
}
