//! Trace export: with `telemetry.otlpEndpoint` set, each message's span is exported over
//! OTLP/HTTP in the trace whose id is the queue id, and the queue entry carries its traceparent.

#![allow(clippy::unwrap_used)] // a test that cannot set up may panic

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use postern_e2e::{ReplyExt, STREAM, Smtp, start_relay};

/// Path and body of each request received.
type Requests = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// A minimal OTLP/HTTP collector: records the path and body of every POST, answers 200.
struct Collector {
    port: u16,
    requests: Requests,
}

impl Collector {
    fn start() -> Collector {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests: Requests = Arc::default();
        let store = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let store = store.clone();
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut stream = stream;
                    loop {
                        let mut request_line = String::new();
                        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                            return;
                        }
                        let path = request_line
                            .split(' ')
                            .nth(1)
                            .unwrap_or_default()
                            .to_string();
                        let mut length = 0;
                        loop {
                            let mut header = String::new();
                            reader.read_line(&mut header).unwrap();
                            if header == "\r\n" {
                                break;
                            }
                            if let Some((name, value)) = header.split_once(':')
                                && name.eq_ignore_ascii_case("content-length")
                            {
                                length = value.trim().parse().unwrap();
                            }
                        }
                        let mut body = vec![0; length];
                        reader.read_exact(&mut body).unwrap();
                        store.lock().unwrap().push((path, body));
                        stream
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                            .unwrap();
                    }
                });
            }
        });
        Collector { port, requests }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn message_spans_are_exported_in_the_queue_id_trace() {
    let collector = Collector::start();
    let (nats, mut relay) = start_relay(|c| {
        c.telemetry.otlp_endpoint = Some(format!("http://127.0.0.1:{}", collector.port));
        c.telemetry.service_name = "postern-under-test".into();
    });
    let mut s = Smtp::greeted(relay.smtp()).await;
    s.ehlo("client.test").await;
    let id = s
        .send_mail(
            "a@example.com",
            &["b@example.org"],
            b"Subject: traced\r\n\r\nx\r\n",
        )
        .await
        .is(250, "2.0.0")
        .queue_id();
    s.cmd("QUIT").await.is(221, "2.0.0");

    let trace_id = ulid_to_u128(&id);
    let entry = &nats.entries(STREAM).await[0];
    let traceparent = entry.header("traceparent").unwrap().to_string();
    assert!(
        traceparent.starts_with(&format!("00-{trace_id:032x}-")),
        "{traceparent}"
    );
    assert_eq!(entry.envelope.traceparent, traceparent);

    // Shutdown flushes the batch exporter.
    relay.sigterm();
    assert!(relay.wait_exit(Duration::from_secs(20)).unwrap().success());
    let requests = collector.requests.lock().unwrap().clone();
    let span_id = traceparent.split('-').nth(2).unwrap();
    let span_id = (0..8)
        .map(|i| u8::from_str_radix(&span_id[2 * i..2 * i + 2], 16).unwrap())
        .collect::<Vec<u8>>();
    let exported = requests.iter().find(|(path, body)| {
        path == "/v1/traces"
            && contains(body, &trace_id.to_be_bytes())
            && contains(body, b"smtp.message")
    });
    let (_, body) = exported
        .unwrap_or_else(|| panic!("no span of trace {id} among {} requests", requests.len()));
    assert!(
        contains(body, &span_id),
        "the exported span is the one in traceparent"
    );
    assert!(
        contains(body, b"postern-under-test"),
        "service.name is exported"
    );
}

#[tokio::test]
async fn json_logs_carry_the_queue_id() {
    let (_nats, mut relay) = start_relay(|c| c.log.format = postern_config::LogFormat::Json);
    let mut s = Smtp::greeted(relay.smtp()).await;
    s.ehlo("client.test").await;
    let id = s
        .send_mail(
            "a@example.com",
            &["b@example.org"],
            b"Subject: json\r\n\r\nx\r\n",
        )
        .await
        .is(250, "2.0.0")
        .queue_id();
    relay.sigterm();
    relay.wait_exit(Duration::from_secs(20)).unwrap();
    let log = relay.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let queued = lines
        .iter()
        .find(|l| l["message"] == "message queued")
        .unwrap();
    assert_eq!(queued["queue_id"], id.as_str());
    assert_eq!(queued["level"], "INFO");
}

/// Decodes a Crockford base32 ULID.
fn ulid_to_u128(id: &str) -> u128 {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    id.bytes().fold(0u128, |acc, c| {
        (acc << 5) | ALPHABET.iter().position(|&a| a == c).unwrap() as u128
    })
}
