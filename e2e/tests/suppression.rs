//! The suppression list end to end: a server's "no such user" puts the recipient on it, RCPT
//! refuses it from then on (or, with `action: bounce`, delivery bounces it without an attempt),
//! entries expire, and `postern suppression` lists, shows, adds, removes, exports and imports
//! them, all against a real nats-server.

#![allow(clippy::unwrap_used)] // a test that cannot set up may panic

use std::sync::Arc;
use std::time::Duration;

use postern_e2e::admin_cli::{AdminCli, expect_code};
use postern_e2e::{MockMx, ReplyExt, STREAM, Smtp, route_all, start_standalone};

const WAIT: Duration = Duration::from_secs(20);

/// An MX that refuses `gone@` as unknown and takes everyone else.
async fn mx() -> MockMx {
    MockMx::start(Arc::new(|rcpt: &str| {
        if rcpt.starts_with("gone@") {
            "550 5.1.1 no such user here".into()
        } else {
            "250 2.1.5 ok".into()
        }
    }))
    .await
}

/// The reply RCPT gets for `rcpt` in a fresh transaction.
async fn rcpt(relay: std::net::SocketAddr, rcpt: &str) -> postern_smtp::Reply {
    let mut s = Smtp::greeted(relay).await;
    s.ehlo("client.test").await;
    s.cmd("MAIL FROM:<sender@example.com>")
        .await
        .is(250, "2.1.0");
    let reply = s.cmd(&format!("RCPT TO:<{rcpt}>")).await;
    s.cmd("QUIT").await.is(221, "2.0.0");
    reply
}

#[tokio::test]
async fn an_unknown_user_is_suppressed_refused_at_rcpt_and_managed_from_the_command_line() {
    let mx = mx().await;
    let (nats, relay) = start_standalone(|c| c.delivery.routes = vec![route_all(&mx.host())]);
    let cli = AdminCli::new("suppression", &nats, "");
    let none = cli.json(&["list"], 0);
    assert_eq!(none, serde_json::json!([]));
    Smtp::submit(
        relay.smtp(),
        "sender@example.com",
        &["gone@example.org"],
        b"Subject: hello\r\n\r\nx\r\n",
    )
    .await;
    // The message is refused, its bounce delivered to the sender.
    mx.wait_for(1, WAIT).await;
    nats.wait_empty(STREAM, WAIT).await;
    assert_eq!(relay.metric("postern_suppression_added_total"), 1.0);

    let entry = cli.json(&["show", "gone@example.org"], 0);
    assert_eq!(entry["address"], "gone@example.org");
    assert_eq!(entry["reason"], "bounce");
    assert_eq!(entry["reply"], "550 5.1.1 no such user here");
    assert!(entry["queueId"].is_string(), "{entry}");

    // Any case of the address is refused, with since when and why; others go through.
    for address in ["gone@example.org", "Gone@Example.ORG"] {
        let reply = rcpt(relay.smtp(), address).await.is(550, "5.1.1");
        let text = reply.text();
        assert!(
            text.contains("is on the suppression list since 20")
                && text.ends_with("after 550 5.1.1 no such user here"),
            "{text}"
        );
    }
    rcpt(relay.smtp(), "other@example.org")
        .await
        .is(250, "2.1.5");
    assert_eq!(
        relay.metric("postern_ingress_rejections_total{reason=\"suppressed\"}"),
        2.0
    );
    assert_eq!(mx.transactions(), 2, "the refused RCPTs reached nobody");

    // Export, remove, and the address is taken again; import brings it back.
    let exported = cli.text(&["export"], 0);
    assert_eq!(exported.lines().count(), 1, "{exported}");
    assert!(
        cli.text(&["remove", "gone@example.org"], 0)
            .contains("removed")
    );
    cli.text(&["remove", "gone@example.org"], 3);
    cli.text(&["show", "gone@example.org"], 3);
    rcpt(relay.smtp(), "gone@example.org")
        .await
        .is(250, "2.1.5");
    let imported = cli.run_with_input(
        &["import"],
        format!("{exported}# a comment\n\nManual@Example.org\n").as_bytes(),
    );
    expect_code(&["import"], &imported, 0);
    assert_eq!(String::from_utf8_lossy(&imported.stdout), "2 imported\n");
    assert_eq!(
        cli.json(&["show", "gone@example.org"], 0),
        entry,
        "as exported"
    );
    let manual = rcpt(relay.smtp(), "manual@example.org")
        .await
        .is(550, "5.1.1");
    assert!(
        manual.text().ends_with("by the administrator"),
        "{}",
        manual.text()
    );

    // Adding by hand, and what is refused.
    cli.text(&["add", "Hand@Example.org"], 0);
    let list = cli.text(&["list"], 0);
    assert!(list.contains("hand@example.org  since "), "{list}");
    assert!(list.ends_with("3 suppressed\n"), "{list}");
    let bad = cli.run(&["add", "not an address"]);
    expect_code(&["add"], &bad, 1);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("is not an address"));
    let bad = cli.run_with_input(&["import"], b"ok@example.org\n{broken\n");
    expect_code(&["import"], &bad, 1);
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("line 2"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}

