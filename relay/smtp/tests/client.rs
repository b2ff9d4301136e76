//! The SMTP client without I/O: what it writes for each server reply.

#![allow(clippy::unwrap_used)] // a test that cannot set up may panic

use postern_smtp::BareLineEndings;
use postern_smtp::body::{BodyDecoder, is_clean};
use postern_smtp::client::{
    Client, ClientConfig, ClientEvent, Outgoing, Stage, StartTls, dot_stuff,
};
use proptest::prelude::*;

fn client(starttls: StartTls, auth: Option<(&str, &str)>) -> Client {
    Client::new(ClientConfig {
        helo_name: "relay.test".into(),
        starttls,
        auth: auth.map(|(u, p)| (u.into(), p.into())),
    })
}

/// Feeds server text and returns the next event and what the client wrote before it.
fn server(c: &mut Client, text: &str) -> (ClientEvent, String) {
    c.receive(text.as_bytes());
    let event = c.next_event();
    (event, String::from_utf8(c.take_output()).unwrap())
}

fn outgoing(recipients: &[&str]) -> Outgoing {
    Outgoing {
        from: "a@example.com".into(),
        recipients: recipients.iter().map(|r| r.to_string()).collect(),
        size: 10,
        smtputf8: false,
        eight_bit: false,
    }
}

fn codes(event: ClientEvent) -> Vec<(String, u16)> {
    let ClientEvent::Done(outcome) = event else {
        panic!("expected Done, got {event:?}")
    };
    outcome
        .recipients
        .into_iter()
        .map(|(r, reply)| (r, reply.code))
        .collect()
}

fn ready(c: &mut Client, ehlo: &str) {
    assert_eq!(
        server(c, "220 mx.test ESMTP\r\n"),
        (ClientEvent::NeedInput, "EHLO relay.test\r\n".into())
    );
    assert_eq!(server(c, ehlo).0, ClientEvent::Ready);
}

#[test]
fn pipelined_transaction_records_each_recipient() {
    let mut c = client(StartTls::Never, None);
    ready(
        &mut c,
        "250-mx.test\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250 8BITMIME\r\n",
    );
    c.send(Outgoing {
        eight_bit: true,
        ..outgoing(&["1@y", "2@y", "3@y"])
    });
    let (event, wrote) = server(&mut c, "");
    assert_eq!(event, ClientEvent::NeedInput);
    assert_eq!(
        wrote,
        "MAIL FROM:<a@example.com> SIZE=10 BODY=8BITMIME\r\nRCPT TO:<1@y>\r\nRCPT TO:<2@y>\r\nRCPT TO:<3@y>\r\nDATA\r\n"
    );
    let (event, _) = server(
        &mut c,
        "250 ok\r\n250 ok\r\n550 5.1.1 no such user\r\n451 4.2.0 later\r\n354 go\r\n",
    );
    assert_eq!(event, ClientEvent::SendBody);
    c.body_sent();
    let (event, _) = server(&mut c, "250 2.0.0 queued\r\n");
    assert_eq!(
        codes(event),
        [
            ("1@y".into(), 250),
            ("2@y".into(), 550),
            ("3@y".into(), 451)
        ]
    );
    assert_eq!(c.next_event(), ClientEvent::Ready);
    c.quit();
    assert_eq!(
        server(&mut c, "221 bye\r\n"),
        (ClientEvent::Closed, "QUIT\r\n".into())
    );
}

