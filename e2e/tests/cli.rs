//! The `postern` command line: config checking, start-up failures that name the field and
//! happen before any port is bound, standalone mode with its supervised nats-server.

#![allow(clippy::unwrap_used)] // a test that cannot set up may panic

use std::io::Write;
use std::net::TcpListener;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use postern_config::{Config, Route};
use postern_e2e::nats::{nats_server_binary, queue_entries};
use postern_e2e::relay::postern_binary;
use postern_e2e::{ClosedPort, MockMx, NatsServer, Relay, ReplyExt, STREAM, Smtp};

fn postern(args: &[&str], config: Option<&str>) -> Output {
    let file = tempfile::NamedTempFile::new().unwrap();
    let mut command = Command::new(postern_binary());
    command.args(args);
    if let Some(yaml) = config {
        std::fs::write(file.path(), yaml).unwrap();
        command.arg("--config").arg(file.path());
    }
    command.output().unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// `postern check-config` refuses `yaml` with exit code 1, saying `expected`.
fn check_config_refuses(yaml: &str, expected: &str) {
    let refused = postern(&["check-config"], Some(yaml));
    assert_eq!(refused.status.code(), Some(1), "{yaml}");
    assert!(
        stderr(&refused).contains(expected),
        "{yaml}: {}",
        stderr(&refused)
    );
}

#[test]
fn check_config_accepts_a_valid_file_and_names_bad_fields() {
    let ok = postern(
        &["check-config"],
        Some("hostname: relay.example.com\nnats: { url: \"nats://127.0.0.1:4222\" }\n"),
    );
    assert!(ok.status.success(), "{}", stderr(&ok));
    assert!(String::from_utf8_lossy(&ok.stdout).ends_with(": ok\n"));

    check_config_refuses(
        "ingress:\n  limits: { maxRecipients: 0 }\n",
        "ingress.limits.maxRecipients: must be greater than zero",
    );

    let unknown = postern(&["check-config"], Some("ingress:\n  listners: []\n"));
    assert_eq!(unknown.status.code(), Some(1));
    assert!(
        stderr(&unknown).contains("listners"),
        "{}",
        stderr(&unknown)
    );

    let open = postern(
        &["check-config"],
        Some("ingress: { allowedNetworks: [\"0.0.0.0/0\"] }\n"),
    );
    assert!(open.status.success(), "valid, only risky");
    assert!(
        stderr(&open)
            .contains("warning: ingress.allowedNetworks[0]: 0.0.0.0/0 lets every address relay"),
        "{}",
        stderr(&open)
    );

    let files = postern(
        &["check-config", "--files"],
        Some("ingress: { usersFile: /nonexistent/users }\n"),
    );
    assert_eq!(files.status.code(), Some(1));
    assert!(
        stderr(&files).contains("ingress.usersFile /nonexistent/users"),
        "{}",
        stderr(&files)
    );
}

#[test]
fn ingress_refuses_to_start_before_binding_anything() {
    // Holding the SMTP port turns a bind that came too early into a different error; the admin
    // endpoint is bound after the listeners.
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let smtp = held.local_addr().unwrap().port();
    let base = format!(
        "nats: {{ url: \"nats://127.0.0.1:1\" }}\ningress: {{ listeners: [ {{ address: \"127.0.0.1:{smtp}\" }} ] }}\nadmin: {{ address: \"127.0.0.1:0\" }}\n"
    );
    let cases = [
        (
            format!("{base}shutdownGrace: 0s\n"),
            "shutdownGrace: must be greater than zero",
        ),
        (
            base.replace("ingress: {", "ingress: { usersFile: /nonexistent/users,"),
            "ingress.usersFile /nonexistent/users",
        ),
        (
            base.replace(
                "ingress: {",
                "ingress: { tls: { certFile: /nonexistent/crt, keyFile: /nonexistent/key },",
            ),
            "ingress.tls.certFile /nonexistent/crt",
        ),
        (
            base.replace("nats: { url: \"nats://127.0.0.1:1\" }", "nats: {}"),
            "nats.url: required",
        ),
    ];
    for (yaml, message) in cases {
        let out = postern(&["ingress"], Some(&yaml));
        assert_eq!(out.status.code(), Some(1), "{yaml}");
        assert!(
            stderr(&out).contains(message),
            "expected {message:?} in {}",
            stderr(&out)
        );
    }
    let data = tempfile::tempdir().unwrap();
    let standalone = base.replace(
        "nats: { url: \"nats://127.0.0.1:1\" }",
        &format!(
            "standalone: {{ natsServer: /nonexistent/nats-server, dataDir: {:?} }}",
            data.path().display().to_string()
        ),
    );
    let out = postern(&["standalone"], Some(&standalone));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("standalone.natsServer /nonexistent/nats-server"),
        "{}",
        stderr(&out)
    );
    let out = postern(&["ingress"], Some(&base));
    assert!(
        stderr(&out).contains(&format!("ingress.listeners[0].address 127.0.0.1:{smtp}")),
        "{}",
        stderr(&out)
    );
}

