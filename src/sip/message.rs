//! SIP messages: parsing, validation and serialisation.
//!
//! The project's own thin layer. Everything is lexed here by hand: the start line, header
//! lines with folding, compact names, the body framed by Content-Length, and the grammar of
//! the few header values a UAS must understand (Via, CSeq, From/To/Contact, Request-URI).
//! rsip 0.4 turned out to be unusable for validation: its `Uri` parser reads a user part
//! containing `;` or `?` as the host, rejects IPv6 references and `?headers`, accepts `<`
//! inside a host and silently stops at whitespace, so it would both reject RFC 4475's valid
//! messages and accept its invalid ones. Everything else in the crate sees only these
//! types, so any library (or none) can sit underneath.
//!
//! Robustness rules: the parser works on byte offsets of ASCII delimiters only (never
//! slicing inside a UTF-8 sequence), allocates at most in proportion to the input (which is
//! itself capped by [`Limits`]), and never panics, whatever the bytes.

use bytes::Bytes;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// A SIP method. Unknown extension methods keep their token.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Method {
    Invite,
    Ack,
    Bye,
    Cancel,
    Options,
    Register,
    Info,
    Update,
    Prack,
    Subscribe,
    Notify,
    Refer,
    Message,
    Publish,
    Other(String),
}

impl Method {
    /// Maps a token to a method. Case-sensitive, as RFC 3261 §7.1 requires: `invite` is an
    /// unknown extension method, not INVITE. The caller checks the token syntax ([`parse`]
    /// rejects non-token methods with 400 before getting here).
    pub fn parse(token: &str) -> Method {
        match token {
            "INVITE" => Method::Invite,
            "ACK" => Method::Ack,
            "BYE" => Method::Bye,
            "CANCEL" => Method::Cancel,
            "OPTIONS" => Method::Options,
            "REGISTER" => Method::Register,
            "INFO" => Method::Info,
            "UPDATE" => Method::Update,
            "PRACK" => Method::Prack,
            "SUBSCRIBE" => Method::Subscribe,
            "NOTIFY" => Method::Notify,
            "REFER" => Method::Refer,
            "MESSAGE" => Method::Message,
            "PUBLISH" => Method::Publish,
            other => Method::Other(other.to_string()),
        }
    }
    pub fn as_str(&self) -> &str {
        match self {
            Method::Invite => "INVITE",
            Method::Ack => "ACK",
            Method::Bye => "BYE",
            Method::Cancel => "CANCEL",
            Method::Options => "OPTIONS",
            Method::Register => "REGISTER",
            Method::Info => "INFO",
            Method::Update => "UPDATE",
            Method::Prack => "PRACK",
            Method::Subscribe => "SUBSCRIBE",
            Method::Notify => "NOTIFY",
            Method::Refer => "REFER",
            Method::Message => "MESSAGE",
            Method::Publish => "PUBLISH",
            Method::Other(s) => s,
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Header fields in wire order. Names are stored in canonical long form
/// (compact forms such as `v`, `i`, `l` are expanded on parse), lookups are case-insensitive.
///
/// Values never contain CR or LF: folded lines are joined with a single space on parse,
/// and [`Headers::push`]/[`Headers::set`] replace CR/LF with spaces, so no caller can
/// inject a header line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    entries: Vec<(String, String)>,
}

impl Headers {
    /// First value of `name` (case-insensitive; compact names accepted). For list headers
    /// (see [`Headers::get_all`]) that is the first element of the first line, e.g. the top
    /// Via when a line carries `v1, v2`; for other headers it is the whole first line.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values(name).next()
    }
    /// Every value of `name`, in order, with comma-separated lists split where the header's
    /// grammar allows it (Via, Route, Record-Route, Contact, Allow, Supported, Require, ...).
    /// Empty list elements are skipped.
    pub fn get_all(&self, name: &str) -> Vec<&str> {
        self.values(name).collect()
    }
    /// Number of header lines named `name` (lists not split).
    pub fn count(&self, name: &str) -> usize {
        let canon = canonical_name(name);
        self.entries
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(canon))
            .count()
    }
    /// Appends a field. The name is expanded if compact and any non-token byte in it is
    /// replaced by `-`; CR and LF in the value become spaces (no header injection).
    pub fn push(&mut self, name: &str, value: impl Into<String>) {
        self.entries
            .push((sanitize_name(name), sanitize_value(value.into())));
    }
    /// Replaces every `name` field with a single one (appended when absent). The new field
    /// takes the place of the first old one, so header order is kept.
    pub fn set(&mut self, name: &str, value: impl Into<String>) {
        let name = sanitize_name(name);
        let value = sanitize_value(value.into());
        match self
            .entries
            .iter()
            .position(|(n, _)| n.eq_ignore_ascii_case(&name))
        {
            Some(first) => {
                self.entries[first] = (name.clone(), value);
                let mut i = 0;
                self.entries.retain(|(n, _)| {
                    let keep = i == first || !n.eq_ignore_ascii_case(&name);
                    i += 1;
                    keep
                });
            }
            None => self.entries.push((name, value)),
        }
    }
    pub fn remove(&mut self, name: &str) {
        let canon = canonical_name(name);
        self.entries.retain(|(n, _)| !n.eq_ignore_ascii_case(canon));
    }
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }
    /// Number of header lines.
    pub fn len(&self) -> usize {
        self.entries.len()
    }
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn values<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a str> + 'a {
        let canon = canonical_name(name).to_ascii_lowercase();
        let list = is_list_header(&canon);
        self.entries
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(&canon))
            .flat_map(move |(_, v)| {
                let parts: Vec<&str> = if list {
                    split_list(v).into_iter().filter(|e| !e.is_empty()).collect()
                } else {
                    vec![v.as_str()]
                };
                parts
            })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    /// The Request-URI exactly as received (digest auth needs the raw string).
    pub uri: String,
    pub headers: Headers,
    pub body: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub reason: String,
    pub headers: Headers,
    pub body: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SipMessage {
    Request(Request),
    Response(Response),
}

/// Parse-time limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_message_bytes: usize,
    pub max_headers: usize,
}

/// Why a message could not be accepted. When enough of a request was read to answer it,
/// `reply` holds the status to send (400, 505, 416, ...) and `request` what was parsed, so
/// the caller can build a stateless response.
///
/// "Enough" means: the start line looked like a request line and at least one Via header
/// line was read (a response cannot be routed without one). Responses never get a reply.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{reason}")]
pub struct ParseError {
    /// Short machine-readable cause, used as a metrics label (`bad_start_line`, `too_large`, ...).
    pub cause: &'static str,
    /// Human-readable detail, naming the header or element at fault.
    pub reason: String,
    /// Status code to answer with, when the message was a request good enough to answer.
    pub reply: Option<u16>,
    /// The request's headers as far as they could be read, for building that answer.
    pub request: Option<Box<Request>>,
}

