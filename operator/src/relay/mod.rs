//! The Relay reconciler: dereference → validate → build → apply → status, each stage with its
//! own error type.

pub mod build;
pub mod config;
pub mod dereference;
mod durability;
pub mod names;
pub mod nats;
mod observe;
pub mod queue;
pub mod tls;
pub mod validate;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Secret, Service};
use kube::api::{DynamicObject, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;

use crate::api::{Relay, RelayStatus, condition_status};
use crate::apply::{self, ApplyError};
use crate::conditions;
use crate::context::Context;
use crate::meta;
use dereference::DereferenceError;

/// Finalizer that deletes the stream when `spec.nats.deleteStreamWithRelay` is set.
pub const STREAM_FINALIZER: &str = "postern.io/delete-stream";

/// A reconcile that must be retried.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("{0}")]
    Dereference(#[from] DereferenceError),
    #[error("{0}")]
    Apply(#[from] ApplyError),
    #[error("writing status: {0}")]
    Status(kube::Error),
    #[error("{0}")]
    Certificate(#[from] tls::CertificateError),
    #[error("relay config: {0}")]
    Config(#[from] postern_config::ConfigError),
    #[error("deleting the stream: {0}")]
    Stream(#[from] queue::ProvisionError),
    #[error("stream finalizer: {0}")]
    Finalizer(Box<kube::runtime::finalizer::Error<ReconcileError>>),
}

impl From<kube::runtime::finalizer::Error<ReconcileError>> for ReconcileError {
    /// The error of a stage run by the finalizer helper is that error itself.
    fn from(err: kube::runtime::finalizer::Error<ReconcileError>) -> Self {
        use kube::runtime::finalizer::Error;
        match err {
            Error::ApplyFailed(err) | Error::CleanupFailed(err) => err,
            other => ReconcileError::Finalizer(Box::new(other)),
        }
    }
}

impl ReconcileError {
    /// Label for logs and metrics.
    pub fn as_label(&self) -> &'static str {
        match self {
            ReconcileError::Dereference(_) => "dereference",
            ReconcileError::Apply(_) => "apply",
            ReconcileError::Status(_) => "status",
            ReconcileError::Certificate(_) => "certificate",
            ReconcileError::Stream(_) => "stream",
            ReconcileError::Config(_) => "config",
            ReconcileError::Finalizer(_) => "finalizer",
        }
    }
}

/// Brings the cluster in line with one Relay. With `nats.deleteStreamWithRelay`, kube's
/// finalizer helper holds the Relay's deletion until its stream is deleted; without it nothing
/// holds deletion up (a finalizer left from the setting being on is removed).
pub async fn reconcile(relay: Arc<Relay>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let (relay, copies) = nats::with_operator_defaults(&relay, &ctx);
    let relay = Arc::new(relay);
    let namespace = relay.namespace().unwrap_or_else(|| "default".into());
    let relays: Api<Relay> = Api::namespaced(ctx.client.clone(), &namespace);
    let has_finalizer = relay.finalizers().iter().any(|f| f == STREAM_FINALIZER);
    let deleting = relay.meta().deletion_timestamp.is_some();
    if relay.spec.nats.delete_stream_with_relay || (has_finalizer && deleting) {
        return finalizer(&relays, STREAM_FINALIZER, relay, |event| async {
            match event {
                FinalizerEvent::Apply(relay) => converge(relay, ctx.clone(), copies).await,
                FinalizerEvent::Cleanup(relay) => delete_stream(&relay, &ctx).await,
            }
        })
        .await
        .map_err(ReconcileError::from);
    }
    if deleting {
        return Ok(Action::await_change());
    }
    if has_finalizer {
        remove_stream_finalizer(&relays, &relay).await?;
    }
    converge(relay, ctx, copies).await
}

/// Deletes the Relay's stream and bodies, as its deletion asks.
async fn delete_stream(relay: &Relay, ctx: &Context) -> Result<Action, ReconcileError> {
    let config = config::queue_config(relay);
    let access = nats::nats_access(ctx, relay).await?;
    ctx.queues.delete(&config, &access).await?;
    ctx.event(
        relay,
        false,
        "StreamDeleted",
        format!("deleted stream {}", config.nats.stream),
    )
    .await;
    Ok(Action::await_change())
}

/// The stages for a Relay that is not being deleted: dereference → validate → build → apply →
/// status.
async fn converge(
    relay: Arc<Relay>,
    ctx: Arc<Context>,
    copies: nats::Copies,
) -> Result<Action, ReconcileError> {
    let namespace = relay.namespace().unwrap_or_else(|| "default".into());
    let relays: Api<Relay> = Api::namespaced(ctx.client.clone(), &namespace);
    let before = relay.status.clone().unwrap_or_default();
    let mut status = before.clone();
    let generation = relay.meta().generation;
    let now = ctx.now();
    let setter = conditions::Setter { generation, now };
    let set = |status: &mut RelayStatus, kind: &str, ok: bool, reason: &str, message: String| {
        setter.set(&mut status.conditions, kind, ok, reason, message);
    };

    // Dereference and validate: failures are the user's to fix, so they go to status.
    let dereferenced = async {
        nats::copy_operator_secrets(&ctx, &relay, copies).await?;
        dereference::dereference(&ctx.client, &relay, ctx.keda, &ctx.relay_image).await
    };
    let inputs = match dereferenced.await {
        Ok(inputs) => inputs,
        Err(err @ DereferenceError::Kube { .. }) => return Err(err.into()),
        Err(err) => {
            degraded(&setter, &mut status, err.reason(), err.to_string());
            write_status(&ctx, &relays, &relay, &before, status).await?;
            return Ok(Action::requeue(Duration::from_secs(60)));
        }
    };
    let valid = match validate::validate(&relay.name_any(), &relay.spec) {
        Ok(valid) => valid,
        Err(err) => {
            degraded(&setter, &mut status, "InvalidSpec", err.to_string());
            write_status(&ctx, &relays, &relay, &before, status).await?;
            return Ok(Action::await_change());
        }
    };
    let desired = match build::build(&inputs, &valid) {
        Ok(desired) => desired,
        Err(err) => {
            degraded(&setter, &mut status, "InvalidConfig", err.to_string());
            write_status(&ctx, &relays, &relay, &before, status).await?;
            return Ok(Action::await_change());
        }
    };
    set(
        &mut status,
        "Degraded",
        false,
        "ReconcileSucceeded",
        "all objects applied".into(),
    );
    // A warning, not a failure: the spec may be what the user wants (a balancer that keeps
    // client addresses), but it is said, and an event records each change.
    match relay.spec.ingress.relay_exposure() {
        None => set(
            &mut status,
            "RelayRestricted",
            true,
            "AuthRequiredOutside",
            if relay.spec.ingress.service.type_ == crate::api::ServiceType::ClusterIP {
                "the Service is reachable only inside the cluster".into()
            } else {
                "clients outside the cluster relay only after AUTH".into()
            },
        ),
        Some(message) => set(
            &mut status,
            "RelayRestricted",
            false,
            "UnauthenticatedRelayExposed",
            message,
        ),
    }

    // Apply.
    let resync = ctx.resync_due(relay.uid().as_deref().unwrap_or_default());
    let certificate = certificate(&ctx, &relay, &namespace, &inputs, &desired).await?;
    set(
        &mut status,
        "CertificateReady",
        certificate.0,
        certificate.1,
        certificate.2,
    );
    for object in &desired.objects {
        if object.kind() == "Certificate" && !inputs.cert_manager {
            continue;
        }
        apply::apply(&ctx.client, &namespace, &object.to_value(), resync).await?;
    }
    for (api_version, kind, name) in &desired.absent {
        let missing_crd = (kind == "ScaledObject" && !inputs.keda)
            || (kind == "Certificate" && !inputs.cert_manager);
        if !missing_crd {
            apply::delete(&ctx.client, &namespace, (api_version, kind, name)).await?;
        }
    }

    // Queue.
    let config = &desired.config;
    status.stream = Some(config.nats.stream.clone());
    match ctx.queues.provision(config, &inputs.nats).await {
        Ok(counts) => {
            status.queue_lag = Some(counts.ready);
            status.queue_waiting = Some(counts.waiting);
            status.queue_in_flight = Some(counts.in_flight);
            status.queue_dead_letters = Some(counts.dead_letters);
            status.queue_oldest_ready_seconds = Some(counts.oldest_ready.as_secs());
            set(
                &mut status,
                "QueueReady",
                true,
                "StreamReady",
                format!(
                    "stream {} and consumer {} exist",
                    config.nats.stream, config.delivery.consumer
                ),
            );
        }
        Err(err) => {
            status.queue_lag = None;
            status.queue_waiting = None;
            status.queue_in_flight = None;
            status.queue_dead_letters = None;
            status.queue_oldest_ready_seconds = None;
            set(
                &mut status,
                "QueueReady",
                false,
                err.reason(),
                err.to_string(),
            );
        }
    }

    // What a 250 is worth: the servers' fsync setting against spec.nats.sync.
    let observed = durability::observe(&build::monitoring_endpoint(&relay)).await;
    let verdict = durability::judge(valid.sync, &observed);
    status.nats_sync = verdict.observed.map(|sync| sync.to_string());
    conditions::set_status(
        &mut status.conditions,
        "QueueDurable",
        verdict.status,
        verdict.reason,
        verdict.message,
        generation,
        now,
    );

    // Observe the workloads.
    let name = relay.name_any();
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &namespace);
    let mut rolling_out = Vec::new();
    let mut ready = Vec::new();
    for component in ["ingress", "delivery"] {
        let deployment = deployments
            .get_opt(&format!("{name}-{component}"))
            .await
            .map_err(ReconcileError::Status)?;
        let (ready_replicas, done) = observe::rollout(deployment.as_ref());
        if !done {
            rolling_out.push(component);
        }
        ready.push(ready_replicas);
    }
    status.ingress_replicas = Some(ready[0]);
    status.delivery_replicas = Some(ready[1]);
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), &namespace);
    let service = services
        .get_opt(&name)
        .await
        .map_err(ReconcileError::Status)?;
    status.endpoints = observe::endpoints(&relay, service.as_ref(), &namespace);
    if rolling_out.is_empty() {
        set(
            &mut status,
            "Progressing",
            false,
            "RolloutComplete",
            "every pod runs the current spec".into(),
        );
    } else {
        set(
            &mut status,
            "Progressing",
            true,
            "RollingOut",
            format!(
                "waiting for {} pods to run the current spec",
                rolling_out.join(" and ")
            ),
        );
    }
    let waiting: Vec<String> = ["QueueReady", "CertificateReady"]
        .into_iter()
        .filter(|c| condition_status(&status.conditions, c) != Some("True"))
        .map(String::from)
        .chain(
            ["ingress", "delivery"]
                .iter()
                .zip(&ready)
                .filter(|(_, n)| **n < 1)
                .map(|(c, _)| format!("no ready {c} pod")),
        )
        .collect();
    setter.ready(
        &mut status.conditions,
        &waiting,
        "accepting and delivering mail".into(),
    );
    status.observed_generation = generation;
    let is_ready = condition_status(&status.conditions, "Ready") == Some("True");
    write_status(&ctx, &relays, &relay, &before, status).await?;
    Ok(Action::requeue(Duration::from_secs(if is_ready {
        60
    } else {
        15
    })))
}

/// True when the Relay reads the Secret `name` (users, credentials or certificate).
pub fn references_secret(relay: &Relay, name: &str) -> bool {
    let spec = &relay.spec;
    [
        spec.ingress.users_secret.as_ref(),
        spec.nats.credentials_secret.as_ref(),
        spec.delivery
            .smarthost
            .as_ref()
            .and_then(|s| s.credentials_secret.as_ref()),
        spec.delivery.dane.trust_anchor_secret.as_ref(),
    ]
    .into_iter()
    .flatten()
    .chain(
        spec.events
            .webhooks
            .iter()
            .flat_map(|h| std::iter::once(&h.secret).chain(h.ca_secret.as_ref())),
    )
    .any(|r| r.name == name)
        || spec.ingress.tls.secret_name.as_deref() == Some(name)
        || name == format!("{}-tls", relay.name_any())
}

/// What the controller does when a reconcile fails: retry soon.
pub fn error_policy(relay: Arc<Relay>, err: &ReconcileError, _ctx: Arc<Context>) -> Action {
    tracing::warn!(relay = %relay.name_any(), error = %err, stage = err.as_label(), "reconcile failed");
    Action::requeue(Duration::from_secs(10))
}

fn degraded(setter: &conditions::Setter, status: &mut RelayStatus, reason: &str, message: String) {
    setter.set(
        &mut status.conditions,
        "Degraded",
        true,
        reason,
        message.clone(),
    );
    setter.set(&mut status.conditions, "Ready", false, reason, message);
    status.observed_generation = setter.generation;
}

/// Makes or checks the ingress certificate: `(ready, reason, message)`.
async fn certificate(
    ctx: &Context,
    relay: &Relay,
    namespace: &str,
    inputs: &dereference::RelayInputs,
    desired: &build::DesiredRelay,
) -> Result<(bool, &'static str, String), ReconcileError> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let read = |source| {
        ReconcileError::Dereference(DereferenceError::Kube {
            what: "Secret",
            source,
        })
    };
    if desired.self_signed {
        let mut names = vec![names::hostname(relay)];
        names.extend(relay.spec.ingress.tls.dns_names.iter().cloned());
        let existing = secrets.get_opt(&desired.tls_secret).await.map_err(read)?;
        if tls::needs_certificate(existing.as_ref(), &names, ctx.now()) {
            let made = tls::self_signed(&names, ctx.now())?;
            let mut meta = meta::owned_meta(relay, desired.tls_secret.clone(), "ingress");
            meta.annotations = Some(made.annotations);
            let secret = Secret {
                metadata: meta,
                type_: Some("kubernetes.io/tls".into()),
                data: Some(made.data),
                ..Secret::default()
            };
            apply::apply_typed(&ctx.client, namespace, &secret, false).await?;
            ctx.event(
                relay,
                false,
                "CertificateIssued",
                format!(
                    "self-signed certificate for {} in Secret {}",
                    names.join(", "),
                    desired.tls_secret
                ),
            )
            .await;
        }
        return Ok((
            true,
            "SelfSigned",
            format!(
                "self-signed certificate in Secret {}; clients must not verify it",
                desired.tls_secret
            ),
        ));
    }
    if relay.spec.ingress.tls.issuer_ref.is_some() {
        if !inputs.cert_manager {
            return Ok((
                false,
                "CertManagerMissing",
                "tls.issuerRef is set but cert-manager's Certificate CRD is not installed".into(),
            ));
        }
        let resource = apply::api_resource("cert-manager.io/v1", "Certificate");
        let certificates: Api<DynamicObject> =
            Api::namespaced_with(ctx.client.clone(), namespace, &resource);
        let name = format!("{}-tls", relay.name_any());
        let live = certificates.get_opt(&name).await.map_err(read)?;
        let ready = live
            .as_ref()
            .and_then(|c| c.data["status"]["conditions"].as_array().cloned())
            .unwrap_or_default()
            .into_iter()
            .find(|c| c["type"] == "Ready");
        return Ok(match ready {
            Some(c) if c["status"] == "True" => (
                true,
                "Issued",
                format!("cert-manager issued Certificate {name}"),
            ),
            Some(c) => (
                false,
                "Issuing",
                format!(
                    "Certificate {name}: {}",
                    c["message"].as_str().unwrap_or("not ready")
                ),
            ),
            None => (
                false,
                "Issuing",
                format!("waiting for cert-manager to issue Certificate {name}"),
            ),
        });
    }
    let exists = secrets
        .get_opt(&desired.tls_secret)
        .await
        .map_err(read)?
        .is_some();
    Ok(if exists {
        (
            true,
            "SecretFound",
            format!("certificate from Secret {}", desired.tls_secret),
        )
    } else {
        (
            false,
            "SecretNotFound",
            format!(
                "spec.ingress.tls.secretName: Secret {:?} not found",
                desired.tls_secret
            ),
        )
    })
}

/// Removes the stream finalizer of a Relay whose `deleteStreamWithRelay` was turned off.
async fn remove_stream_finalizer(relays: &Api<Relay>, relay: &Relay) -> Result<(), ReconcileError> {
    let finalizers: Vec<&String> = relay
        .finalizers()
        .iter()
        .filter(|f| *f != STREAM_FINALIZER)
        .collect();
    let body = json!({ "metadata": { "finalizers": finalizers, "resourceVersion": relay.resource_version() } });
    let (name, params, patch) = (
        relay.name_any(),
        PatchParams::default(),
        Patch::Merge(&body),
    );
    apply::retry_conflicts(|| relays.patch(&name, &params, &patch))
        .await
        .map_err(|source| ApplyError::Kube {
            kind: "Relay".into(),
            name: relay.name_any(),
            source,
        })?;
    Ok(())
}

async fn write_status(
    ctx: &Context,
    relays: &Api<Relay>,
    relay: &Relay,
    before: &RelayStatus,
    status: RelayStatus,
) -> Result<(), ReconcileError> {
    crate::status::write(ctx, relays, relay, before, &status)
        .await
        .map_err(ReconcileError::Status)
}
