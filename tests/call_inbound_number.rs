//! Issue 4, inbound from a trunk: a number is imported and bound to an agent; SIPp, as the
//! carrier, sends an INVITE to `+14155550100@dialtone` with an `X-Customer-Id` header and
//! plays a tone. The agent's `start` carries the header, the tone comes back, and SIPp's
//! BYE ends the call as `user_hangup`, with direction `inbound` and the header recorded.
//! A number's `allowed_inbound_country_list` turns callers from other countries away with
//! 403 before its webhook or agent is asked.

mod harness;

use std::time::Duration;

use dialtone::media::codec::Codec;
use harness::agent::{Mode, TestAgent};
use harness::audio;
use harness::capture::Capture;
use harness::pcap::{rtp_only, split_rtp};
use harness::ports::free_port_block;
use harness::server::Server;
use harness::sipp::{Sipp, SippRun};
use harness::webhook::WebhookServer;
use serde_json::json;

/// SIPp as the carrier: a call from `caller` to `number` (`uac_pcap_pcmu_carrier.xml`).
fn carrier_call(server: &Server, number: &str, caller: &str, media_port: u16) -> SippRun {
    Sipp::uac("e2e/sipp/uac_pcap_pcmu_carrier.xml", server.sip_addr())
        .service(number)
        .media_port(media_port)
        .args(&["-key", "caller", caller])
        .run()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carrier_call_to_an_imported_number_reaches_its_agent_with_x_headers() {
    let server = Server::start();
    let agent = TestAgent::start(Mode::Echo).await;
    let agent_id = server.create_agent(&agent.url(), "mulaw_8000");
    server.import_number(json!({
        "phone_number": "+14155550100",
        "termination_uri": "trunk.example.com",
        "inbound_agent_id": agent_id,
    }));

    let media_port = free_port_block(4);
    let capture = Capture::udp(server.dir(), (media_port, media_port)).await;
    let run = carrier_call(&server, "+14155550100", "+14155550123", media_port);
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
    let (_, returned) = split_rtp(&packets, (media_port, media_port));
    let rtp = rtp_only(returned);
    let pcm = audio::decode_rtp(Codec::Pcmu, &rtp);
    let tone = audio::find_tone(&pcm, 8000, audio::TONE_HZ, 0.5, 300.0);
    assert!(tone.tone_seconds() >= 3.0, "tone back: {tone:?}");

    // The call record.
    let call = server.wait_call_final(&call_id, Duration::from_secs(10));
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_webhook_overrides_the_agent_and_adds_context() {
    let server = Server::start();
    let bound = TestAgent::start(Mode::Echo).await;
    let chosen = TestAgent::start(Mode::Echo).await;
    let bound_id = server.create_agent(&bound.url(), "mulaw_8000");
    let chosen_id = server.create_agent(&chosen.url(), "mulaw_8000");
    // The number's inbound webhook answers with an override naming the chosen agent.
    let override_agent = json!({"call_inbound": {
        "override_agent_id": chosen_id,
        "metadata": {"crm": "vip"},
        "dynamic_variables": {"customer_name": "Ada"},
    }})
    .to_string();
    let hook = WebhookServer::start("/inbound", &[(200, &override_agent)]).await;
    server.import_number(json!({
        "phone_number": "+14155550101",
        "termination_uri": "trunk.example.com",
        "inbound_agent_id": bound_id,
        "inbound_webhook_url": hook.url,
    }));
    let media_port = free_port_block(4);
    let run = carrier_call(&server, "+14155550101", "+14155550123", media_port);
    assert!(run.ok(), "the SIPp call failed:\n{}", run.describe());

    let requests = hook.wait_for(1, Duration::from_secs(10)).await;
    let request = requests
        .first()
        .expect("the inbound webhook was not called")
        .text();
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
    let call = server.wait_call_final(&call_id, Duration::from_secs(10));
    assert_eq!(call["agent_id"], chosen_id.as_str(), "{call}");
    assert_eq!(call["metadata"]["crm"], "vip", "{call}");
    assert_eq!(call["disconnection_reason"], "user_hangup", "{call}");
}

/// A number taking calls from Canada only, with an inbound webhook that must not be asked
/// for refused callers (it answers 204: nothing to change).
async fn canada_only_number(server: &Server, number: &str, agent_id: &str) -> WebhookServer {
    let hook = WebhookServer::start("/inbound", &[(204, "")]).await;
    server.import_number(json!({
        "phone_number": number,
        "termination_uri": "trunk.example.com",
        "inbound_agent_id": agent_id,
        "inbound_webhook_url": hook.url,
        "allowed_inbound_country_list": ["CA"],
    }));
    hook
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_from_an_unlisted_country_gets_403_and_reaches_nobody() {
    let server = Server::start();
    let agent = TestAgent::start(Mode::Echo).await;
    let agent_id = server.create_agent(&agent.url(), "mulaw_8000");
    let hook = canada_only_number(&server, "+14155550102", &agent_id).await;

    // A San Francisco caller: US, not on the list.
    let media_port = free_port_block(4);
    let run = carrier_call(&server, "+14155550102", "+14155550123", media_port);
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
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(hook.seen().is_empty(), "the inbound webhook was called");
    let conns = agent
        .wait_until(Duration::from_millis(300), |c| !c.is_empty())
        .await;
    assert!(conns.is_empty(), "no agent websocket: {conns:?}");
    let (status, calls) = server.api("POST", "/v3/list-calls", Some(json!({})));
    assert_eq!(status, 200, "{calls}");
    assert_eq!(calls["items"], json!([]), "no call record");

    let metrics = server.metrics().text;
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
    let server = Server::start();
    let agent = TestAgent::start(Mode::Echo).await;
    let agent_id = server.create_agent(&agent.url(), "mulaw_8000");
    // The webhook answers with nothing to change; the bound agent takes the call.
    let hook = canada_only_number(&server, "+14155550103", &agent_id).await;

    // A Toronto caller: CA.
    let media_port = free_port_block(4);
    let run = carrier_call(&server, "+14155550103", "+14165550123", media_port);
    assert!(run.ok(), "the SIPp call failed:\n{}", run.describe());
    assert_eq!(
        hook.wait_for(1, Duration::from_secs(10)).await.len(),
        1,
        "the inbound webhook was asked"
    );
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
    let call = server.wait_call_final(&call_id, Duration::from_secs(10));
    assert_eq!(call["disconnection_reason"], "user_hangup", "{call}");
    assert_eq!(call["from_number"], "+14165550123", "{call}");
}
