//! The server session without I/O: transcripts of events in, replies out, with a virtual
//! clock for its deadlines.

#![allow(clippy::unwrap_used)] // a test that cannot set up may panic

use std::sync::Arc;
use std::time::{Duration, Instant};

use postern_smtp::{
    AuthOutcome, Event, Peer, QueueUnavailable, Reply, Session, SessionConfig, Status,
};

const SECOND: Duration = Duration::from_secs(1);

fn config() -> SessionConfig {
    SessionConfig {
        max_message_size: 1000,
        starttls: true,
        auth: true,
        ..postern_smtp::testing::session_config()
    }
}

/// A session and the virtual time it lives in.
struct T {
    session: Session,
    now: Instant,
}

impl T {
    fn new(relay_allowed: bool) -> T {
        T::with(config(), relay_allowed)
    }

    fn with(config: SessionConfig, relay_allowed: bool) -> T {
        let now = Instant::now();
        let mut session = Session::new(
            Arc::new(config),
            Peer {
                relay_allowed,
                tls: false,
            },
            now,
        );
        assert_eq!(codes(&mut session), [220]);
        T { session, now }
    }

    /// Feeds `input` and runs to the next event, returning it with the codes replied.
    fn send(&mut self, input: &str) -> (Event, Vec<u16>) {
        self.session.receive(input.as_bytes(), self.now);
        let event = self.session.next_event();
        (event, codes(&mut self.session))
    }

    /// Lets `by` pass; true when the session timed out meanwhile.
    fn later(&mut self, by: Duration) -> bool {
        self.now += by;
        self.session.handle_timeout(self.now)
    }
}

fn codes(session: &mut Session) -> Vec<u16> {
    session.take_replies().iter().map(|r| r.code).collect()
}

#[test]
fn pipelined_transaction_ends_in_a_message_event() {
    let mut t = T::new(true);
    let (event, replies) = t.send("EHLO c\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nDATA\r\nSubject: s\r\n\r\nbody\r\n.\r\nNOOP\r\n");
    assert_eq!(replies, [250, 250, 250, 354]);
    let Event::Message(message) = event else {
        panic!("expected a message, got {event:?}")
    };
    assert_eq!(message.body, b"Subject: s\r\n\r\nbody\r\n");
    assert_eq!(message.recipients[0].to_string(), "b@y.example");
    // Nothing is read while the message is being queued.
    assert_eq!(t.session.next_event(), Event::NeedInput);
    assert!(t.session.take_replies().is_empty());
    t.session.message_result(Ok("ID1".into()), t.now);
    assert_eq!(t.session.next_event(), Event::NeedInput);
    let replies = t.session.take_replies();
    assert_eq!(replies[0].text(), "Ok: queued as ID1");
    assert_eq!(
        replies.iter().map(|r| r.code).collect::<Vec<_>>(),
        [250, 250]
    );
}

#[test]
fn queue_failure_gives_451_and_a_fresh_transaction() {
    let mut t = T::new(true);
    let (event, _) =
        t.send("EHLO c\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nDATA\r\n.\r\n");
    assert!(matches!(event, Event::Message(_)));
    t.session.message_result(Err(QueueUnavailable), t.now);
    let (_, replies) = t.send("RCPT TO:<b@y.example>\r\n");
    assert_eq!(replies, [451, 503]);
}

#[test]
fn starttls_stops_reading_and_forgets_the_session() {
    let mut t = T::new(true);
    let (event, replies) = t.send("EHLO c\r\nSTARTTLS\r\nMAIL FROM:<evil@x.example>\r\n");
    assert_eq!((event, replies), (Event::StartTls, vec![250, 220]));
    assert_eq!(
        t.session.discard_input(),
        "MAIL FROM:<evil@x.example>\r\n".len()
    );
    t.session.tls_started(t.now);
    let (_, replies) = t.send("MAIL FROM:<a@x.example>\r\nEHLO c\r\nSTARTTLS\r\n");
    assert_eq!(replies, [503, 250, 503]);
}

#[test]
fn auth_failures_then_lockout() {
    let mut t = T::new(false);
    t.send("EHLO c\r\nSTARTTLS\r\n");
    t.session.tls_started(t.now);
    t.send("EHLO c\r\n");
    for (attempt, expected) in [(1, vec![535]), (2, vec![535]), (3, vec![535, 421])] {
        let (event, _) = t.send("AUTH PLAIN AGFsaWNlAHdyb25n\r\n");
        let Event::Authenticate { user, password } = event else {
            panic!("attempt {attempt}: {event:?}")
        };
        assert_eq!((user.as_str(), password.as_str()), ("alice", "wrong"));
        t.session.auth_result(AuthOutcome::Refused, t.now);
        let event = t.session.next_event();
        assert_eq!(codes(&mut t.session), expected);
        assert_eq!(event == Event::Close, attempt == 3);
    }
}

