//! `postern queue`: the queue administration commands. They talk to NATS only, with the
//! relay's config file, so they work from any pod or a laptop that reaches NATS.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use postern_config::Config;
use postern_smtp::{Reply, Status};
use serde_json::json;

use crate::delivery::dsn::{self, ReportedRecipient};
use postern_queue::destination::State;
use postern_queue::inspect::{self, Change, Found, Place, Selector};
use postern_queue::{Queue, QueueCounts};

/// One `postern queue` command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Summary,
    Show(String),
    Retry(Selector),
    Hold(Selector),
    Release(Selector),
    Bounce { selector: Selector, yes: bool },
    Delete { selector: Selector, yes: bool },
    DeadLetterList,
    DeadLetterRetry(Option<u64>),
}

/// How a command ended, as the process's exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 0.
    Done,
    /// 3: nothing matched.
    NothingMatched,
    /// 4: a destructive command was not confirmed with `--yes`; nothing was changed.
    NotConfirmed,
}

impl Outcome {
    pub fn code(self) -> u8 {
        match self {
            Outcome::Done => 0,
            Outcome::NothingMatched => 3,
            Outcome::NotConfirmed => 4,
        }
    }
}

/// Runs `action` against the queue of `config`, writing to `out` (JSON when `json`).
pub async fn run(
    config: &Config,
    action: &Action,
    json: bool,
    out: &mut dyn Write,
) -> anyhow::Result<Outcome> {
    let queue = connect(config, "postern-queue").await?;
    queue.attach().await?;
    let admin = Admin {
        queue,
        config,
        json,
    };
    admin.run(action, out).await
}

/// A connection to the queue's NATS for an admin command called `name`, as `nats.url` and the
/// credentials of `config` say.
pub(crate) async fn connect(config: &Config, name: &str) -> anyhow::Result<Queue> {
    let url = config
        .nats
        .url
        .as_deref()
        .ok_or_else(|| anyhow::anyhow!("nats.url: needed to reach the queue"))?;
    let options = async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(Duration::from_secs(5));
    let options = postern_queue::connect_options(&config.nats, options).await?;
    Ok(Queue::connect_with(url, &config.nats, Duration::from_secs(1), options).await?)
}

struct Admin<'a> {
    queue: Queue,
    config: &'a Config,
    json: bool,
}

