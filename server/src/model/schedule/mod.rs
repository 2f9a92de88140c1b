//! Schedules: backups of a cluster that the server starts by itself, what each fire did, and
//! the rules behind them: when a schedule fires ([`trigger`]), when it retries a failed run
//! ([`retry`]) and which of its backups it keeps ([`retention`]).

pub mod retention;
pub mod retry;
pub mod trigger;

use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::validation::Thoroughness;

use super::Name;
use super::run::{BackupSpec, RunState};

pub use retention::{RetainedBackup, RetentionPolicy};
pub use retry::{MAX_RETRY_ATTEMPTS, RetryPolicy};
pub use trigger::{CronTrigger, DueFire, MAX_INTERVAL, MIN_INTERVAL, Trigger};

/// How many fire times a schedule shows ahead.
pub const UPCOMING_FIRES: usize = 5;

/// A schedule as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    pub id: Uuid,
    pub name: Name,
    pub cluster_id: Uuid,
    /// The cluster's name now; `None` once the cluster was deleted.
    pub cluster_name: Option<String>,
    pub trigger: Trigger,
    /// What each fire backs up; `location_name` is the location's name now (empty once the
    /// location was deleted).
    pub backup: BackupSpec,
    pub retention: RetentionPolicy,
    pub retry: RetryPolicy,
    /// The validation started after each of its backups; `None` for none.
    pub validation: Option<Thoroughness>,
    pub paused: bool,
    /// When the trigger fires next (ms); `None` while paused.
    pub next_fire_ms: Option<i64>,
    /// The last fire, with what it did.
    pub last_fire: Option<ScheduleFire>,
    pub last_run_id: Option<Uuid>,
    /// State of `last_run_id`'s run, when it still exists.
    pub last_run_state: Option<RunState>,
    pub last_error: String,
    /// The scheduler's bookkeeping.
    pub progress: FireProgress,
    pub create_time: SystemTime,
    pub update_time: SystemTime,
}

impl Schedule {
    /// The next fire times, `next_fire_ms` first, at most [`UPCOMING_FIRES`].
    pub fn upcoming_fires(&self) -> Vec<i64> {
        match self.next_fire_ms {
            None => Vec::new(),
            Some(next) => std::iter::once(next)
                .chain(self.trigger.next_fire_times(next, UPCOMING_FIRES - 1))
                .collect(),
        }
    }
}

/// Where the scheduler is with a schedule, kept in the catalog so that a restarted server goes
/// on from there: a fire chosen and not recorded yet, the run whose end it waits for, and a
/// retry it owes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FireProgress {
    pub pending: Option<PendingFire>,
    pub awaited: Option<AwaitedRun>,
    pub retry: Option<PendingRetry>,
}

/// A fire chosen by the scheduler, written before its run is started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingFire {
    pub fire_time_ms: i64,
    pub attempt: u32,
    pub cause: FireCause,
    #[serde(default)]
    pub missed: u64,
}

impl PendingFire {
    /// The idempotency key of the fire's run: the schedule and the fire time, and the attempt
    /// for a retry. The same fire asks for the same run however often it is tried.
    pub fn idempotency_key(&self, schedule_id: Uuid) -> String {
        if self.attempt == 0 {
            format!("schedule:{schedule_id}:{}", self.fire_time_ms)
        } else {
            format!(
                "schedule:{schedule_id}:{}:retry-{}",
                self.fire_time_ms, self.attempt
            )
        }
    }
}

/// A run a fire started, whose end the scheduler has not handled yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AwaitedRun {
    pub run_id: Uuid,
    pub fire_time_ms: i64,
    pub attempt: u32,
}

/// A retry owed for a failed fire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingRetry {
    pub at_ms: i64,
    /// The fire time of the fire it retries.
    pub fire_time_ms: i64,
    /// 1 for the first retry.
    pub attempt: u32,
}

/// Why a schedule fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FireCause {
    Trigger,
    Retry,
    RunNow,
}

impl FireCause {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Trigger => "trigger",
            Self::Retry => "retry",
            Self::RunNow => "run_now",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "trigger" => Some(Self::Trigger),
            "retry" => Some(Self::Retry),
            "run_now" => Some(Self::RunNow),
            _ => None,
        }
    }
}

/// What a fire did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FireOutcome {
    /// It started this run (or found the run its idempotency key had started).
    Started { run_id: Uuid },
    /// Another run was active on the cluster.
    Skipped {
        active_run_id: Option<Uuid>,
        message: String,
    },
    /// No run could be started.
    Failed { message: String },
}

impl FireOutcome {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Started { .. } => "started",
            Self::Skipped { .. } => "skipped",
            Self::Failed { .. } => "failed",
        }
    }

    /// Why it started nothing; empty when it started a run.
    pub fn message(&self) -> &str {
        match self {
            Self::Started { .. } => "",
            Self::Skipped { message, .. } | Self::Failed { message } => message,
        }
    }
}

/// One fire of a schedule, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleFire {
    pub fire: PendingFire,
    pub outcome: FireOutcome,
    pub record_time_ms: i64,
    /// What followed the end of its run; `None` while the run is active or if it started none.
    pub follow_up: Option<FollowUp>,
}

/// What the scheduler did once the run of a fire ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowUp {
    pub time_ms: i64,
    /// The backups retention deleted then.
    pub deleted_backups: Vec<Uuid>,
}

/// A new schedule, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSchedule {
    pub name: Name,
    /// Cluster name or id.
    pub cluster: String,
    pub trigger: Trigger,
    pub backup: ScheduledBackup,
    pub retention: RetentionPolicy,
    pub retry: RetryPolicy,
    pub validation: Option<Thoroughness>,
    pub paused: bool,
}

/// A schedule's backup parameters as asked for: the location by name or id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduledBackup {
    pub kind: super::run::BackupKind,
    pub location: String,
    pub filter: super::run::PathFilter,
    pub limits: super::run::TransferLimits,
    pub labels: super::Labels,
}

/// A change to a schedule, validated; `None` leaves a setting as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScheduleUpdate {
    /// Schedule name or id.
    pub schedule: String,
    pub name: Option<Name>,
    pub trigger: Option<Trigger>,
    pub backup: Option<ScheduledBackup>,
    pub retention: Option<RetentionPolicy>,
    pub retry: Option<RetryPolicy>,
    /// `Some(None)` removes the validation.
    pub validation: Option<Option<Thoroughness>>,
    pub paused: Option<bool>,
}

/// A listing of schedules as asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleQuery {
    pub page_size: u32,
    /// Resume after this name.
    pub after: Option<Name>,
    /// Cluster name or id.
    pub cluster: Option<String>,
}

/// A listing of a schedule's fires as asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FireQuery {
    /// Schedule name or id.
    pub schedule: String,
    pub page_size: u32,
    /// Resume after this (fire time ms, attempt), newest first.
    pub after: Option<(i64, u32)>,
}
