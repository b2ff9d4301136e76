//! ESMTP dialogue: every command, extension and reply of the ingress, over real TCP with a
//! real nats-server behind it.

#![allow(clippy::unwrap_used)] // a test that cannot set up may panic

use postern_e2e::{ReplyExt, STREAM, Smtp, start_relay};

const MESSAGE: &[u8] = b"From: a@example.com\r\nTo: b@example.org\r\nSubject: hi\r\n\r\nHello.\r\n";

#[tokio::test]
async fn ehlo_advertises_the_extensions() {
    let (_nats, relay) = start_relay(|_| {});
    let mut s = Smtp::connect(relay.smtp()).await;
    let greeting = s.reply().await.is(220, "");
    assert_eq!(greeting.text(), "relay.test ESMTP Postern");
    let reply = s.cmd("EHLO client.test").await.is(250, "");
    assert_eq!(
        reply.lines,
        [
            "relay.test",
            "PIPELINING",
            "SIZE 52428800",
            "8BITMIME",
            "SMTPUTF8",
            "ENHANCEDSTATUSCODES",
            "CHUNKING"
        ]
    );
    s.cmd("HELO client.test").await.is(250, "");
    s.cmd("EHLO").await.is(501, "5.5.4");
    s.cmd("QUIT").await.is(221, "2.0.0");
    assert!(s.closed().await);
}

#[tokio::test]
async fn simple_commands() {
    let (_nats, relay) = start_relay(|_| {});
    let mut s = Smtp::greeted(relay.smtp()).await;
    s.cmd("NOOP").await.is(250, "2.0.0");
    s.cmd("VRFY postmaster").await.is(252, "2.5.0");
    s.cmd("HELP").await.is(214, "2.0.0");
    s.cmd("EXPN staff").await.is(502, "5.5.1");
    s.cmd("XYZZY").await.is(500, "5.5.1");
    s.cmd("RSET").await.is(250, "2.0.0");
    s.cmd("STARTTLS").await.is(502, "5.5.1");
    s.cmd("AUTH PLAIN").await.is(502, "5.5.1");
    s.cmd("MAIL FROM:<a@example.com>").await.is(503, "5.5.1");
    s.cmd("EHLO client.test").await.is(250, "");
    s.cmd("RCPT TO:<b@example.org>").await.is(503, "5.5.1");
    s.cmd("DATA").await.is(503, "5.5.1");
    s.cmd("MAIL FROM:<a@example.com>").await.is(250, "2.1.0");
    s.cmd("MAIL FROM:<a@example.com>").await.is(503, "5.5.1");
    s.cmd("DATA").await.is(554, "5.5.1");
    s.cmd("RSET").await.is(250, "2.0.0");
    s.cmd("RCPT TO:<b@example.org>").await.is(503, "5.5.1");
    s.cmd("MAIL FROM:<a@example.com> RET=HDRS")
        .await
        .is(555, "5.5.4");
    s.cmd("MAIL FROM:<a@example.com> BODY=BINARYMIME")
        .await
        .is(555, "5.5.4");
    s.cmd("MAIL FROM:a@example.com").await.is(501, "5.1.7");
    s.cmd("MAIL FROM:<> BODY=8BITMIME").await.is(250, "2.1.0");
    s.cmd("RCPT TO:<b@example.org> NOTIFY=NEVER")
        .await
        .is(555, "5.5.4");
    s.cmd("RCPT TO:<not an address>").await.is(501, "5.1.3");
    s.cmd("QUIT").await.is(221, "2.0.0");
}

