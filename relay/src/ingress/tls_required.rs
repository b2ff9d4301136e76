//! The `TLS-Required: No` header field (RFC 8689 §5): the sender asks that recipient-side TLS
//! policies (MTA-STS, DANE) not stop delivery of this message.

/// Whether the header section of `message` (CRLF lines) holds `TLS-Required: No`.
pub fn says_no(message: &[u8]) -> bool {
    let mut lines = message.split(|&b| b == b'\n').peekable();
    while let Some(line) = lines.next() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            return false;
        }
        let Some(value) = field_value(line, b"tls-required") else {
            continue;
        };
        let mut value = value.to_vec();
        // Folded continuation lines belong to the value.
        while let Some(next) =
            lines.next_if(|l| l.first().is_some_and(|b| *b == b' ' || *b == b'\t'))
        {
            value.extend_from_slice(next.strip_suffix(b"\r").unwrap_or(next));
        }
        return value.trim_ascii().eq_ignore_ascii_case(b"no");
    }
    false
}

/// The value of `line` if it is a field named `name` (lower case).
fn field_value<'a>(line: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let colon = line.iter().position(|&b| b == b':')?;
    let (field, value) = line.split_at(colon);
    field
        .trim_ascii_end()
        .eq_ignore_ascii_case(name)
        .then(|| &value[1..])
}

#[cfg(test)]
mod tests {
    use super::says_no;

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
}
