//! RTCP: when reports go out, what they say, where they go, and the BYE at the end.

use super::*;
use crate::media::rtcp::{ntp_from_unix, ntp_middle, ReportBlock, RtcpWriter, SenderInfo};
use crate::media::rtp::clock_units;

/// What one of our compound reports says.
#[derive(Debug, Default)]
struct Report {
    sender: Option<SenderInfo>,
    blocks: Vec<ReportBlock>,
    cname: Option<Vec<u8>>,
    bye: Vec<u32>,
    kinds: Vec<u8>,
}

fn report(datagram: &[u8]) -> Report {
    let mut r = Report {
        kinds: rtcp_kinds(datagram),
        ..Report::default()
    };
    for p in parse_compound(datagram).unwrap() {
        match p {
            RtcpPacket::SenderReport { ssrc, info, blocks } => {
                assert_eq!(ssrc, SSRC);
                r.sender = Some(info);
                r.blocks = blocks.collect();
            }
            RtcpPacket::ReceiverReport { ssrc, blocks } => {
                assert_eq!(ssrc, SSRC);
                r.blocks = blocks.collect();
            }
            RtcpPacket::SourceDescription(mut chunks) => {
                let chunk = chunks.next().unwrap();
                assert_eq!(chunk.ssrc, SSRC);
                r.cname = chunk.cname().map(<[u8]>::to_vec);
            }
            RtcpPacket::Bye { sources, .. } => r.bye = sources.collect(),
            RtcpPacket::Other { .. } => panic!("we send no other packet types"),
        }
    }
    r
}

/// The caller's SR, as a datagram.
fn caller_sr(ssrc: u32, ntp: u64) -> Vec<u8> {
    let mut buf = [0u8; 64];
    let mut w = RtcpWriter::new(&mut buf);
    let info = SenderInfo {
        ntp,
        ..SenderInfo::default()
    };
    w.sender_report(ssrc, &info, &[]).unwrap();
    let n = w.len();
    buf[..n].to_vec()
}

#[test]
fn reports_go_out_about_every_five_seconds_with_what_we_sent_and_received() {
    let mut h = Harness::start(Codec::Pcmu, AudioEncoding::Mulaw8000);
    // 16 s of caller audio, and our silence all along.
    let payloads = tone_payloads(Codec::Pcmu, 1000.0, 50);
    for second in 0..16u16 {
        h.stream_from(caller_rtp(), 0, 77, 1000 + 50 * second, &payloads);
    }
    let reports = h.rtcp_sent();
    assert!(reports.len() >= 2, "{}", reports.len());
    // The first after 0.5 × 5 s, randomised over [0.5, 1.5] of it; then 5 s, randomised.
    let first = reports[0].at - h.t0;
    assert!((1250 * MS..=3750 * MS).contains(&first), "{first:?}");
    for w in reports.windows(2) {
        let gap = w[1].at - w[0].at;
        assert!((2500 * MS..=7500 * MS).contains(&gap), "{gap:?}");
    }
    let first_ts = h.rtp_sent()[0].ts;
    for sent in &reports {
        assert_eq!(sent.dest, caller_rtcp(), "the SDP's RTCP address");
        assert_eq!(sent.socket, Socket::Rtcp);
        let r = report(&sent.bytes);
        assert_eq!(r.kinds, [200, 202], "SR and SDES: we are sending");
        assert_eq!(r.cname.as_deref(), Some(CNAME.as_bytes()));
        let since_start = sent.at - h.t0;
        // Everything we sent by then, 160 bytes of payload each.
        let sent_before = h.rtp_sent().iter().filter(|p| p.at <= sent.at).count();
        let info = r.sender.unwrap();
        assert_eq!(info.packet_count as usize, sent_before);
        assert_eq!(info.octet_count as usize, 160 * sent_before);
        // The wall clock and our RTP clock at the same instant.
        let wall = wall_start().duration_since(UNIX_EPOCH).unwrap() + since_start;
        assert_eq!(info.ntp, ntp_from_unix(wall));
        assert_eq!(
            info.rtp_timestamp,
            first_ts.wrapping_add(clock_units(since_start, 8000))
        );
        // One block about the caller: nothing lost, up to its latest packet.
        let block = r.blocks.as_slice();
        assert_eq!(block.len(), 1);
        assert_eq!(block[0].ssrc, 77);
        assert_eq!((block[0].fraction_lost, block[0].cumulative_lost), (0, 0));
        let received = (since_start.as_millis() / 20 + 1) as u32;
        assert_eq!(block[0].extended_highest_seq, 1000 + received - 1);
        assert_eq!(block[0].last_sr, 0, "no SR from the caller yet");
    }
    let regular = reports.len() as u64;
    let outcome = h.stop();
    assert_eq!(outcome.stats.rtcp_out, regular + 1);
}

