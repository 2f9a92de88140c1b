//! Writing large objects into a local folder without the page cache.
//!
//! An object written to a local location is not read again by the backup: buffered writes only
//! fill the page cache with it, evicting what the database on the node keeps there, and cost the
//! kernel a page allocation and a copy per 4 KiB. On the bench machine (a VM), a buffered 256 MiB
//! write cost 0.33-0.66 s of system time and a direct one 0.05-0.10 s, and finished sooner
//! (`dd bs=1M conv=fsync`, without and with `oflag=direct`). So large objects are written with
//! `O_DIRECT`: from an aligned buffer, in whole blocks, the last one padded with zeros and the
//! file then cut to its length.
//!
//! A direct write returns only once the disk has the data, so a thread of its own writes each
//! full buffer while the caller fills the next one: the disk's latency overlaps the compression
//! instead of adding to it (with the write on the compressing thread, a slow disk showed as a
//! third of the machine in iowait).
//!
//! Filesystems without direct I/O (tmpfs before Linux 6.6, some FUSE and network filesystems)
//! refuse the flag at open, or a write that is not aligned to their own block size: the writer
//! then carries on buffered, so it never fails where a buffered write would work.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::mpsc;

use rustix::fs::OFlags;

/// Alignment of the buffer, of the file offsets and of the write lengths: the logical block size
/// of every common disk (512 B or 4 KiB) divides it.
const ALIGN: usize = 4096;
/// Bytes gathered before each write.
const BUFFER: usize = 1024 * 1024;

/// `BUFFER` bytes at an `ALIGN`-aligned address.
struct Aligned {
    bytes: Vec<u8>,
    start: usize,
}

impl Aligned {
    fn new() -> Self {
        let bytes = vec![0u8; BUFFER + ALIGN];
        let start = bytes.as_ptr().align_offset(ALIGN);
        Self { bytes, start }
    }

    fn window(&mut self) -> &mut [u8] {
        &mut self.bytes[self.start..self.start + BUFFER]
    }
}

/// The file, on the writer thread.
struct DiskFile {
    file: File,
    direct: bool,
    /// Bytes of content written. Only the last write is padded, so every other one starts here.
    content: u64,
}

impl DiskFile {
    /// Writes the first `len` bytes of `buffer` at the end of the content. The `last` chunk is
    /// padded to whole blocks when direct, and the file then cut to the content's length.
    fn write(&mut self, buffer: &mut Aligned, len: usize, last: bool) -> io::Result<()> {
        let padded = if last && self.direct {
            len.next_multiple_of(ALIGN)
        } else {
            len
        };
        let window = buffer.window();
        window[len..padded].fill(0);
        // Whether the file may now reach past its content: padding, or a failed write.
        let mut cut = padded != len;
        match (&self.file).write_all(&window[..padded]) {
            Err(error)
                if self.direct
                    && error.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) =>
            {
                // A part of this chunk may have been written: rewrite it whole from its start,
                // buffered, and the rest of the file too.
                let flags = rustix::fs::fcntl_getfl(&self.file)?;
                rustix::fs::fcntl_setfl(&self.file, flags - OFlags::DIRECT)?;
                self.direct = false;
                rustix::fs::seek(&self.file, rustix::fs::SeekFrom::Start(self.content))?;
                (&self.file).write_all(&window[..len])?;
                cut = true;
            }
            result => result?,
        }
        self.content += len as u64;
        if cut {
            self.file.set_len(self.content)?;
        }
        Ok(())
    }
}

/// One buffer for the writer thread: its first `len` bytes are content; `last` for the tail.
struct Chunk {
    buffer: Aligned,
    len: usize,
    last: bool,
}

/// A new file written from aligned buffers with `O_DIRECT` where the filesystem supports it,
/// else buffered, by a thread of its own while the caller fills the next buffer.
/// [`DirectWriter::finish`] writes the tail, sets the exact length and waits for the thread;
/// dropping the writer without it stops the thread after its current write and leaves a file of
/// undefined length (callers remove it).
pub struct DirectWriter {
    current: Aligned,
    filled: usize,
    /// The other buffer while the thread does not have it (it comes back through `returned`).
    spare: Option<Aligned>,
    chunks: Option<mpsc::SyncSender<Chunk>>,
    returned: mpsc::Receiver<Aligned>,
    thread: Option<std::thread::JoinHandle<io::Result<u64>>>,
}

