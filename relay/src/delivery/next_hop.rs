//! Next hops: where an entry goes (a route, the smarthost, or its MX hosts in preference
//! order) and one attempt there, within the per-destination connection cap.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use postern_config::{Config, Route};
use postern_smtp::client::{Outcome, Outgoing};
use postern_smtp::{Reply, Status};
use tokio::sync::Semaphore;
use tracing::info;

use super::attempt::{self, Pool, Settings, Target};
use super::dns::{Dns, DnsSetupError, Exchangers, LookupFailure};
use super::route;
use super::tls::{self, CaError};
use crate::queue::entry::Envelope;

/// How long an open session waits for the next message to the same next hop.
const IDLE_SESSION: Duration = Duration::from_secs(30);

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
    pub remote: Option<String>,
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
            pool: Arc::new(Pool::new(
                delivery.max_messages_per_connection,
                delivery.connections_per_destination,
                IDLE_SESSION,
            )),
            dns,
        })
    }

    /// One attempt at the entry's next hop: a reply for every recipient.
    pub async fn attempt(&self, envelope: &Envelope, body: &[u8]) -> Vec<RecipientResult> {
        let outgoing = Outgoing {
            from: envelope.sender.clone(),
            recipients: envelope.recipients.clone(),
            size: body.len() as u64,
            smtputf8: envelope.smtputf8,
            eight_bit: envelope.eight_bit_mime || !body.is_ascii(),
        };
        let everyone = |reply: Reply, remote: Option<String>| -> Vec<RecipientResult> {
            envelope
                .recipients
                .iter()
                .map(|r| RecipientResult {
                    recipient: r.clone(),
                    reply: reply.clone(),
                    remote: remote.clone(),
                })
                .collect()
        };
        let each = |outcome: Outcome, host: String| -> Vec<RecipientResult> {
            envelope
                .recipients
                .iter()
                .map(|recipient| {
                    let reply = outcome
                        .recipients
                        .iter()
                        .find(|(r, _)| r == recipient)
                        .map(|(_, reply)| reply.clone())
                        .unwrap_or_else(|| {
                            Reply::new(451, Status(4, 3, 0), "No reply for this recipient")
                        });
                    RecipientResult {
                        recipient: recipient.clone(),
                        reply,
                        remote: Some(host.clone()),
                    }
                })
                .collect()
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
            return match attempt::deliver(&self.pool, &target, &settings, &outgoing, body).await {
                Ok(outcome) => each(outcome, target.host),
                Err(failure) => everyone(failure.reply, Some(target.host)),
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
                );
            }
            Err(LookupFailure::NxDomain) => {
                return everyone(
                    Reply::new(550, Status(5, 1, 2), "Recipient domain does not exist"),
                    None,
                );
            }
            Err(LookupFailure::Temporary(err)) => {
                return everyone(
                    Reply::new(451, Status(4, 4, 3), format!("MX lookup failed: {err}")),
                    None,
                );
            }
        };
        let mut last = (
            Reply::new(451, Status(4, 4, 4), "No MX host has an address"),
            None,
        );
        for host in hosts {
            let addresses = match self.dns.addresses(&host).await {
                Ok(addresses) => addresses,
                Err(failure) => {
                    let reason = match failure {
                        LookupFailure::NxDomain => "does not exist".to_string(),
                        LookupFailure::Temporary(err) => err,
                    };
                    last = (
                        Reply::new(
                            451,
                            Status(4, 4, 3),
                            format!("Address lookup of {host} failed: {reason}"),
                        ),
                        Some(host),
                    );
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
                    attempt::deliver(&self.pool, &target, &self.settings, &outgoing, body).await;
                drop(slot);
                match result {
                    Ok(outcome) => return each(outcome, host),
                    Err(failure) if failure.next_host => {
                        info!(queue_id = %envelope.queue_id, %host, %ip, reply = %failure.reply.text(), "trying the next MX host");
                        last = (failure.reply, Some(host.clone()));
                    }
                    Err(failure) => return everyone(failure.reply, Some(host)),
                }
            }
        }
        everyone(last.0, last.1)
    }
}
