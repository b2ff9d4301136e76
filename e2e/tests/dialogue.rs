//! ESMTP dialogue over real TCP with a real nats-server behind it: what needs the process (the
//! greeting and extensions as configured, what reaches the stream, pipelining over a socket,
//! the pregreet wait, the listen backlog, connection caps, a deadline enforced by the adapter).
//! The session's own decisions (commands, limits, replies, deadlines) are tested in memory in
//! relay/smtp/tests/dialogue.rs.

#![allow(clippy::unwrap_used)] // a test that cannot set up may panic

use postern_e2e::{ReplyExt, STREAM, Smtp, start_relay};

const MESSAGE: &[u8] = b"From: a@example.com\r\nTo: b@example.org\r\nSubject: hi\r\n\r\nHello.\r\n";

/// The greeting and EHLO as the process configures them (the whole list of extensions and the
/// commands are the session's, tested in memory).
#[tokio::test]
async fn the_greeting_and_ehlo_carry_the_configured_name_and_limits() {
    let (_nats, relay) = start_relay(|c| c.ingress.limits.max_message_size = 1000);
    let mut s = Smtp::connect(relay.smtp()).await;
    let greeting = s.reply().await.is(220, "");
    assert_eq!(greeting.text(), "relay.test ESMTP Postern");
    let reply = s.cmd("EHLO client.test").await.is(250, "");
    assert_eq!(reply.lines[0], "relay.test");
    assert!(reply.lines.contains(&"SIZE 1000".to_string()), "{reply:?}");
    assert!(
        !reply.lines.contains(&"STARTTLS".to_string()),
        "no certificate, no STARTTLS"
    );
    s.cmd("QUIT").await.is(221, "2.0.0");
    assert!(s.closed().await);
}

#[tokio::test]
async fn data_transaction_is_queued_with_received_header() {
    let (nats, relay) = start_relay(|_| {});
    assert_eq!(relay.metric("postern_ingress_connections_total"), 0.0);
    let mut s = Smtp::greeted(relay.smtp()).await;
    s.ehlo("client.test").await;
    let reply = s
        .send_mail(
            "a@example.com",
            &["b@example.org", "c@example.org", "d@other.example"],
            MESSAGE,
        )
        .await
        .is(250, "2.0.0");
    let id = reply.queue_id();
    assert_eq!(id.len(), 26, "ULID queue id in {:?}", reply.lines);

    let entries = nats.entries(STREAM).await;
    assert_eq!(entries.len(), 2, "one entry per destination domain");
    assert_eq!(entries[0].subject, "postern.queue.example_org");
    assert_eq!(
        entries[0].envelope.recipients,
        ["b@example.org", "c@example.org"]
    );
    assert_eq!(entries[1].subject, "postern.queue.other_example");
    assert_eq!(entries[1].envelope.recipients, ["d@other.example"]);
    for entry in &entries {
        assert_eq!(entry.envelope.queue_id, id);
        assert_eq!(entry.envelope.sender, "a@example.com");
        assert_eq!(entry.envelope.client.helo, "client.test");
        assert!(
            entry
                .header("traceparent")
                .is_some_and(|t| t.starts_with("00-"))
        );
        let text = entry.text();
        let expected_start = format!(
            "Received: from client.test ([127.0.0.1])\r\n\tby relay.test (Postern) with ESMTP id {id};\r\n\t"
        );
        assert!(text.starts_with(&expected_start), "{text}");
        assert!(text.ends_with("\r\n\r\nHello.\r\n"), "{text}");
    }
    assert_eq!(relay.metric("postern_ingress_messages_accepted_total"), 1.0);
    assert_eq!(relay.metric("postern_ingress_connections_total"), 1.0);
    assert_eq!(relay.metric("postern_ingress_sessions"), 1.0);
    assert_eq!(relay.metric("postern_ingress_transactions_total"), 1.0);
    assert_eq!(
        relay.metric("postern_ingress_replies_total{class=\"3xx\"}"),
        1.0
    );
    assert_eq!(relay.metric("postern_ingress_enqueue_seconds_count"), 1.0);
    let bytes = relay.metric("postern_ingress_bytes_accepted_total");
    assert_eq!(bytes, entries[0].body.len() as f64);
    s.cmd("XYZZY").await.is(500, "5.5.1");
    assert_eq!(
        relay.metric("postern_ingress_rejections_total{reason=\"syntax\"}"),
        1.0
    );
    assert_eq!(
        relay.metric("postern_ingress_replies_total{class=\"5xx\"}"),
        1.0
    );
}

