//! Schedules.

use std::time::Duration;

use coffer_proto::v1 as proto;

use super::run::{backup_spec_out, run_state_out};
use super::{backup_kind, duration, limits, path_filter, timestamp};
use crate::error::{Error, Result};
use crate::model::page::{Cursor, CursorKind};
use crate::model::run::BackupKind;
use crate::model::schedule::{
    CronTrigger, FireCause, FireOutcome, FireQuery, NewSchedule, RetentionPolicy, RetryPolicy,
    Schedule, ScheduleFire, ScheduleQuery, ScheduleUpdate, ScheduledBackup, Trigger,
};
use crate::model::{Labels, Name, parse_page_size};

/// A protobuf duration read from `field`; negative or out-of-range ones are refused.
fn duration_in(field: &str, value: Option<prost_types::Duration>) -> Result<Option<Duration>> {
    value
        .map(|value| {
            Duration::try_from(value)
                .map_err(|_| Error::invalid(field, "must be a non-negative duration"))
        })
        .transpose()
}

fn cron(field: &str, cron: proto::CronTrigger) -> Result<Trigger> {
    Ok(Trigger::Cron(Box::new(CronTrigger::parse(
        field,
        &cron.expression,
        &cron.time_zone,
    )?)))
}

fn interval(field: &str, value: prost_types::Duration) -> Result<Trigger> {
    let interval = duration_in(field, Some(value))?.unwrap_or_default();
    Trigger::interval(field, interval)
}

fn scheduled_backup(field: &str, spec: Option<proto::BackupSpec>) -> Result<ScheduledBackup> {
    let spec =
        spec.ok_or_else(|| Error::invalid(field, "is required (the backups' parameters)"))?;
    if spec.location.is_empty() {
        return Err(Error::invalid(
            format!("{field}.location"),
            "is required (a location name or id)",
        ));
    }
    Ok(ScheduledBackup {
        kind: backup_kind(&format!("{field}.kind"), spec.kind)?.unwrap_or(BackupKind::Full),
        location: spec.location,
        filter: path_filter(&format!("{field}.filter"), spec.filter)?,
        limits: limits(&format!("{field}.limits"), spec.limits)?,
        labels: Labels::parse(&format!("{field}.labels"), spec.labels)?,
    })
}

fn retention(field: &str, policy: Option<proto::RetentionPolicy>) -> Result<RetentionPolicy> {
    let policy = policy.unwrap_or_default();
    RetentionPolicy {
        keep_last: policy.keep_last,
        keep_within: duration_in(&format!("{field}.keep_within"), policy.keep_within)?,
        keep_daily: policy.keep_daily,
        keep_weekly: policy.keep_weekly,
        keep_monthly: policy.keep_monthly,
    }
    .parse(field)
}

fn retry(field: &str, policy: Option<proto::RetryPolicy>) -> Result<RetryPolicy> {
    let defaults = RetryPolicy::default();
    let policy = policy.unwrap_or_default();
    let first_wait = duration_in(&format!("{field}.first_wait"), policy.first_wait)?
        .unwrap_or(defaults.first_wait);
    let max_wait = duration_in(&format!("{field}.max_wait"), policy.max_wait)?
        .unwrap_or(defaults.max_wait.max(first_wait));
    RetryPolicy::parse(field, policy.attempts, first_wait, max_wait)
}

fn required(field: &str, text: String, what: &str) -> Result<String> {
    if text.is_empty() {
        return Err(Error::invalid(
            field,
            format!("is required (a {what} name or id)"),
        ));
    }
    Ok(text)
}

impl TryFrom<proto::CreateScheduleRequest> for NewSchedule {
    type Error = Error;

    fn try_from(request: proto::CreateScheduleRequest) -> Result<Self> {
        use proto::create_schedule_request::Trigger as Wire;
        let name = Name::parse("name", &request.name)?;
        let cluster = required("cluster", request.cluster, "cluster")?;
        let trigger = match request.trigger {
            Some(Wire::Cron(value)) => cron("cron", value)?,
            Some(Wire::Interval(value)) => interval("interval", value)?,
            None => {
                return Err(Error::invalid(
                    "trigger",
                    "is required: set cron or interval",
                ));
            }
        };
        Ok(Self {
            name,
            cluster,
            trigger,
            backup: scheduled_backup("backup", request.backup)?,
            retention: retention("retention", request.retention)?,
            retry: retry("retry", request.retry)?,
            validation: request
                .validation
                .map(|v| super::thoroughness("validation.", v.depth, v.sample_percent))
                .transpose()?,
            paused: request.paused,
        })
    }
}

impl TryFrom<proto::UpdateScheduleRequest> for ScheduleUpdate {
    type Error = Error;

    fn try_from(request: proto::UpdateScheduleRequest) -> Result<Self> {
        use proto::update_schedule_request::Trigger as Wire;
        Ok(Self {
            schedule: required("schedule", request.schedule, "schedule")?,
            name: request
                .name
                .map(|name| Name::parse("name", &name))
                .transpose()?,
            trigger: match request.trigger {
                Some(Wire::Cron(value)) => Some(cron("cron", value)?),
                Some(Wire::Interval(value)) => Some(interval("interval", value)?),
                None => None,
            },
            backup: request
                .backup
                .map(|spec| scheduled_backup("backup", Some(spec)))
                .transpose()?,
            retention: request
                .retention
                .map(|policy| retention("retention", Some(policy)))
                .transpose()?,
            retry: request
                .retry
                .map(|policy| retry("retry", Some(policy)))
                .transpose()?,
            validation: match (request.validation, request.remove_validation) {
                (Some(_), true) => {
                    return Err(Error::invalid(
                        "remove_validation",
                        "cannot be set together with validation",
                    ));
                }
                (Some(v), false) => Some(Some(super::thoroughness(
                    "validation.",
                    v.depth,
                    v.sample_percent,
                )?)),
                (None, true) => Some(None),
                (None, false) => None,
            },
            paused: request.paused,
        })
    }
}

