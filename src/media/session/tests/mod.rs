//! Session tests. All but [`task`]'s drive the sans-IO [`Session`] on a virtual clock:
//! no socket, no sleep, no runtime. A [`Harness`] plays the driver (the same call order as
//! the tokio task), a fake caller (datagrams built with the RTP/RTCP writers) and a fake
//! agent (a log of what it was handed, with a channel that may fill up or close).
//! [`task`] runs the real task over UDP on 127.0.0.1 to prove the glue.

use std::f64::consts::TAU;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use super::*;
use crate::agent::{FromAgent, ToAgent};
use crate::media::codec::{g711, Encoder};
use crate::media::rtcp::{parse_compound, RtcpPacket};
use crate::media::rtp::{RtpHeader, RtpPacket, FIXED_HEADER_LEN};
use crate::sdp::Direction;

mod audio;
mod dtmf;
mod ending;
mod latching;
mod paths;
mod rtcp;
mod signalling;
mod srtp;
mod task;

pub(super) const MS: Duration = Duration::from_millis(1);
pub(super) const TE: u8 = 101;
/// Our SSRC in every test session.
pub(super) const SSRC: u32 = 0x5e55_1011;
pub(super) const CNAME: &str = "dialtone-test";

/// An address of the fake caller's (TEST-NET-1: never routed, never bound).
pub(super) fn addr(last: u8, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, last)), port)
}

/// The caller's RTP and RTCP addresses, as its SDP gives them.
pub(super) fn caller_rtp() -> SocketAddr {
    addr(10, 40000)
}

pub(super) fn caller_rtcp() -> SocketAddr {
    addr(10, 40001)
}