impl ParseError {
    /// An error that is never answered (responses, garbage).
    fn drop(cause: &'static str, reason: impl Into<String>) -> ParseError {
        ParseError {
            cause,
            reason: reason.into(),
            reply: None,
            request: None,
        }
    }
    /// An error about a request: answered with `status` if the request can be routed back.
    fn reject(
        req: Request,
        cause: &'static str,
        reason: impl Into<String>,
        status: u16,
    ) -> ParseError {
        let reply = (req.headers.count("Via") > 0).then_some(status);
        ParseError {
            cause,
            reason: reason.into(),
            reply,
            request: Some(Box::new(req)),
        }
    }
}

/// The top Via, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Via {
    /// `UDP`, `TCP`, `TLS`, ... upper-cased.
    pub transport: String,
    /// The sent-by host; IPv6 references without their brackets, so `host.parse::<IpAddr>()`
    /// works for literal addresses.
    pub host: String,
    pub port: Option<u16>,
    pub branch: Option<String>,
    /// `Some(None)` for a bare `;rport`, `Some(Some(p))` when filled in.
    pub rport: Option<Option<u16>>,
    pub received: Option<String>,
}

impl Via {
    /// Parses one via-parm (`SIP/2.0/UDP host:port;params`), tolerating the LWS RFC 3261
    /// allows around `/`, `:`, `;` and `=`. `None` when it does not follow the grammar,
    /// including empty parameters (`;;`) and a non-numeric or out-of-range port.
    pub fn parse(value: &str) -> Option<Via> {
        let s = trim_ws(value);
        let (_protocol, rest) = take_token(s)?;
        let rest = expect_byte(trim_start_ws(rest), b'/')?;
        let (_version, rest) = take_token(trim_start_ws(rest))?;
        let rest = expect_byte(trim_start_ws(rest), b'/')?;
        let (transport, rest) = take_token(trim_start_ws(rest))?;
        // sent-protocol and sent-by are separated by mandatory LWS.
        if !rest.bytes().next().is_some_and(is_ws) {
            return None;
        }
        let rest = trim_start_ws(rest);
        let (sent_by, params) = match find_unquoted(rest, b';') {
            Some(i) => (&rest[..i], Some(&rest[i + 1..])),
            None => (rest, None),
        };
        let (host, port) = parse_hostport(trim_ws(sent_by), true)?;
        let mut via = Via {
            transport: transport.to_ascii_uppercase(),
            host,
            port,
            branch: None,
            rport: None,
            received: None,
        };
        if let Some(params) = params {
            for (name, value) in parse_params(params)? {
                if name.eq_ignore_ascii_case("branch") {
                    via.branch = Some(value?);
                } else if name.eq_ignore_ascii_case("received") {
                    let v = value?;
                    parse_host(&v)?;
                    via.received = Some(v);
                } else if name.eq_ignore_ascii_case("rport") {
                    via.rport = Some(match value {
                        None => None,
                        Some(v) => Some(parse_port(&v)?),
                    });
                }
            }
        }
        Some(via)
    }
}

/// `CSeq`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CSeq {
    pub seq: u32,
    pub method: Method,
}

impl CSeq {
    /// Parses `1*DIGIT LWS Method`. `None` if the number exceeds 2^32-1 (RFC 3261 §8.1.1.5,
    /// RFC 4475 scalar02) or the method is not a token.
    pub fn parse(value: &str) -> Option<CSeq> {
        let s = trim_ws(value);
        let digits = s.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let seq = s[..digits].parse::<u32>().ok()?;
        let rest = &s[digits..];
        if !rest.bytes().next().is_some_and(is_ws) {
            return None;
        }
        let method = trim_ws(rest);
        is_token(method).then(|| CSeq {
            seq,
            method: Method::parse(method),
        })
    }
}

/// A `name-addr` or `addr-spec` with its header parameters, as found in From, To and
/// Contact. The URI is kept as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameAddr {
    /// Display name as written (quoted strings keep their quotes).
    pub display: Option<String>,
    pub uri: String,
    /// Header parameters (`tag`, `expires`, `q`, ...); values as written.
    pub params: Vec<(String, Option<String>)>,
}

impl NameAddr {
    /// Parses `[display-name] <URI> *(;param)` or `URI *(;param)` strictly (RFC 3261 §20.10,
    /// §25.1): a display name is a quoted string or tokens separated by LWS; nothing may
    /// stand between `<`/`>` and the URI; an URI outside `<>` may not contain `,` or `?`.
    /// Errors name what is wrong.
    pub fn parse(value: &str) -> Result<NameAddr, &'static str> {
        let s = trim_ws(value);
        let b = s.as_bytes();
        let Some(&first) = b.first() else {
            return Err("empty value");
        };
        let (display, rest) = if first == b'"' {
            let end = quoted_end(b, 0).ok_or("unterminated quoted string in display name")?;
            let after = trim_start_ws(&s[end..]);
            if !after.starts_with('<') {
                return Err("quoted display name not followed by <URI>");
            }
            (Some(s[..end].to_string()), after)
        } else if first == b'<' {
            (None, s)
        } else {
            let run = b
                .iter()
                .take_while(|&&c| is_token_byte(c) || is_ws(c))
                .count();
            if b.get(run) == Some(&b'<') {
                (Some(trim_ws(&s[..run]).to_string()), &s[run..])
            } else {
                return Self::parse_addr_spec(s);
            }
        };
        // rest starts with '<'
        let gt = rest.find('>').ok_or("missing '>' after URI")?;
        let uri = &rest[1..gt];
        if uri.is_empty() {
            return Err("empty URI in <>");
        }
        if uri.bytes().any(|c| is_ws(c) || c == b'<') {
            return Err("whitespace inside <URI>");
        }
        check_uri(uri)?;
        let tail = trim_ws(&rest[gt + 1..]);
        let params = if tail.is_empty() {
            Vec::new()
        } else if let Some(p) = tail.strip_prefix(';') {
            parse_params(p).ok_or("malformed header parameter")?
        } else {
            return Err("unexpected text after >");
        };
        Ok(NameAddr {
            display,
            uri: uri.to_string(),
            params,
        })
    }

    fn parse_addr_spec(s: &str) -> Result<NameAddr, &'static str> {
        let (uri, params) = match find_unquoted(s, b';') {
            Some(i) => (trim_end_ws(&s[..i]), Some(&s[i + 1..])),
            None => (s, None),
        };
        if uri.contains('<') || uri.contains('"') {
            return Err("display name must be tokens or a quoted string");
        }
        if uri.bytes().any(is_ws) {
            return Err("whitespace in URI");
        }
        if uri.contains(',') || uri.contains('?') {
            return Err("URI with ',' or '?' must be enclosed in <>");
        }
        check_uri(uri)?;
        let params = match params {
            Some(p) => parse_params(p).ok_or("malformed header parameter")?,
            None => Vec::new(),
        };
        Ok(NameAddr {
            display: None,
            uri: uri.to_string(),
            params,
        })
    }

    /// Value of parameter `name` (case-insensitive), `Some("")` for a parameter without
    /// value.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_deref().unwrap_or(""))
    }
}

