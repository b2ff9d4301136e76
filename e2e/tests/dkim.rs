//! DKIM signing at ingress, verified with mail-auth against keys published in a DNS server on
//! loopback, on the bytes the remote MX received.

#![allow(clippy::unwrap_used)] // a test that cannot set up may panic

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use mail_auth::hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use mail_auth::{AuthenticatedMessage, DkimResult, MessageAuthenticator};
use postern_config::{DkimAlgorithm, DkimKeyConfig, DomainConfig};
use postern_e2e::{DnsServer, MockMx, Smtp, route_all, start_standalone, workspace_root};

const WAIT: Duration = Duration::from_secs(20);

/// A new ed25519 key: its PKCS#8 PEM and its DKIM TXT record.
fn ed25519_key() -> (String, String) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    (
        key.serialize_pem(),
        format!("v=DKIM1; k=ed25519; p={}", B64.encode(key.public_key_raw())),
    )
}

fn authenticator(dns: &DnsServer) -> MessageAuthenticator {
    let mut server = NameServerConfig::udp(dns.addr.ip());
    for connection in &mut server.connections {
        connection.port = dns.addr.port();
    }
    MessageAuthenticator::new(
        ResolverConfig::from_name_servers(vec![server]),
        ResolverOpts::default(),
    )
    .unwrap()
}

async fn results(auth: &MessageAuthenticator, message: &[u8]) -> Vec<String> {
    let parsed = AuthenticatedMessage::parse(message).unwrap();
    auth.verify_dkim(&parsed)
        .await
        .iter()
        .map(|output| match output.result() {
            DkimResult::Pass => format!(
                "pass {}",
                output.signature().map(|s| s.s.clone()).unwrap_or_default()
            ),
            other => format!("{other:?}"),
        })
        .collect()
}

async fn send(relay: &postern_e2e::Relay, from: &str, body: &str) {
    Smtp::submit(relay.smtp(), from, &["rcpt@example.org"], body.as_bytes()).await;
}

