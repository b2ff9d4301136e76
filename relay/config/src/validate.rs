//! Checks that serde cannot express, each naming the field at fault.

use std::collections::HashSet;
use std::fmt;

use crate::{Config, ListenerTls};

/// One invalid field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the field, such as `ingress.listeners[0].tls`.
    pub field: String,
    pub message: String,
}

/// Why a configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Not valid YAML, an unknown key or a value of the wrong type.
    #[error("{0}")]
    Parse(String),
    /// Well-formed but invalid values.
    #[error("{}", Invalid(.0))]
    Invalid(Vec<FieldError>),
}

struct Invalid<'a>(&'a [FieldError]);

impl fmt::Display for Invalid<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}: {}", e.field, e.message)?;
        }
        Ok(())
    }
}

/// A valid setting that is probably a mistake; printed at start and by `check-config`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub field: String,
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl Config {
    /// True when some mail may go to MX hosts: no smarthost, and no route for every domain.
    pub fn delivers_to_mx(&self) -> bool {
        self.delivery.smarthost.is_none() && !self.delivery.routes.iter().any(|r| r.domain == "*")
    }

    /// Delivery settings that are valid but make mail to the Internet fail: greeting MX hosts
    /// as `localhost`, or another name that is not a public domain (no dot, or a private
    /// suffix such as a Kubernetes Service's `.svc`), which many refuse or score as spam.
    pub fn delivery_warnings(&self) -> Vec<Warning> {
        let (field, name) = match &self.delivery.helo_name {
            Some(name) => ("delivery.heloName", name),
            None => ("hostname", &self.hostname),
        };
        let lower = name.to_ascii_lowercase();
        let local = !lower.contains('.')
            || [".localhost", ".localdomain", ".local", ".svc", ".internal"]
                .iter()
                .any(|suffix| lower.ends_with(suffix));
        if !self.delivers_to_mx() || !local {
            return Vec::new();
        }
        vec![Warning {
            field: field.into(),
            message: format!(
                "MX hosts are greeted as {name:?}, which many refuse or score as spam: set \
                 hostname (or delivery.heloName) to this relay's public name, whose address \
                 record points back at it"
            ),
        }]
    }

    /// Settings that are valid but risky.
    pub fn warnings(&self) -> Vec<Warning> {
        self.ingress
            .allowed_networks
            .iter()
            .enumerate()
            .filter(|(_, net)| net.prefix_len() == 0)
            .map(|(i, net)| Warning {
                field: format!("ingress.allowedNetworks[{i}]"),
                message: format!(
                    "{net} lets every address relay without AUTH: this is an open relay unless \
                     the listeners are reachable only from trusted networks"
                ),
            })
            .collect()
    }
}

#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn check(&mut self, ok: bool, field: impl Into<String>, message: impl Into<String>) {
        if !ok {
            self.0.push(FieldError {
                field: field.into(),
                message: message.into(),
            });
        }
    }
}

/// True for one seed of `nats.url`: a scheme NATS clients speak, optional credentials, a host,
/// and an optional numeric port.
fn is_nats_seed(seed: &str) -> bool {
    let Some(rest) = ["nats://", "tls://", "ws://", "wss://"]
        .iter()
        .find_map(|scheme| seed.strip_prefix(scheme))
    else {
        return false;
    };
    let rest = rest.split('/').next().unwrap_or(rest);
    let host_port = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let (host, port) = match host_port.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((host, rest)) if rest.is_empty() || rest.starts_with(':') => {
                (host, rest.strip_prefix(':'))
            }
            _ => return false,
        },
        None => match host_port.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_port, None),
        },
    };
    !host.is_empty() && port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0))
}

/// True for `example.com`, `*.example.com` or `*`: a route's or a destination's pattern.
pub fn is_domain_pattern(pattern: &str) -> bool {
    pattern == "*" || is_hostname(pattern.strip_prefix("*.").unwrap_or(pattern))
}

/// True for an LDH host name such as `relay.example.com`.
pub(crate) fn is_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// True for `http://` or `https://`, a host name or IP address with an optional port, and an
/// optional path.
fn is_http_url(url: &str) -> bool {
    let Some(rest) = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
    else {
        return false;
    };
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((host, after)) if after.is_empty() || after.starts_with(':') => {
                (host, after.strip_prefix(':'))
            }
            _ => return false,
        },
        None => match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    !url.contains(char::is_whitespace)
        && port.is_none_or(|p| p.parse::<u16>().is_ok_and(|p| p > 0))
        && (is_hostname(host) || host.parse::<std::net::IpAddr>().is_ok())
}

