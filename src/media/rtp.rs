//! RTP packets (RFC 3550 §5.1): a zero-copy view for the receive path, a writer that fills a
//! caller's buffer for the send path, and a sequence tracker (RFC 3550 Appendix A.1/A.8)
//! that validates a source and keeps the loss and jitter statistics RTCP reports.
//!
//! Everything here is sans-IO and allocation-free: the caller owns the buffers and passes
//! arrival times in, so the hot path can be tested with synthetic clocks and hostile bytes.
//!
//! Receive path, per datagram:
//! 1. [`is_rtcp`] to demultiplex RTP from RTCP when both share a port (RFC 5761).
//! 2. [`RtpPacket::parse`]; count the [`RtpError`] and drop the datagram on failure.
//! 3. [`SeqTracker::update`] with the sequence, timestamp and arrival time in clock units
//!    ([`clock_units`]); only [`SeqStatus::Valid`] / [`SeqStatus::Restarted`] packets go on
//!    to the jitter buffer, keyed by their extended sequence number.

use std::time::Duration;

/// The only RTP version in use.
pub const RTP_VERSION: u8 = 2;
/// Length of the fixed header, without CSRCs or extension.
pub const FIXED_HEADER_LEN: usize = 12;

/// Why a datagram is not a well-formed RTP packet. The caller counts these; none is fatal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RtpError {
    #[error("shorter than the 12-byte RTP header")]
    TooShort,
    #[error("RTP version {0}, expected 2")]
    BadVersion(u8),
    #[error("CSRC list runs past the end of the packet")]
    CsrcOverrun,
    #[error("header extension runs past the end of the packet")]
    ExtensionOverrun,
    #[error("padding length is zero or longer than the payload")]
    BadPadding,
}

/// Why [`RtpHeader::write`] could not write a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    #[error("output buffer too small: {needed} bytes needed")]
    BufferTooSmall { needed: usize },
    #[error("payload type {0} does not fit in 7 bits")]
    PayloadTypeOutOfRange(u8),
}

/// True when a datagram on a shared RTP/RTCP port is RTCP (RFC 5761 §4: the second octet,
/// read as RTCP packet type, is 192..=223; RTP payload types there are avoided for this reason).
pub fn is_rtcp(buf: &[u8]) -> bool {
    buf.len() >= 2 && (192..=223).contains(&buf[1])
}

/// Converts an elapsed time into RTP clock units, wrapping like an RTP timestamp does.
/// The tracker's jitter needs arrival times on the same clock as the media timestamps.
pub fn clock_units(elapsed: Duration, clock_rate: u32) -> u32 {
    let units = elapsed.as_nanos() * u128::from(clock_rate) / 1_000_000_000;
    // Truncation is intended: RTP clocks wrap modulo 2^32.
    units as u32
}

/// A validated, zero-copy view of one RTP packet.
#[derive(Debug, Clone, Copy)]
pub struct RtpPacket<'a> {
    buf: &'a [u8],
    /// Offset of the header extension's 4-byte preamble, when present.
    ext_at: Option<usize>,
    payload_start: usize,
    payload_end: usize,
}

impl<'a> RtpPacket<'a> {
    /// Parses and bounds-checks a datagram. Never panics, whatever the bytes.
    pub fn parse(buf: &'a [u8]) -> Result<Self, RtpError> {
        if buf.len() < FIXED_HEADER_LEN {
            return Err(RtpError::TooShort);
        }
        let version = buf[0] >> 6;
        if version != RTP_VERSION {
            return Err(RtpError::BadVersion(version));
        }
        let csrc_count = usize::from(buf[0] & 0x0f);
        let mut at = FIXED_HEADER_LEN + 4 * csrc_count;
        if at > buf.len() {
            return Err(RtpError::CsrcOverrun);
        }
        let mut ext_at = None;
        if buf[0] & 0x10 != 0 {
            if at + 4 > buf.len() {
                return Err(RtpError::ExtensionOverrun);
            }
            let words = usize::from(u16::from_be_bytes([buf[at + 2], buf[at + 3]]));
            ext_at = Some(at);
            at += 4 + 4 * words;
            if at > buf.len() {
                return Err(RtpError::ExtensionOverrun);
            }
        }
        let mut end = buf.len();
        if buf[0] & 0x20 != 0 {
            // The last octet counts the padding, itself included, so zero is malformed.
            let pad = usize::from(buf[end - 1]);
            if pad == 0 || pad > end - at {
                return Err(RtpError::BadPadding);
            }
            end -= pad;
        }
        Ok(Self {
            buf,
            ext_at,
            payload_start: at,
            payload_end: end,
        })
    }

