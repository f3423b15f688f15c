//! Issue 3, every way a call ends: "Each of these ends the call … Every path stores the
//! right disconnection_reason, end_timestamp and duration, and frees its port, task and
//! socket".
//!
//! The paths: stop-call through the API, the agent's `hangup` event, the agent closing with
//! 1000 and with 1011, CANCEL before the answer, no RTP at all, an INVITE without SDP (offer
//! in our 200, answer in the ACK) ended by the caller's BYE, a re-INVITE hold and unhold
//! (hold must not end the call, even with a short no-audio timeout), and the RTP port range
//! being reusable after calls end.
//!
//! The caller here is a small raw-UDP leg written for these tests (it needs CANCEL,
//! re-INVITE, an INVITE without SDP and an ACK with SDP, which the shared `Uac` does not
//! do); the agent is a scripted websocket server that can hang up, close with any code, or
//! stall the handshake. The server itself, its API and its log tail come from
//! `common_call`.

mod common_call;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use common_call::sip::{sdp_audio_payload_types, sdp_media_addr, SipMsg};
use common_call::{now_ms, unique, Dialtone};

// ---------------------------------------------------------------------------------------
// The scripted agent
// ---------------------------------------------------------------------------------------

/// What the agent does with a new TCP connection.
#[derive(Clone, Copy, Debug)]
enum AgentMode {
    /// Complete the websocket handshake and echo `media` back.
    Echo,
    /// Accept the TCP connection but never answer the upgrade request; just read until
    /// the peer closes (or this long passes).
    Stall(Duration),
}

/// Something the test tells one connection to do.
#[derive(Debug)]
enum AgentCmd {
    /// Send `{"event":"hangup"}`.
    Hangup,
    /// Close the websocket with this code.
    Close(u16),
    /// Drop the TCP connection without any close frame.
    Drop,
}

/// Everything one agent connection saw.
#[derive(Debug, Default)]
struct AgentConn {
    /// JSON messages received from the gateway, in order.
    events: Vec<Value>,
    /// The code of the close frame the gateway sent first (not its reply to ours).
    server_close_code: Option<u16>,
    /// We sent a close frame first.
    we_closed: bool,
    /// The connection is over (either side).
    finished: bool,
    /// Stall mode: bytes of the upgrade request read, and whether the gateway then closed
    /// the TCP connection.
    stalled_bytes: usize,
    stalled_peer_closed: bool,
    cmds: Option<mpsc::UnboundedSender<AgentCmd>>,
}

impl AgentConn {
    fn call_sid(&self) -> Option<&str> {
        self.events
            .iter()
            .find(|m| m["event"] == "start")
            .and_then(|m| m["start"]["callSid"].as_str())
    }

    fn event_names(&self) -> Vec<String> {
        self.events
            .iter()
            .map(|m| m["event"].as_str().unwrap_or("?").to_string())
            .collect()
    }

    fn describe(&self) -> String {
        let names = self.event_names();
        let media = names.iter().filter(|n| *n == "media").count();
        let others: Vec<&String> = names.iter().filter(|n| *n != "media").collect();
        format!(
            "events (non-media) {others:?}, {media} media, server close code {:?}, we closed \
             first: {}, finished: {}, stalled: {} bytes read, peer closed: {}",
            self.server_close_code,
            self.we_closed,
            self.finished,
            self.stalled_bytes,
            self.stalled_peer_closed
        )
    }
}

type Conns = Arc<Mutex<Vec<AgentConn>>>;

struct ScriptedAgent {
    addr: SocketAddr,
    conns: Conns,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ScriptedAgent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ScriptedAgent {
    async fn start(mode: AgentMode) -> ScriptedAgent {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind agent");
        let addr = listener.local_addr().unwrap();
        let conns: Conns = Arc::default();
        let shared = conns.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let index = {
                    let mut all = shared.lock().unwrap();
                    all.push(AgentConn::default());
                    all.len() - 1
                };
                tokio::spawn(serve_agent(stream, mode, shared.clone(), index));
            }
        });
        ScriptedAgent { addr, conns, task }
    }

    fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    fn with<R>(&self, f: impl FnOnce(&[AgentConn]) -> R) -> R {
        f(&self.conns.lock().unwrap())
    }

    fn describe_all(&self) -> String {
        self.with(|all| {
            all.iter()
                .enumerate()
                .map(|(i, c)| format!("  #{i}: {}\n", c.describe()))
                .collect()
        })
    }

    /// Waits (bounded) until `pred` holds for the connection that streams `call_id`.
    async fn wait_conn(
        &self,
        call_id: &str,
        limit: Duration,
        what: &str,
        pred: impl Fn(&AgentConn) -> bool,
    ) {
        let deadline = Instant::now() + limit;
        loop {
            let ok = self.with(|all| all.iter().any(|c| c.call_sid() == Some(call_id) && pred(c)));
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "agent: {what} for call {call_id} did not happen within {limit:?}; \
                 connections:\n{}",
                self.describe_all()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Tells the connection streaming `call_id` to do something.
    fn command(&self, call_id: &str, cmd: AgentCmd) {
        let tx = self.with(|all| {
            all.iter()
                .find(|c| c.call_sid() == Some(call_id))
                .and_then(|c| c.cmds.clone())
        });
        tx.unwrap_or_else(|| panic!("agent: no live connection for call {call_id}"))
            .send(cmd)
            .expect("agent connection gone");
    }

    /// The events and close of the connection streaming `call_id`.
    fn conn_summary(&self, call_id: &str) -> (Vec<String>, Option<u16>, bool) {
        self.with(|all| {
            let c = all
                .iter()
                .find(|c| c.call_sid() == Some(call_id))
                .unwrap_or_else(|| panic!("agent: no connection for call {call_id}"));
            (c.event_names(), c.server_close_code, c.finished)
        })
    }
}

async fn serve_agent(mut stream: tokio::net::TcpStream, mode: AgentMode, conns: Conns, i: usize) {
    let record = |f: &mut dyn FnMut(&mut AgentConn)| f(&mut conns.lock().unwrap()[i]);
    if let AgentMode::Stall(limit) = mode {
        // Read the upgrade request and whatever follows, never answering, until the
        // gateway gives up on us (EOF / reset) or the limit passes.
        let mut buf = [0u8; 4096];
        let _ = tokio::time::timeout(limit, async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => {
                        record(&mut |c| c.stalled_peer_closed = true);
                        return;
                    }
                    Ok(n) => record(&mut |c| c.stalled_bytes += n),
                }
            }
        })
        .await;
        record(&mut |c| c.finished = true);
        return;
    }
    let Ok(Ok(mut ws)) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::accept_async(stream),
    )
    .await
    else {
        record(&mut |c| c.finished = true);
        return;
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    record(&mut |c| c.cmds = Some(tx.clone()));
    drop(tx);
    let mut stream_sid = String::new();
    loop {
        tokio::select! {
            cmd = rx.recv() => match cmd {
                Some(AgentCmd::Hangup) => {
                    let text = json!({"event": "hangup"}).to_string();
                    if ws.send(Message::text(text)).await.is_err() {
                        break;
                    }
                }
                Some(AgentCmd::Close(code)) => {
                    record(&mut |c| c.we_closed = true);
                    let frame = CloseFrame { code: CloseCode::from(code), reason: "test agent".into() };
                    let _ = ws.close(Some(frame)).await;
                    // Keep reading: the gateway's reply completes the handshake.
                }
                Some(AgentCmd::Drop) => {
                    record(&mut |c| c.we_closed = true);
                    break;
                }
                None => {}
            },
            frame = ws.next() => {
                let Some(Ok(frame)) = frame else { break };
                match frame {
                    Message::Text(text) => {
                        let Ok(msg) = serde_json::from_str::<Value>(text.as_str()) else {
                            continue;
                        };
                        if msg["event"] == "start" {
                            stream_sid = msg["streamSid"].as_str().unwrap_or("").to_string();
                        }
                        let echo = (msg["event"] == "media").then(|| {
                            json!({
                                "event": "media",
                                "streamSid": stream_sid,
                                "media": {"payload": msg["media"]["payload"].clone()},
                            })
                            .to_string()
                        });
                        record(&mut |c| c.events.push(msg.clone()));
                        if let Some(echo) = echo {
                            if ws.send(Message::text(echo)).await.is_err() {
                                break;
                            }
                        }
                    }
                    Message::Close(frame) => {
                        let code = frame.map(|f| u16::from(f.code));
                        record(&mut |c| {
                            if !c.we_closed {
                                c.server_close_code = code;
                            }
                        });
                        let _ = ws.close(None).await;
                        // Drain until the stream ends (bounded).
                        let _ = tokio::time::timeout(Duration::from_secs(2), async {
                            while let Some(Ok(_)) = ws.next().await {}
                        })
                        .await;
                        break;
                    }
                    _ => {}
                }
            }
        }
    }
    record(&mut |c| {
        c.finished = true;
        c.cmds = None;
    });
}