/// A `sip:`/`sips:` URI split into its parts (RFC 3261 §19.1.1). Parts are kept as
/// written, escapes included; [`unescape`] them where the grammar allows escapes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipUri {
    pub sips: bool,
    pub user: Option<String>,
    pub password: Option<String>,
    /// Host; IPv6 references without brackets.
    pub host: String,
    pub port: Option<u16>,
    pub params: Vec<(String, Option<String>)>,
    /// The `?headers` part without the `?`.
    pub headers: Option<String>,
}

impl SipUri {
    /// Strict parse of a SIP or SIPS URI; `None` when it breaks the grammar (whitespace,
    /// bad escapes, characters outside the allowed sets, empty parameters, bad port, ...).
    pub fn parse(uri: &str) -> Option<SipUri> {
        let colon = uri.find(':')?;
        let scheme = &uri[..colon];
        let sips = if scheme.eq_ignore_ascii_case("sips") {
            true
        } else if scheme.eq_ignore_ascii_case("sip") {
            false
        } else {
            return None;
        };
        let rest = &uri[colon + 1..];
        if rest.bytes().any(|c| c <= b' ' || c >= 0x7f) {
            return None;
        }
        let (userinfo, hostpart) = match rest.find('@') {
            Some(i) => (Some(&rest[..i]), &rest[i + 1..]),
            None => (None, rest),
        };
        let (mut user, mut password) = (None, None);
        if let Some(ui) = userinfo {
            let (u, p) = match ui.find(':') {
                Some(i) => (&ui[..i], Some(&ui[i + 1..])),
                None => (ui, None),
            };
            if u.is_empty() || !check_escaped(u, is_user_unreserved) {
                return None;
            }
            if let Some(p) = p {
                if !check_escaped(p, is_password_extra) {
                    return None;
                }
                password = Some(p.to_string());
            }
            user = Some(u.to_string());
        }
        let (before_headers, headers) = match hostpart.find('?') {
            Some(i) => (&hostpart[..i], Some(&hostpart[i + 1..])),
            None => (hostpart, None),
        };
        let (hostport, params) = match before_headers.find(';') {
            Some(i) => (&before_headers[..i], Some(&before_headers[i + 1..])),
            None => (before_headers, None),
        };
        let (host, port) = parse_hostport(hostport, false)?;
        let mut out = Vec::new();
        if let Some(params) = params {
            for p in params.split(';') {
                let (n, v) = match p.find('=') {
                    Some(i) => (&p[..i], Some(&p[i + 1..])),
                    None => (p, None),
                };
                if n.is_empty() || !check_escaped(n, is_param_unreserved) {
                    return None;
                }
                if let Some(v) = v {
                    if v.is_empty() || !check_escaped(v, is_param_unreserved) {
                        return None;
                    }
                }
                out.push((n.to_string(), v.map(str::to_string)));
            }
        }
        if let Some(h) = headers {
            for hv in h.split('&') {
                let (n, v) = hv.split_once('=')?;
                if n.is_empty()
                    || !check_escaped(n, is_hnv_unreserved)
                    || !check_escaped(v, is_hnv_unreserved)
                {
                    return None;
                }
            }
        }
        Some(SipUri {
            sips,
            user,
            password,
            host,
            port,
            params: out,
            headers: headers.map(str::to_string),
        })
    }
}