#[tokio::test]
async fn data_transaction_is_queued_with_received_header() {
    let (nats, relay) = start_relay(|_| {});
    // The harness's port probe was a connection too.
    let connections = relay.metric("postern_ingress_connections_total");
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
    assert_eq!(
        relay.metric("postern_ingress_connections_total"),
        connections + 1.0
    );
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
async fn dot_stuffing_is_undone() {
    let (nats, relay) = start_relay(|_| {});
    let mut s = Smtp::greeted(relay.smtp()).await;
    s.ehlo("client.test").await;
    s.send_mail(
        "a@example.com",
        &["b@example.org"],
        b"Subject: dots\r\n\r\n..leading dot\r\n...\r\n",
    )
    .await
    .is(250, "2.0.0");
    let body = nats.entries(STREAM).await[0].text();
    assert!(body.ends_with("\r\n\r\n.leading dot\r\n..\r\n"), "{body}");
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
async fn chunking_assembles_bdat_chunks() {
    let (nats, relay) = start_relay(|_| {});
    let mut s = Smtp::greeted(relay.smtp()).await;
    s.ehlo("client.test").await;
    // A refused chunk is still read to its end, so the session stays in sync.
    s.send(b"BDAT 3\r\nabc").await;
    s.reply().await.is(503, "5.5.1");
    s.cmd("MAIL FROM:<a@example.com>").await.is(250, "2.1.0");
    s.send(b"BDAT 3\r\nab\n").await;
    s.reply().await.is(554, "5.5.1");
    s.cmd("MAIL FROM:<a@example.com>").await.is(250, "2.1.0");
    s.cmd("RCPT TO:<b@example.org>").await.is(250, "2.1.5");
    s.send(b"BDAT 17\r\nSubject: chunk\r\n\r").await;
    s.reply().await.is(250, "2.0.0");
    s.cmd("DATA").await.is(503, "5.5.1");
    s.send(b"BDAT 10\r\n\n.\r\nline\r\n").await;
    s.reply().await.is(250, "2.0.0");
    s.send(b"BDAT 0 LAST\r\n").await;
    let id = s.reply().await.is(250, "2.0.0").queue_id();
    let entries = nats.entries(STREAM).await;
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].envelope.queue_id, id);
    assert!(
        entries[0]
            .text()
            .ends_with("\r\nSubject: chunk\r\n\r\n.\r\nline\r\n"),
        "{}",
        entries[0].text()
    );
}

#[tokio::test]
async fn declared_and_actual_size_limits() {
    let (nats, relay) = start_relay(|c| c.ingress.limits.max_message_size = 1000);
    let mut s = Smtp::greeted(relay.smtp()).await;
    let ext = s.ehlo("client.test").await;
    assert!(ext.contains(&"SIZE 1000".to_string()));
    s.cmd("MAIL FROM:<a@example.com> SIZE=1001")
        .await
        .is(552, "5.3.4");
    s.cmd("MAIL FROM:<a@example.com> SIZE=900")
        .await
        .is(250, "2.1.0");
    s.cmd("RCPT TO:<b@example.org>").await.is(250, "2.1.5");
    s.cmd("DATA").await.is(354, "");
    let big = format!("Subject: big\r\n\r\n{}\r\n", "x".repeat(900)).repeat(2);
    s.send(big.as_bytes()).await;
    s.send(b".\r\n").await;
    s.reply().await.is(552, "5.3.4");
    // The session stays in sync: the next transaction works.
    s.send_mail("a@example.com", &["b@example.org"], MESSAGE)
        .await
        .is(250, "2.0.0");
    // BDAT: refused when the chunk would pass the limit, after reading its bytes.
    s.cmd("MAIL FROM:<a@example.com>").await.is(250, "2.1.0");
    s.cmd("RCPT TO:<b@example.org>").await.is(250, "2.1.5");
    s.send(format!("BDAT 1200 LAST\r\n{}", "y".repeat(1200)).as_bytes())
        .await;
    s.reply().await.is(552, "5.3.4");
    s.cmd("NOOP").await.is(250, "2.0.0");
    assert_eq!(nats.entries(STREAM).await.len(), 1);
}

