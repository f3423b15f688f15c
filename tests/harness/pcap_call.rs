//! The whole SIPp-with-pcap call, shared by `call_pcmu.rs`, `call_pcma.rs`, `call_g722.rs`
//! and `call_codec_preference.rs` (and parts of it by others): register through the API,
//! SIPp dials and replays the tone, the test's echo agent sends it back, tcpdump records
//! what returns; then the RTP, the agent's view and the call object are checked.

use std::time::Duration;

use dialtone::media::codec::Codec;
use serde_json::Value;

use super::agent::{assert_stream_opening, Connection, Mode, TestAgent};
use super::api::assert_ended_by_caller;
use super::audio::{self, ToneReport};
use super::capture::Capture;
use super::now_ms;
use super::pcap::{rtp_only, split_rtp, Rtp, UdpPacket};
use super::ports::free_port_block;
use super::server::Server;
use super::sip::{sdp_audio_payload_types, sdp_media_addr};
use super::sipp::{Sipp, SippRun};

/// One SIPp pcap call to run and check.
pub struct PcapCall {
    /// Scenario, a path under `tests/` (`e2e/sipp/uac_pcap_pcmu.xml`).
    pub scenario: &'static str,
    /// The codec dialtone must choose (and the pcap carries).
    pub codec: Codec,
    /// The agent's `audio_encoding`.
    pub encoding: &'static str,
    /// Check the 5 kHz tone too (G.722 pcap through a wideband agent).
    pub expect_high_tone: bool,
}

/// What a finished call left for extra assertions.
pub struct PcapCallResult {
    pub sipp: SippRun,
    pub call: Value,
    pub agent_conn: Connection,
    pub returned: Vec<Rtp>,
    pub returned_tone: ToneReport,
}

/// Minimum seconds of tone that must come back out of the 5 s played.
pub const MIN_TONE_SECONDS: f64 = 3.0;

/// Runs the call and every common assertion; returns the material for more.
pub async fn run_pcap_call(case: PcapCall) -> PcapCallResult {
    let server = Server::start();
    let agent = TestAgent::start(Mode::Echo).await;
    let agent_id = server.create_agent(&agent.url(), case.encoding);
    let call_id = server.register_call(&agent_id);

    let PcapDial {
        run,
        packets,
        media_port,
        t0,
    } = dial_pcap(&server, &call_id, case.scenario).await;

    // --- Signalling -------------------------------------------------------------------
    let codes = run.received_status_codes();
    let pos_200 = codes.iter().position(|&c| c == 200).expect("a 200");
    assert!(
        codes[..pos_200].contains(&180),
        "dialtone should ring (180) while the agent websocket opens; responses: {codes:?}"
    );
    let answer = run.answer_sdp().expect("the 200 to INVITE carries SDP");
    let pts = sdp_audio_payload_types(&answer);
    assert_eq!(
        pts.first().copied(),
        Some(case.codec.payload_type()),
        "the answer must choose {:?} first; answer SDP:\n{answer}",
        case.codec
    );
    assert!(
        answer.contains("telephone-event/8000"),
        "the answer should keep telephone-event (offered as 101):\n{answer}"
    );
    let dialtone_media = sdp_media_addr(&answer).expect("c= and m=audio in the answer");

    // --- RTP both ways ----------------------------------------------------------------
    let (sent, returned) = split_rtp(&packets, (media_port, media_port));
    assert!(
        sent.len() >= 240,
        "harness: SIPp sent only {} RTP packets from port {media_port} (expected 250); \
         is pcap_play working (root)?",
        sent.len()
    );
    assert!(
        !returned.is_empty(),
        "no RTP came back to the caller's media port {media_port} (dialtone's media at {dialtone_media})"
    );
    for (udp, _) in &returned {
        assert_eq!(
            std::net::SocketAddr::V4(udp.src),
            dialtone_media,
            "RTP to the caller must come from the address in dialtone's SDP (symmetric RTP)"
        );
    }
    let rtp = rtp_only(returned);
    check_rtp_stream(&rtp, case.codec);

    let pcm = audio::decode_rtp(case.codec, &rtp);
    let rate = case.codec.sample_rate();
    let tone = audio::find_tone(&pcm, rate, audio::TONE_HZ, 0.5, 300.0);
    assert!(
        tone.tone_seconds() >= MIN_TONE_SECONDS,
        "the 1 kHz tone should come back for at least {MIN_TONE_SECONDS} s of the 5 s played; \
         found {tone:?} in {} returned packets",
        rtp.len()
    );
    if case.expect_high_tone {
        let high = audio::find_tone(&pcm, rate, audio::HIGH_TONE_HZ, 0.03, 300.0);
        assert!(
            high.tone_seconds() >= MIN_TONE_SECONDS,
            "the 5 kHz component should survive a G.722 caller with a pcm_16000 agent \
             (wideband end to end); found {high:?}"
        );
    }

    // --- What the agent saw -----------------------------------------------------------
    let conns = agent
        .wait_until(Duration::from_secs(5), |c| c.iter().all(|c| c.finished))
        .await;
    let accepted: Vec<&Connection> = conns.iter().filter(|c| !c.refused).collect();
    assert_eq!(
        accepted.len(),
        1,
        "exactly one agent websocket per call: {conns:?}"
    );
    let conn = accepted[0].clone();
    let (media_type, rate) = audio::agent_format(case.encoding);
    let start = assert_stream_opening(&conn, &call_id, &agent_id, media_type, rate.into());
    check_custom_parameters(&start);
    check_agent_media(&conn, case.encoding);
    check_stream_end(&conn);

    // --- The call object --------------------------------------------------------------
    let call = server.wait_call_final(&call_id, Duration::from_secs(10));
    assert_ended_by_caller(&call, t0);
    if let Some(codec) = call["codec"].as_str() {
        assert_eq!(codec, case.codec.encoding_name(), "call.codec: {call}");
    }
    assert!(
        call["duration_ms"].as_i64().unwrap() >= 5000,
        "the call lasted about 6.5 s after answer: {call}"
    );
    PcapCallResult {
        sipp: run,
        call,
        agent_conn: conn,
        returned: rtp,
        returned_tone: tone,
    }
}

