//! Destinations as state every delivery process shares through NATS KV: whether one is in
//! backoff or slowed down (watched, so reading it costs nothing), its message rate
//! (reservations made with compare-and-set) and its connection limit (leases that expire).

mod leases;
pub mod limits;
pub mod state;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::kv;
use futures::StreamExt;
use postern_config::{BackoffConfig, DeliveryConfig};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub use leases::{Lease, Waiting};
pub use limits::{Destination, Limits};
pub use state::{Signal, State};

use crate::{Queue, QueueError};

/// Entries that may wait for `connections` whose attempts take `pace` seconds: what they get
/// through within `window`, between `connections` and `most`.
fn park_capacity(connections: usize, pace: Option<f64>, window: Duration, most: usize) -> usize {
    let per_connection = match pace {
        Some(pace) if pace > 0.0 => (window.as_secs_f64() / pace).floor() as usize,
        Some(_) => most,
        // Nothing measured yet: as if each took the whole window.
        None => 1,
    };
    connections
        .saturating_mul(per_connection.max(1))
        .clamp(connections.min(most), most.max(1))
}

/// A connection lease lives this long after its holder last renewed it.
pub const LEASE_TTL: Duration = Duration::from_secs(15);

/// A lease outlives the idle session it opened by this much: the pool's sweep closes it first.
const LEASE_AFTER_IDLE: Duration = Duration::from_secs(1);

/// Tries of one compare-and-set before giving up for now.
const CAS_TRIES: usize = 8;

/// Every destination's shared state, as this process sees it.
#[derive(Clone)]
pub struct Destinations {
    inner: Arc<Inner>,
}

struct Inner {
    states: kv::Store,
    leases: leases::Leases,
    backoff: BackoffConfig,
    /// The last state of each destination in the bucket, by id, kept current by a watch.
    known: Mutex<HashMap<String, State>>,
    /// How long attempts at each destination took lately (seconds, a moving average), by id.
    timings: Mutex<HashMap<String, Timing>>,
}

/// How long attempts at one destination take in this process.
#[derive(Debug, Clone, Copy, Default)]
struct Timing {
    /// A moving average of finished attempts, in seconds.
    average: Option<f64>,
    /// When the first attempt began, while none has finished.
    first_began: Option<std::time::Instant>,
}

/// A change of a destination's state worth counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// It went into backoff: no process connects to it for a while.
    BackedOff,
    /// It asked to slow down, and its limits were lowered.
    SlowedDown,
    /// It was reached again after a backoff.
    Recovered,
}

impl std::fmt::Debug for Destinations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Destinations").finish_non_exhaustive()
    }
}

impl Destinations {
    /// Opens the buckets and follows the states in them until `shutdown`.
    pub async fn start(
        queue: &Queue,
        config: &DeliveryConfig,
        shutdown: CancellationToken,
    ) -> Result<Destinations, QueueError> {
        let (states, leases) = queue.destination_buckets(LEASE_TTL).await?;
        let destinations = Destinations {
            inner: Arc::new(Inner {
                states,
                leases: leases::Leases::start(
                    leases,
                    LEASE_TTL,
                    config.timeouts.idle.get() + LEASE_AFTER_IDLE,
                    shutdown.clone(),
                ),
                backoff: config.backoff.clone(),
                known: Mutex::default(),
                timings: Mutex::default(),
            }),
        };
        tokio::spawn(destinations.clone().follow(shutdown));
        Ok(destinations)
    }

    fn known(&self) -> std::sync::MutexGuard<'_, HashMap<String, State>> {
        self.inner.known.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps `known` equal to the bucket's states.
    async fn follow(self, shutdown: CancellationToken) {
        let states = self.inner.states.clone();
        follow_keys(&states, "state.>", &shutdown, |entry| {
            let Some(id) = entry.key.strip_prefix("state.") else {
                return;
            };
            let state = match entry.operation {
                kv::Operation::Put => serde_json::from_slice::<State>(&entry.value).ok(),
                kv::Operation::Delete | kv::Operation::Purge => None,
            };
            let mut known = self.known();
            match state {
                Some(state) => known.insert(id.to_string(), state),
                None => known.remove(id),
            };
        })
        .await;
    }

    /// The state of `destination` as last seen.
    pub fn state(&self, destination: &Destination) -> Option<State> {
        self.known().get(destination.id()).cloned()
    }

