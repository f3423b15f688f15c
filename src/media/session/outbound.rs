//! Outbound: agent audio → RTP. [`OutboundPath`] decodes and resamples the agent's audio
//! into the playout queue, and per frame encodes the RTP packet (or a telephone-event
//! packet in its place).

use std::time::{Duration, Instant};

use super::{resampler, StreamParams, MAX_PTIME};
use crate::media::codec::{g711, Encoder};
use crate::media::dtmf::{DtmfError, DtmfSender, DtmfSenderConfig};
use crate::media::playout::{Playout, PlayoutConfig, PlayoutError};
use crate::media::resample::Resampler;
use crate::media::rtp::{clock_units, RtpHeader, FIXED_HEADER_LEN};
use crate::model::AudioEncoding;

/// Agent samples decoded per step when pushing agent audio.
const AGENT_CHUNK: usize = 960;

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
            DtmfError::QueueFull => "too many digits queued",
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

    /// Agent audio queued for playout, in samples at the codec's rate.
    pub fn queued_samples(&self) -> usize {
        self.playout.queued_samples()
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
