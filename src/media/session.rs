//! The per-call media task: RTP/RTCP with the caller on one side, 20 ms frames of the
//! agent's audio format on the other ([`AgentLink`]).
//!
//! One tokio task per call owns everything hot: the socket pair, sequence tracker, jitter
//! buffer, codecs, resamplers and playout clock. Nothing is shared with other calls and
//! nothing is locked per packet. Buffers are allocated when the session starts (or when a
//! re-INVITE changes the codec); the per-packet path does not allocate, except that frames
//! handed to the agent are `Bytes` split off a shared block, one block per 32 frames.
//!
//! The per-packet work lives in two plain structs the task drives and the benchmark
//! drives without sockets: [`InboundPath`] (RTP → agent frames) and [`OutboundPath`]
//! (agent audio → RTP).
//!
//! # Policies
//! - **Symmetric RTP (latching).** Until the first valid RTP packet arrives we send to the
//!   SDP address. The source of the first packet that parses as RTP, carries a negotiated
//!   payload type and is accepted by the sequence tracker is latched, wherever it comes
//!   from (NAT often rewrites the SDP address); from then on we send there and drop (and
//!   count, `foreign_source`) datagrams from any other address. A re-INVITE that changes
//!   the SDP address unlatches. The first-packet race is the usual trade-off of latching:
//!   a spoofer that wins it gets the stream until the next re-INVITE.
//! - **RTCP.** Sent every ~5 s (randomised, [`RtcpTimer`]): SR when we sent RTP since the
//!   last report, else RR, with one report block once the caller's source is known, and
//!   SDES CNAME; SR + SDES + BYE when the session ends. Destination: the source of the
//!   caller's RTCP once seen (symmetric RTCP); else the RTP destination with rtcp-mux;
//!   else the latched RTP address' port + 1 when NAT moved it; else the SDP's RTCP
//!   address. RTCP is accepted on both ports (by [`is_rtcp`] on the RTP port) from the
//!   latched IP only.
//! - **Jitter.** Depth 2 packets (40 ms at 20 ms ptime) before playout starts, trimmed back
//!   to 5 (100 ms) when packets pile up: conversation wants low delay more than it wants
//!   to ride out rare long jitter. Inbound packets are released on a tick whose interval
//!   follows the caller's actual packet duration (payload length / 8 bytes per ms for all
//!   three codecs), and re-framed to exact 20 ms agent frames.
//! - **Loss.** A missing packet is replaced by silence of its length, and from the first
//!   frame on the agent receives exactly one frame per 20 ms (silence while the caller's
//!   stream is interrupted by DTMF, silence suppression or hold), so its timeline
//!   (`media.timestamp`) stays steady.
//! - **Hold.** While our direction does not allow sending or the caller holds us, we send
//!   no RTP. The playout clock keeps running (agent audio still plays out "into the void"
//!   and its marks are echoed), withheld frames take no sequence numbers, and the first
//!   packet after the hold carries the marker and a timestamp advanced by the hold's
//!   length, as after any silence. While the call is not two-way (our direction is not
//!   sendrecv, or the caller holds us) the no-audio and inactivity timeouts are suspended;
//!   they count again from the resume. Hold never hangs up.
//! - **Back-pressure.** Everything towards the agent is `try_send`: a full channel drops
//!   the message and counts it (`agent_backpressure`); a closed one ends the call.
//!
//! # Loop order
//! Each iteration of the task:
//! 1. Timers, with `now`: inbound ticks (jitter pop → decode → resample → encode → agent
//!    frames), outbound playout (`poll` → encode or DTMF → RTP), marks played, RTCP
//!    report, hang-up drain deadline, no-audio/inactivity timeouts. Runs after every event,
//!    so a packet flood cannot starve the 20 ms clock.
//! 2. Sleep until the earliest deadline, or until (in priority order) a command, an agent
//!    message, an RTP datagram or an RTCP datagram arrives; handle it and loop.
//!
//! Ending: `Stop` (or the handle dropped) → reason `None`; agent `Hangup` → queued audio
//! played out (bounded by `hangup_drain_cap`) → `AgentHangup`; agent `Failed(r)` → `r`;
//! agent channels gone → `ErrorLlmWebsocketLostConnection`; no RTP within
//! `no_audio_timeout` → `ErrorNoAudioReceived`; RTP stopped for `inactivity_timeout` →
//! `Inactivity`. In every case the agent gets `ToAgent::Stop` (if it still listens) and the
//! caller an RTCP BYE.
//!
//! With SRTP keys in [`Negotiated`] every datagram is SRTP or SRTCP ([`protection`]):
//! received ones are authenticated and decrypted in place before anything else looks
//! at them (so only an authentic packet can latch the source), sent ones are protected
//! last. Packets that fail are dropped and counted (`srtp_auth`, `srtp_replay`).

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tracing::Instrument;

use super::codec::{g711, Codec, Decoder, Encoder};
use super::dtmf::{DtmfReceiver, DtmfSender, DtmfSenderConfig};
use super::jitter::{Insert, JitterBuffer, JitterConfig, Pop};
use super::playout::{Playout, PlayoutConfig, PlayoutError};
use super::ports::RtpSocket;
use super::resample::Resampler;
use super::rtcp::{
    ntp_from_unix, parse_compound, ReceptionReporter, ReportBlock, RtcpPacket, RtcpTimer,
    RtcpWriter, SenderInfo,
};
use super::rtp::{
    clock_units, is_rtcp, RtpHeader, RtpPacket, SeqStatus, SeqTracker, FIXED_HEADER_LEN,
};
use super::srtp::MAX_OVERHEAD as SRTP_OVERHEAD;
use crate::agent::{AgentLink, FromAgent, ToAgent};
use crate::metrics;
use crate::model::{AudioEncoding, DisconnectionReason};
use crate::sdp::{Direction, Negotiated};
use protection::Protection;

mod protection;

/// Our packetization bounds (the negotiated ptime is clamped into them).
const MIN_PTIME: u32 = 10;
const MAX_PTIME: u32 = 60;
/// Largest inbound audio payload: 120 ms of any of our codecs (8 bytes per ms).
const MAX_IN_PAYLOAD: usize = 960;
/// Inbound packet durations we follow; others keep the current tick.
const MIN_IN_MS: u32 = 10;
const MAX_IN_MS: u32 = 120;
/// Jitter buffer sizes, in packets (see the module docs).
const JITTER_TARGET: usize = 2;
const JITTER_MAX: usize = 5;
const JITTER_CAPACITY: usize = 16;
/// Most overdue inbound ticks run back to back after a stall; older ones are skipped.
const TICK_BURST: u64 = 3;
/// Agent samples decoded per step when pushing agent audio.
const AGENT_CHUNK: usize = 960;
/// Agent frames per shared `Bytes` block.
const FRAMES_PER_BLOCK: usize = 32;
/// Datagram buffers: larger than any sane RTP packet on a 1500-byte MTU.
const DATAGRAM_BUF: usize = 2048;
/// Consecutive socket receive errors after which the session gives up.
const MAX_RECV_ERRORS: u32 = 100;
/// How long the final `stop` may wait for room in the agent channel.
const STOP_SEND_WAIT: Duration = Duration::from_millis(200);

/// What the engine gives a session.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub negotiated: Negotiated,
    pub agent_encoding: AudioEncoding,
    /// Ends the call (`error_no_audio_received`) when no RTP at all arrived this long
    /// after the start (or after a hold ended).
    pub no_audio_timeout: Duration,
    /// Ends the call (`inactivity`) when RTP stopped for this long (not while on hold).
    pub inactivity_timeout: Duration,
    /// Longest the agent's last words may play after it hangs up.
    pub hangup_drain_cap: Duration,
    /// Our RTP SSRC, random, chosen by the caller.
    pub ssrc: u32,
    /// RTCP CNAME (truncated to 255 bytes).
    pub cname: String,
    /// Outbound early media (a 18x with SDP, for an agent that asked for it): the far
    /// end's audio reaches the agent, but nothing is sent to it and no audio timeout runs
    /// until [`MediaCommand::Answered`].
    pub early: bool,
}

