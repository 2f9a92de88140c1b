//! Schedules, the scheduler's bookkeeping and the fires of each schedule in the catalog.
//!
//! A schedule's settings (written by requests) and its progress (written by the scheduler) are
//! separate column sets, so neither write undoes the other.

use std::time::Duration;

use sqlx::Row;
use sqlx::sqlite::SqliteRow;
use uuid::Uuid;

use super::{Catalog, database_error, from_millis, millis, parse_uuid, write_error};
use crate::error::{Error, Result};
use crate::model::Name;
use crate::model::run::{BackupSpec, RunState};
use crate::model::schedule::{
    AwaitedRun, CronTrigger, FireCause, FireOutcome, FireProgress, FollowUp, PendingFire,
    PendingRetry, RetainedBackup, RetentionPolicy, RetryPolicy, Schedule, ScheduleFire, Trigger,
};
use crate::model::validation::Thoroughness;

/// Columns of a schedule with its cluster's and location's current names, its last run's
/// state and its last fire (the `f_` columns, NULL when it never fired).
const SCHEDULE_SELECT: &str = "SELECT s.id, s.name, s.cluster_id, clusters.name AS cluster_name, \
    s.cron_expression, s.time_zone, s.interval_ms, s.backup, locations.name AS location_name, \
    s.retention, s.retry, s.validation, s.paused, s.next_fire_ms, s.last_run_id, runs.state AS last_run_state, \
    s.last_error, s.pending_fire, s.awaited_run_id, s.awaited_fire_ms, s.awaited_attempt, \
    s.retry_at_ms, s.retry_fire_ms, s.retry_attempt, s.create_time_ms, s.update_time_ms, \
    f.fire_time_ms AS f_fire_time_ms, f.attempt AS f_attempt, f.cause AS f_cause, \
    f.missed AS f_missed, f.outcome AS f_outcome, f.run_id AS f_run_id, \
    f.active_run_id AS f_active_run_id, f.message AS f_message, \
    f.record_time_ms AS f_record_time_ms, f.follow_up_ms AS f_follow_up_ms, \
    f.deleted_backups AS f_deleted_backups \
    FROM schedules s \
    LEFT JOIN clusters ON clusters.id = s.cluster_id \
    LEFT JOIN locations ON locations.id = json_extract(s.backup, '$.location_id') \
    LEFT JOIN runs ON runs.id = s.last_run_id \
    LEFT JOIN schedule_fires f ON f.rowid = (SELECT rowid FROM schedule_fires \
        WHERE schedule_id = s.id ORDER BY record_time_ms DESC, rowid DESC LIMIT 1)";

const FIRE_COLUMNS: &str = "fire_time_ms AS f_fire_time_ms, attempt AS f_attempt, \
    cause AS f_cause, missed AS f_missed, outcome AS f_outcome, run_id AS f_run_id, \
    active_run_id AS f_active_run_id, message AS f_message, record_time_ms AS f_record_time_ms, \
    follow_up_ms AS f_follow_up_ms, deleted_backups AS f_deleted_backups";

