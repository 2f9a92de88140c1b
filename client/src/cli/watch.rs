//! Following a run to its end through `RunService.WatchRun`: `backup start --watch`, `run watch`,
//! `restore start --watch` and `schedule run --watch` all go through [`watch`].
//!
//! The follower shows every message (see [`crate::cli::progress`]), reconnects when the server
//! goes away mid-run (it answers UNAVAILABLE while shutting down, and every message carries the
//! whole run, so nothing is lost by reconnecting), and stops at the first final state. Then it
//! prints the summary (or a dry run's plan) on stdout and turns the final state into the exit
//! code: 0 SUCCEEDED, 10 FAILED, 11 CANCELED.

use std::future::Future;
use std::time::{Duration, SystemTime};

use futures::{Stream, StreamExt as _};
use tonic::Code;

use coffer_client::{CofferClient, proto};

use crate::cli::format::{self, NONE};
use crate::cli::output::OutputFormat;
use crate::cli::progress::{LiveDisplay, ProgressSink, is_final_state};
use crate::cli::table::Table;
use crate::cli::{CliError, Session, status_line};

/// How long to wait before each reconnection after the watch stream broke; when they are used up,
/// the last error ends the command. About a minute in all: enough for a server restart.
pub const RECONNECT_DELAYS: [Duration; 8] = [
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
    Duration::from_secs(8),
    Duration::from_secs(10),
    Duration::from_secs(10),
    Duration::from_secs(10),
    Duration::from_secs(10),
];

/// Follows run `run_id` to its end, showing its progress, then prints the summary (or a dry run's
/// plan) and returns how it ended.
///
/// Fails with [`CliError::RunFailed`] or [`CliError::RunCanceled`] when the run ended so, with the
/// server's error when the run cannot be watched (NOT_FOUND, UNIMPLEMENTED, ...) or the stream
/// stays broken through every reconnection, and with [`CliError::Protocol`] when the stream ends
/// before the run does.
pub async fn watch(session: &Session, client: &CofferClient, run_id: &str) -> Result<(), CliError> {
    let mut display = LiveDisplay::new(&session.output);
    let request = proto::WatchRunRequest {
        run_id: run_id.to_owned(),
        min_update_interval: display.mode().min_update_interval(),
    };
    let runs = client.runs();
    let followed = follow(
        || {
            let mut runs = runs.clone();
            let request = request.clone();
            async move { Ok(runs.watch_run(request).await?.into_inner()) }
        },
        &mut display,
        &RECONNECT_DELAYS,
    )
    .await;
    display.finish();
    let run = followed?;
    if session.output.format() == OutputFormat::Table {
        session.output.data(&render_end(&run, SystemTime::now()))?;
    }
    outcome(&run)
}

/// What every command that starts a run does next: prints the run id (or, with `-o json` and
/// without following, the response), then follows the run with [`watch`] when `follow`, or
/// says how to (`what` names the run: `backup`, `restore`, ...).
pub async fn started<M>(
    session: &Session,
    client: &CofferClient,
    response: &M,
    run_id: &str,
    follow: bool,
    what: &str,
) -> Result<(), CliError>
where
    M: prost::Message + prost::Name,
{
    match (session.output.format(), follow) {
        (OutputFormat::Json, false) => {
            return session.output.response(response, |_| Ok(String::new()));
        }
        // stdout carries only the stream of WatchRunResponse lines; each names the run.
        (OutputFormat::Json, true) => session.output.note(format_args!("started run {run_id}")),
        (OutputFormat::Table, _) => session.output.data(&format!("{run_id}\n"))?,
    }
    if !follow {
        session.output.note(format_args!(
            "{what} running in the background; follow it with: cofferctl run watch {run_id}"
        ));
        return Ok(());
    }
    watch(session, client, run_id).await
}

