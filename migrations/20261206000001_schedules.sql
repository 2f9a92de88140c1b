-- Schedules, the bookkeeping of their scheduler, and every fire they made.
--
-- A schedule outlives its cluster and its location (no foreign keys to them): a fire of a
-- schedule whose cluster or location was deleted fails, naming what is missing.
CREATE TABLE schedules (
    id              TEXT    NOT NULL PRIMARY KEY,  -- UUID
    name            TEXT    NOT NULL UNIQUE,
    cluster_id      TEXT    NOT NULL,
    -- Exactly one trigger: a cron expression with its time zone, or an interval.
    cron_expression TEXT,
    time_zone       TEXT,
    interval_ms     INTEGER,
    backup          TEXT    NOT NULL,              -- JSON BackupSpec (location by id)
    retention       TEXT    NOT NULL DEFAULT '{}', -- JSON RetentionPolicy
    retry           TEXT    NOT NULL DEFAULT '{}', -- JSON RetryPolicy
    paused          INTEGER NOT NULL DEFAULT 0,
    next_fire_ms    INTEGER,                       -- NULL while paused
    last_fire_ms    INTEGER,
    last_run_id     TEXT,
    last_error      TEXT    NOT NULL DEFAULT '',
    -- The scheduler's state, so a restarted server goes on where the last one stopped:
    -- a fire chosen and not yet recorded (its run may or may not exist: the idempotency key
    -- tells) ...
    pending_fire    TEXT,                          -- JSON {fire_time_ms, attempt, cause, missed}
    -- ... the run of the last fire whose end was not handled yet (retention or a retry) ...
    awaited_run_id  TEXT,
    awaited_fire_ms INTEGER,
    awaited_attempt INTEGER,
    -- ... and the retry of a failed run, due at retry_at_ms.
    retry_at_ms     INTEGER,
    retry_fire_ms   INTEGER,
    retry_attempt   INTEGER,
    create_time_ms  INTEGER NOT NULL,
    update_time_ms  INTEGER NOT NULL,
    CHECK ((cron_expression IS NULL) <> (interval_ms IS NULL))
) STRICT;

CREATE INDEX schedules_by_cluster ON schedules (cluster_id, name);

-- Every fire of a schedule: what it started, or why it started nothing. (schedule, fire time,
-- attempt) is the fire's identity, as in the run's idempotency key.
CREATE TABLE schedule_fires (
    schedule_id    TEXT    NOT NULL REFERENCES schedules (id) ON DELETE CASCADE,
    fire_time_ms   INTEGER NOT NULL,
    attempt        INTEGER NOT NULL,
    cause          TEXT    NOT NULL CHECK (cause IN ('trigger', 'retry', 'run_now')),
    missed         INTEGER NOT NULL DEFAULT 0,
    outcome        TEXT    NOT NULL CHECK (outcome IN ('started', 'skipped', 'failed')),
    run_id         TEXT,
    active_run_id  TEXT,
    message        TEXT    NOT NULL DEFAULT '',
    record_time_ms INTEGER NOT NULL,
    -- When the end of the fire's run was handled (retention, a retry), and what retention
    -- deleted then (JSON array of backup ids).
    follow_up_ms   INTEGER,
    deleted_backups TEXT   NOT NULL DEFAULT '[]',
    PRIMARY KEY (schedule_id, fire_time_ms, attempt)
) STRICT;

CREATE INDEX runs_by_schedule ON runs (schedule_id, create_time_ms) WHERE schedule_id IS NOT NULL;
CREATE INDEX backups_by_schedule ON backups (schedule_id, start_time_ms)
    WHERE schedule_id IS NOT NULL;
