//! Signs a checkpoint of the audit chain's head at a fixed cadence, also when no events arrived: an auditor who
//! holds a recent checkpoint can then tell an export that stops early from one that is complete (docs/AUDIT.md).

use std::sync::Arc;
use std::time::Duration;

use store::EventStore;
use tokio_util::sync::CancellationToken;

/// Signs every `interval` (the first right away) until `shutdown`.
pub async fn run(store: EventStore, key: Arc<audit::AuditKey>, interval: Duration, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        match projections::audit_chain::sign_checkpoint(&store, &key).await {
            Ok(checkpoint) => tracing::debug!(index = checkpoint.index, "audit checkpoint signed"),
            Err(error) => tracing::warn!(error.message = %error, "could not sign an audit checkpoint; will retry"),
        }
    }
}
