//! Session tests over real UDP sockets on 127.0.0.1, with a fake agent made of the two
//! channels. Timeouts are short; timing checks are loose (pacing within tolerance only).

use std::f64::consts::TAU;
use std::net::{IpAddr, Ipv4Addr};

use tokio::net::UdpSocket;
use tokio::time::timeout;

use super::*;
use crate::media::codec::G722Decoder;
use crate::media::ports::PortPool;
use crate::media::rtp::tests::XorShift;

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const MS: Duration = Duration::from_millis(1);
const TE: u8 = 101;

fn negotiated(codec: Codec, remote_rtp: SocketAddr, remote_rtcp: SocketAddr) -> Negotiated {
    let payload_type = codec.payload_type();
    Negotiated {
        media_index: 0,
        remote_rtp,
        remote_rtcp: Some(remote_rtcp),
        rtcp_mux: false,
        codec,
        payload_type,
        telephone_event: Some(TE),
        ptime: 20,
        direction: Direction::SendRecv,
        remote_hold: false,
        srtp: None,
    }
}

/// A running session with a fake caller (two sockets) and a fake agent (two channels).
struct Harness {
    rtp: UdpSocket,
    rtcp: UdpSocket,
    /// The session's RTP address.
    media: SocketAddr,
    handle: MediaHandle,
    agent_rx: mpsc::Receiver<ToAgent>,
    agent_tx: mpsc::Sender<FromAgent>,
    negotiated: Negotiated,
}

async fn peer_socket() -> UdpSocket {
    UdpSocket::bind((LOCAL, 0)).await.unwrap()
}

async fn start_with(
    codec: Codec,
    agent: AudioEncoding,
    tweak: impl FnOnce(&mut SessionConfig),
) -> Harness {
    let rtp = peer_socket().await;
    let rtcp = peer_socket().await;
    let pool = PortPool::new((46000, 46999), LOCAL);
    let socket = pool.bind().await.unwrap();
    let media = socket.local_addr().unwrap();
    let negotiated = negotiated(codec, rtp.local_addr().unwrap(), rtcp.local_addr().unwrap());
    let mut cfg = SessionConfig {
        negotiated,
        agent_encoding: agent,
        no_audio_timeout: Duration::from_secs(10),
        inactivity_timeout: Duration::from_secs(10),
        hangup_drain_cap: Duration::from_secs(3),
        ssrc: 0x5e55_1011,
        cname: "dialtone-test".into(),
        early: false,
    };
    tweak(&mut cfg);
    let negotiated = cfg.negotiated.clone();
    let (to_agent, agent_rx) = mpsc::channel(4096);
    let (agent_tx, from_agent) = mpsc::channel(64);
    let handle = spawn(
        socket,
        cfg,
        AgentLink {
            to_agent,
            from_agent,
        },
    );
    Harness {
        rtp,
        rtcp,
        media,
        handle,
        agent_rx,
        agent_tx,
        negotiated,
    }
}

async fn start(codec: Codec, agent: AudioEncoding) -> Harness {
    start_with(codec, agent, |_| {}).await
}

impl Harness {
    async fn stop(&mut self) -> (MediaOutcome, Vec<ToAgent>) {
        self.handle.commands.send(MediaCommand::Stop).await.unwrap();
        self.finish().await
    }

    /// Waits for the task to end and returns the outcome and everything the agent got.
    async fn finish(&mut self) -> (MediaOutcome, Vec<ToAgent>) {
        let outcome = timeout(Duration::from_secs(10), &mut self.handle.done)
            .await
            .expect("session ends")
            .expect("no panic");
        let mut msgs = Vec::new();
        while let Ok(m) = self.agent_rx.try_recv() {
            msgs.push(m);
        }
        (outcome, msgs)
    }

    async fn agent(&self, msg: FromAgent) {
        self.agent_tx.send(msg).await.unwrap();
    }

    async fn update(&self, n: Negotiated) {
        self.handle
            .commands
            .send(MediaCommand::Update(n))
            .await
            .unwrap();
    }
}

fn rtp_packet(pt: u8, seq: u16, ts: u32, ssrc: u32, marker: bool, payload: &[u8]) -> Vec<u8> {
    let mut buf = vec![0; FIXED_HEADER_LEN + payload.len()];
    let h = RtpHeader {
        marker,
        payload_type: pt,
        sequence: seq,
        timestamp: ts,
        ssrc,
    };
    h.write(payload, &mut buf).unwrap();
    buf
}

/// Sends one payload per 20 ms as an RTP stream.
async fn send_stream(sock: &UdpSocket, dest: SocketAddr, pt: u8, ssrc: u32, payloads: &[Vec<u8>]) {
    send_stream_from(sock, dest, pt, ssrc, 1000, payloads).await;
}

async fn send_stream_from(
    sock: &UdpSocket,
    dest: SocketAddr,
    pt: u8,
    ssrc: u32,
    first_seq: u16,
    payloads: &[Vec<u8>],
) {
    let mut tick = tokio::time::interval(20 * MS);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for (i, p) in payloads.iter().enumerate() {
        tick.tick().await;
        let seq = first_seq.wrapping_add(i as u16);
        let pkt = rtp_packet(pt, seq, 160 * u32::from(seq), ssrc, i == 0, p);
        sock.send_to(&pkt, dest).await.unwrap();
    }
}

fn tone(freq: f64, rate: u32, len: usize, from: usize) -> Vec<i16> {
    (from..from + len)
        .map(|i| (8000.0 * (TAU * freq * i as f64 / f64::from(rate)).sin()) as i16)
        .collect()
}

/// Share of the signal's energy at `freq` (Goertzel); ~1 for a pure tone at `freq`.
fn tone_share(samples: &[i16], rate: u32, freq: f64) -> f64 {
    let n = samples.len() as f64;
    let w = TAU * freq / f64::from(rate);
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0, 0.0);
    let mut energy = 0.0;
    for &x in samples {
        let x = f64::from(x);
        energy += x * x;
        let s0 = x + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
    if energy == 0.0 {
        return 0.0;
    }
    power / (energy * n / 2.0)
}

