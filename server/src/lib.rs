//! `coffer-server`: Coffer's control plane.
//!
//! One server keeps the catalog (SQLite), exposes the `coffer.v1` gRPC API, and dispatches work
//! to the node agent on every database node. It never opens storage itself.
//!
//! Layers, top to bottom: [`grpc`] (handlers, conversions, status mapping) over the domain
//! ([`clusters`], [`model`]) over the [`catalog`] (all SQL) and [`agents`] (calls to agents).

pub mod agent_checks;
pub mod agents;
pub mod auth;
pub mod backups;
pub mod catalog;
pub mod clock;
pub mod clusters;
pub mod config;
pub mod error;
pub mod grpc;
pub mod lifecycle;
pub mod locations;
pub mod metrics;
pub mod model;
pub mod notify;
pub mod report;
pub mod restores;
pub mod runs;
pub mod scheduler;
pub mod schedules;
pub mod status;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::agents::AgentClients;
use crate::auth::Tokens;
use crate::backups::Backups;
use crate::catalog::Catalog;
use crate::clock::{Clock, FileClock, SystemClock};
use crate::clusters::ClusterRegistry;
use crate::config::ServerConfig;
use crate::lifecycle::import::Importer;
use crate::lifecycle::purge::Purges;
use crate::lifecycle::validate::Validations;
use crate::locations::LocationRegistry;
use crate::restores::Restores;
use crate::runs::RunManager;
use crate::scheduler::Scheduler;
use crate::schedules::Schedules;

/// The server's state: the catalog and the domain services over it.
#[derive(Debug, Clone)]
pub struct Coffer {
    catalog: Catalog,
    clusters: Arc<ClusterRegistry>,
    locations: LocationRegistry,
    runs: RunManager,
    backups: Backups,
    restores: Restores,
    scheduler: Scheduler,
    schedules: Schedules,
    importer: Importer,
    validations: Validations,
    purges: Purges,
    tokens: Tokens,
    agent_checks: agent_checks::AgentChecks,
    api_tls: Option<config::ApiTls>,
}

impl Coffer {
    /// Opens the catalog (applying migrations) and builds the domain services.
    ///
    /// Fails when the catalog cannot be opened or migrated.
    pub async fn open(config: &ServerConfig) -> error::Result<Self> {
        let catalog = Catalog::open(&config.catalog).await?;
        let catalog_for_tokens = catalog.clone();
        let agent_tls = config
            .agent_tls
            .clone()
            .map(agents::tls::AgentTls::load)
            .transpose()
            .map_err(error::Error::FailedPrecondition)?;
        let agents = Arc::new(AgentClients::with_tls(config.agent_calls(), agent_tls));
        let clusters = Arc::new(ClusterRegistry::new(catalog.clone(), agents.clone()));
        let locations = LocationRegistry::new(catalog.clone(), (*clusters).clone(), agents.clone());
        let metrics = metrics::Metrics::new();
        let notifier = notify::Notifier::new(&config.webhooks, metrics.clone())?;
        let agent_checks = agent_checks::AgentChecks::new(
            (*clusters).clone(),
            metrics.clone(),
            config.agent_check_interval,
        );
        let runs = RunManager::new(catalog.clone(), agents.clone(), metrics, notifier);
        let backups = Backups::new(
            catalog.clone(),
            (*clusters).clone(),
            locations.clone(),
            runs.clone(),
        );
        let restores = Restores::new(
            catalog.clone(),
            (*clusters).clone(),
            locations.clone(),
            backups.clone(),
            runs.clone(),
        );
        let clock: Arc<dyn Clock> = match &config.scheduler_clock_file {
            Some(path) => Arc::new(FileClock::new(path.clone())),
            None => Arc::new(SystemClock),
        };
        let purges = Purges::new(
            catalog.clone(),
            (*clusters).clone(),
            locations.clone(),
            runs.clone(),
        );
        let validations = Validations::new(
            catalog.clone(),
            (*clusters).clone(),
            locations.clone(),
            runs.clone(),
        );
        let scheduler = Scheduler::new(
            catalog.clone(),
            backups.clone(),
            purges.clone(),
            validations.clone(),
            clock.clone(),
            config.scheduler_tick,
            runs.metrics().clone(),
        );
        let schedules = Schedules::new(
            catalog.clone(),
            (*clusters).clone(),
            locations.clone(),
            scheduler.clone(),
        );
        let importer = Importer::new(catalog.clone(), locations.clone(), agents, clock);
        Ok(Self {
            catalog,
            clusters,
            locations,
            runs,
            backups,
            restores,
            scheduler,
            schedules,
            importer,
            validations,
            purges,
            tokens: Tokens::new(catalog_for_tokens, config.auth),
            agent_checks,
            api_tls: config.tls.clone(),
        })
    }

