//! Building blocks for the tests and fuzz targets of the sessions (feature `testing`): a server
//! session config to adjust with struct update syntax, and a message for the client to send.

use std::time::Duration;

use crate::client::Outgoing;
use crate::{Address, BareLineEndings, ReversePath, SessionConfig};

/// A server session for `relay.test`: 10,000-byte messages, 2 recipients, no STARTTLS and no
/// AUTH, the default deadlines (300 s a command, 180 s of silence in content, 1 KiB/s after it).
pub fn session_config() -> SessionConfig {
    SessionConfig {
        hostname: "relay.test".into(),
        max_message_size: 10_000,
        max_recipients: 2,
        max_errors: 5,
        max_auth_failures: 3,
        max_received: 50,
        bare_line_endings: BareLineEndings::Normalize,
        starttls: false,
        auth: false,
        plaintext_auth: false,
        sender_domains: vec![],
        command_timeout: Duration::from_secs(300),
        data_timeout: Duration::from_secs(180),
        min_data_rate: 1024,
        check_recipients: false,
    }
}

/// A message from `a@example.com` to `recipients` with a body of `size` bytes.
///
/// # Panics
/// When a recipient is not an address.
pub fn outgoing(recipients: &[&str], size: usize) -> Outgoing {
    let address = |text: &str| {
        Address::parse(text).unwrap_or_else(|err| panic!("test address {text:?}: {err}"))
    };
    Outgoing {
        from: ReversePath::Mailbox(address("a@example.com")),
        recipients: recipients.iter().map(|r| address(r)).collect(),
        size: size as u64,
        smtputf8: false,
        eight_bit: false,
        dsn: Default::default(),
        require_tls: false,
    }
}
