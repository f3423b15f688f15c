use super::transform::{cm_iv, derive, Transform};
use super::*;

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

const KEY: [u8; 30] = [
    0xE1, 0xF9, 0x7A, 0x0D, 0x3E, 0x01, 0x8B, 0xE0, 0xD6, 0x4F, 0xA3, 0x2C, 0x06, 0xDE, 0x41, 0x39,
    0x0E, 0xC6, 0x75, 0xAD, 0x49, 0x8A, 0xFE, 0xEB, 0xB6, 0x96, 0x0B, 0x3A, 0xAB, 0xE6,
];

fn pair(suite: SrtpSuite) -> (SrtpContext, SrtpContext) {
    let k = &KEY[..suite.key_salt_len()];
    (
        SrtpContext::new(suite, k).unwrap(),
        SrtpContext::new(suite, k).unwrap(),
    )
}

/// An RTP packet (PCMU, 160-byte payload) in a buffer with room for the tag.
fn rtp(seq: u16, ssrc: u32) -> ([u8; 256], usize) {
    let mut buf = [0u8; 256];
    buf[0] = 0x80;
    buf[2..4].copy_from_slice(&seq.to_be_bytes());
    buf[4..8].copy_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    buf[8..12].copy_from_slice(&ssrc.to_be_bytes());
    for (i, b) in buf[12..172].iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(7) ^ seq as u8;
    }
    (buf, 172)
}

/// An RTCP receiver report with one block, then SDES CNAME "x".
fn rtcp(ssrc: u32) -> ([u8; 128], usize) {
    let mut buf = [0u8; 128];
    buf[..4].copy_from_slice(&[0x81, 201, 0, 7]);
    buf[4..8].copy_from_slice(&ssrc.to_be_bytes());
    for (i, b) in buf[8..32].iter_mut().enumerate() {
        *b = i as u8;
    }
    buf[32..44].copy_from_slice(&[0x81, 202, 0, 2, 0, 0, 0, 1, 1, 1, b'x', 0]);
    buf[36..40].copy_from_slice(&ssrc.to_be_bytes());
    (buf, 44)
}

#[test]
fn rfc3711_b2_aes_cm_keystream() {
    let key = hex("2B7E151628AED2A6ABF7158809CF4F3C");
    let cipher = Aes128::new_from_slice(&key).unwrap();
    let salt: [u8; 14] = hex("F0F1F2F3F4F5F6F7F8F9FAFBFCFD").try_into().unwrap();
    let iv = cm_iv(&salt, 0, 0);
    assert_eq!(iv.to_vec(), hex("F0F1F2F3F4F5F6F7F8F9FAFBFCFD0000"));
    let mut stream = vec![0u8; 0xFF02 * 16];
    Transform::cm_apply(&cipher, iv, &mut stream);
    assert_eq!(
        stream[..48],
        hex(
            "E03EAD0935C95E80E166B16DD92B4EB4 D23513162B02D0F72A43A2FE4A5F97AB
             41E95B3BB0A2E8DD477901E4FCA894C0"
        )[..]
    );
    assert_eq!(
        stream[0xFEFF * 16..],
        hex(
            "EC8CDF7398607CB0F2D21675EA9EA1E4 362B7C3C6773516318A077D7FC5073AE
             6A2CC3787889374FBEB4C81B17BA6C44"
        )[..]
    );
}

#[test]
fn rfc3711_b3_key_derivation() {
    let master = Aes128::new_from_slice(&KEY[..16]).unwrap();
    let salt = &KEY[16..];
    let mut key = [0u8; 16];
    derive(&master, salt, 0x00, &mut key);
    assert_eq!(key.to_vec(), hex("C61E7A93744F39EE10734AFE3FF7A087"));
    let mut salt_out = [0u8; 14];
    derive(&master, salt, 0x02, &mut salt_out);
    assert_eq!(salt_out.to_vec(), hex("30CBBC08863D8C85D49DB34A9AE1"));
    let mut auth = [0u8; 94];
    derive(&master, salt, 0x01, &mut auth);
    assert_eq!(
        auth.to_vec(),
        hex(
            "CEBE321F6FF7716B6FD4AB49AF256A15 6D38BAA48F0A0ACF3C34E2359E6CDBCE
             E049646C43D9327AD175578EF7227098 6371C10C9A369AC2F94A8C5FBCDDDC25
             6D6E919A48B610EF17C2041E47403576 6B68642C59BBFC2F34DB60DBDFB2"
        )
    );
}

