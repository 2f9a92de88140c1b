//! The server's configuration: defaults, then a TOML file, then `COFFER_*` environment
//! variables, then flags. [`ServerOptions`] is the partial form every layer parses into;
//! [`ServerConfig`] is the validated result.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use coffer_process::Layered;
use serde::{Deserialize, Serialize};

use crate::agents::AgentCallOptions;
use crate::auth::AuthMode;

/// Address the server listens on when nothing else is configured.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";
/// Catalog file when nothing else is configured.
pub const DEFAULT_CATALOG: &str = "/var/lib/coffer/catalog.db";

/// One layer of server settings; every field is optional so layers can be merged.
#[derive(Debug, Default, Clone, PartialEq, Eq, clap::Args, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct ServerOptions {
    /// Address to serve the API on [default: 127.0.0.1:50051].
    #[arg(long, global = true, env = "COFFER_LISTEN")]
    pub listen: Option<SocketAddr>,

    /// SQLite catalog file, created if missing [default: /var/lib/coffer/catalog.db].
    #[arg(long, global = true, env = "COFFER_CATALOG")]
    pub catalog: Option<PathBuf>,

    /// Serve Prometheus metrics (plain HTTP, GET /metrics) on this address; port 0 picks one,
    /// logged as `metrics serving` [default: off]. Metrics carry cluster names and counts, no
    /// secrets: keep the address on loopback or a monitoring network.
    #[arg(long, global = true, env = "COFFER_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Serve the status page (HTTP, or HTTPS with the API's TLS files) on this address; port 0
    /// picks one, logged as `status page serving` [default: off]. It asks for a token of scope
    /// read when the API asks for tokens.
    #[arg(long, global = true, env = "COFFER_STATUS_LISTEN")]
    pub status_listen: Option<SocketAddr>,

    /// How often the server checks that every registered node's agent answers (the metric
    /// `coffer_agent_up` and the status page) [default: 30s].
    #[arg(long, global = true, env = "COFFER_AGENT_CHECK_INTERVAL", value_parser = coffer_process::parse_duration)]
    #[serde(with = "coffer_process::optional_duration")]
    pub agent_check_interval: Option<Duration>,

    /// Webhooks called when a run ends (TOML only: `[[webhooks]]` tables; see
    /// docs/operating.md).
    #[arg(skip)]
    pub webhooks: Option<Vec<crate::notify::WebhookOptions>>,

    /// Longest wait for a connection to an agent [default: 5s].
    #[arg(long, global = true, env = "COFFER_AGENT_CONNECT_TIMEOUT", value_parser = coffer_process::parse_duration)]
    #[serde(with = "coffer_process::optional_duration")]
    pub agent_connect_timeout: Option<Duration>,

    /// Longest wait for an agent's answer to a short call [default: 30s].
    #[arg(long, global = true, env = "COFFER_AGENT_REQUEST_TIMEOUT", value_parser = coffer_process::parse_duration)]
    #[serde(with = "coffer_process::optional_duration")]
    pub agent_request_timeout: Option<Duration>,

    /// Most agents called at once [default: 32].
    #[arg(long, global = true, env = "COFFER_AGENT_PARALLELISM")]
    pub agent_parallelism: Option<usize>,

    /// How often the scheduler looks for schedules to fire [default: 1s].
    #[arg(long, global = true, env = "COFFER_SCHEDULER_TICK", value_parser = coffer_process::parse_duration)]
    #[serde(with = "coffer_process::optional_duration")]
    pub scheduler_tick: Option<Duration>,

    /// For rehearsals and tests only: the scheduler reads the time (milliseconds since the
    /// epoch) from this file instead of the system clock, so days of fire times pass in
    /// seconds. Runs and backups keep the system's time.
    #[arg(long, global = true, env = "COFFER_SCHEDULER_CLOCK_FILE")]
    pub scheduler_clock_file: Option<PathBuf>,

    /// Whether API calls must present a bearer token: `tokens` (every call but health and
    /// reflection) or `none` (anyone reaching the port may do anything) [default: tokens].
    #[arg(long, global = true, env = "COFFER_AUTH", value_enum)]
    pub auth: Option<AuthMode>,

    /// Where the server writes the admin token it creates when no token exists yet
    /// [default: admin.token beside the catalog].
    #[arg(long, global = true, env = "COFFER_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,

    /// Serve the API over TLS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, global = true, env = "COFFER_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,

    /// The private key (PEM) of --tls-cert.
    #[arg(long, global = true, env = "COFFER_TLS_KEY")]
    pub tls_key: Option<PathBuf>,

    /// Also ask every API client for a certificate signed by this CA (PEM); needs --tls-cert.
    #[arg(long, global = true, env = "COFFER_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,

    /// Serve the API without TLS on an address other than loopback: without it, such a
    /// configuration is refused [default: false].
    #[arg(
        long,
        global = true,
        env = "COFFER_ALLOW_PLAINTEXT",
        num_args = 0..=1,
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub allow_plaintext: Option<bool>,

    /// Speak mutual TLS to every agent: the CA (PEM) that signs the agents' certificates (each
    /// must name the host of its registered address); needs --agent-tls-cert and -key.
    #[arg(long, global = true, env = "COFFER_AGENT_TLS_CA")]
    pub agent_tls_ca: Option<PathBuf>,

    /// The server's client certificate (PEM) towards the agents.
    #[arg(long, global = true, env = "COFFER_AGENT_TLS_CERT")]
    pub agent_tls_cert: Option<PathBuf>,

    /// The private key (PEM) of --agent-tls-cert.
    #[arg(long, global = true, env = "COFFER_AGENT_TLS_KEY")]
    pub agent_tls_key: Option<PathBuf>,

    /// Speak mutual TLS to every agent with the CA that `coffer-server agent-ca init` made in
    /// this folder (its ca.pem, server-client.pem and server-client.key); instead of the three
    /// --agent-tls-* settings.
    #[arg(long, global = true, env = "COFFER_AGENT_CA")]
    pub agent_ca: Option<PathBuf>,
}

