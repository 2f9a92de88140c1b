//! What the end of a scheduled run leads to: retention after a backup committed, a retry after
//! a run failed.

use jiff::Timestamp;
use uuid::Uuid;

use super::Scheduler;
use crate::error::Result;
use crate::model::run::RunState;
use crate::model::schedule::{AwaitedRun, FollowUp, PendingFire, PendingRetry, Schedule};

impl Scheduler {
    /// Handles the end of the run a fire started, once it ended: retention after a success, a
    /// retry (as the policy allows) after a failure, nothing after a cancel; neither retention
    /// nor a retry for a paused schedule. A run that is still active is left for a later tick.
    ///
    /// The run stays awaited in the catalog until everything that follows it is done and
    /// recorded (one transaction), so a server stopped half-way does it again on restart.
    pub(super) async fn follow_up(
        &self,
        schedule: &mut Schedule,
        awaited: AwaitedRun,
        now_ms: i64,
    ) -> Result<()> {
        let catalog = &self.inner.catalog;
        let run = catalog.get_run(awaited.run_id).await?;
        if run.as_ref().is_some_and(|run| !run.state.is_final()) {
            return Ok(());
        }
        let mut progress = schedule.progress.clone();
        progress.awaited = None;
        let (last_error, deleted_backups) = match run {
            None => (
                format!("run {} is gone from the catalog", awaited.run_id),
                Vec::new(),
            ),
            Some(run) => match run.state {
                RunState::Succeeded if schedule.paused => (String::new(), Vec::new()),
                RunState::Succeeded => {
                    let after = self.apply_retention(schedule, now_ms).await?;
                    self.start_validation(schedule).await;
                    after
                }
                RunState::Canceled => (format!("run {} was canceled", run.id), Vec::new()),
                _ if schedule.paused => (
                    format!("run {} failed: {} (not retried: paused)", run.id, run.error),
                    Vec::new(),
                ),
                _ => {
                    let fire = PendingFire {
                        fire_time_ms: awaited.fire_time_ms,
                        attempt: awaited.attempt,
                        cause: crate::model::schedule::FireCause::Trigger,
                        missed: 0,
                    };
                    progress.retry = self.retry_after(schedule, fire, now_ms);
                    (
                        format!(
                            "run {} failed: {}{}",
                            run.id,
                            run.error,
                            retry_note(progress.retry.as_ref())
                        ),
                        Vec::new(),
                    )
                }
            },
        };
        catalog
            .record_follow_up(
                schedule.id,
                (awaited.fire_time_ms, awaited.attempt),
                &FollowUp {
                    time_ms: now_ms,
                    deleted_backups,
                },
                &progress,
                &last_error,
            )
            .await?;
        schedule.progress = progress;
        schedule.last_error = last_error;
        Ok(())
    }

    /// The retry of `fire`, which failed at `failed_ms`, as the schedule's policy says: none
    /// when the attempts are used up, the retry would reach the next regular fire, or the
    /// schedule is paused.
    pub(super) fn retry_after(
        &self,
        schedule: &Schedule,
        fire: PendingFire,
        failed_ms: i64,
    ) -> Option<PendingRetry> {
        if schedule.paused {
            return None;
        }
        let attempt = fire.attempt.saturating_add(1);
        schedule
            .retry
            .retry_at(
                attempt,
                failed_ms,
                schedule.next_fire_ms,
                schedule.id.as_u128(),
            )
            .map(|at_ms| PendingRetry {
                at_ms,
                fire_time_ms: fire.fire_time_ms,
                attempt,
            })
    }

    /// Starts the validation the schedule asks for after each backup, if any. One still running
    /// from an earlier backup is left to finish: the next backup's validation checks again.
    /// Never fails the follow-up: a validation that cannot start is logged.
    async fn start_validation(&self, schedule: &Schedule) {
        let Some(thoroughness) = schedule.validation else {
            return;
        };
        let (location, cluster) = (
            schedule.backup.location_id.to_string(),
            schedule.cluster_id.to_string(),
        );
        match self
            .inner
            .validations
            .start(
                &location,
                &cluster,
                thoroughness,
                &format!("schedule:{}", schedule.name),
            )
            .await
        {
            Ok(run_id) => tracing::info!(schedule = %schedule.name, %run_id,
                "backup committed: validation started"),
            Err(error) => tracing::warn!(schedule = %schedule.name, %error,
                "backup committed; the validation after it did not start"),
        }
    }

    /// Deletes the schedule's backups that its retention does not keep, as DeleteBackup does.
    /// Returns the schedule's error after it (empty, or which deletions failed: they are tried
    /// again at the next pass, after the next backup commits) and the backups it deleted.
    async fn apply_retention(
        &self,
        schedule: &Schedule,
        now_ms: i64,
    ) -> Result<(String, Vec<Uuid>)> {
        if schedule.retention.keeps_all() {
            return Ok((String::new(), Vec::new()));
        }
        let backups = self.inner.catalog.schedule_backups(schedule.id).await?;
        let doomed = schedule
            .retention
            .to_delete(&backups, now_ms, &schedule.trigger.zone());
        let mut failures = Vec::new();
        let mut deleted = Vec::new();
        for backup in &doomed {
            match self.inner.backups.delete(backup.id).await {
                Ok(()) => {
                    deleted.push(backup.id);
                    tracing::info!(schedule = %schedule.name, backup_id = %backup.id,
                        "retention deleted a backup");
                }
                Err(error) => {
                    tracing::warn!(schedule = %schedule.name, backup_id = %backup.id, %error,
                        "retention could not delete a backup");
                    failures.push(format!("{}: {error}", backup.id));
                }
            }
        }
        if !deleted.is_empty() {
            // What the deleted backups held is freed by a purge of the location (in the
            // background, beside later backups), so an unattended deployment's storage stays
            // bounded. A purge already running there does it at its next pass.
            let (location, cluster) = (
                schedule.backup.location_id.to_string(),
                schedule.cluster_id.to_string(),
            );
            let started_by = format!("retention:{}", schedule.name);
            match self
                .inner
                .purges
                .start(&location, &cluster, false, &started_by)
                .await
            {
                Ok(run_id) => tracing::info!(schedule = %schedule.name, %run_id,
                    "retention deleted backups: purge started"),
                Err(error) => tracing::warn!(schedule = %schedule.name, %error,
                    "retention deleted backups; the purge after it did not start"),
            }
        }
        let last_error = if failures.is_empty() {
            String::new()
        } else {
            format!(
                "retention could not delete {} of {} backups (tried again after the next \
                 backup): {}",
                failures.len(),
                doomed.len(),
                failures.join("; ")
            )
        };
        Ok((last_error, deleted))
    }
}

/// An instant for messages: RFC 3339 in UTC.
pub(super) fn format_ms(ms: i64) -> String {
    Timestamp::from_millisecond(ms)
        .map(|time| time.to_string())
        .unwrap_or_else(|_| format!("{ms} ms"))
}

/// What a message says of the retry that follows a failure.
pub(super) fn retry_note(retry: Option<&PendingRetry>) -> String {
    match retry {
        Some(retry) => format!("; retry {} at {}", retry.attempt, format_ms(retry.at_ms)),
        None => String::new(),
    }
}
