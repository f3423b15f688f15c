//! Call webhooks end to end (API.md, "Webhooks"): the real binary, an agent whose
//! `webhook_url` points at a small recording HTTP server in the test, and real calls.
//!
//! - SIPp dials a registered call, the tone plays, SIPp hangs up: exactly one
//!   `call_started` then one `call_ended`, carrying the call object of `GET /v2/get-call`,
//!   each signature accepted by the official Python SDK's `Retell.verify` (and a tampered
//!   body refused).
//! - The webhook server answers 500 twice: `call_started` arrives on the third try and the
//!   call goes on unaffected.
//! - An outbound call the trunk (SIPp) refuses with 486: `call_ended` only.
//! - Calls stopped or expired before anyone dialled them: `call_ended`.
//! - SIGTERM while a `call_ended` waits for its retry: the retry still goes out, then the
//!   process exits.

mod harness;

use std::time::Duration;

use harness::agent::{Mode, TestAgent};
use harness::api::assert_ended_by_caller;
use harness::metrics::Metrics;
use harness::server::{Server, API_KEY};
use harness::sipp::Sipp;
use harness::webhook::{Hooked, WebhookServer};
use harness::{now_ms, unique};
use serde_json::{json, Value};

const SIGNING_KEY: &str = "whsec-e2e-0123456789";

/// What the official SDK's `Retell(api_key=key).verify(body, api_key=key, signature=sig)`
/// says of the body as received, of a tampered copy, and of the body with another key.
/// One Python run for the three (importing the SDK takes seconds).
fn sdk_verify(dir: &std::path::Path, body: &str, key: &str, signature: &str) -> [bool; 3] {
    let path = dir.join(format!("body-{}.json", unique("")));
    std::fs::write(&path, body.as_bytes()).unwrap();
    let script = "import sys\n\
                  from retell import Retell\n\
                  body = open(sys.argv[1], 'rb').read().decode('utf-8')\n\
                  key, sig = sys.argv[2], sys.argv[3]\n\
                  client = Retell(api_key=key)\n\
                  tampered = body.replace('\"call\"', '\"call\" ', 1)\n\
                  assert tampered != body\n\
                  print(client.verify(body, api_key=key, signature=sig),\n\
                        client.verify(tampered, api_key=key, signature=sig),\n\
                        client.verify(body, api_key='another-key-123', signature=sig))\n";
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&path)
        .arg(key)
        .arg(signature)
        .output()
        .expect("python3 with retell-sdk (pip install -r tests/sdk/requirements.txt)");
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        out.status.success(),
        "the SDK check failed to run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said: Vec<bool> = stdout
        .split_whitespace()
        .map(|w| match w {
            "True" => true,
            "False" => false,
            other => panic!("Retell.verify printed {other:?}"),
        })
        .collect();
    said.try_into()
        .unwrap_or_else(|_| panic!("expected three answers: {stdout:?}"))
}

/// The server, a webhook receiver answering `statuses`, and an echo agent whose
/// `webhook_url` points at it.
struct Setup {
    hook: WebhookServer,
    server: Server,
    agent_id: String,
    _agent: TestAgent,
}

async fn setup(statuses: &[u16], env: &[(&str, &str)]) -> Setup {
    let replies: Vec<(u16, &str)> = statuses.iter().map(|&s| (s, "")).collect();
    let hook = WebhookServer::start("/retell-webhook", &replies).await;
    let server = Server::start_with(env);
    let agent = TestAgent::start(Mode::Echo).await;
    let agent_id = server.create_agent(&agent.url(), "mulaw_8000");
    let body = server.update_agent(&agent_id, json!({ "webhook_url": hook.url }));
    assert_eq!(body["webhook_url"], hook.url.as_str(), "{body}");
    Setup {
        hook,
        server,
        agent_id,
        _agent: agent,
    }
}

impl Setup {
    /// Registers a call for the agent; returns its id.
    fn register(&self) -> String {
        self.server.register_call(&self.agent_id)
    }

    /// Stops a call through the API (204).
    fn stop(&self, call_id: &str) {
        let (status, body) = self.server.stop_call(call_id);
        assert_eq!(status, 204, "{body}");
    }

