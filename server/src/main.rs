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

    #[command(flatten)]
    options: ServerOptions,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    #[cfg(feature = "dev")]
    /// Run Coffer on embedded defaults: a catalog, a filesystem backup location, a data folder
    /// and a local agent under one directory, with a cluster named `dev` registered.
    Dev(dev::DevArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    coffer_process::init_tracing();
    let file_options = match &cli.config {
        Some(path) => coffer_process::load_toml(path)?,
        None => ServerOptions::default(),
    };
    let options = cli.options.or(file_options);
    match cli.command {
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
    coffer.close().await;
    Ok(())
}
