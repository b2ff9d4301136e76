//! The `Domain` resource: a sending domain, its DKIM keys and the DNS records that make its mail
//! pass SPF, DKIM and DMARC.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::RelayRef;
use super::relay::DURATION_PATTERN;

/// Pattern of a DNS domain name.
const DOMAIN_PATTERN: &str =
    r"^([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$";

/// A sending domain of a Relay.
#[derive(CustomResource, JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "postern.io",
    version = "v1alpha1",
    kind = "Domain",
    namespaced,
    status = "DomainStatus",
    category = "postern",
    doc = "A sending domain: DKIM keys and the DNS records for SPF, DKIM and DMARC.",
    printcolumn = r#"{"name": "Domain", "type": "string", "jsonPath": ".spec.domain"}"#,
    printcolumn = r#"{"name": "Relay", "type": "string", "jsonPath": ".spec.relayRef.name"}"#,
    printcolumn = r#"{"name": "Ready", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name": "DNS", "type": "string", "description": "Whether the published DNS records match", "jsonPath": ".status.conditions[?(@.type==\"DnsVerified\")].reason"}"#,
    printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct DomainSpec {
    /// The domain in From addresses, such as `example.com`.
    #[schemars(regex(pattern = DOMAIN_PATTERN), length(min = 1, max = 253))]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self == oldSelf", "message": "domain cannot be changed; create another Domain"}]))]
    pub domain: String,
    /// The Relay that signs and sends this domain's mail.
    pub relay_ref: RelayRef,
    /// DKIM keys and their rotation.
    #[serde(default)]
    pub dkim: DkimSpec,
    /// The SPF record.
    #[serde(default)]
    pub spf: SpfSpec,
    /// The DMARC record.
    #[serde(default)]
    pub dmarc: DmarcSpec,
    /// Publish an MTA-STS TXT record (`_mta-sts.<domain>`); the policy file itself is served
    /// elsewhere, at `https://mta-sts.<domain>/.well-known/mta-sts.txt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mta_sts: Option<MtaStsSpec>,
    /// Publish a TLS-RPT record (`_smtp._tls.<domain>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_rpt: Option<TlsRptSpec>,
    /// How the records reach DNS.
    #[serde(default)]
    pub dns: DnsSpec,
}

/// DKIM signing keys.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DkimSpec {
    /// One key (and signature) per algorithm. Default: ed25519 and rsa2048.
    #[serde(default = "default_algorithms")]
    #[schemars(length(min = 1, max = 2))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub algorithms: Vec<DkimKeyType>,
    /// Selectors are `<prefix>-<algorithm>-<yyyymmdd>`. Default: postern.
    #[serde(default = "default_selector_prefix")]
    #[schemars(regex(pattern = r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$"))]
    pub selector_prefix: String,
    /// Make a new key after this long (such as `90d`). Default: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub rotate_every: Option<String>,
    /// How long a replaced key stays published after signing stopped using it, so mail signed
    /// with it still verifies. Default: 7d.
    #[serde(default = "default_retire_after")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub retire_after: String,
}

impl Default for DkimSpec {
    fn default() -> Self {
        DkimSpec {
            algorithms: default_algorithms(),
            selector_prefix: default_selector_prefix(),
            rotate_every: None,
            retire_after: default_retire_after(),
        }
    }
}

fn default_algorithms() -> Vec<DkimKeyType> {
    vec![DkimKeyType::Ed25519, DkimKeyType::Rsa2048]
}
fn default_selector_prefix() -> String {
    "postern".into()
}
fn default_retire_after() -> String {
    "7d".into()
}

/// A DKIM key type.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum DkimKeyType {
    /// ed25519-sha256 (RFC 8463). Not every receiver verifies it yet; pair it with RSA.
    Ed25519,
    /// rsa-sha256 with a 2048-bit key.
    Rsa2048,
}

impl DkimKeyType {
    /// The name used in selectors and Secret keys.
    pub fn label(self) -> &'static str {
        match self {
            DkimKeyType::Ed25519 => "ed25519",
            DkimKeyType::Rsa2048 => "rsa",
        }
    }
}

/// The SPF record (`v=spf1 ...` at the domain).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SpfSpec {
    /// Publish the record. Set false when the domain already has one; add the relay's
    /// addresses to it by hand. Default: true.
    #[serde(default = "yes")]
    pub publish: bool,
    /// Addresses or networks mail leaves from (the cluster's egress / NAT addresses).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 64)))]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self.all(n, isCIDR(n) || isIP(n))", "message": "every entry must be an IP address or CIDR"}]))]
    pub addresses: Vec<String>,
    /// Other senders' SPF records, such as `_spf.google.com`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<String>,
    /// What receivers do with mail from elsewhere: softfail (`~all`) or fail (`-all`).
    /// Default: softfail.
    #[serde(default)]
    pub all: SpfAll,
}

