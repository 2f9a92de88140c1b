//! What the agent's integration tests share.

use std::path::PathBuf;

use coffer_agent::config::{AgentConfig, SnapshotConfig, StoragePolicy};

/// An agent's configuration on loopback for these data paths and state folder, with the
/// `snapshot` provider; its locations may live in the system's temporary folder, as the tests'
/// do.
pub fn agent_config(
    data_paths: Vec<PathBuf>,
    state_dir: PathBuf,
    snapshot: SnapshotConfig,
) -> AgentConfig {
    AgentConfig {
        listen: "127.0.0.1:0".parse().expect("address"),
        data_paths,
        state_dir,
        restore_hooks: Default::default(),
        restore_keep_free: 0,
        storage: StoragePolicy {
            roots: vec![std::env::temp_dir()],
            ..Default::default()
        },
        tls: None,
        metrics_listen: None,
        snapshot,
    }
}

/// The snapshot's files, sorted by data path index, then live path.
#[allow(dead_code)] // Not every test binary takes snapshots.
pub fn snapshot_files(
    snapshot: &coffer_agent::snapshot::Snapshot,
) -> Vec<coffer_agent::snapshot::SnapshotFile> {
    snapshot
        .files
        .to_vec()
        .expect("read the snapshot's file list")
}
