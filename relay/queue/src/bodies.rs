//! Bodies too large to travel inside a queue entry, in a stream of their own.
//!
//! A body is a run of chunks on `postern.bodies.<stream>.<key>.data`, written while the message
//! is still arriving and read back chunk by chunk with leader-served message gets: no consumer
//! per read, so the server's consumer limit never caps delivery, and no read sees a replica
//! that has not caught up.
//!
//! Next to the chunks, `postern.bodies.<stream>.<key>.refs` holds the set of live entries, one
//! per lineage (the entry for one destination domain, then each retry that replaces it):
//! lineage index → token of the entry that currently carries it. Finishing an entry removes its
//! lineage, a retry swaps in its own token; both are compare-and-set updates that succeed only
//! for the entry whose token is current. An entry processed twice (a paused worker, a lost
//! acknowledgement) therefore changes the set at most once, and the body goes when the last
//! lineage finishes, never before; the then empty set stays, so a late copy of any entry is
//! known to be stale. The stream expires everything after a TTL longer than any message lives,
//! so a crash between two steps leaks nothing for long.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use async_nats::jetstream::Context;
use async_nats::jetstream::context::{PublishAckFuture, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{self, LastRawMessageErrorKind};
use bytes::Bytes;
use postern_config::NatsConfig;
use tokio::sync::OwnedSemaphorePermit;

/// Bytes of one stored chunk.
pub const CHUNK: usize = 128 * 1024;
/// Chunks of one body written but not yet acknowledged, at most.
const IN_FLIGHT: usize = 4;
/// Compare-and-set attempts on a reference set before giving up for now.
const CAS_ATTEMPTS: usize = 64;
/// How long a chunk or a reference set may wait for JetStream. Entries have their own,
/// shorter deadline (`nats.ackTimeout`); a body that is only slow to store is waited for rather
/// than failing a message whose client waits for its reply anyway.
const STORAGE_WAIT: Duration = Duration::from_secs(60);

/// Why a body could not be stored or read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The body is not (or no longer) in the stream.
    #[error("stored body {0} is missing")]
    Missing(String),
    #[error("stored body {key}: {message}")]
    Corrupt { key: String, message: String },
    #[error("body stream: {0}")]
    Nats(async_nats::Error),
}

fn nats(err: impl Into<async_nats::Error>) -> BodyError {
    BodyError::Nats(err.into())
}

/// The body stream.
#[derive(Clone)]
pub struct Bodies {
    js: Context,
    stream: stream::Stream<()>,
    name: String,
}

impl std::fmt::Debug for Bodies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bodies")
            .field("stream", &self.name)
            .finish_non_exhaustive()
    }
}

/// Where one lineage of a stored body stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lineage {
    /// The entry holding this token is the one that carries the lineage.
    Live,
    /// Another entry of the lineage was processed already (this one is a duplicate or was
    /// superseded by a retry), or the lineage is finished.
    Stale,
    /// No record of the entries using the body: it expired, or was lost.
    Gone,
}

impl Bodies {
    /// Creates or updates the body stream.
    pub async fn provision(
        js: &Context,
        config: &NatsConfig,
        ttl: Duration,
    ) -> Result<Bodies, async_nats::Error> {
        let mut js = js.clone();
        js.set_timeout(STORAGE_WAIT);
        let name = config.body_stream.clone();
        let wanted = stream::Config {
            name: name.clone(),
            description: Some(
                "Postern bodies too large to travel inside a queue entry, and the entries using each"
                    .into(),
            ),
            subjects: vec![crate::names::body_stream_subjects(&name)],
            storage: stream::StorageType::File,
            num_replicas: config.replicas,
            max_age: ttl,
            allow_rollup: true,
            ..Default::default()
        };
        js.create_or_update_stream(wanted).await?;
        let stream = js.get_stream_no_info(&name).await?;
        Ok(Bodies { js, stream, name })
    }

    /// The body stream as it exists, changing nothing (for `postern queue`).
    pub async fn attach(js: &Context, config: &NatsConfig) -> Result<Bodies, async_nats::Error> {
        let mut js = js.clone();
        js.set_timeout(STORAGE_WAIT);
        let name = config.body_stream.clone();
        let stream = js.get_stream_no_info(&name).await?;
        Ok(Bodies { js, stream, name })
    }

