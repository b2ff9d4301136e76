//! RFC 5321 paths and mailboxes, with RFC 6531 (SMTPUTF8) extensions.
//!
//! Source routes (`@a,@b:user@domain`) are accepted and dropped as RFC 5321 §4.1.1.3 asks;
//! `%` and `!` in local parts are ordinary characters, never routing.

use std::fmt;

/// A mailbox `local@domain`. The domain is kept lower-case when it is ASCII.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Address {
    local: String,
    domain: String,
}

/// Why an address was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("address must be enclosed in <>")]
    MissingBrackets,
    #[error("bad local part")]
    LocalPart,
    #[error("local part longer than 64 octets")]
    LocalPartTooLong,
    #[error("missing @domain")]
    MissingDomain,
    #[error("bad domain")]
    Domain,
    #[error("bad source route")]
    SourceRoute,
    #[error("path longer than 256 octets")]
    TooLong,
}

/// The sender path of MAIL FROM: either the null path `<>` or a mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReversePath {
    Null,
    Mailbox(Address),
}

impl Address {
    /// Parses `local@domain` (no angle brackets).
    pub fn parse(text: &str) -> Result<Address, AddressError> {
        let (local, domain) = split_mailbox(text)?;
        Ok(Address {
            local: local.to_string(),
            domain: normalize_domain(domain),
        })
    }

    /// The local part exactly as it will appear on the wire (quoted when it must be).
    pub fn local(&self) -> &str {
        &self.local
    }

    /// The domain or address literal.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// True when the address needs SMTPUTF8 to be transmitted.
    pub fn is_utf8(&self) -> bool {
        !self.local.is_ascii() || !self.domain.is_ascii()
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.local, self.domain)
    }
}

impl ReversePath {
    /// True when the path needs SMTPUTF8.
    pub fn is_utf8(&self) -> bool {
        matches!(self, ReversePath::Mailbox(a) if a.is_utf8())
    }

    /// The mailbox, `None` for `<>`.
    pub fn mailbox(&self) -> Option<&Address> {
        match self {
            ReversePath::Null => None,
            ReversePath::Mailbox(a) => Some(a),
        }
    }
}

impl fmt::Display for ReversePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReversePath::Null => Ok(()),
            ReversePath::Mailbox(a) => a.fmt(f),
        }
    }
}

/// Parses `<path>` as used by MAIL FROM; `<>` is the null path.
pub fn parse_reverse_path(text: &str) -> Result<ReversePath, AddressError> {
    if text == "<>" {
        return Ok(ReversePath::Null);
    }
    parse_forward_path(text).map(ReversePath::Mailbox)
}

/// Parses `<path>` as used by RCPT TO.
pub fn parse_forward_path(text: &str) -> Result<Address, AddressError> {
    if text.len() > 256 {
        return Err(AddressError::TooLong);
    }
    let inner = text
        .strip_prefix('<')
        .and_then(|t| t.strip_suffix('>'))
        .ok_or(AddressError::MissingBrackets)?;
    let mailbox = match inner.strip_prefix('@') {
        Some(_) => {
            let (route, mailbox) = inner.split_once(':').ok_or(AddressError::SourceRoute)?;
            for hop in route.split(',') {
                let domain = hop.strip_prefix('@').ok_or(AddressError::SourceRoute)?;
                if !is_domain(domain) {
                    return Err(AddressError::SourceRoute);
                }
            }
            mailbox
        }
        None => inner,
    };
    Address::parse(mailbox)
}

/// The longest mailbox: a path holds at most 256 octets, two of them the angle brackets
/// (RFC 5321 §4.5.3.1.3).
const MAX_MAILBOX: usize = 254;

fn split_mailbox(text: &str) -> Result<(&str, &str), AddressError> {
    if text.len() > MAX_MAILBOX {
        return Err(AddressError::TooLong);
    }
    let at = if text.starts_with('"') {
        let close = quoted_string_end(text).ok_or(AddressError::LocalPart)?;
        if text.as_bytes().get(close) != Some(&b'@') {
            return Err(AddressError::MissingDomain);
        }
        close
    } else {
        let at = text.rfind('@').ok_or(AddressError::MissingDomain)?;
        if !is_dot_string(&text[..at]) {
            return Err(AddressError::LocalPart);
        }
        at
    };
    let (local, domain) = (&text[..at], &text[at + 1..]);
    if local.len() > 64 {
        return Err(AddressError::LocalPartTooLong);
    }
    if !(is_domain(domain) || is_address_literal(domain)) {
        return Err(AddressError::Domain);
    }
    Ok((local, domain))
}

/// The index just past the closing quote of a quoted local part.
fn quoted_string_end(text: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in text.char_indices().skip(1) {
        if escaped {
            if !(c == ' ' || c.is_ascii_graphic()) {
                return None;
            }
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == '"' {
            return Some(i + 1);
        } else if !(c == ' ' || c == '!' || ('#'..='~').contains(&c) || !c.is_ascii())
            || c.is_control()
        {
            return None;
        }
    }
    None
}

fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || "!#$%&'*+-/=?^_`{|}~".contains(c)
        || (!c.is_ascii() && !c.is_control())
}