#[test]
fn hash_password_prints_an_argon2id_hash() {
    let mut child = Command::new(postern_binary())
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"s3cret\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let hash = String::from_utf8(out.stdout).unwrap();
    let users = postern_relay::users::Users::parse(&format!("alice:{}", hash.trim())).unwrap();
    let (known, verifier) = users.verifier("alice");
    assert!(known && verifier.verify(b"s3cret", &mut Vec::new()));
}

/// A `postern standalone` config whose own nats-server keeps its store under `data` and listens
/// on a port it chooses.
fn standalone_config(data: &std::path::Path) -> Config {
    let placeholder = NatsServer::start();
    let mut config: Config = Relay::config(&placeholder);
    drop(placeholder);
    config.nats.url = None;
    config.standalone.nats_server = nats_server_binary();
    config.standalone.data_dir = data.join("jetstream");
    config.standalone.nats_port = 0;
    config
}

/// Finds the pid of the nats-server child of a standalone config with `data`, and the port
/// argument it was started with.
fn nats_pid(data: &std::path::Path) -> Option<(i32, String)> {
    nats_pids(data).into_iter().next()
}

/// Every nats-server running with the config file of a standalone config with `data`.
fn nats_pids(data: &std::path::Path) -> Vec<(i32, String)> {
    let conf = data.join("jetstream/nats-server.conf");
    let Ok(processes) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    processes
        .flatten()
        .filter_map(|entry| {
            let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
            let is_ours = args.first()?.ends_with(b"nats-server")
                && args
                    .windows(2)
                    .any(|w| w[0] == b"--config" && w[1] == conf.as_os_str().as_encoded_bytes());
            let port = args.windows(2).find(|w| w[0] == b"--port")?[1];
            is_ours.then(|| (pid, String::from_utf8_lossy(port).into_owned()))
        })
        .collect()
}

#[tokio::test]
async fn a_standalone_killed_at_once_has_its_nats_server_stopped_by_the_next_start() {
    let mx = MockMx::accepting().await;
    let data = tempfile::tempdir().unwrap();
    let mut config = standalone_config(data.path());
    config.delivery.routes = vec![postern_e2e::route_all(&mx.host())];
    let mut first = Relay::spawn(&["standalone"], config.clone());
    first.wait_ready(Duration::from_secs(20));
    let (orphan, _) = nats_pid(data.path()).expect("standalone started nats-server");
    // SIGKILL to postern alone, as the OOM killer sends it: it cannot stop its child.
    first.kill();
    assert_eq!(
        nats_pids(data.path()),
        [(orphan, "-1".to_string())],
        "the server outlived postern"
    );

    let second = Relay::spawn(&["standalone"], config);
    second.wait_ready(Duration::from_secs(30));
    let running = nats_pids(data.path());
    assert_eq!(running.len(), 1, "one server on the store: {running:?}");
    assert_ne!(running[0].0, orphan, "the leftover was stopped");
    assert!(
        second
            .log()
            .contains("a nats-server left by an earlier postern standalone still runs"),
        "{}",
        second.log()
    );
    Smtp::submit(
        second.smtp(),
        "a@example.com",
        &["b@example.org"],
        b"Subject: after\r\n\r\nx\r\n",
    )
    .await;
    mx.wait_for(1, Duration::from_secs(20)).await;
}

