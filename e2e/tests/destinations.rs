//! Destinations as a whole, across delivery processes: a slow one cannot hold back a healthy
//! one, a dead one backs off for every process, limits hold for all processes together, and a
//! request to slow down is heeded.

#![allow(clippy::unwrap_used)] // a test that cannot set up may panic

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use postern_config::{Config, DestinationLimits, OutboundTls, Route};
use postern_e2e::{MockMx, NatsServer, Relay, STREAM, Smtp, route_all, start_standalone};

fn route(domain: &str, mx: &MockMx) -> Route {
    Route {
        domain: domain.into(),
        host: mx.host(),
        tls: OutboundTls::None,
    }
}

fn limits(pattern: &str) -> DestinationLimits {
    DestinationLimits {
        pattern: pattern.into(),
        connections: None,
        messages_per_connection: None,
        rate: None,
        burst: None,
        tls: None,
    }
}

/// A `postern delivery` process for `nats`, configured by `tweak`.
fn delivery(nats: &NatsServer, tweak: impl Fn(&mut Config)) -> Relay {
    let mut config = Relay::config(nats);
    tweak(&mut config);
    let relay = Relay::spawn(&["delivery"], config);
    relay.wait_ready(Duration::from_secs(20));
    relay
}

async fn send(relay: &Relay, count: usize, domain: &str) {
    for i in 0..count {
        Smtp::submit(
            relay.smtp(),
            "a@example.com",
            &[&format!("user{i}@{domain}")],
            format!("Subject: {domain} {i}\r\n\r\nHello.\r\n").as_bytes(),
        )
        .await;
    }
}

/// The states in the destination bucket, as JSON.
async fn destination_states(nats: &NatsServer) -> Vec<serde_json::Value> {
    use futures::StreamExt;
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let kv = js
        .get_key_value(format!("{STREAM}_DESTINATIONS"))
        .await
        .unwrap();
    let mut keys = kv.keys().await.unwrap();
    let mut states = Vec::new();
    while let Some(Ok(key)) = keys.next().await {
        if key.starts_with("state.")
            && let Ok(Some(value)) = kv.get(&key).await
        {
            states.push(serde_json::from_slice(&value).unwrap());
        }
    }
    states
}

#[tokio::test]
async fn a_destination_that_takes_30_s_per_message_cannot_slow_a_healthy_one() {
    let slow = MockMx::accepting().await;
    slow.set_data_delay(Duration::from_secs(30));
    let healthy = MockMx::accepting().await;
    let (_nats, relay) = start_standalone(|c| {
        c.delivery.routes = vec![route("slow.example", &slow), route_all(&healthy.host())];
        c.delivery.concurrency = 4;
        c.delivery.connections_per_destination = 2;
    });
    send(&relay, 12, "slow.example").await;
    // Both of the slow destination's connections are taken, and its other entries wait.
    postern_e2e::wait_until("two slow sessions", Duration::from_secs(10), || {
        slow.delivered().len() == 2
    })
    .await;
    let started = Instant::now();
    send(&relay, 10, "ok.example").await;
    healthy.wait_for(10, Duration::from_secs(10)).await;
    println!("10 healthy messages delivered in {:?}", started.elapsed());
    assert!(
        slow.max_sessions() <= 2,
        "{} sessions to the slow destination",
        slow.max_sessions()
    );
    assert_eq!(
        slow.delivered().len(),
        2,
        "the slow destination's limit held"
    );
}