#[tokio::test]
async fn pipelined_transaction_gets_every_reply_in_order() {
    let (nats, relay) = start_relay(|_| {});
    let mut s = Smtp::greeted(relay.smtp()).await;
    s.ehlo("client.test").await;
    s.send(b"MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nRCPT TO:<bad>\r\nRCPT TO:<c@example.org>\r\nDATA\r\n").await;
    s.reply().await.is(250, "2.1.0");
    s.reply().await.is(250, "2.1.5");
    s.reply().await.is(501, "5.1.3");
    s.reply().await.is(250, "2.1.5");
    s.reply().await.is(354, "");
    s.send(b"Subject: p\r\n\r\nx\r\n.\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<d@example.org>\r\nBDAT 5 LAST\r\nabc\r\nQUIT\r\n").await;
    s.reply().await.is(250, "2.0.0");
    s.reply().await.is(250, "2.1.0");
    s.reply().await.is(250, "2.1.5");
    s.reply().await.is(250, "2.0.0");
    s.reply().await.is(221, "2.0.0");
    let entries = nats.entries(STREAM).await;
    assert_eq!(entries.len(), 2);
    assert_eq!(
        entries[0].envelope.recipients,
        ["b@example.org", "c@example.org"]
    );
    assert!(
        entries[1].text().contains("\r\n\tfor <d@example.org>;\r\n"),
        "{}",
        entries[1].text()
    );
    assert!(
        entries[1].text().ends_with("\r\nabc\r\n"),
        "{}",
        entries[1].text()
    );
}

#[tokio::test]
async fn utf8_addresses_need_smtputf8() {
    let (nats, relay) = start_relay(|_| {});
    let mut s = Smtp::greeted(relay.smtp()).await;
    s.ehlo("client.test").await;
    s.cmd("MAIL FROM:<jösé@example.com>").await.is(553, "5.6.7");
    s.cmd("MAIL FROM:<a@example.com>").await.is(250, "2.1.0");
    s.cmd("RCPT TO:<用户@例子.广告>").await.is(553, "5.6.7");
    s.cmd("RSET").await.is(250, "2.0.0");
    s.cmd("MAIL FROM:<jösé@example.com> SMTPUTF8")
        .await
        .is(250, "2.1.0");
    s.cmd("RCPT TO:<用户@例子.广告>").await.is(250, "2.1.5");
    s.cmd("DATA").await.is(354, "");
    s.send("Subject: ünïcödé\r\n\r\nx\r\n.\r\n".as_bytes())
        .await;
    s.reply().await.is(250, "2.0.0");
    let entries = nats.entries(STREAM).await;
    assert!(entries[0].envelope.smtputf8);
    assert_eq!(entries[0].envelope.domain, "例子.广告");
    assert!(entries[0].text().contains("with UTF8SMTP id"));
}

#[tokio::test]
async fn idle_client_times_out() {
    let (_nats, relay) = start_relay(|c| c.ingress.limits.command_timeout = "1s".parse().unwrap());
    let mut s = Smtp::greeted(relay.smtp()).await;
    s.ehlo("client.test").await;
    s.reply().await.is(421, "4.4.2");
    assert!(s.closed().await);
}

/// One byte every 300 ms never leaves the session idle, yet the line's deadline still ends it.
/// A client that talks before the greeting is refused where the listener says so.
#[tokio::test]
async fn clients_that_talk_first_are_counted_or_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_nats, relay) = start_relay(|c| {
        c.ingress.pregreet.wait = "300ms".parse().unwrap();
        c.ingress.pregreet.action = postern_config::PregreetAction::Reject;
    });
    let mut early = tokio::net::TcpStream::connect(relay.smtp()).await.unwrap();
    early.write_all(b"EHLO spam.test\r\n").await.unwrap();
    let mut reply = String::new();
    early.read_to_string(&mut reply).await.unwrap();
    assert!(reply.starts_with("554 5.5.0"), "{reply}");
    assert!(!reply.contains("220"), "never greeted: {reply}");
    let mut polite = Smtp::greeted(relay.smtp()).await;
    polite.ehlo("client.test").await;
    assert_eq!(
        relay.metric("postern_ingress_pregreet_total{action=\"reject\"}"),
        1.0
    );

    let (_nats, relay) = start_relay(|c| c.ingress.pregreet.wait = "300ms".parse().unwrap());
    let mut early = tokio::net::TcpStream::connect(relay.smtp()).await.unwrap();
    early
        .write_all(b"EHLO client.test\r\nQUIT\r\n")
        .await
        .unwrap();
    let mut replies = String::new();
    early.read_to_string(&mut replies).await.unwrap();
    assert!(
        replies.starts_with("220 ") && replies.contains("221 "),
        "{replies}"
    );
    assert_eq!(
        relay.metric("postern_ingress_pregreet_total{action=\"count\"}"),
        1.0
    );
}

