//! The SMTP client without I/O, driven with a virtual clock: what it writes for each server
//! reply, its deadlines, and that no server behaviour makes it report a message as delivered
//! unless the body was written and a final 2xx followed it.

#![allow(clippy::unwrap_used)] // a test that cannot set up may panic

use std::time::{Duration, Instant};

use postern_smtp::client::{
    Client, ClientConfig, ClientEvent, FailureKind, Outcome, Outgoing, Source, Stage, StartTls,
    Timeouts,
};
use postern_smtp::dot::dot_stuff;
use proptest::prelude::*;

const SECOND: Duration = Duration::from_secs(1);

fn timeouts() -> Timeouts {
    Timeouts {
        greeting: 20 * SECOND,
        command: 20 * SECOND,
        data_init: 30 * SECOND,
        data_end: 60 * SECOND,
    }
}

/// A client and the virtual time it lives in.
struct Run {
    c: Client,
    now: Instant,
}

impl Run {
    fn new(starttls: StartTls, auth: Option<(&str, &str)>) -> Run {
        let now = Instant::now();
        let c = Client::new(
            ClientConfig {
                helo_name: "relay.test".into(),
                starttls,
                auth: auth.map(|(u, p)| (u.into(), p.into())),
                timeouts: timeouts(),
            },
            now,
        );
        Run { c, now }
    }

    /// What the client writes now (its pending commands count as sent).
    fn wrote(&mut self) -> String {
        String::from_utf8(self.c.take_output(self.now)).unwrap()
    }

    /// Writes what the client has to say, feeds the server's text, and returns the next event
    /// and what the client wrote before the text arrived.
    fn server(&mut self, text: &str) -> (ClientEvent, String) {
        let wrote = self.wrote();
        self.c.receive(text.as_bytes(), self.now);
        (self.c.next_event(), wrote)
    }

    fn later(&mut self, by: Duration) {
        self.now += by;
    }

    fn ready(&mut self, ehlo: &str) {
        assert_eq!(
            self.server("220 mx.test ESMTP\r\n"),
            (ClientEvent::NeedInput, String::new())
        );
        assert_eq!(self.wrote(), "EHLO relay.test\r\n");
        assert_eq!(self.server(ehlo).0, ClientEvent::Ready);
    }
}

fn outgoing(recipients: &[&str]) -> Outgoing {
    postern_smtp::testing::outgoing(recipients, 10)
}

fn codes(event: ClientEvent) -> Vec<u16> {
    let ClientEvent::Done(outcome) = event else {
        panic!("expected Done, got {event:?}")
    };
    outcome.replies.into_iter().map(|r| r.code).collect()
}

fn failure(event: ClientEvent) -> (Stage, u16, FailureKind, String) {
    let ClientEvent::Failed(f) = event else {
        panic!("expected Failed, got {event:?}")
    };
    (f.stage, f.reply.code, f.kind, f.reply.text())
}

/// DSN requests for `1@y` (all of them) and the message (RET, ENVID), none for `2@y`.
fn with_dsn() -> Outgoing {
    let mut dsn = postern_smtp::dsn::DsnRequest {
        ret: Some(postern_smtp::dsn::Ret::Full),
        envid: Some("id=1 x".into()),
        ..Default::default()
    };
    dsn.recipients.insert(
        "1@y".into(),
        postern_smtp::dsn::RecipientDsn {
            notify: Some("SUCCESS,DELAY".parse().unwrap()),
            orcpt: Some(postern_smtp::dsn::OriginalRecipient::parse("rfc822;o+2B1@y").unwrap()),
        },
    );
    Outgoing {
        dsn,
        ..outgoing(&["1@y", "2@y"])
    }
}

