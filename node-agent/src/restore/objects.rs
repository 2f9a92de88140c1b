//! The distinct contents a restore needs, where, and by how many files.
//!
//! Kept as the plan's file indexes sorted by content (4 bytes a file, and 4 a content for the
//! order of their first files), each content's facts
//! worked out from its run of files when asked, rather than a map from content to its plan: a
//! restore of a million files of distinct contents held a map of a million entries, about 185
//! bytes an entry with its buckets and one small allocation per content, more than the files
//! themselves. Whether a content is staged already in a data path is a flag on the last file
//! of the data path that needs it ([`PlannedFile::staged`]).

use std::ops::{Deref, DerefMut};

use coffer_format::ContentHash;

use super::{Plan, PlannedFile, Target};

/// Where one content is needed: in which data path, by how many files, whether a verified copy
/// is staged there already, and the last file (in plan order) of the data path that needs it,
/// which is placed from the staged content itself (the others from copies).
#[derive(Debug, Clone, Copy)]
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
            Needs::One(first) => *self = Needs::Many(vec![*first, added]),
            Needs::Many(needs) => needs.push(added),
        }
    }
}

/// One distinct content the restore needs (files already in place need none).
#[derive(Debug)]
pub(super) struct ObjectPlan {
    pub(super) hash: ContentHash,
    pub(super) size: u64,
    /// Index of the first file with this content, to name it in errors.
    pub(super) first_file: usize,
    pub(super) needs: Needs,
}

/// A content of the plan: where its run of files starts in [`Objects`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ContentId(usize);

/// A position in a walk over the contents (see [`Objects::next`]).
#[derive(Debug, Default)]
pub(super) struct Cursor(usize);

/// The contents of a plan: the indexes of its files that need content (not in place), sorted
/// by hash, then plan order; and where each content's run starts, in the order of the
/// contents' first files.
#[derive(Debug, Default)]
pub(super) struct Objects {
    order: Vec<u32>,
    /// Fetching goes in this order, the order the files were walked and backed up in: a local
    /// location holds the objects on disk in the order it wrote them, and a restore of a
    /// million files that read them in hash order (all over the disk) downloaded for 248 s
    /// instead of 93.
    starts: Vec<u32>,
}

impl Objects {
    /// The contents the files not already in place need. `files` must hold fewer than
    /// `u32::MAX` files (the plan refuses more).
    pub(super) fn of(files: &[PlannedFile]) -> Self {
        let prefix = |index: u32| -> u64 {
            let hash = &files[index as usize].hash.0;
            u64::from_be_bytes([
                hash[0], hash[1], hash[2], hash[3], hash[4], hash[5], hash[6], hash[7],
            ])
        };
        // Sorted by the hash's first 8 bytes (16 bytes a file while sorting, not 36), then
        // runs of one prefix by the whole hash: almost always the files of one content, already
        // in plan order.
        let mut keyed: Vec<(u64, u32)> = files
            .iter()
            .enumerate()
            .filter(|(_, file)| file.target != Target::InPlace)
            .filter_map(|(index, _)| u32::try_from(index).ok())
            .map(|index| (prefix(index), index))
            .collect();
        keyed.sort_unstable();
        let mut order: Vec<u32> = keyed.iter().map(|(_, index)| *index).collect();
        drop(keyed);
        let mut start = 0;
        while start < order.len() {
            let run_prefix = prefix(order[start]);
            let end = start
                + order[start..]
                    .iter()
                    .take_while(|index| prefix(**index) == run_prefix)
                    .count();
            let run = &mut order[start..end];
            if run.len() > 1 {
                run.sort_unstable_by_key(|index| (files[*index as usize].hash, *index));
            }
            start = end;
        }
        let mut starts = Vec::new();
        let mut start = 0;
        while start < order.len() {
            starts.push(start as u32);
            start += run_length(&order[start..], files);
        }
        // A run's first entry is its content's first file.
        starts.sort_unstable_by_key(|start| order[*start as usize]);
        Self { order, starts }
    }

