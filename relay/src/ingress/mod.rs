//! The SMTP ingress: listeners, connection caps and per-connection sessions.

mod auth;
mod connection;
mod header_fields;
pub mod memory;
pub mod proxy;
pub mod received;
mod streaming;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use ipnet::IpNet;
use postern_config::{Config, Limits, ListenerTls, Pregreet};
use postern_smtp::{BareLineEndings, SessionConfig};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::dkim::Signers;
use crate::events::Events;
use crate::metrics::Metrics;
use crate::users::Users;
use auth::PasswordChecks;
use memory::MessageMemory;
use postern_queue::Queue;
use postern_queue::suppression::SuppressionList;

/// State shared by every connection of the ingress.
#[derive(Debug)]
pub struct Shared {
    pub hostname: String,
    pub limits: Limits,
    pub allowed_networks: Vec<IpNet>,
    pub trusted_proxies: Vec<IpNet>,
    pub queue: Queue,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub signers: Arc<Signers>,
    pub metrics: Arc<Metrics>,
    /// The suppression list RCPT consults (`suppression.action: reject`).
    pub suppression: Option<SuppressionList>,
    pub events: Events,
    caps: ConnectionCaps,
    passwords: Option<PasswordChecks>,
    memory: MessageMemory,
    pregreet: Pregreet,
    inline_body_limit: usize,
}