impl Admin<'_> {
    async fn run(&self, action: &Action, out: &mut dyn Write) -> anyhow::Result<Outcome> {
        match action {
            Action::Summary => self.summary(out).await,
            Action::Show(id) => self.show(id, out).await,
            Action::Retry(selector) => {
                self.change(selector, "made due", out, |f| {
                    matches!(f.place, Place::Waiting | Place::Held)
                })
                .await
            }
            Action::Release(selector) => {
                self.change(selector, "released", out, |f| f.place == Place::Held)
                    .await
            }
            Action::Hold(selector) => {
                self.change(selector, "held", out, |f| f.place != Place::Held)
                    .await
            }
            Action::Delete { selector, yes } => self.destroy(selector, *yes, false, out).await,
            Action::Bounce { selector, yes } => self.destroy(selector, *yes, true, out).await,
            Action::DeadLetterList => self.dead_letters(out).await,
            Action::DeadLetterRetry(sequence) => self.retry_dead_letters(*sequence, out).await,
        }
    }

    async fn counts(&self) -> Option<QueueCounts> {
        let mut consumer = self
            .queue
            .existing_consumer(&self.config.delivery.consumer)
            .await
            .ok()?;
        self.queue.counts(&mut consumer).await.ok()
    }

    async fn summary(&self, out: &mut dyn Write) -> anyhow::Result<Outcome> {
        let counts = self.counts().await;
        let domains = self.queue.domain_counts().await?;
        let destinations = self.queue.destination_states().await?;
        let now = inspect::age(0).as_millis() as u64;
        if self.json {
            let destinations: Vec<_> = destinations
                .iter()
                .map(|s| destination_json(s, now))
                .collect();
            let total = counts.map(|c| {
                json!({
                    "ready": c.ready,
                    "inFlight": c.in_flight,
                    "waiting": c.waiting,
                    "deadLetters": c.dead_letters,
                    "oldestReadySeconds": c.oldest_ready.as_secs(),
                })
            });
            let domains: BTreeMap<_, _> = domains
                .iter()
                .map(|(d, c)| {
                    (
                        d.clone(),
                        json!({"ready": c.ready, "waiting": c.waiting, "held": c.held, "oldestReadySeconds": c.oldest_ready_seconds}),
                    )
                })
                .collect();
            let value = json!({
                "stream": self.config.nats.stream,
                "total": total,
                "domains": domains,
                "destinations": destinations,
            });
            writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
            return Ok(Outcome::Done);
        }
        match counts {
            Some(c) => writeln!(
                out,
                "queue {}: {} ready, {} in flight, {} waiting, {} dead letters; oldest ready {}",
                self.config.nats.stream,
                c.ready,
                c.in_flight,
                c.waiting,
                c.dead_letters,
                human(c.oldest_ready)
            )?,
            None => writeln!(
                out,
                "queue {}: no delivery consumer yet",
                self.config.nats.stream
            )?,
        }
        writeln!(out)?;
        writeln!(
            out,
            "{:<40} {:>8} {:>8} {:>6} {:>8}",
            "DOMAIN", "READY", "WAITING", "HELD", "OLDEST"
        )?;
        for (domain, c) in &domains {
            let oldest = c
                .oldest_ready_seconds
                .map_or("-".to_string(), |s| human(Duration::from_secs(s)));
            writeln!(
                out,
                "{domain:<40} {:>8} {:>8} {:>6} {oldest:>8}",
                c.ready, c.waiting, c.held
            )?;
        }
        if !destinations.is_empty() {
            writeln!(out)?;
            writeln!(
                out,
                "{:<40} {:<28} {:>8}  LAST FAILURE",
                "DESTINATION", "STATE", "FAILURES"
            )?;
            for state in &destinations {
                writeln!(
                    out,
                    "{:<40} {:<28} {:>8}  {}",
                    state.name,
                    describe(state, now),
                    state.failures,
                    state.last_failure.as_deref().unwrap_or("-")
                )?;
            }
        }
        Ok(Outcome::Done)
    }

    async fn show(&self, id: &str, out: &mut dyn Write) -> anyhow::Result<Outcome> {
        let found = self.queue.find(&Selector::Id(id.to_string())).await?;
        if found.is_empty() {
            writeln!(out, "{id}: not in the queue")?;
            return Ok(Outcome::NothingMatched);
        }
        let entries: Vec<_> = found.iter().map(entry_json).collect();
        if self.json {
            writeln!(out, "{}", serde_json::to_string_pretty(&entries)?)?;
            return Ok(Outcome::Done);
        }
        for (found, value) in found.iter().zip(&entries) {
            writeln!(
                out,
                "{} #{} ({:?}, stored {} ago)",
                found.subject,
                found.sequence,
                found.place,
                human(inspect::age(found.stored_ms))
            )?;
            for (name, values) in found.headers.iter() {
                for v in values {
                    writeln!(out, "  {name}: {v}")?;
                }
            }
            writeln!(out, "{}", serde_json::to_string_pretty(&value["envelope"])?)?;
        }
        Ok(Outcome::Done)
    }

    async fn selected(
        &self,
        selector: &Selector,
        wanted: impl Fn(&Found) -> bool,
    ) -> anyhow::Result<Vec<Found>> {
        Ok(self
            .queue
            .find(selector)
            .await?
            .into_iter()
            .filter(|f| wanted(f))
            .collect())
    }

    /// Retry, hold, release: moves each selected entry.
    async fn change(
        &self,
        selector: &Selector,
        done: &str,
        out: &mut dyn Write,
        wanted: impl Fn(&Found) -> bool,
    ) -> anyhow::Result<Outcome> {
        let found = self.selected(selector, wanted).await?;
        if found.is_empty() {
            self.report(out, done, &[])?;
            return Ok(Outcome::NothingMatched);
        }
        let mut results = Vec::new();
        for entry in &found {
            let change = if done == "held" {
                self.queue.hold(entry).await?
            } else {
                self.queue.make_due(entry).await?
            };
            results.push((entry, change));
        }
        self.report(out, done, &results)?;
        Ok(Outcome::Done)
    }

    /// Delete or bounce: asks for `--yes` first.
    async fn destroy(
        &self,
        selector: &Selector,
        yes: bool,
        bounce: bool,
        out: &mut dyn Write,
    ) -> anyhow::Result<Outcome> {
        let found = self.selected(selector, |_| true).await?;
        let done = if bounce { "bounced" } else { "deleted" };
        if found.is_empty() {
            self.report(out, done, &[])?;
            return Ok(Outcome::NothingMatched);
        }
        if !yes {
            let ids: Vec<&str> = found
                .iter()
                .filter_map(|f| f.envelope.as_ref().map(|e| e.queue_id.as_str()))
                .collect();
            writeln!(
                out,
                "{} entries would be {done} ({}); nothing changed: add --yes to confirm",
                found.len(),
                ids.join(", ")
            )?;
            return Ok(Outcome::NotConfirmed);
        }
        let mut results = Vec::new();
        for entry in &found {
            let change = self.queue.remove(entry).await?;
            if change == Change::Done
                && bounce
                && let Some(envelope) = &entry.envelope
            {
                let reply = Reply::new(
                    550,
                    Status(5, 0, 0),
                    "Returned by the mail administrator of this relay",
                );
                let failed = ReportedRecipient::each(&envelope.recipients, &reply, false);
                let (_, inline) = postern_queue::entry::decode(&entry.payload)?;
                let whole = matches!(envelope.body, postern_queue::entry::BodyRef::Inline { .. });
                let original = || (inline.to_vec(), whole);
                dsn::queue_report(
                    &self.queue,
                    &self.config.hostname,
                    envelope,
                    dsn::Action::Failed,
                    failed,
                    original,
                )
                .await?;
            }
            results.push((entry, change));
        }
        self.report(out, done, &results)?;
        Ok(Outcome::Done)
    }

    fn report(
        &self,
        out: &mut dyn Write,
        done: &str,
        results: &[(&Found, Change)],
    ) -> anyhow::Result<()> {
        if self.json {
            let value: Vec<_> = results
                .iter()
                .map(|(f, change)| {
                    json!({
                        "queueId": f.envelope.as_ref().map(|e| e.queue_id.clone()),
                        "subject": f.subject,
                        "sequence": f.sequence,
                        "result": change,
                    })
                })
                .collect();
            writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
            return Ok(());
        }
        if results.is_empty() {
            writeln!(out, "no entry matched")?;
        }
        for (found, change) in results {
            let id = found
                .envelope
                .as_ref()
                .map_or("(undecodable)", |e| e.queue_id.as_str());
            match change {
                Change::Done => writeln!(out, "{id} {}: {done}", found.subject)?,
                Change::Taken => writeln!(
                    out,
                    "{id} {}: taken by a worker meanwhile; left alone",
                    found.subject
                )?,
            }
        }
        Ok(())
    }

    async fn dead_letters(&self, out: &mut dyn Write) -> anyhow::Result<Outcome> {
        let letters = self.queue.dead_letters().await?;
        if self.json {
            let value: Vec<_> = letters.iter().map(|(l, _, _)| l).collect();
            writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
            return Ok(Outcome::Done);
        }
        writeln!(
            out,
            "{:>8} {:>8} {:<28} {:<32} REASON",
            "SEQ", "AGE", "QUEUE ID", "SUBJECT"
        )?;
        for (letter, _, _) in &letters {
            writeln!(
                out,
                "{:>8} {:>8} {:<28} {:<32} {}",
                letter.sequence,
                human(inspect::age(letter.stored_ms)),
                letter.queue_id.as_deref().unwrap_or("-"),
                letter.subject,
                letter.reason
            )?;
        }
        Ok(Outcome::Done)
    }

    async fn retry_dead_letters(
        &self,
        sequence: Option<u64>,
        out: &mut dyn Write,
    ) -> anyhow::Result<Outcome> {
        let letters: Vec<_> = self
            .queue
            .dead_letters()
            .await?
            .into_iter()
            .filter(|(l, _, _)| sequence.is_none_or(|s| s == l.sequence))
            .collect();
        if letters.is_empty() {
            writeln!(out, "no dead letter matched")?;
            return Ok(Outcome::NothingMatched);
        }
        for (letter, payload, headers) in &letters {
            self.queue
                .retry_dead_letter(letter, payload.clone(), headers)
                .await?;
            if !self.json {
                writeln!(
                    out,
                    "dead letter {} back on {}",
                    letter.sequence, letter.subject
                )?;
            }
        }
        if self.json {
            let value: Vec<_> = letters.iter().map(|(l, _, _)| l).collect();
            writeln!(out, "{}", serde_json::to_string_pretty(&value)?)?;
        }
        Ok(Outcome::Done)
    }
}

