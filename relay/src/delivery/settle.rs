//! What an attempt's replies mean for each recipient: delivered, bounced, retried at a time
//! (with a delay report once the message is old enough), or bounced because the message grew
//! too old. Pure; the worker does what it says.

use std::time::Duration;

use super::dsn::ReportedRecipient;
use super::next_hop::RecipientResult;
use super::retry::{self, Retry};

/// The outcome of one attempt, recipient by recipient.
#[derive(Debug, Clone, Default)]
pub struct Settlement {
    pub delivered: Vec<RecipientResult>,
    /// To be reported to the sender: refused for good, or expired (`expired` set).
    pub bounced: Vec<ReportedRecipient>,
    /// Temporary failures, to be tried again at `retry_at` (ms since the epoch).
    pub deferred: Vec<RecipientResult>,
    pub retry_at: Option<u64>,
    /// The deferred recipients are owed their delay report now: the message passed the delay
    /// warning age and its entry has not reported yet.
    pub delay_report: bool,
}

/// When temporary failures are tried again.
#[derive(Debug, Clone)]
pub struct RetryPolicy<'a> {
    pub schedule: &'a [Duration],
    pub max_age: Duration,
    /// Age after which a message still being retried gets its delay report; zero never.
    pub delay_warning: Duration,
}

/// Where an entry stands before this attempt.
#[derive(Debug, Clone, Copy)]
pub struct History {
    /// The number of this attempt, from 1.
    pub attempt: u32,
    /// When the message was accepted, ms since the epoch.
    pub received_at_ms: u64,
    /// Its delay report was sent already.
    pub delay_reported: bool,
}

/// Sorts the results of an attempt. `jitter` in `[0, 1)` spreads retries.
pub fn settle(
    results: Vec<RecipientResult>,
    history: History,
    policy: &RetryPolicy<'_>,
    now_ms: u64,
    jitter: f64,
) -> Settlement {
    let mut settlement = Settlement::default();
    for result in results {
        match result.reply.class() {
            2 => settlement.delivered.push(result),
            5 => settlement.bounced.push(failed(result, false)),
            _ => settlement.deferred.push(result),
        }
    }
    if settlement.deferred.is_empty() {
        return settlement;
    }
    match retry::next_attempt(
        policy.schedule,
        policy.max_age,
        history.attempt,
        history.received_at_ms,
        now_ms,
        jitter,
    ) {
        Retry::At(when) => {
            settlement.retry_at = Some(when);
            let age = now_ms.saturating_sub(history.received_at_ms);
            settlement.delay_report = !history.delay_reported
                && !policy.delay_warning.is_zero()
                && u128::from(age) >= policy.delay_warning.as_millis();
        }
        Retry::Expired => {
            let expired = std::mem::take(&mut settlement.deferred);
            settlement
                .bounced
                .extend(expired.into_iter().map(|r| failed(r, true)));
        }
    }
    settlement
}

fn failed(result: RecipientResult, expired: bool) -> ReportedRecipient {
    ReportedRecipient {
        remote_host: result.host.filter(|_| result.from_server),
        recipient: result.recipient,
        reply: result.reply,
        expired,
        tls: result.tls,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postern_smtp::{Reply, Status};

    fn result(recipient: &str, code: u16, from_server: bool) -> RecipientResult {
        let status = Status((code / 100) as u8, 0, 0);
        RecipientResult {
            recipient: recipient.into(),
            reply: Reply::new(code, status, "text"),
            host: Some("mx.example".into()),
            from_server,
            dsn_passed: false,
            tls: None,
        }
    }

    fn history(attempt: u32) -> History {
        History {
            attempt,
            received_at_ms: 0,
            delay_reported: false,
        }
    }

    const HOUR: Duration = Duration::from_secs(3600);

    fn policy() -> RetryPolicy<'static> {
        const SCHEDULE: [Duration; 1] = [Duration::from_secs(60)];
        RetryPolicy {
            schedule: &SCHEDULE,
            max_age: HOUR,
            delay_warning: Duration::from_secs(600),
        }
    }

    #[test]
    fn each_recipient_goes_its_own_way() {
        let results = vec![
            result("a@x", 250, true),
            result("b@x", 550, true),
            result("c@x", 451, true),
            result("d@x", 554, false),
        ];
        let s = settle(results, history(1), &policy(), 1_000, 0.5);
        assert_eq!(s.delivered.len(), 1);
        let bounced: Vec<_> = s.bounced.iter().map(|f| f.recipient.as_str()).collect();
        assert_eq!(bounced, ["b@x", "d@x"]);
        assert_eq!(s.bounced[0].remote_host.as_deref(), Some("mx.example"));
        assert_eq!(
            s.bounced[1].remote_host, None,
            "Postern's own decision names no host"
        );
        assert!(!s.bounced[0].expired);
        assert_eq!(s.deferred[0].recipient, "c@x");
        assert!(!s.delay_report, "a second old");
        assert_eq!(
            s.retry_at,
            Some(61_000),
            "a minute later, jitter in the middle"
        );
    }

    #[test]
    fn temporary_failures_of_a_message_past_max_age_bounce_as_expired() {
        let s = settle(
            vec![result("c@x", 451, true), result("a@x", 250, true)],
            history(9),
            &policy(),
            HOUR.as_millis() as u64,
            0.0,
        );
        assert!(s.deferred.is_empty());
        assert_eq!(s.retry_at, None);
        assert_eq!(s.bounced.len(), 1);
        assert!(s.bounced[0].expired);
        assert_eq!(s.delivered.len(), 1);
    }

    #[test]
    fn a_delay_report_is_owed_once_past_the_warning_age() {
        let deferred = || vec![result("c@x", 451, true)];
        let ten_minutes = 600_000;
        let s = settle(deferred(), history(3), &policy(), ten_minutes - 1, 0.0);
        assert!(!s.delay_report, "not old enough");
        let s = settle(deferred(), history(3), &policy(), ten_minutes, 0.0);
        assert!(s.delay_report && s.retry_at.is_some());
        let reported = History {
            delay_reported: true,
            ..history(4)
        };
        let s = settle(deferred(), reported, &policy(), ten_minutes * 2, 0.0);
        assert!(!s.delay_report, "only once");
        let never = RetryPolicy {
            delay_warning: Duration::ZERO,
            ..policy()
        };
        let s = settle(deferred(), history(3), &never, ten_minutes * 2, 0.0);
        assert!(!s.delay_report, "zero turns them off");
        let s = settle(
            deferred(),
            history(9),
            &policy(),
            HOUR.as_millis() as u64,
            0.0,
        );
        assert!(
            !s.delay_report && s.bounced[0].expired,
            "an expired message fails instead"
        );
        let s = settle(
            vec![result("a@x", 250, true)],
            history(3),
            &policy(),
            ten_minutes,
            0.0,
        );
        assert!(!s.delay_report, "nothing left to wait for");
    }

    #[test]
    fn nothing_deferred_means_no_retry() {
        let s = settle(
            vec![result("a@x", 250, true)],
            history(1),
            &policy(),
            0,
            0.0,
        );
        assert_eq!(s.retry_at, None);
        assert!(s.bounced.is_empty());
    }
}