/// Decodes `%HH` escapes; a `%` not followed by two hex digits is kept as is. Bytes that
/// do not form UTF-8 are replaced (lossy): the result is for routing and display.
pub fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            if let (Some(h), Some(l)) = (
                b.get(i + 1).and_then(|c| hex_val(*c)),
                b.get(i + 2).and_then(|c| hex_val(*c)),
            ) {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses one complete message (a UDP datagram or one stream frame).
///
/// For UDP, bytes beyond Content-Length are ignored (RFC 3261 §18.3); a Content-Length
/// larger than the datagram is an error (400). Without Content-Length over UDP, the body
/// is the rest of the datagram.
///
/// Leading CRLFs (keep-alives, RFC 3261 §7.5) are skipped. A header section that runs to
/// the end of the buffer without a blank line is accepted with an empty body. Request
/// syntax checked here: the Request-Line (single SPs, token method, SIP/2.0 else 505),
/// header lines, Content-Length. Header semantics are left to [`Request::validate`].
/// Responses additionally need a status in 100..=699 and a parseable CSeq, else they are
/// dropped (`reply: None`).
pub fn parse(buf: &[u8], limits: &Limits) -> Result<SipMessage, ParseError> {
    let too_large = buf.len() > limits.max_message_bytes;
    // Only ever look at the first max_message_bytes bytes, even to build the error.
    let view = buf.get(..limits.max_message_bytes).unwrap_or(buf);
    let Some(lexed) = lex(view, limits.max_headers) else {
        return Err(ParseError::drop("empty", "empty message"));
    };
    if lexed.start.len() >= 4 && lexed.start[..4].eq_ignore_ascii_case(b"SIP/") {
        return parse_response(view, lexed, too_large, limits);
    }

    let line = match parse_request_line(&lexed.start) {
        Ok(line) => line,
        Err(()) => {
            let reason = if too_large {
                "message too large and not a SIP request"
            } else {
                "start line is neither a Request-Line nor a Status-Line"
            };
            return Err(ParseError::drop("bad_start_line", reason));
        }
    };
    let mut req = Request {
        method: line.method,
        uri: line.uri,
        headers: lexed.headers,
        body: Bytes::new(),
    };
    if too_large {
        let reason = format!(
            "message exceeds {} bytes (got {})",
            limits.max_message_bytes,
            buf.len()
        );
        return Err(ParseError::reject(req, "too_large", reason, 400));
    }
    if lexed.too_many_headers {
        let reason = format!("more than {} header fields", limits.max_headers);
        return Err(ParseError::reject(req, "too_many_headers", reason, 400));
    }
    if let Some((cause, reason, status)) = line.error {
        return Err(ParseError::reject(req, cause, reason, status));
    }
    if let Some(reason) = lexed.header_error {
        return Err(ParseError::reject(req, "bad_header", reason, 400));
    }
    match frame_body(&req.headers, view, lexed.body_start) {
        Ok(body) => req.body = body,
        Err(reason) => return Err(ParseError::reject(req, "bad_content_length", reason, 400)),
    }
    Ok(SipMessage::Request(req))
}

fn parse_response(
    view: &[u8],
    lexed: Lexed,
    too_large: bool,
    limits: &Limits,
) -> Result<SipMessage, ParseError> {
    if too_large {
        return Err(ParseError::drop(
            "too_large",
            format!("response exceeds {} bytes", limits.max_message_bytes),
        ));
    }
    if lexed.too_many_headers {
        return Err(ParseError::drop(
            "too_many_headers",
            format!("response has more than {} header fields", limits.max_headers),
        ));
    }
    let start = &lexed.start;
    // "SIP/2.0" SP 3DIGIT [SP reason]; the reason may be empty or any bytes.
    let sp = start.iter().position(|&c| c == b' ');
    let (version, rest) = match sp {
        Some(i) => (&start[..i], &start[i + 1..]),
        None => (&start[..], &[][..]),
    };
    if !version.eq_ignore_ascii_case(b"SIP/2.0") {
        return Err(ParseError::drop(
            "bad_version",
            format!(
                "unsupported version {} in Status-Line",
                String::from_utf8_lossy(version)
            ),
        ));
    }
    let code = rest.get(..3).filter(|d| d.iter().all(u8::is_ascii_digit));
    let after = rest.get(3..).unwrap_or(&[]);
    let (Some(code), true) = (code, after.is_empty() || after[0] == b' ') else {
        return Err(ParseError::drop(
            "bad_status",
            "Status-Line lacks a three-digit status code",
        ));
    };
    let status = code
        .iter()
        .fold(0u16, |acc, d| acc * 10 + u16::from(d - b'0'));
    if !(100..=699).contains(&status) {
        return Err(ParseError::drop(
            "bad_status",
            format!("status code {status} outside 100..=699"),
        ));
    }
    let reason = String::from_utf8_lossy(after.get(1..).unwrap_or(&[])).into_owned();
    if let Some(reason) = lexed.header_error {
        return Err(ParseError::drop("bad_header", reason));
    }
    let body = frame_body(&lexed.headers, view, lexed.body_start)
        .map_err(|r| ParseError::drop("bad_content_length", r))?;
    if let Some(c) = lexed.headers.get("CSeq") {
        if CSeq::parse(c).is_none() {
            return Err(ParseError::drop(
                "bad_cseq",
                "CSeq header is malformed or its number exceeds 2^32-1",
            ));
        }
    }
    Ok(SipMessage::Response(Response {
        status,
        reason,
        headers: lexed.headers,
        body,
    }))
}

struct RequestLine {
    method: Method,
    uri: String,
    /// Problem found after the line was recognised as a request line: (cause, reason, status).
    error: Option<(&'static str, String, u16)>,
}

/// Recognises `Method SP Request-URI SP SIP-Version`. `Err(())` when the line is not a
/// request line at all; otherwise the best-effort method and URI, with any error found,
/// so the request can still be answered.
fn parse_request_line(start: &[u8]) -> Result<RequestLine, ()> {
    let line = String::from_utf8_lossy(start);
    let words: Vec<&str> = line.split([' ', '\t']).filter(|w| !w.is_empty()).collect();
    if words.len() < 3 {
        return Err(());
    }
    let (method, version) = (words[0], words[words.len() - 1]);
    if version.len() < 4 || !version[..4].eq_ignore_ascii_case("SIP/") {
        return Err(());
    }
    // The URI as best we can tell: everything between method and version.
    let inner = trim_ws(&line);
    let uri = trim_ws(&inner[method.len()..inner.len() - version.len()]).to_string();
    let error = if !is_token(method) {
        Some((
            "bad_method",
            "method in the Request-Line is not a token".to_string(),
            400,
        ))
    } else if line != format!("{method} {uri} {version}") || uri.bytes().any(is_ws) {
        Some((
            "bad_request_line",
            "Request-Line must be Method SP Request-URI SP SIP-Version with no other whitespace"
                .to_string(),
            400,
        ))
    } else if !version.eq_ignore_ascii_case("SIP/2.0") {
        Some((
            "version_not_supported",
            format!("SIP version {version} is not supported"),
            505,
        ))
    } else {
        None
    };
    let method = if is_token(method) {
        Method::parse(method)
    } else {
        Method::Other(method.chars().filter(|c| !c.is_control()).collect())
    };
    Ok(RequestLine { method, uri, error })
}

/// The start line and header section, lexed.
struct Lexed {
    start: Vec<u8>,
    headers: Headers,
    /// Offset of the first body byte, `None` when the headers ran to the end of the buffer.
    body_start: Option<usize>,
    /// First malformed header line; lexing continues past it so the error can be answered.
    header_error: Option<String>,
    too_many_headers: bool,
}

/// Returns the line starting at `pos` without its terminator (LF, or CRLF), the offset
/// after it, and whether a terminator was found.
fn next_line(buf: &[u8], pos: usize) -> (&[u8], usize, bool) {
    let rest = buf.get(pos..).unwrap_or(&[]);
    match rest.iter().position(|&c| c == b'\n') {
        Some(nl) => {
            let line = &rest[..nl];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            (line, pos + nl + 1, true)
        }
        None => {
            let line = rest.strip_suffix(b"\r").unwrap_or(rest);
            (line, buf.len(), false)
        }
    }
}

fn lex(buf: &[u8], max_headers: usize) -> Option<Lexed> {
    let skip = buf
        .iter()
        .take_while(|&&c| c == b'\r' || c == b'\n')
        .count();
    if skip == buf.len() {
        return None;
    }
    let (start, mut pos, _) = next_line(buf, skip);
    let mut lexed = Lexed {
        start: start.to_vec(),
        headers: Headers::default(),
        body_start: None,
        header_error: None,
        too_many_headers: false,
    };
    // Whether the previous line was a header we kept (so a continuation may extend it).
    let mut last_kept = false;
    let mut line_no = 1usize;
    while pos < buf.len() {
        let (line, next, _) = next_line(buf, pos);
        pos = next;
        line_no += 1;
        if line.is_empty() {
            lexed.body_start = Some(next);
            break;
        }
        let mut fail = |msg: String| {
            if lexed.header_error.is_none() {
                lexed.header_error = Some(msg);
            }
        };
        if line.contains(&b'\r') {
            fail(format!("bare CR in header line {line_no}"));
            last_kept = false;
            continue;
        }
        if is_ws(line[0]) {
            // Folding: LWS = [*WSP CRLF] 1*WSP, equivalent to a single SP.
            let cont = String::from_utf8_lossy(line);
            let cont = trim_ws(&cont);
            match lexed.headers.entries.last_mut() {
                Some((_, value)) if last_kept => {
                    if !cont.is_empty() {
                        if !value.is_empty() {
                            value.push(' ');
                        }
                        value.push_str(cont);
                    }
                }
                _ => fail(format!(
                    "continuation line {line_no} does not follow a header"
                )),
            }
            continue;
        }
        if lexed.headers.entries.len() >= max_headers {
            lexed.too_many_headers = true;
            break;
        }
        let Some(colon) = line.iter().position(|&c| c == b':') else {
            fail(format!("header line {line_no} has no ':'"));
            last_kept = false;
            continue;
        };
        let name = &line[..colon];
        let name_end = name.len() - name.iter().rev().take_while(|&&c| is_ws(c)).count();
        let name = &name[..name_end];
        if name.is_empty() || !name.iter().all(|&c| is_token_byte(c)) {
            fail(format!(
                "header name on line {line_no} is not a token: {:?}",
                String::from_utf8_lossy(name)
            ));
            last_kept = false;
            continue;
        }
        // A token is ASCII, so this conversion is lossless.
        let name = String::from_utf8_lossy(name);
        let value = String::from_utf8_lossy(&line[colon + 1..]);
        lexed.headers.entries.push((
            canonical_name(&name).to_string(),
            trim_ws(&value).to_string(),
        ));
        last_kept = true;
    }
    Some(lexed)
}

/// Frames the body by Content-Length (RFC 3261 §18.3, §20.14).
fn frame_body(headers: &Headers, buf: &[u8], body_start: Option<usize>) -> Result<Bytes, String> {
    let avail = body_start.and_then(|s| buf.get(s..)).unwrap_or(&[]);
    match headers.count("Content-Length") {
        0 => return Ok(Bytes::copy_from_slice(avail)),
        1 => {}
        n => return Err(format!("{n} Content-Length headers; framing is ambiguous")),
    }
    let value = headers.get("Content-Length").unwrap_or("");
    let len = (!value.is_empty() && value.bytes().all(|c| c.is_ascii_digit()))
        .then(|| value.parse::<usize>().ok())
        .flatten()
        .ok_or_else(|| format!("Content-Length {value:?} is not a non-negative integer"))?;
    match avail.get(..len) {
        Some(body) => Ok(Bytes::copy_from_slice(body)),
        None => Err(format!(
            "Content-Length {len} exceeds the {} body bytes received",
            avail.len()
        )),
    }
}

impl Request {
    /// Checks what RFC 3261 §8.2 and §16.3 require of a request before a UAS acts on it:
    /// exactly one Call-ID, From, To, CSeq, Max-Forwards where single; at least one Via;
    /// a CSeq whose method matches the request line; a parseable Request-URI (416 for
    /// schemes other than sip/sips/tel); SIP/2.0 (505). The error carries the status.
    ///
    /// The version is checked by [`parse`] (a `Request` does not keep it). Beyond the list
    /// above: every Via value must parse, Max-Forwards must be 0..=255, From/To/Contact
    /// must be well-formed name-addr/addr-spec (RFC 4475 quotbal, baddn, badaspec,
    /// regbadct, badinv01 are rejected, not guessed at), and the Request-URI may carry
    /// neither `<>`, whitespace nor `?headers`.
    pub fn validate(&self) -> Result<(), ParseError> {
        let fail = |cause: &'static str, reason: String, status: u16| {
            Err(ParseError::reject(self.clone(), cause, reason, status))
        };
        for name in ["Call-ID", "From", "To", "CSeq"] {
            match self.headers.count(name) {
                0 => return fail("missing_header", format!("missing {name} header"), 400),
                1 => {}
                n => return fail("duplicate_header", format!("{n} {name} headers"), 400),
            }
        }
        if self.headers.count("Via") == 0 {
            return fail("missing_header", "missing Via header".into(), 400);
        }
        for line in self.headers.entries.iter().filter(|(n, _)| n.eq_ignore_ascii_case("Via")) {
            for (i, v) in split_list(&line.1).into_iter().enumerate() {
                if Via::parse(v).is_none() {
                    return fail(
                        "bad_via",
                        format!("Via value {} ({v:?}) is malformed", i + 1),
                        400,
                    );
                }
            }
        }
        let call_id = self.headers.get("Call-ID").unwrap_or("");
        if !is_call_id(call_id) {
            return fail("bad_call_id", "Call-ID is malformed".into(), 400);
        }
        let Some(cseq) = self.cseq() else {
            return fail(
                "bad_cseq",
                "CSeq is malformed or its number exceeds 2^32-1".into(),
                400,
            );
        };
        if cseq.method != self.method {
            return fail(
                "cseq_mismatch",
                format!(
                    "CSeq method {} differs from the request method {}",
                    cseq.method, self.method
                ),
                400,
            );
        }
        match self.headers.count("Max-Forwards") {
            0 => {}
            1 => {
                let mf = self.headers.get("Max-Forwards").unwrap_or("");
                let ok = !mf.is_empty()
                    && mf.bytes().all(|c| c.is_ascii_digit())
                    && mf.parse::<u8>().is_ok();
                if !ok {
                    return fail(
                        "bad_max_forwards",
                        format!("Max-Forwards {mf:?} is not a number in 0..=255"),
                        400,
                    );
                }
            }
            n => return fail("duplicate_header", format!("{n} Max-Forwards headers"), 400),
        }
        for name in ["From", "To"] {
            if let Err(why) = NameAddr::parse(self.headers.get(name).unwrap_or("")) {
                let cause = if name == "From" { "bad_from" } else { "bad_to" };
                return fail(cause, format!("{name} header: {why}"), 400);
            }
        }
        for line in self.headers.entries.iter().filter(|(n, _)| n.eq_ignore_ascii_case("Contact")) {
            if trim_ws(&line.1) == "*" {
                continue;
            }
            for v in split_list(&line.1) {
                if let Err(why) = NameAddr::parse(v) {
                    return fail("bad_contact", format!("Contact header: {why}"), 400);
                }
            }
        }
        self.validate_uri()
            .or_else(|(cause, reason, status)| fail(cause, reason, status))
    }

    fn validate_uri(&self) -> Result<(), (&'static str, String, u16)> {
        let uri = self.uri.as_str();
        let bad = |reason: &str| Err(("bad_request_uri", format!("Request-URI {reason}"), 400));
        if uri.contains(['<', '>']) {
            return bad("must not be enclosed in <>");
        }
        if uri.bytes().any(|c| c <= b' ' || c == 0x7f) {
            return bad("contains whitespace or control characters");
        }
        let scheme = match uri.find(':') {
            Some(i) if is_scheme(&uri[..i]) => &uri[..i],
            _ => return bad("has no valid scheme"),
        };
        if scheme.eq_ignore_ascii_case("sip") || scheme.eq_ignore_ascii_case("sips") {
            match SipUri::parse(uri) {
                None => bad("is not a well-formed SIP URI"),
                // RFC 3261 §19.1.1: headers are not allowed in a Request-URI.
                Some(u) if u.headers.is_some() => bad("carries ?headers, not allowed there"),
                Some(_) => Ok(()),
            }
        } else if scheme.eq_ignore_ascii_case("tel") {
            if check_tel(&uri[4..]) {
                Ok(())
            } else {
                bad("is not a well-formed tel URI")
            }
        } else {
            Err((
                "unsupported_uri_scheme",
                format!("Request-URI scheme {scheme:?} is not supported"),
                416,
            ))
        }
    }

    pub fn top_via(&self) -> Option<Via> {
        self.headers.get("Via").and_then(Via::parse)
    }
    pub fn cseq(&self) -> Option<CSeq> {
        self.headers.get("CSeq").and_then(CSeq::parse)
    }
    pub fn call_id(&self) -> Option<&str> {
        self.headers.get("Call-ID")
    }
    /// The `tag` parameter of the To header, if any.
    pub fn to_tag(&self) -> Option<String> {
        header_tag(&self.headers, "To")
    }
    pub fn from_tag(&self) -> Option<String> {
        header_tag(&self.headers, "From")
    }
    /// User part of the Request-URI (`sip:user@host`), percent-unescaped (`None` when there
    /// is no user or the URI is malformed). For `tel:` URIs this is the number, because
    /// trunks route on it: parameters dropped, visual separators (`-.()`) removed, so
    /// `tel:+1-415-555-0100;phone-context=x` gives `+14155550100`.
    pub fn uri_user(&self) -> Option<String> {
        let colon = self.uri.find(':')?;
        let scheme = &self.uri[..colon];
        if scheme.eq_ignore_ascii_case("tel") {
            let rest = &self.uri[colon + 1..];
            if !check_tel(rest) {
                return None;
            }
            let number = rest.split(';').next().unwrap_or("");
            let number: String = unescape(number)
                .chars()
                .filter(|c| !matches!(c, '-' | '.' | '(' | ')'))
                .collect();
            return (!number.is_empty()).then_some(number);
        }
        SipUri::parse(&self.uri)?.user.map(|u| unescape(&u))
    }
    /// Records where the request came from in the top Via: `received` when the sent-by host
    /// differs from `source`'s address, and `rport` filled in when the client asked (RFC 3581).
    ///
    /// With any `rport` present, `received` is always added (RFC 3581 §4). Only the first
    /// value of the first Via line is rewritten; parameters are re-emitted without the
    /// optional whitespace around `;` and `=`. A malformed top Via is left alone.
    pub fn stamp_received(&mut self, source: SocketAddr) {
        let Some(entry) = self
            .headers
            .entries
            .iter_mut()
            .find(|(n, _)| n.eq_ignore_ascii_case("Via"))
        else {
            return;
        };
        let line = &entry.1;
        let Some((a, b)) = split_ranges(line, true)
            .into_iter()
            .map(|(a, b)| trim_range(line, a, b))
            .find(|(a, b)| a < b)
        else {
            return;
        };
        let elem = &line[a..b];
        let Some(via) = Via::parse(elem) else {
            return;
        };
        let ip = source.ip().to_canonical();
        let host_ip = parse_host(&via.host).map(|h| h.to_canonical());
        let add_received = via.rport.is_some() || host_ip != Some(ip);
        let fill_rport = via.rport == Some(None);
        if !add_received && !fill_rport {
            return;
        }
        let (head, params) = match find_unquoted(elem, b';') {
            Some(i) => (trim_ws(&elem[..i]), parse_params(&elem[i + 1..])),
            None => (elem, Some(Vec::new())),
        };
        let mut out = head.to_string();
        for (name, value) in params.unwrap_or_default() {
            if add_received && name.eq_ignore_ascii_case("received") {
                continue;
            }
            if fill_rport && name.eq_ignore_ascii_case("rport") {
                out.push_str(&format!(";rport={}", source.port()));
                continue;
            }
            out.push(';');
            out.push_str(&name);
            if let Some(v) = value {
                out.push('=');
                out.push_str(&v);
            }
        }
        if add_received {
            out.push_str(&format!(";received={ip}"));
        }
        entry.1 = format!("{}{}{}", &line[..a], out, &line[b..]);
    }
    pub fn to_bytes(&self) -> Bytes {
        let mut out = Vec::with_capacity(256 + self.body.len());
        out.extend_from_slice(sanitize_start_word(self.method.as_str()).as_bytes());
        out.push(b' ');
        out.extend_from_slice(sanitize_start_word(&self.uri).as_bytes());
        out.extend_from_slice(b" SIP/2.0\r\n");
        write_tail(&mut out, &self.headers, &self.body);
        Bytes::from(out)
    }
}

impl Response {
    /// A response to `req` per RFC 3261 §8.2.6: Via(s), From, To, Call-ID and CSeq copied;
    /// a To tag added (`to_tag`) when the request had none and `status > 100`.
    ///
    /// Every Via line is copied in order; of the others the first is copied, and a missing
    /// one is simply left out (answers to broken requests are best effort).
    pub fn for_request(req: &Request, status: u16, reason: &str, to_tag: Option<&str>) -> Response {
        let mut headers = Headers::default();
        for (name, value) in req.headers.iter() {
            if name.eq_ignore_ascii_case("Via") {
                headers.push("Via", value);
            }
        }
        if let Some(from) = req.headers.get("From") {
            headers.push("From", from);
        }
        if let Some(to) = req.headers.get("To") {
            match to_tag {
                Some(tag) if status > 100 && req.to_tag().is_none() => {
                    headers.push("To", format!("{to};tag={tag}"));
                }
                _ => headers.push("To", to),
            }
        }
        for name in ["Call-ID", "CSeq"] {
            if let Some(v) = req.headers.get(name) {
                headers.push(name, v);
            }
        }
        Response {
            status,
            reason: reason.to_string(),
            headers,
            body: Bytes::new(),
        }
    }
    pub fn cseq(&self) -> Option<CSeq> {
        self.headers.get("CSeq").and_then(CSeq::parse)
    }
    pub fn top_via(&self) -> Option<Via> {
        self.headers.get("Via").and_then(Via::parse)
    }
    pub fn to_bytes(&self) -> Bytes {
        let mut out = Vec::with_capacity(256 + self.body.len());
        out.extend_from_slice(format!("SIP/2.0 {:03} ", self.status).as_bytes());
        out.extend_from_slice(sanitize_value(self.reason.clone()).as_bytes());
        out.extend_from_slice(b"\r\n");
        write_tail(&mut out, &self.headers, &self.body);
        Bytes::from(out)
    }
}

/// Writes the headers (minus any stored Content-Length), a fresh Content-Length, the blank
/// line and the body. Values are sanitised again so nothing can split a line.
fn write_tail(out: &mut Vec<u8>, headers: &Headers, body: &Bytes) {
    for (name, value) in headers.iter() {
        if name.eq_ignore_ascii_case("Content-Length") {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend(
            value
                .bytes()
                .map(|c| if c == b'\r' || c == b'\n' { b' ' } else { c }),
        );
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
    out.extend_from_slice(body);
}

/// The default reason phrase for a status code.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Trying",
        180 => "Ringing",
        181 => "Call Is Being Forwarded",
        182 => "Queued",
        183 => "Session Progress",
        199 => "Early Dialog Terminated",
        200 => "OK",
        202 => "Accepted",
        204 => "No Notification",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Moved Temporarily",
        305 => "Use Proxy",
        380 => "Alternative Service",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        410 => "Gone",
        412 => "Conditional Request Failed",
        413 => "Request Entity Too Large",
        414 => "Request-URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Unsupported URI Scheme",
        417 => "Unknown Resource-Priority",
        420 => "Bad Extension",
        421 => "Extension Required",
        422 => "Session Interval Too Small",
        423 => "Interval Too Brief",
        428 => "Use Identity Header",
        429 => "Provide Referrer Identity",
        430 => "Flow Failed",
        433 => "Anonymity Disallowed",
        436 => "Bad Identity-Info",
        437 => "Unsupported Certificate",
        438 => "Invalid Identity Header",
        439 => "First Hop Lacks Outbound Support",
        440 => "Max-Breadth Exceeded",
        469 => "Bad Info Package",
        470 => "Consent Needed",
        480 => "Temporarily Unavailable",
        481 => "Call/Transaction Does Not Exist",
        482 => "Loop Detected",
        483 => "Too Many Hops",
        484 => "Address Incomplete",
        485 => "Ambiguous",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        489 => "Bad Event",
        491 => "Request Pending",
        493 => "Undecipherable",
        494 => "Security Agreement Required",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Server Time-out",
        505 => "Version Not Supported",
        513 => "Message Too Large",
        555 => "Push Notification Service Not Supported",
        580 => "Precondition Failure",
        600 => "Busy Everywhere",
        603 => "Decline",
        604 => "Does Not Exist Anywhere",
        606 => "Not Acceptable",
        607 => "Unwanted",
        608 => "Rejected",
        100..=199 => "Provisional",
        200..=299 => "Success",
        300..=399 => "Redirection",
        400..=499 => "Client Error",
        500..=599 => "Server Error",
        600..=699 => "Global Failure",
        _ => "Unknown",
    }
}

// ---------------------------------------------------------------------------------------
// Lexical helpers. All slicing happens at offsets of ASCII bytes, which are always char
// boundaries in UTF-8.

/// Compact header names (RFC 3261 §7.3.3 and the RFCs that registered the others).
const COMPACT: &[(u8, &str)] = &[
    (b'a', "Accept-Contact"),
    (b'b', "Referred-By"),
    (b'c', "Content-Type"),
    (b'd', "Request-Disposition"),
    (b'e', "Content-Encoding"),
    (b'f', "From"),
    (b'i', "Call-ID"),
    (b'j', "Reject-Contact"),
    (b'k', "Supported"),
    (b'l', "Content-Length"),
    (b'm', "Contact"),
    (b'n', "Identity-Info"),
    (b'o', "Event"),
    (b'r', "Refer-To"),
    (b's', "Subject"),
    (b't', "To"),
    (b'u', "Allow-Events"),
    (b'v', "Via"),
    (b'x', "Session-Expires"),
    (b'y', "Identity"),
];

/// Headers whose grammar is a comma-separated list (`#element` in the ABNF). Not the
/// auth headers, Date or Retry-After, whose values contain commas of their own.
const LIST_HEADERS: &[&str] = &[
    "via",
    "route",
    "record-route",
    "contact",
    "allow",
    "supported",
    "require",
    "proxy-require",
    "unsupported",
    "accept",
    "accept-encoding",
    "accept-language",
    "allow-events",
    "content-encoding",
    "content-language",
    "alert-info",
    "call-info",
    "error-info",
    "in-reply-to",
    "path",
    "service-route",
    "reason",
    "warning",
    "p-asserted-identity",
    "p-preferred-identity",
    "accept-contact",
    "reject-contact",
    "history-info",
];

/// Long form of a compact header name; other names unchanged.
fn canonical_name(name: &str) -> &str {
    match name.as_bytes() {
        [c] => COMPACT
            .iter()
            .find(|(k, _)| *k == c.to_ascii_lowercase())
            .map_or(name, |(_, long)| long),
        _ => name,
    }
}

fn is_list_header(lower: &str) -> bool {
    LIST_HEADERS.contains(&lower)
}

fn sanitize_name(name: &str) -> String {
    let name: String = canonical_name(name)
        .chars()
        .map(|c| {
            if c.is_ascii() && is_token_byte(c as u8) {
                c
            } else {
                '-'
            }
        })
        .collect();
    if name.is_empty() {
        "X".to_string()
    } else {
        name
    }
}

fn sanitize_value(value: String) -> String {
    if value.contains(['\r', '\n']) {
        value.replace(['\r', '\n'], " ")
    } else {
        value
    }
}

/// A method or Request-URI for the start line: whitespace and control characters would
/// break the line, so they are percent-escaped.
fn sanitize_start_word(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_whitespace() || c.is_control() {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn is_ws(c: u8) -> bool {
    c == b' ' || c == b'\t'
}

fn trim_ws(s: &str) -> &str {
    s.trim_matches([' ', '\t'])
}

fn trim_start_ws(s: &str) -> &str {
    s.trim_start_matches([' ', '\t'])
}

fn trim_end_ws(s: &str) -> &str {
    s.trim_end_matches([' ', '\t'])
}

/// RFC 3261 token characters.
fn is_token_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(
            c,
            b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
        )
}

fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_token_byte)
}