#[test]
fn dsn_requests_go_on_only_to_a_server_that_offers_dsn() {
    let mut r = Run::new(StartTls::Never, None);
    r.ready("250-mx.test\r\n250 DSN\r\n");
    r.c.send(with_dsn());
    assert_eq!(
        r.wrote(),
        "MAIL FROM:<a@example.com> RET=FULL ENVID=id+3D1+20x\r\n",
        "ENVID in xtext"
    );
    r.server("250 ok\r\n");
    assert_eq!(
        r.wrote(),
        "RCPT TO:<1@y> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;o+2B1@y\r\n"
    );
    r.server("250 ok\r\n");
    assert_eq!(
        r.wrote(),
        "RCPT TO:<2@y>\r\n",
        "nothing asked, nothing sent"
    );
    r.server("250 ok\r\n");
    r.server("354 go\r\n");
    r.c.body_sent(r.now);
    let (event, _) = r.server("250 2.0.0 queued\r\n");
    let ClientEvent::Done(outcome) = event else {
        panic!("{event:?}")
    };
    assert!(outcome.dsn, "the server took the reports over");

    let mut r = Run::new(StartTls::Never, None);
    r.ready("250-mx.test\r\n250 PIPELINING\r\n");
    r.c.send(with_dsn());
    assert_eq!(
        r.wrote(),
        "MAIL FROM:<a@example.com>\r\nRCPT TO:<1@y>\r\nRCPT TO:<2@y>\r\nDATA\r\n"
    );
    r.server("250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n");
    r.c.body_sent(r.now);
    let (event, _) = r.server("250 2.0.0 queued\r\n");
    let ClientEvent::Done(outcome) = event else {
        panic!("{event:?}")
    };
    assert!(!outcome.dsn, "reports stay Postern's to send");
}

#[test]
fn pipelined_transaction_records_each_recipient() {
    let mut r = Run::new(StartTls::Never, None);
    r.ready("250-mx.test\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250 8BITMIME\r\n");
    r.c.send(Outgoing {
        eight_bit: true,
        ..outgoing(&["1@y", "2@y", "3@y"])
    });
    assert_eq!(
        r.wrote(),
        "MAIL FROM:<a@example.com> SIZE=10 BODY=8BITMIME\r\nRCPT TO:<1@y>\r\nRCPT TO:<2@y>\r\nRCPT TO:<3@y>\r\nDATA\r\n"
    );
    let (event, _) =
        r.server("250 ok\r\n250 ok\r\n550 5.1.1 no such user\r\n451 4.2.0 later\r\n354 go\r\n");
    assert_eq!(event, ClientEvent::SendBody);
    r.c.body_sent(r.now);
    assert_eq!(codes(r.server("250 2.0.0 queued\r\n").0), [250, 550, 451]);
    assert_eq!(r.c.next_event(), ClientEvent::Ready);
    r.c.quit();
    assert_eq!(
        r.server("221 bye\r\n"),
        (ClientEvent::Closed, "QUIT\r\n".into())
    );
}

#[test]
fn without_pipelining_one_command_at_a_time() {
    let mut r = Run::new(StartTls::Never, None);
    r.ready("250 mx.test\r\n");
    r.c.send(outgoing(&["1@y", "2@y"]));
    assert_eq!(r.c.next_event(), ClientEvent::NeedInput);
    assert_eq!(r.wrote(), "MAIL FROM:<a@example.com>\r\n");
    assert_eq!(r.server("250 ok\r\n").0, ClientEvent::NeedInput);
    assert_eq!(r.wrote(), "RCPT TO:<1@y>\r\n");
    assert_eq!(r.server("550 no\r\n").0, ClientEvent::NeedInput);
    assert_eq!(r.wrote(), "RCPT TO:<2@y>\r\n");
    assert_eq!(r.server("250 ok\r\n").0, ClientEvent::NeedInput);
    assert_eq!(r.wrote(), "DATA\r\n");
    assert_eq!(r.server("354 go\r\n").0, ClientEvent::SendBody);
    r.c.body_sent(r.now);
    assert_eq!(codes(r.server("250 ok\r\n").0), [550, 250]);
}

#[test]
fn refused_sender_fails_every_recipient_and_resets() {
    let mut r = Run::new(StartTls::Never, None);
    r.ready("250 mx.test\r\n");
    r.c.send(outgoing(&["1@y", "2@y"]));
    r.c.next_event();
    r.wrote();
    assert_eq!(
        codes(r.server("553 5.7.1 sender refused\r\n").0),
        [553, 553]
    );
    assert_eq!(r.wrote(), "RSET\r\n");
    assert_eq!(r.server("250 ok\r\n").0, ClientEvent::Ready);
}

#[test]
fn pipelined_all_refused_then_354_sends_only_the_dot() {
    let mut r = Run::new(StartTls::Never, None);
    r.ready("250-mx.test\r\n250 PIPELINING\r\n");
    r.c.send(outgoing(&["1@y"]));
    r.wrote();
    assert_eq!(
        r.server("250 ok\r\n550 no\r\n354 go\r\n").0,
        ClientEvent::NeedInput
    );
    assert_eq!(r.wrote(), ".\r\n");
    assert_eq!(codes(r.server("554 no valid recipients\r\n").0), [550]);
    assert_eq!(r.wrote(), "RSET\r\n");
}

