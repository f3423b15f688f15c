//! Issue 3, baresip as a second, independent caller: a G.722-only call to
//! `sip:{call_id}@127.0.0.1:<port>` with `1`, `2`, `#` pressed (RFC 4733, baresip's
//! `sndcode`) with gaps between them. The agent must get exactly those digits, once each,
//! in order; the caller's tone must reach the agent and come back to baresip; the call
//! ends as `user_hangup` when baresip hangs up.

mod harness;

use std::time::Duration;

use dialtone::media::codec::Codec;
use harness::agent::{assert_stream_opening, Mode, TestAgent};
use harness::api::assert_ended_by_caller;
use harness::audio::{agent_media_to_pcm, decode_rtp, find_tone, write_tone_wav, TONE_HZ};
use harness::baresip::Baresip;
use harness::capture::Capture;
use harness::now_ms;
use harness::pcap::{rtp_only, split_rtp, telephone_event};
use harness::server::Server;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baresip_g722_call_delivers_each_dtmf_digit_exactly_once() {
    let server = Server::start();
    let agent = TestAgent::start(Mode::Echo).await;
    let agent_id = server.create_agent(&agent.url(), "pcm_16000");
    let call_id = server.register_call(&agent_id);

    // baresip's microphone: 20 s of a 1 kHz tone at 16 kHz.
    let wav = server.dir().join("tone16k.wav");
    write_tone_wav(&wav, 16_000, 20);
    let mut ua = Baresip::start(&server.dir().join("baresip"), &["g722"], &wav).await;
    let capture = Capture::udp(server.dir(), ua.rtp_ports).await;

    let t0 = now_ms();
    let target = format!("sip:{call_id}@{}", server.sip_addr());
    ua.dial(&target).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    for digit in ["1", "2", "#"] {
        let resp = ua.command("sndcode", digit).await;
        assert_eq!(resp["ok"], true, "sndcode {digit}: {resp}");
        tokio::time::sleep(Duration::from_millis(800)).await;
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    ua.hang_up().await;
    let packets = capture.stop().await;

    // baresip did send RFC 4733 events (else the test, not dialtone, is at fault).
    let (from_baresip, to_baresip) = split_rtp(&packets, ua.rtp_ports);
    let (from_baresip, to_baresip) = (rtp_only(from_baresip), rtp_only(to_baresip));
    let event_pts: Vec<u8> = from_baresip
        .iter()
        .filter(|r| r.pt >= 96)
        .map(|r| r.pt)
        .collect();
    assert!(
        !event_pts.is_empty(),
        "baresip sent no telephone-event packets; dialtone's answer must offer telephone-event. \
         baresip log:\n{}",
        ua.log()
    );
    let sent_events: Vec<u8> = from_baresip
        .iter()
        .filter(|r| r.pt >= 96)
        .filter_map(|r| telephone_event(&r.payload))
        .filter(|e| e.1)
        .map(|e| e.0)
        .collect();
    assert!(
        sent_events.contains(&1) && sent_events.contains(&2) && sent_events.contains(&11),
        "baresip's end-of-event packets should cover 1, 2, # (11): {sent_events:?}"
    );
    assert!(
        from_baresip.iter().any(|r| r.pt == 9),
        "baresip should send G.722 (PT 9)"
    );

    // The agent: one stream, the digits exactly once each, in order.
    let conns = agent
        .wait_until(Duration::from_secs(5), |c| c.iter().all(|c| c.finished))
        .await;
    let accepted: Vec<_> = conns.iter().filter(|c| !c.refused).collect();
    assert_eq!(accepted.len(), 1, "one agent websocket: {conns:?}");
    let conn = accepted[0];
    assert_stream_opening(conn, &call_id, &agent_id, "audio/x-l16", 16000);
    assert_eq!(
        conn.digits(),
        "12#",
        "the agent must get 1, 2, # exactly once each, in order; dtmf events: {:?}",
        conn.all("dtmf")
    );
    for d in conn.all("dtmf") {
        assert_eq!(d["dtmf"]["track"], "inbound_track", "{d}");
        assert!(d["streamSid"].is_string(), "{d}");
    }
    let (pcm, rate) = agent_media_to_pcm("pcm_16000", &conn.media_payloads());
    let heard = find_tone(&pcm, rate, TONE_HZ, 0.5, 300.0);
    assert!(
        heard.tone_seconds() >= 2.0,
        "the agent should hear baresip's 1 kHz tone: {heard:?}"
    );

    // The echo came back to baresip as G.722 carrying the tone.
    assert!(
        to_baresip
            .iter()
            .all(|r| r.pt == 9 || r.pt == 13 || r.pt >= 96),
        "dialtone sends G.722 to a G.722-only caller"
    );
    let back = decode_rtp(Codec::G722, &to_baresip);
    let echoed = find_tone(&back, 16000, TONE_HZ, 0.5, 300.0);
    assert!(
        echoed.tone_seconds() >= 2.0,
        "the tone should come back to baresip through the echo agent: {echoed:?}"
    );

    let call = server.wait_call_final(&call_id, Duration::from_secs(10));
    assert_ended_by_caller(&call, t0);
}
