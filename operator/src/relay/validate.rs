//! The validate stage: what the CRD schema cannot check, named by field.

use std::collections::BTreeSet;
use std::str::FromStr;

use ipnet::IpNet;
use postern_config::{BackoffConfig, DestinationLimits, Duration, Rate, Sync, is_domain_pattern};

use super::names::{NATS_CA_KEY, WEBHOOK_SECRET_KEY, paths};
use crate::api::{DELIVERY_REPLICAS, INGRESS_REPLICAS, RelaySpec};

/// One or more invalid fields of a Relay.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .problems.join("; "))]
pub struct ValidationError {
    /// `field: what is wrong` for each problem found.
    pub problems: Vec<String>,
}

/// Longest Relay name: `<name>-delivery` and `<name>-metrics` must stay DNS labels (63).
pub const MAX_NAME: usize = 47;

/// What validation parsed and resolved, for the build stage: it parses nothing again.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidSpec {
    /// `ingress.allowedNetworks`, or its default for the Service type.
    pub allowed_networks: Vec<IpNet>,
    pub trusted_proxies: Vec<IpNet>,
    /// `delivery.retry.schedule`; `None` keeps the relay's default.
    pub retry_schedule: Option<Vec<Duration>>,
    pub max_age: Option<Duration>,
    pub delay_warning: Option<Duration>,
    /// `suppression.expiry`.
    pub suppression_expiry: Option<Duration>,
    /// `events.maxAge`.
    pub events_max_age: Option<Duration>,
    /// `events.webhooks`, as the relay's config holds them (secrets at their mount paths).
    pub webhooks: Vec<postern_config::Webhook>,
    /// `delivery.ratePerDestination`, parsed.
    pub rate_per_destination: Option<Rate>,
    /// `delivery.destinations`, parsed.
    pub destinations: Vec<DestinationLimits>,
    /// `delivery.backoff` over the relay's defaults.
    pub backoff: BackoffConfig,
    /// `(min, max)` with the defaults filled in.
    pub ingress_replicas: (i32, i32),
    pub delivery_replicas: (i32, i32),
    pub stream_replicas: u8,
    /// `nats.sync`, parsed.
    pub sync: Option<Sync>,
}

