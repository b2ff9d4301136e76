//! The NATS a Relay uses: what it leaves out filled in from the operator's own NATS
//! (`--nats-url` and the rest), that NATS's token and CA certificate copied next to the Relay,
//! and what the operator itself connects with.

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};

use super::ReconcileError;
use super::dereference::DereferenceError;
use super::names;
use super::queue::{NatsAccess, NatsAuth};
use crate::api::{Relay, SecretKeyRef};
use crate::apply::{self, ApplyError};
use crate::context::{Context, SecretSource};
use crate::meta;

/// Which of the operator's NATS Secrets are copied next to a Relay.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Copies {
    pub token: bool,
    pub ca: bool,
}

/// The Relay with what it leaves out that the operator was told (`--nats-url`,
/// `--nats-monitoring-endpoint`, `--stream-replicas`, `--nats-token-secret`,
/// `--nats-ca-secret`) filled in, and which of the operator's Secrets it needs copied.
pub fn with_operator_defaults(relay: &Relay, ctx: &Context) -> (Relay, Copies) {
    let mut relay = relay.clone();
    let token_secret = names::nats_token_secret_name(&relay);
    let ca_secret = names::nats_ca_secret_name(&relay);
    let nats = &mut relay.spec.nats;
    if nats.stream_replicas.is_none() {
        nats.stream_replicas = ctx.stream_replicas;
    }
    let mut copies = Copies::default();
    if nats.url.is_none() && ctx.nats_url.is_some() {
        nats.url = ctx.nats_url.clone();
        if nats.monitoring_endpoint.is_none() {
            nats.monitoring_endpoint = ctx.nats_monitoring_endpoint.clone();
        }
        let reference = |name| Some(SecretKeyRef { name, key: None });
        if nats.credentials_secret.is_none()
            && nats.token_secret.is_none()
            && ctx.nats_token_secret.is_some()
        {
            nats.token_secret = reference(token_secret);
            copies.token = true;
        }
        if nats.ca_secret.is_none() && ctx.nats_ca_secret.is_some() {
            nats.ca_secret = reference(ca_secret);
            copies.ca = true;
        }
    }
    (relay, copies)
}

/// Copies the operator's NATS token and CA (`--nats-token-secret`, `--nats-ca-secret`) into
/// the Relay's namespace, where its pods can mount them.
pub(super) async fn copy_operator_secrets(
    ctx: &Context,
    relay: &Relay,
    copies: Copies,
) -> Result<(), DereferenceError> {
    let wanted = [
        (
            copies.token,
            &ctx.nats_token_secret,
            "--nats-token-secret",
            names::nats_token_secret_name(relay),
            names::NATS_TOKEN_KEY,
        ),
        (
            copies.ca,
            &ctx.nats_ca_secret,
            "--nats-ca-secret",
            names::nats_ca_secret_name(relay),
            names::NATS_CA_KEY,
        ),
    ];
    for (wanted, source, flag, name, key) in wanted {
        if let (true, Some(source)) = (wanted, source) {
            copy(ctx, relay, source, flag, name, key).await?;
        }
    }
    Ok(())
}

async fn copy(
    ctx: &Context,
    relay: &Relay,
    source: &SecretSource,
    flag: &'static str,
    name: String,
    key: &str,
) -> Result<(), DereferenceError> {
    let kube_error = |source| DereferenceError::Kube {
        what: "Secret",
        source,
    };
    let source_key = source.key_or(key);
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &source.namespace);
    let value = secrets
        .get_opt(&source.name)
        .await
        .map_err(kube_error)?
        .and_then(|s| s.data)
        .and_then(|d| d.get(source_key).cloned())
        .ok_or_else(|| DereferenceError::SecretNotFound {
            field: flag,
            name: format!("{}/{} (key {source_key})", source.namespace, source.name),
        })?;
    let copy = Secret {
        metadata: meta::owned_meta(relay, name, "relay"),
        type_: Some("Opaque".into()),
        data: Some([(key.to_string(), value)].into()),
        ..Secret::default()
    };
    let namespace = relay.namespace().unwrap_or_else(|| "default".into());
    match apply::apply_typed(&ctx.client, &namespace, &copy, false).await {
        Ok(_) => Ok(()),
        Err(ApplyError::Kube { source, .. }) => Err(kube_error(source)),
        Err(ApplyError::Malformed) => Ok(()),
    }
}

/// How to reach the Relay's NATS for deleting the stream; a Secret that is gone means none.
pub(super) async fn nats_access(
    ctx: &Context,
    relay: &Relay,
) -> Result<NatsAccess, ReconcileError> {
    let nats = &relay.spec.nats;
    let auth = match (&nats.credentials_secret, &nats.token_secret) {
        (Some(reference), _) => Some((reference, names::NATS_CREDS_KEY)),
        (None, Some(reference)) => Some((reference, names::NATS_TOKEN_KEY)),
        (None, None) => None,
    };
    let mut access = NatsAccess::default();
    if let Some((reference, key)) = auth {
        access.auth = read(ctx, relay, reference, key)
            .await?
            .and_then(|v| NatsAuth::from_secret(key, &v));
    }
    if let Some(reference) = &nats.ca_secret {
        access.ca = read(ctx, relay, reference, names::NATS_CA_KEY)
            .await?
            .map(|v| String::from_utf8_lossy(&v).into_owned());
    }
    Ok(access)
}

async fn read(
    ctx: &Context,
    relay: &Relay,
    reference: &SecretKeyRef,
    key: &str,
) -> Result<Option<Vec<u8>>, ReconcileError> {
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
        .map(|v| v.0))
}
