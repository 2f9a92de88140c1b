//! The manifests: what a backup holds, per node and as a whole.
//!
//! A **node manifest** (`backups/<backup-id>/nodes/<node-id>.manifest`) lists a node's COMPLETE
//! file set for one backup, so every backup restores on its own. It is one zstd frame of JSON
//! Lines: a header line, then one line per file, sorted by path in byte order (as `LC_ALL=C sort`
//! and SQLite's `ORDER BY` sort), each path once:
//!
//! ```text
//! {"format":"coffer-node-manifest","version":1,"cluster_id":"…","backup_id":"…","node_id":"…","hostname":"db1","data_paths":["/var/lib/scylla/data"],"create_time":"2026-11-21T22:56:00Z","file_count":2,"total_bytes":1234}
//! {"path":"/var/lib/scylla/data/ks/t/md-1-big-Data.db","size":1200,"mode":33188,"mtime_ns":1763765760000000000,"hash":"<64 hex>"}
//! {"path":"/var/lib/scylla/data/ks/t/md-1-big-Index.db","size":34,"mode":33188,"mtime_ns":1763765760000000000,"hash":"<64 hex>"}
//! ```
//!
//! A node may hold millions of files, so [`NodeManifestWriter`] keeps memory bounded: entries may
//! arrive in any order (uploads finish out of order); it sorts them in runs of bounded size that
//! spill to temporary files and merges the runs into the final file, which it then uploads.
//! [`NodeManifestReader`] streams entries back without holding the file.
//!
//! The **backup manifest** (`backups/<backup-id>/backup.json`, [`BackupManifest`]) is pretty JSON
//! and is written LAST: it is the commit point. A backup without it does not exist for restore and
//! is garbage for purge.
//!
//! Invariants: both manifests name their format and version, and readers refuse other formats and
//! newer versions; a node manifest's header counts (`file_count`, `total_bytes`) match its entries;
//! entries are strictly increasing by path.

pub use crate::filter::PathFilter;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::fs::File;
use std::io::{self, BufRead, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use bytes::Bytes;
use futures::{Stream, TryStreamExt};
use opendal::{BufferStream, Operator};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::layout::ContentHash;
use crate::object::{Keyring, SealError, Unsealer};
use crate::storage::StorageError;

/// `format` of a node manifest's header line.
pub const NODE_MANIFEST_FORMAT: &str = "coffer-node-manifest";
/// `format` of a backup manifest.
pub const BACKUP_MANIFEST_FORMAT: &str = "coffer-backup";
/// Version of both manifests this crate writes; it reads this version and older.
pub const MANIFEST_VERSION: u32 = 1;
/// Version of a node manifest with packed entries ([`NodeManifestEntry::packed`]): a reader of
/// version 1 would look for their contents as objects of their own, which do not exist, so
/// such a manifest says it needs a newer reader. One without packed entries stays version 1.
pub const PACKED_NODE_MANIFEST_VERSION: u32 = 2;

/// Entries a [`NodeManifestWriter`] keeps in memory before spilling a sorted run (about 30 MiB).
const DEFAULT_RUN_ENTRIES: usize = 100_000;
/// zstd level of node manifests: JSON shrinks about 5x. Level 1 over 3: on 100 000 entries it
/// wrote the manifest in 124 ms instead of 183, and no larger (3.8 MB against 4.4).
const MANIFEST_ZSTD_LEVEL: i32 = 1;
/// Size of the slices of compressed input fed to the decoder at a time, which bounds the
/// decompressed text waiting to be parsed.
const DECODE_SLICE: usize = 64 * 1024;

/// Why a manifest could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The storage failed; [`StorageError::is_retryable`] says whether another try can help.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A local temporary file failed.
    #[error("{action}: {source}")]
    Io {
        /// What was being done, such as `spill manifest entries to a temporary file`.
        action: &'static str,
        source: io::Error,
    },
    /// The manifest is not readable: not zstd, not JSON of the expected shape, out of order.
    #[error("manifest {path}: line {line}: {reason}")]
    Malformed {
        /// Path of the manifest in storage.
        path: String,
        /// 1-based line number (0 when the problem is not on one line).
        line: u64,
        reason: String,
    },
    /// The manifest names another format or a newer version.
    #[error(
        "manifest {path} is {format:?} version {version}; this Coffer reads {expected:?} up to version {supported}"
    )]
    Unsupported {
        /// Path of the manifest in storage.
        path: String,
        /// Format found.
        format: String,
        /// Version found.
        version: u32,
        /// Format expected.
        expected: &'static str,
        /// Newest version of it this crate reads.
        supported: u32,
    },
    /// A manifest being written was given something it cannot hold.
    #[error("invalid manifest: {0}")]
    Invalid(String),
    /// The manifest is sealed with a key this agent lacks, in the clear in an encrypted
    /// location, or sealed and altered since.
    #[error("manifest {path}: {source}")]
    Sealed { path: String, source: SealError },
}

impl ManifestError {
    fn io(action: &'static str) -> impl FnOnce(io::Error) -> Self {
        move |source| Self::Io { action, source }
    }
}

/// The current time as the manifests write it: RFC 3339 in UTC with a `Z`, to the second.
pub fn format_time(time: SystemTime) -> String {
    // Milliseconds: point-in-time restores tell backups apart that started within one second.
    humantime::format_rfc3339_millis(time).to_string()
}

/// Parses a manifest time (RFC 3339 in UTC with a `Z`, optionally with fractional seconds).
pub fn parse_time(text: &str) -> Result<SystemTime, String> {
    humantime::parse_rfc3339(text)
        .map_err(|error| format!("{text:?} is not an RFC 3339 UTC time: {error}"))
}

/// First line of a node manifest. Its ids repeat what the manifest's path says
/// ([`ClusterLayout::node_manifest`](crate::ClusterLayout::node_manifest)), so that a manifest
/// read on its own (rebuilding a catalog from a location) still names its cluster, backup and node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeManifestHeader {
    /// Always [`NODE_MANIFEST_FORMAT`].
    pub format: String,
    /// [`MANIFEST_VERSION`] when written by this crate.
    pub version: u32,
    pub cluster_id: Uuid,
    pub backup_id: Uuid,
    pub node_id: Uuid,
    /// The node's host name when the backup was taken.
    pub hostname: String,
    /// Absolute paths of the node's data folders; every entry lies below one of them.
    pub data_paths: Vec<String>,
    /// When the manifest was written (RFC 3339 UTC).
    pub create_time: String,
    /// Number of entries (set by the writer).
    pub file_count: u64,
    /// Sum of the entries' sizes (set by the writer).
    pub total_bytes: u64,
}

impl NodeManifestHeader {
    /// A header for a manifest written now; the writer fills in the counts.
    pub fn new(
        cluster_id: Uuid,
        backup_id: Uuid,
        node_id: Uuid,
        hostname: impl Into<String>,
        data_paths: Vec<String>,
    ) -> Self {
        Self {
            format: NODE_MANIFEST_FORMAT.into(),
            version: MANIFEST_VERSION,
            cluster_id,
            backup_id,
            node_id,
            hostname: hostname.into(),
            data_paths,
            create_time: format_time(SystemTime::now()),
            file_count: 0,
            total_bytes: 0,
        }
    }
}

