//! Process-level test harness for Postern.
//!
//! Tests start a real `nats-server` and a real `postern` process, each binding loopback port 0
//! and reporting the port it got (nats-server's ports file, postern's `--ready-file`), and talk
//! SMTP to it over real TCP and TLS. Build the binary first (`cargo build --bin postern`)
//! and install nats-server with `scripts/tools`; the README's test command does both.

pub mod admin_cli;
pub mod dns;
pub mod dnssec;
pub mod https;
pub mod mx;
pub mod nats;
pub mod pki;
pub mod relay;
pub mod report;
pub mod smtp;

pub use dns::DnsServer;
pub use https::HttpsServer;
pub use mx::MockMx;
pub use nats::{NatsServer, QueueEntry};
pub use pki::TestPki;
pub use relay::Relay;
pub use smtp::{ReplyExt, Smtp};

use std::path::PathBuf;

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A loopback port that refuses connections and that nothing else can take while this is held:
/// a socket bound to `127.0.0.1:0` that does not listen (the kernel answers a connection to it
/// with a reset, as to a closed port). [`ClosedPort::listen`] opens it on the same port, for a
/// destination that comes up later. Processes under test bind port 0 themselves and report what
/// they bound; this is for ports a test needs to know before anything listens on them.
#[derive(Debug)]
pub struct ClosedPort(tokio::net::TcpSocket);

impl ClosedPort {
    /// Reserves a port.
    pub fn new() -> ClosedPort {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
            .expect("binding 127.0.0.1:0");
        ClosedPort(socket)
    }

    /// The port number.
    pub fn port(&self) -> u16 {
        self.0.local_addr().expect("bound address").port()
    }

    /// Starts listening on it (inside a Tokio runtime).
    pub fn listen(self) -> tokio::net::TcpListener {
        self.0.listen(1024).expect("listening on the reserved port")
    }
}

impl Default for ClosedPort {
    fn default() -> Self {
        ClosedPort::new()
    }
}

/// A fresh nats-server and a `postern ingress` on it, with `tweak` applied to the config.
pub fn start_relay(tweak: impl FnOnce(&mut postern_config::Config)) -> (NatsServer, Relay) {
    let nats = NatsServer::start();
    let mut config = Relay::config(&nats);
    tweak(&mut config);
    let relay = Relay::start(config);
    (nats, relay)
}

/// Line endings that only look like the end of DATA (SMTP smuggling, CVE-2023-51764 class).
pub const FAKE_TERMINATORS: [&[u8]; 10] = [
    b"\n.\n",
    b"\n.\r\n",
    b"\r.\r\n",
    b"\r\n.\r",
    b"\r.\r",
    b"\r.\n",
    b"\n.\r",
    b"\r\n\x00.\r\n",
    b"\r\n.\r\r\n",
    b"\r\r\n.\r\r\n",
];

/// The stream name of the default config.
pub const STREAM: &str = "POSTERN_QUEUE";

/// A fresh nats-server and a `postern standalone` (ingress and delivery) on it.
pub fn start_standalone(tweak: impl FnOnce(&mut postern_config::Config)) -> (NatsServer, Relay) {
    let nats = NatsServer::start();
    let mut config = Relay::config(&nats);
    tweak(&mut config);
    let relay = Relay::spawn(&["standalone"], config);
    relay.wait_ready(std::time::Duration::from_secs(20));
    (nats, relay)
}

/// Polls `done` every 20 ms until it holds, panicking with `what` after `limit`.
pub async fn wait_until(what: &str, limit: std::time::Duration, mut done: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !done() {
        assert!(
            start.elapsed() < limit,
            "{what} did not happen within {limit:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A route sending every domain to `host`.
pub fn route_all(host: &str) -> postern_config::Route {
    postern_config::Route {
        domain: "*".into(),
        host: host.into(),
        tls: postern_config::OutboundTls::Opportunistic,
    }
}
