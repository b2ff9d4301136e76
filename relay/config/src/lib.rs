//! The Postern configuration file: its types, defaults and validation.
//!
//! The relay reads it and the operator writes it, so this crate is the contract between them.
//! Keys are camelCase; unknown keys are refused. Every field is documented, with its default,
//! in `docs/configuration.md`.

mod duration;
mod validate;

use std::net::SocketAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

pub use duration::{Duration, DurationError};
pub use validate::{ConfigError, FieldError, Warning, is_domain_pattern};

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Config {
    /// Name used in the greeting, the EHLO reply and Received headers.
    #[serde(default = "default_hostname")]
    pub hostname: String,
    #[serde(default)]
    pub nats: NatsConfig,
    #[serde(default)]
    pub ingress: IngressConfig,
    #[serde(default)]
    pub delivery: DeliveryConfig,
    #[serde(default)]
    pub suppression: SuppressionConfig,
    #[serde(default)]
    pub events: EventsConfig,
    /// Sending domains and their DKIM keys.
    #[serde(default)]
    pub domains: Vec<DomainConfig>,
    /// A YAML file listing more sending domains, in the shape of `domains`; it is read again,
    /// with its key files, whenever it changes (every `reloadInterval`), so domains and keys
    /// change without a restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domains_file: Option<PathBuf>,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    #[serde(default)]
    pub standalone: StandaloneConfig,
    /// How often the TLS certificate, the DKIM key files and the domains file are checked and
    /// reloaded when changed.
    #[serde(default = "default_reload_interval")]
    pub reload_interval: Duration,
    /// How long transactions in progress may run after SIGTERM.
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace: Duration,
}

/// Connection to NATS JetStream and the queue's layout there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NatsConfig {
    /// `nats://host:port`, or several such seeds separated by commas; absent in standalone
    /// mode, which starts its own server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// A NATS `.creds` file (JWT and NKey seed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_file: Option<PathBuf>,
    /// A file holding the token of a server that authorizes clients by token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// PEM certificates of the authorities that sign the NATS servers' certificates; with it the
    /// connection must be TLS, verified against them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Name of the JetStream stream holding the queue.
    #[serde(default = "default_stream")]
    pub stream: String,
    /// Subject prefix of queue entries; the destination domain follows it.
    #[serde(default = "default_subject_prefix")]
    pub subject_prefix: String,
    /// Stream holding bodies larger than `inlineBodyLimit`, and the entries using each.
    #[serde(default = "default_body_stream")]
    pub body_stream: String,
    /// Stream replicas: 1 for one server, 3 in a cluster.
    #[serde(default = "default_replicas")]
    pub replicas: usize,
    /// How long to wait for JetStream to acknowledge a message before answering 451.
    #[serde(default = "default_ack_timeout")]
    pub ack_timeout: Duration,
    /// Bodies up to this many bytes travel inside the queue entry.
    #[serde(default = "default_inline_body_limit")]
    pub inline_body_limit: usize,
    /// Window in which JetStream drops an entry published twice with the same id.
    #[serde(default = "default_duplicate_window")]
    pub duplicate_window: Duration,
}

/// The SMTP side that applications and users connect to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IngressConfig {
    #[serde(default = "default_listeners")]
    pub listeners: Vec<Listener>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// Clients in these networks may relay without AUTH.
    #[serde(default = "default_allowed_networks")]
    pub allowed_networks: Vec<IpNet>,
    /// `name:<argon2 PHC hash>` lines; enables AUTH.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users_file: Option<PathBuf>,
    /// Sender domains allowed in MAIL FROM; empty allows any.
    #[serde(default)]
    pub sender_domains: Vec<String>,
    /// Addresses allowed to send PROXY protocol headers; empty allows any (the listener must
    /// then be reachable only through the load balancer).
    #[serde(default)]
    pub trusted_proxies: Vec<IpNet>,
    #[serde(default)]
    pub bare_line_endings: BareLineEndings,
    #[serde(default)]
    pub limits: Limits,
    /// Connections waiting to be accepted per listener (the kernel caps it at
    /// `net.core.somaxconn`).
    #[serde(default = "default_listen_backlog")]
    pub listen_backlog: u32,
    /// What to do with clients that talk before the greeting.
    #[serde(default)]
    pub pregreet: Pregreet,
}

