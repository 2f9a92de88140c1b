//! Snapshot providers against real folders, a real `sh` and real SQLite files.
//!
//! Set `COFFER_TEST_LOG=1` (with `RUST_LOG` as wanted) to see the agent's logs.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

mod common;

use common::snapshot_files;

use coffer_agent::config::{AgentConfig, SnapshotConfig};
use coffer_agent::reserved::SNAPSHOTS_FOLDER;
use coffer_agent::snapshot::{ShellStep, SnapshotError, Snapshotter};
use tempfile::TempDir;

fn init_logs() {
    if std::env::var_os("COFFER_TEST_LOG").is_some() {
        coffer_process::init_tracing();
    }
}

/// A node: data paths and a state directory in one temporary folder.
struct Node {
    root: TempDir,
    data_paths: Vec<PathBuf>,
}

impl Node {
    fn new(data_path_count: usize) -> Self {
        init_logs();
        let root = tempfile::tempdir().expect("temp dir");
        let data_paths: Vec<PathBuf> = (0..data_path_count)
            .map(|index| root.path().join(format!("data{index}")))
            .collect();
        for data_path in &data_paths {
            fs::create_dir_all(data_path).expect("create data path");
        }
        Self { root, data_paths }
    }

    fn data(&self, index: usize) -> &Path {
        &self.data_paths[index]
    }

    fn state_dir(&self) -> PathBuf {
        self.root.path().join("state")
    }

    /// A file outside the data paths, for hooks to write to.
    fn side_file(&self, name: &str) -> PathBuf {
        self.root.path().join(name)
    }

    fn snapshotter(&self, snapshot: SnapshotConfig) -> Snapshotter {
        Snapshotter::new(&common::agent_config(
            self.data_paths.clone(),
            self.state_dir(),
            snapshot,
        ))
    }
}

fn write(path: &Path, content: &[u8]) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).expect("create parent");
    }
    fs::write(path, content).expect("write file");
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|error| panic!("read {}: {error}", path.display()))
}

fn dir_provider(pre_hook: Option<String>, post_hook: Option<String>) -> SnapshotConfig {
    SnapshotConfig::Dir {
        pre_hook,
        post_hook,
    }
}

fn shell_quote(path: &Path) -> String {
    format!("'{}'", path.display())
}

