//! The object codec: how one file's content is stored, and the streaming upload and download of
//! objects.
//!
//! An object lives at [`ClusterLayout::object`](crate::ClusterLayout::object) and holds the content
//! of one file, addressed by the BLAKE3 hash of the ORIGINAL (uncompressed) content. Stored form:
//!
//! ```text
//! offset 0..6   b"COFFER"            magic
//! offset 6      0x01                 object format version
//! offset 7      codec                0x00 raw, 0x01 zstd
//! offset 8..    body                 raw: the content itself; zstd: zstd frames of it, concatenated
//! ```
//!
//! So `tail -c +9 object > file` (raw) or `tail -c +9 object | zstd -d > file` (zstd) restores a file
//! with a shell, and `b3sum file` must print the object's name.
//!
//! Invariants:
//! - An object is only ever committed with content whose hash is its name: [`upload_file`] hashes
//!   the bytes it actually sends and aborts the write (nothing becomes visible) when they differ from
//!   the hash the caller planned with, for instance because the file changed in between.
//! - A downloaded file is only ever left in place when its content hashes to the object's name:
//!   [`download_object`] removes it otherwise.
//! - Memory stays bounded whatever the file size: files are read in 1 MiB blocks, at most a few
//!   blocks wait between reading and writing, and OpenDAL holds at most `concurrent + 1` chunks.
//! - CPU work (hashing, compression, decompression) and blocking file I/O run on tokio's blocking
//!   threads, one per transfer, never on the async workers, so concurrent transfers use all cores.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::TryStreamExt;
use opendal::Operator;
use tokio::sync::mpsc;

use crate::direct::DirectWriter;
use crate::layout::ContentHash;
use crate::storage::StorageError;

/// First six bytes of every object.
pub const OBJECT_MAGIC: &[u8; 6] = b"COFFER";
/// Version of the object format, byte 6 of every object.
pub const OBJECT_VERSION: u8 = 1;
/// Length of the header; the body starts at this offset.
pub const OBJECT_HEADER_LEN: usize = 8;

/// Size of the reads from local files (and of the blocks hashed and compressed at a time).
const READ_BLOCK: usize = 1024 * 1024;
/// Blocks in flight between the blocking thread and the async writer or reader.
const PIPELINE_DEPTH: usize = 4;
/// Chunk and concurrency of ranged reads when downloading.
const DOWNLOAD_CHUNK: usize = 8 * 1024 * 1024;
const DOWNLOAD_CONCURRENT: usize = 2;

/// How an object's body is encoded (byte 7 of the header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// The body is the content itself.
    Raw = 0,
    /// The body is zstd: one or more frames whose concatenated output is the content.
    Zstd = 1,
}

impl Codec {
    /// The 8-byte header of an object with this codec.
    pub fn header(self) -> [u8; OBJECT_HEADER_LEN] {
        let mut header = [0u8; OBJECT_HEADER_LEN];
        header[..6].copy_from_slice(OBJECT_MAGIC);
        header[6] = OBJECT_VERSION;
        header[7] = self as u8;
        header
    }

    /// The codec named by an object's header; `Err` says what is wrong with it.
    pub fn from_header(header: &[u8]) -> Result<Self, String> {
        if header.len() < OBJECT_HEADER_LEN {
            return Err(format!(
                "object is {} bytes long, shorter than its {OBJECT_HEADER_LEN}-byte header",
                header.len()
            ));
        }
        if &header[..6] != OBJECT_MAGIC {
            return Err("object does not start with \"COFFER\"".into());
        }
        if header[6] != OBJECT_VERSION {
            return Err(format!(
                "object format version {} is not supported (this Coffer reads {OBJECT_VERSION})",
                header[6]
            ));
        }
        match header[7] {
            0 => Ok(Self::Raw),
            1 => Ok(Self::Zstd),
            other => Err(format!("unknown object codec {other}")),
        }
    }
}

/// How an upload stores the content of the objects it writes: the setting of a location. Each
/// object records its own [`Codec`], so objects stored under different settings mix freely.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Every object raw: no CPU spent compressing.
    None,
    /// zstd at this level for each object whose first block it shrinks enough
    /// ([`UploadOptions::max_compressed_ratio`]); the others raw.
    Zstd {
        /// The zstd level, within [`Compression::ZSTD_LEVELS`].
        level: i32,
    },
}

impl Compression {
    /// The zstd levels a location may use. Negative levels are faster and compress less; above
    /// 12, each compression context takes over 16 MiB (one per file in flight), and compression
    /// runs at under 30 MB/s per core.
    pub const ZSTD_LEVELS: std::ops::RangeInclusive<i32> = -7..=12;

    /// zstd at level 1: on text about 330 MB/s per core, a third of the size.
    pub const DEFAULT: Self = Self::Zstd { level: 1 };

    /// zstd at `level`, or why that level is refused.
    pub fn zstd(level: i32) -> Result<Self, String> {
        if Self::ZSTD_LEVELS.contains(&level) && level != 0 {
            Ok(Self::Zstd { level })
        } else {
            Err(format!(
                "zstd level {level} is not supported: use {} to {}, but not 0",
                Self::ZSTD_LEVELS.start(),
                Self::ZSTD_LEVELS.end()
            ))
        }
    }

    /// The zstd level, when compressing at all.
    pub fn zstd_level(self) -> Option<i32> {
        match self {
            Self::None => None,
            Self::Zstd { level } => Some(level),
        }
    }
}

impl Default for Compression {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// `none`, or `zstd:<level>`: the form cofferctl takes and the catalog stores.
impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::None => f.write_str("none"),
            Self::Zstd { level } => write!(f, "zstd:{level}"),
        }
    }
}

/// Parses `none`, `zstd` (level 1) or `zstd:<level>`.
impl std::str::FromStr for Compression {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.split_once(':') {
            None if text == "none" => Ok(Self::None),
            None if text == "zstd" => Ok(Self::DEFAULT),
            Some(("zstd", level)) => level
                .parse::<i32>()
                .map_err(|_| format!("{level:?} is not a zstd level (a whole number)"))
                .and_then(Self::zstd),
            _ => Err(format!(
                "{text:?} is not a compression: use none, zstd or zstd:<level>"
            )),
        }
    }
}

/// An async token bucket on bytes, shared by every transfer that clones it: together they move at
/// most `bytes_per_second` (plus a burst of a tenth of a second).
///
/// A transfer takes its bytes first and then waits until the bucket has paid them back, so one
/// large block may make the bucket briefly negative; the average rate still holds.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    bucket: Arc<Mutex<TokenBucket>>,
}

#[derive(Debug)]
struct TokenBucket {
    bytes_per_second: f64,
    capacity: f64,
    tokens: f64,
    last_refill: Instant,
}

impl TokenBucket {
    fn new(bytes_per_second: u64, now: Instant) -> Self {
        let rate = bytes_per_second.max(1) as f64;
        let capacity = (rate / 10.0).max(1.0);
        Self {
            bytes_per_second: rate,
            capacity,
            tokens: capacity,
            last_refill: now,
        }
    }

    /// Takes `bytes` at `now` and says how long the taker must wait for them.
    fn reserve(&mut self, now: Instant, bytes: u64) -> Duration {
        let elapsed = now
            .saturating_duration_since(self.last_refill)
            .as_secs_f64();
        self.last_refill = self.last_refill.max(now);
        self.tokens = (self.tokens + elapsed * self.bytes_per_second).min(self.capacity);
        self.tokens -= bytes as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.bytes_per_second)
        }
    }
}

impl RateLimiter {
    /// A limiter of `bytes_per_second` (0 is taken as 1).
    pub fn new(bytes_per_second: u64) -> Self {
        Self {
            bucket: Arc::new(Mutex::new(TokenBucket::new(
                bytes_per_second,
                Instant::now(),
            ))),
        }
    }

    /// The rate this limiter allows.
    pub fn bytes_per_second(&self) -> u64 {
        self.lock().bytes_per_second as u64
    }