// ---------------------------------------------------------------------------------------
// The raw-UDP caller leg
// ---------------------------------------------------------------------------------------

/// The SDP this leg offers or answers with: PCMU (+ telephone-event when offering) and
/// the given direction attribute.
fn leg_sdp(rtp_port: u16, version: u32, pts: &[u8], direction: &str) -> String {
    let mut s = format!(
        "v=0\r\no=e2e 7 {version} IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {rtp_port} RTP/AVP {}\r\n",
        pts.iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(" ")
    );
    for pt in pts {
        match pt {
            0 => s.push_str("a=rtpmap:0 PCMU/8000\r\n"),
            8 => s.push_str("a=rtpmap:8 PCMA/8000\r\n"),
            101 => s.push_str("a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\n"),
            _ => {}
        }
    }
    s.push_str(&format!("a=ptime:20\r\na={direction}\r\n"));
    s
}

/// One SIP caller over UDP with its own RTP socket.
struct Leg {
    sock: UdpSocket,
    rtp: UdpSocket,
    local: SocketAddr,
    server: SocketAddr,
    user: String,
    call_id: String,
    from_tag: String,
    cseq: u32,
    invite_branch: String,
    sdp_version: u32,
    /// The 200 that established the dialog.
    ok: Option<SipMsg>,
    /// Requests the server sent (answered 200 automatically, except ACK).
    requests: Vec<SipMsg>,
}

impl Leg {
    async fn new(server: SocketAddr, user: &str) -> Leg {
        let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind SIP");
        let rtp = UdpSocket::bind("127.0.0.1:0").await.expect("bind RTP");
        let local = sock.local_addr().unwrap();
        Leg {
            sock,
            rtp,
            local,
            server,
            user: user.to_string(),
            call_id: format!("{}@127.0.0.1", unique("td-")),
            from_tag: unique("ft"),
            cseq: 0,
            invite_branch: String::new(),
            sdp_version: 1,
            ok: None,
            requests: Vec::new(),
        }
    }

    fn rtp_port(&self) -> u16 {
        self.rtp.local_addr().unwrap().port()
    }

    fn offer(&mut self, direction: &str) -> String {
        self.sdp_version += 1;
        leg_sdp(self.rtp_port(), self.sdp_version, &[0, 101], direction)
    }

    async fn send(&self, text: &str) {
        self.sock
            .send_to(text.as_bytes(), self.server)
            .await
            .expect("send SIP");
    }

    fn with_body(mut head: String, body: Option<&str>) -> String {
        match body {
            Some(b) => {
                head.push_str(&format!(
                    "Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{b}",
                    b.len()
                ));
            }
            None => head.push_str("Content-Length: 0\r\n\r\n"),
        }
        head
    }

    fn initial_invite(&self, body: Option<&str>) -> String {
        let head = format!(
            "INVITE sip:{user}@{server} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {local};branch={branch};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:td@127.0.0.1>;tag={tag}\r\n\
             To: <sip:{user}@{server}>\r\n\
             Call-ID: {cid}\r\n\
             CSeq: 1 INVITE\r\n\
             Contact: <sip:td@{local}>\r\n\
             User-Agent: dialtone-e2e-teardown\r\n",
            user = self.user,
            server = self.server,
            local = self.local,
            branch = self.invite_branch,
            tag = self.from_tag,
            cid = self.call_id,
        );
        Self::with_body(head, body)
    }

    /// A request inside the dialog of `self.ok`.
    fn in_dialog(&self, method: &str, cseq: u32, branch: &str, body: Option<&str>) -> String {
        let ok = self.ok.as_ref().expect("no dialog yet");
        let ruri = ok
            .contact_uri()
            .unwrap_or_else(|| format!("sip:{}@{}", self.user, self.server));
        let head = format!(
            "{method} {ruri} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {local};branch={branch};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:td@127.0.0.1>;tag={tag}\r\n\
             To: {to}\r\n\
             Call-ID: {cid}\r\n\
             CSeq: {cseq} {method}\r\n\
             Contact: <sip:td@{local}>\r\n",
            local = self.local,
            tag = self.from_tag,
            to = ok.header("to").unwrap_or(""),
            cid = self.call_id,
        );
        Self::with_body(head, body)
    }

