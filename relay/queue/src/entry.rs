//! The queue entry: a versioned envelope for one destination domain, plus the body or the
//! start of it. Ingress writes entries; delivery reads them.

use postern_smtp::dsn::DsnRequest;
use serde::{Deserialize, Serialize};

/// The newest envelope format this build reads. Version 3 carries REQUIRETLS, which a build
/// that ignored it would break; version 2 stores large bodies in a stream of their own,
/// tracked per lineage; version 1 entries (inline bodies, or bodies in the object store bucket
/// of earlier builds) are still read.
pub const ENVELOPE_VERSION: u32 = 3;

/// The version an entry with this body is written as: the oldest that can describe it, so a
/// delivery process of an earlier build, during a rolling upgrade, still delivers what it can
/// and leaves the rest (REQUIRETLS mail) to a newer one.
pub fn version_for(body: &BodyRef, require_tls: bool) -> u32 {
    match body {
        _ if require_tls => 3,
        BodyRef::Inline { .. } | BodyRef::Object { .. } => 1,
        BodyRef::Stored { .. } => 2,
    }
}

/// Everything delivery needs to know about one entry, besides the body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Envelope {
    pub version: u32,
    /// Sortable id shared by all entries of one accepted message.
    pub queue_id: String,
    /// Reverse path; empty for the null sender `<>`.
    pub sender: String,
    /// The destination domain of every recipient in this entry.
    pub domain: String,
    pub recipients: Vec<String>,
    /// When ingress accepted the message, in milliseconds since the Unix epoch.
    pub received_at_ms: u64,
    /// Delivery attempts made so far.
    pub attempts: u32,
    pub client: ClientFacts,
    pub smtputf8: bool,
    /// The client declared `BODY=8BITMIME`.
    pub eight_bit_mime: bool,
    /// The content holds bytes above 127, so the next hop must offer 8BITMIME.
    #[serde(default)]
    pub eight_bit: bool,
    pub body: BodyRef,
    /// A retry entry is not attempted before this time (milliseconds since the Unix epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before_ms: Option<u64>,
    /// W3C trace context of the ingress transaction.
    pub traceparent: String,
    /// The destination (by id) whose rate already gave this entry its slot: it was postponed
    /// to that slot and goes without asking again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_reserved: Option<String>,
    /// Times this entry was put back since its last attempt because its destination had no
    /// free connection; each doubles the next wait.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub postponed: u32,
    /// What each recipient got on the last attempt, for `postern queue show`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub last_replies: Vec<LastReply>,
    /// The sender's delivery status notification requests (RFC 3461), for the recipients of
    /// this entry. A build that does not know them delivers as if none were made.
    #[serde(default, skip_serializing_if = "DsnRequest::is_empty")]
    pub dsn: DsnRequest,
    /// The delay report for this entry's recipients was sent.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub delay_reported: bool,
    /// REQUIRETLS (RFC 8689): only verified TLS to servers that offer REQUIRETLS (version 3).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub require_tls: bool,
    /// The message says `TLS-Required: No` (RFC 8689 §5): recipient-side TLS policies
    /// (MTA-STS) do not stop its delivery. A build that does not know it applies them.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tls_optional: bool,
    /// The message's `Message-ID` field, for delivery events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
}

/// One recipient's reply on an entry's last attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LastReply {
    pub recipient: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    pub reply: String,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Who handed the message to Postern.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientFacts {
    pub address: String,
    pub helo: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_user: Option<String>,
}

/// Where the body is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum BodyRef {
    /// After the envelope line in the same entry.
    Inline { size: u64 },
    /// In the body stream, `size` bytes under `key`. The entry itself carries only what ingress
    /// put in front of the client's message (its `Received:` and `DKIM-Signature:` fields).
    /// Every entry of a message uses the body through its lineage (the entry for one domain,
    /// then each retry replacing it); `token` names this entry within its lineage.
    Stored {
        stream: String,
        key: String,
        size: u64,
        lineage: u32,
        token: String,
    },
    /// Written by builds before version 2: the whole body in the object store bucket `bucket`,
    /// shared by `entries` entries whose count in `<bucket>_REFS` the last one to finish takes
    /// to zero. Still read, so mail queued before an upgrade is delivered.
    Object {
        bucket: String,
        key: String,
        size: u64,
        entries: u32,
    },
}

/// Why an entry could not be read.
#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    #[error("entry has no envelope line")]
    MissingEnvelope,
    #[error("envelope is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("envelope version {0} is newer than this build understands")]
    Version(u32),
    #[error("inline body is {actual} bytes, envelope says {expected}")]
    BodySize { expected: u64, actual: u64 },
}

/// Entry payload: the envelope as one JSON line, then the inline body if any.
pub fn encode(envelope: &Envelope, inline_body: Option<&[u8]>) -> Vec<u8> {
    let mut out = serde_json::to_vec(envelope).unwrap_or_default();
    out.push(b'\n');
    if let Some(body) = inline_body {
        out.extend_from_slice(body);
    }
    out
}

/// Splits a payload into its envelope and the inline part: the whole body, or the head of a
/// stored one.
pub fn decode(payload: &[u8]) -> Result<(Envelope, &[u8]), EntryError> {
    let newline = payload
        .iter()
        .position(|&b| b == b'\n')
        .ok_or(EntryError::MissingEnvelope)?;
    let envelope: Envelope = serde_json::from_slice(&payload[..newline])?;
    if envelope.version > ENVELOPE_VERSION {
        return Err(EntryError::Version(envelope.version));
    }
    let body = &payload[newline + 1..];
    if let BodyRef::Inline { size } = envelope.body
        && size != body.len() as u64
    {
        return Err(EntryError::BodySize {
            expected: size,
            actual: body.len() as u64,
        });
    }
    Ok((envelope, body))
}

