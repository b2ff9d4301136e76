//! Process-level test harness for Postern.
//!
//! Tests start a real `nats-server` and a real `postern` process on free loopback ports and
//! talk SMTP to it over real TCP and TLS. Build the binary first (`cargo build --bin postern`)
//! and install nats-server with `scripts/tools`; the README's test command does both.

pub mod dns;
pub mod mx;
pub mod nats;
pub mod pki;
pub mod relay;
pub mod smtp;

pub use dns::DnsServer;
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

/// Ports handed out by [`free_port`]: below the kernel's ephemeral range (32768 and up), so no
/// outgoing connection and no `bind(0)` of another process is given one of them.
const HANDED_OUT: std::ops::Range<u16> = 20_000..32_000;

/// A loopback port for a child process to listen on, that nothing listens on now and that no
/// other test process is handed while this one runs: each port handed out is held by a lock
/// file (`flock`, released when the process ends), and the kernel never picks these ports
/// for sockets of its own choosing.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    static HELD: std::sync::Mutex<Vec<std::fs::File>> = std::sync::Mutex::new(Vec::new());
    let dir = std::env::temp_dir().join("postern-test-ports");
    std::fs::create_dir_all(&dir).expect("port lock directory");
    let span = u64::from(HANDED_OUT.end - HANDED_OUT.start);
    let mut seed = std::collections::hash_map::RandomState::new().build_hasher();
    seed.write_u32(std::process::id());
    let start = seed.finish() % span;
    for offset in 0..span {
        let port = HANDED_OUT.start + ((start + offset) % span) as u16;
        let Ok(lock) = std::fs::File::create(dir.join(port.to_string())) else {
            continue;
        };
        if lock.try_lock().is_err() {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        HELD.lock().unwrap_or_else(|e| e.into_inner()).push(lock);
        return port;
    }
    panic!("no free port in {HANDED_OUT:?}");
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
