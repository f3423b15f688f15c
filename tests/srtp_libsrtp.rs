//! dialtone's SRTP against libsrtp, the implementation most SIP peers use (through
//! PyPI's `pylibsrtp`, pinned in tests/sdk/requirements.txt): each suite, both
//! directions, RTP across the 65535 → 0 sequence wrap and RTCP, bit-exact.

use std::io::Write;
use std::process::{Command, Stdio};

use dialtone::media::srtp::{SrtpContext, MAX_OVERHEAD};
use dialtone::sdp::SrtpSuite;

const MASTER: [u8; 30] = [
    0x0f, 0x1e, 0x2d, 0x3c, 0x4b, 0x5a, 0x69, 0x78, 0x87, 0x96, 0xa5, 0xb4, 0xc3, 0xd2, 0xe1, 0xf0,
    0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0xfe, 0xdc, 0xba, 0x98, 0x76, 0x54,
];
const SSRC: u32 = 0xcafe_f00d;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex from the oracle"))
        .collect()
}

/// RTP packets across the sequence wrap, with an RTCP report after every third one.
fn plain_packets() -> Vec<(&'static str, Vec<u8>)> {
    let mut out = Vec::new();
    for (n, seq) in (65_530u16..=65_535).chain(0..6).enumerate() {
        let mut p = vec![0x80, 0x00];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&(n as u32 * 160).to_be_bytes());
        p.extend_from_slice(&SSRC.to_be_bytes());
        p.extend((0..160).map(|i| (i as u8) ^ (seq as u8)));
        out.push(("rtp", p));
        if n % 3 == 2 {
            let mut r = vec![0x80, 201, 0, 1];
            r.extend_from_slice(&SSRC.to_be_bytes());
            r.extend_from_slice(&[0x81, 202, 0, 2]);
            r.extend_from_slice(&SSRC.to_be_bytes());
            r.extend_from_slice(&[1, 2, b'd', b't']);
            out.push(("rtcp", r));
        }
    }
    out
}

/// Runs the libsrtp oracle over `packets`; one output line per packet.
fn oracle(mode: &str, suite: SrtpSuite, packets: &[(&str, Vec<u8>)]) -> Vec<String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/srtp/libsrtp_oracle.py");
    let key = hex(&MASTER[..suite.key_salt_len()]);
    let mut child = Command::new("python3")
        .args([script, mode, suite.name(), &key])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 is needed for the libsrtp interop test");
    let mut input = String::new();
    for (kind, p) in packets {
        input.push_str(&format!("{kind} {}\n", hex(p)));
    }
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the libsrtp oracle failed (pip install -r tests/sdk/requirements.txt): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(lines.len(), packets.len());
    lines
}

#[test]
fn libsrtp_protects_and_dialtone_unprotects_bit_exactly() {
    for suite in SrtpSuite::ALL {
        let plain = plain_packets();
        let protected = oracle("protect", suite, &plain);
        let mut rx = SrtpContext::new(suite, &MASTER[..suite.key_salt_len()]).unwrap();
        for ((kind, p), line) in plain.iter().zip(&protected) {
            let mut buf = unhex(line);
            let len = if *kind == "rtp" {
                rx.unprotect_rtp(&mut buf)
            } else {
                rx.unprotect_rtcp(&mut buf)
            };
            let len = len.unwrap_or_else(|e| panic!("{suite:?} {kind} {}: {e}", hex(p)));
            assert_eq!(buf[..len], p[..], "{suite:?} {kind}");
        }
    }
}

#[test]
fn dialtone_protects_and_libsrtp_unprotects_bit_exactly() {
    for suite in SrtpSuite::ALL {
        let plain = plain_packets();
        let mut tx = SrtpContext::new(suite, &MASTER[..suite.key_salt_len()]).unwrap();
        let protected: Vec<(&str, Vec<u8>)> = plain
            .iter()
            .map(|(kind, p)| {
                let mut buf = p.clone();
                buf.resize(p.len() + MAX_OVERHEAD, 0);
                let n = if *kind == "rtp" {
                    tx.protect_rtp(&mut buf, p.len())
                } else {
                    tx.protect_rtcp(&mut buf, p.len())
                }
                .unwrap();
                buf.truncate(n);
                (*kind, buf)
            })
            .collect();
        let unprotected = oracle("unprotect", suite, &protected);
        for ((kind, p), line) in plain.iter().zip(&unprotected) {
            assert_eq!(line, &hex(p), "{suite:?} {kind}: libsrtp's answer");
        }
    }
}