#[tokio::test]
async fn dir_snapshot_links_every_regular_file_and_keeps_replaced_files() {
    let node = Node::new(2);
    write(&node.data(0).join("a.txt"), b"alpha");
    write(&node.data(0).join("empty"), b"");
    write(&node.data(0).join("nested/deep/b.bin"), b"bravo");
    write(&node.data(1).join("c/c.log"), b"charlie");
    // A restore's staging folder at the root is the agent's own; deeper, the name is data.
    write(
        &node.data(0).join(".coffer-restore/b1/cafe.part"),
        b"staged",
    );
    write(&node.data(1).join("c/.coffer-restore"), b"data");
    std::os::unix::fs::symlink(node.data(0).join("a.txt"), node.data(0).join("link"))
        .expect("symlink");
    std::os::unix::fs::symlink(
        node.data(0).join("nested"),
        node.data(0).join("nested-link"),
    )
    .expect("symlink to a folder");
    let fifo = std::process::Command::new("mkfifo")
        .arg(node.data(1).join("pipe"))
        .status()
        .expect("run mkfifo");
    assert!(fifo.success());

    let snapshotter = node.snapshotter(dir_provider(None, None));
    let snapshot = snapshotter.create("t1").await.expect("create snapshot");
    assert_eq!(snapshot.tag, "t1");

    let folder0 = node.data(0).join(SNAPSHOTS_FOLDER).join("t1");
    let folder1 = node.data(1).join(SNAPSHOTS_FOLDER).join("t1");
    let listed: Vec<(usize, PathBuf, PathBuf)> = snapshot_files(&snapshot)
        .iter()
        .map(|file| {
            (
                file.data_path_index,
                file.live_path.clone(),
                file.snapshot_path.clone(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        vec![
            (0, node.data(0).join("a.txt"), folder0.join("a.txt")),
            (0, node.data(0).join("empty"), folder0.join("empty")),
            (
                0,
                node.data(0).join("nested/deep/b.bin"),
                folder0.join("nested/deep/b.bin")
            ),
            (
                1,
                node.data(1).join("c/.coffer-restore"),
                folder1.join("c/.coffer-restore")
            ),
            (1, node.data(1).join("c/c.log"), folder1.join("c/c.log")),
        ]
    );
    for file in snapshot_files(&snapshot).iter() {
        let live = fs::metadata(&file.live_path).expect("live metadata");
        assert_eq!(file.inode, live.ino(), "a hard link shares the inode");
        assert_eq!(file.size, live.len());
        assert_eq!(file.mode, live.mode() & 0o7777);
        assert_eq!(
            file.mtime_ns,
            live.mtime() * 1_000_000_000 + live.mtime_nsec()
        );
    }
    assert_eq!(snapshot_files(&snapshot)[1].size, 0);
    assert_eq!(snapshot.total_bytes(), 5 + 5 + 4 + 7);
    // The upload that follows gets the list the snapshot found, once; then it is read again.
    assert_eq!(snapshotter.load("t1").await.expect("load"), snapshot);
    assert_eq!(snapshotter.load("t1").await.expect("load again"), snapshot);
    let snapshots_folder = fs::metadata(node.data(0).join(SNAPSHOTS_FOLDER)).expect("metadata");
    assert_eq!(snapshots_folder.permissions().mode() & 0o777, 0o700);

    // A restarted agent finds the same snapshot.
    let restarted = node.snapshotter(dir_provider(None, None));
    assert_eq!(restarted.list_tags(), vec!["t1".to_string()]);
    assert_eq!(restarted.load("t1").await.expect("load"), snapshot);

    // The live walk does not see the snapshot, nor links and fifos.
    let live: Vec<PathBuf> = snapshotter
        .walk_live()
        .await
        .expect("walk live")
        .into_iter()
        .map(|file| {
            assert_eq!(file.live_path, file.snapshot_path);
            file.live_path
        })
        .collect();
    assert_eq!(
        live,
        snapshot_files(&snapshot)
            .iter()
            .map(|file| file.live_path.clone())
            .collect::<Vec<_>>()
    );

    // Replacing a file, as databases do (write a new file, rename it over), leaves the
    // snapshot's content as it was.
    write(&node.data(0).join("a.txt.tmp"), b"replaced");
    fs::rename(node.data(0).join("a.txt.tmp"), node.data(0).join("a.txt")).expect("rename over");
    assert_eq!(read(&folder0.join("a.txt")), "alpha");
    assert_eq!(read(&node.data(0).join("a.txt")), "replaced");
    // A write INTO a file shows through the shared inode: the hooks' contract is what keeps a
    // snapshot consistent, not the links.
    fs::OpenOptions::new()
        .append(true)
        .open(node.data(0).join("nested/deep/b.bin"))
        .and_then(|mut file| std::io::Write::write_all(&mut file, b"!"))
        .expect("append in place");
    assert_eq!(read(&folder0.join("nested/deep/b.bin")), "bravo!");

    let again = snapshotter.create("t1").await.expect_err("tag taken");
    assert!(
        matches!(again, SnapshotError::AlreadyExists { ref tag } if tag == "t1"),
        "{again}"
    );

    assert!(snapshotter.delete("t1").await.expect("delete"));
    // Detached at once: no longer a snapshot, its space freed in the background.
    assert!(snapshotter.list_tags().is_empty());
    assert!(!folder0.exists());
    snapshotter.reclaimed().await;
    assert!(!node.data(0).join(SNAPSHOTS_FOLDER).exists());
    assert!(!node.data(1).join(SNAPSHOTS_FOLDER).exists());
    assert_eq!(read(&node.data(0).join("a.txt")), "replaced");
    assert_eq!(read(&node.data(1).join("c/c.log")), "charlie");
    assert!(!snapshotter.delete("t1").await.expect("delete again"));
    assert!(snapshotter.list_tags().is_empty());
    let gone = snapshotter.load("t1").await.expect_err("deleted");
    assert!(matches!(gone, SnapshotError::NotFound { .. }), "{gone}");
}

#[tokio::test]
async fn deleted_snapshots_are_freed_in_the_background_and_after_a_restart() {
    let node = Node::new(1);
    for index in 0..200 {
        write(&node.data(0).join(format!("t{}/f{index}", index % 7)), b"x");
    }
    let snapshotter = node.snapshotter(dir_provider(None, None));
    snapshotter.create("again").await.expect("snapshot");
    assert!(snapshotter.delete("again").await.expect("delete"));
    // The tag is free at once, even while the old folder is still being freed.
    let taken = snapshotter.create("again").await.expect("same tag again");
    assert_eq!(taken.files.len(), 200);
    assert_eq!(snapshotter.list_tags(), vec!["again".to_string()]);
    assert!(snapshotter.delete("again").await.expect("delete again"));
    snapshotter.reclaimed().await;
    assert!(!node.data(0).join(SNAPSHOTS_FOLDER).exists());
    assert_eq!(
        fs::read_dir(node.data(0).join("t0")).expect("live").count(),
        29
    );

    // A folder an agent left detached (it stopped while freeing) is freed by the next one; the
    // snapshots beside it are not touched.
    let snapshots = node.data(0).join(SNAPSHOTS_FOLDER);
    write(&snapshots.join(".removing-old-0123/a/b"), b"left");
    write(&snapshots.join("kept/c"), b"kept");
    let restarted = node.snapshotter(dir_provider(None, None));
    assert_eq!(restarted.list_tags(), vec!["kept".to_string()]);
    restarted.reclaim();
    restarted.reclaimed().await;
    assert!(!snapshots.join(".removing-old-0123").exists());
    assert_eq!(read(&snapshots.join("kept/c")), "kept");

    // Stopping interrupts the freeing between two folders; the next start finishes it.
    restarted.stop_reclaiming();
    assert!(restarted.delete("kept").await.expect("delete kept"));
    restarted.reclaimed().await;
    let detached: Vec<_> = fs::read_dir(&snapshots)
        .expect("snapshots folder")
        .map(|entry| entry.expect("entry").file_name())
        .collect();
    assert_eq!(detached.len(), 1, "{detached:?}");
    let next = node.snapshotter(dir_provider(None, None));
    next.reclaim();
    next.reclaimed().await;
    assert!(!snapshots.exists());
}

#[tokio::test]
async fn invalid_tags_are_refused_before_touching_anything() {
    let node = Node::new(1);
    let snapshotter = node.snapshotter(dir_provider(None, None));
    for tag in ["", "../escape", "a/b", "x y", "$(reboot)"] {
        assert!(matches!(
            snapshotter.create(tag).await,
            Err(SnapshotError::InvalidTag { .. })
        ));
        assert!(matches!(
            snapshotter.delete(tag).await,
            Err(SnapshotError::InvalidTag { .. })
        ));
        assert!(matches!(
            snapshotter.load(tag).await,
            Err(SnapshotError::InvalidTag { .. })
        ));
    }
    assert!(!node.data(0).join(SNAPSHOTS_FOLDER).exists());
}

#[tokio::test]
async fn hooks_run_before_and_after_linking() {
    let node = Node::new(1);
    write(&node.data(0).join("x/one"), b"1");
    write(&node.data(0).join("two"), b"2");
    let log = node.side_file("hooks.log");
    let folder = node.data(0).join(SNAPSHOTS_FOLDER);
    let count = format!(
        "$(find {}/\"$COFFER_SNAPSHOT_TAG\" -type f | wc -l)",
        shell_quote(&folder)
    );
    let snapshotter = node.snapshotter(dir_provider(
        Some(format!(
            "echo \"pre $COFFER_SNAPSHOT_TAG {count}\" >> {}",
            shell_quote(&log)
        )),
        Some(format!(
            "echo \"post $COFFER_SNAPSHOT_TAG {count}\" >> {}",
            shell_quote(&log)
        )),
    ));
    let snapshot = snapshotter.create("h-1").await.expect("create");
    assert_eq!(snapshot.files.len(), 2);
    let lines: Vec<String> = read(&log)
        .lines()
        .map(|line| line.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(lines, vec!["pre h-1 0", "post h-1 2"]);
}

#[tokio::test]
async fn a_failing_pre_hook_fails_with_its_stderr_and_leaves_no_snapshot() {
    let node = Node::new(2);
    write(&node.data(0).join("a"), b"a");
    let log = node.side_file("post.log");
    let snapshotter = node.snapshotter(dir_provider(
        Some("echo starting; echo 'nodetool: cannot flush' >&2; exit 7".into()),
        Some(format!("echo post >> {}", shell_quote(&log))),
    ));
    let error = snapshotter.create("t2").await.expect_err("pre-hook fails");
    let SnapshotError::StepFailed {
        step,
        status,
        stderr,
    } = &error
    else {
        panic!("unexpected error {error}");
    };
    assert_eq!(*step, ShellStep::PreHook);
    assert_eq!(status.code(), Some(7));
    assert_eq!(stderr, "nodetool: cannot flush");
    assert_eq!(
        error.to_string(),
        "pre-hook failed (exit status: 7): nodetool: cannot flush"
    );
    assert!(!log.exists(), "no post-hook without a successful pre-hook");
    for data_path in &node.data_paths {
        assert!(!data_path.join(SNAPSHOTS_FOLDER).exists());
    }
    assert!(snapshotter.list_tags().is_empty());
}

#[tokio::test]
async fn the_post_hook_runs_even_when_linking_fails() {
    let node = Node::new(1);
    write(&node.data(0).join("a.txt"), b"a");
    write(&node.data(0).join("b.txt"), b"b");
    let log = node.side_file("post.log");
    // The pre-hook puts a file where a link must go, so linking fails.
    let blocker = node
        .data(0)
        .join(SNAPSHOTS_FOLDER)
        .join("$COFFER_SNAPSHOT_TAG")
        .join("b.txt");
    let snapshotter = node.snapshotter(dir_provider(
        Some(format!("touch \"{}\"", blocker.display())),
        Some(format!("echo post >> {}", shell_quote(&log))),
    ));
    let error = snapshotter.create("t3").await.expect_err("linking fails");
    assert!(
        matches!(
            &error,
            SnapshotError::File { action: "hard-link", path, .. } if path.ends_with("b.txt")
        ),
        "{error}"
    );
    assert_eq!(read(&log), "post\n");
    assert!(!node.data(0).join(SNAPSHOTS_FOLDER).exists());
    assert_eq!(read(&node.data(0).join("a.txt")), "a");
}

#[tokio::test]
async fn a_failing_post_hook_fails_the_snapshot() {
    let node = Node::new(1);
    write(&node.data(0).join("a"), b"a");
    let snapshotter = node.snapshotter(dir_provider(
        None,
        Some("echo 'resume failed' >&2; false".into()),
    ));
    let error = snapshotter.create("t4").await.expect_err("post-hook fails");
    assert!(
        matches!(
            &error,
            SnapshotError::StepFailed { step: ShellStep::PostHook, stderr, .. } if stderr == "resume failed"
        ),
        "{error}"
    );
    assert!(!node.data(0).join(SNAPSHOTS_FOLDER).exists());
}

/// Writes a fake `nodetool`: `snapshot DATA TAG` links every table's `*.db` into
/// `snapshots/TAG/` (and adds a manifest, as Cassandra does); `clearsnapshot DATA TAG` removes
/// them and logs the call; `broken` fails.
fn fake_nodetool(node: &Node) -> PathBuf {
    let script = node.side_file("nodetool.sh");
    let log = node.side_file("nodetool.log");
    write(
        &script,
        format!(
            r#"#!/bin/sh
set -e
action=$1 data=$2 tag=$3
echo "$action $tag $COFFER_SNAPSHOT_TAG" >> '{log}'
case $action in
snapshot)
    for table in "$data"/*/*/; do
        mkdir -p "$table/snapshots/$tag"
        for file in "$table"*.db; do ln "$file" "$table/snapshots/$tag/"; done
        echo '{{}}' > "$table/snapshots/$tag/manifest.json"
    done ;;
clearsnapshot)
    rm -rf "$data"/*/*/snapshots/"$tag" ;;
broken)
    echo 'error: JMX connection refused' >&2
    exit 2 ;;
esac
"#,
            log = log.display()
        )
        .as_bytes(),
    );
    script
}

fn command_provider(node: &Node, action: &str, files: &str) -> SnapshotConfig {
    let script = fake_nodetool(node);
    SnapshotConfig::Command {
        command: format!(
            "sh {} {action} {} {{tag}}",
            shell_quote(&script),
            shell_quote(node.data(0))
        ),
        cleanup_command: Some(format!(
            "sh {} clearsnapshot {} {{tag}}",
            shell_quote(&script),
            shell_quote(node.data(0))
        )),
        files: files.into(),
    }
}

#[tokio::test]
async fn command_snapshot_maps_files_to_their_live_paths_and_cleans_up() {
    let node = Node::new(1);
    let data = node.data(0).to_path_buf();
    write(&data.join("ks1/t1/a.db"), b"table one");
    write(&data.join("ks1/t2/b.db"), b"table two");
    write(&data.join("ks1/t2/commitlog"), b"not a db");
    // An older snapshot must not be collected.
    write(&data.join("ks1/t1/snapshots/old/a.db"), b"old");
    let files = "*/*/snapshots/{tag}/*.db";
    let snapshotter = node.snapshotter(command_provider(&node, "snapshot", files));

    let snapshot = snapshotter.create("cs-1").await.expect("create");
    let mapped: Vec<(PathBuf, PathBuf)> = snapshot_files(&snapshot)
        .iter()
        .map(|file| (file.live_path.clone(), file.snapshot_path.clone()))
        .collect();
    assert_eq!(
        mapped,
        vec![
            (
                data.join("ks1/t1/a.db"),
                data.join("ks1/t1/snapshots/cs-1/a.db")
            ),
            (
                data.join("ks1/t2/b.db"),
                data.join("ks1/t2/snapshots/cs-1/b.db")
            ),
        ]
    );
    let live_inode = fs::metadata(data.join("ks1/t1/a.db"))
        .expect("metadata")
        .ino();
    assert_eq!(snapshot_files(&snapshot)[0].inode, live_inode);
    assert_eq!(snapshot_files(&snapshot)[0].size, 9);
    assert_eq!(
        read(&node.side_file("nodetool.log")),
        "snapshot cs-1 cs-1\n"
    );
    assert!(node.state_dir().join("snapshots/cs-1.json").is_file());

    // The record survives a restart.
    let restarted = node.snapshotter(command_provider(&node, "snapshot", files));
    assert_eq!(restarted.list_tags(), vec!["cs-1".to_string()]);
    assert_eq!(restarted.load("cs-1").await.expect("load"), snapshot);
    assert!(matches!(
        restarted.create("cs-1").await,
        Err(SnapshotError::AlreadyExists { .. })
    ));

    // A dry run sees the live files the pattern stands for, not the snapshots.
    let live: Vec<PathBuf> = snapshotter
        .walk_live()
        .await
        .expect("walk live")
        .into_iter()
        .map(|file| file.live_path)
        .collect();
    assert_eq!(
        live,
        vec![data.join("ks1/t1/a.db"), data.join("ks1/t2/b.db")]
    );

    assert!(restarted.delete("cs-1").await.expect("delete"));
    assert_eq!(
        read(&node.side_file("nodetool.log")),
        "snapshot cs-1 cs-1\nclearsnapshot cs-1 cs-1\n"
    );
    assert!(!data.join("ks1/t1/snapshots/cs-1").exists());
    assert!(data.join("ks1/t1/snapshots/old/a.db").exists());
    assert!(!node.state_dir().join("snapshots/cs-1.json").exists());
    assert!(!restarted.delete("cs-1").await.expect("delete again"));
    assert_eq!(
        read(&node.side_file("nodetool.log")).lines().count(),
        2,
        "nothing left to clean: the cleanup command does not run again"
    );
    assert!(matches!(
        restarted.load("cs-1").await,
        Err(SnapshotError::NotFound { .. })
    ));
    assert_eq!(read(&data.join("ks1/t1/a.db")), "table one");
}

#[tokio::test]
async fn a_failing_snapshot_command_is_cleaned_up() {
    let node = Node::new(1);
    write(&node.data(0).join("ks1/t1/a.db"), b"a");
    let snapshotter = node.snapshotter(command_provider(&node, "broken", "*/*/snapshots/{tag}/*"));
    let error = snapshotter.create("cs-2").await.expect_err("command fails");
    assert!(
        matches!(
            &error,
            SnapshotError::StepFailed { step: ShellStep::SnapshotCommand, status, stderr }
                if status.code() == Some(2) && stderr == "error: JMX connection refused"
        ),
        "{error}"
    );
    assert_eq!(
        read(&node.side_file("nodetool.log")),
        "broken cs-2 cs-2\nclearsnapshot cs-2 cs-2\n"
    );
    assert!(snapshotter.list_tags().is_empty());
    assert!(!node.state_dir().join("snapshots/cs-2.json").exists());
}

#[tokio::test]
async fn a_pattern_mapping_two_files_to_one_live_path_is_refused() {
    let node = Node::new(1);
    write(&node.data(0).join("ks1/t1/a.db"), b"a");
    // `**` also matches the live file itself, which the snapshot copy maps onto.
    let snapshotter = node.snapshotter(command_provider(&node, "snapshot", "ks1/**/*.db"));
    let error = snapshotter.create("cs-3").await.expect_err("ambiguous");
    assert!(
        matches!(&error, SnapshotError::DuplicateLivePath { live_path, .. } if live_path.ends_with("ks1/t1/a.db")),
        "{error}"
    );
    assert!(snapshotter.list_tags().is_empty());
    assert!(!node.data(0).join("ks1/t1/snapshots/cs-3").exists());
}

fn open_database(path: &Path) -> rusqlite::Connection {
    let connection = rusqlite::Connection::open(path).expect("open database");
    connection
        .busy_timeout(Duration::from_secs(30))
        .expect("busy timeout");
    connection
}

fn count_rows(connection: &rusqlite::Connection) -> i64 {
    connection
        .query_row("SELECT count(*) FROM items", [], |row| row.get(0))
        .expect("count rows")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_snapshot_is_consistent_while_another_connection_writes() {
    let node = Node::new(2);
    let database = node.data(1).join("app/main.db");
    fs::create_dir_all(database.parent().expect("parent")).expect("create folder");
    write(&node.data(1).join("app/other-file"), b"not snapshotted");
    {
        let connection = open_database(&database);
        connection
            .execute_batch(
                "PRAGMA journal_mode = WAL;
                 CREATE TABLE items (id INTEGER PRIMARY KEY, body TEXT NOT NULL);
                 BEGIN;
                 WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000)
                 INSERT INTO items (body) SELECT hex(randomblob(100)) FROM n;
                 COMMIT;",
            )
            .expect("fill database");
    }
    fs::set_permissions(&database, fs::Permissions::from_mode(0o640)).expect("chmod");

    // A writer keeps inserting, one transaction per row, for the whole snapshot.
    let stop = Arc::new(AtomicBool::new(false));
    let (started_sender, started) = std::sync::mpsc::channel();
    let writer = {
        let stop = Arc::clone(&stop);
        let database = database.clone();
        std::thread::spawn(move || {
            let connection = open_database(&database);
            let mut inserted = 0u64;
            while !stop.load(Ordering::Relaxed) {
                connection
                    .execute("INSERT INTO items (body) VALUES (hex(randomblob(100)))", [])
                    .expect("insert while the snapshot runs");
                inserted += 1;
                if inserted == 20 {
                    let _ = started_sender.send(());
                }
            }
            inserted
        })
    };
    started.recv().expect("writer started");
    let start_count = count_rows(&open_database(&database));

    let snapshotter = node.snapshotter(SnapshotConfig::Sqlite {
        databases: vec![database.clone()],
    });
    let snapshot = snapshotter.create("sq-1").await.expect("create");

    stop.store(true, Ordering::Relaxed);
    let inserted = tokio::task::spawn_blocking(move || writer.join().expect("writer"))
        .await
        .expect("join writer");
    let end_count = count_rows(&open_database(&database));
    assert!(inserted > 20);

    assert_eq!(snapshot.files.len(), 1, "only the configured database");
    let file = &snapshot_files(&snapshot)[0];
    assert_eq!(file.data_path_index, 1);
    assert_eq!(file.live_path, database);
    assert_eq!(
        file.snapshot_path,
        node.data(1).join(SNAPSHOTS_FOLDER).join("sq-1/app/main.db")
    );
    assert_eq!(file.mode, 0o640);
    assert_eq!(
        file.size,
        fs::metadata(&file.snapshot_path).expect("copy").len()
    );

    // The copy is one file (opening it with SQLite, below, may add -wal and -shm files).
    let leftovers: Vec<_> = fs::read_dir(node.data(1).join(SNAPSHOTS_FOLDER).join("sq-1/app"))
        .expect("read snapshot folder")
        .map(|entry| entry.expect("entry").file_name())
        .collect();
    assert_eq!(leftovers, vec![std::ffi::OsString::from("main.db")]);
    let copy = rusqlite::Connection::open_with_flags(
        &file.snapshot_path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open copy");
    let check: String = copy
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .expect("integrity check");
    assert_eq!(check, "ok");
    let copied = count_rows(&copy);
    assert!(
        (start_count..=end_count).contains(&copied),
        "copy has {copied} rows, live had {start_count} then {end_count}"
    );

    let restarted = node.snapshotter(SnapshotConfig::Sqlite {
        databases: vec![database.clone()],
    });
    assert_eq!(restarted.list_tags(), vec!["sq-1".to_string()]);
    assert_eq!(restarted.load("sq-1").await.expect("load"), snapshot);
    let live = restarted.walk_live().await.expect("walk live");
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].snapshot_path, database);

    assert!(restarted.delete("sq-1").await.expect("delete"));
    restarted.reclaimed().await;
    assert!(!node.data(1).join(SNAPSHOTS_FOLDER).exists());
    assert_eq!(count_rows(&open_database(&database)), end_count);
}

