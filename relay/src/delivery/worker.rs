//! The delivery worker: pulls entries, attempts them, and settles each recipient's outcome
//! (delivered, bounced, or requeued for a retry) before acknowledging the entry.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use async_nats::jetstream::{self, AckKind};
use futures::StreamExt;
use postern_config::{Config, DeliveryConfig};
use postern_smtp::{Reply, Status};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, error, info, info_span, warn};

use super::dsn::{self, Action, ReportedRecipient};
use super::next_hop::{NextHops, Plan, RecipientResult, SetupError};
use super::settle::{self, History, RetryPolicy, Settlement};
use crate::metrics::Metrics;
use postern_queue::destination::{Destination, Destinations, Lease, Limits, Signal, Transition};
use postern_queue::entry::{self, EntryError, Envelope, LastReply};
use postern_queue::events::{Event, Kind, TlsDetails};
use postern_queue::suppression::SuppressionList;
use postern_smtp::date::rfc3339_ms;

use crate::events::Events;
use postern_queue::{BodyError, BodyRef, Content, EnqueueError, Lineage, Queue, TOMBSTONE, now_ms};

/// Entries fetched in one pull request, at most.
const MAX_BATCH: usize = 64;

/// A delivery process's worker.
#[derive(Debug, Clone)]
pub struct Worker {
    queue: Queue,
    config: Arc<DeliveryConfig>,
    hostname: String,
    hops: NextHops,
    metrics: Arc<Metrics>,
    /// The suppression list and the statuses that add to it, when it is on.
    suppression: Option<(Arc<SuppressionList>, Arc<[String]>)>,
    /// RCPT consulted the list already (`action: reject`), so first attempts need not.
    checked_at_rcpt: bool,
    events: Events,
}

impl Worker {
    pub fn new(config: &Config, queue: Queue, metrics: Arc<Metrics>) -> Result<Worker, SetupError> {
        let wanted = &config.suppression;
        let suppression = wanted.enabled.then(|| {
            let list = SuppressionList::new(queue.clone(), wanted.expiry.get());
            (Arc::new(list), wanted.statuses.clone().into())
        });
        Ok(Worker {
            events: Events::new(config, &queue, metrics.clone()),
            hops: NextHops::new(config, queue.clone(), metrics.clone())?,
            queue,
            config: Arc::new(config.delivery.clone()),
            hostname: config.hostname.clone(),
            metrics,
            suppression,
            checked_at_rcpt: config.suppression.checked_at_rcpt(),
        })
    }