#[test]
fn helo_when_ehlo_is_refused() {
    let mut r = Run::new(StartTls::Opportunistic, None);
    r.server("220 old.test\r\n");
    assert_eq!(
        r.server("502 5.5.1 what\r\n"),
        (ClientEvent::NeedInput, "EHLO relay.test\r\n".into())
    );
    assert_eq!(
        r.server("250 old.test\r\n"),
        (ClientEvent::Ready, "HELO relay.test\r\n".into())
    );
    assert_eq!(r.c.extensions(), &Default::default());
}

#[test]
fn starttls_drops_what_the_server_sent_before_the_handshake() {
    let mut r = Run::new(StartTls::Opportunistic, Some(("user", "pw")));
    r.server("220 mx.test\r\n");
    r.server("250-mx.test\r\n250-STARTTLS\r\n250 AUTH PLAIN\r\n");
    assert_eq!(r.wrote(), "STARTTLS\r\n");
    let (event, _) = r.server("220 go ahead\r\n250 injected before TLS\r\n");
    assert_eq!(event, ClientEvent::StartTls);
    r.c.tls_started();
    assert!(r.c.is_tls());
    assert_eq!(r.wrote(), "EHLO relay.test\r\n");
    r.server("250-mx.test\r\n250 AUTH PLAIN LOGIN\r\n");
    assert_eq!(r.wrote(), "AUTH PLAIN AHVzZXIAcHc=\r\n");
    assert_eq!(r.server("235 2.7.0 ok\r\n").0, ClientEvent::Ready);
}

/// A client through STARTTLS to a server whose EHLO after the handshake is `ehlo`.
fn over_tls(ehlo: &str) -> Run {
    let mut r = Run::new(StartTls::Required, None);
    r.server("220 mx.test\r\n");
    r.server("250-mx.test\r\n250 STARTTLS\r\n");
    assert_eq!(r.wrote(), "STARTTLS\r\n");
    assert_eq!(r.server("220 go ahead\r\n").0, ClientEvent::StartTls);
    r.c.tls_started();
    assert_eq!(r.wrote(), "EHLO relay.test\r\n");
    assert_eq!(r.server(ehlo).0, ClientEvent::Ready);
    r
}

#[test]
fn requiretls_mail_goes_only_over_tls_to_a_server_that_offers_it() {
    let requiring = || Outgoing {
        require_tls: true,
        ..outgoing(&["1@y"])
    };
    let refusal = |r: &mut Run| {
        r.c.send(requiring());
        assert_eq!(r.wrote(), "", "nothing is sent");
        let ClientEvent::Done(outcome) = r.c.next_event() else {
            panic!("refused at once")
        };
        assert_eq!(outcome.source, Source::Client);
        let reply = &outcome.replies[0];
        assert_eq!(
            (reply.code, reply.status),
            (550, Some(postern_smtp::Status(5, 7, 30)))
        );
        reply.text()
    };
    let mut plain = Run::new(StartTls::Never, None);
    plain.ready("250-mx.test\r\n250 REQUIRETLS\r\n");
    assert!(refusal(&mut plain).contains("not encrypted"));
    let mut without = over_tls("250-mx.test\r\n250 8BITMIME\r\n");
    assert!(refusal(&mut without).contains("does not offer REQUIRETLS"));

    let mut with = over_tls("250-mx.test\r\n250 REQUIRETLS\r\n");
    with.c.send(requiring());
    assert_eq!(with.wrote(), "MAIL FROM:<a@example.com> REQUIRETLS\r\n");
}

#[test]
fn required_tls_without_starttls_is_the_clients_decision() {
    let mut r = Run::new(StartTls::Required, None);
    r.server("220 mx.test\r\n");
    let (stage, code, kind, _) = failure(r.server("250 mx.test\r\n").0);
    assert_eq!(
        (stage, code, kind),
        (Stage::StartTls, 454, FailureKind::Local)
    );
}

