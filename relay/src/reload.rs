//! Files that are reloaded when they change (the TLS certificate, DKIM keys): a stamp of their
//! modification times, and the loop that checks it.

use std::fmt::Display;
use std::path::Path;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

/// The modification times of `paths`; an unchanged stamp means there is nothing to reload.
pub fn stamp<'a>(paths: impl IntoIterator<Item = &'a Path>) -> Vec<Option<SystemTime>> {
    paths
        .into_iter()
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

/// Calls `reload` every `interval` until `cancel` fires. `reload` returns whether it loaded
/// anything; on an error the previous contents stay in use.
pub async fn watch<E: Display>(
    what: &'static str,
    interval: Duration,
    cancel: CancellationToken,
    mut reload: impl FnMut() -> Result<bool, E>,
) {
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        match reload() {
            Ok(true) => tracing::info!(what, "reloaded"),
            Ok(false) => {}
            Err(err) => tracing::warn!(what, %err, "not reloaded; the previous one stays in use"),
        }
    }
}
