//! A NATS server that authorizes clients by token: the relay presents the token from
//! `nats.tokenFile`, and without the right one it takes no mail.

#![allow(clippy::unwrap_used)] // a test that cannot set up may panic

use std::time::Duration;

use postern_e2e::{NatsServer, Relay, ReplyExt, Smtp};

const TOKEN: &str = "s3cret-token-of-the-queue";

fn config(nats: &NatsServer, token: &str) -> (postern_config::Config, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, format!("{token}\n")).unwrap();
    let mut config = Relay::config(nats);
    config.nats.token_file = Some(file);
    (config, dir)
}

/// One message through the relay, which must queue it (250).
async fn submit(relay: &Relay) {
    Smtp::submit(
        relay.smtp(),
        "app@example.com",
        &["rcpt@example.org"],
        b"Subject: t\r\n\r\nx\r\n",
    )
    .await;
}

#[tokio::test]
async fn the_relay_presents_its_token_and_takes_mail() {
    let nats = NatsServer::start_with_token(TOKEN);
    let (config, _dir) = config(&nats, TOKEN);
    let relay = Relay::start(config);
    submit(&relay).await;
    let client = async_nats::ConnectOptions::new()
        .token(TOKEN.into())
        .connect(nats.url())
        .await
        .unwrap();
    let info = async_nats::jetstream::new(client)
        .get_stream(postern_e2e::STREAM)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone();
    assert_eq!(info.state.messages, 1);
}

#[tokio::test]
async fn without_the_right_token_the_relay_is_not_ready_and_says_why() {
    let nats = NatsServer::start_with_token(TOKEN);
    let (config, _dir) = config(&nats, "a-wrong-token");
    let relay = Relay::spawn(&["ingress"], config);
    relay.wait_readyz(503, Duration::from_secs(10));
    let mut smtp = Smtp::connect(relay.smtp()).await;
    smtp.reply().await.is(421, "4.3.2");
    // The log says that the server refused the token.
    postern_e2e::wait_until(
        "an authorization error logged",
        Duration::from_secs(10),
        || relay.log().contains("authorization violation"),
    )
    .await;
    relay.wait_readyz(503, Duration::from_secs(1));
}

#[tokio::test]
async fn the_relay_reaches_a_tls_only_nats_through_its_ca() {
    let pki = postern_e2e::TestPki::new();
    let nats = NatsServer::start_with_tls(&pki);
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.crt");
    std::fs::write(&ca, &pki.ca_pem).unwrap();

    let mut config = Relay::config(&nats);
    config.nats.ca_file = Some(ca.clone());
    let relay = Relay::start(config);
    submit(&relay).await;

    // Without the authority that signed the server's certificate, the relay takes no mail.
    let relay = Relay::spawn(&["ingress"], Relay::config(&nats));
    relay.wait_readyz(503, Duration::from_secs(10));
    let mut smtp = Smtp::connect(relay.smtp()).await;
    smtp.reply().await.is(421, "4.3.2");

    // A CA file that is not there fails at start, naming the field.
    let mut config = Relay::config(&nats);
    config.nats.ca_file = Some(dir.path().join("missing.crt"));
    let output = std::process::Command::new(postern_e2e::relay::postern_binary())
        .args(["check-config", "--files", "--config"])
        .arg({
            let file = dir.path().join("postern.yaml");
            std::fs::write(&file, config.to_yaml().unwrap()).unwrap();
            file
        })
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("nats.caFile"), "{stderr}");
}
