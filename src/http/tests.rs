//! Router tests run in process through `tower::ServiceExt::oneshot`; `serve` is tested
//! over a real socket with a minimal HTTP/1.1 client.

use axum::body::{to_bytes, Body, Bytes};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::routing::post;
use metrics_exporter_prometheus::PrometheusBuilder;
use serde::Deserialize;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt;

use super::*;

const KEY: &str = "test-key-0123456789";

fn fresh_handle() -> PrometheusHandle {
    PrometheusBuilder::new().build_recorder().handle()
}

/// API services on a private in-memory database, no live calls.
pub(crate) async fn services() -> ApiServices {
    ApiServices {
        store: crate::store::Store::connect("sqlite::memory:")
            .await
            .unwrap(),
        calls: Arc::new(crate::call::NoLiveCalls),
        public_host: "sip.example.net".to_owned(),
        registered_call_timeout: std::time::Duration::from_secs(300),
        events: crate::webhook::events::CallEvents::disabled(),
    }
}

async fn state_with(keys: &[&str]) -> (AppState, watch::Sender<bool>) {
    let (tx, rx) = watch::channel(false);
    let keys: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
    (
        AppState::new(&keys, fresh_handle(), rx, services().await),
        tx,
    )
}

#[derive(Deserialize)]
struct Echo {
    name: String,
    count: u32,
}

async fn echo(ApiJson(body): ApiJson<Echo>) -> Json<Value> {
    Json(serde_json::json!({"name": body.name, "count": body.count}))
}

/// The real router plus a test-only API route, behind the same auth.
fn app(state: AppState) -> Router {
    build(state, api_routes().route("/test/echo", post(echo)))
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    /// Asserts the common error shape and returns the body.
    fn error(&self, status: StatusCode, code: &str) -> Value {
        assert_eq!(self.status, status);
        assert_eq!(
            self.headers["content-type"], "application/json",
            "error bodies are JSON"
        );
        let json = self.json();
        assert_eq!(json["status"], status.as_u16());
        assert_eq!(json["error"], code);
        assert!(json["message"].as_str().is_some_and(|m| !m.is_empty()));
        json
    }
}

async fn send(
    app: Router,
    method: Method,
    path: &str,
    auth: Option<&str>,
    body: Option<&str>,
) -> Reply {
    let mut request = axum::http::Request::builder().method(method).uri(path);
    if let Some(auth) = auth {
        request = request.header("authorization", auth);
    }
    let request = match body {
        Some(body) => request
            .header("content-type", "application/json")
            .body(Body::from(body.to_owned())),
        None => request.body(Body::empty()),
    }
    .unwrap();
    let response = app.oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = to_bytes(response.into_body(), 1 << 20).await.unwrap();
    Reply {
        status,
        headers,
        body,
    }
}

fn bearer() -> String {
    format!("Bearer {KEY}")
}

#[tokio::test]
async fn healthz_needs_no_key() {
    let (state, _tx) = state_with(&[KEY]).await;
    let reply = send(app(state), Method::GET, "/healthz", None, None).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json(), serde_json::json!({"status": "ok"}));
}

#[tokio::test]
async fn healthz_is_503_once_draining() {
    let (state, tx) = state_with(&[KEY]).await;
    tx.send(true).unwrap();
    let reply = send(app(state), Method::GET, "/healthz", None, None).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reply.json(), serde_json::json!({"status": "draining"}));
}

#[tokio::test]
async fn metrics_needs_no_key_and_is_prometheus_text() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        metrics::counter!("dialtone_test_total", "kind" => "x").increment(3);
    });
    let (tx, rx) = watch::channel(false);
    let state = AppState::new(&[KEY.to_owned()], handle, rx, services().await);
    let reply = send(app(state), Method::GET, "/metrics", None, None).await;
    drop(tx);
    assert_eq!(reply.status, StatusCode::OK);
    let content_type = reply.headers["content-type"].to_str().unwrap();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = String::from_utf8(reply.body.to_vec()).unwrap();
    assert!(text.contains("dialtone_test_total{kind=\"x\"} 3"), "{text}");
}

#[tokio::test]
async fn missing_key_is_401_with_challenge() {
    let (state, _tx) = state_with(&[KEY]).await;
    let reply = send(app(state), Method::GET, "/v2/get-call/abc", None, None).await;
    let json = reply.error(StatusCode::UNAUTHORIZED, "unauthorized");
    assert_eq!(json["message"], "missing or invalid API key");
    assert_eq!(reply.headers["www-authenticate"], "Bearer");
}

#[tokio::test]
async fn wrong_key_or_scheme_is_401() {
    let (state, _tx) = state_with(&[KEY, "another-key-abcdef"]).await;
    for auth in [
        "Bearer not-the-key-0123456".to_owned(),
        format!("Bearer {KEY}x"),
        format!("Basic {KEY}"),
        KEY.to_owned(),
        "Bearer ".to_owned(),
    ] {
        let reply = send(
            app(state.clone()),
            Method::GET,
            "/v2/get-call/abc",
            Some(&auth),
            None,
        )
        .await;
        reply.error(StatusCode::UNAUTHORIZED, "unauthorized");
        assert_eq!(reply.headers["www-authenticate"], "Bearer");
    }
}

