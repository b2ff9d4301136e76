//! `postern`: the relay binary. Parses arguments, loads and validates the config before
//! anything binds, and hands over to [`postern_relay::app`].

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use postern_config::Config;
use postern_relay::app::{self, Role};

#[derive(Parser)]
#[command(
    name = "postern",
    version,
    about = "Kubernetes-native outbound mail relay"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the SMTP ingress against the NATS server in `nats.url`.
    Ingress {
        #[arg(long)]
        config: PathBuf,
    },
    /// Run delivery workers against the NATS server in `nats.url`.
    Delivery {
        #[arg(long)]
        config: PathBuf,
    },
    /// Run ingress and delivery on one machine, with a local nats-server when `nats.url` is absent.
    Standalone {
        /// Without it, the built-in defaults (SMTP on 127.0.0.1:2525).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Check a config file and exit: 0 when valid, 1 with the field at fault when not.
    CheckConfig {
        #[arg(long)]
        config: PathBuf,
        /// Also load the files it names (users file, TLS certificate and key).
        #[arg(long)]
        files: bool,
    },
    /// Read a password from standard input and print its argon2id hash for the users file.
    HashPassword,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("postern: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let (config, role) = match cli.command {
        Cmd::Ingress { config } => (load(&config)?, Role::Ingress),
        Cmd::Delivery { config } => (load(&config)?, Role::Delivery),
        Cmd::Standalone {
            config: Some(config),
        } => (load(&config)?, Role::Standalone),
        Cmd::Standalone { config: None } => (Config::default(), Role::Standalone),
        Cmd::CheckConfig { config, files } => {
            let loaded = load(&config)?;
            if files {
                app::load_files(&loaded)?;
            }
            for warning in loaded.warnings() {
                eprintln!("postern: warning: {warning}");
            }
            println!("{}: ok", config.display());
            return Ok(());
        }
        Cmd::HashPassword => {
            let mut password = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut password)
                .context("reading the password")?;
            let password = password.trim_end_matches(['\r', '\n']);
            println!(
                "{}",
                postern_relay::users::hash_password(password).map_err(anyhow::Error::msg)?
            );
            return Ok(());
        }
    };
    if role != Role::Standalone && config.nats.url.is_none() {
        return Err(app::StartError::MissingNatsUrl.into());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let telemetry = {
        let _entered = runtime.enter();
        postern_relay::telemetry::init(&config.log, &config.telemetry)?
    };
    let result = runtime.block_on(async {
        let shutdown = app::shutdown_on_signals().context("installing signal handlers")?;
        app::run(config, role, shutdown)
            .await
            .map_err(anyhow::Error::from)
    });
    drop(runtime);
    // After the runtime: the exporter flushes with a blocking HTTP client.
    telemetry.shutdown();
    result
}

fn load(path: &Path) -> anyhow::Result<Config> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config {}", path.display()))?;
    Config::from_yaml(&text).with_context(|| format!("invalid config {}", path.display()))
}
