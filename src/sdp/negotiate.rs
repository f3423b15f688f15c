//! RFC 3264 offer/answer for one audio stream: our answer to an offer, our own offer, and
//! what an answer to it means for the media layer ([`Negotiated`]).

use std::fmt::{self, Write as _};
use std::net::{IpAddr, SocketAddr};

use super::*;

/// The payload type we use for telephone-event when we make the offer (the common choice
/// of Asterisk, FreeSWITCH and Twilio).
const OFFER_TELEPHONE_EVENT_PT: u8 = 101;
/// RFC 4733 events we handle: the DTMF digits 0–9 * # A–D (0–15) and flash (16).
const SUPPORTED_EVENTS: std::ops::RangeInclusive<u8> = 0..=16;
/// Packetization we send and ask for, in milliseconds.
const DEFAULT_PTIME: u32 = 20;

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
    pub codecs: Vec<Codec>,
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
            codecs: Codec::ALL.to_vec(),
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
    pub codec: Codec,
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

/// The codec an `a=rtpmap` names: a name we know at its RFC 3551 clock rate, mono.
fn codec_of(map: &RtpMap) -> Option<Codec> {
    let mono = matches!(map.channels, None | Some(1));
    Codec::from_rtpmap(&map.encoding, map.clock_rate).filter(|_| mono)
}

/// What one media section resolves a payload type to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Codec(Codec),
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
        Some(m) => codec_of(m).map_or(Format::Other, Format::Codec),
        None => Codec::from_payload_type(pt).map_or(Format::Other, Format::Codec),
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
pub(super) fn common_events(offered: Option<&Fmtp>) -> Option<String> {
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
    codec: Codec,
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

fn push_codec(m: &mut MediaSection, codec: Codec, pt: u8) {
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
        let pt = codec.payload_type();
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

    let offered_codecs: Vec<Codec> = o
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
