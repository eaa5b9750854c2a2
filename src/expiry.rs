//! Expires publish requests nobody decided in time.
//!
//! Every sweep reads the publishing aggregate (cached: one indexed query for newer events) and records
//! `PublishExpired` for each pending request past its deadline. Several Gatehouse processes may sweep at once:
//! the aggregate decides, so a request expires once and a request decided a moment earlier is left alone.

use std::sync::Arc;
use std::time::Duration;

use domain::publishing::{Publishing, PublishingCommand, PUBLISHING_ID};
use store::{AggregateRepository, EventMetadata};
use tokio_util::sync::CancellationToken;

/// Sweeps every `interval` until `shutdown`.
pub async fn run(publishing: Arc<AggregateRepository<Publishing>>, interval: Duration, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        match sweep(&publishing).await {
            Ok(0) => {}
            Ok(expired) => tracing::info!(expired, "expired overdue publish requests"),
            Err(error) => tracing::warn!(error.message = %error, "publish request expiry sweep failed; will retry"),
        }
    }
}

/// Expires every overdue pending request; returns how many it expired.
pub async fn sweep(publishing: &AggregateRepository<Publishing>) -> Result<usize, store::StoreError> {
    let now = chrono::Utc::now();
    let (state, _) = publishing.load(PUBLISHING_ID).await?;
    let mut expired = 0;
    for request_id in state.due_for_expiry(now) {
        let command = PublishingCommand::Expire { request_id: request_id.clone(), now };
        match publishing.execute_retrying(PUBLISHING_ID, command, &EventMetadata::system("expiry"), 5).await {
            Ok(committed) if committed.appended > 0 => expired += 1,
            Ok(_) => {}
            Err(store::CommandError::Store(error)) => return Err(error),
            Err(error) => tracing::warn!(request_id = %request_id, error.message = %error, "could not expire"),
        }
    }
    Ok(expired)
}
