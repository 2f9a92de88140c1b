//! Walking folders without following symbolic links, and describing the regular files found.
//!
//! All functions here block: callers run them on `spawn_blocking`.

use std::fs::{self, FileType, Metadata};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::{SnapshotError, SnapshotFile};
use crate::reserved::is_reserved;

/// The regular files under `root`, as paths relative to it, sorted.
///
/// Never follows symbolic links (they, sockets, fifos and devices are logged and skipped) and
/// skips the agent's own folders directly under `root`: `.coffer-snapshots` (snapshots) and
/// `.coffer-restore` (restores being staged). A folder or file that disappears during the
/// walk is skipped: databases delete files while they run. Fails when `root` or a folder cannot
/// be read.
pub(crate) fn regular_files(root: &Path) -> Result<Vec<PathBuf>, SnapshotError> {
    let mut files = Vec::new();
    let mut folders = vec![PathBuf::new()];
    while let Some(relative_folder) = folders.pop() {
        let folder = root.join(&relative_folder);
        let at_root = relative_folder.as_os_str().is_empty();
        let entries = match fs::read_dir(&folder) {
            Ok(entries) => entries,
            Err(error) if error.kind() == io::ErrorKind::NotFound && !at_root => continue,
            Err(source) => return Err(SnapshotError::file("read folder", folder, source)),
        };
        for entry in entries {
            let entry =
                entry.map_err(|source| SnapshotError::file("read folder", &folder, source))?;
            let name = entry.file_name();
            if at_root && is_reserved(&name) {
                continue;
            }
            let relative = relative_folder.join(&name);
            // The entry's own type (d_type or lstat): a symbolic link is reported as one.
            let file_type = match entry.file_type() {
                Ok(file_type) => file_type,
                Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => {
                    return Err(SnapshotError::file(
                        "read file type",
                        root.join(&relative),
                        source,
                    ));
                }
            };
            if file_type.is_dir() {
                folders.push(relative);
            } else if file_type.is_file() {
                files.push(relative);
            } else {
                tracing::warn!(
                    path = %root.join(&relative).display(),
                    kind = kind_name(file_type),
                    "skip a file that is not a regular file"
                );
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Describes the file at `snapshot_path`; `None` when it is gone or not a regular file.
pub(crate) fn describe(
    data_path_index: usize,
    live_path: PathBuf,
    snapshot_path: PathBuf,
) -> Result<Option<SnapshotFile>, SnapshotError> {
    let metadata = match fs::symlink_metadata(&snapshot_path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(SnapshotError::file("read metadata", snapshot_path, source)),
    };
    if !metadata.file_type().is_file() {
        tracing::warn!(
            path = %snapshot_path.display(),
            kind = kind_name(metadata.file_type()),
            "skip a file that is not a regular file"
        );
        return Ok(None);
    }
    Ok(Some(from_metadata(
        data_path_index,
        live_path,
        snapshot_path,
        &metadata,
    )))
}

/// Like [`describe`], but a missing file is an error: the snapshot listed it.
pub(crate) fn describe_listed(
    data_path_index: usize,
    live_path: PathBuf,
    snapshot_path: PathBuf,
) -> Result<SnapshotFile, SnapshotError> {
    let shown = snapshot_path.clone();
    describe(data_path_index, live_path, snapshot_path)?.ok_or_else(|| {
        SnapshotError::file(
            "read snapshot file",
            shown,
            io::Error::new(
                io::ErrorKind::NotFound,
                "listed in the snapshot but missing or no longer a regular file",
            ),
        )
    })
}

pub(crate) fn from_metadata(
    data_path_index: usize,
    live_path: PathBuf,
    snapshot_path: PathBuf,
    metadata: &Metadata,
) -> SnapshotFile {
    SnapshotFile {
        data_path_index,
        live_path,
        snapshot_path,
        size: metadata.len(),
        mode: metadata.mode() & 0o7777,
        mtime_ns: metadata
            .mtime()
            .saturating_mul(1_000_000_000)
            .saturating_add(metadata.mtime_nsec()),
        inode: metadata.ino(),
        stored_hash: None,
    }
}

/// Every regular file of every data path, as it is now (`snapshot_path == live_path`).
pub(crate) fn live_files(data_paths: &[PathBuf]) -> Result<Vec<SnapshotFile>, SnapshotError> {
    live_files_matching(data_paths, |_| true)
}

/// The regular files of the data paths whose path relative to their data path passes `keep`.
pub(crate) fn live_files_matching(
    data_paths: &[PathBuf],
    keep: impl Fn(&Path) -> bool,
) -> Result<Vec<SnapshotFile>, SnapshotError> {
    let mut files = Vec::new();
    for (index, data_path) in data_paths.iter().enumerate() {
        for relative in regular_files(data_path)? {
            if !keep(&relative) {
                continue;
            }
            let path = data_path.join(&relative);
            if let Some(file) = describe(index, path.clone(), path)? {
                files.push(file);
            }
        }
    }
    Ok(files)
}

/// Whether `path` is a folder (not a symbolic link to one); `false` when it does not exist.
pub(crate) fn is_folder(path: &Path) -> Result<bool, SnapshotError> {
    match fs::symlink_metadata(path) {
        Ok(metadata) => Ok(metadata.is_dir()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(SnapshotError::file("read metadata", path, source)),
    }
}

fn kind_name(file_type: FileType) -> &'static str {
    if file_type.is_symlink() {
        "symbolic link"
    } else if file_type.is_socket() {
        "socket"
    } else if file_type.is_fifo() {
        "fifo"
    } else if file_type.is_block_device() || file_type.is_char_device() {
        "device"
    } else {
        "other"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reserved::{SNAPSHOTS_FOLDER, STAGING_FOLDER};

    #[test]
    fn walks_nested_folders_skipping_links_and_the_snapshot_folder() {
        let root = tempfile::tempdir().expect("temp dir");
        let root = root.path();
        fs::create_dir_all(root.join("a/b")).expect("mkdir");
        fs::create_dir_all(root.join(SNAPSHOTS_FOLDER).join("t1")).expect("mkdir");
        fs::write(root.join(SNAPSHOTS_FOLDER).join("t1/x"), b"x").expect("write");
        fs::create_dir_all(root.join("a/.coffer-snapshots")).expect("mkdir");
        fs::write(root.join("a/.coffer-snapshots/kept"), b"").expect("write");
        fs::write(root.join("top"), b"1").expect("write");
        fs::write(root.join("a/b/deep"), b"2").expect("write");
        std::os::unix::fs::symlink(root.join("top"), root.join("a/link")).expect("symlink");
        std::os::unix::fs::symlink(root.join("a"), root.join("dirlink")).expect("symlink");
        let files = regular_files(root).expect("walk");
        assert_eq!(
            files,
            vec![
                PathBuf::from("a/.coffer-snapshots/kept"),
                PathBuf::from("a/b/deep"),
                PathBuf::from("top"),
            ]
        );
    }

    #[test]
    fn skips_the_restore_staging_folder_at_the_root_only() {
        let root = tempfile::tempdir().expect("temp dir");
        let root = root.path();
        let staged = root.join(STAGING_FOLDER).join("backup");
        fs::create_dir_all(&staged).expect("mkdir");
        fs::write(staged.join("abcd"), b"staged").expect("write");
        fs::write(staged.join("abcd.part"), b"half").expect("write");
        fs::create_dir_all(root.join("ks").join(STAGING_FOLDER)).expect("mkdir");
        fs::write(root.join("ks").join(STAGING_FOLDER).join("kept"), b"").expect("write");
        fs::write(root.join("data"), b"1").expect("write");
        let files = regular_files(root).expect("walk");
        assert_eq!(
            files,
            vec![
                PathBuf::from("data"),
                Path::new("ks").join(STAGING_FOLDER).join("kept"),
            ]
        );
    }

    #[test]
    fn a_missing_root_is_an_error() {
        let root = tempfile::tempdir().expect("temp dir");
        let error = regular_files(&root.path().join("gone")).expect_err("missing root");
        assert!(matches!(error, SnapshotError::File { .. }), "{error}");
    }
}
