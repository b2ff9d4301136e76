//! DNS verification: do the published TXT records match what the Domain needs?

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use postern_dns::{Dns, LookupFailure};

use crate::api::DnsRecord;

/// TXT lookups, behind a trait so tests can point the operator at a DNS server on loopback.
pub trait TxtLookup: Send + Sync {
    /// TXT records of `name` (each record's strings joined); empty when there are none.
    fn txt<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Vec<String>, String>>;
}

impl TxtLookup for Dns {
    fn txt<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Vec<String>, String>> {
        Box::pin(async move {
            Dns::txt(self, name).await.map_err(|e| match e {
                LookupFailure::NxDomain => "no such domain".to_string(),
                LookupFailure::Temporary(message) => message,
            })
        })
    }
}

/// The system resolver (or the given name servers) as a [`TxtLookup`] that keeps no answers,
/// so a record fixed at the DNS host is seen at the next check (the resolvers it asks may still
/// cache it for its TTL).
pub fn resolver(nameservers: &[std::net::SocketAddr]) -> Result<Arc<dyn TxtLookup>, String> {
    Dns::uncached(nameservers)
        .map(|dns| Arc::new(dns) as Arc<dyn TxtLookup>)
        .map_err(|e| e.to_string())
}

/// What DNS serves for one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    Matches,
    /// No TXT record at the name, or none of the record's kind.
    Missing,
    /// A record of the same kind with another value.
    Differs(String),
    /// The lookup failed (SERVFAIL, timeout).
    Failed(String),
}

/// Longest wait for one lookup; the lookups of a Domain run at the same time, so verifying it
/// takes at most this long however many records it has.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Looks up each record, all at once. A record matches when one TXT record at its name equals
/// its value (whitespace-insensitive); `Differs` names the record of the same kind that does
/// not.
pub async fn verify(lookup: &dyn TxtLookup, records: &[DnsRecord]) -> Vec<Check> {
    futures::future::join_all(records.iter().map(|record| check(lookup, record))).await
}

async fn check(lookup: &dyn TxtLookup, record: &DnsRecord) -> Check {
    match tokio::time::timeout(LOOKUP_TIMEOUT, lookup.txt(&record.name)).await {
        Err(_) => Check::Failed(format!("no answer within {} s", LOOKUP_TIMEOUT.as_secs())),
        Ok(answer) => match answer {
            Err(err) => Check::Failed(err),
            Ok(found) => {
                let wanted = normalize(&record.value);
                let tag = record
                    .value
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .split_whitespace()
                    .next()
                    .unwrap_or("");
                if found.iter().any(|f| normalize(f) == wanted) {
                    Check::Matches
                } else if let Some(other) = found.iter().find(|f| f.starts_with(tag)) {
                    Check::Differs(other.clone())
                } else {
                    Check::Missing
                }
            }
        },
    }
}

/// `DnsVerified` from the checks of `records`: which records are missing, differ or failed.
pub fn condition(records: &[DnsRecord], checks: &[Check]) -> (bool, &'static str, String) {
    let problems: Vec<(String, &'static str)> = records
        .iter()
        .zip(checks)
        .filter_map(|(record, check)| match check {
            Check::Matches => None,
            Check::Missing => Some((format!("{} TXT is missing", record.name), "RecordMissing")),
            Check::Differs(found) => Some((
                format!("{} TXT is {found:?}, want {:?}", record.name, record.value),
                "RecordDiffers",
            )),
            Check::Failed(err) => Some((
                format!("{} TXT lookup failed: {err}", record.name),
                "LookupFailed",
            )),
        })
        .collect();
    match problems.first() {
        None => (
            true,
            "Verified",
            format!("DNS serves all {} records", records.len()),
        ),
        Some((_, reason)) => {
            let message = problems
                .iter()
                .map(|(m, _)| m.as_str())
                .collect::<Vec<_>>()
                .join("; ");
            (false, reason, message)
        }
    }
}

fn normalize(value: &str) -> String {
    value
        .split(';')
        .map(|part| part.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join(";")
}
