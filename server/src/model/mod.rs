//! Domain types of the control plane and the validation that makes them.
//!
//! Values of these types are valid by construction: names, labels and addresses are checked
//! when parsed from a request, so the catalog and the planner never see a malformed one. Every
//! parse function takes the field path it reads from, so an error can name it exactly.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::{Duration, SystemTime};

use uuid::Uuid;

use crate::error::{Error, Result};

pub mod backup;
pub mod location;
pub mod page;
pub mod purge;
pub mod run;
pub mod schedule;
pub mod validation;

pub use page::{Page, parse_page_size};

/// Longest name, label key, datacenter or rack, in bytes (a DNS label's limit).
pub const MAX_NAME_LEN: usize = 63;
/// Longest label value, in bytes.
pub const MAX_LABEL_VALUE_LEN: usize = 253;
/// Most labels on one resource.
pub const MAX_LABELS: usize = 64;
/// Most nodes in one cluster.
pub const MAX_NODES: usize = 1024;
/// Longest agent address, in bytes.
pub const MAX_ADDRESS_LEN: usize = 300;

/// A resource name: 1 to 63 bytes of lowercase ASCII letters, digits, `-` and `_`, starting with
/// a letter, and never shaped like a UUID (so a reference is unambiguously a name or an id).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(String);

