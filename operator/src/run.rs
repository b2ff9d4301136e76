//! The running operator: leader election with a Lease, then both controllers until SIGTERM or
//! until leadership is lost.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use kube::runtime::controller::Controller;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};

use crate::admin::{self, Metrics};
use crate::api::{Domain, Relay};
use crate::context::Context;
use crate::{domain, leader, relay};

/// Name of the leader-election Lease.
pub const LEASE_NAME: &str = "postern-operator";

/// Settings of one operator process.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Namespace of the Lease (the operator's own).
    pub lease_namespace: String,
    /// Identity in the Lease (the pod name).
    pub identity: String,
    /// Name servers for DNS verification; empty uses the system's.
    pub nameservers: Vec<std::net::SocketAddr>,
    /// Address of `/healthz`, `/readyz` and `/metrics`.
    pub admin_address: std::net::SocketAddr,
    /// Use KEDA for delivery when it is installed.
    pub keda: bool,
    /// Image of relay pods whose Relay names none.
    pub relay_image: String,
    /// NATS of Relays that name none, and its monitoring endpoint.
    pub nats_url: Option<String>,
    pub nats_monitoring_endpoint: Option<String>,
    /// Stream replicas of Relays that set none.
    pub stream_replicas: Option<u8>,
    /// The token of that NATS.
    pub nats_token_secret: Option<crate::context::SecretSource>,
    /// The CA certificate of that NATS.
    pub nats_ca_secret: Option<crate::context::SecretSource>,
    /// Namespaces to reconcile; empty: all.
    pub watch_namespaces: Vec<String>,
}

/// Runs until SIGTERM or until another replica takes the lease.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::default());
    let listener = tokio::net::TcpListener::bind(settings.admin_address)
        .await
        .map_err(|e| anyhow::anyhow!("--admin-address {}: {e}", settings.admin_address))?;
    tokio::spawn(admin::serve(listener, metrics.clone()));
    let client = Client::try_default().await?;
    let leases: Api<Lease> = Api::namespaced(client.clone(), &settings.lease_namespace);
    let mut leader = leader::elect(
        leases,
        LEASE_NAME.into(),
        settings.identity.clone(),
        leader::Timing::default(),
    );
    metrics.set_ready();
    tracing::info!(identity = %settings.identity, "waiting to lead");
    while !*leader.borrow_and_update() {
        tokio::select! {
            changed = leader.changed() => changed?,
            () = shutdown() => return Ok(()),
        }
    }
    tracing::info!("leading: starting the Relay and Domain controllers");
    metrics.leader.set(1);
    let dns = domain::verify::resolver(&settings.nameservers).map_err(anyhow::Error::msg)?;
    let mut ctx = Context::new(client.clone(), dns);
    ctx.keda = settings.keda;
    ctx.relay_image = settings.relay_image.clone();
    ctx.nats_url = settings.nats_url.clone();
    ctx.nats_monitoring_endpoint = settings.nats_monitoring_endpoint.clone();
    ctx.stream_replicas = settings.stream_replicas;
    ctx.nats_token_secret = settings.nats_token_secret.clone();
    ctx.nats_ca_secret = settings.nats_ca_secret.clone();
    let ctx = Arc::new(ctx);
    let controllers: Vec<_> = if settings.watch_namespaces.is_empty() {
        vec![controllers(client, None, ctx, metrics.clone())]
    } else {
        settings
            .watch_namespaces
            .iter()
            .map(|ns| controllers(client.clone(), Some(ns), ctx.clone(), metrics.clone()))
            .collect()
    };
    let controllers = futures::future::join_all(controllers);
    tokio::select! {
        _ = controllers => {}
        () = shutdown() => tracing::info!("SIGTERM: stopping"),
        _ = async { while *leader.borrow() { if leader.changed().await.is_err() { break; } } } => {
            metrics.leader.set(0);
            anyhow::bail!("lost the leader lease; exiting so that one replica reconciles");
        }
    }
    Ok(())
}

/// The Relay and Domain controllers for `namespace` (all namespaces when `None`).
async fn controllers(
    client: Client,
    namespace: Option<&str>,
    ctx: Arc<Context>,
    metrics: Arc<Metrics>,
) {
    fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        match namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    }
    let relays: Api<Relay> = api(&client, namespace);
    let relays_for_domains = relays.clone();
    let domains: Api<Domain> = api(&client, namespace);
    let config = watcher::Config::default();
    // Only the Secrets the operator made (DKIM keys): it never caches others' Secrets for this.
    let owned_secrets = watcher::Config::default().labels(crate::meta::MANAGED_BY_SELECTOR);
    let relay_controller = Controller::new(relays, config.clone());
    let relay_store = relay_controller.store();
    let relay_controller = relay_controller
        .owns(api::<Deployment>(&client, namespace), config.clone())
        .owns(api::<Service>(&client, namespace), config.clone())
        .owns(api::<ConfigMap>(&client, namespace), config.clone())
        .watches(domains.clone(), config.clone(), |domain: Domain| {
            domain
                .namespace()
                .map(|ns| ObjectRef::new(&domain.spec.relay_ref.name).within(&ns))
        })
        .watches(
            api::<Secret>(&client, namespace),
            config.clone(),
            move |secret: Secret| {
                let namespace = secret.namespace();
                let name = secret.name_any();
                relay_store
                    .state()
                    .into_iter()
                    .filter(|r| r.namespace() == namespace && relay::references_secret(r, &name))
                    .map(|r| ObjectRef::from_obj(&*r))
                    .collect::<Vec<_>>()
            },
        )
        .shutdown_on_signal()
        .run(relay::reconcile, relay::error_policy, ctx.clone())
        .for_each(|result| {
            let metrics = metrics.clone();
            async move {
                match result {
                    Ok(_) => metrics.reconciled("relay", "ok"),
                    Err(kube::runtime::controller::Error::ReconcilerFailed(err, _)) => {
                        metrics.reconciled("relay", err.as_label());
                    }
                    Err(err) => tracing::debug!(%err, "relay controller"),
                }
            }
        });
    let domain_controller = Controller::new(domains, config.clone());
    let domain_store = domain_controller.store();
    // A Relay created, deleted, or becoming ready or not changes its Domains' Ready at once.
    let domain_controller = domain_controller
        .owns(api::<Secret>(&client, namespace), owned_secrets)
        .watches(relays_for_domains, config, move |relay: Relay| {
            domain::domains_of_relay(&domain_store.state(), &relay)
        })
        .shutdown_on_signal()
        .run(domain::reconcile, domain::error_policy, ctx)
        .for_each(|result| {
            let metrics = metrics.clone();
            async move {
                match result {
                    Ok(_) => metrics.reconciled("domain", "ok"),
                    Err(kube::runtime::controller::Error::ReconcilerFailed(err, _)) => {
                        metrics.reconciled("domain", err.as_label());
                    }
                    Err(err) => tracing::debug!(%err, "domain controller"),
                }
            }
        });
    futures::join!(relay_controller, domain_controller);
}

async fn shutdown() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
