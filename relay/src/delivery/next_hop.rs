//! Next hops: where an entry goes (a route, the smarthost, or its MX hosts in preference
//! order), the destination that makes it, and one attempt there.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use postern_config::{Config, DeliveryConfig, OutboundTls};
use postern_smtp::client::{Outcome, Outgoing, Source};
use postern_smtp::{Address, Reply, ReversePath, Status};
use tracing::info;

use super::attempt::{self, AttemptFailure, DaneAuthentication, Pool, Session, Settings, Target};
use super::dane::{Dane, HostTls};
use super::mta_sts::cache::Cached;
use super::mta_sts::fetch::Fetcher;
use super::mta_sts::{MtaSts, policy::Mode};
use super::route;
use super::tls::{self, CaError};
use super::tls_rpt::report::ResultType;
use super::tls_rpt::{DaneSession, TlsReports};
use crate::metrics::Metrics;
use postern_dns::{Dns, DnsSetupError, Exchangers, LookupFailure, SecureFailure, Validated};
use postern_queue::Content;
use postern_queue::destination::state::asks_to_slow_down;
use postern_queue::destination::{Destination, Limits, Signal};
use postern_queue::entry::Envelope;
use postern_queue::events::TlsDetails;

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

/// What happened to one recipient in one attempt.
#[derive(Debug, Clone)]
pub struct RecipientResult {
    pub recipient: String,
    pub reply: Reply,
    /// The host the attempt went to, if it got that far.
    pub host: Option<String>,
    /// The host sent the reply; otherwise Postern decided (and the text says why).
    pub from_server: bool,
    /// The host offered DSN and took the recipient's DSN requests with the message: a success
    /// report is its to send.
    pub dsn_passed: bool,
    /// The TLS of the session that gave the reply.
    pub tls: Option<TlsDetails>,
}

/// The next hops of a delivery process and how to reach them.
#[derive(Debug, Clone)]
pub struct NextHops {
    config: Arc<DeliveryConfig>,
    settings: Settings,
    /// Where mail without a route goes instead of its MX hosts, and how.
    smarthost: Option<(Target, Settings)>,
    pool: Arc<Pool>,
    dns: Dns,
    /// MTA-STS policies, when `delivery.mtaSts.enabled`.
    mta_sts: Option<Arc<MtaSts>>,
    /// TLS reports about the sessions under those policies, when `delivery.tlsRpt.enabled`.
    tls_reports: Option<Arc<TlsReports>>,
    /// DANE, when `delivery.dane.enabled`.
    dane: Option<Arc<Dane>>,
    /// Some mail goes to MX hosts: no smarthost, and no route for every domain.
    to_mx: bool,
    /// `delivery.egressProbe`, unless empty.
    egress_probe: Option<String>,
    metrics: Arc<Metrics>,
}

/// Where an entry goes on this attempt.
#[derive(Debug)]
pub enum Plan {
    /// Every recipient's reply is known without an attempt (a null MX, a domain that does not
    /// exist, a lookup that failed).
    Decided(Vec<RecipientResult>),
    Go(Box<Hop>),
}

/// A next hop chosen for an entry, and the destination it belongs to.
#[derive(Debug, Clone)]
pub struct Hop {
    pub destination: Destination,
    /// The destination's limits for this attempt: its own, lowered while it asked to slow down.
    pub limits: Limits,
    targets: Targets,
    /// The MTA-STS policy of this hop's MX hosts (`enforce` or `testing`).
    sts: Option<Arc<Cached>>,
    /// What DANE made of each MX host, when the MX records validated.
    dane: Vec<(String, HostTls)>,
}

impl Hop {
    /// The hop's MTA-STS policy, when it is enforced.
    fn enforced(&self) -> Option<&Arc<Cached>> {
        self.sts.as_ref().filter(|p| p.policy.mode == Mode::Enforce)
    }

    /// What DANE made of `host`, if it looked.
    fn host_tls(&self, host: &str) -> Option<&HostTls> {
        self.dane
            .iter()
            .find(|(h, _)| h == host)
            .map(|(_, tls)| tls)
    }
}

