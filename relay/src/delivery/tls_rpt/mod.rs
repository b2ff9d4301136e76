//! TLS reporting (RFC 8460) for the domains whose MTA-STS policies delivery applied and the MX
//! hosts DANE applied to (a DANE policy's domain is the MX host, its TLSA base domain, RFC 8460
//! §1.3 and RFC 7672 §2.2.3, so those reports go to the host's own `_smtp._tls` record): sessions
//! are counted in memory, added every few seconds to the relay's tallies in NATS KV (compare and
//! set, so every delivery process adds to the same ones), and once a period has ended one
//! process claims each domain's tally and sends its report where the domain's `_smtp._tls`
//! record says, by mail through the relay's own queue or by HTTPS POST.

pub mod report;
mod send;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use postern_config::Config;
use postern_dns::Dns;
use postern_queue::json_bucket::{JsonBucket, key};
use postern_queue::{Queue, now_ms};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::dane::tlsa::Tlsa;
use super::mta_sts::cache::Cached;
use crate::metrics::Metrics;
use report::{PolicyFacts, ResultType, Tally};

/// The sessions of one period to one policy domain, by the kind of policy.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Tallies {
    /// Under the domain's MTA-STS policy (or the lack of one).
    #[serde(default)]
    tally: Tally,
    /// Under the TLSA records of the domain as an MX host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tlsa: Option<Tally>,
}

impl Tallies {
    fn merge(&mut self, other: Tallies) {
        self.tally.merge(other.tally);
        if let Some(tlsa) = other.tlsa {
            self.tlsa.get_or_insert_with(Tally::default).merge(tlsa);
        }
    }
}

/// A period's tallies of one domain as the bucket holds them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Stored {
    domain: String,
    start_ms: u64,
    end_ms: u64,
    #[serde(flatten)]
    tallies: Tallies,
}

/// What DANE made of a session with an MX host, for its report.
#[derive(Debug, Clone, Copy)]
pub enum DaneSession<'a> {
    /// Under these usable TLSA records: met, or failed as the result type says.
    Records(&'a [Tlsa], Option<ResultType>),
    /// Not under records: the host's TLSA records were unusable, bogus or missing.
    Failed(ResultType),
}

/// The TLS reports of one delivery process.
#[derive(Debug)]
pub struct TlsReports {
    /// Sessions not yet added to the bucket, by period and domain.
    pending: Mutex<HashMap<(u64, String), Tallies>>,
    period_ms: u64,
    bucket: JsonBucket,
    sender: send::Sender,
    metrics: Arc<Metrics>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The policy of a tally, as RFC 8460 §4.4 names it.
fn facts(policy: Option<&Cached>) -> PolicyFacts {
    let Some(cached) = policy else {
        return PolicyFacts {
            policy_type: "sts".into(),
            ..PolicyFacts::default()
        };
    };
    let policy = &cached.policy;
    let mut lines = vec![
        "version: STSv1".to_string(),
        format!("mode: {}", policy.mode.as_str()),
    ];
    lines.extend(policy.mx.iter().map(|mx| format!("mx: {mx}")));
    lines.push(format!("max_age: {}", policy.max_age.as_secs()));
    PolicyFacts {
        policy_type: "sts".into(),
        policy_string: lines,
        mx_host: policy.mx.clone(),
    }
}

/// The policy of a tally of sessions under MX `host`'s TLSA records (RFC 8460 §4.4): the
/// records in presentation form, when they could be had.
fn tlsa_facts(host: &str, records: Option<&[Tlsa]>) -> PolicyFacts {
    PolicyFacts {
        policy_type: if records.is_some() {
            "tlsa"
        } else {
            "no-policy-found"
        }
        .into(),
        policy_string: records
            .unwrap_or_default()
            .iter()
            .map(Tlsa::presentation)
            .collect(),
        mx_host: vec![host.to_string()],
    }
}

impl TlsReports {
    /// The reports of `config`'s relay; none when `delivery.tlsRpt.enabled` is false.
    pub fn new(
        config: &Config,
        queue: &Queue,
        dns: Dns,
        tls: Arc<rustls::ClientConfig>,
        metrics: Arc<Metrics>,
    ) -> Option<Arc<TlsReports>> {
        let wanted = &config.delivery.tls_rpt;
        if !wanted.enabled {
            return None;
        }
        let period_ms = u64::try_from(wanted.period.get().as_millis()).unwrap_or(u64::MAX);
        Some(Arc::new(TlsReports {
            pending: Mutex::default(),
            period_ms: period_ms.max(1000),
            bucket: postern_queue::tls_rpt::bucket(queue),
            sender: send::Sender::new(config, queue.clone(), dns, tls),
            metrics,
        }))
    }

