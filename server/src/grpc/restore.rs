//! `coffer.v1.RestoreService`.

use coffer_proto::v1 as proto;
use coffer_proto::v1::restore_service_server::RestoreService;
use tonic::{Request, Response, Status};

use crate::restores::{Restores, StartRestore};

/// Implements `coffer.v1.RestoreService`.
#[derive(Debug, Clone)]
pub struct RestoreHandler {
    restores: Restores,
}

impl RestoreHandler {
    /// A handler delegating to `restores`.
    pub fn new(restores: Restores) -> Self {
        Self { restores }
    }
}

#[tonic::async_trait]
impl RestoreService for RestoreHandler {
    async fn start_restore(
        &self,
        request: Request<proto::StartRestoreRequest>,
    ) -> Result<Response<proto::StartRestoreResponse>, Status> {
        let started_by = super::caller(&request).label();
        let mut start = StartRestore::try_from(request.into_inner())?;
        start.started_by = started_by;
        let run_id = self.restores.start(start).await?;
        Ok(Response::new(proto::StartRestoreResponse {
            run_id: run_id.to_string(),
        }))
    }
}
