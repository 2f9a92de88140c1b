//! The description of a cluster kept in each location it backs up to
//! (`clusters/<cluster-id>/cluster.json`): what a catalog rebuilt from the location alone needs
//! beyond the backups themselves, namely the cluster's name, labels and nodes (with their
//! addresses, which no backup manifest records), and the schedules that back the cluster up to
//! that location, with their retention.
//!
//! It is rewritten after every backup the cluster commits to the location, so it is as recent
//! as the newest backup: a change made since (a node added, a schedule retimed) comes back
//! only once the next backup has committed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::manifest::{BackupKind, PathFilter};

/// Value of `format`.
pub const CLUSTER_DESCRIPTION_FORMAT: &str = "coffer-cluster";
/// Version written by this crate.
pub const CLUSTER_DESCRIPTION_VERSION: u32 = 1;

/// A cluster as a location describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterDescription {
    /// Always [`CLUSTER_DESCRIPTION_FORMAT`].
    pub format: String,
    /// [`CLUSTER_DESCRIPTION_VERSION`] when written by this crate.
    pub version: u32,
    pub cluster_id: Uuid,
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub nodes: Vec<DescribedNode>,
    /// The schedules backing the cluster up to this location.
    #[serde(default)]
    pub schedules: Vec<DescribedSchedule>,
    /// When this description was written (RFC 3339 UTC).
    pub write_time: String,
}

/// A node of a described cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DescribedNode {
    /// Id the node's agent reports (kept in its state folder).
    pub node_id: Uuid,
    /// The agent's address, `http://host:port`.
    pub address: String,
    #[serde(default)]
    pub datacenter: String,
    #[serde(default)]
    pub rack: String,
    #[serde(default)]
    pub hostname: String,
}

/// A schedule of a described cluster, as its API fields say (durations in milliseconds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DescribedSchedule {
    pub schedule_id: Uuid,
    pub name: String,
    /// A cron expression, with `time_zone`; or else `interval_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron_expression: Option<String>,
    #[serde(default)]
    pub time_zone: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_ms: Option<u64>,
    pub kind: BackupKind,
    #[serde(default)]
    pub filter: PathFilter,
    /// Transfer limits: rate (bytes per second), concurrency, node parallelism; 0 = default.
    #[serde(default)]
    pub rate_limit_bytes_per_second: u64,
    #[serde(default)]
    pub concurrency: u32,
    #[serde(default)]
    pub node_parallelism: u32,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub keep_last: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_within_ms: Option<u64>,
    #[serde(default)]
    pub keep_daily: u32,
    #[serde(default)]
    pub keep_weekly: u32,
    #[serde(default)]
    pub keep_monthly: u32,
    #[serde(default)]
    pub retry_attempts: u32,
    #[serde(default)]
    pub retry_first_wait_ms: u64,
    #[serde(default)]
    pub retry_max_wait_ms: u64,
    /// The validation after each backup; absent for none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<DescribedValidation>,
    #[serde(default)]
    pub paused: bool,
}

/// A schedule's validation after each backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DescribedValidation {
    /// `quick` or `deep`.
    pub depth: String,
    /// For `deep`, the percent of objects verified each time.
    #[serde(default)]
    pub sample_percent: u32,
}

/// Why a description was refused.
#[derive(Debug, thiserror::Error)]
pub enum DescriptionError {
    #[error("{path}: not JSON of a cluster description: {reason}")]
    Malformed { path: String, reason: String },
    #[error(
        "{path} is {format:?} version {version}; this Coffer reads {CLUSTER_DESCRIPTION_FORMAT:?} up to version {CLUSTER_DESCRIPTION_VERSION}"
    )]
    Unsupported {
        path: String,
        format: String,
        version: u32,
    },
}

impl ClusterDescription {
    /// Pretty JSON with a trailing newline.
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(self).unwrap_or_default();
        bytes.push(b'\n');
        bytes
    }

    /// Parses a description read from `path`, refusing other formats and newer versions.
    pub fn decode(path: &str, bytes: &[u8]) -> Result<Self, DescriptionError> {
        let description: Self =
            serde_json::from_slice(bytes).map_err(|error| DescriptionError::Malformed {
                path: path.to_string(),
                reason: error.to_string(),
            })?;
        if description.format != CLUSTER_DESCRIPTION_FORMAT
            || description.version == 0
            || description.version > CLUSTER_DESCRIPTION_VERSION
        {
            return Err(DescriptionError::Unsupported {
                path: path.to_string(),
                format: description.format,
                version: description.version,
            });
        }
        Ok(description)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn description() -> ClusterDescription {
        ClusterDescription {
            format: CLUSTER_DESCRIPTION_FORMAT.into(),
            version: CLUSTER_DESCRIPTION_VERSION,
            cluster_id: Uuid::from_u128(1),
            name: "prod".into(),
            labels: BTreeMap::from([("env".into(), "prod".into())]),
            nodes: vec![DescribedNode {
                node_id: Uuid::from_u128(2),
                address: "http://10.0.0.1:7400".into(),
                datacenter: "dc1".into(),
                rack: "r1".into(),
                hostname: "db1".into(),
            }],
            schedules: vec![DescribedSchedule {
                schedule_id: Uuid::from_u128(3),
                name: "nightly".into(),
                cron_expression: Some("30 2 * * *".into()),
                time_zone: "Europe/Berlin".into(),
                interval_ms: None,
                kind: BackupKind::Incremental,
                filter: PathFilter::default(),
                rate_limit_bytes_per_second: 0,
                concurrency: 0,
                node_parallelism: 0,
                labels: BTreeMap::new(),
                keep_last: 7,
                keep_within_ms: None,
                keep_daily: 0,
                keep_weekly: 0,
                keep_monthly: 0,
                retry_attempts: 3,
                retry_first_wait_ms: 600_000,
                retry_max_wait_ms: 21_600_000,
                validation: Some(DescribedValidation {
                    depth: "deep".into(),
                    sample_percent: 10,
                }),
                paused: false,
            }],
            write_time: "2026-12-06T22:00:00Z".into(),
        }
    }

    #[test]
    fn a_description_round_trips_and_other_formats_are_refused() {
        let written = description();
        let bytes = written.encode();
        assert_eq!(
            ClusterDescription::decode("cluster.json", &bytes).expect("decode"),
            written
        );
        let mut newer = written.clone();
        newer.version = CLUSTER_DESCRIPTION_VERSION + 1;
        assert!(matches!(
            ClusterDescription::decode("cluster.json", &newer.encode()),
            Err(DescriptionError::Unsupported { .. })
        ));
        assert!(matches!(
            ClusterDescription::decode("cluster.json", b"{}"),
            Err(DescriptionError::Malformed { .. })
        ));
    }
}
