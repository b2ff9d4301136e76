//! RFC 3464 delivery status notifications: the bounce sent to the sender of a message that
//! could not be delivered to some of its recipients.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use postern_smtp::Reply;
use tracing::info;

use postern_queue::entry::Envelope;
use postern_queue::{ClientFacts, EnqueueError, Queue, Submission, Submitted};
use postern_smtp::date::rfc5322_date;

/// Queues the report about `failed` recipients of `envelope` to its sender, as `hostname`;
/// nothing for the null sender. Returns the report's queue id.
pub async fn queue_bounce(
    queue: &Queue,
    hostname: &str,
    envelope: &Envelope,
    original: &[u8],
    failed: &[FailedRecipient],
) -> Result<Option<String>, EnqueueError> {
    let Some((_, domain)) = envelope.sender.rsplit_once('@') else {
        info!(queue_id = %envelope.queue_id, "no bounce for a message from the null sender");
        return Ok(None);
    };
    let now = SystemTime::now();
    let report = Report {
        hostname,
        queue_id: &envelope.queue_id,
        sender: &envelope.sender,
        arrival: UNIX_EPOCH + Duration::from_millis(envelope.received_at_ms),
        now,
        recipients: failed,
        original,
    };
    let id = ulid::Ulid::new().to_string();
    let submission = Submission {
        queue_id: id.clone(),
        sender: String::new(),
        recipients: vec![(envelope.sender.clone(), domain.to_ascii_lowercase())],
        content: Submitted::Whole(report.to_message()),
        received_at_ms: postern_queue::now_ms(),
        client: ClientFacts {
            address: "127.0.0.1".into(),
            helo: hostname.to_string(),
            tls: None,
            auth_user: None,
        },
        // The report needs SMTPUTF8 only to reach a non-ASCII sender address.
        smtputf8: !envelope.sender.is_ascii(),
        eight_bit_mime: false,
        eight_bit: false,
        traceparent: envelope.traceparent.clone(),
    };
    queue.enqueue(submission).await?;
    info!(queue_id = %envelope.queue_id, bounce_id = %id, to = %envelope.sender, "bounce queued");
    Ok(Some(id))
}

/// One recipient the message could not be delivered to.
#[derive(Debug, Clone)]
pub struct FailedRecipient {
    pub recipient: String,
    /// The remote server's reply, or Postern's own reason.
    pub reply: Reply,
    /// The host that gave the reply, when a server did.
    pub remote_host: Option<String>,
    /// Set when the reason is the message's age (4.4.7) rather than the reply itself.
    pub expired: bool,
}

impl FailedRecipient {
    /// Each of `recipients` failed with `reply`, Postern's own (no remote host).
    pub fn each(recipients: &[String], reply: &Reply, expired: bool) -> Vec<FailedRecipient> {
        recipients
            .iter()
            .map(|recipient| FailedRecipient {
                recipient: recipient.clone(),
                reply: reply.clone(),
                remote_host: None,
                expired,
            })
            .collect()
    }
}

/// Everything a bounce says.
#[derive(Debug, Clone)]
pub struct Report<'a> {
    /// The reporting MTA (`hostname` in the config).
    pub hostname: &'a str,
    pub queue_id: &'a str,
    /// The original sender, who receives the report.
    pub sender: &'a str,
    pub arrival: SystemTime,
    pub now: SystemTime,
    pub recipients: &'a [FailedRecipient],
    /// The original message; its header section is attached.
    pub original: &'a [u8],
}

impl Report<'_> {
    /// The whole report message, CRLF line endings, ready to be queued from `<>`.
    pub fn to_message(&self) -> Vec<u8> {
        let boundary = format!("=_postern_{}", self.queue_id);
        let mut m = String::new();
        let mut line = |text: &str| {
            m.push_str(text);
            m.push_str("\r\n");
        };
        line(&format!(
            "From: Mail Delivery System <MAILER-DAEMON@{}>",
            self.hostname
        ));
        line(&format!("To: <{}>", self.sender));
        line("Subject: Undelivered Mail Returned to Sender");
        line(&format!("Date: {}", rfc5322_date(self.now)));
        line(&format!(
            "Message-ID: <{}.bounce@{}>",
            self.queue_id, self.hostname
        ));
        line("Auto-Submitted: auto-replied");
        line("MIME-Version: 1.0");
        line(&format!(
            "Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\""
        ));
        line("");
        line("This is a MIME-encapsulated message.");
        line("");
        line(&format!("--{boundary}"));
        line("Content-Type: text/plain; charset=utf-8");
        line("");
        line(&format!("This is the mail system at {}.", self.hostname));
        line("");
        line("Your message could not be delivered to one or more recipients.");
        line("");
        for failed in self.recipients {
            let by = failed
                .remote_host
                .as_deref()
                .map(|h| format!(" host {h} said:"))
                .unwrap_or_default();
            line(&format!(
                "<{}>:{by} {}",
                failed.recipient,
                reply_text(&failed.reply)
            ));
            if failed.expired {
                line("    (gave up: the message was queued for too long)");
            }
        }
        line("");
        line(&format!("--{boundary}"));
        line("Content-Type: message/delivery-status");
        line("");
        line(&format!("Reporting-MTA: dns; {}", self.hostname));
        line(&format!("X-Postern-Queue-ID: {}", self.queue_id));
        line(&format!("Arrival-Date: {}", rfc5322_date(self.arrival)));
        for failed in self.recipients {
            line("");
            line(&format!("Final-Recipient: rfc822; {}", failed.recipient));
            line("Action: failed");
            line(&format!("Status: {}", status(failed)));
            if let Some(host) = &failed.remote_host {
                line(&format!("Remote-MTA: dns; {host}"));
                line(&format!(
                    "Diagnostic-Code: smtp; {}",
                    reply_text(&failed.reply)
                ));
            }
            line(&format!("Last-Attempt-Date: {}", rfc5322_date(self.now)));
        }
        line("");
        line(&format!("--{boundary}"));
        line("Content-Type: text/rfc822-headers");
        line("");
        let mut message = m.into_bytes();
        message.extend_from_slice(header_section(self.original));
        message.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        message
    }
}

