//! Sessions with next hops: connect, greet, STARTTLS and AUTH once, then one transaction per
//! message, driving the sans-IO client over any stream (TCP, or an in-memory one in tests) and
//! TLS on it. Dialing is apart ([`dial`]); the client owns the reply deadlines and this adapter
//! sleeps until them. Open sessions wait in a [`Pool`] for the next message to
//! the same next hop, swept so that an idle one is closed on time and a peer's close noticed.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use postern_config::{DeliveryTimeouts, OutboundTls};
use postern_smtp::client::{
    Client, ClientConfig, ClientEvent, Failure, FailureKind, Outcome, Outgoing, Stage, StartTls,
    Timeouts,
};
use postern_smtp::dot::DotStuffer;
use postern_smtp::{Reply, Status};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{timeout, timeout_at};

use postern_queue::Content;
use postern_queue::events::TlsDetails;

use super::dane::tlsa::Tlsa;
use super::dane::verifier::{DaneVerifier, NoMatch};
use super::tls_rpt::report::ResultType;

/// Where an attempt goes.
#[derive(Debug, Clone)]
pub struct Target {
    /// Host name (or address) for logs, bounces and TLS SNI.
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
    /// Checks certificates against the roots of `verified`, after a handshake that did not;
    /// none when there are no roots.
    pub webpki: Option<Arc<rustls::client::WebPkiServerVerifier>>,
    /// Check the certificate after the handshake, whatever `tls` is, and say how it went
    /// (`Session::certificate`): an MTA-STS policy in testing mode, for TLS reports.
    pub check_certificate: bool,
    /// DANE: STARTTLS is mandatory and the certificate must match these TLSA records.
    pub dane: Option<DaneAuthentication>,
}

/// The TLSA records an MX host is authenticated by, and the recipient domain (a name its
/// certificate may hold under DANE-TA, besides the host's own).
#[derive(Debug, Clone)]
pub struct DaneAuthentication {
    pub records: Arc<Vec<Tlsa>>,
    pub domain: String,
}

/// Why an attempt ended before every recipient had a reply: the server's reply, or a 4xx that
/// Postern made up for its own reason (a network failure, a deadline, a broken protocol).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptFailure {
    pub reply: Reply,
    /// The failure came before the server accepted the session (connection, greeting, EHLO,
    /// STARTTLS): the next MX host may do better.
    pub next_host: bool,
    /// The server said it (rather than Postern deciding).
    pub from_server: bool,
    /// The attempt failed for TLS: how, for TLS reports.
    pub tls: Option<ResultType>,
}

/// What an attempt's session was like.
#[derive(Debug, Clone, Default)]
pub struct Session {
    pub tls: Option<TlsDetails>,
    /// The server's certificate checked against the trusted roots for the host name: verified
    /// by the handshake (`tls: verify`), or after it when `Settings::check_certificate` asked.
    pub certificate: Option<Result<(), ResultType>>,
}

impl AttemptFailure {
    fn from_client(failure: Failure) -> AttemptFailure {
        AttemptFailure {
            next_host: before_session(failure.stage),
            from_server: failure.kind == FailureKind::Refused,
            tls: (failure.stage == Stage::StartTls).then_some(ResultType::StarttlsNotSupported),
            reply: failure.reply,
        }
    }
}

