//! What a run is: its kind, its persisted state machine, its parameters and per-node progress.
//!
//! States: `queued -> running -> succeeded | failed`, and `queued | running -> canceling ->
//! canceled`. Every transition is written to the catalog before it is acted on, so a restarted
//! server knows exactly what was in flight.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Backup or restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunKind {
    /// Copies a cluster's data into a location.
    Backup,
    /// Copies a backup back onto a cluster.
    Restore,
    /// Checks what a location holds for a cluster's backups.
    Validate,
    /// Deletes the objects no backup of a cluster refers to.
    Purge,
}

impl RunKind {
    /// Whether an active run of this kind holds its cluster (no other such run may start).
    /// Purges and validations only read the cluster's nodes and run beside its backups and
    /// restores, one of each kind at a time.
    pub fn holds_cluster(self) -> bool {
        matches!(self, Self::Backup | Self::Restore)
    }

    /// Catalog spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Backup => "backup",
            Self::Restore => "restore",
            Self::Validate => "validate",
            Self::Purge => "purge",
        }
    }

    /// Parses the catalog spelling.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "backup" => Some(Self::Backup),
            "restore" => Some(Self::Restore),
            "validate" => Some(Self::Validate),
            "purge" => Some(Self::Purge),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    /// Recorded, not started.
    Queued,
    /// Nodes are working.
    Running,
    /// Cancel requested; nodes are stopping and cleaning up.
    Canceling,
    /// Finished, everything done.
    Succeeded,
    /// Finished with an error; nothing committed.
    Failed,
    /// Finished by a cancel; nothing committed.
    Canceled,
}

impl RunState {
    /// Catalog spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Canceling => "canceling",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Canceled => "canceled",
        }
    }

    /// Parses the catalog spelling.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "queued" => Self::Queued,
            "running" => Self::Running,
            "canceling" => Self::Canceling,
            "succeeded" => Self::Succeeded,
            "failed" => Self::Failed,
            "canceled" => Self::Canceled,
            _ => return None,
        })
    }

    /// Whether the run has ended.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Canceled)
    }
}

/// What a node is doing in a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodePhase {
    /// Waiting its turn.
    Queued,
    /// Taking the snapshot.
    Snapshotting,
    /// Hashing files.
    Hashing,
    /// Uploading objects.
    Uploading,
    /// Downloading objects (restore).
    Downloading,
    /// Verifying downloads (restore).
    Verifying,
    /// Moving files into place (restore).
    Placing,
    /// Running the post-restore hook.
    RunningHook,
    /// Removing the snapshot.
    CleaningUp,
    /// Its part is finished.
    Done,
    /// Failed; see the node's error.
    Failed,
    /// Stopped by a cancel.
    Canceled,
}

impl NodePhase {
    /// Catalog spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Snapshotting => "snapshotting",
            Self::Hashing => "hashing",
            Self::Uploading => "uploading",
            Self::Downloading => "downloading",
            Self::Verifying => "verifying",
            Self::Placing => "placing",
            Self::RunningHook => "running_hook",
            Self::CleaningUp => "cleaning_up",
            Self::Done => "done",
            Self::Failed => "failed",
            Self::Canceled => "canceled",
        }
    }

    /// Parses the catalog spelling.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "queued" => Self::Queued,
            "snapshotting" => Self::Snapshotting,
            "hashing" => Self::Hashing,
            "uploading" => Self::Uploading,
            "downloading" => Self::Downloading,
            "verifying" => Self::Verifying,
            "placing" => Self::Placing,
            "running_hook" => Self::RunningHook,
            "cleaning_up" => Self::CleaningUp,
            "done" => Self::Done,
            "failed" => Self::Failed,
            "canceled" => Self::Canceled,
            _ => return None,
        })
    }
}

/// Progress counters of a node (or of a whole run).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Files selected.
    pub files_total: u64,
    /// Files finished.
    pub files_done: u64,
    /// Of the finished files, those the location already had.
    pub files_skipped: u64,
    /// Bytes selected.
    pub bytes_total: u64,
    /// Bytes finished.
    pub bytes_done: u64,
    /// Of the finished bytes, those not transferred because present.
    pub bytes_skipped: u64,
    /// Bytes written to storage by a backup, or read from it by a restore, as stored (after
    /// compression).
    pub bytes_transferred: u64,
    /// Objects written to storage.
    pub objects_uploaded: u64,
    /// Recent throughput, bytes per second.
    pub rate_bytes_per_second: u64,
    /// Estimated time to finish.
    pub eta: Option<Duration>,
}

