//! Status conditions with honest transition times.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

/// Sets the condition of type `kind`; its `lastTransitionTime` moves only when its status does.
pub fn set(
    conditions: &mut Vec<Condition>,
    kind: &str,
    ok: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
    now: Timestamp,
) {
    let status = if ok { "True" } else { "False" };
    set_status(conditions, kind, status, reason, message, generation, now);
}

/// [`set`] with any status, such as `Unknown` while a check is under way.
pub fn set_status(
    conditions: &mut Vec<Condition>,
    kind: &str,
    status: &str,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
    now: Timestamp,
) {
    let message = message.into();
    match conditions.iter_mut().find(|c| c.type_ == kind) {
        Some(condition) => {
            if condition.status != status {
                condition.last_transition_time = Time(now);
            }
            condition.status = status.into();
            condition.reason = reason.into();
            condition.message = message;
            condition.observed_generation = generation;
        }
        None => conditions.push(Condition {
            type_: kind.into(),
            status: status.into(),
            reason: reason.into(),
            message,
            observed_generation: generation,
            last_transition_time: Time(now),
        }),
    }
}

/// Conditions whose status differs between `before` and `after`, as `(type, now true)`.
pub fn transitions(before: &[Condition], after: &[Condition]) -> Vec<(String, bool)> {
    after
        .iter()
        .filter(|a| {
            before
                .iter()
                .find(|b| b.type_ == a.type_)
                .is_none_or(|b| b.status != a.status)
        })
        .map(|a| (a.type_.clone(), a.status == "True"))
        .collect()
}

/// Sets conditions for one reconcile: the resource's generation and the time are fixed.
#[derive(Debug, Clone, Copy)]
pub struct Setter {
    pub generation: Option<i64>,
    pub now: Timestamp,
}

impl Setter {
    /// See [`set`].
    pub fn set(
        &self,
        conditions: &mut Vec<Condition>,
        kind: &str,
        ok: bool,
        reason: &str,
        message: impl Into<String>,
    ) {
        set(
            conditions,
            kind,
            ok,
            reason,
            message,
            self.generation,
            self.now,
        );
    }
}

impl Setter {
    /// Sets the condition of type `kind` to `Unknown`: a check has not finished.
    pub fn unknown(
        &self,
        conditions: &mut Vec<Condition>,
        kind: &str,
        reason: &str,
        message: impl Into<String>,
    ) {
        set_status(
            conditions,
            kind,
            "Unknown",
            reason,
            message,
            self.generation,
            self.now,
        );
    }

    /// Sets `Ready`: True with `ready_message` when nothing is `waiting`, else False listing it.
    pub fn ready(
        &self,
        conditions: &mut Vec<Condition>,
        waiting: &[String],
        ready_message: String,
    ) {
        if waiting.is_empty() {
            self.set(conditions, "Ready", true, "Ready", ready_message);
        } else {
            let message = format!("waiting for: {}", waiting.join(", "));
            self.set(conditions, "Ready", false, "NotReady", message);
        }
    }
}
