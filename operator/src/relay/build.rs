//! The build stage: every object a Relay needs, as pure functions of the dereferenced inputs.
//! Objects are JSON values with `apiVersion`, `kind` and `metadata`, ready for server-side apply.

use kube::ResourceExt;
use serde_json::{Value, json};

use postern_config::DomainConfig;

use super::config::{build_config, signing_domains};
use super::dereference::RelayInputs;
use super::names::{
    ADMIN_PORT, CONFIG_KEY, CONSUMER, DOMAINS_KEY, hostname, paths, signing_key_file,
    signing_secret_name, stream_name,
};
use super::validate::ValidSpec;
use crate::api::{Relay, ServiceType, TrafficPolicy};
use crate::meta::{self, RESTART_HASH, owned_meta};

/// Image used when neither `spec.image` nor `--relay-image` names one: the relay of the
/// operator's own release.
pub const DEFAULT_IMAGE: &str = concat!("ghcr.io/postern-io/postern:", env!("CARGO_PKG_VERSION"));
/// UID and GID the relay runs as.
const RUN_AS: i64 = 65532;
/// Time the ingress pods keep accepting after SIGTERM is due, so that endpoints are removed
/// from Services before the listeners close.
const PRE_STOP_SECONDS: i64 = 5;

/// Why objects could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("relay config: {0}")]
    Config(#[from] postern_config::ConfigError),
}

/// Everything a Relay owns, and the objects it must not have (left from another setting).
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredRelay {
    /// Objects to apply, in apply order.
    pub objects: Vec<Value>,
    /// `(apiVersion, kind, name)` of objects to delete if they exist.
    pub absent: Vec<(String, String, String)>,
    /// The config written into the ConfigMap.
    pub config: postern_config::Config,
    pub config_yaml: String,
    /// Secret with the ingress certificate.
    pub tls_secret: String,
    /// True when the operator itself makes the certificate.
    pub self_signed: bool,
}

/// Builds every object of the Relay in `inputs`.
pub fn build(inputs: &RelayInputs, valid: &ValidSpec) -> Result<DesiredRelay, BuildError> {
    let relay = &inputs.relay;
    let name = relay.name_any();
    let config = build_config(relay, valid)?;
    let config_yaml = config.to_yaml()?;
    let restart_hash = meta::hash(&[config_yaml.as_bytes(), inputs.secret_digest.as_bytes()]);
    let tls = &relay.spec.ingress.tls;
    let tls_secret = tls
        .secret_name
        .clone()
        .unwrap_or_else(|| format!("{name}-tls"));

    let mut objects = vec![
        object(
            relay,
            "v1",
            "ServiceAccount",
            name.clone(),
            "relay",
            json!({
                "automountServiceAccountToken": false,
            }),
        ),
        object(
            relay,
            "v1",
            "ConfigMap",
            format!("{name}-config"),
            "relay",
            json!({
                "data": { CONFIG_KEY: config_yaml },
            }),
        ),
    ];
    let mut absent = Vec::new();
    if let Some(issuer) = &tls.issuer_ref {
        let mut dns_names = vec![hostname(relay)];
        dns_names.extend(tls.dns_names.iter().cloned());
        objects.push(object(relay, "cert-manager.io/v1", "Certificate", format!("{name}-tls"), "ingress", json!({
            "spec": {
                "secretName": tls_secret,
                "dnsNames": dns_names,
                "issuerRef": { "name": issuer.name, "kind": issuer.kind, "group": issuer.group },
                "privateKey": { "algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always" },
                "usages": ["server auth"],
            },
        })));
    } else {
        absent.push((
            "cert-manager.io/v1".into(),
            "Certificate".into(),
            format!("{name}-tls"),
        ));
    }
    objects.push(signing_secret(inputs)?);
    objects.push(ingress_deployment(inputs, &restart_hash, &tls_secret));
    objects.push(delivery_deployment(inputs, &restart_hash));
    objects.push(ingress_service(relay));
    objects.push(object(relay, "v1", "Service", format!("{name}-metrics"), "metrics", json!({
        "spec": {
            "type": "ClusterIP",
            "selector": {
                "app.kubernetes.io/name": "postern",
                "app.kubernetes.io/instance": name,
            },
            "ports": [{ "name": "admin", "port": ADMIN_PORT, "targetPort": "admin", "protocol": "TCP" }],
        },
    })));
    for (component, max_unavailable) in [
        ("ingress", relay.spec.ingress.max_unavailable),
        ("delivery", relay.spec.delivery.max_unavailable),
    ] {
        objects.push(object(
            relay,
            "policy/v1",
            "PodDisruptionBudget",
            format!("{name}-{component}"),
            component,
            json!({
                "spec": {
                    "maxUnavailable": max_unavailable,
                    "selector": { "matchLabels": meta::selector(&name, component) },
                },
            }),
        ));
    }
    let ingress = &relay.spec.ingress;
    let (min, max) = valid.ingress_replicas;
    objects.push(cpu_autoscaler(
        relay,
        "ingress",
        min,
        max,
        ingress.target_cpu_utilization,
    ));
    let delivery = &relay.spec.delivery;
    let (min, max) = valid.delivery_replicas;
    let delivery_name = format!("{name}-delivery");
    if inputs.keda {
        objects.push(object(
            relay,
            "keda.sh/v1alpha1",
            "ScaledObject",
            delivery_name.clone(),
            "delivery",
            json!({
                "spec": {
                    "scaleTargetRef": { "name": delivery_name },
                    "minReplicaCount": min,
                    "maxReplicaCount": max,
                    "triggers": [{
                        "type": "nats-jetstream",
                        "metadata": {
                            "natsServerMonitoringEndpoint": monitoring_endpoint(relay),
                            "account": "$G",
                            "stream": stream_name(relay),
                            "consumer": CONSUMER,
                            "lagThreshold": delivery.lag_per_replica.to_string(),
                            "activationLagThreshold": "0",
                        },
                    }],
                },
            }),
        ));
        absent.push((
            "autoscaling/v2".into(),
            "HorizontalPodAutoscaler".into(),
            delivery_name,
        ));
    } else {
        objects.push(cpu_autoscaler(
            relay,
            "delivery",
            min,
            max,
            delivery.target_cpu_utilization,
        ));
        absent.push((
            "keda.sh/v1alpha1".into(),
            "ScaledObject".into(),
            delivery_name,
        ));
    }
    Ok(DesiredRelay {
        objects,
        absent,
        config,
        config_yaml,
        self_signed: tls.issuer_ref.is_none() && tls.secret_name.is_none(),
        tls_secret,
    })
}