fn is_dot_string(text: &str) -> bool {
    !text.is_empty()
        && text
            .split('.')
            .all(|atom| !atom.is_empty() && atom.chars().all(is_atext))
}

fn is_domain(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 255
        && text.split('.').all(|label| {
            let chars: Vec<char> = label.chars().collect();
            let ldh = |c: &char| {
                c.is_ascii_alphanumeric() || *c == '-' || (!c.is_ascii() && c.is_alphanumeric())
            };
            !chars.is_empty()
                && label.len() <= 63
                && chars.iter().all(ldh)
                && chars.first() != Some(&'-')
                && chars.last() != Some(&'-')
        })
}

fn is_address_literal(text: &str) -> bool {
    let Some(inner) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) else {
        return false;
    };
    match inner.strip_prefix("IPv6:") {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => inner.parse::<std::net::Ipv4Addr>().is_ok(),
    }
}

/// Lower-cases a domain character by character. A character whose lower case is more than one
/// character (`İ` becomes `i` and a combining dot) keeps its case: the result must still be a
/// domain this parser accepts, so that a printed address parses back to itself.
fn normalize_domain(domain: &str) -> String {
    if domain.starts_with('[') {
        return domain.to_string();
    }
    domain
        .chars()
        .map(|c| {
            let mut lower = c.to_lowercase();
            match (lower.next(), lower.next()) {
                (Some(single), None) => single,
                _ => c,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_mailbox_too_long_for_a_path_is_refused_without_brackets_too() {
        let domain = format!("{}org", "ab.".repeat(82));
        let longest = format!("four@{domain}");
        assert_eq!(longest.len(), MAX_MAILBOX);
        let parsed = Address::parse(&longest).unwrap();
        assert_eq!(parse_forward_path(&format!("<{parsed}>")), Ok(parsed));
        let over = format!("fives@{domain}");
        assert_eq!(Address::parse(&over), Err(AddressError::TooLong));
        assert_eq!(
            parse_forward_path(&format!("<{over}>")),
            Err(AddressError::TooLong)
        );
    }

    #[test]
    fn a_domain_whose_lower_case_would_not_parse_keeps_that_character() {
        let address = Address::parse("user@\u{130}stanbul.EXAMPLE").unwrap();
        assert_eq!(address.domain(), "\u{130}stanbul.example");
        assert_eq!(
            parse_forward_path(&format!("<{address}>")),
            Ok(address.clone())
        );
        assert_eq!(Address::parse("user@ÄÖ.de").unwrap().domain(), "äö.de");
    }

    #[test]
    fn parses_common_forms() {
        let a = parse_forward_path("<John.Doe@Example.COM>").unwrap();
        assert_eq!((a.local(), a.domain()), ("John.Doe", "example.com"));
        let a = parse_forward_path("<\"john doe\"@example.com>").unwrap();
        assert_eq!(a.local(), "\"john doe\"");
        let a = parse_forward_path("<user@[192.0.2.1]>").unwrap();
        assert_eq!(a.domain(), "[192.0.2.1]");
        assert_eq!(parse_reverse_path("<>").unwrap(), ReversePath::Null);
    }

    #[test]
    fn never_routes_on_percent_bang_or_source_route() {
        let a = parse_forward_path("<user%victim.example@relay.example>").unwrap();
        assert_eq!(a.domain(), "relay.example");
        let a = parse_forward_path("<victim.example!user@relay.example>").unwrap();
        assert_eq!(a.domain(), "relay.example");
        let a = parse_forward_path("<@relay.example:user@victim.example>").unwrap();
        assert_eq!(a.to_string(), "user@victim.example");
        let a = parse_forward_path("<\"user@victim.example\"@relay.example>").unwrap();
        assert_eq!(a.domain(), "relay.example");
    }

    #[test]
    fn refuses_bad_forms() {
        for bad in [
            "user@example.com",
            "<user>",
            "<@x>",
            "<a..b@c>",
            "<a@-b.com>",
            "<a@b..c>",
            "<\"a@b>",
            "<a@[1.2.3]>",
        ] {
            assert!(parse_forward_path(bad).is_err(), "{bad}");
        }
        let long = format!("<{}@example.com>", "a".repeat(65));
        assert_eq!(
            parse_forward_path(&long),
            Err(AddressError::LocalPartTooLong)
        );
    }

    #[test]
    fn detects_utf8() {
        assert!(parse_forward_path("<jösé@example.com>").unwrap().is_utf8());
        assert!(parse_forward_path("<a@bücher.de>").unwrap().is_utf8());
        assert!(!parse_forward_path("<a@b.de>").unwrap().is_utf8());
    }

    proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,80}") {
            let _ = parse_forward_path(&s);
            let _ = parse_reverse_path(&s);
        }

        #[test]
        fn accepts_what_it_prints(s in "<[a-zA-Z0-9.!#%+_-]{1,20}@[a-z0-9.-]{1,30}>") {
            if let Ok(a) = parse_forward_path(&s) {
                let again = parse_forward_path(&format!("<{a}>")).unwrap();
                prop_assert_eq!(a, again);
            }
        }
    }
}