#[test]
fn smtputf8_size_and_8bit_are_checked_before_sending() {
    let mut r = Run::new(StartTls::Never, None);
    r.ready("250-mx.test\r\n250 SIZE 5\r\n");
    let refused = |r: &mut Run, outgoing: Outgoing| {
        r.c.send(outgoing);
        let ClientEvent::Done(Outcome {
            replies, source, ..
        }) = r.c.next_event()
        else {
            panic!()
        };
        assert_eq!(source, Source::Client);
        assert_eq!(r.wrote(), "", "nothing is sent");
        (
            replies[0].code,
            replies[0].status.unwrap().to_string(),
            replies[0].text(),
        )
    };
    let (code, status, _) = refused(
        &mut r,
        Outgoing {
            smtputf8: true,
            ..outgoing(&["ü@y"])
        },
    );
    assert_eq!((code, status.as_str()), (553, "5.6.7"));
    let (code, status, _) = refused(
        &mut r,
        Outgoing {
            eight_bit: true,
            ..outgoing(&["1@y"])
        },
    );
    assert_eq!((code, status.as_str()), (554, "5.6.3"));
    let (code, status, text) = refused(&mut r, outgoing(&["1@y"]));
    assert_eq!((code, status.as_str()), (552, "5.3.4"));
    assert!(
        text.contains("10 bytes") && text.contains("at most 5"),
        "{text}"
    );
}

#[test]
fn failures_end_the_session() {
    let mut r = Run::new(StartTls::Never, None);
    let (stage, code, kind, _) = failure(r.server("554 go away\r\n").0);
    assert_eq!(
        (stage, code, kind),
        (Stage::Greeting, 554, FailureKind::Refused)
    );

    let mut r = Run::new(StartTls::Never, None);
    r.ready("250 mx.test\r\n");
    r.c.send(outgoing(&["1@y"]));
    r.c.next_event();
    let (stage, code, _, _) = failure(r.server("421 4.3.2 shutting down\r\n").0);
    assert_eq!((stage, code), (Stage::Mail, 421));

    let mut r = Run::new(StartTls::Never, None);
    let (_, code, kind, _) = failure(r.server("hello there\r\n").0);
    assert_eq!((code, kind), (451, FailureKind::Violation));
}

/// A 250 to DATA: the body was never sent, so nobody is delivered.
#[test]
fn a_250_to_data_is_a_violation() {
    let mut r = Run::new(StartTls::Never, None);
    r.ready("250-mx.test\r\n250 PIPELINING\r\n");
    r.c.send(outgoing(&["1@y", "2@y"]));
    r.wrote();
    let (_, code, kind, text) = failure(r.server("250 ok\r\n250 ok\r\n250 ok\r\n250 ok\r\n").0);
    assert_eq!((code, kind), (451, FailureKind::Violation), "{text}");
    assert!(text.contains("answered DATA with 250"), "{text}");
}

/// A session without pipelining up to its DATA command, the MAIL and RCPT accepted.
fn up_to_data() -> Run {
    let mut r = Run::new(StartTls::Never, None);
    r.ready("250 mx.test\r\n");
    r.c.send(outgoing(&["1@y"]));
    r.c.next_event();
    r.server("250 ok\r\n");
    r.server("250 ok\r\n");
    r
}

/// A final reply right behind the 354, before a byte of the body was written.
#[test]
fn a_reply_before_the_body_is_a_violation() {
    let mut r = up_to_data();
    let (_, code, kind, _) = failure(r.server("354 go\r\n250 2.0.0 queued\r\n").0);
    assert_eq!((code, kind), (451, FailureKind::Violation));
}

/// A final reply while the body is still being written.
#[test]
fn a_reply_during_the_body_is_a_violation() {
    let mut r = up_to_data();
    assert_eq!(r.server("354 go\r\n").0, ClientEvent::SendBody);
    r.c.receive(b"250 2.0.0 queued\r\n", r.now);
    r.c.body_sent(r.now);
    let (stage, code, kind, _) = failure(r.c.next_event());
    assert_eq!(
        (stage, code, kind),
        (Stage::DataEnd, 451, FailureKind::Violation)
    );
}

