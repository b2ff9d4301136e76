//! The header fields ingress reads from a message it queues: `Message-ID`, for delivery events,
//! and `TLS-Required` (RFC 8689 §5), by which the sender asks that recipient-side TLS policies
//! (MTA-STS, DANE) not stop delivery of this message.

/// What ingress takes from a message's header section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderFacts {
    /// The `Message-ID` field, trimmed, when it is printable UTF-8 of at most 998 bytes.
    pub message_id: Option<String>,
    /// The message says `TLS-Required: No`.
    pub tls_optional: bool,
}

impl HeaderFacts {
    /// Reads the header section at the start of `message` (CRLF lines).
    pub fn of(message: &[u8]) -> HeaderFacts {
        let mut facts = HeaderFacts::default();
        let mut lines = message.split(|&b| b == b'\n').peekable();
        while let Some(line) = lines.next() {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.is_empty() {
                break;
            }
            let Some((name, value)) = field(line) else {
                continue;
            };
            let mut value = value.to_vec();
            // Folded continuation lines belong to the value.
            while let Some(next) =
                lines.next_if(|l| l.first().is_some_and(|b| *b == b' ' || *b == b'\t'))
            {
                value.extend_from_slice(next.strip_suffix(b"\r").unwrap_or(next));
            }
            let value = value.trim_ascii();
            if name.eq_ignore_ascii_case(b"tls-required") {
                facts.tls_optional = value.eq_ignore_ascii_case(b"no");
            } else if name.eq_ignore_ascii_case(b"message-id") && facts.message_id.is_none() {
                facts.message_id = std::str::from_utf8(value)
                    .ok()
                    .filter(|v| !v.is_empty() && v.len() <= 998 && !v.chars().any(char::is_control))
                    .map(str::to_string);
            }
        }
        facts
    }
}

/// The name and value of a field line.
fn field(line: &[u8]) -> Option<(&[u8], &[u8])> {
    let colon = line.iter().position(|&b| b == b':')?;
    let (name, value) = line.split_at(colon);
    Some((name.trim_ascii_end(), &value[1..]))
}

#[cfg(test)]
mod tests {
    use super::HeaderFacts;

    fn says_no(message: &[u8]) -> bool {
        HeaderFacts::of(message).tls_optional
    }

    #[test]
    fn only_a_header_field_saying_no_counts() {
        assert!(says_no(b"From: a@b\r\nTLS-Required: No\r\n\r\nbody\r\n"));
        assert!(says_no(b"tls-required:no\r\n\r\n"));
        assert!(
            says_no(b"TLS-Required :\r\n  NO \r\nSubject: x\r\n\r\n"),
            "folded"
        );
        assert!(!says_no(b"TLS-Required: Yes\r\n\r\n"));
        assert!(!says_no(b"TLS-Required: No thanks\r\n\r\n"));
        assert!(!says_no(b"X-TLS-Required: No\r\n\r\n"));
        assert!(
            !says_no(b"Subject: x\r\n\r\nTLS-Required: No\r\n"),
            "in the body it is text"
        );
    }

    #[test]
    fn the_first_printable_message_id() {
        let id = |message: &[u8]| HeaderFacts::of(message).message_id;
        assert_eq!(
            id(b"Message-ID: <a.b@example.com>\r\nMessage-Id: <c@d>\r\n\r\n").as_deref(),
            Some("<a.b@example.com>")
        );
        assert_eq!(
            id(b"message-id:\r\n <x@y>\r\n\r\n").as_deref(),
            Some("<x@y>"),
            "folded"
        );
        assert_eq!(id(b"Subject: none\r\n\r\nMessage-ID: <a@b>\r\n"), None);
        assert_eq!(id(b"Message-ID: <a\x01b@c>\r\n\r\n"), None);
        assert_eq!(id(b"Message-ID: \xff\r\n\r\n"), None);
        let long = format!("Message-ID: <{}@x>\r\n\r\n", "a".repeat(1000));
        assert_eq!(id(long.as_bytes()), None);
    }
}
