//! The events stream end to end: one event per recipient and outcome (received, delivered,
//! deferred, bounced) in `<stream>_EVENTS`, in the documented schema, read back with a plain
//! NATS client as an integration would.

#![allow(clippy::unwrap_used)] // a test that cannot set up may panic

use std::time::Duration;

use postern_e2e::nats::stored_messages;
use postern_e2e::{MockMx, STREAM, Smtp, route_all, start_standalone};
use postern_queue::events::{Event, Kind};

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn each_recipient_and_outcome_is_one_event() {
    let mx = MockMx::start(postern_e2e::mx::mixed_outcomes()).await;
    let (nats, relay) = start_standalone(|c| {
        c.delivery.routes = vec![route_all(&mx.host())];
        c.delivery.retry.schedule = vec!["1s".parse().unwrap()];
    });
    let queue_id = Smtp::submit(
        relay.smtp(),
        "sender@example.com",
        &["ok@example.org", "bad@example.org", "later@example.org"],
        b"Subject: events\r\nMessage-ID: <events.1@example.com>\r\n\r\nx\r\n",
    )
    .await;
    mx.wait_for(3, WAIT).await;
    nats.wait_empty(STREAM, WAIT).await;
    // Events are stored in the background: wait for all of them.
    let stream = format!("{STREAM}_EVENTS");
    let mut events: Vec<Event>;
    let start = std::time::Instant::now();
    loop {
        events = stored_messages(&nats.url(), &stream)
            .await
            .iter()
            .map(|m| serde_json::from_slice(&m.payload).unwrap())
            .collect();
        if events.len() >= 8 {
            break;
        }
        assert!(start.elapsed() < WAIT, "{events:#?}\n{}", relay.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let of = |recipient: &str| -> Vec<&Event> {
        events
            .iter()
            .filter(|e| e.recipient.as_deref() == Some(recipient))
            .collect()
    };
    let kinds = |recipient: &str| -> Vec<Kind> {
        let mut kinds: Vec<Kind> = of(recipient).iter().map(|e| e.kind).collect();
        kinds.sort_by_key(|k| k.as_str());
        kinds
    };
    assert_eq!(kinds("ok@example.org"), [Kind::Delivered, Kind::Received]);
    assert_eq!(kinds("bad@example.org"), [Kind::Bounced, Kind::Received]);
    assert_eq!(
        kinds("later@example.org"),
        [Kind::Deferred, Kind::Delivered, Kind::Received]
    );
    // The bounce to the sender is delivered too; it was never received over SMTP.
    assert_eq!(kinds("sender@example.com"), [Kind::Delivered]);
    assert_eq!(events.len(), 8, "{events:#?}");

    let delivered = of("ok@example.org")
        .into_iter()
        .find(|e| e.kind == Kind::Delivered)
        .unwrap();
    assert_eq!(delivered.version, 1);
    assert_eq!(delivered.queue_id, queue_id);
    assert_eq!(delivered.sender, "sender@example.com");
    assert_eq!(delivered.domain.as_deref(), Some("example.org"));
    assert_eq!(delivered.attempt, Some(1));
    assert_eq!(delivered.destination.as_deref(), Some(mx.host().as_str()));
    assert_eq!(delivered.remote_host.as_deref(), Some("127.0.0.1"));
    assert!(
        delivered.reply.as_deref().unwrap().starts_with("250 "),
        "{delivered:?}"
    );
    assert_eq!(delivered.tls, None, "plaintext");
    assert!(
        events
            .iter()
            .filter(|e| e.recipient.as_deref() != Some("sender@example.com"))
            .all(|e| e.message_id.as_deref() == Some("<events.1@example.com>")),
        "every event of the message names its Message-ID: {events:#?}"
    );
    let report = of("sender@example.com")[0];
    assert!(
        report
            .message_id
            .as_deref()
            .is_some_and(|id| id.ends_with("@relay.test>")),
        "the bounce has its own: {report:?}"
    );
    let bounced = of("bad@example.org")
        .into_iter()
        .find(|e| e.kind == Kind::Bounced)
        .unwrap();
    assert_eq!(bounced.reply.as_deref(), Some("550 5.1.1 no such user"));
    let deferred = of("later@example.org")
        .into_iter()
        .find(|e| e.kind == Kind::Deferred)
        .unwrap();
    assert!(deferred.next_attempt.is_some(), "{deferred:?}");
    let retried = of("later@example.org")
        .into_iter()
        .find(|e| e.kind == Kind::Delivered)
        .unwrap();
    assert_eq!(retried.attempt, Some(2));
    let mut ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), events.len(), "every event has its own id");
    let subjects: Vec<String> = stored_messages(&nats.url(), &stream)
        .await
        .iter()
        .map(|m| m.subject.to_string())
        .collect();
    assert!(
        subjects.iter().all(|s| s.contains("_events.")),
        "{subjects:?}"
    );
    assert_eq!(
        relay.metric("postern_events_published_total{kind=\"received\"}"),
        3.0
    );
    assert_eq!(relay.metric("postern_events_dropped_total"), 0.0);
}