impl Layered for ServerOptions {
    fn or(self, lower: Self) -> Self {
        Self {
            listen: self.listen.or(lower.listen),
            catalog: self.catalog.or(lower.catalog),
            metrics_listen: self.metrics_listen.or(lower.metrics_listen),
            status_listen: self.status_listen.or(lower.status_listen),
            agent_check_interval: self.agent_check_interval.or(lower.agent_check_interval),
            webhooks: self.webhooks.or(lower.webhooks),
            agent_connect_timeout: self.agent_connect_timeout.or(lower.agent_connect_timeout),
            agent_request_timeout: self.agent_request_timeout.or(lower.agent_request_timeout),
            agent_parallelism: self.agent_parallelism.or(lower.agent_parallelism),
            scheduler_tick: self.scheduler_tick.or(lower.scheduler_tick),
            scheduler_clock_file: self.scheduler_clock_file.or(lower.scheduler_clock_file),
            auth: self.auth.or(lower.auth),
            admin_token_file: self.admin_token_file.or(lower.admin_token_file),
            tls_cert: self.tls_cert.or(lower.tls_cert),
            tls_key: self.tls_key.or(lower.tls_key),
            tls_client_ca: self.tls_client_ca.or(lower.tls_client_ca),
            allow_plaintext: self.allow_plaintext.or(lower.allow_plaintext),
            agent_tls_ca: self.agent_tls_ca.or(lower.agent_tls_ca),
            agent_tls_cert: self.agent_tls_cert.or(lower.agent_tls_cert),
            agent_tls_key: self.agent_tls_key.or(lower.agent_tls_key),
            agent_ca: self.agent_ca.or(lower.agent_ca),
        }
    }
}

/// The validated configuration the server runs with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct ServerConfig {
    /// Address to serve on (port 0 picks a free port, announced on stdout).
    pub listen: SocketAddr,
    /// Catalog file.
    pub catalog: PathBuf,
    /// Where Prometheus metrics are served, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// Where the status page is served, if anywhere.
    pub status_listen: Option<SocketAddr>,
    /// How often every node's agent is checked.
    #[serde(with = "coffer_process::duration")]
    pub agent_check_interval: Duration,
    /// Webhooks called when runs end.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub webhooks: Vec<crate::notify::WebhookConfig>,
    #[serde(with = "coffer_process::duration")]
    pub agent_connect_timeout: Duration,
    #[serde(with = "coffer_process::duration")]
    pub agent_request_timeout: Duration,
    /// Most agents called at once.
    pub agent_parallelism: usize,
    /// How often the scheduler looks for schedules to fire.
    #[serde(with = "coffer_process::duration")]
    pub scheduler_tick: Duration,
    /// The scheduler's clock, read from a file (rehearsals and tests); `None` is the system's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheduler_clock_file: Option<PathBuf>,
    /// Whether calls present tokens.
    pub auth: AuthMode,
    /// Where the bootstrap admin token is written.
    pub admin_token_file: PathBuf,
    /// TLS of the API; `None` serves plaintext.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<ApiTls>,
    /// Whether plaintext on a non-loopback address was asked for.
    pub allow_plaintext: bool,
    /// Mutual TLS towards the agents; `None` speaks plaintext to them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_tls: Option<crate::agents::tls::AgentTlsFiles>,
}