#[tokio::test]
async fn a_missing_sqlite_database_fails_and_leaves_nothing() {
    let node = Node::new(1);
    let present = node.data(0).join("present.db");
    open_database(&present)
        .execute_batch("CREATE TABLE items (id INTEGER PRIMARY KEY, body TEXT);")
        .expect("create");
    let missing = node.data(0).join("missing.db");
    let snapshotter = node.snapshotter(SnapshotConfig::Sqlite {
        databases: vec![present, missing.clone()],
    });
    let error = snapshotter
        .create("sq-2")
        .await
        .expect_err("missing database");
    assert!(
        matches!(&error, SnapshotError::File { path, .. } if *path == missing),
        "{error}"
    );
    assert!(!missing.exists(), "a missing database is not created");
    assert!(!node.data(0).join(SNAPSHOTS_FOLDER).exists());
}

/// What the journal identifies the current version of `path` by: inode, size, mtime in ns.
fn identity(path: &Path) -> (u64, u64, i64) {
    let metadata = fs::metadata(path).expect("stat");
    (
        metadata.ino(),
        metadata.len(),
        metadata.mtime() * 1_000_000_000 + metadata.mtime_nsec(),
    )
}

/// Remembers `path` in `journal` as hashed to `hash` in its current version.
async fn remember(journal: &coffer_agent::journal::Journal, path: &Path, hash: u8) {
    let (inode, size, mtime_ns) = identity(path);
    journal
        .record_hash(
            path,
            inode,
            size,
            mtime_ns,
            coffer_format::ContentHash([hash; 32]),
        )
        .await
        .expect("record hash");
}

