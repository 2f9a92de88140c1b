//! Planning: the manifest's selected files mapped onto this node, checked against what is on
//! disk, and the contents to fetch (see the phases in the parent module).
use std::collections::{HashMap, HashSet};
use std::fs::{self};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use coffer_format::manifest::{ManifestError, NodeManifestReader};
use coffer_format::object::hash_file;
use futures::{StreamExt, TryStreamExt};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::reserved::{STAGING_FOLDER, is_reserved, staging_folder};

use super::{
    EXISTING_NAMED, MAX_EXISTING_PATHS, Objects, Paths, Plan, PlannedFile, PlannedFiles,
    RestoreFailure, Shared, Target, UNPACKED, blocking,
};

pub(super) async fn plan(
    shared: &Arc<Shared>,
    cancel: &CancellationToken,
) -> Result<Plan, RestoreFailure> {
    let job = &shared.job;
    let (source_prefixes, files) = read_selected(shared, cancel).await?;

    // What is on disk now: refuses links and non-folders; finds existing files.
    let (mut files, candidates) = {
        let data_paths = job.data_paths.clone();
        let cancel = cancel.clone();
        blocking(move || {
            let mut files = files;
            let candidates = inspect_targets(&data_paths, &source_prefixes, &mut files, &cancel)?;
            Ok((files, candidates))
        })
        .await?
    };
    if job.overwrite {
        let confirmed = tokio::select! {
            confirmed = find_in_place(shared, &files, candidates) => confirmed?,
            () = cancel.cancelled() => return Err(RestoreFailure::Canceled),
        };
        for index in confirmed {
            files[index].target = Target::InPlace;
        }
    }

    let mut existing_files = 0u64;
    let mut existing_paths = Vec::new();
    for file in files.iter().filter(|file| file.target == Target::Existing) {
        existing_files += 1;
        if existing_paths.len() < MAX_EXISTING_PATHS {
            existing_paths.push(shared.target(files.paths(), file).display().to_string());
        }
    }
    // A dry run reports what exists (in its summary) rather than failing on it: it is a plan.
    if existing_files > 0 && !job.overwrite && !job.dry_run {
        let named: Vec<&str> = existing_paths
            .iter()
            .take(EXISTING_NAMED)
            .map(String::as_str)
            .collect();
        let more = if existing_files > named.len() as u64 {
            format!(" and {} more", existing_files - named.len() as u64)
        } else {
            String::new()
        };
        return Err(RestoreFailure::Refused(format!(
            "{existing_files} of the files to restore exist on this node already: {}{more}; \
             restore with overwrite to replace them (those already identical to the \
             backup's are kept and not downloaded)",
            named.join(", ")
        )));
    }

    for file in files.iter().filter(|file| file.target == Target::InPlace) {
        shared.counters.files.done(1, file.size, true);
    }
    // The contents to fetch; those a previous attempt verified are staged already.
    let (files, objects) = {
        let shared = shared.clone();
        blocking(move || {
            let mut files = files;
            let objects = Objects::of(&files);
            find_staged(&shared, &mut files, &objects)?;
            Ok((files, objects))
        })
        .await?
    };
    let plan = Plan {
        files,
        objects,
        existing_files,
        existing_paths,
    };
    for (_, object) in plan.objects() {
        for need in object.needs.iter().filter(|need| need.staged) {
            shared.counters.files.done(need.files, object.size, true);
        }
    }
    Ok(plan)
}

