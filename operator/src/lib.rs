//! Postern's Kubernetes operator: the `Relay` and `Domain` custom resources and their
//! reconcilers, each a pipeline of stages (dereference → validate → build → apply → status).

pub mod admin;
pub mod api;
pub mod apply;
pub mod conditions;
pub mod context;
pub mod domain;
pub mod leader;
pub mod meta;
pub mod rbac;
pub mod relay;
pub mod run;
pub mod status;
