//! `postern-load`: SMTP load against Postern's ingress or any other SMTP server.
//!
//! Sends `--messages` messages of `--size` bytes over `--sessions` concurrent sessions
//! (optionally pipelined) and prints the accepted rate, accept latency percentiles and the peak
//! RSS of the processes named with `--pid`. A 4xx answer is counted and the session goes on (after
//! RSET), as a real client would retry later. `--idle N` instead opens N sessions, greets each
//! with EHLO, and reports the RSS while they sit idle; `--auth-flood SECONDS` has every session
//! guess passwords as fast as the server answers. With `--sink`, the sink also checks that every
//! message arrived whole and reports how long each took from its DATA to the sink (delivery
//! latency). `--waiting N --nats URL` first files N retries for a destination that is never
//! due, straight into the queue, to measure fresh mail beside them. While it runs, a progress
//! line on stderr (once a second; `--quiet` for none) says how many messages were sent,
//! accepted, refused and received at the sink, and the rate. See docs/benchmarks.md.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use postern_smtp::{Reply, ReplyParser};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Parser, Debug, Clone)]
#[command(version, about = "SMTP load generator for Postern benchmarks")]
struct Args {
    /// SMTP server to load.
    #[arg(long, default_value = "127.0.0.1:2525")]
    target: SocketAddr,
    /// Messages to send in total.
    #[arg(long, default_value_t = 10_000)]
    messages: usize,
    /// Body size in bytes (headers included).
    #[arg(long, default_value_t = 4096)]
    size: usize,
    /// Concurrent sessions.
    #[arg(long, default_value_t = 50)]
    sessions: usize,
    /// Send MAIL, RCPT and DATA in one write (RFC 2920).
    #[arg(long)]
    pipelining: bool,
    /// Recipient address of every message.
    #[arg(long, default_value = "sink@example.org")]
    rcpt: String,
    /// Processes whose RSS is reported (repeat the flag).
    #[arg(long)]
    pid: Vec<u32>,
    /// Open this many idle sessions instead of sending mail.
    #[arg(long)]
    idle: Option<usize>,
    /// Run an SMTP sink here (the relay's next hop) and report the end-to-end rate: from the
    /// first message sent to the last one received.
    #[arg(long)]
    sink: Option<SocketAddr>,
    /// Before the load, put this many entries waiting for a retry an hour ahead into the queue
    /// at `--nats` (small bodies, recipient domain `waiting.example`).
    #[arg(long, requires = "nats")]
    waiting: Option<usize>,
    /// The NATS server of the relay's queue, for `--waiting` (default stream and prefix).
    #[arg(long)]
    nats: Option<String>,
    /// Guess passwords with AUTH PLAIN on every session for this many seconds instead of
    /// sending mail (the listener must offer AUTH without TLS: `allowPlaintextAuth`).
    #[arg(long)]
    auth_flood: Option<u64>,
    /// No progress on stderr while the load runs; the report on stdout stays.
    #[arg(long, short)]
    quiet: bool,
}

/// The last line of every message, so the sink can tell a whole message from a cut one.
const TRAILER: &[u8] = b"postern-load: end of message\r\n";

/// The header each message carries its send time in (microseconds since the epoch, fixed
/// width), for the sink to measure delivery latency.
const SENT: &[u8] = b"X-Load-Sent: ";
const SENT_DIGITS: usize = 16;

fn micros_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args = Args::parse();
    match (args.idle, args.auth_flood) {
        (Some(count), _) => idle(&args, count).await,
        (None, Some(seconds)) => auth_flood(&args, Duration::from_secs(seconds)).await,
        (None, None) => load(&args).await,
    }
}

