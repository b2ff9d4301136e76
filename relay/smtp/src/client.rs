//! The client side of an ESMTP session as a state machine without I/O, for delivery.
//!
//! The I/O layer writes what [`Client::take_output`] returns, feeds server bytes with
//! [`Client::receive`], asks [`Client::next_event`] what to do, and waits for the server at most
//! until [`Client::deadline`], then calls [`Client::handle_timeout`]. Every call that starts or
//! ends a wait takes `now`, so the session owns its deadlines: each reply has a total time limit
//! from the moment its command was written, however slowly the server trickles it.
//!
//! A reply counts only for a command already written, in order, and only with a code that
//! command can get. Anything else is a protocol violation that fails the session: bytes from the
//! server before any command was written, more replies than commands, a reply while the body is
//! being written, a 2xx to DATA. A broken or hostile server therefore cannot make a message look
//! delivered: [`ClientEvent::Done`] with a 2xx for a recipient comes only after the body was
//! written and the server's final reply followed it.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::address::{Address, ReversePath};
use crate::dsn::{self, DsnRequest};
use crate::reply::{Reply, ReplyError, ReplyParser, Status};

/// When to use STARTTLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartTls {
    /// Never, even when offered.
    Never,
    /// When the server offers it.
    Opportunistic,
    /// Always; a server that does not offer it fails the session.
    Required,
}

/// How long the server may take over each reply, counted from when its command was written
/// (RFC 5321 §4.5.3.2). They are deadlines: bytes trickling in do not extend them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeouts {
    /// The 220 greeting, from the connection.
    pub greeting: Duration,
    /// EHLO, STARTTLS, AUTH, MAIL, RCPT, RSET and QUIT.
    pub command: Duration,
    /// The 354 after DATA.
    pub data_init: Duration,
    /// The reply after the final dot.
    pub data_end: Duration,
}

/// How the client introduces itself and secures the session.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Name sent with EHLO or HELO.
    pub helo_name: String,
    pub starttls: StartTls,
    /// AUTH PLAIN credentials (user, password), for smarthosts.
    pub auth: Option<(String, String)>,
    pub timeouts: Timeouts,
}

/// What the server said it supports in its EHLO reply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extensions {
    pub pipelining: bool,
    /// `Some(0)` means SIZE without a limit.
    pub size: Option<u64>,
    pub eight_bit_mime: bool,
    pub smtputf8: bool,
    pub starttls: bool,
    pub auth_plain: bool,
    /// Delivery status notifications (RFC 3461): the DSN parameters may be passed on.
    pub dsn: bool,
    /// REQUIRETLS (RFC 8689): the server keeps requiring TLS on the message's way on.
    pub require_tls: bool,
}

impl Extensions {
    fn parse(reply: &Reply) -> Extensions {
        let mut ext = Extensions::default();
        for line in reply.lines.iter().skip(1) {
            let mut words = line.split_ascii_whitespace();
            let keyword = words.next().unwrap_or_default().to_ascii_uppercase();
            match keyword.as_str() {
                "PIPELINING" => ext.pipelining = true,
                "SIZE" => ext.size = Some(words.next().and_then(|w| w.parse().ok()).unwrap_or(0)),
                "8BITMIME" => ext.eight_bit_mime = true,
                "SMTPUTF8" => ext.smtputf8 = true,
                "STARTTLS" => ext.starttls = true,
                "DSN" => ext.dsn = true,
                "REQUIRETLS" => ext.require_tls = true,
                "AUTH" => ext.auth_plain = words.any(|w| w.eq_ignore_ascii_case("PLAIN")),
                _ => {}
            }
        }
        ext
    }
}

