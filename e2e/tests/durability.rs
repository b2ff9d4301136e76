//! The hand-off to JetStream: never a 250 without an acknowledgement, recovery after NATS
//! outages, large bodies through the object store, a graceful drain on SIGTERM, and waiting
//! retries that outlive their delivery process and the server.

#![allow(clippy::unwrap_used)] // a test that cannot set up may panic

use std::time::{Duration, Instant};

use async_nats::jetstream;
use postern_e2e::{ReplyExt, STREAM, Smtp, start_relay};

const MESSAGE: &[u8] = b"Subject: durable\r\n\r\nx\r\n";

#[tokio::test]
async fn nats_outage_gives_451_and_unready_then_recovers_without_restart() {
    let (mut nats, relay) = start_relay(|_| {});
    let mut s = Smtp::greeted(relay.smtp()).await;
    s.ehlo("client.test").await;
    s.send_mail("a@example.com", &["b@example.org"], MESSAGE)
        .await
        .is(250, "2.0.0");

    nats.kill();
    relay.wait_readyz(503, Duration::from_secs(10));
    assert_eq!(
        relay.http_status("/healthz"),
        Some(200),
        "alive while NATS is away"
    );
    // Refused at MAIL, before the client uploads a message that cannot be queued.
    s.cmd("MAIL FROM:<a@example.com>").await.is(451, "4.3.0");
    let mut late = Smtp::connect(relay.smtp()).await;
    late.reply().await.is(421, "4.3.2");
    assert!(late.closed().await, "new clients are not greeted");

    nats.restart();
    relay.wait_ready(Duration::from_secs(20));
    s.send_mail("a@example.com", &["c@example.org"], MESSAGE)
        .await
        .is(250, "2.0.0");
    let entries = nats.entries(STREAM).await;
    let recipients: Vec<_> = entries
        .iter()
        .map(|e| e.envelope.recipients[0].as_str())
        .collect();
    assert_eq!(recipients, ["b@example.org", "c@example.org"]);
}

#[tokio::test]
async fn a_nats_server_that_stops_answering_makes_the_pod_unready() {
    // The connection stays up (the server is stopped, not gone), as with a cluster that lost
    // its quorum: nothing can be stored, so Kubernetes should route clients elsewhere.
    let (nats, relay) = start_relay(|_| {});
    relay.wait_readyz(200, Duration::from_secs(10));
    nats.pause(true);
    let paused = Instant::now();
    relay.wait_readyz(503, Duration::from_secs(8));
    println!(
        "unready {:?} after the server stopped answering",
        paused.elapsed()
    );
    assert_eq!(
        relay.http_status("/healthz"),
        Some(200),
        "alive all the same"
    );
    nats.pause(false);
    relay.wait_readyz(200, Duration::from_secs(10));
}

/// A session that has sent a message to two domains, all but its final dot.
async fn two_domain_message_but_its_end(relay: &postern_e2e::Relay) -> Smtp {
    let mut s = Smtp::greeted(relay.smtp()).await;
    s.ehlo("client.test").await;
    s.cmd("MAIL FROM:<a@example.com>").await.is(250, "2.1.0");
    s.cmd("RCPT TO:<b@example.org>").await.is(250, "2.1.5");
    s.cmd("RCPT TO:<c@other.example>").await.is(250, "2.1.5");
    s.cmd("DATA").await.is(354, "");
    s.send(MESSAGE).await;
    s
}

