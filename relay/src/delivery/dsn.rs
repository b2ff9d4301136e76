//! RFC 3464 delivery status notifications: the reports sent to the sender of a message about
//! recipients it could not be delivered to, is still being tried for, or was relayed for to a
//! server that sends no reports of its own, as the sender asked with RFC 3461's NOTIFY (failures
//! only when it did not say). A report about a UTF-8 address, or returning UTF-8 header fields,
//! uses RFC 6533's `message/global-delivery-status` and `message/global-headers`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use postern_smtp::Reply;
use postern_smtp::dsn::{DsnRequest, OriginalRecipient, Ret};
use tracing::{debug, info};

use postern_queue::entry::Envelope;
use postern_queue::events::TlsDetails;
use postern_queue::{ClientFacts, EnqueueError, Queue, Submission, Submitted};
use postern_smtp::date::rfc5322_date;

/// What a report says happened to its recipients (RFC 3464 §2.3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Failed,
    /// Still being tried, until the given time.
    Delayed {
        until: SystemTime,
    },
    /// Handed to a next hop that does not offer DSN (RFC 3461 §5.2.2).
    Relayed,
}

impl Action {
    /// The `Action` field's value, also the metrics label.
    pub fn word(self) -> &'static str {
        match self {
            Action::Failed => "failed",
            Action::Delayed { .. } => "delayed",
            Action::Relayed => "relayed",
        }
    }
}

/// The original message as a report may return it.
#[derive(Debug, Clone, Copy)]
pub struct Original<'a> {
    /// Its start (the whole of it when `whole`): at least the header section.
    pub bytes: &'a [u8],
    pub whole: bool,
}

/// What [`queue_report`] did.
#[derive(Debug, Default)]
pub struct Queued {
    /// The report's queue id, if one was queued.
    pub id: Option<String>,
    /// Recipients left out because their NOTIFY did not ask for this report.
    pub not_requested: usize,
}

/// Queues the report of `action` about those of `recipients` whose sender asked for it, as
/// `hostname`; nothing for the null sender or when nobody asked. `original` gives the start of
/// the message and whether it is the whole of it, read only when a report is made.
pub async fn queue_report(
    queue: &Queue,
    hostname: &str,
    envelope: &Envelope,
    action: Action,
    recipients: Vec<ReportedRecipient>,
    original: impl FnOnce() -> (Vec<u8>, bool),
) -> Result<Queued, EnqueueError> {
    let Some((_, domain)) = envelope.sender.rsplit_once('@') else {
        info!(queue_id = %envelope.queue_id, action = action.word(), "no report for a message from the null sender");
        return Ok(Queued::default());
    };
    let (wanted, unwanted): (Vec<_>, Vec<_>) = recipients.into_iter().partition(|r| {
        let asked = envelope.dsn.recipient(&r.recipient);
        match action {
            Action::Failed => asked.wants_failure(),
            Action::Delayed { .. } => asked.wants_delay(),
            Action::Relayed => asked.wants_success(),
        }
    });
    for r in &unwanted {
        if action == Action::Failed {
            info!(queue_id = %envelope.queue_id, rcpt = %r.recipient, "no failure report: NOTIFY excludes it");
        } else {
            debug!(queue_id = %envelope.queue_id, rcpt = %r.recipient, action = action.word(), "no report: not requested");
        }
    }
    let not_requested = unwanted.len();
    if wanted.is_empty() {
        return Ok(Queued {
            id: None,
            not_requested,
        });
    }
    let id = ulid::Ulid::new().to_string();
    let (bytes, whole) = original();
    let original = Original {
        bytes: &bytes,
        whole,
    };
    let report = Report {
        hostname,
        id: &id,
        queue_id: &envelope.queue_id,
        sender: &envelope.sender,
        arrival: UNIX_EPOCH + Duration::from_millis(envelope.received_at_ms),
        now: SystemTime::now(),
        action,
        recipients: &wanted,
        dsn: &envelope.dsn,
        original,
        require_tls: envelope.require_tls,
    };
    let message = report.to_message();
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
        dsn: Default::default(),
        // RFC 8689 §5: a report about REQUIRETLS mail goes under REQUIRETLS too.
        require_tls: envelope.require_tls,
        tls_optional: false,
        message_id: Some(format!("<{id}@{hostname}>")),
    };
    queue.enqueue(submission).await?;
    info!(queue_id = %envelope.queue_id, report_id = %id, action = action.word(), to = %envelope.sender, "report queued");
    Ok(Queued {
        id: Some(id),
        not_requested,
    })
}

