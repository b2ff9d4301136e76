//! A `postern` process under test.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use postern_config::{Config, Listener, ListenerTls};
use postern_relay::app::Bound;

use crate::nats::NatsServer;

/// A running `postern` process, killed on drop. Its log is printed when a test fails.
#[derive(Debug)]
pub struct Relay {
    child: Option<Child>,
    pub config: Config,
    /// What the process bound, from its `--ready-file`.
    pub bound: Bound,
    dir: tempfile::TempDir,
}

/// The `postern` binary: `$POSTERN_BIN`, else `target/debug/postern` next to the test binary.
pub fn postern_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("POSTERN_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target directory");
    let path = dir.join("postern");
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --bin postern` first",
        path.display()
    );
    path
}

impl Relay {
    /// A config for `nats` with one plaintext listener and the admin endpoint on port 0 (the
    /// process binds free ports and reports them), relaying for 127.0.0.0/8.
    pub fn config(nats: &NatsServer) -> Config {
        let mut config = Config {
            hostname: "relay.test".into(),
            ..Config::default()
        };
        config.nats.url = Some(nats.url());
        config.ingress.listeners = vec![listener(ListenerTls::None)];
        config.admin.address = SocketAddr::from(([127, 0, 0, 1], 0));
        config.shutdown_grace = postern_config::Duration::secs(10);
        // No look at the Internet's mail servers at start: test traffic stays on loopback (the
        // test of that check gives a probe its loopback DNS server answers for).
        config.delivery.egress_probe = String::new();
        // Nor at the root zone (DANE's start-up check): the DANE tests turn it on with their
        // own signed root on loopback.
        config.delivery.dane.enabled = false;
        config
    }

    /// Starts `postern ingress` and waits until `/readyz` answers 200.
    pub fn start(config: Config) -> Relay {
        let relay = Relay::spawn(&["ingress"], config);
        relay.wait_ready(Duration::from_secs(20));
        relay
    }

    /// Starts `postern <args> --config FILE --ready-file FILE` and waits until the process has
    /// bound every listener and said where.
    pub fn spawn(args: &[&str], config: Config) -> Relay {
        let dir = tempfile::tempdir().expect("temp dir");
        let config_file = dir.path().join("postern.yaml");
        let ready_file = dir.path().join("ready.json");
        std::fs::write(&config_file, config.to_yaml().expect("config serializes"))
            .expect("writing config");
        let log = std::fs::File::create(dir.path().join("postern.log")).expect("log file");
        // Its own process group, so that dropping it also ends the nats-server that
        // `standalone` supervises, which a SIGKILL of postern alone would leave running.
        let child = Command::new(postern_binary())
            .process_group(0)
            .args(args)
            .arg("--config")
            .arg(&config_file)
            .arg("--ready-file")
            .arg(&ready_file)
            .env("RUST_LOG", "info,postern_relay=debug,postern_queue=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("starting postern");
        let mut relay = Relay {
            child: Some(child),
            config,
            bound: Bound {
                smtp: Vec::new(),
                admin: SocketAddr::from(([127, 0, 0, 1], 0)),
                nats: String::new(),
            },
            dir,
        };
        relay.bound = relay.wait_bound(&ready_file, Duration::from_secs(20));
        relay
    }

    /// Reads the ready file once the process wrote it, panicking with the log if it exits first.
    fn wait_bound(&mut self, ready_file: &std::path::Path, limit: Duration) -> Bound {
        let start = Instant::now();
        loop {
            if let Ok(json) = std::fs::read(ready_file) {
                return serde_json::from_slice(&json)
                    .expect("ready file holds the bound addresses");
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "postern exited with {status} before it was ready\n{}",
                    self.log()
                );
            }
            assert!(
                start.elapsed() < limit,
                "postern bound nothing within {limit:?}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The first SMTP listener.
    pub fn smtp(&self) -> SocketAddr {
        self.bound.smtp[0]
    }

    /// The SMTP listener at `index`.
    pub fn listener(&self, index: usize) -> SocketAddr {
        self.bound.smtp[index]
    }

    /// The admin endpoint.
    pub fn admin(&self) -> SocketAddr {
        self.bound.admin
    }

    /// Waits until `/readyz` answers 200.
    pub fn wait_ready(&self, limit: Duration) {
        self.wait_readyz(200, limit);
    }

    /// Waits until `/readyz` answers `status`.
    pub fn wait_readyz(&self, status: u16, limit: Duration) {
        let start = Instant::now();
        while self.http_status("/readyz") != Some(status) {
            assert!(
                start.elapsed() < limit,
                "/readyz did not answer {status} within {limit:?}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The HTTP status of a GET on the admin endpoint, `None` when it does not answer.
    pub fn http_status(&self, path: &str) -> Option<u16> {
        let response = self.http_get(path)?;
        response.split(' ').nth(1)?.parse().ok()
    }

    /// The whole HTTP response of a GET on the admin endpoint.
    pub fn http_get(&self, path: &str) -> Option<String> {
        let mut stream = std::net::TcpStream::connect(self.admin()).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        Some(response)
    }

    /// The value of a metric line such as `postern_ingress_messages_accepted_total`.
    pub fn metric(&self, name: &str) -> f64 {
        let body = self.http_get("/metrics").unwrap_or_default();
        body.lines()
            .find_map(|line| {
                line.strip_prefix(name)
                    .and_then(|rest| rest.strip_prefix(' '))
            })
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// Waits until `metric(name)` is at least `at_least`, panicking with the log after `limit`.
    /// For counts the relay updates after an answer it got, which the other side saw first.
    pub async fn wait_metric(&self, name: &str, at_least: f64, limit: Duration) {
        let start = std::time::Instant::now();
        while self.metric(name) < at_least {
            assert!(
                start.elapsed() < limit,
                "{name} stayed below {at_least}\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        self.signal(nix::sys::signal::Signal::SIGTERM);
    }

    /// Kills the process at once (SIGKILL), as a crashed pod.
    pub fn kill(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGKILL);
        let _ = self.wait_exit(Duration::from_secs(10));
    }

    /// The largest resident set the process has had so far (`VmHWM`), in bytes.
    pub fn peak_rss(&self) -> u64 {
        let Some(child) = &self.child else {
            return 0;
        };
        std::fs::read_to_string(format!("/proc/{}/status", child.id()))
            .unwrap_or_default()
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|kib| kib.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kib| kib * 1024)
    }

    /// Stops (SIGSTOP) or resumes (SIGCONT) the process, as a pod frozen by its node or cut off
    /// by a partition: its sockets stay open and nothing it was doing is finished.
    pub fn pause(&self, paused: bool) {
        self.signal(if paused {
            nix::sys::signal::Signal::SIGSTOP
        } else {
            nix::sys::signal::Signal::SIGCONT
        });
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        if let Some(child) = &self.child {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid fits"));
            nix::sys::signal::kill(pid, signal).expect("signalling postern");
        }
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        let child = self.child.as_mut()?;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if start.elapsed() > limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything the process logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postern.log")).unwrap_or_default()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(pid) = i32::try_from(child.id()) {
                let group = nix::unistd::Pid::from_raw(-pid);
                let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("----- postern log -----\n{}", self.log());
        }
    }
}

/// A listener on loopback port 0: the process binds a free port and reports it.
pub fn listener(tls: ListenerTls) -> Listener {
    Listener {
        address: SocketAddr::from(([127, 0, 0, 1], 0)),
        tls,
        allow_plaintext_auth: false,
        proxy_protocol: false,
    }
}
