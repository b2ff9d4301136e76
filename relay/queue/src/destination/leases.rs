//! Connection leases: a destination's connection limit as keys `<id>.<slot>` in a NATS KV
//! bucket whose entries expire unless renewed, so the limit holds across every delivery
//! process and a dead process's share comes back within the bucket's age. A process keeps a
//! lease as long as the session it opened may wait in the pool, so open sessions never
//! outnumber leases and a busy destination costs no KV writes per message.
//!
//! A process whose mail waits for a destination's connection says so with a key
//! `want.<id>.<holder>` (renewed while it waits); every process then keeps at most its fair
//! share of that destination's leases (the limit divided among the processes that want it) and
//! gives the rest back as soon as they are free, so no process starves another.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::now_ms;

use async_nats::jetstream::kv;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// How often leases are renewed and given back, and wants announced.
const MAINTAIN_EVERY: Duration = Duration::from_millis(500);

/// A want not renewed for this long is over (its process died or stopped waiting).
const WANT_FRESH_MS: u64 = 15_000;

/// How often a process that waits renews its want.
const WANT_EVERY: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct Leases {
    inner: Arc<Inner>,
}

struct Inner {
    kv: kv::Store,
    holder: String,
    renew_every: Duration,
    /// A lease unused this long goes back to the bucket: as long as the session it opened may
    /// wait idle for the next message, so that open sessions never outnumber leases.
    linger: Duration,
    held: Mutex<HashMap<String, Held>>,
    /// Per destination: signalled for one waiter when a lease of this process is free again.
    freed: Mutex<HashMap<String, Arc<Notify>>>,
    /// Entries of this process waiting for each destination, and when its want was written.
    waiting_here: Mutex<HashMap<String, (usize, Option<Instant>)>>,
    /// Other processes waiting for each destination, with when they last said so (ms).
    waiting_elsewhere: Mutex<HashMap<String, HashMap<String, u64>>>,
}

struct Held {
    destination: String,
    slot: usize,
    /// The destination's connection limit when this lease was last taken.
    limit: usize,
    revision: u64,
    in_use: bool,
    renewed: Instant,
    idle_since: Instant,
}

/// The right to one connection to a destination; given back when dropped.
pub struct Lease {
    key: String,
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease").field("key", &self.key).finish()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let destination = lock(&self.inner.held).get_mut(&self.key).map(|held| {
            held.in_use = false;
            held.idle_since = Instant::now();
            held.destination.clone()
        });
        if let Some(destination) = destination {
            self.inner.notify(&destination).notify_one();
        }
    }
}

