//! SIP messages: parsing, validation and serialisation.
//!
//! The project's own thin layer. Lexing (start line, header lines with folding, compact
//! names, body framed by Content-Length) is done here; rsip parses the URIs and typed header
//! values. Everything else in the crate sees only these types, so rsip can be swapped out.

use bytes::Bytes;

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
    pub fn parse(token: &str) -> Method {
        todo!("H1: map token (case-sensitive per RFC 3261) to Method")
    }
    pub fn as_str(&self) -> &str {
        todo!("H1")
    }
}

/// Header fields in wire order. Names are stored in canonical long form
/// (compact forms such as `v`, `i`, `l` are expanded on parse), lookups are case-insensitive.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    entries: Vec<(String, String)>,
}

impl Headers {
    /// First value of `name` (case-insensitive; compact names accepted).
    pub fn get(&self, name: &str) -> Option<&str> {
        todo!("H1")
    }
    /// Every value of `name`, in order, with comma-separated lists split where the header's
    /// grammar allows it (Via, Route, Record-Route, Contact, Allow, Supported, Require, ...).
    pub fn get_all(&self, name: &str) -> Vec<&str> {
        todo!("H1")
    }
    /// Number of header lines named `name` (lists not split).
    pub fn count(&self, name: &str) -> usize {
        todo!("H1")
    }
    pub fn push(&mut self, name: &str, value: impl Into<String>) {
        todo!("H1")
    }
    /// Replaces every `name` field with a single one (appended when absent).
    pub fn set(&mut self, name: &str, value: impl Into<String>) {
        todo!("H1")
    }
    pub fn remove(&mut self, name: &str) {
        todo!("H1")
    }
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(n, v)| (n.as_str(), v.as_str()))
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

/// The top Via, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Via {
    /// `UDP`, `TCP`, `TLS`, ... upper-cased.
    pub transport: String,
    pub host: String,
    pub port: Option<u16>,
    pub branch: Option<String>,
    /// `Some(None)` for a bare `;rport`, `Some(Some(p))` when filled in.
    pub rport: Option<Option<u16>>,
    pub received: Option<String>,
}

/// `CSeq`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CSeq {
    pub seq: u32,
    pub method: Method,
}

/// Parses one complete message (a UDP datagram or one stream frame).
///
/// For UDP, bytes beyond Content-Length are ignored (RFC 3261 §18.3); a Content-Length
/// larger than the datagram is an error (400). Without Content-Length over UDP, the body
/// is the rest of the datagram.
pub fn parse(buf: &[u8], limits: &Limits) -> Result<SipMessage, ParseError> {
    todo!("H1")
}

impl Request {
    /// Checks what RFC 3261 §8.2 and §16.3 require of a request before a UAS acts on it:
    /// exactly one Call-ID, From, To, CSeq, Max-Forwards where single; at least one Via;
    /// a CSeq whose method matches the request line; a parseable Request-URI (416 for
    /// schemes other than sip/sips/tel); SIP/2.0 (505). The error carries the status.
    pub fn validate(&self) -> Result<(), ParseError> {
        todo!("H1")
    }
    pub fn top_via(&self) -> Option<Via> {
        todo!("H1")
    }
    pub fn cseq(&self) -> Option<CSeq> {
        todo!("H1")
    }
    pub fn call_id(&self) -> Option<&str> {
        self.headers.get("Call-ID")
    }
    /// The `tag` parameter of the To header, if any.
    pub fn to_tag(&self) -> Option<String> {
        todo!("H1")
    }
    pub fn from_tag(&self) -> Option<String> {
        todo!("H1")
    }
    /// User part of the Request-URI (`sip:user@host`), unescaped; `None` for tel: or no user.
    pub fn uri_user(&self) -> Option<String> {
        todo!("H1")
    }
    /// Records where the request came from in the top Via: `received` when the sent-by host
    /// differs from `source`'s address, and `rport` filled in when the client asked (RFC 3581).
    pub fn stamp_received(&mut self, source: std::net::SocketAddr) {
        todo!("H1")
    }
    pub fn to_bytes(&self) -> Bytes {
        todo!("H1: request line, headers, Content-Length recomputed from body, CRLF, body")
    }
}

impl Response {
    /// A response to `req` per RFC 3261 §8.2.6: Via(s), From, To, Call-ID and CSeq copied;
    /// a To tag added (`to_tag`) when the request had none and `status > 100`.
    pub fn for_request(req: &Request, status: u16, reason: &str, to_tag: Option<&str>) -> Response {
        todo!("H1")
    }
    pub fn cseq(&self) -> Option<CSeq> {
        todo!("H1")
    }
    pub fn top_via(&self) -> Option<Via> {
        todo!("H1")
    }
    pub fn to_bytes(&self) -> Bytes {
        todo!("H1: status line, headers, Content-Length recomputed from body, CRLF, body")
    }
}

/// The default reason phrase for a status code.
pub fn reason_phrase(status: u16) -> &'static str {
    todo!("H1")
}