/// `natsServerMonitoringEndpoint` for KEDA: the spec's, or the NATS URL's host on port 8222.
pub fn monitoring_endpoint(relay: &Relay) -> String {
    if let Some(endpoint) = &relay.spec.nats.monitoring_endpoint {
        return endpoint.clone();
    }
    let url = relay.spec.nats.url();
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let host_port = rest.split(['/', ',']).next().unwrap_or(rest);
    let host_port = host_port.rsplit_once('@').map_or(host_port, |(_, h)| h);
    let host = match host_port.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host,
        _ => host_port,
    };
    format!("{host}:8222")
}

fn object(
    relay: &Relay,
    api_version: &str,
    kind: &str,
    name: String,
    component: &str,
    body: Value,
) -> Value {
    let mut value = json!({
        "apiVersion": api_version,
        "kind": kind,
        "metadata": owned_meta(relay, name, component),
    });
    if let (Some(target), Value::Object(fields)) = (value.as_object_mut(), body) {
        target.extend(fields);
    }
    value
}

fn cpu_autoscaler(relay: &Relay, component: &str, min: i32, max: i32, target: i32) -> Value {
    let name = format!("{}-{component}", relay.name_any());
    object(
        relay,
        "autoscaling/v2",
        "HorizontalPodAutoscaler",
        name.clone(),
        component,
        json!({
            "spec": {
                "scaleTargetRef": { "apiVersion": "apps/v1", "kind": "Deployment", "name": name },
                "minReplicas": min,
                "maxReplicas": max,
                "metrics": [{
                    "type": "Resource",
                    "resource": { "name": "cpu", "target": { "type": "Utilization", "averageUtilization": target } },
                }],
            },
        }),
    )
}

fn ingress_service(relay: &Relay) -> Value {
    let service = &relay.spec.ingress.service;
    let name = relay.name_any();
    let mut meta = owned_meta(relay, name.clone(), "ingress");
    if !service.annotations.is_empty() {
        meta.annotations = Some(service.annotations.clone());
    }
    let ports: Vec<Value> = relay
        .spec
        .ingress
        .listeners
        .iter()
        .map(|l| json!({ "name": l.name, "port": l.port, "targetPort": l.name, "protocol": "TCP" }))
        .collect();
    let mut spec = json!({
        "type": service.type_,
        "selector": meta::selector(&name, "ingress"),
        "ports": ports,
    });
    if service.type_ != ServiceType::ClusterIP {
        spec["externalTrafficPolicy"] = json!(match service.external_traffic_policy {
            TrafficPolicy::Local => "Local",
            TrafficPolicy::Cluster => "Cluster",
        });
    }
    if service.type_ == ServiceType::LoadBalancer && !service.load_balancer_source_ranges.is_empty()
    {
        spec["loadBalancerSourceRanges"] = json!(service.load_balancer_source_ranges);
    }
    json!({ "apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": spec })
}

