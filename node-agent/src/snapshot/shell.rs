//! Running hooks and snapshot commands through `sh -c`.
//!
//! The tag reaches the script twice: substituted for `{tag}` by the caller (safe, as tags are
//! `[A-Za-z0-9-]` only) and in `COFFER_SNAPSHOT_TAG`. Standard output is logged at debug level;
//! the last lines of standard error are kept for the error when the script fails.

use std::collections::VecDeque;
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;

use super::{ShellStep, SnapshotError, TAG_ENV};

/// Lines of standard error kept for an error message.
pub(crate) const STDERR_TAIL_LINES: usize = 20;
/// Longest line kept, in bytes.
const MAX_LINE_BYTES: usize = 1024;
/// How long to keep reading output after the script exited: a background process it started
/// may hold the pipes open forever.
const OUTPUT_GRACE: Duration = Duration::from_secs(2);

/// Replaces every `{tag}` in `template`.
pub(crate) fn substitute_tag(template: &str, tag: &str) -> String {
    template.replace("{tag}", tag)
}

/// Runs `script` with `sh -c`, `COFFER_SNAPSHOT_TAG=tag` in its environment and no standard
/// input.
///
/// Fails when `sh` cannot be started or the script exits unsuccessfully; the error carries the
/// exit status and the last lines of standard error. Dropping the future kills the script.
pub(crate) async fn run(step: ShellStep, script: &str, tag: &str) -> Result<(), SnapshotError> {
    tracing::info!(%step, "run");
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(script)
        .env(TAG_ENV, tag)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| SnapshotError::StepNotStarted { step, source })?;
    let stdout = child.stdout.take().map(|stdout| {
        tokio::spawn(read_lines(stdout, move |line| {
            tracing::debug!(%step, line, "stdout");
        }))
    });
    // Shared, so the lines read so far survive abandoning a reader that never sees end of file.
    let tail = Arc::new(Mutex::new(VecDeque::with_capacity(STDERR_TAIL_LINES)));
    let stderr = child.stderr.take().map(|stderr| {
        let tail = Arc::clone(&tail);
        tokio::spawn(read_lines(stderr, move |line| {
            tracing::debug!(%step, line, "stderr");
            let mut tail = tail.lock().unwrap_or_else(PoisonError::into_inner);
            if tail.len() == STDERR_TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(line.to_string());
        }))
    });
    let status = child
        .wait()
        .await
        .map_err(|source| SnapshotError::StepNotStarted { step, source })?;
    tokio::join!(finish_reading(stdout), finish_reading(stderr));
    if status.success() {
        return Ok(());
    }
    let tail = std::mem::take(&mut *tail.lock().unwrap_or_else(PoisonError::into_inner));
    let stderr = if tail.is_empty() {
        "(no output)".to_string()
    } else {
        Vec::from(tail).join("\n")
    };
    Err(SnapshotError::StepFailed {
        step,
        status,
        stderr,
    })
}

/// Waits up to [`OUTPUT_GRACE`] for an output reader, then abandons it.
pub(crate) async fn finish_reading(reader: Option<tokio::task::JoinHandle<()>>) {
    let Some(mut reader) = reader else {
        return;
    };
    if tokio::time::timeout(OUTPUT_GRACE, &mut reader)
        .await
        .is_err()
    {
        tracing::debug!("stop reading output still open after the script exited");
        reader.abort();
    }
}

/// Calls `each` with every line of `reader` (lossily decoded, trimmed, cut to
/// [`MAX_LINE_BYTES`]) until end of file or a read error.
pub(crate) async fn read_lines(reader: impl AsyncRead + Unpin, mut each: impl FnMut(&str)) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failing_script_reports_its_status_and_the_end_of_its_stderr() {
        let script = "for i in $(seq 1 30); do echo line$i >&2; done; echo out; exit 3";
        let error = run(ShellStep::PreHook, script, "t1")
            .await
            .expect_err("fails");
        let SnapshotError::StepFailed {
            step,
            status,
            stderr,
        } = &error
        else {
            panic!("unexpected error {error}");
        };
        assert_eq!(*step, ShellStep::PreHook);
        assert_eq!(status.code(), Some(3));
        assert!(stderr.starts_with("line11\n"), "{stderr}");
        assert!(stderr.ends_with("line30"), "{stderr}");
        assert!(
            error
                .to_string()
                .starts_with("pre-hook failed (exit status: 3): line11")
        );
    }

    #[tokio::test]
    async fn the_tag_is_in_the_environment() {
        run(
            ShellStep::PostHook,
            "test \"$COFFER_SNAPSHOT_TAG\" = t-42",
            "t-42",
        )
        .await
        .expect("sees the tag");
    }

    #[tokio::test]
    async fn a_background_process_holding_the_pipes_does_not_hang_the_step() {
        let started = std::time::Instant::now();
        run(ShellStep::PostHook, "sleep 8 & exit 0", "t")
            .await
            .expect("succeeds");
        assert!(started.elapsed() < Duration::from_secs(6));
    }

    #[test]
    fn every_tag_placeholder_is_substituted() {
        assert_eq!(
            substitute_tag("snap -t {tag} && ls {tag}", "x1"),
            "snap -t x1 && ls x1"
        );
    }
}