/// Encoded 20 ms payloads of a tone for `codec`.
fn tone_payloads(codec: Codec, freq: f64, frames: usize) -> Vec<Vec<u8>> {
    let mut enc = Encoder::new(codec);
    let n = codec.pcm_samples(20);
    (0..frames)
        .map(|f| {
            let pcm = tone(freq, codec.sample_rate(), n, f * n);
            let mut out = vec![0; 160];
            assert_eq!(enc.encode(&pcm, &mut out), 160);
            out
        })
        .collect()
}

fn media_frames(msgs: &[ToAgent]) -> Vec<Bytes> {
    msgs.iter()
        .filter_map(|m| match m {
            ToAgent::Media(b) => Some(b.clone()),
            _ => None,
        })
        .collect()
}

fn agent_pcm(encoding: AudioEncoding, frame: &[u8]) -> Vec<i16> {
    match encoding {
        AudioEncoding::Mulaw8000 => frame.iter().map(|&b| g711::ulaw_to_linear(b)).collect(),
        _ => frame
            .chunks_exact(2)
            .map(|c| i16::from_le_bytes([c[0], c[1]]))
            .collect(),
    }
}

fn is_silent(pcm: &[i16]) -> bool {
    pcm.iter().all(|s| s.abs() <= 8)
}

/// Sends a tone from the caller and returns the agent's frames (all of them).
async fn caller_tone(
    codec: Codec,
    agent: AudioEncoding,
    freq: f64,
    frames: usize,
) -> (Vec<Bytes>, Vec<Vec<u8>>, MediaOutcome) {
    let mut h = start(codec, agent).await;
    let kind = StreamParams::from_negotiated(&h.negotiated).codec;
    let payloads = tone_payloads(kind, freq, frames);
    send_stream(&h.rtp, h.media, kind.payload_type(), 77, &payloads).await;
    tokio::time::sleep(150 * MS).await;
    let (outcome, msgs) = h.stop().await;
    assert!(matches!(msgs.last(), Some(ToAgent::Stop)));
    (media_frames(&msgs), payloads, outcome)
}

/// The non-silent audio the agent received, as PCM.
fn voiced(encoding: AudioEncoding, frames: &[Bytes]) -> Vec<i16> {
    frames
        .iter()
        .map(|f| agent_pcm(encoding, f))
        .filter(|p| !is_silent(p))
        .flatten()
        .collect()
}

#[tokio::test]
async fn pcmu_to_mulaw_passes_bytes_through_unchanged() {
    let (frames, sent, outcome) =
        caller_tone(Codec::Pcmu, AudioEncoding::Mulaw8000, 1000.0, 25).await;
    assert!(frames.iter().all(|f| f.len() == 160));
    let voiced: Vec<&Bytes> = frames
        .iter()
        .filter(|f| f.iter().any(|&b| b != g711::ULAW_SILENCE))
        .collect();
    // Every voiced frame is one of the sent payloads, byte for byte and in order.
    let mut next = 0;
    for f in &voiced {
        let at = sent[next..]
            .iter()
            .position(|p| p[..] == f[..])
            .expect("frame is a sent payload");
        next += at + 1;
    }
    assert!(voiced.len() >= 20, "{} of 25 frames arrived", voiced.len());
    assert_eq!(outcome.reason, None);
    assert_eq!(outcome.stats.packets_in, 25);
    assert_eq!(outcome.stats.packets_dropped, 0);
}

#[tokio::test]
async fn pcma_to_mulaw_transcodes() {
    let (frames, _, _) = caller_tone(Codec::Pcma, AudioEncoding::Mulaw8000, 1000.0, 25).await;
    assert!(frames.iter().all(|f| f.len() == 160));
    let pcm = voiced(AudioEncoding::Mulaw8000, &frames);
    assert!(pcm.len() >= 20 * 160);
    assert!(tone_share(&pcm, 8000, 1000.0) > 0.9);
}

#[tokio::test]
async fn g722_to_pcm16000_keeps_wideband() {
    for freq in [1000.0, 6000.0] {
        let (frames, _, _) = caller_tone(Codec::G722, AudioEncoding::Pcm16000, freq, 25).await;
        assert!(frames.iter().all(|f| f.len() == 640));
        let pcm = voiced(AudioEncoding::Pcm16000, &frames);
        assert!(pcm.len() >= 20 * 320);
        // Skip the ADPCM's first frames while its step sizes adapt.
        let share = tone_share(&pcm[3 * 320..], 16000, freq);
        // 6 kHz is above narrowband's 4 kHz limit: it survives only if kept wideband.
        assert!(share > 0.6, "{freq} Hz: {share}");
    }
}

#[tokio::test]
async fn pcmu_to_pcm24000_resamples() {
    let (frames, _, _) = caller_tone(Codec::Pcmu, AudioEncoding::Pcm24000, 1000.0, 25).await;
    assert!(frames.iter().all(|f| f.len() == 960));
    let pcm = voiced(AudioEncoding::Pcm24000, &frames);
    assert!(pcm.len() >= 20 * 480);
    assert!(tone_share(&pcm[480..], 24000, 1000.0) > 0.9);
}

/// An RTP packet the caller received, with its arrival time.
#[derive(Debug, Clone)]
struct Got {
    at: Instant,
    pt: u8,
    seq: u16,
    ts: u32,
    marker: bool,
    ssrc: u32,
    payload: Vec<u8>,
}

/// Collects RTP (RTCP skipped) arriving at `sock` for `dur`.
async fn collect_rtp(sock: &UdpSocket, dur: Duration) -> Vec<Got> {
    let end = tokio::time::Instant::now() + dur;
    let mut buf = [0u8; 2048];
    let mut out = Vec::new();
    while let Ok(r) = tokio::time::timeout_at(end, sock.recv_from(&mut buf)).await {
        let (n, _) = r.unwrap();
        if is_rtcp(&buf[..n]) {
            continue;
        }
        let p = RtpPacket::parse(&buf[..n]).unwrap();
        out.push(Got {
            at: Instant::now(),
            pt: p.payload_type(),
            seq: p.sequence(),
            ts: p.timestamp(),
            marker: p.marker(),
            ssrc: p.ssrc(),
            payload: p.payload().to_vec(),
        });
    }
    out
}

