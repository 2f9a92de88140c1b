//! `cofferctl schedule ...`: the commands of `coffer.v1.ScheduleService`.
//!
//! `schedule update` changes only what its flags name: the server replaces the backup
//! parameters, retention and retry policy whole, so the command reads the schedule first and
//! sends its current values with the flags applied on top.

use std::time::Duration;

use clap::{ArgGroup, Args, Subcommand};

use coffer_client::proto;

use crate::cli::exit::EXIT_CODES_HELP;
use crate::cli::format::{self, NONE, or_none};
use crate::cli::output::OutputFormat;
use crate::cli::paging::{Page, PageArgs, fetch_pages};
use crate::cli::parse::{Label, labels_to_map, parse_label};
use crate::cli::table::{Table, fields};
use crate::cli::transfer::{FilterArgs, LimitArgs, describe_filter, describe_limits};
use crate::cli::{CliError, Session, watch};

/// Fires shown by `schedule show`.
const RECENT_FIRES: i32 = 10;

/// The `schedule` commands.
#[derive(Debug, Subcommand)]
#[command(after_long_help = EXIT_CODES_HELP)]
pub enum ScheduleCommand {
    /// Create a schedule: backups of a cluster that the server starts by itself, on a cron
    /// expression in a time zone (--cron, --time-zone) or at a fixed interval (--every).
    ///
    /// A fire that finds a run active on the cluster is skipped; a server that was down over
    /// fire times fires once when back. Failed runs are retried with --retries; --keep-* rules
    /// delete the schedule's older backups after each one it commits (the newest is always
    /// kept).
    Create(Box<CreateArgs>),
    /// List schedules by name.
    List(ListArgs),
    /// Show a schedule: its settings, its next fire times (in its time zone too) and its
    /// latest fires.
    Show(ScheduleArgs),
    /// Change a schedule: only what the flags name changes.
    Update(Box<UpdateArgs>),
    /// Pause a schedule: it fires no more (and drops a pending retry) until resumed.
    Pause(ScheduleArgs),
    /// Resume a paused schedule; its next fire time is computed from now.
    Resume(ScheduleArgs),
    /// Fire a schedule now, as at one of its times, and print the run it started.
    ///
    /// Exits 7 (failed precondition) when the fire was skipped because a run is active on the
    /// cluster, or could not start a run. With --watch, follows the run as `backup start
    /// --watch` does.
    Run(RunArgs),
    /// List a schedule's fires, newest first: the runs they started, or why they started none.
    Fires(FiresArgs),
    /// Delete a schedule. Runs it started go on; the backups it made are kept.
    Delete(ScheduleArgs),
}

/// The backup parameters of `schedule create`.
#[derive(Debug, Clone, Args)]
pub struct BackupArgs {
    /// Make incremental backups (each based on the newest backup at the location).
    #[arg(long)]
    pub incremental: bool,
    #[command(flatten)]
    pub filter: FilterArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
    /// A label to put on each backup. Repeat for more.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<Label>,
}

/// `--keep-*`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Args)]
pub struct RetentionArgs {
    /// Keep the newest N backups of the schedule.
    #[arg(long, value_name = "N")]
    pub keep_last: Option<u32>,
    /// Keep the backups that started within this long before now, e.g. 30d or 12h.
    #[arg(long, value_name = "DURATION", value_parser = coffer_process::parse_duration)]
    pub keep_within: Option<Duration>,
    /// Keep the newest backup of each of the last N days that have one.
    #[arg(long, value_name = "N")]
    pub keep_daily: Option<u32>,
    /// Keep the newest backup of each of the last N weeks that have one.
    #[arg(long, value_name = "N")]
    pub keep_weekly: Option<u32>,
    /// Keep the newest backup of each of the last N months that have one.
    #[arg(long, value_name = "N")]
    pub keep_monthly: Option<u32>,
}

impl RetentionArgs {
    fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// `current` with the given flags applied.
    fn apply(self, current: Option<proto::RetentionPolicy>) -> proto::RetentionPolicy {
        let mut policy = current.unwrap_or_default();
        if let Some(keep) = self.keep_last {
            policy.keep_last = keep;
        }
        if let Some(within) = self.keep_within {
            policy.keep_within = prost_types::Duration::try_from(within).ok();
        }
        if let Some(keep) = self.keep_daily {
            policy.keep_daily = keep;
        }
        if let Some(keep) = self.keep_weekly {
            policy.keep_weekly = keep;
        }
        if let Some(keep) = self.keep_monthly {
            policy.keep_monthly = keep;
        }
        policy
    }
}

/// `--retries`, `--retry-wait`, `--retry-max-wait`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Args)]
pub struct RetryArgs {
    /// Start a failed run again up to N times (0: never).
    #[arg(long, value_name = "N")]
    pub retries: Option<u32>,
    /// Wait before the first retry, e.g. 10m; each next wait doubles. Default: 10m.
    #[arg(long, value_name = "DURATION", value_parser = coffer_process::parse_duration)]
    pub retry_wait: Option<Duration>,
    /// Longest wait between retries. Default: 6h.
    #[arg(long, value_name = "DURATION", value_parser = coffer_process::parse_duration)]
    pub retry_max_wait: Option<Duration>,
}

