//! Prometheus metrics of the ingress.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

pub type Labels = Vec<(&'static str, &'static str)>;

/// Every metric the relay exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub connections: Counter,
    pub connections_refused: Family<Labels, Counter>,
    pub sessions: Gauge,
    pub transactions: Counter,
    pub replies: Family<Labels, Counter>,
    pub messages_accepted: Counter,
    pub bytes_accepted: Counter,
    pub rejections: Family<Labels, Counter>,
    pub enqueue_failures: Family<Labels, Counter>,
    pub enqueue_seconds: Histogram,
    pub delivery_outcomes: Family<Labels, Counter>,
    pub delivery_dead_letters: Family<Labels, Counter>,
    pub delivery_attempt_seconds: Histogram,
    pub delivery_queue_lag_seconds: Histogram,
    pub pregreet: Family<Labels, Counter>,
    pub message_memory_bytes: Gauge,
    /// The queue by state (`queue::QueueCounts`), as a delivery process last read it.
    pub queue_entries: Family<Labels, Gauge>,
    /// Seconds the oldest ready entry has been due.
    pub queue_oldest_ready_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Entries put back without an attempt, by why (`backoff`, `rate`, `busy`).
    pub delivery_postponed: Family<Labels, Counter>,
    pub destination_backoffs: Counter,
    /// Entries no worker could settle, bounced to their sender instead of set aside.
    pub gave_up: Counter,
    /// Delivery status notifications queued, by action.
    pub delivery_reports: Family<Labels, Counter>,
    /// Recipients left out of a report because their NOTIFY did not ask for it, by action.
    pub delivery_reports_not_requested: Family<Labels, Counter>,
    /// Recipients not attempted because they are on the suppression list.
    pub delivery_suppressed: Counter,
    /// Recipients this process put on the suppression list.
    pub suppression_added: Counter,
    /// Delivery events stored in the events stream, by kind.
    pub events_published: Family<Labels, Counter>,
    /// Delivery events that could not be stored.
    pub events_dropped: Counter,
    pub destination_slowdowns: Counter,
    pub destinations_in_backoff: Gauge,
    /// MTA-STS policy fetches, by result (`ok`, `invalid`, or why it failed).
    pub mta_sts_fetches: Family<Labels, Counter>,
    /// Deliveries planned under an MTA-STS policy, by mode.
    pub mta_sts_applied: Family<Labels, Counter>,
    /// Deliveries for which an MX host was not in the MTA-STS policy, by mode (`enforce`: not
    /// tried; `testing`: tried and reported).
    pub mta_sts_mx_not_listed: Family<Labels, Counter>,
    /// 1 while DNSSEC answers validate and DANE is applied, 0 while it is off.
    pub dane_enabled: Gauge,
    /// MX hosts looked at for DANE, by result.
    pub dane_hosts: Family<Labels, Counter>,
    /// Webhook POSTs, by webhook and result (`accepted`, `refused`, `failed`).
    pub webhook_posts: Family<Labels, Counter>,
    /// Events by webhook and result (`sent`, or `expired`: dropped after `retryFor`).
    pub webhook_events: Family<Labels, Counter>,
    /// TLS reports, by result (`sent`, `failed`, `no_destination`).
    pub tls_reports: Family<Labels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("postern");
        let metrics = Metrics {
            connections: Counter::default(),
            connections_refused: Family::default(),
            sessions: Gauge::default(),
            transactions: Counter::default(),
            replies: Family::default(),
            messages_accepted: Counter::default(),
            bytes_accepted: Counter::default(),
            rejections: Family::default(),
            enqueue_failures: Family::default(),
            enqueue_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            delivery_outcomes: Family::default(),
            delivery_dead_letters: Family::default(),
            delivery_attempt_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 18)),
            delivery_queue_lag_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 24)),
            pregreet: Family::default(),
            message_memory_bytes: Gauge::default(),
            queue_entries: Family::default(),
            queue_oldest_ready_seconds: Gauge::default(),
            delivery_postponed: Family::default(),
            destination_backoffs: Counter::default(),
            gave_up: Counter::default(),
            delivery_reports: Family::default(),
            delivery_reports_not_requested: Family::default(),
            delivery_suppressed: Counter::default(),
            suppression_added: Counter::default(),
            events_published: Family::default(),
            events_dropped: Counter::default(),
            destination_slowdowns: Counter::default(),
            destinations_in_backoff: Gauge::default(),
            mta_sts_fetches: Family::default(),
            mta_sts_applied: Family::default(),
            mta_sts_mx_not_listed: Family::default(),
            dane_enabled: Gauge::default(),
            dane_hosts: Family::default(),
            webhook_posts: Family::default(),
            webhook_events: Family::default(),
            tls_reports: Family::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "ingress_connections",
            "SMTP connections accepted",
            metrics.connections.clone(),
        );
        r.register(
            "ingress_connections_refused",
            "SMTP connections refused by a cap",
            metrics.connections_refused.clone(),
        );
        r.register(
            "ingress_pregreet",
            "Clients that talked before the greeting, by what was done",
            metrics.pregreet.clone(),
        );
        r.register(
            "ingress_message_memory_bytes",
            "Bytes of the message memory budget in use",
            metrics.message_memory_bytes.clone(),
        );
        r.register(
            "ingress_sessions",
            "SMTP sessions open now",
            metrics.sessions.clone(),
        );
        r.register(
            "ingress_transactions",
            "Messages received to their end of data and handed to the queue",
            metrics.transactions.clone(),
        );
        r.register(
            "ingress_replies",
            "SMTP replies sent, by class",
            metrics.replies.clone(),
        );
        r.register(
            "ingress_messages_accepted",
            "Messages queued and answered 250",
            metrics.messages_accepted.clone(),
        );
        r.register(
            "ingress_bytes_accepted",
            "Bytes of message bodies queued",
            metrics.bytes_accepted.clone(),
        );
        r.register(
            "ingress_rejections",
            "Refused commands and messages, by reason",
            metrics.rejections.clone(),
        );
        r.register(
            "ingress_enqueue_failures",
            "Messages answered 451 because the queue failed, by cause",
            metrics.enqueue_failures.clone(),
        );
        r.register(
            "ingress_enqueue_seconds",
            "Time from end of data to JetStream acknowledgement",
            metrics.enqueue_seconds.clone(),
        );
        r.register(
            "delivery_outcomes",
            "Recipient outcomes of delivery attempts: delivered, bounced, deferred, expired",
            metrics.delivery_outcomes.clone(),
        );
        r.register(
            "queue_entries",
            "Queue entries by state: ready (due, not handed out), in_flight, waiting (retries scheduled for later), dead_letter",
            metrics.queue_entries.clone(),
        );
        r.register(
            "queue_oldest_ready_seconds",
            "How long the oldest entry due for delivery has been waiting for a worker",
            metrics.queue_oldest_ready_seconds.clone(),
        );
        r.register(
            "delivery_dead_letters",
            "Queue entries moved to the dead-letter stream, by reason: undecodable, no_outcome",
            metrics.delivery_dead_letters.clone(),
        );
        r.register(
            "delivery_attempt_seconds",
            "Time of one delivery attempt, connection to last reply",
            metrics.delivery_attempt_seconds.clone(),
        );
        r.register(
            "delivery_queue_lag_seconds",
            "Time from when an entry became due (accepted, or its retry time) to its attempt",
            metrics.delivery_queue_lag_seconds.clone(),
        );
        r.register(
            "delivery_postponed",
            "Queue entries put back to wait without an attempt, by reason: backoff (destination unreachable), rate, busy (no free connection)",
            metrics.delivery_postponed.clone(),
        );
        r.register(
            "delivery_given_up",
            "Entries handed to workers delivery.maxDeliveries times without an outcome, bounced to their sender (those from the null sender become dead letters)",
            metrics.gave_up.clone(),
        );
        r.register(
            "delivery_reports",
            "Delivery status notifications queued to senders, by action: failed, delayed, relayed",
            metrics.delivery_reports.clone(),
        );
        r.register(
            "delivery_reports_not_requested",
            "Recipients left out of a report because their NOTIFY did not ask for it, by action",
            metrics.delivery_reports_not_requested.clone(),
        );
        r.register(
            "delivery_suppressed",
            "Recipients not attempted because they are on the suppression list (bounced to their sender)",
            metrics.delivery_suppressed.clone(),
        );
        r.register(
            "suppression_added",
            "Recipients put on the suppression list after a server refused them as unknown",
            metrics.suppression_added.clone(),
        );
        r.register(
            "events_published",
            "Delivery events stored in the events stream, by kind",
            metrics.events_published.clone(),
        );
        r.register(
            "events_dropped",
            "Delivery events that could not be stored in the events stream (NATS away or slow)",
            metrics.events_dropped.clone(),
        );
        r.register(
            "delivery_destination_backoffs",
            "Times a destination was put into backoff by this process",
            metrics.destination_backoffs.clone(),
        );
        r.register(
            "delivery_destination_slowdowns",
            "Requests to slow down (421 4.7.28, 451 4.7.650 ...) that lowered a destination's limits",
            metrics.destination_slowdowns.clone(),
        );
        r.register(
            "delivery_destinations_in_backoff",
            "Destinations in backoff now, as this process sees them",
            metrics.destinations_in_backoff.clone(),
        );
        r.register(
            "mta_sts_fetches",
            "MTA-STS policy fetches by result: ok, invalid, dns, connect, tls, http, status, content_type, too_large, not_text, timeout",
            metrics.mta_sts_fetches.clone(),
        );
        r.register(
            "mta_sts_applied",
            "Deliveries to MX hosts planned under an MTA-STS policy, by mode: enforce, testing",
            metrics.mta_sts_applied.clone(),
        );
        r.register(
            "mta_sts_mx_not_listed",
            "Deliveries for which an MX host is not in the domain's MTA-STS policy, by mode (enforce: not tried; testing: tried)",
            metrics.mta_sts_mx_not_listed.clone(),
        );
        r.register(
            "dane_enabled",
            "1 while DNSSEC answers validate (delivery.dane.probe) and DANE is applied, 0 while it is off",
            metrics.dane_enabled.clone(),
        );
        r.register(
            "dane_hosts",
            "MX hosts looked at for DANE, by result: authenticated (usable TLSA), encrypted (signed TLSA, none usable), absent, failed (bogus or failed TLSA lookup)",
            metrics.dane_hosts.clone(),
        );
        r.register(
            "webhook_posts",
            "Webhook POSTs by webhook and result: accepted (2xx), refused (another status), failed (no answer in time, no connection, TLS)",
            metrics.webhook_posts.clone(),
        );
        r.register(
            "webhook_events",
            "Events by webhook and result: sent (in an accepted POST; at least once), expired (dropped, not accepted within retryFor)",
            metrics.webhook_events.clone(),
        );
        r.register(
            "tls_reports",
            "TLS reports (RFC 8460) of ended periods by result: sent (to at least one destination), failed, no_destination (the domain publishes no rua)",
            metrics.tls_reports.clone(),
        );
        Metrics {
            registry,
            ..metrics
        }
    }
}