#[tokio::test]
async fn recipients_beyond_the_limit_get_452_only_for_the_excess() {
    let (nats, relay) = start_relay(|c| c.ingress.limits.max_recipients = 3);
    let mut s = Smtp::greeted(relay.smtp()).await;
    s.ehlo("client.test").await;
    s.cmd("MAIL FROM:<a@example.com>").await.is(250, "2.1.0");
    for i in 0..3 {
        s.cmd(&format!("RCPT TO:<r{i}@example.org>"))
            .await
            .is(250, "2.1.5");
    }
    s.cmd("RCPT TO:<r3@example.org>").await.is(452, "4.5.3");
    s.cmd("RCPT TO:<r4@example.org>").await.is(452, "4.5.3");
    s.cmd("DATA").await.is(354, "");
    s.send(MESSAGE).await;
    s.send(b".\r\n").await;
    s.reply().await.is(250, "2.0.0");
    let entries = nats.entries(STREAM).await;
    assert_eq!(
        entries[0].envelope.recipients,
        ["r0@example.org", "r1@example.org", "r2@example.org"]
    );
}

#[tokio::test]
async fn long_command_line_gets_500_and_the_session_stays_in_sync() {
    let (_nats, relay) = start_relay(|_| {});
    let mut s = Smtp::greeted(relay.smtp()).await;
    s.ehlo("client.test").await;
    let long = format!("MAIL FROM:<{}@example.com>", "a".repeat(2100));
    s.cmd(&long).await.is(500, "5.5.2");
    // Longer than the read buffer, so the line arrives in pieces.
    let longer = format!("NOOP {}", "b".repeat(100_000));
    s.cmd(&longer).await.is(500, "5.5.2");
    s.cmd("NOOP").await.is(250, "2.0.0");
    let ok = format!("NOOP {}", "c".repeat(2000));
    s.cmd(&ok).await.is(250, "2.0.0");
}

#[tokio::test]
async fn text_line_over_998_octets_is_refused() {
    let (nats, relay) = start_relay(|_| {});
    let mut s = Smtp::greeted(relay.smtp()).await;
    s.ehlo("client.test").await;
    let body = format!("Subject: long\r\n\r\n{}\r\n", "z".repeat(999));
    s.send_mail("a@example.com", &["b@example.org"], body.as_bytes())
        .await
        .is(550, "5.6.0");
    let body = format!("Subject: long\r\n\r\n{}\r\n", "z".repeat(998));
    s.send_mail("a@example.com", &["b@example.org"], body.as_bytes())
        .await
        .is(250, "2.0.0");
    assert_eq!(nats.entries(STREAM).await.len(), 1);
}

