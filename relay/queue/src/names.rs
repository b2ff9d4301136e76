//! Every stream, subject, bucket and consumer name of the queue, in one place: ingress,
//! delivery, the admin commands, the operator and the test harness all take them from here.

use postern_config::NatsConfig;

use crate::entry::domain_token;

/// `<prefix>.<domain>`: an entry due now. Delivery's consumer reads only these.
pub fn ready_subject(prefix: &str, domain: &str) -> String {
    format!("{prefix}.{}", domain_token(domain))
}

/// What delivery's consumer reads: the ready subjects and nothing deeper.
pub fn ready_filter(prefix: &str) -> String {
    format!("{prefix}.*")
}

/// Every subject of the queue stream.
pub fn queue_subjects(prefix: &str) -> String {
    format!("{prefix}.>")
}

/// `<prefix>.wait.<domain>.<id tokens>`: an entry scheduled for later, filed by destination
/// domain so that one domain's waiting mail is found without reading the rest.
pub fn wait_subject(prefix: &str, domain: &str, id: &str) -> String {
    let id = id.replace(
        |c: char| !c.is_ascii_alphanumeric() && c != '-' && c != '_',
        ".",
    );
    format!("{prefix}.wait.{}.{id}", domain_token(domain))
}

/// Every waiting entry of `domain`.
pub fn wait_filter(prefix: &str, domain: &str) -> String {
    format!("{prefix}.wait.{}.>", domain_token(domain))
}

/// `<prefix>.hold.<domain>.<queue id>.<sequence>`: an entry held by an administrator.
pub fn hold_subject(prefix: &str, domain: &str, queue_id: &str, sequence: u64) -> String {
    format!(
        "{prefix}.hold.{}.{queue_id}.{sequence}",
        domain_token(domain)
    )
}

/// Every held entry of `domain`.
pub fn hold_filter(prefix: &str, domain: &str) -> String {
    format!("{prefix}.hold.{}.>", domain_token(domain))
}

/// The stream of dead letters.
pub fn dead_letter_stream(config: &NatsConfig) -> String {
    format!("{}_DEAD", config.stream)
}

/// The subject prefix of dead letters: `<prefix>_dead.<the entry's subject after prefix>`.
pub fn dead_letter_prefix(config: &NatsConfig) -> String {
    format!("{}_dead", config.subject_prefix)
}

/// The bucket of destination states.
pub fn destination_bucket(config: &NatsConfig) -> String {
    format!("{}_DESTINATIONS", config.stream)
}

/// The bucket of connection leases.
pub fn lease_bucket(config: &NatsConfig) -> String {
    format!("{}_LEASES", config.stream)
}

/// The bucket of MTA-STS policies.
pub fn mta_sts_bucket(config: &NatsConfig) -> String {
    format!("{}_MTA_STS", config.stream)
}

/// The bucket of TLS report tallies.
pub fn tls_rpt_bucket(config: &NatsConfig) -> String {
    format!("{}_TLSRPT", config.stream)
}

/// The stream of delivery events.
pub fn events_stream(config: &NatsConfig) -> String {
    format!("{}_EVENTS", config.stream)
}

/// `<prefix>_events.<kind>`: one delivery event.
pub fn event_subject(config: &NatsConfig, kind: &str) -> String {
    format!("{}_events.{kind}", config.subject_prefix)
}

/// The bucket of the suppression list.
pub fn suppression_bucket(config: &NatsConfig) -> String {
    format!("{}_SUPPRESSED", config.stream)
}

/// The stream behind a KV bucket.
pub fn bucket_stream(bucket: &str) -> String {
    format!("KV_{bucket}")
}

/// `postern.bodies.<body stream>.<key>.<part>` (`data` or `refs`) of a stored body.
pub fn body_subject(body_stream: &str, key: &str, part: &str) -> String {
    format!("postern.bodies.{body_stream}.{key}.{part}")
}

/// Every subject of one stored body.
pub fn body_subjects(body_stream: &str, key: &str) -> String {
    format!("postern.bodies.{body_stream}.{key}.>")
}

/// Every subject of the body stream.
pub fn body_stream_subjects(body_stream: &str) -> String {
    format!("postern.bodies.{body_stream}.>")
}

/// The object store bucket (and its reference counts) of bodies written by earlier builds.
pub fn legacy_body_streams(body_stream: &str) -> [String; 2] {
    [
        format!("OBJ_{body_stream}"),
        format!("KV_{body_stream}_REFS"),
    ]
}