#[test]
fn without_pipelining_one_command_at_a_time() {
    let mut c = client(StartTls::Never, None);
    ready(&mut c, "250 mx.test\r\n");
    c.send(outgoing(&["1@y", "2@y"]));
    assert_eq!(
        server(&mut c, ""),
        (
            ClientEvent::NeedInput,
            "MAIL FROM:<a@example.com>\r\n".into()
        )
    );
    assert_eq!(
        server(&mut c, "250 ok\r\n"),
        (ClientEvent::NeedInput, "RCPT TO:<1@y>\r\n".into())
    );
    assert_eq!(
        server(&mut c, "550 no\r\n"),
        (ClientEvent::NeedInput, "RCPT TO:<2@y>\r\n".into())
    );
    assert_eq!(
        server(&mut c, "250 ok\r\n"),
        (ClientEvent::NeedInput, "DATA\r\n".into())
    );
    assert_eq!(server(&mut c, "354 go\r\n").0, ClientEvent::SendBody);
    c.body_sent();
    assert_eq!(
        codes(server(&mut c, "250 ok\r\n").0),
        [("1@y".into(), 550), ("2@y".into(), 250)]
    );
}

#[test]
fn refused_sender_fails_every_recipient_and_resets() {
    let mut c = client(StartTls::Never, None);
    ready(&mut c, "250 mx.test\r\n");
    c.send(outgoing(&["1@y", "2@y"]));
    server(&mut c, "");
    let (event, wrote) = server(&mut c, "553 5.7.1 sender refused\r\n");
    assert_eq!(codes(event), [("1@y".into(), 553), ("2@y".into(), 553)]);
    assert_eq!(wrote, "RSET\r\n");
    assert_eq!(server(&mut c, "250 ok\r\n").0, ClientEvent::Ready);
}

#[test]
fn pipelined_all_refused_then_354_sends_only_the_dot() {
    let mut c = client(StartTls::Never, None);
    ready(&mut c, "250-mx.test\r\n250 PIPELINING\r\n");
    c.send(outgoing(&["1@y"]));
    server(&mut c, "");
    let (event, wrote) = server(&mut c, "250 ok\r\n550 no\r\n354 go\r\n");
    assert_eq!((event, wrote), (ClientEvent::NeedInput, ".\r\n".into()));
    let (event, wrote) = server(&mut c, "554 no valid recipients\r\n");
    assert_eq!(codes(event), [("1@y".into(), 550)]);
    assert_eq!(wrote, "RSET\r\n");
}

#[test]
fn helo_when_ehlo_is_refused() {
    let mut c = client(StartTls::Opportunistic, None);
    server(&mut c, "220 old.test\r\n");
    assert_eq!(
        server(&mut c, "502 5.5.1 what\r\n"),
        (ClientEvent::NeedInput, "HELO relay.test\r\n".into())
    );
    assert_eq!(server(&mut c, "250 old.test\r\n").0, ClientEvent::Ready);
    assert_eq!(c.extensions(), &Default::default());
}

#[test]
fn starttls_drops_what_the_server_sent_before_the_handshake() {
    let mut c = client(StartTls::Opportunistic, Some(("user", "pw")));
    server(&mut c, "220 mx.test\r\n");
    let (event, wrote) = server(&mut c, "250-mx.test\r\n250-STARTTLS\r\n250 AUTH PLAIN\r\n");
    assert_eq!(
        (event, wrote),
        (ClientEvent::NeedInput, "STARTTLS\r\n".into())
    );
    let (event, _) = server(&mut c, "220 go ahead\r\n250 injected before TLS\r\n");
    assert_eq!(event, ClientEvent::StartTls);
    c.tls_started();
    assert!(c.is_tls());
    assert_eq!(
        String::from_utf8(c.take_output()).unwrap(),
        "EHLO relay.test\r\n"
    );
    let (event, wrote) = server(&mut c, "250-mx.test\r\n250 AUTH PLAIN LOGIN\r\n");
    assert_eq!(
        (event, wrote),
        (ClientEvent::NeedInput, "AUTH PLAIN AHVzZXIAcHc=\r\n".into())
    );
    assert_eq!(server(&mut c, "235 2.7.0 ok\r\n").0, ClientEvent::Ready);
}

