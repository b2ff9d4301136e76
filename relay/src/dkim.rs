//! DKIM signing at ingress: messages whose From domain has keys are signed once, before they
//! are queued (relaxed/relaxed, the usual header set, From oversigned). Keys are reloaded when
//! their files change, and so is the domains file (`domainsFile`), which lists domains and keys
//! outside the config so that they change without a restart.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use mail_auth::common::crypto::{DkimKey, Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, DkimSigner, Done};
use postern_config::{DkimAlgorithm, DomainConfig};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;
use tokio_util::sync::CancellationToken;

/// Headers signed when present. From is listed twice so a second From added later breaks
/// the signature (oversigning).
const SIGNED_HEADERS: [&str; 13] = [
    "From",
    "From",
    "Reply-To",
    "Subject",
    "Date",
    "To",
    "Cc",
    "Message-ID",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
];

/// A key that could not be loaded; the message names the config field.
#[derive(Debug, thiserror::Error)]
#[error("{field} {path}: {message}")]
pub struct DkimError {
    pub field: String,
    pub path: PathBuf,
    pub message: String,
}

struct KeySource {
    field: String,
    domain: String,
    selector: String,
    algorithm: DkimAlgorithm,
    path: PathBuf,
}

type Signer = DkimSigner<DkimKey, Done>;

/// The signers of every configured domain: those of `domains` in the config, and those of the
/// domains file, which is read again (with the key files) whenever anything in it changes.
pub struct Signers {
    configured: Vec<DomainConfig>,
    domains_file: Option<PathBuf>,
    loaded: RwLock<LoadedKeys>,
}

#[derive(Default)]
struct LoadedKeys {
    by_domain: HashMap<String, Vec<Arc<Signer>>>,
    /// Modification times of the domains file and every key file, as last loaded.
    stamps: Vec<Option<SystemTime>>,
    keys: usize,
}

impl std::fmt::Debug for Signers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys = self.loaded.read().map_or(0, |l| l.keys);
        f.debug_struct("Signers")
            .field("keys", &keys)
            .finish_non_exhaustive()
    }
}

impl Signers {
    /// Loads every key named in `domains` and in `domains_file`.
    pub fn load(
        domains: &[DomainConfig],
        domains_file: Option<&Path>,
    ) -> Result<Arc<Signers>, DkimError> {
        let signers = Signers {
            configured: domains.to_vec(),
            domains_file: domains_file.map(Path::to_path_buf),
            loaded: RwLock::default(),
        };
        signers.reload()?;
        Ok(Arc::new(signers))
    }

    /// True when no domain can ever have keys: none configured and no domains file.
    pub fn is_empty(&self) -> bool {
        self.configured.iter().all(|d| d.dkim.is_empty()) && self.domains_file.is_none()
    }

    /// The keys to load: the configured ones, then those of the domains file.
    fn sources(&self) -> Result<Vec<KeySource>, DkimError> {
        let mut sources = key_sources(&self.configured, "");
        if let Some(path) = &self.domains_file {
            let error = |message: String| DkimError {
                field: "domainsFile".into(),
                path: path.clone(),
                message,
            };
            let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
            let listed = DomainConfig::list_from_yaml(&text).map_err(|e| error(e.to_string()))?;
            let prefix = format!("domainsFile {}: ", path.display());
            sources.extend(key_sources(&listed, &prefix));
        }
        Ok(sources)
    }

    /// Reloads all keys when the domains file or any key file changed; keeps the current keys
    /// when one fails to load.
    fn reload(&self) -> Result<bool, DkimError> {
        let before = crate::reload::stamp(self.domains_file.as_deref());
        let sources = self.sources()?;
        let mut now = before;
        now.extend(crate::reload::stamp(
            sources.iter().map(|s| s.path.as_path()),
        ));
        {
            let loaded = self.loaded.read().unwrap_or_else(|e| e.into_inner());
            if loaded.stamps == now && !now.is_empty() {
                return Ok(false);
            }
        }
        let mut by_domain: HashMap<String, Vec<Arc<Signer>>> = HashMap::new();
        for source in &sources {
            let signer = signer(source)?;
            by_domain
                .entry(source.domain.clone())
                .or_default()
                .push(Arc::new(signer));
        }
        *self.loaded.write().unwrap_or_else(|e| e.into_inner()) = LoadedKeys {
            by_domain,
            stamps: now,
            keys: sources.len(),
        };
        Ok(true)
    }

    /// Checks the domains file and the key files every `interval` until `cancel` fires.
    pub async fn watch(self: Arc<Self>, interval: Duration, cancel: CancellationToken) {
        crate::reload::watch("DKIM keys", interval, cancel, || self.reload()).await;
    }

