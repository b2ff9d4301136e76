//! DKIM signing at ingress: messages whose From domain has keys are signed once, before they
//! are queued (relaxed/relaxed, the usual header set, From oversigned). Keys are reloaded when
//! their files change.

use std::collections::HashMap;
use std::path::PathBuf;
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

/// The signers of every configured domain.
pub struct Signers {
    sources: Vec<KeySource>,
    by_domain: RwLock<HashMap<String, Vec<Arc<Signer>>>>,
    stamps: RwLock<Vec<Option<SystemTime>>>,
}

impl std::fmt::Debug for Signers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signers")
            .field("keys", &self.sources.len())
            .finish_non_exhaustive()
    }
}

impl Signers {
    /// Loads every key named in `domains`.
    pub fn load(domains: &[DomainConfig]) -> Result<Arc<Signers>, DkimError> {
        let sources: Vec<KeySource> = domains
            .iter()
            .enumerate()
            .flat_map(|(i, domain)| {
                domain
                    .dkim
                    .iter()
                    .enumerate()
                    .map(move |(j, key)| KeySource {
                        field: format!("domains[{i}].dkim[{j}].keyFile"),
                        domain: domain.name.to_ascii_lowercase(),
                        selector: key.selector.clone(),
                        algorithm: key.algorithm,
                        path: key.key_file.clone(),
                    })
            })
            .collect();
        let signers = Signers {
            by_domain: RwLock::default(),
            stamps: RwLock::new(vec![None; sources.len()]),
            sources,
        };
        signers.reload()?;
        Ok(Arc::new(signers))
    }

    /// True when no domain has keys.
    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    /// Reloads all keys when any file changed; keeps the current keys when one fails to load.
    fn reload(&self) -> Result<bool, DkimError> {
        let now = crate::reload::stamp(self.sources.iter().map(|s| s.path.as_path()));
        if *self.stamps.read().unwrap_or_else(|e| e.into_inner()) == now && !now.is_empty() {
            return Ok(false);
        }
        let mut by_domain: HashMap<String, Vec<Arc<Signer>>> = HashMap::new();
        for source in &self.sources {
            let signer = signer(source)?;
            by_domain
                .entry(source.domain.clone())
                .or_default()
                .push(Arc::new(signer));
        }
        *self.by_domain.write().unwrap_or_else(|e| e.into_inner()) = by_domain;
        *self.stamps.write().unwrap_or_else(|e| e.into_inner()) = now;
        Ok(true)
    }

    /// Checks the key files every `interval` until `cancel` fires.
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
        self.by_domain
            .read()
            .unwrap_or_else(|e| e.into_inner())
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
