//! RFC 3461 delivery status notification requests: `RET` and `ENVID` of MAIL, `NOTIFY` and
//! `ORCPT` of RCPT, the xtext they are encoded in, and RFC 6533's `utf-8` address type.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The longest `ENVID` value accepted, as sent (RFC 3461 §4.4).
pub const MAX_ENVID: usize = 100;
/// The longest `ORCPT` value accepted, as sent (RFC 3461 §4.2).
pub const MAX_ORCPT: usize = 500;

/// Why a DSN parameter was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DsnError {
    #[error("NOTIFY takes NEVER, or one or more of SUCCESS, FAILURE and DELAY")]
    Notify,
    #[error("RET takes FULL or HDRS")]
    Ret,
    #[error("ENVID must be xtext of printable ASCII, at most 100 characters")]
    Envid,
    #[error("ORCPT must be addr-type;address in xtext, at most 500 characters")]
    Orcpt,
    #[error("a DSN parameter is given twice")]
    Repeated,
}

/// `NOTIFY=` of one recipient: which reports its sender asked for. All false is `NEVER`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Notify {
    pub success: bool,
    pub failure: bool,
    pub delay: bool,
}

impl std::str::FromStr for Notify {
    type Err = DsnError;

    fn from_str(value: &str) -> Result<Notify, DsnError> {
        if value.eq_ignore_ascii_case("NEVER") {
            return Ok(Notify {
                success: false,
                failure: false,
                delay: false,
            });
        }
        let mut notify = Notify {
            success: false,
            failure: false,
            delay: false,
        };
        for word in value.split(',') {
            match word.to_ascii_uppercase().as_str() {
                "SUCCESS" => notify.success = true,
                "FAILURE" => notify.failure = true,
                "DELAY" => notify.delay = true,
                // NEVER with anything else, an empty item, an unknown word.
                _ => return Err(DsnError::Notify),
            }
        }
        Ok(notify)
    }
}

impl fmt::Display for Notify {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let words: Vec<&str> = [
            (self.success, "SUCCESS"),
            (self.failure, "FAILURE"),
            (self.delay, "DELAY"),
        ]
        .into_iter()
        .filter_map(|(on, word)| on.then_some(word))
        .collect();
        if words.is_empty() {
            f.write_str("NEVER")
        } else {
            f.write_str(&words.join(","))
        }
    }
}

impl TryFrom<String> for Notify {
    type Error = DsnError;
    fn try_from(value: String) -> Result<Notify, DsnError> {
        value.parse()
    }
}

impl From<Notify> for String {
    fn from(notify: Notify) -> String {
        notify.to_string()
    }
}

/// `RET=`: what of the message a failure report returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Ret {
    Full,
    Hdrs,
}

impl std::str::FromStr for Ret {
    type Err = DsnError;
    fn from_str(value: &str) -> Result<Ret, DsnError> {
        match value.to_ascii_uppercase().as_str() {
            "FULL" => Ok(Ret::Full),
            "HDRS" => Ok(Ret::Hdrs),
            _ => Err(DsnError::Ret),
        }
    }
}

impl fmt::Display for Ret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Ret::Full => "FULL",
            Ret::Hdrs => "HDRS",
        })
    }
}

/// `ORCPT=`: the recipient's address as the sender first gave it, decoded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OriginalRecipient {
    /// The address type in lower case: `rfc822`, RFC 6533's `utf-8`, or another registered one.
    pub addr_type: String,
    pub address: String,
}

impl OriginalRecipient {
    /// Parses an `ORCPT` value: `addr-type;xtext`, or for `utf-8` RFC 6533's
    /// `utf-8-addr-xtext` (`\x{HEX}` for what is not printable ASCII) or, under SMTPUTF8,
    /// `utf-8-addr-unitext` (UTF-8 as it is).
    pub fn parse(value: &str) -> Result<OriginalRecipient, DsnError> {
        if value.len() > MAX_ORCPT {
            return Err(DsnError::Orcpt);
        }
        let (addr_type, encoded) = value.split_once(';').ok_or(DsnError::Orcpt)?;
        let atom = |c: char| c.is_ascii_alphanumeric() || c == '-';
        if addr_type.is_empty() || !addr_type.chars().all(atom) || encoded.is_empty() {
            return Err(DsnError::Orcpt);
        }
        let addr_type = addr_type.to_ascii_lowercase();
        let address = if addr_type == "utf-8" {
            unitext_decode(encoded)
        } else {
            xtext_decode(encoded)
        }
        .ok_or(DsnError::Orcpt)?;
        Ok(OriginalRecipient { addr_type, address })
    }

    /// The value for an `ORCPT` parameter to the next hop, in ASCII whatever the address.
    pub fn to_param(&self) -> String {
        let encoded = if self.addr_type == "utf-8" {
            utf8_addr_xtext(&self.address)
        } else {
            xtext_encode(&self.address)
        };
        format!("{};{encoded}", self.addr_type)
    }
}

