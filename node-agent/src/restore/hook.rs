//! The post-restore hook: argv run without a shell in the first data path, killed with its
//! process group after its timeout.
use std::process::Stdio;

use tokio_util::sync::CancellationToken;

use crate::child_output::ChildOutput;

use super::{
    HOOK_ENV_BACKUP_ID, HOOK_ENV_NODE_ID, HOOK_ENV_RUN_ID, HOOK_ENV_SOURCE_NODE_ID, HookFailure,
    RestoreFailure, RestoreHook, RestoreJob,
};

pub(super) async fn run_hook(
    job: &RestoreJob,
    hook: &RestoreHook,
    cancel: &CancellationToken,
) -> Result<(), RestoreFailure> {
    let Some((program, args)) = hook.argv.split_first() else {
        return Ok(());
    };
    let Some(working_folder) = job.data_paths.first() else {
        return Ok(());
    };
    tracing::info!(program, backup_id = %job.backup_id, "run post-restore hook");
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .current_dir(working_folder)
        .env(HOOK_ENV_RUN_ID, &job.run_id)
        .env(HOOK_ENV_BACKUP_ID, job.backup_id.to_string())
        .env(HOOK_ENV_NODE_ID, job.node_id.to_string())
        .env(HOOK_ENV_SOURCE_NODE_ID, job.source_node_id.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout kills what it started too.
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| HookFailure::NotStarted {
            program: program.clone(),
            source,
        })?;
    let output = ChildOutput::capture(&mut child, "restore hook");
    let outcome = tokio::select! {
        status = child.wait() => Some(status),
        () = tokio::time::sleep(hook.timeout) => None,
        () = cancel.cancelled() => None,
    };
    let status = match outcome {
        Some(status) => status.map_err(|source| HookFailure::NotStarted {
            program: program.clone(),
            source,
        })?,
        None => {
            if let Some(pid) = child
                .id()
                .and_then(|id| rustix::process::Pid::from_raw(id as i32))
            {
                let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
            }
            let _ = child.kill().await;
            output.abort();
            if cancel.is_cancelled() {
                return Err(RestoreFailure::Canceled);
            }
            return Err(HookFailure::TimedOut {
                timeout: hook.timeout,
            }
            .into());
        }
    };
    let stderr = output.finish().await;
    if status.success() {
        tracing::info!(backup_id = %job.backup_id, "post-restore hook finished");
        return Ok(());
    }
    Err(HookFailure::Failed { status, stderr }.into())
}
