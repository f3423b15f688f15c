//! A small reader for classic libpcap files (what tcpdump writes and what SIPp replays):
//! UDP over IPv4 on Ethernet, Linux cooked (v1, v2), BSD loopback or raw IP links; and the
//! RTP fixed header (RFC 3550 §5.1).

use std::net::{Ipv4Addr, SocketAddrV4};

/// One UDP datagram from a capture.
#[derive(Clone, Debug)]
pub struct UdpPacket {
    /// Capture time in seconds.
    pub time: f64,
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub payload: Vec<u8>,
}

/// Why a capture could not be read.
#[derive(Debug)]
pub struct PcapError(pub String);

impl std::fmt::Display for PcapError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pcap: {}", self.0)
    }
}

/// Reads every IPv4/UDP datagram of a capture. A record cut short at the end of the file
/// (a capture stopped mid-write) is ignored; anything else malformed is an error.
pub fn read_udp(bytes: &[u8]) -> Result<Vec<UdpPacket>, PcapError> {
    if bytes.len() < 24 {
        return Err(PcapError(format!(
            "{} bytes: no global header",
            bytes.len()
        )));
    }
    let magic = u32::from_le_bytes(bytes[0..4].try_into().unwrap());
    let (le, nanos) = match magic {
        0xA1B2_C3D4 => (true, false),
        0xA1B2_3C4D => (true, true),
        0xD4C3_B2A1 => (false, false),
        0x4D3C_B2A1 => (false, true),
        other => {
            return Err(PcapError(format!(
                "bad magic {other:#010x} (pcapng is not supported)"
            )))
        }
    };
    let u32_at = |b: &[u8], at: usize| -> u32 {
        let a: [u8; 4] = b[at..at + 4].try_into().unwrap();
        if le {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        }
    };
    let major = if le {
        u16::from_le_bytes([bytes[4], bytes[5]])
    } else {
        u16::from_be_bytes([bytes[4], bytes[5]])
    };
    if major != 2 {
        return Err(PcapError(format!("version {major}, expected 2")));
    }
    let linktype = u32_at(bytes, 20) & 0x0FFF_FFFF;
    let mut out = Vec::new();
    let mut at = 24;
    while at + 16 <= bytes.len() {
        let sec = u32_at(bytes, at);
        let frac = u32_at(bytes, at + 4);
        let incl = u32_at(bytes, at + 8) as usize;
        at += 16;
        if at + incl > bytes.len() {
            break; // truncated final record
        }
        let frame = &bytes[at..at + incl];
        at += incl;
        let time = sec as f64 + frac as f64 / if nanos { 1e9 } else { 1e6 };
        let ip = match linktype {
            // Ethernet, with optional 802.1Q tags.
            1 => {
                let mut off = 12;
                loop {
                    let Some(et) = frame.get(off..off + 2) else {
                        break None;
                    };
                    match u16::from_be_bytes([et[0], et[1]]) {
                        0x8100 | 0x88A8 => off += 4,
                        0x0800 => break Some(&frame[off + 2..]),
                        _ => break None,
                    }
                }
            }
            // Linux cooked v1: 16-byte header, protocol at 14.
            113 => (frame.len() >= 16 && frame[14..16] == [0x08, 0x00]).then(|| &frame[16..]),
            // Linux cooked v2: 20-byte header, protocol at 0.
            276 => (frame.len() >= 20 && frame[0..2] == [0x08, 0x00]).then(|| &frame[20..]),
            // BSD loopback: 4-byte address family in host order (2 = AF_INET).
            0 => (frame.len() >= 4 && (frame[0] == 2 || frame[3] == 2)).then(|| &frame[4..]),
            // Raw IP.
            101 | 12 | 14 | 228 => Some(frame),
            other => return Err(PcapError(format!("unsupported link type {other}"))),
        };
        let Some(ip) = ip else { continue };
        if let Some(p) = parse_ipv4_udp(ip, time) {
            out.push(p);
        }
    }
    Ok(out)
}