impl RetryArgs {
    fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// `current` with the given flags applied.
    fn apply(self, current: Option<proto::RetryPolicy>) -> proto::RetryPolicy {
        let mut policy = current.unwrap_or_default();
        if let Some(retries) = self.retries {
            policy.attempts = retries;
        }
        if let Some(wait) = self.retry_wait {
            policy.first_wait = prost_types::Duration::try_from(wait).ok();
        }
        if let Some(wait) = self.retry_max_wait {
            policy.max_wait = prost_types::Duration::try_from(wait).ok();
        }
        policy
    }
}

/// How thorough the validation after each backup is (`--validate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ValidateDepth {
    /// The listing against every manifest: missing objects, impossible sizes.
    Quick,
    /// Quick, and objects downloaded and their BLAKE3 verified.
    Deep,
}

/// `--validate`, `--validate-sample`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Args)]
pub struct ValidationArgs {
    /// Validate the location after each backup of the schedule commits.
    #[arg(long, value_name = "DEPTH")]
    pub validate: Option<ValidateDepth>,
    /// With --validate deep, verify this percent of the objects each time, those verified
    /// longest ago first (every object is verified within 100/PERCENT backups).
    #[arg(long, value_name = "PERCENT", requires = "validate",
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub validate_sample: Option<u32>,
}

impl ValidationArgs {
    fn request(self) -> Option<proto::ScheduleValidation> {
        self.validate.map(|depth| proto::ScheduleValidation {
            depth: match depth {
                ValidateDepth::Quick => proto::ValidationDepth::Quick,
                ValidateDepth::Deep => proto::ValidationDepth::Deep,
            }
            .into(),
            sample_percent: self.validate_sample.unwrap_or(0),
        })
    }
}

/// `--cron`, `--time-zone`, `--every`.
#[derive(Debug, Clone, Default, Args)]
pub struct TriggerArgs {
    /// Fire at the times of this 5-field cron expression (minute hour day-of-month month
    /// day-of-week), e.g. '30 2 * * *' or '0 */6 * * MON-FRI'.
    #[arg(long, value_name = "EXPR", conflicts_with = "every")]
    pub cron: Option<String>,
    /// IANA time zone the cron expression is read in, e.g. Europe/Berlin. Default: UTC.
    #[arg(long, value_name = "ZONE")]
    pub time_zone: Option<String>,
    /// Fire at this interval instead, e.g. 6h or 30m (at least 1m).
    #[arg(long, value_name = "DURATION", value_parser = coffer_process::parse_duration)]
    pub every: Option<Duration>,
}

/// The trigger the flags give, if any.
///
/// Fails with [`CliError::Usage`] for a time zone without a cron expression (an interval is
/// elapsed time, in no zone).
fn trigger(args: &TriggerArgs) -> Result<Option<Trigger>, CliError> {
    if let Some(expression) = &args.cron {
        return Ok(Some(Trigger::Cron(proto::CronTrigger {
            expression: expression.clone(),
            time_zone: args.time_zone.clone().unwrap_or_default(),
        })));
    }
    if args.time_zone.is_some() {
        return Err(CliError::Usage(
            "--time-zone goes with --cron: an interval (--every) is elapsed time".to_owned(),
        ));
    }
    Ok(args
        .every
        .map(|every| Trigger::Interval(prost_types::Duration::try_from(every).unwrap_or_default())))
}

enum Trigger {
    Cron(proto::CronTrigger),
    Interval(prost_types::Duration),
}

/// Arguments of `schedule create`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("trigger").required(true).args(["cron", "every"])))]
pub struct CreateArgs {
    /// Name of the schedule: lowercase letters, digits, '-' and '_', starting with a letter.
    #[arg(value_name = "NAME", value_parser = non_empty())]
    pub name: String,
    /// Name or id of the cluster to back up.
    #[arg(long, value_name = "CLUSTER", value_parser = non_empty())]
    pub cluster: String,
    /// Name or id of the location to store the backups at.
    #[arg(long, value_name = "LOCATION", value_parser = non_empty())]
    pub location: String,
    #[command(flatten)]
    pub trigger: TriggerArgs,
    #[command(flatten)]
    pub backup: BackupArgs,
    #[command(flatten)]
    pub retention: RetentionArgs,
    #[command(flatten)]
    pub retry: RetryArgs,
    #[command(flatten)]
    pub validation: ValidationArgs,
    /// Create the schedule paused.
    #[arg(long)]
    pub paused: bool,
}