/// Signalling's instructions to a running session.
#[derive(Debug)]
pub enum MediaCommand {
    /// A re-INVITE or UPDATE settled: new remote address, codec, payload types, direction
    /// or hold. Applied without restarting the stream.
    Update(Negotiated),
    /// The far end answered (the 200's description): leave the early phase, start sending,
    /// start the audio timeouts, and tell the agent (`answered`).
    Answered(Negotiated),
    /// End the session (the caller hung up, the call is being torn down).
    Stop,
}

/// Counters of one session, returned when it ends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MediaStats {
    /// RTP packets accepted from the caller (audio and telephone-events).
    pub packets_in: u64,
    /// RTP packets sent to the caller.
    pub packets_out: u64,
    /// Caller packets never received (RFC 3550 cumulative loss, per source, summed).
    pub packets_lost: u64,
    /// Datagrams discarded: malformed, wrong payload type, foreign source, late, ...
    pub packets_dropped: u64,
    pub rtcp_in: u64,
    pub rtcp_out: u64,
    /// 20 ms frames handed to the agent channel.
    pub frames_to_agent: u64,
    /// Messages to the agent dropped because its channel was full.
    pub agent_dropped: u64,
    /// Frames of caller audio replaced by silence (loss, gaps).
    pub concealed_frames: u64,
    pub dtmf_in: u64,
    /// 20 ms slots passed over because the task fell behind the clock: caller frames the
    /// agent never got (`in`), packets never sent to the caller (`out`).
    pub clock_slips_in: u64,
    pub clock_slips_out: u64,
    /// Agent audio dropped because too much was queued ahead of real time, in ms.
    pub agent_overflow_ms: u64,
}

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediaOutcome {
    /// `None` when stopped by [`MediaCommand::Stop`] (or the handle was dropped).
    pub reason: Option<DisconnectionReason>,
    pub stats: MediaStats,
}

/// The engine's end of a running session.
#[derive(Debug)]
pub struct MediaHandle {
    pub commands: mpsc::Sender<MediaCommand>,
    pub done: tokio::task::JoinHandle<MediaOutcome>,
}

/// Why a datagram (or a message to the agent) was dropped; the metric's `cause` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropCause {
    /// Not parseable as RTP (or as RTCP on the RTCP path, or a bad event payload).
    Malformed,
    /// RTP with a payload type that was not negotiated.
    PayloadType,
    /// From an address other than the latched source.
    ForeignSource,
    /// Rejected by the sequence tracker (probation, a big unconfirmed jump, stale).
    Sequence,
    /// Rejected by the jitter buffer (late, duplicate, too large).
    Late,
    /// A message to the agent found its channel full.
    AgentBackpressure,
    /// The socket refused an outgoing datagram (or it could not be protected).
    SendFailed,
    /// SRTP/SRTCP whose authentication tag did not verify (or plain RTP where SRTP was
    /// negotiated).
    SrtpAuth,
    /// SRTP/SRTCP replayed, or older than the replay window.
    SrtpReplay,
}

impl DropCause {
    const ALL: [DropCause; 9] = [
        DropCause::Malformed,
        DropCause::PayloadType,
        DropCause::ForeignSource,
        DropCause::Sequence,
        DropCause::Late,
        DropCause::AgentBackpressure,
        DropCause::SendFailed,
        DropCause::SrtpAuth,
        DropCause::SrtpReplay,
    ];

    pub fn label(self) -> &'static str {
        match self {
            DropCause::Malformed => "malformed",
            DropCause::PayloadType => "payload_type",
            DropCause::ForeignSource => "foreign_source",
            DropCause::Sequence => "sequence",
            DropCause::Late => "late",
            DropCause::AgentBackpressure => "agent_backpressure",
            DropCause::SendFailed => "send_failed",
            DropCause::SrtpAuth => "srtp_auth",
            DropCause::SrtpReplay => "srtp_replay",
        }
    }
}

/// The caller-side stream parameters both paths need, from [`Negotiated`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamParams {
    pub codec: Codec,
    pub payload_type: u8,
    pub telephone_event: Option<u8>,
    /// Our packetization in ms, clamped to 10..=60 and rounded down to 10 ms.
    pub ptime: u32,
}

impl StreamParams {
    pub fn new(codec: Codec, payload_type: u8, telephone_event: Option<u8>, ptime: u32) -> Self {
        Self {
            codec,
            payload_type,
            telephone_event,
            ptime: (ptime.clamp(MIN_PTIME, MAX_PTIME) / 10) * 10,
        }
    }

    pub fn from_negotiated(n: &Negotiated) -> Self {
        Self::new(n.codec, n.payload_type, n.telephone_event, n.ptime)
    }
}

/// A resampler between two of our rates (8, 16, 24 kHz), `None` when they are equal.
fn resampler(from: u32, to: u32) -> Option<Resampler> {
    if from == to {
        return None;
    }
    // Every ratio between 8, 16 and 24 kHz is supported (resample.rs tests them all), so
    // this only fails for rates we never pass; then audio passes unresampled, never panics.
    Resampler::new(from, to).ok()
}

// ---------------------------------------------------------------------------------------
// Inbound: RTP → agent frames.

/// How caller audio becomes agent audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Convert {
    /// PCMU to a μ-law agent: the payload bytes as they are.
    Passthrough,
    /// PCMA to a μ-law agent: one table lookup per byte.
    AlawToUlaw,
    /// Decode, resample to the agent's rate, encode to the agent's format.
    Transcode,
}

/// Decodes, resamples and re-encodes caller audio into a buffer of agent-format bytes
/// that is cut into 20 ms frames.
#[derive(Debug)]
struct Converter {
    agent: AudioEncoding,
    convert: Convert,
    decoder: Decoder,
    resampler: Option<Resampler>,
    /// Codec-rate PCM of one packet.
    pcm: Box<[i16]>,
    /// Agent-rate PCM of one packet.
    pcm_agent: Box<[i16]>,
    /// Agent-format bytes not yet cut into a frame.
    acc: Box<[u8]>,
    len: usize,
    /// Bytes lost because `acc` was full (cannot happen while frames are taken every tick).
    overflow: u64,
}

impl Converter {
    fn new(codec: Codec, agent: AudioEncoding) -> Self {
        let convert = match (codec, agent) {
            (Codec::Pcmu, AudioEncoding::Mulaw8000) => Convert::Passthrough,
            (Codec::Pcma, AudioEncoding::Mulaw8000) => Convert::AlawToUlaw,
            _ => Convert::Transcode,
        };
        // 120 ms of G.722 is 1920 samples at 16 kHz, 2880 at 24 kHz; as bytes of PCM16,
        // 5760, plus a partial frame left over.
        let pcm_max = MAX_IN_PAYLOAD * 2;
        let agent_max = pcm_max * 3 / 2 + 16;
        Self {
            agent,
            convert,
            decoder: Decoder::new(codec),
            resampler: resampler(codec.sample_rate(), agent.sample_rate()),
            pcm: vec![0; pcm_max].into_boxed_slice(),
            pcm_agent: vec![0; agent_max].into_boxed_slice(),
            acc: vec![0; agent_max * 2 + agent.bytes_per_20ms()].into_boxed_slice(),
            len: 0,
            overflow: 0,
        }
    }

