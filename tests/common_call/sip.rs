//! A raw-UDP SIP caller for the cases where the test needs full control of timing and of
//! what it accepts: two INVITEs at once, a rejected INVITE with any final status. It
//! writes RFC 3261 messages by hand and reads responses leniently.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;

/// A SIP message as received.
#[derive(Clone, Debug)]
pub struct SipMsg {
    pub first_line: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub raw: String,
}

fn expand_compact(name: &str) -> String {
    let n = name.trim().to_ascii_lowercase();
    match n.as_str() {
        "v" => "via".into(),
        "i" => "call-id".into(),
        "f" => "from".into(),
        "t" => "to".into(),
        "m" => "contact".into(),
        "l" => "content-length".into(),
        "c" => "content-type".into(),
        _ => n,
    }
}

impl SipMsg {
    pub fn parse(bytes: &[u8]) -> Option<SipMsg> {
        let raw = String::from_utf8_lossy(bytes).into_owned();
        let norm = raw.replace("\r\n", "\n");
        let (head, body) = norm.split_once("\n\n").unwrap_or((&norm, ""));
        let mut lines = head.lines();
        let first_line = lines.next()?.trim().to_string();
        let mut headers: Vec<(String, String)> = Vec::new();
        for line in lines {
            if line.starts_with(' ') || line.starts_with('\t') {
                if let Some(last) = headers.last_mut() {
                    last.1.push(' ');
                    last.1.push_str(line.trim());
                }
                continue;
            }
            let (k, v) = line.split_once(':')?;
            headers.push((expand_compact(k), v.trim().to_string()));
        }
        Some(SipMsg {
            first_line,
            headers,
            body: body.to_string(),
            raw,
        })
    }

    /// The status code of a response.
    pub fn status(&self) -> Option<u16> {
        self.first_line
            .strip_prefix("SIP/2.0 ")?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    /// The method of a request.
    pub fn method(&self) -> Option<&str> {
        if self.first_line.starts_with("SIP/") {
            None
        } else {
            self.first_line.split_whitespace().next()
        }
    }

    /// The first header of that name (long or compact form, any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let want = expand_compact(name);
        self.headers
            .iter()
            .find(|(k, _)| *k == want)
            .map(|(_, v)| v.as_str())
    }

    /// The method named in CSeq.
    pub fn cseq_method(&self) -> Option<&str> {
        self.header("cseq")?.split_whitespace().nth(1)
    }

    /// The `branch` parameter of the top Via.
    pub fn branch(&self) -> Option<&str> {
        param(self.header("via")?, "branch")
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
}

/// A `;name=value` parameter of a header value.
pub fn param<'a>(value: &'a str, name: &str) -> Option<&'a str> {
    value.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
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

/// How an INVITE ended.
#[derive(Debug)]
pub struct InviteOutcome {
    pub provisional: Vec<u16>,
    pub final_response: Option<SipMsg>,
    /// Time from sending the INVITE to the final response.
    pub elapsed: Duration,
}

impl InviteOutcome {
    pub fn final_status(&self) -> Option<u16> {
        self.final_response.as_ref().and_then(|r| r.status())
    }
}

/// One caller leg over UDP, with its own RTP socket.
pub struct Uac {
    sock: UdpSocket,
    pub rtp: UdpSocket,
    pub local: SocketAddr,
    pub server: SocketAddr,
    pub call_id: String,
    pub from_tag: String,
    cseq: u32,
    invite_branch: String,
    target_user: String,
    last_invite: String,
    /// Requests the server sent us (answered with 200 automatically).
    pub requests_seen: Vec<SipMsg>,
}

impl Uac {
    pub async fn new(server: SocketAddr) -> Uac {
        let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind SIP UDP");
        let rtp = UdpSocket::bind("127.0.0.1:0").await.expect("bind RTP UDP");
        let local = sock.local_addr().unwrap();
        Uac {
            sock,
            rtp,
            local,
            server,
            call_id: format!("{}@127.0.0.1", super::unique("e2e-")),
            from_tag: super::unique("t"),
            cseq: 1,
            invite_branch: String::new(),
            target_user: String::new(),
            last_invite: String::new(),
            requests_seen: Vec::new(),
        }
    }

