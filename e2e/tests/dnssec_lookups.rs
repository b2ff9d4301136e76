//! The validating lookups DANE uses, against the signed DNS server of the harness over UDP on
//! loopback: what hickory's validating resolver makes of signed, unsigned, bogus and stripped
//! answers, with the harness's root key as the only trust anchor.

#![allow(clippy::unwrap_used)] // a test that cannot set up may panic
use std::net::IpAddr;

use postern_dns::{Exchangers, SecureDns, SecureFailure};
use postern_e2e::dnssec::SignedDns;

async fn zones() -> (SignedDns, SecureDns, tempfile::TempDir) {
    let dns = SignedDns::start(&["signed.test"], &["plain.test"]).await;
    let ip: IpAddr = "127.0.0.1".parse().unwrap();
    dns.mx("signed.test", 10, "mx.signed.test");
    dns.address("mx.signed.test", ip);
    dns.tlsa("_25._tcp.mx.signed.test", 3, 1, 1, vec![7; 32]);
    dns.address("other.signed.test", ip);
    dns.mx("plain.test", 10, "mx.plain.test");
    dns.address("mx.plain.test", ip);
    dns.tlsa("_25._tcp.mx.plain.test", 3, 1, 1, vec![7; 32]);
    let dir = tempfile::tempdir().unwrap();
    let anchor = dir.path().join("anchor");
    std::fs::write(&anchor, dns.trust_anchor()).unwrap();
    let resolver = SecureDns::new(&[dns.addr], Some(&anchor)).unwrap();
    (dns, resolver, dir)
}

#[tokio::test]
async fn signed_answers_are_secure() {
    let (_dns, resolver, _dir) = zones().await;
    resolver.probe(".").await.unwrap();
    resolver.probe("signed.test").await.unwrap();
    let mx = resolver.exchangers("signed.test", 1).await.unwrap();
    assert!(mx.secure);
    assert_eq!(mx.value, Exchangers::Hosts(vec!["mx.signed.test".into()]));
    let addresses = resolver.addresses("mx.signed.test").await.unwrap();
    assert!(addresses.secure);
    assert_eq!(
        addresses.value,
        vec!["127.0.0.1".parse::<IpAddr>().unwrap()]
    );
    let tlsa = resolver.tlsa("_25._tcp.mx.signed.test").await.unwrap();
    assert!(tlsa.secure);
    assert_eq!(tlsa.value, vec![(3, 1, 1, vec![7; 32])]);
}

#[tokio::test]
async fn signed_denials_are_empty_answers() {
    let (_dns, resolver, _dir) = zones().await;
    // No TLSA at a name that does not exist, and none at a name that has other records.
    let none = resolver.tlsa("_25._tcp.other.signed.test").await.unwrap();
    assert!(none.value.is_empty());
    let nodata = resolver.tlsa("other.signed.test").await.unwrap();
    assert!(nodata.value.is_empty());
    assert_eq!(
        resolver.addresses("missing.signed.test").await,
        Err(SecureFailure::NxDomain)
    );
}

#[tokio::test]
async fn answers_from_an_unsigned_zone_are_insecure() {
    let (_dns, resolver, _dir) = zones().await;
    let mx = resolver.exchangers("plain.test", 1).await.unwrap();
    assert!(!mx.secure);
    assert_eq!(mx.value, Exchangers::Hosts(vec!["mx.plain.test".into()]));
    let tlsa = resolver.tlsa("_25._tcp.mx.plain.test").await.unwrap();
    assert!(!tlsa.secure, "records DNSSEC does not vouch for");
}

#[tokio::test]
async fn broken_signatures_are_bogus() {
    let (dns, resolver, _dir) = zones().await;
    dns.break_signatures("_25._tcp.mx.signed.test");
    let tlsa = resolver.tlsa("_25._tcp.mx.signed.test").await;
    assert!(matches!(tlsa, Err(SecureFailure::Bogus(_))), "{tlsa:?}");
    // The rest of the zone still validates.
    assert!(resolver.addresses("mx.signed.test").await.unwrap().secure);
}

#[tokio::test]
async fn an_upstream_that_strips_signatures_fails_the_probe() {
    let (dns, resolver, _dir) = zones().await;
    dns.strip_dnssec(true);
    let probe = resolver.probe("signed.test").await;
    assert!(probe.is_err(), "{probe:?}");
}

#[tokio::test]
async fn the_built_in_root_keys_do_not_trust_a_test_root() {
    let (dns, _resolver, _dir) = zones().await;
    let resolver = SecureDns::new(&[dns.addr], None).unwrap();
    let probe = resolver.probe(".").await;
    assert!(probe.is_err(), "{probe:?}");
}

#[test]
fn a_trust_anchor_file_without_keys_is_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("anchor");
    std::fs::write(&path, "; nothing here\n").unwrap();
    let err = SecureDns::new(&["127.0.0.1:53".parse().unwrap()], Some(&path)).unwrap_err();
    assert!(
        err.to_string().contains("delivery.dane.trustAnchorFile"),
        "{err}"
    );
    let missing = SecureDns::new(
        &["127.0.0.1:53".parse().unwrap()],
        Some(&dir.path().join("absent")),
    )
    .unwrap_err();
    assert!(
        missing
            .to_string()
            .contains("delivery.dane.trustAnchorFile"),
        "{missing}"
    );
}
