//! What every delivery process knows about one destination, and how an attempt's result
//! changes it: consecutive failures put it into backoff, a request to slow down halves its
//! connections and rate for a while, one session that reaches it clears the failures. Pure:
//! the store applies these transitions with compare-and-set.

use postern_config::BackoffConfig;
use postern_smtp::{Reply, Status};
use serde::{Deserialize, Serialize};

/// Halvings a destination's limits take at most when it keeps asking to slow down.
pub const MAX_SLOW_DOWN: u32 = 4;

/// A destination's shared state, as stored in NATS KV.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct State {
    /// What the destination is (`mx1.example.com,mx2.example.com`, a route's `host:port`, or
    /// the pattern of `delivery.destinations` that groups it).
    pub name: String,
    /// Consecutive attempts that could not reach it.
    pub failures: u32,
    /// No process connects to it before this time (milliseconds since the Unix epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_until_ms: Option<u64>,
    /// The length of the current backoff, doubled by each failure after it.
    #[serde(default)]
    pub backoff_ms: u64,
    /// Why it last failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<String>,
    /// Its limits are halved `slow_down` times until this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow_until_ms: Option<u64>,
    #[serde(default)]
    pub slow_down: u32,
}

/// What one attempt says about its destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    /// A session was established: the destination is alive.
    Reached,
    /// No host of it could be reached, or it refused the session (4xx greeting, 421).
    Unreachable(String),
    /// It answered, asking the sender to send less.
    SlowDown(String),
}

impl State {
    pub fn named(name: &str) -> State {
        State {
            name: name.to_string(),
            ..State::default()
        }
    }

    /// Until when nobody may connect, if it is in backoff now.
    pub fn backoff(&self, now_ms: u64) -> Option<u64> {
        self.backoff_until_ms.filter(|until| *until > now_ms)
    }

    /// How many times its limits are halved now.
    pub fn halvings(&self, now_ms: u64) -> u32 {
        match self.slow_until_ms {
            Some(until) if until > now_ms => self.slow_down,
            _ => 0,
        }
    }

    /// The state after `signal`; `None` when nothing changes, so that nothing is written.
    pub fn after(&self, signal: &Signal, now_ms: u64, config: &BackoffConfig) -> Option<State> {
        let mut next = self.clone();
        match signal {
            Signal::Reached => {
                if self.failures == 0 && self.backoff_until_ms.is_none() {
                    return None;
                }
                next.failures = 0;
                next.backoff_until_ms = None;
                next.backoff_ms = 0;
            }
            Signal::Unreachable(reason) => {
                if self.backoff(now_ms).is_some() {
                    // Attempts begun before the backoff: it already accounts for them.
                    return None;
                }
                next.failures = self.failures.saturating_add(1);
                next.last_failure = Some(reason.clone());
                if next.failures >= config.after_failures {
                    let max = millis(config.max.get());
                    next.backoff_ms = match self.backoff_ms {
                        0 => millis(config.initial.get()),
                        previous => previous.saturating_mul(2),
                    }
                    .min(max);
                    next.backoff_until_ms = Some(now_ms + next.backoff_ms);
                }
            }
            Signal::SlowDown(reason) => {
                let current = self.halvings(now_ms);
                next.slow_down = (current + 1).min(MAX_SLOW_DOWN);
                next.slow_until_ms = Some(now_ms + millis(config.slow_down.get()));
                next.last_failure = Some(reason.clone());
            }
        }
        Some(next)
    }
}

