//! SDP for telephony: the session description model, its parser and writer (RFC 8866,
//! formerly RFC 4566), and the RFC 3264 offer/answer rules for one audio stream.
//!
//! Hand-written rather than a general SDP crate because trunks send imperfect SDP (no
//! `t=`, LF line ends, trailing spaces) that strict parsers refuse, and because everything
//! we need from SDP is one audio stream: address, codec, DTMF, direction and SDES keys.
//!
//! - [`parse`]: bytes to [`Sdp`], tolerant of what trunks send, bounded against hostile
//!   input: at most [`MAX_SDP_BYTES`] bytes, [`MAX_LINES`] lines, [`MAX_MEDIA`] media
//!   sections and [`MAX_FORMATS`] formats per section. Never panics; errors name the line.
//! - `write`: [`Sdp`] back to text (`Display`), keeping what we did not interpret.
//! - [`negotiate`]: our offers, our answers to theirs, and theirs to ours, down to the
//!   [`Negotiated`] stream the media layer runs. Codecs are [`Codec`], the type the media
//!   layer codes with.
//!
//! The module is pure: no sockets, clocks or randomness. SRTP key material comes in from the
//! caller, so tests are deterministic and the randomness source is chosen in one place.

use std::fmt;
use std::net::IpAddr;

use base64::Engine as _;

pub use crate::media::codec::Codec;

pub mod negotiate;
pub mod parse;
mod write;

pub use negotiate::{
    accept_answer, answer, offer, Answer, LocalMedia, Negotiated, NegotiationError,
    SrtpKeyMaterial, SrtpKeys, SrtpPolicy,
};
pub use parse::SdpError;

/// SDES keys are standard base64 (RFC 4568 §6.1); some stacks drop the padding, so on input
/// it is optional.
const BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// Longest base64 text decoded: an `inline:` key||salt is at most 46 characters.
const MAX_BASE64: usize = 256;

fn base64_encode(data: &[u8]) -> String {
    BASE64.encode(data)
}

/// `None` when malformed or longer than [`MAX_BASE64`].
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    if s.len() > MAX_BASE64 {
        return None;
    }
    BASE64.decode(s).ok()
}

/// Largest SDP body accepted. Real telephony SDP is well under 4 KiB; WebRTC-style offers
/// with many codecs stay under 16 KiB.
pub const MAX_SDP_BYTES: usize = 64 * 1024;
/// Most lines accepted in one SDP body.
pub const MAX_LINES: usize = 1024;
/// Most `m=` sections accepted in one SDP body.
pub const MAX_MEDIA: usize = 64;
/// Most formats accepted on one `m=` line (RTP payload types are 0–127 anyway).
pub const MAX_FORMATS: usize = 128;

// ---------------------------------------------------------------------------------------
// Data model
// ---------------------------------------------------------------------------------------

/// A parsed session description. Fields we do not interpret are kept so that a parsed
/// body can be serialised again without losing them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sdp {
    pub origin: Origin,
    /// `s=`; `-` when the sender omitted it.
    pub session_name: String,
    /// Session-level `c=`.
    pub connection: Option<Connection>,
    /// `b=` lines, raw (`AS:64`).
    pub bandwidths: Vec<String>,
    /// `t=` start and stop; `(0, 0)` when absent (many trunks omit it). Only the first is kept.
    pub timing: (u64, u64),
    /// Session-level direction attribute, the default for every media section.
    pub direction: Option<Direction>,
    /// Other session-level attributes.
    pub attributes: Vec<Attribute>,
    /// `i=`, `u=`, `e=`, `p=`, `r=`, `z=`, `k=` lines, raw, in the order seen.
    pub other_lines: Vec<(char, String)>,
    pub media: Vec<MediaSection>,
}

/// `o=<username> <sess-id> <sess-version> <nettype> <addrtype> <address>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub username: String,
    pub session_id: u64,
    /// Must grow by one each time we change our SDP within a dialog (RFC 3264 §8); that
    /// bookkeeping belongs to the caller.
    pub session_version: u64,
    pub net_type: String,
    pub addr_type: String,
    /// Kept as text: it may be a host name, and nothing is sent to it.
    pub address: String,
}

/// `c=IN IP4|IP6 <address>`; unicast only, since telephony media is never multicast.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connection {
    pub address: IpAddr,
}

impl Connection {
    /// `0.0.0.0` (or `::`): the RFC 2543 way of putting a call on hold (RFC 3264 §8.4).
    pub fn is_unspecified(&self) -> bool {
        self.address.is_unspecified()
    }
}