/// Reads watch streams that `open` opens, hands every message to `sink`, and returns the run in
/// its first final state.
///
/// A stream that breaks with UNAVAILABLE, or under a failing connection, after the run was seen
/// is opened again after the next of `reconnect_delays`; any other error, or one when the delays are used up or before any
/// message arrived, is returned as is. A stream that ends before a final state is a
/// [`CliError::Protocol`] error, as is a message without a run.
pub async fn follow<Open, Opened, Messages>(
    mut open: Open,
    sink: &mut dyn ProgressSink,
    reconnect_delays: &[Duration],
) -> Result<proto::Run, CliError>
where
    Open: FnMut() -> Opened,
    Opened: Future<Output = Result<Messages, tonic::Status>>,
    Messages: Stream<Item = Result<proto::WatchRunResponse, tonic::Status>> + Unpin,
{
    let mut seen_run = false;
    let mut reconnects = reconnect_delays.iter();
    loop {
        let broken = match open().await {
            Err(status) => status,
            Ok(mut messages) => loop {
                match messages.next().await {
                    Some(Ok(response)) => {
                        sink.update(&response)?;
                        let Some(run) = response.run else {
                            return Err(CliError::Protocol(
                                "a WatchRun message has no run".to_owned(),
                            ));
                        };
                        if is_final_state(run.state) {
                            return Ok(run);
                        }
                        seen_run = true;
                        reconnects = reconnect_delays.iter();
                    }
                    Some(Err(status)) => break status,
                    None => {
                        return Err(CliError::Protocol(
                            "the watch stream ended before the run finished".to_owned(),
                        ));
                    }
                }
            },
        };
        let delay = reconnects.next();
        let Some(delay) = delay.filter(|_| seen_run && is_reconnectable(&broken)) else {
            return Err(broken.into());
        };
        sink.note(&format!(
            "lost the watch stream ({}); reconnecting in {}",
            status_line(&broken),
            format::compact_duration(*delay)
        ));
        tokio::time::sleep(*delay).await;
    }
}

/// Whether a broken watch stream is worth opening again: the server going away (UNAVAILABLE, as
/// it answers while shutting down), or the connection failing under the stream (an error tonic
/// made from a transport error, which has a source, unlike any status a server sends). Watching
/// changes nothing, so opening it again is always safe.
fn is_reconnectable(status: &tonic::Status) -> bool {
    match status.code() {
        Code::Unavailable => true,
        Code::Unknown => std::error::Error::source(status).is_some(),
        _ => false,
    }
}

/// How a followed run ended, as the command's result.
pub fn outcome(run: &proto::Run) -> Result<(), CliError> {
    match proto::RunState::try_from(run.state) {
        Ok(proto::RunState::Succeeded) => Ok(()),
        Ok(proto::RunState::Failed) => Err(CliError::RunFailed {
            run_id: run.id.clone(),
            message: if run.error_message.is_empty() {
                failed_nodes(run).unwrap_or_else(|| "the server gave no reason".to_owned())
            } else {
                run.error_message.clone()
            },
        }),
        Ok(proto::RunState::Canceled) => Err(CliError::RunCanceled {
            run_id: run.id.clone(),
        }),
        _ => Err(CliError::Protocol(format!(
            "run {} is {}, not in a final state",
            run.id,
            format::run_state(run.state)
        ))),
    }
}

/// `nodes a, b failed`, when any did.
fn failed_nodes(run: &proto::Run) -> Option<String> {
    let failed: Vec<&str> = run
        .nodes
        .iter()
        .filter(|node| node.phase() == proto::NodePhase::Failed)
        .map(|node| node.node_id.as_str())
        .collect();
    match failed.as_slice() {
        [] => None,
        [node] => Some(format!("node {node} failed")),
        nodes => Some(format!("nodes {} failed", nodes.join(", "))),
    }
}

