//! Delivery end to end: ingress → JetStream → delivery → a scripted MX, with per-recipient
//! outcomes, retries and RFC 3464 bounces.

#![allow(clippy::unwrap_used)] // a test that cannot set up may panic

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use postern_e2e::mx::RcptScript;
use postern_e2e::{ClosedPort, MockMx, ReplyExt, STREAM, Smtp, route_all, start_standalone};
use postern_smtp::body::is_clean;

const WAIT: Duration = Duration::from_secs(20);

fn fast_retries(c: &mut postern_config::Config) {
    c.delivery.retry.schedule = vec!["1s".parse().unwrap()];
}

#[tokio::test]
async fn delivers_each_message_once_to_the_route_host() {
    let mx = MockMx::accepting().await;
    let (nats, relay) = start_standalone(|c| c.delivery.routes = vec![route_all(&mx.host())]);
    let id = Smtp::submit(
        relay.smtp(),
        "a@example.com",
        &["b@example.org", "c@example.org"],
        b"Subject: hi\r\n\r\nHello.\r\n",
    )
    .await;
    let delivered = mx.wait_for(1, WAIT).await;
    assert_eq!(delivered[0].from, "a@example.com");
    assert_eq!(delivered[0].recipients, ["b@example.org", "c@example.org"]);
    let text = delivered[0].text();
    assert!(text.starts_with("Received: from client.test"), "{text}");
    assert!(text.contains(&format!(" id {id}")), "{text}");
    assert!(text.ends_with("\r\n\r\nHello.\r\n"), "{text}");
    nats.wait_empty(STREAM, WAIT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(mx.delivered().len(), 1, "delivered once");
    assert_eq!(
        relay.metric("postern_delivery_outcomes_total{result=\"delivered\"}"),
        2.0
    );
    assert_eq!(
        relay.metric("postern_delivery_tls_total{tls=\"none\"}"),
        2.0
    );
    assert_eq!(relay.metric("postern_nats_connected"), 1.0);
    assert_eq!(relay.metric("postern_nats_answering"), 1.0);
}

#[tokio::test]
async fn temporary_failure_is_retried_then_delivered() {
    let tries = Arc::new(AtomicUsize::new(0));
    let counter = tries.clone();
    let script: RcptScript = Arc::new(move |_| {
        if counter.fetch_add(1, Ordering::SeqCst) == 0 {
            "451 4.2.0 try later".into()
        } else {
            "250 2.1.5 ok".into()
        }
    });
    let mx = MockMx::start(script).await;
    let (nats, relay) = start_standalone(|c| {
        c.delivery.routes = vec![route_all(&mx.host())];
        fast_retries(c);
    });
    Smtp::submit(
        relay.smtp(),
        "a@example.com",
        &["b@example.org"],
        b"Subject: retry\r\n\r\nx\r\n",
    )
    .await;
    let delivered = mx.wait_for(1, WAIT).await;
    assert_eq!(delivered[0].recipients, ["b@example.org"]);
    assert_eq!(tries.load(Ordering::SeqCst), 2);
    nats.wait_empty(STREAM, WAIT).await;
    assert_eq!(
        relay.metric("postern_delivery_outcomes_total{result=\"deferred\"}"),
        1.0
    );
}

#[tokio::test]
async fn mixed_outcomes_deliver_retry_and_bounce_per_recipient() {
    let mx = MockMx::start(postern_e2e::mx::mixed_outcomes()).await;
    let (nats, relay) = start_standalone(|c| {
        c.delivery.routes = vec![route_all(&mx.host())];
        fast_retries(c);
    });
    let id = Smtp::submit(
        relay.smtp(),
        "sender@example.com",
        &["ok@example.org", "bad@example.org", "later@example.org"],
        b"Subject: mixed\r\nX-Tag: original\r\n\r\nsecret body\r\n",
    )
    .await;
    // First attempt delivers ok@, a bounce goes to the sender, later@ arrives on the retry.
    let delivered = mx.wait_for(3, WAIT).await;
    let to_ok = delivered
        .iter()
        .find(|d| d.recipients == ["ok@example.org"])
        .expect("ok@ delivered");
    assert_eq!(to_ok.from, "sender@example.com");
    assert!(
        delivered
            .iter()
            .any(|d| d.recipients == ["later@example.org"]),
        "later@ delivered on retry"
    );
    let bounce = delivered
        .iter()
        .find(|d| d.from.is_empty())
        .expect("a bounce from <>");
    assert_eq!(bounce.recipients, ["sender@example.com"]);
    let report = bounce.text();
    assert!(
        report.contains("Content-Type: multipart/report; report-type=delivery-status;"),
        "{report}"
    );
    assert!(
        report.contains(
            "Final-Recipient: rfc822; bad@example.org\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        ),
        "{report}"
    );
    assert!(
        report.contains("Diagnostic-Code: smtp; 550 5.1.1 no such user"),
        "{report}"
    );
    assert!(
        report.contains(&format!("X-Postern-Queue-ID: {id}")),
        "{report}"
    );
    assert!(
        report.contains("X-Tag: original"),
        "original headers attached"
    );
    assert!(!report.contains("secret body"), "but not the body");
    assert!(
        !report.contains("later@example.org"),
        "a retried recipient is not reported"
    );
    nats.wait_empty(STREAM, WAIT).await;
}

#[tokio::test]
async fn no_bounce_for_the_null_sender() {
    let mx = MockMx::start(Arc::new(|_| "550 5.1.1 no such user".into())).await;
    let (nats, relay) = start_standalone(|c| c.delivery.routes = vec![route_all(&mx.host())]);
    Smtp::submit(
        relay.smtp(),
        "",
        &["bad@example.org"],
        b"Subject: bounce of a bounce\r\n\r\nx\r\n",
    )
    .await;
    nats.wait_empty(STREAM, WAIT).await;
    assert!(
        relay
            .log()
            .contains("no report for a message from the null sender"),
        "{}",
        relay.log()
    );
    assert_eq!(mx.transactions(), 1, "nothing else was sent");
}

#[tokio::test]
async fn expiry_bounces_with_4_4_7() {
    let mx = MockMx::start(Arc::new(|rcpt| {
        if rcpt.starts_with("slow@") {
            "451 4.3.0 not today".into()
        } else {
            "250 2.1.5 ok".into()
        }
    }))
    .await;
    let (nats, relay) = start_standalone(|c| {
        c.delivery.routes = vec![route_all(&mx.host())];
        fast_retries(c);
        c.delivery.retry.max_age = "2s".parse().unwrap();
    });
    Smtp::submit(
        relay.smtp(),
        "sender@example.com",
        &["slow@example.org"],
        b"Subject: old\r\n\r\nx\r\n",
    )
    .await;
    let delivered = mx.wait_for(1, WAIT).await;
    let report = delivered[0].text();
    assert_eq!(delivered[0].from, "");
    assert!(
        report.contains(
            "Final-Recipient: rfc822; slow@example.org\r\nAction: failed\r\nStatus: 4.4.7\r\n"
        ),
        "{report}"
    );
    assert!(
        report.contains("Diagnostic-Code: smtp; 451 4.3.0 not today"),
        "{report}"
    );
    nats.wait_empty(STREAM, WAIT).await;
    assert!(relay.metric("postern_delivery_outcomes_total{result=\"expired\"}") >= 1.0);
}

#[tokio::test]
async fn unreachable_host_is_retried_until_it_answers() {
    let port = ClosedPort::new();
    let (nats, relay) = start_standalone(|c| {
        c.delivery.routes = vec![route_all(&format!("127.0.0.1:{}", port.port()))];
        fast_retries(c);
    });
    Smtp::submit(
        relay.smtp(),
        "a@example.com",
        &["b@example.org"],
        b"Subject: later\r\n\r\nx\r\n",
    )
    .await;
    let start = std::time::Instant::now();
    while relay.metric("postern_delivery_outcomes_total{result=\"deferred\"}") < 1.0 {
        assert!(
            start.elapsed() < WAIT,
            "no deferral recorded\n{}",
            relay.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mx = MockMx::start_on(port, Arc::new(|_| "250 2.1.5 ok".into()));
    let delivered = mx.wait_for(1, WAIT).await;
    assert_eq!(delivered[0].recipients, ["b@example.org"]);
    nats.wait_empty(STREAM, WAIT).await;
}

#[tokio::test]
async fn smuggling_attempts_reach_the_mx_as_one_clean_message() {
    let mx = MockMx::accepting().await;
    let (nats, relay) = start_standalone(|c| c.delivery.routes = vec![route_all(&mx.host())]);
    let fakes = postern_e2e::FAKE_TERMINATORS;
    for fake in fakes {
        let mut body = b"Subject: smuggle\r\n\r\nfirst".to_vec();
        body.extend_from_slice(fake);
        body.extend_from_slice(b"MAIL FROM:<admin@example.com>\r\nRCPT TO:<smuggled@evil.example>\r\nDATA\r\nsmuggled\r\n");
        Smtp::submit(
            relay.smtp(),
            "sender@example.com",
            &["rcpt@example.org"],
            &body,
        )
        .await;
    }
    let delivered = mx.wait_for(fakes.len(), WAIT).await;
    nats.wait_empty(STREAM, WAIT).await;
    assert_eq!(
        mx.transactions(),
        fakes.len(),
        "one transaction per message, none smuggled"
    );
    for message in &delivered {
        assert_eq!(message.from, "sender@example.com");
        assert_eq!(message.recipients, ["rcpt@example.org"]);
        assert!(
            is_clean(&message.wire),
            "bare CR/LF on the wire: {:?}",
            message.text()
        );
    }
}

#[tokio::test]
async fn smtputf8_message_to_a_server_without_it_bounces_5_6_7() {
    let mx = MockMx::accepting().await;
    mx.set_smtputf8(false);
    let (nats, relay) = start_standalone(|c| c.delivery.routes = vec![route_all(&mx.host())]);
    let mut s = Smtp::greeted(relay.smtp()).await;
    s.ehlo("client.test").await;
    s.cmd("MAIL FROM:<sender@example.com> SMTPUTF8")
        .await
        .is(250, "2.1.0");
    s.cmd("RCPT TO:<用户@example.org>").await.is(250, "2.1.5");
    s.cmd("DATA").await.is(354, "");
    s.send("Subject: ünïcödé\r\n\r\nx\r\n.\r\n".as_bytes())
        .await;
    s.reply().await.is(250, "2.0.0");
    let delivered = mx.wait_for(1, WAIT).await;
    assert_eq!(delivered.len(), 1, "only the bounce reaches the server");
    assert_eq!(delivered[0].from, "");
    // RFC 6533: a report about a UTF-8 address, returning UTF-8 header fields, uses the global
    // types, encoded so that it stays 7-bit.
    assert!(delivered[0].wire.is_ascii(), "{}", delivered[0].text());
    let (report_type, parts) = postern_e2e::report::parts(&delivered[0].wire);
    assert_eq!(report_type, "global-delivery-status");
    let types: Vec<&str> = parts.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        types,
        [
            "text/plain",
            "message/global-delivery-status",
            "message/global-headers"
        ]
    );
    assert!(
        parts[1].1.contains(
            "\r\nFinal-Recipient: utf-8; 用户@example.org\r\nAction: failed\r\nStatus: 5.6.7\r\n"
        ),
        "{}",
        parts[1].1
    );
    assert!(
        parts[2].1.contains("\r\nSubject: ünïcödé\r\n"),
        "{}",
        parts[2].1
    );
    nats.wait_empty(STREAM, WAIT).await;
}

#[tokio::test]
async fn a_stored_body_is_removed_when_its_last_entry_is_done() {
    let later = Arc::new(AtomicUsize::new(0));
    let counter = later.clone();
    let script: RcptScript = Arc::new(move |rcpt| {
        if rcpt.ends_with("@other.example") && counter.fetch_add(1, Ordering::SeqCst) == 0 {
            "451 4.2.0 later".into()
        } else {
            "250 2.1.5 ok".into()
        }
    });
    let mx = MockMx::start(script).await;
    let (nats, relay) = start_standalone(|c| {
        c.delivery.routes = vec![route_all(&mx.host())];
        fast_retries(c);
    });
    let body = format!(
        "Subject: large\r\n\r\n{}",
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\r\n".repeat(6000)
    );
    Smtp::submit(
        relay.smtp(),
        "a@example.com",
        &["b@example.org", "c@other.example"],
        body.as_bytes(),
    )
    .await;
    assert_eq!(
        nats.stored_bodies("POSTERN_BODIES").await,
        (1, 1),
        "a 400 KB body is stored once"
    );
    let delivered = mx.wait_for(2, WAIT).await;
    assert!(
        delivered
            .iter()
            .all(|d| d.text().ends_with(&body[body.len() - 200..]))
    );
    nats.wait_empty(STREAM, WAIT).await;
    let start = std::time::Instant::now();
    while nats.stored_bodies("POSTERN_BODIES").await != (0, 0) {
        assert!(
            start.elapsed() < WAIT,
            "body not removed: {:?}",
            nats.stored_bodies("POSTERN_BODIES").await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        later.load(Ordering::SeqCst),
        2,
        "other.example was retried once"
    );
}

#[tokio::test]
async fn connections_per_destination_are_capped() {
    let mx = MockMx::accepting().await;
    mx.set_data_delay(Duration::from_millis(100));
    let (nats, relay) = start_standalone(|c| {
        c.delivery.routes = vec![route_all(&mx.host())];
        c.delivery.connections_per_destination = 3;
    });
    let mut s = Smtp::greeted(relay.smtp()).await;
    s.ehlo("client.test").await;
    for i in 0..30 {
        s.send_mail(
            "a@example.com",
            &[&format!("r{i}@example.org")],
            b"Subject: cap\r\n\r\nx\r\n",
        )
        .await
        .is(250, "2.0.0");
    }
    mx.wait_for(30, WAIT).await;
    nats.wait_empty(STREAM, WAIT).await;
    assert_eq!(
        mx.max_sessions(),
        3,
        "never more than the cap, and the cap was reached"
    );
}

#[tokio::test]
async fn sessions_are_reused_up_to_the_message_cap() {
    let mx = MockMx::start(Arc::new(|rcpt| {
        if rcpt.starts_with("nobody@") {
            "550 5.1.1 no such user".into()
        } else {
            "250 2.1.5 ok".into()
        }
    }))
    .await;
    let (nats, relay) = start_standalone(|c| {
        c.delivery.routes = vec![route_all(&mx.host())];
        // The default for other destinations; example.org's own limit is 4.
        c.delivery.max_messages_per_connection = 100;
        c.delivery.destinations = vec![postern_config::DestinationLimits {
            pattern: "example.org".into(),
            connections: None,
            messages_per_connection: Some(4),
            rate: None,
            burst: None,
            tls: None,
        }];
    });
    let mut s = Smtp::greeted(relay.smtp()).await;
    s.ehlo("client.test").await;
    // One message at a time, each delivered before the next is sent.
    for i in 0..8 {
        let rcpt = if i == 1 {
            "nobody@example.org".to_string()
        } else {
            format!("r{i}@example.org")
        };
        s.send_mail("", &[&rcpt], b"Subject: reuse\r\n\r\nx\r\n")
            .await
            .is(250, "2.0.0");
        // Acknowledged means done, and the session is back in the pool by then.
        nats.wait_empty(STREAM, WAIT).await;
        assert_eq!(mx.transactions(), i + 1);
    }
    mx.wait_for(7, WAIT).await;
    nats.wait_empty(STREAM, WAIT).await;
    assert_eq!(mx.transactions(), 8);
    assert_eq!(
        mx.total_sessions(),
        2,
        "8 messages on sessions of at most 4"
    );
    // Another destination keeps the default: 5 messages on one more session.
    for i in 0..5 {
        s.send_mail(
            "",
            &[&format!("r{i}@other.example")],
            b"Subject: reuse\r\n\r\nx\r\n",
        )
        .await
        .is(250, "2.0.0");
        nats.wait_empty(STREAM, WAIT).await;
    }
    assert_eq!(mx.transactions(), 13);
    assert_eq!(mx.total_sessions(), 3);
}

#[tokio::test]
async fn opportunistic_tls_falls_back_to_plaintext_when_the_handshake_fails() {
    let mx = MockMx::accepting().await;
    mx.set_broken_starttls(true);
    let (nats, relay) = start_standalone(|c| c.delivery.routes = vec![route_all(&mx.host())]);
    Smtp::submit(
        relay.smtp(),
        "a@example.com",
        &["b@example.org"],
        b"Subject: fallback\r\n\r\nx\r\n",
    )
    .await;
    assert_eq!(mx.wait_for(1, WAIT).await[0].recipients, ["b@example.org"]);
    nats.wait_empty(STREAM, WAIT).await;
    assert!(
        relay
            .log()
            .contains("TLS handshake failed; retrying in plaintext"),
        "{}",
        relay.log()
    );
    assert_eq!(
        mx.total_sessions(),
        2,
        "the broken TLS session, then a plaintext one"
    );
}

#[tokio::test]
async fn opportunistic_tls_is_used_when_offered() {
    // A Postern ingress with a STARTTLS listener is the MX.
    let pki = postern_e2e::TestPki::new();
    let mx_nats = postern_e2e::NatsServer::start();
    let mut mx_config = postern_e2e::Relay::config(&mx_nats);
    mx_config.ingress.listeners = vec![postern_e2e::relay::listener(
        postern_config::ListenerTls::Starttls,
    )];
    mx_config.ingress.tls = Some(postern_config::TlsConfig {
        cert_file: pki.cert_file.clone(),
        key_file: pki.key_file.clone(),
    });
    let mx = postern_e2e::Relay::start(mx_config);
    let (_nats, relay) =
        start_standalone(|c| c.delivery.routes = vec![route_all(&mx.smtp().to_string())]);
    Smtp::submit(
        relay.smtp(),
        "a@example.com",
        &["b@example.org"],
        b"Subject: tls\r\n\r\nx\r\n",
    )
    .await;
    let start = std::time::Instant::now();
    let entry = loop {
        if let Some(entry) = mx_nats.entries(STREAM).await.pop() {
            break entry;
        }
        assert!(
            start.elapsed() < WAIT,
            "nothing reached the MX\n{}",
            relay.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let tls = entry.envelope.client.tls.clone().unwrap_or_default();
    assert!(
        tls.starts_with("TLSv1.3"),
        "delivered over TLS ({tls:?}) although the certificate is not trusted"
    );
    relay
        .wait_metric("postern_delivery_tls_total{tls=\"unverified\"}", 1.0, WAIT)
        .await;
}

#[tokio::test]
async fn mail_waiting_for_a_dead_destination_never_holds_back_mail_that_can_go() {
    let dead_attempts = Arc::new(AtomicUsize::new(0));
    let counter = dead_attempts.clone();
    let dead = MockMx::start(Arc::new(move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
        "451 4.3.0 down for the day".into()
    }))
    .await;
    let healthy = MockMx::accepting().await;
    let (nats, relay) = start_standalone(|c| {
        c.delivery.routes = vec![
            postern_config::Route {
                domain: "dead.example".into(),
                host: dead.host(),
                tls: postern_config::OutboundTls::Opportunistic,
            },
            route_all(&healthy.host()),
        ];
        c.delivery.retry.schedule = vec!["1h".parse().unwrap()];
        // Three times as many entries wait as the consumer may hand out unacknowledged.
        c.delivery.max_ack_pending = 20;
        c.delivery.concurrency = 10;
    });
    for i in 0..60 {
        Smtp::submit(
            relay.smtp(),
            "a@example.com",
            &[&format!("user{i}@dead.example")],
            b"Subject: waits\r\n\r\nLater.\r\n",
        )
        .await;
    }
    let start = std::time::Instant::now();
    while dead_attempts.load(Ordering::SeqCst) < 60 {
        assert!(
            start.elapsed() < WAIT,
            "only {} first attempts",
            dead_attempts.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Sixty retries wait an hour; a message to a healthy domain goes at once.
    Smtp::submit(
        relay.smtp(),
        "a@example.com",
        &["b@ok.example"],
        b"Subject: now\r\n\r\nNow.\r\n",
    )
    .await;
    let delivered = healthy.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(delivered[0].recipients, ["b@ok.example"]);

    // The waiting entries are in the stream, held by no worker and counted by no lag.
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let mut consumer: async_nats::jetstream::consumer::PullConsumer = js
        .get_stream(STREAM)
        .await
        .unwrap()
        .get_consumer("postern-delivery")
        .await
        .unwrap();
    let info = consumer.info().await.unwrap();
    assert_eq!((info.num_ack_pending, info.num_pending), (0, 0), "{info:?}");
    let waiting = nats.entries(STREAM).await;
    assert_eq!(waiting.len(), 60);
    assert!(
        waiting
            .iter()
            .all(|e| e.subject.starts_with("postern.queue.wait.dead_example.")),
        "{:?}",
        waiting.iter().map(|e| &e.subject).collect::<Vec<_>>()
    );
    assert_eq!(
        dead_attempts.load(Ordering::SeqCst),
        60,
        "no early second attempt"
    );
    // And /metrics tells them apart.
    postern_e2e::wait_until("the queue counts reported", Duration::from_secs(10), || {
        relay.metric("postern_queue_entries{state=\"waiting\"}") == 60.0
    })
    .await;
    assert_eq!(relay.metric("postern_queue_entries{state=\"ready\"}"), 0.0);
    assert_eq!(
        relay.metric("postern_queue_entries{state=\"in_flight\"}"),
        0.0
    );
}
