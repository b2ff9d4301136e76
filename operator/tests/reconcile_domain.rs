//! Domain reconcile scenarios against kube's mocked API service and a DNS server on loopback.
#![allow(clippy::unwrap_used)]

#[path = "support/fake_api.rs"]
mod fake_api;

use std::sync::Arc;

use fake_api::FakeApi;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use postern_e2e::DnsServer;
use postern_operator::api::Domain;
use postern_operator::context::Context;
use postern_operator::domain;
use serde_json::{Value, json};

const DOMAIN: &str = "/apis/postern.io/v1alpha1/namespaces/default/domains/example-com";
const SECRET: &str = "/api/v1/namespaces/default/secrets/example-com-dkim";
const RELAY: &str = "/apis/postern.io/v1alpha1/namespaces/default/relays/mail";

/// One operator context for the whole test (so DNS answers are not cached between checks), on
/// a clock the test sets.
struct Operator {
    ctx: Arc<Context>,
    clock: Arc<std::sync::Mutex<Timestamp>>,
}

impl Operator {
    fn new(client: &Client, dns: &DnsServer) -> Operator {
        let clock = Arc::new(std::sync::Mutex::new(Timestamp::UNIX_EPOCH));
        let now = clock.clone();
        let lookup = domain::verify::resolver(&[dns.addr]).unwrap();
        let ctx = Context::with_clock(
            client.clone(),
            lookup,
            Box::new(move || *now.lock().unwrap()),
        );
        Operator {
            ctx: Arc::new(ctx),
            clock,
        }
    }

    async fn reconcile(&self, api: &FakeApi, now: &str) -> Vec<String> {
        let object: Domain = serde_json::from_value(api.get(DOMAIN).unwrap()).unwrap();
        api.take_log();
        self.reconcile_object(object, now).await.unwrap();
        api.take_log()
    }

    /// Reconciles `object` as the controller's cache holds it, which may be older than what
    /// the API server holds.
    async fn reconcile_object(
        &self,
        object: Domain,
        now: &str,
    ) -> Result<kube::runtime::controller::Action, domain::DomainError> {
        *self.clock.lock().unwrap() = now.parse().unwrap();
        domain::reconcile(Arc::new(object), self.ctx.clone()).await
    }
}

