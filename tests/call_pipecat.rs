//! A real Pipecat bot, written as for Twilio Media Streams, works against dialtone
//! unchanged (AGENT_PROTOCOL.md): `tests/pipecat/echo_bot.py` runs Pipecat's own
//! `parse_telephony_websocket`, `TwilioFrameSerializer` and `FastAPIWebsocketTransport`
//! around a processor that turns caller audio into bot audio. SIPp dials offering PCMU
//! and plays a 1 kHz tone for 5 s; the tone must come back through Pipecat in the RTP to
//! the caller, and the call must end as `ended` / `user_hangup`.
//!
//! Needs `pipecat-ai` for python3 (`tests/pipecat/requirements.txt`; scripts/test.sh
//! installs it). Fails, never skips, when it is missing.

mod harness;

use std::time::{Duration, Instant};

use dialtone::media::codec::Codec;
use harness::api::assert_ended_by_caller;
use harness::audio;
use harness::now_ms;
use harness::pcap::{split_rtp, Rtp};
use harness::pcap_call::{check_rtp_stream, dial_pcap, PcapDial};
use harness::pipecat::PipecatBot;
use harness::server::Server;
use harness::uac::Uac;

/// Seconds of the 5 s tone that must come back. Measured with pipecat-ai 1.14.0: all
/// 5.00 s, also with both cores kept busy (where the longest unbroken run fell to 3.4 s:
/// Python stalls briefly, nothing is lost). The tone lasts 5 s and SIPp hangs up 6.5 s
/// after answering, so only a delay over 1.5 s or dropped audio loses any; 4 s leaves
/// room for a slow CI machine without letting a path that drops a fifth of it pass.
const MIN_TONE_SECONDS: f64 = 4.0;

/// Bound on the echo delay through dialtone and Pipecat (first packet SIPp sent → first
/// returned packet with the tone). Measured 61–68 ms, idle or loaded: Pipecat re-chunks
/// audio into 40 ms pieces paced by its own clock and adds little. 1 s is far above
/// that yet still catches audio that queues up somewhere.
const MAX_ECHO_DELAY_SECONDS: f64 = 1.0;