/// Clients that send before the greeting (RFC 5321 §3.1 says wait) are usually spam engines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Pregreet {
    /// How long to wait before sending the greeting, watching for such clients (0: only what
    /// they sent before the connection was accepted is seen).
    pub wait: Duration,
    pub action: PregreetAction,
}

impl Default for Pregreet {
    fn default() -> Self {
        Pregreet {
            wait: Duration::secs(0),
            action: PregreetAction::Count,
        }
    }
}

/// Recipients that bounced for good ("no such user") and are not tried again for a while.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct SuppressionConfig {
    pub enabled: bool,
    /// How long an entry stays on the list after it was added.
    pub expiry: Duration,
    /// What a message to a suppressed recipient gets.
    pub action: SuppressionAction,
    /// Enhanced status codes of a remote server's permanent refusal that put the recipient on
    /// the list.
    pub statuses: Vec<String>,
}

impl Default for SuppressionConfig {
    fn default() -> Self {
        SuppressionConfig {
            enabled: true,
            expiry: Duration::secs(30 * 86_400),
            action: SuppressionAction::Reject,
            statuses: vec!["5.1.1".into(), "5.1.10".into()],
        }
    }
}

impl SuppressionConfig {
    /// RCPT consults the list: it is on, and suppressed recipients are refused there.
    pub fn checked_at_rcpt(&self) -> bool {
        self.enabled && self.action == SuppressionAction::Reject
    }
}

/// The stream of delivery events (`<stream>_EVENTS`), one per recipient and outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct EventsConfig {
    pub enabled: bool,
    /// Events older than this are removed.
    pub max_age: Duration,
    /// The stream keeps at most this many bytes, removing the oldest events first.
    pub max_bytes: u64,
    /// HTTP endpoints that receive events in signed batches, sent by the delivery processes.
    pub webhooks: Vec<Webhook>,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            enabled: true,
            max_age: Duration::secs(7 * 86_400),
            max_bytes: 1 << 30,
            webhooks: Vec::new(),
        }
    }
}

/// The kinds of delivery events, as event subjects and `events.webhooks[].kinds` name them.
pub const EVENT_KINDS: [&str; 7] = [
    "received",
    "delivered",
    "deferred",
    "bounced",
    "expired",
    "suppressed",
    "dead_lettered",
];

/// One webhook: events POSTed as JSON arrays, signed with HMAC-SHA256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Webhook {
    /// Names its JetStream consumer (`postern-webhook-<name>`) and its metrics: lower-case
    /// letters, digits and `-`, at most 32.
    pub name: String,
    /// `https://host[:port]/path` (or `http://`).
    pub url: String,
    /// The event kinds it receives; all when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kinds: Vec<String>,
    /// File holding the signing secret (read again for every batch, so it can be rotated).
    pub secret_file: PathBuf,
    /// PEM certificates trusted for the endpoint, in addition to the system's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Events per POST at most.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// The whole POST: connection, TLS, request and answer.
    #[serde(default = "default_webhook_timeout")]
    pub timeout: Duration,
    /// A batch not accepted is retried with backoff until its events are this old.
    #[serde(default = "default_retry_for")]
    pub retry_for: Duration,
}

fn default_batch_size() -> usize {
    100
}

fn default_webhook_timeout() -> Duration {
    Duration::secs(10)
}

fn default_retry_for() -> Duration {
    Duration::secs(72 * 3600)
}

/// What a message to a suppressed recipient gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SuppressionAction {
    /// RCPT gets `550 5.1.1`, saying the recipient is suppressed and since when.
    #[default]
    Reject,
    /// RCPT is accepted; delivery does not attempt the recipient and bounces it to the sender.
    Bounce,
}

