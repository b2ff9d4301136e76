//! What the status stage reads back: how far the Deployments rolled out and where clients
//! connect.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::ResourceExt;

use crate::api::Relay;

/// `(ready replicas, rollout complete)` of a Deployment.
pub(super) fn rollout(deployment: Option<&Deployment>) -> (i32, bool) {
    let Some(deployment) = deployment else {
        return (0, false);
    };
    let Some(status) = &deployment.status else {
        return (0, false);
    };
    let wanted = deployment
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1);
    let ready = status.ready_replicas.unwrap_or(0);
    let current = status.observed_generation >= deployment.metadata.generation
        && status.updated_replicas.unwrap_or(0) >= wanted
        && status.replicas.unwrap_or(0) == status.updated_replicas.unwrap_or(0);
    (ready, current && ready >= wanted)
}

/// `host:port` for each listener: load balancer addresses when assigned, else the Service's
/// cluster DNS name.
pub(super) fn endpoints(relay: &Relay, service: Option<&Service>, namespace: &str) -> Vec<String> {
    let mut hosts: Vec<String> = service
        .and_then(|s| s.status.as_ref())
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|i| i.hostname.clone().or_else(|| i.ip.clone()))
        .collect();
    if hosts.is_empty() {
        hosts.push(format!("{}.{namespace}.svc", relay.name_any()));
    }
    hosts
        .iter()
        .flat_map(|host| {
            relay
                .spec
                .ingress
                .listeners
                .iter()
                .map(move |l| format!("{host}:{}", l.port))
        })
        .collect()
}
