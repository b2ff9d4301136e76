//! Delivery events: one JSON message per recipient and outcome on the stream `<stream>_EVENTS`
//! (subjects `<prefix>_events.<kind>`), the integration point for anything that wants to know
//! what happened to mail. Publishing never holds mail up: an event that cannot be stored is
//! counted and logged, and the message goes on.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use serde::{Deserialize, Serialize};

use crate::{Queue, QueueError, names};

/// The schema version of [`Event`]; a field's meaning never changes within a version.
pub const EVENT_VERSION: u32 = 1;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Ingress accepted the message for this recipient (it answered 250).
    Received,
    Delivered,
    /// A temporary failure; it is tried again.
    Deferred,
    /// A permanent failure, reported to the sender.
    Bounced,
    /// Still deferred at `delivery.retry.maxAge`, reported to the sender.
    Expired,
    /// Not attempted: the recipient is on the suppression list.
    Suppressed,
    /// No worker could settle the entry; it went to the dead-letter stream.
    DeadLettered,
}

impl Kind {
    /// The subject token and metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Received => "received",
            Kind::Delivered => "delivered",
            Kind::Deferred => "deferred",
            Kind::Bounced => "bounced",
            Kind::Expired => "expired",
            Kind::Suppressed => "suppressed",
            Kind::DeadLettered => "dead_lettered",
        }
    }
}

/// One event (schema version 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub version: u32,
    /// Unique per event (a ULID), also its `Nats-Msg-Id`: a consumer deduplicates by it.
    pub id: String,
    pub kind: Kind,
    /// When it happened, RFC 3339 in UTC with milliseconds.
    pub time: String,
    pub queue_id: String,
    /// The reverse path; empty for the null sender.
    pub sender: String,
    /// The message's `Message-ID` field, as written (angle brackets included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient: Option<String>,
    /// The recipient's domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// The destination the attempt went to (see docs/configuration.md, Destinations).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    /// The attempt this outcome came from, from 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// The reply, as `550 5.1.1 text`: the remote server's, or Postern's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<String>,
    /// The host that gave the reply, when a server did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_host: Option<String>,
    /// The TLS of the session that gave the reply; absent for plaintext and for Postern's own
    /// replies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsDetails>,
    /// For a retry: when it is due, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt: Option<String>,
    /// For a dead letter: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The TLS of a delivery session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TlsDetails {
    /// `TLSv1.3`, `TLSv1.2`.
    pub version: String,
    /// The IANA name of the cipher suite, `TLS13_AES_256_GCM_SHA384`.
    pub cipher: String,
    /// The server's certificate was verified for its host name.
    pub verified: bool,
    /// The recipient-side policy that asked for it: `mta-sts`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
}

impl Event {
    /// An event of `kind` about message `queue_id` from `sender`, now; the rest is filled in
    /// by the caller.
    pub fn new(kind: Kind, queue_id: &str, sender: &str) -> Event {
        Event {
            version: EVENT_VERSION,
            id: ulid::Ulid::new().to_string(),
            kind,
            time: postern_smtp::date::rfc3339_ms(crate::now_ms()),
            queue_id: queue_id.to_string(),
            sender: sender.to_string(),
            message_id: None,
            recipient: None,
            domain: None,
            destination: None,
            attempt: None,
            reply: None,
            remote_host: None,
            tls: None,
            next_attempt: None,
            reason: None,
        }
    }

    /// The same event about `recipient`, with its domain.
    pub fn recipient(self, recipient: &str) -> Event {
        let domain = recipient
            .rsplit_once('@')
            .map(|(_, d)| d.to_ascii_lowercase());
        Event {
            recipient: Some(recipient.to_string()),
            domain,
            ..self
        }
    }
}

/// The consumer of webhook `name`.
pub fn webhook_consumer_name(name: &str) -> String {
    format!("postern-webhook-{name}")
}

/// Where events go: the stream, created or updated on first use.
#[derive(Debug)]
pub struct EventLog {
    queue: Queue,
    max_age: Duration,
    max_bytes: i64,
    ready: tokio::sync::OnceCell<()>,
}

/// How long publishing one event may take.
const PUBLISH_WITHIN: Duration = Duration::from_secs(2);

impl EventLog {
    pub fn new(queue: Queue, max_age: Duration, max_bytes: u64) -> EventLog {
        EventLog {
            queue,
            max_age,
            max_bytes: i64::try_from(max_bytes).unwrap_or(i64::MAX),
            ready: tokio::sync::OnceCell::new(),
        }
    }