/// What happens to a client that talked before the greeting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PregreetAction {
    /// `554 5.5.0` and the connection is closed.
    Reject,
    /// The session goes on; it is counted and logged (as Postfix's postscreen does by default).
    #[default]
    Count,
}

/// One SMTP listening socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Listener {
    pub address: SocketAddr,
    #[serde(default)]
    pub tls: ListenerTls,
    /// Offer AUTH before TLS on this listener (for trusted networks only).
    #[serde(default)]
    pub allow_plaintext_auth: bool,
    /// Every connection starts with a PROXY protocol header (v1 or v2) from a load balancer,
    /// naming the client's address.
    #[serde(default)]
    pub proxy_protocol: bool,
}

/// How a listener uses TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ListenerTls {
    /// Plaintext only.
    #[default]
    None,
    /// Plaintext, upgraded by STARTTLS.
    Starttls,
    /// TLS from the first byte (port 465 style).
    Implicit,
}

/// The certificate served by TLS listeners.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

/// What to do with bare CR, bare LF and NUL in message content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum BareLineEndings {
    /// Bare LF becomes CRLF, bare CR a space, NUL is dropped.
    #[default]
    Normalize,
    /// The message is refused with 550 5.6.0.
    Reject,
}

/// Limits on what a client controls.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Limits {
    pub max_message_size: usize,
    pub max_recipients: usize,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub max_errors: u32,
    pub max_auth_failures: u32,
    pub max_received_headers: usize,
    /// Idle time allowed while waiting for a command.
    pub command_timeout: Duration,
    /// Idle time allowed while reading message content.
    pub data_timeout: Duration,
    /// Slowest average transfer rate of message content, in bytes per second, once
    /// `dataTimeout` has passed since the transfer began.
    pub min_data_rate: u64,
    /// Bytes of message data all sessions of the process may hold in memory together.
    pub max_message_memory: usize,
    /// Password checks (argon2) running at the same time.
    pub password_checks: usize,
    /// Failed logins from one client address (IPv6: one /64) within `authFailureWindow` after
    /// which its logins are refused until the window has passed.
    pub max_auth_failures_per_address: u32,
    pub auth_failure_window: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_size: 50 * 1024 * 1024,
            max_recipients: 1000,
            max_connections: 10_000,
            max_connections_per_ip: 100,
            max_errors: 20,
            max_auth_failures: 3,
            max_received_headers: 50,
            command_timeout: Duration::secs(300),
            data_timeout: Duration::secs(180),
            min_data_rate: 1024,
            max_message_memory: 256 * 1024 * 1024,
            password_checks: 2,
            max_auth_failures_per_address: 10,
            auth_failure_window: Duration::secs(300),
        }
    }
}

