//! The operator's RBAC grants exactly what its reconcilers write, and is valid Kubernetes.
#![allow(clippy::unwrap_used)]

mod support;

use postern_operator::rbac::{allows, roles};
use support::*;

#[test]
fn every_kind_the_operator_writes_is_granted() {
    let mut objects = Vec::new();
    for inputs in [minimal_inputs(), full_inputs()] {
        let desired = build(&inputs).unwrap();
        objects.extend(desired.values());
        for (api_version, kind, _) in desired.absent {
            objects.push(serde_json::json!({ "apiVersion": api_version, "kind": kind }));
        }
    }
    objects.push(serde_json::json!({ "apiVersion": "v1", "kind": "Secret" }));
    objects.push(
        serde_json::json!({ "apiVersion": "externaldns.k8s.io/v1alpha1", "kind": "DNSEndpoint" }),
    );
    let deletable: Vec<String> = [minimal_inputs(), full_inputs()]
        .iter()
        .flat_map(|inputs| build(inputs).unwrap().absent)
        .map(|(_, kind, _)| kind)
        .chain(["DNSEndpoint".to_string()])
        .collect();
    for object in objects {
        let api_version = object["apiVersion"].as_str().unwrap();
        let kind = object["kind"].as_str().unwrap();
        let group = api_version.split_once('/').map_or("", |(g, _)| g);
        let resource = postern_operator::apply::api_resource(api_version, kind).plural;
        for verb in ["get", "patch"] {
            assert!(
                allows(group, &resource, verb),
                "no {verb} on {group}/{resource}"
            );
        }
        // Owner references collect the rest: only what a setting makes unnecessary is deleted.
        assert_eq!(
            allows(group, &resource, "delete"),
            deletable.iter().any(|k| k == kind),
            "delete on {group}/{resource}"
        );
    }
    assert!(allows("postern.io", "relays/status", "patch"));
    assert!(!allows("", "pods", "get"), "the operator never needs pods");
    assert!(!allows("", "secrets", "delete"), "nor deletes a Secret");
}

#[test]
fn roles_are_valid_for_kubernetes_1_33() {
    let dir = tempfile::tempdir().unwrap();
    let roles = roles("postern-operator", "postern-system", &["mail".to_string()]);
    assert_valid_for_kubernetes(&[write_stream(dir.path(), "rbac.yaml", &roles)]);
}
