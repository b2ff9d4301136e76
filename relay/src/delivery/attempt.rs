//! Sessions with next hops: connect, greet, STARTTLS and AUTH once, then one transaction per
//! message, driving the sans-IO client over TCP or TLS. Open sessions are kept in a [`Pool`]
//! for the next message to the same next hop.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use postern_config::{DeliveryTimeouts, OutboundTls};
use postern_smtp::client::{
    Client, ClientConfig, ClientEvent, Outcome, Outgoing, Stage, StartTls, Wait, dot_stuff,
};
use postern_smtp::{Reply, Status};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// Where an attempt goes.
#[derive(Debug, Clone)]
pub struct Target {
    /// Host name (or address) for logs, the DSN's Remote-MTA and TLS SNI.
    pub host: String,
    /// `host:port` to connect to.
    pub address: String,
}

impl Target {
    /// The target named by `host:port` (a route or a smarthost).
    pub fn from_host_port(host_port: &str) -> Target {
        let host = host_port.rsplit_once(':').map_or(host_port, |(h, _)| h);
        Target {
            host: host.trim_matches(['[', ']']).to_string(),
            address: host_port.to_string(),
        }
    }
}

/// How an attempt talks.
#[derive(Debug, Clone)]
pub struct Settings {
    pub helo_name: String,
    pub tls: OutboundTls,
    /// Client config for `tls: verify`: trusted roots, host name checked.
    pub verified: Arc<rustls::ClientConfig>,
    /// AUTH PLAIN credentials (smarthost).
    pub auth: Option<(String, String)>,
    pub timeouts: DeliveryTimeouts,
}

/// Why an attempt ended before every recipient had a reply. The reply is the server's, or a
/// 4xx that Postern made up for a network failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptFailure {
    pub reply: Reply,
    /// The failure came before the server accepted the session (connection, greeting, EHLO,
    /// STARTTLS): the next MX host may do better.
    pub next_host: bool,
}

/// The socket of a session: plaintext until STARTTLS.
enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// An open session, ready for a transaction.
pub struct Connection {
    client: Client,
    stream: Stream,
    timeouts: DeliveryTimeouts,
    /// Messages sent on this session so far.
    messages: usize,
    buf: Vec<u8>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("messages", &self.messages)
            .finish_non_exhaustive()
    }
}

/// Delivers one message at `target`, on a pooled session when there is one.
pub async fn deliver(
    pool: &Pool,
    target: &Target,
    settings: &Settings,
    outgoing: &Outgoing,
    body: &[u8],
) -> Result<Outcome, AttemptFailure> {
    let key = pool.key(target, settings);
    if let Some(mut connection) = pool.take(&key) {
        match connection.transaction(outgoing, body).await {
            Ok(outcome) => {
                pool.give_back(key, connection).await;
                return Ok(outcome);
            }
            // The server may have closed an idle session; a fresh one decides.
            Err(failure) => {
                tracing::debug!(host = %target.host, reply = %failure.reply.text(), "pooled session failed")
            }
        }
    }
    let mut connection = open(target, settings).await?;
    let outcome = connection.transaction(outgoing, body).await?;
    pool.give_back(key, connection).await;
    Ok(outcome)
}

/// Opens a session, falling back to plaintext when opportunistic STARTTLS fails.
async fn open(target: &Target, settings: &Settings) -> Result<Connection, AttemptFailure> {
    let starttls = match settings.tls {
        OutboundTls::Opportunistic => StartTls::Opportunistic,
        OutboundTls::Required | OutboundTls::Verify => StartTls::Required,
        OutboundTls::None => StartTls::Never,
    };
    match connect(target, settings, starttls).await {
        Err(AttemptError::Handshake(err)) if settings.tls == OutboundTls::Opportunistic => {
            tracing::info!(host = %target.host, %err, "TLS handshake failed; retrying in plaintext");
            connect(target, settings, StartTls::Never)
                .await
                .map_err(AttemptError::into_failure)
        }
        other => other.map_err(AttemptError::into_failure),
    }
}

/// An attempt's failure, keeping TLS handshake failures apart for the plaintext retry.
enum AttemptError {
    Handshake(std::io::Error),
    Other(AttemptFailure),
}
use AttemptError::{Handshake, Other};

impl AttemptError {
    fn into_failure(self) -> AttemptFailure {
        match self {
            Handshake(err) => AttemptFailure {
                next_host: true,
                ..temporary(4, 7, 5, format!("TLS handshake failed: {err}"))
            },
            Other(failure) => failure,
        }
    }
}

