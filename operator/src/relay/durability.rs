//! What a 250 is worth: when the NATS servers behind a Relay's monitoring endpoint fsync what
//! JetStream stored (read from each server's `/varz`), held against `spec.nats.sync`.
//!
//! The endpoint's host may name several servers (the chart's headless Service names every NATS
//! pod): each address is asked, and the weakest setting is the one that counts.

use std::net::SocketAddr;
use std::time::Duration as StdDuration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use postern_config::{Duration, Sync};
use serde::Deserialize;

/// Longest wait for one server's `/varz`, connecting included.
const TIMEOUT: StdDuration = StdDuration::from_secs(5);
/// Largest `/varz` body read (nats-server's is a few KiB).
const MAX_BODY: usize = 1 << 20;
/// What nats-server syncs when its config sets nothing.
const NATS_DEFAULT: Sync = Sync::Every(Duration::secs(120));

/// One server's setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSync {
    /// `server_name (address)`.
    pub server: String,
    pub sync: Sync,
}

/// Why the setting could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    #[error("cannot resolve the monitoring endpoint {endpoint}: {source}")]
    Resolve {
        endpoint: String,
        source: std::io::Error,
    },
    #[error("the monitoring endpoint {endpoint} resolves to no address")]
    NoAddress { endpoint: String },
    #[error("GET http://{address}/varz: {message}")]
    Varz {
        address: SocketAddr,
        message: String,
    },
}

/// Reads the setting of every server the monitoring endpoint (`host:port`) resolves to.
pub async fn observe(endpoint: &str) -> Result<Vec<ServerSync>, ObserveError> {
    let addresses: Vec<SocketAddr> = tokio::net::lookup_host(endpoint)
        .await
        .map_err(|source| ObserveError::Resolve {
            endpoint: endpoint.to_string(),
            source,
        })?
        .collect();
    if addresses.is_empty() {
        return Err(ObserveError::NoAddress {
            endpoint: endpoint.to_string(),
        });
    }
    let host = endpoint.rsplit_once(':').map_or(endpoint, |(host, _)| host);
    let asked = addresses.iter().map(|address| async move {
        let body = tokio::time::timeout(TIMEOUT, varz(*address, host))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {TIMEOUT:?}")));
        body.and_then(|body| parse_varz(&body))
            .map(|(name, sync)| ServerSync {
                server: format!("{name} ({address})"),
                sync,
            })
            .map_err(|message| ObserveError::Varz {
                address: *address,
                message,
            })
    });
    futures::future::join_all(asked).await.into_iter().collect()
}

/// The body of `GET /varz` from `address`.
async fn varz(address: SocketAddr, host: &str) -> Result<Bytes, String> {
    let stream = tokio::net::TcpStream::connect(address)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    let connection = tokio::spawn(connection);
    let request = http::Request::get("/varz")
        .header(http::header::HOST, host)
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    connection.abort();
    if !status.is_success() {
        return Err(format!("HTTP {status}"));
    }
    Ok(body)
}

/// The server's name and its sync setting from a `/varz` body.
pub fn parse_varz(body: &[u8]) -> Result<(String, Sync), String> {
    #[derive(Deserialize)]
    struct Varz {
        #[serde(default)]
        server_name: String,
        jetstream: Option<JetStream>,
    }
    #[derive(Deserialize)]
    struct JetStream {
        config: Option<JetStreamConfig>,
    }
    #[derive(Deserialize)]
    struct JetStreamConfig {
        /// Nanoseconds; 0 (or absent) is nats-server's default.
        #[serde(default)]
        sync_interval: u64,
        #[serde(default)]
        sync_always: bool,
    }
    let varz: Varz =
        serde_json::from_slice(body).map_err(|e| format!("not nats-server's /varz: {e}"))?;
    let config = varz
        .jetstream
        .and_then(|j| j.config)
        .ok_or_else(|| format!("server {} has no JetStream", varz.server_name))?;
    let sync = if config.sync_always {
        Sync::Always
    } else if config.sync_interval == 0 {
        NATS_DEFAULT
    } else {
        Sync::Every(Duration(StdDuration::from_nanos(config.sync_interval)))
    };
    Ok((varz.server_name, sync))
}

