//! The server side of an ESMTP session as a state machine without I/O.
//!
//! The I/O layer feeds received bytes with [`Session::receive`], asks [`Session::next_event`]
//! what to do, writes the replies from [`Session::take_replies`], and reports the outcome of
//! the slow work an event asks for (TLS handshake, password check, queueing). Every call that
//! moves the session on takes `now`: the session owns its deadlines and says when it next
//! needs waking ([`Session::poll_timeout`], [`Session::handle_timeout`]), so timeouts and the
//! data-rate floor are tested with a virtual clock.
//!
//! A command line has one deadline, `commandTimeout` from the moment the session started
//! waiting for it, however slowly its bytes trickle in. Message content is bounded by silence
//! (`dataTimeout` without a byte) and by a rate floor (`minDataRate` on average, once
//! `dataTimeout` has passed since the content began).

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::address::{Address, ReversePath};
use crate::body::{BareLineEndings, BodyDecoder, BodyFault};
use crate::command::{BodyType, Command, CommandError, MailParams, Mechanism};
use crate::dsn::{DsnRequest, RecipientDsn};
use crate::reply::{Reject, Reply, Status};

/// The longest command line accepted, without its CRLF.
pub const MAX_COMMAND_LINE: usize = 2048;

/// Policy and limits of a session, fixed for its lifetime.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Name in the greeting and EHLO reply.
    pub hostname: String,
    pub max_message_size: usize,
    pub max_recipients: usize,
    /// Errors (4xx/5xx replies to commands) before the session is closed with 421.
    pub max_errors: u32,
    pub max_auth_failures: u32,
    /// More `Received:` fields than this is taken as a mail loop.
    pub max_received: usize,
    pub bare_line_endings: BareLineEndings,
    /// The listener offers STARTTLS (it has a certificate and is a STARTTLS listener).
    pub starttls: bool,
    /// Users are configured, so AUTH can succeed.
    pub auth: bool,
    /// AUTH is offered outside TLS too.
    pub plaintext_auth: bool,
    /// Sender domains allowed in MAIL FROM; empty allows any.
    pub sender_domains: Vec<String>,
    /// The deadline of each command line.
    pub command_timeout: Duration,
    /// Silence allowed while message content arrives.
    pub data_timeout: Duration,
    /// Slowest average rate of message content, in bytes per second, once `data_timeout` has
    /// passed since it began.
    pub min_data_rate: u64,
    /// Each recipient that passed the session's own checks is checked by the I/O layer too
    /// ([`Event::CheckRecipient`]), against the suppression list.
    pub check_recipients: bool,
}

/// Facts about the client known when the connection opens.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    /// The client address is in an allowed network.
    pub relay_allowed: bool,
    /// The connection is TLS from the start (implicit TLS).
    pub tls: bool,
}

/// A message whose DATA or last BDAT chunk was received and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub from: ReversePath,
    pub recipients: Vec<Address>,
    /// CRLF-only body, dot-unstuffed, with no bare CR, LF or NUL.
    pub body: Vec<u8>,
    pub smtputf8: bool,
    pub eight_bit_mime: bool,
    pub helo: String,
    pub esmtp: bool,
    pub auth_user: Option<String>,
    /// The content has bytes above 127.
    pub eight_bit: bool,
    /// The client asked for REQUIRETLS (RFC 8689), over TLS.
    pub require_tls: bool,
    /// Bytes of the content handed out before the end by [`Session::take_content`]; `body`
    /// holds the rest.
    pub taken: u64,
    /// What the client asked for in delivery status notifications (RFC 3461).
    pub dsn: DsnRequest,
}

/// What the I/O layer must do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// Write the pending replies, then read more bytes.
    NeedInput,
    /// Write the pending replies (the 220), drop buffered input, run the TLS handshake,
    /// then call [`Session::tls_started`].
    StartTls,
    /// Check the credentials, then call [`Session::auth_result`].
    Authenticate { user: String, password: String },
    /// Queue the message, then call [`Session::message_result`].
    Message(Box<Message>),
    /// Check this recipient (it passed every check of the session's own), then call
    /// [`Session::recipient_result`].
    CheckRecipient(Address),
    /// Write the pending replies and close the connection.
    Close,
}

/// Why a message could not be queued; the client gets a 451 and keeps the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueUnavailable;

/// The outcome of a password check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthOutcome {
    /// The password is right for this user.
    Verified(String),
    /// Wrong user or password.
    Refused,
    /// No check was made now (too many at once, or too many failures from this address).
    Unavailable,
}