pub(super) fn negotiated(
    codec: Codec,
    remote_rtp: SocketAddr,
    remote_rtcp: SocketAddr,
) -> Negotiated {
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

pub(super) fn config(codec: Codec, agent: AudioEncoding) -> SessionConfig {
    SessionConfig {
        negotiated: negotiated(codec, caller_rtp(), caller_rtcp()),
        agent_encoding: agent,
        no_audio_timeout: Duration::from_secs(10),
        inactivity_timeout: Duration::from_secs(10),
        hangup_drain_cap: Duration::from_secs(3),
        ssrc: SSRC,
        cname: CNAME.into(),
        early: false,
    }
}

/// The wall clock at the start of every virtual session.
pub(super) fn wall_start() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

/// A datagram the session sent, as the socket would have carried it.
#[derive(Debug, Clone)]
pub(super) struct Sent {
    pub at: Instant,
    pub socket: Socket,
    pub packet: Packet,
    pub dest: SocketAddr,
    pub bytes: Vec<u8>,
}

/// An RTP packet the caller received, with the virtual time it was sent.
#[derive(Debug, Clone)]
pub(super) struct Got {
    pub at: Instant,
    pub dest: SocketAddr,
    pub pt: u8,
    pub seq: u16,
    pub ts: u32,
    pub marker: bool,
    pub ssrc: u32,
    pub payload: Vec<u8>,
}

impl Got {
    fn parse(s: &Sent, bytes: &[u8]) -> Self {
        let p = RtpPacket::parse(bytes).expect("the session sends valid RTP");
        Got {
            at: s.at,
            dest: s.dest,
            pt: p.payload_type(),
            seq: p.sequence(),
            ts: p.timestamp(),
            marker: p.marker(),
            ssrc: p.ssrc(),
            payload: p.payload().to_vec(),
        }
    }

    pub fn voiced(&self) -> bool {
        self.payload.iter().any(|&b| b != g711::ULAW_SILENCE)
    }
}

/// The driver, the caller and the agent around one session, on a virtual clock.
pub(super) struct Harness {
    pub session: Session,
    pub t0: Instant,
    pub now: Instant,
    pub negotiated: Negotiated,
    /// Every datagram sent, in order.
    pub sent: Vec<Sent>,
    /// Every message the agent was handed, with when.
    pub agent: Vec<(Instant, ToAgent)>,
    /// Messages the agent's channel still takes before it is full; `None`: unbounded.
    pub agent_room: Option<usize>,
    /// The agent's channel is closed: every message is refused.
    pub agent_closed: bool,
    /// Sends fail while set (a full socket buffer).
    pub sends_fail: bool,
    pub outcome: Option<MediaOutcome>,
    /// When the outcome came.
    pub ended_at: Option<Instant>,
    buf: Vec<u8>,
}

impl Harness {
    pub fn start(codec: Codec, agent: AudioEncoding) -> Self {
        Self::start_with(codec, agent, |_| {})
    }

    pub fn start_with(
        codec: Codec,
        agent: AudioEncoding,
        tweak: impl FnOnce(&mut SessionConfig),
    ) -> Self {
        let mut cfg = config(codec, agent);
        tweak(&mut cfg);
        let negotiated = cfg.negotiated.clone();
        let t0 = Instant::now();
        let mut h = Harness {
            session: Session::new(cfg, t0, wall_start(), 0x5eed),
            t0,
            now: t0,
            negotiated,
            sent: Vec::new(),
            agent: Vec::new(),
            agent_room: None,
            agent_closed: false,
            sends_fail: false,
            outcome: None,
            ended_at: None,
            buf: vec![0; MAX_TRANSMIT],
        };
        h.step();
        h
    }

    /// Time since the start.
    pub fn elapsed(&self) -> Duration {
        self.now - self.t0
    }

    /// What the task does after every input: timers, then flush.
    pub fn step(&mut self) {
        self.session.handle_timeout(self.now);
        self.flush();
    }

    /// Drains transmissions and events, in the task's order.
    fn flush(&mut self) {
        loop {
            while let Some(t) = self.session.poll_transmit(self.now, &mut self.buf) {
                assert!(self.outcome.is_none(), "nothing is sent after Ended");
                let result = if self.sends_fail {
                    Err(std::io::Error::from(std::io::ErrorKind::WouldBlock))
                } else {
                    self.sent.push(Sent {
                        at: self.now,
                        socket: t.socket,
                        packet: t.packet,
                        dest: t.destination,
                        bytes: self.buf[..t.len].to_vec(),
                    });
                    Ok(t.len)
                };
                self.session.handle_sent(&t, result);
            }
            let mut delivered = false;
            while let Some(event) = self.session.poll_event() {
                delivered = true;
                assert!(self.outcome.is_none(), "nothing follows Ended");
                match event {
                    Event::Agent(msg) => self.deliver(msg),
                    Event::Ended(outcome) => {
                        self.outcome = Some(outcome);
                        self.ended_at = Some(self.now);
                    }
                }
            }
            if !delivered {
                return;
            }
        }
    }

    fn deliver(&mut self, msg: ToAgent) {
        if self.agent_closed {
            return self.session.handle_agent_closed();
        }
        // The task waits a little for room for the final Stop: here the agent catches up.
        let stop = matches!(msg, ToAgent::Stop);
        match &mut self.agent_room {
            Some(0) if !stop => return self.session.handle_agent_full(),
            Some(room) => *room = room.saturating_sub(1),
            None => {}
        }
        self.agent.push((self.now, msg));
    }

    /// Runs every deadline up to `t`, then sets the clock to `t`.
    pub fn run_until(&mut self, t: Instant) {
        let mut rounds = 0;
        while self.outcome.is_none() {
            match self.session.poll_timeout() {
                Some(d) if d <= t => {
                    self.now = self.now.max(d);
                    self.step();
                }
                _ => break,
            }
            rounds += 1;
            assert!(
                rounds < 1_000_000,
                "the session keeps asking for the same deadline"
            );
        }
        self.now = self.now.max(t);
    }

    pub fn advance(&mut self, d: Duration) {
        self.run_until(self.now + d);
    }

    /// Runs until the session ends on its own, at most `limit` from now.
    pub fn run_to_end(&mut self, limit: Duration) -> MediaOutcome {
        self.run_until(self.now + limit);
        self.outcome.expect("the session ended on its own")
    }

    /// A stall: the clock jumps by `d` with nothing run in between.
    pub fn stall(&mut self, d: Duration) {
        self.now += d;
        self.step();
    }

    pub fn rtp_from(&mut self, src: SocketAddr, datagram: &[u8]) {
        let mut d = datagram.to_vec();
        self.session.handle_rtp(self.now, src, &mut d);
        self.step();
    }

    pub fn rtp(&mut self, datagram: &[u8]) {
        self.rtp_from(caller_rtp(), datagram);
    }

    pub fn rtcp_from(&mut self, src: SocketAddr, datagram: &[u8]) {
        let mut d = datagram.to_vec();
        self.session.handle_rtcp(self.now, src, &mut d);
        self.step();
    }

    pub fn agent_sends(&mut self, msg: FromAgent) {
        assert!(
            self.session.reads_agent(),
            "the task would not read {msg:?}"
        );
        self.session.handle_agent(self.now, msg);
        self.step();
    }

    pub fn command(&mut self, cmd: MediaCommand) {
        self.session.handle_command(self.now, cmd);
        self.step();
    }

    pub fn update(&mut self, n: Negotiated) {
        self.command(MediaCommand::Update(n));
    }

    /// Stops the session and returns its outcome.
    pub fn stop(&mut self) -> MediaOutcome {
        self.command(MediaCommand::Stop);
        self.outcome.expect("Stop ends the session at once")
    }

    /// Sends one payload per 20 ms from `src` as an RTP stream, sequence numbers from
    /// `first_seq`, timestamps 160 per sequence number; the clock ends 20 ms after the
    /// last packet.
    pub fn stream_from(
        &mut self,
        src: SocketAddr,
        pt: u8,
        ssrc: u32,
        first_seq: u16,
        payloads: &[Vec<u8>],
    ) {
        for (i, p) in payloads.iter().enumerate() {
            let seq = first_seq.wrapping_add(i as u16);
            let pkt = rtp_packet(pt, seq, 160 * u32::from(seq), ssrc, i == 0, p);
            self.rtp_from(src, &pkt);
            self.advance(20 * MS);
        }
    }

    pub fn stream(&mut self, pt: u8, ssrc: u32, payloads: &[Vec<u8>]) {
        self.stream_from(caller_rtp(), pt, ssrc, 1000, payloads);
    }

    /// The plain RTP packets sent (RTCP on the RTP port left out).
    pub fn rtp_sent(&self) -> Vec<Got> {
        self.sent
            .iter()
            .filter(|s| s.packet == Packet::Rtp)
            .map(|s| {
                assert_eq!(s.socket, Socket::Rtp);
                Got::parse(s, &s.bytes)
            })
            .collect()
    }

    /// RTP packets sent at or after `from`.
    pub fn rtp_sent_since(&self, from: Instant) -> Vec<Got> {
        self.rtp_sent()
            .into_iter()
            .filter(|p| p.at >= from)
            .collect()
    }

    pub fn rtcp_sent(&self) -> Vec<&Sent> {
        self.sent
            .iter()
            .filter(|s| s.packet == Packet::Rtcp)
            .collect()
    }

    /// The agent's frames, in order.
    pub fn frames(&self) -> Vec<Bytes> {
        media_frames(self.agent.iter().map(|(_, m)| m))
    }

    /// Everything the agent got except audio, in order.
    pub fn agent_controls(&self) -> Vec<&ToAgent> {
        self.agent
            .iter()
            .map(|(_, m)| m)
            .filter(|m| !matches!(m, ToAgent::Media(_)))
            .collect()
    }

    pub fn marks(&self) -> Vec<(Instant, String)> {
        self.agent
            .iter()
            .filter_map(|(at, m)| match m {
                ToAgent::MarkPlayed(name) => Some((*at, name.clone())),
                _ => None,
            })
            .collect()
    }
}

pub(super) fn media_frames<'a>(msgs: impl IntoIterator<Item = &'a ToAgent>) -> Vec<Bytes> {
    msgs.into_iter()
        .filter_map(|m| match m {
            ToAgent::Media(b) => Some(b.clone()),
            _ => None,
        })
        .collect()
}

