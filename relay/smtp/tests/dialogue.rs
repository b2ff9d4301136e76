//! The ESMTP dialogue of the server session, in memory: every command, limit and reply that is
//! the session's own decision, with a virtual clock. What needs a socket, TLS or the queue (the
//! greeting as configured, pipelining over TCP, what reaches the stream, the pregreet wait,
//! connection caps) is tested on the real process in e2e/tests/dialogue.rs.

#![allow(clippy::unwrap_used)] // a test that cannot set up may panic

use std::sync::Arc;
use std::time::{Duration, Instant};

use postern_smtp::{BareLineEndings, Event, Message, Peer, Reply, Session, SessionConfig};

const MESSAGE: &str = "From: a@example.com\r\nTo: b@example.org\r\nSubject: hi\r\n\r\nHello.\r\n";

fn config() -> SessionConfig {
    SessionConfig {
        max_message_size: 52_428_800,
        max_recipients: 100,
        max_errors: 20,
        bare_line_endings: BareLineEndings::Reject,
        ..postern_smtp::testing::session_config()
    }
}

/// A session, the virtual time it lives in, and what it handed to the queue.
struct Dialogue {
    session: Session,
    now: Instant,
    queued: Vec<Message>,
    closed: bool,
    /// Recipients the I/O layer's check refuses, and every recipient it was asked about.
    suppressed: Vec<String>,
    checked: Vec<String>,
}

impl Dialogue {
    fn new(config: SessionConfig) -> Dialogue {
        Dialogue::from(config, true)
    }

    fn from(config: SessionConfig, relay_allowed: bool) -> Dialogue {
        Dialogue::with_peer(
            config,
            Peer {
                relay_allowed,
                tls: false,
            },
        )
    }

    fn with_peer(config: SessionConfig, peer: Peer) -> Dialogue {
        let now = Instant::now();
        let mut d = Dialogue {
            session: Session::new(Arc::new(config), peer, now),
            now,
            queued: Vec::new(),
            closed: false,
            suppressed: Vec::new(),
            checked: Vec::new(),
        };
        let greeting = d.run();
        assert_eq!(greeting.len(), 1);
        assert_eq!(greeting[0].code, 220);
        d
    }

    /// Sends bytes and returns every reply they got.
    fn send(&mut self, bytes: &[u8]) -> Vec<Reply> {
        self.session.receive(bytes, self.now);
        self.run()
    }

    /// Sends one command line and returns its one reply.
    fn cmd(&mut self, line: &str) -> Reply {
        let mut replies = self.send(format!("{line}\r\n").as_bytes());
        assert_eq!(replies.len(), 1, "{line}: {replies:?}");
        replies.remove(0)
    }

    /// MAIL, RCPT for each recipient, DATA, the content and the dot: the last reply.
    fn send_mail(&mut self, from: &str, to: &[&str], content: &str) -> Reply {
        self.cmd(&format!("MAIL FROM:<{from}>")).is(250, "2.1.0");
        for rcpt in to {
            self.cmd(&format!("RCPT TO:<{rcpt}>")).is(250, "2.1.5");
        }
        self.cmd("DATA").is(354, "");
        let mut replies = self.send(format!("{content}.\r\n").as_bytes());
        replies.pop().unwrap()
    }

    fn ehlo(&mut self) -> Reply {
        self.cmd("EHLO client.test").is(250, "")
    }

    fn run(&mut self) -> Vec<Reply> {
        loop {
            match self.session.next_event() {
                Event::NeedInput => break,
                Event::Close => {
                    self.closed = true;
                    break;
                }
                Event::Message(message) => {
                    self.queued.push(*message);
                    self.session.message_result(Ok("QID".into()), self.now);
                }
                Event::CheckRecipient(address) => {
                    let address = address.to_string();
                    let refusal = self
                        .suppressed
                        .contains(&address)
                        .then(|| Reply::new(550, postern_smtp::Status(5, 1, 1), "suppressed"));
                    self.checked.push(address);
                    self.session.recipient_result(refusal, self.now);
                }
                event => panic!("unexpected event {event:?}"),
            }
        }
        self.session.take_replies()
    }