/// One message for the recipients of one destination. The address types cannot hold CR, LF
/// or anything else that would change the command lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub from: ReversePath,
    pub recipients: Vec<Address>,
    /// Body size in bytes before dot-stuffing.
    pub size: u64,
    pub smtputf8: bool,
    /// The body holds bytes above 127, so it needs 8BITMIME.
    pub eight_bit: bool,
    /// The sender's DSN requests, passed on when the server offers DSN.
    pub dsn: DsnRequest,
    /// REQUIRETLS: sent only over TLS to a server that offers REQUIRETLS, with the parameter.
    pub require_tls: bool,
}

/// Who decided a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The server sent it.
    Server,
    /// The client refused to send, from what the server announced (SIZE, SMTPUTF8, 8BITMIME).
    Client,
}

/// How a transaction ended: one reply per recipient, in the order of [`Outgoing::recipients`].
/// A recipient accepted at RCPT gets the reply to the end of data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub replies: Vec<Reply>,
    pub source: Source,
    /// The server offered DSN, so the DSN requests went with the message: reports are its
    /// to send from here on.
    pub dsn: bool,
}

/// Why a session ended early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The server refused (its reply is the failure's).
    Refused,
    /// The client refused to go on (STARTTLS required but not offered).
    Local,
    /// The server broke the protocol; what it said does not count.
    Violation,
    /// A reply did not arrive before its deadline.
    Timeout,
    /// The connection closed or failed.
    Lost,
}

/// Why a session cannot go on. Recipients of a transaction in progress have no outcome yet; the
/// I/O layer treats them with this reply (a 4xx unless the server refused with a 5xx).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub stage: Stage,
    pub reply: Reply,
    pub kind: FailureKind,
}

/// Where in the session something happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Greeting,
    Ehlo,
    StartTls,
    Auth,
    Mail,
    Rcpt,
    Data,
    DataEnd,
    Rset,
}

/// What the I/O layer must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// Write the output, then read more (until [`Client::deadline`]).
    NeedInput,
    /// Write the output, run the TLS handshake, then call [`Client::tls_started`].
    StartTls,
    /// The session is idle: call [`Client::send`] or [`Client::quit`].
    Ready,
    /// Write the output, then the body as [`crate::dot::DotStuffer`] makes it, then call
    /// [`Client::body_sent`]. Bytes the server sends meanwhile go to [`Client::receive`].
    SendBody,
    /// A transaction ended with a reply for every recipient.
    Done(Outcome),
    /// The session cannot be used any more; close it.
    Failed(Failure),
    /// QUIT was answered; close the connection.
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Greeting,
    Ehlo,
    Helo,
    StartTls,
    Auth,
    Mail,
    Rcpt(usize),
    Data,
    DataEnd,
    /// The 354 came although no recipient was accepted: the lone `.` was sent.
    EmptyData,
    Rset,
    Quit,
}

impl Expect {
    /// The codes a server may answer this command with; anything else is a violation.
    fn allows(self, code: u16) -> bool {
        let final_class = matches!(code / 100, 4 | 5);
        match self {
            Expect::Greeting | Expect::StartTls => code == 220 || final_class,
            Expect::Auth => code == 235 || code == 334 || final_class,
            Expect::Data => code == 354 || final_class,
            Expect::Quit => true,
            Expect::Ehlo
            | Expect::Helo
            | Expect::Mail
            | Expect::Rcpt(_)
            | Expect::DataEnd
            | Expect::EmptyData
            | Expect::Rset => code / 100 == 2 || final_class,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Expect::Greeting => "the greeting",
            Expect::Ehlo => "EHLO",
            Expect::Helo => "HELO",
            Expect::StartTls => "STARTTLS",
            Expect::Auth => "AUTH",
            Expect::Mail => "MAIL",
            Expect::Rcpt(_) => "RCPT",
            Expect::Data => "DATA",
            Expect::DataEnd | Expect::EmptyData => "the end of data",
            Expect::Rset => "RSET",
            Expect::Quit => "QUIT",
        }
    }
}

/// A reply the client waits for; `sent_at` is set once its command was written.
#[derive(Debug, Clone, Copy)]
struct Pending {
    expect: Expect,
    sent_at: Option<Instant>,
}

