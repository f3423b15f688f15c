//! Call events for the agent's `webhook_url` (API.md, "Webhooks"): `call_started` when a
//! call is answered, `call_ended` when it ends (calls that never connected included),
//! POSTed as `{"event", "call"}` with the call object of `GET /v2/get-call/{id}` and signed
//! in `x-retell-signature`.
//!
//! Why it is shaped like this:
//! - Delivery never blocks a call: [`CallEvents::call_started`] and
//!   [`CallEvents::call_ended`] only spawn a task.
//! - Memory stays bounded whatever the receivers do: at most `max_pending` events wait or
//!   are in delivery at once (more are dropped, counted and logged), and at most
//!   [`MAX_IN_FLIGHT`] tries are on the wire at once.
//! - Receivers see a call's events in order: its `call_ended` is sent only after its
//!   `call_started` delivery has finished (delivered or given up).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tokio::sync::{oneshot, Semaphore};
use tracing::{debug, warn};

use crate::config::WebhookSettings;
use crate::store::Store;
use crate::sync::lock;

/// Tries on the wire at once, across all calls.
const MAX_IN_FLIGHT: usize = 32;
/// Wait before the second try; it doubles for each further one, up to [`MAX_BACKOFF`].
const BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The events this module sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Started,
    Ended,
}

impl Event {
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Started => "call_started",
            Event::Ended => "call_ended",
        }
    }
}

/// Sends call events; cheap to clone. [`CallEvents::disabled`] sends nothing.
#[derive(Clone)]
pub struct CallEvents {
    inner: Option<Arc<Inner>>,
}

impl std::fmt::Debug for CallEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallEvents")
            .field("enabled", &self.inner.is_some())
            .field("pending", &self.pending())
            .finish()
    }
}

struct Inner {
    store: Store,
    /// The HMAC key; a secret, never logged.
    key: Option<String>,
    max_attempts: u32,
    timeout: Duration,
    backoff: Duration,
    max_pending: usize,
    /// One permit per event waiting or in delivery.
    pending: Arc<Semaphore>,
    /// One permit per try on the wire.
    in_flight: Semaphore,
    /// Calls whose `call_started` is still being delivered: their `call_ended` waits for
    /// the sender to drop.
    started: Mutex<HashMap<String, oneshot::Receiver<()>>>,
}

impl CallEvents {
    /// Events read their call and its agent from `store` when they are sent.
    pub fn new(store: Store, settings: &WebhookSettings) -> CallEvents {
        if settings.signing_key.is_none() {
            warn!("no webhooks.signing_key and no api.keys: call webhooks go out unsigned");
        }
        Self::build(store, settings, BACKOFF)
    }

    fn build(store: Store, settings: &WebhookSettings, backoff: Duration) -> CallEvents {
        let max_pending = settings.max_pending.max(1);
        CallEvents {
            inner: Some(Arc::new(Inner {
                store,
                key: settings.signing_key.clone(),
                max_attempts: settings.max_attempts.max(1),
                timeout: settings.timeout,
                backoff,
                max_pending,
                pending: Arc::new(Semaphore::new(max_pending)),
                in_flight: Semaphore::new(MAX_IN_FLIGHT),
                started: Mutex::new(HashMap::new()),
            })),
        }
    }

    /// Sends nothing (tests, and tools that embed the API without a call engine).
    pub fn disabled() -> CallEvents {
        CallEvents { inner: None }
    }

    /// The call was answered; call after its record says `ongoing`.
    pub fn call_started(&self, call_id: &str) {
        self.enqueue(Event::Started, call_id);
    }

    /// The call is over; call after its record holds its final status and reason.
    pub fn call_ended(&self, call_id: &str) {
        self.enqueue(Event::Ended, call_id);
    }

    /// Events waiting or in delivery.
    pub fn pending(&self) -> usize {
        self.inner
            .as_ref()
            .map_or(0, |i| i.max_pending - i.pending.available_permits())
    }