/// NATS frozen past both acknowledgement rounds: the client gets 451, and once NATS is back
/// nothing of the message is left in the queue, so the client's retry does not queue it twice.
#[tokio::test]
async fn no_ack_within_the_timeout_gives_451_and_leaves_nothing() {
    let (nats, relay) = start_relay(|c| c.nats.ack_timeout = "1s".parse().unwrap());
    let mut s = two_domain_message_but_its_end(&relay).await;
    nats.pause(true);
    let started = Instant::now();
    s.send(b".\r\n").await;
    let reply = s.reply().await;
    let answered = started.elapsed();
    reply.is(451, "4.3.0");
    nats.pause(false);
    assert!(
        answered < Duration::from_secs(4),
        "answered after {answered:?}"
    );
    assert_eq!(
        relay.metric("postern_ingress_enqueue_failures_total{cause=\"ack_timeout\"}"),
        1.0
    );
    let start = Instant::now();
    while !nats.entries(STREAM).await.is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "a refused message stayed queued: {:?}",
            nats.entries(STREAM).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// NATS frozen past the first acknowledgement deadline but back before the second: the entries
/// were stored, the republished ones are duplicates, and the client gets 250, once.
#[tokio::test]
async fn a_late_acknowledgement_still_gives_250() {
    let (nats, relay) = start_relay(|c| c.nats.ack_timeout = "1s".parse().unwrap());
    let mut s = two_domain_message_but_its_end(&relay).await;
    nats.pause(true);
    s.send(b".\r\n").await;
    tokio::time::sleep(Duration::from_millis(1400)).await;
    nats.pause(false);
    let id = s.reply().await.is(250, "2.0.0").queue_id();
    let entries = nats.entries(STREAM).await;
    let ids: Vec<&str> = entries
        .iter()
        .map(|e| e.envelope.queue_id.as_str())
        .collect();
    assert_eq!(ids, [id.as_str(), id.as_str()], "each entry stored once");
    assert!(
        relay.log().contains("late acknowledgements resolved"),
        "{}",
        relay.log()
    );
}

#[tokio::test]
async fn a_partly_stored_message_is_refused_and_its_entries_removed() {
    let (nats, relay) = start_relay(|_| {});
    // Narrow the stream behind the relay's back so only example.org entries are accepted.
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let mut config = js
        .get_stream(STREAM)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .config
        .clone();
    config.subjects = vec!["postern.queue.example_org".into()];
    js.update_stream(config).await.unwrap();

    let mut s = Smtp::greeted(relay.smtp()).await;
    s.ehlo("client.test").await;
    let reply = s
        .send_mail(
            "a@example.com",
            &["b@example.org", "c@other.example"],
            MESSAGE,
        )
        .await;
    reply.is(451, "4.3.0");
    assert!(
        nats.entries(STREAM).await.is_empty(),
        "the acknowledged example.org entry was removed"
    );
    s.send_mail("a@example.com", &["b@example.org"], MESSAGE)
        .await
        .is(250, "2.0.0");
    assert_eq!(nats.entries(STREAM).await.len(), 1);
}

#[tokio::test]
async fn fifty_megabyte_message_round_trips_byte_exact() {
    let (nats, relay) = start_relay(|_| {});
    let mut body = b"From: a@example.com\r\nSubject: large\r\n\r\n".to_vec();
    let mut n: u64 = 0;
    while body.len() < 50_000_000 {
        n = n
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        body.extend_from_slice(format!("{n:064x}{:012}\r\n", body.len()).as_bytes());
    }
    let mut s = Smtp::greeted(relay.smtp()).await;
    s.ehlo("client.test").await;
    let id = s
        .send_mail(
            "a@example.com",
            &["b@example.org", "c@other.example"],
            &body,
        )
        .await
        .is(250, "2.0.0")
        .queue_id();
    let entries = nats.entries(STREAM).await;
    assert_eq!(entries.len(), 2);
    for (index, entry) in entries.iter().enumerate() {
        let postern_queue::BodyRef::Stored {
            key, size, lineage, ..
        } = &entry.envelope.body
        else {
            panic!("a 50 MB body goes to the body stream");
        };
        assert_eq!((key.as_str(), *lineage), (id.as_str(), index as u32));
        assert!(
            entry.body.ends_with(&body),
            "body differs after the Received header"
        );
        let head = &entry.body[..entry.body.len() - body.len()];
        assert_eq!(*size as usize + head.len(), entry.body.len());
        let received = String::from_utf8(head.to_vec()).unwrap();
        assert!(
            received.starts_with("Received: from client.test") && received.ends_with(" +0000\r\n"),
            "{received}"
        );
        assert!(received.contains(&format!(" id {id}")), "{received}");
    }
    assert_eq!(
        nats.stored_bodies("POSTERN_BODIES").await,
        (1, 1),
        "stored once"
    );
}

#[tokio::test]
async fn sigterm_closes_idle_sessions_and_lets_transactions_finish() {
    let (nats, mut relay) = start_relay(|_| {});
    let mut idle = Smtp::greeted(relay.smtp()).await;
    idle.ehlo("idle.test").await;
    let mut busy = Smtp::greeted(relay.smtp()).await;
    busy.ehlo("busy.test").await;
    busy.cmd("MAIL FROM:<a@example.com>").await.is(250, "2.1.0");
    busy.cmd("RCPT TO:<b@example.org>").await.is(250, "2.1.5");
    busy.cmd("DATA").await.is(354, "");
    busy.send(b"Subject: in flight\r\n\r\nfirst half\r\n").await;

    relay.sigterm();
    idle.reply().await.is(421, "4.3.2");
    assert!(idle.closed().await);
    relay.wait_readyz(503, Duration::from_secs(5));
    assert!(
        tokio::net::TcpStream::connect(relay.smtp()).await.is_err(),
        "no new connections while draining"
    );

    busy.send(b"second half\r\n.\r\n").await;
    busy.reply().await.is(250, "2.0.0");
    busy.reply().await.is(421, "4.3.2");
    let status = relay
        .wait_exit(Duration::from_secs(15))
        .expect("postern exits after the drain");
    assert!(status.success(), "exit status {status:?}");
    let entries = nats.entries(STREAM).await;
    assert_eq!(entries.len(), 1);
    assert!(entries[0].text().ends_with("first half\r\nsecond half\r\n"));
}

#[tokio::test]
async fn a_transaction_that_outlives_the_grace_period_does_not_hold_the_exit() {
    let (nats, mut relay) = start_relay(|c| c.shutdown_grace = "1s".parse().unwrap());
    let mut stuck = Smtp::greeted(relay.smtp()).await;
    stuck.ehlo("stuck.test").await;
    stuck
        .cmd("MAIL FROM:<a@example.com>")
        .await
        .is(250, "2.1.0");
    stuck.cmd("RCPT TO:<b@example.org>").await.is(250, "2.1.5");
    stuck.cmd("DATA").await.is(354, "");
    stuck.send(b"Subject: never finished\r\n").await;
    let started = Instant::now();
    relay.sigterm();
    let status = relay
        .wait_exit(Duration::from_secs(10))
        .expect("postern exits after the grace period");
    assert!(status.success(), "exit status {status:?}");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "waited for the grace period"
    );
    assert!(
        nats.entries(STREAM).await.is_empty(),
        "an unfinished message is never queued"
    );
}