struct Client {
    stream: TcpStream,
    parser: ReplyParser,
    buf: Vec<u8>,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Result<Client, Error> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let mut client = Client {
            stream,
            parser: ReplyParser::default(),
            buf: vec![0; 16 * 1024],
        };
        client.expect(220).await?;
        client.command("EHLO load.test\r\n", 250).await?;
        Ok(client)
    }

    async fn reply(&mut self) -> Result<Reply, Error> {
        loop {
            if let Some(reply) = self.parser.next_reply()? {
                return Ok(reply);
            }
            let n = self.stream.read(&mut self.buf).await?;
            if n == 0 {
                return Err("connection closed".into());
            }
            self.parser.feed(&self.buf[..n]);
        }
    }

    async fn expect(&mut self, code: u16) -> Result<(), Error> {
        let reply = self.reply().await?;
        if reply.code != code {
            return Err(format!("expected {code}, got {} {}", reply.code, reply.text()).into());
        }
        Ok(())
    }

    async fn command(&mut self, line: &str, code: u16) -> Result<(), Error> {
        self.stream.write_all(line.as_bytes()).await?;
        self.expect(code).await
    }

    /// One transaction; returns the code that ended it: 250 when queued, or the first
    /// refusal (after which the session is reset and can go on).
    async fn send_message(&mut self, args: &Args, body: &[u8]) -> Result<u16, Error> {
        let mail = "MAIL FROM:<load@example.com>\r\n";
        let rcpt = format!("RCPT TO:<{}>\r\n", args.rcpt);
        let replies = if args.pipelining {
            self.stream
                .write_all(format!("{mail}{rcpt}DATA\r\n").as_bytes())
                .await?;
            [
                self.reply().await?,
                self.reply().await?,
                self.reply().await?,
            ]
        } else {
            let mail = self.ask(mail).await?;
            if mail.code != 250 {
                return self.reset(mail.code).await;
            }
            let rcpt = self.ask(&rcpt).await?;
            if rcpt.code != 250 {
                return self.reset(rcpt.code).await;
            }
            [mail, rcpt, self.ask("DATA\r\n").await?]
        };
        if let Some(refusal) = replies.iter().find(|r| r.code != 250 && r.code != 354) {
            return self.reset(refusal.code).await;
        }
        self.stream.write_all(body).await?;
        let end = self.reply().await?;
        if end.code != 250 && end.code / 100 != 4 && end.code / 100 != 5 {
            return Err(format!("unexpected {} {}", end.code, end.text()).into());
        }
        Ok(end.code)
    }

    async fn ask(&mut self, line: &str) -> Result<Reply, Error> {
        self.stream.write_all(line.as_bytes()).await?;
        self.reply().await
    }

    async fn reset(&mut self, code: u16) -> Result<u16, Error> {
        self.command("RSET\r\n", 250).await?;
        Ok(code)
    }
}

/// A message of `size` bytes with 76-character lines, terminated for DATA.
fn message(size: usize) -> Vec<u8> {
    let mut body = b"From: load@example.com\r\nTo: sink@example.org\r\nSubject: load\r\n".to_vec();
    body.extend_from_slice(SENT);
    body.extend_from_slice(&[b'0'; SENT_DIGITS]);
    body.extend_from_slice(b"\r\n\r\n");
    let line = format!("{}\r\n", "x".repeat(76));
    while body.len() + line.len() + TRAILER.len() <= size {
        body.extend_from_slice(line.as_bytes());
    }
    body.extend_from_slice(TRAILER);
    body.extend_from_slice(b".\r\n");
    body
}

/// Writes the send time into a message made by [`message`].
fn stamp(body: &mut [u8]) {
    if let Some(at) = find(body, SENT) {
        let digits = format!("{:0width$}", micros_now(), width = SENT_DIGITS);
        body[at + SENT.len()..at + SENT.len() + SENT_DIGITS].copy_from_slice(digits.as_bytes());
    }
}