    fn subject(&self, key: &str, part: &str) -> String {
        crate::names::body_subject(&self.name, key, part)
    }

    /// Starts storing the body `key`.
    pub fn upload(&self, key: &str) -> Upload {
        Upload {
            bodies: self.clone(),
            key: key.to_string(),
            acks: VecDeque::new(),
            size: 0,
        }
    }

    /// Records that `lineages` entries, with lineage indexes `0..lineages` and token `"0"`,
    /// use the body `key`.
    pub async fn register(&self, key: &str, lineages: u32) -> Result<(), BodyError> {
        let set: Refs = (0..lineages)
            .map(|l| (l, INITIAL_TOKEN.to_string()))
            .collect();
        self.write_refs(key, &set, Some(0))
            .await?
            .map_err(|_| BodyError::Corrupt {
                key: key.to_string(),
                message: "registered twice".into(),
            })
    }

    /// Where the lineage `lineage` of body `key` stands for the entry holding `token`.
    pub async fn lineage(
        &self,
        key: &str,
        lineage: u32,
        token: &str,
    ) -> Result<Lineage, BodyError> {
        Ok(match self.read_refs(key).await? {
            None => Lineage::Gone,
            Some((set, _)) if set.get(&lineage).is_some_and(|t| t == token) => Lineage::Live,
            Some(_) => Lineage::Stale,
        })
    }

    /// Moves lineage `lineage` from the entry holding `token` to the entry holding `next`, or
    /// finishes it when `next` is `None`; the last lineage to finish removes the body. Returns
    /// [`Lineage::Stale`] or [`Lineage::Gone`], changing nothing, when `token` is not current:
    /// then another processing of the same entry already did this.
    pub async fn advance(
        &self,
        key: &str,
        lineage: u32,
        token: &str,
        next: Option<&str>,
    ) -> Result<Lineage, BodyError> {
        for _ in 0..CAS_ATTEMPTS {
            let Some((mut set, sequence)) = self.read_refs(key).await? else {
                return Ok(Lineage::Gone);
            };
            if set.get(&lineage).is_none_or(|t| t != token) {
                return Ok(Lineage::Stale);
            }
            match next {
                Some(next) => {
                    set.insert(lineage, next.to_string());
                }
                None => {
                    set.remove(&lineage);
                }
            }
            if self.write_refs(key, &set, Some(sequence)).await?.is_ok() {
                if set.is_empty() {
                    // The last lineage: the chunks go. The empty set stays until the stream's
                    // TTL, so a stray copy of any entry of the message is known to be stale.
                    self.purge(&self.subject(key, "data")).await;
                }
                return Ok(Lineage::Live);
            }
            // Another lineage changed the set meanwhile: read it again.
            tokio::time::sleep(jitter()).await;
        }
        Err(BodyError::Corrupt {
            key: key.to_string(),
            message: "reference set kept changing".into(),
        })
    }

    /// The reference set and its stream sequence, `None` when there is none.
    async fn read_refs(&self, key: &str) -> Result<Option<(Refs, u64)>, BodyError> {
        match self
            .stream
            .get_last_raw_message_by_subject(&self.subject(key, "refs"))
            .await
        {
            Ok(message) => {
                let set = serde_json::from_slice::<Refs>(&message.payload).map_err(|e| {
                    BodyError::Corrupt {
                        key: key.to_string(),
                        message: format!("reference set: {e}"),
                    }
                })?;
                Ok(Some((set, message.sequence)))
            }
            Err(err) if err.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(err) => Err(nats(err)),
        }
    }

    /// Writes the set if the subject's last sequence is still `expected` (0: nothing yet);
    /// `Ok(Err(()))` when it is not. The write replaces the previous set (a rollup).
    async fn write_refs(
        &self,
        key: &str,
        set: &Refs,
        expected: Option<u64>,
    ) -> Result<Result<(), ()>, BodyError> {
        let payload = serde_json::to_vec(set).unwrap_or_default();
        let mut publish = PublishMessage::build()
            .payload(Bytes::from(payload))
            .header("Nats-Rollup", "sub");
        if let Some(expected) = expected {
            publish = publish.expected_last_subject_sequence(expected);
        }
        let ack = self
            .js
            .send_publish(self.subject(key, "refs"), publish)
            .await
            .map_err(nats)?;
        match ack.await {
            Ok(_) => Ok(Ok(())),
            Err(err) if err.kind() == PublishErrorKind::WrongLastSequence => Ok(Err(())),
            Err(err) => Err(nats(err)),
        }
    }

