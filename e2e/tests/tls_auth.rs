//! STARTTLS, implicit TLS, certificate reload and AUTH, with a test CA and real rustls on both ends.

#![allow(clippy::unwrap_used)] // a test that cannot set up may panic

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use postern_config::{Config, ListenerTls, TlsConfig};
use postern_e2e::relay::listener;
use postern_e2e::{NatsServer, Relay, ReplyExt, STREAM, Smtp, TestPki};
use rustls::version::{TLS12, TLS13};

struct Setup {
    nats: NatsServer,
    relay: Relay,
    pki: TestPki,
    _users: tempfile::NamedTempFile,
}

/// A relay with a STARTTLS listener, an implicit TLS listener, a users file holding
/// alice/wonderland, and no network allowed to relay without AUTH.
fn setup(tweak: impl FnOnce(&mut Config)) -> Setup {
    let pki = TestPki::new();
    let users = tempfile::NamedTempFile::new().unwrap();
    let hash = postern_relay::users::hash_password("wonderland").unwrap();
    std::fs::write(users.path(), format!("alice:{hash}\n")).unwrap();
    let nats = NatsServer::start();
    let mut config = Relay::config(&nats);
    config.ingress.listeners = vec![
        listener(ListenerTls::Starttls),
        listener(ListenerTls::Implicit),
    ];
    config.ingress.tls = Some(TlsConfig {
        cert_file: pki.cert_file.clone(),
        key_file: pki.key_file.clone(),
    });
    config.reload_interval = "100ms".parse().unwrap();
    config.ingress.users_file = Some(users.path().to_path_buf());
    config.ingress.allowed_networks = vec![];
    tweak(&mut config);
    let relay = Relay::start(config);
    Setup {
        nats,
        relay,
        pki,
        _users: users,
    }
}

fn plain(user: &str, password: &str) -> String {
    B64.encode(format!("\0{user}\0{password}"))
}

#[tokio::test]
async fn starttls_upgrades_and_forgets_the_plaintext_session() {
    let t = setup(|_| {});
    let mut s = Smtp::greeted(t.relay.smtp()).await;
    let ext = s.ehlo("client.test").await;
    assert!(ext.contains(&"STARTTLS".to_string()), "{ext:?}");
    assert!(
        !ext.iter().any(|e| e.starts_with("AUTH")),
        "no AUTH before TLS: {ext:?}"
    );
    s.cmd("AUTH PLAIN").await.is(538, "5.7.11");
    s.cmd("RCPT TO:<x@example.org>").await.is(503, "5.5.1");
    s.cmd("MAIL FROM:<a@example.com>").await.is(250, "2.1.0");
    s.cmd("RCPT TO:<b@example.org>").await.is(530, "5.7.0");
    s.cmd("STARTTLS").await.is(220, "2.0.0");
    s.upgrade(t.pki.client_config(&[&TLS13])).await;
    assert_eq!(s.tls_version().as_deref(), Some("TLSv1_3"));
    s.cmd("MAIL FROM:<a@example.com>").await.is(503, "5.5.1");
    let ext = s.ehlo("client.test").await;
    assert!(!ext.contains(&"STARTTLS".to_string()));
    assert!(ext.contains(&"AUTH PLAIN LOGIN".to_string()), "{ext:?}");
    s.cmd("STARTTLS").await.is(503, "5.5.1");
}

#[tokio::test]
async fn commands_pipelined_after_starttls_are_discarded() {
    let t = setup(|c| c.ingress.allowed_networks = vec!["127.0.0.0/8".parse().unwrap()]);
    let mut s = Smtp::greeted(t.relay.smtp()).await;
    s.ehlo("client.test").await;
    s.send(b"STARTTLS\r\nMAIL FROM:<injected@evil.example>\r\nRCPT TO:<victim@example.org>\r\nDATA\r\n").await;
    s.reply().await.is(220, "2.0.0");
    s.upgrade(t.pki.client_config(&[&TLS13])).await;
    s.ehlo("client.test").await;
    // Had the injected MAIL survived, this would be 503 (nested MAIL).
    s.cmd("MAIL FROM:<a@example.com>").await.is(250, "2.1.0");
    s.cmd("RCPT TO:<b@example.org>").await.is(250, "2.1.5");
    s.cmd("DATA").await.is(354, "");
    s.send(b"Subject: after\r\n\r\nx\r\n.\r\n").await;
    s.reply().await.is(250, "2.0.0");
    s.cmd("NOOP").await.is(250, "2.0.0");
    let entries = t.nats.entries(STREAM).await;
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].envelope.sender, "a@example.com");
    assert_eq!(entries[0].envelope.recipients, ["b@example.org"]);
}

