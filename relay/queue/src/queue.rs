//! The queue on a JetStream stream: provisioning, publishing, taking entries, health.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use postern_config::NatsConfig;
use postern_smtp::dsn::DsnRequest;

use crate::{bodies, entry, legacy, names, publish};

pub use crate::bodies::{BodyError, Lineage, Upload};
pub use crate::content::{Content, ContentReader};
pub use crate::entry::{BodyRef, ClientFacts, Envelope};
pub use crate::publish::TOMBSTONE;

/// A message accepted by ingress, ready to be split into entries.
#[derive(Debug)]
pub struct Submission {
    pub queue_id: String,
    pub sender: String,
    /// Recipients as `local@domain`.
    pub recipients: Vec<(String, String)>,
    pub content: Submitted,
    pub received_at_ms: u64,
    pub client: ClientFacts,
    pub smtputf8: bool,
    pub eight_bit_mime: bool,
    /// The content has bytes above 127.
    pub eight_bit: bool,
    pub traceparent: String,
    /// What the sender asked for in delivery status notifications.
    pub dsn: DsnRequest,
    /// REQUIRETLS (RFC 8689).
    pub require_tls: bool,
    /// `TLS-Required: No` (RFC 8689 §5).
    pub tls_optional: bool,
    /// The message's `Message-ID` field.
    pub message_id: Option<String>,
}

/// A message's content as ingress hands it over.
#[derive(Debug)]
pub enum Submitted {
    /// All of it in memory; stored in the body stream if it is larger than `inlineBodyLimit`.
    Whole(Vec<u8>),
    /// The fields ingress puts in front in memory; the client's message already streamed to
    /// the body stream while it arrived.
    Streamed { head: Vec<u8>, upload: Box<Upload> },
}

/// Why the queue could not be reached or set up.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("nats.credentialsFile: {0}")]
    Credentials(std::io::Error),
    #[error("nats.tokenFile {path}: {message}")]
    Token { path: String, message: String },
    #[error("nats.caFile {path}: {message}")]
    Tls { path: String, message: String },
    #[error("connecting to NATS: {0}")]
    Connect(#[from] async_nats::ConnectError),
    #[error("nats.url {seed:?}: {message}")]
    Url { seed: String, message: String },
    #[error("creating or updating stream {stream}: {source}")]
    Stream {
        stream: String,
        source: async_nats::Error,
    },
}

/// Why a message was not queued. The client gets 451 4.3.0 and keeps it.
#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    #[error("queue not ready (NATS disconnected or stream not provisioned)")]
    NotReady,
    #[error("storing body: {0}")]
    Body(#[from] BodyError),
    #[error("publishing entry: {0}")]
    Publish(async_nats::Error),
    #[error("no acknowledgement within {0:?}, twice")]
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

/// The queue as ingress and delivery see it.
#[derive(Debug, Clone)]
pub struct Queue {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) client: async_nats::Client,
    pub(crate) jetstream: jetstream::Context,
    pub(crate) config: NatsConfig,
    /// The body stream; set once the queue is provisioned.
    pub(crate) bodies: OnceLock<bodies::Bodies>,
    pub(crate) body_ttl: Duration,
    /// When the stream last answered (a probe or a stored entry), ms since the epoch.
    pub(crate) answered_ms: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("stream", &self.config.stream)
            .field("provisioned", &self.bodies.get().is_some())
            .finish_non_exhaustive()
    }
}

/// `options` with the credentials, token and CA that `nats` names.
pub async fn connect_options(
    nats: &NatsConfig,
    mut options: async_nats::ConnectOptions,
) -> Result<async_nats::ConnectOptions, QueueError> {
    if let Some(path) = &nats.credentials_file {
        options = options
            .credentials_file(path)
            .await
            .map_err(QueueError::Credentials)?;
    }
    if let Some(path) = &nats.token_file {
        options = options.token(read_token(path)?);
    }
    if let Some(path) = &nats.ca_file {
        check_ca(path)?;
        options = options
            .add_root_certificates(path.clone())
            .require_tls(true);
    }
    Ok(options)
}

/// Checks the files `nats` names (credentials, token, CA) as a connection would read them.
pub fn check_files(nats: &NatsConfig) -> Result<(), QueueError> {
    if let Some(path) = &nats.credentials_file {
        std::fs::metadata(path).map_err(QueueError::Credentials)?;
    }
    if let Some(path) = &nats.token_file {
        read_token(path)?;
    }
    if let Some(path) = &nats.ca_file {
        check_ca(path)?;
    }
    Ok(())
}

