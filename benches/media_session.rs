//! Per-packet CPU cost of a call's media, without sockets, fed 20 ms packets on a virtual
//! clock. The first table times the two paths the session core drives: `InboundPath` (RTP
//! → agent frame) and `OutboundPath` (agent audio → RTP); it prints ns per packet and the
//! share of one core a call costs (both directions, 50 packets per second each way).
//!
//! With SRTP the paths do what the session's packet protection does around them:
//! unprotect each received datagram in place before parsing it, and copy each packet to
//! send into the transmit buffer and protect it there. A second table times the whole
//! sans-IO `Session` (both paths plus latching, timers, RTCP, events) the way the media
//! task drives it. A third times SRTP alone: protect and unprotect of one 172-byte PCMU
//! RTP packet (12-byte header, 160 bytes).
//!
//! Run: `cargo bench --bench media_session` (release profile; about 15 s).

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use dialtone::agent::{FromAgent, ToAgent};
use dialtone::media::codec::{Codec, Encoder};
use dialtone::media::rtp::{RtpHeader, RtpPacket};
use dialtone::media::session::{
    Event, InboundPath, OutboundPath, Polled, Session, SessionConfig, StreamParams, MAX_TRANSMIT,
};
use dialtone::media::srtp::{SrtpContext, MAX_OVERHEAD};
use dialtone::model::AudioEncoding;
use dialtone::sdp::{Direction, Negotiated, SrtpKeys, SrtpSuite};

const PACKETS: usize = 100_000;
const FRAME: Duration = Duration::from_millis(20);

fn tone(rate: u32, len: usize, from: usize) -> Vec<i16> {
    (from..from + len)
        .map(|i| {
            let t = i as f64 / f64::from(rate);
            (6000.0 * (std::f64::consts::TAU * 440.0 * t).sin()
                + 2000.0 * (std::f64::consts::TAU * 1700.0 * t).sin()) as i16
        })
        .collect()
}

/// A second of caller packets, reused round-robin with fresh sequence numbers.
fn caller_payloads(codec: Codec) -> Vec<Vec<u8>> {
    let mut enc = Encoder::new(codec);
    let n = codec.pcm_samples(20);
    (0..50)
        .map(|f| {
            let mut out = vec![0; 160];
            enc.encode(&tone(codec.sample_rate(), n, f * n), &mut out);
            out
        })
        .collect()
}

/// A second of agent audio in 20 ms chunks of its format.
fn agent_chunks(agent: AudioEncoding) -> Vec<Vec<u8>> {
    let rate = agent.sample_rate();
    let n = rate as usize / 50;
    (0..50)
        .map(|f| {
            let pcm = tone(rate, n, f * n);
            match agent {
                AudioEncoding::Mulaw8000 => pcm
                    .iter()
                    .map(|&s| dialtone::media::codec::g711::linear_to_ulaw(s))
                    .collect(),
                _ => pcm.iter().flat_map(|s| s.to_le_bytes()).collect(),
            }
        })
        .collect()
}

/// A master key||salt for `suite` (any bytes do).
fn master_key(suite: SrtpSuite, fill: u8) -> Vec<u8> {
    (0..suite.key_salt_len())
        .map(|i| fill.wrapping_add(i as u8))
        .collect()
}

/// Room for one SRTP packet of a caller's 20 ms in a flat buffer of datagrams.
const STRIDE: usize = 12 + 160 + MAX_OVERHEAD;

/// The caller's packet `i`: RTP header and the payload, written into `out`.
fn caller_packet(codec: Codec, payloads: &[Vec<u8>], i: usize, out: &mut [u8]) -> usize {
    let header = RtpHeader {
        marker: false,
        payload_type: codec.payload_type(),
        sequence: i as u16,
        timestamp: (i as u32).wrapping_mul(160),
        ssrc: 0x1234,
    };
    header.write(&payloads[i % 50], out).unwrap_or(0)
}

