//! TLS towards remote servers. Opportunistic and required STARTTLS accept any certificate, as
//! SMTP between MTAs does without DANE or MTA-STS: encryption against passive observers.

use std::sync::Arc;

use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

/// How a client config judges the certificate chain a server sent. The server's proof that it
/// holds the certificate's key is checked the same way whatever the judgement ([`Checked`]).
pub trait ChainCheck: std::fmt::Debug + Send + Sync + 'static {
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        provider: &Arc<CryptoProvider>,
    ) -> Result<(), rustls::Error>;
}

/// Any chain: encryption against passive observers.
#[derive(Debug)]
struct AnyChain;

impl ChainCheck for AnyChain {
    fn check(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
        _provider: &Arc<CryptoProvider>,
    ) -> Result<(), rustls::Error> {
        Ok(())
    }
}

/// A verifier whose chain `C` judges, checking the handshake signatures with the provider's
/// algorithms.
#[derive(Debug)]
struct Checked<C> {
    check: C,
    provider: Arc<CryptoProvider>,
}

impl<C: ChainCheck> ServerCertVerifier for Checked<C> {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check
            .check(end_entity, intermediates, now, &self.provider)
            .map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Trust anchors for `tls: verify` could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("delivery.caFile {path}: {message}")]
pub struct CaError {
    pub path: String,
    pub message: String,
}

/// The system's roots and the certificates of `ca_file`.
fn roots(ca_file: Option<&std::path::Path>) -> Result<rustls::RootCertStore, CaError> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = ca_file {
        let error = |message: String| CaError {
            path: path.display().to_string(),
            message,
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .and_then(Iterator::collect)
            .map_err(|e| error(e.to_string()))?;
        if certs.is_empty() {
            return Err(error("no PEM certificate found".into()));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| error(e.to_string()))?;
        }
    }
    Ok(roots)
}

/// A client config that verifies certificates against the system's roots and `ca_file`.
pub fn verified(ca_file: Option<&std::path::Path>) -> Result<Arc<rustls::ClientConfig>, CaError> {
    let roots = roots(ca_file)?;
    Ok(Arc::new(
        builder(ring_provider())
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

fn ring_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client config builder for TLS 1.2 and 1.3 with `provider`.
fn builder(
    provider: Arc<CryptoProvider>,
) -> rustls::ConfigBuilder<rustls::ClientConfig, rustls::WantsVerifier> {
    match rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
    {
        Ok(builder) => builder,
        Err(err) => unreachable!("ring supports TLS 1.2 and 1.3: {err}"),
    }
}

/// A verifier of certificates against the system's roots and `ca_file`, for checking the
/// certificate of a session that did not verify it in its handshake; none without any root
/// (then no certificate verifies).
pub fn webpki(
    ca_file: Option<&std::path::Path>,
) -> Result<Option<Arc<rustls::client::WebPkiServerVerifier>>, CaError> {
    let provider = ring_provider();
    let roots = Arc::new(roots(ca_file)?);
    Ok(
        rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider)
            .build()
            .ok(),
    )
}

/// A client config for STARTTLS that accepts any certificate (TLS 1.2 and 1.3).
pub fn any_certificate() -> Arc<rustls::ClientConfig> {
    checked_by(AnyChain)
}

/// A client config for STARTTLS whose certificate chain `check` judges (TLS 1.2 and 1.3).
pub fn checked_by(check: impl ChainCheck) -> Arc<rustls::ClientConfig> {
    let provider = ring_provider();
    let verifier = Checked {
        check,
        provider: provider.clone(),
    };
    Arc::new(
        builder(provider)
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth(),
    )
}
