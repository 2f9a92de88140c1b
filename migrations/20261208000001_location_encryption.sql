-- The name of the agents' key that seals a location's objects and manifests; '' for a location
-- in the clear.
ALTER TABLE locations ADD COLUMN encryption_key TEXT NOT NULL DEFAULT '';