#[derive(Debug, Clone)]
enum Targets {
    /// A route or the smarthost.
    Fixed(Box<(Target, Settings)>),
    /// MX hosts in the order to try them.
    Exchangers(Vec<String>),
}

impl NextHops {
    /// The next hops of `config`; MTA-STS policies are shared through `queue`.
    pub fn new(
        config: &Config,
        queue: postern_queue::Queue,
        metrics: Arc<Metrics>,
    ) -> Result<NextHops, SetupError> {
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
            webpki: tls::webpki(delivery.ca_file.as_deref())?,
            check_certificate: false,
            dane: None,
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
        let tls_reports = delivery
            .mta_sts
            .enabled
            .then(|| {
                TlsReports::new(
                    config,
                    &queue,
                    dns.clone(),
                    settings.verified.clone(),
                    metrics.clone(),
                )
            })
            .flatten();
        let mta_sts = delivery.mta_sts.enabled.then(|| {
            let fetcher = Fetcher {
                dns: dns.clone(),
                tls: settings.verified.clone(),
                port: delivery.mta_sts.port,
                timeout: delivery.mta_sts.fetch_timeout.get(),
            };
            Arc::new(MtaSts::new(
                fetcher,
                Some(queue),
                tls_reports.clone(),
                metrics.clone(),
            ))
        });
        Ok(NextHops {
            dane: Dane::new(delivery, metrics.clone())?,
            to_mx: config.delivers_to_mx(),
            egress_probe: (!delivery.egress_probe.is_empty())
                .then(|| delivery.egress_probe.clone()),
            tls_reports,
            mta_sts,
            metrics,
            config: Arc::new(delivery.clone()),
            settings,
            smarthost,
            pool: Pool::start(
                delivery.connections_per_destination,
                delivery.timeouts.idle.get(),
            ),
            dns,
        })
    }