/// Connects and runs the session up to its first transaction.
async fn connect(
    target: &Target,
    settings: &Settings,
    starttls: StartTls,
) -> Result<Connection, AttemptError> {
    let t = &settings.timeouts;
    let tcp = match timeout(t.connect.get(), TcpStream::connect(&target.address)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(err)) => {
            return Err(Other(unreachable(format!(
                "connection to {} failed: {err}",
                target.address
            ))));
        }
        Err(_) => {
            return Err(Other(unreachable(format!(
                "connection to {} timed out",
                target.address
            ))));
        }
    };
    let _ = tcp.set_nodelay(true);
    let client = Client::new(ClientConfig {
        helo_name: settings.helo_name.clone(),
        starttls,
        auth: settings.auth.clone(),
    });
    let mut connection = Connection {
        client,
        stream: Stream::Plain(tcp),
        timeouts: t.clone(),
        messages: 0,
        buf: vec![0u8; 8 * 1024],
    };
    loop {
        match connection.client.next_event() {
            ClientEvent::NeedInput => connection.exchange().await.map_err(Other)?,
            ClientEvent::Ready => return Ok(connection),
            ClientEvent::StartTls => {
                connection.flush().await.map_err(Other)?;
                let Stream::Plain(tcp) = connection.stream else {
                    return Err(Other(temporary(
                        4,
                        5,
                        0,
                        "server offered STARTTLS twice".into(),
                    )));
                };
                let name = ServerName::try_from(target.host.clone())
                    .unwrap_or(ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
                let config = match settings.tls {
                    OutboundTls::Verify => settings.verified.clone(),
                    _ => super::tls::any_certificate(),
                };
                let connector = tokio_rustls::TlsConnector::from(config);
                let tls = match timeout(t.command.get(), connector.connect(name, tcp)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(err)) => return Err(Handshake(err)),
                    Err(_) => {
                        return Err(Handshake(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "timed out",
                        )));
                    }
                };
                connection.stream = Stream::Tls(Box::new(tls));
                connection.client.tls_started();
            }
            ClientEvent::Failed(failure) if failure.stage == Stage::Auth => {
                // A refused login is a configuration problem to fix, never a bounce.
                let reply = &failure.reply;
                return Err(Other(temporary(
                    4,
                    7,
                    0,
                    format!("authentication refused: {} {}", reply.code, reply.text()),
                )));
            }
            ClientEvent::Failed(failure) => {
                return Err(Other(AttemptFailure {
                    next_host: before_session(failure.stage),
                    reply: failure.reply,
                }));
            }
            ClientEvent::SendBody | ClientEvent::Done(_) | ClientEvent::Closed => {
                return Err(Other(temporary(4, 5, 0, "unexpected session state".into())));
            }
        }
    }
}

impl Connection {
    /// Sends one message and returns every recipient's reply. The session is ready for another
    /// message afterwards (an RSET is sent first when the transaction was aborted).
    async fn transaction(
        &mut self,
        outgoing: &Outgoing,
        body: &[u8],
    ) -> Result<Outcome, AttemptFailure> {
        // Settle what the last transaction left (an RSET and its reply).
        loop {
            match self.client.next_event() {
                ClientEvent::Ready => break,
                ClientEvent::NeedInput => self.exchange().await?,
                ClientEvent::Failed(failure) => {
                    return Err(AttemptFailure {
                        next_host: false,
                        reply: failure.reply,
                    });
                }
                _ => return Err(temporary(4, 5, 0, "unexpected session state".into())),
            }
        }
        self.client.send(outgoing.clone());
        self.messages += 1;
        loop {
            match self.client.next_event() {
                ClientEvent::NeedInput => self.exchange().await?,
                ClientEvent::SendBody => {
                    self.flush().await?;
                    for block in dot_stuff(body).chunks(64 * 1024) {
                        write(&mut self.stream, block, self.timeouts.data_block.get())
                            .await
                            .map_err(|_| self.lost())?;
                    }
                    self.client.body_sent();
                }
                ClientEvent::Done(outcome) => return Ok(outcome),
                ClientEvent::Failed(failure) => {
                    return Err(AttemptFailure {
                        next_host: before_session(failure.stage),
                        reply: failure.reply,
                    });
                }
                ClientEvent::Ready | ClientEvent::StartTls | ClientEvent::Closed => {
                    return Err(temporary(4, 5, 0, "unexpected session state".into()));
                }
            }
        }
    }

