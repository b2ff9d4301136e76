//! Drives one [`Session`] over a stream (a TCP socket, TLS on it, or anything else that reads
//! and writes): reads until the session's deadline, the TLS upgrade, AUTH, message memory,
//! streaming large messages to the body stream, and queueing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use postern_config::PregreetAction;
use postern_smtp::{
    Address, AuthOutcome, Event, Message, Peer, QueueUnavailable, Reply, Session, Status,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::timeout_at;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use super::auth::Check;
use super::header_fields::HeaderFacts;
use super::memory::Reservation;
use super::received::Trace;
use super::streaming::Streaming;
use super::{ListenerContext, Shared};
use postern_queue::events::{self, Kind};
use postern_queue::{ClientFacts, EnqueueError, Submission, Submitted};

/// Read size while waiting for commands: small, so idle sessions stay cheap.
const COMMAND_BUFFER: usize = 4 * 1024;

/// How long RCPT waits for the suppression list before it takes the recipient.
const SUPPRESSION_LOOKUP: Duration = Duration::from_secs(2);
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
    /// Message memory this session holds.
    memory: Reservation,
    /// The message being streamed to the body stream, once it outgrew `inlineBodyLimit`.
    streaming: Option<Streaming>,
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
            memory: Reservation::default(),
            streaming: None,
        }
    }

    /// Serves the connection until it closes.
    pub(super) async fn run<S: AsyncRead + AsyncWrite + Unpin>(
        mut self,
        mut stream: S,
    ) -> std::io::Result<()> {
        let result = self.serve(&mut stream).await;
        if let Some(streaming) = self.streaming.take() {
            streaming.abort().await;
        }
        result
    }

    async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        stream: &mut S,
    ) -> std::io::Result<()> {
        let relay_allowed = self.shared.relay_allowed(self.peer.ip());
        if self.listener.implicit_tls {
            let mut tls = Box::pin(self.handshake(stream)).await?;
            if !self.ready(&mut tls).await? {
                return Ok(());
            }
            let mut session = self.session(relay_allowed, true);
            Box::pin(self.drive(&mut session, tls)).await?;
            return Ok(());
        }
        if !self.ready(&mut *stream).await? {
            return Ok(());
        }
        let Some(early) = self.greeting_awaited(stream).await? else {
            return Ok(());
        };
        let mut session = self.session(relay_allowed, false);
        if !early.is_empty() {
            session.receive(&early, Instant::now());
        }
        // Not held for the rest of the session: an idle session keeps no buffer.
        drop(early);
        if let Outcome::StartTls(stream) = self.drive(&mut session, &mut *stream).await? {
            let tls = Box::pin(self.handshake(stream)).await?;
            session.tls_started(Instant::now());
            Box::pin(self.drive(&mut session, tls)).await?;
        }
        Ok(())
    }

    fn session(&self, relay_allowed: bool, tls: bool) -> Session {
        Session::new(
            self.listener.session.clone(),
            Peer { relay_allowed, tls },
            Instant::now(),
        )
    }

    /// Until the queue can take messages, a client is told to come back instead of being
    /// greeted and having its message refused after the upload.
    async fn ready<S: AsyncWrite + Unpin>(&self, stream: &mut S) -> std::io::Result<bool> {
        if self.shared.queue.is_ready() {
            return Ok(true);
        }
        info!(peer = %self.peer, "queue not ready; connection refused");
        let reply = Reply::new(
            421,
            Status(4, 3, 2),
            format!(
                "{} Service not ready, try again later",
                self.shared.hostname
            ),
        );
        stream.write_all(&reply.to_bytes()).await?;
        let _ = stream.shutdown().await;
        Ok(false)
    }

    /// RFC 5321 §3.1: the client waits for the greeting. One that talks first is counted and,
    /// unless configured otherwise, refused. Returns what it said early (to be read after the
    /// greeting when only counted), or `None` when the connection ends here.
    async fn greeting_awaited<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        stream: &mut S,
    ) -> std::io::Result<Option<Vec<u8>>> {
        let pregreet = &self.shared.pregreet;
        // Empty until a client talks first: a read into it takes a few bytes (what a polite
        // client never sends), and the rest stays in the socket for the session to read.
        let mut early = Vec::new();
        match tokio::time::timeout(pregreet.wait.get(), stream.read_buf(&mut early)).await {
            Err(_) => return Ok(Some(early)),
            // Closed or failed before the greeting: nobody to greet.
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(None),
            Ok(Ok(_)) => {}
        }
        let action = match pregreet.action {
            PregreetAction::Reject => "reject",
            PregreetAction::Count => "count",
        };
        self.shared
            .metrics
            .pregreet
            .get_or_create(&vec![("action", action)])
            .inc();
        info!(peer = %self.peer, action, "client talked before the greeting");
        if pregreet.action == PregreetAction::Count {
            return Ok(Some(early));
        }
        let reply = Reply::new(
            554,
            Status(5, 5, 0),
            "Protocol error: the client spoke before the greeting",
        );
        stream.write_all(&reply.to_bytes()).await?;
        let _ = stream.shutdown().await;
        Ok(None)
    }

    async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        stream: S,
    ) -> std::io::Result<TlsStream<S>> {
        let acceptor = self
            .shared
            .tls
            .clone()
            .map(tokio_rustls::TlsAcceptor::from)
            .ok_or_else(|| std::io::Error::other("TLS listener without certificate"))?;
        // One deadline for the whole handshake, however slowly its records come.
        let limit = self.shared.limits.command_timeout.get();
        let stream = tokio::time::timeout(limit, acceptor.accept(stream))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out")
            })??;
        let (_, state) = stream.get_ref();
        self.tls = Some(crate::tls::session_facts(state));
        Ok(stream)
    }

    async fn drive<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        session: &mut Session,
        mut stream: S,
    ) -> std::io::Result<Outcome<S>> {
        let mut buf = Vec::new();
        loop {
            session.set_mail_refusal(self.mail_refusal());
            match session.next_event() {
                Event::NeedInput => {
                    self.flush(session, &mut stream).await?;
                    self.stream_content(session).await;
                    self.shared.report_memory();
                    let size = if session.reading_message() {
                        self.reserve_for_read(session).await;
                        DATA_BUFFER
                    } else {
                        COMMAND_BUFFER
                    };
                    // Reads go into spare capacity, so a buffer is never zeroed first.
                    if buf.capacity() != size {
                        buf = Vec::with_capacity(size);
                    }
                    buf.clear();
                    match self.read(session, &mut stream, &mut buf).await? {
                        Some(0) => return Ok(Outcome::Closed),
                        Some(_) => session.receive(&buf, Instant::now()),
                        None => {}
                    }
                }
                Event::StartTls => {
                    self.flush(session, &mut stream).await?;
                    session.discard_input();
                    return Ok(Outcome::StartTls(stream));
                }
                Event::Authenticate { user, password } => {
                    let outcome = match &self.shared.passwords {
                        Some(checks) => checks.check(self.peer.ip(), &user, password).await,
                        None => Check::Refused,
                    };
                    info!(peer = %self.peer, %user, ?outcome, "authentication");
                    let outcome = match outcome {
                        Check::Verified => AuthOutcome::Verified(user),
                        Check::Refused => AuthOutcome::Refused,
                        Check::Unavailable => AuthOutcome::Unavailable,
                    };
                    session.auth_result(outcome, Instant::now());
                }
                Event::CheckRecipient(address) => {
                    let refusal = self.suppressed(&address).await;
                    session.recipient_result(refusal, Instant::now());
                }
                Event::Message(message) => {
                    // Boxed: an idle session's task should not reserve room for the queueing
                    // path's large future.
                    let result = Box::pin(self.enqueue(*message)).await;
                    self.memory.shrink_to(0);
                    session.message_result(result, Instant::now());
                }
                Event::Close => {
                    self.flush(session, &mut stream).await?;
                    let _ = stream.shutdown().await;
                    return Ok(Outcome::Closed);
                }
            }
        }
    }

    /// The refusal of a recipient on the suppression list. When the list cannot be read in
    /// time the recipient is taken: delivery looks again before any attempt.
    async fn suppressed(&self, address: &Address) -> Option<Reply> {
        let list = self.shared.suppression.as_ref()?;
        let rcpt = address.to_string();
        match tokio::time::timeout(SUPPRESSION_LOOKUP, list.get(&rcpt)).await {
            Ok(Ok(None)) => None,
            Ok(Ok(Some(entry))) => {
                info!(peer = %self.peer, %rcpt, since = entry.added_ms, "recipient on the suppression list; refused");
                Some(crate::suppression::refusal(&entry))
            }
            Ok(Err(err)) => {
                warn!(peer = %self.peer, %rcpt, %err, "suppression list not read; recipient taken");
                None
            }
            Err(_) => {
                warn!(peer = %self.peer, %rcpt, "suppression list did not answer in time; recipient taken");
                None
            }
        }
    }

    /// What MAIL gets now: refused while message memory is nearly spent or the queue is away.
    fn mail_refusal(&self) -> Option<Reply> {
        if self.shared.memory.low() {
            Some(Reply::new(
                452,
                Status(4, 3, 1),
                "Insufficient system storage, try again later",
            ))
        } else if !self.shared.queue.is_ready() {
            Some(Reply::new(
                451,
                Status(4, 3, 0),
                "Queue unavailable, try again later",
            ))
        } else {
            None
        }
    }

    /// Moves decoded content out of the session: once a message is larger than
    /// `inlineBodyLimit` it is streamed to the body stream as it arrives. A transaction that
    /// ended without a message (refused, reset) drops what it streamed.
    async fn stream_content(&mut self, session: &mut Session) {
        if !session.in_transaction() {
            if let Some(streaming) = self.streaming.take() {
                streaming.abort().await;
            }
            self.memory.shrink_to(0);
            return;
        }
        let threshold = match self.streaming {
            Some(_) => postern_queue::bodies::CHUNK,
            None => self.shared.inline_body_limit + 1,
        };
        if let Some(content) = session.take_content(threshold) {
            self.store(content).await;
        }
    }

    async fn store(&mut self, content: Vec<u8>) {
        let streaming = self.streaming.get_or_insert_with(|| {
            Streaming::start(
                &self.shared.queue,
                &self.shared.signers,
                &content,
                ulid::Ulid::new(),
            )
        });
        streaming.write(content, &mut self.memory).await;
    }

    /// Holds memory for what the session keeps plus the next read (which is held twice for a
    /// moment: in the read buffer and in the session's input). When the budget has no room,
    /// what the session holds goes to the body stream first, then the session waits for room
    /// for the read alone: the client is slowed, never buffered beyond the budget.
    async fn reserve_for_read(&mut self, session: &mut Session) {
        let memory = self.shared.memory.clone();
        let held = session.content_buffered();
        if memory.try_grow(&mut self.memory, held + 2 * DATA_BUFFER) {
            return;
        }
        if let Some(content) = session.take_content(1) {
            self.store(content).await;
        }
        self.memory.shrink_to(2 * DATA_BUFFER);
        memory.grow(&mut self.memory, 2 * DATA_BUFFER).await;
    }

    /// Reads once, until the session's deadline, reacting to shutdown. `None` means "no bytes,
    /// look again".
    async fn read<S: AsyncRead + Unpin>(
        &mut self,
        session: &mut Session,
        stream: &mut S,
        buf: &mut Vec<u8>,
    ) -> std::io::Result<Option<usize>> {
        let Some(deadline) = session.poll_timeout() else {
            return Err(std::io::Error::other("session waits without a deadline"));
        };
        let read = tokio::select! {
            read = timeout_at(deadline.into(), stream.read_buf(buf)) => read,
            () = self.shutdown.cancelled(), if !self.shutdown_seen => {
                self.shutdown_seen = true;
                session.shutdown();
                return Ok(None);
            }
        };
        match read {
            Ok(read) => read.map(Some),
            Err(_) => {
                if session.handle_timeout(Instant::now()) {
                    info!(peer = %self.peer, reading_message = session.reading_message(), "client too slow; closed");
                }
                Ok(None)
            }
        }
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

    async fn enqueue(&mut self, message: Message) -> Result<String, QueueUnavailable> {
        let shared = self.shared.clone();
        shared.metrics.transactions.inc();
        let streaming = self.streaming.take();
        let id = streaming
            .as_ref()
            .map_or_else(ulid::Ulid::new, Streaming::queue_id);
        let queue_id = id.to_string();
        let span = info_span!("smtp.message", %queue_id, peer = %self.peer);
        let traceparent = crate::telemetry::join_trace(&span, id.0);
        let now = SystemTime::now();
        let recipients: Vec<(String, String)> = message
            .recipients
            .iter()
            .map(|r| (r.to_string(), r.domain().to_string()))
            .collect();
        let accepted = recipients.clone();
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
        let received = trace.header();
        let size = message.taken as usize + message.body.len() + received.len();
        let entries = {
            let mut domains: Vec<&str> = recipients.iter().map(|(_, d)| d.as_str()).collect();
            domains.sort_unstable();
            domains.dedup();
            domains.len()
        };
        // The entries of a small message each carry a copy of it while they are published;
        // when the budget has no room for that, it goes to the body stream instead.
        let inline = streaming.is_none()
            && shared
                .memory
                .try_grow(&mut self.memory, message.body.len() * (entries + 1));
        let streaming = match streaming {
            None if !inline => Some(Streaming::start(
                &shared.queue,
                &shared.signers,
                &message.body,
                id,
            )),
            other => other,
        };
        let facts = match &streaming {
            Some(streaming) => streaming.header_facts().clone(),
            None => HeaderFacts::of(&message.body),
        };
        // DKIM-Signature fields first, then the Received field, then the message.
        let content = match streaming {
            None => {
                let mut whole = shared.signers.sign(&message.body);
                whole.extend_from_slice(received.as_bytes());
                whole.extend_from_slice(&message.body);
                Ok(Submitted::Whole(whole))
            }
            Some(mut streaming) => {
                streaming.write(message.body, &mut self.memory).await;
                streaming.finish().await.map(|(upload, signatures)| {
                    let mut head = signatures;
                    head.extend_from_slice(received.as_bytes());
                    Submitted::Streamed {
                        head,
                        upload: Box::new(upload),
                    }
                })
            }
        };
        let eight_bit = message.eight_bit || !received.is_ascii();
        let sender = message.from.to_string();
        let rcpts = message.recipients.len();
        let started = Instant::now();
        let queued = match content {
            Ok(content) => {
                let submission = Submission {
                    queue_id: queue_id.clone(),
                    sender: sender.clone(),
                    recipients,
                    content,
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
                    eight_bit,
                    traceparent,
                    dsn: message.dsn,
                    require_tls: message.require_tls,
                    // REQUIRETLS overrides the header field (RFC 8689 §5).
                    tls_optional: facts.tls_optional && !message.require_tls,
                    message_id: facts.message_id.clone(),
                };
                shared.queue.enqueue(submission).instrument(span).await
            }
            Err(err) => Err(err),
        };
        if queued.is_ok() {
            for (recipient, _) in &accepted {
                shared.events.emit(events::Event {
                    message_id: facts.message_id.clone(),
                    ..events::Event::new(Kind::Received, &queue_id, &sender).recipient(recipient)
                });
            }
        }
        self.answer(queued, &queue_id, &sender, rcpts, size, started)
    }

    fn answer(
        &self,
        queued: Result<(), EnqueueError>,
        queue_id: &str,
        sender: &str,
        rcpts: usize,
        size: usize,
        started: Instant,
    ) -> Result<String, QueueUnavailable> {
        let metrics = &self.shared.metrics;
        match queued {
            Ok(()) => {
                metrics
                    .enqueue_seconds
                    .observe(started.elapsed().as_secs_f64());
                metrics.messages_accepted.inc();
                metrics.bytes_accepted.inc_by(size as u64);
                info!(%queue_id, peer = %self.peer, from = %sender, rcpts, size, "message queued");
                Ok(queue_id.to_string())
            }
            Err(err) => {
                metrics
                    .enqueue_failures
                    .get_or_create(&vec![("cause", err.as_label())])
                    .inc();
                warn!(%queue_id, peer = %self.peer, %err, "message not queued, answered 451");
                Err(QueueUnavailable)
            }
        }
    }
}