/// Splits a leading token off `s`.
fn take_token(s: &str) -> Option<(&str, &str)> {
    let n = s.bytes().take_while(|&c| is_token_byte(c)).count();
    (n > 0).then(|| (&s[..n], &s[n..]))
}

fn expect_byte(s: &str, c: u8) -> Option<&str> {
    (s.as_bytes().first() == Some(&c)).then(|| &s[1..])
}

fn is_scheme(s: &str) -> bool {
    let b = s.as_bytes();
    b.first().is_some_and(u8::is_ascii_alphabetic)
        && b
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.'))
}

fn is_unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(
            c,
            b'-' | b'_' | b'.' | b'!' | b'~' | b'*' | b'\'' | b'(' | b')'
        )
}

fn is_user_unreserved(c: u8) -> bool {
    matches!(c, b'&' | b'=' | b'+' | b'$' | b',' | b';' | b'?' | b'/')
}

fn is_password_extra(c: u8) -> bool {
    matches!(c, b'&' | b'=' | b'+' | b'$' | b',')
}

fn is_param_unreserved(c: u8) -> bool {
    matches!(c, b'[' | b']' | b'/' | b':' | b'&' | b'+' | b'$')
}

fn is_hnv_unreserved(c: u8) -> bool {
    matches!(c, b'[' | b']' | b'/' | b'?' | b':' | b'+' | b'$')
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Every byte is unreserved, allowed by `extra`, or part of a valid `%HH` escape.
fn check_escaped(s: &str, extra: fn(u8) -> bool) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'%' {
            let ok = b.get(i + 1).and_then(|c| hex_val(*c)).is_some()
                && b.get(i + 2).and_then(|c| hex_val(*c)).is_some();
            if !ok {
                return false;
            }
            i += 3;
        } else if is_unreserved(c) || extra(c) {
            i += 1;
        } else {
            return false;
        }
    }
    true
}

