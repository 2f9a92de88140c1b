//! `cofferctl run ...`: the commands of `coffer.v1.RunService`.

use std::time::SystemTime;

use clap::{Args, Subcommand, ValueEnum};

use coffer_client::proto;

use crate::cli::exit::EXIT_CODES_HELP;
use crate::cli::format::{self, NONE, or_none};
use crate::cli::output::OutputFormat;
use crate::cli::paging::{Page, PageArgs, fetch_pages};
use crate::cli::progress::run_line;
use crate::cli::table::{Table, fields};
use crate::cli::transfer::{describe_filter, describe_limits};
use crate::cli::watch::kind_cell;
use crate::cli::{CliError, Session, watch};

/// The `run` commands.
#[derive(Debug, Subcommand)]
#[command(after_long_help = EXIT_CODES_HELP)]
pub enum RunCommand {
    /// List backup and restore runs, newest first.
    ///
    /// Fetches every page unless --page-size or --page-token is given; then prints that one page
    /// and the next page token on stderr.
    List(ListArgs),
    /// Show a run: its parameters, state and per-node progress.
    Show(RunArgs),
    /// Follow a run to its end: live progress on stderr, then a summary on stdout.
    ///
    /// Exits with 0 when the run succeeded, 10 when it failed, 11 when it was canceled. With
    /// -o json, stdout gets each WatchRunResponse as one JSON line instead. Ctrl-C stops
    /// watching, not the run.
    Watch(RunArgs),
    /// Cancel a queued or running run. Agents stop, clean up, and the run becomes CANCELED.
    Cancel(RunArgs),
}

/// Arguments of `run list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only runs of this cluster (name or id).
    #[arg(long, value_name = "CLUSTER", value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub cluster: Option<String>,
    /// Only runs of this kind.
    #[arg(long, value_enum, value_name = "KIND")]
    pub kind: Option<RunKindArg>,
    /// Only runs in this state. Repeat, or separate with commas, for several: e.g.
    /// --state queued,running,canceling lists the active runs.
    #[arg(
        long = "state",
        value_enum,
        value_name = "STATE",
        value_delimiter = ','
    )]
    pub states: Vec<RunStateArg>,
    /// Only runs started by this schedule (name or id; an id also finds the runs of a
    /// deleted schedule).
    #[arg(long, value_name = "SCHEDULE", value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub schedule: Option<String>,
    #[command(flatten)]
    pub pages: PageArgs,
}

/// A run kind on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RunKindArg {
    Backup,
    Restore,
    Validate,
    Purge,
}

impl From<RunKindArg> for proto::RunKind {
    fn from(kind: RunKindArg) -> Self {
        match kind {
            RunKindArg::Backup => Self::Backup,
            RunKindArg::Restore => Self::Restore,
            RunKindArg::Validate => Self::Validate,
            RunKindArg::Purge => Self::Purge,
        }
    }
}

/// A run state on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RunStateArg {
    Queued,
    Running,
    Succeeded,
    Failed,
    Canceling,
    Canceled,
}

impl From<RunStateArg> for proto::RunState {
    fn from(state: RunStateArg) -> Self {
        match state {
            RunStateArg::Queued => Self::Queued,
            RunStateArg::Running => Self::Running,
            RunStateArg::Succeeded => Self::Succeeded,
            RunStateArg::Failed => Self::Failed,
            RunStateArg::Canceling => Self::Canceling,
            RunStateArg::Canceled => Self::Canceled,
        }
    }
}

/// A command that takes one run.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Id of the run.
    #[arg(value_name = "ID", value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub run_id: String,
}

/// Runs a `run` command.
pub async fn run(command: RunCommand, session: &Session) -> Result<(), CliError> {
    match command {
        RunCommand::List(args) => list(args, session).await,
        RunCommand::Show(args) => show(args, session).await,
        RunCommand::Watch(args) => {
            let client = session.connect().await?;
            watch::watch(session, &client, &args.run_id).await
        }
        RunCommand::Cancel(args) => cancel(args, session).await,
    }
}

/// The id of a schedule named by name or id: an id is taken as it is (its schedule may be
/// deleted), a name is looked up.
async fn schedule_id(
    client: &coffer_client::CofferClient,
    schedule: &str,
) -> Result<String, CliError> {
    if is_uuid(schedule) {
        return Ok(schedule.to_owned());
    }
    let response = client
        .schedules()
        .get_schedule(proto::GetScheduleRequest {
            schedule: schedule.to_owned(),
        })
        .await?
        .into_inner();
    response
        .schedule
        .map(|schedule| schedule.id)
        .ok_or_else(|| CliError::Protocol("the response has no schedule".to_owned()))
}

