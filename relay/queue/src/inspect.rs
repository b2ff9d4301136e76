//! The queue seen and changed from outside delivery, entry by entry: what `postern queue`
//! does. Entries are read by sequence without a consumer (a work-queue stream allows only
//! delivery's), and moved by publishing the changed copy before removing the original, so
//! that a failure in between leaves an entry twice, never none.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream;
use bytes::Bytes;
use futures::StreamExt;

use super::entry::{self, Envelope};
use super::names::{self, dead_letter_stream, destination_bucket};
use super::{EnqueueError, Queue, now_ms};

/// Which entries a command applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// Every entry of one accepted message.
    Id(String),
    /// Every entry for one recipient domain.
    Domain(String),
    All,
}

/// Where an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Place {
    /// Due now: handed out, or about to be.
    Ready,
    /// A retry, or put back, scheduled for later.
    Waiting,
    /// Held by an administrator until released.
    Held,
}

/// One entry as stored.
#[derive(Debug, Clone)]
pub struct Found {
    pub sequence: u64,
    pub subject: String,
    pub place: Place,
    /// When it was stored (for a ready retry: when it became due), ms since the epoch.
    pub stored_ms: u64,
    pub headers: HeaderMap,
    pub payload: Bytes,
    /// `None` when it cannot be decoded.
    pub envelope: Option<Envelope>,
}

/// Why an administrative change failed.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("reading the queue: {0}")]
    Read(async_nats::Error),
    #[error("publishing to the queue: {0}")]
    Publish(async_nats::Error),
    #[error(transparent)]
    Enqueue(#[from] EnqueueError),
}

/// What became of one entry a command touched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    Done,
    /// A worker took it meanwhile (it is in flight or finished): left alone.
    Taken,
}

/// Per recipient domain: entries ready (including those in flight), waiting and held, and
/// the age of the oldest ready one.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct DomainCounts {
    pub ready: u64,
    pub waiting: u64,
    pub held: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oldest_ready_seconds: Option<u64>,
}

/// One dead letter.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeadLetter {
    pub sequence: u64,
    pub reason: String,
    /// The subject it had in the queue.
    pub subject: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_id: Option<String>,
    pub stored_ms: u64,
}

fn read<E: Into<async_nats::Error>>(err: E) -> InspectError {
    InspectError::Read(err.into())
}

fn publish<E: Into<async_nats::Error>>(err: E) -> InspectError {
    InspectError::Publish(err.into())
}