/// True for `host:port` with a non-zero port.
fn is_host_port(text: &str) -> bool {
    text.rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0))
}

/// True for an RFC 3463 status of class 5, such as `5.1.1`.
fn is_permanent_status(text: &str) -> bool {
    let parts: Vec<&str> = text.split('.').collect();
    let number = |p: &str| (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit());
    parts.len() == 3 && parts[0] == "5" && number(parts[1]) && number(parts[2])
}

/// True for a NATS subject token or name: no spaces, dots or wildcards.
fn is_nats_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl Config {
    /// Checks values that are well-formed but wrong, naming each field at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut e = Errors::default();
        e.check(
            is_hostname(&self.hostname),
            "hostname",
            "must be a host name such as relay.example.com",
        );

        let nats = &self.nats;
        if let Some(url) = &nats.url {
            let seeds = crate::nats_seeds(url);
            e.check(!seeds.is_empty(), "nats.url", "must name a NATS server");
            for seed in seeds {
                e.check(
                    is_nats_seed(seed),
                    "nats.url",
                    format!(
                        "{seed:?} must be nats://, tls://, ws:// or wss:// with a host and an optional port, several separated by commas"
                    ),
                );
            }
        }
        e.check(
            !(nats.credentials_file.is_some() && nats.token_file.is_some()),
            "nats.tokenFile",
            "give a credentials file or a token file, not both",
        );
        e.check(
            is_nats_name(&nats.stream),
            "nats.stream",
            "must be letters, digits, '-' or '_'",
        );
        e.check(
            is_nats_name(&nats.body_stream) && nats.body_stream != nats.stream,
            "nats.bodyStream",
            "must be letters, digits, '-' or '_', and not the same as nats.stream",
        );
        let prefix_ok = nats.subject_prefix.split('.').all(is_nats_name);
        e.check(
            prefix_ok,
            "nats.subjectPrefix",
            "must be dot-separated tokens without wildcards",
        );
        e.check(
            (1..=5).contains(&nats.replicas),
            "nats.replicas",
            "must be between 1 and 5",
        );
        e.check(
            !nats.ack_timeout.get().is_zero(),
            "nats.ackTimeout",
            "must be greater than zero",
        );
        let inline_ok = (1024..=512 * 1024).contains(&nats.inline_body_limit);
        e.check(
            inline_ok,
            "nats.inlineBodyLimit",
            "must be between 1024 and 524288 bytes",
        );
        e.check(
            !nats.duplicate_window.get().is_zero(),
            "nats.duplicateWindow",
            "must be greater than zero",
        );

        let ingress = &self.ingress;
        e.check(
            !ingress.listeners.is_empty(),
            "ingress.listeners",
            "needs at least one listener",
        );
        let mut seen = HashSet::new();
        for (i, listener) in ingress.listeners.iter().enumerate() {
            let field = format!("ingress.listeners[{i}]");
            // Port 0 binds a port of the kernel's choosing, a different one each time.
            e.check(
                listener.address.port() == 0 || seen.insert(listener.address),
                format!("{field}.address"),
                "is listed twice",
            );
            let needs_cert = listener.tls != ListenerTls::None;
            e.check(
                !needs_cert || ingress.tls.is_some(),
                format!("{field}.tls"),
                "needs ingress.tls (certFile and keyFile)",
            );
        }
        e.check(
            !self.reload_interval.get().is_zero(),
            "reloadInterval",
            "must be greater than zero",
        );
        for (i, domain) in ingress.sender_domains.iter().enumerate() {
            e.check(
                is_hostname(domain),
                format!("ingress.senderDomains[{i}]"),
                "must be a domain name",
            );
        }
        let limits = &ingress.limits;
        let positive = [
            ("maxMessageSize", limits.max_message_size as u64),
            ("maxRecipients", limits.max_recipients as u64),
            ("maxConnections", limits.max_connections as u64),
            ("maxConnectionsPerIp", limits.max_connections_per_ip as u64),
            ("maxErrors", u64::from(limits.max_errors)),
            ("maxAuthFailures", u64::from(limits.max_auth_failures)),
            ("minDataRate", limits.min_data_rate),
            ("passwordChecks", limits.password_checks as u64),
            (
                "maxAuthFailuresPerAddress",
                u64::from(limits.max_auth_failures_per_address),
            ),
        ];
        for (name, value) in positive {
            e.check(
                value > 0,
                format!("ingress.limits.{name}"),
                "must be greater than zero",
            );
        }
        e.check(
            !limits.command_timeout.get().is_zero(),
            "ingress.limits.commandTimeout",
            "must be greater than zero",
        );
        e.check(
            !limits.data_timeout.get().is_zero(),
            "ingress.limits.dataTimeout",
            "must be greater than zero",
        );
        e.check(
            limits.max_message_memory >= 4 * 1024 * 1024,
            "ingress.limits.maxMessageMemory",
            "must be at least 4194304 bytes (4 MiB)",
        );
        e.check(
            limits.password_checks <= 64,
            "ingress.limits.passwordChecks",
            "must be at most 64",
        );
        e.check(
            !limits.auth_failure_window.get().is_zero(),
            "ingress.limits.authFailureWindow",
            "must be greater than zero",
        );
        e.check(
            (1..=65535).contains(&ingress.listen_backlog),
            "ingress.listenBacklog",
            "must be between 1 and 65535",
        );
        e.check(
            ingress.pregreet.wait.get() <= std::time::Duration::from_secs(30),
            "ingress.pregreet.wait",
            "must be at most 30s",
        );

        let delivery = &self.delivery;
        e.check(
            delivery.concurrency > 0,
            "delivery.concurrency",
            "must be greater than zero",
        );
        e.check(
            delivery.max_deliveries >= 2,
            "delivery.maxDeliveries",
            "must be at least 2",
        );
        e.check(
            delivery.max_ack_pending >= delivery.concurrency as i64,
            "delivery.maxAckPending",
            "must be at least delivery.concurrency",
        );
        e.check(
            is_nats_name(&delivery.consumer),
            "delivery.consumer",
            "must be letters, digits, '-' or '_'",
        );
        if let Some(name) = &delivery.helo_name {
            e.check(
                is_hostname(name),
                "delivery.heloName",
                "must be a host name",
            );
        }
        e.check(
            delivery.mx_port > 0,
            "delivery.mxPort",
            "must be a port number",
        );
        e.check(
            delivery.mta_sts.port > 0,
            "delivery.mtaSts.port",
            "must be a port number",
        );
        e.check(
            delivery.tls_rpt.period.get() >= std::time::Duration::from_secs(1),
            "delivery.tlsRpt.period",
            "must be at least 1s",
        );
        e.check(
            !delivery.mta_sts.fetch_timeout.get().is_zero(),
            "delivery.mtaSts.fetchTimeout",
            "must be greater than zero",
        );
        e.check(
            delivery.connections_per_destination > 0,
            "delivery.connectionsPerDestination",
            "must be greater than zero",
        );
        e.check(
            delivery.max_messages_per_connection > 0,
            "delivery.maxMessagesPerConnection",
            "must be greater than zero",
        );
        e.check(
            delivery.burst_per_destination > 0,
            "delivery.burstPerDestination",
            "must be greater than zero",
        );
        for (i, limits) in delivery.destinations.iter().enumerate() {
            e.check(
                limits.burst != Some(0),
                format!("delivery.destinations[{i}].burst"),
                "must be greater than zero",
            );
            e.check(
                is_domain_pattern(&limits.pattern),
                format!("delivery.destinations[{i}].match"),
                "must be a domain, *.domain or *",
            );
            e.check(
                limits.connections != Some(0),
                format!("delivery.destinations[{i}].connections"),
                "must be greater than zero",
            );
            e.check(
                limits.messages_per_connection != Some(0),
                format!("delivery.destinations[{i}].messagesPerConnection"),
                "must be greater than zero",
            );
        }
        let backoff = &delivery.backoff;
        e.check(
            backoff.after_failures > 0,
            "delivery.backoff.afterFailures",
            "must be greater than zero",
        );
        e.check(
            !backoff.initial.get().is_zero() && backoff.initial.get() <= backoff.max.get(),
            "delivery.backoff.initial",
            "must be greater than zero and at most delivery.backoff.max",
        );
        let timeouts = &delivery.timeouts;
        for (name, value) in [
            ("connect", timeouts.connect),
            ("greeting", timeouts.greeting),
            ("command", timeouts.command),
            ("dataInit", timeouts.data_init),
            ("dataBlock", timeouts.data_block),
            ("dataEnd", timeouts.data_end),
            ("idle", timeouts.idle),
        ] {
            e.check(
                !value.get().is_zero(),
                format!("delivery.timeouts.{name}"),
                "must be greater than zero",
            );
        }
        if let Some(smarthost) = &delivery.smarthost {
            e.check(
                is_host_port(&smarthost.host),
                "delivery.smarthost.host",
                "must be host:port",
            );
            let plaintext =
                smarthost.tls == crate::OutboundTls::None && smarthost.credentials_file.is_some();
            e.check(
                !plaintext,
                "delivery.smarthost.tls",
                "must not be none when credentials are sent",
            );
        }
        if let Some(smarthost) = &delivery.smarthost {
            e.check(
                smarthost.tls != crate::OutboundTls::DaneOnly,
                "delivery.smarthost.tls",
                "dane-only applies to MX hosts only (destinations[].tls)",
            );
        }
        e.check(
            delivery.dane.probe == "." || is_hostname(delivery.dane.probe.trim_end_matches('.')),
            "delivery.dane.probe",
            "must be a domain name or .",
        );
        e.check(
            delivery.egress_probe.is_empty() || is_hostname(&delivery.egress_probe),
            "delivery.egressProbe",
            "must be a domain name, or empty for no check",
        );
        for (i, route) in self.delivery.routes.iter().enumerate() {
            let field = format!("delivery.routes[{i}]");
            e.check(
                route.tls != crate::OutboundTls::DaneOnly,
                format!("{field}.tls"),
                "dane-only applies to MX hosts only (destinations[].tls)",
            );
            e.check(
                is_domain_pattern(&route.domain),
                format!("{field}.domain"),
                "must be a domain, *.domain or *",
            );
            e.check(
                is_host_port(&route.host),
                format!("{field}.host"),
                "must be host:port",
            );
        }
        let retry = &self.delivery.retry;
        e.check(
            !retry.schedule.is_empty(),
            "delivery.retry.schedule",
            "needs at least one interval",
        );
        e.check(
            !retry.max_age.get().is_zero(),
            "delivery.retry.maxAge",
            "must be greater than zero",
        );

        let suppression = &self.suppression;
        e.check(
            !suppression.enabled || !suppression.expiry.get().is_zero(),
            "suppression.expiry",
            "must be greater than zero",
        );
        for (i, status) in suppression.statuses.iter().enumerate() {
            e.check(
                is_permanent_status(status),
                format!("suppression.statuses[{i}]"),
                "must be a permanent enhanced status code such as 5.1.1",
            );
        }

        let events = &self.events;
        e.check(
            !events.enabled || !events.max_age.get().is_zero(),
            "events.maxAge",
            "must be greater than zero",
        );
        e.check(
            !events.enabled || events.max_bytes > 0,
            "events.maxBytes",
            "must be greater than zero",
        );
        e.check(
            events.enabled || events.webhooks.is_empty(),
            "events.webhooks",
            "needs events.enabled",
        );
        for (i, hook) in events.webhooks.iter().enumerate() {
            let field = |name: &str| format!("events.webhooks[{i}].{name}");
            e.check(
                (1..=32).contains(&hook.name.len())
                    && hook
                        .name
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
                field("name"),
                "must be 1 to 32 lower-case letters, digits and -",
            );
            e.check(
                !events.webhooks[..i].iter().any(|h| h.name == hook.name),
                field("name"),
                format!("{} is the name of an earlier webhook", hook.name),
            );
            e.check(
                is_http_url(&hook.url),
                field("url"),
                "must be http://host[:port][/path] or https://...",
            );
            for (k, kind) in hook.kinds.iter().enumerate() {
                e.check(
                    crate::EVENT_KINDS.contains(&kind.as_str()),
                    format!("events.webhooks[{i}].kinds[{k}]"),
                    format!("must be one of {}", crate::EVENT_KINDS.join(", ")),
                );
            }
            e.check(
                (1..=1000).contains(&hook.batch_size),
                field("batchSize"),
                "must be 1 to 1000",
            );
            e.check(
                !hook.timeout.get().is_zero(),
                field("timeout"),
                "must be greater than zero",
            );
            e.check(
                !hook.retry_for.get().is_zero(),
                field("retryFor"),
                "must be greater than zero",
            );
        }

        if let Some(problem) = self.standalone.sync.problem() {
            e.check(false, "standalone.sync", problem);
        }
        e.check(
            !self.shutdown_grace.get().is_zero(),
            "shutdownGrace",
            "must be greater than zero",
        );

        if e.0.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(e.0))
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::{Config, ConfigError};

    #[test]
    fn a_local_name_towards_mx_hosts_is_warned_about() {
        let mut config = Config::default();
        let fields = |c: &Config| -> Vec<String> {
            c.delivery_warnings().into_iter().map(|w| w.field).collect()
        };
        assert_eq!(fields(&config), ["hostname"], "localhost by default");
        config.hostname = "mail".into();
        assert_eq!(fields(&config), ["hostname"], "a name without a domain");
        config.hostname = "mail.postern.svc".into();
        assert_eq!(fields(&config), ["hostname"], "a cluster-internal name");
        config.hostname = "relay.example.com".into();
        assert!(fields(&config).is_empty());
        config.delivery.helo_name = Some("box.localdomain".into());
        assert_eq!(fields(&config), ["delivery.heloName"]);
        // No mail goes to MX hosts: the name matters to the next hop only.
        config.delivery.routes = vec![crate::Route {
            domain: "*".into(),
            host: "relay.internal:25".into(),
            tls: Default::default(),
        }];
        assert!(fields(&config).is_empty());
        assert!(!config.delivers_to_mx());
    }

    #[test]
    fn networks_that_open_the_relay_are_warned_about() {
        let mut config = Config::default();
        config.ingress.allowed_networks = ["10.0.0.0/8", "::/0", "0.0.0.0/0"]
            .iter()
            .map(|n| n.parse().unwrap())
            .collect();
        let warnings = config.warnings();
        let fields: Vec<&str> = warnings.iter().map(|w| w.field.as_str()).collect();
        assert_eq!(
            fields,
            ["ingress.allowedNetworks[1]", "ingress.allowedNetworks[2]"]
        );
        assert!(warnings[0].message.contains("open relay"));
        assert!(Config::default().warnings().is_empty());
    }

    fn errors(yaml: &str) -> String {
        Config::from_yaml(yaml).unwrap_err().to_string()
    }

    #[test]
    fn standalone_sync_is_always_or_an_interval_above_zero() {
        let message = errors("standalone: { sync: 0s }");
        assert!(
            message.contains("standalone.sync: must be always or a duration greater than zero"),
            "{message}"
        );
        Config::from_yaml("standalone: { sync: always }").unwrap();
        Config::from_yaml("standalone: { sync: 1s }").unwrap();
    }

    #[test]
    fn nats_url_takes_a_list_of_seeds_and_names_a_bad_one() {
        for ok in [
            "nats://a:4222",
            "nats://a:4222,nats://b:4223",
            "tls://user:pass@nats.example:4222, nats://[::1]:4222",
            "nats://nats",
        ] {
            let yaml = format!("nats: {{ url: \"{ok}\" }}");
            Config::from_yaml(&yaml).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        let message = errors("nats: { url: \"nats://a:1,nats://b:x\" }");
        assert!(message.contains("nats.url"), "{message}");
        assert!(message.contains("\"nats://b:x\""), "{message}");
        for bad in [
            "nats://a:0",
            "http://a:4222",
            ",",
            "nats://:4222",
            "nats://[::1:4222",
        ] {
            let yaml = format!("nats: {{ url: \"{bad}\" }}");
            assert!(Config::from_yaml(&yaml).is_err(), "{bad} accepted");
        }
        assert_eq!(
            crate::nats_seeds(" nats://a:1 ,nats://b:2,"),
            ["nats://a:1", "nats://b:2"]
        );
    }

    #[test]
    fn empty_document_is_the_default() {
        assert_eq!(Config::from_yaml("{}").unwrap(), Config::default());
    }

    #[test]
    fn full_example_parses_and_round_trips() {
        let yaml = r#"
hostname: relay.example.com
nats: { url: "nats://127.0.0.1:4222", replicas: 3, ackTimeout: 5s }
ingress:
  listeners:
    - { address: "0.0.0.0:2525", tls: starttls }
    - { address: "0.0.0.0:465", tls: implicit }
  tls: { certFile: /tls/tls.crt, keyFile: /tls/tls.key }
  allowedNetworks: ["10.0.0.0/8"]
  usersFile: /etc/postern/users
  senderDomains: [example.com]
  bareLineEndings: reject
  limits: { maxMessageSize: 1000000, maxRecipients: 10, maxConnections: 5, maxConnectionsPerIp: 1, maxErrors: 3, maxAuthFailures: 3, maxReceivedHeaders: 50, commandTimeout: 1m, dataTimeout: 1m, minDataRate: 10 }
delivery:
  routes: [ { domain: "*", host: "127.0.0.1:2526" } ]
  retry: { schedule: ["1m", "5m"], maxAge: 5d }
admin: { address: "0.0.0.0:9090" }
"#;
        let config = Config::from_yaml(yaml).unwrap();
        assert_eq!(config.nats.replicas, 3);
        assert_eq!(config.ingress.limits.max_connections_per_ip, 1);
        let again = Config::from_yaml(&config.to_yaml().unwrap()).unwrap();
        assert_eq!(again, config);
    }

    #[test]
    fn partial_sections_keep_the_other_defaults() {
        let config = Config::from_yaml(
            "admin: {}\nstandalone: { natsPort: 4333 }\nlog: { format: json }\ntelemetry: {}\n",
        )
        .unwrap();
        assert_eq!(config.admin, crate::AdminConfig::default());
        assert_eq!(config.standalone.nats_port, 4333);
        assert_eq!(config.standalone.data_dir, std::path::PathBuf::from("data"));
        assert_eq!(config.log.level, "info");
    }

    #[test]
    fn unknown_field_is_named() {
        let msg = errors("ingress:\n  limits:\n    maxMesageSize: 10\n");
        assert!(msg.contains("maxMesageSize"), "{msg}");
    }

    #[test]
    fn bad_values_name_their_field() {
        let msg = errors(
            "ingress:\n  listeners: [ { address: \"127.0.0.1:25\", tls: starttls } ]\n  limits: { maxRecipients: 0 }\n",
        );
        assert!(
            msg.contains("ingress.listeners[0].tls: needs ingress.tls"),
            "{msg}"
        );
        let msg = errors(
            "nats: { replicas: 7 }\ndelivery: { routes: [ { domain: \"a..b\", host: \"x\" } ] }\n",
        );
        assert!(msg.contains("nats.replicas"), "{msg}");
        assert!(msg.contains("delivery.routes[0].domain"), "{msg}");
        assert!(msg.contains("delivery.routes[0].host"), "{msg}");
        let msg =
            errors("suppression: { expiry: 0s, statuses: [\"5.1.1\", \"4.2.2\", \"5.x.1\"] }\n");
        assert!(
            msg.contains("suppression.expiry: must be greater than zero"),
            "{msg}"
        );
        assert!(msg.contains("suppression.statuses[1]"), "{msg}");
        assert!(msg.contains("suppression.statuses[2]"), "{msg}");
        assert!(!msg.contains("suppression.statuses[0]"), "{msg}");
        let msg = errors("events: { maxAge: 0s, maxBytes: 0 }\n");
        assert!(
            msg.contains("events.maxAge: must be greater than zero"),
            "{msg}"
        );
        assert!(
            msg.contains("events.maxBytes: must be greater than zero"),
            "{msg}"
        );
        let msg = errors(
            "delivery: { mtaSts: { port: 0, fetchTimeout: 0s }, tlsRpt: { period: 500ms }, dane: { probe: \"a..b\" }, egressProbe: \"-x\", routes: [ { domain: \"*\", host: \"relay.example:25\", tls: dane-only } ] }\n",
        );
        assert!(
            msg.contains("delivery.tlsRpt.period: must be at least 1s"),
            "{msg}"
        );
        assert!(
            msg.contains("delivery.dane.probe: must be a domain name or ."),
            "{msg}"
        );
        assert!(
            msg.contains("delivery.egressProbe: must be a domain name, or empty"),
            "{msg}"
        );
        assert!(
            msg.contains("delivery.routes[0].tls: dane-only applies to MX hosts only"),
            "{msg}"
        );
        assert!(
            msg.contains("delivery.mtaSts.port: must be a port number"),
            "{msg}"
        );
        assert!(
            msg.contains("delivery.mtaSts.fetchTimeout: must be greater than zero"),
            "{msg}"
        );
        let msg = errors(
            "events:\n  webhooks:\n  - { name: Crm, url: \"ftp://x\", secretFile: s, kinds: [delivered, opened], batchSize: 0, timeout: 0s, retryFor: 0s }\n  - { name: ok, url: \"https://[::1]:8443/hook\", secretFile: s }\n  - { name: ok, url: \"http://hooks.example.com:0/\", secretFile: s }\n",
        );
        for wanted in [
            "events.webhooks[0].name: must be 1 to 32",
            "events.webhooks[0].url: must be http://",
            "events.webhooks[0].kinds[1]: must be one of received, delivered",
            "events.webhooks[0].batchSize",
            "events.webhooks[0].timeout",
            "events.webhooks[0].retryFor",
            "events.webhooks[2].name: ok is the name of an earlier webhook",
            "events.webhooks[2].url",
        ] {
            assert!(msg.contains(wanted), "{wanted}: {msg}");
        }
        assert!(!msg.contains("events.webhooks[1]"), "{msg}");
        assert!(!msg.contains("events.webhooks[0].kinds[0]"), "{msg}");
        let off = Config::from_yaml("suppression: { enabled: false, expiry: 0s }\n").unwrap();
        assert!(!off.suppression.enabled, "off needs no expiry");
        let msg = errors("shutdownGrace: soon\n");
        assert!(msg.contains("invalid duration \"soon\""), "{msg}");
        assert!(matches!(
            Config::from_yaml("admin: { address: nowhere }"),
            Err(ConfigError::Parse(_))
        ));
    }
}

