//! Where TLS report tallies (RFC 8460) add up across the delivery processes of a relay: a NATS KV
//! bucket (`<stream>_TLSRPT`), one key per report period and policy domain.

use std::time::Duration;

use crate::json_bucket::JsonBucket;
use crate::{Queue, names};

/// Tallies and claims are kept a week: long enough for any period's report to go out.
const KEPT: Duration = Duration::from_secs(7 * 86_400);

/// The bucket of `queue`'s relay.
pub fn bucket(queue: &Queue) -> JsonBucket {
    JsonBucket::new(
        queue.clone(),
        names::tls_rpt_bucket(&queue.inner.config),
        KEPT,
        "Postern TLS report tallies (RFC 8460), by period and policy domain",
    )
}
