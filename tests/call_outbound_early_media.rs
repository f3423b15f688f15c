//! Issue 4, outbound with early media, SIPp as the trunk: `create-phone-call` sends the
//! INVITE; SIPp answers 183 with SDP and plays a 440 Hz "ringback" for 2 s, then 200 and a
//! 1 kHz tone for 5 s (one RTP stream throughout, as many gateways send it), echoed by the
//! test's agent, then hangs up itself.
//!
//! - An agent that did not ask for early media hears none of the ringback: its socket opens
//!   at the answer and its audio is the 1 kHz tone only, not one frame of ringback (what
//!   the RTP socket held of it is dropped at the answer); the tone comes back to the trunk.
//! - An agent with `forward_early_media` hears the ringback before an `answered` event and
//!   the tone after it; nothing goes to the trunk before the answer (so its echo of the
//!   ringback never reaches the trunk). Here the 200 carries no SDP: the 183's stands.
//!
//! Both calls end `ended`/`user_hangup`, direction `outbound`.

mod harness;

use std::time::Duration;

use dialtone::media::codec::Codec;
use harness::agent::{media_payloads, Connection, Mode, TestAgent};
use harness::audio;
use harness::capture::Capture;
use harness::pcap::{rtp_only, split_rtp};
use harness::ports::free_port_block;
use harness::server::Server;
use harness::sipp::Sipp;
use serde_json::{json, Value};

const RINGBACK_HZ: f64 = 440.0;

