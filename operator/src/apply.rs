//! The apply stage shared by both reconcilers: server-side apply under one field manager,
//! skipped when the live object already carries the hash of what would be applied, and retried
//! when the API server answers 409 Conflict.

use std::time::Duration;

use kube::api::{DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::core::ApiResource;
use kube::{Api, Client, ResourceExt};
use serde_json::Value;

use crate::meta::{self, APPLIED_HASH, FIELD_MANAGER};

/// Attempts of a write that the API server answers with 409 Conflict.
const CONFLICT_ATTEMPTS: u32 = 4;

/// Why an object could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("{kind} {name}: {source}")]
    Kube {
        kind: String,
        name: String,
        source: kube::Error,
    },
    #[error("object without apiVersion, kind or metadata.name")]
    Malformed,
}

/// What an apply did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The live object already matched.
    Unchanged,
    /// The object was created or changed.
    Written,
}

/// The API resource of `apiVersion` and `kind`; every kind Postern writes has the plural
/// `<kind in lower case>s`.
pub fn api_resource(api_version: &str, kind: &str) -> ApiResource {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let plural = format!("{}s", kind.to_ascii_lowercase());
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), &plural)
}

/// Applies `object` in `namespace` unless it is unchanged since the operator last applied it;
/// `force` applies it anyway, which undoes changes made to the live object by others.
pub async fn apply(
    client: &Client,
    namespace: &str,
    object: &Value,
    force: bool,
) -> Result<Applied, ApplyError> {
    let api_version = object["apiVersion"].as_str().ok_or(ApplyError::Malformed)?;
    let kind = object["kind"].as_str().ok_or(ApplyError::Malformed)?;
    let name = object["metadata"]["name"]
        .as_str()
        .ok_or(ApplyError::Malformed)?;
    let resource = api_resource(api_version, kind);
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
    let error = |source| ApplyError::Kube {
        kind: kind.to_string(),
        name: name.to_string(),
        source,
    };
    let bytes = serde_json::to_vec(object).map_err(|_| ApplyError::Malformed)?;
    let hash = meta::hash(&[&bytes]);
    let live = api.get_opt(name).await.map_err(error)?;
    if !force && live.is_some_and(|live| live.annotations().get(APPLIED_HASH) == Some(&hash)) {
        return Ok(Applied::Unchanged);
    }
    let mut object = object.clone();
    let annotations = &mut object["metadata"]["annotations"];
    if !annotations.is_object() {
        *annotations = Value::Object(Default::default());
    }
    annotations[APPLIED_HASH] = Value::String(hash);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let patch = Patch::Apply(&object);
    retry_conflicts(|| api.patch(name, &params, &patch))
        .await
        .map_err(error)?;
    Ok(Applied::Written)
}

/// [`apply`] for a typed object, which serializes without `apiVersion` and `kind`.
pub async fn apply_typed<K>(
    client: &Client,
    namespace: &str,
    object: &K,
    force: bool,
) -> Result<Applied, ApplyError>
where
    K: kube::Resource<DynamicType = ()> + serde::Serialize,
{
    let mut value = serde_json::to_value(object).map_err(|_| ApplyError::Malformed)?;
    value["apiVersion"] = Value::String(K::api_version(&()).into_owned());
    value["kind"] = Value::String(K::kind(&()).into_owned());
    apply(client, namespace, &value, force).await
}

/// Deletes `(apiVersion, kind, name)` if it exists; a missing object or kind is fine.
pub async fn delete(
    client: &Client,
    namespace: &str,
    (api_version, kind, name): (&str, &str, &str),
) -> Result<bool, ApplyError> {
    let resource = api_resource(api_version, kind);
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(true),
        Err(err) if is_status(&err, 404) => Ok(false),
        Err(source) => Err(ApplyError::Kube {
            kind: kind.to_string(),
            name: name.to_string(),
            source,
        }),
    }
}

/// Runs `write` again, after a short pause, while it fails with 409 Conflict.
pub async fn retry_conflicts<T, F, Fut>(mut write: F) -> Result<T, kube::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, kube::Error>>,
{
    let mut attempt = 1;
    loop {
        match write().await {
            Err(err) if is_status(&err, 409) && attempt < CONFLICT_ATTEMPTS => {
                tracing::debug!(%err, attempt, "conflict; writing again");
                tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// True when `err` is an API status with HTTP code `code`.
pub fn is_status(err: &kube::Error, code: u16) -> bool {
    matches!(err, kube::Error::Api(status) if status.code == code)
}