    /// Until when `destination` is in backoff, if it is.
    pub fn backoff(&self, destination: &Destination, now_ms: u64) -> Option<u64> {
        self.state(destination)?.backoff(now_ms)
    }

    /// Destinations in backoff now.
    pub fn in_backoff(&self, now_ms: u64) -> usize {
        self.known()
            .values()
            .filter(|s| s.backoff(now_ms).is_some())
            .count()
    }

    /// The limits of `destination` now: halved while it asked to slow down.
    pub fn limits(&self, destination: &Destination, now_ms: u64) -> Limits {
        let halvings = self.state(destination).map_or(0, |s| s.halvings(now_ms));
        destination.limits.halved(halvings)
    }

    /// When the next message to `destination` may go under its rate (now when it has none);
    /// the slot is taken.
    pub async fn reserve(
        &self,
        destination: &Destination,
        limits: &Limits,
        now_ms: u64,
    ) -> Result<u64, async_nats::Error> {
        let Some(rate) = limits.rate else {
            return Ok(now_ms);
        };
        let interval = u64::try_from(rate.interval().as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let key = format!("rate.{}", destination.id());
        for _ in 0..CAS_TRIES {
            let (tat, revision) = match self.inner.states.entry(&key).await? {
                Some(entry) => (
                    std::str::from_utf8(&entry.value)
                        .ok()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0),
                    entry.revision,
                ),
                None => (0, 0),
            };
            let reservation = state::reserve(tat, now_ms, interval, limits.burst);
            let written = self
                .inner
                .states
                .update(&key, reservation.next_tat_ms.to_string().into(), revision)
                .await;
            match written {
                Ok(_) => return Ok(reservation.go_at_ms),
                Err(err) if err.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(err) => return Err(err.into()),
            }
        }
        Err("the rate of this destination is contended; try again".into())
    }

    /// A connection lease of `destination` within `limits`, if one is free now.
    pub async fn lease(
        &self,
        destination: &Destination,
        limits: &Limits,
    ) -> Result<Option<Lease>, async_nats::Error> {
        self.inner
            .leases
            .try_acquire(destination.id(), limits.connections)
            .await
    }

    /// A place to wait for a connection of `destination` in this process, unless `at_most`
    /// entries wait for one already.
    pub fn park(&self, destination: &Destination, at_most: usize) -> Option<leases::Waiting> {
        let id = destination.id();
        (self.inner.leases.waiting(id) < at_most).then(|| self.inner.leases.wait(id))
    }

    /// How many entries of this process may wait for `destination`'s connections: as many as
    /// its connections get through within `window` at the pace its attempts took lately, at
    /// least one per connection and at most `most`. A slow destination keeps few waiting;
    /// a fast one waits a moment rather than going back to the queue.
    pub fn park_capacity(
        &self,
        destination: &Destination,
        limits: &Limits,
        window: Duration,
        most: usize,
    ) -> usize {
        park_capacity(limits.connections, self.pace(destination), window, most)
    }

    fn timing(&self, destination: &Destination) -> Timing {
        self.inner
            .timings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(destination.id())
            .copied()
            .unwrap_or_default()
    }

    /// How long attempts at `destination` took lately, in seconds, if any finished here.
    pub fn pace(&self, destination: &Destination) -> Option<f64> {
        self.timing(destination).average
    }

    /// At least how long an attempt at `destination` takes, in seconds: its pace, or while
    /// none has finished, how long the first one has been running.
    pub fn pace_at_least(&self, destination: &Destination) -> Option<f64> {
        let timing = self.timing(destination);
        timing
            .average
            .or_else(|| timing.first_began.map(|t| t.elapsed().as_secs_f64()))
    }

    /// Notes that an attempt at `destination` begins.
    pub fn begins(&self, destination: &Destination) {
        let mut timings = self.inner.timings.lock().unwrap_or_else(|e| e.into_inner());
        let timing = timings.entry(destination.id().to_string()).or_default();
        if timing.average.is_none() && timing.first_began.is_none() {
            timing.first_began = Some(std::time::Instant::now());
        }
    }

    /// Records how long an attempt at `destination` took.
    pub fn timed(&self, destination: &Destination, took: Duration) {
        let mut timings = self.inner.timings.lock().unwrap_or_else(|e| e.into_inner());
        let took = took.as_secs_f64();
        let timing = timings.entry(destination.id().to_string()).or_default();
        timing.average = Some(timing.average.map_or(took, |a| 0.8 * a + 0.2 * took));
        timing.first_began = None;
    }

