//! Message data in memory stays within ingress.limits.maxMessageMemory, whatever clients send:
//! large messages stream to the body stream as they arrive, and when the budget is spent new
//! transactions are refused and senders slowed instead of buffered.

#![allow(clippy::unwrap_used)] // a test that cannot set up may panic

use std::time::Duration;

use postern_e2e::{ReplyExt, STREAM, Smtp, start_relay};

const MIB: usize = 1024 * 1024;

/// A message of about `size` bytes whose lines say which message it is.
fn message(n: usize, size: usize) -> Vec<u8> {
    let mut body = format!("From: a@example.com\r\nSubject: big {n}\r\n\r\n").into_bytes();
    let mut line = 0u64;
    while body.len() < size {
        body.extend_from_slice(
            format!("message {n:04} line {line:012} ............\r\n").as_bytes(),
        );
        line += 1;
    }
    body
}

/// Sends one message over a fresh session, as a patient client would: a `452` at MAIL (the
/// relay's memory is spent) is tried again a moment later. Returns the reply to the message.
async fn send(addr: std::net::SocketAddr, body: Vec<u8>) -> String {
    let mut s = Smtp::greeted(addr).await;
    s.ehlo("client.test").await;
    loop {
        let mail = s.cmd("MAIL FROM:<a@example.com>").await;
        if mail.code == 452 {
            s.cmd("RSET").await.is(250, "2.0.0");
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        mail.is(250, "2.1.0");
        break;
    }
    s.cmd("RCPT TO:<b@example.org>").await.is(250, "2.1.5");
    s.cmd("DATA").await.is(354, "");
    s.send(&body).await;
    s.send(b".\r\n").await;
    let reply = s.reply().await;
    format!(
        "{} {}",
        reply.code,
        reply.status.map(|s| s.to_string()).unwrap_or_default()
    )
}

/// Twelve sessions send 6 MB each at once, 72 MB in all, against an 8 MiB budget: every
/// message is queued whole, and the process never grew anywhere near the data it took.
#[tokio::test]
async fn message_memory_stays_within_the_budget() {
    let (nats, relay) = start_relay(|c| c.ingress.limits.max_message_memory = 8 * MIB);
    let bodies: Vec<Vec<u8>> = (0..12).map(|n| message(n, 6 * MIB)).collect();
    let sends: Vec<_> = bodies
        .iter()
        .map(|body| tokio::spawn(send(relay.smtp(), body.clone())))
        .collect();
    for send in sends {
        let reply = send.await.unwrap();
        assert!(reply.starts_with("250 2.0.0"), "{reply}");
    }
    let peak = relay.peak_rss();
    let entries = nats.entries(STREAM).await;
    assert_eq!(entries.len(), 12);
    for entry in &entries {
        let n: usize = entry
            .text()
            .split("Subject: big ")
            .nth(1)
            .and_then(|rest| rest.split("\r\n").next())
            .and_then(|n| n.parse().ok())
            .unwrap();
        assert!(entry.body.ends_with(&bodies[n]), "message {n} is whole");
    }
    assert!(
        peak < 60 * MIB as u64,
        "peak RSS {} MiB for 72 MB of messages through an 8 MiB budget",
        peak / MIB as u64
    );
}

/// With NATS frozen, chunks wait for their acknowledgements and the budget fills: a new
/// transaction gets 452 4.3.1 until the queue catches up, and nothing is lost.
#[tokio::test]
async fn new_transactions_get_452_while_the_budget_is_spent() {
    let (nats, relay) = start_relay(|c| c.ingress.limits.max_message_memory = 4 * MIB);
    nats.pause(true);
    let sends: Vec<_> = (0..8)
        .map(|n| tokio::spawn(send(relay.smtp(), message(n, 3 * MIB))))
        .collect();
    let mut s = Smtp::greeted(relay.smtp()).await;
    s.ehlo("client.test").await;
    let start = std::time::Instant::now();
    loop {
        let reply = s.cmd("MAIL FROM:<late@example.com>").await;
        if reply.code == 452 {
            reply.is(452, "4.3.1");
            break;
        }
        s.cmd("RSET").await.is(250, "2.0.0");
        assert!(start.elapsed() < Duration::from_secs(10), "never refused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    nats.pause(false);
    for send in sends {
        let reply = send.await.unwrap();
        assert!(reply.starts_with("250 2.0.0"), "{reply}");
    }
    assert_eq!(nats.entries(STREAM).await.len(), 8);
    s.cmd("MAIL FROM:<late@example.com>").await.is(250, "2.1.0");
}

/// Delivery writes a stored body to the next hop as it reads it from the queue: six 6 MB
/// messages delivered at once never sit whole in the delivery process.
#[tokio::test]
async fn delivery_streams_large_bodies() {
    let mx = postern_e2e::MockMx::accepting().await;
    let (nats, ingress) = start_relay(|_| {});
    let bodies: Vec<Vec<u8>> = (0..6).map(|n| message(n, 6 * MIB)).collect();
    for body in &bodies {
        let reply = send(ingress.smtp(), body.clone()).await;
        assert!(reply.starts_with("250 2.0.0"), "{reply}");
    }
    let mut config = postern_e2e::Relay::config(&nats);
    config.delivery.routes = vec![postern_e2e::route_all(&mx.host())];
    let delivery = postern_e2e::Relay::spawn(&["delivery"], config);
    let delivered = mx.wait_for(6, Duration::from_secs(60)).await;
    nats.wait_empty(STREAM, Duration::from_secs(20)).await;
    let peak = delivery.peak_rss();
    for d in &delivered {
        let n: usize = d
            .text()
            .split("Subject: big ")
            .nth(1)
            .and_then(|rest| rest.split("\r\n").next())
            .and_then(|n| n.parse().ok())
            .unwrap();
        assert!(
            d.text()
                .ends_with(&String::from_utf8_lossy(&bodies[n]).into_owned())
        );
    }
    assert!(
        peak < 40 * MIB as u64,
        "delivery peak RSS {} MiB for 36 MB of messages",
        peak / MIB as u64
    );
}
