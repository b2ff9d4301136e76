//! Stored bodies and their lineages under fault: a worker frozen mid-attempt while another
//! takes its entry over, bodies lost from the queue, and stored-body delivery at a rate the
//! server's default consumer limits would have capped.

#![allow(clippy::unwrap_used)] // a test that cannot set up may panic

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use postern_config::{Config, OutboundTls, Route};
use postern_e2e::mx::RcptScript;
use postern_e2e::{MockMx, NatsServer, Relay, STREAM, Smtp};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BODIES: &str = "POSTERN_BODIES";
const WAIT: Duration = Duration::from_secs(30);

fn route(domain: &str, mx: &MockMx) -> Route {
    Route {
        domain: domain.into(),
        host: mx.host(),
        tls: OutboundTls::None,
    }
}

/// A config whose bodies over 1 KiB go to the body stream, with short ack deadlines and retries.
fn config(nats: &NatsServer, routes: Vec<Route>) -> Config {
    let mut config = Relay::config(nats);
    config.nats.inline_body_limit = 1024;
    config.delivery.routes = routes;
    config.delivery.ack_wait = "2s".parse().unwrap();
    config.delivery.retry.schedule = vec!["1s".parse().unwrap()];
    config
}

fn delivery(config: &Config) -> Relay {
    let mut config = config.clone();
    config.admin.address.set_port(0);
    let relay = Relay::spawn(&["delivery"], config);
    relay.wait_ready(WAIT);
    relay
}

