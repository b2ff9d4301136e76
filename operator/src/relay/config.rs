//! Builds the relay's `postern_config::Config` from a Relay and its Domains: the contract
//! between operator and relay is that type, written into the ConfigMap as YAML.

use std::net::SocketAddr;

use kube::ResourceExt;
use postern_config::{
    AdminConfig, Config, ConfigError, DkimAlgorithm, DkimKeyConfig, DomainConfig, Listener,
    ListenerTls, LogFormat, OutboundTls, Route, Smarthost, SuppressionAction, TlsConfig,
};

use super::names::{
    ADMIN_PORT, CONSUMER, DANE_TRUST_ANCHOR_KEY, NATS_CA_KEY, NATS_CREDS_KEY, NATS_TOKEN_KEY,
    SMARTHOST_KEY, USERS_KEY, hostname, paths, signing_key_file, stream_name,
};
use super::validate::ValidSpec;
use crate::api::{
    DestinationTlsMode, DkimKeyType, Domain, ListenerTlsMode, OutboundTlsMode, Relay,
    SuppressionActionSpec,
};
use crate::domain::keystore::ActiveKey;

/// The relay's configuration, from a Relay and what validation made of it. Domains and their
/// keys are not in it: they are in the domains file of the signing Secret
/// ([`signing_domains`]), which pods reload without a restart.
pub fn build_config(relay: &Relay, valid: &ValidSpec) -> Result<Config, ConfigError> {
    let spec = &relay.spec;
    let mut config = queue_config(relay);
    config.nats.replicas = usize::from(valid.stream_replicas);
    let ingress = &spec.ingress;
    config.ingress.listeners = ingress
        .listeners
        .iter()
        .map(|l| Listener {
            address: SocketAddr::from(([0, 0, 0, 0], l.target_port())),
            tls: match l.tls {
                ListenerTlsMode::None => ListenerTls::None,
                ListenerTlsMode::Starttls => ListenerTls::Starttls,
                ListenerTlsMode::Implicit => ListenerTls::Implicit,
            },
            allow_plaintext_auth: false,
            proxy_protocol: l.proxy_protocol,
        })
        .collect();
    config.ingress.tls = Some(TlsConfig {
        cert_file: format!("{}/tls.crt", paths::TLS_DIR).into(),
        key_file: format!("{}/tls.key", paths::TLS_DIR).into(),
    });
    config.ingress.allowed_networks = valid.allowed_networks.clone();
    config.ingress.users_file = ingress
        .users_secret
        .as_ref()
        .map(|s| format!("{}/{}", paths::USERS_DIR, s.key_or(USERS_KEY)).into());
    config.ingress.sender_domains = ingress.sender_domains.clone();
    config.ingress.trusted_proxies = valid.trusted_proxies.clone();
    let limits = &mut config.ingress.limits;
    if let Some(size) = ingress.limits.max_message_size {
        limits.max_message_size = usize::try_from(size).unwrap_or(usize::MAX);
    }
    if let Some(n) = ingress.limits.max_recipients {
        limits.max_recipients = n as usize;
    }
    if let Some(n) = ingress.limits.max_connections {
        limits.max_connections = n as usize;
    }
    if let Some(n) = ingress.limits.max_connections_per_ip {
        limits.max_connections_per_ip = n as usize;
    }

    let delivery = &spec.delivery;
    config.delivery.consumer = CONSUMER.into();
    if let Some(n) = delivery.concurrency {
        config.delivery.concurrency = n as usize;
    }
    if let Some(n) = delivery.connections_per_destination {
        config.delivery.connections_per_destination = n as usize;
    }
    config.delivery.rate_per_destination = valid.rate_per_destination;
    config.delivery.destinations = valid.destinations.clone();
    config.delivery.backoff = valid.backoff.clone();
    config.delivery.helo_name = delivery.helo_name.clone();
    config.delivery.routes = delivery
        .routes
        .iter()
        .map(|r| Route {
            domain: r.domain.clone(),
            host: r.host.clone(),
            tls: r.tls.map_or(OutboundTls::Opportunistic, outbound_tls),
        })
        .collect();
    config.delivery.smarthost = delivery.smarthost.as_ref().map(|s| Smarthost {
        host: s.host.clone(),
        credentials_file: s
            .credentials_secret
            .as_ref()
            .map(|c| format!("{}/{}", paths::SMARTHOST_DIR, c.key_or(SMARTHOST_KEY)).into()),
        tls: s.tls.map_or(OutboundTls::Verify, outbound_tls),
    });
    if let Some(schedule) = &valid.retry_schedule {
        config.delivery.retry.schedule = schedule.clone();
    }
    if let Some(max_age) = valid.max_age {
        config.delivery.retry.max_age = max_age;
    }
    if let Some(delay_warning) = valid.delay_warning {
        config.delivery.retry.delay_warning = delay_warning;
    }
    if let Some(enabled) = delivery.mta_sts.enabled {
        config.delivery.mta_sts.enabled = enabled;
    }
    let tls_rpt = &delivery.tls_rpt;
    if let Some(enabled) = tls_rpt.enabled {
        config.delivery.tls_rpt.enabled = enabled;
    }
    config.delivery.tls_rpt.organization = tls_rpt.organization.clone();
    config.delivery.tls_rpt.contact = tls_rpt.contact.clone();
    let dane = &delivery.dane;
    if let Some(enabled) = dane.enabled {
        config.delivery.dane.enabled = enabled;
    }
    config.delivery.dane.trust_anchor_file = dane
        .trust_anchor_secret
        .as_ref()
        .map(|s| format!("{}/{}", paths::DANE_DIR, s.key_or(DANE_TRUST_ANCHOR_KEY)).into());
    if let Some(probe) = &dane.probe {
        config.delivery.dane.probe = probe.clone();
    }
    let suppression = &spec.suppression;
    if let Some(enabled) = suppression.enabled {
        config.suppression.enabled = enabled;
    }
    if let Some(expiry) = valid.suppression_expiry {
        config.suppression.expiry = expiry;
    }
    if let Some(action) = suppression.action {
        config.suppression.action = match action {
            SuppressionActionSpec::Reject => SuppressionAction::Reject,
            SuppressionActionSpec::Bounce => SuppressionAction::Bounce,
        };
    }

    let events = &spec.events;
    if let Some(enabled) = events.enabled {
        config.events.enabled = enabled;
    }
    if let Some(max_age) = valid.events_max_age {
        config.events.max_age = max_age;
    }
    if let Some(max_bytes) = events.max_bytes {
        config.events.max_bytes = u64::try_from(max_bytes).unwrap_or(1);
    }
    config.events.webhooks = valid.webhooks.clone();

    config.domains_file = Some(paths::DOMAINS_FILE.into());
    config.admin = AdminConfig {
        address: SocketAddr::from(([0, 0, 0, 0], ADMIN_PORT)),
    };
    config.log.format = LogFormat::Json;
    if let Some(level) = &spec.telemetry.log_level {
        config.log.level = level.clone();
    }
    config.telemetry.otlp_endpoint = spec.telemetry.otlp_endpoint.clone();
    config.telemetry.service_name = format!("postern-{}", relay.name_any());
    config.validate()?;
    Ok(config)
}

