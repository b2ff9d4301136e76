//! The DKIM key Secret (`<domain>-dkim`) is the source of truth for a Domain's keys: it holds
//! each private key (`<selector>.pem`) and, in an annotation, each key's state. Status only
//! mirrors it.
//!
//! The reconciler reads the Secret from the API server (never from a cache) and writes it back
//! with the resourceVersion it read, so a concurrent writer makes the write fail with 409
//! instead of being overwritten. A key is removed only when the state in the Secret says it
//! retired; files the state does not describe are kept.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::PostParams;
use kube::{Api, ResourceExt};

use crate::api::{DkimKeyState, DkimKeyStatus, DkimKeyType, Domain};
use crate::relay::names::{dkim_key_file, dkim_secret_name};

/// Annotation of the key Secret holding the keys' state as JSON.
pub const KEYS_ANNOTATION: &str = "postern.io/dkim-keys";

/// Why the key Secret could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum KeyStoreError {
    #[error(
        "Secret {name}: annotation {KEYS_ANNOTATION} is not a list of keys ({message}); fix or remove it, keys are left as they are"
    )]
    State { name: String, message: String },
    #[error("Secret {name} changed while it was being written; reading it again")]
    Conflict { name: String },
    #[error("Secret {name}: {source}")]
    Kube { name: String, source: kube::Error },
}

/// A key that signs, with its private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveKey {
    pub selector: String,
    pub algorithm: DkimKeyType,
    /// PKCS#8 PEM.
    pub pem: Vec<u8>,
}

/// The keys of one Domain as its Secret holds them.
#[derive(Debug, Clone)]
pub struct KeyStore {
    name: String,
    live: Option<Secret>,
    data: BTreeMap<String, ByteString>,
    keys: Vec<DkimKeyStatus>,
    /// Keys the state lists whose private key is not in the Secret.
    lost: Vec<String>,
}

impl KeyStore {
    /// Reads the Domain's key Secret from the API server.
    pub async fn read(api: &Api<Secret>, domain: &Domain) -> Result<KeyStore, KeyStoreError> {
        let name = dkim_secret_name(domain);
        let live = api
            .get_opt(&name)
            .await
            .map_err(|source| KeyStoreError::Kube {
                name: name.clone(),
                source,
            })?;
        let legacy = domain
            .status
            .as_ref()
            .map(|s| s.dkim_keys.as_slice())
            .unwrap_or_default();
        KeyStore::from_secret(name, live, legacy)
    }

    /// The store `live` describes. A Secret written before states were kept in it takes its
    /// state from `legacy` (the Domain's status), for the keys whose files it holds.
    pub fn from_secret(
        name: String,
        live: Option<Secret>,
        legacy: &[DkimKeyStatus],
    ) -> Result<KeyStore, KeyStoreError> {
        let data = live
            .as_ref()
            .and_then(|s| s.data.clone())
            .unwrap_or_default();
        let state = live
            .as_ref()
            .and_then(|s| s.annotations().get(KEYS_ANNOTATION).cloned());
        let listed: Vec<DkimKeyStatus> = match state {
            Some(json) => serde_json::from_str(&json).map_err(|e| KeyStoreError::State {
                name: name.clone(),
                message: e.to_string(),
            })?,
            None => legacy.to_vec(),
        };
        let (keys, lost): (Vec<_>, Vec<_>) = listed
            .into_iter()
            .partition(|k| data.contains_key(&dkim_key_file(&k.selector)));
        Ok(KeyStore {
            name,
            live,
            data,
            keys,
            lost: lost.into_iter().map(|k| k.selector).collect(),
        })
    }

    /// Keys whose private key is in the Secret, with their state.
    pub fn keys(&self) -> &[DkimKeyStatus] {
        &self.keys
    }

    /// The active keys with their PEM: what signs.
    pub fn active(&self) -> Vec<ActiveKey> {
        self.keys
            .iter()
            .filter(|k| k.state == DkimKeyState::Active)
            .filter_map(|k| {
                let pem = self.data.get(&dkim_key_file(&k.selector))?;
                Some(ActiveKey {
                    selector: k.selector.clone(),
                    algorithm: k.algorithm,
                    pem: pem.0.clone(),
                })
            })
            .collect()
    }

    /// Selectors the state lists whose private key is gone from the Secret.
    pub fn lost(&self) -> &[String] {
        &self.lost
    }

    /// Names a new key must not take: every key the Secret holds or its state lists.
    pub fn reserved(&self) -> BTreeSet<String> {
        self.data
            .keys()
            .map(|file| file.trim_end_matches(".pem").to_string())
            .chain(self.lost.iter().cloned())
            .collect()
    }

    /// Takes the next state: `keys` (each either held already or in `created` with its PEM).
    /// Files of keys that were held and are not in `keys` are removed; nothing else is.
    pub fn update(&mut self, keys: Vec<DkimKeyStatus>, created: Vec<(String, String)>) {
        for (selector, pem) in created {
            self.data
                .insert(dkim_key_file(&selector), ByteString(pem.into_bytes()));
        }
        let kept: BTreeSet<&str> = keys.iter().map(|k| k.selector.as_str()).collect();
        for gone in self
            .keys
            .iter()
            .filter(|k| !kept.contains(k.selector.as_str()))
        {
            self.data.remove(&dkim_key_file(&gone.selector));
        }
        self.keys = keys;
    }

    /// Writes the Secret if it changed: created when there was none, else replaced with the
    /// resourceVersion it was read at. Returns whether it wrote.
    pub async fn write(
        &mut self,
        api: &Api<Secret>,
        domain: &Domain,
    ) -> Result<bool, KeyStoreError> {
        let state = serde_json::to_string(&self.keys).map_err(|e| KeyStoreError::State {
            name: self.name.clone(),
            message: e.to_string(),
        })?;
        if let Some(live) = &self.live
            && live.data.clone().unwrap_or_default() == self.data
            && live.annotations().get(KEYS_ANNOTATION) == Some(&state)
        {
            return Ok(false);
        }
        // Labels and annotations others put on the Secret stay; the resourceVersion read is
        // the precondition of the write.
        let mut metadata = match &self.live {
            Some(live) => ObjectMeta {
                managed_fields: None,
                ..live.metadata.clone()
            },
            None => crate::meta::owned_meta(domain, self.name.clone(), "dkim"),
        };
        metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(KEYS_ANNOTATION.into(), state);
        let secret = Secret {
            metadata,
            type_: Some("Opaque".into()),
            data: Some(self.data.clone()),
            ..Secret::default()
        };
        let params = PostParams::default();
        let written = match &self.live {
            Some(_) => api.replace(&self.name, &params, &secret).await,
            None => api.create(&params, &secret).await,
        };
        match written {
            Ok(secret) => {
                self.live = Some(secret);
                Ok(true)
            }
            Err(err) if crate::apply::is_status(&err, 409) => Err(KeyStoreError::Conflict {
                name: self.name.clone(),
            }),
            Err(source) => Err(KeyStoreError::Kube {
                name: self.name.clone(),
                source,
            }),
        }
    }
}