/// Checks a Relay's name and spec; the error lists every invalid field.
pub fn validate(name: &str, spec: &RelaySpec) -> Result<ValidSpec, ValidationError> {
    let mut problems = Vec::new();
    let mut problem = |field: String, message: String| problems.push(format!("{field}: {message}"));

    let label = name.len() <= MAX_NAME
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !label {
        problem(
            "metadata.name".into(),
            format!(
                "{name:?} must be at most {MAX_NAME} lower-case letters, digits and '-', starting with a letter (it names Services)"
            ),
        );
    }

    let mut networks = |field: &str, list: &[String]| -> Vec<IpNet> {
        list.iter()
            .enumerate()
            .filter_map(|(i, network)| match IpNet::from_str(network) {
                Ok(net) => Some(net),
                Err(_) => {
                    problem(
                        format!("spec.ingress.{field}[{i}]"),
                        format!("{network:?} is not a CIDR such as 10.0.0.0/8"),
                    );
                    None
                }
            })
            .collect()
    };
    let allowed_networks = networks("allowedNetworks", &spec.ingress.allowed_networks());
    let trusted_proxies = networks("trustedProxies", &spec.ingress.trusted_proxies);
    let replicas = [
        (
            "spec.ingress.replicas",
            &spec.ingress.replicas,
            INGRESS_REPLICAS,
        ),
        (
            "spec.delivery.replicas",
            &spec.delivery.replicas,
            DELIVERY_REPLICAS,
        ),
    ];
    let mut bounds = Vec::new();
    for (field, replicas, default) in replicas {
        let (min, max) = replicas.bounds(default);
        if min < 1 || min > max {
            problem(
                field.into(),
                format!("need 1 <= min <= max, got min {min} max {max}"),
            );
        }
        bounds.push((min, max));
    }
    if spec.nats.credentials_secret.is_some() && spec.nats.token_secret.is_some() {
        problem(
            "spec.nats.tokenSecret".into(),
            "give credentialsSecret or tokenSecret, not both".into(),
        );
    }
    let stream_replicas = spec.nats.stream_replicas();
    if ![1, 3, 5].contains(&stream_replicas) {
        problem(
            "spec.nats.streamReplicas".into(),
            format!(
                "{stream_replicas} replicas survive no more failures than one fewer; use 1, 3 or 5"
            ),
        );
    }
    let sync = spec
        .nats
        .sync
        .as_deref()
        .and_then(|text| match Sync::from_str(text) {
            Ok(sync) => match sync.problem() {
                Some(message) => {
                    problem("spec.nats.sync".into(), message.into());
                    None
                }
                None => Some(sync),
            },
            Err(err) => {
                problem("spec.nats.sync".into(), err.to_string());
                None
            }
        });
    let mut names = BTreeSet::new();
    let mut ports = BTreeSet::new();
    let mut targets = BTreeSet::new();
    for (i, listener) in spec.ingress.listeners.iter().enumerate() {
        let field = format!("spec.ingress.listeners[{i}]");
        if !names.insert(&listener.name) {
            problem(
                format!("{field}.name"),
                format!("{:?} is used twice", listener.name),
            );
        }
        if !ports.insert(listener.port) {
            problem(
                format!("{field}.port"),
                format!("{} is used twice", listener.port),
            );
        }
        let target = listener.target_port();
        if target == super::names::ADMIN_PORT {
            problem(
                format!("{field}.containerPort"),
                format!("{target} is the admin port of the pods"),
            );
        } else if !targets.insert(target) {
            problem(
                format!("{field}.containerPort"),
                format!("{target} is used twice"),
            );
        }
    }
    if spec.ingress.listeners.is_empty() {
        problem(
            "spec.ingress.listeners".into(),
            "at least one listener is needed".into(),
        );
    }
    let mut duration = |field: String, text: &str| match Duration::from_str(text) {
        Ok(duration) => Some(duration),
        Err(err) => {
            problem(field, err.to_string());
            None
        }
    };
    let retry = &spec.delivery.retry;
    let schedule: Vec<Option<Duration>> = retry
        .schedule
        .iter()
        .enumerate()
        .map(|(i, d)| duration(format!("spec.delivery.retry.schedule[{i}]"), d))
        .collect();
    let max_age = retry
        .max_age
        .as_ref()
        .and_then(|d| duration("spec.delivery.retry.maxAge".into(), d));
    let delay_warning = retry
        .delay_warning
        .as_ref()
        .and_then(|d| duration("spec.delivery.retry.delayWarning".into(), d));
    let suppression_expiry = spec
        .suppression
        .expiry
        .as_ref()
        .and_then(|d| duration("spec.suppression.expiry".into(), d));
    let events_max_age = spec
        .events
        .max_age
        .as_ref()
        .and_then(|d| duration("spec.events.maxAge".into(), d));
    let mut webhooks = Vec::new();
    for (i, hook) in spec.events.webhooks.iter().enumerate() {
        let field = |name: &str| format!("spec.events.webhooks[{i}].{name}");
        let mut webhook = postern_config::Webhook {
            name: hook.name.clone(),
            url: hook.url.clone(),
            kinds: hook.kinds.clone(),
            secret_file: format!(
                "{}/{}",
                paths::webhook_dir(&hook.name),
                hook.secret.key_or(WEBHOOK_SECRET_KEY)
            )
            .into(),
            ca_file: hook.ca_secret.as_ref().map(|ca| {
                format!(
                    "{}/{}",
                    paths::webhook_ca_dir(&hook.name),
                    ca.key_or(NATS_CA_KEY)
                )
                .into()
            }),
            batch_size: hook.batch_size.map_or(100, |n| n as usize),
            timeout: Duration::secs(10),
            retry_for: Duration::secs(72 * 3600),
        };
        if let Some(parsed) = hook
            .timeout
            .as_deref()
            .and_then(|t| duration(field("timeout"), t))
        {
            webhook.timeout = parsed;
        }
        if let Some(parsed) = hook
            .retry_for
            .as_deref()
            .and_then(|t| duration(field("retryFor"), t))
        {
            webhook.retry_for = parsed;
        }
        webhooks.push(webhook);
    }
    let mut backoff = BackoffConfig::default();
    let wanted = &spec.delivery.backoff;
    if let Some(n) = wanted.after_failures {
        backoff.after_failures = n;
    }
    for (name, text, target) in [
        ("initial", &wanted.initial, &mut backoff.initial),
        ("max", &wanted.max, &mut backoff.max),
        ("slowDown", &wanted.slow_down, &mut backoff.slow_down),
    ] {
        if let Some(parsed) = text
            .as_deref()
            .and_then(|t| duration(format!("spec.delivery.backoff.{name}"), t))
        {
            *target = parsed;
        }
    }
    if backoff.initial.get() > backoff.max.get() {
        problem(
            "spec.delivery.backoff.initial".into(),
            format!(
                "{} is longer than backoff.max {}",
                backoff.initial, backoff.max
            ),
        );
    }
    for (i, route) in spec.delivery.routes.iter().enumerate() {
        if !is_host_port(&route.host) {
            problem(
                format!("spec.delivery.routes[{i}].host"),
                format!("{:?} is not host:port", route.host),
            );
        }
    }
    let mut rate = |field: String, text: &str| match text.parse::<Rate>() {
        Ok(rate) => Some(rate),
        Err(err) => {
            problem(field, err);
            None
        }
    };
    let rate_per_destination = spec
        .delivery
        .rate_per_destination
        .as_deref()
        .and_then(|r| rate("spec.delivery.ratePerDestination".into(), r));
    let destinations: Vec<DestinationLimits> = spec
        .delivery
        .destinations
        .iter()
        .enumerate()
        .map(|(i, d)| DestinationLimits {
            pattern: d.pattern.to_ascii_lowercase(),
            connections: d.connections.map(|n| n as usize),
            messages_per_connection: d.messages_per_connection.map(|n| n as usize),
            rate: d
                .rate
                .as_deref()
                .and_then(|r| rate(format!("spec.delivery.destinations[{i}].rate"), r)),
            burst: d.burst,
            tls: d.tls.map(super::config::destination_tls),
        })
        .collect();
    for (i, d) in destinations.iter().enumerate() {
        if !is_domain_pattern(&d.pattern) {
            problem(
                format!("spec.delivery.destinations[{i}].match"),
                format!("{:?} is not a domain, *.domain or *", d.pattern),
            );
        }
    }
    if let Some(smarthost) = &spec.delivery.smarthost
        && !is_host_port(&smarthost.host)
    {
        problem(
            "spec.delivery.smarthost.host".into(),
            format!("{:?} is not host:port", smarthost.host),
        );
    }
    if let Some(stream) = &spec.nats.stream
        && (stream.is_empty()
            || !stream
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'))
    {
        problem(
            "spec.nats.stream".into(),
            format!("{stream:?} may hold only letters, digits, '_' and '-'"),
        );
    }
    for (i, hook) in webhooks.iter().enumerate() {
        if webhooks[..i].iter().any(|h| h.name == hook.name) {
            problem(
                format!("spec.events.webhooks[{i}].name"),
                format!("{} is the name of an earlier webhook", hook.name),
            );
        }
        for (k, kind) in hook.kinds.iter().enumerate() {
            if !postern_config::EVENT_KINDS.contains(&kind.as_str()) {
                problem(
                    format!("spec.events.webhooks[{i}].kinds[{k}]"),
                    format!(
                        "{kind:?} is not one of {}",
                        postern_config::EVENT_KINDS.join(", ")
                    ),
                );
            }
        }
        for (name, value) in [("timeout", hook.timeout), ("retryFor", hook.retry_for)] {
            if value.get().is_zero() {
                problem(
                    format!("spec.events.webhooks[{i}].{name}"),
                    "must be greater than zero".into(),
                );
            }
        }
    }
    if spec.events.enabled == Some(false) && !webhooks.is_empty() {
        problem(
            "spec.events.webhooks".into(),
            "needs events (spec.events.enabled is false)".into(),
        );
    }
    if !problems.is_empty() {
        return Err(ValidationError { problems });
    }
    Ok(ValidSpec {
        allowed_networks,
        trusted_proxies,
        retry_schedule: (!schedule.is_empty()).then(|| schedule.into_iter().flatten().collect()),
        max_age,
        delay_warning,
        suppression_expiry,
        events_max_age,
        webhooks,
        rate_per_destination,
        destinations,
        backoff,
        ingress_replicas: bounds[0],
        delivery_replicas: bounds[1],
        stream_replicas,
        sync,
    })
}

fn is_host_port(text: &str) -> bool {
    match text.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0),
        None => false,
    }
}
