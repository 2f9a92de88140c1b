//! `coffer-agent`: parses configuration, binds the listener, announces it and serves.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use coffer_agent::config::AgentOptions;
use coffer_process::Layered;

/// Coffer node agent: runs on every database node and serves the Coffer server.
///
/// Settings are layered: built-in defaults, then the TOML file given with --config, then
/// COFFER_AGENT_* environment variables, then flags.
#[derive(Debug, Parser)]
#[command(name = "coffer-agent", version)]
struct Cli {
    /// TOML configuration file.
    #[arg(long, env = "COFFER_AGENT_CONFIG")]
    config: Option<PathBuf>,

    /// Print the resolved configuration as TOML and exit.
    #[arg(long)]
    dump_config: bool,

    /// Log format on stderr: text, or json (one object per line).
    #[arg(long, env = "COFFER_LOG_FORMAT", default_value = "text")]
    log_format: coffer_process::LogFormat,

    #[command(flatten)]
    options: AgentOptions,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    coffer_process::init_tracing_as(cli.log_format);
    let file_options = match &cli.config {
        Some(path) => coffer_process::load_toml(path)?,
        None => AgentOptions::default(),
    };
    let config = cli
        .options
        .or(file_options)
        .resolve()
        .context("resolve agent configuration")?;
    if cli.dump_config {
        print!(
            "{}",
            toml::to_string(&config).context("render configuration")?
        );
        return Ok(());
    }
    let agent = coffer_agent::Agent::open(config.clone())
        .await
        .context("open agent")?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("bind {}", config.listen))?;
    let address = listener.local_addr().context("read bound address")?;
    tracing::info!(%address, node_id = %agent.node_id(), "agent serving");
    // The one line on stdout: scripts and tests read the bound address (port 0 picks one).
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    coffer_process::announce(&format!("coffer-agent listening on {scheme}://{address}"));
    coffer_agent::run(listener, agent, coffer_process::shutdown_signal())
        .await
        .context("serve")?;
    Ok(())
}