    /// Lets `by` pass and returns what the session said on its deadline.
    fn later(&mut self, by: Duration) -> Vec<Reply> {
        self.now += by;
        self.session.handle_timeout(self.now);
        self.run()
    }
}

trait Is {
    /// Asserts the code and the enhanced status (`""` for none).
    fn is(self, code: u16, status: &str) -> Self;
}

impl Is for Reply {
    fn is(self, code: u16, status: &str) -> Reply {
        let got = self.status.map(|s| s.to_string()).unwrap_or_default();
        assert_eq!((self.code, got.as_str()), (code, status), "{self:?}");
        self
    }
}

#[test]
fn ehlo_lists_the_extensions_and_helo_works() {
    let mut d = Dialogue::new(config());
    assert_eq!(
        d.ehlo().lines,
        [
            "relay.test",
            "PIPELINING",
            "SIZE 52428800",
            "8BITMIME",
            "SMTPUTF8",
            "ENHANCEDSTATUSCODES",
            "CHUNKING",
            "DSN"
        ]
    );
    d.cmd("HELO client.test").is(250, "");
    d.cmd("EHLO").is(501, "5.5.4");
    d.cmd("QUIT").is(221, "2.0.0");
    assert!(d.closed);
}

#[test]
fn simple_commands_and_their_order() {
    let mut d = Dialogue::new(config());
    d.cmd("NOOP").is(250, "2.0.0");
    d.cmd("VRFY postmaster").is(252, "2.5.0");
    d.cmd("HELP").is(214, "2.0.0");
    d.cmd("EXPN staff").is(502, "5.5.1");
    d.cmd("XYZZY").is(500, "5.5.1");
    d.cmd("RSET").is(250, "2.0.0");
    d.cmd("STARTTLS").is(502, "5.5.1");
    d.cmd("AUTH PLAIN").is(502, "5.5.1");
    d.cmd("MAIL FROM:<a@example.com>").is(503, "5.5.1");
    d.ehlo();
    d.cmd("RCPT TO:<b@example.org>").is(503, "5.5.1");
    d.cmd("DATA").is(503, "5.5.1");
    d.cmd("MAIL FROM:<a@example.com>").is(250, "2.1.0");
    d.cmd("MAIL FROM:<a@example.com>").is(503, "5.5.1");
    d.cmd("DATA").is(554, "5.5.1");
    d.cmd("RSET").is(250, "2.0.0");
    d.cmd("RCPT TO:<b@example.org>").is(503, "5.5.1");
    d.cmd("MAIL FROM:<a@example.com> MT-PRIORITY=1")
        .is(555, "5.5.4");
    d.cmd("MAIL FROM:<a@example.com> BODY=BINARYMIME")
        .is(555, "5.5.4");
    d.cmd("MAIL FROM:a@example.com").is(501, "5.1.7");
    d.cmd("MAIL FROM:<> BODY=8BITMIME").is(250, "2.1.0");
    d.cmd("RCPT TO:<b@example.org> XRCPTFORWARD=1")
        .is(555, "5.5.4");
    d.cmd("RCPT TO:<not an address>").is(501, "5.1.3");
    d.cmd("QUIT").is(221, "2.0.0");
}

