//! RTCP (RFC 3550 §6): parsing and building sender/receiver reports, SDES CNAME and BYE in
//! compound packets, turning [`SeqStats`] into report blocks, and a report timer.
//!
//! Sans-IO and allocation-free: parsing yields views into the datagram, builders write into
//! the caller's buffer, and times (`Instant`, NTP, randomness) are passed in.
//!
//! Call order for one call leg:
//! 1. Create an [`RtcpTimer`] when media starts; sleep until [`RtcpTimer::poll_timeout`].
//! 2. On each RTCP datagram: [`parse_compound`]; for every SR of the remote source call
//!    [`ReceptionReporter::on_sender_report`]; read report blocks about us for RTT
//!    ([`round_trip`]); a BYE ends the remote source.
//! 3. When [`RtcpTimer::on_timeout`] returns true: take [`SeqTracker::stats`], build a block
//!    with [`ReceptionReporter::report_block`], and write SR (if we sent media since the last
//!    report) or RR, then SDES CNAME, with [`RtcpWriter`].
//! 4. At hang-up: RR/SR + SDES + BYE in one compound packet.
//!
//! [`SeqTracker::stats`]: super::rtp::SeqTracker::stats

use std::time::{Duration, Instant};

use super::rtp::SeqStats;

pub const PT_SR: u8 = 200;
pub const PT_RR: u8 = 201;
pub const PT_SDES: u8 = 202;
pub const PT_BYE: u8 = 203;
pub const PT_APP: u8 = 204;

const SDES_END: u8 = 0;
const SDES_CNAME: u8 = 1;
const HEADER_LEN: usize = 4;
const BLOCK_LEN: usize = 24;
const SENDER_INFO_LEN: usize = 20;
/// The 5-bit count field caps report blocks, SDES chunks and BYE sources per packet.
pub const MAX_COUNT: usize = 31;

/// Why an RTCP datagram was rejected. Counted by the caller, never fatal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RtcpError {
    #[error("empty or shorter than an RTCP header")]
    TooShort,
    #[error("RTCP version {0}, expected 2")]
    BadVersion(u8),
    #[error("packet length runs past the end of the datagram")]
    LengthOverrun,
    #[error("padding is zero, too long, or not on the last packet")]
    BadPadding,
    #[error("packet body too short for its count")]
    BodyTooShort,
    #[error("malformed SDES chunk")]
    BadSdes,
    #[error("malformed BYE reason")]
    BadBye,
}

/// Why a builder could not write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RtcpWriteError {
    #[error("output buffer too small")]
    BufferTooSmall,
    #[error("more than 31 items for one packet")]
    TooMany,
    #[error("text longer than 255 bytes")]
    TextTooLong,
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The sender's half of an SR (§6.4.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SenderInfo {
    /// NTP timestamp (seconds since 1900 in the high 32 bits); see [`ntp_from_unix`].
    pub ntp: u64,
    /// The RTP timestamp corresponding to `ntp`.
    pub rtp_timestamp: u32,
    pub packet_count: u32,
    pub octet_count: u32,
}

/// One reception report block (§6.4.1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReportBlock {
    /// The source this block reports on.
    pub ssrc: u32,
    /// Fraction lost since the previous report, in 1/256.
    pub fraction_lost: u8,
    /// Cumulative lost packets, 24-bit signed on the wire.
    pub cumulative_lost: i32,
    pub extended_highest_seq: u32,
    /// Interarrival jitter in timestamp units.
    pub jitter: u32,
    /// Middle 32 bits of the NTP time of the last SR received from the source (0 if none).
    pub last_sr: u32,
    /// Delay since that SR, in 1/65536 s.
    pub delay_since_last_sr: u32,
}

impl ReportBlock {
    fn read(b: &[u8]) -> Self {
        // Sign-extend the 24-bit cumulative count.
        let lost = i32::from_be_bytes([b[5], b[6], b[7], 0]) >> 8;
        Self {
            ssrc: be32(b, 0),
            fraction_lost: b[4],
            cumulative_lost: lost,
            extended_highest_seq: be32(b, 8),
            jitter: be32(b, 12),
            last_sr: be32(b, 16),
            delay_since_last_sr: be32(b, 20),
        }
    }

    fn write(&self, out: &mut [u8]) {
        out[0..4].copy_from_slice(&self.ssrc.to_be_bytes());
        let lost = self.cumulative_lost.clamp(-0x80_0000, 0x7f_ffff);
        let lost = lost.to_be_bytes();
        out[4] = self.fraction_lost;
        out[5..8].copy_from_slice(&lost[1..4]);
        out[8..12].copy_from_slice(&self.extended_highest_seq.to_be_bytes());
        out[12..16].copy_from_slice(&self.jitter.to_be_bytes());
        out[16..20].copy_from_slice(&self.last_sr.to_be_bytes());
        out[20..24].copy_from_slice(&self.delay_since_last_sr.to_be_bytes());
    }
}