/// Unsolicited 250 lines after the greeting cannot stand in for the replies to come.
#[test]
fn replies_before_their_commands_are_violations() {
    let mut r = Run::new(StartTls::Never, None);
    let (stage, _, kind, _) = failure(r.server("220 mx.test\r\n250 ok\r\n250 ok\r\n250 ok\r\n").0);
    assert_eq!((stage, kind), (Stage::Ehlo, FailureKind::Violation));

    let mut r = Run::new(StartTls::Never, None);
    r.ready("250 mx.test\r\n");
    r.c.receive(b"250 ok\r\n", r.now);
    assert_eq!(
        failure(r.c.next_event()).2,
        FailureKind::Violation,
        "bytes while idle"
    );

    let mut r = Run::new(StartTls::Never, None);
    r.ready("250-mx.test\r\n250 PIPELINING\r\n");
    r.c.send(outgoing(&["1@y"]));
    r.wrote();
    r.server("250 ok\r\n250 ok\r\n354 go\r\n");
    r.c.body_sent(r.now);
    assert_eq!(codes(r.server("250 ok\r\n250 extra\r\n").0), [250]);
    assert_eq!(
        failure(r.c.next_event()).2,
        FailureKind::Violation,
        "more replies than commands fail the session after the outcome"
    );
}

#[test]
fn codes_a_command_cannot_get_are_violations() {
    let mut r = Run::new(StartTls::Never, None);
    assert_eq!(failure(r.server("250 hi\r\n").0).2, FailureKind::Violation);
    let mut r = Run::new(StartTls::Never, None);
    r.ready("250 mx.test\r\n");
    r.c.send(outgoing(&["1@y"]));
    r.c.next_event();
    assert_eq!(failure(r.server("354 go\r\n").0).2, FailureKind::Violation);
}

/// A greeting trickled one byte every 5 seconds still has 20 seconds in all.
#[test]
fn a_trickled_greeting_meets_its_deadline() {
    let mut r = Run::new(StartTls::Never, None);
    let start = r.now;
    let mut fed = 0;
    for byte in b"220 mx.test ESMTP slowly\r\n" {
        assert_eq!(r.c.deadline(), Some(start + 20 * SECOND));
        r.later(5 * SECOND);
        if r.c.handle_timeout(r.now) {
            break;
        }
        r.c.receive(&[*byte], r.now);
        assert_eq!(r.c.next_event(), ClientEvent::NeedInput);
        fed += 1;
    }
    assert_eq!(
        fed, 3,
        "bytes at 5, 10 and 15 s; the deadline passed at 20 s"
    );
    let (stage, code, kind, text) = failure(r.c.next_event());
    assert_eq!(
        (stage, code, kind),
        (Stage::Greeting, 451, FailureKind::Timeout)
    );
    assert!(text.contains("greeting within 20s"), "{text}");
}

/// `250-` continuation lines every 5 seconds do not stretch the EHLO deadline.
#[test]
fn continuation_lines_do_not_extend_a_reply() {
    let mut r = Run::new(StartTls::Never, None);
    r.server("220 mx.test\r\n");
    r.later(SECOND);
    assert_eq!(r.wrote(), "EHLO relay.test\r\n");
    let sent = r.now;
    loop {
        r.later(5 * SECOND);
        if r.c.handle_timeout(r.now) {
            break;
        }
        r.c.receive(b"250-x\r\n", r.now);
        assert_eq!(r.c.next_event(), ClientEvent::NeedInput);
    }
    assert_eq!(r.now, sent + 20 * SECOND);
    assert_eq!(failure(r.c.next_event()).2, FailureKind::Timeout);
}

/// Each pipelined reply's clock starts when the previous reply completed.
#[test]
fn pipelined_replies_each_get_their_own_deadline() {
    let mut r = Run::new(StartTls::Never, None);
    r.ready("250-mx.test\r\n250 PIPELINING\r\n");
    r.c.send(outgoing(&["1@y"]));
    r.wrote();
    let sent = r.now;
    assert_eq!(r.c.deadline(), Some(sent + 20 * SECOND));
    r.later(15 * SECOND);
    r.server("250 ok\r\n");
    assert_eq!(r.c.deadline(), Some(sent + 35 * SECOND), "RCPT");
    r.later(15 * SECOND);
    r.server("250 ok\r\n");
    assert_eq!(r.c.deadline(), Some(sent + 60 * SECOND), "DATA: dataInit");
    assert_eq!(r.server("354 go\r\n").0, ClientEvent::SendBody);
    assert_eq!(
        r.c.deadline(),
        None,
        "no reply is due while the body is written"
    );
    r.later(100 * SECOND);
    r.c.body_sent(r.now);
    assert_eq!(r.c.deadline(), Some(r.now + 60 * SECOND), "dataEnd");
}

