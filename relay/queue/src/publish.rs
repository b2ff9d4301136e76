//! Publishing a message's entries and knowing, before the client is answered, whether they were
//! stored.
//!
//! An acknowledgement that does not come in time leaves the outcome unknown: the entry may be
//! stored and only the acknowledgement late or lost. Such entries are published again with the
//! same `Nats-Msg-Id` for a second `ackTimeout`; JetStream stores an id once within its
//! duplicate window, so the second acknowledgement (a duplicate or not) says the entry is
//! stored, and the client gets 250. Entries still unknown after that make the message refused;
//! a clean-up in the background then removes every entry of the message that got stored: it
//! publishes a tombstone under each unknown id, whose acknowledgement names the sequence of the
//! entry (a duplicate) or of the tombstone, and deletes that sequence.

use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::context::{PublishAckFuture, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, Context};
use bytes::Bytes;
use tokio::time::timeout_at;
use tracing::{info, warn};

use super::EnqueueError;
use super::bodies::Bodies;

/// The header of a tombstone; delivery drops such entries unread.
pub const TOMBSTONE: &str = "Postern-Tombstone";

/// One entry ready to publish.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub subject: String,
    pub headers: HeaderMap,
    pub payload: Bytes,
    pub id: String,
}

/// What a message that could not be stored whole left behind.
#[derive(Debug)]
pub struct Leftovers {
    /// Sequences of the entries known to be stored.
    pub stored: Vec<u64>,
    /// Entries whose fate is unknown (the others were refused outright).
    pub unknown: Vec<Outgoing>,
}

/// Publishes every entry and waits until each is known to be stored; see the module comment.
pub async fn publish_all(
    js: &Context,
    entries: &[Outgoing],
    ack_timeout: Duration,
) -> Result<Vec<u64>, (EnqueueError, Leftovers)> {
    let mut sequences: Vec<Option<u64>> = vec![None; entries.len()];
    let mut refused = None;
    let mut deadline = Instant::now() + ack_timeout;
    let mut round = 0;
    loop {
        let pending: Vec<usize> = (0..entries.len())
            .filter(|&i| sequences[i].is_none())
            .collect();
        let mut acks = Vec::with_capacity(pending.len());
        for &i in &pending {
            acks.push((i, send(js, &entries[i]).await));
        }
        for (i, ack) in acks {
            match ack {
                // Never handed to the connection: certainly not stored.
                Err(err) => refused = Some(EnqueueError::Publish(err)),
                Ok(ack) => match timeout_at(deadline.into(), ack).await {
                    Ok(Ok(ack)) => sequences[i] = Some(ack.sequence),
                    Ok(Err(err)) if is_refusal(err.kind()) => {
                        refused = Some(EnqueueError::Publish(err.into()));
                    }
                    // Timed out or the connection broke: stored or not, nobody knows yet.
                    Ok(Err(_)) | Err(_) => {}
                },
            }
        }
        let unknown: Vec<usize> = (0..entries.len())
            .filter(|&i| sequences[i].is_none())
            .collect();
        if unknown.is_empty() {
            if round > 0 {
                info!(
                    entries = entries.len(),
                    "late acknowledgements resolved: stored"
                );
            }
            return Ok(sequences.into_iter().flatten().collect());
        }
        if refused.is_some() || round == 1 {
            let leftovers = Leftovers {
                stored: sequences.iter().flatten().copied().collect(),
                unknown: unknown.into_iter().map(|i| entries[i].clone()).collect(),
            };
            return Err((
                refused.unwrap_or(EnqueueError::AckTimeout(ack_timeout)),
                leftovers,
            ));
        }
        round += 1;
        deadline = Instant::now() + ack_timeout;
    }
}

async fn send(js: &Context, entry: &Outgoing) -> Result<PublishAckFuture, async_nats::Error> {
    let publish = PublishMessage::build()
        .payload(entry.payload.clone())
        .headers(entry.headers.clone())
        .message_id(&entry.id);
    js.send_publish(entry.subject.clone(), publish)
        .await
        .map_err(Into::into)
}

/// JetStream answered, and the answer was no: the entry is not stored.
fn is_refusal(kind: PublishErrorKind) -> bool {
    !matches!(
        kind,
        PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe
    )
}

/// Removes every entry of a refused message that got stored, then its stored body once no entry
/// can be using it. Entries known to be stored are removed before this returns, so the client
/// is answered only after; unknown entries are resolved in the background with tombstones for
/// as long as JetStream remembers their ids (`window`).
pub async fn clean_up(
    js: &Context,
    stream: &str,
    leftovers: Leftovers,
    body: Option<(Bodies, String)>,
    window: Duration,
) {
    let Leftovers { stored, unknown } = leftovers;
    let removed = delete(js, stream, &stored).await;
    if unknown.is_empty() {
        if let Some((bodies, key)) = body.filter(|_| removed) {
            bodies.remove(&key).await;
        }
        return;
    }
    let (js, stream) = (js.clone(), stream.to_string());
    tokio::spawn(async move {
        let until = Instant::now() + window;
        let mut sequences = Vec::new();
        let mut resolved = true;
        for entry in unknown {
            match tombstone(&js, &entry, until).await {
                Some(sequence) => sequences.push(sequence),
                None => resolved = false,
            }
        }
        let deleted = delete(&js, &stream, &sequences).await;
        if !resolved {
            warn!(
                "an entry of a refused message stayed unknown past the duplicate window; it may be delivered"
            );
        }
        if let Some((bodies, key)) = body.filter(|_| resolved && deleted && removed) {
            bodies.remove(&key).await;
        }
    });
}

/// Deletes entries by sequence; true when none is left.
async fn delete(js: &Context, stream: &str, sequences: &[u64]) -> bool {
    if sequences.is_empty() {
        return true;
    }
    let stream = match js.get_stream_no_info(stream).await {
        Ok(stream) => stream,
        Err(err) => {
            warn!(%err, "entries of a refused message not removed");
            return false;
        }
    };
    let mut all = true;
    for &sequence in sequences {
        // Gone already is fine: delivery dropped the tombstone first.
        if let Err(err) = stream.delete_message(sequence).await
            && !is_not_found(&err)
        {
            warn!(sequence, %err, "entry of a refused message not removed");
            all = false;
        }
    }
    all
}

/// Publishes a tombstone under the id of `entry` until it is acknowledged or `until`; returns
/// the sequence the acknowledgement names.
async fn tombstone(js: &Context, entry: &Outgoing, until: Instant) -> Option<u64> {
    let mut headers = HeaderMap::new();
    headers.insert(TOMBSTONE, "1");
    let tombstone = Outgoing {
        subject: entry.subject.clone(),
        headers,
        payload: Bytes::new(),
        id: entry.id.clone(),
    };
    while Instant::now() < until {
        if let Ok(ack) = send(js, &tombstone).await
            && let Ok(Ok(ack)) = tokio::time::timeout(Duration::from_secs(5), ack).await
        {
            return Some(ack.sequence);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    None
}

/// The server answered that there is no such message to delete.
fn is_not_found(err: &jetstream::stream::DeleteMessageError) -> bool {
    matches!(
        err.kind(),
        jetstream::stream::DeleteMessageErrorKind::JetStream(e)
            if e.error_code() == jetstream::ErrorCode::NO_MESSAGE_FOUND
                || e.error_code() == jetstream::ErrorCode::STREAM_MESSAGE_DELETE_FAILED
    )
}
