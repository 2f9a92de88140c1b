//! The agent's local journal: what it already knows, so repeated work is skipped.
//!
//! Two memories, kept in `<state dir>/journal.db` (SQLite, WAL, busy timeout):
//! - File hashes by `(live path, inode, size, mtime)`: an incremental backup does not re-read
//!   a file whose identity has not changed. One row per live path; any change of inode, size
//!   or mtime misses. (Like every such cache it trusts that content does not change without
//!   the mtime changing; files read from snapshots do not.) After a full backup, the rows of
//!   files gone from the node are forgotten ([`Journal::forget_files_except`]), so the journal
//!   stays the size of the node's file set, not of every file it ever held.
//! - Objects per location: content hashes this agent uploaded to, or verified in, a location,
//!   so a resumed or incremental run does not upload them again. This is only as true as the
//!   location: whoever deletes objects from a location (a purge) must make the agents forget
//!   them ([`Journal::forget_objects`], [`Journal::forget_location`]), or a later incremental
//!   backup would reference objects that are gone.
//! - Packed contents per location: where in which pack (a small file's content stored with
//!   others in one object) a content lies, so an unchanged small file is entered in a manifest
//!   by its place in the pack without being read. The pack itself is a known object; forgetting
//!   a pack forgets the contents in it.
//!
//! The journal is a cache: losing it costs re-reading and re-checking, never correctness.
//! Writes come in batches (a backup records thousands of rows), each batch in one transaction.
//! [`Journal`] is a cheap, cloneable handle; its methods are async and run SQLite on
//! `spawn_blocking`, one call at a time per handle family.

use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use coffer_format::{ContentHash, PackSlice};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

/// Name of the journal's file in the state directory.
pub const JOURNAL_FILE: &str = "journal.db";

/// Schema version, kept in `PRAGMA user_version`.
const SCHEMA_VERSION: i64 = 2;

/// How long a statement waits for another connection's lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS file_hashes (
    path BLOB PRIMARY KEY NOT NULL,
    inode INTEGER NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    hash BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS known_objects (
    location_id TEXT NOT NULL,
    hash BLOB NOT NULL,
    PRIMARY KEY (location_id, hash)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS packed_contents (
    location_id TEXT NOT NULL,
    hash BLOB NOT NULL,
    pack BLOB NOT NULL,
    pack_offset INTEGER NOT NULL,
    PRIMARY KEY (location_id, hash)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS packed_contents_by_pack ON packed_contents (location_id, pack);
";

/// What identifies one version of a file: any change means its content may have changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileIdentity {
    /// Inode number.
    pub inode: u64,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
}

/// What the journal remembers of one version of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Remembered {
    /// Its content hash.
    pub hash: ContentHash,
    /// Whether the content is known to be in the location asked about (as an object of its
    /// own, or packed).
    pub object_known: bool,
    /// Where it lies when the location holds it only packed.
    pub packed: Option<PackSlice>,
}

/// The objects the journal knows one location holds, sorted for binary search (32 bytes each).
#[derive(Debug, Clone, Default)]
pub struct KnownObjects(Vec<ContentHash>);

impl KnownObjects {
    /// Whether the location holds `hash`, as far as the journal knows.
    pub fn contains(&self, hash: &ContentHash) -> bool {
        self.0.binary_search(hash).is_ok()
    }

    /// How many objects are known.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A file's hash to remember.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashRecord {
    /// The file's live path (the key: one row per path).
    pub live_path: PathBuf,
    /// The version of the file that was hashed.
    pub identity: FileIdentity,
    /// Its content hash.
    pub hash: ContentHash,
}