    /// Waits until `bytes` may pass.
    pub async fn acquire(&self, bytes: u64) {
        let wait = self.reserve(bytes);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// Waits until `bytes` may pass, on a thread that may block.
    fn acquire_blocking(&self, bytes: u64) {
        let wait = self.reserve(bytes);
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }

    fn reserve(&self, bytes: u64) -> Duration {
        self.lock().reserve(Instant::now(), bytes)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TokenBucket> {
        // The bucket holds plain numbers: a panic elsewhere cannot leave it inconsistent.
        self.bucket
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Computes the BLAKE3 hash and the size of a file, reading it in 1 MiB blocks on a blocking
/// thread (never the whole file in memory), at the limiter's rate if one is given.
///
/// Fails when the file cannot be opened or read.
pub async fn hash_file(
    path: &Path,
    limiter: Option<&RateLimiter>,
) -> io::Result<(ContentHash, u64)> {
    let path = path.to_path_buf();
    let limiter = limiter.cloned();
    tokio::task::spawn_blocking(move || {
        let mut file = File::open(&path)?;
        let mut hasher = blake3::Hasher::new();
        let mut buffer = vec![0u8; READ_BLOCK];
        let mut total = 0u64;
        loop {
            let read = read_full(&mut file, &mut buffer)?;
            if read == 0 {
                break;
            }
            if let Some(limiter) = &limiter {
                limiter.acquire_blocking(read as u64);
            }
            hasher.update(&buffer[..read]);
            total += read as u64;
        }
        Ok((ContentHash::from(hasher.finalize()), total))
    })
    .await
    .map_err(io::Error::other)?
}

/// Files up to this size are read once into memory by [`read_small_file`] and stored with
/// [`upload_bytes`]: hashing and uploading them from the same bytes halves their reads, and one
/// blocking call per file replaces a pipeline of them.
pub const SMALL_FILE: u64 = 1024 * 1024;

/// A small file's content, read once, with its hash.
#[derive(Debug, Clone)]
pub struct SmallFile {
    /// The content.
    pub content: Bytes,
    /// Its BLAKE3 hash.
    pub hash: ContentHash,
}

/// Reads a file of at most [`SMALL_FILE`] bytes whole and hashes it, on a blocking thread, at the
/// limiter's rate if one is given. Returns `None` when the file turns out to be larger (it grew):
/// the caller streams it instead.
///
/// Fails when the file cannot be opened or read.
pub async fn read_small_file(
    path: &Path,
    limiter: Option<&RateLimiter>,
) -> io::Result<Option<SmallFile>> {
    let path = path.to_path_buf();
    let limiter = limiter.cloned();
    tokio::task::spawn_blocking(move || {
        let mut file = File::open(&path)?;
        let mut content = Vec::with_capacity(64 * 1024);
        let limit = SMALL_FILE + 1;
        (&mut file).take(limit).read_to_end(&mut content)?;
        if content.len() as u64 > SMALL_FILE {
            return Ok(None);
        }
        if let Some(limiter) = &limiter
            && !content.is_empty()
        {
            limiter.acquire_blocking(content.len() as u64);
        }
        let hash = ContentHash::from(blake3::hash(&content));
        Ok(Some(SmallFile {
            content: Bytes::from(content),
            hash,
        }))
    })
    .await
    .map_err(io::Error::other)?
}

/// Stores content held in memory at `object_path` in the object format (compressed when zstd
/// saves at least the configured share), in one write. For a local folder, by temporary file and
/// rename, without a sync (see [`LocationWriteback`]).
///
/// Fails when the storage fails.
pub async fn upload_bytes(
    op: &Operator,
    object_path: &str,
    content: Bytes,
    options: &UploadOptions,
) -> Result<UploadOutcome, StorageError> {
    let level = options.compression.zstd_level();
    let max_ratio = options.max_compressed_ratio;
    let read_bytes = content.len() as u64;
    let local = local_root(op);
    let path = object_path.to_string();
    let encoded = tokio::task::spawn_blocking(move || -> io::Result<(Vec<u8>, bool)> {
        let encoded = encode_bytes(&content, level, max_ratio)?;
        if let Some(root) = local {
            write_local_object(&root, &path, &encoded.0)?;
        }
        Ok(encoded)
    })
    .await
    .map_err(io::Error::other)
    .and_then(|result| result)
    .map_err(|error| StorageError::local(op, "write", object_path, error))?;
    let (encoded, compressed) = encoded;
    let stored_bytes = encoded.len() as u64;
    if local_root(op).is_none() {
        op.write(object_path, encoded)
            .await
            .map_err(|cause| StorageError::backend(op, "write", object_path, cause))?;
    }
    Ok(UploadOutcome {
        stored_bytes,
        compressed,
        read_bytes,
    })
}

/// The object form of `content`: header and raw or zstd body.
fn encode_bytes(content: &[u8], level: Option<i32>, max_ratio: f64) -> io::Result<(Vec<u8>, bool)> {
    if let Some(level) = level
        && !content.is_empty()
    {
        let compressed = compress_reusing_context(content, level)?;
        if (compressed.len() as f64) <= content.len() as f64 * max_ratio {
            let mut object = Vec::with_capacity(OBJECT_HEADER_LEN + compressed.len());
            object.extend_from_slice(&Codec::Zstd.header());
            object.extend_from_slice(&compressed);
            return Ok((object, true));
        }
    }
    let mut object = Vec::with_capacity(OBJECT_HEADER_LEN + content.len());
    object.extend_from_slice(&Codec::Raw.header());
    object.extend_from_slice(content);
    Ok((object, false))
}

thread_local! {
    /// One zstd compression context per (blocking) thread, reused from one small file to the
    /// next: creating one per file cost as much as compressing a small file.
    static COMPRESSOR: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { std::cell::RefCell::new(None) };
}

/// `zstd::bulk::compress` with this thread's context.
fn compress_reusing_context(content: &[u8], level: i32) -> io::Result<Vec<u8>> {
    COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        let compressor = match &mut *slot {
            Some((current, compressor)) if *current == level => compressor,
            slot => &mut slot.insert((level, zstd::bulk::Compressor::new(level)?)).1,
        };
        compressor.compress(content)
    })
}

/// How a temporary file written next to an object ends (`<hash>.<uuid>.tmp`): not an object, and
/// removable when no backup runs.
pub const TEMPORARY_SUFFIX: &str = ".tmp";

/// Renames `from` to `to`. The folder of `to` is created only when the rename says it is
/// missing: storing thousands of objects into 256 fan-out folders then costs no `mkdir` each.
fn rename_into(from: &Path, to: &Path) -> io::Result<()> {
    match std::fs::rename(from, to) {
        Err(error) if error.kind() == io::ErrorKind::NotFound && from.exists() => {
            if let Some(folder) = to.parent() {
                std::fs::create_dir_all(folder)?;
            }
            std::fs::rename(from, to)
        }
        result => result,
    }
}

/// Creates (truncates) `path` with `create`, creating its folder only when it is missing.
fn create_in_folder<T>(path: &Path, create: impl Fn(&Path) -> io::Result<T>) -> io::Result<T> {
    match create(path) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            if let Some(folder) = path.parent() {
                std::fs::create_dir_all(folder)?;
            }
            create(path)
        }
        result => result,
    }
}

/// Writes an object into a local folder: a temporary file renamed into place, no sync.
///
/// The temporary file sits next to the object (`<hash>.<uuid>.tmp`), not in the location's
/// shared temporary folder: a rename within one folder takes only that folder's lock, while a
/// rename between folders takes the filesystem-wide rename lock, and thousands of creates in one
/// folder queue on its lock. Both showed as lock spinning in a profile of a full backup of
/// thousands of small files by three agents.
fn write_local_object(root: &Path, object_path: &str, bytes: &[u8]) -> io::Result<()> {
    let target = root.join(object_path);
    let temporary = root.join(format!(
        "{object_path}.{}{TEMPORARY_SUFFIX}",
        uuid::Uuid::new_v4().simple()
    ));
    create_in_folder(&temporary, |path| File::create(path))?.write_all(bytes)?;
    let renamed = std::fs::rename(&temporary, &target);
    if renamed.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    renamed
}

/// Reads until `buffer` is full or the file ends; returns how much was read.
fn read_full(file: &mut File, buffer: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match file.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(read) => filled += read,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        }
    }
    Ok(filled)
}

/// How [`upload_file`] writes.
#[derive(Debug, Clone)]
pub struct UploadOptions {
    /// Size of the chunks OpenDAL writes (the part size of multipart uploads); 8 MiB by default.
    /// S3 needs at least 5 MiB.
    pub chunk_size: usize,
    /// Chunks of one object written at the same time; 2 by default.
    pub concurrent: usize,
    /// Whether to write in chunks (multipart, block list) at all. `false` writes an object as
    /// one conditional (`if_not_exists`) write, which on GCS is a single resumable upload
    /// session: what fake-gcs-server needs (see [`BackendQuirks`](crate::storage::BackendQuirks)
    /// and [`UploadOptions::for_quirks`]). Parts are then sent one after the other, so keep it
    /// for emulators.
    pub chunked: bool,
    /// How new objects are stored; zstd level 1 by default.
    pub compression: Compression,
    /// Compress when the first block shrinks to at most this fraction of its size; 0.9 by default.
    pub max_compressed_ratio: f64,
    /// Limits the rate at which the file is read, shared with other transfers.
    pub rate_limiter: Option<RateLimiter>,
}

impl Default for UploadOptions {
    fn default() -> Self {
        Self {
            chunk_size: 8 * 1024 * 1024,
            concurrent: 2,
            chunked: true,
            compression: Compression::DEFAULT,
            max_compressed_ratio: 0.9,
            rate_limiter: None,
        }
    }
}

impl UploadOptions {
    /// The default options, adjusted to a backend's quirks (a location's
    /// [`StorageConfig::quirks`](crate::storage::StorageConfig::quirks)).
    pub fn for_quirks(quirks: crate::storage::BackendQuirks) -> Self {
        Self {
            chunked: quirks.chunked_writes,
            ..Self::default()
        }
    }
}

/// What [`upload_file`] stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadOutcome {
    /// Size of the object in storage, header included.
    pub stored_bytes: u64,
    /// Whether the body is zstd.
    pub compressed: bool,
    /// Bytes read from the file (its size).
    pub read_bytes: u64,
}

/// Why an upload failed. In every case nothing was committed at the object's path.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The file could not be opened or read, or its content could not be compressed.
    #[error("read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The file's content is not what was hashed before: it changed in the meantime. The write was
    /// aborted; hash the file again and upload it under its new hash.
    #[error("{} changed since it was hashed (expected {expected}, read {actual}); upload aborted", path.display())]
    ContentChanged {
        /// The file.
        path: PathBuf,
        /// The hash the upload was planned with.
        expected: ContentHash,
        /// The hash of what was read.
        actual: ContentHash,
    },
    /// The storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl UploadError {
    /// Whether uploading again could succeed as is (a transient storage failure). A changed file
    /// needs hashing again first; a read error needs a person.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Storage(error) => error.is_retryable(),
            Self::Read { .. } | Self::ContentChanged { .. } => false,
        }
    }
}

/// What the encoding thread learnt about the file.
struct EncodeSummary {
    hash: ContentHash,
    read_bytes: u64,
}

