//! The scheduler: fires each schedule at its times, follows the runs it started to their end,
//! retries the failed ones and applies retention after the ones that committed.
//!
//! Everything it decides is written to the catalog before it is acted on, so a server killed
//! at any point goes on where it stopped: a fire is first written as pending (with the fire
//! time that makes its run's idempotency key), then its run is started, then what it did is
//! recorded; a restart finds the pending fire and asks for the same run again, which the
//! catalog answers with the run already started, if any. A fire never starts two runs.
//!
//! Fire times come from the trigger alone ([`Trigger::due`]): a run that outlasts the next fire
//! time makes that fire a skipped one, and the ones after it fire as usual.
//!
//! One task tends every schedule once per tick (and at once when a request changes one).
//! Requests that change a schedule take the same lock as a tick, so a change and a fire never
//! interleave.

mod ending;
mod fire;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, MutexGuard, Notify};
use tokio_util::sync::CancellationToken;

use crate::backups::Backups;
use crate::catalog::Catalog;
use crate::error::Result;
use crate::lifecycle::purge::Purges;
use crate::lifecycle::validate::Validations;
use crate::model::schedule::{FireCause, PendingFire, Schedule, ScheduleFire};

pub use crate::clock::{Clock, FileClock, SystemClock};

/// How often the scheduler looks at its schedules when nothing wakes it.
pub const DEFAULT_TICK: Duration = Duration::from_secs(1);

/// How often the metrics' next fire times are read again.
const METRICS_REFRESH: Duration = Duration::from_secs(5);

/// Fires schedules; cheap to clone.
#[derive(Debug, Clone)]
pub struct Scheduler {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    catalog: Catalog,
    backups: Backups,
    /// Started after retention deleted backups, so stored data stays bounded.
    purges: Purges,
    /// Started after a backup of a schedule with a validation committed.
    validations: Validations,
    clock: Arc<dyn Clock>,
    tick: Duration,
    metrics: crate::metrics::Metrics,
    /// Held while a tick tends schedules and while a request changes one.
    lock: Mutex<()>,
    wake: Notify,
}