/// Why the journal could not be opened, read or written.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The state directory could not be created.
    #[error("create folder {path}: {source}")]
    CreateFolder {
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// SQLite could not open or set up the journal.
    #[error("open journal {path}: {source}")]
    Open {
        /// The journal's file.
        path: PathBuf,
        /// The underlying error.
        source: rusqlite::Error,
    },
    /// The journal was written by a newer agent.
    #[error(
        "journal {path} has schema version {found}, newer than this agent's {SCHEMA_VERSION}; remove it to start afresh"
    )]
    TooNew {
        /// The journal's file.
        path: PathBuf,
        /// The version found.
        found: i64,
    },
    /// A statement failed.
    #[error("{action}: {source}")]
    Query {
        /// What was being done, for example `record hashes`.
        action: &'static str,
        /// The underlying error.
        source: rusqlite::Error,
    },
    /// A stored hash is not 32 bytes.
    #[error("journal holds a malformed hash for {what}")]
    Corrupt {
        /// The row's key.
        what: String,
    },
    /// What the journal was to learn could not be read.
    #[error("{reason}")]
    Input {
        /// Why.
        reason: String,
    },
    /// The blocking task running the statement panicked.
    #[error("journal task: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Handle to the agent's journal; clones share one connection.
#[derive(Debug, Clone)]
pub struct Journal {
    connection: Arc<Mutex<Connection>>,
    /// Read-only connections for lookups from several threads at once (WAL lets readers run
    /// beside each other and the writer), opened as needed and kept.
    readers: Arc<Mutex<Vec<Connection>>>,
    path: Arc<PathBuf>,
}

impl Journal {
    /// Opens (creating when missing) `<state_dir>/journal.db`.
    ///
    /// Fails when the folder or database cannot be created or opened, or the journal was
    /// written by a newer agent.
    pub async fn open(state_dir: &Path) -> Result<Self, JournalError> {
        Self::open_file(state_dir.join(JOURNAL_FILE)).await
    }

    /// Opens (creating when missing) the journal at `path`.
    ///
    /// Fails as [`Journal::open`] does.
    pub async fn open_file(path: PathBuf) -> Result<Self, JournalError> {
        let opened_path = path.clone();
        let connection =
            tokio::task::spawn_blocking(move || open_connection(&opened_path)).await??;
        Ok(Self {
            connection: Arc::new(Mutex::new(connection)),
            readers: Arc::new(Mutex::new(Vec::new())),
            path: Arc::new(path),
        })
    }

    /// The journal's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The remembered hash of the file at `live_path`, if the journal has one for exactly this
    /// inode, size and mtime.
    ///
    /// Fails when the journal cannot be read.
    pub async fn lookup_hash(
        &self,
        live_path: &Path,
        inode: u64,
        size: u64,
        mtime_ns: i64,
    ) -> Result<Option<ContentHash>, JournalError> {
        let identity = FileIdentity {
            inode,
            size,
            mtime_ns,
        };
        // No location: only the hash is asked for.
        let mut found = self
            .lookup_hashes("", vec![(live_path.to_path_buf(), identity)])
            .await?;
        Ok(found.pop().flatten().map(|remembered| remembered.hash))
    }

    /// [`Journal::lookup_hash`] for many files at once, with whether each hash's object is
    /// known to be in the location `location_id` ([`Journal::object_known`]); the answers are
    /// in the order asked.
    ///
    /// Fails when the journal cannot be read.
    pub async fn lookup_hashes(
        &self,
        location_id: &str,
        files: Vec<(PathBuf, FileIdentity)>,
    ) -> Result<Vec<Option<Remembered>>, JournalError> {
        let location_id = location_id.to_string();
        self.with_connection(move |connection| lookup_in(connection, &location_id, &files))
            .await
    }

    /// The remembered hashes of many files (as [`Journal::lookup_hash`]), for a caller that is
    /// on a blocking thread already (a snapshot walking the data paths), on a read-only
    /// connection of its own: callers on several threads look up at the same time. Pair it
    /// with [`Journal::known_objects_blocking`] to learn which objects the location holds.
    ///
    /// Fails when the journal cannot be read.
    pub fn file_hashes_blocking(
        &self,
        files: &[(PathBuf, FileIdentity)],
    ) -> Result<Vec<Option<ContentHash>>, JournalError> {
        self.with_reader(|reader| file_hashes_in(reader, files))
    }

