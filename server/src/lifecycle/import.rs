//! Rebuilding the catalog from a location alone: every cluster folder's description brings back
//! the cluster (with its id, so its backups are its own again) and its schedules, and every
//! commit manifest brings back its backup.
//!
//! Importing is idempotent: what the catalog has already (the same ids) is matched and left as
//! it is. Everything is read and checked before anything is written, so a conflict (a name or a
//! node taken by another cluster or schedule) fails the import with ALREADY_EXISTS and changes
//! nothing.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use coffer_format::description::{ClusterDescription, DescribedSchedule};
use coffer_format::{BackupManifest, ClusterLayout};
use uuid::Uuid;

use crate::agents::AgentClients;
use crate::agents::{storage, stored};
use crate::catalog::Catalog;
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::locations::LocationRegistry;
use crate::model::backup::BackupRecord;
use crate::model::location::Location;
use crate::model::run::{BackupSpec, TransferLimits};
use crate::model::schedule::{
    CronTrigger, FireProgress, RetentionPolicy, RetryPolicy, Schedule, Trigger,
};
use crate::model::validation::{Depth, Thoroughness};
use crate::model::{AgentAddress, Cluster, Labels, Name, Node, NodeInfo, NodeSpec};

/// What an import found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportReport {
    pub clusters_imported: u64,
    pub clusters_matched: u64,
    pub backups_imported: u64,
    pub backups_present: u64,
    /// Backup folders without a commit manifest: deleted backups, runs that never committed.
    pub backups_uncommitted: u64,
    pub schedules_imported: u64,
    pub schedules_present: u64,
    /// Cluster folders that could not be imported, and why (no description, say).
    pub skipped: Vec<String>,
}

/// One cluster folder of the location, read.
struct Found {
    cluster_id: Uuid,
    description: Option<ClusterDescription>,
    backups: Vec<BackupManifest>,
    uncommitted: u64,
}

/// Imports locations into the catalog.
#[derive(Debug, Clone)]
pub struct Importer {
    catalog: Catalog,
    locations: LocationRegistry,
    agents: Arc<AgentClients>,
    /// The schedules' clock, for the first fire time of an imported schedule.
    clock: Arc<dyn Clock>,
}

