//! One delivery attempt: connect to a next hop and drive the sans-IO client over TCP, then TLS.

use std::sync::Arc;
use std::time::Duration;

use postern_config::{DeliveryTimeouts, OutboundTls};
use postern_smtp::client::{
    Client, ClientConfig, ClientEvent, Outcome, Outgoing, Stage, StartTls, Wait, dot_stuff,
};
use postern_smtp::{Reply, Status};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// Where an attempt goes.
#[derive(Debug, Clone)]
pub struct Target {
    /// Host name (or address) for logs, the DSN's Remote-MTA and TLS SNI.
    pub host: String,
    /// `host:port` to connect to.
    pub address: String,
}

impl Target {
    /// The target named by `host:port` (a route or a smarthost).
    pub fn from_host_port(host_port: &str) -> Target {
        let host = host_port.rsplit_once(':').map_or(host_port, |(h, _)| h);
        Target {
            host: host.trim_matches(['[', ']']).to_string(),
            address: host_port.to_string(),
        }
    }
}

/// How an attempt talks.
#[derive(Debug, Clone)]
pub struct Settings {
    pub helo_name: String,
    pub tls: OutboundTls,
    /// Client config for `tls: verify`: trusted roots, host name checked.
    pub verified: Arc<rustls::ClientConfig>,
    /// AUTH PLAIN credentials (smarthost).
    pub auth: Option<(String, String)>,
    pub timeouts: DeliveryTimeouts,
}

/// Why an attempt ended before every recipient had a reply. The reply is the server's, or a
/// 4xx that Postern made up for a network failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptFailure {
    pub reply: Reply,
    /// The failure came before the server accepted the session (connection, greeting, EHLO,
    /// STARTTLS): the next MX host may do better.
    pub next_host: bool,
}

enum End<S> {
    Finished(Outcome),
    StartTls(S),
}

/// Delivers `body` to the recipients of `outgoing` at `target`, returning each one's reply.
pub async fn deliver(
    target: &Target,
    settings: &Settings,
    outgoing: &Outgoing,
    body: &[u8],
) -> Result<Outcome, AttemptFailure> {
    let starttls = match settings.tls {
        OutboundTls::Opportunistic => StartTls::Opportunistic,
        OutboundTls::Required | OutboundTls::Verify => StartTls::Required,
        OutboundTls::None => StartTls::Never,
    };
    match attempt(target, settings, starttls, outgoing, body).await {
        Err(AttemptError::Handshake(err)) if settings.tls == OutboundTls::Opportunistic => {
            tracing::info!(host = %target.host, %err, "TLS handshake failed; retrying in plaintext");
            attempt(target, settings, StartTls::Never, outgoing, body)
                .await
                .map_err(AttemptError::into_failure)
        }
        other => other.map_err(AttemptError::into_failure),
    }
}

/// An attempt's failure, keeping TLS handshake failures apart for the plaintext retry.
enum AttemptError {
    Handshake(std::io::Error),
    Other(AttemptFailure),
}
use AttemptError::{Handshake, Other};

impl AttemptError {
    fn into_failure(self) -> AttemptFailure {
        match self {
            Handshake(err) => AttemptFailure {
                next_host: true,
                ..temporary(4, 7, 5, format!("TLS handshake failed: {err}"))
            },
            Other(failure) => failure,
        }
    }
}

async fn attempt(
    target: &Target,
    settings: &Settings,
    starttls: StartTls,
    outgoing: &Outgoing,
    body: &[u8],
) -> Result<Outcome, AttemptError> {
    let t = &settings.timeouts;
    let tcp = match timeout(t.connect.get(), TcpStream::connect(&target.address)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(err)) => {
            return Err(Other(unreachable(format!(
                "connection to {} failed: {err}",
                target.address
            ))));
        }
        Err(_) => {
            return Err(Other(unreachable(format!(
                "connection to {} timed out",
                target.address
            ))));
        }
    };
    let _ = tcp.set_nodelay(true);
    let mut client = Client::new(ClientConfig {
        helo_name: settings.helo_name.clone(),
        starttls,
        auth: settings.auth.clone(),
    });
    let tcp = match drive(&mut client, tcp, t, outgoing, body)
        .await
        .map_err(Other)?
    {
        End::Finished(outcome) => return Ok(outcome),
        End::StartTls(tcp) => tcp,
    };
    let name = ServerName::try_from(target.host.clone())
        .unwrap_or(ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
    let config = match settings.tls {
        OutboundTls::Verify => settings.verified.clone(),
        _ => super::tls::any_certificate(),
    };
    let connector = tokio_rustls::TlsConnector::from(config);
    let tls = match timeout(t.command.get(), connector.connect(name, tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(err)) => return Err(Handshake(err)),
        Err(_) => {
            return Err(Handshake(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "timed out",
            )));
        }
    };
    client.tls_started();
    match drive(&mut client, tls, t, outgoing, body)
        .await
        .map_err(Other)?
    {
        End::Finished(outcome) => Ok(outcome),
        End::StartTls(_) => Err(Other(temporary(
            4,
            5,
            0,
            "server offered STARTTLS twice".into(),
        ))),
    }
}

