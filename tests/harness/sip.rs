//! Raw SIP for hand-made messages: a request builder, a lenient parser for what comes back,
//! SDP bodies, and blocking UDP and TCP clients. Everything is written by hand on purpose:
//! the tests must be able to send what no SIP stack would, and must not share the parser
//! they are testing.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use super::unique;

/// Transport as written in Via.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    pub fn via(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
        }
    }
}

/// A fresh RFC 3261 branch (magic cookie included).
pub fn branch() -> String {
    unique("z9hG4bK-t")
}

// ---------------------------------------------------------------------------------------
// Messages received
// ---------------------------------------------------------------------------------------

/// A SIP message as received (request or response), lightly parsed: enough for
/// assertions. Header names are stored in their long, lower-case form.
#[derive(Debug, Clone)]
pub struct SipMsg {
    pub first_line: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// The whole message as received (invalid UTF-8 replaced).
    pub raw: String,
}

/// Long form of a compact header name (RFC 3261 §7.3.3 and extensions), lower case.
pub fn long_header_name(name: &str) -> String {
    let name = name.trim().to_ascii_lowercase();
    let long = match name.as_str() {
        "v" => "via",
        "i" => "call-id",
        "f" => "from",
        "t" => "to",
        "m" => "contact",
        "l" => "content-length",
        "c" => "content-type",
        "k" => "supported",
        "s" => "subject",
        "e" => "content-encoding",
        "o" => "event",
        "r" => "refer-to",
        "b" => "referred-by",
        "u" => "allow-events",
        "x" => "session-expires",
        _ => return name,
    };
    long.to_string()
}

impl SipMsg {
    /// Parses a whole message (head ended by an empty line); `None` if it is not one.
    pub fn parse(bytes: &[u8]) -> Option<SipMsg> {
        let end = find(bytes, b"\r\n\r\n")?;
        let head = String::from_utf8_lossy(&bytes[..end]);
        let mut lines = head.split("\r\n");
        let first_line = lines.next()?.trim().to_string();
        let mut headers: Vec<(String, String)> = Vec::new();
        for line in lines {
            if line.starts_with([' ', '\t']) {
                if let Some(last) = headers.last_mut() {
                    last.1.push(' ');
                    last.1.push_str(line.trim());
                }
                continue;
            }
            let (n, v) = line.split_once(':')?;
            headers.push((long_header_name(n), v.trim().to_string()));
        }
        Some(SipMsg {
            first_line,
            headers,
            body: String::from_utf8_lossy(&bytes[end + 4..]).into_owned(),
            raw: String::from_utf8_lossy(bytes).into_owned(),
        })
    }

    /// Parses a whole message that must be a response; `None` for anything else.
    pub fn parse_response(bytes: &[u8]) -> Option<SipMsg> {
        SipMsg::parse(bytes).filter(|m| m.status().is_some())
    }

    /// The status code of a response.
    pub fn status(&self) -> Option<u16> {
        self.first_line
            .strip_prefix("SIP/2.0 ")?
            .split(' ')
            .next()?
            .parse()
            .ok()
    }

    /// The status code of a response, 0 for a request (so it never equals a code).
    pub fn code(&self) -> u16 {
        self.status().unwrap_or(0)
    }

    /// The reason phrase of a response.
    pub fn reason(&self) -> &str {
        self.first_line.splitn(3, ' ').nth(2).unwrap_or("")
    }

    /// The method of a request.
    pub fn method(&self) -> Option<&str> {
        if self.first_line.starts_with("SIP/") {
            None
        } else {
            self.first_line.split_whitespace().next()
        }
    }

    /// First value of header `name` (long or compact form, any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = long_header_name(name);
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of header `name`, comma-separated lists split.
    pub fn header_values(&self, name: &str) -> Vec<String> {
        let name = long_header_name(name);
        self.headers
            .iter()
            .filter(|(n, _)| *n == name)
            .flat_map(|(_, v)| v.split(',').map(|p| p.trim().to_string()))
            .filter(|p| !p.is_empty())
            .collect()
    }

    /// The tag parameter of To, if any.
    pub fn to_tag(&self) -> Option<&str> {
        param(self.header("to")?, "tag")
    }

