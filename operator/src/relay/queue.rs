//! JetStream provisioning: the operator creates or updates a Relay's stream, body buckets and
//! delivery consumer, and reads the queue lag for status.

use std::collections::HashMap;
use std::time::Duration;

use postern_config::Config;
use postern_queue::{Queue, QueueCounts, QueueError};
use tokio::sync::Mutex;

/// How long one provisioning round may take before the queue is reported not ready.
const PROVISION_TIMEOUT: Duration = Duration::from_secs(15);

/// Why the queue is not ready.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("NATS at {url}: {source}")]
    Connect { url: String, source: QueueError },
    #[error("{0}")]
    Queue(#[from] QueueError),
    #[error("reading consumer {consumer}: {message}")]
    Consumer { consumer: String, message: String },
    #[error("NATS did not answer within {0:?}")]
    Timeout(Duration),
}

impl ProvisionError {
    /// The condition reason.
    pub fn reason(&self) -> &'static str {
        match self {
            ProvisionError::Connect { .. } | ProvisionError::Timeout(_) => "NatsUnreachable",
            ProvisionError::Queue(_) | ProvisionError::Consumer { .. } => "StreamError",
        }
    }
}

/// How the operator authenticates to a Relay's NATS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NatsAuth {
    /// A `.creds` file (JWT and NKey seed).
    Credentials(String),
    /// A token.
    Token(String),
}

impl NatsAuth {
    /// The NATS authentication held by a Secret value read for `key` (the `.creds` key or
    /// the token key); none for other keys.
    pub fn from_secret(key: &str, content: &[u8]) -> Option<NatsAuth> {
        let text = String::from_utf8_lossy(content);
        match key {
            super::names::NATS_CREDS_KEY => Some(NatsAuth::Credentials(text.into_owned())),
            super::names::NATS_TOKEN_KEY => Some(NatsAuth::Token(text.trim().to_string())),
            _ => None,
        }
    }

    fn key(auth: Option<&NatsAuth>) -> String {
        match auth {
            None => String::new(),
            Some(NatsAuth::Credentials(c)) => crate::meta::hash(&[b"creds", c.as_bytes()]),
            Some(NatsAuth::Token(t)) => crate::meta::hash(&[b"token", t.as_bytes()]),
        }
    }
}

/// How the operator reaches a Relay's NATS: credentials or a token, and the authority that
/// signs its certificates when it speaks TLS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatsAccess {
    pub auth: Option<NatsAuth>,
    /// PEM certificate(s) of the CA.
    pub ca: Option<String>,
}

impl NatsAccess {
    fn key(&self) -> String {
        let ca = self.ca.as_deref().unwrap_or_default();
        format!(
            "{}\n{}",
            NatsAuth::key(self.auth.as_ref()),
            crate::meta::hash(&[ca.as_bytes()])
        )
    }

    /// A TLS client config that trusts only the CA, if there is one.
    fn tls(&self) -> Result<Option<rustls::ClientConfig>, String> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let Some(pem) = &self.ca else {
            return Ok(None);
        };
        let mut roots = rustls::RootCertStore::empty();
        for certificate in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            let certificate = certificate.map_err(|e| format!("the NATS CA: {e}"))?;
            roots
                .add(certificate)
                .map_err(|e| format!("the NATS CA: {e}"))?;
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Some(config))
    }
}

/// NATS connections, one per URL, stream and credentials, kept between reconciles.
#[derive(Debug, Default)]
pub struct Queues {
    connections: Mutex<HashMap<String, Queue>>,
}

impl Queues {
    /// Creates or updates the stream, buckets and consumer of `config`; returns how much of the
    /// queue is ready, in flight, waiting and dead.
    pub async fn provision(
        &self,
        config: &Config,
        access: &NatsAccess,
    ) -> Result<QueueCounts, ProvisionError> {
        tokio::time::timeout(PROVISION_TIMEOUT, self.provision_now(config, access))
            .await
            .map_err(|_| ProvisionError::Timeout(PROVISION_TIMEOUT))?
    }

    /// Deletes the stream and body buckets of `config`.
    pub async fn delete(&self, config: &Config, access: &NatsAccess) -> Result<(), ProvisionError> {
        let queue = self.queue(config, access).await?;
        tokio::time::timeout(PROVISION_TIMEOUT, queue.delete())
            .await
            .map_err(|_| ProvisionError::Timeout(PROVISION_TIMEOUT))??;
        Ok(())
    }

    async fn provision_now(
        &self,
        config: &Config,
        access: &NatsAccess,
    ) -> Result<QueueCounts, ProvisionError> {
        let queue = self.queue(config, access).await?;
        queue.provision().await?;
        let consumer_name = &config.delivery.consumer;
        let mut consumer = queue
            .consumer(
                consumer_name,
                config.delivery.ack_wait.get(),
                config.delivery.max_ack_pending,
                2 * config.delivery.max_deliveries,
            )
            .await?;
        queue
            .counts(&mut consumer)
            .await
            .map_err(|e| ProvisionError::Consumer {
                consumer: consumer_name.clone(),
                message: e.to_string(),
            })
    }

    async fn queue(&self, config: &Config, access: &NatsAccess) -> Result<Queue, ProvisionError> {
        let url = config.nats.url.clone().unwrap_or_default();
        let key = format!("{url}\n{}\n{}", config.nats.stream, access.key());
        let mut connections = self.connections.lock().await;
        if let Some(queue) = connections.get(&key) {
            return Ok(queue.clone());
        }
        let mut options = async_nats::ConnectOptions::new()
            .name("postern-operator")
            .connection_timeout(Duration::from_secs(5));
        match &access.auth {
            Some(NatsAuth::Credentials(credentials)) => {
                options =
                    options
                        .credentials(credentials)
                        .map_err(|e| ProvisionError::Connect {
                            url: url.clone(),
                            source: QueueError::Credentials(e),
                        })?;
            }
            Some(NatsAuth::Token(token)) => options = options.token(token.clone()),
            None => {}
        }
        let tls = access.tls().map_err(|message| ProvisionError::Connect {
            url: url.clone(),
            source: QueueError::Tls {
                path: "(spec.nats.caSecret)".into(),
                message,
            },
        })?;
        if let Some(tls) = tls {
            options = options.tls_client_config(tls).require_tls(true);
        }
        let queue = Queue::connect_with(&url, &config.nats, config.body_ttl(), options)
            .await
            .map_err(|source| ProvisionError::Connect {
                url: url.clone(),
                source,
            })?;
        connections.insert(key, queue.clone());
        Ok(queue)
    }
}