    /// Appends the agent-format audio of one caller payload.
    fn payload(&mut self, payload: &[u8]) {
        let room = &mut self.acc[self.len..];
        match self.convert {
            Convert::Passthrough => {
                let n = payload.len().min(room.len());
                room[..n].copy_from_slice(&payload[..n]);
                self.len += n;
                self.overflow += (payload.len() - n) as u64;
            }
            Convert::AlawToUlaw => {
                let n = g711::transcode_alaw_to_ulaw(payload, room);
                self.len += n;
                self.overflow += (payload.len() - n) as u64;
            }
            Convert::Transcode => {
                let n = self.decoder.decode(payload, &mut self.pcm);
                self.pcm_out(n);
            }
        }
    }

    /// Appends `ms` of silence (concealment). Through the resampler, so its state stays
    /// continuous with the audio around the gap.
    fn silence(&mut self, ms: u32) {
        match self.convert {
            Convert::Passthrough | Convert::AlawToUlaw => {
                let want = 8 * ms as usize;
                let room = &mut self.acc[self.len..];
                let n = want.min(room.len());
                room[..n].fill(g711::ULAW_SILENCE);
                self.len += n;
                self.overflow += (want - n) as u64;
            }
            Convert::Transcode => {
                let rate = self.decoder.kind().sample_rate() as usize;
                let n = (rate / 1000 * ms as usize).min(self.pcm.len());
                self.pcm[..n].fill(0);
                self.pcm_out(n);
            }
        }
    }

    /// Resamples and encodes `pcm[..n]` onto the end of `acc`.
    fn pcm_out(&mut self, n: usize) {
        let samples: &[i16] = match &mut self.resampler {
            Some(r) => {
                let done = r.process(&self.pcm[..n], &mut self.pcm_agent);
                &self.pcm_agent[..done.written]
            }
            None => &self.pcm[..n],
        };
        let room = &mut self.acc[self.len..];
        let written = match self.agent {
            AudioEncoding::Mulaw8000 => g711::encode_ulaw(samples, room),
            AudioEncoding::Pcm16000 | AudioEncoding::Pcm24000 => {
                let fit = samples.len().min(room.len() / 2);
                for (s, dst) in samples[..fit].iter().zip(room.chunks_exact_mut(2)) {
                    dst.copy_from_slice(&s.to_le_bytes());
                }
                fit * 2
            }
        };
        self.len += written;
        let wanted = match self.agent {
            AudioEncoding::Mulaw8000 => samples.len(),
            _ => samples.len() * 2,
        };
        self.overflow += (wanted - written) as u64;
    }

    /// Moves one frame of `frame_bytes` into `out` if that much is buffered.
    fn take_frame(&mut self, frame_bytes: usize, out: &mut BytesMut) -> Option<Bytes> {
        if self.len < frame_bytes {
            return None;
        }
        if out.capacity() - out.len() < frame_bytes {
            // Reclaims the block once every frame split from it has been dropped.
            out.reserve(frame_bytes * FRAMES_PER_BLOCK);
        }
        out.extend_from_slice(&self.acc[..frame_bytes]);
        self.acc.copy_within(frame_bytes..self.len, 0);
        self.len -= frame_bytes;
        Some(out.split().freeze())
    }
}

/// What an accepted RTP packet was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// Audio, now in the jitter buffer.
    Audio,
    /// The first packet of a key press.
    Dtmf(char),
    /// A repeat, update or end packet of a key press already reported (or a non-digit).
    Event,
}

/// Inbound per-packet work: validation, sequence tracking, jitter buffer, DTMF detection,
/// and per tick the conversion into 20 ms agent frames.
///
/// Call order: [`on_packet`](Self::on_packet) for each RTP packet from the latched source;
/// every [`packet_interval`](Self::packet_interval), [`tick`](Self::tick) once, then
/// [`pop_frame`](Self::pop_frame) until `None`.
#[derive(Debug)]
pub struct InboundPath {
    params: StreamParams,
    agent: AudioEncoding,
    tracker: SeqTracker,
    remote_ssrc: Option<u32>,
    reporter: ReceptionReporter,
    jitter: JitterBuffer,
    /// Arrival instant per jitter slot, keyed by extended sequence number.
    arrivals: Box<[(u64, Option<Instant>)]>,
    dtmf: DtmfReceiver,
    converter: Converter,
    out: BytesMut,
    /// Arrival of the oldest real packet whose audio waits in the converter.
    pending_arrival: Option<Instant>,
    /// Origin of the arrival clock the tracker's jitter estimate uses.
    clock_origin: Instant,
    /// Current inbound packet duration, in ms.
    packet_ms: u32,
    /// Set once the first audio frame was released: from then on every tick yields audio.
    streaming: bool,
    /// Loss of sources replaced by a new SSRC.
    lost_before: u64,
    concealed: u64,
}

impl InboundPath {
    pub fn new(params: StreamParams, agent: AudioEncoding, now: Instant) -> Self {
        let frame_bytes = agent.bytes_per_20ms();
        Self {
            params,
            agent,
            tracker: Self::tracker(),
            remote_ssrc: None,
            reporter: ReceptionReporter::new(),
            jitter: JitterBuffer::new(JitterConfig {
                capacity: JITTER_CAPACITY,
                target_depth: JITTER_TARGET,
                max_depth: JITTER_MAX,
                max_payload: MAX_IN_PAYLOAD,
            }),
            arrivals: vec![(u64::MAX, None); JITTER_CAPACITY].into_boxed_slice(),
            dtmf: DtmfReceiver::new(),
            converter: Converter::new(params.codec, agent),
            out: BytesMut::with_capacity(frame_bytes * FRAMES_PER_BLOCK),
            pending_arrival: None,
            clock_origin: now,
            packet_ms: params.ptime,
            streaming: false,
            lost_before: 0,
            concealed: 0,
        }
    }

    /// SDP vouches for the source, so the first packet is accepted without probation.
    fn tracker() -> SeqTracker {
        SeqTracker::with_limits(1, 3000, 100)
    }

    /// Switches codec or payload types (re-INVITE). Buffered packets of the old codec are
    /// dropped; the source, its statistics and the agent's frame timeline carry on.
    pub fn reconfigure(&mut self, params: StreamParams) {
        if params.codec != self.params.codec {
            self.jitter.reset();
            // Keep whatever partial frame of agent audio is already converted.
            let (acc, len) = (self.converter.acc.clone(), self.converter.len);
            self.converter = Converter::new(params.codec, self.agent);
            let n = len.min(self.converter.acc.len());
            self.converter.acc[..n].copy_from_slice(&acc[..n]);
            self.converter.len = n;
        }
        self.params = params;
    }

    /// True for the payload types this stream accepts (audio and telephone-event).
    pub fn accepts(&self, payload_type: u8) -> bool {
        payload_type == self.params.payload_type
            || Some(payload_type) == self.params.telephone_event
    }

    /// The caller's SSRC, once a packet was accepted.
    pub fn remote_ssrc(&self) -> Option<u32> {
        self.remote_ssrc
    }

    /// The duration of the caller's packets: how often to call [`tick`](Self::tick).
    pub fn packet_interval(&self) -> Duration {
        Duration::from_millis(u64::from(self.packet_ms))
    }

    /// Cumulative packets lost by the caller's source(s).
    pub fn packets_lost(&self) -> u64 {
        self.lost_before + u64::try_from(self.tracker.stats().lost()).unwrap_or(0)
    }

    /// Frames of silence inserted for loss and gaps.
    pub fn concealed_frames(&self) -> u64 {
        self.concealed
    }

