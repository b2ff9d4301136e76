//! The validate stage names every invalid field.
#![allow(clippy::unwrap_used)]

use postern_config::{Duration, Sync};
use postern_operator::api::RelaySpec;
use postern_operator::relay::validate::validate;

fn spec(yaml: &str) -> RelaySpec {
    serde_saphyr::from_str(yaml).unwrap()
}

#[test]
fn defaults_are_valid() {
    let valid = validate("mail", &spec("{}")).unwrap();
    // What build needs comes parsed: networks, durations, bounds.
    assert_eq!(valid.allowed_networks.len(), 4);
    assert_eq!(valid.allowed_networks[0].to_string(), "10.0.0.0/8");
    assert_eq!(valid.retry_schedule, None);
    assert_eq!(valid.stream_replicas, 3);
    let valid = validate(
        "mail",
        &spec("delivery: { retry: { schedule: [1m, 2h], maxAge: 3d, delayWarning: 0s } }"),
    )
    .unwrap();
    let schedule: Vec<String> = valid
        .retry_schedule
        .unwrap()
        .iter()
        .map(|d| d.to_string())
        .collect();
    assert_eq!(schedule, ["1m", "2h"]);
    assert_eq!(valid.max_age.unwrap().to_string(), "3d");
    assert!(
        valid.delay_warning.unwrap().get().is_zero(),
        "0s: no delay reports"
    );
}

#[test]
fn each_problem_names_its_field() {
    let err = validate(
        "Mail.Relay",
        &spec(
            r#"
ingress:
  replicas: { min: 5, max: 2 }
  allowedNetworks: ["10.0.0.0/8", "10.0.0.300/8"]
  trustedProxies: ["lb"]
  listeners:
    - { name: smtp, port: 25 }
    - { name: smtp, port: 587, containerPort: 10025 }
    - { name: admin, port: 9090 }
delivery:
  routes:
    - { domain: example.com, host: "mx.example.com" }
  smarthost: { host: "relay.example.net:0" }
  ratePerDestination: "fast"
  destinations:
    - { match: "*.google.com", rate: "100/fortnight" }
    - { match: "mx..example" }
  backoff: { initial: "soon", slowDown: "2h", max: "10s" }
  retry: { schedule: ["1m", "5 minutes"], maxAge: "3w", delayWarning: "soon" }
suppression: { expiry: "a month" }
events:
  maxAge: "a week"
  webhooks:
    - { name: crm, url: "https://crm.example.com/h", secret: { name: s }, timeout: "0s", kinds: [opened] }
    - { name: crm, url: "https://crm.example.com/h", secret: { name: s }, retryFor: "3 days" }
"#,
        ),
    )
    .unwrap_err();
    let problems = err.problems.join("\n");
    for expected in [
        "spec.ingress.allowedNetworks[1]: \"10.0.0.300/8\" is not a CIDR",
        "spec.ingress.trustedProxies[0]: \"lb\" is not a CIDR",
        "spec.ingress.replicas: need 1 <= min <= max, got min 5 max 2",
        "spec.ingress.listeners[1].name: \"smtp\" is used twice",
        "spec.ingress.listeners[1].containerPort: 10025 is used twice",
        "spec.ingress.listeners[2].containerPort: 9090 is the admin port of the pods",
        "spec.delivery.retry.schedule[1]: invalid duration \"5 minutes\"",
        "spec.delivery.retry.maxAge: invalid duration \"3w\"",
        "spec.delivery.retry.delayWarning: invalid duration \"soon\"",
        "spec.suppression.expiry: invalid duration \"a month\"",
        "spec.events.maxAge: invalid duration \"a week\"",
        "spec.events.webhooks[0].timeout: must be greater than zero",
        "spec.events.webhooks[0].kinds[0]: \"opened\" is not one of received, delivered",
        "spec.events.webhooks[1].retryFor: invalid duration \"3 days\"",
        "spec.events.webhooks[1].name: crm is the name of an earlier webhook",
        "spec.delivery.routes[0].host: \"mx.example.com\" is not host:port",
        "spec.delivery.smarthost.host: \"relay.example.net:0\" is not host:port",
        "spec.delivery.ratePerDestination: \"fast\" is not a rate",
        "spec.delivery.destinations[0].rate: \"100/fortnight\" is not a rate",
        "spec.delivery.destinations[1].match: \"mx..example\" is not a domain",
        "spec.delivery.backoff.initial: invalid duration \"soon\"",
        "spec.delivery.backoff.initial: 30s is longer than backoff.max 10s",
        "metadata.name: \"Mail.Relay\" must be at most 47",
    ] {
        assert!(
            problems.contains(expected),
            "missing {expected:?} in:\n{problems}"
        );
    }
    assert_eq!(err.problems.len(), 23, "{problems}");
    let long = "a".repeat(48);
    assert!(validate(&long, &spec("{}")).is_err());
    validate(&"a".repeat(47), &spec("{}")).unwrap();
}

