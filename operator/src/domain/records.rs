//! The DNS records of a Domain, and the external-dns `DNSEndpoint` that carries them.

use kube::ResourceExt;
use serde_json::{Value, json};

use crate::api::{DkimKeyStatus, DkimKeyType, DmarcPolicy, DnsRecord, Domain, SpfAll};
use crate::meta::owned_meta;

/// Every record the Domain needs, for the given DKIM keys (all published ones: pending, active
/// and retiring).
pub fn records(domain: &Domain, keys: &[DkimKeyStatus]) -> Vec<DnsRecord> {
    let spec = &domain.spec;
    let name = spec.domain.to_ascii_lowercase();
    let mut out = Vec::new();
    if spec.spf.publish {
        let mut terms = vec!["v=spf1".to_string()];
        for address in &spec.spf.addresses {
            let kind = if address.contains(':') { "ip6" } else { "ip4" };
            terms.push(format!("{kind}:{address}"));
        }
        for include in &spec.spf.include {
            terms.push(format!("include:{include}"));
        }
        terms.push(match spec.spf.all {
            SpfAll::Softfail => "~all".into(),
            SpfAll::Fail => "-all".into(),
        });
        out.push(txt(&name, terms.join(" "), "spf"));
    }
    for key in keys {
        let k = match key.algorithm {
            DkimKeyType::Ed25519 => "ed25519",
            DkimKeyType::Rsa2048 => "rsa",
        };
        out.push(txt(
            &format!("{}._domainkey.{name}", key.selector),
            format!("v=DKIM1; k={k}; p={}", key.public_key),
            "dkim",
        ));
    }
    if spec.dmarc.publish {
        let policy = match spec.dmarc.policy {
            DmarcPolicy::None => "none",
            DmarcPolicy::Quarantine => "quarantine",
            DmarcPolicy::Reject => "reject",
        };
        let mut tags = vec!["v=DMARC1".to_string(), format!("p={policy}")];
        if !spec.dmarc.aggregate_reports.is_empty() {
            tags.push(format!("rua={}", mailto(&spec.dmarc.aggregate_reports)));
        }
        if !spec.dmarc.failure_reports.is_empty() {
            tags.push(format!("ruf={}", mailto(&spec.dmarc.failure_reports)));
        }
        out.push(txt(&format!("_dmarc.{name}"), tags.join("; "), "dmarc"));
    }
    if let Some(mta_sts) = &spec.mta_sts {
        out.push(txt(
            &format!("_mta-sts.{name}"),
            format!("v=STSv1; id={}", mta_sts.id),
            "mta-sts",
        ));
    }
    if let Some(tls_rpt) = &spec.tls_rpt {
        out.push(txt(
            &format!("_smtp._tls.{name}"),
            format!("v=TLSRPTv1; rua={}", mailto(&tls_rpt.reports)),
            "tls-rpt",
        ));
    }
    out
}

fn mailto(addresses: &[String]) -> String {
    addresses
        .iter()
        .map(|a| format!("mailto:{a}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn txt(name: &str, value: String, purpose: &str) -> DnsRecord {
    DnsRecord {
        name: name.to_string(),
        type_: "TXT".into(),
        strings: split(&value),
        value,
        purpose: purpose.into(),
    }
}

/// Splits a TXT value into character-strings of at most 255 bytes (RFC 1035 §3.3.14).
pub fn split(value: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    for c in value.chars() {
        if current.len() + c.len_utf8() > 255 {
            parts.push(std::mem::take(&mut current));
        }
        current.push(c);
    }
    if !current.is_empty() || parts.is_empty() {
        parts.push(current);
    }
    parts
}

/// An external-dns `DNSEndpoint` with every record.
pub fn dns_endpoint(domain: &Domain, records: &[DnsRecord]) -> Value {
    let endpoints: Vec<Value> = records
        .iter()
        .map(|r| {
            json!({
                "dnsName": r.name,
                "recordType": r.type_,
                "targets": [r.value],
                "recordTTL": domain.spec.dns.ttl,
            })
        })
        .collect();
    json!({
        "apiVersion": "externaldns.k8s.io/v1alpha1",
        "kind": "DNSEndpoint",
        "metadata": owned_meta(domain, format!("{}-records", domain.name_any()), "dns"),
        "spec": { "endpoints": endpoints },
    })
}
