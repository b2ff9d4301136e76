//! The build stage: snapshots of every object for a minimal and a full Relay, the rendered
//! config accepted by `postern check-config`, and the objects valid against the Kubernetes
//! 1.33 schema.
#![allow(clippy::unwrap_used)]

mod support;

use std::ffi::OsStr;

use postern_operator::relay::build::DesiredRelay;
use serde_json::Value;
use support::*;

fn object(desired: &DesiredRelay, kind: &str, name: &str) -> Value {
    desired
        .values()
        .into_iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

#[test]
fn minimal_relay_objects() {
    let desired = build(&minimal_inputs()).unwrap();
    insta::assert_yaml_snapshot!("minimal", desired.values());
    assert!(desired.self_signed);
    assert_eq!(
        desired.absent,
        vec![
            (
                "cert-manager.io/v1".into(),
                "Certificate".into(),
                "mail-tls".into()
            ),
            (
                "keda.sh/v1alpha1".into(),
                "ScaledObject".into(),
                "mail-delivery".into()
            ),
        ]
    );
}

#[test]
fn full_relay_objects() {
    let desired = build(&full_inputs()).unwrap();
    insta::assert_yaml_snapshot!("full", desired.values());
    insta::assert_snapshot!("full-config", desired.config_yaml);
    assert!(!desired.self_signed);
}

#[test]
fn every_object_is_owned_by_the_relay() {
    for desired in [
        build(&minimal_inputs()).unwrap(),
        build(&full_inputs()).unwrap(),
    ] {
        for object in &desired.values() {
            let owners = object["metadata"]["ownerReferences"].as_array().unwrap();
            assert_eq!(owners.len(), 1, "{}", object["kind"]);
            assert_eq!(owners[0]["kind"], "Relay");
            assert_eq!(owners[0]["controller"], true);
            assert_eq!(owners[0]["uid"], "6a1f0f3e-8a6e-4f0e-9f00-000000000001");
        }
    }
}

#[test]
fn pods_are_locked_down_and_drain_before_they_stop() {
    let desired = build(&minimal_inputs()).unwrap();
    for component in ["ingress", "delivery"] {
        let deployment = object(&desired, "Deployment", &format!("mail-{component}"));
        let pod = &deployment["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        assert_eq!(pod["automountServiceAccountToken"], false);
        let container = &pod["containers"][0];
        let security = &container["securityContext"];
        assert_eq!(security["readOnlyRootFilesystem"], true);
        assert_eq!(security["allowPrivilegeEscalation"], false);
        assert_eq!(security["capabilities"]["drop"][0], "ALL");
        assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
        assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
        assert_eq!(container["args"][0], component);
        // Replicas belong to the autoscaler, never to the applied Deployment.
        assert!(deployment["spec"].get("replicas").is_none());
        // Kubernetes waits longer than the relay's own drain.
        let grace = pod["terminationGracePeriodSeconds"].as_i64().unwrap();
        assert!(grace > 25, "{component}: {grace}");
    }
    let ingress = object(&desired, "Deployment", "mail-ingress");
    let container = &ingress["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["lifecycle"]["preStop"]["sleep"]["seconds"], 5);
    let service = object(&desired, "Service", "mail");
    assert_eq!(service["spec"]["type"], "ClusterIP");
    assert!(service["spec"].get("externalTrafficPolicy").is_none());
    let exposed = object(&build(&full_inputs()).unwrap(), "Service", "mail").clone();
    assert_eq!(exposed["spec"]["externalTrafficPolicy"], "Local");
    let ports: Vec<(i64, &str)> = service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["port"].as_i64().unwrap(),
                p["targetPort"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        ports,
        [(25, "smtp"), (587, "submission"), (465, "submissions")]
    );
}

#[test]
fn a_changed_config_or_secret_rolls_the_pods_and_a_same_spec_does_not() {
    let hash = |desired: &DesiredRelay| {
        object(desired, "Deployment", "mail-ingress")["spec"]["template"]["metadata"]["annotations"]
            ["postern.io/restart-hash"]
            .clone()
    };
    let base = build(&minimal_inputs()).unwrap();
    assert_eq!(hash(&base), hash(&build(&minimal_inputs()).unwrap()));
    let mut changed = minimal_inputs();
    changed.relay.spec.delivery.concurrency = Some(7);
    assert_ne!(hash(&base), hash(&build(&changed).unwrap()));
    let mut rotated = minimal_inputs();
    rotated.secret_digest = "new users file".into();
    assert_ne!(hash(&base), hash(&build(&rotated).unwrap()));
}

#[test]
fn delivery_scales_on_queue_lag_with_keda_and_on_cpu_without() {
    let with_keda = build(&full_inputs()).unwrap();
    let scaler = object(&with_keda, "ScaledObject", "mail-delivery");
    let trigger = &scaler["spec"]["triggers"][0];
    assert_eq!(trigger["type"], "nats-jetstream");
    assert_eq!(trigger["metadata"]["stream"], "POSTERN_MAIL");
    assert_eq!(trigger["metadata"]["consumer"], "postern-delivery");
    assert_eq!(trigger["metadata"]["lagThreshold"], "500");
    assert_eq!(
        trigger["metadata"]["natsServerMonitoringEndpoint"],
        "nats.postern.svc:8222"
    );
    assert!(
        with_keda
            .absent
            .iter()
            .any(|(_, kind, _)| kind == "HorizontalPodAutoscaler")
    );
    let without = build(&minimal_inputs()).unwrap();
    let hpa = object(&without, "HorizontalPodAutoscaler", "mail-delivery");
    assert_eq!(hpa["spec"]["metrics"][0]["resource"]["name"], "cpu");
}

/// The signing Secret's domains file and key files, decoded.
fn signing(desired: &DesiredRelay) -> (Vec<postern_config::DomainConfig>, Vec<String>) {
    use base64::Engine;
    let secret = object(desired, "Secret", "mail-signing");
    let data = secret["data"].as_object().unwrap();
    let decode = |v: &serde_json::Value| {
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap())
            .unwrap()
    };
    let domains = String::from_utf8(decode(&data["domains.yaml"])).unwrap();
    let files = data
        .keys()
        .filter(|k| *k != "domains.yaml")
        .cloned()
        .collect();
    (
        postern_config::DomainConfig::list_from_yaml(&domains).unwrap(),
        files,
    )
}

#[test]
fn only_active_dkim_keys_sign() {
    let desired = build(&full_inputs()).unwrap();
    assert!(desired.config.domains.is_empty());
    assert_eq!(
        desired.config.domains_file.as_deref(),
        Some(std::path::Path::new("/etc/postern/signing/domains.yaml"))
    );
    let (domains, files) = signing(&desired);
    assert_eq!(domains.len(), 1);
    let keys: Vec<&str> = domains[0]
        .dkim
        .iter()
        .map(|k| k.selector.as_str())
        .collect();
    assert_eq!(keys, ["postern-ed25519-20261101"]);
    assert_eq!(
        domains[0].dkim[0].key_file,
        std::path::Path::new("/etc/postern/signing/example-com.postern-ed25519-20261101.pem")
    );
    assert_eq!(files, ["example-com.postern-ed25519-20261101.pem"]);
}

#[test]
fn a_key_activation_or_a_new_domain_changes_no_pod_template() {
    let before = build(&full_inputs()).unwrap();
    let mut inputs = full_inputs();
    // The pending RSA key became active, and a second Domain arrived with a key.
    inputs.domains[0].1.push(active_key("postern-rsa-20261101"));
    let mut other = inputs.domains[0].0.clone();
    other.metadata.name = Some("other-com".into());
    other.spec.domain = "other.example".into();
    inputs
        .domains
        .push((other, vec![active_key("postern-ed25519-20261102")]));
    let after = build(&inputs).unwrap();

    for deployment in ["mail-ingress", "mail-delivery"] {
        assert_eq!(
            object(&before, "Deployment", deployment)["spec"]["template"],
            object(&after, "Deployment", deployment)["spec"]["template"],
            "{deployment}'s pod template changed: its pods would roll"
        );
    }
    assert_eq!(before.config_yaml, after.config_yaml);
    let (domains, files) = signing(&after);
    let names: Vec<&str> = domains.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["example.com", "other.example"]);
    assert_eq!(
        files,
        [
            "example-com.postern-ed25519-20261101.pem",
            "example-com.postern-rsa-20261101.pem",
            "other-com.postern-ed25519-20261102.pem"
        ]
    );
}

#[test]
fn the_config_map_passes_postern_check_config() {
    let binary = postern_e2e::relay::postern_binary();
    for desired in [
        build(&minimal_inputs()).unwrap(),
        build(&full_inputs()).unwrap(),
    ] {
        let config_map = object(&desired, "ConfigMap", "mail-config");
        let yaml = config_map["data"]["config.yaml"].as_str().unwrap();
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), yaml).unwrap();
        let output = std::process::Command::new(&binary)
            .args([
                OsStr::new("check-config"),
                OsStr::new("--config"),
                file.path().as_os_str(),
            ])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "postern check-config refused:\n{yaml}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn built_objects_and_crds_are_valid_for_kubernetes_1_33() {
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (name, inputs) in [("minimal", minimal_inputs()), ("full", full_inputs())] {
        let desired = build(&inputs).unwrap();
        let values = desired.values();
        let builtin = values.iter().filter(|o| !is_custom_kind(o));
        files.push(write_stream(dir.path(), &format!("{name}.yaml"), builtin));
    }
    files.push(repo().join("crds/relays.postern.io.yaml"));
    files.push(repo().join("crds/domains.postern.io.yaml"));
    assert_valid_for_kubernetes(&files);
}