/// Stores the content of `file` at `object_path` in the object format, streaming: the file is read
/// in 1 MiB blocks on a blocking thread that hashes them and, when the first block shrinks by at
/// least 10% under zstd, compresses them; the async side writes the result through an OpenDAL
/// writer in `chunk_size` chunks (multipart on object stores), `concurrent` at a time.
///
/// When the hash of what was read differs from `expected`, the writer is aborted and nothing is
/// committed: the result is [`UploadError::ContentChanged`]. Any other failure aborts it too.
///
/// Fails when the file cannot be read ([`UploadError::Read`]), when it changed
/// ([`UploadError::ContentChanged`]) or when the storage fails ([`UploadError::Storage`]).
pub async fn upload_file(
    op: &Operator,
    object_path: &str,
    file: &Path,
    expected: ContentHash,
    options: &UploadOptions,
) -> Result<UploadOutcome, UploadError> {
    let read_error = |source| UploadError::Read {
        path: file.to_path_buf(),
        source,
    };
    let opened = {
        let path = file.to_path_buf();
        tokio::task::spawn_blocking(move || File::open(path))
            .await
            .map_err(|error| read_error(io::Error::other(error)))?
            .map_err(read_error)?
    };

    if let Some(root) = local_root(op) {
        return upload_to_folder(&root, object_path, file, opened, expected, options).await;
    }

    let (sender, mut receiver) = mpsc::channel::<Bytes>(PIPELINE_DEPTH);
    let level = options.compression.zstd_level();
    let max_ratio = options.max_compressed_ratio;
    let limiter = options.rate_limiter.clone();
    let encoder = tokio::task::spawn_blocking(move || {
        let mut send = |bytes: Bytes| {
            sender
                .blocking_send(bytes)
                .map_err(|_| io::Error::other("the object writer stopped"))
        };
        encode_file(opened, &mut send, level, max_ratio, limiter.as_ref())
    });

    let writer = if options.chunked {
        op.writer_with(object_path)
            .chunk(options.chunk_size.max(1))
            .concurrent(options.concurrent.max(1))
            .await
    } else {
        // A conditional write: on GCS (and fake-gcs-server) it is one resumable upload session,
        // the only streaming write fake-gcs-server accepts; a plain writer given more than one
        // buffer starts an XML multipart upload, which it refuses. The condition costs nothing:
        // objects are content-addressed, so an object already at this path is this content.
        op.writer_with(object_path).if_not_exists(true).await
    };
    let mut writer = match writer {
        Ok(writer) => writer,
        Err(cause) => {
            drop(receiver);
            let _ = encoder.await;
            return Err(StorageError::backend(op, "write", object_path, cause).into());
        }
    };

    let mut stored_bytes = 0u64;
    let mut compressed = false;
    let mut write_failure = None;
    while let Some(bytes) = receiver.recv().await {
        if stored_bytes == 0 && bytes.len() >= OBJECT_HEADER_LEN {
            compressed = bytes[7] == Codec::Zstd as u8;
        }
        stored_bytes += bytes.len() as u64;
        if let Err(cause) = writer.write(bytes).await {
            write_failure = Some(cause);
            break;
        }
    }
    // Stops the encoder if the writer gave up; it notices on its next send.
    drop(receiver);
    let encoded = encoder.await;

    let failure = match (write_failure, encoded) {
        (Some(cause), _) => StorageError::backend(op, "write", object_path, cause).into(),
        (None, Err(join_error)) => read_error(io::Error::other(join_error)),
        (None, Ok(Err(error))) => read_error(error),
        (None, Ok(Ok(summary))) if summary.hash != expected => UploadError::ContentChanged {
            path: file.to_path_buf(),
            expected,
            actual: summary.hash,
        },
        (None, Ok(Ok(summary))) => {
            return match writer.close().await {
                Ok(_) => Ok(UploadOutcome {
                    stored_bytes,
                    compressed,
                    read_bytes: summary.read_bytes,
                }),
                // Another writer (a node with the same file) stored the same content first.
                Err(cause)
                    if !options.chunked
                        && cause.kind() == opendal::ErrorKind::ConditionNotMatch =>
                {
                    Ok(UploadOutcome {
                        stored_bytes,
                        compressed,
                        read_bytes: summary.read_bytes,
                    })
                }
                Err(cause) => Err(StorageError::backend(op, "write", object_path, cause).into()),
            };
        }
    };
    if let Err(error) = writer.abort().await {
        tracing::warn!(path = object_path, %error, "abort object write");
    }
    Err(failure)
}

/// The folder of a local (`fs`) location, which [`upload_file`] writes directly.
///
/// OpenDAL's fs backend syncs every file it closes. A backup writes thousands of objects, and
/// one sync per object made the disk's flush latency, not its bandwidth, the limit. Objects are
/// written to a temporary file and renamed into place (never visible half-written), without a
/// sync; a [`LocationWriteback`] makes them durable, in the background and in batches, before
/// a manifest refers to them.
fn local_root(op: &Operator) -> Option<PathBuf> {
    let info = op.info();
    (info.scheme() == "fs").then(|| PathBuf::from(info.root()))
}

/// Whether `op` is a local (`fs`) folder, which [`encode_into_folder`] can write into.
pub fn is_local_folder(op: &Operator) -> bool {
    local_root(op).is_some()
}

/// Makes the name of a file just written through `op` durable (a no-op for object stores).
///
/// OpenDAL's fs backend syncs the content of the file it closes, then renames it into place,
/// but syncs no folder: after a power loss the file, or a folder its write created, could be
/// gone although the write returned. A manifest or a backup's commit point must not be: this
/// syncs each folder from the file's up to the location's root, at once.
///
/// Fails when a folder cannot be opened or synced.
pub async fn sync_name(op: &Operator, path: &str) -> Result<(), StorageError> {
    let Some(root) = local_root(op) else {
        return Ok(());
    };
    let folders = folders_of(&root, path);
    tokio::task::spawn_blocking(move || sync_each(&folders))
        .await
        .map_err(io::Error::other)
        .and_then(|synced| synced)
        .map_err(|error| StorageError::local(op, "sync the folders of", path, error))
}

/// The folders holding `path` under `root`, from its own up to `root`.
fn folders_of(root: &Path, path: &str) -> Vec<PathBuf> {
    let mut folders = Vec::new();
    let mut relative = Path::new(path.trim_start_matches('/')).parent();
    while let Some(folder) = relative {
        folders.push(root.join(folder));
        relative = folder.parent();
    }
    folders
}

async fn upload_to_folder(
    root: &Path,
    object_path: &str,
    file: &Path,
    opened: File,
    expected: ContentHash,
    options: &UploadOptions,
) -> Result<UploadOutcome, UploadError> {
    let pending = encode_into_folder_at(root, file, Some(opened), options).await?;
    if pending.hash != expected {
        return Err(UploadError::ContentChanged {
            path: file.to_path_buf(),
            expected,
            actual: pending.hash,
        });
    }
    let outcome = pending.outcome;
    pending
        .commit(object_path)
        .await
        .map_err(|error| UploadError::Read {
            path: file.to_path_buf(),
            source: io::Error::new(
                error.kind(),
                format!("write {}: {error}", root.join(object_path).display()),
            ),
        })?;
    Ok(outcome)
}

/// A file's content encoded into a local (`fs`) location's temporary folder by
/// [`encode_into_folder`], hashed, not yet visible under its object name. Dropped without
/// [`PendingObject::commit`], the temporary file is removed.
#[derive(Debug)]
pub struct PendingObject {
    temporary: Option<PathBuf>,
    root: PathBuf,
    /// BLAKE3 of the content read.
    pub hash: ContentHash,
    /// What was read and what the object holds.
    pub outcome: UploadOutcome,
}

impl PendingObject {
    /// Makes the object visible at `object_path` (the path of [`PendingObject::hash`]).
    ///
    /// Fails when it cannot be renamed into place (the temporary file is removed then).
    pub async fn commit(mut self, object_path: &str) -> io::Result<()> {
        let Some(temporary) = self.temporary.take() else {
            return Err(io::Error::other("object already committed"));
        };
        let target = self.root.join(object_path);
        tokio::task::spawn_blocking(move || {
            let renamed = rename_into(&temporary, &target);
            if renamed.is_err() {
                let _ = std::fs::remove_file(&temporary);
            }
            renamed
        })
        .await
        .map_err(io::Error::other)?
    }
}

impl Drop for PendingObject {
    fn drop(&mut self) {
        if let Some(temporary) = self.temporary.take() {
            let _ = std::fs::remove_file(temporary);
        }
    }
}

/// Reads, hashes and encodes `file` into a temporary file of a local (`fs`) location in ONE
/// pass, for content that is probably new: [`upload_file`] needs the hash first (a second
/// read) to name the object. The caller commits the result under the object's name unless the
/// location holds it already. `Ok(None)` when `op` is not a local folder.
///
/// Fails when the file cannot be read or the temporary file written.
pub async fn encode_into_folder(
    op: &Operator,
    file: &Path,
    options: &UploadOptions,
) -> Result<Option<PendingObject>, UploadError> {
    let Some(root) = local_root(op) else {
        return Ok(None);
    };
    encode_into_folder_at(&root, file, None, options)
        .await
        .map(Some)
}

/// [`encode_into_folder`] into the folder `root`, from `file` (opened here unless `opened`).
async fn encode_into_folder_at(
    root: &Path,
    file: &Path,
    opened: Option<File>,
    options: &UploadOptions,
) -> Result<PendingObject, UploadError> {
    let read_error = |source| UploadError::Read {
        path: file.to_path_buf(),
        source,
    };
    let temporary = root
        .join(crate::storage::FS_ATOMIC_WRITE_DIR)
        .join(format!("{}.object", uuid::Uuid::new_v4()));
    let source = file.to_path_buf();
    let level = options.compression.zstd_level();
    let max_ratio = options.max_compressed_ratio;
    let limiter = options.rate_limiter.clone();
    let written = {
        let temporary = temporary.clone();
        tokio::task::spawn_blocking(move || {
            let opened = match opened {
                Some(opened) => opened,
                None => File::open(&source)?,
            };
            encode_to_temporary(opened, &temporary, level, max_ratio, limiter.as_ref())
        })
        .await
        .map_err(|error| read_error(io::Error::other(error)))?
        .map_err(read_error)?
    };
    let (summary, stored_bytes, compressed) = written;
    Ok(PendingObject {
        temporary: Some(temporary),
        root: root.to_path_buf(),
        hash: summary.hash,
        outcome: UploadOutcome {
            stored_bytes,
            compressed,
            read_bytes: summary.read_bytes,
        },
    })
}