/// The report blocks of an SR or RR, read lazily from the datagram.
#[derive(Debug, Clone, Copy)]
pub struct ReportBlocks<'a> {
    data: &'a [u8],
}

impl<'a> Iterator for ReportBlocks<'a> {
    type Item = ReportBlock;
    fn next(&mut self) -> Option<ReportBlock> {
        if self.data.len() < BLOCK_LEN {
            return None;
        }
        let (block, rest) = self.data.split_at(BLOCK_LEN);
        self.data = rest;
        Some(ReportBlock::read(block))
    }
}

/// One SDES chunk: a source and its items.
#[derive(Debug, Clone, Copy)]
pub struct SdesChunk<'a> {
    pub ssrc: u32,
    items: &'a [u8],
}

impl<'a> SdesChunk<'a> {
    /// Items as (type, text); the terminating null item is not included.
    pub fn items(&self) -> SdesItems<'a> {
        SdesItems { data: self.items }
    }

    pub fn cname(&self) -> Option<&'a [u8]> {
        self.items()
            .find(|&(t, _)| t == SDES_CNAME)
            .map(|(_, text)| text)
    }
}

#[derive(Debug, Clone, Copy)]
pub struct SdesItems<'a> {
    data: &'a [u8],
}

impl<'a> Iterator for SdesItems<'a> {
    type Item = (u8, &'a [u8]);
    fn next(&mut self) -> Option<Self::Item> {
        let (&kind, rest) = self.data.split_first()?;
        if kind == SDES_END {
            return None;
        }
        let (&len, rest) = rest.split_first()?;
        let text = rest.get(..usize::from(len))?;
        self.data = &rest[usize::from(len)..];
        Some((kind, text))
    }
}

/// Walks one SDES chunk starting at `data`; returns (chunk, bytes consumed incl. padding).
fn sdes_chunk(data: &[u8]) -> Option<(SdesChunk<'_>, usize)> {
    if data.len() < 4 {
        return None;
    }
    let ssrc = be32(data, 0);
    let mut at = 4;
    loop {
        let kind = *data.get(at)?;
        if kind == SDES_END {
            break;
        }
        let len = usize::from(*data.get(at + 1)?);
        at += 2 + len;
        if at > data.len() {
            return None;
        }
    }
    let items = &data[4..at];
    // The null item ends the list; padding fills to the next 32-bit boundary.
    let end = (at + 1).next_multiple_of(4);
    if end > data.len() {
        return None;
    }
    Some((SdesChunk { ssrc, items }, end))
}

/// The chunks of an SDES packet.
#[derive(Debug, Clone, Copy)]
pub struct SdesChunks<'a> {
    data: &'a [u8],
    left: u8,
}

impl<'a> Iterator for SdesChunks<'a> {
    type Item = SdesChunk<'a>;
    fn next(&mut self) -> Option<SdesChunk<'a>> {
        if self.left == 0 {
            return None;
        }
        let (chunk, used) = sdes_chunk(self.data)?;
        self.data = &self.data[used..];
        self.left -= 1;
        Some(chunk)
    }
}

/// One packet of a compound RTCP datagram.
#[derive(Debug, Clone, Copy)]
pub enum RtcpPacket<'a> {
    SenderReport {
        ssrc: u32,
        info: SenderInfo,
        blocks: ReportBlocks<'a>,
    },
    ReceiverReport {
        ssrc: u32,
        blocks: ReportBlocks<'a>,
    },
    SourceDescription(SdesChunks<'a>),
    Bye {
        sources: ReportSsrcs<'a>,
        reason: Option<&'a [u8]>,
    },
    /// APP, feedback (RFC 4585), XR and anything newer: passed through unparsed.
    Other {
        packet_type: u8,
        count: u8,
        body: &'a [u8],
    },
}

/// SSRC list of a BYE.
#[derive(Debug, Clone, Copy)]
pub struct ReportSsrcs<'a> {
    data: &'a [u8],
}

impl Iterator for ReportSsrcs<'_> {
    type Item = u32;
    fn next(&mut self) -> Option<u32> {
        if self.data.len() < 4 {
            return None;
        }
        let v = be32(self.data, 0);
        self.data = &self.data[4..];
        Some(v)
    }
}

