//! The client side of an ESMTP session as a state machine without I/O, for delivery.
//!
//! The I/O layer feeds server bytes with [`Client::receive`], asks [`Client::next_event`] what to
//! do, and writes [`Client::take_output`]. The message body is written by the I/O layer itself,
//! as [`dot_stuff`] prepares it, when the client asks with [`ClientEvent::SendBody`].

use std::collections::VecDeque;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

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

/// How the client introduces itself and secures the session.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Name sent with EHLO or HELO.
    pub helo_name: String,
    pub starttls: StartTls,
    /// AUTH PLAIN credentials (user, password), for smarthosts.
    pub auth: Option<(String, String)>,
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
                "AUTH" => ext.auth_plain = words.any(|w| w.eq_ignore_ascii_case("PLAIN")),
                _ => {}
            }
        }
        ext
    }
}

/// One message for the recipients of one destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// Reverse path without brackets; empty for the null sender.
    pub from: String,
    pub recipients: Vec<String>,
    /// Body size in bytes before dot-stuffing.
    pub size: u64,
    pub smtputf8: bool,
    pub eight_bit: bool,
}

/// The reply each recipient got. A recipient accepted at RCPT gets the reply to the end of data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub recipients: Vec<(String, Reply)>,
}

/// Why a session cannot go on. Recipients of a transaction in progress have no outcome yet; the
/// I/O layer treats them with this reply (a 4xx unless the server said otherwise).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub stage: Stage,
    pub reply: Reply,
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
    /// Write the output, then read more.
    NeedInput,
    /// Write the output, run the TLS handshake, then call [`Client::tls_started`].
    StartTls,
    /// The session is idle: call [`Client::send`] or [`Client::quit`].
    Ready,
    /// Write the output, then the body as [`dot_stuff`] makes it, then call [`Client::body_sent`].
    SendBody,
    /// A transaction ended with a reply for every recipient.
    Done(Outcome),
    /// The session cannot be used any more; close it.
    Failed(Failure),
    /// QUIT was answered; close the connection.
    Closed,
}

/// Which reply the client waits for, to pick the RFC 5321 §4.5.3.2 timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    Greeting,
    Command,
    DataInit,
    DataEnd,
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
    expect: VecDeque<Expect>,
    extensions: Extensions,
    tls: bool,
    transaction: Option<Transaction>,
    pending: Option<ClientEvent>,
    closed: bool,
}

impl Client {
    /// A session that starts by waiting for the server's greeting.
    pub fn new(config: ClientConfig) -> Client {
        Client {
            config,
            parser: ReplyParser::default(),
            output: Vec::new(),
            expect: VecDeque::from([Expect::Greeting]),
            extensions: Extensions::default(),
            tls: false,
            transaction: None,
            pending: None,
            closed: false,
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

    /// Adds bytes read from the server.
    pub fn receive(&mut self, bytes: &[u8]) {
        self.parser.feed(bytes);
    }

    /// Bytes to write to the server.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.output)
    }

    /// The reply being waited for, to choose a timeout.
    pub fn waiting_for(&self) -> Wait {
        match self.expect.front() {
            Some(Expect::Greeting) => Wait::Greeting,
            Some(Expect::Data) => Wait::DataInit,
            Some(Expect::DataEnd | Expect::EmptyData) => Wait::DataEnd,
            _ => Wait::Command,
        }
    }

    /// The TLS handshake after STARTTLS succeeded: anything the server sent before it is
    /// dropped, and EHLO is sent again.
    pub fn tls_started(&mut self) {
        self.tls = true;
        self.parser = ReplyParser::default();
        self.extensions = Extensions::default();
        self.command(&format!("EHLO {}", self.config.helo_name), Expect::Ehlo);
    }

    /// Starts a transaction; only valid after [`ClientEvent::Ready`].
    pub fn send(&mut self, outgoing: Outgoing) {
        let refusal = if outgoing.smtputf8 && !self.extensions.smtputf8 {
            Some(Reply::new(
                553,
                Status(5, 6, 7),
                "Recipient server does not support SMTPUTF8",
            ))
        } else if self
            .extensions
            .size
            .is_some_and(|max| max > 0 && outgoing.size > max)
        {
            Some(Reply::new(
                552,
                Status(5, 3, 4),
                "Message too big for the recipient server",
            ))
        } else {
            None
        };
        if let Some(reply) = refusal {
            let recipients = outgoing
                .recipients
                .into_iter()
                .map(|r| (r, reply.clone()))
                .collect();
            self.pending = Some(ClientEvent::Done(Outcome { recipients }));
            return;
        }
        let mut mail = format!("MAIL FROM:<{}>", outgoing.from);
        if self.extensions.size.is_some() {
            mail.push_str(&format!(" SIZE={}", outgoing.size));
        }
        if outgoing.eight_bit && self.extensions.eight_bit_mime {
            mail.push_str(" BODY=8BITMIME");
        }
        if outgoing.smtputf8 {
            mail.push_str(" SMTPUTF8");
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
                self.output
                    .extend_from_slice(format!("RCPT TO:<{rcpt}>\r\n").as_bytes());
                self.expect.push_back(Expect::Rcpt(index));
            }
            transaction.next_rcpt = count;
            self.command("DATA", Expect::Data);
        }
        self.transaction = Some(transaction);
    }

