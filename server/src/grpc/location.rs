//! `coffer.v1.LocationService`.

use coffer_proto::v1 as proto;
use coffer_proto::v1::location_service_server::LocationService;
use tonic::{Request, Response, Status};

use super::convert_runs::location_kind;
use crate::agents::AgentClients;
use crate::clusters::ClusterRegistry;
use crate::error::Error;
use crate::locations::{
    LocationRegistry, LocationUpdate, NewLocation, NodeLocationCheck, check_location,
};
use crate::model::{self, ClusterPageToken};

/// Implements `coffer.v1.LocationService`.
#[derive(Debug, Clone)]
pub struct LocationHandler {
    locations: LocationRegistry,
    clusters: ClusterRegistry,
    agents: std::sync::Arc<AgentClients>,
}

impl LocationHandler {
    /// A handler delegating to `locations`, checking through the agents of `clusters`.
    pub fn new(
        locations: LocationRegistry,
        clusters: ClusterRegistry,
        agents: std::sync::Arc<AgentClients>,
    ) -> Self {
        Self {
            locations,
            clusters,
            agents,
        }
    }
}

#[tonic::async_trait]
impl LocationService for LocationHandler {
    async fn create_location(
        &self,
        request: Request<proto::CreateLocationRequest>,
    ) -> Result<Response<proto::CreateLocationResponse>, Status> {
        let new = NewLocation::try_from(request.into_inner())?;
        let location = self.locations.create(new).await?;
        Ok(Response::new(proto::CreateLocationResponse {
            location: Some(location.into()),
        }))
    }

    async fn get_location(
        &self,
        request: Request<proto::GetLocationRequest>,
    ) -> Result<Response<proto::GetLocationResponse>, Status> {
        let location = self.locations.get(&request.into_inner().location).await?;
        Ok(Response::new(proto::GetLocationResponse {
            location: Some(location.into()),
        }))
    }

    async fn list_locations(
        &self,
        request: Request<proto::ListLocationsRequest>,
    ) -> Result<Response<proto::ListLocationsResponse>, Status> {
        let request = request.into_inner();
        let page_size = model::parse_page_size("page_size", request.page_size)?;
        let after =
            ClusterPageToken::parse("page_token", &request.page_token)?.map(|t| t.after_name);
        let kind = location_kind(request.kind)?;
        let page = self.locations.list(page_size, after, kind).await?;
        Ok(Response::new(proto::ListLocationsResponse {
            locations: page.items.into_iter().map(Into::into).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    async fn update_location(
        &self,
        request: Request<proto::UpdateLocationRequest>,
    ) -> Result<Response<proto::UpdateLocationResponse>, Status> {
        let update = LocationUpdate::try_from(request.into_inner())?;
        let location = self.locations.update(update).await?;
        Ok(Response::new(proto::UpdateLocationResponse {
            location: Some(location.into()),
        }))
    }

    async fn delete_location(
        &self,
        request: Request<proto::DeleteLocationRequest>,
    ) -> Result<Response<proto::DeleteLocationResponse>, Status> {
        self.locations
            .delete(&request.into_inner().location)
            .await?;
        Ok(Response::new(proto::DeleteLocationResponse {}))
    }

    async fn check_location(
        &self,
        request: Request<proto::CheckLocationRequest>,
    ) -> Result<Response<proto::CheckLocationResponse>, Status> {
        let request = request.into_inner();
        if request.cluster.is_empty() {
            return Err(
                Error::invalid("cluster", "is required (the cluster whose agents check)").into(),
            );
        }
        let location = self.locations.get(&request.location).await?;
        let cluster = self.clusters.get(&request.cluster).await?;
        let checks = check_location(&self.agents, &cluster, &location).await;
        let ok = checks.iter().all(NodeLocationCheck::ok);
        Ok(Response::new(proto::CheckLocationResponse {
            location: Some(location.into()),
            cluster_id: cluster.id.to_string(),
            nodes: checks.into_iter().map(Into::into).collect(),
            ok,
        }))
    }
}