/// Encodes `opened` into the file `temporary` (removed on failure); returns what was read, the
/// stored size and whether the body is zstd.
fn encode_to_temporary(
    opened: File,
    temporary: &Path,
    level: Option<i32>,
    max_ratio: f64,
    limiter: Option<&RateLimiter>,
) -> io::Result<(EncodeSummary, u64, bool)> {
    let write_error = |error: io::Error| {
        io::Error::new(
            error.kind(),
            format!("write {}: {error}", temporary.display()),
        )
    };
    // Large objects bypass the page cache: see `crate::direct`.
    let mut out = create_in_folder(temporary, DirectWriter::create).map_err(write_error)?;
    let mut compressed = None;
    let summary = encode_file(
        opened,
        &mut |bytes: Bytes| {
            // The first piece is the header.
            if compressed.is_none() {
                compressed = Some(bytes.get(7) == Some(&(Codec::Zstd as u8)));
            }
            out.write_all(&bytes).map_err(write_error)
        },
        level,
        max_ratio,
        limiter,
    );
    let finished = summary.and_then(|summary| {
        out.finish()
            .map(|stored| (summary, stored))
            .map_err(write_error)
    });
    match finished {
        Ok((summary, stored)) => Ok((summary, stored, compressed.unwrap_or(false))),
        Err(error) => {
            let _ = std::fs::remove_file(temporary);
            Err(error)
        }
    }
}

/// Bytes stored into a local folder after which [`LocationWriteback`] starts a background sync.
const WRITEBACK_BYTES: u64 = 64 * 1024 * 1024;
/// Up to this many objects, [`LocationWriteback::finish`] syncs each (and its folder) rather
/// than the whole filesystem.
const WRITEBACK_FEW_OBJECTS: usize = 64;

/// Makes the objects one writer stores into a location durable, overlapping the disk's work with
/// the writer's.
///
/// Objects land in a local folder without a sync each (see [`local_root`]). Syncing the whole
/// filesystem once at the end left the disk idle while objects were written, then the writer
/// idle while the disk wrote them all; instead, every [`WRITEBACK_BYTES`] stored start a `syncfs`
/// in the background, so [`LocationWriteback::finish`] only waits for the tail. A writer that
/// stored only a few objects (an incremental backup) syncs just those files and their folders:
/// a `syncfs` would also wait for everything else dirty on the filesystem. Object stores
/// acknowledge a write once it is durable: there is nothing to do for them.
#[derive(Debug)]
pub struct LocationWriteback {
    root: Option<PathBuf>,
    state: Mutex<WritebackState>,
}

#[derive(Debug)]
struct WritebackState {
    unsynced_bytes: u64,
    /// Objects stored while there are few of them; `None` once there are more than
    /// [`WRITEBACK_FEW_OBJECTS`] (or a background sync ran): the filesystem is synced instead.
    few: Option<Vec<PathBuf>>,
    in_flight: Option<tokio::task::JoinHandle<io::Result<()>>>,
}

impl Default for WritebackState {
    fn default() -> Self {
        Self {
            unsynced_bytes: 0,
            few: Some(Vec::new()),
            in_flight: None,
        }
    }
}

impl LocationWriteback {
    /// A writeback for objects stored through `op`.
    pub fn new(op: &Operator) -> Self {
        Self {
            root: local_root(op),
            state: Mutex::new(WritebackState::default()),
        }
    }

    /// Records that `bytes` were stored at `object_path` (relative to the location's root).
    /// Must be called from within a tokio runtime.
    pub fn stored(&self, object_path: &str, bytes: u64) {
        let Some(root) = &self.root else {
            return;
        };
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(few) = &mut state.few {
            if few.len() < WRITEBACK_FEW_OBJECTS {
                few.push(root.join(object_path));
            } else {
                state.few = None;
            }
        }
        state.unsynced_bytes += bytes;
        let idle = state
            .in_flight
            .as_ref()
            .is_none_or(tokio::task::JoinHandle::is_finished);
        if state.unsynced_bytes >= WRITEBACK_BYTES && idle {
            state.unsynced_bytes = 0;
            state.few = None;
            let root = root.clone();
            // A finished earlier sync's result does not matter: the final one covers its data.
            state.in_flight = Some(tokio::task::spawn_blocking(move || sync_folder_fs(&root)));
        }
    }

    /// Waits until everything recorded is durable.
    ///
    /// Fails when a file, a folder or the filesystem cannot be synced.
    pub async fn finish(&self) -> io::Result<()> {
        let Some(root) = self.root.clone() else {
            return Ok(());
        };
        let (in_flight, few) = {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            (state.in_flight.take(), state.few.take())
        };
        if let Some(in_flight) = in_flight {
            // Its data is covered by the sync below; only a join failure is worth reporting.
            let _ = in_flight.await.map_err(io::Error::other)?;
        }
        tokio::task::spawn_blocking(move || {
            let Some(few) = few else {
                return sync_folder_fs(&root);
            };
            // The object's folder holds its name; the folder above, the folder's (when this
            // upload created it).
            let mut folders = std::collections::BTreeSet::new();
            for object in &few {
                if let Some(folder) = object.parent() {
                    folders.insert(folder.to_path_buf());
                    if let Some(above) = folder.parent() {
                        folders.insert(above.to_path_buf());
                    }
                }
            }
            // Objects and the folders naming them, all in one round: the upload reports them
            // durable only once every sync returned, whatever the order they completed in.
            let mut paths = few;
            paths.extend(folders);
            sync_each(&paths)
        })
        .await
        .map_err(io::Error::other)?
    }
}

/// `fsync` of each file or folder, by several threads at once: each waits on the disk rather than
/// the CPU, and the disk serves (and merges the cache flushes of) many at a time.
fn sync_each(paths: &[PathBuf]) -> io::Result<()> {
    const SYNC_THREADS: usize = 16;
    let per_thread = paths.len().div_ceil(SYNC_THREADS).max(1);
    std::thread::scope(|scope| {
        let workers: Vec<_> = paths
            .chunks(per_thread)
            .map(|chunk| {
                scope.spawn(move || {
                    chunk
                        .iter()
                        .try_for_each(|path| File::open(path)?.sync_all())
                })
            })
            .collect();
        workers.into_iter().try_for_each(|worker| {
            worker
                .join()
                .map_err(|_| io::Error::other("a sync thread panicked"))?
        })
    })
}

/// How long a file in an `fs` location's temporary folder must have gone unwritten to count as
/// left over. A writer touches its temporary file with every buffer it writes (about one a
/// second even at a rate limit of 1 MiB/s), so only a writer that stopped mid-write (an agent
/// killed or powered off) leaves one this old.
pub const STALE_TEMPORARY_AGE: Duration = Duration::from_secs(24 * 60 * 60);

