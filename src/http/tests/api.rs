//! Agent and call handlers, in process, on an in-memory store.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::http::{Method, StatusCode};
use serde_json::{json, Value};

use super::{bearer, fresh_handle, send, services, Reply, KEY};
use crate::call::CallControl;
use crate::http::{router, ApiServices, AppState};
use crate::model::DisconnectionReason;
use crate::store::now_ms;

/// A call engine that says every call is live, and remembers being asked.
struct AllLive(AtomicBool);

impl CallControl for AllLive {
    fn stop(&self, _call_id: &str) -> bool {
        self.0.store(true, Ordering::SeqCst);
        true
    }
}

struct Api {
    state: AppState,
    _tx: tokio::sync::watch::Sender<bool>,
}

impl Api {
    async fn new() -> Api {
        Api::with(services().await)
    }

    fn with(services: ApiServices) -> Api {
        let (tx, rx) = tokio::sync::watch::channel(false);
        Api {
            state: AppState::new(&[KEY.to_owned()], fresh_handle(), rx, services),
            _tx: tx,
        }
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Reply {
        let body = body.map(|b| b.to_string());
        send(
            router(self.state.clone()),
            method,
            path,
            Some(&bearer()),
            body.as_deref(),
        )
        .await
    }

    async fn ok(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        status: StatusCode,
    ) -> Value {
        let reply = self.call(method, path, body).await;
        assert_eq!(
            reply.status,
            status,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        if reply.body.is_empty() {
            Value::Null
        } else {
            reply.json()
        }
    }

    /// Asserts a 400 naming `field`.
    async fn bad(&self, method: Method, path: &str, body: Value, field: &str) {
        let reply = self.call(method, path, Some(body.clone())).await;
        let json = reply.error(StatusCode::BAD_REQUEST, "bad_request");
        assert_eq!(json["field"], field, "{body} gave {json}");
    }

    async fn agent(&self) -> Value {
        self.ok(
            Method::POST,
            "/create-agent",
            Some(json!({
                "response_engine": engine(),
                "voice_id": "ignored",
                "agent_name": "bot",
            })),
            StatusCode::CREATED,
        )
        .await
    }

    async fn register(&self, agent_id: &str) -> Value {
        self.ok(
            Method::POST,
            "/v2/register-phone-call",
            Some(json!({"agent_id": agent_id})),
            StatusCode::CREATED,
        )
        .await
    }
}

fn engine() -> Value {
    json!({
        "type": "audio-websocket",
        "url": "wss://bot.example.com/ws",
        "audio_encoding": "mulaw_8000",
        "headers": {"Authorization": "Bearer top-secret"},
    })
}

#[tokio::test]
async fn create_agent_applies_defaults_and_redacts_headers() {
    let api = Api::new().await;
    let agent = api.agent().await;
    assert!(agent["agent_id"].as_str().unwrap().starts_with("agent_"));
    assert_eq!(agent["version"], 0);
    assert_eq!(agent["max_call_duration_ms"], 3_600_000);
    assert_eq!(agent["end_call_after_silence_ms"], 600_000);
    assert_eq!(agent["ring_duration_ms"], 30_000);
    assert_eq!(agent["forward_early_media"], false);
    assert_eq!(agent["response_engine"]["headers"]["Authorization"], "***");
    assert!(!agent.to_string().contains("top-secret"));
    assert!(agent.get("voice_id").is_none(), "ignored, not stored");

    // The stored agent keeps the real value for the websocket bridge.
    let id = agent["agent_id"].as_str().unwrap();
    let stored = api.state.store().get_agent(id).await.unwrap().unwrap();
    assert_eq!(
        stored.response_engine.headers["Authorization"],
        "Bearer top-secret"
    );
    let got = api
        .ok(
            Method::GET,
            &format!("/get-agent/{id}"),
            None,
            StatusCode::OK,
        )
        .await;
    assert_eq!(got, agent);
}

#[tokio::test]
async fn bad_agents_are_400s_naming_the_field_and_write_nothing() {
    let api = Api::new().await;
    let with = |patch: Value| {
        let mut body = json!({"response_engine": engine()});
        for (k, v) in patch.as_object().unwrap() {
            if let Some(inner) = k.strip_prefix("engine.") {
                body["response_engine"][inner] = v.clone();
            } else {
                body[k] = v.clone();
            }
        }
        body
    };
    let cases = [
        (json!({"engine.type": "custom-llm"}), "response_engine.type"),
        (json!({"engine.url": "https://x"}), "response_engine.url"),
        (json!({"engine.url": "wss://"}), "response_engine.url"),
        (json!({"engine.url": null}), "response_engine.url"),
        (
            json!({"engine.audio_encoding": "opus"}),
            "response_engine.audio_encoding",
        ),
        (
            json!({"engine.headers": {"Host": "x"}}),
            "response_engine.headers.Host",
        ),
        (
            json!({"engine.headers": {"bad name": "x"}}),
            "response_engine.headers.bad name",
        ),
        (
            json!({"engine.headers": {"X-A": "line\nbreak"}}),
            "response_engine.headers.X-A",
        ),
        (
            json!({"max_call_duration_ms": 59_999}),
            "max_call_duration_ms",
        ),
        (
            json!({"end_call_after_silence_ms": 9_999}),
            "end_call_after_silence_ms",
        ),
        (json!({"ring_duration_ms": 300_001}), "ring_duration_ms"),
        (json!({"webhook_url": "ftp://x"}), "webhook_url"),
        (json!({"agent_name": 5}), "agent_name"),
    ];
    for (patch, field) in cases {
        api.bad(Method::POST, "/create-agent", with(patch), field)
            .await;
    }
    api.bad(Method::POST, "/create-agent", json!({}), "response_engine")
        .await;
    let all = api
        .ok(Method::GET, "/list-agents", None, StatusCode::OK)
        .await;
    assert_eq!(all, json!([]), "nothing half-written");
}

#[tokio::test]
async fn update_agent_is_partial_and_keeps_redacted_secrets() {
    let api = Api::new().await;
    let agent = api.agent().await;
    let id = agent["agent_id"].as_str().unwrap();
    let path = format!("/update-agent/{id}");
    let updated = api
        .ok(
            Method::PATCH,
            &path,
            Some(json!({"agent_name": null, "ring_duration_ms": 10_000,
                        "forward_early_media": true})),
            StatusCode::OK,
        )
        .await;
    assert_eq!(updated["agent_name"], Value::Null);
    assert_eq!(updated["ring_duration_ms"], 10_000);
    assert_eq!(updated["forward_early_media"], true);
    assert_eq!(updated["version"], 1);
    assert_eq!(updated["response_engine"], agent["response_engine"]);

    // Read-modify-write with the redacted engine: the secret survives, a new header lands.
    let mut engine = updated["response_engine"].clone();
    engine["headers"]["X-Tenant"] = json!("t1");
    let again = api
        .ok(
            Method::PATCH,
            &path,
            Some(json!({"response_engine": engine})),
            StatusCode::OK,
        )
        .await;
    assert_eq!(again["version"], 2);
    let stored = api.state.store().get_agent(id).await.unwrap().unwrap();
    assert_eq!(
        stored.response_engine.headers["Authorization"],
        "Bearer top-secret"
    );
    assert_eq!(stored.response_engine.headers["X-Tenant"], "t1");

    let mut unknown = engine.clone();
    unknown["headers"]["X-Never-Set"] = json!("***");
    api.bad(
        Method::PATCH,
        &path,
        json!({"response_engine": unknown}),
        "response_engine.headers.X-Never-Set",
    )
    .await;
    api.bad(
        Method::PATCH,
        &path,
        json!({"max_call_duration_ms": 1}),
        "max_call_duration_ms",
    )
    .await;
    let after = api.state.store().get_agent(id).await.unwrap().unwrap();
    assert_eq!(after.version, 2, "failed updates write nothing");

    api.call(Method::PATCH, "/update-agent/agent_nope", Some(json!({})))
        .await
        .error(StatusCode::NOT_FOUND, "not_found");
    assert_eq!(
        api.call(Method::DELETE, &format!("/delete-agent/{id}"), None)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    api.call(Method::DELETE, &format!("/delete-agent/{id}"), None)
        .await
        .error(StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn v2_list_agents_pages() {
    let api = Api::new().await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(api.agent().await["agent_id"].as_str().unwrap().to_owned());
    }
    let page = api
        .ok(
            Method::POST,
            "/v2/list-agents?limit=2&sort_order=ascending",
            Some(json!({})),
            StatusCode::OK,
        )
        .await;
    assert_eq!(page["has_more"], true);
    assert_eq!(page["items"][0]["channel"], "voice");
    let key = page["pagination_key"].as_str().unwrap();
    assert_eq!(key, ids[1]);
    let rest = api
        .ok(
            Method::POST,
            &format!("/v2/list-agents?limit=2&sort_order=ascending&pagination_key={key}"),
            Some(json!({})),
            StatusCode::OK,
        )
        .await;
    assert_eq!(rest["items"][0]["agent_id"], ids[2].as_str());
    assert_eq!(rest["has_more"], false);
    api.bad(Method::POST, "/v2/list-agents?limit=0", json!({}), "limit")
        .await;
    api.bad(
        Method::POST,
        "/v2/list-agents",
        json!({"filter_criteria": {"query": "x"}}),
        "filter_criteria",
    )
    .await;
}

#[tokio::test]
async fn register_phone_call_returns_the_dialable_call() {
    let api = Api::new().await;
    let agent = api.agent().await;
    let agent_id = agent["agent_id"].as_str().unwrap();
    let before = now_ms();
    let call = api
        .ok(
            Method::POST,
            "/v2/register-phone-call",
            Some(json!({
                "agent_id": agent_id,
                "agent_version": "0",
                "direction": "outbound",
                "metadata": {"k": [1, 2]},
                "retell_llm_dynamic_variables": {"name": "Ada"},
                "agent_override": {"retell_llm": {}},
            })),
            StatusCode::CREATED,
        )
        .await;
    let call_id = call["call_id"].as_str().unwrap();
    assert!(call_id.starts_with("call_") && call_id.len() == 37);
    assert_eq!(call["call_status"], "registered");
    assert_eq!(call["call_type"], "phone_call");
    assert_eq!(call["direction"], "outbound");
    assert_eq!(call["agent_name"], "bot");
    assert_eq!(call["sip_uri"], format!("sip:{call_id}@sip.example.net"));
    let until = call["registered_until"].as_i64().unwrap();
    assert!(until >= before + 300_000 && until <= now_ms() + 300_000);
    let got = api
        .ok(
            Method::GET,
            &format!("/v2/get-call/{call_id}"),
            None,
            StatusCode::OK,
        )
        .await;
    assert_eq!(got, call);

    let missing = api
        .call(
            Method::POST,
            "/v2/register-phone-call",
            Some(json!({"agent_id": "agent_gone"})),
        )
        .await
        .error(StatusCode::NOT_FOUND, "not_found");
    assert!(missing["message"].as_str().unwrap().contains("agent_gone"));
    let body = |extra: Value| {
        let mut b = json!({"agent_id": agent_id});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    for (extra, field) in [
        (json!({"agent_version": 7}), "agent_version"),
        (json!({"direction": "sideways"}), "direction"),
        (
            json!({"retell_llm_dynamic_variables": {"n": 1}}),
            "retell_llm_dynamic_variables.n",
        ),
        (json!({"metadata": {"big": "x".repeat(60_000)}}), "metadata"),
    ] {
        api.bad(Method::POST, "/v2/register-phone-call", body(extra), field)
            .await;
    }
    api.bad(
        Method::POST,
        "/v2/register-phone-call",
        json!({}),
        "agent_id",
    )
    .await;
    api.call(Method::GET, "/v2/get-call/call_nope", None)
        .await
        .error(StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn list_calls_filters_pages_and_validates() {
    let api = Api::new().await;
    let a = api.agent().await["agent_id"].as_str().unwrap().to_owned();
    let b = api.agent().await["agent_id"].as_str().unwrap().to_owned();
    let mut ids = Vec::new();
    for agent in [&a, &a, &b] {
        ids.push(
            api.register(agent).await["call_id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let list = |body: Value| api.ok(Method::POST, "/v3/list-calls", Some(body), StatusCode::OK);
    let all = list(json!({})).await;
    assert_eq!(all["items"].as_array().unwrap().len(), 3);
    assert_eq!(all["items"][0]["call_id"], ids[2].as_str(), "newest first");
    assert_eq!(all["has_more"], false);
    assert_eq!(all["pagination_key"], Value::Null);

    let only_a = list(json!({
        "filter_criteria": {"agent": [{"agent_id": a}]},
        "sort_order": "ascending",
        "limit": 1,
        "include_total": true,
    }))
    .await;
    assert_eq!(only_a["items"][0]["call_id"], ids[0].as_str());
    assert_eq!(only_a["has_more"], true);
    assert_eq!(only_a["total"], 2);
    assert_eq!(only_a["pagination_key"], ids[0].as_str());

    let registered = list(json!({"filter_criteria": {
        "call_status": {"op": "in", "type": "enum", "value": ["registered", "voicemail"]},
        "direction": {"op": "in", "type": "enum", "value": ["inbound"]},
        "call_id": {"op": "in", "type": "enum", "value": [ids[1]]},
    }}))
    .await;
    assert_eq!(registered["items"][0]["call_id"], ids[1].as_str());
    let none = list(json!({"filter_criteria": {
        "start_timestamp": {"op": "bt", "type": "range", "value": [0, now_ms()]},
    }}))
    .await;
    assert_eq!(
        none["items"],
        json!([]),
        "registered calls have not started"
    );

    for (body, field) in [
        (json!({"limit": 0}), "limit"),
        (json!({"limit": 1001}), "limit"),
        (json!({"skip": 5}), "skip"),
        (json!({"sort_order": "sideways"}), "sort_order"),
        (json!({"pagination_key": "call_unknown"}), "pagination_key"),
        (
            json!({"filter_criteria": {"user_sentiment": {"op": "in", "value": []}}}),
            "filter_criteria.user_sentiment",
        ),
        (
            json!({"filter_criteria": {"call_status": {"op": "eq", "value": ["ended"]}}}),
            "filter_criteria.call_status.op",
        ),
        (
            json!({"filter_criteria": {"duration_ms": {"op": "bt", "value": [1]}}}),
            "filter_criteria.duration_ms.value",
        ),
        (
            json!({"filter_criteria": {"from_number": {"op": "sw", "value": ["a"]}}}),
            "filter_criteria.from_number.value",
        ),
    ] {
        api.bad(Method::POST, "/v3/list-calls", body, field).await;
    }
}

#[tokio::test]
async fn update_call_metadata() {
    let api = Api::new().await;
    let agent_id = api.agent().await["agent_id"].as_str().unwrap().to_owned();
    let call = api.register(&agent_id).await;
    let id = call["call_id"].as_str().unwrap();
    let path = format!("/v2/update-call/{id}");
    let updated = api
        .ok(
            Method::PATCH,
            &path,
            Some(json!({"metadata": {"vip": true}, "data_storage_setting": "everything"})),
            StatusCode::OK,
        )
        .await;
    assert_eq!(updated["metadata"], json!({"vip": true}));
    let cleared = api
        .ok(
            Method::PATCH,
            &path,
            Some(json!({"metadata": null})),
            StatusCode::OK,
        )
        .await;
    assert_eq!(cleared["metadata"], Value::Null);
    api.call(Method::PATCH, "/v2/update-call/call_nope", Some(json!({})))
        .await
        .error(StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn stop_and_delete_follow_the_call_state() {
    let api = Api::new().await;
    let store = api.state.store().clone();
    let agent_id = api.agent().await["agent_id"].as_str().unwrap().to_owned();

    // Registered, nobody dialled: stop settles it in the store.
    let id = api.register(&agent_id).await["call_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let stop = format!("/v2/stop-call/{id}");
    assert_eq!(
        api.call(Method::POST, &stop, None).await.status,
        StatusCode::NO_CONTENT
    );
    let call = store.get_call(&id).await.unwrap().unwrap();
    assert_eq!(
        call.disconnection_reason,
        Some(DisconnectionReason::ManualStopped)
    );
    let again = api.call(Method::POST, &stop, None).await;
    again.error(StatusCode::CONFLICT, "conflict");
    assert_eq!(again.headers["x-should-retry"], "false");
    api.call(Method::POST, "/v2/stop-call/call_nope", None)
        .await
        .error(StatusCode::NOT_FOUND, "not_found");

    // Ongoing but not live here: neither stopped from here nor deletable.
    let id = api.register(&agent_id).await["call_id"]
        .as_str()
        .unwrap()
        .to_owned();
    store.claim_registered_call(&id, now_ms()).await.unwrap();
    store
        .mark_ongoing(&id, now_ms(), "PCMU", None, Some(200))
        .await
        .unwrap();
    api.call(Method::POST, &format!("/v2/stop-call/{id}"), None)
        .await
        .error(StatusCode::CONFLICT, "conflict");
    let delete = format!("/v2/delete-call/{id}");
    let live = api.call(Method::DELETE, &delete, None).await;
    live.error(StatusCode::CONFLICT, "conflict");
    assert!(store.get_call(&id).await.unwrap().is_some());
    store
        .finish_call(&id, DisconnectionReason::UserHangup, now_ms(), None)
        .await
        .unwrap();
    assert_eq!(
        api.call(Method::DELETE, &delete, None).await.status,
        StatusCode::NO_CONTENT
    );
    api.call(Method::DELETE, &delete, None)
        .await
        .error(StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn stop_asks_the_engine_first() {
    let mut services = services().await;
    let engine = Arc::new(AllLive(AtomicBool::new(false)));
    services.calls = engine.clone();
    let api = Api::with(services);
    let agent_id = api.agent().await["agent_id"].as_str().unwrap().to_owned();
    let id = api.register(&agent_id).await["call_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        api.call(Method::POST, &format!("/v2/stop-call/{id}"), None)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert!(engine.0.load(Ordering::SeqCst));
    let call = api.state.store().get_call(&id).await.unwrap().unwrap();
    assert_eq!(
        call.disconnection_reason, None,
        "the engine ends live calls and records why"
    );
}