    /// The next SIP message within `limit`; requests from the server are answered 200
    /// (except ACK) and recorded.
    async fn recv(&mut self, limit: Duration) -> Option<SipMsg> {
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
                    let mut resp = "SIP/2.0 200 OK\r\n".to_string();
                    for (k, v) in &msg.headers {
                        if matches!(k.as_str(), "via" | "from" | "to" | "call-id" | "cseq") {
                            resp.push_str(&format!("{k}: {v}\r\n"));
                        }
                    }
                    resp.push_str("Content-Length: 0\r\n\r\n");
                    let _ = self.sock.send_to(resp.as_bytes(), self.server).await;
                }
                self.requests.push(msg.clone());
            }
            return Some(msg);
        }
    }

    /// Sends `text` and waits for the final response of that transaction (matched on CSeq
    /// number and method), retransmitting it until anything answers. Returns the
    /// provisional codes and the final response.
    async fn transaction(
        &mut self,
        text: &str,
        cseq: u32,
        method: &str,
        limit: Duration,
    ) -> (Vec<u16>, Option<SipMsg>) {
        self.send(text).await;
        let deadline = Instant::now() + limit;
        let mut provisional = Vec::new();
        let mut heard = false;
        let mut interval = Duration::from_millis(500);
        let mut next = Instant::now() + interval;
        while Instant::now() < deadline {
            let until = if heard { deadline } else { next.min(deadline) };
            match self
                .recv(until.saturating_duration_since(Instant::now()))
                .await
            {
                Some(msg) => {
                    let matches = msg.status().is_some()
                        && msg.cseq_method() == Some(method)
                        && cseq_number(&msg) == Some(cseq);
                    if !matches {
                        continue;
                    }
                    heard = true;
                    let code = msg.status().unwrap();
                    if code < 200 {
                        provisional.push(code);
                    } else {
                        return (provisional, Some(msg));
                    }
                }
                None if !heard => {
                    self.send(text).await;
                    interval = (interval * 2).min(Duration::from_secs(4));
                    next = Instant::now() + interval;
                }
                None => {}
            }
        }
        (provisional, None)
    }

    /// Sends the initial INVITE (with `body` as the offer, or none) and returns once a 180
    /// (or any final response) arrived; the final is returned when it came first.
    async fn invite_until_ringing(&mut self, body: Option<&str>) -> Option<SipMsg> {
        self.cseq = 1;
        self.invite_branch = format!("z9hG4bK{}", unique("inv"));
        let text = self.initial_invite(body);
        self.send(&text).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no 180 or final response to the INVITE within 10 s"
            );
            let Some(msg) = self.recv(left.min(Duration::from_millis(500))).await else {
                continue;
            };
            if msg.cseq_method() != Some("INVITE") {
                continue;
            }
            match msg.status() {
                Some(180) => return None,
                Some(s) if s >= 200 => return Some(msg),
                _ => {}
            }
        }
    }

    /// Sends the initial INVITE and waits for its final response. A non-2xx is ACKed; a
    /// 2xx becomes the dialog (and is not ACKed yet: see [`Leg::ack`]).
    async fn invite(&mut self, body: Option<&str>, limit: Duration) -> (Vec<u16>, Option<SipMsg>) {
        self.cseq = 1;
        self.invite_branch = format!("z9hG4bK{}", unique("inv"));
        let text = self.initial_invite(body);
        let (prov, fin) = self.transaction(&text, 1, "INVITE", limit).await;
        if let Some(f) = &fin {
            if f.status() == Some(200) {
                self.ok = Some(f.clone());
            } else {
                self.ack_non_2xx(f).await;
            }
        }
        (prov, fin)
    }

    /// Invites and insists on a 200; ACKs it (no body). Returns the 200.
    async fn answered_call(&mut self, server: &Dialtone) -> SipMsg {
        let offer = self.offer("sendrecv");
        let (prov, fin) = self.invite(Some(&offer), Duration::from_secs(15)).await;
        let ok = fin.unwrap_or_else(|| {
            panic!("no final response to the INVITE within 15 s (provisional {prov:?})")
        });
        assert_eq!(
            ok.status(),
            Some(200),
            "the INVITE for {} should be answered; got:\n{}\nserver log at {}",
            self.user,
            ok.raw,
            server.log_path.display()
        );
        self.ack(1, None).await;
        ok
    }

    async fn ack_non_2xx(&self, resp: &SipMsg) {
        let text = format!(
            "ACK sip:{user}@{server} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {local};branch={branch};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:td@127.0.0.1>;tag={tag}\r\n\
             To: {to}\r\n\
             Call-ID: {cid}\r\n\
             CSeq: 1 ACK\r\n\
             Content-Length: 0\r\n\r\n",
            user = self.user,
            server = self.server,
            local = self.local,
            branch = self.invite_branch,
            tag = self.from_tag,
            to = resp.header("to").unwrap_or(""),
            cid = self.call_id,
        );
        self.send(&text).await;
    }

    /// ACKs the 2xx of the INVITE with CSeq `cseq`, optionally carrying an SDP answer.
    async fn ack(&self, cseq: u32, body: Option<&str>) {
        let text = self.in_dialog("ACK", cseq, &format!("z9hG4bK{}", unique("ack")), body);
        self.send(&text).await;
    }

    /// CANCELs the pending initial INVITE; returns the CANCEL's and the INVITE's final
    /// responses (ACKing the INVITE's).
    async fn cancel(&mut self, limit: Duration) -> (Option<u16>, Option<SipMsg>) {
        let text = format!(
            "CANCEL sip:{user}@{server} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {local};branch={branch};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:td@127.0.0.1>;tag={tag}\r\n\
             To: <sip:{user}@{server}>\r\n\
             Call-ID: {cid}\r\n\
             CSeq: 1 CANCEL\r\n\
             Content-Length: 0\r\n\r\n",
            user = self.user,
            server = self.server,
            local = self.local,
            branch = self.invite_branch,
            tag = self.from_tag,
            cid = self.call_id,
        );
        self.send(&text).await;
        let deadline = Instant::now() + limit;
        let mut cancel_status = None;
        let mut invite_final: Option<SipMsg> = None;
        let mut resend_at = Instant::now() + Duration::from_millis(500);
        while Instant::now() < deadline && (cancel_status.is_none() || invite_final.is_none()) {
            let until = resend_at.min(deadline);
            match self
                .recv(until.saturating_duration_since(Instant::now()))
                .await
            {
                Some(msg) => match (msg.cseq_method(), msg.status()) {
                    (Some("CANCEL"), Some(s)) if s >= 200 => cancel_status = Some(s),
                    (Some("INVITE"), Some(s)) if s >= 200 => {
                        if s >= 300 {
                            self.ack_non_2xx(&msg).await;
                        }
                        invite_final = Some(msg);
                    }
                    _ => {}
                },
                None => {
                    if cancel_status.is_none() {
                        self.send(&text).await;
                    }
                    resend_at = Instant::now() + Duration::from_secs(1);
                }
            }
        }
        (cancel_status, invite_final)
    }

    /// A re-INVITE with `sdp`; ACKs a 2xx. Returns the final response.
    async fn reinvite(&mut self, sdp: &str) -> SipMsg {
        self.cseq += 1;
        let cseq = self.cseq;
        let text = self.in_dialog(
            "INVITE",
            cseq,
            &format!("z9hG4bK{}", unique("re")),
            Some(sdp),
        );
        let (_, fin) = self
            .transaction(&text, cseq, "INVITE", Duration::from_secs(10))
            .await;
        let fin = fin.expect("no final response to the re-INVITE within 10 s");
        if fin.status() == Some(200) {
            self.ack(cseq, None).await;
        }
        fin
    }

    /// An UPDATE with `sdp` (RFC 3311): no ACK. Returns the final response.
    async fn update(&mut self, sdp: &str) -> SipMsg {
        self.cseq += 1;
        let cseq = self.cseq;
        let text = self.in_dialog(
            "UPDATE",
            cseq,
            &format!("z9hG4bK{}", unique("up")),
            Some(sdp),
        );
        let (_, fin) = self
            .transaction(&text, cseq, "UPDATE", Duration::from_secs(10))
            .await;
        fin.expect("no final response to the UPDATE within 10 s")
    }

    /// BYE in the dialog; returns its final status.
    async fn bye(&mut self) -> Option<u16> {
        self.cseq += 1;
        let cseq = self.cseq;
        let text = self.in_dialog("BYE", cseq, &format!("z9hG4bK{}", unique("bye")), None);
        let (_, fin) = self
            .transaction(&text, cseq, "BYE", Duration::from_secs(10))
            .await;
        fin.and_then(|f| f.status())
    }

    /// Waits for a request of `method` from the server (answered 200 by `recv`).
    async fn wait_request(&mut self, method: &str, limit: Duration) -> Option<SipMsg> {
        if let Some(seen) = self.requests.iter().find(|r| r.method() == Some(method)) {
            return Some(seen.clone());
        }
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            match self.recv(left).await {
                Some(m) if m.method() == Some(method) => return Some(m),
                Some(_) => {}
                None => return None,
            }
        }
    }

    /// Sends `count` paced 20 ms PCMU packets (μ-law silence) to `to`.
    async fn send_rtp(&self, to: SocketAddr, first_seq: u16, count: u16) {
        let mut pkt = vec![0xFFu8; 12 + 160];
        pkt[0] = 0x80;
        pkt[8..12].copy_from_slice(&0x7D7D_0001u32.to_be_bytes());
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        for i in 0..count {
            tick.tick().await;
            let seq = first_seq.wrapping_add(i);
            pkt[1] = if i == 0 { 0x80 } else { 0 };
            pkt[2..4].copy_from_slice(&seq.to_be_bytes());
            pkt[4..8].copy_from_slice(&(u32::from(seq) * 160).to_be_bytes());
            let _ = self.rtp.send_to(&pkt, to).await;
        }
    }

    /// Counts RTP packets of payload type `pt` arriving from `from` within `limit`, up to
    /// `want`.
    async fn recv_rtp(&self, from: SocketAddr, pt: u8, want: usize, limit: Duration) -> usize {
        let mut buf = [0u8; 2048];
        let deadline = Instant::now() + limit;
        let mut got = 0;
        while got < want {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(Ok((n, src))) = tokio::time::timeout(left, self.rtp.recv_from(&mut buf)).await
            else {
                break;
            };
            if src == from && n >= 12 && buf[0] >> 6 == 2 && buf[1] & 0x7F == pt {
                got += 1;
            }
        }
        got
    }
}