#[test]
fn replica_bounds_default_per_field() {
    use postern_operator::api::{DELIVERY_REPLICAS, INGRESS_REPLICAS};
    let relay = spec("delivery: { replicas: { min: 20 } }\ningress: { replicas: { max: 1 } }");
    let valid = validate("mail", &relay).unwrap();
    assert_eq!(
        (valid.delivery_replicas, valid.ingress_replicas),
        ((20, 20), (1, 1))
    );
    assert_eq!(relay.delivery.replicas.bounds(DELIVERY_REPLICAS), (20, 20));
    assert_eq!(relay.ingress.replicas.bounds(INGRESS_REPLICAS), (1, 1));
    let relay = spec("delivery: { replicas: { max: 4 } }");
    assert_eq!(relay.delivery.replicas.bounds(DELIVERY_REPLICAS), (1, 4));
    assert_eq!(
        spec("{}").ingress.replicas.bounds(INGRESS_REPLICAS),
        (2, 10)
    );

    // The schema the API server checks requires neither bound.
    let crd = serde_json::to_value(&postern_operator::api::crds()[0]).unwrap();
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    for side in ["ingress", "delivery"] {
        let replicas = &schema["properties"][side]["properties"]["replicas"];
        assert!(replicas.get("required").is_none(), "{replicas}");
    }
}

#[test]
fn stream_replicas_are_one_three_or_five() {
    let err = validate("mail", &spec("nats: { streamReplicas: 2 }")).unwrap_err();
    assert_eq!(
        err.problems,
        [
            "spec.nats.streamReplicas: 2 replicas survive no more failures than one fewer; use 1, 3 or 5"
        ]
    );
    for replicas in [1, 3, 5] {
        validate(
            "mail",
            &spec(&format!("nats: {{ streamReplicas: {replicas} }}")),
        )
        .unwrap();
    }
    let crd = serde_json::to_value(&postern_operator::api::crds()[0]).unwrap();
    let field = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
        ["nats"]["properties"]["streamReplicas"];
    assert_eq!(field["enum"], serde_json::json!([1, 3, 5]), "{field}");
}

#[test]
fn sync_is_always_or_a_duration_above_zero() {
    for (sync, problem) in [
        (
            "0s",
            "spec.nats.sync: must be always or a duration greater than zero",
        ),
        (
            "sometimes",
            "spec.nats.sync: \"sometimes\" is neither always nor a duration such as 2m",
        ),
    ] {
        let err = validate("mail", &spec(&format!("nats: {{ sync: {sync} }}"))).unwrap_err();
        assert_eq!(err.problems, [problem]);
    }
    for (sync, parsed) in [
        ("always", Sync::Always),
        ("10s", Sync::Every(Duration::secs(10))),
    ] {
        let valid = validate("mail", &spec(&format!("nats: {{ sync: {sync} }}"))).unwrap();
        assert_eq!(valid.sync, Some(parsed));
    }
    assert_eq!(validate("mail", &spec("{}")).unwrap().sync, None);
    let crd = serde_json::to_value(&postern_operator::api::crds()[0]).unwrap();
    let field = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
        ["nats"]["properties"]["sync"];
    assert_eq!(field["pattern"], "^(always|[0-9]+(ms|s|m|h|d))$", "{field}");
}

#[test]
fn no_internet_client_relays_without_auth_by_default() {
    // Default: a ClusterIP Service, in-cluster (private) clients relay.
    let relay = spec("{}");
    assert_eq!(
        relay.ingress.service.type_,
        postern_operator::api::ServiceType::ClusterIP
    );
    assert_eq!(
        relay.ingress.allowed_networks(),
        ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fd00::/8"]
    );
    assert_eq!(relay.ingress.relay_exposure(), None);

    // Exposed by a load balancer: nobody relays without AUTH unless the spec says so.
    let exposed = spec("ingress: { service: { type: LoadBalancer } }");
    assert!(exposed.ingress.allowed_networks().is_empty());
    assert_eq!(exposed.ingress.relay_exposure(), None);

    // Said so: warned, naming the networks and listeners.
    let open = spec(
        "ingress: { service: { type: LoadBalancer, externalTrafficPolicy: Cluster }, allowedNetworks: [10.0.0.0/8] }",
    );
    let warning = open.ingress.relay_exposure().unwrap();
    for part in [
        "10.0.0.0/8 relay without AUTH on the LoadBalancer Service",
        "listeners smtp, submission, submissions",
        "every client arrives from a node address",
    ] {
        assert!(warning.contains(part), "{warning}");
    }
    // Listeners that read the client address from a PROXY header are not at risk.
    let proxied = spec(
        r#"
ingress:
  service: { type: LoadBalancer }
  allowedNetworks: [10.0.0.0/8]
  listeners: [{ name: smtp, port: 25, proxyProtocol: true }]
"#,
    );
    assert_eq!(proxied.ingress.relay_exposure(), None);
}

#[test]
fn a_balancer_said_to_keep_client_addresses_is_not_warned_about() {
    let kept = spec(
        "ingress: { service: { type: LoadBalancer, preservesClientAddresses: true }, allowedNetworks: [10.0.0.0/8] }",
    );
    assert_eq!(kept.ingress.relay_exposure(), None);
    // Not with externalTrafficPolicy Cluster: nodes rewrite the address whatever the balancer does.
    let snat = spec(
        "ingress: { service: { type: LoadBalancer, preservesClientAddresses: true, externalTrafficPolicy: Cluster }, allowedNetworks: [10.0.0.0/8] }",
    );
    assert!(snat.ingress.relay_exposure().is_some());
}