#[derive(Debug)]
enum Mode {
    Command,
    Data(Box<BodyDecoder>),
    Bdat {
        remaining: u64,
        last: bool,
        refusal: Option<Reply>,
    },
    AuthPlain,
    AuthLoginUser,
    AuthLoginPassword(String),
    /// Waiting for the result of an event.
    Waiting,
    Closed,
}

#[derive(Debug)]
struct Transaction {
    from: ReversePath,
    params: MailParams,
    recipients: Vec<Address>,
    dsn: DsnRequest,
    chunks: Option<BodyDecoder>,
    /// Content bytes handed out so far.
    taken: u64,
}

/// One ESMTP server session.
#[derive(Debug)]
pub struct Session {
    config: Arc<SessionConfig>,
    peer: Peer,
    tls: bool,
    helo: Option<(String, bool)>,
    auth_user: Option<String>,
    transaction: Option<Transaction>,
    mode: Mode,
    input: Vec<u8>,
    discarding_line: bool,
    replies: Vec<Reply>,
    errors: u32,
    auth_failures: u32,
    draining: bool,
    /// When the session started waiting for the current command line.
    waiting_since: Instant,
    /// When bytes last arrived.
    last_input: Instant,
    /// When message content began, and how many bytes of it came since.
    content_since: Option<(Instant, u64)>,
    /// The reply MAIL gets while the I/O layer cannot take a message (no memory, no queue).
    mail_refusal: Option<Reply>,
    /// A recipient waiting for the I/O layer's check.
    checking: Option<(Address, RecipientDsn)>,
}

impl Session {
    /// A new session on a connection accepted at `now`; its first reply is the greeting.
    pub fn new(config: Arc<SessionConfig>, peer: Peer, now: Instant) -> Self {
        let greeting = Reply::plain(220, vec![format!("{} ESMTP Postern", config.hostname)]);
        Session {
            tls: peer.tls,
            config,
            peer,
            helo: None,
            auth_user: None,
            transaction: None,
            mode: Mode::Command,
            input: Vec::new(),
            discarding_line: false,
            replies: vec![greeting],
            errors: 0,
            auth_failures: 0,
            draining: false,
            waiting_since: now,
            last_input: now,
            content_since: None,
            mail_refusal: None,
            checking: None,
        }
    }

    /// Adds bytes read from the client at `now`.
    pub fn receive(&mut self, bytes: &[u8], now: Instant) {
        if !matches!(self.mode, Mode::Closed) {
            self.input.extend_from_slice(bytes);
            self.last_input = now;
        }
    }