    /// [`Journal::file_hashes_blocking`] for files that are all in `folder` (directly): a
    /// folder of many files is read as one range of the journal's rows, in order, rather than
    /// a lookup per file (on a cold cache each lookup was a page read of its own: 14 µs a
    /// file).
    ///
    /// Fails when the journal cannot be read.
    pub fn folder_file_hashes_blocking(
        &self,
        folder: &Path,
        files: &[(PathBuf, FileIdentity)],
    ) -> Result<Vec<Option<ContentHash>>, JournalError> {
        if files.len() < FOLDER_SCAN_FILES {
            return self.file_hashes_blocking(files);
        }
        self.with_reader(|reader| folder_file_hashes_in(reader, folder, files))
    }

    /// Every content the journal knows the location `location_id` holds (as an object or
    /// packed), read in one pass, for
    /// a caller on a blocking thread that asks about many files: looking each object up in the
    /// journal meant a random page read per file (a snapshot of 100 000 unchanged files read
    /// 900 MiB through the journal's file), where one pass reads the location's rows once.
    ///
    /// Fails when the journal cannot be read.
    pub fn known_objects_blocking(&self, location_id: &str) -> Result<KnownObjects, JournalError> {
        self.with_reader(|reader| {
            // Each table read in the order of its key and the two merged here: a `UNION` sorted
            // them in a temporary index of its own, which at a million objects made the agent's
            // incremental backups 16 MiB larger.
            let objects = sorted_hashes(
                reader,
                "SELECT hash FROM known_objects WHERE location_id = ?1 ORDER BY hash",
                location_id,
            )?;
            let packed = sorted_hashes(
                reader,
                "SELECT hash FROM packed_contents WHERE location_id = ?1 ORDER BY hash",
                location_id,
            )?;
            if packed.is_empty() {
                return Ok(KnownObjects(objects));
            }
            let mut hashes = Vec::with_capacity(objects.len() + packed.len());
            let (mut left, mut right) = (
                objects.into_iter().peekable(),
                packed.into_iter().peekable(),
            );
            loop {
                let next = match (left.peek(), right.peek()) {
                    (Some(a), Some(b)) if a < b => left.next(),
                    (Some(a), Some(b)) if a > b => right.next(),
                    (Some(_), Some(_)) => {
                        right.next();
                        left.next()
                    }
                    (Some(_), None) => left.next(),
                    (None, Some(_)) => right.next(),
                    (None, None) => break,
                };
                hashes.extend(next);
            }
            Ok(KnownObjects(hashes))
        })
    }

    /// Runs `work` on a pooled read-only connection (opened when none is free).
    fn with_reader<T>(
        &self,
        work: impl FnOnce(&mut Connection) -> Result<T, JournalError>,
    ) -> Result<T, JournalError> {
        // A reader of its own, so that the threads of a snapshot's walk look up side by side
        // instead of one after the other on the one writing connection.
        let pooled = self
            .readers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        let mut reader = match pooled {
            Some(reader) => reader,
            None => open_reader(&self.path)?,
        };
        let result = work(&mut reader);
        self.readers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(reader);
        result
    }

    /// Remembers the hash of one version of the file at `live_path`, replacing what was
    /// remembered for that path.
    ///
    /// Fails when the journal cannot be written.
    pub async fn record_hash(
        &self,
        live_path: &Path,
        inode: u64,
        size: u64,
        mtime_ns: i64,
        hash: ContentHash,
    ) -> Result<(), JournalError> {
        self.record_hashes(vec![HashRecord {
            live_path: live_path.to_path_buf(),
            identity: FileIdentity {
                inode,
                size,
                mtime_ns,
            },
            hash,
        }])
        .await
    }

