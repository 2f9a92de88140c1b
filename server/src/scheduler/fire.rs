//! A fire: the backup run it starts, or why it starts none, recorded with what follows.

use super::Scheduler;
use crate::backups::StartBackup;
use crate::error::{Error, Result};
use crate::model::Labels;
use crate::model::schedule::{AwaitedRun, FireOutcome, PendingFire, Schedule, ScheduleFire};

impl Scheduler {
    /// Starts the run of a pending fire (or finds the one its idempotency key started), and
    /// records what the fire did. A fire that could not start a run is retried as the retry
    /// policy says; a skipped one is not.
    pub(super) async fn fire(
        &self,
        schedule: &mut Schedule,
        pending: PendingFire,
        now_ms: i64,
    ) -> Result<ScheduleFire> {
        let outcome = self.start_run(schedule, &pending).await?;
        // A new run could start only if the one awaited before ended: handle its end first, so
        // that its retention or retry is not lost when the new run takes its place.
        if let (FireOutcome::Started { run_id }, Some(earlier)) =
            (&outcome, schedule.progress.awaited)
            && earlier.run_id != *run_id
        {
            self.follow_up(schedule, earlier, now_ms).await?;
        }
        schedule.progress.pending = None;
        self.inner.metrics.schedule_fired(
            match &outcome {
                FireOutcome::Started { .. } => "started",
                FireOutcome::Skipped { .. } => "skipped",
                FireOutcome::Failed { .. } => "failed",
            },
            pending.attempt > 0,
            pending.missed,
        );
        let when = super::ending::format_ms(pending.fire_time_ms);
        let last_error = match &outcome {
            FireOutcome::Started { run_id } => {
                schedule.progress.awaited = Some(AwaitedRun {
                    run_id: *run_id,
                    fire_time_ms: pending.fire_time_ms,
                    attempt: pending.attempt,
                });
                tracing::info!(schedule = %schedule.name, %run_id, fire_time = %when,
                    attempt = pending.attempt, cause = pending.cause.as_str(), "schedule fired");
                String::new()
            }
            FireOutcome::Skipped { message, .. } => {
                tracing::info!(schedule = %schedule.name, fire_time = %when, %message,
                    "schedule fire skipped");
                format!("the fire of {when} was skipped: {message}")
            }
            FireOutcome::Failed { message } => {
                tracing::warn!(schedule = %schedule.name, fire_time = %when, %message,
                    "schedule fire started no run");
                schedule.progress.retry = self.retry_after(schedule, pending, now_ms);
                format!(
                    "the fire of {when} started no run: {message}{}",
                    super::ending::retry_note(schedule.progress.retry.as_ref())
                )
            }
        };
        let fire = ScheduleFire {
            fire: pending,
            outcome,
            record_time_ms: now_ms,
            follow_up: None,
        };
        self.inner
            .catalog
            .record_fire(schedule.id, &fire, &schedule.progress, &last_error)
            .await?;
        schedule.last_error = last_error;
        Ok(fire)
    }

    /// What starting the run of `pending` gives. Errors of the catalog itself are returned (the
    /// fire stays pending and is tried again next tick); every other one is the fire's outcome.
    async fn start_run(&self, schedule: &Schedule, pending: &PendingFire) -> Result<FireOutcome> {
        if schedule.cluster_name.is_none() {
            return Ok(FireOutcome::Failed {
                message: format!(
                    "cluster {} was deleted; delete the schedule (its backups stay)",
                    schedule.cluster_id
                ),
            });
        }
        if schedule.backup.location_name.is_empty() {
            return Ok(FireOutcome::Failed {
                message: format!(
                    "location {} was deleted; update the schedule's backup location",
                    schedule.backup.location_id
                ),
            });
        }
        let request = StartBackup {
            cluster: schedule.cluster_id.to_string(),
            kind: schedule.backup.kind,
            location: schedule.backup.location_id.to_string(),
            filter: schedule.backup.filter.clone(),
            limits: schedule.backup.limits,
            labels: Labels::from_catalog(schedule.backup.labels.clone()),
            dry_run: false,
            idempotency_key: Some(pending.idempotency_key(schedule.id)),
            schedule_id: Some(schedule.id),
            started_by: format!("schedule:{}", schedule.name),
        };
        // The idempotency key is looked up before the cluster's active run: a fire whose run was
        // started before a restart finds that run, not a reason to skip.
        let key = request.idempotency_key.clone().unwrap_or_default();
        let mut started = self.inner.backups.start(request.clone()).await;
        if let Err(Error::FailedPrecondition(_)) = &started
            && self
                .inner
                .catalog
                .active_run(schedule.cluster_id)
                .await?
                .is_none()
        {
            // Refused, but no run is active now: the run that held the cluster ended between
            // the refusal and this look. The fire is not a failure (nor a skip): try once more.
            started = self.inner.backups.start(request).await;
        }
        match started {
            Ok(run_id) => Ok(FireOutcome::Started { run_id }),
            // The key names a run with other parameters: the fire's own run, started before a
            // restart, from settings (a location's name, the schedule's backup parameters) that
            // changed since. It is the fire's run all the same.
            Err(Error::AlreadyExists(message)) => {
                match self
                    .inner
                    .catalog
                    .run_with_key(schedule.cluster_id, &key)
                    .await?
                {
                    Some(run_id) => Ok(FireOutcome::Started { run_id }),
                    None => Ok(FireOutcome::Failed { message }),
                }
            }
            Err(Error::FailedPrecondition(message)) => {
                let active = self.inner.catalog.active_run(schedule.cluster_id).await?;
                Ok(match active {
                    Some(active) => FireOutcome::Skipped {
                        active_run_id: Some(active.id),
                        message: format!(
                            "cluster {:?} has an active {} run {}",
                            schedule.cluster_name.as_deref().unwrap_or_default(),
                            active.kind,
                            active.id
                        ),
                    },
                    None => FireOutcome::Failed { message },
                })
            }
            Err(error @ (Error::Unavailable(_) | Error::Internal { .. })) => Err(error),
            Err(error) => Ok(FireOutcome::Failed {
                message: error.to_string(),
            }),
        }
    }
}