impl Catalog {
    /// Records a new schedule. ALREADY_EXISTS when the name is taken.
    pub async fn insert_schedule(&self, schedule: &Schedule) -> Result<()> {
        let settings = Settings::of(schedule)?;
        sqlx::query(
            "INSERT INTO schedules (id, name, cluster_id, cron_expression, time_zone, \
             interval_ms, backup, retention, retry, validation, paused, next_fire_ms, \
             create_time_ms, update_time_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(schedule.id.to_string())
        .bind(schedule.name.as_str())
        .bind(schedule.cluster_id.to_string())
        .bind(settings.cron_expression)
        .bind(settings.time_zone)
        .bind(settings.interval_ms)
        .bind(settings.backup)
        .bind(settings.retention)
        .bind(settings.retry)
        .bind(settings.validation)
        .bind(i64::from(schedule.paused))
        .bind(schedule.next_fire_ms)
        .bind(millis(schedule.create_time))
        .bind(millis(schedule.update_time))
        .execute(&self.pool)
        .await
        .map_err(|error| name_taken(write_error("insert schedule", error), &schedule.name))?;
        Ok(())
    }

    /// Finds a schedule by id or, failing that, by name.
    pub async fn find_schedule(&self, reference: &str) -> Result<Option<Schedule>> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "{SCHEDULE_SELECT} WHERE s.id = ? OR s.name = ? ORDER BY s.id = ? DESC LIMIT 1"
        )))
        .bind(reference)
        .bind(reference)
        .bind(reference)
        .fetch_optional(&self.pool)
        .await
        .map_err(|error| database_error("look up schedule", error))?
        .map(|row| read_schedule(&row))
        .transpose()
    }

    /// Schedules by name after `after`, optionally of one cluster; and whether more follow.
    pub async fn list_schedules(
        &self,
        page_size: u32,
        after: Option<&Name>,
        cluster_id: Option<Uuid>,
    ) -> Result<(Vec<Schedule>, bool)> {
        let cluster_id = cluster_id.map(|id| id.to_string());
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{SCHEDULE_SELECT} WHERE s.name > ? AND (? IS NULL OR s.cluster_id = ?) \
             ORDER BY s.name LIMIT ?"
        )))
        .bind(after.map(Name::as_str).unwrap_or_default())
        .bind(&cluster_id)
        .bind(&cluster_id)
        .bind(i64::from(page_size) + 1)
        .fetch_all(&self.pool)
        .await
        .map_err(|error| database_error("list schedules", error))?;
        let more = rows.len() > page_size as usize;
        let items = rows
            .iter()
            .take(page_size as usize)
            .map(read_schedule)
            .collect::<Result<Vec<_>>>()?;
        Ok((items, more))
    }

    /// The schedules the scheduler has something to do for at `now_ms`: a fire not recorded
    /// yet or a run whose end is not handled (paused or not: a paused schedule can be fired
    /// now), and the unpaused ones with a fire time or retry that came.
    pub async fn schedules_to_tend(&self, now_ms: i64) -> Result<Vec<Schedule>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{SCHEDULE_SELECT} WHERE s.pending_fire IS NOT NULL OR s.awaited_run_id IS NOT NULL \
             OR (s.paused = 0 AND (s.next_fire_ms <= ? OR s.retry_at_ms <= ?)) \
             ORDER BY s.name"
        )))
        .bind(now_ms)
        .bind(now_ms)
        .fetch_all(&self.pool)
        .await
        .map_err(|error| database_error("list due schedules", error))?;
        // One schedule that cannot be read (a time zone a later release dropped, say) must not
        // stop the others: it is named in the log and left out.
        Ok(rows
            .iter()
            .filter_map(|row| match read_schedule(row) {
                Ok(schedule) => Some(schedule),
                Err(error) => {
                    let id: String = row.try_get("id").unwrap_or_default();
                    tracing::warn!(schedule_id = %id, %error, "schedule unreadable; not tended");
                    None
                }
            })
            .collect())
    }

    /// Writes a schedule's settings (name, trigger, backup, retention, retry, paused), its next
    /// fire time and update time, and its progress, in one statement. ALREADY_EXISTS when the
    /// new name is taken, NOT_FOUND when the schedule is gone.
    pub async fn update_schedule(&self, schedule: &Schedule) -> Result<()> {
        let settings = Settings::of(schedule)?;
        let progress = ProgressColumns::of(&schedule.progress)?;
        let updated = sqlx::query(
            "UPDATE schedules SET name = ?, cron_expression = ?, time_zone = ?, interval_ms = ?, \
             backup = ?, retention = ?, retry = ?, validation = ?, paused = ?, next_fire_ms = ?, \
             update_time_ms = ?, pending_fire = ?, awaited_run_id = ?, awaited_fire_ms = ?, \
             awaited_attempt = ?, retry_at_ms = ?, retry_fire_ms = ?, retry_attempt = ? \
             WHERE id = ?",
        )
        .bind(schedule.name.as_str())
        .bind(settings.cron_expression)
        .bind(settings.time_zone)
        .bind(settings.interval_ms)
        .bind(settings.backup)
        .bind(settings.retention)
        .bind(settings.retry)
        .bind(settings.validation)
        .bind(i64::from(schedule.paused))
        .bind(schedule.next_fire_ms)
        .bind(millis(schedule.update_time))
        .bind(progress.pending)
        .bind(progress.awaited_run_id)
        .bind(progress.awaited_fire_ms)
        .bind(progress.awaited_attempt)
        .bind(progress.retry_at_ms)
        .bind(progress.retry_fire_ms)
        .bind(progress.retry_attempt)
        .bind(schedule.id.to_string())
        .execute(&self.pool)
        .await
        .map_err(|error| name_taken(write_error("update schedule", error), &schedule.name))?;
        if updated.rows_affected() == 0 {
            return Err(not_found(schedule.id));
        }
        Ok(())
    }

    /// Writes the scheduler's progress with a schedule and its next fire time.
    pub async fn save_fire_progress(
        &self,
        schedule_id: Uuid,
        progress: &FireProgress,
        next_fire_ms: Option<i64>,
    ) -> Result<()> {
        let columns = ProgressColumns::of(progress)?;
        let updated = sqlx::query(
            "UPDATE schedules SET pending_fire = ?, awaited_run_id = ?, awaited_fire_ms = ?, \
             awaited_attempt = ?, retry_at_ms = ?, retry_fire_ms = ?, retry_attempt = ?, \
             next_fire_ms = ? WHERE id = ?",
        )
        .bind(columns.pending)
        .bind(columns.awaited_run_id)
        .bind(columns.awaited_fire_ms)
        .bind(columns.awaited_attempt)
        .bind(columns.retry_at_ms)
        .bind(columns.retry_fire_ms)
        .bind(columns.retry_attempt)
        .bind(next_fire_ms)
        .bind(schedule_id.to_string())
        .execute(&self.pool)
        .await
        .map_err(|error| database_error("save schedule progress", error))?;
        if updated.rows_affected() == 0 {
            return Err(not_found(schedule_id));
        }
        Ok(())
    }

    /// Records what a fire did together with the progress after it, the schedule's last fire,
    /// last run (when it started one) and last error, in one transaction. Recording the same
    /// fire again (schedule, fire time, attempt) keeps the first record.
    pub async fn record_fire(
        &self,
        schedule_id: Uuid,
        fire: &ScheduleFire,
        progress: &FireProgress,
        last_error: &str,
    ) -> Result<()> {
        let columns = ProgressColumns::of(progress)?;
        let id = schedule_id.to_string();
        let (run_id, active_run_id) = match &fire.outcome {
            FireOutcome::Started { run_id } => (Some(run_id.to_string()), None),
            FireOutcome::Skipped { active_run_id, .. } => {
                (None, active_run_id.map(|id| id.to_string()))
            }
            FireOutcome::Failed { .. } => (None, None),
        };
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT OR IGNORE INTO schedule_fires (schedule_id, fire_time_ms, attempt, cause, \
             missed, outcome, run_id, active_run_id, message, record_time_ms) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&id)
        .bind(fire.fire.fire_time_ms)
        .bind(i64::from(fire.fire.attempt))
        .bind(fire.fire.cause.as_str())
        .bind(i64::try_from(fire.fire.missed).unwrap_or(i64::MAX))
        .bind(fire.outcome.as_str())
        .bind(&run_id)
        .bind(active_run_id)
        .bind(fire.outcome.message())
        .bind(fire.record_time_ms)
        .execute(&mut *tx)
        .await
        .map_err(|error| write_error("record schedule fire", error))?;
        let updated = sqlx::query(
            "UPDATE schedules SET pending_fire = ?, awaited_run_id = ?, awaited_fire_ms = ?, \
             awaited_attempt = ?, retry_at_ms = ?, retry_fire_ms = ?, retry_attempt = ?, \
             last_fire_ms = ?, last_run_id = coalesce(?, last_run_id), last_error = ? \
             WHERE id = ?",
        )
        .bind(columns.pending)
        .bind(columns.awaited_run_id)
        .bind(columns.awaited_fire_ms)
        .bind(columns.awaited_attempt)
        .bind(columns.retry_at_ms)
        .bind(columns.retry_fire_ms)
        .bind(columns.retry_attempt)
        .bind(fire.fire.fire_time_ms)
        .bind(run_id)
        .bind(last_error)
        .bind(&id)
        .execute(&mut *tx)
        .await
        .map_err(|error| database_error("record schedule fire", error))?;
        if updated.rows_affected() == 0 {
            return Err(not_found(schedule_id));
        }
        tx.commit()
            .await
            .map_err(|error| database_error("commit schedule fire", error))
    }

    /// Records the end of a fire's run as handled, in one transaction: the scheduler's progress
    /// after it (the run no longer awaited, a retry planned), the schedule's last error, and on
    /// the fire what followed (retention's deletions).
    pub async fn record_follow_up(
        &self,
        schedule_id: Uuid,
        fire: (i64, u32),
        follow_up: &FollowUp,
        progress: &FireProgress,
        last_error: &str,
    ) -> Result<()> {
        let columns = ProgressColumns::of(progress)?;
        let deleted: Vec<String> = follow_up
            .deleted_backups
            .iter()
            .map(Uuid::to_string)
            .collect();
        let deleted = serde_json::to_string(&deleted)
            .map_err(|error| Error::internal("encode deleted backups", error))?;
        let id = schedule_id.to_string();
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "UPDATE schedule_fires SET follow_up_ms = ?, deleted_backups = ? \
             WHERE schedule_id = ? AND fire_time_ms = ? AND attempt = ?",
        )
        .bind(follow_up.time_ms)
        .bind(deleted)
        .bind(&id)
        .bind(fire.0)
        .bind(i64::from(fire.1))
        .execute(&mut *tx)
        .await
        .map_err(|error| database_error("record fire follow-up", error))?;
        let updated = sqlx::query(
            "UPDATE schedules SET pending_fire = ?, awaited_run_id = ?, awaited_fire_ms = ?, \
             awaited_attempt = ?, retry_at_ms = ?, retry_fire_ms = ?, retry_attempt = ?, \
             last_error = ? WHERE id = ?",
        )
        .bind(columns.pending)
        .bind(columns.awaited_run_id)
        .bind(columns.awaited_fire_ms)
        .bind(columns.awaited_attempt)
        .bind(columns.retry_at_ms)
        .bind(columns.retry_fire_ms)
        .bind(columns.retry_attempt)
        .bind(last_error)
        .bind(&id)
        .execute(&mut *tx)
        .await
        .map_err(|error| database_error("record fire follow-up", error))?;
        if updated.rows_affected() == 0 {
            return Err(not_found(schedule_id));
        }
        tx.commit()
            .await
            .map_err(|error| database_error("commit fire follow-up", error))
    }

    /// The latest fire time among a schedule's fires (retries carry their fire's time).
    pub async fn latest_fire_time(&self, schedule_id: Uuid) -> Result<Option<i64>> {
        sqlx::query_scalar("SELECT max(fire_time_ms) FROM schedule_fires WHERE schedule_id = ?")
            .bind(schedule_id.to_string())
            .fetch_one(&self.pool)
            .await
            .map_err(|error| database_error("read latest fire time", error))
    }

    /// Sets a schedule's last error (empty clears it).
    pub async fn set_schedule_error(&self, schedule_id: Uuid, last_error: &str) -> Result<()> {
        sqlx::query("UPDATE schedules SET last_error = ? WHERE id = ?")
            .bind(last_error)
            .bind(schedule_id.to_string())
            .execute(&self.pool)
            .await
            .map_err(|error| database_error("set schedule error", error))?;
        Ok(())
    }

    /// Deletes a schedule and its fires. NOT_FOUND when there is no such schedule.
    pub async fn delete_schedule(&self, schedule_id: Uuid) -> Result<()> {
        let deleted = sqlx::query("DELETE FROM schedules WHERE id = ?")
            .bind(schedule_id.to_string())
            .execute(&self.pool)
            .await
            .map_err(|error| database_error("delete schedule", error))?;
        if deleted.rows_affected() == 0 {
            return Err(not_found(schedule_id));
        }
        Ok(())
    }

    /// A schedule's fires newest first after `after` (fire time ms, attempt); and whether more
    /// follow.
    pub async fn list_fires(
        &self,
        schedule_id: Uuid,
        page_size: u32,
        after: Option<(i64, u32)>,
    ) -> Result<(Vec<ScheduleFire>, bool)> {
        let (after_ms, after_attempt) = after
            .map(|(ms, attempt)| (ms, i64::from(attempt)))
            .unwrap_or((i64::MAX, i64::MAX));
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {FIRE_COLUMNS} FROM schedule_fires WHERE schedule_id = ? \
             AND (fire_time_ms < ? OR (fire_time_ms = ? AND attempt < ?)) \
             ORDER BY fire_time_ms DESC, attempt DESC LIMIT ?"
        )))
        .bind(schedule_id.to_string())
        .bind(after_ms)
        .bind(after_ms)
        .bind(after_attempt)
        .bind(i64::from(page_size) + 1)
        .fetch_all(&self.pool)
        .await
        .map_err(|error| database_error("list schedule fires", error))?;
        let more = rows.len() > page_size as usize;
        let mut fires = Vec::new();
        for row in rows.iter().take(page_size as usize) {
            if let Some(fire) = read_fire(row)? {
                fires.push(fire);
            }
        }
        Ok((fires, more))
    }

    /// The committed backups a schedule made, as retention sees them.
    pub async fn schedule_backups(&self, schedule_id: Uuid) -> Result<Vec<RetainedBackup<Uuid>>> {
        let rows = sqlx::query(
            "SELECT id, start_time_ms FROM backups WHERE schedule_id = ? ORDER BY start_time_ms",
        )
        .bind(schedule_id.to_string())
        .fetch_all(&self.pool)
        .await
        .map_err(|error| database_error("list schedule backups", error))?;
        rows.iter()
            .map(|row| {
                Ok(RetainedBackup {
                    id: parse_uuid(&row.get::<String, _>(0))?,
                    start_ms: row.get(1),
                })
            })
            .collect()
    }
}

