//! The DSN extension (RFC 3461) end to end: what a client asks for at MAIL and RCPT decides
//! which reports reach its sender (failure, delay, relayed), what they say (ENVID, ORCPT,
//! RET), and what goes on to a next hop that offers DSN itself. Reports are read by an
//! independent MIME parser.

#![allow(clippy::unwrap_used)] // a test that cannot set up may panic

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use postern_e2e::mx::{Behaviour, Delivered, RcptScript};
use postern_e2e::{MockMx, ReplyExt, STREAM, Smtp, report, route_all, start_standalone};

const WAIT: Duration = Duration::from_secs(20);

/// One transaction with the given MAIL and RCPT lines, each expected to get `250`.
async fn submit(relay: std::net::SocketAddr, mail: &str, rcpts: &[&str], body: &[u8]) {
    let mut s = Smtp::greeted(relay).await;
    let extensions = s.ehlo("client.test").await;
    assert!(extensions.iter().any(|e| e == "DSN"), "{extensions:?}");
    s.cmd(mail).await.is(250, "2.1.0");
    for rcpt in rcpts {
        s.cmd(rcpt).await.is(250, "2.1.5");
    }
    s.cmd("DATA").await.is(354, "");
    s.send(body).await;
    s.send(b".\r\n").await;
    s.reply().await.is(250, "2.0.0");
    s.cmd("QUIT").await.is(221, "2.0.0");
}

/// What reached the MX once the queue is empty (so every report there is to send was sent):
/// exactly `count` messages.
async fn settled(mx: &MockMx, nats: &postern_e2e::NatsServer, count: usize) -> Vec<Delivered> {
    mx.wait_for(count, WAIT).await;
    nats.wait_empty(STREAM, WAIT).await;
    let delivered = mx.delivered();
    assert_eq!(delivered.len(), count, "{delivered:#?}");
    delivered
}

/// An MX that refuses recipients whose address starts with `bad` and takes the rest.
async fn refusing_bad() -> MockMx {
    MockMx::start(Arc::new(|rcpt: &str| {
        if rcpt.starts_with("bad") || rcpt.contains("-bad@") {
            "550 5.1.1 no such user".into()
        } else {
            "250 2.1.5 ok".into()
        }
    }))
    .await
}

/// The reports among `delivered`, by their `Action`.
fn reports<'a>(delivered: &'a [Delivered], action: &str) -> Vec<&'a Delivered> {
    delivered
        .iter()
        .filter(|d| d.from.is_empty() && d.text().contains(&format!("\r\nAction: {action}\r\n")))
        .collect()
}

#[tokio::test]
async fn each_recipient_gets_the_reports_it_asked_for() {
    let mx = refusing_bad().await;
    let (nats, relay) = start_standalone(|c| c.delivery.routes = vec![route_all(&mx.host())]);
    submit(
        relay.smtp(),
        "MAIL FROM:<sender@example.com> RET=HDRS ENVID=QQ314159+2B1",
        &[
            "RCPT TO:<ok@example.org> NOTIFY=SUCCESS ORCPT=rfc822;Ok+2Bfirst@example.org",
            "RCPT TO:<quiet@example.org> NOTIFY=NEVER",
            "RCPT TO:<plain@example.org>",
            "RCPT TO:<bad@example.org> NOTIFY=FAILURE,SUCCESS",
            "RCPT TO:<silent-bad@example.org> NOTIFY=NEVER",
            "RCPT TO:<default-bad@example.org>",
        ],
        b"Subject: dsn\r\nX-Tag: original\r\n\r\nsecret body\r\n",
    )
    .await;
    // The message, one failure report, one success report.
    let delivered = settled(&mx, &nats, 3).await;
    let message = delivered.iter().find(|d| !d.from.is_empty()).unwrap();
    assert_eq!(
        message.recipients,
        ["ok@example.org", "quiet@example.org", "plain@example.org"]
    );
    assert_eq!(
        message.commands[0], "MAIL FROM:<sender@example.com>",
        "a next hop without DSN gets no DSN parameters"
    );
    assert_eq!(message.commands[1], "RCPT TO:<ok@example.org>");

    let failed = reports(&delivered, "failed");
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].recipients, ["sender@example.com"]);
    let (report_type, parts) = report::parts(&failed[0].wire);
    assert_eq!(report_type, "delivery-status");
    let status = &parts[1].1;
    assert!(
        status.starts_with("Original-Envelope-Id: QQ314159+1\r\nReporting-MTA: dns; "),
        "ENVID decoded from xtext: {status}"
    );
    assert!(
        status.contains(
            "\r\nFinal-Recipient: rfc822; bad@example.org\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        ),
        "{status}"
    );
    assert!(
        status.contains("\r\nFinal-Recipient: rfc822; default-bad@example.org\r\n"),
        "no NOTIFY means failures are reported: {status}"
    );
    assert!(!status.contains("silent-bad"), "NOTIFY=NEVER: {status}");
    assert_eq!(parts[2].0, "text/rfc822-headers", "RET=HDRS");
    assert!(parts[2].1.contains("X-Tag: original") && !parts[2].1.contains("secret body"));

    let relayed = reports(&delivered, "relayed");
    assert_eq!(relayed.len(), 1);
    let (_, parts) = report::parts(&relayed[0].wire);
    assert!(
        parts[0].1.contains("sends no delivery reports"),
        "{}",
        parts[0].1
    );
    let status = &parts[1].1;
    assert!(
        status.contains("\r\nOriginal-Recipient: rfc822; Ok+first@example.org\r\nFinal-Recipient: rfc822; ok@example.org\r\nAction: relayed\r\nStatus: 2.0.0\r\n"),
        "{status}"
    );
    assert!(
        status.contains("Diagnostic-Code: smtp; 250 2.0.0 accepted"),
        "{status}"
    );
    for nobody in ["quiet@", "plain@", "bad@"] {
        assert!(
            !status.contains(nobody),
            "{nobody} asked for no success report: {status}"
        );
    }
    assert_eq!(
        relay.metric("postern_delivery_reports_total{action=\"failed\"}"),
        1.0
    );
    assert_eq!(
        relay.metric("postern_delivery_reports_total{action=\"relayed\"}"),
        1.0
    );
    // silent-bad@ for the failure report; quiet@ and plain@ for the success report.
    assert_eq!(
        relay.metric("postern_delivery_reports_not_requested_total{action=\"failed\"}"),
        1.0
    );
    assert_eq!(
        relay.metric("postern_delivery_reports_not_requested_total{action=\"relayed\"}"),
        2.0
    );
    assert!(
        relay
            .log()
            .contains("no failure report: NOTIFY excludes it"),
        "{}",
        relay.log()
    );
}

