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
    /// Recipients delivered, by the TLS of the session (`none`, `unverified`, `verified`,
    /// `dane`).
    pub delivery_tls: Family<Labels, Counter>,
    /// 1 while this process is connected to NATS, read at each scrape.
    pub nats_connected: Gauge,
    /// 1 while the stream answers this process (its quorum is up), read at each scrape.
    pub nats_answering: Gauge,
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
            delivery_tls: Family::default(),
            nats_connected: Gauge::default(),
            nats_answering: Gauge::default(),
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
        r.register(
            "delivery_tls",
            "Recipients delivered, by the TLS of the session: none, unverified (any certificate), verified (for the host name), dane (authenticated by TLSA records)",
            metrics.delivery_tls.clone(),
        );
        r.register(
            "nats_connected",
            "1 while this process is connected to NATS",
            metrics.nats_connected.clone(),
        );
        r.register(
            "nats_answering",
            "1 while the queue's stream answers this process (0 without quorum or while NATS does not respond)",
            metrics.nats_answering.clone(),
        );
        // The series of known, bounded label values exist from the start, at 0, so that
        // dashboards and rates show them before their first event.
        for (family, label, values) in [
            (&metrics.replies, "class", &["2xx", "3xx", "4xx", "5xx"][..]),
            (
                &metrics.delivery_outcomes,
                "result",
                &["delivered", "deferred", "bounced", "expired"][..],
            ),
            (
                &metrics.delivery_postponed,
                "reason",
                &["backoff", "rate", "busy"][..],
            ),
            (
                &metrics.delivery_tls,
                "tls",
                &["none", "unverified", "verified", "dane"][..],
            ),
        ] {
            for value in values {
                let _ = family.get_or_create(&vec![(label, *value)]);
            }
        }
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

    /// Counts one recipient delivered over a session with `tls`.
    pub fn delivered_tls(&self, tls: Option<&postern_queue::events::TlsDetails>) {
        let kind = match tls {
            None => "none",
            Some(tls) if tls.policy.as_deref() == Some("dane") => "dane",
            Some(tls) if tls.verified => "verified",
            Some(_) => "unverified",
        };
        self.delivery_tls.get_or_create(&vec![("tls", kind)]).inc();
    }

    /// Sets the NATS gauges.
    pub fn nats(&self, connected: bool, answering: bool) {
        self.nats_connected.set(i64::from(connected));
        self.nats_answering.set(i64::from(answering));
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// The chart's Grafana dashboard.
    const DASHBOARD: &str = include_str!("../../charts/postern/dashboards/postern.json");

    /// Every query of the dashboard: panel targets and template variables.
    fn queries(value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, child) in map {
                    match (key.as_str(), child) {
                        ("expr" | "definition", serde_json::Value::String(query)) => {
                            out.push(query.clone());
                        }
                        _ => queries(child, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|i| queries(i, out)),
            _ => {}
        }
    }

    /// The metric names in a PromQL query: words starting `postern_`.
    fn metric_names(query: &str) -> Vec<String> {
        let mut names = Vec::new();
        let mut rest = query;
        while let Some(at) = rest.find("postern_") {
            let word: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[at + word.len()..];
            names.push(word);
        }
        names
    }

    /// Every metric the registry holds. A family without samples is not encoded, so the names
    /// come from the registrations in this file; those that are encoded without samples
    /// (counters, gauges, histograms) are checked against the encoding.
    fn exported() -> BTreeSet<String> {
        let source = include_str!("metrics.rs");
        let registered: BTreeSet<String> = source
            .split("r.register(")
            .skip(1)
            .filter_map(|call| call.split('"').nth(1))
            .map(|name| format!("postern_{name}"))
            .collect();
        let encoded: BTreeSet<String> = Metrics::default()
            .encode()
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_string)
            .collect();
        assert!(
            encoded.is_subset(&registered) && encoded.len() > 10,
            "registered {registered:?}, encoded {encoded:?}"
        );
        registered
    }

    #[test]
    fn every_dashboard_query_names_a_metric_postern_exports() {
        let exported = exported();
        assert!(
            exported.contains("postern_delivery_outcomes"),
            "{exported:?}"
        );
        let dashboard: serde_json::Value = serde_json::from_str(DASHBOARD).unwrap();
        let mut all = Vec::new();
        queries(&dashboard, &mut all);
        assert!(all.len() > 20, "{all:?}");
        let mut named = BTreeSet::new();
        for query in &all {
            let names = metric_names(query);
            assert!(
                !names.is_empty(),
                "a query naming no Postern metric: {query}"
            );
            for name in names {
                let family = ["_bucket", "_count", "_sum", "_total"]
                    .iter()
                    .find_map(|suffix| name.strip_suffix(suffix))
                    .filter(|family| exported.contains(*family))
                    .unwrap_or(&name);
                assert!(
                    exported.contains(family),
                    "{query} names {name}, which Postern does not export"
                );
                named.insert(family.to_string());
            }
        }
        // Label names a query groups by exist on the families that have series from the start.
        let encoded = Metrics::default().encode();
        for query in &all {
            for (by, rest) in query
                .split(" by (")
                .skip(1)
                .map(|r| r.split_once(')').unwrap())
            {
                let Some(name) = metric_names(rest).into_iter().next() else {
                    continue;
                };
                let series: Vec<&str> = encoded
                    .lines()
                    .filter(|l| l.starts_with(&format!("{name}{{")))
                    .collect();
                for label in by.split(',').map(str::trim).filter(|l| *l != "le") {
                    assert!(
                        series.is_empty()
                            || series.iter().all(|l| l.contains(&format!("{label}=\""))),
                        "{query} groups {name} by {label}, which its series lack: {series:?}"
                    );
                }
            }
        }
        // The panels the dashboard promises.
        for family in [
            "postern_ingress_messages_accepted",
            "postern_ingress_enqueue_seconds",
            "postern_ingress_replies",
            "postern_queue_entries",
            "postern_delivery_outcomes",
            "postern_delivery_destinations_in_backoff",
            "postern_delivery_postponed",
            "postern_delivery_tls",
            "postern_nats_connected",
        ] {
            assert!(named.contains(family), "no panel shows {family}");
        }
    }

    #[test]
    fn delivered_recipients_are_counted_by_their_sessions_tls() {
        use postern_queue::events::TlsDetails;
        let metrics = Metrics::default();
        let tls = |verified: bool, policy: Option<&str>| TlsDetails {
            version: "TLSv1.3".into(),
            cipher: "TLS13_AES_128_GCM_SHA256".into(),
            verified,
            policy: policy.map(str::to_string),
        };
        metrics.delivered_tls(None);
        metrics.delivered_tls(Some(&tls(false, None)));
        metrics.delivered_tls(Some(&tls(true, Some("mta-sts"))));
        metrics.delivered_tls(Some(&tls(true, Some("dane"))));
        metrics.delivered_tls(Some(&tls(false, Some("dane"))));
        metrics.nats(true, false);
        let text = metrics.encode();
        for line in [
            "postern_delivery_tls_total{tls=\"none\"} 1",
            "postern_delivery_tls_total{tls=\"unverified\"} 1",
            "postern_delivery_tls_total{tls=\"verified\"} 1",
            "postern_delivery_tls_total{tls=\"dane\"} 2",
            "postern_nats_connected 1",
            "postern_nats_answering 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} not in\n{text}");
        }
    }
}
