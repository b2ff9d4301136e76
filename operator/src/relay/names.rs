//! Names and places shared by the stages of the Relay reconciler: objects a Relay owns, keys
//! of the Secrets it reads, where pods mount them, and the stream. Every stage takes a name from
//! here, so none depends on another for it.

use kube::ResourceExt;

use crate::api::{Domain, Relay};

/// Port of `/healthz`, `/readyz` and `/metrics` in the pods.
pub const ADMIN_PORT: u16 = 9090;

/// Where the pods mount what the config names.
pub mod paths {
    pub const CONFIG_DIR: &str = "/etc/postern/config";
    pub const CONFIG_FILE: &str = "/etc/postern/config/config.yaml";
    pub const TLS_DIR: &str = "/etc/postern/tls";
    pub const USERS_DIR: &str = "/etc/postern/users";
    pub const NATS_DIR: &str = "/etc/postern/nats";
    pub const NATS_TOKEN_DIR: &str = "/etc/postern/nats-token";
    pub const NATS_CA_DIR: &str = "/etc/postern/nats-ca";
    pub const SMARTHOST_DIR: &str = "/etc/postern/smarthost";
    /// The DNSSEC trust anchors of `spec.delivery.dane.trustAnchorSecret`.
    pub const DANE_DIR: &str = "/etc/postern/dane";
    /// The signing Secret: the domains file and every active DKIM key.
    pub const SIGNING_DIR: &str = "/etc/postern/signing";
    pub const DOMAINS_FILE: &str = "/etc/postern/signing/domains.yaml";

    /// Where the secret of webhook `name` is mounted (read for every batch, so a rotated
    /// Secret reaches the pods without a restart).
    pub fn webhook_dir(name: &str) -> String {
        format!("/etc/postern/webhooks/{name}")
    }

    /// Where the CA certificates trusted for webhook `name` are mounted.
    pub fn webhook_ca_dir(name: &str) -> String {
        format!("/etc/postern/webhooks/{name}-ca")
    }
}

/// Key of the domains file in the signing Secret.
pub const DOMAINS_KEY: &str = "domains.yaml";

/// Key of the config file in the ConfigMap.
pub const CONFIG_KEY: &str = "config.yaml";
/// Durable consumer of the delivery pods.
pub const CONSUMER: &str = "postern-delivery";
/// Default key of each referenced Secret.
pub const USERS_KEY: &str = "users";
pub const NATS_CREDS_KEY: &str = "nats.creds";
pub const NATS_TOKEN_KEY: &str = "token";
pub const NATS_CA_KEY: &str = "ca.crt";
pub const SMARTHOST_KEY: &str = "credentials";
pub const WEBHOOK_SECRET_KEY: &str = "secret";
pub const DANE_TRUST_ANCHOR_KEY: &str = "trust-anchors";

/// The JetStream stream of a relay: `spec.nats.stream`, or `POSTERN_<NAME>`.
pub fn stream_name(relay: &Relay) -> String {
    relay.spec.nats.stream.clone().unwrap_or_else(|| {
        let name: String = relay
            .name_any()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect();
        format!("POSTERN_{name}")
    })
}

/// Name in greetings and certificates: `spec.hostname` or `<relay>.<namespace>.svc`.
pub fn hostname(relay: &Relay) -> String {
    relay.spec.hostname.clone().unwrap_or_else(|| {
        format!(
            "{}.{}.svc",
            relay.name_any(),
            relay.namespace().unwrap_or_else(|| "default".into())
        )
    })
}

/// Name of the Secret holding a Domain's DKIM keys.
pub fn dkim_secret_name(domain: &Domain) -> String {
    format!("{}-dkim", domain.name_any())
}

/// File name of a DKIM key in its Secret and in the pods.
pub fn dkim_key_file(selector: &str) -> String {
    format!("{selector}.pem")
}

/// Name of the Secret a Relay's ingress pods read their domains and DKIM keys from.
pub fn signing_secret_name(relay: &Relay) -> String {
    format!("{}-signing", relay.name_any())
}

/// File name of a Domain's key in the signing Secret: `<Domain name>.<selector>.pem`.
pub fn signing_key_file(domain: &Domain, selector: &str) -> String {
    format!("{}.{selector}.pem", domain.name_any())
}

/// Name of the Secret holding the operator's NATS CA certificate in a Relay's namespace.
pub fn nats_ca_secret_name(relay: &Relay) -> String {
    format!("{}-nats-ca", relay.name_any())
}

/// Name of the Secret holding the operator's NATS token in a Relay's namespace.
pub fn nats_token_secret_name(relay: &Relay) -> String {
    format!("{}-nats-token", relay.name_any())
}

/// The Secret with the ingress certificate: `spec.ingress.tls.secretName`, else `<relay>-tls`
/// (made by cert-manager or by the operator).
pub fn tls_secret_name(relay: &Relay) -> String {
    relay
        .spec
        .ingress
        .tls
        .secret_name
        .clone()
        .unwrap_or_else(|| format!("{}-tls", relay.name_any()))
}

/// The cert-manager Certificate of a Relay with `tls.issuerRef`.
pub fn certificate_name(relay: &Relay) -> String {
    format!("{}-tls", relay.name_any())
}

/// The ConfigMap holding `config.yaml`.
pub fn config_map_name(relay: &Relay) -> String {
    format!("{}-config", relay.name_any())
}

/// The Deployment (and autoscaler, disruption budget) of `component` (`ingress`, `delivery`).
pub fn workload_name(relay: &Relay, component: &str) -> String {
    format!("{}-{component}", relay.name_any())
}

/// The Service of the pods' admin ports.
pub fn metrics_service_name(relay: &Relay) -> String {
    format!("{}-metrics", relay.name_any())
}