    /// Waits at most `limit` for pending deliveries (shutdown); returns whether all ended.
    pub async fn drain(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let pending = self.pending();
            if pending == 0 {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                warn!(
                    pending,
                    "call webhooks still pending at shutdown; abandoned"
                );
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn enqueue(&self, event: Event, call_id: &str) {
        let Some(inner) = &self.inner else {
            return;
        };
        let Ok(permit) = inner.pending.clone().try_acquire_owned() else {
            crate::metrics::webhook_event(event.as_str(), "dropped");
            warn!(
                call_id,
                event = event.as_str(),
                max_pending = inner.max_pending,
                "call webhook queue full; event dropped"
            );
            return;
        };
        let (after, done) = match event {
            Event::Started => {
                let (tx, rx) = oneshot::channel::<()>();
                lock(&inner.started).insert(call_id.to_owned(), rx);
                (None, Some(tx))
            }
            Event::Ended => (lock(&inner.started).remove(call_id), None),
        };
        let inner = inner.clone();
        let call_id = call_id.to_owned();
        tokio::spawn(async move {
            inner.deliver(event, &call_id, after).await;
            if done.is_some() {
                // Finished before the call ended: nobody waits for it any more.
                lock(&inner.started).remove(&call_id);
            }
            drop(done);
            drop(permit);
        });
    }
}

impl Inner {
    /// Reads the call and its agent's `webhook_url`, waits for `after` (this call's
    /// `call_started`), then posts with retries.
    async fn deliver(&self, event: Event, call_id: &str, after: Option<oneshot::Receiver<()>>) {
        let name = event.as_str();
        // Read before any wait, so the payload is the record as the event found it.
        let unavailable = |err: crate::store::StoreError| {
            crate::metrics::webhook_event(name, "failed");
            warn!(%err, call_id, event = name, "store unavailable; webhook not sent");
        };
        let call = match self.store.get_call(call_id).await {
            Ok(Some(call)) => call,
            Ok(None) => {
                debug!(call_id, event = name, "call record gone; no webhook");
                return;
            }
            Err(err) => return unavailable(err),
        };
        let url = match self.store.get_agent(&call.agent_id).await {
            Ok(agent) => agent.and_then(|a| a.webhook_url),
            Err(err) => return unavailable(err),
        };
        let Some(url) = url else {
            return;
        };
        let body = json!({ "event": name, "call": call }).to_string();
        if let Some(after) = after {
            let _ = after.await;
        }
        self.post(event, call_id, &url, body).await;
    }

    /// Up to `max_attempts` tries, each signed afresh, with doubling waits between them.
    /// The URL is not logged: it may carry a token.
    async fn post(&self, event: Event, call_id: &str, url: &str, body: String) {
        let name = event.as_str();
        let mut wait = self.backoff;
        for attempt in 1..=self.max_attempts {
            let result = {
                // Never closed, so acquiring cannot fail; without a slot, try anyway.
                let _slot = self.in_flight.acquire().await.ok();
                let signature = self
                    .key
                    .as_deref()
                    .map(|key| super::signature(key, &body, unix_ms()));
                let headers: Vec<(&str, &str)> = signature
                    .iter()
                    .map(|s| (super::SIGNATURE_HEADER, s.as_str()))
                    .collect();
                super::post_raw(url, body.clone(), &headers, self.timeout).await
            };
            match result {
                Ok((status, _)) if (200..300).contains(&status) => {
                    crate::metrics::webhook_event(name, "delivered");
                    debug!(call_id, event = name, attempt, "call webhook delivered");
                    return;
                }
                Ok((status, _)) => {
                    warn!(
                        call_id,
                        event = name,
                        attempt,
                        status,
                        "call webhook refused"
                    )
                }
                Err(err) => warn!(call_id, event = name, attempt, %err, "call webhook failed"),
            }
            if attempt < self.max_attempts {
                crate::metrics::webhook_event(name, "retried");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(MAX_BACKOFF);
            }
        }
        crate::metrics::webhook_event(name, "failed");
        warn!(
            call_id,
            event = name,
            attempts = self.max_attempts,
            "call webhook given up"
        );
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