/// The RFC 3463 status of a recipient: 4.4.7 for expiry, else the reply's own or its class's.
fn status(failed: &FailedRecipient) -> String {
    if failed.expired {
        return "4.4.7".to_string();
    }
    match failed.reply.status {
        Some(status) => status.to_string(),
        None => format!("{}.0.0", failed.reply.class()),
    }
}

/// A reply on one line, as `550 5.1.1 text`.
fn reply_text(reply: &Reply) -> String {
    let status = reply.status.map(|s| format!("{s} ")).unwrap_or_default();
    let text: String = reply
        .text()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    format!("{} {status}{text}", reply.code)
}

/// The header section of a message, ending with its last header line's CRLF.
fn header_section(message: &[u8]) -> &[u8] {
    match message.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(end) => &message[..end + 2],
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postern_smtp::Status;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn report_structure() {
        let recipients = [
            FailedRecipient {
                recipient: "nobody@example.org".into(),
                reply: Reply::new(550, Status(5, 1, 1), "no such user"),
                remote_host: Some("mx.example.org".into()),
                expired: false,
            },
            FailedRecipient {
                recipient: "slow@example.org".into(),
                reply: Reply::new(451, Status(4, 2, 0), "try later"),
                remote_host: Some("mx.example.org".into()),
                expired: true,
            },
        ];
        let report = Report {
            hostname: "relay.test",
            queue_id: "01ID",
            sender: "a@example.com",
            arrival: UNIX_EPOCH,
            now: UNIX_EPOCH + Duration::from_secs(86_400),
            recipients: &recipients,
            original: b"Received: x\r\nSubject: hi\r\n\r\nsecret body\r\n",
        };
        let text = String::from_utf8(report.to_message()).unwrap();
        let expected = "From: Mail Delivery System <MAILER-DAEMON@relay.test>\r
To: <a@example.com>\r
Subject: Undelivered Mail Returned to Sender\r
Date: Fri, 2 Jan 1970 00:00:00 +0000\r
Message-ID: <01ID.bounce@relay.test>\r
Auto-Submitted: auto-replied\r
MIME-Version: 1.0\r
Content-Type: multipart/report; report-type=delivery-status;\r
\tboundary=\"=_postern_01ID\"\r
\r
This is a MIME-encapsulated message.\r
\r
--=_postern_01ID\r
Content-Type: text/plain; charset=utf-8\r
\r
This is the mail system at relay.test.\r
\r
Your message could not be delivered to one or more recipients.\r
\r
<nobody@example.org>: host mx.example.org said: 550 5.1.1 no such user\r
<slow@example.org>: host mx.example.org said: 451 4.2.0 try later\r
    (gave up: the message was queued for too long)\r
\r
--=_postern_01ID\r
Content-Type: message/delivery-status\r
\r
Reporting-MTA: dns; relay.test\r
X-Postern-Queue-ID: 01ID\r
Arrival-Date: Thu, 1 Jan 1970 00:00:00 +0000\r
\r
Final-Recipient: rfc822; nobody@example.org\r
Action: failed\r
Status: 5.1.1\r
Remote-MTA: dns; mx.example.org\r
Diagnostic-Code: smtp; 550 5.1.1 no such user\r
Last-Attempt-Date: Fri, 2 Jan 1970 00:00:00 +0000\r
\r
Final-Recipient: rfc822; slow@example.org\r
Action: failed\r
Status: 4.4.7\r
Remote-MTA: dns; mx.example.org\r
Diagnostic-Code: smtp; 451 4.2.0 try later\r
Last-Attempt-Date: Fri, 2 Jan 1970 00:00:00 +0000\r
\r
--=_postern_01ID\r
Content-Type: text/rfc822-headers\r
\r
Received: x\r
Subject: hi\r
\r
--=_postern_01ID--\r
";
        assert_eq!(text, expected);
        assert!(
            !text.contains("secret body"),
            "only the headers are returned"
        );
        assert!(postern_smtp::body::is_clean(text.as_bytes()));
    }
}