/// Streams the manifest: checks it is the one asked for, keeps the selected files and maps each
/// onto this node (refusing what would leave the data paths). Returns the backup's data paths as
/// prefixes, and the files.
async fn read_selected(
    shared: &Shared,
    cancel: &CancellationToken,
) -> Result<(Vec<String>, PlannedFiles), RestoreFailure> {
    let job = &shared.job;
    let mut reader = NodeManifestReader::open(&job.operator, &job.manifest_path, &job.keys)
        .await
        .map_err(|error| RestoreFailure::Manifest(located(error, &job.location_name)))?;
    let header = reader.header().clone();
    if header.cluster_id != job.source_cluster_id
        || header.backup_id != job.backup_id
        || header.node_id != job.source_node_id
    {
        return Err(RestoreFailure::Refused(format!(
            "manifest {} belongs to cluster {}, backup {}, node {}, not to the restore's cluster \
             {}, backup {}, node {}",
            job.manifest_path,
            header.cluster_id,
            header.backup_id,
            header.node_id,
            job.source_cluster_id,
            job.backup_id,
            job.source_node_id
        )));
    }
    let source_prefixes = source_prefixes(&job.manifest_path, &header.data_paths)?;

    let mut files = PlannedFiles::default();
    loop {
        let entry = tokio::select! {
            entry = reader.next_entry(&job.operator) => entry
                .map_err(|error| RestoreFailure::Manifest(located(error, &job.location_name)))?,
            () = cancel.cancelled() => return Err(RestoreFailure::Canceled),
        };
        let Some(entry) = entry else {
            break;
        };
        if !job.filter.selects(&entry.path) {
            continue;
        }
        let (data_path, relative) = map_path(&entry.path, &source_prefixes, &job.data_paths)?;
        shared.counters.files.select(1, entry.size);
        let (pack, pack_offset) = match entry.packed {
            None => (UNPACKED, 0),
            Some(slice) => files.pack_of(slice).ok_or_else(|| {
                RestoreFailure::Refused(format!(
                    "the manifest {} places {:?} at offset {} of pack {}, beyond the packs \
                     this agent reads",
                    job.manifest_path, entry.path, slice.offset, slice.pack
                ))
            })?,
        };
        let data_path_index = u16::try_from(data_path).map_err(|_| {
            RestoreFailure::Refused(format!(
                "the manifest {} lists files in more than {} data paths",
                job.manifest_path,
                u16::MAX
            ))
        })?;
        let file = PlannedFile {
            data_path_index,
            path: Default::default(),
            size: entry.size,
            mode: entry.mode,
            mtime_ns: entry.mtime_ns,
            hash: entry.hash,
            target: Target::Absent,
            staged: false,
            pack,
            pack_offset,
        };
        if !files.push(file, relative) {
            return Err(RestoreFailure::Refused(format!(
                "the manifest {} lists files whose paths take more than {} bytes: restore it \
                 in parts, with patterns",
                job.manifest_path,
                Paths::LIMIT
            )));
        }
        if files.len() >= u32::MAX as usize {
            return Err(RestoreFailure::Refused(format!(
                "the manifest {} lists more than {} files: restore it in parts, with patterns",
                job.manifest_path,
                u32::MAX - 1
            )));
        }
    }
    refuse_contents_of_two_sizes(&source_prefixes, &files)?;
    refuse_files_used_as_folders(&source_prefixes, &files)?;
    Ok((source_prefixes, files))
}

/// Of the existing files with the backup's size and time, those whose content is the backup's:
/// they are in place already.
async fn find_in_place(
    shared: &Shared,
    files: &PlannedFiles,
    candidates: Vec<usize>,
) -> Result<Vec<usize>, RestoreFailure> {
    futures::stream::iter(candidates)
        .map(|index| {
            let path = shared.target(files.paths(), &files[index]);
            let expected = (files[index].hash, files[index].size);
            // Named with the location's current key: a file whose object an earlier key named
            // is downloaded again, never wrongly kept.
            let keys = &shared.job.keys;
            async move {
                let (hash, size) = hash_file(&path, keys, None)
                    .await
                    .map_err(RestoreFailure::local("read", &path))?;
                Ok::<_, RestoreFailure>(((hash, size) == expected).then_some(index))
            }
        })
        .buffer_unordered(shared.job.concurrency.max(1))
        .try_filter_map(|index| async move { Ok(index) })
        .try_collect()
        .await
}

