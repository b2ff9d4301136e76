//! The `Received:` header ingress prepends (RFC 5321 §4.4, RFC 3848 protocol names).

use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

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

/// `Sat, 28 Nov 2026 17:23:41 +0000`.
pub fn rfc5322_date(time: SystemTime) -> String {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = secs / 86_400;
    let (hour, minute, second) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][(days % 7) as usize];
    let (year, month, day) = civil_from_days(days as i64);
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ][(month - 1) as usize];
    format!("{weekday}, {day} {month} {year} {hour:02}:{minute:02}:{second:02} +0000")
}

/// Proleptic Gregorian date from days since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_dates() {
        assert_eq!(rfc5322_date(UNIX_EPOCH), "Thu, 1 Jan 1970 00:00:00 +0000");
        let t = UNIX_EPOCH + Duration::from_secs(1_795_886_621);
        assert_eq!(rfc5322_date(t), "Sat, 28 Nov 2026 17:23:41 +0000");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc5322_date(leap), "Tue, 29 Feb 2000 00:00:00 +0000");
    }

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
