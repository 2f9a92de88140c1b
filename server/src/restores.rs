//! Restores: choosing the backup, mapping its nodes onto a target cluster, and starting the run.
//!
//! Everything that can be checked before a node is asked to work is checked here, so a restore
//! that cannot work is refused with a clear error instead of failing half-way: the backup exists
//! and is committed, every mapped node exists on its side, no node appears twice, and without an
//! explicit mapping the target cluster holds every node of the backup.

use std::collections::HashSet;
use std::time::SystemTime;

use uuid::Uuid;

use crate::backups::Backups;
use crate::catalog::{Catalog, RunInsert};
use crate::clusters::ClusterRegistry;
use crate::error::{Error, Result};
use crate::locations::LocationRegistry;
use crate::model::backup::BackupRecord;
use crate::model::run::{
    NodeMapping, NodeProgress, PathFilter, RestoreHook, RestoreSource, RestoreSpec, Run, RunKind,
    RunSpec, RunState, TransferLimits,
};
use crate::runs::{RunManager, restore};

/// How a restore's backup is asked for, before resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceRequest {
    BackupId(Uuid),
    /// Newest backup of a cluster (name or id) at or before a time, optionally in a location.
    PointInTime {
        /// Cluster name or id.
        cluster: String,
        /// Time, ms since the epoch.
        as_of_ms: i64,
        /// Location name or id; empty for any.
        location: String,
    },
}

/// A request to start a restore, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartRestore {
    /// Target cluster name or id.
    pub cluster: String,
    /// Which backup.
    pub source: SourceRequest,
    /// Explicit node mapping (empty: by node id).
    pub mappings: Vec<NodeMapping>,
    /// File selection.
    pub filter: PathFilter,
    /// Replace existing files.
    pub overwrite: bool,
    pub limits: TransferLimits,
    /// Post-restore hook.
    pub hook: Option<RestoreHook>,
    /// Report what would be done, and change nothing.
    pub dry_run: bool,
    pub idempotency_key: Option<String>,
    /// Who asks (see [`crate::model::run::Run::started_by`]).
    pub started_by: String,
}

/// Starts restores.
#[derive(Debug, Clone)]
pub struct Restores {
    catalog: Catalog,
    clusters: ClusterRegistry,
    locations: LocationRegistry,
    backups: Backups,
    runs: RunManager,
}

impl Restores {
    /// A service over the catalog, registries and run manager.
    pub fn new(
        catalog: Catalog,
        clusters: ClusterRegistry,
        locations: LocationRegistry,
        backups: Backups,
        runs: RunManager,
    ) -> Self {
        Self {
            catalog,
            clusters,
            locations,
            backups,
            runs,
        }
    }

    async fn resolve_backup(
        &self,
        source: &SourceRequest,
    ) -> Result<(RestoreSource, BackupRecord)> {
        match source {
            SourceRequest::BackupId(id) => {
                let backup = self.backups.get(*id).await?;
                Ok((RestoreSource::BackupId(*id), backup))
            }
            SourceRequest::PointInTime {
                cluster,
                as_of_ms,
                location,
            } => {
                let cluster = self.clusters.get(cluster).await?;
                let location_id = if location.is_empty() {
                    None
                } else {
                    Some(self.locations.get(location).await?.id)
                };
                let backup = self
                    .catalog
                    .backup_at(cluster.id, location_id, *as_of_ms)
                    .await?
                    .ok_or_else(|| {
                        Error::FailedPrecondition(format!(
                            "cluster {:?} has no committed backup at or before {}",
                            cluster.name.as_str(),
                            humantime_ms(*as_of_ms)
                        ))
                    })?;
                Ok((
                    RestoreSource::PointInTime {
                        source_cluster_id: cluster.id,
                        as_of_ms: *as_of_ms,
                        location_id,
                    },
                    backup,
                ))
            }
        }
    }