fn located(error: ManifestError, location: &str) -> ManifestError {
    match error {
        ManifestError::Storage(error) => ManifestError::Storage(error.in_location(location)),
        other => other,
    }
}

/// Checks the backup's data paths (absolute, normal components, none inside another) and returns
/// them as prefixes ending with `/`.
fn source_prefixes(manifest: &str, data_paths: &[String]) -> Result<Vec<String>, RestoreFailure> {
    let refuse = |reason: String| {
        RestoreFailure::Refused(format!(
            "manifest {manifest} is not usable: its data paths {data_paths:?} {reason}"
        ))
    };
    let mut prefixes = Vec::with_capacity(data_paths.len());
    for path in data_paths {
        let trimmed = path.trim_end_matches('/');
        let normal =
            path.starts_with('/') && (trimmed.is_empty() || relative_is_normal(&trimmed[1..]));
        if !normal {
            return Err(refuse(format!(
                "include {path:?}, which is not an absolute path of normal components"
            )));
        }
        prefixes.push(format!("{trimmed}/"));
    }
    for (index, prefix) in prefixes.iter().enumerate() {
        if let Some(other) = prefixes[index + 1..]
            .iter()
            .find(|other| other.starts_with(prefix.as_str()) || prefix.starts_with(other.as_str()))
        {
            return Err(refuse(format!("overlap ({prefix} and {other})")));
        }
    }
    Ok(prefixes)
}

/// Whether `relative` is one or more normal components joined by single `/`.
fn relative_is_normal(relative: &str) -> bool {
    !relative.is_empty()
        && relative
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != ".." && !part.contains('\0'))
}

/// Maps a manifest path onto this node: the index of its data path and its relative path.
fn map_path<'a>(
    path: &'a str,
    source_prefixes: &[String],
    data_paths: &[PathBuf],
) -> Result<(usize, &'a str), RestoreFailure> {
    let Some((index, relative)) = source_prefixes
        .iter()
        .enumerate()
        .find_map(|(index, prefix)| path.strip_prefix(prefix.as_str()).map(|rest| (index, rest)))
    else {
        return Err(RestoreFailure::Refused(format!(
            "the manifest lists {path:?}, which is not below any of the backup's data paths \
             ({}): refusing to restore it",
            source_prefixes.join(", ")
        )));
    };
    if !relative_is_normal(relative) {
        return Err(RestoreFailure::Refused(format!(
            "the manifest lists {path:?}, whose path below its data path has `..`, `.` or empty \
             parts: refusing to restore it"
        )));
    }
    let first = relative.split('/').next().unwrap_or_default();
    if is_reserved(std::ffi::OsStr::new(first)) {
        return Err(RestoreFailure::Refused(format!(
            "the manifest lists {path:?}, inside the agent's own folder {first}: refusing to \
             restore it"
        )));
    }
    if index >= data_paths.len() {
        return Err(RestoreFailure::Refused(format!(
            "the manifest lists {path:?}, in the backup's data path #{} ({}), but this node has \
             {} data path(s): restore onto a node with at least {}, or leave those files out \
             with a pattern",
            index + 1,
            source_prefixes[index].trim_end_matches('/'),
            data_paths.len(),
            index + 1
        )));
    }
    Ok((index, relative))
}

fn source_path(source_prefixes: &[String], paths: &Paths, file: &PlannedFile) -> String {
    format!("{}{}", source_prefixes[file.data_path()], paths.of(file))
}

