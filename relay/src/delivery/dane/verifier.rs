//! Authenticating an SMTP server by its TLSA records (RFC 7672 §3): a rustls certificate
//! verifier that accepts a chain only when a usable record matches it.

use std::sync::Arc;

use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::CryptoProvider;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::delivery::tls::ChainCheck;

use super::tlsa::{DANE_EE, DANE_TA, Tlsa};

/// No usable TLSA record matched the server's chain.
#[derive(Debug, thiserror::Error)]
#[error("no TLSA record of {host} matches the certificate chain the server sent")]
pub struct NoMatch {
    host: String,
}

/// The TLSA records of one MX host and the names its certificate may hold.
#[derive(Debug)]
pub struct DaneVerifier {
    /// The MX host, for messages.
    host: String,
    /// Usable records only.
    records: Vec<Tlsa>,
    /// Reference identifiers for DANE-TA (RFC 7672 §3.2.2): the MX host name and the
    /// recipient domain.
    names: Vec<String>,
}

impl DaneVerifier {
    pub fn new(host: &str, records: Vec<Tlsa>, names: Vec<String>) -> DaneVerifier {
        DaneVerifier {
            host: host.to_string(),
            records,
            names,
        }
    }

    /// A client config that authenticates the server by these records (TLS 1.2 and 1.3).
    pub fn client_config(self) -> Arc<rustls::ClientConfig> {
        crate::delivery::tls::checked_by(self)
    }

    /// DANE-EE: the server's own certificate or key, whatever its names, issuer or dates
    /// (RFC 7672 §3.1.1).
    fn end_entity_matches(&self, end_entity: &CertificateDer<'_>) -> bool {
        self.records
            .iter()
            .any(|r| r.usage == DANE_EE && r.matches(end_entity))
    }

    /// DANE-TA: a certificate of the chain the server sent is a trust anchor; the chain up to
    /// it must verify and the server's certificate must hold one of the reference names
    /// (RFC 7672 §3.1.2, §3.2.2).
    fn chain_verifies(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        provider: &Arc<CryptoProvider>,
    ) -> Result<bool, rustls::Error> {
        let mut last_error = None;
        for (i, anchor) in intermediates.iter().enumerate() {
            if !self
                .records
                .iter()
                .any(|r| r.usage == DANE_TA && r.matches(anchor))
            {
                continue;
            }
            let mut roots = rustls::RootCertStore::empty();
            if roots.add(anchor.clone().into_owned()).is_err() {
                continue;
            }
            let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                provider.clone(),
            )
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
            for name in &self.names {
                let Ok(server_name) = ServerName::try_from(name.as_str()) else {
                    continue;
                };
                match verifier.verify_server_cert(
                    end_entity,
                    &intermediates[..i],
                    &server_name,
                    &[],
                    now,
                ) {
                    Ok(_) => return Ok(true),
                    Err(err) => last_error = Some(err),
                }
            }
        }
        match last_error {
            Some(err) => Err(err),
            None => Ok(false),
        }
    }
}

impl ChainCheck for DaneVerifier {
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        provider: &Arc<CryptoProvider>,
    ) -> Result<(), rustls::Error> {
        if self.end_entity_matches(end_entity)
            || self.chain_verifies(end_entity, intermediates, now, provider)?
        {
            return Ok(());
        }
        Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::Other(rustls::OtherError(Arc::new(NoMatch {
                host: self.host.clone(),
            }))),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::digest;

    struct Chain {
        end_entity: CertificateDer<'static>,
        ca: CertificateDer<'static>,
        ca_key: Vec<u8>,
    }

    /// A CA and a server certificate it issued for `names`, valid from a day ago.
    fn chain(names: &[&str], expired: bool) -> Chain {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, &ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let end_entity = params.signed_by(&key, &issuer).unwrap();
        Chain {
            end_entity: end_entity.der().clone(),
            ca: ca.der().clone(),
            ca_key: rcgen::PublicKeyData::subject_public_key_info(&ca_key),
        }
    }

    fn sha256(bytes: &[u8]) -> Vec<u8> {
        digest::digest(&digest::SHA256, bytes).as_ref().to_vec()
    }

    fn verify(records: Vec<Tlsa>, chain: &Chain, sent: &[CertificateDer<'_>]) -> bool {
        let verifier = DaneVerifier::new(
            "mx.example",
            records,
            vec!["mx.example".into(), "example".into()],
        );
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        verifier
            .check(&chain.end_entity, sent, UnixTime::now(), &provider)
            .is_ok()
    }

    fn ee(data: Vec<u8>) -> Tlsa {
        Tlsa {
            usage: 3,
            selector: 0,
            matching: 1,
            data,
        }
    }

    fn ta(data: Vec<u8>) -> Tlsa {
        Tlsa {
            usage: 2,
            selector: 1,
            matching: 1,
            data,
        }
    }

    #[test]
    fn dane_ee_ignores_names_issuer_and_dates() {
        let c = chain(&["somewhere.else"], true);
        assert!(verify(vec![ee(sha256(&c.end_entity))], &c, &[]));
        assert!(!verify(vec![ee(sha256(&c.ca))], &c, &[]));
    }

    #[test]
    fn dane_ta_needs_the_anchor_in_the_chain_and_a_reference_name() {
        let good = chain(&["mx.example"], false);
        let record = || vec![ta(sha256(&good.ca_key))];
        assert!(verify(record(), &good, std::slice::from_ref(&good.ca)));
        // The anchor was not sent: nothing to match.
        assert!(!verify(record(), &good, &[]));
        // The recipient domain is a reference name too.
        let domain = chain(&["example"], false);
        let record = vec![ta(sha256(&domain.ca_key))];
        assert!(verify(record, &domain, std::slice::from_ref(&domain.ca)));
        // Another name fails, as does an expired certificate under the anchor.
        for c in [
            chain(&["other.example"], false),
            chain(&["mx.example"], true),
        ] {
            let record = vec![ta(sha256(&c.ca_key))];
            assert!(!verify(record, &c, std::slice::from_ref(&c.ca)));
        }
    }

    #[test]
    fn a_record_for_another_chain_does_not_match() {
        let c = chain(&["mx.example"], false);
        let other = chain(&["mx.example"], false);
        let records = vec![ee(sha256(&other.end_entity)), ta(sha256(&other.ca_key))];
        assert!(!verify(records, &c, std::slice::from_ref(&c.ca)));
    }
}