/// Where and how queued mail is delivered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// Queue entries delivered at the same time by one process.
    pub concurrency: usize,
    /// Connections open to one destination at the same time, across all delivery processes
    /// (unless an entry of `destinations` says otherwise).
    pub connections_per_destination: usize,
    /// Messages sent on one connection before it is closed; it is reused until then.
    pub max_messages_per_connection: usize,
    /// Messages per time to one destination, across all delivery processes: `100/s`,
    /// `600/min`, `5000/h`; none when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_per_destination: Option<Rate>,
    /// Messages that may go at once before `ratePerDestination` spaces them out.
    pub burst_per_destination: u32,
    /// Limits for some destinations, the first match applying: each groups every domain and
    /// MX host it matches into one destination.
    pub destinations: Vec<DestinationLimits>,
    /// When a destination as a whole stops being tried.
    pub backoff: BackoffConfig,
    /// Durable JetStream consumer shared by all delivery processes.
    pub consumer: String,
    /// Name sent with EHLO; `hostname` when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub helo_name: Option<String>,
    /// Fixed next hops per recipient domain, tried before the smarthost and MX lookup.
    pub routes: Vec<Route>,
    /// One upstream for every domain without a route, instead of MX lookup.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub smarthost: Option<Smarthost>,
    /// PEM certificates trusted for `tls: verify`, in addition to the system's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    pub retry: RetryConfig,
    pub timeouts: DeliveryTimeouts,
    /// Name servers for MX and address lookups; empty uses the system's (`/etc/resolv.conf`).
    pub dns: DnsConfig,
    /// Port of MX hosts.
    pub mx_port: u16,
    /// MTA-STS (RFC 8461) towards MX hosts.
    pub mta_sts: MtaStsConfig,
    /// TLS reports (RFC 8460) to the domains whose policies delivery applied.
    pub tls_rpt: TlsRptConfig,
    /// DANE (RFC 7672) towards MX hosts with TLSA records in DNSSEC-signed zones.
    pub dane: DaneConfig,
    /// A domain whose MX hosts a delivery process tries to reach on `mxPort` at start, to warn
    /// when outbound SMTP is blocked (as on most clouds and home networks); empty for no check.
    /// Not made when every domain has a route or there is a smarthost.
    pub egress_probe: String,
    /// How long an entry stays with a worker without an acknowledgement before JetStream hands
    /// it to another; attempts in progress renew it every third of this.
    pub ack_wait: Duration,
    /// Entries handed to workers and not yet acknowledged, across all delivery processes
    /// (the consumer's `max_ack_pending`). Waiting retries do not count: they are scheduled.
    pub max_ack_pending: i64,
    /// How often one entry may be handed to a worker without an outcome (an unrecorded result,
    /// a crash, an entry for a newer Postern) before it moves to the dead-letter stream.
    pub max_deliveries: i64,
}

/// Limits for the destinations one pattern matches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DestinationLimits {
    /// `example.com`, `*.google.com` (any name below it) or `*`, matched against the recipient
    /// domain, each of its MX hosts, and a route's or the smarthost's host.
    #[serde(rename = "match")]
    pub pattern: String,
    /// Connections at the same time across all delivery processes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages_per_connection: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<Rate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// STARTTLS towards the MX hosts of the destinations it matches, instead of MX delivery's
    /// opportunistic default. Routes and the smarthost keep their own `tls`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<OutboundTls>,
}

/// When a destination as a whole is left alone for a while.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct BackoffConfig {
    /// Consecutive failures to reach a destination (connections refused or timed out, 421s,
    /// 4xx greetings) after which no process connects to it until the backoff ends.
    pub after_failures: u32,
    /// The first backoff; each further failure doubles it, up to `max`.
    pub initial: Duration,
    pub max: Duration,
    /// How long a destination that asked to slow down (421 4.7.28, 451 4.7.650 ...) is held
    /// to half its rate and connections; each further request halves them again.
    pub slow_down: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            after_failures: 3,
            initial: Duration::secs(30),
            max: Duration::secs(1800),
            slow_down: Duration::secs(600),
        }
    }
}

/// A number of messages per period, with a burst of as many at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub messages: u32,
    pub per: std::time::Duration,
}

impl Rate {
    /// The time between two messages.
    pub fn interval(&self) -> std::time::Duration {
        self.per / self.messages.max(1)
    }
}

impl std::str::FromStr for Rate {
    type Err = String;
    fn from_str(text: &str) -> Result<Rate, String> {
        let error = || format!("{text:?} is not a rate such as 10/s, 600/min or 5000/h");
        let (count, unit) = text.trim().split_once('/').ok_or_else(error)?;
        let messages: u32 = count.trim().parse().map_err(|_| error())?;
        let per = match unit.trim() {
            "s" | "sec" | "second" => 1,
            "m" | "min" | "minute" => 60,
            "h" | "hour" => 3600,
            "d" | "day" => 86_400,
            _ => return Err(error()),
        };
        if messages == 0 {
            return Err(format!("{text:?}: a rate must allow at least one message"));
        }
        Ok(Rate {
            messages,
            per: std::time::Duration::from_secs(per),
        })
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unit = match self.per.as_secs() {
            1 => "s",
            60 => "min",
            3600 => "h",
            _ => "d",
        };
        write!(f, "{}/{unit}", self.messages)
    }
}

