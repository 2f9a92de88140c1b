//! The output of a child process the agent runs (snapshot commands, post-restore hooks):
//! standard output logged at debug level, the last lines of standard error kept for the error
//! when the child fails.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Child;
use tokio::task::JoinHandle;

/// Lines of standard error kept for an error message.
pub const STDERR_TAIL_LINES: usize = 20;
/// Longest line kept, in bytes.
const MAX_LINE_BYTES: usize = 1024;
/// How long to keep reading output after the child exited: a background process it started
/// may hold the pipes open forever.
const OUTPUT_GRACE: Duration = Duration::from_secs(2);

/// Readers of a child's piped standard output and error.
#[derive(Debug)]
pub struct ChildOutput {
    stdout: Option<JoinHandle<()>>,
    stderr: Option<JoinHandle<()>>,
    /// Shared with the reader, so the lines read so far survive abandoning a reader that never
    /// sees end of file.
    tail: Arc<Mutex<VecDeque<String>>>,
}

impl ChildOutput {
    /// Starts reading the pipes `child` was spawned with; `source` names the child in the log.
    pub fn capture(child: &mut Child, source: impl std::fmt::Display) -> Self {
        let source = source.to_string();
        let stdout = child.stdout.take().map(|stdout| {
            let source = source.clone();
            tokio::spawn(read_lines(stdout, move |line| {
                tracing::debug!(%source, line, "stdout");
            }))
        });
        let tail = Arc::new(Mutex::new(VecDeque::with_capacity(STDERR_TAIL_LINES)));
        let stderr = child.stderr.take().map(|stderr| {
            let tail = Arc::clone(&tail);
            tokio::spawn(read_lines(stderr, move |line| {
                tracing::debug!(%source, line, "stderr");
                let mut tail = tail.lock().unwrap_or_else(PoisonError::into_inner);
                if tail.len() == STDERR_TAIL_LINES {
                    tail.pop_front();
                }
                tail.push_back(line.to_string());
            }))
        });
        Self {
            stdout,
            stderr,
            tail,
        }
    }

    /// Waits, up to a grace period each, for both readers to reach the end of their pipe, and
    /// returns the last lines of standard error (`(no output)` when there were none).
    pub async fn finish(self) -> String {
        tokio::join!(finish_reading(self.stdout), finish_reading(self.stderr));
        let tail = std::mem::take(&mut *self.tail.lock().unwrap_or_else(PoisonError::into_inner));
        if tail.is_empty() {
            "(no output)".to_string()
        } else {
            Vec::from(tail).join("\n")
        }
    }

    /// Stops reading, for a child that was killed.
    pub fn abort(self) {
        self.stdout
            .into_iter()
            .chain(self.stderr)
            .for_each(|reader| reader.abort());
    }
}

/// Waits up to [`OUTPUT_GRACE`] for an output reader, then abandons it.
async fn finish_reading(reader: Option<JoinHandle<()>>) {
    let Some(mut reader) = reader else {
        return;
    };
    if tokio::time::timeout(OUTPUT_GRACE, &mut reader)
        .await
        .is_err()
    {
        tracing::debug!("stop reading output still open after the child exited");
        reader.abort();
    }
}

/// Calls `each` with every line of `reader` (lossily decoded, trimmed, cut to
/// [`MAX_LINE_BYTES`]) until end of file or a read error.
async fn read_lines(reader: impl AsyncRead + Unpin, mut each: impl FnMut(&str)) {
    let mut reader = BufReader::new(reader);
    let mut buffer = Vec::new();
    loop {
        buffer.clear();
        match reader.read_until(b'\n', &mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let end = buffer.len().min(MAX_LINE_BYTES);
                let line = String::from_utf8_lossy(&buffer[..end]);
                let line = line.trim_end();
                if !line.is_empty() {
                    each(line);
                }
            }
        }
    }
}
