//! Every permission the operator needs, in one place. `postern-operator rbac` prints them as a
//! ClusterRole (and a Role for the leader-election Lease; with `--watch-namespace`, a Role in
//! each watched namespace instead of cluster-wide rules), which the Helm chart installs.

use serde_json::{Value, json};

/// `(API group, resources, verbs)` on namespaced resources, in every namespace the operator
/// watches: cluster-wide (a ClusterRole) by default, a Role in each of `--watch-namespace`.
/// Nothing is deleted that owner references collect: only the objects a setting can make
/// unnecessary (autoscalers, certificates, DNS endpoints) have `delete`.
pub const RESOURCE_RULES: &[(&str, &[&str], &[&str])] = &[
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
        &["get", "list", "watch", "create", "patch"],
    ),
    // DKIM key Secrets are replaced with a resourceVersion precondition (`update`).
    (
        "",
        &["secrets"],
        &["get", "list", "watch", "create", "update", "patch"],
    ),
    (
        "apps",
        &["deployments"],
        &["get", "list", "watch", "create", "patch"],
    ),
    (
        "policy",
        &["poddisruptionbudgets"],
        &["get", "create", "patch"],
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
    ("events.k8s.io", &["events"], &["create", "patch"]),
];

/// `(API group, resources, verbs)` on cluster-scoped resources: which optional CRDs exist.
pub const CLUSTER_RULES: &[(&str, &[&str], &[&str])] = &[(
    "apiextensions.k8s.io",
    &["customresourcedefinitions"],
    &["get"],
)];

/// `(API group, resources, verbs)` in the operator's own namespace: its Lease, and the token of
/// the NATS it gives Relays (`--nats-token-secret`).
pub const OWN_NAMESPACE_RULES: &[(&str, &[&str], &[&str])] = &[
    (
        "coordination.k8s.io",
        &["leases"],
        &["get", "create", "patch", "update"],
    ),
    ("", &["secrets"], &["get"]),
];

/// True when `verb` on `resource` of `group` is granted in a watched namespace (or, for
/// cluster-scoped resources, cluster-wide).
pub fn allows(group: &str, resource: &str, verb: &str) -> bool {
    granted(RESOURCE_RULES, group, resource, verb) || granted(CLUSTER_RULES, group, resource, verb)
}

/// True when `verb` on `resource` of `group` is granted in the operator's own namespace
/// (cluster-wide rules included).
pub fn allows_in_own_namespace(group: &str, resource: &str, verb: &str) -> bool {
    allows(group, resource, verb) || granted(OWN_NAMESPACE_RULES, group, resource, verb)
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

/// The roles named `name`: a ClusterRole, the Lease Role in `namespace`, and, when `watch`
/// names namespaces, a Role in each of them (the ClusterRole then holds only
/// [`CLUSTER_RULES`]).
pub fn roles(name: &str, namespace: &str, watch: &[String]) -> Vec<Value> {
    let cluster: Vec<Value> = if watch.is_empty() {
        rules(RESOURCE_RULES)
            .into_iter()
            .chain(rules(CLUSTER_RULES))
            .collect()
    } else {
        rules(CLUSTER_RULES)
    };
    let mut roles = vec![
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": { "name": name },
            "rules": cluster,
        }),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": { "name": format!("{name}-lease"), "namespace": namespace },
            "rules": rules(OWN_NAMESPACE_RULES),
        }),
    ];
    roles.extend(watch.iter().map(|watched| {
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": { "name": name, "namespace": watched },
            "rules": rules(RESOURCE_RULES),
        })
    }));
    roles
}