/// What one recipient asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecipientDsn {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<Notify>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orcpt: Option<OriginalRecipient>,
}

impl RecipientDsn {
    pub fn is_empty(&self) -> bool {
        self.notify.is_none() && self.orcpt.is_none()
    }

    /// A failure report is wanted: unless NOTIFY leaves FAILURE out (RFC 3461 §4.1).
    pub fn wants_failure(&self) -> bool {
        self.notify.is_none_or(|n| n.failure)
    }

    /// A success report is wanted: only on NOTIFY=SUCCESS.
    pub fn wants_success(&self) -> bool {
        self.notify.is_some_and(|n| n.success)
    }

    /// A delay report is wanted: only on NOTIFY=DELAY.
    pub fn wants_delay(&self) -> bool {
        self.notify.is_some_and(|n| n.delay)
    }
}

/// The DSN requests of one message: from MAIL, and from RCPT for each recipient that made
/// any, keyed by the recipient's address as the queue stores it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DsnRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ret: Option<Ret>,
    /// The envelope id, decoded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envid: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub recipients: BTreeMap<String, RecipientDsn>,
}

impl DsnRequest {
    pub fn is_empty(&self) -> bool {
        self.ret.is_none() && self.envid.is_none() && self.recipients.is_empty()
    }

    /// What `recipient` asked for; nothing if it asked for nothing.
    pub fn recipient(&self, recipient: &str) -> RecipientDsn {
        self.recipients.get(recipient).cloned().unwrap_or_default()
    }

    /// The same request, with only the recipients for which `keep` holds.
    pub fn only(&self, mut keep: impl FnMut(&str) -> bool) -> DsnRequest {
        DsnRequest {
            ret: self.ret,
            envid: self.envid.clone(),
            recipients: self
                .recipients
                .iter()
                .filter(|(address, _)| keep(address))
                .map(|(address, dsn)| (address.clone(), dsn.clone()))
                .collect(),
        }
    }
}

/// Parses an `ENVID` value: xtext of printable ASCII, at most [`MAX_ENVID`] characters.
pub fn parse_envid(value: &str) -> Result<String, DsnError> {
    if value.is_empty() || value.len() > MAX_ENVID {
        return Err(DsnError::Envid);
    }
    let envid = xtext_decode(value).ok_or(DsnError::Envid)?;
    if envid.bytes().all(|b| matches!(b, b' '..=b'~')) {
        Ok(envid)
    } else {
        Err(DsnError::Envid)
    }
}

/// RFC 3461 §4 xtext: `!` to `~` but `+` and `=` as they are, any octet as `+HH`. The decoded
/// octets must be UTF-8.
pub fn xtext_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                let hex = text.get(i + 1..i + 3)?;
                if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return None;
                }
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'=' => return None,
            b @ b'!'..=b'~' => {
                out.push(b);
                i += 1;
            }
            _ => return None,
        }
    }
    String::from_utf8(out).ok()
}

/// The xtext of `text`: every octet outside `!`..`~`, and `+` and `=`, as `+HH`.
pub fn xtext_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'+' | b'=' => out.push_str(&format!("+{byte:02X}")),
            b'!'..=b'~' => out.push(char::from(byte)),
            _ => out.push_str(&format!("+{byte:02X}")),
        }
    }
    out
}