/// Offset just past the quoted string that starts at `b[start] == '"'`.
fn quoted_end(b: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    while i < b.len() {
        match b[i] {
            b'\\' => {
                // quoted-pair: any octet but CR/LF (non-ASCII tolerated).
                let next = *b.get(i + 1)?;
                if next == b'\r' || next == b'\n' {
                    return None;
                }
                i += 2;
            }
            b'"' => return Some(i + 1),
            b'\r' | b'\n' => return None,
            _ => i += 1,
        }
    }
    None
}

/// Offset of the first `sep` outside quoted strings.
fn find_unquoted(s: &str, sep: u8) -> Option<usize> {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' => i = quoted_end(b, i)?,
            c if c == sep => return Some(i),
            _ => i += 1,
        }
    }
    None
}

/// Byte ranges of the comma-separated elements of `s`, ignoring commas in quoted strings
/// and (when `angle`) inside `<...>`. An unterminated quote ends the scan: the remainder
/// is one element, which its own parser will then reject.
fn split_ranges(s: &str, angle: bool) -> Vec<(usize, usize)> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let (mut start, mut i, mut in_angle) = (0, 0, false);
    while i < b.len() {
        match b[i] {
            b'"' if !in_angle => match quoted_end(b, i) {
                Some(end) => i = end,
                None => break,
            },
            b'<' if angle => {
                in_angle = true;
                i += 1;
            }
            b'>' if angle => {
                in_angle = false;
                i += 1;
            }
            b',' if !in_angle => {
                out.push((start, i));
                i += 1;
                start = i;
            }
            _ => i += 1,
        }
    }
    out.push((start, b.len()));
    out
}