/// What a scripted server does with one command or the body.
#[derive(Debug, Clone, Copy)]
enum Act {
    /// The reply it should give; the number picks among the codes the command may get.
    Proper(u8),
    /// Nothing: the client must give up at its deadline.
    Silent,
    /// The proper reply and one more.
    Extra,
    /// A line that is not a reply.
    Malformed,
    /// `250 ok`, whatever the command (a 250 to DATA skips the body).
    AlwaysOk,
    /// The proper reply, and also a `250 ok` at once (after a 354: before the body).
    Early,
    /// The proper reply one byte at a time, a second apart.
    Trickle,
}

fn act() -> impl Strategy<Value = Act> {
    prop_oneof![
        6 => any::<u8>().prop_map(Act::Proper),
        1 => Just(Act::Silent),
        1 => Just(Act::Extra),
        1 => Just(Act::Malformed),
        1 => Just(Act::AlwaysOk),
        1 => Just(Act::Early),
        1 => Just(Act::Trickle),
    ]
}

/// A server model that answers each command line (and the body) by the next act of a script,
/// and records what it really did with the body.
struct Scripted {
    acts: Vec<Act>,
    next: usize,
    pipelining: bool,
    in_data: bool,
    data: Vec<u8>,
    /// It took a complete body and answered it with a 2xx.
    accepted_body: bool,
    lines: Vec<u8>,
}

impl Scripted {
    fn act(&mut self) -> Act {
        let act = self.acts.get(self.next).copied().unwrap_or(Act::Proper(0));
        self.next += 1;
        act
    }

    fn reply(&mut self, proper: &str, is_data_start: bool, is_data_end: bool) -> Vec<Vec<u8>> {
        let act = self.act();
        let proper = proper.to_string();
        let mut out: Vec<Vec<u8>> = Vec::new();
        match act {
            Act::Proper(_) | Act::Extra | Act::Early | Act::Trickle => {
                if is_data_start && proper.starts_with("354") {
                    self.in_data = true;
                    self.data.clear();
                }
                if matches!(act, Act::Trickle) {
                    out.extend(proper.bytes().map(|b| vec![b]));
                } else {
                    out.push(proper.into_bytes());
                }
                if matches!(act, Act::Extra | Act::Early) {
                    out.push(b"250 ok\r\n".to_vec());
                }
            }
            Act::Silent => {}
            Act::Malformed => out.push(b"what?\r\n".to_vec()),
            Act::AlwaysOk => out.push(b"250 ok\r\n".to_vec()),
        }
        if is_data_end && out.first().is_some_and(|first| first.starts_with(b"2")) {
            self.accepted_body = true;
        }
        out
    }

    /// The proper reply to a command, picked by `pick`.
    fn proper(&self, line: &str, pick: u8) -> (String, bool) {
        let verb = line.get(..4).unwrap_or(line).to_ascii_uppercase();
        let choose = |options: &[&str]| options[usize::from(pick) % options.len()].to_string();
        match verb.as_str() {
            "EHLO" if self.pipelining => ("250-mx\r\n250-PIPELINING\r\n250 SIZE\r\n".into(), false),
            "EHLO" => ("250-mx\r\n250 SIZE\r\n".into(), false),
            "MAIL" => (
                choose(&["250 ok\r\n", "451 later\r\n", "553 no\r\n"]),
                false,
            ),
            "RCPT" => (
                choose(&["250 ok\r\n", "250 ok\r\n", "550 no\r\n", "452 full\r\n"]),
                false,
            ),
            "DATA" => (choose(&["354 go\r\n", "354 go\r\n", "451 later\r\n"]), true),
            "QUIT" => ("221 bye\r\n".into(), false),
            _ => ("250 ok\r\n".into(), false),
        }
    }