/// Arguments of `schedule update`.
#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// Name or id of the schedule.
    #[arg(value_name = "SCHEDULE", value_parser = non_empty())]
    pub schedule: String,
    /// New name.
    #[arg(long = "name", value_name = "NAME", value_parser = non_empty())]
    pub new_name: Option<String>,
    #[command(flatten)]
    pub trigger: TriggerArgs,
    /// Store the backups at this location (name or id) from now on.
    #[arg(long, value_name = "LOCATION", value_parser = non_empty())]
    pub location: Option<String>,
    /// Make incremental backups from now on.
    #[arg(long, conflicts_with = "full")]
    pub incremental: bool,
    /// Make full backups from now on.
    #[arg(long)]
    pub full: bool,
    /// Replace the backups' path filter and limits with the ones given (none given: keep them).
    #[command(flatten)]
    pub filter: FilterArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
    /// Set a label on the backups from now on (adds it or overwrites its value).
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<Label>,
    #[command(flatten)]
    pub retention: RetentionArgs,
    /// Keep every backup: drop all retention rules.
    #[arg(long, conflicts_with_all = ["keep_last", "keep_within", "keep_daily", "keep_weekly", "keep_monthly"])]
    pub keep_all: bool,
    #[command(flatten)]
    pub retry: RetryArgs,
    #[command(flatten)]
    pub validation: ValidationArgs,
    /// Validate nothing after the schedule's backups any more.
    #[arg(long, conflicts_with = "validate")]
    pub no_validate: bool,
}

/// Arguments of `schedule list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only schedules of this cluster (name or id).
    #[arg(long, value_name = "CLUSTER", value_parser = non_empty())]
    pub cluster: Option<String>,
    #[command(flatten)]
    pub pages: PageArgs,
}

/// A command that takes one schedule.
#[derive(Debug, Args)]
pub struct ScheduleArgs {
    /// Name or id of the schedule.
    #[arg(value_name = "SCHEDULE", value_parser = non_empty())]
    pub schedule: String,
}

/// Arguments of `schedule run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Name or id of the schedule.
    #[arg(value_name = "SCHEDULE", value_parser = non_empty())]
    pub schedule: String,
    /// Follow the run to its end, showing progress, and exit by how it ended.
    #[arg(long)]
    pub watch: bool,
}

/// Arguments of `schedule fires`.
#[derive(Debug, Args)]
pub struct FiresArgs {
    /// Name or id of the schedule.
    #[arg(value_name = "SCHEDULE", value_parser = non_empty())]
    pub schedule: String,
    #[command(flatten)]
    pub pages: PageArgs,
}

fn non_empty() -> clap::builder::NonEmptyStringValueParser {
    clap::builder::NonEmptyStringValueParser::new()
}

/// Runs a `schedule` command.
pub async fn run(command: ScheduleCommand, session: &Session) -> Result<(), CliError> {
    match command {
        ScheduleCommand::Create(args) => create(*args, session).await,
        ScheduleCommand::List(args) => list(args, session).await,
        ScheduleCommand::Show(args) => show(args, session).await,
        ScheduleCommand::Update(args) => update(*args, session).await,
        ScheduleCommand::Pause(args) => set_paused(args, true, session).await,
        ScheduleCommand::Resume(args) => set_paused(args, false, session).await,
        ScheduleCommand::Run(args) => run_now(args, session).await,
        ScheduleCommand::Fires(args) => fires(args, session).await,
        ScheduleCommand::Delete(args) => delete(args, session).await,
    }
}

/// The request `schedule create` sends.
///
/// Fails with [`CliError::Usage`] when a label key is given twice with different values.
pub fn create_request(args: &CreateArgs) -> Result<proto::CreateScheduleRequest, CliError> {
    let kind = if args.backup.incremental {
        proto::BackupKind::Incremental
    } else {
        proto::BackupKind::Full
    };
    let trigger = match trigger(&args.trigger)? {
        Some(Trigger::Cron(cron)) => proto::create_schedule_request::Trigger::Cron(cron),
        Some(Trigger::Interval(every)) => proto::create_schedule_request::Trigger::Interval(every),
        None => return Err(CliError::Usage("give --cron or --every".to_owned())),
    };
    Ok(proto::CreateScheduleRequest {
        name: args.name.clone(),
        cluster: args.cluster.clone(),
        trigger: Some(trigger),
        backup: Some(proto::BackupSpec {
            kind: kind as i32,
            location: args.location.clone(),
            filter: args.backup.filter.clone().into_filter(),
            limits: args.backup.limits.into_limits(),
            labels: labels_to_map(args.backup.labels.clone(), "--label")?,
        }),
        retention: (!args.retention.is_empty()).then(|| args.retention.apply(None)),
        retry: (!args.retry.is_empty()).then(|| args.retry.apply(None)),
        validation: args.validation.request(),
        paused: args.paused,
    })
}