#[tokio::test]
async fn a_dead_destination_backs_off_for_every_process_and_one_delivery_clears_it() {
    let nats = NatsServer::start();
    let dead = MockMx::accepting().await;
    dead.set_greeting("421 4.3.2 Service not available, closing channel");
    let tweak = |c: &mut Config| {
        c.delivery.routes = vec![route_all(&dead.host())];
        c.delivery.retry.schedule = vec!["1s".parse().unwrap()];
        c.delivery.connections_per_destination = 2;
        c.delivery.backoff.after_failures = 2;
        c.delivery.backoff.initial = "3s".parse().unwrap();
        c.delivery.backoff.max = "4s".parse().unwrap();
    };
    let ingress = Relay::start(Relay::config(&nats));
    let a = delivery(&nats, tweak);
    let b = delivery(&nats, tweak);
    send(&ingress, 20, "dead.example").await;

    // Retried every second for 8 s, 20 entries would open well over 100 sessions; backed off,
    // the destination sees the failures that started the backoff and a probe after each one.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let sessions = dead.total_sessions();
    println!("{sessions} sessions to the dead destination in 8 s");
    assert!(sessions <= 14, "{sessions} sessions to a dead destination");
    let states = destination_states(&nats).await;
    assert_eq!(states.len(), 1, "{states:?}");
    assert_eq!(states[0]["name"], dead.host());
    assert!(states[0]["failures"].as_u64().unwrap() >= 2, "{states:?}");
    let postponed = a.metric("postern_delivery_postponed_total{reason=\"backoff\"}")
        + b.metric("postern_delivery_postponed_total{reason=\"backoff\"}");
    assert!(
        postponed >= 20.0,
        "{postponed} entries postponed for the backoff"
    );
    assert_eq!(
        nats.entries(STREAM).await.len(),
        20,
        "no entry lost while waiting"
    );

    // The destination comes back: the next probe gets through, and every process delivers again.
    dead.set_greeting("220 mx.test ESMTP back");
    let delivered = dead.wait_for(20, Duration::from_secs(30)).await;
    let mut recipients: Vec<String> = delivered
        .iter()
        .flat_map(|d| d.recipients.clone())
        .collect();
    recipients.sort();
    recipients.dedup();
    assert_eq!(recipients.len(), 20, "each message once");
    nats.wait_empty(STREAM, Duration::from_secs(20)).await;
    postern_e2e::wait_until("the backoff cleared", Duration::from_secs(5), || {
        a.metric("postern_delivery_destinations_in_backoff") == 0.0
            && b.metric("postern_delivery_destinations_in_backoff") == 0.0
    })
    .await;
    let states = destination_states(&nats).await;
    assert_eq!(states[0]["failures"], 0, "{states:?}");
    assert!(states[0].get("backoffUntilMs").is_none(), "{states:?}");
}

#[tokio::test]
async fn connection_and_rate_limits_hold_across_three_processes() {
    let nats = NatsServer::start();
    let mx = MockMx::accepting().await;
    mx.set_data_delay(Duration::from_millis(300));
    let tweak = |c: &mut Config| {
        c.delivery.routes = vec![route_all(&mx.host())];
        c.delivery.timeouts.idle = "1s".parse().unwrap();
        c.delivery.destinations = vec![
            DestinationLimits {
                connections: Some(2),
                ..limits("few.example")
            },
            DestinationLimits {
                rate: Some("10/s".parse().unwrap()),
                ..limits("rated.example")
            },
        ];
    };
    let ingress = Relay::start(Relay::config(&nats));
    let processes: Vec<Relay> = (0..3).map(|_| delivery(&nats, tweak)).collect();

    send(&ingress, 24, "few.example").await;
    mx.wait_for(24, Duration::from_secs(60)).await;
    println!("at most {} sessions open at once", mx.max_sessions());
    assert!(mx.max_sessions() <= 2, "{} sessions", mx.max_sessions());
    nats.wait_empty(STREAM, Duration::from_secs(20)).await;

    let before = mx.delivered().len();
    send(&ingress, 40, "rated.example").await;
    let delivered = mx.wait_for(before + 40, Duration::from_secs(60)).await;
    let mut times: Vec<Instant> = delivered[before..].iter().map(|d| d.at).collect();
    times.sort();
    // Ten per second across the run, within 10 %; and within 10 % in any 3 s.
    let most_in_three_seconds = times
        .iter()
        .map(|start| {
            times
                .iter()
                .filter(|t| **t >= *start && t.duration_since(*start) < Duration::from_secs(3))
                .count()
        })
        .max()
        .unwrap();
    let span = times[times.len() - 1].duration_since(times[0]);
    let rate = (times.len() - 1) as f64 / span.as_secs_f64();
    println!(
        "40 messages at 10/s across 3 processes: {rate:.2}/s over {span:?}, at most {most_in_three_seconds} in 3 s"
    );
    assert!(
        (9.0..=11.0).contains(&rate),
        "{rate:.2} messages per second"
    );
    assert!(
        most_in_three_seconds <= 33,
        "{most_in_three_seconds} in 3 s"
    );
    let busy: f64 = processes
        .iter()
        .map(|p| p.metric("postern_delivery_outcomes_total{result=\"delivered\"}"))
        .filter(|n| *n > 0.0)
        .count() as f64;
    assert!(busy >= 2.0, "the work was shared");
}