    /// Bytes written by the client; returns the server's answers, in pieces.
    fn written(&mut self, bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        if self.in_data {
            self.data.extend_from_slice(bytes);
            if self.data == b".\r\n" || self.data.ends_with(b"\r\n.\r\n") {
                self.in_data = false;
                let pick = match self.acts.get(self.next) {
                    Some(Act::Proper(p)) => *p,
                    _ => 0,
                };
                let proper =
                    ["250 2.0.0 queued\r\n", "451 later\r\n", "554 no\r\n"][usize::from(pick) % 3];
                out.extend(self.reply(proper, false, true));
            }
            return out;
        }
        self.lines.extend_from_slice(bytes);
        while let Some(end) = self.lines.windows(2).position(|w| w == b"\r\n") {
            let line: Vec<u8> = self.lines.drain(..end + 2).collect();
            let line = String::from_utf8_lossy(&line[..end]).into_owned();
            if line == "." {
                out.extend(self.reply("554 no valid recipients\r\n", false, false));
                continue;
            }
            let pick = match self.acts.get(self.next) {
                Some(Act::Proper(p)) => *p,
                _ => 0,
            };
            let (proper, data) = self.proper(&line, pick);
            out.extend(self.reply(&proper, data, false));
        }
        out
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Whatever the server does, a recipient counts as delivered only if the body was written
    /// in full and the server's reply to it was a 2xx; and a waiting client always has a
    /// deadline, so no server can hold it.
    #[test]
    fn delivered_only_after_the_body_and_a_final_2xx(
        acts in proptest::collection::vec(act(), 0..40),
        pipelining in any::<bool>(),
        greeting_act in act(),
    ) {
        let mut r = Run::new(StartTls::Never, None);
        let mut server = Scripted {
            acts, next: 0, pipelining, in_data: false, data: Vec::new(),
            accepted_body: false, lines: Vec::new(),
        };
        let mut inbox: Vec<Vec<u8>> = match greeting_act {
            Act::Silent => Vec::new(),
            Act::Malformed => vec![b"hello\r\n".to_vec()],
            Act::Extra | Act::Early => vec![b"220 mx\r\n250 ok\r\n".to_vec()],
            Act::AlwaysOk => vec![b"250 ok\r\n".to_vec()],
            Act::Trickle => b"220 mx\r\n".iter().map(|b| vec![*b]).collect(),
            Act::Proper(_) => vec![b"220 mx\r\n".to_vec()],
        };
        let mut transactions = 0;
        for _ in 0..500 {
            let event = r.c.next_event();
            let written = r.c.take_output(r.now);
            if !written.is_empty() {
                inbox.extend(server.written(&written));
            }
            match event {
                ClientEvent::NeedInput => {
                    if inbox.is_empty() {
                        let deadline = r.c.deadline();
                        prop_assert!(deadline.is_some(), "waiting without a deadline");
                        r.now = deadline.unwrap();
                        prop_assert!(r.c.handle_timeout(r.now));
                    } else {
                        let piece = inbox.remove(0);
                        r.later(SECOND);
                        if !r.c.handle_timeout(r.now) {
                            r.c.receive(&piece, r.now);
                        }
                    }
                }
                ClientEvent::SendBody => {
                    server.accepted_body = false;
                    let body = dot_stuff(b"Subject: x\r\n\r\nbody\r\n");
                    // What the server sent so far (a reply before the body) arrives meanwhile.
                    for piece in std::mem::take(&mut inbox) {
                        r.c.receive(&piece, r.now);
                    }
                    inbox.extend(server.written(&body));
                    r.c.body_sent(r.now);
                }
                ClientEvent::Done(outcome) => {
                    let delivered = outcome.replies.iter().any(|reply| reply.class() == 2);
                    prop_assert!(
                        !delivered || server.accepted_body,
                        "delivered without the server accepting a body: {outcome:?}"
                    );
                    server.accepted_body = false;
                }
                ClientEvent::Ready => {
                    if transactions == 3 {
                        r.c.quit();
                    } else {
                        transactions += 1;
                        server.accepted_body = false;
                        r.c.send(outgoing(&["1@y", "2@y"]));
                    }
                }
                ClientEvent::StartTls => prop_assert!(false, "STARTTLS was never offered"),
                ClientEvent::Failed(_) | ClientEvent::Closed => return Ok(()),
            }
        }
        prop_assert!(false, "the session neither ended nor failed");
    }

    #[test]
    fn never_panics_on_server_garbage(input in proptest::collection::vec(any::<u8>(), 0..400)) {
        let mut r = Run::new(StartTls::Opportunistic, None);
        r.c.receive(&input, r.now);
        for _ in 0..50 {
            match r.c.next_event() {
                ClientEvent::Ready => r.c.send(outgoing(&["1@y"])),
                ClientEvent::SendBody => r.c.body_sent(r.now),
                ClientEvent::StartTls => r.c.tls_started(),
                ClientEvent::NeedInput | ClientEvent::Failed(_) | ClientEvent::Closed => break,
                ClientEvent::Done(_) => {}
            }
        }
    }
}