/// RFC 6533 §3 `utf-8-addr-unitext` (and its ASCII subset `utf-8-addr-xtext`): characters
/// as they are but controls, space, `+`, `=` and `\`, which come as `\x{HEX}`.
fn unitext_decode(text: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if let Some(escaped) = rest.strip_prefix("\\x{") {
            let (hex, after) = escaped.split_once('}')?;
            if hex.is_empty() || hex.len() > 6 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            out.push(char::from_u32(u32::from_str_radix(hex, 16).ok()?)?);
            rest = after;
            continue;
        }
        if matches!(c, '+' | '=' | '\\') || c.is_whitespace() || c.is_control() {
            return None;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    Some(out)
}

/// The `utf-8-addr-xtext` of an address: printable ASCII as it is (but `+`, `=` and `\`),
/// everything else as `\x{HEX}`.
fn utf8_addr_xtext(address: &str) -> String {
    let mut out = String::with_capacity(address.len());
    for c in address.chars() {
        if matches!(c, '!'..='~') && !matches!(c, '+' | '=' | '\\') {
            out.push(c);
        } else {
            out.push_str(&format!("\\x{{{:X}}}", u32::from(c)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn notify_takes_never_alone_or_a_list() {
        let never: Notify = "never".parse().unwrap();
        assert_eq!(never.to_string(), "NEVER");
        let some: Notify = "delay,Success".parse().unwrap();
        assert!(some.success && some.delay && !some.failure);
        assert_eq!(some.to_string(), "SUCCESS,DELAY");
        for bad in ["", "NEVER,SUCCESS", "SUCCESS,NEVER", "SUCCESS,", "ALWAYS"] {
            assert_eq!(bad.parse::<Notify>(), Err(DsnError::Notify), "{bad}");
        }
    }

    #[test]
    fn default_request_reports_failures_only() {
        let none = RecipientDsn::default();
        assert!(none.wants_failure() && !none.wants_success() && !none.wants_delay());
        let never = RecipientDsn {
            notify: Some("NEVER".parse().unwrap()),
            orcpt: None,
        };
        assert!(!never.wants_failure());
    }

    #[test]
    fn xtext_round_trips_and_refuses_what_it_must() {
        assert_eq!(xtext_decode("a+2Bb+3Dc").as_deref(), Some("a+b=c"));
        assert_eq!(xtext_encode("a+b=c d"), "a+2Bb+3Dc+20d");
        assert_eq!(xtext_decode("a=b"), None);
        assert_eq!(xtext_decode("a+2"), None);
        assert_eq!(xtext_decode("a+ZZ"), None);
        assert_eq!(xtext_decode("a b"), None);
        assert_eq!(xtext_decode("+FF"), None, "not UTF-8");
    }

    #[test]
    fn envid_is_printable_ascii_and_short() {
        assert_eq!(parse_envid("QQ314159+20x").unwrap(), "QQ314159 x");
        assert_eq!(parse_envid(&"a".repeat(100)).unwrap().len(), 100);
        assert_eq!(parse_envid(&"a".repeat(101)), Err(DsnError::Envid));
        assert_eq!(parse_envid("a+0Ab"), Err(DsnError::Envid), "a control");
        assert_eq!(parse_envid(""), Err(DsnError::Envid));
    }

    #[test]
    fn orcpt_types() {
        let rfc822 = OriginalRecipient::parse("RFC822;joe+2Bnews@example.org").unwrap();
        assert_eq!(rfc822.addr_type, "rfc822");
        assert_eq!(rfc822.address, "joe+news@example.org");
        assert_eq!(rfc822.to_param(), "rfc822;joe+2Bnews@example.org");

        let xtext = OriginalRecipient::parse("utf-8;j\\x{F6}rg\\x{2B}x@example.org").unwrap();
        assert_eq!(xtext.address, "jörg+x@example.org");
        let unitext = OriginalRecipient::parse("utf-8;jörg\\x{2B}x@example.org").unwrap();
        assert_eq!(unitext, xtext);
        assert_eq!(xtext.to_param(), "utf-8;j\\x{F6}rg\\x{2B}x@example.org");

        for bad in [
            "rfc822",
            ";a@b",
            "rfc822;",
            "rfc 822;a@b",
            "rfc822;a=b",
            "utf-8;a+b",
            "utf-8;a\\x{}b",
            "utf-8;a\\x{110000}",
        ] {
            assert_eq!(OriginalRecipient::parse(bad), Err(DsnError::Orcpt), "{bad}");
        }
        let long = format!("rfc822;{}@example.org", "a".repeat(490));
        assert_eq!(OriginalRecipient::parse(&long), Err(DsnError::Orcpt));
    }

    #[test]
    fn request_serializes_compactly() {
        assert_eq!(serde_json::to_string(&DsnRequest::default()).unwrap(), "{}");
        let mut request = DsnRequest {
            ret: Some(Ret::Hdrs),
            envid: Some("id 1".into()),
            ..Default::default()
        };
        request.recipients.insert(
            "a@b.example".into(),
            RecipientDsn {
                notify: Some("SUCCESS,FAILURE".parse().unwrap()),
                orcpt: Some(OriginalRecipient::parse("rfc822;a@b.example").unwrap()),
            },
        );
        let json = serde_json::to_string(&request).unwrap();
        assert_eq!(
            json,
            r#"{"ret":"HDRS","envid":"id 1","recipients":{"a@b.example":{"notify":"SUCCESS,FAILURE","orcpt":{"addrType":"rfc822","address":"a@b.example"}}}}"#
        );
        assert_eq!(serde_json::from_str::<DsnRequest>(&json).unwrap(), request);
        assert!(
            serde_json::from_str::<DsnRequest>(
                r#"{"recipients":{"a":{"notify":"NEVER,SUCCESS"}}}"#
            )
            .is_err()
        );
    }

    proptest! {
        #[test]
        fn xtext_decodes_what_it_encodes(text in "\\PC{0,40}") {
            prop_assert_eq!(xtext_decode(&xtext_encode(&text)), Some(text));
        }

        #[test]
        fn orcpt_parses_what_it_passes_on(local in "[a-z0-9+=\\\\ ]{1,10}|\\PC{1,8}", domain in "[a-z]{1,10}\\.example") {
            for addr_type in ["rfc822", "utf-8"] {
                let orcpt = OriginalRecipient { addr_type: addr_type.into(), address: format!("{local}@{domain}") };
                let param = orcpt.to_param();
                prop_assert!(param.is_ascii());
                prop_assert_eq!(OriginalRecipient::parse(&param), Ok(orcpt));
            }
        }
    }
}
