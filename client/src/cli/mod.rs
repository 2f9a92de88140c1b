//! `cofferctl`'s command line: arguments, the commands, and how their errors end the process.
//!
//! Each command group (`cluster`, `location`, `backup`, `restore`, `run`, `schedule`) is one module with
//! a `clap::Subcommand` enum and an `async fn run(command, &Session)`; adding a group is a variant
//! in [`Command`] and an arm in [`run`]. Following a run to its end (`backup start --watch`,
//! `run watch`) is [`watch`]'s job, and drawing its progress [`progress`]'s, so every command that
//! starts a run shares one renderer and one mapping of final states to exit codes. Commands validate everything local before they connect,
//! so a usage error never waits on the network, and they print data through [`output::Output`]
//! only: data on stdout, everything else on stderr.

pub mod backup;
pub mod cluster;
pub mod exit;
mod format;
pub mod location;
mod output;
mod paging;
mod parse;
mod progress;
pub mod restore;
pub mod run;
pub mod schedule;
mod table;
pub mod token;
mod transfer;
mod watch;

use clap::{Args, Parser, Subcommand};

use coffer_client::{ClientError, CofferClient, JsonError};

use crate::cli::exit::{EXIT_CODES_HELP, Exit, code_words};
use crate::cli::output::{Output, OutputFormat};

/// `cofferctl`: drive a Coffer backup server.
#[derive(Debug, Parser)]
#[command(
    name = "cofferctl",
    version,
    about = "Drive a Coffer backup server: clusters, locations, backups, restores, runs, schedules.",
    long_about = "Drive a Coffer backup server: clusters, locations, backups, restores, runs, \
                  schedules.\n\n\
                  Data goes to standard output (aligned tables, or proto3 JSON with -o json, the \
                  same JSON grpcurl prints); errors and hints go to standard error, one line per \
                  error. The exit code tells scripts what went wrong.",
    after_long_help = EXIT_CODES_HELP,
    propagate_version = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalOptions,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, Args)]
pub struct GlobalOptions {
    /// Address of the Coffer server: host:port or http://host:port.
    #[arg(
        long,
        env = "COFFER_SERVER",
        default_value = "127.0.0.1:50051",
        value_name = "ADDR",
        global = true
    )]
    pub server: String,
    /// Output format: aligned tables for people, or proto3 JSON for scripts.
    #[arg(
        short,
        long,
        value_enum,
        value_name = "FORMAT",
        default_value_t = OutputFormat::Table,
        global = true
    )]
    pub output: OutputFormat,
    /// Bearer token to present. Default: the file --token-file names, else
    /// .coffer-dev/admin.token in the current directory (dev mode's) when it exists.
    #[arg(
        long,
        env = "COFFER_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN",
        global = true,
        conflicts_with = "token_file"
    )]
    pub token: Option<String>,
    /// File holding the bearer token to present (its first line).
    #[arg(long, env = "COFFER_TOKEN_FILE", value_name = "PATH", global = true)]
    pub token_file: Option<std::path::PathBuf>,
    /// Speak TLS to the server, trusting this CA (PEM); a host:port address is then https.
    #[arg(long, env = "COFFER_CA_CERT", value_name = "PATH", global = true)]
    pub ca_cert: Option<std::path::PathBuf>,
    /// Client certificate (PEM) for a server that asks for one; needs --client-key and --ca-cert.
    #[arg(long, env = "COFFER_CLIENT_CERT", value_name = "PATH", global = true,
          requires_all = ["client_key", "ca_cert"])]
    pub client_cert: Option<std::path::PathBuf>,
    /// The private key (PEM) of --client-cert.
    #[arg(
        long,
        env = "COFFER_CLIENT_KEY",
        value_name = "PATH",
        global = true,
        requires = "client_cert"
    )]
    pub client_key: Option<std::path::PathBuf>,
}

/// The TLS settings the options ask for: none without --ca-cert.
fn resolve_tls(options: &GlobalOptions) -> Result<Option<coffer_client::TlsSettings>, CliError> {
    let read = |what: &str, path: &std::path::Path| {
        std::fs::read(path)
            .map_err(|error| CliError::Usage(format!("read {what} {}: {error}", path.display())))
    };
    let Some(ca) = &options.ca_cert else {
        return Ok(None);
    };
    let identity = match (&options.client_cert, &options.client_key) {
        (Some(cert), Some(key)) => {
            Some((read("client certificate", cert)?, read("client key", key)?))
        }
        _ => None,
    };
    Ok(Some(coffer_client::TlsSettings {
        ca_pem: read("CA certificate", ca)?,
        identity,
    }))
}

/// Where dev mode writes its admin token, relative to where `coffer-server dev` runs.
const DEV_TOKEN_FILE: &str = ".coffer-dev/admin.token";