#[tokio::test]
async fn an_incremental_dir_snapshot_links_only_what_the_journal_cannot_vouch_for() {
    use coffer_agent::journal::Journal;
    use coffer_agent::snapshot::UnchangedFiles;
    use coffer_format::ContentHash;

    let node = Node::new(2);
    let stored = node.data(0).join("ks/t1/stored.db");
    let elsewhere = node.data(0).join("ks/t1/elsewhere.db");
    let changed = node.data(0).join("ks/t2/changed.db");
    let new = node.data(1).join("new.db");
    let stored_too = node.data(1).join("deep/er/stored.log");
    for (path, content) in [
        (&stored, &b"stored"[..]),
        (&elsewhere, b"in another location only"),
        (&changed, b"before"),
        (&stored_too, b"stored as well"),
    ] {
        write(path, content);
    }
    let journal = Journal::open(&node.state_dir()).await.expect("journal");
    remember(&journal, &stored, 1).await;
    remember(&journal, &elsewhere, 2).await;
    remember(&journal, &changed, 3).await;
    remember(&journal, &stored_too, 4).await;
    journal
        .record_objects(
            "loc-a",
            vec![
                ContentHash([1; 32]),
                ContentHash([3; 32]),
                ContentHash([4; 32]),
            ],
        )
        .await
        .expect("record objects");
    journal
        .record_objects("loc-b", vec![ContentHash([2; 32])])
        .await
        .expect("record objects");
    // Written since it was hashed (the size differs), and a file the journal never saw.
    write(&changed, b"after!!");
    write(&new, b"new");

    let snapshotter = node.snapshotter(dir_provider(None, None));
    let unchanged = UnchangedFiles {
        journal: journal.clone(),
        location_id: "loc-a".into(),
    };
    let snapshot = snapshotter
        .create_incremental("inc-1", unchanged.clone())
        .await
        .expect("create");
    assert_eq!(snapshot.unlinked_for.as_deref(), Some("loc-a"));
    assert_eq!(snapshot.files.len(), 5);
    let listed = snapshot_files(&snapshot);
    let by_path = |path: &Path| {
        listed
            .iter()
            .find(|file| file.live_path == path)
            .unwrap_or_else(|| panic!("{} in the snapshot", path.display()))
    };
    for (path, hash) in [(&stored, 1), (&stored_too, 4)] {
        let file = by_path(path);
        assert_eq!(file.stored_hash, Some(ContentHash([hash; 32])));
        assert_eq!(file.snapshot_path, *path, "described, not linked");
        assert_eq!(file.inode, fs::metadata(path).expect("stat").ino());
        assert_eq!(fs::metadata(path).expect("stat").nlink(), 1, "never linked");
    }
    for path in [&elsewhere, &changed, &new] {
        let file = by_path(path);
        assert_eq!(file.stored_hash, None, "{}", path.display());
        assert_ne!(file.snapshot_path, *path);
        assert_eq!(
            fs::metadata(&file.snapshot_path).expect("linked").ino(),
            fs::metadata(path).expect("stat").ino()
        );
    }
    // Only the linked files are in the snapshot's folders.
    let mut linked = Vec::new();
    for data_path in &node.data_paths {
        let folder = data_path.join(SNAPSHOTS_FOLDER).join("inc-1");
        let mut stack = vec![folder];
        while let Some(folder) = stack.pop() {
            for entry in fs::read_dir(&folder).expect("read folder") {
                let entry = entry.expect("entry");
                if entry.file_type().expect("type").is_dir() {
                    stack.push(entry.path());
                } else {
                    linked.push(entry.file_name());
                }
            }
        }
    }
    linked.sort();
    assert_eq!(linked, ["changed.db", "elsewhere.db", "new.db"]);

    // A restarted agent loads the same snapshot, unlinked files included.
    let restarted = node.snapshotter(dir_provider(None, None));
    assert_eq!(restarted.list_tags(), vec!["inc-1".to_string()]);
    assert_eq!(restarted.load("inc-1").await.expect("load"), snapshot);

    // A snapshot an older agent took has no file list but a record of its unlinked files: it
    // loads from its links and that record, the same files.
    let list = node.state_dir().join("snapshots/inc-1.files");
    let kept = node.state_dir().join("inc-1.files.kept");
    fs::rename(&list, &kept).expect("move the list aside");
    let record = serde_json::json!({
        "location_id": "loc-a",
        "files": listed
            .iter()
            .filter(|file| file.stored_hash.is_some())
            .map(|file| {
                let data_path = &node.data_paths[file.data_path_index];
                serde_json::json!({
                    "data_path": data_path,
                    "live": file.live_path.strip_prefix(data_path).expect("below its data path"),
                    "size": file.size,
                    "mode": file.mode,
                    "mtime_ns": file.mtime_ns,
                    "inode": file.inode,
                    "hash": file.stored_hash.expect("unlinked").to_hex(),
                })
            })
            .collect::<Vec<_>>(),
    });
    let old_record = node.state_dir().join("snapshots/inc-1.unlinked.json");
    fs::write(&old_record, record.to_string()).expect("write the old record");
    let loaded = node
        .snapshotter(dir_provider(None, None))
        .load("inc-1")
        .await
        .expect("load an older agent's snapshot");
    assert_eq!(loaded.unlinked_for.as_deref(), Some("loc-a"));
    assert_eq!(snapshot_files(&loaded), listed);
    fs::remove_file(&old_record).expect("remove the old record");
    fs::rename(&kept, &list).expect("put the list back");

    // A snapshot for a full backup links everything, whatever the journal knows.
    let full = restarted.create("full-1").await.expect("create full");
    assert_eq!(full.unlinked_for, None);
    assert!(
        snapshot_files(&full)
            .iter()
            .all(|file| file.stored_hash.is_none())
    );
    assert_eq!(fs::metadata(&stored).expect("stat").nlink(), 2);

    // Deleting removes the record with the folders.
    assert!(restarted.delete("inc-1").await.expect("delete"));
    assert!(restarted.delete("full-1").await.expect("delete"));
    restarted.reclaimed().await;
    assert!(restarted.list_tags().is_empty());
    assert!(matches!(
        restarted.load("inc-1").await,
        Err(SnapshotError::NotFound { .. })
    ));
    let records: Vec<_> = fs::read_dir(node.state_dir().join("snapshots"))
        .map(|entries| {
            entries
                .map(|entry| entry.expect("entry").file_name())
                .collect()
        })
        .unwrap_or_default();
    assert!(records.is_empty(), "records left: {records:?}");

    // With nothing to vouch for, nothing is recorded and every file is linked.
    let none_stored = snapshotter
        .create_incremental(
            "inc-2",
            UnchangedFiles {
                location_id: "loc-empty".into(),
                ..unchanged
            },
        )
        .await
        .expect("create");
    assert_eq!(none_stored.unlinked_for, None);
    assert!(
        snapshot_files(&none_stored)
            .iter()
            .all(|file| file.stored_hash.is_none())
    );
    assert!(
        !node
            .state_dir()
            .join("snapshots/inc-2.unlinked.json")
            .exists()
    );
}

