//! `postern suppression`: looks at and changes the suppression list over NATS, with the relay's
//! config file, like `postern queue`.

use std::io::{BufRead, Write};

use postern_config::Config;
use postern_queue::now_ms;
use postern_queue::suppression::{Reason, Suppressed, SuppressionList};
use postern_smtp::date::rfc3339_ms;

use crate::queue_admin::Outcome;

/// One `postern suppression` command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    List,
    Show(String),
    Add(String),
    Remove(String),
    /// Entries from JSON lines as `export` writes them, or one bare address per line.
    Import,
    /// Every entry as one JSON line.
    Export,
}

/// Runs `action` against the suppression list of `config`; `input` feeds `import`.
pub async fn run(
    config: &Config,
    action: &Action,
    json: bool,
    input: &mut dyn BufRead,
    out: &mut dyn Write,
) -> anyhow::Result<Outcome> {
    let queue = crate::queue_admin::connect(config, "postern-suppression").await?;
    let list = SuppressionList::new(queue, config.suppression.expiry.get());
    match action {
        Action::List => {
            let entries = list.list().await?;
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&entries)?)?;
            } else {
                for entry in &entries {
                    writeln!(out, "{}", line(entry))?;
                }
                writeln!(out, "{} suppressed", entries.len())?;
            }
            Ok(Outcome::Done)
        }
        Action::Show(address) => match list.get(address).await? {
            None => {
                writeln!(out, "{address}: not suppressed")?;
                Ok(Outcome::NothingMatched)
            }
            Some(entry) if json => {
                writeln!(out, "{}", serde_json::to_string_pretty(&entry)?)?;
                Ok(Outcome::Done)
            }
            Some(entry) => {
                writeln!(out, "{}", line(&entry))?;
                Ok(Outcome::Done)
            }
        },
        Action::Add(address) => {
            let entry = manual(address)?;
            list.add(&entry).await?;
            writeln!(out, "{}: suppressed", entry.address)?;
            Ok(Outcome::Done)
        }
        Action::Remove(address) => {
            if list.remove(address).await? {
                writeln!(out, "{address}: removed")?;
                Ok(Outcome::Done)
            } else {
                writeln!(out, "{address}: not suppressed")?;
                Ok(Outcome::NothingMatched)
            }
        }
        Action::Import => {
            let mut count = 0;
            for (number, text) in input.lines().enumerate() {
                let text = text?;
                let text = text.trim();
                if text.is_empty() || text.starts_with('#') {
                    continue;
                }
                let entry = if text.starts_with('{') {
                    serde_json::from_str::<Suppressed>(text)
                        .map_err(|e| anyhow::anyhow!("line {}: {e}", number + 1))?
                } else {
                    manual(text).map_err(|e| anyhow::anyhow!("line {}: {e}", number + 1))?
                };
                list.add(&entry).await?;
                count += 1;
            }
            writeln!(out, "{count} imported")?;
            Ok(Outcome::Done)
        }
        Action::Export => {
            for entry in list.list().await? {
                writeln!(out, "{}", serde_json::to_string(&entry)?)?;
            }
            Ok(Outcome::Done)
        }
    }
}

/// An entry added by hand; the address must be `local@domain`.
fn manual(address: &str) -> anyhow::Result<Suppressed> {
    postern_smtp::Address::parse(address)
        .map_err(|e| anyhow::anyhow!("{address:?} is not an address: {e}"))?;
    Ok(Suppressed {
        address: address.to_lowercase(),
        reason: Reason::Manual,
        added_ms: now_ms(),
        reply: None,
        queue_id: None,
    })
}

/// `address  since  reason  reply`.
fn line(entry: &Suppressed) -> String {
    format!(
        "{}  since {}  {}{}",
        entry.address,
        rfc3339_ms(entry.added_ms),
        entry.reason.as_str(),
        entry
            .reply
            .as_deref()
            .map(|r| format!("  {r}"))
            .unwrap_or_default()
    )
}