/// The socket of a session: plaintext until STARTTLS.
enum Stream<S> {
    Plain(S),
    Tls(Box<tokio_rustls::client::TlsStream<S>>),
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Stream<S> {
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

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Stream<S> {
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
pub struct Connection<S = TcpStream> {
    client: Client,
    stream: Stream<S>,
    /// Writing one piece of the body, or the commands.
    write_limit: Duration,
    /// Messages sent on this session so far.
    messages: usize,
    buf: Vec<u8>,
    /// The session's TLS, once STARTTLS is done.
    tls: Option<TlsDetails>,
    certificate: Option<Result<(), ResultType>>,
}

impl<S> std::fmt::Debug for Connection<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("messages", &self.messages)
            .finish_non_exhaustive()
    }
}

/// Delivers one message at `target`, on a pooled session when there is one, and says how the
/// session was protected. A session is closed after `max_messages`.
pub async fn deliver(
    pool: &Pool,
    target: &Target,
    settings: &Settings,
    outgoing: &Outgoing,
    content: &Content,
    max_messages: usize,
) -> Result<(Outcome, Session), AttemptFailure> {
    let key = pool.key(target, settings);
    if let Some(mut connection) = pool.take(&key) {
        match connection.transaction(outgoing, content).await {
            Ok(outcome) => {
                let session = connection.session();
                pool.give_back(key, connection, max_messages);
                return Ok((outcome, session));
            }
            // The server may have closed the session just now; a fresh one decides, unless
            // the body went out already and the server may hold the message.
            Err((failure, stage)) if stage_before_data(stage) => {
                tracing::debug!(host = %target.host, reply = %failure.reply.text(), "pooled session failed");
            }
            Err((failure, _)) => return Err(failure),
        }
    }
    let mut connection = open(target, settings).await?;
    let outcome = connection
        .transaction(outgoing, content)
        .await
        .map_err(|(failure, _)| failure)?;
    let session = connection.session();
    pool.give_back(key, connection, max_messages);
    Ok((outcome, session))
}

/// Opens a session, falling back to plaintext when opportunistic STARTTLS fails.
async fn open(target: &Target, settings: &Settings) -> Result<Connection, AttemptFailure> {
    let starttls = match settings.tls {
        _ if settings.dane.is_some() => StartTls::Required,
        OutboundTls::Opportunistic => StartTls::Opportunistic,
        OutboundTls::Required | OutboundTls::Verify | OutboundTls::DaneOnly => StartTls::Required,
        OutboundTls::None => StartTls::Never,
    };
    let tcp = dial(target, &settings.timeouts).await?;
    match start(tcp, target, settings, starttls).await {
        Err(AttemptError::Handshake(err))
            if settings.tls == OutboundTls::Opportunistic && settings.dane.is_none() =>
        {
            tracing::info!(host = %target.host, %err, "TLS handshake failed; retrying in plaintext");
            let tcp = dial(target, &settings.timeouts).await?;
            start(tcp, target, settings, StartTls::Never)
                .await
                .map_err(AttemptError::into_failure)
        }
        other => other.map_err(AttemptError::into_failure),
    }
}

/// Opens a TCP connection to the target within the connect timeout.
async fn dial(target: &Target, t: &DeliveryTimeouts) -> Result<TcpStream, AttemptFailure> {
    let tcp = match timeout(t.connect.get(), TcpStream::connect(&target.address)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(err)) => {
            return Err(unreachable(format!(
                "connection to {} failed: {err}",
                target.address
            )));
        }
        Err(_) => {
            return Err(unreachable(format!(
                "connection to {} timed out",
                target.address
            )));
        }
    };
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
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
                tls: Some(classify(&err)),
                ..local(
                    4,
                    7,
                    5,
                    format!("TLS handshake failed: {}", handshake_error(&err)),
                )
            },
            Other(failure) => failure,
        }
    }
}