/// The caller's first `n` packets protected with `suite`, as they arrive from the wire:
/// a flat buffer of `STRIDE`-byte slots and each datagram's length.
fn srtp_datagrams(codec: Codec, suite: SrtpSuite, n: usize) -> (Vec<u8>, Vec<usize>) {
    let payloads = caller_payloads(codec);
    let mut tx = SrtpContext::new(suite, &master_key(suite, 7)).expect("key length fits");
    let mut flat = vec![0u8; n * STRIDE];
    let lens = flat
        .chunks_exact_mut(STRIDE)
        .enumerate()
        .map(|(i, slot)| {
            let len = caller_packet(codec, &payloads, i, slot);
            tx.protect_rtp(slot, len).expect("room for the tag")
        })
        .collect();
    (flat, lens)
}

fn inbound(codec: Codec, agent: AudioEncoding, srtp: Option<SrtpSuite>) -> f64 {
    let params = StreamParams::new(codec, codec.payload_type(), Some(101), 20);
    let t0 = Instant::now();
    let mut path = InboundPath::new(params, agent, t0);
    let payloads = caller_payloads(codec);
    // With SRTP: the datagrams as sent (protected beforehand, untimed), and the receiving
    // context keyed with the sender's master key.
    let wire = srtp.map(|suite| {
        let (flat, lens) = srtp_datagrams(codec, suite, PACKETS / 10 + PACKETS);
        let rx = SrtpContext::new(suite, &master_key(suite, 7)).expect("key length fits");
        (flat, lens, rx)
    });
    let mut wire = wire;
    let mut datagram = [0u8; STRIDE];
    let mut frames = 0usize;
    let mut run = |path: &mut InboundPath, range: std::ops::Range<usize>| {
        let started = Instant::now();
        for i in range {
            // Writing the datagram stands in for the socket read.
            let len = match &mut wire {
                None => caller_packet(codec, &payloads, i, &mut datagram),
                Some((flat, lens, rx)) => {
                    let got = &mut datagram[..lens[i]];
                    got.copy_from_slice(&flat[i * STRIDE..i * STRIDE + lens[i]]);
                    rx.unprotect_rtp(got).expect("authentic packet")
                }
            };
            let now = t0 + FRAME * i as u32;
            let pkt = RtpPacket::parse(&datagram[..len]).expect("valid packet");
            black_box(path.on_packet(&pkt, now)).ok();
            path.tick();
            while let Some((frame, arrival)) = path.pop_frame() {
                frames += black_box(frame).len() / agent.bytes_per_20ms();
                black_box(arrival);
            }
        }
        started.elapsed()
    };
    run(&mut path, 0..PACKETS / 10); // warm-up
    let elapsed = run(&mut path, PACKETS / 10..PACKETS / 10 + PACKETS);
    assert!(frames >= PACKETS, "every packet became a frame");
    elapsed.as_nanos() as f64 / PACKETS as f64
}

fn outbound(codec: Codec, agent: AudioEncoding, srtp: Option<SrtpSuite>) -> f64 {
    let params = StreamParams::new(codec, codec.payload_type(), Some(101), 20);
    let t0 = Instant::now();
    let mut path = OutboundPath::new(params, agent, 0x5678, 1, 1, t0);
    let chunks = agent_chunks(agent);
    let mut tx =
        srtp.map(|suite| SrtpContext::new(suite, &master_key(suite, 3)).expect("key length fits"));
    let mut scratch = vec![0u8; 2048];
    let mut sent = 0usize;
    let mut run = |path: &mut OutboundPath, range: std::ops::Range<usize>| {
        let started = Instant::now();
        for i in range {
            path.push_agent(&chunks[i % 50]);
            let now = t0 + FRAME * i as u32;
            while let Polled::Packet(p) = path.poll(now, true) {
                let wire = match &mut tx {
                    None => p,
                    Some(tx) => {
                        // As the session does: protect a copy, never the playout's buffer.
                        scratch[..p.len()].copy_from_slice(p);
                        let n = tx.protect_rtp(&mut scratch, p.len()).expect("room");
                        &scratch[..n]
                    }
                };
                sent += black_box(wire).len() / 172;
            }
            while let Some(m) = path.poll_mark() {
                black_box(m);
            }
        }
        started.elapsed()
    };
    run(&mut path, 0..PACKETS / 10);
    let elapsed = run(&mut path, PACKETS / 10..PACKETS / 10 + PACKETS);
    assert!(sent >= PACKETS, "every chunk became a packet");
    elapsed.as_nanos() as f64 / PACKETS as f64
}