    /// Delivers until `shutdown` fires, then lets attempts in flight finish within `grace`.
    pub async fn run(self, shutdown: CancellationToken, grace: Duration) {
        let Some((consumer, destinations)) = self.wait_for_queue(&shutdown).await else {
            return;
        };
        // Attempts hold an attempt permit; entries waiting for their destination's connection
        // hold only an intake permit, so they never keep a healthy destination's mail waiting.
        let attempts = Arc::new(Semaphore::new(self.config.concurrency));
        let intake = Arc::new(Semaphore::new(INTAKE_PER_ATTEMPT * self.config.concurrency));
        let tracker = TaskTracker::new();
        let in_flight = InFlight::default();
        tokio::spawn(self.clone().report_counts(
            consumer.clone(),
            destinations.clone(),
            shutdown.clone(),
        ));
        // TLS report counts go on until the last attempt is done, then are stored once more.
        let reports_stop = CancellationToken::new();
        let reports = self
            .hops
            .tls_reports()
            .map(|reports| tokio::spawn(reports.run(reports_stop.clone())));
        info!(consumer = %self.config.consumer, concurrency = self.config.concurrency, "delivery started");
        if let Some(checks) = self.hops.start_up_checks() {
            tokio::spawn(checks);
        }
        loop {
            let first = tokio::select! {
                () = shutdown.cancelled() => break,
                permit = intake.clone().acquire_owned() => match permit { Ok(p) => p, Err(_) => break },
            };
            let mut batch_permits = vec![first];
            while batch_permits.len() < MAX_BATCH {
                match intake.clone().try_acquire_owned() {
                    Ok(permit) => batch_permits.push(permit),
                    Err(_) => break,
                }
            }
            let batch = consumer
                .batch()
                .max_messages(batch_permits.len())
                .expires(Duration::from_secs(1))
                .messages()
                .await;
            let mut messages = match batch {
                Ok(messages) => messages,
                Err(err) => {
                    warn!(%err, "fetching from the queue failed");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            // Everything fetched is started at once, so nothing waits unstarted at shutdown.
            while let Some(message) = messages.next().await {
                let Ok(message) = message else { break };
                let Some(permit) = batch_permits.pop() else {
                    break;
                };
                let worker = self.clone();
                let message = Arc::new(message);
                let held = in_flight.hold(message.clone());
                let gate = Gate {
                    destinations: destinations.clone(),
                    attempts: attempts.clone(),
                    shutdown: shutdown.clone(),
                };
                tracker.spawn(async move {
                    worker.handle(message, &gate).await;
                    drop(held);
                    drop(permit);
                });
            }
        }
        tracker.close();
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            // Released now, another process takes them at once instead of after ackWait.
            let released = in_flight.release().await;
            warn!(
                remaining = tracker.len(),
                released, "shutdown grace elapsed; attempts in flight released to other workers"
            );
        }
        reports_stop.cancel();
        if let Some(reports) = reports {
            let _ = tokio::time::timeout(Duration::from_secs(5), reports).await;
        }
        info!("delivery stopped");
    }

    /// Waits until the queue is provisioned, then opens the consumer and the destination state.
    async fn wait_for_queue(
        &self,
        shutdown: &CancellationToken,
    ) -> Option<(jetstream::consumer::PullConsumer, Destinations)> {
        let consumer = self.wait_for_consumer(shutdown).await?;
        loop {
            match Destinations::start(&self.queue, &self.config, shutdown.clone()).await {
                Ok(destinations) => return Some((consumer, destinations)),
                Err(err) => warn!(%err, "destination state not ready"),
            }
            tokio::select! {
                () = shutdown.cancelled() => return None,
                () = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
        }
    }

    async fn wait_for_consumer(
        &self,
        shutdown: &CancellationToken,
    ) -> Option<jetstream::consumer::PullConsumer> {
        loop {
            if self.queue.is_ready() {
                match self
                    .queue
                    .consumer(
                        &self.config.consumer,
                        self.config.ack_wait.get(),
                        self.config.max_ack_pending,
                        2 * self.config.max_deliveries,
                    )
                    .await
                {
                    Ok(consumer) => return Some(consumer),
                    Err(err) => warn!(%err, "delivery consumer not ready"),
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return None,
                () = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
        }
    }

    async fn handle(&self, message: Arc<jetstream::Message>, gate: &Gate) {
        if message
            .headers
            .as_ref()
            .is_some_and(|h| h.get(TOMBSTONE).is_some())
        {
            // Left by ingress while it removed a message it refused; never mail.
            let _ = message.ack_with(AckKind::Term).await;
            return;
        }
        let (envelope, inline) = match entry::decode(&message.payload) {
            Ok((envelope, inline)) => (envelope, message.payload.slice_ref(inline)),
            Err(err @ EntryError::Version(_)) => {
                // A newer Postern wrote it (a rolling upgrade): leave it for a newer worker.
                warn!(%err, subject = %message.subject, "queue entry left for a newer worker");
                let _ = message
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(60))))
                    .await;
                return;
            }
            Err(err) => {
                self.dead_letter(&message, &format!("undecodable entry: {err}"))
                    .await;
                return;
            }
        };
        let delivered = message.info().map_or(1, |info| info.delivered);
        if delivered > self.config.max_deliveries {
            let reason = format!("handed to workers {delivered} times without an outcome");
            if envelope.sender.is_empty() {
                // Nobody to tell: set aside for an operator.
                self.dead_letter(&message, &reason).await;
                return;
            }
            match self.give_up(&envelope, inline, &reason).await {
                Ok(()) => {
                    let _ = message.ack_with(AckKind::Term).await;
                }
                Err(err) => {
                    warn!(queue_id = %envelope.queue_id, %err, "bounce not queued; the entry stays");
                    let _ = message
                        .ack_with(AckKind::Nak(Some(Duration::from_secs(30))))
                        .await;
                }
            }
            return;
        }
        let now = now_ms();
        if let Some(not_before) = envelope.not_before_ms.filter(|t| *t > now) {
            let _ = message
                .ack_with(AckKind::Nak(Some(Duration::from_millis(not_before - now))))
                .await;
            return;
        }
        let span = info_span!("delivery.attempt", queue_id = %envelope.queue_id, domain = %envelope.domain, attempt = envelope.attempts + 1);
        let keepalive = tokio::spawn({
            let message = message.clone();
            let every = self.config.ack_wait.get() / 3;
            async move {
                loop {
                    tokio::time::sleep(every).await;
                    let _ = message.ack_with(AckKind::Progress).await;
                }
            }
        });
        let handled = self
            .admit_and_process(&message, &envelope, inline, gate)
            .instrument(span)
            .await;
        keepalive.abort();
        match handled {
            Handled::Settled => {
                if let Err(err) = message.double_ack().await {
                    warn!(queue_id = %envelope.queue_id, %err, "acknowledgement failed; the entry may be delivered again");
                }
            }
            Handled::Released => {
                let _ = message.ack_with(AckKind::Nak(None)).await;
            }
            Handled::Failed(err) => {
                warn!(queue_id = %envelope.queue_id, %err, "outcome not recorded; the entry will be attempted again");
                let _ = message
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(30))))
                    .await;
            }
        }
    }

    /// Lets the entry through its destination's backoff, rate and connection limit, then
    /// attempts it and records what the attempt said about the destination. An entry its
    /// destination cannot take now is put back to wait, without an attempt.
    async fn admit_and_process(
        &self,
        message: &jetstream::Message,
        envelope: &Envelope,
        inline: bytes::Bytes,
        gate: &Gate,
    ) -> Handled {
        let mut plan = self.hops.plan(envelope).await;
        let mut admitted = None;
        if let Plan::Go(hop) = &mut plan {
            let destination = &hop.destination;
            let now = now_ms();
            if let Some(until) = gate.destinations.backoff(destination, now) {
                let at = until + jitter_ms(BACKOFF_SPREAD);
                return self
                    .postpone(message, envelope, inline, at, None, Postponed::Backoff)
                    .await;
            }
            let limits = gate.destinations.limits(destination, now);
            if envelope.rate_reserved.as_deref() != Some(destination.id()) {
                match gate.destinations.reserve(destination, &limits, now).await {
                    Ok(at) if at > now + RATE_SLACK_MS => {
                        let reserved = Some(destination.id().to_string());
                        return self
                            .postpone(message, envelope, inline, at, reserved, Postponed::Rate)
                            .await;
                    }
                    Ok(_) => {}
                    Err(err) => {
                        warn!(destination = %destination.name, %err, "rate not reserved; the entry waits a moment");
                        let at = now + 1_000 + jitter_ms(1_000);
                        return self
                            .postpone(message, envelope, inline, at, None, Postponed::Busy)
                            .await;
                    }
                }
            }
            let lease = match self.wait_for_lease(destination, &limits, gate).await {
                Leased::Got(lease) => lease,
                Leased::Busy => {
                    let pace = gate.destinations.pace_at_least(destination);
                    let wait = busy_wait_ms(envelope.postponed, pace);
                    let at = now_ms() + wait / 2 + jitter_ms(wait);
                    return self
                        .postpone(message, envelope, inline, at, None, Postponed::Busy)
                        .await;
                }
                Leased::Shutdown => return Handled::Released,
            };
            hop.limits = limits;
            admitted = Some((destination.clone(), lease));
        }
        let Ok(_permit) = gate.attempts.acquire().await else {
            return Handled::Released;
        };
        let started = Instant::now();
        if let Some((destination, _)) = &admitted {
            gate.destinations.begins(destination);
        }
        let processed = self.process(envelope, inline, &plan).await;
        if let Some((destination, _)) = &admitted {
            gate.destinations.timed(destination, started.elapsed());
        }
        match processed {
            Ok(signal) => {
                if let (Some((destination, _)), Some(signal)) = (&admitted, signal) {
                    let transition = gate
                        .destinations
                        .record(destination, &signal, now_ms())
                        .await;
                    match transition {
                        Some(Transition::BackedOff) => {
                            self.metrics.destination_backoffs.inc();
                        }
                        Some(Transition::SlowedDown) => {
                            self.metrics.destination_slowdowns.inc();
                        }
                        Some(Transition::Recovered) | None => {}
                    }
                }
                Handled::Settled
            }
            Err(err) => Handled::Failed(err),
        }
    }

    /// A connection lease of `destination`: at once, or after waiting for one without holding
    /// an attempt permit, as long as few others of this process wait for it too.
    async fn wait_for_lease(
        &self,
        destination: &Destination,
        limits: &Limits,
        gate: &Gate,
    ) -> Leased {
        let destinations = &gate.destinations;
        match destinations.lease(destination, limits).await {
            Ok(Some(lease)) => return Leased::Got(lease),
            Ok(None) => {}
            Err(err) => {
                warn!(destination = %destination.name, %err, "connection lease not taken");
                return Leased::Busy;
            }
        }
        let room = destinations.park_capacity(
            destination,
            limits,
            PARK_AT_MOST,
            INTAKE_PER_ATTEMPT * self.config.concurrency,
        );
        let Some(_parked) = destinations.park(destination, room) else {
            return Leased::Busy;
        };
        let until = Instant::now() + PARK_AT_MOST;
        while Instant::now() < until {
            tokio::select! {
                () = gate.shutdown.cancelled() => return Leased::Shutdown,
                () = destinations.lease_freed(destination, LEASE_POLL) => {}
            }
            match destinations.lease(destination, limits).await {
                Ok(Some(lease)) => return Leased::Got(lease),
                Ok(None) => {}
                Err(_) => return Leased::Busy,
            }
        }
        Leased::Busy
    }

    /// Puts the entry back to wait until `at` without an attempt, then removes it.
    async fn postpone(
        &self,
        message: &jetstream::Message,
        envelope: &Envelope,
        inline: bytes::Bytes,
        at: u64,
        rate_reserved: Option<String>,
        why: Postponed,
    ) -> Handled {
        let content = match self.queue.content(envelope, inline) {
            Ok(content) => content,
            Err(err) => return Handled::Failed(err),
        };
        let next = Envelope {
            not_before_ms: Some(at),
            rate_reserved,
            postponed: match why {
                Postponed::Busy => envelope.postponed.saturating_add(1),
                Postponed::Backoff | Postponed::Rate => envelope.postponed,
            },
            ..envelope.clone()
        };
        // The same entry put back twice (two workers, a redelivery) is one entry.
        let sequence = message.info().map_or(0, |info| info.stream_sequence);
        let id = format!(
            "{}.{}.seq{sequence}",
            envelope.queue_id,
            entry::domain_token(&envelope.domain)
        );
        match self.reschedule(envelope, next, &content, id).await {
            Ok(()) => {
                debug!(queue_id = %envelope.queue_id, reason = why.label(), wait_ms = at.saturating_sub(now_ms()), "postponed");
                self.metrics.postponed(why.label());
                Handled::Settled
            }
            Err(err) => Handled::Failed(err),
        }
    }

    /// Reads how much of the queue is ready, in flight, waiting and dead into the metrics, every
    /// few seconds until `shutdown`.
    async fn report_counts(
        self,
        mut consumer: jetstream::consumer::PullConsumer,
        destinations: Destinations,
        shutdown: CancellationToken,
    ) {
        loop {
            match self.queue.counts(&mut consumer).await {
                Ok(counts) => self.metrics.queue(&counts),
                Err(err) => debug!(%err, "reading the queue's counts failed"),
            }
            self.metrics
                .destinations_in_backoff
                .set(i64::try_from(destinations.in_backoff(now_ms())).unwrap_or(i64::MAX));
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(COUNTS_EVERY) => {}
            }
        }
    }

    /// One event per recipient of a dead letter, or one without recipients when its envelope
    /// cannot be read.
    fn emit_dead_letter(&self, message: &jetstream::Message, reason: &str) {
        let dead = |queue_id: &str, sender: &str| Event {
            reason: Some(reason.to_string()),
            ..Event::new(Kind::DeadLettered, queue_id, sender)
        };
        match entry::decode(&message.payload) {
            Ok((envelope, _)) => {
                for recipient in &envelope.recipients {
                    self.events
                        .emit(dead(&envelope.queue_id, &envelope.sender).recipient(recipient));
                }
            }
            Err(_) => {
                let queue_id = message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("Postern-Queue-Id"))
                    .map(|v| v.to_string())
                    .unwrap_or_default();
                self.events.emit(dead(&queue_id, ""));
            }
        }
    }

    /// Moves an entry no worker can settle to the dead-letter stream, then removes it; if that
    /// fails it stays, to be tried again.
    async fn dead_letter(&self, message: &jetstream::Message, reason: &str) {
        let moved = self
            .queue
            .dead_letter(
                &message.subject,
                message.headers.as_ref(),
                message.payload.clone(),
                reason,
            )
            .await;
        match moved {
            Ok(()) => {
                error!(subject = %message.subject, reason, "queue entry moved to the dead-letter stream");
                self.metrics.dead_letter(reason_label(reason));
                self.emit_dead_letter(message, reason);
                let _ = message.ack_with(AckKind::Term).await;
            }
            Err(err) => {
                warn!(subject = %message.subject, %err, reason, "dead-letter failed; the entry stays");
                let _ = message
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(30))))
                    .await;
            }
        }
    }

    /// Attempts one entry and records the outcome. An error means nothing durable happened
    /// that the entry's next processing would not redo: the entry is attempted again.
    async fn process(
        &self,
        envelope: &Envelope,
        inline: bytes::Bytes,
        plan: &Plan,
    ) -> Result<Option<Signal>, EnqueueError> {
        let age = Duration::from_millis(now_ms().saturating_sub(envelope.received_at_ms));
        let expired = age >= self.config.retry.max_age.get();
        // A stored body's lineage says whether this entry still carries it.
        match self.queue.lineage(envelope).await {
            Ok(None | Some(Lineage::Live | Lineage::Gone)) => {}
            Ok(Some(Lineage::Stale)) => {
                info!(queue_id = %envelope.queue_id, "entry already processed elsewhere; dropped");
                return Ok(None);
            }
            Err(_) if expired => {
                let content = self.queue.content(envelope, inline)?;
                return self
                    .unreadable(envelope, &content, true)
                    .await
                    .map(|()| None);
            }
            Err(err) => return Err(err),
        }
        let mut content = self.queue.content(envelope, inline)?;
        if let Err(err) = content.open().await {
            return match err {
                // The entry carries the body, but it is not there: it can never be sent.
                BodyError::Missing(_) | BodyError::Corrupt { .. } => {
                    error!(queue_id = %envelope.queue_id, %err, "message content lost from the queue");
                    self.unreadable(envelope, &content, false)
                        .await
                        .map(|()| None)
                }
                BodyError::Nats(_) if expired => self
                    .unreadable(envelope, &content, true)
                    .await
                    .map(|()| None),
                BodyError::Nats(_) => Err(err.into()),
            };
        }
        let due = envelope.not_before_ms.unwrap_or(envelope.received_at_ms);
        let lag = Duration::from_millis(now_ms().saturating_sub(due));
        self.metrics
            .delivery_queue_lag_seconds
            .observe(lag.as_secs_f64());
        let started = Instant::now();
        let (results, signal) = match plan {
            Plan::Go(hop) => match self.screen(envelope).await {
                (refused, None) if refused.is_empty() => {
                    self.hops.attempt(hop, envelope, &content).await
                }
                (refused, None) => (refused, None),
                (refused, Some(rest)) => {
                    let (mut results, signal) = self.hops.attempt(hop, &rest, &content).await;
                    results.extend(refused);
                    (results, signal)
                }
            },
            Plan::Decided(results) => (results.clone(), None),
        };
        self.metrics
            .delivery_attempt_seconds
            .observe(started.elapsed().as_secs_f64());
        let destination = match plan {
            Plan::Go(hop) => Some(hop.destination.name.as_str()),
            Plan::Decided(_) => None,
        };
        self.settle(envelope, &content, results, destination)
            .await?;
        Ok(signal)
    }

    /// The recipients of `envelope` on the suppression list, refused without an attempt, and,
    /// when some others are left, the envelope of those. A list that cannot be read lets the
    /// recipient be attempted. A first attempt of mail whose RCPTs were checked against the
    /// list when it was accepted is not checked again.
    async fn screen(&self, envelope: &Envelope) -> (Vec<RecipientResult>, Option<Envelope>) {
        let Some((list, _)) = &self.suppression else {
            return (Vec::new(), None);
        };
        if self.checked_at_rcpt && envelope.attempts == 0 {
            return (Vec::new(), None);
        }
        let mut refused = Vec::new();
        for rcpt in &envelope.recipients {
            match list.get(rcpt).await {
                Ok(None) => {}
                Ok(Some(entry)) => {
                    info!(queue_id = %envelope.queue_id, %rcpt, "recipient on the suppression list; not attempted");
                    refused.push(RecipientResult {
                        recipient: rcpt.clone(),
                        reply: crate::suppression::refusal(&entry),
                        host: None,
                        from_server: false,
                        dsn_passed: false,
                        tls: None,
                    });
                }
                Err(err) => {
                    warn!(queue_id = %envelope.queue_id, %rcpt, %err, "suppression list not read; recipient attempted");
                }
            }
        }
        if refused.is_empty() {
            return (refused, None);
        }
        self.metrics
            .delivery_suppressed
            .inc_by(refused.len() as u64);
        let rest: Vec<String> = envelope
            .recipients
            .iter()
            .filter(|r| !refused.iter().any(|x| &x.recipient == *r))
            .cloned()
            .collect();
        let rest = (!rest.is_empty()).then(|| Envelope {
            recipients: rest,
            ..envelope.clone()
        });
        (refused, rest)
    }

    /// Puts the recipients a server refused as unknown on the suppression list.
    async fn suppress(&self, envelope: &Envelope, bounced: &[ReportedRecipient]) {
        let Some((list, statuses)) = &self.suppression else {
            return;
        };
        for failed in bounced {
            let Some(entry) =
                crate::suppression::caused_by(failed, statuses, &envelope.queue_id, now_ms())
            else {
                continue;
            };
            match list.add(&entry).await {
                Ok(()) => {
                    info!(queue_id = %envelope.queue_id, rcpt = %entry.address, "recipient added to the suppression list");
                    self.metrics.suppression_added.inc();
                }
                Err(err) => {
                    warn!(queue_id = %envelope.queue_id, rcpt = %entry.address, %err, "recipient not added to the suppression list");
                }
            }
        }
    }

    /// Bounces every recipient of an entry no worker could settle, so its sender knows; the
    /// entry is then removed.
    async fn give_up(
        &self,
        envelope: &Envelope,
        inline: bytes::Bytes,
        reason: &str,
    ) -> Result<(), EnqueueError> {
        let content = self.queue.content(envelope, inline)?;
        let reply = Reply::new(
            554,
            Status(5, 3, 0),
            format!("Delivery given up: the message was {reason}"),
        );
        let failed = ReportedRecipient::each(&envelope.recipients, &reply, false);
        error!(queue_id = %envelope.queue_id, reason, "no worker could settle the entry; bounced to its sender");
        for _ in &failed {
            self.metrics.outcome("bounced");
        }
        self.metrics.gave_up.inc();
        self.emit_failed(envelope, Kind::Bounced, &reply);
        self.report(envelope, &content, Action::Failed, failed)
            .await?;
        self.finish(envelope).await;
        Ok(())
    }

    /// Bounces every recipient of an entry whose content cannot be read: lost from the queue,
    /// or unreadable until the message grew older than `maxAge`.
    async fn unreadable(
        &self,
        envelope: &Envelope,
        content: &Content,
        expired: bool,
    ) -> Result<(), EnqueueError> {
        let reply = if expired {
            Reply::new(
                451,
                Status(4, 3, 0),
                "The message content could not be read from the queue",
            )
        } else {
            Reply::new(
                554,
                Status(5, 3, 0),
                "The message content was lost from the queue; please send it again",
            )
        };
        if !expired {
            // A permanent failure like any other: bounced through the usual settling.
            let results = envelope
                .recipients
                .iter()
                .map(|recipient| RecipientResult {
                    recipient: recipient.clone(),
                    reply: reply.clone(),
                    host: None,
                    from_server: false,
                    dsn_passed: false,
                    tls: None,
                })
                .collect();
            return self.settle(envelope, content, results, None).await;
        }
        let failed = ReportedRecipient::each(&envelope.recipients, &reply, true);
        for _ in &failed {
            self.metrics.outcome("expired");
        }
        self.emit_failed(envelope, Kind::Expired, &reply);
        self.report(envelope, content, Action::Failed, failed)
            .await?;
        self.finish(envelope).await;
        Ok(())
    }

    /// Records every recipient's outcome durably: a retry entry for temporary failures, a
    /// bounce for permanent ones, the reports the sender asked for. Only then may the entry be
    /// acknowledged.
    async fn settle(
        &self,
        envelope: &Envelope,
        content: &Content,
        results: Vec<RecipientResult>,
        destination: Option<&str>,
    ) -> Result<(), EnqueueError> {
        let attempt = envelope.attempts + 1;
        let retry = &self.config.retry;
        let schedule: Vec<Duration> = retry.schedule.iter().map(|d| d.get()).collect();
        let policy = RetryPolicy {
            schedule: &schedule,
            max_age: retry.max_age.get(),
            delay_warning: retry.delay_warning.get(),
        };
        let history = History {
            attempt,
            received_at_ms: envelope.received_at_ms,
            delay_reported: envelope.delay_reported,
        };
        let jitter = f64::from(ulid::Ulid::new().random() as u32) / f64::from(u32::MAX);
        let settlement = settle::settle(results, history, &policy, now_ms(), jitter);
        self.log_settlement(envelope, attempt, &settlement);
        self.emit_settlement(envelope, attempt, &settlement, destination);
        if let Some(when) = settlement.retry_at {
            let reported = envelope.delay_reported || settlement.delay_report;
            self.requeue(
                envelope,
                content,
                &settlement.deferred,
                attempt,
                when,
                reported,
            )
            .await?;
        }
        if settlement.delay_report {
            let until =
                UNIX_EPOCH + Duration::from_millis(envelope.received_at_ms) + policy.max_age;
            let delayed = settlement.deferred.iter().map(reported).collect();
            self.report(envelope, content, Action::Delayed { until }, delayed)
                .await?;
        }
        if !settlement.bounced.is_empty() {
            self.suppress(envelope, &settlement.bounced).await;
            self.report(envelope, content, Action::Failed, settlement.bounced)
                .await?;
        }
        // RFC 3461 §5.2.2: a next hop that took the requests reports success itself.
        let relayed: Vec<_> = settlement
            .delivered
            .iter()
            .filter(|r| !r.dsn_passed)
            .map(reported)
            .collect();
        if !relayed.is_empty() {
            self.report(envelope, content, Action::Relayed, relayed)
                .await?;
        }
        if settlement.retry_at.is_none() {
            self.finish(envelope).await;
        }
        Ok(())
    }

    /// One delivery event per recipient.
    fn emit_settlement(
        &self,
        envelope: &Envelope,
        attempt: u32,
        settlement: &Settlement,
        destination: Option<&str>,
    ) {
        let event = |kind,
                     recipient: &str,
                     reply: &Reply,
                     host: Option<&String>,
                     tls: Option<&TlsDetails>| Event {
            message_id: envelope.message_id.clone(),
            destination: destination.map(str::to_string),
            attempt: Some(attempt),
            reply: Some(dsn::reply_text(reply)),
            remote_host: host.cloned(),
            tls: tls.cloned(),
            ..Event::new(kind, &envelope.queue_id, &envelope.sender).recipient(recipient)
        };
        // What a server said, over the session's TLS; Postern's own replies have neither.
        fn from_server(r: &RecipientResult) -> (Option<&String>, Option<&TlsDetails>) {
            let host = r.host.as_ref().filter(|_| r.from_server);
            (host, r.tls.as_ref().filter(|_| r.from_server))
        }
        for r in &settlement.delivered {
            let (host, tls) = from_server(r);
            self.events
                .emit(event(Kind::Delivered, &r.recipient, &r.reply, host, tls));
        }
        for r in &settlement.deferred {
            let (host, tls) = from_server(r);
            self.events.emit(Event {
                next_attempt: settlement.retry_at.map(rfc3339_ms),
                ..event(Kind::Deferred, &r.recipient, &r.reply, host, tls)
            });
        }
        for f in &settlement.bounced {
            let kind = if f.expired {
                Kind::Expired
            } else if f.reply.reject == Some(postern_smtp::Reject::Suppressed) {
                Kind::Suppressed
            } else {
                Kind::Bounced
            };
            let tls = f.tls.as_ref().filter(|_| f.remote_host.is_some());
            self.events.emit(event(
                kind,
                &f.recipient,
                &f.reply,
                f.remote_host.as_ref(),
                tls,
            ));
        }
    }

    /// Every recipient of `envelope` failed with `reply` without an attempt.
    fn emit_failed(&self, envelope: &Envelope, kind: Kind, reply: &Reply) {
        for recipient in &envelope.recipients {
            self.events.emit(Event {
                message_id: envelope.message_id.clone(),
                reply: Some(dsn::reply_text(reply)),
                ..Event::new(kind, &envelope.queue_id, &envelope.sender).recipient(recipient)
            });
        }
    }

    /// One log line and one count per recipient.
    fn log_settlement(&self, envelope: &Envelope, attempt: u32, settlement: &Settlement) {
        let text = |reply: &Reply| {
            String::from_utf8_lossy(&reply.to_bytes())
                .trim_end()
                .to_string()
        };
        let queue_id = &envelope.queue_id;
        for r in &settlement.delivered {
            let (host, reply) = (r.host.as_deref().unwrap_or("-"), text(&r.reply));
            info!(%queue_id, rcpt = %r.recipient, host, reply, attempt, "delivered");
            self.metrics.outcome("delivered");
            self.metrics.delivered_tls(r.tls.as_ref());
        }
        for r in &settlement.deferred {
            let (host, reply) = (r.host.as_deref().unwrap_or("-"), text(&r.reply));
            let by = if r.from_server { "server" } else { "postern" };
            info!(%queue_id, rcpt = %r.recipient, host, reply, by, attempt, "deferred");
            self.metrics.outcome("deferred");
        }
        for f in &settlement.bounced {
            let reply = text(&f.reply);
            if f.expired {
                info!(%queue_id, rcpt = %f.recipient, reply, attempt, "expired; bouncing");
                self.metrics.outcome("expired");
            } else {
                let host = f.remote_host.as_deref().unwrap_or("-");
                info!(%queue_id, rcpt = %f.recipient, host, reply, attempt, "bounced");
                self.metrics.outcome("bounced");
            }
        }
    }

    /// Publishes the retry entry for the deferred recipients and hands it the lineage.
    async fn requeue(
        &self,
        envelope: &Envelope,
        content: &Content,
        deferred: &[RecipientResult],
        attempt: u32,
        when: u64,
        delay_reported: bool,
    ) -> Result<(), EnqueueError> {
        let next = Envelope {
            recipients: deferred.iter().map(|r| r.recipient.clone()).collect(),
            attempts: attempt,
            not_before_ms: Some(when),
            delay_reported,
            dsn: envelope
                .dsn
                .only(|r| deferred.iter().any(|d| d.recipient == r)),
            rate_reserved: None,
            postponed: 0,
            last_replies: deferred
                .iter()
                .map(|r| LastReply {
                    recipient: r.recipient.clone(),
                    host: r.host.clone(),
                    reply: String::from_utf8_lossy(&r.reply.to_bytes())
                        .trim_end()
                        .to_string(),
                })
                .collect(),
            ..envelope.clone()
        };
        let id = format!(
            "{}.{}.retry{attempt}",
            envelope.queue_id,
            entry::domain_token(&envelope.domain)
        );
        self.reschedule(envelope, next, content, id).await
    }

    /// Publishes `next` to replace `envelope` (under `id` unless it uses a stored body) and
    /// hands it the lineage.
    async fn reschedule(
        &self,
        envelope: &Envelope,
        mut next: Envelope,
        content: &Content,
        id: String,
    ) -> Result<(), EnqueueError> {
        let id = match &mut next.body {
            BodyRef::Inline { .. } | BodyRef::Object { .. } => id,
            // A fresh token, and an id as unique as it: two workers that processed the same
            // entry publish two retries, and the lineage says which one counts.
            BodyRef::Stored { lineage, token, .. } => {
                *token = ulid::Ulid::new().to_string();
                format!("{}.{lineage}.{token}", envelope.queue_id)
            }
        };
        self.queue.requeue(&next, content.head(), id).await?;
        let BodyRef::Stored { token, .. } = &next.body else {
            return Ok(());
        };
        // Only now does the retry carry the lineage; until then a crash leaves this entry
        // carrying it, and the retry is found stale.
        match self.queue.advance(envelope, Some(token)).await? {
            Some(Lineage::Live) | None => {}
            Some(_) => {
                info!(queue_id = %envelope.queue_id, "entry already processed elsewhere; its retry is dropped");
            }
        }
        Ok(())
    }

    /// This lineage is done with a stored body; the last one removes it.
    async fn finish(&self, envelope: &Envelope) {
        match self.queue.advance(envelope, None).await {
            Ok(Some(Lineage::Live) | None) => {}
            Ok(Some(_)) => {
                info!(queue_id = %envelope.queue_id, "entry already processed elsewhere");
            }
            Err(err) => {
                warn!(queue_id = %envelope.queue_id, %err, "stored body not released; it expires with its stream's TTL");
            }
        }
    }

    /// Queues an RFC 3464 report to the sender about those of `recipients` it asked it for;
    /// never for the null sender.
    async fn report(
        &self,
        envelope: &Envelope,
        content: &Content,
        action: Action,
        recipients: Vec<ReportedRecipient>,
    ) -> Result<(), EnqueueError> {
        let original = || {
            let prefix = content.prefix();
            let whole = prefix.len() as u64 >= content.len();
            (prefix, whole)
        };
        let queued = dsn::queue_report(
            &self.queue,
            &self.hostname,
            envelope,
            action,
            recipients,
            original,
        )
        .await?;
        let label = vec![("action", action.word())];
        if queued.id.is_some() {
            self.metrics.delivery_reports.get_or_create(&label).inc();
        }
        if queued.not_requested > 0 {
            self.metrics
                .delivery_reports_not_requested
                .get_or_create(&label)
                .inc_by(queued.not_requested as u64);
        }
        Ok(())
    }
}