/// One file of a node manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeManifestEntry {
    /// Absolute path of the file on the node (UTF-8).
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Unix mode bits (type and permissions, as `st_mode`).
    pub mode: u32,
    /// Modification time, nanoseconds since the Unix epoch (negative before it).
    pub mtime_ns: i64,
    /// BLAKE3 of the content: the name of its object, unless it is packed.
    pub hash: ContentHash,
    /// Where the content lies when it is stored in a pack (small files in object storage)
    /// rather than as an object of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packed: Option<PackSlice>,
}

impl NodeManifestEntry {
    /// The object that holds the content: its pack, or the object named by its hash.
    pub fn object(&self) -> ContentHash {
        self.packed.map_or(self.hash, |slice| slice.pack)
    }
}

/// Where a packed content lies: a pack is an object (named by the hash of its whole content,
/// like any other) whose content is the contents of many small files one after another. The
/// content's length is its file's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PackSlice {
    /// The pack's object.
    pub pack: ContentHash,
    /// Where the content starts in the pack's content.
    pub offset: u64,
}

/// What [`NodeManifestWriter::upload`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeManifestSummary {
    /// Entries in the manifest.
    pub file_count: u64,
    /// Sum of their sizes.
    pub total_bytes: u64,
    /// Size of the manifest in storage.
    pub stored_bytes: u64,
}

/// Writes a node manifest with bounded memory: entries are added in any order, sorted in runs
/// that spill to anonymous temporary files, merged into one compressed temporary file and then
/// uploaded. Nothing is visible in storage before [`NodeManifestWriter::upload`] completes.
#[derive(Debug)]
pub struct NodeManifestWriter {
    header: NodeManifestHeader,
    temp_dir: PathBuf,
    run_entries: usize,
    buffer: Vec<NodeManifestEntry>,
    runs: Vec<File>,
    file_count: u64,
    total_bytes: u64,
    /// Whether an entry is packed (the manifest is then [`PACKED_NODE_MANIFEST_VERSION`]).
    packed: bool,
}

impl NodeManifestWriter {
    /// A writer for a manifest with this header, spilling to the system's temporary folder.
    pub fn new(header: NodeManifestHeader) -> Self {
        Self {
            header,
            temp_dir: std::env::temp_dir(),
            run_entries: DEFAULT_RUN_ENTRIES,
            buffer: Vec::new(),
            runs: Vec::new(),
            file_count: 0,
            total_bytes: 0,
            packed: false,
        }
    }

    /// Spills to `dir` instead (the agent's state folder, say).
    pub fn with_temp_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.temp_dir = dir.into();
        self
    }

    /// Keeps at most `entries` entries in memory (at least 1).
    pub fn with_run_entries(mut self, entries: usize) -> Self {
        self.run_entries = entries.max(1);
        self
    }

    /// Adds a file. Entries may come in any order.
    ///
    /// Fails when the path is not absolute, or when spilling a run to a temporary file fails.
    /// A path added twice makes [`NodeManifestWriter::upload`] fail.
    pub async fn add(&mut self, entry: NodeManifestEntry) -> Result<(), ManifestError> {
        if !entry.path.starts_with('/') {
            return Err(ManifestError::Invalid(format!(
                "path {:?} is not absolute",
                entry.path
            )));
        }
        self.file_count += 1;
        self.total_bytes = self.total_bytes.saturating_add(entry.size);
        self.packed |= entry.packed.is_some();
        // A full buffer spills when one more entry comes, not before: a run spilled by the
        // last entry would only be read back at once.
        if self.buffer.len() >= self.run_entries {
            let entries = std::mem::take(&mut self.buffer);
            let temp_dir = self.temp_dir.clone();
            let run = tokio::task::spawn_blocking(move || spill_run(&temp_dir, entries))
                .await
                .map_err(|error| {
                    ManifestError::io("spill manifest entries")(io::Error::other(error))
                })??;
            self.runs.push(run);
        }
        self.buffer.push(entry);
        Ok(())
    }

    /// Entries added so far.
    pub fn file_count(&self) -> u64 {
        self.file_count
    }

    /// Merges the entries into the manifest and uploads it to `path` (atomically: the manifest
    /// appears whole or not at all).
    ///
    /// Fails when a path was added twice, when a temporary file fails or when the storage fails.
    pub async fn upload(
        self,
        op: &Operator,
        path: &str,
        keys: &Keyring,
    ) -> Result<NodeManifestSummary, ManifestError> {
        let Self {
            mut header,
            temp_dir,
            buffer,
            runs,
            file_count,
            total_bytes,
            packed,
            ..
        } = self;
        header.file_count = file_count;
        header.total_bytes = total_bytes;
        if packed {
            header.version = header.version.max(PACKED_NODE_MANIFEST_VERSION);
        }
        let merged =
            tokio::task::spawn_blocking(move || merge_runs(&temp_dir, &header, buffer, runs))
                .await
                .map_err(|error| {
                    ManifestError::io("merge manifest entries")(io::Error::other(error))
                })??;
        let stored_bytes = upload_local_file(op, path, merged, keys).await?;
        Ok(NodeManifestSummary {
            file_count,
            total_bytes,
            stored_bytes,
        })
    }
}

/// Sorts entries and writes them as a zstd JSON Lines run to an anonymous temporary file.
fn spill_run(temp_dir: &Path, mut entries: Vec<NodeManifestEntry>) -> Result<File, ManifestError> {
    entries.sort_unstable_by(|a, b| a.path.cmp(&b.path));
    let file =
        tempfile::tempfile_in(temp_dir).map_err(ManifestError::io("create a temporary file"))?;
    let mut encoder = zstd::stream::write::Encoder::new(io::BufWriter::new(file), 1)
        .map_err(ManifestError::io("compress manifest entries"))?;
    for entry in &entries {
        serde_json::to_writer(&mut encoder, entry)
            .map_err(|error| ManifestError::io("spill manifest entries")(error.into()))?;
        encoder
            .write_all(b"\n")
            .map_err(ManifestError::io("spill manifest entries"))?;
    }
    let mut file = encoder
        .finish()
        .map_err(ManifestError::io("spill manifest entries"))?
        .into_inner()
        .map_err(|error| ManifestError::io("spill manifest entries")(error.into_error()))?;
    file.rewind()
        .map_err(ManifestError::io("spill manifest entries"))?;
    Ok(file)
}