    /// Resolves when a lease of `destination` may have become free.
    pub async fn lease_freed(&self, destination: &Destination, at_most: Duration) {
        self.inner.leases.freed(destination.id(), at_most).await;
    }

    /// Records what an attempt said about `destination` for every process; nothing is written
    /// when nothing changes. Returns the change worth counting, if any.
    pub async fn record(
        &self,
        destination: &Destination,
        signal: &Signal,
        now_ms: u64,
    ) -> Option<Transition> {
        let id = destination.id().to_string();
        let cached = self
            .state(destination)
            .unwrap_or_else(|| State::named(&destination.name));
        cached.after(signal, now_ms, &self.inner.backoff)?;
        let key = format!("state.{id}");
        for _ in 0..CAS_TRIES {
            let (current, revision) = match self.inner.states.entry(&key).await {
                Ok(Some(entry)) if entry.operation == kv::Operation::Put => (
                    serde_json::from_slice(&entry.value)
                        .unwrap_or_else(|_| State::named(&destination.name)),
                    entry.revision,
                ),
                Ok(Some(entry)) => (State::named(&destination.name), entry.revision),
                Ok(None) => (State::named(&destination.name), 0),
                Err(err) => {
                    warn!(destination = %destination.name, %err, "destination state not read");
                    return None;
                }
            };
            let next = current.after(signal, now_ms, &self.inner.backoff)?;
            let value = serde_json::to_vec(&next).unwrap_or_default();
            match self.inner.states.update(&key, value.into(), revision).await {
                Ok(_) => {
                    let transition = announce(&current, &next, signal, now_ms);
                    self.known().insert(id, next);
                    return transition;
                }
                Err(err) if err.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(err) => {
                    warn!(destination = %destination.name, %err, "destination state not written");
                    return None;
                }
            }
        }
        debug!(destination = %destination.name, "destination state contended; left as it is");
        None
    }
}

/// Hands every current entry of `kv` under `filter`, then every change, to `apply` until
/// `shutdown`; a watch that fails is started again.
pub(crate) async fn follow_keys(
    kv: &kv::Store,
    filter: &str,
    shutdown: &CancellationToken,
    mut apply: impl FnMut(kv::Entry),
) {
    loop {
        let mut watch = match kv.watch_with_history(filter).await {
            Ok(watch) => watch,
            Err(err) => {
                warn!(%err, filter, "watching a bucket failed");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        loop {
            let entry = tokio::select! {
                () = shutdown.cancelled() => return,
                entry = watch.next() => entry,
            };
            let Some(Ok(entry)) = entry else { break };
            apply(entry);
        }
    }
}

/// Logs a change of state, and says which it was.
fn announce(before: &State, after: &State, signal: &Signal, now_ms: u64) -> Option<Transition> {
    match signal {
        Signal::Reached if before.backoff_until_ms.is_some() => {
            info!(destination = %after.name, "destination reachable again; backoff over");
            Some(Transition::Recovered)
        }
        Signal::Unreachable(reason) => {
            let until = after.backoff(now_ms)?;
            warn!(destination = %after.name, failures = after.failures, backoff_s = (until - now_ms) / 1000, %reason, "destination unreachable; every process leaves it alone until the backoff ends");
            Some(Transition::BackedOff)
        }
        Signal::SlowDown(reason) => {
            warn!(destination = %after.name, halvings = after.slow_down, %reason, "destination asked to slow down; its connections and rate are lowered for a while");
            Some(Transition::SlowedDown)
        }
        Signal::Reached => None,
    }
}

#[cfg(test)]
mod tests {
    use super::park_capacity;
    use std::time::Duration;

    #[test]
    fn fast_destinations_keep_many_entries_waiting_slow_ones_few() {
        let window = Duration::from_secs(20);
        assert_eq!(
            park_capacity(2, Some(30.0), window, 200),
            2,
            "30 s per message"
        );
        assert_eq!(park_capacity(2, Some(5.0), window, 200), 8);
        assert_eq!(
            park_capacity(20, Some(0.005), window, 200),
            200,
            "capped by the intake"
        );
        assert_eq!(
            park_capacity(20, None, window, 200),
            20,
            "unmeasured: one per connection"
        );
        assert_eq!(park_capacity(50, None, window, 8), 8);
    }
}
