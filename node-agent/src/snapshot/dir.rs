//! The `dir` provider: pre-hook, hard-link every regular file, post-hook.
//!
//! The post-hook runs whenever linking was attempted, like a `finally`, so a pre-hook that
//! pauses or locks the database is always undone. When the pre-hook itself fails, nothing was
//! linked and the post-hook does not run: a pre-hook that fails halfway must undo its own work.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags};
use rustix::io::Errno;

use super::walk::{describe_listed, is_folder, regular_files};
use super::{
    SNAPSHOTS_FOLDER, Settings, ShellStep, SnapshotError, SnapshotFile, claim_tag_folders,
    discard_tag_folders, shell, tag_folder,
};
use crate::restore::STAGING_FOLDER;

/// Takes a `dir` snapshot; on failure removes the tag's folders.
pub(crate) async fn create(
    settings: &Settings,
    pre_hook: Option<&str>,
    post_hook: Option<&str>,
    tag: &str,
) -> Result<Vec<SnapshotFile>, SnapshotError> {
    let data_paths = settings.data_paths.clone();
    let owned_tag = tag.to_string();
    tokio::task::spawn_blocking(move || claim_tag_folders(&data_paths, &owned_tag)).await??;
    let result = hooks_and_links(settings, pre_hook, post_hook, tag).await;
    if result.is_err() {
        let data_paths = settings.data_paths.clone();
        let tag = tag.to_string();
        tokio::task::spawn_blocking(move || discard_tag_folders(&data_paths, &tag)).await?;
    }
    result
}

async fn hooks_and_links(
    settings: &Settings,
    pre_hook: Option<&str>,
    post_hook: Option<&str>,
    tag: &str,
) -> Result<Vec<SnapshotFile>, SnapshotError> {
    if let Some(pre_hook) = pre_hook {
        shell::run(ShellStep::PreHook, pre_hook, tag).await?;
    }
    let data_paths = settings.data_paths.clone();
    let owned_tag = tag.to_string();
    let linked = tokio::task::spawn_blocking(move || link_data_paths(&data_paths, &owned_tag))
        .await
        .map_err(SnapshotError::from)
        .and_then(|linked| linked);
    let post = match post_hook {
        Some(post_hook) => shell::run(ShellStep::PostHook, post_hook, tag).await,
        None => Ok(()),
    };
    match (linked, post) {
        (Ok(files), Ok(())) => Ok(files),
        (Ok(_), Err(post_error)) => Err(post_error),
        (Err(link_error), post) => {
            if let Err(post_error) = post {
                // The linking error is the one returned; this one needs a person all the same,
                // since the database may still be paused by the pre-hook.
                tracing::error!(error = %post_error, "post-hook failed after linking failed");
            }
            Err(link_error)
        }
    }
}

/// Hard-links every regular file of every data path into its snapshot folder and describes the
/// links. Files that vanish before they are linked are skipped.
fn link_data_paths(data_paths: &[PathBuf], tag: &str) -> Result<Vec<SnapshotFile>, SnapshotError> {
    let mut files = Vec::new();
    for (index, data_path) in data_paths.iter().enumerate() {
        link_tree(index, data_path, &tag_folder(data_path, tag), &mut files)?;
    }
    Ok(files)
}

/// Flags of a folder opened during the walk: never through a symbolic link.
fn folder_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