/// A sorted source of entries for the merge: the in-memory remainder or a spilled run.
enum RunSource {
    Memory(std::vec::IntoIter<NodeManifestEntry>),
    File(io::Lines<io::BufReader<zstd::stream::read::Decoder<'static, io::BufReader<File>>>>),
}

impl RunSource {
    fn next_entry(&mut self) -> Result<Option<NodeManifestEntry>, ManifestError> {
        match self {
            Self::Memory(entries) => Ok(entries.next()),
            Self::File(lines) => match lines.next() {
                None => Ok(None),
                Some(line) => {
                    let line = line.map_err(ManifestError::io("read spilled manifest entries"))?;
                    serde_json::from_str(&line).map(Some).map_err(|error| {
                        ManifestError::io("read spilled manifest entries")(error.into())
                    })
                }
            },
        }
    }
}

/// Merges the sorted runs and the in-memory remainder into a compressed manifest in an anonymous
/// temporary file, rewound to its start.
fn merge_runs(
    temp_dir: &Path,
    header: &NodeManifestHeader,
    mut buffer: Vec<NodeManifestEntry>,
    runs: Vec<File>,
) -> Result<File, ManifestError> {
    buffer.sort_unstable_by(|a, b| a.path.cmp(&b.path));
    if runs.is_empty() {
        // Nothing spilled (most nodes): the sorted buffer is the manifest, no merge needed.
        return write_manifest(temp_dir, header, |encoder| {
            for (index, entry) in buffer.iter().enumerate() {
                if index > 0 && buffer[index - 1].path == entry.path {
                    return Err(ManifestError::Invalid(format!(
                        "path {:?} was added twice",
                        entry.path
                    )));
                }
                write_json_line(encoder, entry)?;
            }
            Ok(())
        });
    }
    let mut sources = vec![RunSource::Memory(buffer.into_iter())];
    for run in runs {
        let decoder = zstd::stream::read::Decoder::new(run)
            .map_err(ManifestError::io("read spilled manifest entries"))?;
        sources.push(RunSource::File(io::BufReader::new(decoder).lines()));
    }

    write_manifest(temp_dir, header, |encoder| merge_sources(encoder, sources))
}

/// Writes the compressed manifest, header first and then the lines `write_entries` writes, to
/// an anonymous temporary file rewound to its start.
fn write_manifest(
    temp_dir: &Path,
    header: &NodeManifestHeader,
    write_entries: impl FnOnce(&mut ManifestEncoder) -> Result<(), ManifestError>,
) -> Result<File, ManifestError> {
    let file =
        tempfile::tempfile_in(temp_dir).map_err(ManifestError::io("create a temporary file"))?;
    let mut encoder =
        zstd::stream::write::Encoder::new(io::BufWriter::new(file), MANIFEST_ZSTD_LEVEL)
            .map_err(ManifestError::io("compress the manifest"))?;
    write_json_line(&mut encoder, header)?;
    write_entries(&mut encoder)?;
    let mut file = encoder
        .finish()
        .map_err(ManifestError::io("write the manifest"))?
        .into_inner()
        .map_err(|error| ManifestError::io("write the manifest")(error.into_error()))?;
    file.rewind()
        .map_err(ManifestError::io("write the manifest"))?;
    Ok(file)
}

type ManifestEncoder = zstd::stream::write::Encoder<'static, io::BufWriter<File>>;

/// Writes the entries of the sorted sources in one order, refusing a path seen twice.
fn merge_sources(
    encoder: &mut ManifestEncoder,
    mut sources: Vec<RunSource>,
) -> Result<(), ManifestError> {
    // The heap holds the smallest pending entry of every source.
    let mut heads: Vec<Option<NodeManifestEntry>> = Vec::with_capacity(sources.len());
    let mut heap = BinaryHeap::new();
    for (index, source) in sources.iter_mut().enumerate() {
        let head = source.next_entry()?;
        if let Some(entry) = &head {
            heap.push(Reverse((entry.path.clone(), index)));
        }
        heads.push(head);
    }
    let mut previous: Option<String> = None;
    while let Some(Reverse((path, index))) = heap.pop() {
        let Some(entry) = heads[index].take() else {
            break;
        };
        if previous.as_deref() == Some(path.as_str()) {
            return Err(ManifestError::Invalid(format!(
                "path {path:?} was added twice"
            )));
        }
        write_json_line(encoder, &entry)?;
        previous = Some(path);
        let next = sources[index].next_entry()?;
        if let Some(next) = &next {
            heap.push(Reverse((next.path.clone(), index)));
        }
        heads[index] = next;
    }
    Ok(())
}

/// Writes one JSON value and a newline.
fn write_json_line<T: Serialize>(writer: &mut impl Write, value: &T) -> Result<(), ManifestError> {
    serde_json::to_writer(&mut *writer, value)
        .map_err(io::Error::from)
        .and_then(|()| writer.write_all(b"\n"))
        .map_err(ManifestError::io("write the manifest"))
}

/// Uploads a local file (rewound) to `path` in 8 MiB chunks; returns its size.
async fn upload_local_file(
    op: &Operator,
    path: &str,
    file: File,
    keys: &Keyring,
) -> Result<u64, ManifestError> {
    const CHUNK: usize = 8 * 1024 * 1024;
    let mut sealer = keys
        .sealer(Some(path))
        .map_err(ManifestError::io("seal the manifest"))?;
    let mut file = tokio::fs::File::from_std(file);
    let mut writer = op
        .writer_with(path)
        .chunk(CHUNK)
        .await
        .map_err(|cause| StorageError::backend(op, "write", path, cause))?;
    let mut total = 0u64;
    let result = async {
        loop {
            let mut block = vec![0u8; 1024 * 1024];
            let read = tokio::io::AsyncReadExt::read(&mut file, &mut block)
                .await
                .map_err(ManifestError::io("read the manifest's temporary file"))?;
            let block = if read == 0 {
                // The end: the last sealed segment, once.
                match sealer.take() {
                    Some(sealer) => sealer.finish(),
                    None => return Ok(()),
                }
            } else if let Some(sealer) = &mut sealer {
                sealer.push(&block[..read])
            } else {
                block.truncate(read);
                block
            };
            total += block.len() as u64;
            writer
                .write(Bytes::from(block))
                .await
                .map_err(|cause| StorageError::backend(op, "write", path, cause))?;
        }
    }
    .await;
    match result {
        Ok(()) => {
            writer
                .close()
                .await
                .map_err(|cause| StorageError::backend(op, "write", path, cause))?;
            crate::object::sync_name(op, path).await?;
            Ok(total)
        }
        Err(error) => {
            if let Err(abort) = writer.abort().await {
                tracing::warn!(path, error = %abort, "abort manifest write");
            }
            Err(error)
        }
    }
}

/// Streams a node manifest from storage: its header at once, then its entries one by one, with
/// memory bounded by a slice of decompressed text (not by the manifest's size).
///
/// Decompression runs inline on the calling task, 64 KiB of compressed input at a time: manifests
/// decompress at hundreds of MiB/s, so no call holds an async worker for long.
pub struct NodeManifestReader {
    path: String,
    header: NodeManifestHeader,
    stream: BufferStream,
    /// Opens a sealed manifest (an encrypted location's) before it is decompressed.
    unsealer: Option<Unsealer>,
    /// Compressed bytes received but not yet decoded.
    input: Bytes,
    decoder: zstd::stream::write::Decoder<'static, Vec<u8>>,
    /// Decoded text; `consumed..` is not parsed yet.
    text: Vec<u8>,
    consumed: usize,
    finished: bool,
    line: u64,
    previous_path: Option<String>,
    entries_read: u64,
}

impl std::fmt::Debug for NodeManifestReader {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("NodeManifestReader")
            .field("path", &self.path)
            .field("header", &self.header)
            .field("line", &self.line)
            .finish_non_exhaustive()
    }
}

