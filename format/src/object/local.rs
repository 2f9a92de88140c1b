//! The local (`fs`) fast path: objects written straight into the location's folder by temporary
//! file and rename, without OpenDAL's sync per file, and the clean-up of temporary files left by
//! writers that stopped mid-write.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use opendal::Operator;

use super::codec::{EncodeSummary, Encoding, encode_file};
use super::{UploadError, UploadOptions, UploadOutcome};
use crate::direct::DirectWriter;
use crate::layout::ContentHash;

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
pub(super) fn write_local_object(root: &Path, object_path: &str, bytes: &[u8]) -> io::Result<()> {
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

/// What [`store_small_file_locally`] did with a small file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SmallStored {
    /// The hash that names the file's object.
    pub hash: ContentHash,
    /// Bytes read (the file's size when read).
    pub read_bytes: u64,
    /// Size of the object written here, header included; `None` when it was not written here
    /// (the folder held it, or another file of the upload claimed its content).
    pub stored_bytes: Option<u64>,
}

/// Backs up a small file into the local folder `root` in one blocking call: reads it whole
/// (at the options' rate), hashes it, and unless `claim(hash)` says another file of the upload
/// has its content or the folder holds the object at `object_path(hash)` already, writes the
/// object (temporary file and rename, no sync: see [`local_root`]).
///
/// For the many small files of a database node, one call per file instead of a read, a stat and
/// a write each on its own blocking thread: the thread hand-overs, not the file operations,
/// were most of the work. Returns `None` when the file is larger than
/// [`SMALL_FILE`](super::SMALL_FILE) (it grew since it was described).
///
/// Fails when the file cannot be read or the object cannot be written.
pub fn store_small_file_locally(
    root: &Path,
    file: &Path,
    options: &UploadOptions,
    object_path: impl FnOnce(&ContentHash) -> String,
    claim: impl FnOnce(&ContentHash) -> bool,
) -> io::Result<Option<SmallStored>> {
    use std::io::Read;
    let mut opened = File::open(file)?;
    // Sized to the file: from an empty buffer, `read_to_end` reads in doubling steps from 32
    // bytes, nine reads for a file of 4 KiB (strace of a backup of 100 000 small files: 8.7
    // reads a file), where a buffer of the right size takes one read and the one that sees
    // the end.
    let size = opened.metadata()?.len().min(super::SMALL_FILE + 1);
    let mut content = Vec::with_capacity(usize::try_from(size).unwrap_or(0) + 1);
    (&mut opened)
        .take(super::SMALL_FILE + 1)
        .read_to_end(&mut content)?;
    drop(opened);
    if content.len() as u64 > super::SMALL_FILE {
        return Ok(None);
    }
    let read_bytes = content.len() as u64;
    if let Some(limiter) = &options.rate_limiter
        && read_bytes > 0
    {
        limiter.acquire_blocking(read_bytes);
    }
    let hash = options.keys.content_hash(&content);
    if !claim(&hash) {
        return Ok(Some(SmallStored {
            hash,
            read_bytes,
            stored_bytes: None,
        }));
    }
    let path = object_path(&hash);
    match std::fs::symlink_metadata(root.join(&path)) {
        Ok(metadata) if metadata.is_file() => {
            return Ok(Some(SmallStored {
                hash,
                read_bytes,
                stored_bytes: None,
            }));
        }
        Ok(_) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    let (encoded, _) = super::codec::encode_bytes(
        &content,
        options.compression.zstd_level(),
        options.max_compressed_ratio,
        &options.keys,
    )?;
    write_local_object(root, &path, &encoded)?;
    Ok(Some(SmallStored {
        hash,
        read_bytes,
        stored_bytes: Some(encoded.len() as u64),
    }))
}

/// The folder of a local (`fs`) location, which [`upload_file`](super::upload_file) writes
/// directly.
///
/// OpenDAL's fs backend syncs every file it closes. A backup writes thousands of objects, and one
/// sync per object made the disk's flush latency, not its bandwidth, the limit. Objects are written
/// to a temporary file and renamed into place (never visible half-written), without a sync; a
/// [`LocationWriteback`](super::LocationWriteback) makes them durable, in the background and in
/// batches, before a manifest refers to them.
pub(super) fn local_root(op: &Operator) -> Option<PathBuf> {
    let info = op.info();
    (info.scheme() == "fs").then(|| PathBuf::from(info.root()))
}

/// The folder of `op` when it is a local (`fs`) location.
pub fn local_folder(op: &Operator) -> Option<PathBuf> {
    local_root(op)
}

/// Whether `op` is a local (`fs`) folder, which [`encode_into_folder`] can write into.
pub fn is_local_folder(op: &Operator) -> bool {
    local_root(op).is_some()
}

pub(super) async fn upload_to_folder(
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

/// Reads, hashes and encodes `file` into a temporary file of a local (`fs`) location in ONE pass,
/// for content that is probably new: [`upload_file`](super::upload_file) needs the hash first (a
/// second read) to name the object. The caller commits the result under the object's name unless
/// the location holds it already. `Ok(None)` when `op` is not a local folder.
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
    let keys = options.keys.clone();
    let written = {
        let temporary = temporary.clone();
        tokio::task::spawn_blocking(move || {
            let opened = match opened {
                Some(opened) => opened,
                None => File::open(&source)?,
            };
            let encoding = Encoding {
                level,
                max_ratio,
                limiter: limiter.as_ref(),
                keys: &keys,
            };
            encode_to_temporary(opened, &temporary, &encoding)
        })
        .await
        .map_err(|error| read_error(io::Error::other(error)))?
        .map_err(read_error)?
    };
    let (summary, stored_bytes) = written;
    Ok(PendingObject {
        temporary: Some(temporary),
        root: root.to_path_buf(),
        hash: summary.hash,
        outcome: UploadOutcome {
            stored_bytes,
            compressed: summary.compressed,
            read_bytes: summary.read_bytes,
        },
    })
}

/// Encodes `opened` into the file `temporary` (removed on failure); returns what was read and
/// the stored size.
fn encode_to_temporary(
    opened: File,
    temporary: &Path,
    encoding: &Encoding<'_>,
) -> io::Result<(EncodeSummary, u64)> {
    let write_error = |error: io::Error| {
        io::Error::new(
            error.kind(),
            format!("write {}: {error}", temporary.display()),
        )
    };
    // Large objects bypass the page cache: see `crate::direct`.
    let mut out = create_in_folder(temporary, DirectWriter::create).map_err(write_error)?;
    let summary = encode_file(
        opened,
        &mut |bytes: Bytes| out.write_all(&bytes).map_err(write_error),
        encoding,
    );
    let finished = summary.and_then(|summary| {
        out.finish()
            .map(|stored| (summary, stored))
            .map_err(write_error)
    });
    match finished {
        Ok((summary, stored)) => Ok((summary, stored)),
        Err(error) => {
            let _ = std::fs::remove_file(temporary);
            Err(error)
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::object::tests::*;
    use crate::object::{Keyring, download_object, object_exists, upload_bytes};

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
        download_object(&fixture.op, &object, &dest, hash, &Keyring::plain(), None)
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
        download_object(&fixture.op, &object, &dest, hash, &Keyring::plain(), None)
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

    /// A small file in one call: stored once, found the second time, left to another claimer,
    /// and handed back when it grew past the small-file limit.
    #[tokio::test]
    async fn small_files_are_stored_once_in_one_call() {
        let fixture = fixture();
        std::fs::create_dir_all(&fixture.root).expect("mkdir");
        let source = fixture.files.join("small");
        let content = b"rows of a small table\n".repeat(50);
        std::fs::write(&source, &content).expect("write");
        let options = UploadOptions::default();
        let object = |hash: &ContentHash| format!("objects/{}", hash.to_hex());

        let first = store_small_file_locally(&fixture.root, &source, &options, object, |_| true)
            .expect("store")
            .expect("small");
        assert_eq!(first.hash, ContentHash::of(&content));
        assert_eq!(first.read_bytes, content.len() as u64);
        let stored = first.stored_bytes.expect("written");
        assert!(stored < content.len() as u64, "text compresses: {stored}");
        let path = object(&first.hash);
        assert_eq!(
            std::fs::metadata(fixture.root.join(&path))
                .expect("object")
                .len(),
            stored
        );
        let dest = fixture.files.join("restored");
        download_object(
            &fixture.op,
            &path,
            &dest,
            first.hash,
            &Keyring::plain(),
            None,
        )
        .await
        .expect("download");
        assert_eq!(std::fs::read(&dest).expect("read"), content);

        let again = store_small_file_locally(&fixture.root, &source, &options, object, |_| true)
            .expect("store")
            .expect("small");
        assert_eq!(again.stored_bytes, None, "the folder holds it");
        std::fs::remove_file(fixture.root.join(&path)).expect("remove");
        let claimed = store_small_file_locally(&fixture.root, &source, &options, object, |_| false)
            .expect("store")
            .expect("small");
        assert_eq!(claimed.stored_bytes, None, "another file claimed it");
        assert!(!fixture.root.join(&path).exists());

        let grown = fixture.files.join("grown");
        std::fs::write(&grown, vec![7u8; crate::object::SMALL_FILE as usize + 1]).expect("write");
        assert_eq!(
            store_small_file_locally(&fixture.root, &grown, &options, object, |_| true)
                .expect("read"),
            None
        );
        let missing = fixture.files.join("gone");
        assert!(
            store_small_file_locally(&fixture.root, &missing, &options, object, |_| true).is_err()
        );
    }
}
