//! Webhooks end to end: a real `postern standalone` sends the delivery events of the kinds a
//! webhook asked for to an HTTPS receiver on loopback (its certificate from a test CA trusted
//! through `caFile`), signed with HMAC-SHA256; the receiver refuses, then answers too late,
//! then accepts, and every event arrives in an accepted batch while mail goes on meanwhile.

#![allow(clippy::unwrap_used)] // a test that cannot set up may panic

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use postern_config::Webhook;
use postern_e2e::https::{Request, Response};
use postern_e2e::nats::stored_messages;
use postern_e2e::{HttpsServer, MockMx, NatsServer, Relay, STREAM, Smtp, TestPki, route_all};
use postern_queue::events::{Event, Kind};

const WAIT: Duration = Duration::from_secs(20);
const SECRET: &str = "whsec-test-1";

struct Setup {
    nats: NatsServer,
    relay: Relay,
    receiver: HttpsServer,
    host: String,
    mx: MockMx,
    _pki: TestPki,
    _files: tempfile::TempDir,
}

/// A relay delivering to a scripted MX, with one webhook `crm` for `kinds` at the receiver.
async fn setup(kinds: &[&str], timeout: &str, retry_for: &str) -> Setup {
    let pki = TestPki::new();
    let receiver = HttpsServer::start(&pki).await;
    let host = format!("localhost:{}", receiver.addr.port());
    let files = tempfile::tempdir().unwrap();
    let secret_file = files.path().join("secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
    let ca_file = files.path().join("ca.pem");
    std::fs::write(&ca_file, &pki.ca_pem).unwrap();
    let mx = MockMx::start(postern_e2e::mx::mixed_outcomes()).await;
    let webhook = Webhook {
        name: "crm".into(),
        url: format!("https://{host}/hooks?v=1"),
        kinds: kinds.iter().map(|k| k.to_string()).collect(),
        secret_file,
        ca_file: Some(ca_file),
        batch_size: 2,
        timeout: timeout.parse().unwrap(),
        retry_for: retry_for.parse().unwrap(),
    };
    let nats = NatsServer::start();
    let mut config = Relay::config(&nats);
    config.delivery.routes = vec![route_all(&mx.host())];
    config.delivery.retry.schedule = vec!["1s".parse().unwrap()];
    config.events.webhooks = vec![webhook];
    let relay = Relay::spawn(&["standalone"], config);
    relay.wait_ready(WAIT);
    wait_for_consumer(&nats, &relay).await;
    Setup {
        nats,
        relay,
        receiver,
        host,
        mx,
        _pki: pki,
        _files: files,
    }
}

/// The webhook's consumer exists: events from now on reach it.
async fn wait_for_consumer(nats: &NatsServer, relay: &Relay) {
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let start = std::time::Instant::now();
    loop {
        if let Ok(stream) = js.get_stream(format!("{STREAM}_EVENTS")).await
            && stream.consumer_info("postern-webhook-crm").await.is_ok()
        {
            return;
        }
        assert!(
            start.elapsed() < WAIT,
            "no webhook consumer\n{}",
            relay.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn answer(status: u16) -> Response {
    Response {
        status,
        content_type: "text/plain".into(),
        body: String::new(),
    }
}

/// The events in the relay's stream of the given kinds.
async fn stored(nats: &NatsServer, kinds: &[Kind]) -> Vec<Event> {
    stored_messages(&nats.url(), &format!("{STREAM}_EVENTS"))
        .await
        .iter()
        .map(|m| serde_json::from_slice::<Event>(&m.payload).unwrap())
        .filter(|e| kinds.contains(&e.kind))
        .collect()
}

fn hex_hmac(secret: &[u8], data: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    ring::hmac::sign(&key, data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Checks the request's signature as a receiver would, and returns its events.
fn verified_events(request: &Request) -> Vec<Event> {
    let signature = request.header("postern-signature").unwrap();
    let (t, v1) = signature
        .strip_prefix("t=")
        .and_then(|rest| rest.split_once(",v1="))
        .unwrap_or_else(|| panic!("signature {signature:?}"));
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let sent: u64 = t.parse().unwrap();
    assert!(now.abs_diff(sent) < 60, "timestamp {sent} is now ({now})");
    let mut signed = format!("{t}.").into_bytes();
    signed.extend_from_slice(&request.body);
    assert_eq!(
        v1,
        hex_hmac(SECRET.as_bytes(), &signed),
        "HMAC-SHA256 of t.body"
    );
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/hooks?v=1");
    assert_eq!(request.header("content-type"), Some("application/json"));
    assert_eq!(request.header("postern-webhook"), Some("crm"));
    let events: Vec<Event> = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(
        request.header("postern-events"),
        Some(events.len().to_string().as_str())
    );
    assert!(!events.is_empty() && events.len() <= 2, "batchSize 2");
    events
}

#[tokio::test]
async fn batches_are_signed_retried_past_refusals_and_timeouts_and_every_event_arrives() {
    let s = setup(&["delivered", "bounced"], "1s", "72h").await;
    // Refused, then too late for the 1 s timeout, then accepted.
    s.receiver.script(
        &s.host,
        vec![
            (answer(500), Duration::ZERO),
            (answer(200), Duration::from_secs(3)),
            (answer(204), Duration::ZERO),
        ],
    );
    Smtp::submit(
        s.relay.smtp(),
        "sender@example.com",
        &["ok@example.org", "bad@example.org", "later@example.org"],
        b"Subject: hooks\r\nMessage-ID: <hooks.1@example.com>\r\n\r\nx\r\n",
    )
    .await;
    // Mail goes on whatever the webhook does: two recipients, one retried, and the bounce.
    s.mx.wait_for(3, WAIT).await;
    s.nats.wait_empty(STREAM, WAIT).await;
    let wanted_kinds = [Kind::Delivered, Kind::Bounced];
    let start = std::time::Instant::now();
    let (wanted, accepted) = loop {
        let wanted: HashSet<String> = stored(&s.nats, &wanted_kinds)
            .await
            .into_iter()
            .map(|e| e.id)
            .collect();
        let requests = s.receiver.requests();
        // The first two requests got the refusal and the late answer; the rest were accepted.
        let accepted: HashSet<String> = requests
            .iter()
            .skip(2)
            .flat_map(verified_events)
            .map(|e| e.id)
            .collect();
        if wanted.len() == 4 && wanted.is_subset(&accepted) {
            break (wanted, requests);
        }
        assert!(
            start.elapsed() < WAIT,
            "wanted {wanted:?}, accepted {accepted:?}, {} requests\n{}",
            requests.len(),
            s.relay.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(accepted.len() >= 3, "refused, late, accepted");
    // Every request is signed, and none holds an event of a kind the webhook did not ask for.
    for request in &accepted {
        for event in verified_events(request) {
            assert!(wanted_kinds.contains(&event.kind), "{event:?}");
            assert!(wanted.contains(&event.id), "{event:?}");
        }
    }
    // The receiver records a request before it answers: the relay counts the answer a moment
    // later.
    for (name, at_least) in [
        (
            "postern_webhook_posts_total{webhook=\"crm\",result=\"refused\"}",
            1.0,
        ),
        (
            "postern_webhook_posts_total{webhook=\"crm\",result=\"failed\"}",
            1.0,
        ),
        (
            "postern_webhook_posts_total{webhook=\"crm\",result=\"accepted\"}",
            1.0,
        ),
        (
            "postern_webhook_events_total{webhook=\"crm\",result=\"sent\"}",
            4.0,
        ),
    ] {
        s.relay.wait_metric(name, at_least, WAIT).await;
    }
}

#[tokio::test]
async fn events_not_accepted_within_retry_for_are_dropped_and_counted() {
    let s = setup(&[], "1s", "2s").await;
    s.receiver.set(&s.host, answer(503));
    Smtp::submit(
        s.relay.smtp(),
        "sender@example.com",
        &["ok@example.org"],
        b"Subject: hooks\r\n\r\nx\r\n",
    )
    .await;
    s.mx.wait_for(1, WAIT).await;
    // received and delivered, both dropped once they are two seconds old.
    let name = "postern_webhook_events_total{webhook=\"crm\",result=\"expired\"}";
    s.relay.wait_metric(name, 2.0, WAIT).await;
    // The acknowledgements of the dropped events reach the server a moment after they count.
    let js = async_nats::jetstream::new(async_nats::connect(s.nats.url()).await.unwrap());
    let stream = js.get_stream(format!("{STREAM}_EVENTS")).await.unwrap();
    let start = std::time::Instant::now();
    loop {
        let info = stream.consumer_info("postern-webhook-crm").await.unwrap();
        if (info.num_pending, info.num_ack_pending) == (0, 0) {
            break;
        }
        assert!(start.elapsed() < WAIT, "left to send: {info:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        s.relay
            .metric("postern_webhook_events_total{webhook=\"crm\",result=\"sent\"}"),
        0.0
    );
    let tries = s.receiver.requests().len();
    assert!(
        (1..=6).contains(&tries),
        "{tries} POSTs in about two seconds"
    );
}
