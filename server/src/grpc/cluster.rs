//! `coffer.v1.ClusterService`: takes requests apart, calls [`ClusterRegistry`], converts back.

use std::sync::Arc;

use coffer_proto::v1 as proto;
use coffer_proto::v1::cluster_service_server::ClusterService;
use tonic::{Request, Response, Status};

use crate::clusters::ClusterRegistry;
use crate::model::{ClusterUpdate, ListClusters, NewCluster};

/// Implements `coffer.v1.ClusterService`.
#[derive(Debug, Clone)]
pub struct ClusterHandler {
    registry: Arc<ClusterRegistry>,
}

impl ClusterHandler {
    /// A handler delegating to `registry`.
    pub fn new(registry: Arc<ClusterRegistry>) -> Self {
        Self { registry }
    }
}

#[tonic::async_trait]
impl ClusterService for ClusterHandler {
    async fn register_cluster(
        &self,
        request: Request<proto::RegisterClusterRequest>,
    ) -> Result<Response<proto::RegisterClusterResponse>, Status> {
        let new = NewCluster::try_from(request.into_inner())?;
        let cluster = self.registry.register(new).await?;
        Ok(Response::new(proto::RegisterClusterResponse {
            cluster: Some(cluster.into()),
        }))
    }

    async fn get_cluster(
        &self,
        request: Request<proto::GetClusterRequest>,
    ) -> Result<Response<proto::GetClusterResponse>, Status> {
        let cluster = self.registry.get(&request.into_inner().cluster).await?;
        Ok(Response::new(proto::GetClusterResponse {
            cluster: Some(cluster.into()),
        }))
    }

    async fn list_clusters(
        &self,
        request: Request<proto::ListClustersRequest>,
    ) -> Result<Response<proto::ListClustersResponse>, Status> {
        let query = ListClusters::try_from(request.into_inner())?;
        let page = self.registry.list(query).await?;
        Ok(Response::new(proto::ListClustersResponse {
            clusters: page.items.into_iter().map(Into::into).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    async fn update_cluster(
        &self,
        request: Request<proto::UpdateClusterRequest>,
    ) -> Result<Response<proto::UpdateClusterResponse>, Status> {
        let update = ClusterUpdate::try_from(request.into_inner())?;
        let cluster = self.registry.update(update).await?;
        Ok(Response::new(proto::UpdateClusterResponse {
            cluster: Some(cluster.into()),
        }))
    }

    async fn delete_cluster(
        &self,
        request: Request<proto::DeleteClusterRequest>,
    ) -> Result<Response<proto::DeleteClusterResponse>, Status> {
        self.registry.delete(&request.into_inner().cluster).await?;
        Ok(Response::new(proto::DeleteClusterResponse {}))
    }

    async fn check_cluster(
        &self,
        request: Request<proto::CheckClusterRequest>,
    ) -> Result<Response<proto::CheckClusterResponse>, Status> {
        let (cluster, statuses) = self.registry.check(&request.into_inner().cluster).await?;
        Ok(Response::new(proto::CheckClusterResponse {
            cluster: Some(cluster.into()),
            nodes: statuses.into_iter().map(Into::into).collect(),
        }))
    }
}