#[test]
fn every_suite_round_trips_rtp_and_rtcp_and_hides_the_payload() {
    for suite in SrtpSuite::ALL {
        let (mut tx, mut rx) = pair(suite);
        let (plain, len) = rtp(1000, 0x1234_5678);
        let mut buf = plain;
        let n = tx.protect_rtp(&mut buf, len).unwrap();
        let expected_tag = match suite {
            SrtpSuite::AesCm128HmacSha1_80 => 10,
            SrtpSuite::AesCm128HmacSha1_32 => 4,
            SrtpSuite::AeadAes128Gcm => 16,
        };
        assert_eq!(n, len + expected_tag, "{suite:?}");
        assert_eq!(buf[..12], plain[..12], "the header stays in clear");
        assert_ne!(buf[12..len], plain[12..len], "the payload is encrypted");
        assert_eq!(rx.unprotect_rtp(&mut buf[..n]), Ok(len));
        assert_eq!(buf[..len], plain[..len]);

        let (plain, len) = rtcp(0x1234_5678);
        let mut buf = plain;
        let n = tx.protect_rtcp(&mut buf, len).unwrap();
        assert_eq!(
            n,
            len + 4
                + if suite == SrtpSuite::AeadAes128Gcm {
                    16
                } else {
                    10
                }
        );
        assert_ne!(buf[8..len], plain[8..len]);
        assert_eq!(rx.unprotect_rtcp(&mut buf[..n]), Ok(len));
        assert_eq!(buf[..len], plain[..len]);
    }
}

#[test]
fn the_rollover_counter_follows_the_sequence_through_65535_to_0() {
    for suite in SrtpSuite::ALL {
        let (mut tx, mut rx) = pair(suite);
        let mut sent = Vec::new();
        for seq in (65_530..=65_535).chain(0..6) {
            let (mut buf, len) = rtp(seq, 7);
            let n = tx.protect_rtp(&mut buf, len).unwrap();
            sent.push((seq, buf, n));
        }
        // Reordered across the wrap: 1 arrives before 65535.
        sent.swap(5, 7);
        for (seq, mut buf, n) in sent {
            let len = rx.unprotect_rtp(&mut buf[..n]);
            assert_eq!(len, Ok(172), "{suite:?} seq {seq}");
            assert_eq!(buf[..172], rtp(seq, 7).0[..172]);
        }
    }
}

#[test]
fn a_receiver_that_assumed_the_wrong_rollover_fails_authentication() {
    // The ROC is authenticated: a packet protected with ROC 1 does not verify as ROC 0.
    let (mut tx, mut rx) = pair(SrtpSuite::AesCm128HmacSha1_80);
    for seq in (65_000..=65_535).chain(0..10) {
        let (mut buf, len) = rtp(seq, 7);
        tx.protect_rtp(&mut buf, len).unwrap();
    }
    let (mut buf, len) = rtp(10, 7);
    let n = tx.protect_rtp(&mut buf, len).unwrap();
    assert_eq!(rx.unprotect_rtp(&mut buf[..n]), Err(SrtpError::Auth));
}

#[test]
fn replays_and_packets_older_than_the_window_are_rejected() {
    let (mut tx, mut rx) = pair(SrtpSuite::AesCm128HmacSha1_80);
    let mut packets = Vec::new();
    for seq in 0..100u16 {
        let (mut buf, len) = rtp(seq, 9);
        let n = tx.protect_rtp(&mut buf, len).unwrap();
        packets.push((buf, n));
    }
    let (mut first, n0) = packets[0];
    let (mut again, _) = packets[0];
    assert_eq!(rx.unprotect_rtp(&mut first[..n0]), Ok(172));
    assert_eq!(rx.unprotect_rtp(&mut again[..n0]), Err(SrtpError::Replay));
    let (mut last, n) = packets[99];
    assert_eq!(rx.unprotect_rtp(&mut last[..n]), Ok(172));
    let (mut old, n) = packets[35];
    assert_eq!(rx.unprotect_rtp(&mut old[..n]), Err(SrtpError::Replay));
    let (mut late, n) = packets[36];
    assert_eq!(
        rx.unprotect_rtp(&mut late[..n]),
        Ok(172),
        "63 behind: still in the window"
    );

    let (mut buf, len) = rtcp(9);
    let n = tx.protect_rtcp(&mut buf, len).unwrap();
    let mut copy = buf;
    assert_eq!(rx.unprotect_rtcp(&mut buf[..n]), Ok(len));
    assert_eq!(rx.unprotect_rtcp(&mut copy[..n]), Err(SrtpError::Replay));
}

