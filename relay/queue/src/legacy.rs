//! Bodies stored by builds before envelope version 2: one object per message in an object
//! store bucket, and in `<bucket>_REFS` a count of the entries still using it. Entries queued
//! before an upgrade are still delivered, and release their body the way they were written to.
//! Nothing new is stored this way.

use async_nats::jetstream::object_store::{Object, ObjectStore};
use async_nats::jetstream::{self, Context, kv};
use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;

use super::bodies::{BodyError, CHUNK};

/// One body in the object store.
#[derive(Clone)]
pub struct ObjectBody {
    js: Context,
    bucket: String,
    key: String,
}

impl std::fmt::Debug for ObjectBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectBody")
            .field("bucket", &self.bucket)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl ObjectBody {
    pub fn new(js: &Context, bucket: &str, key: &str) -> ObjectBody {
        ObjectBody {
            js: js.clone(),
            bucket: bucket.to_string(),
            key: key.to_string(),
        }
    }

    async fn store(&self) -> Result<ObjectStore, BodyError> {
        self.js
            .get_object_store(&self.bucket)
            .await
            .map_err(|_| BodyError::Missing(self.key.clone()))
    }

    /// The body from its start.
    pub async fn open(&self) -> Result<ObjectReader, BodyError> {
        let object = self
            .store()
            .await?
            .get(&self.key)
            .await
            .map_err(|err| match err.kind() {
                jetstream::object_store::GetErrorKind::NotFound => {
                    BodyError::Missing(self.key.clone())
                }
                _ => BodyError::Nats(err.into()),
            })?;
        Ok(ObjectReader {
            object,
            key: self.key.clone(),
        })
    }

    /// One entry is finished with the body; the last one removes it.
    pub async fn release(&self) -> Result<(), BodyError> {
        let refs = self
            .js
            .get_key_value(format!("{}_REFS", self.bucket))
            .await
            .map_err(|e| BodyError::Nats(e.into()))?;
        for _ in 0..16 {
            let entry = refs
                .entry(&self.key)
                .await
                .map_err(|e| BodyError::Nats(e.into()))?;
            let remaining = entry
                .as_ref()
                .filter(|e| e.operation == kv::Operation::Put)
                .and_then(|e| std::str::from_utf8(&e.value).ok()?.parse::<u32>().ok())
                .unwrap_or(0);
            if remaining <= 1 {
                if let Ok(store) = self.store().await {
                    let _ = store.delete(&self.key).await;
                }
                let _ = refs.purge(&self.key).await;
                return Ok(());
            }
            let revision = entry.map_or(0, |e| e.revision);
            if refs
                .update(&self.key, (remaining - 1).to_string().into(), revision)
                .await
                .is_ok()
            {
                return Ok(());
            }
        }
        Err(BodyError::Corrupt {
            key: self.key.clone(),
            message: "reference count kept changing".into(),
        })
    }
}

/// Reads an object body in chunks.
pub struct ObjectReader {
    object: Object,
    key: String,
}

impl std::fmt::Debug for ObjectReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectReader")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl ObjectReader {
    /// The next chunk, `None` at the end.
    pub async fn next(&mut self) -> Result<Option<Bytes>, BodyError> {
        let mut chunk = BytesMut::with_capacity(CHUNK);
        while chunk.len() < CHUNK {
            let read = self
                .object
                .read_buf(&mut chunk)
                .await
                .map_err(|e| BodyError::Nats(e.into()))?;
            if read == 0 {
                break;
            }
        }
        Ok((!chunk.is_empty()).then(|| chunk.freeze()))
    }
}
