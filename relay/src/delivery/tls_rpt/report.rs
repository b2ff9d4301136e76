//! SMTP TLS Reporting (RFC 8460) as pure functions: what one period of sessions to a policy
//! domain adds up to ([`Tally`]), the aggregate report made of it, and where the domain wants
//! it (`_smtp._tls` TXT record).

use serde::{Deserialize, Serialize};

/// Why a session failed, by RFC 8460 §4.3's result types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResultType {
    StarttlsNotSupported,
    CertificateHostMismatch,
    CertificateExpired,
    CertificateNotTrusted,
    ValidationFailure,
    StsPolicyFetchError,
    StsPolicyInvalid,
    StsWebpkiInvalid,
    /// No TLSA record of the host matched its certificate, or none was usable.
    TlsaInvalid,
    /// The TLSA records did not validate with DNSSEC or could not be had.
    DnssecInvalid,
    /// The destination is `dane-only` and the host has no TLSA records DNSSEC vouches for.
    DaneRequired,
}

impl ResultType {
    pub fn as_str(self) -> &'static str {
        match self {
            ResultType::StarttlsNotSupported => "starttls-not-supported",
            ResultType::CertificateHostMismatch => "certificate-host-mismatch",
            ResultType::CertificateExpired => "certificate-expired",
            ResultType::CertificateNotTrusted => "certificate-not-trusted",
            ResultType::ValidationFailure => "validation-failure",
            ResultType::StsPolicyFetchError => "sts-policy-fetch-error",
            ResultType::StsPolicyInvalid => "sts-policy-invalid",
            ResultType::StsWebpkiInvalid => "sts-webpki-invalid",
            ResultType::TlsaInvalid => "tlsa-invalid",
            ResultType::DnssecInvalid => "dnssec-invalid",
            ResultType::DaneRequired => "dane-required",
        }
    }
}

/// The policy a tally is about (RFC 8460 §4.4 `policy`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyFacts {
    /// `sts` or `tlsa`, or `no-policy-found` when there was none to apply.
    pub policy_type: String,
    /// The policy file's lines, or the TLSA records in presentation form.
    pub policy_string: Vec<String>,
    pub mx_host: Vec<String>,
}

/// Failed sessions of one kind with one MX host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FailureCount {
    pub result_type: ResultType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receiving_mx_hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receiving_ip: Option<String>,
    pub count: u64,
}

/// The sessions of one period to one policy domain.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Tally {
    pub policy: PolicyFacts,
    pub successes: u64,
    /// By result type, MX host and address.
    pub failures: Vec<FailureCount>,
}

/// At most this many failure details per tally; further ones add to the counts only.
const MAX_DETAILS: usize = 100;

impl Tally {
    pub fn failed_sessions(&self) -> u64 {
        self.failures.iter().map(|f| f.count).sum()
    }

    /// Counts one failed session.
    pub fn fail(&mut self, result_type: ResultType, mx: Option<&str>, ip: Option<&str>) {
        self.add(FailureCount {
            result_type,
            receiving_mx_hostname: mx.map(str::to_string),
            receiving_ip: ip.map(str::to_string),
            count: 1,
        });
    }

    fn add(&mut self, failure: FailureCount) {
        let same = |f: &&mut FailureCount| {
            f.result_type == failure.result_type
                && f.receiving_mx_hostname == failure.receiving_mx_hostname
                && f.receiving_ip == failure.receiving_ip
        };
        if let Some(known) = self.failures.iter_mut().find(same) {
            known.count += failure.count;
        } else if self.failures.len() < MAX_DETAILS {
            self.failures.push(failure);
        } else if let Some(first) = self.failures.first_mut() {
            first.count += failure.count;
        }
    }

    /// True when no session was counted.
    pub fn is_empty(&self) -> bool {
        self.successes == 0 && self.failures.is_empty()
    }

