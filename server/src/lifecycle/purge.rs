//! Starting a purge run (see [`crate::runs::purge`] for what it does and why it is safe).

use std::collections::HashSet;
use std::time::SystemTime;

use coffer_format::ClusterLayout;
use uuid::Uuid;

use crate::agents::storage;
use crate::catalog::{Catalog, RunInsert};
use crate::clusters::ClusterRegistry;
use crate::error::{Error, Result};
use crate::locations::LocationRegistry;
use crate::model::Cluster;
use crate::model::location::Location;
use crate::model::purge::PurgeSpec;
use crate::model::run::{Run, RunKind, RunSpec, RunState};
use crate::runs::RunManager;
use crate::runs::purge::{self, PurgePlan};

/// Starts purges.
#[derive(Debug, Clone)]
pub struct Purges {
    catalog: Catalog,
    clusters: ClusterRegistry,
    locations: LocationRegistry,
    runs: RunManager,
}

impl Purges {
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

    /// Records a purge run of `cluster`'s unreferenced objects at `location` and starts it;
    /// returns its id. NOT_FOUND for an unknown cluster or location; FAILED_PRECONDITION while
    /// another purge of the cluster is active, or when the location holds committed backups of
    /// the cluster that the catalog does not know (their objects would look unreferenced).
    pub async fn start(
        &self,
        location: &str,
        cluster: &str,
        dry_run: bool,
        started_by: &str,
    ) -> Result<Uuid> {
        let cluster = self.clusters.get(cluster).await?;
        let location = self.locations.get(location).await?;
        self.refuse_unknown_backups(&cluster, &location).await?;
        let now = SystemTime::now();
        let run = Run {
            id: Uuid::now_v7(),
            cluster_id: cluster.id,
            cluster_name: cluster.name.to_string(),
            kind: RunKind::Purge,
            state: RunState::Queued,
            spec: RunSpec::Purge(PurgeSpec {
                location_id: location.id,
                location_name: location.name.to_string(),
            }),
            dry_run,
            idempotency_key: None,
            schedule_id: None,
            started_by: started_by.to_string(),
            backup_id: None,
            error: String::new(),
            validation: None,
            purge: None,
            create_time: now,
            start_time: None,
            finish_time: None,
            update_time: now,
            nodes: Vec::new(),
        };
        match self.catalog.insert_run(&run).await? {
            RunInsert::Existing(id) => return Ok(id),
            RunInsert::Inserted => {}
        }
        let id = run.id;
        tracing::info!(run_id = %id, location = %location.name, cluster = %cluster.name, dry_run,
            "purge run queued");
        let plan = PurgePlan {
            cluster,
            location,
            dry_run,
        };
        self.runs
            .spawn(run, move |handle| purge::execute(handle, plan));
        Ok(id)
    }

    /// Fails when a backup folder of the cluster holds a commit manifest the catalog does not
    /// know: a catalog restored from an old copy, say. Its objects must not be purged.
    async fn refuse_unknown_backups(&self, cluster: &Cluster, location: &Location) -> Result<()> {
        let layout = ClusterLayout::new(cluster.id);
        let agents = self.runs.agents();
        let folders = match storage::list_folder(agents, cluster, location, &layout.backups()).await
        {
            Ok(folders) => folders,
            Err(Error::NotFound { .. }) => return Ok(()),
            Err(error) => return Err(error),
        };
        let known: HashSet<Uuid> = self
            .catalog
            .backup_ids(cluster.id, location.id)
            .await?
            .into_iter()
            .collect();
        for folder in folders {
            let Some(backup_id) = layout.backup_of_folder(&folder) else {
                continue;
            };
            if known.contains(&backup_id) {
                continue;
            }
            let manifest = layout.backup_manifest(backup_id);
            match storage::get_object(agents, cluster, location, &manifest).await {
                // A run that never committed: its objects are garbage.
                Err(Error::NotFound { .. }) => {}
                Ok(_) => {
                    return Err(Error::FailedPrecondition(format!(
                        "location {:?} holds backup {backup_id} of cluster {:?}, which the \
                         catalog does not know; import the location first (cofferctl location \
                         import), or its objects would be purged",
                        location.name.as_str(),
                        cluster.name.as_str()
                    )));
                }
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }
}