impl Shared {
    pub fn new(
        config: &Config,
        queue: Queue,
        users: Option<Users>,
        tls: Option<Arc<rustls::ServerConfig>>,
        signers: Arc<Signers>,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Self> {
        let limits = config.ingress.limits.clone();
        let passwords = users
            .map(|users| {
                PasswordChecks::start(
                    users,
                    limits.password_checks,
                    limits.max_auth_failures_per_address,
                    limits.auth_failure_window.get(),
                )
            })
            .transpose()?;
        let suppression = &config.suppression;
        let suppression = suppression
            .checked_at_rcpt()
            .then(|| SuppressionList::new(queue.clone(), suppression.expiry.get()));
        Ok(Shared {
            hostname: config.hostname.clone(),
            suppression,
            events: Events::new(config, &queue, metrics.clone()),
            caps: ConnectionCaps::new(limits.max_connections, limits.max_connections_per_ip),
            memory: MessageMemory::new(limits.max_message_memory),
            limits,
            allowed_networks: config.ingress.allowed_networks.clone(),
            trusted_proxies: config.ingress.trusted_proxies.clone(),
            queue,
            tls,
            signers,
            metrics,
            passwords,
            pregreet: config.ingress.pregreet.clone(),
            inline_body_limit: config.nats.inline_body_limit,
        })
    }

    /// Publishes how much of the message memory budget is in use.
    pub fn report_memory(&self) {
        let used = self
            .limits
            .max_message_memory
            .saturating_sub(self.memory.available());
        self.metrics
            .message_memory_bytes
            .set(i64::try_from(used).unwrap_or(i64::MAX));
    }

    fn relay_allowed(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.allowed_networks.iter().any(|net| net.contains(&ip))
    }
}

/// What differs between listeners.
#[derive(Debug)]
pub struct ListenerContext {
    session: Arc<SessionConfig>,
    implicit_tls: bool,
    proxy_protocol: bool,
}

impl ListenerContext {
    /// The session policy of one configured listener.
    pub fn new(config: &Config, listener: &postern_config::Listener, has_users: bool) -> Self {
        let ingress = &config.ingress;
        let limits = &ingress.limits;
        let session = SessionConfig {
            hostname: config.hostname.clone(),
            max_message_size: limits.max_message_size,
            max_recipients: limits.max_recipients,
            max_errors: limits.max_errors,
            max_auth_failures: limits.max_auth_failures,
            max_received: limits.max_received_headers,
            bare_line_endings: match ingress.bare_line_endings {
                postern_config::BareLineEndings::Normalize => BareLineEndings::Normalize,
                postern_config::BareLineEndings::Reject => BareLineEndings::Reject,
            },
            starttls: listener.tls == ListenerTls::Starttls && ingress.tls.is_some(),
            auth: has_users,
            plaintext_auth: listener.allow_plaintext_auth,
            sender_domains: ingress.sender_domains.clone(),
            command_timeout: limits.command_timeout.get(),
            data_timeout: limits.data_timeout.get(),
            min_data_rate: limits.min_data_rate,
            check_recipients: config.suppression.checked_at_rcpt(),
        };
        ListenerContext {
            session: Arc::new(session),
            implicit_tls: listener.tls == ListenerTls::Implicit,
            proxy_protocol: listener.proxy_protocol,
        }
    }
}

/// Accepts connections until `shutdown` fires; connections run on `tracker`.
pub async fn serve(
    listener: TcpListener,
    context: Arc<ListenerContext>,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    warn!(%err, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let (shared, context, shutdown) = (shared.clone(), context.clone(), shutdown.clone());
        if !context.proxy_protocol {
            match admit(&shared, peer) {
                Some(guard) => {
                    tracker.spawn(session(shared, context, shutdown, stream, peer, guard));
                }
                None if !context.implicit_tls => {
                    tracker.spawn(refuse(stream));
                }
                None => {}
            }
            continue;
        }
        // Behind a load balancer the client's address, and so its place under the per-address
        // cap, comes with the PROXY header; the place in the total is taken at once.
        let total = match shared.caps.acquire_total() {
            Ok(total) => total,
            Err(cap) => {
                refused(&shared, cap);
                if !context.implicit_tls {
                    tracker.spawn(refuse(stream));
                }
                continue;
            }
        };
        tracker.spawn(async move {
            let mut stream = stream;
            let client =
                match proxy::client_address(&mut stream, peer, &shared.trusted_proxies).await {
                    Ok(client) => client,
                    Err(err) => {
                        if let Some(label) = err.as_label() {
                            refused(&shared, label);
                        }
                        debug!(%peer, %err, "connection closed before the greeting");
                        return;
                    }
                };
            match total.claim(client.ip()) {
                Ok(guard) => session(shared, context, shutdown, stream, client, guard).await,
                Err(cap) => {
                    refused(&shared, cap);
                    debug!(peer = %client, cap, "connection refused by cap");
                    if !context.implicit_tls {
                        refuse(stream).await;
                    }
                }
            }
        });
    }
}

fn refused(shared: &Shared, reason: &'static str) {
    shared
        .metrics
        .connections_refused
        .get_or_create(&vec![("cap", reason)])
        .inc();
}

/// A place under the connection caps for a client at `peer`, or none (counted and logged).
fn admit(shared: &Shared, peer: SocketAddr) -> Option<CapGuard> {
    match shared.caps.acquire(peer.ip()) {
        Ok(guard) => Some(guard),
        Err(cap) => {
            refused(shared, cap);
            debug!(%peer, cap, "connection refused by cap");
            None
        }
    }
}

/// One SMTP session with the client at `peer`.
async fn session(
    shared: Arc<Shared>,
    context: Arc<ListenerContext>,
    shutdown: CancellationToken,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    guard: CapGuard,
) {
    serve_connection(shared, context, shutdown, stream, peer).await;
    drop(guard);
}

/// Serves one SMTP connection from `peer` on any stream (a TCP socket from a listener, or an
/// in-memory one in tests) until it closes, counting it in the session metrics.
pub async fn serve_connection<S: AsyncRead + AsyncWrite + Unpin>(
    shared: Arc<Shared>,
    context: Arc<ListenerContext>,
    shutdown: CancellationToken,
    stream: S,
    peer: SocketAddr,
) {
    shared.metrics.connections.inc();
    shared.metrics.sessions.inc();
    let connection = connection::Connection::new(shared.clone(), context, peer, shutdown);
    if let Err(err) = connection
        .run(stream)
        .instrument(info_span!("smtp.session", %peer))
        .await
    {
        debug!(%peer, %err, "connection ended with an error");
    }
    shared.metrics.sessions.dec();
}

async fn refuse(mut stream: tokio::net::TcpStream) {
    let _ = stream
        .write_all(b"421 4.7.0 Too many connections, try again later\r\n")
        .await;
    let _ = stream.shutdown().await;
}

/// Binds every configured listener with the configured backlog, naming the field of one that
/// fails.
pub async fn bind(config: &Config) -> Result<Vec<BoundListener>, BindError> {
    let mut bound = Vec::new();
    for (i, listener) in config.ingress.listeners.iter().enumerate() {
        let error = |source| BindError {
            field: format!("ingress.listeners[{i}].address"),
            address: listener.address,
            source,
        };
        let socket = match listener.address {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
        }
        .map_err(error)?;
        socket.set_reuseaddr(true).map_err(error)?;
        socket.bind(listener.address).map_err(error)?;
        let socket = socket
            .listen(config.ingress.listen_backlog)
            .map_err(error)?;
        let address = socket.local_addr().map_err(error)?;
        info!(%address, tls = ?listener.tls, backlog = config.ingress.listen_backlog, "SMTP listener bound");
        bound.push(BoundListener {
            socket,
            address,
            config: listener.clone(),
        });
    }
    Ok(bound)
}

/// A listening socket of `ingress.listeners[]`.
#[derive(Debug)]
pub struct BoundListener {
    pub socket: TcpListener,
    /// What it is bound to: the configured address, with the port the kernel chose for 0.
    pub address: SocketAddr,
    pub config: postern_config::Listener,
}

/// A listening socket that could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("{field} {address}: {source}")]
pub struct BindError {
    pub field: String,
    pub address: SocketAddr,
    pub source: std::io::Error,
}

/// Caps on open connections, in total and per client address.
#[derive(Debug)]
struct ConnectionCaps {
    max_total: usize,
    max_per_ip: usize,
    open: Arc<Mutex<(usize, HashMap<IpAddr, usize>)>>,
}

/// Releases a connection's place when dropped: in the total, and under its client address once
/// that is known.
struct CapGuard {
    ip: Option<IpAddr>,
    max_per_ip: usize,
    open: Arc<Mutex<(usize, HashMap<IpAddr, usize>)>>,
}

impl ConnectionCaps {
    fn new(max_total: usize, max_per_ip: usize) -> Self {
        ConnectionCaps {
            max_total,
            max_per_ip,
            open: Arc::default(),
        }
    }