impl Serialize for Rate {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Rate, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// MTA-STS: recipient domains that publish a policy get mail only at the MX hosts it lists, over
/// TLS with a certificate valid for them (`enforce`), or as before with what failed reported
/// (`testing`). Policies are cached in NATS KV for every delivery process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct MtaStsConfig {
    pub enabled: bool,
    /// The whole fetch of a policy over HTTPS: address lookup, connection, TLS, the file.
    pub fetch_timeout: Duration,
    /// Port of the policy servers (`https://mta-sts.<domain>/`); 443 but for tests.
    pub port: u16,
}

impl Default for MtaStsConfig {
    fn default() -> Self {
        MtaStsConfig {
            enabled: true,
            fetch_timeout: Duration::secs(15),
            port: 443,
        }
    }
}

/// DANE: an MX host whose address and TLSA records (`_<port>._tcp.<host>`) validate with
/// DNSSEC, under MX records that do, gets mail only over TLS with a certificate those records
/// match; a TLSA answer that fails validation keeps mail from that host. Lookups are validated
/// by Postern itself, so the resolver upstream must pass DNSSEC records on; a start-up check
/// (`probe`) turns DANE off with a warning when it does not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct DaneConfig {
    pub enabled: bool,
    /// DNSKEY records (zone-file lines) to trust instead of the IANA root keys.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trust_anchor_file: Option<PathBuf>,
    /// A signed name whose SOA record must validate for DANE to be on; the root zone but for
    /// tests.
    pub probe: String,
}

impl Default for DaneConfig {
    fn default() -> Self {
        DaneConfig {
            enabled: true,
            trust_anchor_file: None,
            probe: ".".to_string(),
        }
    }
}

/// TLS reporting: sessions to domains with an MTA-STS policy are counted (across every delivery
/// process, in NATS KV) and once a period an aggregate report goes to each domain that asks for
/// it in its `_smtp._tls` TXT record, by mail or HTTPS POST.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct TlsRptConfig {
    pub enabled: bool,
    /// `organization-name` of the reports; `hostname` when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub organization: Option<String>,
    /// `contact-info` of the reports; `postmaster@<hostname>` when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contact: Option<String>,
    /// The time one report covers, from midnight UTC; a day (RFC 8460 §4.1), but for tests.
    pub period: Duration,
}

impl Default for TlsRptConfig {
    fn default() -> Self {
        TlsRptConfig {
            enabled: true,
            organization: None,
            contact: None,
            period: Duration::secs(86_400),
        }
    }
}

/// Name servers for delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct DnsConfig {
    /// `ip:port` of each name server.
    pub nameservers: Vec<SocketAddr>,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            concurrency: 100,
            connections_per_destination: 20,
            max_messages_per_connection: 100,
            rate_per_destination: None,
            burst_per_destination: 1,
            destinations: Vec::new(),
            backoff: BackoffConfig::default(),
            consumer: "postern-delivery".to_string(),
            helo_name: None,
            routes: Vec::new(),
            smarthost: None,
            ca_file: None,
            retry: RetryConfig::default(),
            timeouts: DeliveryTimeouts::default(),
            dns: DnsConfig::default(),
            mx_port: 25,
            mta_sts: MtaStsConfig::default(),
            tls_rpt: TlsRptConfig::default(),
            dane: DaneConfig::default(),
            egress_probe: "gmail.com".to_string(),
            ack_wait: Duration::secs(60),
            max_ack_pending: 100_000,
            max_deliveries: 20,
        }
    }
}

/// A fixed next hop for a recipient domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Route {
    /// `example.com` (exact), `*.example.com` (subdomains) or `*` (everything).
    pub domain: String,
    /// `host:port` of the next hop.
    pub host: String,
    #[serde(default)]
    pub tls: OutboundTls,
}

