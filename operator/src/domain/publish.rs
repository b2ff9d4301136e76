//! The publish stage of the Domain reconciler: the records go to external-dns as a
//! DNSEndpoint where that is asked for and installed; otherwise status lists them for a person.

use kube::ResourceExt;

use super::{DomainError, EXTERNAL_DNS_CRD, records};
use crate::api::{DnsProvider, DnsRecord, Domain};
use crate::apply;
use crate::context::Context;
use crate::relay::dereference::crd_exists;

/// Publishes `records` per `spec.dns.provider`; returns the `DnsPublished` condition.
pub async fn publish(
    ctx: &Context,
    domain: &Domain,
    records: &[DnsRecord],
    resync: bool,
) -> Result<(bool, &'static str, String), DomainError> {
    let namespace = domain.namespace().unwrap_or_else(|| "default".into());
    let endpoint_name = format!("{}-records", domain.name_any());
    let external_dns = crd_exists(&ctx.client, EXTERNAL_DNS_CRD).await?;
    Ok(match (domain.spec.dns.provider, external_dns) {
        (DnsProvider::ExternalDns, true) => {
            let endpoint = records::dns_endpoint(domain, records);
            apply::apply(&ctx.client, &namespace, &endpoint, resync).await?;
            let message = format!(
                "DNSEndpoint {endpoint_name} carries {} records",
                records.len()
            );
            (true, "ExternalDns", message)
        }
        (DnsProvider::ExternalDns, false) => (
            false,
            "ExternalDnsMissing",
            "dns.provider is external-dns but the DNSEndpoint CRD is not installed; publish status.records by hand".into(),
        ),
        (DnsProvider::Manual, installed) => {
            if installed {
                let endpoint = ("externaldns.k8s.io/v1alpha1", "DNSEndpoint", endpoint_name.as_str());
                apply::delete(&ctx.client, &namespace, endpoint).await?;
            }
            let message = format!(
                "publish the {} records in status.records at your DNS provider",
                records.len()
            );
            (false, "Manual", message)
        }
    })
}