#[tokio::test]
async fn right_key_passes_auth_to_a_json_404() {
    let (state, _tx) = state_with(&["another-key-abcdef", KEY]).await;
    let reply = send(
        app(state.clone()),
        Method::GET,
        "/no/such/route",
        Some(&bearer()),
        None,
    )
    .await;
    reply.error(StatusCode::NOT_FOUND, "not_found");
    assert!(!reply.headers.contains_key("www-authenticate"));

    // The scheme is case-insensitive.
    let reply = send(
        app(state),
        Method::GET,
        "/no/such/route",
        Some(&format!("bearer {KEY}")),
        None,
    )
    .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn no_keys_configured_refuses_everyone() {
    let (state, _tx) = state_with(&[]).await;
    for auth in [None, Some("Bearer "), Some("Bearer anything-at-all")] {
        let reply = send(app(state.clone()), Method::GET, "/x", auth, None).await;
        reply.error(StatusCode::UNAUTHORIZED, "unauthorized");
    }
    // The public routes still answer.
    let reply = send(app(state), Method::GET, "/healthz", None, None).await;
    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test]
async fn api_json_accepts_a_good_body() {
    let (state, _tx) = state_with(&[KEY]).await;
    let reply = send(
        app(state),
        Method::POST,
        "/test/echo",
        Some(&bearer()),
        Some(r#"{"name": "a", "count": 2, "ignored": true}"#),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.json(), serde_json::json!({"name": "a", "count": 2}));
}

#[tokio::test]
async fn api_json_bad_body_is_400_naming_the_field() {
    let (state, _tx) = state_with(&[KEY]).await;
    let cases = [
        (r#"{"name": "a", "count": "two"}"#, Some("count")),
        (r#"{"name": "a", "count": -1}"#, Some("count")),
        (r#"{"count": 1}"#, Some("name")),
        (r#"{"name": "a""#, None),
        ("[1, 2]", None),
    ];
    for (body, field) in cases {
        let reply = send(
            app(state.clone()),
            Method::POST,
            "/test/echo",
            Some(&bearer()),
            Some(body),
        )
        .await;
        let json = reply.error(StatusCode::BAD_REQUEST, "bad_request");
        match field {
            Some(field) => {
                assert_eq!(json["field"], field, "{body}");
                assert!(json["message"].as_str().unwrap().contains(field), "{json}");
            }
            None if body.starts_with('[') => {}
            None => assert!(json.get("field").is_none(), "{json}"),
        }
    }
}

#[tokio::test]
async fn api_json_needs_a_json_content_type() {
    let (state, _tx) = state_with(&[KEY]).await;
    let request = axum::http::Request::post("/test/echo")
        .header("authorization", bearer())
        .header("content-type", "text/plain")
        .body(Body::from(r#"{"name": "a", "count": 1}"#))
        .unwrap();
    let response = app(state).oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

#[tokio::test]
async fn wrong_method_is_405_json() {
    let (state, _tx) = state_with(&[KEY]).await;
    // On an API route: auth first, then the 405.
    let reply = send(app(state.clone()), Method::GET, "/test/echo", None, None).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    let reply = send(
        app(state.clone()),
        Method::GET,
        "/test/echo",
        Some(&bearer()),
        None,
    )
    .await;
    reply.error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    assert_eq!(reply.headers["allow"], "POST");

    // On a public route.
    let reply = send(app(state), Method::POST, "/healthz", None, None).await;
    reply.error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
}

/// The request counter is global, so this test gives its thread a recorder of its own
/// and drives the router on that same thread.
#[test]
fn requests_are_counted_by_status_class() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (state, _tx) = runtime.block_on(state_with(&[KEY]));
    metrics::with_local_recorder(&recorder, || {
        runtime.block_on(async {
            send(app(state.clone()), Method::GET, "/healthz", None, None).await;
            send(app(state.clone()), Method::GET, "/x", None, None).await;
            send(app(state.clone()), Method::GET, "/y", Some(&bearer()), None).await;
        })
    });
    let text = handle.render();
    assert!(
        text.contains("dialtone_http_requests_total{class=\"2xx\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("dialtone_http_requests_total{class=\"4xx\"} 2"),
        "{text}"
    );
}

#[tokio::test]
async fn debug_output_hides_keys() {
    let (state, _tx) = state_with(&[KEY]).await;
    let text = format!("{state:?}");
    assert!(!text.contains(KEY), "{text}");
    assert!(text.contains("1 redacted"), "{text}");
}

/// One request over a fresh connection; returns the status code and the body.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8(raw).unwrap();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn serve_answers_and_stops_on_shutdown() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (drain_tx, drain_rx) = watch::channel(false);
    let (stop_tx, stop_rx) = watch::channel(false);
    let state = AppState::new(
        &[KEY.to_owned()],
        fresh_handle(),
        drain_rx,
        services().await,
    );
    let server = tokio::spawn(serve(listener, state, stop_rx));

    let (status, body) = http_get(addr, "/healthz").await;
    assert_eq!(status, 200);
    assert!(body.contains(r#""status":"ok""#), "{body}");
    assert_eq!(http_get(addr, "/v2/list-phone-numbers").await.0, 401);

    // Draining: still serving, but health says go away.
    drain_tx.send(true).unwrap();
    let (status, body) = http_get(addr, "/healthz").await;
    assert_eq!(status, 503);
    assert!(body.contains(r#""status":"draining""#), "{body}");

    stop_tx.send(true).unwrap();
    let result = tokio::time::timeout(std::time::Duration::from_secs(5), server)
        .await
        .expect("serve returns after shutdown")
        .unwrap();
    assert!(result.is_ok());
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

/// The agent and call handlers.
mod api;

/// The built-in echo agent's route.
mod echo;

/// The phone number handlers.
mod numbers;
