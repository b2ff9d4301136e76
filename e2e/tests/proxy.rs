//! Listeners behind a load balancer: the PROXY protocol header names the client, and relay
//! policy, the per-address cap, the queue entry and `Received:` use that address.

#![allow(clippy::unwrap_used)] // a test that cannot set up may panic

use std::net::SocketAddr;

use postern_config::{Config, ListenerTls, TlsConfig};
use postern_e2e::relay::listener;
use postern_e2e::{NatsServer, Relay, ReplyExt, STREAM, Smtp, TestPki};
use postern_smtp::proxy::{v1_header, v2_header};

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

/// A relay whose listeners expect PROXY headers and that lets only 10.0.0.0/8 relay.
fn start(tweak: impl FnOnce(&mut Config)) -> (NatsServer, Relay) {
    let nats = NatsServer::start();
    let mut config = Relay::config(&nats);
    let mut plain = listener(ListenerTls::None);
    plain.proxy_protocol = true;
    config.ingress.listeners = vec![plain];
    config.ingress.allowed_networks = vec!["10.0.0.0/8".parse().unwrap()];
    tweak(&mut config);
    let relay = Relay::start(config);
    (nats, relay)
}

async fn proxied(relay: &Relay, header: &[u8]) -> Smtp {
    let mut s = Smtp::connect(relay.smtp()).await;
    s.send(header).await;
    s.reply().await.is(220, "");
    s
}

#[tokio::test]
async fn the_header_names_the_client_for_relay_policy_the_queue_and_received() {
    let (nats, relay) = start(|_| {});
    let server = relay.smtp();

    // A client in an allowed network, seen through the load balancer (v1).
    let mut s = proxied(&relay, &v1_header(addr("10.9.8.7:40001"), server)).await;
    s.ehlo("app.internal").await;
    let id = s
        .send_mail(
            "app@example.com",
            &["someone@example.org"],
            b"Subject: hi\r\n\r\nhello\r\n",
        )
        .await
        .is(250, "2.0.0")
        .queue_id();
    s.cmd("QUIT").await.is(221, "2.0.0");
    let entries = nats.entries(STREAM).await;
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].envelope.client.address, "10.9.8.7");
    let text = entries[0].text();
    assert!(text.contains("[10.9.8.7]") && text.contains(&id), "{text}");

    // A client elsewhere (v2): the load balancer's own address does not make it local.
    let mut s = proxied(&relay, &v2_header(addr("198.51.100.7:5000"), server)).await;
    s.ehlo("stranger.example").await;
    s.cmd("MAIL FROM:<x@example.com>").await.is(250, "2.1.0");
    s.cmd("RCPT TO:<someone@example.org>")
        .await
        .is(554, "5.7.1");
}

#[tokio::test]
async fn connections_without_a_valid_header_are_closed_without_a_greeting() {
    let (_nats, relay) = start(|_| {});
    for start in [
        &b"EHLO client.example\r\n"[..],
        b"PROXY TCP4 10.0.0.1\r\nEHLO x\r\n",
        b"PROXY TCP4 10.0.0.1 10.0.0.2 1 25\n\n\n\n\n",
    ] {
        let mut s = Smtp::connect(relay.smtp()).await;
        s.send(start).await;
        assert!(
            s.try_reply().await.is_none(),
            "{}",
            String::from_utf8_lossy(start)
        );
    }
    // The harness's readiness probe also connected without a header, but sent nothing: a
    // health check, not counted.
    assert_eq!(
        relay.metric("postern_ingress_connections_refused_total{cap=\"proxy_header\"}"),
        3.0
    );
    // A LOCAL header (a health check) keeps the connection's own address: loopback, not allowed.
    let mut local = postern_smtp::proxy::V2_SIGNATURE.to_vec();
    local.extend([0x20, 0x00, 0x00, 0x00]);
    let mut s = proxied(&relay, &local).await;
    s.ehlo("probe").await;
    s.cmd("MAIL FROM:<x@example.com>").await.is(250, "2.1.0");
    s.cmd("RCPT TO:<someone@example.org>")
        .await
        .is(554, "5.7.1");
}

#[tokio::test]
async fn only_trusted_proxies_may_send_headers() {
    let (_nats, relay) =
        start(|c| c.ingress.trusted_proxies = vec!["192.0.2.0/24".parse().unwrap()]);
    let refused = |relay: &Relay| {
        relay.metric("postern_ingress_connections_refused_total{cap=\"proxy_untrusted\"}")
    };
    assert_eq!(refused(&relay), 0.0);
    let mut s = Smtp::connect(relay.smtp()).await;
    s.send(&v1_header(addr("10.9.8.7:1"), relay.smtp())).await;
    assert!(s.try_reply().await.is_none());
    assert_eq!(refused(&relay), 1.0);

    let (_nats, relay) =
        start(|c| c.ingress.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()]);
    proxied(&relay, &v1_header(addr("10.9.8.7:1"), relay.smtp())).await;
}

#[tokio::test]
async fn the_per_address_cap_counts_clients_not_the_load_balancer() {
    let (_nats, relay) = start(|c| c.ingress.limits.max_connections_per_ip = 1);
    let server = relay.smtp();
    let _a = proxied(&relay, &v1_header(addr("10.0.0.1:1"), server)).await;
    let _b = proxied(&relay, &v1_header(addr("10.0.0.2:1"), server)).await;
    let mut c = Smtp::connect(server).await;
    c.send(&v1_header(addr("10.0.0.1:2"), server)).await;
    c.reply().await.is(421, "4.7.0");
}

#[tokio::test]
async fn implicit_tls_behind_a_load_balancer() {
    let pki = TestPki::new();
    let (_nats, relay) = start(|c| {
        let mut implicit = listener(ListenerTls::Implicit);
        implicit.proxy_protocol = true;
        c.ingress.listeners = vec![implicit];
        c.ingress.tls = Some(TlsConfig {
            cert_file: pki.cert_file.clone(),
            key_file: pki.key_file.clone(),
        });
    });
    let header = v2_header(addr("10.20.30.40:4444"), relay.smtp());
    let mut s = Smtp::connect_tls_after(
        relay.smtp(),
        &header,
        pki.client_config(&[&rustls::version::TLS13]),
    )
    .await;
    s.reply().await.is(220, "");
    s.ehlo("app.internal").await;
    s.cmd("MAIL FROM:<app@example.com>").await.is(250, "2.1.0");
    s.cmd("RCPT TO:<someone@example.org>")
        .await
        .is(250, "2.1.5");
}
