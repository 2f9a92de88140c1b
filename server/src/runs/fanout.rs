//! The node fan-out every run kind shares: one task per node, at most `parallelism` of them
//! doing their main work at once; their progress turned into the run's (rates, ETAs); their
//! endings recorded as node phases; a failure stopping the others or not, as the kind wants.
//!
//! A node's work gets a [`NodeWork`]: a channel for its [`NodeUpdate`]s and the slots that
//! bound the parallelism (it takes one when its main work starts, so cheap first steps such as
//! a snapshot need not wait for another node's upload). Everything a node reports reaches the
//! run before its ending does.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::model::run::{NodePhase, NodeProgress, NodeUpdate};
use crate::runs::RunHandle;

/// What a run does when one of its nodes fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// Stop the other nodes (their parts are worthless without this one's).
    StopOthers,
    /// Let the others finish (their parts stand on their own).
    Continue,
}

/// How a node's part ended, when it did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeFailure {
    /// It failed; the reason is shown on the node and in the run's error.
    Failed(String),
    /// It was stopped: by a cancel, a shutdown, or another node's failure.
    Canceled,
}

/// What a node's work is given.
#[derive(Debug)]
pub struct NodeWork {
    /// Where it reports its progress.
    pub updates: mpsc::Sender<NodeUpdate>,
    slots: Arc<Semaphore>,
}

impl NodeWork {
    /// Waits for one of the run's `parallelism` slots; hold it for the node's main work.
    pub async fn slot(&self) -> Result<OwnedSemaphorePermit, NodeFailure> {
        self.slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| NodeFailure::Canceled)
    }
}

/// The nodes a run works on, and how.
#[derive(Debug, Clone, Copy)]
pub struct FanOut {
    /// Nodes doing their main work at once; 0 means all.
    pub node_parallelism: u32,
    pub on_failure: OnFailure,
    /// What the run does, for its error message ("backup", "restore").
    pub what: &'static str,
}

enum Event<S> {
    Update(Uuid, NodeUpdate),
    Finished(Uuid, std::result::Result<S, NodeFailure>),
}