async fn load(args: &Args) -> Result<(), Error> {
    if let (Some(count), Some(url)) = (args.waiting, &args.nats) {
        preload_waiting(url, count).await?;
    }
    let received = match args.sink {
        Some(addr) => Some(sink(addr).await?),
        None => None,
    };
    let body = Arc::new(message(args.size));
    let next = Arc::new(AtomicUsize::new(0));
    let accepted = Counter::default();
    let failed = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::<
        u16,
        usize,
    >::new()));
    let started = Instant::now();
    let shown = (!args.quiet).then(|| {
        let counts = Progress {
            total: args.messages,
            sent: next.clone(),
            accepted: accepted.clone(),
            refused: refused.clone(),
            received: received.as_ref().map(|(r, _, _)| r.clone()),
        };
        tokio::spawn(counts.show(started))
    });
    let mut tasks = Vec::new();
    for _ in 0..args.sessions {
        let (args, body, next, accepted, failed, refused) = (
            args.clone(),
            body.clone(),
            next.clone(),
            accepted.clone(),
            failed.clone(),
            refused.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut client = match Client::connect(args.target).await {
                Ok(client) => client,
                Err(err) => {
                    eprintln!("session stopped: connect: {err}");
                    return latencies;
                }
            };
            let mut stamped = body.to_vec();
            while next.fetch_add(1, Ordering::Relaxed) < args.messages {
                let sent = Instant::now();
                stamp(&mut stamped);
                match client.send_message(&args, &stamped).await {
                    Ok(250) => {
                        latencies.push(sent.elapsed());
                        accepted.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(code) => {
                        *refused
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .entry(code)
                            .or_default() += 1;
                    }
                    Err(err) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        eprintln!("session stopped: {err}");
                        return latencies;
                    }
                }
            }
            let _ = client.command("QUIT\r\n", 221).await;
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await?);
    }
    let elapsed = started.elapsed();
    if let (Some((received, _, _)), Some(_)) = (&received, &shown) {
        // Progress goes on while the sink still receives.
        wait_received(received, latencies.len()).await;
    }
    if let Some(shown) = shown {
        shown.abort();
        eprintln!();
    }
    latencies.sort();
    let percentile = |p: f64| {
        let index = ((latencies.len() as f64 * p).ceil() as usize).saturating_sub(1);
        latencies.get(index).copied().unwrap_or_default()
    };
    println!("target           {}", args.target);
    println!(
        "sessions         {} ({})",
        args.sessions,
        if args.pipelining {
            "pipelined"
        } else {
            "no pipelining"
        }
    );
    println!("message size     {} bytes", body.len() - 3);
    println!(
        "accepted         {} of {} ({} sessions failed)",
        latencies.len(),
        args.messages,
        failed.load(Ordering::Relaxed)
    );
    for (code, count) in refused.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        println!("refused          {count} with {code}");
    }
    println!("elapsed          {:.2} s", elapsed.as_secs_f64());
    println!(
        "accepted rate    {:.0} msg/s",
        latencies.len() as f64 / elapsed.as_secs_f64()
    );
    println!(
        "accept latency   p50 {:.2} ms, p99 {:.2} ms",
        ms(percentile(0.50)),
        ms(percentile(0.99))
    );
    if let Some((received, truncated, delivery)) = received {
        wait_received(&received, latencies.len()).await;
        let end_to_end = started.elapsed();
        let count = received.load(Ordering::Relaxed);
        println!(
            "cut short        {} of those received",
            truncated.load(Ordering::Relaxed)
        );
        println!(
            "received at sink {count} in {:.2} s",
            end_to_end.as_secs_f64()
        );
        println!(
            "end-to-end rate  {:.0} msg/s",
            count as f64 / end_to_end.as_secs_f64()
        );
        let mut delivery = delivery.lock().unwrap_or_else(|e| e.into_inner()).clone();
        delivery.sort_unstable();
        let at = |p: f64| {
            let index = ((delivery.len() as f64 * p).ceil() as usize).saturating_sub(1);
            delivery.get(index).copied().unwrap_or_default() as f64 / 1000.0
        };
        println!(
            "delivery latency p50 {:.1} ms, p99 {:.1} ms (DATA sent to received at the sink)",
            at(0.50),
            at(0.99)
        );
    }
    report_rss(&args.pid, "VmHWM", "peak RSS");
    Ok(())
}

type Counter = Arc<AtomicUsize>;

/// Waits until the sink received `count` messages, for 15 minutes at most.
async fn wait_received(received: &Counter, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(900);
    while received.load(Ordering::Relaxed) < count && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// What a load has done so far, for the progress line.
struct Progress {
    total: usize,
    /// Messages taken by a session (one past the last one sent, at most `total`).
    sent: Counter,
    accepted: Counter,
    refused: Arc<std::sync::Mutex<std::collections::BTreeMap<u16, usize>>>,
    /// Received at the sink, with `--sink`.
    received: Option<Counter>,
}

impl Progress {
    /// The progress line after `elapsed`.
    fn line(&self, elapsed: Duration) -> String {
        let sent = self.sent.load(Ordering::Relaxed).min(self.total);
        let accepted = self.accepted.load(Ordering::Relaxed);
        let refused: usize = self
            .refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .sum();
        let rate = accepted as f64 / elapsed.as_secs_f64().max(0.001);
        let mut line = format!(
            "sent {sent}/{} · accepted {accepted} · refused {refused}",
            self.total
        );
        if let Some(received) = &self.received {
            line.push_str(&format!(" · received {}", received.load(Ordering::Relaxed)));
        }
        line.push_str(&format!(
            " · {rate:.0} msg/s · {:.0} s",
            elapsed.as_secs_f64()
        ));
        line
    }

    /// Writes the line to stderr every second: over itself on a terminal, one per second
    /// otherwise.
    async fn show(self, started: Instant) {
        use std::io::{IsTerminal, Write};
        let terminal = std::io::stderr().is_terminal();
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let line = self.line(started.elapsed());
            let mut err = std::io::stderr().lock();
            let _ = if terminal {
                write!(err, "\r\x1b[2K{line}")
            } else {
                writeln!(err, "{line}")
            };
            let _ = err.flush();
        }
    }
}
/// Delivery latencies seen by the sink, in microseconds.
type Latencies = Arc<std::sync::Mutex<Vec<u64>>>;

