//! The `Relay` resource: one Postern installation (ingress and delivery pods, their config and
//! queue).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::SecretKeyRef;

/// Pattern of a duration in Postern's notation (`250ms`, `30s`, `5m`, `4h`, `5d`).
pub const DURATION_PATTERN: &str = r"^[0-9]+(ms|s|m|h|d)$";

/// Pattern of `nats.sync`: `always` or a duration.
pub const SYNC_PATTERN: &str = r"^(always|[0-9]+(ms|s|m|h|d))$";

/// A Postern mail relay: SMTP ingress pods that queue mail in NATS JetStream and delivery pods
/// that send it on.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "postern.io",
    version = "v1alpha1",
    kind = "Relay",
    namespaced,
    status = "RelayStatus",
    category = "postern",
    doc = "A Postern mail relay: SMTP ingress, a JetStream queue and autoscaled delivery.",
    validation = Rule::new("size(self.metadata.name) <= 47").message("a Relay name has at most 47 characters: it names Services and Deployments"),
    printcolumn = r#"{"name": "Ready", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name": "Ingress", "type": "integer", "description": "Ready ingress pods", "jsonPath": ".status.ingressReplicas"}"#,
    printcolumn = r#"{"name": "Delivery", "type": "integer", "description": "Ready delivery pods", "jsonPath": ".status.deliveryReplicas"}"#,
    printcolumn = r#"{"name": "Queue", "type": "integer", "description": "Entries due now, not yet handed to a delivery pod", "jsonPath": ".status.queueLag"}"#,
    printcolumn = r#"{"name": "Waiting", "type": "integer", "description": "Retries scheduled for later", "jsonPath": ".status.queueWaiting"}"#,
    printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct RelaySpec {
    /// Container image holding the `postern` binary. Default: the image of the operator's release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Image pull policy of the relay pods. Default: IfNotPresent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["Always", "IfNotPresent", "Never"]))]
    pub image_pull_policy: Option<String>,
    /// Name in the SMTP greeting, the EHLO reply and Received headers, and in the TLS
    /// certificate. Default: `<relay>.<namespace>.svc`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(
        pattern = r"^[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*$"
    ))]
    pub hostname: Option<String>,
    /// Where the queue lives.
    #[serde(default)]
    pub nats: NatsSpec,
    /// The SMTP side that applications connect to.
    #[serde(default)]
    pub ingress: IngressSpec,
    /// The pods that deliver queued mail.
    #[serde(default)]
    pub delivery: DeliverySpec,
    /// Recipients that bounced as unknown, not tried again for a while.
    #[serde(default)]
    pub suppression: SuppressionSpec,
    /// Delivery events (the `<stream>_EVENTS` stream) and the webhooks fed from it.
    #[serde(default)]
    pub events: EventsSpec,
    /// Logs and traces.
    #[serde(default)]
    pub telemetry: TelemetrySpec,
}

/// The suppression list: a remote server's permanent "no such user" (5.1.1, 5.1.10) puts the
/// recipient on it, in NATS KV shared by every pod of the Relay.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SuppressionSpec {
    /// Default: true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// How long an entry stays on the list. Default: 30d.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub expiry: Option<String>,
    /// What a message to a suppressed recipient gets. Default: reject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<SuppressionActionSpec>,
}

/// Delivery events: one JSON event per recipient and outcome in the stream `<stream>_EVENTS`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventsSpec {
    /// Default: true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Events older than this are removed. Default: 7d.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub max_age: Option<String>,
    /// The stream keeps at most this many bytes. Default: 1 GiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_bytes: Option<i64>,
    /// HTTP endpoints that receive events in batches signed with HMAC-SHA256, sent by the
    /// delivery pods and retried until they are accepted (or `retryFor` old).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub webhooks: Vec<WebhookSpec>,
}

