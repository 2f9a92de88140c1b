//! A snapshot's file list, kept on disk when it is long.
//!
//! A node of a million files described by a list in memory held about 250 bytes a file in its
//! two paths and fields, twice over while the upload turned it into work: the agent's memory
//! grew with the node's file count. The `dir` provider's walkers write what they find to a
//! list file in the state folder instead (`snapshots/<tag>.files`, zstd-compressed records),
//! and the upload reads it back in chunks. The file is also the snapshot's record for an agent
//! that restarts before uploading it: it lists the files left unlinked with the hashes they
//! were left out for, and the location those are in.
//!
//! The other providers' lists are short (a command's matches, a few databases) and stay in
//! memory. Either way a reader sees the same records.
//!
//! The format is the agent's own (never read by anything else, and only by the agent that
//! wrote it or a newer one): a header (magic, version, the location files were left unlinked
//! for), then one record per file, then a trailer with the counts, which tells a complete list
//! from one cut short.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use coffer_format::ContentHash;

use super::{SnapshotError, SnapshotFile};
use crate::reserved::{FILE_LIST_SUFFIX, snapshot_records};

const MAGIC: &[u8; 8] = b"COFFLIST";
const VERSION: u8 = 1;
/// A record follows.
const RECORD: u8 = 1;
/// The trailer follows: the list is complete.
const TRAILER: u8 = 2;
/// Record flags: the snapshot path is the live path (an unlinked or live file) ...
const SAME_PATH: u8 = 1;
/// ... the file was left unlinked, and the hash it was left out for follows.
const STORED_HASH: u8 = 2;
/// zstd level of list files: the fastest, as the list is written once and read once or twice.
const LEVEL: i32 = 1;

/// Where the list of the snapshot `tag` is kept.
pub(crate) fn list_path(state_dir: &Path, tag: &str) -> PathBuf {
    snapshot_records(state_dir).join(format!("{tag}{FILE_LIST_SUFFIX}"))
}

/// The files of a snapshot, in memory or in a list file; cheap to clone.
#[derive(Debug, Clone)]
pub struct FileList {
    inner: Arc<Inner>,
}

#[derive(Debug)]
enum Inner {
    Memory(Vec<SnapshotFile>),
    Spilled { path: PathBuf, totals: Totals },
}

/// Counts of a list, written in its trailer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Files.
    pub files: u64,
    /// Sum of their sizes.
    pub bytes: u64,
    /// Files left unlinked.
    pub unlinked: u64,
}

impl Totals {
    fn add(&mut self, file: &SnapshotFile) {
        self.files += 1;
        self.bytes += file.size;
        self.unlinked += u64::from(file.stored_hash.is_some());
    }
}

impl PartialEq for FileList {
    /// Same list: the same memory or the same file.
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
            || match (&*self.inner, &*other.inner) {
                (Inner::Memory(left), Inner::Memory(right)) => left == right,
                (Inner::Spilled { path: left, .. }, Inner::Spilled { path: right, .. }) => {
                    left == right
                }
                _ => false,
            }
    }
}

impl Eq for FileList {}

impl FileList {
    /// A list held in memory.
    pub fn from_vec(files: Vec<SnapshotFile>) -> Self {
        Self {
            inner: Arc::new(Inner::Memory(files)),
        }
    }

    /// Counts of the list.
    pub fn totals(&self) -> Totals {
        match &*self.inner {
            Inner::Memory(files) => {
                let mut totals = Totals::default();
                files.iter().for_each(|file| totals.add(file));
                totals
            }
            Inner::Spilled { totals, .. } => *totals,
        }
    }

