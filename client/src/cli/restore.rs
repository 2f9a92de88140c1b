//! `cofferctl restore ...`: the command of `coffer.v1.RestoreService`.

use std::time::Duration;

use clap::{Args, Subcommand};

use coffer_client::proto;

use crate::cli::exit::EXIT_CODES_HELP;
use crate::cli::parse::{parse_idempotency_key, parse_timestamp};
use crate::cli::transfer::{FilterArgs, LimitArgs};
use crate::cli::{CliError, Session, watch};

/// The `restore` commands.
#[derive(Debug, Subcommand)]
#[command(after_long_help = EXIT_CODES_HELP)]
pub enum RestoreCommand {
    /// Restore a backup onto a cluster and print the run id.
    ///
    /// Choose the backup by id (--backup) or by time (--cluster and --at: the newest backup of
    /// that cluster taken at or before the time). It is restored onto --to, by default the
    /// cluster it was taken from. Every target agent downloads its files into staging, verifies
    /// each against its hash, and only then moves them into place. Existing files are refused
    /// unless --overwrite. With --watch, follow it as `backup start --watch` does; --dry-run prints
    /// what would be fetched and overwritten, touching nothing.
    Start(Box<StartArgs>),
}

/// Arguments of `restore start`.
#[derive(Debug, Args)]
pub struct StartArgs {
    /// Id of the backup to restore.
    #[arg(long, value_name = "BACKUP_ID", conflicts_with_all = ["cluster", "at"], required_unless_present = "at")]
    pub backup: Option<String>,
    /// Name or id of the cluster whose backup to restore (with --at).
    #[arg(long, value_name = "CLUSTER", requires = "at")]
    pub cluster: Option<String>,
    /// The point in time: the newest backup at or before it is restored (RFC 3339, or a date).
    #[arg(long, value_name = "TIME", value_parser = parse_timestamp, requires = "cluster")]
    pub at: Option<prost_types::Timestamp>,
    /// With --at: only consider backups at this location (name or id).
    #[arg(long, value_name = "LOCATION", requires = "at")]
    pub location: Option<String>,
    /// Name or id of the cluster to restore onto; by default the cluster named by --cluster, or
    /// the backup's own cluster.
    #[arg(long, value_name = "CLUSTER")]
    pub to: Option<String>,
    /// Restore backup node SOURCE onto target node TARGET (node ids). Repeat for every node to
    /// restore; without it, every backup node goes to the target node with the same id.
    #[arg(long = "map", value_name = "SOURCE=TARGET", value_parser = parse_mapping)]
    pub mappings: Vec<proto::NodeMapping>,
    #[command(flatten)]
    pub filter: FilterArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
    /// Replace files that already exist on the target nodes.
    #[arg(long)]
    pub overwrite: bool,
    /// Name of the post-restore hook each target agent runs once its files are in place: the
    /// command its configuration gives that name (`[restore-hooks]`, e.g. refresh = ["nodetool",
    /// "refresh", "ks", "table"]).
    #[arg(long = "hook", value_name = "NAME")]
    pub hook: Option<String>,
    /// How long the hook may run (e.g. 10m).
    #[arg(long, value_name = "DURATION", value_parser = coffer_process::parse_duration, requires = "hook")]
    pub hook_timeout: Option<Duration>,
    /// Plan only: report what would be fetched and overwritten; touch nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// A key that makes retrying this command safe.
    #[arg(long, value_name = "KEY", value_parser = parse_idempotency_key)]
    pub idempotency_key: Option<String>,
    /// Follow the run to its end, showing progress, and exit by how it ended.
    #[arg(long)]
    pub watch: bool,
}

fn parse_mapping(text: &str) -> Result<proto::NodeMapping, String> {
    let (source, target) = text
        .split_once('=')
        .filter(|(source, target)| !source.is_empty() && !target.is_empty())
        .ok_or_else(|| format!("{text:?} is not SOURCE_NODE_ID=TARGET_NODE_ID"))?;
    Ok(proto::NodeMapping {
        source_node_id: source.to_string(),
        target_node_id: target.to_string(),
    })
}