/// Asserts consecutive sequence numbers and timestamps +160 per packet.
fn assert_continuous(pkts: &[Got]) {
    for w in pkts.windows(2) {
        assert_eq!(
            w[1].seq,
            w[0].seq.wrapping_add(1),
            "{:?}",
            (w[0].seq, w[1].seq)
        );
        assert_eq!(w[1].ts, w[0].ts.wrapping_add(160));
    }
}

fn mulaw(pcm: &[i16]) -> Vec<u8> {
    pcm.iter().map(|&s| g711::linear_to_ulaw(s)).collect()
}

#[tokio::test]
async fn irregular_agent_audio_is_reframed_paced_and_marks_follow_playout() {
    let h = start(Codec::Pcmu, AudioEncoding::Mulaw8000).await;
    // Let the stream start with silence.
    tokio::time::sleep(50 * MS).await;
    let rx = collect_rtp(&h.rtp, 2700 * MS);
    let t0 = Instant::now();
    let mut speech = mulaw(&tone(1000.0, 8000, 320 + 16000 + 1, 0));
    speech[16320] = g711::linear_to_ulaw(5000); // the tone is at a zero crossing there
    h.agent(FromAgent::Media(speech[..320].to_vec())).await; // 40 ms
    h.agent(FromAgent::Mark("a".into())).await;
    h.agent(FromAgent::Media(speech[320..16320].to_vec())).await; // 2 s
    h.agent(FromAgent::Mark("b".into())).await;
    h.agent(FromAgent::Media(speech[16320..].to_vec())).await; // 1 sample
    h.agent(FromAgent::Mark("c".into())).await;
    let mut marks = Vec::new();
    let mut agent_rx = h.agent_rx;
    let pkts = {
        let collect_marks = async {
            while marks.len() < 3 {
                match agent_rx.recv().await {
                    Some(ToAgent::MarkPlayed(m)) => marks.push((m, t0.elapsed())),
                    Some(_) => {}
                    None => break,
                }
            }
        };
        let (pkts, ()) = tokio::join!(rx, collect_marks);
        pkts
    };
    // Marks in order, each only after the audio before it played.
    let names: Vec<&str> = marks.iter().map(|(m, _)| m.as_str()).collect();
    assert_eq!(names, ["a", "b", "c"]);
    // 40 ms = two frames; the mark goes when the second is sent, 20-40 ms after the push.
    assert!(marks[0].1 >= 15 * MS, "{:?}", marks[0].1);
    assert!(marks[1].1 >= 1900 * MS, "{:?}", marks[1].1);
    assert!(marks[1].1 - marks[0].1 >= 1900 * MS);

    assert!(pkts.len() > 110, "{} packets", pkts.len());
    assert!(pkts.iter().all(|p| p.pt == 0 && p.payload.len() == 160));
    assert!(pkts.iter().all(|p| p.ssrc == 0x5e55_1011));
    assert_continuous(&pkts);
    // Silence fills the gaps; a marker starts each talk-spurt and nothing else.
    let voiced: Vec<bool> = pkts
        .iter()
        .map(|p| p.payload.iter().any(|&b| b != g711::ULAW_SILENCE))
        .collect();
    assert!(!voiced[0] && !voiced[voiced.len() - 1]);
    assert_eq!(voiced.iter().filter(|&&v| v).count(), 103);
    for (i, p) in pkts.iter().enumerate().skip(1) {
        let spurt_start = voiced[i] && !voiced[i - 1];
        assert_eq!(p.marker, spurt_start, "packet {i}");
    }
    // Paced at 20 ms (generous tolerance).
    let span = pkts.last().unwrap().at - pkts[0].at;
    let nominal = 20 * MS * (pkts.len() as u32 - 1);
    assert!(
        span > nominal * 8 / 10 && span < nominal * 12 / 10,
        "{span:?} vs {nominal:?}"
    );

    h.handle.commands.send(MediaCommand::Stop).await.unwrap();
    let outcome = h.handle.done.await.unwrap();
    assert_eq!(outcome.reason, None);
}

#[tokio::test]
async fn g722_out_from_pcm16000_in_odd_chunks() {
    let mut h = start(Codec::G722, AudioEncoding::Pcm16000).await;
    let rx = collect_rtp(&h.rtp, 900 * MS);
    let pcm = tone(1000.0, 16000, 16000 / 2, 0); // 500 ms
    let bytes: Vec<u8> = pcm.iter().flat_map(|s| s.to_le_bytes()).collect();
    // 40 ms, then an odd split through a sample, then the rest, then one sample.
    let cuts = [1280, 1291, bytes.len() - 2, bytes.len()];
    let mut from = 0;
    for to in cuts {
        h.agent(FromAgent::Media(bytes[from..to].to_vec())).await;
        from = to;
    }
    let pkts = rx.await;
    assert!(pkts.iter().all(|p| p.pt == 9 && p.payload.len() == 160));
    assert_continuous(&pkts);
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
    let (outcome, _) = h.stop().await;
    assert_eq!(outcome.reason, None);
}

#[tokio::test]
async fn clear_drops_the_queue_and_returns_marks_at_once() {
    let mut h = start(Codec::Pcmu, AudioEncoding::Mulaw8000).await;
    let speech = mulaw(&tone(1000.0, 8000, 16000, 0)); // 2 s
    h.agent(FromAgent::Media(speech)).await;
    h.agent(FromAgent::Mark("m".into())).await;
    tokio::time::sleep(100 * MS).await;
    let cleared_at = Instant::now();
    h.agent(FromAgent::Clear).await;
    let mark = timeout(Duration::from_secs(1), async {
        loop {
            if let Some(ToAgent::MarkPlayed(m)) = h.agent_rx.recv().await {
                return m;
            }
        }
    })
    .await
    .expect("mark returned at once");
    assert_eq!(mark, "m");
    assert!(cleared_at.elapsed() < 500 * MS);
    // What follows is silence.
    let later = collect_rtp(&h.rtp, 300 * MS).await;
    let late: Vec<&Got> = later
        .iter()
        .filter(|p| p.at > cleared_at + 60 * MS)
        .collect();
    assert!(late.len() >= 8);
    assert!(late
        .iter()
        .all(|p| p.payload.iter().all(|&b| b == g711::ULAW_SILENCE)));
    h.stop().await;
}

