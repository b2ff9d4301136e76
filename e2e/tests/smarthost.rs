//! Delivery through a smarthost that requires AUTH over verified STARTTLS. The smarthost is a
//! second Postern ingress with a test certificate and a users file, so both ends are real.

#![allow(clippy::unwrap_used)] // a test that cannot set up may panic

use std::path::PathBuf;
use std::time::Duration;

use postern_config::{ListenerTls, OutboundTls, Smarthost, TlsConfig};
use postern_e2e::relay::listener;
use postern_e2e::{NatsServer, Relay, STREAM, Smtp, TestPki, start_standalone};

const WAIT: Duration = Duration::from_secs(20);

struct Upstream {
    nats: NatsServer,
    relay: Relay,
    pki: TestPki,
    _users: tempfile::NamedTempFile,
}

/// A Postern ingress that relays only for alice/wonderland, only over STARTTLS.
fn upstream() -> Upstream {
    let pki = TestPki::new();
    let users = tempfile::NamedTempFile::new().unwrap();
    let hash = postern_relay::users::hash_password("wonderland").unwrap();
    std::fs::write(users.path(), format!("alice:{hash}\n")).unwrap();
    let nats = NatsServer::start();
    let mut config = Relay::config(&nats);
    config.hostname = "smarthost.test".into();
    config.ingress.listeners = vec![listener(ListenerTls::Starttls)];
    config.ingress.tls = Some(TlsConfig {
        cert_file: pki.cert_file.clone(),
        key_file: pki.key_file.clone(),
    });
    config.ingress.users_file = Some(users.path().to_path_buf());
    config.ingress.allowed_networks = vec![];
    let relay = Relay::start(config);
    Upstream {
        nats,
        relay,
        pki,
        _users: users,
    }
}

fn file(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

async fn send(relay: &Relay) {
    Smtp::submit(
        relay.smtp(),
        "a@example.com",
        &["b@example.org"],
        b"Subject: via smarthost\r\n\r\nx\r\n",
    )
    .await;
}

async fn wait_log(relay: &Relay, text: &str) {
    let start = std::time::Instant::now();
    while !relay.log().contains(text) {
        assert!(
            start.elapsed() < WAIT,
            "no {text:?} in the log:\n{}",
            relay.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn smarthost_gets_mail_with_auth_over_verified_tls() {
    let up = upstream();
    let dir = tempfile::tempdir().unwrap();
    let ca = file(&dir, "ca.pem", &up.pki.ca_pem);
    let credentials = file(&dir, "credentials", "alice:wonderland\n");
    let smarthost = Smarthost {
        host: format!("localhost:{}", up.relay.smtp().port()),
        credentials_file: Some(credentials),
        tls: OutboundTls::Verify,
    };
    let (_nats, relay) = start_standalone(|c| {
        c.delivery.smarthost = Some(smarthost);
        c.delivery.ca_file = Some(ca);
    });
    send(&relay).await;
    let start = std::time::Instant::now();
    let entry = loop {
        if let Some(entry) = up.nats.entries(STREAM).await.pop() {
            break entry;
        }
        assert!(
            start.elapsed() < WAIT,
            "nothing reached the smarthost\n{}",
            relay.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(entry.envelope.recipients, ["b@example.org"]);
    assert_eq!(entry.envelope.sender, "a@example.com");
    assert_eq!(entry.envelope.client.auth_user.as_deref(), Some("alice"));
    assert!(entry.envelope.client.tls.is_some(), "delivered over TLS");
    assert!(entry.text().contains("with ESMTPSA id"), "{}", entry.text());
}

#[tokio::test]
async fn wrong_credentials_or_untrusted_certificate_defer_instead_of_bouncing() {
    let up = upstream();
    let dir = tempfile::tempdir().unwrap();
    let ca = file(&dir, "ca.pem", &up.pki.ca_pem);
    let wrong = file(&dir, "wrong", "alice:not-the-password\n");
    let right = file(&dir, "right", "alice:wonderland\n");
    let host = format!("localhost:{}", up.relay.smtp().port());

    let (_n1, refused) = start_standalone(|c| {
        c.delivery.smarthost = Some(Smarthost {
            host: host.clone(),
            credentials_file: Some(wrong),
            tls: OutboundTls::Verify,
        });
        c.delivery.ca_file = Some(ca);
    });
    send(&refused).await;
    wait_log(&refused, "deferred").await;
    assert!(
        refused
            .log()
            .contains("4.7.0 authentication refused by localhost: 535"),
        "{}",
        refused.log()
    );

    // Without the test CA, the smarthost's certificate is not trusted.
    let (_n2, untrusted) = start_standalone(|c| {
        c.delivery.smarthost = Some(Smarthost {
            host: host.clone(),
            credentials_file: Some(right),
            tls: OutboundTls::Verify,
        });
    });
    send(&untrusted).await;
    wait_log(&untrusted, "deferred").await;
    assert!(
        untrusted.log().contains("4.7.5 TLS handshake failed"),
        "{}",
        untrusted.log()
    );
    assert!(
        up.nats.entries(STREAM).await.is_empty(),
        "nothing reached the smarthost"
    );
    assert_eq!(
        refused.metric("postern_delivery_outcomes_total{result=\"bounced\"}"),
        0.0
    );
}