    /// When the session must be woken if nothing arrives: the command deadline, or the
    /// content's silence limit or rate floor. `None` while it waits for the I/O layer.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let config = &self.config;
        match &self.mode {
            Mode::Closed | Mode::Waiting => None,
            Mode::Data(_) | Mode::Bdat { .. } => {
                let (since, bytes) = self.content_since.unwrap_or((self.last_input, 0));
                let silence = self.last_input + config.data_timeout;
                let floor = match config.min_data_rate {
                    0 => silence,
                    rate => {
                        let earned = Duration::from_secs_f64(bytes as f64 / rate as f64);
                        since + earned.max(config.data_timeout)
                    }
                };
                Some(silence.min(floor))
            }
            Mode::Command | Mode::AuthPlain | Mode::AuthLoginUser | Mode::AuthLoginPassword(_) => {
                Some(self.waiting_since + config.command_timeout)
            }
        }
    }

    /// Closes the session with `421 4.4.2` when its deadline has passed at `now`; true if it did.
    pub fn handle_timeout(&mut self, now: Instant) -> bool {
        if self.poll_timeout().is_none_or(|deadline| now < deadline) {
            return false;
        }
        self.close(Reply::new(
            421,
            Status(4, 4, 2),
            format!("{} Timeout, closing connection", self.config.hostname),
        ));
        true
    }

    /// What MAIL answers while the I/O layer cannot take a message: `None` to accept mail,
    /// or the refusal (such as `452 4.3.1` while message memory is spent).
    pub fn set_mail_refusal(&mut self, refusal: Option<Reply>) {
        self.mail_refusal = refusal;
    }

    /// Decoded message content held by the session, in bytes.
    pub fn content_buffered(&self) -> usize {
        self.decoder().map_or(0, BodyDecoder::buffered)
    }

    /// Hands out the decoded content received so far, when there is at least `at_least` of it,
    /// so a large message can be streamed on while it arrives. Checks on the whole message
    /// (size, line endings, loops) still decide at its end.
    pub fn take_content(&mut self, at_least: usize) -> Option<Vec<u8>> {
        let decoder = match &mut self.mode {
            Mode::Data(decoder) => Some(decoder.as_mut()),
            _ => self.transaction.as_mut().and_then(|t| t.chunks.as_mut()),
        }?;
        if decoder.fault().is_some() || decoder.buffered() < at_least.max(1) {
            return None;
        }
        let content = decoder.take();
        if let Some(t) = self.transaction.as_mut() {
            t.taken += content.len() as u64;
        }
        Some(content)
    }

    fn decoder(&self) -> Option<&BodyDecoder> {
        match &self.mode {
            Mode::Data(decoder) => Some(decoder),
            _ => self.transaction.as_ref().and_then(|t| t.chunks.as_ref()),
        }
    }

    /// Replies to write, in order.
    pub fn take_replies(&mut self) -> Vec<Reply> {
        std::mem::take(&mut self.replies)
    }

    /// True while message content (DATA or a BDAT chunk) is being read.
    pub fn reading_message(&self) -> bool {
        matches!(self.mode, Mode::Data(_) | Mode::Bdat { .. })
    }

    /// True between MAIL and the end of the transaction.
    pub fn in_transaction(&self) -> bool {
        self.transaction.is_some() || self.reading_message()
    }

    /// The server is shutting down: idle sessions are closed now, others after their transaction.
    pub fn shutdown(&mut self) {
        self.draining = true;
    }

    /// Drops input the client sent before the TLS handshake, returning how many bytes that was.
    pub fn discard_input(&mut self) -> usize {
        std::mem::take(&mut self.input).len()
    }

    /// The TLS handshake after STARTTLS succeeded at `now`: everything learned before is
    /// forgotten.
    pub fn tls_started(&mut self, now: Instant) {
        self.waiting_since = now;
        self.tls = true;
        self.helo = None;
        self.auth_user = None;
        self.transaction = None;
        self.input.clear();
        self.discarding_line = false;
        self.mode = Mode::Command;
    }

    /// The outcome of an [`Event::Authenticate`], known at `now`.
    pub fn auth_result(&mut self, outcome: AuthOutcome, now: Instant) {
        self.mode = Mode::Command;
        self.waiting_since = now;
        match outcome {
            AuthOutcome::Verified(user) => {
                self.auth_user = Some(user);
                self.reply(Reply::new(
                    235,
                    Status(2, 7, 0),
                    "Authentication successful",
                ));
            }
            AuthOutcome::Refused => self.auth_failed(Reply::new(
                535,
                Status(5, 7, 8),
                "Authentication credentials invalid",
            )),
            AuthOutcome::Unavailable => self.auth_failed(Reply::new(
                454,
                Status(4, 7, 0),
                "Temporary authentication failure, try again later",
            )),
        }
    }

    /// The outcome of an [`Event::Message`], known at `now`: the queue id, or why it could not
    /// be queued.
    pub fn message_result(&mut self, result: Result<String, QueueUnavailable>, now: Instant) {
        self.waiting_since = now;
        self.mode = Mode::Command;
        self.transaction = None;
        match result {
            Ok(id) => self.reply(Reply::new(
                250,
                Status(2, 0, 0),
                format!("Ok: queued as {id}"),
            )),
            Err(QueueUnavailable) => self.reply(
                Reply::new(451, Status(4, 3, 0), "Queue unavailable, try again later")
                    .rejecting(Reject::Unavailable),
            ),
        }
    }

    /// Processes buffered input until something needs the I/O layer.
    pub fn next_event(&mut self) -> Event {
        loop {
            match &mut self.mode {
                Mode::Closed => return Event::Close,
                Mode::Waiting => return Event::NeedInput,
                Mode::Data(decoder) => {
                    let fed = decoder.feed(&self.input);
                    let used = fed.unwrap_or(self.input.len());
                    if let Some((_, bytes)) = self.content_since.as_mut() {
                        *bytes += used as u64;
                    }
                    let Some(used) = fed else {
                        self.input.clear();
                        return Event::NeedInput;
                    };
                    self.input.drain(..used);
                    self.content_since = None;
                    let Mode::Data(decoder) = std::mem::replace(&mut self.mode, Mode::Command)
                    else {
                        unreachable!("mode checked above")
                    };
                    let (received, eight_bit) = (decoder.received(), decoder.eight_bit());
                    let body = decoder.into_body();
                    if let Some(event) = self.end_of_message(body, received, eight_bit) {
                        return event;
                    }
                }
                Mode::Bdat { remaining, .. } => {
                    let take = usize::try_from(*remaining)
                        .unwrap_or(usize::MAX)
                        .min(self.input.len());
                    *remaining -= take as u64;
                    let done = *remaining == 0;
                    if let Some((_, bytes)) = self.content_since.as_mut() {
                        *bytes += take as u64;
                    }
                    if let Some(decoder) = self.transaction.as_mut().and_then(|t| t.chunks.as_mut())
                    {
                        decoder.feed(&self.input[..take]);
                    }
                    self.input.drain(..take);
                    if !done {
                        return Event::NeedInput;
                    }
                    self.content_since = None;
                    self.waiting_since = self.last_input;
                    if let Some(event) = self.end_of_chunk() {
                        return event;
                    }
                }
                Mode::Command
                | Mode::AuthPlain
                | Mode::AuthLoginUser
                | Mode::AuthLoginPassword(_) => {
                    if self.draining && !self.in_transaction() && matches!(self.mode, Mode::Command)
                    {
                        return self.close(Reply::new(
                            421,
                            Status(4, 3, 2),
                            "Service shutting down, try again later",
                        ));
                    }
                    let line = match self.next_line() {
                        None => return Event::NeedInput,
                        Some(Ok(line)) => line,
                        Some(Err(reply)) => {
                            self.mode = Mode::Command;
                            self.error(reply);
                            continue;
                        }
                    };
                    let event = if matches!(self.mode, Mode::Command) {
                        self.command(&line)
                    } else {
                        self.auth_line(&line)
                    };
                    if let Some(event) = event {
                        return event;
                    }
                }
            }
        }
    }

    /// The next CRLF-terminated line, or the reply refusing it.
    fn next_line(&mut self) -> Option<Result<Vec<u8>, Reply>> {
        loop {
            let Some(lf) = self.input.iter().position(|&b| b == b'\n') else {
                if self.discarding_line {
                    self.input.clear();
                } else if self.input.len() > MAX_COMMAND_LINE + 1 {
                    self.input.clear();
                    self.discarding_line = true;
                    return Some(Err(line_too_long()));
                }
                if self.input.is_empty() && self.input.capacity() > 2 * MAX_COMMAND_LINE {
                    // Idle sessions give back what a pipelined burst or a message needed.
                    self.input = Vec::new();
                }
                return None;
            };
            let mut line: Vec<u8> = self.input.drain(..=lf).collect();
            line.pop();
            if std::mem::take(&mut self.discarding_line) {
                continue;
            }
            if line.pop_if(|b| *b == b'\r').is_none() {
                return Some(Err(Reply::new(
                    501,
                    Status(5, 5, 2),
                    "Bare LF in command line",
                )
                .rejecting(Reject::Syntax)));
            }
            // The next line's clock starts now that this one is complete.
            self.waiting_since = self.last_input;
            if line.len() > MAX_COMMAND_LINE {
                return Some(Err(line_too_long()));
            }
            return Some(Ok(line));
        }
    }

    fn command(&mut self, line: &[u8]) -> Option<Event> {
        match Command::parse(line) {
            Ok(command) => self.dispatch(command),
            Err(err) => {
                self.error(command_error(&err));
                None
            }
        }
    }

    fn dispatch(&mut self, command: Command) -> Option<Event> {
        match command {
            Command::Ehlo(name) => self.ehlo(name, true),
            Command::Helo(name) => self.ehlo(name, false),
            Command::Mail { from, params } => self.mail(from, params),
            Command::Rcpt { to, dsn } => return self.rcpt(to, dsn),
            Command::Data => return self.data(),
            Command::Bdat { size, last } => self.bdat(size, last),
            Command::Rset => {
                self.transaction = None;
                self.ok("Ok");
            }
            Command::Noop => self.ok("Ok"),
            Command::Quit => {
                return Some(self.close(Reply::new(
                    221,
                    Status(2, 0, 0),
                    format!("{} closing connection", self.config.hostname),
                )));
            }
            Command::Vrfy => self.reply(Reply::new(
                252,
                Status(2, 5, 0),
                "Cannot VRFY user, but will accept message and attempt delivery",
            )),
            Command::Expn => self.error(
                Reply::new(502, Status(5, 5, 1), "EXPN not available").rejecting(Reject::Sequence),
            ),
            Command::Help => {
                let mut commands = String::from(
                    "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP",
                );
                if self.config.starttls && !self.tls {
                    commands.push_str(" STARTTLS");
                }
                if self.auth_offered() {
                    commands.push_str(" AUTH");
                }
                self.reply(Reply::new(214, Status(2, 0, 0), commands));
            }
            Command::StartTls => return self.starttls(),
            Command::Auth { mechanism, initial } => return self.auth(mechanism, initial),
        }
        None
    }

    fn ehlo(&mut self, name: String, esmtp: bool) {
        self.transaction = None;
        let hostname = self.config.hostname.clone();
        if !esmtp {
            self.helo = Some((name, false));
            self.reply(Reply::plain(250, vec![hostname]));
            return;
        }
        let mut lines = vec![
            hostname,
            "PIPELINING".to_string(),
            format!("SIZE {}", self.config.max_message_size),
            "8BITMIME".to_string(),
            "SMTPUTF8".to_string(),
            "ENHANCEDSTATUSCODES".to_string(),
            "CHUNKING".to_string(),
            "DSN".to_string(),
        ];
        if self.config.starttls && !self.tls {
            lines.push("STARTTLS".to_string());
        }
        // RFC 8689 §2: offered only where the session is encrypted.
        if self.tls {
            lines.push("REQUIRETLS".to_string());
        }
        if self.auth_offered() {
            lines.push("AUTH PLAIN LOGIN".to_string());
        }
        self.helo = Some((name, true));
        self.reply(Reply::plain(250, lines));
    }

    fn auth_offered(&self) -> bool {
        self.config.auth && (self.tls || self.config.plaintext_auth)
    }

    fn mail(&mut self, from: ReversePath, params: MailParams) {
        let refusal = if self.helo.is_none() {
            Some(sequence("Send EHLO or HELO first"))
        } else if self.transaction.is_some() {
            Some(sequence("Nested MAIL command"))
        } else if from.is_utf8() && !params.smtputf8 {
            Some(needs_smtputf8())
        } else if params.require_tls && !self.tls {
            Some(
                Reply::new(
                    530,
                    Status(5, 7, 10),
                    "REQUIRETLS needs an encrypted session",
                )
                .rejecting(Reject::Sequence),
            )
        } else if params
            .size
            .is_some_and(|size| size > self.config.max_message_size as u64)
        {
            Some(too_big())
        } else if !self.sender_domain_allowed(&from) {
            Some(
                Reply::new(553, Status(5, 7, 1), "Sender domain not allowed here")
                    .rejecting(Reject::SenderDomain),
            )
        } else {
            self.mail_refusal.clone()
        };
        match refusal {
            Some(reply) => self.error(reply),
            None => {
                let dsn = DsnRequest {
                    ret: params.ret,
                    envid: params.envid.clone(),
                    ..Default::default()
                };
                self.transaction = Some(Transaction {
                    from,
                    params,
                    recipients: Vec::new(),
                    dsn,
                    chunks: None,
                    taken: 0,
                });
                self.reply(Reply::new(250, Status(2, 1, 0), "Sender OK"));
            }
        }
    }

    fn sender_domain_allowed(&self, from: &ReversePath) -> bool {
        let allowed = &self.config.sender_domains;
        match from.mailbox() {
            None => true,
            Some(address) => {
                allowed.is_empty()
                    || allowed
                        .iter()
                        .any(|d| d.eq_ignore_ascii_case(address.domain()))
            }
        }
    }

    fn rcpt(&mut self, to: Address, dsn: RecipientDsn) -> Option<Event> {
        let relay_allowed = self.peer.relay_allowed || self.auth_user.is_some();
        let auth_would_help =
            self.config.auth && (self.tls || self.config.plaintext_auth || self.config.starttls);
        let max = self.config.max_recipients;
        let refusal = match &self.transaction {
            None => Some(sequence("Need MAIL before RCPT")),
            Some(t) if t.chunks.is_some() => Some(sequence("RCPT after BDAT")),
            Some(_) if !relay_allowed && auth_would_help => Some(
                Reply::new(530, Status(5, 7, 0), "Authentication required")
                    .rejecting(Reject::AuthRequired),
            ),
            Some(_) if !relay_allowed => Some(
                Reply::new(554, Status(5, 7, 1), "Relay access denied")
                    .rejecting(Reject::RelayDenied),
            ),
            Some(t) if to.is_utf8() && !t.params.smtputf8 => Some(needs_smtputf8()),
            Some(t) if t.recipients.len() >= max => Some(
                Reply::new(452, Status(4, 5, 3), "Too many recipients")
                    .rejecting(Reject::TooManyRecipients),
            ),
            Some(_) => None,
        };
        if let Some(reply) = refusal {
            self.error(reply);
            return None;
        }
        if self.config.check_recipients {
            self.checking = Some((to.clone(), dsn));
            self.mode = Mode::Waiting;
            return Some(Event::CheckRecipient(to));
        }
        self.add_recipient(to, dsn);
        None
    }

    fn add_recipient(&mut self, to: Address, dsn: RecipientDsn) {
        let Some(t) = self.transaction.as_mut() else {
            self.error(sequence("Need MAIL before RCPT"));
            return;
        };
        if !dsn.is_empty() {
            t.dsn.recipients.insert(to.to_string(), dsn);
        }
        t.recipients.push(to);
        self.reply(Reply::new(250, Status(2, 1, 5), "Recipient OK"));
    }

    /// The outcome of an [`Event::CheckRecipient`], known at `now`: `None` takes the
    /// recipient, a reply refuses it.
    pub fn recipient_result(&mut self, refusal: Option<Reply>, now: Instant) {
        self.mode = Mode::Command;
        self.waiting_since = now;
        let Some((to, dsn)) = self.checking.take() else {
            return;
        };
        match refusal {
            Some(reply) => self.error(reply),
            None => self.add_recipient(to, dsn),
        }
    }

    fn data(&mut self) -> Option<Event> {
        let refusal = match &self.transaction {
            None => Some(sequence("Need MAIL before DATA")),
            Some(t) if t.chunks.is_some() => Some(sequence("DATA after BDAT")),
            Some(t) if t.recipients.is_empty() => Some(no_recipients()),
            Some(_) => None,
        };
        match refusal {
            Some(reply) => self.error(reply),
            None => {
                let decoder =
                    BodyDecoder::data(self.config.bare_line_endings, self.config.max_message_size);
                self.mode = Mode::Data(Box::new(decoder));
                self.content_since = Some((self.last_input, 0));
                self.reply(Reply::plain(
                    354,
                    vec!["End data with <CR><LF>.<CR><LF>".to_string()],
                ));
            }
        }
        None
    }

    fn bdat(&mut self, size: u64, last: bool) {
        let (policy, max) = (self.config.bare_line_endings, self.config.max_message_size);
        let refusal = match self.transaction.as_mut() {
            None => Some(sequence("Need MAIL before BDAT")),
            Some(t) if t.recipients.is_empty() => Some(no_recipients()),
            Some(t) => {
                let decoder = t
                    .chunks
                    .get_or_insert_with(|| BodyDecoder::bdat(policy, max));
                (decoder.size() as u64)
                    .saturating_add(size)
                    .gt(&(max as u64))
                    .then(too_big)
            }
        };
        if refusal.is_some() {
            self.transaction = None;
        }
        self.mode = Mode::Bdat {
            remaining: size,
            last,
            refusal,
        };
        self.content_since = Some((self.last_input, 0));
    }

    fn end_of_chunk(&mut self) -> Option<Event> {
        let Mode::Bdat { last, refusal, .. } = std::mem::replace(&mut self.mode, Mode::Command)
        else {
            unreachable!("called at the end of a BDAT chunk")
        };
        if let Some(reply) = refusal {
            self.error(reply);
            return None;
        }
        let Some(decoder) = self.transaction.as_mut().and_then(|t| t.chunks.take()) else {
            self.error(sequence("Need MAIL before BDAT"));
            return None;
        };
        if !last {
            if decoder.fault() == Some(BodyFault::TooBig) {
                self.transaction = None;
                self.error(too_big());
            } else {
                let size = decoder.size();
                if let Some(t) = self.transaction.as_mut() {
                    t.chunks = Some(decoder);
                }
                self.ok(&format!("{size} octets received"));
            }
            return None;
        }
        let (received, eight_bit) = (decoder.received(), decoder.eight_bit());
        self.end_of_message(decoder.finish(), received, eight_bit)
    }

    /// Checks a complete body and hands it over for queueing.
    fn end_of_message(
        &mut self,
        body: Result<Vec<u8>, BodyFault>,
        received: usize,
        eight_bit: bool,
    ) -> Option<Event> {
        let transaction = self.transaction.take()?;
        let refusal = match &body {
            Err(BodyFault::TooBig) => Some(too_big()),
            Err(BodyFault::BareLineEnding) => Some(
                Reply::new(
                    550,
                    Status(5, 6, 0),
                    "Message contains bare CR, bare LF or NUL",
                )
                .rejecting(Reject::BareLineEnding),
            ),
            Err(BodyFault::LineTooLong) => Some(
                Reply::new(
                    550,
                    Status(5, 6, 0),
                    "Message has a line longer than 998 octets",
                )
                .rejecting(Reject::TextLineTooLong),
            ),
            Ok(_) if received > self.config.max_received => Some(
                Reply::new(554, Status(5, 4, 6), "Too many Received headers: mail loop")
                    .rejecting(Reject::MailLoop),
            ),
            Ok(_) => None,
        };
        if let Some(reply) = refusal {
            self.error(reply);
            return None;
        }
        let (helo, esmtp) = self.helo.clone().unwrap_or_default();
        let message = Message {
            from: transaction.from,
            recipients: transaction.recipients,
            body: body.unwrap_or_default(),
            smtputf8: transaction.params.smtputf8,
            eight_bit_mime: transaction.params.body == Some(BodyType::EightBitMime),
            helo,
            esmtp,
            auth_user: self.auth_user.clone(),
            eight_bit,
            require_tls: transaction.params.require_tls,
            taken: transaction.taken,
            dsn: transaction.dsn,
        };
        self.mode = Mode::Waiting;
        Some(Event::Message(Box::new(message)))
    }

    fn starttls(&mut self) -> Option<Event> {
        if self.tls {
            self.error(sequence("Already using TLS"));
            return None;
        }
        if !self.config.starttls {
            self.error(
                Reply::new(502, Status(5, 5, 1), "STARTTLS not available")
                    .rejecting(Reject::Sequence),
            );
            return None;
        }
        self.reply(Reply::new(220, Status(2, 0, 0), "Ready to start TLS"));
        self.mode = Mode::Waiting;
        Some(Event::StartTls)
    }

    fn auth(&mut self, mechanism: Mechanism, initial: Option<String>) -> Option<Event> {
        let refusal = if !self.config.auth {
            Some(Reply::new(502, Status(5, 5, 1), "AUTH not available").rejecting(Reject::Sequence))
        } else if !self.auth_offered() {
            Some(
                Reply::new(
                    538,
                    Status(5, 7, 11),
                    "Encryption required for requested authentication mechanism",
                )
                .rejecting(Reject::Sequence),
            )
        } else if self.helo.is_none() {
            Some(sequence("Send EHLO first"))
        } else if self.auth_user.is_some() {
            Some(sequence("Already authenticated"))
        } else if self.transaction.is_some() {
            Some(sequence("AUTH not allowed during a mail transaction"))
        } else {
            None
        };
        if let Some(reply) = refusal {
            self.error(reply);
            return None;
        }
        match (mechanism, initial) {
            (Mechanism::Plain, None) => {
                self.mode = Mode::AuthPlain;
                self.reply(Reply::plain(334, vec![String::new()]));
                None
            }
            (Mechanism::Plain, Some(response)) => self.auth_plain(response.as_bytes()),
            (Mechanism::Login, None) => {
                self.mode = Mode::AuthLoginUser;
                self.reply(Reply::plain(334, vec![BASE64.encode("Username:")]));
                None
            }
            (Mechanism::Login, Some(user)) => self.auth_login_user(user.as_bytes()),
        }
    }

    fn auth_line(&mut self, line: &[u8]) -> Option<Event> {
        if line == b"*" {
            self.mode = Mode::Command;
            self.auth_failed(Reply::new(501, Status(5, 0, 0), "Authentication cancelled"));
            return None;
        }
        match std::mem::replace(&mut self.mode, Mode::Command) {
            Mode::AuthPlain => self.auth_plain(line),
            Mode::AuthLoginUser => self.auth_login_user(line),
            Mode::AuthLoginPassword(user) => match decode_base64(line) {
                Some(password) => self.authenticate(user, password),
                None => self.bad_base64(),
            },
            _ => unreachable!("auth_line runs only in an AUTH mode"),
        }
    }

    fn auth_plain(&mut self, response: &[u8]) -> Option<Event> {
        let Some(decoded) = decode_base64(response) else {
            return self.bad_base64();
        };
        let mut parts = decoded.split('\0');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(authzid), Some(user), Some(password), None)
                if authzid.is_empty() || authzid == user =>
            {
                self.authenticate(user.to_string(), password.to_string())
            }
            _ => {
                self.auth_failed(Reply::new(501, Status(5, 5, 2), "Malformed PLAIN response"));
                None
            }
        }
    }

    fn auth_login_user(&mut self, response: &[u8]) -> Option<Event> {
        let Some(user) = decode_base64(response) else {
            return self.bad_base64();
        };
        self.mode = Mode::AuthLoginPassword(user);
        self.reply(Reply::plain(334, vec![BASE64.encode("Password:")]));
        None
    }

    fn authenticate(&mut self, user: String, password: String) -> Option<Event> {
        self.mode = Mode::Waiting;
        Some(Event::Authenticate { user, password })
    }

    fn bad_base64(&mut self) -> Option<Event> {
        self.auth_failed(Reply::new(501, Status(5, 5, 2), "Invalid base64 data"));
        None
    }

    fn auth_failed(&mut self, reply: Reply) {
        self.auth_failures += 1;
        self.reply(reply.rejecting(Reject::AuthFailed));
        if self.auth_failures >= self.config.max_auth_failures {
            self.close(
                Reply::new(421, Status(4, 7, 0), "Too many authentication failures")
                    .rejecting(Reject::TooManyErrors),
            );
        }
    }

    fn ok(&mut self, text: &str) {
        self.reply(Reply::new(250, Status(2, 0, 0), text));
    }

    fn reply(&mut self, reply: Reply) {
        self.replies.push(reply);
    }

    /// A refusal that counts towards the error limit.
    fn error(&mut self, reply: Reply) {
        self.reply(reply);
        self.errors += 1;
        if self.errors >= self.config.max_errors {
            self.close(
                Reply::new(421, Status(4, 7, 0), "Too many errors, closing connection")
                    .rejecting(Reject::TooManyErrors),
            );
        }
    }

    fn close(&mut self, reply: Reply) -> Event {
        self.reply(reply);
        self.mode = Mode::Closed;
        self.input.clear();
        Event::Close
    }
}