/// A recipient as a delay or success report names it.
fn reported(result: &RecipientResult) -> ReportedRecipient {
    ReportedRecipient {
        recipient: result.recipient.clone(),
        reply: result.reply.clone(),
        remote_host: result.host.clone().filter(|_| result.from_server),
        expired: false,
        tls: result.tls.clone(),
    }
}

/// Entries a process holds per attempt it may run: the rest wait for a connection of their
/// destination, without an attempt permit.
const INTAKE_PER_ATTEMPT: usize = 2;

/// How long an entry waits in a process for a connection of its destination before it is put
/// back in the queue.
const PARK_AT_MOST: Duration = Duration::from_secs(20);

/// How often an entry waiting for a connection looks whether another process gave one back.
const LEASE_POLL: Duration = Duration::from_millis(500);

/// A rate slot this close is waited for by going now.
const RATE_SLACK_MS: u64 = 20;

/// Entries of a destination in backoff come back spread over this long after it ends.
const BACKOFF_SPREAD: u64 = 5_000;

/// How long an entry whose destination had no free connection waits before it is tried
/// again: doubling with each time, from 250 ms, or from the time an attempt there takes when
/// that is longer (`pace`, seconds), up to 5 min. A slow destination's mail thus comes back
/// about when a connection can take it, not over and over before.
fn busy_wait_ms(postponed: u32, pace: Option<f64>) -> u64 {
    let pace_ms = pace.map_or(0, |p| (p * 1000.0) as u64);
    250u64
        .max(pace_ms)
        .saturating_mul(1 << postponed.min(11))
        .min(300_000)
}