/// Refuses a manifest that gives one content two sizes. Sorted, not mapped: a map of a million
/// contents to their first file held about 100 bytes a content while the manifest was read.
fn refuse_contents_of_two_sizes(
    source_prefixes: &[String],
    files: &PlannedFiles,
) -> Result<(), RestoreFailure> {
    // File indexes (4 bytes a file, not a copy of each hash), sorted by content then index.
    let mut by_content: Vec<u32> = (0..files.len())
        .filter_map(|index| u32::try_from(index).ok())
        .collect();
    by_content.sort_unstable_by(|a, b| {
        let (a, b) = (*a as usize, *b as usize);
        files[a].hash.cmp(&files[b].hash).then(a.cmp(&b))
    });
    let mut first: Option<usize> = None;
    for index in by_content.into_iter().map(|index| index as usize) {
        let hash = files[index].hash;
        let Some(first_index) = first.filter(|first| files[*first].hash == hash) else {
            first = Some(index);
            continue;
        };
        let first_hash = hash;
        let (earlier, later) = (&files[first_index], &files[index]);
        if earlier.size != later.size {
            return Err(RestoreFailure::Refused(format!(
                "the manifest gives {} and {} the same content {} but different sizes \
                 ({} and {} bytes): it is corrupt",
                source_path(source_prefixes, files.paths(), earlier),
                source_path(source_prefixes, files.paths(), later),
                first_hash,
                earlier.size,
                later.size
            )));
        }
    }
    Ok(())
}

/// Refuses a manifest that lists a path both as a file and as a folder of another file (`a` and
/// `a/b`): placing would fail halfway.
fn refuse_files_used_as_folders(
    source_prefixes: &[String],
    files: &PlannedFiles,
) -> Result<(), RestoreFailure> {
    let mut folders: HashSet<(usize, &str)> = HashSet::new();
    let mut last_parent: Option<(usize, &str)> = None;
    for file in files.iter() {
        let Some((parent, _)) = files.relative(file).rsplit_once('/') else {
            continue;
        };
        if last_parent == Some((file.data_path(), parent)) {
            continue;
        }
        last_parent = Some((file.data_path(), parent));
        for (slash, _) in parent.match_indices('/') {
            folders.insert((file.data_path(), &parent[..slash]));
        }
        folders.insert((file.data_path(), parent));
    }
    match files
        .iter()
        .find(|file| folders.contains(&(file.data_path(), files.relative(file))))
    {
        Some(file) => Err(RestoreFailure::Refused(format!(
            "the manifest lists {} both as a file and as a folder of other files: it is corrupt",
            source_path(source_prefixes, files.paths(), file)
        ))),
        None => Ok(()),
    }
}

/// What is known of a folder below a data path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FolderState {
    Exists,
    Missing,
}