pub(super) fn rtp_packet(
    pt: u8,
    seq: u16,
    ts: u32,
    ssrc: u32,
    marker: bool,
    payload: &[u8],
) -> Vec<u8> {
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

pub(super) fn tone(freq: f64, rate: u32, len: usize, from: usize) -> Vec<i16> {
    (from..from + len)
        .map(|i| (8000.0 * (TAU * freq * i as f64 / f64::from(rate)).sin()) as i16)
        .collect()
}

/// Share of the signal's energy at `freq` (Goertzel); ~1 for a pure tone at `freq`.
pub(super) fn tone_share(samples: &[i16], rate: u32, freq: f64) -> f64 {
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
pub(super) fn tone_payloads(codec: Codec, freq: f64, frames: usize) -> Vec<Vec<u8>> {
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

pub(super) fn agent_pcm(encoding: AudioEncoding, frame: &[u8]) -> Vec<i16> {
    match encoding {
        AudioEncoding::Mulaw8000 => frame.iter().map(|&b| g711::ulaw_to_linear(b)).collect(),
        _ => frame
            .chunks_exact(2)
            .map(|c| i16::from_le_bytes([c[0], c[1]]))
            .collect(),
    }
}

pub(super) fn is_silent(pcm: &[i16]) -> bool {
    pcm.iter().all(|s| s.abs() <= 8)
}

/// The non-silent audio the agent received, as PCM.
pub(super) fn voiced(encoding: AudioEncoding, frames: &[Bytes]) -> Vec<i16> {
    frames
        .iter()
        .map(|f| agent_pcm(encoding, f))
        .filter(|p| !is_silent(p))
        .flatten()
        .collect()
}

pub(super) fn mulaw(pcm: &[i16]) -> Vec<u8> {
    pcm.iter().map(|&s| g711::linear_to_ulaw(s)).collect()
}

/// Asserts consecutive sequence numbers.
pub(super) fn assert_continuous_seq(pkts: &[Got]) {
    for w in pkts.windows(2) {
        assert_eq!(
            w[1].seq,
            w[0].seq.wrapping_add(1),
            "{:?}",
            (w[0].seq, w[1].seq)
        );
    }
}

/// Asserts consecutive sequence numbers, timestamps +160 and sending times +20 ms.
pub(super) fn assert_paced(pkts: &[Got]) {
    assert_continuous_seq(pkts);
    for w in pkts.windows(2) {
        assert_eq!(w[1].ts, w[0].ts.wrapping_add(160));
        assert_eq!(w[1].at - w[0].at, 20 * MS);
    }
}

/// The RTCP packet types in a compound datagram.
pub(super) fn rtcp_kinds(datagram: &[u8]) -> Vec<u8> {
    parse_compound(datagram)
        .expect("the session sends valid RTCP")
        .map(|p| match p {
            RtcpPacket::SenderReport { .. } => 200,
            RtcpPacket::ReceiverReport { .. } => 201,
            RtcpPacket::SourceDescription(_) => 202,
            RtcpPacket::Bye { .. } => 203,
            RtcpPacket::Other { packet_type, .. } => packet_type,
        })
        .collect()
}

/// Asserts the session ended the usual way: the closing RTCP with BYE went out, and the
/// agent's last message was `Stop`.
pub(super) fn assert_said_goodbye(h: &Harness) {
    assert!(h.outcome.is_some());
    let last = h.rtcp_sent().last().copied().expect("closing RTCP");
    assert_eq!(last.at, h.ended_at.unwrap());
    assert_eq!(rtcp_kinds(&last.bytes).last(), Some(&203), "ends with BYE");
    assert!(matches!(h.agent.last(), Some((_, ToAgent::Stop))));
}
