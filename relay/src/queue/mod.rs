//! The durable hand-off: JetStream stream provisioning and publishing accepted messages.

mod bodies;
pub mod entry;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage, stream};
use bytes::Bytes;
use postern_config::NatsConfig;

pub use entry::{BodyRef, ClientFacts, Envelope};

/// A message accepted by ingress, ready to be split into entries.
#[derive(Debug)]
pub struct Submission {
    pub queue_id: String,
    pub sender: String,
    /// Recipients as `local@domain`.
    pub recipients: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub received_at_ms: u64,
    pub client: ClientFacts,
    pub smtputf8: bool,
    pub eight_bit_mime: bool,
    pub traceparent: String,
}

/// Why the queue could not be reached or set up.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("nats.credentialsFile: {0}")]
    Credentials(std::io::Error),
    #[error("connecting to NATS: {0}")]
    Connect(#[from] async_nats::ConnectError),
    #[error("creating or updating stream {stream}: {source}")]
    Stream {
        stream: String,
        source: async_nats::Error,
    },
    #[error("creating object store bucket {bucket}: {source}")]
    Bucket {
        bucket: String,
        source: async_nats::Error,
    },
}

/// Why a message was not queued. The client gets 451 4.3.0 and keeps it.
#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    #[error("queue not ready (NATS disconnected or stream not provisioned)")]
    NotReady,
    #[error("storing body: {0}")]
    Body(async_nats::Error),
    #[error("publishing entry: {0}")]
    Publish(async_nats::Error),
    #[error("no acknowledgement within {0:?}")]
    AckTimeout(Duration),
}

impl EnqueueError {
    /// A short label for metrics.
    pub fn as_label(&self) -> &'static str {
        match self {
            EnqueueError::NotReady => "not_ready",
            EnqueueError::Body(_) => "body",
            EnqueueError::Publish(_) => "publish",
            EnqueueError::AckTimeout(_) => "ack_timeout",
        }
    }
}

/// The queue as ingress sees it.
#[derive(Debug, Clone)]
pub struct Queue {
    inner: Arc<Inner>,
}

struct Inner {
    client: async_nats::Client,
    jetstream: jetstream::Context,
    config: NatsConfig,
    /// The body bucket; set once the stream and bucket are provisioned.
    bodies: OnceLock<bodies::Bodies>,
    body_ttl: Duration,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("stream", &self.config.stream)
            .field("provisioned", &self.bodies.get().is_some())
            .finish_non_exhaustive()
    }
}