/// One SIPp call dialled to a registered call, with the capture of its media port.
pub struct PcapDial {
    pub run: SippRun,
    /// Every UDP datagram to and from SIPp's media port.
    pub packets: Vec<UdpPacket>,
    pub media_port: u16,
    /// Unix ms just before SIPp started.
    pub t0: i64,
}

/// SIPp dials `sip:{call_id}@dialtone` with `scenario` (a path under `tests/`) while
/// tcpdump records its media port; asserts that SIPp's call succeeded.
pub async fn dial_pcap(server: &Server, call_id: &str, scenario: &str) -> PcapDial {
    let media_port = free_port_block(4);
    let capture = Capture::udp(server.dir(), (media_port, media_port)).await;
    let t0 = now_ms();
    let run = Sipp::uac(scenario, server.sip_addr())
        .service(call_id)
        .media_port(media_port)
        .run();
    let packets = capture.stop().await;
    assert!(run.ok(), "the SIPp call failed:\n{}", run.describe());
    PcapDial {
        run,
        packets,
        media_port,
        t0,
    }
}

/// The returning stream is one well-formed RTP stream in the chosen codec.
pub fn check_rtp_stream(rtp: &[Rtp], codec: Codec) {
    let audio: Vec<&Rtp> = rtp
        .iter()
        .filter(|r| r.pt == codec.payload_type())
        .collect();
    let others: Vec<u8> = rtp
        .iter()
        .map(|r| r.pt)
        .filter(|&pt| pt != codec.payload_type())
        .collect();
    assert!(
        others.iter().all(|&pt| pt == 13 || pt == 101),
        "returned RTP has payload types other than {} (and CN/telephone-event): {:?}",
        codec.payload_type(),
        others
    );
    assert!(
        audio.len() >= 250,
        "expected at least 250 audio packets back (the pcap is 250 packets, the call ~6.5 s); got {}",
        audio.len()
    );
    let ssrc = audio[0].ssrc;
    assert!(
        rtp.iter().all(|r| r.ssrc == ssrc),
        "one SSRC for the whole returning stream"
    );
    for r in &audio {
        assert_eq!(
            r.payload.len(),
            codec.payload_len(20),
            "every audio packet carries 20 ms ({} bytes)",
            codec.payload_len(20)
        );
    }
    let mut gaps = Vec::new();
    for w in rtp.windows(2) {
        let dseq = w[1].seq.wrapping_sub(w[0].seq);
        if dseq != 1 {
            gaps.push((w[0].seq, w[1].seq));
        }
    }
    assert!(
        gaps.is_empty(),
        "returned RTP sequence numbers must be consecutive on loopback; jumps: {:?}",
        &gaps[..gaps.len().min(10)]
    );
    for w in audio.windows(2) {
        let dts = w[1].timestamp.wrapping_sub(w[0].timestamp);
        assert!(
            dts % 160 == 0 && dts > 0 && dts < 160 * 50,
            "audio RTP timestamps advance by 160 per 20 ms packet; saw {} -> {} (seq {} -> {})",
            w[0].timestamp,
            w[1].timestamp,
            w[0].seq,
            w[1].seq
        );
    }
}