/// The API's TLS files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct ApiTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The CA client certificates must be signed by; `None` asks for none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
}

impl ApiTls {
    /// The TLS configuration the API (and the status page) serve with.
    ///
    /// Fails when the certificate, key or client CA cannot be read or do not fit.
    pub fn server_config(&self) -> Result<std::sync::Arc<rustls::ServerConfig>, String> {
        coffer_process::tls::server_config(&coffer_process::tls::ServeTls {
            cert: self.cert.clone(),
            key: self.key.clone(),
            client_ca: self.client_ca.clone(),
        })
    }
}

impl ServerConfig {
    /// The agent call options of this configuration.
    pub fn agent_calls(&self) -> AgentCallOptions {
        AgentCallOptions {
            connect_timeout: self.agent_connect_timeout,
            request_timeout: self.agent_request_timeout,
            parallelism: self.agent_parallelism,
        }
    }
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
#[error("{setting}: {reason}")]
pub struct ConfigError {
    /// The setting, as named in the TOML file.
    pub setting: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

impl ServerOptions {
    /// Fills in the defaults and validates the result.
    ///
    /// Fails when a timeout is zero or the parallelism is zero.
    pub fn resolve(self) -> Result<ServerConfig, ConfigError> {
        let listen = match self.listen {
            Some(listen) => listen,
            None => DEFAULT_LISTEN.parse().map_err(|_| ConfigError {
                setting: "listen",
                reason: "bad built-in default".into(),
            })?,
        };
        let catalog = self
            .catalog
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CATALOG));
        let admin_token_file = self
            .admin_token_file
            .unwrap_or_else(|| catalog.with_file_name("admin.token"));
        let config = ServerConfig {
            listen,
            catalog,
            metrics_listen: self.metrics_listen,
            status_listen: self.status_listen,
            agent_check_interval: self.agent_check_interval.unwrap_or(Duration::from_secs(30)),
            webhooks: self
                .webhooks
                .unwrap_or_default()
                .into_iter()
                .map(crate::notify::WebhookOptions::resolve)
                .collect::<Result<_, _>>()?,
            agent_connect_timeout: self.agent_connect_timeout.unwrap_or(Duration::from_secs(5)),
            agent_request_timeout: self
                .agent_request_timeout
                .unwrap_or(Duration::from_secs(30)),
            agent_parallelism: self.agent_parallelism.unwrap_or(32),
            scheduler_tick: self
                .scheduler_tick
                .unwrap_or(crate::scheduler::DEFAULT_TICK),
            scheduler_clock_file: self.scheduler_clock_file,
            auth: self.auth.unwrap_or_default(),
            admin_token_file,
            tls: match (self.tls_cert, self.tls_key, self.tls_client_ca) {
                (Some(cert), Some(key), client_ca) => Some(ApiTls {
                    cert,
                    key,
                    client_ca,
                }),
                (None, None, None) => None,
                (None, None, Some(_)) => {
                    return Err(ConfigError {
                        setting: "tls-client-ca",
                        reason: "needs tls-cert and tls-key: client certificates are asked for \
                                 over TLS"
                            .into(),
                    });
                }
                _ => {
                    return Err(ConfigError {
                        setting: "tls-cert",
                        reason: "tls-cert and tls-key go together".into(),
                    });
                }
            },
            allow_plaintext: self.allow_plaintext.unwrap_or(false),
            agent_tls: match (
                self.agent_tls_ca,
                self.agent_tls_cert,
                self.agent_tls_key,
                self.agent_ca,
            ) {
                (Some(ca), Some(cert), Some(key), None) => {
                    Some(crate::agents::tls::AgentTlsFiles { ca, cert, key })
                }
                (None, None, None, Some(dir)) => Some(crate::agents::ca::tls_files(&dir)),
                (None, None, None, None) => None,
                (_, _, _, Some(_)) => {
                    return Err(ConfigError {
                        setting: "agent-ca",
                        reason: "agent-ca stands for the agent-tls-* settings: give one or the \
                                 other"
                            .into(),
                    });
                }
                _ => {
                    return Err(ConfigError {
                        setting: "agent-tls-ca",
                        reason: "agent-tls-ca, agent-tls-cert and agent-tls-key go together".into(),
                    });
                }
            },
        };
        if config.tls.is_none() && !config.allow_plaintext && !config.listen.ip().is_loopback() {
            return Err(ConfigError {
                setting: "listen",
                reason: format!(
                    "{} is not a loopback address and the API has no TLS: give tls-cert and \
                     tls-key, or allow-plaintext to say that plaintext is intended there",
                    config.listen
                ),
            });
        }
        if let Some(status) = config.status_listen
            && config.tls.is_none()
            && !config.allow_plaintext
            && !status.ip().is_loopback()
        {
            return Err(ConfigError {
                setting: "status-listen",
                reason: format!(
                    "{status} is not a loopback address and the API has no TLS (the status page \
                     is served with the API's): give tls-cert and tls-key, or allow-plaintext"
                ),
            });
        }
        let mut names = std::collections::HashSet::new();
        if let Some(twice) = config
            .webhooks
            .iter()
            .find(|hook| !names.insert(&hook.name))
        {
            return Err(ConfigError {
                setting: "webhooks",
                reason: format!("two webhooks are named {:?}", twice.name),
            });
        }
        for (setting, value) in [
            ("agent-check-interval", config.agent_check_interval),
            ("agent-connect-timeout", config.agent_connect_timeout),
            ("agent-request-timeout", config.agent_request_timeout),
            ("scheduler-tick", config.scheduler_tick),
        ] {
            if value.is_zero() {
                return Err(ConfigError {
                    setting,
                    reason: "must be longer than zero".into(),
                });
            }
        }
        if config.agent_parallelism == 0 {
            return Err(ConfigError {
                setting: "agent-parallelism",
                reason: "must be at least 1".into(),
            });
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_merge_with_flags_on_top() {
        let file: ServerOptions = toml::from_str(
            "catalog = \"/srv/coffer.db\"\nagent-connect-timeout = \"2s\"\nagent-parallelism = 4\n",
        )
        .expect("parse");
        let flags = ServerOptions {
            agent_parallelism: Some(8),
            ..ServerOptions::default()
        };
        let config = flags.or(file).resolve().expect("valid");
        assert_eq!(config.catalog, PathBuf::from("/srv/coffer.db"));
        assert_eq!(config.agent_connect_timeout, Duration::from_secs(2));
        assert_eq!(config.agent_request_timeout, Duration::from_secs(30));
        assert_eq!(config.agent_parallelism, 8);
        let dumped = toml::to_string(&config).expect("render");
        assert!(
            dumped.contains("agent-connect-timeout = \"2s\""),
            "{dumped}"
        );
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(toml::from_str::<ServerOptions>("catalogue = \"x\"").is_err());
        assert!(toml::from_str::<ServerOptions>("agent-connect-timeout = \"soon\"").is_err());
        let zero = ServerOptions {
            agent_parallelism: Some(0),
            ..ServerOptions::default()
        };
        assert!(zero.resolve().is_err());
    }

    #[test]
    fn plaintext_off_loopback_is_refused_unless_asked_for() {
        let everywhere = ServerOptions {
            listen: Some("0.0.0.0:50051".parse().expect("address")),
            ..ServerOptions::default()
        };
        let refused = everywhere.clone().resolve().expect_err("plaintext");
        assert_eq!(refused.setting, "listen");
        let asked = ServerOptions {
            allow_plaintext: Some(true),
            ..everywhere.clone()
        };
        assert!(asked.resolve().is_ok());
        let tls = ServerOptions {
            tls_cert: Some("/etc/coffer/api.pem".into()),
            tls_key: Some("/etc/coffer/api.key".into()),
            ..everywhere.clone()
        };
        assert!(tls.resolve().expect("tls").tls.is_some());
        let half = ServerOptions {
            tls_cert: Some("/etc/coffer/api.pem".into()),
            ..ServerOptions::default()
        };
        assert_eq!(half.resolve().expect_err("half").setting, "tls-cert");
        let client_ca_alone = ServerOptions {
            tls_client_ca: Some("/etc/coffer/ca.pem".into()),
            ..ServerOptions::default()
        };
        assert!(client_ca_alone.resolve().is_err());
        // The status page follows the same rule on its own address.
        let status_everywhere = ServerOptions {
            status_listen: Some("0.0.0.0:9465".parse().expect("address")),
            ..ServerOptions::default()
        };
        assert_eq!(
            status_everywhere
                .clone()
                .resolve()
                .expect_err("plaintext status page")
                .setting,
            "status-listen"
        );
        let status_tls = ServerOptions {
            tls_cert: Some("/etc/coffer/api.pem".into()),
            tls_key: Some("/etc/coffer/api.key".into()),
            ..status_everywhere
        };
        assert!(status_tls.resolve().is_ok());
    }
}