    /// [`Journal::record_hash`] for many files, in one transaction.
    ///
    /// Fails when the journal cannot be written; then none of them is recorded.
    pub async fn record_hashes(&self, records: Vec<HashRecord>) -> Result<(), JournalError> {
        if records.is_empty() {
            return Ok(());
        }
        self.with_connection(move |connection| {
            let transaction = connection.transaction().map_err(query("record hashes"))?;
            {
                let mut statement = transaction
                    .prepare_cached(
                        "INSERT INTO file_hashes (path, inode, size, mtime_ns, hash)
                         VALUES (?1, ?2, ?3, ?4, ?5)
                         ON CONFLICT (path) DO UPDATE SET
                             inode = excluded.inode, size = excluded.size,
                             mtime_ns = excluded.mtime_ns, hash = excluded.hash",
                    )
                    .map_err(query("record hashes"))?;
                for record in &records {
                    statement
                        .execute(params![
                            path_key(&record.live_path),
                            to_sql_u64(record.identity.inode),
                            to_sql_u64(record.identity.size),
                            record.identity.mtime_ns,
                            &record.hash.0[..]
                        ])
                        .map_err(query("record hashes"))?;
                }
            }
            transaction.commit().map_err(query("record hashes"))
        })
        .await
    }

    /// Whether this agent uploaded `hash` to, or verified it in, the location.
    ///
    /// Fails when the journal cannot be read.
    pub async fn object_known(
        &self,
        location_id: &str,
        hash: &ContentHash,
    ) -> Result<bool, JournalError> {
        let mut known = self.objects_known(location_id, vec![*hash]).await?;
        Ok(known.pop().unwrap_or(false))
    }

    /// [`Journal::object_known`] for many hashes; the answers are in the order asked.
    ///
    /// Fails when the journal cannot be read.
    pub async fn objects_known(
        &self,
        location_id: &str,
        hashes: Vec<ContentHash>,
    ) -> Result<Vec<bool>, JournalError> {
        let location_id = location_id.to_string();
        self.with_connection(move |connection| {
            let transaction = connection.transaction().map_err(query("look up objects"))?;
            let mut statement = transaction
                .prepare_cached(
                    "SELECT EXISTS (SELECT 1 FROM known_objects WHERE location_id = ?1 AND hash = ?2)",
                )
                .map_err(query("look up objects"))?;
            hashes
                .iter()
                .map(|hash| {
                    statement
                        .query_row(params![location_id, &hash.0[..]], |row| row.get(0))
                        .map_err(query("look up objects"))
                })
                .collect()
        })
        .await
    }

    /// Remembers that the location holds `hash`.
    ///
    /// Fails when the journal cannot be written.
    pub async fn record_object(
        &self,
        location_id: &str,
        hash: ContentHash,
    ) -> Result<(), JournalError> {
        self.record_objects(location_id, vec![hash]).await
    }

    /// [`Journal::record_object`] for many hashes, in one transaction.
    ///
    /// Fails when the journal cannot be written; then none of them is recorded.
    pub async fn record_objects(
        &self,
        location_id: &str,
        hashes: Vec<ContentHash>,
    ) -> Result<(), JournalError> {
        if hashes.is_empty() {
            return Ok(());
        }
        let location_id = location_id.to_string();
        self.with_connection(move |connection| {
            let transaction = connection.transaction().map_err(query("record objects"))?;
            {
                let mut statement = transaction
                    .prepare_cached(
                        "INSERT OR IGNORE INTO known_objects (location_id, hash) VALUES (?1, ?2)",
                    )
                    .map_err(query("record objects"))?;
                for hash in &hashes {
                    statement
                        .execute(params![location_id, &hash.0[..]])
                        .map_err(query("record objects"))?;
                }
            }
            transaction.commit().map_err(query("record objects"))
        })
        .await
    }

    /// Remembers where in which packs the location holds these contents (the packs durable and
    /// recorded with [`Journal::record_objects`]).
    ///
    /// Fails when the journal cannot be written; then none of them is recorded.
    pub async fn record_packed(
        &self,
        location_id: &str,
        contents: Vec<(ContentHash, PackSlice)>,
    ) -> Result<(), JournalError> {
        if contents.is_empty() {
            return Ok(());
        }
        let location_id = location_id.to_string();
        self.with_connection(move |connection| {
            let transaction = connection.transaction().map_err(query("record packed"))?;
            {
                let mut statement = transaction
                    .prepare_cached(
                        "INSERT OR REPLACE INTO packed_contents (location_id, hash, pack, pack_offset)
                         VALUES (?1, ?2, ?3, ?4)",
                    )
                    .map_err(query("record packed"))?;
                for (hash, slice) in &contents {
                    let offset = i64::try_from(slice.offset).map_err(|_| JournalError::Input {
                        reason: format!("pack offset {} is out of range", slice.offset),
                    })?;
                    statement
                        .execute(params![location_id, &hash.0[..], &slice.pack.0[..], offset])
                        .map_err(query("record packed"))?;
                }
            }
            transaction.commit().map_err(query("record packed"))
        })
        .await
    }