/// Runs the session on a connected `stream` up to its first transaction: greeting, EHLO,
/// STARTTLS and AUTH.
async fn start<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    target: &Target,
    settings: &Settings,
    starttls: StartTls,
) -> Result<Connection<S>, AttemptError> {
    let t = &settings.timeouts;
    let client = Client::new(
        ClientConfig {
            helo_name: settings.helo_name.clone(),
            starttls,
            auth: settings.auth.clone(),
            timeouts: Timeouts {
                greeting: t.greeting.get(),
                command: t.command.get(),
                data_init: t.data_init.get(),
                data_end: t.data_end.get(),
            },
        },
        Instant::now(),
    );
    let mut connection = Connection {
        client,
        stream: Stream::Plain(stream),
        write_limit: t.data_block.get(),
        messages: 0,
        buf: vec![0u8; 8 * 1024],
        tls: None,
        certificate: None,
    };
    loop {
        match connection.client.next_event() {
            ClientEvent::NeedInput => connection.exchange().await.map_err(Other)?,
            ClientEvent::Ready => return Ok(connection),
            ClientEvent::StartTls => {
                connection.flush().await.map_err(Other)?;
                let Stream::Plain(plain) = connection.stream else {
                    return Err(Other(local(
                        4,
                        5,
                        0,
                        "server offered STARTTLS twice".into(),
                    )));
                };
                let verified = settings.tls == OutboundTls::Verify || settings.dane.is_some();
                let name = match ServerName::try_from(target.host.clone()) {
                    Ok(name) => name,
                    // A certificate can only be verified for the name it must hold.
                    Err(err) if verified => {
                        return Err(Handshake(std::io::Error::new(
                            std::io::ErrorKind::InvalidInput,
                            format!(
                                "{} is not a name a certificate can hold: {err}",
                                target.host
                            ),
                        )));
                    }
                    Err(_) => ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()),
                };
                let config = match (&settings.dane, settings.tls) {
                    (Some(dane), _) => DaneVerifier::new(
                        &target.host,
                        dane.records.to_vec(),
                        vec![target.host.clone(), dane.domain.clone()],
                    )
                    .client_config(),
                    (None, OutboundTls::Verify) => settings.verified.clone(),
                    (None, _) => super::tls::any_certificate(),
                };
                let connector = tokio_rustls::TlsConnector::from(config);
                // One deadline for the whole handshake, however slowly its records come.
                let tls = match timeout(t.command.get(), connector.connect(name, plain)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(err)) => return Err(Handshake(err)),
                    Err(_) => {
                        return Err(Handshake(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!("not finished within {}", t.command),
                        )));
                    }
                };
                let (version, cipher) = crate::tls::session_facts(tls.get_ref().1);
                connection.certificate = match settings.tls {
                    _ if verified => Some(Ok(())),
                    _ if settings.check_certificate => Some(check(
                        settings.webpki.as_deref(),
                        tls.get_ref().1,
                        &target.host,
                    )),
                    _ => None,
                };
                connection.tls = Some(TlsDetails {
                    version,
                    cipher,
                    verified,
                    policy: settings.dane.as_ref().map(|_| "dane".to_string()),
                });
                connection.stream = Stream::Tls(Box::new(tls));
                connection.client.tls_started();
            }
            ClientEvent::Failed(failure) if failure.stage == Stage::Auth => {
                // A refused login is a configuration problem to fix, never a bounce.
                let reply = &failure.reply;
                return Err(Other(local(
                    4,
                    7,
                    0,
                    format!(
                        "authentication refused by {}: {} {}",
                        target.host,
                        reply.code,
                        reply.text()
                    ),
                )));
            }
            ClientEvent::Failed(failure) => {
                return Err(Other(AttemptFailure::from_client(failure)));
            }
            ClientEvent::SendBody | ClientEvent::Done(_) | ClientEvent::Closed => {
                return Err(Other(local(4, 5, 0, "unexpected session state".into())));
            }
        }
    }
}

