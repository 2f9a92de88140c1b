//! The plan's files: one fixed-size record each, their relative paths one after another in one
//! string (a `Box<str>` each cost 16 bytes and an allocation of its own, a third of a
//! million-file plan).

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};

use coffer_format::{ContentHash, PackSlice};

/// What is at a file's target path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Target {
    /// Nothing.
    Absent,
    /// A regular file: replaced with `overwrite`, refused without it.
    Existing,
    /// With `overwrite`, the backup's file itself (same size, time and content): nothing to
    /// fetch, only its mode is set.
    InPlace,
}

/// Where a file's relative path lies in its plan's [`Paths`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct PathSpan {
    start: u32,
    len: u32,
}

/// One selected file of the manifest.
#[derive(Debug)]
pub(super) struct PlannedFile {
    /// Index of its data path, the backup's and this node's ([`PlannedFile::data_path`]; two
    /// bytes, which keep the record at 72 bytes with its pack).
    pub(super) data_path_index: u16,
    /// Its path below the data path (normal components joined by `/`), in [`Paths`]; set by
    /// [`PlannedFiles::push`].
    pub(super) path: PathSpan,
    pub(super) size: u64,
    pub(super) mode: u32,
    pub(super) mtime_ns: i64,
    pub(super) hash: ContentHash,
    pub(super) target: Target,
    /// For the last file of a data path that needs its content: whether an earlier attempt
    /// staged that content there, verified (see [`super::objects`]).
    pub(super) staged: bool,
    /// The pack holding its content ([`PlannedFiles::packed`]), or [`UNPACKED`].
    pub(super) pack: u32,
    /// Where in the pack the content starts.
    pub(super) pack_offset: u32,
}

impl PlannedFile {
    /// Index of its data path, the backup's and this node's.
    pub(super) fn data_path(&self) -> usize {
        usize::from(self.data_path_index)
    }
}

/// [`PlannedFile::pack`] of a content that is an object of its own.
pub(super) const UNPACKED: u32 = u32::MAX;

/// The relative paths of a plan's files.
#[derive(Debug, Default)]
pub(super) struct Paths(String);

impl Paths {
    /// Most bytes of paths a plan holds (its spans count in `u32`).
    pub(super) const LIMIT: usize = u32::MAX as usize;

    /// The relative path of `file`.
    pub(super) fn of(&self, file: &PlannedFile) -> &str {
        let start = file.path.start as usize;
        self.0
            .get(start..start + file.path.len as usize)
            .unwrap_or_default()
    }
}

/// The files of a plan, in manifest order, with their paths.
#[derive(Debug, Default)]
pub(super) struct PlannedFiles {
    files: Vec<PlannedFile>,
    paths: Paths,
    /// The packs the files' contents lie in, each once (a few hundred for a million files),
    /// and the index of each.
    packs: Vec<ContentHash>,
    pack_index: HashMap<ContentHash, u32>,
}

impl PlannedFiles {
    /// Adds `file` with its relative path; false (and nothing added) when its path would take
    /// the plan's paths past [`Paths::LIMIT`].
    pub(super) fn push(&mut self, mut file: PlannedFile, relative: &str) -> bool {
        let start = self.paths.0.len();
        let (Ok(start), Ok(len)) = (u32::try_from(start), u32::try_from(relative.len())) else {
            return false;
        };
        if start as usize + relative.len() > Paths::LIMIT {
            return false;
        }
        self.paths.0.push_str(relative);
        file.path = PathSpan { start, len };
        self.files.push(file);
        true
    }

    /// The relative path of `file` (one of these).
    pub(super) fn relative(&self, file: &PlannedFile) -> &str {
        self.paths.of(file)
    }

    pub(super) fn paths(&self) -> &Paths {
        &self.paths
    }

    /// The [`PlannedFile::pack`] and [`PlannedFile::pack_offset`] of a content at `slice`;
    /// `None` when the offset does not fit (past 4 GiB: no pack this agent writes is larger
    /// than a few MiB) or the plan would hold too many packs.
    pub(super) fn pack_of(&mut self, slice: PackSlice) -> Option<(u32, u32)> {
        let offset = u32::try_from(slice.offset).ok()?;
        if let Some(index) = self.pack_index.get(&slice.pack) {
            return Some((*index, offset));
        }
        let index = u32::try_from(self.packs.len())
            .ok()
            .filter(|index| *index != UNPACKED)?;
        self.packs.push(slice.pack);
        self.pack_index.insert(slice.pack, index);
        Some((index, offset))
    }

    /// Where the content of `file` (one of these) lies when it is packed.
    pub(super) fn packed(&self, file: &PlannedFile) -> Option<PackSlice> {
        let pack = *self.packs.get(file.pack as usize)?;
        Some(PackSlice {
            pack,
            offset: u64::from(file.pack_offset),
        })
    }

    /// The files to change, and their paths to read meanwhile.
    pub(super) fn split_mut(&mut self) -> (&mut [PlannedFile], &Paths) {
        (&mut self.files, &self.paths)
    }
}

impl Deref for PlannedFiles {
    type Target = [PlannedFile];

    fn deref(&self) -> &[PlannedFile] {
        &self.files
    }
}

impl DerefMut for PlannedFiles {
    fn deref_mut(&mut self) -> &mut [PlannedFile] {
        &mut self.files
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Files of these relative paths, data paths and hashes (their sizes the hash's byte).
    pub(in super::super) fn planned(files: &[(&str, usize, u8)]) -> PlannedFiles {
        let mut planned = PlannedFiles::default();
        for (relative, data_path, hash) in files {
            let file = PlannedFile {
                data_path_index: u16::try_from(*data_path).expect("a small index"),
                path: PathSpan::default(),
                size: u64::from(*hash),
                mode: 0o644,
                mtime_ns: 0,
                hash: ContentHash([*hash; 32]),
                target: Target::Absent,
                staged: false,
                pack: UNPACKED,
                pack_offset: 0,
            };
            assert!(planned.push(file, relative));
        }
        planned
    }

    #[test]
    fn each_file_reads_back_its_own_path() {
        let files = planned(&[("a/b", 0, 1), ("", 0, 2), ("é/ß.txt", 1, 3), ("c", 1, 4)]);
        let paths: Vec<&str> = files.iter().map(|file| files.relative(file)).collect();
        assert_eq!(paths, ["a/b", "", "é/ß.txt", "c"]);
        assert_eq!(size_of::<PlannedFile>(), 72);
    }
}
