//! Every permission the operator needs, in one place. `postern-operator rbac` prints them as a
//! ClusterRole (and a Role for the leader-election Lease), which the Helm chart installs.

use serde_json::{Value, json};

/// `(API group, resources, verbs)` the operator uses cluster-wide.
pub const CLUSTER_RULES: &[(&str, &[&str], &[&str])] = &[
    (
        "postern.io",
        &["relays", "domains"],
        &["get", "list", "watch", "patch", "update"],
    ),
    (
        "postern.io",
        &["relays/status", "domains/status"],
        &["get", "patch", "update"],
    ),
    (
        "",
        &["configmaps", "services", "serviceaccounts"],
        &["get", "list", "watch", "create", "patch", "delete"],
    ),
    // DKIM key Secrets are replaced with a resourceVersion precondition (`update`).
    (
        "",
        &["secrets"],
        &[
            "get", "list", "watch", "create", "update", "patch", "delete",
        ],
    ),
    (
        "apps",
        &["deployments"],
        &["get", "list", "watch", "create", "patch", "delete"],
    ),
    (
        "policy",
        &["poddisruptionbudgets"],
        &["get", "create", "patch", "delete"],
    ),
    (
        "autoscaling",
        &["horizontalpodautoscalers"],
        &["get", "create", "patch", "delete"],
    ),
    (
        "keda.sh",
        &["scaledobjects"],
        &["get", "create", "patch", "delete"],
    ),
    (
        "cert-manager.io",
        &["certificates"],
        &["get", "create", "patch", "delete"],
    ),
    (
        "externaldns.k8s.io",
        &["dnsendpoints"],
        &["get", "create", "patch", "delete"],
    ),
    (
        "apiextensions.k8s.io",
        &["customresourcedefinitions"],
        &["get"],
    ),
    ("events.k8s.io", &["events"], &["create", "patch"]),
];

/// `(API group, resources, verbs)` in the operator's own namespace.
pub const LEASE_RULES: &[(&str, &[&str], &[&str])] = &[(
    "coordination.k8s.io",
    &["leases"],
    &["get", "create", "patch", "update"],
)];

/// True when `verb` on `resource` of `group` is granted cluster-wide.
pub fn allows(group: &str, resource: &str, verb: &str) -> bool {
    granted(CLUSTER_RULES, group, resource, verb)
}

/// True when `verb` on `resource` of `group` is granted in the operator's own namespace
/// (cluster-wide rules included).
pub fn allows_in_own_namespace(group: &str, resource: &str, verb: &str) -> bool {
    allows(group, resource, verb) || granted(LEASE_RULES, group, resource, verb)
}

fn granted(table: &[(&str, &[&str], &[&str])], group: &str, resource: &str, verb: &str) -> bool {
    table.iter().any(|(g, resources, verbs)| {
        *g == group && resources.contains(&resource) && verbs.contains(&verb)
    })
}

fn rules(table: &[(&str, &[&str], &[&str])]) -> Vec<Value> {
    table
        .iter()
        .map(|(group, resources, verbs)| json!({ "apiGroups": [group], "resources": resources, "verbs": verbs }))
        .collect()
}

/// The ClusterRole and the Lease Role, named `name`, the Role in `namespace`.
pub fn roles(name: &str, namespace: &str) -> Vec<Value> {
    vec![
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": { "name": name },
            "rules": rules(CLUSTER_RULES),
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": { "name": name, "namespace": namespace },
            "rules": rules(LEASE_RULES),
        }),
    ]
}