impl Queue {
    /// Connects to NATS. The connection is made in the background and retried forever, so this
    /// returns at once; [`Queue::is_ready`] tells when the queue can take messages.
    /// Large bodies are kept at most `body_ttl`, which must be longer than any message lives.
    pub async fn connect(
        url: &str,
        config: &NatsConfig,
        body_ttl: Duration,
    ) -> Result<Queue, QueueError> {
        let mut options = async_nats::ConnectOptions::new()
            .name("postern")
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(2))
            .reconnect_delay_callback(|attempt| {
                Duration::from_millis((100 * attempt as u64).min(2_000))
            })
            .event_callback(|event| async move { tracing::info!(%event, "nats connection event") });
        if let Some(path) = &config.credentials_file {
            options = options
                .credentials_file(path)
                .await
                .map_err(QueueError::Credentials)?;
        }
        Queue::connect_with(url, config, body_ttl, options).await
    }

    /// Connects with options of the caller's choosing (the operator's, which must fail fast
    /// instead of retrying forever, and which holds credentials in memory).
    pub async fn connect_with(
        url: &str,
        config: &NatsConfig,
        body_ttl: Duration,
        options: async_nats::ConnectOptions,
    ) -> Result<Queue, QueueError> {
        let client = options.connect(url).await?;
        let jetstream = jetstream::new(client.clone());
        Ok(Queue {
            inner: Arc::new(Inner {
                client,
                jetstream,
                config: config.clone(),
                bodies: OnceLock::new(),
                body_ttl,
            }),
        })
    }

    /// True when NATS is connected and the stream exists.
    pub fn is_ready(&self) -> bool {
        self.inner.bodies.get().is_some()
            && self.inner.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Creates or updates the stream and the body bucket to match the configuration.
    pub async fn provision(&self) -> Result<(), QueueError> {
        let config = &self.inner.config;
        let wanted = stream::Config {
            name: config.stream.clone(),
            subjects: vec![format!("{}.>", config.subject_prefix)],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            num_replicas: config.replicas,
            duplicate_window: config.duplicate_window.get(),
            description: Some(
                "Postern mail queue: one entry per message and destination domain".into(),
            ),
            ..Default::default()
        };
        let stream_error = |source: async_nats::Error| QueueError::Stream {
            stream: config.stream.clone(),
            source,
        };
        self.inner
            .jetstream
            .create_or_update_stream(wanted)
            .await
            .map_err(|e| stream_error(e.into()))?;
        let bucket_error = |source: async_nats::Error| QueueError::Bucket {
            bucket: config.body_bucket.clone(),
            source,
        };
        let bodies = bodies::Bodies::provision(&self.inner.jetstream, config, self.inner.body_ttl)
            .await
            .map_err(bucket_error)?;
        let _ = self.inner.bodies.set(bodies);
        Ok(())
    }

    /// Provisions the queue, retrying until it succeeds or `cancel` fires.
    pub async fn provision_until_ready(&self, cancel: tokio_util::sync::CancellationToken) {
        let mut delay = Duration::from_millis(200);
        loop {
            match self.provision().await {
                Ok(()) => {
                    tracing::info!(stream = %self.inner.config.stream, "queue stream ready");
                    return;
                }
                Err(err) => tracing::warn!(%err, retry_in = ?delay, "queue not ready"),
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    /// Publishes one entry per recipient domain and waits for JetStream to acknowledge all of
    /// them. On any failure the entries already stored are removed (best effort).
    pub async fn enqueue(&self, submission: Submission) -> Result<(), EnqueueError> {
        if !self.is_ready() {
            return Err(EnqueueError::NotReady);
        }
        let timeout = self.inner.config.ack_timeout.get();
        let mut stored = Stored::default();
        let result =
            tokio::time::timeout(timeout, self.publish_all(&submission, &mut stored)).await;
        let error = match result {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(err)) => err,
            Err(_) => EnqueueError::AckTimeout(timeout),
        };
        self.remove(stored).await;
        Err(error)
    }

    async fn publish_all(
        &self,
        submission: &Submission,
        stored: &mut Stored,
    ) -> Result<(), EnqueueError> {
        let config = &self.inner.config;
        let groups = group_by_domain(&submission.recipients);
        let size = submission.body.len() as u64;
        let body = if submission.body.len() > config.inline_body_limit {
            let bodies = self
                .inner
                .bodies
                .get()
                .ok_or(EnqueueError::NotReady)?
                .clone();
            let key = submission.queue_id.clone();
            let entries = u32::try_from(groups.len()).unwrap_or(u32::MAX);
            stored.object = Some((bodies.clone(), key.clone()));
            bodies.put(&key, &submission.body, entries).await?;
            BodyRef::Object {
                bucket: config.body_bucket.clone(),
                key,
                size,
                entries,
            }
        } else {
            BodyRef::Inline { size }
        };
        let inline = matches!(body, BodyRef::Inline { .. }).then_some(submission.body.as_slice());
        let mut acks = Vec::with_capacity(groups.len());
        for (index, (domain, recipients)) in groups.into_iter().enumerate() {
            let envelope = Envelope {
                version: entry::ENVELOPE_VERSION,
                queue_id: submission.queue_id.clone(),
                sender: submission.sender.clone(),
                domain: domain.clone(),
                recipients,
                received_at_ms: submission.received_at_ms,
                attempts: 0,
                client: submission.client.clone(),
                smtputf8: submission.smtputf8,
                eight_bit_mime: submission.eight_bit_mime,
                body: body.clone(),
                not_before_ms: None,
                traceparent: submission.traceparent.clone(),
            };
            let id = format!("{}.{index}", submission.queue_id);
            acks.push(self.publish(&envelope, inline, id).await?);
        }
        for ack in acks {
            let ack = ack.await.map_err(|e| EnqueueError::Publish(e.into()))?;
            stored.sequences.push(ack.sequence);
        }
        Ok(())
    }

    /// Sends one entry; the returned future resolves to JetStream's acknowledgement.
    async fn publish(
        &self,
        envelope: &Envelope,
        inline: Option<&[u8]>,
        message_id: String,
    ) -> Result<jetstream::context::PublishAckFuture, EnqueueError> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("traceparent", envelope.traceparent.as_str());
        headers.insert("Postern-Queue-Id", envelope.queue_id.as_str());
        let publish = PublishMessage::build()
            .payload(Bytes::from(entry::encode(envelope, inline)))
            .headers(headers)
            .message_id(message_id);
        let subject = format!(
            "{}.{}",
            self.inner.config.subject_prefix,
            entry::domain_token(&envelope.domain)
        );
        self.inner
            .jetstream
            .send_publish(subject, publish)
            .await
            .map_err(|e| EnqueueError::Publish(e.into()))
    }

    /// Publishes one entry (a retry holding the remaining recipients) and waits for its
    /// acknowledgement. `message_id` makes a repeated publish of the same retry a no-op.
    pub async fn requeue(
        &self,
        envelope: &Envelope,
        inline: Option<&[u8]>,
        message_id: String,
    ) -> Result<(), EnqueueError> {
        let timeout = self.inner.config.ack_timeout.get();
        let publish = async {
            self.publish(envelope, inline, message_id)
                .await?
                .await
                .map_err(|e| EnqueueError::Publish(e.into()))
        };
        match tokio::time::timeout(timeout, publish).await {
            Ok(result) => result.map(drop),
            Err(_) => Err(EnqueueError::AckTimeout(timeout)),
        }
    }

    /// The body of an entry: the inline part, or the object it references.
    pub async fn body(&self, envelope: &Envelope, inline: &[u8]) -> Result<Vec<u8>, EnqueueError> {
        let BodyRef::Object { key, .. } = &envelope.body else {
            return Ok(inline.to_vec());
        };
        let bodies = self.inner.bodies.get().ok_or(EnqueueError::NotReady)?;
        bodies.get(key).await
    }

    /// An entry whose recipients all have final outcomes is done with its body; the last entry
    /// of a message removes a stored body.
    pub async fn release_body(&self, envelope: &Envelope) -> Result<(), EnqueueError> {
        let BodyRef::Object { key, .. } = &envelope.body else {
            return Ok(());
        };
        let bodies = self.inner.bodies.get().ok_or(EnqueueError::NotReady)?;
        bodies.release(key).await
    }

    /// The durable pull consumer delivery processes share, created or updated.
    pub async fn consumer(
        &self,
        name: &str,
        ack_wait: Duration,
    ) -> Result<jetstream::consumer::PullConsumer, QueueError> {
        let config = &self.inner.config;
        let error = |source: async_nats::Error| QueueError::Stream {
            stream: config.stream.clone(),
            source,
        };
        let stream = self
            .inner
            .jetstream
            .get_stream(&config.stream)
            .await
            .map_err(|e| error(e.into()))?;
        let consumer = jetstream::consumer::pull::Config {
            durable_name: Some(name.to_string()),
            description: Some("Postern delivery workers".into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait,
            max_deliver: -1,
            max_ack_pending: 100_000,
            ..Default::default()
        };
        stream
            .create_consumer(consumer)
            .await
            .map_err(|e| error(e.into()))
    }

    /// Deletes the stream and both body buckets, with any mail still queued.
    pub async fn delete(&self) -> Result<(), QueueError> {
        let config = &self.inner.config;
        let missing_is_fine = |err: &async_nats::jetstream::context::DeleteStreamError| {
            matches!(
                err.kind(),
                jetstream::context::DeleteStreamErrorKind::JetStream(e)
                    if e.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
            )
        };
        for name in [
            config.stream.clone(),
            format!("OBJ_{}", config.body_bucket),
            format!("KV_{}_REFS", config.body_bucket),
        ] {
            if let Err(err) = self.inner.jetstream.delete_stream(&name).await
                && !missing_is_fine(&err)
            {
                return Err(QueueError::Stream {
                    stream: name,
                    source: err.into(),
                });
            }
        }
        Ok(())
    }

    /// Best-effort removal of what a failed enqueue left behind.
    async fn remove(&self, stored: Stored) {
        if !stored.sequences.is_empty() {
            match self
                .inner
                .jetstream
                .get_stream_no_info(&self.inner.config.stream)
                .await
            {
                Ok(stream) => {
                    for sequence in stored.sequences {
                        if let Err(err) = stream.delete_message(sequence).await {
                            tracing::warn!(sequence, %err, "could not remove entry of a refused message");
                        }
                    }
                }
                Err(err) => tracing::warn!(%err, "could not remove entries of a refused message"),
            }
        }
        if let Some((bodies, key)) = stored.object {
            bodies.remove(&key).await;
        }
    }
}

/// What an enqueue attempt has stored so far.
#[derive(Default)]
struct Stored {
    sequences: Vec<u64>,
    object: Option<(bodies::Bodies, String)>,
}

/// Recipients grouped by domain, in order of first appearance.
fn group_by_domain(recipients: &[(String, String)]) -> Vec<(String, Vec<String>)> {
    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
    for (address, domain) in recipients {
        match groups.iter_mut().find(|(d, _)| d == domain) {
            Some((_, list)) => list.push(address.clone()),
            None => groups.push((domain.clone(), vec![address.clone()])),
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::group_by_domain;

    #[test]
    fn groups_recipients_by_domain_in_order() {
        let r = |a: &str, d: &str| (a.to_string(), d.to_string());
        let groups = group_by_domain(&[r("a@x", "x"), r("b@y", "y"), r("c@x", "x")]);
        assert_eq!(
            groups,
            [
                ("x".into(), vec!["a@x".to_string(), "c@x".into()]),
                ("y".into(), vec!["b@y".into()])
            ]
        );
    }
}
