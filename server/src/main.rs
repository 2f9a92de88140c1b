//! `coffer-server`: parses configuration, opens the catalog, binds, announces and serves.

#[cfg(feature = "dev")]
mod dev;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use coffer_process::Layered;
use coffer_server::config::{ServerConfig, ServerOptions};

/// Coffer: backup control plane for clustered databases.
///
/// Settings are layered: built-in defaults, then the TOML file given with --config, then
/// COFFER_* environment variables, then flags.
#[derive(Debug, Parser)]
#[command(name = "coffer-server", version)]
struct Cli {
    /// TOML configuration file.
    #[arg(long, env = "COFFER_CONFIG", global = true)]
    config: Option<PathBuf>,

    /// Print the resolved configuration as TOML and exit.
    #[arg(long, global = true)]
    dump_config: bool,

    /// Log format on stderr: text, or json (one object per line).
    #[arg(long, global = true, env = "COFFER_LOG_FORMAT", default_value = "text")]
    log_format: coffer_process::LogFormat,

    #[command(flatten)]
    options: ServerOptions,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The server's own CA for mutual TLS with the agents (see docs/security.md).
    #[command(subcommand)]
    AgentCa(AgentCaCommand),
    #[cfg(feature = "dev")]
    /// Run Coffer on embedded defaults: a catalog, a filesystem backup location, a data folder
    /// and a local agent under one directory, with a cluster named `dev` registered.
    Dev(dev::DevArgs),
}

#[derive(Debug, Subcommand)]
enum AgentCaCommand {
    /// Make a CA and the server's client certificate in DIR (then serve with --agent-ca DIR).
    Init {
        /// Folder for the CA (created, mode 700); refused when it holds one already.
        dir: PathBuf,
    },
    /// Issue (or renew) a node's certificate from the CA in DIR into --out: agent.pem,
    /// agent.key and ca.pem, for `coffer-agent --tls-dir`.
    Issue {
        /// The CA's folder.
        dir: PathBuf,
        /// The host of the node's registered address (a DNS name or an IP address).
        #[arg(long)]
        host: String,
        /// Folder to write the node's files to (created, mode 700; files replaced atomically).
        #[arg(long)]
        out: PathBuf,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
}

fn agent_ca(command: AgentCaCommand) -> anyhow::Result<()> {
    use coffer_server::agents::ca;
    match command {
        AgentCaCommand::Init { dir } => {
            ca::init(&dir)?;
            println!(
                "agent CA made in {0}: serve with --agent-ca {0}, issue node certificates with \
                 `coffer-server agent-ca issue {0} --host HOST --out FOLDER`",
                dir.display()
            );
        }
        AgentCaCommand::Issue {
            dir,
            host,
            out,
            days,
        } => {
            ca::issue(&dir, &host, &out, days)?;
            println!(
                "certificate for {host} (valid {days} days) in {0}: start the agent with \
                 --tls-dir {0} (a running agent serves it at its next handshake)",
                out.display()
            );
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    coffer_process::init_tracing_as(cli.log_format);
    let file_options = match &cli.config {
        Some(path) => coffer_process::load_toml(path)?,
        None => ServerOptions::default(),
    };
    let options = cli.options.or(file_options);
    match cli.command {
        Some(Command::AgentCa(command)) => agent_ca(command),
        #[cfg(feature = "dev")]
        Some(Command::Dev(args)) => dev::run(args, options, cli.dump_config).await,
        None => {
            let config = options.resolve().context("resolve server configuration")?;
            if cli.dump_config {
                print!(
                    "{}",
                    toml::to_string(&config).context("render configuration")?
                );
                return Ok(());
            }
            serve(config).await
        }
    }
}

async fn serve(config: ServerConfig) -> anyhow::Result<()> {
    let coffer = coffer_server::Coffer::open(&config)
        .await
        .with_context(|| format!("open catalog {}", config.catalog.display()))?;
    match config.auth {
        coffer_server::auth::AuthMode::Tokens => {
            coffer
                .tokens()
                .bootstrap(&config.admin_token_file)
                .await
                .context("create the admin token")?;
        }
        coffer_server::auth::AuthMode::None => tracing::warn!(
            "authentication is off (--auth none): anyone who reaches the API may do anything"
        ),
    }
    let metrics_stop = tokio_util::sync::CancellationToken::new();
    let metrics_server = match config.metrics_listen {
        None => None,
        Some(address) => Some(
            coffer_server::metrics::start_endpoint(&coffer, address, metrics_stop.clone())
                .await?
                .1,
        ),
    };
    let status_server = match config.status_listen {
        None => None,
        Some(address) => Some(
            coffer_server::status::http::start(&coffer, address, metrics_stop.clone())
                .await
                .context("start the status page")?
                .1,
        ),
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("bind {}", config.listen))?;
    let address = listener.local_addr().context("read bound address")?;
    tracing::info!(%address, catalog = %config.catalog.display(), "server serving");
    // The one line on stdout: scripts and tests read the bound address (port 0 picks one).
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    coffer_process::announce(&format!("coffer-server listening on {scheme}://{address}"));
    coffer_server::run(listener, &coffer, coffer_process::shutdown_signal())
        .await
        .context("serve")?;
    metrics_stop.cancel();
    if let Some(server) = metrics_server
        && let Err(error) = server.await
    {
        tracing::warn!(%error, "metrics endpoint task");
    }
    if let Some(server) = status_server
        && let Err(error) = server.await
    {
        tracing::warn!(%error, "status page task");
    }
    coffer.close().await;
    Ok(())
}