#[test]
fn examples_are_valid_against_the_crds() {
    let examples = ["examples/relay.yaml", "examples/domain.yaml"].map(|e| repo().join(e));
    let (ok, report) = validate_custom_resources(&examples);
    assert!(ok, "{report}");
}

#[test]
fn a_typo_in_an_example_is_caught_by_the_crd_schema() {
    let dir = tempfile::tempdir().unwrap();
    let bad = read("examples/relay.yaml").replace("lagPerReplica", "lagPerReplca");
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, bad).unwrap();
    let (ok, report) = validate_custom_resources(&[path]);
    assert!(!ok);
    assert!(report.contains("lagPerReplca"), "{report}");
}

#[test]
fn dane_only_is_a_destination_mode_the_crd_refuses_on_routes() {
    let full = read("operator/tests/fixtures/relay-full.yaml");
    assert!(full.contains("tls: dane-only") && full.contains("probe: example.com."));
    let dir = tempfile::tempdir().unwrap();
    let check = |name: &str, text: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        validate_custom_resources(&[path])
    };
    let (ok, report) = check("full.yaml", full.clone());
    assert!(ok, "{report}");
    // A change to the trust anchors' Secret reconciles the Relay (and rolls its pods).
    let relay = relay("operator/tests/fixtures/relay-full.yaml");
    assert!(postern_operator::relay::references_secret(
        &relay,
        "dnssec-anchors"
    ));
    assert!(!postern_operator::relay::references_secret(
        &relay,
        "unrelated"
    ));
    let route = full.replacen(
        "host: mx.partner.example.net:25\n        tls: verify",
        "host: mx.partner.example.net:25\n        tls: dane-only",
        1,
    );
    assert_ne!(route, full);
    let (ok, report) = check("route.yaml", route);
    assert!(!ok);
    assert!(report.contains("routes.0.tls"), "{report}");
    let (ok, report) = check(
        "probe.yaml",
        full.replace("probe: example.com.", "probe: a..b"),
    );
    assert!(!ok);
    assert!(report.contains("dane.probe"), "{report}");
}

#[test]
fn objects_of_other_projects_match_their_published_schemas() {
    let mut custom = Vec::new();
    for inputs in [minimal_inputs(), full_inputs()] {
        let desired = build(&inputs).unwrap();
        custom.extend(
            desired
                .values()
                .into_iter()
                .filter(|o| o["kind"] == "Certificate" || o["kind"] == "ScaledObject"),
        );
    }
    let kinds: Vec<&str> = custom.iter().map(|o| o["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["Certificate", "ScaledObject"]);
    let (ok, report) = validate_third_party(&custom);
    assert!(ok, "{report}");

    // The check can fail: values of the wrong type or outside an enum are named.
    let mut broken = custom.clone();
    broken[0]["spec"]["privateKey"]["algorithm"] = serde_json::json!("DSA");
    broken[1]["spec"]["minReplicaCount"] = serde_json::json!("1");
    let (ok, report) = validate_third_party(&broken);
    assert!(!ok);
    assert!(report.contains("privateKey/algorithm"), "{report}");
    assert!(
        report.contains("minReplicaCount must be integer"),
        "{report}"
    );
}
