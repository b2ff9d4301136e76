//! Fixtures shared by the operator's test suites.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::PathBuf;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use postern_operator::api::{
    DkimKeyState, DkimKeyStatus, DkimKeyType, Domain, DomainStatus, Relay,
};
use postern_operator::domain::keystore::ActiveKey;
use postern_operator::relay::dereference::RelayInputs;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap()
}

/// A Relay from YAML, with the uid the API server would have given it.
pub fn relay(path: &str) -> Relay {
    let mut relay: Relay = serde_saphyr::from_str(&read(path)).unwrap();
    relay.metadata.uid = Some("6a1f0f3e-8a6e-4f0e-9f00-000000000001".into());
    relay
        .metadata
        .namespace
        .get_or_insert_with(|| "default".into());
    relay
}

/// The example Domain with one active and one pending key in status.
pub fn domain_with_keys() -> Domain {
    let mut domain: Domain = serde_saphyr::from_str(&read("examples/domain.yaml")).unwrap();
    domain.metadata.uid = Some("6a1f0f3e-8a6e-4f0e-9f00-000000000002".into());
    let at: Timestamp = "2026-11-01T00:00:00Z".parse().unwrap();
    domain.status = Some(DomainStatus {
        dkim_keys: vec![
            DkimKeyStatus {
                selector: "postern-ed25519-20261101".into(),
                algorithm: DkimKeyType::Ed25519,
                state: DkimKeyState::Active,
                public_key: "MCowBQYDK2VwAyEA".into(),
                created: Time(at),
                activated: Some(Time(at)),
                retire_at: None,
            },
            DkimKeyStatus {
                selector: "postern-rsa-20261101".into(),
                algorithm: DkimKeyType::Rsa2048,
                state: DkimKeyState::Pending,
                public_key: "MIIBIjANBgkq".into(),
                created: Time(at),
                activated: None,
                retire_at: None,
            },
        ],
        ..DomainStatus::default()
    });
    domain
}

/// An active ed25519 key (its PEM is a placeholder: the build does not parse it).
pub fn active_key(selector: &str) -> ActiveKey {
    ActiveKey {
        selector: selector.into(),
        algorithm: DkimKeyType::Ed25519,
        pem: format!("-----BEGIN PRIVATE KEY-----\n{selector}\n-----END PRIVATE KEY-----\n")
            .into_bytes(),
    }
}

/// The validate and build stages, as the reconciler runs them.
pub fn build(
    inputs: &RelayInputs,
) -> Result<postern_operator::relay::build::DesiredRelay, postern_operator::relay::build::BuildError>
{
    use kube::ResourceExt;
    let valid =
        postern_operator::relay::validate::validate(&inputs.relay.name_any(), &inputs.relay.spec)
            .unwrap();
    postern_operator::relay::build::build(inputs, &valid)
}

/// Inputs of the minimal Relay: no Domains, no KEDA.
pub fn minimal_inputs() -> RelayInputs {
    RelayInputs {
        relay: relay("operator/tests/fixtures/relay-minimal.yaml"),
        domains: Vec::new(),
        secret_digest: String::new(),
        nats: Default::default(),
        keda: false,
        cert_manager: false,
        default_image: postern_operator::relay::build::DEFAULT_IMAGE.into(),
    }
}

/// Inputs of the example Relay: one Domain, KEDA and cert-manager installed.
pub fn full_inputs() -> RelayInputs {
    RelayInputs {
        relay: relay("operator/tests/fixtures/relay-full.yaml"),
        domains: vec![(
            domain_with_keys(),
            vec![active_key("postern-ed25519-20261101")],
        )],
        secret_digest: "users-and-credentials".into(),
        nats: Default::default(),
        keda: true,
        cert_manager: true,
        default_image: postern_operator::relay::build::DEFAULT_IMAGE.into(),
    }
}

/// Kinds defined by CRDs of other projects, which the Kubernetes schema does not know.
pub fn is_custom_kind(object: &serde_json::Value) -> bool {
    ["Certificate", "ScaledObject", "DNSEndpoint"].contains(&object["kind"].as_str().unwrap_or(""))
}

/// Runs a tool installed by `scripts/tools` into `.tools/venv/bin`, panicking with its output
/// when it fails.
pub fn run_tool(tool: &str, args: &[&std::ffi::OsStr]) -> String {
    let path = repo().join(".tools/venv/bin").join(tool);
    assert!(
        path.exists(),
        "{} is missing: run scripts/tools",
        path.display()
    );
    let (ok, text) = report(std::process::Command::new(&path).args(args));
    assert!(ok, "{tool} failed:\n{text}");
    text
}

/// Writes `objects` as one YAML stream to `dir/name`.
pub fn write_stream<'a>(
    dir: &std::path::Path,
    name: &str,
    objects: impl IntoIterator<Item = &'a serde_json::Value>,
) -> PathBuf {
    let yaml: String = objects
        .into_iter()
        .map(|o| format!("---\n{}", serde_saphyr::to_string(o).unwrap()))
        .collect();
    let path = dir.join(name);
    std::fs::write(&path, yaml).unwrap();
    path
}

/// Asserts that `kubernetes-validate --strict` accepts the files for Kubernetes 1.33.
pub fn assert_valid_for_kubernetes(files: &[PathBuf]) {
    let mut args: Vec<&std::ffi::OsStr> = ["--strict", "--kubernetes-version", "1.33.0"]
        .map(std::ffi::OsStr::new)
        .to_vec();
    args.extend(files.iter().map(|f| f.as_os_str()));
    run_tool("kubernetes-validate", &args);
}

/// Runs `scripts/validate-custom-resources` against `crds/`: (accepted, report).
pub fn validate_custom_resources(files: &[PathBuf]) -> (bool, String) {
    report(
        std::process::Command::new(repo().join(".tools/venv/bin/python"))
            .arg(repo().join("scripts/validate-custom-resources"))
            .arg(repo().join("crds"))
            .args(files),
    )
}

/// Runs `command`: (succeeded, stdout + stderr).
fn report(command: &mut std::process::Command) -> (bool, String) {
    let output = command.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// Runs `scripts/validate-third-party` (cert-manager, KEDA and Prometheus Operator schemas) on
/// `objects`: (accepted, report).
pub fn validate_third_party<'a>(
    objects: impl IntoIterator<Item = &'a serde_json::Value>,
) -> (bool, String) {
    let objects: Vec<&serde_json::Value> = objects.into_iter().collect();
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), serde_json::to_vec(&objects).unwrap()).unwrap();
    assert!(
        repo()
            .join(".tools/node/node_modules/@kubernetes-models")
            .exists(),
        "the third-party schemas are missing: run scripts/tools"
    );
    report(
        std::process::Command::new("node")
            .arg(repo().join("scripts/validate-third-party"))
            .arg(file.path()),
    )
}
