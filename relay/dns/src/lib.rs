//! MX and address lookups with hickory-resolver, and the MX rules of RFC 5321 §5.1 and
//! RFC 7505 as pure functions; lookups validated with DNSSEC for DANE in [`SecureDns`].

use std::net::{IpAddr, SocketAddr};

use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::{Resolver, ResolverBuilder, TokioResolver};

mod secure;
pub use secure::{SecureDns, SecureFailure, TlsaFields, Validated};

/// The resolver could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("delivery.dns: {0}")]
pub struct DnsSetupError(String);

/// Where a domain's mail goes, by its MX records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exchangers {
    /// MX hosts in the order to try them.
    Hosts(Vec<String>),
    /// No MX records: the domain itself is the mail host (RFC 5321 §5.1).
    Implicit,
    /// A null MX (RFC 7505): the domain accepts no mail.
    Null,
}

/// Why a lookup gave no usable answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupFailure {
    /// The domain does not exist: a permanent failure.
    NxDomain,
    /// SERVFAIL, timeouts and the like: try again later.
    Temporary(String),
}

/// A caching resolver (answers are kept within their TTL).
#[derive(Debug, Clone)]
pub struct Dns {
    resolver: TokioResolver,
}

impl Dns {
    /// The system resolver, or the given name servers (UDP and TCP).
    pub fn new(nameservers: &[SocketAddr]) -> Result<Dns, DnsSetupError> {
        Dns::build(nameservers, true)
    }

    /// Like [`Dns::new`] but keeping no answers, for checks that must see changes at once
    /// (the operator verifying published records).
    pub fn uncached(nameservers: &[SocketAddr]) -> Result<Dns, DnsSetupError> {
        Dns::build(nameservers, false)
    }

    fn build(nameservers: &[SocketAddr], cache: bool) -> Result<Dns, DnsSetupError> {
        let mut builder = builder(nameservers)?;
        if !cache {
            builder.options_mut().cache_size = 0;
        }
        let resolver = builder.build().map_err(|e| DnsSetupError(e.to_string()))?;
        Ok(Dns { resolver })
    }

    /// The mail exchangers of `domain`, equal preferences shuffled with `seed`.
    pub async fn exchangers(&self, domain: &str, seed: u64) -> Result<Exchangers, LookupFailure> {
        match self.resolver.lookup(fqdn(domain), RecordType::MX).await {
            Ok(lookup) => {
                let records: Vec<(u16, String)> = lookup
                    .answers()
                    .iter()
                    .filter_map(|record| match &record.data {
                        RData::MX(mx) => Some((mx.preference, mx.exchange.to_ascii())),
                        _ => None,
                    })
                    .collect();
                Ok(order(&records, seed))
            }
            Err(err) if err.is_nx_domain() => Err(LookupFailure::NxDomain),
            Err(err) if err.is_no_records_found() => Ok(Exchangers::Implicit),
            Err(err) => Err(temporary(&err)),
        }
    }

    /// The IPv6 and IPv4 addresses of a host.
    pub async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, LookupFailure> {
        match self.resolver.lookup_ip(fqdn(host)).await {
            Ok(ips) => Ok(ips.iter().collect()),
            Err(err) if err.is_nx_domain() => Err(LookupFailure::NxDomain),
            Err(err) if err.is_no_records_found() => Ok(Vec::new()),
            Err(err) => Err(temporary(&err)),
        }
    }
}

impl Dns {
    /// The TXT records of `name`, each record's strings joined; none when the name or the
    /// records do not exist.
    pub async fn txt(&self, name: &str) -> Result<Vec<String>, LookupFailure> {
        match self.resolver.lookup(fqdn(name), RecordType::TXT).await {
            Ok(lookup) => Ok(lookup
                .answers()
                .iter()
                .filter_map(|record| match &record.data {
                    RData::TXT(txt) => Some(
                        txt.txt_data
                            .iter()
                            .map(|part| String::from_utf8_lossy(part))
                            .collect(),
                    ),
                    _ => None,
                })
                .collect()),
            Err(err) if err.is_nx_domain() || err.is_no_records_found() => Ok(Vec::new()),
            Err(err) => Err(temporary(&err)),
        }
    }
}

