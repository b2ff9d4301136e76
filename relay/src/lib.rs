//! Postern's relay: SMTP ingress, the JetStream queue hand-off and the admin endpoint.
//!
//! The binary `postern` only parses arguments and calls [`app::start`]; everything else lives
//! here, where tests reach it.

pub mod admin;
pub mod app;
pub mod delivery;
pub mod dkim;
pub mod events;
pub mod http_client;
pub mod ingress;
pub mod metrics;
pub mod queue_admin;
pub mod reload;
pub mod standalone;
pub mod suppression;
pub mod suppression_admin;
pub mod telemetry;
pub mod tls;
pub mod users;
pub mod webhooks;