#[test]
fn dsn_requests_reach_the_queue_per_recipient() {
    let mut d = Dialogue::new(config());
    d.ehlo();
    d.cmd("MAIL FROM:<a@example.com> RET=HDRS ENVID=QQ314159")
        .is(250, "2.1.0");
    d.cmd("RCPT TO:<b@example.org> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;B+2Bx@example.org")
        .is(250, "2.1.5");
    d.cmd("RCPT TO:<c@example.org>").is(250, "2.1.5");
    let refused = d.cmd("RCPT TO:<d@example.org> NOTIFY=NEVER,SUCCESS");
    refused.clone().is(501, "5.5.4");
    assert!(refused.text().contains("NOTIFY takes NEVER"), "{refused:?}");
    d.cmd("RCPT TO:<e@example.org> ORCPT=rfc822;e=x")
        .is(501, "5.5.4");
    d.cmd(&format!(
        "RCPT TO:<f@example.org> ORCPT=rfc822;{}@example.org",
        "f".repeat(500)
    ))
    .is(501, "5.5.4");
    d.cmd("RCPT TO:<g@example.org> NOTIFY=NEVER")
        .is(250, "2.1.5");
    d.cmd("DATA").is(354, "");
    d.send(format!("{MESSAGE}.\r\n").as_bytes());
    let dsn = &d.queued[0].dsn;
    assert_eq!(dsn.ret, Some(postern_smtp::dsn::Ret::Hdrs));
    assert_eq!(dsn.envid.as_deref(), Some("QQ314159"));
    let b = dsn.recipient("b@example.org");
    assert!(b.wants_success() && b.wants_delay() && !b.wants_failure());
    assert_eq!(b.orcpt.unwrap().address, "B+x@example.org");
    assert!(dsn.recipient("c@example.org").is_empty());
    assert!(!dsn.recipient("g@example.org").wants_failure());
    assert_eq!(
        dsn.recipients.keys().collect::<Vec<_>>(),
        ["b@example.org", "g@example.org"],
        "only recipients that asked for something, only accepted ones"
    );

    d.cmd("MAIL FROM:<a@example.com> ENVID=x ENVID=y")
        .is(501, "5.5.4");
    d.cmd(&format!(
        "MAIL FROM:<a@example.com> ENVID={}",
        "x".repeat(101)
    ))
    .is(501, "5.5.4");
    d.cmd("MAIL FROM:<a@example.com>").is(250, "2.1.0");
    d.cmd("RCPT TO:<b@example.org>").is(250, "2.1.5");
    d.cmd("DATA").is(354, "");
    d.send(format!("{MESSAGE}.\r\n").as_bytes());
    assert!(
        d.queued[1].dsn.is_empty(),
        "a new transaction asks for nothing"
    );
}

#[test]
fn recipients_are_checked_by_the_io_layer_only_after_the_sessions_own_checks() {
    let mut d = Dialogue::new(SessionConfig {
        check_recipients: true,
        max_recipients: 2,
        ..config()
    });
    d.suppressed.push("gone@example.org".into());
    d.ehlo();
    d.cmd("MAIL FROM:<a@example.com>").is(250, "2.1.0");
    d.cmd("RCPT TO:<gone@example.org>").is(550, "5.1.1");
    d.cmd("RCPT TO:<jörg@example.org>").is(553, "5.6.7");
    // Pipelined: each RCPT waits for its check, the replies come in order.
    let replies = d.send(b"RCPT TO:<b@example.org>\r\nRCPT TO:<gone@example.org>\r\nRCPT TO:<c@example.org>\r\nRCPT TO:<d@example.org>\r\nDATA\r\n");
    let codes: Vec<u16> = replies.iter().map(|r| r.code).collect();
    assert_eq!(codes, [250, 550, 250, 452, 354]);
    assert_eq!(
        d.checked,
        [
            "gone@example.org",
            "b@example.org",
            "gone@example.org",
            "c@example.org"
        ],
        "neither the refused UTF-8 address nor the one over the limit is asked about"
    );
    d.send(format!("{MESSAGE}.\r\n").as_bytes());
    assert_eq!(
        d.queued[0]
            .recipients
            .iter()
            .map(|r| r.to_string())
            .collect::<Vec<_>>(),
        ["b@example.org", "c@example.org"]
    );
}

