//! The status page: what an operator looks at to see that backups happen. [`StatusPage::report`]
//! gathers, as one JSON document, the clusters and their nodes (with what the last agent check
//! found), the runs in flight (live, with each node's progress) and the last ones, the schedules
//! with their next fires, and the last backups; [`http`] serves it with the page that shows it.

pub mod http;

use std::collections::HashSet;
use std::time::SystemTime;

use serde::Serialize;
use uuid::Uuid;

use crate::agent_checks::AgentChecks;
use crate::backups::Backups;
use crate::clusters::ClusterRegistry;
use crate::error::Result;
use crate::model::backup::BackupQuery;
use crate::model::run::{RunQuery, RunState};
use crate::model::schedule::{ScheduleQuery, Trigger};
use crate::model::{ListClusters, NodeHealth};
use crate::report::RunReport;
use crate::runs::RunManager;
use crate::schedules::Schedules;

/// Most clusters, schedules, runs and backups the page lists of each.
const SHOWN: u32 = 50;
/// Ended runs shown after those in flight.
const RECENT_RUNS: u32 = 20;
/// Backups shown.
const RECENT_BACKUPS: u32 = 20;

/// A node.
#[derive(Debug, Serialize)]
pub struct NodeView {
    pub id: Uuid,
    pub address: String,
    pub hostname: String,
    pub datacenter: String,
    pub rack: String,
    pub agent_version: String,
    /// serving, unreachable, mismatch, or unchecked (not checked since the server started).
    pub health: &'static str,
    pub message: String,
    pub checked_at: Option<String>,
}

/// A cluster.
#[derive(Debug, Serialize)]
pub struct ClusterView {
    pub id: Uuid,
    pub name: String,
    pub nodes: Vec<NodeView>,
}

/// A schedule.
#[derive(Debug, Serialize)]
pub struct ScheduleView {
    pub name: String,
    pub cluster: String,
    /// The cron expression (and its time zone), or `every <interval>`.
    pub trigger: String,
    pub paused: bool,
    pub next_fire: Option<String>,
    pub last_run_id: Option<Uuid>,
    pub last_run_state: Option<&'static str>,
    pub last_error: String,
}

/// A backup.
#[derive(Debug, Serialize)]
pub struct BackupView {
    pub id: Uuid,
    pub cluster: String,
    pub location: String,
    pub kind: &'static str,
    pub commit_time: String,
    pub files: u64,
    pub bytes: u64,
    pub uploaded_bytes: u64,
}

/// Everything the page shows.
#[derive(Debug, Serialize)]
pub struct StatusReport {
    pub server_version: &'static str,
    pub time: String,
    pub clusters: Vec<ClusterView>,
    /// In flight first (live), then the last ended ones, newest first.
    pub runs: Vec<RunReport>,
    pub schedules: Vec<ScheduleView>,
    pub backups: Vec<BackupView>,
}

/// Gathers the status report from the domain services.
#[derive(Debug, Clone)]
pub struct StatusPage {
    clusters: ClusterRegistry,
    runs: RunManager,
    schedules: Schedules,
    backups: Backups,
    checks: AgentChecks,
}

fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}