/// The subject token for a destination domain.
///
/// Dots become `_` so one domain is one token; any byte other than a lower-case letter,
/// a digit or `-` is written `=XX`, which keeps the mapping reversible.
pub fn domain_token(domain: &str) -> String {
    let mut token = String::with_capacity(domain.len());
    for b in domain.to_lowercase().bytes() {
        match b {
            b'a'..=b'z' | b'0'..=b'9' | b'-' => token.push(char::from(b)),
            b'.' => token.push('_'),
            _ => token.push_str(&format!("={b:02x}")),
        }
    }
    token
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(body: BodyRef) -> Envelope {
        Envelope {
            version: ENVELOPE_VERSION,
            queue_id: "01J0000000000000000000000".into(),
            sender: "a@example.com".into(),
            domain: "example.org".into(),
            recipients: vec!["b@example.org".into()],
            received_at_ms: 1,
            attempts: 0,
            client: ClientFacts {
                address: "127.0.0.1".into(),
                helo: "x".into(),
                tls: None,
                auth_user: None,
            },
            smtputf8: false,
            eight_bit_mime: false,
            eight_bit: false,
            body,
            not_before_ms: None,
            traceparent: "00-0-0-01".into(),
            rate_reserved: None,
            postponed: 0,
            last_replies: Vec::new(),
            dsn: DsnRequest::default(),
            delay_reported: false,
            require_tls: false,
            tls_optional: false,
            message_id: None,
        }
    }

    #[test]
    fn round_trips_with_inline_body() {
        let env = envelope(BodyRef::Inline { size: 5 });
        let payload = encode(&env, Some(b"a\r\nb\n"));
        let (decoded, body) = decode(&payload).unwrap();
        assert_eq!(decoded, env);
        assert_eq!(body, b"a\r\nb\n");
    }

    #[test]
    fn reads_entries_of_earlier_builds_and_writes_the_oldest_version_that_fits() {
        let earlier = br#"{"version":1,"queueId":"01J","sender":"a@x","domain":"y","recipients":["b@y"],"receivedAtMs":1,"attempts":0,"client":{"address":"127.0.0.1","helo":"h"},"smtputf8":false,"eightBitMime":false,"body":{"kind":"object","bucket":"POSTERN_BODIES","key":"01J","size":9,"entries":2},"traceparent":"00-0-0-01"}
"#;
        let (decoded, inline) = decode(earlier).unwrap();
        assert!(inline.is_empty());
        assert!(matches!(decoded.body, BodyRef::Object { entries: 2, .. }));
        assert!(!decoded.eight_bit, "absent in version 1");
        assert!(decoded.dsn.is_empty() && !decoded.delay_reported);
        assert_eq!(version_for(&BodyRef::Inline { size: 0 }, false), 1);
        assert_eq!(
            version_for(&BodyRef::Inline { size: 0 }, true),
            3,
            "a build that does not know REQUIRETLS must leave such an entry alone"
        );
        let stored = BodyRef::Stored {
            stream: "S".into(),
            key: "k".into(),
            size: 1,
            lineage: 0,
            token: "0".into(),
        };
        assert_eq!(version_for(&stored, false), 2);
        assert_eq!(version_for(&stored, true), 3);
    }

    #[test]
    fn dsn_requests_travel_with_the_entry_and_cost_nothing_when_absent() {
        let plain = encode(&envelope(BodyRef::Inline { size: 0 }), None);
        let text = String::from_utf8(plain).unwrap();
        assert!(
            !text.contains("dsn") && !text.contains("delayReported"),
            "{text}"
        );
        let mut env = envelope(BodyRef::Inline { size: 0 });
        env.dsn.envid = Some("E1".into());
        env.dsn.recipients.insert(
            "b@example.org".into(),
            postern_smtp::dsn::RecipientDsn {
                notify: Some("NEVER".parse().unwrap()),
                orcpt: None,
            },
        );
        env.delay_reported = true;
        let (decoded, _) = decode(&encode(&env, None)).unwrap();
        assert_eq!(decoded, env);
        assert!(!decoded.dsn.recipient("b@example.org").wants_failure());
    }

    #[test]
    fn refuses_truncated_and_future_entries() {
        let payload = encode(&envelope(BodyRef::Inline { size: 9 }), Some(b"short"));
        assert!(matches!(decode(&payload), Err(EntryError::BodySize { .. })));
        let mut env = envelope(BodyRef::Inline { size: 0 });
        env.version = 99;
        assert!(matches!(
            decode(&encode(&env, None)),
            Err(EntryError::Version(99))
        ));
        assert!(matches!(decode(b"{}"), Err(EntryError::MissingEnvelope)));
    }

    #[test]
    fn domain_tokens_are_single_and_distinct() {
        assert_eq!(domain_token("Mail.Example.COM"), "mail_example_com");
        assert_eq!(domain_token("[192.0.2.1]"), "=5b192_0_2_1=5d");
        assert_eq!(domain_token("bücher.de"), "b=c3=bccher_de");
        assert_ne!(domain_token("a_b.c"), domain_token("a.b_c"));
        assert!(!domain_token("a.b*>c").contains(['.', '*', '>']));
    }
}