#[derive(Debug)]
struct Transaction {
    outgoing: Outgoing,
    replies: Vec<Option<Reply>>,
    mail_failed: Option<Reply>,
    next_rcpt: usize,
}

/// One client session.
#[derive(Debug)]
pub struct Client {
    config: ClientConfig,
    parser: ReplyParser,
    output: Vec<u8>,
    expect: VecDeque<Pending>,
    extensions: Extensions,
    tls: bool,
    transaction: Option<Transaction>,
    pending: Option<ClientEvent>,
    closed: bool,
    /// When the clock of the first pending reply started.
    waiting_since: Option<Instant>,
    /// When the last bytes arrived.
    last_input: Instant,
    /// Between [`ClientEvent::SendBody`] and [`Client::body_sent`].
    sending_body: bool,
    /// A violation seen by [`Client::receive`], reported by the next event.
    violation: Option<String>,
}

impl Client {
    /// A session on a connection opened at `now`; it starts by waiting for the greeting.
    pub fn new(config: ClientConfig, now: Instant) -> Client {
        Client {
            config,
            parser: ReplyParser::default(),
            output: Vec::new(),
            expect: VecDeque::from([Pending {
                expect: Expect::Greeting,
                sent_at: Some(now),
            }]),
            extensions: Extensions::default(),
            tls: false,
            transaction: None,
            pending: None,
            closed: false,
            waiting_since: Some(now),
            last_input: now,
            sending_body: false,
            violation: None,
        }
    }

    /// What the server offered in its last EHLO reply.
    pub fn extensions(&self) -> &Extensions {
        &self.extensions
    }

    /// True once STARTTLS succeeded.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// Adds bytes read from the server at `now`. Bytes that answer nothing the client wrote
    /// make the session fail at the next event.
    pub fn receive(&mut self, bytes: &[u8], now: Instant) {
        if bytes.is_empty() || self.closed {
            return;
        }
        let awaited = self.expect.front().is_some_and(|p| p.sent_at.is_some());
        // Bytes to an idle session are judged whole by the next event: a 421 closing it is
        // allowed at any time (RFC 5321 §3.8).
        let idle = self.expect.is_empty() && !self.sending_body;
        if self.violation.is_none() && !idle {
            if self.sending_body {
                self.violation = Some("it replied before the message was sent".into());
            } else if !awaited {
                self.violation = Some(format!(
                    "it sent {} bytes when no reply was due",
                    bytes.len()
                ));
            }
        }
        self.parser.feed(bytes);
        self.last_input = now;
    }

    /// Bytes to write to the server; they count as written at `now`, which starts the clock of
    /// the replies they ask for.
    pub fn take_output(&mut self, now: Instant) -> Vec<u8> {
        for (index, pending) in self.expect.iter_mut().enumerate() {
            if pending.sent_at.is_none() {
                pending.sent_at = Some(now);
                if index == 0 {
                    self.waiting_since = Some(now);
                }
            }
        }
        std::mem::take(&mut self.output)
    }

    /// When the reply being waited for is overdue; `None` while nothing is awaited.
    pub fn deadline(&self) -> Option<Instant> {
        if self.sending_body || self.closed || self.pending.is_some() {
            return None;
        }
        let front = self.expect.front()?;
        front.sent_at?;
        let t = &self.config.timeouts;
        let limit = match front.expect {
            Expect::Greeting => t.greeting,
            Expect::Data => t.data_init,
            Expect::DataEnd | Expect::EmptyData => t.data_end,
            _ => t.command,
        };
        Some(self.waiting_since? + limit)
    }

