//! `cofferctl backup ...`: the commands of `coffer.v1.BackupService`.

use clap::{Args, Subcommand, ValueEnum};

use coffer_client::proto;

use crate::cli::exit::EXIT_CODES_HELP;
use crate::cli::format::{self, NONE, or_none};
use crate::cli::output::OutputFormat;
use crate::cli::paging::{Page, PageArgs, fetch_pages};
use crate::cli::parse::{
    Label, labels_to_map, parse_idempotency_key, parse_label, parse_timestamp,
};
use crate::cli::table::{Table, fields};
use crate::cli::transfer::{FilterArgs, LimitArgs, describe_filter};
use crate::cli::{CliError, Session, watch};

/// The `backup` commands.
#[derive(Debug, Subcommand)]
#[command(after_long_help = EXIT_CODES_HELP)]
pub enum BackupCommand {
    /// Start a backup of a cluster and print its run id.
    ///
    /// The backup runs in the background on the server. With --watch, follow it to its end: live
    /// progress on stderr, then a summary on stdout, and exit code 0 (succeeded), 10 (failed) or
    /// 11 (canceled). With -o json --watch, stdout gets each WatchRunResponse as one JSON line
    /// instead. --dry-run only plans (nothing is written) and always follows the run, to print the
    /// plan. Ctrl-C stops watching, not the run: `run cancel` cancels it.
    Start(Box<StartArgs>),
    /// List committed backups, newest first.
    ///
    /// Fetches every page unless --page-size or --page-token is given; then prints that one page
    /// and the next page token on stderr.
    List(ListArgs),
    /// Show a backup: its parameters, sizes and file counts, per node and in all.
    Show(BackupArgs),
    /// List the files of a backup, by node then path.
    ///
    /// Fetches every page unless --page-size or --page-token is given; then prints that one page
    /// and the next page token on stderr.
    Files(FilesArgs),
    /// Delete a backup: it is no longer listed or restorable. File contents other backups share
    /// stay in storage.
    Delete(BackupArgs),
}

/// Arguments of `backup start`.
#[derive(Debug, Args)]
pub struct StartArgs {
    /// Name or id of the cluster to back up.
    #[arg(value_name = "CLUSTER", value_parser = non_empty())]
    pub cluster: String,
    /// Name or id of the location to store the backup at.
    #[arg(long, value_name = "LOCATION", value_parser = non_empty())]
    pub location: String,
    /// Trust the agents' journals and the newest backup at the location: unchanged files are
    /// neither re-read nor re-uploaded. Without an earlier backup, a full backup is made.
    #[arg(long)]
    pub incremental: bool,
    #[command(flatten)]
    pub filter: FilterArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
    /// A label to put on the backup. Repeat for more.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<Label>,
    /// Plan only: list the files and estimate the upload; write nothing. Follows the run and
    /// prints the plan.
    #[arg(long)]
    pub dry_run: bool,
    /// A key (at most 128 characters, e.g. a UUID) that makes retrying this command safe: a second
    /// start with the same key returns the first one's run.
    #[arg(long, value_name = "KEY", value_parser = parse_idempotency_key)]
    pub idempotency_key: Option<String>,
    /// Follow the run to its end, showing progress, and exit by how it ended.
    #[arg(long)]
    pub watch: bool,
}

/// Arguments of `backup list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only backups of this cluster (name or id).
    #[arg(long, value_name = "CLUSTER", value_parser = non_empty())]
    pub cluster: Option<String>,
    /// Only backups at this location (name or id).
    #[arg(long, value_name = "LOCATION", value_parser = non_empty())]
    pub location: Option<String>,
    /// Only backups of this kind.
    #[arg(long, value_enum, value_name = "KIND")]
    pub kind: Option<BackupKindArg>,
    /// Only backups that started at or after this time: RFC 3339 (2025-11-21T22:50:00Z, or with
    /// an offset such as +01:00) or a date (midnight UTC).
    #[arg(long, value_name = "TIME", value_parser = parse_timestamp)]
    pub since: Option<prost_types::Timestamp>,
    /// Only backups that started at or before this time (same forms as --since).
    #[arg(long, value_name = "TIME", value_parser = parse_timestamp)]
    pub until: Option<prost_types::Timestamp>,
    /// Only backups carrying this label. Repeat to require several.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<Label>,
    #[command(flatten)]
    pub pages: PageArgs,
}

