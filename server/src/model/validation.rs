//! What a validate run finds: per backup, whether it restores, and the objects nothing needs.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Files named per backup whose content is missing or damaged, at most.
pub const MAX_AFFECTED_FILES: usize = 20;

/// How thoroughly a validation checks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Depth {
    /// Listing against manifests: missing objects, impossible sizes, unreadable manifests.
    #[default]
    Quick,
    /// Quick, and objects downloaded and their BLAKE3 verified.
    Deep,
}

/// How much a validation checks: its depth and, deep, the share of objects it verifies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Thoroughness {
    pub depth: Depth,
    /// Deep: percent of the referenced objects verified, 1 to 100 (those verified longest ago
    /// first). Quick: 0.
    pub sample_percent: u32,
}

impl Thoroughness {
    /// Checks a requested depth and sample (0 meaning 100 for a deep validation); the error
    /// names the field.
    pub fn new(depth: Depth, sample_percent: u32) -> Result<Self, String> {
        match (depth, sample_percent) {
            (_, 101..) => Err(format!("sample_percent: {sample_percent} is more than 100")),
            (Depth::Quick, _) => Ok(Self::default()),
            (Depth::Deep, 0) => Ok(Self {
                depth,
                sample_percent: 100,
            }),
            (Depth::Deep, percent) => Ok(Self {
                depth,
                sample_percent: percent,
            }),
        }
    }

    /// How many of `referenced` objects a validation of this thoroughness verifies: none for
    /// quick, at least one for deep (so that a small location is covered too).
    pub fn objects_to_verify(self, referenced: u64) -> u64 {
        match self.depth {
            Depth::Quick => 0,
            Depth::Deep if referenced == 0 => 0,
            Depth::Deep => (referenced.saturating_mul(u64::from(self.sample_percent)))
                .div_ceil(100)
                .max(1),
        }
    }
}

/// Parameters of a validate run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidateSpec {
    pub location_id: Uuid,
    /// Location name when the run started.
    pub location_name: String,
    /// Absent in runs recorded before deep validation existed: quick.
    #[serde(default)]
    pub thoroughness: Thoroughness,
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
    pub objects_damaged: u64,
    pub objects_to_verify: u64,
    pub objects_verified: u64,
    pub bytes_verified: u64,
    pub objects_never_verified: u64,
}

/// Whether one backup restores.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupValidation {
    pub backup_id: Uuid,
    pub restorable: bool,
    pub files_checked: u64,
    pub missing_objects: u64,
    /// `<node id>:<path> (object <hash> missing)` or `(object <hash> damaged: <why>)`, at
    /// most [`MAX_AFFECTED_FILES`].
    pub affected_files: Vec<String>,
    /// Why a node manifest could not be read.
    pub error: String,
    #[serde(default)]
    pub damaged_objects: u64,
}

impl ValidationResult {
    /// Whether every backup checked restores.
    pub fn all_restorable(&self) -> bool {
        self.backups.iter().all(|backup| backup.restorable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampled_validations_verify_a_share_and_at_least_one_object() {
        let deep = |percent| Thoroughness::new(Depth::Deep, percent).expect("valid");
        assert_eq!(deep(0).sample_percent, 100);
        assert_eq!(deep(0).objects_to_verify(1234), 1234);
        assert_eq!(deep(10).objects_to_verify(1234), 124);
        assert_eq!(deep(1).objects_to_verify(5), 1);
        assert_eq!(deep(1).objects_to_verify(0), 0);
        assert_eq!(
            Thoroughness::new(Depth::Quick, 30)
                .expect("quick")
                .objects_to_verify(100),
            0
        );
        assert!(Thoroughness::new(Depth::Deep, 101).is_err());
        assert!(Thoroughness::new(Depth::Quick, 101).is_err());
    }
}