/// The token to present: `--token`, else `--token-file`'s, else dev mode's when its file exists.
fn resolve_token(options: &GlobalOptions) -> Result<Option<String>, CliError> {
    if let Some(token) = &options.token {
        return Ok(Some(token.trim().to_owned()));
    }
    let (path, explicit) = match &options.token_file {
        Some(path) => (path.clone(), true),
        None => (std::path::PathBuf::from(DEV_TOKEN_FILE), false),
    };
    match std::fs::read_to_string(&path) {
        Ok(content) => {
            let token = content.lines().next().unwrap_or_default().trim().to_owned();
            if token.is_empty() {
                return Err(CliError::Usage(format!(
                    "token file {} is empty",
                    path.display()
                )));
            }
            Ok(Some(token))
        }
        Err(error) if !explicit && error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(CliError::Usage(format!(
            "read token file {}: {error}",
            path.display()
        ))),
    }
}

/// The command groups.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Register, inspect, change, check and delete database clusters.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
    /// Record, inspect, check and delete storage locations.
    #[command(subcommand)]
    Location(location::LocationCommand),
    /// Start, list, inspect and delete backups.
    #[command(subcommand)]
    Backup(backup::BackupCommand),
    /// Restore a backup onto a cluster.
    #[command(subcommand)]
    Restore(restore::RestoreCommand),
    /// List, inspect, watch and cancel backup and restore runs.
    #[command(subcommand)]
    Run(run::RunCommand),
    /// Create, inspect, fire, pause and delete backup schedules and their retention.
    #[command(subcommand)]
    Schedule(schedule::ScheduleCommand),
    /// Create, list and revoke the API's bearer tokens; see which one you present.
    #[command(subcommand)]
    Token(token::TokenCommand),
}

/// Runs the parsed command line.
///
/// Fails with a [`CliError`] whose [`CliError::exit`] is the process's exit code.
pub async fn run(cli: Cli) -> Result<(), CliError> {
    let session = Session::new(cli.global);
    match cli.command {
        Command::Cluster(command) => cluster::run(command, &session).await,
        Command::Location(command) => location::run(command, &session).await,
        Command::Backup(command) => backup::run(command, &session).await,
        Command::Restore(command) => restore::run(command, &session).await,
        Command::Run(command) => run::run(command, &session).await,
        Command::Schedule(command) => schedule::run(command, &session).await,
        Command::Token(command) => token::run(command, &session).await,
    }
}

/// What every command needs: where the server is and how to print.
pub struct Session {
    server: String,
    output: Output,
    token: Result<Option<String>, String>,
    tls: Result<Option<coffer_client::TlsSettings>, String>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Session")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

impl Session {
    fn new(options: GlobalOptions) -> Self {
        Self {
            token: resolve_token(&options).map_err(|error| error.to_string()),
            tls: resolve_tls(&options).map_err(|error| error.to_string()),
            server: options.server,
            output: Output::new(options.output),
        }
    }