/// Seconds from the first packet SIPp sent to the first returned packet with the tone.
fn echo_delay(sent_first: f64, returned: &[(f64, Rtp)]) -> Option<f64> {
    returned
        .iter()
        .filter(|(_, r)| r.pt == Codec::Pcmu.payload_type())
        .find(|(_, r)| {
            let pcm = audio::ulaw_to_pcm(&r.payload);
            audio::rms(&pcm) >= 300.0 && audio::tone_fraction(&pcm, 8000, audio::TONE_HZ) >= 0.5
        })
        .map(|(t, _)| t - sent_first)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipecat_twilio_bot_echoes_the_tone_unchanged() {
    let server = Server::start();
    let bot = PipecatBot::start(server.dir(), &[]).await;
    let agent_id = server.create_agent(&bot.url(), "mulaw_8000");
    let call_id = server.register_call(&agent_id);

    let PcapDial {
        packets,
        media_port,
        t0,
        ..
    } = dial_pcap(&server, &call_id, "e2e/sipp/uac_pcap_pcmu.xml").await;

    let first_sent = packets
        .iter()
        .find(|p| p.src.port() == media_port && Rtp::parse(&p.payload).is_some())
        .map(|p| p.time)
        .expect("harness: SIPp sent no RTP; is pcap_play working (root)?");
    let (sent, returned) = split_rtp(&packets, (media_port, media_port));
    assert!(
        sent.len() >= 240,
        "harness: SIPp sent only {} RTP packets (expected 250)",
        sent.len()
    );
    let timed: Vec<(f64, Rtp)> = returned.into_iter().map(|(u, r)| (u.time, r)).collect();
    let rtp: Vec<Rtp> = timed.iter().map(|(_, r)| r.clone()).collect();
    assert!(!rtp.is_empty(), "no RTP came back to the caller");
    check_rtp_stream(&rtp, Codec::Pcmu);

    let pcm = audio::decode_rtp(Codec::Pcmu, &rtp);
    let tone = audio::find_tone(&pcm, 8000, audio::TONE_HZ, 0.5, 300.0);
    let delay = echo_delay(first_sent, &timed);
    eprintln!(
        "through Pipecat: {:.2} s of tone back (longest run {:.2} s), echo delay {}",
        tone.tone_seconds(),
        tone.longest_run as f64 * 0.02,
        delay.map_or("none".into(), |d| format!("{:.0} ms", d * 1000.0))
    );
    assert!(
        tone.tone_seconds() >= MIN_TONE_SECONDS,
        "the 1 kHz tone should come back through Pipecat for at least {MIN_TONE_SECONDS} s of \
         the 5 s played; found {tone:?} in {} returned packets",
        rtp.len()
    );
    let delay = delay.unwrap();
    assert!(
        delay <= MAX_ECHO_DELAY_SECONDS,
        "the tone came back {delay:.2} s after it was sent (bound {MAX_ECHO_DELAY_SECONDS} s)"
    );

    let call = server.wait_call_final(&call_id, Duration::from_secs(10));
    assert_ended_by_caller(&call, t0);

    // The bot saw a Twilio stream carrying this call, and ended when the socket closed.
    let bot_log = bot.log();
    assert!(
        bot_log.contains("transport=twilio") && bot_log.contains(&call_id),
        "Pipecat should detect a Twilio stream with callSid {call_id}; its log:\n{bot_log}"
    );
    bot.assert_finished_cleanly().await;
}

/// A Pipecat bot ends a call by ending its pipeline: with auto hang-up off (no Twilio REST
/// API here), Pipecat closes the websocket with 1000 once its last audio is written, and
/// dialtone must play that audio out, send BYE and end the call as `agent_hangup`. The bot
/// says goodbye (1 s of 1 kHz) as the call starts, then queues an EndFrame.
///
/// Measured: the goodbye arrives whole, and the BYE ~3.0 s after answer. On EndFrame
/// Pipecat writes its `audio_out_end_silence_secs` (2 s) of silence as one last `media`
/// message before closing; dialtone plays that out too (its drain cap is 5 s), so the BYE
/// comes after 1 s + 2 s of audio. Bounds: not before the goodbye could have been played
/// (1 s), and within 6 s (1 s + 2 s + slack for a slow machine).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipecat_bot_ending_its_pipeline_hangs_up_after_its_goodbye() {
    let server = Server::start();
    let bot = PipecatBot::start(server.dir(), &["goodbye"]).await;
    let agent_id = server.create_agent(&bot.url(), "mulaw_8000");
    let call_id = server.register_call(&agent_id);

    let t0 = now_ms();
    let mut uac = Uac::new(server.sip_addr(), &call_id);
    let offer = uac.sdp(&[0, 101], "sendrecv");
    let ok = uac
        .invite(Some(&offer), Duration::from_secs(20))
        .expect_answered("the Pipecat call");
    uac.ack(1, None);
    let media = ok.sdp_media_addr().expect("SDP in the 200");
    let answered = Instant::now();

    // Send caller silence every 20 ms and keep the RTP that comes back, until the BYE.
    let mut back = Vec::new();
    let mut bye = None;
    for seq in 0u16..750 {
        while let Some((_, rtp)) = uac.recv_rtp(Duration::ZERO) {
            back.push(rtp);
        }
        uac.send_rtp(media, seq, 1);
        if let Some(msg) = uac.recv(Duration::from_millis(20)) {
            if msg.method() == Some("BYE") {
                bye = Some(answered.elapsed());
                break;
            }
        }
    }
    let bye = bye.unwrap_or_else(|| {
        panic!(
            "the caller got no BYE within 15 s of answer after the Pipecat bot ended its pipeline"
        )
    });
    let pcm = audio::decode_rtp(Codec::Pcmu, &back);
    let tone = audio::find_tone(&pcm, 8000, audio::TONE_HZ, 0.5, 300.0);
    eprintln!(
        "Pipecat goodbye: {:.2} s of tone before the BYE, BYE {} ms after answer",
        tone.tone_seconds(),
        bye.as_millis()
    );
    assert!(
        bye >= Duration::from_secs(1) && bye <= Duration::from_secs(6),
        "the BYE should follow the bot's last audio (1 s of goodbye + Pipecat's 2 s of end \
         silence) within 6 s of answer; it came after {bye:?}"
    );
    assert!(
        tone.tone_seconds() >= 0.9,
        "the caller should hear the bot's 1 s goodbye before the BYE; found {tone:?}"
    );

    let call = server.wait_call_final(&call_id, Duration::from_secs(10));
    assert_eq!(
        (
            call["call_status"].as_str(),
            call["disconnection_reason"].as_str()
        ),
        (Some("ended"), Some("agent_hangup")),
        "call object: {call}"
    );
    assert!(
        call["end_timestamp"].as_i64().unwrap_or(0) >= t0,
        "call object: {call}"
    );
    bot.assert_finished_cleanly().await;
}
