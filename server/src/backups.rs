//! Backups: starting backup runs, and the catalog of committed backups.
//!
//! A backup exists once its own manifest (`backup.json`, the commit point) is in storage and
//! recorded here. The server never opens storage itself: reading a node manifest or removing a
//! commit manifest is asked of an agent of the backup's cluster.

use std::time::SystemTime;

use uuid::Uuid;

use crate::agents::{storage, stored};
use crate::catalog::{Catalog, RunInsert};
use crate::clusters::ClusterRegistry;
use crate::error::{Error, Result};
use crate::lifecycle::describe;
use crate::locations::LocationRegistry;
use crate::model::backup::{
    BackupFile, BackupNodeRecord, BackupQuery, BackupRecord, FileQuery, ListBackups,
};
use crate::model::page::{Cursor, CursorKind};
use crate::model::run::{
    BackupKind, BackupSpec, NodeProgress, PathFilter, Run, RunKind, RunSpec, RunState,
    TransferLimits,
};
use crate::model::{Labels, Page};
use crate::runs::{RunManager, backup};

/// Entries read from a node manifest at once when listing a backup's files.
const MANIFEST_PAGE: u32 = 1000;
/// Longest idempotency key, in bytes.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 256;
/// Most files uploaded at once by one node.
pub const MAX_CONCURRENCY: u32 = 1024;

/// A request to start a backup, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartBackup {
    /// Cluster name or id.
    pub cluster: String,
    pub kind: BackupKind,
    /// Location name or id.
    pub location: String,
    /// File selection (patterns compile).
    pub filter: PathFilter,
    pub limits: TransferLimits,
    pub labels: Labels,
    /// Report what would be done, and change nothing.
    pub dry_run: bool,
    pub idempotency_key: Option<String>,
    /// The schedule whose fire this is; `None` for StartBackup.
    pub schedule_id: Option<Uuid>,
    /// Who asks (see [`crate::model::run::Run::started_by`]).
    pub started_by: String,
}

/// Starts backups and answers questions about committed ones.
#[derive(Debug, Clone)]
pub struct Backups {
    catalog: Catalog,
    clusters: ClusterRegistry,
    locations: LocationRegistry,
    runs: RunManager,
}

impl Backups {
    /// A service over the catalog, registries and run manager.
    pub fn new(
        catalog: Catalog,
        clusters: ClusterRegistry,
        locations: LocationRegistry,
        runs: RunManager,
    ) -> Self {
        Self {
            catalog,
            clusters,
            locations,
            runs,
        }
    }

    /// Records a backup run and starts it in the background; returns its id at once.
    ///
    /// A retried request with the same idempotency key returns the first run. Fails with
    /// NOT_FOUND for an unknown cluster or location, FAILED_PRECONDITION when another run of the
    /// cluster is active, ALREADY_EXISTS when the key belongs to a run with other parameters.
    #[tracing::instrument(skip_all, fields(cluster = %request.cluster))]
    pub async fn start(&self, request: StartBackup) -> Result<Uuid> {
        let cluster = self.clusters.get(&request.cluster).await?;
        let location = self.locations.get(&request.location).await?;
        let parent = match request.kind {
            BackupKind::Incremental => self.catalog.latest_backup(cluster.id, location.id).await?,
            BackupKind::Full => None,
        };
        // An incremental backup without a parent has nothing to trust: it is a full one.
        let kind = if parent.is_some() {
            BackupKind::Incremental
        } else {
            BackupKind::Full
        };
        let spec = BackupSpec {
            kind: request.kind,
            location_id: location.id,
            location_name: location.name.to_string(),
            filter: request.filter,
            limits: request.limits,
            labels: request.labels.as_map().clone(),
        };
        let now = SystemTime::now();
        let run = Run {
            id: Uuid::now_v7(),
            cluster_id: cluster.id,
            cluster_name: cluster.name.to_string(),
            kind: RunKind::Backup,
            state: RunState::Queued,
            spec: RunSpec::Backup(spec.clone()),
            dry_run: request.dry_run,
            idempotency_key: request.idempotency_key,
            schedule_id: request.schedule_id,
            started_by: request.started_by.clone(),
            backup_id: (!request.dry_run).then(Uuid::now_v7),
            error: String::new(),
            validation: None,
            purge: None,
            create_time: now,
            start_time: None,
            finish_time: None,
            update_time: now,
            nodes: cluster
                .nodes
                .iter()
                .map(|node| NodeProgress::queued(node.info.node_id, None))
                .collect(),
        };
        match self.catalog.insert_run(&run).await? {
            RunInsert::Existing(id) => {
                tracing::info!(run_id = %id, "idempotency key matched an earlier run");
                return Ok(id);
            }
            RunInsert::Inserted => {}
        }
        let id = run.id;
        tracing::info!(run_id = %id, kind = kind.as_str(), dry_run = run.dry_run, "backup run queued");
        let plan = backup::BackupPlan {
            cluster,
            location,
            spec,
            kind,
            parent_backup_id: parent.map(|parent| parent.id),
            purge_generation: 0,
        };
        let catalog = self.catalog.clone();
        self.runs.spawn(run, move |handle| async move {
            let dry_run = handle.run().dry_run;
            let manager = handle.manager().clone();
            let (cluster, location) = (plan.cluster.clone(), plan.location.clone());
            // What earlier runs of the cluster could not clean up (their agent was lost) goes
            // first, so a failed run pins a node's disk space only until the next backup.
            if !dry_run {
                manager.remove_leftover_snapshots(&cluster).await;
            }
            let mut plan = plan;
            // A purge deleting at the location now: wait for its batch to end (it deletes only
            // objects no backup refers to, and none while a backup uploads). Then the agents
            // remember the location under its new generation, trusting nothing from before.
            plan.purge_generation = wait_for_purge(&catalog, &handle, &cluster, &location).await;
            backup::execute(handle, plan).await;
            // The location describes the cluster as of its newest backup, for a catalog rebuilt
            // from it; the backup stands whether or not this works.
            let committed = !dry_run
                && manager
                    .get(id)
                    .await
                    .is_ok_and(|run| run.state == RunState::Succeeded);
            if committed
                && let Err(error) =
                    describe::write_description(&catalog, manager.agents(), &cluster, &location)
                        .await
            {
                tracing::warn!(%error, "cluster description not written to the location");
            }
        });
        Ok(id)
    }

