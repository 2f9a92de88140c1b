//! The `command` provider: the database takes the snapshot, the agent collects its files.
//!
//! Cassandra and ScyllaDB keep a snapshot of table `<ks>/<table>` in
//! `<ks>/<table>/snapshots/<tag>/`; the live file of `<ks>/<table>/snapshots/<tag>/<file>` is
//! `<ks>/<table>/<file>`. So a matched file's live path is its path with the last
//! `snapshots/<tag>` pair of components removed (unchanged when it has none).
//!
//! The snapshot's file list is recorded in `<state dir>/snapshots/<tag>.json`, first as a
//! pending record (written before the command runs, so that a crash in the middle still leaves
//! a tag for [`super::Snapshotter::list_tags`] to find and delete) and then as the complete list.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Component, Path, PathBuf};

use globset::{GlobBuilder, GlobMatcher};
use serde::{Deserialize, Serialize};

use super::walk::{describe, describe_listed, live_files_matching, regular_files};
use super::{Settings, ShellStep, SnapshotError, SnapshotFile, shell};
use crate::config::SnapshotConfig;
use crate::reserved::snapshot_records;

/// Folder of the state directory holding the `command` snapshots' records.
fn record_path(state_dir: &Path, tag: &str) -> PathBuf {
    snapshot_records(state_dir).join(format!("{tag}.json"))
}

/// What survives an agent restart of a `command` snapshot.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    tag: String,
    /// False while the snapshot is being taken.
    complete: bool,
    files: Vec<RecordedFile>,
}

/// One file of a record; `snapshot` and `live` are relative to `data_path`.
#[derive(Debug, Serialize, Deserialize)]
struct RecordedFile {
    data_path: PathBuf,
    snapshot: PathBuf,
    live: PathBuf,
}

/// Takes a `command` snapshot: records the tag, runs the command, collects and records the
/// files. On failure runs the cleanup command (when configured) and removes the record.
pub(crate) async fn create(
    settings: &Settings,
    command: &str,
    cleanup_command: Option<&str>,
    files_pattern: &str,
    tag: &str,
) -> Result<Vec<SnapshotFile>, SnapshotError> {
    let matcher = compile(&shell::substitute_tag(files_pattern, tag))?;
    let path = record_path(&settings.state_dir, tag);
    {
        let path = path.clone();
        let tag = tag.to_string();
        tokio::task::spawn_blocking(move || write_pending_record(&path, &tag)).await??;
    }
    let result = run_and_collect(settings, command, matcher, tag).await;
    match result {
        Ok((files, record)) => {
            let written = tokio::task::spawn_blocking(move || write_record(&path, &record))
                .await
                .map_err(SnapshotError::from)
                .and_then(|written| written);
            match written {
                Ok(()) => Ok(files),
                Err(error) => {
                    discard(settings, cleanup_command, tag).await;
                    Err(error)
                }
            }
        }
        Err(error) => {
            discard(settings, cleanup_command, tag).await;
            Err(error)
        }
    }
}

async fn run_and_collect(
    settings: &Settings,
    command: &str,
    matcher: GlobMatcher,
    tag: &str,
) -> Result<(Vec<SnapshotFile>, Record), SnapshotError> {
    shell::run(
        ShellStep::SnapshotCommand,
        &shell::substitute_tag(command, tag),
        tag,
    )
    .await?;
    let data_paths = settings.data_paths.clone();
    let tag = tag.to_string();
    tokio::task::spawn_blocking(move || collect(&data_paths, &matcher, &tag)).await?
}

/// Undoes a failed snapshot: cleanup command, then the record. When the cleanup command fails
/// the record stays, so the tag is still listed and a later delete retries.
async fn discard(settings: &Settings, cleanup_command: Option<&str>, tag: &str) {
    if let Some(cleanup_command) = cleanup_command
        && let Err(error) = shell::run(
            ShellStep::CleanupCommand,
            &shell::substitute_tag(cleanup_command, tag),
            tag,
        )
        .await
    {
        tracing::error!(%error, "clean up a failed snapshot; its record is kept");
        return;
    }
    let path = record_path(&settings.state_dir, tag);
    let removed = tokio::task::spawn_blocking(move || remove_record(&path)).await;
    if let Ok(Err(error)) = removed {
        tracing::error!(%error, "remove the record of a failed snapshot");
    }
}

