//! SMTP smuggling (CVE-2023-51764 class): only `<CRLF>.<CRLF>` ends DATA, whatever comes
//! after a look-alike terminator is message text, and the queue never holds a bare CR or LF.

#![allow(clippy::unwrap_used)] // a test that cannot set up may panic

use postern_config::BareLineEndings;
use postern_e2e::{FAKE_TERMINATORS, ReplyExt, STREAM, Smtp, start_relay};
use postern_smtp::body::is_clean;

/// Sends one message whose body holds `fake` followed by a smuggled transaction, then the real
/// terminator, and returns the reply to the real end of data.
async fn smuggle(s: &mut Smtp, fake: &[u8]) -> postern_smtp::Reply {
    s.cmd("MAIL FROM:<sender@example.com>")
        .await
        .is(250, "2.1.0");
    s.cmd("RCPT TO:<rcpt@example.org>").await.is(250, "2.1.5");
    s.cmd("DATA").await.is(354, "");
    let mut body = b"From: sender@example.com\r\nSubject: smuggle\r\n\r\nfirst".to_vec();
    body.extend_from_slice(fake);
    body.extend_from_slice(b"MAIL FROM:<admin@example.com>\r\nRCPT TO:<smuggled@evil.example>\r\nDATA\r\nFrom: admin@example.com\r\n\r\nsmuggled\r\n");
    body.extend_from_slice(b"\r\n.\r\n");
    s.send(&body).await;
    s.reply().await
}

async fn matrix(mode: BareLineEndings, expected: (u16, &str)) {
    let (nats, relay) = start_relay(|c| c.ingress.bare_line_endings = mode);
    for fake in FAKE_TERMINATORS {
        let mut s = Smtp::greeted(relay.smtp()).await;
        s.ehlo("client.test").await;
        smuggle(&mut s, fake).await.is(expected.0, expected.1);
        // Exactly one transaction: the next reply is to our NOOP, nothing smuggled answered first.
        s.cmd("NOOP").await.is(250, "2.0.0");
        s.cmd("QUIT").await.is(221, "2.0.0");
    }
    let entries = nats.entries(STREAM).await;
    let accepted = if expected.0 == 250 {
        FAKE_TERMINATORS.len()
    } else {
        0
    };
    assert_eq!(
        entries.len(),
        accepted,
        "one entry per message, none smuggled"
    );
    for entry in &entries {
        assert_eq!(entry.envelope.sender, "sender@example.com");
        assert_eq!(entry.envelope.recipients, ["rcpt@example.org"]);
        assert!(
            is_clean(&entry.body),
            "bare CR/LF or NUL queued: {:?}",
            entry.text()
        );
        assert!(
            entry.text().contains("smuggled\r\n"),
            "the smuggled text stays in the body"
        );
    }
}

#[tokio::test]
async fn normalize_mode_keeps_one_clean_message() {
    matrix(BareLineEndings::Normalize, (250, "2.0.0")).await;
}

#[tokio::test]
async fn reject_mode_refuses_after_the_real_end() {
    matrix(BareLineEndings::Reject, (550, "5.6.0")).await;
}

/// Sends one BDAT LAST chunk full of bare line endings; returns the reply and what was queued.
async fn bdat_with_bare_endings(mode: BareLineEndings) -> (u16, Vec<postern_e2e::QueueEntry>) {
    let (nats, relay) = start_relay(|c| c.ingress.bare_line_endings = mode);
    let mut s = Smtp::greeted(relay.smtp()).await;
    s.ehlo("client.test").await;
    s.cmd("MAIL FROM:<sender@example.com>")
        .await
        .is(250, "2.1.0");
    s.cmd("RCPT TO:<rcpt@example.org>").await.is(250, "2.1.5");
    let chunk = b"Subject: b\n\nline\rmore\n.\nMAIL FROM:<x@y>\r\n";
    s.send(format!("BDAT {} LAST\r\n", chunk.len()).as_bytes())
        .await;
    s.send(chunk).await;
    let code = s.reply().await.code;
    // The chunk was read to its end: the next command is answered as a command.
    s.cmd("NOOP").await.is(250, "2.0.0");
    (code, nats.entries(STREAM).await)
}

#[tokio::test]
async fn bdat_bare_line_endings_follow_the_mode() {
    let (code, entries) = bdat_with_bare_endings(BareLineEndings::Normalize).await;
    assert_eq!((code, entries.len()), (250, 1));
    assert!(is_clean(&entries[0].body));
    let text = entries[0].text();
    assert!(
        text.ends_with("Subject: b\r\n\r\nline more\r\n.\r\nMAIL FROM:<x@y>\r\n"),
        "{text}"
    );

    let (code, entries) = bdat_with_bare_endings(BareLineEndings::Reject).await;
    assert_eq!((code, entries.len()), (550, 0));
}
