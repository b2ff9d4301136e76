//! The server session without I/O: transcripts of events in, replies out.

#![allow(clippy::unwrap_used)] // a test that cannot set up may panic

use std::sync::Arc;

use postern_smtp::{BareLineEndings, Event, Peer, QueueUnavailable, Session, SessionConfig};

fn config() -> SessionConfig {
    SessionConfig {
        hostname: "relay.test".into(),
        max_message_size: 1000,
        max_recipients: 2,
        max_errors: 5,
        max_auth_failures: 3,
        max_received: 50,
        bare_line_endings: BareLineEndings::Normalize,
        starttls: true,
        auth: true,
        plaintext_auth: false,
        sender_domains: vec![],
    }
}

struct T {
    session: Session,
}

impl T {
    fn new(relay_allowed: bool) -> T {
        let mut session = Session::new(
            Arc::new(config()),
            Peer {
                relay_allowed,
                tls: false,
            },
        );
        assert_eq!(codes(&mut session), [220]);
        T { session }
    }

    /// Feeds `input` and runs to the next event, returning it with the codes replied.
    fn send(&mut self, input: &str) -> (Event, Vec<u16>) {
        self.session.receive(input.as_bytes());
        let event = self.session.next_event();
        (event, codes(&mut self.session))
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
    t.session.message_result(Ok("ID1".into()));
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
    t.session.message_result(Err(QueueUnavailable));
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
    t.session.tls_started();
    let (_, replies) = t.send("MAIL FROM:<a@x.example>\r\nEHLO c\r\nSTARTTLS\r\n");
    assert_eq!(replies, [503, 250, 503]);
}

#[test]
fn auth_failures_then_lockout() {
    let mut t = T::new(false);
    t.send("EHLO c\r\nSTARTTLS\r\n");
    t.session.tls_started();
    t.send("EHLO c\r\n");
    for (attempt, expected) in [(1, vec![535]), (2, vec![535]), (3, vec![535, 421])] {
        let (event, _) = t.send("AUTH PLAIN AGFsaWNlAHdyb25n\r\n");
        let Event::Authenticate { user, password } = event else {
            panic!("attempt {attempt}: {event:?}")
        };
        assert_eq!((user.as_str(), password.as_str()), ("alice", "wrong"));
        t.session.auth_result(None);
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
        let mut session = Session::new(Arc::new(config()), Peer { relay_allowed: true, tls: false });
        let mut verdicts = verdicts.into_iter().cycle();
        for chunk in &chunks {
            session.receive(chunk);
            for _ in 0..100 {
                match session.next_event() {
                    Event::NeedInput | Event::Close => break,
                    Event::StartTls => {
                        session.discard_input();
                        session.tls_started();
                    }
                    Event::Authenticate { user, .. } => {
                        session.auth_result(verdicts.next().unwrap_or(false).then_some(user));
                    }
                    Event::Message(_) => {
                        let ok = verdicts.next().unwrap_or(true);
                        session.message_result(if ok { Ok("ID".into()) } else { Err(QueueUnavailable) });
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