    /// Records a restore run and starts it in the background; returns its id at once.
    ///
    /// Fails with NOT_FOUND for an unknown cluster, backup or location, INVALID_ARGUMENT for a
    /// mapping that names unknown or repeated nodes, FAILED_PRECONDITION when no backup matches
    /// a point in time, the clusters do not match without a mapping, or another run of the
    /// target cluster is active.
    #[tracing::instrument(skip_all, fields(cluster = %request.cluster))]
    pub async fn start(&self, request: StartRestore) -> Result<Uuid> {
        let target = self.clusters.get(&request.cluster).await?;
        let (source, backup) = self.resolve_backup(&request.source).await?;
        let location = self.locations.get(&backup.location_id.to_string()).await?;
        let mappings = map_nodes(&backup, &target, &request.mappings)?;
        let spec = RestoreSpec {
            source,
            backup_id: backup.id,
            location_id: location.id,
            requested_mappings: request.mappings.clone(),
            mappings: mappings.clone(),
            filter: request.filter,
            overwrite: request.overwrite,
            limits: request.limits,
            hook: request.hook,
        };
        let now = SystemTime::now();
        let run = Run {
            id: Uuid::now_v7(),
            cluster_id: target.id,
            cluster_name: target.name.to_string(),
            kind: RunKind::Restore,
            state: RunState::Queued,
            spec: RunSpec::Restore(spec.clone()),
            dry_run: request.dry_run,
            idempotency_key: request.idempotency_key,
            schedule_id: None,
            started_by: request.started_by.clone(),
            backup_id: Some(backup.id),
            error: String::new(),
            validation: None,
            purge: None,
            create_time: now,
            start_time: None,
            finish_time: None,
            update_time: now,
            nodes: mappings
                .iter()
                .map(|mapping| {
                    NodeProgress::queued(mapping.target_node_id, Some(mapping.source_node_id))
                })
                .collect(),
        };
        match self.catalog.insert_run(&run).await? {
            RunInsert::Existing(id) => return Ok(id),
            RunInsert::Inserted => {}
        }
        let id = run.id;
        tracing::info!(run_id = %id, backup_id = %backup.id, nodes = mappings.len(), "restore run queued");
        let plan = restore::RestorePlan {
            target,
            backup,
            location,
            spec,
        };
        self.runs
            .spawn(run, move |handle| restore::execute(handle, plan));
        Ok(id)
    }
}

/// The source -> target node pairs of a restore: by node id when none are given (every backup
/// node must be a node of the target), else the given pairs, each node at most once.
pub fn map_nodes(
    backup: &BackupRecord,
    target: &crate::model::Cluster,
    requested: &[NodeMapping],
) -> Result<Vec<NodeMapping>> {
    let target_ids: HashSet<Uuid> = target.nodes.iter().map(|n| n.info.node_id).collect();
    let source_ids: HashSet<Uuid> = backup.nodes.iter().map(|n| n.node_id).collect();
    if requested.is_empty() {
        let missing: Vec<String> = backup
            .nodes
            .iter()
            .filter(|node| !target_ids.contains(&node.node_id))
            .map(|node| node.node_id.to_string())
            .collect();
        if !missing.is_empty() {
            return Err(Error::FailedPrecondition(format!(
                "cluster {:?} does not have the backup's node(s) {}; map the backup's {} node(s) \
                 onto the target's {} node(s) with node_mappings",
                target.name.as_str(),
                missing.join(", "),
                backup.nodes.len(),
                target.nodes.len()
            )));
        }
        return Ok(backup
            .nodes
            .iter()
            .map(|node| NodeMapping {
                source_node_id: node.node_id,
                target_node_id: node.node_id,
            })
            .collect());
    }
    let mut seen_sources = HashSet::new();
    let mut seen_targets = HashSet::new();
    for (index, mapping) in requested.iter().enumerate() {
        let field = format!("restore.node_mappings[{index}]");
        if !source_ids.contains(&mapping.source_node_id) {
            return Err(Error::invalid(
                format!("{field}.source_node_id"),
                format!(
                    "backup {} has no node {}",
                    backup.id, mapping.source_node_id
                ),
            ));
        }
        if !target_ids.contains(&mapping.target_node_id) {
            return Err(Error::invalid(
                format!("{field}.target_node_id"),
                format!(
                    "cluster {:?} has no node {}",
                    target.name.as_str(),
                    mapping.target_node_id
                ),
            ));
        }
        if !seen_sources.insert(mapping.source_node_id) {
            return Err(Error::invalid(
                format!("{field}.source_node_id"),
                "is mapped twice",
            ));
        }
        if !seen_targets.insert(mapping.target_node_id) {
            return Err(Error::invalid(
                format!("{field}.target_node_id"),
                "receives two nodes",
            ));
        }
    }
    Ok(requested.to_vec())
}

fn humantime_ms(ms: i64) -> String {
    let time =
        SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    coffer_format::manifest::format_time(time)
}