/// What is printed on stdout when a followed run ended: a successful dry run's plan, or the
/// summary.
pub fn render_end(run: &proto::Run, now: SystemTime) -> String {
    if let Some(validation) = &run.validation {
        return render_validation(run, validation, now);
    }
    if let Some(purge) = &run.purge_result {
        return render_purge(run, purge, now);
    }
    if run.dry_run && run.state() == proto::RunState::Succeeded {
        render_plan(run)
    } else {
        render_summary(run, now)
    }
}

/// The end of a purge run: what it listed, marked, kept and freed.
pub fn render_purge(run: &proto::Run, purge: &proto::PurgeResult, now: SystemTime) -> String {
    let elapsed = format::elapsed(
        run.start_time.as_ref().or(run.create_time.as_ref()),
        run.finish_time.as_ref(),
        now,
    );
    let mut out = format!(
        "Run {} {} after {elapsed}",
        run.id,
        format::run_state(run.state)
    );
    if run.dry_run {
        out.push_str(&format!(
            " (dry run): {} of {} objects unreferenced, {} would be freed\n",
            purge.objects_unreferenced,
            purge.objects_listed,
            format::human_bytes(purge.bytes_unreferenced)
        ));
    } else {
        out.push_str(&format!(
            ": {} of {} objects deleted, {} freed ({} kept for backups committed meanwhile, \
             {} waits for backups), {} uncommitted backup folders cleared\n",
            purge.objects_deleted,
            purge.objects_listed,
            format::human_bytes(purge.bytes_freed),
            purge.objects_reclaimed,
            purge.waits,
            purge.uncommitted_folders
        ));
    }
    if purge.temporary_objects_deleted > 0 {
        out.push_str(&format!(
            "{} {} temporary objects left by interrupted writes ({})\n",
            if run.dry_run {
                "Would remove"
            } else {
                "Removed"
            },
            purge.temporary_objects_deleted,
            format::human_bytes(purge.temporary_bytes_freed)
        ));
    }
    out
}

/// The end of a validate run: a headline, the counts, then one row per backup.
pub fn render_validation(
    run: &proto::Run,
    validation: &proto::ValidationResult,
    now: SystemTime,
) -> String {
    let unrestorable = validation
        .backups
        .iter()
        .filter(|backup| !backup.restorable)
        .count();
    let mut out = format!(
        "Run {} {} after {}: {} of {} backups restore\n",
        run.id,
        format::run_state(run.state),
        format::elapsed(
            run.start_time.as_ref().or(run.create_time.as_ref()),
            run.finish_time.as_ref(),
            now
        ),
        validation.backups.len() - unrestorable,
        validation.backups.len(),
    );
    out.push_str(&format!(
        "Objects: {} listed, {} referenced, {} missing, {} damaged, {} orphaned ({})\n",
        validation.objects_listed,
        validation.objects_referenced,
        validation.objects_missing,
        validation.objects_damaged,
        validation.objects_orphaned,
        format::human_bytes(validation.orphaned_bytes),
    ));
    let deep = run.spec.as_ref().is_some_and(|spec| {
        matches!(spec, proto::run::Spec::Validate(validate)
            if validate.depth() == proto::ValidationDepth::Deep)
    });
    if deep {
        out.push_str(&format!(
            "Verified: {} of {} chosen objects ({}); {} never verified yet\n",
            validation.objects_verified,
            validation.objects_to_verify,
            format::human_bytes(validation.bytes_verified),
            validation.objects_never_verified,
        ));
    }
    out.push('\n');
    let mut table = Table::new([
        "BACKUP",
        "RESTORES",
        "FILES",
        "MISSING OBJECTS",
        "DAMAGED OBJECTS",
        "PROBLEM",
    ]);
    for backup in &validation.backups {
        let problem = if !backup.error.is_empty() {
            backup.error.clone()
        } else if let Some(first) = backup.affected_files.first() {
            first.clone()
        } else {
            NONE.to_owned()
        };
        table.push([
            backup.backup_id.clone(),
            if backup.restorable { "yes" } else { "NO" }.to_owned(),
            backup.files_checked.to_string(),
            backup.missing_objects.to_string(),
            backup.damaged_objects.to_string(),
            problem,
        ]);
    }
    out.push_str(&table.render());
    out
}

