//! The Helm chart: lint, render with the default values and each `charts/postern/ci` file,
//! validate what it renders, and check what a secure, working install needs.
#![allow(clippy::unwrap_used)]

mod support;

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::Command;

use serde_json::{Value, json};
use support::*;

fn chart() -> PathBuf {
    repo().join("charts/postern")
}

/// Runs helm from `.tools/bin`; `(succeeded, stdout + stderr)`.
fn helm(args: &[&str]) -> (bool, String) {
    let path = repo().join(".tools/bin/helm");
    assert!(
        path.exists(),
        "{} is missing: run scripts/tools",
        path.display()
    );
    let output = Command::new(path).args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// Every values file the chart is checked with: none (defaults) and each file in `ci/`.
fn values_files() -> Vec<Option<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(chart().join("ci"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension() == Some(OsStr::new("yaml")))
        .collect();
    files.sort();
    assert!(files.len() >= 3, "{files:?}");
    std::iter::once(None)
        .chain(files.into_iter().map(Some))
        .collect()
}

fn render(values: Option<&PathBuf>, sets: &[&str]) -> Vec<Value> {
    render_for(values, sets, &[])
}

/// [`render`] for a cluster that serves `api_versions` besides the built-in ones.
fn render_for(values: Option<&PathBuf>, sets: &[&str], api_versions: &[&str]) -> Vec<Value> {
    let chart = chart();
    let mut args = vec![
        "template",
        "postern",
        chart.to_str().unwrap(),
        "--namespace",
        "postern",
    ];
    let values = values.map(|v| v.to_str().unwrap().to_string());
    if let Some(values) = &values {
        args.extend(["-f", values]);
    }
    for set in sets {
        args.extend(["--set", set]);
    }
    for api in api_versions {
        args.extend(["--api-versions", api]);
    }
    let (ok, text) = helm(&args);
    assert!(ok, "helm template failed:\n{text}");
    serde_saphyr::from_multiple::<Value>(&text)
        .unwrap()
        .into_iter()
        .filter(|v| !v.is_null())
        .collect()
}

fn find<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

/// A checksum annotation must be a string whatever its digits: unquoted, a hash such as
/// `12e2406221234918` or `1234567890123456` is a YAML number, which the API server refuses as an
/// annotation. The NATS config holds a random token, so its checksum differs on every render.
#[test]
fn checksum_annotations_are_quoted() {
    let templates = chart().join("templates");
    for entry in std::fs::read_dir(&templates).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for line in text.lines().filter(|l| l.contains("sha256sum")) {
            assert!(
                line.trim_end().ends_with("| quote }}"),
                "{}: {line}",
                path.display()
            );
        }
    }
}

#[test]
fn helm_lint_strict_passes_for_every_values_file() {
    for values in values_files() {
        let chart = chart();
        let mut args = vec!["lint", "--strict", chart.to_str().unwrap()];
        let values = values.map(|v| v.to_str().unwrap().to_string());
        if let Some(values) = &values {
            args.extend(["-f", values]);
        }
        let (ok, text) = helm(&args);
        assert!(ok, "helm lint {values:?}:\n{text}");
    }
}

#[test]
fn rendered_objects_are_valid_for_kubernetes_1_33() {
    let dir = tempfile::tempdir().unwrap();
    for (i, values) in values_files().iter().enumerate() {
        let objects = render(values.as_ref(), &[]);
        let builtin = objects.iter().filter(|o| {
            !["Relay", "Domain", "ServiceMonitor"].contains(&o["kind"].as_str().unwrap())
        });
        assert_valid_for_kubernetes(&[write_stream(
            dir.path(),
            &format!("rendered-{i}.yaml"),
            builtin,
        )]);

        // Relays and Domains the chart creates validate against the CRDs.
        let custom: Vec<&Value> = objects
            .iter()
            .filter(|o| o["kind"] == "Relay" || o["kind"] == "Domain")
            .collect();
        if !custom.is_empty() {
            let path = write_stream(dir.path(), &format!("custom-{i}.yaml"), custom);
            let (ok, report) = validate_custom_resources(&[path]);
            assert!(ok, "{values:?}: {report}");
        }
    }
}

