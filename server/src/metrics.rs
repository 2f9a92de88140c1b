//! The server's Prometheus metrics, served on `--metrics-listen` in the text format. Labels stay
//! bounded: run kinds and outcomes, transfer directions, cluster names (as many as clusters are
//! registered), never run ids, backup ids or paths.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

use uuid::Uuid;

use crate::model::run::{Run, RunKind, RunState};

/// A schedule as the metrics see it: its id, name, and next fire time (ms since the epoch)
/// when it is unpaused.
#[derive(Debug, Clone)]
pub struct ScheduleSeen {
    pub id: Uuid,
    pub name: String,
    pub next_fire_ms: Option<i64>,
}

/// Whether a node's agent answered the server's last check.
#[derive(Debug, Clone)]
pub struct AgentSeen {
    pub cluster: String,
    /// The node's registered address.
    pub node: String,
    pub up: bool,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    kind: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClusterLabels {
    cluster: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    method: String,
    code: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: String,
}

fn rpc_histogram() -> Histogram {
    // 1 ms to about 16 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProblemLabels {
    cluster: String,
    problem: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScheduleLabels {
    schedule: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabels {
    cluster: String,
    node: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WebhookLabels {
    webhook: String,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WebhookNameLabels {
    webhook: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FireLabels {
    outcome: &'static str,
    attempt: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    direction: &'static str,
}

fn duration_histogram() -> Histogram {
    // 1 s to about 9 hours.
    Histogram::new(exponential_buckets(1.0, 2.0, 16))
}

/// The server's metrics; cheap to clone (one shared registry).
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    runs_started: Family<KindLabels, Counter>,
    runs_finished: Family<OutcomeLabels, Counter>,
    runs_in_progress: Family<KindLabels, Gauge>,
    run_duration: Family<KindLabels, Histogram, fn() -> Histogram>,
    last_successful_backup: Family<ClusterLabels, Gauge<f64, AtomicU64>>,
    transferred: Family<DirectionLabels, Counter>,
    deduplicated: Counter,
    purged_objects: Counter,
    purged_bytes: Counter,
    unrestorable: Family<ClusterLabels, Gauge>,
    validation_objects: Family<ProblemLabels, Gauge>,
    validation_time: Family<ClusterLabels, Gauge<f64, AtomicU64>>,
    fires: Family<FireLabels, Counter>,
    fires_missed: Counter,
    next_fire: Family<ScheduleLabels, Gauge<f64, AtomicU64>>,
    schedule_last_success: Family<ScheduleLabels, Gauge<f64, AtomicU64>>,
    schedules: Mutex<ScheduleBook>,
    agent_up: Family<NodeLabels, Gauge>,
    webhook_deliveries: Family<WebhookLabels, Counter>,
    webhook_failed_attempts: Family<WebhookNameLabels, Counter>,
    rpcs: Family<RpcLabels, Counter>,
    rpc_duration: Family<MethodLabels, Histogram, fn() -> Histogram>,
}

/// What the per-schedule gauges are made from: a schedule's last success is kept by id (a
/// rename or a delete shows at the next refresh), with the names the scheduler last saw.
#[derive(Debug, Default)]
struct ScheduleBook {
    names: HashMap<Uuid, String>,
    last_success: HashMap<Uuid, f64>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn unix_seconds(at: SystemTime) -> f64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |since| since.as_secs_f64())
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("coffer");
        registry.register(
            "build",
            "The server's version",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        let runs_started = Family::<KindLabels, Counter>::default();
        registry.register(
            "runs_started",
            "Runs started, by kind (backup, restore, validate, purge)",
            runs_started.clone(),
        );
        let runs_finished = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "runs_finished",
            "Runs ended, by kind and outcome (succeeded, failed, canceled)",
            runs_finished.clone(),
        );
        let runs_in_progress = Family::<KindLabels, Gauge>::default();
        registry.register(
            "runs_in_progress",
            "Runs executing now, by kind",
            runs_in_progress.clone(),
        );
        let run_duration = Family::<KindLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            duration_histogram,
        );
        registry.register_with_unit(
            "run_duration",
            "How long runs took from start to end, by kind",
            Unit::Seconds,
            run_duration.clone(),
        );
        let last_successful_backup = Family::<ClusterLabels, Gauge<f64, AtomicU64>>::default();
        registry.register_with_unit(
            "last_successful_backup_timestamp",
            "When the last backup of each cluster succeeded (Unix time): what a missed-backup \
             alert compares with time()",
            Unit::Seconds,
            last_successful_backup.clone(),
        );
        let transferred = Family::<DirectionLabels, Counter>::default();
        registry.register_with_unit(
            "transferred",
            "Bytes moved between nodes and storage by ended runs, as stored: upload (backups) \
             or download (restores)",
            Unit::Bytes,
            transferred.clone(),
        );
        let deduplicated = Counter::default();
        registry.register_with_unit(
            "deduplicated",
            "Bytes of files that backups did not upload because the location held their content",
            Unit::Bytes,
            deduplicated.clone(),
        );
        let purged_objects = Counter::default();
        registry.register(
            "purged_objects",
            "Objects purges deleted (no backup referred to them)",
            purged_objects.clone(),
        );
        let purged_bytes = Counter::default();
        registry.register_with_unit(
            "purged",
            "Bytes purges freed, as stored",
            Unit::Bytes,
            purged_bytes.clone(),
        );
        let unrestorable = Family::<ClusterLabels, Gauge>::default();
        registry.register(
            "validation_unrestorable_backups",
            "Backups the last validation of each cluster found would not restore",
            unrestorable.clone(),
        );
        let validation_objects = Family::<ProblemLabels, Gauge>::default();
        registry.register(
            "validation_objects",
            "Objects the last validation of each cluster found missing, damaged or orphaned",
            validation_objects.clone(),
        );
        let validation_time = Family::<ClusterLabels, Gauge<f64, AtomicU64>>::default();
        registry.register_with_unit(
            "last_validation_timestamp",
            "When the last validation of each cluster ended (Unix time)",
            Unit::Seconds,
            validation_time.clone(),
        );
        let fires = Family::<FireLabels, Counter>::default();
        registry.register(
            "schedule_fires",
            "Fires of schedules, by outcome (started a run, skipped because one was active, \
             failed to start one) and attempt (first, or a retry after a failure)",
            fires.clone(),
        );
        let fires_missed = Counter::default();
        registry.register(
            "schedule_fires_missed",
            "Fire times of schedules that passed while the server could not fire them (one \
             catch-up fire stands for them)",
            fires_missed.clone(),
        );
        let next_fire = Family::<ScheduleLabels, Gauge<f64, AtomicU64>>::default();
        registry.register_with_unit(
            "schedule_next_fire_timestamp",
            "When each unpaused schedule fires next (Unix time; refreshed every few seconds)",
            Unit::Seconds,
            next_fire.clone(),
        );
        let schedule_last_success = Family::<ScheduleLabels, Gauge<f64, AtomicU64>>::default();
        registry.register_with_unit(
            "schedule_last_successful_backup_timestamp",
            "When the last backup each schedule started succeeded (Unix time; schedules without \
             one are absent)",
            Unit::Seconds,
            schedule_last_success.clone(),
        );
        let agent_up = Family::<NodeLabels, Gauge>::default();
        registry.register(
            "agent_up",
            "Whether each registered node's agent answered the server's last check (1) or not \
             (0), by cluster and node address",
            agent_up.clone(),
        );
        let webhook_deliveries = Family::<WebhookLabels, Counter>::default();
        registry.register(
            "webhook_notifications",
            "Notifications of runs' ends, by webhook and outcome: delivered, failed (every \
             attempt refused) or dropped (the webhook's queue was full)",
            webhook_deliveries.clone(),
        );
        let webhook_failed_attempts = Family::<WebhookNameLabels, Counter>::default();
        registry.register(
            "webhook_failed_attempts",
            "Calls to webhooks that failed or were refused (each is retried until its attempts \
             are spent)",
            webhook_failed_attempts.clone(),
        );
        let rpcs = Family::<RpcLabels, Counter>::default();
        registry.register(
            "grpc_requests",
            "API calls answered, by method and gRPC status code (as first answered: a stream \
             that fails after its start counts as OK)",
            rpcs.clone(),
        );
        let rpc_duration =
            Family::<MethodLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                rpc_histogram,
            );
        registry.register_with_unit(
            "grpc_request_duration",
            "Time to answer API calls (to the start of the stream, for streams), by method",
            Unit::Seconds,
            rpc_duration.clone(),
        );
        Self {
            inner: Arc::new(Inner {
                purged_objects,
                purged_bytes,
                unrestorable,
                validation_objects,
                validation_time,
                fires,
                fires_missed,
                next_fire,
                schedule_last_success,
                schedules: Mutex::new(ScheduleBook::default()),
                agent_up,
                webhook_deliveries,
                webhook_failed_attempts,
                rpcs,
                rpc_duration,
                registry,
                runs_started,
                runs_finished,
                runs_in_progress,
                run_duration,
                last_successful_backup,
                transferred,
                deduplicated,
            }),
        }
    }

    /// A run started executing.
    pub fn run_started(&self, kind: RunKind) {
        let labels = KindLabels {
            kind: kind.as_str(),
        };
        self.inner.runs_started.get_or_create(&labels).inc();
        self.inner.runs_in_progress.get_or_create(&labels).inc();
    }

    /// A run ended (its final state recorded); dry runs move no bytes and are no backup.
    pub fn run_finished(&self, run: &Run) {
        let kind = run.kind.as_str();
        let labels = KindLabels { kind };
        self.inner.runs_in_progress.get_or_create(&labels).dec();
        let outcome = match run.state {
            RunState::Succeeded => "succeeded",
            RunState::Canceled => "canceled",
            _ => "failed",
        };
        self.inner
            .runs_finished
            .get_or_create(&OutcomeLabels { kind, outcome })
            .inc();
        if let Some(finish) = run.finish_time {
            let start = run.start_time.unwrap_or(run.create_time);
            let took = finish.duration_since(start).unwrap_or(Duration::ZERO);
            self.inner
                .run_duration
                .get_or_create(&labels)
                .observe(took.as_secs_f64());
        }
        if run.dry_run {
            return;
        }
        if let Some(purge) = &run.purge {
            self.inner
                .purged_objects
                .inc_by(purge.objects_deleted + purge.temporary_objects_deleted);
            self.inner
                .purged_bytes
                .inc_by(purge.bytes_freed + purge.temporary_bytes_freed);
        }
        if let (Some(validation), RunState::Succeeded) = (&run.validation, run.state) {
            let cluster = run.cluster_name.clone();
            let unrestorable = validation
                .backups
                .iter()
                .filter(|backup| !backup.restorable)
                .count();
            self.inner
                .unrestorable
                .get_or_create(&ClusterLabels {
                    cluster: cluster.clone(),
                })
                .set(i64::try_from(unrestorable).unwrap_or(i64::MAX));
            for (problem, count) in [
                ("missing", validation.objects_missing),
                ("damaged", validation.objects_damaged),
                ("orphaned", validation.objects_orphaned),
            ] {
                self.inner
                    .validation_objects
                    .get_or_create(&ProblemLabels {
                        cluster: cluster.clone(),
                        problem,
                    })
                    .set(i64::try_from(count).unwrap_or(i64::MAX));
            }
            if let Some(seconds) = run
                .finish_time
                .and_then(|at| at.duration_since(SystemTime::UNIX_EPOCH).ok())
            {
                self.inner
                    .validation_time
                    .get_or_create(&ClusterLabels { cluster })
                    .set(seconds.as_secs_f64());
            }
        }
        let transferred: u64 = run.nodes.iter().map(|n| n.counters.bytes_transferred).sum();
        let direction = match run.kind {
            RunKind::Backup => Some("upload"),
            RunKind::Restore => Some("download"),
            RunKind::Validate | RunKind::Purge => None,
        };
        if let Some(direction) = direction {
            self.inner
                .transferred
                .get_or_create(&DirectionLabels { direction })
                .inc_by(transferred);
        }
        if run.kind == RunKind::Backup {
            let skipped: u64 = run.nodes.iter().map(|n| n.counters.bytes_skipped).sum();
            self.inner.deduplicated.inc_by(skipped);
            if run.state == RunState::Succeeded {
                self.backup_succeeded(&run.cluster_name, run.finish_time);
                if let (Some(schedule), Some(at)) = (run.schedule_id, run.finish_time) {
                    self.schedule_backup_succeeded(schedule, at);
                }
            }
        }
    }

    /// Records the time of a cluster's last successful backup (also from the catalog at start).
    pub fn backup_succeeded(&self, cluster: &str, at: Option<SystemTime>) {
        let seconds = at.map_or(0.0, unix_seconds);
        let gauge = self
            .inner
            .last_successful_backup
            .get_or_create(&ClusterLabels {
                cluster: cluster.to_string(),
            });
        if seconds > gauge.get() {
            gauge.set(seconds);
        }
    }

    /// A schedule fired: `outcome` is `started`, `skipped` or `failed`; `retry` for a retry's
    /// fire; `missed` fire times it stands for.
    pub fn schedule_fired(&self, outcome: &'static str, retry: bool, missed: u64) {
        self.inner
            .fires
            .get_or_create(&FireLabels {
                outcome,
                attempt: if retry { "retry" } else { "first" },
            })
            .inc();
        self.inner.fires_missed.inc_by(missed);
    }

    /// Records the time of the last successful backup a schedule started (also from the
    /// catalog at start); it shows under the schedule's name once the scheduler has seen it.
    pub fn schedule_backup_succeeded(&self, schedule: Uuid, at: SystemTime) {
        let seconds = unix_seconds(at);
        let mut book = lock(&self.inner.schedules);
        let last = book.last_success.entry(schedule).or_insert(0.0);
        if seconds > *last {
            *last = seconds;
        }
        let last = *last;
        if let Some(name) = book.names.get(&schedule) {
            self.inner
                .schedule_last_success
                .get_or_create(&ScheduleLabels {
                    schedule: name.clone(),
                })
                .set(last);
        }
    }

    /// Every schedule as the catalog has it now: next fire times of the unpaused ones, and each
    /// one's last success under its current name. Deleted schedules drop out.
    pub fn schedules_seen(&self, schedules: impl IntoIterator<Item = ScheduleSeen>) {
        let mut book = lock(&self.inner.schedules);
        book.names.clear();
        self.inner.next_fire.clear();
        self.inner.schedule_last_success.clear();
        for seen in schedules {
            let labels = ScheduleLabels {
                schedule: seen.name.clone(),
            };
            if let Some(at_ms) = seen.next_fire_ms {
                self.inner
                    .next_fire
                    .get_or_create(&labels)
                    .set(at_ms as f64 / 1000.0);
            }
            if let Some(last) = book.last_success.get(&seen.id) {
                self.inner
                    .schedule_last_success
                    .get_or_create(&labels)
                    .set(*last);
            }
            book.names.insert(seen.id, seen.name);
        }
        let ScheduleBook {
            names,
            last_success,
        } = &mut *book;
        last_success.retain(|id, _| names.contains_key(id));
    }

    /// The result of a check of every registered node's agent: nodes no longer registered drop
    /// out.
    pub fn agents_seen(&self, agents: impl IntoIterator<Item = AgentSeen>) {
        self.inner.agent_up.clear();
        for seen in agents {
            self.inner
                .agent_up
                .get_or_create(&NodeLabels {
                    cluster: seen.cluster,
                    node: seen.node,
                })
                .set(i64::from(seen.up));
        }
    }

    /// A notification to `webhook` ended: `delivered`, `failed` or `dropped`.
    pub fn webhook_delivery(&self, webhook: &str, outcome: &'static str) {
        self.inner
            .webhook_deliveries
            .get_or_create(&WebhookLabels {
                webhook: webhook.to_string(),
                outcome,
            })
            .inc();
    }

    /// A call to `webhook` failed.
    pub fn webhook_attempt_failed(&self, webhook: &str) {
        self.inner
            .webhook_failed_attempts
            .get_or_create(&WebhookNameLabels {
                webhook: webhook.to_string(),
            })
            .inc();
    }

    /// An API call was answered with `code` (a gRPC code name) after `took`. Calls of methods
    /// the server does not have count under the method `unknown`, so callers cannot grow the
    /// label set.
    pub fn rpc_answered(&self, method: &str, code: &str, took: Duration) {
        let method = if code == "Unimplemented" || !method.starts_with('/') {
            "unknown".to_string()
        } else {
            method.to_string()
        };
        self.inner
            .rpcs
            .get_or_create(&RpcLabels {
                method: method.clone(),
                code: code.to_string(),
            })
            .inc();
        self.inner
            .rpc_duration
            .get_or_create(&MethodLabels { method })
            .observe(took.as_secs_f64());
    }

    /// The metrics in Prometheus's text format.
    pub fn render(&self) -> String {
        let mut text = String::new();
        if let Err(error) =
            prometheus_client::encoding::text::encode(&mut text, &self.inner.registry)
        {
            tracing::warn!(%error, "encode metrics");
        }
        text
    }
}

/// Binds `address` and serves `coffer`'s metrics at `GET /metrics` until `stop` fires; the bound
/// address (port 0 picks one) is logged as `metrics serving` and returned.
pub async fn start_endpoint(
    coffer: &crate::Coffer,
    address: std::net::SocketAddr,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>)> {
    use anyhow::Context as _;
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("bind metrics address {address}"))?;
    let bound = listener
        .local_addr()
        .context("read bound metrics address")?;
    let metrics = coffer.metrics().await.context("read the metrics' start")?;
    let render: coffer_process::http::Render = Arc::new(move || metrics.render());
    tracing::info!(address = %bound, "metrics serving");
    let task = tokio::spawn(coffer_process::http::serve_metrics(listener, render, stop));
    Ok((bound, task))
}