impl Metrics {
    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// Counts one recipient outcome of delivery.
    pub fn outcome(&self, result: &'static str) {
        self.delivery_outcomes
            .get_or_create(&vec![("result", result)])
            .inc();
    }

    /// Sets the queue gauges.
    pub fn queue(&self, counts: &postern_queue::QueueCounts) {
        for (state, value) in [
            ("ready", counts.ready),
            ("in_flight", counts.in_flight),
            ("waiting", counts.waiting),
            ("dead_letter", counts.dead_letters),
        ] {
            self.queue_entries
                .get_or_create(&vec![("state", state)])
                .set(i64::try_from(value).unwrap_or(i64::MAX));
        }
        self.queue_oldest_ready_seconds
            .set(counts.oldest_ready.as_secs_f64());
    }

    /// Counts one entry put back without an attempt.
    pub fn postponed(&self, reason: &'static str) {
        self.delivery_postponed
            .get_or_create(&vec![("reason", reason)])
            .inc();
    }

    /// Counts one entry moved to the dead-letter stream.
    pub fn dead_letter(&self, reason: &'static str) {
        self.delivery_dead_letters
            .get_or_create(&vec![("reason", reason)])
            .inc();
    }

    /// Counts one reply and, for refusals, its reason.
    pub fn reply(&self, reply: &postern_smtp::Reply) {
        let class = match reply.class() {
            2 => "2xx",
            3 => "3xx",
            4 => "4xx",
            5 => "5xx",
            _ => "other",
        };
        self.replies.get_or_create(&vec![("class", class)]).inc();
        if let Some(reason) = reply.reject {
            self.rejections
                .get_or_create(&vec![("reason", reason.as_label())])
                .inc();
        }
    }
}