/// Runs `work` for every node of `nodes` and follows them to their ends; returns each
/// succeeded node's summary, in the order they finished. `on_done` puts a summary's figures on
/// its node before the node is marked done.
///
/// Fails when a node failed (naming every failed node) or the run was canceled.
pub async fn fan_out<I, S, W, Fut>(
    handle: &mut RunHandle,
    nodes: Vec<(Uuid, I)>,
    fan_out: FanOut,
    work: W,
    mut on_done: impl FnMut(&mut NodeProgress, &S),
) -> Result<Vec<(Uuid, S)>>
where
    I: Send + 'static,
    S: Send + 'static,
    W: Fn(I, NodeWork) -> Fut,
    Fut: Future<Output = std::result::Result<S, NodeFailure>> + Send + 'static,
{
    let run_cancel = handle.cancelled();
    // A failing node stops the others through this token; a cancel of the run reaches it too.
    let stop = run_cancel.child_token();
    let node_count = nodes.len().max(1);
    let parallelism = match fan_out.node_parallelism {
        0 => node_count,
        n => (n as usize).min(node_count),
    };
    let slots = Arc::new(Semaphore::new(parallelism));
    let (events, mut received) = mpsc::channel::<Event<S>>(256);
    let mut tasks = tokio::task::JoinSet::new();
    for (node_id, input) in nodes {
        let (updates, mut node_updates) = mpsc::channel(64);
        let node_work = work(
            input,
            NodeWork {
                updates,
                slots: slots.clone(),
            },
        );
        let (events, stop) = (events.clone(), stop.clone());
        tasks.spawn(async move {
            let mut node_work = std::pin::pin!(node_work);
            let outcome = loop {
                tokio::select! {
                    biased;
                    () = stop.cancelled() => break Err(NodeFailure::Canceled),
                    Some(update) = node_updates.recv() => {
                        let _ = events.send(Event::Update(node_id, update)).await;
                    }
                    outcome = &mut node_work => break outcome,
                }
            };
            // What the work reported before it ended reaches the run before its ending.
            while let Ok(update) = node_updates.try_recv() {
                let _ = events.send(Event::Update(node_id, update)).await;
            }
            let _ = events.send(Event::Finished(node_id, outcome)).await;
        });
    }
    drop(events);

    let mut meters: HashMap<Uuid, RateMeter> = HashMap::new();
    let mut summaries = Vec::new();
    let mut failures = Vec::new();
    while let Some(event) = received.recv().await {
        match event {
            Event::Update(node_id, update) => {
                let rate = match &update {
                    NodeUpdate::Progress { progress, .. } => Some(
                        meters
                            .entry(node_id)
                            .or_default()
                            .observe(progress.bytes_done),
                    ),
                    NodeUpdate::Totals { .. } => None,
                };
                handle
                    .progress(|run| {
                        if let Some(node) = run.nodes.iter_mut().find(|n| n.node_id == node_id) {
                            apply_update(node, &update, rate);
                        }
                    })
                    .await;
            }
            Event::Finished(node_id, Ok(summary)) => {
                handle
                    .progress(|run| {
                        if let Some(node) = run.nodes.iter_mut().find(|n| n.node_id == node_id) {
                            on_done(node, &summary);
                            node.counters.rate_bytes_per_second = 0;
                            node.counters.eta = None;
                        }
                    })
                    .await;
                // Its part is done, whatever becomes of the others' or of a commit: a run that
                // fails later shows which nodes did their share.
                handle.node_phase(node_id, NodePhase::Done, None).await?;
                summaries.push((node_id, summary));
            }
            Event::Finished(node_id, Err(NodeFailure::Failed(reason)))
                if !run_cancel.is_cancelled() =>
            {
                tracing::warn!(node_id = %node_id, reason, "node failed its part of the run");
                handle
                    .node_phase(node_id, NodePhase::Failed, Some(reason.clone()))
                    .await?;
                failures.push(format!("node {node_id}: {reason}"));
                if fan_out.on_failure == OnFailure::StopOthers {
                    stop.cancel();
                }
            }
            Event::Finished(node_id, Err(failure)) => {
                if let NodeFailure::Failed(reason) = failure {
                    tracing::info!(node_id = %node_id, reason, "node stopped by a cancel");
                }
                handle
                    .node_phase(node_id, NodePhase::Canceled, None)
                    .await?;
            }
        }
    }
    while tasks.join_next().await.is_some() {}
    if !failures.is_empty() {
        return Err(Error::FailedPrecondition(format!(
            "{} failed: {}",
            fan_out.what,
            failures.join("; ")
        )));
    }
    if run_cancel.is_cancelled() {
        return Err(Error::Canceled);
    }
    Ok(summaries)
}

fn apply_update(node: &mut NodeProgress, update: &NodeUpdate, rate: Option<u64>) {
    match update {
        NodeUpdate::Totals {
            phase,
            files_total,
            bytes_total,
        } => {
            node.phase = *phase;
            node.counters.files_total = *files_total;
            node.counters.bytes_total = *bytes_total;
        }
        NodeUpdate::Progress { phase, progress } => {
            node.phase = *phase;
            progress.apply_to(&mut node.counters);
            let rate = rate.unwrap_or(0);
            node.counters.rate_bytes_per_second = rate;
            let remaining = progress.bytes_total.saturating_sub(progress.bytes_done);
            node.counters.eta =
                (rate > 0).then(|| Duration::from_secs_f64(remaining as f64 / rate as f64));
        }
    }
}

/// Throughput over the last few seconds, from cumulative byte counts.
#[derive(Debug, Default)]
struct RateMeter {
    last: Option<(Instant, u64)>,
    rate: f64,
}

impl RateMeter {
    fn observe(&mut self, bytes_done: u64) -> u64 {
        let now = Instant::now();
        if let Some((then, before)) = self.last {
            let elapsed = now.duration_since(then).as_secs_f64();
            if elapsed >= 0.2 {
                let instant = bytes_done.saturating_sub(before) as f64 / elapsed;
                // Exponential smoothing: steady enough for an ETA, quick to follow real changes.
                self.rate = if self.rate == 0.0 {
                    instant
                } else {
                    0.7 * self.rate + 0.3 * instant
                };
                self.last = Some((now, bytes_done));
            }
        } else {
            self.last = Some((now, bytes_done));
        }
        self.rate as u64
    }
}