/// Removes the files of an `fs` location's temporary folder not modified for `age`: what
/// writers that stopped mid-write left (they can be as large as the largest file backed up).
/// Returns how many were removed; 0 for object stores (an abandoned multipart upload is the
/// bucket's lifecycle rules' to expire) or when there is no such folder. Temporary files named
/// next to their object (`<hash>.<uuid>.tmp`) exist only between a create and a rename of a
/// small file and are not looked for: that would list every object.
///
/// Fails when the folder cannot be listed or a file removed.
pub async fn remove_stale_temporaries(op: &Operator, age: Duration) -> io::Result<u64> {
    let Some(root) = local_root(op) else {
        return Ok(0);
    };
    let folder = root.join(crate::storage::FS_ATOMIC_WRITE_DIR);
    tokio::task::spawn_blocking(move || {
        let entries = match std::fs::read_dir(&folder) {
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(0),
            entries => entries?,
        };
        let now = std::time::SystemTime::now();
        let mut removed = 0;
        for entry in entries {
            let entry = entry?;
            let metadata = match entry.metadata() {
                Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
                metadata => metadata?,
            };
            let unwritten_for = now
                .duration_since(metadata.modified()?)
                .unwrap_or(Duration::ZERO);
            if !metadata.is_file() || unwritten_for < age {
                continue;
            }
            match std::fs::remove_file(entry.path()) {
                // Another agent of the cluster removed it first.
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                result => {
                    result?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    })
    .await
    .map_err(io::Error::other)?
}

/// `syncfs` of the filesystem holding `folder`.
fn sync_folder_fs(folder: &Path) -> io::Result<()> {
    let folder = File::open(folder)?;
    rustix::fs::syncfs(&folder).map_err(io::Error::from)
}

/// The encoding thread of [`upload_file`]: reads, hashes, decides the codec from the first block,
/// compresses, and sends the header then the body to the writer.
fn encode_file(
    mut file: File,
    send: &mut dyn FnMut(Bytes) -> io::Result<()>,
    level: Option<i32>,
    max_ratio: f64,
    limiter: Option<&RateLimiter>,
) -> io::Result<EncodeSummary> {
    let mut hasher = blake3::Hasher::new();
    let mut read_bytes = 0u64;
    let mut read_block = |hasher: &mut blake3::Hasher| -> io::Result<Bytes> {
        let mut block = vec![0u8; READ_BLOCK];
        let read = read_full(&mut file, &mut block)?;
        block.truncate(read);
        if let Some(limiter) = limiter
            && read > 0
        {
            limiter.acquire_blocking(read as u64);
        }
        hasher.update(&block);
        read_bytes += read as u64;
        Ok(Bytes::from(block))
    };

    let first = read_block(&mut hasher)?;
    // Each 1 MiB block is compressed on its own, as one frame, from this thread's reused
    // context: one-shot compression of a contiguous block runs about twice as fast as a single
    // streaming frame, whose ring buffer sends most blocks down zstd's slower external-
    // dictionary path; the window (512 KiB at level 1) spans less than a block anyway.
    let first_frame = match level {
        Some(level) if !first.is_empty() => Some(compress_reusing_context(&first, level)?)
            .filter(|frame| (frame.len() as f64) <= first.len() as f64 * max_ratio)
            .map(|frame| (frame, level)),
        _ => None,
    };

    match first_frame {
        None => {
            send(Bytes::copy_from_slice(&Codec::Raw.header()))?;
            let mut block = first;
            while !block.is_empty() {
                send(block)?;
                block = read_block(&mut hasher)?;
            }
        }
        Some((frame, level)) => {
            send(Bytes::copy_from_slice(&Codec::Zstd.header()))?;
            send(Bytes::from(frame))?;
            loop {
                let block = read_block(&mut hasher)?;
                if block.is_empty() {
                    break;
                }
                send(Bytes::from(compress_reusing_context(&block, level)?))?;
            }
        }
    }
    Ok(EncodeSummary {
        hash: ContentHash::from(hasher.finalize()),
        read_bytes,
    })
}

/// Whether an object (or any file) exists at `path`.
///
/// Fails when the storage cannot tell (a network failure, bad credentials, a missing bucket).
pub async fn object_exists(op: &Operator, path: &str) -> Result<bool, StorageError> {
    if let Some(root) = local_root(op) {
        // A local folder answers directly: no layers, no async file wrapper per call.
        let target = root.join(path);
        return tokio::task::spawn_blocking(move || std::fs::symlink_metadata(target))
            .await
            .map_err(|error| StorageError::local(op, "stat", path, io::Error::other(error)))
            .and_then(|result| match result {
                Ok(metadata) => Ok(metadata.is_file()),
                Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(false),
                Err(error) => Err(StorageError::local(op, "stat", path, error)),
            });
    }
    op.exists(path)
        .await
        .map_err(|cause| StorageError::backend(op, "stat", path, cause))
}

/// Why a download failed. In every case the destination file was removed.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// The storage failed (including a missing object: see [`StorageError::is_not_found`]).
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The object decoded, but not to the content its name promises.
    #[error("object {path} is corrupt: its content hashes to {actual}, not {expected}")]
    Corrupt {
        /// Path of the object.
        path: String,
        /// The hash the object is named by.
        expected: ContentHash,
        /// The hash of what it decoded to.
        actual: ContentHash,
    },
    /// The object is not in the object format (bad header, broken zstd stream).
    #[error("object {path} cannot be decoded: {reason}")]
    Malformed {
        /// Path of the object.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The destination could not be written.
    #[error("write {}: {source}", dest.display())]
    Write {
        /// The destination file.
        dest: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
}

impl DownloadError {
    /// Whether downloading again could succeed as is (a transient storage failure).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Storage(error) if error.is_retryable())
    }
}

/// Where a failure of the decoding thread came from.
enum DecodeFailure {
    Malformed(String),
    Write(io::Error),
    /// Reading a local folder's object failed.
    Read(io::Error),
}

/// Downloads the object at `object_path` into `dest` (created or truncated), decoding its header
/// and body, and checks that the content hashes to `expected` (which also checks its size: any
/// other size is other content).
///
/// The file is NOT synced: a caller that needs it durable syncs it, or (restoring thousands of
/// files) the whole filesystem once, which costs one flush instead of one per file. From a local
/// (`fs`) location the object file is read directly on the decoding thread.
///
/// Storage bytes pass through `limiter` if one is given. Decoding, hashing and writing run on a
/// blocking thread.
///
/// Fails with [`DownloadError::Corrupt`] when the content does not hash to `expected`,
/// [`DownloadError::Malformed`] when the object is not in the object format,
/// [`DownloadError::Storage`] when the storage fails and [`DownloadError::Write`] when `dest`
/// cannot be written; in every case `dest` is removed.
pub async fn download_object(
    op: &Operator,
    object_path: &str,
    dest: &Path,
    expected: ContentHash,
    limiter: Option<&RateLimiter>,
) -> Result<u64, DownloadError> {
    download_object_sized(op, object_path, dest, expected, None, limiter)
        .await
        .map(|downloaded| downloaded.size)
}

/// What [`download_object_sized`] fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Downloaded {
    /// Size of the content (the file written).
    pub size: u64,
    /// Size of the object in storage, header included.
    pub stored_bytes: u64,
}

/// [`download_object`], told the content's size when the caller knows it (from a manifest): an
/// object of at most one download chunk is then fetched with one plain GET, rather than a
/// ranged, concurrent read that first asks the store for the object's size (one more request
/// per object, which restoring thousands of small files paid thousands of times). Also reports
/// the stored size, counted as it streams.
///
/// Fails as [`download_object`] does.
pub async fn download_object_sized(
    op: &Operator,
    object_path: &str,
    dest: &Path,
    expected: ContentHash,
    size_hint: Option<u64>,
    limiter: Option<&RateLimiter>,
) -> Result<Downloaded, DownloadError> {
    if let Some(root) = local_root(op) {
        let source = root.join(object_path);
        let dest_path = dest.to_path_buf();
        let limiter = limiter.cloned();
        let decoded = tokio::task::spawn_blocking(move || {
            decode_local_object(&source, &dest_path, size_hint, limiter.as_ref())
        })
        .await;
        return finish_download(op, object_path, dest, expected, Ok(()), decoded).await;
    }

    let (sender, receiver) = mpsc::channel::<Bytes>(PIPELINE_DEPTH);
    let decoder = {
        let dest = dest.to_path_buf();
        tokio::task::spawn_blocking(move || decode_to_file(receiver, &dest, size_hint))
    };

    let small =
        size_hint.is_some_and(|size| size + (OBJECT_HEADER_LEN as u64) <= DOWNLOAD_CHUNK as u64);
    let streamed = async {
        let reader = if small {
            op.reader(object_path).await?
        } else {
            op.reader_with(object_path)
                .chunk(DOWNLOAD_CHUNK)
                .concurrent(DOWNLOAD_CONCURRENT)
                .await?
        };
        let mut stream = reader.into_stream(..).await?;
        while let Some(buffer) = stream.try_next().await? {
            for bytes in buffer {
                if let Some(limiter) = limiter {
                    limiter.acquire(bytes.len() as u64).await;
                }
                if sender.send(bytes).await.is_err() {
                    // The decoder stopped; its own error explains why.
                    return Ok(());
                }
            }
        }
        Ok::<(), opendal::Error>(())
    }
    .await;
    drop(sender);
    let decoded = decoder.await;
    finish_download(op, object_path, dest, expected, streamed, decoded).await
}

/// The outcome of a download from what the transfer and the decoder report; removes `dest` on
/// failure.
async fn finish_download(
    op: &Operator,
    object_path: &str,
    dest: &Path,
    expected: ContentHash,
    streamed: Result<(), opendal::Error>,
    decoded: Result<Result<Decoded, DecodeFailure>, tokio::task::JoinError>,
) -> Result<Downloaded, DownloadError> {
    let result = match (streamed, decoded) {
        (Err(cause), _) => Err(StorageError::backend(op, "read", object_path, cause).into()),
        (Ok(()), Err(join_error)) => Err(DownloadError::Write {
            dest: dest.to_path_buf(),
            source: io::Error::other(join_error),
        }),
        (Ok(()), Ok(Err(DecodeFailure::Malformed(reason)))) => Err(DownloadError::Malformed {
            path: object_path.to_string(),
            reason,
        }),
        (Ok(()), Ok(Err(DecodeFailure::Write(source)))) => Err(DownloadError::Write {
            dest: dest.to_path_buf(),
            source,
        }),
        (Ok(()), Ok(Err(DecodeFailure::Read(error)))) => {
            Err(StorageError::local(op, "read", object_path, error).into())
        }
        (Ok(()), Ok(Ok(Decoded { hash: actual, .. }))) if actual != expected => {
            Err(DownloadError::Corrupt {
                path: object_path.to_string(),
                expected,
                actual,
            })
        }
        (Ok(()), Ok(Ok(decoded))) => Ok(Downloaded {
            size: decoded.size,
            stored_bytes: decoded.stored_bytes,
        }),
    };
    if result.is_err() {
        match tokio::fs::remove_file(dest).await {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => tracing::warn!(dest = %dest.display(), %error, "remove failed download"),
        }
    }
    result
}

/// Where decoded content goes: a file written through the page cache, or (a large file, see
/// `crate::direct`) around it.
enum FileSink {
    Buffered(io::BufWriter<File>),
    Direct(DirectWriter),
}

impl FileSink {
    /// Writes what is buffered and closes the file (not synced).
    fn finish(self) -> io::Result<()> {
        match self {
            Self::Buffered(file) => file
                .into_inner()
                .map(drop)
                .map_err(|error| error.into_error()),
            Self::Direct(file) => file.finish().map(drop),
        }
    }
}

impl Write for FileSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Buffered(file) => file.write(buf),
            Self::Direct(file) => file.write_all(buf).map(|()| buf.len()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Buffered(file) => file.flush(),
            // Only whole blocks can be written before the end: `finish` writes the rest.
            Self::Direct(_) => Ok(()),
        }
    }
}

/// Writes decoded content to the destination file while hashing it; remembers whether a failure
/// came from the file (and not from the zstd decoder that writes into it).
struct HashingFileWriter {
    file: FileSink,
    hasher: blake3::Hasher,
    written: u64,
    file_error: bool,
}

impl Write for HashingFileWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self
            .file
            .write(buf)
            .inspect_err(|_| self.file_error = true)?;
        self.hasher.update(&buf[..written]);
        self.written += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush().inspect_err(|_| self.file_error = true)
    }
}

enum Body {
    Header(Vec<u8>),
    Raw(HashingFileWriter),
    Zstd(zstd::stream::write::Decoder<'static, HashingFileWriter>),
}

/// What an [`ObjectDecoder`] wrote.
struct Decoded {
    hash: ContentHash,
    size: u64,
    stored_bytes: u64,
}

/// Decodes an object's stored bytes, fed in pieces of any size, into a file while hashing the
/// content.
struct ObjectDecoder {
    /// Stored bytes fed so far.
    stored_bytes: u64,
    body: Body,
    /// The file writer, until the header says which body wraps it.
    sink: Option<HashingFileWriter>,
}

impl ObjectDecoder {
    /// A decoder into a new file at `dest`; a file known to be large (`size_hint`) is written
    /// around the page cache.
    fn create(dest: &Path, size_hint: Option<u64>) -> Result<Self, DecodeFailure> {
        let file = if size_hint.is_some_and(|size| size > SMALL_FILE) {
            FileSink::Direct(DirectWriter::create(dest).map_err(DecodeFailure::Write)?)
        } else {
            let file = File::create(dest).map_err(DecodeFailure::Write)?;
            FileSink::Buffered(io::BufWriter::with_capacity(READ_BLOCK, file))
        };
        Ok(Self {
            stored_bytes: 0,
            body: Body::Header(Vec::with_capacity(OBJECT_HEADER_LEN)),
            sink: Some(HashingFileWriter {
                file,
                hasher: blake3::Hasher::new(),
                written: 0,
                file_error: false,
            }),
        })
    }

