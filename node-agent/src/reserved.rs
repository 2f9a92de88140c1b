//! The names the agent reserves for itself, on the node's data paths and in its state folder.
//!
//! Snapshots, restores and the walk of live files must agree on them (a walk that did not skip
//! the snapshot folder would back up every snapshot again; a restore that wrote into the staging
//! folder would clobber its own downloads), so they are named here once, and `snapshot/`,
//! `restore/` and the journal need not import each other for them.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use uuid::Uuid;

/// Folder, at the root of each data path, holding the snapshots (one subfolder per tag).
pub const SNAPSHOTS_FOLDER: &str = ".coffer-snapshots";

/// Folder, at the root of each data path, where restores stage verified downloads (one
/// subfolder per backup) before placing them.
pub const STAGING_FOLDER: &str = ".coffer-restore";

/// Ending, after the tag, of the record of the files an incremental snapshot left unlinked.
pub const UNLINKED_RECORD_SUFFIX: &str = ".unlinked.json";

/// Ending, after the tag, of a `dir` snapshot's file list (see `snapshot::list`).
pub const FILE_LIST_SUFFIX: &str = ".files";

/// Whether `name`, the first component of a path below a data path, is one of the agent's own
/// folders: never backed up, never restored into.
pub fn is_reserved(name: &OsStr) -> bool {
    name == SNAPSHOTS_FOLDER || name == STAGING_FOLDER
}

/// Folder of the agent's state folder holding the records of snapshots that survive a restart.
pub fn snapshot_records(state_dir: &Path) -> PathBuf {
    state_dir.join("snapshots")
}

/// The folder where a restore of `backup_id` stages files for `data_path`.
pub fn staging_folder(data_path: &Path, backup_id: Uuid) -> PathBuf {
    data_path.join(STAGING_FOLDER).join(backup_id.to_string())
}
