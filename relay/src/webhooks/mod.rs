//! Webhooks: delivery events POSTed in signed batches to the endpoints of `events.webhooks`.
//! Each webhook reads the events stream through a durable consumer that every delivery process
//! shares, so a batch goes out from one process; a batch is acknowledged only once its endpoint
//! answered 2xx, and is otherwise sent again with backoff until its events are `retryFor` old.
//! Delivery is at least once: receivers deduplicate by each event's `id`.

pub mod endpoint;
pub mod signature;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::AckKind;
use async_nats::jetstream::consumer::PullConsumer;
use bytes::Bytes;
use futures::StreamExt;
use postern_config::{Config, Webhook};
use postern_queue::Queue;
use postern_queue::events::EventLog;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::metrics::{Labels, Metrics};
use endpoint::Endpoint;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use std::sync::Arc;

/// The first wait before a batch is sent again; each further failure doubles it, up to
/// [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(15 * 60);

/// A webhook could not be set up; the message names the config field.
#[derive(Debug, thiserror::Error)]
#[error("{field} {path}: {message}")]
pub struct WebhookSetupError {
    pub field: String,
    pub path: String,
    pub message: String,
}

/// One configured webhook.
#[derive(Debug)]
struct Hook {
    config: Webhook,
    /// The metrics label: the name, kept for the life of the process (names come from the
    /// config, so there are few).
    label: &'static str,
    endpoint: Endpoint,
}

/// Every webhook of a delivery process.
#[derive(Debug)]
pub struct Webhooks {
    hooks: Vec<Arc<Hook>>,
    events: Arc<EventLog>,
    metrics: Arc<Metrics>,
}

/// The secret in `path`, without surrounding white space.
fn read_secret(path: &Path) -> Result<Vec<u8>, String> {
    let text = std::fs::read(path).map_err(|e| e.to_string())?;
    let secret = text.trim_ascii();
    if secret.is_empty() {
        return Err("the file is empty".into());
    }
    Ok(secret.to_vec())
}

impl Webhooks {
    /// The webhooks of `config`, each secret read once to fail early; none configured, none.
    pub fn new(
        config: &Config,
        queue: &Queue,
        metrics: Arc<Metrics>,
    ) -> Result<Option<Webhooks>, WebhookSetupError> {
        let events = &config.events;
        if !events.enabled || events.webhooks.is_empty() {
            return Ok(None);
        }
        let mut hooks = Vec::new();
        for (i, hook) in events.webhooks.iter().enumerate() {
            let error = |name: &str, path: &Path, message: String| WebhookSetupError {
                field: format!("events.webhooks[{i}].{name}"),
                path: path.display().to_string(),
                message,
            };
            read_secret(&hook.secret_file)
                .map_err(|m| error("secretFile", &hook.secret_file, m))?;
            let tls = crate::delivery::tls::verified(hook.ca_file.as_deref())
                .map_err(|e| error("caFile", &PathBuf::from(&e.path), e.message))?;
            let endpoint = Endpoint::new(&hook.url, tls, hook.timeout.get())
                .ok_or_else(|| error("url", Path::new(&hook.url), "not an http(s) URL".into()))?;
            hooks.push(Arc::new(Hook {
                label: Box::leak(hook.name.clone().into_boxed_str()),
                config: hook.clone(),
                endpoint,
            }));
        }
        let log = EventLog::new(queue.clone(), events.max_age.get(), events.max_bytes);
        Ok(Some(Webhooks {
            hooks,
            events: Arc::new(log),
            metrics,
        }))
    }

    /// Sends batches until `shutdown`; a batch under way when it fires is left to be sent again.
    pub async fn run(self, shutdown: CancellationToken) {
        let tasks: Vec<_> = self
            .hooks
            .iter()
            .map(|hook| {
                let sender = Sender {
                    hook: hook.clone(),
                    events: self.events.clone(),
                    metrics: self.metrics.clone(),
                };
                tokio::spawn(sender.run(shutdown.clone()))
            })
            .collect();
        for task in tasks {
            let _ = task.await;
        }
    }
}

/// The loop of one webhook in one process.
#[derive(Debug)]
struct Sender {
    hook: Arc<Hook>,
    events: Arc<EventLog>,
    metrics: Arc<Metrics>,
}

/// How a batch went.
enum Sent {
    /// Nothing to send.
    Idle,
    Accepted,
    Failed,
}

