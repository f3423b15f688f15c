//! Issue 4, inbound from a trunk: a number is imported and bound to an agent; SIPp, as the
//! carrier, sends an INVITE to `+14155550100@dialtone` with an `X-Customer-Id` header and
//! plays a tone. The agent's `start` carries the header, the tone comes back, and SIPp's
//! BYE ends the call as `user_hangup`, with direction `inbound` and the header recorded.

mod common_call;

use std::time::Duration;

use common_call::agent::{Mode, TestAgent};
use common_call::capture::Capture;
use common_call::flow::split_rtp;
use common_call::{audio, sipp, Dialtone};
use dialtone::media::codec::CodecKind;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carrier_call_to_an_imported_number_reaches_its_agent_with_x_headers() {
    let server = Dialtone::start().await;
    let agent = TestAgent::start(Mode::Echo).await;
    let agent_id = server.create_agent(&agent.url(), "mulaw_8000").await;
    let (status, number) = server
        .api(
            "POST",
            "/import-phone-number",
            Some(json!({
                "phone_number": "+14155550100",
                "termination_uri": "trunk.example.com",
                "inbound_agent_id": agent_id,
            })),
        )
        .await;
    assert_eq!(status, 201, "{number}");

    let media_port = common_call::free_port_block(4);
    let capture = Capture::start(
        server.dir.path(),
        "rtp",
        &format!("udp and port {media_port}"),
    )
    .await;
    let run = sipp::run_uac(sipp::Uac {
        scenario: "uac_pcap_pcmu_carrier.xml",
        target: server.sip,
        service: "+14155550100",
        dir: server.dir.path(),
        media_port,
        timeout: Duration::from_secs(30),
        extra: vec![],
    })
    .await;
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
    let pcm = audio::decode_rtp(CodecKind::Pcmu, &rtp);
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
    let (status, number) = server
        .api(
            "POST",
            "/import-phone-number",
            Some(json!({
                "phone_number": "+14155550101",
                "termination_uri": "trunk.example.com",
                "inbound_agent_id": bound_id,
                "inbound_webhook_url": hook_url,
            })),
        )
        .await;
    assert_eq!(status, 201, "{number}");
    let media_port = common_call::free_port_block(4);
    let run = sipp::run_uac(sipp::Uac {
        scenario: "uac_pcap_pcmu_carrier.xml",
        target: server.sip,
        service: "+14155550101",
        dir: server.dir.path(),
        media_port,
        timeout: Duration::from_secs(30),
        extra: vec![],
    })
    .await;
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