    /// Fails the session when its deadline has passed at `now`; true if it did.
    pub fn handle_timeout(&mut self, now: Instant) -> bool {
        let Some(deadline) = self.deadline() else {
            return false;
        };
        if now < deadline {
            return false;
        }
        let front = self.expect.front().map_or(Expect::Rset, |p| p.expect);
        let waited = deadline.saturating_duration_since(self.waiting_since.unwrap_or(deadline));
        let reply = Reply::new(
            451,
            Status(4, 4, 2),
            format!(
                "No complete reply to {} within {}s",
                front.name(),
                waited.as_secs()
            ),
        );
        let event = self.fail(Stage::from(front), reply, FailureKind::Timeout);
        self.pending = Some(event);
        true
    }

    /// The TLS handshake after STARTTLS succeeded: anything the server sent before it is
    /// dropped, and EHLO is sent again.
    pub fn tls_started(&mut self) {
        self.tls = true;
        self.parser = ReplyParser::default();
        self.violation = None;
        self.extensions = Extensions::default();
        self.command(&format!("EHLO {}", self.config.helo_name), Expect::Ehlo);
    }

    /// Starts a transaction; only valid after [`ClientEvent::Ready`].
    pub fn send(&mut self, outgoing: Outgoing) {
        if let Some(reply) = self.refusal(&outgoing) {
            let replies = vec![reply; outgoing.recipients.len()];
            self.pending = Some(ClientEvent::Done(Outcome {
                replies,
                source: Source::Client,
                dsn: false,
            }));
            return;
        }
        let mut mail = format!("MAIL FROM:<{}>", outgoing.from);
        if self.extensions.size.is_some() {
            mail.push_str(&format!(" SIZE={}", outgoing.size));
        }
        if outgoing.eight_bit {
            mail.push_str(" BODY=8BITMIME");
        }
        if outgoing.smtputf8 {
            mail.push_str(" SMTPUTF8");
        }
        if outgoing.require_tls {
            mail.push_str(" REQUIRETLS");
        }
        if self.extensions.dsn {
            if let Some(ret) = outgoing.dsn.ret {
                mail.push_str(&format!(" RET={ret}"));
            }
            if let Some(envid) = &outgoing.dsn.envid {
                mail.push_str(&format!(" ENVID={}", dsn::xtext_encode(envid)));
            }
        }
        self.command(&mail, Expect::Mail);
        let count = outgoing.recipients.len();
        let mut transaction = Transaction {
            outgoing,
            replies: vec![None; count],
            mail_failed: None,
            next_rcpt: 0,
        };
        if self.extensions.pipelining {
            for (index, rcpt) in transaction.outgoing.recipients.iter().enumerate() {
                let line = rcpt_line(self.extensions.dsn, rcpt, &transaction.outgoing.dsn);
                self.command(&line, Expect::Rcpt(index));
            }
            transaction.next_rcpt = count;
            self.command("DATA", Expect::Data);
        }
        self.transaction = Some(transaction);
    }

    /// Why the message cannot go to this server at all, from what it announced. These are the
    /// client's decisions, reported as such ([`Source::Client`]).
    fn refusal(&self, outgoing: &Outgoing) -> Option<Reply> {
        let ext = &self.extensions;
        if outgoing.require_tls && !(self.tls && ext.require_tls) {
            // RFC 8689 §4.2.1: the message must not go on without TLS and REQUIRETLS.
            let why = if self.tls {
                "the server does not offer REQUIRETLS"
            } else {
                "the session is not encrypted"
            };
            return Some(Reply::new(
                550,
                Status(5, 7, 30),
                format!("REQUIRETLS support required: {why}"),
            ));
        }
        if outgoing.smtputf8 && !ext.smtputf8 {
            return Some(Reply::new(
                553,
                Status(5, 6, 7),
                "The message needs SMTPUTF8, which the server does not offer",
            ));
        }
        if outgoing.eight_bit && !ext.eight_bit_mime {
            // RFC 6152 §3: 8-bit content is converted or returned, never sent as is. It is
            // returned: converting would break the DKIM signatures made when it was accepted.
            return Some(Reply::new(
                554,
                Status(5, 6, 3),
                "The message has 8-bit content and the server does not offer 8BITMIME",
            ));
        }
        match ext.size {
            Some(max) if max > 0 && outgoing.size > max => Some(Reply::new(
                552,
                Status(5, 3, 4),
                format!(
                    "The message is {} bytes and the server accepts at most {max} (SIZE)",
                    outgoing.size
                ),
            )),
            _ => None,
        }
    }