impl<S> Connection<S> {
    fn session(&self) -> Session {
        Session {
            tls: self.tls.clone(),
            certificate: self.certificate,
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    /// Sends one message and returns every recipient's reply. The session is ready for another
    /// message afterwards (an RSET is sent first when the transaction was aborted). A failure
    /// comes with the stage it happened at.
    async fn transaction(
        &mut self,
        outgoing: &Outgoing,
        content: &Content,
    ) -> Result<Outcome, (AttemptFailure, Stage)> {
        // Settle what the last transaction left (an RSET and its reply).
        loop {
            match self.client.next_event() {
                ClientEvent::Ready => break,
                ClientEvent::NeedInput => self.exchange().await.map_err(|f| (f, Stage::Rset))?,
                ClientEvent::Failed(failure) => {
                    let stage = failure.stage;
                    return Err((AttemptFailure::from_client(failure), stage));
                }
                _ => {
                    return Err((
                        local(4, 5, 0, "unexpected session state".into()),
                        Stage::Rset,
                    ));
                }
            }
        }
        self.client.send(outgoing.clone());
        self.messages += 1;
        let mut stage = Stage::Mail;
        loop {
            match self.client.next_event() {
                ClientEvent::NeedInput => self.exchange().await.map_err(|f| (f, stage))?,
                ClientEvent::SendBody => {
                    stage = Stage::DataEnd;
                    self.send_body(content).await.map_err(|f| (f, stage))?;
                }
                ClientEvent::Done(outcome) => return Ok(outcome),
                ClientEvent::Failed(failure) => {
                    let at = if stage == Stage::DataEnd {
                        stage
                    } else {
                        failure.stage
                    };
                    return Err((AttemptFailure::from_client(failure), at));
                }
                ClientEvent::Ready | ClientEvent::StartTls | ClientEvent::Closed => {
                    return Err((local(4, 5, 0, "unexpected session state".into()), stage));
                }
            }
        }
    }

    /// Writes the body piece by piece as it is read from the queue, looking for anything the
    /// server says meanwhile (which the client takes as a violation). A body that cannot be
    /// read is never ended: the connection is dropped without the final dot, so the server
    /// discards what it got.
    async fn send_body(&mut self, content: &Content) -> Result<(), AttemptFailure> {
        self.flush().await?;
        let unreadable = |err: postern_queue::BodyError| {
            local(4, 3, 0, format!("the queued body could not be read: {err}"))
        };
        let mut reader = content.reader();
        let mut stuffer = DotStuffer::default();
        let mut out = Vec::new();
        let mut next = reader.next().await;
        let mut ended = false;
        loop {
            let piece = match next {
                Ok(Some(piece)) => piece,
                Ok(None) => break,
                Err(err) => {
                    let _ = self.stream.shutdown().await;
                    return Err(unreadable(err));
                }
            };
            out.clear();
            stuffer.push(&piece, &mut out);
            // Read ahead, so the last piece goes out with the final dot in one write.
            next = reader.next().await;
            if matches!(next, Ok(None)) {
                stuffer.finish(&mut out);
                ended = true;
            }
            write(&mut self.stream, &out, self.write_limit)
                .await
                .map_err(|_| self.lost())?;
            if ended {
                // The final dot is out: from here on the server's reply is due.
                break;
            }
            self.peek().await?;
        }
        if !ended {
            out.clear();
            stuffer.finish(&mut out);
            write(&mut self.stream, &out, self.write_limit)
                .await
                .map_err(|_| self.lost())?;
        }
        self.client.body_sent(Instant::now());
        Ok(())
    }

    /// Hands the client whatever the server has sent, without waiting.
    async fn peek(&mut self) -> Result<(), AttemptFailure> {
        use futures::FutureExt;
        match self.stream.read(&mut self.buf).now_or_never() {
            None => Ok(()),
            Some(Ok(n)) if n > 0 => {
                self.client.receive(&self.buf[..n], Instant::now());
                Ok(())
            }
            Some(_) => Err(self.lost()),
        }
    }

    /// Writes what the client has to say, then reads the server's next bytes until the
    /// client's deadline.
    async fn exchange(&mut self) -> Result<(), AttemptFailure> {
        self.flush().await?;
        let Some(deadline) = self.client.deadline() else {
            return Err(local(4, 5, 0, "waiting without a deadline".into()));
        };
        match timeout_at(deadline.into(), self.stream.read(&mut self.buf)).await {
            Ok(Ok(n)) if n > 0 => {
                self.client.receive(&self.buf[..n], Instant::now());
                Ok(())
            }
            Ok(_) => Err(self.lost()),
            Err(_) => {
                self.client.handle_timeout(Instant::now());
                Ok(())
            }
        }
    }

    async fn flush(&mut self) -> Result<(), AttemptFailure> {
        let output = self.client.take_output(Instant::now());
        write(&mut self.stream, &output, self.write_limit)
            .await
            .map_err(|_| self.lost())
    }

    fn lost(&mut self) -> AttemptFailure {
        AttemptFailure::from_client(self.client.connection_lost())
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

/// Nothing of the message can have been accepted by a failure at this stage.
fn stage_before_data(stage: Stage) -> bool {
    matches!(
        stage,
        Stage::Greeting
            | Stage::Ehlo
            | Stage::StartTls
            | Stage::Auth
            | Stage::Mail
            | Stage::Rcpt
            | Stage::Rset
    )
}

/// Open sessions waiting for the next message to the same next hop. A sweep every half second
/// closes with QUIT the sessions idle for `idle_timeout`, and at once those the server closed or
/// spoke on meanwhile (a 421 before its own timeout), so no socket lingers half-closed.
#[derive(Debug)]
pub struct Pool {
    idle: Mutex<HashMap<String, Vec<(Connection, Instant)>>>,
    max_idle: usize,
    idle_timeout: Duration,
}

/// How often idle sessions are looked at.
const SWEEP: Duration = Duration::from_millis(500);

impl Pool {
    /// A pool keeping at most `max_idle` sessions per next hop, each for `idle_timeout`
    /// without use; its sweep runs until the pool is dropped.
    pub fn start(max_idle: usize, idle_timeout: Duration) -> Arc<Pool> {
        let pool = Arc::new(Pool {
            idle: Mutex::default(),
            max_idle,
            idle_timeout,
        });
        let weak = Arc::downgrade(&pool);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(SWEEP).await;
                let Some(pool) = weak.upgrade() else {
                    return;
                };
                for connection in pool.sweep() {
                    tokio::spawn(connection.quit());
                }
            }
        });
        pool
    }

    fn key(&self, target: &Target, settings: &Settings) -> String {
        let user = settings.auth.as_ref().map_or("", |(user, _)| user.as_str());
        format!(
            "{}|{}|{:?}|{}|{}|{user}",
            target.address,
            target.host,
            settings.tls,
            settings.check_certificate,
            settings.dane.is_some()
        )
    }

    fn take(&self, key: &str) -> Option<Connection> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.get_mut(key)?.pop().map(|(connection, _)| connection)
    }

