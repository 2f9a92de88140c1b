//! Runs.

use coffer_proto::v1 as proto;

use super::{backup_kind_out, duration, limits_out, parse_id, timestamp, timestamp_ms};
use crate::error::{Error, Result};
use crate::model::page::{Cursor, CursorKind};
use crate::model::parse_page_size;
use crate::model::run::{
    BackupSpec, Counters, NodePhase, NodeProgress, RestoreSpec, Run, RunKind, RunQuery, RunSpec,
    RunState,
};
use crate::model::validation::ValidationResult;

pub(super) fn run_state_out(state: RunState) -> proto::RunState {
    match state {
        RunState::Queued => proto::RunState::Queued,
        RunState::Running => proto::RunState::Running,
        RunState::Canceling => proto::RunState::Canceling,
        RunState::Succeeded => proto::RunState::Succeeded,
        RunState::Failed => proto::RunState::Failed,
        RunState::Canceled => proto::RunState::Canceled,
    }
}

/// Parses the state filter of ListRuns.
fn run_states(states: &[i32]) -> Result<Vec<RunState>> {
    states
        .iter()
        .enumerate()
        .map(|(index, state)| match proto::RunState::try_from(*state) {
            Ok(proto::RunState::Queued) => Ok(RunState::Queued),
            Ok(proto::RunState::Running) => Ok(RunState::Running),
            Ok(proto::RunState::Canceling) => Ok(RunState::Canceling),
            Ok(proto::RunState::Succeeded) => Ok(RunState::Succeeded),
            Ok(proto::RunState::Failed) => Ok(RunState::Failed),
            Ok(proto::RunState::Canceled) => Ok(RunState::Canceled),
            _ => Err(Error::invalid(
                format!("states[{index}]"),
                format!("{state} is not a run state"),
            )),
        })
        .collect()
}

/// Parses the kind filter of ListRuns.
fn run_kind(kind: i32) -> Result<Option<RunKind>> {
    match proto::RunKind::try_from(kind) {
        Ok(proto::RunKind::Unspecified) => Ok(None),
        Ok(proto::RunKind::Backup) => Ok(Some(RunKind::Backup)),
        Ok(proto::RunKind::Restore) => Ok(Some(RunKind::Restore)),
        Ok(proto::RunKind::Validate) => Ok(Some(RunKind::Validate)),
        Ok(proto::RunKind::Purge) => Ok(Some(RunKind::Purge)),
        Err(_) => Err(Error::invalid("kind", format!("{kind} is not a run kind"))),
    }
}

fn phase_out(phase: NodePhase) -> proto::NodePhase {
    match phase {
        NodePhase::Queued => proto::NodePhase::Queued,
        NodePhase::Snapshotting => proto::NodePhase::Snapshotting,
        NodePhase::Hashing => proto::NodePhase::Hashing,
        NodePhase::Uploading => proto::NodePhase::Uploading,
        NodePhase::Downloading => proto::NodePhase::Downloading,
        NodePhase::Verifying => proto::NodePhase::Verifying,
        NodePhase::Placing => proto::NodePhase::Placing,
        NodePhase::RunningHook => proto::NodePhase::RunningHook,
        NodePhase::CleaningUp => proto::NodePhase::CleaningUp,
        NodePhase::Done => proto::NodePhase::Done,
        NodePhase::Failed => proto::NodePhase::Failed,
        NodePhase::Canceled => proto::NodePhase::Canceled,
    }
}

fn counters_out(counters: &Counters) -> proto::ProgressCounters {
    proto::ProgressCounters {
        files_total: counters.files_total,
        files_done: counters.files_done,
        files_skipped: counters.files_skipped,
        bytes_total: counters.bytes_total,
        bytes_done: counters.bytes_done,
        bytes_skipped: counters.bytes_skipped,
        rate_bytes_per_second: counters.rate_bytes_per_second,
        eta: counters.eta.and_then(duration),
        bytes_transferred: counters.bytes_transferred,
    }
}

impl From<NodeProgress> for proto::NodeProgress {
    fn from(node: NodeProgress) -> Self {
        Self {
            node_id: node.node_id.to_string(),
            source_node_id: node
                .source_node_id
                .map(|id| id.to_string())
                .unwrap_or_default(),
            phase: phase_out(node.phase).into(),
            progress: Some(counters_out(&node.counters)),
            last_error: node.last_error,
        }
    }
}

/// A backup's parameters as the API shows them: the location by id.
pub(super) fn backup_spec_out(spec: BackupSpec) -> proto::BackupSpec {
    proto::BackupSpec {
        kind: backup_kind_out(spec.kind),
        location: spec.location_id.to_string(),
        filter: Some(proto::PathFilter {
            include: spec.filter.include,
            exclude: spec.filter.exclude,
        }),
        limits: Some(limits_out(&spec.limits)),
        labels: spec.labels.into_iter().collect(),
    }
}