impl Counters {
    /// Adds `other`'s counters (totals of a run); rates add up, ETA is the longest.
    pub fn add(&mut self, other: &Counters) {
        self.files_total += other.files_total;
        self.files_done += other.files_done;
        self.files_skipped += other.files_skipped;
        self.bytes_total += other.bytes_total;
        self.bytes_done += other.bytes_done;
        self.bytes_skipped += other.bytes_skipped;
        self.bytes_transferred += other.bytes_transferred;
        self.objects_uploaded += other.objects_uploaded;
        self.rate_bytes_per_second += other.rate_bytes_per_second;
        self.eta = match (self.eta, other.eta) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }
}

/// Progress of one node in a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeProgress {
    pub node_id: Uuid,
    /// For restores: the node of the backup whose data it receives.
    pub source_node_id: Option<Uuid>,
    /// What it is doing.
    pub phase: NodePhase,
    pub counters: Counters,
    /// Last error, empty when none.
    pub last_error: String,
}

impl NodeProgress {
    /// A node of a run that has not started: queued, nothing counted. `source_node_id` is the
    /// backup node a restore puts onto it.
    pub fn queued(node_id: Uuid, source_node_id: Option<Uuid>) -> Self {
        Self {
            node_id,
            source_node_id,
            phase: NodePhase::Queued,
            counters: Counters::default(),
            last_error: String::new(),
        }
    }
}

/// The kinds of backup and the file selections are the storage format's own: a backup's
/// manifest records them as the catalog does.
pub use coffer_format::{BackupKind, PathFilter};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferLimits {
    /// Bytes per second per node; 0 unlimited.
    pub rate_limit_bytes_per_second: u64,
    /// Concurrent files per node; 0 the agent's default.
    pub concurrency: u32,
    /// Nodes transferring at once; 0 all.
    pub node_parallelism: u32,
}

/// Parameters of a backup run, as recorded (locations resolved to ids).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupSpec {
    /// Kind requested.
    pub kind: BackupKind,
    pub location_id: Uuid,
    /// Location name when the run started.
    pub location_name: String,
    /// File selection.
    pub filter: PathFilter,
    pub limits: TransferLimits,
    /// Labels given to the backup.
    pub labels: BTreeMap<String, String>,
}

/// How the backup of a restore was chosen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RestoreSource {
    BackupId(Uuid),
    /// The newest committed backup of a cluster at or before a time.
    PointInTime {
        /// The cluster the backup was taken from.
        source_cluster_id: Uuid,
        /// The time, ms since the Unix epoch.
        as_of_ms: i64,
        /// Only backups in this location.
        location_id: Option<Uuid>,
    },
}

/// A backup node restored onto a target node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeMapping {
    /// Node of the backup.
    pub source_node_id: Uuid,
    /// Node of the target cluster.
    pub target_node_id: Uuid,
}

/// A command the target agents run after placing files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreHook {
    /// Program and arguments.
    pub command: Vec<String>,
    /// Seconds it may run; 0 means the default.
    pub timeout_seconds: u32,
}

/// Parameters of a restore run, as recorded (the source resolved to a backup).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreSpec {
    /// How the backup was asked for.
    pub source: RestoreSource,
    /// The backup restored.
    pub backup_id: Uuid,
    pub location_id: Uuid,
    /// Source node -> target node, as given (empty: by node id).
    pub requested_mappings: Vec<NodeMapping>,
    /// The mapping used.
    pub mappings: Vec<NodeMapping>,
    /// File selection.
    pub filter: PathFilter,
    /// Replace existing files.
    pub overwrite: bool,
    pub limits: TransferLimits,
    /// Post-restore hook.
    pub hook: Option<RestoreHook>,
}

/// Parameters of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum RunSpec {
    Backup(BackupSpec),
    Restore(RestoreSpec),
    Validate(super::validation::ValidateSpec),
    Purge(super::purge::PurgeSpec),
}

impl RunSpec {
    /// The location the run reads or writes.
    pub fn location_id(&self) -> Uuid {
        match self {
            Self::Backup(spec) => spec.location_id,
            Self::Restore(spec) => spec.location_id,
            Self::Validate(spec) => spec.location_id,
            Self::Purge(spec) => spec.location_id,
        }
    }
}

