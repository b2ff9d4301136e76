//! Password checks for AUTH: a fixed pool of argon2 workers, and per-address throttling of
//! failed logins across connections.
//!
//! argon2 is made to be expensive: each check takes tens of megabytes for tens of
//! milliseconds. Checks therefore run on a few dedicated threads, each reusing its own memory,
//! with a short queue in front; when the queue is full a login gets `454 4.7.0` at once
//! instead of one more thread and one more allocation. Memory for checks stays at workers ×
//! the largest hash's cost, however many clients guess. An address with too many failures
//! within the window is refused before any check (`454 4.7.0`), across all its connections.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::users::{Users, Verifier};

/// How many checks may wait per worker.
const QUEUE_PER_WORKER: usize = 4;
/// Addresses remembered at most; the oldest are forgotten beyond that.
const MAX_ADDRESSES: usize = 100_000;

/// The outcome of one login attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    Verified,
    Refused,
    /// No check was made: too many waiting, or too many failures from the address.
    Unavailable,
}

struct Job {
    verifier: Arc<Verifier>,
    password: String,
    reply: oneshot::Sender<bool>,
}

/// The worker pool and the users it checks.
pub struct PasswordChecks {
    users: Users,
    jobs: SyncSender<Job>,
    throttle: Throttle,
}

impl std::fmt::Debug for PasswordChecks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordChecks").finish_non_exhaustive()
    }
}

impl PasswordChecks {
    /// Starts `workers` threads checking passwords of `users`; an address with
    /// `max_failures` failures within `window` is refused until they age out.
    pub fn start(
        users: Users,
        workers: usize,
        max_failures: u32,
        window: Duration,
    ) -> std::io::Result<PasswordChecks> {
        let workers = workers.max(1);
        let (jobs, queue) = std::sync::mpsc::sync_channel(workers * QUEUE_PER_WORKER);
        let queue = Arc::new(Mutex::new(queue));
        for index in 0..workers {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("postern-auth-{index}"))
                .spawn(move || work(&queue))?;
        }
        Ok(PasswordChecks {
            users,
            jobs,
            throttle: Throttle::new(max_failures, window),
        })
    }

    /// Checks one login from `client`.
    pub async fn check(&self, client: IpAddr, user: &str, password: String) -> Check {
        if self.throttle.blocked(client, Instant::now()) {
            return Check::Unavailable;
        }
        let (known, verifier) = self.users.verifier(user);
        let (reply, verdict) = oneshot::channel();
        let job = Job {
            verifier,
            password,
            reply,
        };
        match self.jobs.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                return Check::Unavailable;
            }
        }
        if verdict.await.unwrap_or(false) && known {
            Check::Verified
        } else {
            self.throttle.failed(client, Instant::now());
            Check::Refused
        }
    }
}

/// One worker: takes checks off the queue until the pool is dropped, always in the same memory
/// (allocated at its first check, grown only for a costlier hash).
fn work(queue: &Mutex<Receiver<Job>>) {
    let mut memory = Vec::new();
    loop {
        let job = match queue.lock().map(|queue| queue.recv()) {
            Ok(Ok(job)) => job,
            _ => return,
        };
        let verified = job.verifier.verify(job.password.as_bytes(), &mut memory);
        let _ = job.reply.send(verified);
    }
}

/// Failed logins per client address (IPv6 by /64, as one host usually holds the whole prefix).
struct Throttle {
    max: u32,
    window: Duration,
    failures: Mutex<HashMap<u128, (u32, Instant)>>,
}

impl Throttle {
    fn new(max: u32, window: Duration) -> Throttle {
        Throttle {
            max,
            window,
            failures: Mutex::default(),
        }
    }

    fn key(ip: IpAddr) -> u128 {
        match ip.to_canonical() {
            IpAddr::V4(v4) => u128::from(u32::from(v4)),
            IpAddr::V6(v6) => (u128::from(v6) >> 64) << 64 | 1,
        }
    }

    /// True while `ip` has `max` failures in the current window.
    fn blocked(&self, ip: IpAddr, now: Instant) -> bool {
        let failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        failures
            .get(&Self::key(ip))
            .is_some_and(|(count, since)| *count >= self.max && now < *since + self.window)
    }

    fn failed(&self, ip: IpAddr, now: Instant) {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if failures.len() >= MAX_ADDRESSES {
            let window = self.window;
            failures.retain(|_, (_, since)| now < *since + window);
            if failures.len() >= MAX_ADDRESSES {
                failures.clear();
            }
        }
        let entry = failures.entry(Self::key(ip)).or_insert((0, now));
        if now >= entry.1 + self.window {
            *entry = (0, now);
        }
        entry.0 += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::users::hash_password;

    fn users() -> Users {
        let hash = hash_password("right").unwrap();
        Users::parse(&format!("alice:{hash}\n")).unwrap()
    }

    #[tokio::test]
    async fn checks_passwords_and_throttles_an_address_after_its_failures() {
        let checks = PasswordChecks::start(users(), 1, 2, Duration::from_secs(60)).unwrap();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert_eq!(
            checks.check(a, "alice", "right".into()).await,
            Check::Verified
        );
        assert_eq!(
            checks.check(a, "alice", "wrong".into()).await,
            Check::Refused
        );
        assert_eq!(checks.check(a, "bob", "right".into()).await, Check::Refused);
        assert_eq!(
            checks.check(a, "alice", "right".into()).await,
            Check::Unavailable,
            "throttled, even with the right password"
        );
        assert_eq!(
            checks.check(b, "alice", "right".into()).await,
            Check::Verified
        );
    }

    #[tokio::test]
    async fn a_full_queue_answers_at_once() {
        let checks =
            Arc::new(PasswordChecks::start(users(), 1, 1000, Duration::from_secs(60)).unwrap());
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        let attempts: Vec<_> = (0..30)
            .map(|_| {
                let checks = checks.clone();
                tokio::spawn(async move { checks.check(ip, "alice", "wrong".into()).await })
            })
            .collect();
        let mut outcomes = Vec::new();
        for attempt in attempts {
            outcomes.push(attempt.await.unwrap());
        }
        let unavailable = outcomes
            .iter()
            .filter(|o| **o == Check::Unavailable)
            .count();
        let refused = outcomes.iter().filter(|o| **o == Check::Refused).count();
        assert!(unavailable > 0, "30 at once overflow 1 worker and 4 places");
        assert!((1..=1 + QUEUE_PER_WORKER).contains(&refused), "{refused}");
    }

    #[test]
    fn ipv6_addresses_of_one_prefix_share_their_failures() {
        let throttle = Throttle::new(1, Duration::from_secs(10));
        let now = Instant::now();
        throttle.failed("2001:db8::1".parse().unwrap(), now);
        assert!(throttle.blocked("2001:db8::ffff".parse().unwrap(), now));
        assert!(!throttle.blocked("2001:db8:0:1::1".parse().unwrap(), now));
        assert!(!throttle.blocked(
            "2001:db8::1".parse().unwrap(),
            now + Duration::from_secs(10)
        ));
    }
}