    /// Where the location holds each of these contents when it holds it only packed (`None`
    /// for one it holds as an object of its own, or not at all, as far as the journal knows);
    /// in the order asked.
    ///
    /// Fails when the journal cannot be read.
    pub async fn packed_slices(
        &self,
        location_id: &str,
        hashes: Vec<ContentHash>,
    ) -> Result<Vec<Option<PackSlice>>, JournalError> {
        if hashes.is_empty() {
            return Ok(Vec::new());
        }
        let location_id = location_id.to_string();
        self.with_connection(move |connection| {
            let transaction = connection.transaction().map_err(query("look up packed"))?;
            let mut statement = transaction
                .prepare_cached(
                    "SELECT p.pack, p.pack_offset FROM packed_contents AS p
                     WHERE p.location_id = ?1 AND p.hash = ?2 AND NOT EXISTS
                       (SELECT 1 FROM known_objects AS k WHERE k.location_id = ?1 AND k.hash = ?2)",
                )
                .map_err(query("look up packed"))?;
            hashes
                .iter()
                .map(|hash| {
                    let found: Option<(Vec<u8>, i64)> = statement
                        .query_row(params![location_id, &hash.0[..]], |row| {
                            Ok((row.get(0)?, row.get(1)?))
                        })
                        .optional()
                        .map_err(query("look up packed"))?;
                    found
                        .map(|(pack, offset)| to_slice(pack, offset, || hash.to_hex()))
                        .transpose()
                })
                .collect()
        })
        .await
    }

    /// Forgets that the location holds these objects (they were deleted, or found missing);
    /// returns how many were remembered.
    ///
    /// Fails when the journal cannot be written.
    pub async fn forget_objects(
        &self,
        location_id: &str,
        hashes: Vec<ContentHash>,
    ) -> Result<u64, JournalError> {
        let location_id = location_id.to_string();
        self.with_connection(move |connection| {
            let transaction = connection.transaction().map_err(query("forget objects"))?;
            let mut forgotten = 0;
            {
                let mut statement = transaction
                    .prepare_cached(
                        "DELETE FROM known_objects WHERE location_id = ?1 AND hash = ?2",
                    )
                    .map_err(query("forget objects"))?;
                // A forgotten pack takes the contents in it along.
                let mut packed = transaction
                    .prepare_cached(
                        "DELETE FROM packed_contents WHERE location_id = ?1 AND pack = ?2",
                    )
                    .map_err(query("forget objects"))?;
                for hash in &hashes {
                    forgotten += statement
                        .execute(params![location_id, &hash.0[..]])
                        .map_err(query("forget objects"))?;
                    packed
                        .execute(params![location_id, &hash.0[..]])
                        .map_err(query("forget objects"))?;
                }
            }
            transaction.commit().map_err(query("forget objects"))?;
            Ok(forgotten as u64)
        })
        .await
    }

    /// Forgets everything remembered about the location (it was removed, emptied or
    /// replaced); returns how many objects were remembered.
    ///
    /// Fails when the journal cannot be written.
    pub async fn forget_location(&self, location_id: &str) -> Result<u64, JournalError> {
        let location_id = location_id.to_string();
        self.with_connection(move |connection| {
            let transaction = connection.transaction().map_err(query("forget location"))?;
            let forgotten = transaction
                .execute(
                    "DELETE FROM known_objects WHERE location_id = ?1",
                    params![location_id],
                )
                .map_err(query("forget location"))?;
            transaction
                .execute(
                    "DELETE FROM packed_contents WHERE location_id = ?1",
                    params![location_id],
                )
                .map_err(query("forget location"))?;
            transaction.commit().map_err(query("forget location"))?;
            Ok(forgotten as u64)
        })
        .await
    }