fn decode_base64(data: &[u8]) -> Option<String> {
    if data == b"=" {
        return Some(String::new());
    }
    String::from_utf8(BASE64.decode(data).ok()?).ok()
}

fn line_too_long() -> Reply {
    Reply::new(500, Status(5, 5, 2), "Line too long").rejecting(Reject::LineTooLong)
}

fn sequence(text: &str) -> Reply {
    Reply::new(503, Status(5, 5, 1), text).rejecting(Reject::Sequence)
}

fn needs_smtputf8() -> Reply {
    Reply::new(553, Status(5, 6, 7), "Address needs SMTPUTF8")
        .rejecting(Reject::Utf8WithoutSmtputf8)
}

fn too_big() -> Reply {
    Reply::new(
        552,
        Status(5, 3, 4),
        "Message size exceeds fixed maximum message size",
    )
    .rejecting(Reject::MessageTooBig)
}

fn no_recipients() -> Reply {
    Reply::new(554, Status(5, 5, 1), "No valid recipients").rejecting(Reject::Sequence)
}

fn command_error(err: &CommandError) -> Reply {
    let reply = match err {
        CommandError::Unrecognized => Reply::new(500, Status(5, 5, 1), "Command unrecognized"),
        CommandError::ForbiddenByte => Reply::new(501, Status(5, 5, 2), "CR, LF or NUL in command"),
        CommandError::Syntax(_) => Reply::new(501, Status(5, 5, 4), format!("Syntax error: {err}")),
        CommandError::Sender(_) => Reply::new(501, Status(5, 1, 7), err.to_string()),
        CommandError::Recipient(_) => Reply::new(501, Status(5, 1, 3), err.to_string()),
        CommandError::UnsupportedParam(_) => Reply::new(555, Status(5, 5, 4), err.to_string()),
        CommandError::Dsn(_) => Reply::new(501, Status(5, 5, 4), err.to_string()),
        CommandError::UnsupportedMechanism => Reply::new(
            504,
            Status(5, 5, 4),
            "Unrecognized authentication mechanism",
        ),
    };
    reply.rejecting(Reject::Syntax)
}