/// One webhook.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookSpec {
    /// Lower-case letters, digits and `-`; unique within the Relay.
    #[schemars(regex(pattern = r"^[a-z0-9-]{1,32}$"))]
    pub name: String,
    /// `https://host[:port]/path` (or `http://` inside the cluster). The certificate must be
    /// valid for the host from a CA the pods trust: the image's system roots, or `caSecret`.
    #[schemars(
        regex(pattern = r"^https?://[^\s/?#]+([/?][^\s]*)?$"),
        length(max = 2048)
    )]
    pub url: String,
    /// The event kinds it receives: received, delivered, deferred, bounced, expired,
    /// suppressed, dead_lettered. Default: all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 7))]
    pub kinds: Vec<String>,
    /// Secret whose key holds the signing secret. Default key: `secret`. Read for every
    /// batch, so a rotated Secret takes effect without restarting the pods.
    pub secret: SecretKeyRef,
    /// Secret whose key holds PEM certificates trusted for the endpoint, in addition to the
    /// system's (a cluster-internal CA). Default key: `ca.crt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret: Option<SecretKeyRef>,
    /// Events per POST at most. Default: 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub batch_size: Option<u32>,
    /// The whole POST. Default: 10s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub timeout: Option<String>,
    /// How long a batch is retried. Default: 72h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub retry_for: Option<String>,
}

/// What a message to a suppressed recipient gets.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum SuppressionActionSpec {
    /// RCPT gets `550 5.1.1`, saying since when the recipient is suppressed.
    Reject,
    /// RCPT is accepted; delivery bounces the recipient to the sender without an attempt.
    Bounce,
}

/// NATS JetStream connection and queue stream.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NatsSpec {
    /// Client URL of the NATS cluster, or several seeds separated by commas
    /// (`nats://a:4222,nats://b:4222`). Default: the operator's `--nats-url` (the Helm chart
    /// passes its own NATS), else `nats://nats:4222`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^(nats|tls)://[^\s]+$"), length(max = 2048))]
    pub url: Option<String>,
    /// NATS monitoring endpoint (`host:port`) read by KEDA's `nats-jetstream` scaler. Default:
    /// the operator's `--nats-monitoring-endpoint` when `url` is left out, else the host of `url`
    /// with port 8222.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitoring_endpoint: Option<String>,
    /// Secret holding a NATS `.creds` file. Default key: `nats.creds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<SecretKeyRef>,
    /// Secret holding the token of a NATS server that authorizes clients by token. Default key:
    /// `token`. Default: when `url` and both Secrets are left out, the token of the operator's
    /// NATS (`--nats-token-secret`; the Helm chart's), copied into `<relay>-nats-token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret: Option<SecretKeyRef>,
    /// Secret holding the certificate of the authority that signs the NATS servers'
    /// certificates; with it the pods and the operator connect over TLS verified against it.
    /// Default key: `ca.crt`. Default: when `url` is left out, the operator's
    /// (`--nats-ca-secret`; the Helm chart's when cert-manager issues its NATS a certificate),
    /// copied into `<relay>-nats-ca`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret: Option<SecretKeyRef>,
    /// JetStream stream name. Default: `POSTERN_<RELAY>` (upper case, `-` and `.` become `_`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Za-z0-9_-]{1,64}$"))]
    pub stream: Option<String>,
    /// Stream replicas: 1, 3 or 5. Default: the operator's `--stream-replicas` (the Helm chart
    /// passes what its NATS can hold), else 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = [1, 3, 5]))]
    pub stream_replicas: Option<u8>,
    /// What the NATS servers must do before JetStream acknowledges a message (and so before
    /// ingress answers 250): `always` (fsync each message: it survives a power loss of every
    /// server) or the longest interval between fsyncs they may use (nats-server's default is
    /// `2m`). The operator does not configure the servers (the Helm chart's
    /// `nats.jetstream.syncInterval` does); it reads the setting of every server behind
    /// `monitoringEndpoint` (`/varz`), reports the weakest in `status.natsSync`, and sets
    /// `QueueDurable` False, naming both, when it is weaker than this. Default: nothing is
    /// required; the setting is reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = SYNC_PATTERN))]
    pub sync: Option<String>,
    /// Delete the stream (and any mail still queued) when the Relay is deleted. Default: false,
    /// the stream is kept.
    #[serde(default)]
    pub delete_stream_with_relay: bool,
}

