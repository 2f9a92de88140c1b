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
//!
//! The code is split on its seams:
//! - `codec`: the header, [`Codec`], [`Compression`] and the encoders;
//! - `rate`: the [`RateLimiter`] every transfer shares;
//! - `upload`: hashing and reading files, and storing them through OpenDAL;
//! - `local`: the fast path into a local (`fs`) folder and the clean-up of its temporary files;
//! - `durable`: syncing what was written to a local folder ([`sync_name`], [`LocationWriteback`]);
//! - `download`: fetching, decoding and verifying an object into a file;
//! - `seal`: encryption at rest, for locations with a key ([`Keyring`]): objects and manifests
//!   sealed in authenticated segments, objects named by a keyed hash.

use std::fs::File;
use std::io::{self, Read};

mod codec;
mod download;
mod durable;
mod local;
mod rate;
mod seal;
#[cfg(test)]
mod tests;
mod upload;

pub use codec::{
    Codec, Compression, OBJECT_HEADER_LEN, OBJECT_MAGIC, OBJECT_VERSION, sealed_stored_size_range,
    stored_size_range,
};
pub use download::{
    DownloadError, Downloaded, download_local_object, download_object, download_object_sized,
    download_object_to_memory, verify_object,
};
pub use durable::{LocationWriteback, sync_name};
pub use local::{
    PendingObject, STALE_TEMPORARY_AGE, SmallStored, TEMPORARY_SUFFIX, encode_into_folder,
    is_local_folder, local_folder, remove_stale_temporaries, store_small_file_locally,
};
pub use rate::RateLimiter;
pub use seal::{
    KeyId, Keyring, ObjectKey, SEALED_CODEC, SEALED_HEADER_LEN, SealError, Sealer, Unsealer,
    is_sealed, sealed_len,
};
pub use upload::{
    SMALL_FILE, SmallFile, UploadError, UploadOptions, UploadOutcome, hash_file, object_exists,
    read_small_file, read_small_file_blocking, upload_bytes, upload_file, upload_reusing,
};

/// Size of the reads from local files (and of the blocks hashed and compressed at a time).
const READ_BLOCK: usize = 1024 * 1024;
/// Blocks in flight between the blocking thread and the async writer or reader.
const PIPELINE_DEPTH: usize = 4;

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