/// One recipient a report is about.
#[derive(Debug, Clone)]
pub struct ReportedRecipient {
    pub recipient: String,
    /// The remote server's reply, or Postern's own reason.
    pub reply: Reply,
    /// The host that gave the reply, when a server did.
    pub remote_host: Option<String>,
    /// Set when the reason is the message's age (4.4.7) rather than the reply itself.
    pub expired: bool,
    /// The TLS of the session that gave the reply.
    pub tls: Option<TlsDetails>,
}

impl ReportedRecipient {
    /// Each of `recipients` failed with `reply`, Postern's own (no remote host).
    pub fn each(recipients: &[String], reply: &Reply, expired: bool) -> Vec<ReportedRecipient> {
        recipients
            .iter()
            .map(|recipient| ReportedRecipient {
                recipient: recipient.clone(),
                reply: reply.clone(),
                remote_host: None,
                expired,
                tls: None,
            })
            .collect()
    }
}

/// Everything a report says.
#[derive(Debug, Clone)]
pub struct Report<'a> {
    /// The reporting MTA (`hostname` in the config).
    pub hostname: &'a str,
    /// The report's own queue id.
    pub id: &'a str,
    /// The queue id of the message reported on.
    pub queue_id: &'a str,
    /// The original sender, who receives the report.
    pub sender: &'a str,
    pub arrival: SystemTime,
    pub now: SystemTime,
    pub action: Action,
    pub recipients: &'a [ReportedRecipient],
    /// What the sender asked for: ENVID, RET, each recipient's ORCPT.
    pub dsn: &'a DsnRequest,
    pub original: Original<'a>,
    /// The message was sent with REQUIRETLS: only its header section is returned (RFC 8689 §5).
    pub require_tls: bool,
}