impl Importer {
    pub fn new(
        catalog: Catalog,
        locations: LocationRegistry,
        agents: Arc<AgentClients>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            catalog,
            locations,
            agents,
            clock,
        }
    }

    /// Reads the location through the agent at `via` and records what the catalog lacks.
    /// NOT_FOUND for an unknown location; ALREADY_EXISTS, changing nothing, for a conflict.
    pub async fn import(&self, location: &str, via: &AgentAddress) -> Result<ImportReport> {
        let location = self.locations.get(location).await?;
        let found = self.read_location(&location, via).await?;
        let mut report = ImportReport::default();
        let mut clusters = Vec::new();
        for folder in &found {
            match self.plan_cluster(folder).await? {
                Some(cluster) => clusters.push((folder, cluster)),
                None => report.skipped.push(format!(
                    "cluster {}: its folder has no description ({}) and the catalog has no \
                     cluster with that id; register it again, then import",
                    folder.cluster_id,
                    ClusterLayout::new(folder.cluster_id).description()
                )),
            }
        }
        let mut schedules = Vec::new();
        for (folder, _) in &clusters {
            if let Some(description) = &folder.description {
                for described in &description.schedules {
                    schedules.push(
                        self.plan_schedule(folder.cluster_id, described, &location)
                            .await?,
                    );
                }
            }
        }
        // Everything checked: write.
        for (folder, planned) in clusters {
            match planned {
                Planned::Matched => report.clusters_matched += 1,
                Planned::New(cluster) => {
                    self.catalog.insert_cluster(&cluster).await?;
                    report.clusters_imported += 1;
                    tracing::info!(cluster = %cluster.name, cluster_id = %cluster.id,
                        "cluster imported");
                }
            }
            report.backups_uncommitted += folder.uncommitted;
            for manifest in &folder.backups {
                let record = BackupRecord::from_manifest(manifest, &location);
                if self.catalog.import_backup(&record).await? {
                    report.backups_imported += 1;
                } else {
                    report.backups_present += 1;
                }
            }
        }
        for schedule in schedules {
            match schedule {
                Planned::Matched => report.schedules_present += 1,
                Planned::New(schedule) => {
                    self.catalog.insert_schedule(&schedule).await?;
                    report.schedules_imported += 1;
                }
            }
        }
        tracing::info!(location = %location.name, ?report, "location imported");
        Ok(report)
    }

    /// Every cluster folder of the location with its description and commit manifests.
    async fn read_location(&self, location: &Location, via: &AgentAddress) -> Result<Vec<Found>> {
        let agents = &self.agents;
        let mut found = Vec::new();
        for folder in storage::list_folder(agents, via, location, "clusters/").await? {
            let Some(cluster_id) = folder
                .strip_prefix("clusters/")
                .and_then(|rest| rest.strip_suffix('/'))
                .and_then(|id| Uuid::parse_str(id).ok())
            else {
                continue;
            };
            let layout = ClusterLayout::new(cluster_id);
            let path = layout.description();
            let description = match storage::get_object(agents, via, location, &path).await {
                Ok(bytes) => Some(
                    ClusterDescription::decode(&path, &bytes)
                        .map_err(|error| Error::FailedPrecondition(error.to_string()))?,
                ),
                Err(Error::NotFound { .. }) => None,
                Err(error) => return Err(error),
            };
            let mut backups = Vec::new();
            let mut uncommitted = 0;
            let backup_folders =
                match storage::list_folder(agents, via, location, &layout.backups()).await {
                    Ok(folders) => folders,
                    Err(Error::NotFound { .. }) => Vec::new(),
                    Err(error) => return Err(error),
                };
            for backup_folder in backup_folders {
                let Some(backup_id) = layout.backup_of_folder(&backup_folder) else {
                    continue;
                };
                match stored::read_backup_manifest(agents, via, location, cluster_id, backup_id)
                    .await
                {
                    Ok(manifest) => backups.push(manifest),
                    Err(Error::NotFound { .. }) => uncommitted += 1,
                    Err(error) => return Err(error),
                }
            }
            found.push(Found {
                cluster_id,
                description,
                backups,
                uncommitted,
            });
        }
        Ok(found)
    }

    /// The cluster a folder brings back, checked against the catalog: matched by id, or new
    /// (its name must be free); `None` when neither the catalog nor the folder describes it.
    async fn plan_cluster(&self, folder: &Found) -> Result<Option<Planned<Cluster>>> {
        if self
            .catalog
            .find_cluster(&folder.cluster_id.to_string())
            .await?
            .is_some_and(|cluster| cluster.id == folder.cluster_id)
        {
            return Ok(Some(Planned::Matched));
        }
        let Some(description) = &folder.description else {
            return Ok(None);
        };
        if let Some(other) = self.catalog.find_cluster(&description.name).await? {
            return Err(Error::AlreadyExists(format!(
                "the location's cluster {} is named {:?}, like cluster {} of the catalog; rename \
                 or delete that one, then import again",
                description.cluster_id, description.name, other.id
            )));
        }
        let now = SystemTime::now();
        let field = |name: &str| {
            format!(
                "{} in {}",
                name,
                ClusterLayout::new(folder.cluster_id).description()
            )
        };
        let mut nodes = Vec::new();
        for node in &description.nodes {
            nodes.push(Node {
                spec: NodeSpec {
                    address: AgentAddress::parse(&field("address"), &node.address)?,
                    datacenter: node.datacenter.clone(),
                    rack: node.rack.clone(),
                },
                info: NodeInfo {
                    node_id: node.node_id,
                    hostname: node.hostname.clone(),
                    data_paths: Vec::new(),
                    agent_version: String::new(),
                },
                add_time: now,
                info_time: now,
            });
        }
        Ok(Some(Planned::New(Cluster {
            id: description.cluster_id,
            name: Name::parse(&field("name"), &description.name)?,
            labels: Labels::parse(&field("labels"), description.labels.clone())?,
            nodes,
            create_time: now,
            update_time: now,
        })))
    }

    /// The schedule a description brings back, checked against the catalog.
    async fn plan_schedule(
        &self,
        cluster_id: Uuid,
        described: &DescribedSchedule,
        location: &Location,
    ) -> Result<Planned<Schedule>> {
        if self
            .catalog
            .find_schedule(&described.schedule_id.to_string())
            .await?
            .is_some_and(|known| known.id == described.schedule_id)
        {
            return Ok(Planned::Matched);
        }
        if let Some(other) = self.catalog.find_schedule(&described.name).await? {
            return Err(Error::AlreadyExists(format!(
                "the location's schedule {} is named {:?}, like schedule {} of the catalog; \
                 rename or delete that one, then import again",
                described.schedule_id, described.name, other.id
            )));
        }
        let field = |name: &str| format!("schedule {} {name}", described.schedule_id);
        let trigger = match &described.cron_expression {
            Some(expression) => Trigger::Cron(Box::new(CronTrigger::parse(
                &field("cron"),
                expression,
                &described.time_zone,
            )?)),
            None => Trigger::interval(
                &field("interval"),
                Duration::from_millis(described.interval_ms.unwrap_or(0)),
            )?,
        };
        let now = SystemTime::now();
        let next_fire_ms = (!described.paused)
            .then(|| trigger.next_fire_after(self.clock.now_ms()))
            .flatten();
        Ok(Planned::New(Schedule {
            id: described.schedule_id,
            name: Name::parse(&field("name"), &described.name)?,
            cluster_id,
            cluster_name: None,
            trigger,
            backup: BackupSpec {
                kind: described.kind,
                location_id: location.id,
                location_name: location.name.to_string(),
                filter: described.filter.clone(),
                limits: TransferLimits {
                    rate_limit_bytes_per_second: described.rate_limit_bytes_per_second,
                    concurrency: described.concurrency,
                    node_parallelism: described.node_parallelism,
                },
                labels: described.labels.clone(),
            },
            retention: RetentionPolicy {
                keep_last: described.keep_last,
                keep_within: described.keep_within_ms.map(Duration::from_millis),
                keep_daily: described.keep_daily,
                keep_weekly: described.keep_weekly,
                keep_monthly: described.keep_monthly,
            }
            .parse(&field("retention"))?,
            retry: if described.retry_attempts == 0 {
                RetryPolicy::default()
            } else {
                RetryPolicy::parse(
                    &field("retry"),
                    described.retry_attempts,
                    Duration::from_millis(described.retry_first_wait_ms),
                    Duration::from_millis(described.retry_max_wait_ms),
                )?
            },
            validation: described
                .validation
                .as_ref()
                .map(|validation| {
                    let depth = match validation.depth.as_str() {
                        "quick" => Depth::Quick,
                        "deep" => Depth::Deep,
                        other => {
                            return Err(Error::invalid(
                                field("validation.depth"),
                                format!("{other:?} is neither quick nor deep"),
                            ));
                        }
                    };
                    Thoroughness::new(depth, validation.sample_percent).map_err(|reason| {
                        Error::invalid(field("validation.sample_percent"), reason)
                    })
                })
                .transpose()?,
            paused: described.paused,
            next_fire_ms,
            last_fire: None,
            last_run_id: None,
            last_run_state: None,
            last_error: String::new(),
            progress: FireProgress::default(),
            create_time: now,
            update_time: now,
        }))
    }
}

/// What the catalog gets for something the location holds.
enum Planned<T> {
    /// The catalog has it (the same id).
    Matched,
    /// It is new to the catalog.
    New(T),
}