    fn record(&self, domain: &str, policy: Option<&Cached>, add: impl FnOnce(&mut Tally)) {
        let period = now_ms() / self.period_ms;
        let mut pending = lock(&self.pending);
        let tally = &mut pending
            .entry((period, domain.to_string()))
            .or_default()
            .tally;
        if policy.is_some() || tally.policy.policy_type.is_empty() {
            tally.policy = facts(policy);
        }
        add(tally);
    }

    /// A session with MX `host` that DANE decided about: counted under the host's TLSA
    /// records, the host being the policy domain.
    pub fn dane(&self, host: &str, session: DaneSession<'_>, ip: Option<&str>) {
        let period = now_ms() / self.period_ms;
        let mut pending = lock(&self.pending);
        let tally = pending
            .entry((period, host.to_ascii_lowercase()))
            .or_default()
            .tlsa
            .get_or_insert_with(Tally::default);
        let (records, failed) = match session {
            DaneSession::Records(records, failed) => (Some(records), failed),
            DaneSession::Failed(failed) => (None, Some(failed)),
        };
        if records.is_some() || tally.policy.policy_type.is_empty() {
            tally.policy = tlsa_facts(host, records);
        }
        match failed {
            None => tally.successes += 1,
            Some(kind) => tally.fail(kind, Some(host), ip),
        }
    }

    /// A session to `domain` under its policy met it.
    pub fn success(&self, domain: &str, policy: &Cached) {
        self.record(domain, Some(policy), |tally| tally.successes += 1);
    }

    /// A session to `domain` (or its policy fetch, without a policy) failed as `result`.
    pub fn failure(
        &self,
        domain: &str,
        policy: Option<&Cached>,
        result: ResultType,
        mx: Option<&str>,
        ip: Option<&str>,
    ) {
        self.record(domain, policy, |tally| tally.fail(result, mx, ip));
    }

    /// How often pending counts go to the bucket and ended periods are looked for.
    fn tick(&self) -> Duration {
        Duration::from_millis((self.period_ms / 4).clamp(250, 10_000))
    }

    /// Adds pending counts to the bucket and sends the reports of ended periods, until
    /// `shutdown` (counts pending then are added once more). The bucket is looked through at
    /// start (for periods that ended while no process ran) and once after each period's end.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut scan_at = 0;
        loop {
            let stop = tokio::select! {
                () = shutdown.cancelled() => true,
                () = tokio::time::sleep(self.tick()) => false,
            };
            self.flush().await;
            if stop {
                return;
            }
            let now = now_ms();
            if now >= scan_at {
                self.send_ended().await;
                scan_at = self.scan_after(now);
            }
        }
    }

    /// When the periods ended by `now` have all been added to: two ticks after the end of the
    /// current one.
    fn scan_after(&self, now: u64) -> u64 {
        let tick = u64::try_from(self.tick().as_millis()).unwrap_or(u64::MAX);
        (now / self.period_ms + 1) * self.period_ms + 2 * tick
    }

    async fn flush(&self) {
        let pending = std::mem::take(&mut *lock(&self.pending));
        for ((period, domain), tallies) in pending {
            let start_ms = period * self.period_ms;
            let end_ms = start_ms + self.period_ms;
            let added = self
                .bucket
                .change(&tally_key(period, &domain), |stored: Option<Stored>| {
                    let mut stored = stored.unwrap_or_else(|| Stored {
                        domain: domain.clone(),
                        start_ms,
                        end_ms,
                        tallies: Tallies::default(),
                    });
                    stored.tallies.merge(tallies.clone());
                    stored
                })
                .await;
            if let Err(err) = added {
                // Counts are best effort: a report with fewer sessions beats holding mail.
                warn!(%domain, %err, "TLS report counts not stored; dropped");
            }
        }
    }