async fn drive<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut Client,
    mut stream: S,
    t: &DeliveryTimeouts,
    outgoing: &Outgoing,
    body: &[u8],
) -> Result<End<S>, AttemptFailure> {
    let mut buf = vec![0u8; 8 * 1024];
    let mut sent = false;
    let mut outcome = None;
    let lost = |client: &mut Client| {
        let failure = client.connection_lost();
        AttemptFailure {
            next_host: before_session(failure.stage),
            reply: failure.reply,
        }
    };
    loop {
        match client.next_event() {
            ClientEvent::NeedInput => {
                write(&mut stream, &client.take_output(), t.command.get())
                    .await
                    .map_err(|_| lost(client))?;
                let wait = match client.waiting_for() {
                    Wait::Greeting => t.greeting.get(),
                    Wait::Command => t.command.get(),
                    Wait::DataInit => t.data_init.get(),
                    Wait::DataEnd => t.data_end.get(),
                };
                let n = match timeout(wait, stream.read(&mut buf)).await {
                    Ok(Ok(n)) => n,
                    Ok(Err(_)) => 0,
                    Err(_) if outcome.is_some() => {
                        return Ok(End::Finished(outcome.unwrap_or_else(empty)));
                    }
                    Err(_) => {
                        let mut failure =
                            temporary(4, 4, 2, "timed out waiting for the server".into());
                        failure.next_host = client.waiting_for() == Wait::Greeting;
                        return Err(failure);
                    }
                };
                if n == 0 {
                    return match outcome {
                        Some(outcome) => Ok(End::Finished(outcome)),
                        None => Err(lost(client)),
                    };
                }
                client.receive(&buf[..n]);
            }
            ClientEvent::StartTls => {
                write(&mut stream, &client.take_output(), t.command.get())
                    .await
                    .map_err(|_| lost(client))?;
                return Ok(End::StartTls(stream));
            }
            ClientEvent::Ready if !sent => {
                sent = true;
                client.send(outgoing.clone());
            }
            ClientEvent::Ready => client.quit(),
            ClientEvent::SendBody => {
                write(&mut stream, &client.take_output(), t.command.get())
                    .await
                    .map_err(|_| lost(client))?;
                for block in dot_stuff(body).chunks(64 * 1024) {
                    write(&mut stream, block, t.data_block.get())
                        .await
                        .map_err(|_| lost(client))?;
                }
                client.body_sent();
            }
            ClientEvent::Done(done) => outcome = Some(done),
            ClientEvent::Failed(failure) => {
                return match outcome {
                    Some(outcome) => Ok(End::Finished(outcome)),
                    // A refused login is a configuration problem to fix, never a bounce.
                    None if failure.stage == Stage::Auth => Err(temporary(
                        4,
                        7,
                        0,
                        format!(
                            "authentication refused: {} {}",
                            failure.reply.code,
                            failure.reply.text()
                        ),
                    )),
                    None => Err(AttemptFailure {
                        next_host: before_session(failure.stage),
                        reply: failure.reply,
                    }),
                };
            }
            ClientEvent::Closed => {
                let _ = write(&mut stream, &client.take_output(), t.command.get()).await;
                return Ok(End::Finished(outcome.unwrap_or_else(empty)));
            }
        }
    }
}

fn empty() -> Outcome {
    Outcome {
        recipients: Vec::new(),
    }
}

async fn write<S: AsyncWrite + Unpin>(
    stream: &mut S,
    bytes: &[u8],
    limit: Duration,
) -> std::io::Result<()> {
    if bytes.is_empty() {
        return Ok(());
    }
    match timeout(limit, async {
        stream.write_all(bytes).await?;
        stream.flush().await
    })
    .await
    {
        Ok(result) => result,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "write timed out",
        )),
    }
}

fn temporary(class: u8, subject: u16, detail: u16, text: String) -> AttemptFailure {
    AttemptFailure {
        reply: Reply::new(451, Status(class, subject, detail), text),
        next_host: false,
    }
}

fn unreachable(text: String) -> AttemptFailure {
    AttemptFailure {
        next_host: true,
        ..temporary(4, 4, 1, text)
    }
}

/// Failures before MAIL: the host did not take the session, so another MX may.
fn before_session(stage: Stage) -> bool {
    matches!(stage, Stage::Greeting | Stage::Ehlo | Stage::StartTls)
}