/// Whether `text` has the form of a UUID (8-4-4-4-12 hexadecimal digits).
fn is_uuid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.len() == 5
        && groups.iter().zip([8, 4, 4, 4, 12]).all(|(group, length)| {
            group.len() == length && group.chars().all(|c| c.is_ascii_hexdigit())
        })
}

/// The filters of `run list`; paging is added per page.
pub fn list_request(args: &ListArgs) -> proto::ListRunsRequest {
    let mut states: Vec<i32> = Vec::with_capacity(args.states.len());
    for state in &args.states {
        let state = proto::RunState::from(*state) as i32;
        if !states.contains(&state) {
            states.push(state);
        }
    }
    proto::ListRunsRequest {
        cluster: args.cluster.clone().unwrap_or_default(),
        kind: args.kind.map_or(proto::RunKind::Unspecified, Into::into) as i32,
        states,
        ..Default::default()
    }
}

async fn list(args: ListArgs, session: &Session) -> Result<(), CliError> {
    let mut filters = list_request(&args);
    let client = session.connect().await?;
    if let Some(schedule) = &args.schedule {
        filters.schedule_id = schedule_id(&client, schedule).await?;
    }
    let runs = client.runs();
    let page = fetch_pages(args.pages, |page_size, page_token| {
        let mut runs = runs.clone();
        let request = proto::ListRunsRequest {
            page_size,
            page_token,
            ..filters.clone()
        };
        async move {
            let page = runs.list_runs(request).await?.into_inner();
            Ok(Page {
                items: page.runs,
                next_page_token: page.next_page_token,
            })
        }
    })
    .await?;
    let response = proto::ListRunsResponse {
        runs: page.items,
        next_page_token: page.next_page_token,
    };
    let now = SystemTime::now();
    session.output.list(
        &response,
        "runs",
        response.runs.len(),
        &response.next_page_token,
        "no runs found",
        |response| render_run_list(&response.runs, now),
    )
}

async fn show(args: RunArgs, session: &Session) -> Result<(), CliError> {
    let client = session.connect().await?;
    let response = client
        .runs()
        .get_run(proto::GetRunRequest {
            run_id: args.run_id,
        })
        .await?
        .into_inner();
    // A backup run keeps its location's id (names can change): shown with the current name, or
    // alone when the location is gone.
    let location_name = match response.run.as_ref().and_then(|run| run.spec.as_ref()) {
        Some(proto::run::Spec::Backup(backup)) if !backup.location.is_empty() => client
            .locations()
            .get_location(proto::GetLocationRequest {
                location: backup.location.clone(),
            })
            .await
            .ok()
            .and_then(|response| response.into_inner().location)
            .map(|location| location.name),
        _ => None,
    };
    session.output.response(&response, |response| {
        Ok(render_run(
            required_run(response.run.as_ref())?,
            location_name.as_deref(),
            SystemTime::now(),
        ))
    })
}

async fn cancel(args: RunArgs, session: &Session) -> Result<(), CliError> {
    let client = session.connect().await?;
    let response = client
        .runs()
        .cancel_run(proto::CancelRunRequest {
            run_id: args.run_id,
        })
        .await?
        .into_inner();
    match session.output.format() {
        OutputFormat::Json => session.output.response(&response, |_| Ok(String::new()))?,
        OutputFormat::Table => {
            let run = required_run(response.run.as_ref())?;
            session.output.note(cancel_note(run));
        }
    }
    Ok(())
}

/// What `run cancel` says on stderr.
fn cancel_note(run: &proto::Run) -> String {
    match run.state() {
        proto::RunState::Canceling => format!(
            "run {} is CANCELING: its agents are stopping and cleaning up \
             (`cofferctl run watch {}` follows it to CANCELED)",
            run.id, run.id
        ),
        _ => format!("run {} is {}", run.id, format::run_state(run.state)),
    }
}

/// The run a response must carry.
fn required_run(run: Option<&proto::Run>) -> Result<&proto::Run, CliError> {
    run.ok_or_else(|| CliError::Protocol("the response has no run".to_owned()))
}

/// `prod`, or the id when the name is unknown.
fn cluster_cell(run: &proto::Run) -> String {
    if run.cluster_name.is_empty() {
        or_none(&run.cluster_id)
    } else {
        run.cluster_name.clone()
    }
}

/// `run list`: one row per run.
fn render_run_list(runs: &[proto::Run], now: SystemTime) -> String {
    let mut table = Table::new([
        "ID", "CLUSTER", "KIND", "STATE", "CREATED", "DURATION", "PROGRESS",
    ]);
    for run in runs {
        let totals = run.totals.unwrap_or_default();
        table.push([
            run.id.clone(),
            cluster_cell(run),
            kind_cell(run),
            format::run_state(run.state),
            format::timestamp(run.create_time.as_ref()),
            format::elapsed(run.start_time.as_ref(), run.finish_time.as_ref(), now),
            format::percent(totals.bytes_done, totals.bytes_total),
        ]);
    }
    table.render()
}

