//! Issue 4, inbound from a trunk: a number is imported and bound to an agent; SIPp, as the
//! carrier, sends an INVITE to `+14155550100@dialtone` with an `X-Customer-Id` header and
//! plays a tone. The agent's `start` carries the header, the tone comes back, and SIPp's
//! BYE ends the call as `user_hangup`, with direction `inbound` and the header recorded.
//! A number's `allowed_inbound_country_list` turns callers from other countries away with
//! 403 before its webhook or agent is asked.

mod common_call;

use std::time::Duration;

use common_call::agent::{Mode, TestAgent};
use common_call::capture::Capture;
use common_call::flow::split_rtp;
use common_call::sipp::SippRun;
use common_call::{audio, sipp, Dialtone};
use dialtone::media::codec::Codec;
use serde_json::{json, Value};
use tokio::net::TcpListener;

/// Imports a number (asserting 201).
async fn import(server: &Dialtone, body: Value) {
    let (status, number) = server.api("POST", "/import-phone-number", Some(body)).await;
    assert_eq!(status, 201, "{number}");
}

/// SIPp as the carrier: a call from `caller` to `number` (`uac_pcap_pcmu_carrier.xml`).
async fn carrier_call(server: &Dialtone, number: &str, caller: &str, media_port: u16) -> SippRun {
    sipp::run_uac(sipp::Uac {
        scenario: "uac_pcap_pcmu_carrier.xml",
        target: server.sip,
        service: number,
        dir: server.dir.path(),
        media_port,
        timeout: Duration::from_secs(30),
        extra: vec!["-key".into(), "caller".into(), caller.into()],
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carrier_call_to_an_imported_number_reaches_its_agent_with_x_headers() {
    let server = Dialtone::start().await;
    let agent = TestAgent::start(Mode::Echo).await;
    let agent_id = server.create_agent(&agent.url(), "mulaw_8000").await;
    import(
        &server,
        json!({
            "phone_number": "+14155550100",
            "termination_uri": "trunk.example.com",
            "inbound_agent_id": agent_id,
        }),
    )
    .await;

    let media_port = common_call::free_port_block(4);
    let capture = Capture::start(
        server.dir.path(),
        "rtp",
        &format!("udp and port {media_port}"),
    )
    .await;
    let run = carrier_call(&server, "+14155550100", "+14155550123", media_port).await;
    let packets = capture.stop().await;
    assert!(run.ok(), "the SIPp call failed:\n{}", run.describe());

    // The agent's start carries the caller's X- header and the number called.
    let conns = agent
        .wait_until(Duration::from_secs(5), |c| c.iter().all(|c| c.finished))
        .await;
    assert_eq!(conns.len(), 1, "one agent websocket: {conns:?}");
    let start = conns[0].first("start").expect("a start message").clone();
    let params = &start["start"]["customParameters"];
    assert_eq!(params["X-Customer-Id"], "cust-42", "{start}");
    assert_eq!(params["to_number"], "+14155550100", "{start}");
    assert_eq!(params["direction"], "inbound", "{start}");
    let call_id = start["start"]["callSid"].as_str().unwrap().to_string();

    // Audio both ways: the tone comes back.
    let (_, returned) = split_rtp(&packets, media_port);
    let rtp: Vec<_> = returned.into_iter().map(|(_, r)| r).collect();
    let pcm = audio::decode_rtp(Codec::Pcmu, &rtp);
    let tone = audio::find_tone(&pcm, 8000, audio::TONE_HZ, 0.5, 300.0);
    assert!(tone.tone_seconds() >= 3.0, "tone back: {tone:?}");

    // The call record.
    let call = server
        .wait_call_final(&call_id, Duration::from_secs(10))
        .await;
    assert_eq!(call["call_status"], "ended", "{call}");
    assert_eq!(call["disconnection_reason"], "user_hangup", "{call}");
    assert_eq!(call["direction"], "inbound", "{call}");
    assert_eq!(call["to_number"], "+14155550100", "{call}");
    assert_eq!(
        call["custom_sip_headers"]["X-Customer-Id"], "cust-42",
        "{call}"
    );
    assert!(call["duration_ms"].as_i64().unwrap() > 0, "{call}");
}

/// A one-shot HTTP server standing in for the number's inbound webhook: it records the
/// request and answers with an override naming `agent_id`.
async fn webhook_server(agent_id: String) -> (String, tokio::task::JoinHandle<String>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/inbound", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 8192];
        let n = s.read(&mut buf).await.unwrap();
        let request = String::from_utf8_lossy(&buf[..n]).to_string();
        let body = json!({"call_inbound": {
            "override_agent_id": agent_id,
            "metadata": {"crm": "vip"},
            "dynamic_variables": {"customer_name": "Ada"},
        }})
        .to_string();
        let reply = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(reply.as_bytes()).await.unwrap();
        request
    });
    (url, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_webhook_overrides_the_agent_and_adds_context() {
    let server = Dialtone::start().await;
    let bound = TestAgent::start(Mode::Echo).await;
    let chosen = TestAgent::start(Mode::Echo).await;
    let bound_id = server.create_agent(&bound.url(), "mulaw_8000").await;
    let chosen_id = server.create_agent(&chosen.url(), "mulaw_8000").await;
    let (hook_url, hook) = webhook_server(chosen_id.clone()).await;
    import(
        &server,
        json!({
            "phone_number": "+14155550101",
            "termination_uri": "trunk.example.com",
            "inbound_agent_id": bound_id,
            "inbound_webhook_url": hook_url,
        }),
    )
    .await;
    let media_port = common_call::free_port_block(4);
    let run = carrier_call(&server, "+14155550101", "+14155550123", media_port).await;
    assert!(run.ok(), "the SIPp call failed:\n{}", run.describe());

    let request = hook.await.unwrap();
    assert!(request.starts_with("POST /inbound HTTP/1.1"), "{request}");
    assert!(request.contains("\"event\":\"call_inbound\""), "{request}");
    assert!(request.contains("+14155550101"), "{request}");

    let conns = chosen
        .wait_until(Duration::from_secs(5), |c| {
            !c.is_empty() && c.iter().all(|c| c.finished)
        })
        .await;
    assert_eq!(
        conns.len(),
        1,
        "the webhook's agent takes the call: {conns:?}"
    );
    let start = conns[0].first("start").expect("a start message").clone();
    let params = &start["start"]["customParameters"];
    assert_eq!(params["agent_id"], chosen_id.as_str(), "{start}");
    assert_eq!(params["customer_name"], "Ada", "{start}");
    assert_eq!(params["metadata"], "{\"crm\":\"vip\"}", "{start}");
    let bound_conns = bound
        .wait_until(Duration::from_millis(200), |_| false)
        .await;
    assert!(
        bound_conns.is_empty(),
        "the bound agent is not called: {bound_conns:?}"
    );

    let call_id = start["start"]["callSid"].as_str().unwrap().to_string();
    let call = server
        .wait_call_final(&call_id, Duration::from_secs(10))
        .await;
    assert_eq!(call["agent_id"], chosen_id.as_str(), "{call}");
    assert_eq!(call["metadata"]["crm"], "vip", "{call}");
    assert_eq!(call["disconnection_reason"], "user_hangup", "{call}");
}

/// A number taking calls from Canada only, with an inbound webhook that must not be asked
/// for refused callers.
async fn canada_only_number(server: &Dialtone, number: &str, agent_id: &str) -> TcpListener {
    let hook = TcpListener::bind("127.0.0.1:0").await.unwrap();
    import(
        server,
        json!({
            "phone_number": number,
            "termination_uri": "trunk.example.com",
            "inbound_agent_id": agent_id,
            "inbound_webhook_url": format!("http://{}/inbound", hook.local_addr().unwrap()),
            "allowed_inbound_country_list": ["CA"],
        }),
    )
    .await;
    hook
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_from_an_unlisted_country_gets_403_and_reaches_nobody() {
    let server = Dialtone::start().await;
    let agent = TestAgent::start(Mode::Echo).await;
    let agent_id = server.create_agent(&agent.url(), "mulaw_8000").await;
    let hook = canada_only_number(&server, "+14155550102", &agent_id).await;

    // A San Francisco caller: US, not on the list.
    let media_port = common_call::free_port_block(4);
    let run = carrier_call(&server, "+14155550102", "+14155550123", media_port).await;
    // The scenario expects an answer, so SIPp counts the call as failed (it ACKs the 403).
    let codes = run.received_status_codes();
    assert!(
        codes.contains(&403) && !codes.contains(&200),
        "expected 403 and no answer: {codes:?}\n{}",
        run.describe()
    );
    assert!(
        run.messages
            .contains("403 Forbidden (caller country not allowed)"),
        "{}",
        run.describe()
    );

    // Neither the webhook nor the agent was asked, and no call was recorded.
    let webhook = tokio::time::timeout(Duration::from_millis(300), hook.accept()).await;
    assert!(webhook.is_err(), "the inbound webhook was called");
    let conns = agent
        .wait_until(Duration::from_millis(300), |c| !c.is_empty())
        .await;
    assert!(conns.is_empty(), "no agent websocket: {conns:?}");
    let (status, calls) = server.api("POST", "/v3/list-calls", Some(json!({}))).await;
    assert_eq!(status, 200, "{calls}");
    assert_eq!(calls["items"], json!([]), "no call record");

    let metrics = server.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l == "dialtone_inbound_calls_rejected_total{cause=\"country_not_allowed\"} 1"),
        "{metrics}"
    );
    let log = server.log();
    let line = log
        .lines()
        .find(|l| l.contains("caller country not allowed"))
        .unwrap_or_else(|| panic!("no log line for the refusal:\n{log}"));
    assert!(
        line.contains("+14155550102") && line.contains("US"),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_from_a_listed_country_is_answered() {
    let server = Dialtone::start().await;
    let agent = TestAgent::start(Mode::Echo).await;
    let agent_id = server.create_agent(&agent.url(), "mulaw_8000").await;
    let hook = canada_only_number(&server, "+14155550103", &agent_id).await;
    // The webhook answers with nothing to change; the bound agent takes the call.
    let webhook = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut s, _) = hook.accept().await.unwrap();
        let mut buf = vec![0u8; 8192];
        let _ = s.read(&mut buf).await.unwrap();
        s.write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
            .await
            .unwrap();
    });

    // A Toronto caller: CA.
    let media_port = common_call::free_port_block(4);
    let run = carrier_call(&server, "+14155550103", "+14165550123", media_port).await;
    assert!(run.ok(), "the SIPp call failed:\n{}", run.describe());
    webhook.await.unwrap();
    let conns = agent
        .wait_until(Duration::from_secs(5), |c| {
            !c.is_empty() && c.iter().all(|c| c.finished)
        })
        .await;
    assert_eq!(conns.len(), 1, "one agent websocket: {conns:?}");
    let start = conns[0].first("start").expect("a start message").clone();
    let params = &start["start"]["customParameters"];
    assert_eq!(params["from_number"], "+14165550123", "{start}");
    let call_id = start["start"]["callSid"].as_str().unwrap().to_string();
    let call = server
        .wait_call_final(&call_id, Duration::from_secs(10))
        .await;
    assert_eq!(call["disconnection_reason"], "user_hangup", "{call}");
    assert_eq!(call["from_number"], "+14165550123", "{call}");
}