/// An upstream relay (a cloud relay or a corporate gateway) that takes all mail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Smarthost {
    /// `host:port`, such as `smtp.example.net:587`.
    pub host: String,
    /// A file whose first line is `username:password`, for AUTH PLAIN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_file: Option<PathBuf>,
    #[serde(default = "verify_tls")]
    pub tls: OutboundTls,
}

fn verify_tls() -> OutboundTls {
    OutboundTls::Verify
}

/// How delivery uses STARTTLS towards a next hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum OutboundTls {
    /// STARTTLS when offered, any certificate accepted; plaintext when the handshake fails.
    #[default]
    Opportunistic,
    /// STARTTLS must succeed (any certificate accepted), else the attempt is deferred.
    Required,
    /// STARTTLS must succeed with a certificate valid for the host name, issued by a CA the
    /// system trusts or one in `delivery.caFile`.
    Verify,
    /// Plaintext only.
    None,
    /// Only over DANE (MX hosts): a host without usable TLSA records in a signed zone gets no
    /// mail.
    #[serde(rename = "dane-only")]
    DaneOnly,
}

/// RFC 5321 §4.5.3.2 client timeouts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct DeliveryTimeouts {
    pub connect: Duration,
    /// Waiting for the 220 greeting.
    pub greeting: Duration,
    /// Waiting for the reply to EHLO, STARTTLS, MAIL, RCPT, RSET or QUIT.
    pub command: Duration,
    /// Waiting for the 354 after DATA.
    pub data_init: Duration,
    /// Writing one block of the body.
    pub data_block: Duration,
    /// Waiting for the reply after the final dot.
    pub data_end: Duration,
    /// How long an open session waits for the next message to the same next hop before it is
    /// closed with QUIT.
    pub idle: Duration,
}

impl Default for DeliveryTimeouts {
    fn default() -> Self {
        DeliveryTimeouts {
            connect: Duration::secs(30),
            greeting: Duration::secs(300),
            command: Duration::secs(300),
            data_init: Duration::secs(120),
            data_block: Duration::secs(180),
            data_end: Duration::secs(600),
            idle: Duration::secs(30),
        }
    }
}

/// When temporary failures are retried.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Delays between attempts; the last one repeats.
    pub schedule: Vec<Duration>,
    /// Age after which a message still not delivered is bounced.
    pub max_age: Duration,
    /// Age after which the sender of a message still being retried gets a delay report, when
    /// it asked for one (NOTIFY=DELAY); zero sends none.
    pub delay_warning: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            schedule: [60, 300, 900, 3600, 14_400]
                .into_iter()
                .map(Duration::secs)
                .collect(),
            max_age: Duration::secs(5 * 86_400),
            delay_warning: Duration::secs(4 * 3600),
        }
    }
}

/// A sending domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DomainConfig {
    pub name: String,
    /// Keys that sign messages whose From address is in this domain; each adds a signature.
    #[serde(default)]
    pub dkim: Vec<DkimKeyConfig>,
}

/// One DKIM key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DkimKeyConfig {
    /// Published at `<selector>._domainkey.<domain>`.
    pub selector: String,
    pub algorithm: DkimAlgorithm,
    /// PEM private key (PKCS#8, or PKCS#1 for RSA); reloaded when the file changes.
    pub key_file: PathBuf,
}

/// DKIM signing algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum DkimAlgorithm {
    /// ed25519-sha256 (RFC 8463).
    Ed25519,
    /// rsa-sha256.
    Rsa,
}

/// The HTTP endpoint for probes and metrics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct AdminConfig {
    pub address: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            address: SocketAddr::from(([127, 0, 0, 1], 9090)),
        }
    }
}

/// Logging.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LogConfig {
    #[serde(default)]
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `postern_relay=debug,info`; `RUST_LOG` overrides it.
    #[serde(default = "default_log_level")]
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::default(),
            level: default_log_level(),
        }
    }
}