/// A backup kind on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackupKindArg {
    Full,
    Incremental,
}

impl From<BackupKindArg> for proto::BackupKind {
    fn from(kind: BackupKindArg) -> Self {
        match kind {
            BackupKindArg::Full => Self::Full,
            BackupKindArg::Incremental => Self::Incremental,
        }
    }
}

/// A command that takes one backup.
#[derive(Debug, Args)]
pub struct BackupArgs {
    /// Id of the backup.
    #[arg(value_name = "ID", value_parser = non_empty())]
    pub backup_id: String,
}

/// Arguments of `backup files`.
#[derive(Debug, Args)]
pub struct FilesArgs {
    /// Id of the backup.
    #[arg(value_name = "ID", value_parser = non_empty())]
    pub backup_id: String,
    /// Only files of this node.
    #[arg(long, value_name = "NODE_ID", value_parser = non_empty())]
    pub node: Option<String>,
    #[command(flatten)]
    pub filter: FilterArgs,
    #[command(flatten)]
    pub pages: PageArgs,
}

fn non_empty() -> clap::builder::NonEmptyStringValueParser {
    clap::builder::NonEmptyStringValueParser::new()
}

/// Runs a `backup` command.
pub async fn run(command: BackupCommand, session: &Session) -> Result<(), CliError> {
    match command {
        BackupCommand::Start(args) => start(*args, session).await,
        BackupCommand::List(args) => list(args, session).await,
        BackupCommand::Show(args) => show(args, session).await,
        BackupCommand::Files(args) => files(args, session).await,
        BackupCommand::Delete(args) => delete(args, session).await,
    }
}

/// The request `backup start` sends.
///
/// Fails with [`CliError::Usage`] when a label key is given twice with different values.
pub fn start_request(args: &StartArgs) -> Result<proto::StartBackupRequest, CliError> {
    let kind = if args.incremental {
        proto::BackupKind::Incremental
    } else {
        proto::BackupKind::Full
    };
    Ok(proto::StartBackupRequest {
        cluster: args.cluster.clone(),
        backup: Some(proto::BackupSpec {
            kind: kind as i32,
            location: args.location.clone(),
            filter: args.filter.clone().into_filter(),
            limits: args.limits.into_limits(),
            labels: labels_to_map(args.labels.clone(), "--label")?,
        }),
        dry_run: args.dry_run,
        idempotency_key: args.idempotency_key.clone().unwrap_or_default(),
    })
}

/// The filters of `backup list`; paging is added per page.
///
/// Fails with [`CliError::Usage`] for conflicting labels or --since after --until.
pub fn list_request(args: &ListArgs) -> Result<proto::ListBackupsRequest, CliError> {
    if let (Some(since), Some(until)) = (&args.since, &args.until)
        && (since.seconds, since.nanos) > (until.seconds, until.nanos)
    {
        return Err(CliError::Usage(format!(
            "--since {} is after --until {}",
            format::timestamp(Some(since)),
            format::timestamp(Some(until))
        )));
    }
    Ok(proto::ListBackupsRequest {
        page_size: 0,
        page_token: String::new(),
        cluster: args.cluster.clone().unwrap_or_default(),
        location: args.location.clone().unwrap_or_default(),
        kind: args.kind.map_or(proto::BackupKind::Unspecified, Into::into) as i32,
        min_start_time: args.since,
        max_start_time: args.until,
        labels: labels_to_map(args.labels.clone(), "--label")?,
    })
}

