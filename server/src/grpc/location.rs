//! `coffer.v1.LocationService`.

use coffer_proto::v1 as proto;
use coffer_proto::v1::location_service_server::LocationService;
use tonic::{Request, Response, Status};

use crate::lifecycle::import::Importer;
use crate::lifecycle::purge::Purges;
use crate::lifecycle::validate::Validations;
use crate::locations::LocationRegistry;
use crate::model::AgentAddress;
use crate::model::location::{ListLocations, LocationUpdate, NewLocation, NodeLocationCheck};

/// Implements `coffer.v1.LocationService`.
#[derive(Debug, Clone)]
pub struct LocationHandler {
    locations: LocationRegistry,
    importer: Importer,
    validations: Validations,
    purges: Purges,
}

impl LocationHandler {
    /// A handler delegating to the location registry and the lifecycle services.
    pub fn new(
        locations: LocationRegistry,
        importer: Importer,
        validations: Validations,
        purges: Purges,
    ) -> Self {
        Self {
            locations,
            importer,
            validations,
            purges,
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
        let query = ListLocations::try_from(request.into_inner())?;
        let page = self.locations.list(query).await?;
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
        let (location, cluster, checks) = self
            .locations
            .check(&request.location, &request.cluster)
            .await?;
        let ok = checks.iter().all(NodeLocationCheck::ok);
        Ok(Response::new(proto::CheckLocationResponse {
            location: Some(location.into()),
            cluster_id: cluster.id.to_string(),
            nodes: checks.into_iter().map(Into::into).collect(),
            ok,
        }))
    }

    async fn import_location(
        &self,
        request: Request<proto::ImportLocationRequest>,
    ) -> Result<Response<proto::ImportLocationResponse>, Status> {
        let request = request.into_inner();
        required(&request.location, "location")?;
        let via = AgentAddress::parse("agent", &request.agent)?;
        let report = self.importer.import(&request.location, &via).await?;
        Ok(Response::new(report.into()))
    }

    async fn validate_location(
        &self,
        request: Request<proto::ValidateLocationRequest>,
    ) -> Result<Response<proto::ValidateLocationResponse>, Status> {
        let started_by = super::caller(&request).label();
        let request = request.into_inner();
        required(&request.location, "location")?;
        required(&request.cluster, "cluster")?;
        let thoroughness = super::convert::thoroughness("", request.depth, request.sample_percent)?;
        let run_id = self
            .validations
            .start(
                &request.location,
                &request.cluster,
                thoroughness,
                &started_by,
            )
            .await?;
        Ok(Response::new(proto::ValidateLocationResponse {
            run_id: run_id.to_string(),
        }))
    }

    async fn purge_location(
        &self,
        request: Request<proto::PurgeLocationRequest>,
    ) -> Result<Response<proto::PurgeLocationResponse>, Status> {
        let started_by = super::caller(&request).label();
        let request = request.into_inner();
        required(&request.location, "location")?;
        required(&request.cluster, "cluster")?;
        let run_id = self
            .purges
            .start(
                &request.location,
                &request.cluster,
                request.dry_run,
                &started_by,
            )
            .await?;
        Ok(Response::new(proto::PurgeLocationResponse {
            run_id: run_id.to_string(),
        }))
    }
}

/// INVALID_ARGUMENT for a required reference left empty.
fn required(value: &str, field: &str) -> Result<(), Status> {
    if value.is_empty() {
        return Err(crate::error::Error::invalid(
            field,
            format!("is required (a {field} name or id)"),
        )
        .into());
    }
    Ok(())
}