    /// Number of files.
    pub fn len(&self) -> usize {
        match &*self.inner {
            Inner::Memory(files) => files.len(),
            Inner::Spilled { totals, .. } => usize::try_from(totals.files).unwrap_or(usize::MAX),
        }
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The list's files in chunks of at most `chunk` (blocking: a list file is read as the
    /// chunks are taken). A list file cut short or damaged ends with an error.
    pub fn chunks(&self, chunk: usize) -> Result<Chunks, SnapshotError> {
        let chunk = chunk.max(1);
        let source = match &*self.inner {
            Inner::Memory(_) => Source::Memory {
                list: self.clone(),
                next: 0,
            },
            Inner::Spilled { path, .. } => {
                let (reader, _) = open_list(path)?;
                Source::File {
                    reader: Box::new(reader),
                    path: path.clone(),
                    read: Totals::default(),
                    done: false,
                }
            }
        };
        Ok(Chunks { source, chunk })
    }

    /// Every file, sorted by data path index, then live path (blocking; for short lists and
    /// tests: a long list is read in [`FileList::chunks`]).
    pub fn to_vec(&self) -> Result<Vec<SnapshotFile>, SnapshotError> {
        let mut files = Vec::with_capacity(self.len());
        for chunk in self.chunks(4096)? {
            files.extend(chunk?);
        }
        files.sort_unstable_by(|left, right| {
            (left.data_path_index, &left.live_path).cmp(&(right.data_path_index, &right.live_path))
        });
        Ok(files)
    }
}

/// The chunks of a [`FileList`].
pub struct Chunks {
    source: Source,
    chunk: usize,
}

impl std::fmt::Debug for Chunks {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Chunks")
            .field("chunk", &self.chunk)
            .finish_non_exhaustive()
    }
}

enum Source {
    Memory {
        list: FileList,
        next: usize,
    },
    File {
        reader: Box<ListReader>,
        path: PathBuf,
        read: Totals,
        done: bool,
    },
}

impl Iterator for Chunks {
    type Item = Result<Vec<SnapshotFile>, SnapshotError>;

    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.source {
            Source::Memory { list, next } => {
                let Inner::Memory(files) = &*list.inner else {
                    return None;
                };
                let start = *next;
                let end = files.len().min(start + self.chunk);
                *next = end;
                (start < end).then(|| Ok(files[start..end].to_vec()))
            }
            Source::File {
                reader,
                path,
                read,
                done,
            } => {
                if *done {
                    return None;
                }
                let mut files = Vec::with_capacity(self.chunk);
                while files.len() < self.chunk {
                    match read_entry(reader).and_then(|entry| entry.counted(read)) {
                        Ok(Some(file)) => files.push(file),
                        Ok(None) => {
                            *done = true;
                            break;
                        }
                        Err(error) => {
                            *done = true;
                            return Some(Err(damaged(path, &error)));
                        }
                    }
                }
                (!files.is_empty()).then_some(Ok(files))
            }
        }
    }
}

fn damaged(path: &Path, error: &io::Error) -> SnapshotError {
    SnapshotError::Record {
        path: path.to_path_buf(),
        reason: format!("file list unreadable: {error}"),
    }
}

/// Writes a list file: records are added as files are found (from several threads, through a
/// lock), and the file is complete once [`ListWriter::finish`] renamed it into place.
pub(crate) struct ListWriter {
    path: PathBuf,
    temporary: PathBuf,
    encoder: zstd::Encoder<'static, BufWriter<File>>,
    totals: Totals,
}

impl ListWriter {
    /// Starts the list of the snapshot `tag`, of files left unlinked for `unlinked_for`.
    pub(crate) fn create(
        state_dir: &Path,
        tag: &str,
        unlinked_for: Option<&str>,
    ) -> Result<Self, SnapshotError> {
        let path = list_path(state_dir, tag);
        let temporary = path.with_extension("files.tmp");
        let fail = |source| SnapshotError::file("write file list", &temporary, source);
        if let Some(folder) = path.parent() {
            std::fs::create_dir_all(folder)
                .map_err(|source| SnapshotError::file("create folder", folder, source))?;
        }
        let file = File::create(&temporary).map_err(fail)?;
        let mut encoder =
            zstd::Encoder::new(BufWriter::with_capacity(256 * 1024, file), LEVEL).map_err(fail)?;
        let location = unlinked_for.unwrap_or("").as_bytes();
        let header = (|| {
            encoder.write_all(MAGIC)?;
            encoder.write_all(&[VERSION])?;
            write_bytes(&mut encoder, location)
        })();
        header.map_err(fail)?;
        Ok(Self {
            path,
            temporary,
            encoder,
            totals: Totals::default(),
        })
    }

    /// Adds files.
    pub(crate) fn add(&mut self, files: &[SnapshotFile]) -> Result<(), SnapshotError> {
        for file in files {
            write_entry(&mut self.encoder, file).map_err(|source| {
                SnapshotError::file("write file list", &self.temporary, source)
            })?;
            self.totals.add(file);
        }
        Ok(())
    }