/// The request `schedule update` sends for a schedule that is `current` now.
///
/// Fails with [`CliError::Usage`] when no flag asks for a change, or a label is given twice.
pub fn update_request(
    args: &UpdateArgs,
    current: &proto::Schedule,
) -> Result<proto::UpdateScheduleRequest, CliError> {
    let filter = args.filter.clone().into_filter();
    let limits = args.limits.into_limits();
    let backup_changed = args.location.is_some()
        || args.incremental
        || args.full
        || filter.is_some()
        || limits.is_some()
        || !args.labels.is_empty();
    let backup = if backup_changed {
        let mut backup = current.backup.clone().unwrap_or_default();
        if let Some(location) = &args.location {
            backup.location = location.clone();
        }
        if args.incremental {
            backup.kind = proto::BackupKind::Incremental as i32;
        }
        if args.full {
            backup.kind = proto::BackupKind::Full as i32;
        }
        if filter.is_some() {
            backup.filter = filter;
        }
        if limits.is_some() {
            backup.limits = limits;
        }
        backup
            .labels
            .extend(labels_to_map(args.labels.clone(), "--label")?);
        Some(backup)
    } else {
        None
    };
    let retention = if args.keep_all {
        Some(proto::RetentionPolicy::default())
    } else {
        (!args.retention.is_empty()).then(|| args.retention.apply(current.retention))
    };
    let retry = (!args.retry.is_empty()).then(|| args.retry.apply(current.retry));
    let trigger = trigger(&args.trigger)?.map(|trigger| match trigger {
        Trigger::Cron(cron) => proto::update_schedule_request::Trigger::Cron(cron),
        Trigger::Interval(every) => proto::update_schedule_request::Trigger::Interval(every),
    });
    if args.new_name.is_none()
        && trigger.is_none()
        && backup.is_none()
        && retention.is_none()
        && retry.is_none()
        && args.validation.validate.is_none()
        && !args.no_validate
    {
        return Err(CliError::Usage(
            "nothing to change: give --name, --cron, --every, --location, a --keep-* or a \
             --retry* or a --validate flag, ..."
                .to_owned(),
        ));
    }
    Ok(proto::UpdateScheduleRequest {
        schedule: args.schedule.clone(),
        name: args.new_name.clone(),
        trigger,
        backup,
        retention,
        paused: None,
        retry,
        validation: args.validation.request(),
        remove_validation: args.no_validate,
    })
}

async fn create(args: CreateArgs, session: &Session) -> Result<(), CliError> {
    let request = create_request(&args)?;
    let client = session.connect().await?;
    let response = client
        .schedules()
        .create_schedule(request)
        .await?
        .into_inner();
    session.output.response(&response, |response| {
        Ok(render_schedule(
            schedule_of(response.schedule.as_ref())?,
            &[],
        ))
    })
}

async fn list(args: ListArgs, session: &Session) -> Result<(), CliError> {
    let client = session.connect().await?;
    let schedules = client.schedules();
    let cluster = args.cluster.unwrap_or_default();
    let page = fetch_pages(args.pages, |page_size, page_token| {
        let mut schedules = schedules.clone();
        let request = proto::ListSchedulesRequest {
            page_size,
            page_token,
            cluster: cluster.clone(),
        };
        async move {
            let page = schedules.list_schedules(request).await?.into_inner();
            Ok(Page {
                items: page.schedules,
                next_page_token: page.next_page_token,
            })
        }
    })
    .await?;
    let response = proto::ListSchedulesResponse {
        schedules: page.items,
        next_page_token: page.next_page_token,
    };
    session.output.list(
        &response,
        "schedules",
        response.schedules.len(),
        &response.next_page_token,
        "no schedules found",
        |response| render_schedule_list(&response.schedules),
    )
}

async fn show(args: ScheduleArgs, session: &Session) -> Result<(), CliError> {
    let client = session.connect().await?;
    let response = client
        .schedules()
        .get_schedule(proto::GetScheduleRequest {
            schedule: args.schedule.clone(),
        })
        .await?
        .into_inner();
    let fires = match session.output.format() {
        OutputFormat::Json => Vec::new(),
        OutputFormat::Table => {
            client
                .schedules()
                .list_schedule_fires(proto::ListScheduleFiresRequest {
                    schedule: args.schedule,
                    page_size: RECENT_FIRES,
                    page_token: String::new(),
                })
                .await?
                .into_inner()
                .fires
        }
    };
    session.output.response(&response, |response| {
        Ok(render_schedule(
            schedule_of(response.schedule.as_ref())?,
            &fires,
        ))
    })
}

async fn update(args: UpdateArgs, session: &Session) -> Result<(), CliError> {
    let client = session.connect().await?;
    let current = client
        .schedules()
        .get_schedule(proto::GetScheduleRequest {
            schedule: args.schedule.clone(),
        })
        .await?
        .into_inner();
    let request = update_request(&args, schedule_of(current.schedule.as_ref())?)?;
    send_update(request, session, &client).await
}