    /// Validates and stores one RTP packet that arrived at `now`.
    pub fn on_packet(&mut self, pkt: &RtpPacket<'_>, now: Instant) -> Result<Received, DropCause> {
        let pt = pkt.payload_type();
        let is_event = Some(pt) == self.params.telephone_event;
        if pt != self.params.payload_type && !is_event {
            return Err(DropCause::PayloadType);
        }
        if pkt.payload().is_empty() {
            return Err(DropCause::Malformed);
        }
        let ssrc = pkt.ssrc();
        if self.remote_ssrc != Some(ssrc) {
            if self.remote_ssrc.is_some() {
                // A new source behind the same address (a transfer or media server switch
                // upstream): start its sequence space afresh.
                self.lost_before = self.packets_lost();
                self.tracker = Self::tracker();
                self.reporter = ReceptionReporter::new();
                self.jitter.reset();
                self.dtmf.reset();
            }
            self.remote_ssrc = Some(ssrc);
        }
        let arrival = clock_units(now.saturating_duration_since(self.clock_origin), 8000);
        let ext_seq = match self
            .tracker
            .update(pkt.sequence(), pkt.timestamp(), arrival)
        {
            SeqStatus::Valid { ext_seq } => ext_seq,
            SeqStatus::Restarted { ext_seq } => {
                self.jitter.reset();
                self.dtmf.reset();
                ext_seq
            }
            SeqStatus::Probation | SeqStatus::BadJump | SeqStatus::Stale => {
                return Err(DropCause::Sequence)
            }
        };
        if is_event {
            return match self
                .dtmf
                .handle(pkt.marker(), pkt.timestamp(), pkt.payload())
            {
                Ok(Some(d)) => Ok(Received::Dtmf(d.digit)),
                Ok(None) => Ok(Received::Event),
                Err(_) => Err(DropCause::Malformed),
            };
        }
        match self.jitter.insert(ext_seq, pkt.timestamp(), pkt.payload()) {
            Insert::Stored => {
                let slot = (ext_seq % JITTER_CAPACITY as u64) as usize;
                self.arrivals[slot] = (ext_seq, Some(now));
                Ok(Received::Audio)
            }
            Insert::Late | Insert::Duplicate | Insert::TooLarge => Err(DropCause::Late),
        }
    }

    /// One packet interval: releases the due packet from the jitter buffer (or conceals
    /// it) into the converter.
    pub fn tick(&mut self) {
        match self.jitter.pop() {
            Pop::Frame { seq, payload, .. } => {
                let ms = u32::try_from(payload.len() / 8).unwrap_or(0);
                if (MIN_IN_MS..=MAX_IN_MS).contains(&ms) {
                    self.packet_ms = ms;
                }
                self.converter.payload(payload);
                let slot = (seq % JITTER_CAPACITY as u64) as usize;
                if let (s, Some(at)) = self.arrivals[slot] {
                    if s == seq && self.pending_arrival.is_none() {
                        self.pending_arrival = Some(at);
                    }
                }
                self.streaming = true;
            }
            Pop::Missing { .. } => {
                self.converter.silence(self.packet_ms);
                self.concealed += 1;
            }
            Pop::Buffering => {
                if self.streaming {
                    self.converter.silence(self.packet_ms);
                    self.concealed += 1;
                }
            }
        }
    }

    /// The next whole 20 ms agent frame, with the arrival time of the packet that started
    /// it (`None` for concealment).
    pub fn pop_frame(&mut self) -> Option<(Bytes, Option<Instant>)> {
        let frame = self
            .converter
            .take_frame(self.agent.bytes_per_20ms(), &mut self.out)?;
        Some((frame, self.pending_arrival.take()))
    }

    /// Remembers an SR from the caller's source, for the LSR/DLSR of our reports.
    pub fn on_sender_report(&mut self, ssrc: u32, ntp: u64, now: Instant) {
        if self.remote_ssrc == Some(ssrc) {
            self.reporter.on_sender_report(ntp, now);
        }
    }

    /// The reception report block about the caller's source, once there is one.
    pub fn report_block(&mut self, now: Instant) -> Option<ReportBlock> {
        let ssrc = self.remote_ssrc?;
        if !self.tracker.is_valid() {
            return None;
        }
        let stats = self.tracker.stats();
        Some(self.reporter.report_block(ssrc, &stats, now))
    }
}

// ---------------------------------------------------------------------------------------
// Outbound: agent audio → RTP.

/// What one [`OutboundPath::poll`] produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Polled<'a> {
    /// No frame is due yet.
    Idle,
    /// A frame was due but we may not send (hold, or no destination): clocks advanced.
    Withheld,
    /// An RTP packet to send now.
    Packet(&'a [u8]),
}

/// Outbound per-packet work: agent audio decoded and resampled into the playout queue,
/// and per frame the encoded RTP packet (or a telephone-event packet in its place).
///
/// Call order: [`push_agent`](Self::push_agent), [`mark`](Self::mark),
/// [`clear`](Self::clear), [`send_dtmf`](Self::send_dtmf) as agent messages arrive; at
/// [`poll_timeout`](Self::poll_timeout), [`poll`](Self::poll) until `Idle`, then
/// [`poll_mark`](Self::poll_mark) until `None`.
#[derive(Debug)]
pub struct OutboundPath {
    params: StreamParams,
    agent: AudioEncoding,
    ssrc: u32,
    encoder: Encoder,
    resampler: Option<Resampler>,
    /// The odd byte of a PCM16 chunk, completed by the next chunk.
    carry: Option<u8>,
    agent_pcm: Box<[i16]>,
    codec_pcm: Box<[i16]>,
    playout: Playout,
    dtmf: DtmfSender,
    packet: Box<[u8]>,
    /// Sequence (playout numbering), timestamp and due time of the last frame polled.
    last: Option<(u16, u32, Instant)>,
    /// Frames withheld (hold) so far: they take no sequence numbers on the wire, so the
    /// far end sees no loss, only a timestamp jump.
    seq_skew: u16,
    /// The next packet sent follows withheld frames: set the marker (new talk-spurt).
    resume_marker: bool,
    packets: u64,
    octets: u64,
}

impl OutboundPath {
    /// `initial_sequence`/`initial_timestamp` should be random (RFC 3550 §5.1).
    pub fn new(
        params: StreamParams,
        agent: AudioEncoding,
        ssrc: u32,
        initial_sequence: u16,
        initial_timestamp: u32,
        start: Instant,
    ) -> Self {
        let mut cfg = Self::playout_config(params);
        cfg.initial_sequence = initial_sequence;
        cfg.initial_timestamp = initial_timestamp;
        Self {
            params,
            agent,
            ssrc,
            encoder: Encoder::new(params.codec),
            resampler: resampler(agent.sample_rate(), params.codec.sample_rate()),
            carry: None,
            agent_pcm: vec![0; AGENT_CHUNK].into_boxed_slice(),
            // 960 samples at 8 kHz become 2880 at 24 kHz... the other way, at most ×2
            // (8 → 16 kHz); a little slack for the resampler's phase.
            codec_pcm: vec![0; AGENT_CHUNK * 2 + 16].into_boxed_slice(),
            playout: Playout::new(cfg, start),
            dtmf: DtmfSender::new(Self::dtmf_config(params)),
            packet: vec![0; FIXED_HEADER_LEN + params.codec.payload_len(MAX_PTIME)]
                .into_boxed_slice(),
            last: None,
            seq_skew: 0,
            resume_marker: false,
            packets: 0,
            octets: 0,
        }
    }

    fn playout_config(params: StreamParams) -> PlayoutConfig {
        let mut cfg = PlayoutConfig::new(
            params.codec.pcm_samples(params.ptime),
            params.codec.timestamp_increment(params.ptime),
        );
        cfg.frame_interval = Duration::from_millis(u64::from(params.ptime));
        cfg
    }