/// ns per 20 ms for a whole session core: one caller packet in, one chunk of agent audio
/// in (a fresh `Vec`, as the bridge hands it over), the timers, one RTP packet out (and
/// RTCP now and then), the agent frame out.
fn session(codec: Codec, agent: AudioEncoding, srtp: Option<SrtpSuite>) -> f64 {
    let caller: SocketAddr = ([192, 0, 2, 10], 40000).into();
    let keys = srtp.map(|suite| SrtpKeys {
        suite,
        local_key_salt: master_key(suite, 3),
        remote_key_salt: master_key(suite, 7),
    });
    let cfg = SessionConfig {
        negotiated: Negotiated {
            media_index: 0,
            remote_rtp: caller,
            remote_rtcp: Some(([192, 0, 2, 10], 40001).into()),
            rtcp_mux: false,
            codec,
            payload_type: codec.payload_type(),
            telephone_event: Some(101),
            ptime: 20,
            direction: Direction::SendRecv,
            remote_hold: false,
            srtp: keys,
        },
        agent_encoding: agent,
        no_audio_timeout: Duration::from_secs(3600),
        inactivity_timeout: Duration::from_secs(3600),
        hangup_drain_cap: Duration::from_secs(1),
        ssrc: 0x5678,
        cname: "bench".into(),
        early: false,
    };
    let t0 = Instant::now();
    let mut core = Session::new(cfg, t0, SystemTime::now(), 1);
    let payloads = caller_payloads(codec);
    let chunks = agent_chunks(agent);
    let wire = srtp.map(|suite| srtp_datagrams(codec, suite, PACKETS / 10 + PACKETS));
    let mut datagram = [0u8; STRIDE];
    let mut out = vec![0u8; MAX_TRANSMIT];
    let (mut sent, mut frames) = (0usize, 0usize);
    let mut run = |core: &mut Session, range: std::ops::Range<usize>| {
        let started = Instant::now();
        for i in range {
            let now = t0 + FRAME * i as u32;
            // Writing the datagram stands in for the socket read.
            let len = match &wire {
                None => caller_packet(codec, &payloads, i, &mut datagram),
                Some((flat, lens)) => {
                    datagram[..lens[i]].copy_from_slice(&flat[i * STRIDE..i * STRIDE + lens[i]]);
                    lens[i]
                }
            };
            core.handle_rtp(now, caller, &mut datagram[..len]);
            core.handle_agent(now, FromAgent::Media(chunks[i % 50].clone()));
            core.handle_timeout(now);
            while let Some(t) = core.poll_transmit(now, &mut out) {
                black_box(&out[..t.len]);
                sent += 1;
                core.handle_sent(&t, Ok(t.len));
            }
            while let Some(event) = core.poll_event() {
                if let Event::Agent(ToAgent::Media(frame)) = event {
                    black_box(frame);
                    frames += 1;
                }
            }
        }
        started.elapsed()
    };
    run(&mut core, 0..PACKETS / 10);
    let elapsed = run(&mut core, PACKETS / 10..PACKETS / 10 + PACKETS);
    assert!(
        sent >= PACKETS && frames >= PACKETS,
        "every 20 ms made a packet and a frame"
    );
    assert_eq!(core.stats().packets_dropped, 0, "nothing was refused");
    elapsed.as_nanos() as f64 / PACKETS as f64
}