#[tokio::test]
async fn standalone_runs_and_restarts_its_own_nats_server() {
    let mx = MockMx::accepting().await;
    let closed = ClosedPort::new();
    let data = tempfile::tempdir().unwrap();
    let mut config = standalone_config(data.path());
    config.delivery.routes = vec![
        Route {
            domain: "held.example".into(),
            host: format!("127.0.0.1:{}", closed.port()),
            tls: Default::default(),
        },
        postern_e2e::route_all(&mx.host()),
    ];
    let mut relay = Relay::spawn(&["standalone"], config);
    relay.wait_ready(Duration::from_secs(20));

    let mut s = Smtp::greeted(relay.smtp()).await;
    s.ehlo("client.test").await;
    s.send_mail(
        "a@example.com",
        &["b@example.org"],
        b"Subject: one\r\n\r\nx\r\n",
    )
    .await
    .is(250, "2.0.0");
    mx.wait_for(1, Duration::from_secs(20)).await;
    // A message for an unreachable host waits in the queue for its retry.
    s.send_mail(
        "a@example.com",
        &["c@held.example"],
        b"Subject: held\r\n\r\nx\r\n",
    )
    .await
    .is(250, "2.0.0");
    let url = relay.bound.nats.clone();
    let nats_port = url.rsplit_once(':').unwrap().1.to_string();
    let held = || async {
        queue_entries(&url, STREAM)
            .await
            .iter()
            .filter(|e| e.envelope.domain == "held.example")
            .count()
    };
    let start = std::time::Instant::now();
    while relay.metric("postern_delivery_outcomes_total{result=\"deferred\"}") < 1.0
        || held().await != 1
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the held message was not deferred\n{}",
            relay.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (pid, asked) = nats_pid(data.path()).expect("standalone started nats-server");
    assert_eq!(asked, "-1", "natsPort 0 lets nats-server choose");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    relay.wait_readyz(503, Duration::from_secs(10));
    relay.wait_ready(Duration::from_secs(30));
    let (restarted, port) = nats_pid(data.path()).expect("a nats-server runs again");
    assert_ne!(restarted, pid, "a new nats-server runs");
    assert_eq!(port, nats_port, "it came back on the port it chose first");
    assert_eq!(held().await, 1, "the queued entry survived the restart");
    s.send_mail(
        "a@example.com",
        &["d@example.org"],
        b"Subject: two\r\n\r\nx\r\n",
    )
    .await
    .is(250, "2.0.0");
    let delivered = mx.wait_for(2, Duration::from_secs(20)).await;
    assert_eq!(delivered[1].recipients, ["d@example.org"]);

    relay.sigterm();
    assert!(
        relay
            .wait_exit(Duration::from_secs(20))
            .expect("exits")
            .success()
    );
    assert!(
        nats_pid(data.path()).is_none(),
        "nats-server stopped with postern"
    );
}

#[tokio::test]
async fn nats_url_takes_several_seeds_in_check_config_and_at_start() {
    let nats = NatsServer::start();
    // The first seed answers nothing; the client goes on to the next.
    let closed = ClosedPort::new();
    let seeds = format!("nats://127.0.0.1:{},{}", closed.port(), nats.url());
    let check = postern(
        &["check-config"],
        Some(&format!("nats: {{ url: \"{seeds}\" }}\n")),
    );
    assert!(check.status.success(), "{}", stderr(&check));
    check_config_refuses(
        "nats: { url: \"nats://127.0.0.1:4222,nats://127.0.0.1:x\" }\n",
        "nats.url: \"nats://127.0.0.1:x\"",
    );

    let mut config = Relay::config(&nats);
    config.nats.url = Some(seeds);
    let relay = Relay::start(config);
    Smtp::submit(
        relay.smtp(),
        "a@example.com",
        &["b@example.org"],
        b"Subject: seeds\r\n\r\nx\r\n",
    )
    .await;
    assert_eq!(nats.entries(STREAM).await.len(), 1);
}

#[tokio::test]
async fn standalone_syncs_every_message_when_asked() {
    let data = tempfile::tempdir().unwrap();
    let mut config = standalone_config(data.path());
    config.standalone.sync = postern_config::Sync::Always;
    let relay = Relay::spawn(&["standalone"], config);
    relay.wait_ready(Duration::from_secs(20));
    let written = std::fs::read_to_string(data.path().join("jetstream/nats-server.conf")).unwrap();
    assert!(written.contains("sync_interval: always"), "{written}");
    Smtp::submit(
        relay.smtp(),
        "a@example.com",
        &["b@example.org"],
        b"Subject: synced\r\n\r\nx\r\n",
    )
    .await;
    assert!(relay.log().contains("sync=always"), "{}", relay.log());

    check_config_refuses(
        "standalone: { sync: sometimes }\n",
        "neither always nor a duration",
    );
}

#[tokio::test]
async fn the_ready_file_names_the_ports_the_kernel_chose() {
    let nats = NatsServer::start();
    let mut config = Relay::config(&nats);
    config.ingress.listeners.push(postern_e2e::relay::listener(
        postern_config::ListenerTls::None,
    ));
    let relay = Relay::start(config);
    let bound = &relay.bound;
    assert_eq!(bound.smtp.len(), 2, "{bound:?}");
    assert_ne!(bound.smtp[0], bound.smtp[1]);
    for address in &bound.smtp {
        assert_ne!(address.port(), 0);
        Smtp::greeted(*address).await;
    }
    assert_ne!(bound.admin.port(), 0);
    assert_eq!(relay.http_status("/healthz"), Some(200));
    assert_eq!(bound.nats, nats.url());
}