    /// Writes what the client has to say, then reads the server's next bytes.
    async fn exchange(&mut self) -> Result<(), AttemptFailure> {
        self.flush().await?;
        let t = &self.timeouts;
        let wait = match self.client.waiting_for() {
            Wait::Greeting => t.greeting.get(),
            Wait::Command => t.command.get(),
            Wait::DataInit => t.data_init.get(),
            Wait::DataEnd => t.data_end.get(),
        };
        let n = match timeout(wait, self.stream.read(&mut self.buf)).await {
            Ok(Ok(n)) => n,
            Ok(Err(_)) => 0,
            Err(_) => {
                let mut failure = temporary(4, 4, 2, "timed out waiting for the server".into());
                failure.next_host = self.client.waiting_for() == Wait::Greeting;
                return Err(failure);
            }
        };
        if n == 0 {
            return Err(self.lost());
        }
        self.client.receive(&self.buf[..n]);
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), AttemptFailure> {
        let output = self.client.take_output();
        write(&mut self.stream, &output, self.timeouts.command.get())
            .await
            .map_err(|_| self.lost())
    }

    fn lost(&mut self) -> AttemptFailure {
        let failure = self.client.connection_lost();
        AttemptFailure {
            next_host: before_session(failure.stage),
            reply: failure.reply,
        }
    }

    /// Ends the session politely, best effort.
    async fn quit(mut self) {
        self.client.quit();
        if self.flush().await.is_ok() {
            let _ = timeout(Duration::from_secs(5), self.stream.read(&mut self.buf)).await;
        }
        let _ = self.stream.shutdown().await;
    }
}

/// Open sessions waiting for the next message to the same next hop.
#[derive(Debug)]
pub struct Pool {
    idle: Mutex<HashMap<String, Vec<(Connection, Instant)>>>,
    max_messages: usize,
    max_idle: usize,
    idle_timeout: Duration,
}

impl Pool {
    /// A pool keeping at most `max_idle` sessions per next hop, each for `max_messages`
    /// messages and `idle_timeout` without use.
    pub fn new(max_messages: usize, max_idle: usize, idle_timeout: Duration) -> Pool {
        Pool {
            idle: Mutex::default(),
            max_messages,
            max_idle,
            idle_timeout,
        }
    }

    fn key(&self, target: &Target, settings: &Settings) -> String {
        let user = settings.auth.as_ref().map_or("", |(user, _)| user.as_str());
        format!(
            "{}|{}|{:?}|{user}",
            target.address, target.host, settings.tls
        )
    }

    fn take(&self, key: &str) -> Option<Connection> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let sessions = idle.get_mut(key)?;
        while let Some((connection, since)) = sessions.pop() {
            if since.elapsed() < self.idle_timeout {
                return Some(connection);
            }
            tokio::spawn(connection.quit());
        }
        None
    }

    async fn give_back(&self, key: String, connection: Connection) {
        if connection.messages >= self.max_messages {
            connection.quit().await;
            return;
        }
        let surplus = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            let sessions = idle.entry(key).or_default();
            if sessions.len() < self.max_idle {
                sessions.push((connection, Instant::now()));
                None
            } else {
                Some(connection)
            }
        };
        if let Some(connection) = surplus {
            connection.quit().await;
        }
    }
}

async fn write<S: AsyncWrite + Unpin>(
    stream: &mut S,
    bytes: &[u8],
    limit: Duration,
) -> std::io::Result<()> {
    if bytes.is_empty() {
        return Ok(());
    }
    match timeout(limit, async {
        stream.write_all(bytes).await?;
        stream.flush().await
    })
    .await
    {
        Ok(result) => result,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "write timed out",
        )),
    }
}

fn temporary(class: u8, subject: u16, detail: u16, text: String) -> AttemptFailure {
    AttemptFailure {
        reply: Reply::new(451, Status(class, subject, detail), text),
        next_host: false,
    }
}

fn unreachable(text: String) -> AttemptFailure {
    AttemptFailure {
        next_host: true,
        ..temporary(4, 4, 1, text)
    }
}

/// Failures before MAIL: the host did not take the session, so another MX may.
fn before_session(stage: Stage) -> bool {
    matches!(stage, Stage::Greeting | Stage::Ehlo | Stage::StartTls)
}