    fn dtmf_config(params: StreamParams) -> DtmfSenderConfig {
        let ticks_per_100ms = (100 / params.ptime).max(1);
        DtmfSenderConfig {
            // telephone-event runs at 8000 Hz for all three codecs.
            ts_per_packet: u16::try_from(params.codec.timestamp_increment(params.ptime))
                .unwrap_or(160),
            tone_packets: u16::try_from(ticks_per_100ms).unwrap_or(5),
            gap_packets: u16::try_from(60 / params.ptime).unwrap_or(3).max(1),
            pause_packets: u16::try_from(500 / params.ptime).unwrap_or(25),
            ..DtmfSenderConfig::default()
        }
    }

    /// Switches codec, payload types or ptime (re-INVITE), keeping the sequence numbers
    /// and timestamps of our stream continuous. When the codec's sample rate or the
    /// ptime changes, queued agent audio is dropped (it was resampled for the old rate);
    /// the marks it released are returned for echoing.
    pub fn reconfigure(&mut self, params: StreamParams) -> Vec<String> {
        let old = self.params;
        let mut released = Vec::new();
        if params.codec != old.codec {
            self.encoder = Encoder::new(params.codec);
        }
        if params.codec.sample_rate() != old.codec.sample_rate() || params.ptime != old.ptime {
            self.playout.clear();
            while let Some(m) = self.playout.poll_mark() {
                released.push(m);
            }
            let mut cfg = Self::playout_config(params);
            let start = self.playout.poll_timeout();
            match self.last {
                Some((seq, ts, _)) => {
                    cfg.initial_sequence = seq.wrapping_add(1);
                    cfg.initial_timestamp = ts.wrapping_add(self.playout.config().ts_per_frame);
                }
                None => {
                    cfg.initial_sequence = self.playout.config().initial_sequence;
                    cfg.initial_timestamp = self.playout.config().initial_timestamp;
                }
            }
            self.playout = Playout::new(cfg, start);
            self.resampler = resampler(self.agent.sample_rate(), params.codec.sample_rate());
            self.packet =
                vec![0; FIXED_HEADER_LEN + params.codec.payload_len(MAX_PTIME)].into_boxed_slice();
        }
        if params.ptime != old.ptime || params.telephone_event.is_none() {
            self.dtmf = DtmfSender::new(Self::dtmf_config(params));
        }
        self.params = params;
        released
    }

    /// Queues agent audio of any length in the agent's format.
    pub fn push_agent(&mut self, bytes: &[u8]) {
        match self.agent {
            AudioEncoding::Mulaw8000 => {
                for chunk in bytes.chunks(AGENT_CHUNK) {
                    let n = g711::decode_ulaw(chunk, &mut self.agent_pcm);
                    self.push_pcm(n);
                }
            }
            AudioEncoding::Pcm16000 | AudioEncoding::Pcm24000 => {
                let mut rest = bytes;
                let mut n = 0;
                if let (Some(lo), Some((&hi, tail))) = (self.carry, rest.split_first()) {
                    self.agent_pcm[0] = i16::from_le_bytes([lo, hi]);
                    n = 1;
                    self.carry = None;
                    rest = tail;
                }
                let mut pairs = rest.chunks_exact(2);
                for pair in &mut pairs {
                    self.agent_pcm[n] = i16::from_le_bytes([pair[0], pair[1]]);
                    n += 1;
                    if n == self.agent_pcm.len() {
                        self.push_pcm(n);
                        n = 0;
                    }
                }
                if let [odd] = pairs.remainder() {
                    self.carry = Some(*odd);
                }
                self.push_pcm(n);
            }
        }
    }

    /// Resamples `agent_pcm[..n]` to the codec's rate and queues it.
    fn push_pcm(&mut self, n: usize) {
        let Some(r) = &mut self.resampler else {
            self.playout.push(&self.agent_pcm[..n]);
            return;
        };
        let mut at = 0;
        while at < n {
            let done = r.process(&self.agent_pcm[at..n], &mut self.codec_pcm);
            self.playout.push(&self.codec_pcm[..done.written]);
            if done.consumed == 0 {
                break; // cannot happen: codec_pcm holds a whole chunk's output
            }
            at += done.consumed;
        }
    }

    /// Adds a mark after the queued audio. Returns it back when too many are pending:
    /// echo it at once rather than lose it.
    pub fn mark(&mut self, name: String) -> Option<String> {
        match self.playout.mark(name) {
            Ok(()) => None,
            Err(PlayoutError::TooManyMarks(name)) => Some(name),
        }
    }

    /// Barge-in: drops queued audio; pending marks become ready at once.
    pub fn clear(&mut self) {
        self.playout.clear();
    }

    /// Queues RFC 4733 digits. Fails without a negotiated telephone-event type.
    pub fn send_dtmf(&mut self, digits: &str) -> Result<usize, &'static str> {
        if self.params.telephone_event.is_none() {
            return Err("no telephone-event payload type negotiated");
        }
        self.dtmf.queue(digits).map_err(|e| match e {
            super::dtmf::DtmfError::QueueFull => "too many digits queued",
            _ => "invalid digit",
        })
    }

    pub fn poll_mark(&mut self) -> Option<String> {
        self.playout.poll_mark()
    }

    pub fn poll_timeout(&self) -> Instant {
        self.playout.poll_timeout()
    }

    pub fn drain_time(&self, now: Instant, cap: Duration) -> Duration {
        self.playout.drain_time(now, cap)
    }

    pub fn is_drained(&self) -> bool {
        self.playout.is_drained()
    }

    /// RTP packets and payload octets produced so far (for SR sender info).
    pub fn sent(&self) -> (u64, u64) {
        (self.packets, self.octets)
    }

    /// Frame slots passed over after stalls (packets never sent), and agent audio dropped
    /// for want of queue room, in ms.
    pub fn losses(&self) -> (u64, u64) {
        let stats = self.playout.stats();
        let rate = u64::from(self.params.codec.sample_rate()).max(1);
        (stats.skipped_frames, stats.overflow_samples * 1000 / rate)
    }

    /// Our stream's RTP timestamp at `now` (for SR), extrapolated from the last frame.
    pub fn rtp_timestamp_at(&self, now: Instant) -> u32 {
        match self.last {
            Some((_, ts, due)) => ts.wrapping_add(clock_units(
                now.saturating_duration_since(due),
                self.params.codec.clock_rate(),
            )),
            None => self.playout.config().initial_timestamp,
        }
    }

    /// The next due frame as an RTP packet (see [`Polled`]). `send` false (hold) advances
    /// the clock without encoding.
    pub fn poll(&mut self, now: Instant, send: bool) -> Polled<'_> {
        let Some(frame) = self.playout.poll(now) else {
            return Polled::Idle;
        };
        self.last = Some((frame.sequence, frame.timestamp, frame.due));
        let event = match self.params.telephone_event {
            Some(pt) => self.dtmf.tick(frame.timestamp).map(|p| (pt, p)),
            None => None,
        };
        if !send {
            self.seq_skew = self.seq_skew.wrapping_add(1);
            self.resume_marker = true;
            return Polled::Withheld;
        }
        let sequence = frame.sequence.wrapping_sub(self.seq_skew);
        let resumed = std::mem::take(&mut self.resume_marker);
        let (header, payload_len) = match event {
            Some((pt, ev)) => {
                let header = RtpHeader {
                    marker: ev.marker || resumed,
                    payload_type: pt,
                    sequence,
                    timestamp: ev.timestamp,
                    ssrc: self.ssrc,
                };
                let n = ev.payload.len();
                self.packet[FIXED_HEADER_LEN..FIXED_HEADER_LEN + n].copy_from_slice(&ev.payload);
                (header, n)
            }
            None => {
                let header = RtpHeader {
                    marker: frame.marker || resumed,
                    payload_type: self.params.payload_type,
                    sequence,
                    timestamp: frame.timestamp,
                    ssrc: self.ssrc,
                };
                let n = self
                    .encoder
                    .encode(frame.samples, &mut self.packet[FIXED_HEADER_LEN..]);
                (header, n)
            }
        };
        if header.write_header(&mut self.packet).is_err() {
            // Only a payload type above 127 fails, which SDP parsing never yields.
            return Polled::Withheld;
        }
        self.packets += 1;
        self.octets += payload_len as u64;
        Polled::Packet(&self.packet[..FIXED_HEADER_LEN + payload_len])
    }
}