fn not_found(schedule_id: Uuid) -> Error {
    Error::NotFound {
        kind: "schedule",
        name: schedule_id.to_string(),
    }
}

fn name_taken(error: Error, name: &Name) -> Error {
    match error {
        Error::AlreadyExists(_) => Error::AlreadyExists(format!(
            "a schedule named {:?} exists already",
            name.as_str()
        )),
        other => other,
    }
}

/// A schedule's settings as columns.
struct Settings {
    cron_expression: Option<String>,
    time_zone: Option<String>,
    interval_ms: Option<i64>,
    backup: String,
    retention: String,
    retry: String,
    validation: Option<String>,
}

impl Settings {
    fn of(schedule: &Schedule) -> Result<Self> {
        let encode = |what: &'static str, json: serde_json::Result<String>| {
            json.map_err(|error| Error::internal(what, error))
        };
        let (cron_expression, time_zone, interval_ms) = match &schedule.trigger {
            Trigger::Cron(cron) => (
                Some(cron.expression().to_string()),
                Some(cron.time_zone().to_string()),
                None,
            ),
            Trigger::Interval(interval) => (
                None,
                None,
                Some(i64::try_from(interval.as_millis()).unwrap_or(i64::MAX)),
            ),
        };
        Ok(Self {
            cron_expression,
            time_zone,
            interval_ms,
            backup: encode(
                "encode schedule backup",
                serde_json::to_string(&schedule.backup),
            )?,
            retention: encode(
                "encode schedule retention",
                serde_json::to_string(&schedule.retention),
            )?,
            retry: encode(
                "encode schedule retry",
                serde_json::to_string(&schedule.retry),
            )?,
            validation: schedule
                .validation
                .map(|validation| {
                    encode(
                        "encode schedule validation",
                        serde_json::to_string(&validation),
                    )
                })
                .transpose()?,
        })
    }
}

