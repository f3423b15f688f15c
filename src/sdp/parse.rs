//! SDP text to [`Sdp`]: tolerant of what trunks really send (LF line ends, trailing
//! spaces, no `t=` or `s=`), strict about sizes, and precise in its errors.

use std::net::IpAddr;

use super::*;

/// Longest excerpt of an offending line quoted in an error, so errors stay loggable.
pub(super) const MAX_QUOTED_CHARS: usize = 80;

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