async fn start(args: StartArgs, session: &Session) -> Result<(), CliError> {
    let request = start_request(&args)?;
    let follow = args.watch || args.dry_run;
    let client = session.connect().await?;
    let response = client.backups().start_backup(request).await?.into_inner();
    let run_id = response.run_id.clone();
    watch::started(session, &client, &response, &run_id, follow, "backup").await
}

async fn list(args: ListArgs, session: &Session) -> Result<(), CliError> {
    let filters = list_request(&args)?;
    let client = session.connect().await?;
    let backups = client.backups();
    let page = fetch_pages(args.pages, |page_size, page_token| {
        let mut backups = backups.clone();
        let request = proto::ListBackupsRequest {
            page_size,
            page_token,
            ..filters.clone()
        };
        async move {
            let page = backups.list_backups(request).await?.into_inner();
            Ok(Page {
                items: page.backups,
                next_page_token: page.next_page_token,
            })
        }
    })
    .await?;
    let response = proto::ListBackupsResponse {
        backups: page.items,
        next_page_token: page.next_page_token,
    };
    session.output.list(
        &response,
        "backups",
        response.backups.len(),
        &response.next_page_token,
        "no backups found",
        |response| render_backup_list(&response.backups),
    )
}

async fn show(args: BackupArgs, session: &Session) -> Result<(), CliError> {
    let client = session.connect().await?;
    let response = client
        .backups()
        .get_backup(proto::GetBackupRequest {
            backup_id: args.backup_id,
        })
        .await?
        .into_inner();
    session.output.response(&response, |response| {
        let backup = response
            .backup
            .as_ref()
            .ok_or_else(|| CliError::Protocol("the response has no backup".to_owned()))?;
        Ok(render_backup(backup))
    })
}

async fn files(args: FilesArgs, session: &Session) -> Result<(), CliError> {
    let node_id = args.node.unwrap_or_default();
    let filter = args.filter.into_filter();
    let show_node = node_id.is_empty();
    let client = session.connect().await?;
    let backups = client.backups();
    let page = fetch_pages(args.pages, |page_size, page_token| {
        let mut backups = backups.clone();
        let request = proto::ListBackupFilesRequest {
            backup_id: args.backup_id.clone(),
            node_id: node_id.clone(),
            filter: filter.clone(),
            page_size,
            page_token,
        };
        async move {
            let page = backups.list_backup_files(request).await?.into_inner();
            Ok(Page {
                items: page.files,
                next_page_token: page.next_page_token,
            })
        }
    })
    .await?;
    let response = proto::ListBackupFilesResponse {
        files: page.items,
        next_page_token: page.next_page_token,
    };
    session.output.list(
        &response,
        "files",
        response.files.len(),
        &response.next_page_token,
        "no files found",
        |response| render_files(&response.files, show_node),
    )
}

async fn delete(args: BackupArgs, session: &Session) -> Result<(), CliError> {
    let client = session.connect().await?;
    let response = client
        .backups()
        .delete_backup(proto::DeleteBackupRequest {
            backup_id: args.backup_id.clone(),
        })
        .await?
        .into_inner();
    match session.output.format() {
        OutputFormat::Json => session.output.response(&response, |_| Ok(String::new()))?,
        OutputFormat::Table => session
            .output
            .note(format_args!("deleted backup {}", args.backup_id)),
    }
    Ok(())
}

/// `prod`, or the id when the name is unknown.
fn name_or_id(name: &str, id: &str) -> String {
    if name.is_empty() {
        or_none(id)
    } else {
        name.to_owned()
    }
}

/// `backup list`: one row per backup.
fn render_backup_list(backups: &[proto::Backup]) -> String {
    let mut table = Table::new([
        "ID", "CLUSTER", "LOCATION", "KIND", "STARTED", "FILES", "SIZE", "UPLOADED", "LABELS",
    ]);
    for backup in backups {
        let totals = backup.totals.unwrap_or_default();
        table.push([
            backup.id.clone(),
            name_or_id(&backup.cluster_name, &backup.cluster_id),
            name_or_id(&backup.location_name, &backup.location_id),
            format::backup_kind(backup.kind),
            format::timestamp(backup.start_time.as_ref()),
            totals.file_count.to_string(),
            format::human_bytes(totals.total_bytes),
            format::human_bytes(totals.uploaded_bytes),
            format::labels(&backup.labels),
        ]);
    }
    table.render()
}