/// One entry of this process waiting for a destination's connection; dropping it ends the wait.
pub struct Waiting {
    destination: String,
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Waiting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waiting")
            .field("destination", &self.destination)
            .finish()
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if let Some((count, _)) = lock(&self.inner.waiting_here).get_mut(&self.destination) {
            *count = count.saturating_sub(1);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// A process's share of `limit` connections when `others` other processes want some too.
pub fn fair_share(limit: usize, others: usize) -> usize {
    limit.div_ceil(others + 1).max(1)
}

impl Inner {
    /// What waiters for a lease of `destination` wait on.
    fn notify(&self, destination: &str) -> Arc<Notify> {
        lock(&self.freed)
            .entry(destination.to_string())
            .or_default()
            .clone()
    }

    /// This process's share of `destination`'s `limit` now.
    fn share(&self, destination: &str, limit: usize) -> usize {
        let now = now_ms();
        let others = lock(&self.waiting_elsewhere)
            .get(destination)
            .map_or(0, |holders| {
                holders
                    .iter()
                    .filter(|(holder, at)| {
                        **holder != self.holder && now.saturating_sub(**at) < WANT_FRESH_MS
                    })
                    .count()
            });
        fair_share(limit, others)
    }
}

impl Leases {
    /// Leases in `kv`, whose entries live `ttl` after their last write; this process renews
    /// its own until `shutdown`, then gives them back. One unused for `linger` goes back.
    pub fn start(
        kv: kv::Store,
        ttl: Duration,
        linger: Duration,
        shutdown: CancellationToken,
    ) -> Leases {
        let leases = Leases {
            inner: Arc::new(Inner {
                kv,
                holder: ulid::Ulid::new().to_string(),
                renew_every: ttl / 3,
                linger,
                held: Mutex::default(),
                freed: Mutex::default(),
                waiting_here: Mutex::default(),
                waiting_elsewhere: Mutex::default(),
            }),
        };
        let maintained = leases.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(MAINTAIN_EVERY) => maintained.maintain(false).await,
                }
            }
            maintained.maintain(true).await;
        });
        tokio::spawn(leases.clone().follow_wants(shutdown));
        leases
    }

    /// Keeps `waiting_elsewhere` up to date with the `want.` keys of the bucket.
    async fn follow_wants(self, shutdown: CancellationToken) {
        let kv = self.inner.kv.clone();
        super::follow_keys(&kv, "want.>", &shutdown, |entry| {
            let Some((destination, holder)) = entry
                .key
                .strip_prefix("want.")
                .and_then(|rest| rest.split_once('.'))
            else {
                return;
            };
            let mut elsewhere = lock(&self.inner.waiting_elsewhere);
            let holders = elsewhere.entry(destination.to_string()).or_default();
            match entry.operation {
                kv::Operation::Put => {
                    let at = std::str::from_utf8(&entry.value)
                        .ok()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    holders.insert(holder.to_string(), at);
                }
                kv::Operation::Delete | kv::Operation::Purge => {
                    holders.remove(holder);
                }
            }
            if holders.is_empty() {
                elsewhere.remove(destination);
            }
        })
        .await;
    }

    /// A free lease of `destination` among its first `limit` slots, if this process may have
    /// one more and there is one now.
    pub async fn try_acquire(
        &self,
        destination: &str,
        limit: usize,
    ) -> Result<Option<Lease>, async_nats::Error> {
        let share = self.inner.share(destination, limit);
        let taken: Vec<usize> = {
            let mut held = lock(&self.inner.held);
            let free = held
                .iter_mut()
                .find(|(_, h)| h.destination == destination && !h.in_use && h.slot < limit);
            if let Some((key, h)) = free {
                h.in_use = true;
                h.limit = limit;
                return Ok(Some(self.lease(key.clone())));
            }
            let mine: Vec<usize> = held
                .values()
                .filter(|h| h.destination == destination)
                .map(|h| h.slot)
                .collect();
            if mine.len() >= share {
                return Ok(None);
            }
            mine
        };
        let start = (ulid::Ulid::new().random() as usize) % limit.max(1);
        for slot in (0..limit).map(|i| (start + i) % limit) {
            if taken.contains(&slot) {
                continue;
            }
            let key = format!("{destination}.{slot}");
            match self
                .inner
                .kv
                .create(&key, self.inner.holder.clone().into())
                .await
            {
                Ok(revision) => {
                    let now = Instant::now();
                    lock(&self.inner.held).insert(
                        key.clone(),
                        Held {
                            destination: destination.to_string(),
                            slot,
                            limit,
                            revision,
                            in_use: true,
                            renewed: now,
                            idle_since: now,
                        },
                    );
                    return Ok(Some(self.lease(key)));
                }
                Err(err) if err.kind() == kv::CreateErrorKind::AlreadyExists => {}
                Err(err) => return Err(err.into()),
            }
        }
        Ok(None)
    }

    /// Says that an entry of this process waits for a connection of `destination`, until the
    /// returned guard is dropped.
    pub fn wait(&self, destination: &str) -> Waiting {
        lock(&self.inner.waiting_here)
            .entry(destination.to_string())
            .or_insert((0, None))
            .0 += 1;
        Waiting {
            destination: destination.to_string(),
            inner: self.inner.clone(),
        }
    }

    /// Entries of this process waiting for `destination` now.
    pub fn waiting(&self, destination: &str) -> usize {
        lock(&self.inner.waiting_here)
            .get(destination)
            .map_or(0, |(count, _)| *count)
    }

    /// Resolves when a lease of `destination` this process held is free again (one waiter per
    /// lease), or after `at_most` (another process may have given one back).
    pub async fn freed(&self, destination: &str, at_most: Duration) {
        let notify = self.inner.notify(destination);
        let _ = tokio::time::timeout(at_most, notify.notified()).await;
    }

    fn lease(&self, key: String) -> Lease {
        Lease {
            key,
            inner: self.inner.clone(),
        }
    }

    /// Renews the leases in use or used a moment ago and gives back the others (all of them
    /// when `all`, and those beyond this process's share); announces and withdraws wants.
    async fn maintain(&self, all: bool) {
        self.announce_wants(all).await;
        // Nobody waits on these any more.
        lock(&self.inner.freed).retain(|_, notify| Arc::strong_count(notify) > 1);
        let mut give_back = Vec::new();
        let mut renew = Vec::new();
        {
            let mut held = lock(&self.inner.held);
            let mut kept: HashMap<String, usize> = HashMap::new();
            for h in held.values() {
                *kept.entry(h.destination.clone()).or_default() += 1;
            }
            held.retain(|key, h| {
                let count = kept.get(&h.destination).copied().unwrap_or(0);
                let over_share = count > self.inner.share(&h.destination, h.limit);
                let idle = !h.in_use && (over_share || h.idle_since.elapsed() >= self.inner.linger);
                if all || idle {
                    if let Some(c) = kept.get_mut(&h.destination) {
                        *c -= 1;
                    }
                    give_back.push((key.clone(), h.revision));
                    false
                } else {
                    if h.renewed.elapsed() >= self.inner.renew_every {
                        renew.push((key.clone(), h.revision));
                    }
                    true
                }
            });
        }
        for (key, revision) in give_back {
            if let Err(err) = self
                .inner
                .kv
                .delete_expect_revision(&key, Some(revision))
                .await
            {
                debug!(%key, %err, "lease not given back; it expires");
            }
        }
        for (key, revision) in renew {
            let renewed = self
                .inner
                .kv
                .update(&key, self.inner.holder.clone().into(), revision)
                .await;
            let mut held = lock(&self.inner.held);
            match renewed {
                Ok(revision) => {
                    if let Some(h) = held.get_mut(&key) {
                        h.revision = revision;
                        h.renewed = Instant::now();
                    }
                }
                Err(err) => {
                    warn!(%key, %err, "connection lease lost; the connection using it finishes");
                    held.remove(&key);
                }
            }
        }
    }

    /// Writes `want.<destination>.<holder>` for each destination this process waits for (again
    /// every few seconds), and deletes it once nothing waits (or at shutdown, `all`).
    async fn announce_wants(&self, all: bool) {
        let mut write = Vec::new();
        let mut withdraw = Vec::new();
        {
            let mut here = lock(&self.inner.waiting_here);
            here.retain(|destination, (count, written)| {
                if *count == 0 || all {
                    if written.is_some() {
                        withdraw.push(destination.clone());
                    }
                    return *count > 0 && !all;
                }
                if written.is_none_or(|at| at.elapsed() >= WANT_EVERY) {
                    *written = Some(Instant::now());
                    write.push(destination.clone());
                }
                true
            });
        }
        for destination in write {
            let key = format!("want.{destination}.{}", self.inner.holder);
            if let Err(err) = self.inner.kv.put(&key, now_ms().to_string().into()).await {
                debug!(%key, %err, "want not written");
            }
        }
        for destination in withdraw {
            let key = format!("want.{destination}.{}", self.inner.holder);
            let _ = self.inner.kv.delete(&key).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fair_share;

    #[test]
    fn the_limit_is_shared_among_the_processes_that_want_it() {
        assert_eq!(fair_share(20, 0), 20);
        assert_eq!(fair_share(20, 1), 10);
        assert_eq!(fair_share(20, 2), 7);
        assert_eq!(fair_share(2, 4), 1, "everyone may have one");
    }
}
