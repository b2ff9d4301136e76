//! A large message on its way into the queue while it is still arriving: its content goes to
//! the body stream chunk by chunk, and its DKIM signatures are computed from the same chunks,
//! so ingress never holds more of it than a few chunks.

use bytes::Bytes;

use crate::dkim::{Signers, StreamingSignature};
use postern_queue::bodies::CHUNK;
use postern_queue::{EnqueueError, Queue, Upload};

use super::header_fields::HeaderFacts;
use super::memory::Reservation;

/// One streaming message.
#[derive(Debug)]
pub struct Streaming {
    queue_id: ulid::Ulid,
    upload: Option<Upload>,
    signatures: Vec<StreamingSignature>,
    /// The first failure; the rest of the content is then read and dropped, and the message
    /// refused at its end.
    failed: Option<EnqueueError>,
    /// What the header section (in the first chunk) says.
    facts: HeaderFacts,
}

impl Streaming {
    /// Starts streaming the message `queue_id`, whose content begins with `start`.
    pub fn start(
        queue: &Queue,
        signers: &Signers,
        start: &[u8],
        queue_id: ulid::Ulid,
    ) -> Streaming {
        let (upload, failed) = match queue.upload(&queue_id.to_string()) {
            Ok(upload) => (Some(upload), None),
            Err(err) => (None, Some(err)),
        };
        Streaming {
            queue_id,
            upload,
            signatures: signers.streaming(start),
            failed,
            facts: HeaderFacts::of(start),
        }
    }

    /// What the message's header section says.
    pub fn header_facts(&self) -> &HeaderFacts {
        &self.facts
    }

    /// The queue id the message will have.
    pub fn queue_id(&self) -> ulid::Ulid {
        self.queue_id
    }

    /// Stores `content`, taking its memory out of `memory`: each chunk's share is held until
    /// JetStream acknowledged the chunk.
    pub async fn write(&mut self, content: Vec<u8>, memory: &mut Reservation) {
        let content = Bytes::from(content);
        let mut offset = 0;
        while offset < content.len() {
            let chunk = content.slice(offset..content.len().min(offset + CHUNK));
            offset += chunk.len();
            let permit = memory.split(chunk.len());
            for signature in &self.signatures {
                signature.write(chunk.clone()).await;
            }
            if let Some(upload) = self.upload.as_mut()
                && self.failed.is_none()
                && let Err(err) = upload.write(chunk, permit).await
            {
                self.failed = Some(err.into());
            }
        }
    }

    /// The end of the content: waits until every chunk is stored and every signature made;
    /// returns the upload and the `DKIM-Signature` fields.
    pub async fn finish(mut self) -> Result<(Upload, Vec<u8>), EnqueueError> {
        let mut headers = Vec::new();
        for signature in std::mem::take(&mut self.signatures) {
            if let Some(header) = signature.finish().await {
                headers.extend_from_slice(header.as_bytes());
            }
        }
        let mut upload = match (self.upload.take(), self.failed.take()) {
            (Some(upload), None) => upload,
            (upload, failed) => {
                if let Some(upload) = upload {
                    upload.abort().await;
                }
                return Err(failed.unwrap_or(EnqueueError::NotReady));
            }
        };
        if let Err(err) = upload.finish().await {
            upload.abort().await;
            return Err(err.into());
        }
        Ok((upload, headers))
    }

    /// The message will not be queued: whatever was stored goes.
    pub async fn abort(mut self) {
        if let Some(upload) = self.upload.take() {
            upload.abort().await;
        }
    }
}