impl TryFrom<proto::ListSchedulesRequest> for ScheduleQuery {
    type Error = Error;

    fn try_from(request: proto::ListSchedulesRequest) -> Result<Self> {
        Ok(Self {
            page_size: parse_page_size("page_size", request.page_size)?,
            after: Cursor::parse_name("page_token", &request.page_token)?,
            cluster: (!request.cluster.is_empty()).then_some(request.cluster),
        })
    }
}

impl TryFrom<proto::ListScheduleFiresRequest> for FireQuery {
    type Error = Error;

    fn try_from(request: proto::ListScheduleFiresRequest) -> Result<Self> {
        let after = match Cursor::parse("page_token", CursorKind::Fire, &request.page_token)? {
            Some(Cursor::AfterFire { ms, attempt }) => Some((ms, attempt)),
            _ => None,
        };
        Ok(Self {
            schedule: required("schedule", request.schedule, "schedule")?,
            page_size: parse_page_size("page_size", request.page_size)?,
            after,
        })
    }
}

fn ms_timestamp(ms: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: i32::try_from(ms.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    })
}

impl From<ScheduleFire> for proto::ScheduleFire {
    fn from(fire: ScheduleFire) -> Self {
        let message = fire.outcome.message().to_string();
        let (outcome, run_id, active_run_id) = match fire.outcome {
            FireOutcome::Started { run_id } => (
                proto::FireOutcome::Started,
                run_id.to_string(),
                String::new(),
            ),
            FireOutcome::Skipped { active_run_id, .. } => (
                proto::FireOutcome::Skipped,
                String::new(),
                active_run_id.map(|id| id.to_string()).unwrap_or_default(),
            ),
            FireOutcome::Failed { .. } => {
                (proto::FireOutcome::Failed, String::new(), String::new())
            }
        };
        Self {
            fire_time: ms_timestamp(fire.fire.fire_time_ms),
            attempt: fire.fire.attempt,
            cause: match fire.fire.cause {
                FireCause::Trigger => proto::FireCause::Trigger,
                FireCause::Retry => proto::FireCause::Retry,
                FireCause::RunNow => proto::FireCause::RunNow,
            }
            .into(),
            missed_fires: fire.fire.missed,
            outcome: outcome.into(),
            run_id,
            active_run_id,
            message,
            record_time: ms_timestamp(fire.record_time_ms),
            follow_up_time: fire
                .follow_up
                .as_ref()
                .and_then(|follow_up| ms_timestamp(follow_up.time_ms)),
            deleted_backup_ids: fire
                .follow_up
                .map(|follow_up| {
                    follow_up
                        .deleted_backups
                        .iter()
                        .map(ToString::to_string)
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
}

impl From<Schedule> for proto::Schedule {
    fn from(schedule: Schedule) -> Self {
        let upcoming = schedule.upcoming_fires();
        let trigger = match &schedule.trigger {
            Trigger::Cron(cron) => proto::schedule::Trigger::Cron(proto::CronTrigger {
                expression: cron.expression().to_string(),
                time_zone: cron.time_zone().to_string(),
            }),
            Trigger::Interval(interval) => {
                proto::schedule::Trigger::Interval(duration(*interval).unwrap_or_default())
            }
        };
        let retention = &schedule.retention;
        let location_name = schedule.backup.location_name.clone();
        Self {
            id: schedule.id.to_string(),
            name: schedule.name.to_string(),
            cluster_id: schedule.cluster_id.to_string(),
            cluster_name: schedule.cluster_name.unwrap_or_default(),
            trigger: Some(trigger),
            backup: Some(backup_spec_out(schedule.backup)),
            retention: (!retention.keeps_all()).then(|| proto::RetentionPolicy {
                keep_last: retention.keep_last,
                keep_within: retention.keep_within.and_then(duration),
                keep_daily: retention.keep_daily,
                keep_weekly: retention.keep_weekly,
                keep_monthly: retention.keep_monthly,
            }),
            paused: schedule.paused,
            next_fire_time: schedule.next_fire_ms.and_then(ms_timestamp),
            last_fire_time: schedule
                .last_fire
                .as_ref()
                .and_then(|fire| ms_timestamp(fire.fire.fire_time_ms)),
            last_run_id: schedule
                .last_run_id
                .map(|id| id.to_string())
                .unwrap_or_default(),
            last_error: schedule.last_error,
            create_time: timestamp(schedule.create_time),
            update_time: timestamp(schedule.update_time),
            validation: schedule
                .validation
                .map(|thoroughness| proto::ScheduleValidation {
                    depth: super::depth_out(thoroughness.depth),
                    sample_percent: thoroughness.sample_percent,
                }),
            retry: Some(proto::RetryPolicy {
                attempts: schedule.retry.attempts,
                first_wait: duration(schedule.retry.first_wait),
                max_wait: duration(schedule.retry.max_wait),
            }),
            upcoming_fire_times: upcoming.into_iter().filter_map(ms_timestamp).collect(),
            last_fire: schedule.last_fire.map(Into::into),
            last_run_state: schedule
                .last_run_state
                .map(|state| run_state_out(state).into())
                .unwrap_or_default(),
            retry_time: schedule
                .progress
                .retry
                .and_then(|retry| ms_timestamp(retry.at_ms)),
            location_name,
        }
    }
}
