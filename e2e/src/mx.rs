//! A scripted SMTP server standing in for a recipient's MX.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// The reply to a RCPT, chosen per recipient address.
pub type RcptScript = Arc<dyn Fn(&str) -> String + Send + Sync>;

/// An MX script with one of each outcome: `bad@...` is refused for good (`550 5.1.1`),
/// `later@...` is deferred on its first RCPT (`452 4.2.2`) and taken on the next, everyone
/// else is taken.
pub fn mixed_outcomes() -> RcptScript {
    let later = std::sync::atomic::AtomicUsize::new(0);
    Arc::new(move |rcpt| match rcpt {
        r if r.starts_with("bad@") => "550 5.1.1 no such user".into(),
        r if r.starts_with("later@")
            && later.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 =>
        {
            "452 4.2.2 mailbox full".into()
        }
        _ => "250 2.1.5 ok".into(),
    })
}

/// One message as the MX received it.
#[derive(Debug, Clone)]
pub struct Delivered {
    pub from: String,
    pub recipients: Vec<String>,
    /// The MAIL command and every RCPT command of the transaction, as sent (without CRLF).
    pub commands: Vec<String>,
    /// The DATA bytes exactly as they came over the wire, up to and including `<CRLF>.<CRLF>`.
    pub wire: Vec<u8>,
    /// When the end of data arrived.
    pub at: Instant,
}

impl Delivered {
    /// The message with dot-stuffing undone and the terminator removed.
    pub fn text(&self) -> String {
        let body = self.wire.strip_suffix(b".\r\n").unwrap_or(&self.wire);
        let text = String::from_utf8_lossy(body).replace("\r\n..", "\r\n.");
        text.strip_prefix("..")
            .map(|t| format!(".{t}"))
            .unwrap_or(text)
    }
}

/// A running scripted MX.
#[derive(Clone)]
pub struct MockMx {
    pub addr: SocketAddr,
    delivered: Arc<Mutex<Vec<Delivered>>>,
    transactions: Arc<Mutex<usize>>,
    data_delay: Arc<Mutex<Duration>>,
    /// Delays for the next transactions' end of data, used before `data_delay`.
    next_delays: Arc<Mutex<std::collections::VecDeque<Duration>>>,
    smtputf8: Arc<Mutex<bool>>,
    /// Sessions open now, the most ever open at once, and all sessions so far.
    sessions: Arc<Mutex<(usize, usize, usize)>>,
    greeting: Arc<Mutex<String>>,
    /// Offer STARTTLS, then answer the handshake with garbage.
    broken_starttls: Arc<Mutex<bool>>,
    behaviour: Arc<Mutex<Behaviour>>,
    /// QUIT commands received, and sessions whose client closed its end after the MX closed
    /// an idle session.
    quits: Arc<Mutex<(usize, usize)>>,
}

/// Ways a scripted MX departs from a plain, well-behaved server.
#[derive(Debug, Clone, Default)]
pub struct Behaviour {
    /// EHLO does not offer 8BITMIME.
    pub no_8bitmime: bool,
    /// EHLO offers `SIZE n`.
    pub size: Option<u64>,
    /// DATA gets `250` instead of `354`, and no body is read: a broken server.
    pub data_gets_250: bool,
    /// The greeting goes out one byte at a time, this far apart.
    pub trickle_greeting: Option<Duration>,
    /// A session idle this long gets `421` and the MX closes its end.
    pub idle_close: Option<Duration>,
    /// EHLO offers DSN (RFC 3461).
    pub dsn: bool,
}