/// Files `count` entries for `waiting.example`, each a retry due an hour from now, into the
/// default queue stream at `url`, the way delivery files a retry.
async fn preload_waiting(url: &str, count: usize) -> Result<(), Error> {
    use postern_queue::entry::{self, BodyRef, ClientFacts, ENVELOPE_VERSION, Envelope};
    use postern_queue::names;
    let js = async_nats::jetstream::new(async_nats::connect(url).await?);
    let started = Instant::now();
    let at_ms = (micros_now() / 1000) + 3_600_000;
    let body = b"Subject: waiting\r\n\r\nLater.\r\n";
    let prefix = postern_config::NatsConfig::default().subject_prefix;
    let mut acks = std::collections::VecDeque::new();
    for n in 0..count {
        let envelope = Envelope {
            version: ENVELOPE_VERSION,
            queue_id: format!("WAITING{n:019}"),
            sender: "load@example.com".into(),
            domain: "waiting.example".into(),
            recipients: vec![format!("r{n}@waiting.example")],
            received_at_ms: micros_now() / 1000,
            attempts: 1,
            client: ClientFacts {
                address: "127.0.0.1".into(),
                helo: "load.test".into(),
                tls: None,
                auth_user: None,
            },
            smtputf8: false,
            eight_bit_mime: false,
            eight_bit: false,
            body: BodyRef::Inline {
                size: body.len() as u64,
            },
            not_before_ms: Some(at_ms),
            traceparent: String::new(),
            rate_reserved: None,
            postponed: 0,
            last_replies: Vec::new(),
            dsn: Default::default(),
            delay_reported: false,
            require_tls: false,
            tls_optional: false,
            message_id: None,
        };
        let target = names::ready_subject(&prefix, &envelope.domain);
        let mut headers = async_nats::HeaderMap::new();
        postern_queue::schedule(&mut headers, at_ms, &target);
        let subject = names::wait_subject(&prefix, &envelope.domain, &envelope.queue_id);
        let payload = entry::encode(&envelope, Some(body));
        acks.push_back(
            js.publish_with_headers(subject, headers, payload.into())
                .await?,
        );
        if acks.len() >= 2_000 {
            while let Some(ack) = acks.pop_front() {
                ack.await?;
            }
        }
    }
    while let Some(ack) = acks.pop_front() {
        ack.await?;
    }
    println!(
        "waiting          {count} retries filed in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// An SMTP server that accepts everything and counts complete messages, and those that do not
/// end with the trailer every message of the load has.
async fn sink(addr: SocketAddr) -> Result<(Counter, Counter, Latencies), Error> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let received = Counter::default();
    let truncated = Counter::default();
    let latencies = Latencies::default();
    let counters = (received.clone(), truncated.clone(), latencies.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (received, truncated, latencies) =
                (counters.0.clone(), counters.1.clone(), counters.2.clone());
            tokio::spawn(async move {
                let _ = sink_session(stream, received, truncated, latencies).await;
            });
        }
    });
    Ok((received, truncated, latencies))
}

/// How long ago the message in `data` was sent, by its `X-Load-Sent:` header.
fn sent_ago(data: &[u8]) -> Option<u64> {
    let at = find(data, SENT)? + SENT.len();
    let digits = std::str::from_utf8(data.get(at..at + SENT_DIGITS)?).ok()?;
    let sent: u64 = digits.parse().ok()?;
    Some(micros_now().saturating_sub(sent))
}

