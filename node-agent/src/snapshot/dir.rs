//! The `dir` provider: pre-hook, hard-link every regular file, post-hook.
//!
//! The post-hook runs whenever linking was attempted, like a `finally`, so a pre-hook that
//! pauses or locks the database is always undone. When the pre-hook itself fails, nothing was
//! linked and the post-hook does not run: a pre-hook that fails halfway must undo its own work.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::PathBuf;

use super::walk::{describe, describe_listed, is_folder, regular_files};
use super::{
    Settings, ShellStep, SnapshotError, SnapshotFile, claim_tag_folders, discard_tag_folders,
    shell, tag_folder,
};

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
        let folder = tag_folder(data_path, tag);
        let mut made_folders: HashSet<PathBuf> = HashSet::new();
        for relative in regular_files(data_path)? {
            if let Some(parent) = relative.parent()
                && !parent.as_os_str().is_empty()
                && !made_folders.contains(parent)
            {
                let target = folder.join(parent);
                fs::create_dir_all(&target)
                    .map_err(|source| SnapshotError::file("create folder", target, source))?;
                made_folders.insert(parent.to_path_buf());
            }
            let live_path = data_path.join(&relative);
            let snapshot_path = folder.join(&relative);
            match fs::hard_link(&live_path, &snapshot_path) {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::NotFound => {
                    tracing::debug!(path = %live_path.display(), "file vanished before it was linked");
                    continue;
                }
                Err(source) => return Err(SnapshotError::file("hard-link", live_path, source)),
            }
            if let Some(file) = describe(index, live_path, snapshot_path)? {
                files.push(file);
            }
        }
    }
    Ok(files)
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
