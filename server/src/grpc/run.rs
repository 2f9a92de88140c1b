//! `coffer.v1.RunService`.

use std::pin::Pin;
use std::time::Duration;

use coffer_proto::v1 as proto;
use coffer_proto::v1::run_service_server::RunService;
use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::convert_runs::{parse_id, run_kind, run_states, timestamp_ms};
use crate::backups;
use crate::clusters::ClusterRegistry;
use crate::error::Error;
use crate::model;
use crate::model::run::ListRuns;
use crate::runs::{DEFAULT_WATCH_INTERVAL, MIN_WATCH_INTERVAL, RunManager};

/// Implements `coffer.v1.RunService`.
#[derive(Debug, Clone)]
pub struct RunHandler {
    runs: RunManager,
    clusters: ClusterRegistry,
}

impl RunHandler {
    /// A handler delegating to `runs`.
    pub fn new(runs: RunManager, clusters: ClusterRegistry) -> Self {
        Self { runs, clusters }
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
        let request = request.into_inner();
        let page_size = model::parse_page_size("page_size", request.page_size)?;
        let after = backups::parse_time_token("page_token", "r1", &request.page_token)?;
        let cluster_id = if request.cluster.is_empty() {
            None
        } else {
            Some(self.clusters.get(&request.cluster).await?.id)
        };
        let query = ListRuns {
            page_size,
            after,
            cluster_id,
            kind: run_kind(request.kind)?,
            states: run_states(&request.states)?,
            min_create_ms: timestamp_ms("min_create_time", request.min_create_time)?,
            max_create_ms: timestamp_ms("max_create_time", request.max_create_time)?,
        };
        let (runs, more) = self
            .runs
            .catalog()
            .list_runs(&query)
            .await
            .map_err(Status::from)?;
        let next_page_token = if more {
            runs.last()
                .map(|last| backups::encode_time_token("r1", last.create_time, last.id))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(proto::ListRunsResponse {
            runs: runs.into_iter().map(Into::into).collect(),
            next_page_token,
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
