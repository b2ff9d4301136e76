//! Connection leases: a destination's connection limit as keys `<id>.<slot>` in a NATS KV
//! bucket whose entries expire unless renewed, so the limit holds across every delivery
//! process and a dead process's share comes back within the bucket's age. A process keeps a
//! lease as long as the session it opened may wait in the pool, so open sessions never
//! outnumber leases and a busy destination costs no KV writes per message.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use tokio::sync::Notify;
use tracing::{debug, warn};

/// How often leases are renewed and given back.
const MAINTAIN_EVERY: Duration = Duration::from_millis(500);

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
    /// Signalled whenever a lease of this process is free again.
    freed: Notify,
}

struct Held {
    destination: String,
    slot: usize,
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
        if let Some(held) = self.inner.lock().get_mut(&self.key) {
            held.in_use = false;
            held.idle_since = Instant::now();
        }
        self.inner.freed.notify_waiters();
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Held>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Leases {
    /// Leases in `kv`, whose entries live `ttl` after their last write; this process renews
    /// its own until `shutdown`, then gives them back. One unused for `linger` goes back.
    pub fn start(
        kv: kv::Store,
        ttl: Duration,
        linger: Duration,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Leases {
        let leases = Leases {
            inner: Arc::new(Inner {
                kv,
                holder: ulid::Ulid::new().to_string(),
                renew_every: ttl / 3,
                linger,
                held: Mutex::default(),
                freed: Notify::new(),
            }),
        };
        let maintained = leases.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(MAINTAIN_EVERY) => maintained.maintain(false).await,
                }
            }
            maintained.maintain(true).await;
        });
        leases
    }

    /// A free lease of `destination` among its first `limit` slots, if there is one now.
    pub async fn try_acquire(
        &self,
        destination: &str,
        limit: usize,
    ) -> Result<Option<Lease>, async_nats::Error> {
        let taken: Vec<usize> = {
            let mut held = self.inner.lock();
            let free = held
                .iter_mut()
                .find(|(_, h)| h.destination == destination && !h.in_use && h.slot < limit);
            if let Some((key, h)) = free {
                h.in_use = true;
                return Ok(Some(self.lease(key.clone())));
            }
            held.values()
                .filter(|h| h.destination == destination)
                .map(|h| h.slot)
                .collect()
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
                    self.inner.lock().insert(
                        key.clone(),
                        Held {
                            destination: destination.to_string(),
                            slot,
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

    /// Resolves when a lease of this process was given back, or after `at_most` (another
    /// process may have given one back).
    pub async fn freed(&self, at_most: Duration) {
        let _ = tokio::time::timeout(at_most, self.inner.freed.notified()).await;
    }

    fn lease(&self, key: String) -> Lease {
        Lease {
            key,
            inner: self.inner.clone(),
        }
    }

    /// Renews the leases in use or used a moment ago and gives back the others (all of them
    /// when `all`).
    async fn maintain(&self, all: bool) {
        let mut give_back = Vec::new();
        let mut renew = Vec::new();
        {
            let mut held = self.inner.lock();
            held.retain(|key, h| {
                if all || (!h.in_use && h.idle_since.elapsed() >= self.inner.linger) {
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
            let mut held = self.inner.lock();
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
}