/// Looks at every target without following links: refuses a symbolic link or a non-folder on
/// the way, a target that is a link or not a regular file; marks existing files. Returns the
/// indexes of existing files of the backup's size and modification time (maybe in place).
fn inspect_targets(
    data_paths: &[PathBuf],
    source_prefixes: &[String],
    files: &mut PlannedFiles,
    cancel: &CancellationToken,
) -> Result<Vec<usize>, RestoreFailure> {
    let (files, paths) = files.split_mut();
    let mut folders: HashMap<(usize, String), FolderState> = HashMap::new();
    // Entries are sorted, so files of one folder mostly follow each other: the folders of the
    // last file found existing need no second look.
    let mut last_parent: Option<(usize, String)> = None;
    let mut candidates = Vec::new();
    for (index, file) in files.iter_mut().enumerate() {
        if index % 1024 == 0 && cancel.is_cancelled() {
            return Err(RestoreFailure::Canceled);
        }
        let data_path = &data_paths[file.data_path()];
        let relative = paths.of(file);
        let refuse = |what: &Path, reason: &str| {
            RestoreFailure::Refused(format!(
                "the manifest's {} would be restored to {}, but {} {reason}: refusing to restore \
                 through it",
                source_path(source_prefixes, paths, file),
                data_path.join(relative).display(),
                what.display()
            ))
        };
        let (parent, _) = relative.rsplit_once('/').unwrap_or(("", ""));
        let mut missing = false;
        let same_parent = matches!(&last_parent, Some((data_path, folder)) if *data_path == file.data_path() && folder == parent);
        let ends = parent
            .match_indices('/')
            .map(|(slash, _)| slash)
            .chain((!parent.is_empty()).then_some(parent.len()));
        for end in ends.filter(|_| !same_parent) {
            let folder = &parent[..end];
            let key = (file.data_path(), folder.to_string());
            let state = match folders.get(&key) {
                Some(state) => *state,
                None => {
                    let path = data_path.join(folder);
                    let state = match fs::symlink_metadata(&path) {
                        Ok(metadata) if metadata.file_type().is_symlink() => {
                            return Err(refuse(&path, "is a symbolic link"));
                        }
                        Ok(metadata) if metadata.is_dir() => FolderState::Exists,
                        Ok(_) => return Err(refuse(&path, "is not a folder")),
                        Err(error) if error.kind() == io::ErrorKind::NotFound => {
                            FolderState::Missing
                        }
                        Err(error) => {
                            return Err(RestoreFailure::local("inspect", path)(error));
                        }
                    };
                    folders.insert(key, state);
                    state
                }
            };
            if state == FolderState::Missing {
                missing = true;
                break;
            }
        }
        if missing {
            last_parent = None;
            continue;
        }
        last_parent = Some((file.data_path(), parent.to_string()));
        let target = data_path.join(relative);
        match fs::symlink_metadata(&target) {
            Ok(metadata) if metadata.file_type().is_symlink() => {
                return Err(refuse(&target, "is a symbolic link"));
            }
            Ok(metadata) if metadata.is_file() => {
                file.target = Target::Existing;
                let mtime_ns = metadata
                    .mtime()
                    .saturating_mul(1_000_000_000)
                    .saturating_add(metadata.mtime_nsec());
                if metadata.len() == file.size && mtime_ns == file.mtime_ns {
                    candidates.push(index);
                }
            }
            Ok(_) => return Err(refuse(&target, "exists and is not a regular file")),
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(RestoreFailure::local("inspect", target)(error)),
        }
    }
    Ok(candidates)
}