    /// The backup with this id.
    pub async fn get(&self, id: Uuid) -> Result<BackupRecord> {
        self.catalog
            .get_backup(id)
            .await?
            .ok_or_else(|| Error::NotFound {
                kind: "backup",
                name: id.to_string(),
            })
    }

    /// Backups newest first. Fails with NOT_FOUND when the cluster or location named does
    /// not exist.
    pub async fn list(&self, query: BackupQuery) -> Result<Page<BackupRecord>> {
        let cluster_id = match &query.cluster {
            Some(cluster) => Some(self.clusters.get(cluster).await?.id),
            None => None,
        };
        let location_id = match &query.location {
            Some(location) => Some(self.locations.get(location).await?.id),
            None => None,
        };
        let listing = ListBackups {
            page_size: query.page_size,
            after: query.after,
            cluster_id,
            location_id,
            kind: query.kind,
            min_start_ms: query.min_start_ms,
            max_start_ms: query.max_start_ms,
            labels: query.labels.as_map().clone(),
        };
        let (items, more) = self.catalog.list_backups(&listing).await?;
        let next_page_token = if more {
            items.last().map(|last| {
                Cursor::after_time(CursorKind::Backup, last.start_time, last.id).encode()
            })
        } else {
            None
        };
        Ok(Page {
            items,
            next_page_token,
        })
    }

    /// A page of a backup's files, read from its node manifests through an agent.
    pub async fn files(&self, query: FileQuery) -> Result<Page<BackupFile>> {
        let FileQuery {
            backup_id: id,
            node_id: node,
            filter,
            page_size,
            from,
        } = query;
        let backup = self.get(id).await?;
        let location = self.locations.get(&backup.location_id.to_string()).await?;
        let cluster = self.clusters.get(&backup.cluster_id.to_string()).await?;
        let nodes: Vec<&BackupNodeRecord> = backup
            .nodes
            .iter()
            .filter(|n| node.is_none_or(|id| n.node_id == id))
            .collect();
        if let Some(id) = node
            && nodes.is_empty()
        {
            return Err(Error::NotFound {
                kind: "node",
                name: format!("{id} in backup {}", backup.id),
            });
        }
        let (mut node_index, mut offset) = from.unwrap_or((0, 0));
        let mut files = Vec::new();
        while node_index < nodes.len() && files.len() < page_size as usize {
            let record = nodes[node_index];
            let (entries, more) = storage::read_manifest_page(
                self.runs.agents(),
                &cluster,
                &location,
                &record.manifest_path,
                record.node_id,
                offset,
                MANIFEST_PAGE,
            )
            .await?;
            let mut consumed = 0u64;
            let read = entries.len() as u64;
            for file in entries {
                if files.len() >= page_size as usize {
                    break;
                }
                consumed += 1;
                if filter.selects(&file.path) {
                    files.push(file);
                }
            }
            offset += consumed;
            if consumed == read && !more {
                node_index += 1;
                offset = 0;
            }
        }
        let next_page_token =
            (node_index < nodes.len()).then(|| Cursor::InManifest { node_index, offset }.encode());
        Ok(Page {
            items: files,
            next_page_token,
        })
    }

    /// Makes a backup unrestorable: removes its commit manifest from storage (so a catalog
    /// rebuilt from storage does not bring it back), then its record. Objects stay for a purge.
    pub async fn delete(&self, id: Uuid) -> Result<()> {
        let backup = self.get(id).await?;
        let location = self.locations.get(&backup.location_id.to_string()).await?;
        let cluster = self.clusters.get(&backup.cluster_id.to_string()).await?;
        if let Some(run) = self.catalog.active_run(cluster.id).await?
            && run.id.to_string() == backup.run_id.map(|id| id.to_string()).unwrap_or_default()
        {
            return Err(Error::FailedPrecondition(format!(
                "backup {id} is used by active run {}",
                run.id
            )));
        }
        stored::remove_backup_manifest(self.runs.agents(), &cluster, &location, backup.id).await?;
        self.catalog.delete_backup(id).await?;
        tracing::info!(backup_id = %id, "deleted backup");
        Ok(())
    }
}

/// Waits while a purge deletes at the location (or the run is canceled); returns the location's
/// purge generation then. A catalog that cannot be read counts as generation 0 with no purge.
async fn wait_for_purge(
    catalog: &Catalog,
    handle: &crate::runs::RunHandle,
    cluster: &crate::model::Cluster,
    location: &crate::model::location::Location,
) -> u64 {
    let canceled = handle.cancelled();
    loop {
        match catalog.purge_generation(cluster.id, location.id).await {
            Ok((generation, false)) => return generation,
            Ok((generation, true)) => {
                if canceled.is_cancelled() {
                    return generation;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(error) => {
                tracing::warn!(%error, "read the location's purge state");
                return 0;
            }
        }
    }
}
