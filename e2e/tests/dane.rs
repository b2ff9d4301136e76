//! DANE (RFC 7672) end to end: a `postern standalone` whose validating resolver trusts only the
//! root key of the harness's signed DNS server on loopback, a Postern ingress with STARTTLS as
//! the MX (its certificate chain from a test CA), and a plaintext MX that accepts anything, both
//! on the same port (127.0.0.1 and 127.0.0.9).

#![allow(clippy::unwrap_used)] // a test that cannot set up may panic

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use postern_config::{Config, DestinationLimits, ListenerTls, OutboundTls, TlsConfig};
use postern_e2e::dnssec::SignedDns;
use postern_e2e::relay::listener;
use postern_e2e::report::{posted_tls_reports, tls_report_sums};
use postern_e2e::{HttpsServer, MockMx, NatsServer, Relay, STREAM, Smtp, TestPki};
use postern_relay::delivery::dane::tlsa::subject_public_key_info;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

const WAIT: Duration = Duration::from_secs(20);

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn sha256(bytes: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .to_vec()
}

/// The SHA-256 of the SubjectPublicKeyInfo of the first certificate of a PEM text.
fn spki_digest(pem: &str) -> Vec<u8> {
    let cert = CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    sha256(subject_public_key_info(&cert).unwrap())
}

struct World {
    dns: SignedDns,
    _pki: TestPki,
    mx_nats: NatsServer,
    _mx: Relay,
    plain: MockMx,
    policies: HttpsServer,
    ca: tempfile::NamedTempFile,
    anchor: tempfile::NamedTempFile,
    port: u16,
    /// TLSA digests of the MX's key (DANE-EE) and of its CA's key (DANE-TA).
    ee: Vec<u8>,
    ta: Vec<u8>,
}

impl World {
    async fn new() -> World {
        let pki = TestPki::for_names(&["mx-ta.signed.test", "mta-sts.sts.signed.test"]);
        // The MX sends its chain: its certificate, then the CA's.
        let leaf = std::fs::read_to_string(&pki.cert_file).unwrap();
        std::fs::write(&pki.cert_file, format!("{leaf}{}", pki.ca_pem)).unwrap();
        let ee = spki_digest(&leaf);
        let ta = spki_digest(&pki.ca_pem);
        let plain = MockMx::start_at(
            SocketAddr::from(([127, 0, 0, 9], 0)),
            Arc::new(|_| "250 ok".into()),
        )
        .await;
        let port = plain.addr.port();
        let mx_nats = NatsServer::start();
        let mut mx_config = Relay::config(&mx_nats);
        mx_config.ingress.listeners = vec![postern_config::Listener {
            address: SocketAddr::from(([127, 0, 0, 1], port)),
            ..listener(ListenerTls::Starttls)
        }];
        mx_config.ingress.tls = Some(TlsConfig {
            cert_file: pki.cert_file.clone(),
            key_file: pki.key_file.clone(),
        });
        let mx = Relay::start(mx_config);
        let dns = SignedDns::start(&["signed.test"], &["plain.test"]).await;
        let mut anchor = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut anchor, dns.trust_anchor().as_bytes()).unwrap();
        let mut ca = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut ca, pki.ca_pem.as_bytes()).unwrap();
        let policies = HttpsServer::start(&pki).await;
        World {
            dns,
            _pki: pki,
            mx_nats,
            _mx: mx,
            plain,
            policies,
            ca,
            anchor,
            port,
            ee,
            ta,
        }
    }

    /// `domain` has the one MX `mx` at `address`, with TLSA records `tlsa` at its port.
    fn domain(&self, domain: &str, mx: &str, address: &str, tlsa: &[(u8, u8, u8, Vec<u8>)]) {
        self.dns.mx(domain, 10, mx);
        self.dns.address(mx, ip(address));
        for (usage, selector, matching, data) in tlsa {
            self.dns.tlsa(
                &format!("_{}._tcp.{mx}", self.port),
                *usage,
                *selector,
                *matching,
                data.clone(),
            );
        }
    }

    /// The domains both tests use: `ee.` (DANE-EE for the MX's own key; its certificate names
    /// none of these hosts), `wrong.` (a record for another key), `bogus.` (valid records whose
    /// signatures do not validate) and `pkix.` (signed records that are all unusable, PKIX-EE:
    /// TLS mandatory, not authenticated), each `.signed.test` with the MX `mx-<name>`.
    fn ee_wrong_bogus_and_pkix(&self) {
        let ee = (3, 1, 1, self.ee.clone());
        let other_key = vec![9; 32];
        for (name, tlsa) in [
            ("ee", ee.clone()),
            ("wrong", (3, 1, 1, other_key.clone())),
            ("bogus", ee),
            ("pkix", (1, 1, 1, other_key)),
        ] {
            let mx = format!("mx-{name}.signed.test");
            self.domain(&format!("{name}.signed.test"), &mx, "127.0.0.1", &[tlsa]);
        }
        self.dns
            .break_signatures(&format!("_{}._tcp.mx-bogus.signed.test", self.port));
    }

    fn sender_config(&self, nats: &NatsServer) -> Config {
        let mut c = Relay::config(nats);
        c.delivery.dns.nameservers = vec![self.dns.addr];
        c.delivery.mx_port = self.port;
        c.delivery.dane.enabled = true;
        c.delivery.dane.trust_anchor_file = Some(self.anchor.path().to_path_buf());
        c.delivery.ca_file = Some(self.ca.path().to_path_buf());
        c.delivery.mta_sts.port = self.policies.addr.port();
        c.delivery.retry.schedule = vec!["1s".parse().unwrap()];
        c.delivery.destinations = vec![DestinationLimits {
            pattern: "only.plain.test".into(),
            connections: None,
            messages_per_connection: None,
            rate: None,
            burst: None,
            tls: Some(OutboundTls::DaneOnly),
        }];
        c
    }
}

