//! MX lookup with a real resolver against a DNS server on loopback: preference order, next
//! host on connection failure, implicit MX, null MX, NXDOMAIN and SERVFAIL.

#![allow(clippy::unwrap_used)] // a test that cannot set up may panic

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use postern_e2e::{DnsServer, MockMx, STREAM, Smtp, start_standalone};

const WAIT: Duration = Duration::from_secs(20);

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// DNS with the sender's domain pointing at `bounces` on 127.0.0.9, and the port it got, on
/// which every MX of the test listens (each on its own loopback address).
async fn dns_with_sender_domain() -> (DnsServer, MockMx, u16) {
    let dns = DnsServer::start().await;
    let bounces = MockMx::start_at(
        SocketAddr::from(([127, 0, 0, 9], 0)),
        Arc::new(|_| "250 ok".into()),
    )
    .await;
    dns.mx("example.com", 10, "mx.example.com");
    dns.address("mx.example.com", ip("127.0.0.9"));
    let port = bounces.addr.port();
    (dns, bounces, port)
}

fn relay_using(dns: &DnsServer, port: u16) -> (postern_e2e::NatsServer, postern_e2e::Relay) {
    let dns_addr = dns.addr;
    start_standalone(move |c| {
        c.delivery.dns.nameservers = vec![dns_addr];
        c.delivery.mx_port = port;
        c.delivery.retry.schedule = vec!["1s".parse().unwrap()];
    })
}

async fn send(relay: &postern_e2e::Relay, to: &str) {
    Smtp::submit(
        relay.smtp(),
        "sender@example.com",
        &[to],
        b"Subject: mx\r\n\r\nx\r\n",
    )
    .await;
}

#[tokio::test]
async fn preferred_mx_gets_the_message_and_a_refusing_one_is_skipped() {
    let (dns, _bounces, port) = dns_with_sender_domain().await;
    let primary = MockMx::start_at(
        SocketAddr::from(([127, 0, 0, 8], port)),
        Arc::new(|_| "250 ok".into()),
    )
    .await;
    let backup = MockMx::start_at(
        SocketAddr::from(([127, 0, 0, 3], port)),
        Arc::new(|_| "250 ok".into()),
    )
    .await;
    dns.mx("example.org", 10, "mx1.example.org");
    dns.mx("example.org", 20, "mx2.example.org");
    dns.address("mx1.example.org", ip("127.0.0.8"));
    dns.address("mx2.example.org", ip("127.0.0.3"));
    // For example.net the preferred host refuses connections (nothing listens on 127.0.0.2).
    dns.mx("example.net", 5, "dead.example.net");
    dns.mx("example.net", 50, "mx2.example.org");
    dns.address("dead.example.net", ip("127.0.0.2"));
    let (nats, relay) = relay_using(&dns, port);

    send(&relay, "a@example.org").await;
    let delivered = primary.wait_for(1, WAIT).await;
    assert_eq!(delivered[0].recipients, ["a@example.org"]);
    send(&relay, "b@example.net").await;
    let delivered = backup.wait_for(1, WAIT).await;
    assert_eq!(delivered[0].recipients, ["b@example.net"]);
    nats.wait_empty(STREAM, WAIT).await;
    assert_eq!(
        (primary.delivered().len(), backup.delivered().len()),
        (1, 1)
    );
    assert!(relay.log().contains("trying the next MX host"));
}

#[tokio::test]
async fn implicit_mx_uses_the_domain_address() {
    let (dns, _bounces, port) = dns_with_sender_domain().await;
    let mx = MockMx::start_at(
        SocketAddr::from(([127, 0, 0, 4], port)),
        Arc::new(|_| "250 ok".into()),
    )
    .await;
    dns.address("plain.example", ip("127.0.0.4"));
    let (nats, relay) = relay_using(&dns, port);
    send(&relay, "c@plain.example").await;
    assert_eq!(
        mx.wait_for(1, WAIT).await[0].recipients,
        ["c@plain.example"]
    );
    nats.wait_empty(STREAM, WAIT).await;
}

#[tokio::test]
async fn null_mx_and_nxdomain_bounce_with_their_status() {
    let (dns, bounces, port) = dns_with_sender_domain().await;
    dns.mx("nomail.example", 0, ".");
    let (nats, relay) = relay_using(&dns, port);
    send(&relay, "d@nomail.example").await;
    send(&relay, "e@missing.example").await;
    let reports: Vec<String> = bounces
        .wait_for(2, WAIT)
        .await
        .iter()
        .map(|d| d.text())
        .collect();
    let null = reports
        .iter()
        .find(|r| r.contains("d@nomail.example"))
        .unwrap();
    assert!(
        null.contains(
            "Final-Recipient: rfc822; d@nomail.example\r\nAction: failed\r\nStatus: 5.1.10\r\n"
        ),
        "{null}"
    );
    let missing = reports
        .iter()
        .find(|r| r.contains("e@missing.example"))
        .unwrap();
    assert!(
        missing.contains(
            "Final-Recipient: rfc822; e@missing.example\r\nAction: failed\r\nStatus: 5.1.2\r\n"
        ),
        "{missing}"
    );
    nats.wait_empty(STREAM, WAIT).await;
}

#[tokio::test]
async fn servfail_defers_until_dns_answers() {
    let (dns, _bounces, port) = dns_with_sender_domain().await;
    dns.servfail("flaky.example");
    let (nats, relay) = relay_using(&dns, port);
    send(&relay, "f@flaky.example").await;
    let start = std::time::Instant::now();
    while relay.metric("postern_delivery_outcomes_total{result=\"deferred\"}") < 1.0 {
        assert!(start.elapsed() < WAIT, "not deferred\n{}", relay.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        relay.log().contains("4.4.3 MX lookup failed"),
        "{}",
        relay.log()
    );
    let mx = MockMx::start_at(
        SocketAddr::from(([127, 0, 0, 5], port)),
        Arc::new(|_| "250 ok".into()),
    )
    .await;
    dns.clear_servfail("flaky.example");
    dns.mx("flaky.example", 10, "mx.flaky.example");
    dns.address("mx.flaky.example", ip("127.0.0.5"));
    assert_eq!(
        mx.wait_for(1, WAIT).await[0].recipients,
        ["f@flaky.example"]
    );
    nats.wait_empty(STREAM, WAIT).await;
}

#[tokio::test]
async fn a_4xx_greeting_passes_the_attempt_to_the_next_mx() {
    let (dns, _bounces, port) = dns_with_sender_domain().await;
    let busy = MockMx::start_at(
        SocketAddr::from(([127, 0, 0, 6], port)),
        Arc::new(|_| "250 ok".into()),
    )
    .await;
    busy.set_greeting("421 4.3.2 too busy, try another");
    let spare = MockMx::start_at(
        SocketAddr::from(([127, 0, 0, 7], port)),
        Arc::new(|_| "250 ok".into()),
    )
    .await;
    dns.mx("busy.example", 10, "mx1.busy.example");
    dns.mx("busy.example", 20, "mx2.busy.example");
    dns.address("mx1.busy.example", ip("127.0.0.6"));
    dns.address("mx2.busy.example", ip("127.0.0.7"));
    let (nats, relay) = relay_using(&dns, port);
    send(&relay, "g@busy.example").await;
    assert_eq!(
        spare.wait_for(1, WAIT).await[0].recipients,
        ["g@busy.example"]
    );
    assert_eq!(busy.total_sessions(), 1, "the busy MX was tried first");
    assert!(busy.delivered().is_empty());
    nats.wait_empty(STREAM, WAIT).await;
}