#[test]
fn a_receiver_report_when_we_sent_nothing_since_the_last_report() {
    // On hold from the start: nothing is sent, so reports are RRs.
    let mut h = Harness::start_with(Codec::Pcmu, AudioEncoding::Mulaw8000, |c| {
        c.negotiated.direction = Direction::RecvOnly;
    });
    h.advance(Duration::from_secs(4));
    let r = report(&h.rtcp_sent()[0].bytes);
    assert_eq!(r.kinds, [201, 202]);
    assert!(
        r.blocks.is_empty(),
        "no block before the caller's first packet"
    );
    // Off hold we send again: the next report is an SR.
    let mut resumed = h.negotiated.clone();
    resumed.direction = Direction::SendRecv;
    h.update(resumed);
    let reports = h.rtcp_sent().len();
    h.run_until(h.now + Duration::from_secs(8));
    let r = report(&h.rtcp_sent()[reports].bytes);
    assert_eq!(r.kinds, [200, 202]);
}

#[test]
fn the_callers_sender_report_is_echoed_in_lsr_and_dlsr() {
    let mut h = Harness::start(Codec::Pcmu, AudioEncoding::Mulaw8000);
    h.stream(0, 0xabc, &tone_payloads(Codec::Pcmu, 1000.0, 5));
    let ntp = 0x1234_5678_9abc_def0;
    h.rtcp_from(caller_rtcp(), &caller_sr(0xabc, ntp));
    let sr_at = h.now;
    h.advance(70 * MS);
    let outcome = h.stop();
    assert_eq!(outcome.stats.rtcp_in, 1);
    let bye = report(&h.rtcp_sent().last().unwrap().bytes);
    let block = bye.blocks[0];
    assert_eq!(block.ssrc, 0xabc);
    assert_eq!(block.last_sr, ntp_middle(ntp));
    let delay = (h.now - sr_at).as_nanos() * 65536 / 1_000_000_000;
    assert_eq!(u128::from(block.delay_since_last_sr), delay);
}

#[test]
fn stop_sends_the_agent_stop_and_the_caller_a_bye_after_its_report() {
    let mut h = Harness::start(Codec::Pcmu, AudioEncoding::Mulaw8000);
    h.stream(0, 0xabc, &tone_payloads(Codec::Pcmu, 1000.0, 5));
    // The caller's SR on our RTCP port, and one multiplexed on the RTP port.
    let sr = caller_sr(0xabc, 0x1234_5678_0000_0000);
    h.rtcp_from(caller_rtcp(), &sr);
    h.advance(20 * MS);
    h.rtp(&sr);
    h.advance(50 * MS);
    let outcome = h.stop();
    assert_eq!(outcome.reason, None);
    assert_said_goodbye(&h);
    // One datagram: SR (we sent), SDES, BYE; to where the caller's RTCP came from.
    let last = h.rtcp_sent().last().copied().unwrap();
    assert_eq!((last.dest, last.socket), (caller_rtcp(), Socket::Rtcp));
    let r = report(&last.bytes);
    assert_eq!(r.kinds, [200, 202, 203]);
    assert_eq!(r.blocks.len(), 1, "one block about the caller");
    assert_eq!(r.bye, [SSRC]);
    assert_eq!(outcome.stats.rtcp_in, 2);
    assert_eq!(outcome.stats.rtcp_out, 1);
    // Nothing after the end.
    let sent = h.sent.len();
    h.advance(Duration::from_secs(10));
    assert_eq!(h.sent.len(), sent);
}

