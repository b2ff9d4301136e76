//! The `Received:` header ingress prepends (RFC 5321 §4.4, RFC 3848 protocol names).

use std::net::IpAddr;
use std::time::SystemTime;

use crate::mail_date::rfc5322_date;

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
        let mut header = format!(
            "Received: from {} ([{}])\r\n\tby {} (Postern) with {protocol}{s}{a} id {}",
            printable(self.helo),
            self.client.to_canonical(),
            self.hostname,
            self.queue_id
        );
        if let Some((version, cipher)) = self.tls {
            header.push_str(&format!("\r\n\t(using {version} with cipher {cipher})"));
        }
        if let Some(recipient) = self.recipient {
            header.push_str(&format!("\r\n\tfor <{}>", printable(recipient)));
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn header_names_client_tls_and_id() {
        let trace = Trace {
            helo: "client\u{7f}.example",
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
            "Received: from client?.example ([192.0.2.1])\r\n\tby relay.example (Postern) with ESMTPSA id 01ABC\r\n\t(using TLSv1.3 with cipher TLS13_AES_256_GCM_SHA384)\r\n\tfor <a@b.example>;\r\n\tThu, 1 Jan 1970 00:00:00 +0000\r\n"
        );
    }
}