/// Runs a `restore` command.
pub async fn run(command: RestoreCommand, session: &Session) -> Result<(), CliError> {
    match command {
        RestoreCommand::Start(args) => start(*args, session).await,
    }
}

/// The request of `restore start`, with the target cluster resolved by the caller.
pub fn start_request(args: &StartArgs, target: String) -> proto::StartRestoreRequest {
    let source = match (&args.backup, &args.cluster, &args.at) {
        (Some(backup), _, _) => proto::restore_spec::Source::BackupId(backup.clone()),
        (None, cluster, at) => proto::restore_spec::Source::PointInTime(proto::PointInTime {
            source_cluster: cluster.clone().unwrap_or_default(),
            as_of_time: *at,
            location: args.location.clone().unwrap_or_default(),
        }),
    };
    proto::StartRestoreRequest {
        cluster: target,
        restore: Some(proto::RestoreSpec {
            source: Some(source),
            node_mappings: args.mappings.clone(),
            filter: args.filter.clone().into_filter(),
            overwrite: args.overwrite,
            limits: args.limits.into_limits(),
            post_restore_hook: args.hook.as_ref().map(|name| proto::RestoreHook {
                command: vec![name.clone()],
                timeout: args
                    .hook_timeout
                    .and_then(|timeout| prost_types::Duration::try_from(timeout).ok()),
            }),
        }),
        dry_run: args.dry_run,
        idempotency_key: args.idempotency_key.clone().unwrap_or_default(),
    }
}

async fn start(args: StartArgs, session: &Session) -> Result<(), CliError> {
    let client = session.connect().await?;
    let target = match (&args.to, &args.cluster, &args.backup) {
        (Some(to), _, _) => to.clone(),
        (None, Some(cluster), _) => cluster.clone(),
        (None, None, Some(backup_id)) => {
            let backup = client
                .backups()
                .get_backup(proto::GetBackupRequest {
                    backup_id: backup_id.clone(),
                })
                .await?
                .into_inner()
                .backup
                .ok_or_else(|| CliError::Usage(format!("backup {backup_id} was not returned")))?;
            backup.cluster_id
        }
        (None, None, None) => {
            return Err(CliError::Usage(
                "give --backup, or --cluster with --at".into(),
            ));
        }
    };
    let request = start_request(&args, target);
    let follow = args.watch || args.dry_run;
    let response = client.restores().start_restore(request).await?.into_inner();
    let run_id = response.run_id.clone();
    watch::started(session, &client, &response, &run_id, follow, "restore").await
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn parse(args: &[&str]) -> Result<StartArgs, clap::Error> {
        let mut argv = vec!["cofferctl", "restore", "start"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv)?.command {
            Command::Restore(RestoreCommand::Start(args)) => Ok(*args),
            other => panic!("unexpected command {other:?}"),
        }
    }

    #[test]
    fn a_point_in_time_restore_builds_its_request() {
        let args = parse(&[
            "--cluster",
            "prod",
            "--at",
            "2026-11-21T10:00:00Z",
            "--to",
            "staging",
            "--map",
            "a=b",
            "--overwrite",
            "--hook",
            "refresh",
        ])
        .expect("parse");
        let request = start_request(&args, "staging".into());
        assert_eq!(request.cluster, "staging");
        let spec = request.restore.expect("spec");
        let Some(proto::restore_spec::Source::PointInTime(point)) = spec.source else {
            panic!("point in time expected");
        };
        assert_eq!(point.source_cluster, "prod");
        assert!(point.as_of_time.is_some());
        assert_eq!(spec.node_mappings[0].target_node_id, "b");
        assert!(spec.overwrite);
        assert_eq!(spec.post_restore_hook.expect("hook").command, ["refresh"]);
    }

    #[test]
    fn a_source_is_required_and_unambiguous() {
        assert!(parse(&[]).is_err());
        assert!(parse(&["--backup", "x", "--at", "2026-11-21T10:00:00Z"]).is_err());
        assert!(parse(&["--at", "2026-11-21T10:00:00Z"]).is_err());
        assert!(parse(&["--backup", "x", "--map", "nonsense"]).is_err());
        assert!(parse(&["--backup", "x"]).is_ok());
    }
}