/// A random delay below `max_ms`.
fn jitter_ms(max_ms: u64) -> u64 {
    (ulid::Ulid::new().random() as u64) % max_ms.max(1)
}

/// What the worker does with an entry it has handled.
enum Handled {
    /// Its outcome is recorded (or it was put back to wait): acknowledge it.
    Settled,
    /// Handed back at once for another worker (shutdown).
    Released,
    /// Nothing durable happened: it is attempted again later.
    Failed(EnqueueError),
}

/// Why an entry was put back without an attempt.
#[derive(Debug, Clone, Copy)]
enum Postponed {
    Backoff,
    Rate,
    Busy,
}

impl Postponed {
    fn label(self) -> &'static str {
        match self {
            Postponed::Backoff => "backoff",
            Postponed::Rate => "rate",
            Postponed::Busy => "busy",
        }
    }
}

enum Leased {
    Got(Lease),
    Busy,
    Shutdown,
}

/// What every entry of a running worker goes through before its attempt.
struct Gate {
    destinations: Destinations,
    attempts: Arc<Semaphore>,
    shutdown: CancellationToken,
}

/// How often a delivery process reads the queue's counts for its metrics.
const COUNTS_EVERY: Duration = Duration::from_secs(5);

/// The metric label of a dead-letter reason.
fn reason_label(reason: &str) -> &'static str {
    if reason.starts_with("undecodable") {
        "undecodable"
    } else {
        "no_outcome"
    }
}

