//! The delivery client driven by whatever a remote server sends, in pieces, at any pace: it
//! never panics, never waits without a deadline, and counts a recipient as delivered only with
//! a 2xx reply after the body.
//!
//! Input: a settings byte (piece size; bit 0: the client offers STARTTLS), a pace byte
//! (seconds between pieces), then the server's bytes.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use postern_smtp::client::{Client, ClientConfig, ClientEvent, Outgoing, StartTls, Timeouts};

fn outgoing() -> Outgoing {
    postern_smtp::testing::outgoing(&["b@example.org", "c@example.org"], 100)
}

fuzz_target!(|input: &[u8]| {
    let [settings, pace, bytes @ ..] = input else {
        return;
    };
    let starttls = match settings & 1 {
        0 => StartTls::Never,
        _ => StartTls::Opportunistic,
    };
    let pace = Duration::from_secs(u64::from(*pace));
    let mut now = Instant::now();
    let second = Duration::from_secs(1);
    let mut client = Client::new(
        ClientConfig {
            helo_name: "relay.test".into(),
            starttls,
            auth: None,
            timeouts: Timeouts {
                greeting: 20 * second,
                command: 20 * second,
                data_init: 30 * second,
                data_end: 60 * second,
            },
        },
        now,
    );
    let mut pieces = bytes.chunks(usize::from(settings >> 1).max(1));
    let mut transactions = 0;
    let mut body_sent = false;
    for _ in 0..10_000 {
        let event = client.next_event();
        client.take_output(now);
        match event {
            ClientEvent::NeedInput => {
                let deadline = client.deadline().expect("a waiting client has a deadline");
                now += pace;
                if client.handle_timeout(now) {
                    continue;
                }
                match pieces.next() {
                    Some(piece) => client.receive(piece, now),
                    None => {
                        assert!(client.handle_timeout(deadline.max(now)));
                    }
                }
            }
            ClientEvent::SendBody => {
                body_sent = true;
                client.body_sent(now);
            }
            ClientEvent::StartTls => client.tls_started(),
            ClientEvent::Ready if transactions < 2 => {
                transactions += 1;
                body_sent = false;
                client.send(outgoing());
            }
            ClientEvent::Ready => client.quit(),
            ClientEvent::Done(outcome) => {
                assert_eq!(outcome.replies.len(), 2);
                let delivered = outcome.replies.iter().any(|reply| reply.class() == 2);
                assert!(
                    !delivered || body_sent,
                    "delivered without a body: {outcome:?}"
                );
            }
            ClientEvent::Failed(_) | ClientEvent::Closed => return,
        }
    }
    panic!("the session neither ended nor failed");
});