/// The scheduler's progress as columns.
struct ProgressColumns {
    pending: Option<String>,
    awaited_run_id: Option<String>,
    awaited_fire_ms: Option<i64>,
    awaited_attempt: Option<i64>,
    retry_at_ms: Option<i64>,
    retry_fire_ms: Option<i64>,
    retry_attempt: Option<i64>,
}

impl ProgressColumns {
    fn of(progress: &FireProgress) -> Result<Self> {
        Ok(Self {
            pending: progress
                .pending
                .map(|pending| serde_json::to_string(&pending))
                .transpose()
                .map_err(|error| Error::internal("encode pending fire", error))?,
            awaited_run_id: progress.awaited.map(|run| run.run_id.to_string()),
            awaited_fire_ms: progress.awaited.map(|run| run.fire_time_ms),
            awaited_attempt: progress.awaited.map(|run| i64::from(run.attempt)),
            retry_at_ms: progress.retry.map(|retry| retry.at_ms),
            retry_fire_ms: progress.retry.map(|retry| retry.fire_time_ms),
            retry_attempt: progress.retry.map(|retry| i64::from(retry.attempt)),
        })
    }
}

fn read_schedule(row: &SqliteRow) -> Result<Schedule> {
    let get = |error| database_error("decode schedule row", error);
    let decode = |what: &'static str, error: serde_json::Error| Error::internal(what, error);
    let optional_uuid = |column: &str| -> Result<Option<Uuid>> {
        row.try_get::<Option<String>, _>(column)
            .map_err(get)?
            .map(|text| parse_uuid(&text))
            .transpose()
    };
    let cron: Option<String> = row.try_get("cron_expression").map_err(get)?;
    let trigger = match cron {
        Some(expression) => {
            let time_zone: Option<String> = row.try_get("time_zone").map_err(get)?;
            Trigger::Cron(Box::new(
                CronTrigger::parse(
                    "catalog schedules.cron_expression",
                    &expression,
                    &time_zone.unwrap_or_default(),
                )
                .map_err(|error| Error::internal("decode schedule trigger", error))?,
            ))
        }
        None => {
            let interval_ms: i64 = row.try_get("interval_ms").map_err(get)?;
            Trigger::Interval(Duration::from_millis(
                u64::try_from(interval_ms).unwrap_or(0),
            ))
        }
    };
    let mut backup: BackupSpec =
        serde_json::from_str(&row.try_get::<String, _>("backup").map_err(get)?)
            .map_err(|error| decode("decode schedule backup", error))?;
    backup.location_name = row
        .try_get::<Option<String>, _>("location_name")
        .map_err(get)?
        .unwrap_or_default();
    let retention: RetentionPolicy =
        serde_json::from_str(&row.try_get::<String, _>("retention").map_err(get)?)
            .map_err(|error| decode("decode schedule retention", error))?;
    let retry: RetryPolicy = serde_json::from_str(&row.try_get::<String, _>("retry").map_err(get)?)
        .map_err(|error| decode("decode schedule retry", error))?;
    let validation: Option<Thoroughness> = row
        .try_get::<Option<String>, _>("validation")
        .map_err(get)?
        .map(|json| serde_json::from_str(&json))
        .transpose()
        .map_err(|error| decode("decode schedule validation", error))?;
    let pending = row
        .try_get::<Option<String>, _>("pending_fire")
        .map_err(get)?
        .map(|json| serde_json::from_str::<PendingFire>(&json))
        .transpose()
        .map_err(|error| decode("decode pending fire", error))?;
    let awaited = match optional_uuid("awaited_run_id")? {
        Some(run_id) => Some(AwaitedRun {
            run_id,
            fire_time_ms: row.try_get("awaited_fire_ms").map_err(get)?,
            attempt: attempt(row.try_get("awaited_attempt").map_err(get)?),
        }),
        None => None,
    };
    let retry_state = match row.try_get::<Option<i64>, _>("retry_at_ms").map_err(get)? {
        Some(at_ms) => Some(PendingRetry {
            at_ms,
            fire_time_ms: row.try_get("retry_fire_ms").map_err(get)?,
            attempt: attempt(row.try_get("retry_attempt").map_err(get)?),
        }),
        None => None,
    };
    let last_run_state = row
        .try_get::<Option<String>, _>("last_run_state")
        .map_err(get)?
        .and_then(|state| RunState::parse(&state));
    Ok(Schedule {
        id: parse_uuid(&row.try_get::<String, _>("id").map_err(get)?)?,
        name: Name::parse(
            "catalog schedules.name",
            &row.try_get::<String, _>("name").map_err(get)?,
        )
        .map_err(|error| Error::internal("decode schedule name", error))?,
        cluster_id: parse_uuid(&row.try_get::<String, _>("cluster_id").map_err(get)?)?,
        cluster_name: row.try_get("cluster_name").map_err(get)?,
        trigger,
        backup,
        retention,
        retry,
        validation,
        paused: row.try_get::<i64, _>("paused").map_err(get)? != 0,
        next_fire_ms: row.try_get("next_fire_ms").map_err(get)?,
        last_fire: read_fire(row)?,
        last_run_id: optional_uuid("last_run_id")?,
        last_run_state,
        last_error: row.try_get("last_error").map_err(get)?,
        progress: FireProgress {
            pending,
            awaited,
            retry: retry_state,
        },
        create_time: from_millis(row.try_get("create_time_ms").map_err(get)?),
        update_time: from_millis(row.try_get("update_time_ms").map_err(get)?),
    })
}

