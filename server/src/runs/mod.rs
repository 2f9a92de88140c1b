//! Runs: the persisted state machines of backups and restores, their live progress, watchers and
//! cancellation.
//!
//! A run is recorded (queued) before its id is returned, and every transition is written before
//! it is acted on. While a run executes, its current state lives in a watch channel: watchers
//! get the current state first, then changes at most every `min_update_interval`, then the final
//! state at once ([`watchers`]). Progress counters reach the catalog about once a second;
//! transitions at once.
//!
//! The kinds of run share the node fan-out ([`fanout`]); [`recovery`] finishes, at start-up,
//! the runs a previous server process left in flight.

pub mod backup;
pub mod fanout;
pub mod listing;
pub mod purge;
mod recovery;
pub mod restore;
pub mod validate;
mod watchers;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures::Stream;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::agents::AgentClients;
use crate::catalog::Catalog;
use crate::error::{Error, Result};
use crate::model::Page;
use crate::model::page::{Cursor, CursorKind};
use crate::model::run::{ListRuns, NodePhase, Run, RunQuery, RunState};

/// Most often progress reaches the catalog while a run executes.
const PERSIST_INTERVAL: Duration = Duration::from_secs(1);
/// Default and smallest interval between two watch messages.
pub const DEFAULT_WATCH_INTERVAL: Duration = Duration::from_millis(250);
/// Smallest interval a watcher may ask for.
pub const MIN_WATCH_INTERVAL: Duration = Duration::from_millis(100);

/// A run that is executing in this server.
#[derive(Debug)]
struct LiveRun {
    state: watch::Sender<Run>,
    cancel: CancellationToken,
}

/// Owns the executing runs.
#[derive(Debug, Clone)]
pub struct RunManager {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    catalog: Catalog,
    agents: Arc<AgentClients>,
    live: Mutex<HashMap<Uuid, Arc<LiveRun>>>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    metrics: crate::metrics::Metrics,
    notifier: crate::notify::Notifier,
}

