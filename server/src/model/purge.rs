//! Purges: what they are asked and what they find and free.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Parameters of a purge run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurgeSpec {
    pub location_id: Uuid,
    /// Location name when the run started.
    pub location_name: String,
}

/// What a purge run found and freed so far.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PurgeResult {
    pub objects_listed: u64,
    pub objects_unreferenced: u64,
    pub bytes_unreferenced: u64,
    /// Marked objects a backup committed since refers to: kept.
    pub objects_reclaimed: u64,
    pub objects_deleted: u64,
    pub bytes_freed: u64,
    /// Times it waited for active backups before deleting.
    pub waits: u64,
    /// Backup folders without a commit manifest it cleared (or, dry, would clear).
    pub uncommitted_folders: u64,
    /// Temporary objects left by interrupted writes it removed (or, dry, would remove).
    pub temporary_objects_deleted: u64,
    pub temporary_bytes_freed: u64,
}
