//! The ingress and delivery Deployments: locked-down pods that mount the config and the
//! Secrets they read, drain before they stop, and roll only when what they read at start
//! changes.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, ConfigMapVolumeSource, Container, ContainerPort, HTTPGetAction,
    KeyToPath, Lifecycle, LifecycleHandler, PodAffinityTerm, PodAntiAffinity, PodSecurityContext,
    PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile, SecretVolumeSource,
    SecurityContext, SleepAction, Volume, VolumeMount, WeightedPodAffinityTerm,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use crate::api::Relay;
use crate::meta::{self, RESTART_HASH, owned_meta};
use crate::relay::dereference::RelayInputs;
use crate::relay::names::{
    ADMIN_PORT, CONFIG_KEY, config_map_name, paths, signing_secret_name, workload_name,
};

/// Image used when neither `spec.image` nor `--relay-image` names one: the relay of the
/// operator's own release.
pub const DEFAULT_IMAGE: &str = concat!("ghcr.io/postern-io/postern:", env!("CARGO_PKG_VERSION"));
/// UID and GID the relay runs as.
const RUN_AS: i64 = 65532;
/// Time the ingress pods keep accepting after SIGTERM is due, so that endpoints are removed
/// from Services before the listeners close.
const PRE_STOP_SECONDS: i64 = 5;

/// A volume from a Secret, mounted read-only at `path`.
struct SecretMount {
    volume: String,
    secret: String,
    path: String,
}

/// What differs between the two Deployments.
struct Workload<'a> {
    component: &'static str,
    restart_hash: &'a str,
    mounts: Vec<SecretMount>,
    ports: Vec<ContainerPort>,
    resources: Option<&'a ResourceRequirements>,
    pre_stop: bool,
    termination_grace: i64,
}

/// The ingress Deployment: the SMTP listeners, the certificate, the users file and the
/// signing Secret (domains and DKIM keys, one volume whatever their number).
pub(super) fn ingress(inputs: &RelayInputs, restart_hash: &str, tls_secret: &str) -> Deployment {
    let relay = &inputs.relay;
    let spec = &relay.spec;
    let mut mounts = vec![SecretMount {
        volume: "tls".into(),
        secret: tls_secret.into(),
        path: paths::TLS_DIR.into(),
    }];
    if let Some(users) = &spec.ingress.users_secret {
        mounts.push(SecretMount {
            volume: "users".into(),
            secret: users.name.clone(),
            path: paths::USERS_DIR.into(),
        });
    }
    nats_mounts(relay, &mut mounts);
    mounts.push(SecretMount {
        volume: "signing".into(),
        secret: signing_secret_name(relay),
        path: paths::SIGNING_DIR.into(),
    });
    let ports = spec
        .ingress
        .listeners
        .iter()
        .map(|l| port(&l.name, l.target_port()))
        .collect();
    deployment(
        inputs,
        Workload {
            component: "ingress",
            restart_hash,
            mounts,
            ports,
            resources: spec.ingress.resources.as_ref(),
            pre_stop: true,
            termination_grace: PRE_STOP_SECONDS + drain_seconds() + 5,
        },
    )
}

/// The delivery Deployment: NATS credentials, the smarthost's, the DANE trust anchors and the
/// webhooks' secrets.
pub(super) fn delivery(inputs: &RelayInputs, restart_hash: &str) -> Deployment {
    let relay = &inputs.relay;
    let spec = &relay.spec;
    let mut mounts = Vec::new();
    nats_mounts(relay, &mut mounts);
    if let Some(credentials) = spec
        .delivery
        .smarthost
        .as_ref()
        .and_then(|s| s.credentials_secret.as_ref())
    {
        mounts.push(SecretMount {
            volume: "smarthost".into(),
            secret: credentials.name.clone(),
            path: paths::SMARTHOST_DIR.into(),
        });
    }
    if let Some(anchors) = &spec.delivery.dane.trust_anchor_secret {
        mounts.push(SecretMount {
            volume: "dane".into(),
            secret: anchors.name.clone(),
            path: paths::DANE_DIR.into(),
        });
    }
    for hook in &spec.events.webhooks {
        mounts.push(SecretMount {
            volume: format!("webhook-{}", hook.name),
            secret: hook.secret.name.clone(),
            path: paths::webhook_dir(&hook.name),
        });
        if let Some(ca) = &hook.ca_secret {
            mounts.push(SecretMount {
                volume: format!("webhook-{}-ca", hook.name),
                secret: ca.name.clone(),
                path: paths::webhook_ca_dir(&hook.name),
            });
        }
    }
    deployment(
        inputs,
        Workload {
            component: "delivery",
            restart_hash,
            mounts,
            ports: Vec::new(),
            resources: spec.delivery.resources.as_ref(),
            pre_stop: false,
            termination_grace: drain_seconds() + 5,
        },
    )
}

/// How long the relay drains after SIGTERM (`shutdownGrace`, which the operator leaves at its
/// default).
fn drain_seconds() -> i64 {
    let grace = postern_config::Config::default().shutdown_grace.get();
    i64::try_from(grace.as_secs()).unwrap_or(i64::MAX)
}

