//! The build stage: every object a Relay owns, as typed k8s-openapi objects (dynamic ones only
//! for kinds of other projects), from the dereferenced inputs and the validated spec. Pure: no
//! API calls, so snapshot tests see exactly what would be applied.

mod scaling;
mod workloads;

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{
    ConfigMap, Secret, Service, ServiceAccount, ServicePort, ServiceSpec,
};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::DynamicObject;
use kube::core::TypeMeta;
use kube::{Resource, ResourceExt};
use postern_config::DomainConfig;
use serde_json::{Value, json};

use super::config::{build_config, signing_domains};
use super::dereference::RelayInputs;
use super::names::{
    ADMIN_PORT, CONFIG_KEY, DOMAINS_KEY, certificate_name, config_map_name, hostname,
    metrics_service_name, signing_key_file, signing_secret_name, tls_secret_name,
};
use super::validate::ValidSpec;
use crate::api::{Relay, ServiceType, TrafficPolicy};
use crate::meta::{self, owned_meta};

pub use scaling::monitoring_endpoint;
pub use workloads::DEFAULT_IMAGE;

/// Why objects could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("relay config: {0}")]
    Config(#[from] postern_config::ConfigError),
}

/// One object a Relay owns.
#[derive(Debug, Clone, PartialEq)]
pub enum Owned {
    ServiceAccount(ServiceAccount),
    ConfigMap(ConfigMap),
    Secret(Secret),
    Deployment(Box<Deployment>),
    Service(Service),
    PodDisruptionBudget(PodDisruptionBudget),
    HorizontalPodAutoscaler(HorizontalPodAutoscaler),
    /// A kind of another project, which has no Rust type here (cert-manager's Certificate,
    /// KEDA's ScaledObject).
    Dynamic(DynamicObject),
}

impl Owned {
    /// The object as the API server takes it, with `apiVersion` and `kind`.
    pub fn to_value(&self) -> Value {
        fn typed<K: Resource<DynamicType = ()> + serde::Serialize>(object: &K) -> Value {
            let mut value = serde_json::to_value(object).unwrap_or(Value::Null);
            value["apiVersion"] = Value::String(K::api_version(&()).into_owned());
            value["kind"] = Value::String(K::kind(&()).into_owned());
            value
        }
        match self {
            Owned::ServiceAccount(o) => typed(o),
            Owned::ConfigMap(o) => typed(o),
            Owned::Secret(o) => typed(o),
            Owned::Deployment(o) => typed(o.as_ref()),
            Owned::Service(o) => typed(o),
            Owned::PodDisruptionBudget(o) => typed(o),
            Owned::HorizontalPodAutoscaler(o) => typed(o),
            Owned::Dynamic(o) => serde_json::to_value(o).unwrap_or(Value::Null),
        }
    }

    /// The object's kind.
    pub fn kind(&self) -> String {
        match self {
            Owned::ServiceAccount(_) => "ServiceAccount".into(),
            Owned::ConfigMap(_) => "ConfigMap".into(),
            Owned::Secret(_) => "Secret".into(),
            Owned::Deployment(_) => "Deployment".into(),
            Owned::Service(_) => "Service".into(),
            Owned::PodDisruptionBudget(_) => "PodDisruptionBudget".into(),
            Owned::HorizontalPodAutoscaler(_) => "HorizontalPodAutoscaler".into(),
            Owned::Dynamic(o) => o.types.as_ref().map(|t| t.kind.clone()).unwrap_or_default(),
        }
    }
}

