//! The `sqlite` provider: consistent copies of live SQLite databases through the online backup
//! API.
//!
//! Each configured database is copied to `<data path>/.coffer-snapshots/<tag>/<relative path>`
//! (the copy gets the live file's permission bits). ONLY the configured databases are part of
//! the snapshot: other files of the data paths are not. The copy is a single consistent state
//! of the database even while other processes write to it:
//! - WAL databases: the agent's connection holds one read transaction for the whole copy. In WAL
//!   mode a reader never blocks writers, and the copy is of that one snapshot; it is copied a
//!   step of pages at a time, never restarting.
//! - Rollback-journal databases: the copy goes a step of pages at a time with a short pause in
//!   between, so writers get the database back in between. SQLite restarts the copy whenever
//!   another connection commits during it; after a few restarts the rest is copied in one step,
//!   which holds a read lock (writers wait) for as long as that takes: the price of finishing at
//!   all against a steady writer.
//!
//! The source is opened read-write without create (a missing database fails instead of being
//! created empty), as the `sqlite3` shell's `.backup` does: a read-only connection could not
//! roll back a hot journal left by a crashed writer. Everything here blocks: it runs on
//! `spawn_blocking`.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags};

use super::walk::{describe_listed, is_folder};
use super::{
    Settings, SnapshotError, SnapshotFile, claim_tag_folders, data_path_index, discard_tag_folders,
    tag_folder,
};

/// Pages copied per step (4 MiB with the default 4 KiB pages).
const PAGES_PER_STEP: i32 = 1024;
/// Pause between steps of a rollback-journal copy, when writers may commit.
const PAUSE_BETWEEN_STEPS: Duration = Duration::from_millis(5);
/// Restarts of a rollback-journal copy before the rest is copied in one step.
const MAX_RESTARTS: u32 = 3;
/// How long a step waits for a lock held by another connection.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// Steps in a row that may find the database busy before the copy fails.
const MAX_BUSY_STEPS: u32 = 100;

/// One configured database: where it lives and where its copy goes.
#[derive(Debug)]
struct Planned {
    data_path_index: usize,
    live_path: PathBuf,
    /// `None` when no tag was given (walking the live data).
    snapshot_path: Option<PathBuf>,
}

/// How a copy went, for the log and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CopyReport {
    pub(crate) pages: i32,
    pub(crate) restarts: u32,
    pub(crate) wal: bool,
}

fn plan(
    settings: &Settings,
    databases: &[PathBuf],
    tag: Option<&str>,
) -> Result<Vec<Planned>, SnapshotError> {
    let mut seen = HashSet::new();
    let mut planned = Vec::new();
    for database in databases {
        if !seen.insert(database) {
            continue;
        }
        let index = data_path_index(&settings.data_paths, database)?;
        let data_path = &settings.data_paths[index];
        let relative =
            database
                .strip_prefix(data_path)
                .map_err(|_| SnapshotError::OutsideDataPaths {
                    path: database.clone(),
                })?;
        planned.push(Planned {
            data_path_index: index,
            live_path: database.clone(),
            snapshot_path: tag.map(|tag| tag_folder(data_path, tag).join(relative)),
        });
    }
    Ok(planned)
}

/// Copies every configured database; on failure removes the tag's folders.
pub(crate) async fn create(
    settings: &Settings,
    databases: &[PathBuf],
    tag: &str,
) -> Result<Vec<SnapshotFile>, SnapshotError> {
    let planned = plan(settings, databases, Some(tag))?;
    let data_paths = settings.data_paths.clone();
    let owned_tag = tag.to_string();
    tokio::task::spawn_blocking(move || claim_tag_folders(&data_paths, &owned_tag)).await??;
    let mut files = Vec::new();
    let mut failure = None;
    for database in planned {
        let Planned {
            data_path_index,
            live_path,
            snapshot_path: Some(snapshot_path),
        } = database
        else {
            continue;
        };
        let copied = tokio::task::spawn_blocking(move || {
            copy_database(data_path_index, live_path, snapshot_path, PAGES_PER_STEP)
        })
        .await;
        match copied {
            Ok(Ok(file)) => files.push(file),
            Ok(Err(error)) => {
                failure = Some(error);
                break;
            }
            Err(error) => {
                failure = Some(error.into());
                break;
            }
        }
    }
    match failure {
        None => Ok(files),
        Some(error) => {
            let data_paths = settings.data_paths.clone();
            let tag = tag.to_string();
            tokio::task::spawn_blocking(move || discard_tag_folders(&data_paths, &tag)).await?;
            Err(error)
        }
    }
}