    /// Where the entry goes: its route, the smarthost, or its MX hosts.
    pub async fn plan(&self, envelope: &Envelope) -> Plan {
        let everyone = |reply: Reply| Plan::Decided(everyone(envelope, reply, None, false));
        let fixed = match route::find(&self.config.routes, &envelope.domain) {
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
            let destination = Destination::of(
                &self.config,
                &envelope.domain,
                std::slice::from_ref(&target.address),
            );
            return Plan::Go(Box::new(Hop {
                limits: destination.limits,
                destination,
                targets: Targets::Fixed(Box::new((target, settings))),
                sts: None,
                dane: Vec::new(),
            }));
        }
        let seed = ulid::Ulid::new().random() as u64;
        let dane = match &self.dane {
            // The sender asked that recipient policies not stop this message (RFC 8689 §5).
            Some(_) if envelope.tls_optional => None,
            Some(dane) if dane.ready().await => Some(dane),
            _ => None,
        };
        let found = match dane {
            Some(dane) => match dane.exchangers(&envelope.domain, seed).await {
                Ok(found) => Ok(found),
                Err(SecureFailure::Bogus(why)) => {
                    return everyone(Reply::new(
                        451,
                        Status(4, 7, 5),
                        format!(
                            "DNSSEC validation of the MX records of {} failed: {why}",
                            envelope.domain
                        ),
                    ));
                }
                Err(SecureFailure::NxDomain) => Err(LookupFailure::NxDomain),
                Err(SecureFailure::Temporary(why)) => Err(LookupFailure::Temporary(why)),
            },
            None => self
                .dns
                .exchangers(&envelope.domain, seed)
                .await
                .map(|value| Validated {
                    value,
                    secure: false,
                }),
        };
        // Without MX records the domain's own address records decide (RFC 7672 §2.2.2).
        let mx_secure = matches!(&found, Ok(f) if f.secure || f.value == Exchangers::Implicit);
        let mut hosts = match found.map(|f| f.value) {
            Ok(Exchangers::Hosts(hosts)) => hosts,
            Ok(Exchangers::Implicit) => vec![envelope.domain.clone()],
            Ok(Exchangers::Null) => {
                return everyone(Reply::new(
                    556,
                    Status(5, 1, 10),
                    "Recipient domain has a null MX and accepts no mail",
                ));
            }
            Err(LookupFailure::NxDomain) => {
                return everyone(Reply::new(
                    550,
                    Status(5, 1, 2),
                    "Recipient domain does not exist",
                ));
            }
            Err(LookupFailure::Temporary(err)) => {
                return everyone(Reply::new(
                    451,
                    Status(4, 4, 3),
                    format!("MX lookup failed: {err}"),
                ));
            }
        };
        let mut host_tls = Vec::new();
        if let Some(dane) = dane.filter(|_| mx_secure) {
            for host in &hosts {
                host_tls.push((host.clone(), dane.host(host, self.config.mx_port).await));
            }
        }
        let authenticated = |host: &str| {
            host_tls
                .iter()
                .any(|(h, t)| h == host && matches!(t, HostTls::Authenticated(_)))
        };
        let policy = match &self.mta_sts {
            // The sender asked that recipient policies not stop this message (RFC 8689 §5).
            Some(_) if envelope.tls_optional => None,
            Some(mta_sts) => mta_sts.policy(&envelope.domain).await,
            None => None,
        };
        if let Some(cached) = &policy {
            let mode = cached.policy.mode;
            let label = || vec![("mode", mode.as_str())];
            self.metrics.mta_sts_applied.get_or_create(&label()).inc();
            // Hosts DANE authenticates are not held to the policy (RFC 8461 §2).
            let unlisted: Vec<&String> = hosts
                .iter()
                .filter(|h| !cached.policy.allows(h) && !authenticated(h))
                .collect();
            if !unlisted.is_empty() {
                self.metrics
                    .mta_sts_mx_not_listed
                    .get_or_create(&label())
                    .inc();
                info!(queue_id = %envelope.queue_id, domain = %envelope.domain, mode = mode.as_str(), id = %cached.id, hosts = ?unlisted, "MX hosts not in the MTA-STS policy");
                // Enforced, they get no session: each counts as one that failed. In testing
                // mode the session to one of them counts (`report_session`).
                if let Some(reports) = self.tls_reports.as_ref().filter(|_| mode == Mode::Enforce) {
                    for host in &unlisted {
                        reports.failure(
                            &envelope.domain,
                            Some(cached),
                            ResultType::ValidationFailure,
                            Some(host),
                            None,
                        );
                    }
                }
            }
            if mode == Mode::Enforce {
                let listed = || {
                    unlisted
                        .iter()
                        .map(|h| h.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                if unlisted.len() == hosts.len() {
                    return everyone(Reply::new(
                        451,
                        Status(4, 7, 0),
                        format!(
                            "MTA-STS policy {} of {} (enforce) lists none of its MX hosts ({}); mail waits for the policy or the MX records to change",
                            cached.id,
                            envelope.domain,
                            listed()
                        ),
                    ));
                }
                hosts.retain(|h| cached.policy.allows(h) || authenticated(h));
            }
        }
        let destination = Destination::of(&self.config, &envelope.domain, &hosts);
        Plan::Go(Box::new(Hop {
            limits: destination.limits,
            destination,
            targets: Targets::Exchangers(hosts),
            sts: policy,
            dane: host_tls,
        }))
    }

    /// One attempt at `hop` within its limits: a reply for every recipient, and what the attempt
    /// says about the destination.
    pub async fn attempt(
        &self,
        hop: &Hop,
        envelope: &Envelope,
        content: &Content,
    ) -> (Vec<RecipientResult>, Option<Signal>) {
        let outgoing = match outgoing(envelope, content) {
            Ok(outgoing) => outgoing,
            Err(reply) => return (everyone(envelope, reply, None, false), None),
        };
        let each = |(outcome, session): (Outcome, Session), host: String| {
            let tls = session.tls.map(|tls| TlsDetails {
                policy: tls
                    .policy
                    .or_else(|| hop.enforced().map(|_| "mta-sts".to_string())),
                ..tls
            });
            let signal = match outcome.replies.iter().find(|r| asks_to_slow_down(r)) {
                Some(reply) => Signal::SlowDown(reply.text().to_string()),
                None => Signal::Reached,
            };
            let from_server = outcome.source == Source::Server;
            let dsn_passed = outcome.dsn;
            let results = envelope
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
                    dsn_passed,
                    tls: tls.clone(),
                })
                .collect();
            (results, Some(signal))
        };
        let failed = |mut failure: AttemptFailure, host: String| {
            if let Some(policy) = hop.enforced() {
                failure.reply = under_policy(failure.reply, failure.from_server, policy, envelope);
            }
            let signal = failure_signal(&failure);
            (
                everyone(envelope, failure.reply, Some(host), failure.from_server),
                Some(signal),
            )
        };
        let max_messages = hop.limits.messages_per_connection;
        let hosts = match &hop.targets {
            Targets::Fixed(fixed) => {
                let (target, settings) = fixed.as_ref();
                if envelope.require_tls && settings.tls == OutboundTls::None {
                    let reply = Reply::new(
                        550,
                        Status(5, 7, 30),
                        format!(
                            "REQUIRETLS support required: the next hop {} is configured plaintext only (tls: none)",
                            target.host
                        ),
                    );
                    return (everyone(envelope, reply, None, false), None);
                }
                let settings = &for_envelope(settings, envelope);
                let sent = attempt::deliver(
                    &self.pool,
                    target,
                    settings,
                    &outgoing,
                    content,
                    max_messages,
                )
                .await;
                return match sent {
                    Ok(outcome) => each(outcome, target.host.clone()),
                    Err(failure) => failed(failure, target.host.clone()),
                };
            }
            Targets::Exchangers(hosts) => hosts,
        };
        let mut last = AttemptFailure {
            reply: Reply::new(451, Status(4, 4, 4), "No MX host has an address"),
            next_host: true,
            from_server: false,
            tls: None,
        };
        let mut last_host = None;
        // An enforced MTA-STS policy asks for a certificate valid for the MX host, whatever the
        // destination's own setting.
        let tls = match hop.enforced() {
            Some(_) => Some(OutboundTls::Verify),
            None => hop.destination.tls,
        };
        // A policy in testing mode has the certificate checked after the handshake, to report.
        let check_certificate = hop.sts.is_some() && hop.enforced().is_none();
        let mx_settings = if tls.is_some() || check_certificate {
            Cow::Owned(Settings {
                tls: tls.unwrap_or(self.settings.tls),
                check_certificate,
                ..self.settings.clone()
            })
        } else {
            Cow::Borrowed(&self.settings)
        };
        let mx_settings = for_envelope(&mx_settings, envelope);
        for host in hosts {
            let settings = match self.host_settings(hop, host, &mx_settings, envelope) {
                Ok(settings) => settings,
                Err(failure) => {
                    if let (Some(reports), Some(kind)) = (&self.tls_reports, failure.tls) {
                        reports.dane(host, DaneSession::Failed(kind), None);
                    }
                    info!(queue_id = %envelope.queue_id, %host, reply = %failure.reply.text(), "trying the next MX host");
                    last = failure;
                    last_host = Some(host.clone());
                    continue;
                }
            };
            let addresses = match self.dns.addresses(host).await {
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
                        tls: None,
                    };
                    last_host = Some(host.clone());
                    continue;
                }
            };
            for ip in addresses {
                let target = Target {
                    host: host.clone(),
                    address: SocketAddr::new(ip, self.config.mx_port).to_string(),
                };
                let result = attempt::deliver(
                    &self.pool,
                    &target,
                    &settings,
                    &outgoing,
                    content,
                    max_messages,
                )
                .await;
                self.report_session(hop, &envelope.domain, &result, host, ip);
                match result {
                    Ok(outcome) => return each(outcome, host.clone()),
                    Err(failure) if failure.next_host => {
                        info!(queue_id = %envelope.queue_id, %host, %ip, reply = %failure.reply.text(), "trying the next MX host");
                        last = failure;
                        last_host = Some(host.clone());
                    }
                    Err(failure) => return failed(failure, host.clone()),
                }
            }
        }
        if let Some(policy) = hop.enforced() {
            last.reply = under_policy(last.reply, last.from_server, policy, envelope);
        }
        let signal = failure_signal(&last);
        (
            everyone(envelope, last.reply, last_host, last.from_server),
            Some(signal),
        )
    }
}

