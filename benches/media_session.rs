//! Per-packet CPU cost of a call's media paths, without sockets: the same
//! `InboundPath` (RTP → agent frame) and `OutboundPath` (agent audio → RTP) the media task
//! drives, fed 20 ms packets on a virtual clock. Prints ns per packet and the share of one
//! core a call costs (both directions, 50 packets per second each way).
//!
//! Run: `cargo bench --bench media_session` (release profile; about 10 s).

use std::hint::black_box;
use std::time::{Duration, Instant};

use dialtone::call::model::AudioEncoding;
use dialtone::media::codec::{CodecKind, Encoder};
use dialtone::media::rtp::{RtpHeader, RtpPacket};
use dialtone::media::session::{InboundPath, OutboundPath, Polled, StreamParams};

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
fn caller_payloads(codec: CodecKind) -> Vec<Vec<u8>> {
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

fn inbound(codec: CodecKind, agent: AudioEncoding) -> f64 {
    let params = StreamParams::new(codec, codec.payload_type(), Some(101), 20);
    let t0 = Instant::now();
    let mut path = InboundPath::new(params, agent, t0);
    let payloads = caller_payloads(codec);
    let mut datagram = [0u8; 12 + 160];
    let mut frames = 0usize;
    let mut run = |path: &mut InboundPath, range: std::ops::Range<usize>| {
        let started = Instant::now();
        for i in range {
            let header = RtpHeader {
                marker: false,
                payload_type: codec.payload_type(),
                sequence: i as u16,
                timestamp: (i as u32).wrapping_mul(160),
                ssrc: 0x1234,
            };
            // Writing the datagram stands in for the socket read.
            let len = header.write(&payloads[i % 50], &mut datagram).unwrap_or(0);
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

fn outbound(codec: CodecKind, agent: AudioEncoding) -> f64 {
    let params = StreamParams::new(codec, codec.payload_type(), Some(101), 20);
    let t0 = Instant::now();
    let mut path = OutboundPath::new(params, agent, 0x5678, 1, 1, t0);
    let chunks = agent_chunks(agent);
    let mut sent = 0usize;
    let mut run = |path: &mut OutboundPath, range: std::ops::Range<usize>| {
        let started = Instant::now();
        for i in range {
            path.push_agent(&chunks[i % 50]);
            let now = t0 + FRAME * i as u32;
            while let Polled::Packet(p) = path.poll(now, true) {
                sent += black_box(p).len() / 172;
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

fn main() {
    let cases = [
        (
            "PCMU -> mulaw_8000 ",
            CodecKind::Pcmu,
            AudioEncoding::Mulaw8000,
        ),
        (
            "PCMA -> mulaw_8000 ",
            CodecKind::Pcma,
            AudioEncoding::Mulaw8000,
        ),
        (
            "G722 -> pcm_16000  ",
            CodecKind::G722,
            AudioEncoding::Pcm16000,
        ),
        (
            "PCMU -> pcm_24000  ",
            CodecKind::Pcmu,
            AudioEncoding::Pcm24000,
        ),
        (
            "G722 -> mulaw_8000 ",
            CodecKind::G722,
            AudioEncoding::Mulaw8000,
        ),
    ];
    println!("media_session: {PACKETS} packets of 20 ms per path, one core, no sockets");
    println!(
        "{:<20} {:>12} {:>12} {:>16}",
        "codec -> agent", "in ns/pkt", "out ns/pkt", "core % per call"
    );
    for (name, codec, agent) in cases {
        let inb = inbound(codec, agent);
        let out = outbound(codec, agent);
        // Each direction handles one packet per 20 ms.
        let share = (inb + out) / FRAME.as_nanos() as f64 * 100.0;
        println!("{name:<20} {inb:>12.0} {out:>12.0} {share:>15.4}%");
    }
}
