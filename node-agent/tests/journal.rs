//! The agent's journal against real SQLite files.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use coffer_agent::journal::{FileIdentity, HashRecord, JOURNAL_FILE, Journal, JournalError};
use coffer_format::{ContentHash, PackSlice};

fn hash(byte: u8) -> ContentHash {
    ContentHash([byte; 32])
}

const IDENTITY: FileIdentity = FileIdentity {
    inode: 42,
    size: 1000,
    mtime_ns: 1_700_000_000_123_456_789,
};

#[tokio::test]
async fn hashes_round_trip_and_miss_when_the_file_changed() {
    let state = tempfile::tempdir().expect("temp dir");
    let journal = Journal::open(state.path()).await.expect("open");
    assert_eq!(journal.path(), state.path().join(JOURNAL_FILE));
    let path = Path::new("/data/ks1/t1/a.db");
    let FileIdentity {
        inode,
        size,
        mtime_ns,
    } = IDENTITY;

    assert_eq!(
        journal
            .lookup_hash(path, inode, size, mtime_ns)
            .await
            .expect("lookup"),
        None
    );
    journal
        .record_hash(path, inode, size, mtime_ns, hash(1))
        .await
        .expect("record");
    assert_eq!(
        journal
            .lookup_hash(path, inode, size, mtime_ns)
            .await
            .expect("lookup"),
        Some(hash(1))
    );
    // Any change of identity misses.
    for (inode, size, mtime_ns) in [
        (inode, size, mtime_ns + 1),
        (inode + 1, size, mtime_ns),
        (inode, size + 1, mtime_ns),
    ] {
        assert_eq!(
            journal
                .lookup_hash(path, inode, size, mtime_ns)
                .await
                .expect("lookup"),
            None
        );
    }
    assert_eq!(
        journal
            .lookup_hash(Path::new("/data/other"), inode, size, mtime_ns)
            .await
            .expect("lookup"),
        None
    );

    // One row per path: a new version replaces the old one.
    journal
        .record_hash(path, inode, size, mtime_ns + 5, hash(2))
        .await
        .expect("record new version");
    assert_eq!(
        journal
            .lookup_hash(path, inode, size, mtime_ns)
            .await
            .expect("lookup"),
        None
    );
    assert_eq!(
        journal
            .lookup_hash(path, inode, size, mtime_ns + 5)
            .await
            .expect("lookup"),
        Some(hash(2))
    );

    // It is all on disk.
    drop(journal);
    let reopened = Journal::open(state.path()).await.expect("reopen");
    assert_eq!(
        reopened
            .lookup_hash(path, inode, size, mtime_ns + 5)
            .await
            .expect("lookup"),
        Some(hash(2))
    );
}

#[tokio::test]
async fn batches_record_and_look_up_thousands_of_files() {
    let state = tempfile::tempdir().expect("temp dir");
    let journal = Journal::open(state.path()).await.expect("open");
    let records: Vec<HashRecord> = (0..5_000u64)
        .map(|index| HashRecord {
            live_path: PathBuf::from(format!("/data/file-{index}")),
            identity: FileIdentity {
                inode: index,
                // Identities use all 64 bits.
                size: u64::MAX - index,
                mtime_ns: -(index as i64),
            },
            hash: hash((index % 251) as u8),
        })
        .collect();
    journal
        .record_hashes(records.clone())
        .await
        .expect("record batch");
    journal
        .record_hashes(Vec::new())
        .await
        .expect("empty batch");
    let mut asked: Vec<(PathBuf, FileIdentity)> = records
        .iter()
        .map(|record| (record.live_path.clone(), record.identity))
        .collect();
    asked.push((PathBuf::from("/data/unknown"), IDENTITY));
    // Objects of the first ten hashes are known in one location (and one in another).
    journal
        .record_objects("loc-a", (0..10).map(hash).collect())
        .await
        .expect("record objects");
    journal
        .record_objects("loc-b", vec![hash(200)])
        .await
        .expect("record objects");
    let found = journal
        .lookup_hashes("loc-a", asked)
        .await
        .expect("lookup batch");
    assert_eq!(found.len(), 5_001);
    for (record, found) in records.iter().zip(&found) {
        let found = found.expect("remembered");
        assert_eq!(found.hash, record.hash);
        assert_eq!(found.object_known, record.hash.0[0] < 10, "{found:?}");
    }
    assert_eq!(found[5_000], None);
}