#[tokio::test]
async fn symmetric_rtp_latches_first_source_and_ignores_others() {
    // The SDP points at a decoy; the caller's packets actually come from elsewhere (NAT).
    let decoy = peer_socket().await;
    let decoy_addr = decoy.local_addr().unwrap();
    let mut h = start_with(Codec::Pcmu, AudioEncoding::Mulaw8000, |c| {
        c.negotiated.remote_rtp = decoy_addr;
    })
    .await;
    // Before any caller packet we send to the SDP address.
    let early = collect_rtp(&decoy, 100 * MS).await;
    assert!(!early.is_empty());

    let real = &h.rtp;
    let intruder = peer_socket().await;
    let payloads = tone_payloads(Codec::Pcmu, 1000.0, 10);
    send_stream(real, h.media, 0, 1, &payloads).await;
    let replies = collect_rtp(real, 100 * MS).await;
    assert!(replies.len() >= 3, "replies go to the actual source");
    send_stream_from(&intruder, h.media, 0, 2, 5000, &payloads).await;
    let intruder_got = collect_rtp(&intruder, 60 * MS).await;
    assert!(intruder_got.is_empty());
    // The decoy hears nothing once we latched (allow the packets in flight at latching).
    let decoy_late = collect_rtp(&decoy, 100 * MS).await;
    assert!(decoy_late.len() <= 1, "{}", decoy_late.len());

    let (outcome, _) = h.stop().await;
    assert_eq!(outcome.stats.packets_in, 10);
    assert_eq!(outcome.stats.packets_dropped, 10);
}

#[tokio::test]
async fn garbage_is_dropped_without_harm() {
    let mut h = start(Codec::Pcmu, AudioEncoding::Mulaw8000).await;
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
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    for _ in 0..300 {
        let len = (rng.next() % 300) as usize;
        hostile.push((0..len).map(|_| rng.next() as u8).collect());
    }
    for d in &hostile {
        h.rtp.send_to(d, h.media).await.unwrap();
        h.rtp
            .send_to(d, SocketAddr::new(LOCAL, h.media.port() + 1))
            .await
            .unwrap();
    }
    // Still alive and working: a real packet stream goes through.
    send_stream(
        &h.rtp,
        h.media,
        0,
        4242,
        &tone_payloads(Codec::Pcmu, 1000.0, 5),
    )
    .await;
    tokio::time::sleep(100 * MS).await;
    let (outcome, msgs) = h.stop().await;
    assert_eq!(outcome.reason, None);
    assert!(outcome.stats.packets_dropped >= 2 * fixed as u64);
    assert!(!media_frames(&msgs).is_empty());
}

fn event(digit: u8, end: bool, duration: u16) -> Vec<u8> {
    vec![
        digit,
        if end { 0x80 | 10 } else { 10 },
        (duration >> 8) as u8,
        duration as u8,
    ]
}

#[tokio::test]
async fn dtmf_in_is_reported_once_per_press() {
    let mut h = start(Codec::Pcmu, AudioEncoding::Mulaw8000).await;
    let mut seq = 100u16;
    for (digit, ts) in [(5u8, 16000u32), (11, 32000)] {
        let mut pkts = vec![rtp_packet(TE, seq, ts, 3, true, &event(digit, false, 160))];
        for d in [320, 480, 640] {
            seq += 1;
            pkts.push(rtp_packet(TE, seq, ts, 3, false, &event(digit, false, d)));
        }
        for _ in 0..3 {
            seq += 1;
            pkts.push(rtp_packet(TE, seq, ts, 3, false, &event(digit, true, 800)));
        }
        seq += 1;
        for p in pkts {
            h.rtp.send_to(&p, h.media).await.unwrap();
            tokio::time::sleep(5 * MS).await;
        }
    }
    tokio::time::sleep(50 * MS).await;
    let (outcome, msgs) = h.stop().await;
    let digits: Vec<char> = msgs
        .iter()
        .filter_map(|m| match m {
            ToAgent::Dtmf(d) => Some(*d),
            _ => None,
        })
        .collect();
    assert_eq!(digits, ['5', '#']);
    assert_eq!(outcome.stats.dtmf_in, 2);
}

#[tokio::test]
async fn send_dtmf_emits_telephone_events_with_the_negotiated_type() {
    let mut h = start(Codec::Pcmu, AudioEncoding::Mulaw8000).await;
    h.agent(FromAgent::SendDtmf("1#".into())).await;
    let pkts = collect_rtp(&h.rtp, 600 * MS).await;
    let events: Vec<&Got> = pkts.iter().filter(|p| p.pt == TE).collect();
    assert!(events.len() >= 10, "{}", events.len());
    assert_continuous_seq(&pkts);
    let first = events[0];
    assert!(first.marker);
    assert_eq!(first.payload[0], 1);
    let hash: Vec<&&Got> = events.iter().filter(|p| p.payload[0] == 11).collect();
    assert!(hash[0].marker);
    // Every packet of one digit carries the digit's start timestamp; three end packets.
    assert!(hash.iter().all(|p| p.ts == hash[0].ts));
    assert_eq!(hash.iter().filter(|p| p.payload[1] & 0x80 != 0).count(), 3);
    h.stop().await;

    // Without a negotiated telephone-event type the request is ignored.
    let mut h = start_with(Codec::Pcmu, AudioEncoding::Mulaw8000, |c| {
        c.negotiated.telephone_event = None;
    })
    .await;
    h.agent(FromAgent::SendDtmf("1".into())).await;
    let pkts = collect_rtp(&h.rtp, 200 * MS).await;
    assert!(!pkts.is_empty() && pkts.iter().all(|p| p.pt == 0));
    h.stop().await;
}