#[tokio::test]
async fn the_stream_is_created_or_brought_back_to_the_configured_settings() {
    let nats = postern_e2e::NatsServer::start();
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    // A stream left behind with other settings (an older config, a hand edit).
    js.create_stream(jetstream::stream::Config {
        name: STREAM.into(),
        subjects: vec!["postern.queue.>".into()],
        retention: jetstream::stream::RetentionPolicy::WorkQueue,
        duplicate_window: Duration::from_secs(10),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut config = postern_e2e::Relay::config(&nats);
    config.nats.duplicate_window = "3m".parse().unwrap();
    let relay = postern_e2e::Relay::start(config.clone());
    let info = js
        .get_stream(STREAM)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .config
        .clone();
    assert_eq!(info.duplicate_window, Duration::from_secs(180));
    assert_eq!(info.storage, jetstream::stream::StorageType::File);
    assert_eq!(
        info.retention,
        jetstream::stream::RetentionPolicy::WorkQueue
    );
    assert_eq!(info.num_replicas, 1);
    drop(relay);
    // Starting again on the provisioned stream is a no-op that still becomes ready.
    let relay = postern_e2e::Relay::start(config);
    let mut s = Smtp::greeted(relay.smtp()).await;
    s.ehlo("client.test").await;
    s.send_mail("a@example.com", &["b@example.org"], MESSAGE)
        .await
        .is(250, "2.0.0");
    assert_eq!(nats.entries(STREAM).await.len(), 1);
}

#[tokio::test]
async fn a_waiting_retry_survives_a_killed_delivery_process_and_a_nats_restart() {
    use postern_e2e::{MockMx, NatsServer, Relay, route_all};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let tries = Arc::new(AtomicUsize::new(0));
    let counter = tries.clone();
    let mx = MockMx::start(Arc::new(move |_| {
        if counter.fetch_add(1, Ordering::SeqCst) == 0 {
            "451 4.3.0 try again later".into()
        } else {
            "250 2.1.5 ok".into()
        }
    }))
    .await;
    let mut nats = NatsServer::start();
    let ingress = Relay::start(Relay::config(&nats));
    let delivery = |nats: &NatsServer| {
        let mut config = Relay::config(nats);
        config.delivery.routes = vec![route_all(&mx.host())];
        config.delivery.retry.schedule = vec!["6s".parse().unwrap()];
        let relay = Relay::spawn(&["delivery"], config);
        relay.wait_ready(Duration::from_secs(20));
        relay
    };
    let mut first = delivery(&nats);
    Smtp::submit(ingress.smtp(), "a@example.com", &["b@example.org"], MESSAGE).await;
    let start = Instant::now();
    while tries.load(Ordering::SeqCst) == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no first attempt"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Once the retry waits as a schedule, its delivery process and then the server go down.
    loop {
        let entries = nats.entries(STREAM).await;
        if entries.len() == 1 && entries[0].subject.starts_with("postern.queue.wait.") {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "no retry filed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.kill();
    nats.restart();
    let entries = nats.entries(STREAM).await;
    assert_eq!(entries.len(), 1, "the waiting retry is stored");
    assert!(
        entries[0].subject.starts_with("postern.queue.wait."),
        "{}",
        entries[0].subject
    );
    assert_eq!(entries[0].envelope.attempts, 1);
    let _second = delivery(&nats);
    let delivered = mx.wait_for(1, Duration::from_secs(30)).await;
    assert_eq!(delivered[0].recipients, ["b@example.org"]);
    assert!(
        start.elapsed() >= Duration::from_secs(5),
        "delivered at its retry time, not before ({:?})",
        start.elapsed()
    );
    nats.wait_empty(STREAM, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(tries.load(Ordering::SeqCst), 2, "one retry, once");
    drop(ingress);
}
