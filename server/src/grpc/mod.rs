//! The gRPC face of the server: one handler per service, conversions, and the status mapping.
//!
//! Handlers only take requests apart, call the domain and convert answers; the domain never
//! imports tonic.

mod auth;
mod backup;
mod cluster;
mod convert;
mod location;
pub mod metrics;
mod restore;
mod run;
mod schedule;
mod status;
mod token;

use std::sync::Arc;

use coffer_proto::v1 as proto;
use tonic::transport::server::Router;
use tower::layer::util::{Identity, Stack};

use crate::Coffer;

pub use auth::{AuthLayer, AuthService, caller};
pub use backup::BackupHandler;
pub use cluster::ClusterHandler;
pub use location::LocationHandler;
pub use restore::RestoreHandler;
pub use run::RunHandler;
pub use schedule::ScheduleHandler;
pub use token::TokenHandler;

/// The server's router: every `coffer.v1` service, gRPC health, and reflection (v1 and
/// v1alpha, every service).
///
/// Cross-cutting concerns are applied here once, for every service, as tower layers: a tracing
/// span per call, the calls counted and timed ([`metrics::MetricsLayer`], refusals included),
/// and authentication and authorization ([`AuthLayer`]) before any handler.
pub async fn router(
    coffer: &Coffer,
) -> Router<Stack<AuthLayer, Stack<metrics::MetricsLayer, Identity>>> {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<proto::cluster_service_server::ClusterServiceServer<ClusterHandler>>()
        .await;
    let (reflection_v1, reflection_v1alpha) =
        match coffer_proto::reflection::services(&[proto::FILE_DESCRIPTOR_SET]) {
            Ok((v1, v1alpha)) => (Some(v1), Some(v1alpha)),
            Err(error) => {
                // The descriptor set is compiled in, so this is a build defect; serving without
                // reflection still beats not serving.
                tracing::error!(%error, "build reflection services");
                (None, None)
            }
        };
    let mut builder = tonic::transport::Server::builder()
        .trace_fn(|request| tracing::info_span!("grpc", method = %request.uri().path()))
        .layer(metrics::MetricsLayer::new(coffer.runs().metrics().clone()))
        .layer(AuthLayer::new(coffer.tokens().clone()));
    builder
        .add_service(health_service)
        .add_optional_service(reflection_v1)
        .add_optional_service(reflection_v1alpha)
        .add_service(proto::cluster_service_server::ClusterServiceServer::new(
            ClusterHandler::new(Arc::new(coffer.clusters().clone())),
        ))
        .add_service(proto::location_service_server::LocationServiceServer::new(
            LocationHandler::new(
                coffer.locations.clone(),
                coffer.importer.clone(),
                coffer.validations.clone(),
                coffer.purges.clone(),
            ),
        ))
        .add_service(proto::backup_service_server::BackupServiceServer::new(
            BackupHandler::new(coffer.backups.clone()),
        ))
        .add_service(proto::restore_service_server::RestoreServiceServer::new(
            RestoreHandler::new(coffer.restores.clone()),
        ))
        .add_service(proto::run_service_server::RunServiceServer::new(
            RunHandler::new(coffer.runs.clone()),
        ))
        .add_service(proto::schedule_service_server::ScheduleServiceServer::new(
            ScheduleHandler::new(coffer.schedules.clone()),
        ))
        .add_service(proto::token_service_server::TokenServiceServer::new(
            TokenHandler::new(coffer.tokens().clone()),
        ))
}

/// Why the API could not be served.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The TLS files are missing, unreadable or unusable.
    #[error("{0}")]
    Tls(String),
    /// The transport failed.
    #[error(transparent)]
    Transport(#[from] tonic::transport::Error),
}