fn trim_range(s: &str, a: usize, b: usize) -> (usize, usize) {
    let part = &s[a..b];
    let lead = part.len() - trim_start_ws(part).len();
    let trail = part.len() - trim_end_ws(part).len();
    if lead == part.len() {
        (a, a)
    } else {
        (a + lead, b - trail)
    }
}

/// The elements of a list header value, trimmed; empty elements kept (validation wants
/// to see them).
fn split_list(s: &str) -> Vec<&str> {
    split_ranges(s, true)
        .into_iter()
        .map(|(a, b)| trim_ws(&s[a..b]))
        .collect()
}

/// Parses `name[=value]` parameters separated by `;` (the text after the first `;`),
/// allowing LWS around `;` and `=`. Values are tokens, hosts (IPv6 included) or quoted
/// strings. `None` on an empty parameter or anything else off-grammar.
fn parse_params(s: &str) -> Option<Vec<(String, Option<String>)>> {
    let mut out = Vec::new();
    let mut rest = s;
    loop {
        let end = find_unquoted(rest, b';');
        let part = trim_ws(&rest[..end.unwrap_or(rest.len())]);
        let (name, value) = match part.find(['=', '"']) {
            Some(i) if part.as_bytes()[i] == b'=' => {
                (trim_end_ws(&part[..i]), Some(trim_start_ws(&part[i + 1..])))
            }
            Some(_) => return None,
            None => (part, None),
        };
        if !is_token(name) {
            return None;
        }
        if let Some(v) = value {
            let ok = if v.starts_with('"') {
                quoted_end(v.as_bytes(), 0) == Some(v.len())
            } else {
                !v.is_empty()
                    && v
                        .bytes()
                        .all(|c| is_token_byte(c) || matches!(c, b'[' | b']' | b':'))
            };
            if !ok {
                return None;
            }
        }
        out.push((name.to_string(), value.map(str::to_string)));
        match end {
            Some(i) => rest = &rest[i + 1..],
            None => return Some(out),
        }
    }
}