/// The agent's RPCs: a snapshot taken for an incremental backup is uploaded by that backup
/// only, and an agent restarted in between uploads it whole.
mod rpc {
    use coffer_agent::Agent;
    use coffer_proto::agent::v1 as proto;
    use coffer_proto::agent::v1::agent_service_client::AgentServiceClient;
    use tokio_stream::StreamExt;

    use super::*;

    /// Serves an agent of `node` until the returned sender is dropped.
    async fn serve(
        node: &Node,
    ) -> (
        AgentServiceClient<tonic::transport::Channel>,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    ) {
        let config = AgentConfig {
            listen: "127.0.0.1:0".parse().expect("address"),
            data_paths: node.data_paths.clone(),
            state_dir: node.state_dir(),
            restore_hooks: Default::default(),
            restore_keep_free: 0,
            // The tests' locations live in temporary folders.
            storage: coffer_agent::config::StoragePolicy {
                roots: vec![std::env::temp_dir()],
                ..Default::default()
            },
            tls: None,
            metrics_listen: None,
            snapshot: dir_provider(None, None),
        };
        let agent = Agent::open(config).await.expect("open agent");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(async move {
            coffer_agent::run(listener, agent, async {
                let _ = stopped.await;
            })
            .await
            .expect("agent runs");
        });
        let client = AgentServiceClient::connect(format!("http://{address}"))
            .await
            .expect("connect");
        (client, stop, served)
    }