    /// Forgets the hash of every file not in `present`, the complete file set of a snapshot
    /// (files deleted since they were hashed, or no longer snapshotted); returns how many were
    /// forgotten. Without it the journal would keep a row for every file a database ever wrote
    /// and then removed (every compacted SSTable).
    ///
    /// Fails when the journal cannot be written; then nothing is forgotten.
    pub async fn forget_files_except(&self, present: Vec<PathBuf>) -> Result<u64, JournalError> {
        self.forget_files_except_listed(std::iter::once(Ok(present)))
            .await
    }

    /// [`Journal::forget_files_except`] for a file set read in chunks as it is needed (a
    /// snapshot's list of a million files), never held whole. A chunk that cannot be read
    /// (`Err`, its reason) fails the call, and nothing is forgotten: a set cut short would
    /// forget files that are there.
    pub async fn forget_files_except_listed(
        &self,
        present: impl Iterator<Item = Result<Vec<PathBuf>, String>> + Send + 'static,
    ) -> Result<u64, JournalError> {
        self.with_connection(move |connection| {
            let transaction = connection.transaction().map_err(query("forget files"))?;
            transaction
                .execute_batch(
                    "CREATE TEMP TABLE IF NOT EXISTS present_files (path BLOB PRIMARY KEY)
                         WITHOUT ROWID;
                     DELETE FROM temp.present_files;",
                )
                .map_err(query("forget files"))?;
            {
                let mut insert = transaction
                    .prepare_cached("INSERT OR IGNORE INTO temp.present_files (path) VALUES (?1)")
                    .map_err(query("forget files"))?;
                for chunk in present {
                    let chunk = chunk.map_err(|reason| JournalError::Input { reason })?;
                    for path in &chunk {
                        insert
                            .execute(params![path_key(path)])
                            .map_err(query("forget files"))?;
                    }
                }
            }
            let forgotten = transaction
                .execute(
                    "DELETE FROM file_hashes
                     WHERE path NOT IN (SELECT path FROM temp.present_files)",
                    [],
                )
                .map_err(query("forget files"))?;
            transaction
                .execute("DELETE FROM temp.present_files", [])
                .map_err(query("forget files"))?;
            transaction.commit().map_err(query("forget files"))?;
            Ok(forgotten as u64)
        })
        .await
    }

    /// Runs `work` with the connection on a blocking thread.
    async fn with_connection<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection) -> Result<T, JournalError> + Send + 'static,
    ) -> Result<T, JournalError> {
        let connection = Arc::clone(&self.connection);
        tokio::task::spawn_blocking(move || {
            // A panic while holding the lock dropped its transaction (rolled back): the
            // connection is still sound.
            let mut connection = connection.lock().unwrap_or_else(PoisonError::into_inner);
            work(&mut connection)
        })
        .await?
    }
}

/// The remembered hash of each file, with whether its object is known to be in `location_id`.
fn lookup_in(
    connection: &mut Connection,
    location_id: &str,
    files: &[(PathBuf, FileIdentity)],
) -> Result<Vec<Option<Remembered>>, JournalError> {
    // One read transaction for all: each statement outside one would take (and drop) its own
    // snapshot of the database. One statement per file answers both questions.
    let transaction = connection.transaction().map_err(query("look up hashes"))?;
    let mut statement = transaction
        .prepare_cached(
            "SELECT f.hash, EXISTS (SELECT 1 FROM known_objects AS k
                                    WHERE k.location_id = ?5 AND k.hash = f.hash),
                    p.pack, p.pack_offset
             FROM file_hashes AS f
             LEFT JOIN packed_contents AS p ON p.location_id = ?5 AND p.hash = f.hash
             WHERE f.path = ?1 AND f.inode = ?2 AND f.size = ?3 AND f.mtime_ns = ?4",
        )
        .map_err(query("look up hashes"))?;
    files
        .iter()
        .map(|(path, identity)| {
            let found: Option<LookupRow> = statement
                .query_row(
                    params![
                        path_key(path),
                        to_sql_u64(identity.inode),
                        to_sql_u64(identity.size),
                        identity.mtime_ns,
                        location_id,
                    ],
                    |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
                )
                .optional()
                .map_err(query("look up hashes"))?;
            found
                .map(|(bytes, object_known, pack, offset)| {
                    // An object of its own is read rather than a pack's slice.
                    let packed = match (object_known, pack, offset) {
                        (false, Some(pack), Some(offset)) => {
                            Some(to_slice(pack, offset, || path.display().to_string())?)
                        }
                        _ => None,
                    };
                    Ok(Remembered {
                        hash: to_hash(bytes, || path.display().to_string())?,
                        object_known: object_known || packed.is_some(),
                        packed,
                    })
                })
                .transpose()
        })
        .collect()
}