/// The parts of the config that name the queue (host name, NATS and its credentials, stream),
/// which need no validation: enough to reach the stream, to delete it with the Relay.
pub fn queue_config(relay: &Relay) -> Config {
    let spec = &relay.spec;
    let mut config = Config {
        hostname: hostname(relay),
        ..Config::default()
    };
    let stream = stream_name(relay);
    config.nats.url = Some(spec.nats.url().to_string());
    config.nats.credentials_file = spec
        .nats
        .credentials_secret
        .as_ref()
        .map(|s| format!("{}/{}", paths::NATS_DIR, s.key_or(NATS_CREDS_KEY)).into());
    config.nats.token_file = spec
        .nats
        .token_secret
        .as_ref()
        .map(|s| format!("{}/{}", paths::NATS_TOKEN_DIR, s.key_or(NATS_TOKEN_KEY)).into());
    config.nats.ca_file = spec
        .nats
        .ca_secret
        .as_ref()
        .map(|s| format!("{}/{}", paths::NATS_CA_DIR, s.key_or(NATS_CA_KEY)).into());

    config.nats.subject_prefix = format!("postern.{}", stream.to_ascii_lowercase());
    config.nats.body_stream = format!("{stream}_BODIES");
    config.nats.stream = stream;
    config.nats.replicas = usize::from(spec.nats.stream_replicas());
    config.delivery.consumer = CONSUMER.into();
    config
}

/// The domains file: each Domain with the active keys its Secret holds.
pub fn signing_domains(domains: &[(Domain, Vec<ActiveKey>)]) -> Vec<DomainConfig> {
    domains
        .iter()
        .map(|(domain, keys)| DomainConfig {
            name: domain.spec.domain.to_ascii_lowercase(),
            dkim: keys
                .iter()
                .map(|k| DkimKeyConfig {
                    selector: k.selector.clone(),
                    algorithm: match k.algorithm {
                        DkimKeyType::Ed25519 => DkimAlgorithm::Ed25519,
                        DkimKeyType::Rsa2048 => DkimAlgorithm::Rsa,
                    },
                    key_file: format!(
                        "{}/{}",
                        paths::SIGNING_DIR,
                        signing_key_file(domain, &k.selector)
                    )
                    .into(),
                })
                .collect(),
        })
        .collect()
}

/// The config's TLS mode towards a destination's MX hosts for the Relay's.
pub(crate) fn destination_tls(mode: DestinationTlsMode) -> OutboundTls {
    match mode {
        DestinationTlsMode::Opportunistic => OutboundTls::Opportunistic,
        DestinationTlsMode::Required => OutboundTls::Required,
        DestinationTlsMode::Verify => OutboundTls::Verify,
        DestinationTlsMode::None => OutboundTls::None,
        DestinationTlsMode::DaneOnly => OutboundTls::DaneOnly,
    }
}

/// The config's outbound TLS mode towards a route or the smarthost for the Relay's.
fn outbound_tls(mode: OutboundTlsMode) -> OutboundTls {
    match mode {
        OutboundTlsMode::Opportunistic => OutboundTls::Opportunistic,
        OutboundTlsMode::Required => OutboundTls::Required,
        OutboundTlsMode::Verify => OutboundTls::Verify,
        OutboundTlsMode::None => OutboundTls::None,
    }
}
