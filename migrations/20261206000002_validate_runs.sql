-- Runs of new kinds: `validate`, a check of what a location holds for a cluster, whose result
-- (a JSON ValidationResult) is kept with the run; and `purge`, kept for the purge of objects
-- no backup refers to. SQLite cannot change a CHECK constraint in
-- place, so `runs` (and `run_nodes`, whose foreign key follows a renamed table) are rebuilt,
-- rows and indexes included. Foreign keys stay on: the old tables are dropped children first,
-- when nothing refers to them any more.
ALTER TABLE run_nodes RENAME TO run_nodes_old;
ALTER TABLE runs RENAME TO runs_old;

CREATE TABLE runs (
    id              TEXT    NOT NULL PRIMARY KEY,  -- UUID
    cluster_id      TEXT    NOT NULL REFERENCES clusters (id) ON DELETE CASCADE,
    kind            TEXT    NOT NULL CHECK (kind IN ('backup', 'restore', 'validate', 'purge')),
    state           TEXT    NOT NULL
        CHECK (state IN ('queued', 'running', 'canceling', 'succeeded', 'failed', 'canceled')),
    create_time_ms  INTEGER NOT NULL,
    start_time_ms   INTEGER,
    finish_time_ms  INTEGER,
    error           TEXT,
    spec            TEXT    NOT NULL DEFAULT '{}',
    dry_run         INTEGER NOT NULL DEFAULT 0,
    idempotency_key TEXT,
    location_id     TEXT    REFERENCES locations (id),
    schedule_id     TEXT,
    backup_id       TEXT,
    update_time_ms  INTEGER NOT NULL DEFAULT 0,
    result          TEXT                           -- JSON; validate runs only
) STRICT;

INSERT INTO runs (id, cluster_id, kind, state, create_time_ms, start_time_ms, finish_time_ms,
                  error, spec, dry_run, idempotency_key, location_id, schedule_id, backup_id,
                  update_time_ms)
    SELECT id, cluster_id, kind, state, create_time_ms, start_time_ms, finish_time_ms, error,
           spec, dry_run, idempotency_key, location_id, schedule_id, backup_id, update_time_ms
    FROM runs_old;

CREATE TABLE run_nodes (
    run_id            TEXT    NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    node_id           TEXT    NOT NULL,
    source_node_id    TEXT    NOT NULL DEFAULT '',
    position          INTEGER NOT NULL,
    phase             TEXT    NOT NULL,
    files_total       INTEGER NOT NULL DEFAULT 0,
    files_done        INTEGER NOT NULL DEFAULT 0,
    files_skipped     INTEGER NOT NULL DEFAULT 0,
    bytes_total       INTEGER NOT NULL DEFAULT 0,
    bytes_done        INTEGER NOT NULL DEFAULT 0,
    bytes_skipped     INTEGER NOT NULL DEFAULT 0,
    bytes_uploaded    INTEGER NOT NULL DEFAULT 0,
    objects_uploaded  INTEGER NOT NULL DEFAULT 0,
    rate_bytes_per_s  INTEGER NOT NULL DEFAULT 0,
    eta_ms            INTEGER,
    last_error        TEXT    NOT NULL DEFAULT '',
    PRIMARY KEY (run_id, node_id)
) STRICT;

INSERT INTO run_nodes SELECT * FROM run_nodes_old;

DROP TABLE run_nodes_old;
DROP TABLE runs_old;

CREATE INDEX runs_by_cluster_state ON runs (cluster_id, state);
CREATE UNIQUE INDEX runs_by_idempotency_key ON runs (cluster_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX runs_by_create_time ON runs (create_time_ms, id);
CREATE INDEX runs_by_schedule ON runs (schedule_id, create_time_ms) WHERE schedule_id IS NOT NULL;

-- The objects a validate run listed, while it runs: a location's listing can be far larger than
-- the server's memory should hold. Rows go when the run ends.
CREATE TABLE validation_objects (
    run_id     TEXT    NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    hash       TEXT    NOT NULL,
    size       INTEGER NOT NULL,
    referenced INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, hash)
) STRICT, WITHOUT ROWID;

-- Where each (cluster, location) is with purges: `generation` counts the purge deletion windows
-- (backups key their agents' memory of the location by it, so that memory never outlives a
-- deletion), and `deleting_run_id` names the purge deleting now, while no backup of the cluster
-- at the location may run (a backup that starts waits; a lock of a run that ended is no lock).
CREATE TABLE purge_state (
    cluster_id      TEXT    NOT NULL REFERENCES clusters (id) ON DELETE CASCADE,
    location_id     TEXT    NOT NULL REFERENCES locations (id) ON DELETE CASCADE,
    generation      INTEGER NOT NULL DEFAULT 0,
    deleting_run_id TEXT,
    PRIMARY KEY (cluster_id, location_id)
) STRICT;