/// The fire in a row's `f_` columns; `None` when they are NULL (no fire).
fn read_fire(row: &SqliteRow) -> Result<Option<ScheduleFire>> {
    let get = |error| database_error("decode schedule fire", error);
    let Some(fire_time_ms) = row
        .try_get::<Option<i64>, _>("f_fire_time_ms")
        .map_err(get)?
    else {
        return Ok(None);
    };
    let text = |column: &str| -> Result<Option<String>> { row.try_get(column).map_err(get) };
    let uuid = |column: &str| -> Result<Option<Uuid>> {
        text(column)?.map(|text| parse_uuid(&text)).transpose()
    };
    let cause = text("f_cause")?.unwrap_or_default();
    let cause = FireCause::parse(&cause)
        .ok_or_else(|| Error::internal("decode fire cause", format!("unknown cause {cause:?}")))?;
    let message = text("f_message")?.unwrap_or_default();
    let outcome = match text("f_outcome")?.unwrap_or_default().as_str() {
        "started" => FireOutcome::Started {
            run_id: uuid("f_run_id")?.ok_or_else(|| {
                Error::internal("decode schedule fire", "a started fire without its run")
            })?,
        },
        "skipped" => FireOutcome::Skipped {
            active_run_id: uuid("f_active_run_id")?,
            message,
        },
        _ => FireOutcome::Failed { message },
    };
    Ok(Some(ScheduleFire {
        fire: PendingFire {
            fire_time_ms,
            attempt: attempt(row.try_get("f_attempt").map_err(get)?),
            cause,
            missed: u64::try_from(row.try_get::<i64, _>("f_missed").map_err(get)?).unwrap_or(0),
        },
        outcome,
        record_time_ms: row.try_get("f_record_time_ms").map_err(get)?,
        follow_up: match row
            .try_get::<Option<i64>, _>("f_follow_up_ms")
            .map_err(get)?
        {
            None => None,
            Some(time_ms) => {
                let deleted: Vec<String> = serde_json::from_str(
                    &text("f_deleted_backups")?.unwrap_or_else(|| "[]".to_string()),
                )
                .map_err(|error| Error::internal("decode deleted backups", error))?;
                Some(FollowUp {
                    time_ms,
                    deleted_backups: deleted
                        .iter()
                        .map(|id| parse_uuid(id))
                        .collect::<Result<_>>()?,
                })
            }
        },
    }))
}

fn attempt(value: i64) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}
