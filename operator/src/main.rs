//! `postern-operator`: reconciles `Relay` and `Domain` resources (group `postern.io`).

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "postern-operator",
    version,
    about = "Kubernetes operator for Postern"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Reconcile Relays and Domains (one replica leads, the others wait).
    Run(Box<RunArgs>),
    /// Print the Relay and Domain CRDs as YAML.
    Crds,
    /// Print the ClusterRole and the leader-election Role the operator needs, as YAML.
    Rbac {
        /// Name of both roles.
        #[arg(long, default_value = "postern-operator")]
        name: String,
        /// Namespace of the Role (the operator's).
        #[arg(long, default_value = "postern-system")]
        namespace: String,
        /// Namespaces the operator watches (repeat); none: the whole cluster.
        #[arg(long = "watch-namespace")]
        watch_namespaces: Vec<String>,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Namespace of the leader-election Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "postern-system")]
    namespace: String,
    /// Identity in the Lease.
    #[arg(long, env = "POD_NAME", default_value = "postern-operator")]
    identity: String,
    /// Name server (ip:port) for DNS verification; repeatable. Default: the system's.
    #[arg(long = "nameserver")]
    nameservers: Vec<SocketAddr>,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, default_value = "0.0.0.0:8080")]
    admin_address: SocketAddr,
    /// Scale delivery with KEDA on queue lag when KEDA is installed (auto), or never.
    #[arg(long, value_enum, default_value = "auto")]
    keda: Keda,
    /// Image of relay pods whose Relay sets no spec.image.
    #[arg(long, default_value = postern_operator::relay::build::DEFAULT_IMAGE)]
    relay_image: String,
    /// NATS client URL of Relays that set no spec.nats.url (the Helm chart passes its NATS).
    #[arg(long)]
    nats_url: Option<String>,
    /// NATS monitoring endpoint (host:port) KEDA reads for those Relays.
    #[arg(long, requires = "nats_url")]
    nats_monitoring_endpoint: Option<String>,
    /// Secret holding the token of --nats-url's server, as <namespace>/<name>[/<key>]; Relays
    /// that use that server get a copy.
    #[arg(long, requires = "nats_url")]
    nats_token_secret: Option<postern_operator::context::SecretSource>,
    /// Secret holding the CA certificate of --nats-url's server, as <namespace>/<name>[/<key>]
    /// (key default ca.crt); Relays that use that server get a copy and connect over TLS.
    #[arg(long, requires = "nats_url")]
    nats_ca_secret: Option<postern_operator::context::SecretSource>,
    /// Stream replicas of Relays that set no spec.nats.streamReplicas (1, 3 or 5).
    #[arg(long, value_parser = stream_replicas)]
    stream_replicas: Option<u8>,
    /// Namespaces whose Relays and Domains the operator reconciles (repeat); none: all.
    /// With namespaces it needs Roles there only (`postern-operator rbac --watch-namespace`).
    #[arg(long = "watch-namespace")]
    watch_namespaces: Vec<String>,
    /// Log filter; RUST_LOG overrides it.
    #[arg(long, default_value = "info")]
    log_level: String,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Keda {
    Auto,
    Disabled,
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Crds => match postern_operator::api::crd_files() {
            Ok(files) => {
                for (_, yaml) in files {
                    print!("---\n{yaml}");
                }
                ExitCode::SUCCESS
            }
            Err(err) => fail(err),
        },
        Command::Rbac {
            name,
            namespace,
            watch_namespaces,
        } => {
            for role in postern_operator::rbac::roles(&name, &namespace, &watch_namespaces) {
                match serde_saphyr::to_string(&role) {
                    Ok(yaml) => print!("---\n{yaml}"),
                    Err(err) => return fail(err),
                }
            }
            ExitCode::SUCCESS
        }
        Command::Run(args) => {
            let args = *args;
            let filter = tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&args.log_level));
            tracing_subscriber::fmt()
                .json()
                .with_env_filter(filter)
                .init();
            if rustls::crypto::ring::default_provider()
                .install_default()
                .is_err()
            {
                return fail("a TLS crypto provider was already installed");
            }
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(runtime) => runtime,
                Err(err) => return fail(err),
            };
            let keda = matches!(args.keda, Keda::Auto);
            let settings = postern_operator::run::Settings {
                lease_namespace: args.namespace,
                identity: args.identity,
                nameservers: args.nameservers,
                admin_address: args.admin_address,
                keda,
                relay_image: args.relay_image,
                nats_url: args.nats_url,
                nats_monitoring_endpoint: args.nats_monitoring_endpoint,
                nats_token_secret: args.nats_token_secret,
                nats_ca_secret: args.nats_ca_secret,
                stream_replicas: args.stream_replicas,
                watch_namespaces: args.watch_namespaces,
            };
            match runtime.block_on(postern_operator::run::run(settings)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => fail(err),
            }
        }
    }
}

fn stream_replicas(text: &str) -> Result<u8, String> {
    match text {
        "1" => Ok(1),
        "3" => Ok(3),
        "5" => Ok(5),
        _ => Err("1, 3 or 5".into()),
    }
}

fn fail(err: impl std::fmt::Display) -> ExitCode {
    eprintln!("postern-operator: {err}");
    ExitCode::FAILURE
}