/// Media direction attributes (RFC 3264 §5.1), from the point of view of whoever wrote them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl Direction {
    fn from_flags(send: bool, recv: bool) -> Direction {
        match (send, recv) {
            (true, true) => Direction::SendRecv,
            (true, false) => Direction::SendOnly,
            (false, true) => Direction::RecvOnly,
            (false, false) => Direction::Inactive,
        }
    }
    pub fn sends(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::SendOnly)
    }
    pub fn receives(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::RecvOnly)
    }
    /// The direction seen from the other side: what they send, we receive.
    pub fn reversed(self) -> Direction {
        Direction::from_flags(self.receives(), self.sends())
    }
    /// Only what both allow.
    fn intersect(self, other: Direction) -> Direction {
        Direction::from_flags(
            self.sends() && other.sends(),
            self.receives() && other.receives(),
        )
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }
    fn parse(name: &str) -> Option<Direction> {
        match name {
            "sendrecv" => Some(Direction::SendRecv),
            "sendonly" => Some(Direction::SendOnly),
            "recvonly" => Some(Direction::RecvOnly),
            "inactive" => Some(Direction::Inactive),
            _ => None,
        }
    }
}

/// The transport protocol of an `m=` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Protocol {
    RtpAvp,
    RtpAvpf,
    RtpSavp,
    RtpSavpf,
    /// DTLS-SRTP; parsed so it can be rejected cleanly.
    UdpTlsRtpSavp,
    UdpTlsRtpSavpf,
    /// Anything else (`udptl`, `TCP/MSRP`, ...), kept as written.
    Other(String),
}

impl Protocol {
    fn parse(token: &str) -> Protocol {
        // Protocol names are case-sensitive in the grammar, but matching them
        // case-insensitively costs nothing and helps sloppy peers.
        match token.to_ascii_uppercase().as_str() {
            "RTP/AVP" => Protocol::RtpAvp,
            "RTP/AVPF" => Protocol::RtpAvpf,
            "RTP/SAVP" => Protocol::RtpSavp,
            "RTP/SAVPF" => Protocol::RtpSavpf,
            "UDP/TLS/RTP/SAVP" => Protocol::UdpTlsRtpSavp,
            "UDP/TLS/RTP/SAVPF" => Protocol::UdpTlsRtpSavpf,
            _ => Protocol::Other(token.to_owned()),
        }
    }
    pub fn as_str(&self) -> &str {
        match self {
            Protocol::RtpAvp => "RTP/AVP",
            Protocol::RtpAvpf => "RTP/AVPF",
            Protocol::RtpSavp => "RTP/SAVP",
            Protocol::RtpSavpf => "RTP/SAVPF",
            Protocol::UdpTlsRtpSavp => "UDP/TLS/RTP/SAVP",
            Protocol::UdpTlsRtpSavpf => "UDP/TLS/RTP/SAVPF",
            Protocol::Other(s) => s,
        }
    }
    /// Formats are RTP payload type numbers.
    pub fn is_rtp(&self) -> bool {
        !matches!(self, Protocol::Other(_))
    }
    /// SRTP keyed by SDES `a=crypto` (RFC 4568).
    pub fn is_sdes_srtp(&self) -> bool {
        matches!(self, Protocol::RtpSavp | Protocol::RtpSavpf)
    }
}

/// One `m=` section with the attributes we interpret pulled out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaSection {
    /// `audio`, `video`, `image`, ... as written.
    pub media: String,
    /// 0 means the stream is rejected or disabled.
    pub port: u16,
    /// The `/<n>` after the port, rare in telephony.
    pub port_count: Option<u16>,
    pub protocol: Protocol,
    /// Formats in the sender's order of preference; payload type numbers for RTP.
    pub formats: Vec<String>,
    /// Media-level `c=`, overriding the session's.
    pub connection: Option<Connection>,
    pub bandwidths: Vec<String>,
    pub rtpmaps: Vec<RtpMap>,
    pub fmtps: Vec<Fmtp>,
    pub ptime: Option<u32>,
    pub maxptime: Option<u32>,
    pub direction: Option<Direction>,
    pub rtcp: Option<RtcpAttr>,
    pub rtcp_mux: bool,
    pub crypto: Vec<Crypto>,
    pub attributes: Vec<Attribute>,
    /// `i=` and `k=` lines, raw.
    pub other_lines: Vec<(char, String)>,
}

impl MediaSection {
    /// An empty section, for building SDP by hand.
    pub fn new(media: &str, port: u16, protocol: Protocol) -> MediaSection {
        MediaSection {
            media: media.to_owned(),
            port,
            port_count: None,
            protocol,
            formats: Vec::new(),
            connection: None,
            bandwidths: Vec::new(),
            rtpmaps: Vec::new(),
            fmtps: Vec::new(),
            ptime: None,
            maxptime: None,
            direction: None,
            rtcp: None,
            rtcp_mux: false,
            crypto: Vec::new(),
            attributes: Vec::new(),
            other_lines: Vec::new(),
        }
    }
    pub fn is_audio(&self) -> bool {
        self.media.eq_ignore_ascii_case("audio")
    }
    /// The formats that are RTP payload types, in order.
    pub fn payload_types(&self) -> impl Iterator<Item = u8> + '_ {
        self.formats.iter().filter_map(|f| f.parse::<u8>().ok())
    }
    pub fn rtpmap(&self, pt: u8) -> Option<&RtpMap> {
        self.rtpmaps.iter().find(|r| r.payload_type == pt)
    }
    pub fn fmtp(&self, format: &str) -> Option<&Fmtp> {
        self.fmtps.iter().find(|f| f.format == format)
    }
}