    /// The dot-stuffed body and its terminator were written.
    pub fn body_sent(&mut self) {
        self.expect.push_back(Expect::DataEnd);
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
            let Some(&expect) = self.expect.front() else {
                return ClientEvent::Ready;
            };
            let reply = match self.parser.next_reply() {
                Ok(Some(reply)) => reply,
                Ok(None) => return ClientEvent::NeedInput,
                Err(err) => return self.fail(Stage::from(expect), protocol_error(&err)),
            };
            self.expect.pop_front();
            if reply.code == 421 && expect != Expect::Quit {
                return self.fail(Stage::from(expect), reply);
            }
            if let Some(event) = self.handle(expect, reply) {
                return event;
            }
        }
    }

    /// The connection closed or failed before the session ended.
    pub fn connection_lost(&mut self) -> Failure {
        let stage = self.expect.front().map_or(Stage::Rset, |e| Stage::from(*e));
        Failure {
            stage,
            reply: Reply::new(451, Status(4, 4, 2), "Connection lost"),
        }
    }

    fn handle(&mut self, expect: Expect, reply: Reply) -> Option<ClientEvent> {
        let ok = reply.class() == 2;
        match expect {
            Expect::Greeting if reply.code == 220 => {
                self.command(&format!("EHLO {}", self.config.helo_name), Expect::Ehlo);
            }
            Expect::Greeting => return Some(self.fail(Stage::Greeting, reply)),
            Expect::Ehlo if ok => {
                self.extensions = Extensions::parse(&reply);
                self.after_ehlo();
            }
            Expect::Ehlo if reply.class() == 5 && !self.tls => {
                self.command(&format!("HELO {}", self.config.helo_name), Expect::Helo);
            }
            Expect::Helo if ok => self.after_ehlo(),
            Expect::Ehlo | Expect::Helo => return Some(self.fail(Stage::Ehlo, reply)),
            Expect::StartTls if reply.code == 220 => return Some(ClientEvent::StartTls),
            Expect::StartTls => return Some(self.fail(Stage::StartTls, reply)),
            Expect::Auth if ok => {}
            Expect::Auth => return Some(self.fail(Stage::Auth, reply)),
            Expect::Mail => return self.mail_reply(reply),
            Expect::Rcpt(index) => return self.rcpt_reply(index, reply),
            Expect::Data => return self.data_reply(reply),
            Expect::DataEnd => return self.finish(Some(reply)),
            Expect::EmptyData => return self.finish(None),
            Expect::Rset if ok => {}
            Expect::Rset => return Some(self.fail(Stage::Rset, reply)),
            Expect::Quit => self.closed = true,
        }
        None
    }

    fn after_ehlo(&mut self) {
        if !self.tls && self.config.starttls != StartTls::Never && self.extensions.starttls {
            self.command("STARTTLS", Expect::StartTls);
        } else if !self.tls && self.config.starttls == StartTls::Required {
            let reply = Reply::new(454, Status(4, 7, 10), "STARTTLS required but not offered");
            self.pending = Some(self.fail(Stage::StartTls, reply));
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
            let line = format!("RCPT TO:<{rcpt}>");
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
                return Some(ClientEvent::SendBody);
            }
            // RFC 2920 §3.1: nothing to send, so end the data at once.
            self.output.extend_from_slice(b".\r\n");
            self.expect.push_back(Expect::EmptyData);
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
        let recipients = transaction
            .outgoing
            .recipients
            .into_iter()
            .zip(transaction.replies)
            .map(|(rcpt, reply)| {
                let reply = match (&transaction.mail_failed, reply) {
                    (Some(mail), _) => mail.clone(),
                    (None, Some(reply)) if reply.class() != 2 => reply,
                    (None, _) => final_reply
                        .clone()
                        .unwrap_or_else(|| Reply::new(451, Status(4, 3, 0), "Transaction aborted")),
                };
                (rcpt, reply)
            })
            .collect();
        if final_reply.is_none() {
            self.command("RSET", Expect::Rset);
        }
        Some(ClientEvent::Done(Outcome { recipients }))
    }

    /// Ends a transaction that never reached DATA: everyone gets their refusal, then RSET.
    fn abort(&mut self) -> Option<ClientEvent> {
        // With pipelining, replies to commands already sent are still to come.
        if self
            .expect
            .iter()
            .any(|e| matches!(e, Expect::Rcpt(_) | Expect::Data))
        {
            return None;
        }
        self.finish(None)
    }

    fn command(&mut self, line: &str, expect: Expect) {
        self.output.extend_from_slice(line.as_bytes());
        self.output.extend_from_slice(b"\r\n");
        self.expect.push_back(expect);
    }

    fn fail(&mut self, stage: Stage, reply: Reply) -> ClientEvent {
        self.expect.clear();
        self.closed = true;
        ClientEvent::Failed(Failure { stage, reply })
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

fn protocol_error(err: &ReplyError) -> Reply {
    Reply::new(
        451,
        Status(4, 5, 0),
        format!("Malformed reply from the server: {err}"),
    )
}

/// The DATA form of a body: lines starting with `.` get another, every line ends in CRLF (a
/// bare CR or LF becomes CRLF), and the `.` line ends it.
pub fn dot_stuff(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + body.len() / 64 + 5);
    let mut line_start = true;
    let mut bytes = body.iter().copied().peekable();
    while let Some(b) = bytes.next() {
        if line_start && b == b'.' {
            out.push(b'.');
        }
        match b {
            b'\r' => {
                if bytes.peek() == Some(&b'\n') {
                    bytes.next();
                }
                out.extend_from_slice(b"\r\n");
                line_start = true;
            }
            b'\n' => {
                out.extend_from_slice(b"\r\n");
                line_start = true;
            }
            _ => {
                out.push(b);
                line_start = false;
            }
        }
    }
    if !line_start {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}
