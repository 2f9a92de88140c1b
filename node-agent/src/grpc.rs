//! The gRPC face of the agent: handlers convert and delegate to [`Agent`].

use std::sync::Arc;

use coffer_proto::agent::v1 as proto;
use coffer_proto::agent::v1::agent_service_server::{AgentService, AgentServiceServer};
use tonic::transport::server::Router;
use tonic::{Request, Response, Status};

use crate::Agent;

/// Implements `coffer.agent.v1.AgentService`.
#[derive(Debug, Clone)]
pub struct AgentHandler {
    agent: Arc<Agent>,
}

#[tonic::async_trait]
impl AgentService for AgentHandler {
    async fn get_node_info(
        &self,
        _request: Request<proto::GetNodeInfoRequest>,
    ) -> Result<Response<proto::GetNodeInfoResponse>, Status> {
        let node = self.agent.node_info().await;
        Ok(Response::new(proto::GetNodeInfoResponse {
            node: Some(node),
        }))
    }
}

/// The agent's router: its API, gRPC health, and reflection (v1 and v1alpha).
pub async fn router(agent: Arc<Agent>) -> Router {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<AgentServiceServer<AgentHandler>>()
        .await;
    let (reflection_v1, reflection_v1alpha) =
        match coffer_proto::reflection::services(&[proto::FILE_DESCRIPTOR_SET]) {
            Ok((v1, v1alpha)) => (Some(v1), Some(v1alpha)),
            Err(error) => {
                // The descriptor set is compiled into the binary, so this is a build defect;
                // serving without reflection still beats not serving at all.
                tracing::error!(%error, "build reflection services");
                (None, None)
            }
        };
    tonic::transport::Server::builder()
        .add_service(health_service)
        .add_optional_service(reflection_v1)
        .add_optional_service(reflection_v1alpha)
        .add_service(AgentServiceServer::new(AgentHandler { agent }))
}