#[cfg(test)]
mod documentation {
    use crate::{Config, DkimAlgorithm, DkimKeyConfig, DomainConfig, Route, Smarthost, TlsConfig};

    /// Every key the config can hold, with all optional sections filled in.
    fn full() -> Config {
        let mut config = Config::default();
        config.nats.url = Some("nats://127.0.0.1:4222".into());
        config.nats.credentials_file = Some("/creds".into());
        config.nats.token_file = Some("/token".into());
        config.nats.ca_file = Some("/nats-ca.crt".into());
        config.domains_file = Some("/domains.yaml".into());
        config.ingress.tls = Some(TlsConfig {
            cert_file: "/c".into(),
            key_file: "/k".into(),
        });
        config.ingress.users_file = Some("/users".into());
        config.delivery.helo_name = Some("relay.example.com".into());
        config.delivery.routes = vec![Route {
            domain: "*".into(),
            host: "h:25".into(),
            tls: Default::default(),
        }];
        config.delivery.smarthost = Some(Smarthost {
            host: "h:587".into(),
            credentials_file: Some("/s".into()),
            tls: Default::default(),
        });
        config.delivery.ca_file = Some("/ca".into());
        config.delivery.dns.nameservers = vec!["127.0.0.1:53".parse().unwrap()];
        config.domains = vec![DomainConfig {
            name: "example.com".into(),
            dkim: vec![DkimKeyConfig {
                selector: "s".into(),
                algorithm: DkimAlgorithm::Ed25519,
                key_file: "/d".into(),
            }],
        }];
        config.telemetry.otlp_endpoint = Some("http://collector:4318".into());
        config.delivery.tls_rpt.organization = Some("Example".into());
        config.delivery.dane.trust_anchor_file = Some("/anchors".into());
        config.delivery.tls_rpt.contact = Some("tls@example.com".into());
        config.events.webhooks = vec![crate::Webhook {
            name: "crm".into(),
            url: "https://hooks.example.com/postern".into(),
            kinds: vec!["bounced".into()],
            secret_file: "/secret".into(),
            ca_file: Some("/ca.pem".into()),
            batch_size: 100,
            timeout: crate::Duration::secs(10),
            retry_for: crate::Duration::secs(3600),
        }];
        config
    }

    #[test]
    fn every_key_is_documented() {
        let yaml = full().to_yaml().unwrap();
        let docs = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../docs/configuration.md"
        ))
        .unwrap();
        let mut missing = Vec::new();
        for line in yaml.lines() {
            let key = line.trim_start().trim_start_matches("- ");
            let Some((key, _)) = key.split_once(':') else {
                continue;
            };
            if key.chars().all(|c| c.is_ascii_alphanumeric())
                && !docs.contains(&format!("`{key}"))
                && !docs.contains(&format!(".{key}`"))
                && !docs.contains(&format!(".{key}["))
            {
                missing.push(key.to_string());
            }
        }
        missing.dedup();
        assert!(
            missing.is_empty(),
            "keys missing from docs/configuration.md: {missing:?}"
        );
    }
}
