//! Delivery processes sharing one queue: every message delivered once in the normal case, and
//! none lost when a process is killed mid-run.

#![allow(clippy::unwrap_used)] // a test that cannot set up may panic

use std::collections::HashMap;
use std::time::{Duration, Instant};

use postern_e2e::{MockMx, NatsServer, Relay, STREAM, route_all};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MESSAGES: usize = 2000;

/// Sends `count` messages numbered from `first` over 10 pipelining sessions.
async fn load(relay: &Relay, first: usize, count: usize) {
    let sessions = 10;
    let mut tasks = Vec::new();
    for session in 0..sessions {
        let addr = relay.smtp();
        tasks.push(tokio::spawn(async move {
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            let mut script = String::from("EHLO load.test\r\n");
            for n in (first + session..first + count).step_by(sessions) {
                script.push_str(&format!(
                    "MAIL FROM:<load@example.com>\r\nRCPT TO:<sink@example.org>\r\nDATA\r\nSubject: message {n}\r\n\r\nbody {n}\r\n.\r\n"
                ));
            }
            script.push_str("QUIT\r\n");
            stream.write_all(script.as_bytes()).await.unwrap();
            let mut replies = String::new();
            stream.read_to_string(&mut replies).await.unwrap();
            let queued = replies.matches("Ok: queued as").count();
            assert_eq!(queued, (first + session..first + count).step_by(sessions).count(), "{replies}");
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

/// How many times each message number reached the MX.
fn counts(mx: &MockMx) -> HashMap<usize, usize> {
    let mut counts = HashMap::new();
    for message in mx.delivered() {
        let text = message.text();
        let n = text
            .split("Subject: message ")
            .nth(1)
            .and_then(|rest| rest.split("\r\n").next())
            .and_then(|n| n.parse().ok());
        *counts.entry(n.unwrap()).or_insert(0) += 1;
    }
    counts
}

async fn wait_all(mx: &MockMx, total: usize, limit: Duration) -> HashMap<usize, usize> {
    let start = Instant::now();
    loop {
        let counts = counts(mx);
        if counts.len() >= total {
            return counts;
        }
        assert!(
            start.elapsed() < limit,
            "{} of {total} messages delivered after {limit:?}",
            counts.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn delivery(nats: &NatsServer, mx: &MockMx) -> Relay {
    let mut config = Relay::config(nats);
    config.delivery.routes = vec![route_all(&mx.host())];
    config.delivery.ack_wait = "2s".parse().unwrap();
    config.delivery.concurrency = 50;
    let relay = Relay::spawn(&["delivery"], config);
    relay.wait_ready(Duration::from_secs(20));
    relay
}

#[tokio::test]
async fn two_processes_deliver_each_message_once_and_survive_a_kill() {
    let nats = NatsServer::start();
    let mx = MockMx::accepting().await;
    let ingress = Relay::start(Relay::config(&nats));
    let a = delivery(&nats, &mx);
    let mut b = delivery(&nats, &mx);

    load(&ingress, 0, MESSAGES).await;
    let counts = wait_all(&mx, MESSAGES, Duration::from_secs(120)).await;
    let duplicates: usize = counts.values().map(|c| c - 1).sum();
    assert_eq!(
        duplicates, 0,
        "each message delivered exactly once by two processes"
    );
    assert!(
        a.metric("postern_delivery_outcomes_total{result=\"delivered\"}") > 0.0,
        "process a worked"
    );
    assert!(
        b.metric("postern_delivery_outcomes_total{result=\"delivered\"}") > 0.0,
        "process b worked"
    );

    // Second run: kill -9 one process while it is delivering.
    let delivered_by_b = b.metric("postern_delivery_outcomes_total{result=\"delivered\"}");
    load(&ingress, MESSAGES, MESSAGES).await;
    let start = Instant::now();
    while b.metric("postern_delivery_outcomes_total{result=\"delivered\"}") < delivered_by_b + 100.0
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "process b did not take part in the second run"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    b.kill();
    let counts = wait_all(&mx, 2 * MESSAGES, Duration::from_secs(120)).await;
    let second: Vec<usize> = (MESSAGES..2 * MESSAGES).map(|n| counts[&n]).collect();
    let duplicates: usize = second.iter().map(|c| c - 1).sum();
    println!(
        "kill -9 of one delivery process: {duplicates} duplicate deliveries of {MESSAGES} messages"
    );
    assert!(
        duplicates <= 50,
        "at most the entries the killed process held ({duplicates})"
    );
    nats.wait_empty(STREAM, Duration::from_secs(30)).await;
    drop(a);
}

// Multi-threaded: the blocking wait for the exit must not stall the scripted MX.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_attempts_in_flight_finish_and_exits_0() {
    let nats = NatsServer::start();
    let mx = MockMx::accepting().await;
    mx.set_data_delay(Duration::from_secs(2));
    let ingress = Relay::start(Relay::config(&nats));
    let mut worker = delivery(&nats, &mx);
    load(&ingress, 0, 1).await;
    mx.wait_for(1, Duration::from_secs(20)).await;
    // The MX holds its reply to the end of data while the worker is asked to stop.
    worker.sigterm();
    let status = worker
        .wait_exit(Duration::from_secs(20))
        .expect("delivery exits");
    assert!(status.success(), "{status:?}");
    assert!(worker.log().contains("delivered"), "{}", worker.log());
    assert!(
        nats.entries(STREAM).await.is_empty(),
        "the finished entry was acknowledged before exit"
    );
    assert_eq!(mx.delivered().len(), 1);
}

#[tokio::test]
async fn a_slow_attempt_keeps_its_entry_past_the_ack_deadline() {
    let nats = NatsServer::start();
    let mx = MockMx::accepting().await;
    // The MX answers the end of data after 3 s; the acknowledgement deadline is 1 s.
    mx.set_data_delay(Duration::from_secs(3));
    let ingress = Relay::start(Relay::config(&nats));
    let mut config = Relay::config(&nats);
    config.delivery.routes = vec![route_all(&mx.host())];
    config.delivery.ack_wait = "1s".parse().unwrap();
    let worker = Relay::spawn(&["delivery"], config);
    worker.wait_ready(Duration::from_secs(20));
    load(&ingress, 0, 1).await;
    mx.wait_for(1, Duration::from_secs(20)).await;
    nats.wait_empty(STREAM, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        mx.transactions(),
        1,
        "in-progress acknowledgements kept the entry from a second attempt"
    );
}

// Multi-threaded: the blocking wait for the exit must not stall the scripted MX.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_past_the_shutdown_grace_goes_to_another_process_at_once() {
    let nats = NatsServer::start();
    let mx = MockMx::accepting().await;
    // The first attempt hangs at the end of data far past the stopping process's grace.
    mx.delay_next_data(Duration::from_secs(30));
    let ingress = Relay::start(Relay::config(&nats));
    let process = |grace: &str| {
        let mut config = Relay::config(&nats);
        config.delivery.routes = vec![route_all(&mx.host())];
        config.delivery.ack_wait = "60s".parse().unwrap();
        config.shutdown_grace = grace.parse().unwrap();
        let relay = Relay::spawn(&["delivery"], config);
        relay.wait_ready(Duration::from_secs(20));
        relay
    };
    let mut stopping = process("1s");
    load(&ingress, 0, 1).await;
    let start = Instant::now();
    while mx.total_sessions() == 0 {
        assert!(start.elapsed() < Duration::from_secs(20), "no attempt");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let taking_over = process("10s");
    stopping.sigterm();
    stopping.wait_exit(Duration::from_secs(20)).expect("exits");
    assert!(stopping.log().contains("released"), "{}", stopping.log());
    // Long before the 60 s acknowledgement deadline, the other process delivers it.
    let released = Instant::now();
    nats.wait_empty(STREAM, Duration::from_secs(10)).await;
    assert!(released.elapsed() < Duration::from_secs(10));
    assert!(
        taking_over.metric("postern_delivery_outcomes_total{result=\"delivered\"}") >= 1.0,
        "{}",
        taking_over.log()
    );
}
