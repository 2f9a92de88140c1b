//! What Coffer keeps in a location beside the objects, read and written through the cluster's
//! agents: the format marker (`coffer.json`) and backup commit manifests. Backup, delete, purge,
//! validate and import all come here (or to [`super::storage`] for plain objects), so none of
//! them needs another's code to touch a location.

use coffer_format::{BackupManifest, ClusterLayout, FormatMarker, MARKER_PATH};
use uuid::Uuid;

use super::AgentClients;
use super::storage::{self, Through};
use crate::error::{Error, Result};
use crate::model::Cluster;
use crate::model::location::Location;

/// Checks the location's `coffer.json`: a location of another format, or of a newer version of
/// Coffer's, is refused (FAILED_PRECONDITION) before anything is written. A location without
/// one gets one, unless `write` is false (dry runs).
pub async fn ensure_format_marker(
    agents: &AgentClients,
    cluster: &Cluster,
    location: &Location,
    write: bool,
) -> Result<()> {
    match storage::get_object(agents, cluster, location, MARKER_PATH).await {
        Ok(content) => FormatMarker::parse(&content).map(|_| ()).map_err(|error| {
            Error::FailedPrecondition(format!("location {}: {error}", location.name))
        }),
        Err(Error::NotFound { .. }) if write => {
            let marker = serde_json::to_vec(&FormatMarker::default())
                .map_err(|error| Error::internal("encode format marker", error))?;
            storage::put_object(agents, cluster, location, MARKER_PATH, marker).await
        }
        Err(Error::NotFound { .. }) => Ok(()),
        Err(error) => Err(error),
    }
}

/// Writes a backup's commit manifest: from then on the location holds the backup. Checked
/// before it is written, so a manifest that a reader would refuse is never stored.
pub async fn write_backup_manifest(
    agents: &AgentClients,
    cluster: &Cluster,
    location: &Location,
    manifest: &BackupManifest,
) -> Result<()> {
    manifest
        .validate()
        .map_err(|error| Error::internal("build backup manifest", error))?;
    let path = ClusterLayout::new(cluster.id).backup_manifest(manifest.backup_id);
    storage::put_object(agents, cluster, location, &path, manifest.encode()).await
}

/// Removes a backup's commit manifest: the location no longer holds the backup (its node
/// manifests and objects stay until a purge).
pub async fn remove_backup_manifest(
    agents: &AgentClients,
    cluster: &Cluster,
    location: &Location,
    backup_id: Uuid,
) -> Result<()> {
    let path = ClusterLayout::new(cluster.id).backup_manifest(backup_id);
    storage::delete_object(agents, cluster, location, &path).await
}

/// Reads a backup's commit manifest (NOT_FOUND when the location holds no such commit,
/// FAILED_PRECONDITION when it cannot be decoded).
pub async fn read_backup_manifest<'a>(
    agents: &AgentClients,
    through: impl Into<Through<'a>>,
    location: &Location,
    cluster_id: Uuid,
    backup_id: Uuid,
) -> Result<BackupManifest> {
    let path = ClusterLayout::new(cluster_id).backup_manifest(backup_id);
    let content = storage::get_object(agents, through, location, &path).await?;
    BackupManifest::decode(&path, &content)
        .map_err(|error| Error::FailedPrecondition(error.to_string()))
}
