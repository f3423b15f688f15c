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
use std::net::SocketAddr;

use crate::sip::lex::{is_token, is_token_byte, is_ws, trim_end_ws, trim_start_ws, trim_ws};
use crate::sip::uri::{self, check as check_uri, Uri, UriError};

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
                    split_list(v)
                        .into_iter()
                        .filter(|e| !e.is_empty())
                        .collect()
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
    fn unanswered(cause: &'static str, reason: impl Into<String>) -> ParseError {
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
        let (host, port) = uri::parse_hostport(trim_ws(sent_by), true).ok()?;
        let mut via = Via {
            transport: transport.to_ascii_uppercase(),
            host: host.unbracketed(),
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
                    uri::parse_ip(&v)?;
                    via.received = Some(v);
                } else if name.eq_ignore_ascii_case("rport") {
                    via.rport = Some(match value {
                        None => None,
                        Some(v) => Some(uri::parse_port(&v)?),
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

/// Why a From, To or Contact value is not a name-addr or addr-spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameAddrError {
    #[error("{0}")]
    Syntax(&'static str),
    #[error("URI {0}")]
    Uri(#[from] UriError),
}

impl From<&'static str> for NameAddrError {
    fn from(why: &'static str) -> NameAddrError {
        NameAddrError::Syntax(why)
    }
}

impl NameAddr {
    /// Parses `[display-name] <URI> *(;param)` or `URI *(;param)` strictly (RFC 3261 §20.10,
    /// §25.1): a display name is a quoted string or tokens separated by LWS; nothing may
    /// stand between `<`/`>` and the URI; an URI outside `<>` may not contain `,` or `?`.
    /// Errors name what is wrong.
    pub fn parse(value: &str) -> Result<NameAddr, NameAddrError> {
        let s = trim_ws(value);
        let b = s.as_bytes();
        let Some(&first) = b.first() else {
            return Err("empty value".into());
        };
        let (display, rest) = if first == b'"' {
            let end = quoted_end(b, 0).ok_or("unterminated quoted string in display name")?;
            let after = trim_start_ws(&s[end..]);
            if !after.starts_with('<') {
                return Err("quoted display name not followed by <URI>".into());
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
            return Err("empty URI in <>".into());
        }
        if uri.bytes().any(|c| is_ws(c) || c == b'<') {
            return Err("whitespace inside <URI>".into());
        }
        check_uri(uri)?;
        let tail = trim_ws(&rest[gt + 1..]);
        let params = if tail.is_empty() {
            Vec::new()
        } else if let Some(p) = tail.strip_prefix(';') {
            parse_params(p).ok_or("malformed header parameter")?
        } else {
            return Err("unexpected text after >".into());
        };
        Ok(NameAddr {
            display,
            uri: uri.to_string(),
            params,
        })
    }

    fn parse_addr_spec(s: &str) -> Result<NameAddr, NameAddrError> {
        let (uri, params) = match find_unquoted(s, b';') {
            Some(i) => (trim_end_ws(&s[..i]), Some(&s[i + 1..])),
            None => (s, None),
        };
        if uri.contains('<') || uri.contains('"') {
            return Err("display name must be tokens or a quoted string".into());
        }
        if uri.bytes().any(is_ws) {
            return Err("whitespace in URI".into());
        }
        if uri.contains(',') || uri.contains('?') {
            return Err("URI with ',' or '?' must be enclosed in <>".into());
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

/// Parses one complete message (a UDP datagram or one stream frame).
///
/// For UDP, bytes beyond Content-Length are ignored (RFC 3261 §18.3); a Content-Length
/// larger than the datagram is an error (400). Without Content-Length over UDP, the body
/// is the rest of the datagram.
///
/// Leading CRLFs (keep-alives, RFC 3261 §7.5) are skipped; header lines may end in CRLF or
/// a bare LF (a bare CR inside a line is a 400). A header section that runs to
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
        return Err(ParseError::unanswered("empty", "empty message"));
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
            return Err(ParseError::unanswered("bad_start_line", reason));
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
        return Err(ParseError::unanswered(
            "too_large",
            format!("response exceeds {} bytes", limits.max_message_bytes),
        ));
    }
    if lexed.too_many_headers {
        return Err(ParseError::unanswered(
            "too_many_headers",
            format!(
                "response has more than {} header fields",
                limits.max_headers
            ),
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
        return Err(ParseError::unanswered(
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
        return Err(ParseError::unanswered(
            "bad_status",
            "Status-Line lacks a three-digit status code",
        ));
    };
    let status = code
        .iter()
        .fold(0u16, |acc, d| acc * 10 + u16::from(d - b'0'));
    if !(100..=699).contains(&status) {
        return Err(ParseError::unanswered(
            "bad_status",
            format!("status code {status} outside 100..=699"),
        ));
    }
    let reason = String::from_utf8_lossy(after.get(1..).unwrap_or(&[])).into_owned();
    if let Some(reason) = lexed.header_error {
        return Err(ParseError::unanswered("bad_header", reason));
    }
    let body = frame_body(&lexed.headers, view, lexed.body_start)
        .map_err(|r| ParseError::unanswered("bad_content_length", r))?;
    if let Some(c) = lexed.headers.get("CSeq") {
        if CSeq::parse(c).is_none() {
            return Err(ParseError::unanswered(
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
    let sip_prefix = version.as_bytes().get(..4);
    if !sip_prefix.is_some_and(|p| p.eq_ignore_ascii_case(b"SIP/")) {
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
/// after it, and whether it ended in a bare LF (no CR before it).
fn next_line(buf: &[u8], pos: usize) -> (&[u8], usize, bool) {
    let rest = buf.get(pos..).unwrap_or(&[]);
    match rest.iter().position(|&c| c == b'\n') {
        Some(nl) => {
            let line = &rest[..nl];
            match line.strip_suffix(b"\r") {
                Some(line) => (line, pos + nl + 1, false),
                None => (line, pos + nl + 1, true),
            }
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
    let (start, mut pos, start_bare_lf) = next_line(buf, skip);
    // A message that ends its start line in CRLF must end every header line so: a bare LF
    // in the middle would let a header value smuggle in a header of its own.
    let crlf = !start_bare_lf;
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
        let (line, next, bare_lf) = next_line(buf, pos);
        pos = next;
        line_no += 1;
        let mut fail = |msg: String| {
            if lexed.header_error.is_none() {
                lexed.header_error = Some(msg);
            }
        };
        if crlf && bare_lf {
            // Nothing from here on can be trusted to be the header it looks like, so stop:
            // an answer is built only from the lines before it.
            fail(format!(
                "bare LF in header line {line_no} of a CRLF message"
            ));
            break;
        }
        if line.is_empty() {
            lexed.body_start = Some(next);
            break;
        }
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
        for line in self
            .headers
            .entries
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("Via"))
        {
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
        for line in self
            .headers
            .entries
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("Contact"))
        {
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
        let bad = |reason: &str| Err(("bad_request_uri", format!("Request-URI {reason}"), 400));
        if self.uri.contains(['<', '>']) {
            return bad("must not be enclosed in <>");
        }
        match Uri::parse(&self.uri) {
            // RFC 3261 §19.1.1: headers are not allowed in a Request-URI.
            Ok(u) if !u.headers.is_empty() => bad("carries ?headers, not allowed there"),
            Ok(_) => Ok(()),
            Err(UriError::UnsupportedScheme(scheme)) => Err((
                "unsupported_uri_scheme",
                format!("Request-URI scheme {scheme:?} is not supported"),
                416,
            )),
            Err(e) => bad(&e.to_string()),
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
    /// is no user or the URI is malformed); for `tel:` the number without separators
    /// ([`Uri::user_unescaped`]).
    pub fn uri_user(&self) -> Option<String> {
        uri::user_of(&self.uri)
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
        let host_ip = uri::parse_ip(&via.host).map(|h| h.to_canonical());
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
        // Unknown codes are treated as x00 of their class (RFC 3261 §8.1.3.2).
        _ => match status / 100 {
            1 => "Provisional",
            2 => "Success",
            3 => "Redirection",
            4 => "Client Error",
            5 => "Server Error",
            6 => "Global Failure",
            _ => "Unknown",
        },
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

/// Splits a leading token off `s`.
fn take_token(s: &str) -> Option<(&str, &str)> {
    let n = s.bytes().take_while(|&c| is_token_byte(c)).count();
    (n > 0).then(|| (&s[..n], &s[n..]))
}

fn expect_byte(s: &str, c: u8) -> Option<&str> {
    (s.as_bytes().first() == Some(&c)).then(|| &s[1..])
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
                    && v.bytes()
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

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    const LIMITS: Limits = Limits {
        max_message_bytes: 65_535,
        max_headers: 256,
    };
    const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/rfc4475");

    fn req(text: &str) -> Request {
        match parse(text.as_bytes(), &LIMITS) {
            Ok(SipMessage::Request(r)) => r,
            other => panic!("expected a request, got {other:?}"),
        }
    }

    fn parse_err(text: &[u8]) -> ParseError {
        match parse(text, &LIMITS) {
            Err(e) => e,
            Ok(m) => panic!("expected an error, got {m:?}"),
        }
    }

    const BASIC: &str = "INVITE sip:alice@example.com SIP/2.0\r\n\
        Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1\r\n\
        Max-Forwards: 70\r\n\
        From: \"Bob\" <sip:bob@example.org>;tag=ft\r\n\
        To: <sip:alice@example.com>\r\n\
        Call-ID: abc@192.0.2.1\r\n\
        CSeq: 1 INVITE\r\n\
        Content-Length: 4\r\n\
        \r\n\
        v=0\r";

    #[test]
    fn basic_request() {
        let r = req(BASIC);
        assert_eq!(r.method, Method::Invite);
        assert_eq!(r.uri, "sip:alice@example.com");
        assert_eq!(&r.body[..], b"v=0\r");
        assert_eq!(r.call_id(), Some("abc@192.0.2.1"));
        assert_eq!(r.from_tag().as_deref(), Some("ft"));
        assert_eq!(r.to_tag(), None);
        assert_eq!(
            r.cseq(),
            Some(CSeq {
                seq: 1,
                method: Method::Invite
            })
        );
        let via = r.top_via().unwrap();
        assert_eq!(via.transport, "UDP");
        assert_eq!(via.host, "192.0.2.1");
        assert_eq!(via.port, Some(5060));
        assert_eq!(via.branch.as_deref(), Some("z9hG4bK1"));
        assert_eq!(r.uri_user().as_deref(), Some("alice"));
        r.validate().unwrap();
    }

    #[test]
    fn method_is_case_sensitive() {
        assert_eq!(Method::parse("INVITE"), Method::Invite);
        assert_eq!(Method::parse("invite"), Method::Other("invite".into()));
        assert_eq!(Method::parse("FOO").as_str(), "FOO");
        for m in [
            "INVITE",
            "ACK",
            "BYE",
            "CANCEL",
            "OPTIONS",
            "REGISTER",
            "INFO",
            "UPDATE",
            "PRACK",
            "SUBSCRIBE",
            "NOTIFY",
            "REFER",
            "MESSAGE",
            "PUBLISH",
        ] {
            assert_eq!(Method::parse(m).as_str(), m);
            assert!(!matches!(Method::parse(m), Method::Other(_)));
        }
        // A non-token method is a 400.
        let bad = BASIC.replacen("INVITE sip", "INV<ITE sip", 1);
        let e = parse_err(bad.as_bytes());
        assert_eq!((e.cause, e.reply), ("bad_method", Some(400)));
    }

    #[test]
    fn compact_names_are_expanded() {
        let r = req(
            "OPTIONS sip:a@b SIP/2.0\r\nv: SIP/2.0/UDP h;branch=z9hG4bKx\r\n\
             i: cid\r\nf: <sip:x@y>;tag=1\r\nT: sip:a@b\r\nm: <sip:c@d>\r\n\
             c: text/plain\r\nk: timer\r\ns: hi\r\ne: gzip\r\no: dialog\r\n\
             r: <sip:r@x>\r\nb: <sip:b@x>\r\nu: talk\r\nx: 90\r\nl: 0\r\nCSeq: 1 OPTIONS\r\n\r\n",
        );
        let names: Vec<&str> = r.headers.iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                "Via",
                "Call-ID",
                "From",
                "To",
                "Contact",
                "Content-Type",
                "Supported",
                "Subject",
                "Content-Encoding",
                "Event",
                "Refer-To",
                "Referred-By",
                "Allow-Events",
                "Session-Expires",
                "Content-Length",
                "CSeq"
            ]
        );
        assert_eq!(r.headers.get("call-id"), Some("cid"));
        assert_eq!(r.headers.get("I"), Some("cid"));
        assert_eq!(r.headers.count("v"), 1);
        r.validate().unwrap();
    }

    #[test]
    fn other_names_kept_as_received_but_matched_case_insensitively() {
        let r = req("OPTIONS sip:a@b SIP/2.0\r\nX-CusTom : one\r\nx-custom: two\r\n\r\n");
        assert_eq!(r.headers.iter().next(), Some(("X-CusTom", "one")));
        assert_eq!(r.headers.count("X-CUSTOM"), 2);
        assert_eq!(r.headers.get_all("x-custom"), ["one", "two"]);
    }

    #[test]
    fn folding_joins_with_single_space() {
        let r = req(
            "OPTIONS sip:a@b SIP/2.0\r\nSubject: one\r\n  two\r\n\tthree\r\n\
             Via:\r\n SIP/2.0/UDP\r\n  h:5060 ;\r\n branch=\r\n z9hG4bKq\r\n\r\n",
        );
        assert_eq!(r.headers.get("Subject"), Some("one two three"));
        let via = r.top_via().unwrap();
        assert_eq!((via.host.as_str(), via.port), ("h", Some(5060)));
        assert_eq!(via.branch.as_deref(), Some("z9hG4bKq"));
        // A continuation line with nothing to continue is an error.
        let e = parse_err(b"OPTIONS sip:a@b SIP/2.0\r\n folded\r\nVia: SIP/2.0/UDP h\r\n\r\n");
        assert_eq!((e.cause, e.reply), ("bad_header", Some(400)));
    }

    #[test]
    fn malformed_header_lines() {
        for line in ["NoColon", "Bad Name: x", ": empty", "Bad\"Name: x"] {
            let msg = format!("OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h\r\n{line}\r\n\r\n");
            let e = parse_err(msg.as_bytes());
            assert_eq!((e.cause, e.reply), ("bad_header", Some(400)), "{line}");
            // The answerable parts survive.
            assert_eq!(e.request.unwrap().headers.count("Via"), 1);
        }
        let e = parse_err(b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h\r\nX: a\rb\r\n\r\n");
        assert_eq!(e.cause, "bad_header");
    }

    #[test]
    fn body_framing() {
        let base = "MESSAGE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h\r\n";
        // Extra bytes beyond Content-Length are ignored.
        let r = req(&format!("{base}Content-Length: 3\r\n\r\nabcdef"));
        assert_eq!(&r.body[..], b"abc");
        // No Content-Length: the rest of the datagram.
        let r = req(&format!("{base}\r\nabc\r\n"));
        assert_eq!(&r.body[..], b"abc\r\n");
        // No blank line at all: empty body.
        let r = req(base);
        assert!(r.body.is_empty());
        // Binary body with NUL, bare CR and LF.
        let mut raw = format!("{base}l: 5\r\n\r\n").into_bytes();
        raw.extend_from_slice(b"\0\r\n\r\x80");
        match parse(&raw, &LIMITS).unwrap() {
            SipMessage::Request(r) => assert_eq!(&r.body[..], b"\0\r\n\r\x80"),
            m => panic!("{m:?}"),
        }
        for (cl, why) in [
            ("7", "larger than body"),
            ("-1", "negative"),
            ("+3", "signed"),
            ("3x", "junk"),
            ("", "empty"),
            ("99999999999999999999999", "overflow"),
        ] {
            let e = parse_err(format!("{base}Content-Length: {cl}\r\n\r\nabc").as_bytes());
            assert_eq!(
                (e.cause, e.reply),
                ("bad_content_length", Some(400)),
                "{why}"
            );
        }
        let e = parse_err(
            format!("{base}Content-Length: 3\r\nContent-Length: 3\r\n\r\nabc").as_bytes(),
        );
        assert_eq!((e.cause, e.reply), ("bad_content_length", Some(400)));
    }

    #[test]
    fn leading_crlf_and_keepalives() {
        let r = req(&format!("\r\n\r\n{BASIC}"));
        assert_eq!(r.method, Method::Invite);
        let e = parse_err(b"\r\n\r\n");
        assert_eq!((e.cause, e.reply), ("empty", None));
        let e = parse_err(b"");
        assert_eq!(e.cause, "empty");
    }

    #[test]
    fn limits() {
        let small = Limits {
            max_message_bytes: 100,
            max_headers: 3,
        };
        let e = parse(BASIC.as_bytes(), &small).unwrap_err();
        assert_eq!((e.cause, e.reply), ("too_large", Some(400)));
        // What fitted in the first 100 bytes is there to answer with.
        let partial = e.request.unwrap();
        assert_eq!(partial.method, Method::Invite);
        assert_eq!(partial.headers.count("Via"), 1);

        let roomy = Limits {
            max_message_bytes: 10_000,
            max_headers: 3,
        };
        let e = parse(BASIC.as_bytes(), &roomy).unwrap_err();
        assert_eq!((e.cause, e.reply), ("too_many_headers", Some(400)));
        assert_eq!(e.request.unwrap().headers.len(), 3);

        let resp = "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
        let e = parse(resp.as_bytes(), &roomy).unwrap_err();
        assert_eq!((e.cause, e.reply), ("too_many_headers", None));
        let e = parse(resp.as_bytes(), &small.clone_with_bytes(20)).unwrap_err();
        assert_eq!(
            (e.cause, e.reply, e.request.is_none()),
            ("too_large", None, true)
        );
        // Exactly at the limits is fine.
        let exact = Limits {
            max_message_bytes: resp.len(),
            max_headers: 4,
        };
        assert!(parse(resp.as_bytes(), &exact).is_ok());
    }

    impl Limits {
        fn clone_with_bytes(self, max_message_bytes: usize) -> Limits {
            Limits {
                max_message_bytes,
                ..self
            }
        }
    }

    #[test]
    fn garbage_is_not_answered() {
        for g in [
            &b"hello"[..],
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
            b"\x16\x03\x01\x02\x00",
        ] {
            let e = parse_err(g);
            assert_eq!((e.cause, e.reply), ("bad_start_line", None));
        }
        // A request without Via cannot be answered.
        let e = parse_err(b"OPTIONS sip:a@b SIP/3.0\r\nTo: <sip:a@b>\r\n\r\n");
        assert_eq!((e.cause, e.reply), ("version_not_supported", None));
    }

    #[test]
    fn request_line_whitespace_and_version() {
        for (line, cause, status) in [
            ("OPTIONS  sip:a@b SIP/2.0", "bad_request_line", 400),
            ("OPTIONS sip:a@b SIP/2.0 ", "bad_request_line", 400),
            ("OPTIONS sip:a@b; lr SIP/2.0", "bad_request_line", 400),
            ("OPTIONS\tsip:a@b SIP/2.0", "bad_request_line", 400),
            ("OPTIONS sip:a@b SIP/2.1", "version_not_supported", 505),
        ] {
            let e = parse_err(format!("{line}\r\nVia: SIP/2.0/UDP h\r\n\r\n").as_bytes());
            assert_eq!((e.cause, e.reply), (cause, Some(status)), "{line}");
        }
        // Version compares case-insensitively (ABNF literals are).
        let r = req("OPTIONS sip:a@b sip/2.0\r\n\r\n");
        assert_eq!(r.method, Method::Options);
    }

    #[test]
    fn responses() {
        let text =
            "SIP/2.0 180 Ringing\r\nVia: SIP/2.0/TCP h:5070;branch=z9hG4bKa;received=192.0.2.9\r\n\
             CSeq: 7 INVITE\r\nContent-Length: 0\r\n\r\n";
        let SipMessage::Response(r) = parse(text.as_bytes(), &LIMITS).unwrap() else {
            panic!("not a response");
        };
        assert_eq!((r.status, r.reason.as_str()), (180, "Ringing"));
        assert_eq!(r.cseq().unwrap().seq, 7);
        assert_eq!(r.top_via().unwrap().received.as_deref(), Some("192.0.2.9"));
        for (line, ok) in [
            ("SIP/2.0 100 ", true),
            ("SIP/2.0 100", true),
            ("SIP/2.0 699 x", true),
            ("SIP/2.0 700 x", false),
            ("SIP/2.0 099 x", false),
            ("SIP/2.0 1000 x", false),
            ("SIP/2.0 20 x", false),
            ("SIP/2.0 abc x", false),
            ("SIP/3.0 200 OK", false),
        ] {
            let res = parse(format!("{line}\r\n\r\n").as_bytes(), &LIMITS);
            assert_eq!(res.is_ok(), ok, "{line}");
            if let Err(e) = res {
                assert_eq!(e.reply, None);
            }
        }
        let e = parse_err(b"SIP/2.0 200 OK\r\nCSeq: 99999999999 INVITE\r\n\r\n");
        assert_eq!((e.cause, e.reply), ("bad_cseq", None));
    }

    #[test]
    fn header_api() {
        let mut h = Headers::default();
        assert!(h.is_empty());
        h.push("v", "SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/UDP b");
        h.push("Via", "SIP/2.0/UDP c");
        h.push("Contact", "\"Doe, John\" <sip:j@x;p=1,2>, <sip:k@y>");
        h.push("Allow", "INVITE, ACK,,BYE");
        h.push("Authorization", "Digest a=\"b\", c=d");
        h.push("X-Thing", "1");
        assert_eq!(h.len(), 6);
        assert_eq!(h.get("Via"), Some("SIP/2.0/UDP a;branch=z9hG4bK1"));
        assert_eq!(
            h.get_all("VIA"),
            [
                "SIP/2.0/UDP a;branch=z9hG4bK1",
                "SIP/2.0/UDP b",
                "SIP/2.0/UDP c"
            ]
        );
        assert_eq!(h.count("Via"), 2);
        assert_eq!(
            h.get_all("m"),
            ["\"Doe, John\" <sip:j@x;p=1,2>", "<sip:k@y>"]
        );
        assert_eq!(h.get_all("Allow"), ["INVITE", "ACK", "BYE"]);
        assert_eq!(h.get_all("Authorization"), ["Digest a=\"b\", c=d"]);
        h.set("x-thing", "2");
        h.push("X-Thing", "3");
        h.set("X-THING", "4");
        assert_eq!(h.get_all("x-thing"), ["4"]);
        // set keeps the position of the first field.
        assert_eq!(h.iter().nth(5).map(|(_, v)| v), Some("4"));
        h.set("New", "n");
        assert_eq!(h.iter().last(), Some(("New", "n")));
        h.remove("v");
        assert_eq!(h.count("Via"), 0);
        assert_eq!(h.get("Via"), None);
        assert_eq!(h.get_all("Via"), Vec::<&str>::new());
    }

    #[test]
    fn crlf_injection_is_neutralised() {
        let mut r = req(BASIC);
        r.headers.push("Subject", "hi\r\nEvil: 1");
        r.headers.set("X-Other", "a\nb\rc");
        r.headers.push("Bad Name:\r\n", "v");
        r.uri = "sip:a@b SIP/2.0\r\nEvil: 2\r\n".into();
        let bytes = r.to_bytes();
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains("\r\nEvil"), "{text}");
        assert!(text.contains("Subject: hi  Evil: 1\r\n"));
        assert!(text.contains("X-Other: a b c\r\n"));
        assert!(text.contains("Bad-Name---: v\r\n"));
        assert!(text.starts_with("INVITE sip:a@b%20SIP/2.0%0D%0AEvil:%202%0D%0A SIP/2.0\r\n"));
        let mut resp = Response::for_request(&r, 200, "OK\r\nEvil: 3", Some("t\r\nEvil: 4"));
        resp.headers.push("X", "\r\n\r\n");
        let text = String::from_utf8_lossy(&resp.to_bytes()).into_owned();
        assert!(!text.contains("\r\nEvil"), "{text}");
        // Reparses as exactly the headers that were set.
        let SipMessage::Response(back) = parse(text.as_bytes(), &LIMITS).unwrap() else {
            panic!()
        };
        assert_eq!(back.headers.len(), resp.headers.len() + 1);
    }

    #[test]
    fn response_for_request() {
        let r = req("INVITE sip:a@b SIP/2.0\r\n\
             Via: SIP/2.0/UDP p1;branch=z9hG4bK1, SIP/2.0/UDP p2;branch=z9hG4bK2\r\n\
             v: SIP/2.0/TCP p3;branch=z9hG4bK3\r\n\
             Record-Route: <sip:p1;lr>\r\n\
             f: <sip:x@y>;tag=abc\r\nt: <sip:a@b>\r\ni: cid\r\nCSeq: 5 INVITE\r\n\
             Content-Length: 0\r\n\r\n");
        let resp = Response::for_request(&r, 486, reason_phrase(486), Some("tt"));
        let names: Vec<&str> = resp.headers.iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["Via", "Via", "From", "To", "Call-ID", "CSeq"]);
        assert_eq!(
            resp.headers.get_all("Via"),
            [
                "SIP/2.0/UDP p1;branch=z9hG4bK1",
                "SIP/2.0/UDP p2;branch=z9hG4bK2",
                "SIP/2.0/TCP p3;branch=z9hG4bK3"
            ]
        );
        assert_eq!(resp.headers.get("To"), Some("<sip:a@b>;tag=tt"));
        assert_eq!(resp.headers.get("From"), Some("<sip:x@y>;tag=abc"));
        assert_eq!(resp.cseq().unwrap().method, Method::Invite);
        assert_eq!(resp.top_via().unwrap().host, "p1");
        let text = String::from_utf8(resp.to_bytes().to_vec()).unwrap();
        assert!(text.starts_with("SIP/2.0 486 Busy Here\r\nVia: SIP/2.0/UDP p1;"));
        assert!(text.ends_with("CSeq: 5 INVITE\r\nContent-Length: 0\r\n\r\n"));
        // No tag on 100 Trying, and an existing tag is kept.
        let trying = Response::for_request(&r, 100, "Trying", Some("tt"));
        assert_eq!(trying.headers.get("To"), Some("<sip:a@b>"));
        let mut r2 = r.clone();
        r2.headers.set("To", "<sip:a@b>;tag=orig");
        let ok = Response::for_request(&r2, 200, "OK", Some("tt"));
        assert_eq!(ok.headers.get("To"), Some("<sip:a@b>;tag=orig"));
        let untagged = Response::for_request(&r, 200, "OK", None);
        assert_eq!(untagged.headers.get("To"), Some("<sip:a@b>"));
    }

    #[test]
    fn serialisation_recomputes_content_length() {
        let mut r = req(BASIC);
        r.body = Bytes::from_static(b"hello");
        let text = String::from_utf8(r.to_bytes().to_vec()).unwrap();
        assert_eq!(text.matches("Content-Length").count(), 1);
        assert!(text.ends_with("Content-Length: 5\r\n\r\nhello"));
        let mut resp = Response::for_request(&r, 200, "OK", None);
        resp.headers.push("l", "999");
        let text = String::from_utf8(resp.to_bytes().to_vec()).unwrap();
        assert!(text.ends_with("Content-Length: 0\r\n\r\n"), "{text}");
        assert!(!text.contains("999"));
    }

    /// Headers without Content-Length (moved to the end by serialisation).
    fn without_cl(h: &Headers) -> Vec<(String, String)> {
        h.iter()
            .filter(|(n, _)| !n.eq_ignore_ascii_case("Content-Length"))
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    fn assert_round_trip(msg: &SipMessage) {
        let bytes = match msg {
            SipMessage::Request(r) => r.to_bytes(),
            SipMessage::Response(r) => r.to_bytes(),
        };
        let back = parse(&bytes, &LIMITS).expect("reparse");
        match (msg, &back) {
            (SipMessage::Request(a), SipMessage::Request(b)) => {
                assert_eq!((&a.method, &a.uri, &a.body), (&b.method, &b.uri, &b.body));
                assert_eq!(without_cl(&a.headers), without_cl(&b.headers));
                assert_eq!(b.to_bytes(), bytes);
            }
            (SipMessage::Response(a), SipMessage::Response(b)) => {
                assert_eq!(
                    (a.status, &a.reason, &a.body),
                    (b.status, &b.reason, &b.body)
                );
                assert_eq!(without_cl(&a.headers), without_cl(&b.headers));
                assert_eq!(b.to_bytes(), bytes);
            }
            _ => panic!("kind changed"),
        }
    }

    #[test]
    fn round_trip() {
        assert_round_trip(&SipMessage::Request(req(BASIC)));
    }

    fn stamped(via: &str, source: &str) -> String {
        let mut r = req(&format!(
            "OPTIONS sip:a@b SIP/2.0\r\nVia: {via}\r\nVia: SIP/2.0/UDP other\r\n\r\n"
        ));
        r.stamp_received(source.parse().unwrap());
        assert_eq!(r.headers.get_all("Via").last(), Some(&"SIP/2.0/UDP other"));
        let top = r.headers.iter().next().unwrap().1.to_string();
        top
    }

    #[test]
    fn stamp_received_and_rport() {
        // Host name differs from the source: received added.
        assert_eq!(
            stamped(
                "SIP/2.0/UDP pc.example.com;branch=z9hG4bK1",
                "192.0.2.7:5060"
            ),
            "SIP/2.0/UDP pc.example.com;branch=z9hG4bK1;received=192.0.2.7"
        );
        // Same address, no rport: untouched (whitespace and all).
        assert_eq!(
            stamped(
                "SIP/2.0/UDP 192.0.2.7:5060 ; branch=z9hG4bK1",
                "192.0.2.7:5999"
            ),
            "SIP/2.0/UDP 192.0.2.7:5060 ; branch=z9hG4bK1"
        );
        // Bare rport: filled, and received added even for the same address (RFC 3581).
        assert_eq!(
            stamped(
                "SIP/2.0/UDP 192.0.2.7:5060;rport;branch=z9hG4bK1",
                "192.0.2.7:40000"
            ),
            "SIP/2.0/UDP 192.0.2.7:5060;rport=40000;branch=z9hG4bK1;received=192.0.2.7"
        );
        // Existing received replaced; IPv4-mapped source written as IPv4.
        assert_eq!(
            stamped(
                "SIP/2.0/UDP 10.0.0.1;received=10.9.9.9;branch=z9hG4bK1",
                "[::ffff:198.51.100.1]:5060"
            ),
            "SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1;received=198.51.100.1"
        );
        // IPv6 sent-by equal to the source.
        assert_eq!(
            stamped(
                "SIP/2.0/UDP [2001:db8::1]:5060;branch=z9hG4bK1",
                "[2001:db8::1]:5060"
            ),
            "SIP/2.0/UDP [2001:db8::1]:5060;branch=z9hG4bK1"
        );
        assert_eq!(
            stamped(
                "SIP/2.0/UDP [2001:db8::1];branch=z9hG4bK1",
                "[2001:db8::2]:5060"
            ),
            "SIP/2.0/UDP [2001:db8::1];branch=z9hG4bK1;received=2001:db8::2"
        );
        // Only the first element of a comma list is rewritten.
        assert_eq!(
            stamped("SIP/2.0/UDP a;rport, SIP/2.0/UDP b;rport", "192.0.2.1:1234"),
            "SIP/2.0/UDP a;rport=1234;received=192.0.2.1, SIP/2.0/UDP b;rport"
        );
        // Malformed top Via: left alone.
        assert_eq!(stamped("SIP/2.0/UDP", "192.0.2.1:1"), "SIP/2.0/UDP");
        let mut r = req("OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;rport\r\n\r\n");
        r.stamp_received("192.0.2.1:9".parse().unwrap());
        let via = r.top_via().unwrap();
        assert_eq!(via.rport, Some(Some(9)));
        assert_eq!(via.received.as_deref(), Some("192.0.2.1"));
    }

    #[test]
    fn via_parsing() {
        let v = Via::parse("SIP / 2.0 / tls  host.example.com : 5061 ; branch = z9hG4bKx ; rport")
            .unwrap();
        assert_eq!(v.transport, "TLS");
        assert_eq!((v.host.as_str(), v.port), ("host.example.com", Some(5061)));
        assert_eq!(v.branch.as_deref(), Some("z9hG4bKx"));
        assert_eq!(v.rport, Some(None));
        for bad in [
            "",
            "SIP/2.0/UDP",
            "SIP/2.0/UDPhost",
            "SIP/2.0 UDP host",
            "SIP/2.0/UDP host:70000",
            "SIP/2.0/UDP host:",
            "SIP/2.0/UDP ho st",
            "SIP/2.0/UDP 192.0.2.300",
            "SIP/2.0/UDP host;;",
            "SIP/2.0/UDP host;branch",
            "SIP/2.0/UDP host;rport=x",
            "SIP/2.0/UDP host;received=not-an-ip",
            "SIP/2.0/UDP [::1",
        ] {
            assert_eq!(Via::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn cseq_parsing() {
        assert_eq!(
            CSeq::parse("4294967295 BYE"),
            Some(CSeq {
                seq: u32::MAX,
                method: Method::Bye
            })
        );
        assert_eq!(CSeq::parse("0009   INVITE").map(|c| c.seq), Some(9));
        for bad in [
            "4294967296 BYE",
            "1",
            "BYE",
            "1BYE",
            "1 B YE",
            "-1 BYE",
            "1 BY<E",
        ] {
            assert_eq!(CSeq::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn name_addr_parsing() {
        let na = NameAddr::parse("\"A \\\"B\\\"\" <sip:a@b>;tag=1;x").unwrap();
        assert_eq!(na.display.as_deref(), Some("\"A \\\"B\\\"\""));
        assert_eq!(na.uri, "sip:a@b");
        assert_eq!((na.param("TAG"), na.param("x")), (Some("1"), Some("")));
        let na = NameAddr::parse("Alice Smith <tel:+1-555-0100>").unwrap();
        assert_eq!(na.display.as_deref(), Some("Alice Smith"));
        let na = NameAddr::parse("sip:a@b;tag=9").unwrap();
        assert_eq!((na.uri.as_str(), na.param("tag")), ("sip:a@b", Some("9")));
        assert!(NameAddr::parse("<urn:service:sos>").is_ok());
        for bad in [
            "",
            "\"open <sip:a@b>",
            "A, B <sip:a@b>",
            "< sip:a@b>",
            "<sip:a@b >",
            "<sip:a@b",
            "sip:a@b?x=y",
            "sip:a@b, sip:c@d",
            "<sip:a@b> junk",
            "<sip:a@b>;;",
            "<sip:a@b>;tag=",
            "<sip:a b@c>",
            "<nourl>",
            "<sip:a@b:port>",
        ] {
            assert!(NameAddr::parse(bad).is_err(), "{bad}");
        }
        // Errors in the URI name the part that is wrong.
        assert_eq!(
            NameAddr::parse("<sip:a@b:port>").unwrap_err().to_string(),
            "URI has a bad port 'port'"
        );
        assert_eq!(
            NameAddr::parse("sip:a@b;;tag=1").unwrap_err().to_string(),
            "malformed header parameter"
        );
    }

    #[test]
    fn uri_user_forms() {
        let mut r = req(BASIC);
        for (uri, user) in [
            ("sip:%61lice@example.com", Some("alice")),
            ("sips:bob:secret@example.com", Some("bob")),
            ("sip:example.com", None),
            ("sip:+14155550100@trunk;user=phone", Some("+14155550100")),
            ("tel:+14155550100", Some("+14155550100")),
            (
                "tel:+1-415-555-0100;phone-context=example.com",
                Some("+14155550100"),
            ),
            (
                "sip:user;par=u%40example.net@example.com",
                Some("user;par=u@example.net"),
            ),
            ("sip:null-%00-null@example.com", Some("null-\0-null")),
            ("mailto:a@b", None),
            ("tel:", None),
        ] {
            r.uri = uri.into();
            assert_eq!(r.uri_user().as_deref(), user, "{uri}");
        }
    }

    #[test]
    fn validate_rules() {
        let check = |from: &str, to: &str| -> Option<u16> {
            let text = BASIC.replace(from, to);
            match parse(text.as_bytes(), &LIMITS) {
                Ok(SipMessage::Request(r)) => r.validate().err().map(|e| {
                    assert!(e.request.is_some());
                    e.reply.unwrap()
                }),
                Err(e) => e.reply,
                Ok(m) => panic!("{m:?}"),
            }
        };
        assert_eq!(check("Max-Forwards: 70", "Max-Forwards: 255"), None);
        assert_eq!(check("Max-Forwards: 70", "Max-Forwards: 256"), Some(400));
        assert_eq!(check("Max-Forwards: 70", "Max-Forwards: x"), Some(400));
        assert_eq!(check("Max-Forwards: 70\r\n", ""), None);
        assert_eq!(check("CSeq: 1 INVITE", "CSeq: 1 BYE"), Some(400));
        assert_eq!(
            check("CSeq: 1 INVITE", "CSeq: 4294967296 INVITE"),
            Some(400)
        );
        assert_eq!(check("Call-ID: abc@192.0.2.1\r\n", ""), Some(400));
        assert_eq!(check("Call-ID: abc@192.0.2.1", "Call-ID: a b"), Some(400));
        assert_eq!(
            check(
                "To: <sip:alice@example.com>",
                "To: <sip:a@b>\r\nTo: <sip:c@d>"
            ),
            Some(400)
        );
        assert_eq!(
            check("sip:alice@example.com SIP", "sips:alice@example.com SIP"),
            None
        );
        assert_eq!(
            check("sip:alice@example.com SIP", "tel:+15550100 SIP"),
            None
        );
        assert_eq!(
            check("sip:alice@example.com SIP", "http://x SIP"),
            Some(416)
        );
        assert_eq!(check("sip:alice@example.com SIP", "urn:x:y SIP"), Some(416));
        assert_eq!(
            check("sip:alice@example.com SIP", "sip:a@b?x=y SIP"),
            Some(400)
        );
        assert_eq!(
            check("sip:alice@example.com SIP", "<sip:a@b> SIP"),
            Some(400)
        );
        assert_eq!(
            check("sip:alice@example.com SIP", "sip:a@b:99999 SIP"),
            Some(400)
        );
        assert_eq!(check("sip:alice@example.com SIP", "nocolon SIP"), Some(400));
        assert_eq!(
            check(
                "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1",
                "Via: junk"
            ),
            Some(400)
        );
        assert_eq!(
            check(
                "Max-Forwards",
                "Contact: <sip:a@b>;expires=60, sip:c@d\r\nMax-Forwards"
            ),
            None
        );
        assert_eq!(check("Max-Forwards", "Contact: *\r\nMax-Forwards"), None);
        assert_eq!(
            check("Max-Forwards", "Contact: <sip:a@b>,,\r\nMax-Forwards"),
            Some(400)
        );
        // Without any Via there is nobody to answer.
        let text = BASIC.replace("Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1\r\n", "");
        let e = req(&text).validate().unwrap_err();
        assert_eq!((e.cause, e.reply), ("missing_header", None));
    }

    #[test]
    fn reason_phrases() {
        assert_eq!(reason_phrase(200), "OK");
        assert_eq!(reason_phrase(416), "Unsupported URI Scheme");
        assert_eq!(reason_phrase(505), "Version Not Supported");
        assert_eq!(reason_phrase(499), "Client Error");
        assert_eq!(reason_phrase(42), "Unknown");
    }

    // ---- RFC 4475 -------------------------------------------------------------------

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Expect {
        /// parse (and validate, for requests) succeed.
        Accept,
        /// parse or validate fails with this reply and cause.
        Reject(u16, &'static str),
        /// An invalid response: error with this cause, never answered.
        Drop(&'static str),
    }
    use Expect::*;

    /// The outcome chosen for each torture message, assuming UDP datagrams (so clerr and
    /// ncl are 400s, and dblreq's trailing octets are ignored).
    const RFC4475: &[(&str, Expect)] = &[
        // 3.1.1: valid messages, all accepted.
        ("wsinv.dat", Accept),
        ("intmeth.dat", Accept),
        ("esc01.dat", Accept),
        ("escnull.dat", Accept),
        ("esc02.dat", Accept),
        ("lwsdisp.dat", Accept),
        ("longreq.dat", Accept),
        ("dblreq.dat", Accept),
        ("semiuri.dat", Accept),
        ("transports.dat", Accept),
        ("mpart01.dat", Accept),
        ("unreason.dat", Accept),
        ("noreason.dat", Accept),
        // 3.1.2: invalid messages.
        ("badinv01.dat", Reject(400, "bad_via")), // empty Via/Contact params
        ("clerr.dat", Reject(400, "bad_content_length")), // Content-Length beyond the datagram
        ("ncl.dat", Reject(400, "bad_content_length")), // negative Content-Length
        ("scalar02.dat", Reject(400, "bad_cseq")), // CSeq > 2^32-1 (and Max-Forwards 300)
        ("scalarlg.dat", Drop("bad_cseq")),       // response with CSeq > 2^32-1
        ("quotbal.dat", Reject(400, "bad_to")),   // strict: no guessing of the closing quote
        ("ltgtruri.dat", Reject(400, "bad_request_uri")), // strict: <> around the Request-URI
        ("lwsruri.dat", Reject(400, "bad_request_line")), // strict: LWS inside the Request-URI
        ("lwsstart.dat", Reject(400, "bad_request_line")), // strict: extra SP in the Request-Line
        ("trws.dat", Reject(400, "bad_request_line")), // strict: trailing SP in the Request-Line
        ("escruri.dat", Reject(400, "bad_request_uri")), // strict: ?headers not allowed in a Request-URI
        // Liberal: the Date header plays no part in what we do, so it is ignored.
        ("baddate.dat", Accept),
        ("regbadct.dat", Reject(400, "bad_contact")), // strict: '?' in a Contact URI outside <>
        ("badaspec.dat", Reject(400, "bad_to")),      // strict: spaces inside <>
        ("baddn.dat", Reject(400, "bad_from")),       // strict: ',' in an unquoted display name
        ("badvers.dat", Reject(505, "version_not_supported")),
        ("mismatch01.dat", Reject(400, "cseq_mismatch")),
        ("mismatch02.dat", Reject(400, "cseq_mismatch")), // 400 rather than 501: the CSeq check comes first
        ("bigcode.dat", Drop("bad_status")),
        // 3.2
        // Liberal: a branch of just the magic cookie parses; the transaction layer decides
        // (RFC 2543-style matching). The MANIFEST allows either.
        ("badbranch.dat", Accept),
        // 3.3: valid syntax; the semantic answers (420, 415, 406, 483, ...) belong to the
        // layers above, except these:
        ("insuf.dat", Reject(400, "missing_header")),
        ("unkscm.dat", Reject(416, "unsupported_uri_scheme")),
        ("novelsc.dat", Reject(416, "unsupported_uri_scheme")),
        ("unksm2.dat", Accept),
        ("bext01.dat", Accept),
        ("invut.dat", Accept),
        ("regaut01.dat", Accept),
        ("multi01.dat", Reject(400, "duplicate_header")),
        ("mcl01.dat", Reject(400, "bad_content_length")),
        ("bcast.dat", Accept),
        ("zeromf.dat", Accept),
        ("cparam01.dat", Accept),
        ("cparam02.dat", Accept),
        ("regescrt.dat", Accept),
        ("sdp01.dat", Accept),
        // 3.4
        ("inv2543.dat", Accept),
    ];

    fn manifest() -> Vec<(String, String)> {
        let text = std::fs::read_to_string(format!("{DIR}/MANIFEST.tsv")).unwrap();
        text.lines()
            .skip(1)
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let cols: Vec<&str> = l.split('\t').collect();
                (cols[0].to_string(), cols[3].to_string())
            })
            .collect()
    }

    fn read(file: &str) -> Vec<u8> {
        std::fs::read(format!("{DIR}/{file}")).unwrap()
    }

    /// parse, then validate requests: the outcome class and, when rejected, the error.
    fn outcome(data: &[u8]) -> (Expect, Option<ParseError>, Option<SipMessage>) {
        let class = |e: &ParseError| match e.reply {
            Some(code) => Reject(code, e.cause),
            None => Drop(e.cause),
        };
        match parse(data, &LIMITS) {
            Err(e) => (class(&e), Some(e), None),
            Ok(SipMessage::Request(r)) => match r.validate() {
                Ok(()) => (Accept, None, Some(SipMessage::Request(r))),
                Err(e) => (class(&e), Some(e), None),
            },
            Ok(m) => (Accept, None, Some(m)),
        }
    }

    #[test]
    fn rfc4475_torture_messages() {
        let manifest = manifest();
        assert_eq!(manifest.len(), 49);
        assert_eq!(RFC4475.len(), 49);
        for (file, expected_text) in &manifest {
            let want = RFC4475
                .iter()
                .find(|(f, _)| f == file)
                .map(|(_, e)| *e)
                .unwrap_or_else(|| panic!("{file} missing from the table"));
            // The choice must be one the MANIFEST allows.
            match want {
                Accept if expected_text.starts_with("valid:") => {}
                Accept => assert!(
                    expected_text.starts_with("valid")
                        || expected_text.contains("liberal")
                        || expected_text.contains("fall back")
                        || expected_text.contains("may reject only"),
                    "{file}: {expected_text}"
                ),
                Reject(code, _) => assert!(
                    expected_text.contains(&code.to_string())
                        || expected_text.contains("may reject"),
                    "{file}: {expected_text}"
                ),
                Drop(_) => assert!(
                    expected_text.contains("response"),
                    "{file}: {expected_text}"
                ),
            }
            let (got, err, msg) = outcome(&read(file));
            assert_eq!(got, want, "{file}: {err:?}");
            if let Some(e) = err {
                assert!(!e.reason.is_empty());
                assert!(e.cause.bytes().all(|c| c.is_ascii_lowercase() || c == b'_'));
                if let Some(code) = e.reply {
                    // Enough to build the stateless answer.
                    let r = e.request.as_deref().expect("request for a reply");
                    let resp = Response::for_request(r, code, "x", Some("t"));
                    assert!(resp.headers.count("Via") > 0, "{file}");
                    // (Not necessarily reparseable: scalar02's bad CSeq is echoed.)
                    let start = format!("SIP/2.0 {code} x\r\n");
                    assert!(resp.to_bytes().starts_with(start.as_bytes()), "{file}");
                }
            }
            if let Some(m) = msg {
                assert_round_trip(&m);
            }
        }
    }

    #[test]
    fn rfc4475_details() {
        let get = |f: &str| match parse(&read(f), &LIMITS).unwrap() {
            SipMessage::Request(r) => r,
            m => panic!("{m:?}"),
        };
        let r = get("wsinv.dat");
        assert_eq!(r.to_tag().as_deref(), Some("1918181833n"));
        assert_eq!(r.from_tag().as_deref(), Some("98asjd8"));
        assert_eq!(r.cseq().unwrap().seq, 9);
        assert_eq!(r.headers.get("Max-Forwards"), Some("0068"));
        assert_eq!(r.headers.get("Subject"), Some(""));
        assert_eq!(
            r.headers.get("NewFangledHeader"),
            Some("newfangled value continued newfangled value")
        );
        let vias: Vec<Via> = r
            .headers
            .get_all("Via")
            .into_iter()
            .filter_map(Via::parse)
            .collect();
        assert_eq!(vias.len(), 3);
        assert_eq!(vias[2].host, "192.168.255.111");
        assert_eq!(vias[2].branch.as_deref(), Some("z9hG4bK30239"));
        assert_eq!(r.body.len(), 150);

        let r = get("intmeth.dat");
        assert_eq!(
            r.method,
            Method::Other("!interesting-Method0123456789_*+`.%indeed'~".into())
        );
        assert_eq!(
            r.uri_user().as_deref(),
            Some("1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*")
        );

        let r = get("esc01.dat");
        assert_eq!(r.uri_user().as_deref(), Some("sips:user@example.com"));
        assert_eq!(r.uri, "sip:sips%3Auser%40example.com@example.net");

        let r = get("escnull.dat");
        let contacts = r.headers.get_all("Contact");
        assert_eq!(contacts.len(), 2);
        assert_ne!(contacts[0], contacts[1]);

        let r = get("esc02.dat");
        assert_eq!(r.method, Method::Other("RE%47IST%45R".into()));
        assert_eq!(r.headers.count("Contact"), 2);
        assert_eq!(r.headers.count("C%6Fntact"), 1);

        let r = get("semiuri.dat");
        assert_eq!(r.uri_user().as_deref(), Some("user;par=u@example.net"));

        let r = get("dblreq.dat");
        assert_eq!(r.method, Method::Register);
        assert!(r.body.is_empty());

        let r = get("mpart01.dat");
        assert_eq!(r.body.len(), 553);
        assert!(r.body.contains(&0));
        assert_eq!(r.top_via().unwrap().rport, Some(None));

        let r = get("longreq.dat");
        assert_eq!(r.headers.count("Via"), 34);
        assert_eq!(r.top_via().unwrap().host, "sip33.example.com");

        let r = get("inv2543.dat");
        assert_eq!(r.top_via().unwrap().branch, None);
        assert!(r.body.ends_with(b"RTP/AVP 0\r\n"));

        let r = get("transports.dat");
        let t: Vec<String> = r
            .headers
            .get_all("Via")
            .into_iter()
            .map(|v| Via::parse(v).unwrap().transport)
            .collect();
        assert_eq!(t, ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]);

        let SipMessage::Response(r) = parse(&read("noreason.dat"), &LIMITS).unwrap() else {
            panic!()
        };
        assert_eq!((r.status, r.reason.as_str()), (100, ""));
        let SipMessage::Response(r) = parse(&read("unreason.dat"), &LIMITS).unwrap() else {
            panic!()
        };
        assert!(r.reason.starts_with("= 2**3 * 5**2 "));
        assert!(!r.reason.is_ascii());

        let e = parse(&read("badvers.dat"), &LIMITS).unwrap_err();
        assert_eq!((e.cause, e.reply), ("version_not_supported", Some(505)));
        let e = get("unkscm.dat").validate().unwrap_err();
        assert_eq!(e.cause, "unsupported_uri_scheme");
        let e = get("scalar02.dat").validate().unwrap_err();
        assert!(e.reason.contains("CSeq"), "{}", e.reason);
        let e = get("quotbal.dat").validate().unwrap_err();
        assert!(e.reason.starts_with("To header"), "{}", e.reason);
        let e = get("baddn.dat").validate().unwrap_err();
        assert_eq!(e.cause, "bad_from");
    }

    /// Calls everything that can be called on whatever parse returned.
    fn exercise(data: &[u8]) {
        match parse(data, &LIMITS) {
            Ok(SipMessage::Request(mut r)) => {
                let _ = r.validate();
                let _ = (
                    r.top_via(),
                    r.cseq(),
                    r.to_tag(),
                    r.from_tag(),
                    r.uri_user(),
                );
                let _ = r
                    .headers
                    .get_all("Contact")
                    .into_iter()
                    .map(NameAddr::parse)
                    .count();
                r.stamp_received("192.0.2.1:5060".parse().unwrap());
                let _ = r.top_via();
                let resp = Response::for_request(&r, 400, "Bad Request", Some("x"));
                let _ = parse(&resp.to_bytes(), &LIMITS);
                let _ = parse(&r.to_bytes(), &LIMITS);
            }
            Ok(SipMessage::Response(r)) => {
                let _ = (r.top_via(), r.cseq());
                let _ = parse(&r.to_bytes(), &LIMITS);
            }
            Err(e) => {
                if let Some(r) = e.request {
                    let _ = r.validate();
                    let _ = Response::for_request(&r, e.reply.unwrap_or(400), "x", None).to_bytes();
                }
            }
        }
    }

    #[test]
    fn truncations_and_mutations_never_panic() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(4475);
        const SPICY: &[u8] = b":;,\"<>\\%@ \t\r\n=?[]0/\x00\xff\xc3";
        for (file, _) in RFC4475 {
            let data = read(file);
            for end in 0..=data.len() {
                exercise(&data[..end]);
                exercise(&data[end..]);
            }
            for _ in 0..300 {
                let mut m = data.clone();
                for _ in 0..rng.random_range(1..5) {
                    if m.is_empty() {
                        break;
                    }
                    let at = rng.random_range(0..m.len());
                    match rng.random_range(0..4) {
                        0 => m[at] ^= 1 << rng.random_range(0..8),
                        1 => m[at] = SPICY[rng.random_range(0..SPICY.len())],
                        2 => {
                            m.remove(at);
                        }
                        _ => m.insert(at, SPICY[rng.random_range(0..SPICY.len())]),
                    }
                }
                exercise(&m);
            }
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5150);
        for i in 0..5000 {
            let len = rng.random_range(0..400);
            let buf: Vec<u8> = if i % 2 == 0 {
                (0..len).map(|_| rng.random()).collect()
            } else {
                // Mostly SIP-ish characters, so the parser gets further in.
                const ALPHABET: &[u8] =
                    b"SIP/2.0 INVITE sip:a@b;tag=\"x\"<>,\r\n\r\nVia: CSeq: 1 l: 3 \t%";
                let mut b: Vec<u8> = b"INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h\r\n".to_vec();
                b.extend((0..len).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())]));
                b
            };
            exercise(&buf);
        }
    }
}