    /// The dot-stuffed body and its terminator were written at `now`.
    pub fn body_sent(&mut self, now: Instant) {
        self.sending_body = false;
        self.expect.push_back(Pending {
            expect: Expect::DataEnd,
            sent_at: Some(now),
        });
        self.waiting_since = Some(now);
    }

    /// Ends the session politely.
    pub fn quit(&mut self) {
        self.command("QUIT", Expect::Quit);
    }

    /// Processes buffered replies until something needs the I/O layer.
    pub fn next_event(&mut self) -> ClientEvent {
        loop {
            if let Some(event) = self.pending.take() {
                return event;
            }
            if self.closed {
                return ClientEvent::Closed;
            }
            if let Some(what) = self.violation.take() {
                return self.violated(&what);
            }
            if self.sending_body {
                return ClientEvent::SendBody;
            }
            let Some(&front) = self.expect.front() else {
                if !self.parser.is_empty() {
                    return self.unsolicited();
                }
                return ClientEvent::Ready;
            };
            let Some(sent_at) = front.sent_at else {
                if !self.parser.is_empty() {
                    return self.violated("it replied before the command was sent");
                }
                return ClientEvent::NeedInput;
            };
            let reply = match self.parser.next_reply() {
                Ok(Some(reply)) => reply,
                Ok(None) => return ClientEvent::NeedInput,
                Err(err) => return self.violated(&malformed(&err)),
            };
            self.expect.pop_front();
            // The next reply's clock runs from when this one completed, or from when its own
            // command was written if that was later.
            if let Some(next) = self.expect.front().and_then(|p| p.sent_at) {
                self.waiting_since = Some(next.max(self.last_input).max(sent_at));
            }
            let expect = front.expect;
            if !expect.allows(reply.code) {
                return self.violated(&format!(
                    "it answered {} with {}",
                    expect.name(),
                    reply.code
                ));
            }
            if reply.code == 421 && expect != Expect::Quit {
                return self.fail(Stage::from(expect), reply, FailureKind::Refused);
            }
            if let Some(event) = self.handle(expect, reply) {
                if event == ClientEvent::SendBody && !self.parser.is_empty() {
                    return self.violated("it replied before the message was sent");
                }
                return event;
            }
        }
    }

    /// The connection closed or failed before the session ended.
    pub fn connection_lost(&mut self) -> Failure {
        let stage = self.stage();
        self.closed = true;
        Failure {
            stage,
            reply: Reply::new(451, Status(4, 4, 2), "Connection lost"),
            kind: FailureKind::Lost,
        }
    }

    fn handle(&mut self, expect: Expect, reply: Reply) -> Option<ClientEvent> {
        let ok = reply.class() == 2;
        match expect {
            Expect::Greeting if reply.code == 220 => {
                self.command(&format!("EHLO {}", self.config.helo_name), Expect::Ehlo);
            }
            Expect::Greeting => {
                return Some(self.fail(Stage::Greeting, reply, FailureKind::Refused));
            }
            Expect::Ehlo if ok => {
                self.extensions = Extensions::parse(&reply);
                self.after_ehlo();
            }
            Expect::Ehlo if reply.class() == 5 && !self.tls => {
                self.command(&format!("HELO {}", self.config.helo_name), Expect::Helo);
            }
            Expect::Helo if ok => self.after_ehlo(),
            Expect::Ehlo | Expect::Helo => {
                return Some(self.fail(Stage::Ehlo, reply, FailureKind::Refused));
            }
            Expect::StartTls if reply.code == 220 => return Some(ClientEvent::StartTls),
            Expect::StartTls => {
                return Some(self.fail(Stage::StartTls, reply, FailureKind::Refused));
            }
            Expect::Auth if reply.code == 235 => {}
            Expect::Auth => return Some(self.fail(Stage::Auth, reply, FailureKind::Refused)),
            Expect::Mail => return self.mail_reply(reply),
            Expect::Rcpt(index) => return self.rcpt_reply(index, reply),
            Expect::Data => return self.data_reply(reply),
            Expect::DataEnd => return self.finish(Some(reply)),
            Expect::EmptyData => return self.finish(None),
            Expect::Rset if ok => {}
            Expect::Rset => return Some(self.fail(Stage::Rset, reply, FailureKind::Refused)),
            Expect::Quit => self.closed = true,
        }
        None
    }

