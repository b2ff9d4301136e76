//! Next hops: where an entry goes (a route, the smarthost, or its MX hosts in preference
//! order) and one attempt there, within the per-destination connection cap.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use postern_config::{Config, Route};
use postern_smtp::client::{Outcome, Outgoing, Source};
use postern_smtp::{Address, Reply, ReversePath, Status};
use tokio::sync::Semaphore;
use tracing::info;

use super::attempt::{self, AttemptFailure, Pool, Settings, Target};
use super::dns::{Dns, DnsSetupError, Exchangers, LookupFailure};
use super::route;
use super::tls::{self, CaError};
use crate::queue::Content;
use crate::queue::entry::Envelope;

/// Why delivery could not start; each message names the config field at fault.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Dns(#[from] DnsSetupError),
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error("delivery.smarthost.credentialsFile {path}: {message}")]
    Credentials { path: String, message: String },
}

/// Reads `username:password` from the first line of a credentials file.
fn read_credentials(path: &std::path::Path) -> Result<(String, String), SetupError> {
    let error = |message: &str| SetupError::Credentials {
        path: path.display().to_string(),
        message: message.to_string(),
    };
    let text = std::fs::read_to_string(path).map_err(|e| error(&e.to_string()))?;
    let line = text.lines().next().unwrap_or_default();
    match line.split_once(':') {
        Some((user, password)) if !user.is_empty() => Ok((user.to_string(), password.to_string())),
        _ => Err(error("the first line must be username:password")),
    }
}

/// Caps the connections one process has open to each next-hop address.
#[derive(Debug, Clone)]
struct DestinationSlots {
    per_destination: usize,
    open: Arc<std::sync::Mutex<HashMap<String, Arc<Semaphore>>>>,
}

impl DestinationSlots {
    fn new(per_destination: usize) -> Self {
        DestinationSlots {
            per_destination,
            open: Arc::default(),
        }
    }

    /// Waits for a free connection slot to `address`.
    async fn acquire(&self, address: &str) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let semaphore = {
            let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
            // Forget destinations nobody is connected to, so the map stays small.
            open.retain(|_, s| {
                Arc::strong_count(s) > 1 || s.available_permits() < self.per_destination
            });
            open.entry(address.to_string())
                .or_insert_with(|| Arc::new(Semaphore::new(self.per_destination)))
                .clone()
        };
        semaphore.acquire_owned().await.ok()
    }
}

/// What happened to one recipient in one attempt.
#[derive(Debug, Clone)]
pub struct RecipientResult {
    pub recipient: String,
    pub reply: Reply,
    /// The host the attempt went to, if it got that far.
    pub host: Option<String>,
    /// The host sent the reply; otherwise Postern decided (and the text says why).
    pub from_server: bool,
}

/// The next hops of a delivery process and how to reach them.
#[derive(Debug, Clone)]
pub struct NextHops {
    routes: Vec<Route>,
    mx_port: u16,
    settings: Settings,
    /// Where mail without a route goes instead of its MX hosts, and how.
    smarthost: Option<(Target, Settings)>,
    slots: DestinationSlots,
    pool: Arc<Pool>,
    dns: Dns,
}

impl NextHops {
    pub fn new(config: &Config) -> Result<NextHops, SetupError> {
        let delivery = &config.delivery;
        let settings = Settings {
            helo_name: delivery
                .helo_name
                .clone()
                .unwrap_or_else(|| config.hostname.clone()),
            tls: Default::default(),
            verified: tls::verified(delivery.ca_file.as_deref())?,
            auth: None,
            timeouts: delivery.timeouts.clone(),
        };
        let smarthost = match &delivery.smarthost {
            Some(smarthost) => {
                let auth = smarthost
                    .credentials_file
                    .as_deref()
                    .map(read_credentials)
                    .transpose()?;
                let settings = Settings {
                    tls: smarthost.tls,
                    auth,
                    ..settings.clone()
                };
                Some((Target::from_host_port(&smarthost.host), settings))
            }
            None => None,
        };
        let dns = Dns::new(&delivery.dns.nameservers)?;
        Ok(NextHops {
            routes: delivery.routes.clone(),
            mx_port: delivery.mx_port,
            settings,
            smarthost,
            slots: DestinationSlots::new(delivery.connections_per_destination),
            pool: Pool::start(
                delivery.max_messages_per_connection,
                delivery.connections_per_destination,
                delivery.timeouts.idle.get(),
            ),
            dns,
        })
    }

