//! Starting a validate run: what a location holds for a cluster's backups, checked (see
//! [`crate::runs::validate`]).

use std::time::SystemTime;

use uuid::Uuid;

use crate::catalog::{Catalog, RunInsert};
use crate::clusters::ClusterRegistry;
use crate::error::Result;
use crate::locations::LocationRegistry;
use crate::model::run::{Run, RunKind, RunSpec, RunState};
use crate::model::validation::{Thoroughness, ValidateSpec};
use crate::runs::RunManager;
use crate::runs::validate::{self, ValidatePlan};

/// Starts validations.
#[derive(Debug, Clone)]
pub struct Validations {
    catalog: Catalog,
    clusters: ClusterRegistry,
    locations: LocationRegistry,
    runs: RunManager,
}

impl Validations {
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

    /// Records a validate run of `cluster`'s backups at `location` and starts it; returns its
    /// id. NOT_FOUND for an unknown cluster or location, FAILED_PRECONDITION while another
    /// validation of the cluster is active.
    pub async fn start(
        &self,
        location: &str,
        cluster: &str,
        thoroughness: Thoroughness,
        started_by: &str,
    ) -> Result<Uuid> {
        let cluster = self.clusters.get(cluster).await?;
        let location = self.locations.get(location).await?;
        let backups = self.catalog.backups_at(cluster.id, location.id).await?;
        let now = SystemTime::now();
        let run = Run {
            id: Uuid::now_v7(),
            cluster_id: cluster.id,
            cluster_name: cluster.name.to_string(),
            kind: RunKind::Validate,
            state: RunState::Queued,
            spec: RunSpec::Validate(ValidateSpec {
                location_id: location.id,
                location_name: location.name.to_string(),
                thoroughness,
            }),
            dry_run: false,
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
        tracing::info!(run_id = %id, location = %location.name, cluster = %cluster.name,
            backups = backups.len(), "validate run queued");
        let plan = ValidatePlan {
            cluster,
            location,
            backups,
            thoroughness,
        };
        self.runs
            .spawn(run, move |handle| validate::execute(handle, plan));
        Ok(id)
    }
}
