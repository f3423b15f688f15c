//! Audio both ways: the codec paths to the agent, the agent's audio paced out as RTP,
//! marks, barge-in, a codec change, back-pressure and clock slips.

use super::*;
use crate::media::codec::G722Decoder;

/// The caller sends `frames` packets of a tone; the session is stopped 150 ms later.
fn caller_tone(codec: Codec, agent: AudioEncoding, freq: f64, frames: usize) -> Harness {
    let mut h = Harness::start(codec, agent);
    let payloads = tone_payloads(codec, freq, frames);
    h.stream(codec.payload_type(), 77, &payloads);
    h.advance(150 * MS);
    let outcome = h.stop();
    assert_eq!(outcome.reason, None);
    assert_eq!(outcome.stats.packets_in, frames as u64);
    assert_eq!(outcome.stats.packets_dropped, 0);
    assert_eq!(outcome.stats.frames_to_agent, h.frames().len() as u64);
    assert_said_goodbye(&h);
    h
}

#[test]
fn pcmu_to_mulaw_passes_bytes_through_one_frame_per_20ms() {
    let payloads = tone_payloads(Codec::Pcmu, 1000.0, 25);
    let h = caller_tone(Codec::Pcmu, AudioEncoding::Mulaw8000, 1000.0, 25);
    let frames = h.frames();
    assert!(frames.iter().all(|f| f.len() == 160));
    // Every payload, byte for byte and in order: a steady clock loses nothing.
    let voiced: Vec<&[u8]> = frames
        .iter()
        .filter(|f| f.iter().any(|&b| b != g711::ULAW_SILENCE))
        .map(|f| &f[..])
        .collect();
    let sent: Vec<&[u8]> = payloads.iter().map(|p| &p[..]).collect();
    assert_eq!(voiced, sent);
    // From the first frame on, exactly one per 20 ms: silence once the caller stopped.
    let times: Vec<Instant> = h
        .agent
        .iter()
        .filter(|(_, m)| matches!(m, ToAgent::Media(_)))
        .map(|(at, _)| *at)
        .collect();
    assert!(times.windows(2).all(|w| w[1] - w[0] == 20 * MS));
    let stats = h.outcome.unwrap().stats;
    assert_eq!(stats.concealed_frames, frames.len() as u64 - 25);
    assert_eq!(stats.packets_lost, 0);
}

#[test]
fn pcma_to_mulaw_transcodes() {
    let h = caller_tone(Codec::Pcma, AudioEncoding::Mulaw8000, 1000.0, 25);
    let frames = h.frames();
    assert!(frames.iter().all(|f| f.len() == 160));
    let pcm = voiced(AudioEncoding::Mulaw8000, &frames);
    assert_eq!(pcm.len(), 25 * 160);
    assert!(tone_share(&pcm, 8000, 1000.0) > 0.9);
}

#[test]
fn g722_to_pcm16000_keeps_wideband() {
    for freq in [1000.0, 6000.0] {
        let h = caller_tone(Codec::G722, AudioEncoding::Pcm16000, freq, 25);
        let frames = h.frames();
        assert!(frames.iter().all(|f| f.len() == 640));
        let pcm = voiced(AudioEncoding::Pcm16000, &frames);
        assert!(pcm.len() >= 24 * 320, "{}", pcm.len());
        // Skip the ADPCM's first frames while its step sizes adapt.
        let share = tone_share(&pcm[3 * 320..], 16000, freq);
        // 6 kHz is above narrowband's 4 kHz limit: it survives only if kept wideband.
        assert!(share > 0.6, "{freq} Hz: {share}");
    }
}

#[test]
fn pcmu_to_pcm24000_resamples() {
    let h = caller_tone(Codec::Pcmu, AudioEncoding::Pcm24000, 1000.0, 25);
    let frames = h.frames();
    assert!(frames.iter().all(|f| f.len() == 960));
    let pcm = voiced(AudioEncoding::Pcm24000, &frames);
    assert!(pcm.len() >= 24 * 480, "{}", pcm.len());
    assert!(tone_share(&pcm[480..], 24000, 1000.0) > 0.9);
}

