//! `coffer.v1.RunService`.

use std::pin::Pin;
use std::time::Duration;

use coffer_proto::v1 as proto;
use coffer_proto::v1::run_service_server::RunService;
use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::convert::parse_id;
use crate::error::Error;
use crate::model::run::RunQuery;
use crate::runs::{DEFAULT_WATCH_INTERVAL, MIN_WATCH_INTERVAL, RunManager};

/// Implements `coffer.v1.RunService`.
#[derive(Debug, Clone)]
pub struct RunHandler {
    runs: RunManager,
}

impl RunHandler {
    /// A handler delegating to `runs`.
    pub fn new(runs: RunManager) -> Self {
        Self { runs }
    }
}

#[tonic::async_trait]
impl RunService for RunHandler {
    async fn get_run(
        &self,
        request: Request<proto::GetRunRequest>,
    ) -> Result<Response<proto::GetRunResponse>, Status> {
        let id = parse_id("run_id", "run", &request.into_inner().run_id)?;
        let run = self.runs.get(id).await?;
        Ok(Response::new(proto::GetRunResponse {
            run: Some(run.into()),
        }))
    }

    async fn list_runs(
        &self,
        request: Request<proto::ListRunsRequest>,
    ) -> Result<Response<proto::ListRunsResponse>, Status> {
        let query = RunQuery::try_from(request.into_inner())?;
        let page = self.runs.list(query).await?;
        Ok(Response::new(proto::ListRunsResponse {
            runs: page.items.into_iter().map(Into::into).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    type WatchRunStream =
        Pin<Box<dyn Stream<Item = Result<proto::WatchRunResponse, Status>> + Send + 'static>>;

    async fn watch_run(
        &self,
        request: Request<proto::WatchRunRequest>,
    ) -> Result<Response<Self::WatchRunStream>, Status> {
        let request = request.into_inner();
        let id = parse_id("run_id", "run", &request.run_id)?;
        let interval = match request.min_update_interval {
            None => DEFAULT_WATCH_INTERVAL,
            Some(interval) => Duration::try_from(interval)
                .map_err(|_| Error::invalid("min_update_interval", "must not be negative"))?
                .max(MIN_WATCH_INTERVAL),
        };
        let interval = if interval.is_zero() {
            DEFAULT_WATCH_INTERVAL
        } else {
            interval
        };
        let stream = self.runs.watch(id, interval).await?;
        let stream = stream.map(|run| {
            Ok(proto::WatchRunResponse {
                run: Some(run.into()),
            })
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn cancel_run(
        &self,
        request: Request<proto::CancelRunRequest>,
    ) -> Result<Response<proto::CancelRunResponse>, Status> {
        let id = parse_id("run_id", "run", &request.into_inner().run_id)?;
        let run = self.runs.cancel(id).await?;
        Ok(Response::new(proto::CancelRunResponse {
            run: Some(run.into()),
        }))
    }
}