/// ns per packet to protect, then to unprotect, 172-byte PCMU RTP packets with `suite`.
fn srtp_alone(suite: SrtpSuite) -> (f64, f64) {
    let codec = Codec::Pcmu;
    let payloads = caller_payloads(codec);
    let mut tx = SrtpContext::new(suite, &master_key(suite, 5)).expect("key length fits");
    let mut buf = [0u8; STRIDE];
    let len = caller_packet(codec, &payloads, 0, &mut buf);
    assert_eq!(len, 172);
    let mut protect = |range: std::ops::Range<usize>| {
        let started = Instant::now();
        for i in range {
            // A new sequence number each time (a repeated index would reuse keystream);
            // the payload is whatever the last round left, which costs the same.
            buf[2..4].copy_from_slice(&(i as u16).to_be_bytes());
            black_box(tx.protect_rtp(&mut buf, len).expect("room"));
        }
        started.elapsed()
    };
    protect(0..PACKETS / 10);
    let protect_ns = protect(PACKETS / 10..PACKETS / 10 + PACKETS).as_nanos() as f64;

    // Unprotect needs fresh packets (replay protection): made beforehand, opened in place.
    let (mut flat, lens) = srtp_datagrams(codec, suite, PACKETS / 10 + PACKETS);
    let mut rx = SrtpContext::new(suite, &master_key(suite, 7)).expect("key length fits");
    let mut unprotect = |range: std::ops::Range<usize>| {
        let started = Instant::now();
        for i in range {
            let got = &mut flat[i * STRIDE..i * STRIDE + lens[i]];
            let n = rx.unprotect_rtp(got).expect("authentic packet");
            assert_eq!(black_box(n), 172);
        }
        started.elapsed()
    };
    unprotect(0..PACKETS / 10);
    let unprotect_ns = unprotect(PACKETS / 10..PACKETS / 10 + PACKETS).as_nanos() as f64;
    (protect_ns / PACKETS as f64, unprotect_ns / PACKETS as f64)
}

fn main() {
    let aes_cm = Some(SrtpSuite::AesCm128HmacSha1_80);
    let gcm = Some(SrtpSuite::AeadAes128Gcm);
    let (pcmu, mulaw) = (Codec::Pcmu, AudioEncoding::Mulaw8000);
    let cases = [
        ("PCMU -> mulaw_8000", pcmu, mulaw, None),
        ("PCMA -> mulaw_8000", Codec::Pcma, mulaw, None),
        (
            "G722 -> pcm_16000",
            Codec::G722,
            AudioEncoding::Pcm16000,
            None,
        ),
        ("PCMU -> pcm_24000", pcmu, AudioEncoding::Pcm24000, None),
        ("G722 -> mulaw_8000", Codec::G722, mulaw, None),
        (
            "PCMU -> mulaw_8000, SRTP AES_CM_128_HMAC_SHA1_80",
            pcmu,
            mulaw,
            aes_cm,
        ),
        (
            "PCMU -> mulaw_8000, SRTP AEAD_AES_128_GCM",
            pcmu,
            mulaw,
            gcm,
        ),
    ];
    println!("media_session: {PACKETS} packets of 20 ms per path, one core, no sockets");
    println!(
        "{:<50} {:>12} {:>12} {:>16}",
        "codec -> agent", "in ns/pkt", "out ns/pkt", "core % per call"
    );
    for (name, codec, agent, srtp) in cases {
        let inb = inbound(codec, agent, srtp);
        let out = outbound(codec, agent, srtp);
        // Each direction handles one packet per 20 ms.
        let share = (inb + out) / FRAME.as_nanos() as f64 * 100.0;
        println!("{name:<50} {inb:>12.0} {out:>12.0} {share:>15.4}%");
    }
    println!();
    println!("session core: {PACKETS} rounds of 20 ms (a packet and a chunk each way)");
    println!(
        "{:<50} {:>12} {:>16}",
        "codec -> agent", "ns/20 ms", "core % per call"
    );
    for (name, codec, agent, srtp) in cases {
        let ns = session(codec, agent, srtp);
        let share = ns / FRAME.as_nanos() as f64 * 100.0;
        println!("{name:<50} {ns:>12.0} {share:>15.4}%");
    }
    println!();
    println!("srtp: {PACKETS} PCMU RTP packets of 172 bytes, one context each way");
    println!(
        "{:<50} {:>12} {:>12}",
        "suite", "protect ns", "unprotect ns"
    );
    for suite in [SrtpSuite::AesCm128HmacSha1_80, SrtpSuite::AeadAes128Gcm] {
        let (protect, unprotect) = srtp_alone(suite);
        println!("{:<50} {protect:>12.0} {unprotect:>12.0}", suite.name());
    }
}