fn nats_mounts(relay: &Relay, mounts: &mut Vec<SecretMount>) {
    if let Some(credentials) = &relay.spec.nats.credentials_secret {
        mounts.push(SecretMount {
            volume: "nats".into(),
            secret: credentials.name.clone(),
            path: paths::NATS_DIR.into(),
        });
    }
    if let Some(token) = &relay.spec.nats.token_secret {
        mounts.push(SecretMount {
            volume: "nats-token".into(),
            secret: token.name.clone(),
            path: paths::NATS_TOKEN_DIR.into(),
        });
    }
    if let Some(ca) = &relay.spec.nats.ca_secret {
        mounts.push(SecretMount {
            volume: "nats-ca".into(),
            secret: ca.name.clone(),
            path: paths::NATS_CA_DIR.into(),
        });
    }
}

fn port(name: &str, number: u16) -> ContainerPort {
    ContainerPort {
        name: Some(name.into()),
        container_port: i32::from(number),
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    }
}

fn probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("admin".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        ..Probe::default()
    }
}

fn default_resources() -> ResourceRequirements {
    let quantities = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
            .collect::<BTreeMap<_, _>>()
    };
    ResourceRequirements {
        requests: Some(quantities(&[("cpu", "100m"), ("memory", "128Mi")])),
        limits: Some(quantities(&[("memory", "512Mi")])),
        ..ResourceRequirements::default()
    }
}

fn deployment(inputs: &RelayInputs, workload: Workload<'_>) -> Deployment {
    let relay = &inputs.relay;
    let name = relay.name_any();
    let component = workload.component;
    let selector = meta::selector(&name, component);
    let mut ports = workload.ports;
    ports.push(port("admin", ADMIN_PORT));
    let mut volumes = vec![Volume {
        name: "config".into(),
        config_map: Some(ConfigMapVolumeSource {
            name: config_map_name(relay),
            items: Some(vec![KeyToPath {
                key: CONFIG_KEY.into(),
                path: CONFIG_KEY.into(),
                ..KeyToPath::default()
            }]),
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    }];
    let mount = |name: &str, path: &str| VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    };
    let mut volume_mounts = vec![mount("config", paths::CONFIG_DIR)];
    for secret in &workload.mounts {
        volumes.push(Volume {
            name: secret.volume.clone(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.secret.clone()),
                optional: Some(false),
                default_mode: Some(0o440),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
        volume_mounts.push(mount(&secret.volume, &secret.path));
    }
    let container = Container {
        name: "postern".into(),
        image: Some(
            relay
                .spec
                .image
                .clone()
                .unwrap_or_else(|| inputs.default_image.clone()),
        ),
        image_pull_policy: Some(
            relay
                .spec
                .image_pull_policy
                .clone()
                .unwrap_or_else(|| "IfNotPresent".into()),
        ),
        args: Some(vec![
            component.into(),
            "--config".into(),
            paths::CONFIG_FILE.into(),
        ]),
        ports: Some(ports),
        resources: Some(
            workload
                .resources
                .cloned()
                .unwrap_or_else(default_resources),
        ),
        readiness_probe: Some(probe("/readyz", 5, 2)),
        liveness_probe: Some(probe("/healthz", 10, 3)),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        lifecycle: workload.pre_stop.then(|| Lifecycle {
            pre_stop: Some(LifecycleHandler {
                sleep: Some(SleepAction {
                    seconds: PRE_STOP_SECONDS,
                }),
                ..LifecycleHandler::default()
            }),
            ..Lifecycle::default()
        }),
        volume_mounts: Some(volume_mounts),
        ..Container::default()
    };
    let mut labels = meta::labels(&name, component);
    labels.extend(selector.clone());
    let matching = || LabelSelector {
        match_labels: Some(selector.clone()),
        ..LabelSelector::default()
    };
    Deployment {
        metadata: owned_meta(relay, workload_name(relay, component), component),
        spec: Some(DeploymentSpec {
            selector: matching(),
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_unavailable: Some(IntOrString::Int(0)),
                    max_surge: Some(IntOrString::Int(1)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    annotations: Some(BTreeMap::from([(
                        RESTART_HASH.into(),
                        workload.restart_hash.into(),
                    )])),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(name.clone()),
                    automount_service_account_token: Some(false),
                    termination_grace_period_seconds: Some(workload.termination_grace),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(RUN_AS),
                        run_as_group: Some(RUN_AS),
                        fs_group: Some(RUN_AS),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            ..SeccompProfile::default()
                        }),
                        ..PodSecurityContext::default()
                    }),
                    affinity: Some(Affinity {
                        pod_anti_affinity: Some(PodAntiAffinity {
                            preferred_during_scheduling_ignored_during_execution: Some(vec![
                                WeightedPodAffinityTerm {
                                    weight: 100,
                                    pod_affinity_term: PodAffinityTerm {
                                        topology_key: "kubernetes.io/hostname".into(),
                                        label_selector: Some(matching()),
                                        ..PodAffinityTerm::default()
                                    },
                                },
                            ]),
                            ..PodAntiAffinity::default()
                        }),
                        ..Affinity::default()
                    }),
                    containers: vec![container],
                    volumes: Some(volumes),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}
