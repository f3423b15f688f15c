//! Symmetric RTP: which source the session listens to and sends to, and what it does with
//! everything else.

use super::*;
use crate::media::rtp::tests::XorShift;

#[test]
fn the_first_valid_source_is_latched_and_others_are_dropped_and_counted() {
    // The SDP points at a decoy; the caller's packets actually come from elsewhere (NAT).
    let decoy = addr(30, 30000);
    let mut h = Harness::start_with(Codec::Pcmu, AudioEncoding::Mulaw8000, |c| {
        c.negotiated.remote_rtp = decoy;
    });
    // Before any caller packet we send to the SDP address.
    h.advance(100 * MS);
    assert_eq!(h.rtp_sent().len(), 6);
    assert!(h.rtp_sent().iter().all(|p| p.dest == decoy));

    let latched_at = h.now;
    let payloads = tone_payloads(Codec::Pcmu, 1000.0, 10);
    h.stream(0, 1, &payloads);
    // From the first packet on, replies go to its source; the decoy hears nothing more.
    let after = h.rtp_sent_since(latched_at + MS);
    assert_eq!(after.len(), 10);
    assert!(after.iter().all(|p| p.dest == caller_rtp()));

    // Another source, however valid its stream, is dropped and gets nothing.
    let intruder = addr(66, 6666);
    h.stream_from(intruder, 0, 2, 5000, &payloads);
    assert!(h.sent.iter().all(|s| s.dest != intruder));
    let outcome = h.stop();
    assert_eq!(outcome.stats.packets_in, 10);
    assert_eq!(outcome.stats.packets_dropped, 10);
    assert_eq!(
        voiced(AudioEncoding::Mulaw8000, &h.frames()).len(),
        10 * 160
    );
}

#[test]
fn a_reinvite_to_a_new_address_unlatches() {
    let mut h = Harness::start(Codec::Pcmu, AudioEncoding::Mulaw8000);
    h.stream(0, 1, &tone_payloads(Codec::Pcmu, 1000.0, 5));
    // The caller moves (a transfer, a new media server).
    let moved = addr(40, 44000);
    let mut n = h.negotiated.clone();
    n.remote_rtp = moved;
    n.remote_rtcp = Some(addr(40, 44001));
    h.update(n);
    let moved_at = h.now;
    h.advance(60 * MS);
    let to_sdp = h.rtp_sent_since(moved_at + MS);
    assert_eq!(to_sdp.len(), 3);
    assert!(
        to_sdp.iter().all(|p| p.dest == moved),
        "to the new SDP address"
    );

    // Its stream comes through a NAT: latched afresh, wherever it comes from.
    let nat = addr(41, 45000);
    let latched_at = h.now;
    h.stream_from(nat, 0, 2, 3000, &tone_payloads(Codec::Pcmu, 1000.0, 5));
    let after = h.rtp_sent_since(latched_at + MS);
    assert_eq!(after.len(), 5);
    assert!(after.iter().all(|p| p.dest == nat));
    // The old source is now foreign.
    h.rtp(&rtp_packet(0, 1005, 160 * 1005, 1, false, &[0xff; 160]));
    let outcome = h.stop();
    assert_eq!(outcome.stats.packets_in, 10);
    assert_eq!(outcome.stats.packets_dropped, 1);
}

#[test]
fn garbage_is_dropped_without_harm() {
    let mut h = Harness::start(Codec::Pcmu, AudioEncoding::Mulaw8000);
    let mut hostile: Vec<Vec<u8>> = vec![
        vec![],
        vec![0x80],
        vec![0x80; 11],
        vec![0x40, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0xff], // version 1
        vec![0x8f, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1],       // 15 CSRCs, none present
        vec![
            0x90, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0xbe, 0xde, 0xff, 0xff,
        ], // extension overrun
        vec![0xa0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0x00], // padding 0
        rtp_packet(18, 1, 0, 9, false, &[0; 20]),          // G.729: not negotiated
        rtp_packet(0, 1, 0, 9, false, &[]),                // empty audio
        vec![0x81, 200, 0xff, 0xff, 0, 0],                 // RTCP SR, length overruns
    ];
    let fixed = hostile.len();
    for d in &hostile {
        h.rtp(d);
        h.rtcp_from(caller_rtcp(), d);
    }
    assert_eq!(h.session.stats().packets_dropped, 2 * fixed as u64);
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    hostile.clear();
    for _ in 0..300 {
        let len = (rng.next() % 300) as usize;
        hostile.push((0..len).map(|_| rng.next() as u8).collect());
    }
    for d in &hostile {
        h.rtp(d);
        h.rtcp_from(caller_rtcp(), d);
        h.advance(MS);
    }
    // Still alive and working: a real packet stream goes through.
    let from = h.agent.len();
    h.stream(0, 4242, &tone_payloads(Codec::Pcmu, 1000.0, 5));
    h.advance(100 * MS);
    let outcome = h.stop();
    assert_eq!(outcome.reason, None);
    assert!(outcome.stats.packets_dropped >= 2 * fixed as u64 + 300);
    let heard = media_frames(h.agent[from..].iter().map(|(_, m)| m));
    assert!(voiced(AudioEncoding::Mulaw8000, &heard).len() >= 4 * 160);
}
