//! Bodies too large to travel inside a queue entry: one object per message in the object store,
//! and a reference count in a key-value bucket so the last entry to finish removes the object.
//! Both buckets expire what they hold after a TTL longer than any message can live, so nothing
//! outlives its message even if a worker dies between the two steps of a removal.

use std::time::Duration;

use async_nats::jetstream::{self, kv, object_store, stream};
use postern_config::NatsConfig;

use super::EnqueueError;

/// The two buckets.
#[derive(Clone)]
pub(super) struct Bodies {
    store: object_store::ObjectStore,
    refs: kv::Store,
}

impl Bodies {
    /// Finds or creates both buckets.
    pub(super) async fn provision(
        js: &jetstream::Context,
        config: &NatsConfig,
        ttl: Duration,
    ) -> Result<Bodies, async_nats::Error> {
        let store = match js.get_object_store(&config.body_bucket).await {
            Ok(store) => store,
            Err(_) => {
                js.create_object_store(object_store::Config {
                    bucket: config.body_bucket.clone(),
                    description: Some(
                        "Postern bodies too large to travel inside a queue entry".into(),
                    ),
                    storage: stream::StorageType::File,
                    num_replicas: config.replicas,
                    max_age: ttl,
                    ..Default::default()
                })
                .await?
            }
        };
        let refs_bucket = format!("{}_REFS", config.body_bucket);
        let refs = match js.get_key_value(&refs_bucket).await {
            Ok(refs) => refs,
            Err(_) => {
                js.create_key_value(kv::Config {
                    bucket: refs_bucket,
                    description: "Postern: queue entries still using each stored body".into(),
                    history: 1,
                    storage: stream::StorageType::File,
                    num_replicas: config.replicas,
                    max_age: ttl,
                    ..Default::default()
                })
                .await?
            }
        };
        Ok(Bodies { store, refs })
    }

    /// Stores a body that `entries` queue entries will share.
    pub(super) async fn put(
        &self,
        key: &str,
        body: &[u8],
        entries: u32,
    ) -> Result<(), EnqueueError> {
        self.store
            .put(key, &mut &body[..])
            .await
            .map_err(|e| EnqueueError::Body(e.into()))?;
        self.refs
            .put(key, entries.to_string().into())
            .await
            .map_err(|e| EnqueueError::Body(e.into()))?;
        Ok(())
    }

    /// Reads a body.
    pub(super) async fn get(&self, key: &str) -> Result<Vec<u8>, EnqueueError> {
        let mut object = self
            .store
            .get(key)
            .await
            .map_err(|e| EnqueueError::Body(e.into()))?;
        let mut body = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut object, &mut body)
            .await
            .map_err(|e| EnqueueError::Body(e.into()))?;
        Ok(body)
    }

    /// One entry is finished with the body; the last one removes it.
    pub(super) async fn release(&self, key: &str) -> Result<(), EnqueueError> {
        for _ in 0..16 {
            let entry = self
                .refs
                .entry(key)
                .await
                .map_err(|e| EnqueueError::Body(e.into()))?;
            let remaining = entry
                .as_ref()
                .filter(|e| e.operation == kv::Operation::Put)
                .and_then(|e| std::str::from_utf8(&e.value).ok()?.parse::<u32>().ok())
                .unwrap_or(0);
            if remaining <= 1 {
                self.remove(key).await;
                return Ok(());
            }
            let revision = entry.map_or(0, |e| e.revision);
            // Another entry may have released it meanwhile: then read again and retry.
            if self
                .refs
                .update(key, (remaining - 1).to_string().into(), revision)
                .await
                .is_ok()
            {
                return Ok(());
            }
        }
        Err(EnqueueError::Body(
            "body reference count kept changing".into(),
        ))
    }

    /// Removes a body and its count, best effort.
    pub(super) async fn remove(&self, key: &str) {
        if let Err(err) = self.store.delete(key).await {
            tracing::debug!(%key, %err, "body already gone");
        }
        let _ = self.refs.purge(key).await;
    }
}