    /// Sends the report of every tally whose period ended a tick ago (so that every process
    /// added its counts), each by the one process that claims it.
    async fn send_ended(&self) {
        let keys = match self.bucket.keys().await {
            Ok(keys) => keys,
            Err(err) => {
                warn!(%err, "TLS report tallies not listed");
                return;
            }
        };
        let now = now_ms();
        for tally_key in keys.iter().filter(|k| !k.starts_with("sent.")) {
            let Some(period) = tally_key
                .split_once('.')
                .and_then(|(p, _)| p.parse::<u64>().ok())
            else {
                continue;
            };
            if now < self.scan_after(period * self.period_ms) {
                continue;
            }
            match self.bucket.create(&format!("sent.{tally_key}"), &now).await {
                Ok(true) => {}
                Ok(false) => continue,
                Err(err) => {
                    warn!(%err, "TLS report not claimed");
                    continue;
                }
            }
            let stored: Option<Stored> = match self.bucket.get(tally_key).await {
                Ok(stored) => stored,
                Err(err) => {
                    warn!(%err, "TLS report tally not read");
                    None
                }
            };
            if let Some(stored) = stored {
                let tallies = &stored.tallies;
                let policies: Vec<&Tally> = std::iter::once(&tallies.tally)
                    .chain(&tallies.tlsa)
                    .collect();
                let result = self
                    .sender
                    .send(&stored.domain, (stored.start_ms, stored.end_ms), &policies)
                    .await;
                self.metrics
                    .tls_reports
                    .get_or_create(&vec![("result", result)])
                    .inc();
            }
            let _ = self.bucket.purge(tally_key).await;
        }
    }
}

/// The key of `domain`'s tally for `period`.
fn tally_key(period: u64, domain: &str) -> String {
    format!("{period}.{}", key(domain))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::mta_sts::policy::{Mode, Policy};

    #[test]
    fn tallies_stored_before_dane_still_read_and_merge_with_tlsa_ones() {
        let old = r#"{"domain":"example.com","startMs":0,"endMs":1000,"tally":{"policy":{"policyType":"sts","policyString":[],"mxHost":[]},"successes":2,"failures":[]}}"#;
        let mut stored: Stored = serde_json::from_str(old).unwrap();
        assert_eq!(stored.tallies.tally.successes, 2);
        assert!(stored.tallies.tlsa.is_none());
        let record = Tlsa {
            usage: 3,
            selector: 1,
            matching: 1,
            data: vec![0xab; 32],
        };
        let mut tlsa = Tally {
            policy: tlsa_facts("mx.example.com", Some(std::slice::from_ref(&record))),
            ..Tally::default()
        };
        tlsa.fail(ResultType::TlsaInvalid, Some("mx.example.com"), None);
        stored.tallies.merge(Tallies {
            tally: Tally::default(),
            tlsa: Some(tlsa),
        });
        let back: Stored = serde_json::from_str(&serde_json::to_string(&stored).unwrap()).unwrap();
        let tlsa = back.tallies.tlsa.unwrap();
        assert_eq!(tlsa.failed_sessions(), 1);
        assert_eq!(tlsa.policy.policy_type, "tlsa");
        assert_eq!(
            tlsa.policy.policy_string,
            [format!("3 1 1 {}", "ab".repeat(32))]
        );
        assert_eq!(back.tallies.tally.successes, 2);
        assert_eq!(
            tlsa_facts("mx.example.com", None).policy_type,
            "no-policy-found"
        );
    }

    #[test]
    fn the_policy_string_lists_the_policy() {
        let cached = Cached {
            id: "1".into(),
            policy: Policy {
                mode: Mode::Testing,
                mx: vec!["mx.example.com".into(), "*.example.net".into()],
                max_age: Duration::from_secs(86_400),
            },
            fetched_ms: 0,
        };
        let facts = facts(Some(&cached));
        assert_eq!(
            facts.policy_string,
            [
                "version: STSv1",
                "mode: testing",
                "mx: mx.example.com",
                "mx: *.example.net",
                "max_age: 86400"
            ]
        );
        assert_eq!(facts.mx_host, ["mx.example.com", "*.example.net"]);
        assert_eq!(tally_key(7, "Example.COM"), "7.example=2ecom");
    }
}