/// NATS URL of a Relay that names none, when the operator was given none either.
pub const FALLBACK_NATS_URL: &str = "nats://nats:4222";

impl NatsSpec {
    /// The client URL: `url`, else [`FALLBACK_NATS_URL`].
    pub fn url(&self) -> &str {
        self.url.as_deref().unwrap_or(FALLBACK_NATS_URL)
    }

    /// Stream replicas: `streamReplicas`, else 3.
    pub fn stream_replicas(&self) -> u8 {
        self.stream_replicas.unwrap_or(3)
    }
}

/// Replica bounds of an autoscaled Deployment. Either bound may be left out: a missing `min`
/// is the default (or `max`, if that is lower), a missing `max` the default (or `min`, if that
/// is higher).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.min) || !has(self.max) || self.min <= self.max").message("replicas.min must not exceed replicas.max"))]
pub struct Replicas {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub min: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max: Option<i32>,
}

impl Replicas {
    /// The bounds, filling in what is left out from `default` (min, max).
    pub fn bounds(&self, default: (i32, i32)) -> (i32, i32) {
        match (self.min, self.max) {
            (Some(min), Some(max)) => (min, max),
            (Some(min), None) => (min, default.1.max(min)),
            (None, Some(max)) => (default.0.min(max), max),
            (None, None) => default,
        }
    }
}

/// Default replica bounds of the ingress Deployment.
pub const INGRESS_REPLICAS: (i32, i32) = (2, 10);
/// Default replica bounds of the delivery Deployment.
pub const DELIVERY_REPLICAS: (i32, i32) = (1, 10);

/// Ingress pods and their Service.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IngressSpec {
    /// Bounds of the CPU autoscaler. Default: 2 to 10.
    #[serde(default)]
    pub replicas: Replicas,
    /// Average CPU use (percent of requests) the autoscaler aims for. Default: 70.
    #[serde(default = "default_cpu_target")]
    #[schemars(range(min = 1, max = 100))]
    pub target_cpu_utilization: i32,
    /// The Service clients connect to.
    #[serde(default)]
    pub service: ServiceSpec,
    /// SMTP listeners. Default: 25 (STARTTLS), 587 (STARTTLS), 465 (implicit TLS).
    #[serde(default = "default_listeners")]
    #[schemars(length(min = 1))]
    pub listeners: Vec<ListenerSpec>,
    /// The certificate served by the listeners. Default: a self-signed certificate.
    #[serde(default)]
    pub tls: TlsSpec,
    /// Client networks (CIDRs) that may relay without AUTH. Default: on a ClusterIP Service
    /// (in-cluster clients only) the private ranges 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16
    /// and fd00::/8; on a LoadBalancer or NodePort Service none, so every client authenticates
    /// (a balancer that rewrites source addresses makes internet clients look private).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 64)))]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self.all(n, isCIDR(n))", "message": "every entry must be a CIDR such as 10.0.0.0/8"}]))]
    pub allowed_networks: Option<Vec<String>>,
    /// Secret holding the users file (`name:<argon2 hash>` lines, made with
    /// `postern hash-password`); enables AUTH. Default key: `users`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users_secret: Option<SecretKeyRef>,
    /// Sender domains allowed in MAIL FROM. Default: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sender_domains: Vec<String>,
    /// Load balancer addresses (CIDRs) allowed to send PROXY protocol headers. Default: any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 64)))]
    #[schemars(extend("x-kubernetes-validations" = [{"rule": "self.all(n, isCIDR(n))", "message": "every entry must be a CIDR such as 10.0.0.0/8"}]))]
    pub trusted_proxies: Vec<String>,
    /// Limits on what clients control.
    #[serde(default)]
    pub limits: IngressLimits,
    /// CPU and memory of each ingress pod. Default: requests 100m / 128Mi, memory limit 512Mi.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Pods that may be down at once during voluntary disruptions. Default: 1.
    #[serde(default = "default_max_unavailable")]
    #[schemars(range(min = 1))]
    pub max_unavailable: i32,
}

