//! An HTTPS server on loopback that answers each `Host` with what the test scripted for it (a
//! status, a media type, a body, after a delay) and any other with 404, recording every request
//! with its headers and body: MTA-STS policy servers and webhook receivers.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

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

/// A request as it arrived.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub host: String,
    pub path: String,
    /// Names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    /// The first header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug)]
struct State {
    /// Per host, the answers in order; the last one repeats.
    scripts: HashMap<String, VecDeque<(Response, Duration)>>,
    requests: Vec<Request>,
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
                scripts: HashMap::new(),
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
                    let Some(request) = read_request(&mut tls).await else {
                        return;
                    };
                    let (response, delay) = {
                        let mut state = state.lock().expect("lock");
                        let answer = match state.scripts.get_mut(&request.host) {
                            Some(script) if script.len() > 1 => script.pop_front(),
                            Some(script) => script.front().cloned(),
                            None => None,
                        };
                        state.requests.push(request);
                        answer.unwrap_or((
                            Response {
                                status: 404,
                                content_type: "text/plain".into(),
                                body: "not found".into(),
                            },
                            Duration::ZERO,
                        ))
                    };
                    tokio::time::sleep(delay).await;
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
        self.script(host, vec![(response, Duration::ZERO)]);
    }

    /// Answers requests for `host` with these, each after its delay, in order; the last one
    /// repeats.
    pub fn script(&self, host: &str, answers: Vec<(Response, Duration)>) {
        let mut state = self.state.lock().expect("lock");
        state.scripts.insert(host.to_string(), answers.into());
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

    /// Takes TLS reports: requests to `localhost:<port>` get `201 Created`; the URL to post
    /// them to.
    pub fn accept_reports(&self) -> String {
        let host = format!("localhost:{}", self.addr.port());
        self.set(
            &host,
            Response {
                status: 201,
                content_type: "text/plain".into(),
                body: String::new(),
            },
        );
        format!("https://{host}/tlsrpt")
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Request> {
        self.state.lock().expect("lock").requests.clone()
    }
}

/// Reads a request: its head, and a body of `content-length` bytes.
async fn read_request<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> Option<Request> {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => data.extend_from_slice(&buf[..n]),
        }
    };
    let head = String::from_utf8_lossy(&data[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split(' ');
    let method = first.next().unwrap_or_default().to_string();
    let path = first.next().unwrap_or_default().to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = data[head_end + 4..].to_vec();
    while body.len() < length {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => body.extend_from_slice(&buf[..n]),
        }
    }
    let host = headers
        .iter()
        .find(|(n, _)| n == "host")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    Some(Request {
        method,
        host,
        path,
        headers,
        body,
    })
}
