//! The delivery client and the ingress server session driven against each other in memory, on
//! one virtual clock: what one writes is what the other reads, and every deadline is reached by
//! moving the clock, not by sleeping.

#![allow(clippy::unwrap_used)] // a test that cannot set up may panic

use std::sync::Arc;
use std::time::{Duration, Instant};

use postern_smtp::client::{
    Client, ClientConfig, ClientEvent, FailureKind, Outcome, StartTls, Timeouts,
};
use postern_smtp::dot::dot_stuff;
use postern_smtp::testing::{outgoing, session_config};
use postern_smtp::{Event, Message, Peer, Session, SessionConfig, Status};

const SECOND: Duration = Duration::from_secs(1);

fn server_config() -> SessionConfig {
    SessionConfig {
        max_message_size: 100_000,
        ..session_config()
    }
}

fn timeouts() -> Timeouts {
    Timeouts {
        greeting: 300 * SECOND,
        command: 300 * SECOND,
        data_init: 120 * SECOND,
        data_end: 600 * SECOND,
    }
}

/// A client and a server connected by an in-memory wire, and the clock they share.
struct Pair {
    client: Client,
    server: Session,
    now: Instant,
    /// What the server handed to the queue.
    queued: Vec<Message>,
    /// Whether the queue answers a hand-off at once; when false the server waits for it.
    queue_answers: bool,
    /// Every byte the client wrote, as the server read it.
    wire: Vec<u8>,
}

/// What the client reported when it next needed a decision.
#[derive(Debug, PartialEq)]
enum Step {
    Ready,
    Done(Outcome),
    Failed(u16, FailureKind),
    Closed,
    /// Both sides wait for bytes the other will not send until the clock moves.
    Idle,
}

impl Pair {
    fn new() -> Pair {
        let now = Instant::now();
        let client = Client::new(
            ClientConfig {
                helo_name: "client.test".into(),
                starttls: StartTls::Never,
                auth: None,
                timeouts: timeouts(),
            },
            now,
        );
        let peer = Peer {
            relay_allowed: true,
            tls: false,
        };
        let server = Session::new(Arc::new(server_config()), peer, now);
        Pair {
            client,
            server,
            now,
            queued: Vec::new(),
            queue_answers: true,
            wire: Vec::new(),
        }
    }

    /// Carries bytes both ways until the client needs a decision or both sides wait.
    fn run(&mut self, body: &[u8]) -> Step {
        for _ in 0..1000 {
            let mut moved = self.serve();
            let event = self.client.next_event();
            let written = self.client.take_output(self.now);
            if !written.is_empty() {
                moved = true;
                self.write_to_server(&written);
            }
            match event {
                ClientEvent::NeedInput if moved => {}
                ClientEvent::NeedInput => {
                    if !self.serve() {
                        return Step::Idle;
                    }
                }
                ClientEvent::SendBody => {
                    self.write_to_server(&dot_stuff(body));
                    self.client.body_sent(self.now);
                }
                ClientEvent::StartTls => panic!("STARTTLS was not asked for"),
                ClientEvent::Ready => return Step::Ready,
                ClientEvent::Done(outcome) => return Step::Done(outcome),
                ClientEvent::Failed(failure) => {
                    return Step::Failed(failure.reply.code, failure.kind);
                }
                ClientEvent::Closed => return Step::Closed,
            }
        }
        panic!("the pair neither settled nor waited");
    }

    fn write_to_server(&mut self, bytes: &[u8]) {
        self.wire.extend_from_slice(bytes);
        self.server.receive(bytes, self.now);
    }

    /// Runs the server until it needs input; true if it wrote anything to the client.
    fn serve(&mut self) -> bool {
        let mut wrote = false;
        loop {
            let event = self.server.next_event();
            for reply in self.server.take_replies() {
                wrote = true;
                self.client.receive(&reply.to_bytes(), self.now);
            }
            match event {
                Event::NeedInput | Event::Close => return wrote,
                Event::Message(message) => {
                    self.queued.push(*message);
                    if !self.queue_answers {
                        return wrote;
                    }
                    self.server.message_result(Ok("QID".into()), self.now);
                }
                event => panic!("unexpected server event {event:?}"),
            }
        }
    }

    /// Carries bytes both ways until the client is to write the body (the server sent its 354).
    fn until_body(&mut self) {
        for _ in 0..100 {
            self.serve();
            let event = self.client.next_event();
            let written = self.client.take_output(self.now);
            self.write_to_server(&written);
            match event {
                ClientEvent::SendBody => return,
                ClientEvent::NeedInput => {}
                event => panic!("expected the body to be asked for, got {event:?}"),
            }
        }
        panic!("the client never asked for the body");
    }

