//! Downloading an object into a file: streamed from an object store or read from a local folder,
//! decoded and hashed on a blocking thread, and removed unless it hashes to the object's name.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::TryStreamExt;
use opendal::Operator;
use tokio::sync::mpsc;

use super::local::local_root;
use super::seal::{KeyId, Keyring, SealError, Unsealer};
use super::{
    Codec, OBJECT_HEADER_LEN, PIPELINE_DEPTH, READ_BLOCK, RateLimiter, SMALL_FILE, read_full,
};
use crate::direct::DirectWriter;
use crate::layout::ContentHash;
use crate::storage::StorageError;

/// Chunk and concurrency of ranged reads when downloading.
const DOWNLOAD_CHUNK: usize = 8 * 1024 * 1024;
const DOWNLOAD_CONCURRENT: usize = 2;

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
        reason: String,
    },
    /// The object is sealed with a key this agent lacks, in the clear in an encrypted
    /// location, or sealed and altered since ([`SealError`] says which).
    #[error("object {path}: {source}")]
    Sealed {
        /// Path of the object.
        path: String,
        source: SealError,
    },
    /// The destination could not be written.
    #[error("write {}: {source}", dest.display())]
    Write { dest: PathBuf, source: io::Error },
}

/// Where a failure of the decoding thread came from.
enum DecodeFailure {
    Malformed(String),
    Sealed(SealError),
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
    keys: &Keyring,
    limiter: Option<&RateLimiter>,
) -> Result<u64, DownloadError> {
    download_object_sized(op, object_path, dest, expected, None, keys, limiter)
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
    /// The key that sealed it (`None` in the clear), whose hasher names the contents packed in
    /// it ([`Keyring::content_hasher_of`]).
    pub sealed_with: Option<KeyId>,
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
    keys: &Keyring,
    limiter: Option<&RateLimiter>,
) -> Result<Downloaded, DownloadError> {
    fetch_object(
        op,
        object_path,
        Dest::File(dest),
        expected,
        size_hint,
        keys,
        limiter,
    )
    .await
    .map(|(downloaded, _)| downloaded)
}

/// [`download_object`] into memory: the content of an object of at most `limit` bytes (a
/// pack, whose contents are cut out of it), verified against its name, in `buffer` (cleared
/// first, and handed back: a caller fetching many packs reuses one buffer each time rather
/// than allocating and freeing blocks of a few MiB, which glibc keeps in its arenas).
/// `expected_size` is the size the caller knows it has at least. An object that holds more
/// than `limit` fails with [`DownloadError::Write`] as soon as it passes it.
///
/// Fails as [`download_object`] does.
pub async fn download_object_to_memory(
    op: &Operator,
    object_path: &str,
    expected: ContentHash,
    buffer: Vec<u8>,
    (expected_size, limit): (u64, usize),
    keys: &Keyring,
    limiter: Option<&RateLimiter>,
) -> Result<(Downloaded, Vec<u8>), DownloadError> {
    fetch_object(
        op,
        object_path,
        Dest::Memory { buffer, limit },
        expected,
        // Known to be small: one plain GET, streamed, rather than concurrent ranged reads.
        Some(expected_size),
        keys,
        limiter,
    )
    .await
    .map(|(downloaded, content)| (downloaded, content.unwrap_or_default()))
}

/// Where a download's content goes.
#[derive(Debug)]
enum Dest<'a> {
    File(&'a Path),
    /// Into this buffer (cleared), at most `limit` bytes.
    Memory {
        buffer: Vec<u8>,
        limit: usize,
    },
    /// Nowhere (verification).
    Discard,
}

impl<'a> Dest<'a> {
    fn path(&self) -> Option<&'a Path> {
        match self {
            Self::File(path) => Some(path),
            Self::Memory { .. } | Self::Discard => None,
        }
    }

    /// The same, owned (for a blocking thread).
    fn owned(self) -> OwnedDest {
        match self {
            Self::File(path) => OwnedDest::File(path.to_path_buf()),
            Self::Memory { buffer, limit } => OwnedDest::Memory { buffer, limit },
            Self::Discard => OwnedDest::Discard,
        }
    }
}

