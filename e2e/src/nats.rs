//! A real nats-server per test, and a reader of what the queue holds.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use postern_queue::entry::{self, BodyRef, Envelope};

/// A nats-server child with JetStream, killed on drop.
#[derive(Debug)]
pub struct NatsServer {
    child: Option<Child>,
    pub port: u16,
    /// Port of the monitoring endpoint (`/varz`, `/jsz`), chosen again at every start.
    pub monitoring_port: u16,
    store: tempfile::TempDir,
    /// The token clients must present, if the server asks for one.
    token: Option<String>,
    /// Certificate and key files, if clients must use TLS.
    tls: Option<(PathBuf, PathBuf)>,
    /// JetStream's `sync_interval` (`always` or a duration), if not nats-server's default.
    sync: Option<String>,
}

/// The nats-server binary: `$POSTERN_NATS_SERVER`, else the one `scripts/tools` installs.
pub fn nats_server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("POSTERN_NATS_SERVER") {
        return PathBuf::from(path);
    }
    let path = crate::workspace_root().join(".tools/venv/bin/nats-server");
    assert!(
        path.exists(),
        "{} is missing: run scripts/tools (the README's test command does)",
        path.display()
    );
    path
}

impl NatsServer {
    /// Starts a server on a free port with its own storage directory.
    pub fn start() -> NatsServer {
        NatsServer::start_with(None, None)
    }

    /// Starts a server that authorizes clients by `token` only.
    pub fn start_with_token(token: &str) -> NatsServer {
        NatsServer::start_with(Some(token.to_string()), None)
    }

    /// Starts a server whose clients must use TLS, with the certificate of `pki`.
    pub fn start_with_tls(pki: &crate::TestPki) -> NatsServer {
        NatsServer::start_with(None, Some((pki.cert_file.clone(), pki.key_file.clone())))
    }

    /// Starts a server whose JetStream syncs as `sync` says (`always` or a duration such as
    /// `10s`), set in a config file as in production.
    pub fn start_syncing(sync: &str) -> NatsServer {
        NatsServer::start_from(None, None, Some(sync.to_string()))
    }

    /// Starts a server that asks clients for `token` and TLS with `tls` (certificate and key
    /// files), as given.
    pub fn start_with(token: Option<String>, tls: Option<(PathBuf, PathBuf)>) -> NatsServer {
        NatsServer::start_from(token, tls, None)
    }

    fn start_from(
        token: Option<String>,
        tls: Option<(PathBuf, PathBuf)>,
        sync: Option<String>,
    ) -> NatsServer {
        let store = tempfile::tempdir().expect("temp dir");
        let mut server = NatsServer {
            child: None,
            port: 0,
            monitoring_port: 0,
            store,
            token,
            tls,
            sync,
        };
        server.restart();
        server
    }