impl std::fmt::Debug for MockMx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockMx")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl MockMx {
    /// An MX that accepts every recipient.
    pub async fn accepting() -> MockMx {
        MockMx::start(Arc::new(|_| "250 2.1.5 ok".to_string())).await
    }

    /// An MX that accepts every recipient and departs from the norm as `behaviour` says.
    pub async fn behaving(behaviour: Behaviour) -> MockMx {
        let mx = MockMx::accepting().await;
        mx.set_behaviour(behaviour);
        mx
    }

    /// An MX on a free port whose RCPT replies come from `script`.
    pub async fn start(script: RcptScript) -> MockMx {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the MX");
        MockMx::serve(listener, script)
    }

    /// An MX on a reserved port (to come up after a delivery attempt found it closed).
    pub fn start_on(port: crate::ClosedPort, script: RcptScript) -> MockMx {
        MockMx::serve(port.listen(), script)
    }

    /// An MX on a given loopback address, such as 127.0.0.2:2525 for a second MX host.
    pub async fn start_at(addr: SocketAddr, script: RcptScript) -> MockMx {
        let listener = TcpListener::bind(addr).await.expect("binding the MX");
        MockMx::serve(listener, script)
    }

    fn serve(listener: TcpListener, script: RcptScript) -> MockMx {
        let mx = MockMx {
            addr: listener.local_addr().expect("MX address"),
            delivered: Arc::default(),
            transactions: Arc::default(),
            data_delay: Arc::default(),
            next_delays: Arc::default(),
            smtputf8: Arc::new(Mutex::new(true)),
            sessions: Arc::default(),
            greeting: Arc::new(Mutex::new("220 mx.test ESMTP mock".into())),
            broken_starttls: Arc::default(),
            behaviour: Arc::default(),
            quits: Arc::default(),
        };
        let server = mx.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (server, script) = (server.clone(), script.clone());
                tokio::spawn(async move {
                    server.count_session(1);
                    let _ = server.session(stream, script).await;
                    server.count_session(-1);
                });
            }
        });
        mx
    }

    /// `host:port` for a route.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Waits this long before answering the end of data, like a slow server.
    pub fn set_data_delay(&self, delay: Duration) {
        *self.data_delay.lock().expect("lock") = delay;
    }

    /// Waits `delay` before answering the end of data of the next message only.
    pub fn delay_next_data(&self, delay: Duration) {
        self.next_delays.lock().expect("lock").push_back(delay);
    }

    /// Whether EHLO offers SMTPUTF8 (it does unless told otherwise).
    pub fn set_smtputf8(&self, offered: bool) {
        *self.smtputf8.lock().expect("lock") = offered;
    }

    fn count_session(&self, change: isize) {
        let mut sessions = self.sessions.lock().expect("lock");
        sessions.0 = sessions.0.saturating_add_signed(change);
        sessions.1 = sessions.1.max(sessions.0);
        if change > 0 {
            sessions.2 += 1;
        }
    }

    /// The most sessions that were ever open at the same time.
    pub fn max_sessions(&self) -> usize {
        self.sessions.lock().expect("lock").1
    }

    /// Greets with `line` (such as `421 4.3.2 busy`) instead of a 220.
    pub fn set_greeting(&self, line: &str) {
        *self.greeting.lock().expect("lock") = line.to_string();
    }

    /// Offers STARTTLS but breaks the handshake, like a server with a broken TLS set-up.
    pub fn set_broken_starttls(&self, broken: bool) {
        *self.broken_starttls.lock().expect("lock") = broken;
    }

    /// Changes how the MX behaves from the next session on.
    pub fn set_behaviour(&self, behaviour: Behaviour) {
        *self.behaviour.lock().expect("lock") = behaviour;
    }

    /// QUIT commands received so far.
    pub fn quits(&self) -> usize {
        self.quits.lock().expect("lock").0
    }

    /// Idle sessions the MX closed whose client then closed its end too.
    pub fn closed_after_idle(&self) -> usize {
        self.quits.lock().expect("lock").1
    }

    /// Sessions open now.
    pub fn open_sessions(&self) -> usize {
        self.sessions.lock().expect("lock").0
    }

    /// Sessions opened so far.
    pub fn total_sessions(&self) -> usize {
        self.sessions.lock().expect("lock").2
    }

    /// Messages received so far.
    pub fn delivered(&self) -> Vec<Delivered> {
        self.delivered.lock().expect("lock").clone()
    }

    /// MAIL commands received so far, accepted or not.
    pub fn transactions(&self) -> usize {
        *self.transactions.lock().expect("lock")
    }

    /// Waits until at least `count` messages arrived.
    pub async fn wait_for(&self, count: usize, limit: Duration) -> Vec<Delivered> {
        let start = Instant::now();
        loop {
            let delivered = self.delivered();
            if delivered.len() >= count {
                return delivered;
            }
            assert!(
                start.elapsed() < limit,
                "{} of {count} messages reached the MX within {limit:?}",
                delivered.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn session(&self, stream: TcpStream, script: RcptScript) -> std::io::Result<()> {
        let (read, mut write) = stream.into_split();
        let mut reader = BufReader::new(read);
        let greeting = self.greeting.lock().expect("lock").clone();
        let behaviour = self.behaviour.lock().expect("lock").clone();
        match behaviour.trickle_greeting {
            Some(every) => {
                for byte in format!("{greeting}\r\n").bytes() {
                    write.write_all(&[byte]).await?;
                    tokio::time::sleep(every).await;
                }
            }
            None => {
                write
                    .write_all(format!("{greeting}\r\n").as_bytes())
                    .await?;
            }
        }
        if !greeting.starts_with("220") {
            return Ok(());
        }
        let broken_starttls = *self.broken_starttls.lock().expect("lock");
        let (mut from, mut recipients, mut commands) = (String::new(), Vec::new(), Vec::new());
        loop {
            let mut line = String::new();
            let read = match behaviour.idle_close {
                Some(idle) => match tokio::time::timeout(idle, reader.read_line(&mut line)).await {
                    Ok(read) => read?,
                    Err(_) => {
                        write.write_all(b"421 4.4.2 idle too long\r\n").await?;
                        write.shutdown().await?;
                        // The client should close its end now; see whether it does.
                        let mut rest = Vec::new();
                        if let Ok(Ok(_)) = tokio::time::timeout(
                            Duration::from_secs(5),
                            reader.read_to_end(&mut rest),
                        )
                        .await
                        {
                            self.quits.lock().expect("lock").1 += 1;
                        }
                        return Ok(());
                    }
                },
                None => reader.read_line(&mut line).await?,
            };
            if read == 0 {
                return Ok(());
            }
            let upper = line.to_ascii_uppercase();
            let reply = if upper.starts_with("EHLO") {
                let utf8 = if *self.smtputf8.lock().expect("lock") {
                    "\r\n250-SMTPUTF8"
                } else {
                    ""
                };
                let starttls = if broken_starttls {
                    "\r\n250-STARTTLS"
                } else {
                    ""
                };
                let size = behaviour
                    .size
                    .map(|n| format!("\r\n250-SIZE {n}"))
                    .unwrap_or_default();
                let dsn = if behaviour.dsn { "\r\n250-DSN" } else { "" };
                let last = if behaviour.no_8bitmime {
                    "250 ENHANCEDSTATUSCODES"
                } else {
                    "250 8BITMIME"
                };
                format!("250-mx.test\r\n250-PIPELINING{utf8}{starttls}{size}{dsn}\r\n{last}")
            } else if upper.starts_with("HELO") || upper.starts_with("NOOP") {
                "250 ok".to_string()
            } else if upper.starts_with("MAIL FROM:") {
                *self.transactions.lock().expect("lock") += 1;
                from = path(&line);
                recipients.clear();
                commands = vec![line.trim_end().to_string()];
                "250 2.1.0 ok".to_string()
            } else if upper.starts_with("RCPT TO:") {
                let rcpt = path(&line);
                commands.push(line.trim_end().to_string());
                let reply = script(&rcpt);
                if reply.starts_with('2') {
                    recipients.push(rcpt);
                }
                reply
            } else if upper.starts_with("DATA") && behaviour.data_gets_250 {
                "250 2.0.0 ok".to_string()
            } else if upper.starts_with("DATA") {
                if recipients.is_empty() {
                    "554 5.5.1 no valid recipients".to_string()
                } else {
                    write.write_all(b"354 go ahead\r\n").await?;
                    let wire = read_data(&mut reader).await?;
                    let delivered = Delivered {
                        from: from.clone(),
                        recipients: std::mem::take(&mut recipients),
                        commands: std::mem::take(&mut commands),
                        wire,
                        at: Instant::now(),
                    };
                    self.delivered.lock().expect("lock").push(delivered);
                    let next = self.next_delays.lock().expect("lock").pop_front();
                    let delay = next.unwrap_or(*self.data_delay.lock().expect("lock"));
                    tokio::time::sleep(delay).await;
                    "250 2.0.0 accepted".to_string()
                }
            } else if upper.starts_with("STARTTLS") && broken_starttls {
                write
                    .write_all(b"220 go ahead\r\nthis is not a TLS record\r\n")
                    .await?;
                return Ok(());
            } else if upper.starts_with("RSET") {
                recipients.clear();
                "250 ok".to_string()
            } else if upper.starts_with("QUIT") {
                self.quits.lock().expect("lock").0 += 1;
                write.write_all(b"221 bye\r\n").await?;
                return Ok(());
            } else {
                "500 5.5.1 unrecognized".to_string()
            };
            write.write_all(format!("{reply}\r\n").as_bytes()).await?;
        }
    }
}

fn path(line: &str) -> String {
    let start = line.find('<').map_or(0, |i| i + 1);
    let end = line[start..].find('>').map_or(line.len(), |i| start + i);
    line[start..end].to_string()
}

async fn read_data<R: AsyncReadExt + Unpin>(reader: &mut R) -> std::io::Result<Vec<u8>> {
    let mut wire = Vec::new();
    let mut byte = [0u8; 1];
    while !(wire == b".\r\n" || wire.ends_with(b"\r\n.\r\n")) {
        if reader.read(&mut byte).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        wire.push(byte[0]);
    }
    Ok(wire)
}