#[tokio::test]
async fn files_gone_from_a_snapshot_are_forgotten_and_the_others_kept() {
    let state = tempfile::tempdir().expect("temp dir");
    let journal = Journal::open(state.path()).await.expect("open");
    let path = |index: u64| PathBuf::from(format!("/data/ks/t/sstable-{index}"));
    let records: Vec<HashRecord> = (0..1_000u64)
        .map(|index| HashRecord {
            live_path: path(index),
            identity: IDENTITY,
            hash: hash((index % 251) as u8),
        })
        .collect();
    journal.record_hashes(records).await.expect("record");
    journal
        .record_objects("loc-a", vec![hash(3)])
        .await
        .expect("record objects");
    // Compaction replaced all but every tenth file; one present file was never hashed.
    let present: Vec<PathBuf> = (0..1_000u64)
        .filter(|index| index % 10 == 0)
        .map(path)
        .chain([PathBuf::from("/data/ks/t/new")])
        .collect();
    let forgotten = journal
        .forget_files_except(present.clone())
        .await
        .expect("forget");
    assert_eq!(forgotten, 900);
    let found = journal
        .lookup_hashes(
            "loc-a",
            (0..1_000u64).map(|index| (path(index), IDENTITY)).collect(),
        )
        .await
        .expect("lookup");
    for (index, found) in found.iter().enumerate() {
        assert_eq!(found.is_some(), index % 10 == 0, "file {index}");
    }
    // Objects are the location's, not the files': they stay known.
    assert!(
        journal
            .object_known("loc-a", &hash(3))
            .await
            .expect("known")
    );
    // Asked again with the same set, nothing more goes.
    assert_eq!(
        journal.forget_files_except(present).await.expect("forget"),
        0
    );
}

#[tokio::test]
async fn paths_need_not_be_utf8() {
    let state = tempfile::tempdir().expect("temp dir");
    let journal = Journal::open(state.path()).await.expect("open");
    let path = Path::new(OsStr::from_bytes(b"/data/caf\xe9"));
    let FileIdentity {
        inode,
        size,
        mtime_ns,
    } = IDENTITY;
    journal
        .record_hash(path, inode, size, mtime_ns, hash(9))
        .await
        .expect("record");
    assert_eq!(
        journal
            .lookup_hash(path, inode, size, mtime_ns)
            .await
            .expect("lookup"),
        Some(hash(9))
    );
}

#[tokio::test]
async fn objects_are_known_per_location_until_forgotten() {
    let state = tempfile::tempdir().expect("temp dir");
    let journal = Journal::open(state.path()).await.expect("open");
    let clone = journal.clone();
    assert!(
        !journal
            .object_known("loc-a", &hash(1))
            .await
            .expect("known")
    );
    journal
        .record_object("loc-a", hash(1))
        .await
        .expect("record");
    clone
        .record_objects("loc-a", vec![hash(2), hash(3), hash(1)])
        .await
        .expect("record batch");
    clone
        .record_objects("loc-b", vec![hash(1)])
        .await
        .expect("record other location");
    assert!(
        journal
            .object_known("loc-a", &hash(1))
            .await
            .expect("known")
    );
    assert_eq!(
        journal
            .objects_known("loc-a", vec![hash(3), hash(4), hash(2)])
            .await
            .expect("known batch"),
        vec![true, false, true]
    );
    assert!(
        !journal
            .object_known("loc-c", &hash(1))
            .await
            .expect("known")
    );

    assert_eq!(
        journal
            .forget_objects("loc-a", vec![hash(3), hash(7)])
            .await
            .expect("forget objects"),
        1
    );
    assert!(
        !journal
            .object_known("loc-a", &hash(3))
            .await
            .expect("known")
    );

    assert_eq!(journal.forget_location("loc-a").await.expect("forget"), 2);
    assert!(
        !journal
            .object_known("loc-a", &hash(1))
            .await
            .expect("known")
    );
    assert!(
        !journal
            .object_known("loc-a", &hash(2))
            .await
            .expect("known")
    );
    assert!(
        journal
            .object_known("loc-b", &hash(1))
            .await
            .expect("known")
    );
    assert_eq!(
        journal
            .forget_location("loc-a")
            .await
            .expect("forget again"),
        0
    );
}

