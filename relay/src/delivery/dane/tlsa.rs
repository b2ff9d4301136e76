//! TLSA records (RFC 6698) as SMTP uses them (RFC 7672 §3.1): which are usable, and whether
//! one matches a certificate. Pure functions over DER bytes.

use ring::digest;

/// A TLSA record's fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tlsa {
    /// 2 = DANE-TA (a trust anchor in the chain), 3 = DANE-EE (the server's own certificate).
    pub usage: u8,
    /// 0 = the whole certificate, 1 = its SubjectPublicKeyInfo.
    pub selector: u8,
    /// 0 = the data itself, 1 = SHA-256, 2 = SHA-512.
    pub matching: u8,
    pub data: Vec<u8>,
}

/// DANE-TA: the record names a trust anchor of the server's chain.
pub const DANE_TA: u8 = 2;
/// DANE-EE: the record names the server's own certificate or key.
pub const DANE_EE: u8 = 3;

impl Tlsa {
    /// Usable for SMTP: DANE-TA or DANE-EE (PKIX usages 0 and 1 are not, RFC 7672 §3.1.3),
    /// with a selector and a matching type this client knows, and data of the right length.
    pub fn usable(&self) -> bool {
        let length_fits = match self.matching {
            0 => !self.data.is_empty(),
            1 => self.data.len() == 32,
            2 => self.data.len() == 64,
            _ => false,
        };
        matches!(self.usage, DANE_TA | DANE_EE) && self.selector <= 1 && length_fits
    }

    /// The record's data in presentation form (RFC 6698 §2.2): `3 1 1 0a1b…`.
    pub fn presentation(&self) -> String {
        use std::fmt::Write;
        let mut text = format!("{} {} {} ", self.usage, self.selector, self.matching);
        for byte in &self.data {
            let _ = write!(text, "{byte:02x}");
        }
        text
    }

    /// True when the record matches the DER certificate `cert`.
    pub fn matches(&self, cert: &[u8]) -> bool {
        let selected = match self.selector {
            0 => cert,
            1 => match subject_public_key_info(cert) {
                Some(spki) => spki,
                None => return false,
            },
            _ => return false,
        };
        match self.matching {
            0 => selected == self.data.as_slice(),
            1 => digest::digest(&digest::SHA256, selected).as_ref() == self.data.as_slice(),
            2 => digest::digest(&digest::SHA512, selected).as_ref() == self.data.as_slice(),
            _ => false,
        }
    }
}

/// One DER element: its tag, the whole element, and its contents.
struct Element<'a> {
    tag: u8,
    whole: &'a [u8],
    contents: &'a [u8],
}

/// Splits the first DER element off `input` (definite lengths only, as DER requires).
fn element(input: &[u8]) -> Option<(Element<'_>, &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (length, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let (bytes, rest) = rest.split_at(count);
        let length = bytes.iter().fold(0usize, |n, &b| (n << 8) | usize::from(b));
        (length, rest)
    };
    if rest.len() < length {
        return None;
    }
    let header = input.len() - rest.len();
    let (contents, rest) = rest.split_at(length);
    Some((
        Element {
            tag,
            whole: &input[..header + length],
            contents,
        },
        rest,
    ))
}

const SEQUENCE: u8 = 0x30;
/// `[0] EXPLICIT Version` of a TBSCertificate.
const VERSION: u8 = 0xa0;

/// The DER SubjectPublicKeyInfo of a DER X.509 certificate (RFC 5280 §4.1): the seventh field
/// of the TBSCertificate when the version is present, the sixth otherwise.
pub fn subject_public_key_info(cert: &[u8]) -> Option<&[u8]> {
    let (certificate, _) = element(cert)?;
    if certificate.tag != SEQUENCE {
        return None;
    }
    let (tbs, _) = element(certificate.contents)?;
    if tbs.tag != SEQUENCE {
        return None;
    }
    let mut fields = tbs.contents;
    let (first, rest) = element(fields)?;
    if first.tag == VERSION {
        fields = rest;
    }
    // serialNumber, signature, issuer, validity, subject
    for _ in 0..5 {
        fields = element(fields)?.1;
    }
    let (spki, _) = element(fields)?;
    (spki.tag == SEQUENCE).then_some(spki.whole)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certificate() -> (Vec<u8>, Vec<u8>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["mx.example".into()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        (
            cert.der().to_vec(),
            rcgen::PublicKeyData::subject_public_key_info(&key),
        )
    }

    fn record(usage: u8, selector: u8, matching: u8, data: &[u8]) -> Tlsa {
        Tlsa {
            usage,
            selector,
            matching,
            data: data.to_vec(),
        }
    }

    #[test]
    fn finds_the_public_key_of_a_certificate() {
        let (cert, spki) = certificate();
        assert_eq!(subject_public_key_info(&cert), Some(spki.as_slice()));
    }

    #[test]
    fn malformed_certificates_have_no_key() {
        let (cert, _) = certificate();
        for cut in [0, 1, 2, 10, cert.len() / 2, cert.len() - 1] {
            let _ = subject_public_key_info(&cert[..cut]);
        }
        assert_eq!(subject_public_key_info(&[]), None);
        assert_eq!(subject_public_key_info(&[0x30, 0x84, 0xff, 0xff]), None);
        assert_eq!(subject_public_key_info(&[0x02, 0x01, 0x00]), None);
    }

    #[test]
    fn each_selector_and_matching_type_matches_its_certificate_only() {
        let (cert, spki) = certificate();
        let (other, _) = certificate();
        let sha256 = |b: &[u8]| digest::digest(&digest::SHA256, b).as_ref().to_vec();
        let sha512 = |b: &[u8]| digest::digest(&digest::SHA512, b).as_ref().to_vec();
        let records = [
            record(3, 0, 0, &cert),
            record(3, 0, 1, &sha256(&cert)),
            record(3, 0, 2, &sha512(&cert)),
            record(3, 1, 0, &spki),
            record(3, 1, 1, &sha256(&spki)),
            record(2, 1, 2, &sha512(&spki)),
        ];
        for r in &records {
            assert!(r.usable(), "{r:?}");
            assert!(r.matches(&cert), "{r:?}");
            assert!(!r.matches(&other), "{r:?}");
        }
    }

    #[test]
    fn pkix_usages_unknown_types_and_wrong_lengths_are_unusable() {
        let digest = [7u8; 32];
        assert!(!record(0, 1, 1, &digest).usable());
        assert!(!record(1, 1, 1, &digest).usable());
        assert!(!record(4, 1, 1, &digest).usable());
        assert!(!record(3, 2, 1, &digest).usable());
        assert!(!record(3, 1, 3, &digest).usable());
        assert!(!record(3, 1, 1, &digest[..31]).usable());
        assert!(!record(3, 1, 2, &digest).usable());
        assert!(!record(3, 0, 0, &[]).usable());
        assert!(record(3, 1, 1, &digest).usable());
    }
}