impl Name {
    /// Parses a name read from `field`.
    pub fn parse(field: &str, text: &str) -> Result<Self> {
        if text.is_empty() {
            return Err(Error::invalid(field, "is required"));
        }
        if text.len() > MAX_NAME_LEN {
            return Err(Error::invalid(
                field,
                format!("is {} bytes long, the limit is {MAX_NAME_LEN}", text.len()),
            ));
        }
        if !text.starts_with(|c: char| c.is_ascii_lowercase()) {
            return Err(Error::invalid(
                field,
                format!("{text:?} must start with a lowercase letter"),
            ));
        }
        if let Some(bad) = text
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '_'))
        {
            return Err(Error::invalid(
                field,
                format!("{text:?} contains {bad:?}; use lowercase letters, digits, '-' and '_'"),
            ));
        }
        if Uuid::parse_str(text).is_ok() {
            return Err(Error::invalid(
                field,
                "must not look like a UUID (ids and names share reference fields)",
            ));
        }
        Ok(Self(text.to_string()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Validated labels: at most 64; keys of 1 to 63 bytes of lowercase letters, digits, `-`, `_`,
/// `.` and `/`, starting with a letter or digit; values up to 253 bytes without control
/// characters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Labels(BTreeMap<String, String>);

impl Labels {
    /// Parses labels read from `field` (a map field of the request).
    pub fn parse(field: &str, labels: impl IntoIterator<Item = (String, String)>) -> Result<Self> {
        let mut parsed = BTreeMap::new();
        for (key, value) in labels {
            parse_label_key(field, &key)?;
            if value.len() > MAX_LABEL_VALUE_LEN {
                return Err(Error::invalid(
                    format!("{field}[{key}]"),
                    format!(
                        "value is {} bytes long, the limit is {MAX_LABEL_VALUE_LEN}",
                        value.len()
                    ),
                ));
            }
            if value.chars().any(char::is_control) {
                return Err(Error::invalid(
                    format!("{field}[{key}]"),
                    "value contains control characters",
                ));
            }
            parsed.insert(key, value);
        }
        if parsed.len() > MAX_LABELS {
            return Err(Error::invalid(
                field,
                format!("{} labels, the limit is {MAX_LABELS}", parsed.len()),
            ));
        }
        Ok(Self(parsed))
    }

    /// Labels as a sorted map.
    pub fn as_map(&self) -> &BTreeMap<String, String> {
        &self.0
    }

    /// Whether there are no labels.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Sets `set` and removes `remove`, failing if the result has too many labels.
    pub fn apply(&self, set: &Labels, remove: &[LabelKey]) -> Result<Labels> {
        let mut labels = self.0.clone();
        for key in remove {
            labels.remove(key.as_str());
        }
        labels.extend(set.0.iter().map(|(k, v)| (k.clone(), v.clone())));
        if labels.len() > MAX_LABELS {
            return Err(Error::invalid(
                "set_labels",
                format!(
                    "the cluster would have {} labels, the limit is {MAX_LABELS}",
                    labels.len()
                ),
            ));
        }
        Ok(Labels(labels))
    }

    /// Rebuilds labels read back from the catalog (validated when they were written).
    pub fn from_catalog(labels: BTreeMap<String, String>) -> Self {
        Self(labels)
    }
}

/// A validated label key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelKey(String);

impl LabelKey {
    /// Parses a label key read from `field`.
    pub fn parse(field: &str, key: &str) -> Result<Self> {
        parse_label_key(field, key)?;
        Ok(Self(key.to_string()))
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn parse_label_key(field: &str, key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(Error::invalid(field, "label keys must not be empty"));
    }
    if key.len() > MAX_NAME_LEN {
        return Err(Error::invalid(
            field,
            format!(
                "label key {:?}... is {} bytes long, the limit is {MAX_NAME_LEN}",
                key.chars().take(20).collect::<String>(),
                key.len()
            ),
        ));
    }
    let valid = key.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && key.chars().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.' | '/')
        });
    if !valid {
        return Err(Error::invalid(
            field,
            format!(
                "label key {key:?} must start with a lowercase letter or digit and hold only \
                 lowercase letters, digits, '-', '_', '.' and '/'"
            ),
        ));
    }
    Ok(())
}

/// A node agent's address, normalized to `http://host:port`.
///
/// Accepts `host:port`, `http://host:port` and `[v6]:port`. `https` is refused until agent TLS
/// exists, rather than silently talking plain text to a TLS port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AgentAddress(String);

impl AgentAddress {
    /// Parses an address read from `field`.
    pub fn parse(field: &str, text: &str) -> Result<Self> {
        let invalid = |reason: String| Error::invalid(field, reason);
        if text.is_empty() {
            return Err(invalid("is required".into()));
        }
        if text.len() > MAX_ADDRESS_LEN {
            return Err(invalid(format!(
                "is {} bytes long, the limit is {MAX_ADDRESS_LEN}",
                text.len()
            )));
        }
        // The scheme does not make the address: whether the server speaks TLS to its agents is
        // its configuration (--agent-tls-*), for every agent alike.
        let rest = if let Some(rest) = text
            .strip_prefix("http://")
            .or_else(|| text.strip_prefix("https://"))
        {
            rest
        } else if text.contains("://") {
            return Err(invalid(format!(
                "{text:?}: the scheme is http:// or https://"
            )));
        } else {
            text
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let shape = || format!("{text:?} is not of the form host:port");
        let (host, port) = rest.rsplit_once(':').ok_or_else(|| invalid(shape()))?;
        let port: u16 = port
            .parse()
            .map_err(|_| invalid(format!("{text:?} has no valid port (1-65535)")))?;
        if port == 0 {
            return Err(invalid(format!("{text:?}: port 0 cannot be connected to")));
        }
        let host = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            let ip: Ipv6Addr = v6
                .parse()
                .map_err(|_| invalid(format!("{text:?}: {v6:?} is not an IPv6 address")))?;
            format!("[{ip}]")
        } else if let Ok(ip) = host.parse::<Ipv4Addr>() {
            ip.to_string()
        } else if is_dns_name(host) {
            host.to_ascii_lowercase()
        } else {
            return Err(invalid(format!(
                "{text:?}: {host:?} is not a valid host name"
            )));
        };
        Ok(Self(format!("http://{host}:{port}")))
    }

    /// The normalized address, `http://host:port`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Rebuilds an address read back from the catalog (normalized when it was written).
    pub fn from_catalog(address: String) -> Self {
        Self(address)
    }
}

impl fmt::Display for AgentAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn is_dns_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// A datacenter or rack name: up to 63 bytes of ASCII letters, digits, `-`, `_` and `.`; empty
/// when not given.
pub fn parse_topology(field: &str, text: &str) -> Result<String> {
    if text.len() > MAX_NAME_LEN {
        return Err(Error::invalid(
            field,
            format!("is {} bytes long, the limit is {MAX_NAME_LEN}", text.len()),
        ));
    }
    if let Some(bad) = text
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(Error::invalid(
            field,
            format!("{text:?} contains {bad:?}; use letters, digits, '-', '_' and '.'"),
        ));
    }
    Ok(text.to_string())
}

