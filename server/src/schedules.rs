//! Schedules: creating, reading, changing and deleting them, firing one now, and listing what
//! their fires did. The firing itself is the [`Scheduler`]'s.

use std::time::SystemTime;

use uuid::Uuid;

use crate::catalog::Catalog;
use crate::clusters::ClusterRegistry;
use crate::error::{Error, Result};
use crate::locations::LocationRegistry;
use crate::model::Page;
use crate::model::page::Cursor;
use crate::model::run::BackupSpec;
use crate::model::schedule::{
    FireOutcome, FireProgress, FireQuery, NewSchedule, Schedule, ScheduleFire, ScheduleQuery,
    ScheduleUpdate, ScheduledBackup,
};
use crate::scheduler::Scheduler;

/// The schedules of the catalog.
#[derive(Debug, Clone)]
pub struct Schedules {
    catalog: Catalog,
    clusters: ClusterRegistry,
    locations: LocationRegistry,
    scheduler: Scheduler,
}

impl Schedules {
    pub fn new(
        catalog: Catalog,
        clusters: ClusterRegistry,
        locations: LocationRegistry,
        scheduler: Scheduler,
    ) -> Self {
        Self {
            catalog,
            clusters,
            locations,
            scheduler,
        }
    }

    /// Records a schedule; its first fire is the trigger's first time after now, unless it is
    /// paused. NOT_FOUND for an unknown cluster or location, ALREADY_EXISTS for a taken name.
    pub async fn create(&self, new: NewSchedule) -> Result<Schedule> {
        let cluster = self.clusters.get(&new.cluster).await?;
        let backup = self.backup_spec(new.backup).await?;
        let now = SystemTime::now();
        let id = Uuid::now_v7();
        {
            let _guard = self.scheduler.lock().await;
            let next_fire_ms = if new.paused {
                None
            } else {
                new.trigger.next_fire_after(self.scheduler.now_ms())
            };
            let schedule = Schedule {
                id,
                name: new.name,
                cluster_id: cluster.id,
                cluster_name: Some(cluster.name.to_string()),
                trigger: new.trigger,
                backup,
                retention: new.retention,
                retry: new.retry,
                validation: new.validation,
                paused: new.paused,
                next_fire_ms,
                last_fire: None,
                last_run_id: None,
                last_run_state: None,
                last_error: String::new(),
                progress: FireProgress::default(),
                create_time: now,
                update_time: now,
            };
            self.catalog.insert_schedule(&schedule).await?;
            tracing::info!(schedule = %schedule.name, schedule_id = %id, "schedule created");
        }
        self.scheduler.wake();
        self.get(&id.to_string()).await
    }

    /// The schedule with this name or id; NOT_FOUND when there is none.
    pub async fn get(&self, reference: &str) -> Result<Schedule> {
        self.catalog
            .find_schedule(reference)
            .await?
            .ok_or_else(|| Error::NotFound {
                kind: "schedule",
                name: reference.to_string(),
            })
    }

    /// Schedules by name; NOT_FOUND for an unknown cluster filter.
    pub async fn list(&self, query: ScheduleQuery) -> Result<Page<Schedule>> {
        let cluster_id = match &query.cluster {
            Some(cluster) => Some(self.clusters.get(cluster).await?.id),
            None => None,
        };
        let (items, more) = self
            .catalog
            .list_schedules(query.page_size, query.after.as_ref(), cluster_id)
            .await?;
        let next_page_token = if more {
            items
                .last()
                .map(|last| Cursor::AfterName(last.name.clone()).encode())
        } else {
            None
        };
        Ok(Page {
            items,
            next_page_token,
        })
    }

