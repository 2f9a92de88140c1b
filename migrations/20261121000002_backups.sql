-- Storage locations, run details and progress, and committed backups.

CREATE TABLE locations (
    id             TEXT    NOT NULL PRIMARY KEY,  -- UUID
    name           TEXT    NOT NULL UNIQUE,
    kind           TEXT    NOT NULL CHECK (kind IN ('fs', 's3', 'azblob', 'gcs')),
    options        TEXT    NOT NULL,              -- JSON; secrets only by reference, never values
    create_time_ms INTEGER NOT NULL,
    update_time_ms INTEGER NOT NULL
) STRICT;

-- What a run was asked to do and what it produced. `spec` is the canonical JSON of the request's
-- parameters: a retried request with the same idempotency key must match it.
ALTER TABLE runs ADD COLUMN spec TEXT NOT NULL DEFAULT '{}';
ALTER TABLE runs ADD COLUMN dry_run INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN idempotency_key TEXT;
ALTER TABLE runs ADD COLUMN location_id TEXT REFERENCES locations (id);
ALTER TABLE runs ADD COLUMN schedule_id TEXT;
-- The backup this run writes (backup runs) or reads (restore runs); set before any node works,
-- so a restarted server can tell whether a backup run got as far as its commit point.
ALTER TABLE runs ADD COLUMN backup_id TEXT;
ALTER TABLE runs ADD COLUMN update_time_ms INTEGER NOT NULL DEFAULT 0;

CREATE UNIQUE INDEX runs_by_idempotency_key ON runs (cluster_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX runs_by_create_time ON runs (create_time_ms, id);

-- Per-node progress of a run; counters are refreshed about once a second while it runs.
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

-- Committed backups: a row exists only once the backup's own manifest (the commit point) is in
-- storage. Deleting a backup removes its row after removing the manifest.
CREATE TABLE backups (
    id               TEXT    NOT NULL PRIMARY KEY,  -- UUID
    cluster_id       TEXT    NOT NULL REFERENCES clusters (id) ON DELETE CASCADE,
    location_id      TEXT    NOT NULL REFERENCES locations (id),
    kind             TEXT    NOT NULL CHECK (kind IN ('full', 'incremental')),
    parent_backup_id TEXT,
    filter           TEXT    NOT NULL DEFAULT '{}',  -- JSON {include, exclude}
    labels           TEXT    NOT NULL DEFAULT '{}',
    run_id           TEXT,
    schedule_id      TEXT,
    start_time_ms    INTEGER NOT NULL,
    commit_time_ms   INTEGER NOT NULL
) STRICT;

CREATE INDEX backups_by_cluster_time ON backups (cluster_id, start_time_ms);

CREATE TABLE backup_nodes (
    backup_id        TEXT    NOT NULL REFERENCES backups (id) ON DELETE CASCADE,
    node_id          TEXT    NOT NULL,
    position         INTEGER NOT NULL,
    hostname         TEXT    NOT NULL,
    datacenter       TEXT    NOT NULL,
    rack             TEXT    NOT NULL,
    manifest_path    TEXT    NOT NULL,
    file_count       INTEGER NOT NULL,
    total_bytes      INTEGER NOT NULL,
    uploaded_bytes   INTEGER NOT NULL,
    uploaded_objects INTEGER NOT NULL,
    PRIMARY KEY (backup_id, node_id)
) STRICT;
