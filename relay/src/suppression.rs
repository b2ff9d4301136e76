//! What the suppression list means for mail: which bounces put a recipient on it, and what a
//! message to a suppressed recipient gets (at RCPT, or from delivery as a bounce). The list
//! itself is `postern_queue::suppression`; `postern suppression` is `suppression_admin`.

use postern_queue::suppression::{Reason, Suppressed};
use postern_smtp::date::rfc3339_ms;
use postern_smtp::{Reject, Reply, Status};

use crate::delivery::dsn::{self, ReportedRecipient};

/// The refusal of a suppressed recipient: `550 5.1.1`, saying since when and why.
pub fn refusal(entry: &Suppressed) -> Reply {
    let why = match (&entry.reply, entry.reason) {
        (Some(reply), _) => format!(" after {reply}"),
        (None, Reason::Manual) => " by the administrator".to_string(),
        (None, Reason::Bounce) => String::new(),
    };
    Reply::new(
        550,
        Status(5, 1, 1),
        format!(
            "<{}> is on the suppression list since {}{why}",
            entry.address,
            rfc3339_ms(entry.added_ms)
        ),
    )
    .rejecting(Reject::Suppressed)
}

/// The entry a failed recipient puts on the list: a remote server refused it for good with one
/// of `statuses` (never Postern's own refusals, nor expiry, nor a refusal that is itself a
/// suppression).
pub fn caused_by(
    failed: &ReportedRecipient,
    statuses: &[String],
    queue_id: &str,
    now_ms: u64,
) -> Option<Suppressed> {
    let status = failed.reply.status?;
    let from_server = failed.remote_host.is_some();
    let listed = statuses.iter().any(|s| *s == status.to_string());
    if failed.expired || !from_server || failed.reply.class() != 5 || !listed {
        return None;
    }
    Some(Suppressed {
        address: failed.recipient.to_lowercase(),
        reason: Reason::Bounce,
        added_ms: now_ms,
        reply: Some(dsn::reply_text(&failed.reply)),
        queue_id: Some(queue_id.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(code: u16, status: Status, host: Option<&str>, expired: bool) -> ReportedRecipient {
        ReportedRecipient {
            recipient: "Gone@Example.ORG".into(),
            reply: Reply::new(code, status, "no such user"),
            remote_host: host.map(str::to_string),
            expired,
            tls: None,
        }
    }

    #[test]
    fn only_a_servers_permanent_no_such_user_suppresses() {
        let statuses = ["5.1.1".to_string(), "5.1.10".to_string()];
        let entry = caused_by(
            &failed(550, Status(5, 1, 1), Some("mx.example.org"), false),
            &statuses,
            "Q1",
            7,
        )
        .unwrap();
        assert_eq!(entry.address, "gone@example.org");
        assert_eq!(entry.reply.as_deref(), Some("550 5.1.1 no such user"));
        assert_eq!(entry.queue_id.as_deref(), Some("Q1"));
        for (reply, host, expired) in [
            ((550, Status(5, 7, 1)), Some("mx"), false),
            ((550, Status(5, 1, 1)), None, false),
            ((451, Status(4, 1, 1)), Some("mx"), false),
            ((550, Status(5, 1, 1)), Some("mx"), true),
        ] {
            assert!(
                caused_by(&failed(reply.0, reply.1, host, expired), &statuses, "Q", 0).is_none(),
                "{reply:?} {host:?} {expired}"
            );
        }
    }

    #[test]
    fn the_refusal_says_since_when_and_why() {
        let entry = Suppressed {
            address: "gone@example.org".into(),
            reason: Reason::Bounce,
            added_ms: 1_795_000_000_000,
            reply: Some("550 5.1.1 no such user".into()),
            queue_id: None,
        };
        let reply = refusal(&entry);
        assert_eq!((reply.code, reply.status), (550, Some(Status(5, 1, 1))));
        assert_eq!(
            reply.text(),
            "<gone@example.org> is on the suppression list since 2026-11-18T11:06:40.000Z after 550 5.1.1 no such user"
        );
        let manual = Suppressed {
            reason: Reason::Manual,
            reply: None,
            ..entry
        };
        assert!(refusal(&manual).text().ends_with(" by the administrator"));
    }
}
