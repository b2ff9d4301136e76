//! MTA-STS (RFC 8461) end to end, with a real resolver against a DNS server on loopback, policy
//! servers over HTTPS on loopback (their certificate from a test CA that delivery trusts through
//! `delivery.caFile`), and a Postern ingress with STARTTLS as the MX, its certificate valid for
//! `mx.good.example` only.

#![allow(clippy::unwrap_used)] // a test that cannot set up may panic

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use mail_parser::MimeHeaders;
use postern_config::{Config, ListenerTls, TlsConfig};
use postern_e2e::https::Response;
use postern_e2e::relay::listener;
use postern_e2e::report::{posted_tls_reports, tls_report_json, tls_report_sums};
use postern_e2e::{DnsServer, HttpsServer, MockMx, NatsServer, Relay, STREAM, Smtp, TestPki};

const WAIT: Duration = Duration::from_secs(20);

const POLICY_PATH: &str = "/.well-known/mta-sts.txt";

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn policy(mode: &str, mx: &[&str]) -> String {
    let mx: String = mx.iter().map(|m| format!("mx: {m}\r\n")).collect();
    format!("version: STSv1\r\nmode: {mode}\r\n{mx}max_age: 86400\r\n")
}

/// DNS, the policy server, the MX (a Postern with STARTTLS on 127.0.0.1) and a plaintext MX
/// on 127.0.0.9 that accepts anything, both on the same port.
struct World {
    dns: DnsServer,
    policies: HttpsServer,
    _pki: TestPki,
    ca: tempfile::NamedTempFile,
    mx_nats: NatsServer,
    _mx: Relay,
    plain: MockMx,
    port: u16,
}