    /// Storage locations.
    pub fn locations(&self) -> &LocationRegistry {
        &self.locations
    }

    pub fn runs(&self) -> &RunManager {
        &self.runs
    }

    pub fn backups(&self) -> &Backups {
        &self.backups
    }

    pub fn schedules(&self) -> &Schedules {
        &self.schedules
    }

    /// What the last check of the agents found.
    pub fn agent_checks(&self) -> &agent_checks::AgentChecks {
        &self.agent_checks
    }

    /// What the status page shows.
    pub fn status_page(&self) -> status::StatusPage {
        status::StatusPage::new(
            (*self.clusters).clone(),
            self.runs.clone(),
            self.schedules.clone(),
            self.backups.clone(),
            self.agent_checks.clone(),
        )
    }

    /// API tokens.
    pub fn tokens(&self) -> &Tokens {
        &self.tokens
    }

    /// The API's TLS files, when it serves TLS.
    pub fn api_tls(&self) -> Option<&config::ApiTls> {
        self.api_tls.as_ref()
    }

    /// Cluster registration and inspection.
    pub fn clusters(&self) -> &ClusterRegistry {
        &self.clusters
    }

    /// The server's metrics, with each cluster's last successful backup read from the catalog
    /// (so a restart does not lose what alerts compare with).
    ///
    /// Fails when the catalog cannot be read.
    pub async fn metrics(&self) -> error::Result<metrics::Metrics> {
        let metrics = self.runs.metrics().clone();
        for (cluster, time) in self.catalog.last_backup_times().await? {
            metrics.backup_succeeded(&cluster, Some(time));
        }
        for (schedule, time) in self.catalog.last_backup_times_by_schedule().await? {
            metrics.schedule_backup_succeeded(schedule, time);
        }
        Ok(metrics)
    }

    /// Stops executing runs (they end as failed, their snapshots removed), then closes the
    /// catalog; call after serving has stopped.
    pub async fn close(&self) {
        self.runs.shutdown().await;
        self.catalog.close().await;
    }
}

/// Serves the API on `listener` until `shutdown` resolves, then lets in-flight calls finish.
///
/// Fails when the transport fails.
pub async fn run(
    listener: TcpListener,
    coffer: &Coffer,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), grpc::ServeError> {
    // TLS settings first: unusable files stop the server before it serves anything.
    let tls = coffer
        .api_tls()
        .map(config::ApiTls::server_config)
        .transpose()
        .map_err(grpc::ServeError::Tls)?;
    let router = grpc::router(coffer).await;
    // Runs a previous process left in flight are finished in the background: it needs agents,
    // which may take a while to answer, and must not delay serving.
    // The scheduler starts once they are recovered, so that what it finds in the catalog about
    // its runs is final or live.
    let runs = coffer.runs.clone();
    let scheduler = coffer.scheduler.clone();
    let stop_scheduler = tokio_util::sync::CancellationToken::new();
    let scheduler_stopped = stop_scheduler.clone();
    let scheduler_task = tokio::spawn(async move {
        if let Err(error) = runs.recover().await {
            tracing::error!(%error, "recover interrupted runs");
        }
        scheduler.run(scheduler_stopped).await;
    });
    // The agents' checks and the webhooks' deliveries work beside serving, and stop with it.
    let background_stop = tokio_util::sync::CancellationToken::new();
    let background = tokio_util::task::TaskTracker::new();
    {
        let checks = coffer.agent_checks.clone();
        let stop = background_stop.clone();
        background.spawn(async move { checks.run(stop).await });
        let notifier = coffer.runs.notifier().clone();
        let stop = background_stop.clone();
        background.spawn(async move { notifier.deliver(stop).await });
    }
    background.close();
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
    // No fire starts a run once serving stopped: the runs are about to be shut down.
    stop_scheduler.cancel();
    background_stop.cancel();
    background.wait().await;
    if let Err(error) = scheduler_task.await {
        tracing::error!(%error, "scheduler task failed");
    }
    served?;
    tracing::info!("server stopped");
    Ok(())
}