    /// A place in the total and under the client address `ip`.
    fn acquire(&self, ip: IpAddr) -> Result<CapGuard, &'static str> {
        self.acquire_total()?.claim(ip)
    }

    /// A place in the total only, for a connection whose client address is not known yet.
    fn acquire_total(&self) -> Result<CapGuard, &'static str> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.0 >= self.max_total {
            return Err("total");
        }
        open.0 += 1;
        Ok(CapGuard {
            ip: None,
            max_per_ip: self.max_per_ip,
            open: self.open.clone(),
        })
    }
}

impl CapGuard {
    /// Adds the place under the client address `ip`; on refusal the place in the total goes too.
    fn claim(mut self, ip: IpAddr) -> Result<CapGuard, &'static str> {
        let ip = ip.to_canonical();
        {
            let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
            let per_ip = open.1.get(&ip).copied().unwrap_or(0);
            if per_ip >= self.max_per_ip {
                return Err("per_ip");
            }
            open.1.insert(ip, per_ip + 1);
        }
        self.ip = Some(ip);
        Ok(self)
    }
}

impl Drop for CapGuard {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.0 -= 1;
        if let Some(ip) = self.ip
            && let Some(count) = open.1.get_mut(&ip)
        {
            *count -= 1;
            if *count == 0 {
                open.1.remove(&ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ConnectionCaps;

    #[test]
    fn caps_count_and_release() {
        let caps = ConnectionCaps::new(3, 2);
        let a: std::net::IpAddr = "192.0.2.1".parse().unwrap();
        let b: std::net::IpAddr = "::ffff:192.0.2.2".parse().unwrap();
        let g1 = caps.acquire(a).unwrap();
        let _g2 = caps.acquire(a).unwrap();
        assert_eq!(caps.acquire(a).err(), Some("per_ip"));
        let _g3 = caps.acquire(b).unwrap();
        assert_eq!(
            caps.acquire("192.0.2.2".parse().unwrap()).err(),
            Some("total")
        );
        drop(g1);
        assert!(caps.acquire(a).is_ok());

        // Behind a load balancer: the total first, the address later.
        let caps = ConnectionCaps::new(2, 1);
        let pending = caps.acquire_total().unwrap();
        let other = caps.acquire_total().unwrap();
        assert_eq!(caps.acquire_total().err(), Some("total"));
        let claimed = pending.claim(a).unwrap();
        assert_eq!(other.claim(a).err(), Some("per_ip"));
        // The refused claim gave its place in the total back.
        let _g = caps.acquire(b).unwrap();
        drop(claimed);
        assert_eq!(caps.open.lock().unwrap().0, 1);
        assert!(caps.open.lock().unwrap().1.len() <= 2);
    }
}