/// Parses a node id (a UUID) read from `field`.
pub fn parse_node_id(field: &str, text: &str) -> Result<Uuid> {
    if text.is_empty() {
        return Err(Error::invalid(field, "is required"));
    }
    Uuid::parse_str(text).map_err(|_| Error::invalid(field, format!("{text:?} is not a node id")))
}

/// What an operator says about a node when adding it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    /// The agent's address.
    pub address: AgentAddress,
    /// Datacenter, possibly empty.
    pub datacenter: String,
    /// Rack, possibly empty.
    pub rack: String,
}

/// A data path of a node and the space on its filesystem.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DataPath {
    /// Absolute path on the node.
    pub path: String,
    /// Bytes available.
    pub free_bytes: u64,
    /// Filesystem size.
    pub total_bytes: u64,
}

/// What an agent reports about its node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// The node's stable id.
    pub node_id: Uuid,
    /// Host name.
    pub hostname: String,
    /// Data paths with free space.
    pub data_paths: Vec<DataPath>,
    /// Agent software version.
    pub agent_version: String,
}

/// A node of a cluster as recorded in the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// What the operator said about it.
    pub spec: NodeSpec,
    /// What its agent last reported.
    pub info: NodeInfo,
    /// When it joined the cluster.
    pub add_time: SystemTime,
    /// When `info` was reported.
    pub info_time: SystemTime,
}

/// A registered cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// Server-assigned id.
    pub id: Uuid,
    /// Unique name.
    pub name: Name,
    pub labels: Labels,
    /// Nodes, ordered by datacenter, rack and address.
    pub nodes: Vec<Node>,
    /// When it was registered.
    pub create_time: SystemTime,
    /// When it last changed.
    pub update_time: SystemTime,
}

/// A request to register a cluster, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCluster {
    /// Name of the cluster.
    pub name: Name,
    /// Its nodes: at least one, at most [`MAX_NODES`], distinct addresses.
    pub nodes: Vec<NodeSpec>,
    pub labels: Labels,
}

/// A change to a cluster, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterUpdate {
    /// Name or id of the cluster.
    pub cluster: String,
    /// Nodes to add (distinct addresses).
    pub add_nodes: Vec<NodeSpec>,
    /// Nodes to remove.
    pub remove_node_ids: Vec<Uuid>,
    /// Labels to set.
    pub set_labels: Labels,
    /// Label keys to remove (none of them also set).
    pub remove_labels: Vec<LabelKey>,
}

impl ClusterUpdate {
    /// Whether the change touches the node set (and so must wait for active runs).
    pub fn changes_nodes(&self) -> bool {
        !self.add_nodes.is_empty() || !self.remove_node_ids.is_empty()
    }
}

/// Checks that the node specs of a request have distinct addresses and are not too many.
pub fn check_node_specs(field: &str, nodes: &[NodeSpec]) -> Result<()> {
    if nodes.len() > MAX_NODES {
        return Err(Error::invalid(
            field,
            format!("{} nodes, the limit is {MAX_NODES}", nodes.len()),
        ));
    }
    for (index, node) in nodes.iter().enumerate() {
        if let Some(earlier) = nodes[..index]
            .iter()
            .position(|other| other.address == node.address)
        {
            return Err(Error::invalid(
                format!("{field}[{index}].address"),
                format!("{} is also given as {field}[{earlier}]", node.address),
            ));
        }
    }
    Ok(())
}