    /// Ends the list and puts it in place; the list of its files.
    pub(crate) fn finish(mut self) -> Result<FileList, SnapshotError> {
        let temporary = self.temporary.clone();
        let fail = |source| SnapshotError::file("write file list", &temporary, source);
        let totals = self.totals;
        (|| {
            self.encoder.write_all(&[TRAILER])?;
            for count in [totals.files, totals.bytes, totals.unlinked] {
                self.encoder.write_all(&count.to_le_bytes())?;
            }
            let writer = self.encoder.finish()?;
            writer.into_inner().map_err(io::Error::other)?;
            std::fs::rename(&self.temporary, &self.path)
        })()
        .map_err(fail)?;
        Ok(FileList {
            inner: Arc::new(Inner::Spilled {
                path: self.path.clone(),
                totals,
            }),
        })
    }

    /// Drops an unfinished list.
    pub(crate) fn discard(self) {
        let temporary = self.temporary.clone();
        drop(self);
        let _ = std::fs::remove_file(temporary);
    }
}

/// Opens the list of the snapshot `tag` if it has one: the list, and the location its files
/// were left unlinked for. `Ok(None)` when there is no list file (a snapshot of another
/// provider, or taken by an older agent).
pub(crate) fn load(
    state_dir: &Path,
    tag: &str,
) -> Result<Option<(FileList, Option<String>)>, SnapshotError> {
    let path = list_path(state_dir, tag);
    if !path.exists() {
        // A walk cut short (the agent stopped during it) left its list unfinished: the
        // snapshot's folders hold only part of the files.
        if path.with_extension("files.tmp").exists() {
            return Err(SnapshotError::Incomplete {
                tag: tag.to_string(),
            });
        }
        return Ok(None);
    }
    let (mut reader, unlinked_for) = open_list(&path)?;
    // Read through to the trailer: its counts, and the proof that the list is whole.
    let mut totals = Totals::default();
    loop {
        match read_entry(&mut reader).and_then(|entry| entry.counted(&mut totals)) {
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(error) => return Err(damaged(&path, &error)),
        }
    }
    Ok(Some((
        FileList {
            inner: Arc::new(Inner::Spilled { path, totals }),
        },
        unlinked_for,
    )))
}

/// Removes the list of the snapshot `tag` (and what a walk cut short by a crash left of one);
/// returns whether there was a list.
pub(crate) fn remove(state_dir: &Path, tag: &str) -> Result<bool, SnapshotError> {
    let path = list_path(state_dir, tag);
    let temporary = path.with_extension("files.tmp");
    match std::fs::remove_file(&temporary) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(source) => return Err(SnapshotError::file("remove file list", temporary, source)),
    }
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(SnapshotError::file("remove file list", path, source)),
    }
}

type ListReader = zstd::Decoder<'static, BufReader<File>>;

fn open_list(path: &Path) -> Result<(ListReader, Option<String>), SnapshotError> {
    let file =
        File::open(path).map_err(|source| SnapshotError::file("read file list", path, source))?;
    let mut reader = zstd::Decoder::new(file).map_err(|error| damaged(path, &error))?;
    let header = (|| {
        let mut magic = [0; 8];
        reader.read_exact(&mut magic)?;
        let mut version = [0; 1];
        reader.read_exact(&mut version)?;
        if &magic != MAGIC || version[0] != VERSION {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "not a file list this agent reads",
            ));
        }
        let location = read_bytes(&mut reader)?;
        String::from_utf8(location)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "location id is not UTF-8"))
    })();
    let location = header.map_err(|error| damaged(path, &error))?;
    Ok((reader, (!location.is_empty()).then_some(location)))
}

fn write_bytes(writer: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    let length = u32::try_from(bytes.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path too long"))?;
    writer.write_all(&length.to_le_bytes())?;
    writer.write_all(bytes)
}

fn read_bytes(reader: &mut impl Read) -> io::Result<Vec<u8>> {
    let length = u32::from_le_bytes(read_array(reader)?);
    // Bounded: no path is longer (PATH_MAX is 4096), so a damaged length cannot make the
    // reader allocate gigabytes.
    if length > 64 * 1024 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "a path longer than any file system allows",
        ));
    }
    let mut bytes = vec![0; length as usize];
    reader.read_exact(&mut bytes)?;
    Ok(bytes)
}

