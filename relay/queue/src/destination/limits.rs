//! Which destination a next hop belongs to, and its limits: `delivery.destinations` patterns
//! group every domain and MX host they match into one destination (`*.google.com`); anything
//! else is its own destination, named by its MX host set or its route's address.

use postern_config::{DeliveryConfig, OutboundTls, Rate};

/// The limits that hold for one destination across all delivery processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub connections: usize,
    pub messages_per_connection: usize,
    pub rate: Option<Rate>,
    pub burst: u32,
}

impl Limits {
    /// The limits while the destination has asked `halvings` times to slow down.
    pub fn halved(&self, halvings: u32) -> Limits {
        // Without a configured rate, the halved connections do the slowing.
        Limits {
            connections: (self.connections >> halvings).max(1),
            rate: self.rate.map(|rate| Rate {
                messages: (rate.messages >> halvings).max(1),
                per: rate.per,
            }),
            ..*self
        }
    }
}

/// A destination: its name (shown by `postern queue summary`) and its limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub name: String,
    pub limits: Limits,
    /// The matching pattern's `tls`, for MX delivery.
    pub tls: Option<OutboundTls>,
    /// A key for NATS KV that names this destination and only it (from its name).
    id: String,
}

impl Destination {
    /// The destination of mail for `domain` sent to `hosts` (its MX hosts in order, or a
    /// route's or the smarthost's `host:port`).
    pub fn of(config: &DeliveryConfig, domain: &str, hosts: &[String]) -> Destination {
        let defaults = Limits {
            connections: config.connections_per_destination,
            messages_per_connection: config.max_messages_per_connection,
            rate: config.rate_per_destination,
            burst: config.burst_per_destination,
        };
        let names = std::iter::once(domain).chain(hosts.iter().map(String::as_str));
        let matched = config.destinations.iter().find(|limits| {
            names
                .clone()
                .any(|name| matches(&limits.pattern, host_of(name)))
        });
        match matched {
            Some(limits) => Destination::named(
                limits.pattern.clone(),
                Limits {
                    connections: limits.connections.unwrap_or(defaults.connections),
                    messages_per_connection: limits
                        .messages_per_connection
                        .unwrap_or(defaults.messages_per_connection),
                    rate: limits.rate.or(defaults.rate),
                    burst: limits.burst.unwrap_or(defaults.burst),
                },
                limits.tls,
            ),
            None => {
                let mut sorted: Vec<String> =
                    hosts.iter().map(|h| h.to_ascii_lowercase()).collect();
                sorted.sort();
                sorted.dedup();
                Destination::named(sorted.join(","), defaults, None)
            }
        }
    }

    /// A key for NATS KV that names this destination and only it.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn named(name: String, limits: Limits, tls: Option<OutboundTls>) -> Destination {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(name.as_bytes());
        let id = digest[..10].iter().map(|b| format!("{b:02x}")).collect();
        Destination {
            name,
            limits,
            tls,
            id,
        }
    }
}

/// The host part of `host:port` (or a bare host).
fn host_of(name: &str) -> &str {
    match name.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => {
            host.trim_matches(['[', ']'])
        }
        _ => name,
    }
}

/// `*` matches everything, `*.example.com` any name below example.com, anything else itself.
fn matches(pattern: &str, name: &str) -> bool {
    let name = name.trim_end_matches('.');
    if pattern == "*" {
        return true;
    }
    match pattern.strip_prefix("*.") {
        Some(suffix) => {
            name.len() > suffix.len() + 1
                && name[name.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
                && name.as_bytes()[name.len() - suffix.len() - 1] == b'.'
        }
        None => pattern.eq_ignore_ascii_case(name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postern_config::DestinationLimits;

    fn config() -> DeliveryConfig {
        DeliveryConfig {
            connections_per_destination: 20,
            destinations: vec![
                DestinationLimits {
                    pattern: "*.google.com".into(),
                    connections: Some(5),
                    messages_per_connection: None,
                    rate: Some("600/min".parse().unwrap()),
                    burst: Some(10),
                    tls: Some(postern_config::OutboundTls::Verify),
                },
                DestinationLimits {
                    pattern: "example.org".into(),
                    connections: Some(1),
                    messages_per_connection: Some(10),
                    rate: None,
                    burst: None,
                    tls: None,
                },
            ],
            ..DeliveryConfig::default()
        }
    }

    #[test]
    fn a_pattern_groups_every_domain_whose_mx_hosts_it_matches() {
        let hosted = |domain: &str| {
            Destination::of(
                &config(),
                domain,
                &[
                    "aspmx.l.google.com".into(),
                    "alt1.aspmx.l.GOOGLE.com".into(),
                ],
            )
        };
        let a = hosted("customer-a.example");
        let b = hosted("customer-b.example");
        assert_eq!(a, b, "one destination for every domain hosted there");
        assert_eq!(a.name, "*.google.com");
        assert_eq!(a.limits.connections, 5);
        assert_eq!(
            a.limits.messages_per_connection, 100,
            "the default where unset"
        );
        assert_eq!(a.limits.burst, 10);
        assert_eq!(a.tls, Some(postern_config::OutboundTls::Verify));
        assert_eq!(a.id(), b.id());
    }

    #[test]
    fn a_domain_pattern_matches_the_recipient_domain() {
        let d = Destination::of(&config(), "EXAMPLE.org", &["mx.provider.net".into()]);
        assert_eq!(d.name, "example.org");
        assert_eq!(d.limits.connections, 1);
        assert_eq!(d.limits.messages_per_connection, 10);
        assert_eq!(d.tls, None, "unset: MX delivery's default");
    }

    #[test]
    fn anything_else_is_its_mx_host_set_in_any_order() {
        let one = Destination::of(
            &config(),
            "a.test",
            &["mx2.a.test".into(), "mx1.a.test".into()],
        );
        let two = Destination::of(
            &config(),
            "b.test",
            &["mx1.a.test".into(), "MX2.a.test".into()],
        );
        assert_eq!(one.name, "mx1.a.test,mx2.a.test");
        assert_eq!(one, two);
        assert_eq!(one.limits.connections, 20);
        assert_eq!(one.limits.rate, None);
        let other = Destination::of(&config(), "c.test", &["mx.c.test".into()]);
        assert_ne!(one.id(), other.id());
        assert!(one.id().bytes().all(|b| b.is_ascii_hexdigit()));
    }

    #[test]
    fn routes_match_by_their_host() {
        let d = Destination::of(&config(), "x.test", &["smtp-relay.google.com:587".into()]);
        assert_eq!(d.name, "*.google.com");
        assert!(!matches("*.google.com", "google.com"));
        assert!(!matches("*.google.com", "notgoogle.com"));
        assert!(matches("*", "anything"));
    }

    #[test]
    fn halving_lowers_connections_and_rate_but_never_to_zero() {
        let limits = Limits {
            connections: 5,
            messages_per_connection: 100,
            rate: Some("600/min".parse().unwrap()),
            burst: 10,
        };
        let halved = limits.halved(2);
        assert_eq!(halved.connections, 1);
        assert_eq!(halved.rate.map(|r| r.messages), Some(150));
        assert_eq!(limits.halved(4).connections, 1);
        let unlimited = Limits {
            rate: None,
            ..limits
        };
        assert_eq!(unlimited.halved(1).rate, None);
        assert_eq!(unlimited.halved(1).connections, 2);
        assert_eq!(limits.halved(0), limits);
    }
}
