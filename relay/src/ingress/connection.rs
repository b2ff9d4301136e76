//! Drives one [`Session`] over a socket: reads, timeouts, TLS upgrade, AUTH and queueing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use postern_smtp::{Event, Message, Peer, QueueUnavailable, Session};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::timeout;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use super::received::Trace;
use super::{ListenerContext, Shared};
use crate::queue::{ClientFacts, Submission};

/// Read size while waiting for commands: small, so idle sessions stay cheap.
const COMMAND_BUFFER: usize = 4 * 1024;
/// Read size while message content streams in.
const DATA_BUFFER: usize = 64 * 1024;

/// How a drive over one stream ended.
enum Outcome<S> {
    Closed,
    StartTls(S),
}

/// One client connection.
pub(super) struct Connection {
    shared: Arc<Shared>,
    listener: Arc<ListenerContext>,
    peer: SocketAddr,
    tls: Option<(String, String)>,
    shutdown: CancellationToken,
    shutdown_seen: bool,
}

impl Connection {
    pub(super) fn new(
        shared: Arc<Shared>,
        listener: Arc<ListenerContext>,
        peer: SocketAddr,
        shutdown: CancellationToken,
    ) -> Self {
        Connection {
            shared,
            listener,
            peer,
            tls: None,
            shutdown,
            shutdown_seen: false,
        }
    }

    /// Serves the connection until it closes.
    pub(super) async fn run(mut self, stream: tokio::net::TcpStream) -> std::io::Result<()> {
        let relay_allowed = self.shared.relay_allowed(self.peer.ip());
        if self.listener.implicit_tls {
            let tls = Box::pin(self.handshake(stream)).await?;
            let mut session = Session::new(
                self.listener.session.clone(),
                Peer {
                    relay_allowed,
                    tls: true,
                },
            );
            Box::pin(self.drive(&mut session, tls)).await?;
            return Ok(());
        }
        let mut session = Session::new(
            self.listener.session.clone(),
            Peer {
                relay_allowed,
                tls: false,
            },
        );
        if let Outcome::StartTls(stream) = self.drive(&mut session, stream).await? {
            let tls = Box::pin(self.handshake(stream)).await?;
            session.tls_started();
            Box::pin(self.drive(&mut session, tls)).await?;
        }
        Ok(())
    }

