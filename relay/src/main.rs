//! `postern`: the relay binary. Parses arguments, loads and validates the config before
//! anything binds, and hands over to [`postern_relay::app`].

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use postern_config::Config;
use postern_queue::inspect::Selector;
use postern_relay::app::{self, Role};
use postern_relay::queue_admin::{self, Action};
use postern_relay::suppression_admin;

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
        #[command(flatten)]
        ready: Ready,
    },
    /// Run delivery workers against the NATS server in `nats.url`.
    Delivery {
        #[arg(long)]
        config: PathBuf,
        #[command(flatten)]
        ready: Ready,
    },
    /// Run ingress and delivery on one machine, with a local nats-server when `nats.url` is absent.
    Standalone {
        /// Without it, the built-in defaults (SMTP on 127.0.0.1:2525).
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(flatten)]
        ready: Ready,
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
    /// Look at and change the queue, talking only to the NATS server in `nats.url`. Exit codes:
    /// 0 done, 1 error, 2 bad arguments, 3 nothing matched, 4 not confirmed (no --yes).
    Queue {
        #[arg(long)]
        config: PathBuf,
        /// Print JSON instead of text.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        command: QueueCmd,
    },
    /// Look at and change the suppression list (recipients that bounced for good), talking
    /// only to the NATS server in `nats.url`. Exit codes as for `queue`.
    Suppression {
        #[arg(long)]
        config: PathBuf,
        /// Print JSON instead of text.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        command: SuppressionCmd,
    },
}

#[derive(Subcommand)]
enum SuppressionCmd {
    /// Every suppressed address, with since when and why.
    List,
    /// One address.
    Show { address: String },
    /// Suppress an address by hand.
    Add { address: String },
    /// Take an address off the list, so mail to it is tried again.
    Remove { address: String },
    /// Add entries read from standard input: JSON lines as `export` writes them, or one
    /// address per line.
    Import,
    /// Every entry as one JSON line, for `import`.
    Export,
}

#[derive(Subcommand)]
enum QueueCmd {
    /// Counts per domain (ready, waiting, held, oldest) and destinations held back.
    Summary,
    /// Every entry of one message: place, headers, envelope with attempts and last replies.
    Show { id: String },
    /// Make waiting or held mail due now.
    Retry(Target),
    /// Keep mail from delivery until it is released.
    Hold(Target),
    /// Make held mail due now.
    Release(Target),
    /// Return mail to its senders with a 5.0.0 report, and remove it.
    Bounce {
        #[command(flatten)]
        target: Target,
        /// Confirm; without it nothing changes.
        #[arg(long)]
        yes: bool,
    },
    /// Remove mail without telling anyone.
    Delete {
        #[command(flatten)]
        target: Target,
        /// Confirm; without it nothing changes.
        #[arg(long)]
        yes: bool,
    },
    /// Entries no worker could settle.
    DeadLetter {
        #[command(subcommand)]
        command: DeadLetterCmd,
    },
}

/// Where a started relay says what it bound.
#[derive(clap::Args)]
struct Ready {
    /// Once every listener is bound, write the bound addresses here as JSON
    /// (`{"smtp": [...], "admin": "...", "nats": "..."}`): with port 0 in the config, the ports the
    /// kernel chose. Written whole (through a rename), so a reader never sees half of it.
    #[arg(long, value_name = "PATH")]
    ready_file: Option<PathBuf>,
}

/// Which mail a queue command applies to: one message, one domain, or all.
#[derive(clap::Args)]
#[group(required = true, multiple = false)]
struct Target {
    /// A queue id (as in the `250 ... queued as` reply and the logs).
    id: Option<String>,
    /// Every entry for this recipient domain.
    #[arg(long)]
    domain: Option<String>,
    /// Everything.
    #[arg(long)]
    all: bool,
}

impl Target {
    fn selector(self) -> Selector {
        match (self.id, self.domain) {
            (Some(id), _) => Selector::Id(id),
            (None, Some(domain)) => Selector::Domain(domain.to_ascii_lowercase()),
            (None, None) => Selector::All,
        }
    }
}