impl Default for IngressSpec {
    fn default() -> Self {
        IngressSpec {
            replicas: Replicas::default(),
            target_cpu_utilization: default_cpu_target(),
            service: ServiceSpec::default(),
            listeners: default_listeners(),
            tls: TlsSpec::default(),
            allowed_networks: None,
            users_secret: None,
            sender_domains: Vec::new(),
            trusted_proxies: Vec::new(),
            limits: IngressLimits::default(),
            resources: None,
            max_unavailable: default_max_unavailable(),
        }
    }
}

fn default_cpu_target() -> i32 {
    70
}
fn default_max_unavailable() -> i32 {
    1
}
/// Networks that relay without AUTH when `allowedNetworks` is left out on a ClusterIP Service.
pub const PRIVATE_NETWORKS: [&str; 4] =
    ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fd00::/8"];

impl IngressSpec {
    /// `allowedNetworks`, or its default for the Service type.
    pub fn allowed_networks(&self) -> Vec<String> {
        match (&self.allowed_networks, self.service.type_) {
            (Some(networks), _) => networks.clone(),
            (None, ServiceType::ClusterIP) => PRIVATE_NETWORKS.map(String::from).to_vec(),
            (None, _) => Vec::new(),
        }
    }

    /// Why unauthenticated relaying may be open to any internet client, if it may: networks
    /// may relay without AUTH through a Service reachable from outside, on a listener that
    /// does not read client addresses from a PROXY header.
    pub fn relay_exposure(&self) -> Option<String> {
        let networks = self.allowed_networks();
        if self.service.type_ == ServiceType::ClusterIP || networks.is_empty() {
            return None;
        }
        let listeners: Vec<&str> = self
            .listeners
            .iter()
            .filter(|l| !l.proxy_protocol)
            .map(|l| l.name.as_str())
            .collect();
        if listeners.is_empty() {
            return None;
        }
        let rewrites = match self.service.external_traffic_policy {
            TrafficPolicy::Cluster => {
                "with externalTrafficPolicy Cluster every client arrives from a node address"
            }
            TrafficPolicy::Local if self.service.preserves_client_addresses => return None,
            TrafficPolicy::Local => {
                "a load balancer that rewrites source addresses makes internet clients arrive from its own addresses (set service.preservesClientAddresses if yours does not)"
            }
        };
        Some(format!(
            "{} relay without AUTH on the {:?} Service (listeners {}); {rewrites}, which may be in them. Require AUTH (allowedNetworks: []), use proxyProtocol listeners, or a ClusterIP Service",
            networks.join(", "),
            self.service.type_,
            listeners.join(", ")
        ))
    }
}
fn default_listeners() -> Vec<ListenerSpec> {
    vec![
        ListenerSpec::new("smtp", 25, ListenerTlsMode::Starttls),
        ListenerSpec::new("submission", 587, ListenerTlsMode::Starttls),
        ListenerSpec::new("submissions", 465, ListenerTlsMode::Implicit),
    ]
}

/// Kubernetes Service type of the ingress Service.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum ServiceType {
    #[default]
    ClusterIP,
    NodePort,
    LoadBalancer,
}

/// How external traffic is routed to ingress pods.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum TrafficPolicy {
    /// Only to pods on the node that received it: the client IP survives, so allowedNetworks
    /// means what it says.
    #[default]
    Local,
    /// To any pod; the client IP becomes a node's address.
    Cluster,
}

/// The ingress Service.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// Default: ClusterIP (reachable in the cluster only). LoadBalancer or NodePort expose the
    /// relay outside; see `allowedNetworks` for who may then relay without AUTH.
    #[serde(default, rename = "type")]
    pub type_: ServiceType,
    /// Default: Local (for NodePort and LoadBalancer), so client IPs survive.
    #[serde(default)]
    pub external_traffic_policy: TrafficPolicy,
    /// Annotations for the Service, such as a cloud load balancer's settings.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Source CIDRs allowed through a cloud load balancer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub load_balancer_source_ranges: Vec<String>,
    /// The load balancer passes client addresses through unchanged (for example an AWS NLB
    /// with instance targets and externalTrafficPolicy Local), so `allowedNetworks` on an
    /// exposed Service means what it says and is not warned about. Default: false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub preserves_client_addresses: bool,
}