#[test]
fn agent_audio_pushed_at_once_is_paced_one_packet_per_ptime_and_marks_follow_playout() {
    let mut h = Harness::start(Codec::Pcmu, AudioEncoding::Mulaw8000);
    // The stream starts with silence: frames at 0, 20 and 40 ms.
    h.advance(50 * MS);
    let mut speech = mulaw(&tone(1000.0, 8000, 320 + 16000 + 1, 0));
    speech[16320] = g711::linear_to_ulaw(5000); // the tone is at a zero crossing there
    h.agent_sends(FromAgent::Media(speech[..320].to_vec())); // 40 ms
    h.agent_sends(FromAgent::Mark("a".into()));
    h.agent_sends(FromAgent::Media(speech[320..16320].to_vec())); // 2 s
    h.agent_sends(FromAgent::Mark("b".into()));
    h.agent_sends(FromAgent::Media(speech[16320..].to_vec())); // 1 sample
    h.agent_sends(FromAgent::Mark("c".into()));
    h.advance(2700 * MS);

    // Each mark goes when the frame holding the end of the audio before it is sent:
    // 40 ms is the frames due at 60 and 80 ms; 2 s more ends at 2080 ms; one sample, 2100.
    let marks: Vec<(Duration, String)> = h
        .marks()
        .into_iter()
        .map(|(at, m)| (at - h.t0, m))
        .collect();
    assert_eq!(
        marks,
        [
            (80 * MS, "a".to_string()),
            (2080 * MS, "b".to_string()),
            (2100 * MS, "c".to_string())
        ]
    );

    // One packet per 20 ms from 0 to 2740 ms, whatever the agent's timing.
    let pkts = h.rtp_sent();
    assert_eq!(pkts.len(), 138);
    assert_eq!(pkts[0].at, h.t0);
    assert!(pkts
        .iter()
        .all(|p| p.pt == 0 && p.payload.len() == 160 && p.ssrc == SSRC));
    assert!(pkts.iter().all(|p| p.dest == caller_rtp()));
    assert_paced(&pkts);
    // Silence fills the gaps; the agent's audio is frames 3..=105 (60..=2100 ms).
    let voiced: Vec<usize> = (0..pkts.len()).filter(|&i| pkts[i].voiced()).collect();
    assert_eq!(voiced, (3..=105).collect::<Vec<_>>());
    // A marker on the first packet of the stream and of the talk-spurt, nowhere else.
    let markers: Vec<usize> = (0..pkts.len()).filter(|&i| pkts[i].marker).collect();
    assert_eq!(markers, [0, 3]);

    let outcome = h.stop();
    assert_eq!(outcome.reason, None);
    assert_eq!(outcome.stats.packets_out, 138);
}

#[test]
fn g722_out_from_pcm16000_in_odd_chunks() {
    let mut h = Harness::start(Codec::G722, AudioEncoding::Pcm16000);
    let pcm = tone(1000.0, 16000, 16000 / 2, 0); // 500 ms
    let bytes: Vec<u8> = pcm.iter().flat_map(|s| s.to_le_bytes()).collect();
    // 40 ms, then an odd split through a sample, then the rest, then one sample.
    let cuts = [1280, 1291, bytes.len() - 2, bytes.len()];
    let mut from = 0;
    for to in cuts {
        h.agent_sends(FromAgent::Media(bytes[from..to].to_vec()));
        from = to;
    }
    h.advance(900 * MS);
    let pkts = h.rtp_sent();
    assert!(pkts.iter().all(|p| p.pt == 9 && p.payload.len() == 160));
    assert_paced(&pkts);
    let mut dec = G722Decoder::new();
    let mut out = Vec::new();
    for p in &pkts {
        let mut frame = [0i16; 320];
        assert_eq!(dec.decode(&p.payload, &mut frame), 320);
        if !is_silent(&frame) {
            out.extend_from_slice(&frame);
        }
    }
    assert!(out.len() >= 24 * 320, "{}", out.len());
    assert!(tone_share(&out[320..24 * 320], 16000, 1000.0) > 0.9);
    assert_eq!(h.stop().reason, None);
}

#[test]
fn clear_drops_the_queue_and_returns_marks_at_once() {
    let mut h = Harness::start(Codec::Pcmu, AudioEncoding::Mulaw8000);
    h.agent_sends(FromAgent::Media(mulaw(&tone(1000.0, 8000, 16000, 0)))); // 2 s
    h.agent_sends(FromAgent::Mark("m".into()));
    h.advance(100 * MS);
    let cleared_at = h.now;
    h.agent_sends(FromAgent::Clear);
    assert_eq!(h.marks(), [(cleared_at, "m".to_string())]);
    h.advance(300 * MS);
    let before: Vec<Got> = h
        .rtp_sent()
        .into_iter()
        .filter(|p| p.at <= cleared_at)
        .collect();
    assert!(
        before.iter().skip(1).all(Got::voiced),
        "speech until the clear"
    );
    let after: Vec<Got> = h
        .rtp_sent()
        .into_iter()
        .filter(|p| p.at > cleared_at)
        .collect();
    assert_eq!(after.len(), 15);
    assert!(after.iter().all(|p| !p.voiced()), "silence after it");
    h.stop();
}

