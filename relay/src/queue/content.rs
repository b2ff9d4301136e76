//! A queue entry's body as delivery reads it: the inline part, then the stored part, if any,
//! chunk by chunk, so a large body is never held whole.

use std::collections::VecDeque;

use bytes::Bytes;

use super::bodies::{BodyError, BodyReader};

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
    /// The first chunk, read by [`Content::open`], and a reader positioned after it.
    first: Option<(Bytes, BodyReader)>,
    reader: BodyReader,
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
        Content {
            inline: head,
            stored: Some(Stored {
                size,
                first: None,
                reader,
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
        if stored.first.is_none() {
            let mut reader = stored.reader.clone();
            let first = reader.next().await?.unwrap_or_default();
            stored.first = Some((first, reader));
        }
        Ok(())
    }

    /// A reader of the whole body from its start; it can be made again for another attempt.
    pub fn reader(&self) -> ContentReader {
        let mut parts = VecDeque::from([self.inline.clone()]);
        let rest = self.stored.as_ref().map(|stored| match &stored.first {
            Some((first, after)) => {
                parts.push_back(first.clone());
                after.clone()
            }
            None => stored.reader.clone(),
        });
        ContentReader { parts, rest }
    }

    /// The start of the body (up to 64 KiB of what [`Content::open`] read), for the copy of
    /// the header section a bounce carries.
    pub fn prefix(&self) -> Vec<u8> {
        let mut prefix = self.inline.to_vec();
        if let Some((first, _)) = self.stored.as_ref().and_then(|s| s.first.as_ref()) {
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
    rest: Option<BodyReader>,
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
            Some(reader) => reader.next().await,
            None => Ok(None),
        }
    }
}
