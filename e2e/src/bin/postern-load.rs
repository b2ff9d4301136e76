//! `postern-load`: SMTP load against Postern's ingress or any other SMTP server.
//!
//! Sends `--messages` messages of `--size` bytes over `--sessions` concurrent sessions
//! (optionally pipelined) and prints the accepted rate, accept latency percentiles and the peak
//! RSS of the processes named with `--pid`. `--idle N` instead opens N sessions, greets each with
//! EHLO, and reports the RSS while they sit idle. See docs/benchmarks.md.

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
}

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args = Args::parse();
    match args.idle {
        Some(count) => idle(&args, count).await,
        None => load(&args).await,
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

    async fn send_message(&mut self, args: &Args, body: &[u8]) -> Result<(), Error> {
        let mail = "MAIL FROM:<load@example.com>\r\n";
        let rcpt = format!("RCPT TO:<{}>\r\n", args.rcpt);
        if args.pipelining {
            self.stream
                .write_all(format!("{mail}{rcpt}DATA\r\n").as_bytes())
                .await?;
            self.expect(250).await?;
            self.expect(250).await?;
            self.expect(354).await?;
        } else {
            self.command(mail, 250).await?;
            self.command(&rcpt, 250).await?;
            self.command("DATA\r\n", 354).await?;
        }
        self.stream.write_all(body).await?;
        self.expect(250).await
    }
}

/// A message of `size` bytes with 76-character lines, terminated for DATA.
fn message(size: usize) -> Vec<u8> {
    let mut body =
        b"From: load@example.com\r\nTo: sink@example.org\r\nSubject: load\r\n\r\n".to_vec();
    let line = format!("{}\r\n", "x".repeat(76));
    while body.len() + line.len() <= size {
        body.extend_from_slice(line.as_bytes());
    }
    body.extend_from_slice(b".\r\n");
    body
}

async fn load(args: &Args) -> Result<(), Error> {
    let received = match args.sink {
        Some(addr) => Some(sink(addr).await?),
        None => None,
    };
    let body = Arc::new(message(args.size));
    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.sessions {
        let (args, body, next, failed) = (args.clone(), body.clone(), next.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut client = match Client::connect(args.target).await {
                Ok(client) => client,
                Err(err) => {
                    eprintln!("session stopped: connect: {err}");
                    return latencies;
                }
            };
            while next.fetch_add(1, Ordering::Relaxed) < args.messages {
                let sent = Instant::now();
                if let Err(err) = client.send_message(&args, &body).await {
                    failed.fetch_add(1, Ordering::Relaxed);
                    eprintln!("session stopped: {err}");
                    return latencies;
                }
                latencies.push(sent.elapsed());
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
    if let Some(received) = received {
        let deadline = Instant::now() + Duration::from_secs(300);
        while received.load(Ordering::Relaxed) < latencies.len() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let end_to_end = started.elapsed();
        let count = received.load(Ordering::Relaxed);
        println!(
            "received at sink {count} in {:.2} s",
            end_to_end.as_secs_f64()
        );
        println!(
            "end-to-end rate  {:.0} msg/s",
            count as f64 / end_to_end.as_secs_f64()
        );
    }
    report_rss(&args.pid, "VmHWM", "peak RSS");
    Ok(())
}

/// An SMTP server that accepts everything and counts complete messages.
async fn sink(addr: SocketAddr) -> Result<Arc<AtomicUsize>, Error> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let received = Arc::new(AtomicUsize::new(0));
    let counter = received.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let _ = sink_session(stream, counter).await;
            });
        }
    });
    Ok(received)
}

async fn sink_session(mut stream: TcpStream, received: Arc<AtomicUsize>) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    stream.write_all(b"220 sink ESMTP\r\n").await?;
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    let mut in_data = false;
    loop {
        let mut out = Vec::new();
        loop {
            if in_data {
                match find(&buf, b"\r\n.\r\n") {
                    Some(end) => {
                        buf.drain(..end + 5);
                        in_data = false;
                        received.fetch_add(1, Ordering::Relaxed);
                        out.extend_from_slice(b"250 2.0.0 ok\r\n");
                    }
                    None => break,
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

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn report_rss(pids: &[u32], field: &str, label: &str) {
    for pid in pids {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:")))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .unwrap_or(0);
        println!(
            "{label:<16} {} (pid {pid}): {:.1} MiB",
            comm.trim(),
            kib as f64 / 1024.0
        );
    }
}
