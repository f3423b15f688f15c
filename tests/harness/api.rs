//! The server's HTTP API as the tests use it: raw requests with or without the key, JSON
//! calls with it, and the steps most call tests take (create an agent, register a call,
//! import a number, place an outbound call, wait for a call's status), plus what every
//! ended call object must say.

use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::http::{http_request, HttpResponse};
use super::server::{Server, API_KEY};
use super::{now_ms, unique};

/// The statuses of a call that is over.
pub const FINAL_STATUSES: &[&str] = &["ended", "error", "not_connected"];

impl Server {
    /// `GET path` without credentials.
    pub fn get(&self, path: &str) -> HttpResponse {
        http_request(self.http_addr(), "GET", path, &[], None)
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// `GET path` with `Authorization: Bearer key`.
    pub fn get_with_key(&self, path: &str, key: &str) -> HttpResponse {
        let auth = format!("Bearer {key}");
        http_request(
            self.http_addr(),
            "GET",
            path,
            &[("Authorization", auth.as_str())],
            None,
        )
        .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// An API call with [`API_KEY`]; returns the status and the JSON body (Null when the
    /// body is not JSON). A POST or PATCH without a body sends an empty one.
    pub fn api(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let text = body.map(|b| b.to_string());
        let body = text
            .as_deref()
            .or(matches!(method, "POST" | "PATCH").then_some(""));
        let auth = format!("Bearer {API_KEY}");
        let r = http_request(
            self.http_addr(),
            method,
            path,
            &[
                ("Authorization", auth.as_str()),
                ("Accept", "application/json"),
            ],
            body,
        )
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        (
            r.status,
            serde_json::from_str(&r.body).unwrap_or(Value::Null),
        )
    }

    /// Creates an audio-websocket agent streaming to `ws_url` in `encoding`; its id.
    pub fn create_agent(&self, ws_url: &str, encoding: &str) -> String {
        let (status, body) = self.api(
            "POST",
            "/create-agent",
            Some(json!({
                "agent_name": unique("e2e-agent-"),
                "response_engine": {
                    "type": "audio-websocket",
                    "url": ws_url,
                    "audio_encoding": encoding,
                    "headers": {"X-E2E": "yes"},
                }
            })),
        );
        assert!(
            status == 200 || status == 201,
            "create-agent: {status} {body}"
        );
        body["agent_id"]
            .as_str()
            .unwrap_or_else(|| panic!("create-agent: no agent_id in {body}"))
            .to_string()
    }

    /// Changes an agent (asserts 200); returns the agent object.
    pub fn update_agent(&self, agent_id: &str, changes: Value) -> Value {
        let (status, agent) =
            self.api("PATCH", &format!("/update-agent/{agent_id}"), Some(changes));
        assert_eq!(status, 200, "update-agent {agent_id}: {agent}");
        agent
    }

    /// Registers a call for `agent_id` (with metadata and the dynamic variable
    /// `customer=Ada`); asserts 201 and the call object's shape, returns its `call_id`.
    pub fn register_call(&self, agent_id: &str) -> String {
        let (status, body) = self.api(
            "POST",
            "/v2/register-phone-call",
            Some(json!({
                "agent_id": agent_id,
                "metadata": {"suite": "e2e"},
                "retell_llm_dynamic_variables": {"customer": "Ada"},
            })),
        );
        assert_eq!(status, 201, "register-phone-call: {body}");
        assert_eq!(body["call_status"], "registered", "{body}");
        let call_id = body["call_id"].as_str().expect("call_id").to_string();
        assert!(!call_id.is_empty(), "{body}");
        let uri = body["sip_uri"]
            .as_str()
            .unwrap_or_else(|| panic!("register-phone-call: no sip_uri in {body}"));
        assert!(
            uri.starts_with(&format!("sip:{call_id}@")),
            "sip_uri {uri} should be sip:{call_id}@host"
        );
        call_id
    }

    /// Imports a phone number (asserts 201); returns the number object.
    pub fn import_number(&self, body: Value) -> Value {
        let (status, number) = self.api("POST", "/import-phone-number", Some(body));
        assert_eq!(status, 201, "import-phone-number: {number}");
        number
    }

    /// Places an outbound call (asserts 201); returns the call object.
    pub fn create_phone_call(&self, body: Value) -> Value {
        let (status, call) = self.api("POST", "/v2/create-phone-call", Some(body));
        assert_eq!(status, 201, "create-phone-call: {call}");
        call
    }

    /// `POST /v2/stop-call/{id}`; the status and body, for the caller to judge.
    pub fn stop_call(&self, call_id: &str) -> (u16, Value) {
        self.api("POST", &format!("/v2/stop-call/{call_id}"), None)
    }

    /// `GET /v2/get-call/{id}` (asserts 200).
    pub fn get_call(&self, call_id: &str) -> Value {
        let (status, body) = self.api("GET", &format!("/v2/get-call/{call_id}"), None);
        assert_eq!(status, 200, "get-call {call_id}: {body}");
        body
    }

    /// Polls the call object until `done` holds or `limit` passes; returns the last one
    /// read either way (the caller asserts).
    pub fn wait_call(
        &self,
        call_id: &str,
        limit: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let call = self.get_call(call_id);
            if done(&call) || Instant::now() >= deadline {
                return call;
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Polls until the call's status is one of `statuses` (bounded; the caller asserts).
    pub fn wait_call_status(&self, call_id: &str, statuses: &[&str], limit: Duration) -> Value {
        self.wait_call(call_id, limit, |call| {
            statuses.contains(&call["call_status"].as_str().unwrap_or(""))
        })
    }

    /// Polls until the call is over ([`FINAL_STATUSES`]).
    pub fn wait_call_final(&self, call_id: &str, limit: Duration) -> Value {
        self.wait_call_status(call_id, FINAL_STATUSES, limit)
    }
}

/// Asserts what an ended call object must say: its status and reason, an end within the
/// test (from `t0`, unix ms, to now), and for an `answered` call a start between `t0` and
/// the end with `duration_ms` = end - start (to the second); an unanswered call has
/// (almost) no duration.
pub fn assert_call_final(call: &Value, status: &str, reason: &str, t0: i64, answered: bool) {
    assert_eq!(
        (
            call["call_status"].as_str(),
            call["disconnection_reason"].as_str()
        ),
        (Some(status), Some(reason)),
        "call object: {call}"
    );
    let now = now_ms();
    let end = call["end_timestamp"]
        .as_i64()
        .unwrap_or_else(|| panic!("no end_timestamp: {call}"));
    assert!(
        end >= t0 - 1000 && end <= now + 1000,
        "end_timestamp {end} not within the test ({t0}..{now}): {call}"
    );
    let duration = call["duration_ms"]
        .as_i64()
        .unwrap_or_else(|| panic!("no duration_ms: {call}"));
    if answered {
        let start = call["start_timestamp"]
            .as_i64()
            .unwrap_or_else(|| panic!("no start_timestamp on an answered call: {call}"));
        assert!(
            start >= t0 - 1000 && start <= end && start <= now,
            "start_timestamp {start} not within the test ({t0}..{now}) and before end {end}: \
             {call}"
        );
        assert!(
            duration >= 0 && (duration - (end - start)).abs() <= 1000,
            "duration_ms {duration} disagrees with end - start = {}: {call}",
            end - start
        );
    } else {
        assert!(
            (0..=1000).contains(&duration),
            "an unanswered call has (almost) no duration; duration_ms {duration}: {call}"
        );
    }
}

/// [`assert_call_final`] for a call the caller answered and then hung up.
pub fn assert_ended_by_caller(call: &Value, t0: i64) {
    assert_call_final(call, "ended", "user_hangup", t0, true);
}
