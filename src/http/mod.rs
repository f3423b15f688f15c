//! The HTTP server: the Retell-compatible API behind bearer-key auth, plus the two routes
//! infrastructure needs without a key: `GET /healthz` for load balancers and
//! `GET /metrics` for Prometheus.
//!
//! Shape of the router, outermost first:
//! - request counting (every answer, including 401s and 404s, lands in
//!   `dialtone_http_requests_total`);
//! - `/healthz`, `/metrics`, and `/agents/echo` (the demo agent's websocket): public;
//! - everything else: [`auth::require_api_key`], then [`api_routes`] (the API handlers) or
//!   the JSON 404 fallback. Auth wraps the fallback too, so without a key an unknown path
//!   is a 401 and the route table is not probeable.
//!
//! Every error body has one JSON shape (see [`error`]).

pub mod agents;
pub mod auth;
pub mod calls;
pub mod error;
pub mod numbers;
pub mod paging;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post};
use axum::{Json, Router};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use error::{ApiError, ApiJson};

use crate::call::CallControl;
use crate::metrics::PrometheusHandle;
use crate::store::Store;
use crate::webhook::events::CallEvents;

/// What the API handlers work with besides keys and metrics.
#[derive(Clone)]
pub struct ApiServices {
    pub store: Store,
    /// Live calls: the API asks the call engine to stop them.
    pub calls: Arc<dyn CallControl>,
    /// Host of the `sip:{call_id}@host` URI handed out for registered calls
    /// (`sip.public_host`).
    pub public_host: String,
    /// How long a registered call may wait to be dialled (`calls.registered_call_timeout`).
    pub registered_call_timeout: Duration,
    /// `call_ended` for calls the API ends itself (stopped before anyone dialled them).
    pub events: CallEvents,
}

/// What every handler can reach. Cheap to clone (everything is shared).
#[derive(Clone)]
pub struct AppState {
    /// Accepted bearer keys, as bytes for the constant-time compare.
    keys: Arc<[Box<[u8]>]>,
    metrics: PrometheusHandle,
    /// True once shutdown has begun: `/healthz` then answers 503 so balancers stop
    /// sending new work while in-flight requests and calls finish.
    draining: watch::Receiver<bool>,
    store: Store,
    calls: Arc<dyn CallControl>,
    public_host: Arc<str>,
    registered_call_timeout: Duration,
    events: CallEvents,
}

impl AppState {
    /// `draining` turns true when the process starts to shut down. It may be the same
    /// channel as [`serve`]'s `shutdown`, or an earlier signal so that balancers see the
    /// 503 for a while before the listener closes.
    pub fn new(
        keys: &[String],
        metrics: PrometheusHandle,
        draining: watch::Receiver<bool>,
        services: ApiServices,
    ) -> AppState {
        AppState {
            keys: keys.iter().map(|k| k.as_bytes().into()).collect(),
            metrics,
            draining,
            store: services.store,
            calls: services.calls,
            public_host: services.public_host.into(),
            registered_call_timeout: services.registered_call_timeout,
            events: services.events,
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// True once shutdown has begun.
    pub fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keys are secrets: only their count is printed.
        f.debug_struct("AppState")
            .field("keys", &format_args!("<{} redacted>", self.keys.len()))
            .field("draining", &self.is_draining())
            .field("store", &self.store)
            .field("public_host", &self.public_host)
            .finish_non_exhaustive()
    }
}

/// The whole HTTP application.
pub fn router(state: AppState) -> Router {
    build(state, api_routes())
}

/// The authenticated API: agents, calls and phone numbers are added here. Everything
/// routed here sits behind bearer-key auth and gets JSON 404/405 answers.
fn api_routes() -> Router<AppState> {
    Router::new()
        .route("/create-agent", post(agents::create))
        .route("/get-agent/{agent_id}", get(agents::retrieve))
        .route("/list-agents", get(agents::list))
        .route("/v2/list-agents", post(agents::list_v2))
        .route("/update-agent/{agent_id}", patch(agents::update))
        .route("/delete-agent/{agent_id}", delete(agents::remove))
        .route("/v2/register-phone-call", post(calls::register_phone_call))
        .route("/v2/create-phone-call", post(calls::create_phone_call))
        .route("/v2/get-call/{call_id}", get(calls::retrieve))
        .route("/v3/list-calls", post(calls::list))
        .route("/v2/update-call/{call_id}", patch(calls::update))
        .route("/v2/delete-call/{call_id}", delete(calls::remove))
        .route("/v2/stop-call/{call_id}", post(calls::stop))
        .route("/import-phone-number", post(numbers::import))
        .route("/get-phone-number/{phone_number}", get(numbers::retrieve))
        .route("/list-phone-numbers", get(numbers::list))
        .route("/v2/list-phone-numbers", get(numbers::list_v2))
        .route(
            "/update-phone-number/{phone_number}",
            patch(numbers::update),
        )
        .route(
            "/delete-phone-number/{phone_number}",
            delete(numbers::remove),
        )
}

/// Assembles the public routes, the authenticated `api` and the shared layers. Split out
/// from [`router`] so tests can mount extra routes behind the same auth.
fn build(state: AppState, api: Router<AppState>) -> Router {
    let protected = api
        .fallback(not_found)
        // Must follow the routes it covers, and precede the auth layer so that a wrong
        // method on an API path is a 401 without a key.
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_api_key,
        ));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        // The demo agent echoes back only the audio it is sent: nothing to protect.
        .route("/agents/echo", get(crate::agent::echo::handler))
        .method_not_allowed_fallback(method_not_allowed)
        .merge(protected)
        .layer(middleware::from_fn(count_requests))
        .with_state(state)
}

/// Serves `listener` until `shutdown` turns true (or its sender is dropped), then stops
/// accepting and waits for in-flight requests to finish. Bounding that wait is the
/// caller's job (the shutdown grace period).
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    if state.keys.is_empty() {
        tracing::warn!("api.keys is empty: every API request will be refused with 401");
    }
    match listener.local_addr() {
        Ok(addr) => tracing::info!(%addr, "HTTP server listening"),
        Err(err) => tracing::warn!(cause = %err, "HTTP server listening on an unknown address"),
    }
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move {
            // An error means the sender is gone, which is also a reason to stop.
            let _ = shutdown.wait_for(|stop| *stop).await;
            tracing::info!("HTTP server shutting down");
        })
        .await
}

async fn healthz(State(state): State<AppState>) -> Response {
    if state.is_draining() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"status": "draining"})),
        )
            .into_response()
    } else {
        Json(serde_json::json!({"status": "ok"})).into_response()
    }
}

/// Prometheus text exposition format, version 0.0.4.
async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".to_owned())
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

async fn count_requests(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    crate::metrics::http_request(response.status().as_u16());
    response
}

#[cfg(test)]
pub(crate) mod tests;