#[test]
fn every_pod_is_locked_down_with_requests_and_probes() {
    for values in values_files() {
        let objects = render(values.as_ref(), &[]);
        let workloads: Vec<&Value> = objects
            .iter()
            .filter(|o| o["kind"] == "Deployment" || o["kind"] == "StatefulSet")
            .collect();
        assert!(!workloads.is_empty());
        for workload in workloads {
            let name = workload["metadata"]["name"].as_str().unwrap();
            let pod = &workload["spec"]["template"]["spec"];
            assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{name}");
            assert_eq!(
                pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault",
                "{name}"
            );
            for container in pod["containers"].as_array().unwrap() {
                let security = &container["securityContext"];
                assert_eq!(security["readOnlyRootFilesystem"], true, "{name}");
                assert_eq!(security["allowPrivilegeEscalation"], false, "{name}");
                assert_eq!(security["capabilities"]["drop"], json!(["ALL"]), "{name}");
                let requests = &container["resources"]["requests"];
                assert!(
                    requests["cpu"].is_string() && requests["memory"].is_string(),
                    "{name}: {requests}"
                );
                assert!(
                    container["resources"]["limits"]["memory"].is_string(),
                    "{name}"
                );
                assert!(
                    container["readinessProbe"]["httpGet"]["path"].is_string(),
                    "{name}"
                );
                assert!(
                    container["livenessProbe"]["httpGet"]["path"].is_string(),
                    "{name}"
                );
            }
        }
    }
}