/// An owned [`Dest`].
#[derive(Debug)]
enum OwnedDest {
    File(PathBuf),
    Memory { buffer: Vec<u8>, limit: usize },
    Discard,
}

/// Reads the object at `object_path` whole, decoding and hashing it as a download does, and
/// writes it nowhere: whether the stored object still holds the content its name promises
/// (validation). Fails as [`download_object`] does, [`DownloadError::Write`] aside.
pub async fn verify_object(
    op: &Operator,
    object_path: &str,
    expected: ContentHash,
    size_hint: Option<u64>,
    keys: &Keyring,
    limiter: Option<&RateLimiter>,
) -> Result<Downloaded, DownloadError> {
    fetch_object(
        op,
        object_path,
        Dest::Discard,
        expected,
        size_hint,
        keys,
        limiter,
    )
    .await
    .map(|(downloaded, _)| downloaded)
}

/// Downloads into `dest` (a file, memory, or nowhere: only decodes and hashes); the content
/// when it went into memory.
async fn fetch_object(
    op: &Operator,
    object_path: &str,
    dest: Dest<'_>,
    expected: ContentHash,
    size_hint: Option<u64>,
    keys: &Keyring,
    limiter: Option<&RateLimiter>,
) -> Result<(Downloaded, Option<Vec<u8>>), DownloadError> {
    let dest_path = dest.path();
    let owned = dest.owned();
    if let Some(root) = local_root(op) {
        let source = root.join(object_path);
        let limiter = limiter.cloned();
        let keys = keys.clone();
        let decoded = tokio::task::spawn_blocking(move || {
            decode_local_object(&source, owned, size_hint, keys, limiter.as_ref())
        })
        .await;
        return finish_download(op, object_path, dest_path, expected, Ok(()), decoded).await;
    }

    let (sender, receiver) = mpsc::channel::<Bytes>(PIPELINE_DEPTH);
    let decoder = {
        let keys = keys.clone();
        tokio::task::spawn_blocking(move || decode_to_file(receiver, owned, size_hint, keys))
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
    finish_download(op, object_path, dest_path, expected, streamed, decoded).await
}

/// The outcome of a download from what the transfer and the decoder report; removes `dest` on
/// failure.
async fn finish_download(
    op: &Operator,
    object_path: &str,
    dest: Option<&Path>,
    expected: ContentHash,
    streamed: Result<(), opendal::Error>,
    decoded: Result<Result<Decoded, DecodeFailure>, tokio::task::JoinError>,
) -> Result<(Downloaded, Option<Vec<u8>>), DownloadError> {
    let result = settle(op, object_path, dest, expected, streamed, decoded);
    if let (Err(_), Some(dest)) = (&result, dest) {
        removed_failed_download(dest, tokio::fs::remove_file(dest).await);
    }
    result
}

/// Logs a failed download's file that could not be removed (one never written is no error).
fn removed_failed_download(dest: &Path, removed: io::Result<()>) {
    match removed {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => tracing::warn!(dest = %dest.display(), %error, "remove failed download"),
    }
}

/// What a download came to: the content as decoded, checked against its name.
fn settle(
    op: &Operator,
    object_path: &str,
    dest: Option<&Path>,
    expected: ContentHash,
    streamed: Result<(), opendal::Error>,
    decoded: Result<Result<Decoded, DecodeFailure>, tokio::task::JoinError>,
) -> Result<(Downloaded, Option<Vec<u8>>), DownloadError> {
    match (streamed, decoded) {
        (Err(cause), _) => Err(StorageError::backend(op, "read", object_path, cause).into()),
        (Ok(()), Err(join_error)) => Err(DownloadError::Write {
            dest: dest.map(Path::to_path_buf).unwrap_or_default(),
            source: io::Error::other(join_error),
        }),
        (Ok(()), Ok(Err(DecodeFailure::Malformed(reason)))) => Err(DownloadError::Malformed {
            path: object_path.to_string(),
            reason,
        }),
        (Ok(()), Ok(Err(DecodeFailure::Sealed(source)))) => Err(DownloadError::Sealed {
            path: object_path.to_string(),
            source,
        }),
        (Ok(()), Ok(Err(DecodeFailure::Write(source)))) => Err(DownloadError::Write {
            dest: dest.map(Path::to_path_buf).unwrap_or_default(),
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
        (Ok(()), Ok(Ok(decoded))) => Ok((
            Downloaded {
                size: decoded.size,
                stored_bytes: decoded.stored_bytes,
                sealed_with: decoded.sealed_with,
            },
            decoded.memory,
        )),
    }
}

/// [`download_object_sized`] from a local (`fs`) location, on the calling thread: for callers
/// that restore many small files in one blocking call (one hand-over to a blocking thread per
/// file cost more than the file). Removes `dest` when the download fails.
///
/// Fails as [`download_object`] does, and with a storage error when `op` is not a local folder.
pub fn download_local_object(
    op: &Operator,
    object_path: &str,
    dest: &Path,
    expected: ContentHash,
    size_hint: Option<u64>,
    keys: &Keyring,
    limiter: Option<&RateLimiter>,
) -> Result<Downloaded, DownloadError> {
    let Some(root) = local_root(op) else {
        return Err(StorageError::local(
            op,
            "read",
            object_path,
            io::Error::other("not a local folder"),
        )
        .into());
    };
    let decoded = decode_local_object(
        &root.join(object_path),
        OwnedDest::File(dest.to_path_buf()),
        size_hint,
        keys.clone(),
        limiter,
    );
    let result = settle(op, object_path, Some(dest), expected, Ok(()), Ok(decoded));
    if result.is_err() {
        removed_failed_download(dest, std::fs::remove_file(dest));
    }
    result.map(|(downloaded, _)| downloaded)
}

/// Where decoded content goes: a file written through the page cache, or (a large file, see
/// `crate::direct`) around it.
enum FileSink {
    Buffered(io::BufWriter<File>),
    Direct(DirectWriter),
    /// Into memory, at most `limit` bytes.
    Memory {
        content: Vec<u8>,
        limit: usize,
    },
    /// Verifying only: the content is hashed and dropped.
    Discard,
}

impl FileSink {
    /// Writes what is buffered and closes the file (not synced); the content when it went into
    /// memory.
    fn finish(self) -> io::Result<Option<Vec<u8>>> {
        match self {
            Self::Buffered(file) => file
                .into_inner()
                .map(|_| None)
                .map_err(|error| error.into_error()),
            Self::Direct(file) => file.finish().map(|_| None),
            Self::Memory { content, .. } => Ok(Some(content)),
            Self::Discard => Ok(None),
        }
    }
}

impl Write for FileSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Buffered(file) => file.write(buf),
            Self::Direct(file) => file.write_all(buf).map(|()| buf.len()),
            Self::Memory { content, limit } => {
                if content.len() + buf.len() > *limit {
                    return Err(io::Error::other(format!(
                        "the object holds more than the {limit} bytes expected"
                    )));
                }
                content.extend_from_slice(buf);
                Ok(buf.len())
            }
            Self::Discard => Ok(buf.len()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Buffered(file) => file.flush(),
            // Only whole blocks can be written before the end: `finish` writes the rest.
            Self::Direct(_) | Self::Memory { .. } | Self::Discard => Ok(()),
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
    sealed_with: Option<KeyId>,
    /// The content, when it was decoded into memory.
    memory: Option<Vec<u8>>,
}

/// Decodes an object's stored bytes, fed in pieces of any size, into a file while hashing the
/// content: opens it first when sealed.
struct ObjectDecoder {
    /// Stored bytes fed so far.
    stored_bytes: u64,
    unsealer: Unsealer,
    body: Body,
    /// The file writer, until the header says which body wraps it.
    sink: Option<HashingFileWriter>,
}

impl ObjectDecoder {
    /// A decoder into a new file at `dest` (or nowhere); a file known to be large (`size_hint`)
    /// is written around the page cache.
    fn create(
        dest: OwnedDest,
        size_hint: Option<u64>,
        keys: Keyring,
    ) -> Result<Self, DecodeFailure> {
        let file = match dest {
            OwnedDest::Discard => FileSink::Discard,
            OwnedDest::Memory { mut buffer, limit } => {
                buffer.clear();
                FileSink::Memory {
                    content: buffer,
                    limit,
                }
            }
            OwnedDest::File(dest) if size_hint.is_some_and(|size| size > SMALL_FILE) => {
                FileSink::Direct(DirectWriter::create(&dest).map_err(DecodeFailure::Write)?)
            }
            OwnedDest::File(dest) => {
                let file = File::create(dest).map_err(DecodeFailure::Write)?;
                FileSink::Buffered(io::BufWriter::with_capacity(block_for(size_hint), file))
            }
        };
        Ok(Self {
            stored_bytes: 0,
            unsealer: Unsealer::new(keys, None),
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

    fn push(&mut self, stored: &[u8]) -> Result<(), DecodeFailure> {
        self.stored_bytes += stored.len() as u64;
        let was_started = self.unsealer.started();
        let plain = self.unsealer.push(stored).map_err(DecodeFailure::Sealed)?;
        if !was_started
            && self.unsealer.started()
            && let Some(sink) = &mut self.sink
        {
            // The object's name is keyed with the key that sealed it.
            sink.hasher = self.unsealer.content_hasher();
        }
        self.push_plain(&plain)
    }

    fn push_plain(&mut self, mut bytes: &[u8]) -> Result<(), DecodeFailure> {
        if bytes.is_empty() {
            return Ok(());
        }
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
    fn finish(mut self) -> Result<Decoded, DecodeFailure> {
        let unsealer = std::mem::replace(&mut self.unsealer, Unsealer::new(Keyring::plain(), None));
        let sealed_with = unsealer.key_id();
        let last = unsealer.finish().map_err(DecodeFailure::Sealed)?;
        self.push_plain(&last)?;
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
        let memory = file.finish().map_err(DecodeFailure::Write)?;
        Ok(Decoded {
            hash: ContentHash::from(hasher.finalize()),
            size: written,
            stored_bytes: self.stored_bytes,
            sealed_with,
            memory,
        })
    }
}

/// The decoding thread of [`download_object`] from an object store.
fn decode_to_file(
    mut receiver: mpsc::Receiver<Bytes>,
    dest: OwnedDest,
    size_hint: Option<u64>,
    keys: Keyring,
) -> Result<Decoded, DecodeFailure> {
    let mut decoder = ObjectDecoder::create(dest, size_hint, keys)?;
    while let Some(bytes) = receiver.blocking_recv() {
        decoder.push(&bytes)?;
    }
    decoder.finish()
}

/// The read and write block for content of `size_hint` bytes: a small file's object is read
/// and its content written through a buffer its size, not one of [`READ_BLOCK`] (zeroing and
/// faulting in a megabyte for each of a hundred thousand 2 KiB files cost more than reading
/// them).
fn block_for(size_hint: Option<u64>) -> usize {
    size_hint.map_or(READ_BLOCK, |size| {
        usize::try_from(size)
            .unwrap_or(READ_BLOCK)
            .saturating_add(OBJECT_HEADER_LEN + 4096)
            .min(READ_BLOCK)
    })
}

/// [`download_object`] from a local folder: the object file read in blocks of
/// [`block_for`] its size and decoded on this (blocking) thread, at the limiter's rate if one
/// is given.
fn decode_local_object(
    source: &Path,
    dest: OwnedDest,
    size_hint: Option<u64>,
    keys: Keyring,
    limiter: Option<&RateLimiter>,
) -> Result<Decoded, DecodeFailure> {
    let mut object = File::open(source).map_err(DecodeFailure::Read)?;
    let mut decoder = ObjectDecoder::create(dest, size_hint, keys)?;
    let mut buffer = vec![0u8; block_for(size_hint)];
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
    use super::*;
    use crate::object::tests::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn objects_download_into_memory_verified_and_within_their_limit() {
        let fixture = fixture();
        let content = text_bytes(2 * 1024 * 1024 + 5);
        round_trip(&fixture, "pack", &content).await;
        let hash = ContentHash::of(&content);
        let object = format!("objects/{}/{hash}", &hash.to_hex()[..2]);
        let (downloaded, read) = download_object_to_memory(
            &fixture.op,
            &object,
            hash,
            Vec::new(),
            (1000, 4 << 20),
            &Keyring::plain(),
            None,
        )
        .await
        .expect("into memory");
        assert_eq!(downloaded.size, content.len() as u64);
        assert!(read == content);

        let error = download_object_to_memory(
            &fixture.op,
            &object,
            hash,
            Vec::new(),
            (1000, 1 << 20),
            &Keyring::plain(),
            None,
        )
        .await
        .expect_err("past the limit");
        assert!(matches!(error, DownloadError::Write { .. }), "{error}");
        let error = download_object_to_memory(
            &fixture.op,
            &object,
            ContentHash::of(b"other"),
            Vec::new(),
            (1000, 4 << 20),
            &Keyring::plain(),
            None,
        )
        .await
        .expect_err("another name");
        assert!(matches!(error, DownloadError::Corrupt { .. }), "{error}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn verifying_reads_the_whole_object_and_writes_nothing() {
        let fixture = fixture();
        let content = text_bytes(3 * 1024 * 1024 + 17);
        let outcome = round_trip(&fixture, "text", &content).await;
        let hash = ContentHash::of(&content);
        let object = format!("objects/{}/{hash}", &hash.to_hex()[..2]);
        let before: Vec<_> = std::fs::read_dir(&fixture.files).expect("ls").collect();

        let verified = verify_object(&fixture.op, &object, hash, None, &Keyring::plain(), None)
            .await
            .expect("verify");
        assert_eq!(verified.size, content.len() as u64);
        assert_eq!(verified.stored_bytes, outcome.stored_bytes);
        let after: Vec<_> = std::fs::read_dir(&fixture.files).expect("ls").collect();
        assert_eq!(before.len(), after.len(), "verifying wrote a file");

        // One flipped byte in the stored body: the content no longer hashes to the name.
        let object_file = fixture.root.join(&object);
        let mut stored = std::fs::read(&object_file).expect("read");
        let last = stored.len() - 1;
        stored[last] ^= 0x01;
        std::fs::write(&object_file, &stored).expect("rot");
        let error = verify_object(
            &fixture.op,
            &object,
            hash,
            Some(content.len() as u64),
            &Keyring::plain(),
            None,
        )
        .await
        .expect_err("rotten");
        assert!(
            matches!(
                error,
                DownloadError::Corrupt { .. } | DownloadError::Malformed { .. }
            ),
            "{error}"
        );
        std::fs::remove_file(&object_file).expect("remove");
        let error = verify_object(&fixture.op, &object, hash, None, &Keyring::plain(), None)
            .await
            .expect_err("missing");
        assert!(
            matches!(&error, DownloadError::Storage(storage) if storage.is_not_found()),
            "{error}"
        );
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
        let error = download_object(&fixture.op, &object, &dest, hash, &Keyring::plain(), None)
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
        let error = download_object(&fixture.op, &object, &dest, hash, &Keyring::plain(), None)
            .await
            .expect_err("truncated");
        assert!(matches!(error, DownloadError::Corrupt { .. }), "{error}");
        assert!(!dest.exists());

        // Garbage in the body and in the header.
        let mut garbage = Codec::Zstd.header().to_vec();
        garbage.extend_from_slice(&[0xffu8; 1000]);
        std::fs::write(&object_file, &garbage).expect("garbage");
        let error = download_object(&fixture.op, &object, &dest, hash, &Keyring::plain(), None)
            .await
            .expect_err("garbage");
        assert!(matches!(error, DownloadError::Malformed { .. }), "{error}");
        assert!(!dest.exists());
        std::fs::write(&object_file, b"COFFER\x02\x00hello").expect("version");
        let error = download_object(&fixture.op, &object, &dest, hash, &Keyring::plain(), None)
            .await
            .expect_err("version");
        assert!(error.to_string().contains("version 2"), "{error}");
        assert!(!dest.exists());

        // A missing object.
        let error = download_object(
            &fixture.op,
            "objects/00/none",
            &dest,
            hash,
            &Keyring::plain(),
            None,
        )
        .await
        .expect_err("missing");
        match &error {
            DownloadError::Storage(storage) => assert!(storage.is_not_found(), "{storage}"),
            other => panic!("unexpected error: {other}"),
        }
        assert!(!dest.exists());
    }
}
