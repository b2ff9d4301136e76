//! The Domain reconciler: DKIM keys and their rotation, DNS records, external-dns, and DNS
//! verification.

pub mod dkim;
pub mod keys;
pub mod keystore;
pub mod publish;
pub mod records;
pub mod verify;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};

use crate::api::{DkimKeyState, DkimKeyStatus, Domain, DomainStatus, Relay, condition_status};
use crate::apply::ApplyError;
use crate::conditions;
use crate::context::Context;
use crate::relay::dereference::DereferenceError;
use keystore::KeyStore;

/// CRD of external-dns's DNSEndpoint.
pub const EXTERNAL_DNS_CRD: &str = "dnsendpoints.externaldns.k8s.io";

/// A reconcile that must be retried.
#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    #[error("{0}")]
    Dereference(#[from] DereferenceError),
    #[error("{0}")]
    Key(#[from] dkim::KeyError),
    #[error("{0}")]
    KeyStore(#[from] keystore::KeyStoreError),
    #[error("{0}")]
    Apply(#[from] ApplyError),
    #[error("writing status: {0}")]
    Status(kube::Error),
}

impl DomainError {
    /// Label for logs and metrics.
    pub fn as_label(&self) -> &'static str {
        match self {
            DomainError::Dereference(_) => "dereference",
            DomainError::Key(_) => "key",
            DomainError::KeyStore(_) => "key_secret",
            DomainError::Apply(_) => "apply",
            DomainError::Status(_) => "status",
        }
    }
}

/// Brings DKIM keys and DNS records in line with one Domain.
pub async fn reconcile(domain: Arc<Domain>, ctx: Arc<Context>) -> Result<Action, DomainError> {
    if domain.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let namespace = domain.namespace().unwrap_or_else(|| "default".into());
    let domains: Api<Domain> = Api::namespaced(ctx.client.clone(), &namespace);
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let relays: Api<Relay> = Api::namespaced(ctx.client.clone(), &namespace);
    let before = domain.status.clone().unwrap_or_default();
    let mut status = before.clone();
    let generation = domain.meta().generation;
    let now = ctx.now();
    let setter = conditions::Setter { generation, now };
    let set = |status: &mut DomainStatus, kind: &str, ok: bool, reason: &str, message: String| {
        setter.set(&mut status.conditions, kind, ok, reason, message);
    };
    let kube_error = |what| move |source| DereferenceError::Kube { what, source };

    // Dereference.
    let relay = relays
        .get_opt(&domain.spec.relay_ref.name)
        .await
        .map_err(kube_error("Relay"))?;
    let mut store = KeyStore::read(&secrets, &domain).await?;
    for selector in store.lost() {
        ctx.event(
            &*domain,
            true,
            "DkimKeyLost",
            format!("the private key of {selector} is gone from the Secret; it no longer signs"),
        )
        .await;
    }
    // Keys: promote pending keys DNS already serves, retire and create per the spec.
    let keys = match keys::rotate(&ctx, &domain, &mut store, &secrets, now).await? {
        Ok(keys) => keys,
        Err(err) => {
            set(
                &mut status,
                "DkimReady",
                false,
                "InvalidSpec",
                err.to_string(),
            );
            set(&mut status, "Ready", false, "InvalidSpec", err.to_string());
            status.observed_generation = generation;
            write_status(&ctx, &domains, &domain, &before, status).await?;
            return Ok(Action::await_change());
        }
    };
    let resync = ctx.resync_due(domain.uid().as_deref().unwrap_or_default());

    status.active_selectors = selectors(&keys, DkimKeyState::Active);
    status.next_selectors = selectors(&keys, DkimKeyState::Pending);
    let (signing, reason, message) = keys::readiness(&domain, &keys);
    set(&mut status, "DkimReady", signing, reason, message);

    // Records.
    let records = records::records(&domain, &keys);
    status.records = records.clone();
    status.dkim_keys = keys;
    let (published, reason, message) = publish::publish(&ctx, &domain, &records, resync).await?;
    set(&mut status, "DnsPublished", published, reason, message);

    // Verify. A Domain seen for the first time, or whose records changed, shows them (and that
    // they are being checked) before the lookups, which may take until their timeout.
    let mut before = before;
    if before.records != status.records
        || condition_status(&before.conditions, "DnsVerified").is_none()
    {
        setter.unknown(
            &mut status.conditions,
            "DnsVerified",
            "Verifying",
            format!("looking up {} records", records.len()),
        );
        set_ready(&setter, &mut status, &domain, relay.as_ref());
        status.observed_generation = generation;
        write_status(&ctx, &domains, &domain, &before, status.clone()).await?;
        before = status.clone();
    }
    let checks = verify::verify(ctx.dns.as_ref(), &records).await;
    let (verified, reason, message) = verify::condition(&records, &checks);
    set(&mut status, "DnsVerified", verified, reason, message);

    set_ready(&setter, &mut status, &domain, relay.as_ref());
    status.observed_generation = generation;
    let settled = condition_status(&status.conditions, "Ready") == Some("True")
        && status.next_selectors.is_empty();
    let next = next_change(&status.dkim_keys, now);
    write_status(&ctx, &domains, &domain, &before, status).await?;
    let wait = if settled {
        Duration::from_secs(3600)
    } else {
        Duration::from_secs(60)
    };
    Ok(Action::requeue(next.map_or(wait, |n| n.min(wait))))
}

/// Sets `Ready`: the Relay exists and is ready, DKIM signs and DNS matches.
fn set_ready(
    setter: &conditions::Setter,
    status: &mut DomainStatus,
    domain: &Domain,
    relay: Option<&Relay>,
) {
    let waiting: Vec<String> = ["DkimReady", "DnsVerified"]
        .into_iter()
        .filter(|c| condition_status(&status.conditions, c) != Some("True"))
        .map(String::from)
        .collect();
    let relay_name = &domain.spec.relay_ref.name;
    let relay_ready = relay.map(|r| {
        r.status
            .as_ref()
            .map(|s| condition_status(&s.conditions, "Ready") == Some("True"))
            .unwrap_or(false)
    });
    match relay_ready {
        None => setter.set(
            &mut status.conditions,
            "Ready",
            false,
            "RelayNotFound",
            format!("spec.relayRef: Relay {relay_name:?} not found"),
        ),
        Some(false) => setter.set(
            &mut status.conditions,
            "Ready",
            false,
            "RelayNotReady",
            format!("Relay {relay_name:?} is not Ready: mail from this domain is not sent"),
        ),
        Some(true) => {
            let message = format!(
                "mail from {} is signed and its records are in DNS",
                domain.spec.domain
            );
            setter.ready(&mut status.conditions, &waiting, message);
        }
    }
}

/// The Domains that name `relay` in `spec.relayRef`, among `domains`: what a change of the
/// Relay (created, deleted, becoming ready or not) reconciles.
pub fn domains_of_relay(domains: &[Arc<Domain>], relay: &Relay) -> Vec<ObjectRef<Domain>> {
    domains
        .iter()
        .filter(|d| d.namespace() == relay.namespace() && d.spec.relay_ref.name == relay.name_any())
        .map(|d| ObjectRef::from_obj(&**d))
        .collect()
}

/// What the controller does when a reconcile fails: retry soon.
pub fn error_policy(domain: Arc<Domain>, err: &DomainError, _ctx: Arc<Context>) -> Action {
    if let DomainError::KeyStore(keystore::KeyStoreError::Conflict { .. }) = err {
        tracing::debug!(domain = %domain.name_any(), error = %err, "key Secret changed; reconciling again");
        return Action::requeue(Duration::from_secs(1));
    }
    tracing::warn!(domain = %domain.name_any(), error = %err, stage = err.as_label(), "reconcile failed");
    Action::requeue(Duration::from_secs(10))
}

fn selectors(keys: &[DkimKeyStatus], state: DkimKeyState) -> Vec<String> {
    keys.iter()
        .filter(|k| k.state == state)
        .map(|k| k.selector.clone())
        .collect()
}

/// Time until the next retiring key is due to go.
fn next_change(keys: &[DkimKeyStatus], now: k8s_openapi::jiff::Timestamp) -> Option<Duration> {
    keys.iter()
        .filter_map(|k| k.retire_at.as_ref())
        .map(|t| Duration::try_from(t.0 - now).unwrap_or(Duration::ZERO) + Duration::from_secs(1))
        .min()
}

async fn write_status(
    ctx: &Context,
    domains: &Api<Domain>,
    domain: &Domain,
    before: &DomainStatus,
    status: DomainStatus,
) -> Result<(), DomainError> {
    crate::status::write(ctx, domains, domain, before, &status)
        .await
        .map_err(DomainError::Status)
}
