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
use std::time::{Duration, Instant, SystemTime};

use coffer_proto::agent::v1 as agent;
use futures::StreamExt;
use tokio::sync::Semaphore;
use uuid::Uuid;

use crate::agents::{AgentClients, call_error};
use crate::backups::{BackupNodeRecord, BackupRecord};
use crate::error::{Error, Result};
use crate::locations::Location;
use crate::model::run::{BackupKind, BackupSpec, NodePhase, PathFilter, Run, RunState};
use crate::model::{Cluster, Node};
use crate::runs::{RunHandle, RunManager};

/// Everything a backup run needs, resolved when it was started.
#[derive(Debug, Clone)]
pub struct BackupPlan {
    /// The cluster as it was when the run started.
    pub cluster: Cluster,
    /// The location.
    pub location: Location,
    /// The recorded parameters.
    pub spec: BackupSpec,
    /// The kind actually taken (incremental without parent becomes full).
    pub kind: BackupKind,
    /// Parent of an incremental backup.
    pub parent_backup_id: Option<Uuid>,
}

/// What ended a node's part.
#[derive(Debug)]
enum NodeOutcome {
    Done(agent::UploadSummary),
    Failed(String),
    Canceled,
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
            match delete_snapshot(&agents, &node, tag).await {
                Ok(()) => true,
                Err(reason) => {
                    tracing::warn!(node_id = %node_id, reason, "remove snapshot after upload");
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
    ensure_format_marker(handle.manager().agents(), plan, !run.dry_run).await?;
    let marker_ms = steps.next();
    if cancel.is_cancelled() {
        return Err(Error::FailedPrecondition("canceled".into()));
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

/// Checks the location's `coffer.json`: a location of another format, or of a newer version of
/// Coffer's, is refused before anything is written. A location without one gets one (unless
/// `write` is false, for dry runs).
async fn ensure_format_marker(agents: &AgentClients, plan: &BackupPlan, write: bool) -> Result<()> {
    let path = coffer_format::MARKER_PATH;
    match get_object(agents, &plan.cluster, &plan.location, path).await {
        Ok(content) => coffer_format::FormatMarker::parse(&content)
            .map(|_| ())
            .map_err(|error| {
                Error::FailedPrecondition(format!("location {}: {error}", plan.location.name))
            }),
        Err(Error::NotFound { .. }) if write => {
            let marker = serde_json::to_vec(&coffer_format::FormatMarker::default())
                .map_err(|error| Error::internal("encode format marker", error))?;
            put_object(agents, &plan.cluster, &plan.location, path, marker).await
        }
        Err(Error::NotFound { .. }) => Ok(()),
        Err(error) => Err(error),
    }
}

/// What one node's part reports to the run.
enum NodeEvent {
    Snapshotted(Uuid, agent::CreateSnapshotResponse),
    Progress(Uuid, agent::UploadProgress),
    Finished(Uuid, NodeOutcome),
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
) -> Result<Vec<(Node, agent::UploadSummary)>> {
    let run = handle.run();
    let agents = handle.manager().agents().clone();
    let parent_cancel = handle.cancelled();
    // A failing node stops the others through this token; a cancel of the run reaches it too.
    let stop = parent_cancel.child_token();
    let node_count = plan.cluster.nodes.len().max(1);
    let parallelism = match plan.spec.limits.node_parallelism {
        0 => node_count,
        n => (n as usize).min(node_count),
    };
    let permits = Arc::new(Semaphore::new(parallelism));
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
    let incremental_location_id = match plan.kind {
        BackupKind::Incremental => plan.location.id.to_string(),
        BackupKind::Full => String::new(),
    };
    let (events, mut received) = tokio::sync::mpsc::channel::<NodeEvent>(256);
    let mut tasks = tokio::task::JoinSet::new();
    for node in plan.cluster.nodes.clone() {
        let request = agent::UploadSnapshotRequest {
            tag: run.id.to_string(),
            location: Some(plan.location.storage()),
            cluster_id: plan.cluster.id.to_string(),
            backup_id: run.backup_id.map(|id| id.to_string()).unwrap_or_default(),
            kind: match plan.kind {
                BackupKind::Full => agent::BackupKind::Full,
                BackupKind::Incremental => agent::BackupKind::Incremental,
            }
            .into(),
            include: plan.spec.filter.include.clone(),
            exclude: plan.spec.filter.exclude.clone(),
            rate_limit_bytes_per_second: plan.spec.limits.rate_limit_bytes_per_second,
            concurrency: plan.spec.limits.concurrency,
            dry_run: run.dry_run,
            compression: Some(plan.location.object_compression()),
        };
        let agents = agents.clone();
        let permits = permits.clone();
        let snapshot_permits = snapshot_permits.clone();
        let stop = stop.clone();
        let events = events.clone();
        let early_deletes = early_deletes.clone();
        let incremental_location_id = incremental_location_id.clone();
        let dry_run = run.dry_run;
        tasks.spawn(async move {
            let node_id = node.info.node_id;
            let work = async {
                if !dry_run {
                    let snapshot = agent::CreateSnapshotRequest {
                        tag: request.tag.clone(),
                        incremental_location_id: incremental_location_id.clone(),
                    };
                    match snapshot_node(&agents, &node, snapshot, &snapshot_permits).await {
                        Ok(snapshot) => {
                            let _ = events.send(NodeEvent::Snapshotted(node_id, snapshot)).await;
                        }
                        Err(reason) => return NodeOutcome::Failed(format!("snapshot: {reason}")),
                    }
                }
                upload_node(&agents, &node, request, &permits, &events, &early_deletes).await
            };
            let outcome = tokio::select! {
                outcome = work => outcome,
                () = stop.cancelled() => NodeOutcome::Canceled,
            };
            let _ = events.send(NodeEvent::Finished(node_id, outcome)).await;
        });
    }
    drop(events);

    let mut rates: std::collections::HashMap<Uuid, RateMeter> = std::collections::HashMap::new();
    let mut summaries = Vec::new();
    let mut failures = Vec::new();
    while let Some(event) = received.recv().await {
        match event {
            NodeEvent::Snapshotted(node_id, snapshot) => {
                handle
                    .progress(|run| {
                        if let Some(node) = run.nodes.iter_mut().find(|n| n.node_id == node_id) {
                            node.counters.files_total = snapshot.file_count;
                            node.counters.bytes_total = snapshot.total_bytes;
                            node.phase = NodePhase::Queued;
                        }
                    })
                    .await;
            }
            NodeEvent::Progress(node_id, progress) => {
                let meter = rates.entry(node_id).or_default();
                let rate = meter.observe(progress.bytes_done);
                handle
                    .progress(|run| {
                        if let Some(node) = run.nodes.iter_mut().find(|n| n.node_id == node_id) {
                            node.phase = match agent::UploadPhase::try_from(progress.phase) {
                                Ok(agent::UploadPhase::Uploading) => NodePhase::Uploading,
                                Ok(agent::UploadPhase::WritingManifest) => NodePhase::Uploading,
                                _ => NodePhase::Hashing,
                            };
                            apply_progress(&mut node.counters, &progress);
                            node.counters.rate_bytes_per_second = rate;
                            let remaining =
                                progress.bytes_total.saturating_sub(progress.bytes_done);
                            node.counters.eta = (rate > 0)
                                .then(|| Duration::from_secs_f64(remaining as f64 / rate as f64));
                        }
                    })
                    .await;
            }
            NodeEvent::Finished(node_id, NodeOutcome::Done(summary)) => {
                let progress = summary.progress.unwrap_or_default();
                handle
                    .progress(|run| {
                        if let Some(node) = run.nodes.iter_mut().find(|n| n.node_id == node_id) {
                            apply_progress(&mut node.counters, &progress);
                            node.counters.objects_uploaded = summary.objects_uploaded;
                            node.counters.rate_bytes_per_second = 0;
                            node.counters.eta = None;
                            // Its part is done, whatever becomes of the others' or the commit:
                            // a run that fails later shows which nodes did their share.
                            node.phase = NodePhase::Done;
                        }
                    })
                    .await;
                if let Some(node) = plan
                    .cluster
                    .nodes
                    .iter()
                    .find(|n| n.info.node_id == node_id)
                {
                    summaries.push((node.clone(), summary));
                }
            }
            NodeEvent::Finished(node_id, NodeOutcome::Failed(reason)) => {
                tracing::warn!(node_id = %node_id, reason, "node failed its snapshot or upload");
                handle
                    .node_phase(node_id, NodePhase::Failed, Some(reason.clone()))
                    .await?;
                failures.push(format!("node {node_id}: {reason}"));
                stop.cancel();
            }
            NodeEvent::Finished(node_id, NodeOutcome::Canceled) => {
                handle
                    .node_phase(node_id, NodePhase::Canceled, None)
                    .await?;
            }
        }
    }
    while tasks.join_next().await.is_some() {}
    if !failures.is_empty() {
        return Err(Error::FailedPrecondition(format!(
            "backup failed: {}",
            failures.join("; ")
        )));
    }
    if parent_cancel.is_cancelled() {
        return Err(Error::FailedPrecondition("canceled".into()));
    }
    Ok(summaries)
}

fn apply_progress(counters: &mut crate::model::run::Counters, progress: &agent::UploadProgress) {
    counters.files_total = progress.files_total;
    counters.files_done = progress.files_done;
    counters.files_skipped = progress.files_skipped;
    counters.bytes_total = progress.bytes_total;
    counters.bytes_done = progress.bytes_done;
    counters.bytes_skipped = progress.bytes_skipped;
    counters.bytes_transferred = progress.bytes_uploaded;
}

/// Takes `node`'s snapshot, at most `permits` nodes at a time; the error says why.
async fn snapshot_node(
    agents: &AgentClients,
    node: &Node,
    request: agent::CreateSnapshotRequest,
    permits: &Semaphore,
) -> std::result::Result<agent::CreateSnapshotResponse, String> {
    let Ok(_permit) = permits.acquire().await else {
        return Err("canceled".into());
    };
    let mut client = agents
        .long_client(&node.spec.address)
        .map_err(|error| error.to_string())?;
    client
        .create_snapshot(request)
        .await
        .map(tonic::Response::into_inner)
        .map_err(|status| call_error(&node.spec.address, &status).to_string())
}

async fn upload_node(
    agents: &Arc<AgentClients>,
    node: &Node,
    request: agent::UploadSnapshotRequest,
    permits: &Semaphore,
    events: &tokio::sync::mpsc::Sender<NodeEvent>,
    early_deletes: &EarlyDeletes,
) -> NodeOutcome {
    let Ok(_permit) = permits.acquire().await else {
        return NodeOutcome::Canceled;
    };
    let node_id = node.info.node_id;
    let (tag, dry_run) = (request.tag.clone(), request.dry_run);
    let mut client = match agents.long_client(&node.spec.address) {
        Ok(client) => client,
        Err(error) => return NodeOutcome::Failed(error.to_string()),
    };
    let mut stream = match client.upload_snapshot(request).await {
        Ok(response) => response.into_inner(),
        Err(status) => return NodeOutcome::Failed(call_error(&node.spec.address, &status).reason),
    };
    loop {
        match stream.message().await {
            Ok(Some(message)) => match message.event {
                Some(agent::upload_snapshot_response::Event::Progress(progress)) => {
                    let _ = events.send(NodeEvent::Progress(node_id, progress)).await;
                }
                Some(agent::upload_snapshot_response::Event::Done(summary)) => {
                    // The node's snapshot has served its purpose: free its disk space now rather
                    // than when the slowest node finishes. (The final sweep retries failures.)
                    if !dry_run {
                        early_deletes.start(agents.clone(), node.clone(), tag.clone());
                    }
                    return NodeOutcome::Done(summary);
                }
                None => {}
            },
            Ok(None) => {
                return NodeOutcome::Failed("the agent ended the upload without a summary".into());
            }
            Err(status) => {
                return NodeOutcome::Failed(call_error(&node.spec.address, &status).reason);
            }
        }
    }
}

/// Throughput over the last few seconds, from cumulative byte counts.
#[derive(Debug, Default)]
pub(crate) struct RateMeter {
    last: Option<(Instant, u64)>,
    rate: f64,
}

impl RateMeter {
    pub(crate) fn observe(&mut self, bytes_done: u64) -> u64 {
        let now = Instant::now();
        if let Some((then, before)) = self.last {
            let elapsed = now.duration_since(then).as_secs_f64();
            if elapsed >= 0.2 {
                let instant = bytes_done.saturating_sub(before) as f64 / elapsed;
                // Exponential smoothing: steady enough for an ETA, quick to follow real changes.
                self.rate = if self.rate == 0.0 {
                    instant
                } else {
                    0.7 * self.rate + 0.3 * instant
                };
                self.last = Some((now, bytes_done));
            }
        } else {
            self.last = Some((now, bytes_done));
        }
        self.rate as u64
    }
}

fn from_manifest_time(text: &str) -> SystemTime {
    coffer_format::manifest::parse_time(text).unwrap_or(SystemTime::UNIX_EPOCH)
}

/// The catalog record of a committed backup, from its manifest.
fn record_of(manifest: &coffer_format::BackupManifest, location: &Location) -> BackupRecord {
    BackupRecord {
        id: manifest.backup_id,
        cluster_id: manifest.cluster_id,
        cluster_name: manifest.cluster_name.clone(),
        location_id: location.id,
        location_name: location.name.to_string(),
        kind: match manifest.kind {
            coffer_format::BackupKind::Full => BackupKind::Full,
            coffer_format::BackupKind::Incremental => BackupKind::Incremental,
        },
        parent_backup_id: manifest.parent_backup_id,
        filter: PathFilter {
            include: manifest.filter.include.clone(),
            exclude: manifest.filter.exclude.clone(),
        },
        labels: manifest.labels.clone(),
        run_id: manifest.run_id,
        schedule_id: None,
        start_time: from_manifest_time(&manifest.start_time),
        commit_time: from_manifest_time(&manifest.commit_time),
        nodes: manifest
            .nodes
            .iter()
            .map(|node| BackupNodeRecord {
                node_id: node.node_id,
                hostname: node.hostname.clone(),
                datacenter: node.datacenter.clone(),
                rack: node.rack.clone(),
                manifest_path: node.manifest_path.clone(),
                file_count: node.file_count,
                total_bytes: node.total_bytes,
                uploaded_bytes: node.uploaded_bytes,
                uploaded_objects: node.uploaded_objects,
            })
            .collect(),
    }
}

async fn commit(
    handle: &mut RunHandle,
    plan: &BackupPlan,
    backup_id: Uuid,
    summaries: &[(Node, agent::UploadSummary)],
) -> Result<()> {
    let run = handle.run();
    let format_time = coffer_format::manifest::format_time;
    let manifest = coffer_format::BackupManifest {
        format: coffer_format::manifest::BACKUP_MANIFEST_FORMAT.into(),
        version: coffer_format::manifest::MANIFEST_VERSION,
        backup_id,
        cluster_id: plan.cluster.id,
        cluster_name: plan.cluster.name.to_string(),
        kind: match plan.kind {
            BackupKind::Full => coffer_format::BackupKind::Full,
            BackupKind::Incremental => coffer_format::BackupKind::Incremental,
        },
        parent_backup_id: plan.parent_backup_id,
        location_id: plan.location.id.to_string(),
        labels: plan.spec.labels.clone(),
        start_time: format_time(run.start_time.unwrap_or(run.create_time)),
        commit_time: format_time(SystemTime::now()),
        run_id: Some(run.id),
        filter: coffer_format::PathFilter {
            include: plan.spec.filter.include.clone(),
            exclude: plan.spec.filter.exclude.clone(),
        },
        nodes: summaries
            .iter()
            .map(|(node, summary)| {
                let progress = summary.progress.unwrap_or_default();
                coffer_format::BackupNode {
                    node_id: node.info.node_id,
                    hostname: node.info.hostname.clone(),
                    datacenter: node.spec.datacenter.clone(),
                    rack: node.spec.rack.clone(),
                    manifest_path: summary.manifest_path.clone(),
                    file_count: progress.files_total,
                    total_bytes: progress.bytes_total,
                    uploaded_bytes: progress.bytes_uploaded,
                    uploaded_objects: summary.objects_uploaded,
                }
            })
            .collect(),
    };
    manifest
        .validate()
        .map_err(|error| Error::internal("build backup manifest", error))?;
    let content = manifest.encode();
    let path = coffer_format::ClusterLayout::new(plan.cluster.id).backup_manifest(backup_id);
    if handle.cancelled().is_cancelled() {
        return Err(Error::FailedPrecondition("canceled".into()));
    }
    put_object(
        handle.manager().agents(),
        &plan.cluster,
        &plan.location,
        &path,
        content,
    )
    .await?;
    let record = record_of(&manifest, &plan.location);
    if let Err(error) = handle.manager().catalog().record_backup(&record).await {
        // Canceled while the manifest was being written: take the commit back.
        tracing::warn!(%error, "backup not recorded; removing its commit manifest");
        delete_object(
            handle.manager().agents(),
            &plan.cluster,
            &plan.location,
            &path,
        )
        .await?;
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
    let failures = delete_snapshots(&agents, &remaining, &tag).await;
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

/// Asks `node` to delete the snapshot `tag`; the error names the agent.
async fn delete_snapshot(
    agents: &AgentClients,
    node: &Node,
    tag: String,
) -> std::result::Result<(), String> {
    let mut client = agents
        .long_client(&node.spec.address)
        .map_err(|e| e.to_string())?;
    client
        .delete_snapshot(agent::DeleteSnapshotRequest { tag })
        .await
        .map(|_| ())
        .map_err(|status| call_error(&node.spec.address, &status).to_string())
}

/// Asks every node to delete the snapshot `tag`; returns the nodes that failed.
async fn delete_snapshots(
    agents: &Arc<AgentClients>,
    nodes: &[Node],
    tag: &str,
) -> Vec<(Uuid, String)> {
    let results: Vec<_> = futures::stream::iter(nodes.iter().cloned())
        .map(|node| {
            let agents = agents.clone();
            let tag = tag.to_string();
            async move {
                (
                    node.info.node_id,
                    delete_snapshot(&agents, &node, tag).await,
                )
            }
        })
        .buffer_unordered(agents.options().parallelism.max(1))
        .collect()
        .await;
    results
        .into_iter()
        .filter_map(|(node_id, result)| match result {
            Ok(_) => None,
            Err(reason) => {
                tracing::warn!(node_id = %node_id, reason, "remove snapshot");
                Some((node_id, reason))
            }
        })
        .collect()
}

/// Asks the cluster's agents, in turn, until one succeeds.
async fn with_any_agent<T, F, Fut>(
    agents: &AgentClients,
    cluster: &Cluster,
    what: &str,
    call: F,
) -> Result<T>
where
    F: Fn(
        coffer_proto::agent::v1::agent_service_client::AgentServiceClient<tonic::transport::Channel>,
    ) -> Fut,
    Fut: Future<Output = std::result::Result<T, tonic::Status>>,
{
    let mut reasons = Vec::new();
    for node in &cluster.nodes {
        let client = match agents.client(&node.spec.address) {
            Ok(client) => client,
            Err(error) => {
                reasons.push(error.to_string());
                continue;
            }
        };
        match call(client).await {
            Ok(value) => return Ok(value),
            Err(status) if status.code() == tonic::Code::NotFound => {
                return Err(Error::NotFound {
                    kind: "object",
                    name: status.message().to_string(),
                });
            }
            Err(status) => reasons.push(call_error(&node.spec.address, &status).to_string()),
        }
    }
    Err(Error::Unavailable(format!(
        "no agent of cluster {} could {what}: {}",
        cluster.name,
        reasons.join("; ")
    )))
}

/// Writes a small object into a location through an agent of the cluster.
pub async fn put_object(
    agents: &AgentClients,
    cluster: &Cluster,
    location: &Location,
    path: &str,
    content: Vec<u8>,
) -> Result<()> {
    with_any_agent(agents, cluster, "write to the location", |mut client| {
        let request = agent::PutObjectRequest {
            location: Some(location.storage()),
            path: path.to_string(),
            content: content.clone(),
        };
        async move { client.put_object(request).await.map(|_| ()) }
    })
    .await
}

/// Reads a small object from a location through an agent of the cluster.
pub async fn get_object(
    agents: &AgentClients,
    cluster: &Cluster,
    location: &Location,
    path: &str,
) -> Result<Vec<u8>> {
    with_any_agent(agents, cluster, "read from the location", |mut client| {
        let request = agent::GetObjectRequest {
            location: Some(location.storage()),
            path: path.to_string(),
        };
        async move {
            client
                .get_object(request)
                .await
                .map(|r| r.into_inner().content)
        }
    })
    .await
}

/// Deletes an object from a location through an agent of the cluster.
pub async fn delete_object(
    agents: &AgentClients,
    cluster: &Cluster,
    location: &Location,
    path: &str,
) -> Result<()> {
    with_any_agent(agents, cluster, "delete from the location", |mut client| {
        let request = agent::DeleteObjectRequest {
            location: Some(location.storage()),
            path: path.to_string(),
        };
        async move { client.delete_object(request).await.map(|_| ()) }
    })
    .await
}

/// Reads a page of a node manifest through an agent of the cluster.
pub async fn read_manifest_page(
    agents: &AgentClients,
    cluster: &Cluster,
    location: &Location,
    path: &str,
    offset: u64,
    limit: u32,
) -> Result<(Vec<agent::ManifestEntry>, bool)> {
    with_any_agent(agents, cluster, "read the node manifest", |mut client| {
        let request = agent::ReadNodeManifestRequest {
            location: Some(location.storage()),
            path: path.to_string(),
            offset,
            limit,
        };
        async move {
            client.read_node_manifest(request).await.map(|r| {
                let r = r.into_inner();
                (r.entries, r.more)
            })
        }
    })
    .await
}

/// Finishes a backup run a previous server process left in flight: committed if its manifest
/// reached storage, failed otherwise; its snapshots are removed either way.
pub async fn recover(manager: &RunManager, mut run: Run) {
    let spec_location = run.spec.location_id();
    let is_backup = matches!(run.spec, crate::model::run::RunSpec::Backup(_));
    let cluster = manager
        .catalog()
        .find_cluster(&run.cluster_id.to_string())
        .await
        .ok()
        .flatten();
    let location = manager
        .catalog()
        .find_location(&spec_location.to_string())
        .await
        .ok()
        .flatten();
    let mut committed = false;
    if let (Some(cluster), Some(location), Some(backup_id)) = (&cluster, &location, run.backup_id)
        && run.state != RunState::Canceling
        && !run.dry_run
        && is_backup
    {
        let path = coffer_format::ClusterLayout::new(cluster.id).backup_manifest(backup_id);
        match get_object(manager.agents(), cluster, location, &path).await {
            Ok(content) => match coffer_format::BackupManifest::decode(&path, &content) {
                Ok(manifest) => {
                    let record = record_of(&manifest, location);
                    committed = manager.catalog().record_backup(&record).await.is_ok();
                }
                Err(error) => {
                    tracing::warn!(%error, "unreadable commit manifest of an interrupted run")
                }
            },
            Err(Error::NotFound { .. }) => {}
            Err(error) => {
                tracing::warn!(%error, "look for the commit manifest of an interrupted run")
            }
        }
    }
    if let Some(cluster) = &cluster
        && !run.dry_run
        && is_backup
    {
        delete_snapshots(manager.agents(), &cluster.nodes, &run.id.to_string()).await;
    }
    let now = SystemTime::now();
    run.finish_time = Some(now);
    run.update_time = now;
    if committed {
        run.state = RunState::Succeeded;
        for node in &mut run.nodes {
            node.phase = NodePhase::Done;
        }
    } else {
        run.state = if run.state == RunState::Canceling {
            RunState::Canceled
        } else {
            RunState::Failed
        };
        if run.state == RunState::Failed {
            run.error = if is_backup {
                "the server stopped during the run; nothing was committed".into()
            } else {
                "the server stopped during the restore; run it again to finish (verified files are kept)".into()
            };
        }
        for node in &mut run.nodes {
            if !matches!(node.phase, NodePhase::Done | NodePhase::Failed) {
                node.phase = if run.state == RunState::Canceled {
                    NodePhase::Canceled
                } else {
                    NodePhase::Failed
                };
            }
        }
    }
    for node in &mut run.nodes {
        node.counters.rate_bytes_per_second = 0;
        node.counters.eta = None;
    }
    match manager.catalog().save_run(&run).await {
        Ok(()) => {
            tracing::info!(run_id = %run.id, state = run.state.as_str(), "finished interrupted run")
        }
        Err(error) => tracing::error!(run_id = %run.id, %error, "finish interrupted run"),
    }
}
