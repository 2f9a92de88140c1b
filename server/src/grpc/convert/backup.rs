//! Backups.

use coffer_proto::v1 as proto;

use super::{
    backup_kind, backup_kind_out, compile_filter, idempotency_key, limits, parse_id, path_filter,
    timestamp, timestamp_ms,
};
use crate::backups::StartBackup;
use crate::error::{Error, Result};
use crate::model::backup::{BackupFile, BackupQuery, BackupRecord, FileQuery};
use crate::model::page::{Cursor, CursorKind};
use crate::model::run::BackupKind;
use crate::model::{Labels, parse_page_size};

impl TryFrom<proto::StartBackupRequest> for StartBackup {
    type Error = Error;

    fn try_from(request: proto::StartBackupRequest) -> Result<Self> {
        if request.cluster.is_empty() {
            return Err(Error::invalid(
                "cluster",
                "is required (a cluster name or id)",
            ));
        }
        let spec = request
            .backup
            .ok_or_else(|| Error::invalid("backup", "is required (the backup's parameters)"))?;
        if spec.location.is_empty() {
            return Err(Error::invalid(
                "backup.location",
                "is required (a location name or id)",
            ));
        }
        let kind = backup_kind("backup.kind", spec.kind)?.unwrap_or(BackupKind::Full);
        let idempotency_key = idempotency_key(request.idempotency_key)?;
        Ok(Self {
            cluster: request.cluster,
            kind,
            location: spec.location,
            filter: path_filter("backup.filter", spec.filter)?,
            limits: limits("backup.limits", spec.limits)?,
            labels: Labels::parse("backup.labels", spec.labels)?,
            dry_run: request.dry_run,
            idempotency_key,
            schedule_id: None,
            // The handler fills in the caller.
            started_by: String::new(),
        })
    }
}

impl TryFrom<proto::ListBackupsRequest> for BackupQuery {
    type Error = Error;

    fn try_from(request: proto::ListBackupsRequest) -> Result<Self> {
        let reference = |text: String| (!text.is_empty()).then_some(text);
        Ok(Self {
            page_size: parse_page_size("page_size", request.page_size)?,
            after: Cursor::parse_time("page_token", CursorKind::Backup, &request.page_token)?,
            cluster: reference(request.cluster),
            location: reference(request.location),
            kind: backup_kind("kind", request.kind)?,
            min_start_ms: timestamp_ms("min_start_time", request.min_start_time)?,
            max_start_ms: timestamp_ms("max_start_time", request.max_start_time)?,
            labels: Labels::parse("labels", request.labels)?,
        })
    }
}

impl TryFrom<proto::ListBackupFilesRequest> for FileQuery {
    type Error = Error;

    fn try_from(request: proto::ListBackupFilesRequest) -> Result<Self> {
        let backup_id = parse_id("backup_id", "backup", &request.backup_id)?;
        let node_id = if request.node_id.is_empty() {
            None
        } else {
            Some(parse_id("node_id", "node", &request.node_id)?)
        };
        let filter = compile_filter("filter", &path_filter("filter", request.filter)?)?;
        let page_size = parse_page_size("page_size", request.page_size)?;
        let from = match Cursor::parse("page_token", CursorKind::Manifest, &request.page_token)? {
            Some(Cursor::InManifest { node_index, offset }) => Some((node_index, offset)),
            _ => None,
        };
        Ok(Self {
            backup_id,
            node_id,
            filter,
            page_size,
            from,
        })
    }
}

impl From<BackupRecord> for proto::Backup {
    fn from(backup: BackupRecord) -> Self {
        let mut totals = proto::BackupStats::default();
        let nodes = backup
            .nodes
            .iter()
            .map(|node| {
                totals.file_count += node.file_count;
                totals.total_bytes += node.total_bytes;
                totals.uploaded_bytes += node.uploaded_bytes;
                totals.uploaded_objects += node.uploaded_objects;
                proto::BackupNode {
                    node_id: node.node_id.to_string(),
                    hostname: node.hostname.clone(),
                    datacenter: node.datacenter.clone(),
                    rack: node.rack.clone(),
                    stats: Some(proto::BackupStats {
                        file_count: node.file_count,
                        total_bytes: node.total_bytes,
                        uploaded_bytes: node.uploaded_bytes,
                        uploaded_objects: node.uploaded_objects,
                    }),
                }
            })
            .collect();
        Self {
            id: backup.id.to_string(),
            cluster_id: backup.cluster_id.to_string(),
            cluster_name: backup.cluster_name,
            location_id: backup.location_id.to_string(),
            location_name: backup.location_name,
            kind: backup_kind_out(backup.kind),
            parent_backup_id: backup
                .parent_backup_id
                .map(|id| id.to_string())
                .unwrap_or_default(),
            filter: Some(proto::PathFilter {
                include: backup.filter.include,
                exclude: backup.filter.exclude,
            }),
            labels: backup.labels.into_iter().collect(),
            run_id: backup.run_id.map(|id| id.to_string()).unwrap_or_default(),
            schedule_id: backup
                .schedule_id
                .map(|id| id.to_string())
                .unwrap_or_default(),
            start_time: timestamp(backup.start_time),
            commit_time: timestamp(backup.commit_time),
            nodes,
            totals: Some(totals),
        }
    }
}

impl From<BackupFile> for proto::BackupFile {
    fn from(file: BackupFile) -> Self {
        let nanos = file.mtime_ns;
        Self {
            node_id: file.node_id.to_string(),
            path: file.path,
            size_bytes: file.size_bytes,
            mode: file.mode,
            modify_time: Some(prost_types::Timestamp {
                seconds: nanos.div_euclid(1_000_000_000),
                nanos: i32::try_from(nanos.rem_euclid(1_000_000_000)).unwrap_or(0),
            }),
            blake3_hash: file.blake3_hash,
        }
    }
}
