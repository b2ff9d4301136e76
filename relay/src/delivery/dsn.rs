//! RFC 3464 delivery status notifications: the bounce sent to the sender of a message that
//! could not be delivered to some of its recipients. A report about a UTF-8 address, or
//! returning UTF-8 header fields, uses RFC 6533's `message/global-delivery-status` and
//! `message/global-headers`.

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
    let message = report.to_message();
    // UTF-8 in the report (addresses, the returned header fields) needs an 8BITMIME path.
    let eight_bit = !message.is_ascii();
    let submission = Submission {
        queue_id: id.clone(),
        sender: String::new(),
        recipients: vec![(envelope.sender.clone(), domain.to_ascii_lowercase())],
        content: Submitted::Whole(message),
        received_at_ms: postern_queue::now_ms(),
        client: ClientFacts {
            address: "127.0.0.1".into(),
            helo: hostname.to_string(),
            tls: None,
            auth_user: None,
        },
        // The report needs SMTPUTF8 only to reach a non-ASCII sender address.
        smtputf8: !envelope.sender.is_ascii(),
        eight_bit_mime: eight_bit,
        eight_bit,
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
        let status = self.status_fields();
        let headers = header_section(self.original);
        // RFC 6533 §6: UTF-8 in the status fields (an address, a host, a reply) needs the
        // global status type, UTF-8 in the returned header fields the global headers type.
        let status_type = if status.is_ascii() {
            "delivery-status"
        } else {
            "global-delivery-status"
        };
        let headers_type = if headers.is_ascii() {
            "text/rfc822-headers"
        } else {
            "message/global-headers"
        };
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
            "Content-Type: multipart/report; report-type={status_type};\r\n\tboundary=\"{boundary}\""
        ));
        line("");
        line("This is a MIME-encapsulated message.");
        line("");
        let mut message = m.into_bytes();
        push_part(
            &mut message,
            &boundary,
            "text/plain; charset=utf-8",
            self.explanation().as_bytes(),
        );
        push_part(
            &mut message,
            &boundary,
            &format!("message/{status_type}"),
            status.as_bytes(),
        );
        push_part(&mut message, &boundary, headers_type, headers);
        message.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        message
    }

    /// The first part, for people.
    fn explanation(&self) -> String {
        let mut text = format!(
            "This is the mail system at {}.\r\n\r\nYour message could not be delivered to one or more recipients.\r\n\r\n",
            self.hostname
        );
        for failed in self.recipients {
            let by = failed
                .remote_host
                .as_deref()
                .map(|h| format!(" host {h} said:"))
                .unwrap_or_default();
            text.push_str(&format!(
                "<{}>:{by} {}\r\n",
                failed.recipient,
                reply_text(&failed.reply)
            ));
            if failed.expired {
                text.push_str("    (gave up: the message was queued for too long)\r\n");
            }
        }
        text
    }

    /// The RFC 3464 fields: per message, then a block per recipient.
    fn status_fields(&self) -> String {
        let mut fields = format!(
            "Reporting-MTA: dns; {}\r\nX-Postern-Queue-ID: {}\r\nArrival-Date: {}\r\n",
            self.hostname,
            self.queue_id,
            rfc5322_date(self.arrival)
        );
        for failed in self.recipients {
            fields.push_str(&format!(
                "\r\nFinal-Recipient: {}\r\nAction: failed\r\nStatus: {}\r\n",
                recipient_field(&failed.recipient),
                status(failed)
            ));
            if let Some(host) = &failed.remote_host {
                fields.push_str(&format!(
                    "Remote-MTA: dns; {host}\r\nDiagnostic-Code: smtp; {}\r\n",
                    reply_text(&failed.reply)
                ));
            }
            fields.push_str(&format!(
                "Last-Attempt-Date: {}\r\n",
                rfc5322_date(self.now)
            ));
        }
        fields
    }
}

/// Appends one MIME part after its boundary line. A body that is not ASCII goes
/// quoted-printable (RFC 6533 lets the global types be encoded), so the report stays 7-bit
/// and reaches a sender whose server lacks 8BITMIME.
fn push_part(message: &mut Vec<u8>, boundary: &str, content_type: &str, body: &[u8]) {
    message
        .extend_from_slice(format!("--{boundary}\r\nContent-Type: {content_type}\r\n").as_bytes());
    if body.is_ascii() {
        message.extend_from_slice(b"\r\n");
        message.extend_from_slice(body);
    } else {
        message.extend_from_slice(b"Content-Transfer-Encoding: quoted-printable\r\n\r\n");
        message.extend_from_slice(quoted_printable(body).as_bytes());
    }
    message.extend_from_slice(b"\r\n");
}

/// RFC 2045 §6.7 quoted-printable of CRLF-terminated lines: printable ASCII as it is (but
/// `=`), everything else as `=XX`, a space or tab before a line end encoded, lines wrapped with
/// soft breaks under 76 characters.
fn quoted_printable(body: &[u8]) -> String {
    let mut out = String::with_capacity(body.len() * 2);
    for (i, line) in body.split(|&b| b == b'\n').enumerate() {
        if i > 0 {
            out.push_str("\r\n");
        }
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let mut width = 0;
        for (j, &byte) in line.iter().enumerate() {
            let last = j + 1 == line.len();
            let literal = matches!(byte, b'!'..=b'<' | b'>'..=b'~')
                || (matches!(byte, b' ' | b'\t') && !last);
            let encoded = if literal {
                char::from(byte).to_string()
            } else {
                format!("={byte:02X}")
            };
            if width + encoded.len() > 75 {
                out.push_str("=\r\n");
                width = 0;
            }
            width += encoded.len();
            out.push_str(&encoded);
        }
    }
    out
}