    /// Applies every change of `update` or none. A new trigger, or resuming, sets the next fire
    /// time from now; pausing clears it and drops a pending retry.
    pub async fn update(&self, update: ScheduleUpdate) -> Result<Schedule> {
        let backup = match update.backup {
            Some(backup) => Some(self.backup_spec(backup).await?),
            None => None,
        };
        let id = {
            let _guard = self.scheduler.lock().await;
            let mut schedule = self.get(&update.schedule).await?;
            let resumed = update.paused == Some(false) && schedule.paused;
            let retimed = update.trigger.is_some();
            if let Some(name) = update.name {
                schedule.name = name;
            }
            if let Some(trigger) = update.trigger {
                schedule.trigger = trigger;
            }
            if let Some(backup) = backup {
                schedule.backup = backup;
            }
            if let Some(retention) = update.retention {
                schedule.retention = retention;
            }
            if let Some(retry) = update.retry {
                schedule.retry = retry;
            }
            if let Some(validation) = update.validation {
                schedule.validation = validation;
            }
            if let Some(paused) = update.paused {
                schedule.paused = paused;
            }
            if schedule.paused {
                schedule.next_fire_ms = None;
                schedule.progress.retry = None;
            } else if resumed || retimed {
                schedule.next_fire_ms = schedule.trigger.next_fire_after(self.scheduler.now_ms());
                if resumed {
                    schedule.progress.retry = None;
                }
            }
            schedule.update_time = SystemTime::now();
            self.catalog.update_schedule(&schedule).await?;
            tracing::info!(schedule = %schedule.name, schedule_id = %schedule.id, "schedule updated");
            schedule.id
        };
        self.scheduler.wake();
        self.get(&id.to_string()).await
    }

    /// Deletes a schedule and the record of its fires; its runs go on, its backups stay.
    pub async fn delete(&self, reference: &str) -> Result<()> {
        let _guard = self.scheduler.lock().await;
        let schedule = self.get(reference).await?;
        self.catalog.delete_schedule(schedule.id).await?;
        tracing::info!(schedule = %schedule.name, schedule_id = %schedule.id, "schedule deleted");
        Ok(())
    }

    /// Fires a schedule now. The fire is recorded whatever it did; one that started no run is
    /// also FAILED_PRECONDITION, with the reason (the active run, a deleted location ...).
    pub async fn run_now(&self, reference: &str) -> Result<ScheduleFire> {
        let _guard = self.scheduler.lock().await;
        let mut schedule = self.get(reference).await?;
        let fire = self.scheduler.fire_now(&mut schedule).await?;
        match &fire.outcome {
            FireOutcome::Started { .. } => Ok(fire),
            FireOutcome::Skipped { message, .. } => Err(Error::FailedPrecondition(format!(
                "schedule {:?} fired and was skipped: {message}",
                schedule.name.as_str()
            ))),
            FireOutcome::Failed { message } => Err(Error::FailedPrecondition(format!(
                "schedule {:?} fired and started no run: {message}",
                schedule.name.as_str()
            ))),
        }
    }

    /// A schedule's fires, newest first.
    pub async fn fires(&self, query: FireQuery) -> Result<Page<ScheduleFire>> {
        let schedule = self.get(&query.schedule).await?;
        let (items, more) = self
            .catalog
            .list_fires(schedule.id, query.page_size, query.after)
            .await?;
        let next_page_token = if more {
            items.last().map(|last| {
                Cursor::AfterFire {
                    ms: last.fire.fire_time_ms,
                    attempt: last.fire.attempt,
                }
                .encode()
            })
        } else {
            None
        };
        Ok(Page {
            items,
            next_page_token,
        })
    }

    /// The backup parameters to keep, with the location resolved to its id.
    async fn backup_spec(&self, backup: ScheduledBackup) -> Result<BackupSpec> {
        let location = self.locations.get(&backup.location).await?;
        Ok(BackupSpec {
            kind: backup.kind,
            location_id: location.id,
            location_name: location.name.to_string(),
            filter: backup.filter,
            limits: backup.limits,
            labels: backup.labels.as_map().clone(),
        })
    }
}
