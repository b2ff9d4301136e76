//! Names, labels and owner references shared by every object the operator builds.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};

/// The field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "postern-operator";
/// Annotation holding the hash of what the operator last applied to an object.
pub const APPLIED_HASH: &str = "postern.io/applied-hash";
/// Pod template annotation that changes, and so rolls the pods, when their config or a Secret
/// they read only at start changes.
pub const RESTART_HASH: &str = "postern.io/restart-hash";

/// Label selector of the objects the operator made.
pub const MANAGED_BY_SELECTOR: &str = "app.kubernetes.io/managed-by=postern-operator";

/// `app.kubernetes.io` labels of an object owned by `instance`.
pub fn labels(instance: &str, component: &str) -> BTreeMap<String, String> {
    let mut labels = selector(instance, component);
    labels.insert(
        "app.kubernetes.io/managed-by".into(),
        "postern-operator".into(),
    );
    labels.insert(
        "app.kubernetes.io/version".into(),
        env!("CARGO_PKG_VERSION").into(),
    );
    labels
}

/// The labels that select the pods of one component.
pub fn selector(instance: &str, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "postern".into()),
        ("app.kubernetes.io/instance".into(), instance.into()),
        ("app.kubernetes.io/component".into(), component.into()),
    ])
}

/// Metadata of an object named `name` owned (and garbage-collected with) `owner`.
pub fn owned_meta<K>(owner: &K, name: String, component: &str) -> ObjectMeta
where
    K: Resource<DynamicType = ()>,
{
    ObjectMeta {
        name: Some(name),
        namespace: owner.meta().namespace.clone(),
        labels: Some(labels(&owner.name_any(), component)),
        owner_references: owner_reference(owner).map(|r| vec![r]),
        ..ObjectMeta::default()
    }
}

/// A controller owner reference to `owner`; `None` before the API server gave it a uid.
pub fn owner_reference<K>(owner: &K) -> Option<OwnerReference>
where
    K: Resource<DynamicType = ()>,
{
    owner.controller_owner_ref(&())
}

/// Hex SHA-256 of `parts`, each length-prefixed so that boundaries count.
pub fn hash(parts: &[&[u8]]) -> String {
    use sha2::{Digest, Sha256};
    let mut digest = Sha256::new();
    for part in parts {
        digest.update((part.len() as u64).to_be_bytes());
        digest.update(part);
    }
    digest
        .finalize()
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect()
}
