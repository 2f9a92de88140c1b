-- API tokens: only a hash of each secret is kept. Revoking deletes the row.
CREATE TABLE api_tokens (
    id             TEXT    PRIMARY KEY,
    name           TEXT    NOT NULL UNIQUE,
    secret_hash    TEXT    NOT NULL,
    scope          TEXT    NOT NULL CHECK (scope IN ('read', 'operate', 'admin')),
    create_time_ms INTEGER NOT NULL,
    expire_time_ms INTEGER,
    created_by     TEXT    NOT NULL DEFAULT '',
    last_use_ms    INTEGER
) STRICT;

-- Who started each run (`token:<name>`, `schedule:<name>`, `anonymous`); empty for runs
-- recorded before.
ALTER TABLE runs ADD COLUMN started_by TEXT NOT NULL DEFAULT '';