/// A run as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    /// Id; also the tag of the snapshots it takes.
    pub id: Uuid,
    pub cluster_id: Uuid,
    /// Cluster name when the run started.
    pub cluster_name: String,
    pub kind: RunKind,
    pub state: RunState,
    /// Parameters.
    pub spec: RunSpec,
    /// Report what would be done, and change nothing.
    pub dry_run: bool,
    /// Idempotency key, if given.
    pub idempotency_key: Option<String>,
    /// Schedule that started it.
    pub schedule_id: Option<Uuid>,
    /// Who started it: `token:<name>`, `schedule:<name>`, `retention:<schedule name>`,
    /// `anonymous`; empty for runs recorded before Coffer kept it.
    pub started_by: String,
    /// Backup written (or read).
    pub backup_id: Option<Uuid>,
    /// Why it failed, empty otherwise.
    pub error: String,
    /// What a validate run found.
    pub validation: Option<super::validation::ValidationResult>,
    /// What a purge run found and freed.
    pub purge: Option<super::purge::PurgeResult>,
    /// When it was recorded.
    pub create_time: SystemTime,
    /// When it started running.
    pub start_time: Option<SystemTime>,
    /// When it ended.
    pub finish_time: Option<SystemTime>,
    /// Last change.
    pub update_time: SystemTime,
    /// Per-node progress.
    pub nodes: Vec<NodeProgress>,
}

impl Run {
    /// Sum of the nodes' counters.
    pub fn totals(&self) -> Counters {
        let mut totals = Counters::default();
        for node in &self.nodes {
            totals.add(&node.counters);
        }
        totals
    }
}

/// A query over runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListRuns {
    pub page_size: u32,
    /// Resume after this (create time ms, id), newest first.
    pub after: Option<(i64, Uuid)>,
    /// Only this cluster.
    pub cluster_id: Option<Uuid>,
    /// Only this kind.
    pub kind: Option<RunKind>,
    /// Only these states (any).
    pub states: Vec<RunState>,
    /// Created at or after (ms).
    pub min_create_ms: Option<i64>,
    /// Created at or before (ms).
    pub max_create_ms: Option<i64>,
    /// Only runs of this schedule.
    pub schedule_id: Option<Uuid>,
}

/// A listing of runs as asked for: the cluster by name or id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunQuery {
    pub page_size: u32,
    /// Resume after this (create time ms, id), newest first.
    pub after: Option<(i64, Uuid)>,
    pub cluster: Option<String>,
    pub kind: Option<RunKind>,
    /// Only runs in one of these states; empty means any.
    pub states: Vec<RunState>,
    /// Created at or after, and at or before (ms since the epoch).
    pub min_create_ms: Option<i64>,
    pub max_create_ms: Option<i64>,
    /// Only runs of this schedule (not checked: runs of a deleted schedule stay listable).
    pub schedule_id: Option<Uuid>,
}

/// A node's transfer counters as its agent reports them (cumulative).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransferProgress {
    pub files_total: u64,
    pub files_done: u64,
    pub files_skipped: u64,
    pub bytes_total: u64,
    pub bytes_done: u64,
    pub bytes_skipped: u64,
    /// Bytes written to storage (backup) or read from it (restore), as stored.
    pub bytes_transferred: u64,
}

impl TransferProgress {
    /// Copies the counters into a node's; rate, ETA and objects are the caller's.
    pub fn apply_to(&self, counters: &mut Counters) {
        counters.files_total = self.files_total;
        counters.files_done = self.files_done;
        counters.files_skipped = self.files_skipped;
        counters.bytes_total = self.bytes_total;
        counters.bytes_done = self.bytes_done;
        counters.bytes_skipped = self.bytes_skipped;
        counters.bytes_transferred = self.bytes_transferred;
    }
}

/// What a node's part of a run reports while it works.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeUpdate {
    /// The work to do is known (a snapshot was taken): the totals, and the phase the node is in.
    Totals {
        phase: NodePhase,
        files_total: u64,
        bytes_total: u64,
    },
    /// Cumulative counters, and the phase they were counted in.
    Progress {
        phase: NodePhase,
        progress: TransferProgress,
    },
}

/// What a node's upload achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadSummary {
    /// Path of the node manifest it wrote, relative to the location's root.
    pub manifest_path: String,
    pub progress: TransferProgress,
    /// Objects it wrote to storage.
    pub objects_uploaded: u64,
}

/// What a node's restore achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreSummary {
    pub progress: TransferProgress,
    /// Files that existed before the restore (replaced with overwrite, else refused).
    pub existing_paths: Vec<String>,
    pub files_overwritten: u64,
}
