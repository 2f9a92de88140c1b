//! One webhook's deliveries: each notification POSTed until the receiver answers 2xx, waiting
//! longer after each failure, up to the configured attempts.
//!
//! Every call is signed so a receiver can tell it came from this server and was not changed or
//! replayed: `X-Coffer-Signature: sha256=<hex>` is HMAC-SHA256, under the webhook's secret, of
//! `X-Coffer-Timestamp` (Unix seconds of this attempt), a `.`, and the body. A receiver checks
//! the signature over the bytes it received and refuses timestamps more than a few minutes old.

use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Delivery, WebhookConfig};
use crate::metrics::Metrics;

/// Longest wait between two attempts.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(300);

/// Signs and sends one webhook's notifications; cheap to clone.
#[derive(Clone)]
pub struct Deliverer {
    name: String,
    url: String,
    key: ring::hmac::Key,
    client: reqwest::Client,
    attempts: u32,
    first_retry_after: Duration,
    metrics: Metrics,
}

impl std::fmt::Debug for Deliverer {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        formatter
            .debug_struct("Deliverer")
            .field("name", &self.name)
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// The signature of a call: `sha256=` and the hex HMAC-SHA256 of `timestamp.body`.
pub fn signature(key: &ring::hmac::Key, timestamp: u64, body: &[u8]) -> String {
    let mut context = ring::hmac::Context::with_key(key);
    context.update(timestamp.to_string().as_bytes());
    context.update(b".");
    context.update(body);
    let tag = context.sign();
    let mut text = String::from("sha256=");
    for byte in tag.as_ref() {
        text.push_str(&format!("{byte:02x}"));
    }
    text
}

impl Deliverer {
    /// A deliverer for `config`, signing with `secret`.
    ///
    /// Fails when the HTTP client cannot be built (no TLS roots, for instance).
    pub fn new(config: &WebhookConfig, secret: &[u8], metrics: Metrics) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .user_agent(concat!("coffer-server/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|error| format!("HTTP client: {error}"))?;
        Ok(Self {
            name: config.name.clone(),
            url: config.url.clone(),
            key: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret),
            client,
            attempts: config.attempts,
            first_retry_after: config.first_retry_after,
            metrics,
        })
    }

    /// A notification found the queue full.
    pub(super) fn dropped(&self) {
        self.metrics.webhook_delivery(&self.name, "dropped");
    }

    /// Delivers what arrives on `queue`, in order, until `shutdown` fires.
    pub(super) async fn work(
        &self,
        mut queue: mpsc::Receiver<Delivery>,
        shutdown: CancellationToken,
    ) {
        loop {
            let delivery = tokio::select! {
                () = shutdown.cancelled() => break,
                delivery = queue.recv() => match delivery {
                    Some(delivery) => delivery,
                    None => break,
                },
            };
            if !self.deliver(&delivery, &shutdown).await {
                tracing::warn!(webhook = %self.name, run_id = %delivery.run_id,
                    "the server stopped before a notification was delivered");
                break;
            }
        }
        queue.close();
        let mut lost = 0_usize;
        while queue.try_recv().is_ok() {
            lost += 1;
        }
        if lost > 0 {
            tracing::warn!(webhook = %self.name, lost, "notifications not delivered before the \
                server stopped");
        }
    }

    /// Tries `delivery` until it is accepted or the attempts are spent; false when `shutdown`
    /// fired first.
    async fn deliver(&self, delivery: &Delivery, shutdown: &CancellationToken) -> bool {
        let mut wait = self.first_retry_after;
        for attempt in 1..=self.attempts {
            let outcome = tokio::select! {
                () = shutdown.cancelled() => return false,
                outcome = self.attempt(delivery) => outcome,
            };
            match outcome {
                Ok(()) => {
                    tracing::info!(webhook = %self.name, run_id = %delivery.run_id, attempt,
                        "notification delivered");
                    self.metrics.webhook_delivery(&self.name, "delivered");
                    return true;
                }
                Err(reason) => {
                    self.metrics.webhook_attempt_failed(&self.name);
                    if attempt == self.attempts {
                        tracing::error!(webhook = %self.name, run_id = %delivery.run_id,
                            attempts = self.attempts, %reason, "notification given up");
                        self.metrics.webhook_delivery(&self.name, "failed");
                        return true;
                    }
                    tracing::warn!(webhook = %self.name, run_id = %delivery.run_id, attempt,
                        %reason, retry_in = ?wait, "notification not delivered; will retry");
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return false,
                () = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(MAX_RETRY_WAIT);
        }
        true
    }

    /// One POST; Ok when the receiver answered 2xx.
    async fn attempt(&self, delivery: &Delivery) -> Result<(), String> {
        let timestamp = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        let response = self
            .client
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("X-Coffer-Event", "run.ended")
            .header("X-Coffer-Delivery", delivery.id.to_string())
            .header("X-Coffer-Timestamp", timestamp.to_string())
            .header(
                "X-Coffer-Signature",
                signature(&self.key, timestamp, &delivery.body),
            )
            .body(delivery.body.clone())
            .send()
            .await
            // Display, not Debug: one line, no backtrace.
            .map_err(|error| coffer_process::error_chain(&error))?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("the receiver answered {status}"))
        }
    }
}