/// TLS mode of a listener.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ListenerTlsMode {
    /// Plaintext only.
    None,
    /// Plaintext upgraded with STARTTLS.
    Starttls,
    /// TLS from the first byte.
    Implicit,
}

/// One SMTP port of the ingress Service.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ListenerSpec {
    /// Port name in the Service (a DNS label).
    #[schemars(regex(pattern = r"^[a-z]([a-z0-9-]{0,13}[a-z0-9])?$"))]
    pub name: String,
    /// Port of the Service.
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,
    /// Port inside the pod. Default: `port` + 10000 below 1024 (the pods run without
    /// privileges), else `port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1024, max = 65535))]
    pub container_port: Option<u16>,
    /// Default: starttls.
    #[serde(default = "default_listener_tls")]
    pub tls: ListenerTlsMode,
    /// Connections start with a PROXY protocol header from the load balancer (enable it there
    /// too, such as with a Service annotation), which keeps client addresses without
    /// `externalTrafficPolicy: Local`. Default: false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub proxy_protocol: bool,
}

fn default_listener_tls() -> ListenerTlsMode {
    ListenerTlsMode::Starttls
}

impl ListenerSpec {
    fn new(name: &str, port: u16, tls: ListenerTlsMode) -> Self {
        ListenerSpec {
            name: name.into(),
            port,
            container_port: None,
            tls,
            proxy_protocol: false,
        }
    }

    /// The port the relay listens on inside the pod.
    pub fn target_port(&self) -> u16 {
        match self.container_port {
            Some(port) => port,
            None if self.port < 1024 => self.port + 10_000,
            None => self.port,
        }
    }
}

/// Where the ingress certificate comes from: a cert-manager issuer, an existing Secret, or
/// (neither set) a self-signed certificate the operator renews.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.issuerRef) && has(self.secretName))").message("set tls.issuerRef or tls.secretName, not both"))]
pub struct TlsSpec {
    /// A cert-manager Issuer or ClusterIssuer that signs a Certificate for the relay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_ref: Option<IssuerRef>,
    /// An existing `kubernetes.io/tls` Secret (keys `tls.crt` and `tls.key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// More DNS names for the certificate, besides the hostname.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_names: Vec<String>,
}

/// A cert-manager issuer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuerRef {
    pub name: String,
    /// Issuer or ClusterIssuer. Default: Issuer.
    #[serde(default = "default_issuer_kind")]
    pub kind: String,
    /// Default: cert-manager.io.
    #[serde(default = "default_issuer_group")]
    pub group: String,
}

fn default_issuer_kind() -> String {
    "Issuer".into()
}
fn default_issuer_group() -> String {
    "cert-manager.io".into()
}

/// Limits on what clients control; absent fields keep Postern's defaults (see
/// docs/configuration.md).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IngressLimits {
    /// Largest message in bytes. Default: 52428800 (50 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1024))]
    pub max_message_size: Option<u64>,
    /// Recipients per message. Default: 1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_recipients: Option<u32>,
    /// Sessions per pod. Default: 10000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_connections: Option<u32>,
    /// Sessions per client IP per pod. Default: 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_connections_per_ip: Option<u32>,
}

