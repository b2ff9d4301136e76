//! JetStream provisioning: the operator creates or updates a Relay's stream, body buckets and
//! delivery consumer, and reads the queue lag for status.

use std::collections::HashMap;
use std::time::Duration;

use postern_config::Config;
use postern_relay::queue::{Queue, QueueError};
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

/// NATS connections, one per URL, stream and credentials, kept between reconciles.
#[derive(Debug, Default)]
pub struct Queues {
    connections: Mutex<HashMap<String, Queue>>,
}

impl Queues {
    /// Creates or updates the stream, buckets and consumer of `config`; returns the number of
    /// messages not yet handed to a delivery pod.
    pub async fn provision(
        &self,
        config: &Config,
        auth: Option<&NatsAuth>,
    ) -> Result<u64, ProvisionError> {
        tokio::time::timeout(PROVISION_TIMEOUT, self.provision_now(config, auth))
            .await
            .map_err(|_| ProvisionError::Timeout(PROVISION_TIMEOUT))?
    }

    /// Deletes the stream and body buckets of `config`.
    pub async fn delete(
        &self,
        config: &Config,
        auth: Option<&NatsAuth>,
    ) -> Result<(), ProvisionError> {
        let queue = self.queue(config, auth).await?;
        tokio::time::timeout(PROVISION_TIMEOUT, queue.delete())
            .await
            .map_err(|_| ProvisionError::Timeout(PROVISION_TIMEOUT))??;
        Ok(())
    }

    async fn provision_now(
        &self,
        config: &Config,
        auth: Option<&NatsAuth>,
    ) -> Result<u64, ProvisionError> {
        let queue = self.queue(config, auth).await?;
        queue.provision().await?;
        let consumer_name = &config.delivery.consumer;
        let mut consumer = queue
            .consumer(consumer_name, config.delivery.ack_wait.get())
            .await?;
        let info = consumer
            .info()
            .await
            .map_err(|e| ProvisionError::Consumer {
                consumer: consumer_name.clone(),
                message: e.to_string(),
            })?;
        Ok(info.num_pending)
    }

    async fn queue(
        &self,
        config: &Config,
        auth: Option<&NatsAuth>,
    ) -> Result<Queue, ProvisionError> {
        let url = config.nats.url.clone().unwrap_or_default();
        let key = format!("{url}\n{}\n{}", config.nats.stream, NatsAuth::key(auth));
        let mut connections = self.connections.lock().await;
        if let Some(queue) = connections.get(&key) {
            return Ok(queue.clone());
        }
        let mut options = async_nats::ConnectOptions::new()
            .name("postern-operator")
            .connection_timeout(Duration::from_secs(5));
        match auth {
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