/// Where the closing RTCP of a session goes, after `setup`.
fn bye_destination(
    tweak: impl FnOnce(&mut SessionConfig),
    setup: impl FnOnce(&mut Harness),
) -> (SocketAddr, Socket) {
    let mut h = Harness::start_with(Codec::Pcmu, AudioEncoding::Mulaw8000, tweak);
    setup(&mut h);
    h.stop();
    let last = h.rtcp_sent().last().copied().expect("a BYE");
    assert_eq!(report(&last.bytes).bye, [SSRC]);
    (last.dest, last.socket)
}

fn some_rtp(h: &mut Harness, src: SocketAddr) {
    h.stream_from(src, 0, 5, 10, &tone_payloads(Codec::Pcmu, 1000.0, 2));
}

#[test]
fn rtcp_goes_where_the_rules_say() {
    let mux = |c: &mut SessionConfig| {
        c.negotiated.rtcp_mux = true;
        c.negotiated.remote_rtcp = None;
    };
    // Nothing received: the SDP's RTCP address, from our RTCP port.
    assert_eq!(
        bye_destination(|_| {}, |_| {}),
        (caller_rtcp(), Socket::Rtcp)
    );
    // RTP latched at the SDP address: still the SDP's RTCP address.
    assert_eq!(
        bye_destination(|_| {}, |h| some_rtp(h, caller_rtp())),
        (caller_rtcp(), Socket::Rtcp)
    );
    // NAT moved the caller's RTP: its port + 1.
    let nat = addr(50, 50000);
    assert_eq!(
        bye_destination(|_| {}, |h| some_rtp(h, nat)),
        (addr(50, 50001), Socket::Rtcp)
    );
    // rtcp-mux: the RTP destination, SDP then latched, from our RTP port.
    assert_eq!(bye_destination(mux, |_| {}), (caller_rtp(), Socket::Rtp));
    assert_eq!(
        bye_destination(mux, |h| some_rtp(h, nat)),
        (nat, Socket::Rtp)
    );
    // Symmetric RTCP: where the caller's RTCP comes from, on the port it came to.
    let sr = caller_sr(5, 1);
    let elsewhere = addr(10, 45555);
    assert_eq!(
        bye_destination(
            |_| {},
            |h| {
                some_rtp(h, caller_rtp());
                h.rtcp_from(elsewhere, &sr);
            }
        ),
        (elsewhere, Socket::Rtcp)
    );
    assert_eq!(
        bye_destination(
            |_| {},
            |h| {
                some_rtp(h, caller_rtp());
                h.rtp_from(elsewhere, &sr);
            }
        ),
        (elsewhere, Socket::Rtp)
    );
    // RTCP before RTP is latched is read but not followed: its source is unchecked.
    assert_eq!(
        bye_destination(|_| {}, |h| h.rtcp_from(elsewhere, &sr)),
        (caller_rtcp(), Socket::Rtcp)
    );
}

#[test]
fn rtcp_from_another_ip_is_dropped_once_rtp_is_latched() {
    let mut h = Harness::start(Codec::Pcmu, AudioEncoding::Mulaw8000);
    some_rtp(&mut h, caller_rtp());
    let sr = caller_sr(5, 1);
    let stranger = addr(66, 40001);
    h.rtcp_from(stranger, &sr);
    h.rtp_from(stranger, &sr);
    let stats = h.session.stats();
    assert_eq!((stats.rtcp_in, stats.packets_dropped), (0, 2));
    h.rtcp_from(caller_rtcp(), &sr);
    assert_eq!(h.session.stats().rtcp_in, 1);
    h.stop();
    assert_eq!(h.rtcp_sent().last().unwrap().dest, caller_rtcp());
}
