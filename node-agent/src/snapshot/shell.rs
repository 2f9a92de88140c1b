//! Running hooks and snapshot commands through `sh -c`.
//!
//! The tag reaches the script twice: substituted for `{tag}` by the caller (safe, as tags are
//! `[A-Za-z0-9-]` only) and in `COFFER_SNAPSHOT_TAG`. Its output is read by
//! [`ChildOutput`].

use std::process::Stdio;

use tokio::process::Command;

use super::{ShellStep, SnapshotError, TAG_ENV};
use crate::child_output::ChildOutput;

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
    let output = ChildOutput::capture(&mut child, step);
    let status = child
        .wait()
        .await
        .map_err(|source| SnapshotError::StepNotStarted { step, source })?;
    let stderr = output.finish().await;
    if status.success() {
        return Ok(());
    }
    Err(SnapshotError::StepFailed {
        step,
        status,
        stderr,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

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
