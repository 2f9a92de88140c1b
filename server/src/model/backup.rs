//! Committed backups as the catalog records them, and the queries over them.
//!
//! A backup exists once its own manifest (`backup.json`, the commit point) is in storage and
//! recorded in the catalog; these records mirror that manifest.

use std::collections::BTreeMap;
use std::time::SystemTime;

use uuid::Uuid;

use coffer_format::filter::PathMatcher;

use crate::model::Labels;
use crate::model::location::Location;
use crate::model::run::{BackupKind, PathFilter};

/// A committed backup as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupRecord {
    pub id: Uuid,
    pub cluster_id: Uuid,
    /// The cluster's name as it is now (the catalog joins it; a rename shows on old backups).
    pub cluster_name: String,
    pub location_id: Uuid,
    /// The location's name as it is now (a rename shows on old backups).
    pub location_name: String,
    pub kind: BackupKind,
    /// Parent (incremental).
    pub parent_backup_id: Option<Uuid>,
    /// File selection it was taken with.
    pub filter: PathFilter,
    /// The labels of the run that made it.
    pub labels: BTreeMap<String, String>,
    /// Run that made it.
    pub run_id: Option<Uuid>,
    /// Schedule that started that run.
    pub schedule_id: Option<Uuid>,
    /// When the run started (the backup's point in time).
    pub start_time: SystemTime,
    /// When it was committed.
    pub commit_time: SystemTime,
    /// Per-node summaries.
    pub nodes: Vec<BackupNodeRecord>,
}

/// One node of a backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupNodeRecord {
    pub node_id: Uuid,
    /// Host name at backup time.
    pub hostname: String,
    /// Datacenter and rack at backup time.
    pub datacenter: String,
    pub rack: String,
    /// Path of its manifest in the location.
    pub manifest_path: String,
    /// Files in the node's manifest.
    pub file_count: u64,
    /// Bytes of the files.
    pub total_bytes: u64,
    /// Bytes this backup wrote to storage for the node.
    pub uploaded_bytes: u64,
    /// Objects this backup wrote.
    pub uploaded_objects: u64,
}

/// A query over backups.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListBackups {
    /// Most backups in one answer.
    pub page_size: u32,
    /// Resume after (start ms, id), newest first.
    pub after: Option<(i64, Uuid)>,
    /// Only this cluster.
    pub cluster_id: Option<Uuid>,
    /// Only this location.
    pub location_id: Option<Uuid>,
    pub kind: Option<BackupKind>,
    /// Started at or after.
    pub min_start_ms: Option<i64>,
    /// Started at or before.
    pub max_start_ms: Option<i64>,
    /// Carrying all these labels.
    pub labels: BTreeMap<String, String>,
}

/// A listing of backups as asked for: clusters and locations by name or id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackupQuery {
    pub page_size: u32,
    /// Resume after (start ms, id), newest first.
    pub after: Option<(i64, Uuid)>,
    pub cluster: Option<String>,
    pub location: Option<String>,
    pub kind: Option<BackupKind>,
    /// Started at or after, and at or before (ms since the epoch).
    pub min_start_ms: Option<i64>,
    pub max_start_ms: Option<i64>,
    /// Carrying all these labels.
    pub labels: Labels,
}

/// A listing of a backup's files.
#[derive(Debug, Clone)]
pub struct FileQuery {
    pub backup_id: Uuid,
    /// Only this node's files.
    pub node_id: Option<Uuid>,
    /// Only the files it selects.
    pub filter: PathMatcher,
    pub page_size: u32,
    /// Resume in the `.0`th node's manifest, at entry `.1`.
    pub from: Option<(usize, u64)>,
}

/// One file of a backup, as its node manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupFile {
    /// The node it was backed up from.
    pub node_id: Uuid,
    /// Absolute path on that node.
    pub path: String,
    pub size_bytes: u64,
    /// Unix mode bits.
    pub mode: u32,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// BLAKE3 hash of the content, lowercase hex.
    pub blake3_hash: String,
    /// The pack that holds the content (lowercase hex), for a small file packed with others;
    /// `None` when the content is an object of its own.
    pub pack_hash: Option<String>,
}

impl BackupFile {
    /// The object the content is read from: its pack, or the object named by its hash.
    pub fn object_hash(&self) -> &str {
        self.pack_hash.as_deref().unwrap_or(&self.blake3_hash)
    }
}

fn from_manifest_time(text: &str) -> SystemTime {
    coffer_format::manifest::parse_time(text).unwrap_or(SystemTime::UNIX_EPOCH)
}

impl BackupRecord {
    /// The catalog record of a committed backup, from its manifest.
    pub fn from_manifest(manifest: &coffer_format::BackupManifest, location: &Location) -> Self {
        Self {
            id: manifest.backup_id,
            cluster_id: manifest.cluster_id,
            cluster_name: manifest.cluster_name.clone(),
            location_id: location.id,
            location_name: location.name.to_string(),
            kind: manifest.kind,
            parent_backup_id: manifest.parent_backup_id,
            filter: manifest.filter.clone(),
            labels: manifest.labels.clone(),
            run_id: manifest.run_id,
            schedule_id: manifest.schedule_id,
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
}
