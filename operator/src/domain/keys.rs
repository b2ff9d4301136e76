//! The keys stage of the Domain reconciler: pending keys that DNS serves become active, others
//! retire, new ones are made per the spec, and the key Secret is written (with its
//! resourceVersion) before anything is announced.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::Api;

use super::keystore::KeyStore;
use super::verify::{self, Check};
use super::{DomainError, dkim, records};
use crate::api::{DkimKeyState, DkimKeyStatus, DnsRecord, Domain};
use crate::context::Context;

/// The keys after this reconcile, as the Secret now holds them; or the spec's error.
pub async fn rotate(
    ctx: &Context,
    domain: &Domain,
    store: &mut KeyStore,
    secrets: &Api<Secret>,
    now: Timestamp,
) -> Result<Result<Vec<DkimKeyStatus>, dkim::PlanError>, DomainError> {
    let pending: Vec<DkimKeyStatus> = store
        .keys()
        .iter()
        .filter(|k| k.state == DkimKeyState::Pending)
        .cloned()
        .collect();
    let pending_records: Vec<DnsRecord> = records::records(domain, &pending)
        .into_iter()
        .filter(|r| r.purpose == "dkim")
        .collect();
    let seen: BTreeSet<String> = verify::verify(ctx.dns.as_ref(), &pending_records)
        .await
        .into_iter()
        .zip(&pending_records)
        .filter(|(check, _)| *check == Check::Matches)
        .filter_map(|(_, record)| record.name.split('.').next().map(String::from))
        .collect();
    let plan = match dkim::plan(
        &domain.spec.dkim,
        store.keys(),
        &seen,
        &store.reserved(),
        now,
    ) {
        Ok(plan) => plan,
        Err(err) => return Ok(Err(err)),
    };
    let mut keys = plan.keys;
    let mut created = Vec::new();
    for (selector, algorithm) in plan.create {
        let generated = dkim::generate(algorithm)?;
        keys.push(DkimKeyStatus {
            selector: selector.clone(),
            algorithm,
            state: DkimKeyState::Pending,
            public_key: generated.public_key,
            created: Time(now),
            activated: None,
            retire_at: None,
        });
        created.push((selector, generated.pem));
    }
    let held = store.keys().to_vec();
    store.update(keys.clone(), created);
    // Events only once the Secret holds what they announce.
    store.write(secrets, domain).await?;
    for key in &keys {
        let was = held
            .iter()
            .find(|k| k.selector == key.selector)
            .map(|k| k.state);
        match (was, key.state) {
            (None, _) => {
                let message = format!(
                    "new {} key {}; it signs once DNS serves its record",
                    key.algorithm.label(),
                    key.selector
                );
                ctx.event(domain, false, "DkimKeyCreated", message).await;
            }
            (Some(DkimKeyState::Pending), DkimKeyState::Active) => {
                let message = format!("DNS serves {}; it signs from now on", key.selector);
                ctx.event(domain, false, "DkimKeyActive", message).await;
            }
            _ => {}
        }
    }
    Ok(Ok(keys))
}

/// `DkimReady`: every algorithm of the spec has an active key.
pub fn readiness(domain: &Domain, keys: &[DkimKeyStatus]) -> (bool, &'static str, String) {
    let selectors = |state| {
        keys.iter()
            .filter(|k| k.state == state)
            .map(|k| k.selector.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let missing: Vec<&str> = domain
        .spec
        .dkim
        .algorithms
        .iter()
        .filter(|a| {
            !keys
                .iter()
                .any(|k| k.algorithm == **a && k.state == DkimKeyState::Active)
        })
        .map(|a| a.label())
        .collect();
    if missing.is_empty() {
        let message = format!("signing with {}", selectors(DkimKeyState::Active));
        (true, "Signing", message)
    } else {
        let message = format!(
            "no active {} key: selector(s) {} sign once DNS serves their records",
            missing.join(" or "),
            selectors(DkimKeyState::Pending)
        );
        (false, "AwaitingDns", message)
    }
}