    fn location(node: &Node, id: &str) -> proto::StorageLocation {
        proto::StorageLocation {
            location_id: id.into(),
            name: id.into(),
            scheme: "fs".into(),
            options: [("root".to_string(), node.side_file(id).display().to_string())].into(),
            secrets: Default::default(),
        }
    }

    fn upload(
        tag: &str,
        location: proto::StorageLocation,
        kind: proto::BackupKind,
    ) -> proto::UploadSnapshotRequest {
        proto::UploadSnapshotRequest {
            tag: tag.into(),
            location: Some(location),
            cluster_id: uuid::Uuid::now_v7().to_string(),
            backup_id: uuid::Uuid::now_v7().to_string(),
            kind: kind.into(),
            ..Default::default()
        }
    }

    /// Runs an upload to its end: the summary, or the status it failed with.
    async fn run_upload(
        client: &mut AgentServiceClient<tonic::transport::Channel>,
        request: proto::UploadSnapshotRequest,
    ) -> Result<proto::UploadSummary, tonic::Status> {
        let mut stream = client.upload_snapshot(request).await?.into_inner();
        while let Some(message) = stream.next().await {
            if let Some(proto::upload_snapshot_response::Event::Done(summary)) = message?.event {
                return Ok(summary);
            }
        }
        Err(tonic::Status::unknown("the stream ended without a summary"))
    }