/// A recipient's address with its type: `rfc822` for an ASCII address, else RFC 6533's `utf-8`
/// in its unitext form (UTF-8 as it is; `+`, `=`, `\\`, spaces and controls as `\\x{HEX}`).
fn recipient_field(address: &str) -> String {
    if address.is_ascii() {
        return format!("rfc822; {address}");
    }
    let mut field = String::from("utf-8; ");
    for c in address.chars() {
        if matches!(c, '+' | '=' | '\\') || c.is_whitespace() || c.is_control() {
            field.push_str(&format!("\\x{{{:X}}}", u32::from(c)));
        } else {
            field.push(c);
        }
    }
    field
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

    /// `(content type, decoded body)` of each part of a multipart message, read by mail-parser.
    fn report_parts(message: &[u8]) -> (String, Vec<(String, String)>) {
        use mail_parser::{MessageParser, MimeHeaders, PartType};
        let parsed = MessageParser::default().parse(message).unwrap();
        let type_of = |part: &mail_parser::MessagePart| {
            let ct = part.content_type().unwrap();
            format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or_default())
        };
        let root = &parsed.parts[0];
        let report_type = root
            .content_type()
            .and_then(|ct| ct.attribute("report-type"))
            .unwrap()
            .to_string();
        let PartType::Multipart(ids) = &root.body else {
            panic!("not multipart");
        };
        let parts = ids
            .iter()
            .map(|&id| {
                let part = &parsed.parts[id as usize];
                let decoded = String::from_utf8(part.contents().to_vec()).unwrap();
                (type_of(part), decoded)
            })
            .collect();
        (report_type, parts)
    }

    #[test]
    fn utf8_addresses_and_header_fields_make_a_global_report() {
        let recipients = [
            FailedRecipient {
                recipient: "jörg+news@bücher.example".into(),
                reply: Reply::new(550, Status(5, 1, 1), "no such user"),
                remote_host: Some("mx.bücher.example".into()),
                expired: false,
            },
            FailedRecipient {
                recipient: "plain@example.org".into(),
                reply: Reply::new(550, Status(5, 1, 1), "no such user"),
                remote_host: None,
                expired: false,
            },
        ];
        let report = Report {
            hostname: "relay.test",
            queue_id: "01ID",
            sender: "a@example.com",
            arrival: UNIX_EPOCH,
            now: UNIX_EPOCH,
            recipients: &recipients,
            original: "Subject: Grüße\r\n\r\nbody\r\n".as_bytes(),
        };
        let message = report.to_message();
        assert!(
            message.is_ascii(),
            "quoted-printable keeps the report 7-bit"
        );
        let (report_type, parts) = report_parts(&message);
        assert_eq!(report_type, "global-delivery-status");
        assert!(
            parts[0].1.contains("<jörg+news@bücher.example>: host mx.bücher.example said: 550 5.1.1 no such user\r\n"),
            "{}",
            parts[0].1
        );
        assert_eq!(
            parts_of_types(&message),
            [
                "text/plain",
                "message/global-delivery-status",
                "message/global-headers"
            ]
        );
        let status = &parts[1].1;
        assert!(
            status.contains("\r\nFinal-Recipient: utf-8; jörg\\x{2B}news@bücher.example\r\n"),
            "{status}"
        );
        assert!(
            status.contains("\r\nFinal-Recipient: rfc822; plain@example.org\r\n"),
            "{status}"
        );
        assert!(
            parts[2].1.starts_with("Subject: Grüße\r\n"),
            "{}",
            parts[2].1
        );

        // ASCII addresses keep the RFC 3464 types; UTF-8 header fields alone get global headers.
        let ascii = &recipients[1..];
        let report = Report {
            recipients: ascii,
            ..report
        };
        let (report_type, parts) = report_parts(&report.to_message());
        assert_eq!(report_type, "delivery-status");
        assert_eq!(parts[1].0, "message/delivery-status");
        assert_eq!(parts[2].0, "message/global-headers");
        let report = Report {
            original: b"Subject: plain\r\n\r\nbody\r\n",
            ..report
        };
        assert_eq!(
            parts_of_types(&report.to_message())[2],
            "text/rfc822-headers"
        );
    }

    #[test]
    fn quoted_printable_keeps_lines_and_wraps_long_ones() {
        assert_eq!(quoted_printable(b"plain\r\n"), "plain\r\n");
        assert_eq!(quoted_printable("a=b é\r\n".as_bytes()), "a=3Db =C3=A9\r\n");
        assert_eq!(
            quoted_printable(b"trailing \r\ntab\t\r\n"),
            "trailing=20\r\ntab=09\r\n"
        );
        let long = quoted_printable("é".repeat(40).as_bytes());
        let lines: Vec<&str> = long.split("\r\n").collect();
        assert!(lines.iter().all(|l| l.len() <= 76), "{long}");
        assert!(lines[0].ends_with('='), "a soft break: {long}");
        let decoded =
            mail_parser::decoders::quoted_printable::quoted_printable_decode(long.as_bytes());
        assert_eq!(decoded.as_deref(), Some("é".repeat(40).as_bytes()));
    }

    fn parts_of_types(message: &[u8]) -> Vec<String> {
        report_parts(message)
            .1
            .into_iter()
            .map(|(t, _)| t)
            .collect()
    }
}
