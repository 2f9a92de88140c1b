//! The node's stable identity.
//!
//! Backups are filed under the node id, so it must not change when the agent restarts, is
//! upgraded, or moves to another address. It is created once, on the first start, and kept in
//! the state directory as `node-id`. A file that exists but cannot be read as an id stops the
//! agent: replacing it silently would orphan the node's backups.

use std::io::Write;
use std::path::{Path, PathBuf};

use uuid::Uuid;

/// Name of the file in the state directory that holds the node id.
pub const NODE_ID_FILE: &str = "node-id";

/// Why the node id could not be established.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Reading, creating or writing the state directory or the id file failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The id file exists but does not hold a UUID.
    #[error(
        "{path} does not hold a node id ({reason}); restore it or remove it to start as a new node"
    )]
    Corrupt {
        /// The id file.
        path: PathBuf,
        /// What is wrong with its content.
        reason: String,
    },
}

/// Returns the node id kept in `state_dir`, creating the directory and a new id on first use.
///
/// The new id is written to a temporary file, synced and renamed into place, so a crash never
/// leaves a half-written id behind.
pub fn load_or_create_node_id(state_dir: &Path) -> Result<Uuid, IdentityError> {
    let io = |action, path: &Path| {
        let path = path.to_path_buf();
        move |source| IdentityError::Io {
            action,
            path,
            source,
        }
    };
    std::fs::create_dir_all(state_dir).map_err(io("create state directory", state_dir))?;
    let path = state_dir.join(NODE_ID_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => Uuid::parse_str(text.trim()).map_err(|error| IdentityError::Corrupt {
            path: path.clone(),
            reason: error.to_string(),
        }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let id = Uuid::new_v4();
            let temporary = state_dir.join(format!("{NODE_ID_FILE}.tmp"));
            let mut file = std::fs::File::create(&temporary).map_err(io("create", &temporary))?;
            writeln!(file, "{id}").map_err(io("write", &temporary))?;
            file.sync_all().map_err(io("sync", &temporary))?;
            drop(file);
            std::fs::rename(&temporary, &path).map_err(io("rename into place", &path))?;
            std::fs::File::open(state_dir)
                .and_then(|dir| dir.sync_all())
                .map_err(io("sync state directory", state_dir))?;
            tracing::info!(node_id = %id, path = %path.display(), "created node id");
            Ok(id)
        }
        Err(error) => Err(io("read", &path)(error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_survives_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state");
        let first = load_or_create_node_id(&state).expect("create");
        let second = load_or_create_node_id(&state).expect("load");
        assert_eq!(first, second);
    }

    #[test]
    fn a_corrupt_id_file_is_refused_not_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(NODE_ID_FILE), "not-a-uuid").expect("write");
        let error = load_or_create_node_id(dir.path()).expect_err("corrupt");
        assert!(matches!(error, IdentityError::Corrupt { .. }), "{error}");
        let kept = std::fs::read_to_string(dir.path().join(NODE_ID_FILE)).expect("read");
        assert_eq!(kept, "not-a-uuid");
    }
}