#[test]
fn outsider_is_asked_to_authenticate() {
    let mut t = T::new(false);
    let (_, replies) = t.send("EHLO c\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\n");
    assert_eq!(replies, [250, 250, 530]);
}

#[test]
fn shutdown_closes_idle_sessions_only() {
    let mut t = T::new(true);
    t.send("EHLO c\r\nMAIL FROM:<a@x.example>\r\n");
    t.session.shutdown();
    let (event, replies) = t.send("RCPT TO:<b@y.example>\r\n");
    assert_eq!((event, replies), (Event::NeedInput, vec![250]));
    let (event, replies) = t.send("RSET\r\n");
    assert_eq!((event, replies), (Event::Close, vec![250, 421]));
}

#[test]
fn errors_beyond_the_limit_close() {
    let mut t = T::new(true);
    let (event, replies) = t.send("A\r\nB\r\nC\r\nD\r\nE\r\nF\r\n");
    assert_eq!(
        (event, replies),
        (Event::Close, vec![500, 500, 500, 500, 500, 421])
    );
}

/// A command line sent one byte every 10 seconds has 300 seconds in all, not 300 per byte.
#[test]
fn a_trickled_command_line_meets_its_deadline() {
    let mut t = T::new(true);
    let start = t.now;
    let mut bytes = b"EHLO a-client-that-takes-its-time.example\r\n".iter();
    loop {
        assert_eq!(t.session.poll_timeout(), Some(start + 300 * SECOND));
        if t.later(10 * SECOND) {
            break;
        }
        let byte = bytes.next().unwrap();
        t.session.receive(&[*byte], t.now);
        assert_eq!(t.session.next_event(), Event::NeedInput);
    }
    assert_eq!(t.now, start + 300 * SECOND);
    assert_eq!(t.session.next_event(), Event::Close);
    let replies = t.session.take_replies();
    assert_eq!(
        (replies[0].code, replies[0].status),
        (421, Some(Status(4, 4, 2)))
    );
}

/// Each command gets its own deadline from when the one before it was complete; the time the
/// I/O layer spends on a message or a password does not count against the client.
#[test]
fn the_command_clock_restarts_after_each_line_and_each_result() {
    let mut t = T::new(true);
    t.later(200 * SECOND);
    t.send("EHLO c\r\n");
    assert_eq!(t.session.poll_timeout(), Some(t.now + 300 * SECOND));
    t.later(250 * SECOND);
    let (event, _) =
        t.send("MAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nDATA\r\nx\r\n.\r\n");
    assert!(matches!(event, Event::Message(_)));
    assert_eq!(
        t.session.poll_timeout(),
        None,
        "queueing is the relay's time"
    );
    t.now += 400 * SECOND;
    t.session.message_result(Ok("ID".into()), t.now);
    assert_eq!(t.session.poll_timeout(), Some(t.now + 300 * SECOND));
}

/// Content may pause up to `dataTimeout`; after that it must keep up `minDataRate` on average.
#[test]
fn content_has_a_silence_limit_and_a_rate_floor() {
    let mut t = T::new(true);
    t.send("EHLO c\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nDATA\r\n");
    let start = t.now;
    assert_eq!(t.session.poll_timeout(), Some(start + 180 * SECOND));
    assert!(!t.later(179 * SECOND));
    // 200 KiB at 179 s: enough for 200 s at 1 KiB/s, so the floor is at 200 s, and silence at
    // 179 + 180 s comes later.
    let chunk = "a".repeat(1022) + "\r\n";
    for _ in 0..200 {
        t.session.receive(chunk.as_bytes(), t.now);
        assert_eq!(t.session.next_event(), Event::NeedInput);
    }
    assert_eq!(t.session.poll_timeout(), Some(start + 200 * SECOND));
    assert!(!t.later(21 * SECOND - Duration::from_millis(1)));
    assert!(
        t.later(Duration::from_millis(1)),
        "below 1 KiB/s on average"
    );
    assert_eq!(t.session.next_event(), Event::Close);

    let mut t = T::new(true);
    t.send("EHLO c\r\nBDAT 10\r\nxx");
    let start = t.now;
    assert_eq!(t.session.poll_timeout(), Some(start + 180 * SECOND));
    assert!(t.later(180 * SECOND), "silent in a BDAT chunk");
}

/// While message memory is spent, MAIL gets the refusal the I/O layer set, and nothing else.
#[test]
fn mail_is_refused_while_the_relay_cannot_take_a_message() {
    let mut t = T::new(true);
    t.session.set_mail_refusal(Some(Reply::new(
        452,
        Status(4, 3, 1),
        "Insufficient system storage",
    )));
    let (_, replies) = t.send("EHLO c\r\nMAIL FROM:<a@x.example>\r\nNOOP\r\n");
    assert_eq!(replies, [250, 452, 250]);
    t.session.set_mail_refusal(None);
    let (_, replies) = t.send("MAIL FROM:<a@x.example>\r\n");
    assert_eq!(replies, [250]);
}