    /// The first `limit` entries of the node manifest at `path` in the node's fs location
    /// `location_id`, whether there are more, and how many it lists.
    async fn first_manifest_page(
        node: &Node,
        location_id: &str,
        path: &str,
        limit: usize,
    ) -> (Vec<coffer_format::manifest::NodeManifestEntry>, bool, u64) {
        let operator = coffer_format::open_operator(&coffer_format::StorageConfig {
            location_id: location_id.into(),
            name: location_id.into(),
            scheme: "fs".into(),
            options: [(
                "root".to_string(),
                node.side_file(location_id).display().to_string(),
            )]
            .into(),
            secrets: Default::default(),
        })
        .expect("open location");
        coffer_format::manifest::NodeManifestReader::read_page(
            &operator,
            path,
            &coffer_format::object::Keyring::plain(),
            0,
            limit,
        )
        .await
        .expect("read node manifest")
    }

    fn create(tag: &str, incremental_location_id: &str) -> proto::CreateSnapshotRequest {
        proto::CreateSnapshotRequest {
            tag: tag.into(),
            incremental_location_id: incremental_location_id.into(),
            incremental_encryption_key: String::new(),
        }
    }

    #[tokio::test]
    async fn an_upload_removes_temporary_files_left_over_by_interrupted_writes() {
        let node = Node::new(1);
        write(&node.data(0).join("t0/data.db"), b"table\n");
        let temporary = node
            .side_file("loc-a")
            .join(coffer_format::storage::FS_ATOMIC_WRITE_DIR);
        fs::create_dir_all(&temporary).expect("mkdir");
        let two_days_ago = std::time::SystemTime::now() - Duration::from_secs(48 * 60 * 60);
        for (name, modified) in [
            ("left-over.object", two_days_ago),
            ("in-progress.object", std::time::SystemTime::now()),
        ] {
            let file = fs::File::create(temporary.join(name)).expect("create");
            file.set_len(1 << 20).expect("size");
            file.set_modified(modified).expect("mtime");
        }
        let (mut client, _stop, _served) = serve(&node).await;
        client
            .create_snapshot(create("full", ""))
            .await
            .expect("snapshot");
        run_upload(
            &mut client,
            upload("full", location(&node, "loc-a"), proto::BackupKind::Full),
        )
        .await
        .expect("full upload");
        let left: Vec<_> = fs::read_dir(&temporary)
            .expect("list")
            .map(|entry| entry.expect("entry").file_name())
            .collect();
        assert_eq!(left, ["in-progress.object"]);
    }