fn assert_continuous_seq(pkts: &[Got]) {
    for w in pkts.windows(2) {
        assert_eq!(w[1].seq, w[0].seq.wrapping_add(1));
    }
}

#[tokio::test]
async fn hold_sends_nothing_and_never_times_out() {
    let mut h = start_with(Codec::Pcmu, AudioEncoding::Mulaw8000, |c| {
        c.inactivity_timeout = 200 * MS;
        c.no_audio_timeout = 200 * MS;
    })
    .await;
    send_stream(
        &h.rtp,
        h.media,
        0,
        8,
        &tone_payloads(Codec::Pcmu, 1000.0, 3),
    )
    .await;
    let before = collect_rtp(&h.rtp, 60 * MS).await;
    let mut held = h.negotiated.clone();
    held.direction = Direction::RecvOnly;
    h.update(held).await;
    tokio::time::sleep(60 * MS).await;
    let during = collect_rtp(&h.rtp, 600 * MS).await;
    assert!(during.is_empty(), "{} packets sent on hold", during.len());
    assert!(!h.handle.done.is_finished(), "hold never hangs up");

    // Resume: sequence numbers continue without a gap, the timestamp jumps, marker set.
    h.update(h.negotiated.clone()).await;
    let after = collect_rtp(&h.rtp, 100 * MS).await;
    assert!(!after.is_empty());
    let last = before.last().unwrap();
    let first = &after[0];
    assert_eq!(first.seq, last.seq.wrapping_add(1));
    assert!(first.ts.wrapping_sub(last.ts) >= 8 * 600);
    assert!(first.marker);
    // Back off hold, the inactivity timeout applies again (from the resume).
    let (outcome, _) = h.finish().await;
    assert_eq!(outcome.reason, Some(DisconnectionReason::Inactivity));
}

#[tokio::test]
async fn early_media_reaches_the_agent_and_waits_for_the_answer() {
    let mut h = start_with(Codec::Pcmu, AudioEncoding::Mulaw8000, |c| {
        c.early = true;
        c.no_audio_timeout = 200 * MS;
        c.inactivity_timeout = 300 * MS;
    })
    .await;
    // Before the answer: the agent's audio is not sent, and silence never times out.
    h.agent(FromAgent::Media(mulaw(&tone(1000.0, 8000, 4000, 0))))
        .await;
    let early_out = collect_rtp(&h.rtp, 400 * MS).await;
    assert!(
        early_out.is_empty(),
        "{} packets sent before the answer",
        early_out.len()
    );
    assert!(
        !h.handle.done.is_finished(),
        "no audio timeout before the answer"
    );
    // The far end's ringback reaches the agent.
    let ringback = tone_payloads(Codec::Pcmu, 440.0, 15);
    send_stream(&h.rtp, h.media, 0, 0x440, &ringback).await;
    tokio::time::sleep(100 * MS).await;
    // The answer: our stream starts, and a new source (another SSRC) is taken up.
    h.handle
        .commands
        .send(MediaCommand::Answered(h.negotiated.clone()))
        .await
        .unwrap();
    let answered = tone_payloads(Codec::Pcmu, 1000.0, 15);
    send_stream_from(&h.rtp, h.media, 0, 0x1000, 7000, &answered).await;
    let sent = collect_rtp(&h.rtp, 100 * MS).await;
    assert!(!sent.is_empty(), "nothing sent after the answer");
    // Then the caller goes quiet: the inactivity timeout applies again.
    let (outcome, msgs) = h.finish().await;
    assert_eq!(outcome.reason, Some(DisconnectionReason::Inactivity));
    let at = msgs
        .iter()
        .position(|m| matches!(m, ToAgent::Answered))
        .expect("the agent is told of the answer");
    assert_eq!(
        msgs.iter()
            .filter(|m| matches!(m, ToAgent::Answered))
            .count(),
        1
    );
    let before = voiced(AudioEncoding::Mulaw8000, &media_frames(&msgs[..at]));
    let after = voiced(AudioEncoding::Mulaw8000, &media_frames(&msgs[at..]));
    assert!(
        tone_share(&before, 8000, 440.0) > 0.8,
        "ringback before the answer"
    );
    assert!(
        tone_share(&after, 8000, 1000.0) > 0.8,
        "the answered voice after it"
    );
    assert!(before.len() >= 8000 / 50 * 10 && after.len() >= 8000 / 50 * 10);
}

#[tokio::test]
async fn stalls_and_agent_overflow_are_counted_not_silent() {
    let mut h = start(Codec::Pcmu, AudioEncoding::Mulaw8000).await;
    // 62 s of agent audio at once: 2 s of it cannot fit the 60 s queue.
    h.agent(FromAgent::Media(vec![0x55; 8000 * 62])).await;
    send_stream(
        &h.rtp,
        h.media,
        0,
        8,
        &tone_payloads(Codec::Pcmu, 1000.0, 5),
    )
    .await;
    // This test's runtime has one thread: blocking it stalls the media task for 300 ms,
    // 15 slots, of which it may catch up 3 in a burst.
    std::thread::sleep(300 * MS);
    tokio::time::sleep(100 * MS).await;
    let (outcome, _) = h.stop().await;
    let stats = outcome.stats;
    assert!(stats.clock_slips_in >= 10, "{stats:?}");
    assert!(stats.clock_slips_out >= 10, "{stats:?}");
    assert!(
        (1800..=2000).contains(&stats.agent_overflow_ms),
        "{stats:?}"
    );
}

#[tokio::test]
async fn no_rtp_at_all_ends_with_no_audio_received() {
    let mut h = start_with(Codec::Pcmu, AudioEncoding::Mulaw8000, |c| {
        c.no_audio_timeout = 250 * MS;
    })
    .await;
    let t0 = Instant::now();
    let (outcome, msgs) = h.finish().await;
    assert_eq!(
        outcome.reason,
        Some(DisconnectionReason::ErrorNoAudioReceived)
    );
    assert!(t0.elapsed() >= 200 * MS);
    assert!(matches!(msgs.last(), Some(ToAgent::Stop)));
    assert!(media_frames(&msgs).is_empty());
}