/// The signing Secret: the domains file and the active keys of every Domain of the Relay.
/// Kubernetes updates a mounted Secret in place and the relay reloads it, so a new Domain or
/// a key activation reaches running pods without a restart.
fn signing_secret(inputs: &RelayInputs) -> Result<Value, BuildError> {
    use base64::Engine;
    let encode = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let domains = DomainConfig::list_to_yaml(&signing_domains(&inputs.domains))?;
    let mut data = serde_json::Map::new();
    data.insert(
        DOMAINS_KEY.into(),
        Value::String(encode(domains.as_bytes())),
    );
    for (domain, keys) in &inputs.domains {
        for key in keys {
            data.insert(
                signing_key_file(domain, &key.selector),
                Value::String(encode(&key.pem)),
            );
        }
    }
    let relay = &inputs.relay;
    Ok(object(
        relay,
        "v1",
        "Secret",
        signing_secret_name(relay),
        "ingress",
        json!({ "type": "Opaque", "data": data }),
    ))
}

/// A volume from a Secret, mounted read-only at `path`.
struct SecretMount {
    volume: String,
    secret: String,
    path: String,
    optional: bool,
}

fn ingress_deployment(inputs: &RelayInputs, restart_hash: &str, tls_secret: &str) -> Value {
    let relay = &inputs.relay;
    let spec = &relay.spec;
    let mut mounts = vec![SecretMount {
        volume: "tls".into(),
        secret: tls_secret.into(),
        path: paths::TLS_DIR.into(),
        optional: false,
    }];
    if let Some(users) = &spec.ingress.users_secret {
        mounts.push(SecretMount {
            volume: "users".into(),
            secret: users.name.clone(),
            path: paths::USERS_DIR.into(),
            optional: false,
        });
    }
    nats_mount(relay, &mut mounts);
    // One volume for every domain and key: adding either changes no pod template.
    mounts.push(SecretMount {
        volume: "signing".into(),
        secret: signing_secret_name(relay),
        path: paths::SIGNING_DIR.into(),
        optional: false,
    });
    let ports: Vec<Value> = spec
        .ingress
        .listeners
        .iter()
        .map(|l| json!({ "name": l.name, "containerPort": l.target_port(), "protocol": "TCP" }))
        .collect();
    deployment(
        inputs,
        Workload {
            component: "ingress",
            restart_hash,
            mounts,
            ports,
            resources: spec.ingress.resources.as_ref(),
            pre_stop: true,
            termination_grace: PRE_STOP_SECONDS + drain_seconds() + 5,
        },
    )
}

fn delivery_deployment(inputs: &RelayInputs, restart_hash: &str) -> Value {
    let relay = &inputs.relay;
    let spec = &relay.spec;
    let mut mounts = Vec::new();
    nats_mount(relay, &mut mounts);
    if let Some(credentials) = spec
        .delivery
        .smarthost
        .as_ref()
        .and_then(|s| s.credentials_secret.as_ref())
    {
        mounts.push(SecretMount {
            volume: "smarthost".into(),
            secret: credentials.name.clone(),
            path: paths::SMARTHOST_DIR.into(),
            optional: false,
        });
    }
    deployment(
        inputs,
        Workload {
            component: "delivery",
            restart_hash,
            mounts,
            ports: Vec::new(),
            resources: spec.delivery.resources.as_ref(),
            pre_stop: false,
            termination_grace: drain_seconds() + 5,
        },
    )
}

/// How long the relay drains after SIGTERM (`shutdownGrace`, which the operator leaves at its
/// default).
fn drain_seconds() -> i64 {
    let grace = postern_config::Config::default().shutdown_grace.get();
    i64::try_from(grace.as_secs()).unwrap_or(i64::MAX)
}