/// `backup show`: the backup's fields, then one row per node.
fn render_backup(backup: &proto::Backup) -> String {
    let totals = backup.totals.unwrap_or_default();
    let mut out = fields([
        ("ID", backup.id.clone()),
        (
            "Cluster",
            format::name_with_id(&backup.cluster_name, &backup.cluster_id),
        ),
        (
            "Location",
            format::name_with_id(&backup.location_name, &backup.location_id),
        ),
        ("Kind", format::backup_kind(backup.kind)),
        ("Parent", or_none(&backup.parent_backup_id)),
        ("Filter", describe_filter(backup.filter.as_ref())),
        ("Labels", format::labels(&backup.labels)),
        ("Run", or_none(&backup.run_id)),
        ("Schedule", or_none(&backup.schedule_id)),
        ("Started", format::timestamp(backup.start_time.as_ref())),
        ("Committed", format::timestamp(backup.commit_time.as_ref())),
        ("Files", totals.file_count.to_string()),
        ("Size", format::human_bytes(totals.total_bytes)),
        (
            "Uploaded",
            format!(
                "{} in {} objects",
                format::human_bytes(totals.uploaded_bytes),
                totals.uploaded_objects
            ),
        ),
        ("Nodes", backup.nodes.len().to_string()),
    ]);
    out.push('\n');
    let mut table = Table::new([
        "NODE ID", "HOSTNAME", "DC", "RACK", "FILES", "SIZE", "UPLOADED", "OBJECTS",
    ]);
    for node in &backup.nodes {
        let stats = node.stats.unwrap_or_default();
        table.push([
            node.node_id.clone(),
            or_none(&node.hostname),
            or_none(&node.datacenter),
            or_none(&node.rack),
            stats.file_count.to_string(),
            format::human_bytes(stats.total_bytes),
            format::human_bytes(stats.uploaded_bytes),
            stats.uploaded_objects.to_string(),
        ]);
    }
    out.push_str(&table.render());
    out
}

/// Hex digits of a file's hash shown in tables: enough to tell contents apart at a glance.
const SHORT_HASH: usize = 12;