#[test]
fn requiretls_is_offered_and_taken_only_over_tls() {
    let mut plain = Dialogue::new(config());
    assert!(!plain.ehlo().lines.iter().any(|l| l == "REQUIRETLS"));
    let refused = plain.cmd("MAIL FROM:<a@example.com> REQUIRETLS");
    assert!(
        refused
            .text()
            .contains("REQUIRETLS needs an encrypted session")
    );
    refused.is(530, "5.7.10");

    let mut tls = Dialogue::with_peer(
        config(),
        Peer {
            relay_allowed: true,
            tls: true,
        },
    );
    assert!(tls.ehlo().lines.iter().any(|l| l == "REQUIRETLS"));
    tls.cmd("MAIL FROM:<a@example.com> REQUIRETLS")
        .is(250, "2.1.0");
    tls.cmd("RCPT TO:<b@example.org>").is(250, "2.1.5");
    tls.cmd("DATA").is(354, "");
    tls.send(format!("{MESSAGE}.\r\n").as_bytes());
    assert!(tls.queued[0].require_tls);
    tls.send_mail("a@example.com", &["b@example.org"], MESSAGE)
        .is(250, "2.0.0");
    assert!(!tls.queued[1].require_tls, "only when asked");
}

#[test]
fn dot_stuffing_is_undone() {
    let mut d = Dialogue::new(config());
    d.ehlo();
    let content = "Subject: dots\r\n\r\n..leading dot\r\n...\r\n";
    d.send_mail("a@example.com", &["b@example.org"], content)
        .is(250, "2.0.0");
    assert_eq!(
        d.queued[0].body,
        b"Subject: dots\r\n\r\n.leading dot\r\n..\r\n"
    );
}

#[test]
fn chunking_assembles_bdat_chunks_and_stays_in_sync_after_refusals() {
    let mut d = Dialogue::new(config());
    d.ehlo();
    // A refused chunk is still read to its end, so the session stays in sync.
    let [refused] = &d.send(b"BDAT 3\r\nabc")[..] else {
        panic!()
    };
    refused.clone().is(503, "5.5.1");
    d.cmd("MAIL FROM:<a@example.com>").is(250, "2.1.0");
    let [bare] = &d.send(b"BDAT 3\r\nab\n")[..] else {
        panic!()
    };
    bare.clone().is(554, "5.5.1");
    d.cmd("MAIL FROM:<a@example.com>").is(250, "2.1.0");
    d.cmd("RCPT TO:<b@example.org>").is(250, "2.1.5");
    d.send(b"BDAT 17\r\nSubject: chunk\r\n\r")[0]
        .clone()
        .is(250, "2.0.0");
    d.cmd("DATA").is(503, "5.5.1");
    d.send(b"BDAT 10\r\n\n.\r\nline\r\n")[0]
        .clone()
        .is(250, "2.0.0");
    d.cmd("BDAT 0 LAST").is(250, "2.0.0");
    assert_eq!(d.queued.len(), 1);
    assert_eq!(d.queued[0].body, b"Subject: chunk\r\n\r\n.\r\nline\r\n");
}

#[test]
fn declared_and_actual_size_limits() {
    let mut d = Dialogue::new(SessionConfig {
        max_message_size: 1000,
        ..config()
    });
    assert!(d.ehlo().lines.contains(&"SIZE 1000".to_string()));
    d.cmd("MAIL FROM:<a@example.com> SIZE=1001")
        .is(552, "5.3.4");
    d.cmd("MAIL FROM:<a@example.com> SIZE=900").is(250, "2.1.0");
    d.cmd("RCPT TO:<b@example.org>").is(250, "2.1.5");
    d.cmd("DATA").is(354, "");
    let big = format!("Subject: big\r\n\r\n{}\r\n", "x".repeat(900)).repeat(2);
    assert!(d.send(big.as_bytes()).is_empty());
    d.cmd(".").is(552, "5.3.4");
    // The session stays in sync: the next transaction works.
    d.send_mail("a@example.com", &["b@example.org"], MESSAGE)
        .is(250, "2.0.0");
    // BDAT: refused when the chunk would pass the limit, after reading its bytes.
    d.cmd("MAIL FROM:<a@example.com>").is(250, "2.1.0");
    d.cmd("RCPT TO:<b@example.org>").is(250, "2.1.5");
    let chunk = format!("BDAT 1200 LAST\r\n{}", "y".repeat(1200));
    d.send(chunk.as_bytes())[0].clone().is(552, "5.3.4");
    d.cmd("NOOP").is(250, "2.0.0");
    assert_eq!(d.queued.len(), 1);
}