impl From<Run> for proto::Run {
    fn from(run: Run) -> Self {
        let totals = counters_out(&run.totals());
        let spec = match run.spec {
            RunSpec::Backup(spec) => proto::run::Spec::Backup(backup_spec_out(spec)),
            RunSpec::Restore(spec) => proto::run::Spec::Restore(restore_spec_out(spec)),
            RunSpec::Validate(spec) => proto::run::Spec::Validate(proto::ValidateSpec {
                location: spec.location_id.to_string(),
                depth: super::depth_out(spec.thoroughness.depth),
                sample_percent: spec.thoroughness.sample_percent,
            }),
            RunSpec::Purge(spec) => proto::run::Spec::Purge(proto::PurgeSpec {
                location: spec.location_id.to_string(),
            }),
        };
        Self {
            id: run.id.to_string(),
            cluster_id: run.cluster_id.to_string(),
            cluster_name: run.cluster_name,
            kind: match run.kind {
                RunKind::Backup => proto::RunKind::Backup,
                RunKind::Restore => proto::RunKind::Restore,
                RunKind::Validate => proto::RunKind::Validate,
                RunKind::Purge => proto::RunKind::Purge,
            }
            .into(),
            state: run_state_out(run.state).into(),
            spec: Some(spec),
            dry_run: run.dry_run,
            idempotency_key: run.idempotency_key.unwrap_or_default(),
            schedule_id: run.schedule_id.map(|id| id.to_string()).unwrap_or_default(),
            started_by: run.started_by,
            // A backup run's backup exists only once committed.
            backup_id: run
                .backup_id
                .filter(|_| run.kind == RunKind::Restore || run.state == RunState::Succeeded)
                .map(|id| id.to_string())
                .unwrap_or_default(),
            error_message: run.error,
            create_time: timestamp(run.create_time),
            start_time: run.start_time.and_then(timestamp),
            finish_time: run.finish_time.and_then(timestamp),
            update_time: timestamp(run.update_time),
            nodes: run.nodes.into_iter().map(Into::into).collect(),
            totals: Some(totals),
            validation: run.validation.map(validation_out),
            purge_result: run.purge.map(|purge| proto::PurgeResult {
                objects_listed: purge.objects_listed,
                objects_unreferenced: purge.objects_unreferenced,
                bytes_unreferenced: purge.bytes_unreferenced,
                objects_reclaimed: purge.objects_reclaimed,
                objects_deleted: purge.objects_deleted,
                bytes_freed: purge.bytes_freed,
                waits: purge.waits,
                uncommitted_folders: purge.uncommitted_folders,
                temporary_objects_deleted: purge.temporary_objects_deleted,
                temporary_bytes_freed: purge.temporary_bytes_freed,
            }),
        }
    }
}

fn validation_out(result: ValidationResult) -> proto::ValidationResult {
    proto::ValidationResult {
        objects_listed: result.objects_listed,
        objects_referenced: result.objects_referenced,
        objects_missing: result.objects_missing,
        objects_orphaned: result.objects_orphaned,
        orphaned_bytes: result.orphaned_bytes,
        backups: result
            .backups
            .into_iter()
            .map(|backup| proto::BackupValidation {
                backup_id: backup.backup_id.to_string(),
                restorable: backup.restorable,
                files_checked: backup.files_checked,
                missing_objects: backup.missing_objects,
                affected_files: backup.affected_files,
                error: backup.error,
                damaged_objects: backup.damaged_objects,
            })
            .collect(),
        objects_damaged: result.objects_damaged,
        objects_to_verify: result.objects_to_verify,
        objects_verified: result.objects_verified,
        bytes_verified: result.bytes_verified,
        objects_never_verified: result.objects_never_verified,
    }
}

fn restore_spec_out(spec: RestoreSpec) -> proto::RestoreSpec {
    use crate::model::run::RestoreSource;
    let source = match spec.source {
        RestoreSource::BackupId(id) => proto::restore_spec::Source::BackupId(id.to_string()),
        RestoreSource::PointInTime {
            source_cluster_id,
            as_of_ms,
            location_id,
        } => proto::restore_spec::Source::PointInTime(proto::PointInTime {
            source_cluster: source_cluster_id.to_string(),
            as_of_time: Some(prost_types::Timestamp {
                seconds: as_of_ms.div_euclid(1000),
                nanos: i32::try_from(as_of_ms.rem_euclid(1000) * 1_000_000).unwrap_or(0),
            }),
            location: location_id.map(|id| id.to_string()).unwrap_or_default(),
        }),
    };
    proto::RestoreSpec {
        source: Some(source),
        node_mappings: spec
            .mappings
            .iter()
            .map(|mapping| proto::NodeMapping {
                source_node_id: mapping.source_node_id.to_string(),
                target_node_id: mapping.target_node_id.to_string(),
            })
            .collect(),
        filter: Some(proto::PathFilter {
            include: spec.filter.include,
            exclude: spec.filter.exclude,
        }),
        overwrite: spec.overwrite,
        limits: Some(limits_out(&spec.limits)),
        post_restore_hook: spec.hook.map(|hook| proto::RestoreHook {
            command: hook.command,
            timeout: (hook.timeout_seconds > 0).then(|| prost_types::Duration {
                seconds: i64::from(hook.timeout_seconds),
                nanos: 0,
            }),
        }),
    }
}

impl TryFrom<proto::ListRunsRequest> for RunQuery {
    type Error = Error;

    fn try_from(request: proto::ListRunsRequest) -> Result<Self> {
        Ok(Self {
            page_size: parse_page_size("page_size", request.page_size)?,
            after: Cursor::parse_time("page_token", CursorKind::Run, &request.page_token)?,
            cluster: (!request.cluster.is_empty()).then_some(request.cluster),
            kind: run_kind(request.kind)?,
            states: run_states(&request.states)?,
            min_create_ms: timestamp_ms("min_create_time", request.min_create_time)?,
            max_create_ms: timestamp_ms("max_create_time", request.max_create_time)?,
            schedule_id: if request.schedule_id.is_empty() {
                None
            } else {
                Some(parse_id("schedule_id", "schedule", &request.schedule_id)?)
            },
        })
    }
}