impl Report<'_> {
    /// The whole report message, CRLF line endings, ready to be queued from `<>`.
    pub fn to_message(&self) -> Vec<u8> {
        let boundary = format!("=_postern_{}", self.id);
        let status = self.status_fields();
        let (returned_type, returned) = self.returned();
        // RFC 6533 §6: UTF-8 in the status fields (an address, a host, a reply) needs the
        // global status type.
        let status_type = if status.is_ascii() {
            "delivery-status"
        } else {
            "global-delivery-status"
        };
        let subject = match self.action {
            Action::Failed => "Undelivered Mail Returned to Sender",
            Action::Delayed { .. } => "Delayed Mail (still being retried)",
            Action::Relayed => "Successful Mail Delivery Report",
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
        line(&format!("Subject: {subject}"));
        line(&format!("Date: {}", rfc5322_date(self.now)));
        line(&format!("Message-ID: <{}@{}>", self.id, self.hostname));
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
        push_part(&mut message, &boundary, returned_type, returned);
        message.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        message
    }

    /// The whole message when the sender asked for it (RET=FULL) in a failure report and it
    /// fits, else its header section (RFC 3461 §4.3: only failures return content), with the
    /// type for what it holds (RFC 6532's global types for UTF-8).
    fn returned(&self) -> (&'static str, &[u8]) {
        if self.returns_whole() {
            let bytes = self.original.bytes;
            return if bytes.is_ascii() {
                ("message/rfc822", bytes)
            } else {
                ("message/global", bytes)
            };
        }
        let headers = header_section(self.original.bytes);
        if headers.is_ascii() {
            ("text/rfc822-headers", headers)
        } else {
            ("message/global-headers", headers)
        }
    }

    fn returns_whole(&self) -> bool {
        self.action == Action::Failed
            && self.dsn.ret == Some(Ret::Full)
            && self.original.whole
            && !self.require_tls
    }

    /// The first part, for people.
    fn explanation(&self) -> String {
        let what = match self.action {
            Action::Failed => "Your message could not be delivered to one or more recipients.".to_string(),
            Action::Delayed { until } => format!(
                "Your message has not been delivered yet to one or more recipients.\r\nIt will be tried again until {}; you do not need to send it again.",
                rfc5322_date(until)
            ),
            Action::Relayed => "Your message was handed to the next mail server for these recipients.\r\nThat server sends no delivery reports, so this is the last report about them.".to_string(),
        };
        let mut text = format!(
            "This is the mail system at {}.\r\n\r\n{what}\r\n\r\n",
            self.hostname
        );
        for reported in self.recipients {
            let by = reported
                .remote_host
                .as_deref()
                .map(|h| format!(" host {h} said:"))
                .unwrap_or_default();
            text.push_str(&format!(
                "<{}>:{by} {}\r\n",
                reported.recipient,
                reply_text(&reported.reply)
            ));
            if reported.expired {
                text.push_str("    (gave up: the message was queued for too long)\r\n");
            }
        }
        if self.action == Action::Failed && self.dsn.ret == Some(Ret::Full) && !self.returns_whole()
        {
            text.push_str(if self.require_tls {
                "\r\nThe message was sent with REQUIRETLS, so only its header section is attached.\r\n"
            } else {
                "\r\nThe message is too large to be returned whole; its header section is attached.\r\n"
            });
        }
        text
    }

    /// The RFC 3464 fields: per message, then a block per recipient.
    fn status_fields(&self) -> String {
        let mut fields = String::new();
        if let Some(envid) = &self.dsn.envid {
            fields.push_str(&format!("Original-Envelope-Id: {envid}\r\n"));
        }
        fields.push_str(&format!(
            "Reporting-MTA: dns; {}\r\nX-Postern-Queue-ID: {}\r\nArrival-Date: {}\r\n",
            self.hostname,
            self.queue_id,
            rfc5322_date(self.arrival)
        ));
        for reported in self.recipients {
            fields.push_str("\r\n");
            if let Some(orcpt) = self.dsn.recipient(&reported.recipient).orcpt {
                fields.push_str(&format!(
                    "Original-Recipient: {}\r\n",
                    original_field(&orcpt)
                ));
            }
            fields.push_str(&format!(
                "Final-Recipient: {}\r\nAction: {}\r\nStatus: {}\r\n",
                recipient_field(&reported.recipient),
                self.action.word(),
                status(reported)
            ));
            if let Some(host) = &reported.remote_host {
                fields.push_str(&format!(
                    "Remote-MTA: dns; {host}\r\nDiagnostic-Code: smtp; {}\r\n",
                    reply_text(&reported.reply)
                ));
            }
            fields.push_str(&format!(
                "Last-Attempt-Date: {}\r\n",
                rfc5322_date(self.now)
            ));
            if let Action::Delayed { until } = self.action {
                fields.push_str(&format!("Will-Retry-Until: {}\r\n", rfc5322_date(until)));
            }
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

/// The `Original-Recipient` field's value: the address as the sender gave it in ORCPT, of
/// its own type (a `utf-8` one in unitext, like [`recipient_field`]).
fn original_field(orcpt: &OriginalRecipient) -> String {
    match orcpt.addr_type.as_str() {
        "utf-8" | "rfc822" => recipient_field(&orcpt.address),
        other => format!("{other}; {}", orcpt.address),
    }
}

/// The RFC 3463 status of a recipient: 4.4.7 for expiry, else the reply's own or its class's.
fn status(reported: &ReportedRecipient) -> String {
    if reported.expired {
        return "4.4.7".to_string();
    }
    match reported.reply.status {
        Some(status) => status.to_string(),
        None => format!("{}.0.0", reported.reply.class()),
    }
}

/// A reply on one line, as `550 5.1.1 text`.
pub(crate) fn reply_text(reply: &Reply) -> String {
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

    static NO_REQUEST: DsnRequest = DsnRequest {
        ret: None,
        envid: None,
        recipients: std::collections::BTreeMap::new(),
    };

    /// A failure report of `01ID` to `a@example.com`, about nobody yet.
    fn base(dsn: &DsnRequest) -> Report<'_> {
        Report {
            hostname: "relay.test",
            id: "01ID",
            queue_id: "01ID",
            sender: "a@example.com",
            arrival: UNIX_EPOCH,
            now: UNIX_EPOCH,
            action: Action::Failed,
            recipients: &[],
            dsn,
            original: Original {
                bytes: b"Subject: hi\r\n\r\nthe body\r\n",
                whole: true,
            },
            require_tls: false,
        }
    }

    fn reported(recipient: &str, reply: Reply) -> ReportedRecipient {
        ReportedRecipient {
            recipient: recipient.into(),
            reply,
            remote_host: Some("mx.example.org".into()),
            expired: false,
            tls: None,
        }
    }

    /// A request with ENVID, RET and an ORCPT for `b@example.org`.
    fn request(ret: Ret) -> DsnRequest {
        let mut dsn = DsnRequest {
            ret: Some(ret),
            envid: Some("QQ 314159".into()),
            ..Default::default()
        };
        dsn.recipients.insert(
            "b@example.org".into(),
            postern_smtp::dsn::RecipientDsn {
                notify: Some("SUCCESS,FAILURE,DELAY".parse().unwrap()),
                orcpt: Some(OriginalRecipient::parse("rfc822;B+2Bold@example.org").unwrap()),
            },
        );
        dsn
    }

    #[test]
    fn delay_and_relay_reports_say_so_and_return_headers_only() {
        let dsn = request(Ret::Full);
        let until = UNIX_EPOCH + Duration::from_secs(5 * 86_400);
        let delayed = [reported(
            "b@example.org",
            Reply::new(451, Status(4, 2, 1), "mailbox busy"),
        )];
        let report = Report {
            action: Action::Delayed { until },
            recipients: &delayed,
            ..base(&dsn)
        };
        let message = report.to_message();
        let (report_type, parts) = report_parts(&message);
        assert_eq!(report_type, "delivery-status");
        assert!(
            String::from_utf8_lossy(&message)
                .contains("\r\nSubject: Delayed Mail (still being retried)\r\n")
        );
        assert!(
            parts[0]
                .1
                .contains("tried again until Tue, 6 Jan 1970 00:00:00 +0000"),
            "{}",
            parts[0].1
        );
        let status = &parts[1].1;
        for field in [
            "Original-Envelope-Id: QQ 314159\r\nReporting-MTA: dns; relay.test\r\n",
            "\r\n\r\nOriginal-Recipient: rfc822; B+old@example.org\r\nFinal-Recipient: rfc822; b@example.org\r\nAction: delayed\r\nStatus: 4.2.1\r\n",
            "Will-Retry-Until: Tue, 6 Jan 1970 00:00:00 +0000\r\n",
        ] {
            assert!(status.contains(field), "{field:?} in {status}");
        }
        assert_eq!(
            parts[2].0, "text/rfc822-headers",
            "RET=FULL is for failures only"
        );
        assert!(!parts[2].1.contains("the body"));

        let relayed = [reported(
            "b@example.org",
            Reply::new(250, Status(2, 0, 0), "queued as 1"),
        )];
        let report = Report {
            action: Action::Relayed,
            recipients: &relayed,
            ..base(&dsn)
        };
        let message = report.to_message();
        let (_, parts) = report_parts(&message);
        assert!(
            String::from_utf8_lossy(&message)
                .contains("\r\nSubject: Successful Mail Delivery Report\r\n")
        );
        let status = &parts[1].1;
        assert!(status.contains("Action: relayed\r\nStatus: 2.0.0\r\nRemote-MTA: dns; mx.example.org\r\nDiagnostic-Code: smtp; 250 2.0.0 queued as 1\r\n"), "{status}");
        assert!(!status.contains("Will-Retry-Until"));
        assert_eq!(parts[2].0, "text/rfc822-headers");
    }

    #[test]
    fn ret_full_returns_the_whole_message_when_it_has_it() {
        let failed = [reported(
            "b@example.org",
            Reply::new(550, Status(5, 1, 1), "no such user"),
        )];
        let full = request(Ret::Full);
        let report = Report {
            recipients: &failed,
            ..base(&full)
        };
        let (_, parts) = report_parts(&report.to_message());
        assert_eq!(parts[2].0, "message/rfc822");
        assert!(
            parts[2].1.ends_with("\r\n\r\nthe body\r\n"),
            "{}",
            parts[2].1
        );

        // Only the start of a large message is at hand: its header section, and a word why.
        let start = Report {
            original: Original {
                bytes: b"Subject: hi\r\n\r\nthe beginning",
                whole: false,
            },
            ..report.clone()
        };
        let (_, parts) = report_parts(&start.to_message());
        assert_eq!(parts[2].0, "text/rfc822-headers");
        assert!(
            parts[0].1.contains("too large to be returned whole"),
            "{}",
            parts[0].1
        );

        // 8-bit content goes back as message/global, quoted-printable, so the report stays 7-bit.
        let eight_bit = Report {
            original: Original {
                bytes: "Subject: hi\r\n\r\nGrüße\r\n".as_bytes(),
                whole: true,
            },
            ..report.clone()
        };
        let message = eight_bit.to_message();
        assert!(message.is_ascii());
        let (_, parts) = report_parts(&message);
        assert_eq!(parts[2].0, "message/global");
        assert!(parts[2].1.ends_with("\r\n\r\nGrüße\r\n"), "{}", parts[2].1);

        // REQUIRETLS mail comes back as headers only, whatever RET says.
        let private = Report {
            require_tls: true,
            ..report.clone()
        };
        let (_, parts) = report_parts(&private.to_message());
        assert_eq!(parts[2].0, "text/rfc822-headers");
        assert!(
            parts[0].1.contains("sent with REQUIRETLS"),
            "{}",
            parts[0].1
        );

        let headers = request(Ret::Hdrs);
        let report = Report {
            recipients: &failed,
            ..base(&headers)
        };
        let (_, parts) = report_parts(&report.to_message());
        assert_eq!(parts[2].0, "text/rfc822-headers");
        assert!(!parts[0].1.contains("too large"));
    }

    #[test]
    fn report_structure() {
        let recipients = [
            ReportedRecipient {
                recipient: "nobody@example.org".into(),
                reply: Reply::new(550, Status(5, 1, 1), "no such user"),
                remote_host: Some("mx.example.org".into()),
                expired: false,
                tls: None,
            },
            ReportedRecipient {
                recipient: "slow@example.org".into(),
                reply: Reply::new(451, Status(4, 2, 0), "try later"),
                remote_host: Some("mx.example.org".into()),
                expired: true,
                tls: None,
            },
        ];
        let report = Report {
            now: UNIX_EPOCH + Duration::from_secs(86_400),
            recipients: &recipients,
            original: Original {
                bytes: b"Received: x\r\nSubject: hi\r\n\r\nsecret body\r\n",
                whole: true,
            },
            ..base(&NO_REQUEST)
        };
        let text = String::from_utf8(report.to_message()).unwrap();
        let expected = "From: Mail Delivery System <MAILER-DAEMON@relay.test>\r
To: <a@example.com>\r
Subject: Undelivered Mail Returned to Sender\r
Date: Fri, 2 Jan 1970 00:00:00 +0000\r
Message-ID: <01ID@relay.test>\r
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
            ReportedRecipient {
                recipient: "jörg+news@bücher.example".into(),
                reply: Reply::new(550, Status(5, 1, 1), "no such user"),
                remote_host: Some("mx.bücher.example".into()),
                expired: false,
                tls: None,
            },
            ReportedRecipient {
                recipient: "plain@example.org".into(),
                reply: Reply::new(550, Status(5, 1, 1), "no such user"),
                remote_host: None,
                expired: false,
                tls: None,
            },
        ];
        let report = Report {
            recipients: &recipients,
            original: Original {
                bytes: "Subject: Grüße\r\n\r\nbody\r\n".as_bytes(),
                whole: true,
            },
            ..base(&NO_REQUEST)
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
            original: Original {
                bytes: b"Subject: plain\r\n\r\nbody\r\n",
                whole: true,
            },
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
