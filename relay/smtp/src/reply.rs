//! SMTP replies: building them (server side) and parsing them (client side).

use std::fmt::Write as _;

/// An RFC 3463 enhanced status code such as `5.7.1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status(pub u8, pub u16, pub u16);

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// Why a command or message was refused; becomes a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reject {
    Syntax,
    Sequence,
    LineTooLong,
    RelayDenied,
    AuthRequired,
    SenderDomain,
    Utf8WithoutSmtputf8,
    TooManyRecipients,
    MessageTooBig,
    BareLineEnding,
    TextLineTooLong,
    MailLoop,
    AuthFailed,
    TooManyErrors,
    Unavailable,
    /// The recipient is on the suppression list.
    Suppressed,
}

impl Reject {
    /// A short, stable label for metrics and logs.
    pub fn as_label(self) -> &'static str {
        match self {
            Reject::Syntax => "syntax",
            Reject::Sequence => "sequence",
            Reject::LineTooLong => "line_too_long",
            Reject::RelayDenied => "relay_denied",
            Reject::AuthRequired => "auth_required",
            Reject::SenderDomain => "sender_domain",
            Reject::Utf8WithoutSmtputf8 => "utf8_without_smtputf8",
            Reject::TooManyRecipients => "too_many_recipients",
            Reject::MessageTooBig => "message_too_big",
            Reject::BareLineEnding => "bare_line_ending",
            Reject::TextLineTooLong => "text_line_too_long",
            Reject::MailLoop => "mail_loop",
            Reject::AuthFailed => "auth_failed",
            Reject::TooManyErrors => "too_many_errors",
            Reject::Unavailable => "unavailable",
            Reject::Suppressed => "suppressed",
        }
    }
}

/// One SMTP reply, possibly multi-line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub status: Option<Status>,
    pub lines: Vec<String>,
    /// Set on refusals so the I/O layer can count them by reason.
    pub reject: Option<Reject>,
}

impl Reply {
    /// A one-line reply with an enhanced status code.
    pub fn new(code: u16, status: Status, text: impl Into<String>) -> Self {
        Reply {
            code,
            status: Some(status),
            lines: vec![text.into()],
            reject: None,
        }
    }

    /// A reply without an enhanced status code (greeting, EHLO, 3xx).
    pub fn plain(code: u16, lines: Vec<String>) -> Self {
        Reply {
            code,
            status: None,
            lines,
            reject: None,
        }
    }

    /// Marks the reply as a refusal for the given reason.
    pub fn rejecting(mut self, reason: Reject) -> Self {
        self.reject = Some(reason);
        self
    }

    /// 2 for 2xx, 4 for 4xx and so on.
    pub fn class(&self) -> u16 {
        self.code / 100
    }

    /// Wire form, CRLF-terminated, with `-` continuation lines.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = String::new();
        let lines: &[String] = if self.lines.is_empty() {
            &[String::new()][..]
        } else {
            &self.lines
        };
        for (i, line) in lines.iter().enumerate() {
            let sep = if i + 1 == lines.len() { ' ' } else { '-' };
            let _ = write!(out, "{}{}", self.code, sep);
            if let Some(status) = self.status {
                let _ = write!(out, "{status} ");
            }
            out.push_str(line);
            out.push_str("\r\n");
        }
        out.into_bytes()
    }

    /// The text of all lines joined by a space, without the codes.
    pub fn text(&self) -> String {
        self.lines.join(" ")
    }
}

/// Why a reply could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("reply line is not `NNN[ -]text`")]
    Malformed,
    #[error("reply lines disagree on the code")]
    MixedCodes,
    #[error("reply longer than {0} bytes")]
    TooLong(usize),
}

/// Incremental reply parser: feed bytes, get complete replies.
///
/// It bounds the size of one reply so an endless multi-line reply cannot exhaust memory.
#[derive(Debug)]
pub struct ReplyParser {
    buf: Vec<u8>,
    lines: Vec<String>,
    code: Option<u16>,
    max_len: usize,
    seen: usize,
}

impl Default for ReplyParser {
    fn default() -> Self {
        Self::new(64 * 1024)
    }
}

impl ReplyParser {
    /// A parser that refuses replies longer than `max_len` bytes in total.
    pub fn new(max_len: usize) -> Self {
        ReplyParser {
            buf: Vec::new(),
            lines: Vec::new(),
            code: None,
            max_len,
            seen: 0,
        }
    }