impl NodeManifestReader {
    /// Opens the manifest at `path` and reads its header.
    ///
    /// Fails when the storage fails (a missing manifest is [`StorageError::is_not_found`]), or
    /// when the manifest is malformed or of another format or a newer version.
    pub async fn open(op: &Operator, path: &str, keys: &Keyring) -> Result<Self, ManifestError> {
        let storage_error = |cause| StorageError::backend(op, "read", path, cause);
        let stream = op
            .reader_with(path)
            .await
            .map_err(storage_error)?
            .into_stream(..)
            .await
            .map_err(storage_error)?;
        let decoder = zstd::stream::write::Decoder::new(Vec::new())
            .map_err(ManifestError::io("start decompressing the manifest"))?;
        let mut reader = Self {
            path: path.to_string(),
            header: NodeManifestHeader::new(Uuid::nil(), Uuid::nil(), Uuid::nil(), "", Vec::new()),
            stream,
            unsealer: Some(Unsealer::new(keys.clone(), Some(path))),
            input: Bytes::new(),
            decoder,
            text: Vec::new(),
            consumed: 0,
            finished: false,
            line: 0,
            previous_path: None,
            entries_read: 0,
        };
        let Some(line) = reader.next_line(op).await? else {
            return Err(reader.malformed("the manifest is empty"));
        };
        let header: NodeManifestHeader = serde_json::from_slice(&line)
            .map_err(|error| reader.malformed(format!("bad header: {error}")))?;
        if header.format != NODE_MANIFEST_FORMAT || header.version > PACKED_NODE_MANIFEST_VERSION {
            return Err(ManifestError::Unsupported {
                path: path.to_string(),
                format: header.format,
                version: header.version,
                expected: NODE_MANIFEST_FORMAT,
                supported: PACKED_NODE_MANIFEST_VERSION,
            });
        }
        reader.header = header;
        Ok(reader)
    }

    /// The manifest's header.
    pub fn header(&self) -> &NodeManifestHeader {
        &self.header
    }

    /// The next entry, or `None` at the end.
    ///
    /// Fails when the storage fails or the manifest is malformed: bad JSON, paths not strictly
    /// increasing, or a count that differs from the header's.
    pub async fn next_entry(
        &mut self,
        op: &Operator,
    ) -> Result<Option<NodeManifestEntry>, ManifestError> {
        let Some(line) = self.next_line(op).await? else {
            if self.entries_read != self.header.file_count {
                return Err(self.malformed(format!(
                    "the header counts {} files but the manifest lists {}",
                    self.header.file_count, self.entries_read
                )));
            }
            return Ok(None);
        };
        let entry: NodeManifestEntry = serde_json::from_slice(&line)
            .map_err(|error| self.malformed(format!("bad entry: {error}")))?;
        if let Some(previous) = &self.previous_path
            && previous.as_str() >= entry.path.as_str()
        {
            return Err(self.malformed(format!(
                "path {:?} does not sort after {previous:?}",
                entry.path
            )));
        }
        self.previous_path = Some(entry.path.clone());
        self.entries_read += 1;
        Ok(Some(entry))
    }

    /// All remaining entries as a stream.
    pub fn into_stream(
        self,
        op: Operator,
    ) -> impl Stream<Item = Result<NodeManifestEntry, ManifestError>> + Send {
        futures::stream::try_unfold((self, op), |(mut reader, op)| async move {
            Ok(reader
                .next_entry(&op)
                .await?
                .map(|entry| (entry, (reader, op))))
        })
    }

    /// One page of a manifest's entries, as the agent's ReadNodeManifest RPC serves them:
    /// `limit` entries from the `offset`-th (0-based), whether more follow, and the total count.
    ///
    /// Reads from the start of the manifest and stops after the page, so a page costs its offset
    /// in decompression (manifests decompress at hundreds of MiB/s).
    ///
    /// Fails as [`NodeManifestReader::open`] and [`NodeManifestReader::next_entry`] do.
    pub async fn read_page(
        op: &Operator,
        path: &str,
        keys: &Keyring,
        offset: u64,
        limit: usize,
    ) -> Result<(Vec<NodeManifestEntry>, bool, u64), ManifestError> {
        let mut reader = Self::open(op, path, keys).await?;
        let total = reader.header.file_count;
        if offset >= total {
            return Ok((Vec::new(), false, total));
        }
        if reader.skip_entries(op, offset).await? < offset {
            return Ok((Vec::new(), false, total));
        }
        let mut page = Vec::with_capacity(limit.min(10_000));
        while page.len() < limit {
            match reader.next_entry(op).await? {
                Some(entry) => page.push(entry),
                None => break,
            }
        }
        let more = offset + (page.len() as u64) < total;
        Ok((page, more, total))
    }

    fn sealed(&self, source: SealError) -> ManifestError {
        ManifestError::Sealed {
            path: self.path.clone(),
            source,
        }
    }

    fn malformed(&self, reason: impl Into<String>) -> ManifestError {
        ManifestError::Malformed {
            path: self.path.clone(),
            line: self.line,
            reason: reason.into(),
        }
    }

    /// The next line of decoded text (without its newline), decoding more input as needed.
    async fn next_line(&mut self, op: &Operator) -> Result<Option<Vec<u8>>, ManifestError> {
        loop {
            if let Some(newline) = self.text[self.consumed..]
                .iter()
                .position(|&byte| byte == b'\n')
            {
                let line = self.text[self.consumed..self.consumed + newline].to_vec();
                self.consumed += newline + 1;
                self.line += 1;
                return Ok(Some(line));
            }
            if self.finished {
                if self.consumed < self.text.len() {
                    let line = self.text[self.consumed..].to_vec();
                    self.consumed = self.text.len();
                    self.line += 1;
                    return Ok(Some(line));
                }
                return Ok(None);
            }
            self.decode_more(op).await?;
        }
    }

    /// Passes over up to `count` entries without parsing them (a page deep into a manifest
    /// of a million files parsed every entry before it: the last page took 0.74 s); returns
    /// how many there were. Entries passed over are not checked: only those read are.
    async fn skip_entries(&mut self, op: &Operator, count: u64) -> Result<u64, ManifestError> {
        let mut skipped = 0;
        while skipped < count {
            let mut advanced = 0;
            for (at, _) in self.text[self.consumed..]
                .iter()
                .enumerate()
                .filter(|(_, byte)| **byte == b'\n')
            {
                skipped += 1;
                advanced = at + 1;
                if skipped == count {
                    break;
                }
            }
            self.consumed += advanced;
            if skipped == count {
                break;
            }
            if self.finished {
                if self.consumed < self.text.len() {
                    // A last line without its newline.
                    self.consumed = self.text.len();
                    skipped += 1;
                }
                break;
            }
            self.decode_more(op).await?;
        }
        self.line += skipped;
        self.entries_read += skipped;
        Ok(skipped)
    }

