//! When a cached policy is used, fetched again or refreshed (RFC 8461 §5.1, §10.2), as pure
//! functions of the time, the TXT record and what the cache holds.

use std::time::Duration;

use super::policy::Policy;

/// A policy with the id it was fetched for and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cached {
    pub id: String,
    pub policy: Policy,
    pub fetched_ms: u64,
}

/// What the domain's `_mta-sts` TXT lookup said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A valid record with this policy id.
    Id(String),
    /// No MTA-STS record (or an invalid one).
    Absent,
    /// The lookup failed.
    Failed,
}

/// What to do for one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Apply the cached policy.
    Use,
    /// Fetch the policy; if that fails, apply the cached one while it lives.
    Fetch,
    /// Deliver without a policy.
    Nothing,
}

/// A policy refreshed this long after it was fetched at the latest, or after half its life
/// when that is shorter.
const REFRESH_AFTER: Duration = Duration::from_secs(24 * 3600);

impl Cached {
    /// The policy's `max_age` has passed since it was fetched.
    pub fn expired(&self, now_ms: u64) -> bool {
        now_ms >= self.fetched_ms.saturating_add(millis(self.policy.max_age))
    }

    /// Time to fetch the policy again before it expires, though the TXT record has not changed.
    pub fn refresh_due(&self, now_ms: u64) -> bool {
        let after = (self.policy.max_age / 2).min(REFRESH_AFTER);
        now_ms >= self.fetched_ms.saturating_add(millis(after))
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The decision for a delivery at `now_ms`: a live cached policy with the record's id is used;
/// a new id (or none cached) is fetched; without a record, a live cached policy still holds
/// until it expires (RFC 8461 §10.3: domains withdraw policies by publishing `mode: none`).
pub fn decide(now_ms: u64, record: &Record, cached: Option<&Cached>) -> Decision {
    let live = cached.filter(|c| !c.expired(now_ms));
    match (record, live) {
        (Record::Id(id), Some(cached)) if cached.id == *id => Decision::Use,
        (Record::Id(_), _) => Decision::Fetch,
        (Record::Absent | Record::Failed, Some(_)) => Decision::Use,
        (Record::Absent | Record::Failed, None) => Decision::Nothing,
    }
}

/// What applies when a fetch failed: the cached policy while it lives, else nothing.
pub fn after_failed_fetch(now_ms: u64, cached: Option<&Cached>) -> Decision {
    match cached {
        Some(cached) if !cached.expired(now_ms) => Decision::Use,
        _ => Decision::Nothing,
    }
}

#[cfg(test)]
mod tests {
    use super::super::policy::Mode;
    use super::*;

    const DAY: u64 = 24 * 3600 * 1000;

    fn cached(id: &str, fetched_ms: u64, max_age_days: u64) -> Cached {
        Cached {
            id: id.into(),
            policy: Policy {
                mode: Mode::Enforce,
                mx: vec!["mx.example".into()],
                max_age: Duration::from_secs(max_age_days * 24 * 3600),
            },
            fetched_ms,
        }
    }

    fn id(id: &str) -> Record {
        Record::Id(id.into())
    }

    #[test]
    fn the_same_id_uses_the_cache_until_it_expires() {
        let policy = cached("a", 0, 7);
        assert_eq!(decide(DAY, &id("a"), Some(&policy)), Decision::Use);
        assert_eq!(decide(7 * DAY - 1, &id("a"), Some(&policy)), Decision::Use);
        assert_eq!(decide(7 * DAY, &id("a"), Some(&policy)), Decision::Fetch);
    }

    #[test]
    fn a_new_id_or_an_empty_cache_fetches() {
        assert_eq!(
            decide(DAY, &id("b"), Some(&cached("a", 0, 7))),
            Decision::Fetch
        );
        assert_eq!(decide(DAY, &id("a"), None), Decision::Fetch);
    }

    #[test]
    fn without_a_record_a_live_policy_still_holds() {
        let policy = cached("a", 0, 7);
        for record in [Record::Absent, Record::Failed] {
            assert_eq!(decide(DAY, &record, Some(&policy)), Decision::Use);
            assert_eq!(decide(8 * DAY, &record, Some(&policy)), Decision::Nothing);
            assert_eq!(decide(DAY, &record, None), Decision::Nothing);
        }
    }

    #[test]
    fn a_failed_fetch_falls_back_to_a_live_policy() {
        let policy = cached("a", 0, 7);
        assert_eq!(after_failed_fetch(6 * DAY, Some(&policy)), Decision::Use);
        assert_eq!(
            after_failed_fetch(7 * DAY, Some(&policy)),
            Decision::Nothing
        );
        assert_eq!(after_failed_fetch(0, None), Decision::Nothing);
    }

    #[test]
    fn refresh_comes_before_expiry() {
        let week = cached("a", 0, 7);
        assert!(!week.refresh_due(DAY - 1));
        assert!(week.refresh_due(DAY), "a day at the latest");
        let hour = Cached {
            policy: Policy {
                max_age: Duration::from_secs(3600),
                ..week.policy.clone()
            },
            ..week
        };
        assert!(!hour.refresh_due(1800 * 1000 - 1));
        assert!(hour.refresh_due(1800 * 1000), "or half its life");
        assert!(!hour.expired(1800 * 1000));
    }
}