fn entry_json(found: &Found) -> serde_json::Value {
    json!({
        "subject": found.subject,
        "sequence": found.sequence,
        "place": found.place,
        "storedAgoSeconds": inspect::age(found.stored_ms).as_secs(),
        "headers": found
            .headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(",")))
            .collect::<BTreeMap<_, _>>(),
        "envelope": found.envelope,
    })
}

fn destination_json(state: &State, now: u64) -> serde_json::Value {
    json!({
        "name": state.name,
        "failures": state.failures,
        "backoffSeconds": state.backoff(now).map(|until| (until - now) / 1000),
        "slowDownHalvings": state.halvings(now),
        "lastFailure": state.last_failure,
    })
}

/// `backoff for 27s`, `slowed down x2 for 9m`, or `ok`.
fn describe(state: &State, now: u64) -> String {
    if let Some(until) = state.backoff(now) {
        return format!("backoff for {}", human(Duration::from_millis(until - now)));
    }
    let halvings = state.halvings(now);
    if halvings > 0 {
        let until = state.slow_until_ms.unwrap_or(now);
        return format!(
            "slowed down x{halvings} for {}",
            human(Duration::from_millis(until.saturating_sub(now)))
        );
    }
    "ok".into()
}

/// `45s`, `12m`, `3h`, `2d`.
fn human(duration: Duration) -> String {
    let s = duration.as_secs();
    match s {
        0..120 => format!("{s}s"),
        120..7200 => format!("{}m", s / 60),
        7200..172_800 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_at_a_glance() {
        assert_eq!(human(Duration::from_secs(45)), "45s");
        assert_eq!(human(Duration::from_secs(720)), "12m");
        assert_eq!(human(Duration::from_secs(3 * 3600)), "3h");
        assert_eq!(human(Duration::from_secs(5 * 86_400)), "5d");
    }

    #[test]
    fn a_destination_s_state_is_described_by_what_holds_it_back() {
        let mut state = State::named("mx.example");
        assert_eq!(describe(&state, 0), "ok");
        state.backoff_until_ms = Some(27_000);
        assert_eq!(describe(&state, 0), "backoff for 27s");
        state.backoff_until_ms = None;
        state.slow_down = 2;
        state.slow_until_ms = Some(540_000);
        assert_eq!(describe(&state, 0), "slowed down x2 for 9m");
    }
}