#[tokio::test]
async fn packed_contents_are_placed_per_location_and_forgotten_with_their_pack() {
    let state = tempfile::tempdir().expect("temp dir");
    let journal = Journal::open(state.path()).await.expect("open");
    let pack = hash(90);
    let slice = |offset| PackSlice { pack, offset };
    journal
        .record_hashes(vec![
            HashRecord {
                live_path: "/data/packed".into(),
                identity: IDENTITY,
                hash: hash(1),
            },
            HashRecord {
                live_path: "/data/own-object".into(),
                identity: IDENTITY,
                hash: hash(2),
            },
        ])
        .await
        .expect("record hashes");
    journal
        .record_objects("loc-a", vec![pack, hash(2)])
        .await
        .expect("record objects");
    journal
        .record_packed("loc-a", vec![(hash(1), slice(0)), (hash(2), slice(4096))])
        .await
        .expect("record packed");
    let files = vec![
        (PathBuf::from("/data/packed"), IDENTITY),
        (PathBuf::from("/data/own-object"), IDENTITY),
    ];
    let found = journal
        .lookup_hashes("loc-a", files.clone())
        .await
        .expect("look up");
    let packed = found[0].expect("remembered");
    assert!(packed.object_known);
    assert_eq!(packed.packed, Some(slice(0)));
    let own = found[1].expect("remembered");
    assert!(own.object_known);
    assert_eq!(
        own.packed, None,
        "an object of its own is read rather than a slice"
    );
    assert_eq!(
        journal
            .packed_slices("loc-a", vec![hash(1), hash(2), hash(3)])
            .await
            .expect("slices"),
        vec![Some(slice(0)), None, None]
    );
    // Another location knows nothing of the pack.
    let elsewhere = journal
        .lookup_hashes("loc-b", files.clone())
        .await
        .expect("look up");
    assert!(!elsewhere[0].expect("remembered").object_known);
    // A walk learns packed contents as known.
    let known = journal.known_objects_blocking("loc-a").expect("known");
    assert!(known.contains(&hash(1)) && known.contains(&pack));

    // The pack forgotten (a purge deleted it, say): its contents go with it.
    journal
        .forget_objects("loc-a", vec![pack])
        .await
        .expect("forget the pack");
    let found = journal
        .lookup_hashes("loc-a", files)
        .await
        .expect("look up");
    let packed = found[0].expect("remembered");
    assert!(!packed.object_known);
    assert_eq!(packed.packed, None);
    assert!(
        !journal
            .known_objects_blocking("loc-a")
            .expect("known")
            .contains(&hash(1))
    );
    journal
        .record_packed("loc-a", vec![(hash(1), slice(0))])
        .await
        .expect("record again");
    journal.forget_location("loc-a").await.expect("forget");
    assert_eq!(
        journal
            .packed_slices("loc-a", vec![hash(1)])
            .await
            .expect("slices"),
        vec![None]
    );
}

#[tokio::test]
async fn a_journal_from_a_newer_agent_is_refused() {
    let state = tempfile::tempdir().expect("temp dir");
    let path = state.path().join(JOURNAL_FILE);
    {
        let connection = rusqlite::Connection::open(&path).expect("open");
        connection
            .execute_batch("PRAGMA user_version = 99;")
            .expect("set version");
    }
    let error = Journal::open_file(path).await.expect_err("too new");
    assert!(
        matches!(error, JournalError::TooNew { found: 99, .. }),
        "{error}"
    );
}

#[tokio::test]
async fn the_journal_uses_wal() {
    let state = tempfile::tempdir().expect("temp dir");
    let nested = state.path().join("not/yet/there");
    let journal = Journal::open(&nested).await.expect("open creates folders");
    journal.record_object("loc", hash(1)).await.expect("record");
    let connection = rusqlite::Connection::open(journal.path()).expect("open");
    let mode: String = connection
        .query_row("PRAGMA journal_mode", [], |row| row.get(0))
        .expect("journal mode");
    assert_eq!(mode, "wal");
}