    /// Registers a call, SIPp dials it, plays the 5 s tone and hangs up; returns the final
    /// call object (checked as ended by the caller).
    fn answered_call(&self) -> Value {
        let call_id = self.register();
        let t0 = now_ms();
        let run = Sipp::uac("e2e/sipp/uac_pcap_pcmu.xml", self.server.sip_addr())
            .service(&call_id)
            .run();
        assert!(run.ok(), "the SIPp call failed:\n{}", run.describe());
        let call = self
            .server
            .wait_call_final(&call_id, Duration::from_secs(10));
        assert_ended_by_caller(&call, t0);
        call
    }
}

/// The count of `dialtone_webhook_events_total` for one event and outcome in a metrics page.
fn metric(text: &str, event: &str, outcome: &str) -> u64 {
    let labels = [("event", event), ("outcome", outcome)];
    Metrics::parse(text).sum("dialtone_webhook_events_total", &labels) as u64
}

/// Asserts the signature is the SDK's format with a fresh timestamp, and that the SDK
/// accepts it for this body and key and refuses a tampered body and another key.
fn assert_signed(server: &Server, hooked: &Hooked, key: &str) {
    let sig = hooked
        .header("x-retell-signature")
        .unwrap_or_else(|| panic!("no x-retell-signature in\n{}", hooked.head));
    let (stamp, digest) = sig
        .strip_prefix("v=")
        .and_then(|r| r.split_once(",d="))
        .unwrap_or_else(|| panic!("signature {sig} is not v=<ms>,d=<hex>"));
    let stamp: i64 = stamp.parse().expect("v= is unix ms");
    assert!((now_ms() - stamp).abs() < 60_000, "{sig}");
    assert_eq!(digest.len(), 64, "{sig}");
    let [valid, tampered, other_key] = sdk_verify(server.dir(), &hooked.body, key, &sig);
    assert!(valid, "Retell.verify refused {sig} for {}", hooked.body);
    assert!(!tampered, "Retell.verify accepted a tampered body");
    assert!(!other_key, "Retell.verify accepted another key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answered_call_sends_call_started_then_call_ended_signed() {
    let t = setup(&[200], &[("DIALTONE__WEBHOOKS__SIGNING_KEY", SIGNING_KEY)]).await;
    let (hook, server) = (&t.hook, &t.server);
    let t0 = now_ms();
    let call = t.answered_call();
    let call_id = call["call_id"].as_str().unwrap().to_owned();

    let seen = hook.wait_for(2, Duration::from_secs(10)).await;
    // Anything more (a duplicate) would come right after.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen_all = hook.seen();
    assert_eq!(seen_all.len(), 2, "exactly two events: {seen_all:#?}");
    let events: Vec<String> = seen.iter().map(Hooked::event).collect();
    assert_eq!(events, ["call_started", "call_ended"]);

    let started = seen[0].json();
    assert!(seen[0].head.starts_with("POST /retell-webhook HTTP/1.1"));
    assert_eq!(
        seen[0].header("content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(started["call"]["call_id"], call_id.as_str(), "{started}");
    assert_eq!(started["call"]["call_status"], "ongoing", "{started}");
    assert_eq!(
        started["call"]["agent_id"],
        t.agent_id.as_str(),
        "{started}"
    );
    assert!(started["call"]["start_timestamp"].as_i64().is_some());
    assert!(started["call"]["end_timestamp"].is_null(), "{started}");

    // call_ended carries the final call object, exactly as GET /v2/get-call returns it.
    let ended = seen[1].json();
    assert_eq!(ended["call"], call, "call_ended's call is get-call's");
    assert_eq!(ended["call"]["disconnection_reason"], "user_hangup");
    assert_ended_by_caller(&ended["call"], t0);

    for hooked in &seen {
        assert_signed(server, hooked, SIGNING_KEY);
    }
    let text = server.metrics().text;
    assert_eq!(metric(&text, "call_started", "delivered"), 1, "{text}");
    assert_eq!(metric(&text, "call_ended", "delivered"), 1, "{text}");
    assert!(
        !server.log().contains(SIGNING_KEY),
        "the signing key must never be logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_webhook_is_retried_and_the_call_goes_on() {
    // 500, 500, then 200: call_started lands on its third try (after 1 s + 2 s of
    // backoff, while the call runs); call_ended after it.
    // No signing key configured: the first API key signs, as with Retell.
    let t = setup(&[500, 500, 200], &[]).await;
    let (hook, server) = (&t.hook, &t.server);
    t.answered_call();

    let seen = hook.wait_for(4, Duration::from_secs(15)).await;
    let events: Vec<String> = seen.iter().map(Hooked::event).collect();
    assert_eq!(
        events,
        ["call_started", "call_started", "call_started", "call_ended"]
    );
    // The same event each time, signed afresh.
    assert_eq!(seen[0].body, seen[2].body);
    assert_signed(server, &seen[2], API_KEY);
    assert_signed(server, &seen[3], API_KEY);
    let text = server.metrics().text;
    assert_eq!(metric(&text, "call_started", "retried"), 2, "{text}");
    assert_eq!(metric(&text, "call_started", "delivered"), 1, "{text}");
    assert_eq!(metric(&text, "call_ended", "delivered"), 1, "{text}");
    assert_eq!(metric(&text, "call_started", "failed"), 0, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_call_refused_by_the_trunk_sends_call_ended_only() {
    let t = setup(&[200], &[("DIALTONE__WEBHOOKS__SIGNING_KEY", SIGNING_KEY)]).await;
    let (hook, server) = (&t.hook, &t.server);

    // SIPp as the trunk: 100, then 486 Busy Here, then it takes the ACK.
    let trunk = Sipp::uas("sipp/trunk_reject.xml")
        .replace("status", "486")
        .start();
    server.import_number(json!({
        "phone_number": "+14155550177",
        "termination_uri": format!("127.0.0.1:{}", trunk.sip_port),
        "transport": "UDP",
        "outbound_agent_id": t.agent_id,
    }));
    let created = server
        .create_phone_call(json!({"from_number": "+14155550177", "to_number": "+14155550199"}));
    let call_id = created["call_id"].as_str().unwrap().to_owned();
    let call = server.wait_call_final(&call_id, Duration::from_secs(15));
    assert_eq!(call["call_status"], "not_connected", "{call}");
    assert_eq!(call["disconnection_reason"], "dial_busy", "{call}");
    let exit = trunk.wait();
    assert!(
        exit.ok(),
        "the trunk scenario did not complete: {}",
        exit.describe()
    );

    let seen = hook.wait_for(1, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen_all = hook.seen();
    assert_eq!(seen_all.len(), 1, "call_ended only: {seen_all:#?}");
    assert_eq!(seen[0].event(), "call_ended");
    assert_eq!(
        seen[0].json()["call"],
        call,
        "call_ended's call is get-call's"
    );
    assert_signed(server, &seen[0], SIGNING_KEY);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_nobody_dialled_send_call_ended_when_stopped_or_expired() {
    let t = setup(
        &[200],
        &[
            ("DIALTONE__WEBHOOKS__SIGNING_KEY", SIGNING_KEY),
            ("DIALTONE__CALLS__REGISTERED_CALL_TIMEOUT_MS", "1500"),
        ],
    )
    .await;
    let (hook, server) = (&t.hook, &t.server);
    // Stopped through the API before anyone dialled it.
    let stopped = t.register();
    t.stop(&stopped);
    // Left to expire: the sweeper ends it.
    let expired = t.register();

    let seen = hook.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(seen.len(), 2, "{seen:#?}");
    let by_id = |id: &str| {
        seen.iter()
            .find(|h| h.json()["call"]["call_id"] == id)
            .unwrap_or_else(|| panic!("no event for {id}: {seen:#?}"))
            .clone()
    };
    for (id, reason) in [
        (&stopped, "manual_stopped"),
        (&expired, "registered_call_timeout"),
    ] {
        let hooked = by_id(id);
        assert_eq!(hooked.event(), "call_ended");
        assert_eq!(hooked.json()["call"]["disconnection_reason"], reason);
        assert_eq!(hooked.json()["call"], server.get_call(id));
        assert_signed(server, &hooked, SIGNING_KEY);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_gives_pending_webhooks_time_to_finish() {
    // The first try fails; the retry (1 s later) must still go out after SIGTERM.
    let mut t = setup(
        &[500, 200],
        &[("DIALTONE__WEBHOOKS__SIGNING_KEY", SIGNING_KEY)],
    )
    .await;
    let call_id = t.register();
    t.stop(&call_id);
    assert_eq!(t.hook.wait_for(1, Duration::from_secs(10)).await.len(), 1);

    t.server.signal("TERM");
    let seen = t.hook.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(seen.len(), 2, "the retry after SIGTERM: {seen:#?}");
    assert_eq!(seen[1].event(), "call_ended");
    assert_eq!(seen[1].json()["call"]["call_id"], call_id.as_str());
    assert!(
        t.server.wait_exit(Duration::from_secs(10)).is_some(),
        "SIGTERM must still end the process"
    );
}