    async fn provision(&self) -> Result<(), QueueError> {
        let config = &self.queue.inner.config;
        let name = names::events_stream(config);
        let wanted = stream::Config {
            name: name.clone(),
            subjects: vec![names::event_subject(config, ">")],
            storage: stream::StorageType::File,
            num_replicas: config.replicas,
            max_age: self.max_age,
            max_bytes: self.max_bytes,
            discard: stream::DiscardPolicy::Old,
            duplicate_window: Duration::from_secs(120),
            description: Some(
                "Postern delivery events: one per recipient and outcome (docs/deliverability.md)"
                    .into(),
            ),
            ..Default::default()
        };
        self.queue
            .inner
            .jetstream
            .create_or_update_stream(wanted)
            .await
            .map(|_| ())
            .map_err(|e| QueueError::Stream {
                stream: name,
                source: e.into(),
            })
    }

    /// The durable consumer `postern-webhook-<name>` of the events of `kinds` (all when empty),
    /// created, or updated to these kinds; one shared by every delivery process, so each event
    /// goes to one of them. A new consumer starts with the events published from now on.
    pub async fn webhook_consumer(
        &self,
        name: &str,
        kinds: &[String],
        ack_wait: Duration,
        max_ack_pending: i64,
    ) -> Result<jetstream::consumer::PullConsumer, QueueError> {
        self.ready.get_or_try_init(|| self.provision()).await?;
        let config = &self.queue.inner.config;
        let stream_name = names::events_stream(config);
        let error = |e: async_nats::Error| QueueError::Stream {
            stream: stream_name.clone(),
            source: e,
        };
        let filter_subjects = if kinds.is_empty() {
            vec![names::event_subject(config, "*")]
        } else {
            kinds
                .iter()
                .map(|kind| names::event_subject(config, kind))
                .collect()
        };
        let wanted = jetstream::consumer::pull::Config {
            durable_name: Some(webhook_consumer_name(name)),
            description: Some(format!("Postern webhook {name}")),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait,
            max_deliver: -1,
            max_ack_pending,
            deliver_policy: jetstream::consumer::DeliverPolicy::New,
            filter_subjects,
            ..Default::default()
        };
        let stream = self
            .queue
            .inner
            .jetstream
            .get_stream(&stream_name)
            .await
            .map_err(|e| error(e.into()))?;
        stream
            .create_consumer(wanted)
            .await
            .map_err(|e| error(e.into()))
    }

    /// Publishes `event` and waits for the stream to store it.
    pub async fn publish(&self, event: &Event) -> Result<(), async_nats::Error> {
        self.ready.get_or_try_init(|| self.provision()).await?;
        let config = &self.queue.inner.config;
        let payload = serde_json::to_vec(event)?;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", event.id.as_str());
        let js: &jetstream::Context = &self.queue.inner.jetstream;
        let ack = js
            .publish_with_headers(
                names::event_subject(config, event.kind.as_str()),
                headers,
                payload.into(),
            )
            .await?;
        tokio::time::timeout(PUBLISH_WITHIN, ack)
            .await
            .map_err(|_| "no acknowledgement in time")??;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_the_configs() {
        let kinds = [
            Kind::Received,
            Kind::Delivered,
            Kind::Deferred,
            Kind::Bounced,
            Kind::Expired,
            Kind::Suppressed,
            Kind::DeadLettered,
        ];
        let names: Vec<&str> = kinds.iter().map(|k| k.as_str()).collect();
        assert_eq!(names, postern_config::EVENT_KINDS);
    }

    #[test]
    fn the_schema_is_compact_and_stable() {
        let event = Event {
            id: "01JEVENT".into(),
            time: "2026-12-02T00:00:00.000Z".into(),
            attempt: Some(1),
            reply: Some("250 2.0.0 ok".into()),
            remote_host: Some("mx.example.org".into()),
            ..Event::new(Kind::Delivered, "01JQUEUE", "a@example.com").recipient("b@Example.ORG")
        };
        assert_eq!(
            serde_json::to_string(&event).unwrap(),
            r#"{"version":1,"id":"01JEVENT","kind":"delivered","time":"2026-12-02T00:00:00.000Z","queueId":"01JQUEUE","sender":"a@example.com","recipient":"b@Example.ORG","domain":"example.org","attempt":1,"reply":"250 2.0.0 ok","remoteHost":"mx.example.org"}"#
        );
        assert_eq!(
            serde_json::to_value(Kind::DeadLettered).unwrap(),
            "dead_lettered"
        );
        assert_eq!(Kind::DeadLettered.as_str(), "dead_lettered");
    }
}