    pub fn marker(&self) -> bool {
        self.buf[1] & 0x80 != 0
    }

    pub fn payload_type(&self) -> u8 {
        self.buf[1] & 0x7f
    }

    pub fn sequence(&self) -> u16 {
        u16::from_be_bytes([self.buf[2], self.buf[3]])
    }

    pub fn timestamp(&self) -> u32 {
        u32::from_be_bytes([self.buf[4], self.buf[5], self.buf[6], self.buf[7]])
    }

    pub fn ssrc(&self) -> u32 {
        u32::from_be_bytes([self.buf[8], self.buf[9], self.buf[10], self.buf[11]])
    }

    pub fn csrc_count(&self) -> usize {
        usize::from(self.buf[0] & 0x0f)
    }

    /// The contributing sources (mixers only; a B2BUA mostly ignores them).
    pub fn csrcs(&self) -> impl Iterator<Item = u32> + 'a {
        let list = &self.buf[FIXED_HEADER_LEN..FIXED_HEADER_LEN + 4 * self.csrc_count()];
        list.chunks_exact(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
    }

    /// The header extension as (profile-defined 16 bits, body), when present.
    pub fn extension(&self) -> Option<(u16, &'a [u8])> {
        let at = self.ext_at?;
        let profile = u16::from_be_bytes([self.buf[at], self.buf[at + 1]]);
        Some((profile, &self.buf[at + 4..self.payload_start]))
    }

    /// Number of padding octets removed from the end (0 when the P bit is clear).
    pub fn padding_len(&self) -> usize {
        self.buf.len() - self.payload_end
    }

    /// The media payload, without header, extension or padding.
    pub fn payload(&self) -> &'a [u8] {
        &self.buf[self.payload_start..self.payload_end]
    }

    /// The fields a re-sender needs, e.g. to relay with a new SSRC.
    pub fn header(&self) -> RtpHeader {
        RtpHeader {
            marker: self.marker(),
            payload_type: self.payload_type(),
            sequence: self.sequence(),
            timestamp: self.timestamp(),
            ssrc: self.ssrc(),
        }
    }
}

/// The fields of an outgoing packet. We never send CSRCs, extensions or padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpHeader {
    pub marker: bool,
    pub payload_type: u8,
    pub sequence: u16,
    pub timestamp: u32,
    pub ssrc: u32,
}

impl RtpHeader {
    /// Writes the 12-byte header to the start of `out`, so an encoder can then write the
    /// payload straight into `out[12..]` without an intermediate copy. Returns 12.
    pub fn write_header(&self, out: &mut [u8]) -> Result<usize, WriteError> {
        if self.payload_type > 0x7f {
            return Err(WriteError::PayloadTypeOutOfRange(self.payload_type));
        }
        let Some(head) = out.get_mut(..FIXED_HEADER_LEN) else {
            return Err(WriteError::BufferTooSmall {
                needed: FIXED_HEADER_LEN,
            });
        };
        head[0] = RTP_VERSION << 6;
        head[1] = (u8::from(self.marker) << 7) | self.payload_type;
        head[2..4].copy_from_slice(&self.sequence.to_be_bytes());
        head[4..8].copy_from_slice(&self.timestamp.to_be_bytes());
        head[8..12].copy_from_slice(&self.ssrc.to_be_bytes());
        Ok(FIXED_HEADER_LEN)
    }

    /// Writes header and payload into `out`; returns the packet length.
    pub fn write(&self, payload: &[u8], out: &mut [u8]) -> Result<usize, WriteError> {
        let needed = FIXED_HEADER_LEN + payload.len();
        if out.len() < needed {
            return Err(WriteError::BufferTooSmall { needed });
        }
        self.write_header(out)?;
        out[FIXED_HEADER_LEN..needed].copy_from_slice(payload);
        Ok(needed)
    }
}

