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