/// Lists the copies of an existing `sqlite` snapshot.
pub(crate) fn load(
    settings: &Settings,
    databases: &[PathBuf],
    tag: &str,
) -> Result<Vec<SnapshotFile>, SnapshotError> {
    let mut found = false;
    for data_path in &settings.data_paths {
        found |= is_folder(&tag_folder(data_path, tag))?;
    }
    if !found {
        return Err(SnapshotError::NotFound {
            tag: tag.to_string(),
        });
    }
    plan(settings, databases, Some(tag))?
        .into_iter()
        .filter_map(|planned| {
            let snapshot_path = planned.snapshot_path?;
            Some(describe_listed(
                planned.data_path_index,
                planned.live_path,
                snapshot_path,
            ))
        })
        .collect()
}

/// The configured databases as they are now.
pub(crate) fn walk_live(
    settings: &Settings,
    databases: &[PathBuf],
) -> Result<Vec<SnapshotFile>, SnapshotError> {
    plan(settings, databases, None)?
        .into_iter()
        .map(|planned| {
            describe_listed(
                planned.data_path_index,
                planned.live_path.clone(),
                planned.live_path,
            )
        })
        .collect()
}

/// Copies the database at `live_path` to `snapshot_path` (which must not exist) and describes
/// the copy.
fn copy_database(
    data_path_index: usize,
    live_path: PathBuf,
    snapshot_path: PathBuf,
    pages_per_step: i32,
) -> Result<SnapshotFile, SnapshotError> {
    let live_metadata = fs::metadata(&live_path)
        .map_err(|source| SnapshotError::file("read metadata", &live_path, source))?;
    if !live_metadata.is_file() {
        return Err(SnapshotError::file(
            "copy sqlite database",
            &live_path,
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"),
        ));
    }
    if let Some(parent) = snapshot_path.parent() {
        fs::create_dir_all(parent)
            .map_err(|source| SnapshotError::file("create folder", parent, source))?;
    }
    let report = backup(&live_path, &snapshot_path, pages_per_step).map_err(|source| {
        SnapshotError::Database {
            database: live_path.clone(),
            source,
        }
    })?;
    tracing::info!(
        database = %live_path.display(),
        pages = report.pages,
        restarts = report.restarts,
        wal = report.wal,
        "sqlite database copied"
    );
    let mode = live_metadata.permissions().mode() & 0o7777;
    fs::set_permissions(&snapshot_path, fs::Permissions::from_mode(mode))
        .map_err(|source| SnapshotError::file("set permissions", &snapshot_path, source))?;
    describe_listed(data_path_index, live_path, snapshot_path)
}

