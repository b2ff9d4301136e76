//! What reconcilers share: the API client, the event recorder, NATS connections, the DNS
//! resolver and the clock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Resource, ResourceExt};

use crate::domain::verify::TxtLookup;
use crate::relay::queue::Queues;

/// A Secret (and maybe a key of it) in any namespace: where the operator's NATS token or CA
/// certificate is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretSource {
    pub namespace: String,
    pub name: String,
    pub key: Option<String>,
}

impl SecretSource {
    /// The key, or `default` when none was given.
    pub fn key_or<'a>(&'a self, default: &'a str) -> &'a str {
        self.key.as_deref().unwrap_or(default)
    }
}

impl std::str::FromStr for SecretSource {
    type Err = String;

    /// `<namespace>/<name>` or `<namespace>/<name>/<key>`.
    fn from_str(text: &str) -> Result<SecretSource, String> {
        let parts: Vec<&str> = text.split('/').collect();
        match parts.as_slice() {
            [namespace, name, rest @ ..]
                if !namespace.is_empty() && !name.is_empty() && rest.len() <= 1 =>
            {
                Ok(SecretSource {
                    namespace: namespace.to_string(),
                    name: name.to_string(),
                    key: rest
                        .first()
                        .filter(|k| !k.is_empty())
                        .map(|k| k.to_string()),
                })
            }
            _ => Err("expected <namespace>/<secret name>[/<key>]".into()),
        }
    }
}

/// Shared state of the controllers.
pub struct Context {
    pub client: Client,
    pub queues: Queues,
    pub dns: Arc<dyn TxtLookup>,
    /// Scale delivery with KEDA when its CRD is installed (`--keda auto`); false never uses it.
    pub keda: bool,
    /// Image of relay pods whose Relay names none.
    pub relay_image: String,
    /// NATS of Relays that name none (`--nats-url`), and its monitoring endpoint.
    pub nats_url: Option<String>,
    pub nats_monitoring_endpoint: Option<String>,
    /// Stream replicas of Relays that set none (`--stream-replicas`).
    pub stream_replicas: Option<u8>,
    /// The token of the operator's NATS (`--nats-token-secret`), for Relays that name none.
    pub nats_token_secret: Option<SecretSource>,
    /// The CA certificate of the operator's NATS (`--nats-ca-secret`).
    pub nats_ca_secret: Option<SecretSource>,
    recorder: Recorder,
    clock: Box<dyn Fn() -> Timestamp + Send + Sync>,
    /// When each resource (by uid) last had all its objects applied regardless of hashes.
    resynced: Mutex<HashMap<String, Timestamp>>,
}

/// How often every object is applied even when unchanged, undoing edits made by others.
pub const RESYNC: k8s_openapi::jiff::SignedDuration =
    k8s_openapi::jiff::SignedDuration::from_mins(10);

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").finish_non_exhaustive()
    }
}

impl Context {
    /// A context on the real clock.
    pub fn new(client: Client, dns: Arc<dyn TxtLookup>) -> Self {
        Context::with_clock(client, dns, Box::new(Timestamp::now))
    }

    /// A context whose clock the caller controls (tests).
    pub fn with_clock(
        client: Client,
        dns: Arc<dyn TxtLookup>,
        clock: Box<dyn Fn() -> Timestamp + Send + Sync>,
    ) -> Self {
        let reporter = Reporter {
            controller: "postern-operator".into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            queues: Queues::default(),
            dns,
            resynced: Mutex::default(),
            keda: true,
            relay_image: crate::relay::build::DEFAULT_IMAGE.to_string(),
            nats_url: None,
            nats_monitoring_endpoint: None,
            stream_replicas: None,
            nats_token_secret: None,
            nats_ca_secret: None,
            clock,
        }
    }

    /// True (and remembered) when the resource with `uid` is due a full apply: on its first
    /// reconcile by this process and every [`RESYNC`] after.
    pub fn resync_due(&self, uid: &str) -> bool {
        let now = self.now();
        let mut resynced = self.resynced.lock().unwrap_or_else(|e| e.into_inner());
        let due = resynced.get(uid).is_none_or(|last| *last + RESYNC <= now);
        if due {
            resynced.insert(uid.to_string(), now);
        }
        due
    }

    /// The current time.
    pub fn now(&self) -> Timestamp {
        (self.clock)()
    }

    /// Publishes an event about `object`; failures are logged, never fatal.
    pub async fn event<K>(&self, object: &K, warning: bool, reason: &str, note: String)
    where
        K: Resource<DynamicType = ()>,
    {
        let event = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.into(),
            note: Some(note),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(err) = self.recorder.publish(&event, &object.object_ref(&())).await {
            tracing::warn!(%err, object = %object.name_any(), "publishing event");
        }
    }
}