fn nats_mount(relay: &Relay, mounts: &mut Vec<SecretMount>) {
    if let Some(credentials) = &relay.spec.nats.credentials_secret {
        mounts.push(SecretMount {
            volume: "nats".into(),
            secret: credentials.name.clone(),
            path: paths::NATS_DIR.into(),
            optional: false,
        });
    }
    if let Some(token) = &relay.spec.nats.token_secret {
        mounts.push(SecretMount {
            volume: "nats-token".into(),
            secret: token.name.clone(),
            path: paths::NATS_TOKEN_DIR.into(),
            optional: false,
        });
    }
}

struct Workload<'a> {
    component: &'static str,
    restart_hash: &'a str,
    mounts: Vec<SecretMount>,
    ports: Vec<Value>,
    resources: Option<&'a k8s_openapi::api::core::v1::ResourceRequirements>,
    pre_stop: bool,
    termination_grace: i64,
}

fn deployment(inputs: &RelayInputs, workload: Workload<'_>) -> Value {
    let relay = &inputs.relay;
    let name = relay.name_any();
    let component = workload.component;
    let selector = meta::selector(&name, component);
    let mut ports = workload.ports;
    ports.push(json!({ "name": "admin", "containerPort": ADMIN_PORT, "protocol": "TCP" }));
    let mut volumes = vec![json!({
        "name": "config",
        "configMap": { "name": format!("{name}-config"), "items": [{ "key": CONFIG_KEY, "path": CONFIG_KEY }] },
    })];
    let mut volume_mounts =
        vec![json!({ "name": "config", "mountPath": paths::CONFIG_DIR, "readOnly": true })];
    for mount in &workload.mounts {
        volumes.push(json!({
            "name": mount.volume,
            "secret": { "secretName": mount.secret, "optional": mount.optional, "defaultMode": 0o440 },
        }));
        volume_mounts
            .push(json!({ "name": mount.volume, "mountPath": mount.path, "readOnly": true }));
    }
    let resources = match workload.resources {
        Some(resources) => serde_json::to_value(resources).unwrap_or(Value::Null),
        None => json!({
            "requests": { "cpu": "100m", "memory": "128Mi" },
            "limits": { "memory": "512Mi" },
        }),
    };
    let mut container = json!({
        "name": "postern",
        "image": relay.spec.image.as_deref().unwrap_or(&inputs.default_image),
        "imagePullPolicy": relay.spec.image_pull_policy.as_deref().unwrap_or("IfNotPresent"),
        "args": [component, "--config", paths::CONFIG_FILE],
        "ports": ports,
        "resources": resources,
        "readinessProbe": {
            "httpGet": { "path": "/readyz", "port": "admin" },
            "periodSeconds": 5,
            "failureThreshold": 2,
        },
        "livenessProbe": {
            "httpGet": { "path": "/healthz", "port": "admin" },
            "periodSeconds": 10,
            "failureThreshold": 3,
        },
        "securityContext": {
            "runAsNonRoot": true,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": { "drop": ["ALL"] },
        },
        "volumeMounts": volume_mounts,
    });
    if workload.pre_stop {
        container["lifecycle"] = json!({ "preStop": { "sleep": { "seconds": PRE_STOP_SECONDS } } });
    }
    let mut labels = meta::labels(&name, component);
    labels.extend(selector.clone());
    object(
        relay,
        "apps/v1",
        "Deployment",
        format!("{name}-{component}"),
        component,
        json!({
            "spec": {
                "selector": { "matchLabels": selector },
                "strategy": { "type": "RollingUpdate", "rollingUpdate": { "maxUnavailable": 0, "maxSurge": 1 } },
                "template": {
                    "metadata": {
                        "labels": labels,
                        "annotations": { RESTART_HASH: workload.restart_hash },
                    },
                    "spec": {
                        "serviceAccountName": name,
                        "automountServiceAccountToken": false,
                        "terminationGracePeriodSeconds": workload.termination_grace,
                        "securityContext": {
                            "runAsNonRoot": true,
                            "runAsUser": RUN_AS,
                            "runAsGroup": RUN_AS,
                            "fsGroup": RUN_AS,
                            "seccompProfile": { "type": "RuntimeDefault" },
                        },
                        "affinity": {
                            "podAntiAffinity": {
                                "preferredDuringSchedulingIgnoredDuringExecution": [{
                                    "weight": 100,
                                    "podAffinityTerm": {
                                        "topologyKey": "kubernetes.io/hostname",
                                        "labelSelector": { "matchLabels": meta::selector(&name, component) },
                                    },
                                }],
                            },
                        },
                        "containers": [container],
                        "volumes": volumes,
                    },
                },
            },
        }),
    )
}