    fn zstd_failure(sink_failed: bool, error: io::Error) -> DecodeFailure {
        if sink_failed {
            DecodeFailure::Write(error)
        } else {
            DecodeFailure::Malformed(format!("broken zstd stream: {error}"))
        }
    }

    fn push(&mut self, mut bytes: &[u8]) -> Result<(), DecodeFailure> {
        self.stored_bytes += bytes.len() as u64;
        if let Body::Header(header) = &mut self.body {
            let needed = OBJECT_HEADER_LEN - header.len();
            let (taken, rest) = bytes.split_at(needed.min(bytes.len()));
            header.extend_from_slice(taken);
            bytes = rest;
            if header.len() < OBJECT_HEADER_LEN {
                return Ok(());
            }
            let codec = Codec::from_header(header).map_err(DecodeFailure::Malformed)?;
            let Some(writer) = self.sink.take() else {
                return Err(DecodeFailure::Malformed("decoder state lost".into()));
            };
            self.body = match codec {
                Codec::Raw => Body::Raw(writer),
                Codec::Zstd => Body::Zstd(
                    zstd::stream::write::Decoder::new(writer).map_err(DecodeFailure::Write)?,
                ),
            };
        }
        match &mut self.body {
            Body::Header(_) => Ok(()),
            Body::Raw(writer) => writer.write_all(bytes).map_err(DecodeFailure::Write),
            Body::Zstd(decoder) => decoder
                .write_all(bytes)
                .map_err(|error| Self::zstd_failure(decoder.get_ref().file_error, error)),
        }
    }