    async fn handshake(
        &mut self,
        stream: tokio::net::TcpStream,
    ) -> std::io::Result<TlsStream<tokio::net::TcpStream>> {
        let acceptor = self
            .shared
            .tls
            .clone()
            .map(tokio_rustls::TlsAcceptor::from)
            .ok_or_else(|| std::io::Error::other("TLS listener without certificate"))?;
        let limit = self.shared.limits.command_timeout.get();
        let stream = timeout(limit, acceptor.accept(stream))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out")
            })??;
        let (_, state) = stream.get_ref();
        let version = state
            .protocol_version()
            .and_then(|v| v.as_str())
            .unwrap_or("TLS")
            .replace("v1_", "v1.");
        let cipher = state
            .negotiated_cipher_suite()
            .and_then(|c| c.suite().as_str())
            .unwrap_or("unknown");
        self.tls = Some((version, cipher.to_string()));
        Ok(stream)
    }

    async fn drive<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        session: &mut Session,
        mut stream: S,
    ) -> std::io::Result<Outcome<S>> {
        let mut buf = Vec::new();
        let mut data_started: Option<(Instant, u64)> = None;
        loop {
            match session.next_event() {
                Event::NeedInput => {
                    self.flush(session, &mut stream).await?;
                    let size = if session.reading_message() {
                        data_started.get_or_insert((Instant::now(), 0));
                        DATA_BUFFER
                    } else {
                        data_started = None;
                        COMMAND_BUFFER
                    };
                    if buf.len() != size {
                        buf = vec![0u8; size];
                    }
                    match self
                        .read(session, &mut stream, &mut buf, &mut data_started)
                        .await?
                    {
                        Some(0) => return Ok(Outcome::Closed),
                        Some(n) => session.receive(&buf[..n]),
                        None => {}
                    }
                }
                Event::StartTls => {
                    self.flush(session, &mut stream).await?;
                    session.discard_input();
                    return Ok(Outcome::StartTls(stream));
                }
                Event::Authenticate { user, password } => {
                    let verified = match &self.shared.users {
                        Some(users) => Box::pin(users.verify(user.clone(), password)).await,
                        None => false,
                    };
                    info!(peer = %self.peer, %user, verified, "authentication");
                    session.auth_result(verified.then_some(user));
                }
                Event::Message(message) => {
                    // Boxed: an idle session's task should not reserve room for the queueing
                    // path's large future.
                    let result = Box::pin(self.enqueue(*message)).await;
                    session.message_result(result);
                }
                Event::Close => {
                    self.flush(session, &mut stream).await?;
                    let _ = stream.shutdown().await;
                    return Ok(Outcome::Closed);
                }
            }
        }
    }

    /// Reads once, enforcing timeouts and reacting to shutdown. `None` means "no bytes, look again".
    async fn read<S: AsyncRead + Unpin>(
        &mut self,
        session: &mut Session,
        stream: &mut S,
        buf: &mut [u8],
        data_started: &mut Option<(Instant, u64)>,
    ) -> std::io::Result<Option<usize>> {
        let limits = &self.shared.limits;
        let idle = if session.reading_message() {
            limits.data_timeout.get()
        } else {
            limits.command_timeout.get()
        };
        let read = tokio::select! {
            read = timeout(idle, stream.read(buf)) => read,
            () = self.shutdown.cancelled(), if !self.shutdown_seen => {
                self.shutdown_seen = true;
                session.shutdown();
                return Ok(None);
            }
        };
        let Ok(read) = read else {
            info!(peer = %self.peer, "client timed out");
            session.timed_out();
            return Ok(None);
        };
        let n = read?;
        if let Some((start, bytes)) = data_started.as_mut() {
            *bytes += n as u64;
            let elapsed = start.elapsed();
            if elapsed > limits.data_timeout.get()
                && (*bytes as f64) < limits.min_data_rate as f64 * elapsed.as_secs_f64()
            {
                info!(peer = %self.peer, bytes = *bytes, ?elapsed, "client below the minimum data rate");
                session.timed_out();
                return Ok(None);
            }
        }
        Ok(Some(n))
    }

    async fn flush<S: AsyncWrite + Unpin>(
        &self,
        session: &mut Session,
        stream: &mut S,
    ) -> std::io::Result<()> {
        let replies = session.take_replies();
        if replies.is_empty() {
            return Ok(());
        }
        let mut out = Vec::new();
        for reply in &replies {
            self.shared.metrics.reply(reply);
            out.extend_from_slice(&reply.to_bytes());
        }
        stream.write_all(&out).await?;
        stream.flush().await
    }

    async fn enqueue(&self, message: Message) -> Result<String, QueueUnavailable> {
        let shared = &self.shared;
        shared.metrics.transactions.inc();
        let id = ulid::Ulid::new();
        let queue_id = id.to_string();
        let span = info_span!("smtp.message", %queue_id, peer = %self.peer);
        let traceparent = crate::telemetry::join_trace(&span, id.0);
        let now = SystemTime::now();
        let recipients: Vec<(String, String)> = message
            .recipients
            .iter()
            .map(|r| (r.to_string(), r.domain().to_string()))
            .collect();
        let single = (recipients.len() == 1).then(|| recipients[0].0.as_str());
        let trace = Trace {
            helo: &message.helo,
            client: self.peer.ip(),
            hostname: &shared.hostname,
            esmtp: message.esmtp,
            smtputf8: message.smtputf8,
            authenticated: message.auth_user.is_some(),
            tls: self.tls.as_ref().map(|(v, c)| (v.as_str(), c.as_str())),
            queue_id: &queue_id,
            recipient: single,
            time: now,
        };
        // DKIM-Signature fields first, then the Received field, then the message.
        let mut body = shared.signers.sign(&message.body);
        body.extend_from_slice(trace.header().as_bytes());
        body.extend_from_slice(&message.body);
        let size = body.len();
        let sender = message.from.to_string();
        let submission = Submission {
            queue_id: queue_id.clone(),
            sender: sender.clone(),
            recipients,
            body,
            received_at_ms: now
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            client: ClientFacts {
                address: self.peer.ip().to_canonical().to_string(),
                helo: message.helo.clone(),
                tls: self.tls.as_ref().map(|(v, c)| format!("{v} {c}")),
                auth_user: message.auth_user.clone(),
            },
            smtputf8: message.smtputf8,
            eight_bit_mime: message.eight_bit_mime,
            traceparent,
        };
        let rcpts = message.recipients.len();
        let started = Instant::now();
        match shared.queue.enqueue(submission).instrument(span).await {
            Ok(()) => {
                shared
                    .metrics
                    .enqueue_seconds
                    .observe(started.elapsed().as_secs_f64());
                shared.metrics.messages_accepted.inc();
                shared.metrics.bytes_accepted.inc_by(size as u64);
                info!(%queue_id, peer = %self.peer, from = %sender, rcpts, size, "message queued");
                Ok(queue_id)
            }
            Err(err) => {
                shared
                    .metrics
                    .enqueue_failures
                    .get_or_create(&vec![("cause", err.as_label())])
                    .inc();
                warn!(%queue_id, peer = %self.peer, %err, "message not queued, answered 451");
                Err(QueueUnavailable)
            }
        }
    }
}