#[tokio::test]
async fn rtp_stopping_ends_with_inactivity() {
    let mut h = start_with(Codec::Pcmu, AudioEncoding::Mulaw8000, |c| {
        c.inactivity_timeout = 300 * MS;
        c.no_audio_timeout = 300 * MS;
    })
    .await;
    send_stream(
        &h.rtp,
        h.media,
        0,
        8,
        &tone_payloads(Codec::Pcmu, 1000.0, 10),
    )
    .await;
    let stopped = Instant::now();
    let (outcome, msgs) = h.finish().await;
    assert_eq!(outcome.reason, Some(DisconnectionReason::Inactivity));
    assert!(stopped.elapsed() >= 250 * MS);
    assert!(matches!(msgs.last(), Some(ToAgent::Stop)));
    // The agent's timeline kept going with silence after the caller went quiet.
    assert!(media_frames(&msgs).len() > 15);
}

#[tokio::test]
async fn stop_sends_stop_to_agent_and_rtcp_bye_to_caller() {
    let mut h = start(Codec::Pcmu, AudioEncoding::Mulaw8000).await;
    send_stream(
        &h.rtp,
        h.media,
        0,
        0xabc,
        &tone_payloads(Codec::Pcmu, 1000.0, 5),
    )
    .await;
    // The caller's SR on our RTCP port, and one multiplexed on the RTP port.
    let mut sr = [0u8; 64];
    let mut w = RtcpWriter::new(&mut sr);
    let info = SenderInfo {
        ntp: 0x1234_5678_0000_0000,
        ..SenderInfo::default()
    };
    w.sender_report(0xabc, &info, &[]).unwrap();
    let n = w.len();
    let rtcp_port = SocketAddr::new(LOCAL, h.media.port() + 1);
    h.rtcp.send_to(&sr[..n], rtcp_port).await.unwrap();
    tokio::time::sleep(20 * MS).await;
    h.rtp.send_to(&sr[..n], h.media).await.unwrap();
    tokio::time::sleep(50 * MS).await;

    let (outcome, msgs) = h.stop().await;
    // The BYE went to the caller's RTCP address (from the SDP), after any reports.
    let mut buf = [0u8; 512];
    let kinds = loop {
        let (len, _) = timeout(Duration::from_secs(1), h.rtcp.recv_from(&mut buf))
            .await
            .expect("RTCP at the end")
            .unwrap();
        let kinds: Vec<u8> = parse_compound(&buf[..len])
            .unwrap()
            .map(|p| match p {
                RtcpPacket::SenderReport { blocks, .. } => {
                    assert_eq!(blocks.count(), 1, "one block about the caller");
                    200
                }
                RtcpPacket::ReceiverReport { .. } => 201,
                RtcpPacket::SourceDescription(_) => 202,
                RtcpPacket::Bye { .. } => 203,
                RtcpPacket::Other { packet_type, .. } => packet_type,
            })
            .collect();
        if kinds.contains(&203) {
            break kinds;
        }
    };
    assert_eq!(kinds, [200, 202, 203]);
    assert_eq!(outcome.reason, None);
    assert!(matches!(msgs.last(), Some(ToAgent::Stop)));
    assert_eq!(outcome.stats.rtcp_in, 2);
    assert!(outcome.stats.rtcp_out >= 1);
}

#[tokio::test]
async fn hangup_plays_out_queued_audio_then_ends() {
    let mut h = start(Codec::Pcmu, AudioEncoding::Mulaw8000).await;
    let caller = std::mem::replace(&mut h.rtp, peer_socket().await);
    let rx = collect_rtp(&caller, 900 * MS);
    let t0 = Instant::now();
    h.agent(FromAgent::Media(mulaw(&tone(1000.0, 8000, 4000, 0))))
        .await; // 500 ms
    h.agent(FromAgent::Hangup).await;
    let (pkts, (outcome, msgs)) = tokio::join!(rx, h.finish());
    assert_eq!(outcome.reason, Some(DisconnectionReason::AgentHangup));
    assert!(t0.elapsed() >= 450 * MS);
    let voiced = pkts
        .iter()
        .filter(|p| p.payload.iter().any(|&b| b != g711::ULAW_SILENCE))
        .count();
    assert_eq!(voiced, 25);
    assert!(matches!(msgs.last(), Some(ToAgent::Stop)));

    // With nothing queued, hang-up is immediate, and the drain is capped.
    let mut h = start_with(Codec::Pcmu, AudioEncoding::Mulaw8000, |c| {
        c.hangup_drain_cap = 200 * MS;
    })
    .await;
    h.agent(FromAgent::Media(mulaw(&tone(1000.0, 8000, 80000, 0))))
        .await; // 10 s
    let t0 = Instant::now();
    h.agent(FromAgent::Hangup).await;
    let (outcome, _) = h.finish().await;
    assert_eq!(outcome.reason, Some(DisconnectionReason::AgentHangup));
    assert!(t0.elapsed() < 2 * Duration::from_secs(1));
}

#[tokio::test]
async fn agent_failures_end_the_session() {
    let mut h = start(Codec::Pcmu, AudioEncoding::Mulaw8000).await;
    h.agent(FromAgent::Failed(
        DisconnectionReason::ErrorLlmWebsocketRuntime,
    ))
    .await;
    let (outcome, _) = h.finish().await;
    assert_eq!(
        outcome.reason,
        Some(DisconnectionReason::ErrorLlmWebsocketRuntime)
    );

    let mut h = start(Codec::Pcmu, AudioEncoding::Mulaw8000).await;
    drop(std::mem::replace(&mut h.agent_tx, mpsc::channel(1).0));
    let (outcome, _) = h.finish().await;
    assert_eq!(
        outcome.reason,
        Some(DisconnectionReason::ErrorLlmWebsocketLostConnection)
    );

    // The bridge dropping its receiver is noticed at the next message for it.
    let mut h = start(Codec::Pcmu, AudioEncoding::Mulaw8000).await;
    drop(std::mem::replace(&mut h.agent_rx, mpsc::channel(1).1));
    send_stream(
        &h.rtp,
        h.media,
        0,
        1,
        &tone_payloads(Codec::Pcmu, 1000.0, 5),
    )
    .await;
    let (outcome, _) = h.finish().await;
    assert_eq!(
        outcome.reason,
        Some(DisconnectionReason::ErrorLlmWebsocketLostConnection)
    );
}

