//! Notifications when runs end: every configured webhook whose filters match gets the run as
//! JSON ([`crate::report::RunReport`]), signed with its secret, delivered in the background with
//! retries ([`webhook`]). A run never waits for a receiver: each webhook has its own bounded
//! queue, and a notification that finds it full is dropped with a warning and counted.
//!
//! Deliveries live in memory: those still queued or being retried when the server stops are
//! logged as lost, not kept for the next start.

pub mod webhook;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::ConfigError;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::model::run::{Run, RunKind, RunState};
use crate::report::RunReport;

/// Notifications waiting for one webhook at most; more are dropped.
const QUEUE_LIMIT: usize = 1000;

/// A webhook as written in the configuration (`[[webhooks]]`).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "kebab-case")]
pub struct WebhookOptions {
    /// Names it in logs and metrics.
    pub name: String,
    /// `http://` or `https://` URL it is POSTed to.
    pub url: String,
    /// File (absolute, mode 600) holding the secret its calls are signed with.
    pub secret_file: Option<PathBuf>,
    /// Only runs of these kinds (backup, restore, validate, purge) [default: every kind].
    pub kinds: Vec<String>,
    /// Only runs that ended so (succeeded, failed, canceled) [default: every outcome].
    pub outcomes: Vec<String>,
    /// Longest wait for one attempt [default: 10s].
    #[serde(with = "coffer_process::optional_duration")]
    pub timeout: Option<Duration>,
    /// Attempts before a notification is given up [default: 12].
    pub attempts: Option<u32>,
    /// Wait before the first retry; doubled after each, to at most 5 minutes [default: 1s].
    #[serde(with = "coffer_process::optional_duration")]
    pub first_retry_after: Option<Duration>,
}

/// A webhook, validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct WebhookConfig {
    pub name: String,
    pub url: String,
    pub secret_file: PathBuf,
    /// Empty: every kind.
    pub kinds: Vec<RunKind>,
    /// Empty: every outcome.
    pub outcomes: Vec<RunState>,
    #[serde(with = "coffer_process::duration")]
    pub timeout: Duration,
    pub attempts: u32,
    #[serde(with = "coffer_process::duration")]
    pub first_retry_after: Duration,
}

impl WebhookOptions {
    /// Validates a webhook's settings (the secret file is read when the server opens).
    ///
    /// Fails on a missing name, URL or secret file, a URL that is not http(s), an unknown kind
    /// or outcome, or a zero timeout or attempt count.
    pub fn resolve(self) -> std::result::Result<WebhookConfig, ConfigError> {
        let refuse = |reason: String| ConfigError {
            setting: "webhooks",
            reason,
        };
        if self.name.is_empty() {
            return Err(refuse(format!(
                "the webhook to {:?} needs a name",
                self.url
            )));
        }
        let name = self.name;
        let url = reqwest::Url::parse(&self.url)
            .map_err(|error| refuse(format!("{name}: url {:?}: {error}", self.url)))?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(refuse(format!(
                "{name}: url {:?} is not an http:// or https:// URL",
                self.url
            )));
        }
        let secret_file = self
            .secret_file
            .ok_or_else(|| refuse(format!("{name}: needs a secret-file to sign its calls")))?;
        let kinds = self
            .kinds
            .iter()
            .map(|kind| {
                RunKind::parse(kind).ok_or_else(|| {
                    refuse(format!(
                        "{name}: unknown kind {kind:?} (backup, restore, validate or purge)"
                    ))
                })
            })
            .collect::<std::result::Result<_, _>>()?;
        let outcomes = self
            .outcomes
            .iter()
            .map(|outcome| match RunState::parse(outcome) {
                Some(state @ (RunState::Succeeded | RunState::Failed | RunState::Canceled)) => {
                    Ok(state)
                }
                _ => Err(refuse(format!(
                    "{name}: unknown outcome {outcome:?} (succeeded, failed or canceled)"
                ))),
            })
            .collect::<std::result::Result<_, _>>()?;
        let timeout = self.timeout.unwrap_or(Duration::from_secs(10));
        let attempts = self.attempts.unwrap_or(12);
        let first_retry_after = self.first_retry_after.unwrap_or(Duration::from_secs(1));
        if timeout.is_zero() || attempts == 0 || first_retry_after.is_zero() {
            return Err(refuse(format!(
                "{name}: timeout, attempts and first-retry-after must be positive"
            )));
        }
        Ok(WebhookConfig {
            name,
            url: url.to_string(),
            secret_file,
            kinds,
            outcomes,
            timeout,
            attempts,
            first_retry_after,
        })
    }
}