    fn after_ehlo(&mut self) {
        if !self.tls && self.config.starttls != StartTls::Never && self.extensions.starttls {
            self.command("STARTTLS", Expect::StartTls);
        } else if !self.tls && self.config.starttls == StartTls::Required {
            let reply = Reply::new(
                454,
                Status(4, 7, 10),
                "TLS is required and the server does not offer STARTTLS",
            );
            self.pending = Some(self.fail(Stage::StartTls, reply, FailureKind::Local));
        } else if let Some((user, password)) = self.config.auth.clone() {
            let response = BASE64.encode(format!("\0{user}\0{password}"));
            self.command(&format!("AUTH PLAIN {response}"), Expect::Auth);
        }
    }

    fn mail_reply(&mut self, reply: Reply) -> Option<ClientEvent> {
        let transaction = self.transaction.as_mut()?;
        if reply.class() != 2 {
            transaction.mail_failed = Some(reply);
            if !self.extensions.pipelining {
                return self.abort();
            }
            return None;
        }
        if !self.extensions.pipelining {
            self.next_rcpt_or_data();
        }
        None
    }

    fn rcpt_reply(&mut self, index: usize, reply: Reply) -> Option<ClientEvent> {
        let transaction = self.transaction.as_mut()?;
        if let Some(slot) = transaction.replies.get_mut(index) {
            *slot = Some(reply);
        }
        if !self.extensions.pipelining {
            self.next_rcpt_or_data();
        }
        None
    }

    fn next_rcpt_or_data(&mut self) {
        let Some(transaction) = self.transaction.as_mut() else {
            return;
        };
        let index = transaction.next_rcpt;
        if let Some(rcpt) = transaction.outgoing.recipients.get(index) {
            let line = rcpt_line(self.extensions.dsn, rcpt, &transaction.outgoing.dsn);
            transaction.next_rcpt += 1;
            self.command(&line, Expect::Rcpt(index));
        } else if self.accepted_any() {
            self.command("DATA", Expect::Data);
        } else {
            self.pending = self.abort();
        }
    }

    fn accepted_any(&self) -> bool {
        self.transaction.as_ref().is_some_and(|t| {
            t.mail_failed.is_none()
                && t.replies
                    .iter()
                    .any(|r| r.as_ref().is_some_and(|r| r.class() == 2))
        })
    }

    fn data_reply(&mut self, reply: Reply) -> Option<ClientEvent> {
        if reply.code == 354 {
            if self.accepted_any() {
                self.sending_body = true;
                return Some(ClientEvent::SendBody);
            }
            // RFC 2920 §3.1: nothing to send, so end the data at once.
            self.output.extend_from_slice(b".\r\n");
            self.expect.push_back(Pending {
                expect: Expect::EmptyData,
                sent_at: None,
            });
            return None;
        }
        if !self.accepted_any() {
            return self.abort();
        }
        self.finish(Some(reply))
    }

