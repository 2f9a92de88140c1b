-- Deep validation and scheduled validation.

-- Why a listed object is damaged (a stored size no content of its file's size can have, or
-- content that does not decode to what its name promises); NULL while none is known. And
-- whether this run chose it for verification.
ALTER TABLE validation_objects ADD COLUMN damage TEXT;
ALTER TABLE validation_objects ADD COLUMN to_verify INTEGER NOT NULL DEFAULT 0;

-- When a deep validation last found each object of a cluster at a location intact: sampled
-- validations verify those verified longest ago (or never) first, so that repeated ones cover
-- every object. Rows of objects a validation no longer lists go when it ends.
CREATE TABLE verified_objects (
    cluster_id     TEXT    NOT NULL REFERENCES clusters (id) ON DELETE CASCADE,
    location_id    TEXT    NOT NULL REFERENCES locations (id) ON DELETE CASCADE,
    hash           TEXT    NOT NULL,
    verify_time_ms INTEGER NOT NULL,
    PRIMARY KEY (cluster_id, location_id, hash)
) STRICT, WITHOUT ROWID;

-- The validation a schedule starts after each of its backups (JSON); NULL for none.
ALTER TABLE schedules ADD COLUMN validation TEXT;
