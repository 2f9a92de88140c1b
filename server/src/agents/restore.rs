//! A node's restore: the agent downloads, verifies and places the files of one backup node.

use coffer_proto::agent::v1 as agent;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::convert::{restore_progress, restore_summary, storage_location};
use super::{AgentClients, AgentError, LongCallEvent, call_error, follow_long_call};
use crate::model::Node;
use crate::model::location::Location;
use crate::model::run::{NodeUpdate, PathFilter, RestoreHook, RestoreSummary, TransferLimits};

/// What a node is asked to restore.
#[derive(Debug, Clone)]
pub struct RestoreOrder {
    pub run_id: Uuid,
    /// The location holding the backup.
    pub location: Location,
    /// The cluster the backup was taken from: its objects live under its folder.
    pub source_cluster_id: Uuid,
    pub backup_id: Uuid,
    /// The backup node restored onto this node, and the path of its manifest.
    pub source_node_id: Uuid,
    pub manifest_path: String,
    pub filter: PathFilter,
    pub overwrite: bool,
    pub dry_run: bool,
    pub limits: TransferLimits,
    /// Run after the files are in place; none runs nothing.
    pub hook: Option<RestoreHook>,
}

/// Restores `order` onto `node`, sending its progress to `updates`.
pub async fn restore_node(
    agents: &AgentClients,
    node: &Node,
    order: &RestoreOrder,
    updates: &mpsc::Sender<NodeUpdate>,
) -> Result<RestoreSummary, AgentError> {
    let address = &node.spec.address;
    let (hook_command, hook_timeout_seconds) = match &order.hook {
        Some(hook) => (hook.command.clone(), hook.timeout_seconds),
        None => (Vec::new(), 0),
    };
    let request = agent::RestoreNodeRequest {
        run_id: order.run_id.to_string(),
        location: Some(storage_location(&order.location)),
        source_cluster_id: order.source_cluster_id.to_string(),
        backup_id: order.backup_id.to_string(),
        source_node_id: order.source_node_id.to_string(),
        manifest_path: order.manifest_path.clone(),
        include: order.filter.include.clone(),
        exclude: order.filter.exclude.clone(),
        overwrite: order.overwrite,
        dry_run: order.dry_run,
        rate_limit_bytes_per_second: order.limits.rate_limit_bytes_per_second,
        concurrency: order.limits.concurrency,
        hook_command,
        hook_timeout_seconds,
    };
    let mut client = agents.long_client(address)?;
    let stream = client
        .restore_node(request)
        .await
        .map_err(|status| call_error(address, &status))?
        .into_inner();
    follow_long_call(
        address,
        "restore",
        "files already moved into place stay there and verified downloads stay staged: once the \
         agent is back, the same restore again downloads only what is missing",
        stream,
        updates,
        |message| match message.event {
            Some(agent::restore_node_response::Event::Progress(progress)) => {
                LongCallEvent::Progress(restore_progress(&progress))
            }
            Some(agent::restore_node_response::Event::Done(summary)) => {
                LongCallEvent::Done(restore_summary(summary))
            }
            None => LongCallEvent::Unknown,
        },
    )
    .await
}
