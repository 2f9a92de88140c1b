//! What a validate run finds: per backup, whether it restores, and the objects nothing needs.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Files named per backup whose content is missing, at most.
pub const MAX_AFFECTED_FILES: usize = 20;

/// Parameters of a validate run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidateSpec {
    pub location_id: Uuid,
    /// Location name when the run started.
    pub location_name: String,
}

/// What a validate run found so far.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ValidationResult {
    pub objects_listed: u64,
    pub objects_referenced: u64,
    pub objects_missing: u64,
    pub objects_orphaned: u64,
    pub orphaned_bytes: u64,
    /// Oldest first.
    pub backups: Vec<BackupValidation>,
}

/// Whether one backup restores.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupValidation {
    pub backup_id: Uuid,
    pub restorable: bool,
    pub files_checked: u64,
    pub missing_objects: u64,
    /// `<node id>:<path> (object <hash>)`, at most [`MAX_AFFECTED_FILES`].
    pub affected_files: Vec<String>,
    /// Why a node manifest could not be read.
    pub error: String,
}

impl ValidationResult {
    /// Whether every backup checked restores.
    pub fn all_restorable(&self) -> bool {
        self.backups.iter().all(|backup| backup.restorable)
    }
}