fn read_array<const N: usize>(reader: &mut impl Read) -> io::Result<[u8; N]> {
    let mut bytes = [0; N];
    reader.read_exact(&mut bytes)?;
    Ok(bytes)
}

fn write_entry(writer: &mut impl Write, file: &SnapshotFile) -> io::Result<()> {
    let mut flags = 0;
    if file.snapshot_path == file.live_path {
        flags |= SAME_PATH;
    }
    if file.stored_hash.is_some() {
        flags |= STORED_HASH;
    }
    let index = u32::try_from(file.data_path_index)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "data path index"))?;
    writer.write_all(&[RECORD, flags])?;
    writer.write_all(&index.to_le_bytes())?;
    write_bytes(writer, file.live_path.as_os_str().as_bytes())?;
    if flags & SAME_PATH == 0 {
        write_bytes(writer, file.snapshot_path.as_os_str().as_bytes())?;
    }
    writer.write_all(&file.size.to_le_bytes())?;
    writer.write_all(&file.mode.to_le_bytes())?;
    writer.write_all(&file.mtime_ns.to_le_bytes())?;
    writer.write_all(&file.inode.to_le_bytes())?;
    if let Some(hash) = &file.stored_hash {
        writer.write_all(&hash.0)?;
    }
    Ok(())
}

/// What a list holds next.
enum Entry {
    File(SnapshotFile),
    /// The trailer, with the counts the writer wrote.
    End(Totals),
}

impl Entry {
    /// The file, counted into `read`; `None` at the trailer, whose counts must be what was
    /// read.
    fn counted(self, read: &mut Totals) -> io::Result<Option<SnapshotFile>> {
        match self {
            Entry::File(file) => {
                read.add(&file);
                Ok(Some(file))
            }
            Entry::End(written) if written == *read => Ok(None),
            Entry::End(written) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "its trailer counts {} files, {} were read",
                    written.files, read.files
                ),
            )),
        }
    }
}

