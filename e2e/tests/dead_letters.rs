//! Entries no worker can settle move to the dead-letter stream with the reason, instead of
//! coming back forever.

#![allow(clippy::unwrap_used)] // a test that cannot set up may panic

use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use postern_e2e::{MockMx, NatsServer, Relay, STREAM, Smtp, route_all};

const DEAD: &str = "POSTERN_QUEUE_DEAD";

fn delivery(nats: &NatsServer, mx: &MockMx) -> Relay {
    let mut config = Relay::config(nats);
    config.delivery.routes = vec![route_all(&mx.host())];
    config.delivery.max_deliveries = 3;
    let relay = Relay::spawn(&["delivery"], config);
    relay.wait_ready(Duration::from_secs(20));
    relay
}

/// The dead letters: (reason, original subject) of each.
async fn dead_letters(nats: &NatsServer, want: usize) -> Vec<(String, String)> {
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let start = std::time::Instant::now();
    loop {
        if let Ok(mut stream) = js.get_stream(DEAD).await
            && stream.info().await.unwrap().state.messages as usize >= want
        {
            let mut letters = Vec::new();
            for seq in 1..=stream.info().await.unwrap().state.last_sequence {
                let message = stream.get_raw_message(seq).await.unwrap();
                let header = |name: &str| {
                    message
                        .headers
                        .get(name)
                        .map(|v| v.to_string())
                        .unwrap_or_default()
                };
                letters.push((
                    header("Postern-Dead-Reason"),
                    header("Postern-Dead-Subject"),
                ));
            }
            return letters;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "no dead letter");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn an_undecodable_entry_becomes_a_dead_letter_not_a_loop() {
    let nats = NatsServer::start();
    let mx = MockMx::accepting().await;
    let ingress = Relay::start(Relay::config(&nats));
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    js.publish("postern.queue.example_org", "not an entry".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let worker = delivery(&nats, &mx);
    let letters = dead_letters(&nats, 1).await;
    assert_eq!(letters.len(), 1);
    assert!(letters[0].0.starts_with("undecodable entry"), "{letters:?}");
    assert_eq!(letters[0].1, "postern.queue.example_org");
    nats.wait_empty(STREAM, Duration::from_secs(10)).await;
    assert_eq!(
        worker.metric("postern_delivery_dead_letters_total{reason=\"undecodable\"}"),
        1.0
    );
    drop(ingress);
}

/// Submits one message from `sender`, then takes it from the queue three times and gives it
/// back, as three workers that died before settling it would.
async fn handed_out_three_times(nats: &NatsServer, ingress: &Relay, sender: &str) {
    Smtp::submit(
        ingress.smtp(),
        sender,
        &["b@example.org"],
        b"Subject: stuck\r\n\r\nx\r\n",
    )
    .await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = jetstream::new(client.clone());
    let stream = js.get_stream(STREAM).await.unwrap();
    let consumer: jetstream::consumer::PullConsumer = stream
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some("postern-delivery".into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            filter_subject: "postern.queue.*".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    for _ in 0..3 {
        let mut batch = consumer
            .fetch()
            .max_messages(1)
            .expires(Duration::from_secs(2))
            .messages()
            .await
            .unwrap();
        let message = batch.next().await.unwrap().unwrap();
        message
            .ack_with(jetstream::AckKind::Nak(None))
            .await
            .unwrap();
    }
    // The NAKs are out before this connection goes.
    client.flush().await.unwrap();
}

#[tokio::test]
async fn an_entry_handed_out_too_often_without_an_outcome_is_bounced_to_its_sender() {
    let nats = NatsServer::start();
    let mx = MockMx::accepting().await;
    let ingress = Relay::start(Relay::config(&nats));
    handed_out_three_times(&nats, &ingress, "a@example.com").await;
    // The fourth time it is not attempted: its sender is told, and nothing loops.
    let worker = delivery(&nats, &mx);
    let delivered = mx.wait_for(1, Duration::from_secs(20)).await;
    assert_eq!(
        delivered[0].recipients,
        ["a@example.com"],
        "only the bounce"
    );
    let report = delivered[0].text();
    assert!(report.contains("Status: 5.3.0"), "{report}");
    assert!(
        report.contains("handed to workers 4 times without an outcome"),
        "{report}"
    );
    assert!(report.contains("Subject: stuck"), "{report}");
    nats.wait_empty(STREAM, Duration::from_secs(10)).await;
    assert_eq!(mx.delivered().len(), 1);
    assert_eq!(worker.metric("postern_delivery_given_up_total"), 1.0);
    assert_eq!(
        worker.metric("postern_delivery_dead_letters_total{reason=\"no_outcome\"}"),
        0.0
    );
}

#[tokio::test]
async fn a_bounce_handed_out_too_often_becomes_a_dead_letter() {
    let nats = NatsServer::start();
    let mx = MockMx::accepting().await;
    let ingress = Relay::start(Relay::config(&nats));
    handed_out_three_times(&nats, &ingress, "").await;
    // From the null sender there is nobody to tell: it is set aside, with the reason.
    let worker = delivery(&nats, &mx);
    let letters = dead_letters(&nats, 1).await;
    assert_eq!(
        letters[0].0, "handed to workers 4 times without an outcome",
        "{letters:?}"
    );
    nats.wait_empty(STREAM, Duration::from_secs(10)).await;
    assert!(mx.delivered().is_empty());
    assert_eq!(
        worker.metric("postern_delivery_dead_letters_total{reason=\"no_outcome\"}"),
        1.0
    );
}