#[tokio::test]
async fn tls12_and_tls13_are_recorded_in_received() {
    let t = setup(|c| c.ingress.allowed_networks = vec!["127.0.0.0/8".parse().unwrap()]);
    for (version, name) in [(&TLS12, "TLSv1.2"), (&TLS13, "TLSv1.3")] {
        let mut s = Smtp::greeted(t.relay.smtp()).await;
        s.ehlo("client.test").await;
        s.cmd("STARTTLS").await.is(220, "2.0.0");
        s.upgrade(t.pki.client_config(&[version])).await;
        s.ehlo("client.test").await;
        s.send_mail(
            "a@example.com",
            &["b@example.org"],
            b"Subject: tls\r\n\r\nx\r\n",
        )
        .await
        .is(250, "2.0.0");
        let entries = t.nats.entries(STREAM).await;
        let text = entries.last().unwrap().text();
        assert!(text.contains("with ESMTPS id"), "{text}");
        assert!(
            text.contains(&format!("(using {name} with cipher ")),
            "{text}"
        );
        assert!(
            entries
                .last()
                .unwrap()
                .envelope
                .client
                .tls
                .as_deref()
                .unwrap()
                .starts_with(name)
        );
    }
}

#[tokio::test]
async fn implicit_tls_listener() {
    let t = setup(|_| {});
    let mut s =
        Smtp::connect_tls(t.relay.listener(1), t.pki.client_config(&[&TLS13, &TLS12])).await;
    s.reply().await.is(220, "");
    let ext = s.ehlo("client.test").await;
    assert!(!ext.contains(&"STARTTLS".to_string()));
    assert!(ext.contains(&"AUTH PLAIN LOGIN".to_string()));
    s.cmd(&format!("AUTH PLAIN {}", plain("alice", "wonderland")))
        .await
        .is(235, "2.7.0");
    s.send_mail(
        "a@example.com",
        &["b@example.org"],
        b"Subject: 465\r\n\r\nx\r\n",
    )
    .await
    .is(250, "2.0.0");
    let entry = &t.nats.entries(STREAM).await[0];
    assert_eq!(entry.envelope.client.auth_user.as_deref(), Some("alice"));
    assert!(entry.text().contains("with ESMTPSA id"), "{}", entry.text());
}

#[tokio::test]
async fn auth_plain_and_login_allow_relaying() {
    let t = setup(|_| {});
    let config = t.pki.client_config(&[&TLS13]);
    let mut s = Smtp::greeted(t.relay.smtp()).await;
    s.ehlo("client.test").await;
    s.cmd("STARTTLS").await.is(220, "2.0.0");
    s.upgrade(config.clone()).await;
    s.ehlo("client.test").await;
    s.cmd("MAIL FROM:<a@example.com>").await.is(250, "2.1.0");
    s.cmd("RCPT TO:<b@example.org>").await.is(530, "5.7.0");
    s.cmd("AUTH PLAIN").await.is(503, "5.5.1");
    s.cmd("RSET").await.is(250, "2.0.0");
    s.cmd("AUTH PLAIN").await.is(334, "");
    s.cmd(&plain("alice", "wonderland")).await.is(235, "2.7.0");
    s.cmd("AUTH PLAIN").await.is(503, "5.5.1");
    s.send_mail(
        "a@example.com",
        &["b@example.org"],
        b"Subject: auth\r\n\r\nx\r\n",
    )
    .await
    .is(250, "2.0.0");

    let mut s = Smtp::greeted(t.relay.smtp()).await;
    s.ehlo("client.test").await;
    s.cmd("STARTTLS").await.is(220, "2.0.0");
    s.upgrade(config).await;
    s.ehlo("client.test").await;
    let prompt = s.cmd("AUTH LOGIN").await.is(334, "");
    assert_eq!(prompt.text(), B64.encode("Username:"));
    let prompt = s.cmd(&B64.encode("alice")).await.is(334, "");
    assert_eq!(prompt.text(), B64.encode("Password:"));
    s.cmd(&B64.encode("wonderland")).await.is(235, "2.7.0");
    s.cmd("MAIL FROM:<a@example.com>").await.is(250, "2.1.0");
    s.cmd("RCPT TO:<b@example.org>").await.is(250, "2.1.5");
}