#[tokio::test]
async fn signatures_verify_against_published_keys_and_follow_key_files() {
    let dns = DnsServer::start().await;
    let keys = tempfile::tempdir().unwrap();
    let (ed_pem, ed_txt) = ed25519_key();
    let ed_file = keys.path().join("ed25519.pem");
    std::fs::write(&ed_file, ed_pem).unwrap();
    dns.txt("ed._domainkey.example.com", &ed_txt);
    let rsa_public =
        std::fs::read_to_string(workspace_root().join("e2e/fixtures/dkim-rsa.pub.b64")).unwrap();
    dns.txt(
        "rsa._domainkey.example.com",
        &format!("v=DKIM1; k=rsa; p={}", rsa_public.trim()),
    );

    let mx = MockMx::accepting().await;
    let domains = vec![DomainConfig {
        name: "example.com".into(),
        dkim: vec![
            DkimKeyConfig {
                selector: "ed".into(),
                algorithm: DkimAlgorithm::Ed25519,
                key_file: ed_file.clone(),
            },
            DkimKeyConfig {
                selector: "rsa".into(),
                algorithm: DkimAlgorithm::Rsa,
                key_file: workspace_root().join("e2e/fixtures/dkim-rsa.pem"),
            },
        ],
    }];
    let (_nats, relay) = start_standalone(|c| {
        c.delivery.routes = vec![route_all(&mx.host())];
        c.domains = domains;
        c.reload_interval = "100ms".parse().unwrap();
    });
    let auth = authenticator(&dns);

    let message = "From: Alice <alice@example.com>\r\nTo: rcpt@example.org\r\nSubject: signed\r\nDate: Sat, 28 Nov 2026 10:00:00 +0000\r\nMessage-ID: <1@example.com>\r\n\r\nHello,\r\n  with  spaces \r\n";
    send(&relay, "alice@example.com", message).await;
    let received = mx.wait_for(1, WAIT).await[0].text();
    assert!(received.starts_with("DKIM-Signature: "), "{received}");
    let mut verdicts = results(&auth, received.as_bytes()).await;
    verdicts.sort();
    assert_eq!(verdicts, ["pass ed", "pass rsa"], "{received}");
    let header = received.split("\r\n\r\n").next().unwrap();
    assert!(header.contains("c=relaxed/relaxed"), "{header}");
    let signed: String = header
        .split("h=")
        .nth(1)
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    let froms = signed
        .split(':')
        .filter(|h| h.eq_ignore_ascii_case("From"))
        .count();
    assert_eq!(froms, 2, "From is oversigned: {signed}");

    // A changed body no longer verifies.
    let tampered = received.replace("Hello,", "Hullo,");
    assert!(
        results(&auth, tampered.as_bytes())
            .await
            .iter()
            .all(|r| !r.starts_with("pass"))
    );

    // A message larger than inlineBodyLimit is streamed to the queue and signed on the way.
    let large = format!(
        "From: Alice <alice@example.com>\r\nTo: rcpt@example.org\r\nSubject: large\r\n\r\n{}",
        "a line of a long message,  with  spaces \r\n".repeat(10_000)
    );
    send(&relay, "alice@example.com", &large).await;
    let received = mx.wait_for(2, WAIT).await[1].text();
    assert!(received.len() > 400_000 && received.ends_with(&large[large.len() - 1000..]));
    let mut verdicts = results(&auth, received.as_bytes()).await;
    verdicts.sort();
    assert_eq!(
        verdicts,
        ["pass ed", "pass rsa"],
        "a streamed message verifies"
    );
    let tampered = received.replace("a line of a long", "a line of a lung");
    assert!(
        results(&auth, tampered.as_bytes())
            .await
            .iter()
            .all(|r| !r.starts_with("pass"))
    );

    // Other domains are not signed.
    send(
        &relay,
        "bob@other.example",
        "From: bob@other.example\r\nSubject: plain\r\n\r\nx\r\n",
    )
    .await;
    let unsigned = mx.wait_for(3, WAIT).await[2].text();
    assert!(!unsigned.contains("DKIM-Signature"), "{unsigned}");

    // A new key file is picked up without a restart.
    let (new_pem, new_txt) = ed25519_key();
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(&ed_file, new_pem).unwrap();
    dns.txt("ed._domainkey.example.com", &new_txt);
    // A fresh resolver: the first one cached the old key's record for its TTL.
    let auth = authenticator(&dns);
    let start = std::time::Instant::now();
    let mut count = 3;
    loop {
        send(&relay, "alice@example.com", message).await;
        count += 1;
        let latest = mx.wait_for(count, WAIT).await[count - 1].text();
        let verdicts = results(&auth, latest.as_bytes()).await;
        if verdicts.contains(&"pass ed".to_string()) {
            break;
        }
        assert!(
            start.elapsed() < WAIT,
            "the new key was not used: {verdicts:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Sends `message` until the remote MX receives one whose verdicts satisfy `done`.
async fn send_until(
    relay: &postern_e2e::Relay,
    mx: &MockMx,
    sent: &mut usize,
    message: &str,
    done: impl Fn(&[String]) -> bool,
    auth: &MessageAuthenticator,
) -> Vec<String> {
    let start = std::time::Instant::now();
    loop {
        send(relay, "alice@example.com", message).await;
        *sent += 1;
        let latest = mx.wait_for(*sent, WAIT).await[*sent - 1].text();
        let verdicts = results(auth, latest.as_bytes()).await;
        if done(&verdicts) {
            return verdicts;
        }
        assert!(start.elapsed() < WAIT, "still {verdicts:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_domains_file_adds_domains_and_keys_without_a_restart() {
    let dns = DnsServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (pem, txt) = ed25519_key();
    let key_file = dir.path().join("example-com.ed.pem");
    std::fs::write(&key_file, pem).unwrap();
    dns.txt("ed._domainkey.example.com", &txt);
    let domains_file = dir.path().join("domains.yaml");
    std::fs::write(&domains_file, "[]\n").unwrap();
    let mx = MockMx::accepting().await;
    let (_nats, relay) = start_standalone(|c| {
        c.delivery.routes = vec![route_all(&mx.host())];
        c.domains_file = Some(domains_file.clone());
        c.reload_interval = "100ms".parse().unwrap();
    });
    let auth = authenticator(&dns);
    let message = "From: Alice <alice@example.com>\r\nTo: rcpt@example.org\r\nSubject: later\r\n\r\nHello\r\n";
    let mut sent = 0;
    let verdicts = send_until(&relay, &mx, &mut sent, message, |v| v.is_empty(), &auth).await;
    assert!(verdicts.is_empty(), "no domain, no signature: {verdicts:?}");

    // The domain and its key arrive as Kubernetes updates a mounted Secret: a new file put in
    // place at once.
    let listed = postern_config::DomainConfig::list_to_yaml(&[DomainConfig {
        name: "example.com".into(),
        dkim: vec![DkimKeyConfig {
            selector: "ed".into(),
            algorithm: DkimAlgorithm::Ed25519,
            key_file: key_file.clone(),
        }],
    }])
    .unwrap();
    let staged = dir.path().join("domains.yaml.new");
    std::fs::write(&staged, listed).unwrap();
    std::fs::rename(&staged, &domains_file).unwrap();
    let signed = |v: &[String]| v == ["pass ed"];
    send_until(&relay, &mx, &mut sent, message, signed, &auth).await;

    // A domains file that does not parse changes nothing: the keys loaded keep signing.
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(&staged, "- name: [").unwrap();
    std::fs::rename(&staged, &domains_file).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let verdicts = send_until(&relay, &mx, &mut sent, message, |_| true, &auth).await;
    assert_eq!(verdicts, ["pass ed"]);
}