/// `a=rtpmap:<pt> <encoding>/<clock rate>[/<channels>]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpMap {
    pub payload_type: u8,
    pub encoding: String,
    pub clock_rate: u32,
    /// Encoding parameters; the channel count for audio.
    pub channels: Option<u32>,
}

/// `a=fmtp:<format> <parameters>`, parameters raw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fmtp {
    pub format: String,
    pub params: String,
}

/// `a=rtcp:<port> [IN IP4|IP6 <address>]` (RFC 3605).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtcpAttr {
    pub port: u16,
    pub connection: Option<Connection>,
}

/// Any attribute we do not interpret: `a=<name>[:<value>]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attribute {
    pub name: String,
    pub value: Option<String>,
}

/// SRTP protection profiles we can key from SDES.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SrtpSuite {
    AesCm128HmacSha1_80,
    AesCm128HmacSha1_32,
    AeadAes128Gcm,
}

impl SrtpSuite {
    /// Our preference when we offer; when answering, the offerer's order wins.
    pub const ALL: [SrtpSuite; 3] = [
        SrtpSuite::AesCm128HmacSha1_80,
        SrtpSuite::AesCm128HmacSha1_32,
        SrtpSuite::AeadAes128Gcm,
    ];
    pub fn name(self) -> &'static str {
        match self {
            SrtpSuite::AesCm128HmacSha1_80 => "AES_CM_128_HMAC_SHA1_80",
            SrtpSuite::AesCm128HmacSha1_32 => "AES_CM_128_HMAC_SHA1_32",
            SrtpSuite::AeadAes128Gcm => "AEAD_AES_128_GCM",
        }
    }
    pub fn from_name(name: &str) -> Option<SrtpSuite> {
        SrtpSuite::ALL.into_iter().find(|s| s.name() == name)
    }
    /// Master key length in bytes.
    pub fn key_len(self) -> usize {
        16
    }
    /// Master salt length in bytes: 112 bits for AES-CM (RFC 3711), 96 for GCM (RFC 7714).
    pub fn salt_len(self) -> usize {
        match self {
            SrtpSuite::AesCm128HmacSha1_80 | SrtpSuite::AesCm128HmacSha1_32 => 14,
            SrtpSuite::AeadAes128Gcm => 12,
        }
    }
    /// Length of the `inline:` key||salt.
    pub fn key_salt_len(self) -> usize {
        self.key_len() + self.salt_len()
    }
}

/// `a=crypto:<tag> <suite> <key-params> [<session-params>]` (RFC 4568).
#[derive(Clone, PartialEq, Eq)]
pub struct Crypto {
    pub tag: u32,
    /// Suite name as written; see [`Crypto::srtp_suite`].
    pub suite: String,
    /// Key parameters exactly as written (`inline:<base64>[|lifetime][|mki:len]`, possibly
    /// several separated by `;`).
    pub key_params: String,
    pub session_params: Vec<String>,
    /// The first key's decoded key||salt, length-checked, for suites we know; `None` for
    /// other suites.
    pub key_salt: Option<Vec<u8>>,
}

impl fmt::Debug for Crypto {
    // Keys stay out of logs even though they cross the wire in the SIP body.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Crypto")
            .field("tag", &self.tag)
            .field("suite", &self.suite)
            .field("key_params", &"<redacted>")
            .field("session_params", &self.session_params)
            .finish()
    }
}

impl Crypto {
    pub fn srtp_suite(&self) -> Option<SrtpSuite> {
        SrtpSuite::from_name(&self.suite)
    }

    /// A crypto line carrying our key for `suite`.
    fn ours(tag: u32, suite: SrtpSuite, key_salt: &[u8]) -> Crypto {
        Crypto {
            tag,
            suite: suite.name().to_owned(),
            key_params: format!("inline:{}", base64_encode(key_salt)),
            session_params: Vec::new(),
            key_salt: Some(key_salt.to_vec()),
        }
    }

    /// Whether we can key SRTP from this line: a known suite, exactly one key, no MKI
    /// (our SRTP layer has none) and no session parameters (we implement none of them).
    fn usable(&self) -> Option<(SrtpSuite, &[u8])> {
        let suite = self.srtp_suite()?;
        let key = self.key_salt.as_deref()?;
        let single_key = !self.key_params.contains(';');
        let has_mki = self
            .key_params
            .split('|')
            .skip(1)
            .any(|part| part.contains(':'));
        (single_key && !has_mki && self.session_params.is_empty()).then_some((suite, key))
    }
}

#[cfg(test)]
mod tests;