/// A row of [`lookup_in`]: the file's hash, whether its object is known, and the pack and
/// offset of its content when packed.
type LookupRow = (Vec<u8>, bool, Option<Vec<u8>>, Option<i64>);

/// Folders with fewer files than this are asked about a file at a time: the range of a folder
/// also holds the rows of its subfolders, read and passed over.
const FOLDER_SCAN_FILES: usize = 16;

/// The remembered hash of each file of `folder`, in the order asked, from one range scan of
/// the rows below the folder.
fn folder_file_hashes_in(
    connection: &mut Connection,
    folder: &Path,
    files: &[(PathBuf, FileIdentity)],
) -> Result<Vec<Option<ContentHash>>, JournalError> {
    // Rows below the folder sort between "<folder>/" and "<folder>0" ('0' follows '/').
    let mut low = path_key(folder).to_vec();
    if low.last() != Some(&b'/') {
        low.push(b'/');
    }
    let mut high = low.clone();
    if let Some(last) = high.last_mut() {
        *last = b'0';
    }
    let asked: std::collections::HashMap<&[u8], usize> = files
        .iter()
        .enumerate()
        .map(|(index, (path, _))| (path_key(path), index))
        .collect();
    let mut found = vec![None; files.len()];
    let transaction = connection.transaction().map_err(query("look up hashes"))?;
    let mut statement = transaction
        .prepare_cached(
            "SELECT path, inode, size, mtime_ns, hash FROM file_hashes
             WHERE path >= ?1 AND path < ?2",
        )
        .map_err(query("look up hashes"))?;
    let mut rows = statement
        .query(params![low, high])
        .map_err(query("look up hashes"))?;
    while let Some(row) = rows.next().map_err(query("look up hashes"))? {
        let path: &[u8] = row
            .get_ref(0)
            .and_then(|value| value.as_blob().map_err(rusqlite::Error::from))
            .map_err(query("look up hashes"))?;
        let Some(&index) = asked.get(path) else {
            continue;
        };
        let identity = FileIdentity {
            inode: from_sql_u64(row.get(1).map_err(query("look up hashes"))?),
            size: from_sql_u64(row.get(2).map_err(query("look up hashes"))?),
            mtime_ns: row.get(3).map_err(query("look up hashes"))?,
        };
        if identity == files[index].1 {
            let bytes: Vec<u8> = row.get(4).map_err(query("look up hashes"))?;
            found[index] = Some(to_hash(bytes, || files[index].0.display().to_string())?);
        }
    }
    Ok(found)
}

/// The remembered hash of each file, in the order asked, in one read transaction.
fn file_hashes_in(
    connection: &mut Connection,
    files: &[(PathBuf, FileIdentity)],
) -> Result<Vec<Option<ContentHash>>, JournalError> {
    let transaction = connection.transaction().map_err(query("look up hashes"))?;
    let mut statement = transaction
        .prepare_cached(
            "SELECT hash FROM file_hashes
             WHERE path = ?1 AND inode = ?2 AND size = ?3 AND mtime_ns = ?4",
        )
        .map_err(query("look up hashes"))?;
    files
        .iter()
        .map(|(path, identity)| {
            let found: Option<Vec<u8>> = statement
                .query_row(
                    params![
                        path_key(path),
                        to_sql_u64(identity.inode),
                        to_sql_u64(identity.size),
                        identity.mtime_ns,
                    ],
                    |row| row.get(0),
                )
                .optional()
                .map_err(query("look up hashes"))?;
            found
                .map(|bytes| to_hash(bytes, || path.display().to_string()))
                .transpose()
        })
        .collect()
}

