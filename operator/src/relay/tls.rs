//! The self-signed ingress certificate, made when a Relay names neither a cert-manager issuer nor
//! a Secret, and renewed before it expires or when its names change.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

/// Annotation with the certificate's expiry (RFC 3339).
pub const NOT_AFTER: &str = "postern.io/not-after";
/// Annotation with the certificate's DNS names, comma-separated.
pub const DNS_NAMES: &str = "postern.io/dns-names";
/// Lifetime of a self-signed certificate.
const VALIDITY: SignedDuration = SignedDuration::from_hours(90 * 24);
/// A certificate is replaced when less than this is left.
const RENEW_BEFORE: SignedDuration = SignedDuration::from_hours(30 * 24);

/// Why a certificate could not be made.
#[derive(Debug, thiserror::Error)]
#[error("making the self-signed certificate: {0}")]
pub struct CertificateError(#[from] rcgen::Error);

/// True when `existing` is missing, not one of ours, names other hosts, or expires within
/// the renewal window.
pub fn needs_certificate(existing: Option<&Secret>, dns_names: &[String], now: Timestamp) -> bool {
    let Some(annotations) = existing.and_then(|s| s.metadata.annotations.as_ref()) else {
        return true;
    };
    let names_match = annotations.get(DNS_NAMES) == Some(&dns_names.join(","));
    let fresh = annotations
        .get(NOT_AFTER)
        .and_then(|t| t.parse::<Timestamp>().ok())
        .is_some_and(|not_after| not_after - RENEW_BEFORE > now);
    !(names_match && fresh)
}

/// The parts of a `kubernetes.io/tls` Secret the operator writes.
#[derive(Debug, Clone)]
pub struct CertificateSecret {
    pub annotations: BTreeMap<String, String>,
    pub data: BTreeMap<String, ByteString>,
}

/// A new ECDSA P-256 certificate for `dns_names`, valid from an hour before `now` for 90 days.
pub fn self_signed(
    dns_names: &[String],
    now: Timestamp,
) -> Result<CertificateSecret, CertificateError> {
    let mut params = rcgen::CertificateParams::new(dns_names.to_vec())?;
    let not_before = now - SignedDuration::from_hours(1);
    let not_after = now + VALIDITY;
    params.not_before = offset(not_before);
    params.not_after = offset(not_after);
    if let Some(first) = dns_names.first() {
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, first.clone());
    }
    let key = rcgen::KeyPair::generate()?;
    let certificate = params.self_signed(&key)?;
    let annotations = BTreeMap::from([
        (
            NOT_AFTER.to_string(),
            not_after
                .round(k8s_openapi::jiff::Unit::Second)
                .unwrap_or(not_after)
                .to_string(),
        ),
        (DNS_NAMES.to_string(), dns_names.join(",")),
    ]);
    let data = BTreeMap::from([
        (
            "tls.crt".to_string(),
            ByteString(certificate.pem().into_bytes()),
        ),
        (
            "tls.key".to_string(),
            ByteString(key.serialize_pem().into_bytes()),
        ),
    ]);
    Ok(CertificateSecret { annotations, data })
}

fn offset(at: Timestamp) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(at.as_second())
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(annotations: BTreeMap<String, String>) -> Secret {
        Secret {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                annotations: Some(annotations),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn renews_when_missing_renamed_or_close_to_expiry() {
        let now: Timestamp = "2026-11-28T12:00:00Z".parse().unwrap();
        let names = vec!["relay.example.com".to_string()];
        assert!(needs_certificate(None, &names, now));
        let made = self_signed(&names, now).unwrap();
        let pem = String::from_utf8_lossy(&made.data["tls.crt"].0).into_owned();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
        let existing = secret(made.annotations);
        assert!(!needs_certificate(Some(&existing), &names, now));
        assert!(!needs_certificate(
            Some(&existing),
            &names,
            now + SignedDuration::from_hours(59 * 24)
        ));
        assert!(needs_certificate(
            Some(&existing),
            &names,
            now + SignedDuration::from_hours(61 * 24)
        ));
        let renamed = vec!["mail.example.com".to_string()];
        assert!(needs_certificate(Some(&existing), &renamed, now));
        assert!(needs_certificate(
            Some(&secret(BTreeMap::new())),
            &names,
            now
        ));
    }
}