// ---------------------------------------------------------------------------------------
// The task.

/// Steady clock for inbound ticks: slot k is due at `start + k × interval`.
#[derive(Debug)]
struct Ticker {
    start: Instant,
    interval: Duration,
    next: u64,
    /// Ticks passed over after stalls.
    skipped: u64,
}

impl Ticker {
    fn due(&self, slot: u64) -> Instant {
        let slot = u32::try_from(slot).unwrap_or(u32::MAX);
        self.start + self.interval * slot
    }

    fn next_due(&self) -> Instant {
        self.due(self.next)
    }

    /// True when a tick is due at `now`; after a stall at most [`TICK_BURST`] run.
    fn poll(&mut self, now: Instant) -> bool {
        if now < self.next_due() {
            return false;
        }
        let elapsed = now.duration_since(self.start).as_nanos();
        let due_count =
            u64::try_from(elapsed / self.interval.as_nanos().max(1) + 1).unwrap_or(u64::MAX);
        if due_count - self.next > TICK_BURST {
            self.skipped += due_count - TICK_BURST - self.next;
            self.next = due_count - TICK_BURST;
        }
        self.next += 1;
        true
    }

    /// Changes the interval from the next tick on.
    fn set_interval(&mut self, interval: Duration) {
        if interval != self.interval {
            self.start = self.next_due();
            self.next = 0;
            self.interval = interval;
        }
    }
}

/// Pre-resolved metric handles, so the hot path never looks a series up.
struct Meters {
    drops: [::metrics::Counter; DropCause::ALL.len()],
    packets_in: ::metrics::Counter,
    packets_out: ::metrics::Counter,
    rtp_to_agent: ::metrics::Histogram,
    slips_in: ::metrics::Counter,
    slips_out: ::metrics::Counter,
    overflow_ms: ::metrics::Counter,
}

impl Meters {
    fn new() -> Self {
        Self {
            drops: DropCause::ALL.map(|c| metrics::media_drop_counter(c.label())),
            packets_in: metrics::media_packets_counter("in"),
            packets_out: metrics::media_packets_counter("out"),
            rtp_to_agent: metrics::media_rtp_to_agent_histogram(),
            slips_in: metrics::media_clock_slips_counter("in"),
            slips_out: metrics::media_clock_slips_counter("out"),
            overflow_ms: metrics::media_agent_overflow_counter(),
        }
    }
}

/// Decrements the live-session gauge however the task ends (even by panic or abort).
struct LiveGuard;

impl LiveGuard {
    fn new() -> Self {
        metrics::media_sessions(1.0);
        LiveGuard
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        metrics::media_sessions(-1.0);
    }
}

/// All per-call state except the sockets and the receiving channel ends.
struct Core {
    negotiated: Negotiated,
    no_audio_timeout: Duration,
    inactivity_timeout: Duration,
    hangup_drain_cap: Duration,
    ssrc: u32,
    cname: String,
    inbound: InboundPath,
    outbound: OutboundPath,
    in_clock: Ticker,
    to_agent: mpsc::Sender<ToAgent>,
    /// The to_agent channel is closed: end the call.
    agent_lost: bool,
    /// Early media: see [`SessionConfig::early`].
    early: bool,
    /// Still reading from_agent (false after hang-up or its end).
    agent_open: bool,
    latched: Option<SocketAddr>,
    /// Where the caller's RTCP comes from, and whether it came on the RTP port.
    rtcp_latched: Option<(SocketAddr, bool)>,
    rtcp_timer: RtcpTimer,
    /// Packets we had sent at the last report (SR only if we sent since).
    packets_at_report: u64,
    /// Start of the session, or the end of the last hold.
    activity_since: Instant,
    last_rtp: Option<Instant>,
    /// Hang-up drain deadline.
    draining: Option<Instant>,
    recv_errors: u32,
    /// Plain RTP or SRTP, as negotiated.
    protection: Protection,
    stats: MediaStats,
    meters: Meters,
}

enum Exit {
    Stopped,
    Ended(DisconnectionReason),
}

fn usable(addr: SocketAddr) -> Option<SocketAddr> {
    (!addr.ip().is_unspecified() && addr.port() != 0).then_some(addr)
}

impl Core {
    fn new(cfg: SessionConfig, to_agent: mpsc::Sender<ToAgent>, now: Instant) -> Self {
        let params = StreamParams::from_negotiated(&cfg.negotiated);
        Self {
            protection: Protection::new(cfg.negotiated.srtp.as_ref()),
            inbound: InboundPath::new(params, cfg.agent_encoding, now),
            outbound: OutboundPath::new(
                params,
                cfg.agent_encoding,
                cfg.ssrc,
                rand::random(),
                rand::random(),
                now,
            ),
            in_clock: Ticker {
                start: now,
                interval: Duration::from_millis(u64::from(params.ptime)),
                next: 0,
                skipped: 0,
            },
            negotiated: cfg.negotiated,
            no_audio_timeout: cfg.no_audio_timeout,
            inactivity_timeout: cfg.inactivity_timeout,
            hangup_drain_cap: cfg.hangup_drain_cap,
            ssrc: cfg.ssrc,
            cname: cfg.cname,
            to_agent,
            agent_lost: false,
            early: cfg.early,
            agent_open: true,
            latched: None,
            rtcp_latched: None,
            rtcp_timer: RtcpTimer::new(now, RtcpTimer::DEFAULT_INTERVAL, rand::random()),
            packets_at_report: 0,
            activity_since: now,
            last_rtp: None,
            draining: None,
            recv_errors: 0,
            stats: MediaStats::default(),
            meters: Meters::new(),
        }
    }

    fn dropped(&mut self, cause: DropCause) {
        self.stats.packets_dropped += u64::from(cause != DropCause::AgentBackpressure);
        // ALL lists every variant in declaration order.
        self.meters.drops[cause as usize].increment(1);
    }

    /// Whether we may send RTP: our direction allows it and the caller does not hold us.
    fn sending(&self) -> bool {
        !self.early && self.negotiated.direction.sends() && !self.negotiated.remote_hold
    }

    /// Whether caller audio is expected (timeouts apply): a two-way, unheld call.
    fn expecting(&self) -> bool {
        !self.early
            && self.negotiated.direction == Direction::SendRecv
            && !self.negotiated.remote_hold
    }

    fn rtp_dest(&self) -> Option<SocketAddr> {
        self.latched.or_else(|| usable(self.negotiated.remote_rtp))
    }

    fn rtcp_dest(&self) -> Option<(SocketAddr, bool)> {
        if let Some(latched) = self.rtcp_latched {
            return Some(latched);
        }
        if self.negotiated.rtcp_mux {
            return self.rtp_dest().map(|a| (a, true));
        }
        match self.latched {
            Some(l) if l != self.negotiated.remote_rtp => {
                let port = l.port().checked_add(1)?;
                Some((SocketAddr::new(l.ip(), port), false))
            }
            _ => self
                .negotiated
                .remote_rtcp
                .and_then(usable)
                .map(|a| (a, false)),
        }
    }

