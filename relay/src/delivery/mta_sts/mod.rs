//! MTA-STS (RFC 8461) for delivery to MX hosts: the policy that applies to a recipient domain,
//! from this process's memory, the relay's shared cache in NATS KV, or a fetch over HTTPS.

pub mod cache;
pub mod fetch;
pub mod policy;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use postern_queue::Queue;
use postern_queue::mta_sts::{PolicyCache, StoredPolicy};
use tracing::{debug, info, warn};

use super::tls_rpt::TlsReports;
use super::tls_rpt::report::ResultType;
use crate::metrics::Metrics;
use cache::{Cached, Decision, Record, after_failed_fetch, decide};
use fetch::{FetchError, Fetcher};

/// After a failed fetch, the same policy id is not fetched again by this process for this long
/// (a broken policy server would otherwise hold up every message to its domain).
const FAILED_FETCH_PAUSE: Duration = Duration::from_secs(300);

/// Policies this process keeps in memory at most; the cache in NATS holds them all.
const MEMORY_LIMIT: usize = 10_000;

/// A domain without an MTA-STS record whose policy the shared cache did not hold is not looked
/// up there again for this long (most domains have none: their mail should not cost a KV read
/// each). A domain that publishes a record is looked up at once.
const NOT_STORED_FOR: Duration = Duration::from_secs(600);

/// Policies by recipient domain.
#[derive(Debug)]
pub struct MtaSts {
    fetcher: Fetcher,
    /// Shared by every delivery process of the relay; none in unit tests.
    shared: Option<PolicyCache>,
    memory: Mutex<HashMap<String, Arc<Cached>>>,
    /// Domains the shared cache held no policy for, and when that was seen.
    not_stored: Mutex<HashMap<String, Instant>>,
    /// Failed fetches: domain, policy id, when.
    failed: Mutex<HashMap<String, (String, Instant)>>,
    /// One fetch per domain at a time.
    gates: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Where failed fetches are reported (RFC 8460 policy failures).
    reports: Option<Arc<TlsReports>>,
    metrics: Arc<Metrics>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn now_ms() -> u64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

impl MtaSts {
    pub fn new(
        fetcher: Fetcher,
        queue: Option<Queue>,
        reports: Option<Arc<TlsReports>>,
        metrics: Arc<Metrics>,
    ) -> MtaSts {
        MtaSts {
            reports,
            fetcher,
            shared: queue.map(PolicyCache::new),
            memory: Mutex::default(),
            not_stored: Mutex::default(),
            failed: Mutex::default(),
            gates: Mutex::default(),
            metrics,
        }
    }

    /// The policy in force for `domain` (`enforce` or `testing`), if any.
    pub async fn policy(self: &Arc<Self>, domain: &str) -> Option<Arc<Cached>> {
        let domain = postern_dns::to_ascii(domain)?;
        let record = self.record(&domain).await;
        let now = now_ms();
        let remembered = lock(&self.memory).get(&domain).cloned();
        let cached = match remembered {
            Some(cached) => Some(cached),
            None if !matches!(record, Record::Id(_)) && self.known_not_stored(&domain) => None,
            None => self.stored(&domain).await,
        };
        let chosen = match decide(now, &record, cached.as_deref()) {
            Decision::Use => {
                if let (Some(cached), Record::Id(id)) = (&cached, &record)
                    && cached.refresh_due(now)
                {
                    self.refresh_in_background(&domain, id);
                }
                cached
            }
            Decision::Nothing => None,
            Decision::Fetch => self.fetch_or_fall_back(&domain, &record, cached).await,
        };
        chosen.filter(|c| c.policy.mode != policy::Mode::None)
    }

    async fn record(&self, domain: &str) -> Record {
        match self.fetcher.dns.txt(&format!("_mta-sts.{domain}")).await {
            Ok(records) => match policy::record_id(&records) {
                Ok(Some(id)) => Record::Id(id),
                Ok(None) => Record::Absent,
                Err(invalid) => {
                    debug!(%domain, %invalid, "MTA-STS record not valid");
                    Record::Absent
                }
            },
            Err(failure) => {
                debug!(%domain, ?failure, "MTA-STS record lookup failed");
                Record::Failed
            }
        }
    }

    fn known_not_stored(&self, domain: &str) -> bool {
        lock(&self.not_stored)
            .get(domain)
            .is_some_and(|at| at.elapsed() < NOT_STORED_FOR)
    }

    /// The policy in the shared cache, kept in memory too.
    async fn stored(&self, domain: &str) -> Option<Arc<Cached>> {
        let shared = self.shared.as_ref()?;
        let stored = match shared.get(domain).await {
            Ok(Some(stored)) => stored,
            Ok(None) => {
                let mut not_stored = lock(&self.not_stored);
                if not_stored.len() >= MEMORY_LIMIT {
                    not_stored.clear();
                }
                not_stored.insert(domain.to_string(), Instant::now());
                return None;
            }
            Err(err) => {
                warn!(%domain, %err, "MTA-STS policy cache not read");
                return None;
            }
        };
        match policy::parse(&stored.text) {
            Ok(policy) => {
                let cached = Arc::new(Cached {
                    id: stored.id,
                    policy,
                    fetched_ms: stored.fetched_ms,
                });
                self.remember(domain, cached.clone());
                Some(cached)
            }
            Err(invalid) => {
                warn!(%domain, %invalid, "cached MTA-STS policy not valid; ignored");
                None
            }
        }
    }