/// Trace export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TelemetryConfig {
    /// OTLP/HTTP collector base URL such as `http://otel-collector:4318`; spans go to
    /// `<otlpEndpoint>/v1/traces`. Absent: no export.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the exported spans.
    #[serde(default = "default_service_name")]
    pub service_name: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            otlp_endpoint: None,
            service_name: default_service_name(),
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The seeds of a `nats.url`: one URL, or several separated by commas (as NATS clients take
/// them), each trimmed.
pub fn nats_seeds(url: &str) -> Vec<&str> {
    url.split(',')
        .map(str::trim)
        .filter(|seed| !seed.is_empty())
        .collect()
}

/// The local nats-server that `postern standalone` runs when `nats.url` is absent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct StandaloneConfig {
    /// Path of the nats-server binary, or a name looked up in PATH.
    pub nats_server: PathBuf,
    /// JetStream storage directory.
    pub data_dir: PathBuf,
    /// Client port on 127.0.0.1; 0 lets nats-server choose one.
    pub nats_port: u16,
    /// When JetStream writes what it stored to disk (fsync): `always`, before each
    /// acknowledgement, so a 250 survives a power loss; or an interval (nats-server's default,
    /// `2m`), faster, so a power loss can take what was accepted since the last sync.
    pub sync: Sync,
}

/// When nats-server syncs JetStream files to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sync {
    /// Before every acknowledgement.
    Always,
    /// Every so often.
    Every(Duration),
}

impl Default for Sync {
    fn default() -> Self {
        Sync::Every(Duration::secs(120))
    }
}

impl std::fmt::Display for Sync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Sync::Always => f.write_str("always"),
            Sync::Every(every) => write!(f, "{every}"),
        }
    }
}

impl Serialize for Sync {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl Sync {
    /// True when syncing like this loses no more than `required` allows: `always` meets
    /// everything, an interval meets any interval as long or longer.
    pub fn meets(self, required: Sync) -> bool {
        match (self, required) {
            (Sync::Always, _) => true,
            (Sync::Every(_), Sync::Always) => false,
            (Sync::Every(every), Sync::Every(limit)) => every <= limit,
        }
    }

    /// What is wrong with this setting, if anything: a zero interval means nothing.
    pub fn problem(self) -> Option<&'static str> {
        matches!(self, Sync::Every(every) if every.get().is_zero())
            .then_some("must be always or a duration greater than zero")
    }
}

/// A sync setting that is neither `always` nor a duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is neither always nor a duration such as 2m")]
pub struct SyncError(String);

impl std::str::FromStr for Sync {
    type Err = SyncError;

    fn from_str(text: &str) -> Result<Sync, SyncError> {
        if text == "always" {
            return Ok(Sync::Always);
        }
        text.parse::<Duration>()
            .map(Sync::Every)
            .map_err(|_| SyncError(text.to_string()))
    }
}

impl<'de> Deserialize<'de> for Sync {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Sync, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl Default for StandaloneConfig {
    fn default() -> Self {
        StandaloneConfig {
            nats_server: "nats-server".into(),
            data_dir: "data".into(),
            nats_port: 4222,
            sync: Sync::default(),
        }
    }
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            url: None,
            credentials_file: None,
            token_file: None,
            ca_file: None,
            stream: default_stream(),
            subject_prefix: default_subject_prefix(),
            body_stream: default_body_stream(),
            replicas: default_replicas(),
            ack_timeout: default_ack_timeout(),
            inline_body_limit: default_inline_body_limit(),
            duplicate_window: default_duplicate_window(),
        }
    }
}