/// The recipient domain a subject token names (the reverse of [`entry::domain_token`]).
pub fn domain_of_token(token: &str) -> String {
    let mut bytes = Vec::with_capacity(token.len());
    let mut rest = token.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        match b {
            b'_' => bytes.push(b'.'),
            b'=' if tail.len() >= 2 => {
                let hex = std::str::from_utf8(&tail[..2]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(decoded) => {
                        bytes.push(decoded);
                        rest = &tail[2..];
                        continue;
                    }
                    Err(_) => bytes.push(b),
                }
            }
            _ => bytes.push(b),
        }
        rest = tail;
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The first message of `stream` on `filter` at or after sequence `from`, if any: one request,
/// no consumer.
async fn next_message(
    stream: &jetstream::stream::Stream<()>,
    filter: &str,
    from: u64,
) -> Result<Option<jetstream::message::StreamMessage>, InspectError> {
    match stream.get_first_raw_message_by_subject(filter, from).await {
        Ok(message) => Ok(Some(message)),
        Err(err) if err.kind() == jetstream::stream::RawMessageErrorKind::NoMessageFound => {
            Ok(None)
        }
        Err(err) => Err(read(err)),
    }
}

/// A stored message and when it was stored, in ms since the epoch.
fn millis(message: jetstream::message::StreamMessage) -> (jetstream::message::StreamMessage, u64) {
    let ms = u64::try_from(message.time.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
    (message, ms)
}

impl Queue {
    fn prefix(&self) -> &str {
        &self.inner.config.subject_prefix
    }

    /// The queue stream, without asking for its info.
    async fn stream_no_info(&self) -> Result<jetstream::stream::Stream<()>, InspectError> {
        self.inner
            .jetstream
            .get_stream_no_info(&self.inner.config.stream)
            .await
            .map_err(read)
    }

    fn place_of(&self, subject: &str) -> Option<Place> {
        let rest = subject.strip_prefix(self.prefix())?.strip_prefix('.')?;
        if rest.starts_with("wait.") {
            Some(Place::Waiting)
        } else if rest.starts_with("hold.") {
            Some(Place::Held)
        } else if !rest.contains('.') {
            Some(Place::Ready)
        } else {
            None
        }
    }

    /// The entries `selector` names, in the order they were stored.
    pub async fn find(&self, selector: &Selector) -> Result<Vec<Found>, InspectError> {
        let prefix = self.prefix();
        let filters: Vec<String> = match selector {
            Selector::Domain(domain) => vec![
                names::ready_subject(prefix, domain),
                names::wait_filter(prefix, domain),
                names::hold_filter(prefix, domain),
            ],
            Selector::Id(_) | Selector::All => vec![names::queue_subjects(prefix)],
        };
        let stream = self.stream_no_info().await?;
        let mut found = Vec::new();
        for filter in filters {
            let mut next = 1;
            while let Some(message) = next_message(&stream, &filter, next).await? {
                next = message.sequence + 1;
                let (message, stored_ms) = millis(message);
                let subject = message.subject.to_string();
                let Some(place) = self.place_of(&subject) else {
                    continue;
                };
                let envelope = entry::decode(&message.payload).ok().map(|(e, _)| e);
                if let Selector::Id(id) = selector
                    && envelope.as_ref().is_none_or(|e| &e.queue_id != id)
                {
                    continue;
                }
                found.push(Found {
                    sequence: message.sequence,
                    subject,
                    place,
                    stored_ms,
                    headers: message.headers,
                    payload: message.payload,
                    envelope,
                });
            }
        }
        found.sort_by_key(|f| f.sequence);
        Ok(found)
    }

    /// Entries per recipient domain, from the stream's subject counts.
    pub async fn domain_counts(&self) -> Result<BTreeMap<String, DomainCounts>, InspectError> {
        let prefix = self.prefix().to_string();
        let stream = self
            .inner
            .jetstream
            .get_stream(&self.inner.config.stream)
            .await
            .map_err(read)?;
        let info = stream
            .info_with_subjects(names::queue_subjects(&prefix))
            .await
            .map_err(read)?;
        let subjects: Vec<(String, usize)> = info
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(read)?;
        let mut domains: BTreeMap<String, DomainCounts> = BTreeMap::new();
        for (subject, count) in subjects {
            let Some(rest) = subject.strip_prefix(&format!("{prefix}.")) else {
                continue;
            };
            let count = count as u64;
            let mut parts = rest.split('.');
            match (parts.next(), parts.next()) {
                (Some("wait"), Some(token)) => {
                    domains.entry(domain_of_token(token)).or_default().waiting += count;
                }
                (Some("hold"), Some(token)) => {
                    domains.entry(domain_of_token(token)).or_default().held += count;
                }
                (Some(token), None) => {
                    domains.entry(domain_of_token(token)).or_default().ready += count;
                }
                _ => {}
            }
        }
        let now = now_ms();
        for (domain, counts) in domains.iter_mut().filter(|(_, c)| c.ready > 0) {
            let subject = names::ready_subject(&prefix, domain);
            if let Ok(message) = stream.get_first_raw_message_by_subject(&subject, 1).await {
                let (_, stored) = millis(message);
                counts.oldest_ready_seconds = Some(now.saturating_sub(stored) / 1000);
            }
        }
        Ok(domains)
    }

    /// Every destination's shared state (backoff, slow-down), by name.
    pub async fn destination_states(&self) -> Result<Vec<crate::destination::State>, InspectError> {
        let Ok(kv) = self
            .inner
            .jetstream
            .get_key_value(destination_bucket(&self.inner.config))
            .await
        else {
            return Ok(Vec::new());
        };
        let mut keys = match kv.keys().await {
            Ok(keys) => keys,
            Err(_) => return Ok(Vec::new()),
        };
        let mut states = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(read)?;
            if !key.starts_with("state.") {
                continue;
            }
            if let Some(value) = kv.get(&key).await.map_err(read)?
                && let Ok(state) = serde_json::from_slice(&value)
            {
                states.push(state);
            }
        }
        Ok(states)
    }

    /// Publishes `envelope` (with `found`'s body and headers) to `subject`, due at `at` when
    /// given, then removes `found`. [`Change::Taken`] when a worker took `found` meanwhile;
    /// the copy is removed again.
    async fn replace(
        &self,
        found: &Found,
        envelope: &Envelope,
        subject: String,
        at: Option<u64>,
    ) -> Result<Change, InspectError> {
        let inline = entry::decode(&found.payload)
            .map(|(_, inline)| found.payload.slice_ref(inline))
            .unwrap_or_default();
        let mut headers = HeaderMap::new();
        for (name, values) in found.headers.iter() {
            let name = name.to_string();
            if name.starts_with("Nats-") {
                continue;
            }
            for value in values {
                headers.append(name.as_str(), value.as_str());
            }
        }
        if let Some(at) = at {
            let target = names::ready_subject(self.prefix(), &envelope.domain);
            super::schedule(&mut headers, at, &target);
        }
        let payload = Bytes::from(entry::encode(envelope, Some(&inline)));
        let ack = self
            .inner
            .jetstream
            .publish_with_headers(subject, headers, payload)
            .await
            .map_err(publish)?
            .await
            .map_err(publish)?;
        let stream = self.stream_no_info().await?;
        match stream.delete_message(found.sequence).await {
            Ok(_) => Ok(Change::Done),
            Err(_) => {
                let _ = stream.delete_message(ack.sequence).await;
                Ok(Change::Taken)
            }
        }
    }

    /// Makes a waiting or held entry due now.
    pub async fn make_due(&self, found: &Found) -> Result<Change, InspectError> {
        let Some(envelope) = &found.envelope else {
            return Ok(Change::Taken);
        };
        let envelope = Envelope {
            not_before_ms: None,
            rate_reserved: None,
            postponed: 0,
            ..envelope.clone()
        };
        let subject = names::ready_subject(self.prefix(), &envelope.domain);
        self.replace(found, &envelope, subject, None).await
    }

    /// Holds an entry until [`Queue::make_due`] releases it.
    pub async fn hold(&self, found: &Found) -> Result<Change, InspectError> {
        let Some(envelope) = &found.envelope else {
            return Ok(Change::Taken);
        };
        let subject = names::hold_subject(
            self.prefix(),
            &envelope.domain,
            &envelope.queue_id,
            found.sequence,
        );
        self.replace(found, envelope, subject, None).await
    }

    /// Removes an entry and releases its body. [`Change::Taken`] when a worker has it.
    pub async fn remove(&self, found: &Found) -> Result<Change, InspectError> {
        let stream = self.stream_no_info().await?;
        if stream.delete_message(found.sequence).await.is_err() {
            return Ok(Change::Taken);
        }
        if let Some(envelope) = &found.envelope {
            self.advance(envelope, None).await?;
        }
        Ok(Change::Done)
    }

    /// The dead letters, oldest first.
    pub async fn dead_letters(&self) -> Result<Vec<(DeadLetter, Bytes, HeaderMap)>, InspectError> {
        let Ok(stream) = self
            .inner
            .jetstream
            .get_stream_no_info(dead_letter_stream(&self.inner.config))
            .await
        else {
            return Ok(Vec::new());
        };
        let mut letters = Vec::new();
        let mut next = 1;
        while let Some(message) = next_message(&stream, ">", next).await? {
            next = message.sequence + 1;
            let (message, stored_ms) = millis(message);
            let header = |name: &str| message.headers.get(name).map(|v| v.to_string());
            letters.push((
                DeadLetter {
                    sequence: message.sequence,
                    reason: header("Postern-Dead-Reason").unwrap_or_default(),
                    subject: header("Postern-Dead-Subject").unwrap_or_default(),
                    queue_id: header("Postern-Queue-Id"),
                    stored_ms,
                },
                message.payload.clone(),
                message.headers.clone(),
            ));
        }
        Ok(letters)
    }

    /// Puts a dead letter back on its queue subject, then removes it from the dead letters.
    pub async fn retry_dead_letter(
        &self,
        letter: &DeadLetter,
        payload: Bytes,
        headers: &HeaderMap,
    ) -> Result<(), InspectError> {
        let mut kept = HeaderMap::new();
        for (name, values) in headers.iter() {
            let name = name.to_string();
            if name.starts_with("Nats-") || name.starts_with("Postern-Dead-") {
                continue;
            }
            for value in values {
                kept.append(name.as_str(), value.as_str());
            }
        }
        self.inner
            .jetstream
            .publish_with_headers(letter.subject.clone(), kept, payload)
            .await
            .map_err(publish)?
            .await
            .map_err(publish)?;
        let stream = self
            .inner
            .jetstream
            .get_stream_no_info(dead_letter_stream(&self.inner.config))
            .await
            .map_err(read)?;
        stream.delete_message(letter.sequence).await.map_err(read)?;
        Ok(())
    }
}

/// How long ago `ms` was.
pub fn age(ms: u64) -> Duration {
    Duration::from_millis(now_ms().saturating_sub(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_tokens_give_back_their_domain() {
        for domain in [
            "example.org",
            "mx-1.example.co.uk",
            "bücher.example",
            "a_b.example",
        ] {
            assert_eq!(
                domain_of_token(&entry::domain_token(domain)),
                domain.to_lowercase()
            );
        }
    }
}