/// `run show`: the run's fields and parameters (a backup's location by `location_name` when
/// known), then each node's progress.
fn render_run(run: &proto::Run, location_name: Option<&str>, now: SystemTime) -> String {
    let mut rows = vec![
        ("ID", run.id.clone()),
        (
            "Cluster",
            format::name_with_id(&run.cluster_name, &run.cluster_id),
        ),
        ("Kind", kind_cell(run)),
        ("State", format::run_state(run.state)),
        ("Error", or_none(&run.error_message)),
        ("Backup", or_none(&run.backup_id)),
    ];
    rows.extend(spec_rows(run, location_name));
    rows.extend([
        ("Schedule", or_none(&run.schedule_id)),
        ("Started by", or_none(&run.started_by)),
        ("Idempotency key", or_none(&run.idempotency_key)),
        ("Created", format::timestamp(run.create_time.as_ref())),
        ("Started", format::timestamp(run.start_time.as_ref())),
        ("Finished", format::timestamp(run.finish_time.as_ref())),
        (
            "Duration",
            format::elapsed(run.start_time.as_ref(), run.finish_time.as_ref(), now),
        ),
        ("Progress", run_line(run)),
    ]);
    let mut out = fields(rows);
    out.push('\n');
    out.push_str(&render_node_progress(run));
    out
}

