//! A NATS KV bucket of JSON values that every process of a relay shares, created (or its age
//! limit updated) on first use: the suppression list and the MTA-STS policy cache.

use std::time::Duration;

use async_nats::jetstream::kv;
use futures::TryStreamExt;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Queue, QueueError};

/// Why a bucket could not be read or changed.
#[derive(Debug, thiserror::Error)]
pub enum BucketError {
    #[error(transparent)]
    Bucket(#[from] QueueError),
    #[error("KV bucket {bucket}: {source}")]
    Nats {
        bucket: String,
        source: async_nats::Error,
    },
    #[error("KV bucket {bucket}, key {key}: {source}")]
    Json {
        bucket: String,
        key: String,
        source: serde_json::Error,
    },
}

/// One bucket; each value expires `max_age` after it was last written.
#[derive(Debug)]
pub struct JsonBucket {
    queue: Queue,
    bucket: String,
    max_age: Duration,
    description: &'static str,
    store: tokio::sync::OnceCell<kv::Store>,
}

impl JsonBucket {
    pub fn new(
        queue: Queue,
        bucket: String,
        max_age: Duration,
        description: &'static str,
    ) -> JsonBucket {
        JsonBucket {
            queue,
            bucket,
            max_age,
            description,
            store: tokio::sync::OnceCell::new(),
        }
    }

    async fn store(&self) -> Result<&kv::Store, BucketError> {
        Ok(self
            .store
            .get_or_try_init(|| {
                self.queue
                    .bucket(self.bucket.clone(), self.max_age, self.description)
            })
            .await?)
    }

    fn nats(&self, source: impl Into<async_nats::Error>) -> BucketError {
        BucketError::Nats {
            bucket: self.bucket.clone(),
            source: source.into(),
        }
    }

    fn json(&self, key: &str, source: serde_json::Error) -> BucketError {
        BucketError::Json {
            bucket: self.bucket.clone(),
            key: key.to_string(),
            source,
        }
    }

    /// The value at `key`, if there is one.
    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, BucketError> {
        let Some(value) = self
            .store()
            .await?
            .get(key)
            .await
            .map_err(|e| self.nats(e))?
        else {
            return Ok(None);
        };
        serde_json::from_slice(&value)
            .map(Some)
            .map_err(|source| self.json(key, source))
    }

    /// Writes `value` at `key`.
    pub async fn put<T: Serialize>(&self, key: &str, value: &T) -> Result<(), BucketError> {
        let bytes = serde_json::to_vec(value).map_err(|source| self.json(key, source))?;
        self.store()
            .await?
            .put(key, bytes.into())
            .await
            .map_err(|e| self.nats(e))?;
        Ok(())
    }

    /// Removes `key` and its history.
    pub async fn purge(&self, key: &str) -> Result<(), BucketError> {
        self.store()
            .await?
            .purge(key)
            .await
            .map_err(|e| self.nats(e))?;
        Ok(())
    }

    /// Writes `value` at `key` unless the key exists; false if it did.
    pub async fn create<T: Serialize>(&self, key: &str, value: &T) -> Result<bool, BucketError> {
        let bytes = serde_json::to_vec(value).map_err(|source| self.json(key, source))?;
        match self.store().await?.create(key, bytes.into()).await {
            Ok(_) => Ok(true),
            Err(err) if err.kind() == kv::CreateErrorKind::AlreadyExists => Ok(false),
            Err(err) => Err(self.nats(err)),
        }
    }

    /// Replaces the value at `key` with `change(the value there)`, compare-and-set, so that
    /// processes changing one key at once each see the other's change.
    pub async fn change<T, F>(&self, key: &str, change: F) -> Result<(), BucketError>
    where
        T: Serialize + DeserializeOwned,
        F: Fn(Option<T>) -> T,
    {
        let store = self.store().await?;
        let mut tries = 0;
        loop {
            tries += 1;
            let entry = store.entry(key).await.map_err(|e| self.nats(e))?;
            let (current, revision) = match entry {
                Some(entry) if entry.operation == kv::Operation::Put => {
                    let value = serde_json::from_slice(&entry.value)
                        .map_err(|source| self.json(key, source))?;
                    (Some(value), Some(entry.revision))
                }
                Some(entry) => (None, Some(entry.revision)),
                None => (None, None),
            };
            let bytes =
                serde_json::to_vec(&change(current)).map_err(|source| self.json(key, source))?;
            let written = match revision {
                Some(revision) => store
                    .update(key, bytes.into(), revision)
                    .await
                    .map(|_| ())
                    .map_err(|e| {
                        (
                            e.kind() == kv::UpdateErrorKind::WrongLastRevision,
                            self.nats(e),
                        )
                    }),
                None => store
                    .create(key, bytes.into())
                    .await
                    .map(|_| ())
                    .map_err(|e| (e.kind() == kv::CreateErrorKind::AlreadyExists, self.nats(e))),
            };
            match written {
                Ok(()) => return Ok(()),
                // Another process wrote first: read its value and change that.
                Err((true, _)) if tries < 20 => continue,
                Err((_, err)) => return Err(err),
            }
        }
    }

    /// Every key.
    pub async fn keys(&self) -> Result<Vec<String>, BucketError> {
        let store = self.store().await?;
        match store.keys().await {
            Ok(keys) => keys.try_collect().await.map_err(|e| self.nats(e)),
            Err(err) => Err(self.nats(err)),
        }
    }

    /// Every value, in no particular order.
    pub async fn values<T: DeserializeOwned>(&self) -> Result<Vec<T>, BucketError> {
        let keys = self.keys().await?;
        let mut values = Vec::with_capacity(keys.len());
        for key in keys {
            if let Some(value) = self.get(&key).await? {
                values.push(value);
            }
        }
        Ok(values)
    }
}

/// The KV key of a text (an address, a domain): lower case; letters, digits, `-` and `_` as
/// they are, every other byte as `=XX`, so any text makes one valid key and two texts never
/// share one.
pub fn key(text: &str) -> String {
    let mut key = String::with_capacity(text.len() + 8);
    for b in text.to_lowercase().bytes() {
        match b {
            b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' => key.push(char::from(b)),
            _ => key.push_str(&format!("={b:02x}")),
        }
    }
    key
}