#[test]
fn a_tampered_packet_fails_authentication_and_is_not_remembered() {
    for suite in SrtpSuite::ALL {
        let (mut tx, mut rx) = pair(suite);
        let (mut buf, len) = rtp(5, 1);
        let n = tx.protect_rtp(&mut buf, len).unwrap();
        for at in [1, 20, n - 1] {
            let mut bad = buf;
            bad[at] ^= 0x01;
            assert_eq!(
                rx.unprotect_rtp(&mut bad[..n]),
                Err(SrtpError::Auth),
                "{suite:?} byte {at}"
            );
        }
        // The failures left no trace: the genuine packet is still accepted.
        assert_eq!(rx.unprotect_rtp(&mut buf[..n]), Ok(len));

        let (mut buf, len) = rtcp(1);
        let n = tx.protect_rtcp(&mut buf, len).unwrap();
        let mut bad = buf;
        bad[n - 12] ^= 0x80;
        assert_eq!(rx.unprotect_rtcp(&mut bad[..n]), Err(SrtpError::Auth));
        assert_eq!(rx.unprotect_rtcp(&mut buf[..n]), Ok(len));
    }
}

#[test]
fn plain_rtp_short_packets_and_wrong_keys_are_errors() {
    let (_, mut rx) = pair(SrtpSuite::AesCm128HmacSha1_80);
    let (mut buf, len) = rtp(1, 1);
    assert_eq!(rx.unprotect_rtp(&mut buf[..len]), Err(SrtpError::Auth));
    assert_eq!(rx.unprotect_rtp(&mut buf[..15]), Err(SrtpError::TooShort));
    assert_eq!(rx.unprotect_rtp(&mut []), Err(SrtpError::TooShort));
    assert_eq!(rx.unprotect_rtcp(&mut buf[..10]), Err(SrtpError::TooShort));
    let mut other = KEY;
    other[0] ^= 1;
    let mut tx = SrtpContext::new(SrtpSuite::AesCm128HmacSha1_80, &other).unwrap();
    let n = tx.protect_rtp(&mut buf, len).unwrap();
    assert_eq!(rx.unprotect_rtp(&mut buf[..n]), Err(SrtpError::Auth));
    assert_eq!(
        SrtpContext::new(SrtpSuite::AeadAes128Gcm, &KEY).err(),
        Some(SrtpError::KeyLength)
    );
    let mut small = [0u8; 172];
    small[0] = 0x80;
    assert_eq!(tx.protect_rtp(&mut small, 172), Err(SrtpError::NoRoom));
}

#[test]
fn csrcs_and_header_extensions_stay_in_clear() {
    let (mut tx, mut rx) = pair(SrtpSuite::AesCm128HmacSha1_80);
    let mut buf = [0u8; 128];
    // V=2, X=1, CC=1; one CSRC; an extension of one word; 20 bytes of payload.
    buf[0] = 0x91;
    buf[12..16].copy_from_slice(&[1, 2, 3, 4]);
    buf[16..24].copy_from_slice(&[0xBE, 0xDE, 0, 1, 9, 9, 9, 9]);
    buf[24..44].fill(0x55);
    let plain = buf;
    let n = tx.protect_rtp(&mut buf, 44).unwrap();
    assert_eq!(buf[..24], plain[..24]);
    assert_ne!(buf[24..44], plain[24..44]);
    assert_eq!(rx.unprotect_rtp(&mut buf[..n]), Ok(44));
    assert_eq!(buf[..44], plain[..44]);
}