/// Delivery pods.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliverySpec {
    /// Bounds of the autoscaler. Default: 1 to 10.
    #[serde(default)]
    pub replicas: Replicas,
    /// Queued messages per delivery pod before KEDA adds one (`nats-jetstream` lagThreshold).
    /// Default: 1000.
    #[serde(default = "default_lag_per_replica")]
    #[schemars(range(min = 1))]
    pub lag_per_replica: i64,
    /// CPU target of the fallback autoscaler used when KEDA is not installed. Default: 70.
    #[serde(default = "default_cpu_target")]
    #[schemars(range(min = 1, max = 100))]
    pub target_cpu_utilization: i32,
    /// Messages delivered at once by one pod. Default: 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub concurrency: Option<u32>,
    /// Connections open to one destination at once, across all delivery pods. Default: 20.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub connections_per_destination: Option<u32>,
    /// Messages per time to one destination across all delivery pods: `100/s`, `600/min`,
    /// `5000/h`. Default: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub rate_per_destination: Option<String>,
    /// Limits for the destinations a pattern matches, the first match applying; a pattern
    /// groups every domain and MX host it matches into one destination.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub destinations: Vec<DestinationSpec>,
    /// Name sent with EHLO. Default: the hostname.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub helo_name: Option<String>,
    /// Fixed next hops per recipient domain, tried before the smarthost and MX lookup.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteSpec>,
    /// One upstream for all mail without a route, instead of MX lookup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smarthost: Option<SmarthostSpec>,
    /// When temporary failures are retried.
    #[serde(default)]
    pub retry: RetrySpec,
    /// When a destination as a whole is left alone for a while.
    #[serde(default)]
    pub backoff: BackoffSpec,
    /// MTA-STS (RFC 8461) towards MX hosts.
    #[serde(default)]
    pub mta_sts: DeliveryMtaStsSpec,
    /// TLS reports (RFC 8460) to the domains whose MTA-STS policies delivery applied.
    #[serde(default)]
    pub tls_rpt: DeliveryTlsRptSpec,
    /// DANE (RFC 7672) towards MX hosts whose TLSA records validate with DNSSEC.
    #[serde(default)]
    pub dane: DeliveryDaneSpec,
    /// CPU and memory of each delivery pod. Default: requests 100m / 128Mi, memory limit 512Mi.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Pods that may be down at once during voluntary disruptions. Default: 1.
    #[serde(default = "default_max_unavailable")]
    #[schemars(range(min = 1))]
    pub max_unavailable: i32,
}

impl Default for DeliverySpec {
    fn default() -> Self {
        DeliverySpec {
            replicas: Replicas::default(),
            lag_per_replica: default_lag_per_replica(),
            target_cpu_utilization: default_cpu_target(),
            concurrency: None,
            connections_per_destination: None,
            rate_per_destination: None,
            destinations: Vec::new(),
            helo_name: None,
            routes: Vec::new(),
            smarthost: None,
            retry: RetrySpec::default(),
            backoff: BackoffSpec::default(),
            mta_sts: DeliveryMtaStsSpec::default(),
            tls_rpt: DeliveryTlsRptSpec::default(),
            dane: DeliveryDaneSpec::default(),
            resources: None,
            max_unavailable: default_max_unavailable(),
        }
    }
}

fn default_lag_per_replica() -> i64 {
    1000
}

/// MTA-STS towards MX hosts: a domain's `enforce` policy sends its mail only to the MX hosts it
/// lists, over TLS with a valid certificate; policies are shared by every delivery pod.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryMtaStsSpec {
    /// Default: true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
}

/// TLS reporting: daily aggregate reports of the sessions to each domain with an MTA-STS
/// policy, to the `rua` of its `_smtp._tls` record.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryTlsRptSpec {
    /// Default: true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// `organization-name` of the reports. Default: the hostname.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 200))]
    pub organization: Option<String>,
    /// `contact-info` of the reports. Default: postmaster@ the hostname.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 200))]
    pub contact: Option<String>,
}

/// DANE towards MX hosts: an MX host whose TLSA records validate with DNSSEC gets mail only over
/// TLS with a certificate they match, and a TLSA answer that fails validation keeps mail from
/// it. The pods validate answers themselves, so the cluster's resolver must pass DNSSEC records
/// on; when it does not, the pods say so at start and deliver without DANE.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryDaneSpec {
    /// Default: true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Secret whose key holds the DNSKEY records (zone-file lines) to trust instead of the IANA
    /// root keys, for a private DNSSEC root. Default key: `trust-anchors`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_anchor_secret: Option<SecretKeyRef>,
    /// A signed name whose SOA record must validate for DANE to be on. Default: `.` (the root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 254),
        regex(
            pattern = r"^(\.|[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?)$"
        )
    )]
    pub probe: Option<String>,
}

/// TLS towards a route or the smarthost.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum OutboundTlsMode {
    Opportunistic,
    Required,
    Verify,
    None,
}

/// TLS towards the MX hosts of a destination: a route's modes, and `dane-only`, which sends
/// mail only to MX hosts that DANE authenticates.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum DestinationTlsMode {
    Opportunistic,
    Required,
    Verify,
    None,
    #[serde(rename = "dane-only")]
    DaneOnly,
}