impl RunManager {
    /// A manager over the catalog, calling agents through `agents`, counting runs in `metrics`
    /// and telling `notifier` of their ends.
    pub fn new(
        catalog: Catalog,
        agents: Arc<AgentClients>,
        metrics: crate::metrics::Metrics,
        notifier: crate::notify::Notifier,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                catalog,
                agents,
                live: Mutex::new(HashMap::new()),
                metrics,
                notifier,
                shutdown: CancellationToken::new(),
                tasks: TaskTracker::new(),
            }),
        }
    }

    pub(crate) fn catalog(&self) -> &Catalog {
        &self.inner.catalog
    }

    pub(crate) fn agents(&self) -> &Arc<AgentClients> {
        &self.inner.agents
    }

    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Arc<LiveRun>>> {
        self.inner
            .live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts executing a recorded, queued run in the background with `work`.
    pub(crate) fn spawn<F, Fut>(&self, run: Run, work: F)
    where
        F: FnOnce(RunHandle) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (state, _) = watch::channel(run.clone());
        let cancel = self.inner.shutdown.child_token();
        let live = Arc::new(LiveRun {
            state,
            cancel: cancel.clone(),
        });
        self.live().insert(run.id, live.clone());
        let ended = live.clone();
        let handle = RunHandle {
            manager: self.clone(),
            live,
            last_persist: Instant::now(),
        };
        // A run outlives the request that started it: its span hangs off no request.
        let span =
            tracing::info_span!(parent: None, "run", run_id = %run.id, cluster = %run.cluster_name);
        let manager = self.clone();
        let run_id = run.id;
        let metrics = self.inner.metrics.clone();
        let notifier = self.inner.notifier.clone();
        metrics.run_started(run.kind);
        self.inner.tasks.spawn(tracing::Instrument::instrument(
            async move {
                work(handle).await;
                manager.live().remove(&run_id);
                // Counted and notified here, whatever path the work took to its end.
                let run = ended.state.borrow().clone();
                metrics.run_finished(&run);
                notifier.run_ended(&run);
            },
            span,
        ));
    }

    /// Where runs' ends are told.
    pub fn notifier(&self) -> &crate::notify::Notifier {
        &self.inner.notifier
    }

    /// The runs' metrics (and the server's others).
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.inner.metrics
    }

    /// The run with this id: live state if it executes here, else as recorded.
    pub async fn get(&self, id: Uuid) -> Result<Run> {
        let live = self.live().get(&id).map(|live| live.state.borrow().clone());
        if let Some(run) = live {
            return Ok(run);
        }
        self.inner
            .catalog
            .get_run(id)
            .await?
            .ok_or_else(|| Error::NotFound {
                kind: "run",
                name: id.to_string(),
            })
    }

    /// Runs newest first. Fails with NOT_FOUND when the cluster named does not exist.
    pub async fn list(&self, query: RunQuery) -> Result<Page<Run>> {
        let cluster_id = match &query.cluster {
            Some(reference) => Some(
                self.inner
                    .catalog
                    .find_cluster(reference)
                    .await?
                    .ok_or_else(|| Error::NotFound {
                        kind: "cluster",
                        name: reference.clone(),
                    })?
                    .id,
            ),
            None => None,
        };
        let listing = ListRuns {
            page_size: query.page_size,
            after: query.after,
            cluster_id,
            kind: query.kind,
            states: query.states,
            min_create_ms: query.min_create_ms,
            max_create_ms: query.max_create_ms,
            schedule_id: query.schedule_id,
        };
        let (items, more) = self.inner.catalog.list_runs(&listing).await?;
        let next_page_token = if more {
            items
                .last()
                .map(|last| Cursor::after_time(CursorKind::Run, last.create_time, last.id).encode())
        } else {
            None
        };
        Ok(Page {
            items,
            next_page_token,
        })
    }

    /// Follows a run: its current state at once, then changes at most every `interval`, ending
    /// after the final state.
    pub async fn watch(
        &self,
        id: Uuid,
        interval: Duration,
    ) -> Result<impl Stream<Item = Run> + Send + 'static> {
        let receiver = self.live().get(&id).map(|live| live.state.subscribe());
        let first = match &receiver {
            Some(receiver) => receiver.borrow().clone(),
            None => self.get(id).await?,
        };
        let catalog = self.inner.catalog.clone();
        Ok(watchers::coalesced(first, receiver, catalog, interval))
    }

    /// Asks a run to stop. Queued and running runs go to CANCELING, then (once their nodes
    /// stopped and cleaned up) CANCELED. Cancelling a canceling run changes nothing.
    ///
    /// Fails with NOT_FOUND for an unknown run and FAILED_PRECONDITION for a finished one or one
    /// whose backup is being committed.
    pub async fn cancel(&self, id: Uuid) -> Result<Run> {
        let live = self.live().get(&id).cloned();
        let Some(live) = live else {
            let run = self.get(id).await?;
            return Err(Error::FailedPrecondition(format!(
                "run {id} has ended ({}); there is nothing to cancel",
                run.state.as_str()
            )));
        };
        let current = live.state.borrow().clone();
        match current.state {
            RunState::Canceling => return Ok(current),
            state if state.is_final() => {
                return Err(Error::FailedPrecondition(format!(
                    "run {id} has ended ({}); there is nothing to cancel",
                    state.as_str()
                )));
            }
            _ => {}
        }
        let mut canceling = current;
        canceling.state = RunState::Canceling;
        canceling.update_time = SystemTime::now();
        // Written before acted on: a crash now still finds the run canceling, and a commit that
        // races with this cancel sees it and does not count.
        self.inner.catalog.save_run(&canceling).await?;
        live.state.send_replace(canceling.clone());
        live.cancel.cancel();
        tracing::info!(run_id = %id, "run canceling");
        Ok(canceling)
    }

    /// Finishes runs that a previous server process left in flight. See the module docs.
    /// Removes the snapshots of ended runs from the nodes of `cluster` (see
    /// [`recovery::remove_leftover_snapshots`]); best effort, never fails.
    pub async fn remove_leftover_snapshots(&self, cluster: &crate::model::Cluster) {
        recovery::remove_leftover_snapshots(self, cluster).await;
    }

    pub async fn recover(&self) -> Result<()> {
        recovery::recover_all(self).await
    }

    fn is_live(&self, id: Uuid) -> bool {
        self.live().contains_key(&id)
    }

    /// Stops every executing run (as a cancel would, but recorded as failed by a shutdown) and
    /// waits for them to clean up.
    pub async fn shutdown(&self) {
        self.inner.shutdown.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }

    /// Whether the server is shutting down.
    pub(crate) fn is_shutting_down(&self) -> bool {
        self.inner.shutdown.is_cancelled()
    }
}