    /// Adds `other`'s sessions (another process's, or a later flush); the newer policy wins.
    pub fn merge(&mut self, other: Tally) {
        if !other.policy.policy_type.is_empty() {
            self.policy = other.policy;
        }
        self.successes += other.successes;
        for failure in other.failures {
            self.add(failure);
        }
    }
}

/// Who sends the report.
#[derive(Debug, Clone)]
pub struct Submitter<'a> {
    pub organization: &'a str,
    pub contact: &'a str,
}

/// The aggregate report (RFC 8460 §4.4) about the policy domain `domain` for the period
/// `[start, end)`, both RFC 3339: one entry for each of `policies` that counted a session.
pub fn report_json(
    submitter: &Submitter<'_>,
    report_id: &str,
    (start, end): (&str, &str),
    domain: &str,
    policies: &[&Tally],
) -> serde_json::Value {
    let policies: Vec<serde_json::Value> = policies
        .iter()
        .filter(|tally| !tally.is_empty())
        .map(|tally| policy_json(domain, tally))
        .collect();
    serde_json::json!({
        "organization-name": submitter.organization,
        "date-range": { "start-datetime": start, "end-datetime": end },
        "contact-info": submitter.contact,
        "report-id": report_id,
        "policies": policies,
    })
}

/// One entry of a report's `policies`.
fn policy_json(domain: &str, tally: &Tally) -> serde_json::Value {
    let mut policy = serde_json::json!({
        "policy-type": if tally.policy.policy_type.is_empty() { "no-policy-found" } else { tally.policy.policy_type.as_str() },
        "policy-domain": domain,
    });
    if !tally.policy.policy_string.is_empty() {
        policy["policy-string"] = serde_json::json!(tally.policy.policy_string);
    }
    if !tally.policy.mx_host.is_empty() {
        policy["mx-host"] = serde_json::json!(tally.policy.mx_host);
    }
    let details: Vec<serde_json::Value> = tally
        .failures
        .iter()
        .map(|f| {
            let mut detail = serde_json::json!({
                "result-type": f.result_type.as_str(),
                "failed-session-count": f.count,
            });
            if let Some(mx) = &f.receiving_mx_hostname {
                detail["receiving-mx-hostname"] = serde_json::json!(mx);
            }
            if let Some(ip) = &f.receiving_ip {
                detail["receiving-ip"] = serde_json::json!(ip);
            }
            detail
        })
        .collect();
    serde_json::json!({
        "policy": policy,
        "summary": {
            "total-successful-session-count": tally.successes,
            "total-failure-session-count": tally.failed_sessions(),
        },
        "failure-details": details,
    })
}

/// Where a domain wants its reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    Mailto(String),
    Https(String),
}