    /// Ends a transaction: accepted recipients get `final_reply`, the others their refusal.
    fn finish(&mut self, final_reply: Option<Reply>) -> Option<ClientEvent> {
        let transaction = self.transaction.take()?;
        let replies = transaction
            .replies
            .into_iter()
            .map(|reply| match (&transaction.mail_failed, reply) {
                (Some(mail), _) => mail.clone(),
                (None, Some(reply)) if reply.class() != 2 => reply,
                (None, _) => final_reply
                    .clone()
                    .unwrap_or_else(|| Reply::new(451, Status(4, 3, 0), "Transaction aborted")),
            })
            .collect();
        if final_reply.is_none() {
            self.command("RSET", Expect::Rset);
        }
        Some(ClientEvent::Done(Outcome {
            replies,
            source: Source::Server,
            dsn: self.extensions.dsn,
        }))
    }

    /// Ends a transaction that never reached DATA: everyone gets their refusal, then RSET.
    fn abort(&mut self) -> Option<ClientEvent> {
        // With pipelining, replies to commands already sent are still to come.
        if self
            .expect
            .iter()
            .any(|p| matches!(p.expect, Expect::Rcpt(_) | Expect::Data))
        {
            return None;
        }
        self.finish(None)
    }

    fn command(&mut self, line: &str, expect: Expect) {
        self.output.extend_from_slice(line.as_bytes());
        self.output.extend_from_slice(b"\r\n");
        self.expect.push_back(Pending {
            expect,
            sent_at: None,
        });
    }

    /// Where the session is: the reply it waits for, or the body it writes.
    fn stage(&self) -> Stage {
        if self.sending_body {
            return Stage::DataEnd;
        }
        self.expect
            .front()
            .map_or(Stage::Rset, |p| Stage::from(p.expect))
    }

    /// A reply to an idle session: the server closing it with 421 ends the session as the
    /// server's refusal; anything else is a violation.
    fn unsolicited(&mut self) -> ClientEvent {
        match self.parser.next_reply() {
            Ok(Some(reply)) if reply.code == 421 => {
                let stage = self.stage();
                self.fail(stage, reply, FailureKind::Refused)
            }
            _ => self.violated("it sent a reply when none was due"),
        }
    }

    fn violated(&mut self, what: &str) -> ClientEvent {
        let stage = self.stage();
        let reply = Reply::new(
            451,
            Status(4, 5, 0),
            format!("Protocol violation by the server: {what}"),
        );
        self.fail(stage, reply, FailureKind::Violation)
    }

    fn fail(&mut self, stage: Stage, reply: Reply, kind: FailureKind) -> ClientEvent {
        self.expect.clear();
        self.transaction = None;
        self.sending_body = false;
        self.closed = true;
        ClientEvent::Failed(Failure { stage, reply, kind })
    }
}

impl From<Expect> for Stage {
    fn from(expect: Expect) -> Stage {
        match expect {
            Expect::Greeting => Stage::Greeting,
            Expect::Ehlo | Expect::Helo | Expect::Quit => Stage::Ehlo,
            Expect::StartTls => Stage::StartTls,
            Expect::Auth => Stage::Auth,
            Expect::Mail => Stage::Mail,
            Expect::Rcpt(_) => Stage::Rcpt,
            Expect::Data => Stage::Data,
            Expect::DataEnd | Expect::EmptyData => Stage::DataEnd,
            Expect::Rset => Stage::Rset,
        }
    }
}

/// The RCPT command for `rcpt`, with its NOTIFY and ORCPT when the server offers DSN.
fn rcpt_line(dsn_offered: bool, rcpt: &Address, dsn: &DsnRequest) -> String {
    let mut line = format!("RCPT TO:<{rcpt}>");
    if dsn_offered {
        let request = dsn.recipient(&rcpt.to_string());
        if let Some(notify) = request.notify {
            line.push_str(&format!(" NOTIFY={notify}"));
        }
        if let Some(orcpt) = request.orcpt {
            line.push_str(&format!(" ORCPT={}", orcpt.to_param()));
        }
    }
    line
}

fn malformed(err: &ReplyError) -> String {
    format!("malformed reply ({err})")
}