/// The word for the bytes a run moved: a backup uploads, a restore downloads.
fn transferred(run: &proto::Run) -> &'static str {
    match run.kind() {
        proto::RunKind::Restore => "DOWNLOADED",
        proto::RunKind::Backup
        | proto::RunKind::Validate
        | proto::RunKind::Purge
        | proto::RunKind::Unspecified => "UPLOADED",
    }
}

/// The end of a run: a headline, then per node (and in all) files, bytes, skipped files, bytes
/// transferred as stored (what `backup list` shows as uploaded), final phase and error.
pub fn render_summary(run: &proto::Run, now: SystemTime) -> String {
    let mut out = format!(
        "Run {} {} after {}",
        run.id,
        format::run_state(run.state),
        format::elapsed(
            run.start_time.as_ref().or(run.create_time.as_ref()),
            run.finish_time.as_ref(),
            now
        ),
    );
    if !run.backup_id.is_empty() {
        let verb = match run.kind() {
            proto::RunKind::Restore => "restored",
            proto::RunKind::Backup
            | proto::RunKind::Validate
            | proto::RunKind::Purge
            | proto::RunKind::Unspecified => "committed",
        };
        out.push_str(&format!("; {verb} backup {}", run.backup_id));
    }
    out.push_str("\n\n");
    let mut table = Table::new([
        "NODE",
        "STATE",
        "FILES",
        "BYTES",
        "SKIPPED",
        transferred(run),
        "ERROR",
    ]);
    let row = |node: String, state: String, counters: proto::ProgressCounters, error: String| {
        [
            node,
            state,
            format::count_of(counters.files_done, counters.files_total),
            format::size_of(counters.bytes_done, counters.bytes_total),
            counters.files_skipped.to_string(),
            format::human_bytes(counters.bytes_transferred),
            error,
        ]
    };
    for node in &run.nodes {
        table.push(row(
            node.node_id.clone(),
            format::node_phase(node.phase),
            node.progress.unwrap_or_default(),
            node.last_error.clone(),
        ));
    }
    table.push(row(
        "TOTAL".to_owned(),
        format::run_state(run.state),
        run.totals.unwrap_or_default(),
        String::new(),
    ));
    out.push_str(&table.render());
    out
}

/// A dry run's plan: per node (and in all) what the run would cover and what it would transfer.
pub fn render_plan(run: &proto::Run) -> String {
    let (covers, moves) = match run.kind() {
        proto::RunKind::Restore => ("restore", "DOWNLOAD"),
        proto::RunKind::Backup
        | proto::RunKind::Validate
        | proto::RunKind::Purge
        | proto::RunKind::Unspecified => ("backup", "UPLOAD"),
    };
    let mut out = format!(
        "Dry run {}: nothing was written. FILES and BYTES are what the {covers} would cover, \
         {moves} what it would transfer.\n\n",
        run.id
    );
    let upload_files = format!("{moves} FILES");
    let upload_bytes = format!("{moves} BYTES");
    let mut table = Table::new(["NODE", "FILES", "BYTES", &upload_files, &upload_bytes]);
    let row = |node: String, counters: proto::ProgressCounters| {
        [
            node,
            counters.files_total.to_string(),
            format::human_bytes(counters.bytes_total),
            counters
                .files_total
                .saturating_sub(counters.files_skipped)
                .to_string(),
            format::human_bytes(counters.bytes_total.saturating_sub(counters.bytes_skipped)),
        ]
    };
    for node in &run.nodes {
        table.push(row(node.node_id.clone(), node.progress.unwrap_or_default()));
    }
    table.push(row("TOTAL".to_owned(), run.totals.unwrap_or_default()));
    out.push_str(&table.render());
    out
}