impl WebhookConfig {
    /// Whether this webhook is told of `run`'s end.
    fn wants(&self, run: &Run) -> bool {
        (self.kinds.is_empty() || self.kinds.contains(&run.kind))
            && (self.outcomes.is_empty() || self.outcomes.contains(&run.state))
    }
}

/// One notification for one webhook.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Sent as `X-Coffer-Delivery`, the same on every attempt: receivers drop repeats by it.
    pub id: Uuid,
    pub run_id: Uuid,
    pub body: Vec<u8>,
}

/// What a webhook call carries.
#[derive(Debug, Serialize)]
struct Notification<'a> {
    /// `run.ended`.
    event: &'static str,
    run: &'a RunReport,
}

struct Hook {
    config: WebhookConfig,
    sender: mpsc::Sender<Delivery>,
    /// Taken by the worker when the server starts serving.
    receiver: Mutex<Option<mpsc::Receiver<Delivery>>>,
    deliverer: webhook::Deliverer,
}

/// Tells the configured webhooks of runs' ends; cheap to clone.
#[derive(Clone, Default)]
pub struct Notifier {
    hooks: Arc<Vec<Hook>>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Notifier")
            .field("webhooks", &self.hooks.len())
            .finish()
    }
}

impl Notifier {
    /// A notifier for these webhooks, their secrets read now.
    ///
    /// Fails (FAILED_PRECONDITION) when a secret file is not absolute, is readable by others,
    /// cannot be read or is empty.
    pub fn new(webhooks: &[WebhookConfig], metrics: Metrics) -> Result<Self> {
        let hooks = webhooks
            .iter()
            .map(|config| {
                let secret =
                    coffer_process::read_private_file(&config.secret_file).map_err(|reason| {
                        Error::FailedPrecondition(format!("webhook {}: {reason}", config.name))
                    })?;
                let secret = secret.trim();
                if secret.is_empty() {
                    return Err(Error::FailedPrecondition(format!(
                        "webhook {}: secret file {} is empty",
                        config.name,
                        config.secret_file.display()
                    )));
                }
                let deliverer = webhook::Deliverer::new(config, secret.as_bytes(), metrics.clone())
                    .map_err(|reason| {
                        Error::FailedPrecondition(format!("webhook {}: {reason}", config.name))
                    })?;
                let (sender, receiver) = mpsc::channel(QUEUE_LIMIT);
                Ok(Hook {
                    config: config.clone(),
                    sender,
                    receiver: Mutex::new(Some(receiver)),
                    deliverer,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            hooks: Arc::new(hooks),
        })
    }

    /// Queues the end of `run` for every webhook that wants it; never waits.
    pub fn run_ended(&self, run: &Run) {
        let wanted: Vec<&Hook> = self
            .hooks
            .iter()
            .filter(|hook| hook.config.wants(run))
            .collect();
        if wanted.is_empty() {
            return;
        }
        let report = RunReport::from(run);
        let body = match serde_json::to_vec(&Notification {
            event: "run.ended",
            run: &report,
        }) {
            Ok(body) => body,
            Err(error) => {
                tracing::error!(%error, run_id = %run.id, "encode a run's notification");
                return;
            }
        };
        for hook in wanted {
            let delivery = Delivery {
                id: Uuid::new_v4(),
                run_id: run.id,
                body: body.clone(),
            };
            if let Err(error) = hook.sender.try_send(delivery) {
                let why = match error {
                    mpsc::error::TrySendError::Full(_) => "its queue is full",
                    mpsc::error::TrySendError::Closed(_) => "the server is stopping",
                };
                tracing::warn!(webhook = %hook.config.name, run_id = %run.id,
                    "notification dropped: {why}");
                hook.deliverer.dropped();
            }
        }
    }

    /// Delivers queued notifications, one webhook beside the other, until `shutdown` fires;
    /// returns when every worker has stopped.
    pub async fn deliver(&self, shutdown: CancellationToken) {
        let tasks = tokio_util::task::TaskTracker::new();
        for hook in self.hooks.iter() {
            let receiver = hook
                .receiver
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            let Some(receiver) = receiver else {
                continue;
            };
            let deliverer = hook.deliverer.clone();
            let shutdown = shutdown.clone();
            tasks.spawn(async move { deliverer.work(receiver, shutdown).await });
        }
        tasks.close();
        tasks.wait().await;
    }
}
