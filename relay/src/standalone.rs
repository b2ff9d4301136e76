//! The local nats-server that `postern standalone` runs and restarts when it dies.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use postern_config::StandaloneConfig;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

/// Why the local nats-server could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StandaloneError {
    #[error("standalone.dataDir {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "standalone.natsServer {path}: cannot start it ({source}); install nats-server or set the path"
    )]
    Spawn {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("nats-server exited during start-up ({0}); is standalone.natsPort {1} already in use?")]
    Exited(std::process::ExitStatus, u16),
    #[error("nats-server did not accept connections on 127.0.0.1:{0} within 15s")]
    NotListening(u16),
}

/// A supervised nats-server child.
#[derive(Debug)]
pub struct NatsServer {
    config: StandaloneConfig,
    child: Child,
}

impl NatsServer {
    /// Starts nats-server with JetStream and waits until it accepts connections.
    pub async fn start(config: &StandaloneConfig) -> Result<NatsServer, StandaloneError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| StandaloneError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        let child = spawn(config)?;
        let mut server = NatsServer {
            config: config.clone(),
            child,
        };
        server.wait_listening().await?;
        info!(port = config.nats_port, data_dir = %config.data_dir.display(), "nats-server started");
        Ok(server)
    }

    /// The client URL of the server.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.config.nats_port)
    }

    async fn wait_listening(&mut self) -> Result<(), StandaloneError> {
        let port = self.config.nats_port;
        for _ in 0..300 {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(StandaloneError::Exited(status, port));
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(StandaloneError::NotListening(port))
    }

    /// Restarts the server whenever it exits, until `shutdown` fires; then stops it.
    pub async fn supervise(mut self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                status = self.child.wait() => {
                    error!(status = ?status.ok(), "nats-server exited; restarting it");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    match spawn(&self.config) {
                        Ok(child) => self.child = child,
                        Err(err) => {
                            error!(%err, "nats-server could not be restarted");
                            tokio::time::sleep(Duration::from_secs(4)).await;
                        }
                    }
                }
            }
        }
        self.stop().await;
    }

    /// Asks the server to stop (SIGTERM), then kills it after ten seconds.
    async fn stop(&mut self) {
        if let Some(pid) = self.child.id().and_then(|pid| i32::try_from(pid).ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            warn!("nats-server did not stop within 10s; killing it");
            let _ = self.child.kill().await;
        }
        info!("nats-server stopped");
    }
}

fn spawn(config: &StandaloneConfig) -> Result<Child, StandaloneError> {
    let mut child = Command::new(&config.nats_server)
        .args([
            "--jetstream",
            "--addr",
            "127.0.0.1",
            "--port",
            &config.nats_port.to_string(),
            "--store_dir",
        ])
        .arg(&config.data_dir)
        .args(["--server_name", "postern-standalone"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| StandaloneError::Spawn {
            path: config.nats_server.clone(),
            source,
        })?;
    if let Some(stderr) = child.stderr.take() {
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                debug!(target: "nats_server", "{line}");
            }
        });
    }
    Ok(child)
}