impl DirectWriter {
    /// Creates (or truncates) the file at `path`.
    pub fn create(path: &Path) -> io::Result<Self> {
        let open = |direct: bool| {
            let mut options = OpenOptions::new();
            options.write(true).create(true).truncate(true);
            if direct {
                options.custom_flags(OFlags::DIRECT.bits() as i32);
            }
            options.open(path)
        };
        let (file, direct) = match open(true) {
            Ok(file) => (file, true),
            Err(error) if error.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {
                (open(false)?, false)
            }
            Err(error) => return Err(error),
        };
        let mut disk = DiskFile {
            file,
            direct,
            content: 0,
        };
        let (chunks, incoming) = mpsc::sync_channel::<Chunk>(1);
        let (give_back, returned) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("coffer-direct-io".into())
            .spawn(move || {
                for Chunk {
                    mut buffer,
                    len,
                    last,
                } in incoming
                {
                    disk.write(&mut buffer, len, last)?;
                    if last {
                        break;
                    }
                    // A writer that stopped waiting for it drops it with the channel.
                    let _ = give_back.send(buffer);
                }
                Ok(disk.content)
            })?;
        Ok(Self {
            current: Aligned::new(),
            filled: 0,
            spare: Some(Aligned::new()),
            chunks: Some(chunks),
            returned,
            thread: Some(thread),
        })
    }

    /// Appends `bytes`.
    pub fn write_all(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            let take = (BUFFER - self.filled).min(bytes.len());
            let filled = self.filled;
            self.current.window()[filled..filled + take].copy_from_slice(&bytes[..take]);
            self.filled += take;
            bytes = &bytes[take..];
            if self.filled == BUFFER {
                self.hand_off(false)?;
            }
        }
        Ok(())
    }

    /// Writes what is left, gives the file its exact length and waits until it is all written;
    /// returns the file's size.
    pub fn finish(mut self) -> io::Result<u64> {
        self.hand_off(true)?;
        self.chunks = None;
        self.join()
    }

    /// Gives the current buffer to the thread (waiting for the other one to be written first)
    /// and carries on in the other.
    fn hand_off(&mut self, last: bool) -> io::Result<()> {
        let next = match self.spare.take() {
            Some(spare) => spare,
            None => match self.returned.recv() {
                Ok(buffer) => buffer,
                // The thread stopped: it failed.
                Err(_) => return Err(self.stopped()),
            },
        };
        let chunk = Chunk {
            buffer: std::mem::replace(&mut self.current, next),
            len: self.filled,
            last,
        };
        self.filled = 0;
        let sent = self.chunks.as_ref().map(|chunks| chunks.send(chunk));
        match sent {
            Some(Ok(())) => Ok(()),
            _ => Err(self.stopped()),
        }
    }

    /// Waits for the thread; its result.
    fn join(&mut self) -> io::Result<u64> {
        match self.thread.take().map(std::thread::JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(io::Error::other("the direct write thread panicked")),
            None => Err(io::Error::other("the direct write thread is gone")),
        }
    }

    /// Why the thread stopped early: its error.
    fn stopped(&mut self) -> io::Error {
        self.chunks = None;
        match self.join() {
            Err(error) => error,
            Ok(_) => io::Error::other("the direct write thread stopped early"),
        }
    }
}

impl Drop for DirectWriter {
    fn drop(&mut self) {
        // Closing the channel ends the thread after the write it is doing.
        self.chunks = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 4099) as u8).collect()
    }

    #[test]
    fn files_of_any_length_are_written_exactly() {
        let folder = tempfile::tempdir().expect("tempdir");
        for len in [
            0,
            1,
            4095,
            4096,
            4097,
            BUFFER - 1,
            BUFFER,
            BUFFER + 1,
            3 * BUFFER + 12_345,
        ] {
            let path = folder.path().join(format!("object-{len}"));
            let mut writer = DirectWriter::create(&path).expect("create");
            let bytes = content(len);
            // In uneven pieces, as zstd frames arrive.
            for piece in bytes.chunks(70_001) {
                writer.write_all(piece).expect("write");
            }
            assert_eq!(writer.finish().expect("finish"), len as u64);
            assert!(std::fs::read(&path).expect("read") == bytes, "length {len}");
        }
    }

    #[test]
    fn a_failed_write_is_reported_by_the_writer() {
        // /dev/full refuses every write with ENOSPC (and O_DIRECT at open: buffered then).
        let mut writer = DirectWriter::create(Path::new("/dev/full")).expect("open /dev/full");
        let bytes = content(3 * BUFFER);
        let error = writer
            .write_all(&bytes)
            .and_then(|()| writer.finish())
            .expect_err("no space");
        assert_eq!(error.kind(), io::ErrorKind::StorageFull, "{error}");
    }

    #[test]
    fn a_filesystem_without_direct_io_is_written_buffered() {
        // /dev/shm is tmpfs: before Linux 6.6 it refuses O_DIRECT at open, after it accepts it.
        let folder = tempfile::tempdir_in("/dev/shm").expect("tempdir in /dev/shm");
        let path = folder.path().join("object");
        let mut writer = DirectWriter::create(&path).expect("create");
        let bytes = content(BUFFER + 5);
        writer.write_all(&bytes).expect("write");
        assert_eq!(writer.finish().expect("finish"), bytes.len() as u64);
        assert!(std::fs::read(&path).expect("read") == bytes);
    }
}