impl Default for IngressConfig {
    fn default() -> Self {
        IngressConfig {
            listeners: default_listeners(),
            tls: None,
            allowed_networks: default_allowed_networks(),
            users_file: None,
            sender_domains: Vec::new(),
            trusted_proxies: Vec::new(),
            bare_line_endings: BareLineEndings::default(),
            limits: Limits::default(),
            listen_backlog: default_listen_backlog(),
            pregreet: Pregreet::default(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            hostname: default_hostname(),
            nats: NatsConfig::default(),
            ingress: IngressConfig::default(),
            delivery: DeliveryConfig::default(),
            suppression: SuppressionConfig::default(),
            events: EventsConfig::default(),
            domains: Vec::new(),
            domains_file: None,
            reload_interval: default_reload_interval(),
            admin: AdminConfig::default(),
            log: LogConfig::default(),
            telemetry: TelemetryConfig::default(),
            standalone: StandaloneConfig::default(),
            shutdown_grace: default_shutdown_grace(),
        }
    }
}

impl Config {
    /// Parses and validates a YAML document.
    pub fn from_yaml(text: &str) -> Result<Config, ConfigError> {
        let config: Config =
            serde_saphyr::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// How long large bodies are kept in the object store: a day longer than any message
    /// lives (`delivery.retry.maxAge`), whatever happens to the workers.
    pub fn body_ttl(&self) -> std::time::Duration {
        self.delivery.retry.max_age.get() + std::time::Duration::from_secs(86_400)
    }

    /// The YAML form, as the operator writes it into a ConfigMap.
    pub fn to_yaml(&self) -> Result<String, ConfigError> {
        serde_saphyr::to_string(self).map_err(|e| ConfigError::Parse(e.to_string()))
    }
}

impl DomainConfig {
    /// Parses the contents of a domains file (`domainsFile`): a YAML list of domains.
    pub fn list_from_yaml(text: &str) -> Result<Vec<DomainConfig>, ConfigError> {
        serde_saphyr::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))
    }

    /// The YAML form of a domains file, as the operator writes it.
    pub fn list_to_yaml(domains: &[DomainConfig]) -> Result<String, ConfigError> {
        serde_saphyr::to_string(&domains).map_err(|e| ConfigError::Parse(e.to_string()))
    }
}

fn default_hostname() -> String {
    "localhost".to_string()
}
fn default_stream() -> String {
    "POSTERN_QUEUE".to_string()
}
fn default_subject_prefix() -> String {
    "postern.queue".to_string()
}
fn default_body_stream() -> String {
    "POSTERN_BODIES".to_string()
}
fn default_replicas() -> usize {
    1
}
fn default_ack_timeout() -> Duration {
    Duration::secs(5)
}
fn default_inline_body_limit() -> usize {
    256 * 1024
}
fn default_duplicate_window() -> Duration {
    Duration::secs(120)
}
fn default_listeners() -> Vec<Listener> {
    vec![Listener {
        address: SocketAddr::from(([127, 0, 0, 1], 2525)),
        tls: ListenerTls::None,
        allow_plaintext_auth: false,
        proxy_protocol: false,
    }]
}
fn default_allowed_networks() -> Vec<IpNet> {
    ["127.0.0.0/8", "::1/128"]
        .iter()
        .filter_map(|n| n.parse().ok())
        .collect()
}
fn default_listen_backlog() -> u32 {
    4096
}
fn default_reload_interval() -> Duration {
    Duration::secs(10)
}
fn default_log_level() -> String {
    "info".to_string()
}
fn default_service_name() -> String {
    "postern".to_string()
}
fn default_shutdown_grace() -> Duration {
    Duration::secs(25)
}

#[cfg(test)]
mod tests {
    use super::{Duration, Sync};

    #[test]
    fn always_meets_every_requirement_and_an_interval_only_longer_ones() {
        let every = |secs| Sync::Every(Duration::secs(secs));
        assert!(Sync::Always.meets(Sync::Always));
        assert!(Sync::Always.meets(every(1)));
        assert!(!every(1).meets(Sync::Always));
        assert!(every(10).meets(every(10)));
        assert!(every(10).meets(every(60)));
        assert!(!every(60).meets(every(10)));
        assert_eq!("always".parse(), Ok(Sync::Always));
        assert_eq!("2m".parse(), Ok(every(120)));
        assert!("sometimes".parse::<Sync>().is_err());
    }
}