/// What a run's task uses to publish progress and transitions.
#[derive(Debug)]
pub struct RunHandle {
    manager: RunManager,
    live: Arc<LiveRun>,
    last_persist: Instant,
}

impl RunHandle {
    /// The run as it is now.
    pub fn run(&self) -> Run {
        self.live.state.borrow().clone()
    }

    /// Fires when the run is canceled or the server shuts down.
    pub fn cancelled(&self) -> CancellationToken {
        self.live.cancel.clone()
    }

    pub fn manager(&self) -> &RunManager {
        &self.manager
    }

    /// Applies a transition and writes it to the catalog before returning.
    ///
    /// Fails when the catalog cannot be written: the caller must not act on the transition.
    pub async fn transition(&mut self, change: impl FnOnce(&mut Run)) -> Result<()> {
        let mut run = self.run();
        change(&mut run);
        run.update_time = SystemTime::now();
        // A cancel may have been written meanwhile: never overwrite canceling with running.
        if self.live.state.borrow().state == RunState::Canceling && run.state == RunState::Running {
            run.state = RunState::Canceling;
        }
        self.manager.catalog().save_run(&run).await?;
        self.live.state.send_replace(run);
        self.last_persist = Instant::now();
        Ok(())
    }

    /// Applies a progress change; it reaches watchers at once and the catalog within a second.
    pub async fn progress(&mut self, change: impl FnOnce(&mut Run)) {
        self.live.state.send_modify(|run| {
            change(run);
            run.update_time = SystemTime::now();
        });
        if self.last_persist.elapsed() >= PERSIST_INTERVAL {
            self.last_persist = Instant::now();
            let run = self.run();
            if let Err(error) = self.manager.catalog().save_run(&run).await {
                tracing::warn!(%error, "persist run progress");
            }
        }
    }

    /// Records the end of the run from its outcome: succeeded, canceled (the run's token fired),
    /// or failed with the error, or with `shutdown_message` when the server is shutting down.
    /// Nodes that did not end on their own take the run's ending; rates and ETAs are cleared.
    pub async fn finish(&mut self, outcome: Result<()>, shutdown_message: &str) {
        let (state, error) = match outcome {
            Ok(()) => (RunState::Succeeded, String::new()),
            Err(_) if self.manager.is_shutting_down() => {
                (RunState::Failed, shutdown_message.to_string())
            }
            Err(_) if self.live.cancel.is_cancelled() => (RunState::Canceled, String::new()),
            Err(error) => (RunState::Failed, error.to_string()),
        };
        let node_phase = match state {
            RunState::Succeeded => NodePhase::Done,
            RunState::Canceled => NodePhase::Canceled,
            _ => NodePhase::Failed,
        };
        let result = self
            .transition(|run| {
                run.state = state;
                run.error = error.clone();
                run.finish_time = Some(SystemTime::now());
                for node in &mut run.nodes {
                    if !matches!(
                        node.phase,
                        NodePhase::Failed | NodePhase::Canceled | NodePhase::Done
                    ) {
                        node.phase = node_phase;
                    }
                    node.counters.rate_bytes_per_second = 0;
                    node.counters.eta = None;
                }
            })
            .await;
        match result {
            Ok(()) => tracing::info!(state = state.as_str(), error, "run ended"),
            Err(error) => tracing::error!(%error, "record the end of a run"),
        }
    }

    /// Sets the phase of one node (a transition).
    pub async fn node_phase(
        &mut self,
        node_id: Uuid,
        phase: NodePhase,
        error: Option<String>,
    ) -> Result<()> {
        self.transition(|run| {
            if let Some(node) = run.nodes.iter_mut().find(|node| node.node_id == node_id) {
                node.phase = phase;
                if let Some(error) = error {
                    node.last_error = error;
                }
            }
        })
        .await
    }
}