/// The `QueueDurable` condition and `status.natsSync`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// `True`, `False` or `Unknown`.
    pub status: &'static str,
    pub reason: &'static str,
    pub message: String,
    /// The weakest setting seen.
    pub observed: Option<Sync>,
}

/// Holds what the servers do against what `spec.nats.sync` requires (if anything).
pub fn judge(required: Option<Sync>, observed: &Result<Vec<ServerSync>, ObserveError>) -> Verdict {
    let servers = match observed {
        Ok(servers) if !servers.is_empty() => servers,
        Ok(_) => return unreachable_verdict(required, "no server answered".into()),
        Err(err) => return unreachable_verdict(required, err.to_string()),
    };
    let weakest = servers
        .iter()
        .map(|s| s.sync)
        .reduce(|a, b| if a.meets(b) { b } else { a })
        .unwrap_or(NATS_DEFAULT);
    let described = servers
        .iter()
        .map(|s| format!("{} syncs {}", s.server, describe(s.sync)))
        .collect::<Vec<_>>()
        .join(", ");
    let consequence = match weakest {
        Sync::Always => "an acknowledged message survives a power loss".to_string(),
        Sync::Every(every) => format!(
            "a power loss of the servers can take mail accepted in the last {every} before it"
        ),
    };
    let (status, reason, message) = match required {
        None => (
            "True",
            "NotRequired",
            format!("{described}: {consequence}; spec.nats.sync can require a setting"),
        ),
        Some(required) if weakest.meets(required) => (
            "True",
            "SyncAsRequired",
            format!("{described}, as spec.nats.sync {required} requires: {consequence}"),
        ),
        Some(required) => (
            "False",
            "SyncWeakerThanRequired",
            format!(
                "spec.nats.sync requires {required}, but {described} (jetstream sync_interval in the server config): {consequence}"
            ),
        ),
    };
    Verdict {
        status,
        reason,
        message,
        observed: Some(weakest),
    }
}

fn describe(sync: Sync) -> String {
    match sync {
        Sync::Always => "always".into(),
        Sync::Every(every) => format!("every {every}"),
    }
}

fn unreachable_verdict(required: Option<Sync>, error: String) -> Verdict {
    let what = match required {
        Some(required) => format!("cannot check spec.nats.sync {required}"),
        None => "cannot read the servers' sync setting".into(),
    };
    Verdict {
        status: "Unknown",
        reason: "MonitoringUnreachable",
        message: format!("{what}: {error}"),
        observed: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(name: &str, sync: Sync) -> ServerSync {
        ServerSync {
            server: name.into(),
            sync,
        }
    }

    #[test]
    fn varz_of_each_setting() {
        let varz = |config: &str| {
            format!(r#"{{"server_name":"nats-0","jetstream":{{"config":{config}}}}}"#)
        };
        let read = |config: &str| parse_varz(varz(config).as_bytes());
        assert_eq!(
            read(r#"{"sync_interval":120000000000,"sync_always":true}"#),
            Ok(("nats-0".into(), Sync::Always))
        );
        assert_eq!(
            read(r#"{"sync_interval":10000000000}"#),
            Ok(("nats-0".into(), Sync::Every(Duration::secs(10))))
        );
        assert_eq!(read("{}"), Ok(("nats-0".into(), NATS_DEFAULT)));
        assert_eq!(
            parse_varz(br#"{"server_name":"plain"}"#),
            Err("server plain has no JetStream".into())
        );
        assert!(parse_varz(b"<html>").is_err());
    }

    #[test]
    fn the_weakest_server_counts() {
        let observed = Ok(vec![
            server("nats-0", Sync::Always),
            server("nats-1", Sync::Every(Duration::secs(120))),
            server("nats-2", Sync::Every(Duration::secs(10))),
        ]);
        let verdict = judge(Some(Sync::Every(Duration::secs(60))), &observed);
        assert_eq!(verdict.status, "False");
        assert_eq!(verdict.observed, Some(Sync::Every(Duration::secs(120))));
        assert!(
            verdict
                .message
                .contains("nats-0 syncs always, nats-1 syncs every 2m, nats-2 syncs every 10s"),
            "{}",
            verdict.message
        );
        let verdict = judge(Some(Sync::Every(Duration::secs(120))), &observed);
        assert_eq!((verdict.status, verdict.reason), ("True", "SyncAsRequired"));
    }
}