/// What [`SeqTracker::update`] made of one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqStatus {
    /// Part of the validated stream (in order, duplicate or mildly reordered).
    Valid { ext_seq: u64 },
    /// The source jumped and the next packet confirmed the jump: statistics restarted, and
    /// anything keyed by the old extended numbers (the jitter buffer) must be reset.
    Restarted { ext_seq: u64 },
    /// The source is not validated yet (RFC 3550 A.1 probation); drop the packet.
    Probation,
    /// A jump beyond the dropout/misorder limits; dropped unless the next packet confirms it.
    BadJump,
    /// Reordered from before the first validated packet; it has no extended number. Drop it.
    Stale,
}

/// Statistics of one source, as RTCP reception reports need them (RFC 3550 §6.4.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SeqStats {
    /// Packets accepted as part of the stream (duplicates included, as in A.3).
    pub received: u64,
    /// Packets expected from the first validated one up to the highest.
    pub expected: u64,
    /// Highest extended sequence number (cycles << 16 | max seq).
    pub extended_max: u64,
    /// Interarrival jitter in timestamp units.
    pub jitter: u32,
    /// Big jumps seen (BadJump), confirmed or not.
    pub bad_jumps: u64,
    /// Confirmed restarts.
    pub restarts: u64,
}

impl SeqStats {
    /// Cumulative lost packets; negative when duplicates outnumber losses, as RFC 3550 allows.
    pub fn lost(&self) -> i64 {
        // Both values are far below 2^63 in practice; saturate rather than trust that.
        i64::try_from(self.expected)
            .unwrap_or(i64::MAX)
            .saturating_sub(i64::try_from(self.received).unwrap_or(i64::MAX))
    }
}

const SEQ_MOD: u64 = 1 << 16;

/// Validates a source and extends its 16-bit sequence numbers (RFC 3550 Appendix A.1), and
/// estimates interarrival jitter (§6.4.1, computed in integers as in A.8).
///
/// Call [`update`](Self::update) for every parsed packet of one SSRC, in arrival order.
#[derive(Debug, Clone)]
pub struct SeqTracker {
    max_dropout: u16,
    max_misorder: u16,
    min_sequential: u32,
    probation: u32,
    started: bool,
    max_seq: u16,
    /// Count of wraps, shifted left by 16.
    cycles: u64,
    base_seq: u64,
    /// The sequence number that would confirm a jump; `None` when none is pending.
    bad_seq: Option<u16>,
    received: u64,
    /// Previous relative transit time and timestamp, for jitter.
    last_transit: Option<(i32, u32)>,
    /// Jitter scaled by 16, as in A.8, widened so hostile timestamps cannot overflow it.
    jitter_q4: u64,
    bad_jumps: u64,
    restarts: u64,
}

impl Default for SeqTracker {
    fn default() -> Self {
        Self::new()
    }
}

impl SeqTracker {
    /// RFC 3550's suggested limits: 2 sequential packets, dropout 3000, misorder 100.
    pub fn new() -> Self {
        Self::with_limits(2, 3000, 100)
    }

    /// `min_sequential` of 0 or 1 accepts the first packet at once (useful when signalling
    /// already vouches for the source, as SDP does for a call leg).
    pub fn with_limits(min_sequential: u32, max_dropout: u16, max_misorder: u16) -> Self {
        Self {
            max_dropout,
            max_misorder,
            min_sequential,
            probation: min_sequential,
            started: false,
            max_seq: 0,
            cycles: 0,
            base_seq: 0,
            bad_seq: None,
            received: 0,
            last_transit: None,
            jitter_q4: 0,
            bad_jumps: 0,
            restarts: 0,
        }
    }

    fn init(&mut self, seq: u16) {
        self.base_seq = u64::from(seq);
        self.max_seq = seq;
        self.cycles = 0;
        self.bad_seq = None;
        self.received = 0;
        self.last_transit = None;
        self.jitter_q4 = 0;
    }