impl World {
    async fn new() -> World {
        let pki = TestPki::for_names(&[
            "mx.good.example",
            "mta-sts.enforce.example",
            "mta-sts.badcert.example",
            "mta-sts.unlisted.example",
            "mta-sts.testing.example",
            "mta-sts.redirect.example",
            "mta-sts.html.example",
            "mta-sts.big.example",
            "mta-sts.plaintext.example",
        ]);
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
        let dns = DnsServer::start().await;
        dns.address("mx.good.example", ip("127.0.0.1"));
        dns.address("mx.other.example", ip("127.0.0.1"));
        dns.address("mx.rogue.example", ip("127.0.0.9"));
        let policies = HttpsServer::start(&pki).await;
        let mut ca = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut ca, pki.ca_pem.as_bytes()).unwrap();
        World {
            dns,
            policies,
            _pki: pki,
            ca,
            mx_nats,
            _mx: mx,
            plain,
            port,
        }
    }

    /// `domain` has MX `mx` and publishes `body` as its policy with id `id`.
    fn domain(&self, domain: &str, mx: &str, id: &str, body: &str) {
        self.dns.mx(domain, 10, mx);
        self.dns
            .txt(&format!("_mta-sts.{domain}"), &format!("v=STSv1; id={id};"));
        self.dns
            .address(&format!("mta-sts.{domain}"), ip("127.0.0.1"));
        self.policies.serve(&format!("mta-sts.{domain}"), body);
    }

    /// `enforce.example` enforces a policy that lists its MX, `mx.good.example`.
    fn enforce_good(&self) {
        self.domain(
            "enforce.example",
            "mx.good.example",
            "1",
            &policy("enforce", &["mx.good.example"]),
        );
    }

    fn sender_config(&self, nats: &NatsServer) -> Config {
        let mut c = Relay::config(nats);
        c.delivery.dns.nameservers = vec![self.dns.addr];
        c.delivery.mx_port = self.port;
        c.delivery.ca_file = Some(self.ca.path().to_path_buf());
        c.delivery.mta_sts.port = self.policies.addr.port();
        c.delivery.retry.schedule = vec!["1s".parse().unwrap()];
        c
    }

    fn fetches(&self, domain: &str) -> usize {
        let host = format!("mta-sts.{domain}");
        self.policies
            .requests()
            .iter()
            .filter(|r| r.host == host && r.path == POLICY_PATH)
            .count()
    }

    /// The domains of the messages the TLS MX holds, once it holds `count`.
    async fn delivered_domains(&self, count: usize, relay: &Relay) -> Vec<String> {
        let start = std::time::Instant::now();
        loop {
            let entries = self.mx_nats.entries(STREAM).await;
            if entries.len() >= count {
                assert!(
                    entries.iter().all(|e| e.envelope.client.tls.is_some()),
                    "over TLS"
                );
                let mut domains: Vec<String> =
                    entries.iter().map(|e| e.envelope.domain.clone()).collect();
                domains.sort();
                return domains;
            }
            assert!(start.elapsed() < WAIT, "not delivered\n{}", relay.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn start(config: Config) -> Relay {
    let relay = Relay::spawn(&["standalone"], config);
    relay.wait_ready(WAIT);
    relay
}

async fn send(relay: &Relay, to: &str) {
    send_message(relay, to, b"Subject: sts\r\n\r\nx\r\n").await;
}

async fn send_message(relay: &Relay, to: &str, message: &[u8]) {
    Smtp::submit(relay.smtp(), "sender@example.com", &[to], message).await;
}

#[tokio::test]
async fn enforce_delivers_only_to_listed_mx_hosts_over_verified_tls_and_testing_only_reports() {
    let world = World::new().await;
    let enforce_good = policy("enforce", &["mx.good.example"]);
    let too_large = format!("{enforce_good}{}", "# \r\n".repeat(20_000));
    let domains = [
        ("enforce.example", "mx.good.example", enforce_good.clone()),
        // The MX certificate does not name mx.other.example.
        (
            "badcert.example",
            "mx.other.example",
            policy("enforce", &["mx.other.example"]),
        ),
        (
            "unlisted.example",
            "mx.good.example",
            policy("enforce", &["*.elsewhere.example"]),
        ),
        // Listed, but without STARTTLS.
        (
            "plaintext.example",
            "mx.rogue.example",
            policy("enforce", &["mx.rogue.example"]),
        ),
        (
            "testing.example",
            "mx.other.example",
            policy("testing", &["mx.good.example"]),
        ),
        // Policies that are not taken: a redirect, a page that is not text/plain, one too
        // large, and one from a server whose certificate does not name it.
        ("redirect.example", "mx.other.example", enforce_good.clone()),
        ("html.example", "mx.other.example", enforce_good.clone()),
        ("big.example", "mx.other.example", too_large),
        (
            "wrongcert.example",
            "mx.other.example",
            enforce_good.clone(),
        ),
    ];
    for (domain, mx, body) in &domains {
        world.domain(domain, mx, "1", body);
    }
    let answer = |status: u16, content_type: &str| Response {
        status,
        content_type: content_type.into(),
        body: enforce_good.clone(),
    };
    world
        .policies
        .set("mta-sts.redirect.example", answer(301, "text/plain"));
    world.policies.set(
        "mta-sts.html.example",
        answer(200, "text/html; charset=utf-8"),
    );
    let nats = NatsServer::start();
    let relay = start(world.sender_config(&nats));
    for to in [
        "a@enforce.example",
        "b@enforce.example",
        "c@badcert.example",
        "d@unlisted.example",
        "k@plaintext.example",
        "e@testing.example",
        "f@redirect.example",
        "g@html.example",
        "h@big.example",
        "i@wrongcert.example",
    ] {
        send(&relay, to).await;
    }
    // The sender asks that recipient policies not stop this one (RFC 8689 §5).
    send_message(
        &relay,
        "j@badcert.example",
        b"Subject: sts\r\nTLS-Required: No\r\n\r\nx\r\n",
    )
    .await;
    let domains = world.delivered_domains(8, &relay).await;
    assert_eq!(
        domains,
        [
            "badcert.example",
            "big.example",
            "enforce.example",
            "enforce.example",
            "html.example",
            "redirect.example",
            "testing.example",
            "wrongcert.example"
        ],
        "enforce over a certificate valid for a listed MX; testing, TLS-Required: No, and policies not taken, as before"
    );
    // badcert.example, plaintext.example and unlisted.example wait, attempt after attempt.
    relay
        .wait_metric(
            "postern_delivery_outcomes_total{result=\"deferred\"}",
            6.0,
            WAIT,
        )
        .await;
    let waiting = nats.entries(STREAM).await;
    let mut replies: Vec<(String, String)> = waiting
        .iter()
        .map(|e| {
            let reply = e.envelope.last_replies.first().unwrap().reply.clone();
            (e.envelope.domain.clone(), reply)
        })
        .collect();
    replies.sort();
    assert_eq!(replies.len(), 3, "{replies:?}");
    for (i, domain) in ["badcert.example", "plaintext.example"].iter().enumerate() {
        assert_eq!(replies[i].0, *domain);
        assert!(
            replies[i].1.starts_with("4")
                && replies[i]
                    .1
                    .contains(&format!("(MTA-STS policy 1 of {domain}: enforce)")),
            "{replies:?}"
        );
    }
    assert!(replies[1].1.contains("STARTTLS"), "{replies:?}");
    assert_eq!(replies[2].0, "unlisted.example");
    assert!(
        replies[2].1.starts_with("451 4.7.0 MTA-STS policy 1 of unlisted.example (enforce) lists none of its MX hosts (mx.good.example)"),
        "{replies:?}"
    );
    assert_eq!(world.mx_nats.entries(STREAM).await.len(), 8);
    assert!(
        world.plain.total_sessions() > 0,
        "plaintext.example's MX was asked"
    );
    assert_eq!(
        world.plain.transactions(),
        0,
        "and got nothing in plaintext"
    );
    // One fetch per domain though two messages went to enforce.example; none followed the
    // redirect.
    assert_eq!(world.fetches("enforce.example"), 1);
    assert_eq!(world.fetches("testing.example"), 1);
    assert!(
        world
            .policies
            .requests()
            .iter()
            .all(|r| r.host.starts_with("mta-sts.") && r.path == POLICY_PATH && r.method == "GET"),
        "{:?}",
        world.policies.requests()
    );
    let metric = |name: &str| relay.metric(name);
    assert_eq!(
        metric("postern_mta_sts_fetches_total{result=\"status\"}"),
        1.0
    );
    assert_eq!(
        metric("postern_mta_sts_fetches_total{result=\"content_type\"}"),
        1.0
    );
    assert_eq!(
        metric("postern_mta_sts_fetches_total{result=\"too_large\"}"),
        1.0
    );
    assert_eq!(metric("postern_mta_sts_fetches_total{result=\"tls\"}"), 1.0);
    assert_eq!(metric("postern_mta_sts_fetches_total{result=\"ok\"}"), 5.0);
    assert_eq!(
        metric("postern_mta_sts_mx_not_listed_total{mode=\"testing\"}"),
        1.0
    );
    assert!(metric("postern_mta_sts_mx_not_listed_total{mode=\"enforce\"}") >= 1.0);
    // Events say how each delivery was protected.
    let events: Vec<postern_queue::events::Event> =
        postern_e2e::nats::stored_messages(&nats.url(), &format!("{STREAM}_EVENTS"))
            .await
            .iter()
            .map(|m| serde_json::from_slice(&m.payload).unwrap())
            .collect();
    let tls_of = |recipient: &str| {
        events
            .iter()
            .find(|e| {
                e.kind == postern_queue::events::Kind::Delivered
                    && e.recipient.as_deref() == Some(recipient)
            })
            .and_then(|e| e.tls.clone())
            .unwrap_or_else(|| panic!("no delivered event over TLS for {recipient}: {events:#?}"))
    };
    let enforced = tls_of("a@enforce.example");
    assert!(enforced.verified, "{enforced:?}");
    assert_eq!(enforced.policy.as_deref(), Some("mta-sts"));
    assert!(enforced.version.starts_with("TLSv1."), "{enforced:?}");
    assert!(enforced.cipher.starts_with("TLS"), "{enforced:?}");
    let testing = tls_of("e@testing.example");
    assert!(!testing.verified && testing.policy.is_none(), "{testing:?}");
    // The policy is in the relay's shared cache.
    let client = async_nats::connect(nats.url()).await.unwrap();
    let kv = async_nats::jetstream::new(client)
        .get_key_value(format!("{STREAM}_MTA_STS"))
        .await
        .unwrap();
    let stored: serde_json::Value =
        serde_json::from_slice(&kv.get("enforce=2eexample").await.unwrap().unwrap()).unwrap();
    assert_eq!(stored["id"], "1");
    assert_eq!(stored["text"], policy("enforce", &["mx.good.example"]));
}

#[tokio::test]
async fn a_policy_cached_by_one_process_protects_another_when_the_policy_server_fails() {
    let world = World::new().await;
    world.enforce_good();
    let nats = NatsServer::start();
    let mut first = start(world.sender_config(&nats));
    send(&first, "a@enforce.example").await;
    world.delivered_domains(1, &first).await;
    first.sigterm();
    assert!(first.wait_exit(WAIT).is_some(), "{}", first.log());
    // Now a more preferred MX appears, the domain announces a new policy id, and its policy
    // server fails: the fresh process must fall back to the policy the first one cached.
    world.dns.mx("enforce.example", 5, "mx.rogue.example");
    world.dns.txt("_mta-sts.enforce.example", "v=STSv1; id=2;");
    world.policies.set(
        "mta-sts.enforce.example",
        Response {
            status: 500,
            content_type: "text/plain".into(),
            body: "down".into(),
        },
    );
    let second = start(world.sender_config(&nats));
    send(&second, "b@enforce.example").await;
    world.delivered_domains(2, &second).await;
    assert_eq!(
        world.plain.transactions(),
        0,
        "the MX not in the cached policy got nothing"
    );
    assert_eq!(world.fetches("enforce.example"), 2, "fetched once each");
    assert_eq!(
        second.metric("postern_mta_sts_fetches_total{result=\"status\"}"),
        1.0
    );
    assert_eq!(
        second.metric("postern_mta_sts_mx_not_listed_total{mode=\"enforce\"}"),
        1.0
    );
}

/// What the TLS reports received so far say about `domain`: (successful sessions, failure
/// details as (result type, MX host, count)), summed over every report (a period boundary can
/// split the sessions of one test over two).
#[tokio::test]
async fn tls_reports_count_the_sessions_of_each_policy_domain_and_reach_its_rua() {
    let world = World::new().await;
    world.enforce_good();
    world.domain(
        "badcert.example",
        "mx.other.example",
        "1",
        &policy("enforce", &["mx.other.example"]),
    );
    world.domain(
        "testing.example",
        "mx.other.example",
        "1",
        &policy("testing", &["mx.good.example"]),
    );
    // Reports go by mail to reports.example (the plaintext MX on 127.0.0.9) and by HTTPS POST.
    world.dns.mx("reports.example", 10, "mx.rogue.example");
    let https = world.policies.accept_reports();
    world.dns.txt(
        "_smtp._tls.enforce.example",
        &format!("v=TLSRPTv1; rua=mailto:tlsrpt@reports.example,{https}"),
    );
    world.dns.txt(
        "_smtp._tls.badcert.example",
        &format!("v=TLSRPTv1;rua={https}"),
    );
    world.dns.txt(
        "_smtp._tls.testing.example",
        "v=TLSRPTv1; rua=mailto:tlsrpt@reports.example",
    );
    let nats = NatsServer::start();
    let mut config = world.sender_config(&nats);
    config.delivery.tls_rpt.period = "2s".parse().unwrap();
    config.delivery.tls_rpt.organization = Some("Test Relay".into());
    let relay = start(config);
    for to in [
        "a@enforce.example",
        "b@enforce.example",
        "c@badcert.example",
        "d@testing.example",
    ] {
        send(&relay, to).await;
    }
    let start_time = std::time::Instant::now();
    loop {
        let posted = posted_tls_reports(&world.policies);
        let mailed: Vec<serde_json::Value> = world
            .plain
            .delivered()
            .iter()
            .map(|d| {
                assert_eq!(d.from, "", "reports go from the null sender");
                let text = d.text();
                let message = mail_parser::MessageParser::new()
                    .parse(text.as_bytes())
                    .unwrap();
                assert!(
                    text.contains("Content-Type: multipart/report; report-type=\"tlsrpt\""),
                    "{text}"
                );
                assert!(text.contains("TLS-Report-Submitter: relay.test"), "{text}");
                let attachment = message
                    .attachments()
                    .find(|a| a.is_content_type("application", "tlsrpt+gzip"))
                    .unwrap_or_else(|| panic!("no application/tlsrpt+gzip part: {text}"));
                tls_report_json(attachment.contents())
            })
            .collect();
        let enforce_posted = tls_report_sums(&posted, "enforce.example");
        let enforce_mailed = tls_report_sums(&mailed, "enforce.example");
        let badcert = tls_report_sums(&posted, "badcert.example");
        let testing = tls_report_sums(&mailed, "testing.example");
        let done = enforce_posted.0 == 2
            && enforce_mailed.0 == 2
            && badcert.1.iter().any(|(_, _, n)| *n >= 2)
            && testing.1.iter().map(|(_, _, n)| n).sum::<u64>() == 1;
        if done {
            assert!(enforce_posted.1.is_empty(), "{enforce_posted:?}");
            assert_eq!(badcert.0, 0);
            assert!(
                badcert
                    .1
                    .iter()
                    .all(|(kind, mx, _)| kind == "certificate-host-mismatch"
                        && mx == "mx.other.example"),
                "{badcert:?}"
            );
            assert_eq!(
                testing,
                (
                    0,
                    vec![("validation-failure".into(), "mx.other.example".into(), 1)]
                ),
                "the MX is not listed; the mail went anyway"
            );
            let report = posted
                .iter()
                .find(|r| r["policies"][0]["policy"]["policy-domain"] == "enforce.example")
                .unwrap();
            assert_eq!(report["organization-name"], "Test Relay");
            assert_eq!(report["contact-info"], "postmaster@relay.test");
            let policy = &report["policies"][0]["policy"];
            assert_eq!(policy["policy-type"], "sts");
            assert_eq!(policy["mx-host"][0], "mx.good.example");
            assert!(
                policy["policy-string"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|l| l == "mode: enforce"),
                "{policy}"
            );
            assert!(report["date-range"]["start-datetime"].is_string());
            break;
        }
        assert!(
            start_time.elapsed() < Duration::from_secs(30),
            "posted {posted:#?}\nmailed {mailed:#?}\n{}",
            relay.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Only testing.example's mail arrived at the MX over TLS besides enforce.example's.
    let domains = world.delivered_domains(3, &relay).await;
    assert_eq!(
        domains,
        ["enforce.example", "enforce.example", "testing.example"]
    );
    relay
        .wait_metric("postern_tls_reports_total{result=\"sent\"}", 3.0, WAIT)
        .await;
}
