//! `coffer.v1.BackupService`.

use coffer_proto::v1 as proto;
use coffer_proto::v1::backup_service_server::BackupService;
use tonic::{Request, Response, Status};

use super::convert_runs::{list_backup_kind, parse_id, path_filter, timestamp_ms};
use crate::backups::{self, BackupService as Backups, ListBackups, StartBackup};
use crate::model::{self, Labels};

/// Implements `coffer.v1.BackupService`.
#[derive(Debug, Clone)]
pub struct BackupHandler {
    backups: Backups,
}

impl BackupHandler {
    /// A handler delegating to `backups`.
    pub fn new(backups: Backups) -> Self {
        Self { backups }
    }
}

#[tonic::async_trait]
impl BackupService for BackupHandler {
    async fn start_backup(
        &self,
        request: Request<proto::StartBackupRequest>,
    ) -> Result<Response<proto::StartBackupResponse>, Status> {
        let start = StartBackup::try_from(request.into_inner())?;
        let run_id = self.backups.start(start).await?;
        Ok(Response::new(proto::StartBackupResponse {
            run_id: run_id.to_string(),
        }))
    }

    async fn list_backups(
        &self,
        request: Request<proto::ListBackupsRequest>,
    ) -> Result<Response<proto::ListBackupsResponse>, Status> {
        let request = request.into_inner();
        let page_size = model::parse_page_size("page_size", request.page_size)?;
        let after = backups::parse_time_token("page_token", "b1", &request.page_token)?;
        let kind = list_backup_kind(request.kind)?;
        let min_start_ms = timestamp_ms("min_start_time", request.min_start_time)?;
        let max_start_ms = timestamp_ms("max_start_time", request.max_start_time)?;
        let labels = Labels::parse("labels", request.labels)?;
        let (cluster, location) = self
            .backups
            .resolve_filters(&request.cluster, &request.location)
            .await?;
        let page = self
            .backups
            .list(ListBackups {
                page_size,
                after,
                cluster_id: cluster.map(|c| c.id),
                location_id: location.map(|l| l.id),
                kind,
                min_start_ms,
                max_start_ms,
                labels: labels.as_map().clone(),
            })
            .await?;
        Ok(Response::new(proto::ListBackupsResponse {
            backups: page.items.into_iter().map(Into::into).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    async fn get_backup(
        &self,
        request: Request<proto::GetBackupRequest>,
    ) -> Result<Response<proto::GetBackupResponse>, Status> {
        let id = parse_id("backup_id", "backup", &request.into_inner().backup_id)?;
        let backup = self.backups.get(id).await?;
        Ok(Response::new(proto::GetBackupResponse {
            backup: Some(backup.into()),
        }))
    }

    async fn list_backup_files(
        &self,
        request: Request<proto::ListBackupFilesRequest>,
    ) -> Result<Response<proto::ListBackupFilesResponse>, Status> {
        let request = request.into_inner();
        let id = parse_id("backup_id", "backup", &request.backup_id)?;
        let node = if request.node_id.is_empty() {
            None
        } else {
            Some(parse_id("node_id", "node", &request.node_id)?)
        };
        let filter = path_filter("filter", request.filter)?;
        let include = backups::compile_globs("filter.include", &filter.include)?;
        let exclude = backups::compile_globs("filter.exclude", &filter.exclude)?;
        let page_size = model::parse_page_size("page_size", request.page_size)?;
        let token = backups::parse_files_token("page_token", &request.page_token)?;
        let page = self
            .backups
            .files(id, node, &include, &exclude, page_size, token)
            .await?;
        Ok(Response::new(proto::ListBackupFilesResponse {
            files: page.items.into_iter().map(Into::into).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    async fn delete_backup(
        &self,
        request: Request<proto::DeleteBackupRequest>,
    ) -> Result<Response<proto::DeleteBackupResponse>, Status> {
        let id = parse_id("backup_id", "backup", &request.into_inner().backup_id)?;
        self.backups.delete(id).await?;
        Ok(Response::new(proto::DeleteBackupResponse {}))
    }
}