/// The token in `nats.tokenFile`, without surrounding whitespace.
fn read_token(path: &std::path::Path) -> Result<String, QueueError> {
    let error = |message: String| QueueError::Token {
        path: path.display().to_string(),
        message,
    };
    let token = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
    let token = token.trim();
    if token.is_empty() {
        return Err(error("the file is empty".into()));
    }
    Ok(token.to_string())
}

/// `nats.caFile` holds at least one PEM certificate.
fn check_ca(path: &std::path::Path) -> Result<(), QueueError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let error = |message: String| QueueError::Tls {
        path: path.display().to_string(),
        message,
    };
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|e| error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(e.to_string()))?;
    if certificates.is_empty() {
        return Err(error("holds no PEM certificate".into()));
    }
    Ok(())
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
        let options = async_nats::ConnectOptions::new()
            .name("postern")
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(Duration::from_secs(2))
            .reconnect_delay_callback(|attempt| {
                Duration::from_millis((100 * attempt as u64).min(2_000))
            })
            .event_callback(|event| async move { tracing::info!(%event, "nats connection event") });
        let options = connect_options(config, options).await?;
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
        let seeds = postern_config::nats_seeds(url)
            .into_iter()
            .map(|seed| {
                seed.parse::<async_nats::ServerAddr>()
                    .map_err(|e| QueueError::Url {
                        seed: seed.to_string(),
                        message: e.to_string(),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let client = options.connect(seeds.as_slice()).await?;
        let jetstream = jetstream::new(client.clone());
        Ok(Queue {
            inner: Arc::new(Inner {
                client,
                jetstream,
                config: config.clone(),
                bodies: OnceLock::new(),
                body_ttl,
                answered_ms: Default::default(),
            }),
        })
    }

    /// True when the queue can take a message now: connected, provisioned, and the stream
    /// answered within the last few seconds (a cluster without quorum, or a server that
    /// stopped answering, is not).
    pub fn can_take(&self) -> bool {
        let answered = self
            .inner
            .answered_ms
            .load(std::sync::atomic::Ordering::Acquire);
        self.is_ready() && now_ms().saturating_sub(answered) < ANSWERED_WITHIN.as_millis() as u64
    }

    fn answered(&self) {
        self.inner
            .answered_ms
            .store(now_ms(), std::sync::atomic::Ordering::Release);
    }

    /// Asks the stream for its info every second until `cancel`, so that [`Queue::can_take`]
    /// knows whether it answers.
    pub async fn watch_health(&self, cancel: tokio_util::sync::CancellationToken) {
        loop {
            if self.is_ready() {
                // Getting the stream asks its leader for the stream's info.
                let probe = self.inner.jetstream.get_stream(&self.inner.config.stream);
                match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
                    Ok(Ok(_)) => self.answered(),
                    Ok(Err(err)) => tracing::debug!(%err, "the queue stream did not answer"),
                    Err(_) => tracing::debug!("the queue stream did not answer in time"),
                }
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(PROBE_EVERY) => {}
            }
        }
    }

    /// True when NATS is connected and the stream exists.
    pub fn is_ready(&self) -> bool {
        self.inner.bodies.get().is_some()
            && self.inner.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Creates or updates the queue stream and the body stream to match the configuration.
    pub async fn provision(&self) -> Result<(), QueueError> {
        let config = &self.inner.config;
        let wanted = stream::Config {
            name: config.stream.clone(),
            subjects: vec![names::queue_subjects(&config.subject_prefix)],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            num_replicas: config.replicas,
            duplicate_window: config.duplicate_window.get(),
            description: Some(
                "Postern mail queue: one entry per message and destination domain".into(),
            ),
            // Retries wait as scheduled messages (`<prefix>.wait.…`), which JetStream moves to
            // the ready subject at their time: nothing fetches or holds them until then.
            allow_message_schedules: true,
            ..Default::default()
        };
        let stream_error = |stream: &str, source: async_nats::Error| QueueError::Stream {
            stream: stream.to_string(),
            source,
        };
        self.inner
            .jetstream
            .create_or_update_stream(wanted)
            .await
            .map_err(|e| stream_error(&config.stream, e.into()))?;
        let dead = stream::Config {
            name: names::dead_letter_stream(config),
            subjects: vec![format!("{}.>", names::dead_letter_prefix(config))],
            storage: stream::StorageType::File,
            num_replicas: config.replicas,
            max_age: DEAD_LETTER_AGE,
            description: Some(
                "Postern dead letters: queue entries no worker could settle, with the reason"
                    .into(),
            ),
            ..Default::default()
        };
        self.inner
            .jetstream
            .create_or_update_stream(dead)
            .await
            .map_err(|e| stream_error(&names::dead_letter_stream(config), e.into()))?;
        let bodies = bodies::Bodies::provision(&self.inner.jetstream, config, self.inner.body_ttl)
            .await
            .map_err(|e| stream_error(&config.body_stream, e))?;
        let _ = self.inner.bodies.set(bodies);
        Ok(())
    }

    /// Uses the queue's streams as they are, creating and changing nothing: for tools that
    /// look at a queue the relay provisioned.
    pub async fn attach(&self) -> Result<(), QueueError> {
        let config = &self.inner.config;
        let bodies = bodies::Bodies::attach(&self.inner.jetstream, config)
            .await
            .map_err(|source| QueueError::Stream {
                stream: config.body_stream.clone(),
                source,
            })?;
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

    fn bodies(&self) -> Result<&bodies::Bodies, EnqueueError> {
        self.inner.bodies.get().ok_or(EnqueueError::NotReady)
    }

    /// Starts streaming a message's content to the body stream under `key` (its queue id).
    pub fn upload(&self, key: &str) -> Result<Upload, EnqueueError> {
        Ok(self.bodies()?.upload(key))
    }

    /// Publishes one entry per recipient domain and waits until JetStream has stored all of
    /// them. A message that cannot be stored whole is removed again, so the client's retry
    /// does not queue it twice.
    pub async fn enqueue(&self, submission: Submission) -> Result<(), EnqueueError> {
        let Submission {
            queue_id,
            sender,
            recipients,
            content,
            received_at_ms,
            client,
            smtputf8,
            eight_bit_mime,
            eight_bit,
            traceparent,
            dsn,
            require_tls,
            tls_optional,
            message_id,
        } = submission;
        if !self.is_ready() {
            if let Submitted::Streamed { upload, .. } = content {
                upload.abort().await;
            }
            return Err(EnqueueError::NotReady);
        }
        let config = &self.inner.config;
        let (inline, stored) = match content {
            Submitted::Whole(body) if body.len() <= config.inline_body_limit => (body, None),
            Submitted::Whole(body) => {
                let mut upload = self.upload(&queue_id)?;
                let stored = async {
                    for chunk in body.chunks(bodies::CHUNK) {
                        upload.write(Bytes::copy_from_slice(chunk), None).await?;
                    }
                    upload.finish().await
                }
                .await;
                match stored {
                    Ok(size) => (Vec::new(), Some((queue_id.clone(), size))),
                    Err(err) => {
                        upload.abort().await;
                        return Err(err.into());
                    }
                }
            }
            Submitted::Streamed { head, mut upload } => match upload.finish().await {
                Ok(size) => (head, Some((upload.key().to_string(), size))),
                Err(err) => {
                    upload.abort().await;
                    return Err(err.into());
                }
            },
        };
        let groups = group_by_domain(&recipients);
        let body_key = match &stored {
            Some((key, _)) => Some((self.bodies()?.clone(), key.clone())),
            None => None,
        };
        if let Some((bodies, key)) = &body_key {
            let lineages = u32::try_from(groups.len()).unwrap_or(u32::MAX);
            if let Err(err) = bodies.register(key, lineages).await {
                bodies.remove(key).await;
                return Err(err.into());
            }
        }
        let inline = Bytes::from(inline);
        let entries: Vec<publish::Outgoing> = groups
            .into_iter()
            .enumerate()
            .map(|(index, (domain, recipients))| {
                let body = match &stored {
                    None => BodyRef::Inline {
                        size: inline.len() as u64,
                    },
                    Some((key, size)) => BodyRef::Stored {
                        stream: config.body_stream.clone(),
                        key: key.clone(),
                        size: *size,
                        lineage: u32::try_from(index).unwrap_or(u32::MAX),
                        token: bodies::INITIAL_TOKEN.to_string(),
                    },
                };
                let entry_dsn = dsn.only(|r| recipients.iter().any(|mine| mine == r));
                let envelope = Envelope {
                    version: entry::version_for(&body, require_tls),
                    queue_id: queue_id.clone(),
                    sender: sender.clone(),
                    domain,
                    recipients,
                    received_at_ms,
                    attempts: 0,
                    client: client.clone(),
                    smtputf8,
                    eight_bit_mime,
                    eight_bit,
                    body,
                    not_before_ms: None,
                    traceparent: traceparent.clone(),
                    rate_reserved: None,
                    postponed: 0,
                    last_replies: Vec::new(),
                    dsn: entry_dsn,
                    delay_reported: false,
                    require_tls,
                    tls_optional,
                    message_id: message_id.clone(),
                };
                self.outgoing(&envelope, &inline, format!("{queue_id}.{index}"))
            })
            .collect();
        match publish::publish_all(&self.inner.jetstream, &entries, config.ack_timeout.get()).await
        {
            Ok(_) => {
                self.answered();
                Ok(())
            }
            Err((error, leftovers)) => {
                publish::clean_up(
                    &self.inner.jetstream,
                    &config.stream,
                    leftovers,
                    body_key,
                    config.duplicate_window.get(),
                )
                .await;
                Err(error)
            }
        }
    }

    /// One entry, ready to publish.
    fn outgoing(&self, envelope: &Envelope, inline: &[u8], id: String) -> publish::Outgoing {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("traceparent", envelope.traceparent.as_str());
        headers.insert("Postern-Queue-Id", envelope.queue_id.as_str());
        publish::Outgoing {
            subject: names::ready_subject(&self.inner.config.subject_prefix, &envelope.domain),
            headers,
            payload: Bytes::from(entry::encode(envelope, Some(inline))),
            id,
        }
    }

    /// Publishes one entry (a retry holding the remaining recipients) as a message scheduled
    /// for `envelope.not_before_ms`, and waits until it is stored. Until then it is a message on
    /// its own subject under `<prefix>.wait.<domain>.`, which no consumer reads; at its time JetStream
    /// publishes it to the domain's ready subject and removes the schedule. `message_id` makes
    /// a repeated publish of the same retry a no-op.
    pub async fn requeue(
        &self,
        envelope: &Envelope,
        inline: &[u8],
        message_id: String,
    ) -> Result<(), EnqueueError> {
        let mut entry = self.outgoing(envelope, inline, message_id);
        if let Some(at) = envelope.not_before_ms {
            schedule(&mut entry.headers, at, &entry.subject);
            entry.subject = names::wait_subject(
                &self.inner.config.subject_prefix,
                &envelope.domain,
                &entry.id,
            );
        }
        match publish::publish_all(
            &self.inner.jetstream,
            std::slice::from_ref(&entry),
            self.inner.config.ack_timeout.get(),
        )
        .await
        {
            Ok(_) => Ok(()),
            // An unknown retry entry is harmless: the entry it replaces is not acknowledged,
            // so it comes back, and a stray copy of a stored body's retry is found stale.
            Err((error, _)) => Err(error),
        }
    }

    /// How much of the queue is ready, held by workers, waiting for a retry time, and dead.
    pub async fn counts(
        &self,
        consumer: &mut jetstream::consumer::PullConsumer,
    ) -> Result<QueueCounts, async_nats::Error> {
        let config = &self.inner.config;
        let info = consumer.info().await?.clone();
        let mut stream = self.inner.jetstream.get_stream(&config.stream).await?;
        let stored = stream.info().await?.state.messages;
        let dead_letters = match self
            .inner
            .jetstream
            .get_stream(names::dead_letter_stream(config))
            .await
        {
            Ok(mut dead) => dead.info().await?.state.messages,
            Err(_) => 0,
        };
        let ready = info.num_pending;
        let in_flight = u64::try_from(info.num_ack_pending).unwrap_or(0);
        let oldest_ready = if ready == 0 {
            Duration::ZERO
        } else {
            // The next entry the consumer hands out; a retry's message is the one the schedule
            // published at its time, so its timestamp is when it became due.
            let next = stream
                .raw_message_builder()
                .sequence(info.delivered.stream_sequence + 1)
                .next_by_subject(names::ready_filter(&config.subject_prefix))
                .send()
                .await;
            match next {
                Ok(message) => {
                    let due_ms = message.time.unix_timestamp_nanos() / 1_000_000;
                    let due_ms = u64::try_from(due_ms).unwrap_or(0);
                    Duration::from_millis(now_ms().saturating_sub(due_ms))
                }
                Err(_) => Duration::ZERO,
            }
        };
        Ok(QueueCounts {
            ready,
            in_flight,
            // Everything stored that no worker can be handed yet: scheduled retries.
            waiting: stored.saturating_sub(ready + in_flight),
            dead_letters,
            oldest_ready,
        })
    }

    /// Moves a queue entry no worker can settle to the dead-letter stream, with `reason` (and
    /// the entry's subject) in its headers. The caller removes the entry once this returns.
    pub async fn dead_letter(
        &self,
        subject: &str,
        headers: Option<&async_nats::HeaderMap>,
        payload: Bytes,
        reason: &str,
    ) -> Result<(), EnqueueError> {
        let mut headers = headers.cloned().unwrap_or_default();
        headers.insert("Postern-Dead-Reason", reason);
        headers.insert("Postern-Dead-Subject", subject);
        let tail = subject
            .strip_prefix(&format!("{}.", self.inner.config.subject_prefix))
            .unwrap_or("entry");
        let target = format!("{}.{tail}", names::dead_letter_prefix(&self.inner.config));
        let published = self
            .inner
            .jetstream
            .publish_with_headers(target, headers, payload)
            .await
            .map_err(|e| EnqueueError::Publish(e.into()))?;
        tokio::time::timeout(self.inner.config.ack_timeout.get(), published)
            .await
            .map_err(|_| EnqueueError::AckTimeout(self.inner.config.ack_timeout.get()))?
            .map_err(|e| EnqueueError::Publish(e.into()))?;
        Ok(())
    }

    /// The body of an entry whose payload after the envelope line is `inline`.
    pub fn content(&self, envelope: &Envelope, inline: Bytes) -> Result<Content, EnqueueError> {
        match &envelope.body {
            BodyRef::Inline { .. } => Ok(Content::whole(inline)),
            BodyRef::Stored { key, size, .. } => Ok(Content::stored(
                inline,
                *size,
                self.bodies()?.reader(key, *size),
            )),
            BodyRef::Object {
                bucket, key, size, ..
            } => Ok(Content::object(
                *size,
                legacy::ObjectBody::new(&self.inner.jetstream, bucket, key),
            )),
        }
    }

    /// Where the entry's lineage stands; `None` for an inline body, which has no lineage.
    pub async fn lineage(&self, envelope: &Envelope) -> Result<Option<Lineage>, EnqueueError> {
        let Some((key, lineage, token)) = stored_lineage(envelope) else {
            return Ok(None);
        };
        Ok(Some(self.bodies()?.lineage(key, lineage, token).await?))
    }

    /// Hands the entry's lineage to the retry entry holding `next`, or finishes it (`None`);
    /// the last lineage of a message removes its stored body. `None` for an inline body;
    /// [`Lineage::Stale`] when another processing of this entry got there first.
    pub async fn advance(
        &self,
        envelope: &Envelope,
        next: Option<&str>,
    ) -> Result<Option<Lineage>, EnqueueError> {
        if let (BodyRef::Object { bucket, key, .. }, None) = (&envelope.body, next) {
            legacy::ObjectBody::new(&self.inner.jetstream, bucket, key)
                .release()
                .await?;
            return Ok(None);
        }
        let Some((key, lineage, token)) = stored_lineage(envelope) else {
            return Ok(None);
        };
        Ok(Some(
            self.bodies()?.advance(key, lineage, token, next).await?,
        ))
    }

    /// The buckets destination state lives in, created or updated: one for each destination's
    /// backoff, slow-down and rate (kept a week after its last change), one for connection
    /// leases (each gone `lease_ttl` after its holder last renewed it).
    pub async fn destination_buckets(
        &self,
        lease_ttl: Duration,
    ) -> Result<(jetstream::kv::Store, jetstream::kv::Store), QueueError> {
        let config = &self.inner.config;
        let states = self
            .bucket(
                names::destination_bucket(config),
                DESTINATION_STATE_AGE,
                "Postern destinations: backoff, slow-down and rate, shared by delivery processes",
            )
            .await?;
        let leases = self
            .bucket(
                names::lease_bucket(config),
                lease_ttl,
                "Postern connection leases per destination; a holder renews its own",
            )
            .await?;
        Ok((states, leases))
    }

    /// A KV bucket, created or updated: one value per key, each gone `max_age` after it was
    /// written.
    pub(crate) async fn bucket(
        &self,
        bucket: String,
        max_age: Duration,
        description: &str,
    ) -> Result<jetstream::kv::Store, QueueError> {
        let wanted = jetstream::kv::Config {
            bucket: bucket.clone(),
            description: description.into(),
            history: 1,
            max_age,
            storage: stream::StorageType::File,
            num_replicas: self.inner.config.replicas,
            ..Default::default()
        };
        self.inner
            .jetstream
            .create_or_update_key_value(wanted)
            .await
            .map_err(|e| QueueError::Stream {
                stream: names::bucket_stream(&bucket),
                source: e.into(),
            })
    }

    /// An error about the queue stream.
    fn stream_error(&self, source: async_nats::Error) -> QueueError {
        QueueError::Stream {
            stream: self.inner.config.stream.clone(),
            source,
        }
    }

    /// The queue stream.
    async fn queue_stream(&self) -> Result<jetstream::stream::Stream, QueueError> {
        self.inner
            .jetstream
            .get_stream(&self.inner.config.stream)
            .await
            .map_err(|e| self.stream_error(e.into()))
    }

    /// The delivery consumer as it exists, changing nothing.
    pub async fn existing_consumer(
        &self,
        name: &str,
    ) -> Result<jetstream::consumer::PullConsumer, QueueError> {
        let stream = self.queue_stream().await?;
        stream
            .get_consumer(name)
            .await
            .map_err(|e| self.stream_error(e))
    }

    /// The durable pull consumer delivery processes share, created or updated.
    pub async fn consumer(
        &self,
        name: &str,
        ack_wait: Duration,
        max_ack_pending: i64,
        max_deliver: i64,
    ) -> Result<jetstream::consumer::PullConsumer, QueueError> {
        let config = &self.inner.config;
        let stream = self.queue_stream().await?;
        let consumer = jetstream::consumer::pull::Config {
            durable_name: Some(name.to_string()),
            description: Some("Postern delivery workers".into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait,
            max_deliver,
            max_ack_pending,
            // Ready entries only (`<prefix>.<domain>`); scheduled retries are deeper.
            filter_subject: names::ready_filter(&config.subject_prefix),
            ..Default::default()
        };
        stream
            .create_consumer(consumer)
            .await
            .map_err(|e| self.stream_error(e.into()))
    }

    /// Deletes the queue stream and the body stream (and the buckets of earlier builds), with
    /// any mail still queued.
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
            names::dead_letter_stream(config),
            config.body_stream.clone(),
            names::legacy_body_streams(&config.body_stream)[0].clone(),
            names::legacy_body_streams(&config.body_stream)[1].clone(),
            names::bucket_stream(&names::destination_bucket(config)),
            names::bucket_stream(&names::lease_bucket(config)),
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
}

/// The queue by state: what autoscaling, status and metrics report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueCounts {
    /// Due now and not yet handed to a worker: what delivery should scale on.
    pub ready: u64,
    /// Handed to workers, not yet acknowledged.
    pub in_flight: u64,
    /// Retries scheduled for later (and tombstones not yet read).
    pub waiting: u64,
    /// In the dead-letter stream.
    pub dead_letters: u64,
    /// How long the oldest ready entry has been due (since it was accepted, or since its
    /// retry time): how far delivery is behind. Zero when nothing is ready.
    pub oldest_ready: Duration,
}

/// How recently the stream must have answered for the queue to take messages.
const ANSWERED_WITHIN: Duration = Duration::from_secs(3);
/// How often, and how patiently, the stream is asked.
const PROBE_EVERY: Duration = Duration::from_secs(1);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Milliseconds since the Unix epoch: the unit of every time in the queue's entries and state.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Makes a message with `headers` a schedule: JetStream publishes it to `target` at `at_ms`
/// (milliseconds since the epoch) and removes it.
pub fn schedule(headers: &mut async_nats::HeaderMap, at_ms: u64, target: &str) {
    headers.insert(
        "Nats-Schedule",
        format!("@at {}", postern_smtp::date::rfc3339_ms(at_ms)).as_str(),
    );
    headers.insert("Nats-Schedule-Target", target);
}

/// How long a destination's state outlives its last change.
const DESTINATION_STATE_AGE: Duration = Duration::from_secs(7 * 86_400);

/// How long dead letters are kept for someone to look at them.
const DEAD_LETTER_AGE: Duration = Duration::from_secs(30 * 86_400);

/// The body key, lineage and token of an entry with a stored body.
fn stored_lineage(envelope: &Envelope) -> Option<(&str, u32, &str)> {
    match &envelope.body {
        BodyRef::Stored {
            key,
            lineage,
            token,
            ..
        } => Some((key, *lineage, token)),
        BodyRef::Inline { .. } | BodyRef::Object { .. } => None,
    }
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
