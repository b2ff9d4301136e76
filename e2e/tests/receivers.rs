//! Delivery against receiving servers that are broken, hostile or limited: a 250 to DATA,
//! unsolicited replies, a greeting trickled byte by byte, no 8BITMIME, a SIZE limit, and idle
//! sessions that the server closes or that Postern must close itself.

#![allow(clippy::unwrap_used)] // a test that cannot set up may panic

use std::time::{Duration, Instant};

use postern_e2e::mx::Behaviour;
use postern_e2e::{MockMx, Relay, STREAM, Smtp, route_all, start_standalone, wait_until};

const WAIT: Duration = Duration::from_secs(20);

/// A relay whose every route goes to `mx`, retrying after a second.
fn relay_to(
    mx: &MockMx,
    tweak: impl FnOnce(&mut postern_config::Config),
) -> (postern_e2e::NatsServer, Relay) {
    start_standalone(|c| {
        c.delivery.routes = vec![route_all(&mx.host())];
        c.delivery.retry.schedule = vec!["1s".parse().unwrap()];
        tweak(c);
    })
}

async fn wait_log(relay: &Relay, text: &str) {
    wait_until(&format!("{text:?} in the log"), WAIT, || {
        relay.log().contains(text)
    })
    .await;
}

/// Submits one small message to b@example.org.
async fn submit(relay: &Relay) {
    Smtp::submit(
        relay.smtp(),
        "a@example.com",
        &["b@example.org"],
        b"Subject: x\r\n\r\nbody\r\n",
    )
    .await;
}

fn outcome(relay: &Relay, result: &str) -> f64 {
    relay.metric(&format!(
        "postern_delivery_outcomes_total{{result=\"{result}\"}}"
    ))
}

/// A server that answers DATA with 250 never got the body: the message is deferred, not
/// recorded as delivered, and still queued.
#[tokio::test]
async fn a_250_to_data_is_not_a_delivery() {
    let mx = MockMx::behaving(Behaviour {
        data_gets_250: true,
        ..Behaviour::default()
    })
    .await;
    let (nats, relay) = relay_to(&mx, |_| {});
    submit(&relay).await;
    wait_log(
        &relay,
        "Protocol violation by the server: it answered DATA with 250",
    )
    .await;
    assert_eq!(outcome(&relay, "delivered"), 0.0);
    assert_eq!(outcome(&relay, "bounced"), 0.0);
    assert!(outcome(&relay, "deferred") >= 1.0);
    // Still queued for its retry (for a moment also as the entry its retry replaces), with
    // nothing sent.
    let entries = nats.entries(STREAM).await;
    assert!(
        !entries.is_empty()
            && entries
                .iter()
                .all(|e| e.envelope.recipients == ["b@example.org"]),
        "{entries:?}"
    );
    assert!(mx.delivered().is_empty());
}

/// A greeting that comes one byte every 500 ms gets the greeting deadline in all, not per
/// byte; the attempt is deferred with a reason that says so.
#[tokio::test]
async fn a_trickled_greeting_is_deferred_at_its_deadline() {
    let mx = MockMx::accepting().await;
    mx.set_greeting("220 mx.test ESMTP this greeting takes a long time to arrive");
    mx.set_behaviour(Behaviour {
        trickle_greeting: Some(Duration::from_millis(500)),
        ..Behaviour::default()
    });
    let (_nats, relay) = relay_to(&mx, |c| {
        c.delivery.timeouts.greeting = "2s".parse().unwrap();
    });
    let started = Instant::now();
    submit(&relay).await;
    wait_log(&relay, "No complete reply to the greeting within 2s").await;
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "deferred after {:?}",
        started.elapsed()
    );
    assert!(mx.delivered().is_empty());
}

