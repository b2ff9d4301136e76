//! The durable hand-off: JetStream stream provisioning, publishing accepted messages, and what
//! delivery needs from the queue (bodies, lineages, retries).
//!
//! Without the default feature `jetstream`, only the entry format ([`entry`]) is built: the
//! fuzz targets (relay/fuzz) decode entries without building a NATS client.

pub mod entry;

#[cfg(feature = "jetstream")]
pub mod bodies;
#[cfg(feature = "jetstream")]
pub mod content;
#[cfg(feature = "jetstream")]
pub mod destination;
#[cfg(feature = "jetstream")]
pub mod events;
#[cfg(feature = "jetstream")]
pub mod inspect;
#[cfg(feature = "jetstream")]
pub mod json_bucket;
#[cfg(feature = "jetstream")]
mod legacy;
#[cfg(feature = "jetstream")]
pub mod mta_sts;
#[cfg(feature = "jetstream")]
pub mod names;
#[cfg(feature = "jetstream")]
mod publish;
#[cfg(feature = "jetstream")]
mod queue;
#[cfg(feature = "jetstream")]
pub mod suppression;
#[cfg(feature = "jetstream")]
pub mod tls_rpt;

#[cfg(feature = "jetstream")]
pub use queue::*;