/// Deletes the `command` snapshot `tag` (and the record of any provider); returns whether
/// anything was removed.
///
/// With the `command` provider, the snapshot exists when its record does or when the files
/// glob matches a file; then the cleanup command runs (when configured). Without one, the
/// command's files are left alone: the agent never removes files it did not make.
pub(crate) async fn delete(settings: &Settings, tag: &str) -> Result<bool, SnapshotError> {
    let path = record_path(&settings.state_dir, tag);
    let record_exists = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || exists(&path)).await??
    };
    let mut removed = record_exists;
    if let SnapshotConfig::Command {
        cleanup_command,
        files,
        ..
    } = &settings.provider
    {
        let existed = record_exists || {
            let matcher = compile(&shell::substitute_tag(files, tag))?;
            let data_paths = settings.data_paths.clone();
            tokio::task::spawn_blocking(move || any_match(&data_paths, &matcher)).await??
        };
        if existed {
            match cleanup_command {
                Some(cleanup_command) => {
                    shell::run(
                        ShellStep::CleanupCommand,
                        &shell::substitute_tag(cleanup_command, tag),
                        tag,
                    )
                    .await?;
                    removed = true;
                }
                None => tracing::warn!(
                    "no cleanup command is configured: the snapshot command's files stay"
                ),
            }
        }
    }
    if record_exists {
        tokio::task::spawn_blocking(move || remove_record(&path)).await??;
    }
    Ok(removed)
}

/// Lists the files of an existing `command` snapshot from its record.
pub(crate) fn load(settings: &Settings, tag: &str) -> Result<Vec<SnapshotFile>, SnapshotError> {
    let path = record_path(&settings.state_dir, tag);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            return Err(SnapshotError::NotFound {
                tag: tag.to_string(),
            });
        }
        Err(source) => return Err(SnapshotError::file("read snapshot record", path, source)),
    };
    let record: Record = serde_json::from_slice(&bytes).map_err(|error| SnapshotError::Record {
        path: path.clone(),
        reason: error.to_string(),
    })?;
    if !record.complete {
        return Err(SnapshotError::Incomplete {
            tag: tag.to_string(),
        });
    }
    record
        .files
        .into_iter()
        .map(|file| {
            let index = recorded_data_path(settings, &file.data_path, &path)?;
            describe_listed(
                index,
                file.data_path.join(&file.live),
                file.data_path.join(&file.snapshot),
            )
        })
        .collect()
}

/// The live files a `command` snapshot would cover (see [`super::Snapshotter::walk_live`]).
pub(crate) fn walk_live(
    settings: &Settings,
    files_pattern: &str,
) -> Result<Vec<SnapshotFile>, SnapshotError> {
    let outside_snapshots = files_pattern.contains("snapshots/{tag}/");
    let matcher = compile(
        &files_pattern
            .replace("snapshots/{tag}/", "")
            .replace("{tag}", "*"),
    )?;
    live_files_matching(&settings.data_paths, |relative| {
        matcher.is_match(relative)
            && !(outside_snapshots
                && relative
                    .parent()
                    .is_some_and(|parent| parent.components().any(is_snapshots_component)))
    })
}

fn is_snapshots_component(component: Component<'_>) -> bool {
    component.as_os_str() == "snapshots"
}

fn compile(pattern: &str) -> Result<GlobMatcher, SnapshotError> {
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map(|glob| glob.compile_matcher())
        .map_err(|source| SnapshotError::FilesPattern {
            pattern: pattern.to_string(),
            source,
        })
}

/// The live path, relative to the data path, of the snapshot file at `relative`: without its
/// last `snapshots/<tag>` pair of components.
pub(crate) fn live_relative_path(relative: &Path, tag: &str) -> PathBuf {
    let components: Vec<Component<'_>> = relative.components().collect();
    let pair = (0..components.len().saturating_sub(1))
        .rev()
        .find(|&index| {
            is_snapshots_component(components[index]) && components[index + 1].as_os_str() == tag
        });
    match pair {
        Some(index) => components
            .iter()
            .enumerate()
            .filter(|(position, _)| *position != index && *position != index + 1)
            .map(|(_, component)| component.as_os_str())
            .collect(),
        None => relative.to_path_buf(),
    }
}

fn collect(
    data_paths: &[PathBuf],
    matcher: &GlobMatcher,
    tag: &str,
) -> Result<(Vec<SnapshotFile>, Record), SnapshotError> {
    let mut files: Vec<SnapshotFile> = Vec::new();
    let mut recorded = Vec::new();
    for (index, data_path) in data_paths.iter().enumerate() {
        for relative in regular_files(data_path)? {
            if !matcher.is_match(&relative) {
                continue;
            }
            let live = live_relative_path(&relative, tag);
            let Some(file) = describe(index, data_path.join(&live), data_path.join(&relative))?
            else {
                continue;
            };
            recorded.push(RecordedFile {
                data_path: data_path.clone(),
                snapshot: relative,
                live,
            });
            files.push(file);
        }
    }
    let mut by_live: Vec<&SnapshotFile> = files.iter().collect();
    by_live.sort_by(|left, right| left.live_path.cmp(&right.live_path));
    if let Some(pair) = by_live
        .windows(2)
        .find(|pair| pair[0].live_path == pair[1].live_path)
    {
        return Err(SnapshotError::DuplicateLivePath {
            live_path: pair[0].live_path.clone(),
            first: pair[0].snapshot_path.clone(),
            second: pair[1].snapshot_path.clone(),
        });
    }
    if files.is_empty() {
        tracing::warn!("the snapshot files pattern matched no file");
    }
    Ok((
        files,
        Record {
            tag: tag.to_string(),
            complete: true,
            files: recorded,
        },
    ))
}

