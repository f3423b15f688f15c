//! SDP for telephony: a small parser and serialiser (RFC 8866, formerly RFC 4566) and the
//! RFC 3264 offer/answer rules for one audio stream.
//!
//! Hand-written rather than a general SDP crate because trunks send imperfect SDP (no
//! `t=`, LF line ends, trailing spaces) that strict parsers refuse, and because everything
//! we need from SDP is one audio stream: address, codec, DTMF, direction and SDES keys.
//!
//! The module is pure: no sockets, clocks or randomness. SRTP key material comes in from the
//! caller, so tests are deterministic and the randomness source is chosen in one place.
//!
//! Hostile input is bounded: at most [`MAX_SDP_BYTES`] bytes, [`MAX_LINES`] lines,
//! [`MAX_MEDIA`] media sections and [`MAX_FORMATS`] formats per section. Parsing never
//! panics; errors name the offending line.

use std::fmt::{self, Write as _};
use std::net::{IpAddr, SocketAddr};

/// Largest SDP body accepted. Real telephony SDP is well under 4 KiB; WebRTC-style offers
/// with many codecs stay under 16 KiB.
pub const MAX_SDP_BYTES: usize = 64 * 1024;
/// Most lines accepted in one SDP body.
pub const MAX_LINES: usize = 1024;
/// Most `m=` sections accepted in one SDP body.
pub const MAX_MEDIA: usize = 64;
/// Most formats accepted on one `m=` line (RTP payload types are 0–127 anyway).
pub const MAX_FORMATS: usize = 128;

/// Longest excerpt of an offending line quoted in an error, so errors stay loggable.
const MAX_QUOTED_CHARS: usize = 80;

/// The payload type we use for telephone-event when we make the offer (the common choice
/// of Asterisk, FreeSWITCH and Twilio).
const OFFER_TELEPHONE_EVENT_PT: u8 = 101;
/// RFC 4733 events we handle: the DTMF digits 0–9 * # A–D (0–15) and flash (16).
const SUPPORTED_EVENTS: std::ops::RangeInclusive<u8> = 0..=16;
/// Packetization we send and ask for, in milliseconds.
const DEFAULT_PTIME: u32 = 20;

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

/// Why an SDP body could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    #[error("SDP body is empty")]
    Empty,
    #[error("SDP body is {len} bytes, more than the {max} allowed")]
    TooLarge { len: usize, max: usize },
    #[error("SDP body is not valid UTF-8")]
    NotUtf8,
    #[error("SDP body has more than {max} lines")]
    TooManyLines { max: usize },
    #[error("SDP line {line} ({text:?}): {reason}")]
    Line {
        /// 1-based line number.
        line: usize,
        /// The line, truncated for logging.
        text: String,
        reason: String,
    },
    #[error("SDP has no {0}= line")]
    Missing(char),
}

impl SdpError {
    /// The SIP status to answer a request carrying this body with: the body is malformed.
    pub fn sip_status(&self) -> u16 {
        400
    }
}

fn line_error(line: usize, text: &str, reason: impl Into<String>) -> SdpError {
    // Errors get logged: quote a crypto line only up to its suite, never its key.
    let text: String = if text.starts_with("a=crypto") {
        let mut kept: Vec<&str> = text.split_whitespace().take(2).collect();
        kept.push("<redacted>");
        kept.join(" ")
    } else {
        text.to_owned()
    };
    SdpError::Line {
        line,
        text: text.chars().take(MAX_QUOTED_CHARS).collect(),
        reason: reason.into(),
    }
}

/// Why an offer or answer could not be agreed on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NegotiationError {
    #[error("no audio stream offered")]
    NoAudio,
    #[error("no codec in common")]
    NoCommonCodec,
    #[error("SRTP offered but not allowed by configuration")]
    SrtpNotAllowed,
    #[error("plain RTP offered but SRTP is required")]
    SrtpRequired,
    #[error("no usable a=crypto attribute (supported suites: AES_CM_128_HMAC_SHA1_80, AES_CM_128_HMAC_SHA1_32, AEAD_AES_128_GCM; no MKI, one key, no session parameters)")]
    NoUsableCrypto,
    #[error("unsupported media transport {0}")]
    UnsupportedTransport(String),
    #[error("no connection address (c=) for the audio stream")]
    NoConnectionAddress,
    #[error("answer has {answered} media sections but the offer had {offered}")]
    MediaCountMismatch { offered: usize, answered: usize },
    #[error("answer media section {index} does not match the offer's media type or transport")]
    MediaMismatch { index: usize },
    #[error("answer rejected the audio stream")]
    AudioRejected,
    #[error("answer's a=crypto does not match one we offered")]
    CryptoMismatch,
}

impl NegotiationError {
    /// The SIP status for a failed offer: 488 Not Acceptable Here (RFC 3261 §21.4.26).
    pub fn sip_status(&self) -> u16 {
        488
    }
}

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

// ---------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------

impl std::str::FromStr for Sdp {
    type Err = SdpError;
    fn from_str(s: &str) -> Result<Sdp, SdpError> {
        Sdp::parse(s.as_bytes())
    }
}

impl Sdp {
    /// Parses a body as received. Both CRLF and bare LF line ends are accepted, blank lines
    /// and trailing whitespace are ignored, and a missing `t=` or `s=` is tolerated.
    pub fn parse(input: &[u8]) -> Result<Sdp, SdpError> {
        if input.len() > MAX_SDP_BYTES {
            return Err(SdpError::TooLarge {
                len: input.len(),
                max: MAX_SDP_BYTES,
            });
        }
        let text = std::str::from_utf8(input).map_err(|_| SdpError::NotUtf8)?;
        let mut parser = Parser::default();
        for (index, raw) in text.split('\n').enumerate() {
            let line = raw.trim_end();
            if line.is_empty() {
                // Blank lines are bounded by MAX_SDP_BYTES; not counting them lets a body
                // of exactly MAX_LINES lines end with a newline.
                continue;
            }
            if index >= MAX_LINES {
                return Err(SdpError::TooManyLines { max: MAX_LINES });
            }
            parser.line(index + 1, line)?;
        }
        parser.finish()
    }
}

#[derive(Default)]
struct Parser {
    seen_version: bool,
    origin: Option<Origin>,
    session_name: Option<String>,
    connection: Option<Connection>,
    bandwidths: Vec<String>,
    timing: Option<(u64, u64)>,
    direction: Option<Direction>,
    attributes: Vec<Attribute>,
    other_lines: Vec<(char, String)>,
    media: Vec<MediaSection>,
}

impl Parser {
    fn line(&mut self, no: usize, line: &str) -> Result<(), SdpError> {
        let bytes = line.as_bytes();
        let kind = match bytes {
            [k, b'=', ..] if k.is_ascii_lowercase() => char::from(*k),
            _ => return Err(line_error(no, line, "not a <type>=<value> line")),
        };
        // cannot fail: the first two bytes are ASCII, so index 2 is a char boundary.
        let value = &line[2..];
        let err = |reason: &str| line_error(no, line, reason);

        if !self.seen_version {
            if kind != 'v' {
                return Err(err("SDP must start with v="));
            }
            if value.trim() != "0" {
                return Err(err("unsupported SDP version"));
            }
            self.seen_version = true;
            return Ok(());
        }

        match kind {
            'v' => Err(err("duplicate v= line")),
            'o' if self.media.is_empty() => {
                if self.origin.is_some() {
                    return Err(err("duplicate o= line"));
                }
                self.origin = Some(parse_origin(value).ok_or_else(|| err("malformed o= line"))?);
                Ok(())
            }
            's' if self.media.is_empty() => {
                if self.session_name.is_some() {
                    return Err(err("duplicate s= line"));
                }
                self.session_name = Some(value.to_owned());
                Ok(())
            }
            't' if self.media.is_empty() => {
                // Repeated t= lines are legal; the first is all telephony needs.
                let timing = parse_timing(value).ok_or_else(|| err("malformed t= line"))?;
                self.timing.get_or_insert(timing);
                Ok(())
            }
            'c' => {
                let conn = parse_connection(value).map_err(err)?;
                let slot = match self.media.last_mut() {
                    Some(m) => &mut m.connection,
                    None => &mut self.connection,
                };
                if slot.is_some() {
                    return Err(err("duplicate c= line"));
                }
                *slot = Some(conn);
                Ok(())
            }
            'b' => {
                if !value.contains(':') {
                    return Err(err("malformed b= line"));
                }
                match self.media.last_mut() {
                    Some(m) => m.bandwidths.push(value.to_owned()),
                    None => self.bandwidths.push(value.to_owned()),
                }
                Ok(())
            }
            'm' => {
                if self.media.len() >= MAX_MEDIA {
                    return Err(err("too many media sections"));
                }
                self.media.push(parse_media_line(value).map_err(err)?);
                Ok(())
            }
            'a' => match self.media.last_mut() {
                Some(m) => media_attribute(m, value).map_err(err),
                None => session_attribute(self, value).map_err(err),
            },
            'i' | 'k' => {
                match self.media.last_mut() {
                    Some(m) => m.other_lines.push((kind, value.to_owned())),
                    None => self.other_lines.push((kind, value.to_owned())),
                }
                Ok(())
            }
            'u' | 'e' | 'p' | 'r' | 'z' if self.media.is_empty() => {
                self.other_lines.push((kind, value.to_owned()));
                Ok(())
            }
            'o' | 's' | 't' | 'u' | 'e' | 'p' | 'r' | 'z' => {
                Err(err("session-level line inside a media section"))
            }
            _ => Err(err("unknown line type")),
        }
    }

    fn finish(self) -> Result<Sdp, SdpError> {
        if !self.seen_version {
            return Err(SdpError::Empty);
        }
        Ok(Sdp {
            origin: self.origin.ok_or(SdpError::Missing('o'))?,
            session_name: self.session_name.unwrap_or_else(|| "-".to_owned()),
            connection: self.connection,
            bandwidths: self.bandwidths,
            timing: self.timing.unwrap_or((0, 0)),
            direction: self.direction,
            attributes: self.attributes,
            other_lines: self.other_lines,
            media: self.media,
        })
    }
}

fn parse_origin(value: &str) -> Option<Origin> {
    let mut it = value.split_whitespace();
    let origin = Origin {
        username: it.next()?.to_owned(),
        session_id: it.next()?.parse().ok()?,
        session_version: it.next()?.parse().ok()?,
        net_type: it.next()?.to_owned(),
        addr_type: it.next()?.to_owned(),
        address: it.next()?.to_owned(),
    };
    it.next().is_none().then_some(origin)
}

fn parse_timing(value: &str) -> Option<(u64, u64)> {
    let mut it = value.split_whitespace();
    let start = it.next()?.parse().ok()?;
    let stop = it.next()?.parse().ok()?;
    it.next().is_none().then_some((start, stop))
}

/// `IN IP4 <addr>` / `IN IP6 <addr>`; also used by `a=rtcp`.
fn parse_connection_parts<'a>(
    mut it: impl Iterator<Item = &'a str>,
) -> Result<Connection, &'static str> {
    let (Some(net), Some(addr_type), Some(addr)) = (it.next(), it.next(), it.next()) else {
        return Err("connection data needs <nettype> <addrtype> <address>");
    };
    if it.next().is_some() {
        return Err("trailing fields after the connection address");
    }
    if !net.eq_ignore_ascii_case("IN") {
        return Err("only the IN network type is supported");
    }
    if addr.contains('/') {
        return Err("multicast connection addresses are not supported");
    }
    let address: IpAddr = addr
        .parse()
        .map_err(|_| "connection address is not an IP literal")?;
    let family_ok = match addr_type.to_ascii_uppercase().as_str() {
        "IP4" => address.is_ipv4(),
        "IP6" => address.is_ipv6(),
        _ => return Err("address type must be IP4 or IP6"),
    };
    if !family_ok {
        return Err("address does not match its address type");
    }
    Ok(Connection { address })
}