fn parse_port(s: &str) -> Option<u16> {
    let s = trim_ws(s);
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// A host as IP address, accepting IPv6 with or without brackets.
fn parse_host(s: &str) -> Option<IpAddr> {
    let inner = s
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(s);
    inner.parse().ok()
}

/// `host [":" port]`; with `lws`, whitespace is allowed around the colon (Via's COLON).
/// Hostnames may use `_` (seen in the wild). All-numeric hosts must be IPv4 addresses.
fn parse_hostport(s: &str, lws: bool) -> Option<(String, Option<u16>)> {
    let (host, port_part) = if let Some(r) = s.strip_prefix('[') {
        let close = r.find(']')?;
        let v6: Ipv6Addr = r[..close].parse().ok()?;
        (v6.to_string(), &r[close + 1..])
    } else {
        let end = s.find(':').unwrap_or(s.len());
        let host = if lws {
            trim_end_ws(&s[..end])
        } else {
            &s[..end]
        };
        let valid = !host.is_empty()
            && host
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_'));
        if !valid {
            return None;
        }
        if host.bytes().all(|c| c.is_ascii_digit() || c == b'.') {
            host.parse::<Ipv4Addr>().ok()?;
        }
        (host.to_string(), &s[end..])
    };
    let port_part = if lws {
        trim_start_ws(port_part)
    } else {
        port_part
    };
    if port_part.is_empty() {
        return Some((host, None));
    }
    let p = port_part.strip_prefix(':')?;
    if !lws && p.bytes().any(is_ws) {
        return None;
    }
    Some((host, Some(parse_port(p)?)))
}

/// A URI in From/To/Contact: SIP/SIPS strictly, tel loosely, any other scheme as an
/// opaque absoluteURI (RFC 4475 unksm2 must parse).
fn check_uri(uri: &str) -> Result<(), &'static str> {
    let colon = uri.find(':').ok_or("URI has no scheme")?;
    let scheme = &uri[..colon];
    if !is_scheme(scheme) {
        return Err("URI has an invalid scheme");
    }
    let rest = &uri[colon + 1..];
    if scheme.eq_ignore_ascii_case("sip") || scheme.eq_ignore_ascii_case("sips") {
        SipUri::parse(uri).map(|_| ()).ok_or("malformed SIP URI")
    } else if scheme.eq_ignore_ascii_case("tel") {
        check_tel(rest).then_some(()).ok_or("malformed tel URI")
    } else if rest.is_empty()
        || rest
            .bytes()
            .any(|c| c <= b' ' || c >= 0x7f || matches!(c, b'<' | b'>' | b'"'))
    {
        Err("malformed URI")
    } else {
        Ok(())
    }
}

/// `tel:` URI body (RFC 3966), loosely: a number of digits and visual separators
/// (global `+...` or local, hex digits, `*`, `#`), then `;`-separated parameters.
fn check_tel(rest: &str) -> bool {
    let mut parts = rest.split(';');
    let number = parts.next().unwrap_or("");
    let digits = number.strip_prefix('+').unwrap_or(number);
    let number_ok = digits.bytes().any(|c| c.is_ascii_hexdigit())
        && digits.bytes().all(|c| {
            c.is_ascii_hexdigit() || matches!(c, b'*' | b'#' | b'-' | b'.' | b'(' | b')')
        });
    number_ok
        && parts.all(|p| !p.is_empty() && check_escaped(p, |c| is_param_unreserved(c) || c == b'='))
}

/// `Call-ID = word ["@" word]` (RFC 3261 §25.1).
fn is_call_id(s: &str) -> bool {
    let is_word = |w: &str| {
        !w.is_empty()
            && w.bytes().all(|c| {
                is_token_byte(c)
                    || matches!(
                        c,
                        b'(' | b')'
                            | b'<'
                            | b'>'
                            | b':'
                            | b'\\'
                            | b'"'
                            | b'/'
                            | b'['
                            | b']'
                            | b'?'
                            | b'{'
                            | b'}'
                    )
            })
    };
    match s.split_once('@') {
        Some((a, b)) => is_word(a) && is_word(b),
        None => is_word(s),
    }
}

fn header_tag(headers: &Headers, name: &str) -> Option<String> {
    let na = NameAddr::parse(headers.get(name)?).ok()?;
    na.param("tag")
        .filter(|t| !t.is_empty())
        .map(str::to_string)
}