#[tokio::test]
async fn forbidden_bytes_in_commands_get_501() {
    let (_nats, relay) = start_relay(|_| {});
    let mut s = Smtp::greeted(relay.smtp()).await;
    s.ehlo("client.test").await;
    s.send(b"MAIL FROM:<a\0@example.com>\r\n").await;
    s.reply().await.is(501, "5.5.2");
    s.send(b"MAIL FROM:<a@exa\rmple.com>\r\n").await;
    s.reply().await.is(501, "5.5.2");
    s.send(b"MAIL FROM:<a@example.com>\nRCPT TO:<b@example.org>\r\n")
        .await;
    s.reply().await.is(501, "5.5.2");
    s.reply().await.is(503, "5.5.1");
    s.cmd("MAIL FROM:<a@example.com>").await.is(250, "2.1.0");
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
async fn too_many_errors_close_the_session() {
    let (_nats, relay) = start_relay(|c| c.ingress.limits.max_errors = 20);
    let mut s = Smtp::greeted(relay.smtp()).await;
    for _ in 0..19 {
        s.cmd("BOGUS").await.is(500, "5.5.1");
    }
    s.cmd("BOGUS").await.is(500, "5.5.1");
    s.reply().await.is(421, "4.7.0");
    assert!(s.closed().await);
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
#[tokio::test]
async fn a_trickled_command_line_meets_its_deadline() {
    let (_nats, relay) =
        start_relay(|c| c.ingress.limits.command_timeout = "1500ms".parse().unwrap());
    let mut s = Smtp::greeted(relay.smtp()).await;
    let started = std::time::Instant::now();
    let reply = loop {
        s.send(b"E").await;
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        if let Ok(reply) =
            tokio::time::timeout(std::time::Duration::from_millis(10), s.reply()).await
        {
            break reply;
        }
        assert!(started.elapsed().as_secs() < 10, "still open");
    };
    reply.is(421, "4.4.2");
    assert!(s.closed().await);
}

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
async fn slow_data_below_the_rate_floor_times_out() {
    let (nats, relay) = start_relay(|c| {
        c.ingress.limits.data_timeout = "1s".parse().unwrap();
        c.ingress.limits.min_data_rate = 100_000;
    });
    let mut s = Smtp::greeted(relay.smtp()).await;
    s.ehlo("client.test").await;
    s.cmd("MAIL FROM:<a@example.com>").await.is(250, "2.1.0");
    s.cmd("RCPT TO:<b@example.org>").await.is(250, "2.1.5");
    s.cmd("DATA").await.is(354, "");
    // A trickle: one line every 300 ms, never idle for a whole dataTimeout.
    let reply = loop {
        s.send(b"slow line\r\n").await;
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        if let Ok(reply) =
            tokio::time::timeout(std::time::Duration::from_millis(10), s.reply()).await
        {
            break reply;
        }
    };
    reply.is(421, "4.4.2");
    assert!(nats.entries(STREAM).await.is_empty());
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

#[tokio::test]
async fn mail_loop_is_refused_after_50_received_headers() {
    let (nats, relay) = start_relay(|_| {});
    let mut s = Smtp::greeted(relay.smtp()).await;
    s.ehlo("client.test").await;
    let headers = |n: usize| "Received: from a by b; Thu, 1 Jan 1970 00:00:00 +0000\r\n".repeat(n);
    let looping = format!("{}Subject: loop\r\n\r\nx\r\n", headers(51));
    s.send_mail("a@example.com", &["b@example.org"], looping.as_bytes())
        .await
        .is(554, "5.4.6");
    let fine = format!("{}Subject: ok\r\n\r\nx\r\n", headers(50));
    s.send_mail("a@example.com", &["b@example.org"], fine.as_bytes())
        .await
        .is(250, "2.0.0");
    assert_eq!(nats.entries(STREAM).await.len(), 1);
}

#[tokio::test]
async fn sender_domains_restrict_mail_from() {
    let (_nats, relay) = start_relay(|c| c.ingress.sender_domains = vec!["example.com".into()]);
    let mut s = Smtp::greeted(relay.smtp()).await;
    s.ehlo("client.test").await;
    s.cmd("MAIL FROM:<a@evil.example>").await.is(553, "5.7.1");
    s.cmd("MAIL FROM:<a@sub.example.com>")
        .await
        .is(553, "5.7.1");
    s.cmd("MAIL FROM:<a@EXAMPLE.com>").await.is(250, "2.1.0");
    s.cmd("RSET").await.is(250, "2.0.0");
    s.cmd("MAIL FROM:<>").await.is(250, "2.1.0");
}

#[tokio::test]
async fn outsiders_cannot_relay_in_any_address_form() {
    let (nats, relay) =
        start_relay(|c| c.ingress.allowed_networks = vec!["10.0.0.0/8".parse().unwrap()]);
    let mut s = Smtp::greeted(relay.smtp()).await;
    s.ehlo("client.test").await;
    s.cmd("MAIL FROM:<a@example.com>").await.is(250, "2.1.0");
    for rcpt in [
        "<victim@example.org>",
        "<victim%example.org@relay.test>",
        "<\"victim@example.org\">",
        "<\"victim@example.org\"@relay.test>",
        "<@relay.test:victim@example.org>",
        "<@relay.test,@other.test:victim@example.org>",
        "<example.org!victim@relay.test>",
        "<victim@example.org@relay.test>",
        "<victim@[127.0.0.1]>",
        "<postmaster@relay.test>",
    ] {
        let reply = s.cmd(&format!("RCPT TO:{rcpt}")).await;
        assert!(
            reply.class() == 5,
            "{rcpt} got {} {:?}",
            reply.code,
            reply.lines
        );
        if reply.code == 554 {
            reply.is(554, "5.7.1");
        }
    }
    s.cmd("DATA").await.is(554, "5.5.1");
    assert!(nats.entries(STREAM).await.is_empty());
    assert!(relay.metric("postern_ingress_rejections_total{reason=\"relay_denied\"}") >= 7.0);
}
