//! The agent's own Prometheus metrics, served on `--metrics-listen`: what it moved between the
//! node and storage, and how its snapshots, uploads and restores ended, and every storage request
//! by operation and outcome (OpenDAL's metrics layer, `coffer_agent_opendal_*`). Labels are
//! outcomes, operations, storage schemes and buckets: no tags, run ids, roots or paths.

use std::sync::Arc;

use coffer_proto::agent::v1 as proto;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

/// How a snapshot, an upload or a restore ended.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    Failed,
    Canceled,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

impl Outcome {
    fn labels(self) -> OutcomeLabels {
        OutcomeLabels {
            outcome: match self {
                Self::Succeeded => "succeeded",
                Self::Failed => "failed",
                Self::Canceled => "canceled",
            },
        }
    }
}

/// The agent's metrics; cheap to clone.
#[derive(Clone)]
pub struct AgentMetrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    storage: opendal::layers::PrometheusClientLayer,
    snapshots: Family<OutcomeLabels, Counter>,
    uploads: Family<OutcomeLabels, Counter>,
    restores: Family<OutcomeLabels, Counter>,
    read: Counter,
    uploaded: Counter,
    skipped: Counter,
    objects_uploaded: Counter,
    downloaded: Counter,
    files_placed: Counter,
}

impl std::fmt::Debug for AgentMetrics {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("AgentMetrics")
            .finish_non_exhaustive()
    }
}

impl Default for AgentMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl AgentMetrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("coffer_agent");
        registry.register(
            "build",
            "The agent's version",
            Info::new(vec![("version", crate::AGENT_VERSION)]),
        );
        let family = |registry: &mut Registry, name: &str, help: &str| {
            let family = Family::<OutcomeLabels, Counter>::default();
            registry.register(name, help, family.clone());
            family
        };
        let snapshots = family(&mut registry, "snapshots", "Snapshots taken, by outcome");
        let uploads = family(&mut registry, "uploads", "Uploads of snapshots, by outcome");
        let restores = family(
            &mut registry,
            "restores",
            "Restores onto this node, by outcome",
        );
        let bytes = |registry: &mut Registry, name: &str, help: &str| {
            let counter = Counter::default();
            registry.register_with_unit(name, help, Unit::Bytes, counter.clone());
            counter
        };
        let read = bytes(
            &mut registry,
            "read",
            "Bytes of the node's files read by finished uploads",
        );
        let uploaded = bytes(
            &mut registry,
            "uploaded",
            "Bytes written to storage by finished uploads, as stored",
        );
        let skipped = bytes(
            &mut registry,
            "deduplicated",
            "Bytes of files finished uploads did not store because the location held them",
        );
        let downloaded = bytes(
            &mut registry,
            "downloaded",
            "Bytes read from storage by finished restores, as stored",
        );
        let objects_uploaded = Counter::default();
        registry.register(
            "objects_uploaded",
            "Objects written to storage by finished uploads",
            objects_uploaded.clone(),
        );
        let files_placed = Counter::default();
        registry.register(
            "files_restored",
            "Files placed by finished restores",
            files_placed.clone(),
        );
        // Requests counted by operation (`..._duration_seconds_count`) and failures by operation
        // and error kind (`..._errors_total`), per scheme and bucket. A location's root is a
        // path: left out of the labels.
        let storage = opendal::layers::PrometheusClientLayer::builder()
            .disable_label_root(true)
            .register(&mut registry);
        Self {
            inner: Arc::new(Inner {
                storage,
                registry,
                snapshots,
                uploads,
                restores,
                read,
                uploaded,
                skipped,
                objects_uploaded,
                downloaded,
                files_placed,
            }),
        }
    }

    /// The layer that counts an operator's storage requests into these metrics.
    pub fn storage_layer(&self) -> opendal::layers::PrometheusClientLayer {
        self.inner.storage.clone()
    }

    pub fn snapshot(&self, outcome: Outcome) {
        self.inner.snapshots.get_or_create(&outcome.labels()).inc();
    }

    pub fn upload_failed(&self, outcome: Outcome) {
        self.inner.uploads.get_or_create(&outcome.labels()).inc();
    }

    pub fn upload_succeeded(&self, summary: &proto::UploadSummary) {
        self.inner
            .uploads
            .get_or_create(&Outcome::Succeeded.labels())
            .inc();
        if let Some(progress) = &summary.progress {
            self.inner.read.inc_by(progress.bytes_read);
            self.inner.uploaded.inc_by(progress.bytes_uploaded);
            self.inner.skipped.inc_by(progress.bytes_skipped);
        }
        self.inner.objects_uploaded.inc_by(summary.objects_uploaded);
    }

    pub fn restore_failed(&self, outcome: Outcome) {
        self.inner.restores.get_or_create(&outcome.labels()).inc();
    }

    pub fn restore_succeeded(&self, summary: &proto::RestoreSummary) {
        self.inner
            .restores
            .get_or_create(&Outcome::Succeeded.labels())
            .inc();
        if let Some(progress) = &summary.progress {
            self.inner.downloaded.inc_by(progress.bytes_downloaded);
            self.inner.files_placed.inc_by(progress.files_placed);
        }
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