#[test]
fn nats_by_default_and_an_existing_one_when_disabled() {
    let objects = render(None, &[]);
    let statefulset = find(&objects, "StatefulSet");
    assert_eq!(statefulset.len(), 1);
    assert_eq!(statefulset[0]["spec"]["replicas"], 3);
    assert!(
        statefulset[0]["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
            == "10Gi"
    );
    let services: Vec<&str> = find(&objects, "Service")
        .iter()
        .map(|s| s["metadata"]["name"].as_str().unwrap())
        .collect();
    assert!(
        services.contains(&"postern-nats") && services.contains(&"postern-nats-headless"),
        "{services:?}"
    );
    assert!(
        find(&objects, "PodDisruptionBudget")
            .iter()
            .any(|p| p["metadata"]["name"] == "postern-nats")
    );
    assert!(
        find(&objects, "Relay").is_empty(),
        "no example Relay unless asked"
    );

    let with_relay = render(None, &["relay.create=true"]);
    let relay = find(&with_relay, "Relay")[0];
    assert_eq!(
        relay["spec"]["nats"]["url"],
        "nats://postern-nats.postern.svc:4222"
    );
    assert_eq!(relay["spec"]["nats"]["streamReplicas"], 3);
    // KEDA looks up the consumer leader as <server name>.<endpoint host>.
    assert_eq!(
        relay["spec"]["nats"]["monitoringEndpoint"],
        "postern-nats-headless.postern.svc:8222"
    );

    // The Relay requires what the chart's NATS was told to do, and the operator checks it.
    assert_eq!(relay["spec"]["nats"].get("sync"), None);
    let syncing = render(
        None,
        &["relay.create=true", "nats.jetstream.syncInterval=always"],
    );
    assert_eq!(find(&syncing, "Relay")[0]["spec"]["nats"]["sync"], "always");

    let external = chart().join("ci/external-nats-values.yaml");
    let objects = render(Some(&external), &[]);
    assert!(find(&objects, "StatefulSet").is_empty());
    assert!(
        !objects
            .iter()
            .any(|o| o["metadata"]["name"].as_str().unwrap().contains("nats")),
        "no NATS objects"
    );
    let relay = find(&objects, "Relay")[0];
    assert_eq!(relay["spec"]["nats"]["url"], "nats://nats.nats.svc:4222");
    assert_eq!(
        relay["spec"]["nats"]["credentialsSecret"],
        json!({ "name": "postern-nats", "key": "nats.creds" })
    );
    let args = operator_args(&objects);
    assert!(args.contains(&"--keda=disabled".to_string()), "{args:?}");
}

#[test]
fn the_rendered_nats_config_is_accepted_by_nats_server() {
    for sets in [
        vec![],
        vec!["nats.replicas=1"],
        vec!["nats.jetstream.syncInterval=always"],
        vec!["nats.jetstream.syncInterval=30s"],
    ] {
        let objects = render(None, &sets);
        let config_map = find(&objects, "ConfigMap")
            .into_iter()
            .find(|c| c["metadata"]["name"] == "postern-nats")
            .unwrap();
        let config = config_map["data"]["nats.conf"].as_str().unwrap();
        let clustered = !sets.contains(&"nats.replicas=1");
        assert_eq!(config.contains("routes"), clustered, "{config}");
        match sets
            .first()
            .and_then(|s| s.strip_prefix("nats.jetstream.syncInterval="))
        {
            Some("always") => assert!(config.contains("sync_interval: always"), "{config}"),
            Some(every) => assert!(
                config.contains(&format!("sync_interval: \"{every}\"")),
                "{config}"
            ),
            None => assert!(!config.contains("sync_interval"), "{config}"),
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nats.conf");
        std::fs::write(&path, config.replace("/data", dir.path().to_str().unwrap())).unwrap();
        let output = Command::new(postern_e2e::nats::nats_server_binary())
            .env("POD_NAME", "postern-nats-0")
            .env("NATS_TOKEN", "t")
            .arg("--config")
            .arg(&path)
            .arg("-t")
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{config}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// The arguments of the operator's container.
fn operator_args(objects: &[Value]) -> Vec<String> {
    let operator = find(objects, "Deployment")
        .into_iter()
        .find(|d| d["metadata"]["name"] == "postern-operator")
        .expect("the operator Deployment");
    operator["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

/// The chart's NATS, from its rendered `nats.conf`, run on loopback ports with `token` and,
/// when given, the TLS files of `tls_dir` where cert-manager would mount them.
struct RenderedNats {
    server: std::process::Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl RenderedNats {
    fn start(objects: &[Value], token: &str, tls_dir: Option<&std::path::Path>) -> RenderedNats {
        let config = find(objects, "ConfigMap")
            .into_iter()
            .find(|c| c["metadata"]["name"] == "postern-nats")
            .unwrap()["data"]["nats.conf"]
            .as_str()
            .unwrap()
            .to_string();
        let dir = tempfile::tempdir().unwrap();
        let ports = dir.path().join("ports");
        std::fs::create_dir(&ports).unwrap();
        let mut config = config
            .replace("/data", dir.path().to_str().unwrap())
            .replace(
                "/var/run/nats/nats.pid",
                dir.path().join("pid").to_str().unwrap(),
            )
            .replace("0.0.0.0:4222", "127.0.0.1:-1")
            .replace("0.0.0.0:8222", "127.0.0.1:-1")
            + &format!("\nports_file_dir: {:?}\n", ports.to_str().unwrap());
        if let Some(tls_dir) = tls_dir {
            config = config.replace("/etc/nats-tls", tls_dir.to_str().unwrap());
        }
        let path = dir.path().join("nats.conf");
        std::fs::write(&path, config).unwrap();
        let server = Command::new(postern_e2e::nats::nats_server_binary())
            .env("POD_NAME", "postern-nats-0")
            .env("NATS_TOKEN", token)
            .arg("--config")
            .arg(&path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let port =
            postern_e2e::nats::wait_for_ports_file(&ports, std::time::Duration::from_secs(15));
        RenderedNats {
            server,
            url: format!("nats://127.0.0.1:{port}"),
            _dir: dir,
        }
    }

    /// Whether a client with `options` connects and gets an answer within 5 s.
    async fn admits(&self, options: async_nats::ConnectOptions) -> bool {
        let connected = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            let client = options.connect(&self.url).await?;
            client.flush().await.map_err(std::io::Error::other)?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(client)
        })
        .await;
        matches!(connected, Ok(Ok(_)))
    }
}

impl Drop for RenderedNats {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_charts_nats_takes_only_clients_with_its_token() {
    use base64::Engine;
    let objects = render(None, &["nats.replicas=1"]);
    let secret = find(&objects, "Secret")
        .into_iter()
        .find(|s| s["metadata"]["name"] == "postern-nats-token")
        .expect("a token Secret")
        .clone();
    let token = base64::engine::general_purpose::STANDARD
        .decode(secret["data"]["token"].as_str().unwrap())
        .unwrap();
    let token = String::from_utf8(token).unwrap();
    assert!(token.len() >= 32, "{token}");
    // The server reads it from the Secret, the operator is told where it is.
    let nats = find(&objects, "StatefulSet")[0];
    let env = nats["spec"]["template"]["spec"]["containers"][0]["env"].to_string();
    assert!(env.contains("postern-nats-token"), "{env}");
    let args = operator_args(&objects);
    assert!(
        args.contains(&"--nats-token-secret=postern/postern-nats-token".to_string()),
        "{args:?}"
    );

    // The rendered config, run on loopback: no token, no connection.
    let nats = RenderedNats::start(&objects, &token, None);
    assert!(
        !nats.admits(async_nats::ConnectOptions::new()).await,
        "a client without the token connected"
    );
    assert!(
        !nats
            .admits(async_nats::ConnectOptions::new().token("guess".into()))
            .await,
        "a client with another token connected"
    );
    assert!(
        nats.admits(async_nats::ConnectOptions::new().token(token.clone()))
            .await,
        "the token was refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_charts_nats_speaks_tls_where_cert_manager_is_installed() {
    // Without cert-manager: no TLS, and asking for it says what to install.
    let plain = render(None, &["nats.replicas=1"]);
    assert!(find(&plain, "Issuer").is_empty());
    let chart = chart();
    let (ok, text) = helm(&[
        "template",
        "postern",
        chart.to_str().unwrap(),
        "--set",
        "nats.tls.enabled=true",
    ]);
    assert!(!ok);
    assert!(
        text.contains("nats.tls.enabled=true needs cert-manager"),
        "{text}"
    );

    let objects = render_for(
        None,
        &["nats.replicas=1"],
        &[
            "cert-manager.io/v1/Certificate",
            "cert-manager.io/v1/Issuer",
        ],
    );
    let issued: Vec<&Value> = objects
        .iter()
        .filter(|o| o["apiVersion"] == "cert-manager.io/v1")
        .collect();
    assert_eq!(issued.len(), 4, "{issued:?}");
    let (ok, report) = validate_third_party(issued.iter().copied());
    assert!(ok, "{report}");
    let args = operator_args(&objects);
    assert!(
        args.contains(&"--nats-ca-secret=postern/postern-nats-tls/ca.crt".to_string()),
        "{args:?}"
    );

    // The rendered config, with certificates of a test CA where cert-manager puts them.
    let pki = postern_e2e::TestPki::new();
    let dir = tempfile::tempdir().unwrap();
    let tls_dir = dir.path().join("tls");
    std::fs::create_dir(&tls_dir).unwrap();
    std::fs::copy(&pki.cert_file, tls_dir.join("tls.crt")).unwrap();
    std::fs::copy(&pki.key_file, tls_dir.join("tls.key")).unwrap();
    std::fs::write(tls_dir.join("ca.crt"), &pki.ca_pem).unwrap();
    let nats = RenderedNats::start(&objects, "t", Some(&tls_dir));
    assert!(
        !nats
            .admits(async_nats::ConnectOptions::new().token("t".into()))
            .await,
        "a client without TLS connected"
    );
    let verified = async_nats::ConnectOptions::new()
        .token("t".into())
        .add_root_certificates(tls_dir.join("ca.crt"))
        .require_tls(true);
    assert!(
        nats.admits(verified).await,
        "a client trusting the chart's CA was refused"
    );
}

#[test]
fn the_chart_installs_the_generated_crds_and_rbac() {
    for (name, yaml) in postern_operator::api::crd_files().unwrap() {
        let path = chart().join("crds").join(&name);
        let copy = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            copy == yaml,
            "{} differs from crds/{name}: copy crds/*.yaml into charts/postern/crds/",
            path.display()
        );
    }
    let rules = |objects: &[Value], kind: &str, name: &str, namespace: Option<&str>| {
        objects
            .iter()
            .find(|o| {
                o["kind"] == kind
                    && o["metadata"]["name"] == name
                    && namespace.is_none_or(|ns| o["metadata"]["namespace"] == ns)
            })
            .unwrap_or_else(|| panic!("no {kind} {name}"))["rules"]
            .clone()
    };
    let cluster_wide = render(None, &[]);
    let expected = postern_operator::rbac::roles("x", "x", &[]);
    assert_eq!(
        rules(&cluster_wide, "ClusterRole", "postern-operator", None),
        expected[0]["rules"],
        "templates/rbac.yaml differs from operator/src/rbac.rs"
    );
    assert_eq!(
        rules(&cluster_wide, "Role", "postern-operator-lease", None),
        expected[1]["rules"],
        "templates/rbac.yaml differs from operator/src/rbac.rs"
    );
    assert_eq!(find(&cluster_wide, "Role").len(), 1);

    // Namespace-scoped: a Role and RoleBinding in each watched namespace, and a ClusterRole
    // that only reads CRDs.
    let watch = ["mail".to_string(), "staging".to_string()];
    let scoped = render(None, &["operator.watchNamespaces={mail,staging}"]);
    let expected = postern_operator::rbac::roles("x", "x", &watch);
    assert_eq!(
        rules(&scoped, "ClusterRole", "postern-operator", None),
        expected[0]["rules"]
    );
    for ns in &watch {
        assert_eq!(
            rules(&scoped, "Role", "postern-operator", Some(ns)),
            expected[2]["rules"],
            "Role in {ns}"
        );
        assert!(
            find(&scoped, "RoleBinding")
                .iter()
                .any(|b| b["metadata"]["namespace"] == ns.as_str())
        );
    }
    let args = operator_args(&scoped);
    for ns in &watch {
        assert!(
            args.contains(&format!("--watch-namespace={ns}")),
            "{args:?}"
        );
    }
}

#[test]
fn bad_values_fail_at_install_naming_the_key() {
    for (set, expected) in [
        ("nats.replicas=2", "/nats/replicas"),
        ("operator.keda=sometimes", "/operator/keda"),
        ("nats.enabled=false", "/nats/url"),
        ("relay.nmae=x", "nmae"),
    ] {
        let chart = chart();
        let (ok, text) = helm(&["template", "postern", chart.to_str().unwrap(), "--set", set]);
        assert!(!ok, "{set} was accepted");
        assert!(text.contains(expected), "{set}: {text}");
    }
}

#[test]
fn optional_parts_are_off_by_default() {
    let objects = render(None, &[]);
    for kind in ["ServiceMonitor", "Relay", "Domain"] {
        assert!(
            find(&objects, kind).is_empty(),
            "{kind} rendered by default"
        );
    }
    // The queue is locked by default: only Postern's pods reach NATS.
    let policies = find(&objects, "NetworkPolicy");
    assert_eq!(policies.len(), 1);
    assert_eq!(policies[0]["metadata"]["name"], "postern-nats");
    assert!(
        find(
            &render(None, &["nats.networkPolicy.enabled=false"]),
            "NetworkPolicy"
        )
        .is_empty()
    );
    let objects = render_for(
        Some(&chart().join("ci/full-values.yaml")),
        &[],
        &["monitoring.coreos.com/v1/ServiceMonitor"],
    );
    assert_eq!(find(&objects, "ServiceMonitor").len(), 2);
    assert_eq!(find(&objects, "NetworkPolicy").len(), 3);
    let domain = find(&objects, "Domain")[0];
    assert_eq!(domain["metadata"]["name"], "example-com");
    assert_eq!(domain["spec"]["relayRef"]["name"], "mail");
    let delivery = find(&objects, "NetworkPolicy")
        .into_iter()
        .find(|p| p["metadata"]["name"] == "postern-relay-delivery")
        .unwrap();
    let ports: Vec<i64> = delivery["spec"]["egress"][0]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["port"].as_i64().unwrap())
        .collect();
    assert_eq!(ports, [25, 465, 587, 4222, 4318]);
}

#[test]
fn the_grafana_dashboard_is_a_configmap_for_the_sidecar_when_asked() {
    let dashboard = |objects: &[Value]| {
        find(objects, "ConfigMap")
            .into_iter()
            .find(|c| c["metadata"]["name"] == "postern-dashboard")
            .cloned()
    };
    assert!(dashboard(&render(None, &[])).is_none(), "off by default");
    let objects = render(
        None,
        &[
            "grafanaDashboard.enabled=true",
            "grafanaDashboard.namespace=monitoring",
            "grafanaDashboard.annotations.grafana_folder=Mail",
        ],
    );
    let map = dashboard(&objects).expect("the dashboard ConfigMap");
    assert_eq!(map["metadata"]["namespace"], "monitoring");
    assert_eq!(map["metadata"]["labels"]["grafana_dashboard"], "1");
    assert_eq!(map["metadata"]["annotations"]["grafana_folder"], "Mail");
    let shipped: Value = serde_json::from_str(
        map["data"]["postern.json"]
            .as_str()
            .expect("postern.json in the ConfigMap"),
    )
    .unwrap();
    let file: Value = serde_json::from_str(
        &std::fs::read_to_string(chart().join("dashboards/postern.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(shipped, file);
    assert_eq!(file["uid"], "postern-relay");
    let (ok, report) = helm(&[
        "template",
        "postern",
        chart().to_str().unwrap(),
        "--set",
        "grafanaDashboard.label=not a label",
    ]);
    assert!(!ok);
    assert!(report.contains("grafanaDashboard"), "{report}");
}

#[test]
fn every_value_is_documented_in_the_chart_readme() {
    let values: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(chart().join("values.yaml")).unwrap())
            .unwrap();
    let readme = std::fs::read_to_string(chart().join("README.md")).unwrap();
    fn keys(prefix: &str, value: &Value, out: &mut Vec<String>) {
        if let Value::Object(map) = value {
            for (key, child) in map {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                out.push(path.clone());
                if !["resources", "spec", "requests", "limits"].contains(&key.as_str()) {
                    keys(&path, child, out);
                }
            }
        }
    }
    let mut all = Vec::new();
    keys("", &values, &mut all);
    let missing: Vec<&String> = all
        .iter()
        .filter(|k| !readme.contains(&format!("`{k}`")))
        .collect();
    let leaves_only: Vec<&&String> = missing
        .iter()
        .filter(|k| !all.iter().any(|o| o.starts_with(&format!("{k}."))))
        .collect();
    assert!(
        leaves_only.is_empty(),
        "values missing from charts/postern/README.md: {leaves_only:?}"
    );
}

#[test]
fn the_install_notes_say_what_to_do_next() {
    let chart = chart();
    let notes = |sets: &[&str]| {
        let mut args = vec![
            "install",
            "postern",
            chart.to_str().unwrap(),
            "--dry-run=client",
            "--namespace",
            "mail",
        ];
        for set in sets {
            args.extend(["--set", set]);
        }
        let (ok, text) = helm(&args);
        assert!(ok, "{text}");
        text[text.find("NOTES:").unwrap()..].to_string()
    };
    let default = notes(&[]);
    assert!(
        default.contains(
            "A Relay without spec.nats uses nats://postern-nats.mail.svc:4222 with 3 stream replica(s)."
        ),
        "{default}"
    );
    assert!(!default.contains("WARNING"), "{default}");
    assert!(default.contains("Create a Relay"), "{default}");
    assert!(default.contains(".status.records"), "{default}");
    let single = notes(&["nats.replicas=1", "relay.create=true"]);
    assert!(single.contains("get relay mail -w"), "{single}");
    assert!(!single.contains("Create a Relay"), "{single}");
    // Asked for a ServiceMonitor where nobody serves the API: installed, and told why not.
    let monitored = notes(&["serviceMonitor.enabled=true"]);
    assert!(
        monitored.contains("no ServiceMonitor was created"),
        "{monitored}"
    );
}

#[test]
fn a_service_monitor_is_rendered_only_where_its_api_is_served() {
    let without = render(None, &["serviceMonitor.enabled=true"]);
    assert!(find(&without, "ServiceMonitor").is_empty());
    let with = render_for(
        None,
        &["serviceMonitor.enabled=true"],
        &["monitoring.coreos.com/v1/ServiceMonitor"],
    );
    let monitors = find(&with, "ServiceMonitor");
    assert_eq!(monitors.len(), 2);
    let (ok, report) = validate_third_party(monitors);
    assert!(ok, "{report}");
}

#[test]
fn the_operator_gives_relays_the_charts_nats() {
    let args = |sets: &[&str]| operator_args(&render(None, sets));
    let default = args(&[]);
    for expected in [
        "--nats-url=nats://postern-nats.postern.svc:4222",
        "--nats-monitoring-endpoint=postern-nats-headless.postern.svc:8222",
        "--stream-replicas=3",
    ] {
        assert!(default.contains(&expected.to_string()), "{default:?}");
    }
    assert!(args(&["nats.replicas=1"]).contains(&"--stream-replicas=1".to_string()));
    let external = args(&["nats.enabled=false", "nats.url=nats://nats.nats.svc:4222"]);
    assert!(
        external.contains(&"--nats-url=nats://nats.nats.svc:4222".to_string()),
        "{external:?}"
    );
    assert!(
        !external.iter().any(|a| a.starts_with("--stream-replicas")),
        "{external:?}"
    );
}