fn parse_connection(value: &str) -> Result<Connection, &'static str> {
    parse_connection_parts(value.split_whitespace())
}

fn parse_media_line(value: &str) -> Result<MediaSection, &'static str> {
    let mut it = value.split_whitespace();
    let (Some(media), Some(port_field), Some(proto)) = (it.next(), it.next(), it.next()) else {
        return Err("m= needs <media> <port> <proto> <fmt>...");
    };
    let (port, port_count) = match port_field.split_once('/') {
        Some((p, n)) => (p, Some(n)),
        None => (port_field, None),
    };
    let port: u16 = port
        .parse()
        .map_err(|_| "m= port is not a number 0-65535")?;
    let port_count = match port_count {
        Some(n) => match n.parse::<u16>() {
            Ok(n) if n > 0 => Some(n),
            _ => return Err("m= port count is not a positive number"),
        },
        None => None,
    };
    let protocol = Protocol::parse(proto);
    let mut section = MediaSection::new(media, port, protocol);
    section.port_count = port_count;
    for fmt in it {
        if section.formats.len() >= MAX_FORMATS {
            return Err("too many formats on the m= line");
        }
        if section.protocol.is_rtp() && !matches!(fmt.parse::<u8>(), Ok(pt) if pt <= 127) {
            return Err("RTP payload type is not a number 0-127");
        }
        section.formats.push(fmt.to_owned());
    }
    // The grammar needs one format; tolerate none only on a rejected stream.
    if section.formats.is_empty() && port != 0 {
        return Err("m= line has no formats");
    }
    Ok(section)
}

fn split_attribute(value: &str) -> Result<(&str, Option<&str>), &'static str> {
    let (name, val) = match value.split_once(':') {
        Some((n, v)) => (n, Some(v)),
        None => (value, None),
    };
    if name.is_empty() || name.chars().any(char::is_whitespace) {
        return Err("malformed attribute name");
    }
    Ok((name, val))
}

fn set_direction(slot: &mut Option<Direction>, dir: Direction) -> Result<(), &'static str> {
    match slot {
        Some(existing) if *existing != dir => Err("conflicting direction attributes"),
        _ => {
            *slot = Some(dir);
            Ok(())
        }
    }
}

fn raw_attribute(name: &str, value: Option<&str>) -> Attribute {
    Attribute {
        name: name.to_owned(),
        value: value.map(str::to_owned),
    }
}

fn session_attribute(p: &mut Parser, value: &str) -> Result<(), &'static str> {
    let (name, val) = split_attribute(value)?;
    match Direction::parse(name) {
        Some(dir) if val.is_none() => set_direction(&mut p.direction, dir),
        _ => {
            p.attributes.push(raw_attribute(name, val));
            Ok(())
        }
    }
}

fn media_attribute(m: &mut MediaSection, value: &str) -> Result<(), &'static str> {
    let (name, val) = split_attribute(value)?;
    if let (Some(dir), None) = (Direction::parse(name), val) {
        return set_direction(&mut m.direction, dir);
    }
    match (name, val) {
        ("rtpmap", Some(v)) => {
            let map = parse_rtpmap(v).ok_or("malformed a=rtpmap")?;
            if m.rtpmap(map.payload_type).is_some() {
                return Err("duplicate a=rtpmap for one payload type");
            }
            m.rtpmaps.push(map);
        }
        ("fmtp", Some(v)) => {
            let (format, params) = match v.split_once(char::is_whitespace) {
                Some((f, p)) => (f, p.trim()),
                None => (v, ""),
            };
            if format.is_empty() {
                return Err("malformed a=fmtp");
            }
            m.fmtps.push(Fmtp {
                format: format.to_owned(),
                params: params.to_owned(),
            });
        }
        ("ptime", Some(v)) => m.ptime = Some(parse_ptime(v).ok_or("malformed a=ptime")?),
        ("maxptime", Some(v)) => {
            m.maxptime = Some(parse_ptime(v).ok_or("malformed a=maxptime")?);
        }
        ("rtcp", Some(v)) => {
            let mut it = v.split_whitespace();
            let port = it
                .next()
                .and_then(|p| p.parse::<u16>().ok())
                .ok_or("a=rtcp port is not a number 0-65535")?;
            let rest: Vec<&str> = it.by_ref().take(4).collect();
            let connection = if rest.is_empty() {
                None
            } else {
                Some(parse_connection_parts(rest.into_iter())?)
            };
            m.rtcp = Some(RtcpAttr { port, connection });
        }
        ("rtcp-mux", None) => m.rtcp_mux = true,
        ("crypto", Some(v)) => m.crypto.push(parse_crypto(v)?),
        _ => m.attributes.push(raw_attribute(name, val)),
    }
    Ok(())
}

fn parse_rtpmap(v: &str) -> Option<RtpMap> {
    let (pt, rest) = v.trim().split_once(char::is_whitespace)?;
    let payload_type: u8 = pt.parse().ok().filter(|pt| *pt <= 127)?;
    let mut parts = rest.trim().split('/');
    let encoding = parts.next().filter(|e| !e.is_empty())?.to_owned();
    let clock_rate: u32 = parts.next()?.parse().ok().filter(|r| *r > 0)?;
    let channels = match parts.next() {
        Some(c) => Some(c.parse::<u32>().ok().filter(|c| *c > 0)?),
        None => None,
    };
    if parts.next().is_some() {
        return None;
    }
    Some(RtpMap {
        payload_type,
        encoding,
        clock_rate,
        channels,
    })
}

/// Milliseconds; some stacks write `20.0`, so a fractional part is accepted and dropped.
fn parse_ptime(v: &str) -> Option<u32> {
    let v = v.trim();
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    int.parse::<u32>()
        .ok()
        .filter(|ms| (1..=10_000).contains(ms))
}

fn parse_crypto(v: &str) -> Result<Crypto, &'static str> {
    let mut it = v.split_whitespace();
    let (Some(tag), Some(suite), Some(key_params)) = (it.next(), it.next(), it.next()) else {
        return Err("a=crypto needs <tag> <suite> <key-params>");
    };
    let tag: u32 = match tag.parse() {
        Ok(t) if tag.len() <= 9 => t,
        _ => return Err("a=crypto tag is not a 1-9 digit number"),
    };
    let session_params: Vec<String> = it.take(16).map(str::to_owned).collect();
    let first = key_params.split(';').next().unwrap_or(key_params);
    let Some(inline) = first.strip_prefix("inline:") else {
        return Err("a=crypto key-params must start with inline:");
    };
    let key_salt = match SrtpSuite::from_name(suite) {
        Some(s) => {
            let encoded = inline.split('|').next().unwrap_or(inline);
            let key = base64_decode(encoded).ok_or("a=crypto key is not valid base64")?;
            if key.len() != s.key_salt_len() {
                return Err("a=crypto key||salt has the wrong length for its suite");
            }
            Some(key)
        }
        None => None,
    };
    Ok(Crypto {
        tag,
        suite: suite.to_owned(),
        key_params: key_params.to_owned(),
        session_params,
        key_salt,
    })
}

// ---------------------------------------------------------------------------------------
// Serialisation
// ---------------------------------------------------------------------------------------

impl fmt::Display for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.address {
            IpAddr::V4(a) => write!(f, "IN IP4 {a}"),
            IpAddr::V6(a) => write!(f, "IN IP6 {a}"),
        }
    }
}

impl fmt::Display for Attribute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(v) => write!(f, "a={}:{}\r\n", self.name, v),
            None => write!(f, "a={}\r\n", self.name),
        }
    }
}

/// Serialises with CRLF line ends in RFC 8866 order.
impl fmt::Display for Sdp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let o = &self.origin;
        f.write_str("v=0\r\n")?;
        write!(
            f,
            "o={} {} {} {} {} {}\r\n",
            o.username, o.session_id, o.session_version, o.net_type, o.addr_type, o.address
        )?;
        write!(f, "s={}\r\n", self.session_name)?;
        write_other_lines(f, &self.other_lines, &['i', 'u', 'e', 'p'])?;
        if let Some(c) = &self.connection {
            write!(f, "c={c}\r\n")?;
        }
        for b in &self.bandwidths {
            write!(f, "b={b}\r\n")?;
        }
        write!(f, "t={} {}\r\n", self.timing.0, self.timing.1)?;
        write_other_lines(f, &self.other_lines, &['r', 'z', 'k'])?;
        if let Some(d) = self.direction {
            write!(f, "a={}\r\n", d.as_str())?;
        }
        for a in &self.attributes {
            write!(f, "{a}")?;
        }
        for m in &self.media {
            write!(f, "{m}")?;
        }
        Ok(())
    }
}

fn write_other_lines(
    f: &mut fmt::Formatter<'_>,
    lines: &[(char, String)],
    kinds: &[char],
) -> fmt::Result {
    for (kind, value) in lines.iter().filter(|(k, _)| kinds.contains(k)) {
        write!(f, "{kind}={value}\r\n")?;
    }
    Ok(())
}

impl fmt::Display for MediaSection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "m={} {}", self.media, self.port)?;
        if let Some(n) = self.port_count {
            write!(f, "/{n}")?;
        }
        write!(f, " {}", self.protocol.as_str())?;
        for fmt in &self.formats {
            write!(f, " {fmt}")?;
        }
        f.write_str("\r\n")?;
        write_other_lines(f, &self.other_lines, &['i'])?;
        if let Some(c) = &self.connection {
            write!(f, "c={c}\r\n")?;
        }
        for b in &self.bandwidths {
            write!(f, "b={b}\r\n")?;
        }
        write_other_lines(f, &self.other_lines, &['k'])?;
        for r in &self.rtpmaps {
            write!(
                f,
                "a=rtpmap:{} {}/{}",
                r.payload_type, r.encoding, r.clock_rate
            )?;
            if let Some(ch) = r.channels {
                write!(f, "/{ch}")?;
            }
            f.write_str("\r\n")?;
        }
        for p in &self.fmtps {
            write!(f, "a=fmtp:{} {}\r\n", p.format, p.params)?;
        }
        if let Some(p) = self.ptime {
            write!(f, "a=ptime:{p}\r\n")?;
        }
        if let Some(p) = self.maxptime {
            write!(f, "a=maxptime:{p}\r\n")?;
        }
        if let Some(r) = &self.rtcp {
            write!(f, "a=rtcp:{}", r.port)?;
            if let Some(c) = &r.connection {
                write!(f, " {c}")?;
            }
            f.write_str("\r\n")?;
        }
        if self.rtcp_mux {
            f.write_str("a=rtcp-mux\r\n")?;
        }
        for c in &self.crypto {
            write!(f, "a=crypto:{} {} {}", c.tag, c.suite, c.key_params)?;
            for p in &c.session_params {
                write!(f, " {p}")?;
            }
            f.write_str("\r\n")?;
        }
        if let Some(d) = self.direction {
            write!(f, "a={}\r\n", d.as_str())?;
        }
        for a in &self.attributes {
            write!(f, "{a}")?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Offer / answer
// ---------------------------------------------------------------------------------------

/// Audio codecs the media layer can run. Local to this module until the codec module lands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AudioCodec {
    Pcmu,
    Pcma,
    G722,
}

