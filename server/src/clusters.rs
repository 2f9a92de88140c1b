//! Cluster registration and inspection.
//!
//! The catalog only ever holds nodes whose agents answered: registering or adding nodes asks
//! every new agent for its node info first, and fails (recording nothing) if any did not answer
//! or two addresses turned out to reach the same agent.

use std::sync::Arc;
use std::time::SystemTime;

use uuid::Uuid;

use crate::agents::{AgentClients, AgentError};
use crate::catalog::Catalog;
use crate::error::{Error, Result};
use crate::model::{
    Cluster, ClusterUpdate, ListClusters, NewCluster, Node, NodeHealth, NodeSpec, NodeStatus, Page,
};

/// Registers, changes, inspects and removes clusters.
#[derive(Debug, Clone)]
pub struct ClusterRegistry {
    catalog: Catalog,
    agents: Arc<AgentClients>,
}

impl ClusterRegistry {
    /// A registry over the catalog, calling agents through `agents`.
    pub fn new(catalog: Catalog, agents: Arc<AgentClients>) -> Self {
        Self { catalog, agents }
    }

    /// Registers a cluster after every agent reported its node info.
    ///
    /// Fails with ALREADY_EXISTS when the name is taken or a node is in a cluster already, and
    /// FAILED_PRECONDITION when agents are unreachable (all named) or two addresses reach one
    /// agent.
    #[tracing::instrument(skip_all, fields(cluster = %new.name))]
    pub async fn register(&self, new: NewCluster) -> Result<Cluster> {
        // Cheap check first: do not dial a thousand agents for a name that is taken.
        if self
            .catalog
            .find_cluster(new.name.as_str())
            .await?
            .is_some()
        {
            return Err(Error::AlreadyExists(format!(
                "a cluster named {:?} exists already",
                new.name.as_str()
            )));
        }
        let now = SystemTime::now();
        let nodes = self.describe_new_nodes(&new.nodes, now).await?;
        let cluster = Cluster {
            id: Uuid::now_v7(),
            name: new.name,
            labels: new.labels,
            nodes,
            create_time: now,
            update_time: now,
        };
        self.catalog.insert_cluster(&cluster).await?;
        tracing::info!(cluster_id = %cluster.id, nodes = cluster.nodes.len(), "registered cluster");
        // Read back so the answer is ordered exactly as every later read.
        self.get(&cluster.id.to_string()).await
    }

    /// The cluster with this name or id; NOT_FOUND otherwise.
    pub async fn get(&self, reference: &str) -> Result<Cluster> {
        if reference.is_empty() {
            return Err(Error::invalid(
                "cluster",
                "is required (a cluster name or id)",
            ));
        }
        self.catalog
            .find_cluster(reference)
            .await?
            .ok_or_else(|| Error::NotFound {
                kind: "cluster",
                name: reference.to_string(),
            })
    }

    /// One page of clusters by name.
    pub async fn list(&self, query: ListClusters) -> Result<Page<Cluster>> {
        self.catalog.list_clusters(&query).await
    }

    /// Applies a change: nodes are described by their agents before anything is written.
    #[tracing::instrument(skip_all, fields(cluster = %update.cluster))]
    pub async fn update(&self, update: ClusterUpdate) -> Result<Cluster> {
        let cluster = self.get(&update.cluster).await?;
        for (index, node_id) in update.remove_node_ids.iter().enumerate() {
            if !cluster
                .nodes
                .iter()
                .any(|node| node.info.node_id == *node_id)
            {
                return Err(Error::NotFound {
                    kind: "node",
                    name: format!(
                        "{node_id} (remove_node_ids[{index}]) in cluster {}",
                        cluster.name
                    ),
                });
            }
        }
        if update.changes_nodes()
            && let Some(run) = self.catalog.active_run(cluster.id).await?
        {
            return Err(Error::FailedPrecondition(format!(
                "cluster {:?} has an active {} run {} ({}); nodes can change once it ends",
                cluster.name.as_str(),
                run.kind,
                run.id,
                run.state
            )));
        }
        let now = SystemTime::now();
        let new_nodes = self.describe_new_nodes(&update.add_nodes, now).await?;
        let updated = self
            .catalog
            .update_cluster(cluster.id, &update, &new_nodes, now)
            .await?;
        tracing::info!(
            added = new_nodes.len(),
            removed = update.remove_node_ids.len(),
            "updated cluster"
        );
        Ok(updated)
    }

