//! The server session driven by whatever a client sends, in pieces, at any pace: it never
//! panics, never waits without a deadline, writes only well-formed replies, and hands the queue
//! only messages within the limits with clean content.
//!
//! Input: a settings byte (piece size), a verdict byte (bit i: the i-th password check,
//! recipient check or queue hand-off succeeds), a pace byte (seconds between pieces), then the client's bytes.
#![no_main]

use std::sync::Arc;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use postern_smtp::body::is_clean;
use postern_smtp::{
    AuthOutcome, BareLineEndings, Event, Peer, QueueUnavailable, Reply, ReplyParser, Session,
    SessionConfig, Status,
};

const MAX_SIZE: usize = 2000;
const MAX_RECIPIENTS: usize = 3;

fn config(policy: BareLineEndings) -> SessionConfig {
    SessionConfig {
        max_message_size: MAX_SIZE,
        max_recipients: MAX_RECIPIENTS,
        max_received: 5,
        bare_line_endings: policy,
        starttls: true,
        auth: true,
        plaintext_auth: true,
        min_data_rate: 64,
        check_recipients: true,
        ..postern_smtp::testing::session_config()
    }
}

fuzz_target!(|input: &[u8]| {
    let [settings, verdicts, pace, bytes @ ..] = input else {
        return;
    };
    let policy = match settings & 1 {
        0 => BareLineEndings::Normalize,
        _ => BareLineEndings::Reject,
    };
    let piece = usize::from(settings >> 1).max(1);
    let pace = Duration::from_secs(u64::from(*pace));
    let mut now = Instant::now();
    let peer = Peer {
        relay_allowed: verdicts & 0x80 != 0,
        tls: false,
    };
    let mut session = Session::new(Arc::new(config(policy)), peer, now);
    let mut verdict = 0u32;
    let mut next_verdict = || {
        verdict += 1;
        verdicts & (1 << (verdict % 7)) != 0
    };
    'pieces: for chunk in bytes.chunks(piece) {
        now += pace;
        if session.handle_timeout(now) {
            check_replies(&mut session);
            break;
        }
        session.receive(chunk, now);
        for _ in 0..1000 {
            match session.next_event() {
                Event::NeedInput => break,
                Event::Close => {
                    check_replies(&mut session);
                    break 'pieces;
                }
                Event::StartTls => {
                    session.discard_input();
                    session.tls_started(now);
                }
                Event::Authenticate { user, .. } => {
                    let outcome = if next_verdict() {
                        AuthOutcome::Verified(user)
                    } else {
                        AuthOutcome::Refused
                    };
                    session.auth_result(outcome, now);
                }
                Event::CheckRecipient(_) => {
                    let refusal =
                        (!next_verdict()).then(|| Reply::new(550, Status(5, 1, 1), "suppressed"));
                    session.recipient_result(refusal, now);
                }
                Event::Message(message) => {
                    assert!(!message.recipients.is_empty());
                    assert!(message.recipients.len() <= MAX_RECIPIENTS);
                    assert!(message.body.len() <= MAX_SIZE + 2, "{}", message.body.len());
                    assert!(is_clean(&message.body), "{:?}", message.body);
                    let result = if next_verdict() {
                        Ok("ID".to_string())
                    } else {
                        Err(QueueUnavailable)
                    };
                    session.message_result(result, now);
                }
            }
        }
        assert!(
            session.poll_timeout().is_some(),
            "a session waiting for input has no deadline"
        );
        check_replies(&mut session);
    }
});

/// Every reply parses as one whole reply.
fn check_replies(session: &mut Session) {
    for reply in session.take_replies() {
        let mut parser = ReplyParser::default();
        parser.feed(&reply.to_bytes());
        assert!(
            parser.next_reply().is_ok_and(|parsed| parsed.is_some()),
            "{reply:?}"
        );
        assert!(parser.is_empty(), "{reply:?} is more than one reply");
    }
}
