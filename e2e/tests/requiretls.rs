//! REQUIRETLS (RFC 8689) end to end: a client asks for it over TLS, the queue entry carries it,
//! and delivery sends the message only over TLS with a verified certificate to a next hop that
//! offers REQUIRETLS (here a second Postern), passing the parameter on; where the certificate
//! cannot be verified the message waits, while ordinary mail on the same route still goes.

#![allow(clippy::unwrap_used)] // a test that cannot set up may panic

use std::io::Write;
use std::time::Duration;

use postern_config::{ListenerTls, TlsConfig};
use postern_e2e::relay::listener;
use postern_e2e::{
    NatsServer, Relay, ReplyExt, STREAM, Smtp, TestPki, route_all, start_standalone,
};

const WAIT: Duration = Duration::from_secs(20);

const REQUIRING: &str = "MAIL FROM:<a@example.com> REQUIRETLS";

/// A Postern ingress with a STARTTLS listener and the test PKI's certificate: the next hop.
fn tls_next_hop(pki: &TestPki) -> (NatsServer, Relay) {
    let nats = NatsServer::start();
    let mut config = Relay::config(&nats);
    config.ingress.listeners = vec![listener(ListenerTls::Starttls)];
    config.ingress.tls = Some(TlsConfig {
        cert_file: pki.cert_file.clone(),
        key_file: pki.key_file.clone(),
    });
    (nats, Relay::start(config))
}

/// Sends one message over implicit TLS to `relay`'s second listener, with `mail` as the MAIL
/// command.
async fn send_over_tls(relay: &Relay, pki: &TestPki, mail: &str, subject: &str) {
    let config = pki.client_config(&[&rustls::version::TLS13]);
    let mut s = Smtp::connect_tls(relay.listener(1), config).await;
    s.reply().await.is(220, "");
    let extensions = s.ehlo("client.test").await;
    assert!(
        extensions.iter().any(|e| e == "REQUIRETLS"),
        "{extensions:?}"
    );
    s.cmd(mail).await.is(250, "2.1.0");
    s.cmd("RCPT TO:<b@example.org>").await.is(250, "2.1.5");
    s.cmd("DATA").await.is(354, "");
    s.send(format!("Subject: {subject}\r\n\r\nx\r\n.\r\n").as_bytes())
        .await;
    s.reply().await.is(250, "2.0.0");
    s.cmd("QUIT").await.is(221, "2.0.0");
}

/// The sending relay: routes everything to `next_hop`, listens on plaintext and implicit TLS,
/// trusts `ca_file` when given.
fn sender(
    next_hop: &Relay,
    pki: &TestPki,
    ca_file: Option<&std::path::Path>,
) -> (NatsServer, Relay) {
    let host = format!("localhost:{}", next_hop.smtp().port());
    let (cert_file, key_file) = (pki.cert_file.clone(), pki.key_file.clone());
    let ca_file = ca_file.map(std::path::Path::to_path_buf);
    start_standalone(move |c| {
        c.delivery.routes = vec![route_all(&host)];
        c.delivery.ca_file = ca_file;
        c.delivery.retry.schedule = vec!["1s".parse().unwrap()];
        c.ingress.listeners.push(listener(ListenerTls::Implicit));
        c.ingress.tls = Some(TlsConfig {
            cert_file,
            key_file,
        });
    })
}

/// Waits until the next hop's queue holds `count` entries and returns them.
async fn arrived(
    nats: &NatsServer,
    count: usize,
    log: impl Fn() -> String,
) -> Vec<postern_e2e::QueueEntry> {
    let start = std::time::Instant::now();
    loop {
        let entries = nats.entries(STREAM).await;
        if entries.len() >= count {
            return entries;
        }
        assert!(
            start.elapsed() < WAIT,
            "nothing reached the next hop\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn requiretls_mail_goes_over_verified_tls_and_the_parameter_goes_on() {
    let pki = TestPki::new();
    let (hop_nats, hop) = tls_next_hop(&pki);
    let mut ca = tempfile::NamedTempFile::new().unwrap();
    ca.write_all(pki.ca_pem.as_bytes()).unwrap();
    let (_nats, relay) = sender(&hop, &pki, Some(ca.path()));
    send_over_tls(&relay, &pki, REQUIRING, "private").await;
    let entries = arrived(&hop_nats, 1, || relay.log()).await;
    let envelope = &entries[0].envelope;
    assert!(
        envelope.require_tls,
        "the next hop was asked for REQUIRETLS too"
    );
    let tls = envelope.client.tls.clone().unwrap_or_default();
    assert!(tls.starts_with("TLSv1.3"), "{tls:?}");
}

#[tokio::test]
async fn without_a_verified_certificate_requiretls_mail_waits_and_ordinary_mail_goes() {
    let pki = TestPki::new();
    let (hop_nats, hop) = tls_next_hop(&pki);
    // No caFile: the next hop's certificate cannot be verified.
    let (nats, relay) = sender(&hop, &pki, None);
    send_over_tls(&relay, &pki, REQUIRING, "private").await;
    send_over_tls(&relay, &pki, "MAIL FROM:<a@example.com>", "ordinary").await;
    let entries = arrived(&hop_nats, 1, || relay.log()).await;
    assert!(
        String::from_utf8_lossy(&entries[0].body).contains("Subject: ordinary"),
        "opportunistic TLS takes any certificate for ordinary mail"
    );
    // The REQUIRETLS message is deferred, attempt after attempt, and never sent.
    let start = std::time::Instant::now();
    while relay.metric("postern_delivery_outcomes_total{result=\"deferred\"}") < 2.0 {
        assert!(start.elapsed() < WAIT, "no deferrals\n{}", relay.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        hop_nats.entries(STREAM).await.len(),
        1,
        "only the ordinary message"
    );
    let waiting = nats.entries(STREAM).await;
    assert_eq!(
        waiting.len(),
        1,
        "the REQUIRETLS message waits in the queue"
    );
    assert!(waiting[0].envelope.require_tls);
    let replies = &waiting[0].envelope.last_replies;
    assert!(
        replies.iter().any(|r| r.reply.starts_with("4")),
        "{replies:?}"
    );
}
