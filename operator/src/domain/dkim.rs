//! DKIM keys: generation, and the rotation state machine as a pure function of the spec, the
//! keys in status, which selectors DNS already serves, and the time.
//!
//! A key is published first (pending), signs only once its record is seen in DNS (active), and
//! stays published for `retireAfter` once a newer key replaced it (retiring), then goes away.

use std::collections::BTreeSet;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp, tz::TimeZone};

use crate::api::{DkimKeyState, DkimKeyStatus, DkimKeyType, DkimSpec};

/// A new private key and the `p=` value of its record.
#[derive(Debug, Clone)]
pub struct GeneratedKey {
    /// PKCS#8 PEM.
    pub pem: String,
    /// Base64 public key for the `p=` tag.
    pub public_key: String,
}

/// A key that could not be made.
#[derive(Debug, thiserror::Error)]
#[error("generating a {algorithm} DKIM key: {message}")]
pub struct KeyError {
    algorithm: &'static str,
    message: String,
}

/// Makes a key pair of `algorithm`.
pub fn generate(algorithm: DkimKeyType) -> Result<GeneratedKey, KeyError> {
    let error = |message: String| KeyError {
        algorithm: algorithm.label(),
        message,
    };
    match algorithm {
        DkimKeyType::Ed25519 => {
            use ring::signature::KeyPair;
            let rng = ring::rand::SystemRandom::new();
            let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng)
                .map_err(|e| error(e.to_string()))?;
            let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
                .map_err(|e| error(e.to_string()))?;
            Ok(GeneratedKey {
                pem: pem("PRIVATE KEY", pkcs8.as_ref()),
                public_key: STANDARD.encode(pair.public_key().as_ref()),
            })
        }
        DkimKeyType::Rsa2048 => {
            use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
            let mut rng = rsa::rand_core::OsRng;
            let key = rsa::RsaPrivateKey::new(&mut rng, 2048).map_err(|e| error(e.to_string()))?;
            let pem = key
                .to_pkcs8_pem(LineEnding::LF)
                .map_err(|e| error(e.to_string()))?;
            let public = key
                .to_public_key()
                .to_public_key_der()
                .map_err(|e| error(e.to_string()))?;
            Ok(GeneratedKey {
                pem: pem.to_string(),
                public_key: STANDARD.encode(public.as_bytes()),
            })
        }
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// What the rotation decided.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Keys to keep, with their new states.
    pub keys: Vec<DkimKeyStatus>,
    /// Keys to make now, as `(selector, algorithm)`; they start pending.
    pub create: Vec<(String, DkimKeyType)>,
}

/// A duration in the spec that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct PlanError {
    pub field: &'static str,
    pub message: String,
}

/// The next state of a Domain's keys.
///
/// `seen` holds the selectors whose record DNS serves with the key's `p=` value; `reserved`
/// holds names a new selector must not take (keys already in the Secret).
pub fn plan(
    spec: &DkimSpec,
    keys: &[DkimKeyStatus],
    seen: &BTreeSet<String>,
    reserved: &BTreeSet<String>,
    now: Timestamp,
) -> Result<Plan, PlanError> {
    let retire_after = duration("spec.dkim.retireAfter", Some(&spec.retire_after))?
        .unwrap_or(SignedDuration::ZERO);
    let rotate_every = duration("spec.dkim.rotateEvery", spec.rotate_every.as_ref())?;
    let wanted: BTreeSet<DkimKeyType> = spec.algorithms.iter().copied().collect();
    let mut next: Vec<DkimKeyStatus> = Vec::new();
    let mut create = Vec::new();

    for algorithm in [DkimKeyType::Ed25519, DkimKeyType::Rsa2048] {
        let mut own: Vec<DkimKeyStatus> = keys
            .iter()
            .filter(|k| k.algorithm == algorithm)
            .cloned()
            .collect();
        // A pending key seen in DNS takes over; the keys it replaces retire.
        let promoted = own
            .iter()
            .filter(|k| k.state == DkimKeyState::Pending && seen.contains(&k.selector))
            .map(|k| k.selector.clone())
            .next_back();
        if let Some(selector) = &promoted {
            for key in &mut own {
                if &key.selector == selector {
                    key.state = DkimKeyState::Active;
                    key.activated = Some(Time(now));
                } else if key.state == DkimKeyState::Active {
                    retire(key, now, retire_after);
                }
            }
        }
        if !wanted.contains(&algorithm) {
            for key in &mut own {
                if key.state != DkimKeyState::Retiring {
                    retire(key, now, retire_after);
                }
            }
        }
        own.retain(|k| {
            k.state != DkimKeyState::Retiring || k.retire_at.as_ref().is_some_and(|t| t.0 > now)
        });
        if wanted.contains(&algorithm) {
            let pending = own.iter().any(|k| k.state == DkimKeyState::Pending);
            let active = own.iter().find(|k| k.state == DkimKeyState::Active);
            let due = match (active, rotate_every) {
                (None, _) => true,
                (Some(key), Some(every)) => {
                    key.activated.as_ref().unwrap_or(&key.created).0 + every <= now
                }
                (Some(_), None) => false,
            };
            if due && !pending {
                let taken: BTreeSet<&str> = keys
                    .iter()
                    .map(|k| k.selector.as_str())
                    .chain(reserved.iter().map(String::as_str))
                    .collect();
                create.push((
                    selector(&spec.selector_prefix, algorithm, now, &taken),
                    algorithm,
                ));
            }
        }
        next.extend(own);
    }
    Ok(Plan { keys: next, create })
}

fn retire(key: &mut DkimKeyStatus, now: Timestamp, after: SignedDuration) {
    key.state = DkimKeyState::Retiring;
    key.retire_at = Some(Time(now + after));
}

/// `<prefix>-<algorithm>-<yyyymmdd>`, with `-2`, `-3`... when that is taken.
fn selector(
    prefix: &str,
    algorithm: DkimKeyType,
    now: Timestamp,
    taken: &BTreeSet<&str>,
) -> String {
    let date = now.to_zoned(TimeZone::UTC).strftime("%Y%m%d").to_string();
    let base = format!("{prefix}-{}-{date}", algorithm.label());
    (1..)
        .map(|n| {
            if n == 1 {
                base.clone()
            } else {
                format!("{base}-{n}")
            }
        })
        .find(|candidate| !taken.contains(candidate.as_str()))
        .unwrap_or(base)
}

fn duration(
    field: &'static str,
    text: Option<&String>,
) -> Result<Option<SignedDuration>, PlanError> {
    text.map(|text| {
        postern_config::Duration::from_str(text)
            .map_err(|e| PlanError {
                field,
                message: e.to_string(),
            })
            .and_then(|d| {
                SignedDuration::try_from(d.get()).map_err(|e| PlanError {
                    field,
                    message: e.to_string(),
                })
            })
    })
    .transpose()
}
