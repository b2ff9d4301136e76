//! Relay reconcile scenarios against kube's mocked API service (an in-memory fake behind
//! tower-test) and a real nats-server.
#![allow(clippy::unwrap_used)]

#[path = "support/fake_api.rs"]
mod fake_api;
mod support;

use std::sync::Arc;

use fake_api::FakeApi;
use k8s_openapi::jiff::Timestamp;
use postern_e2e::NatsServer;
use postern_operator::api::Relay;
use postern_operator::context::Context;
use postern_operator::domain::verify::TxtLookup;
use postern_operator::relay;
use serde_json::{Value, json};

const NS: &str = "/api/v1/namespaces/default";
const APPS: &str = "/apis/apps/v1/namespaces/default";
const RELAY: &str = "/apis/postern.io/v1alpha1/namespaces/default/relays/mail";

/// DNS that knows nothing (Relays do not look anything up).
struct NoDns;
impl TxtLookup for NoDns {
    fn txt<'a>(
        &'a self,
        _: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<Vec<String>, String>> {
        Box::pin(async { Ok(Vec::new()) })
    }
}

struct Harness {
    api: FakeApi,
    ctx: Arc<Context>,
    nats: NatsServer,
    clock: Arc<std::sync::Mutex<Timestamp>>,
}

impl Harness {
    fn start(spec: Value) -> Harness {
        Harness::start_with(spec, true)
    }

    fn start_with(spec: Value, keda: bool) -> Harness {
        Harness::start_on(NatsServer::start(), spec, keda, |_| {})
    }

    fn start_on(
        nats: NatsServer,
        spec: Value,
        keda: bool,
        tweak: impl FnOnce(&mut Context),
    ) -> Harness {
        let (client, api) = FakeApi::start();
        // The Relay names no NATS: the operator's (`--nats-url`, `--stream-replicas`) is used.
        api.put(RELAY, json!({
            "apiVersion": "postern.io/v1alpha1", "kind": "Relay",
            "metadata": { "name": "mail", "namespace": "default", "uid": "relay-uid", "generation": 1, "resourceVersion": "1" },
            "spec": spec,
        }));
        let start: Timestamp = "2026-11-28T12:00:00Z".parse().unwrap();
        let clock = Arc::new(std::sync::Mutex::new(start));
        let now = clock.clone();
        let mut ctx = Context::with_clock(
            client,
            Arc::new(NoDns),
            Box::new(move || *now.lock().unwrap()),
        );
        ctx.keda = keda;
        ctx.nats_url = Some(nats.url());
        ctx.nats_monitoring_endpoint = Some(nats.monitoring_endpoint());
        ctx.stream_replicas = Some(1);
        tweak(&mut ctx);
        let ctx = Arc::new(ctx);
        Harness {
            api,
            ctx,
            nats,
            clock,
        }
    }

    fn advance_minutes(&self, minutes: i64) {
        *self.clock.lock().unwrap() += k8s_openapi::jiff::SignedDuration::from_mins(minutes);
    }

    fn relay(&self) -> Relay {
        serde_json::from_value(self.api.get(RELAY).unwrap()).unwrap()
    }

    async fn reconcile(&self) -> Vec<String> {
        self.api.take_log();
        relay::reconcile(Arc::new(self.relay()), self.ctx.clone())
            .await
            .unwrap();
        self.api.take_log()
    }