#[derive(Subcommand)]
enum DeadLetterCmd {
    /// Every dead letter with its reason.
    List,
    /// Put dead letters back in the queue.
    Retry {
        /// The dead letter's sequence, as `list` shows it.
        #[arg(required_unless_present = "all")]
        sequence: Option<u64>,
        #[arg(long, conflicts_with = "sequence")]
        all: bool,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse().command) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("postern: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn queue(config: &Path, json: bool, command: QueueCmd) -> anyhow::Result<ExitCode> {
    let config = load(config)?;
    let action = match command {
        QueueCmd::Summary => Action::Summary,
        QueueCmd::Show { id } => Action::Show(id),
        QueueCmd::Retry(target) => Action::Retry(target.selector()),
        QueueCmd::Hold(target) => Action::Hold(target.selector()),
        QueueCmd::Release(target) => Action::Release(target.selector()),
        QueueCmd::Bounce { target, yes } => Action::Bounce {
            selector: target.selector(),
            yes,
        },
        QueueCmd::Delete { target, yes } => Action::Delete {
            selector: target.selector(),
            yes,
        },
        QueueCmd::DeadLetter {
            command: DeadLetterCmd::List,
        } => Action::DeadLetterList,
        QueueCmd::DeadLetter {
            command: DeadLetterCmd::Retry { sequence, .. },
        } => Action::DeadLetterRetry(sequence),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let mut out = std::io::stdout().lock();
    let outcome = runtime.block_on(queue_admin::run(&config, &action, json, &mut out))?;
    Ok(ExitCode::from(outcome.code()))
}

fn suppression(config: &Path, json: bool, command: SuppressionCmd) -> anyhow::Result<ExitCode> {
    let config = load(config)?;
    let action = match command {
        SuppressionCmd::List => suppression_admin::Action::List,
        SuppressionCmd::Show { address } => suppression_admin::Action::Show(address),
        SuppressionCmd::Add { address } => suppression_admin::Action::Add(address),
        SuppressionCmd::Remove { address } => suppression_admin::Action::Remove(address),
        SuppressionCmd::Import => suppression_admin::Action::Import,
        SuppressionCmd::Export => suppression_admin::Action::Export,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let mut input = std::io::stdin().lock();
    let mut out = std::io::stdout().lock();
    let outcome = runtime.block_on(suppression_admin::run(
        &config, &action, json, &mut input, &mut out,
    ))?;
    Ok(ExitCode::from(outcome.code()))
}

fn run(command: Cmd) -> anyhow::Result<ExitCode> {
    let (config, role, ready) = match command {
        Cmd::Ingress { config, ready } => (load(&config)?, Role::Ingress, ready),
        Cmd::Delivery { config, ready } => (load(&config)?, Role::Delivery, ready),
        Cmd::Standalone {
            config: Some(config),
            ready,
        } => (load(&config)?, Role::Standalone, ready),
        Cmd::Standalone {
            config: None,
            ready,
        } => (Config::default(), Role::Standalone, ready),
        Cmd::CheckConfig { config, files } => {
            let loaded = load(&config)?;
            if files {
                app::load_files(&loaded)?;
            }
            for warning in loaded.warnings() {
                eprintln!("postern: warning: {warning}");
            }
            println!("{}: ok", config.display());
            return Ok(ExitCode::SUCCESS);
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
            return Ok(ExitCode::SUCCESS);
        }
        Cmd::Queue {
            config,
            json,
            command,
        } => return queue(&config, json, command),
        Cmd::Suppression {
            config,
            json,
            command,
        } => return suppression(&config, json, command),
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
        let running = app::start(config, role).await?;
        if let Some(path) = &ready.ready_file {
            write_ready_file(path, running.bound())?;
        }
        running.drain_on(shutdown).await;
        anyhow::Ok(())
    });
    drop(runtime);
    // After the runtime: the exporter flushes with a blocking HTTP client.
    telemetry.shutdown();
    result.map(|()| ExitCode::SUCCESS)
}

fn write_ready_file(path: &Path, bound: &app::Bound) -> anyhow::Result<()> {
    let partial = path.with_extension("partial");
    let json = serde_json::to_vec(bound).context("encoding the bound addresses")?;
    std::fs::write(&partial, json)
        .and_then(|()| std::fs::rename(&partial, path))
        .with_context(|| format!("--ready-file {}", path.display()))
}

fn load(path: &Path) -> anyhow::Result<Config> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config {}", path.display()))?;
    Config::from_yaml(&text).with_context(|| format!("invalid config {}", path.display()))
}