fn any_match(data_paths: &[PathBuf], matcher: &GlobMatcher) -> Result<bool, SnapshotError> {
    for data_path in data_paths {
        if regular_files(data_path)?
            .iter()
            .any(|relative| matcher.is_match(relative))
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Claims the tag by creating its record; fails with `AlreadyExists` when there is one.
fn write_pending_record(path: &Path, tag: &str) -> Result<(), SnapshotError> {
    if let Some(folder) = path.parent() {
        fs::create_dir_all(folder)
            .map_err(|source| SnapshotError::file("create folder", folder, source))?;
    }
    let mut file = match OpenOptions::new().write(true).create_new(true).open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
            return Err(SnapshotError::AlreadyExists {
                tag: tag.to_string(),
            });
        }
        Err(source) => return Err(SnapshotError::file("create snapshot record", path, source)),
    };
    let record = Record {
        tag: tag.to_string(),
        complete: false,
        files: Vec::new(),
    };
    let written = encode(path, &record).and_then(|bytes| {
        file.write_all(&bytes)
            .and_then(|()| file.sync_all())
            .map_err(|source| SnapshotError::file("write snapshot record", path, source))
    });
    if written.is_err() {
        let _ = fs::remove_file(path);
    }
    written
}

/// Replaces the record atomically (temporary file, fsync, rename).
fn write_record(path: &Path, record: &Record) -> Result<(), SnapshotError> {
    let bytes = encode(path, record)?;
    let temporary = path.with_extension("json.tmp");
    let written = (|| {
        let mut file = fs::File::create(&temporary)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        fs::rename(&temporary, path)
    })();
    written.map_err(|source| {
        let _ = fs::remove_file(&temporary);
        SnapshotError::file("write snapshot record", path, source)
    })
}

fn encode(path: &Path, record: &Record) -> Result<Vec<u8>, SnapshotError> {
    serde_json::to_vec_pretty(record).map_err(|error| SnapshotError::Record {
        path: path.to_path_buf(),
        reason: error.to_string(),
    })
}

/// Removes a snapshot record of the state directory; returns whether there was one.
pub(crate) fn remove_record(path: &Path) -> Result<bool, SnapshotError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(SnapshotError::file("remove snapshot record", path, source)),
    }
}

/// The index of the data path a record (at `record`) names, which must still be configured.
pub(crate) fn recorded_data_path(
    settings: &Settings,
    data_path: &Path,
    record: &Path,
) -> Result<usize, SnapshotError> {
    settings
        .data_paths
        .iter()
        .position(|configured| configured == data_path)
        .ok_or_else(|| SnapshotError::Record {
            path: record.to_path_buf(),
            reason: format!(
                "lists data path {} which is no longer configured",
                data_path.display()
            ),
        })
}

fn exists(path: &Path) -> Result<bool, SnapshotError> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(SnapshotError::file("read metadata", path, source)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_paths_drop_the_snapshots_tag_pair() {
        let live = |path: &str| live_relative_path(Path::new(path), "t1");
        assert_eq!(
            live("ks/tbl/snapshots/t1/a-Data.db"),
            PathBuf::from("ks/tbl/a-Data.db")
        );
        assert_eq!(
            live("ks/tbl/snapshots/t1/.idx/b.db"),
            PathBuf::from("ks/tbl/.idx/b.db")
        );
        assert_eq!(
            live("ks/tbl/snapshots/t2/a.db"),
            PathBuf::from("ks/tbl/snapshots/t2/a.db")
        );
        assert_eq!(live("snapshots/t1/a"), PathBuf::from("a"));
        assert_eq!(live("plain/file"), PathBuf::from("plain/file"));
    }

    #[test]
    fn globs_match_across_folders_only_with_double_stars() {
        let matcher = compile("*/*/snapshots/t1/**").expect("compile");
        assert!(matcher.is_match("ks/tbl/snapshots/t1/a.db"));
        assert!(matcher.is_match("ks/tbl/snapshots/t1/sub/b.db"));
        assert!(!matcher.is_match("ks/tbl/snapshots/t2/a.db"));
        assert!(!matcher.is_match("ks/x/tbl/snapshots/t1/a.db"));
        assert!(compile("a/[").is_err());
    }
}