async fn set_paused(args: ScheduleArgs, paused: bool, session: &Session) -> Result<(), CliError> {
    let client = session.connect().await?;
    let request = proto::UpdateScheduleRequest {
        schedule: args.schedule,
        paused: Some(paused),
        ..proto::UpdateScheduleRequest::default()
    };
    send_update(request, session, &client).await
}

async fn send_update(
    request: proto::UpdateScheduleRequest,
    session: &Session,
    client: &coffer_client::CofferClient,
) -> Result<(), CliError> {
    let response = client
        .schedules()
        .update_schedule(request)
        .await?
        .into_inner();
    session.output.response(&response, |response| {
        Ok(render_schedule(
            schedule_of(response.schedule.as_ref())?,
            &[],
        ))
    })
}

async fn run_now(args: RunArgs, session: &Session) -> Result<(), CliError> {
    let client = session.connect().await?;
    let response = client
        .schedules()
        .run_schedule(proto::RunScheduleRequest {
            schedule: args.schedule,
        })
        .await?
        .into_inner();
    let run_id = response
        .fire
        .as_ref()
        .map(|fire| fire.run_id.clone())
        .filter(|id| !id.is_empty())
        .ok_or_else(|| CliError::Protocol("the fire names no run".to_owned()))?;
    watch::started(session, &client, &response, &run_id, args.watch, "backup").await
}

async fn fires(args: FiresArgs, session: &Session) -> Result<(), CliError> {
    let client = session.connect().await?;
    let schedules = client.schedules();
    let page = fetch_pages(args.pages, |page_size, page_token| {
        let mut schedules = schedules.clone();
        let request = proto::ListScheduleFiresRequest {
            schedule: args.schedule.clone(),
            page_size,
            page_token,
        };
        async move {
            let page = schedules.list_schedule_fires(request).await?.into_inner();
            Ok(Page {
                items: page.fires,
                next_page_token: page.next_page_token,
            })
        }
    })
    .await?;
    let response = proto::ListScheduleFiresResponse {
        fires: page.items,
        next_page_token: page.next_page_token,
    };
    session.output.list(
        &response,
        "fires",
        response.fires.len(),
        &response.next_page_token,
        "the schedule never fired",
        |response| render_fires(&response.fires),
    )
}

async fn delete(args: ScheduleArgs, session: &Session) -> Result<(), CliError> {
    let client = session.connect().await?;
    let response = client
        .schedules()
        .delete_schedule(proto::DeleteScheduleRequest {
            schedule: args.schedule.clone(),
        })
        .await?
        .into_inner();
    match session.output.format() {
        OutputFormat::Json => session.output.response(&response, |_| Ok(String::new()))?,
        OutputFormat::Table => session
            .output
            .note(format_args!("deleted schedule {}", args.schedule)),
    }
    Ok(())
}

fn schedule_of(schedule: Option<&proto::Schedule>) -> Result<&proto::Schedule, CliError> {
    schedule.ok_or_else(|| CliError::Protocol("the response has no schedule".to_owned()))
}

/// `cron 30 2 * * * Europe/Berlin` or `every 6h`.
fn describe_trigger(trigger: Option<&proto::schedule::Trigger>) -> String {
    match trigger {
        Some(proto::schedule::Trigger::Cron(cron)) => format!(
            "cron {} {}",
            cron.expression,
            if cron.time_zone.is_empty() {
                "UTC"
            } else {
                &cron.time_zone
            }
        ),
        Some(proto::schedule::Trigger::Interval(every)) => format!("every {}", human(every)),
        None => NONE.to_owned(),
    }
}

fn human(duration: &prost_types::Duration) -> String {
    Duration::try_from(*duration)
        .map(|duration| humantime::format_duration(duration).to_string())
        .unwrap_or_else(|_| NONE.to_owned())
}

/// `last 7, within 30days, daily 7`; `keep all` without rules.
fn describe_retention(retention: Option<&proto::RetentionPolicy>) -> String {
    let Some(retention) = retention else {
        return "keep all".to_owned();
    };
    let mut rules = Vec::new();
    for (name, keep) in [
        ("last", retention.keep_last),
        ("daily", retention.keep_daily),
        ("weekly", retention.keep_weekly),
        ("monthly", retention.keep_monthly),
    ] {
        if keep > 0 {
            rules.push(format!("{name} {keep}"));
        }
    }
    if let Some(within) = &retention.keep_within {
        rules.push(format!("within {}", human(within)));
    }
    if rules.is_empty() {
        "keep all".to_owned()
    } else {
        format!("keep {}", rules.join(", "))
    }
}

/// `3 attempts, first after 10m, at most 6h apart`; `none`.
fn describe_validation(validation: Option<&proto::ScheduleValidation>) -> String {
    match validation {
        None => NONE.to_owned(),
        Some(validation) if validation.depth() == proto::ValidationDepth::Deep => format!(
            "deep after each backup, {}% of the objects each time",
            match validation.sample_percent {
                0 => 100,
                percent => percent,
            }
        ),
        Some(_) => "quick after each backup".to_owned(),
    }
}

