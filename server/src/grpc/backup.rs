//! `coffer.v1.BackupService`.

use coffer_proto::v1 as proto;
use coffer_proto::v1::backup_service_server::BackupService;
use tonic::{Request, Response, Status};

use super::convert::parse_id;
use crate::backups::{Backups, StartBackup};
use crate::model::backup::{BackupQuery, FileQuery};

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
        let started_by = super::caller(&request).label();
        let mut start = StartBackup::try_from(request.into_inner())?;
        start.started_by = started_by;
        let run_id = self.backups.start(start).await?;
        Ok(Response::new(proto::StartBackupResponse {
            run_id: run_id.to_string(),
        }))
    }

    async fn list_backups(
        &self,
        request: Request<proto::ListBackupsRequest>,
    ) -> Result<Response<proto::ListBackupsResponse>, Status> {
        let query = BackupQuery::try_from(request.into_inner())?;
        let page = self.backups.list(query).await?;
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
        let query = FileQuery::try_from(request.into_inner())?;
        let page = self.backups.files(query).await?;
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