    /// Brings the slip and overflow counters up to date: audio lost to a late task or to
    /// an agent far ahead of real time is counted, never silent. A few compares per tick.
    fn account_losses(&mut self) {
        let slips_in = self.in_clock.skipped;
        let (slips_out, overflow_ms) = self.outbound.losses();
        let stats = &mut self.stats;
        if slips_in > stats.clock_slips_in {
            self.meters
                .slips_in
                .increment(slips_in - stats.clock_slips_in);
            stats.clock_slips_in = slips_in;
        }
        if slips_out > stats.clock_slips_out {
            self.meters
                .slips_out
                .increment(slips_out - stats.clock_slips_out);
            stats.clock_slips_out = slips_out;
        }
        if overflow_ms > stats.agent_overflow_ms {
            self.meters
                .overflow_ms
                .increment(overflow_ms - stats.agent_overflow_ms);
            stats.agent_overflow_ms = overflow_ms;
        }
    }

    /// Hands a message to the agent without waiting.
    fn tell_agent(&mut self, msg: ToAgent) {
        match self.to_agent.try_send(msg) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.stats.agent_dropped += 1;
                self.dropped(DropCause::AgentBackpressure);
            }
            Err(TrySendError::Closed(_)) => self.agent_lost = true,
        }
    }

    /// The no-audio or inactivity deadline, with the reason it would end the call.
    fn media_deadline(&self) -> Option<(Instant, DisconnectionReason)> {
        if !self.expecting() {
            return None;
        }
        Some(match self.last_rtp {
            None => (
                self.activity_since + self.no_audio_timeout,
                DisconnectionReason::ErrorNoAudioReceived,
            ),
            Some(t) => (
                t.max(self.activity_since) + self.inactivity_timeout,
                DisconnectionReason::Inactivity,
            ),
        })
    }

    fn next_deadline(&self) -> Instant {
        let mut d = self
            .in_clock
            .next_due()
            .min(self.outbound.poll_timeout())
            .min(self.rtcp_timer.poll_timeout());
        if let Some(drain) = self.draining {
            d = d.min(drain);
        }
        if let Some((t, _)) = self.media_deadline() {
            d = d.min(t);
        }
        d
    }

    /// Step 1 of the loop: everything that is due at `now`.
    fn on_timers(&mut self, now: Instant, socket: &RtpSocket) -> Option<Exit> {
        while self.in_clock.poll(now) {
            self.inbound.tick();
            while let Some((frame, arrival)) = self.inbound.pop_frame() {
                self.stats.frames_to_agent += 1;
                self.tell_agent(ToAgent::Media(frame));
                if let Some(at) = arrival {
                    let waited = Instant::now().saturating_duration_since(at);
                    self.meters.rtp_to_agent.record(waited.as_secs_f64());
                }
            }
            self.in_clock.set_interval(self.inbound.packet_interval());
        }

        let send = self.sending();
        let dest = self.rtp_dest();
        loop {
            match self.outbound.poll(now, send && dest.is_some()) {
                Polled::Idle => break,
                Polled::Withheld => {}
                Polled::Packet(p) => {
                    let Some(dest) = dest else { continue };
                    let wire = match self.protection.outgoing_rtp(p) {
                        Ok(wire) => wire,
                        Err(cause) => {
                            self.stats.packets_dropped += 1;
                            self.meters.drops[cause as usize].increment(1);
                            continue;
                        }
                    };
                    match socket.send_rtp(wire, dest) {
                        Ok(_) => {
                            self.stats.packets_out += 1;
                            self.meters.packets_out.increment(1);
                        }
                        Err(e) => {
                            tracing::trace!(%dest, error = %e, "RTP send failed");
                            self.stats.packets_dropped += 1;
                            self.meters.drops[DropCause::SendFailed as usize].increment(1);
                        }
                    }
                }
            }
        }
        self.account_losses();
        while let Some(name) = self.outbound.poll_mark() {
            self.tell_agent(ToAgent::MarkPlayed(name));
        }

        if now >= self.rtcp_timer.poll_timeout() && self.rtcp_timer.on_timeout(now, rand::random())
        {
            self.send_rtcp(now, socket, false);
        }
        if self.agent_lost {
            return Some(Exit::Ended(
                DisconnectionReason::ErrorLlmWebsocketLostConnection,
            ));
        }
        if self.draining.is_some_and(|d| now >= d) {
            return Some(Exit::Ended(DisconnectionReason::AgentHangup));
        }
        match self.media_deadline() {
            Some((t, reason)) if now >= t => Some(Exit::Ended(reason)),
            _ => None,
        }
    }

    fn on_command(&mut self, cmd: Option<MediaCommand>, now: Instant) -> Option<Exit> {
        match cmd {
            Some(MediaCommand::Update(n)) => {
                self.update(n, now);
                None
            }
            Some(MediaCommand::Answered(n)) => {
                self.update(n, now);
                if std::mem::take(&mut self.early) {
                    // The answered stream may come from elsewhere (another SSRC, even
                    // another address): latch afresh, and time the audio from now.
                    self.latched = None;
                    self.rtcp_latched = None;
                    self.activity_since = now;
                    self.tell_agent(ToAgent::Answered);
                }
                None
            }
            Some(MediaCommand::Stop) | None => Some(Exit::Stopped),
        }
    }

    fn update(&mut self, n: Negotiated, now: Instant) {
        let was_expecting = self.expecting();
        if n.remote_rtp != self.negotiated.remote_rtp {
            // The caller moved: latch afresh onto whatever comes next.
            self.latched = None;
            self.rtcp_latched = None;
        }
        self.protection.update(n.srtp.as_ref());
        let params = StreamParams::from_negotiated(&n);
        self.inbound.reconfigure(params);
        for name in self.outbound.reconfigure(params) {
            self.tell_agent(ToAgent::MarkPlayed(name));
        }
        tracing::debug!(
            codec = ?n.codec, pt = n.payload_type, direction = ?n.direction,
            remote_hold = n.remote_hold, remote = %n.remote_rtp, "media updated"
        );
        self.negotiated = n;
        if !was_expecting && self.expecting() {
            self.activity_since = now;
        }
    }

    fn on_agent(&mut self, msg: Option<FromAgent>, now: Instant) -> Option<Exit> {
        match msg {
            None => {
                self.agent_open = false;
                if self.draining.is_none() {
                    return Some(Exit::Ended(
                        DisconnectionReason::ErrorLlmWebsocketLostConnection,
                    ));
                }
            }
            Some(FromAgent::Media(bytes)) => self.outbound.push_agent(&bytes),
            Some(FromAgent::Mark(name)) => {
                if let Some(name) = self.outbound.mark(name) {
                    self.tell_agent(ToAgent::MarkPlayed(name));
                }
            }
            // The marks it releases are echoed by the timer step, which runs next.
            Some(FromAgent::Clear) => self.outbound.clear(),
            Some(FromAgent::SendDtmf(digits)) => {
                if let Err(why) = self.outbound.send_dtmf(&digits) {
                    tracing::info!(%digits, why, "agent's send_dtmf ignored");
                }
            }
            Some(FromAgent::Hangup) => {
                self.agent_open = false;
                let left = self.outbound.drain_time(now, self.hangup_drain_cap);
                self.draining = Some(now + left);
            }
            Some(FromAgent::Failed(reason)) => return Some(Exit::Ended(reason)),
        }
        None
    }

    fn on_rtp_datagram(&mut self, buf: &mut [u8], src: SocketAddr, now: Instant) {
        if self.latched.is_some_and(|l| l != src) {
            if is_rtcp(buf) && self.latched.is_some_and(|l| l.ip() == src.ip()) {
                self.on_rtcp_datagram(buf, src, now, true);
            } else {
                self.dropped(DropCause::ForeignSource);
            }
            return;
        }
        if is_rtcp(buf) {
            self.on_rtcp_datagram(buf, src, now, true);
            return;
        }
        let len = match self.protection.incoming_rtp(buf) {
            Ok(len) => len,
            Err(cause) => return self.dropped(cause),
        };
        let pkt = match RtpPacket::parse(&buf[..len]) {
            Ok(p) => p,
            Err(_) => return self.dropped(DropCause::Malformed),
        };
        match self.inbound.on_packet(&pkt, now) {
            Ok(received) => {
                if self.latched.is_none() {
                    tracing::debug!(%src, sdp = %self.negotiated.remote_rtp, "RTP source latched");
                    self.latched = Some(src);
                }
                self.last_rtp = Some(now);
                self.stats.packets_in += 1;
                self.meters.packets_in.increment(1);
                if let Received::Dtmf(digit) = received {
                    self.stats.dtmf_in += 1;
                    self.tell_agent(ToAgent::Dtmf(digit));
                }
            }
            Err(cause) => self.dropped(cause),
        }
    }

    fn on_rtcp_datagram(&mut self, buf: &mut [u8], src: SocketAddr, now: Instant, muxed: bool) {
        if self.latched.is_some_and(|l| l.ip() != src.ip()) {
            return self.dropped(DropCause::ForeignSource);
        }
        let len = match self.protection.incoming_rtcp(buf) {
            Ok(len) => len,
            Err(cause) => return self.dropped(cause),
        };
        let Ok(compound) = parse_compound(&buf[..len]) else {
            return self.dropped(DropCause::Malformed);
        };
        self.stats.rtcp_in += 1;
        // Latch RTCP only once RTP is latched, so the source IP was checked above.
        if self.rtcp_latched.is_none() && self.latched.is_some() {
            self.rtcp_latched = Some((src, muxed));
        }
        for packet in compound {
            match packet {
                RtcpPacket::SenderReport { ssrc, info, .. } => {
                    self.inbound.on_sender_report(ssrc, info.ntp, now);
                }
                RtcpPacket::Bye { .. } => tracing::debug!("caller sent RTCP BYE"),
                _ => {}
            }
        }
    }

    /// Sends a report (SR or RR, SDES CNAME), with BYE at the end of the session.
    fn send_rtcp(&mut self, now: Instant, socket: &RtpSocket, bye: bool) {
        let Some((dest, muxed)) = self.rtcp_dest() else {
            return;
        };
        let mut buf = [0u8; 400 + SRTP_OVERHEAD];
        let block = self.inbound.report_block(now);
        let blocks = block.as_slice();
        let (packets, octets) = self.outbound.sent();
        let mut w = RtcpWriter::new(&mut buf);
        let report = if packets > self.packets_at_report {
            let since_epoch = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            let info = SenderInfo {
                ntp: ntp_from_unix(since_epoch),
                rtp_timestamp: self.outbound.rtp_timestamp_at(now),
                // The wire fields are 32 bits and wrap, as RFC 3550 intends.
                packet_count: packets as u32,
                octet_count: octets as u32,
            };
            w.sender_report(self.ssrc, &info, blocks)
        } else {
            w.receiver_report(self.ssrc, blocks)
        };
        self.packets_at_report = packets;
        let cname = self.cname.as_bytes();
        let cname = &cname[..cname.len().min(255)];
        let written = report
            .and_then(|()| w.sdes_cname(self.ssrc, cname))
            .and_then(|()| {
                if bye {
                    w.bye(&[self.ssrc], None)
                } else {
                    Ok(())
                }
            });
        if written.is_err() {
            // 400 bytes hold SR + one block + SDES(255) + BYE; nothing else can fail.
            return;
        }
        let len = w.len();
        let Ok(len) = self.protection.outgoing_rtcp(&mut buf, len) else {
            return;
        };
        let sent = if muxed {
            socket.send_rtp(&buf[..len], dest)
        } else {
            socket.send_rtcp(&buf[..len], dest)
        };
        match sent {
            Ok(_) => self.stats.rtcp_out += 1,
            Err(e) => tracing::trace!(%dest, error = %e, "RTCP send failed"),
        }
    }

    fn on_recv_error(&mut self, e: std::io::Error) -> Option<Exit> {
        self.recv_errors += 1;
        tracing::debug!(error = %e, "media socket receive error");
        (self.recv_errors >= MAX_RECV_ERRORS)
            .then_some(Exit::Ended(DisconnectionReason::ErrorUnknown))
    }

    async fn finish(mut self, exit: Exit, socket: &RtpSocket) -> MediaOutcome {
        let reason = match exit {
            Exit::Stopped => None,
            Exit::Ended(r) => Some(r),
        };
        tracing::debug!(reason = ?reason.map(|r| r.as_str()), "media session ending");
        if !self.agent_lost {
            match self.to_agent.try_send(ToAgent::Stop) {
                Err(TrySendError::Full(stop)) => {
                    let _ = tokio::time::timeout(STOP_SEND_WAIT, self.to_agent.send(stop)).await;
                }
                Ok(()) | Err(TrySendError::Closed(_)) => {}
            }
        }
        self.send_rtcp(Instant::now(), socket, true);
        self.stats.packets_lost = self.inbound.packets_lost();
        self.stats.concealed_frames = self.inbound.concealed_frames();
        MediaOutcome {
            reason,
            stats: self.stats,
        }
    }
}

