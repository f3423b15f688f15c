//! RFC 4733 DTMF both ways.

use super::*;

fn event(digit: u8, end: bool, duration: u16) -> Vec<u8> {
    vec![
        digit,
        if end { 0x80 | 10 } else { 10 },
        (duration >> 8) as u8,
        duration as u8,
    ]
}

#[test]
fn dtmf_in_is_reported_once_per_press_when_it_starts() {
    let mut h = Harness::start(Codec::Pcmu, AudioEncoding::Mulaw8000);
    let mut seq = 100u16;
    let mut pressed_at = Vec::new();
    for (digit, ts) in [(5u8, 16000u32), (11, 32000)] {
        let mut pkts = vec![rtp_packet(TE, seq, ts, 3, true, &event(digit, false, 160))];
        for d in [320, 480, 640] {
            seq += 1;
            pkts.push(rtp_packet(TE, seq, ts, 3, false, &event(digit, false, d)));
        }
        // The end packet, sent three times.
        for _ in 0..3 {
            seq += 1;
            pkts.push(rtp_packet(TE, seq, ts, 3, false, &event(digit, true, 800)));
        }
        seq += 1;
        pressed_at.push(h.now);
        for p in pkts {
            h.rtp(&p);
            h.advance(5 * MS);
        }
    }
    h.advance(50 * MS);
    let outcome = h.stop();
    let digits: Vec<(Instant, char)> = h
        .agent
        .iter()
        .filter_map(|(at, m)| match m {
            ToAgent::Dtmf(d) => Some((*at, *d)),
            _ => None,
        })
        .collect();
    assert_eq!(digits, [(pressed_at[0], '5'), (pressed_at[1], '#')]);
    assert_eq!(outcome.stats.dtmf_in, 2);
    assert_eq!(outcome.stats.packets_in, 14);
}

#[test]
fn send_dtmf_emits_telephone_events_in_place_of_audio_with_the_negotiated_type() {
    let mut h = Harness::start(Codec::Pcmu, AudioEncoding::Mulaw8000);
    h.agent_sends(FromAgent::SendDtmf("1#".into()));
    h.advance(600 * MS);
    let pkts = h.rtp_sent();
    // Still one packet per 20 ms, one sequence: events take the audio's slots.
    assert_continuous_seq(&pkts);
    assert!(pkts.windows(2).all(|w| w[1].at - w[0].at == 20 * MS));
    let kinds: Vec<u8> = pkts.iter().map(|p| p.pt).collect();
    // Frame 0 was sent before the request; then each digit is 5 packets of tone and 3
    // end packets (7 in all, the last tone packet being the first end), and a 3-packet
    // gap of audio between digits.
    let mut expected = vec![0u8];
    expected.extend([TE; 7]);
    expected.extend([0; 3]);
    expected.extend([TE; 7]);
    expected.extend(vec![0; pkts.len() - expected.len()]);
    assert_eq!(kinds, expected);

    for (digit, at) in [(1u8, 1), (11, 11)] {
        let press = &pkts[at..at + 7];
        assert!(press.iter().all(|p| p.payload[0] == digit));
        assert!(press[0].marker && press[1..].iter().all(|p| !p.marker));
        // Every packet of one press carries its start timestamp (that of the slot).
        assert!(press.iter().all(|p| p.ts == press[0].ts));
        assert_eq!(press[0].ts, pkts[0].ts.wrapping_add(160 * at as u32));
        let ends: Vec<bool> = press.iter().map(|p| p.payload[1] & 0x80 != 0).collect();
        assert_eq!(ends, [false, false, false, false, true, true, true]);
        let durations: Vec<u16> = press
            .iter()
            .map(|p| u16::from_be_bytes([p.payload[2], p.payload[3]]))
            .collect();
        assert_eq!(durations, [160, 320, 480, 640, 800, 800, 800]);
    }
    h.stop();

    // Without a negotiated telephone-event type the request is ignored.
    let mut h = Harness::start_with(Codec::Pcmu, AudioEncoding::Mulaw8000, |c| {
        c.negotiated.telephone_event = None;
    });
    h.agent_sends(FromAgent::SendDtmf("1".into()));
    h.advance(200 * MS);
    let pkts = h.rtp_sent();
    assert_eq!(pkts.len(), 11);
    assert!(pkts.iter().all(|p| p.pt == 0));
    h.stop();
}
