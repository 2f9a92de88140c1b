//! A snapshot of a folder with many subfolders under a low descriptor limit. A test binary of
//! its own: the limit it lowers is the whole process's.

use std::fs;
use std::path::PathBuf;

mod common;

use common::snapshot_files;

use coffer_agent::config::SnapshotConfig;
use coffer_agent::snapshot::Snapshotter;
use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

#[tokio::test]
async fn a_folder_of_thousands_of_subfolders_is_walked_within_a_low_descriptor_limit() {
    let root = tempfile::tempdir().expect("temp dir");
    let data_path = root.path().join("data");
    // 3000 subfolders of one folder, a file in each: found at once, they would need two
    // descriptors each if they were opened when found (a million-file node ran out that way).
    for index in 0..3000 {
        let folder = data_path.join(format!("tables/t{index}"));
        fs::create_dir_all(&folder).expect("create folder");
        fs::write(folder.join("md-1-big-Data.db"), index.to_string()).expect("write file");
    }
    let limit = getrlimit(Resource::Nofile);
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(512),
            maximum: limit.maximum,
        },
    )
    .expect("lower the descriptor limit");
    let snapshotter = Snapshotter::new(&common::agent_config(
        vec![data_path.clone()],
        root.path().join("state"),
        SnapshotConfig::Dir {
            pre_hook: None,
            post_hook: None,
        },
    ));
    let snapshot = snapshotter.create("many-folders").await;
    setrlimit(Resource::Nofile, limit).expect("restore the descriptor limit");
    let snapshot = snapshot.expect("snapshot within 512 descriptors");
    assert_eq!(snapshot.files.len(), 3000);
    let linked: Vec<PathBuf> = snapshot_files(&snapshot)
        .iter()
        .map(|file| file.snapshot_path.clone())
        .collect();
    assert!(
        linked.iter().all(|path| path.is_file()),
        "every file linked"
    );
    assert!(snapshotter.delete("many-folders").await.expect("delete"));
}