fn open_connection(path: &Path) -> Result<Connection, JournalError> {
    if let Some(folder) = path.parent() {
        std::fs::create_dir_all(folder).map_err(|source| JournalError::CreateFolder {
            path: folder.to_path_buf(),
            source,
        })?;
    }
    let open_error = |source| JournalError::Open {
        path: path.to_path_buf(),
        source,
    };
    let connection = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(open_error)?;
    connection.busy_timeout(BUSY_TIMEOUT).map_err(open_error)?;
    // WAL: readers and the writer do not block each other. NORMAL synchronous: a crash may
    // lose the last transactions, which a cache can afford, but never corrupts the file.
    connection
        .execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;")
        .map_err(open_error)?;
    let version: i64 = connection
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(open_error)?;
    if version > SCHEMA_VERSION {
        return Err(JournalError::TooNew {
            path: path.to_path_buf(),
            found: version,
        });
    }
    connection
        .execute_batch(&format!(
            "BEGIN; {SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
        ))
        .map_err(open_error)?;
    Ok(connection)
}

/// A read-only connection to the journal at `path` (opened, and so created and migrated, by
/// [`open_connection`] first).
fn open_reader(path: &Path) -> Result<Connection, JournalError> {
    let open_error = |source| JournalError::Open {
        path: path.to_path_buf(),
        source,
    };
    let connection = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(open_error)?;
    connection.busy_timeout(BUSY_TIMEOUT).map_err(open_error)?;
    Ok(connection)
}

/// Paths are stored as their raw bytes: Unix paths need not be UTF-8.
fn path_key(path: &Path) -> &[u8] {
    path.as_os_str().as_bytes()
}

/// SQLite integers are signed 64-bit: store the same 64 bits (only equality is ever asked).
fn to_sql_u64(value: u64) -> i64 {
    i64::from_ne_bytes(value.to_ne_bytes())
}

/// The inverse of [`to_sql_u64`].
fn from_sql_u64(value: i64) -> u64 {
    u64::from_ne_bytes(value.to_ne_bytes())
}

fn to_hash(bytes: Vec<u8>, what: impl FnOnce() -> String) -> Result<ContentHash, JournalError> {
    <[u8; 32]>::try_from(bytes.as_slice())
        .map(ContentHash)
        .map_err(|_| JournalError::Corrupt { what: what() })
}

/// The hashes `sql` lists (one column, ordered by it) for `location_id`.
fn sorted_hashes(
    reader: &mut Connection,
    sql: &str,
    location_id: &str,
) -> Result<Vec<ContentHash>, JournalError> {
    let mut statement = reader
        .prepare_cached(sql)
        .map_err(query("list known objects"))?;
    let rows = statement
        .query_map(params![location_id], |row| row.get::<_, Vec<u8>>(0))
        .map_err(query("list known objects"))?;
    let mut hashes = Vec::new();
    for bytes in rows {
        let bytes = bytes.map_err(query("list known objects"))?;
        hashes.push(to_hash(bytes, || {
            format!("an object of location {location_id}")
        })?);
    }
    // Sorted by SQLite's byte order, which is the arrays' order: searchable as it is.
    hashes.shrink_to_fit();
    Ok(hashes)
}

/// A pack slice read back from its columns.
fn to_slice(
    pack: Vec<u8>,
    offset: i64,
    what: impl Fn() -> String,
) -> Result<PackSlice, JournalError> {
    Ok(PackSlice {
        pack: to_hash(pack, &what)?,
        offset: u64::try_from(offset).map_err(|_| JournalError::Corrupt { what: what() })?,
    })
}

fn query(action: &'static str) -> impl Fn(rusqlite::Error) -> JournalError {
    move |source| JournalError::Query { action, source }
}