/// Mirrors the folders of `data_path` under `snapshot_root` and hard-links every regular file
/// into them, describing each link. The walk holds a descriptor of the folder being read and of
/// its mirror, so each link and `stat` resolves one name instead of a whole path (a snapshot of
/// thousands of files spent most of its time walking paths). Like [`regular_files`], it never
/// follows symbolic links, skips the agent's own folders at the root, and skips what vanishes
/// meanwhile.
fn link_tree(
    index: usize,
    data_path: &Path,
    snapshot_root: &Path,
    files: &mut Vec<SnapshotFile>,
) -> Result<(), SnapshotError> {
    let open_root = |path: &Path| {
        rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|errno| SnapshotError::file("read folder", path, errno.into()))
    };
    let mut folders = vec![(
        PathBuf::new(),
        open_root(data_path)?,
        open_root(snapshot_root)?,
    )];
    while let Some((relative_folder, source, mirror)) = folders.pop() {
        let at_root = relative_folder.as_os_str().is_empty();
        let folder_error = |action: &'static str, errno: Errno| {
            SnapshotError::file(action, data_path.join(&relative_folder), errno.into())
        };
        let mut entries = Dir::read_from(&source).map_err(|e| folder_error("read folder", e))?;
        while let Some(entry) = entries.read() {
            let entry = entry.map_err(|e| folder_error("read folder", e))?;
            let name = entry.file_name();
            let name_bytes = name.to_bytes();
            if name_bytes == b"." || name_bytes == b".." {
                continue;
            }
            let os_name = OsStr::from_bytes(name_bytes);
            if at_root && (os_name == SNAPSHOTS_FOLDER || os_name == STAGING_FOLDER) {
                continue;
            }
            let relative = relative_folder.join(os_name);
            let kind = match entry.file_type() {
                FileType::Unknown => {
                    match rustix::fs::statat(&source, name, AtFlags::SYMLINK_NOFOLLOW) {
                        Ok(stat) => FileType::from_raw_mode(stat.st_mode),
                        Err(Errno::NOENT) => continue,
                        Err(errno) => {
                            return Err(SnapshotError::file(
                                "read file type",
                                data_path.join(&relative),
                                errno.into(),
                            ));
                        }
                    }
                }
                kind => kind,
            };
            match kind {
                FileType::Directory => {
                    let below =
                        match rustix::fs::openat(&source, name, folder_flags(), Mode::empty()) {
                            Ok(below) => below,
                            // Gone, or replaced by something else since it was listed.
                            Err(Errno::NOENT | Errno::LOOP | Errno::NOTDIR) => continue,
                            Err(errno) => {
                                return Err(SnapshotError::file(
                                    "read folder",
                                    data_path.join(&relative),
                                    errno.into(),
                                ));
                            }
                        };
                    let mirror_error = |errno: Errno| {
                        SnapshotError::file(
                            "create folder",
                            snapshot_root.join(&relative),
                            errno.into(),
                        )
                    };
                    match rustix::fs::mkdirat(&mirror, name, Mode::from_raw_mode(0o777)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(errno) => return Err(mirror_error(errno)),
                    }
                    let mirrored = rustix::fs::openat(&mirror, name, folder_flags(), Mode::empty())
                        .map_err(mirror_error)?;
                    folders.push((relative, below, mirrored));
                }
                FileType::RegularFile => {
                    match rustix::fs::linkat(&source, name, &mirror, name, AtFlags::empty()) {
                        Ok(()) => {}
                        Err(Errno::NOENT) => {
                            tracing::debug!(path = %data_path.join(&relative).display(), "file vanished before it was linked");
                            continue;
                        }
                        Err(errno) => {
                            return Err(SnapshotError::file(
                                "hard-link",
                                data_path.join(&relative),
                                errno.into(),
                            ));
                        }
                    }
                    let stat = rustix::fs::statat(&mirror, name, AtFlags::SYMLINK_NOFOLLOW)
                        .map_err(|errno| {
                            SnapshotError::file(
                                "read metadata",
                                snapshot_root.join(&relative),
                                errno.into(),
                            )
                        })?;
                    files.push(SnapshotFile {
                        data_path_index: index,
                        live_path: data_path.join(&relative),
                        snapshot_path: snapshot_root.join(&relative),
                        size: u64::try_from(stat.st_size).unwrap_or(0),
                        mode: stat.st_mode & 0o7777,
                        mtime_ns: (stat.st_mtime as i64)
                            .saturating_mul(1_000_000_000)
                            .saturating_add(stat.st_mtime_nsec as i64),
                        inode: stat.st_ino,
                    });
                }
                other => {
                    tracing::warn!(
                        path = %data_path.join(&relative).display(),
                        kind = ?other,
                        "skip a file that is not a regular file"
                    );
                }
            }
        }
    }
    Ok(())
}

/// Lists the files of an existing `dir` snapshot.
pub(crate) fn load(settings: &Settings, tag: &str) -> Result<Vec<SnapshotFile>, SnapshotError> {
    let mut found = false;
    let mut files = Vec::new();
    for (index, data_path) in settings.data_paths.iter().enumerate() {
        let folder = tag_folder(data_path, tag);
        if !is_folder(&folder)? {
            continue;
        }
        found = true;
        for relative in regular_files(&folder)? {
            files.push(describe_listed(
                index,
                data_path.join(&relative),
                folder.join(&relative),
            )?);
        }
    }
    if !found {
        return Err(SnapshotError::NotFound {
            tag: tag.to_string(),
        });
    }
    Ok(files)
}