/// The next entry.
fn read_entry(reader: &mut impl Read) -> io::Result<Entry> {
    let [kind] = read_array(reader)?;
    match kind {
        RECORD => {}
        TRAILER => {
            let files = u64::from_le_bytes(read_array(reader)?);
            let bytes = u64::from_le_bytes(read_array(reader)?);
            let unlinked = u64::from_le_bytes(read_array(reader)?);
            return Ok(Entry::End(Totals {
                files,
                bytes,
                unlinked,
            }));
        }
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "unknown record kind",
            ));
        }
    }
    let [flags] = read_array(reader)?;
    let data_path_index = u32::from_le_bytes(read_array(reader)?) as usize;
    let live_path = PathBuf::from(std::ffi::OsString::from_vec(read_bytes(reader)?));
    let snapshot_path = if flags & SAME_PATH == 0 {
        PathBuf::from(std::ffi::OsString::from_vec(read_bytes(reader)?))
    } else {
        live_path.clone()
    };
    let size = u64::from_le_bytes(read_array(reader)?);
    let mode = u32::from_le_bytes(read_array(reader)?);
    let mtime_ns = i64::from_le_bytes(read_array(reader)?);
    let inode = u64::from_le_bytes(read_array(reader)?);
    let stored_hash = if flags & STORED_HASH != 0 {
        Some(ContentHash(read_array(reader)?))
    } else {
        None
    };
    Ok(Entry::File(SnapshotFile {
        data_path_index,
        live_path,
        snapshot_path,
        size,
        mode,
        mtime_ns,
        inode,
        stored_hash,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(index: usize, name: &str, linked: bool, hash: Option<u8>) -> SnapshotFile {
        let live_path = PathBuf::from(format!("/data{index}/{name}"));
        SnapshotFile {
            data_path_index: index,
            snapshot_path: if linked {
                PathBuf::from(format!("/data{index}/.coffer-snapshots/t/{name}"))
            } else {
                live_path.clone()
            },
            live_path,
            size: name.len() as u64 * 1000,
            mode: 0o640,
            mtime_ns: -5,
            inode: 77,
            stored_hash: hash.map(|byte| ContentHash([byte; 32])),
        }
    }

    #[test]
    fn a_list_file_reads_back_what_was_written_in_chunks() {
        let state = tempfile::tempdir().expect("tempdir");
        let files: Vec<_> = (0..1000)
            .map(|n| {
                file(
                    n % 2,
                    &format!("f{n:04}"),
                    n % 3 != 0,
                    (n % 3 == 0).then_some(n as u8),
                )
            })
            .collect();
        let mut writer = ListWriter::create(state.path(), "t1", Some("loc-1")).expect("create");
        writer.add(&files[..400]).expect("add");
        writer.add(&files[400..]).expect("add");
        let list = writer.finish().expect("finish");
        let totals = list.totals();
        assert_eq!(totals.files, 1000);
        assert_eq!(totals.unlinked, 334);
        assert_eq!(totals.bytes, files.iter().map(|f| f.size).sum::<u64>());

        let chunks: Vec<_> = list
            .chunks(300)
            .expect("chunks")
            .collect::<Result<_, _>>()
            .expect("read");
        assert_eq!(
            chunks.iter().map(Vec::len).collect::<Vec<_>>(),
            [300, 300, 300, 100]
        );
        assert_eq!(chunks.concat(), files, "in the order written");

        let (loaded, location) = load(state.path(), "t1").expect("load").expect("a list");
        assert_eq!(location.as_deref(), Some("loc-1"));
        assert_eq!(loaded.totals(), totals);
        let mut sorted = files.clone();
        sorted.sort_by(|l, r| {
            (l.data_path_index, &l.live_path).cmp(&(r.data_path_index, &r.live_path))
        });
        assert_eq!(loaded.to_vec().expect("to_vec"), sorted);

        // What a walk cut short left goes with the list; alone, it is an unfinished snapshot.
        let temporary = list_path(state.path(), "t1").with_extension("files.tmp");
        std::fs::write(&temporary, b"cut short").expect("write");
        assert!(load(state.path(), "t1").expect("a list").is_some());
        std::fs::rename(list_path(state.path(), "t1"), state.path().join("kept")).expect("move");
        assert!(matches!(
            load(state.path(), "t1"),
            Err(SnapshotError::Incomplete { .. })
        ));
        std::fs::rename(state.path().join("kept"), list_path(state.path(), "t1")).expect("move");
        assert!(remove(state.path(), "t1").expect("remove"));
        assert!(!temporary.exists());
        assert!(load(state.path(), "t1").expect("load").is_none());
        assert!(!remove(state.path(), "t1").expect("remove again"));
    }

    #[test]
    fn a_list_cut_short_is_refused_not_read_as_shorter() {
        let state = tempfile::tempdir().expect("tempdir");
        let mut writer = ListWriter::create(state.path(), "t2", None).expect("create");
        let files: Vec<_> = (0..5000)
            .map(|n| file(0, &format!("f{n}"), true, None))
            .collect();
        writer.add(&files).expect("add");
        let list = writer.finish().expect("finish");
        let path = list_path(state.path(), "t2");
        // Decompressed, cut before the trailer, compressed again: a list whose zstd frame is
        // whole but whose records stop early.
        let whole = zstd::decode_all(File::open(&path).expect("open")).expect("decode");
        let cut = zstd::encode_all(&whole[..whole.len() - 40], 1).expect("encode");
        std::fs::write(&path, cut).expect("write");
        let error = load(state.path(), "t2").expect_err("a cut list");
        assert!(
            error.to_string().contains("file list unreadable"),
            "{error}"
        );
        let read: Result<Vec<_>, _> = list.chunks(1000).expect("chunks").collect();
        assert!(
            read.is_err(),
            "reading a cut list fails rather than ending early"
        );
    }

    #[test]
    fn a_list_in_memory_reads_as_a_list_file_does() {
        let files: Vec<_> = (0..10)
            .map(|n| file(0, &format!("f{n}"), true, None))
            .collect();
        let list = FileList::from_vec(files.clone());
        assert_eq!(list.len(), 10);
        let chunks: Vec<_> = list
            .chunks(4)
            .expect("chunks")
            .collect::<Result<_, _>>()
            .expect("read");
        assert_eq!(chunks.iter().map(Vec::len).collect::<Vec<_>>(), [4, 4, 2]);
        assert_eq!(chunks.concat(), files);
    }
}