/// Parses one packet's body (padding already removed).
fn parse_packet(packet_type: u8, count: u8, body: &[u8]) -> Result<RtcpPacket<'_>, RtcpError> {
    let n = usize::from(count);
    match packet_type {
        PT_SR => {
            let blocks_at = 4 + SENDER_INFO_LEN;
            if body.len() < blocks_at + n * BLOCK_LEN {
                return Err(RtcpError::BodyTooShort);
            }
            let info = SenderInfo {
                ntp: (u64::from(be32(body, 4)) << 32) | u64::from(be32(body, 8)),
                rtp_timestamp: be32(body, 12),
                packet_count: be32(body, 16),
                octet_count: be32(body, 20),
            };
            Ok(RtcpPacket::SenderReport {
                ssrc: be32(body, 0),
                info,
                blocks: ReportBlocks {
                    data: &body[blocks_at..blocks_at + n * BLOCK_LEN],
                },
            })
        }
        PT_RR => {
            if body.len() < 4 + n * BLOCK_LEN {
                return Err(RtcpError::BodyTooShort);
            }
            Ok(RtcpPacket::ReceiverReport {
                ssrc: be32(body, 0),
                blocks: ReportBlocks {
                    data: &body[4..4 + n * BLOCK_LEN],
                },
            })
        }
        PT_SDES => {
            // Validate every chunk now so the iterator handed out is complete.
            let mut rest = body;
            for _ in 0..n {
                let (_, used) = sdes_chunk(rest).ok_or(RtcpError::BadSdes)?;
                rest = &rest[used..];
            }
            Ok(RtcpPacket::SourceDescription(SdesChunks {
                data: body,
                left: count,
            }))
        }
        PT_BYE => {
            if body.len() < 4 * n {
                return Err(RtcpError::BodyTooShort);
            }
            let (list, rest) = body.split_at(4 * n);
            let reason = match rest.split_first() {
                None => None,
                Some((&len, text)) => Some(text.get(..usize::from(len)).ok_or(RtcpError::BadBye)?),
            };
            Ok(RtcpPacket::Bye {
                sources: ReportSsrcs { data: list },
                reason,
            })
        }
        _ => Ok(RtcpPacket::Other {
            packet_type,
            count,
            body,
        }),
    }
}

/// Iterates the packets of a compound datagram validated by [`parse_compound`].
#[derive(Debug, Clone)]
pub struct Compound<'a> {
    rest: &'a [u8],
}

/// One packet split off the front of a compound datagram.
struct Split<'a> {
    packet_type: u8,
    count: u8,
    /// Without header and padding.
    body: &'a [u8],
    rest: &'a [u8],
    padded: bool,
}

fn split_packet(buf: &[u8]) -> Result<Split<'_>, RtcpError> {
    if buf.len() < HEADER_LEN {
        return Err(RtcpError::TooShort);
    }
    let version = buf[0] >> 6;
    if version != 2 {
        return Err(RtcpError::BadVersion(version));
    }
    let padded = buf[0] & 0x20 != 0;
    let count = buf[0] & 0x1f;
    let packet_type = buf[1];
    let len = (usize::from(u16::from_be_bytes([buf[2], buf[3]])) + 1) * 4;
    if len > buf.len() {
        return Err(RtcpError::LengthOverrun);
    }
    let (packet, rest) = buf.split_at(len);
    let mut body = &packet[HEADER_LEN..];
    if padded {
        let pad = usize::from(packet[len - 1]);
        if pad == 0 || pad > body.len() {
            return Err(RtcpError::BadPadding);
        }
        body = &body[..body.len() - pad];
    }
    Ok(Split {
        packet_type,
        count,
        body,
        rest,
        padded,
    })
}

/// Validates a whole compound datagram (version, lengths, padding only on the last packet,
/// every body against its count) and returns an iterator over its packets.
///
/// RFC 5506 reduced-size RTCP (a packet that does not start with SR/RR) is accepted.
pub fn parse_compound(buf: &[u8]) -> Result<Compound<'_>, RtcpError> {
    if buf.is_empty() {
        return Err(RtcpError::TooShort);
    }
    let mut rest = buf;
    while !rest.is_empty() {
        let split = split_packet(rest)?;
        if split.padded && !split.rest.is_empty() {
            return Err(RtcpError::BadPadding);
        }
        parse_packet(split.packet_type, split.count, split.body)?;
        rest = split.rest;
    }
    Ok(Compound { rest: buf })
}