    fn remember(&self, domain: &str, cached: Arc<Cached>) {
        let mut memory = lock(&self.memory);
        if memory.len() >= MEMORY_LIMIT && !memory.contains_key(domain) {
            memory.clear();
        }
        memory.insert(domain.to_string(), cached);
    }

    fn gate(&self, domain: &str) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.gates)
            .entry(domain.to_string())
            .or_default()
            .clone()
    }

    fn recently_failed(&self, domain: &str, id: &str) -> bool {
        lock(&self.failed)
            .get(domain)
            .is_some_and(|(failed_id, at)| failed_id == id && at.elapsed() < FAILED_FETCH_PAUSE)
    }

    async fn fetch_or_fall_back(
        &self,
        domain: &str,
        record: &Record,
        cached: Option<Arc<Cached>>,
    ) -> Option<Arc<Cached>> {
        let Record::Id(id) = record else {
            return None;
        };
        let gate = self.gate(domain);
        let _one_at_a_time = gate.lock().await;
        // Another worker here, or another process, may have fetched it meanwhile.
        let cached = self.stored(domain).await.or(cached);
        let now = now_ms();
        if decide(now, record, cached.as_deref()) == Decision::Use {
            return cached;
        }
        let fetched = if self.recently_failed(domain, id) {
            None
        } else {
            self.fetch(domain, id).await
        };
        lock(&self.gates).remove(domain);
        match fetched {
            Some(fetched) => Some(fetched),
            None => match after_failed_fetch(now, cached.as_deref()) {
                Decision::Use => cached,
                _ => None,
            },
        }
    }

    /// Fetches the policy with `id` and stores it; none if that failed.
    async fn fetch(&self, domain: &str, id: &str) -> Option<Arc<Cached>> {
        let result = self.fetcher.fetch(domain).await;
        let (outcome, cached) = match result {
            Ok(text) => match policy::parse(&text) {
                Ok(policy) => {
                    let cached = Cached {
                        id: id.to_string(),
                        policy,
                        fetched_ms: now_ms(),
                    };
                    self.store(domain, &cached, text).await;
                    info!(%domain, %id, mode = cached.policy.mode.as_str(), mx = ?cached.policy.mx, "MTA-STS policy fetched");
                    ("ok", Some(Arc::new(cached)))
                }
                Err(invalid) => {
                    warn!(%domain, %id, %invalid, "MTA-STS policy not valid");
                    self.report(domain, ResultType::StsPolicyInvalid);
                    ("invalid", None)
                }
            },
            Err(err) => {
                warn!(%domain, %id, %err, "MTA-STS policy not fetched");
                self.report(
                    domain,
                    match err {
                        FetchError::Tls { .. } => ResultType::StsWebpkiInvalid,
                        _ => ResultType::StsPolicyFetchError,
                    },
                );
                (err.kind(), None)
            }
        };
        self.metrics
            .mta_sts_fetches
            .get_or_create(&vec![("result", outcome)])
            .inc();
        match cached {
            Some(cached) => {
                lock(&self.failed).remove(domain);
                self.remember(domain, cached.clone());
                Some(cached)
            }
            None => {
                lock(&self.failed).insert(domain.to_string(), (id.to_string(), Instant::now()));
                None
            }
        }
    }

    /// A policy fetch failure, for the domain's TLS report.
    fn report(&self, domain: &str, result: ResultType) {
        if let Some(reports) = &self.reports {
            let host = format!("mta-sts.{domain}");
            reports.failure(domain, None, result, Some(&host), None);
        }
    }

    async fn store(&self, domain: &str, cached: &Cached, text: String) {
        let Some(shared) = &self.shared else {
            return;
        };
        let stored = StoredPolicy {
            id: cached.id.clone(),
            text,
            fetched_ms: cached.fetched_ms,
        };
        if let Err(err) = shared.put(domain, &stored).await {
            warn!(%domain, %err, "MTA-STS policy not written to the shared cache");
        }
    }

    /// Fetches the policy again before it expires, unless a fetch is under way or failed lately.
    fn refresh_in_background(self: &Arc<Self>, domain: &str, id: &str) {
        if self.recently_failed(domain, id) {
            return;
        }
        let (this, domain, id) = (self.clone(), domain.to_string(), id.to_string());
        tokio::spawn(async move {
            let gate = this.gate(&domain);
            let Ok(_one_at_a_time) = gate.try_lock() else {
                return;
            };
            this.fetch(&domain, &id).await;
            lock(&this.gates).remove(&domain);
        });
    }
}