/// Entries this process holds while their attempts run, so that shutdown can hand them back.
#[derive(Clone, Default)]
struct InFlight {
    held: Arc<std::sync::Mutex<HashMap<u64, Arc<jetstream::Message>>>>,
    next: Arc<std::sync::atomic::AtomicU64>,
}

/// One held entry; dropping it (the attempt ended) forgets it.
struct Held {
    id: u64,
    in_flight: InFlight,
}

impl InFlight {
    fn hold(&self, message: Arc<jetstream::Message>) -> Held {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.lock().insert(id, message);
        Held {
            id,
            in_flight: self.clone(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<jetstream::Message>>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// NAKs every entry still held, without delay; returns how many.
    async fn release(&self) -> usize {
        let messages: Vec<Arc<jetstream::Message>> = self.lock().drain().map(|(_, m)| m).collect();
        for message in &messages {
            let _ = message.ack_with(AckKind::Nak(None)).await;
        }
        messages.len()
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.in_flight.lock().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::busy_wait_ms;

    #[test]
    fn mail_for_a_busy_destination_comes_back_later_each_time_and_no_sooner_than_its_pace() {
        assert_eq!(busy_wait_ms(0, None), 250);
        assert_eq!(busy_wait_ms(2, Some(0.01)), 1_000);
        assert_eq!(busy_wait_ms(0, Some(5.0)), 5_000, "a 5 s destination");
        assert_eq!(busy_wait_ms(1, Some(5.0)), 10_000);
        assert_eq!(busy_wait_ms(30, Some(30.0)), 300_000, "at most 5 min");
    }
}