impl<'a> Iterator for Compound<'a> {
    type Item = RtcpPacket<'a>;
    fn next(&mut self) -> Option<RtcpPacket<'a>> {
        // Already validated; any failure here just ends the iteration.
        let split = split_packet(self.rest).ok()?;
        self.rest = split.rest;
        parse_packet(split.packet_type, split.count, split.body).ok()
    }
}

/// Writes a compound RTCP packet into a caller buffer, one packet after another.
#[derive(Debug)]
pub struct RtcpWriter<'b> {
    buf: &'b mut [u8],
    len: usize,
}

impl<'b> RtcpWriter<'b> {
    pub fn new(buf: &'b mut [u8]) -> Self {
        Self { buf, len: 0 }
    }

    /// Bytes written so far: the datagram is `&buf[..len()]`.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Reserves `size` bytes (a multiple of 4) for a packet and writes its common header.
    fn begin(
        &mut self,
        count: usize,
        packet_type: u8,
        size: usize,
    ) -> Result<&mut [u8], RtcpWriteError> {
        debug_assert!(size % 4 == 0 && count <= MAX_COUNT);
        let words = u16::try_from(size / 4 - 1).map_err(|_| RtcpWriteError::BufferTooSmall)?;
        let out = self
            .buf
            .get_mut(self.len..self.len + size)
            .ok_or(RtcpWriteError::BufferTooSmall)?;
        out.fill(0);
        // count <= 31 was checked by every caller.
        out[0] = 0x80 | (count as u8);
        out[1] = packet_type;
        out[2..4].copy_from_slice(&words.to_be_bytes());
        self.len += size;
        Ok(out)
    }

    pub fn sender_report(
        &mut self,
        ssrc: u32,
        info: &SenderInfo,
        blocks: &[ReportBlock],
    ) -> Result<(), RtcpWriteError> {
        if blocks.len() > MAX_COUNT {
            return Err(RtcpWriteError::TooMany);
        }
        let size = HEADER_LEN + 4 + SENDER_INFO_LEN + BLOCK_LEN * blocks.len();
        let out = self.begin(blocks.len(), PT_SR, size)?;
        out[4..8].copy_from_slice(&ssrc.to_be_bytes());
        out[8..16].copy_from_slice(&info.ntp.to_be_bytes());
        out[16..20].copy_from_slice(&info.rtp_timestamp.to_be_bytes());
        out[20..24].copy_from_slice(&info.packet_count.to_be_bytes());
        out[24..28].copy_from_slice(&info.octet_count.to_be_bytes());
        for (block, dst) in blocks.iter().zip(out[28..].chunks_exact_mut(BLOCK_LEN)) {
            block.write(dst);
        }
        Ok(())
    }

    pub fn receiver_report(
        &mut self,
        ssrc: u32,
        blocks: &[ReportBlock],
    ) -> Result<(), RtcpWriteError> {
        if blocks.len() > MAX_COUNT {
            return Err(RtcpWriteError::TooMany);
        }
        let size = HEADER_LEN + 4 + BLOCK_LEN * blocks.len();
        let out = self.begin(blocks.len(), PT_RR, size)?;
        out[4..8].copy_from_slice(&ssrc.to_be_bytes());
        for (block, dst) in blocks.iter().zip(out[8..].chunks_exact_mut(BLOCK_LEN)) {
            block.write(dst);
        }
        Ok(())
    }

    /// One SDES chunk carrying only the CNAME (all RFC 3550 requires in every compound).
    pub fn sdes_cname(&mut self, ssrc: u32, cname: &[u8]) -> Result<(), RtcpWriteError> {
        let len = u8::try_from(cname.len()).map_err(|_| RtcpWriteError::TextTooLong)?;
        // SSRC, type, length, text, then at least one null octet, padded to 32 bits.
        let chunk = (4 + 2 + cname.len() + 1).next_multiple_of(4);
        let out = self.begin(1, PT_SDES, HEADER_LEN + chunk)?;
        out[4..8].copy_from_slice(&ssrc.to_be_bytes());
        out[8] = SDES_CNAME;
        out[9] = len;
        out[10..10 + cname.len()].copy_from_slice(cname);
        Ok(())
    }

