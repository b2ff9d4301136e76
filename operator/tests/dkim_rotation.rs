//! The DKIM rotation state machine, with injected time, and the DNS records it yields.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use postern_operator::api::{DkimKeyState, DkimKeyStatus, DkimKeyType, DkimSpec, Domain};
use postern_operator::domain::dkim::{Plan, plan};
use postern_operator::domain::records::{records, split};

fn at(day: i64) -> Timestamp {
    let start: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
    start + SignedDuration::from_hours(24 * day)
}

fn spec(rotate_every: Option<&str>) -> DkimSpec {
    DkimSpec {
        algorithms: vec![DkimKeyType::Ed25519],
        rotate_every: rotate_every.map(String::from),
        ..DkimSpec::default()
    }
}

/// Applies a plan the way the reconciler does: new keys start pending.
fn apply(plan: Plan, now: Timestamp) -> Vec<DkimKeyStatus> {
    let mut keys = plan.keys;
    for (selector, algorithm) in plan.create {
        keys.push(DkimKeyStatus {
            selector,
            algorithm,
            state: DkimKeyState::Pending,
            public_key: "AAAA".into(),
            created: Time(now),
            activated: None,
            retire_at: None,
        });
    }
    keys
}

fn states(keys: &[DkimKeyStatus]) -> Vec<(String, DkimKeyState)> {
    keys.iter().map(|k| (k.selector.clone(), k.state)).collect()
}

fn seen(selectors: &[&str]) -> BTreeSet<String> {
    selectors.iter().map(|s| s.to_string()).collect()
}

#[test]
fn a_new_key_is_published_first_and_signs_only_once_dns_serves_it() {
    let none = BTreeSet::new();
    let keys = apply(plan(&spec(None), &[], &none, &none, at(0)).unwrap(), at(0));
    assert_eq!(
        states(&keys),
        [("postern-ed25519-20260101".into(), DkimKeyState::Pending)]
    );
    // DNS does not serve it yet: nothing changes, nothing new is made.
    let again = plan(&spec(None), &keys, &none, &none, at(1)).unwrap();
    assert!(again.create.is_empty());
    assert_eq!(states(&again.keys), states(&keys));
    // DNS serves it: it signs.
    let keys = apply(
        plan(
            &spec(None),
            &keys,
            &seen(&["postern-ed25519-20260101"]),
            &none,
            at(2),
        )
        .unwrap(),
        at(2),
    );
    assert_eq!(
        states(&keys),
        [("postern-ed25519-20260101".into(), DkimKeyState::Active)]
    );
    assert_eq!(keys[0].activated, Some(Time(at(2))));
    // Without rotateEvery it signs for ever.
    let later = plan(&spec(None), &keys, &none, &none, at(900)).unwrap();
    assert!(later.create.is_empty());
}

#[test]
fn rotation_publishes_switches_after_dns_and_retires_after_the_grace_period() {
    let none = BTreeSet::new();
    let spec = spec(Some("90d"));
    let keys = apply(plan(&spec, &[], &none, &none, at(0)).unwrap(), at(0));
    let old = "postern-ed25519-20260101";
    let keys = apply(
        plan(&spec, &keys, &seen(&[old]), &none, at(0)).unwrap(),
        at(0),
    );

    // Day 89: not due.
    assert!(
        plan(&spec, &keys, &none, &none, at(89))
            .unwrap()
            .create
            .is_empty()
    );
    // Day 90: a new key is published; the old one still signs.
    let keys = apply(plan(&spec, &keys, &none, &none, at(90)).unwrap(), at(90));
    let new = "postern-ed25519-20260401";
    assert_eq!(
        states(&keys),
        [
            (old.into(), DkimKeyState::Active),
            (new.into(), DkimKeyState::Pending)
        ]
    );
    // Until DNS serves the new record, the old key keeps signing and no third key appears.
    let waiting = plan(&spec, &keys, &none, &none, at(95)).unwrap();
    assert!(waiting.create.is_empty());
    assert_eq!(states(&waiting.keys), states(&keys));
    // Day 96: DNS serves it; signing switches, the old key retires in 7 days.
    let keys = apply(
        plan(&spec, &keys, &seen(&[new]), &none, at(96)).unwrap(),
        at(96),
    );
    assert_eq!(
        states(&keys),
        [
            (old.into(), DkimKeyState::Retiring),
            (new.into(), DkimKeyState::Active)
        ]
    );
    assert_eq!(keys[0].retire_at, Some(Time(at(103))));
    // Still published on day 102, gone on day 103.
    let day102 = plan(&spec, &keys, &none, &none, at(102)).unwrap();
    assert_eq!(day102.keys.len(), 2);
    let day103 = plan(&spec, &keys, &none, &none, at(103)).unwrap();
    assert_eq!(states(&day103.keys), [(new.into(), DkimKeyState::Active)]);
    assert!(day103.create.is_empty());
}