    /// Moves the clock to `at` and lets both sides act on their deadlines.
    fn advance_to(&mut self, at: Instant) {
        self.now = at;
        self.server.handle_timeout(self.now);
        self.client.handle_timeout(self.now);
    }
}

fn codes(step: Step) -> Vec<u16> {
    let Step::Done(outcome) = step else {
        panic!("expected a finished transaction, got {step:?}")
    };
    outcome.replies.iter().map(|r| r.code).collect()
}

#[test]
fn a_pipelined_transaction_reaches_the_queue_as_the_client_sent_it() {
    let mut p = Pair::new();
    assert_eq!(p.run(b""), Step::Ready);
    assert!(
        p.client.extensions().pipelining,
        "the server offers PIPELINING"
    );
    let body = b"Subject: pair\r\n\r\n.a line with a dot\r\nlast\r\n";
    p.client.send(outgoing(
        &["b@example.org", "c@example.org", "d@example.org"],
        body.len(),
    ));
    assert_eq!(
        codes(p.run(body)),
        [250, 250, 452],
        "the third is over the limit"
    );
    let message = &p.queued[0];
    assert_eq!(
        message
            .recipients
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["b@example.org", "c@example.org"]
    );
    assert_eq!(
        message.body, body,
        "dot-stuffed on the wire, undone by the server"
    );
    let wire = String::from_utf8(p.wire.clone()).unwrap();
    let mail = format!(
        "MAIL FROM:<a@example.com> SIZE={}\r\nRCPT TO:<b@example.org>\r\n",
        body.len()
    );
    assert!(wire.contains(&mail), "{wire}");
    assert!(wire.contains("\r\n..a line with a dot\r\n"), "{wire}");

    p.client.quit();
    assert_eq!(p.run(b""), Step::Closed);
}

#[test]
fn a_queue_that_does_not_answer_runs_out_the_clients_clock_not_the_servers() {
    let mut p = Pair::new();
    p.queue_answers = false;
    assert_eq!(p.run(b""), Step::Ready);
    let body = b"Subject: slow queue\r\n\r\nx\r\n";
    p.client.send(outgoing(&["b@example.org"], body.len()));
    assert_eq!(p.run(body), Step::Idle);
    assert_eq!(p.queued.len(), 1, "the server handed the message on");
    // While the hand-off is outstanding the server has no deadline of its own: the queue's
    // answer ends it. The client waits `data_end` for its reply to the body, then gives up.
    assert_eq!(p.server.poll_timeout(), None);
    let deadline = p.client.deadline().unwrap();
    assert_eq!(deadline, p.now + 600 * SECOND);
    p.advance_to(deadline - Duration::from_millis(1));
    assert_eq!(p.run(body), Step::Idle);
    p.advance_to(deadline);
    assert_eq!(p.run(body), Step::Failed(451, FailureKind::Timeout));
}

#[test]
fn an_idle_client_is_closed_at_the_servers_command_deadline() {
    let mut p = Pair::new();
    assert_eq!(p.run(b""), Step::Ready);
    let deadline = p.server.poll_timeout().unwrap();
    assert_eq!(deadline, p.now + 300 * SECOND);
    p.advance_to(deadline - Duration::from_millis(1));
    assert_eq!(
        p.run(b""),
        Step::Ready,
        "one millisecond early, nothing happens"
    );
    p.advance_to(deadline);
    // A 421 may come at any time (RFC 5321 §3.8): the client takes it as the server's refusal
    // to go on, not as a broken protocol.
    assert_eq!(p.run(b""), Step::Failed(421, FailureKind::Refused));
}

#[test]
fn a_body_trickled_below_the_rate_floor_is_cut_off_at_the_data_timeout() {
    let mut p = Pair::new();
    assert_eq!(p.run(b""), Step::Ready);
    let body = b"x"
        .repeat(98)
        .iter()
        .chain(b"\r\n")
        .copied()
        .collect::<Vec<u8>>()
        .repeat(300);
    p.client.send(outgoing(&["b@example.org"], body.len()));
    p.until_body();
    // 100 bytes a second against a floor of 1 KiB/s: the floor applies once the data timeout
    // (180 s) has passed, and by then the content is far behind it.
    let start = p.now;
    for piece in body.chunks(100) {
        p.now += SECOND;
        if p.server.handle_timeout(p.now) {
            break;
        }
        p.server.receive(piece, p.now);
        assert_eq!(p.server.next_event(), Event::NeedInput);
    }
    assert_eq!(p.now.duration_since(start), 180 * SECOND);
    let replies = p.server.take_replies();
    let last = replies.last().unwrap();
    assert_eq!(
        (last.code, last.status),
        (421, Some(Status(4, 4, 2))),
        "{last:?}"
    );
    assert_eq!(p.server.next_event(), Event::Close);
    assert!(p.queued.is_empty(), "nothing reached the queue");
}
