//! The dereference stage: reads what a Relay refers to (Secrets, Domains, installed CRDs).

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};

use super::names::{
    DANE_TRUST_ANCHOR_KEY, NATS_CA_KEY, NATS_CREDS_KEY, NATS_TOKEN_KEY, SMARTHOST_KEY, USERS_KEY,
    WEBHOOK_SECRET_KEY,
};
use super::queue::{NatsAccess, NatsAuth};
use crate::api::{Domain, Relay, SecretKeyRef};
use crate::domain::keystore::{ActiveKey, KeyStore, KeyStoreError};
use crate::meta;

/// CRD whose presence makes delivery autoscale with KEDA on queue lag.
pub const KEDA_CRD: &str = "scaledobjects.keda.sh";
/// CRD needed for `tls.issuerRef`.
pub const CERT_MANAGER_CRD: &str = "certificates.cert-manager.io";

/// A Relay with everything it refers to.
#[derive(Debug, Clone)]
pub struct RelayInputs {
    pub relay: Relay,
    /// Domains whose `relayRef` names this Relay, by name, each with the active keys its key
    /// Secret holds.
    pub domains: Vec<(Domain, Vec<ActiveKey>)>,
    /// Hash of the Secrets the pods read only at start (users, NATS and smarthost credentials).
    pub secret_digest: String,
    /// How the operator reaches NATS (credentials or token, CA), for provisioning the stream.
    pub nats: NatsAccess,
    /// KEDA's ScaledObject CRD is installed.
    pub keda: bool,
    /// cert-manager's Certificate CRD is installed.
    pub cert_manager: bool,
    /// Image of the relay pods when the Relay names none.
    pub default_image: String,
}

/// A reference that does not resolve.
#[derive(Debug, thiserror::Error)]
pub enum DereferenceError {
    #[error("{field}: Secret {name:?} not found")]
    SecretNotFound { field: &'static str, name: String },
    #[error("{field}: Secret {name:?} has no key {key:?}")]
    SecretKeyMissing {
        field: &'static str,
        name: String,
        key: String,
    },
    #[error("reading {what}: {source}")]
    Kube {
        what: &'static str,
        source: kube::Error,
    },
}

impl DereferenceError {
    /// The condition reason.
    pub fn reason(&self) -> &'static str {
        match self {
            DereferenceError::SecretNotFound { .. } => "SecretNotFound",
            DereferenceError::SecretKeyMissing { .. } => "SecretKeyMissing",
            DereferenceError::Kube { .. } => "ApiError",
        }
    }
}

/// Reads the Secrets, Domains and CRDs a Relay depends on; KEDA is looked for only when
/// `keda_allowed`.
pub async fn dereference(
    client: &Client,
    relay: &Relay,
    keda_allowed: bool,
    default_image: &str,
) -> Result<RelayInputs, DereferenceError> {
    let namespace = relay.namespace().unwrap_or_else(|| "default".into());
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let spec = &relay.spec;
    let references = [
        (
            "spec.ingress.usersSecret",
            spec.ingress.users_secret.as_ref(),
            USERS_KEY,
        ),
        (
            "spec.nats.credentialsSecret",
            spec.nats.credentials_secret.as_ref(),
            NATS_CREDS_KEY,
        ),
        (
            "spec.nats.tokenSecret",
            spec.nats.token_secret.as_ref(),
            NATS_TOKEN_KEY,
        ),
        (
            "spec.nats.caSecret",
            spec.nats.ca_secret.as_ref(),
            NATS_CA_KEY,
        ),
        (
            "spec.delivery.smarthost.credentialsSecret",
            spec.delivery
                .smarthost
                .as_ref()
                .and_then(|s| s.credentials_secret.as_ref()),
            SMARTHOST_KEY,
        ),
        (
            "spec.delivery.dane.trustAnchorSecret",
            spec.delivery.dane.trust_anchor_secret.as_ref(),
            DANE_TRUST_ANCHOR_KEY,
        ),
    ];
    let mut contents: Vec<Vec<u8>> = Vec::new();
    let mut nats = NatsAccess::default();
    for (field, reference, default_key) in references {
        if let Some(reference) = reference {
            let content = secret_key(&secrets, field, reference, default_key).await?;
            if default_key == NATS_CA_KEY {
                nats.ca = Some(String::from_utf8_lossy(&content).into_owned());
            } else {
                nats.auth = NatsAuth::from_secret(default_key, &content).or(nats.auth);
            }
            contents.push(content);
        }
    }
    // Webhook secrets must exist, but the pods read them for every batch: a rotation needs no
    // restart, so they stay out of the restart hash.
    for hook in &spec.events.webhooks {
        secret_key(
            &secrets,
            "spec.events.webhooks[].secret",
            &hook.secret,
            WEBHOOK_SECRET_KEY,
        )
        .await?;
        // Read once at pod start: a changed CA rolls the pods.
        if let Some(ca) = &hook.ca_secret {
            contents.push(
                secret_key(&secrets, "spec.events.webhooks[].caSecret", ca, NATS_CA_KEY).await?,
            );
        }
    }
    let parts: Vec<&[u8]> = contents.iter().map(Vec::as_slice).collect();

    let domains: Api<Domain> = Api::namespaced(client.clone(), &namespace);
    let mut domains: Vec<Domain> = domains
        .list(&ListParams::default())
        .await
        .map_err(|source| DereferenceError::Kube {
            what: "Domains",
            source,
        })?
        .items
        .into_iter()
        .filter(|d| d.spec.relay_ref.name == relay.name_any())
        .collect();
    domains.sort_by_key(|d| d.name_any());
    let mut signing = Vec::with_capacity(domains.len());
    for domain in domains {
        let keys = match KeyStore::read(&secrets, &domain).await {
            Ok(store) => store.active(),
            Err(KeyStoreError::Kube { source, .. }) => {
                return Err(DereferenceError::Kube {
                    what: "Secret",
                    source,
                });
            }
            Err(err) => {
                tracing::warn!(domain = %domain.name_any(), %err, "its keys do not sign");
                Vec::new()
            }
        };
        signing.push((domain, keys));
    }

    Ok(RelayInputs {
        relay: relay.clone(),
        domains: signing,
        secret_digest: meta::hash(&parts),
        nats,
        keda: keda_allowed && crd_exists(client, KEDA_CRD).await?,
        default_image: default_image.to_string(),
        cert_manager: spec.ingress.tls.issuer_ref.is_some()
            && crd_exists(client, CERT_MANAGER_CRD).await?,
    })
}

async fn secret_key(
    secrets: &Api<Secret>,
    field: &'static str,
    reference: &SecretKeyRef,
    default_key: &str,
) -> Result<Vec<u8>, DereferenceError> {
    let secret = secrets
        .get_opt(&reference.name)
        .await
        .map_err(|source| DereferenceError::Kube {
            what: "Secret",
            source,
        })?
        .ok_or_else(|| DereferenceError::SecretNotFound {
            field,
            name: reference.name.clone(),
        })?;
    let key = reference.key_or(default_key);
    secret
        .data
        .as_ref()
        .and_then(|data| data.get(key))
        .map(|value| value.0.clone())
        .ok_or_else(|| DereferenceError::SecretKeyMissing {
            field,
            name: reference.name.clone(),
            key: key.to_string(),
        })
}

/// True when the CRD named `name` is installed.
pub async fn crd_exists(client: &Client, name: &str) -> Result<bool, DereferenceError> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.get_metadata_opt(name)
        .await
        .map(|crd| crd.is_some())
        .map_err(|source| DereferenceError::Kube {
            what: "CustomResourceDefinitions",
            source,
        })
}