    /// Feeds one packet: its sequence number, RTP timestamp, and arrival time in the same
    /// clock units as the timestamp (see [`clock_units`]).
    pub fn update(&mut self, seq: u16, rtp_ts: u32, arrival: u32) -> SeqStatus {
        if !self.started {
            self.started = true;
            if self.min_sequential <= 1 {
                self.probation = 0;
                self.init(seq);
                return self.accept(seq, rtp_ts, arrival, false);
            }
            // Pretend the previous packet was seq - 1 so the first one counts towards probation.
            self.max_seq = seq.wrapping_sub(1);
        }
        if self.probation > 0 {
            if seq == self.max_seq.wrapping_add(1) {
                self.probation -= 1;
                self.max_seq = seq;
                if self.probation == 0 {
                    self.init(seq);
                    return self.accept(seq, rtp_ts, arrival, false);
                }
            } else {
                self.probation = self.min_sequential.saturating_sub(1);
                self.max_seq = seq;
            }
            return SeqStatus::Probation;
        }
        let udelta = seq.wrapping_sub(self.max_seq);
        if udelta < self.max_dropout {
            if seq < self.max_seq {
                self.cycles += SEQ_MOD;
            }
            self.max_seq = seq;
            self.accept(seq, rtp_ts, arrival, false)
        } else if u64::from(udelta) <= SEQ_MOD - u64::from(self.max_misorder) {
            self.bad_jumps += 1;
            if self.bad_seq == Some(seq) {
                // Two sequential packets after a jump: the source restarted.
                self.restarts += 1;
                self.init(seq);
                self.accept(seq, rtp_ts, arrival, true)
            } else {
                self.bad_seq = Some(seq.wrapping_add(1));
                SeqStatus::BadJump
            }
        } else {
            // Duplicate or reordered, within max_misorder behind the highest.
            let cycles = if seq <= self.max_seq {
                Some(self.cycles)
            } else {
                self.cycles.checked_sub(SEQ_MOD)
            };
            match cycles.map(|c| c + u64::from(seq)) {
                Some(ext) if ext >= self.base_seq => self.accept(seq, rtp_ts, arrival, false),
                _ => SeqStatus::Stale,
            }
        }
    }

    fn accept(&mut self, seq: u16, rtp_ts: u32, arrival: u32, restarted: bool) -> SeqStatus {
        self.received += 1;
        // Packets sharing a timestamp (RFC 4733 events, one frame split in several packets)
        // were sampled at one instant; timing them would read as jitter, so skip them.
        let transit = arrival.wrapping_sub(rtp_ts) as i32;
        match self.last_transit {
            Some((_, last_ts)) if last_ts == rtp_ts => {}
            Some((last, _)) => {
                let d = u64::from(transit.wrapping_sub(last).unsigned_abs());
                self.jitter_q4 = self.jitter_q4 + d - ((self.jitter_q4 + 8) >> 4);
                self.last_transit = Some((transit, rtp_ts));
            }
            None => self.last_transit = Some((transit, rtp_ts)),
        }
        let ext_seq = if seq <= self.max_seq {
            self.cycles + u64::from(seq)
        } else {
            // Only reordered packets from before the last wrap get here; update() checked it.
            self.cycles.saturating_sub(SEQ_MOD) + u64::from(seq)
        };
        if restarted {
            SeqStatus::Restarted { ext_seq }
        } else {
            SeqStatus::Valid { ext_seq }
        }
    }

    /// True once the source passed probation.
    pub fn is_valid(&self) -> bool {
        self.started && self.probation == 0
    }

