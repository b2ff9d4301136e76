//! Sans-IO ESMTP for Postern.
//!
//! Nothing in this crate reads a socket or the clock: parsers take bytes, the server
//! [`Session`](server::Session) takes bytes and outcomes and returns replies and events.

pub mod address;
pub mod body;
pub mod client;
pub mod command;
pub mod date;
pub mod dot;
pub mod dsn;
pub mod proxy;
pub mod reply;
pub mod server;
#[cfg(feature = "testing")]
pub mod testing;

pub use address::{Address, AddressError, ReversePath};
pub use body::BareLineEndings;
pub use command::{Command, CommandError};
pub use reply::{Reject, Reply, ReplyError, ReplyParser, Status};
pub use server::{AuthOutcome, Event, Message, Peer, QueueUnavailable, Session, SessionConfig};