fn describe_retry(retry: Option<&proto::RetryPolicy>) -> String {
    match retry {
        Some(retry) if retry.attempts > 0 => format!(
            "{} attempts, first after {}, at most {} apart",
            retry.attempts,
            retry.first_wait.as_ref().map_or(NONE.to_owned(), human),
            retry.max_wait.as_ref().map_or(NONE.to_owned(), human),
        ),
        _ => "none".to_owned(),
    }
}

fn fire_outcome(outcome: i32) -> String {
    let name = proto::FireOutcome::try_from(outcome).ok();
    format::enum_name(
        outcome,
        name.map(|name| name.as_str_name()),
        "FIRE_OUTCOME_",
    )
}

fn fire_cause(cause: i32) -> String {
    let name = proto::FireCause::try_from(cause).ok();
    format::enum_name(cause, name.map(|name| name.as_str_name()), "FIRE_CAUSE_")
}

/// `2026-03-28T01:30:00Z, STARTED run 0193...`
fn describe_fire(fire: Option<&proto::ScheduleFire>) -> String {
    let Some(fire) = fire else {
        return NONE.to_owned();
    };
    format!(
        "{} ({}), {}",
        format::timestamp(fire.fire_time.as_ref()),
        fire_cause(fire.cause).to_lowercase(),
        fire_detail(fire)
    )
}

/// `run 0193...`, `skipped: ...`, `failed: ...`.
fn fire_detail(fire: &proto::ScheduleFire) -> String {
    match proto::FireOutcome::try_from(fire.outcome) {
        Ok(proto::FireOutcome::Started) => format!("started run {}", fire.run_id),
        Ok(proto::FireOutcome::Skipped) => format!("skipped: {}", fire.message),
        _ => format!(
            "{}: {}",
            fire_outcome(fire.outcome).to_lowercase(),
            fire.message
        ),
    }
}

/// A fire time in UTC, and on the wall clock of `zone` when the schedule has one.
fn fire_time(time: &prost_types::Timestamp, zone: Option<&jiff::tz::TimeZone>) -> String {
    let utc = format::timestamp(Some(time));
    let local = zone.and_then(|zone| {
        jiff::Timestamp::new(time.seconds, time.nanos)
            .ok()
            .map(|at| {
                at.to_zoned(zone.clone())
                    .strftime("%Y-%m-%d %H:%M %Z (%:z)")
                    .to_string()
            })
    });
    match local {
        Some(local) => format!("{utc}  {local}"),
        None => utc,
    }
}

/// The schedule's cron time zone, when it names one this build knows.
fn schedule_zone(schedule: &proto::Schedule) -> Option<jiff::tz::TimeZone> {
    match &schedule.trigger {
        Some(proto::schedule::Trigger::Cron(cron)) if !cron.time_zone.is_empty() => {
            jiff::tz::TimeZone::get(&cron.time_zone).ok()
        }
        _ => None,
    }
}

/// `schedule list`: one row per schedule.
fn render_schedule_list(schedules: &[proto::Schedule]) -> String {
    let mut table = Table::new([
        "NAME",
        "CLUSTER",
        "TRIGGER",
        "NEXT FIRE",
        "LAST FIRE",
        "LAST RUN",
        "STATUS",
    ]);
    for schedule in schedules {
        let status = if schedule.paused {
            "paused".to_owned()
        } else if schedule.last_error.is_empty() {
            "ok".to_owned()
        } else {
            "error".to_owned()
        };
        table.push([
            schedule.name.clone(),
            format::name_with_id(&schedule.cluster_name, "")
                .replace(NONE, &format::short(&schedule.cluster_id, 8)),
            describe_trigger(schedule.trigger.as_ref()),
            format::timestamp(schedule.next_fire_time.as_ref()),
            format::timestamp(schedule.last_fire_time.as_ref()),
            format::run_state(schedule.last_run_state),
            status,
        ]);
    }
    table.render()
}