#[test]
fn recipients_beyond_the_limit_get_452_only_for_the_excess() {
    let mut d = Dialogue::new(SessionConfig {
        max_recipients: 3,
        ..config()
    });
    d.ehlo();
    d.cmd("MAIL FROM:<a@example.com>").is(250, "2.1.0");
    for i in 0..3 {
        d.cmd(&format!("RCPT TO:<r{i}@example.org>"))
            .is(250, "2.1.5");
    }
    d.cmd("RCPT TO:<r3@example.org>").is(452, "4.5.3");
    d.cmd("RCPT TO:<r4@example.org>").is(452, "4.5.3");
    d.cmd("DATA").is(354, "");
    d.send(MESSAGE.as_bytes());
    d.cmd(".").is(250, "2.0.0");
    let recipients: Vec<String> = d.queued[0]
        .recipients
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        recipients,
        ["r0@example.org", "r1@example.org", "r2@example.org"]
    );
}

#[test]
fn a_long_command_line_gets_500_and_the_session_stays_in_sync() {
    let mut d = Dialogue::new(config());
    d.ehlo();
    let long = format!("MAIL FROM:<{}@example.com>", "a".repeat(2100));
    d.cmd(&long).is(500, "5.5.2");
    // In pieces, as a socket would deliver it.
    let longer = format!("NOOP {}\r\n", "b".repeat(100_000));
    let mut replies = Vec::new();
    for piece in longer.as_bytes().chunks(4096) {
        replies.extend(d.send(piece));
    }
    assert_eq!(replies.len(), 1);
    replies.remove(0).is(500, "5.5.2");
    d.cmd("NOOP").is(250, "2.0.0");
    d.cmd(&format!("NOOP {}", "c".repeat(2000)))
        .is(250, "2.0.0");
}

#[test]
fn a_text_line_over_998_octets_is_refused() {
    let mut d = Dialogue::new(config());
    d.ehlo();
    let content = format!("Subject: long\r\n\r\n{}\r\n", "z".repeat(999));
    d.send_mail("a@example.com", &["b@example.org"], &content)
        .is(550, "5.6.0");
    let content = format!("Subject: long\r\n\r\n{}\r\n", "z".repeat(998));
    d.send_mail("a@example.com", &["b@example.org"], &content)
        .is(250, "2.0.0");
    assert_eq!(d.queued.len(), 1);
}

#[test]
fn forbidden_bytes_in_commands_get_501() {
    let mut d = Dialogue::new(config());
    d.ehlo();
    d.send(b"MAIL FROM:<a\0@example.com>\r\n")[0]
        .clone()
        .is(501, "5.5.2");
    d.send(b"MAIL FROM:<a@exa\rmple.com>\r\n")[0]
        .clone()
        .is(501, "5.5.2");
    let replies = d.send(b"MAIL FROM:<a@example.com>\nRCPT TO:<b@example.org>\r\n");
    assert_eq!(replies.len(), 2);
    replies[0].clone().is(501, "5.5.2");
    replies[1].clone().is(503, "5.5.1");
    d.cmd("MAIL FROM:<a@example.com>").is(250, "2.1.0");
}