    /// Current statistics; all zero before the source is validated.
    pub fn stats(&self) -> SeqStats {
        if !self.is_valid() {
            return SeqStats {
                bad_jumps: self.bad_jumps,
                restarts: self.restarts,
                ..SeqStats::default()
            };
        }
        let extended_max = self.cycles + u64::from(self.max_seq);
        SeqStats {
            received: self.received,
            expected: extended_max - self.base_seq + 1,
            extended_max,
            jitter: u32::try_from(self.jitter_q4 >> 4).unwrap_or(u32::MAX),
            bad_jumps: self.bad_jumps,
            restarts: self.restarts,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Small deterministic PRNG so hostile-input tests need no dependency.
    pub(crate) struct XorShift(pub u64);
    impl XorShift {
        pub fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    fn header(seq: u16) -> RtpHeader {
        RtpHeader {
            marker: true,
            payload_type: 0,
            sequence: seq,
            timestamp: 0xdead_beef,
            ssrc: 0x1234_5678,
        }
    }

    #[test]
    fn write_then_parse_round_trips() {
        let payload: Vec<u8> = (0..160u32).map(|i| i as u8).collect();
        let mut buf = [0u8; 200];
        let h = header(65535);
        let n = h.write(&payload, &mut buf).unwrap();
        assert_eq!(n, 172);
        let p = RtpPacket::parse(&buf[..n]).unwrap();
        assert_eq!(p.header(), h);
        assert_eq!(p.payload(), &payload[..]);
        assert_eq!(p.csrc_count(), 0);
        assert!(p.extension().is_none());
        assert_eq!(p.padding_len(), 0);
        assert!(!is_rtcp(&buf[..n]));
    }

    #[test]
    fn writer_rejects_small_buffer_and_bad_pt() {
        let mut small = [0u8; 20];
        assert_eq!(
            header(1).write(&[0; 9], &mut small),
            Err(WriteError::BufferTooSmall { needed: 21 })
        );
        let mut h = header(1);
        h.payload_type = 128;
        assert_eq!(
            h.write(&[], &mut [0u8; 12]),
            Err(WriteError::PayloadTypeOutOfRange(128))
        );
        assert_eq!(
            header(1).write_header(&mut [0u8; 11]),
            Err(WriteError::BufferTooSmall { needed: 12 })
        );
    }

    #[test]
    fn parses_csrcs_extension_and_padding() {
        let mut pkt = vec![0xB2, 0x08, 0, 7, 0, 0, 0, 160, 1, 2, 3, 4];
        pkt.extend_from_slice(&[0, 0, 0, 9, 0, 0, 0, 10]); // two CSRCs
        pkt.extend_from_slice(&[0xBE, 0xDE, 0, 1, 0x10, 0xAA, 0, 0]); // one-word extension
        pkt.extend_from_slice(&[5, 6, 7]); // payload
        pkt.extend_from_slice(&[0, 0, 3]); // padding of 3
        let p = RtpPacket::parse(&pkt).unwrap();
        assert_eq!(p.csrcs().collect::<Vec<_>>(), vec![9, 10]);
        assert_eq!(p.extension(), Some((0xBEDE, &[0x10, 0xAA, 0, 0][..])));
        assert_eq!(p.payload(), &[5, 6, 7]);
        assert_eq!(p.padding_len(), 3);
        assert_eq!(p.payload_type(), 8);
        assert_eq!(p.sequence(), 7);
        assert_eq!(p.timestamp(), 160);
        assert_eq!(p.ssrc(), 0x0102_0304);
        assert!(!p.marker());
    }

    #[test]
    fn rejects_malformed_headers() {
        let ok = [0x80u8, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 9];
        assert!(RtpPacket::parse(&ok).is_ok());
        let mut v1 = ok;
        v1[0] = 0x40;
        assert_eq!(RtpPacket::parse(&v1).unwrap_err(), RtpError::BadVersion(1));
        let mut cc = ok;
        cc[0] = 0x81;
        assert_eq!(RtpPacket::parse(&cc).unwrap_err(), RtpError::CsrcOverrun);
        let mut ext = ok;
        ext[0] = 0x90;
        assert_eq!(
            RtpPacket::parse(&ext).unwrap_err(),
            RtpError::ExtensionOverrun
        );
        let mut pad0 = ok;
        pad0[0] = 0xA0;
        pad0[12] = 0;
        assert_eq!(RtpPacket::parse(&pad0).unwrap_err(), RtpError::BadPadding);
        let mut pad_long = ok;
        pad_long[0] = 0xA0;
        pad_long[12] = 2;
        assert_eq!(
            RtpPacket::parse(&pad_long).unwrap_err(),
            RtpError::BadPadding
        );
        // Padding that consumes the whole (one-byte) payload is fine.
        pad_long[12] = 1;
        assert_eq!(RtpPacket::parse(&pad_long).unwrap().payload(), &[] as &[u8]);
        // Extension length pointing past the end.
        let mut ext_long = vec![
            0x90u8, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 1, 2, 3, 4,
        ];
        assert_eq!(
            RtpPacket::parse(&ext_long).unwrap_err(),
            RtpError::ExtensionOverrun
        );
        ext_long.extend_from_slice(&[0; 4]);
        assert!(RtpPacket::parse(&ext_long).is_ok());
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let mut pkt = vec![0xB1, 0x80, 0, 7, 0, 0, 0, 160, 1, 2, 3, 4, 0, 0, 0, 9];
        pkt.extend_from_slice(&[0xBE, 0xDE, 0, 1, 0x10, 0xAA, 0, 0, 1, 2, 3, 4, 2]);
        let full = RtpPacket::parse(&pkt).unwrap();
        assert_eq!(full.payload(), &[1, 2, 3]);
        for n in 0..pkt.len() {
            // A truncation either fails or (when only padding/payload was cut) parses
            // within bounds; it must never panic.
            if let Ok(p) = RtpPacket::parse(&pkt[..n]) {
                assert!(p.payload().len() <= n);
            }
        }
        for n in 0..12 {
            assert_eq!(RtpPacket::parse(&pkt[..n]).unwrap_err(), RtpError::TooShort);
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let mut buf = [0u8; 64];
        for _ in 0..200_000 {
            let len = (rng.next() % 65) as usize;
            for b in buf.iter_mut().take(len) {
                *b = rng.next() as u8;
            }
            // Force version 2 half the time so the deeper paths get exercised.
            if len > 0 && rng.next() & 1 == 0 {
                buf[0] = (buf[0] & 0x3f) | 0x80;
            }
            if let Ok(p) = RtpPacket::parse(&buf[..len]) {
                let _ = (p.payload(), p.extension(), p.csrcs().count(), p.header());
            }
            let _ = is_rtcp(&buf[..len]);
        }
    }

    #[test]
    fn rtcp_demux() {
        assert!(is_rtcp(&[0x80, 200]));
        assert!(is_rtcp(&[0x81, 201, 0, 7]));
        assert!(!is_rtcp(&[0x80, 0x80 | 8]));
        assert!(!is_rtcp(&[0x80]));
    }

    #[test]
    fn clock_units_wrap() {
        assert_eq!(clock_units(Duration::from_millis(20), 8000), 160);
        assert_eq!(clock_units(Duration::from_secs(1), 16000), 16000);
        let secs = (1u64 << 32) / 8000 + 1; // just past one wrap at 8 kHz
        assert!(clock_units(Duration::from_secs(secs), 8000) < 8000);
    }

    fn valid(s: SeqStatus) -> u64 {
        match s {
            SeqStatus::Valid { ext_seq } | SeqStatus::Restarted { ext_seq } => ext_seq,
            other => panic!("expected valid, got {other:?}"),
        }
    }

    #[test]
    fn tracker_probation_then_wraps() {
        let mut t = SeqTracker::new();
        assert_eq!(t.update(65533, 0, 0), SeqStatus::Probation);
        assert!(!t.is_valid());
        assert_eq!(valid(t.update(65534, 160, 160)), 65534);
        assert_eq!(valid(t.update(65535, 320, 320)), 65535);
        assert_eq!(valid(t.update(0, 480, 480)), 65536);
        assert_eq!(valid(t.update(1, 640, 640)), 65537);
        let s = t.stats();
        assert_eq!(s.extended_max, 65537);
        assert_eq!(s.expected, 4);
        assert_eq!(s.received, 4);
        assert_eq!(s.lost(), 0);
        assert_eq!(s.jitter, 0);
    }

    #[test]
    fn tracker_probation_resets_on_gap() {
        let mut t = SeqTracker::new();
        assert_eq!(t.update(10, 0, 0), SeqStatus::Probation);
        assert_eq!(t.update(12, 0, 0), SeqStatus::Probation);
        assert_eq!(valid(t.update(13, 0, 0)), 13);
    }

    #[test]
    fn tracker_reordering_across_wrap() {
        let mut t = SeqTracker::with_limits(0, 3000, 100);
        assert_eq!(valid(t.update(65534, 0, 0)), 65534);
        assert_eq!(valid(t.update(0, 0, 0)), 65536); // 65535 late
        assert_eq!(valid(t.update(65535, 0, 0)), 65535); // reordered from before the wrap
        assert_eq!(valid(t.update(1, 0, 0)), 65537);
        assert_eq!(valid(t.update(1, 0, 0)), 65537); // duplicate
        assert_eq!(t.update(65530, 0, 0), SeqStatus::Stale); // before the first packet
        let s = t.stats();
        assert_eq!(s.expected, 4);
        assert_eq!(s.received, 5);
        assert_eq!(s.lost(), -1);
    }

    #[test]
    fn tracker_counts_loss() {
        let mut t = SeqTracker::with_limits(1, 3000, 100);
        for seq in (100u16..200).filter(|s| s % 10 != 3) {
            valid(t.update(seq, 0, 0));
        }
        let s = t.stats();
        assert_eq!(s.expected, 100);
        assert_eq!(s.received, 90);
        assert_eq!(s.lost(), 10);
    }

    #[test]
    fn tracker_restart_needs_two_sequential() {
        let mut t = SeqTracker::with_limits(0, 3000, 100);
        valid(t.update(100, 0, 0));
        valid(t.update(101, 0, 0));
        assert_eq!(t.update(40000, 0, 0), SeqStatus::BadJump);
        assert_eq!(valid(t.update(102, 0, 0)), 102); // the old stream continues
        assert_eq!(t.update(40000, 0, 0), SeqStatus::BadJump);
        assert_eq!(
            t.update(40001, 0, 0),
            SeqStatus::Restarted { ext_seq: 40001 }
        );
        assert_eq!(valid(t.update(40002, 0, 0)), 40002);
        let s = t.stats();
        assert_eq!((s.expected, s.received, s.restarts), (2, 2, 1));
        assert_eq!(s.bad_jumps, 3);
    }

    #[test]
    fn jitter_of_a_synthetic_stream() {
        // 20 ms packets at 8 kHz; arrivals alternate 0 and +40 units late, so every
        // transit difference is 40 and J converges to 40 (J += (|D| - J) / 16).
        let mut t = SeqTracker::with_limits(0, 3000, 100);
        for i in 0..2000u32 {
            let ts = 1000 + i * 160;
            let arrival = 5000 + i * 160 + if i % 2 == 1 { 40 } else { 0 };
            valid(t.update(i as u16, ts, arrival));
        }
        let j = t.stats().jitter;
        assert!((38..=40).contains(&j), "jitter {j}");

        // A perfectly periodic stream has no jitter, even with a constant offset.
        let mut t = SeqTracker::with_limits(0, 3000, 100);
        for i in 0..100u32 {
            valid(t.update(i as u16, i * 160, 777 + i * 160));
        }
        assert_eq!(t.stats().jitter, 0);

        // One 80-unit spike moves J by 80/16 = 5, then decays.
        let mut t = SeqTracker::with_limits(0, 3000, 100);
        valid(t.update(0, 0, 0));
        valid(t.update(1, 160, 240));
        assert_eq!(t.stats().jitter, 5);
    }

    #[test]
    fn jitter_ignores_repeated_timestamps() {
        let mut t = SeqTracker::with_limits(0, 3000, 100);
        for i in 0..50u32 {
            // Three packets of one event share a timestamp but arrive 20 ms apart.
            valid(t.update(i as u16, 8000, i * 160));
        }
        assert_eq!(t.stats().jitter, 0);
    }

    #[test]
    fn tracker_survives_random_input() {
        let mut rng = XorShift(42);
        let mut t = SeqTracker::new();
        for _ in 0..100_000 {
            let r = rng.next();
            let _ = t.update(r as u16, (r >> 16) as u32, (r >> 40) as u32);
        }
        let s = t.stats();
        assert!(s.expected < 1 << 40);
    }
}