impl NextHops {
    /// How to talk to MX `host` of `hop`, by what DANE made of it: authenticated by its TLSA
    /// records, or STARTTLS made mandatory by signed unusable ones, or `mx_settings` as they
    /// are; an error for a host that must not get the mail now (its TLSA lookup failed, or
    /// `dane-only` and no DANE).
    fn host_settings<'a>(
        &self,
        hop: &Hop,
        host: &str,
        mx_settings: &'a Settings,
        envelope: &Envelope,
    ) -> Result<Cow<'a, Settings>, AttemptFailure> {
        let refused = |text: String, kind: ResultType| AttemptFailure {
            reply: Reply::new(451, Status(4, 7, 5), text),
            next_host: true,
            from_server: false,
            tls: Some(kind),
        };
        let tlsa_name = || format!("_{}._tcp.{host}", self.config.mx_port);
        match hop.host_tls(host) {
            Some(HostTls::Failed(why)) => Err(refused(
                format!(
                    "DANE: the TLSA records of {} could not be had: {why}; {host} gets no mail until they can",
                    tlsa_name()
                ),
                ResultType::DnssecInvalid,
            )),
            Some(HostTls::Authenticated(records)) => Ok(Cow::Owned(Settings {
                dane: Some(DaneAuthentication {
                    records: records.clone(),
                    domain: envelope.domain.clone(),
                }),
                check_certificate: false,
                ..mx_settings.clone()
            })),
            _ if mx_settings.tls == OutboundTls::DaneOnly => Err(refused(
                format!(
                    "{host} is not authenticated by DANE (no usable TLSA records at {} validated with DNSSEC) and its destination is dane-only",
                    tlsa_name()
                ),
                ResultType::DaneRequired,
            )),
            Some(HostTls::Encrypted)
                if matches!(
                    mx_settings.tls,
                    OutboundTls::Opportunistic | OutboundTls::None
                ) =>
            {
                Ok(Cow::Owned(Settings {
                    tls: OutboundTls::Required,
                    ..mx_settings.clone()
                }))
            }
            _ => Ok(Cow::Borrowed(mx_settings)),
        }
    }

    /// The start-up checks of MX delivery, to run once in the background: whether outbound
    /// SMTP works (`delivery.egressProbe`), and DANE's first look at whether answers validate,
    /// so that the first MX delivery need not wait for it. None when no mail goes to MX hosts.
    pub fn start_up_checks(&self) -> Option<impl Future<Output = ()> + Send + 'static> {
        if !self.to_mx {
            return None;
        }
        let egress = self
            .egress_probe
            .clone()
            .map(|probe| super::egress::check(self.dns.clone(), probe, self.config.mx_port));
        let dane = self.dane.clone();
        Some(async move {
            let dane = async {
                if let Some(dane) = dane {
                    dane.ready().await;
                }
            };
            let egress = async {
                if let Some(egress) = egress {
                    egress.await;
                }
            };
            tokio::join!(dane, egress);
        })
    }

    /// The TLS reports of this process, to run.
    pub fn tls_reports(&self) -> Option<Arc<TlsReports>> {
        self.tls_reports.clone()
    }

    /// Counts one session with an MX host for the TLS reports: under the host's TLSA records
    /// when DANE decided about its TLS, otherwise under the MTA-STS policy of `domain`. Met
    /// when its TLS was verified (by the handshake under `enforce` or DANE, after it under
    /// `testing`), failed with the kind of failure when TLS did not work or did not verify.
    /// Sessions that did not get as far as TLS (no connection) are not counted, unless the
    /// host is not in the policy.
    fn report_session(
        &self,
        hop: &Hop,
        domain: &str,
        result: &Result<(Outcome, Session), AttemptFailure>,
        host: &str,
        ip: IpAddr,
    ) {
        let Some(reports) = &self.tls_reports else {
            return;
        };
        // How TLS went, when the session got that far: `Some(None)` for TLS that worked.
        let tls_result = match result {
            Ok((_, session)) => Some(
                session
                    .tls
                    .is_none()
                    .then_some(ResultType::StarttlsNotSupported),
            ),
            Err(failure) => failure.tls.map(Some),
        };
        let ip_text = ip.to_string();
        match (hop.host_tls(host), tls_result) {
            (Some(HostTls::Authenticated(records)), tls_result) => {
                if let Some(failed) = tls_result {
                    let session = DaneSession::Records(records, failed);
                    reports.dane(host, session, Some(&ip_text));
                }
                return;
            }
            // Signed records, none usable: TLS without authentication, which the records'
            // owner wants to hear about; an MTA-STS policy still holds for the host.
            (Some(HostTls::Encrypted), Some(failed)) => {
                let session = DaneSession::Failed(failed.unwrap_or(ResultType::TlsaInvalid));
                reports.dane(host, session, Some(&ip_text));
            }
            _ => {}
        }
        let Some(policy) = &hop.sts else {
            return;
        };
        let failed = match result {
            // A host the policy does not list (testing mode) fails it, whatever its TLS.
            _ if !policy.policy.allows(host) => Some(ResultType::ValidationFailure),
            Ok((_, session)) => match (&session.tls, &session.certificate) {
                (None, _) => Some(ResultType::StarttlsNotSupported),
                (Some(_), Some(Err(kind))) => Some(*kind),
                (Some(_), _) => None,
            },
            Err(failure) => match failure.tls {
                Some(kind) => Some(kind),
                None => return,
            },
        };
        match failed {
            None => reports.success(domain, policy),
            Some(kind) => reports.failure(domain, Some(policy), kind, Some(host), Some(&ip_text)),
        }
    }
}