/// 8-bit content to a server without 8BITMIME is returned with 5.6.3, and the bounce says it
/// was Postern's decision: no Remote-MTA, no smtp diagnostic blaming the server. A 7-bit
/// message goes through.
#[tokio::test]
async fn eight_bit_content_to_a_server_without_8bitmime_is_returned() {
    let mx = MockMx::behaving(Behaviour {
        no_8bitmime: true,
        ..Behaviour::default()
    })
    .await;
    let (nats, relay) = relay_to(&mx, |_| {});
    Smtp::submit(
        relay.smtp(),
        "sender@example.com",
        &["b@example.org"],
        "Subject: caf\u{e9}\r\n\r\nd\u{e9}j\u{e0} vu\r\n".as_bytes(),
    )
    .await;
    Smtp::submit(
        relay.smtp(),
        "sender@example.com",
        &["c@example.org"],
        b"Subject: plain\r\n\r\nascii\r\n",
    )
    .await;
    let delivered = mx.wait_for(2, WAIT).await;
    nats.wait_empty(STREAM, WAIT).await;
    let plain = delivered
        .iter()
        .find(|d| d.recipients == ["c@example.org"])
        .expect("the 7-bit message");
    assert_eq!(plain.from, "sender@example.com");
    let bounce = delivered
        .iter()
        .find(|d| d.from.is_empty())
        .expect("a bounce");
    let report = bounce.text();
    assert!(report.contains("Status: 5.6.3"), "{report}");
    assert!(report.contains("does not offer 8BITMIME"), "{report}");
    assert!(!report.contains("Remote-MTA"), "{report}");
    assert!(!report.contains("Diagnostic-Code: smtp"), "{report}");
    assert!(!report.contains("said:"), "{report}");
    assert!(!delivered.iter().any(|d| d.recipients == ["b@example.org"]));
}

/// A message larger than the server's SIZE is not sent; the bounce names the sizes and says
/// Postern decided.
#[tokio::test]
async fn a_message_over_the_servers_size_is_returned_as_postern_s_decision() {
    let mx = MockMx::behaving(Behaviour {
        size: Some(2000),
        ..Behaviour::default()
    })
    .await;
    let (nats, relay) = relay_to(&mx, |_| {});
    Smtp::submit(
        relay.smtp(),
        "sender@example.com",
        &["b@example.org"],
        format!(
            "Subject: big\r\n\r\n{}",
            format!("{}\r\n", "x".repeat(70)).repeat(80)
        )
        .as_bytes(),
    )
    .await;
    let delivered = mx.wait_for(1, WAIT).await;
    nats.wait_empty(STREAM, WAIT).await;
    assert_eq!(delivered[0].from, "", "only the bounce got through");
    let report = delivered[0].text();
    assert!(report.contains("Status: 5.3.4"), "{report}");
    assert!(report.contains("accepts at most 2000 (SIZE)"), "{report}");
    assert!(report.contains("Not sent to 127.0.0.1"), "{report}");
    assert!(!report.contains("Remote-MTA"), "{report}");
}

/// An idle pooled session is closed with QUIT when its idle time is up, and one the server
/// closes is closed by Postern at once (no socket left half-closed).
#[tokio::test]
async fn idle_sessions_are_closed_on_time_and_when_the_server_closes_them() {
    let mx = MockMx::accepting().await;
    let (_nats, relay) = relay_to(&mx, |c| c.delivery.timeouts.idle = "1s".parse().unwrap());
    submit(&relay).await;
    mx.wait_for(1, WAIT).await;
    let start = Instant::now();
    while mx.quits() < 1 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no QUIT after 1 s idle"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(mx.open_sessions(), 0);

    let closing = MockMx::behaving(Behaviour {
        idle_close: Some(Duration::from_millis(500)),
        ..Behaviour::default()
    })
    .await;
    let (_nats, relay) = relay_to(&closing, |_| {});
    submit(&relay).await;
    closing.wait_for(1, WAIT).await;
    wait_until(
        "Postern closing its end after the server closed the idle session",
        Duration::from_secs(5),
        || closing.closed_after_idle() >= 1,
    )
    .await;
    assert_eq!(
        closing.quits(),
        0,
        "the server closed it; 30 s of idle time had not passed"
    );
}
