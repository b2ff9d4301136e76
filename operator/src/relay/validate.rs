//! The validate stage: what the CRD schema cannot check, named by field.

use std::collections::BTreeSet;
use std::str::FromStr;

use ipnet::IpNet;
use postern_config::Duration;

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

/// Checks a Relay's name and spec; the error lists every invalid field.
pub fn validate(name: &str, spec: &RelaySpec) -> Result<(), ValidationError> {
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

    let allowed = spec.ingress.allowed_networks();
    let networks = [
        ("allowedNetworks", &allowed),
        ("trustedProxies", &spec.ingress.trusted_proxies),
    ];
    for (field, list) in networks {
        for (i, network) in list.iter().enumerate() {
            if IpNet::from_str(network).is_err() {
                problem(
                    format!("spec.ingress.{field}[{i}]"),
                    format!("{network:?} is not a CIDR such as 10.0.0.0/8"),
                );
            }
        }
    }
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
    for (field, bounds, default) in replicas {
        let (min, max) = bounds.bounds(default);
        if min < 1 || min > max {
            problem(
                field.into(),
                format!("need 1 <= min <= max, got min {min} max {max}"),
            );
        }
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
    let durations = spec
        .delivery
        .retry
        .schedule
        .iter()
        .enumerate()
        .map(|(i, d)| (format!("spec.delivery.retry.schedule[{i}]"), d))
        .chain(
            spec.delivery
                .retry
                .max_age
                .iter()
                .map(|d| ("spec.delivery.retry.maxAge".to_string(), d)),
        );
    for (field, text) in durations {
        if let Err(err) = Duration::from_str(text) {
            problem(field, err.to_string());
        }
    }
    for (i, route) in spec.delivery.routes.iter().enumerate() {
        if !is_host_port(&route.host) {
            problem(
                format!("spec.delivery.routes[{i}].host"),
                format!("{:?} is not host:port", route.host),
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
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ValidationError { problems })
    }
}

fn is_host_port(text: &str) -> bool {
    match text.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0),
        None => false,
    }
}