    /// `DKIM-Signature` header fields for `message`, one per key of its From domain; empty when
    /// the domain has no keys or the message has no single From address.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        let mut headers = Vec::new();
        for signer in self.signers_for(message) {
            match signer.sign(message) {
                Ok(signature) => headers.extend_from_slice(signature.to_header().as_bytes()),
                Err(err) => {
                    tracing::warn!(%err, "DKIM signing failed; message queued unsigned by this key")
                }
            }
        }
        headers
    }

    /// Signatures computed while a large message streams by; `start` is its beginning, which
    /// must hold the whole header section (a message whose header section is larger goes
    /// unsigned, with a warning). Feed every byte of the message, `start` included.
    pub fn streaming(&self, start: &[u8]) -> Vec<StreamingSignature> {
        let signers = self.signers_for(start);
        if !signers.is_empty() && !start.windows(4).any(|w| w == b"\r\n\r\n") {
            tracing::warn!("header section too large to sign; message queued unsigned");
            return Vec::new();
        }
        signers.into_iter().map(StreamingSignature::start).collect()
    }

    /// The signers of the message's From domain.
    fn signers_for(&self, message: &[u8]) -> Vec<Arc<Signer>> {
        let Some(domain) = from_domain(message) else {
            return Vec::new();
        };
        self.loaded
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .by_domain
            .get(&domain)
            .cloned()
            .unwrap_or_default()
    }
}

/// One signature computed by its own task from the pieces of a message as they arrive, so the
/// message is never held whole for signing.
#[derive(Debug)]
pub struct StreamingSignature {
    pieces: tokio::sync::mpsc::Sender<bytes::Bytes>,
    done: tokio::task::JoinHandle<Option<String>>,
}

impl StreamingSignature {
    fn start(signer: Arc<Signer>) -> StreamingSignature {
        let (pieces, mut incoming) = tokio::sync::mpsc::channel::<bytes::Bytes>(2);
        let done = tokio::spawn(async move {
            let mut stream = signer.sign_streaming();
            while let Some(piece) = incoming.recv().await {
                stream.write(&piece);
            }
            match stream.finish() {
                Ok(signature) => Some(signature.to_header()),
                Err(err) => {
                    tracing::warn!(%err, "DKIM signing failed; message queued unsigned by this key");
                    None
                }
            }
        });
        StreamingSignature { pieces, done }
    }

    /// The next piece of the message.
    pub async fn write(&self, piece: bytes::Bytes) {
        let _ = self.pieces.send(piece).await;
    }

    /// The `DKIM-Signature` field, once every piece was written.
    pub async fn finish(self) -> Option<String> {
        drop(self.pieces);
        self.done.await.ok().flatten()
    }
}

/// One source per key of `domains`, its field named as in the config (after `prefix`).
fn key_sources(domains: &[DomainConfig], prefix: &str) -> Vec<KeySource> {
    domains
        .iter()
        .enumerate()
        .flat_map(|(i, domain)| {
            domain
                .dkim
                .iter()
                .enumerate()
                .map(move |(j, key)| KeySource {
                    field: format!("{prefix}domains[{i}].dkim[{j}].keyFile"),
                    domain: domain.name.to_ascii_lowercase(),
                    selector: key.selector.clone(),
                    algorithm: key.algorithm,
                    path: key.key_file.clone(),
                })
        })
        .collect()
}

fn signer(source: &KeySource) -> Result<Signer, DkimError> {
    let error = |message: String| DkimError {
        field: source.field.clone(),
        path: source.path.clone(),
        message,
    };
    let der = PrivateKeyDer::from_pem_file(&source.path).map_err(|e| error(e.to_string()))?;
    let key = match (source.algorithm, der) {
        (DkimAlgorithm::Rsa, der) => {
            DkimKey::Rsa(RsaKey::<Sha256>::from_key_der(der).map_err(|e| error(e.to_string()))?)
        }
        (DkimAlgorithm::Ed25519, PrivateKeyDer::Pkcs8(der)) => DkimKey::Ed25519(
            Ed25519Key::from_pkcs8_maybe_unchecked_der(der.secret_pkcs8_der())
                .map_err(|e| error(e.to_string()))?,
        ),
        (DkimAlgorithm::Ed25519, _) => {
            return Err(error("an ed25519 key must be PKCS#8 PEM".into()));
        }
    };
    Ok(DkimSigner::from_key(key)
        .domain(source.domain.clone())
        .selector(source.selector.clone())
        .headers(SIGNED_HEADERS)
        .header_canonicalization(Canonicalization::Relaxed)
        .body_canonicalization(Canonicalization::Relaxed))
}

/// The lower-cased domain of the message's single From address.
fn from_domain(message: &[u8]) -> Option<String> {
    let parsed = mail_parser::MessageParser::new().parse_headers(message)?;
    let from = parsed.from()?;
    let mut addresses = from.iter();
    let address = addresses.next()?.address()?;
    if addresses.next().is_some() {
        return None;
    }
    address
        .rsplit_once('@')
        .map(|(_, domain)| domain.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::from_domain;

    #[test]
    fn from_domain_of_one_author() {
        assert_eq!(
            from_domain(b"From: \"A\" <a@Example.COM>\r\n\r\nx"),
            Some("example.com".into())
        );
        assert_eq!(
            from_domain(b"From: a@x.example, b@y.example\r\n\r\nx"),
            None
        );
        assert_eq!(from_domain(b"Subject: none\r\n\r\nx"), None);
    }
}