    /// The number in CSeq.
    pub fn cseq_number(&self) -> Option<u32> {
        self.header("cseq")?.split_whitespace().next()?.parse().ok()
    }

    /// The method named in CSeq.
    pub fn cseq_method(&self) -> Option<&str> {
        self.header("cseq")?.split_whitespace().nth(1)
    }

    /// The URI inside the Contact header.
    pub fn contact_uri(&self) -> Option<String> {
        let c = self.header("contact")?;
        match (c.find('<'), c.find('>')) {
            (Some(a), Some(b)) if b > a => Some(c[a + 1..b].to_string()),
            _ => Some(c.split(';').next()?.trim().to_string()),
        }
    }

    /// The remote RTP address from the SDP body.
    pub fn sdp_media_addr(&self) -> Option<SocketAddr> {
        sdp_media_addr(&self.body)
    }

    pub fn text(&self) -> &str {
        &self.raw
    }
}

/// A `;name=value` parameter of a header value (after the `>` of a name-addr, if any).
pub fn param<'a>(value: &'a str, name: &str) -> Option<&'a str> {
    let params = match value.rfind('>') {
        Some(i) => &value[i + 1..],
        None => value,
    };
    params
        .split(';')
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
}

/// Position of `needle` in `haystack`.
pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// If `buf` starts with one whole SIP message (framed by Content-Length, 0 when absent),
/// its length.
pub fn complete_message_len(buf: &[u8]) -> Option<usize> {
    let end = find(buf, b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..end]);
    let mut cl = 0usize;
    for line in head.split("\r\n").skip(1) {
        if let Some((n, v)) = line.split_once(':') {
            if long_header_name(n) == "content-length" {
                cl = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let total = end + 4 + cl;
    (buf.len() >= total).then_some(total)
}

// ---------------------------------------------------------------------------------------
// SDP
// ---------------------------------------------------------------------------------------

/// An SDP body with one audio stream at `ip:port` listing `pts` in that order (PCMU 0,
/// PCMA 8, G.722 9 and telephone-event 101 get their rtpmap), 20 ms packets and the
/// `direction` attribute (`sendrecv`, `sendonly`, ...). `version` is the o= version, which
/// must grow with each new offer in a dialog.
pub fn sdp(ip: IpAddr, port: u16, version: u32, pts: &[u8], direction: &str) -> String {
    let list: Vec<String> = pts.iter().map(u8::to_string).collect();
    let mut s = format!(
        "v=0\r\no=test 1 {version} IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP {}\r\n",
        list.join(" ")
    );
    for pt in pts {
        s.push_str(match pt {
            0 => "a=rtpmap:0 PCMU/8000\r\n",
            8 => "a=rtpmap:8 PCMA/8000\r\n",
            9 => "a=rtpmap:9 G722/8000\r\n",
            101 => "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\n",
            _ => "",
        });
    }
    s.push_str(&format!("a=ptime:20\r\na={direction}\r\n"));
    s
}

/// The address of the first audio stream of an SDP body (`c=` and `m=audio`).
pub fn sdp_media_addr(sdp: &str) -> Option<SocketAddr> {
    let mut ip = None;
    let mut port = None;
    for line in sdp.lines() {
        let line = line.trim();
        if let Some(c) = line.strip_prefix("c=IN IP4 ") {
            ip.get_or_insert(c.split('/').next()?.trim().to_string());
        }
        if let Some(m) = line.strip_prefix("m=audio ") {
            port = m.split_whitespace().next()?.parse::<u16>().ok();
        }
    }
    format!("{}:{}", ip?, port?).parse().ok()
}

/// The payload types of the first `m=audio` line, in order.
pub fn sdp_audio_payload_types(sdp: &str) -> Vec<u8> {
    sdp.lines()
        .find_map(|l| l.trim().strip_prefix("m=audio "))
        .map(|m| {
            m.split_whitespace()
                .skip(2)
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// Requests sent
// ---------------------------------------------------------------------------------------

/// A request built by the tests. `to_bytes` renders it with a correct Content-Length.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub uri: String,
    pub transport: Transport,
    /// The address placed in Via and Contact (where responses should go).
    pub local: SocketAddr,
    pub branch: String,
    pub call_id: String,
    pub from_tag: String,
    /// The To header's value, without the tag (or with it, for a request in a dialog).
    pub to: String,
    pub to_tag: Option<String>,
    pub cseq: u32,
    /// The CSeq method when it differs from the request's (an ACK for an INVITE's 2xx
    /// shares the INVITE's number, but not its method: leave `None`).
    pub cseq_method: Option<String>,
    pub extra: Vec<(String, String)>,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

impl Request {
    /// `method` to `sip:{user}@127.0.0.1`, a new transaction outside any dialog.
    pub fn new(method: &str, user: &str, transport: Transport, local: SocketAddr) -> Request {
        Request {
            method: method.to_string(),
            uri: format!("sip:{user}@127.0.0.1"),
            transport,
            local,
            branch: branch(),
            call_id: unique("cid-"),
            from_tag: unique("ft"),
            to: format!("<sip:{user}@127.0.0.1>"),
            to_tag: None,
            cseq: 1,
            cseq_method: None,
            extra: Vec::new(),
            content_type: None,
            body: Vec::new(),
        }
    }

    pub fn options(transport: Transport, local: SocketAddr) -> Request {
        Request::new("OPTIONS", "probe", transport, local).header("Accept", "application/sdp")
    }

    /// An INVITE to `user` offering PCMU (and telephone-event) at a nominal media port.
    pub fn invite(user: &str, transport: Transport, local: SocketAddr) -> Request {
        Request::new("INVITE", user, transport, local).with_sdp(&sdp(
            local.ip(),
            40000,
            1,
            &[0, 101],
            "sendrecv",
        ))
    }

    /// This request carrying `sdp` as its body.
    pub fn with_sdp(mut self, sdp: &str) -> Request {
        self.content_type = Some("application/sdp".into());
        self.body = sdp.as_bytes().to_vec();
        self
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Request {
        self.extra.push((name.into(), value.into()));
        self
    }

    /// The ACK for a non-2xx final response to this INVITE (RFC 3261 §17.1.1.3): same
    /// branch, Call-ID, From, Request-URI and CSeq number; To as in the response.
    pub fn ack_for(&self, response: &SipMsg) -> Request {
        let mut ack = self.same_transaction("ACK");
        ack.to_tag = response.to_tag().map(str::to_string);
        ack
    }

    /// The CANCEL of this (pending) request (RFC 3261 §9.1): same branch, Call-ID, From,
    /// To, Request-URI and CSeq number.
    pub fn cancel(&self) -> Request {
        self.same_transaction("CANCEL")
    }

    fn same_transaction(&self, method: &str) -> Request {
        let mut r = self.clone();
        r.method = method.into();
        r.cseq_method = None;
        r.extra.clear();
        r.content_type = None;
        r.body.clear();
        r
    }

    /// The method in CSeq.
    pub fn cseq_method(&self) -> &str {
        self.cseq_method.as_deref().unwrap_or(&self.method)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut s = String::new();
        s.push_str(&format!("{} {} SIP/2.0\r\n", self.method, self.uri));
        s.push_str(&format!(
            "Via: SIP/2.0/{} {};branch={};rport\r\n",
            self.transport.via(),
            self.local,
            self.branch
        ));
        s.push_str("Max-Forwards: 70\r\n");
        s.push_str(&format!(
            "From: <sip:tester@{}>;tag={}\r\n",
            self.local.ip(),
            self.from_tag
        ));
        match &self.to_tag {
            Some(tag) => s.push_str(&format!("To: {};tag={tag}\r\n", self.to)),
            None => s.push_str(&format!("To: {}\r\n", self.to)),
        }
        s.push_str(&format!("Call-ID: {}\r\n", self.call_id));
        s.push_str(&format!("CSeq: {} {}\r\n", self.cseq, self.cseq_method()));
        if self.method != "ACK" {
            s.push_str(&format!(
                "Contact: <sip:tester@{};transport={}>\r\n",
                self.local,
                self.transport.via().to_ascii_lowercase()
            ));
        }
        for (n, v) in &self.extra {
            s.push_str(&format!("{n}: {v}\r\n"));
        }
        if let Some(ct) = &self.content_type {
            s.push_str(&format!("Content-Type: {ct}\r\n"));
        }
        s.push_str(&format!("Content-Length: {}\r\n\r\n", self.body.len()));
        let mut bytes = s.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }
}

// ---------------------------------------------------------------------------------------
// Blocking clients
// ---------------------------------------------------------------------------------------

/// What one read produced.
#[derive(Debug)]
pub enum StreamRead {
    Message(Vec<u8>),
    Timeout,
    /// The peer closed the connection (streams only).
    Closed,
}

/// How waiting for a final response ended.
#[derive(Debug)]
pub enum Reply {
    Final(SipMsg),
    /// Something arrived that is not a SIP response.
    NotSip(Vec<u8>),
    Timeout,
    Closed,
}

/// Reads with `next` (given the time left) until a final response, something that is not
/// a response, the end of the stream or `timeout`; returns the provisional responses read
/// before and how it ended.
fn read_until_final(
    timeout: Duration,
    mut next: impl FnMut(Duration) -> StreamRead,
) -> (Vec<SipMsg>, Reply) {
    let deadline = Instant::now() + timeout;
    let mut provisional = Vec::new();
    loop {
        match next(deadline.saturating_duration_since(Instant::now())) {
            StreamRead::Message(m) => match SipMsg::parse_response(&m) {
                Some(r) if r.code() >= 200 => return (provisional, Reply::Final(r)),
                Some(r) => provisional.push(r),
                None => return (provisional, Reply::NotSip(m)),
            },
            StreamRead::Timeout => return (provisional, Reply::Timeout),
            StreamRead::Closed => return (provisional, Reply::Closed),
        }
    }
}

/// The final response of [`read_until_final`]; panics with what came instead.
fn expect_final((provisional, reply): (Vec<SipMsg>, Reply), timeout: Duration) -> SipMsg {
    match reply {
        Reply::Final(r) => r,
        other => panic!(
            "no final response within {timeout:?} (got {:?}, then {other:?})",
            provisional.iter().map(SipMsg::code).collect::<Vec<_>>()
        ),
    }
}

/// A UDP socket on loopback talking to one server address.
pub struct UdpClient {
    pub sock: UdpSocket,
    pub server: SocketAddr,
}

impl UdpClient {
    pub fn new(server: SocketAddr) -> UdpClient {
        Self::bind("127.0.0.1:0".parse().unwrap(), server)
    }

    pub fn bind(local: SocketAddr, server: SocketAddr) -> UdpClient {
        let sock = UdpSocket::bind(local).unwrap_or_else(|e| panic!("bind UDP {local}: {e}"));
        UdpClient { sock, server }
    }

    pub fn local(&self) -> SocketAddr {
        self.sock.local_addr().unwrap()
    }

    pub fn send(&self, bytes: &[u8]) {
        self.sock
            .send_to(bytes, self.server)
            .unwrap_or_else(|e| panic!("UDP send of {} bytes: {e}", bytes.len()));
    }

    pub fn send_request(&self, req: &Request) {
        self.send(&req.to_bytes());
    }

    /// One datagram within `timeout`, or `None`.
    pub fn recv(&self, timeout: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 70_000];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.sock.set_read_timeout(Some(left)).unwrap();
            match self.sock.recv_from(&mut buf) {
                Ok((n, _)) => return Some(buf[..n].to_vec()),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return None
                }
                // ICMP port unreachable from an earlier send; keep listening.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
                Err(e) => panic!("UDP recv: {e}"),
            }
        }
    }

    /// The provisional responses, then how waiting for the final one ended.
    pub fn final_reply(&self, timeout: Duration) -> (Vec<SipMsg>, Reply) {
        read_until_final(timeout, |left| match self.recv(left) {
            Some(d) => StreamRead::Message(d),
            None => StreamRead::Timeout,
        })
    }

    /// The final response, skipping provisional ones; panics after `timeout`.
    pub fn final_response(&self, timeout: Duration) -> SipMsg {
        expect_final(self.final_reply(timeout), timeout)
    }

    /// Sends `req` and returns its final response.
    pub fn request(&self, req: &Request) -> SipMsg {
        self.send_request(req);
        self.final_response(Duration::from_secs(5))
    }
}

/// A stream (TCP) connection with its own read buffer.
pub struct TcpClient {
    pub stream: TcpStream,
    buf: Vec<u8>,
    closed: bool,
}

impl TcpClient {
    pub fn connect(addr: SocketAddr) -> io::Result<TcpClient> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(Duration::from_secs(5)))?;
        Ok(TcpClient {
            stream,
            buf: Vec::new(),
            closed: false,
        })
    }

    pub fn local(&self) -> SocketAddr {
        self.stream.local_addr().unwrap()
    }

    /// Writes everything; errors (the peer closed early) are returned, not panicked on.
    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    pub fn send_request(&mut self, req: &Request) {
        self.send(&req.to_bytes()).expect("TCP send");
    }

    /// Reads more bytes into the buffer; false on timeout, marks `closed` on EOF/reset.
    fn fill(&mut self, deadline: Instant) -> bool {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || self.closed {
            return false;
        }
        self.stream.set_read_timeout(Some(left)).unwrap();
        let mut chunk = [0u8; 65536];
        match self.stream.read(&mut chunk) {
            Ok(0) => {
                self.closed = true;
                false
            }
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                false
            }
            Err(_) => {
                self.closed = true;
                false
            }
        }
    }

    /// Raw bytes received within `timeout` (at least one read), for keep-alive checks.
    pub fn read_raw(&mut self, timeout: Duration) -> Vec<u8> {
        let deadline = Instant::now() + timeout;
        while self.buf.is_empty() && self.fill(deadline) {}
        std::mem::take(&mut self.buf)
    }

    /// The next whole SIP message (stray CRLFs before it skipped).
    pub fn read_message(&mut self, timeout: Duration) -> StreamRead {
        let deadline = Instant::now() + timeout;
        loop {
            while self.buf.starts_with(b"\r\n") {
                self.buf.drain(..2);
            }
            if let Some(n) = complete_message_len(&self.buf) {
                let msg: Vec<u8> = self.buf.drain(..n).collect();
                return StreamRead::Message(msg);
            }
            if self.closed {
                return StreamRead::Closed;
            }
            if !self.fill(deadline) {
                if self.closed {
                    return StreamRead::Closed;
                }
                if Instant::now() >= deadline {
                    return StreamRead::Timeout;
                }
            }
        }
    }

    /// The provisional responses, then how waiting for the final one ended.
    pub fn final_reply(&mut self, timeout: Duration) -> (Vec<SipMsg>, Reply) {
        read_until_final(timeout, |left| self.read_message(left))
    }

    /// The final response, skipping provisional ones; panics after `timeout`.
    pub fn final_response(&mut self, timeout: Duration) -> SipMsg {
        expect_final(self.final_reply(timeout), timeout)
    }

    /// Sends `req` and returns its final response.
    pub fn request(&mut self, req: &Request) -> SipMsg {
        self.send_request(req);
        self.final_response(Duration::from_secs(5))
    }

    /// Whether the peer closes the connection within `timeout` (data read meanwhile is
    /// discarded).
    pub fn wait_closed(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.closed && Instant::now() < deadline {
            self.fill(deadline);
            self.buf.clear();
        }
        self.closed
    }
}

/// Sends a good OPTIONS to `server` over UDP, or over a new TCP connection; its final
/// response within 3 s, if any.
pub fn options_probe(transport: Transport, server: SocketAddr) -> Option<SipMsg> {
    let (_, reply) = match transport {
        Transport::Udp => {
            let c = UdpClient::new(server);
            c.send_request(&Request::options(Transport::Udp, c.local()));
            c.final_reply(Duration::from_secs(3))
        }
        Transport::Tcp | Transport::Tls => {
            let mut c = TcpClient::connect(server).ok()?;
            let local = c.local();
            c.send(&Request::options(Transport::Tcp, local).to_bytes())
                .ok()?;
            c.final_reply(Duration::from_secs(3))
        }
    };
    match reply {
        Reply::Final(r) => Some(r),
        _ => None,
    }
}
