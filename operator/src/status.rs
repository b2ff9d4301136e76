//! Writing a resource's status: only when it changed, with an event for each condition that
//! changed, retried on conflicts.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::context::Context;
use crate::{apply, conditions};

/// A status with conditions.
pub trait HasConditions: Serialize + PartialEq {
    fn conditions(&self) -> &[Condition];
}

impl HasConditions for crate::api::RelayStatus {
    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }
}

impl HasConditions for crate::api::DomainStatus {
    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }
}

/// Writes `after` as the status of `object` unless it equals `before`. Each condition whose
/// status changed (except Progressing, which changes with every rollout) becomes an event: a
/// warning when it turned bad.
pub async fn write<K, S>(
    ctx: &Context,
    api: &Api<K>,
    object: &K,
    before: &S,
    after: &S,
) -> Result<(), kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    S: HasConditions,
{
    if after == before {
        return Ok(());
    }
    for (kind, now_true) in conditions::transitions(before.conditions(), after.conditions()) {
        if kind == "Progressing" {
            continue;
        }
        // A check under way (Unknown) is not news.
        if let Some(condition) = after
            .conditions()
            .iter()
            .find(|c| c.type_ == kind && c.status != "Unknown")
        {
            let warning = (kind == "Degraded") == now_true;
            let note = format!("{kind}={}: {}", condition.status, condition.message);
            ctx.event(object, warning, &condition.reason, note).await;
        }
    }
    let body = json!({ "status": after });
    let (name, params, patch) = (
        object.name_any(),
        PatchParams::default(),
        Patch::Merge(&body),
    );
    apply::retry_conflicts(|| api.patch_status(&name, &params, &patch)).await?;
    Ok(())
}