#[tokio::test]
async fn port_returns_to_the_pool_when_the_session_ends() {
    let pool = PortPool::new((47310, 47311), LOCAL);
    let socket = pool.bind().await.expect("test port pair free");
    assert!(pool.bind().await.is_err());
    let peer = peer_socket().await;
    let addr = peer.local_addr().unwrap();
    let (to_agent, _agent_rx) = mpsc::channel(64);
    let (_agent_tx, from_agent) = mpsc::channel(8);
    let handle = spawn(
        socket,
        SessionConfig {
            negotiated: negotiated(Codec::Pcmu, addr, addr),
            agent_encoding: AudioEncoding::Mulaw8000,
            no_audio_timeout: Duration::from_secs(5),
            inactivity_timeout: Duration::from_secs(5),
            hangup_drain_cap: Duration::from_secs(1),
            ssrc: 1,
            cname: "t".into(),
            early: false,
        },
        AgentLink {
            to_agent,
            from_agent,
        },
    );
    handle.commands.send(MediaCommand::Stop).await.unwrap();
    handle.done.await.unwrap();
    assert_eq!(pool.available(), 1);
    let again = pool.bind().await.unwrap();
    assert_eq!(again.port(), 47310);
}

#[tokio::test]
async fn reinvite_switches_codec_keeping_our_stream_continuous() {
    let mut h = start(Codec::Pcmu, AudioEncoding::Mulaw8000).await;
    h.agent(FromAgent::Media(mulaw(&tone(1000.0, 8000, 8000, 0))))
        .await; // 1 s
    h.agent(FromAgent::Mark("queued".into())).await;
    let before = collect_rtp(&h.rtp, 200 * MS).await;
    let mut g722 = negotiated(
        Codec::G722,
        h.negotiated.remote_rtp,
        h.negotiated.remote_rtcp.unwrap(),
    );
    g722.telephone_event = Some(TE);
    h.update(g722).await;
    // The queued audio was for the old rate: dropped, its mark returned at once.
    let mark = timeout(Duration::from_secs(1), async {
        loop {
            if let Some(ToAgent::MarkPlayed(m)) = h.agent_rx.recv().await {
                return m;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(mark, "queued");
    h.agent(FromAgent::Media(mulaw(&tone(1000.0, 8000, 1600, 0))))
        .await;
    let after = collect_rtp(&h.rtp, 300 * MS).await;
    let all: Vec<Got> = before.iter().chain(&after).cloned().collect();
    assert_continuous(&all);
    let switch = all.iter().position(|p| p.pt == 9).expect("G.722 packets");
    assert!(all[..switch].iter().all(|p| p.pt == 0));
    assert!(all[switch..].iter().all(|p| p.pt == 9));
    // The caller now sends G.722; the agent hears it as μ-law.
    while h.agent_rx.try_recv().is_ok() {}
    let payloads = tone_payloads(Codec::G722, 1000.0, 20);
    send_stream(&h.rtp, h.media, 9, 99, &payloads).await;
    tokio::time::sleep(100 * MS).await;
    let (outcome, msgs) = h.stop().await;
    let pcm = voiced(AudioEncoding::Mulaw8000, &media_frames(&msgs));
    assert!(pcm.len() >= 15 * 160);
    assert!(tone_share(&pcm[3 * 160..], 8000, 1000.0) > 0.8);
    assert_eq!(outcome.stats.packets_in, 20);
}

// ---- sans-IO paths ----

#[test]
fn drop_causes_index_their_metric_handles() {
    for (i, cause) in DropCause::ALL.iter().enumerate() {
        assert_eq!(*cause as usize, i);
    }
}

fn params(codec: Codec) -> StreamParams {
    StreamParams::new(codec, codec.payload_type(), Some(TE), 20)
}

#[test]
fn inbound_conceals_a_lost_packet_with_silence_of_its_length() {
    let t0 = Instant::now();
    let mut inb = InboundPath::new(params(Codec::Pcmu), AudioEncoding::Mulaw8000, t0);
    for seq in [0u16, 1, 3, 4] {
        let pkt = rtp_packet(0, seq, 160 * u32::from(seq), 5, false, &[seq as u8; 160]);
        let p = RtpPacket::parse(&pkt).unwrap();
        assert_eq!(inb.on_packet(&p, t0), Ok(Received::Audio));
    }
    let mut frames = Vec::new();
    for _ in 0..6 {
        inb.tick();
        while let Some((f, arrival)) = inb.pop_frame() {
            frames.push((f[0], f.len(), arrival.is_some()));
        }
    }
    let silence = g711::ULAW_SILENCE;
    assert_eq!(
        frames,
        [
            (0, 160, true),
            (1, 160, true),
            (silence, 160, false),
            (3, 160, true),
            (4, 160, true),
            (silence, 160, false),
        ]
    );
    assert_eq!(inb.concealed_frames(), 2);
    assert_eq!(inb.packets_lost(), 1);
}

#[test]
fn inbound_reframes_30ms_packets_into_20ms_frames() {
    let t0 = Instant::now();
    let mut inb = InboundPath::new(params(Codec::Pcma), AudioEncoding::Pcm16000, t0);
    for seq in 0u16..4 {
        let pcm = tone(1000.0, 8000, 240, 240 * seq as usize);
        let mut payload = vec![0; 240];
        g711::encode_alaw(&pcm, &mut payload);
        let pkt = rtp_packet(8, seq, 240 * u32::from(seq), 5, false, &payload);
        inb.on_packet(&RtpPacket::parse(&pkt).unwrap(), t0).unwrap();
    }
    let mut frames = 0;
    for _ in 0..4 {
        inb.tick();
        while let Some((f, _)) = inb.pop_frame() {
            assert_eq!(f.len(), 640);
            frames += 1;
        }
    }
    assert_eq!(inb.packet_interval(), 30 * MS);
    assert_eq!(frames, 6, "120 ms of audio in 20 ms frames");
}

#[test]
fn outbound_pcm_chunks_split_mid_sample_lose_nothing() {
    let t0 = Instant::now();
    let mut out = OutboundPath::new(params(Codec::G722), AudioEncoding::Pcm16000, 7, 0, 0, t0);
    let pcm: Vec<i16> = (0..320).map(|i| i * 37).collect();
    let bytes: Vec<u8> = pcm.iter().flat_map(|s| s.to_le_bytes()).collect();
    for chunk in bytes.chunks(3) {
        out.push_agent(chunk);
    }
    assert_eq!(out.playout.queued_samples(), 320);
    assert!(matches!(out.poll(t0, true), Polled::Packet(p) if p.len() == 172));
    assert!(out.is_drained());
    assert_eq!(out.poll(t0, true), Polled::Idle);
}

/// SDES keys as the engine would hand them over: ours protect what the session sends,
/// the caller's unprotect what it receives.
fn srtp_keys(suite: crate::sdp::SrtpSuite) -> crate::sdp::SrtpKeys {
    crate::sdp::SrtpKeys {
        suite,
        local_key_salt: (0..suite.key_salt_len() as u8).collect(),
        remote_key_salt: (100..100 + suite.key_salt_len() as u8).collect(),
    }
}

#[tokio::test]
async fn srtp_both_ways_with_forgeries_and_replays_dropped_and_counted() {
    use crate::media::srtp::{SrtpContext, MAX_OVERHEAD};
    use crate::sdp::SrtpSuite;
    let keys = srtp_keys(SrtpSuite::AesCm128HmacSha1_80);
    let mut h = start_with(Codec::Pcmu, AudioEncoding::Mulaw8000, |cfg| {
        cfg.negotiated.srtp = Some(keys.clone());
    })
    .await;
    // The caller's side: it protects with its key and unprotects with ours.
    let mut caller_tx = SrtpContext::new(keys.suite, &keys.remote_key_salt).unwrap();
    let mut caller_rx = SrtpContext::new(keys.suite, &keys.local_key_salt).unwrap();

    // A plain RTP packet first: it must not latch or reach the agent.
    let plain = rtp_packet(0, 999, 0, 0x77, false, &[0xff; 160]);
    h.rtp.send_to(&plain, h.media).await.unwrap();
    let payloads = tone_payloads(Codec::Pcmu, 1000.0, 25);
    let mut tick = tokio::time::interval(20 * MS);
    let mut first = Vec::new();
    for (i, p) in payloads.iter().enumerate() {
        tick.tick().await;
        let seq = 1000 + i as u16;
        let mut pkt = rtp_packet(0, seq, 160 * u32::from(seq), 0x77, i == 0, p);
        let len = pkt.len();
        pkt.resize(len + MAX_OVERHEAD, 0);
        let n = caller_tx.protect_rtp(&mut pkt, len).unwrap();
        pkt.truncate(n);
        h.rtp.send_to(&pkt, h.media).await.unwrap();
        if i == 0 {
            first = pkt;
        }
    }
    // A replay of the first packet, and a forgery of the last.
    h.rtp.send_to(&first, h.media).await.unwrap();
    first[20] ^= 1;
    h.rtp.send_to(&first, h.media).await.unwrap();

    // The agent talks: what reaches the caller is SRTP under our key.
    let tone_out = tone(1000.0, 8000, 8000, 0);
    h.agent(FromAgent::Media(mulaw(&tone_out))).await;
    let mut buf = [0u8; 2048];
    let mut decoded: Vec<i16> = Vec::new();
    // Silence may come first (the playout clock runs from the start): keep the voiced.
    while decoded.len() < 160 * 10 {
        let (n, _) = timeout(Duration::from_secs(2), h.rtp.recv_from(&mut buf))
            .await
            .expect("RTP from the session")
            .unwrap();
        if is_rtcp(&buf[..n]) {
            continue;
        }
        assert!(
            RtpPacket::parse(&buf[..n - 10]).is_ok(),
            "the header is in clear"
        );
        let len = caller_rx
            .unprotect_rtp(&mut buf[..n])
            .expect("authentic SRTP");
        let payload = RtpPacket::parse(&buf[..len]).unwrap().payload().to_vec();
        let pcm = agent_pcm(AudioEncoding::Mulaw8000, &payload);
        if !is_silent(&pcm) {
            decoded.extend(pcm);
        }
    }
    assert!(
        tone_share(&decoded, 8000, 1000.0) > 0.9,
        "the agent's tone, decrypted"
    );

    tokio::time::sleep(100 * MS).await;
    let (outcome, msgs) = h.stop().await;
    let heard = voiced(AudioEncoding::Mulaw8000, &media_frames(&msgs));
    assert!(
        heard.len() >= 160 * 15,
        "the caller's audio reached the agent"
    );
    assert!(tone_share(&heard, 8000, 1000.0) > 0.9);
    assert_eq!(outcome.stats.packets_in, 25);
    assert_eq!(
        outcome.stats.packets_dropped, 3,
        "plain, replayed and forged"
    );

    // The closing RTCP (SR, SDES, BYE) is SRTCP under our key.
    let bye = loop {
        let (n, _) = timeout(Duration::from_secs(1), h.rtcp.recv_from(&mut buf))
            .await
            .expect("RTCP at the end")
            .unwrap();
        let len = caller_rx
            .unprotect_rtcp(&mut buf[..n])
            .expect("authentic SRTCP");
        let has_bye = parse_compound(&buf[..len])
            .unwrap()
            .any(|p| matches!(p, RtcpPacket::Bye { .. }));
        if has_bye {
            break true;
        }
    };
    assert!(bye);
}