    /// One attempt at the entry's next hop: a reply for every recipient.
    pub async fn attempt(&self, envelope: &Envelope, content: &Content) -> Vec<RecipientResult> {
        let everyone = |reply: Reply, host: Option<String>, from_server: bool| {
            envelope
                .recipients
                .iter()
                .map(|r| RecipientResult {
                    recipient: r.clone(),
                    reply: reply.clone(),
                    host: host.clone(),
                    from_server,
                })
                .collect::<Vec<_>>()
        };
        let outgoing = match outgoing(envelope, content) {
            Ok(outgoing) => outgoing,
            Err(reply) => return everyone(reply, None, false),
        };
        let each = |outcome: Outcome, host: String| -> Vec<RecipientResult> {
            let from_server = outcome.source == Source::Server;
            envelope
                .recipients
                .iter()
                .zip(outcome.replies)
                .map(|(recipient, reply)| RecipientResult {
                    recipient: recipient.clone(),
                    reply: if from_server {
                        reply
                    } else {
                        // Postern's decision from what the server announced: say where.
                        let text = format!("Not sent to {host}: {}", reply.text());
                        Reply::new(reply.code, reply.status.unwrap_or(Status(5, 0, 0)), text)
                    },
                    host: Some(host.clone()),
                    from_server,
                })
                .collect()
        };
        let failed = |failure: AttemptFailure, host: String| {
            everyone(failure.reply, Some(host), failure.from_server)
        };
        let fixed = match route::find(&self.routes, &envelope.domain) {
            Some(route) => {
                let settings = Settings {
                    tls: route.tls,
                    ..self.settings.clone()
                };
                Some((Target::from_host_port(&route.host), settings))
            }
            None => self.smarthost.clone(),
        };
        if let Some((target, settings)) = fixed {
            let _slot = self.slots.acquire(&target.address).await;
            return match attempt::deliver(&self.pool, &target, &settings, &outgoing, content).await
            {
                Ok(outcome) => each(outcome, target.host),
                Err(failure) => failed(failure, target.host),
            };
        }
        let seed = ulid::Ulid::new().random() as u64;
        let hosts = match self.dns.exchangers(&envelope.domain, seed).await {
            Ok(Exchangers::Hosts(hosts)) => hosts,
            Ok(Exchangers::Implicit) => vec![envelope.domain.clone()],
            Ok(Exchangers::Null) => {
                return everyone(
                    Reply::new(
                        556,
                        Status(5, 1, 10),
                        "Recipient domain has a null MX and accepts no mail",
                    ),
                    None,
                    false,
                );
            }
            Err(LookupFailure::NxDomain) => {
                return everyone(
                    Reply::new(550, Status(5, 1, 2), "Recipient domain does not exist"),
                    None,
                    false,
                );
            }
            Err(LookupFailure::Temporary(err)) => {
                return everyone(
                    Reply::new(451, Status(4, 4, 3), format!("MX lookup failed: {err}")),
                    None,
                    false,
                );
            }
        };
        let mut last = AttemptFailure {
            reply: Reply::new(451, Status(4, 4, 4), "No MX host has an address"),
            next_host: true,
            from_server: false,
        };
        let mut last_host = None;
        for host in hosts {
            let addresses = match self.dns.addresses(&host).await {
                Ok(addresses) => addresses,
                Err(failure) => {
                    let reason = match failure {
                        LookupFailure::NxDomain => "does not exist".to_string(),
                        LookupFailure::Temporary(err) => err,
                    };
                    last = AttemptFailure {
                        reply: Reply::new(
                            451,
                            Status(4, 4, 3),
                            format!("Address lookup of {host} failed: {reason}"),
                        ),
                        next_host: true,
                        from_server: false,
                    };
                    last_host = Some(host);
                    continue;
                }
            };
            for ip in addresses {
                let target = Target {
                    host: host.clone(),
                    address: SocketAddr::new(ip, self.mx_port).to_string(),
                };
                let slot = self.slots.acquire(&target.address).await;
                let result =
                    attempt::deliver(&self.pool, &target, &self.settings, &outgoing, content).await;
                drop(slot);
                match result {
                    Ok(outcome) => return each(outcome, host),
                    Err(failure) if failure.next_host => {
                        info!(queue_id = %envelope.queue_id, %host, %ip, reply = %failure.reply.text(), "trying the next MX host");
                        last = failure;
                        last_host = Some(host.clone());
                    }
                    Err(failure) => return failed(failure, host),
                }
            }
        }
        everyone(last.reply, last_host, last.from_server)
    }
}

/// The transaction for an entry. The envelope's addresses were checked at ingress; one that
/// does not parse now is refused for good rather than put on the wire.
fn outgoing(envelope: &Envelope, content: &Content) -> Result<Outgoing, Reply> {
    let bad = |what: &str| {
        Reply::new(
            554,
            Status(5, 1, 3),
            format!("Invalid {what} in the queue entry"),
        )
    };
    let from = if envelope.sender.is_empty() {
        ReversePath::Null
    } else {
        ReversePath::Mailbox(Address::parse(&envelope.sender).map_err(|_| bad("sender"))?)
    };
    let recipients = envelope
        .recipients
        .iter()
        .map(|r| Address::parse(r).map_err(|_| bad("recipient")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Outgoing {
        from,
        recipients,
        size: content.len(),
        smtputf8: envelope.smtputf8,
        eight_bit: envelope.eight_bit,
    })
}
