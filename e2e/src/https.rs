//! An HTTPS server on loopback that answers each `Host` with the status, media type and body
//! the test sets, and any other with 404 (MTA-STS policy servers), recording the requests.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What the server answers.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub content_type: String,
    pub body: String,
}

#[derive(Debug)]
struct State {
    responses: HashMap<String, Response>,
    /// `Host` header and path of each request answered.
    requests: Vec<(String, String)>,
}

/// A running server.
#[derive(Debug, Clone)]
pub struct HttpsServer {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl HttpsServer {
    /// Starts a server on a free port of 127.0.0.1 with the test PKI's certificate.
    pub async fn start(pki: &crate::TestPki) -> HttpsServer {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&pki.cert_file)
            .expect("certificate file")
            .collect::<Result<_, _>>()
            .expect("certificate PEM");
        let key = PrivateKeyDer::from_pem_file(&pki.key_file).expect("key PEM");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("server certificate");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binding");
        let server = HttpsServer {
            addr: listener.local_addr().expect("address"),
            state: Arc::new(Mutex::new(State {
                responses: HashMap::new(),
                requests: Vec::new(),
            })),
        };
        let state = server.state.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, state) = (acceptor.clone(), state.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut request = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&request).into_owned();
                    let path = text.split(' ').nth(1).unwrap_or_default().to_string();
                    let host = text
                        .lines()
                        .find_map(|l| l.strip_prefix("host: ").or(l.strip_prefix("Host: ")))
                        .unwrap_or_default()
                        .to_string();
                    let response = {
                        let mut state = state.lock().expect("lock");
                        let response = state.responses.get(&host).cloned();
                        state.requests.push((host, path));
                        response.unwrap_or(Response {
                            status: 404,
                            content_type: "text/plain".into(),
                            body: "not found".into(),
                        })
                    };
                    let head = format!(
                        "HTTP/1.1 {} X\r\ncontent-type: {}\r\ncontent-length: {}\r\nlocation: https://elsewhere.example/\r\nconnection: close\r\n\r\n",
                        response.status,
                        response.content_type,
                        response.body.len()
                    );
                    let _ = tls.write_all(head.as_bytes()).await;
                    let _ = tls.write_all(response.body.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        server
    }

    /// Answers requests for `host` with `response` from now on.
    pub fn set(&self, host: &str, response: Response) {
        let mut state = self.state.lock().expect("lock");
        state.responses.insert(host.to_string(), response);
    }

    /// Answers requests for `host` with `body` as `200 text/plain` from now on.
    pub fn serve(&self, host: &str, body: &str) {
        self.set(
            host,
            Response {
                status: 200,
                content_type: "text/plain".into(),
                body: body.into(),
            },
        );
    }

    /// `Host` and path of every request answered so far.
    pub fn requests(&self) -> Vec<(String, String)> {
        self.state.lock().expect("lock").requests.clone()
    }
}