/// A run's kind for tables: `BACKUP`, or `BACKUP (dry run)`.
pub fn kind_cell(run: &proto::Run) -> String {
    let kind = format::run_kind(run.kind);
    if run.dry_run && kind != NONE {
        format!("{kind} (dry run)")
    } else {
        kind
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;

    /// Records what the follower shows.
    #[derive(Debug, Default)]
    struct Recorder {
        states: Vec<String>,
        notes: Vec<String>,
    }

    impl ProgressSink for Recorder {
        fn update(&mut self, response: &proto::WatchRunResponse) -> Result<(), CliError> {
            let state = response.run.as_ref().map_or(0, |run| run.state);
            self.states.push(format::run_state(state));
            Ok(())
        }

        fn note(&mut self, text: &str) {
            self.notes.push(text.to_owned());
        }
    }

    type Item = Result<proto::WatchRunResponse, tonic::Status>;

    fn message(state: proto::RunState) -> Item {
        Ok(proto::WatchRunResponse {
            run: Some(proto::Run {
                id: "r-1".to_owned(),
                state: state as i32,
                ..Default::default()
            }),
        })
    }

    /// Follows the scripted streams, one per `open`; an `Err` script is a failing `open`.
    async fn follow_scripted(
        scripts: Vec<Result<Vec<Item>, tonic::Status>>,
        recorder: &mut Recorder,
    ) -> (Result<proto::Run, CliError>, usize) {
        let mut scripts = VecDeque::from(scripts);
        let mut opened = 0;
        let result = follow(
            || {
                opened += 1;
                let script = scripts
                    .pop_front()
                    .unwrap_or_else(|| Err(tonic::Status::internal("no more scripts")));
                async move { script.map(futures::stream::iter) }
            },
            recorder,
            &[Duration::ZERO, Duration::ZERO],
        )
        .await;
        (result, opened)
    }

    #[tokio::test]
    async fn stops_at_the_first_final_state() {
        let mut recorder = Recorder::default();
        let (result, opened) = follow_scripted(
            vec![Ok(vec![
                message(proto::RunState::Queued),
                message(proto::RunState::Running),
                message(proto::RunState::Succeeded),
                message(proto::RunState::Running),
            ])],
            &mut recorder,
        )
        .await;
        let run = result.expect("succeeded");
        assert_eq!(run.state(), proto::RunState::Succeeded);
        assert_eq!(recorder.states, ["QUEUED", "RUNNING", "SUCCEEDED"]);
        assert_eq!(opened, 1);
    }

    #[tokio::test]
    async fn reconnects_after_unavailable_once_the_run_was_seen() {
        let mut recorder = Recorder::default();
        let (result, opened) = follow_scripted(
            vec![
                Ok(vec![
                    message(proto::RunState::Running),
                    Err(tonic::Status::unavailable("server shutting down")),
                ]),
                Err(tonic::Status::unavailable("connection refused")),
                Ok(vec![message(proto::RunState::Failed)]),
            ],
            &mut recorder,
        )
        .await;
        assert_eq!(
            result.expect("final state").state(),
            proto::RunState::Failed
        );
        assert_eq!(opened, 3);
        assert_eq!(recorder.notes.len(), 2);
        assert!(
            recorder.notes[0]
                .starts_with("lost the watch stream (unavailable: server shutting down)"),
            "{:?}",
            recorder.notes
        );
    }

    #[test]
    fn only_a_server_going_away_or_a_broken_connection_is_reconnected() {
        assert!(is_reconnectable(&tonic::Status::unavailable(
            "shutting down"
        )));
        let broken = tonic::Status::from_error(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )));
        assert_eq!(broken.code(), Code::Unknown);
        assert!(is_reconnectable(&broken));
        // The same code sent by the server is an answer, not a broken connection.
        assert!(!is_reconnectable(&tonic::Status::unknown("boom")));
        assert!(!is_reconnectable(&tonic::Status::internal("boom")));
        assert!(!is_reconnectable(&tonic::Status::not_found("run r-1")));
    }

    #[tokio::test]
    async fn gives_up_when_the_reconnections_are_used_up() {
        let mut recorder = Recorder::default();
        let (result, opened) = follow_scripted(
            vec![
                Ok(vec![
                    message(proto::RunState::Running),
                    Err(tonic::Status::unavailable("down")),
                ]),
                Err(tonic::Status::unavailable("down")),
                Err(tonic::Status::unavailable("still down")),
            ],
            &mut recorder,
        )
        .await;
        let error = result.expect_err("gave up");
        assert_eq!(error.exit().code(), 3);
        assert_eq!(error.report().as_deref(), Some("unavailable: still down"));
        assert_eq!(opened, 3);
    }

    #[tokio::test]
    async fn errors_before_the_first_message_end_at_once() {
        for (status, code) in [
            (tonic::Status::unimplemented("RunService.WatchRun"), 9),
            (tonic::Status::not_found("run r-1"), 5),
            (tonic::Status::unavailable("connection refused"), 3),
        ] {
            let mut recorder = Recorder::default();
            let (result, opened) = follow_scripted(vec![Err(status)], &mut recorder).await;
            assert_eq!(result.expect_err("no run").exit().code(), code);
            assert_eq!(opened, 1);
            assert!(recorder.notes.is_empty());
        }
    }

    #[tokio::test]
    async fn a_stream_ending_early_or_another_error_is_not_retried() {
        let mut recorder = Recorder::default();
        let (result, _) = follow_scripted(
            vec![Ok(vec![message(proto::RunState::Running)])],
            &mut recorder,
        )
        .await;
        assert!(matches!(result, Err(CliError::Protocol(_))));

        let (result, opened) = follow_scripted(
            vec![Ok(vec![
                message(proto::RunState::Running),
                Err(tonic::Status::internal("boom")),
            ])],
            &mut recorder,
        )
        .await;
        assert_eq!(result.expect_err("internal").exit().code(), 1);
        assert_eq!(opened, 1);
    }

    fn node(
        id: &str,
        phase: proto::NodePhase,
        counters: proto::ProgressCounters,
    ) -> proto::NodeProgress {
        proto::NodeProgress {
            node_id: id.to_owned(),
            phase: phase as i32,
            progress: Some(counters),
            ..Default::default()
        }
    }

    fn counters(
        files: u64,
        skipped_files: u64,
        bytes: u64,
        skipped_bytes: u64,
        transferred: u64,
    ) -> proto::ProgressCounters {
        proto::ProgressCounters {
            files_total: files,
            files_done: files,
            files_skipped: skipped_files,
            bytes_total: bytes,
            bytes_done: bytes,
            bytes_skipped: skipped_bytes,
            bytes_transferred: transferred,
            ..Default::default()
        }
    }

    fn finished_backup(state: proto::RunState) -> proto::Run {
        proto::Run {
            id: "r-1".to_owned(),
            kind: proto::RunKind::Backup as i32,
            state: state as i32,
            backup_id: if state == proto::RunState::Succeeded {
                "b-1".to_owned()
            } else {
                String::new()
            },
            start_time: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
            finish_time: Some(prost_types::Timestamp {
                seconds: 1_700_000_123,
                nanos: 0,
            }),
            nodes: vec![
                node(
                    "a",
                    proto::NodePhase::Done,
                    // 1 GiB of new content, stored compressed.
                    counters(100, 90, 10 << 30, 9 << 30, 400 << 20),
                ),
                node(
                    "b",
                    proto::NodePhase::Done,
                    counters(50, 50, 1 << 20, 1 << 20, 0),
                ),
            ],
            totals: Some(counters(
                150,
                140,
                (10 << 30) + (1 << 20),
                (9 << 30) + (1 << 20),
                400 << 20,
            )),
            ..Default::default()
        }
    }

    #[test]
    fn summary_lists_nodes_and_totals() {
        let rendered = render_summary(
            &finished_backup(proto::RunState::Succeeded),
            SystemTime::UNIX_EPOCH,
        );
        assert_eq!(
            rendered,
            "Run r-1 SUCCEEDED after 2m03s; committed backup b-1\n\
             \n\
             NODE    STATE       FILES   BYTES      SKIPPED   UPLOADED    ERROR\n\
             a       DONE        100     10.0 GiB   90        400.0 MiB\n\
             b       DONE        50      1.0 MiB    50        0 B\n\
             TOTAL   SUCCEEDED   150     10.0 GiB   140       400.0 MiB\n"
        );
    }

    #[test]
    fn failed_nodes_show_partial_counts_and_errors() {
        let mut run = finished_backup(proto::RunState::Failed);
        run.nodes[1] = proto::NodeProgress {
            last_error: "disk full".to_owned(),
            ..node(
                "b",
                proto::NodePhase::Failed,
                proto::ProgressCounters {
                    files_total: 50,
                    files_done: 20,
                    bytes_total: 2048,
                    bytes_done: 1024,
                    bytes_transferred: 512,
                    ..Default::default()
                },
            )
        };
        let rendered = render_summary(&run, SystemTime::UNIX_EPOCH);
        assert!(
            rendered.contains(
                "b       FAILED   20/50   1.0 KiB / 2.0 KiB   0         512 B       disk full\n"
            ),
            "{rendered}"
        );
        let error = outcome(&run).expect_err("failed");
        assert_eq!(error.exit().code(), 10);
        assert_eq!(
            error.report().as_deref(),
            Some("run r-1 failed: node b failed")
        );
    }

    #[test]
    fn outcome_maps_final_states_to_exit_codes() {
        assert!(outcome(&finished_backup(proto::RunState::Succeeded)).is_ok());
        let mut failed = finished_backup(proto::RunState::Failed);
        failed.error_message = "agent a unreachable".to_owned();
        let error = outcome(&failed).expect_err("failed");
        assert_eq!(error.exit().code(), 10);
        assert_eq!(
            error.report().as_deref(),
            Some("run r-1 failed: agent a unreachable")
        );
        let canceled = outcome(&finished_backup(proto::RunState::Canceled)).expect_err("canceled");
        assert_eq!(canceled.exit().code(), 11);
        let running = outcome(&finished_backup(proto::RunState::Running)).expect_err("not final");
        assert_eq!(running.exit().code(), 1);
    }

    #[test]
    fn a_successful_dry_run_prints_its_plan() {
        let mut run = finished_backup(proto::RunState::Succeeded);
        run.dry_run = true;
        run.backup_id.clear();
        assert_eq!(
            render_end(&run, SystemTime::UNIX_EPOCH),
            "Dry run r-1: nothing was written. FILES and BYTES are what the backup would cover, \
             UPLOAD what it would transfer.\n\
             \n\
             NODE    FILES   BYTES      UPLOAD FILES   UPLOAD BYTES\n\
             a       100     10.0 GiB   10             1.0 GiB\n\
             b       50      1.0 MiB    0              0 B\n\
             TOTAL   150     10.0 GiB   10             1.0 GiB\n"
        );
        run.state = proto::RunState::Failed as i32;
        assert!(render_end(&run, SystemTime::UNIX_EPOCH).starts_with("Run r-1 FAILED"));
    }

    #[test]
    fn kind_cells() {
        let mut run = finished_backup(proto::RunState::Running);
        assert_eq!(kind_cell(&run), "BACKUP");
        run.dry_run = true;
        assert_eq!(kind_cell(&run), "BACKUP (dry run)");
    }
}
