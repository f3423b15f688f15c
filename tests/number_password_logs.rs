//! The trunk password of an imported number never reaches the log, even at `TRACE`: the
//! real router, an in-memory store, every request that carries the password (import,
//! update, a rejected update) and every read. Alone in its binary so the process-wide
//! subscriber sees every callsite from the start.

use std::io::Write;
use std::sync::{Arc, Mutex};

use axum::body::{to_bytes, Body};
use axum::http::{Method, Request, StatusCode};
use dialtone::http::{router, ApiServices, AppState};
use metrics_exporter_prometheus::PrometheusBuilder;
use serde_json::{json, Value};
use tower::ServiceExt;

const KEY: &str = "log-test-key-0123456789";
const PASSWORD: &str = "tr-unk-Pa55-w0rd-in-logs";

/// A log sink the test reads back.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

async fn send(
    state: &AppState,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, String) {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {KEY}"));
    let request = match body {
        Some(body) => request
            .header("content-type", "application/json")
            .body(Body::from(body.to_string())),
        None => request.body(Body::empty()),
    }
    .unwrap();
    let response = router(state.clone()).oneshot(request).await.unwrap();
    let status = response.status();
    let body = to_bytes(response.into_body(), 1 << 20).await.unwrap();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn the_trunk_password_never_reaches_the_log() {
    let sink = Captured::default();
    let writer = sink.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    let (_tx, rx) = tokio::sync::watch::channel(false);
    let services = ApiServices {
        store: dialtone::store::Store::connect("sqlite::memory:")
            .await
            .unwrap(),
        calls: Arc::new(dialtone::call::NoLiveCalls),
        public_host: "sip.example.net".to_owned(),
        registered_call_timeout: std::time::Duration::from_secs(300),
        events: dialtone::webhook::events::CallEvents::disabled(),
    };
    let handle = PrometheusBuilder::new().build_recorder().handle();
    let state = AppState::new(&[KEY.to_owned()], handle, rx, services);

    let (status, agent) = send(
        &state,
        Method::POST,
        "/create-agent",
        Some(json!({"response_engine": {"type": "audio-websocket", "url": "wss://b.example.com/ws"}})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{agent}");
    let agent: Value = serde_json::from_str(&agent).unwrap();
    let steps = [
        (
            Method::POST,
            "/import-phone-number",
            Some(json!({
                "phone_number": "+14155550100",
                "termination_uri": "trunk.example.com",
                "sip_trunk_auth_username": "user",
                "sip_trunk_auth_password": PASSWORD,
                "inbound_agent_id": agent["agent_id"],
            })),
            StatusCode::CREATED,
        ),
        (
            Method::POST,
            "/import-phone-number",
            Some(json!({
                "phone_number": "+14155550100",
                "termination_uri": "trunk.example.com",
                "sip_trunk_auth_password": PASSWORD,
            })),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::PATCH,
            "/update-phone-number/%2B14155550100",
            Some(json!({"auth_password": PASSWORD, "nickname": "n"})),
            StatusCode::OK,
        ),
        (
            Method::PATCH,
            "/update-phone-number/+14155550100",
            Some(json!({"auth_password": PASSWORD, "transport": "carrier-pigeon"})),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::GET,
            "/get-phone-number/+14155550100",
            None,
            StatusCode::OK,
        ),
        (Method::GET, "/v2/list-phone-numbers", None, StatusCode::OK),
        (Method::GET, "/list-phone-numbers", None, StatusCode::OK),
        (
            Method::DELETE,
            "/delete-phone-number/+14155550100",
            None,
            StatusCode::NO_CONTENT,
        ),
    ];
    for (method, path, body, expected) in steps {
        let (status, text) = send(&state, method.clone(), path, body).await;
        assert_eq!(status, expected, "{method} {path}: {text}");
        assert!(
            !text.contains(PASSWORD),
            "{method} {path} returned the password: {text}"
        );
    }

    let log = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
    for line in [
        "phone number imported",
        "phone number updated",
        "phone number deleted",
    ] {
        assert!(
            log.contains(line),
            "'{line}' is missing from the log:\n{log}"
        );
    }
    assert!(
        !log.contains(PASSWORD),
        "the password is in the log:\n{log}"
    );
}
