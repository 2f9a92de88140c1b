//! `coffer.v1.ScheduleService`.

use coffer_proto::v1 as proto;
use coffer_proto::v1::schedule_service_server::ScheduleService;
use tonic::{Request, Response, Status};

use crate::model::schedule::{FireQuery, NewSchedule, ScheduleQuery, ScheduleUpdate};
use crate::schedules::Schedules;

/// Implements `coffer.v1.ScheduleService`.
#[derive(Debug, Clone)]
pub struct ScheduleHandler {
    schedules: Schedules,
}

impl ScheduleHandler {
    /// A handler delegating to `schedules`.
    pub fn new(schedules: Schedules) -> Self {
        Self { schedules }
    }
}

#[tonic::async_trait]
impl ScheduleService for ScheduleHandler {
    async fn create_schedule(
        &self,
        request: Request<proto::CreateScheduleRequest>,
    ) -> Result<Response<proto::CreateScheduleResponse>, Status> {
        let new = NewSchedule::try_from(request.into_inner())?;
        let schedule = self.schedules.create(new).await?;
        Ok(Response::new(proto::CreateScheduleResponse {
            schedule: Some(schedule.into()),
        }))
    }

    async fn get_schedule(
        &self,
        request: Request<proto::GetScheduleRequest>,
    ) -> Result<Response<proto::GetScheduleResponse>, Status> {
        let schedule = self.schedules.get(&request.into_inner().schedule).await?;
        Ok(Response::new(proto::GetScheduleResponse {
            schedule: Some(schedule.into()),
        }))
    }

    async fn list_schedules(
        &self,
        request: Request<proto::ListSchedulesRequest>,
    ) -> Result<Response<proto::ListSchedulesResponse>, Status> {
        let query = ScheduleQuery::try_from(request.into_inner())?;
        let page = self.schedules.list(query).await?;
        Ok(Response::new(proto::ListSchedulesResponse {
            schedules: page.items.into_iter().map(Into::into).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    async fn update_schedule(
        &self,
        request: Request<proto::UpdateScheduleRequest>,
    ) -> Result<Response<proto::UpdateScheduleResponse>, Status> {
        let update = ScheduleUpdate::try_from(request.into_inner())?;
        let schedule = self.schedules.update(update).await?;
        Ok(Response::new(proto::UpdateScheduleResponse {
            schedule: Some(schedule.into()),
        }))
    }

    async fn delete_schedule(
        &self,
        request: Request<proto::DeleteScheduleRequest>,
    ) -> Result<Response<proto::DeleteScheduleResponse>, Status> {
        self.schedules
            .delete(&request.into_inner().schedule)
            .await?;
        Ok(Response::new(proto::DeleteScheduleResponse {}))
    }

    async fn run_schedule(
        &self,
        request: Request<proto::RunScheduleRequest>,
    ) -> Result<Response<proto::RunScheduleResponse>, Status> {
        let fire = self
            .schedules
            .run_now(&request.into_inner().schedule)
            .await?;
        Ok(Response::new(proto::RunScheduleResponse {
            fire: Some(fire.into()),
        }))
    }

    async fn list_schedule_fires(
        &self,
        request: Request<proto::ListScheduleFiresRequest>,
    ) -> Result<Response<proto::ListScheduleFiresResponse>, Status> {
        let query = FireQuery::try_from(request.into_inner())?;
        let page = self.schedules.fires(query).await?;
        Ok(Response::new(proto::ListScheduleFiresResponse {
            fires: page.items.into_iter().map(Into::into).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }
}