    fn sdp(&self, payload_types: &[u8]) -> String {
        let rtp_port = self.rtp.local_addr().unwrap().port();
        let mut pts: Vec<String> = payload_types.iter().map(|p| p.to_string()).collect();
        pts.push("101".into());
        let mut s = format!(
            "v=0\r\no=e2e 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {rtp_port} RTP/AVP {}\r\n",
            pts.join(" ")
        );
        for pt in payload_types {
            let name = match pt {
                0 => "PCMU/8000",
                8 => "PCMA/8000",
                9 => "G722/8000",
                _ => continue,
            };
            s.push_str(&format!("a=rtpmap:{pt} {name}\r\n"));
        }
        s.push_str(
            "a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=ptime:20\r\na=sendrecv\r\n",
        );
        s
    }

    fn invite_text(&self, user: &str, branch: &str, sdp: &str) -> String {
        format!(
            "INVITE sip:{user}@{server} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {local};branch={branch};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:e2e@127.0.0.1>;tag={tag}\r\n\
             To: <sip:{user}@{server}>\r\n\
             Call-ID: {cid}\r\n\
             CSeq: 1 INVITE\r\n\
             Contact: <sip:e2e@{local}>\r\n\
             User-Agent: dialtone-e2e\r\n\
             Content-Type: application/sdp\r\n\
             Content-Length: {len}\r\n\r\n{sdp}",
            server = self.server,
            local = self.local,
            tag = self.from_tag,
            cid = self.call_id,
            len = sdp.len(),
        )
    }

    /// Sends the INVITE for `sip:{user}@server` offering `payload_types` (+101), without
    /// waiting. Use [`Uac::await_final`] next.
    pub async fn send_invite(&mut self, user: &str, payload_types: &[u8]) -> Instant {
        self.invite_branch = format!("z9hG4bK{}", super::unique("b"));
        self.target_user = user.to_string();
        let text = self.invite_text(user, &self.invite_branch.clone(), &self.sdp(payload_types));
        self.last_invite = text.clone();
        self.sock
            .send_to(text.as_bytes(), self.server)
            .await
            .expect("send INVITE");
        Instant::now()
    }

