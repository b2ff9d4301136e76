//! An SMTP client for dialogue tests that read like transcripts:
//!
//! ```ignore
//! let mut s = Smtp::connect(relay.smtp()).await;
//! s.reply().await.is(220, "");
//! s.cmd("EHLO client.test").await.is(250, "");
//! s.cmd("RCPT TO:<a@b.example>").await.is(503, "5.5.1");
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use postern_smtp::{Reply, ReplyParser};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

const REPLY_WAIT: Duration = Duration::from_secs(15);

enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    Gone,
}

/// One client connection.
pub struct Smtp {
    stream: Stream,
    parser: ReplyParser,
}

impl std::fmt::Debug for Smtp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Smtp").finish_non_exhaustive()
    }
}

impl Smtp {
    /// Connects over plain TCP.
    pub async fn connect(addr: SocketAddr) -> Smtp {
        let stream = TcpStream::connect(addr)
            .await
            .expect("connecting to the relay");
        Smtp {
            stream: Stream::Plain(stream),
            parser: ReplyParser::default(),
        }
    }

    /// Connects and reads the greeting, which must be 220.
    pub async fn greeted(addr: SocketAddr) -> Smtp {
        let mut s = Smtp::connect(addr).await;
        s.reply().await.is(220, "");
        s
    }

    /// Connects with TLS from the first byte (implicit TLS).
    pub async fn connect_tls(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> Smtp {
        Smtp::connect_tls_after(addr, &[], config).await
    }

    /// Connects, sends `prefix` (a PROXY protocol header), then starts TLS (implicit TLS
    /// behind a load balancer).
    pub async fn connect_tls_after(
        addr: SocketAddr,
        prefix: &[u8],
        config: Arc<rustls::ClientConfig>,
    ) -> Smtp {
        let mut tcp = TcpStream::connect(addr)
            .await
            .expect("connecting to the relay");
        if !prefix.is_empty() {
            tcp.write_all(prefix).await.expect("writing the prefix");
        }
        let tls = TlsConnector::from(config)
            .connect(crate::TestPki::server_name(), tcp)
            .await
            .expect("TLS handshake");
        Smtp {
            stream: Stream::Tls(Box::new(tls)),
            parser: ReplyParser::default(),
        }
    }

    /// Upgrades the connection after the server's 220 to STARTTLS.
    pub async fn upgrade(&mut self, config: Arc<rustls::ClientConfig>) {
        let Stream::Plain(tcp) = std::mem::replace(&mut self.stream, Stream::Gone) else {
            panic!("upgrade needs a plaintext connection");
        };
        let tls = TlsConnector::from(config)
            .connect(crate::TestPki::server_name(), tcp)
            .await
            .expect("TLS handshake after STARTTLS");
        self.parser = ReplyParser::default();
        self.stream = Stream::Tls(Box::new(tls));
    }

    /// The negotiated TLS version, such as `TLSv1_3`.
    pub fn tls_version(&self) -> Option<String> {
        match &self.stream {
            Stream::Tls(tls) => tls.get_ref().1.protocol_version().map(|v| format!("{v:?}")),
            _ => None,
        }
    }

    /// Sends raw bytes.
    pub async fn send(&mut self, bytes: &[u8]) {
        let result = match &mut self.stream {
            Stream::Plain(s) => s.write_all(bytes).await,
            Stream::Tls(s) => {
                async {
                    s.write_all(bytes).await?;
                    s.flush().await
                }
                .await
            }
            Stream::Gone => panic!("connection gone"),
        };
        result.expect("writing to the relay");
    }

    /// Sends one command line (CRLF added) and reads its reply.
    pub async fn cmd(&mut self, line: &str) -> Reply {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.reply().await
    }

    /// Reads the next reply; panics if none arrives in time or the connection closes.
    pub async fn reply(&mut self) -> Reply {
        match self.try_reply().await {
            Some(reply) => reply,
            None => panic!("connection closed while waiting for a reply"),
        }
    }

    /// Reads the next reply, `None` when the server closed the connection.
    pub async fn try_reply(&mut self) -> Option<Reply> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if let Some(reply) = self.parser.next_reply().expect("well-formed reply") {
                return Some(reply);
            }
            let read = match &mut self.stream {
                Stream::Plain(s) => tokio::time::timeout(REPLY_WAIT, s.read(&mut buf)).await,
                Stream::Tls(s) => tokio::time::timeout(REPLY_WAIT, s.read(&mut buf)).await,
                Stream::Gone => return None,
            };
            match read.expect("a reply within 15 seconds") {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.parser.feed(&buf[..n]),
            }
        }
    }

    /// True when the server closes the connection (after any replies still pending).
    pub async fn closed(&mut self) -> bool {
        while self.try_reply().await.is_some() {}
        true
    }

    /// Submits one message on a fresh session (EHLO, the transaction, QUIT), expecting it to
    /// be queued; returns its queue id.
    pub async fn submit(addr: SocketAddr, from: &str, to: &[&str], body: &[u8]) -> String {
        let mut s = Smtp::greeted(addr).await;
        s.ehlo("client.test").await;
        let id = s
            .send_mail(from, to, body)
            .await
            .is(250, "2.0.0")
            .queue_id();
        s.cmd("QUIT").await.is(221, "2.0.0");
        id
    }

    /// EHLO, expecting 250; returns the extension lines.
    pub async fn ehlo(&mut self, name: &str) -> Vec<String> {
        let reply = self.cmd(&format!("EHLO {name}")).await.is(250, "");
        reply.lines[1..].to_vec()
    }

    /// A whole transaction with DATA; returns the reply to the end of data.
    /// `body` is sent as is, followed by `.<CRLF>`; it must end with CRLF.
    pub async fn send_mail(&mut self, from: &str, to: &[&str], body: &[u8]) -> Reply {
        self.cmd(&format!("MAIL FROM:<{from}>"))
            .await
            .is(250, "2.1.0");
        for rcpt in to {
            self.cmd(&format!("RCPT TO:<{rcpt}>"))
                .await
                .is(250, "2.1.5");
        }
        self.cmd("DATA").await.is(354, "");
        self.send(body).await;
        self.send(b".\r\n").await;
        self.reply().await
    }
}

/// Assertions on replies.
pub trait ReplyExt: Sized {
    /// Asserts the code and, unless `status` is empty, the enhanced status code.
    fn is(self, code: u16, status: &str) -> Self;
    /// The queue id from a `250 2.0.0 Ok: queued as <id>` reply.
    fn queue_id(&self) -> String;
}

impl ReplyExt for Reply {
    fn is(self, code: u16, status: &str) -> Self {
        let got_status = self.status.map(|s| s.to_string()).unwrap_or_default();
        assert!(
            self.code == code && (status.is_empty() || got_status == status),
            "expected {code} {status}, got {} {got_status} {:?}",
            self.code,
            self.lines
        );
        self
    }

    fn queue_id(&self) -> String {
        self.text()
            .rsplit(' ')
            .next()
            .unwrap_or_default()
            .to_string()
    }
}