/// While the relay is stopped, connections wait in the listen backlog rather than being
/// dropped, up to the configured size.
#[tokio::test]
async fn the_listen_backlog_holds_a_burst_of_connections() {
    let (_nats, relay) = start_relay(|c| c.ingress.listen_backlog = 1024);
    relay.pause(true);
    let mut connects = Vec::new();
    for _ in 0..600 {
        let addr = relay.smtp();
        connects.push(tokio::spawn(async move {
            tokio::time::timeout(
                std::time::Duration::from_secs(3),
                tokio::net::TcpStream::connect(addr),
            )
            .await
            .is_ok_and(|c| c.is_ok())
        }));
    }
    let mut connected = Vec::new();
    for connect in connects {
        connected.push(connect.await.unwrap());
    }
    relay.pause(false);
    let queued = connected.iter().filter(|c| **c).count();
    assert_eq!(queued, 600, "all 600 fit in a backlog of 1024");
}

#[tokio::test]
async fn connection_caps_answer_421() {
    let (_nats, relay) = start_relay(|c| {
        c.ingress.limits.max_connections_per_ip = 2;
    });
    let _a = Smtp::greeted(relay.smtp()).await;
    let _b = Smtp::greeted(relay.smtp()).await;
    let mut c = Smtp::connect(relay.smtp()).await;
    c.reply().await.is(421, "4.7.0");
    assert!(c.closed().await);
    drop(_a);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let _d = Smtp::greeted(relay.smtp()).await;

    let (_nats, relay) = start_relay(|c| c.ingress.limits.max_connections = 1);
    let _a = Smtp::greeted(relay.smtp()).await;
    let mut b = Smtp::connect(relay.smtp()).await;
    b.reply().await.is(421, "4.7.0");
    assert_eq!(
        relay.metric("postern_ingress_connections_refused_total{cap=\"total\"}"),
        1.0
    );
}

/// The ingress adapter is not tied to TCP: the same code serves a session over an in-memory
/// stream, and the message reaches the real queue.
#[tokio::test]
async fn the_adapter_serves_a_session_over_an_in_memory_stream() {
    use postern_relay::ingress::{self, ListenerContext, Shared};
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    let nats = postern_e2e::NatsServer::start();
    let config = postern_e2e::Relay::config(&nats);
    let queue = postern_queue::Queue::connect(&nats.url(), &config.nats, config.body_ttl())
        .await
        .unwrap();
    let cancel = tokio_util::sync::CancellationToken::new();
    tokio::spawn({
        let (queue, cancel) = (queue.clone(), cancel.clone());
        async move { queue.provision_until_ready(cancel).await }
    });
    postern_e2e::wait_until(
        "the queue is ready",
        std::time::Duration::from_secs(10),
        || queue.is_ready(),
    )
    .await;
    let signers = postern_relay::dkim::Signers::load(&[], None).unwrap();
    let metrics = std::sync::Arc::new(postern_relay::metrics::Metrics::default());
    let shared = Shared::new(&config, queue, None, None, signers, metrics).unwrap();
    let context = ListenerContext::new(&config, &config.ingress.listeners[0], false);

    let (ours, theirs) = tokio::io::duplex(4096);
    let peer = "127.0.0.1:40000".parse().unwrap();
    let served = tokio::spawn(ingress::serve_connection(
        std::sync::Arc::new(shared),
        std::sync::Arc::new(context),
        cancel.clone(),
        theirs,
        peer,
    ));
    let (read, mut write) = tokio::io::split(ours);
    let mut lines = BufReader::new(read).lines();
    let mut reply = async || lines.next_line().await.unwrap().unwrap();
    assert!(reply().await.starts_with("220 relay.test"));
    write
        .write_all(
            b"HELO memory.test\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n",
        )
        .await
        .unwrap();
    for expected in ["250 ", "250 2.1.0", "250 2.1.5", "354 "] {
        let line = reply().await;
        assert!(line.starts_with(expected), "{line}");
    }
    write
        .write_all(b"Subject: in memory\r\n\r\nx\r\n.\r\nQUIT\r\n")
        .await
        .unwrap();
    assert!(reply().await.starts_with("250 2.0.0"));
    assert!(reply().await.starts_with("221 2.0.0"));
    served.await.unwrap();
    let entries = nats.entries(STREAM).await;
    assert_eq!(entries.len(), 1);
    assert!(
        entries[0]
            .text()
            .starts_with("Received: from memory.test ([127.0.0.1])"),
        "{}",
        entries[0].text()
    );
    cancel.cancel();
}