fn from_ms(ms: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

fn describe(trigger: &Trigger) -> String {
    match trigger {
        Trigger::Cron(cron) if cron.time_zone().is_empty() => {
            format!("{} (UTC)", cron.expression())
        }
        Trigger::Cron(cron) => format!("{} ({})", cron.expression(), cron.time_zone()),
        Trigger::Interval(every) => format!("every {}", humantime::format_duration(*every)),
    }
}

impl StatusPage {
    pub fn new(
        clusters: ClusterRegistry,
        runs: RunManager,
        schedules: Schedules,
        backups: Backups,
        checks: AgentChecks,
    ) -> Self {
        Self {
            clusters,
            runs,
            schedules,
            backups,
            checks,
        }
    }

    /// The report as of now.
    ///
    /// Fails when the catalog cannot be read.
    pub async fn report(&self) -> Result<StatusReport> {
        Ok(StatusReport {
            server_version: env!("CARGO_PKG_VERSION"),
            time: rfc3339(SystemTime::now()),
            clusters: self.clusters().await?,
            runs: self.runs().await?,
            schedules: self.schedules().await?,
            backups: self.backups().await?,
        })
    }

    async fn clusters(&self) -> Result<Vec<ClusterView>> {
        let checks = self.checks.last();
        let page = self
            .clusters
            .list(ListClusters {
                page_size: SHOWN,
                after: None,
                labels: Default::default(),
            })
            .await?;
        Ok(page
            .items
            .into_iter()
            .map(|cluster| ClusterView {
                id: cluster.id,
                name: cluster.name.to_string(),
                nodes: cluster
                    .nodes
                    .into_iter()
                    .map(|node| {
                        let check = checks.get(&node.info.node_id);
                        NodeView {
                            id: node.info.node_id,
                            address: node.spec.address.to_string(),
                            hostname: node.info.hostname,
                            datacenter: node.spec.datacenter,
                            rack: node.spec.rack,
                            agent_version: node.info.agent_version,
                            health: match check.map(|check| check.health) {
                                None => "unchecked",
                                Some(NodeHealth::Serving) => "serving",
                                Some(NodeHealth::Unreachable) => "unreachable",
                                Some(NodeHealth::Mismatch) => "mismatch",
                            },
                            message: check.map(|check| check.message.clone()).unwrap_or_default(),
                            checked_at: check.map(|check| rfc3339(check.time)),
                        }
                    })
                    .collect(),
            })
            .collect())
    }

    async fn runs(&self) -> Result<Vec<RunReport>> {
        let in_flight = self
            .runs
            .list(RunQuery {
                page_size: SHOWN,
                states: vec![RunState::Queued, RunState::Running, RunState::Canceling],
                ..RunQuery::default()
            })
            .await?;
        let recent = self
            .runs
            .list(RunQuery {
                page_size: RECENT_RUNS,
                ..RunQuery::default()
            })
            .await?;
        let mut shown = HashSet::new();
        let mut reports = Vec::new();
        for run in in_flight.items.into_iter().chain(recent.items) {
            if !shown.insert(run.id) {
                continue;
            }
            // A run executing here is shown as it is this instant, not as last persisted.
            let run = match run.state {
                RunState::Queued | RunState::Running | RunState::Canceling => {
                    self.runs.get(run.id).await.unwrap_or(run)
                }
                _ => run,
            };
            reports.push(RunReport::from(&run));
        }
        Ok(reports)
    }

    async fn schedules(&self) -> Result<Vec<ScheduleView>> {
        let page = self
            .schedules
            .list(ScheduleQuery {
                page_size: SHOWN,
                after: None,
                cluster: None,
            })
            .await?;
        Ok(page
            .items
            .into_iter()
            .map(|schedule| ScheduleView {
                name: schedule.name.to_string(),
                cluster: schedule.cluster_name.clone().unwrap_or_default(),
                trigger: describe(&schedule.trigger),
                paused: schedule.paused,
                next_fire: schedule
                    .next_fire_ms
                    .filter(|_| !schedule.paused)
                    .map(|ms| rfc3339(from_ms(ms))),
                last_run_id: schedule.last_run_id,
                last_run_state: schedule.last_run_state.map(RunState::as_str),
                last_error: schedule.last_error,
            })
            .collect())
    }

    async fn backups(&self) -> Result<Vec<BackupView>> {
        let page = self
            .backups
            .list(BackupQuery {
                page_size: RECENT_BACKUPS,
                ..BackupQuery::default()
            })
            .await?;
        Ok(page
            .items
            .into_iter()
            .map(|backup| BackupView {
                id: backup.id,
                cluster: backup.cluster_name,
                location: backup.location_name,
                kind: backup.kind.as_str(),
                commit_time: rfc3339(backup.commit_time),
                files: backup.nodes.iter().map(|node| node.file_count).sum(),
                bytes: backup.nodes.iter().map(|node| node.total_bytes).sum(),
                uploaded_bytes: backup.nodes.iter().map(|node| node.uploaded_bytes).sum(),
            })
            .collect())
    }
}