/// Whether `<data path>/.coffer-restore/<backup id>` is a folder: `Ok(false)` when it (or
/// `.coffer-restore`) does not exist; refused when either is a link or not a folder.
pub(super) fn staging_exists(data_path: &Path, backup_id: Uuid) -> Result<bool, RestoreFailure> {
    for folder in [
        data_path.join(STAGING_FOLDER),
        staging_folder(data_path, backup_id),
    ] {
        match fs::symlink_metadata(&folder) {
            Ok(metadata) if metadata.is_dir() => {}
            Ok(_) => {
                return Err(RestoreFailure::Refused(format!(
                    "the restore staging folder {} is a symbolic link or not a folder: remove it",
                    folder.display()
                )));
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(error) => return Err(RestoreFailure::local("inspect", folder)(error)),
        }
    }
    Ok(true)
}

/// Marks the needs whose content is staged, verified, by an earlier attempt.
fn find_staged(
    shared: &Shared,
    files: &mut [PlannedFile],
    objects: &Objects,
) -> Result<(), RestoreFailure> {
    let mut staging: HashMap<usize, bool> = HashMap::new();
    for id in objects.ids() {
        let object = objects.plan(files, id);
        let hex = object.hash.to_hex();
        for need in object.needs.iter() {
            let exists = match staging.get(&need.data_path) {
                Some(exists) => *exists,
                None => {
                    let exists = staging_exists(
                        &shared.job.data_paths[need.data_path],
                        shared.job.backup_id,
                    )?;
                    staging.insert(need.data_path, exists);
                    exists
                }
            };
            if !exists {
                continue;
            }
            let staged = shared.staging_folder(need.data_path).join(&hex);
            files[need.last_file].staged = match fs::symlink_metadata(&staged) {
                Ok(metadata) => metadata.is_file() && metadata.len() == object.size,
                Err(error) if error.kind() == io::ErrorKind::NotFound => false,
                Err(error) => return Err(RestoreFailure::local("inspect", staged)(error)),
            };
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::files::tests::planned;
    use super::*;

    fn prefixes(paths: &[&str]) -> Vec<String> {
        source_prefixes(
            "m",
            &paths.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
        )
        .expect("valid data paths")
    }

    #[test]
    fn paths_map_onto_the_data_path_of_the_same_index() {
        let sources = prefixes(&["/var/lib/db/", "/mnt/db2"]);
        let targets = [PathBuf::from("/data/a"), PathBuf::from("/data/b")];
        assert_eq!(
            map_path("/var/lib/db/ks/t/f", &sources, &targets).expect("maps"),
            (0, "ks/t/f")
        );
        assert_eq!(
            map_path("/mnt/db2/x", &sources, &targets).expect("maps"),
            (1, "x")
        );
    }

    #[test]
    fn paths_that_would_leave_the_data_paths_are_refused() {
        let sources = prefixes(&["/var/lib/db"]);
        let targets = [PathBuf::from("/data")];
        for path in [
            "/var/lib/db/../../etc/passwd",
            "/var/lib/db/ks/../../x",
            "/var/lib/db/./x",
            "/var/lib/db//x",
            "/var/lib/db/x/",
            "/var/lib/db",
            "/var/lib/dbx/y",
            "/etc/passwd",
            "/var/lib/db/.coffer-restore/b/h",
            "/var/lib/db/.coffer-snapshots/t/x",
        ] {
            let error = map_path(path, &sources, &targets).expect_err(path);
            assert!(
                matches!(error, RestoreFailure::Refused(_)),
                "{path}: {error}"
            );
            assert!(error.to_string().contains(path), "{error}");
        }
    }

    #[test]
    fn a_node_with_fewer_data_paths_is_refused() {
        let sources = prefixes(&["/a", "/b"]);
        let error =
            map_path("/b/x", &sources, &[PathBuf::from("/data")]).expect_err("second data path");
        assert!(error.to_string().contains("#2"), "{error}");
    }

    #[test]
    fn crafted_data_paths_are_refused() {
        for paths in [
            vec!["relative"],
            vec!["/a/../b"],
            vec!["/a", "/a/b"],
            vec!["/a/./b"],
        ] {
            let paths: Vec<String> = paths.iter().map(|p| p.to_string()).collect();
            assert!(source_prefixes("m", &paths).is_err(), "{paths:?}");
        }
        assert_eq!(prefixes(&["/"]), vec!["/".to_string()]);
    }

    #[test]
    fn one_content_of_two_sizes_is_refused() {
        let sources = prefixes(&["/src"]);
        // Each file's size is its hash's byte.
        let fine = planned(&[("a", 0, 1), ("b", 0, 2), ("c", 0, 1)]);
        refuse_contents_of_two_sizes(&sources, &fine).expect("sizes agree");
        let mut corrupt = planned(&[("a", 0, 1), ("b", 0, 2), ("c", 0, 2), ("d", 0, 1)]);
        corrupt[3].size = 11;
        let error = refuse_contents_of_two_sizes(&sources, &corrupt).expect_err("corrupt");
        let message = error.to_string();
        assert!(
            message.contains("/src/a and /src/d") && message.contains("(1 and 11 bytes)"),
            "{message}"
        );
    }

    #[test]
    fn a_path_listed_as_file_and_folder_is_refused() {
        let files = |relatives: &[&str]| {
            planned(
                &relatives
                    .iter()
                    .map(|relative| (*relative, 0, 0))
                    .collect::<Vec<_>>(),
            )
        };
        let sources = prefixes(&["/src"]);
        let fine = files(&["a-b", "a/b", "a/c/d", "ab"]);
        refuse_files_used_as_folders(&sources, &fine).expect("no conflict");
        let conflict = files(&["a", "a-b", "a/c/d"]);
        let error = refuse_files_used_as_folders(&sources, &conflict).expect_err("conflict");
        assert!(error.to_string().contains("/src/a both"), "{error}");
        let deep = files(&["a/b", "a/b/c/d"]);
        assert!(refuse_files_used_as_folders(&sources, &deep).is_err());
    }
}
