//! The suppression list: recipients that bounced for good ("no such user"), kept in a NATS KV
//! bucket (`<stream>_SUPPRESSED`) that every ingress and delivery process of a relay shares.
//! Each entry expires `suppression.expiry` after it was last written (the bucket's age limit).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::json_bucket::{BucketError, JsonBucket};
use crate::{Queue, names};

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
pub type SuppressionError = BucketError;

/// The suppression list of one relay. The bucket is created (or its expiry updated) on first use.
#[derive(Debug)]
pub struct SuppressionList {
    bucket: JsonBucket,
}

impl SuppressionList {
    pub fn new(queue: Queue, expiry: Duration) -> SuppressionList {
        SuppressionList {
            bucket: JsonBucket::new(
                queue.clone(),
                names::suppression_bucket(&queue.inner.config),
                expiry,
                "Postern suppression list: recipients not tried again, by address",
            ),
        }
    }

    /// The entry for `address`, if it is suppressed.
    pub async fn get(&self, address: &str) -> Result<Option<Suppressed>, SuppressionError> {
        self.bucket.get(&key(address)).await
    }

    /// Adds `entry` (its address lower-cased), or renews it with the new facts.
    pub async fn add(&self, entry: &Suppressed) -> Result<(), SuppressionError> {
        let entry = Suppressed {
            address: entry.address.to_lowercase(),
            ..entry.clone()
        };
        self.bucket.put(&key(&entry.address), &entry).await
    }

    /// Removes `address`; false if it was not on the list.
    pub async fn remove(&self, address: &str) -> Result<bool, SuppressionError> {
        if self.get(address).await?.is_none() {
            return Ok(false);
        }
        self.bucket.purge(&key(address)).await?;
        Ok(true)
    }

    /// Every entry, by address.
    pub async fn list(&self) -> Result<Vec<Suppressed>, SuppressionError> {
        let mut entries: Vec<Suppressed> = self.bucket.values().await?;
        entries.sort_by(|a, b| a.address.cmp(&b.address));
        Ok(entries)
    }
}

/// The KV key of an address (see [`crate::json_bucket::key`]).
pub fn key(address: &str) -> String {
    crate::json_bucket::key(address)
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