/// `customParameters` values are all strings (AGENT_PROTOCOL.md) and carry the registered
/// dynamic variable.
pub fn check_custom_parameters(start: &Value) {
    let params = start["start"]["customParameters"]
        .as_object()
        .unwrap_or_else(|| panic!("customParameters is not an object: {start}"));
    for (k, v) in params {
        assert!(
            v.is_string(),
            "customParameters.{k} must be a string, is {v}"
        );
    }
    let text = serde_json::to_string(params).unwrap();
    assert!(
        text.contains("Ada"),
        "customParameters should carry the registered dynamic variable customer=Ada: {text}"
    );
}

/// The agent got the caller's tone as 20 ms frames in its own format, numbered properly.
pub fn check_agent_media(conn: &Connection, encoding: &str) {
    let media = conn.all("media");
    assert!(
        media.len() >= 240,
        "the agent should get ~250 media frames (5 s of caller audio); got {}",
        media.len()
    );
    let payloads = conn.media_payloads();
    let want = audio::agent_bytes_per_20ms(encoding);
    assert!(
        payloads.iter().all(|p| p.len() == want),
        "every media payload is 20 ms = {want} bytes in {encoding}; sizes seen: {:?}",
        payloads
            .iter()
            .map(|p| p.len())
            .collect::<std::collections::BTreeSet<_>>()
    );
    for (i, m) in media.iter().enumerate() {
        assert_eq!(
            m["media"]["chunk"],
            (i + 1).to_string(),
            "media.chunk counts from \"1\" as a string: {m}"
        );
        assert_eq!(m["media"]["track"], "inbound", "{m}");
        assert!(
            m["media"]["timestamp"].is_string(),
            "media.timestamp is a string: {m}"
        );
    }
    let mut last_seq = 0u64;
    for r in &conn.events {
        let Some(seq) = r.msg["sequenceNumber"].as_str() else {
            continue;
        };
        let seq: u64 = seq
            .parse()
            .unwrap_or_else(|_| panic!("sequenceNumber is a number in a string: {}", r.msg));
        assert!(
            seq > last_seq,
            "sequenceNumber must increase: {last_seq} then {seq}"
        );
        last_seq = seq;
    }
    let (pcm, rate) = audio::agent_media_to_pcm(encoding, &payloads);
    let tone = audio::find_tone(&pcm, rate, audio::TONE_HZ, 0.5, 300.0);
    assert!(
        tone.tone_seconds() >= 4.0,
        "the agent should hear the caller's 1 kHz tone for ~5 s; found {tone:?}"
    );
}

/// After the caller's BYE the agent gets `stop` and the gateway closes with 1000.
pub fn check_stream_end(conn: &Connection) {
    let names = conn.event_names();
    assert_eq!(
        names.last().map(String::as_str),
        Some("stop"),
        "the last message is `stop`; got ... {:?}",
        &names[names.len().saturating_sub(3)..]
    );
    assert_eq!(
        names.iter().filter(|n| *n == "stop").count(),
        1,
        "exactly one stop"
    );
    assert!(
        conn.finished,
        "the websocket should be closed after the call"
    );
    assert_eq!(
        conn.close_code,
        Some(1000),
        "the gateway closes the socket with code 1000 after stop"
    );
}