/// `backup files`: one row per file; the node column only when files of every node are listed.
fn render_files(files: &[proto::BackupFile], show_node: bool) -> String {
    let header = ["NODE", "PATH", "SIZE", "MODE", "MTIME", "HASH"];
    let mut table = if show_node {
        Table::new(header)
    } else {
        Table::new(["PATH", "SIZE", "MODE", "MTIME", "HASH"])
    };
    for file in files {
        let row = [
            file.path.clone(),
            format::human_bytes(file.size_bytes),
            format!("{:04o}", file.mode & 0o7777),
            format::timestamp(file.modify_time.as_ref()),
            if file.blake3_hash.is_empty() {
                NONE.to_owned()
            } else {
                format::short(&file.blake3_hash, SHORT_HASH)
            },
        ];
        if show_node {
            table.push(std::iter::once(file.node_id.clone()).chain(row));
        } else {
            table.push(row);
        }
    }
    table.render()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use clap::Parser as _;

    use super::*;
    use crate::cli::{Cli, Command};

    fn parse(args: &[&str]) -> Result<BackupCommand, clap::Error> {
        let cli = Cli::try_parse_from(["cofferctl", "backup"].iter().chain(args).copied())?;
        match cli.command {
            Command::Backup(command) => Ok(command),
            other => panic!("parsed as {other:?}"),
        }
    }

    fn start_args(args: &[&str]) -> StartArgs {
        match parse(&[&["start"][..], args].concat()) {
            Ok(BackupCommand::Start(args)) => *args,
            other => panic!("not a valid backup start: {other:?}"),
        }
    }

    #[test]
    fn start_command_line_becomes_the_request() {
        let args = start_args(&[
            "prod",
            "--location",
            "s3-eu",
            "--incremental",
            "--include",
            "/var/lib/cassandra/data/**",
            "--exclude",
            "**/snapshots/**",
            "--exclude",
            "**/*.tmp",
            "--rate-limit",
            "50MiB/s",
            "--concurrency",
            "16",
            "--node-parallelism",
            "2",
            "--label",
            "env=prod",
            "--label",
            "reason=pre-upgrade",
            "--idempotency-key",
            "7f3c",
            "--watch",
        ]);
        assert!(args.watch);
        assert_eq!(
            start_request(&args).expect("valid"),
            proto::StartBackupRequest {
                cluster: "prod".to_owned(),
                backup: Some(proto::BackupSpec {
                    kind: proto::BackupKind::Incremental as i32,
                    location: "s3-eu".to_owned(),
                    filter: Some(proto::PathFilter {
                        include: vec!["/var/lib/cassandra/data/**".to_owned()],
                        exclude: vec!["**/snapshots/**".to_owned(), "**/*.tmp".to_owned()],
                    }),
                    limits: Some(proto::TransferLimits {
                        rate_limit_bytes_per_second: 50 * 1024 * 1024,
                        concurrency: 16,
                        node_parallelism: 2,
                    }),
                    labels: HashMap::from([
                        ("env".to_owned(), "prod".to_owned()),
                        ("reason".to_owned(), "pre-upgrade".to_owned()),
                    ]),
                }),
                dry_run: false,
                idempotency_key: "7f3c".to_owned(),
            }
        );
    }

    #[test]
    fn a_minimal_start_is_a_full_backup_with_server_defaults() {
        let args = start_args(&["prod", "--location", "local", "--dry-run"]);
        assert!(!args.watch);
        assert_eq!(
            start_request(&args).expect("valid"),
            proto::StartBackupRequest {
                cluster: "prod".to_owned(),
                backup: Some(proto::BackupSpec {
                    kind: proto::BackupKind::Full as i32,
                    location: "local".to_owned(),
                    filter: None,
                    limits: None,
                    labels: HashMap::new(),
                }),
                dry_run: true,
                idempotency_key: String::new(),
            }
        );
        let args = start_args(&["prod", "--location", "local", "--rate-limit", "1G"]);
        let limits = start_request(&args)
            .expect("valid")
            .backup
            .and_then(|backup| backup.limits);
        assert_eq!(
            limits,
            Some(proto::TransferLimits {
                rate_limit_bytes_per_second: 1 << 30,
                ..Default::default()
            })
        );
    }

    #[test]
    fn start_usage_errors() {
        for bad in [
            &["start", "prod"][..],
            &["start", "--location", "l"],
            &["start", "prod", "--location", ""],
            &["start", "prod", "--location", "l", "--rate-limit", "fast"],
            &["start", "prod", "--location", "l", "--rate-limit", "10Mb/s"],
            &["start", "prod", "--location", "l", "--concurrency", "0"],
            &["start", "prod", "--location", "l", "--concurrency", "1025"],
            &[
                "start",
                "prod",
                "--location",
                "l",
                "--node-parallelism",
                "0",
            ],
            &["start", "prod", "--location", "l", "--include", ""],
            &["start", "prod", "--location", "l", "--label", "env"],
        ] {
            let error = parse(bad).expect_err(&format!("{bad:?} should be rejected"));
            assert_eq!(error.exit_code(), 2, "{bad:?}: {error}");
        }
        let args = start_args(&[
            "prod",
            "--location",
            "l",
            "--label",
            "a=1",
            "--label",
            "a=2",
        ]);
        assert!(matches!(start_request(&args), Err(CliError::Usage(_))));
    }

    #[test]
    fn list_filters_become_the_request() {
        let Ok(BackupCommand::List(args)) = parse(&[
            "list",
            "--cluster",
            "prod",
            "--kind",
            "incremental",
            "--since",
            "2023-11-14T22:13:20Z",
            "--until",
            "2023-11-15",
            "--label",
            "env=prod",
        ]) else {
            panic!("not a valid backup list");
        };
        let request = list_request(&args).expect("valid");
        assert_eq!(request.cluster, "prod");
        assert_eq!(request.location, "");
        assert_eq!(request.kind, proto::BackupKind::Incremental as i32);
        assert_eq!(
            request.min_start_time.map(|time| time.seconds),
            Some(1_700_000_000)
        );
        assert_eq!(
            request.max_start_time.map(|time| time.seconds),
            Some(1_700_006_400)
        );
        assert_eq!(request.labels.get("env").map(String::as_str), Some("prod"));

        let Ok(BackupCommand::List(args)) =
            parse(&["list", "--since", "2023-11-15", "--until", "2023-11-14"])
        else {
            panic!("not a valid backup list");
        };
        assert!(matches!(list_request(&args), Err(CliError::Usage(_))));
        assert_eq!(
            parse(&["list", "--kind", "differential"])
                .expect_err("unknown kind")
                .exit_code(),
            2
        );
        assert_eq!(
            parse(&["list", "--since", "yesterday"])
                .expect_err("not a time")
                .exit_code(),
            2
        );
    }

    #[test]
    fn files_table_has_short_hashes_octal_modes_and_a_node_column_when_needed() {
        let files = [proto::BackupFile {
            node_id: "a".to_owned(),
            path: "/data/ks1/t1/nb-1-big-Data.db".to_owned(),
            size_bytes: 1536,
            mode: 0o100644,
            modify_time: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
            blake3_hash: "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
                .to_owned(),
        }];
        assert_eq!(
            render_files(&files, false),
            "PATH                            SIZE      MODE   MTIME                  HASH\n\
             /data/ks1/t1/nb-1-big-Data.db   1.5 KiB   0644   2023-11-14T22:13:20Z   af1349b9f5f9\n"
        );
        assert!(render_files(&files, true).starts_with("NODE   PATH"));
        assert!(render_files(&files, true).contains("\na      /data/ks1"));
    }

    #[test]
    fn show_renders_fields_and_nodes() {
        let backup = proto::Backup {
            id: "b-1".to_owned(),
            cluster_id: "c-1".to_owned(),
            cluster_name: "prod".to_owned(),
            location_id: "l-1".to_owned(),
            kind: proto::BackupKind::Full as i32,
            run_id: "r-1".to_owned(),
            nodes: vec![proto::BackupNode {
                node_id: "a".to_owned(),
                hostname: "db1".to_owned(),
                stats: Some(proto::BackupStats {
                    file_count: 3,
                    total_bytes: 3 << 20,
                    uploaded_bytes: 1 << 20,
                    uploaded_objects: 1,
                }),
                ..Default::default()
            }],
            totals: Some(proto::BackupStats {
                file_count: 3,
                total_bytes: 3 << 20,
                uploaded_bytes: 1 << 20,
                uploaded_objects: 1,
            }),
            ..Default::default()
        };
        let rendered = render_backup(&backup);
        assert!(
            rendered.starts_with("ID:         b-1\nCluster:    prod (c-1)\nLocation:   l-1\n"),
            "{rendered}"
        );
        assert!(
            rendered.contains("Uploaded:   1.0 MiB in 1 objects\n"),
            "{rendered}"
        );
        assert!(
            rendered.ends_with(
                "NODE ID   HOSTNAME   DC   RACK   FILES   SIZE      UPLOADED   OBJECTS\n\
                 a         db1        -    -      3       3.0 MiB   1.0 MiB    1\n"
            ),
            "{rendered}"
        );
        assert_eq!(
            render_backup_list(&[backup]),
            "ID    CLUSTER   LOCATION   KIND   STARTED   FILES   SIZE      UPLOADED   LABELS\n\
             b-1   prod      l-1        FULL   -         3       3.0 MiB   1.0 MiB    -\n"
        );
    }
}
