//! One HTTP/1.1 request over a stream that is already open (TCP, or TLS on it), with a limit
//! on the answer's body: what MTA-STS policy fetches and webhook POSTs share.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// An answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// Why a request got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExchangeError {
    #[error("{0}")]
    Http(String),
    #[error("the answer is larger than {0} bytes")]
    TooLarge(usize),
}

/// Sends `request` on `stream` and reads the answer, its body only when the status is 200–299
/// and at most `max_body` bytes.
pub async fn exchange<S>(
    stream: S,
    request: http::Request<Full<Bytes>>,
    max_body: usize,
) -> Result<Answer, ExchangeError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let http = |err: hyper::Error| ExchangeError::Http(err.to_string());
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http)?;
    let connection = tokio::spawn(connection);
    let answer = async {
        let response = sender.send_request(request).await.map_err(http)?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        if !(200..300).contains(&status) {
            return Ok(Answer {
                status,
                headers,
                body: Bytes::new(),
            });
        }
        match Limited::new(response.into_body(), max_body).collect().await {
            Ok(collected) => Ok(Answer {
                status,
                headers,
                body: collected.to_bytes(),
            }),
            Err(err) if err.is::<http_body_util::LengthLimitError>() => {
                Err(ExchangeError::TooLarge(max_body))
            }
            Err(err) => Err(ExchangeError::Http(err.to_string())),
        }
    }
    .await;
    connection.abort();
    answer
}

/// TLS on `tcp` with a certificate valid for `host` from the roots of `config`.
pub async fn tls(
    tcp: TcpStream,
    host: &str,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let name = ServerName::try_from(host.to_string())
        .map_err(|err| std::io::Error::new(std::io::ErrorKind::InvalidInput, err))?;
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}
