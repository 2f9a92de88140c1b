//! Runs as JSON for people and other programs outside the API: the body of a webhook call and
//! the runs of the status page. One shape for both, documented in docs/operating.md; fields are
//! only ever added.

use std::time::SystemTime;

use serde::Serialize;
use uuid::Uuid;

use crate::model::purge::PurgeResult;
use crate::model::run::{Counters, Run, RunState};

/// A run's totals, summed over its nodes.
#[derive(Debug, Clone, Serialize)]
pub struct Totals {
    pub files_total: u64,
    pub files_done: u64,
    pub files_skipped: u64,
    pub bytes_total: u64,
    pub bytes_done: u64,
    pub bytes_skipped: u64,
    pub bytes_transferred: u64,
    pub objects_uploaded: u64,
    pub rate_bytes_per_second: u64,
    pub eta_seconds: Option<u64>,
}

impl From<&Counters> for Totals {
    fn from(counters: &Counters) -> Self {
        Self {
            files_total: counters.files_total,
            files_done: counters.files_done,
            files_skipped: counters.files_skipped,
            bytes_total: counters.bytes_total,
            bytes_done: counters.bytes_done,
            bytes_skipped: counters.bytes_skipped,
            bytes_transferred: counters.bytes_transferred,
            objects_uploaded: counters.objects_uploaded,
            rate_bytes_per_second: counters.rate_bytes_per_second,
            eta_seconds: counters.eta.map(|eta| eta.as_secs()),
        }
    }
}

/// One node's part of a run.
#[derive(Debug, Clone, Serialize)]
pub struct NodeReport {
    pub node_id: Uuid,
    pub phase: &'static str,
    pub error: String,
    pub totals: Totals,
}

/// What a validation found, in short.
#[derive(Debug, Clone, Serialize)]
pub struct ValidationReport {
    pub backups_checked: usize,
    pub backups_unrestorable: Vec<Uuid>,
    pub objects_missing: u64,
    pub objects_damaged: u64,
    pub objects_orphaned: u64,
    pub objects_verified: u64,
}

/// A run.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub id: Uuid,
    pub kind: &'static str,
    pub cluster: String,
    pub cluster_id: Uuid,
    /// queued, running, canceling, succeeded, failed or canceled.
    pub state: &'static str,
    /// Why it failed; empty otherwise.
    pub error: String,
    pub dry_run: bool,
    pub schedule_id: Option<Uuid>,
    pub started_by: String,
    pub backup_id: Option<Uuid>,
    /// RFC 3339, UTC.
    pub create_time: String,
    pub start_time: Option<String>,
    pub finish_time: Option<String>,
    /// From start (or creation) to the end, or to now for a run in flight.
    pub duration_seconds: f64,
    pub totals: Totals,
    pub nodes: Vec<NodeReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validation: Option<ValidationReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub purge: Option<PurgeResult>,
}

fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

impl From<&Run> for RunReport {
    fn from(run: &Run) -> Self {
        let start = run.start_time.unwrap_or(run.create_time);
        let end = match run.state {
            RunState::Queued | RunState::Running | RunState::Canceling => SystemTime::now(),
            _ => run.finish_time.unwrap_or(run.update_time),
        };
        Self {
            id: run.id,
            kind: run.kind.as_str(),
            cluster: run.cluster_name.clone(),
            cluster_id: run.cluster_id,
            state: run.state.as_str(),
            error: run.error.clone(),
            dry_run: run.dry_run,
            schedule_id: run.schedule_id,
            started_by: run.started_by.clone(),
            backup_id: run.backup_id,
            create_time: rfc3339(run.create_time),
            start_time: run.start_time.map(rfc3339),
            finish_time: run.finish_time.map(rfc3339),
            duration_seconds: end
                .duration_since(start)
                .map_or(0.0, |took| took.as_secs_f64()),
            totals: Totals::from(&run.totals()),
            nodes: run
                .nodes
                .iter()
                .map(|node| NodeReport {
                    node_id: node.node_id,
                    phase: node.phase.as_str(),
                    error: node.last_error.clone(),
                    totals: Totals::from(&node.counters),
                })
                .collect(),
            validation: run.validation.as_ref().map(|found| ValidationReport {
                backups_checked: found.backups.len(),
                backups_unrestorable: found
                    .backups
                    .iter()
                    .filter(|backup| !backup.restorable)
                    .map(|backup| backup.backup_id)
                    .collect(),
                objects_missing: found.objects_missing,
                objects_damaged: found.objects_damaged,
                objects_orphaned: found.objects_orphaned,
                objects_verified: found.objects_verified,
            }),
            purge: run.purge.clone(),
        }
    }
}