    #[tokio::test]
    async fn a_full_backup_reads_content_new_to_its_location_once() {
        let node = Node::new(1);
        // Over the small-file size, so it is streamed rather than read whole.
        let large: Vec<u8> = (0..3 * 1024 * 1024u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        write(&node.data(0).join("t0/big.db"), &large);
        write(&node.data(0).join("t1/small.db"), b"small table\n");
        let total = large.len() as u64 + 12;
        let (mut client, _stop, _served) = serve(&node).await;
        let cluster_id = uuid::Uuid::now_v7().to_string();
        let mut full = async |tag: &str, location_id: &str| {
            client
                .create_snapshot(create(tag, ""))
                .await
                .expect("snapshot");
            let request = proto::UploadSnapshotRequest {
                cluster_id: cluster_id.clone(),
                ..upload(tag, location(&node, location_id), proto::BackupKind::Full)
            };
            let summary = run_upload(&mut client, request).await.expect("full upload");
            client
                .delete_snapshot(proto::DeleteSnapshotRequest { tag: tag.into() })
                .await
                .expect("delete");
            let progress = summary.progress.expect("progress");
            (summary.objects_uploaded, progress.bytes_read)
        };
        assert_eq!(full("first", "loc-a").await, (2, total));
        // The journal knows both hashes, but only in loc-a: for loc-b the content is new, and
        // each file is read once, as it is stored.
        assert_eq!(full("other", "loc-b").await, (2, total));
        // In loc-a it is known: hashed again (a full backup trusts no journal), found, not
        // stored again.
        assert_eq!(full("again", "loc-a").await, (0, total));
    }

    #[tokio::test]
    async fn an_incremental_snapshot_is_uploaded_only_by_its_backup_even_after_a_restart() {
        let node = Node::new(1);
        for index in 0..5 {
            write(
                &node.data(0).join(format!("t{index}/data.db")),
                format!("table {index}\n").repeat(1000).as_bytes(),
            );
        }
        let (mut client, stop, served) = serve(&node).await;
        client
            .create_snapshot(create("full", ""))
            .await
            .expect("snapshot");
        let full = run_upload(
            &mut client,
            upload("full", location(&node, "loc-a"), proto::BackupKind::Full),
        )
        .await
        .expect("full upload");
        assert_eq!(full.objects_uploaded, 5);
        client
            .delete_snapshot(proto::DeleteSnapshotRequest { tag: "full".into() })
            .await
            .expect("delete");

        write(&node.data(0).join("t3/data.db"), b"changed\n");
        let taken = client
            .create_snapshot(create("inc", "loc-a"))
            .await
            .expect("snapshot")
            .into_inner();
        assert_eq!(taken.file_count, 5);
        let linked: Vec<_> = (0..5)
            .filter(|index| {
                node.data(0)
                    .join(SNAPSHOTS_FOLDER)
                    .join(format!("inc/t{index}/data.db"))
                    .exists()
            })
            .collect();
        assert_eq!(linked, [3], "only the changed file is linked");

        // Its unchanged files are not frozen: a full backup, or one into another location,
        // would read them live, so both are refused.
        for (request, what) in [
            (
                upload("inc", location(&node, "loc-a"), proto::BackupKind::Full),
                "FULL",
            ),
            (
                upload(
                    "inc",
                    location(&node, "loc-b"),
                    proto::BackupKind::Incremental,
                ),
                "INCREMENTAL",
            ),
        ] {
            let status = run_upload(&mut client, request).await.expect_err("refused");
            assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
            assert!(
                status.message().contains(&format!("a {what} backup"))
                    && status.message().contains("needs a snapshot of its own"),
                "{}",
                status.message()
            );
        }

        assert!(
            node.state_dir().join("snapshots/inc.files").exists(),
            "the snapshot's file list is its record"
        );
        // An agent restarted between the snapshot and the upload loads it whole.
        drop(stop);
        served.await.expect("agent stopped");
        let (mut client, _stop, _served) = serve(&node).await;
        let incremental = run_upload(
            &mut client,
            upload(
                "inc",
                location(&node, "loc-a"),
                proto::BackupKind::Incremental,
            ),
        )
        .await
        .expect("incremental upload");
        assert_eq!(incremental.objects_uploaded, 1);
        let progress = incremental.progress.expect("progress");
        assert_eq!((progress.files_total, progress.files_skipped), (5, 4));
        assert_eq!(progress.bytes_read, 8, "only the changed file is read");
        let (entries, more, total) =
            first_manifest_page(&node, "loc-a", &incremental.manifest_path, 10).await;
        assert_eq!(
            (entries.len(), more, total),
            (5, false, 5),
            "every file is listed"
        );
        client
            .delete_snapshot(proto::DeleteSnapshotRequest { tag: "inc".into() })
            .await
            .expect("delete");
        for record in ["inc.unlinked.json", "inc.files"] {
            assert!(
                !node.state_dir().join("snapshots").join(record).exists(),
                "{record} is removed with the snapshot"
            );
        }

        // A full backup makes the journal forget the files gone since.
        let gone = node.data(0).join("t4/data.db");
        let kept = node.data(0).join("t0/data.db");
        let (gone_identity, kept_identity) = (identity(&gone), identity(&kept));
        fs::remove_file(&gone).expect("remove");
        client
            .create_snapshot(create("full-2", ""))
            .await
            .expect("snapshot");
        run_upload(
            &mut client,
            upload("full-2", location(&node, "loc-a"), proto::BackupKind::Full),
        )
        .await
        .expect("full upload");
        let journal = coffer_agent::journal::Journal::open(&node.state_dir())
            .await
            .expect("journal");
        let (inode, size, mtime_ns) = gone_identity;
        let forgotten = journal.lookup_hash(&gone, inode, size, mtime_ns).await;
        assert_eq!(forgotten.expect("lookup"), None, "a file gone is forgotten");
        let (inode, size, mtime_ns) = kept_identity;
        let remembered = journal.lookup_hash(&kept, inode, size, mtime_ns).await;
        assert!(
            remembered.expect("lookup").is_some(),
            "a file still there is kept"
        );
    }
    /// More files than the upload reads from a snapshot's list at once: every chunk is read,
    /// asked of the journal and uploaded, and a full backup's journal forgets by the list.
    #[tokio::test]
    async fn a_snapshot_of_more_files_than_a_chunk_is_uploaded_whole() {
        const FILES: usize = 2 * coffer_agent::upload::FILES_AT_ONCE + 500;
        let node = Node::new(1);
        let path = |n: usize| node.data(0).join(format!("t{}/f{n}.db", n % 7));
        for n in 0..FILES {
            // 1000 contents appear twice: identical files are stored once.
            write(
                &path(n),
                format!("file {}\n", n % (FILES - 1000)).as_bytes(),
            );
        }
        let (mut client, _stop, _served) = serve(&node).await;
        let cluster_id = uuid::Uuid::now_v7().to_string();
        let mut backup = async |tag: &str, kind: proto::BackupKind| {
            let taken = client
                .create_snapshot(create(
                    tag,
                    if kind == proto::BackupKind::Incremental {
                        "loc-a"
                    } else {
                        ""
                    },
                ))
                .await
                .expect("snapshot")
                .into_inner();
            let request = proto::UploadSnapshotRequest {
                cluster_id: cluster_id.clone(),
                ..upload(tag, location(&node, "loc-a"), kind)
            };
            let summary = run_upload(&mut client, request).await.expect("upload");
            client
                .delete_snapshot(proto::DeleteSnapshotRequest { tag: tag.into() })
                .await
                .expect("delete");
            (taken.file_count, summary)
        };
        let (listed, full) = backup("full", proto::BackupKind::Full).await;
        assert_eq!(listed, FILES as u64);
        assert_eq!(full.objects_uploaded, (FILES - 1000) as u64);
        let progress = full.progress.expect("progress");
        assert_eq!(
            (progress.files_total, progress.files_done),
            (FILES as u64, FILES as u64)
        );
        let (_, _, total) = first_manifest_page(&node, "loc-a", &full.manifest_path, 1).await;
        assert_eq!(total, FILES as u64, "every file is in the manifest");

        // One file changed in the last chunk: everything else is vouched for.
        write(&path(FILES - 1), b"changed\n");
        let (_, incremental) = backup("inc", proto::BackupKind::Incremental).await;
        let progress = incremental.progress.expect("progress");
        assert_eq!(progress.files_total, FILES as u64);
        assert_eq!(progress.files_skipped, FILES as u64 - 1);
        assert_eq!(incremental.objects_uploaded, 1);

        // Files gone from the first and the last chunk are forgotten, one kept is not.
        let gone = [path(0), path(FILES - 2)];
        let identities: Vec<_> = gone.iter().map(|gone| identity(gone)).collect();
        let kept = path(FILES / 2);
        let kept_identity = identity(&kept);
        for gone in &gone {
            fs::remove_file(gone).expect("remove");
        }
        backup("full-2", proto::BackupKind::Full).await;
        let journal = coffer_agent::journal::Journal::open(&node.state_dir())
            .await
            .expect("journal");
        for (gone, (inode, size, mtime_ns)) in gone.iter().zip(identities) {
            let forgotten = journal.lookup_hash(gone, inode, size, mtime_ns).await;
            assert_eq!(
                forgotten.expect("lookup"),
                None,
                "{} is forgotten",
                gone.display()
            );
        }
        let (inode, size, mtime_ns) = kept_identity;
        let remembered = journal.lookup_hash(&kept, inode, size, mtime_ns).await;
        assert!(
            remembered.expect("lookup").is_some(),
            "a file still there is kept"
        );
    }
}
