//! What an attempt's replies mean for each recipient: delivered, bounced, retried at a time,
//! or bounced because the message grew too old. Pure; the worker does what it says.

use std::time::Duration;

use super::dsn::FailedRecipient;
use super::next_hop::RecipientResult;
use super::retry::{self, Retry};

/// The outcome of one attempt, recipient by recipient.
#[derive(Debug, Clone, Default)]
pub struct Settlement {
    pub delivered: Vec<RecipientResult>,
    /// To be reported to the sender: refused for good, or expired (`expired` set).
    pub bounced: Vec<FailedRecipient>,
    /// Temporary failures, to be tried again at `retry_at` (ms since the epoch).
    pub deferred: Vec<RecipientResult>,
    pub retry_at: Option<u64>,
}

/// When temporary failures are tried again.
#[derive(Debug, Clone)]
pub struct RetryPolicy<'a> {
    pub schedule: &'a [Duration],
    pub max_age: Duration,
}

/// Sorts the results of attempt number `attempt` of a message accepted at `received_at_ms`.
/// `jitter` in `[0, 1)` spreads retries.
pub fn settle(
    results: Vec<RecipientResult>,
    attempt: u32,
    policy: &RetryPolicy<'_>,
    received_at_ms: u64,
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
        attempt,
        received_at_ms,
        now_ms,
        jitter,
    ) {
        Retry::At(when) => settlement.retry_at = Some(when),
        Retry::Expired => {
            let expired = std::mem::take(&mut settlement.deferred);
            settlement
                .bounced
                .extend(expired.into_iter().map(|r| failed(r, true)));
        }
    }
    settlement
}

fn failed(result: RecipientResult, expired: bool) -> FailedRecipient {
    FailedRecipient {
        remote_host: result.host.filter(|_| result.from_server),
        recipient: result.recipient,
        reply: result.reply,
        expired,
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
        }
    }

    const HOUR: Duration = Duration::from_secs(3600);

    fn policy() -> RetryPolicy<'static> {
        const SCHEDULE: [Duration; 1] = [Duration::from_secs(60)];
        RetryPolicy {
            schedule: &SCHEDULE,
            max_age: HOUR,
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
        let s = settle(results, 1, &policy(), 0, 1_000, 0.5);
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
            9,
            &policy(),
            0,
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
    fn nothing_deferred_means_no_retry() {
        let s = settle(vec![result("a@x", 250, true)], 1, &policy(), 0, 0, 0.0);
        assert_eq!(s.retry_at, None);
        assert!(s.bounced.is_empty());
    }
}