#[tokio::test]
async fn a_walk_reads_file_hashes_and_a_locations_objects_from_blocking_threads() {
    let state = tempfile::tempdir().expect("temp dir");
    let journal = Journal::open(state.path()).await.expect("open");
    let a = PathBuf::from("/data/a.db");
    let b = PathBuf::from("/data/b.db");
    journal
        .record_hashes(vec![
            HashRecord {
                live_path: a.clone(),
                identity: IDENTITY,
                hash: hash(1),
            },
            HashRecord {
                live_path: b.clone(),
                identity: IDENTITY,
                hash: hash(2),
            },
        ])
        .await
        .expect("record hashes");
    // Out of order on purpose: the set read back is searchable whatever the order written.
    journal
        .record_objects("loc-1", vec![hash(9), hash(2), hash(5)])
        .await
        .expect("record objects");
    journal
        .record_objects("loc-2", vec![hash(1)])
        .await
        .expect("record objects");

    let reader = journal.clone();
    let (hashes, known, other, none) = tokio::task::spawn_blocking(move || {
        let changed = FileIdentity {
            mtime_ns: IDENTITY.mtime_ns + 1,
            ..IDENTITY
        };
        let hashes = reader
            .file_hashes_blocking(&[
                (a.clone(), IDENTITY),
                (b.clone(), changed),
                (PathBuf::from("/data/never.db"), IDENTITY),
                (b, IDENTITY),
            ])
            .expect("file hashes");
        let known = reader.known_objects_blocking("loc-1").expect("loc-1");
        let other = reader.known_objects_blocking("loc-2").expect("loc-2");
        let none = reader.known_objects_blocking("loc-3").expect("loc-3");
        (hashes, known, other, none)
    })
    .await
    .expect("blocking task");
    // Only an exact identity answers; the order is the order asked.
    assert_eq!(hashes, vec![Some(hash(1)), None, None, Some(hash(2))]);
    assert_eq!(known.len(), 3);
    for (byte, expected) in [(2, true), (5, true), (9, true), (1, false), (3, false)] {
        assert_eq!(
            known.contains(&hash(byte)),
            expected,
            "hash {byte} in loc-1"
        );
    }
    assert!(other.contains(&hash(1)) && !other.contains(&hash(2)));
    assert!(none.is_empty());
}

#[tokio::test]
async fn a_folder_of_many_files_is_answered_from_one_range_of_rows() {
    let state = tempfile::tempdir().expect("temp dir");
    let journal = Journal::open(state.path()).await.expect("open");
    let folder = PathBuf::from("/data/ks/t1");
    let name = |index: usize| format!("md-{index}-Data.db");
    let mut records = Vec::new();
    for index in 0..40 {
        let identity = FileIdentity {
            inode: index as u64,
            ..IDENTITY
        };
        records.push(HashRecord {
            live_path: folder.join(name(index)),
            identity,
            hash: hash(index as u8),
        });
        // The same names in a subfolder and in a sibling whose name extends the folder's: in
        // (or next to) the range, never answers for the folder's own files.
        for other in ["/data/ks/t1/snapshots", "/data/ks/t10", "/data/ks/t1.old"] {
            records.push(HashRecord {
                live_path: Path::new(other).join(name(index)),
                identity,
                hash: hash(200),
            });
        }
    }
    journal.record_hashes(records).await.expect("record");

    // 30 of the folder's files as they are, one changed, one never recorded.
    let mut asked: Vec<(PathBuf, FileIdentity)> = (0..30)
        .map(|index| {
            (
                folder.join(name(index)),
                FileIdentity {
                    inode: index as u64,
                    ..IDENTITY
                },
            )
        })
        .collect();
    asked.push((
        folder.join(name(31)),
        FileIdentity {
            inode: 31,
            size: IDENTITY.size + 1,
            ..IDENTITY
        },
    ));
    asked.push((folder.join("new.db"), IDENTITY));
    let reader = journal.clone();
    let (by_range, by_file) = tokio::task::spawn_blocking(move || {
        let by_range = reader
            .folder_file_hashes_blocking(&folder, &asked)
            .expect("range");
        let by_file = reader.file_hashes_blocking(&asked).expect("per file");
        (by_range, by_file)
    })
    .await
    .expect("blocking task");
    let mut expected: Vec<Option<ContentHash>> = (0..30).map(|index| Some(hash(index))).collect();
    expected.extend([None, None]);
    assert_eq!(by_range, expected);
    assert_eq!(by_file, expected, "both ways answer alike");
}