    pub fn bye(&mut self, sources: &[u32], reason: Option<&[u8]>) -> Result<(), RtcpWriteError> {
        if sources.len() > MAX_COUNT {
            return Err(RtcpWriteError::TooMany);
        }
        let reason = match reason {
            Some(r) => Some((
                u8::try_from(r.len()).map_err(|_| RtcpWriteError::TextTooLong)?,
                r,
            )),
            None => None,
        };
        let reason_size = reason.map_or(0, |(_, r)| 1 + r.len());
        let size = (HEADER_LEN + 4 * sources.len() + reason_size).next_multiple_of(4);
        let out = self.begin(sources.len(), PT_BYE, size)?;
        for (ssrc, dst) in sources.iter().zip(out[4..].chunks_exact_mut(4)) {
            dst.copy_from_slice(&ssrc.to_be_bytes());
        }
        if let Some((len, r)) = reason {
            let at = HEADER_LEN + 4 * sources.len();
            out[at] = len;
            out[at + 1..at + 1 + r.len()].copy_from_slice(r);
        }
        Ok(())
    }
}

/// Seconds between 1900 (NTP epoch) and 1970 (Unix epoch).
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

/// 64-bit NTP timestamp for a wall-clock time given as time since the Unix epoch.
pub fn ntp_from_unix(since_epoch: Duration) -> u64 {
    let secs = since_epoch.as_secs().wrapping_add(NTP_UNIX_OFFSET);
    let frac = (u64::from(since_epoch.subsec_nanos()) << 32) / 1_000_000_000;
    (secs << 32) | frac
}

/// The middle 32 bits of an NTP timestamp, the unit of LSR and of RTT arithmetic.
pub fn ntp_middle(ntp: u64) -> u32 {
    (ntp >> 16) as u32
}

/// Round-trip time from a report block about our stream (§6.4.1: A - LSR - DLSR), given
/// the NTP arrival time of the report. `None` when the peer has not seen our SR yet or the
/// arithmetic is nonsensical.
pub fn round_trip(arrival_ntp: u64, block: &ReportBlock) -> Option<Duration> {
    if block.last_sr == 0 {
        return None;
    }
    let a = ntp_middle(arrival_ntp);
    let rtt = a
        .checked_sub(block.last_sr)?
        .checked_sub(block.delay_since_last_sr)?;
    Some(Duration::from_nanos((u64::from(rtt) * 1_000_000_000) >> 16))
}

/// Per-source state behind the reception report: interval counters and the last SR.
#[derive(Debug, Clone, Default)]
pub struct ReceptionReporter {
    expected_prior: u64,
    received_prior: u64,
    last_sr: Option<(u32, Instant)>,
}

impl ReceptionReporter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Remembers an SR from the reported source (its NTP field and when it arrived).
    pub fn on_sender_report(&mut self, ntp: u64, now: Instant) {
        self.last_sr = Some((ntp_middle(ntp), now));
    }

    /// Builds the block for this report and starts a new interval (A.3).
    pub fn report_block(&mut self, ssrc: u32, stats: &SeqStats, now: Instant) -> ReportBlock {
        let expected_interval = stats.expected.saturating_sub(self.expected_prior);
        let received_interval = stats.received.saturating_sub(self.received_prior);
        self.expected_prior = stats.expected;
        self.received_prior = stats.received;
        let lost_interval = expected_interval.saturating_sub(received_interval);
        let fraction_lost = if expected_interval == 0 || lost_interval == 0 {
            0
        } else {
            // lost <= expected, so the quotient is at most 256; 256 is clamped to 255.
            u8::try_from((lost_interval << 8) / expected_interval).unwrap_or(u8::MAX)
        };
        let cumulative_lost = i32::try_from(stats.lost().clamp(-0x80_0000, 0x7f_ffff)).unwrap_or(0);
        let (last_sr, delay_since_last_sr) = match self.last_sr {
            Some((lsr, at)) => {
                let d = now.saturating_duration_since(at);
                let units = d.as_nanos() * 65536 / 1_000_000_000;
                (lsr, u32::try_from(units).unwrap_or(u32::MAX))
            }
            None => (0, 0),
        };
        ReportBlock {
            ssrc,
            fraction_lost,
            cumulative_lost,
            // The wire field is 32 bits: 16 bits of cycles, wrapping after 2^32 packets.
            extended_highest_seq: stats.extended_max as u32,
            jitter: stats.jitter,
            last_sr,
            delay_since_last_sr,
        }
    }
}

/// Decides when to send reports (RFC 3550 §6.2, simplified for two-party calls: a fixed
/// nominal interval, randomised over [0.5, 1.5] of it, the first one after half of it).
///
/// Call order: sleep until [`poll_timeout`](Self::poll_timeout); then call
/// [`on_timeout`](Self::on_timeout) with a fresh uniform random number in [0, 1); send a
/// report when it returns true.
#[derive(Debug, Clone)]
pub struct RtcpTimer {
    interval: Duration,
    next: Instant,
}