#[test]
fn utf8_addresses_need_smtputf8() {
    let mut d = Dialogue::new(config());
    d.ehlo();
    d.cmd("MAIL FROM:<jösé@example.com>").is(553, "5.6.7");
    d.cmd("MAIL FROM:<a@example.com>").is(250, "2.1.0");
    d.cmd("RCPT TO:<用户@例子.广告>").is(553, "5.6.7");
    d.cmd("RSET").is(250, "2.0.0");
    d.cmd("MAIL FROM:<jösé@example.com> SMTPUTF8")
        .is(250, "2.1.0");
    d.cmd("RCPT TO:<用户@例子.广告>").is(250, "2.1.5");
    d.cmd("DATA").is(354, "");
    d.send("Subject: ünïcödé\r\n\r\nx\r\n".as_bytes());
    d.cmd(".").is(250, "2.0.0");
    assert!(d.queued[0].smtputf8);
    assert_eq!(d.queued[0].recipients[0].domain(), "例子.广告");
}

#[test]
fn too_many_errors_close_the_session() {
    let mut d = Dialogue::new(config());
    for _ in 0..19 {
        d.cmd("BOGUS").is(500, "5.5.1");
    }
    let replies = d.send(b"BOGUS\r\n");
    assert_eq!(replies.len(), 2);
    replies[0].clone().is(500, "5.5.1");
    replies[1].clone().is(421, "4.7.0");
    assert!(d.closed);
}

#[test]
fn an_idle_client_times_out_at_the_command_deadline() {
    let mut d = Dialogue::new(config());
    d.ehlo();
    assert!(d.later(Duration::from_secs(299)).is_empty());
    assert!(!d.closed);
    let replies = d.later(Duration::from_secs(1));
    replies[0].clone().is(421, "4.4.2");
    assert!(d.closed);
}

#[test]
fn a_mail_loop_is_refused_after_50_received_headers() {
    let mut d = Dialogue::new(config());
    d.ehlo();
    let headers = |n: usize| "Received: from a by b; Thu, 1 Jan 1970 00:00:00 +0000\r\n".repeat(n);
    let looping = format!("{}Subject: loop\r\n\r\nx\r\n", headers(51));
    d.send_mail("a@example.com", &["b@example.org"], &looping)
        .is(554, "5.4.6");
    let fine = format!("{}Subject: ok\r\n\r\nx\r\n", headers(50));
    d.send_mail("a@example.com", &["b@example.org"], &fine)
        .is(250, "2.0.0");
    assert_eq!(d.queued.len(), 1);
}

#[test]
fn sender_domains_restrict_mail_from() {
    let mut d = Dialogue::new(SessionConfig {
        sender_domains: vec!["example.com".into()],
        ..config()
    });
    d.ehlo();
    d.cmd("MAIL FROM:<a@evil.example>").is(553, "5.7.1");
    d.cmd("MAIL FROM:<a@sub.example.com>").is(553, "5.7.1");
    d.cmd("MAIL FROM:<a@EXAMPLE.com>").is(250, "2.1.0");
    d.cmd("RSET").is(250, "2.0.0");
    d.cmd("MAIL FROM:<>").is(250, "2.1.0");
}

#[test]
fn outsiders_cannot_relay_in_any_address_form() {
    let mut d = Dialogue::from(config(), false);
    d.ehlo();
    d.cmd("MAIL FROM:<a@example.com>").is(250, "2.1.0");
    let mut denied = 0;
    for rcpt in [
        "<victim@example.org>",
        "<victim%example.org@relay.test>",
        "<\"victim@example.org\">",
        "<\"victim@example.org\"@relay.test>",
        "<@relay.test:victim@example.org>",
        "<@relay.test,@other.test:victim@example.org>",
        "<example.org!victim@relay.test>",
        "<victim@example.org@relay.test>",
        "<victim@[127.0.0.1]>",
        "<postmaster@relay.test>",
    ] {
        let reply = d.cmd(&format!("RCPT TO:{rcpt}"));
        assert_eq!(reply.class(), 5, "{rcpt} got {reply:?}");
        if reply.code == 554 {
            let reply = reply.is(554, "5.7.1");
            assert_eq!(reply.reject, Some(postern_smtp::Reject::RelayDenied));
            denied += 1;
        }
    }
    assert!(denied >= 7, "{denied} refused as relaying");
    d.cmd("DATA").is(554, "5.5.1");
    assert!(d.queued.is_empty());
}