fn start(config: Config) -> Relay {
    let relay = Relay::spawn(&["standalone"], config);
    relay.wait_ready(WAIT);
    relay
}

async fn send(relay: &Relay, to: &str) {
    Smtp::submit(
        relay.smtp(),
        "sender@example.com",
        &[to],
        b"Subject: dane\r\n\r\nx\r\n",
    )
    .await;
}

/// The recipient domains of what the TLS MX holds, once it holds `count`.
async fn delivered(world: &World, count: usize, relay: &Relay) -> Vec<String> {
    let start = std::time::Instant::now();
    loop {
        let entries = world.mx_nats.entries(STREAM).await;
        if entries.len() >= count {
            assert!(entries.iter().all(|e| e.envelope.client.tls.is_some()));
            let mut domains: Vec<String> =
                entries.iter().map(|e| e.envelope.domain.clone()).collect();
            domains.sort();
            return domains;
        }
        assert!(start.elapsed() < WAIT, "not delivered\n{}", relay.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn tlsa_records_authenticate_mx_hosts_and_keep_mail_from_those_they_do_not() {
    let world = World::new().await;
    let ee = || (3, 1, 1, world.ee.clone());
    world.ee_wrong_bogus_and_pkix();
    // DANE-TA: the CA's key; the certificate names mx-ta.signed.test.
    world.domain(
        "ta.signed.test",
        "mx-ta.signed.test",
        "127.0.0.1",
        &[(2, 1, 1, world.ta.clone())],
    );
    // The plaintext MX, with TLSA records: STARTTLS is mandatory, so it gets nothing.
    world.domain(
        "notls.signed.test",
        "mx-notls.signed.test",
        "127.0.0.9",
        &[ee()],
    );
    // An unsigned zone: its TLSA records count for nothing, mail goes in plaintext.
    world.domain("plain.test", "mx.plain.test", "127.0.0.9", &[ee()]);
    // dane-only for a domain in the unsigned zone: no mail.
    world.dns.mx("only.plain.test", 10, "mx.plain.test");
    // MTA-STS enforced with a policy that does not list the MX: DANE takes precedence.
    world.dns.mx("sts.signed.test", 10, "mx-ee.signed.test");
    world.dns.txt("_mta-sts.sts.signed.test", "v=STSv1; id=1;");
    world
        .dns
        .address("mta-sts.sts.signed.test", ip("127.0.0.1"));
    world.policies.serve(
        "mta-sts.sts.signed.test",
        "version: STSv1\r\nmode: enforce\r\nmx: *.elsewhere.test\r\nmax_age: 86400\r\n",
    );

    let nats = NatsServer::start();
    let relay = start(world.sender_config(&nats));
    for to in [
        "a@ee.signed.test",
        "b@ta.signed.test",
        "c@wrong.signed.test",
        "d@bogus.signed.test",
        "e@notls.signed.test",
        "f@pkix.signed.test",
        "g@plain.test",
        "h@only.plain.test",
        "i@sts.signed.test",
    ] {
        send(&relay, to).await;
    }
    let domains = delivered(&world, 4, &relay).await;
    assert_eq!(
        domains,
        [
            "ee.signed.test",
            "pkix.signed.test",
            "sts.signed.test",
            "ta.signed.test"
        ]
    );
    let start = std::time::Instant::now();
    while world.plain.delivered().is_empty() {
        assert!(start.elapsed() < WAIT, "plain.test not delivered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    relay
        .wait_metric(
            "postern_delivery_outcomes_total{result=\"deferred\"}",
            8.0,
            WAIT,
        )
        .await;
    let plain: Vec<Vec<String>> = world
        .plain
        .delivered()
        .into_iter()
        .map(|d| d.recipients)
        .collect();
    assert!(
        plain.iter().all(|r| r == &["g@plain.test".to_string()]),
        "only the unsigned zone's mail went in plaintext: {plain:?}"
    );
    let mut waiting: Vec<(String, String)> = nats
        .entries(STREAM)
        .await
        .iter()
        .map(|e| {
            let reply = e.envelope.last_replies.first().unwrap().reply.clone();
            (e.envelope.domain.clone(), reply)
        })
        .collect();
    waiting.sort();
    let domains: Vec<&str> = waiting.iter().map(|(d, _)| d.as_str()).collect();
    assert_eq!(
        domains,
        [
            "bogus.signed.test",
            "notls.signed.test",
            "only.plain.test",
            "wrong.signed.test"
        ],
        "{waiting:?}"
    );
    let reply = |domain: &str| &waiting.iter().find(|(d, _)| d == domain).unwrap().1;
    assert!(
        reply("bogus.signed.test").starts_with("451 4.7.5 DANE: the TLSA records of _"),
        "{waiting:?}"
    );
    assert!(reply("notls.signed.test").starts_with('4'), "{waiting:?}");
    assert!(
        reply("notls.signed.test").contains("STARTTLS"),
        "{waiting:?}"
    );
    assert!(
        reply("only.plain.test").contains("mx.plain.test is not authenticated by DANE")
            && reply("only.plain.test").contains("dane-only"),
        "{waiting:?}"
    );
    assert!(
        reply("wrong.signed.test").starts_with("4")
            && reply("wrong.signed.test")
                .contains("no TLSA record of mx-wrong.signed.test matches"),
        "{waiting:?}"
    );
    assert_eq!(relay.metric("postern_dane_enabled"), 1.0);
    // ee, ta and sts went authenticated by DANE; pkix over TLS no record vouched for.
    relay
        .wait_metric("postern_delivery_tls_total{tls=\"dane\"}", 3.0, WAIT)
        .await;
    assert_eq!(
        relay.metric("postern_delivery_tls_total{tls=\"dane\"}"),
        3.0
    );
    assert!(relay.metric("postern_dane_hosts_total{result=\"authenticated\"}") >= 3.0);
    assert!(relay.metric("postern_dane_hosts_total{result=\"failed\"}") >= 1.0);
    assert!(relay.metric("postern_dane_hosts_total{result=\"encrypted\"}") >= 1.0);
}

#[tokio::test]
async fn an_upstream_that_strips_dnssec_turns_dane_off_instead_of_deferring_mail() {
    let world = World::new().await;
    world.domain(
        "ee.signed.test",
        "mx-ee.signed.test",
        "127.0.0.9",
        &[(3, 1, 1, vec![9; 32])],
    );
    world.dns.strip_dnssec(true);
    let nats = NatsServer::start();
    let mut config = world.sender_config(&nats);
    config.delivery.dane.probe = "signed.test".into();
    let relay = start(config);
    send(&relay, "a@ee.signed.test").await;
    let start = std::time::Instant::now();
    while world.plain.delivered().is_empty() {
        assert!(start.elapsed() < WAIT, "not delivered\n{}", relay.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(relay.metric("postern_dane_enabled"), 0.0);
    let log = relay.log();
    assert!(
        log.contains("DNSSEC answers do not validate, so DANE is off"),
        "{log}"
    );
}

#[tokio::test]
async fn dane_sessions_are_reported_to_the_tls_rpt_record_of_each_mx_host() {
    let world = World::new().await;
    world.ee_wrong_bogus_and_pkix();
    world.domain("only.plain.test", "mx.plain.test", "127.0.0.9", &[]);
    let record = format!("v=TLSRPTv1; rua={}", world.policies.accept_reports());
    for host in [
        "mx-ee.signed.test",
        "mx-wrong.signed.test",
        "mx-bogus.signed.test",
        "mx-pkix.signed.test",
        "mx.plain.test",
        // The recipient domain is not a DANE policy domain: it hears nothing of DANE.
        "ee.signed.test",
    ] {
        world.dns.txt(&format!("_smtp._tls.{host}"), &record);
    }
    let nats = NatsServer::start();
    let mut config = world.sender_config(&nats);
    config.delivery.tls_rpt.period = "2s".parse().unwrap();
    config.delivery.destinations[0].pattern = "only.plain.test".into();
    let relay = start(config);
    for to in [
        "a@ee.signed.test",
        "b@wrong.signed.test",
        "c@bogus.signed.test",
        "d@pkix.signed.test",
        "e@only.plain.test",
    ] {
        send(&relay, to).await;
    }
    let start_time = std::time::Instant::now();
    let reports = loop {
        let reports = posted_tls_reports(&world.policies);
        let failed = |host: &str, kind: &str| {
            tls_report_sums(&reports, host)
                .1
                .iter()
                .any(|(k, mx, n)| k == kind && mx == host && *n >= 1)
        };
        if tls_report_sums(&reports, "mx-ee.signed.test").0 >= 1
            && failed("mx-wrong.signed.test", "tlsa-invalid")
            && failed("mx-bogus.signed.test", "dnssec-invalid")
            && failed("mx-pkix.signed.test", "tlsa-invalid")
            && failed("mx.plain.test", "dane-required")
        {
            break reports;
        }
        assert!(
            start_time.elapsed() < Duration::from_secs(40),
            "reports: {reports:#?}\n{}",
            relay.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let policy = |host: &str| {
        reports
            .iter()
            .flat_map(|r| r["policies"].as_array().unwrap().clone())
            .find(|p| p["policy"]["policy-domain"] == host)
            .unwrap()["policy"]
            .clone()
    };
    let hex: String = world.ee.iter().map(|b| format!("{b:02x}")).collect();
    let ee_policy = policy("mx-ee.signed.test");
    assert_eq!(ee_policy["policy-type"], "tlsa");
    assert_eq!(
        ee_policy["policy-string"],
        serde_json::json!([format!("3 1 1 {hex}")])
    );
    assert_eq!(
        ee_policy["mx-host"],
        serde_json::json!(["mx-ee.signed.test"])
    );
    assert_eq!(tls_report_sums(&reports, "mx-ee.signed.test").1, []);
    assert_eq!(policy("mx-wrong.signed.test")["policy-type"], "tlsa");
    assert_eq!(policy("mx.plain.test")["policy-type"], "no-policy-found");
    assert_eq!(tls_report_sums(&reports, "ee.signed.test"), (0, Vec::new()));
    assert!(
        world
            .policies
            .requests()
            .iter()
            .filter(|r| r.method == "POST")
            .all(|r| r.header("tls-report-domain") != Some("ee.signed.test")),
        "no report about the recipient domain"
    );
}

#[tokio::test]
async fn tls_required_no_lets_mail_past_tlsa_records_that_do_not_match() {
    let world = World::new().await;
    world.ee_wrong_bogus_and_pkix();
    let nats = NatsServer::start();
    let relay = start(world.sender_config(&nats));
    for (to, header) in [
        ("a@wrong.signed.test", ""),
        ("b@wrong.signed.test", "TLS-Required: No\r\n"),
        ("c@bogus.signed.test", "TLS-Required: No\r\n"),
    ] {
        let message = format!("{header}Subject: dane\r\n\r\nx\r\n");
        Smtp::submit(
            relay.smtp(),
            "sender@example.com",
            &[to],
            message.as_bytes(),
        )
        .await;
    }
    let domains = delivered(&world, 2, &relay).await;
    assert_eq!(domains, ["bogus.signed.test", "wrong.signed.test"]);
    let recipients: Vec<String> = world
        .mx_nats
        .entries(STREAM)
        .await
        .iter()
        .flat_map(|e| e.envelope.recipients.iter().cloned())
        .collect();
    assert!(
        !recipients.contains(&"a@wrong.signed.test".to_string()),
        "{recipients:?}"
    );
    relay
        .wait_metric(
            "postern_delivery_outcomes_total{result=\"deferred\"}",
            1.0,
            WAIT,
        )
        .await;
    let waiting: Vec<String> = nats
        .entries(STREAM)
        .await
        .iter()
        .flat_map(|e| e.envelope.recipients.iter().cloned())
        .collect();
    assert_eq!(waiting, ["a@wrong.signed.test"]);
}

#[tokio::test]
async fn the_start_up_check_runs_before_any_mail_comes() {
    let world = World::new().await;
    let nats = NatsServer::start();
    let relay = start(world.sender_config(&nats));
    relay.wait_metric("postern_dane_enabled", 1.0, WAIT).await;
    let log = relay.log();
    assert!(log.contains("DNSSEC answers validate; DANE is on"), "{log}");
    assert!(
        nats.entries(STREAM).await.is_empty(),
        "no mail was needed for it"
    );
}