    /// Removes a cluster from the catalog unless a run of it is active.
    #[tracing::instrument(skip_all, fields(cluster = %reference))]
    pub async fn delete(&self, reference: &str) -> Result<()> {
        let cluster = self.get(reference).await?;
        self.catalog.delete_cluster(cluster.id, reference).await?;
        tracing::info!(cluster_id = %cluster.id, "deleted cluster");
        Ok(())
    }

    /// Asks every agent of the cluster for its live status and records what answered.
    #[tracing::instrument(skip_all, fields(cluster = %reference))]
    pub async fn check(&self, reference: &str) -> Result<(Cluster, Vec<NodeStatus>)> {
        let cluster = self.get(reference).await?;
        let addresses: Vec<_> = cluster
            .nodes
            .iter()
            .map(|node| node.spec.address.clone())
            .collect();
        let answers = self.agents.node_infos(&addresses).await;
        let mut fresh = Vec::new();
        let statuses = cluster
            .nodes
            .iter()
            .zip(answers)
            .map(|(node, answer)| {
                let recorded = node.info.node_id;
                let address = node.spec.address.clone();
                match answer {
                    Ok(answer) if answer.info.node_id == recorded => {
                        let version = answer.info.agent_version.clone();
                        fresh.push(answer.info);
                        NodeStatus {
                            node_id: recorded,
                            address,
                            health: NodeHealth::Serving,
                            message: String::new(),
                            latency: Some(answer.latency),
                            agent_version: Some(version),
                        }
                    }
                    Ok(answer) => NodeStatus {
                        node_id: recorded,
                        address,
                        health: NodeHealth::Mismatch,
                        message: format!(
                            "the agent reports node id {}, the catalog has {recorded}",
                            answer.info.node_id
                        ),
                        latency: Some(answer.latency),
                        agent_version: Some(answer.info.agent_version),
                    },
                    Err(error) => NodeStatus {
                        node_id: recorded,
                        address,
                        health: NodeHealth::Unreachable,
                        message: error.reason,
                        latency: None,
                        agent_version: None,
                    },
                }
            })
            .collect::<Vec<_>>();
        let unhealthy = statuses
            .iter()
            .filter(|status| status.health != NodeHealth::Serving)
            .count();
        if unhealthy > 0 {
            tracing::warn!(unhealthy, "cluster check found unhealthy nodes");
        }
        self.catalog
            .record_node_info(cluster.id, &fresh, SystemTime::now())
            .await?;
        let cluster = self.get(&cluster.id.to_string()).await?;
        Ok((cluster, statuses))
    }

    /// Asks each new node's agent for its info; all must answer and be distinct nodes.
    async fn describe_new_nodes(&self, specs: &[NodeSpec], now: SystemTime) -> Result<Vec<Node>> {
        if specs.is_empty() {
            return Ok(Vec::new());
        }
        let addresses: Vec<_> = specs.iter().map(|spec| spec.address.clone()).collect();
        let answers = self.agents.node_infos(&addresses).await;
        let failures: Vec<&AgentError> = answers
            .iter()
            .filter_map(|answer| answer.as_ref().err())
            .collect();
        if !failures.is_empty() {
            let list = failures
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ");
            return Err(Error::FailedPrecondition(format!(
                "{} of {} agents could not be reached: {list}",
                failures.len(),
                specs.len()
            )));
        }
        let mut nodes: Vec<Node> = Vec::with_capacity(specs.len());
        for (spec, answer) in specs.iter().zip(answers) {
            let Ok(answer) = answer else { continue };
            if let Some(twin) = nodes
                .iter()
                .find(|node| node.info.node_id == answer.info.node_id)
            {
                return Err(Error::FailedPrecondition(format!(
                    "{} and {} reach the same agent (node id {})",
                    twin.spec.address, spec.address, answer.info.node_id
                )));
            }
            nodes.push(Node {
                spec: spec.clone(),
                info: answer.info,
                add_time: now,
                info_time: now,
            });
        }
        Ok(nodes)
    }
}
