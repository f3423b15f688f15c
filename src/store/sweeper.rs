//! The background task that ends registrations nobody dialled in time.

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{now_ms, Store};

/// Every `period`, ends registered calls whose window has passed
/// ([`Store::expire_registrations`]) and tells `on_expired` each id (for the `call_ended`
/// webhook), until `shutdown` turns true or its sender is dropped.
/// With several nodes on one database every node sweeps; the conditional update makes
/// that harmless. A failed sweep is logged and retried on the next tick.
pub fn spawn_registration_sweeper(
    store: Store,
    period: Duration,
    mut shutdown: watch::Receiver<bool>,
    on_expired: impl Fn(&str) + Send + 'static,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period.max(Duration::from_millis(10)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.wait_for(|stop| *stop) => break,
            }
            match store.expire_registrations(now_ms()).await {
                Ok(ended) => {
                    for call_id in ended {
                        tracing::info!(%call_id, "registered call was not dialled in time");
                        on_expired(&call_id);
                    }
                }
                Err(err) => tracing::warn!(%err, "registration sweep failed"),
            }
        }
    })
}