/// Content handed out as it arrives still gets the whole-message checks at the end.
#[test]
fn content_taken_early_is_still_checked_at_the_end() {
    let mut config = config();
    config.max_received = 1;
    let mut t = T::with(config, true);
    t.send("EHLO c\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nDATA\r\n");
    t.send("Received: one\r\nReceived: two\r\n");
    assert_eq!(t.session.take_content(1000), None, "less than asked for");
    let taken = t.session.take_content(10).unwrap();
    assert_eq!(taken, b"Received: one\r\nReceived: two\r\n");
    assert_eq!(t.session.content_buffered(), 0);
    let (event, replies) = t.send("\r\nbody\r\n.\r\n");
    assert_eq!(
        (event, replies),
        (Event::NeedInput, vec![554]),
        "a mail loop"
    );

    let mut t = T::new(true);
    t.send("EHLO c\r\nMAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\nDATA\r\n");
    t.send("Subject: s\r\n\r\nfirst\r\n");
    let taken = t.session.take_content(1).unwrap();
    let (event, _) = t.send("\u{fc}ber\r\n.\r\n");
    let Event::Message(message) = event else {
        panic!("{event:?}")
    };
    assert_eq!(message.taken, taken.len() as u64);
    assert_eq!(message.body, "\u{fc}ber\r\n".as_bytes());
    assert!(message.eight_bit);
}

#[test]
fn help_lists_only_what_this_session_offers() {
    let mut config = config();
    config.starttls = false;
    config.auth = false;
    let mut t = T::with(config, true);
    t.send("HELP\r\n");
    t.session.receive(b"HELP\r\n", t.now);
    t.session.next_event();
    let text = t.session.take_replies()[0].text();
    assert!(
        !text.contains("STARTTLS") && !text.contains("AUTH"),
        "{text}"
    );
    let mut t = T::new(true);
    t.session.receive(b"HELP\r\n", t.now);
    t.session.next_event();
    let text = t.session.take_replies()[0].text();
    assert!(text.contains("STARTTLS"), "{text}");
    assert!(!text.contains("AUTH"), "AUTH needs TLS first: {text}");
}

#[test]
fn unavailable_password_checks_get_454_and_count_as_failures() {
    let mut t = T::new(false);
    t.send("EHLO c\r\nSTARTTLS\r\n");
    t.session.tls_started(t.now);
    t.send("EHLO c\r\n");
    let (event, _) = t.send("AUTH PLAIN AGFsaWNlAHdyb25n\r\n");
    assert!(matches!(event, Event::Authenticate { .. }));
    t.session.auth_result(AuthOutcome::Unavailable, t.now);
    t.session.next_event();
    let replies = t.session.take_replies();
    assert_eq!(
        (replies[0].code, replies[0].status),
        (454, Some(Status(4, 7, 0)))
    );
}

proptest::proptest! {
    /// Whatever a client sends, in whatever pieces, the session never panics and every reply
    /// it writes is well formed.
    #[test]
    fn never_panics_on_client_bytes(
        chunks in proptest::collection::vec(
            proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::prelude::any::<u8>(),
                    proptest::sample::select(b"\r\n.:<>@ EHLO MAIL FROM RCPT TO DATA BDAT 1 LAST AUTH PLAIN STARTTLS RSET".to_vec()),
                ],
                0..80,
            ),
            0..12,
        ),
        verdicts in proptest::collection::vec(proptest::prelude::any::<bool>(), 12),
    ) {
        let now = Instant::now();
        let checking = SessionConfig { check_recipients: true, ..config() };
        let mut session = Session::new(Arc::new(checking), Peer { relay_allowed: true, tls: false }, now);
        let mut verdicts = verdicts.into_iter().cycle();
        for chunk in &chunks {
            session.receive(chunk, now);
            for _ in 0..100 {
                match session.next_event() {
                    Event::NeedInput | Event::Close => break,
                    Event::StartTls => {
                        session.discard_input();
                        session.tls_started(now);
                    }
                    Event::Authenticate { user, .. } => {
                        let outcome = if verdicts.next().unwrap_or(false) { AuthOutcome::Verified(user) } else { AuthOutcome::Refused };
                        session.auth_result(outcome, now);
                    }
                    Event::CheckRecipient(_) => {
                        let refusal = (!verdicts.next().unwrap_or(true))
                            .then(|| postern_smtp::Reply::new(550, Status(5, 1, 1), "suppressed"));
                        session.recipient_result(refusal, now);
                    }
                    Event::Message(_) => {
                        let ok = verdicts.next().unwrap_or(true);
                        session.message_result(if ok { Ok("ID".into()) } else { Err(QueueUnavailable) }, now);
                    }
                }
            }
            for reply in session.take_replies() {
                let mut parser = postern_smtp::ReplyParser::default();
                parser.feed(&reply.to_bytes());
                proptest::prop_assert!(parser.next_reply().is_ok_and(|r| r.is_some()));
            }
        }
    }
}