    /// Keeps a session for the next message, or ends it.
    fn give_back(&self, key: String, connection: Connection, max_messages: usize) {
        if connection.messages >= max_messages {
            tokio::spawn(connection.quit());
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
            tokio::spawn(connection.quit());
        }
    }

    /// Takes out the sessions idle too long, to be ended with QUIT; drops those the server
    /// closed or spoke on.
    fn sweep(&self) -> Vec<Connection> {
        let mut expired = Vec::new();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        for sessions in idle.values_mut() {
            for (mut connection, since) in std::mem::take(sessions) {
                if since.elapsed() >= self.idle_timeout {
                    expired.push(connection);
                } else if connection.peer_is_quiet() {
                    sessions.push((connection, since));
                }
            }
        }
        idle.retain(|_, sessions| !sessions.is_empty());
        expired
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    /// True while the server has neither closed nor sent anything: a look at the socket that
    /// never waits. Whatever it read is dropped with the connection.
    fn peer_is_quiet(&mut self) -> bool {
        use futures::FutureExt;
        self.stream.read(&mut self.buf).now_or_never().is_none()
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

/// A temporary failure of Postern's own making.
fn local(class: u8, subject: u16, detail: u16, text: String) -> AttemptFailure {
    AttemptFailure {
        reply: Reply::new(451, Status(class, subject, detail), text),
        next_host: false,
        from_server: false,
        tls: None,
    }
}

/// Checks the certificate a finished handshake got (one that accepted any) for `host`.
fn check(
    webpki: Option<&rustls::client::WebPkiServerVerifier>,
    state: &rustls::ClientConnection,
    host: &str,
) -> Result<(), ResultType> {
    use rustls::client::danger::ServerCertVerifier;
    let webpki = webpki.ok_or(ResultType::CertificateNotTrusted)?;
    let certificates = state.peer_certificates().unwrap_or_default();
    let (end_entity, intermediates) = certificates
        .split_first()
        .ok_or(ResultType::ValidationFailure)?;
    let name =
        ServerName::try_from(host.to_string()).map_err(|_| ResultType::CertificateHostMismatch)?;
    match webpki.verify_server_cert(
        end_entity,
        intermediates,
        &name,
        &[],
        rustls_pki_types::UnixTime::now(),
    ) {
        Ok(_) => Ok(()),
        Err(rustls::Error::InvalidCertificate(error)) => Err(certificate_result(&error)),
        Err(_) => Err(ResultType::ValidationFailure),
    }
}

/// The TLS report result type of a failed handshake.
fn classify(err: &std::io::Error) -> ResultType {
    match err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::InvalidCertificate(certificate)) => certificate_result(certificate),
        _ => ResultType::ValidationFailure,
    }
}

/// A handshake error in words: a verifier's own error (DANE's) by its message rather than
/// rustls's debug form of it.
fn handshake_error(err: &std::io::Error) -> String {
    match err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other))) => {
            format!("invalid peer certificate: {}", other.0)
        }
        _ => err.to_string(),
    }
}

/// The result type of a certificate that did not verify.
fn certificate_result(error: &rustls::CertificateError) -> ResultType {
    use rustls::CertificateError as C;
    match error {
        C::NotValidForName | C::NotValidForNameContext { .. } => {
            ResultType::CertificateHostMismatch
        }
        C::Expired | C::ExpiredContext { .. } | C::NotValidYet | C::NotValidYetContext { .. } => {
            ResultType::CertificateExpired
        }
        C::UnknownIssuer | C::BadSignature => ResultType::CertificateNotTrusted,
        C::Other(other) if other.0.downcast_ref::<NoMatch>().is_some() => ResultType::TlsaInvalid,
        _ => ResultType::ValidationFailure,
    }
}