/// Limits for the destinations one pattern matches.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DestinationSpec {
    /// `example.com`, `*.google.com` (any name below it) or `*`, matched against the recipient
    /// domain, its MX hosts, and a route's or the smarthost's host.
    #[serde(rename = "match")]
    #[schemars(length(min = 1, max = 255))]
    pub pattern: String,
    /// Connections at once across all delivery pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub connections: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub messages_per_connection: Option<u32>,
    /// `100/s`, `600/min`, `5000/h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub rate: Option<String>,
    /// Messages that may go at once before the rate spaces them out. Default: 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub burst: Option<u32>,
    /// STARTTLS towards the MX hosts of the destinations it matches. Default: opportunistic.
    /// Routes and the smarthost keep their own `tls`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<DestinationTlsMode>,
}

/// A fixed next hop.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteSpec {
    /// `example.com`, `*.example.com` or `*`.
    #[schemars(length(min = 1))]
    pub domain: String,
    /// `host:port`.
    #[schemars(regex(pattern = r"^[^\s:]+:[0-9]{1,5}$"))]
    pub host: String,
    /// Default: opportunistic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<OutboundTlsMode>,
}

/// An upstream relay taking all mail.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SmarthostSpec {
    /// `host:port`, such as `smtp.example.net:587`.
    #[schemars(regex(pattern = r"^[^\s:]+:[0-9]{1,5}$"))]
    pub host: String,
    /// Secret whose key holds `username:password` for AUTH PLAIN. Default key: `credentials`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<SecretKeyRef>,
    /// Default: verify.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<OutboundTlsMode>,
}

/// Retry schedule.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetrySpec {
    /// Delays between attempts; the last one repeats. Default: 1m, 5m, 15m, 1h, 4h.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(regex(pattern = DURATION_PATTERN)))]
    pub schedule: Vec<String>,
    /// Age after which undelivered mail is bounced. Default: 5d.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub max_age: Option<String>,
    /// Age after which a sender that asked for it (NOTIFY=DELAY) gets one delay report for
    /// mail still being retried; 0s sends none. Default: 4h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub delay_warning: Option<String>,
}

/// When every delivery pod leaves a destination alone.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackoffSpec {
    /// Consecutive failures to reach a destination before its backoff. Default: 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub after_failures: Option<u32>,
    /// The first backoff, doubled by each failed probe. Default: 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub initial: Option<String>,
    /// The longest backoff. Default: 30m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub max: Option<String>,
    /// How long a destination that asked to slow down keeps halved limits. Default: 10m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION_PATTERN))]
    pub slow_down: Option<String>,
}

/// Logs and traces.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TelemetrySpec {
    /// OTLP/HTTP collector such as `http://otel-collector.observability:4318`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<String>,
    /// Log filter such as `info` or `postern_relay=debug,info`. Default: info.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,
}

/// What the operator observed and did.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RelayStatus {
    /// The generation these conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Progressing, Degraded, QueueReady, QueueDurable, CertificateReady and
    /// RelayRestricted.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Where clients connect: the Service's load balancer addresses or cluster DNS name, with
    /// each port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<String>,
    /// Ready ingress pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_replicas: Option<i32>,
    /// Ready delivery pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery_replicas: Option<i32>,
    /// Entries due now and not yet handed to a delivery pod (what KEDA scales on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_lag: Option<u64>,
    /// Retries scheduled for later: stored, but no delivery pod holds or fetches them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_waiting: Option<u64>,
    /// Entries delivery pods hold, not yet acknowledged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_in_flight: Option<u64>,
    /// Entries in the dead-letter stream (`<stream>_DEAD`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_dead_letters: Option<u64>,
    /// Seconds the oldest entry due now has waited for a delivery pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_oldest_ready_seconds: Option<u64>,
    /// The JetStream stream holding the queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// When the NATS servers fsync what JetStream stored, as read from their monitoring
    /// endpoint: `always` or the interval; the weakest when they differ.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nats_sync: Option<String>,
}