fn condition(api: &FakeApi, kind: &str) -> (String, String, String) {
    let domain = api.get(DOMAIN).unwrap();
    let c = domain["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == kind)
        .unwrap()
        .clone();
    let text = |k: &str| c[k].as_str().unwrap().to_string();
    (text("status"), text("reason"), text("message"))
}

fn start(spec: Value) -> (Client, FakeApi) {
    let (client, api) = FakeApi::start();
    api.put(DOMAIN, json!({
        "apiVersion": "postern.io/v1alpha1", "kind": "Domain",
        "metadata": { "name": "example-com", "namespace": "default", "uid": "domain-uid", "generation": 1 },
        "spec": spec,
    }));
    api.put(
        RELAY,
        json!({
            "apiVersion": "postern.io/v1alpha1", "kind": "Relay",
            "metadata": { "name": "mail", "namespace": "default", "uid": "relay-uid" }, "spec": {},
            "status": { "conditions": [{ "type": "Ready", "status": "True", "reason": "Ready", "message": "", "lastTransitionTime": "2026-11-28T00:00:00Z" }] },
        }),
    );
    (client, api)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_sign_only_after_dns_serves_them_and_are_never_overwritten() {
    let dns = DnsServer::start().await;
    let (client, api) = start(json!({ "domain": "example.com", "relayRef": { "name": "mail" } }));
    let operator = Operator::new(&client, &dns);

    operator.reconcile(&api, "2026-11-28T12:00:00Z").await;
    let secret = api.get(SECRET).unwrap();
    let files: Vec<&String> = secret["data"].as_object().unwrap().keys().collect();
    assert_eq!(
        files,
        ["postern-ed25519-20261128.pem", "postern-rsa-20261128.pem"]
    );
    assert_eq!(secret["metadata"]["ownerReferences"][0]["kind"], "Domain");
    let status = api.get(DOMAIN).unwrap()["status"].clone();
    assert_eq!(
        status["nextSelectors"],
        json!(["postern-ed25519-20261128", "postern-rsa-20261128"])
    );
    assert_eq!(status["activeSelectors"], json!([]));
    assert_eq!(condition(&api, "DkimReady").1, "AwaitingDns");
    let (verified, reason, message) = condition(&api, "DnsVerified");
    assert_eq!(
        (verified.as_str(), reason.as_str()),
        ("False", "RecordMissing")
    );
    assert!(
        message.contains("_dmarc.example.com TXT is missing"),
        "{message}"
    );
    assert_eq!(condition(&api, "DnsPublished").1, "Manual");
    assert_eq!(condition(&api, "Ready").0, "False");

    // A person publishes the records exactly as status lists them; one is wrong at first.
    publish(&dns, &status);
    dns.txt("_dmarc.example.com", "v=DMARC1; p=reject");
    operator.reconcile(&api, "2026-11-28T12:05:00Z").await;
    let (verified, reason, message) = condition(&api, "DnsVerified");
    assert_eq!(
        (verified.as_str(), reason.as_str()),
        ("False", "RecordDiffers")
    );
    assert!(
        message.contains("_dmarc.example.com TXT is \"v=DMARC1; p=reject\""),
        "{message}"
    );
    // The DKIM records were seen: both keys sign now.
    let status = api.get(DOMAIN).unwrap()["status"].clone();
    assert_eq!(
        status["activeSelectors"],
        json!(["postern-ed25519-20261128", "postern-rsa-20261128"])
    );
    assert_eq!(condition(&api, "DkimReady").0, "True");

    dns.txt("_dmarc.example.com", "v=DMARC1; p=none");
    operator.reconcile(&api, "2026-11-28T12:10:00Z").await;
    assert_eq!(condition(&api, "DnsVerified").0, "True");
    assert_eq!(condition(&api, "Ready").0, "True");

    // The keys in the Secret are the ones first made, and they load into the relay's signer.
    let after = api.get(SECRET).unwrap();
    assert_eq!(after["data"], secret["data"]);
    let dir = tempfile::tempdir().unwrap();
    let mut keys = Vec::new();
    for (file, value) in after["data"].as_object().unwrap() {
        use base64::Engine;
        let pem = base64::engine::general_purpose::STANDARD
            .decode(value.as_str().unwrap())
            .unwrap();
        std::fs::write(dir.path().join(file), pem).unwrap();
        let selector = file.trim_end_matches(".pem").to_string();
        let algorithm = if selector.contains("ed25519") {
            postern_config::DkimAlgorithm::Ed25519
        } else {
            postern_config::DkimAlgorithm::Rsa
        };
        keys.push(postern_config::DkimKeyConfig {
            selector,
            algorithm,
            key_file: dir.path().join(file),
        });
    }
    let signers = postern_relay::dkim::Signers::load(
        &[postern_config::DomainConfig {
            name: "example.com".into(),
            dkim: keys,
        }],
        None,
    )
    .unwrap();
    let signed =
        String::from_utf8(signers.sign(b"From: a@example.com\r\nSubject: x\r\n\r\nhi\r\n"))
            .unwrap();
    assert_eq!(signed.matches("DKIM-Signature:").count(), 2, "{signed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_dns_gets_a_dns_endpoint_when_installed() {
    let dns = DnsServer::start().await;
    let spec = json!({ "domain": "example.com", "relayRef": { "name": "gone" }, "dkim": { "algorithms": ["ed25519"] }, "dns": { "provider": "external-dns" } });
    let (client, api) = start(spec);
    let operator = Operator::new(&client, &dns);
    operator.reconcile(&api, "2026-11-28T12:00:00Z").await;
    assert_eq!(condition(&api, "DnsPublished").1, "ExternalDnsMissing");
    assert_eq!(condition(&api, "Ready").1, "RelayNotFound");

    api.put(
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/dnsendpoints.externaldns.k8s.io",
        json!({ "metadata": { "name": "dnsendpoints.externaldns.k8s.io" } }),
    );
    operator.reconcile(&api, "2026-11-28T12:01:00Z").await;
    assert_eq!(condition(&api, "DnsPublished").0, "True");
    let endpoint = api
        .get(
            "/apis/externaldns.k8s.io/v1alpha1/namespaces/default/dnsendpoints/example-com-records",
        )
        .unwrap();
    let names: Vec<&str> = endpoint["spec"]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["dnsName"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "example.com",
            "postern-ed25519-20261128._domainkey.example.com",
            "_dmarc.example.com"
        ]
    );
    assert_eq!(endpoint["spec"]["endpoints"][0]["recordTTL"], 3600);
}

/// The spec of a Domain of Relay `mail` that signs with ed25519 only.
fn ed25519_only() -> Value {
    json!({
        "domain": "example.com", "relayRef": { "name": "mail" },
        "dkim": { "algorithms": ["ed25519"] },
    })
}

/// Publishes the records `status` lists, exactly as listed.
fn publish(dns: &DnsServer, status: &Value) {
    for record in status["records"].as_array().unwrap() {
        dns.txt(
            record["name"].as_str().unwrap(),
            record["value"].as_str().unwrap(),
        );
    }
}

fn key_files(api: &FakeApi) -> Vec<String> {
    api.get(SECRET).unwrap()["data"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_domain_never_replaces_or_drops_keys() {
    let dns = DnsServer::start().await;
    let (client, api) = start(json!({ "domain": "example.com", "relayRef": { "name": "mail" } }));
    let operator = Operator::new(&client, &dns);
    // The Domain as the watch cache first delivered it, before any status was written.
    let stale: Domain = serde_json::from_value(api.get(DOMAIN).unwrap()).unwrap();
    operator.reconcile(&api, "2026-11-28T12:00:00Z").await;
    let first = api.get(SECRET).unwrap()["data"].clone();
    assert_eq!(
        key_files(&api),
        ["postern-ed25519-20261128.pem", "postern-rsa-20261128.pem"]
    );

    // An annotation change reaches the controller before its own status write does: it
    // reconciles the old object, again and again, and on later days too.
    for now in [
        "2026-11-28T12:00:01Z",
        "2026-11-28T12:00:02Z",
        "2026-11-29T08:00:00Z",
    ] {
        operator.reconcile_object(stale.clone(), now).await.unwrap();
        assert_eq!(api.get(SECRET).unwrap()["data"], first, "at {now}");
    }
    let status = api.get(DOMAIN).unwrap()["status"].clone();
    assert_eq!(
        status["nextSelectors"],
        json!(["postern-ed25519-20261128", "postern-rsa-20261128"])
    );

    // DNS serves the records; the stale object still promotes the keys the Secret holds.
    publish(&dns, &status);
    operator
        .reconcile_object(stale.clone(), "2026-11-29T08:01:00Z")
        .await
        .unwrap();
    let status = api.get(DOMAIN).unwrap()["status"].clone();
    assert_eq!(
        status["activeSelectors"],
        json!(["postern-ed25519-20261128", "postern-rsa-20261128"])
    );
    assert_eq!(condition(&api, "Ready").0, "True");
    assert_eq!(api.get(SECRET).unwrap()["data"], first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrent_write_to_the_key_secret_conflicts_and_loses_nothing() {
    let dns = DnsServer::start().await;
    let (client, api) = start(ed25519_only());
    let operator = Operator::new(&client, &dns);
    operator.reconcile(&api, "2026-11-28T12:00:00Z").await;
    assert_eq!(key_files(&api), ["postern-ed25519-20261128.pem"]);

    // RSA is added; another writer changes the Secret between the read and the write.
    let mut object = api.get(DOMAIN).unwrap();
    object["spec"]["dkim"]["algorithms"] = json!(["ed25519", "rsa2048"]);
    object["metadata"]["generation"] = json!(2);
    api.put(DOMAIN, object);
    api.write_after_read(SECRET);
    let domain: Domain = serde_json::from_value(api.get(DOMAIN).unwrap()).unwrap();
    let err = operator
        .reconcile_object(domain.clone(), "2026-11-28T12:01:00Z")
        .await
        .unwrap_err();
    assert_eq!(err.as_label(), "key_secret", "{err}");
    let secret = api.get(SECRET).unwrap();
    assert_eq!(key_files(&api), ["postern-ed25519-20261128.pem"]);
    assert_eq!(
        secret["metadata"]["annotations"]["example.com/other-writer"],
        "1"
    );

    // Read again, written on top of the other writer's change.
    operator
        .reconcile_object(domain, "2026-11-28T12:01:01Z")
        .await
        .unwrap();
    let secret = api.get(SECRET).unwrap();
    assert_eq!(
        key_files(&api),
        ["postern-ed25519-20261128.pem", "postern-rsa-20261128.pem"]
    );
    assert_eq!(
        secret["metadata"]["annotations"]["example.com/other-writer"],
        "1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_domain_is_not_ready_while_a_signing_key_is_missing() {
    let dns = DnsServer::start().await;
    let (client, api) = start(ed25519_only());
    let operator = Operator::new(&client, &dns);
    operator.reconcile(&api, "2026-11-28T12:00:00Z").await;
    let status = api.get(DOMAIN).unwrap()["status"].clone();
    publish(&dns, &status);
    operator.reconcile(&api, "2026-11-28T12:01:00Z").await;
    assert_eq!(condition(&api, "Ready").0, "True");

    // The private key disappears from the Secret (its state stays).
    let mut secret = api.get(SECRET).unwrap();
    secret["data"] = json!({});
    api.put(SECRET, secret);
    let log = operator.reconcile(&api, "2026-11-28T12:02:00Z").await;
    assert!(
        log.iter()
            .any(|l| l.starts_with("POST") && l.ends_with("/events")),
        "{log:?}"
    );
    let (ready, _, _) = condition(&api, "Ready");
    let (dkim, reason, message) = condition(&api, "DkimReady");
    assert_eq!(
        (ready.as_str(), dkim.as_str(), reason.as_str()),
        ("False", "False", "AwaitingDns"),
        "{message}"
    );
    let status = api.get(DOMAIN).unwrap()["status"].clone();
    assert_eq!(status["activeSelectors"], json!([]));
    // A replacement under a new name; the lost selector is not reused.
    assert_eq!(key_files(&api), ["postern-ed25519-20261128-2.pem"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_is_gone_or_not_ready_makes_its_domains_not_ready() {
    let dns = DnsServer::start().await;
    let (client, api) = start(ed25519_only());
    let operator = Operator::new(&client, &dns);
    operator.reconcile(&api, "2026-11-28T12:00:00Z").await;
    publish(&dns, &api.get(DOMAIN).unwrap()["status"]);
    operator.reconcile(&api, "2026-11-28T12:01:00Z").await;
    assert_eq!(condition(&api, "Ready").0, "True");

    let mut relay = api.get(RELAY).unwrap();
    relay["status"]["conditions"][0]["status"] = json!("False");
    api.put(RELAY, relay.clone());
    operator.reconcile(&api, "2026-11-28T12:01:05Z").await;
    let (ready, reason, message) = condition(&api, "Ready");
    assert_eq!(
        (ready.as_str(), reason.as_str()),
        ("False", "RelayNotReady"),
        "{message}"
    );

    api.delete(RELAY);
    operator.reconcile(&api, "2026-11-28T12:01:10Z").await;
    assert_eq!(condition(&api, "Ready").1, "RelayNotFound");

    // The Domain controller maps a Relay event to the Domains that name it.
    let relay: postern_operator::api::Relay = serde_json::from_value(relay).unwrap();
    let domain: Domain = serde_json::from_value(api.get(DOMAIN).unwrap()).unwrap();
    let mut elsewhere = domain.clone();
    elsewhere.metadata.namespace = Some("other".into());
    let mut other_relay = domain.clone();
    other_relay.metadata.name = Some("other-com".into());
    other_relay.spec.relay_ref.name = "bulk".into();
    let refs = domain::domains_of_relay(
        &[Arc::new(domain), Arc::new(elsewhere), Arc::new(other_relay)],
        &relay,
    );
    let names: Vec<String> = refs
        .iter()
        .map(|r| format!("{}/{}", r.namespace.clone().unwrap(), r.name))
        .collect();
    assert_eq!(names, ["default/example-com"]);
}

/// A DNS server that never answers, and notes the Domain's DnsVerified status each time it is
/// asked.
struct UnansweringDns {
    api: FakeApi,
    seen: std::sync::Mutex<Vec<String>>,
}

impl domain::verify::TxtLookup for UnansweringDns {
    fn txt<'a>(
        &'a self,
        _name: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<Vec<String>, String>> {
        Box::pin(async move {
            let verified = self
                .api
                .get(DOMAIN)
                .and_then(|d| {
                    d["status"]["conditions"]
                        .as_array()?
                        .iter()
                        .find(|c| c["type"] == "DnsVerified")
                        .map(|c| c["status"].as_str().unwrap().to_string())
                })
                .unwrap_or_else(|| "no status".into());
            self.seen.lock().unwrap().push(verified);
            tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
            Ok(Vec::new())
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_dns_neither_hides_the_records_nor_holds_the_reconcile() {
    let (client, api) = start(ed25519_only());
    let dns = Arc::new(UnansweringDns {
        api: api.clone(),
        seen: Default::default(),
    });
    let ctx = Context::with_clock(
        client,
        dns.clone(),
        Box::new(|| "2026-11-28T12:00:00Z".parse().unwrap()),
    );
    let object: Domain = serde_json::from_value(api.get(DOMAIN).unwrap()).unwrap();
    let started = std::time::Instant::now();
    let limit = domain::verify::LOOKUP_TIMEOUT * 2;
    tokio::time::timeout(limit, domain::reconcile(Arc::new(object), Arc::new(ctx)))
        .await
        .expect("the reconcile waits for each lookup in turn")
        .unwrap();
    let took = started.elapsed();
    assert!(took < limit, "{took:?}");
    // While DNS said nothing, status already listed the records to publish.
    let seen = dns.seen.lock().unwrap().clone();
    assert_eq!(seen, ["Unknown", "Unknown", "Unknown"]);
    let (verified, reason, message) = condition(&api, "DnsVerified");
    assert_eq!(
        (verified.as_str(), reason.as_str()),
        ("False", "LookupFailed")
    );
    assert!(message.contains("no answer within 5 s"), "{message}");
}
