//! `postern queue`: each subcommand against a real nats-server and a running relay, with the
//! exit codes and JSON a script relies on.

#![allow(clippy::unwrap_used)] // a test that cannot set up may panic

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use postern_e2e::admin_cli::AdminCli;
use postern_e2e::{MockMx, STREAM, Smtp, route_all, start_standalone};

const WAIT: Duration = Duration::from_secs(20);

/// An MX that defers every recipient while `down` is set.
async fn switchable_mx() -> (MockMx, Arc<AtomicBool>) {
    let down = Arc::new(AtomicBool::new(true));
    let flag = down.clone();
    let mx = MockMx::start(Arc::new(move |_| {
        if flag.load(Ordering::SeqCst) {
            "451 4.3.0 down for maintenance".into()
        } else {
            "250 2.1.5 ok".into()
        }
    }))
    .await;
    (mx, down)
}

async fn send(relay: &postern_e2e::Relay, from: &str, to: &str) -> String {
    Smtp::submit(
        relay.smtp(),
        from,
        &[to],
        format!("Subject: for {to}\r\n\r\nHello.\r\n").as_bytes(),
    )
    .await
}

/// Waits until `count` entries wait for a retry.
async fn waiting(cli: &AdminCli, domain: &str, count: u64) {
    let start = std::time::Instant::now();
    loop {
        let summary = cli.json(&["summary"], 0);
        if summary["domains"][domain]["waiting"] == count {
            return;
        }
        assert!(start.elapsed() < WAIT, "{summary}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn summary_show_retry_hold_and_release() {
    let (mx, down) = switchable_mx().await;
    let (nats, relay) = start_standalone(|c| {
        c.delivery.routes = vec![route_all(&mx.host())];
        c.delivery.retry.schedule = vec!["1h".parse().unwrap()];
    });
    let cli = AdminCli::new("queue", &nats, "");
    let first = send(&relay, "a@example.com", "b@down.example").await;
    send(&relay, "a@example.com", "c@down.example").await;
    let third = send(&relay, "a@example.com", "d@other.example").await;
    waiting(&cli, "down.example", 2).await;
    waiting(&cli, "other.example", 1).await;

    let summary = cli.json(&["summary"], 0);
    assert_eq!(summary["stream"], STREAM);
    assert_eq!(summary["total"]["waiting"], 3, "{summary}");
    assert_eq!(summary["total"]["ready"], 0, "{summary}");
    let text = cli.text(&["summary"], 0);
    assert!(text.contains("down.example"), "{text}");
    assert!(text.contains("3 waiting"), "{text}");

    // `show` tells where an entry is, how often it was tried and what the server said.
    let shown = cli.json(&["show", &first], 0);
    assert_eq!(shown[0]["place"], "waiting", "{shown}");
    assert_eq!(shown[0]["envelope"]["attempts"], 1);
    assert_eq!(shown[0]["envelope"]["recipients"][0], "b@down.example");
    let reply = shown[0]["envelope"]["lastReplies"][0]["reply"]
        .as_str()
        .unwrap();
    assert!(reply.starts_with("451 4.3.0 down"), "{reply}");
    assert_eq!(
        shown[0]["headers"]["Postern-Queue-Id"].as_str().unwrap(),
        first
    );
    assert!(cli.text(&["show", &first], 0).contains("lastReplies"));
    cli.text(&["show", "01NOSUCHMESSAGE0000000000"], 3);

    // Hold one, retry a domain: only the domain goes, the held one stays.
    let held = cli.json(&["hold", &third], 0);
    assert_eq!(held[0]["result"], "done", "{held}");
    assert_eq!(cli.json(&["show", &third], 0)[0]["place"], "held");
    down.store(false, Ordering::SeqCst);
    let retried = cli.json(&["retry", "--domain", "down.example"], 0);
    assert_eq!(retried.as_array().unwrap().len(), 2, "{retried}");
    let delivered = mx.wait_for(2, WAIT).await;
    let mut to: Vec<String> = delivered
        .iter()
        .flat_map(|d| d.recipients.clone())
        .collect();
    to.sort();
    assert_eq!(to, ["b@down.example", "c@down.example"]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(mx.delivered().len(), 2, "the held message stayed");
    cli.text(&["retry", "--domain", "down.example"], 3);

    let released = cli.json(&["release", "--all"], 0);
    assert_eq!(released.as_array().unwrap().len(), 1, "{released}");
    mx.wait_for(3, WAIT).await;
    nats.wait_empty(STREAM, WAIT).await;
}

#[tokio::test]
async fn delete_and_bounce_change_nothing_without_yes() {
    let (dead, _down) = switchable_mx().await;
    let healthy = MockMx::accepting().await;
    let (nats, relay) = start_standalone(|c| {
        c.delivery.routes = vec![
            postern_config::Route {
                domain: "down.example".into(),
                host: dead.host(),
                tls: postern_config::OutboundTls::None,
            },
            route_all(&healthy.host()),
        ];
        c.delivery.retry.schedule = vec!["1h".parse().unwrap()];
    });
    let cli = AdminCli::new("queue", &nats, "");
    send(&relay, "a@example.com", "x@down.example").await;
    send(&relay, "a@example.com", "y@down.example").await;
    let bounced = send(&relay, "sender@example.com", "z@down.example").await;
    waiting(&cli, "down.example", 3).await;

    let refused = cli.text(&["delete", "--domain", "down.example"], 4);
    assert!(refused.contains("3 entries would be deleted"), "{refused}");
    assert_eq!(nats.entries(STREAM).await.len(), 3, "nothing changed");

    // Bounce one: its sender gets a report, and it is gone.
    cli.text(&["bounce", &bounced], 4);
    let result = cli.json(&["bounce", &bounced, "--yes"], 0);
    assert_eq!(result[0]["result"], "done", "{result}");
    let report = healthy.wait_for(1, WAIT).await;
    assert_eq!(report[0].recipients, ["sender@example.com"]);
    let text = report[0].text();
    assert!(text.contains("Status: 5.0.0"), "{text}");
    assert!(
        text.contains("Final-Recipient: rfc822; z@down.example"),
        "{text}"
    );

    let deleted = cli.json(&["delete", "--domain", "down.example", "--yes"], 0);
    assert_eq!(deleted.as_array().unwrap().len(), 2, "{deleted}");
    nats.wait_empty(STREAM, WAIT).await;
    cli.text(&["delete", "--all", "--yes"], 3);
}

#[tokio::test]
async fn dead_letters_are_listed_and_put_back() {
    let mx = MockMx::accepting().await;
    let (nats, _relay) = start_standalone(|c| c.delivery.routes = vec![route_all(&mx.host())]);
    // An entry from an older, broken writer that no worker can read.
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    js.publish("postern.queue.example_org", "not an entry".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let cli = AdminCli::new("queue", &nats, "");
    let start = std::time::Instant::now();
    let letters = loop {
        let letters = cli.json(&["dead-letter", "list"], 0);
        if !letters.as_array().unwrap().is_empty() {
            break letters;
        }
        assert!(start.elapsed() < WAIT, "no dead letter");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        letters[0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("undecodable entry"),
        "{letters}"
    );
    assert_eq!(letters[0]["subject"], "postern.queue.example_org");
    let list = cli.text(&["dead-letter", "list"], 0);
    assert!(list.contains("undecodable entry"), "{list}");

    // Put back, it is read again (and, still unreadable, set aside again).
    let first = letters[0]["sequence"].as_u64().unwrap();
    let sequence = first.to_string();
    let retried = cli.text(&["dead-letter", "retry", &sequence], 0);
    assert!(
        retried.contains("back on postern.queue.example_org"),
        "{retried}"
    );
    let start = std::time::Instant::now();
    loop {
        let letters = cli.json(&["dead-letter", "list"], 0);
        let letters = letters.as_array().unwrap();
        if letters.len() == 1 && letters[0]["sequence"].as_u64() != Some(first) {
            break;
        }
        assert!(start.elapsed() < WAIT, "{letters:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    cli.text(&["dead-letter", "retry", "999999"], 3);
    assert_eq!(cli.run(&["dead-letter", "retry"]).status.code(), Some(2));
}
