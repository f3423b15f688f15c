//! Inbound: caller RTP → 20 ms agent frames. [`InboundPath`] validates each packet,
//! tracks its sequence, stores it in the jitter buffer (or reads a DTMF event from it),
//! and per tick releases one packet's audio through the [`Converter`] into the agent's
//! format.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::{resampler, DropCause, StreamParams};
use crate::media::codec::{g711, Codec, Decoder};
use crate::media::dtmf::DtmfReceiver;
use crate::media::jitter::{Insert, JitterBuffer, JitterConfig, Pop};
use crate::media::resample::Resampler;
use crate::media::rtcp::{ReceptionReporter, ReportBlock};
use crate::media::rtp::{clock_units, RtpPacket, SeqStatus, SeqTracker};
use crate::model::AudioEncoding;

/// Largest inbound audio payload: 120 ms of any of our codecs (8 bytes per ms).
const MAX_IN_PAYLOAD: usize = 960;
/// Inbound packet durations we follow; others keep the current tick.
const MIN_IN_MS: u32 = 10;
const MAX_IN_MS: u32 = 120;
/// Jitter buffer sizes, in packets (see the session docs).
const JITTER_TARGET: usize = 2;
const JITTER_MAX: usize = 5;
const JITTER_CAPACITY: usize = 16;
/// Agent frames per shared `Bytes` block.
const FRAMES_PER_BLOCK: usize = 32;

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
