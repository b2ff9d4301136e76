//! When a temporary failure is tried again, and when it becomes a bounce.

use std::time::Duration;

/// What to do after an attempt that left recipients with temporary failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Try again this many milliseconds after the Unix epoch.
    At(u64),
    /// The message is older than `maxAge`: bounce with 4.4.7.
    Expired,
}

/// The next attempt after `attempts` attempts, with ±10 % jitter from `jitter` in `[0, 1)`.
/// The schedule's last interval repeats.
pub fn next_attempt(
    schedule: &[Duration],
    max_age: Duration,
    attempts: u32,
    received_at_ms: u64,
    now_ms: u64,
    jitter: f64,
) -> Retry {
    let age = Duration::from_millis(now_ms.saturating_sub(received_at_ms));
    if age >= max_age {
        return Retry::Expired;
    }
    let index = (attempts.max(1) as usize - 1).min(schedule.len().saturating_sub(1));
    let base = schedule
        .get(index)
        .copied()
        .unwrap_or(Duration::from_secs(300));
    let factor = 0.9 + 0.2 * jitter.clamp(0.0, 1.0);
    let delay = base.mul_f64(factor);
    Retry::At(now_ms + delay.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60_000;

    fn schedule() -> Vec<Duration> {
        [1, 5, 15]
            .into_iter()
            .map(|m| Duration::from_secs(m * 60))
            .collect()
    }

    #[test]
    fn follows_the_schedule_and_repeats_the_last_interval() {
        let max_age = Duration::from_secs(86_400);
        for (attempts, minutes) in [(1, 1), (2, 5), (3, 15), (4, 15), (40, 15)] {
            let retry = next_attempt(&schedule(), max_age, attempts, 0, 1_000, 0.5);
            assert_eq!(
                retry,
                Retry::At(1_000 + minutes * MIN),
                "after {attempts} attempts"
            );
        }
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        let max_age = Duration::from_secs(86_400);
        assert_eq!(
            next_attempt(&schedule(), max_age, 2, 0, 0, 0.0),
            Retry::At(5 * MIN * 9 / 10)
        );
        assert_eq!(
            next_attempt(&schedule(), max_age, 2, 0, 0, 1.0),
            Retry::At(5 * MIN * 11 / 10)
        );
    }

    #[test]
    fn expires_at_max_age() {
        let max_age = Duration::from_secs(3600);
        assert_eq!(
            next_attempt(&schedule(), max_age, 3, 0, 3_600_000, 0.5),
            Retry::Expired
        );
        assert!(matches!(
            next_attempt(&schedule(), max_age, 3, 0, 3_599_999, 0.5),
            Retry::At(_)
        ));
    }
}
