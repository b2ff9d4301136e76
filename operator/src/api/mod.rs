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

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use kube::CustomResourceExt;

/// API group of Postern's custom resources.
pub const GROUP: &str = "postern.io";

/// Both CRDs, Relay first, with only `format` values the Kubernetes API server knows.
pub fn crds() -> Vec<CustomResourceDefinition> {
    let mut crds = vec![Relay::crd(), Domain::crd()];
    for crd in &mut crds {
        for version in &mut crd.spec.versions {
            if let Some(schema) = version
                .schema
                .as_mut()
                .and_then(|s| s.open_api_v3_schema.as_mut())
            {
                standard_formats(schema);
            }
        }
    }
    crds
}

/// Rewrites the unsigned integer formats schemars emits (`uint8` ... `uint64`) as the signed
/// format that holds them, with the unsigned type's range as `minimum` / `maximum`.
fn standard_formats(schema: &mut JSONSchemaProps) {
    let unsigned = match schema.format.as_deref() {
        Some("uint8") => Some(("int32", Some(f64::from(u8::MAX)))),
        Some("uint16") => Some(("int32", Some(f64::from(u16::MAX)))),
        Some("uint32") => Some(("int64", Some(f64::from(u32::MAX)))),
        Some("uint64" | "uint") => Some(("int64", None)),
        _ => None,
    };
    if let Some((format, max)) = unsigned {
        schema.format = Some(format.into());
        let min = schema.minimum.unwrap_or(0.0).max(0.0);
        schema.minimum = Some(min);
        schema.maximum = match (schema.maximum, max) {
            (Some(given), Some(max)) => Some(given.min(max)),
            (given, max) => given.or(max),
        };
    }
    let children = schema
        .properties
        .iter_mut()
        .flat_map(|p| p.values_mut())
        .chain(schema.items.iter_mut().flat_map(|items| match items {
            JSONSchemaPropsOrArray::Schema(one) => std::slice::from_mut(one.as_mut()),
            JSONSchemaPropsOrArray::Schemas(many) => many.as_mut_slice(),
        }))
        .chain(
            schema
                .additional_properties
                .iter_mut()
                .filter_map(|a| match a {
                    JSONSchemaPropsOrBool::Schema(one) => Some(one.as_mut()),
                    JSONSchemaPropsOrBool::Bool(_) => None,
                }),
        )
        .chain(schema.all_of.iter_mut().flatten())
        .chain(schema.any_of.iter_mut().flatten())
        .chain(schema.one_of.iter_mut().flatten());
    for child in children {
        standard_formats(child);
    }
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
