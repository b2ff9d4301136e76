//! The `postern-operator` binary.
#![allow(clippy::unwrap_used)]

use std::process::Command;

fn operator(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_postern-operator"))
        .args(args)
        .env_remove("KUBECONFIG")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("HOME", env!("CARGO_TARGET_TMPDIR"))
        .output()
        .unwrap()
}

#[test]
fn crds_prints_the_committed_crds() {
    let output = operator(&["crds"]);
    assert!(output.status.success());
    let printed = String::from_utf8(output.stdout).unwrap();
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../crds");
    let mut expected = String::new();
    for name in ["relays.postern.io.yaml", "domains.postern.io.yaml"] {
        expected.push_str("---\n");
        expected.push_str(&std::fs::read_to_string(format!("{dir}/{name}")).unwrap());
    }
    assert_eq!(printed, expected);
}

#[test]
fn rbac_prints_both_roles_in_the_given_namespace() {
    let output = operator(&["rbac", "--name", "op", "--namespace", "mail-system"]);
    assert!(output.status.success());
    let printed = String::from_utf8(output.stdout).unwrap();
    assert!(
        printed.contains("kind: ClusterRole\n") && printed.contains("kind: Role\n"),
        "{printed}"
    );
    assert!(printed.contains("namespace: mail-system"), "{printed}");
    assert!(printed.contains("- leases"), "{printed}");
}

#[test]
fn run_without_a_cluster_fails_with_a_clear_error() {
    let output = operator(&["run", "--admin-address", "127.0.0.1:0"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.starts_with("postern-operator: "), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_bad_flag_names_itself() {
    let output = operator(&["run", "--keda", "sometimes"]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("--keda") && stderr.contains("sometimes"),
        "{stderr}"
    );
}
