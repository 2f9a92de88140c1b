//! Snapshots and uploads: a node freezes its data under a tag, streams it to the location, and
//! removes the snapshot when the run is done with it.

use std::sync::Arc;

use coffer_proto::agent::v1 as agent;
use futures::StreamExt;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::convert::{
    backup_kind, object_compression, storage_location, upload_progress, upload_summary,
};
use super::{AgentClients, AgentError, LongCallEvent, call_error, follow_long_call};
use crate::model::Node;
use crate::model::location::Location;
use crate::model::run::{BackupKind, NodeUpdate, PathFilter, TransferLimits, UploadSummary};

/// The size of a snapshot just taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotTaken {
    pub file_count: u64,
    pub total_bytes: u64,
}

/// What a node is asked to upload, the same for every node of a backup.
#[derive(Debug, Clone)]
pub struct UploadOrder {
    /// The snapshot's tag (the run's id).
    pub tag: String,
    pub location: Location,
    pub cluster_id: Uuid,
    /// The backup being written; none for a dry run.
    pub backup_id: Option<Uuid>,
    pub kind: BackupKind,
    pub filter: PathFilter,
    pub limits: TransferLimits,
    pub dry_run: bool,
    /// What the agents remember the location's objects by ([`crate::model::location::journal_key`]).
    pub journal_key: String,
}

/// The location of an incremental backup, as the agents remember what it holds: by its journal
/// key, in the journal of its encryption key.
#[derive(Debug, Clone)]
pub struct IncrementalInto {
    pub journal_key: String,
    pub encryption_key: Option<crate::model::Name>,
}

impl IncrementalInto {
    pub fn new(location: &Location, journal_key: &str) -> Self {
        Self {
            journal_key: journal_key.to_string(),
            encryption_key: location.encryption_key.clone(),
        }
    }
}

/// Asks `node` to take the snapshot `tag`. An incremental backup names its location, so the
/// agent need not freeze files it knows are stored there unchanged.
pub async fn create(
    agents: &AgentClients,
    node: &Node,
    tag: String,
    incremental: Option<IncrementalInto>,
) -> Result<SnapshotTaken, AgentError> {
    let mut client = agents.long_client(&node.spec.address)?;
    let (incremental_location_id, incremental_encryption_key) = match incremental {
        Some(into) => (
            into.journal_key,
            into.encryption_key
                .map(|key| key.to_string())
                .unwrap_or_default(),
        ),
        None => Default::default(),
    };
    let request = agent::CreateSnapshotRequest {
        tag,
        incremental_location_id,
        incremental_encryption_key,
    };
    let response = client
        .create_snapshot(request)
        .await
        .map_err(|status| call_error(&node.spec.address, &status))?
        .into_inner();
    Ok(SnapshotTaken {
        file_count: response.file_count,
        total_bytes: response.total_bytes,
    })
}

/// Streams `node`'s snapshot to the location, sending its progress to `updates`.
pub async fn upload(
    agents: &AgentClients,
    node: &Node,
    order: &UploadOrder,
    updates: &mpsc::Sender<NodeUpdate>,
) -> Result<UploadSummary, AgentError> {
    let address = &node.spec.address;
    let mut location = storage_location(&order.location);
    location.location_id = order.journal_key.clone();
    let request = agent::UploadSnapshotRequest {
        tag: order.tag.clone(),
        location: Some(location),
        cluster_id: order.cluster_id.to_string(),
        backup_id: order.backup_id.map(|id| id.to_string()).unwrap_or_default(),
        kind: backup_kind(order.kind).into(),
        include: order.filter.include.clone(),
        exclude: order.filter.exclude.clone(),
        rate_limit_bytes_per_second: order.limits.rate_limit_bytes_per_second,
        concurrency: order.limits.concurrency,
        dry_run: order.dry_run,
        compression: Some(object_compression(&order.location)),
    };
    let mut client = agents.long_client(address)?;
    let stream = client
        .upload_snapshot(request)
        .await
        .map_err(|status| call_error(address, &status))?
        .into_inner();
    follow_long_call(
        address,
        "upload",
        "nothing of the backup is committed, and the node's snapshot stays on it until the \
         agent is back (the cluster's next backup removes it)",
        stream,
        updates,
        |message| match message.event {
            Some(agent::upload_snapshot_response::Event::Progress(progress)) => {
                LongCallEvent::Progress(upload_progress(&progress))
            }
            Some(agent::upload_snapshot_response::Event::Done(summary)) => {
                LongCallEvent::Done(upload_summary(summary))
            }
            None => LongCallEvent::Unknown,
        },
    )
    .await
}

/// Asks `node` to delete the snapshot `tag`.
pub async fn delete(agents: &AgentClients, node: &Node, tag: String) -> Result<(), AgentError> {
    let mut client = agents.long_client(&node.spec.address)?;
    client
        .delete_snapshot(agent::DeleteSnapshotRequest { tag })
        .await
        .map(|_| ())
        .map_err(|status| call_error(&node.spec.address, &status))
}

/// Asks every node to delete the snapshot `tag`, at the agents' call parallelism; returns the
/// nodes that failed and why (the reason names the agent).
pub async fn delete_all(
    agents: &Arc<AgentClients>,
    nodes: &[Node],
    tag: &str,
) -> Vec<(Uuid, String)> {
    let results: Vec<_> = futures::stream::iter(nodes.iter().cloned())
        .map(|node| {
            let agents = agents.clone();
            let tag = tag.to_string();
            async move { (node.info.node_id, delete(&agents, &node, tag).await) }
        })
        .buffer_unordered(agents.options().parallelism.max(1))
        .collect()
        .await;
    results
        .into_iter()
        .filter_map(|(node_id, result)| match result {
            Ok(()) => None,
            Err(error) => {
                let reason = error.to_string();
                tracing::warn!(node_id = %node_id, reason, "remove snapshot");
                Some((node_id, reason))
            }
        })
        .collect()
}