/// A domain name in ASCII (IDNA A-labels), lower case and without a final dot; none when it
/// is not a valid name.
pub fn to_ascii(name: &str) -> Option<String> {
    let name = hickory_resolver::proto::rr::Name::from_utf8(name.trim_end_matches('.')).ok()?;
    Some(name.to_ascii().trim_end_matches('.').to_ascii_lowercase())
}

/// A resolver builder for the system resolver, or the given name servers (UDP and TCP).
fn builder(
    nameservers: &[SocketAddr],
) -> Result<ResolverBuilder<TokioRuntimeProvider>, DnsSetupError> {
    if nameservers.is_empty() {
        return Resolver::builder_tokio()
            .map_err(|e| DnsSetupError(format!("reading the system resolver configuration: {e}")));
    }
    let servers = nameservers
        .iter()
        .map(|addr| {
            let mut server = NameServerConfig::udp_and_tcp(addr.ip());
            for connection in &mut server.connections {
                connection.port = addr.port();
            }
            server
        })
        .collect();
    Ok(Resolver::builder_with_config(
        ResolverConfig::from_name_servers(servers),
        TokioRuntimeProvider::default(),
    ))
}

fn fqdn(name: &str) -> String {
    format!("{}.", name.trim_end_matches('.'))
}

fn temporary(err: &NetError) -> LookupFailure {
    LookupFailure::Temporary(err.to_string())
}

/// Orders MX records by preference, shuffling equal preferences; one record `0 .` is a null MX.
pub fn order(records: &[(u16, String)], seed: u64) -> Exchangers {
    let host = |name: &str| name.trim_end_matches('.').to_ascii_lowercase();
    if let [(_, exchange)] = records
        && host(exchange).is_empty()
    {
        return Exchangers::Null;
    }
    let mut records: Vec<(u16, String)> = records
        .iter()
        .filter(|(_, e)| !host(e).is_empty())
        .map(|(p, e)| (*p, host(e)))
        .collect();
    if records.is_empty() {
        return Exchangers::Implicit;
    }
    // splitmix64: well mixed even for small seeds.
    let mut state = seed;
    let mut random = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    // Fisher–Yates, then a stable sort by preference keeps the shuffle within each preference.
    for i in (1..records.len()).rev() {
        let j = (random() % (i as u64 + 1)) as usize;
        records.swap(i, j);
    }
    records.sort_by_key(|(preference, _)| *preference);
    Exchangers::Hosts(records.into_iter().map(|(_, e)| e).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mx(records: &[(u16, &str)], seed: u64) -> Exchangers {
        order(
            &records
                .iter()
                .map(|(p, e)| (*p, e.to_string()))
                .collect::<Vec<_>>(),
            seed,
        )
    }

    #[test]
    fn preference_order() {
        let hosts = mx(
            &[(20, "b.example."), (10, "A.example."), (30, "c.example.")],
            7,
        );
        assert_eq!(
            hosts,
            Exchangers::Hosts(vec![
                "a.example".into(),
                "b.example".into(),
                "c.example".into()
            ])
        );
    }

    #[test]
    fn equal_preferences_are_shuffled() {
        let records = [(10, "a."), (10, "b."), (10, "c."), (20, "z.")];
        let mut firsts = std::collections::HashSet::new();
        for seed in 0..64 {
            let Exchangers::Hosts(hosts) = mx(&records, seed) else {
                panic!()
            };
            assert_eq!(hosts.last().map(String::as_str), Some("z"));
            firsts.insert(hosts[0].clone());
        }
        assert_eq!(firsts.len(), 3, "each equal host comes first for some seed");
    }

    #[test]
    fn names_in_ascii() {
        assert_eq!(to_ascii("Example.COM.").as_deref(), Some("example.com"));
        assert_eq!(
            to_ascii("bücher.example").as_deref(),
            Some("xn--bcher-kva.example")
        );
        assert_eq!(to_ascii("a..b"), None);
    }

    #[test]
    fn null_and_implicit() {
        assert_eq!(mx(&[(0, ".")], 1), Exchangers::Null);
        assert_eq!(mx(&[], 1), Exchangers::Implicit);
    }
}