/// Starts the media task for one call. It runs until [`MediaCommand::Stop`], the agent
/// ends, or a timeout; the socket (and its ports) is released when it returns. Runs in the
/// caller's tracing span (the call's), inside a `media` span.
pub fn spawn(socket: RtpSocket, cfg: SessionConfig, agent: AgentLink) -> MediaHandle {
    let (commands, rx) = mpsc::channel(8);
    let span = tracing::info_span!("media", port = socket.port());
    let done = tokio::spawn(run(socket, cfg, agent, rx).instrument(span));
    MediaHandle { commands, done }
}

async fn run(
    socket: RtpSocket,
    cfg: SessionConfig,
    agent: AgentLink,
    mut commands: mpsc::Receiver<MediaCommand>,
) -> MediaOutcome {
    let _live = LiveGuard::new();
    let AgentLink {
        to_agent,
        mut from_agent,
    } = agent;
    let mut core = Core::new(cfg, to_agent, Instant::now());
    let mut rtp_buf = vec![0u8; DATAGRAM_BUF];
    let mut rtcp_buf = vec![0u8; DATAGRAM_BUF];
    let sleep = tokio::time::sleep_until(Instant::now().into());
    tokio::pin!(sleep);
    let mut armed: Option<Instant> = None;

    let exit = loop {
        let now = Instant::now();
        if let Some(exit) = core.on_timers(now, &socket) {
            break exit;
        }
        let deadline = core.next_deadline();
        if armed != Some(deadline) {
            sleep.as_mut().reset(deadline.into());
            armed = Some(deadline);
        }
        let exit = tokio::select! {
            biased;
            cmd = commands.recv() => core.on_command(cmd, Instant::now()),
            msg = from_agent.recv(), if core.agent_open => core.on_agent(msg, Instant::now()),
            r = socket.rtp().recv_from(&mut rtp_buf) => match r {
                Ok((len, src)) => {
                    core.recv_errors = 0;
                    core.on_rtp_datagram(&mut rtp_buf[..len], src, Instant::now());
                    None
                }
                Err(e) => core.on_recv_error(e),
            },
            r = socket.rtcp().recv_from(&mut rtcp_buf) => match r {
                Ok((len, src)) => {
                    core.on_rtcp_datagram(&mut rtcp_buf[..len], src, Instant::now(), false);
                    None
                }
                Err(e) => core.on_recv_error(e),
            },
            () = &mut sleep => None,
        };
        if let Some(exit) = exit {
            break exit;
        }
    };
    core.finish(exit, &socket).await
}

#[cfg(test)]
mod tests;