fn parse_ipv4_udp(ip: &[u8], time: f64) -> Option<UdpPacket> {
    if ip.len() < 20 || ip[0] >> 4 != 4 || ip[9] != 17 {
        return None;
    }
    let ihl = (ip[0] & 0x0F) as usize * 4;
    let total = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    // Fragments are not reassembled (RTP never fragments on loopback).
    let frag = u16::from_be_bytes([ip[6], ip[7]]) & 0x3FFF;
    if frag != 0 || ihl < 20 || ip.len() < ihl + 8 {
        return None;
    }
    let total = total.min(ip.len());
    let src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let udp = &ip[ihl..total];
    let sport = u16::from_be_bytes([udp[0], udp[1]]);
    let dport = u16::from_be_bytes([udp[2], udp[3]]);
    let ulen = (u16::from_be_bytes([udp[4], udp[5]]) as usize).clamp(8, udp.len());
    Some(UdpPacket {
        time,
        src: SocketAddrV4::new(src, sport),
        dst: SocketAddrV4::new(dst, dport),
        payload: udp[8..ulen].to_vec(),
    })
}

/// The parts of an RTP packet the tests look at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rtp {
    pub marker: bool,
    pub pt: u8,
    pub seq: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    pub payload: Vec<u8>,
}

impl Rtp {
    /// Parses an RTP packet (version 2, CSRCs, extension and padding handled); `None` for
    /// anything else, including RTCP (payload types 64–95 with the marker bit: 200–211).
    pub fn parse(b: &[u8]) -> Option<Rtp> {
        if b.len() < 12 || b[0] >> 6 != 2 {
            return None;
        }
        if (200..=211).contains(&b[1]) {
            return None; // RTCP
        }
        let cc = (b[0] & 0x0F) as usize;
        let mut off = 12 + 4 * cc;
        if b[0] & 0x10 != 0 {
            let ext = b.get(off..off + 4)?;
            off += 4 + 4 * u16::from_be_bytes([ext[2], ext[3]]) as usize;
        }
        let mut end = b.len();
        if b[0] & 0x20 != 0 {
            let pad = *b.last()? as usize;
            end = end.checked_sub(pad)?;
        }
        if off > end {
            return None;
        }
        Some(Rtp {
            marker: b[1] & 0x80 != 0,
            pt: b[1] & 0x7F,
            seq: u16::from_be_bytes([b[2], b[3]]),
            timestamp: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
            ssrc: u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
            payload: b[off..end].to_vec(),
        })
    }
}

/// An RFC 4733 telephone-event payload: (event, end bit, duration).
pub fn telephone_event(payload: &[u8]) -> Option<(u8, bool, u16)> {
    (payload.len() >= 4).then(|| {
        (
            payload[0],
            payload[1] & 0x80 != 0,
            u16::from_be_bytes([payload[2], payload[3]]),
        )
    })
}

/// RTP packets of a capture, each with its datagram.
pub type RtpPackets = Vec<(UdpPacket, Rtp)>;

/// Splits the RTP of a capture at a peer's `ports` (inclusive): what the peer sent (from
/// those ports, to elsewhere) and what it was sent (to those ports, from elsewhere), each
/// with its datagram.
pub fn split_rtp(packets: &[UdpPacket], ports: (u16, u16)) -> (RtpPackets, RtpPackets) {
    let ours = |port: u16| (ports.0..=ports.1).contains(&port);
    let mut sent = Vec::new();
    let mut received = Vec::new();
    for p in packets {
        let Some(rtp) = Rtp::parse(&p.payload) else {
            continue;
        };
        match (ours(p.src.port()), ours(p.dst.port())) {
            (true, false) => sent.push((p.clone(), rtp)),
            (false, true) => received.push((p.clone(), rtp)),
            _ => {}
        }
    }
    (sent, received)
}

/// The RTP of `(datagram, RTP)` pairs, in order.
pub fn rtp_only(pairs: RtpPackets) -> Vec<Rtp> {
    pairs.into_iter().map(|(_, r)| r).collect()
}
