//! Progress of a long call (an upload, a restore): the file and byte counters both keep, and
//! the reporter that sends their state to the caller at a steady pace.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How often progress is reported.
pub const PROGRESS_INTERVAL: Duration = Duration::from_millis(200);

/// Files and bytes selected, done and skipped (done without moving their content).
#[derive(Debug, Default)]
pub struct FileCounters {
    files_total: AtomicU64,
    files_done: AtomicU64,
    files_skipped: AtomicU64,
    bytes_total: AtomicU64,
    bytes_done: AtomicU64,
    bytes_skipped: AtomicU64,
}

/// A reading of [`FileCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FileTotals {
    pub files_total: u64,
    pub files_done: u64,
    pub files_skipped: u64,
    pub bytes_total: u64,
    pub bytes_done: u64,
    pub bytes_skipped: u64,
}

impl FileCounters {
    /// Counts `files` more files of `bytes` bytes in all as selected.
    pub fn select(&self, files: u64, bytes: u64) {
        self.files_total.fetch_add(files, Ordering::Relaxed);
        self.bytes_total.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Counts `files` files of `size` bytes each as done; `skipped` when their content did not
    /// have to be moved.
    pub fn done(&self, files: u64, size: u64, skipped: bool) {
        let bytes = files.saturating_mul(size);
        self.files_done.fetch_add(files, Ordering::Relaxed);
        self.bytes_done.fetch_add(bytes, Ordering::Relaxed);
        if skipped {
            self.files_skipped.fetch_add(files, Ordering::Relaxed);
            self.bytes_skipped.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    pub fn totals(&self) -> FileTotals {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        FileTotals {
            files_total: get(&self.files_total),
            files_done: get(&self.files_done),
            files_skipped: get(&self.files_skipped),
            bytes_total: get(&self.bytes_total),
            bytes_done: get(&self.bytes_done),
            bytes_skipped: get(&self.bytes_skipped),
        }
    }
}

/// Sends a reading of the work's progress every [`PROGRESS_INTERVAL`] until stopped. A caller
/// that stopped listening (the receiver is gone) cancels the work.
#[derive(Debug)]
pub struct ProgressReporter {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl ProgressReporter {
    /// Starts reporting `reading()` on `progress`; the first report goes out at once.
    pub fn start<P: Send + 'static>(
        progress: mpsc::Sender<P>,
        cancel: CancellationToken,
        reading: impl Fn() -> P + Send + 'static,
    ) -> Self {
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                loop {
                    if progress.send(reading()).await.is_err() {
                        cancel.cancel();
                        return;
                    }
                    tokio::select! {
                        () = tokio::time::sleep(PROGRESS_INTERVAL) => {}
                        () = stop.cancelled() => return,
                    }
                }
            }
        });
        Self { stop, task }
    }

    /// Stops reporting, once any report being sent has gone out.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}
