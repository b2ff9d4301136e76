//! Test certificates: a CA and a server certificate for `localhost` and 127.0.0.1.

use std::path::PathBuf;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};

/// A CA, a server certificate signed by it, and the files ingress reads.
#[derive(Debug)]
pub struct TestPki {
    pub ca_pem: String,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    _dir: tempfile::TempDir,
}

impl TestPki {
    /// Generates a fresh CA and server certificate.
    pub fn new() -> TestPki {
        TestPki::for_names(&[])
    }

    /// A fresh CA and a server certificate valid for `localhost`, `127.0.0.1` and `names`.
    pub fn for_names(names: &[&str]) -> TestPki {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Postern test CA");
        let ca_key = KeyPair::generate().expect("CA key");
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
        let issuer = Issuer::new(ca_params, ca_key);
        let cert_file = dir.path().join("tls.crt");
        let key_file = dir.path().join("tls.key");
        let pki = TestPki {
            ca_pem: ca_cert.pem(),
            cert_file,
            key_file,
            _dir: dir,
        };
        pki.issue("localhost", names, &issuer);
        pki
    }

    /// Writes a new server certificate with `common_name`, signed by a new CA that is also
    /// written into `ca_pem` of the returned value's clone; used to test reloading.
    pub fn rotate(&mut self, common_name: &str) {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().expect("CA key");
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
        self.ca_pem = ca_cert.pem();
        self.issue(common_name, &[], &Issuer::new(ca_params, ca_key));
    }

    fn issue(&self, common_name: &str, names: &[&str], issuer: &Issuer<'_, KeyPair>) {
        let mut sans = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        sans.extend(names.iter().map(|n| n.to_string()));
        let mut params = CertificateParams::new(sans).expect("server params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        let key = KeyPair::generate().expect("server key");
        let cert = params.signed_by(&key, issuer).expect("server certificate");
        std::fs::write(&self.cert_file, cert.pem()).expect("writing certificate");
        std::fs::write(&self.key_file, key.serialize_pem()).expect("writing key");
    }

    /// A TLS client config trusting only this CA, limited to the given protocol versions.
    pub fn client_config(
        &self,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots.add(cert.expect("CA PEM")).expect("adding CA");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        // Every handshake verifies the certificate; resumption would skip that.
        config.resumption = rustls::client::Resumption::disabled();
        Arc::new(config)
    }

    /// The name the server certificate is valid for.
    pub fn server_name() -> ServerName<'static> {
        ServerName::try_from("localhost").expect("valid name")
    }
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}