    /// The plan-order indexes of the files of the content `id`.
    pub(super) fn files_of(&self, files: &[PlannedFile], id: ContentId) -> &[u32] {
        let run = &self.order[id.0..];
        &run[..run_length(run, files)]
    }

    /// Every content, in the order of their first files.
    pub(super) fn ids(&self) -> impl Iterator<Item = ContentId> + '_ {
        self.starts.iter().map(|start| ContentId(*start as usize))
    }

    /// The content at `cursor`, in the order of their first files, moving it past that
    /// content: a walk over the contents that borrows nothing between steps.
    pub(super) fn next(&self, cursor: &mut Cursor) -> Option<ContentId> {
        let start = self.starts.get(cursor.0)?;
        cursor.0 += 1;
        Some(ContentId(*start as usize))
    }

    /// The plan of the content `id`.
    pub(super) fn plan(&self, files: &[PlannedFile], id: ContentId) -> ObjectPlan {
        let run = self.files_of(files, id);
        let first = &files[run[0] as usize];
        let mut needs = Needs::One(Need {
            data_path: first.data_path(),
            files: 1,
            staged: false,
            last_file: run[0] as usize,
        });
        for index in &run[1..] {
            let index = *index as usize;
            needs.count(files[index].data_path(), index);
        }
        for need in needs.iter_mut() {
            need.staged = files[need.last_file].staged;
        }
        ObjectPlan {
            hash: first.hash,
            size: first.size,
            first_file: run[0] as usize,
            needs,
        }
    }
}

/// How many of the indexes `run` starts with are files of the content of its first.
fn run_length(run: &[u32], files: &[PlannedFile]) -> usize {
    let Some(first) = run.first() else {
        return 0;
    };
    let hash = files[*first as usize].hash;
    run.iter()
        .take_while(|index| files[**index as usize].hash == hash)
        .count()
}

impl Plan {
    /// The plan of the content `id`.
    pub(super) fn object(&self, id: ContentId) -> ObjectPlan {
        self.objects.plan(&self.files, id)
    }

    /// Every content's id and plan, in the order of their first files.
    pub(super) fn objects(&self) -> impl Iterator<Item = (ContentId, ObjectPlan)> + '_ {
        self.objects
            .ids()
            .map(|id| (id, self.objects.plan(&self.files, id)))
    }
}

#[cfg(test)]
mod tests {
    use super::super::files::tests::planned;
    use super::*;

    #[test]
    fn contents_are_counted_per_data_path_with_their_first_and_last_files() {
        let mut files = planned(&[
            ("a", 0, 7),
            ("b", 1, 3),
            ("c", 0, 7),
            ("d", 1, 7),
            ("e", 0, 9),
            ("f", 0, 7),
            ("g", 1, 7),
        ]);
        files[3].target = Target::Existing;
        files[4].target = Target::InPlace;
        // Two contents that share their first 8 bytes are still told apart.
        files[6].hash.0[31] = 0;
        files[3].staged = true;
        let objects = Objects::of(&files);
        let plans: Vec<ObjectPlan> = objects.ids().map(|id| objects.plan(&files, id)).collect();
        let summary: Vec<_> = plans
            .iter()
            .map(|plan| {
                let needs: Vec<_> = plan
                    .needs
                    .iter()
                    .map(|need| (need.data_path, need.files, need.last_file, need.staged))
                    .collect();
                (plan.hash.0[0], plan.hash.0[31], plan.first_file, needs)
            })
            .collect();
        assert_eq!(
            summary,
            [
                (7, 7, 0, vec![(0, 3, 5, false), (1, 1, 3, true)]),
                (3, 3, 1, vec![(1, 1, 1, false)]),
                (7, 0, 6, vec![(1, 1, 6, false)]),
            ],
            "in the order of their first files; the content in place needs nothing"
        );
        let seven = objects.ids().next().expect("a content");
        assert_eq!(objects.files_of(&files, seven), [0, 2, 3, 5]);
    }
}