#[tokio::test]
async fn three_failed_auth_attempts_close_the_session() {
    let t = setup(|_| {});
    let mut s = Smtp::connect_tls(t.relay.listener(1), t.pki.client_config(&[&TLS13])).await;
    s.reply().await.is(220, "");
    s.ehlo("client.test").await;
    s.cmd(&format!("AUTH PLAIN {}", plain("alice", "wrong")))
        .await
        .is(535, "5.7.8");
    s.cmd("AUTH LOGIN").await.is(334, "");
    s.cmd("*").await.is(501, "5.0.0");
    s.cmd(&format!("AUTH PLAIN {}", plain("mallory", "wonderland")))
        .await
        .is(535, "5.7.8");
    s.reply().await.is(421, "4.7.0");
    assert!(s.closed().await);
    assert_eq!(
        t.relay
            .metric("postern_ingress_rejections_total{reason=\"auth_failed\"}"),
        3.0
    );
}

/// Failed logins count per client address across connections: a fresh connection does not
/// get a fresh set of guesses.
#[tokio::test]
async fn failed_logins_are_throttled_per_address_across_connections() {
    let t = setup(|c| c.ingress.limits.max_auth_failures_per_address = 4);
    for _ in 0..2 {
        let mut s = Smtp::connect_tls(t.relay.listener(1), t.pki.client_config(&[&TLS13])).await;
        s.reply().await.is(220, "");
        s.ehlo("client.test").await;
        for _ in 0..2 {
            s.cmd(&format!("AUTH PLAIN {}", plain("alice", "guess")))
                .await
                .is(535, "5.7.8");
        }
    }
    let mut s = Smtp::connect_tls(t.relay.listener(1), t.pki.client_config(&[&TLS13])).await;
    s.reply().await.is(220, "");
    s.ehlo("client.test").await;
    s.cmd(&format!("AUTH PLAIN {}", plain("alice", "wonderland")))
        .await
        .is(454, "4.7.0");
}

#[tokio::test]
async fn plaintext_auth_only_where_the_listener_allows_it() {
    let t = setup(|c| {
        c.ingress.listeners[0].tls = ListenerTls::None;
        c.ingress.listeners[0].allow_plaintext_auth = true;
    });
    let mut s = Smtp::greeted(t.relay.smtp()).await;
    let ext = s.ehlo("client.test").await;
    assert!(ext.contains(&"AUTH PLAIN LOGIN".to_string()), "{ext:?}");
    assert!(!ext.contains(&"STARTTLS".to_string()), "{ext:?}");
    s.cmd(&format!("AUTH PLAIN {}", plain("alice", "wonderland")))
        .await
        .is(235, "2.7.0");
}

#[tokio::test]
async fn certificate_files_are_reloaded_when_they_change() {
    let mut t = setup(|_| {});
    let old = t.pki.client_config(&[&TLS13]);
    let mut s = Smtp::connect_tls(t.relay.listener(1), old.clone()).await;
    s.reply().await.is(220, "");
    std::thread::sleep(std::time::Duration::from_millis(20));
    t.pki.rotate("rotated");
    let new = t.pki.client_config(&[&TLS13]);
    let start = std::time::Instant::now();
    loop {
        let tcp = tokio::net::TcpStream::connect(t.relay.listener(1))
            .await
            .unwrap();
        let handshake = tokio_rustls::TlsConnector::from(new.clone())
            .connect(TestPki::server_name(), tcp)
            .await;
        if handshake.is_ok() {
            break;
        }
        assert!(
            start.elapsed().as_secs() < 10,
            "new certificate not served within 10s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let tcp = tokio::net::TcpStream::connect(t.relay.listener(1))
        .await
        .unwrap();
    let stale = tokio_rustls::TlsConnector::from(old)
        .connect(TestPki::server_name(), tcp)
        .await;
    assert!(
        stale.is_err(),
        "the old CA no longer verifies the served certificate"
    );
}