    /// Flushes the file (not synced) and returns the content's hash and size.
    fn finish(self) -> Result<Decoded, DecodeFailure> {
        let writer = match self.body {
            Body::Header(header) => {
                return Err(DecodeFailure::Malformed(
                    Codec::from_header(&header)
                        .err()
                        .unwrap_or_else(|| "object has no body".into()),
                ));
            }
            Body::Raw(writer) => writer,
            Body::Zstd(mut decoder) => {
                decoder
                    .flush()
                    .map_err(|error| Self::zstd_failure(decoder.get_ref().file_error, error))?;
                decoder.into_inner()
            }
        };
        let HashingFileWriter {
            file,
            hasher,
            written,
            ..
        } = writer;
        file.finish().map_err(DecodeFailure::Write)?;
        Ok(Decoded {
            hash: ContentHash::from(hasher.finalize()),
            size: written,
            stored_bytes: self.stored_bytes,
        })
    }
}

/// The decoding thread of [`download_object`] from an object store.
fn decode_to_file(
    mut receiver: mpsc::Receiver<Bytes>,
    dest: &Path,
    size_hint: Option<u64>,
) -> Result<Decoded, DecodeFailure> {
    let mut decoder = ObjectDecoder::create(dest, size_hint)?;
    while let Some(bytes) = receiver.blocking_recv() {
        decoder.push(&bytes)?;
    }
    decoder.finish()
}

/// [`download_object`] from a local folder: the object file read in 1 MiB blocks and decoded on
/// this (blocking) thread, at the limiter's rate if one is given.
fn decode_local_object(
    source: &Path,
    dest: &Path,
    size_hint: Option<u64>,
    limiter: Option<&RateLimiter>,
) -> Result<Decoded, DecodeFailure> {
    let mut object = File::open(source).map_err(DecodeFailure::Read)?;
    let mut decoder = ObjectDecoder::create(dest, size_hint)?;
    let mut buffer = vec![0u8; READ_BLOCK];
    loop {
        let read = read_full(&mut object, &mut buffer).map_err(DecodeFailure::Read)?;
        if read == 0 {
            break;
        }
        if let Some(limiter) = limiter {
            limiter.acquire_blocking(read as u64);
        }
        decoder.push(&buffer[..read])?;
    }
    decoder.finish()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

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

    /// Incompressible bytes without a random-number crate: BLAKE3 in extendable-output mode.
    fn random_bytes(len: usize, seed: u8) -> Vec<u8> {
        let mut bytes = vec![0u8; len];
        blake3::Hasher::new()
            .update(&[seed])
            .finalize_xof()
            .fill(&mut bytes);
        bytes
    }

    /// Log-like text, compressible but not trivially.
    fn text_bytes(len: usize) -> Vec<u8> {
        let mut text = Vec::with_capacity(len + 100);
        let mut line = 0u64;
        while text.len() < len {
            writeln!(
                text,
                "2026-11-21T22:{:02}:{:02}Z INFO compaction of sstable {} finished: {} bytes in {} ms",
                line / 60 % 60,
                line % 60,
                line * 7919 % 100_003,
                line * 104_729 % 9_999_991,
                line % 977
            )
            .expect("format");
            line += 1;
        }
        text.truncate(len);
        text
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        root: PathBuf,
        files: PathBuf,
        op: Operator,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("location");
        let files = dir.path().join("files");
        std::fs::create_dir_all(&files).expect("mkdir");
        let op = fs_operator(&root);
        Fixture {
            _dir: dir,
            root,
            files,
            op,
        }
    }

    async fn round_trip(fixture: &Fixture, name: &str, content: &[u8]) -> UploadOutcome {
        let source = fixture.files.join(name);
        std::fs::write(&source, content).expect("write source");
        let (hash, size) = hash_file(&source, None).await.expect("hash");
        assert_eq!(hash, ContentHash::of(content));
        assert_eq!(size, content.len() as u64);

        let object = format!("objects/{}/{hash}", &hash.to_hex()[..2]);
        assert!(!object_exists(&fixture.op, &object).await.expect("exists"));
        let outcome = upload_file(
            &fixture.op,
            &object,
            &source,
            hash,
            &UploadOptions::default(),
        )
        .await
        .expect("upload");
        assert!(object_exists(&fixture.op, &object).await.expect("exists"));
        assert_eq!(outcome.read_bytes, content.len() as u64);
        let stored = std::fs::metadata(fixture.root.join(&object)).expect("stat object");
        assert_eq!(stored.len(), outcome.stored_bytes);

        let dest = fixture.files.join(format!("{name}.restored"));
        let size = download_object(&fixture.op, &object, &dest, hash, None)
            .await
            .expect("download");
        assert_eq!(size, content.len() as u64);
        assert!(std::fs::read(&dest).expect("read restored") == content);
        // Told the size, the download reports the stored size it streamed.
        let sized = download_object_sized(
            &fixture.op,
            &object,
            &dest,
            hash,
            Some(content.len() as u64),
            None,
        )
        .await
        .expect("download with the size");
        assert_eq!(
            sized,
            Downloaded {
                size: content.len() as u64,
                stored_bytes: outcome.stored_bytes
            }
        );
        outcome
    }

    /// An operator for an object store (never contacted).
    fn s3_operator() -> Operator {
        Operator::new(
            opendal::services::S3::default()
                .bucket("coffer")
                .region("us-east-1")
                .endpoint("http://127.0.0.1:9"),
        )
        .expect("s3 operator")
    }

    #[tokio::test]
    async fn only_temporary_files_left_unwritten_for_long_are_removed() {
        let fixture = fixture();
        assert_eq!(
            remove_stale_temporaries(&fixture.op, STALE_TEMPORARY_AGE)
                .await
                .expect("no folder yet"),
            0
        );
        let folder = fixture.root.join(crate::storage::FS_ATOMIC_WRITE_DIR);
        std::fs::create_dir_all(folder.join("a-folder")).expect("mkdir");
        let day_ago = std::time::SystemTime::now() - Duration::from_secs(25 * 60 * 60);
        for (name, modified) in [
            ("left-over.object", Some(day_ago)),
            ("in-progress.object", None),
        ] {
            let file = File::create(folder.join(name)).expect("create");
            file.set_len(4096).expect("size");
            if let Some(modified) = modified {
                file.set_modified(modified).expect("set mtime");
            }
        }
        let removed = remove_stale_temporaries(&fixture.op, STALE_TEMPORARY_AGE)
            .await
            .expect("remove");
        assert_eq!(removed, 1);
        let mut left: Vec<_> = std::fs::read_dir(&folder)
            .expect("list")
            .map(|entry| entry.expect("entry").file_name())
            .collect();
        left.sort();
        assert_eq!(left, ["a-folder", "in-progress.object"]);
        assert_eq!(
            remove_stale_temporaries(&s3_operator(), Duration::ZERO)
                .await
                .expect("object store"),
            0
        );
    }

    fn temporary_files(fixture: &Fixture) -> usize {
        std::fs::read_dir(fixture.root.join(crate::storage::FS_ATOMIC_WRITE_DIR))
            .expect("tmp dir")
            .count()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn new_files_are_encoded_in_one_pass_and_visible_only_once_committed() {
        let fixture = fixture();
        let content = text_bytes(3 * 1024 * 1024 + 17);
        let source = fixture.files.join("new");
        std::fs::write(&source, &content).expect("write source");
        let hash = ContentHash::of(&content);
        let object = format!("objects/{}/{hash}", &hash.to_hex()[..2]);

        let pending = encode_into_folder(&fixture.op, &source, &UploadOptions::default())
            .await
            .expect("encode")
            .expect("a local folder");
        assert_eq!(pending.hash, hash);
        assert_eq!(pending.outcome.read_bytes, content.len() as u64);
        assert!(pending.outcome.compressed);
        assert!(!object_exists(&fixture.op, &object).await.expect("exists"));
        assert_eq!(temporary_files(&fixture), 1);
        pending.commit(&object).await.expect("commit");
        assert_eq!(temporary_files(&fixture), 0);
        let dest = fixture.files.join("new.restored");
        download_object(&fixture.op, &object, &dest, hash, None)
            .await
            .expect("download");
        assert!(std::fs::read(&dest).expect("read restored") == content);

        // Content found stored already: the second encoding is dropped, and leaves nothing.
        let again = encode_into_folder(&fixture.op, &source, &UploadOptions::default())
            .await
            .expect("encode")
            .expect("a local folder");
        assert_eq!(temporary_files(&fixture), 1);
        drop(again);
        assert_eq!(temporary_files(&fixture), 0);

        // Object stores are not local folders: the caller uploads instead.
        assert!(is_local_folder(&fixture.op));
        assert!(!is_local_folder(&s3_operator()));
        assert!(
            encode_into_folder(&s3_operator(), &source, &UploadOptions::default())
                .await
                .expect("encode")
                .is_none()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writeback_syncs_few_objects_one_by_one_and_many_by_filesystem() {
        let fixture = fixture();
        // A few objects: each, and its folders, synced at the end.
        let few = LocationWriteback::new(&fixture.op);
        for index in 0..3u8 {
            let content = random_bytes(1000, index);
            let hash = ContentHash::of(&content);
            let object = format!("objects/{}/{hash}", &hash.to_hex()[..2]);
            let outcome = upload_bytes(
                &fixture.op,
                &object,
                Bytes::from(content),
                &UploadOptions::default(),
            )
            .await
            .expect("upload");
            few.stored(&object, outcome.stored_bytes);
        }
        few.finish().await.expect("sync few");

        // Past the threshold, a sync of the filesystem starts in the background.
        let many = LocationWriteback::new(&fixture.op);
        many.stored("objects/00/large", WRITEBACK_BYTES);
        assert!(
            many.state.lock().expect("state").in_flight.is_some(),
            "a background sync started"
        );
        many.finish().await.expect("sync many");
        // A missing object fails the sync of few objects: nothing is silently skipped.
        let missing = LocationWriteback::new(&fixture.op);
        missing.stored("objects/00/missing", 10);
        assert!(missing.finish().await.is_err());

        // Object stores are durable on acknowledgement: nothing to do.
        let remote = LocationWriteback::new(&s3_operator());
        remote.stored("objects/00/missing", WRITEBACK_BYTES);
        remote.finish().await.expect("nothing to sync");
    }

    #[test]
    fn a_written_file_has_each_folder_up_to_the_root_synced() {
        let root = Path::new("/loc");
        assert_eq!(
            folders_of(root, "clusters/c/backups/b/backup.json"),
            [
                "/loc/clusters/c/backups/b",
                "/loc/clusters/c/backups",
                "/loc/clusters/c",
                "/loc/clusters",
                "/loc/",
            ]
            .map(PathBuf::from)
        );
        assert_eq!(folders_of(root, "/coffer.json"), [PathBuf::from("/loc/")]);
    }

    #[tokio::test]
    async fn syncing_a_written_name_needs_its_folders_and_skips_object_stores() {
        let fixture = fixture();
        let path = "clusters/c/backups/b/backup.json";
        fixture.op.write(path, b"{}".to_vec()).await.expect("write");
        sync_name(&fixture.op, path).await.expect("sync");
        // A folder that is not there is an error, not a silent success.
        let error = sync_name(&fixture.op, "clusters/gone/backup.json")
            .await
            .expect_err("no such folder");
        assert!(error.is_not_found(), "{error}");
        sync_name(&s3_operator(), path)
            .await
            .expect("nothing to sync on an object store");
    }

    #[tokio::test]
    async fn small_objects_land_by_a_temporary_file_in_their_own_folder() {
        let fixture = fixture();
        let content = random_bytes(5000, 7);
        let hash = ContentHash::of(&content);
        let object = format!("objects/{}/{hash}", &hash.to_hex()[..2]);
        upload_bytes(
            &fixture.op,
            &object,
            Bytes::from(content.clone()),
            &UploadOptions::default(),
        )
        .await
        .expect("upload");
        let folder = fixture.root.join(&object);
        let folder = folder.parent().expect("fan-out folder");
        let names: Vec<_> = std::fs::read_dir(folder)
            .expect("fan-out folder")
            .map(|entry| entry.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(hash.to_hex())]);
        let dest = fixture.files.join("restored");
        download_object(&fixture.op, &object, &dest, hash, None)
            .await
            .expect("download");
        assert!(std::fs::read(&dest).expect("read restored") == content);

        // A rename that fails (a folder stands where the object goes) leaves no temporary file.
        let blocked = format!("objects/ff/{hash}");
        std::fs::create_dir_all(fixture.root.join(&blocked).join("in-the-way")).expect("mkdir");
        let error = upload_bytes(
            &fixture.op,
            &blocked,
            Bytes::from(content),
            &UploadOptions::default(),
        )
        .await
        .expect_err("a folder is in the way");
        assert!(error.to_string().contains(&blocked), "{error}");
        let leftovers: Vec<_> = std::fs::read_dir(fixture.root.join("objects/ff"))
            .expect("folder")
            .map(|entry| entry.expect("entry").file_name())
            .filter(|name| name.to_string_lossy().ends_with(TEMPORARY_SUFFIX))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    /// Stores `content` by each local write path (one write, a file whose hash is known, a file
    /// stored in one pass) under `compression`; returns the three stored objects' bytes.
    async fn stored_under(
        fixture: &Fixture,
        name: &str,
        content: &[u8],
        compression: Compression,
    ) -> Vec<Vec<u8>> {
        let options = UploadOptions {
            compression,
            ..UploadOptions::default()
        };
        let hash = ContentHash::of(content);
        let source = fixture.files.join(name);
        std::fs::write(&source, content).expect("write source");
        let mut stored = Vec::new();
        for path in ["bytes", "file", "one-pass"] {
            let object = format!("objects/{name}-{path}/{hash}");
            match path {
                "bytes" => {
                    upload_bytes(
                        &fixture.op,
                        &object,
                        Bytes::from(content.to_vec()),
                        &options,
                    )
                    .await
                    .map(drop)
                    .expect("upload bytes");
                }
                "file" => {
                    upload_file(&fixture.op, &object, &source, hash, &options)
                        .await
                        .map(drop)
                        .expect("upload file");
                }
                _ => {
                    let pending = encode_into_folder(&fixture.op, &source, &options)
                        .await
                        .expect("encode")
                        .expect("a local folder");
                    assert_eq!(pending.hash, hash);
                    pending.commit(&object).await.expect("commit");
                }
            }
            let dest = fixture.files.join(format!("{name}-{path}.restored"));
            download_object(&fixture.op, &object, &dest, hash, None)
                .await
                .expect("download");
            assert!(std::fs::read(&dest).expect("read restored") == content);
            stored.push(std::fs::read(fixture.root.join(&object)).expect("read object"));
        }
        stored
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_write_path_stores_objects_as_the_location_compresses() {
        let fixture = fixture();
        let content = text_bytes(3 * 1024 * 1024 + 777);
        for object in stored_under(&fixture, "none", &content, Compression::None).await {
            assert_eq!(&object[..8], b"COFFER\x01\x00", "stored raw");
            assert!(object[8..] == content[..]);
        }
        let fast = stored_under(
            &fixture,
            "fast",
            &content,
            Compression::zstd(-7).expect("level"),
        )
        .await;
        let strong = stored_under(
            &fixture,
            "strong",
            &content,
            Compression::zstd(9).expect("level"),
        )
        .await;
        for (fast, strong) in fast.iter().zip(&strong) {
            assert_eq!(&fast[..8], b"COFFER\x01\x01");
            assert_eq!(&strong[..8], b"COFFER\x01\x01");
            assert!(
                strong.len() < fast.len() && fast.len() < content.len(),
                "level 9 stores {}, level -7 {}, of {} bytes",
                strong.len(),
                fast.len(),
                content.len()
            );
        }
    }

    #[test]
    fn compression_settings_parse_and_print_as_cofferctl_and_the_catalog_spell_them() {
        for (text, expected) in [
            ("none", Compression::None),
            ("zstd", Compression::Zstd { level: 1 }),
            ("zstd:1", Compression::Zstd { level: 1 }),
            ("zstd:-7", Compression::Zstd { level: -7 }),
            ("zstd:12", Compression::Zstd { level: 12 }),
        ] {
            assert_eq!(text.parse::<Compression>(), Ok(expected), "{text}");
            let printed = expected.to_string();
            assert_eq!(printed.parse::<Compression>(), Ok(expected), "{printed}");
        }
        assert_eq!(Compression::default().to_string(), "zstd:1");
        for (text, complaint) in [
            ("zstd:13", "zstd level 13 is not supported: use -7 to 12"),
            ("zstd:-8", "zstd level -8 is not supported"),
            ("zstd:0", "but not 0"),
            ("zstd:fast", "\"fast\" is not a zstd level"),
            (
                "lz4",
                "\"lz4\" is not a compression: use none, zstd or zstd:<level>",
            ),
            ("none:1", "is not a compression"),
            ("", "is not a compression"),
        ] {
            let error = text.parse::<Compression>().expect_err(text);
            assert!(error.contains(complaint), "{text}: {error}");
        }
    }

    #[tokio::test]
    async fn empty_files_round_trip_as_a_bare_header() {
        let fixture = fixture();
        let outcome = round_trip(&fixture, "empty", b"").await;
        assert_eq!(outcome.stored_bytes, OBJECT_HEADER_LEN as u64);
        assert!(!outcome.compressed);
    }

    #[tokio::test]
    async fn small_files_round_trip() {
        let fixture = fixture();
        let outcome = round_trip(&fixture, "small", b"hello, coffer\n").await;
        assert!(!outcome.compressed, "14 bytes do not shrink under zstd");
        assert_eq!(outcome.stored_bytes, OBJECT_HEADER_LEN as u64 + 14);
        let hash = ContentHash::of(b"hello, coffer\n");
        let stored = std::fs::read(
            fixture
                .root
                .join(format!("objects/{}/{hash}", &hash.to_hex()[..2])),
        )
        .expect("read object");
        assert_eq!(&stored[..8], b"COFFER\x01\x00");
        assert_eq!(&stored[8..], b"hello, coffer\n");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn compressible_multi_chunk_files_are_stored_compressed() {
        let fixture = fixture();
        let content = text_bytes(20 * 1024 * 1024 + 12_345);
        let outcome = round_trip(&fixture, "text", &content).await;
        assert!(outcome.compressed);
        assert!(
            outcome.stored_bytes < content.len() as u64 / 2,
            "stored {} of {}",
            outcome.stored_bytes,
            content.len()
        );
        // The stored form is the documented one: header, then zstd frames of the content (one
        // per MiB), which plain zstd decodes as one stream.
        let hash = ContentHash::of(&content);
        let stored = std::fs::read(
            fixture
                .root
                .join(format!("objects/{}/{hash}", &hash.to_hex()[..2])),
        )
        .expect("read object");
        assert_eq!(&stored[..8], b"COFFER\x01\x01");
        let decoded = zstd::stream::decode_all(&stored[8..]).expect("plain zstd decodes the body");
        assert!(decoded == content);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn incompressible_files_are_stored_raw() {
        let fixture = fixture();
        let content = random_bytes(9 * 1024 * 1024 + 7, 1);
        let outcome = round_trip(&fixture, "random", &content).await;
        assert!(!outcome.compressed);
        assert_eq!(
            outcome.stored_bytes,
            content.len() as u64 + OBJECT_HEADER_LEN as u64
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_file_changed_after_hashing_is_aborted_and_leaves_no_object() {
        let fixture = fixture();
        let source = fixture.files.join("changing");
        std::fs::write(&source, text_bytes(3 * 1024 * 1024)).expect("write");
        let (hash, _) = hash_file(&source, None).await.expect("hash");
        let mut changed = text_bytes(3 * 1024 * 1024);
        changed[2 * 1024 * 1024] ^= 1;
        std::fs::write(&source, &changed).expect("modify");

        let object = format!("objects/{}/{hash}", &hash.to_hex()[..2]);
        let error = upload_file(
            &fixture.op,
            &object,
            &source,
            hash,
            &UploadOptions::default(),
        )
        .await
        .expect_err("content changed");
        match &error {
            UploadError::ContentChanged {
                expected, actual, ..
            } => {
                assert_eq!(*expected, hash);
                assert_eq!(*actual, ContentHash::of(&changed));
            }
            other => panic!("unexpected error: {other}"),
        }
        assert!(!error.is_retryable());
        assert!(!object_exists(&fixture.op, &object).await.expect("exists"));
        assert!(!fixture.root.join(&object).exists());
        let tmp = fixture.root.join(crate::storage::FS_ATOMIC_WRITE_DIR);
        assert_eq!(
            std::fs::read_dir(tmp).expect("tmp dir").count(),
            0,
            "temp file left"
        );
    }

    #[tokio::test]
    async fn a_missing_file_fails_to_upload_with_its_path() {
        let fixture = fixture();
        let missing = fixture.files.join("missing");
        let error = upload_file(
            &fixture.op,
            "objects/aa/x",
            &missing,
            ContentHash([0; 32]),
            &UploadOptions::default(),
        )
        .await
        .expect_err("missing");
        assert!(matches!(error, UploadError::Read { .. }), "{error}");
        assert!(error.to_string().contains("missing"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn corrupt_objects_fail_to_download_and_leave_no_file() {
        let fixture = fixture();
        let content = text_bytes(2 * 1024 * 1024);
        round_trip(&fixture, "text", &content).await;
        let hash = ContentHash::of(&content);
        let object = format!("objects/{}/{hash}", &hash.to_hex()[..2]);
        let object_file = fixture.root.join(&object);
        let dest = fixture.files.join("restored");

        // A valid zstd stream of other content: decodes fine, hashes wrong.
        let mut other = content.clone();
        other[12] ^= 0x20;
        let mut forged = Codec::Zstd.header().to_vec();
        forged.extend(zstd::stream::encode_all(&other[..], 1).expect("compress"));
        std::fs::write(&object_file, &forged).expect("forge");
        let error = download_object(&fixture.op, &object, &dest, hash, None)
            .await
            .expect_err("corrupt");
        match &error {
            DownloadError::Corrupt {
                path,
                expected,
                actual,
            } => {
                assert_eq!(path, &object);
                assert_eq!(*expected, hash);
                assert_eq!(*actual, ContentHash::of(&other));
            }
            other => panic!("unexpected error: {other}"),
        }
        assert!(!dest.exists());

        // A truncated object.
        let truncated = &forged[..forged.len() / 2];
        std::fs::write(&object_file, truncated).expect("truncate");
        let error = download_object(&fixture.op, &object, &dest, hash, None)
            .await
            .expect_err("truncated");
        assert!(matches!(error, DownloadError::Corrupt { .. }), "{error}");
        assert!(!dest.exists());

        // Garbage in the body and in the header.
        let mut garbage = Codec::Zstd.header().to_vec();
        garbage.extend_from_slice(&[0xffu8; 1000]);
        std::fs::write(&object_file, &garbage).expect("garbage");
        let error = download_object(&fixture.op, &object, &dest, hash, None)
            .await
            .expect_err("garbage");
        assert!(matches!(error, DownloadError::Malformed { .. }), "{error}");
        assert!(!dest.exists());
        std::fs::write(&object_file, b"COFFER\x02\x00hello").expect("version");
        let error = download_object(&fixture.op, &object, &dest, hash, None)
            .await
            .expect_err("version");
        assert!(error.to_string().contains("version 2"), "{error}");
        assert!(!dest.exists());

        // A missing object.
        let error = download_object(&fixture.op, "objects/00/none", &dest, hash, None)
            .await
            .expect_err("missing");
        match &error {
            DownloadError::Storage(storage) => assert!(storage.is_not_found(), "{storage}"),
            other => panic!("unexpected error: {other}"),
        }
        assert!(!dest.exists());
    }

    #[test]
    fn headers_encode_and_decode() {
        assert_eq!(&Codec::Raw.header(), b"COFFER\x01\x00");
        assert_eq!(&Codec::Zstd.header(), b"COFFER\x01\x01");
        assert_eq!(Codec::from_header(b"COFFER\x01\x01"), Ok(Codec::Zstd));
        assert!(Codec::from_header(b"COFFER\x01").is_err());
        assert!(Codec::from_header(b"KOFFER\x01\x00").is_err());
        assert!(Codec::from_header(b"COFFER\x01\x07").is_err());
    }

    #[test]
    fn the_token_bucket_charges_bytes_at_its_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(1000, start);
        // The burst (a tenth of a second) passes at once, then bytes wait for their time.
        assert_eq!(bucket.reserve(start, 100), Duration::ZERO);
        assert_eq!(bucket.reserve(start, 500), Duration::from_millis(500));
        // Half a second later the debt is paid; the next 1000 bytes take one second.
        let later = start + Duration::from_millis(500);
        assert_eq!(bucket.reserve(later, 1000), Duration::from_secs(1));
        // Idle time refills no more than the burst.
        let idle = later + Duration::from_secs(60);
        assert_eq!(bucket.reserve(idle, 100), Duration::ZERO);
        assert_eq!(bucket.reserve(idle, 1), Duration::from_millis(1));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rate_limited_hashing_takes_about_the_ideal_time() {
        let fixture = fixture();
        let source = fixture.files.join("limited");
        std::fs::write(&source, random_bytes(4 * 1024 * 1024, 2)).expect("write");
        let limiter = RateLimiter::new(8 * 1024 * 1024);
        assert_eq!(limiter.bytes_per_second(), 8 * 1024 * 1024);
        let started = Instant::now();
        hash_file(&source, Some(&limiter)).await.expect("hash");
        // 4 MiB at 8 MiB/s: 500 ms ideal, 400 ms after the burst of a tenth of a second; the
        // test asks for 70% of the ideal so a slow machine cannot fail it.
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(350), "took {elapsed:?}");

        let upload_limiter = limiter.clone();
        let hash = ContentHash::of(&std::fs::read(&source).expect("read"));
        let started = Instant::now();
        let options = UploadOptions {
            rate_limiter: Some(upload_limiter),
            ..UploadOptions::default()
        };
        upload_file(&fixture.op, "objects/limited", &source, hash, &options)
            .await
            .expect("upload");
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(350), "took {elapsed:?}");
    }

    /// `cargo test --release -p coffer-format -- --ignored --nocapture upload_throughput`
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "benchmark: writes 512 MiB; run in release"]
    async fn upload_throughput() {
        let fixture = fixture();
        let size = 256 * 1024 * 1024;
        for (name, content) in [
            ("text", text_bytes(size)),
            ("random", random_bytes(size, 3)),
        ] {
            let source = fixture.files.join(name);
            std::fs::write(&source, &content).expect("write");
            drop(content);
            let started = Instant::now();
            let (hash, _) = hash_file(&source, None).await.expect("hash");
            let hashed = started.elapsed();
            let object = format!("objects/{name}");
            let started = Instant::now();
            let outcome = upload_file(
                &fixture.op,
                &object,
                &source,
                hash,
                &UploadOptions::default(),
            )
            .await
            .expect("upload");
            let uploaded = started.elapsed();
            let dest = fixture.files.join(format!("{name}.restored"));
            let started = Instant::now();
            download_object(&fixture.op, &object, &dest, hash, None)
                .await
                .expect("download");
            let downloaded = started.elapsed();
            let mib = size as f64 / (1024.0 * 1024.0);
            println!(
                "{name}: hash_file {:.0} MiB/s; upload_file {:.0} MiB/s (stored {:.1} MiB, compressed: {}); download_object {:.0} MiB/s",
                mib / hashed.as_secs_f64(),
                mib / uploaded.as_secs_f64(),
                outcome.stored_bytes as f64 / (1024.0 * 1024.0),
                outcome.compressed,
                mib / downloaded.as_secs_f64(),
            );
            std::fs::remove_file(&dest).expect("remove");
            std::fs::remove_file(&source).expect("remove");
        }
    }
}