/// A query over clusters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListClusters {
    /// Page size, 1..=[`MAX_PAGE_SIZE`].
    pub page_size: u32,
    /// Resume after the cluster with this name.
    pub after: Option<Name>,
    /// Only clusters with all these labels.
    pub labels: Labels,
}

/// Health of a node as seen by a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeHealth {
    /// The agent answered and is the recorded node.
    Serving,
    /// No answer.
    Unreachable,
    /// A different node answered at the address.
    Mismatch,
}

/// Live status of one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    /// Recorded node id.
    pub node_id: Uuid,
    /// Recorded address.
    pub address: AgentAddress,
    /// What the check found.
    pub health: NodeHealth,
    /// Detail for an unhealthy node.
    pub message: String,
    /// Round trip of the info call, if it answered.
    pub latency: Option<Duration>,
    /// Reported agent version, if it answered.
    pub agent_version: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_rules_and_errors_name_the_field() {
        assert!(Name::parse("name", "prod-eu_1").is_ok());
        for bad in ["", "Prod", "1abc", "a b", "a.b", &"a".repeat(64)] {
            let error = Name::parse("name", bad).expect_err(bad);
            assert!(error.to_string().starts_with("invalid name:"), "{error}");
        }
        assert!(Name::parse("name", "abcdefab-1234-1234-1234-123456789abc").is_err());
    }

    #[test]
    fn addresses_are_normalized() {
        let parse = |text| AgentAddress::parse("nodes[0].address", text).map(|a| a.0);
        assert_eq!(
            parse("127.0.0.1:7400").expect("v4"),
            "http://127.0.0.1:7400"
        );
        assert_eq!(
            parse("http://Node-1.Example:7400/").expect("dns"),
            "http://node-1.example:7400"
        );
        assert_eq!(parse("[::1]:7400").expect("v6"), "http://[::1]:7400");
        assert_eq!(
            parse("https://node-1:7400").expect("https"),
            "http://node-1:7400",
            "the server's configuration, not the address, says whether it is TLS"
        );
        for bad in [
            "",
            "host",
            "host:",
            "host:0",
            "host:70000",
            "ftp://h:1",
            "ho st:1",
            "h:1/x",
            "[zz]:1",
        ] {
            let error = parse(bad).expect_err(bad);
            assert!(
                error.to_string().starts_with("invalid nodes[0].address"),
                "{error}"
            );
        }
    }

    #[test]
    fn labels_are_checked_and_applied() {
        let labels = Labels::parse(
            "labels",
            [
                ("env".into(), "prod".into()),
                ("team/db".into(), "x".into()),
            ],
        )
        .expect("valid");
        assert!(Labels::parse("labels", [("Env".into(), "x".into())]).is_err());
        assert!(Labels::parse("labels", [("env".into(), "x".repeat(254))]).is_err());
        let too_many = (0..65).map(|i| (format!("k{i}"), String::new()));
        assert!(Labels::parse("labels", too_many).is_err());
        let set = Labels::parse("set_labels", [("env".into(), "dev".into())]).expect("valid");
        let remove = [LabelKey::parse("remove_labels", "team/db").expect("key")];
        let applied = labels.apply(&set, &remove).expect("apply");
        assert_eq!(applied.as_map().len(), 1);
        assert_eq!(applied.as_map()["env"], "dev");
    }

    #[test]
    fn duplicate_addresses_name_both_positions() {
        let spec = |a| NodeSpec {
            address: AgentAddress::parse("a", a).expect("addr"),
            datacenter: String::new(),
            rack: String::new(),
        };
        let error = check_node_specs("nodes", &[spec("h:1"), spec("h:2"), spec("http://h:1")])
            .expect_err("dup");
        assert_eq!(
            error.to_string(),
            "invalid nodes[2].address: http://h:1:1 is also given as nodes[0]"
                .replace("http://h:1:1", "http://h:1")
        );
    }
}
