//! How many pods run: disruption budgets, the CPU autoscalers and, where KEDA is installed,
//! delivery scaled on the queue's lag.

use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HorizontalPodAutoscaler, HorizontalPodAutoscalerSpec, MetricSpec,
    MetricTarget, ResourceMetricSource,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use serde_json::json;

use super::{Owned, dynamic};
use crate::api::Relay;
use crate::meta::{self, owned_meta};
use crate::relay::dereference::RelayInputs;
use crate::relay::names::{CONSUMER, stream_name, workload_name};
use crate::relay::validate::ValidSpec;

/// One budget per Deployment: at most `maxUnavailable` pods down at once for voluntary
/// disruptions.
pub(super) fn disruption_budgets(relay: &Relay) -> impl Iterator<Item = PodDisruptionBudget> + '_ {
    [
        ("ingress", relay.spec.ingress.max_unavailable),
        ("delivery", relay.spec.delivery.max_unavailable),
    ]
    .into_iter()
    .map(move |(component, max_unavailable)| PodDisruptionBudget {
        metadata: owned_meta(relay, workload_name(relay, component), component),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(max_unavailable)),
            selector: Some(LabelSelector {
                match_labels: Some(meta::selector(&relay.name_any(), component)),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    })
}

/// A CPU autoscaler for the Deployment of `component`, between `(min, max)` replicas.
pub(super) fn cpu_autoscaler(
    relay: &Relay,
    component: &str,
    (min, max): (i32, i32),
    target: i32,
) -> HorizontalPodAutoscaler {
    let name = workload_name(relay, component);
    HorizontalPodAutoscaler {
        metadata: owned_meta(relay, name.clone(), component),
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".into()),
                kind: "Deployment".into(),
                name,
            },
            min_replicas: Some(min),
            max_replicas: max,
            metrics: Some(vec![MetricSpec {
                type_: "Resource".into(),
                resource: Some(ResourceMetricSource {
                    name: "cpu".into(),
                    target: MetricTarget {
                        type_: "Utilization".into(),
                        average_utilization: Some(target),
                        ..MetricTarget::default()
                    },
                }),
                ..MetricSpec::default()
            }]),
            ..HorizontalPodAutoscalerSpec::default()
        }),
        ..HorizontalPodAutoscaler::default()
    }
}

/// The delivery autoscaler: KEDA's `nats-jetstream` scaler on the consumer's lag where KEDA is
/// installed, else CPU; and `(apiVersion, kind, name)` of the other, which must go.
pub(super) fn delivery_autoscaler(
    inputs: &RelayInputs,
    valid: &ValidSpec,
) -> (Owned, (String, String, String)) {
    let relay = &inputs.relay;
    let delivery = &relay.spec.delivery;
    let name = workload_name(relay, "delivery");
    let (min, max) = valid.delivery_replicas;
    if !inputs.keda {
        let hpa = cpu_autoscaler(
            relay,
            "delivery",
            (min, max),
            delivery.target_cpu_utilization,
        );
        let scaled = ("keda.sh/v1alpha1".into(), "ScaledObject".into(), name);
        return (Owned::HorizontalPodAutoscaler(hpa), scaled);
    }
    let scaled = dynamic(
        relay,
        "keda.sh/v1alpha1",
        "ScaledObject",
        name.clone(),
        "delivery",
        json!({
            "spec": {
                "scaleTargetRef": { "name": name },
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
    );
    let hpa = (
        "autoscaling/v2".into(),
        "HorizontalPodAutoscaler".into(),
        name,
    );
    (Owned::Dynamic(scaled), hpa)
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
