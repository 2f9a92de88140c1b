//! The distinct contents a restore needs, where, and by how many files.
//!
//! Kept as one array sorted by hash rather than a hash map: a restore of a million files of
//! distinct contents held a map of a million entries, about 185 bytes an entry with its
//! buckets (two million of them) and one small allocation per content; the array costs the
//! entries alone (about 80 bytes), and each content's single data path needs no allocation.

use std::ops::{Deref, DerefMut, Index};

use coffer_format::ContentHash;

use super::{PlannedFile, Target};

/// Where one content is needed: in which data path, by how many files, whether a verified copy
/// is staged there already, and the last file (in plan order) of the data path that needs it,
/// which is placed from the staged content itself (the others from copies).
#[derive(Debug)]
pub(super) struct Need {
    pub(super) data_path: usize,
    pub(super) files: u64,
    pub(super) staged: bool,
    pub(super) last_file: usize,
}

/// The data paths that need a content: almost always one.
#[derive(Debug)]
pub(super) enum Needs {
    One(Need),
    Many(Vec<Need>),
}

impl Deref for Needs {
    type Target = [Need];

    fn deref(&self) -> &[Need] {
        match self {
            Needs::One(need) => std::slice::from_ref(need),
            Needs::Many(needs) => needs,
        }
    }
}

impl DerefMut for Needs {
    fn deref_mut(&mut self) -> &mut [Need] {
        match self {
            Needs::One(need) => std::slice::from_mut(need),
            Needs::Many(needs) => needs,
        }
    }
}

impl Needs {
    /// Counts the file `index` of `data_path`, which comes after every file counted before.
    fn count(&mut self, data_path: usize, index: usize) {
        if let Some(need) = self.iter_mut().find(|need| need.data_path == data_path) {
            need.files += 1;
            need.last_file = index;
            return;
        }
        let added = Need {
            data_path,
            files: 1,
            staged: false,
            last_file: index,
        };
        match self {
            Needs::One(_) => {
                let Needs::One(first) = std::mem::replace(self, Needs::Many(Vec::with_capacity(2)))
                else {
                    return;
                };
                *self = Needs::Many(vec![first, added]);
            }
            Needs::Many(needs) => needs.push(added),
        }
    }
}

/// One distinct content the restore needs (files already in place need none).
#[derive(Debug)]
pub(super) struct ObjectPlan {
    pub(super) size: u64,
    /// Index of the first file with this content, to name it in errors.
    pub(super) first_file: usize,
    pub(super) needs: Needs,
}

/// The contents of a plan, sorted by hash.
#[derive(Debug, Default)]
pub(super) struct Objects(Vec<(ContentHash, ObjectPlan)>);

impl Objects {
    /// The contents the files not already in place need.
    pub(super) fn of(files: &[PlannedFile]) -> Self {
        let mut wanted: Vec<(ContentHash, usize)> = files
            .iter()
            .enumerate()
            .filter(|(_, file)| file.target != Target::InPlace)
            .map(|(index, file)| (file.hash, index))
            .collect();
        // By hash, then plan order: each content's files come together, first to last.
        wanted.sort_unstable();
        let mut objects: Vec<(ContentHash, ObjectPlan)> = Vec::new();
        for (hash, index) in wanted {
            let file = &files[index];
            match objects.last_mut() {
                Some((last, object)) if *last == hash => object.needs.count(file.data_path, index),
                _ => objects.push((
                    hash,
                    ObjectPlan {
                        size: file.size,
                        first_file: index,
                        needs: Needs::One(Need {
                            data_path: file.data_path,
                            files: 1,
                            staged: false,
                            last_file: index,
                        }),
                    },
                )),
            }
        }
        objects.shrink_to_fit();
        Self(objects)
    }

    /// The plan of the content `hash`.
    pub(super) fn get(&self, hash: &ContentHash) -> Option<&ObjectPlan> {
        self.0
            .binary_search_by(|(key, _)| key.cmp(hash))
            .ok()
            .map(|found| &self.0[found].1)
    }

    pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = (&ContentHash, &mut ObjectPlan)> {
        self.0.iter_mut().map(|(hash, object)| (&*hash, object))
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &ObjectPlan> {
        self.0.iter().map(|(_, object)| object)
    }
}

impl Index<&ContentHash> for Objects {
    type Output = ObjectPlan;

    /// The plan of a content the plan has (every caller asks for one it listed).
    fn index(&self, hash: &ContentHash) -> &ObjectPlan {
        match self.get(hash) {
            Some(object) => object,
            None => panic!("content {} is not in the restore's plan", hash.to_hex()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(data_path: usize, hash: u8, target: Target) -> PlannedFile {
        PlannedFile {
            data_path,
            relative: format!("f{hash}").into(),
            size: u64::from(hash),
            mode: 0o644,
            mtime_ns: 0,
            hash: ContentHash([hash; 32]),
            target,
        }
    }

    #[test]
    fn contents_are_counted_per_data_path_with_their_first_and_last_files() {
        let files = [
            file(0, 7, Target::Absent),
            file(1, 3, Target::Absent),
            file(0, 7, Target::Absent),
            file(1, 7, Target::Existing),
            file(0, 9, Target::InPlace),
            file(0, 7, Target::Absent),
        ];
        let objects = Objects::of(&files);
        assert_eq!(
            objects.values().count(),
            2,
            "the content in place needs nothing"
        );
        assert!(objects.get(&ContentHash([9; 32])).is_none());
        let seven = &objects[&ContentHash([7; 32])];
        assert_eq!(seven.first_file, 0);
        let needs: Vec<_> = seven
            .needs
            .iter()
            .map(|need| (need.data_path, need.files, need.last_file))
            .collect();
        assert_eq!(needs, [(0, 3, 5), (1, 1, 3)]);
        let three = &objects[&ContentHash([3; 32])];
        assert_eq!((three.first_file, three.needs.len()), (1, 1));
        assert_eq!(three.needs[0].last_file, 1);
    }
}