impl Sender {
    async fn run(self, shutdown: CancellationToken) {
        let hook = &self.hook.config;
        let ack_wait = hook.timeout.get() + Duration::from_secs(30);
        let consumer = loop {
            let made = self
                .events
                .webhook_consumer(&hook.name, &hook.kinds, ack_wait, 10_000)
                .await;
            match made {
                Ok(consumer) => break consumer,
                Err(err) => {
                    warn!(webhook = %hook.name, %err, "webhook consumer not ready; trying again")
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
        };
        info!(webhook = %hook.name, url = %hook.url, "webhook started");
        let mut failures: u32 = 0;
        loop {
            let sent = tokio::select! {
                () = shutdown.cancelled() => return,
                sent = self.batch(&consumer) => sent,
            };
            let pause = match sent {
                Sent::Idle => Duration::ZERO,
                Sent::Accepted => {
                    failures = 0;
                    Duration::ZERO
                }
                // While the endpoint fails, new events wait in the stream instead of being
                // tried one batch after another.
                Sent::Failed => {
                    failures = failures.saturating_add(1);
                    backoff(failures).min(Duration::from_secs(60))
                }
            };
            if !pause.is_zero() {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(pause) => {}
                }
            }
        }
    }

    fn count(&self, family: &Family<Labels, Counter>, result: &'static str, by: u64) {
        family
            .get_or_create(&vec![("webhook", self.hook.label), ("result", result)])
            .inc_by(by);
    }

    /// Fetches up to a batch of events and POSTs them.
    async fn batch(&self, consumer: &PullConsumer) -> Sent {
        let hook = &self.hook.config;
        let fetched = consumer
            .fetch()
            .max_messages(hook.batch_size)
            .expires(Duration::from_secs(1))
            .messages()
            .await;
        let mut messages = match fetched {
            Ok(messages) => messages,
            Err(err) => {
                warn!(webhook = %hook.name, %err, "events not fetched");
                tokio::time::sleep(Duration::from_secs(1)).await;
                return Sent::Idle;
            }
        };
        let mut batch = Vec::new();
        while let Some(message) = messages.next().await {
            match message {
                Ok(message) => batch.push(message),
                Err(err) => {
                    warn!(webhook = %hook.name, %err, "events not fetched");
                    break;
                }
            }
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let oldest_kept = now.saturating_sub(hook.retry_for.get().as_secs());
        let mut expired = 0;
        let mut live = Vec::with_capacity(batch.len());
        for message in batch {
            let published = message.info().map_or(now, |info| {
                u64::try_from(info.published.unix_timestamp()).unwrap_or(0)
            });
            if published < oldest_kept {
                let _ = message.ack().await;
                expired += 1;
            } else {
                live.push(message);
            }
        }
        if expired > 0 {
            warn!(webhook = %hook.name, events = expired, retry_for = %hook.retry_for, "events dropped: not accepted within retryFor");
            self.count(&self.metrics.webhook_events, "expired", expired);
        }
        if live.is_empty() {
            return Sent::Idle;
        }
        let mut body =
            Vec::with_capacity(live.iter().map(|m| m.payload.len() + 1).sum::<usize>() + 2);
        body.push(b'[');
        for (i, message) in live.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(&message.payload);
        }
        body.push(b']');
        let outcome = match read_secret(&hook.secret_file) {
            Ok(secret) => {
                let headers = [
                    (signature::HEADER, signature::sign(&secret, now, &body)),
                    ("postern-webhook", hook.name.clone()),
                    ("postern-events", live.len().to_string()),
                ];
                let posted =
                    self.hook
                        .endpoint
                        .post("application/json", &headers, Bytes::from(body));
                match posted.await {
                    Ok(status) if (200..300).contains(&status) => Ok(()),
                    Ok(status) => Err(("refused", format!("answered HTTP {status}"))),
                    Err(err) => Err(("failed", err.to_string())),
                }
            }
            Err(err) => Err((
                "failed",
                format!("secretFile {}: {err}", hook.secret_file.display()),
            )),
        };
        match outcome {
            Ok(()) => {
                for message in &live {
                    let _ = message.ack().await;
                }
                self.count(&self.metrics.webhook_posts, "accepted", 1);
                self.count(&self.metrics.webhook_events, "sent", live.len() as u64);
                Sent::Accepted
            }
            Err((result, reason)) => {
                let attempts = live
                    .iter()
                    .filter_map(|m| m.info().ok().map(|i| i.delivered))
                    .max()
                    .unwrap_or(1);
                let delay = backoff(u32::try_from(attempts).unwrap_or(u32::MAX));
                warn!(webhook = %hook.name, events = live.len(), %reason, retry_in = ?delay, "webhook batch not accepted");
                for message in &live {
                    let _ = message.ack_with(AckKind::Nak(Some(delay))).await;
                }
                self.count(&self.metrics.webhook_posts, result, 1);
                Sent::Failed
            }
        }
    }
}

/// The wait before the `attempt`th try of a batch is followed by the next: 1 s, doubling, at
/// most 15 min (about 300 tries in 72 hours).
fn backoff(attempt: u32) -> Duration {
    let doublings = attempt.saturating_sub(1).min(16);
    (RETRY_FIRST * 2u32.pow(doublings)).min(RETRY_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_cap() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(5), Duration::from_secs(16));
        assert_eq!(backoff(10), Duration::from_secs(512));
        assert_eq!(backoff(11), RETRY_MAX);
        assert_eq!(backoff(u32::MAX), RETRY_MAX);
    }

    #[test]
    fn secrets_are_trimmed_and_never_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "  s3cret\n").unwrap();
        assert_eq!(read_secret(&path).unwrap(), b"s3cret");
        std::fs::write(&path, "\n").unwrap();
        assert_eq!(read_secret(&path).unwrap_err(), "the file is empty");
        assert!(read_secret(&dir.path().join("none")).is_err());
    }
}
