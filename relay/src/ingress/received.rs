//! The `Received:` header ingress prepends (RFC 5321 §4.4, RFC 3848 protocol names).

use std::net::IpAddr;
use std::time::SystemTime;

use postern_smtp::date::rfc5322_date;

/// What the Received header says about one transaction.
#[derive(Debug)]
pub struct Trace<'a> {
    pub helo: &'a str,
    pub client: IpAddr,
    pub hostname: &'a str,
    pub esmtp: bool,
    pub smtputf8: bool,
    pub authenticated: bool,
    /// `(version, cipher)` when the session is TLS.
    pub tls: Option<(&'a str, &'a str)>,
    pub queue_id: &'a str,
    /// The recipient, when there is exactly one.
    pub recipient: Option<&'a str>,
    pub time: SystemTime,
}

impl Trace<'_> {
    /// The header field, folded, ending in CRLF.
    pub fn header(&self) -> String {
        let protocol = match (self.smtputf8, self.esmtp) {
            (true, _) => "UTF8SMTP",
            (false, true) => "ESMTP",
            (false, false) => "SMTP",
        };
        let s = if self.tls.is_some() { "S" } else { "" };
        let a = if self.authenticated { "A" } else { "" };
        let client = self.client.to_canonical();
        // RFC 5321 §4.4: the EHLO name when it is a domain or address literal; anything else
        // the client claimed goes into a comment, escaped, so it cannot change the field.
        let from = if is_ehlo_name(self.helo, self.smtputf8) {
            format!("{} ([{client}])", self.helo)
        } else {
            format!("[{client}] (helo={})", comment(self.helo, self.smtputf8))
        };
        let mut header = format!(
            "Received: from {from}\r\n\tby {} (Postern) with {protocol}{s}{a} id {}",
            self.hostname, self.queue_id
        );
        if let Some((version, cipher)) = self.tls {
            header.push_str(&format!("\r\n\t(using {version} with cipher {cipher})"));
        }
        if let Some(recipient) = self.recipient {
            // Parsed addresses hold no CR, LF or spaces outside quotes; UTF-8 is written as
            // received in an SMTPUTF8 session (RFC 6532), the header being 8-bit there anyway.
            let recipient = if self.smtputf8 {
                recipient.to_string()
            } else {
                printable(recipient)
            };
            header.push_str(&format!("\r\n\tfor <{recipient}>"));
        }
        header.push_str(&format!(";\r\n\t{}\r\n", rfc5322_date(self.time)));
        header
    }
}

/// Client-supplied text limited to printable ASCII, so the header stays well-formed.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect()
}

/// Text for inside an RFC 5322 comment: `(`, `)` and `\` escaped, controls (and, outside
/// SMTPUTF8, anything not ASCII) replaced.
fn comment(text: &str, utf8: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '(' | ')' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() || (!utf8 && !c.is_ascii()) => out.push('?'),
            c => out.push(c),
        }
    }
    out
}

/// True for an RFC 5321 Domain (with U-labels in SMTPUTF8 sessions, RFC 6531) or address
/// literal.
fn is_ehlo_name(name: &str, utf8: bool) -> bool {
    if let Some(literal) = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        return match literal.get(..5) {
            Some(tag) if tag.eq_ignore_ascii_case("IPv6:") => {
                literal[5..].parse::<std::net::Ipv6Addr>().is_ok()
            }
            _ => literal.parse::<std::net::Ipv4Addr>().is_ok(),
        };
    }
    let letter = |c: char| c.is_ascii_alphanumeric() || (utf8 && c.is_alphanumeric());
    !name.is_empty()
        && name.len() <= 255
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| letter(c) || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn trace<'a>(helo: &'a str, recipient: &'a str, smtputf8: bool) -> Trace<'a> {
        Trace {
            helo,
            client: "192.0.2.1".parse().unwrap(),
            hostname: "relay.example",
            esmtp: true,
            smtputf8,
            authenticated: false,
            tls: None,
            queue_id: "01ABC",
            recipient: Some(recipient),
            time: UNIX_EPOCH,
        }
    }

    #[test]
    fn a_name_that_is_no_domain_goes_into_an_escaped_comment() {
        let header = trace("x)(y ([127.0.0.1])", "a@b.example", false).header();
        assert!(
            header.starts_with("Received: from [192.0.2.1] (helo=x\\)\\(y \\([127.0.0.1]\\))\r\n"),
            "{header}"
        );
        for (name, valid) in [
            ("mail.example.com", true),
            ("[192.0.2.7]", true),
            ("[IPv6:2001:db8::1]", true),
            ("-bad.example", false),
            ("a..b", false),
            ("[300.1.1.1]", false),
        ] {
            assert_eq!(is_ehlo_name(name, false), valid, "{name}");
        }
    }

    #[test]
    fn utf8_is_written_as_received_in_smtputf8_sessions() {
        let header = trace("bücher.example", "zoë@main.test", true).header();
        assert!(
            header.starts_with("Received: from bücher.example ([192.0.2.1])"),
            "{header}"
        );
        assert!(header.contains("for <zoë@main.test>;"), "{header}");
        let header = trace("bücher.example", "a@main.test", false).header();
        assert!(
            header.starts_with("Received: from [192.0.2.1] (helo=b?cher.example)"),
            "{header}"
        );
    }

    #[test]
    fn header_names_client_tls_and_id() {
        let trace = Trace {
            helo: "client.example",
            client: "::ffff:192.0.2.1".parse().unwrap(),
            hostname: "relay.example",
            esmtp: true,
            smtputf8: false,
            authenticated: true,
            tls: Some(("TLSv1.3", "TLS13_AES_256_GCM_SHA384")),
            queue_id: "01ABC",
            recipient: Some("a@b.example"),
            time: UNIX_EPOCH,
        };
        assert_eq!(
            trace.header(),
            "Received: from client.example ([192.0.2.1])\r\n\tby relay.example (Postern) with ESMTPSA id 01ABC\r\n\t(using TLSv1.3 with cipher TLS13_AES_256_GCM_SHA384)\r\n\tfor <a@b.example>;\r\n\tThu, 1 Jan 1970 00:00:00 +0000\r\n"
        );
    }
}
