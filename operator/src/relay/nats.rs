//! The NATS a Relay uses: what it leaves out filled in from the operator's own NATS
//! (`--nats-url` and the rest), that NATS's token copied next to the Relay, and the credentials
//! or token the operator itself connects with.

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};

use super::ReconcileError;
use super::dereference::DereferenceError;
use super::names;
use super::queue::NatsAuth;
use crate::api::Relay;
use crate::apply::{self, ApplyError};
use crate::context::Context;
use crate::meta;

/// The Relay with what it leaves out that the operator was told (`--nats-url`,
/// `--nats-monitoring-endpoint`, `--stream-replicas`, `--nats-token-secret`) filled in, and
/// whether the operator's NATS token is to be copied into `<relay>-nats-token` for it.
pub fn with_operator_defaults(relay: &Relay, ctx: &Context) -> (Relay, bool) {
    let mut relay = relay.clone();
    let token_secret = names::nats_token_secret_name(&relay);
    let nats = &mut relay.spec.nats;
    if nats.stream_replicas.is_none() {
        nats.stream_replicas = ctx.stream_replicas;
    }
    let mut copy_token = false;
    if nats.url.is_none() && ctx.nats_url.is_some() {
        nats.url = ctx.nats_url.clone();
        if nats.monitoring_endpoint.is_none() {
            nats.monitoring_endpoint = ctx.nats_monitoring_endpoint.clone();
        }
        if nats.credentials_secret.is_none()
            && nats.token_secret.is_none()
            && ctx.nats_token_secret.is_some()
        {
            nats.token_secret = Some(crate::api::SecretKeyRef {
                name: token_secret,
                key: None,
            });
            copy_token = true;
        }
    }
    (relay, copy_token)
}

/// Copies the token of the operator's NATS (`--nats-token-secret`) into the Relay's namespace,
/// where its pods can mount it.
pub(super) async fn copy_operator_token(
    ctx: &Context,
    relay: &Relay,
) -> Result<(), DereferenceError> {
    let Some(source) = &ctx.nats_token_secret else {
        return Ok(());
    };
    let kube_error = |source| DereferenceError::Kube {
        what: "Secret",
        source,
    };
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &source.namespace);
    let token = secrets
        .get_opt(&source.name)
        .await
        .map_err(kube_error)?
        .and_then(|s| s.data)
        .and_then(|d| d.get(&source.key).cloned())
        .ok_or_else(|| DereferenceError::SecretNotFound {
            field: "--nats-token-secret",
            name: format!("{}/{} (key {})", source.namespace, source.name, source.key),
        })?;
    let name = names::nats_token_secret_name(relay);
    let copy = Secret {
        metadata: meta::owned_meta(relay, name, "relay"),
        type_: Some("Opaque".into()),
        data: Some([(names::NATS_TOKEN_KEY.to_string(), token)].into()),
        ..Secret::default()
    };
    let namespace = relay.namespace().unwrap_or_else(|| "default".into());
    match apply::apply_typed(&ctx.client, &namespace, &copy, false).await {
        Ok(_) => Ok(()),
        Err(ApplyError::Kube { source, .. }) => Err(kube_error(source)),
        Err(ApplyError::Malformed) => Ok(()),
    }
}

/// The NATS credentials or token for deleting the stream; a Secret that is gone means none.
pub(super) async fn nats_auth(
    ctx: &Context,
    relay: &Relay,
) -> Result<Option<NatsAuth>, ReconcileError> {
    let nats = &relay.spec.nats;
    let (reference, key) = match (&nats.credentials_secret, &nats.token_secret) {
        (Some(reference), _) => (reference, names::NATS_CREDS_KEY),
        (None, Some(reference)) => (reference, names::NATS_TOKEN_KEY),
        (None, None) => return Ok(None),
    };
    let namespace = relay.namespace().unwrap_or_else(|| "default".into());
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let secret =
        secrets
            .get_opt(&reference.name)
            .await
            .map_err(|source| DereferenceError::Kube {
                what: "Secret",
                source,
            })?;
    Ok(secret
        .and_then(|s| s.data)
        .and_then(|d| d.get(reference.key_or(key)).cloned())
        .and_then(|v| NatsAuth::from_secret(key, &v.0)))
}
