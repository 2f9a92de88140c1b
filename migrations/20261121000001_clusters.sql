-- Clusters, their nodes, and the run records that guard cluster changes.
-- Times are Unix epoch milliseconds (UTC). JSON columns hold small documents that are only ever
-- read and written whole.

CREATE TABLE clusters (
    id             TEXT    NOT NULL PRIMARY KEY,  -- UUID
    name           TEXT    NOT NULL UNIQUE,
    labels         TEXT    NOT NULL DEFAULT '{}', -- JSON object of string -> string
    create_time_ms INTEGER NOT NULL,
    update_time_ms INTEGER NOT NULL
) STRICT;

-- A node belongs to exactly one cluster: its agent-reported id and its address are unique
-- across the whole catalog, so two clusters can never back up the same data under two names.
CREATE TABLE nodes (
    id            TEXT    NOT NULL PRIMARY KEY,   -- node id reported by the agent (UUID)
    cluster_id    TEXT    NOT NULL REFERENCES clusters (id) ON DELETE CASCADE,
    address       TEXT    NOT NULL UNIQUE,        -- normalized http://host:port
    datacenter    TEXT    NOT NULL DEFAULT '',
    rack          TEXT    NOT NULL DEFAULT '',
    hostname      TEXT    NOT NULL,
    data_paths    TEXT    NOT NULL,               -- JSON array of {path, free_bytes, total_bytes}
    agent_version TEXT    NOT NULL,
    add_time_ms   INTEGER NOT NULL,
    info_time_ms  INTEGER NOT NULL
) STRICT;

CREATE INDEX nodes_by_cluster ON nodes (cluster_id);

-- Backup and restore runs. A run in state queued, running or canceling is active: the cluster it
-- belongs to cannot be deleted and its node set cannot change until the run ends.
CREATE TABLE runs (
    id             TEXT    NOT NULL PRIMARY KEY,  -- UUID
    cluster_id     TEXT    NOT NULL REFERENCES clusters (id) ON DELETE CASCADE,
    kind           TEXT    NOT NULL CHECK (kind IN ('backup', 'restore')),
    state          TEXT    NOT NULL
        CHECK (state IN ('queued', 'running', 'canceling', 'succeeded', 'failed', 'canceled')),
    create_time_ms INTEGER NOT NULL,
    start_time_ms  INTEGER,
    finish_time_ms INTEGER,
    error          TEXT
) STRICT;

CREATE INDEX runs_by_cluster_state ON runs (cluster_id, state);
