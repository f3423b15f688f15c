//! SRTP and SRTCP both ways, with forgeries and replays.

use super::*;
use crate::media::rtcp::{RtcpWriter, SenderInfo};
use crate::media::srtp::{SrtpContext, SrtpError, MAX_OVERHEAD};
use crate::sdp::{SrtpKeys, SrtpSuite};

/// SDES keys as the engine would hand them over: ours protect what the session sends,
/// the caller's unprotect what it receives.
fn srtp_keys(suite: SrtpSuite) -> SrtpKeys {
    SrtpKeys {
        suite,
        local_key_salt: (0..suite.key_salt_len() as u8).collect(),
        remote_key_salt: (100..100 + suite.key_salt_len() as u8).collect(),
    }
}

/// The caller's side: it protects with its key and unprotects with ours.
struct Caller {
    tx: SrtpContext,
    rx: SrtpContext,
}

impl Caller {
    fn new(keys: &SrtpKeys) -> Self {
        Caller {
            tx: SrtpContext::new(keys.suite, &keys.remote_key_salt).unwrap(),
            rx: SrtpContext::new(keys.suite, &keys.local_key_salt).unwrap(),
        }
    }

    /// `pkt` protected with `protect` (SRTP or SRTCP) under the caller's key.
    fn protect(
        &mut self,
        protect: fn(&mut SrtpContext, &mut [u8], usize) -> Result<usize, SrtpError>,
        mut pkt: Vec<u8>,
    ) -> Vec<u8> {
        let len = pkt.len();
        pkt.resize(len + MAX_OVERHEAD, 0);
        let n = protect(&mut self.tx, &mut pkt, len).unwrap();
        pkt.truncate(n);
        pkt
    }
}

#[test]
fn srtp_both_ways_with_forgeries_and_replays_dropped_and_counted() {
    for suite in [SrtpSuite::AesCm128HmacSha1_80, SrtpSuite::AeadAes128Gcm] {
        let keys = srtp_keys(suite);
        let mut h = Harness::start_with(Codec::Pcmu, AudioEncoding::Mulaw8000, |cfg| {
            cfg.negotiated.srtp = Some(keys.clone());
        });
        let mut caller = Caller::new(&keys);

        // Plain RTP first, from elsewhere: dropped, and it must not latch.
        h.rtp_from(
            addr(66, 6666),
            &rtp_packet(0, 999, 0, 0x77, false, &[0xff; 160]),
        );
        assert_eq!(h.session.stats().packets_dropped, 1);
        let payloads = tone_payloads(Codec::Pcmu, 1000.0, 25);
        let mut first = Vec::new();
        for (i, p) in payloads.iter().enumerate() {
            let seq = 1000 + i as u16;
            let pkt = caller.protect(
                SrtpContext::protect_rtp,
                rtp_packet(0, seq, 160 * u32::from(seq), 0x77, i == 0, p),
            );
            h.rtp(&pkt);
            h.advance(20 * MS);
            if i == 0 {
                first = pkt;
            }
        }
        assert_eq!(h.session.stats().packets_in, 25, "{}", suite.name());
        // A replay of the first packet, then a forgery of it.
        h.rtp(&first);
        assert_eq!(h.session.stats().packets_dropped, 2);
        first[20] ^= 1;
        h.rtp(&first);
        assert_eq!(h.session.stats().packets_dropped, 3);

        // The caller's SRTCP is read; a tampered copy is not.
        let mut sr = [0u8; 64];
        let mut w = RtcpWriter::new(&mut sr);
        w.sender_report(0x77, &SenderInfo::default(), &[]).unwrap();
        let n = w.len();
        let srtcp = caller.protect(SrtpContext::protect_rtcp, sr[..n].to_vec());
        h.rtcp_from(caller_rtcp(), &srtcp);
        let mut forged = srtcp.clone();
        forged[10] ^= 1;
        h.rtcp_from(caller_rtcp(), &forged);
        // Plain RTCP where SRTCP was negotiated is no better.
        h.rtcp_from(caller_rtcp(), &sr[..n]);
        let stats = h.session.stats();
        assert_eq!((stats.rtcp_in, stats.packets_dropped), (1, 5));

        // The agent talks: what reaches the caller is SRTP under our key, header in clear.
        let talk_from = h.now;
        h.agent_sends(FromAgent::Media(mulaw(&tone(1000.0, 8000, 8000, 0))));
        h.advance(300 * MS);
        let mut decoded: Vec<i16> = Vec::new();
        for s in h
            .sent
            .iter()
            .filter(|s| s.packet == Packet::Rtp && s.at > talk_from)
        {
            let mut datagram = s.bytes.clone();
            let clear = RtpPacket::parse(&datagram[..FIXED_HEADER_LEN]).unwrap();
            assert_eq!(clear.ssrc(), SSRC, "the header is in clear");
            let len = caller
                .rx
                .unprotect_rtp(&mut datagram)
                .expect("authentic SRTP");
            let payload = RtpPacket::parse(&datagram[..len])
                .unwrap()
                .payload()
                .to_vec();
            decoded.extend(agent_pcm(AudioEncoding::Mulaw8000, &payload));
        }
        assert_eq!(decoded.len(), 15 * 160);
        assert!(
            tone_share(&decoded, 8000, 1000.0) > 0.9,
            "the agent's tone, decrypted"
        );

        let outcome = h.stop();
        let heard = voiced(AudioEncoding::Mulaw8000, &h.frames());
        assert_eq!(
            heard.len(),
            25 * 160,
            "the caller's audio reached the agent"
        );
        assert!(tone_share(&heard, 8000, 1000.0) > 0.9);
        assert_eq!(outcome.stats.packets_in, 25);
        assert_eq!(outcome.stats.packets_dropped, 5);

        // The closing RTCP (SR, SDES, BYE) is SRTCP under our key.
        let mut bye = h.rtcp_sent().last().unwrap().bytes.clone();
        let len = caller.rx.unprotect_rtcp(&mut bye).expect("authentic SRTCP");
        assert_eq!(rtcp_kinds(&bye[..len]), [200, 202, 203]);
    }
}

#[test]
fn unusable_keys_carry_no_media_rather_than_plain_rtp() {
    let mut keys = srtp_keys(SrtpSuite::AesCm128HmacSha1_80);
    keys.local_key_salt.truncate(3);
    let mut h = Harness::start_with(Codec::Pcmu, AudioEncoding::Mulaw8000, |cfg| {
        cfg.negotiated.srtp = Some(keys);
    });
    h.rtp(&rtp_packet(0, 1, 160, 0x77, false, &[0xff; 160]));
    h.advance(100 * MS);
    let outcome = h.stop();
    assert!(h.rtp_sent().is_empty());
    assert!(h.rtcp_sent().is_empty());
    assert_eq!(outcome.stats.packets_in, 0);
    // The packet received and every packet we would have sent.
    assert_eq!(outcome.stats.packets_dropped, 1 + 6);
}
