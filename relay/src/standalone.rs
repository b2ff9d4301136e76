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
    #[error("nats-server did not say which port it chose for standalone.natsPort 0 within 15s")]
    NoPortChosen,
}

/// A supervised nats-server child.
#[derive(Debug)]
pub struct NatsServer {
    config: StandaloneConfig,
    child: Child,
    /// The client port: `natsPort`, or the one the server chose for 0, kept across restarts so
    /// that clients reconnect to it.
    port: u16,
}

impl NatsServer {
    /// Starts nats-server with JetStream and waits until it accepts connections.
    pub async fn start(config: &StandaloneConfig) -> Result<NatsServer, StandaloneError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| StandaloneError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        stop_leftover(config).await;
        let child = spawn(config, config.nats_port)?;
        let mut server = NatsServer {
            config: config.clone(),
            child,
            port: config.nats_port,
        };
        if server.port == 0 {
            server.port = server.chosen_port().await?;
        }
        server.wait_listening().await?;
        info!(port = server.port, data_dir = %config.data_dir.display(), sync = %config.sync, "nats-server started");
        Ok(server)
    }

    /// The client URL of the server.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The port a server started with `--port -1` chose, from the file it writes into
    /// `--ports_file_dir` once it listens.
    async fn chosen_port(&mut self) -> Result<u16, StandaloneError> {
        let dir = ports_dir(&self.config);
        for _ in 0..300 {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(StandaloneError::Exited(status, 0));
            }
            if let Some(port) = read_ports_file(&dir) {
                return Ok(port);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(StandaloneError::NoPortChosen)
    }

    async fn wait_listening(&mut self) -> Result<(), StandaloneError> {
        let port = self.port;
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
                    match spawn(&self.config, self.port) {
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

/// The server's config file: its store, when it syncs and where it writes its pid (address and
/// port are flags, so that `ps` shows them).
pub fn server_config(config: &StandaloneConfig) -> String {
    let sync = match config.sync {
        postern_config::Sync::Always => "always".to_string(),
        postern_config::Sync::Every(every) => format!("\"{}s\"", every.get().as_secs().max(1)),
    };
    format!(
        "server_name: postern-standalone\npid_file: {:?}\njetstream {{\n  store_dir: {:?}\n  sync_interval: {sync}\n}}\n",
        pid_file(config).display().to_string(),
        config.data_dir.display().to_string(),
    )
}

/// The server's config file in the data directory.
fn config_file(config: &StandaloneConfig) -> PathBuf {
    config.data_dir.join("nats-server.conf")
}

/// Where the server writes its pid, so that a later start can find it.
fn pid_file(config: &StandaloneConfig) -> PathBuf {
    config.data_dir.join("nats-server.pid")
}

/// Stops a nats-server that an earlier `postern standalone` on this data directory left running
/// (a SIGKILLed postern cannot stop its child): two servers on one store would both write it,
/// and a fixed `natsPort` would be taken. The pid file names the candidate; only a live process
/// started with this data directory's config file is stopped, so a reused pid is left alone.
async fn stop_leftover(config: &StandaloneConfig) {
    let Some(pid) = std::fs::read_to_string(pid_file(config))
        .ok()
        .and_then(|text| text.trim().parse::<i32>().ok())
    else {
        return;
    };
    let file = config_file(config);
    if !runs_config(pid, &file) {
        return;
    }
    warn!(
        pid,
        data_dir = %config.data_dir.display(),
        "a nats-server left by an earlier postern standalone still runs on this data directory; stopping it"
    );
    let target = nix::unistd::Pid::from_raw(pid);
    for (signal, patience) in [
        (nix::sys::signal::Signal::SIGTERM, Duration::from_secs(10)),
        (nix::sys::signal::Signal::SIGKILL, Duration::from_secs(5)),
    ] {
        let _ = nix::sys::signal::kill(target, signal);
        let deadline = tokio::time::Instant::now() + patience;
        while runs_config(pid, &file) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if !runs_config(pid, &file) {
            info!(pid, "the earlier nats-server stopped");
            return;
        }
    }
    error!(pid, "the earlier nats-server did not stop");
}

/// True when process `pid` is alive and was started with `--config` naming `file` (read from
/// `/proc`; a zombie has no command line, so it counts as stopped).
fn runs_config(pid: i32, file: &std::path::Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let proc = PathBuf::from(format!("/proc/{pid}"));
    let Ok(cmdline) = std::fs::read(proc.join("cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    let Some(named) = args.windows(2).find(|w| w[0] == b"--config").map(|w| w[1]) else {
        return false;
    };
    let named = std::path::Path::new(std::ffi::OsStr::from_bytes(named));
    let named = match std::fs::read_link(proc.join("cwd")) {
        Ok(cwd) => cwd.join(named),
        Err(_) => named.to_path_buf(),
    };
    match (named.canonicalize(), file.canonicalize()) {
        (Ok(named), Ok(file)) => named == file,
        _ => false,
    }
}

/// Where a server asked to choose its port says which one it chose.
fn ports_dir(config: &StandaloneConfig) -> PathBuf {
    config.data_dir.join("ports")
}

/// The client port in the `<executable>_<pid>.ports` file nats-server writes
/// (`{"nats":["nats://127.0.0.1:PORT"]}`), if one is there.
pub fn read_ports_file(dir: &std::path::Path) -> Option<u16> {
    #[derive(serde::Deserialize)]
    struct Ports {
        nats: Vec<String>,
    }
    std::fs::read_dir(dir).ok()?.flatten().find_map(|entry| {
        let text = std::fs::read_to_string(entry.path()).ok()?;
        let ports: Ports = serde_json::from_str(&text).ok()?;
        ports.nats.first()?.rsplit_once(':')?.1.parse().ok()
    })
}

/// Starts nats-server on `port`; on 0 it chooses one and writes it to [`ports_dir`].
fn spawn(config: &StandaloneConfig, port: u16) -> Result<Child, StandaloneError> {
    let data_dir_error = |path: &std::path::Path| {
        let path = path.to_path_buf();
        move |source| StandaloneError::DataDir { path, source }
    };
    let file = config_file(config);
    std::fs::write(&file, server_config(config)).map_err(data_dir_error(&file))?;
    let mut command = Command::new(&config.nats_server);
    command
        .arg("--config")
        .arg(&file)
        .args(["--addr", "127.0.0.1"]);
    if port == 0 {
        let dir = ports_dir(config);
        match std::fs::remove_dir_all(&dir) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                return Err(data_dir_error(&dir)(err));
            }
            _ => {}
        }
        std::fs::create_dir_all(&dir).map_err(data_dir_error(&dir))?;
        command.args(["--port", "-1", "--ports_file_dir"]).arg(&dir);
    } else {
        command.args(["--port", &port.to_string()]);
    }
    let mut child = command
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_config_says_when_jetstream_syncs() {
        let mut config = StandaloneConfig {
            data_dir: "/var/lib/postern".into(),
            ..StandaloneConfig::default()
        };
        let default = server_config(&config);
        assert!(
            default.contains("store_dir: \"/var/lib/postern\""),
            "{default}"
        );
        assert!(default.contains("sync_interval: \"120s\""), "{default}");
        assert!(
            default.contains("pid_file: \"/var/lib/postern/nats-server.pid\""),
            "{default}"
        );
        config.sync = postern_config::Sync::Always;
        assert!(server_config(&config).contains("sync_interval: always"));
    }

    #[test]
    fn only_a_process_started_with_the_config_file_counts_as_a_leftover() {
        use std::os::unix::process::CommandExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("nats-server.conf");
        std::fs::write(&file, "").unwrap();
        let this = i32::try_from(std::process::id()).unwrap();
        assert!(!runs_config(this, &file), "this test process");
        // Named relative to the process's working directory, as `dataDir: data` gives it.
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30; :", "sh", "--config", "nats-server.conf"])
            .current_dir(dir.path())
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        let other = dir.path().join("other.conf");
        std::fs::write(&other, "").unwrap();
        // The kernel lets the parent go on before the new program's command line is set up.
        let started = std::time::Instant::now();
        while !runs_config(pid, &file) {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the child never showed its command line"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!runs_config(pid, &other));
        // The whole group, so that the shell's sleep goes too.
        nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        child.wait().unwrap();
        assert!(!runs_config(pid, &file), "a process that is gone");
    }

    #[test]
    fn the_chosen_port_comes_from_the_ports_file() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_ports_file(dir.path()), None);
        std::fs::write(dir.path().join("nats-server_1.ports"), "{\"nats\":[").unwrap();
        assert_eq!(read_ports_file(dir.path()), None, "a file half written");
        std::fs::write(
            dir.path().join("nats-server_1.ports"),
            r#"{"nats":["nats://127.0.0.1:41613"],"monitoring":["http://127.0.0.1:8222"]}"#,
        )
        .unwrap();
        assert_eq!(read_ports_file(dir.path()), Some(41613));
    }
}
