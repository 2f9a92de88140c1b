//! Checks, at an interval, that every registered node's agent answers and is the node the
//! catalog has: the metric `coffer_agent_up` (what the agent-unreachable alert is built on) and
//! the nodes' health on the status page come from here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::clusters::ClusterRegistry;
use crate::error::Result;
use crate::metrics::{AgentSeen, Metrics};
use crate::model::{ListClusters, Name, NodeHealth};

/// What the last check found of one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCheck {
    pub health: NodeHealth,
    /// Why it is not serving; empty when it is.
    pub message: String,
    pub time: SystemTime,
}

/// The checks and what they last found; cheap to clone.
#[derive(Debug, Clone)]
pub struct AgentChecks {
    clusters: ClusterRegistry,
    metrics: Metrics,
    interval: Duration,
    last: Arc<Mutex<HashMap<Uuid, NodeCheck>>>,
}

impl AgentChecks {
    pub fn new(clusters: ClusterRegistry, metrics: Metrics, interval: Duration) -> Self {
        Self {
            clusters,
            metrics,
            interval,
            last: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// What the last check found, by node id (nodes registered since are absent).
    pub fn last(&self) -> HashMap<Uuid, NodeCheck> {
        self.last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Checks every node now, then at every interval, until `shutdown` fires.
    pub async fn run(&self, shutdown: CancellationToken) {
        loop {
            let checked = tokio::select! {
                () = shutdown.cancelled() => break,
                checked = self.check_all() => checked,
            };
            if let Err(error) = checked {
                tracing::warn!(%error, "check the agents");
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(self.interval) => {}
            }
        }
    }

    /// One check of every registered node.
    async fn check_all(&self) -> Result<()> {
        let mut seen = Vec::new();
        let mut found = HashMap::new();
        let mut after: Option<Name> = None;
        loop {
            let page = self
                .clusters
                .list(ListClusters {
                    page_size: crate::model::page::MAX_PAGE_SIZE,
                    after: after.clone(),
                    labels: Default::default(),
                })
                .await?;
            after = page.items.last().map(|cluster| cluster.name.clone());
            for cluster in &page.items {
                // A cluster deleted meanwhile is simply not reported.
                let Ok((_, statuses)) = self.clusters.check(&cluster.id.to_string()).await else {
                    continue;
                };
                let now = SystemTime::now();
                for status in statuses {
                    seen.push(AgentSeen {
                        cluster: cluster.name.to_string(),
                        node: status.address.to_string(),
                        up: status.health == NodeHealth::Serving,
                    });
                    found.insert(
                        status.node_id,
                        NodeCheck {
                            health: status.health,
                            message: status.message,
                            time: now,
                        },
                    );
                }
            }
            if page.next_page_token.is_none() {
                break;
            }
        }
        self.metrics.agents_seen(seen);
        *self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = found;
        Ok(())
    }
}
