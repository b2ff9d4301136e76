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

#[tokio::test]
async fn a_destination_with_tls_verify_gets_mail_only_over_a_certificate_valid_for_its_mx() {
    let (dns, _bounces, port) = dns_with_sender_domain().await;
    // The MX is a Postern ingress with STARTTLS, its certificate valid for mx.good.example only.
    let pki = postern_e2e::TestPki::for_names(&["mx.good.example"]);
    let mx_nats = postern_e2e::NatsServer::start();
    let mut mx_config = postern_e2e::Relay::config(&mx_nats);
    mx_config.ingress.listeners = vec![postern_config::Listener {
        address: SocketAddr::from(([127, 0, 0, 1], port)),
        ..postern_e2e::relay::listener(postern_config::ListenerTls::Starttls)
    }];
    mx_config.ingress.tls = Some(postern_config::TlsConfig {
        cert_file: pki.cert_file.clone(),
        key_file: pki.key_file.clone(),
    });
    let _mx = postern_e2e::Relay::start(mx_config);
    dns.mx("verified.example", 10, "mx.good.example");
    dns.mx("mismatch.example", 10, "mx.other.example");
    dns.mx("plain.example", 10, "mx.other.example");
    dns.address("mx.good.example", ip("127.0.0.1"));
    dns.address("mx.other.example", ip("127.0.0.1"));
    let ca = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca.path(), &pki.ca_pem).unwrap();
    let (dns_addr, ca_file) = (dns.addr, ca.path().to_path_buf());
    let verify = |pattern: &str| postern_config::DestinationLimits {
        pattern: pattern.into(),
        connections: None,
        messages_per_connection: None,
        rate: None,
        burst: None,
        tls: Some(postern_config::OutboundTls::Verify),
    };
    let destinations = vec![verify("verified.example"), verify("mismatch.example")];
    let (nats, relay) = start_standalone(move |c| {
        c.delivery.dns.nameservers = vec![dns_addr];
        c.delivery.mx_port = port;
        c.delivery.retry.schedule = vec!["1s".parse().unwrap()];
        c.delivery.ca_file = Some(ca_file);
        c.delivery.destinations = destinations;
    });
    send(&relay, "a@verified.example").await;
    send(&relay, "b@mismatch.example").await;
    send(&relay, "c@plain.example").await;
    let start = std::time::Instant::now();
    let arrived = loop {
        let entries = mx_nats.entries(STREAM).await;
        if entries.len() >= 2 {
            break entries;
        }
        assert!(start.elapsed() < WAIT, "not delivered\n{}", relay.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut domains: Vec<&str> = arrived.iter().map(|e| e.envelope.domain.as_str()).collect();
    domains.sort_unstable();
    assert_eq!(
        domains,
        ["plain.example", "verified.example"],
        "opportunistic TLS takes any certificate; verify takes a valid one"
    );
    assert!(
        arrived.iter().all(|e| e.envelope.client.tls.is_some()),
        "both over TLS"
    );
    // mismatch.example waits: the certificate does not name mx.other.example.
    while relay.metric("postern_delivery_outcomes_total{result=\"deferred\"}") < 2.0 {
        assert!(start.elapsed() < WAIT, "no deferrals\n{}", relay.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(mx_nats.entries(STREAM).await.len(), 2);
    let waiting = nats.entries(STREAM).await;
    assert!(
        waiting
            .iter()
            .all(|e| e.envelope.domain == "mismatch.example"),
        "{:?}",
        waiting
            .iter()
            .map(|e| &e.envelope.domain)
            .collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_blocked_port_25_and_a_localhost_name_are_warned_about_at_start() {
    let dns = DnsServer::start().await;
    dns.mx("probe.test", 10, "mx.probe.test");
    dns.address("mx.probe.test", ip("127.0.0.1"));
    // Blocked: nothing listens on the MX port.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    let (_nats, relay) = start_standalone(|c| {
        c.hostname = "localhost".into();
        c.delivery.dns.nameservers = vec![dns.addr];
        c.delivery.mx_port = closed_port;
        c.delivery.egress_probe = "probe.test".into();
    });
    postern_e2e::wait_until("the egress warning", WAIT, || {
        relay.log().contains("outbound SMTP on port")
    })
    .await;
    let log = relay.log();
    assert!(
        log.contains(&format!(
            "outbound SMTP on port {closed_port} looks blocked"
        )) && log.contains("mx.probe.test (127.0.0.1:"),
        "{log}"
    );
    assert!(
        log.contains("MX hosts are greeted as \"localhost\"") && log.contains("hostname"),
        "{log}"
    );

    // Open, under a real name: no warning.
    let mx = MockMx::accepting().await;
    let (_nats, relay) = start_standalone(|c| {
        c.hostname = "relay.example.net".into();
        c.delivery.dns.nameservers = vec![dns.addr];
        c.delivery.mx_port = mx.addr.port();
        c.delivery.egress_probe = "probe.test".into();
    });
    postern_e2e::wait_until("the egress check", WAIT, || {
        relay.log().contains("outbound SMTP works")
    })
    .await;
    let log = relay.log();
    assert!(!log.contains("looks blocked"), "{log}");
    assert!(!log.contains("MX hosts are greeted as"), "{log}");
}