impl Scheduler {
    /// A scheduler starting backups through `backups`, purges through `purges` and validations
    /// through `validations`, telling time by `clock`, looking at its schedules every `tick`.
    pub fn new(
        catalog: Catalog,
        backups: Backups,
        purges: Purges,
        validations: Validations,
        clock: Arc<dyn Clock>,
        tick: Duration,
        metrics: crate::metrics::Metrics,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                catalog,
                backups,
                purges,
                validations,
                clock,
                tick,
                metrics,
                lock: Mutex::new(()),
                wake: Notify::new(),
            }),
        }
    }

    /// Now, by the scheduler's clock (ms since the epoch).
    pub fn now_ms(&self) -> i64 {
        self.inner.clock.now_ms()
    }

    /// Keeps the scheduler from tending schedules while the guard lives.
    pub async fn lock(&self) -> MutexGuard<'_, ()> {
        self.inner.lock.lock().await
    }

    /// Makes the scheduler look at its schedules now rather than at the next tick.
    pub fn wake(&self) {
        self.inner.wake.notify_one();
    }

    /// Tends the schedules every tick until `shutdown` is canceled.
    pub async fn run(&self, shutdown: CancellationToken) {
        tracing::info!(tick = ?self.inner.tick, "scheduler started");
        let mut metrics_refreshed: Option<std::time::Instant> = None;
        loop {
            if let Err(error) = self.tend().await {
                tracing::warn!(%error, "scheduler pass failed; trying again next tick");
            }
            if metrics_refreshed.is_none_or(|at| at.elapsed() >= METRICS_REFRESH) {
                metrics_refreshed = Some(std::time::Instant::now());
                if let Err(error) = self.refresh_metrics().await {
                    tracing::warn!(%error, "read schedules for the metrics");
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(self.inner.tick) => {}
                () = self.inner.wake.notified() => {}
            }
        }
        tracing::info!("scheduler stopped");
    }

    /// Shows every schedule to the metrics (next fire times, names of last successes).
    async fn refresh_metrics(&self) -> Result<()> {
        let mut next = Vec::new();
        let mut after: Option<crate::model::Name> = None;
        loop {
            let (page, more) = self
                .inner
                .catalog
                .list_schedules(1000, after.as_ref(), None)
                .await?;
            after = page.last().map(|schedule| schedule.name.clone());
            next.extend(
                page.into_iter()
                    .map(|schedule| crate::metrics::ScheduleSeen {
                        id: schedule.id,
                        name: schedule.name.to_string(),
                        next_fire_ms: schedule.next_fire_ms.filter(|_| !schedule.paused),
                    }),
            );
            if !more {
                break;
            }
        }
        self.inner.metrics.schedules_seen(next);
        Ok(())
    }

    /// One pass: every schedule with something to do now gets it done.
    pub async fn tend(&self) -> Result<()> {
        let _guard = self.lock().await;
        let now_ms = self.now_ms();
        for mut schedule in self.inner.catalog.schedules_to_tend(now_ms).await? {
            let name = schedule.name.to_string();
            if let Err(error) = self.tend_one(&mut schedule, now_ms).await {
                tracing::warn!(schedule = %name, %error, "schedule not tended; trying again next tick");
            }
        }
        Ok(())
    }

    /// Fires `schedule` now, under the rules of every fire; the caller holds the lock. The fire
    /// time is now, or just after the schedule's latest fire when that is not earlier (a fire
    /// of the trigger in the same millisecond, a clock set back): each request is its own fire,
    /// with a run of its own.
    pub async fn fire_now(&self, schedule: &mut Schedule) -> Result<ScheduleFire> {
        let now_ms = self.now_ms();
        self.finish_earlier(schedule, now_ms).await?;
        let latest = self.inner.catalog.latest_fire_time(schedule.id).await?;
        let mut fire_time_ms = latest.map_or(now_ms, |latest| now_ms.max(latest + 1));
        // Never the time of the trigger's next fire, whose key it would take.
        if Some(fire_time_ms) == schedule.next_fire_ms {
            fire_time_ms += 1;
        }
        let pending = PendingFire {
            fire_time_ms,
            attempt: 0,
            cause: FireCause::RunNow,
            missed: 0,
        };
        self.begin_fire(schedule, pending).await?;
        self.fire(schedule, pending, now_ms).await
    }

    /// Finishes what an earlier pass (or server) left: the end of the awaited run, then a fire
    /// chosen and never recorded, whose run is asked for again.
    async fn finish_earlier(&self, schedule: &mut Schedule, now_ms: i64) -> Result<()> {
        if let Some(awaited) = schedule.progress.awaited {
            self.follow_up(schedule, awaited, now_ms).await?;
        }
        if let Some(pending) = schedule.progress.pending {
            self.fire(schedule, pending, now_ms).await?;
        }
        Ok(())
    }

    async fn tend_one(&self, schedule: &mut Schedule, now_ms: i64) -> Result<()> {
        self.finish_earlier(schedule, now_ms).await?;
        // A paused schedule (fired with RunSchedule) is followed to its run's end, no further.
        if schedule.paused {
            return Ok(());
        }
        let regular = schedule
            .next_fire_ms
            .and_then(|next| schedule.trigger.due(next, now_ms));
        if let Some(retry) = schedule
            .progress
            .retry
            .filter(|retry| retry.at_ms <= now_ms)
        {
            schedule.progress.retry = None;
            if regular.is_none() {
                let pending = PendingFire {
                    fire_time_ms: retry.fire_time_ms,
                    attempt: retry.attempt,
                    cause: FireCause::Retry,
                    missed: 0,
                };
                self.begin_fire(schedule, pending).await?;
                self.fire(schedule, pending, now_ms).await?;
            }
            // Otherwise the regular fire below takes over from the retry.
        }
        if let Some(due) = regular {
            schedule.next_fire_ms = due.next_fire_ms;
            schedule.progress.retry = None;
            let pending = PendingFire {
                fire_time_ms: due.fire_time_ms,
                attempt: 0,
                cause: FireCause::Trigger,
                missed: due.missed,
            };
            self.begin_fire(schedule, pending).await?;
            self.fire(schedule, pending, now_ms).await?;
        }
        Ok(())
    }

    /// Writes a fire as pending (with the next fire time it leaves) before anything is started.
    async fn begin_fire(&self, schedule: &mut Schedule, pending: PendingFire) -> Result<()> {
        schedule.progress.pending = Some(pending);
        self.inner
            .catalog
            .save_fire_progress(schedule.id, &schedule.progress, schedule.next_fire_ms)
            .await
    }
}