/// `schedule show`: the settings, the next fire times, then the latest fires.
fn render_schedule(schedule: &proto::Schedule, fires: &[proto::ScheduleFire]) -> String {
    let backup = schedule.backup.clone().unwrap_or_default();
    let last_run = if schedule.last_run_id.is_empty() {
        NONE.to_owned()
    } else {
        format!(
            "{} ({})",
            schedule.last_run_id,
            format::run_state(schedule.last_run_state)
        )
    };
    let mut out = fields([
        ("ID", schedule.id.clone()),
        ("Name", schedule.name.clone()),
        (
            "Cluster",
            if schedule.cluster_name.is_empty() {
                format!("{} (deleted)", schedule.cluster_id)
            } else {
                format::name_with_id(&schedule.cluster_name, &schedule.cluster_id)
            },
        ),
        ("Trigger", describe_trigger(schedule.trigger.as_ref())),
        (
            "Location",
            if schedule.location_name.is_empty() && !backup.location.is_empty() {
                format!("{} (deleted)", backup.location)
            } else {
                format::name_with_id(&schedule.location_name, &backup.location)
            },
        ),
        ("Kind", format::backup_kind(backup.kind)),
        ("Filter", describe_filter(backup.filter.as_ref())),
        ("Limits", describe_limits(backup.limits.as_ref())),
        ("Labels", format::labels(&backup.labels)),
        ("Retention", describe_retention(schedule.retention.as_ref())),
        ("Retries", describe_retry(schedule.retry.as_ref())),
        (
            "Validation",
            describe_validation(schedule.validation.as_ref()),
        ),
        (
            "Paused",
            if schedule.paused { "yes" } else { "no" }.to_owned(),
        ),
        (
            "Next fire",
            format::timestamp(schedule.next_fire_time.as_ref()),
        ),
        ("Retry at", format::timestamp(schedule.retry_time.as_ref())),
        ("Last fire", describe_fire(schedule.last_fire.as_ref())),
        ("Last run", last_run),
        ("Last error", or_none(&schedule.last_error)),
        ("Created", format::timestamp(schedule.create_time.as_ref())),
        ("Updated", format::timestamp(schedule.update_time.as_ref())),
    ]);
    out.push('\n');
    if schedule.upcoming_fire_times.is_empty() {
        out.push_str("No upcoming fires (paused).\n");
    } else {
        let zone = schedule_zone(schedule);
        out.push_str("Upcoming fires:\n");
        for time in &schedule.upcoming_fire_times {
            out.push_str(&format!("  {}\n", fire_time(time, zone.as_ref())));
        }
    }
    if !fires.is_empty() {
        out.push('\n');
        out.push_str(&render_fires(fires));
    }
    out
}