/// Runs the online backup of `live_path` into a new database at `snapshot_path`.
pub(crate) fn backup(
    live_path: &Path,
    snapshot_path: &Path,
    pages_per_step: i32,
) -> rusqlite::Result<CopyReport> {
    let source = Connection::open_with_flags(
        live_path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    source.busy_timeout(BUSY_TIMEOUT)?;
    let journal_mode: String = source.query_row("PRAGMA journal_mode", [], |row| row.get(0))?;
    let wal = journal_mode.eq_ignore_ascii_case("wal");
    let mut destination = Connection::open_with_flags(
        snapshot_path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    let report = if wal {
        // Pin one snapshot of the database for the whole copy: a deferred transaction starts
        // reading at its first statement.
        source.execute_batch("BEGIN")?;
        let copied = source
            .query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(()))
            .and_then(|()| run_steps(&source, &mut destination, pages_per_step, true));
        let ended = source.execute_batch("COMMIT");
        let report = copied?;
        ended?;
        report
    } else {
        run_steps(&source, &mut destination, pages_per_step, false)?
    };
    destination.close().map_err(|(_, error)| error)?;
    source.close().map_err(|(_, error)| error)?;
    Ok(CopyReport { wal, ..report })
}

fn run_steps(
    source: &Connection,
    destination: &mut Connection,
    pages_per_step: i32,
    snapshot_held: bool,
) -> rusqlite::Result<CopyReport> {
    let backup = Backup::new(source, destination)?;
    let mut restarts = 0;
    let mut copied_before = 0;
    let mut busy_steps = 0;
    loop {
        let pages = if snapshot_held || restarts < MAX_RESTARTS {
            pages_per_step
        } else {
            -1
        };
        match backup.step(pages)? {
            StepResult::Done => {
                return Ok(CopyReport {
                    pages: backup.progress().pagecount,
                    restarts,
                    wal: snapshot_held,
                });
            }
            StepResult::More => {
                busy_steps = 0;
                let progress = backup.progress();
                let copied = progress.pagecount - progress.remaining;
                if copied <= copied_before {
                    restarts += 1;
                    tracing::debug!(
                        restarts,
                        "the database changed during the copy, which restarted"
                    );
                }
                copied_before = copied;
                if !snapshot_held {
                    thread::sleep(PAUSE_BETWEEN_STEPS);
                }
            }
            // Busy, Locked, or a result a later rusqlite adds: wait and try again, a while.
            _ => {
                busy_steps += 1;
                if busy_steps > MAX_BUSY_STEPS {
                    return Err(rusqlite::Error::SqliteFailure(
                        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
                        Some("the database stayed locked during the copy".into()),
                    ));
                }
                thread::sleep(PAUSE_BETWEEN_STEPS);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    fn make_database(path: &Path, journal_mode: &str, rows: i64) -> Connection {
        let connection = Connection::open(path).expect("open");
        connection
            .busy_timeout(Duration::from_secs(30))
            .expect("busy timeout");
        let mode: String = connection
            .query_row(
                &format!("PRAGMA journal_mode = {journal_mode}"),
                [],
                |row| row.get(0),
            )
            .expect("journal mode");
        assert_eq!(mode, journal_mode);
        connection
            .execute_batch(
                "CREATE TABLE t (id INTEGER PRIMARY KEY, payload BLOB NOT NULL);
                 BEGIN;",
            )
            .expect("schema");
        for _ in 0..rows {
            connection
                .execute("INSERT INTO t (payload) VALUES (randomblob(200))", [])
                .expect("insert");
        }
        connection.execute_batch("COMMIT").expect("commit");
        connection
    }

    /// Copies while a writer commits one row after another, pausing `writer_pause` between
    /// commits; returns the copy's report and row count.
    fn copy_under_writes(journal_mode: &str, writer_pause: Duration) -> (CopyReport, i64) {
        let folder = tempfile::tempdir().expect("temp dir");
        let live = folder.path().join("live.db");
        let copy = folder.path().join("copy.db");
        let writer = make_database(&live, journal_mode, 5_000);
        let stop = Arc::new(AtomicBool::new(false));
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let writer = {
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                let mut written = 0;
                while !stop.load(Ordering::Relaxed) {
                    writer
                        .execute("INSERT INTO t (payload) VALUES (randomblob(200))", [])
                        .expect("insert during copy");
                    written += 1;
                    if written == 10 {
                        let _ = started_tx.send(());
                    }
                    thread::sleep(writer_pause);
                }
                writer
            })
        };
        started_rx.recv().expect("writer started");
        let report = backup(&live, &copy, 16).expect("copy");
        stop.store(true, Ordering::Relaxed);
        let writer = writer.join().expect("writer thread");
        let end: i64 = writer
            .query_row("SELECT count(*) FROM t", [], |row| row.get(0))
            .expect("count");
        let copied = Connection::open(&copy).expect("open copy");
        let check: String = copied
            .query_row("PRAGMA integrity_check", [], |row| row.get(0))
            .expect("integrity check");
        assert_eq!(check, "ok");
        let rows: i64 = copied
            .query_row("SELECT count(*) FROM t", [], |row| row.get(0))
            .expect("count copy");
        assert!((5_010..=end).contains(&rows), "{rows} of {end}");
        (report, rows)
    }

    #[test]
    fn a_wal_database_is_copied_from_one_snapshot_without_restarting() {
        let (report, _) = copy_under_writes("wal", Duration::ZERO);
        assert!(report.wal);
        assert_eq!(report.restarts, 0);
        assert!(report.pages > 16, "{report:?}");
    }

    #[test]
    fn a_rollback_journal_database_finishes_despite_a_steady_writer() {
        // In rollback-journal mode a writer committing back to back with no pause starves
        // every reader (SQLite gives pending writers priority), the copy included; a busy
        // application still leaves gaps.
        let (report, _) = copy_under_writes("delete", Duration::from_millis(1));
        assert!(!report.wal);
        // Restarted copies end in one step that cannot restart.
        assert!(report.restarts <= MAX_RESTARTS, "{report:?}");
    }
}
