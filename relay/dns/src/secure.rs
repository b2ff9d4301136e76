//! Lookups validated with DNSSEC by hickory's validating resolver, for DANE (RFC 7672): each
//! answer says whether it is secure, and a bogus one is an error of its own.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use hickory_resolver::TokioResolver;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::dnssec::{Proof, TrustAnchors};
use hickory_resolver::proto::rr::{RData, Record, RecordType};

use crate::{DnsSetupError, Exchangers, builder, fqdn, order};

/// Why a validated lookup gave no usable answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecureFailure {
    /// The name does not exist.
    NxDomain,
    /// The answer failed DNSSEC validation (RFC 4033 "bogus"), or could not be validated.
    Bogus(String),
    /// SERVFAIL, timeouts and the like.
    Temporary(String),
}

/// An answer and whether DNSSEC proved it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validated<T> {
    pub value: T,
    pub secure: bool,
}

/// A TLSA record's fields: usage, selector, matching type, data.
pub type TlsaFields = (u8, u8, u8, Vec<u8>);

/// A validating resolver.
#[derive(Debug, Clone)]
pub struct SecureDns {
    resolver: TokioResolver,
}

/// The trust anchors could not be read.
fn anchor_error(path: &Path, message: impl std::fmt::Display) -> DnsSetupError {
    DnsSetupError(format!(
        "delivery.dane.trustAnchorFile {}: {message}",
        path.display()
    ))
}

impl SecureDns {
    /// Validates against the IANA root keys, or the DNSKEY records of `trust_anchor_file`.
    pub fn new(
        nameservers: &[SocketAddr],
        trust_anchor_file: Option<&Path>,
    ) -> Result<SecureDns, DnsSetupError> {
        let anchors = match trust_anchor_file {
            Some(path) => {
                let anchors = TrustAnchors::from_file(path).map_err(|e| anchor_error(path, e))?;
                if anchors.is_empty() {
                    return Err(anchor_error(path, "no DNSKEY record"));
                }
                anchors
            }
            None => TrustAnchors::default(),
        };
        let mut builder = builder(nameservers)?.with_trust_anchor(Arc::new(anchors));
        builder.options_mut().validate = true;
        let resolver = builder.build().map_err(|e| DnsSetupError(e.to_string()))?;
        Ok(SecureDns { resolver })
    }

    /// The answers of `name`/`kind` of the type asked for; none when there are none.
    async fn lookup(
        &self,
        name: &str,
        kind: RecordType,
    ) -> Result<Validated<Vec<Record>>, SecureFailure> {
        match self.resolver.lookup(fqdn(name), kind).await {
            Ok(lookup) => {
                let records: Vec<Record> = lookup
                    .answers()
                    .iter()
                    .filter(|r| r.record_type() == kind)
                    .cloned()
                    .collect();
                if let Some(bad) = records.iter().find(|r| r.proof == Proof::Bogus) {
                    return Err(SecureFailure::Bogus(format!(
                        "the {kind} records of {name} failed DNSSEC validation ({})",
                        bad.proof
                    )));
                }
                let secure = !records.is_empty() && records.iter().all(|r| r.proof.is_secure());
                Ok(Validated {
                    value: records,
                    secure,
                })
            }
            Err(err) => match failure(&err) {
                Some(failure) => Err(failure),
                None => Ok(Validated {
                    value: Vec::new(),
                    secure: false,
                }),
            },
        }
    }

    /// The mail exchangers of `domain`, and whether its MX records are secure. A domain
    /// without MX records is its own exchanger, secure when that denial was.
    pub async fn exchangers(
        &self,
        domain: &str,
        seed: u64,
    ) -> Result<Validated<Exchangers>, SecureFailure> {
        let found = self.lookup(domain, RecordType::MX).await?;
        let records: Vec<(u16, String)> = found
            .value
            .iter()
            .filter_map(|record| match &record.data {
                RData::MX(mx) => Some((mx.preference, mx.exchange.to_ascii())),
                _ => None,
            })
            .collect();
        Ok(Validated {
            value: order(&records, seed),
            secure: found.secure,
        })
    }

    /// The IPv6 and IPv4 addresses of `host`, secure when every address record is.
    pub async fn addresses(&self, host: &str) -> Result<Validated<Vec<IpAddr>>, SecureFailure> {
        let v6 = self.lookup(host, RecordType::AAAA).await?;
        let v4 = match self.lookup(host, RecordType::A).await {
            Err(SecureFailure::NxDomain) if !v6.value.is_empty() => Validated {
                value: Vec::new(),
                secure: v6.secure,
            },
            other => other?,
        };
        let secure = (v6.secure || v6.value.is_empty())
            && (v4.secure || v4.value.is_empty())
            && !(v6.value.is_empty() && v4.value.is_empty());
        let value = v6
            .value
            .iter()
            .chain(&v4.value)
            .filter_map(|r| match &r.data {
                RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
                RData::A(a) => Some(IpAddr::V4(a.0)),
                _ => None,
            })
            .collect();
        Ok(Validated { value, secure })
    }

    /// The TLSA records at `name` (`_25._tcp.mx.example`); none when there are none or the
    /// name does not exist.
    pub async fn tlsa(&self, name: &str) -> Result<Validated<Vec<TlsaFields>>, SecureFailure> {
        let found = match self.lookup(name, RecordType::TLSA).await {
            Err(SecureFailure::NxDomain) => {
                return Ok(Validated {
                    value: Vec::new(),
                    secure: false,
                });
            }
            other => other?,
        };
        let value = found
            .value
            .iter()
            .filter_map(|r| match &r.data {
                RData::TLSA(tlsa) => Some((
                    tlsa.cert_usage.into(),
                    tlsa.selector.into(),
                    tlsa.matching.into(),
                    tlsa.cert_data.clone(),
                )),
                _ => None,
            })
            .collect();
        Ok(Validated {
            value,
            secure: found.secure,
        })
    }

    /// Checks that answers about `name` (the root zone, or a signed test zone) validate: a
    /// resolver upstream that drops DNSSEC records makes every signed answer look bogus.
    pub async fn probe(&self, name: &str) -> Result<(), String> {
        match self.lookup(name, RecordType::SOA).await {
            Ok(found) if found.secure => Ok(()),
            Ok(found) if found.value.is_empty() => Err(format!("no SOA record for {name}")),
            Ok(_) => Err(format!("the SOA record of {name} is not signed")),
            Err(SecureFailure::Bogus(why)) => Err(why),
            Err(SecureFailure::NxDomain) => Err(format!("{name} does not exist")),
            Err(SecureFailure::Temporary(why)) => Err(why),
        }
    }
}

/// The failure an error stands for; none for "no records" (an empty answer).
fn failure(err: &NetError) -> Option<SecureFailure> {
    match err {
        NetError::Dns(DnsError::Nsec { proof, .. }) if *proof == Proof::Bogus => Some(
            SecureFailure::Bogus(format!("a denial failed DNSSEC validation: {err}")),
        ),
        NetError::Dns(DnsError::DnssecBogus) => Some(SecureFailure::Bogus(err.to_string())),
        _ if err.is_nx_domain() => Some(SecureFailure::NxDomain),
        _ if err.is_no_records_found() => None,
        NetError::Dns(DnsError::Nsec { .. }) => None,
        _ => Some(SecureFailure::Temporary(err.to_string())),
    }
}