#[tokio::test]
async fn a_request_to_slow_down_lowers_the_destination_s_limits() {
    let asked = Arc::new(AtomicUsize::new(0));
    let counter = asked.clone();
    let mx = MockMx::start(Arc::new(move |_| {
        if counter.fetch_add(1, Ordering::SeqCst) == 0 {
            "451 4.7.650 The mail server has been temporarily rate limited".into()
        } else {
            "250 2.1.5 ok".into()
        }
    }))
    .await;
    let (nats, relay) = start_standalone(|c| {
        c.delivery.routes = vec![route_all(&mx.host())];
        c.delivery.retry.schedule = vec!["1s".parse().unwrap()];
    });
    send(&relay, 1, "throttled.example").await;
    mx.wait_for(1, Duration::from_secs(20)).await;
    assert_eq!(
        asked.load(Ordering::SeqCst),
        2,
        "deferred once, then delivered"
    );
    assert_eq!(
        relay.metric("postern_delivery_destination_slowdowns_total"),
        1.0
    );
    let states = destination_states(&nats).await;
    assert_eq!(states[0]["slowDown"], 1, "{states:?}");
    assert!(
        states[0]["lastFailure"]
            .as_str()
            .unwrap()
            .contains("rate limited"),
        "{states:?}"
    );
    assert!(relay.log().contains("asked to slow down"));
}

#[tokio::test]
async fn a_killed_process_s_connection_comes_back_to_the_others_when_its_lease_expires() {
    let nats = NatsServer::start();
    let mx = MockMx::accepting().await;
    // The first message's end of data is answered only after a minute: its process holds the
    // destination's one connection all that time.
    mx.set_data_delay(Duration::from_secs(60));
    let tweak = |c: &mut Config| {
        c.delivery.routes = vec![route_all(&mx.host())];
        c.delivery.ack_wait = "2s".parse().unwrap();
        c.delivery.destinations = vec![DestinationLimits {
            connections: Some(1),
            ..limits("one.example")
        }];
    };
    let ingress = Relay::start(Relay::config(&nats));
    let mut first = delivery(&nats, tweak);
    send(&ingress, 1, "one.example").await;
    postern_e2e::wait_until("the first session", Duration::from_secs(10), || {
        mx.delivered().len() == 1
    })
    .await;
    let second = delivery(&nats, tweak);
    first.kill();
    mx.set_data_delay(Duration::ZERO);
    let killed = Instant::now();
    Smtp::submit(
        ingress.smtp(),
        "a@example.com",
        &["second@one.example"],
        b"Subject: second\r\n\r\nHello.\r\n",
    )
    .await;
    // The dead process's lease still counts: nobody connects until it expires (10 to 15 s
    // after the kill: it was renewed every 5 s and lives 15 s).
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        mx.total_sessions(),
        1,
        "the limit of one held after the kill"
    );
    // Then the other process has it, and delivers both (the killed one's entry came back). The
    // entry that found no connection meanwhile went back to the queue for 0.25 s, 0.5 s, 1 s …
    // (doubling, with jitter up to half again), so it may come back some 30 s after the kill.
    let delivered = mx.wait_for(3, Duration::from_secs(60)).await;
    println!("connection back {:?} after the kill", killed.elapsed());
    let mut recipients: Vec<String> = delivered
        .iter()
        .flat_map(|d| d.recipients.clone())
        .collect();
    recipients.sort();
    recipients.dedup();
    assert_eq!(
        recipients,
        ["second@one.example", "user0@one.example"],
        "both messages"
    );
    assert!(second.metric("postern_delivery_outcomes_total{result=\"delivered\"}") >= 2.0);
}
