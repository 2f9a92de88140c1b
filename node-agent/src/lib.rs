//! `coffer-agent`: the Coffer node agent.
//!
//! One agent runs on every database node. The Coffer server calls it over gRPC
//! (`coffer.agent.v1.AgentService`) to learn about the node, to snapshot the node's data and
//! upload it into a location, and to restore a backup's files onto the node.
//!
//! [`run`] serves the agent on a listener the caller has already bound, until `shutdown`
//! resolves; in-flight calls are allowed to finish.

mod child_output;
pub mod config;
pub mod encryption_keys;
mod grpc;
pub mod identity;
pub mod journal;
pub mod metrics;
mod progress;
pub mod reserved;
pub mod restore;
pub mod snapshot;
pub mod storage_policy;
pub mod upload;
pub mod verify;

use std::collections::HashSet;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use coffer_proto::agent::v1 as proto;
use tokio::net::TcpListener;
use uuid::Uuid;

use crate::config::AgentConfig;

/// Version of this agent, reported in node info.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Why the agent could not start or stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The node id could not be loaded or created.
    #[error(transparent)]
    Identity(#[from] identity::IdentityError),
    /// A configured data path does not exist or is not a directory.
    #[error("data path {path}: {reason}")]
    DataPath {
        /// The data path.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The journal could not be opened.
    #[error(transparent)]
    Journal(#[from] journal::JournalError),
    /// The gRPC server failed.
    #[error("serve agent API: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The TLS files cannot be used.
    #[error("agent TLS: {0}")]
    Tls(String),
    /// The metrics address cannot be bound.
    #[error("bind metrics address {address}: {source}")]
    Metrics {
        address: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// The state shared by the agent's request handlers.
#[derive(Debug)]
pub struct Agent {
    node_id: Uuid,
    config: AgentConfig,
    snapshots: snapshot::Snapshotter,
    journal: journal::Journal,
    /// One journal per encryption key: the objects of an encrypted location are named by a
    /// hash keyed with its key, so what the plain journal remembers of a file's content is not
    /// its name there.
    keyed_journals: std::collections::HashMap<coffer_format::object::KeyId, journal::Journal>,
    metrics: metrics::AgentMetrics,
    /// Backups being restored: two restores of one backup would share a staging folder.
    restores: Arc<Mutex<HashSet<Uuid>>>,
}

/// A claim on restoring a backup on this node, released when dropped.
#[derive(Debug)]
pub struct RestoreClaim {
    restores: Arc<Mutex<HashSet<Uuid>>>,
    backup_id: Uuid,
}

impl Drop for RestoreClaim {
    fn drop(&mut self) {
        self.restores
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.backup_id);
    }
}

impl Agent {
    /// Prepares the agent: checks the data paths and loads (or creates) the node id.
    ///
    /// Fails when a data path is missing or not a directory, or the state directory cannot hold
    /// the node id.
    pub async fn open(config: AgentConfig) -> Result<Self, AgentError> {
        for path in &config.data_paths {
            match std::fs::metadata(path) {
                Ok(metadata) if metadata.is_dir() => {}
                Ok(_) => {
                    return Err(AgentError::DataPath {
                        path: path.clone(),
                        reason: "not a directory".into(),
                    });
                }
                Err(error) => {
                    return Err(AgentError::DataPath {
                        path: path.clone(),
                        reason: error.to_string(),
                    });
                }
            }
        }
        let node_id = identity::load_or_create_node_id(&config.state_dir)?;
        let journal = journal::Journal::open(&config.state_dir).await?;
        let mut keyed_journals = std::collections::HashMap::new();
        for bound in &config.storage.keys {
            let id = bound.key.id();
            let path = config.state_dir.join(format!("journal-key-{id}.db"));
            keyed_journals.insert(id, journal::Journal::open_file(path).await?);
        }
        let snapshots = snapshot::Snapshotter::new(&config);
        // Deleted snapshots whose space an earlier agent had not finished freeing.
        snapshots.reclaim();
        let leftovers = snapshots.list_tags();
        if !leftovers.is_empty() {
            // The server removes the snapshots of runs it finds interrupted; until then they
            // pin disk space, so say so.
            tracing::warn!(tags = ?leftovers, "snapshots left by earlier runs");
        }
        let staged = restore::staged_backups(&config.data_paths);
        if !staged.is_empty() {
            // Kept so a new attempt need not download them again; they pin disk space until a
            // restore of the backup succeeds.
            tracing::warn!(folders = ?staged, "restore staging folders left by earlier restores");
        }
        Ok(Self {
            node_id,
            config,
            snapshots,
            journal,
            keyed_journals,
            metrics: metrics::AgentMetrics::new(),
            restores: Arc::default(),
        })
    }

    /// Claims the restore of `backup_id` on this node; `None` while another restore of it runs.
    pub fn claim_restore(&self, backup_id: Uuid) -> Option<RestoreClaim> {
        let mut restores = self.restores.lock().unwrap_or_else(PoisonError::into_inner);
        restores.insert(backup_id).then(|| RestoreClaim {
            restores: self.restores.clone(),
            backup_id,
        })
    }

    /// The agent's configuration.
    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    /// The snapshot provider.
    pub fn snapshots(&self) -> &snapshot::Snapshotter {
        &self.snapshots
    }

    /// The local journal of locations in the clear.
    pub fn journal(&self) -> &journal::Journal {
        &self.journal
    }

    /// The journal of the key this agent's configuration names `name`.
    pub fn journal_named(&self, name: &str) -> Option<&journal::Journal> {
        let bound = self
            .config
            .storage
            .keys
            .iter()
            .find(|bound| bound.binding.name == name)?;
        self.keyed_journals.get(&bound.key.id())
    }

    /// The journal of the locations `keys` seal with their write key (the plain one for
    /// locations in the clear).
    pub fn journal_for(&self, keys: &coffer_format::object::Keyring) -> &journal::Journal {
        keys.write_key()
            .and_then(|key| self.keyed_journals.get(&key.id()))
            .unwrap_or(&self.journal)
    }

    /// The agent's metrics.
    pub fn metrics(&self) -> &metrics::AgentMetrics {
        &self.metrics
    }

    /// The node's stable id.
    pub fn node_id(&self) -> Uuid {
        self.node_id
    }

    /// Describes the node now: reads the free space of every data path's filesystem and lists
    /// the snapshots it keeps.
    pub async fn node_info(&self) -> proto::NodeInfo {
        let paths = self.config.data_paths.clone();
        let snapshots = self.snapshots.clone();
        // statvfs and directory listings can block on a slow or hung filesystem: keep them off
        // the async workers.
        let (data_paths, snapshot_tags) = tokio::task::spawn_blocking(move || {
            let data_paths = paths
                .iter()
                .map(|path| proto::DataPath {
                    path: path.display().to_string(),
                    free_bytes: fs4::available_space(path).unwrap_or_else(|error| {
                        tracing::warn!(path = %path.display(), %error, "read free space");
                        0
                    }),
                    total_bytes: fs4::total_space(path).unwrap_or(0),
                })
                .collect();
            (data_paths, snapshots.list_tags())
        })
        .await
        .unwrap_or_default();
        proto::NodeInfo {
            node_id: self.node_id.to_string(),
            hostname: gethostname::gethostname().to_string_lossy().into_owned(),
            data_paths,
            agent_version: AGENT_VERSION.to_string(),
            snapshot_provider: self.config.snapshot.provider_name().to_string(),
            snapshot_tags,
        }
    }
}

/// Serves the agent API, gRPC health and reflection on `listener` until `shutdown` resolves.
pub async fn run(
    listener: TcpListener,
    agent: Agent,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), AgentError> {
    let agent = Arc::new(agent);
    let snapshots = agent.snapshots.clone();
    let metrics_stop = tokio_util::sync::CancellationToken::new();
    let metrics_server = match agent.config.metrics_listen {
        None => None,
        Some(address) => {
            let listener = TcpListener::bind(address)
                .await
                .map_err(|source| AgentError::Metrics { address, source })?;
            let bound = listener.local_addr().unwrap_or(address);
            tracing::info!(address = %bound, "metrics serving");
            let metrics = agent.metrics.clone();
            Some(tokio::spawn(coffer_process::http::serve_metrics(
                listener,
                Arc::new(move || metrics.render()),
                metrics_stop.clone(),
            )))
        }
    };
    let tls = match &agent.config.tls {
        Some(tls) => Some(coffer_process::tls::server_config(tls).map_err(AgentError::Tls)?),
        None => None,
    };
    let router = grpc::router(agent).await;
    let served = match tls {
        None => {
            router
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    shutdown,
                )
                .await
        }
        Some(config) => {
            // The accept loop ends with serving, so the port is free when `run` returns.
            let stop = tokio_util::sync::CancellationToken::new();
            let (incoming, accepting) =
                coffer_process::tls::incoming(listener, config, stop.clone());
            let served = router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await;
            stop.cancel();
            if let Err(error) = accepting.await {
                tracing::warn!(%error, "TLS accept loop");
            }
            served
        }
    };
    snapshots.stop_reclaiming();
    metrics_stop.cancel();
    if let Some(server) = metrics_server
        && let Err(error) = server.await
    {
        tracing::warn!(%error, "metrics endpoint task");
    }
    served?;
    tracing::info!("agent stopped");
    Ok(())
}