impl AudioCodec {
    /// The RFC 3551 static payload type.
    pub fn static_payload_type(self) -> u8 {
        match self {
            AudioCodec::Pcmu => 0,
            AudioCodec::Pcma => 8,
            AudioCodec::G722 => 9,
        }
    }
    pub fn encoding_name(self) -> &'static str {
        match self {
            AudioCodec::Pcmu => "PCMU",
            AudioCodec::Pcma => "PCMA",
            AudioCodec::G722 => "G722",
        }
    }
    /// RTP clock rate: 8000 for all three, G.722 included despite sampling at 16 kHz
    /// (RFC 3551 §4.5.2 keeps its historical 8000).
    pub fn clock_rate(self) -> u32 {
        8000
    }
    fn from_static(pt: u8) -> Option<AudioCodec> {
        match pt {
            0 => Some(AudioCodec::Pcmu),
            8 => Some(AudioCodec::Pcma),
            9 => Some(AudioCodec::G722),
            _ => None,
        }
    }
    fn from_rtpmap(map: &RtpMap) -> Option<AudioCodec> {
        let codec = [AudioCodec::Pcmu, AudioCodec::Pcma, AudioCodec::G722]
            .into_iter()
            .find(|c| map.encoding.eq_ignore_ascii_case(c.encoding_name()))?;
        let mono = matches!(map.channels, None | Some(1));
        (map.clock_rate == codec.clock_rate() && mono).then_some(codec)
    }
}

/// 30 bytes of random key material from the caller; each suite uses a prefix of it as its
/// master key||salt. Debug output is redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct SrtpKeyMaterial(pub [u8; 30]);

impl fmt::Debug for SrtpKeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SrtpKeyMaterial(<redacted>)")
    }
}

impl SrtpKeyMaterial {
    fn for_suite(&self, suite: SrtpSuite) -> &[u8] {
        // cannot fail: every suite's key||salt is at most 30 bytes.
        &self.0[..suite.key_salt_len()]
    }
}

/// Whether SDES-SRTP may or must be used. Key material travels with the policy, so "SRTP
/// allowed but no key" cannot be expressed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SrtpPolicy {
    /// Plain RTP only; SAVP offers are refused.
    Disabled,
    /// Answer SAVP offers with SRTP; our own offers are plain RTP/AVP (there is no standard
    /// way to offer both without RFC 5939 capability negotiation).
    Allowed(SrtpKeyMaterial),
    /// SRTP only: our offers are RTP/SAVP, and plain RTP offers are refused.
    Required(SrtpKeyMaterial),
}

impl SrtpPolicy {
    fn key_material(&self) -> Option<&SrtpKeyMaterial> {
        match self {
            SrtpPolicy::Disabled => None,
            SrtpPolicy::Allowed(k) | SrtpPolicy::Required(k) => Some(k),
        }
    }
}

/// What we bring to the negotiation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalMedia {
    /// Our RTP address, written into `c=` and `o=`.
    pub address: IpAddr,
    pub rtp_port: u16,
    /// Codecs we run, in our order of preference (used when we offer; when we answer, the
    /// caller's order wins). An empty list cannot negotiate; config validation must refuse it.
    pub codecs: Vec<AudioCodec>,
    /// Whether we offer/accept RFC 4733 telephone-event.
    pub telephone_event: bool,
    /// Whether the media layer can multiplex RTCP on the RTP port (RFC 5761).
    pub rtcp_mux: bool,
    pub srtp: SrtpPolicy,
    /// The directions we want (`SendRecv` normally; `SendOnly` to put the peer on hold).
    pub direction: Direction,
    pub session_id: u64,
    pub session_version: u64,
}

impl LocalMedia {
    /// Defaults: PCMU, PCMA, G.722, telephone-event, no rtcp-mux, sendrecv, no SRTP.
    pub fn new(address: IpAddr, rtp_port: u16, session_id: u64, session_version: u64) -> Self {
        LocalMedia {
            address,
            rtp_port,
            codecs: vec![AudioCodec::Pcmu, AudioCodec::Pcma, AudioCodec::G722],
            telephone_event: true,
            rtcp_mux: false,
            srtp: SrtpPolicy::Disabled,
            direction: Direction::SendRecv,
            session_id,
            session_version,
        }
    }
}

/// SRTP parameters agreed for one stream. Debug output is redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct SrtpKeys {
    pub suite: SrtpSuite,
    /// Our master key||salt: protects what we send.
    pub local_key_salt: Vec<u8>,
    /// Their master key||salt: unprotects what we receive.
    pub remote_key_salt: Vec<u8>,
}

impl fmt::Debug for SrtpKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SrtpKeys")
            .field("suite", &self.suite)
            .finish_non_exhaustive()
    }
}

/// What the media layer needs once offer and answer agree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// Index of the audio `m=` section in use.
    pub media_index: usize,
    /// Where to send RTP. The IP is unspecified (0.0.0.0) when the peer holds the call.
    pub remote_rtp: SocketAddr,
    /// Where to send RTCP; `None` with rtcp-mux (use `remote_rtp`) or when `port + 1`
    /// would overflow.
    pub remote_rtcp: Option<SocketAddr>,
    pub rtcp_mux: bool,
    pub codec: AudioCodec,
    /// Payload type to send and expect for `codec`.
    pub payload_type: u8,
    /// Payload type for RFC 4733 events at the codec's clock rate, if agreed.
    pub telephone_event: Option<u8>,
    /// Packetization to send, in milliseconds.
    pub ptime: u32,
    /// Our direction: `sends()` says whether we may send, `receives()` whether to expect media.
    pub direction: Direction,
    /// The peer put the call on hold (it does not want our media).
    pub remote_hold: bool,
    pub srtp: Option<SrtpKeys>,
}

/// Our answer to an offer, and what it means for the media layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub sdp: Sdp,
    pub negotiated: Negotiated,
}

/// What one media section resolves a payload type to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Codec(AudioCodec),
    TelephoneEvent { clock_rate: u32 },
    Other,
}

/// Looks the payload type up in `primary`'s rtpmaps, then `fallback`'s (an answer may
/// rely on the offer's), then the static table.
fn resolve(pt: u8, primary: &MediaSection, fallback: Option<&MediaSection>) -> Format {
    let map = primary
        .rtpmap(pt)
        .or_else(|| fallback.and_then(|f| f.rtpmap(pt)));
    match map {
        Some(m) if m.encoding.eq_ignore_ascii_case("telephone-event") => Format::TelephoneEvent {
            clock_rate: m.clock_rate,
        },
        Some(m) => AudioCodec::from_rtpmap(m).map_or(Format::Other, Format::Codec),
        None => AudioCodec::from_static(pt).map_or(Format::Other, Format::Codec),
    }
}

/// The direction a section declares, with RFC 2543 hold (`c=0.0.0.0`) meaning its writer
/// will not receive.
fn effective_direction(sdp: &Sdp, m: &MediaSection) -> Direction {
    let declared = m.direction.or(sdp.direction).unwrap_or(Direction::SendRecv);
    let unspecified = m
        .connection
        .or(sdp.connection)
        .is_some_and(|c| c.is_unspecified());
    if unspecified {
        Direction::from_flags(declared.sends(), false)
    } else {
        declared
    }
}

/// Packetization to send: the peer's `a=ptime` if it is a sane multiple of 10 ms, else
/// 20 ms; never above its `a=maxptime`.
fn send_ptime(m: &MediaSection) -> u32 {
    let mut ptime = m
        .ptime
        .filter(|p| *p % 10 == 0 && (10..=60).contains(p))
        .unwrap_or(DEFAULT_PTIME);
    if let Some(max) = m.maxptime {
        ptime = ptime.min((max / 10 * 10).max(10));
    }
    ptime
}

struct RemoteEndpoint {
    rtp: SocketAddr,
    rtcp: Option<SocketAddr>,
}

fn remote_endpoint(
    sdp: &Sdp,
    m: &MediaSection,
    rtcp_mux: bool,
) -> Result<RemoteEndpoint, NegotiationError> {
    let conn = m
        .connection
        .or(sdp.connection)
        .ok_or(NegotiationError::NoConnectionAddress)?;
    let rtp = SocketAddr::new(conn.address, m.port);
    let rtcp = if rtcp_mux {
        None
    } else if let Some(r) = &m.rtcp {
        let ip = r.connection.map_or(conn.address, |c| c.address);
        Some(SocketAddr::new(ip, r.port))
    } else {
        m.port
            .checked_add(1)
            .map(|p| SocketAddr::new(conn.address, p))
    };
    Ok(RemoteEndpoint { rtp, rtcp })
}

/// Parses an RFC 4733 event list (`0-15,16`) into a 256-bit set; `None` if malformed.
fn parse_events(list: &str) -> Option<[bool; 256]> {
    let mut set = [false; 256];
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (lo, hi) = match item.split_once('-') {
            Some((a, b)) => (a.trim().parse::<u8>().ok()?, b.trim().parse::<u8>().ok()?),
            None => {
                let n = item.parse::<u8>().ok()?;
                (n, n)
            }
        };
        if lo > hi {
            return None;
        }
        for e in lo..=hi {
            set[usize::from(e)] = true;
        }
    }
    Some(set)
}

/// The events both sides handle, as an fmtp value (`0-15`, `0-16`, `0-11,16`, ...).
/// An absent or unparsable fmtp means the RFC 4733 default, 0-15.
fn common_events(offered: Option<&Fmtp>) -> Option<String> {
    let set = offered
        .and_then(|f| parse_events(&f.params))
        .unwrap_or_else(|| {
            let mut s = [false; 256];
            s[..16].fill(true);
            s
        });
    fn flush(run: (u8, u8), out: &mut String) {
        if !out.is_empty() {
            out.push(',');
        }
        // Writing to a String cannot fail.
        let _ = if run.0 == run.1 {
            write!(out, "{}", run.0)
        } else {
            write!(out, "{}-{}", run.0, run.1)
        };
    }
    let mut out = String::new();
    let mut run: Option<(u8, u8)> = None;
    for e in SUPPORTED_EVENTS.filter(|e| set[usize::from(*e)]) {
        run = match run {
            Some((lo, hi)) if hi + 1 == e => Some((lo, e)),
            Some(r) => {
                flush(r, &mut out);
                Some((e, e))
            }
            None => Some((e, e)),
        };
    }
    if let Some(r) = run {
        flush(r, &mut out);
    }
    (!out.is_empty()).then_some(out)
}

/// What we agreed on for the chosen audio section when answering.
struct Choice {
    codec: AudioCodec,
    payload_type: u8,
    telephone_event: Option<(u8, String)>,
    crypto: Option<(u32, SrtpKeys)>,
    direction: Direction,
    remote_hold: bool,
    rtcp_mux: bool,
    endpoint: RemoteEndpoint,
    ptime: u32,
}