/// The parameters a run was started with, as `run show` rows.
fn spec_rows(run: &proto::Run, location_name: Option<&str>) -> Vec<(&'static str, String)> {
    use proto::restore_spec::Source;
    use proto::run::Spec;

    match &run.spec {
        Some(Spec::Validate(proto::ValidateSpec { location, .. }))
        | Some(Spec::Purge(proto::PurgeSpec { location })) => vec![(
            "Location",
            match location_name {
                Some(name) => format::name_with_id(name, location),
                None => or_none(location),
            },
        )],
        Some(Spec::Backup(backup)) => vec![
            ("Backup kind", format::backup_kind(backup.kind)),
            (
                "Location",
                match location_name {
                    Some(name) => format::name_with_id(name, &backup.location),
                    None => or_none(&backup.location),
                },
            ),
            ("Filter", describe_filter(backup.filter.as_ref())),
            ("Limits", describe_limits(backup.limits.as_ref())),
            ("Labels", format::labels(&backup.labels)),
        ],
        Some(Spec::Restore(restore)) => {
            let source = match &restore.source {
                Some(Source::BackupId(backup_id)) => format!("backup {backup_id}"),
                Some(Source::PointInTime(point)) => {
                    let mut source = format!(
                        "newest backup of {} at or before {}",
                        point.source_cluster,
                        format::timestamp(point.as_of_time.as_ref())
                    );
                    if !point.location.is_empty() {
                        source.push_str(&format!(" at {}", point.location));
                    }
                    source
                }
                None => NONE.to_owned(),
            };
            let mappings = if restore.node_mappings.is_empty() {
                "each node onto the node with its id".to_owned()
            } else {
                restore
                    .node_mappings
                    .iter()
                    .map(|mapping| {
                        format!("{}->{}", mapping.source_node_id, mapping.target_node_id)
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let hook = restore
                .post_restore_hook
                .as_ref()
                .filter(|hook| !hook.command.is_empty())
                .map_or_else(|| NONE.to_owned(), |hook| hook.command.join(" "));
            vec![
                ("Source", source),
                ("Nodes", mappings),
                ("Filter", describe_filter(restore.filter.as_ref())),
                (
                    "Overwrite",
                    if restore.overwrite { "yes" } else { "no" }.to_owned(),
                ),
                ("Limits", describe_limits(restore.limits.as_ref())),
                ("Hook", hook),
            ]
        }
        None => Vec::new(),
    }
}

/// One row per node: phase, files, bytes, skipped files, rate, ETA and last error.
fn render_node_progress(run: &proto::Run) -> String {
    let restore = run.kind() == proto::RunKind::Restore;
    let mut table = if restore {
        Table::new([
            "NODE ID",
            "SOURCE",
            "PHASE",
            "FILES",
            "BYTES",
            "SKIPPED",
            "RATE",
            "ETA",
            "LAST ERROR",
        ])
    } else {
        Table::new([
            "NODE ID",
            "PHASE",
            "FILES",
            "BYTES",
            "SKIPPED",
            "RATE",
            "ETA",
            "LAST ERROR",
        ])
    };
    for node in &run.nodes {
        let progress = node.progress.unwrap_or_default();
        let mut row = vec![node.node_id.clone()];
        if restore {
            row.push(or_none(&node.source_node_id));
        }
        row.extend([
            format::node_phase(node.phase),
            format::count_of(progress.files_done, progress.files_total),
            format::size_of(progress.bytes_done, progress.bytes_total),
            progress.files_skipped.to_string(),
            format::rate(progress.rate_bytes_per_second),
            format::eta(progress.eta.as_ref()),
            node.last_error.clone(),
        ]);
        table.push(row);
    }
    table.render()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::Parser as _;

    use super::*;
    use crate::cli::{Cli, Command};

    fn parse(args: &[&str]) -> Result<RunCommand, clap::Error> {
        let cli = Cli::try_parse_from(["cofferctl", "run"].iter().chain(args).copied())?;
        match cli.command {
            Command::Run(command) => Ok(command),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn list_filters_become_the_request() {
        let Ok(RunCommand::List(args)) = parse(&[
            "list",
            "--cluster",
            "prod",
            "--kind",
            "backup",
            "--state",
            "queued,running",
            "--state",
            "canceling",
            "--state",
            "running",
        ]) else {
            panic!("not a valid run list");
        };
        assert_eq!(
            list_request(&args),
            proto::ListRunsRequest {
                cluster: "prod".to_owned(),
                kind: proto::RunKind::Backup as i32,
                states: vec![
                    proto::RunState::Queued as i32,
                    proto::RunState::Running as i32,
                    proto::RunState::Canceling as i32,
                ],
                ..Default::default()
            }
        );
        for bad in [
            &["list", "--state", "paused"][..],
            &["list", "--kind", "snapshot"],
            &["watch"],
            &["cancel", ""],
        ] {
            assert_eq!(
                parse(bad).expect_err("usage error").exit_code(),
                2,
                "{bad:?}"
            );
        }
    }

    fn running_backup() -> proto::Run {
        let at = |seconds| Some(prost_types::Timestamp { seconds, nanos: 0 });
        proto::Run {
            id: "r-1".to_owned(),
            cluster_id: "c-1".to_owned(),
            cluster_name: "prod".to_owned(),
            kind: proto::RunKind::Backup as i32,
            state: proto::RunState::Running as i32,
            spec: Some(proto::run::Spec::Backup(proto::BackupSpec {
                kind: proto::BackupKind::Incremental as i32,
                location: "l-1".to_owned(),
                ..Default::default()
            })),
            create_time: at(1_700_000_000),
            start_time: at(1_700_000_001),
            nodes: vec![proto::NodeProgress {
                node_id: "a".to_owned(),
                phase: proto::NodePhase::Uploading as i32,
                progress: Some(proto::ProgressCounters {
                    files_total: 10,
                    files_done: 4,
                    files_skipped: 2,
                    bytes_total: 4 << 20,
                    bytes_done: 1 << 20,
                    rate_bytes_per_second: 1 << 20,
                    eta: Some(prost_types::Duration {
                        seconds: 3,
                        nanos: 0,
                    }),
                    ..Default::default()
                }),
                last_error: "retrying: timeout".to_owned(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn show_renders_the_run_its_spec_and_node_progress() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_061);
        let rendered = render_run(&running_backup(), Some("nas"), now);
        assert!(
            rendered.starts_with(
                "ID:               r-1\n\
                 Cluster:          prod (c-1)\n\
                 Kind:             BACKUP\n\
                 State:            RUNNING\n\
                 Error:            -\n\
                 Backup:           -\n\
                 Backup kind:      INCREMENTAL\n\
                 Location:         nas (l-1)\n\
                 Filter:           -\n\
                 Limits:           defaults\n"
            ),
            "{rendered}"
        );
        assert!(rendered.contains("Duration:         1m00s\n"), "{rendered}");
        // A location deleted since: its id alone.
        let rendered = render_run(&running_backup(), None, now);
        assert!(
            rendered.contains("Backup kind:      INCREMENTAL\nLocation:         l-1\n"),
            "{rendered}"
        );
        assert!(
            rendered.ends_with(
                "NODE ID   PHASE       FILES   BYTES               SKIPPED   RATE        ETA   LAST ERROR\n\
                 a         UPLOADING   4/10    1.0 MiB / 4.0 MiB   2         1.0 MiB/s   3s    retrying: timeout\n"
            ),
            "{rendered}"
        );
    }

    #[test]
    fn list_rows_and_cancel_notes() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_061);
        let mut run = running_backup();
        run.dry_run = true;
        assert_eq!(
            render_run_list(&[run.clone()], now),
            "ID    CLUSTER   KIND               STATE     CREATED                DURATION   PROGRESS\n\
             r-1   prod      BACKUP (dry run)   RUNNING   2023-11-14T22:13:20Z   1m00s      -\n"
        );
        run.state = proto::RunState::Canceling as i32;
        assert!(cancel_note(&run).starts_with("run r-1 is CANCELING: "));
        run.state = proto::RunState::Canceled as i32;
        assert_eq!(cancel_note(&run), "run r-1 is CANCELED");
    }
}