impl RtcpTimer {
    /// The customary nominal interval.
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);

    pub fn new(now: Instant, interval: Duration, random: f64) -> Self {
        let first = Self::randomised(interval / 2, random);
        Self {
            interval,
            next: now + first,
        }
    }

    fn randomised(interval: Duration, random: f64) -> Duration {
        let r = if random.is_finite() {
            random.clamp(0.0, 1.0)
        } else {
            0.5
        };
        interval.mul_f64(0.5 + r)
    }

    /// When the next report is due.
    pub fn poll_timeout(&self) -> Instant {
        self.next
    }

    /// True if a report is due at `now`; then the following one is scheduled from `now`.
    pub fn on_timeout(&mut self, now: Instant, random: f64) -> bool {
        if now < self.next {
            return false;
        }
        self.next = now + Self::randomised(self.interval, random);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(ssrc: u32, lost: i32) -> ReportBlock {
        ReportBlock {
            ssrc,
            fraction_lost: 25,
            cumulative_lost: lost,
            extended_highest_seq: 0x0001_0005,
            jitter: 37,
            last_sr: 0xAABB_CCDD,
            delay_since_last_sr: 65536,
        }
    }

    fn sample_compound(buf: &mut [u8]) -> usize {
        let mut w = RtcpWriter::new(buf);
        let info = SenderInfo {
            ntp: 0x1122_3344_5566_7788,
            rtp_timestamp: 160_000,
            packet_count: 1000,
            octet_count: 160_000,
        };
        w.sender_report(0xCAFE, &info, &[block(1, -5), block(2, 0x7f_ffff)])
            .unwrap();
        w.sdes_cname(0xCAFE, b"dialtone@host").unwrap();
        w.bye(&[0xCAFE], Some(b"call ended")).unwrap();
        w.len()
    }

    #[test]
    fn sr_sdes_bye_round_trip() {
        let mut buf = [0u8; 256];
        let n = sample_compound(&mut buf);
        assert_eq!(n % 4, 0);
        let packets: Vec<_> = parse_compound(&buf[..n]).unwrap().collect();
        assert_eq!(packets.len(), 3);
        match packets[0] {
            RtcpPacket::SenderReport { ssrc, info, blocks } => {
                assert_eq!(ssrc, 0xCAFE);
                assert_eq!(info.ntp, 0x1122_3344_5566_7788);
                assert_eq!(info.packet_count, 1000);
                let b: Vec<_> = blocks.collect();
                assert_eq!(b, vec![block(1, -5), block(2, 0x7f_ffff)]);
            }
            ref p => panic!("{p:?}"),
        }
        match packets[1] {
            RtcpPacket::SourceDescription(chunks) => {
                let c: Vec<_> = chunks.collect();
                assert_eq!(c.len(), 1);
                assert_eq!(c[0].ssrc, 0xCAFE);
                assert_eq!(c[0].cname(), Some(&b"dialtone@host"[..]));
            }
            ref p => panic!("{p:?}"),
        }
        match packets[2] {
            RtcpPacket::Bye { sources, reason } => {
                assert_eq!(sources.collect::<Vec<_>>(), vec![0xCAFE]);
                assert_eq!(reason, Some(&b"call ended"[..]));
            }
            ref p => panic!("{p:?}"),
        }
    }

    #[test]
    fn rr_round_trip_and_lost_clamping() {
        let mut buf = [0u8; 128];
        let mut w = RtcpWriter::new(&mut buf);
        w.receiver_report(7, &[block(9, -10_000_000)]).unwrap();
        w.receiver_report(8, &[]).unwrap();
        let n = w.len();
        assert_eq!(n, 32 + 8);
        let packets: Vec<_> = parse_compound(&buf[..n]).unwrap().collect();
        match packets[0] {
            RtcpPacket::ReceiverReport { ssrc, mut blocks } => {
                assert_eq!(ssrc, 7);
                assert_eq!(blocks.next().unwrap().cumulative_lost, -0x80_0000);
                assert!(blocks.next().is_none());
            }
            ref p => panic!("{p:?}"),
        }
        assert!(matches!(
            packets[1],
            RtcpPacket::ReceiverReport { ssrc: 8, .. }
        ));
    }

    #[test]
    fn sdes_cname_lengths_pad_correctly() {
        for len in 0..=255usize {
            let cname = vec![b'x'; len];
            let mut buf = [0u8; 300];
            let mut w = RtcpWriter::new(&mut buf);
            w.sdes_cname(1, &cname).unwrap();
            let n = w.len();
            let mut packets = parse_compound(&buf[..n]).unwrap();
            match packets.next() {
                Some(RtcpPacket::SourceDescription(mut c)) => {
                    assert_eq!(c.next().unwrap().cname(), Some(&cname[..]));
                }
                p => panic!("{p:?}"),
            }
        }
        let mut buf = [0u8; 300];
        assert_eq!(
            RtcpWriter::new(&mut buf).sdes_cname(1, &[0; 256]),
            Err(RtcpWriteError::TextTooLong)
        );
    }

    #[test]
    fn bye_reason_lengths() {
        for len in [0usize, 1, 2, 3, 4, 254, 255] {
            let reason = vec![b'r'; len];
            let mut buf = [0u8; 400];
            let mut w = RtcpWriter::new(&mut buf);
            w.bye(&[1, 2], Some(&reason)).unwrap();
            let n = w.len();
            match parse_compound(&buf[..n]).unwrap().next() {
                Some(RtcpPacket::Bye { sources, reason: r }) => {
                    assert_eq!(sources.count(), 2);
                    assert_eq!(r, Some(&reason[..]));
                }
                p => panic!("{p:?}"),
            }
        }
        let mut buf = [0u8; 400];
        assert_eq!(
            RtcpWriter::new(&mut buf).bye(&[1], Some(&[0; 256])),
            Err(RtcpWriteError::TextTooLong)
        );
    }

    #[test]
    fn writer_bounds() {
        let mut small = [0u8; 20];
        let mut w = RtcpWriter::new(&mut small);
        assert_eq!(
            w.receiver_report(1, &[block(1, 0)]),
            Err(RtcpWriteError::BufferTooSmall)
        );
        assert!(w.is_empty());
        let mut buf = [0u8; 2048];
        let mut w = RtcpWriter::new(&mut buf);
        assert_eq!(
            w.receiver_report(1, &[block(1, 0); 32]),
            Err(RtcpWriteError::TooMany)
        );
        w.receiver_report(1, &[block(1, 0); 31]).unwrap();
        w.bye(&[], None).unwrap();
        let n = w.len();
        assert_eq!(parse_compound(&buf[..n]).unwrap().count(), 2);
    }

    #[test]
    fn parses_foreign_packets_and_padding() {
        // RR with no blocks, then an APP packet with 4 bytes of padding (last packet).
        let buf = [
            0x80, 201, 0, 1, 0, 0, 0, 5, // RR
            0xA0, 204, 0, 3, 1, 2, 3, 4, b'n', b'a', b'm', b'e', 0, 0, 0, 4,
        ];
        let packets: Vec<_> = parse_compound(&buf).unwrap().collect();
        match packets[1] {
            RtcpPacket::Other {
                packet_type, body, ..
            } => {
                assert_eq!(packet_type, PT_APP);
                assert_eq!(body, &[1, 2, 3, 4, b'n', b'a', b'm', b'e']);
            }
            ref p => panic!("{p:?}"),
        }
        // Padding on a packet that is not the last is invalid.
        let mut bad = buf;
        bad[0] = 0xA0;
        bad[7] = 4;
        assert_eq!(parse_compound(&bad).unwrap_err(), RtcpError::BadPadding);
    }

    #[test]
    fn rejects_malformed() {
        assert_eq!(parse_compound(&[]).unwrap_err(), RtcpError::TooShort);
        assert_eq!(
            parse_compound(&[0x40, 201, 0, 0]).unwrap_err(),
            RtcpError::BadVersion(1)
        );
        assert_eq!(
            parse_compound(&[0x80, 201, 0, 5, 0, 0, 0, 0]).unwrap_err(),
            RtcpError::LengthOverrun
        );
        // RR claims one block but has none.
        assert_eq!(
            parse_compound(&[0x81, 201, 0, 1, 0, 0, 0, 0]).unwrap_err(),
            RtcpError::BodyTooShort
        );
        // SDES with an item running past the chunk.
        assert_eq!(
            parse_compound(&[0x81, 202, 0, 2, 0, 0, 0, 1, 1, 9, b'a', b'b']).unwrap_err(),
            RtcpError::BadSdes
        );
        // BYE whose reason length runs past the packet.
        assert_eq!(
            parse_compound(&[0x81, 203, 0, 2, 0, 0, 0, 1, 9, b'a', 0, 0]).unwrap_err(),
            RtcpError::BadBye
        );
    }

    #[test]
    fn truncations_and_random_bytes_never_panic() {
        let mut buf = [0u8; 256];
        let n = sample_compound(&mut buf);
        for cut in 0..n {
            if let Ok(c) = parse_compound(&buf[..cut]) {
                for p in c {
                    if let RtcpPacket::SourceDescription(ch) = p {
                        ch.for_each(|c| c.items().for_each(drop));
                    }
                }
            }
        }
        let mut rng = crate::media::rtp::tests::XorShift(7);
        let mut data = [0u8; 96];
        for _ in 0..100_000 {
            let len = (rng.next() % 97) as usize;
            for b in data.iter_mut().take(len) {
                *b = rng.next() as u8;
            }
            if len > 3 {
                data[0] = 0x80 | (data[0] & 0x3f);
                data[1] = 200 + (data[1] % 5);
                data[2] = 0;
                data[3] %= 24;
            }
            if let Ok(c) = parse_compound(&data[..len]) {
                for p in c {
                    match p {
                        RtcpPacket::SenderReport { blocks, .. }
                        | RtcpPacket::ReceiverReport { blocks, .. } => blocks.for_each(drop),
                        RtcpPacket::SourceDescription(ch) => {
                            ch.for_each(|c| c.items().for_each(drop))
                        }
                        RtcpPacket::Bye { sources, .. } => sources.for_each(drop),
                        RtcpPacket::Other { .. } => {}
                    }
                }
            }
        }
    }

    #[test]
    fn report_block_from_tracker_stats() {
        let t0 = Instant::now();
        let mut r = ReceptionReporter::new();
        let stats = SeqStats {
            received: 90,
            expected: 100,
            extended_max: 0x1_0063,
            jitter: 12,
            ..SeqStats::default()
        };
        // No SR yet: LSR and DLSR are zero.
        let b = r.report_block(5, &stats, t0);
        assert_eq!(b.fraction_lost, 25); // 10/100 * 256 = 25.6
        assert_eq!(b.cumulative_lost, 10);
        assert_eq!(b.extended_highest_seq, 0x1_0063);
        assert_eq!(b.jitter, 12);
        assert_eq!((b.last_sr, b.delay_since_last_sr), (0, 0));

        r.on_sender_report(0x0000_1234_5678_0000, t0);
        // Next interval: 50 expected, 50 received: no new loss.
        let stats2 = SeqStats {
            received: 140,
            expected: 150,
            ..stats
        };
        let b = r.report_block(5, &stats2, t0 + Duration::from_millis(1500));
        assert_eq!(b.fraction_lost, 0);
        assert_eq!(b.cumulative_lost, 10);
        assert_eq!(b.last_sr, 0x1234_5678);
        assert_eq!(b.delay_since_last_sr, 98304); // 1.5 * 65536

        // Duplicates can make the interval's loss negative: reported as zero.
        let stats3 = SeqStats {
            received: 200,
            expected: 160,
            ..stats
        };
        let b = r.report_block(5, &stats3, t0);
        assert_eq!(b.fraction_lost, 0);
        assert_eq!(b.cumulative_lost, -40);
    }

    #[test]
    fn ntp_and_rtt() {
        let ntp = ntp_from_unix(Duration::new(1, 500_000_000));
        assert_eq!(ntp >> 32, NTP_UNIX_OFFSET + 1);
        assert_eq!(ntp as u32, 0x8000_0000);
        // SR sent at middle=0x10000 (1 s), peer held it 0.25 s, reply at 1.75 s: RTT 0.5 s.
        let b = ReportBlock {
            last_sr: 0x1_0000,
            delay_since_last_sr: 0x4000,
            ..ReportBlock::default()
        };
        let arrival = 0x1_C000u64 << 16;
        assert_eq!(round_trip(arrival, &b), Some(Duration::from_millis(500)));
        assert_eq!(round_trip(arrival, &ReportBlock::default()), None);
    }

    #[test]
    fn timer_randomised_around_interval() {
        let t0 = Instant::now();
        let mut t = RtcpTimer::new(t0, Duration::from_secs(5), 0.5);
        assert_eq!(t.poll_timeout(), t0 + Duration::from_millis(2500));
        assert!(!t.on_timeout(t0 + Duration::from_secs(2), 0.0));
        let now = t0 + Duration::from_millis(2500);
        assert!(t.on_timeout(now, 0.0));
        assert_eq!(t.poll_timeout(), now + Duration::from_millis(2500));
        assert!(t.on_timeout(t.poll_timeout(), 0.999_999));
        let now = now + Duration::from_millis(2500);
        let gap = t.poll_timeout() - now;
        assert!(gap > Duration::from_millis(7499) && gap <= Duration::from_millis(7500));
        // Nonsense randomness is tolerated.
        let t = RtcpTimer::new(t0, Duration::from_secs(5), f64::NAN);
        assert_eq!(t.poll_timeout(), t0 + Duration::from_millis(2500));
    }
}