fn unreachable(text: String) -> AttemptFailure {
    AttemptFailure {
        next_host: true,
        ..local(4, 4, 1, text)
    }
}

/// Failures before MAIL: the host did not take the session, so another MX may.
fn before_session(stage: Stage) -> bool {
    matches!(stage, Stage::Greeting | Stage::Ehlo | Stage::StartTls)
}

#[cfg(test)]
mod tests {
    //! The adapter over an in-memory stream, against the ingress server session on the other
    //! end: the same code that runs over TCP and TLS, without a socket.
    #![allow(clippy::unwrap_used)] // a test that cannot set up may panic

    use super::*;
    use postern_smtp::testing::outgoing;
    use postern_smtp::{BareLineEndings, Event, Peer, Session, SessionConfig};

    /// Serves one session on `stream` and sends every message it would queue to `queued`.
    async fn ingress_session(
        mut stream: tokio::io::DuplexStream,
        queued: tokio::sync::mpsc::UnboundedSender<postern_smtp::Message>,
    ) {
        let config = SessionConfig {
            hostname: "mx.test".into(),
            max_recipients: 1,
            bare_line_endings: BareLineEndings::Reject,
            ..postern_smtp::testing::session_config()
        };
        let peer = Peer {
            relay_allowed: true,
            tls: false,
        };
        let mut session = Session::new(Arc::new(config), peer, Instant::now());
        let mut buf = vec![0u8; 4096];
        loop {
            let event = session.next_event();
            for reply in session.take_replies() {
                stream.write_all(&reply.to_bytes()).await.unwrap();
            }
            match event {
                Event::NeedInput => match stream.read(&mut buf).await {
                    Ok(n) if n > 0 => session.receive(&buf[..n], Instant::now()),
                    _ => return,
                },
                Event::Message(message) => {
                    queued.send(*message).unwrap();
                    session.message_result(Ok("QID".into()), Instant::now());
                }
                Event::Close => return,
                event => panic!("unexpected {event:?}"),
            }
        }
    }

    fn settings() -> Settings {
        Settings {
            helo_name: "relay.test".into(),
            tls: OutboundTls::None,
            verified: super::super::tls::any_certificate(),
            auth: None,
            timeouts: DeliveryTimeouts::default(),
            webpki: None,
            check_certificate: false,
            dane: None,
        }
    }

    #[tokio::test]
    async fn two_transactions_on_one_session_over_an_in_memory_stream() {
        let (ours, theirs) = tokio::io::duplex(1024);
        let (queued, mut received) = tokio::sync::mpsc::unbounded_channel();
        let server = tokio::spawn(ingress_session(theirs, queued));
        let target = Target::from_host_port("mx.test:25");
        let Ok(mut connection) = start(ours, &target, &settings(), StartTls::Never).await else {
            panic!("the session did not start");
        };
        // Larger than the duplex buffer, so the body goes out in several writes; a line that
        // starts with a dot is stuffed on the way and unstuffed by the server.
        let body: Vec<u8> = [
            &b"Subject: in memory\r\n\r\n.dot\r\n"[..],
            &b"line\r\n".repeat(500),
        ]
        .concat();
        let content = Content::whole(bytes::Bytes::from(body.clone()));
        let outcome = connection
            .transaction(
                &outgoing(&["b@example.org", "c@example.org"], body.len()),
                &content,
            )
            .await
            .unwrap();
        let codes: Vec<u16> = outcome.replies.iter().map(|r| r.code).collect();
        assert_eq!(
            codes,
            [250, 452],
            "one recipient per message on this server"
        );
        assert_eq!(received.recv().await.unwrap().body, body);

        let outcome = connection
            .transaction(&outgoing(&["d@example.org"], body.len()), &content)
            .await
            .unwrap();
        assert_eq!(outcome.replies[0].code, 250);
        let second = received.recv().await.unwrap();
        assert_eq!(second.recipients[0].to_string(), "d@example.org");
        connection.quit().await;
        server.await.unwrap();
    }
}