#[test]
fn reinvite_switches_codec_keeping_our_stream_continuous() {
    let mut h = Harness::start(Codec::Pcmu, AudioEncoding::Mulaw8000);
    h.agent_sends(FromAgent::Media(mulaw(&tone(1000.0, 8000, 8000, 0)))); // 1 s
    h.agent_sends(FromAgent::Mark("queued".into()));
    h.advance(200 * MS);
    h.update(negotiated(Codec::G722, caller_rtp(), caller_rtcp()));
    // The queued audio was for the old rate: dropped, its mark returned at once.
    assert_eq!(h.marks(), [(h.now, "queued".to_string())]);
    h.agent_sends(FromAgent::Media(mulaw(&tone(1000.0, 8000, 1600, 0))));
    h.advance(300 * MS);
    let all = h.rtp_sent();
    assert_paced(&all);
    let switch = all.iter().position(|p| p.pt == 9).expect("G.722 packets");
    assert!(all[..switch].iter().all(|p| p.pt == 0));
    assert!(all[switch..].iter().all(|p| p.pt == 9));
    assert_eq!(all[switch].at - h.t0, 220 * MS);

    // The caller now sends G.722; the agent hears it as μ-law.
    let from = h.agent.len();
    let payloads = tone_payloads(Codec::G722, 1000.0, 20);
    h.stream(9, 99, &payloads);
    h.advance(100 * MS);
    let outcome = h.stop();
    let pcm = voiced(
        AudioEncoding::Mulaw8000,
        &media_frames(h.agent[from..].iter().map(|(_, m)| m)),
    );
    assert!(pcm.len() >= 15 * 160, "{}", pcm.len());
    assert!(tone_share(&pcm[3 * 160..], 8000, 1000.0) > 0.8);
    assert_eq!(outcome.stats.packets_in, 20);
}

#[test]
fn a_full_agent_channel_drops_and_counts_messages_but_stop_still_goes() {
    let mut h = Harness::start(Codec::Pcmu, AudioEncoding::Mulaw8000);
    h.agent_room = Some(10);
    h.stream(0, 5, &tone_payloads(Codec::Pcmu, 1000.0, 30));
    h.advance(100 * MS);
    let outcome = h.stop();
    let stats = outcome.stats;
    assert_eq!(h.frames().len(), 10);
    assert!(stats.frames_to_agent > 30);
    assert_eq!(stats.agent_dropped, stats.frames_to_agent - 10);
    // Not a packet of the caller's: the packet counters are untouched.
    assert_eq!(stats.packets_dropped, 0);
    assert_eq!(stats.packets_in, 30);
    assert!(matches!(h.agent.last(), Some((_, ToAgent::Stop))));
}

#[test]
fn stalls_skip_slots_in_bounded_bursts_and_agent_overflow_is_counted() {
    let mut h = Harness::start(Codec::Pcmu, AudioEncoding::Mulaw8000);
    // 62 s of agent audio at once: 2 s of it cannot fit the 60 s queue.
    h.agent_sends(FromAgent::Media(vec![0x55; 8000 * 62]));
    h.stream(0, 8, &tone_payloads(Codec::Pcmu, 1000.0, 5));
    assert_eq!(h.elapsed(), 100 * MS);
    let frames_before = h.frames().len();
    let last = h.rtp_sent().last().cloned().unwrap();
    assert_eq!(last.at - h.t0, 100 * MS);

    // 300 ms without running: 15 slots were due each way; 3 run back to back, 12 skipped.
    h.stall(300 * MS);
    let burst = h.rtp_sent_since(h.now);
    assert_eq!(burst.len(), 3);
    assert_eq!(burst[0].seq, last.seq.wrapping_add(1), "no sequence gap");
    assert_eq!(
        burst[0].ts,
        last.ts.wrapping_add(13 * 160),
        "the skipped slots' time"
    );
    assert!(burst[0].marker, "a new talk-spurt after the jump");
    assert_eq!(h.frames().len(), frames_before + 3);

    // Seconds: 250 slots due, still 3 run.
    h.stall(Duration::from_secs(5));
    assert_eq!(h.rtp_sent_since(h.now).len(), 3);
    h.advance(100 * MS);
    let stats = h.stop().stats;
    assert_eq!(stats.clock_slips_in, 12 + 247);
    assert_eq!(stats.clock_slips_out, 12 + 247);
    assert_eq!(stats.agent_overflow_ms, 2000);
    // Back on the clock: one packet per 20 ms after the last burst.
    let tail = h.rtp_sent();
    let tail = &tail[tail.len() - 5..];
    assert!(tail.windows(2).all(|w| w[1].at - w[0].at == 20 * MS));
}