/// The 200's SDP (same media as the 183's), indented like the scenario's lines.
const ANSWER_SDP: &str = "      v=0
      o=trunk 1 2 IN IP4 [local_ip]
      s=-
      c=IN IP4 [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 0 101
      a=rtpmap:0 PCMU/8000
      a=rtpmap:101 telephone-event/8000
";

struct Outcome {
    call: Value,
    agent: Connection,
    /// PCM of the RTP dialtone sent to the trunk.
    returned: Vec<i16>,
}

/// Runs one outbound call to the early-media trunk; `forward` sets the agent's
/// `forward_early_media`, `sdp_in_200` whether the 200 repeats the SDP.
async fn outbound_call(forward: bool, sdp_in_200: bool) -> Outcome {
    let server = Server::start();
    let agent = TestAgent::start(Mode::Echo).await;
    let agent_id = server.create_agent(&agent.url(), "mulaw_8000");
    if forward {
        let body = server.update_agent(&agent_id, json!({"forward_early_media": true}));
        assert_eq!(body["forward_early_media"], true, "{body}");
    }

    let media_port = free_port_block(4);
    let capture = Capture::udp(server.dir(), (media_port, media_port)).await;
    let (answer_type, answer) = if sdp_in_200 {
        ("Content-Type: application/sdp\n", ANSWER_SDP)
    } else {
        ("", "")
    };
    let trunk = Sipp::uas("e2e/sipp/uas_trunk_early_media.xml")
        .replace("answer_type", answer_type)
        .replace("answer", answer)
        .media_port(media_port)
        .start();
    server.import_number(json!({
        "phone_number": "+14155550130",
        "termination_uri": format!("127.0.0.1:{}", trunk.sip_port),
        "transport": "UDP",
        "outbound_agent_id": agent_id,
    }));
    let call = server
        .create_phone_call(json!({"from_number": "+14155550130", "to_number": "+14155550199"}));
    let call_id = call["call_id"].as_str().unwrap().to_string();

    let run = trunk.wait();
    let packets = capture.stop().await;
    assert!(
        run.ok(),
        "the trunk scenario failed:\n{}\n--- dialtone ---\n{}",
        run.describe(),
        server.log()
    );
    let call = server.wait_call_final(&call_id, Duration::from_secs(10));
    let conns = agent
        .wait_until(Duration::from_secs(5), |c| c.iter().all(|c| c.finished))
        .await;
    assert_eq!(conns.len(), 1, "one agent websocket: {conns:?}");

    let (sent, returned) = split_rtp(&packets, (media_port, media_port));
    assert!(
        sent.len() >= 340,
        "harness: the trunk sent only {} RTP packets (expected 100 early + 250)",
        sent.len()
    );
    Outcome {
        call,
        agent: conns[0].clone(),
        returned: audio::decode_rtp(Codec::Pcmu, &rtp_only(returned)),
    }
}

fn seconds_of(pcm: &[i16], hz: f64) -> f64 {
    audio::find_tone(pcm, 8000, hz, 0.5, 300.0).tone_seconds()
}

/// PCM of the agent's `media` messages, split at its `answered` event (all before when
/// there is none).
fn agent_audio(conn: &Connection) -> (Vec<i16>, Vec<i16>) {
    let at = conn
        .events
        .iter()
        .position(|r| r.msg["event"] == "answered")
        .unwrap_or(conn.events.len());
    let pcm = |events| audio::agent_media_to_pcm("mulaw_8000", &media_payloads(events)).0;
    (pcm(&conn.events[..at]), pcm(&conn.events[at..]))
}

fn assert_ended_by_the_trunk(call: &Value) {
    assert_eq!(call["call_status"], "ended", "{call}");
    assert_eq!(call["disconnection_reason"], "user_hangup", "{call}");
    assert_eq!(call["direction"], "outbound", "{call}");
    assert_eq!(call["codec"], "PCMU", "{call}");
    assert!(call["duration_ms"].as_i64().unwrap() >= 5000, "{call}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_media_is_kept_from_an_agent_that_did_not_ask() {
    let out = outbound_call(false, true).await;
    assert_ended_by_the_trunk(&out.call);
    let names = out.agent.event_names();
    assert!(!names.contains(&"answered".to_string()), "{names:?}");
    let start = out.agent.first("start").expect("start");
    let params = &start["start"]["customParameters"];
    assert_eq!(params["direction"], "outbound", "{start}");
    assert!(params.get("early_media").is_none(), "{start}");

    let (heard, _) = agent_audio(&out.agent);
    eprintln!(
        "RINGBACK HEARD {:?}",
        audio::find_tone(&heard, 8000, RINGBACK_HZ, 0.5, 300.0)
    );
    eprintln!(
        "RINGBACK HEARD {:?}",
        audio::find_tone(&heard, 8000, RINGBACK_HZ, 0.5, 300.0)
    );
    assert!(
        seconds_of(&heard, RINGBACK_HZ) < 0.3,
        "the agent heard the early media: {:?}",
        audio::find_tone(&heard, 8000, RINGBACK_HZ, 0.5, 300.0)
    );
    assert!(
        seconds_of(&heard, audio::TONE_HZ) >= 3.0,
        "the answered tone"
    );
    assert!(
        seconds_of(&out.returned, audio::TONE_HZ) >= 3.0,
        "tone back"
    );
    assert!(seconds_of(&out.returned, RINGBACK_HZ) < 0.3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_asks_hears_early_media_then_the_answer() {
    let out = outbound_call(true, false).await;
    assert_ended_by_the_trunk(&out.call);
    let names = out.agent.event_names();
    assert_eq!(
        names.iter().filter(|n| *n == "answered").count(),
        1,
        "{names:?}"
    );
    let start = out.agent.first("start").expect("start");
    assert_eq!(
        start["start"]["customParameters"]["early_media"], "true",
        "{start}"
    );

    let (before, after) = agent_audio(&out.agent);
    assert!(
        seconds_of(&before, RINGBACK_HZ) >= 1.2,
        "the ringback before the answer: {:?}",
        audio::find_tone(&before, 8000, RINGBACK_HZ, 0.5, 300.0)
    );
    assert!(seconds_of(&before, audio::TONE_HZ) < 0.3);
    assert!(
        seconds_of(&after, audio::TONE_HZ) >= 3.0,
        "the answered tone"
    );
    assert!(seconds_of(&after, RINGBACK_HZ) < 0.3);
    // Nothing went to the trunk before the answer: the echoed ringback never arrives.
    assert!(seconds_of(&out.returned, RINGBACK_HZ) < 0.3);
    assert!(
        seconds_of(&out.returned, audio::TONE_HZ) >= 3.0,
        "tone back"
    );
}