fn millis(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// True for a reply that asks the sender to send less: RFC 3463 4.7.28 (Gmail's rate
/// limit), Microsoft's 4.7.650 and 4.7.500-4.7.899 throttling range, and 4xx texts that
/// speak of rates or too many messages or connections.
pub fn asks_to_slow_down(reply: &Reply) -> bool {
    if reply.class() != 4 {
        return false;
    }
    if let Some(Status(4, 7, detail)) = reply.status
        && (detail == 28 || (500..900).contains(&detail))
    {
        return true;
    }
    let text = reply.text().to_ascii_lowercase();
    [
        "rate limit",
        "ratelimit",
        "throttl",
        "too many",
        "slow down",
        "try again later",
    ]
    .iter()
    .any(|phrase| text.contains(phrase))
}

/// A generic cell rate reservation: given the theoretical arrival time `tat_ms` of the
/// destination's next message, when a message asked for at `now_ms` may go, and the new
/// arrival time. Up to `burst` messages go at once; after that one per `interval_ms`.
pub fn reserve(tat_ms: u64, now_ms: u64, interval_ms: u64, burst: u32) -> Reservation {
    let tolerance = interval_ms.saturating_mul(u64::from(burst.max(1) - 1));
    let go_at = now_ms.max(tat_ms.saturating_sub(tolerance));
    Reservation {
        go_at_ms: go_at,
        next_tat_ms: tat_ms.max(go_at) + interval_ms,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation {
    pub go_at_ms: u64,
    pub next_tat_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use postern_config::Duration;

    fn config() -> BackoffConfig {
        BackoffConfig {
            after_failures: 3,
            initial: Duration::secs(30),
            max: Duration::secs(100),
            slow_down: Duration::secs(600),
        }
    }

    fn fail(state: &State, now: u64) -> State {
        state
            .after(&Signal::Unreachable("refused".into()), now, &config())
            .expect("a failure outside backoff changes the state")
    }

    #[test]
    fn backoff_starts_after_the_configured_failures_and_doubles_up_to_the_cap() {
        let mut state = State::named("mx.example.com");
        state = fail(&state, 0);
        state = fail(&state, 1);
        assert_eq!(
            state.backoff(2),
            None,
            "two failures are not yet a dead destination"
        );
        state = fail(&state, 2);
        assert_eq!(state.backoff(3), Some(30_002));
        // A probe after the backoff fails: twice as long, then capped.
        state = fail(&state, 30_002);
        assert_eq!(state.backoff_ms, 60_000);
        state = fail(&state, 90_002);
        assert_eq!(state.backoff_ms, 100_000);
        assert_eq!(state.backoff(90_003), Some(190_002));
    }

    #[test]
    fn failures_of_attempts_begun_before_the_backoff_do_not_lengthen_it() {
        let mut state = State::named("d");
        for now in 0..3 {
            state = fail(&state, now);
        }
        let unchanged = state.after(&Signal::Unreachable("late".into()), 10, &config());
        assert_eq!(unchanged, None);
    }

    #[test]
    fn one_session_that_reaches_it_clears_failures_and_backoff() {
        let mut state = State::named("d");
        for now in 0..3 {
            state = fail(&state, now);
        }
        let cleared = state
            .after(&Signal::Reached, 40_000, &config())
            .expect("changes");
        assert_eq!(cleared.failures, 0);
        assert_eq!(cleared.backoff(40_001), None);
        // The next failure starts counting again, and the next backoff from the start.
        let again = fail(&fail(&fail(&cleared, 50_000), 50_001), 50_002);
        assert_eq!(again.backoff_ms, 30_000);
        assert_eq!(
            State::named("d").after(&Signal::Reached, 0, &config()),
            None,
            "a healthy destination is not written to on every delivery"
        );
    }

    #[test]
    fn slowing_down_halves_for_a_while_and_at_most_four_times() {
        let slow = |state: &State, now| {
            state
                .after(&Signal::SlowDown("421 4.7.28".into()), now, &config())
                .expect("changes")
        };
        let mut state = slow(&State::named("d"), 0);
        assert_eq!(state.halvings(1), 1);
        for now in 1..10 {
            state = slow(&state, now);
        }
        assert_eq!(state.halvings(10), MAX_SLOW_DOWN);
        assert_eq!(state.halvings(600_010), 0, "over after backoff.slowDown");
        // Once over, a new request starts from one halving.
        assert_eq!(slow(&state, 700_000).halvings(700_001), 1);
    }

    #[test]
    fn recognises_requests_to_slow_down() {
        let yes = [
            Reply::new(
                421,
                Status(4, 7, 28),
                "Our system has detected an unusual rate",
            ),
            Reply::new(
                451,
                Status(4, 7, 650),
                "The mail server has been temporarily rate limited",
            ),
            Reply::new(421, Status(4, 7, 0), "Too many connections from your IP"),
            Reply::new(450, Status(4, 2, 1), "Throttled, try again later"),
        ];
        for reply in yes {
            assert!(asks_to_slow_down(&reply), "{reply:?}");
        }
        let no = [
            Reply::new(451, Status(4, 3, 0), "Temporary local problem"),
            Reply::new(450, Status(4, 2, 2), "Mailbox full"),
            Reply::new(550, Status(5, 7, 28), "Rate limit exceeded permanently"),
            Reply::new(421, Status(4, 7, 0), "TLS required"),
        ];
        for reply in no {
            assert!(!asks_to_slow_down(&reply), "{reply:?}");
        }
    }

    #[test]
    fn reservations_allow_the_burst_then_one_per_interval() {
        let mut tat = 0;
        let mut times = Vec::new();
        for _ in 0..5 {
            let r = reserve(tat, 1_000, 100, 3);
            tat = r.next_tat_ms;
            times.push(r.go_at_ms);
        }
        assert_eq!(times, [1_000, 1_000, 1_000, 1_100, 1_200]);
        // Idle time refills the burst, but never beyond it.
        let r = reserve(tat, 10_000, 100, 3);
        assert_eq!(r.go_at_ms, 10_000);
        assert_eq!(r.next_tat_ms, 10_100);
    }
}