    /// Reads the body `key`, which holds `size` bytes, chunk by chunk.
    pub fn reader(&self, key: &str, size: u64) -> BodyReader {
        BodyReader {
            stream: self.stream.clone(),
            subject: self.subject(key, "data"),
            key: key.to_string(),
            next_sequence: 1,
            remaining: size,
        }
    }

    /// Removes a body and its reference set, best effort.
    pub async fn remove(&self, key: &str) {
        self.purge(&crate::names::body_subjects(&self.name, key))
            .await;
    }

    async fn purge(&self, filter: &str) {
        if let Err(err) = self.stream.purge().filter(filter).await {
            tracing::warn!(%filter, %err, "stored body not removed; it expires with the stream's TTL");
        }
    }
}

/// The token of every lineage's first entry; retries get fresh ones.
pub const INITIAL_TOKEN: &str = "0";

/// Lineage index → token of the entry carrying it.
type Refs = BTreeMap<u32, String>;

/// A short random pause, so workers racing on one set do not retry in lockstep.
fn jitter() -> Duration {
    Duration::from_millis(u64::from(ulid::Ulid::new().random() as u8 % 8) + 1)
}

/// A body being stored. Chunks are written as they come, a few at a time ahead of their
/// acknowledgements; a budget reservation handed in with a chunk is held until the chunk is
/// acknowledged.
pub struct Upload {
    bodies: Bodies,
    key: String,
    acks: VecDeque<(PublishAckFuture, Option<OwnedSemaphorePermit>)>,
    size: u64,
}

impl std::fmt::Debug for Upload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upload")
            .field("key", &self.key)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl Upload {
    /// The body's key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Writes one chunk (at most [`CHUNK`] bytes for the reader's sake, but any size works).
    pub async fn write(
        &mut self,
        chunk: Bytes,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Result<(), BodyError> {
        if chunk.is_empty() {
            return Ok(());
        }
        while self.acks.len() >= IN_FLIGHT {
            self.settle_one().await?;
        }
        self.size += chunk.len() as u64;
        let ack = self
            .bodies
            .js
            .send_publish(
                self.bodies.subject(&self.key, "data"),
                PublishMessage::build().payload(chunk),
            )
            .await
            .map_err(nats)?;
        self.acks.push_back((ack, permit));
        Ok(())
    }

    async fn settle_one(&mut self) -> Result<(), BodyError> {
        if let Some((ack, _permit)) = self.acks.pop_front() {
            ack.await.map_err(nats)?;
        }
        Ok(())
    }

    /// Waits until every chunk is stored; returns the body's size.
    pub async fn finish(&mut self) -> Result<u64, BodyError> {
        while !self.acks.is_empty() {
            self.settle_one().await?;
        }
        Ok(self.size)
    }

    /// Gives up: whatever was stored is removed.
    pub async fn abort(self) {
        let Upload { bodies, key, .. } = self;
        bodies.remove(&key).await;
    }
}

/// Reads a stored body chunk by chunk.
#[derive(Clone)]
pub struct BodyReader {
    stream: stream::Stream<()>,
    subject: String,
    key: String,
    next_sequence: u64,
    remaining: u64,
}

impl std::fmt::Debug for BodyReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodyReader")
            .field("key", &self.key)
            .field("remaining", &self.remaining)
            .finish_non_exhaustive()
    }
}

impl BodyReader {
    /// The next chunk, `None` after the last.
    pub async fn next(&mut self) -> Result<Option<Bytes>, BodyError> {
        if self.remaining == 0 {
            return Ok(None);
        }
        let message = self
            .stream
            .get_first_raw_message_by_subject(&self.subject, self.next_sequence)
            .await
            .map_err(|err| match err.kind() {
                LastRawMessageErrorKind::NoMessageFound => BodyError::Missing(self.key.clone()),
                _ => nats(err),
            })?;
        let length = message.payload.len() as u64;
        if length > self.remaining || length == 0 {
            return Err(BodyError::Corrupt {
                key: self.key.clone(),
                message: format!("a chunk of {length} bytes where {} remain", self.remaining),
            });
        }
        self.remaining -= length;
        self.next_sequence = message.sequence + 1;
        Ok(Some(message.payload))
    }
}