    /// Decodes more of the manifest into `text` (or marks it finished), dropping the text
    /// consumed so far.
    async fn decode_more(&mut self, op: &Operator) -> Result<(), ManifestError> {
        {
            // Drop the parsed text before decoding more.
            self.text.drain(..self.consumed);
            self.consumed = 0;
            if self.input.is_empty() {
                match self
                    .stream
                    .try_next()
                    .await
                    .map_err(|cause| StorageError::backend(op, "read", &self.path, cause))?
                {
                    Some(buffer) => {
                        let stored = buffer.to_bytes();
                        self.input = match &mut self.unsealer {
                            Some(unsealer) => match unsealer.push(&stored) {
                                // In the clear: the buffer itself, not a copy.
                                Ok(std::borrow::Cow::Borrowed(plain))
                                    if plain.len() == stored.len() =>
                                {
                                    stored.clone()
                                }
                                Ok(plain) => Bytes::from(plain.into_owned()),
                                Err(source) => return Err(self.sealed(source)),
                            },
                            None => stored,
                        };
                    }
                    None => {
                        if let Some(unsealer) = self.unsealer.take() {
                            // The last sealed segment: at most 64 KiB of compressed text.
                            let last = unsealer.finish().map_err(|source| self.sealed(source))?;
                            self.decoder.write_all(&last).map_err(|error| {
                                self.malformed(format!("broken zstd stream: {error}"))
                            })?;
                        }
                        self.decoder.flush().map_err(|error| {
                            self.malformed(format!("broken zstd stream: {error}"))
                        })?;
                        self.take_decoded();
                        self.finished = true;
                    }
                }
                return Ok(());
            }
            let slice = self.input.split_to(self.input.len().min(DECODE_SLICE));
            self.decoder
                .write_all(&slice)
                .map_err(|error| self.malformed(format!("broken zstd stream: {error}")))?;
            self.take_decoded();
            Ok(())
        }
    }

    fn take_decoded(&mut self) {
        let decoded = std::mem::take(self.decoder.get_mut());
        if self.text.is_empty() {
            self.text = decoded;
        } else {
            self.text.extend_from_slice(&decoded);
        }
    }
}

/// Whether a backup re-read everything or trusted its parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackupKind {
    /// Every file re-read and re-hashed; every referenced object verified to exist.
    Full,
    /// Unchanged files taken from the agent's journal and the parent backup.
    Incremental,
}

impl BackupKind {
    /// The kind as manifests and catalogs spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Incremental => "incremental",
        }
    }

    /// Parses [`BackupKind::as_str`]'s spelling.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "full" => Some(Self::Full),
            "incremental" => Some(Self::Incremental),
            _ => None,
        }
    }
}

/// One node of a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupNode {
    /// The node; no two entries of [`BackupManifest::nodes`] name the same one.
    pub node_id: Uuid,
    /// Its host name when the backup was taken.
    pub hostname: String,
    /// Its datacenter (empty when the cluster has none).
    #[serde(default)]
    pub datacenter: String,
    /// Its rack (empty when the cluster has none).
    #[serde(default)]
    pub rack: String,
    /// Path of its node manifest, relative to the location's root.
    pub manifest_path: String,
    /// Files in its manifest.
    pub file_count: u64,
    /// Sum of their sizes.
    pub total_bytes: u64,
    /// Bytes this backup uploaded for the node (content not already in the location).
    pub uploaded_bytes: u64,
    /// Objects this backup uploaded for the node.
    pub uploaded_objects: u64,
}

/// The backup manifest `backup.json`: the commit point of a backup, written after every node
/// manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupManifest {
    /// Always [`BACKUP_MANIFEST_FORMAT`].
    pub format: String,
    /// [`MANIFEST_VERSION`] when written by this crate.
    pub version: u32,
    /// The backup; also named by the manifest's path
    /// ([`ClusterLayout::backup_manifest`](crate::ClusterLayout::backup_manifest)).
    pub backup_id: Uuid,
    /// The cluster backed up; the manifest lies in its folder
    /// ([`ClusterLayout::root`](crate::ClusterLayout::root)).
    pub cluster_id: Uuid,
    /// The cluster's name when the backup was taken.
    pub cluster_name: String,
    /// Full or incremental.
    pub kind: BackupKind,
    /// The backup an incremental one builds on; `null` for a full backup.
    #[serde(default)]
    pub parent_backup_id: Option<Uuid>,
    /// The location the backup is in.
    pub location_id: String,
    /// Labels given when the backup was started.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// When the backup started (RFC 3339 UTC).
    pub start_time: String,
    /// When this manifest was written (RFC 3339 UTC).
    pub commit_time: String,
    /// The run that made the backup, if Coffer's server made it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<Uuid>,
    /// The schedule that started that run, if a schedule did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_id: Option<Uuid>,
    /// The path globs the backup was taken with; empty lists select every file.
    #[serde(default)]
    pub filter: PathFilter,
    /// Every node of the backup.
    pub nodes: Vec<BackupNode>,
}