impl Default for SpfSpec {
    fn default() -> Self {
        SpfSpec {
            publish: true,
            addresses: Vec::new(),
            include: Vec::new(),
            all: SpfAll::default(),
        }
    }
}

fn yes() -> bool {
    true
}

/// The final SPF mechanism.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum SpfAll {
    #[default]
    Softfail,
    Fail,
}

/// The DMARC record (`_dmarc.<domain>`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DmarcSpec {
    /// Publish the record. Default: true.
    #[serde(default = "yes")]
    pub publish: bool,
    /// Default: none (report only). Move to quarantine, then reject, once reports are clean.
    #[serde(default)]
    pub policy: DmarcPolicy,
    /// Addresses for aggregate reports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(regex(pattern = r"^[^@\s;,]+@[^@\s;,]+$")))]
    pub aggregate_reports: Vec<String>,
    /// Addresses for failure reports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(regex(pattern = r"^[^@\s;,]+@[^@\s;,]+$")))]
    pub failure_reports: Vec<String>,
}

impl Default for DmarcSpec {
    fn default() -> Self {
        DmarcSpec {
            publish: true,
            policy: DmarcPolicy::default(),
            aggregate_reports: Vec::new(),
            failure_reports: Vec::new(),
        }
    }
}

/// DMARC policy.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum DmarcPolicy {
    #[default]
    None,
    Quarantine,
    Reject,
}

/// The MTA-STS TXT record.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MtaStsSpec {
    /// Policy id; change it whenever the policy file changes.
    #[schemars(regex(pattern = r"^[A-Za-z0-9]{1,32}$"))]
    pub id: String,
}

/// The TLS-RPT TXT record.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsRptSpec {
    /// Addresses for TLS reports.
    #[schemars(length(min = 1))]
    #[schemars(inner(regex(pattern = r"^[^@\s;,]+@[^@\s;,]+$")))]
    pub reports: Vec<String>,
}

/// How records reach DNS.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DnsSpec {
    /// external-dns: a DNSEndpoint object carries the records; manual: publish the records in
    /// status.records yourself. Default: manual.
    #[serde(default)]
    pub provider: DnsProvider,
    /// TTL of the records, in seconds. Default: 3600.
    #[serde(default = "default_ttl")]
    #[schemars(range(min = 60, max = 86400))]
    pub ttl: i64,
}

impl Default for DnsSpec {
    fn default() -> Self {
        DnsSpec {
            provider: DnsProvider::default(),
            ttl: default_ttl(),
        }
    }
}

fn default_ttl() -> i64 {
    3600
}

/// Who publishes the records.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum DnsProvider {
    #[serde(rename = "external-dns")]
    ExternalDns,
    #[default]
    #[serde(rename = "manual")]
    Manual,
}

/// What the operator observed and did.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DomainStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, DkimReady, DnsPublished and DnsVerified.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The DNS records to publish, exactly.
    #[serde(default)]
    pub records: Vec<DnsRecord>,
    /// Every DKIM key and where it is in its life.
    #[serde(default)]
    pub dkim_keys: Vec<DkimKeyStatus>,
    /// Selectors signing now.
    #[serde(default)]
    pub active_selectors: Vec<String>,
    /// Selectors published and waiting to be seen in DNS before they sign.
    #[serde(default)]
    pub next_selectors: Vec<String>,
}

/// One DNS record.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DnsRecord {
    /// Fully qualified name, without the trailing dot.
    pub name: String,
    /// Always TXT today.
    #[serde(rename = "type")]
    pub type_: String,
    /// The value as one string.
    pub value: String,
    /// The value split into the 255-byte character-strings DNS carries.
    pub strings: Vec<String>,
    /// spf, dkim, dmarc, mta-sts or tls-rpt.
    pub purpose: String,
}

/// A DKIM key's life: pending (published, waiting to be seen in DNS), active (signing),
/// retiring (still published, no longer signing).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum DkimKeyState {
    Pending,
    Active,
    Retiring,
}

/// One DKIM key.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DkimKeyStatus {
    pub selector: String,
    pub algorithm: DkimKeyType,
    pub state: DkimKeyState,
    /// The `p=` value of the DKIM record (base64 public key).
    pub public_key: String,
    pub created: Time,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activated: Option<Time>,
    /// When a retiring key's record is removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retire_at: Option<Time>,
}