fn negotiate_offered_audio(
    offer: &Sdp,
    m: &MediaSection,
    local: &LocalMedia,
) -> Result<Choice, NegotiationError> {
    // Transport first: it decides whether anything else matters.
    match (&m.protocol, &local.srtp) {
        (Protocol::RtpAvp | Protocol::RtpAvpf, SrtpPolicy::Required(_)) => {
            return Err(NegotiationError::SrtpRequired)
        }
        (Protocol::RtpAvp | Protocol::RtpAvpf, _) => {}
        (Protocol::RtpSavp | Protocol::RtpSavpf, SrtpPolicy::Disabled) => {
            return Err(NegotiationError::SrtpNotAllowed)
        }
        (Protocol::RtpSavp | Protocol::RtpSavpf, _) => {}
        (other, _) => {
            return Err(NegotiationError::UnsupportedTransport(
                other.as_str().to_owned(),
            ))
        }
    }

    // The caller's order of preference decides (RFC 3264 §6.1 lets the answerer choose;
    // following the offerer avoids transcoding on their side).
    let (codec, payload_type) = m
        .payload_types()
        .find_map(|pt| match resolve(pt, m, None) {
            Format::Codec(c) if local.codecs.contains(&c) => Some((c, pt)),
            _ => None,
        })
        .ok_or(NegotiationError::NoCommonCodec)?;

    let telephone_event = if local.telephone_event {
        m.payload_types()
            .find(|pt| {
                resolve(*pt, m, None)
                    == Format::TelephoneEvent {
                        clock_rate: codec.clock_rate(),
                    }
            })
            .and_then(|pt| common_events(m.fmtp(&pt.to_string())).map(|events| (pt, events)))
    } else {
        None
    };

    let crypto = if m.protocol.is_sdes_srtp() {
        // Always Some here: SrtpPolicy::Disabled was refused above.
        let keys = local
            .srtp
            .key_material()
            .ok_or(NegotiationError::SrtpNotAllowed)?;
        let (tag, suite, remote) = m
            .crypto
            .iter()
            .find_map(|c| c.usable().map(|(suite, key)| (c.tag, suite, key)))
            .ok_or(NegotiationError::NoUsableCrypto)?;
        Some((
            tag,
            SrtpKeys {
                suite,
                local_key_salt: keys.for_suite(suite).to_vec(),
                remote_key_salt: remote.to_vec(),
            },
        ))
    } else {
        None
    };

    let theirs = effective_direction(offer, m);
    let direction = theirs.reversed().intersect(local.direction);
    let rtcp_mux = m.rtcp_mux && local.rtcp_mux;
    let endpoint = remote_endpoint(offer, m, rtcp_mux)?;
    Ok(Choice {
        codec,
        payload_type,
        telephone_event,
        crypto,
        direction,
        remote_hold: !theirs.receives(),
        rtcp_mux,
        endpoint,
        ptime: send_ptime(m),
    })
}

fn our_session(local: &LocalMedia) -> Sdp {
    let addr_type = if local.address.is_ipv4() {
        "IP4"
    } else {
        "IP6"
    };
    Sdp {
        origin: Origin {
            username: "dialtone".to_owned(),
            session_id: local.session_id,
            session_version: local.session_version,
            net_type: "IN".to_owned(),
            addr_type: addr_type.to_owned(),
            address: local.address.to_string(),
        },
        session_name: "dialtone".to_owned(),
        connection: Some(Connection {
            address: local.address,
        }),
        bandwidths: Vec::new(),
        timing: (0, 0),
        direction: None,
        attributes: Vec::new(),
        other_lines: Vec::new(),
        media: Vec::new(),
    }
}

fn push_codec(m: &mut MediaSection, codec: AudioCodec, pt: u8) {
    m.formats.push(pt.to_string());
    m.rtpmaps.push(RtpMap {
        payload_type: pt,
        encoding: codec.encoding_name().to_owned(),
        clock_rate: codec.clock_rate(),
        channels: None,
    });
}

fn push_telephone_event(m: &mut MediaSection, pt: u8, events: String) {
    m.formats.push(pt.to_string());
    m.rtpmaps.push(RtpMap {
        payload_type: pt,
        encoding: "telephone-event".to_owned(),
        clock_rate: 8000,
        channels: None,
    });
    m.fmtps.push(Fmtp {
        format: pt.to_string(),
        params: events,
    });
}

/// A rejected section (RFC 3264 §6): same media type, transport and formats, port 0.
fn rejected(m: &MediaSection) -> MediaSection {
    let mut r = MediaSection::new(&m.media, 0, m.protocol.clone());
    r.formats = m.formats.clone();
    r
}

