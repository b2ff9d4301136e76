//! Reading the PROXY protocol header on listeners behind a load balancer.

use std::net::SocketAddr;
use std::time::Duration;

use ipnet::IpNet;
use postern_smtp::proxy::{self, MIN_LEN, Parse, ProxyError, ProxyHeader};
use tokio::io::{AsyncRead, AsyncReadExt};

/// How long a load balancer may take to send the header.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a connection on a PROXY protocol listener was closed before its greeting.
#[derive(Debug, thiserror::Error)]
pub enum ProxyReadError {
    #[error("PROXY header from {0}, which is not in ingress.trustedProxies")]
    Untrusted(SocketAddr),
    #[error("{0}")]
    Invalid(#[from] ProxyError),
    #[error("no PROXY header within {0:?}")]
    Timeout(Duration),
    /// Closed before sending anything: a load balancer's TCP health check.
    #[error("closed before sending anything")]
    Closed,
    #[error("reading the PROXY header: {0}")]
    Io(#[from] std::io::Error),
}

impl ProxyReadError {
    /// Label for the refused-connections metric; none for health checks.
    pub fn as_label(&self) -> Option<&'static str> {
        match self {
            ProxyReadError::Untrusted(_) => Some("proxy_untrusted"),
            ProxyReadError::Invalid(_) | ProxyReadError::Io(_) => Some("proxy_header"),
            ProxyReadError::Timeout(_) => Some("proxy_timeout"),
            ProxyReadError::Closed => None,
        }
    }
}

/// Reads exactly the header from `stream` (nothing that follows it) and returns the client's
/// address: the one it names, or `peer` for a LOCAL header.
pub async fn client_address<S: AsyncRead + Unpin>(
    stream: &mut S,
    peer: SocketAddr,
    trusted: &[IpNet],
) -> Result<SocketAddr, ProxyReadError> {
    let ip = peer.ip().to_canonical();
    if !trusted.is_empty() && !trusted.iter().any(|net| net.contains(&ip)) {
        return Err(ProxyReadError::Untrusted(peer));
    }
    let header = tokio::time::timeout(HEADER_TIMEOUT, read_header(stream))
        .await
        .map_err(|_| ProxyReadError::Timeout(HEADER_TIMEOUT))??;
    Ok(match header {
        ProxyHeader::Proxied { source, .. } => source,
        ProxyHeader::Local => peer,
    })
}

async fn read_header<S: AsyncRead + Unpin>(stream: &mut S) -> Result<ProxyHeader, ProxyReadError> {
    let mut buf = vec![0u8; MIN_LEN];
    let first = stream.read(&mut buf).await?;
    if first == 0 {
        return Err(ProxyReadError::Closed);
    }
    stream.read_exact(&mut buf[first..]).await?;
    loop {
        match proxy::parse(&buf)? {
            Parse::Done { header, .. } => return Ok(header),
            Parse::NeedMore(more) => {
                let have = buf.len();
                buf.resize(have + more, 0);
                stream.read_exact(&mut buf[have..]).await?;
            }
        }
    }
}