    /// Connects to the server, presenting the token. Commands call it after their local checks.
    async fn connect(&self) -> Result<CofferClient, CliError> {
        let token = self.token.clone().map_err(CliError::Usage)?;
        let tls = self.tls.clone().map_err(CliError::Usage)?;
        let client = CofferClient::connect_with(&self.server, tls.as_ref()).await?;
        Ok(match token {
            Some(token) => client.with_token(&token)?,
            None => client,
        })
    }
}

/// Why a command failed. Each variant knows its exit code and its one-line report.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad local input that clap's parsers could not catch (a key given twice, ...).
    #[error("{0}")]
    Usage(String),
    /// The server address is invalid, or the server is unreachable.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The server answered with an error.
    #[error("{}", status_line(.0))]
    Status(#[from] tonic::Status),
    /// `cluster check` found nodes that are not serving.
    #[error("{unhealthy} of {total} nodes are not serving")]
    Unhealthy { unhealthy: usize, total: usize },
    /// `location check` found nodes on which a step failed or did not run.
    #[error("the location check failed on {failed} of {total} nodes")]
    LocationCheckFailed { failed: usize, total: usize },
    /// A validation found backups that would not restore.
    #[error("{unrestorable} of {total} backups would not restore")]
    Unrestorable { unrestorable: usize, total: usize },
    /// A followed run ended FAILED.
    #[error("run {run_id} failed: {message}")]
    RunFailed { run_id: String, message: String },
    /// A followed run ended CANCELED.
    #[error("run {run_id} was canceled")]
    RunCanceled { run_id: String },
    /// A response could not be rendered as JSON.
    #[error("render JSON")]
    Json(#[from] JsonError),
    /// The server answered with something unusable (a missing field, a repeated page token).
    #[error("unexpected response from the server: {0}")]
    Protocol(String),
    /// Standard output could not be written.
    #[error("write to standard output")]
    Output(#[source] std::io::Error),
}

impl CliError {
    /// The process exit code for this error.
    pub fn exit(&self) -> Exit {
        match self {
            Self::Usage(_)
            | Self::Client(
                ClientError::InvalidAddress { .. }
                | ClientError::InvalidToken
                | ClientError::Tls(_),
            ) => Exit::Usage,
            Self::Client(ClientError::Connect { .. }) => Exit::Unavailable,
            Self::Status(status) => Exit::for_status(status.code()),
            Self::Unhealthy { .. }
            | Self::LocationCheckFailed { .. }
            | Self::Unrestorable { .. } => Exit::CheckFailed,
            Self::RunFailed { .. } => Exit::RunFailed,
            Self::RunCanceled { .. } => Exit::RunCanceled,
            Self::Output(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Exit::Success,
            Self::Json(_) | Self::Protocol(_) | Self::Output(_) => Exit::Failure,
        }
    }

    /// The one line to print on stderr after `cofferctl: `, or `None` when there is nothing to
    /// say (the reader of standard output went away).
    pub fn report(&self) -> Option<String> {
        match self {
            Self::Output(error) if error.kind() == std::io::ErrorKind::BrokenPipe => None,
            // A status is its code and message only: its transport source is in the message.
            Self::Status(status) => Some(status_line(status)),
            _ => Some(coffer_process::error_chain(self)),
        }
    }
}

/// `not found: cluster "prod" does not exist`, on one line.
fn status_line(status: &tonic::Status) -> String {
    let message = coffer_process::one_line(status.message());
    if message.is_empty() {
        code_words(status.code()).to_owned()
    } else {
        format!("{}: {message}", code_words(status.code()))
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;
    use tonic::Code;

    use super::*;

    #[test]
    fn command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn status_errors_report_one_line_with_code_words() {
        let error = CliError::from(tonic::Status::not_found("cluster \"prod\" does not exist"));
        assert_eq!(
            error.report().as_deref(),
            Some("not found: cluster \"prod\" does not exist")
        );
        assert_eq!(error.exit(), Exit::NotFound);

        let error = CliError::from(tonic::Status::failed_precondition(
            "agents unreachable:\nhttp://a:1\nhttp://b:2\n",
        ));
        assert_eq!(
            error.report().as_deref(),
            Some("failed precondition: agents unreachable:; http://a:1; http://b:2")
        );
        assert_eq!(error.exit(), Exit::FailedPrecondition);

        let error = CliError::from(tonic::Status::new(Code::Unavailable, ""));
        assert_eq!(error.report().as_deref(), Some("unavailable"));
        assert_eq!(error.exit().code(), 3);
    }

    #[test]
    fn local_errors_map_to_their_exit_codes() {
        assert_eq!(CliError::Usage("--label: x".to_owned()).exit().code(), 2);
        assert_eq!(
            CliError::Client(ClientError::InvalidAddress {
                address: "https://x".to_owned(),
                reason: "expected host:port".to_owned(),
            })
            .exit()
            .code(),
            2
        );
        assert_eq!(
            CliError::Unhealthy {
                unhealthy: 1,
                total: 3
            }
            .exit()
            .code(),
            8
        );
        assert_eq!(
            CliError::LocationCheckFailed {
                failed: 1,
                total: 2
            }
            .exit()
            .code(),
            8
        );
        let failed = CliError::RunFailed {
            run_id: "r-1".to_owned(),
            message: "node a: disk full".to_owned(),
        };
        assert_eq!(failed.exit().code(), 10);
        assert_eq!(
            failed.report().as_deref(),
            Some("run r-1 failed: node a: disk full")
        );
        let canceled = CliError::RunCanceled {
            run_id: "r-1".to_owned(),
        };
        assert_eq!(canceled.exit().code(), 11);
        assert_eq!(canceled.report().as_deref(), Some("run r-1 was canceled"));
        assert_eq!(CliError::Protocol("x".to_owned()).exit().code(), 1);
        let broken_pipe = CliError::Output(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert_eq!(broken_pipe.report(), None);
        assert_eq!(broken_pipe.exit(), Exit::Success);
    }

    #[test]
    fn malformed_flags_are_usage_errors_naming_the_flag() {
        let error = Cli::try_parse_from([
            "cofferctl",
            "cluster",
            "register",
            "prod",
            "--node",
            "a:1,zone=z",
        ])
        .expect_err("unknown node spec key");
        assert_eq!(error.exit_code(), 2);
        assert!(error.to_string().contains("--node"), "{error}");

        let error = Cli::try_parse_from(["cofferctl", "cluster", "list", "--label", "env"])
            .expect_err("label without =");
        assert_eq!(error.exit_code(), 2);
        assert!(error.to_string().contains("--label"), "{error}");

        let error = Cli::try_parse_from(["cofferctl", "cluster", "update", "prod"])
            .expect_err("update without a change");
        assert_eq!(error.exit_code(), 2);
    }

    #[test]
    fn register_collects_repeated_nodes_and_labels() {
        let cli = Cli::try_parse_from([
            "cofferctl",
            "-o",
            "json",
            "cluster",
            "register",
            "prod",
            "--node",
            "10.0.0.1:7070,dc=dc1,rack=r1",
            "--node",
            "10.0.0.2:7070",
            "--label",
            "env=prod",
            "--server",
            "coffer:50051",
        ])
        .expect("valid command line");
        assert_eq!(cli.global.server, "coffer:50051");
        assert_eq!(cli.global.output, OutputFormat::Json);
        let Command::Cluster(cluster::ClusterCommand::Register(args)) = cli.command else {
            panic!("parsed as another command");
        };
        assert_eq!(args.nodes.len(), 2);
        assert_eq!(args.nodes[0].datacenter, "dc1");
        assert_eq!(args.labels.len(), 1);
    }
}