#[tokio::test]
async fn a_next_hop_that_offers_dsn_gets_the_requests_and_reports_success_itself() {
    let mx = refusing_bad().await;
    mx.set_behaviour(Behaviour {
        dsn: true,
        ..Behaviour::default()
    });
    let (nats, relay) = start_standalone(|c| c.delivery.routes = vec![route_all(&mx.host())]);
    submit(
        relay.smtp(),
        "MAIL FROM:<sender@example.com> RET=FULL ENVID=id+20one",
        &[
            "RCPT TO:<ok@example.org> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;Ok+2Bfirst@example.org",
            "RCPT TO:<bad@example.org> NOTIFY=FAILURE",
        ],
        b"Subject: dsn\r\n\r\nthe whole message\r\n",
    )
    .await;
    // The message and one failure report.
    let delivered = settled(&mx, &nats, 2).await;
    let message = delivered.iter().find(|d| !d.from.is_empty()).unwrap();
    assert_eq!(
        message.commands,
        [
            "MAIL FROM:<sender@example.com> RET=FULL ENVID=id+20one",
            "RCPT TO:<ok@example.org> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;Ok+2Bfirst@example.org",
            "RCPT TO:<bad@example.org> NOTIFY=FAILURE",
        ]
    );
    assert!(
        reports(&delivered, "relayed").is_empty(),
        "the next hop reports success"
    );
    // A refusal at RCPT is still Postern's to report, with the whole message (RET=FULL).
    let failed = reports(&delivered, "failed");
    assert_eq!(failed.len(), 1);
    let (_, parts) = report::parts(&failed[0].wire);
    assert!(
        parts[1].1.starts_with("Original-Envelope-Id: id one\r\n"),
        "{}",
        parts[1].1
    );
    assert_eq!(parts[2].0, "message/rfc822");
    assert!(
        parts[2].1.ends_with("\r\n\r\nthe whole message\r\n"),
        "{}",
        parts[2].1
    );
}

#[tokio::test]
async fn a_delay_report_goes_once_to_those_who_asked() {
    let tries = Arc::new(AtomicUsize::new(0));
    let counter = tries.clone();
    // Both recipients are refused for the first three attempts (one RCPT each per attempt);
    // the sender's domain takes its reports.
    let script: RcptScript = Arc::new(move |rcpt| {
        if rcpt.ends_with("@example.org") && counter.fetch_add(1, Ordering::SeqCst) < 6 {
            "451 4.2.1 mailbox busy".into()
        } else {
            "250 2.1.5 ok".into()
        }
    });
    let mx = MockMx::start(script).await;
    let (nats, relay) = start_standalone(|c| {
        c.delivery.routes = vec![route_all(&mx.host())];
        c.delivery.retry.schedule = vec!["1s".parse().unwrap()];
        c.delivery.retry.delay_warning = "1s".parse().unwrap();
    });
    submit(
        relay.smtp(),
        "MAIL FROM:<sender@example.com>",
        &[
            "RCPT TO:<waiting@example.org> NOTIFY=DELAY,FAILURE",
            "RCPT TO:<other@example.org>",
        ],
        b"Subject: later\r\n\r\nx\r\n",
    )
    .await;
    // The delay report, then the message.
    let delivered = settled(&mx, &nats, 2).await;
    assert!(tries.load(Ordering::SeqCst) >= 8, "four attempts");
    let delayed = reports(&delivered, "delayed");
    assert_eq!(delayed.len(), 1, "once, though three attempts failed");
    assert!(
        delayed[0]
            .text()
            .contains("\r\nSubject: Delayed Mail (still being retried)\r\n")
    );
    let (_, parts) = report::parts(&delayed[0].wire);
    let status = &parts[1].1;
    assert!(
        status.contains("\r\nFinal-Recipient: rfc822; waiting@example.org\r\nAction: delayed\r\nStatus: 4.2.1\r\n"),
        "{status}"
    );
    assert!(status.contains("\r\nWill-Retry-Until: "), "{status}");
    assert!(!status.contains("other@"), "no NOTIFY=DELAY: {status}");
    let message = delivered.iter().find(|d| !d.from.is_empty()).unwrap();
    assert_eq!(
        message.recipients,
        ["waiting@example.org", "other@example.org"]
    );
}
