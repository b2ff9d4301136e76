//! Emitting delivery events (`postern_queue::events`) from ingress and delivery: in the
//! background, so an event never holds mail up; one that cannot be stored is counted and logged.

use std::sync::Arc;

use postern_config::Config;
use postern_queue::Queue;
use postern_queue::events::{Event, EventLog};
use tracing::warn;

use crate::metrics::Metrics;

/// The event stream of a process, or nothing when `events.enabled` is off.
#[derive(Debug, Clone)]
pub struct Events {
    log: Option<Arc<EventLog>>,
    metrics: Arc<Metrics>,
}

impl Events {
    pub fn new(config: &Config, queue: &Queue, metrics: Arc<Metrics>) -> Events {
        let events = &config.events;
        let log = events.enabled.then(|| {
            Arc::new(EventLog::new(
                queue.clone(),
                events.max_age.get(),
                events.max_bytes,
            ))
        });
        Events { log, metrics }
    }

    /// Publishes `event` in the background.
    pub fn emit(&self, event: Event) {
        let Some(log) = self.log.clone() else {
            return;
        };
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            let kind = event.kind.as_str();
            match log.publish(&event).await {
                Ok(()) => {
                    metrics
                        .events_published
                        .get_or_create(&vec![("kind", kind)])
                        .inc();
                }
                Err(err) => {
                    warn!(queue_id = %event.queue_id, kind, %err, "delivery event not stored");
                    metrics.events_dropped.inc();
                }
            }
        });
    }
}