    fn condition(&self, kind: &str) -> (String, String, String) {
        let relay = self.api.get(RELAY).unwrap();
        let condition = relay["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == kind)
            .unwrap_or_else(|| panic!("no {kind} condition"))
            .clone();
        let text = |k: &str| condition[k].as_str().unwrap().to_string();
        (text("status"), text("reason"), text("message"))
    }

    async fn stream_exists(&self, name: &str) -> bool {
        let client = async_nats::connect(self.nats.url()).await.unwrap();
        async_nats::jetstream::new(client)
            .get_stream(name)
            .await
            .is_ok()
    }
}

fn writes(log: &[String]) -> Vec<&String> {
    log.iter().filter(|l| !l.starts_with("GET ")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_every_object_the_stream_and_an_honest_status() {
    let h = Harness::start(json!({}));
    let log = h.reconcile().await;
    for path in [
        format!("{NS}/serviceaccounts/mail"),
        format!("{NS}/configmaps/mail-config"),
        format!("{NS}/secrets/mail-tls"),
        format!("{NS}/services/mail"),
        format!("{NS}/services/mail-metrics"),
        format!("{APPS}/deployments/mail-ingress"),
        format!("{APPS}/deployments/mail-delivery"),
        "/apis/policy/v1/namespaces/default/poddisruptionbudgets/mail-ingress".into(),
        "/apis/autoscaling/v2/namespaces/default/horizontalpodautoscalers/mail-delivery".into(),
    ] {
        assert!(
            h.api.get(&path).is_some(),
            "{path} was not created; requests: {log:#?}"
        );
    }
    let secret = h.api.get(&format!("{NS}/secrets/mail-tls")).unwrap();
    assert_eq!(secret["type"], "kubernetes.io/tls");
    assert!(h.stream_exists("POSTERN_MAIL").await);

    assert_eq!(h.condition("Degraded").0, "False");
    assert_eq!(h.condition("QueueReady").0, "True");
    assert_eq!(h.condition("CertificateReady").1, "SelfSigned");
    let (ready, _, message) = h.condition("Ready");
    assert_eq!(ready, "False", "no pod is ready yet");
    assert!(message.contains("no ready ingress pod"), "{message}");
    assert_eq!(h.condition("Progressing").0, "True");
    let status = &h.api.get(RELAY).unwrap()["status"];
    assert_eq!(status["queueLag"], 0);
    assert_eq!(status["observedGeneration"], 1);
    assert_eq!(status["stream"], "POSTERN_MAIL");
    assert_eq!(status["endpoints"][0], "mail.default.svc:25");
    assert!(
        h.api.paths().iter().any(|p| p.contains("/events/")),
        "an event was published"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_relay_writes_nothing() {
    let h = Harness::start(json!({}));
    h.reconcile().await;
    let log = h.reconcile().await;
    assert!(
        writes(&log).is_empty(),
        "second reconcile wrote: {:#?}",
        writes(&log)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spec_change_rewrites_only_what_it_changes() {
    let h = Harness::start(json!({}));
    h.reconcile().await;
    let mut relay = h.api.get(RELAY).unwrap();
    relay["spec"]["delivery"] = json!({ "concurrency": 7 });
    relay["metadata"]["generation"] = json!(2);
    h.api.put(RELAY, relay);
    let log = h.reconcile().await;
    let mut written: Vec<&str> = writes(&log)
        .into_iter()
        .map(|l| l.rsplit('/').next().unwrap())
        .collect();
    written.sort();
    // The ConfigMap, both Deployments (the restart hash changed) and the status.
    assert_eq!(
        written,
        ["mail-config", "mail-delivery", "mail-ingress", "status"],
        "{log:#?}"
    );
    let config = h.api.get(&format!("{NS}/configmaps/mail-config")).unwrap();
    assert!(
        config["data"]["config.yaml"]
            .as_str()
            .unwrap()
            .contains("concurrency: 7")
    );
    assert_eq!(h.api.get(RELAY).unwrap()["status"]["observedGeneration"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicts_are_retried() {
    let h = Harness::start(json!({}));
    h.api.conflict_next(2);
    let log = h.reconcile().await;
    // The first write is the self-signed certificate's Secret.
    let patches = log
        .iter()
        .filter(|l| l.ends_with("/secrets/mail-tls") && l.starts_with("PATCH"))
        .count();
    assert_eq!(patches, 3, "two conflicts, then success: {log:#?}");
    assert!(h.api.get(&format!("{NS}/secrets/mail-tls")).is_some());
    assert_eq!(h.condition("Degraded").0, "False");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_secret_degrades_the_relay_and_names_it() {
    let h = Harness::start(json!({ "ingress": { "usersSecret": { "name": "smtp-users" } } }));
    let log = h.reconcile().await;
    let (degraded, reason, message) = h.condition("Degraded");
    assert_eq!(
        (degraded.as_str(), reason.as_str()),
        ("True", "SecretNotFound")
    );
    assert!(
        message.contains("spec.ingress.usersSecret") && message.contains("smtp-users"),
        "{message}"
    );
    assert_eq!(h.condition("Ready").0, "False");
    assert!(
        h.api
            .get(&format!("{APPS}/deployments/mail-ingress"))
            .is_none(),
        "{log:#?}"
    );

    // The Secret appears: the relay recovers.
    h.api.put(
        &format!("{NS}/secrets/smtp-users"),
        json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": { "name": "smtp-users", "namespace": "default" },
            "data": { "users": "YWxpY2U6JGFyZ29uMmlkJA==" },
        }),
    );
    h.reconcile().await;
    assert_eq!(h.condition("Degraded").0, "False");
    assert!(
        h.api
            .get(&format!("{APPS}/deployments/mail-ingress"))
            .is_some()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dane_trust_anchors_come_from_a_secret_the_delivery_pods_mount() {
    let h = Harness::start(json!({ "delivery": { "dane": {
        "trustAnchorSecret": { "name": "dnssec-anchors", "key": "root.keys" },
    } } }));
    h.reconcile().await;
    let (degraded, reason, message) = h.condition("Degraded");
    assert_eq!(
        (degraded.as_str(), reason.as_str()),
        ("True", "SecretNotFound")
    );
    assert!(
        message.contains("spec.delivery.dane.trustAnchorSecret")
            && message.contains("dnssec-anchors"),
        "{message}"
    );

    h.api.put(
        &format!("{NS}/secrets/dnssec-anchors"),
        json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": { "name": "dnssec-anchors", "namespace": "default" },
            "data": { "root.keys": "LiBJTiBETlNLRVkgMjU3IDMgMTUgQUFBQQ==" },
        }),
    );
    h.reconcile().await;
    assert_eq!(h.condition("Degraded").0, "False");
    let config = h.api.get(&format!("{NS}/configmaps/mail-config")).unwrap();
    let config = config["data"]["config.yaml"].as_str().unwrap();
    assert!(
        config.contains("trustAnchorFile: /etc/postern/dane/root.keys"),
        "{config}"
    );
    let delivery = h
        .api
        .get(&format!("{APPS}/deployments/mail-delivery"))
        .unwrap();
    let pod = &delivery["spec"]["template"]["spec"];
    assert_eq!(
        pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|v| v["secret"]["secretName"] == "dnssec-anchors")
            .count(),
        1
    );
    let mounts = pod["containers"][0]["volumeMounts"].as_array().unwrap();
    assert!(
        mounts.iter().any(|m| m["mountPath"] == "/etc/postern/dane"),
        "{mounts:?}"
    );
    let ingress = h
        .api
        .get(&format!("{APPS}/deployments/mail-ingress"))
        .unwrap();
    assert!(
        !ingress.to_string().contains("dnssec-anchors"),
        "ingress pods need no trust anchors"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_spec_is_reported_with_the_field() {
    let h =
        Harness::start(json!({ "ingress": { "allowedNetworks": ["10.0.0.0/8", "not-a-net"] } }));
    h.reconcile().await;
    let (degraded, reason, message) = h.condition("Degraded");
    assert_eq!(
        (degraded.as_str(), reason.as_str()),
        ("True", "InvalidSpec")
    );
    assert!(
        message.contains("spec.ingress.allowedNetworks[1]"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_keeps_the_stream_unless_the_spec_says_otherwise() {
    let h = Harness::start(json!({ "nats": { "deleteStreamWithRelay": true } }));
    // kube's finalizer helper adds the finalizer and waits for the change it made to come back
    // through the watch, which runs the reconcile again.
    let log = h.reconcile().await;
    assert_eq!(writes(&log), [&format!("PATCH {RELAY}")], "{log:#?}");
    assert_eq!(
        h.api.get(RELAY).unwrap()["metadata"]["finalizers"],
        json!(["postern.io/delete-stream"])
    );
    h.reconcile().await;
    assert!(h.stream_exists("POSTERN_MAIL").await);
    let mut relay = h.api.get(RELAY).unwrap();
    relay["metadata"]["deletionTimestamp"] = json!("2026-11-28T12:00:00Z");
    h.api.put(RELAY, relay);
    h.reconcile().await;
    assert!(
        !h.stream_exists("POSTERN_MAIL").await,
        "the stream was deleted"
    );
    assert!(
        h.api.get(RELAY).is_none(),
        "its last finalizer removed, the Relay is gone"
    );

    // Turned off, the finalizer goes; without the setting nothing holds deletion up and the
    // stream stays.
    let h = Harness::start(json!({ "nats": { "deleteStreamWithRelay": true } }));
    h.reconcile().await;
    let mut relay = h.api.get(RELAY).unwrap();
    relay["spec"]["nats"]["deleteStreamWithRelay"] = json!(false);
    h.api.put(RELAY, relay);
    h.reconcile().await;
    assert_eq!(
        h.api.get(RELAY).unwrap()["metadata"]["finalizers"],
        json!([])
    );

    let h = Harness::start(json!({}));
    h.reconcile().await;
    assert!(h.api.get(RELAY).unwrap()["metadata"]["finalizers"].is_null());
    let mut relay = h.api.get(RELAY).unwrap();
    relay["metadata"]["deletionTimestamp"] = json!("2026-11-28T12:00:00Z");
    h.api.put(RELAY, relay);
    let log = h.reconcile().await;
    assert!(writes(&log).is_empty(), "{log:#?}");
    assert!(h.stream_exists("POSTERN_MAIL").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_nats_is_reported_not_fatal() {
    let h = Harness::start(json!({}));
    let mut relay = h.api.get(RELAY).unwrap();
    let closed = postern_e2e::ClosedPort::new();
    relay["spec"]["nats"]["url"] = json!(format!("nats://127.0.0.1:{}", closed.port()));
    h.api.put(RELAY, relay);
    h.reconcile().await;
    let (ready, reason, _) = h.condition("QueueReady");
    assert_eq!(
        (ready.as_str(), reason.as_str()),
        ("False", "NatsUnreachable")
    );
    assert!(
        h.api
            .get(&format!("{APPS}/deployments/mail-ingress"))
            .is_some()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cert_manager_certificate_is_reported_as_cert_manager_sees_it() {
    let h = Harness::start(
        json!({ "ingress": { "tls": { "issuerRef": { "name": "letsencrypt", "kind": "ClusterIssuer" } } } }),
    );
    h.reconcile().await;
    assert_eq!(h.condition("CertificateReady").1, "CertManagerMissing");
    assert!(
        h.api.get(&format!("{NS}/secrets/mail-tls")).is_none(),
        "no self-signed certificate"
    );

    h.api.put(
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/certificates.cert-manager.io",
        json!({ "metadata": { "name": "certificates.cert-manager.io" } }),
    );
    h.reconcile().await;
    let path = "/apis/cert-manager.io/v1/namespaces/default/certificates/mail-tls";
    let mut certificate = h.api.get(path).unwrap();
    assert_eq!(certificate["spec"]["issuerRef"]["kind"], "ClusterIssuer");
    assert_eq!(certificate["spec"]["dnsNames"], json!(["mail.default.svc"]));
    assert_eq!(h.condition("CertificateReady").1, "Issuing");

    certificate["status"] = json!({ "conditions": [{ "type": "Ready", "status": "True" }] });
    h.api.put(path, certificate);
    h.reconcile().await;
    assert_eq!(
        h.condition("CertificateReady"),
        (
            "True".into(),
            "Issued".into(),
            "cert-manager issued Certificate mail-tls".into()
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_once_pods_are_ready_with_the_load_balancer_address() {
    let h = Harness::start(json!({}));
    h.reconcile().await;
    assert_eq!(h.condition("Ready").0, "False");
    for component in ["ingress", "delivery"] {
        let path = format!("{APPS}/deployments/mail-{component}");
        let mut deployment = h.api.get(&path).unwrap();
        deployment["metadata"]["generation"] = json!(1);
        deployment["status"] = json!({ "observedGeneration": 1, "replicas": 2, "updatedReplicas": 2, "readyReplicas": 2 });
        deployment["spec"]["replicas"] = json!(2);
        h.api.put(&path, deployment);
    }
    let mut service = h.api.get(&format!("{NS}/services/mail")).unwrap();
    service["status"] = json!({ "loadBalancer": { "ingress": [{ "ip": "203.0.113.25" }] } });
    h.api.put(&format!("{NS}/services/mail"), service);
    h.reconcile().await;
    assert_eq!(
        h.condition("Ready"),
        (
            "True".into(),
            "Ready".into(),
            "accepting and delivering mail".into()
        )
    );
    assert_eq!(h.condition("Progressing").0, "False");
    let status = &h.api.get(RELAY).unwrap()["status"];
    assert_eq!(status["ingressReplicas"], 2);
    assert_eq!(status["deliveryReplicas"], 2);
    assert_eq!(
        status["endpoints"],
        json!(["203.0.113.25:25", "203.0.113.25:587", "203.0.113.25:465"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_moves_to_keda_when_it_appears_unless_disabled() {
    const KEDA_CRD: &str =
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/scaledobjects.keda.sh";
    let hpa = "/apis/autoscaling/v2/namespaces/default/horizontalpodautoscalers/mail-delivery";
    let scaled = "/apis/keda.sh/v1alpha1/namespaces/default/scaledobjects/mail-delivery";
    let h = Harness::start(json!({}));
    h.reconcile().await;
    assert!(h.api.get(hpa).is_some());
    h.api.put(
        KEDA_CRD,
        json!({ "metadata": { "name": "scaledobjects.keda.sh" } }),
    );
    h.reconcile().await;
    assert!(h.api.get(scaled).is_some(), "ScaledObject created");
    assert!(
        h.api.get(hpa).is_none(),
        "the CPU autoscaler is removed so that they do not fight"
    );

    let h = Harness::start_with(json!({}), false);
    h.api.put(
        KEDA_CRD,
        json!({ "metadata": { "name": "scaledobjects.keda.sh" } }),
    );
    h.reconcile().await;
    assert!(h.api.get(hpa).is_some());
    assert!(h.api.get(scaled).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_by_others_are_undone_at_the_next_resync() {
    let h = Harness::start(json!({}));
    h.reconcile().await;
    let path = format!("{NS}/configmaps/mail-config");
    let original = h.api.get(&path).unwrap();
    let mut edited = original.clone();
    edited["data"]["config.yaml"] = json!("hostname: edited-by-hand\n");
    h.api.put(&path, edited);

    h.advance_minutes(1);
    let log = h.reconcile().await;
    assert!(writes(&log).is_empty(), "{log:#?}");
    assert_eq!(
        h.api.get(&path).unwrap()["data"]["config.yaml"],
        "hostname: edited-by-hand\n"
    );

    h.advance_minutes(10);
    h.reconcile().await;
    assert_eq!(
        h.api.get(&path).unwrap()["data"],
        original["data"],
        "restored within the resync period"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_relaying_through_a_load_balancer_is_a_warning() {
    let h = Harness::start(json!({}));
    h.reconcile().await;
    let (restricted, reason, message) = h.condition("RelayRestricted");
    assert_eq!(
        (restricted.as_str(), reason.as_str()),
        ("True", "AuthRequiredOutside"),
        "{message}"
    );
    let service = h.api.get(&format!("{NS}/services/mail")).unwrap();
    assert_eq!(service["spec"]["type"], "ClusterIP");

    let mut relay = h.api.get(RELAY).unwrap();
    relay["spec"]["ingress"] = json!({
        "service": { "type": "LoadBalancer" },
        "allowedNetworks": ["10.0.0.0/8"],
    });
    relay["metadata"]["generation"] = json!(2);
    h.api.put(RELAY, relay);
    let log = h.reconcile().await;
    let (restricted, reason, message) = h.condition("RelayRestricted");
    assert_eq!(
        (restricted.as_str(), reason.as_str()),
        ("False", "UnauthenticatedRelayExposed")
    );
    assert!(
        message.contains("10.0.0.0/8 relay without AUTH"),
        "{message}"
    );
    // Said once as a Warning event, and the Relay still works.
    let events: Vec<Value> = h
        .api
        .paths()
        .iter()
        .filter(|p| p.contains("/events/"))
        .map(|p| h.api.get(p).unwrap())
        .filter(|e| e["reason"] == "UnauthenticatedRelayExposed")
        .collect();
    assert_eq!(events.len(), 1, "{log:?}");
    assert_eq!(events[0]["type"], "Warning");
    assert_eq!(h.condition("Degraded").0, "False");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_on_the_operators_nats_gets_its_token_and_ca() {
    let token = "chart-generated-token";
    let pki = postern_e2e::TestPki::new();
    let nats = NatsServer::start_with(
        Some(token.into()),
        Some((pki.cert_file.clone(), pki.key_file.clone())),
    );
    let h = Harness::start_on(nats, json!({}), false, |ctx| {
        ctx.nats_token_secret = Some("postern-system/postern-nats-token".parse().unwrap());
        ctx.nats_ca_secret = Some("postern-system/postern-nats-tls".parse().unwrap());
    });
    use base64::Engine;
    let ca = base64::engine::general_purpose::STANDARD.encode(&pki.ca_pem);
    h.api.put(
        "/api/v1/namespaces/postern-system/secrets/postern-nats-tls",
        json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": "postern-nats-tls", "namespace": "postern-system" }, "data": { "ca.crt": ca } }),
    );
    // The operator's token Secret is not there yet: said, naming the flag.
    h.reconcile().await;
    let (degraded, reason, message) = h.condition("Degraded");
    assert_eq!(
        (degraded.as_str(), reason.as_str()),
        ("True", "SecretNotFound")
    );
    assert!(message.contains("--nats-token-secret"), "{message}");

    let encoded = base64::engine::general_purpose::STANDARD.encode(token);
    h.api.put(
        "/api/v1/namespaces/postern-system/secrets/postern-nats-token",
        json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": "postern-nats-token", "namespace": "postern-system" }, "data": { "token": encoded } }),
    );
    h.reconcile().await;
    assert_eq!(h.condition("Degraded").0, "False");
    // Copied next to the Relay, mounted by its pods and named in their config.
    let copy = h.api.get(&format!("{NS}/secrets/mail-nats-token")).unwrap();
    assert_eq!(copy["data"]["token"], encoded);
    assert_eq!(copy["metadata"]["ownerReferences"][0]["kind"], "Relay");
    let config = h.api.get(&format!("{NS}/configmaps/mail-config")).unwrap();
    let config = config["data"]["config.yaml"].as_str().unwrap();
    assert!(
        config.contains("tokenFile: /etc/postern/nats-token/token"),
        "{config}"
    );
    for deployment in ["mail-ingress", "mail-delivery"] {
        let d = h
            .api
            .get(&format!("{APPS}/deployments/{deployment}"))
            .unwrap();
        let volumes = d["spec"]["template"]["spec"]["volumes"].to_string();
        assert!(
            volumes.contains("mail-nats-token"),
            "{deployment}: {volumes}"
        );
    }
    // The operator reached the token-protected server: the stream is there.
    let (ready, reason, message) = h.condition("QueueReady");
    assert_eq!(
        (ready.as_str(), reason.as_str()),
        ("True", "StreamReady"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fields_others_own_survive_the_resync() {
    let h = Harness::start(json!({}));
    h.reconcile().await;
    let deployment = format!("{APPS}/deployments/mail-delivery");
    // The autoscaler sets replicas (the operator leaves them out); someone annotates.
    h.api.edit(
        &deployment,
        "horizontal-pod-autoscaler",
        json!({ "spec": { "replicas": 5 } }),
    );
    h.api.edit(
        &deployment,
        "kubectl-annotate",
        json!({ "metadata": { "annotations": { "example.com/owner": "mail-team" } } }),
    );
    // And someone edits a field the operator owns.
    h.api.edit(
        &deployment,
        "kubectl-edit",
        json!({ "spec": { "minReadySeconds": 30, "revisionHistoryLimit": 1 } }),
    );
    let before = h.api.get(&deployment).unwrap();

    h.advance_minutes(11);
    h.reconcile().await;
    let after = h.api.get(&deployment).unwrap();
    assert_eq!(
        after["spec"]["replicas"], 5,
        "the autoscaler's replicas stay"
    );
    assert_eq!(
        after["metadata"]["annotations"]["example.com/owner"],
        "mail-team"
    );
    // Fields only the editor set stay too; what the operator sets is its own again.
    assert_eq!(after["spec"]["minReadySeconds"], 30);
    assert_eq!(
        after["spec"]["template"], before["spec"]["template"],
        "the pod template did not change"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fake_refuses_an_apply_over_another_managers_field() {
    use kube::api::{Patch, PatchParams};
    let (client, api) = FakeApi::start();
    let config_maps: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
        kube::Api::namespaced(client, "default");
    let apply = |manager: &str, value: &str| {
        let body = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": { "name": "x", "namespace": "default" },
            "data": { "key": value },
        });
        (PatchParams::apply(manager), body)
    };
    let (params, body) = apply("postern-operator", "a");
    config_maps
        .patch("x", &params, &Patch::Apply(&body))
        .await
        .unwrap();
    // Another manager changing that field without force: 409, nothing changed.
    let (params, body) = apply("someone-else", "b");
    let err = config_maps
        .patch("x", &params, &Patch::Apply(&body))
        .await
        .unwrap_err();
    assert!(postern_operator::apply::is_status(&err, 409), "{err}");
    assert!(err.to_string().contains(".data.key"), "{err}");
    assert_eq!(
        api.get(&format!("{NS}/configmaps/x")).unwrap()["data"]["key"],
        "a"
    );
    // With force it takes the field; the same value is no conflict.
    let (params, body) = apply("someone-else", "b");
    config_maps
        .patch("x", &params.force(), &Patch::Apply(&body))
        .await
        .unwrap();
    assert_eq!(
        api.get(&format!("{NS}/configmaps/x")).unwrap()["data"]["key"],
        "b"
    );
    let (params, body) = apply("postern-operator", "b");
    config_maps
        .patch("x", &params, &Patch::Apply(&body))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_counts_ready_waiting_and_dead_mail_apart() {
    let h = Harness::start(json!({}));
    h.reconcile().await;
    let js = async_nats::jetstream::new(async_nats::connect(h.nats.url()).await.unwrap());
    let publish = |subject: &'static str, schedule: bool| {
        let js = js.clone();
        async move {
            let mut headers = async_nats::HeaderMap::new();
            if schedule {
                headers.insert("Nats-Schedule", "@at 2099-01-01T00:00:00Z");
                headers.insert("Nats-Schedule-Target", "postern.postern_mail.example_org");
            }
            js.publish_with_headers(subject, headers, "entry".into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
    };
    publish("postern.postern_mail.example_org", false).await;
    publish("postern.postern_mail.wait.a.1", true).await;
    publish("postern.postern_mail.wait.b.1", true).await;
    publish("postern.postern_mail_dead.example_org", false).await;
    // The ready entry has been due for over a second by the time the status is written.
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    h.reconcile().await;
    let status = h.api.get(RELAY).unwrap()["status"].clone();
    assert!(
        status["queueOldestReadySeconds"].as_u64().unwrap() >= 1,
        "{status}"
    );
    assert_eq!(
        (
            &status["queueLag"],
            &status["queueWaiting"],
            &status["queueInFlight"],
            &status["queueDeadLetters"]
        ),
        (&json!(1), &json!(2), &json!(0), &json!(1)),
        "{status}"
    );
}

/// Warning events about a Relay with `reason`.
fn warnings(h: &Harness, reason: &str) -> usize {
    h.api
        .paths()
        .iter()
        .filter(|p| p.contains("/events/"))
        .map(|p| h.api.get(p).unwrap())
        .filter(|e| e["reason"] == reason && e["type"] == "Warning")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_servers_sync_setting_is_reported_and_held_against_the_spec() {
    // nats-server's default: fsync every two minutes.
    let h = Harness::start(json!({}));
    h.reconcile().await;
    let (durable, reason, message) = h.condition("QueueDurable");
    assert_eq!((durable.as_str(), reason.as_str()), ("True", "NotRequired"));
    assert!(message.contains("syncs every 2m"), "{message}");
    assert!(message.contains("in the last 2m"), "{message}");
    assert_eq!(h.relay().status.unwrap().nats_sync.as_deref(), Some("2m"));

    // Requiring a sync before every acknowledgement: the servers do not, and it is said.
    let mut relay = h.api.get(RELAY).unwrap();
    relay["spec"]["nats"] = json!({ "sync": "always" });
    relay["metadata"]["generation"] = json!(2);
    h.api.put(RELAY, relay);
    h.reconcile().await;
    let (durable, reason, message) = h.condition("QueueDurable");
    assert_eq!(
        (durable.as_str(), reason.as_str()),
        ("False", "SyncWeakerThanRequired")
    );
    assert!(
        message.starts_with("spec.nats.sync requires always, but ")
            && message.contains(&format!(
                "(127.0.0.1:{}) syncs every 2m",
                h.nats.monitoring_port
            )),
        "{message}"
    );
    assert_eq!(warnings(&h, "SyncWeakerThanRequired"), 1);
    // Mail still flows: the Relay is not degraded by it.
    assert_eq!(h.condition("Degraded").0, "False");
    assert_eq!(h.condition("QueueReady").0, "True");

    // An interval the servers keep to.
    let mut relay = h.api.get(RELAY).unwrap();
    relay["spec"]["nats"] = json!({ "sync": "5m" });
    relay["metadata"]["generation"] = json!(3);
    h.api.put(RELAY, relay);
    h.reconcile().await;
    let (durable, reason, _) = h.condition("QueueDurable");
    assert_eq!(
        (durable.as_str(), reason.as_str()),
        ("True", "SyncAsRequired")
    );

    // One a minute is more than these servers do.
    let mut relay = h.api.get(RELAY).unwrap();
    relay["spec"]["nats"] = json!({ "sync": "1m" });
    relay["metadata"]["generation"] = json!(4);
    h.api.put(RELAY, relay);
    h.reconcile().await;
    let (durable, _, message) = h.condition("QueueDurable");
    assert_eq!(durable, "False", "{message}");
    assert!(
        message.starts_with("spec.nats.sync requires 1m"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_that_sync_always_meet_every_requirement() {
    let h = Harness::start_on(
        NatsServer::start_syncing("always"),
        json!({ "nats": { "sync": "always" } }),
        true,
        |_| {},
    );
    h.reconcile().await;
    let (durable, reason, message) = h.condition("QueueDurable");
    assert_eq!(
        (durable.as_str(), reason.as_str()),
        ("True", "SyncAsRequired"),
        "{message}"
    );
    assert!(message.contains("survives a power loss"), "{message}");
    assert_eq!(
        h.relay().status.unwrap().nats_sync.as_deref(),
        Some("always")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_monitoring_endpoint_leaves_durability_unknown() {
    let closed = postern_e2e::ClosedPort::new();
    let endpoint = format!("127.0.0.1:{}", closed.port());
    let h = Harness::start(json!({ "nats": { "sync": "always", "monitoringEndpoint": endpoint } }));
    h.reconcile().await;
    let (durable, reason, message) = h.condition("QueueDurable");
    assert_eq!(
        (durable.as_str(), reason.as_str()),
        ("Unknown", "MonitoringUnreachable")
    );
    assert!(
        message.starts_with(&format!(
            "cannot check spec.nats.sync always: GET http://{endpoint}/varz: "
        )),
        "{message}"
    );
    assert_eq!(h.relay().status.unwrap().nats_sync, None);
    // The queue itself is fine.
    assert_eq!(h.condition("QueueReady").0, "True");
}
