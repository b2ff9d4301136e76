//! Delivery: taking entries from the queue and handing them to the next hop.

pub mod attempt;
pub mod dane;
pub mod dsn;
mod egress;
pub mod mta_sts;
pub mod next_hop;
pub mod retry;
pub mod route;
pub mod settle;
pub mod tls;
pub mod tls_rpt;
mod worker;

pub use next_hop::SetupError;
pub use worker::Worker;