/// Answers an offer (RFC 3264 §6): the first acceptable audio section is accepted, every
/// other section is rejected with port 0 in the same position.
pub fn answer(offer: &Sdp, local: &LocalMedia) -> Result<Answer, NegotiationError> {
    let mut chosen: Option<(usize, Choice)> = None;
    let mut first_error: Option<NegotiationError> = None;
    for (index, m) in offer.media.iter().enumerate() {
        if !m.is_audio() || m.port == 0 {
            continue;
        }
        match negotiate_offered_audio(offer, m, local) {
            Ok(choice) => {
                chosen = Some((index, choice));
                break;
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    let Some((media_index, choice)) = chosen else {
        return Err(first_error.unwrap_or(NegotiationError::NoAudio));
    };

    let mut sdp = our_session(local);
    for (index, m) in offer.media.iter().enumerate() {
        if index != media_index {
            sdp.media.push(rejected(m));
            continue;
        }
        let mut a = MediaSection::new("audio", local.rtp_port, m.protocol.clone());
        push_codec(&mut a, choice.codec, choice.payload_type);
        if let Some((pt, events)) = &choice.telephone_event {
            push_telephone_event(&mut a, *pt, events.clone());
        }
        a.ptime = Some(DEFAULT_PTIME);
        a.direction = Some(choice.direction);
        a.rtcp_mux = choice.rtcp_mux;
        if let Some((tag, keys)) = &choice.crypto {
            a.crypto
                .push(Crypto::ours(*tag, keys.suite, &keys.local_key_salt));
        }
        sdp.media.push(a);
    }

    Ok(Answer {
        sdp,
        negotiated: Negotiated {
            media_index,
            remote_rtp: choice.endpoint.rtp,
            remote_rtcp: choice.endpoint.rtcp,
            rtcp_mux: choice.rtcp_mux,
            codec: choice.codec,
            payload_type: choice.payload_type,
            telephone_event: choice.telephone_event.map(|(pt, _)| pt),
            ptime: choice.ptime,
            direction: choice.direction,
            remote_hold: choice.remote_hold,
            srtp: choice.crypto.map(|(_, keys)| keys),
        },
    })
}

/// Our offer: one audio section with our codecs in our order (static payload types),
/// telephone-event on 101, ptime 20, and crypto lines for every suite when SRTP is required.
pub fn offer(local: &LocalMedia) -> Sdp {
    let mut sdp = our_session(local);
    let protocol = match local.srtp {
        SrtpPolicy::Required(_) => Protocol::RtpSavp,
        SrtpPolicy::Disabled | SrtpPolicy::Allowed(_) => Protocol::RtpAvp,
    };
    let mut m = MediaSection::new("audio", local.rtp_port, protocol);
    for codec in &local.codecs {
        let pt = codec.static_payload_type();
        if !m.formats.iter().any(|f| *f == pt.to_string()) {
            push_codec(&mut m, *codec, pt);
        }
    }
    if local.telephone_event {
        push_telephone_event(&mut m, OFFER_TELEPHONE_EVENT_PT, "0-16".to_owned());
    }
    m.ptime = Some(DEFAULT_PTIME);
    m.direction = Some(local.direction);
    m.rtcp_mux = local.rtcp_mux;
    if let SrtpPolicy::Required(keys) = &local.srtp {
        for (tag, suite) in (1..).zip(SrtpSuite::ALL) {
            m.crypto
                .push(Crypto::ours(tag, suite, keys.for_suite(suite)));
        }
    }
    sdp.media.push(m);
    sdp
}

/// Checks the peer's answer against the offer we sent and works out the media parameters.
///
/// Lenient where RFC 3264 only recommends: the answer may renumber payload types (we send
/// with the answer's numbers) and may omit rtpmaps for numbers the offer defined.
pub fn accept_answer(offer: &Sdp, answer: &Sdp) -> Result<Negotiated, NegotiationError> {
    if offer.media.len() != answer.media.len() {
        return Err(NegotiationError::MediaCountMismatch {
            offered: offer.media.len(),
            answered: answer.media.len(),
        });
    }
    for (index, (o, a)) in offer.media.iter().zip(&answer.media).enumerate() {
        if !o.media.eq_ignore_ascii_case(&a.media) || o.protocol != a.protocol {
            return Err(NegotiationError::MediaMismatch { index });
        }
    }
    let (media_index, (o, a)) = offer
        .media
        .iter()
        .zip(&answer.media)
        .enumerate()
        .find(|(_, (o, a))| o.is_audio() && o.port != 0 && a.port != 0)
        .ok_or(NegotiationError::AudioRejected)?;

    let offered_codecs: Vec<AudioCodec> = o
        .payload_types()
        .filter_map(|pt| match resolve(pt, o, None) {
            Format::Codec(c) => Some(c),
            _ => None,
        })
        .collect();
    let (codec, payload_type) = a
        .payload_types()
        .find_map(|pt| match resolve(pt, a, Some(o)) {
            Format::Codec(c) if offered_codecs.contains(&c) => Some((c, pt)),
            _ => None,
        })
        .ok_or(NegotiationError::NoCommonCodec)?;

    let offered_events = o
        .payload_types()
        .any(|pt| matches!(resolve(pt, o, None), Format::TelephoneEvent { .. }));
    let telephone_event = offered_events
        .then(|| {
            a.payload_types().find(|pt| {
                resolve(*pt, a, Some(o))
                    == Format::TelephoneEvent {
                        clock_rate: codec.clock_rate(),
                    }
            })
        })
        .flatten();

    let srtp = if o.protocol.is_sdes_srtp() {
        let theirs = a.crypto.first().ok_or(NegotiationError::CryptoMismatch)?;
        let ours = o
            .crypto
            .iter()
            .find(|c| c.tag == theirs.tag && c.suite == theirs.suite)
            .ok_or(NegotiationError::CryptoMismatch)?;
        let (suite, remote) = theirs.usable().ok_or(NegotiationError::CryptoMismatch)?;
        let (_, local) = ours.usable().ok_or(NegotiationError::CryptoMismatch)?;
        Some(SrtpKeys {
            suite,
            local_key_salt: local.to_vec(),
            remote_key_salt: remote.to_vec(),
        })
    } else {
        None
    };

    let theirs = effective_direction(answer, a);
    let ours_offered = o
        .direction
        .or(offer.direction)
        .unwrap_or(Direction::SendRecv);
    let direction = theirs.reversed().intersect(ours_offered);
    let rtcp_mux = o.rtcp_mux && a.rtcp_mux;
    let endpoint = remote_endpoint(answer, a, rtcp_mux)?;
    Ok(Negotiated {
        media_index,
        remote_rtp: endpoint.rtp,
        remote_rtcp: endpoint.rtcp,
        rtcp_mux,
        codec,
        payload_type,
        telephone_event,
        ptime: send_ptime(a),
        direction,
        remote_hold: !theirs.receives(),
        srtp,
    })
}

// ---------------------------------------------------------------------------------------
// Base64 (RFC 4648 §4), just enough for SDES keys
// ---------------------------------------------------------------------------------------

const BASE64_ALPHABET: &[u8; 64] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn base64_encode(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b0 = chunk.first().copied().unwrap_or(0);
        let b1 = chunk.get(1).copied().unwrap_or(0);
        let b2 = chunk.get(2).copied().unwrap_or(0);
        let n = (u32::from(b0) << 16) | (u32::from(b1) << 8) | u32::from(b2);
        for i in 0..4 {
            if i <= chunk.len() {
                let sextet = (n >> (18 - 6 * i)) & 63;
                out.push(char::from(BASE64_ALPHABET[sextet as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Standard alphabet; padding optional (some stacks drop it). `None` if malformed.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    const MAX_ENCODED: usize = 256;
    let body = s.trim_end_matches('=');
    if s.len() - body.len() > 2 || body.len() > MAX_ENCODED || body.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(body.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    for c in body.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::net::{Ipv4Addr, Ipv6Addr};

    /// Joins lines with CRLF, as a trunk would send them.
    fn crlf(lines: &[&str]) -> String {
        let mut s = lines.join("\r\n");
        s.push_str("\r\n");
        s
    }

    fn parse(lines: &[&str]) -> Sdp {
        Sdp::parse(crlf(lines).as_bytes()).expect("fixture parses")
    }

    fn local() -> LocalMedia {
        LocalMedia::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 10)), 40000, 77, 1)
    }

    fn local_srtp(policy: fn(SrtpKeyMaterial) -> SrtpPolicy, seed: u8) -> LocalMedia {
        let mut key = [0u8; 30];
        for (i, b) in key.iter_mut().enumerate() {
            *b = seed.wrapping_add(i as u8);
        }
        LocalMedia {
            srtp: policy(SrtpKeyMaterial(key)),
            ..local()
        }
    }

    /// 30 bytes 100..130: a valid AES-CM key||salt.
    const KEY_CM: &str = "ZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXp7fH1+f4CB";
    /// 28 bytes 1..29: a valid AEAD_AES_128_GCM key||salt.
    const KEY_GCM: &str = "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHA==";

    const TWILIO: &[&str] = &[
        "v=0",
        "o=root 1592425512 1592425512 IN IP4 54.172.60.1",
        "s=Twilio Media Gateway",
        "c=IN IP4 54.172.60.1",
        "t=0 0",
        "m=audio 16584 RTP/AVP 0 101",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:101 telephone-event/8000",
        "a=fmtp:101 0-16",
        "a=ptime:20",
        "a=maxptime:150",
        "a=sendrecv",
    ];

    const TELNYX: &[&str] = &[
        "v=0",
        "o=- 3916393211 3916393211 IN IP4 192.76.120.10",
        "s=Telnyx",
        "c=IN IP4 192.76.120.10",
        "t=0 0",
        "m=audio 31544 RTP/AVP 0 8 9 101",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:8 PCMA/8000",
        "a=rtpmap:9 G722/8000",
        "a=rtpmap:101 telephone-event/8000",
        "a=fmtp:101 0-16",
        "a=ptime:20",
        "a=sendrecv",
    ];

    const FREESWITCH: &[&str] = &[
        "v=0",
        "o=FreeSWITCH 1707000000 1707000001 IN IP4 5.10.112.121",
        "s=FreeSWITCH",
        "c=IN IP4 5.10.112.121",
        "t=0 0",
        "m=audio 21474 RTP/AVP 9 0 8 101 13",
        "a=rtpmap:101 telephone-event/8000",
        "a=fmtp:101 0-16",
        "a=rtpmap:13 CN/8000",
        "a=ptime:20",
        "a=sendrecv",
        "a=rtcp:21475 IN IP4 5.10.112.121",
    ];

    const ASTERISK: &[&str] = &[
        "v=0",
        "o=- 1234567 3 IN IP4 10.0.0.5",
        "s=Asterisk",
        "c=IN IP4 10.0.0.5",
        "t=0 0",
        "m=audio 10078 RTP/AVP 8 0 3 101",
        "a=rtpmap:8 PCMA/8000",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:3 GSM/8000",
        "a=rtpmap:101 telephone-event/8000",
        "a=fmtp:101 0-16",
        "a=ptime:20",
        "a=maxptime:150",
        "a=sendrecv",
    ];

    const SIPP: &[&str] = &[
        "v=0",
        "o=user1 53655765 2353687637 IN IP4 127.0.0.1",
        "s=-",
        "c=IN IP4 127.0.0.1",
        "t=0 0",
        "m=audio 6000 RTP/AVP 0",
        "a=rtpmap:0 PCMU/8000",
    ];

    const LINPHONE: &[&str] = &[
        "v=0",
        "o=alice 3012 1871 IN IP4 192.168.1.20",
        "s=Talk",
        "c=IN IP4 192.168.1.20",
        "t=0 0",
        "a=rtcp-xr:rcvr-rtt=all:10000 stat-summary=loss,dup,jitt,TTL voip-metrics",
        "m=audio 7078 RTP/AVP 9 96 0 8 102 101",
        "a=rtpmap:96 opus/48000/2",
        "a=fmtp:96 useinbandfec=1",
        "a=rtpmap:102 telephone-event/48000",
        "a=rtpmap:101 telephone-event/8000",
        "a=rtcp-fb:* trr-int 1000",
        "a=rtcp-fb:* ccm tmmbr",
    ];

    fn baresip_savp() -> Vec<String> {
        vec![
            "v=0".into(),
            "o=- 1876213427 2105093516 IN IP4 192.168.1.30".into(),
            "s=-".into(),
            "c=IN IP4 192.168.1.30".into(),
            "t=0 0".into(),
            "m=audio 10374 RTP/SAVP 9 0 8 101".into(),
            "b=AS:72".into(),
            "a=rtpmap:9 G722/8000".into(),
            "a=rtpmap:0 PCMU/8000".into(),
            "a=rtpmap:8 PCMA/8000".into(),
            "a=rtpmap:101 telephone-event/8000".into(),
            "a=fmtp:101 0-15".into(),
            format!("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_CM}"),
            format!("a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:{KEY_CM}"),
            "a=sendrecv".into(),
            "a=label:1".into(),
            "a=rtcp-rsize".into(),
            "a=ssrc:1385623911 cname:3b6d1a0c-b9ae-4b5c".into(),
            "a=ptime:20".into(),
        ]
    }

    fn parse_owned(lines: &[String]) -> Sdp {
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        parse(&refs)
    }

    fn answer_ok(sdp: &Sdp) -> Answer {
        answer(sdp, &local()).expect("negotiates")
    }

    /// Parses what we serialised, so every answer also proves it is well-formed SDP.
    fn reparse(sdp: &Sdp) -> Sdp {
        let text = sdp.to_string();
        assert!(text.ends_with("\r\n"));
        assert!(
            !text.replace("\r\n", "").contains('\n'),
            "bare LF in {text}"
        );
        Sdp::parse(text.as_bytes()).expect("our own output parses")
    }

    // --- real-world offers ---------------------------------------------------------------

    #[test]
    fn twilio_pcmu_with_telephone_event() {
        let offer = parse(TWILIO);
        let a = answer_ok(&offer);
        let n = &a.negotiated;
        assert_eq!(n.codec, AudioCodec::Pcmu);
        assert_eq!(n.payload_type, 0);
        assert_eq!(n.telephone_event, Some(101));
        assert_eq!(n.remote_rtp, "54.172.60.1:16584".parse().unwrap());
        assert_eq!(n.remote_rtcp, Some("54.172.60.1:16585".parse().unwrap()));
        assert_eq!(n.ptime, 20);
        assert_eq!(n.direction, Direction::SendRecv);
        assert!(!n.remote_hold);
        assert!(n.srtp.is_none());

        let text = a.sdp.to_string();
        assert!(text.contains("m=audio 40000 RTP/AVP 0 101\r\n"), "{text}");
        assert!(text.contains("c=IN IP4 203.0.113.10\r\n"));
        assert!(text.contains("o=dialtone 77 1 IN IP4 203.0.113.10\r\n"));
        assert!(text.contains("a=rtpmap:101 telephone-event/8000\r\n"));
        assert!(text.contains("a=fmtp:101 0-16\r\n"));
        assert!(text.contains("a=ptime:20\r\n"));
        assert!(text.contains("a=sendrecv\r\n"));
        assert_eq!(reparse(&a.sdp), a.sdp);
    }

    #[test]
    fn telnyx_follows_caller_order_pcmu_first() {
        let n = answer_ok(&parse(TELNYX)).negotiated;
        assert_eq!((n.codec, n.payload_type), (AudioCodec::Pcmu, 0));
    }

    #[test]
    fn caller_order_wins_over_ours() {
        let local = LocalMedia {
            codecs: vec![AudioCodec::G722, AudioCodec::Pcmu],
            ..local()
        };
        let n = answer(&parse(TELNYX), &local).unwrap().negotiated;
        assert_eq!(n.codec, AudioCodec::Pcmu);
    }

    #[test]
    fn freeswitch_g722_first_static_without_rtpmap_and_rtcp_attribute() {
        let a = answer_ok(&parse(FREESWITCH));
        let n = &a.negotiated;
        assert_eq!((n.codec, n.payload_type), (AudioCodec::G722, 9));
        assert_eq!(n.telephone_event, Some(101));
        assert_eq!(n.remote_rtcp, Some("5.10.112.121:21475".parse().unwrap()));
        assert!(a.sdp.to_string().contains("a=rtpmap:9 G722/8000\r\n"));
    }

    #[test]
    fn asterisk_pcma_first() {
        let n = answer_ok(&parse(ASTERISK)).negotiated;
        assert_eq!((n.codec, n.payload_type), (AudioCodec::Pcma, 8));
        assert_eq!(n.telephone_event, Some(101));
    }

    #[test]
    fn pcma_only_offer() {
        let offer = parse(&[
            "v=0",
            "o=- 1 1 IN IP4 10.1.1.1",
            "s=-",
            "c=IN IP4 10.1.1.1",
            "t=0 0",
            "m=audio 4000 RTP/AVP 8",
        ]);
        let a = answer_ok(&offer);
        assert_eq!(a.negotiated.codec, AudioCodec::Pcma);
        assert_eq!(a.negotiated.telephone_event, None);
        assert!(a.sdp.to_string().contains("m=audio 40000 RTP/AVP 8\r\n"));
    }

    #[test]
    fn sipp_default_offer() {
        let a = answer_ok(&parse(SIPP));
        assert_eq!(a.negotiated.codec, AudioCodec::Pcmu);
        assert_eq!(a.negotiated.remote_rtp, "127.0.0.1:6000".parse().unwrap());
        assert_eq!(a.negotiated.telephone_event, None);
    }

    #[test]
    fn linphone_g722_first_with_telephone_event_at_matching_rate() {
        let a = answer_ok(&parse(LINPHONE));
        let n = &a.negotiated;
        assert_eq!((n.codec, n.payload_type), (AudioCodec::G722, 9));
        // 102 is telephone-event/48000 (for opus); G.722's RTP clock is 8000.
        assert_eq!(n.telephone_event, Some(101));
        assert!(a
            .sdp
            .to_string()
            .contains("m=audio 40000 RTP/AVP 9 101\r\n"));
        // No fmtp offered: RFC 4733 default 0-15.
        assert!(a.sdp.to_string().contains("a=fmtp:101 0-15\r\n"));
    }

    #[test]
    fn telephone_event_at_16000_only_is_not_used_with_8000_codec() {
        let offer = parse(&[
            "v=0",
            "o=- 1 1 IN IP4 10.1.1.1",
            "s=-",
            "c=IN IP4 10.1.1.1",
            "t=0 0",
            "m=audio 4000 RTP/AVP 9 100",
            "a=rtpmap:100 telephone-event/16000",
            "a=fmtp:100 0-15",
        ]);
        assert_eq!(answer_ok(&offer).negotiated.telephone_event, None);
    }

    #[test]
    fn dynamic_payload_type_for_g711_is_echoed() {
        let offer = parse(&[
            "v=0",
            "o=- 1 1 IN IP4 10.1.1.1",
            "s=-",
            "c=IN IP4 10.1.1.1",
            "t=0 0",
            "m=audio 4000 RTP/AVP 18 112 96",
            "a=rtpmap:18 G729/8000",
            "a=rtpmap:112 pcmu/8000",
            "a=rtpmap:96 telephone-event/8000",
            "a=fmtp:96 0-11",
        ]);
        let a = answer_ok(&offer);
        assert_eq!(
            (a.negotiated.codec, a.negotiated.payload_type),
            (AudioCodec::Pcmu, 112)
        );
        assert_eq!(a.negotiated.telephone_event, Some(96));
        let text = a.sdp.to_string();
        assert!(text.contains("m=audio 40000 RTP/AVP 112 96\r\n"), "{text}");
        assert!(text.contains("a=rtpmap:112 PCMU/8000\r\n"));
        assert!(text.contains("a=fmtp:96 0-11\r\n"));
    }

    #[test]
    fn no_common_codec_is_488() {
        let offer = parse(&[
            "v=0",
            "o=- 1 1 IN IP4 10.1.1.1",
            "s=-",
            "c=IN IP4 10.1.1.1",
            "t=0 0",
            "m=audio 4000 RTP/AVP 18 96 101",
            "a=rtpmap:18 G729/8000",
            "a=rtpmap:96 opus/48000/2",
            "a=rtpmap:101 telephone-event/8000",
        ]);
        let err = answer(&offer, &local()).unwrap_err();
        assert_eq!(err, NegotiationError::NoCommonCodec);
        assert_eq!(err.sip_status(), 488);
    }

    #[test]
    fn static_payload_type_remapped_by_rtpmap_is_not_taken_at_face_value() {
        // PT 0 redefined as stereo PCMU: not something we run.
        let offer = parse(&[
            "v=0",
            "o=- 1 1 IN IP4 10.1.1.1",
            "s=-",
            "c=IN IP4 10.1.1.1",
            "t=0 0",
            "m=audio 4000 RTP/AVP 0 8",
            "a=rtpmap:0 PCMU/8000/2",
        ]);
        assert_eq!(answer_ok(&offer).negotiated.codec, AudioCodec::Pcma);
    }

    #[test]
    fn telephone_event_fmtp_is_intersected_with_what_we_handle() {
        let ev = |p: &str| {
            common_events(Some(&Fmtp {
                format: "101".into(),
                params: p.into(),
            }))
        };
        assert_eq!(ev("0-15").as_deref(), Some("0-15"));
        assert_eq!(ev("0-16").as_deref(), Some("0-16"));
        assert_eq!(ev("0-255").as_deref(), Some("0-16"));
        assert_eq!(ev("0-9,11,16").as_deref(), Some("0-9,11,16"));
        assert_eq!(ev("32-40"), None);
        assert_eq!(ev("garbage").as_deref(), Some("0-15"));
        assert_eq!(common_events(None).as_deref(), Some("0-15"));
    }

    // --- hold ----------------------------------------------------------------------------

    fn with_direction(base: &[&str], dir: &str) -> Sdp {
        let mut lines: Vec<&str> = base
            .iter()
            .copied()
            .filter(|l| *l != "a=sendrecv")
            .collect();
        lines.push(dir);
        parse(&lines)
    }

    #[test]
    fn hold_sendonly_is_answered_recvonly() {
        let a = answer_ok(&with_direction(TWILIO, "a=sendonly"));
        assert_eq!(a.negotiated.direction, Direction::RecvOnly);
        assert!(a.negotiated.remote_hold);
        assert!(a.sdp.to_string().contains("a=recvonly\r\n"));
    }

    #[test]
    fn hold_inactive_is_answered_inactive() {
        let a = answer_ok(&with_direction(TWILIO, "a=inactive"));
        assert_eq!(a.negotiated.direction, Direction::Inactive);
        assert!(a.negotiated.remote_hold);
        assert!(a.sdp.to_string().contains("a=inactive\r\n"));
    }

    #[test]
    fn recvonly_offer_is_answered_sendonly() {
        let a = answer_ok(&with_direction(TWILIO, "a=recvonly"));
        assert_eq!(a.negotiated.direction, Direction::SendOnly);
        assert!(!a.negotiated.remote_hold);
    }

    #[test]
    fn hold_with_zero_connection_address() {
        let lines: Vec<&str> = TWILIO
            .iter()
            .map(|l| {
                if l.starts_with("c=") {
                    "c=IN IP4 0.0.0.0"
                } else {
                    l
                }
            })
            .collect();
        let a = answer_ok(&parse(&lines));
        assert!(a.negotiated.remote_hold);
        assert_eq!(a.negotiated.direction, Direction::RecvOnly);
        assert!(a.negotiated.remote_rtp.ip().is_unspecified());
        assert!(a.sdp.to_string().contains("a=recvonly\r\n"));
    }

    #[test]
    fn session_level_direction_applies_and_media_level_overrides() {
        let mut lines: Vec<&str> = SIPP.to_vec();
        lines.insert(5, "a=sendonly");
        let n = answer_ok(&parse(&lines)).negotiated;
        assert!(n.remote_hold);
        lines.push("a=sendrecv");
        let n = answer_ok(&parse(&lines)).negotiated;
        assert!(!n.remote_hold);
        assert_eq!(n.direction, Direction::SendRecv);
    }

    #[test]
    fn reoffer_after_hold_resumes() {
        let held = answer_ok(&with_direction(TWILIO, "a=sendonly"));
        assert!(held.negotiated.remote_hold);
        let resumed = answer_ok(&with_direction(TWILIO, "a=sendrecv"));
        assert!(!resumed.negotiated.remote_hold);
        assert_eq!(resumed.negotiated.direction, Direction::SendRecv);
    }

    #[test]
    fn our_direction_limits_the_answer() {
        let local = LocalMedia {
            direction: Direction::SendOnly,
            ..local()
        };
        let n = answer(&parse(TWILIO), &local).unwrap().negotiated;
        assert_eq!(n.direction, Direction::SendOnly);
    }

    // --- other media, transports ---------------------------------------------------------

    #[test]
    fn video_is_rejected_with_port_zero_in_order() {
        let offer = parse(&[
            "v=0",
            "o=- 1 1 IN IP4 10.1.1.1",
            "s=-",
            "c=IN IP4 10.1.1.1",
            "t=0 0",
            "m=video 5002 RTP/AVP 96",
            "a=rtpmap:96 H264/90000",
            "m=audio 5000 RTP/AVP 0",
            "m=image 5004 udptl t38",
        ]);
        let a = answer_ok(&offer);
        assert_eq!(a.negotiated.media_index, 1);
        let m = &a.sdp.media;
        assert_eq!(m.len(), 3);
        assert_eq!((m[0].media.as_str(), m[0].port), ("video", 0));
        assert_eq!(m[0].formats, vec!["96"]);
        assert_eq!((m[1].media.as_str(), m[1].port), ("audio", 40000));
        assert_eq!((m[2].media.as_str(), m[2].port), ("image", 0));
        assert_eq!(m[2].protocol, Protocol::Other("udptl".into()));
        let text = a.sdp.to_string();
        assert!(text.contains("m=video 0 RTP/AVP 96\r\n"));
        assert!(text.contains("m=image 0 udptl t38\r\n"));
        assert_eq!(reparse(&a.sdp), a.sdp);
    }

    #[test]
    fn second_audio_stream_is_rejected() {
        let mut lines = SIPP.to_vec();
        lines.push("m=audio 6002 RTP/AVP 8");
        let a = answer_ok(&parse(&lines));
        assert_eq!(a.negotiated.media_index, 0);
        assert_eq!(a.sdp.media[1].port, 0);
    }

    #[test]
    fn disabled_audio_is_skipped_for_the_next_one() {
        let offer = parse(&[
            "v=0",
            "o=- 1 1 IN IP4 10.1.1.1",
            "s=-",
            "c=IN IP4 10.1.1.1",
            "t=0 0",
            "m=audio 0 RTP/AVP 0",
            "m=audio 5000 RTP/AVP 8",
        ]);
        let a = answer_ok(&offer);
        assert_eq!(a.negotiated.media_index, 1);
        assert_eq!(a.negotiated.codec, AudioCodec::Pcma);
        assert_eq!(a.sdp.media[0].port, 0);
    }

    #[test]
    fn no_audio_at_all() {
        let offer = parse(&[
            "v=0",
            "o=- 1 1 IN IP4 10.1.1.1",
            "s=-",
            "c=IN IP4 10.1.1.1",
            "t=0 0",
            "m=video 5002 RTP/AVP 96",
        ]);
        assert_eq!(answer(&offer, &local()), Err(NegotiationError::NoAudio));
    }

    #[test]
    fn dtls_srtp_is_unsupported() {
        let offer = parse(&[
            "v=0",
            "o=- 1 1 IN IP4 10.1.1.1",
            "s=-",
            "c=IN IP4 10.1.1.1",
            "t=0 0",
            "m=audio 5000 UDP/TLS/RTP/SAVP 0",
        ]);
        assert_eq!(
            answer(&offer, &local()),
            Err(NegotiationError::UnsupportedTransport(
                "UDP/TLS/RTP/SAVP".into()
            ))
        );
    }

    #[test]
    fn media_level_connection_overrides_session_level() {
        let mut lines = SIPP.to_vec();
        lines.push("c=IN IP4 198.51.100.7");
        let n = answer_ok(&parse(&lines)).negotiated;
        assert_eq!(n.remote_rtp, "198.51.100.7:6000".parse().unwrap());
    }

    #[test]
    fn missing_connection_address_is_a_negotiation_error() {
        let offer = parse(&["v=0", "o=- 1 1 IN IP4 h", "s=-", "m=audio 5000 RTP/AVP 0"]);
        assert_eq!(
            answer(&offer, &local()),
            Err(NegotiationError::NoConnectionAddress)
        );
    }

    #[test]
    fn ipv6_connection() {
        let offer = parse(&[
            "v=0",
            "o=- 1 1 IN IP6 2001:db8::5",
            "s=-",
            "c=IN IP6 2001:db8::5",
            "t=0 0",
            "m=audio 5000 RTP/AVP 0",
        ]);
        let local = LocalMedia::new(
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 9)),
            4000,
            1,
            1,
        );
        let a = answer(&offer, &local).unwrap();
        assert_eq!(
            a.negotiated.remote_rtp,
            "[2001:db8::5]:5000".parse().unwrap()
        );
        let text = a.sdp.to_string();
        assert!(text.contains("c=IN IP6 2001:db8::9\r\n"), "{text}");
        assert!(text.contains("o=dialtone 1 1 IN IP6 2001:db8::9\r\n"));
        assert_eq!(reparse(&a.sdp), a.sdp);
    }

    #[test]
    fn rtcp_mux_only_when_both_support_it() {
        let mut lines = TWILIO.to_vec();
        lines.push("a=rtcp-mux");
        let offer = parse(&lines);
        let n = answer_ok(&offer).negotiated;
        assert!(!n.rtcp_mux);
        assert!(n.remote_rtcp.is_some());
        let local = LocalMedia {
            rtcp_mux: true,
            ..local()
        };
        let a = answer(&offer, &local).unwrap();
        assert!(a.negotiated.rtcp_mux);
        assert_eq!(a.negotiated.remote_rtcp, None);
        assert!(a.sdp.to_string().contains("a=rtcp-mux\r\n"));
    }

    #[test]
    fn ptime_follows_the_peer_within_maxptime() {
        let mut lines = SIPP.to_vec();
        lines.push("a=ptime:30");
        assert_eq!(answer_ok(&parse(&lines)).negotiated.ptime, 30);
        lines.push("a=maxptime:20");
        assert_eq!(answer_ok(&parse(&lines)).negotiated.ptime, 20);
        let mut odd = SIPP.to_vec();
        odd.push("a=ptime:17");
        assert_eq!(answer_ok(&parse(&odd)).negotiated.ptime, 20);
    }

    // --- SRTP ----------------------------------------------------------------------------

    #[test]
    fn savp_with_crypto_gets_crypto_in_answer() {
        let offer = parse_owned(&baresip_savp());
        let local = local_srtp(SrtpPolicy::Allowed, 1);
        let a = answer(&offer, &local).unwrap();
        let keys = a.negotiated.srtp.clone().expect("srtp agreed");
        assert_eq!(keys.suite, SrtpSuite::AesCm128HmacSha1_80);
        assert_eq!(keys.remote_key_salt, (100u8..130).collect::<Vec<_>>());
        assert_eq!(keys.local_key_salt, (1u8..31).collect::<Vec<_>>());
        assert_eq!(a.negotiated.codec, AudioCodec::G722);
        let text = a.sdp.to_string();
        assert!(text.contains("m=audio 40000 RTP/SAVP 9 101\r\n"), "{text}");
        assert!(
            text.contains("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0e\r\n"),
            "{text}"
        );
        assert_eq!(text.matches("a=crypto").count(), 1);
        assert_eq!(reparse(&a.sdp), a.sdp);
    }

    #[test]
    fn first_usable_crypto_in_offer_order_is_taken() {
        let mut lines = baresip_savp();
        lines.retain(|l| !l.starts_with("a=crypto"));
        // Unknown suite, then MKI (unsupported), then GCM.
        lines.push("a=crypto:1 AES_256_CM_HMAC_SHA1_80 inline:AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyAhIiMkJSYnKCkqKywtLg==".into());
        lines.push(format!(
            "a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:{KEY_CM}|2^20|1:4"
        ));
        lines.push(format!("a=crypto:3 AEAD_AES_128_GCM inline:{KEY_GCM}"));
        let offer = parse_owned(&lines);
        let a = answer(&offer, &local_srtp(SrtpPolicy::Required, 0)).unwrap();
        let keys = a.negotiated.srtp.unwrap();
        assert_eq!(keys.suite, SrtpSuite::AeadAes128Gcm);
        assert_eq!(keys.local_key_salt.len(), 28);
        assert_eq!(keys.remote_key_salt, (1u8..29).collect::<Vec<_>>());
        assert!(a
            .sdp
            .to_string()
            .contains("a=crypto:3 AEAD_AES_128_GCM inline:"));
    }

    #[test]
    fn savp_without_usable_crypto() {
        let mut lines = baresip_savp();
        lines.retain(|l| !l.starts_with("a=crypto"));
        let offer = parse_owned(&lines);
        let local = local_srtp(SrtpPolicy::Allowed, 0);
        assert_eq!(
            answer(&offer, &local),
            Err(NegotiationError::NoUsableCrypto)
        );
        lines.push(format!(
            "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_CM}|2^20|1:4"
        ));
        lines.push(format!(
            "a=crypto:2 AES_CM_128_HMAC_SHA1_80 inline:{KEY_CM};inline:{KEY_CM}"
        ));
        lines.push(format!(
            "a=crypto:3 AES_CM_128_HMAC_SHA1_80 inline:{KEY_CM} UNENCRYPTED_SRTP"
        ));
        let offer = parse_owned(&lines);
        assert_eq!(
            answer(&offer, &local),
            Err(NegotiationError::NoUsableCrypto)
        );
    }

    #[test]
    fn savp_when_srtp_not_allowed() {
        let offer = parse_owned(&baresip_savp());
        assert_eq!(
            answer(&offer, &local()),
            Err(NegotiationError::SrtpNotAllowed)
        );
    }

    #[test]
    fn plain_rtp_when_srtp_required() {
        let local = local_srtp(SrtpPolicy::Required, 0);
        assert_eq!(
            answer(&parse(TWILIO), &local),
            Err(NegotiationError::SrtpRequired)
        );
    }

    #[test]
    fn plain_rtp_accepted_when_srtp_only_allowed() {
        let local = local_srtp(SrtpPolicy::Allowed, 0);
        assert!(answer(&parse(TWILIO), &local)
            .unwrap()
            .negotiated
            .srtp
            .is_none());
    }

    #[test]
    fn crypto_key_with_wrong_length_is_a_parse_error() {
        let mut lines = baresip_savp();
        lines.push(format!("a=crypto:3 AEAD_AES_128_GCM inline:{KEY_CM}"));
        let text = lines.join("\r\n");
        let err = Sdp::parse(text.as_bytes()).unwrap_err();
        assert!(matches!(err, SdpError::Line { line: 20, .. }), "{err}");
        assert!(err.to_string().contains("wrong length"));
        assert!(!err.to_string().contains(KEY_CM), "{err}");
        assert!(
            err.to_string().contains("AEAD_AES_128_GCM <redacted>"),
            "{err}"
        );
    }

    #[test]
    fn debug_output_hides_keys() {
        let offer = parse_owned(&baresip_savp());
        let a = answer(&offer, &local_srtp(SrtpPolicy::Allowed, 0)).unwrap();
        let dbg = format!("{offer:?} {a:?} {:?}", local_srtp(SrtpPolicy::Allowed, 0));
        assert!(!dbg.contains(KEY_CM));
        assert!(!dbg.contains("AAECAwQF"));
        assert!(!dbg.contains("100, 101, 102"));
    }

    // --- our offers and their answers ----------------------------------------------------

    #[test]
    fn our_offer_lists_our_codecs() {
        let sdp = offer(&local());
        let text = sdp.to_string();
        assert!(text.starts_with("v=0\r\no=dialtone 77 1 IN IP4 203.0.113.10\r\ns=dialtone\r\nc=IN IP4 203.0.113.10\r\nt=0 0\r\n"), "{text}");
        assert!(text.contains("m=audio 40000 RTP/AVP 0 8 9 101\r\n"));
        assert!(text.contains("a=fmtp:101 0-16\r\n"));
        assert!(!text.contains("crypto"));
        assert_eq!(reparse(&sdp), sdp);
    }

    #[test]
    fn offer_then_answer_then_accept_agree() {
        let us = local_srtp(SrtpPolicy::Required, 1);
        let our_offer = reparse(&offer(&us));
        assert_eq!(our_offer.media[0].crypto.len(), 3);
        let them = LocalMedia {
            codecs: vec![AudioCodec::G722, AudioCodec::Pcma],
            address: IpAddr::V4(Ipv4Addr::new(198, 51, 100, 2)),
            rtp_port: 30000,
            ..local_srtp(SrtpPolicy::Allowed, 50)
        };
        let their_answer = answer(&our_offer, &them).unwrap();
        let wire = reparse(&their_answer.sdp);
        let ours = accept_answer(&our_offer, &wire).unwrap();
        let theirs = their_answer.negotiated;
        // Our order was PCMU, PCMA, G722; they run G722 and PCMA and follow ours: PCMA.
        assert_eq!(ours.codec, AudioCodec::Pcma);
        assert_eq!(theirs.codec, AudioCodec::Pcma);
        assert_eq!(ours.remote_rtp, "198.51.100.2:30000".parse().unwrap());
        assert_eq!(theirs.remote_rtp, "203.0.113.10:40000".parse().unwrap());
        assert_eq!(ours.telephone_event, Some(101));
        let (a, b) = (ours.srtp.unwrap(), theirs.srtp.unwrap());
        assert_eq!(a.suite, SrtpSuite::AesCm128HmacSha1_80);
        assert_eq!(a.local_key_salt, b.remote_key_salt);
        assert_eq!(a.remote_key_salt, b.local_key_salt);
        assert_ne!(a.local_key_salt, a.remote_key_salt);
    }

    #[test]
    fn accept_answer_from_a_trunk() {
        let our_offer = offer(&local());
        let ans = parse(&[
            "v=0",
            "o=root 1 1 IN IP4 54.172.60.1",
            "s=Twilio Media Gateway",
            "c=IN IP4 54.172.60.1",
            "t=0 0",
            "m=audio 17000 RTP/AVP 8 100",
            "a=rtpmap:100 telephone-event/8000",
            "a=fmtp:100 0-16",
            "a=ptime:20",
            "a=sendonly",
        ]);
        let n = accept_answer(&our_offer, &ans).unwrap();
        assert_eq!((n.codec, n.payload_type), (AudioCodec::Pcma, 8));
        // They renumbered telephone-event; we send with their number.
        assert_eq!(n.telephone_event, Some(100));
        assert_eq!(n.direction, Direction::RecvOnly);
        assert!(n.remote_hold);
        assert_eq!(n.remote_rtp, "54.172.60.1:17000".parse().unwrap());
    }

    #[test]
    fn accept_answer_rejections() {
        let our_offer = offer(&local());
        let mut ans = answer_ok(&parse(TWILIO)).sdp;
        assert!(accept_answer(&our_offer, &ans).is_ok());

        let mut rejected = ans.clone();
        rejected.media[0].port = 0;
        assert_eq!(
            accept_answer(&our_offer, &rejected),
            Err(NegotiationError::AudioRejected)
        );

        let mut extra = ans.clone();
        extra.media.push(rejected.media[0].clone());
        assert_eq!(
            accept_answer(&our_offer, &extra),
            Err(NegotiationError::MediaCountMismatch {
                offered: 1,
                answered: 2
            })
        );

        ans.media[0].formats = vec!["18".into()];
        ans.media[0].rtpmaps.clear();
        assert_eq!(
            accept_answer(&our_offer, &ans),
            Err(NegotiationError::NoCommonCodec)
        );

        let mut savp = ans.clone();
        savp.media[0].protocol = Protocol::RtpSavp;
        assert_eq!(
            accept_answer(&our_offer, &savp),
            Err(NegotiationError::MediaMismatch { index: 0 })
        );
    }

    #[test]
    fn accept_answer_checks_crypto_tag() {
        let us = local_srtp(SrtpPolicy::Required, 1);
        let our_offer = offer(&us);
        let mut ans = answer(&our_offer, &local_srtp(SrtpPolicy::Allowed, 9))
            .unwrap()
            .sdp;
        ans.media[0].crypto[0].tag = 9;
        assert_eq!(
            accept_answer(&our_offer, &ans),
            Err(NegotiationError::CryptoMismatch)
        );
        ans.media[0].crypto.clear();
        assert_eq!(
            accept_answer(&our_offer, &ans),
            Err(NegotiationError::CryptoMismatch)
        );
    }

    // --- parser behaviour ----------------------------------------------------------------

    #[test]
    fn lf_only_and_crlf_parse_the_same() {
        let lf = TWILIO.join("\n");
        let crlf_text = crlf(TWILIO);
        assert_eq!(
            Sdp::parse(lf.as_bytes()).unwrap(),
            Sdp::parse(crlf_text.as_bytes()).unwrap()
        );
    }

    #[test]
    fn missing_t_and_s_are_tolerated_and_trailing_space_ignored() {
        let sdp = parse(&[
            "v=0",
            "o=- 1 1 IN IP4 10.1.1.1 ",
            "c=IN IP4 10.1.1.1",
            "m=audio 5000 RTP/AVP 0 ",
            "",
            "a=rtpmap:0 PCMU/8000  ",
        ]);
        assert_eq!(sdp.timing, (0, 0));
        assert_eq!(sdp.session_name, "-");
        assert_eq!(sdp.media[0].formats, vec!["0"]);
        assert!(sdp.to_string().contains("t=0 0\r\n"));
    }

    #[test]
    fn unknown_attributes_and_lines_are_kept() {
        let sdp = parse(LINPHONE);
        assert_eq!(sdp.attributes[0].name, "rtcp-xr");
        let m = &sdp.media[0];
        assert_eq!(m.attributes.len(), 2);
        assert_eq!(m.attributes[0].value.as_deref(), Some("* trr-int 1000"));
        assert_eq!(m.fmtp("96").unwrap().params, "useinbandfec=1");
        assert_eq!(m.rtpmap(96).unwrap().channels, Some(2));
    }

    #[test]
    fn round_trip_parse_serialise_parse() {
        let mut fixtures: Vec<String> = [TWILIO, TELNYX, FREESWITCH, ASTERISK, SIPP, LINPHONE]
            .iter()
            .map(|f| crlf(f))
            .collect();
        fixtures.push(baresip_savp().join("\n"));
        fixtures.push(crlf(&[
            "v=0",
            "o=- 1 2 IN IP4 host.example.com",
            "s=x",
            "i=info",
            "u=http://example.com",
            "e=a@example.com",
            "c=IN IP4 10.0.0.1",
            "b=CT:128",
            "t=10 20",
            "r=7d 1h 0 25h",
            "a=recvonly",
            "m=audio 5000/2 RTP/AVPF 0",
            "i=media info",
            "c=IN IP6 ::1",
            "b=AS:64",
            "a=maxptime:40",
            "a=rtcp:5001",
            "a=rtcp-mux",
            "a=x-flag",
            "m=video 0 RTP/AVP",
        ]));
        for text in fixtures {
            let first = Sdp::parse(text.as_bytes()).unwrap();
            let second = reparse(&first);
            assert_eq!(first, second, "{text}");
            assert_eq!(first.to_string(), second.to_string());
        }
    }

    fn parse_err(text: &str) -> SdpError {
        Sdp::parse(text.as_bytes()).unwrap_err()
    }

    fn line_no(err: &SdpError) -> usize {
        match err {
            SdpError::Line { line, .. } => *line,
            other => panic!("expected a line error, got {other}"),
        }
    }

    #[test]
    fn structural_errors_name_the_line() {
        let base = "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nc=IN IP4 1.2.3.4\r\nt=0 0\r\n";
        let cases = [
            ("m=audio 70000 RTP/AVP 0", "port"),
            ("m=audio 99999999999999999999 RTP/AVP 0", "port"),
            ("m=audio 5000 RTP/AVP", "no formats"),
            ("m=audio", "m= needs"),
            ("m=audio 5000 RTP/AVP 200", "payload type"),
            ("m=audio 5000 RTP/AVP zero", "payload type"),
            ("c=IN IP4 ::1", "address type"),
            ("c=IN IP4 example.com", "IP literal"),
            ("c=IN IP4 224.2.1.1/127", "multicast"),
            ("c=ATM NSAP 1", "IN network"),
            ("c=IN IP4 1.2.3.4", "duplicate c="),
            ("x=whatever", "unknown line type"),
            ("garbage", "not a <type>=<value>"),
            ("a=", "attribute name"),
            ("o=- 1 1 IN IP4 1.2.3.4", "duplicate o="),
            ("v=0", "duplicate v="),
        ];
        for (line, reason) in cases {
            let err = parse_err(&format!("{base}{line}\r\n"));
            assert_eq!(line_no(&err), 6, "{line}: {err}");
            assert!(err.to_string().contains(reason), "{line}: {err}");
            assert_eq!(err.sip_status(), 400);
        }
        let media = format!("{base}m=audio 5000 RTP/AVP 0 101\r\n");
        let cases = [
            ("a=rtpmap:101", "rtpmap"),
            ("a=rtpmap:101 telephone-event", "rtpmap"),
            ("a=rtpmap:101 telephone-event/0", "rtpmap"),
            ("a=rtpmap:300 x/8000", "rtpmap"),
            ("a=ptime:abc", "ptime"),
            ("a=ptime:0", "ptime"),
            ("a=rtcp:99999", "rtcp"),
            ("a=crypto:1 AES_CM_128_HMAC_SHA1_80", "crypto"),
            ("a=crypto:1 AES_CM_128_HMAC_SHA1_80 key:abc", "inline"),
            ("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:!!!!", "base64"),
            ("a=crypto:x AES_CM_128_HMAC_SHA1_80 inline:AAAA", "tag"),
            ("a=sendonly\r\na=recvonly", "conflicting"),
            ("a=rtpmap:0 PCMU/8000\r\na=rtpmap:0 PCMU/8000", "duplicate"),
            ("s=late", "inside a media section"),
        ];
        for (line, reason) in cases {
            let err = parse_err(&format!("{media}{line}\r\n"));
            assert!((7..=8).contains(&line_no(&err)), "{line}: {err}");
            assert!(err.to_string().contains(reason), "{line}: {err}");
        }
    }

    #[test]
    fn whole_body_errors() {
        assert_eq!(parse_err(""), SdpError::Empty);
        assert_eq!(parse_err("\r\n\r\n"), SdpError::Empty);
        assert_eq!(parse_err("v=0\r\ns=-\r\n"), SdpError::Missing('o'));
        assert_eq!(line_no(&parse_err("o=- 1 1 IN IP4 h\r\n")), 1);
        assert_eq!(line_no(&parse_err("v=1\r\n")), 1);
        assert_eq!(line_no(&parse_err("v=0\r\no=- x 1 IN IP4 h\r\n")), 2);
        assert_eq!(line_no(&parse_err("v=0\r\no=- 1 1 IN IP4\r\n")), 2);
        assert_eq!(
            Sdp::parse(b"v=0\r\no=- 1 1 IN IP4 h\r\ns=\xff\xfe\r\n"),
            Err(SdpError::NotUtf8)
        );
    }

    #[test]
    fn hostile_sizes_are_bounded() {
        let mut many = String::from("v=0\r\no=- 1 1 IN IP4 h\r\ns=-\r\n");
        for _ in 0..10_000 {
            many.push_str("a=x\r\n");
        }
        assert_eq!(parse_err(&many), SdpError::TooManyLines { max: MAX_LINES });

        // Exactly MAX_LINES lines, newline-terminated, is fine.
        let mut exact = String::from("v=0\r\no=- 1 1 IN IP4 h\r\ns=-\r\n");
        for _ in 3..MAX_LINES {
            exact.push_str("a=x\r\n");
        }
        assert_eq!(
            Sdp::parse(exact.as_bytes()).unwrap().attributes.len(),
            MAX_LINES - 3
        );

        let huge = format!("v=0\r\ns={}\r\n", "x".repeat(MAX_SDP_BYTES));
        assert!(matches!(parse_err(&huge), SdpError::TooLarge { .. }));

        let long_line = format!("v=0\r\no=- 1 1 IN IP4 h\r\nq={}\r\n", "y".repeat(5000));
        match parse_err(&long_line) {
            SdpError::Line { text, .. } => assert!(text.chars().count() <= MAX_QUOTED_CHARS),
            other => panic!("{other}"),
        }

        let mut media = String::from("v=0\r\no=- 1 1 IN IP4 h\r\ns=-\r\n");
        for _ in 0..=MAX_MEDIA {
            media.push_str("m=audio 0 RTP/AVP 0\r\n");
        }
        assert!(parse_err(&media).to_string().contains("too many media"));

        let formats: Vec<String> = (0..=MAX_FORMATS).map(|i| (i % 128).to_string()).collect();
        let fmts = format!(
            "v=0\r\no=- 1 1 IN IP4 h\r\ns=-\r\nm=audio 1 RTP/AVP {}\r\n",
            formats.join(" ")
        );
        assert!(parse_err(&fmts).to_string().contains("too many formats"));
    }

    #[test]
    fn base64_round_trip_and_rejects() {
        for len in 0..40u8 {
            let data: Vec<u8> = (0..len).map(|i| i.wrapping_mul(37)).collect();
            let enc = base64_encode(&data);
            assert_eq!(base64_decode(&enc).unwrap(), data);
            assert_eq!(base64_decode(enc.trim_end_matches('=')).unwrap(), data);
        }
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert_eq!(base64_decode("Zm8"), Some(b"fo".to_vec()));
        assert_eq!(base64_decode("Z"), None);
        assert_eq!(base64_decode("Zm8==="), None);
        assert_eq!(base64_decode("Zm-8"), None);
        assert_eq!(base64_decode(&"A".repeat(1000)), None);
    }

    /// Random byte and line mutations of valid offers: parsing, answering and serialising
    /// must never panic, and whatever parses must survive a round trip.
    #[test]
    fn random_mutations_never_panic() {
        let mut rng = StdRng::seed_from_u64(0x5D9);
        let seeds: Vec<String> = vec![
            crlf(TWILIO),
            crlf(LINPHONE),
            crlf(FREESWITCH),
            baresip_savp().join("\r\n"),
        ];
        let tokens: &[&[u8]] = &[
            b"\r\n",
            b"\n",
            b"=",
            b":",
            b"/",
            b" ",
            b"0",
            b"65536",
            b"m=audio 0 RTP/SAVP 0\r\n",
            b"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:",
            b"c=IN IP6 ::\r\n",
            b"a=inactive\r\n",
            b"\xff",
            b"-",
        ];
        let srtp = local_srtp(SrtpPolicy::Allowed, 3);
        let mut parsed = 0;
        for i in 0..4000 {
            let mut bytes = seeds[i % seeds.len()].clone().into_bytes();
            for _ in 0..rng.random_range(1..6) {
                let len = bytes.len();
                let at = rng.random_range(0..=len);
                match rng.random_range(0..6) {
                    0 if at < len => {
                        bytes.remove(at);
                    }
                    1 => bytes.insert(at, rng.random()),
                    2 if at < len => bytes[at] = rng.random(),
                    3 => {
                        let t = tokens[rng.random_range(0..tokens.len())];
                        bytes.splice(at..at, t.iter().copied());
                    }
                    4 => bytes.truncate(at),
                    _ => {
                        let end = rng.random_range(at..=len);
                        let chunk = bytes[at..end].to_vec();
                        bytes.splice(at..at, chunk);
                    }
                }
            }
            if let Ok(sdp) = Sdp::parse(&bytes) {
                parsed += 1;
                assert_eq!(reparse(&sdp), sdp);
                for local in [&local(), &srtp] {
                    if let Ok(a) = answer(&sdp, local) {
                        assert_eq!(a.sdp.media.len(), sdp.media.len());
                        let _ = accept_answer(&reparse(&a.sdp), &sdp);
                    }
                }
            }
        }
        // The mutations must not be so destructive that nothing parses.
        assert!(parsed > 200, "only {parsed} mutants parsed");
    }
}