async fn sink_session(
    mut stream: TcpStream,
    received: Counter,
    truncated: Counter,
    latencies: Latencies,
) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    stream.write_all(b"220 sink ESMTP\r\n").await?;
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    let mut in_data = false;
    // Where the search for the end of data resumes: a large message is scanned once.
    let mut scanned = 0;
    loop {
        let mut out = Vec::new();
        loop {
            if in_data {
                match find(&buf[scanned..], b"\r\n.\r\n").map(|at| at + scanned) {
                    Some(end) => {
                        if !buf[..end + 2].ends_with(TRAILER) {
                            truncated.fetch_add(1, Ordering::Relaxed);
                        }
                        if let Some(ago) = sent_ago(&buf[..end]) {
                            latencies
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .push(ago);
                        }
                        buf.drain(..end + 5);
                        in_data = false;
                        scanned = 0;
                        received.fetch_add(1, Ordering::Relaxed);
                        out.extend_from_slice(b"250 2.0.0 ok\r\n");
                    }
                    None => {
                        scanned = buf.len().saturating_sub(4);
                        break;
                    }
                }
            } else {
                let Some(end) = find(&buf, b"\r\n") else {
                    break;
                };
                let line: Vec<u8> = buf.drain(..end + 2).collect();
                let verb = line
                    .get(..4)
                    .map(|v| v.to_ascii_uppercase())
                    .unwrap_or_default();
                match verb.as_slice() {
                    b"EHLO" => {
                        out.extend_from_slice(b"250-sink\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
                    }
                    b"DATA" => {
                        in_data = true;
                        // The terminator search starts at the CRLF ending the DATA line.
                        buf.splice(0..0, b"\r\n".iter().copied());
                        out.extend_from_slice(b"354 go\r\n");
                    }
                    b"QUIT" => {
                        stream.write_all(&out).await?;
                        stream.write_all(b"221 bye\r\n").await?;
                        return Ok(());
                    }
                    _ => out.extend_from_slice(b"250 ok\r\n"),
                }
            }
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

async fn idle(args: &Args, count: usize) -> Result<(), Error> {
    let mut sessions = Vec::with_capacity(count);
    let started = Instant::now();
    for _ in 0..count {
        sessions.push(Client::connect(args.target).await?);
    }
    println!(
        "idle sessions    {count} open after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    report_rss(&args.pid, "VmRSS", "RSS with idle sessions");
    for client in &mut sessions {
        client.command("NOOP\r\n", 250).await?;
    }
    println!("all {count} sessions still answer");
    Ok(())
}

/// Every session guesses passwords as fast as the server answers, reconnecting when it is
/// closed, for `length`; prints what the server answered and the RSS of `--pid` as it went.
async fn auth_flood(args: &Args, length: Duration) -> Result<(), Error> {
    let answers = Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::<
        u16,
        usize,
    >::new()));
    let until = Instant::now() + length;
    let mut tasks = Vec::new();
    for session in 0..args.sessions {
        let (target, answers) = (args.target, answers.clone());
        tasks.push(tokio::spawn(async move {
            let guess = base64_plain(&format!("user{session}"), "wrong-password");
            while Instant::now() < until {
                let Ok(mut client) = Client::connect(target).await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                while Instant::now() < until {
                    let Ok(reply) = client.ask(&format!("AUTH PLAIN {guess}\r\n")).await else {
                        break;
                    };
                    *answers
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .entry(reply.code)
                        .or_default() += 1;
                    if reply.code == 421 {
                        break;
                    }
                }
            }
        }));
    }
    let mut peak = vec![0u64; args.pid.len()];
    while Instant::now() < until {
        for (pid, peak) in args.pid.iter().zip(peak.iter_mut()) {
            *peak = (*peak).max(rss_kib(*pid, "VmRSS"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for task in tasks {
        let _ = task.await;
    }
    println!("auth flood       {} sessions for {length:?}", args.sessions);
    for (code, count) in answers.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        println!("answered         {count} with {code}");
    }
    for (pid, peak) in args.pid.iter().zip(peak) {
        println!(
            "RSS              pid {pid}: peak {:.1} MiB, now {:.1} MiB",
            peak as f64 / 1024.0,
            rss_kib(*pid, "VmRSS") as f64 / 1024.0
        );
    }
    Ok(())
}

fn base64_plain(user: &str, password: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"))
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn report_rss(pids: &[u32], field: &str, label: &str) {
    for pid in pids {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let kib = rss_kib(*pid, field);
        println!(
            "{label:<16} {} (pid {pid}): {:.1} MiB",
            comm.trim(),
            kib as f64 / 1024.0
        );
    }
}
