//! Phone number handlers, in process, on an in-memory store.

use axum::http::{Method, StatusCode};
use serde_json::{json, Value};

use super::{bearer, fresh_handle, send, services, Reply, KEY};
use crate::http::{router, AppState};

const PASSWORD: &str = "tr-unk-Pa55-w0rd";

struct Api {
    state: AppState,
    _tx: tokio::sync::watch::Sender<bool>,
}

impl Api {
    async fn new() -> Api {
        let (tx, rx) = tokio::sync::watch::channel(false);
        Api {
            state: AppState::new(&[KEY.to_owned()], fresh_handle(), rx, services().await),
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
        let text = String::from_utf8_lossy(&reply.body).into_owned();
        assert_eq!(reply.status, status, "{text}");
        assert!(!text.contains(PASSWORD), "the password leaked: {text}");
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

    async fn agent(&self) -> String {
        let agent = self
            .ok(
                Method::POST,
                "/create-agent",
                Some(json!({
                    "response_engine": {"type": "audio-websocket", "url": "wss://bot.example.com/ws"},
                })),
                StatusCode::CREATED,
            )
            .await;
        agent["agent_id"].as_str().unwrap().to_owned()
    }

    async fn import(&self, body: Value) -> Value {
        self.ok(
            Method::POST,
            "/import-phone-number",
            Some(body),
            StatusCode::CREATED,
        )
        .await
    }
}

#[tokio::test]
async fn import_applies_defaults_and_never_returns_the_password() {
    let api = Api::new().await;
    let a = api.agent().await;
    let b = api.agent().await;
    let n = api
        .import(json!({
            "phone_number": "+14155550100",
            "termination_uri": "example.pstn.twilio.com",
            "sip_trunk_auth_username": "trunkuser",
            "sip_trunk_auth_password": PASSWORD,
            "inbound_agents": [{"agent_id": a, "weight": 0.4}, {"agent_id": b, "weight": 0.6, "agent_version": 0}],
            "outbound_agent_id": a,
            "nickname": "front desk",
            "allowed_inbound_country_list": ["US", "CA"],
        }))
        .await;
    assert_eq!(n["phone_number"], "+14155550100");
    assert_eq!(n["phone_number_type"], "custom");
    assert_eq!(n["phone_number_pretty"], "+1 (415) 555-0100");
    assert_eq!(n["nickname"], "front desk");
    assert_eq!(n["inbound_agent_id"], Value::Null, "two inbound agents");
    assert_eq!(n["outbound_agent_id"], a.as_str());
    assert_eq!(
        n["inbound_agents"],
        json!([{"agent_id": a, "weight": 0.4}, {"agent_id": b, "weight": 0.6, "agent_version": 0}])
    );
    assert_eq!(
        n["outbound_agents"],
        json!([{"agent_id": a, "weight": 1.0}])
    );
    assert_eq!(n["allowed_inbound_country_list"], json!(["US", "CA"]));
    assert_eq!(n["allowed_outbound_country_list"], Value::Null);
    assert_eq!(
        n["sip_outbound_trunk_config"],
        json!({
            "termination_uri": "example.pstn.twilio.com",
            "auth_username": "trunkuser",
            "transport": "TCP",
            "codecs": ["PCMU", "PCMA", "G722"],
        })
    );
    assert!(n["last_modification_timestamp"].as_i64().unwrap() > 0);
    // Stored, though: the call engine reads it from the store.
    let stored = api
        .state
        .store()
        .get_number("+14155550100")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        stored.sip_trunk_auth_password.as_ref().map(|p| p.expose()),
        Some(PASSWORD)
    );

    for path in [
        "/get-phone-number/%2B14155550100",
        "/get-phone-number/+14155550100",
        "/get-phone-number/14155550100",
        "/get-phone-number/%2b14155550100",
    ] {
        let got = api.ok(Method::GET, path, None, StatusCode::OK).await;
        assert_eq!(got, n, "{path}");
    }
    let reply = api
        .call(Method::GET, "/get-phone-number/+14155550199", None)
        .await;
    let err = reply.error(StatusCode::NOT_FOUND, "not_found");
    assert!(err["message"].as_str().unwrap().contains("+14155550199"));

    // Importing it again, with or without the '+', is a conflict.
    for again in ["+14155550100", "14155550100"] {
        let reply = api
            .call(
                Method::POST,
                "/import-phone-number",
                Some(
                    json!({"phone_number": again, "termination_uri": "t.example.com",
                            "ignore_e164_validation": true}),
                ),
            )
            .await;
        reply.error(StatusCode::CONFLICT, "conflict");
    }
}

#[tokio::test]
async fn bad_imports_are_400s_naming_the_field_and_write_nothing() {
    let api = Api::new().await;
    let a = api.agent().await;
    let base = json!({"phone_number": "+14155550100", "termination_uri": "trunk.example.com"});
    let with = |extra: Value| {
        let mut body = base.clone();
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    let path = "/import-phone-number";
    for (body, field) in [
        (json!({"termination_uri": "t.example.com"}), "phone_number"),
        (json!({"phone_number": "+14155550100"}), "termination_uri"),
        (with(json!({"phone_number": "4155550100"})), "phone_number"),
        (with(json!({"phone_number": "+0155550100"})), "phone_number"),
        (
            with(json!({"phone_number": "+1 415 555 0100"})),
            "phone_number",
        ),
        (
            with(json!({"phone_number": "a/b", "ignore_e164_validation": true})),
            "phone_number",
        ),
        (
            with(json!({"ignore_e164_validation": "true"})),
            "ignore_e164_validation",
        ),
        (
            with(json!({"termination_uri": "tel:+14155550100"})),
            "termination_uri",
        ),
        (
            with(json!({"termination_uri": "trunk.example.com:0"})),
            "termination_uri",
        ),
        (
            with(json!({"termination_uri": "u:p@trunk.example.com"})),
            "termination_uri",
        ),
        (with(json!({"transport": "SCTP"})), "transport"),
        (
            with(json!({"termination_uri": "t.example.com;transport=udp", "transport": "TCP"})),
            "transport",
        ),
        (
            with(json!({"inbound_agents": [{"agent_id": a, "weight": 0.5}]})),
            "inbound_agents",
        ),
        (
            with(json!({"inbound_agents": [{"agent_id": a, "weight": 0}]})),
            "inbound_agents[0].weight",
        ),
        (
            with(json!({"outbound_agents": [{"agent_id": a}]})),
            "outbound_agents[0].weight",
        ),
        (
            with(json!({"inbound_agent_id": a, "inbound_agents": [{"agent_id": a, "weight": 1}]})),
            "inbound_agent_id",
        ),
        (
            with(json!({"allowed_outbound_country_list": ["US", "XX"]})),
            "allowed_outbound_country_list[1]",
        ),
        (
            with(json!({"allowed_inbound_country_list": ["us"]})),
            "allowed_inbound_country_list[0]",
        ),
        (with(json!({"codecs": ["PCMU", "opus"]})), "codecs[1]"),
        (
            with(json!({"inbound_webhook_url": "ftp://x"})),
            "inbound_webhook_url",
        ),
        (
            with(json!({"sip_trunk_auth_password": PASSWORD})),
            "sip_trunk_auth_password",
        ),
        (with(json!({"nickname": "x".repeat(300)})), "nickname"),
    ] {
        api.bad(Method::POST, path, body, field).await;
    }
    // An unknown agent is a 404 naming it.
    let reply = api
        .call(
            Method::POST,
            path,
            Some(with(json!({"outbound_agent_id": "agent_missing"}))),
        )
        .await;
    let err = reply.error(StatusCode::NOT_FOUND, "not_found");
    assert!(err["message"].as_str().unwrap().contains("agent_missing"));
    // Nothing was written.
    let all = api
        .ok(Method::GET, "/list-phone-numbers", None, StatusCode::OK)
        .await;
    assert_eq!(all, json!([]));
}

#[tokio::test]
async fn import_accepts_the_documented_variants() {
    let api = Api::new().await;
    let n = api
        .import(json!({
            "phone_number": "1001",
            "ignore_e164_validation": true,
            "termination_uri": "sips:trunk.example.com:5071",
            "codecs": ["pcma", "g722"],
            "sip_trunk_auth_username": "",
            "sip_trunk_auth_password": "",
            "voice_id": "unknown fields are ignored",
        }))
        .await;
    assert_eq!(n["phone_number"], "1001");
    assert_eq!(n["phone_number_pretty"], "1001");
    assert_eq!(n["sip_outbound_trunk_config"]["transport"], "TLS");
    assert_eq!(n["sip_outbound_trunk_config"]["auth_username"], Value::Null);
    assert_eq!(
        n["sip_outbound_trunk_config"]["codecs"],
        json!(["PCMA", "G722"])
    );
    let n = api
        .import(json!({
            "phone_number": "+442071838750",
            "termination_uri": "10.0.0.1:5080;transport=udp",
        }))
        .await;
    assert_eq!(n["sip_outbound_trunk_config"]["transport"], "UDP");
    assert_eq!(n["inbound_agents"], json!([]));
}

#[tokio::test]
async fn update_is_partial_and_can_change_the_password() {
    let api = Api::new().await;
    let a = api.agent().await;
    let b = api.agent().await;
    let first = api
        .import(json!({
            "phone_number": "+14155550100",
            "termination_uri": "trunk.example.com",
            "sip_trunk_auth_username": "user1",
            "sip_trunk_auth_password": "old-password",
            "inbound_agent_id": a,
            "nickname": "before",
        }))
        .await;
    let path = "/update-phone-number/%2B14155550100";
    let u = api
        .ok(
            Method::PATCH,
            path,
            Some(json!({
                "nickname": "after",
                "auth_password": PASSWORD,
                "outbound_agents": [{"agent_id": a, "weight": 0.5}, {"agent_id": b, "weight": 0.5}],
                "transport": "udp",
                "allowed_outbound_country_list": ["GB"],
            })),
            StatusCode::OK,
        )
        .await;
    assert_eq!(u["nickname"], "after");
    assert_eq!(u["inbound_agent_id"], a.as_str(), "untouched");
    assert_eq!(u["outbound_agents"].as_array().unwrap().len(), 2);
    assert_eq!(u["sip_outbound_trunk_config"]["transport"], "UDP");
    assert_eq!(u["sip_outbound_trunk_config"]["auth_username"], "user1");
    assert_eq!(u["allowed_outbound_country_list"], json!(["GB"]));
    assert!(
        u["last_modification_timestamp"].as_i64() >= first["last_modification_timestamp"].as_i64()
    );
    let stored = api
        .state
        .store()
        .get_number("14155550100")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        stored.sip_trunk_auth_password.as_ref().map(|p| p.expose()),
        Some(PASSWORD)
    );

    // null clears; the literal '+' in the path works too.
    let u = api
        .ok(
            Method::PATCH,
            "/update-phone-number/+14155550100",
            Some(
                json!({"nickname": null, "inbound_agents": null, "transport": null,
                        "codecs": ["PCMU"]}),
            ),
            StatusCode::OK,
        )
        .await;
    assert_eq!(u["nickname"], Value::Null);
    assert_eq!(u["inbound_agents"], json!([]));
    assert_eq!(u["inbound_agent_id"], Value::Null);
    assert_eq!(u["sip_outbound_trunk_config"]["transport"], "TCP");
    assert_eq!(u["sip_outbound_trunk_config"]["codecs"], json!(["PCMU"]));

    // A new URI that names its transport brings it along.
    let u = api
        .ok(
            Method::PATCH,
            path,
            Some(json!({"termination_uri": "trunk2.example.com;transport=tls"})),
            StatusCode::OK,
        )
        .await;
    assert_eq!(u["sip_outbound_trunk_config"]["transport"], "TLS");

    // Bad updates write nothing.
    let before = api
        .ok(
            Method::GET,
            path.replace("update", "get").as_str(),
            None,
            StatusCode::OK,
        )
        .await;
    for (body, field) in [
        (json!({"transport": "UDP"}), "transport"), // contradicts ;transport=tls
        (json!({"termination_uri": null}), "termination_uri"),
        (json!({"auth_username": null}), "auth_password"), // password left alone
        (
            json!({"inbound_agents": [{"agent_id": a, "weight": 0.9}]}),
            "inbound_agents",
        ),
        (json!({"codecs": ["speex"]}), "codecs[0]"),
        (json!({"nickname": 5}), "nickname"),
    ] {
        api.bad(Method::PATCH, path, body, field).await;
    }
    let reply = api
        .call(
            Method::PATCH,
            path,
            Some(json!({"inbound_agent_id": "agent_gone"})),
        )
        .await;
    reply.error(StatusCode::NOT_FOUND, "not_found");
    let after = api
        .ok(
            Method::GET,
            path.replace("update", "get").as_str(),
            None,
            StatusCode::OK,
        )
        .await;
    assert_eq!(before, after);

    // Clearing both credentials together is fine.
    let u = api
        .ok(
            Method::PATCH,
            path,
            Some(json!({"auth_username": null, "auth_password": null})),
            StatusCode::OK,
        )
        .await;
    assert_eq!(u["sip_outbound_trunk_config"]["auth_username"], Value::Null);

    let reply = api
        .call(
            Method::PATCH,
            "/update-phone-number/+19995550100",
            Some(json!({})),
        )
        .await;
    reply.error(StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn list_pages_and_delete() {
    let api = Api::new().await;
    let numbers: Vec<String> = (0..3).map(|i| format!("+1415555010{i}")).collect();
    for n in &numbers {
        api.import(json!({"phone_number": n, "termination_uri": "t.example.com"}))
            .await;
    }
    let page = api
        .ok(
            Method::GET,
            "/v2/list-phone-numbers?limit=2&sort_order=ascending",
            None,
            StatusCode::OK,
        )
        .await;
    let got: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["phone_number"].as_str().unwrap())
        .collect();
    assert_eq!(got, [numbers[0].as_str(), numbers[1].as_str()]);
    assert_eq!(page["has_more"], true);
    assert_eq!(page["pagination_key"], numbers[1].as_str());
    let rest = api
        .ok(
            Method::GET,
            "/v2/list-phone-numbers?limit=2&sort_order=ascending&pagination_key=%2B14155550101",
            None,
            StatusCode::OK,
        )
        .await;
    assert_eq!(rest["items"][0]["phone_number"], numbers[2].as_str());
    assert_eq!(rest["has_more"], false);
    assert_eq!(rest["pagination_key"], Value::Null);
    let newest = api
        .ok(Method::GET, "/v2/list-phone-numbers", None, StatusCode::OK)
        .await;
    assert_eq!(newest["items"][0]["phone_number"], numbers[2].as_str());
    for bad in [
        "limit=0",
        "limit=x",
        "sort_order=up",
        "pagination_key=%2B1999",
    ] {
        let reply = api
            .call(Method::GET, &format!("/v2/list-phone-numbers?{bad}"), None)
            .await;
        reply.error(StatusCode::BAD_REQUEST, "bad_request");
    }
    let all = api
        .ok(Method::GET, "/list-phone-numbers", None, StatusCode::OK)
        .await;
    assert_eq!(all.as_array().unwrap().len(), 3);

    let gone = api
        .ok(
            Method::DELETE,
            "/delete-phone-number/%2B14155550100",
            None,
            StatusCode::NO_CONTENT,
        )
        .await;
    assert_eq!(gone, Value::Null);
    api.ok(
        Method::DELETE,
        "/delete-phone-number/+14155550101",
        None,
        StatusCode::NO_CONTENT,
    )
    .await;
    let reply = api
        .call(Method::DELETE, "/delete-phone-number/14155550101", None)
        .await;
    reply.error(StatusCode::NOT_FOUND, "not_found");
    let all = api
        .ok(Method::GET, "/list-phone-numbers", None, StatusCode::OK)
        .await;
    assert_eq!(all.as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn outbound_country_list_refuses_other_countries_and_writes_nothing() {
    let api = Api::new().await;
    let a = api.agent().await;
    api.import(json!({
        "phone_number": "+14155550100",
        "termination_uri": "trunk.example.com",
        "outbound_agent_id": a,
        "allowed_outbound_country_list": ["CA", "US"],
    }))
    .await;
    for (to, country) in [
        ("+442071838750", "GB"),
        ("+18765550100", "JM"),
        ("+80012345678", "no known country"),
    ] {
        let body = json!({"from_number": "+14155550100", "to_number": to});
        let reply = api
            .call(Method::POST, "/v2/create-phone-call", Some(body))
            .await;
        let json = reply.error(StatusCode::BAD_REQUEST, "bad_request");
        assert_eq!(json["field"], "to_number", "{json}");
        let message = json["message"].as_str().unwrap();
        assert!(message.contains(country), "{message}");
        assert!(message.contains("[CA, US]"), "{message}");
    }
    let calls = api
        .ok(
            Method::POST,
            "/v3/list-calls",
            Some(json!({})),
            StatusCode::OK,
        )
        .await;
    assert_eq!(calls["items"], json!([]), "no call was created");
}

// That the password stays out of the log is tested in `tests/number_password_logs.rs`,
// in a process of its own: a subscriber scoped to one test thread races other tests over
// tracing's global callsite cache.