impl BackupManifest {
    /// Pretty JSON with a trailing newline.
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(self).unwrap_or_default();
        bytes.push(b'\n');
        bytes
    }

    /// Parses and validates a manifest read from `path`.
    ///
    /// Fails when it is not JSON of the expected shape, names another format or a newer version,
    /// or is inconsistent (see [`BackupManifest::validate`]).
    pub fn decode(path: &str, bytes: &[u8]) -> Result<Self, ManifestError> {
        let malformed = |reason: String| ManifestError::Malformed {
            path: path.to_string(),
            line: 0,
            reason,
        };
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|error| malformed(error.to_string()))?;
        let format = value
            .get("format")
            .and_then(|format| format.as_str())
            .unwrap_or_default();
        let version = value
            .get("version")
            .and_then(serde_json::Value::as_u64)
            .and_then(|version| u32::try_from(version).ok())
            .unwrap_or(0);
        if format != BACKUP_MANIFEST_FORMAT || version == 0 || version > MANIFEST_VERSION {
            return Err(ManifestError::Unsupported {
                path: path.to_string(),
                format: format.to_string(),
                version,
                expected: BACKUP_MANIFEST_FORMAT,
                supported: MANIFEST_VERSION,
            });
        }
        let manifest: Self =
            serde_json::from_value(value).map_err(|error| malformed(error.to_string()))?;
        manifest.validate().map_err(|error| match error {
            ManifestError::Invalid(reason) => malformed(reason),
            other => other,
        })?;
        Ok(manifest)
    }

    /// Checks what the types cannot: format and version, a parent exactly for incremental
    /// backups, RFC 3339 UTC times with the commit not before the start, node ids unique.
    pub fn validate(&self) -> Result<(), ManifestError> {
        let invalid = ManifestError::Invalid;
        if self.format != BACKUP_MANIFEST_FORMAT {
            return Err(invalid(format!(
                "format is {:?}, not {BACKUP_MANIFEST_FORMAT:?}",
                self.format
            )));
        }
        if self.version == 0 || self.version > MANIFEST_VERSION {
            return Err(invalid(format!(
                "version {} is not supported",
                self.version
            )));
        }
        match (self.kind, self.parent_backup_id) {
            (BackupKind::Incremental, None) => {
                return Err(invalid(
                    "an incremental backup needs a parent_backup_id".into(),
                ));
            }
            (BackupKind::Full, Some(_)) => {
                return Err(invalid("a full backup has no parent_backup_id".into()));
            }
            _ => {}
        }
        let start = parse_time(&self.start_time)
            .map_err(|reason| invalid(format!("start_time: {reason}")))?;
        let commit = parse_time(&self.commit_time)
            .map_err(|reason| invalid(format!("commit_time: {reason}")))?;
        if commit < start {
            return Err(invalid("commit_time is before start_time".into()));
        }
        let mut seen = std::collections::BTreeSet::new();
        for node in &self.nodes {
            if !seen.insert(node.node_id) {
                return Err(invalid(format!("node {} is listed twice", node.node_id)));
            }
        }
        Ok(())
    }

    /// Writes the manifest to `path`: the commit point of the backup, so call it last. The write is
    /// atomic (a PUT, or a rename on `fs`).
    ///
    /// Fails when the manifest is invalid or the storage fails.
    pub async fn write(&self, op: &Operator, path: &str) -> Result<(), ManifestError> {
        self.validate()?;
        op.write(path, self.encode())
            .await
            .map_err(|cause| StorageError::backend(op, "write", path, cause))?;
        crate::object::sync_name(op, path).await?;
        Ok(())
    }

    /// Reads and validates the manifest at `path`.
    ///
    /// Fails when the storage fails (a backup that was never committed has no manifest:
    /// [`StorageError::is_not_found`]) or the manifest does not decode.
    pub async fn read(op: &Operator, path: &str) -> Result<Self, ManifestError> {
        let bytes = op
            .read(path)
            .await
            .map_err(|cause| StorageError::backend(op, "read", path, cause))?;
        Self::decode(path, &bytes.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{StorageConfig, open_operator};

    fn fs_operator(root: &Path) -> Operator {
        open_operator(&StorageConfig {
            location_id: "loc".into(),
            name: "test".into(),
            scheme: "fs".into(),
            options: BTreeMap::from([("root".into(), root.to_string_lossy().into_owned())]),
            secrets: BTreeMap::new(),
        })
        .expect("open fs operator")
    }

    fn entry(index: u64) -> NodeManifestEntry {
        NodeManifestEntry {
            path: format!("/data/ks/table-{:03}/md-{index}-big-Data.db", index % 7),
            size: index * 10,
            mode: 0o100644,
            mtime_ns: 1_763_765_760_000_000_000 + index as i64,
            hash: ContentHash::of(&index.to_le_bytes()),
            packed: None,
        }
    }

    fn header() -> NodeManifestHeader {
        NodeManifestHeader::new(
            Uuid::from_u128(1),
            Uuid::from_u128(2),
            Uuid::from_u128(3),
            "db1",
            vec!["/data".into()],
        )
    }

    #[tokio::test]
    async fn sealed_node_manifests_hold_no_plain_text_and_open_only_with_their_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let op = fs_operator(&dir.path().join("location"));
        let keys = Keyring::new(
            Some(std::sync::Arc::new(crate::object::ObjectKey::new(
                "k", &[3; 32],
            ))),
            Vec::new(),
        );
        // Enough entries for a manifest of several sealed segments.
        let count = 20_000u64;
        let mut writer = NodeManifestWriter::new(header()).with_temp_dir(dir.path());
        for index in 0..count {
            writer.add(entry(index)).await.expect("add");
        }
        let summary = writer
            .upload(&op, "nodes/sealed.manifest", &keys)
            .await
            .expect("upload");
        let stored =
            std::fs::read(dir.path().join("location/nodes/sealed.manifest")).expect("read stored");
        assert_eq!(summary.stored_bytes, stored.len() as u64);
        assert!(stored.len() > 3 * 64 * 1024, "{} bytes", stored.len());
        assert!(crate::object::is_sealed(&stored));
        // Not even the zstd frame magic is visible.
        assert!(!stored.windows(4).any(|w| w == [0x28, 0xb5, 0x2f, 0xfd]));

        let (page, more, total) =
            NodeManifestReader::read_page(&op, "nodes/sealed.manifest", &keys, count - 5, 10)
                .await
                .expect("page");
        assert_eq!((page.len(), more, total), (5, false, count));
        let error = NodeManifestReader::open(&op, "nodes/sealed.manifest", &Keyring::plain())
            .await
            .expect_err("no key");
        assert!(
            matches!(
                &error,
                ManifestError::Sealed {
                    source: SealError::MissingKey(_),
                    ..
                }
            ),
            "{error}"
        );
        // A manifest cut short fails, however far it is read.
        std::fs::write(
            dir.path().join("location/nodes/sealed.manifest"),
            &stored[..stored.len() - 100],
        )
        .expect("cut");
        let reader = NodeManifestReader::open(&op, "nodes/sealed.manifest", &keys)
            .await
            .expect("the start still opens");
        let error = reader
            .into_stream(op.clone())
            .try_collect::<Vec<_>>()
            .await
            .expect_err("cut manifest");
        assert!(
            matches!(
                &error,
                ManifestError::Sealed {
                    source: SealError::Damaged(_),
                    ..
                }
            ),
            "{error}"
        );
        // And a clear manifest is refused by the encrypted location.
        let mut clear = NodeManifestWriter::new(header()).with_temp_dir(dir.path());
        clear.add(entry(1)).await.expect("add");
        clear
            .upload(&op, "nodes/clear.manifest", &Keyring::plain())
            .await
            .expect("upload");
        let error = NodeManifestReader::open(&op, "nodes/clear.manifest", &keys)
            .await
            .expect_err("clear manifest");
        assert!(
            matches!(
                &error,
                ManifestError::Sealed {
                    source: SealError::NotSealed,
                    ..
                }
            ),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_full_buffer_spills_only_when_more_entries_come_and_duplicates_are_refused_unspilled()
    {
        let dir = tempfile::tempdir().expect("tempdir");
        let op = fs_operator(&dir.path().join("location"));
        let mut writer = NodeManifestWriter::new(header())
            .with_temp_dir(dir.path())
            .with_run_entries(3);
        for index in [2, 0, 1] {
            writer.add(entry(index)).await.expect("add");
        }
        assert!(writer.runs.is_empty(), "spilled a run no entry followed");
        writer.add(entry(3)).await.expect("add");
        assert_eq!(writer.runs.len(), 1);

        // The merge-free path (nothing spilled) writes sorted entries and refuses a repeat.
        let mut writer = NodeManifestWriter::new(header()).with_temp_dir(dir.path());
        for index in [5, 3, 4] {
            writer.add(entry(index)).await.expect("add");
        }
        writer
            .upload(&op, "sorted.manifest", &Keyring::plain())
            .await
            .expect("upload");
        let read: Vec<u64> = NodeManifestReader::open(&op, "sorted.manifest", &Keyring::plain())
            .await
            .expect("open")
            .into_stream(op.clone())
            .map_ok(|entry| entry.size / 10)
            .try_collect()
            .await
            .expect("stream");
        assert_eq!(read, vec![3, 4, 5]);
        let mut writer = NodeManifestWriter::new(header()).with_temp_dir(dir.path());
        for index in [1, 2, 1] {
            writer.add(entry(index)).await.expect("add");
        }
        let refused = writer
            .upload(&op, "twice.manifest", &Keyring::plain())
            .await
            .expect_err("a path twice");
        assert!(refused.to_string().contains("added twice"), "{refused}");
    }

    #[tokio::test]
    async fn node_manifests_round_trip_sorted_with_paging() {
        let dir = tempfile::tempdir().expect("tempdir");
        let op = fs_operator(&dir.path().join("location"));
        let spill = dir.path().join("spill");
        std::fs::create_dir_all(&spill).expect("mkdir");

        // Out of order, and in runs of 7 so the merge of many spilled runs is exercised.
        let count = 1000u64;
        let mut writer = NodeManifestWriter::new(header())
            .with_temp_dir(&spill)
            .with_run_entries(7);
        for index in (0..count).rev() {
            writer.add(entry((index * 389) % count)).await.expect("add");
        }
        let summary = writer
            .upload(&op, "nodes/n.manifest", &Keyring::plain())
            .await
            .expect("upload");
        assert_eq!(summary.file_count, count);
        assert_eq!(
            summary.total_bytes,
            (0..count).map(|index| index * 10).sum::<u64>()
        );
        assert_eq!(
            std::fs::read_dir(&spill).expect("spill dir").count(),
            0,
            "temp files left"
        );

        let mut expected: Vec<NodeManifestEntry> = (0..count).map(entry).collect();
        expected.sort_by(|a, b| a.path.cmp(&b.path));

        // The whole manifest, streamed.
        let reader = NodeManifestReader::open(&op, "nodes/n.manifest", &Keyring::plain())
            .await
            .expect("open");
        assert_eq!(reader.header().file_count, count);
        assert_eq!(reader.header().hostname, "db1");
        let all: Vec<NodeManifestEntry> = reader
            .into_stream(op.clone())
            .try_collect()
            .await
            .expect("stream");
        assert_eq!(all, expected);

        // Pages.
        let (page, more, total) =
            NodeManifestReader::read_page(&op, "nodes/n.manifest", &Keyring::plain(), 0, 300)
                .await
                .expect("page");
        assert_eq!((page.len(), more, total), (300, true, count));
        assert_eq!(page, expected[..300]);
        let (page, more, _) =
            NodeManifestReader::read_page(&op, "nodes/n.manifest", &Keyring::plain(), 900, 300)
                .await
                .expect("page");
        assert_eq!((page.len(), more), (100, false));
        assert_eq!(page, expected[900..]);
        let (page, more, _) =
            NodeManifestReader::read_page(&op, "nodes/n.manifest", &Keyring::plain(), 700, 300)
                .await
                .expect("page");
        assert_eq!((page.len(), more), (300, false));
        assert_eq!(page, expected[700..]);
        // Entries before a page are passed over unparsed, across the decoder's slices.
        for offset in [1, 299, 512, 999] {
            let (page, _, _) = NodeManifestReader::read_page(
                &op,
                "nodes/n.manifest",
                &Keyring::plain(),
                offset,
                7,
            )
            .await
            .expect("page");
            let end = (offset as usize + 7).min(expected.len());
            assert_eq!(page, expected[offset as usize..end], "offset {offset}");
        }
        let (page, more, _) =
            NodeManifestReader::read_page(&op, "nodes/n.manifest", &Keyring::plain(), 5000, 10)
                .await
                .expect("page");
        assert!(page.is_empty() && !more);

        // The stored file is plain zstd JSON Lines as documented.
        let stored = std::fs::read(dir.path().join("location/nodes/n.manifest")).expect("read");
        let text =
            String::from_utf8(zstd::stream::decode_all(&stored[..]).expect("zstd")).expect("utf-8");
        let mut lines = text.lines();
        let first = lines.next().expect("header line");
        assert!(first.starts_with(r#"{"format":"coffer-node-manifest","version":1,"cluster_id":"00000000-0000-0000-0000-000000000001""#), "{first}");
        assert_eq!(lines.count() as u64, count);
    }

    #[tokio::test]
    async fn packed_entries_round_trip_and_make_the_manifest_need_a_newer_reader() {
        let dir = tempfile::tempdir().expect("tempdir");
        let op = fs_operator(dir.path());
        let pack = ContentHash::of(b"pack");
        let mut packed = entry(1);
        packed.packed = Some(PackSlice { pack, offset: 4096 });
        let mut writer = NodeManifestWriter::new(header()).with_temp_dir(dir.path());
        writer.add(packed.clone()).await.expect("add");
        writer.add(entry(2)).await.expect("add");
        writer
            .upload(&op, "packed.manifest", &Keyring::plain())
            .await
            .expect("upload");
        let reader = NodeManifestReader::open(&op, "packed.manifest", &Keyring::plain())
            .await
            .expect("open");
        assert_eq!(reader.header().version, PACKED_NODE_MANIFEST_VERSION);
        let all: Vec<NodeManifestEntry> = reader
            .into_stream(op.clone())
            .try_collect()
            .await
            .expect("stream");
        let read_back = all
            .iter()
            .find(|read| read.path == packed.path)
            .expect("the packed entry");
        assert_eq!(read_back, &packed);
        assert_eq!(read_back.object(), pack, "its object is the pack");
        let plain = all
            .iter()
            .find(|read| read.path == entry(2).path)
            .expect("the plain entry");
        assert_eq!((plain.packed, plain.object()), (None, plain.hash));

        // Without packed entries a manifest stays version 1, readable by older agents, and
        // its entries carry no pack at all.
        let mut writer = NodeManifestWriter::new(header()).with_temp_dir(dir.path());
        writer.add(entry(2)).await.expect("add");
        writer
            .upload(&op, "plain.manifest", &Keyring::plain())
            .await
            .expect("upload");
        let reader = NodeManifestReader::open(&op, "plain.manifest", &Keyring::plain())
            .await
            .expect("open");
        assert_eq!(reader.header().version, MANIFEST_VERSION);
        let bytes = op.read("plain.manifest").await.expect("read").to_vec();
        let text = zstd::stream::decode_all(&bytes[..]).expect("zstd");
        assert!(!String::from_utf8_lossy(&text).contains("packed"));
    }

    #[tokio::test]
    async fn empty_node_manifests_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let op = fs_operator(dir.path());
        let summary = NodeManifestWriter::new(header())
            .upload(&op, "empty.manifest", &Keyring::plain())
            .await
            .expect("upload");
        assert_eq!(summary.file_count, 0);
        let (page, more, total) =
            NodeManifestReader::read_page(&op, "empty.manifest", &Keyring::plain(), 0, 10)
                .await
                .expect("page");
        assert!(page.is_empty() && !more && total == 0);
    }

    #[tokio::test]
    async fn duplicate_and_relative_paths_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let op = fs_operator(dir.path());
        let mut writer = NodeManifestWriter::new(header()).with_run_entries(2);
        writer.add(entry(1)).await.expect("add");
        writer.add(entry(2)).await.expect("add");
        writer.add(entry(1)).await.expect("add");
        let error = writer
            .upload(&op, "dup.manifest", &Keyring::plain())
            .await
            .expect_err("duplicate");
        assert!(error.to_string().contains("added twice"), "{error}");
        assert!(!op.exists("dup.manifest").await.expect("exists"));

        let mut relative = entry(1);
        relative.path = "data/x".into();
        let error = NodeManifestWriter::new(header())
            .add(relative)
            .await
            .expect_err("relative");
        assert!(error.to_string().contains("not absolute"), "{error}");
    }

    #[tokio::test]
    async fn foreign_and_broken_node_manifests_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let op = fs_operator(dir.path());
        let mut foreign = header();
        foreign.format = "restic".into();
        let mut text = serde_json::to_vec(&foreign).expect("encode");
        text.push(b'\n');
        op.write(
            "foreign.manifest",
            zstd::stream::encode_all(&text[..], 1).expect("zstd"),
        )
        .await
        .expect("write");
        let error = NodeManifestReader::open(&op, "foreign.manifest", &Keyring::plain())
            .await
            .expect_err("foreign");
        assert!(
            matches!(error, ManifestError::Unsupported { .. }),
            "{error}"
        );

        op.write(
            "plain.manifest",
            b"{\"format\":\"coffer-node-manifest\"}\n".to_vec(),
        )
        .await
        .expect("write");
        let error = NodeManifestReader::open(&op, "plain.manifest", &Keyring::plain())
            .await
            .expect_err("not zstd");
        assert!(error.to_string().contains("zstd"), "{error}");

        let mut unsorted = serde_json::to_vec(&NodeManifestHeader {
            file_count: 2,
            ..header()
        })
        .expect("encode");
        for index in [2, 1] {
            unsorted.push(b'\n');
            unsorted.extend(
                serde_json::to_vec(&NodeManifestEntry {
                    path: format!("/data/{index}"),
                    ..entry(index)
                })
                .expect("encode"),
            );
        }
        unsorted.push(b'\n');
        op.write(
            "unsorted.manifest",
            zstd::stream::encode_all(&unsorted[..], 1).expect("zstd"),
        )
        .await
        .expect("write");
        let error =
            NodeManifestReader::read_page(&op, "unsorted.manifest", &Keyring::plain(), 0, 10)
                .await
                .expect_err("unsorted");
        assert!(error.to_string().contains("line 3"), "{error}");

        let error = NodeManifestReader::open(&op, "missing.manifest", &Keyring::plain())
            .await
            .expect_err("missing");
        match error {
            ManifestError::Storage(storage) => assert!(storage.is_not_found()),
            other => panic!("unexpected error: {other}"),
        }
    }

    fn backup_manifest() -> BackupManifest {
        BackupManifest {
            format: BACKUP_MANIFEST_FORMAT.into(),
            version: MANIFEST_VERSION,
            backup_id: Uuid::from_u128(2),
            cluster_id: Uuid::from_u128(1),
            cluster_name: "prod".into(),
            kind: BackupKind::Incremental,
            parent_backup_id: Some(Uuid::from_u128(9)),
            location_id: "loc-1".into(),
            labels: BTreeMap::from([("reason".into(), "nightly".into())]),
            start_time: "2026-11-21T22:00:00Z".into(),
            commit_time: "2026-11-21T22:56:00Z".into(),
            run_id: Some(Uuid::from_u128(4)),
            schedule_id: Some(Uuid::from_u128(5)),
            filter: PathFilter {
                include: vec!["/data/**".into()],
                exclude: vec![],
            },
            nodes: vec![BackupNode {
                node_id: Uuid::from_u128(3),
                hostname: "db1".into(),
                datacenter: "dc1".into(),
                rack: "r1".into(),
                manifest_path: "clusters/x/backups/y/nodes/z.manifest".into(),
                file_count: 10,
                total_bytes: 1000,
                uploaded_bytes: 100,
                uploaded_objects: 1,
            }],
        }
    }

    #[tokio::test]
    async fn backup_manifests_round_trip_through_storage() {
        let dir = tempfile::tempdir().expect("tempdir");
        let op = fs_operator(dir.path());
        let manifest = backup_manifest();
        manifest.write(&op, "backup.json").await.expect("write");
        assert_eq!(
            BackupManifest::read(&op, "backup.json")
                .await
                .expect("read"),
            manifest
        );
        let text = std::fs::read_to_string(dir.path().join("backup.json")).expect("read");
        assert!(
            text.starts_with("{\n  \"format\": \"coffer-backup\",\n  \"version\": 1,"),
            "{text}"
        );
        assert!(text.contains("\"kind\": \"incremental\""), "{text}");
        assert!(text.ends_with("}\n"));
    }

    #[test]
    fn backup_manifests_are_validated() {
        let mut manifest = backup_manifest();
        manifest.parent_backup_id = None;
        assert!(manifest.validate().is_err());
        manifest.kind = BackupKind::Full;
        manifest.validate().expect("full without parent");
        manifest.commit_time = "2026-11-21T21:00:00Z".into();
        assert!(manifest.validate().is_err());
        manifest.commit_time = "yesterday".into();
        assert!(manifest.validate().is_err());

        let mut newer = serde_json::to_value(backup_manifest()).expect("encode");
        newer["version"] = 2.into();
        let error =
            BackupManifest::decode("b.json", newer.to_string().as_bytes()).expect_err("newer");
        assert!(
            matches!(error, ManifestError::Unsupported { version: 2, .. }),
            "{error}"
        );
        let error = BackupManifest::decode("b.json", br#"{"format":"coffer","version":1}"#)
            .expect_err("foreign");
        assert!(
            matches!(error, ManifestError::Unsupported { .. }),
            "{error}"
        );
        let error = BackupManifest::decode("b.json", br#"{"format":"coffer-backup","version":1}"#)
            .expect_err("fields");
        assert!(matches!(error, ManifestError::Malformed { .. }), "{error}");
        assert_eq!(
            BackupManifest::decode("b.json", &backup_manifest().encode()).expect("decode"),
            backup_manifest()
        );
    }

    #[test]
    fn times_are_rfc3339_utc() {
        let now = SystemTime::now();
        let text = format_time(now);
        assert!(text.ends_with('Z'), "{text}");
        let parsed = parse_time(&text).expect("parse");
        assert!(
            now.duration_since(parsed)
                .expect("not in the future")
                .as_secs()
                < 1
        );
    }
}
