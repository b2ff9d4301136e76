//! The MTA-STS policy cache: each recipient domain's last fetched policy, in a NATS KV bucket
//! (`<stream>_MTA_STS`) that every delivery process of a relay shares, so that a policy fetched
//! by one is enforced by all and outlives restarts (RFC 8461 §5.1).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::json_bucket::{BucketError, JsonBucket, key};
use crate::{Queue, names};

/// The bucket's age limit: a policy lives at most a year (RFC 8461 §3.2) after it was fetched.
const LONGEST: Duration = Duration::from_secs(31_557_600);

/// A policy as fetched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredPolicy {
    /// The id of the TXT record it was fetched for.
    pub id: String,
    /// The policy file.
    pub text: String,
    /// When it was fetched, ms since the epoch.
    pub fetched_ms: u64,
}

/// The policies of one relay, by recipient domain.
#[derive(Debug)]
pub struct PolicyCache {
    bucket: JsonBucket,
}

impl PolicyCache {
    pub fn new(queue: Queue) -> PolicyCache {
        PolicyCache {
            bucket: JsonBucket::new(
                queue.clone(),
                names::mta_sts_bucket(&queue.inner.config),
                LONGEST,
                "Postern MTA-STS policies, by recipient domain",
            ),
        }
    }

    pub async fn get(&self, domain: &str) -> Result<Option<StoredPolicy>, BucketError> {
        self.bucket.get(&key(domain)).await
    }

    pub async fn put(&self, domain: &str, policy: &StoredPolicy) -> Result<(), BucketError> {
        self.bucket.put(&key(domain), policy).await
    }
}
