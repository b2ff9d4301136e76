//! Fetching a policy file: `GET https://mta-sts.<domain>/.well-known/mta-sts.txt` over HTTPS
//! with a certificate valid for that name, no redirects, no HTTP caching, `text/plain`, at most
//! 64 KiB and within a deadline (RFC 8461 §3.3).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use postern_dns::{Dns, LookupFailure};
use tokio::net::TcpStream;

use crate::http_client::{self, ExchangeError};

/// The largest policy file taken (RFC 8461 §3.3 suggests 64 KB).
pub const MAX_POLICY_BYTES: usize = 64 * 1024;

/// Why a policy could not be fetched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("{host}: address lookup failed: {message}")]
    Dns { host: String, message: String },
    #[error("{host}: no connection: {message}")]
    Connect { host: String, message: String },
    #[error("{host}: TLS handshake failed: {message}")]
    Tls { host: String, message: String },
    #[error("{host}: HTTP failed: {message}")]
    Http { host: String, message: String },
    #[error("{host}: answered HTTP {status}{}", if (300..400).contains(status) { " (redirects are not followed)" } else { "" })]
    Status { host: String, status: u16 },
    #[error("{host}: served {content_type:?}, not text/plain")]
    ContentType { host: String, content_type: String },
    #[error("{host}: the policy is larger than {MAX_POLICY_BYTES} bytes")]
    TooLarge { host: String },
    #[error("{host}: the policy is not UTF-8")]
    NotText { host: String },
    #[error("{host}: no policy within {seconds} s")]
    Timeout { host: String, seconds: u64 },
}

impl FetchError {
    /// A bounded label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            FetchError::Dns { .. } => "dns",
            FetchError::Connect { .. } => "connect",
            FetchError::Tls { .. } => "tls",
            FetchError::Http { .. } => "http",
            FetchError::Status { .. } => "status",
            FetchError::ContentType { .. } => "content_type",
            FetchError::TooLarge { .. } => "too_large",
            FetchError::NotText { .. } => "not_text",
            FetchError::Timeout { .. } => "timeout",
        }
    }
}

/// How policies are fetched.
#[derive(Debug, Clone)]
pub struct Fetcher {
    pub dns: Dns,
    /// Trusted roots: the system's and `delivery.caFile`.
    pub tls: Arc<rustls::ClientConfig>,
    /// 443, but for tests.
    pub port: u16,
    pub timeout: Duration,
}

impl Fetcher {
    /// The policy file of `domain`.
    pub async fn fetch(&self, domain: &str) -> Result<String, FetchError> {
        let host = format!("mta-sts.{}", domain.trim_end_matches('.'));
        match tokio::time::timeout(self.timeout, self.get(&host)).await {
            Ok(result) => result,
            Err(_) => Err(FetchError::Timeout {
                host,
                seconds: self.timeout.as_secs(),
            }),
        }
    }

    async fn get(&self, host: &str) -> Result<String, FetchError> {
        let with = |message: String| (host.to_string(), message);
        let addresses = self.dns.addresses(host).await.map_err(|failure| {
            let (host, message) = with(match failure {
                LookupFailure::NxDomain => "does not exist".into(),
                LookupFailure::Temporary(err) => err,
            });
            FetchError::Dns { host, message }
        })?;
        let mut tcp = None;
        let mut last = "no address".to_string();
        for ip in addresses {
            match TcpStream::connect(SocketAddr::new(ip, self.port)).await {
                Ok(stream) => {
                    tcp = Some(stream);
                    break;
                }
                Err(err) => last = format!("{ip}: {err}"),
            }
        }
        let tcp = tcp.ok_or_else(|| {
            let (host, message) = with(last);
            FetchError::Connect { host, message }
        })?;
        let tls = http_client::tls(tcp, host, self.tls.clone())
            .await
            .map_err(|err| {
                let (host, message) = with(err.to_string());
                FetchError::Tls { host, message }
            })?;
        let request = http::Request::get("/.well-known/mta-sts.txt")
            .header(http::header::HOST, host)
            .header(http::header::USER_AGENT, "postern")
            .header(http::header::CACHE_CONTROL, "no-cache")
            .body(Full::new(Bytes::new()))
            .map_err(|err| {
                let (host, message) = with(err.to_string());
                FetchError::Http { host, message }
            })?;
        let answer = http_client::exchange(tls, request, MAX_POLICY_BYTES)
            .await
            .map_err(|err| match err {
                ExchangeError::TooLarge(_) => FetchError::TooLarge {
                    host: host.to_string(),
                },
                ExchangeError::Http(message) => FetchError::Http {
                    host: host.to_string(),
                    message,
                },
            })?;
        if answer.status != 200 {
            return Err(FetchError::Status {
                host: host.to_string(),
                status: answer.status,
            });
        }
        let content_type = answer
            .headers
            .get(http::header::CONTENT_TYPE)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default();
        let media_type = content_type.split(';').next().unwrap_or_default().trim();
        if !media_type.eq_ignore_ascii_case("text/plain") {
            return Err(FetchError::ContentType {
                host: host.to_string(),
                content_type,
            });
        }
        let body = answer.body;
        String::from_utf8(body.to_vec()).map_err(|_| FetchError::NotText {
            host: host.to_string(),
        })
    }
}
