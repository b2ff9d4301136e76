//! The suppression list: recipients that bounced for good ("no such user"), kept in a NATS KV
//! bucket (`<stream>_SUPPRESSED`) that every ingress and delivery process of a relay shares.
//! Each entry expires `suppression.expiry` after it was last written (the bucket's age limit).

use std::time::Duration;

use async_nats::jetstream::kv;
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};

use crate::{Queue, QueueError, names};

/// One suppressed recipient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Suppressed {
    /// The address, in lower case.
    pub address: String,
    pub reason: Reason,
    /// When it was added, ms since the epoch.
    pub added_ms: u64,
    /// The reply that caused it, as `550 5.1.1 text`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<String>,
    /// The message whose bounce caused it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_id: Option<String>,
}

/// Why a recipient is on the list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Reason {
    /// A remote server refused it for good.
    Bounce,
    /// An administrator added it (`postern suppression add` or `import`).
    Manual,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Bounce => "bounce",
            Reason::Manual => "manual",
        }
    }
}

/// Why the list could not be read or changed.
#[derive(Debug, thiserror::Error)]
pub enum SuppressionError {
    #[error(transparent)]
    Bucket(#[from] QueueError),
    #[error("suppression list {bucket}: {source}")]
    Nats {
        bucket: String,
        source: async_nats::Error,
    },
    #[error("suppression list entry {key}: {source}")]
    Json {
        key: String,
        source: serde_json::Error,
    },
}

/// The suppression list of one relay. The bucket is created (or its expiry updated) on first use.
#[derive(Debug)]
pub struct SuppressionList {
    queue: Queue,
    bucket: String,
    expiry: Duration,
    store: tokio::sync::OnceCell<kv::Store>,
}

impl SuppressionList {
    pub fn new(queue: Queue, expiry: Duration) -> SuppressionList {
        SuppressionList {
            bucket: names::suppression_bucket(&queue.inner.config),
            queue,
            expiry,
            store: tokio::sync::OnceCell::new(),
        }
    }

    async fn store(&self) -> Result<&kv::Store, SuppressionError> {
        Ok(self
            .store
            .get_or_try_init(|| {
                self.queue.bucket(
                    self.bucket.clone(),
                    self.expiry,
                    "Postern suppression list: recipients not tried again, by address",
                )
            })
            .await?)
    }

    fn nats(&self, source: impl Into<async_nats::Error>) -> SuppressionError {
        SuppressionError::Nats {
            bucket: self.bucket.clone(),
            source: source.into(),
        }
    }

    /// The entry for `address`, if it is suppressed.
    pub async fn get(&self, address: &str) -> Result<Option<Suppressed>, SuppressionError> {
        let key = key(address);
        let Some(value) = self
            .store()
            .await?
            .get(&key)
            .await
            .map_err(|e| self.nats(e))?
        else {
            return Ok(None);
        };
        serde_json::from_slice(&value)
            .map(Some)
            .map_err(|source| SuppressionError::Json { key, source })
    }

    /// Adds `entry` (its address lower-cased), or renews it with the new facts.
    pub async fn add(&self, entry: &Suppressed) -> Result<(), SuppressionError> {
        let entry = Suppressed {
            address: entry.address.to_lowercase(),
            ..entry.clone()
        };
        let value = serde_json::to_vec(&entry).map_err(|source| SuppressionError::Json {
            key: key(&entry.address),
            source,
        })?;
        self.store()
            .await?
            .put(key(&entry.address), value.into())
            .await
            .map_err(|e| self.nats(e))?;
        Ok(())
    }

    /// Removes `address`; false if it was not on the list.
    pub async fn remove(&self, address: &str) -> Result<bool, SuppressionError> {
        if self.get(address).await?.is_none() {
            return Ok(false);
        }
        self.store()
            .await?
            .purge(key(address))
            .await
            .map_err(|e| self.nats(e))?;
        Ok(true)
    }

    /// Every entry, by address.
    pub async fn list(&self) -> Result<Vec<Suppressed>, SuppressionError> {
        let store = self.store().await?;
        let keys: Vec<String> = match store.keys().await {
            Ok(keys) => keys.try_collect().await.map_err(|e| self.nats(e))?,
            Err(err) => return Err(self.nats(err)),
        };
        let mut entries = Vec::with_capacity(keys.len());
        for key in keys {
            let Some(value) = store.get(&key).await.map_err(|e| self.nats(e))? else {
                continue;
            };
            match serde_json::from_slice(&value) {
                Ok(entry) => entries.push(entry),
                Err(source) => return Err(SuppressionError::Json { key, source }),
            }
        }
        entries.sort_by(|a: &Suppressed, b| a.address.cmp(&b.address));
        Ok(entries)
    }
}

/// The KV key of an address: lower case; letters, digits, `-` and `_` as they are, every other
/// byte as `=XX`, so any address makes one valid key and two addresses never share one.
pub fn key(address: &str) -> String {
    let mut key = String::with_capacity(address.len() + 8);
    for b in address.to_lowercase().bytes() {
        match b {
            b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' => key.push(char::from(b)),
            _ => key.push_str(&format!("={b:02x}")),
        }
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_valid_distinct_and_case_blind() {
        assert_eq!(key("Bob.Smith@Example.ORG"), "bob=2esmith=40example=2eorg");
        assert_eq!(key("bob.smith@example.org"), key("BOB.SMITH@EXAMPLE.ORG"));
        assert_ne!(key("a_b@x"), key("a=5fb@x"));
        assert_ne!(key("a.b@x"), key("a=2eb@x"));
        let utf8 = key("jörg@bücher.example");
        assert!(
            utf8.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_=".contains(&b)),
            "{utf8}"
        );
    }

    #[test]
    fn entries_are_compact_json() {
        let entry = Suppressed {
            address: "a@b.example".into(),
            reason: Reason::Bounce,
            added_ms: 1,
            reply: Some("550 5.1.1 no such user".into()),
            queue_id: None,
        };
        let json = serde_json::to_string(&entry).unwrap();
        assert_eq!(
            json,
            r#"{"address":"a@b.example","reason":"bounce","addedMs":1,"reply":"550 5.1.1 no such user"}"#
        );
        assert_eq!(serde_json::from_str::<Suppressed>(&json).unwrap(), entry);
    }
}