fn cseq_number(msg: &SipMsg) -> Option<u32> {
    msg.header("cseq")?.split_whitespace().next()?.parse().ok()
}

// ---------------------------------------------------------------------------------------
// Shared steps and checks
// ---------------------------------------------------------------------------------------

/// Registers a call for `agent_id`; returns its id.
async fn register(server: &Dialtone, agent_id: &str) -> String {
    server.register_call(agent_id).await["call_id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Asserts the final call object: status, reason, and timestamps that make sense.
/// `answered` says whether the call was answered (then start_timestamp is set and
/// duration_ms = end - start; otherwise duration_ms is 0).
fn assert_final(call: &Value, status: &str, reason: &str, t0: i64, answered: bool) {
    assert_eq!(
        (
            call["call_status"].as_str(),
            call["disconnection_reason"].as_str()
        ),
        (Some(status), Some(reason)),
        "call object: {call}"
    );
    let now = now_ms();
    let end = call["end_timestamp"]
        .as_i64()
        .unwrap_or_else(|| panic!("no end_timestamp: {call}"));
    assert!(
        end >= t0 - 1000 && end <= now + 1000,
        "end_timestamp {end} not within the test ({t0}..{now}): {call}"
    );
    let duration = call["duration_ms"]
        .as_i64()
        .unwrap_or_else(|| panic!("no duration_ms: {call}"));
    if answered {
        let start = call["start_timestamp"]
            .as_i64()
            .unwrap_or_else(|| panic!("no start_timestamp on an answered call: {call}"));
        assert!(
            start >= t0 - 1000 && start <= end,
            "start_timestamp {start} not within the test and before end {end}: {call}"
        );
        assert!(
            duration >= 0 && (duration - (end - start)).abs() <= 1000,
            "duration_ms {duration} disagrees with end - start = {}: {call}",
            end - start
        );
    } else {
        assert!(
            (0..=1000).contains(&duration),
            "an unanswered call has (almost) no duration; duration_ms {duration}: {call}"
        );
    }
}

/// Waits for the call object to be final and checks it.
async fn expect_final(
    server: &Dialtone,
    call_id: &str,
    status: &str,
    reason: &str,
    t0: i64,
    answered: bool,
) -> Value {
    let call = server
        .wait_call_final(call_id, Duration::from_secs(15))
        .await;
    eprintln!("call {call_id} final: {call}");
    assert_final(&call, status, reason, t0, answered);
    call
}

/// Waits for the gateway's BYE to the caller (answered 200 by the leg).
async fn expect_bye(leg: &mut Leg, limit: Duration, why: &str) -> SipMsg {
    leg.wait_request("BYE", limit).await.unwrap_or_else(|| {
        panic!(
            "{why}: the caller got no BYE within {limit:?}; requests seen: {:?}",
            leg.requests
                .iter()
                .map(|r| r.first_line.clone())
                .collect::<Vec<_>>()
        )
    })
}

/// The `dialtone_media_sessions` gauge from `/metrics` (None when not exported yet).
async fn media_sessions(server: &Dialtone) -> Option<f64> {
    let text = server.metrics().await;
    text.lines()
        .find(|l| {
            l.starts_with("dialtone_media_sessions ") || l.starts_with("dialtone_media_sessions{")
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// After the calls ended, their media tasks are gone: the live media-session gauge reads 0.
async fn assert_media_tasks_freed(server: &Dialtone) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = media_sessions(server).await;
        // Absent: no media session was ever started (the call ended before the ACK).
        if now.is_none() || now == Some(0.0) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "dialtone_media_sessions is {now:?} 5 s after every call ended (expected 0): a \
             media task outlived its call"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A server, a scripted echo agent, and an answered call with some RTP sent.
struct Answered {
    server: Dialtone,
    agent: ScriptedAgent,
    call_id: String,
    leg: Leg,
    media: SocketAddr,
    t0: i64,
}

async fn answered_call(env: &[(&str, &str)], send_rtp: bool) -> Answered {
    let server = Dialtone::start_with(env).await;
    let agent = ScriptedAgent::start(AgentMode::Echo).await;
    let agent_id = server.create_agent(&agent.url(), "mulaw_8000").await;
    let call_id = register(&server, &agent_id).await;
    let t0 = now_ms();
    let mut leg = Leg::new(server.sip, &call_id).await;
    let ok = leg.answered_call(&server).await;
    let media = ok
        .sdp_media_addr()
        .unwrap_or_else(|| panic!("the 200 carries no usable SDP:\n{}", ok.raw));
    if send_rtp {
        leg.send_rtp(media, 1, 25).await;
    }
    agent
        .wait_conn(&call_id, Duration::from_secs(5), "`start`", |_| true)
        .await;
    Answered {
        server,
        agent,
        call_id,
        leg,
        media,
        t0,
    }
}

// ---------------------------------------------------------------------------------------
// 1. stop-call
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_call_sends_bye_stops_the_agent_and_ends_manual_stopped() {
    let mut c = answered_call(&[], true).await;
    c.agent
        .wait_conn(&c.call_id, Duration::from_secs(5), "media", |conn| {
            conn.event_names().iter().any(|n| n == "media")
        })
        .await;
    let (status, body) = c
        .server
        .api("POST", &format!("/v2/stop-call/{}", c.call_id), None)
        .await;
    assert!(
        (200..300).contains(&status),
        "stop-call of a live call: {status} {body}"
    );
    let bye = expect_bye(&mut c.leg, Duration::from_secs(5), "stop-call").await;
    assert_eq!(
        bye.header("call-id"),
        Some(c.leg.call_id.as_str()),
        "the BYE belongs to our dialog:\n{}",
        bye.raw
    );
    c.agent
        .wait_conn(
            &c.call_id,
            Duration::from_secs(5),
            "`stop` then close 1000",
            |conn| conn.finished && conn.server_close_code.is_some(),
        )
        .await;
    let (names, close, _) = c.agent.conn_summary(&c.call_id);
    assert!(
        names.iter().any(|n| n == "stop"),
        "the agent must receive `stop` on stop-call; got {names:?}"
    );
    assert_eq!(
        close,
        Some(1000),
        "the gateway closes the agent socket with 1000"
    );
    let call = expect_final(&c.server, &c.call_id, "ended", "manual_stopped", c.t0, true).await;
    // A second stop of an ended call is refused, not a second ending.
    let (again, body) = c
        .server
        .api("POST", &format!("/v2/stop-call/{}", c.call_id), None)
        .await;
    assert_eq!(again, 409, "stop-call of an ended call: {body}");
    let after = c.server.get_call(&c.call_id).await;
    assert_eq!(
        after["end_timestamp"], call["end_timestamp"],
        "the ending is recorded once: {after}"
    );
    assert_media_tasks_freed(&c.server).await;
}

// ---------------------------------------------------------------------------------------
// 2. agent hangup: the `hangup` event, and a close with 1000
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_hangup_event_sends_bye_and_ends_agent_hangup() {
    let mut c = answered_call(&[("DIALTONE__CALLS__HANGUP_DRAIN_MS", "1000")], true).await;
    c.agent.command(&c.call_id, AgentCmd::Hangup);
    expect_bye(&mut c.leg, Duration::from_secs(8), "agent `hangup`").await;
    expect_final(&c.server, &c.call_id, "ended", "agent_hangup", c.t0, true).await;
    c.agent
        .wait_conn(
            &c.call_id,
            Duration::from_secs(5),
            "socket closed",
            |conn| conn.finished,
        )
        .await;
    let (names, close, _) = c.agent.conn_summary(&c.call_id);
    assert!(
        names.iter().any(|n| n == "stop"),
        "after `hangup` the agent still gets `stop`; got {names:?}"
    );
    assert_eq!(close, Some(1000), "then the gateway closes with 1000");
    assert_media_tasks_freed(&c.server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_close_1000_sends_bye_and_ends_agent_hangup() {
    let mut c = answered_call(&[("DIALTONE__CALLS__HANGUP_DRAIN_MS", "1000")], true).await;
    c.agent.command(&c.call_id, AgentCmd::Close(1000));
    expect_bye(&mut c.leg, Duration::from_secs(8), "agent close 1000").await;
    expect_final(&c.server, &c.call_id, "ended", "agent_hangup", c.t0, true).await;
    c.agent
        .wait_conn(
            &c.call_id,
            Duration::from_secs(5),
            "socket closed",
            |conn| conn.finished,
        )
        .await;
    assert_media_tasks_freed(&c.server).await;
}

// ---------------------------------------------------------------------------------------
// 3. agent abnormal close
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_close_1011_sends_bye_and_ends_websocket_runtime_error() {
    let mut c = answered_call(&[], true).await;
    c.agent.command(&c.call_id, AgentCmd::Close(1011));
    expect_bye(&mut c.leg, Duration::from_secs(8), "agent close 1011").await;
    expect_final(
        &c.server,
        &c.call_id,
        "error",
        "error_llm_websocket_runtime",
        c.t0,
        true,
    )
    .await;
    c.agent
        .wait_conn(
            &c.call_id,
            Duration::from_secs(5),
            "socket closed",
            |conn| conn.finished,
        )
        .await;
    assert_media_tasks_freed(&c.server).await;
}

// ---------------------------------------------------------------------------------------
// 4. CANCEL before the answer
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_while_agent_stalls_gets_487_and_ends_user_hangup() {
    let server =
        Dialtone::start_with(&[("DIALTONE__CALLS__AGENT_CONNECT_TIMEOUT_MS", "15000")]).await;
    let agent = ScriptedAgent::start(AgentMode::Stall(Duration::from_secs(30))).await;
    let agent_id = server.create_agent(&agent.url(), "mulaw_8000").await;
    let call_id = register(&server, &agent_id).await;
    let t0 = now_ms();
    let mut leg = Leg::new(server.sip, &call_id).await;
    let offer = leg.offer("sendrecv");
    if let Some(early) = leg.invite_until_ringing(Some(&offer)).await {
        panic!(
            "the INVITE got a final response before ringing (the agent never answers its \
             upgrade):\n{}",
            early.raw
        );
    }
    // The gateway is now waiting on the stalled agent: make sure it really reached it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while agent.with(|all| all.iter().all(|c| c.stalled_bytes == 0)) {
        assert!(
            Instant::now() < deadline,
            "the gateway never sent the agent its upgrade request; connections:\n{}",
            agent.describe_all()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (cancel_status, invite_final) = leg.cancel(Duration::from_secs(8)).await;
    assert_eq!(cancel_status, Some(200), "the CANCEL is answered 200");
    let invite_final = invite_final.expect("no final response to the INVITE after CANCEL");
    assert_eq!(
        invite_final.status(),
        Some(487),
        "a cancelled INVITE ends with 487:\n{}",
        invite_final.raw
    );
    expect_final(&server, &call_id, "ended", "user_hangup", t0, false).await;
    // The half-open agent connection is given up, not left hanging.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !agent.with(|all| all.iter().all(|c| c.stalled_peer_closed)) {
        assert!(
            Instant::now() < deadline,
            "the gateway kept the stalled agent connection open after the CANCEL; \
             connections:\n{}",
            agent.describe_all()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Nothing more arrives for this call: no 200, no BYE.
    let late = leg.recv(Duration::from_millis(1500)).await;
    if let Some(m) = late {
        assert!(
            m.cseq_method() != Some("INVITE") && m.method() != Some("BYE"),
            "after the 487 and its ACK, the gateway sent (a retransmitted 487 means the ACK \
             was not matched to the INVITE transaction):\n{}",
            m.raw
        );
    }
}

// ---------------------------------------------------------------------------------------
// 5. no RTP
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_rtp_at_all_ends_with_bye_and_no_audio_error() {
    let mut c = answered_call(&[("DIALTONE__CALLS__NO_AUDIO_TIMEOUT_MS", "1500")], false).await;
    expect_bye(&mut c.leg, Duration::from_secs(10), "no RTP").await;
    expect_final(
        &c.server,
        &c.call_id,
        "error",
        "error_no_audio_received",
        c.t0,
        true,
    )
    .await;
    c.agent
        .wait_conn(
            &c.call_id,
            Duration::from_secs(5),
            "`stop` and close",
            |conn| conn.finished,
        )
        .await;
    let (names, close, _) = c.agent.conn_summary(&c.call_id);
    assert!(
        names.iter().any(|n| n == "stop"),
        "the agent gets `stop` when the call ends for no audio; got {names:?}"
    );
    assert_eq!(close, Some(1000), "then the gateway closes with 1000");
    assert_media_tasks_freed(&c.server).await;
}

// ---------------------------------------------------------------------------------------
// 6. INVITE without SDP: our offer in the 200, the answer in the ACK
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invite_without_sdp_offer_in_200_answer_in_ack_then_bye() {
    let server = Dialtone::start().await;
    let agent = ScriptedAgent::start(AgentMode::Echo).await;
    let agent_id = server.create_agent(&agent.url(), "mulaw_8000").await;
    let call_id = register(&server, &agent_id).await;
    let t0 = now_ms();
    let mut leg = Leg::new(server.sip, &call_id).await;
    let (prov, fin) = leg.invite(None, Duration::from_secs(15)).await;
    let ok = fin.unwrap_or_else(|| panic!("no final response (provisional {prov:?})"));
    assert_eq!(
        ok.status(),
        Some(200),
        "an INVITE without SDP is answered:\n{}",
        ok.raw
    );
    assert!(
        ok.header("content-type")
            .is_some_and(|t| t.eq_ignore_ascii_case("application/sdp")),
        "the 200 carries our offer as application/sdp:\n{}",
        ok.raw
    );
    let offered = sdp_audio_payload_types(&ok.body);
    assert!(
        offered.contains(&0),
        "our offer must include PCMU (0); it offers {offered:?}:\n{}",
        ok.body
    );
    let media = sdp_media_addr(&ok.body)
        .unwrap_or_else(|| panic!("the offer has no c=/m=audio:\n{}", ok.body));
    let answer = leg_sdp(leg.rtp_port(), 2, &[0], "sendrecv");
    leg.ack(1, Some(&answer)).await;
    leg.send_rtp(media, 1, 25).await;
    let got = leg.recv_rtp(media, 0, 5, Duration::from_secs(5)).await;
    assert!(
        got >= 5,
        "the caller should receive PCMU RTP (PT 0) from {media} after answering in the ACK; \
         got {got} packets"
    );
    agent
        .wait_conn(&call_id, Duration::from_secs(5), "caller media", |conn| {
            conn.event_names().iter().any(|n| n == "media")
        })
        .await;
    assert!(
        leg.requests.iter().all(|r| r.method() != Some("BYE")),
        "the gateway hung up a call answered in the ACK"
    );
    assert_eq!(
        leg.bye().await,
        Some(200),
        "the caller's BYE is answered 200"
    );
    let call = expect_final(&server, &call_id, "ended", "user_hangup", t0, true).await;
    assert_media_tasks_freed(&server).await;
    // The call object's negotiated codec is the one the ACK's answer chose.
    assert_eq!(
        call["codec"], "PCMU",
        "the codec negotiated through the ACK's answer is recorded on the call: {call}"
    );
}

// ---------------------------------------------------------------------------------------
// 7. re-INVITE hold and unhold
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reinvite_hold_pauses_the_no_audio_timeout_and_unhold_resumes() {
    // No RTP at all: without the hold the call would end after 2 s (error_no_audio_received).
    let mut c = answered_call(&[("DIALTONE__CALLS__NO_AUDIO_TIMEOUT_MS", "2000")], false).await;
    let hold = c.leg.offer("sendonly");
    let held = c.leg.reinvite(&hold).await;
    assert_eq!(held.status(), Some(200), "hold re-INVITE:\n{}", held.raw);
    assert!(
        held.body.contains("a=recvonly"),
        "a sendonly offer is answered recvonly:\n{}",
        held.body
    );
    // Held for more than twice the no-audio timeout: no BYE.
    if let Some(bye) = c.leg.wait_request("BYE", Duration::from_secs(5)).await {
        panic!(
            "the gateway hung up a held call (hold must pause the no-audio timeout):\n{}\n\
             call object: {}",
            bye.raw,
            c.server.get_call(&c.call_id).await
        );
    }
    let call = c.server.get_call(&c.call_id).await;
    assert_eq!(
        call["call_status"], "ongoing",
        "a held call is ongoing: {call}"
    );

    let resume = c.leg.offer("sendrecv");
    let resumed = c.leg.reinvite(&resume).await;
    assert_eq!(
        resumed.status(),
        Some(200),
        "unhold re-INVITE:\n{}",
        resumed.raw
    );
    assert!(
        resumed.body.contains("a=sendrecv"),
        "a sendrecv offer is answered sendrecv:\n{}",
        resumed.body
    );
    let media = resumed.sdp_media_addr().unwrap_or(c.media);
    assert_eq!(
        media, c.media,
        "the media address stays the same across hold"
    );
    c.leg.send_rtp(media, 100, 15).await;
    let got = c.leg.recv_rtp(media, 0, 5, Duration::from_secs(3)).await;
    assert!(
        got >= 5,
        "RTP flows to the caller again after unhold; got {got}"
    );
    assert!(
        c.leg.requests.iter().all(|r| r.method() != Some("BYE")),
        "the gateway hung up around the unhold"
    );
    assert_eq!(
        c.leg.bye().await,
        Some(200),
        "the caller's BYE is answered 200"
    );
    expect_final(&c.server, &c.call_id, "ended", "user_hangup", c.t0, true).await;
    assert_media_tasks_freed(&c.server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_hold_and_unhold_keep_the_call_up() {
    let mut c = answered_call(&[("DIALTONE__CALLS__NO_AUDIO_TIMEOUT_MS", "2000")], false).await;
    let hold = c.leg.offer("sendonly");
    let held = c.leg.update(&hold).await;
    assert_eq!(held.status(), Some(200), "hold UPDATE:\n{}", held.raw);
    assert!(
        held.body.contains("a=recvonly"),
        "a sendonly offer in UPDATE is answered recvonly:\n{}",
        held.body
    );
    if let Some(bye) = c.leg.wait_request("BYE", Duration::from_secs(4)).await {
        panic!("the gateway hung up a call held by UPDATE:\n{}", bye.raw);
    }
    let resume = c.leg.offer("sendrecv");
    let resumed = c.leg.update(&resume).await;
    assert_eq!(
        resumed.status(),
        Some(200),
        "unhold UPDATE:\n{}",
        resumed.raw
    );
    assert!(
        resumed.body.contains("a=sendrecv"),
        "a sendrecv offer in UPDATE is answered sendrecv:\n{}",
        resumed.body
    );
    assert_eq!(
        c.leg.bye().await,
        Some(200),
        "the caller's BYE is answered 200"
    );
    expect_final(&c.server, &c.call_id, "ended", "user_hangup", c.t0, true).await;
    assert_media_tasks_freed(&c.server).await;
}

/// Sends a re-INVITE (keeping the media as it is) and returns its CSeq and final
/// response, without ACKing it.
async fn reinvite_without_ack(leg: &mut Leg) -> (u32, SipMsg) {
    leg.cseq += 1;
    let cseq = leg.cseq;
    let offer = leg.offer("sendrecv");
    let text = leg.in_dialog(
        "INVITE",
        cseq,
        &format!("z9hG4bK{}", unique("re")),
        Some(&offer),
    );
    let (_, fin) = leg
        .transaction(&text, cseq, "INVITE", Duration::from_secs(10))
        .await;
    let fin = fin.expect("no final response to the re-INVITE within 10 s");
    assert_eq!(fin.status(), Some(200), "re-INVITE:\n{}", fin.raw);
    (cseq, fin)
}

/// Counts the 200s to INVITE `cseq` received during `span`; fails on a BYE.
async fn count_resent_200(leg: &mut Leg, cseq: u32, span: Duration) -> usize {
    let until = Instant::now() + span;
    let mut n = 0;
    while let Some(msg) = leg
        .recv(until.saturating_duration_since(Instant::now()))
        .await
    {
        assert_ne!(
            msg.method(),
            Some("BYE"),
            "the gateway hung up:\n{}",
            msg.raw
        );
        if msg.status() == Some(200)
            && msg.cseq_method() == Some("INVITE")
            && cseq_number(&msg) == Some(cseq)
        {
            n += 1;
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reinvite_200_is_resent_over_udp_until_its_ack() {
    // T1 = 100 ms: resends at 100, 300, 700 ms, ... after the 200.
    let mut c = answered_call(&[("DIALTONE__SIP__T1_MS", "100")], true).await;
    let (cseq, _) = reinvite_without_ack(&mut c.leg).await;
    let resent = count_resent_200(&mut c.leg, cseq, Duration::from_millis(1000)).await;
    assert!(
        resent >= 2,
        "the 200 must be resent until the ACK; saw {resent}"
    );
    c.leg.ack(cseq, None).await;
    // What was already on its way may still land; after that, silence.
    count_resent_200(&mut c.leg, cseq, Duration::from_millis(300)).await;
    let after = count_resent_200(&mut c.leg, cseq, Duration::from_millis(2500)).await;
    assert_eq!(after, 0, "the 200 kept coming after its ACK");
    let call = c.server.get_call(&c.call_id).await;
    assert_eq!(call["call_status"], "ongoing", "{call}");
    assert_eq!(c.leg.bye().await, Some(200));
    expect_final(&c.server, &c.call_id, "ended", "user_hangup", c.t0, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reinvite_200_never_acked_ends_the_call_with_bye() {
    // T1 = 50 ms: given up after 64*T1 = 3.2 s (RFC 3261 §13.3.1.4).
    let mut c = answered_call(&[("DIALTONE__SIP__T1_MS", "50")], true).await;
    let (_, _) = reinvite_without_ack(&mut c.leg).await;
    let bye = expect_bye(
        &mut c.leg,
        Duration::from_secs(10),
        "after an unacknowledged re-INVITE 200",
    )
    .await;
    assert_eq!(bye.header("call-id"), Some(c.leg.call_id.as_str()));
    expect_final(&c.server, &c.call_id, "error", "error_unknown", c.t0, true).await;
    assert_media_tasks_freed(&c.server).await;
}

// ---------------------------------------------------------------------------------------
// 8. ports are freed
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtp_ports_are_freed_by_every_ending() {
    // Two port pairs: room for exactly two calls at once.
    let lo = common_call::free_port_block(4);
    let range = format!("{}-{}", lo, lo + 3);
    let server = Dialtone::start_with(&[
        ("DIALTONE__MEDIA__RTP_PORTS", range.as_str()),
        ("DIALTONE__CALLS__HANGUP_DRAIN_MS", "500"),
        // These calls send no RTP; they must not end for it while the test runs.
        ("DIALTONE__CALLS__NO_AUDIO_TIMEOUT_MS", "120000"),
    ])
    .await;
    let agent = ScriptedAgent::start(AgentMode::Echo).await;
    let agent_id = server.create_agent(&agent.url(), "mulaw_8000").await;
    let in_range = |ok: &SipMsg| {
        let port = ok.sdp_media_addr().expect("SDP in the 200").port();
        assert!(
            (lo..=lo + 3).contains(&port),
            "media port {port} outside the configured range {range}"
        );
        port
    };

    // A and B take both pairs.
    let a_id = register(&server, &agent_id).await;
    let mut a = Leg::new(server.sip, &a_id).await;
    let a_port = in_range(&a.answered_call(&server).await);
    let b_id = register(&server, &agent_id).await;
    let mut b = Leg::new(server.sip, &b_id).await;
    let b_port = in_range(&b.answered_call(&server).await);
    assert_ne!(a_port, b_port, "two live calls share an RTP port");

    // C finds the range full: refused before its registration is claimed.
    let c_id = register(&server, &agent_id).await;
    let mut c = Leg::new(server.sip, &c_id).await;
    let offer = c.offer("sendrecv");
    let (_, fin) = c.invite(Some(&offer), Duration::from_secs(10)).await;
    let fin = fin.expect("no final response for the third concurrent call");
    assert_eq!(
        fin.status(),
        Some(503),
        "with both port pairs taken the third call is refused 503:\n{}",
        fin.raw
    );
    let still = server.get_call(&c_id).await;
    assert_eq!(
        still["call_status"], "registered",
        "a call refused for lack of ports stays dialable: {still}"
    );

    // A ends by the caller's BYE: C (same registration, new dialog) now gets its port.
    let t0 = now_ms();
    assert_eq!(a.bye().await, Some(200));
    expect_final(&server, &a_id, "ended", "user_hangup", t0, true).await;
    let mut c = Leg::new(server.sip, &c_id).await;
    let c_port = in_range(&c.answered_call(&server).await);
    assert_eq!(c_port, a_port, "C takes the pair A freed");

    // B ends by stop-call; D gets B's pair.
    let (status, body) = server
        .api("POST", &format!("/v2/stop-call/{b_id}"), None)
        .await;
    assert!((200..300).contains(&status), "stop-call: {status} {body}");
    expect_bye(&mut b, Duration::from_secs(5), "stop-call of B").await;
    expect_final(&server, &b_id, "ended", "manual_stopped", t0, true).await;
    let d_id = register(&server, &agent_id).await;
    let mut d = Leg::new(server.sip, &d_id).await;
    assert_eq!(in_range(&d.answered_call(&server).await), b_port);

    // C ends by the agent hanging up; E gets C's pair.
    agent
        .wait_conn(&c_id, Duration::from_secs(5), "`start`", |_| true)
        .await;
    agent.command(&c_id, AgentCmd::Hangup);
    expect_bye(&mut c, Duration::from_secs(8), "agent hangup of C").await;
    expect_final(&server, &c_id, "ended", "agent_hangup", t0, true).await;
    let e_id = register(&server, &agent_id).await;
    let mut e = Leg::new(server.sip, &e_id).await;
    assert_eq!(in_range(&e.answered_call(&server).await), c_port);

    // Three more in sequence through the same two pairs, after D and E end.
    assert_eq!(d.bye().await, Some(200));
    assert_eq!(e.bye().await, Some(200));
    expect_final(&server, &d_id, "ended", "user_hangup", t0, true).await;
    expect_final(&server, &e_id, "ended", "user_hangup", t0, true).await;
    for round in 0..3 {
        let id = register(&server, &agent_id).await;
        let mut leg = Leg::new(server.sip, &id).await;
        let (_, fin) = {
            let offer = leg.offer("sendrecv");
            leg.invite(Some(&offer), Duration::from_secs(10)).await
        };
        let fin = fin.unwrap_or_else(|| panic!("round {round}: no final response"));
        assert_eq!(
            fin.status(),
            Some(200),
            "round {round}: a sequential call is answered after the others freed their \
             ports:\n{}",
            fin.raw
        );
        in_range(&fin);
        leg.ack(1, None).await;
        assert_eq!(leg.bye().await, Some(200), "round {round}: BYE");
        expect_final(&server, &id, "ended", "user_hangup", t0, true).await;
    }
    assert!(
        server.log().contains("call ended"),
        "the server logs each ending"
    );
    assert_media_tasks_freed(&server).await;
}

// ---------------------------------------------------------------------------------------
// More endings: the agent's connection dropping, stop-call while ringing, BYE before the
// ACK, an ACK that never comes, RTP that stops (inactivity)
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_connection_dropped_without_close_ends_lost_connection() {
    let mut c = answered_call(&[], true).await;
    c.agent.command(&c.call_id, AgentCmd::Drop);
    expect_bye(&mut c.leg, Duration::from_secs(8), "agent TCP dropped").await;
    expect_final(
        &c.server,
        &c.call_id,
        "error",
        "error_llm_websocket_lost_connection",
        c.t0,
        true,
    )
    .await;
    assert_media_tasks_freed(&c.server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_call_while_ringing_refuses_the_invite_and_ends_manual_stopped() {
    let server =
        Dialtone::start_with(&[("DIALTONE__CALLS__AGENT_CONNECT_TIMEOUT_MS", "15000")]).await;
    let agent = ScriptedAgent::start(AgentMode::Stall(Duration::from_secs(30))).await;
    let agent_id = server.create_agent(&agent.url(), "mulaw_8000").await;
    let call_id = register(&server, &agent_id).await;
    let t0 = now_ms();
    let mut leg = Leg::new(server.sip, &call_id).await;
    let offer = leg.offer("sendrecv");
    if let Some(early) = leg.invite_until_ringing(Some(&offer)).await {
        panic!("final response before ringing:\n{}", early.raw);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while agent.with(|all| all.iter().all(|c| c.stalled_bytes == 0)) {
        assert!(
            Instant::now() < deadline,
            "the gateway never reached the agent; connections:\n{}",
            agent.describe_all()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, body) = server
        .api("POST", &format!("/v2/stop-call/{call_id}"), None)
        .await;
    assert!(
        (200..300).contains(&status),
        "stop-call of a ringing call: {status} {body}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    let fin = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = leg
            .recv(left)
            .await
            .expect("no final response to the INVITE within 5 s of stop-call");
        if msg.cseq_method() == Some("INVITE") && msg.status().is_some_and(|s| s >= 200) {
            break msg;
        }
    };
    let code = fin.status().unwrap();
    assert!(
        (400..700).contains(&code),
        "a call stopped while ringing is refused, never answered; got:\n{}",
        fin.raw
    );
    leg.ack_non_2xx(&fin).await;
    expect_final(&server, &call_id, "ended", "manual_stopped", t0, false).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !agent.with(|all| all.iter().all(|c| c.stalled_peer_closed)) {
        assert!(
            Instant::now() < deadline,
            "the stalled agent connection stayed open after stop-call; connections:\n{}",
            agent.describe_all()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bye_before_the_ack_ends_user_hangup() {
    let server = Dialtone::start().await;
    let agent = ScriptedAgent::start(AgentMode::Echo).await;
    let agent_id = server.create_agent(&agent.url(), "mulaw_8000").await;
    let call_id = register(&server, &agent_id).await;
    let t0 = now_ms();
    let mut leg = Leg::new(server.sip, &call_id).await;
    let offer = leg.offer("sendrecv");
    let (_, fin) = leg.invite(Some(&offer), Duration::from_secs(15)).await;
    let ok = fin.expect("no final response to the INVITE");
    assert_eq!(ok.status(), Some(200), "{}", ok.raw);
    // No ACK: hang up at once.
    assert_eq!(
        leg.bye().await,
        Some(200),
        "a BYE before the ACK is answered 200"
    );
    expect_final(&server, &call_id, "ended", "user_hangup", t0, true).await;
    agent
        .wait_conn(&call_id, Duration::from_secs(5), "socket closed", |conn| {
            conn.finished
        })
        .await;
    let (names, close, _) = agent.conn_summary(&call_id);
    assert!(
        names.iter().any(|n| n == "stop"),
        "the agent gets `stop`; got {names:?}"
    );
    assert_eq!(close, Some(1000), "and a close with 1000");
    assert_media_tasks_freed(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_ack_ends_the_call_with_bye_after_64_t1() {
    // T1 = 100 ms: the 200 is retransmitted, and the call given up after 6.4 s.
    let server = Dialtone::start_with(&[("DIALTONE__SIP__T1_MS", "100")]).await;
    let agent = ScriptedAgent::start(AgentMode::Echo).await;
    let agent_id = server.create_agent(&agent.url(), "mulaw_8000").await;
    let call_id = register(&server, &agent_id).await;
    let t0 = now_ms();
    let mut leg = Leg::new(server.sip, &call_id).await;
    let offer = leg.offer("sendrecv");
    let (_, fin) = leg.invite(Some(&offer), Duration::from_secs(15)).await;
    let ok = fin.expect("no final response to the INVITE");
    assert_eq!(ok.status(), Some(200), "{}", ok.raw);
    let mut retransmitted = 0;
    let deadline = Instant::now() + Duration::from_secs(15);
    let bye = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(msg) = leg.recv(left).await else {
            panic!(
                "no BYE within 15 s of an unacknowledged 200 ({retransmitted} 200 \
                 retransmissions seen)"
            );
        };
        if msg.status() == Some(200) && msg.cseq_method() == Some("INVITE") {
            retransmitted += 1;
        }
        if msg.method() == Some("BYE") {
            break msg;
        }
    };
    assert!(
        retransmitted >= 2,
        "the 200 must be retransmitted while no ACK comes; saw {retransmitted}"
    );
    assert_eq!(bye.header("call-id"), Some(leg.call_id.as_str()));
    let call = server
        .wait_call_final(&call_id, Duration::from_secs(10))
        .await;
    eprintln!("call {call_id} final: {call}");
    assert_final(&call, "error", "error_unknown", t0, true);
    assert_media_tasks_freed(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtp_that_stops_ends_the_call_for_inactivity() {
    let server = Dialtone::start().await;
    let agent = ScriptedAgent::start(AgentMode::Echo).await;
    let (status, body) = server
        .api(
            "POST",
            "/create-agent",
            Some(json!({
                "agent_name": unique("td-silence-"),
                "end_call_after_silence_ms": 10_000,
                "response_engine": {
                    "type": "audio-websocket",
                    "url": agent.url(),
                    "audio_encoding": "mulaw_8000",
                },
            })),
        )
        .await;
    assert!(
        (200..300).contains(&status),
        "create-agent: {status} {body}"
    );
    let agent_id = body["agent_id"].as_str().expect("agent_id").to_string();
    let call_id = register(&server, &agent_id).await;
    let t0 = now_ms();
    let mut leg = Leg::new(server.sip, &call_id).await;
    let ok = leg.answered_call(&server).await;
    let media = ok.sdp_media_addr().expect("SDP in the 200");
    leg.send_rtp(media, 1, 25).await;
    // Then silence at the RTP level: after 10 s of it the gateway hangs up.
    expect_bye(&mut leg, Duration::from_secs(20), "RTP stopped").await;
    expect_final(&server, &call_id, "ended", "inactivity", t0, true).await;
    assert_media_tasks_freed(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_call_before_the_ack_sends_bye_and_ends_manual_stopped() {
    let server = Dialtone::start().await;
    let agent = ScriptedAgent::start(AgentMode::Echo).await;
    let agent_id = server.create_agent(&agent.url(), "mulaw_8000").await;
    let call_id = register(&server, &agent_id).await;
    let t0 = now_ms();
    let mut leg = Leg::new(server.sip, &call_id).await;
    let offer = leg.offer("sendrecv");
    let (_, fin) = leg.invite(Some(&offer), Duration::from_secs(15)).await;
    let ok = fin.expect("no final response to the INVITE");
    assert_eq!(ok.status(), Some(200), "{}", ok.raw);
    // The 200 is not ACKed yet: stop the call through the API.
    let (status, body) = server
        .api("POST", &format!("/v2/stop-call/{call_id}"), None)
        .await;
    assert!(
        (200..300).contains(&status),
        "stop-call of an answered, unacknowledged call: {status} {body}"
    );
    expect_bye(&mut leg, Duration::from_secs(8), "stop-call before the ACK").await;
    expect_final(&server, &call_id, "ended", "manual_stopped", t0, true).await;
    agent
        .wait_conn(&call_id, Duration::from_secs(5), "socket closed", |conn| {
            conn.finished
        })
        .await;
    let (names, close, _) = agent.conn_summary(&call_id);
    assert!(
        names.iter().any(|n| n == "stop"),
        "the agent gets `stop`; got {names:?}"
    );
    assert_eq!(close, Some(1000), "and a close with 1000");
    assert_media_tasks_freed(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reinvite_without_sdp_hold_answered_in_the_ack_keeps_the_call_up() {
    // A delayed-offer re-INVITE: no SDP in it, our offer in the 200, the caller's answer
    // (a hold: sendonly) in the ACK. No RTP at all: if the ACK's answer were ignored the
    // call would end after 2 s for no audio.
    let mut c = answered_call(&[("DIALTONE__CALLS__NO_AUDIO_TIMEOUT_MS", "2000")], false).await;
    c.leg.cseq += 1;
    let cseq = c.leg.cseq;
    let text = c
        .leg
        .in_dialog("INVITE", cseq, &format!("z9hG4bK{}", unique("re")), None);
    let (_, fin) = c
        .leg
        .transaction(&text, cseq, "INVITE", Duration::from_secs(10))
        .await;
    let ok = fin.expect("no final response to the re-INVITE without SDP");
    assert_eq!(ok.status(), Some(200), "{}", ok.raw);
    assert!(
        sdp_audio_payload_types(&ok.body).contains(&0),
        "the 200 to a re-INVITE without SDP carries an offer with PCMU:\n{}",
        ok.body
    );
    let hold_answer = {
        c.leg.sdp_version += 1;
        leg_sdp(c.leg.rtp_port(), c.leg.sdp_version, &[0], "sendonly")
    };
    c.leg.ack(cseq, Some(&hold_answer)).await;
    if let Some(bye) = c.leg.wait_request("BYE", Duration::from_secs(5)).await {
        panic!(
            "the gateway hung up a call held through the ACK's answer (the answer in the \
             ACK of a re-INVITE must apply):\n{}\ncall object: {}",
            bye.raw,
            c.server.get_call(&c.call_id).await
        );
    }
    let resume = c.leg.offer("sendrecv");
    let resumed = c.leg.reinvite(&resume).await;
    assert_eq!(resumed.status(), Some(200), "unhold:\n{}", resumed.raw);
    c.leg.send_rtp(c.media, 200, 15).await;
    assert_eq!(
        c.leg.bye().await,
        Some(200),
        "the caller's BYE is answered 200"
    );
    expect_final(&c.server, &c.call_id, "ended", "user_hangup", c.t0, true).await;
    assert_media_tasks_freed(&c.server).await;
}

// ---------------------------------------------------------------------------------------
// The configured maximum call length
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maximum_call_duration_ends_with_bye() {
    // The agent allows an hour; the server's ceiling is 2 s. RTP keeps flowing, so only the
    // duration limit can end the call.
    let mut c = answered_call(&[("DIALTONE__CALLS__MAX_CALL_DURATION_MS", "2000")], true).await;
    expect_bye(&mut c.leg, Duration::from_secs(10), "maximum duration").await;
    expect_final(
        &c.server,
        &c.call_id,
        "ended",
        "max_duration_reached",
        c.t0,
        true,
    )
    .await;
    assert_media_tasks_freed(&c.server).await;
}