fn large_body(tag: &str) -> String {
    format!(
        "From: a@example.com\r\nSubject: {tag}\r\n\r\n{}",
        format!("{tag} 0123456789abcdef0123456789abcdef0123456789abcdef\r\n").repeat(100)
    )
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < WAIT,
            "{what} did not happen within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The process logged the delivery of `rcpt`.
fn delivered_by(relay: &Relay, rcpt: &str) -> bool {
    relay
        .log()
        .lines()
        .any(|l| l.contains(" delivered ") && l.contains(&format!("rcpt={rcpt}")))
}

async fn wait_drained(nats: &NatsServer) {
    nats.wait_empty(STREAM, WAIT).await;
    let start = Instant::now();
    while nats.stored_bodies(BODIES).await != (0, 0) {
        assert!(
            start.elapsed() < WAIT,
            "bodies left: {:?}",
            nats.stored_bodies(BODIES).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Worker d1 delivers the first domain's entry and freezes before it reads the 250; after the
/// ack deadline d2 takes the entry and delivers it again; d1 wakes and finishes the entry a
/// second time. The second domain's entry, still waiting for its retry, must keep its body.
#[tokio::test]
async fn a_frozen_worker_does_not_release_a_shared_body_twice() {
    let nats = NatsServer::start();
    let first = MockMx::accepting().await;
    first.delay_next_data(Duration::from_secs(3));
    let open = Arc::new(AtomicBool::new(false));
    let gate = open.clone();
    let second = MockMx::start(Arc::new(move |_| {
        if gate.load(Ordering::SeqCst) {
            "250 2.1.5 ok".into()
        } else {
            "451 4.3.0 not yet".into()
        }
    }))
    .await;
    let config = config(
        &nats,
        vec![route("a.example", &first), route("b.example", &second)],
    );
    let ingress = Relay::start(config.clone());
    let d1 = delivery(&config);
    let body = large_body("shared");
    Smtp::submit(
        ingress.smtp(),
        "a@example.com",
        &["x@a.example", "y@b.example"],
        body.as_bytes(),
    )
    .await;

    // d1 has sent the whole message to the first MX, which holds its reply for 3 s.
    wait_until("the first delivery", || first.delivered().len() == 1).await;
    d1.pause(true);
    let d2 = delivery(&config);
    wait_until("the takeover by d2", || first.delivered().len() == 2).await;
    d1.pause(false);
    // d1 reads the 250 it was sent before it froze, and finishes the entry again.
    wait_until("d1 finishing the entry", || {
        delivered_by(&d1, "x@a.example")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    open.store(true, Ordering::SeqCst);
    let delivered = second.wait_for(1, WAIT).await;
    assert_eq!(delivered[0].recipients, ["y@b.example"]);
    assert!(
        delivered[0].text().ends_with(&body),
        "the second domain got the whole body"
    );
    wait_drained(&nats).await;
    assert_eq!(
        first.delivered().len(),
        2,
        "one duplicate, from the takeover"
    );
    drop(d2);
}

/// The same with one domain: d1 freezes after the server took both recipients; d2's attempt
/// defers one, and its retry must still find the body after d1 wakes and finishes the entry.
#[tokio::test]
async fn a_frozen_worker_does_not_release_a_body_its_retry_needs() {
    let nats = NatsServer::start();
    let later = Arc::new(AtomicUsize::new(0));
    let count = later.clone();
    let script: RcptScript = Arc::new(move |rcpt| {
        // The second worker's attempt defers y@; every other RCPT is accepted.
        if rcpt.starts_with("y@") && count.fetch_add(1, Ordering::SeqCst) == 1 {
            "451 4.2.0 later".into()
        } else {
            "250 2.1.5 ok".into()
        }
    });
    let mx = MockMx::start(script).await;
    mx.delay_next_data(Duration::from_secs(3));
    let mut config = config(&nats, vec![route("a.example", &mx)]);
    // Late enough that d1 wakes and finishes the entry before the retry is attempted.
    config.delivery.retry.schedule = vec!["3s".parse().unwrap()];
    let ingress = Relay::start(config.clone());
    let d1 = delivery(&config);
    let body = large_body("single");
    Smtp::submit(
        ingress.smtp(),
        "a@example.com",
        &["x@a.example", "y@a.example"],
        body.as_bytes(),
    )
    .await;

    wait_until("the first delivery", || mx.delivered().len() == 1).await;
    d1.pause(true);
    let d2 = delivery(&config);
    wait_until("the takeover by d2", || mx.delivered().len() == 2).await;
    wait_until("d2 deferring y@", || d2.log().contains("deferred")).await;
    d1.pause(false);
    wait_until("d1 finishing the entry", || {
        delivered_by(&d1, "y@a.example")
    })
    .await;

    let delivered = mx.wait_for(3, WAIT).await;
    assert_eq!(delivered[0].recipients, ["x@a.example", "y@a.example"]);
    assert_eq!(delivered[1].recipients, ["x@a.example"]);
    assert_eq!(delivered[2].recipients, ["y@a.example"], "the retry");
    assert!(delivered[2].text().ends_with(&body), "with the whole body");
    wait_drained(&nats).await;
    drop(d2);
}

/// A body that vanished from the queue is never retried forever: the sender gets a bounce
/// saying so, and the entry is gone.
#[tokio::test]
async fn a_lost_body_is_bounced_not_retried_forever() {
    let nats = NatsServer::start();
    let mx = MockMx::accepting().await;
    let mut config = config(&nats, vec![]);
    config.delivery.routes = vec![Route {
        domain: "*".into(),
        host: mx.host(),
        tls: OutboundTls::None,
    }];
    let ingress = Relay::start(config.clone());
    let id = Smtp::submit(
        ingress.smtp(),
        "sender@example.com",
        &["x@a.example"],
        large_body("lost").as_bytes(),
    )
    .await;
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    js.get_stream(BODIES)
        .await
        .unwrap()
        .purge()
        .filter(format!("postern.bodies.{BODIES}.{id}.data"))
        .await
        .unwrap();

    let _d = delivery(&config);
    let delivered = mx.wait_for(1, WAIT).await;
    assert_eq!(delivered.len(), 1, "only the bounce");
    assert_eq!(delivered[0].from, "");
    assert_eq!(delivered[0].recipients, ["sender@example.com"]);
    let report = delivered[0].text();
    assert!(report.contains("Status: 5.3.0"), "{report}");
    assert!(report.contains("lost from the queue"), "{report}");
    assert!(
        !report.contains("Remote-MTA"),
        "Postern's own finding: {report}"
    );
    wait_drained(&nats).await;
}

/// Stored bodies are read without a consumer per read: over a thousand of them in a few seconds
/// against nats-server's default limits, and the body stream never has a consumer.
#[tokio::test]
async fn stored_bodies_are_read_without_consumers() {
    const MESSAGES: usize = 1500;
    let nats = NatsServer::start();
    let mx = MockMx::accepting().await;
    let mut config = config(&nats, vec![route("a.example", &mx)]);
    config.delivery.concurrency = 200;
    let ingress = Relay::start(config.clone());
    let d = delivery(&config);

    let body = large_body("many");
    let mut tasks = Vec::new();
    for session in 0..10 {
        let (addr, body) = (ingress.smtp(), body.clone());
        tasks.push(tokio::spawn(async move {
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let mut script = String::from("EHLO load.test\r\n");
            for _ in (session..MESSAGES).step_by(10) {
                script.push_str(&format!(
                    "MAIL FROM:<a@example.com>\r\nRCPT TO:<x@a.example>\r\nDATA\r\n{body}.\r\n"
                ));
            }
            script.push_str("QUIT\r\n");
            stream.write_all(script.as_bytes()).await.unwrap();
            let mut replies = String::new();
            stream.read_to_string(&mut replies).await.unwrap();
            replies.matches("Ok: queued as").count()
        }));
    }
    let mut queued = 0;
    for task in tasks {
        queued += task.await.unwrap();
    }
    assert_eq!(queued, MESSAGES);
    let start = Instant::now();
    while mx.delivered().len() < MESSAGES {
        assert_eq!(
            nats.consumers(BODIES).await,
            0,
            "a consumer on the body stream"
        );
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "{} of {MESSAGES} delivered",
            mx.delivered().len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_drained(&nats).await;
    assert!(mx.delivered().iter().all(|d| d.text().ends_with(&body)));
    assert!(
        !d.log().contains("outcome not recorded"),
        "no body read failed\n{}",
        d.log()
    );
}

/// Entries an earlier build queued, with their body in its object store bucket, are delivered
/// after an upgrade, and the last one removes the body.
#[tokio::test]
async fn bodies_stored_by_an_earlier_build_are_delivered_and_released() {
    use async_nats::jetstream::{kv, object_store};
    let nats = NatsServer::start();
    let mx = MockMx::accepting().await;
    let config = config(
        &nats,
        vec![route("a.example", &mx), route("b.example", &mx)],
    );
    let _d = delivery(&config);
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let store = js
        .create_object_store(object_store::Config {
            bucket: BODIES.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let refs = js
        .create_key_value(kv::Config {
            bucket: format!("{BODIES}_REFS"),
            ..Default::default()
        })
        .await
        .unwrap();
    let body = large_body("earlier").replace(
        "From: a@example.com",
        "Received: by an earlier build\r\nFrom: a@example.com",
    );
    let key = "01J0000000000000000000OLD1";
    store.put(key, &mut body.as_bytes()).await.unwrap();
    refs.put(key, "2".into()).await.unwrap();
    for domain in ["a.example", "b.example"] {
        let envelope = format!(
            r#"{{"version":1,"queueId":"{key}","sender":"a@example.com","domain":"{domain}","recipients":["x@{domain}"],"receivedAtMs":{now},"attempts":0,"client":{{"address":"127.0.0.1","helo":"old"}},"smtputf8":false,"eightBitMime":false,"body":{{"kind":"object","bucket":"{BODIES}","key":"{key}","size":{size},"entries":2}},"traceparent":"00-0-0-01"}}"#,
            now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis(),
            size = body.len(),
        );
        js.publish(
            format!("postern.queue.{}", domain.replace('.', "_")),
            format!("{envelope}\n").into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    let delivered = mx.wait_for(2, WAIT).await;
    for d in &delivered {
        assert!(
            d.text().ends_with(&body),
            "whole body to {:?}",
            d.recipients
        );
    }
    nats.wait_empty(STREAM, WAIT).await;
    let start = Instant::now();
    while store.info(key).await.is_ok_and(|info| !info.deleted) {
        assert!(
            start.elapsed() < WAIT,
            "the earlier build's body is still stored"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        refs.get(key).await.unwrap().is_none(),
        "and its count is gone"
    );
}
