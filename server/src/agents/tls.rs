//! Mutual TLS towards the agents: the CA that signs the agents' certificates (an agent is
//! trusted only when its certificate, from that CA, names the host of its registered address:
//! an impostor at a node's address has no such certificate) and the server's own client
//! certificate, which the agents check against the CA they trust. The files are read again when
//! they change (checked at most every few seconds), so renewed certificates are used without a
//! restart: channels made before are replaced.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// How often the files are looked at for a change.
const RECHECK: Duration = Duration::from_secs(5);

/// The server's TLS files for calls to agents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct AgentTlsFiles {
    /// CA (PEM) that signs the agents' certificates.
    pub ca: PathBuf,
    /// The server's client certificate (PEM) and key, signed by a CA the agents trust.
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The loaded settings, and which load they are.
#[derive(Debug)]
struct Loaded {
    config: ClientTlsConfig,
    stamp: Vec<Option<SystemTime>>,
    generation: u64,
    checked: Instant,
}

/// TLS settings for new channels to agents, kept in step with their files.
#[derive(Debug)]
pub struct AgentTls {
    files: AgentTlsFiles,
    loaded: Mutex<Loaded>,
}

impl AgentTls {
    /// Reads the files; fails naming the one that cannot be read.
    pub fn load(files: AgentTlsFiles) -> Result<Self, String> {
        let config = read(&files)?;
        Ok(Self {
            loaded: Mutex::new(Loaded {
                config,
                stamp: stamp(&files),
                generation: 0,
                checked: Instant::now(),
            }),
            files,
        })
    }

    /// The current settings and their generation (it grows when the files were rewritten).
    /// Files that changed but cannot be read keep the last good settings (logged).
    pub fn current(&self) -> (ClientTlsConfig, u64) {
        let mut loaded = self
            .loaded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if loaded.checked.elapsed() >= RECHECK {
            loaded.checked = Instant::now();
            let now = stamp(&self.files);
            if now != loaded.stamp {
                match read(&self.files) {
                    Ok(config) => {
                        loaded.config = config;
                        loaded.stamp = now;
                        loaded.generation += 1;
                        tracing::info!("agent TLS files changed: new connections use them");
                    }
                    Err(error) => {
                        tracing::warn!(%error, "agent TLS files changed but cannot be used")
                    }
                }
            }
        }
        (loaded.config.clone(), loaded.generation)
    }
}

fn stamp(files: &AgentTlsFiles) -> Vec<Option<SystemTime>> {
    [&files.ca, &files.cert, &files.key]
        .iter()
        .map(|path| std::fs::metadata(path).and_then(|m| m.modified()).ok())
        .collect()
}

fn read(files: &AgentTlsFiles) -> Result<ClientTlsConfig, String> {
    let read = |what: &str, path: &Path| {
        std::fs::read(path).map_err(|error| format!("read the {what} {}: {error}", path.display()))
    };
    // Two rustls backends are linked; say which one TLS uses (one installed already stays).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("agent CA", &files.ca)?))
        .identity(Identity::from_pem(
            read("client certificate", &files.cert)?,
            read("client key", &files.key)?,
        ));
    // The PEM is parsed only when an endpoint takes the settings: try it now, so that files
    // that cannot be used (a half-written renewal) never replace good ones.
    tonic::transport::Endpoint::from_static("https://agent.invalid")
        .tls_config(config.clone())
        .map_err(|error| format!("use the agent TLS files: {error}"))?;
    Ok(config)
}
