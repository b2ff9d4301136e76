//! Wiring: everything `postern ingress` and `postern standalone` start, and the shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use postern_config::Config;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::admin::{self, Health};
use crate::delivery::Worker;
use crate::dkim::Signers;
use crate::ingress::{self, ListenerContext, Shared};
use crate::metrics::Metrics;
use crate::standalone::{NatsServer, StandaloneError};
use crate::tls::{ReloadingCert, TlsError};
use crate::users::{Users, UsersError};
use postern_queue::{Queue, QueueError};

/// Why the relay could not start. Each message names the config field at fault.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(
        "nats.url: required for `postern ingress` (only `postern standalone` runs its own NATS)"
    )]
    MissingNatsUrl,
    #[error(transparent)]
    Users(#[from] UsersError),
    #[error(transparent)]
    Dkim(#[from] crate::dkim::DkimError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Bind(#[from] ingress::BindError),
    #[error("admin.address {address}: {source}")]
    Admin {
        address: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Standalone(#[from] StandaloneError),
    #[error(transparent)]
    Delivery(#[from] crate::delivery::SetupError),
    #[error(transparent)]
    Webhooks(#[from] crate::webhooks::WebhookSetupError),
    #[error("ingress.limits.passwordChecks: starting the password check threads: {0}")]
    PasswordThreads(std::io::Error),
}

/// Which processes run in this one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// SMTP ingress against an existing NATS.
    Ingress,
    /// Delivery workers against an existing NATS.
    Delivery,
    /// Ingress and delivery in one process, with a supervised local nats-server when
    /// `nats.url` is absent.
    Standalone,
}

impl Role {
    fn ingress(self) -> bool {
        self != Role::Delivery
    }

    fn delivery(self) -> bool {
        self != Role::Ingress
    }
}

/// Files the config points at, loaded before anything binds.
#[derive(Debug)]
pub struct Loaded {
    users: Option<Users>,
    cert: Option<Arc<ReloadingCert>>,
    signers: Arc<Signers>,
}

/// Loads the users file, the TLS certificate and the DKIM keys, and checks the NATS files;
/// `postern check-config --files` uses this too.
pub fn load_files(config: &Config) -> Result<Loaded, StartError> {
    postern_queue::check_files(&config.nats)?;
    let users = config
        .ingress
        .users_file
        .as_deref()
        .map(Users::load)
        .transpose()?;
    let cert = config
        .ingress
        .tls
        .as_ref()
        .map(ReloadingCert::load)
        .transpose()?;
    let signers = Signers::load(&config.domains, config.domains_file.as_deref())?;
    Ok(Loaded {
        users,
        cert,
        signers,
    })
}

/// The addresses a started relay listens on, as bound: a port of 0 in the config becomes the
/// port the kernel chose. `--ready-file` writes this as JSON.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Bound {
    /// One address per `ingress.listeners[]` entry, in order (none for `postern delivery`).
    pub smtp: Vec<SocketAddr>,
    /// The admin endpoint (`/healthz`, `/readyz`, `/metrics`).
    pub admin: SocketAddr,
    /// The NATS server the queue is on: `nats.url`, or the supervised nats-server's URL.
    pub nats: String,
}

/// A started relay: everything is bound and serving.
#[derive(Debug)]
pub struct Running {
    bound: Bound,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// What it listens on.
    pub fn bound(&self) -> &Bound {
        &self.bound
    }

    /// Waits until `shutdown` fires, then closes the listeners, drains the sessions within
    /// `shutdownGrace`, lets delivery put back what it holds and stops the nats-server it
    /// supervises.
    pub async fn drain_on(self, shutdown: CancellationToken) {
        shutdown.cancelled().await;
        self.drain().await;
    }

    /// Starts the shutdown now and waits until it is complete.
    pub async fn drain(self) {
        self.shutdown.cancel();
        if let Err(err) = self.task.await {
            warn!(%err, "the relay's main task ended abnormally");
        }
    }
}

/// Starts the relay of `role`: loads the files, connects to (or starts) NATS and binds every
/// listener; any of these failing fails the start, naming the config field. Returns once it
/// serves.
pub async fn start(config: Config, role: Role) -> Result<Running, StartError> {
    if role != Role::Standalone && config.nats.url.is_none() {
        return Err(StartError::MissingNatsUrl);
    }
    if role.ingress() {
        for warning in config.warnings() {
            warn!(field = %warning.field, "{}", warning.message);
        }
    }
    if role.delivery() {
        for warning in config.delivery_warnings() {
            warn!(field = %warning.field, "{}", warning.message);
        }
    }
    // Delivery processes neither accept SMTP nor sign, so they need none of these files.
    let Loaded {
        users,
        cert,
        signers,
    } = match role.ingress() {
        true => load_files(&config)?,
        false => Loaded {
            users: None,
            cert: None,
            signers: Signers::load(&[], None)?,
        },
    };

    // NATS first: a missing credentials file or nats-server binary fails before any port is bound.
    let background = CancellationToken::new();
    let mut nats_task = None;
    let url = match &config.nats.url {
        Some(url) => url.clone(),
        None => {
            let server = NatsServer::start(&config.standalone).await?;
            let url = server.url();
            nats_task = Some(tokio::spawn(server.supervise(background.clone())));
            url
        }
    };
    let queue = Queue::connect(&url, &config.nats, config.body_ttl()).await?;

    let listeners = if role.ingress() {
        ingress::bind(&config).await?
    } else {
        Vec::new()
    };
    let admin_error = |source| StartError::Admin {
        address: config.admin.address,
        source,
    };
    let admin_listener = tokio::net::TcpListener::bind(config.admin.address)
        .await
        .map_err(admin_error)?;
    let bound = Bound {
        smtp: listeners.iter().map(|bound| bound.address).collect(),
        admin: admin_listener.local_addr().map_err(admin_error)?,
        nats: url,
    };
    tokio::spawn({
        let (queue, cancel) = (queue.clone(), background.clone());
        async move { queue.provision_until_ready(cancel).await }
    });
    tokio::spawn({
        let (queue, cancel) = (queue.clone(), background.clone());
        async move { queue.watch_health(cancel).await }
    });

    let metrics = Arc::new(Metrics::default());
    let health = Arc::new(Health {
        queue: queue.clone(),
        draining: Default::default(),
        metrics: metrics.clone(),
    });
    let admin_task = tokio::spawn(admin::serve(
        admin_listener,
        health.clone(),
        background.clone(),
    ));
    info!(address = %bound.admin, "admin endpoint bound");

    let acceptor = cert.as_ref().map(ReloadingCert::server_config);
    let reload = config.reload_interval.get();
    if let Some(cert) = cert {
        tokio::spawn(cert.watch(reload, background.clone()));
    }
    if !signers.is_empty() {
        tokio::spawn(signers.clone().watch(reload, background.clone()));
    }
    let shutdown = CancellationToken::new();
    let delivery = match role.delivery() {
        true => {
            let worker = Worker::new(&config, queue.clone(), metrics.clone())?;
            let webhooks = crate::webhooks::Webhooks::new(&config, &queue, metrics.clone())?;
            let (shutdown, grace) = (shutdown.clone(), config.shutdown_grace.get());
            Some(tokio::spawn(async move {
                let hooks = webhooks.map(|hooks| tokio::spawn(hooks.run(shutdown.clone())));
                worker.run(shutdown, grace).await;
                if let Some(hooks) = hooks {
                    let _ = hooks.await;
                }
            }))
        }
        false => None,
    };
    let has_users = users.is_some();
    let shared = Arc::new(
        Shared::new(&config, queue, users, acceptor, signers, metrics)
            .map_err(StartError::PasswordThreads)?,
    );
    let sessions = TaskTracker::new();
    let mut accept_loops = Vec::new();
    for listener in listeners {
        let context = Arc::new(ListenerContext::new(&config, &listener.config, has_users));
        accept_loops.push(tokio::spawn(ingress::serve(
            listener.socket,
            context,
            shared.clone(),
            shutdown.clone(),
            sessions.clone(),
        )));
    }
    info!(hostname = %config.hostname, ?role, "postern started");

    let grace = config.shutdown_grace;
    let task = tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            shutdown.cancelled().await;
            info!(%grace, "shutting down: no new connections, draining sessions");
            // Listening sockets close first, so once /readyz says 503 no connection is accepted.
            for accept_loop in accept_loops {
                let _ = accept_loop.await;
            }
            health.draining.store(true, Ordering::Release);
            sessions.close();
            if tokio::time::timeout(grace.get(), sessions.wait())
                .await
                .is_err()
            {
                warn!(
                    remaining = sessions.len(),
                    "shutdown grace elapsed; closing the remaining sessions"
                );
            }
            if let Some(delivery) = delivery {
                let _ = delivery.await;
            }
            background.cancel();
            let _ = admin_task.await;
            if let Some(task) = nats_task {
                let _ = task.await;
            }
            info!("shutdown complete");
        }
    });
    Ok(Running {
        bound,
        shutdown,
        task,
    })
}

/// Cancels the returned token on SIGTERM or SIGINT.
pub fn shutdown_on_signals() -> std::io::Result<CancellationToken> {
    use tokio::signal::unix::{SignalKind, signal};
    let token = CancellationToken::new();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let cancel = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => info!("SIGTERM received"),
            _ = int.recv() => info!("SIGINT received"),
        }
        cancel.cancel();
    });
    Ok(token)
}