    /// The client URL.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The monitoring endpoint as `host:port`, as a Relay's `nats.monitoringEndpoint` names it.
    pub fn monitoring_endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.monitoring_port)
    }

    /// Kills the server (SIGKILL), keeping its storage.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and storage, and waits until it listens. The
    /// first start lets the server choose its port (`--port -1`) and reads it from the ports
    /// file it writes once listening; later starts take that port again, so that clients
    /// reconnect to it.
    pub fn restart(&mut self) {
        self.kill();
        let mut command = Command::new(nats_server_binary());
        if let Some(sync) = &self.sync {
            let file = self.store.path().join("nats-server.conf");
            std::fs::write(&file, format!("jetstream {{ sync_interval: {sync} }}\n"))
                .expect("writing the nats-server config");
            command.arg("--config").arg(file);
        }
        if let Some(token) = &self.token {
            command.args(["--auth", token]);
        }
        if let Some((cert, key)) = &self.tls {
            command
                .arg("--tls")
                .arg("--tlscert")
                .arg(cert)
                .arg("--tlskey")
                .arg(key);
        }
        let ports = self.store.path().join("ports");
        let _ = std::fs::remove_dir_all(&ports);
        std::fs::create_dir_all(&ports).expect("ports file directory");
        let port = match self.port {
            0 => "-1".to_string(),
            port => port.to_string(),
        };
        let child = command
            .args(["--jetstream", "--addr", "127.0.0.1", "--port", &port])
            .args(["--http_port", "-1"])
            .arg("--ports_file_dir")
            .arg(&ports)
            .arg("--store_dir")
            .arg(self.store.path().join("store"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting nats-server");
        self.child = Some(child);
        let bound = wait_for_ports_file(&ports, Duration::from_secs(15));
        assert!(
            self.port == 0 || self.port == bound,
            "nats-server came back on {bound}, not {}",
            self.port
        );
        self.port = bound;
        self.monitoring_port =
            monitoring_port(&ports).expect("the ports file names the monitoring port");
    }

    /// Every entry in the queue stream, in order.
    pub async fn entries(&self, stream: &str) -> Vec<QueueEntry> {
        queue_entries(&self.url(), stream).await
    }

    /// Waits until the queue stream holds no entries: every message was delivered or bounced.
    pub async fn wait_empty(&self, stream: &str, limit: Duration) {
        let start = Instant::now();
        loop {
            let entries = self.entries(stream).await;
            if entries.is_empty() {
                return;
            }
            assert!(
                start.elapsed() < limit,
                "queue not empty after {limit:?}: {entries:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// How many bodies the body stream holds, and how many reference sets still name entries.
    pub async fn stored_bodies(&self, body_stream: &str) -> (usize, usize) {
        use futures::TryStreamExt;
        let js = jetstream::new(
            async_nats::connect(self.url())
                .await
                .expect("connecting to nats"),
        );
        let stream = js.get_stream(body_stream).await.expect("body stream");
        let subjects: Vec<(String, usize)> = stream
            .info_with_subjects(format!("postern.bodies.{body_stream}.>"))
            .await
            .expect("body stream subjects")
            .try_collect()
            .await
            .expect("body stream subjects");
        let bodies = subjects
            .iter()
            .filter(|(s, n)| *n > 0 && s.ends_with(".data"))
            .count();
        // A finished message keeps an empty set until the TTL; count the ones still in use.
        let mut live = 0;
        for (subject, _) in subjects.iter().filter(|(s, _)| s.ends_with(".refs")) {
            if let Ok(set) = stream.get_last_raw_message_by_subject(subject).await
                && set.payload.as_ref() != b"{}"
            {
                live += 1;
            }
        }
        (bodies, live)
    }

    /// How many consumers a stream has.
    pub async fn consumers(&self, stream: &str) -> usize {
        let js = jetstream::new(
            async_nats::connect(self.url())
                .await
                .expect("connecting to nats"),
        );
        let mut stream = js.get_stream(stream).await.expect("stream exists");
        stream
            .info()
            .await
            .expect("stream info")
            .state
            .consumer_count
    }

    /// Stops (SIGSTOP) or resumes (SIGCONT) the server without closing its sockets.
    pub fn pause(&self, paused: bool) {
        let signal = if paused {
            nix::sys::signal::Signal::SIGSTOP
        } else {
            nix::sys::signal::Signal::SIGCONT
        };
        if let Some(child) = &self.child {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid fits"));
            nix::sys::signal::kill(pid, signal).expect("signalling nats-server");
        }
    }
}

/// Every message in `stream` at `url`, in order, without consuming them; none when the stream
/// does not exist (yet).
pub async fn stored_messages(url: &str, stream: &str) -> Vec<jetstream::message::StreamMessage> {
    let client = async_nats::connect(url).await.expect("connecting to nats");
    let js = jetstream::new(client);
    let Ok(mut stream) = js.get_stream(stream).await else {
        return Vec::new();
    };
    let state = stream.info().await.expect("stream info").state.clone();
    let mut messages = Vec::new();
    if state.messages == 0 {
        return messages;
    }
    for seq in state.first_sequence..=state.last_sequence {
        if let Ok(raw) = stream.get_raw_message(seq).await {
            messages.push(raw);
        }
    }
    messages
}

/// Every entry in the queue stream at `url`, in order, without consuming them.
pub async fn queue_entries(url: &str, stream: &str) -> Vec<QueueEntry> {
    let client = async_nats::connect(url).await.expect("connecting to nats");
    let js = jetstream::new(client);
    let mut entries = Vec::new();
    for raw in stored_messages(url, stream).await {
        let (envelope, inline) = entry::decode(&raw.payload).expect("entry decodes");
        let body = match &envelope.body {
            BodyRef::Inline { .. } => inline.to_vec(),
            BodyRef::Stored {
                stream: body_stream,
                key,
                size,
                ..
            } => {
                // A worker may finish the entry, and remove its body, while we read.
                let Some(stored) = stored_body(&js, body_stream, key, *size).await else {
                    continue;
                };
                let mut body = inline.to_vec();
                body.extend_from_slice(&stored);
                body
            }
            // An earlier build's body, in its object store bucket.
            BodyRef::Object { bucket, key, .. } => {
                use tokio::io::AsyncReadExt;
                let store = js.get_object_store(bucket).await.expect("body bucket");
                let Ok(mut object) = store.get(key).await else {
                    continue;
                };
                let mut body = Vec::new();
                object
                    .read_to_end(&mut body)
                    .await
                    .expect("reading body object");
                body
            }
        };
        let headers = raw
            .headers
            .iter()
            .map(|(name, values)| {
                let values: Vec<String> = values.iter().map(ToString::to_string).collect();
                (name.to_string(), values.join(","))
            })
            .collect();
        entries.push(QueueEntry {
            subject: raw.subject.to_string(),
            headers,
            envelope,
            body,
        });
    }
    entries
}

/// A body from the body stream, `None` when it is not (or no longer) complete.
async fn stored_body(
    js: &jetstream::Context,
    body_stream: &str,
    key: &str,
    size: u64,
) -> Option<Vec<u8>> {
    let stream = js.get_stream(body_stream).await.ok()?;
    let subject = postern_queue::names::body_subject(body_stream, key, "data");
    let mut body = Vec::new();
    let mut next = 1;
    while (body.len() as u64) < size {
        let chunk = stream
            .get_first_raw_message_by_subject(&subject, next)
            .await
            .ok()?;
        next = chunk.sequence + 1;
        body.extend_from_slice(&chunk.payload);
    }
    Some(body)
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One queue entry as stored in JetStream.
#[derive(Debug, Clone)]
pub struct QueueEntry {
    pub subject: String,
    /// NATS headers such as `traceparent` and `Nats-Msg-Id`.
    pub headers: Vec<(String, String)>,
    pub envelope: Envelope,
    pub body: Vec<u8>,
}

impl QueueEntry {
    /// The value of a NATS header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text, for assertions.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// The monitoring port nats-server names in the ports file it wrote into `dir`.
fn monitoring_port(dir: &std::path::Path) -> Option<u16> {
    std::fs::read_dir(dir).ok()?.flatten().find_map(|entry| {
        let text = std::fs::read_to_string(entry.path()).ok()?;
        let ports: serde_json::Value = serde_json::from_str(&text).ok()?;
        ports["monitoring"][0]
            .as_str()?
            .rsplit_once(':')?
            .1
            .parse()
            .ok()
    })
}

/// The client port nats-server names in the ports file it writes into `dir` once it listens.
pub fn wait_for_ports_file(dir: &std::path::Path, limit: Duration) -> u16 {
    let start = Instant::now();
    loop {
        if let Some(port) = postern_relay::standalone::read_ports_file(dir) {
            return port;
        }
        assert!(
            start.elapsed() < limit,
            "nats-server wrote no ports file within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