#[test]
fn required_tls_without_starttls_fails() {
    let mut c = client(StartTls::Required, None);
    server(&mut c, "220 mx.test\r\n");
    let (event, _) = server(&mut c, "250 mx.test\r\n");
    let ClientEvent::Failed(failure) = event else {
        panic!("{event:?}")
    };
    assert_eq!((failure.stage, failure.reply.code), (Stage::StartTls, 454));
}

#[test]
fn smtputf8_and_size_are_checked_before_sending() {
    let mut c = client(StartTls::Never, None);
    ready(&mut c, "250-mx.test\r\n250 SIZE 5\r\n");
    c.send(Outgoing {
        smtputf8: true,
        ..outgoing(&["ü@y"])
    });
    let (event, wrote) = server(&mut c, "");
    let ClientEvent::Done(outcome) = event else {
        panic!()
    };
    assert_eq!(
        outcome.recipients[0].1.status.map(|s| s.to_string()),
        Some("5.6.7".into())
    );
    assert_eq!(wrote, "");
    c.send(outgoing(&["1@y"]));
    assert_eq!(codes(c.next_event()), [("1@y".into(), 552)]);
}

#[test]
fn failures_end_the_session() {
    let mut c = client(StartTls::Never, None);
    let ClientEvent::Failed(f) = server(&mut c, "554 go away\r\n").0 else {
        panic!()
    };
    assert_eq!((f.stage, f.reply.code), (Stage::Greeting, 554));

    let mut c = client(StartTls::Never, None);
    ready(&mut c, "250 mx.test\r\n");
    c.send(outgoing(&["1@y"]));
    server(&mut c, "");
    let ClientEvent::Failed(f) = server(&mut c, "421 4.3.2 shutting down\r\n").0 else {
        panic!()
    };
    assert_eq!((f.stage, f.reply.code), (Stage::Mail, 421));

    let mut c = client(StartTls::Never, None);
    let ClientEvent::Failed(f) = server(&mut c, "hello there\r\n").0 else {
        panic!()
    };
    assert_eq!(
        (f.reply.code, f.reply.status.unwrap().to_string()),
        (451, "4.5.0".to_string())
    );
}

#[test]
fn dot_stuffing() {
    assert_eq!(dot_stuff(b"a\r\n.b\r\n..\r\n"), b"a\r\n..b\r\n...\r\n.\r\n");
    assert_eq!(dot_stuff(b""), b".\r\n");
    assert_eq!(dot_stuff(b"no newline"), b"no newline\r\n.\r\n");
    assert_eq!(
        dot_stuff(b"bare\nlf\rcr\r\n.\n"),
        b"bare\r\nlf\r\ncr\r\n..\r\n.\r\n"
    );
}

proptest! {
    /// What delivery writes, ingress reads back unchanged: no bare CR/LF, no early end.
    #[test]
    fn stuffed_bodies_decode_to_the_original(body in proptest::collection::vec(prop_oneof![Just(b'.'), Just(b'\r'), Just(b'\n'), Just(b'x')], 0..200)) {
        let wire = dot_stuff(&body);
        prop_assert!(is_clean(&wire));
        let mut decoder = BodyDecoder::data(BareLineEndings::Reject, 1 << 20);
        prop_assert_eq!(decoder.feed(&wire), Some(wire.len()));
        let decoded = decoder.into_body().unwrap();
        if is_clean(&body) && (body.is_empty() || body.ends_with(b"\r\n")) {
            prop_assert_eq!(decoded, body);
        }
    }

    #[test]
    fn never_panics_on_server_garbage(input in proptest::collection::vec(any::<u8>(), 0..400)) {
        let mut c = client(StartTls::Opportunistic, None);
        c.receive(&input);
        for _ in 0..50 {
            match c.next_event() {
                ClientEvent::Ready => c.send(outgoing(&["1@y"])),
                ClientEvent::SendBody => c.body_sent(),
                ClientEvent::StartTls => c.tls_started(),
                ClientEvent::NeedInput | ClientEvent::Failed(_) | ClientEvent::Closed => break,
                ClientEvent::Done(_) => {}
            }
        }
    }
}