/// How an attempt for `envelope` talks: REQUIRETLS mail only over TLS with a certificate
/// verified for the host name (RFC 8689 §4.2.1), whatever the next hop's own setting.
fn for_envelope<'a>(settings: &'a Settings, envelope: &Envelope) -> Cow<'a, Settings> {
    // dane-only stays: DANE authenticates at least as well as WebPKI.
    if envelope.require_tls && !matches!(settings.tls, OutboundTls::Verify | OutboundTls::DaneOnly)
    {
        Cow::Owned(Settings {
            tls: OutboundTls::Verify,
            ..settings.clone()
        })
    } else {
        Cow::Borrowed(settings)
    }
}

/// A reply of Postern's own, saying that an enforced MTA-STS policy made the attempt fail.
fn under_policy(reply: Reply, from_server: bool, policy: &Cached, envelope: &Envelope) -> Reply {
    if from_server {
        return reply;
    }
    let text = format!(
        "{} (MTA-STS policy {} of {}: enforce)",
        reply.text(),
        policy.id,
        envelope.domain
    );
    Reply::new(reply.code, reply.status.unwrap_or(Status(4, 7, 5)), text)
}

/// The same reply for every recipient of the entry.
fn everyone(
    envelope: &Envelope,
    reply: Reply,
    host: Option<String>,
    from_server: bool,
) -> Vec<RecipientResult> {
    envelope
        .recipients
        .iter()
        .map(|r| RecipientResult {
            recipient: r.clone(),
            reply: reply.clone(),
            host: host.clone(),
            from_server,
            dsn_passed: false,
            tls: None,
        })
        .collect()
}

/// What a failed attempt says about its destination: a request to slow down; no session at
/// all, or a 421 (the server closing the channel); or a session that worked but a
/// transaction that did not.
fn failure_signal(failure: &AttemptFailure) -> Signal {
    let text = || failure.reply.text().to_string();
    if asks_to_slow_down(&failure.reply) {
        Signal::SlowDown(text())
    } else if failure.next_host || failure.reply.code == 421 {
        Signal::Unreachable(text())
    } else {
        Signal::Reached
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
        dsn: envelope.dsn.clone(),
        require_tls: envelope.require_tls,
    })
}
