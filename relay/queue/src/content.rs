//! A queue entry's body as delivery reads it: the inline part, then the stored part, if any,
//! chunk by chunk, so a large body is never held whole.

use std::collections::VecDeque;

use bytes::Bytes;

use super::bodies::{BodyError, BodyReader};
use super::legacy::{ObjectBody, ObjectReader};

/// Bytes of the start of a message kept for a bounce's copy of the header section.
const HEADER_PREFIX: usize = 64 * 1024;

/// The body of one entry.
#[derive(Debug)]
pub struct Content {
    inline: Bytes,
    stored: Option<Stored>,
}

#[derive(Debug)]
struct Stored {
    size: u64,
    source: Source,
    /// The first chunk, read by [`Content::open`].
    first: Option<Bytes>,
}

/// Where the stored part is read from.
#[derive(Debug)]
enum Source {
    /// The body stream; after [`Content::open`], a reader positioned after the first chunk.
    Stream {
        reader: BodyReader,
        after_first: Option<Box<BodyReader>>,
    },
    /// An earlier build's object store bucket.
    Object(ObjectBody),
}

impl Content {
    /// A body that travels whole in the entry.
    pub fn whole(bytes: Bytes) -> Content {
        Content {
            inline: bytes,
            stored: None,
        }
    }

    /// A body whose first bytes are `head` and whose rest, `size` bytes, `reader` reads.
    pub(super) fn stored(head: Bytes, size: u64, reader: BodyReader) -> Content {
        Content::with_source(
            head,
            size,
            Source::Stream {
                reader,
                after_first: None,
            },
        )
    }

    /// A body an earlier build stored in the object store.
    pub(super) fn object(size: u64, body: ObjectBody) -> Content {
        Content::with_source(Bytes::new(), size, Source::Object(body))
    }

    fn with_source(head: Bytes, size: u64, source: Source) -> Content {
        Content {
            inline: head,
            stored: Some(Stored {
                size,
                source,
                first: None,
            }),
        }
    }

    /// The part that travels in the entry: the whole body, or what ingress put in front of a
    /// stored one.
    pub fn head(&self) -> &[u8] {
        &self.inline
    }

    /// The size of the whole body.
    pub fn len(&self) -> u64 {
        self.inline.len() as u64 + self.stored.as_ref().map_or(0, |s| s.size)
    }

    /// True for an empty body.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads the first stored chunk, so a missing body shows before any connection is made.
    pub async fn open(&mut self) -> Result<(), BodyError> {
        let Some(stored) = self.stored.as_mut() else {
            return Ok(());
        };
        if stored.first.is_some() {
            return Ok(());
        }
        let first = match &mut stored.source {
            Source::Stream {
                reader,
                after_first,
            } => {
                let mut after = Box::new(reader.clone());
                let first = after.next().await?;
                *after_first = Some(after);
                first
            }
            Source::Object(body) => body.open().await?.next().await?,
        };
        stored.first = Some(first.unwrap_or_default());
        Ok(())
    }

    /// A reader of the whole body from its start; it can be made again for another attempt.
    pub fn reader(&self) -> ContentReader {
        let mut parts = VecDeque::from([self.inline.clone()]);
        let rest = self.stored.as_ref().map(|stored| {
            if let Some(first) = &stored.first {
                parts.push_back(first.clone());
            }
            let skip = stored.first.as_ref().map_or(0, |f| f.len());
            match &stored.source {
                Source::Stream {
                    after_first: Some(after),
                    ..
                } if stored.first.is_some() => Rest::Stream(after.as_ref().clone()),
                Source::Stream { reader, .. } => Rest::Stream(reader.clone()),
                Source::Object(body) => Rest::Object {
                    body: body.clone(),
                    skip,
                    reader: None,
                },
            }
        });
        ContentReader { parts, rest }
    }

    /// The start of the body (up to 64 KiB of what [`Content::open`] read), for the copy of
    /// the header section a bounce carries.
    pub fn prefix(&self) -> Vec<u8> {
        let mut prefix = self.inline.to_vec();
        if let Some(first) = self.stored.as_ref().and_then(|s| s.first.as_ref()) {
            prefix.extend_from_slice(first);
        }
        prefix.truncate(HEADER_PREFIX);
        prefix
    }
}

/// Reads a body piece by piece.
#[derive(Debug)]
pub struct ContentReader {
    parts: VecDeque<Bytes>,
    rest: Option<Rest>,
}

/// What remains after the parts in memory.
#[derive(Debug)]
enum Rest {
    Stream(BodyReader),
    /// An object body, opened at the first read, its first `skip` bytes already handed out.
    Object {
        body: ObjectBody,
        skip: usize,
        reader: Option<Box<ObjectReader>>,
    },
}

impl ContentReader {
    /// The next piece of the body, `None` after the last.
    pub async fn next(&mut self) -> Result<Option<Bytes>, BodyError> {
        while let Some(part) = self.parts.pop_front() {
            if !part.is_empty() {
                return Ok(Some(part));
            }
        }
        match self.rest.as_mut() {
            None => Ok(None),
            Some(Rest::Stream(reader)) => reader.next().await,
            Some(Rest::Object { body, skip, reader }) => {
                let reader = match reader {
                    Some(reader) => reader,
                    None => reader.insert(Box::new(body.open().await?)),
                };
                while *skip > 0 {
                    let Some(chunk) = reader.next().await? else {
                        return Ok(None);
                    };
                    if chunk.len() > *skip {
                        let rest = chunk.slice(*skip..);
                        *skip = 0;
                        return Ok(Some(rest));
                    }
                    *skip -= chunk.len();
                }
                reader.next().await
            }
        }
    }
}