#[tokio::test]
async fn with_action_bounce_a_suppressed_recipient_is_taken_and_bounced_without_an_attempt() {
    let mx = mx().await;
    let (nats, relay) = start_standalone(|c| {
        c.delivery.routes = vec![route_all(&mx.host())];
        c.suppression.action = postern_config::SuppressionAction::Bounce;
    });
    let cli = AdminCli::new("suppression", &nats, "");
    cli.text(&["add", "listed@example.org"], 0);
    Smtp::submit(
        relay.smtp(),
        "sender@example.com",
        &["listed@example.org", "fine@example.org"],
        b"Subject: both\r\n\r\nx\r\n",
    )
    .await;
    // The message to fine@, and the bounce for listed@.
    mx.wait_for(2, WAIT).await;
    nats.wait_empty(STREAM, WAIT).await;
    let delivered = mx.delivered();
    assert_eq!(delivered.len(), 2, "{delivered:#?}");
    let message = delivered.iter().find(|d| !d.from.is_empty()).unwrap();
    assert_eq!(message.recipients, ["fine@example.org"]);
    assert!(
        delivered
            .iter()
            .all(|d| d.commands.iter().all(|c| !c.contains("listed@"))),
        "listed@ never reached the MX"
    );
    let bounce = delivered.iter().find(|d| d.from.is_empty()).unwrap();
    let text = bounce.text();
    assert!(
        text.contains(
            "Final-Recipient: rfc822; listed@example.org\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        ),
        "{text}"
    );
    assert!(text.contains("is on the suppression list since"), "{text}");
    assert!(
        !text.contains("Remote-MTA"),
        "Postern's own decision: {text}"
    );
    assert_eq!(relay.metric("postern_delivery_suppressed_total"), 1.0);
    assert_eq!(
        relay.metric("postern_suppression_added_total"),
        0.0,
        "its own refusal does not renew the entry"
    );
}

#[tokio::test]
async fn entries_expire() {
    let nats = postern_e2e::NatsServer::start();
    let cli = AdminCli::new("suppression", &nats, "suppression: { expiry: 1s }\n");
    cli.text(&["add", "brief@example.org"], 0);
    cli.text(&["show", "brief@example.org"], 0);
    let start = std::time::Instant::now();
    while cli.run(&["show", "brief@example.org"]).status.code() != Some(3) {
        assert!(start.elapsed() < WAIT, "the entry did not expire");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_retry_of_a_recipient_suppressed_meanwhile_is_not_attempted() {
    let mx = MockMx::start(Arc::new(|rcpt: &str| {
        if rcpt.starts_with("busy@") {
            "451 4.2.1 try again later".into()
        } else {
            "250 2.1.5 ok".into()
        }
    }))
    .await;
    let (nats, relay) = start_standalone(|c| {
        c.delivery.routes = vec![route_all(&mx.host())];
        c.delivery.retry.schedule = vec!["1s".parse().unwrap()];
    });
    let cli = AdminCli::new("suppression", &nats, "");
    Smtp::submit(
        relay.smtp(),
        "sender@example.com",
        &["busy@example.org"],
        b"Subject: later\r\n\r\nx\r\n",
    )
    .await;
    let start = std::time::Instant::now();
    while relay.metric("postern_delivery_outcomes_total{result=\"deferred\"}") < 1.0 {
        assert!(start.elapsed() < WAIT, "no deferral\n{}", relay.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cli.text(&["add", "busy@example.org"], 0);
    // The next retry bounces it without an attempt.
    let bounce = mx.wait_for(1, WAIT).await;
    nats.wait_empty(STREAM, WAIT).await;
    assert_eq!(bounce[0].from, "");
    assert!(
        bounce[0]
            .text()
            .contains("is on the suppression list since"),
        "{}",
        bounce[0].text()
    );
    assert_eq!(relay.metric("postern_delivery_suppressed_total"), 1.0);
}
