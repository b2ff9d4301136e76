//! The custom resources Postern's operator reconciles: `Relay` and `Domain` (group `postern.io`).
//!
//! These types are the source of the CRDs in `crds/`; `postern-operator crds` prints them and a
//! test fails when the committed files drift from the code.

mod common;
mod domain;
mod relay;

pub use common::{RelayRef, SecretKeyRef, condition_status, is_condition_true};
pub use domain::*;
pub use relay::*;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// API group of Postern's custom resources.
pub const GROUP: &str = "postern.io";

/// Both CRDs, Relay first.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![Relay::crd(), Domain::crd()]
}

/// Each CRD as a YAML document named after the CRD, as committed in `crds/`.
pub fn crd_files() -> Result<Vec<(String, String)>, serde_saphyr::SerializeError> {
    crds()
        .into_iter()
        .map(|crd| {
            let name = format!("{}.yaml", crd.metadata.name.clone().unwrap_or_default());
            Ok((name, serde_saphyr::to_string(&crd)?))
        })
        .collect()
}