    /// Adds received bytes.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// True when no byte of a reply is waiting to be parsed.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty() && self.lines.is_empty()
    }

    /// The next complete reply, `Ok(None)` when more bytes are needed.
    pub fn next_reply(&mut self) -> Result<Option<Reply>, ReplyError> {
        loop {
            let Some(end) = self.buf.iter().position(|&b| b == b'\n') else {
                if self.seen + self.buf.len() > self.max_len {
                    return Err(ReplyError::TooLong(self.max_len));
                }
                return Ok(None);
            };
            let line: Vec<u8> = self.buf.drain(..=end).collect();
            self.seen += line.len();
            if self.seen > self.max_len {
                return Err(ReplyError::TooLong(self.max_len));
            }
            let line = trim_line_end(&line);
            if line.len() < 3 || !line[..3].iter().all(u8::is_ascii_digit) {
                return Err(ReplyError::Malformed);
            }
            let code = u16::from(line[0] - b'0') * 100
                + u16::from(line[1] - b'0') * 10
                + u16::from(line[2] - b'0');
            if !(200..600).contains(&code) && !(100..200).contains(&code) {
                return Err(ReplyError::Malformed);
            }
            if *self.code.get_or_insert(code) != code {
                return Err(ReplyError::MixedCodes);
            }
            let (last, text) = match line.get(3) {
                None => (true, &[][..]),
                Some(b' ') => (true, &line[4..]),
                Some(b'-') => (false, &line[4..]),
                Some(_) => return Err(ReplyError::Malformed),
            };
            self.lines.push(String::from_utf8_lossy(text).into_owned());
            if last {
                let lines = std::mem::take(&mut self.lines);
                self.code = None;
                self.seen = 0;
                return Ok(Some(split_status(code, lines)));
            }
        }
    }
}

fn trim_line_end(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Moves a leading enhanced status code out of the text of every line.
fn split_status(code: u16, lines: Vec<String>) -> Reply {
    let parsed: Vec<(Option<Status>, String)> = lines
        .into_iter()
        .map(|line| match parse_status(&line) {
            Some((status, rest)) if u16::from(status.0) == code / 100 => {
                (Some(status), rest.to_string())
            }
            _ => (None, line),
        })
        .collect();
    let status = parsed.first().and_then(|(s, _)| *s);
    let all_have = status.is_some() && parsed.iter().all(|(s, _)| *s == status);
    let lines = if all_have {
        parsed.into_iter().map(|(_, rest)| rest).collect()
    } else {
        parsed
            .into_iter()
            .map(|(s, rest)| match s {
                Some(s) => format!("{s} {rest}"),
                None => rest,
            })
            .collect()
    };
    Reply {
        code,
        status: if all_have { status } else { None },
        lines,
        reject: None,
    }
}

fn parse_status(text: &str) -> Option<(Status, &str)> {
    let (token, rest) = text.split_once(' ').unwrap_or((text, ""));
    let mut parts = token.split('.');
    let class: u8 = parts.next()?.parse().ok()?;
    let subject: u16 = parts.next()?.parse().ok()?;
    let detail: u16 = parts.next()?.parse().ok()?;
    if parts.next().is_some() || !matches!(class, 2 | 4 | 5) || subject > 999 || detail > 999 {
        return None;
    }
    Some((Status(class, subject, detail), rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_multiline_with_status() {
        let reply = Reply {
            code: 250,
            status: Some(Status(2, 0, 0)),
            lines: vec!["a".into(), "b".into()],
            reject: None,
        };
        assert_eq!(reply.to_bytes(), b"250-2.0.0 a\r\n250 2.0.0 b\r\n");
    }

    #[test]
    fn parses_multiline_and_status() {
        let mut p = ReplyParser::default();
        p.feed(b"250-mx.example\r\n250-PIPELINING\r\n250 SIZE 10\r\n550 5.7.1 no");
        let r = p.next_reply().unwrap().unwrap();
        assert_eq!(r.code, 250);
        assert_eq!(r.lines, ["mx.example", "PIPELINING", "SIZE 10"]);
        assert_eq!(p.next_reply().unwrap(), None);
        p.feed(b"\r\n");
        let r = p.next_reply().unwrap().unwrap();
        assert_eq!(
            (r.code, r.status, r.text()),
            (550, Some(Status(5, 7, 1)), "no".to_string())
        );
    }

    #[test]
    fn bounds_endless_replies() {
        let mut p = ReplyParser::new(100);
        for _ in 0..20 {
            p.feed(b"250-xxxxxxxx\r\n");
        }
        assert_eq!(p.next_reply(), Err(ReplyError::TooLong(100)));
    }

    proptest::proptest! {
        #[test]
        fn never_panics_and_reads_what_it_writes(
            input in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            code in 200u16..600,
            lines in proptest::collection::vec("[ -~]{0,40}", 1..5),
        ) {
            let mut p = ReplyParser::new(1024);
            p.feed(&input);
            while let Ok(Some(_)) = p.next_reply() {}
            let reply = Reply { code, status: None, lines: lines.clone(), reject: None };
            let mut p = ReplyParser::default();
            p.feed(&reply.to_bytes());
            let parsed = p.next_reply().unwrap().unwrap();
            proptest::prop_assert_eq!(parsed.code, code);
            proptest::prop_assert_eq!(parsed.lines.len(), lines.len());
        }
    }

    #[test]
    fn refuses_garbage_and_mixed_codes() {
        let mut p = ReplyParser::default();
        p.feed(b"hello\r\n");
        assert_eq!(p.next_reply(), Err(ReplyError::Malformed));
        let mut p = ReplyParser::default();
        p.feed(b"250-a\r\n251 b\r\n");
        assert_eq!(p.next_reply(), Err(ReplyError::MixedCodes));
    }
}