    /// Receives the next SIP message within `limit`. Requests from the server are
    /// answered 200 and recorded; returns them too.
    pub async fn recv(&mut self, limit: Duration) -> Option<SipMsg> {
        let mut buf = vec![0u8; 65_536];
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (n, _) = tokio::time::timeout(left, self.sock.recv_from(&mut buf))
                .await
                .ok()?
                .ok()?;
            let Some(msg) = SipMsg::parse(&buf[..n]) else {
                continue;
            };
            if msg.method().is_some() {
                if msg.method() != Some("ACK") {
                    self.answer_request(&msg, 200, "OK").await;
                }
                self.requests_seen.push(msg.clone());
            }
            return Some(msg);
        }
    }

    async fn answer_request(&self, req: &SipMsg, code: u16, reason: &str) {
        let mut resp = format!("SIP/2.0 {code} {reason}\r\n");
        for (k, v) in &req.headers {
            if matches!(k.as_str(), "via" | "from" | "to" | "call-id" | "cseq") {
                resp.push_str(&format!("{k}: {v}\r\n"));
            }
        }
        resp.push_str("Content-Length: 0\r\n\r\n");
        let _ = self.sock.send_to(resp.as_bytes(), self.server).await;
    }

    /// Waits for the final response to the INVITE sent by [`Uac::send_invite`],
    /// retransmitting the INVITE on the RFC 3261 schedule until anything answers. A
    /// non-2xx final is ACKed (same branch); a 2xx is left for [`Uac::ack`].
    pub async fn await_final(&mut self, sent_at: Instant, limit: Duration) -> InviteOutcome {
        let deadline = sent_at + limit;
        let mut provisional = Vec::new();
        let mut heard = false;
        let mut retransmit = Duration::from_millis(500);
        let mut next_retransmit = Instant::now() + retransmit;
        while Instant::now() < deadline {
            let wait = if heard {
                deadline.saturating_duration_since(Instant::now())
            } else {
                next_retransmit
                    .min(deadline)
                    .saturating_duration_since(Instant::now())
            };
            match self.recv(wait).await {
                Some(msg) => {
                    let Some(code) = msg.status() else { continue };
                    if msg.cseq_method() != Some("INVITE") {
                        continue;
                    }
                    heard = true;
                    if code < 200 {
                        provisional.push(code);
                        continue;
                    }
                    if code >= 300 {
                        self.ack_non_2xx(&msg).await;
                    }
                    return InviteOutcome {
                        provisional,
                        final_response: Some(msg),
                        elapsed: sent_at.elapsed(),
                    };
                }
                None if !heard => {
                    self.resend_invite().await;
                    retransmit = (retransmit * 2).min(Duration::from_secs(4));
                    next_retransmit = Instant::now() + retransmit;
                }
                None => {}
            }
        }
        InviteOutcome {
            provisional,
            final_response: None,
            elapsed: sent_at.elapsed(),
        }
    }

    async fn resend_invite(&self) {
        // A retransmission is byte-for-byte the same request.
        let _ = self
            .sock
            .send_to(self.last_invite.as_bytes(), self.server)
            .await;
    }

    async fn ack_non_2xx(&self, resp: &SipMsg) {
        let to = resp.header("to").unwrap_or("");
        let text = format!(
            "ACK sip:{user}@{server} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {local};branch={branch};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:e2e@127.0.0.1>;tag={tag}\r\n\
             To: {to}\r\n\
             Call-ID: {cid}\r\n\
             CSeq: 1 ACK\r\n\
             Content-Length: 0\r\n\r\n",
            user = self.target_user,
            server = self.server,
            local = self.local,
            branch = self.invite_branch,
            tag = self.from_tag,
            cid = self.call_id,
        );
        let _ = self.sock.send_to(text.as_bytes(), self.server).await;
    }

    fn in_dialog(&self, method: &str, cseq: u32, ok: &SipMsg) -> String {
        let ruri = ok
            .contact_uri()
            .unwrap_or_else(|| format!("sip:{}@{}", self.target_user, self.server));
        let to = ok.header("to").unwrap_or("");
        format!(
            "{method} {ruri} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {local};branch=z9hG4bK{b};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:e2e@127.0.0.1>;tag={tag}\r\n\
             To: {to}\r\n\
             Call-ID: {cid}\r\n\
             CSeq: {cseq} {method}\r\n\
             Content-Length: 0\r\n\r\n",
            local = self.local,
            b = super::unique("b"),
            tag = self.from_tag,
            cid = self.call_id,
        )
    }

    /// ACKs a 2xx (new transaction, to the Contact of the 200).
    pub async fn ack(&self, ok: &SipMsg) {
        let text = self.in_dialog("ACK", 1, ok);
        let _ = self.sock.send_to(text.as_bytes(), self.server).await;
    }

    /// Sends BYE in the dialog the 200 established; returns the BYE's final status.
    pub async fn bye(&mut self, ok: &SipMsg, limit: Duration) -> Option<u16> {
        self.cseq += 1;
        let text = self.in_dialog("BYE", self.cseq, ok);
        let deadline = Instant::now() + limit;
        let mut retransmit = Duration::from_millis(500);
        let _ = self.sock.send_to(text.as_bytes(), self.server).await;
        while Instant::now() < deadline {
            let wait = retransmit.min(deadline.saturating_duration_since(Instant::now()));
            match self.recv(wait).await {
                Some(msg) if msg.cseq_method() == Some("BYE") && msg.status().is_some() => {
                    let code = msg.status().unwrap();
                    if code >= 200 {
                        return Some(code);
                    }
                }
                Some(msg) if msg.cseq_method() == Some("INVITE") && msg.status() == Some(200) => {
                    // Our ACK crossed a 200 retransmission: ACK again.
                    self.ack(&msg).await;
                }
                Some(_) => {}
                None => {
                    let _ = self.sock.send_to(text.as_bytes(), self.server).await;
                    retransmit = (retransmit * 2).min(Duration::from_secs(4));
                }
            }
        }
        None
    }

    /// Sends `count` 20 ms packets of PCMU silence to `to` from the RTP socket, paced.
    pub async fn send_silence(&self, to: SocketAddr, count: u16) {
        let mut pkt = vec![0u8; 12 + 160];
        pkt[0] = 0x80;
        pkt[8..12].copy_from_slice(&0x0E2E_0001u32.to_be_bytes());
        for b in &mut pkt[12..] {
            *b = 0xFF;
        }
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        for i in 0..count {
            tick.tick().await;
            pkt[1] = if i == 0 { 0x80 } else { 0 };
            pkt[2..4].copy_from_slice(&i.to_be_bytes());
            pkt[4..8].copy_from_slice(&(u32::from(i) * 160).to_be_bytes());
            let _ = self.rtp.send_to(&pkt, to).await;
        }
    }
}