/// `schedule fires`: one row per fire.
fn render_fires(fires: &[proto::ScheduleFire]) -> String {
    let mut table = Table::new(["FIRE TIME", "CAUSE", "ATTEMPT", "OUTCOME", "RUN", "DETAIL"]);
    for fire in fires {
        let detail = if fire.active_run_id.is_empty() {
            or_none(&fire.message)
        } else {
            format!("active run {}", fire.active_run_id)
        };
        table.push([
            format::timestamp(fire.fire_time.as_ref()),
            fire_cause(fire.cause),
            fire.attempt.to_string(),
            fire_outcome(fire.outcome),
            or_none(&fire.run_id),
            detail,
        ]);
    }
    table.render()
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn parse(args: &[&str]) -> ScheduleCommand {
        let mut line = vec!["cofferctl", "schedule"];
        line.extend_from_slice(args);
        match Cli::try_parse_from(line)
            .expect("valid command line")
            .command
        {
            Command::Schedule(command) => command,
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn create_sends_the_trigger_backup_retention_and_retries() {
        let ScheduleCommand::Create(args) = parse(&[
            "create",
            "nightly",
            "--cluster",
            "prod",
            "--location",
            "vault",
            "--cron",
            "30 2 * * *",
            "--time-zone",
            "Europe/Berlin",
            "--incremental",
            "--keep-last",
            "7",
            "--keep-within",
            "30d",
            "--retries",
            "3",
            "--retry-wait",
            "5m",
        ]) else {
            panic!("not create");
        };
        let request = create_request(&args).expect("request");
        assert_eq!(
            request.trigger,
            Some(proto::create_schedule_request::Trigger::Cron(
                proto::CronTrigger {
                    expression: "30 2 * * *".into(),
                    time_zone: "Europe/Berlin".into(),
                }
            ))
        );
        let backup = request.backup.expect("backup");
        assert_eq!(backup.kind, proto::BackupKind::Incremental as i32);
        assert_eq!(backup.location, "vault");
        let retention = request.retention.expect("retention");
        assert_eq!(retention.keep_last, 7);
        assert_eq!(
            retention.keep_within.map(|within| within.seconds),
            Some(30 * 86_400)
        );
        let retry = request.retry.expect("retry");
        assert_eq!(retry.attempts, 3);
        assert_eq!(retry.first_wait.map(|wait| wait.seconds), Some(300));
        assert_eq!(retry.max_wait, None, "the server's default");
    }

    #[test]
    fn validation_flags_ask_for_a_validation_after_each_backup() {
        let base = [
            "create",
            "n",
            "--cluster",
            "c",
            "--location",
            "l",
            "--every",
            "1h",
        ];
        let create = |extra: &[&str]| {
            let mut argv = base.to_vec();
            argv.extend_from_slice(extra);
            let ScheduleCommand::Create(args) = parse(&argv) else {
                panic!("not create");
            };
            create_request(&args).expect("request").validation
        };
        assert_eq!(create(&[]), None);
        assert_eq!(
            create(&["--validate", "deep", "--validate-sample", "5"]),
            Some(proto::ScheduleValidation {
                depth: proto::ValidationDepth::Deep.into(),
                sample_percent: 5,
            })
        );
        assert_eq!(
            create(&["--validate", "quick"]).map(|v| v.depth()),
            Some(proto::ValidationDepth::Quick)
        );
        for wrong in [
            &["--validate-sample", "5"][..],
            &["--validate", "deep", "--validate-sample", "0"],
            &["--validate", "deep", "--validate-sample", "101"],
            &["--validate", "thorough"],
        ] {
            let mut argv = vec!["cofferctl", "schedule"];
            argv.extend_from_slice(&base);
            argv.extend_from_slice(wrong);
            assert_eq!(
                Cli::try_parse_from(argv).expect_err("refused").exit_code(),
                2,
                "{wrong:?}"
            );
        }
        let ScheduleCommand::Update(args) = parse(&["update", "n", "--no-validate"]) else {
            panic!("not update");
        };
        let request = update_request(&args, &proto::Schedule::default()).expect("request");
        assert!(request.remove_validation && request.validation.is_none());
    }

    #[test]
    fn create_takes_exactly_one_trigger() {
        let base = [
            "cofferctl",
            "schedule",
            "create",
            "n",
            "--cluster",
            "c",
            "--location",
            "l",
        ];
        let error = Cli::try_parse_from(base).expect_err("no trigger");
        assert_eq!(error.exit_code(), 2);
        let mut both = base.to_vec();
        both.extend(["--cron", "* * * * *", "--every", "1h"]);
        assert_eq!(Cli::try_parse_from(both).expect_err("both").exit_code(), 2);
        let ScheduleCommand::Create(args) = parse(&[
            "create",
            "n",
            "--cluster",
            "c",
            "--location",
            "l",
            "--every",
            "1h",
            "--time-zone",
            "UTC",
        ]) else {
            panic!("not create");
        };
        match create_request(&args) {
            Err(error @ CliError::Usage(_)) => assert_eq!(error.exit().code(), 2),
            other => panic!("a time zone without cron: {other:?}"),
        }
    }

    #[test]
    fn update_changes_only_what_its_flags_name() {
        let current = proto::Schedule {
            backup: Some(proto::BackupSpec {
                kind: proto::BackupKind::Full as i32,
                location: "loc-id".into(),
                labels: [("tier".to_string(), "gold".to_string())].into(),
                ..proto::BackupSpec::default()
            }),
            retention: Some(proto::RetentionPolicy {
                keep_last: 7,
                keep_daily: 3,
                ..proto::RetentionPolicy::default()
            }),
            ..proto::Schedule::default()
        };
        let ScheduleCommand::Update(args) = parse(&[
            "update",
            "nightly",
            "--keep-last",
            "2",
            "--label",
            "env=prod",
        ]) else {
            panic!("not update");
        };
        let request = update_request(&args, &current).expect("request");
        let retention = request.retention.expect("retention");
        assert_eq!((retention.keep_last, retention.keep_daily), (2, 3));
        let backup = request.backup.expect("backup, for the label");
        assert_eq!(backup.location, "loc-id");
        assert_eq!(backup.labels.len(), 2);
        assert!(request.trigger.is_none() && request.retry.is_none() && request.name.is_none());

        let ScheduleCommand::Update(args) = parse(&["update", "nightly"]) else {
            panic!("not update");
        };
        assert!(matches!(
            update_request(&args, &current),
            Err(CliError::Usage(_))
        ));
        let ScheduleCommand::Update(args) = parse(&["update", "nightly", "--keep-all"]) else {
            panic!("not update");
        };
        assert_eq!(
            update_request(&args, &current).expect("request").retention,
            Some(proto::RetentionPolicy::default())
        );
    }

    #[test]
    fn a_schedule_renders_its_trigger_rules_and_fire_times_in_its_zone() {
        let schedule = proto::Schedule {
            name: "nightly".into(),
            trigger: Some(proto::schedule::Trigger::Cron(proto::CronTrigger {
                expression: "30 2 * * *".into(),
                time_zone: "Europe/Berlin".into(),
            })),
            retention: Some(proto::RetentionPolicy {
                keep_last: 7,
                keep_within: Some(prost_types::Duration {
                    seconds: 86_400,
                    nanos: 0,
                }),
                ..proto::RetentionPolicy::default()
            }),
            // 2026-03-28T01:30:00Z is 02:30 CET.
            upcoming_fire_times: vec![prost_types::Timestamp {
                seconds: 1_774_661_400,
                nanos: 0,
            }],
            ..proto::Schedule::default()
        };
        let text = render_schedule(&schedule, &[]);
        assert!(text.contains("cron 30 2 * * * Europe/Berlin"), "{text}");
        assert!(text.contains("keep last 7, within 1day"), "{text}");
        assert!(
            text.contains("2026-03-28T01:30:00Z  2026-03-28 02:30 CET (+01:00)"),
            "{text}"
        );
        assert!(text.contains("Retries"), "{text}");
    }
}
