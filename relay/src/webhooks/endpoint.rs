//! A webhook's endpoint: where its URL points and one POST there within the webhook's timeout.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use tokio::net::TcpStream;

use crate::http_client::{self, Answer};

/// Largest answer body read (it is not used; this bounds what a receiver can make us hold).
const MAX_ANSWER: usize = 64 * 1024;

/// Where a webhook's batches go.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Host name or IP address (without brackets).
    host: String,
    port: u16,
    /// Path and query, from `/`.
    path: String,
    /// `Host` header.
    authority: String,
    /// Trusted roots for `https://`; none for `http://`.
    tls: Option<Arc<rustls::ClientConfig>>,
    timeout: Duration,
}

/// Why a POST failed.
#[derive(Debug, thiserror::Error)]
pub enum PostError {
    #[error("no connection to {0}: {1}")]
    Connect(String, String),
    #[error("TLS with {0} failed: {1}")]
    Tls(String, String),
    #[error("{0}")]
    Exchange(#[from] http_client::ExchangeError),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

impl Endpoint {
    /// The endpoint of `url` (validated with the config: `http(s)://authority[/path]`).
    pub fn new(url: &str, tls: Arc<rustls::ClientConfig>, timeout: Duration) -> Option<Endpoint> {
        let (https, rest) = match url.strip_prefix("https://") {
            Some(rest) => (true, rest),
            None => (false, url.strip_prefix("http://")?),
        };
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(split);
        let path = match path {
            "" => "/".to_string(),
            p if p.starts_with('?') => format!("/{p}"),
            p => p.to_string(),
        };
        let default_port = if https { 443 } else { 80 };
        let (host, port) = match authority.strip_prefix('[') {
            Some(v6) => {
                let (host, after) = v6.split_once(']')?;
                let port = after.strip_prefix(':').map(str::parse).transpose().ok()?;
                (host, port.unwrap_or(default_port))
            }
            None => match authority.rsplit_once(':') {
                Some((host, port)) => (host, port.parse().ok()?),
                None => (authority, default_port),
            },
        };
        Some(Endpoint {
            host: host.to_string(),
            port,
            path,
            authority: authority.to_string(),
            tls: https.then_some(tls),
            timeout,
        })
    }

    /// POSTs `body` of `content_type` with `headers`; the status the endpoint answered.
    pub async fn post(
        &self,
        content_type: &str,
        headers: &[(&str, String)],
        body: Bytes,
    ) -> Result<u16, PostError> {
        let sent = self.send(content_type, headers, body);
        match tokio::time::timeout(self.timeout, sent).await {
            Ok(result) => result.map(|answer| answer.status),
            Err(_) => Err(PostError::Timeout(self.timeout)),
        }
    }

    async fn send(
        &self,
        content_type: &str,
        headers: &[(&str, String)],
        body: Bytes,
    ) -> Result<Answer, PostError> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| PostError::Connect(self.authority.clone(), e.to_string()))?;
        let mut request = http::Request::post(self.path.as_str())
            .header(http::header::HOST, self.authority.as_str())
            .header(http::header::CONTENT_TYPE, content_type)
            .header(http::header::USER_AGENT, "postern");
        for (name, value) in headers {
            request = request.header(*name, value.as_str());
        }
        let request = request
            .body(Full::new(body))
            .map_err(|e| http_client::ExchangeError::Http(e.to_string()))?;
        Ok(match &self.tls {
            Some(config) => {
                let tls = http_client::tls(tcp, &self.host, config.clone())
                    .await
                    .map_err(|e| PostError::Tls(self.authority.clone(), e.to_string()))?;
                http_client::exchange(tls, request, MAX_ANSWER).await?
            }
            None => http_client::exchange(tcp, request, MAX_ANSWER).await?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(url: &str) -> (String, u16, String, String, bool) {
        let e = Endpoint::new(
            url,
            crate::delivery::tls::any_certificate(),
            Duration::from_secs(1),
        )
        .unwrap();
        (e.host, e.port, e.path, e.authority, e.tls.is_some())
    }

    #[test]
    fn urls_give_host_port_and_path() {
        assert_eq!(
            parts("https://hooks.example.com/postern?x=1"),
            (
                "hooks.example.com".into(),
                443,
                "/postern?x=1".into(),
                "hooks.example.com".into(),
                true
            )
        );
        assert_eq!(
            parts("http://127.0.0.1:8080"),
            (
                "127.0.0.1".into(),
                8080,
                "/".into(),
                "127.0.0.1:8080".into(),
                false
            )
        );
        assert_eq!(
            parts("https://[::1]:8443/h"),
            ("::1".into(), 8443, "/h".into(), "[::1]:8443".into(), true)
        );
        assert_eq!(parts("http://h?q").2, "/?q");
    }
}