/// Everything a Relay owns, and the objects it must not have (left from another setting).
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredRelay {
    /// Objects to apply, in apply order.
    pub objects: Vec<Owned>,
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

impl DesiredRelay {
    /// Every object as the API server takes it.
    pub fn values(&self) -> Vec<Value> {
        self.objects.iter().map(Owned::to_value).collect()
    }
}

/// Builds every object of the Relay in `inputs`, with the spec as validation made it.
pub fn build(inputs: &RelayInputs, valid: &ValidSpec) -> Result<DesiredRelay, BuildError> {
    let relay = &inputs.relay;
    let config = build_config(relay, valid)?;
    let config_yaml = config.to_yaml()?;
    let restart_hash = meta::hash(&[config_yaml.as_bytes(), inputs.secret_digest.as_bytes()]);
    let tls = &relay.spec.ingress.tls;
    let tls_secret = tls_secret_name(relay);

    let mut objects = vec![
        Owned::ServiceAccount(ServiceAccount {
            metadata: owned_meta(relay, relay.name_any(), "relay"),
            automount_service_account_token: Some(false),
            ..ServiceAccount::default()
        }),
        Owned::ConfigMap(ConfigMap {
            metadata: owned_meta(relay, config_map_name(relay), "relay"),
            data: Some(BTreeMap::from([(CONFIG_KEY.into(), config_yaml.clone())])),
            ..ConfigMap::default()
        }),
    ];
    let mut absent = Vec::new();
    match certificate(relay) {
        Some(certificate) => objects.push(Owned::Dynamic(certificate)),
        None => absent.push((
            "cert-manager.io/v1".into(),
            "Certificate".into(),
            certificate_name(relay),
        )),
    }
    objects.push(Owned::Secret(signing_secret(inputs)?));
    let ingress = workloads::ingress(inputs, &restart_hash, &tls_secret);
    let delivery = workloads::delivery(inputs, &restart_hash);
    objects.push(Owned::Deployment(Box::new(ingress)));
    objects.push(Owned::Deployment(Box::new(delivery)));
    objects.push(Owned::Service(ingress_service(relay)));
    objects.push(Owned::Service(metrics_service(relay)));
    objects.extend(scaling::disruption_budgets(relay).map(Owned::PodDisruptionBudget));
    objects.push(Owned::HorizontalPodAutoscaler(scaling::cpu_autoscaler(
        relay,
        "ingress",
        valid.ingress_replicas,
        relay.spec.ingress.target_cpu_utilization,
    )));
    let (delivery, not_delivery) = scaling::delivery_autoscaler(inputs, valid);
    objects.push(delivery);
    absent.push(not_delivery);
    Ok(DesiredRelay {
        objects,
        absent,
        config,
        config_yaml,
        self_signed: tls.issuer_ref.is_none() && tls.secret_name.is_none(),
        tls_secret,
    })
}

/// An object of another project's kind, owned by the Relay.
fn dynamic(
    relay: &Relay,
    api_version: &str,
    kind: &str,
    name: String,
    component: &str,
    data: Value,
) -> DynamicObject {
    DynamicObject {
        types: Some(TypeMeta {
            api_version: api_version.into(),
            kind: kind.into(),
        }),
        metadata: owned_meta(relay, name, component),
        data,
    }
}

/// cert-manager's Certificate for `tls.issuerRef`, if the Relay names an issuer.
fn certificate(relay: &Relay) -> Option<DynamicObject> {
    let tls = &relay.spec.ingress.tls;
    let issuer = tls.issuer_ref.as_ref()?;
    let mut dns_names = vec![hostname(relay)];
    dns_names.extend(tls.dns_names.iter().cloned());
    Some(dynamic(
        relay,
        "cert-manager.io/v1",
        "Certificate",
        certificate_name(relay),
        "ingress",
        json!({
            "spec": {
                "secretName": tls_secret_name(relay),
                "dnsNames": dns_names,
                "issuerRef": { "name": issuer.name, "kind": issuer.kind, "group": issuer.group },
                "privateKey": { "algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always" },
                "usages": ["server auth"],
            },
        }),
    ))
}

fn ingress_service(relay: &Relay) -> Service {
    let service = &relay.spec.ingress.service;
    let name = relay.name_any();
    let mut metadata = owned_meta(relay, name.clone(), "ingress");
    if !service.annotations.is_empty() {
        metadata.annotations = Some(service.annotations.clone());
    }
    let ports = relay
        .spec
        .ingress
        .listeners
        .iter()
        .map(|l| ServicePort {
            name: Some(l.name.clone()),
            port: i32::from(l.port),
            target_port: Some(IntOrString::String(l.name.clone())),
            protocol: Some("TCP".into()),
            ..ServicePort::default()
        })
        .collect();
    let exposed = service.type_ != ServiceType::ClusterIP;
    Service {
        metadata,
        spec: Some(ServiceSpec {
            type_: Some(
                match service.type_ {
                    ServiceType::ClusterIP => "ClusterIP",
                    ServiceType::NodePort => "NodePort",
                    ServiceType::LoadBalancer => "LoadBalancer",
                }
                .into(),
            ),
            selector: Some(meta::selector(&name, "ingress")),
            ports: Some(ports),
            external_traffic_policy: exposed.then(|| {
                match service.external_traffic_policy {
                    TrafficPolicy::Local => "Local",
                    TrafficPolicy::Cluster => "Cluster",
                }
                .into()
            }),
            load_balancer_source_ranges: (service.type_ == ServiceType::LoadBalancer
                && !service.load_balancer_source_ranges.is_empty())
            .then(|| service.load_balancer_source_ranges.clone()),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// The Service in front of every pod's admin port (`/metrics`).
fn metrics_service(relay: &Relay) -> Service {
    let name = relay.name_any();
    Service {
        metadata: owned_meta(relay, metrics_service_name(relay), "metrics"),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(BTreeMap::from([
                ("app.kubernetes.io/name".into(), "postern".into()),
                ("app.kubernetes.io/instance".into(), name),
            ])),
            ports: Some(vec![ServicePort {
                name: Some("admin".into()),
                port: i32::from(ADMIN_PORT),
                target_port: Some(IntOrString::String("admin".into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// The signing Secret: the domains file and the active keys of every Domain of the Relay.
/// Kubernetes updates a mounted Secret in place and the relay reloads it, so a new Domain or
/// a key activation reaches running pods without a restart.
fn signing_secret(inputs: &RelayInputs) -> Result<Secret, BuildError> {
    let domains = DomainConfig::list_to_yaml(&signing_domains(&inputs.domains))?;
    let mut data = BTreeMap::from([(DOMAINS_KEY.to_string(), ByteString(domains.into_bytes()))]);
    for (domain, keys) in &inputs.domains {
        for key in keys {
            data.insert(
                signing_key_file(domain, &key.selector),
                ByteString(key.pem.clone()),
            );
        }
    }
    let relay = &inputs.relay;
    Ok(Secret {
        metadata: owned_meta(relay, signing_secret_name(relay), "ingress"),
        type_: Some("Opaque".into()),
        data: Some(data),
        ..Secret::default()
    })
}
