//! Delivery: taking entries from the queue and handing them to the next hop.

pub mod attempt;
pub mod dns;
pub mod dsn;
pub mod retry;
pub mod route;
pub mod tls;
mod worker;

pub use worker::{SetupError, Worker};