/// The report destinations of a domain's `_smtp._tls` TXT records: the one record starting
/// with `v=TLSRPTv1`, its `rua` list (`mailto:` and `https:` URIs, comma separated); none when
/// there is no such record or more than one.
pub fn destinations(records: &[String]) -> Vec<Destination> {
    let mut tlsrpt = records.iter().filter(|r| {
        r.strip_prefix("v=TLSRPTv1")
            .is_some_and(|rest| rest.is_empty() || rest.starts_with([';', ' ', '\t']))
    });
    let (Some(record), None) = (tlsrpt.next(), tlsrpt.next()) else {
        return Vec::new();
    };
    let Some(rua) = record
        .split(';')
        .filter_map(|field| field.trim_matches([' ', '\t']).strip_prefix("rua="))
        .next()
    else {
        return Vec::new();
    };
    rua.split(',')
        .map(|uri| uri.trim_matches([' ', '\t']))
        .filter_map(|uri| {
            if let Some(address) = uri.strip_prefix("mailto:") {
                let address = address.split('?').next().unwrap_or_default();
                address
                    .contains('@')
                    .then(|| Destination::Mailto(address.to_string()))
            } else if uri.starts_with("https://") {
                Some(Destination::Https(uri.to_string()))
            } else {
                None
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rua_lists_mailto_and_https() {
        let found = destinations(&[
            "v=spf1 -all".into(),
            "v=TLSRPTv1; rua=mailto:tls@example.com,https://r.example.com/v1?x=1".into(),
        ]);
        assert_eq!(
            found,
            [
                Destination::Mailto("tls@example.com".into()),
                Destination::Https("https://r.example.com/v1?x=1".into())
            ]
        );
        assert!(destinations(&["v=TLSRPTv1;rua=ftp://x".into()]).is_empty());
        assert!(destinations(&["v=TLSRPTv1".into()]).is_empty());
        assert!(
            destinations(&[
                "v=TLSRPTv1;rua=mailto:a@b".into(),
                "v=TLSRPTv1;rua=mailto:c@d".into()
            ])
            .is_empty(),
            "two records count as none"
        );
    }

    #[test]
    fn tallies_merge_by_kind_and_host() {
        let mut a = Tally {
            successes: 3,
            ..Tally::default()
        };
        a.fail(
            ResultType::CertificateExpired,
            Some("mx1"),
            Some("192.0.2.1"),
        );
        let mut b = Tally {
            policy: PolicyFacts {
                policy_type: "sts".into(),
                policy_string: vec!["version: STSv1".into()],
                mx_host: vec!["mx1".into()],
            },
            ..Tally::default()
        };
        b.fail(
            ResultType::CertificateExpired,
            Some("mx1"),
            Some("192.0.2.1"),
        );
        b.fail(ResultType::StarttlsNotSupported, Some("mx2"), None);
        a.merge(b);
        assert_eq!(a.successes, 3);
        assert_eq!(a.failed_sessions(), 3);
        assert_eq!(a.failures.len(), 2);
        assert_eq!(a.failures[0].count, 2);
        assert_eq!(a.policy.policy_type, "sts");
    }

    #[test]
    fn the_report_has_the_rfc_fields() {
        let mut tally = Tally {
            policy: PolicyFacts {
                policy_type: "sts".into(),
                policy_string: vec!["version: STSv1".into(), "mode: enforce".into()],
                mx_host: vec!["*.mail.example.com".into()],
            },
            successes: 5,
            failures: Vec::new(),
        };
        tally.fail(
            ResultType::CertificateHostMismatch,
            Some("mx.mail.example.com"),
            Some("192.0.2.7"),
        );
        let submitter = Submitter {
            organization: "Example Relay",
            contact: "postmaster@relay.example",
        };
        let json = report_json(
            &submitter,
            "01ID",
            ("2026-12-01T00:00:00Z", "2026-12-02T00:00:00Z"),
            "mail.example.com",
            &[&tally, &Tally::default()],
        );
        assert_eq!(json["organization-name"], "Example Relay");
        assert_eq!(json["date-range"]["end-datetime"], "2026-12-02T00:00:00Z");
        assert_eq!(json["contact-info"], "postmaster@relay.example");
        assert_eq!(json["report-id"], "01ID");
        assert_eq!(
            json["policies"].as_array().map(Vec::len),
            Some(1),
            "a policy without sessions is left out"
        );
        let policy = &json["policies"][0];
        assert_eq!(policy["policy"]["policy-type"], "sts");
        assert_eq!(policy["policy"]["policy-domain"], "mail.example.com");
        assert_eq!(policy["policy"]["mx-host"][0], "*.mail.example.com");
        assert_eq!(policy["summary"]["total-successful-session-count"], 5);
        assert_eq!(policy["summary"]["total-failure-session-count"], 1);
        let detail = &policy["failure-details"][0];
        assert_eq!(detail["result-type"], "certificate-host-mismatch");
        assert_eq!(detail["receiving-mx-hostname"], "mx.mail.example.com");
        assert_eq!(detail["receiving-ip"], "192.0.2.7");
        assert_eq!(detail["failed-session-count"], 1);
    }
}
