//! Conversions between `coffer.v1` messages and domain types.
//!
//! Requests are validated on the way in (`TryFrom`), naming the offending field; answers are
//! converted on the way out (`From`).

use coffer_proto::v1 as proto;

use super::timestamp;
use crate::error::{Error, Result};
use crate::model::page::Cursor;
use crate::model::{
    self, AgentAddress, Cluster, ClusterUpdate, LabelKey, Labels, ListClusters, Name, NewCluster,
    Node, NodeHealth, NodeSpec, NodeStatus,
};

fn node_spec(field: &str, spec: proto::NodeSpec) -> Result<NodeSpec> {
    Ok(NodeSpec {
        address: AgentAddress::parse(&format!("{field}.address"), &spec.address)?,
        datacenter: model::parse_topology(&format!("{field}.datacenter"), &spec.datacenter)?,
        rack: model::parse_topology(&format!("{field}.rack"), &spec.rack)?,
    })
}

fn node_specs(field: &str, specs: Vec<proto::NodeSpec>) -> Result<Vec<NodeSpec>> {
    if specs.len() > model::MAX_NODES {
        return Err(Error::invalid(
            field,
            format!("{} nodes, the limit is {}", specs.len(), model::MAX_NODES),
        ));
    }
    let specs = specs
        .into_iter()
        .enumerate()
        .map(|(index, spec)| node_spec(&format!("{field}[{index}]"), spec))
        .collect::<Result<Vec<_>>>()?;
    model::check_node_specs(field, &specs)?;
    Ok(specs)
}

impl TryFrom<proto::RegisterClusterRequest> for NewCluster {
    type Error = Error;

    fn try_from(request: proto::RegisterClusterRequest) -> Result<Self> {
        let name = Name::parse("name", &request.name)?;
        if request.nodes.is_empty() {
            return Err(Error::invalid("nodes", "at least one node is required"));
        }
        Ok(Self {
            name,
            nodes: node_specs("nodes", request.nodes)?,
            labels: Labels::parse("labels", request.labels)?,
        })
    }
}

impl TryFrom<proto::UpdateClusterRequest> for ClusterUpdate {
    type Error = Error;

    fn try_from(request: proto::UpdateClusterRequest) -> Result<Self> {
        if request.cluster.is_empty() {
            return Err(Error::invalid(
                "cluster",
                "is required (a cluster name or id)",
            ));
        }
        let remove_node_ids = request
            .remove_node_ids
            .iter()
            .enumerate()
            .map(|(index, id)| model::parse_node_id(&format!("remove_node_ids[{index}]"), id))
            .collect::<Result<Vec<_>>>()?;
        let set_labels = Labels::parse("set_labels", request.set_labels)?;
        let remove_labels = request
            .remove_labels
            .iter()
            .enumerate()
            .map(|(index, key)| LabelKey::parse(&format!("remove_labels[{index}]"), key))
            .collect::<Result<Vec<_>>>()?;
        if let Some(key) = remove_labels
            .iter()
            .find(|key| set_labels.as_map().contains_key(key.as_str()))
        {
            return Err(Error::invalid(
                "remove_labels",
                format!("{:?} is also in set_labels", key.as_str()),
            ));
        }
        let update = Self {
            cluster: request.cluster,
            add_nodes: node_specs("add_nodes", request.add_nodes)?,
            remove_node_ids,
            set_labels,
            remove_labels,
        };
        if !update.changes_nodes()
            && update.set_labels.is_empty()
            && update.remove_labels.is_empty()
        {
            return Err(Error::invalid(
                "add_nodes",
                "nothing to change: give nodes to add or remove, or labels to set or remove",
            ));
        }
        Ok(update)
    }
}

impl TryFrom<proto::ListClustersRequest> for ListClusters {
    type Error = Error;

    fn try_from(request: proto::ListClustersRequest) -> Result<Self> {
        Ok(Self {
            page_size: model::parse_page_size("page_size", request.page_size)?,
            after: Cursor::parse_name("page_token", &request.page_token)?,
            labels: Labels::parse("labels", request.labels)?,
        })
    }
}

impl From<Node> for proto::Node {
    fn from(node: Node) -> Self {
        Self {
            id: node.info.node_id.to_string(),
            address: node.spec.address.as_str().to_string(),
            datacenter: node.spec.datacenter,
            rack: node.spec.rack,
            hostname: node.info.hostname,
            data_paths: node
                .info
                .data_paths
                .into_iter()
                .map(|path| proto::DataPath {
                    path: path.path,
                    free_bytes: path.free_bytes,
                    total_bytes: path.total_bytes,
                })
                .collect(),
            agent_version: node.info.agent_version,
            add_time: timestamp(node.add_time),
            info_time: timestamp(node.info_time),
        }
    }
}

impl From<Cluster> for proto::Cluster {
    fn from(cluster: Cluster) -> Self {
        Self {
            id: cluster.id.to_string(),
            name: cluster.name.as_str().to_string(),
            labels: cluster.labels.as_map().clone().into_iter().collect(),
            nodes: cluster.nodes.into_iter().map(Into::into).collect(),
            create_time: timestamp(cluster.create_time),
            update_time: timestamp(cluster.update_time),
        }
    }
}

impl From<NodeStatus> for proto::NodeStatus {
    fn from(status: NodeStatus) -> Self {
        Self {
            node_id: status.node_id.to_string(),
            address: status.address.as_str().to_string(),
            health: match status.health {
                NodeHealth::Serving => proto::NodeHealth::Serving,
                NodeHealth::Unreachable => proto::NodeHealth::Unreachable,
                NodeHealth::Mismatch => proto::NodeHealth::Mismatch,
            }
            .into(),
            message: status.message,
            latency: status
                .latency
                .and_then(|latency| prost_types::Duration::try_from(latency).ok()),
            agent_version: status.agent_version.unwrap_or_default(),
        }
    }
}