#[test]
fn removing_an_algorithm_retires_its_keys_and_selectors_never_repeat() {
    let none = BTreeSet::new();
    let both = DkimSpec::default();
    let keys = apply(plan(&both, &[], &none, &none, at(0)).unwrap(), at(0));
    assert_eq!(keys.len(), 2);
    let rsa_only = DkimSpec {
        algorithms: vec![DkimKeyType::Rsa2048],
        ..DkimSpec::default()
    };
    let next = plan(&rsa_only, &keys, &none, &none, at(1)).unwrap();
    let ed = next
        .keys
        .iter()
        .find(|k| k.algorithm == DkimKeyType::Ed25519)
        .unwrap();
    assert_eq!(ed.state, DkimKeyState::Retiring);
    assert!(next.create.is_empty(), "the pending RSA key is kept");

    // A selector already in the Secret is never reused.
    let reserved = seen(&["postern-ed25519-20260101"]);
    let fresh = plan(&spec(None), &[], &none, &reserved, at(0)).unwrap();
    assert_eq!(fresh.create[0].0, "postern-ed25519-20260101-2");
}

#[test]
fn a_bad_duration_names_the_field() {
    let err = plan(
        &spec(Some("90 days")),
        &[],
        &BTreeSet::new(),
        &BTreeSet::new(),
        at(0),
    )
    .unwrap_err();
    assert_eq!(err.field, "spec.dkim.rotateEvery");
}

#[test]
fn records_for_the_example_domain() {
    let mut domain: Domain = serde_saphyr::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/domain.yaml"
        ))
        .unwrap(),
    )
    .unwrap();
    domain.metadata.uid = Some("uid".into());
    let key = DkimKeyStatus {
        selector: "postern-rsa-20261128".into(),
        algorithm: DkimKeyType::Rsa2048,
        state: DkimKeyState::Active,
        public_key: "M".repeat(392),
        created: Time(at(0)),
        activated: None,
        retire_at: None,
    };
    let records = records(&domain, &[key]);
    let by_purpose = |p: &str| records.iter().find(|r| r.purpose == p).unwrap();
    assert_eq!(by_purpose("spf").name, "example.com");
    assert_eq!(
        by_purpose("spf").value,
        "v=spf1 ip4:203.0.113.10 ip6:2001:db8::/64 include:_spf.example.net -all"
    );
    assert_eq!(by_purpose("dmarc").name, "_dmarc.example.com");
    assert_eq!(
        by_purpose("dmarc").value,
        "v=DMARC1; p=quarantine; rua=mailto:dmarc-reports@example.com"
    );
    assert_eq!(by_purpose("mta-sts").value, "v=STSv1; id=20261128");
    assert_eq!(by_purpose("tls-rpt").name, "_smtp._tls.example.com");
    let dkim = by_purpose("dkim");
    assert_eq!(dkim.name, "postern-rsa-20261128._domainkey.example.com");
    assert!(dkim.value.len() > 255);
    assert_eq!(dkim.strings.len(), 2);
    assert!(dkim.strings.iter().all(|s| s.len() <= 255));
    assert_eq!(dkim.strings.concat(), dkim.value);
}

#[test]
fn txt_values_split_into_255_byte_strings() {
    assert_eq!(split(""), [""]);
    assert_eq!(split(&"a".repeat(255)), ["a".repeat(255)]);
    assert_eq!(split(&"a".repeat(256)), ["a".repeat(255), "a".to_string()]);
    assert_eq!(split(&"a".repeat(600)).len(), 3);
}
