-- How agents compress the objects they store in a location: `none` or `zstd:<level>` (see
-- coffer_format::Compression). Locations made before the setting existed compress at zstd level
-- 1, as every agent did then.
ALTER TABLE locations ADD COLUMN compression TEXT NOT NULL DEFAULT 'zstd:1';
