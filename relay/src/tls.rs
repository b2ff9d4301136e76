//! Server certificates for the TLS listeners, reloaded when their files change.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use postern_config::TlsConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_util::sync::CancellationToken;

use crate::reload::stamp;

/// The protocol version (`TLSv1.3`) and cipher suite (`TLS13_AES_256_GCM_SHA384`) of a session.
pub fn session_facts(state: &rustls::CommonState) -> (String, String) {
    let version = state
        .protocol_version()
        .and_then(|v| v.as_str())
        .unwrap_or("TLS")
        .replace("v1_", "v1.");
    let cipher = state
        .negotiated_cipher_suite()
        .and_then(|c| c.suite().as_str())
        .unwrap_or("unknown");
    (version, cipher.to_string())
}

/// A certificate or key that could not be loaded; the message names the config field.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("ingress.tls.certFile {path}: {message}")]
    Cert { path: PathBuf, message: String },
    #[error("ingress.tls.keyFile {path}: {message}")]
    Key { path: PathBuf, message: String },
}

/// Serves the current certificate and swaps in a new one when the files change.
#[derive(Debug)]
pub struct ReloadingCert {
    current: RwLock<Arc<CertifiedKey>>,
    cert_file: PathBuf,
    key_file: PathBuf,
    stamp: RwLock<Vec<Option<SystemTime>>>,
}

impl ReloadingCert {
    /// Loads the certificate and key named in the config.
    pub fn load(config: &TlsConfig) -> Result<Arc<ReloadingCert>, TlsError> {
        let key = load_pair(&config.cert_file, &config.key_file)?;
        Ok(Arc::new(ReloadingCert {
            current: RwLock::new(Arc::new(key)),
            cert_file: config.cert_file.clone(),
            key_file: config.key_file.clone(),
            stamp: RwLock::new(stamp([
                config.cert_file.as_path(),
                config.key_file.as_path(),
            ])),
        }))
    }

    /// Reloads when either file's modification time changed; keeps the old pair on failure.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = stamp([self.cert_file.as_path(), self.key_file.as_path()]);
        if *self.stamp.read().unwrap_or_else(|e| e.into_inner()) == now {
            return Ok(false);
        }
        let key = load_pair(&self.cert_file, &self.key_file)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(key);
        *self.stamp.write().unwrap_or_else(|e| e.into_inner()) = now;
        Ok(true)
    }

    /// Checks the files every `interval` until `cancel` fires.
    pub async fn watch(self: Arc<Self>, interval: Duration, cancel: CancellationToken) {
        crate::reload::watch("TLS certificate", interval, cancel, || {
            self.reload_if_changed()
        })
        .await;
    }

    /// A rustls server config (TLS 1.2 and 1.3) serving this certificate.
    pub fn server_config(self: &Arc<Self>) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map(|builder| {
                builder
                    .with_no_client_auth()
                    .with_cert_resolver(self.clone())
            });
        match config {
            Ok(config) => Arc::new(config),
            Err(err) => unreachable!("ring supports TLS 1.2 and 1.3: {err}"),
        }
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

fn load_pair(cert_file: &Path, key_file: &Path) -> Result<CertifiedKey, TlsError> {
    let cert_err = |message: String| TlsError::Cert {
        path: cert_file.to_path_buf(),
        message,
    };
    let key_err = |message: String| TlsError::Key {
        path: key_file.to_path_buf(),
        message,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .and_then(Iterator::collect)
        .map_err(|e| cert_err(e.to_string()))?;
    if certs.is_empty() {
        return Err(cert_err("no PEM certificate found".into()));
    }
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| key_err(e.to_string()))?;
    let provider = rustls::crypto::ring::default_provider();
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| key_err(e.to_string()))?;
    let certified = CertifiedKey::new(certs, signing_key);
    certified
        .keys_match()
        .map_err(|e| key_err(format!("does not match the certificate: {e}")))?;
    Ok(certified)
}
