//! A caller leg over UDP, written by hand for the cases where a test needs full control of
//! timing and of what it sends and accepts: two INVITEs at once, an INVITE without SDP and
//! the answer in the ACK, CANCEL, re-INVITE and UPDATE, a rejected INVITE with any final
//! status. It answers the server's requests (BYE) with 200 and records them, and has its
//! own RTP socket.

use std::net::{SocketAddr, UdpSocket};
use std::thread;
use std::time::{Duration, Instant};

use super::pcap::Rtp;
use super::server::Server;
use super::sip::{sdp, Request, SipMsg, Transport, UdpClient};
use super::unique;

/// How an INVITE ended.
#[derive(Debug)]
pub struct InviteOutcome {
    pub provisional: Vec<u16>,
    pub final_response: Option<SipMsg>,
}

impl InviteOutcome {
    pub fn final_status(&self) -> Option<u16> {
        self.final_response.as_ref().and_then(SipMsg::status)
    }

    /// The 200 that answered the INVITE; panics with `context` and what came instead.
    pub fn expect_answered(self, context: &str) -> SipMsg {
        let ok = self.final_response.unwrap_or_else(|| {
            panic!(
                "{context}: no final response to the INVITE (provisional {:?})",
                self.provisional
            )
        });
        assert_eq!(
            ok.status(),
            Some(200),
            "{context}: the INVITE should be answered; got:\n{}",
            ok.raw
        );
        ok
    }
}

/// One caller leg (one dialog) to `sip:{user}@server`.
pub struct Uac {
    sip: UdpClient,
    rtp: UdpSocket,
    pub user: String,
    pub call_id: String,
    pub from_tag: String,
    /// The CSeq of the last request sent in the dialog.
    pub cseq: u32,
    /// The o= version of the last SDP made by [`Uac::sdp`].
    pub sdp_version: u32,
    /// The initial INVITE, once sent.
    invite: Option<Request>,
    /// The 2xx that established the dialog.
    pub ok: Option<SipMsg>,
    /// Requests the server sent (answered 200 automatically, except ACK).
    pub requests: Vec<SipMsg>,
}

impl Uac {
    pub fn new(server: SocketAddr, user: &str) -> Uac {
        let rtp = UdpSocket::bind("127.0.0.1:0").expect("bind RTP UDP");
        Uac {
            sip: UdpClient::new(server),
            rtp,
            user: user.to_string(),
            call_id: format!("{}@127.0.0.1", unique("uac-")),
            from_tag: unique("ft"),
            cseq: 0,
            sdp_version: 0,
            invite: None,
            ok: None,
            requests: Vec::new(),
        }
    }

    pub fn rtp_port(&self) -> u16 {
        self.rtp.local_addr().unwrap().port()
    }

    /// A new SDP (o= version one higher) for this leg's RTP socket, listing `pts` in that
    /// order with the `direction` attribute: an offer or an answer.
    pub fn sdp(&mut self, pts: &[u8], direction: &str) -> String {
        self.sdp_version += 1;
        sdp(
            [127, 0, 0, 1].into(),
            self.rtp_port(),
            self.sdp_version,
            pts,
            direction,
        )
    }

    /// A request of this leg outside the dialog, with its Call-ID and From tag.
    fn request(&self, method: &str, cseq: u32) -> Request {
        let mut r = Request::new(method, &self.user, Transport::Udp, self.sip.local());
        r.call_id = self.call_id.clone();
        r.from_tag = self.from_tag.clone();
        r.cseq = cseq;
        r
    }

    /// A request inside the dialog the 2xx established: to its Contact, with its To tag, on
    /// a new branch.
    pub fn in_dialog(&self, method: &str, cseq: u32, sdp: Option<&str>) -> Request {
        let ok = self.ok.as_ref().expect("no dialog yet");
        let mut r = self.request(method, cseq);
        r.uri = ok.contact_uri().unwrap_or(r.uri);
        r.to = ok.header("to").unwrap_or("").to_string();
        match sdp {
            Some(sdp) => r.with_sdp(sdp),
            None => r,
        }
    }

    /// Sends the initial INVITE (with `sdp` as the offer, or none) without waiting; use
    /// [`Uac::await_final`] next.
    pub fn send_invite(&mut self, sdp: Option<&str>) -> Instant {
        self.cseq = 1;
        let mut invite = self.request("INVITE", 1);
        if let Some(sdp) = sdp {
            invite = invite.with_sdp(sdp);
        }
        self.sip.send_request(&invite);
        self.invite = Some(invite);
        Instant::now()
    }

    /// Waits for the final response to the INVITE sent at `sent_at`, retransmitting it until
    /// anything answers. A non-2xx is ACKed; a 2xx becomes the dialog and is left for
    /// [`Uac::ack`].
    pub fn await_final(&mut self, sent_at: Instant, limit: Duration) -> InviteOutcome {
        let invite = self.invite.clone().expect("no INVITE sent");
        let (provisional, fin) = self.await_response(&invite, sent_at + limit);
        if let Some(f) = &fin {
            if f.code() >= 300 {
                self.ack_non_2xx(f);
            } else if f.code() >= 200 {
                self.ok = Some(f.clone());
            }
        }
        InviteOutcome {
            provisional,
            final_response: fin,
        }
    }

    /// Sends the initial INVITE and waits for its final response ([`Uac::await_final`]).
    pub fn invite(&mut self, sdp: Option<&str>, limit: Duration) -> InviteOutcome {
        let sent = self.send_invite(sdp);
        self.await_final(sent, limit)
    }

    /// Sends the initial INVITE and returns once a 180 (or any final response) arrived; the
    /// final is returned when it came first.
    pub fn invite_until_ringing(&mut self, sdp: Option<&str>) -> Option<SipMsg> {
        self.send_invite(sdp);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no 180 or final response to the INVITE within 10 s"
            );
            let Some(msg) = self.recv(left.min(Duration::from_millis(500))) else {
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

    /// Invites offering PCMU and telephone-event, insists on a 200 and ACKs it. Returns the
    /// 200.
    pub fn answered_call(&mut self, server: &Server) -> SipMsg {
        let offer = self.sdp(&[0, 101], "sendrecv");
        let context = format!(
            "call {} (server log at {})",
            self.user,
            server.log_path().display()
        );
        let ok = self
            .invite(Some(&offer), Duration::from_secs(15))
            .expect_answered(&context);
        self.ack(1, None);
        ok
    }

    /// ACKs a non-2xx final response to the initial INVITE (same branch).
    pub fn ack_non_2xx(&self, response: &SipMsg) {
        let invite = self.invite.as_ref().expect("no INVITE sent");
        self.sip.send_request(&invite.ack_for(response));
    }

    /// ACKs the 2xx of the INVITE with CSeq `cseq`, optionally carrying an SDP answer.
    pub fn ack(&self, cseq: u32, sdp: Option<&str>) {
        self.sip.send_request(&self.in_dialog("ACK", cseq, sdp));
    }

    /// CANCELs the pending initial INVITE; returns the CANCEL's final status and the
    /// INVITE's final response (ACKed).
    pub fn cancel(&mut self, limit: Duration) -> (Option<u16>, Option<SipMsg>) {
        let cancel = self.invite.as_ref().expect("no INVITE sent").cancel();
        self.sip.send_request(&cancel);
        let deadline = Instant::now() + limit;
        let mut cancel_status = None;
        let mut invite_final: Option<SipMsg> = None;
        let mut resend_at = Instant::now() + Duration::from_millis(500);
        while Instant::now() < deadline && (cancel_status.is_none() || invite_final.is_none()) {
            let until = resend_at.min(deadline);
            match self.recv(until.saturating_duration_since(Instant::now())) {
                Some(msg) => match (msg.cseq_method(), msg.status()) {
                    (Some("CANCEL"), Some(s)) if s >= 200 => cancel_status = Some(s),
                    (Some("INVITE"), Some(s)) if s >= 200 => {
                        if s >= 300 {
                            self.ack_non_2xx(&msg);
                        }
                        invite_final = Some(msg);
                    }
                    _ => {}
                },
                None => {
                    if cancel_status.is_none() {
                        self.sip.send_request(&cancel);
                    }
                    resend_at = Instant::now() + Duration::from_secs(1);
                }
            }
        }
        (cancel_status, invite_final)
    }

    /// Sends `req` and waits for the final response of its transaction, retransmitting it
    /// until anything answers. Returns the provisional codes and the final response.
    pub fn transaction(&mut self, req: &Request, limit: Duration) -> (Vec<u16>, Option<SipMsg>) {
        self.sip.send_request(req);
        self.await_response(req, Instant::now() + limit)
    }

    /// Waits for the final response to `req` (matched on CSeq number and method),
    /// retransmitting `req` on the RFC 3261 schedule (500 ms doubling to 4 s) until anything
    /// answers.
    fn await_response(&mut self, req: &Request, deadline: Instant) -> (Vec<u16>, Option<SipMsg>) {
        let mut provisional = Vec::new();
        let mut heard = false;
        let mut interval = Duration::from_millis(500);
        let mut next = Instant::now() + interval;
        while Instant::now() < deadline {
            let until = if heard { deadline } else { next.min(deadline) };
            match self.recv(until.saturating_duration_since(Instant::now())) {
                Some(msg) => {
                    let ours = msg.status().is_some()
                        && msg.cseq_method() == Some(req.cseq_method())
                        && msg.cseq_number() == Some(req.cseq);
                    if !ours {
                        continue;
                    }
                    heard = true;
                    if msg.code() < 200 {
                        provisional.push(msg.code());
                    } else {
                        return (provisional, Some(msg));
                    }
                }
                None if !heard => {
                    // A retransmission is byte for byte the same request.
                    self.sip.send_request(req);
                    interval = (interval * 2).min(Duration::from_secs(4));
                    next = Instant::now() + interval;
                }
                None => {}
            }
        }
        (provisional, None)
    }

    /// A re-INVITE with `sdp`; ACKs a 2xx. Returns the final response.
    pub fn reinvite(&mut self, sdp: &str) -> SipMsg {
        self.cseq += 1;
        let req = self.in_dialog("INVITE", self.cseq, Some(sdp));
        let (_, fin) = self.transaction(&req, Duration::from_secs(10));
        let fin = fin.expect("no final response to the re-INVITE within 10 s");
        if fin.status() == Some(200) {
            self.ack(req.cseq, None);
        }
        fin
    }

    /// An UPDATE with `sdp` (RFC 3311): no ACK. Returns the final response.
    pub fn update(&mut self, sdp: &str) -> SipMsg {
        self.cseq += 1;
        let req = self.in_dialog("UPDATE", self.cseq, Some(sdp));
        let (_, fin) = self.transaction(&req, Duration::from_secs(10));
        fin.expect("no final response to the UPDATE within 10 s")
    }

    /// BYE in the dialog; its final status (within 10 s).
    pub fn bye(&mut self) -> Option<u16> {
        self.cseq += 1;
        let req = self.in_dialog("BYE", self.cseq, None);
        let (_, fin) = self.transaction(&req, Duration::from_secs(10));
        fin.and_then(|f| f.status())
    }

    /// The next SIP message within `limit`; requests from the server are answered 200
    /// (except ACK) and recorded.
    pub fn recv(&mut self, limit: Duration) -> Option<SipMsg> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let bytes = self.sip.recv(left)?;
            let Some(msg) = SipMsg::parse(&bytes) else {
                continue;
            };
            if msg.method().is_some() {
                if msg.method() != Some("ACK") {
                    self.answer(&msg);
                }
                self.requests.push(msg.clone());
            }
            return Some(msg);
        }
    }

    /// 200 OK to a request from the server.
    fn answer(&self, req: &SipMsg) {
        let mut resp = "SIP/2.0 200 OK\r\n".to_string();
        for (k, v) in &req.headers {
            if matches!(k.as_str(), "via" | "from" | "to" | "call-id" | "cseq") {
                resp.push_str(&format!("{k}: {v}\r\n"));
            }
        }
        resp.push_str("Content-Length: 0\r\n\r\n");
        self.sip.send(resp.as_bytes());
    }

    /// Waits for a request of `method` from the server (answered 200 by `recv`).
    pub fn wait_request(&mut self, method: &str, limit: Duration) -> Option<SipMsg> {
        if let Some(seen) = self.requests.iter().find(|r| r.method() == Some(method)) {
            return Some(seen.clone());
        }
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            match self.recv(left) {
                Some(m) if m.method() == Some(method) => return Some(m),
                Some(_) => {}
                None => return None,
            }
        }
    }

    /// Sends `count` 20 ms packets of PCMU silence to `to`, paced every 20 ms, numbered from
    /// `first_seq` (marker on the first).
    pub fn send_rtp(&self, to: SocketAddr, first_seq: u16, count: u16) {
        let mut pkt = vec![0xFFu8; 12 + 160];
        pkt[0] = 0x80;
        pkt[8..12].copy_from_slice(&0x7D7D_0001u32.to_be_bytes());
        let start = Instant::now();
        for i in 0..count {
            let due = start + Duration::from_millis(20) * u32::from(i);
            thread::sleep(due.saturating_duration_since(Instant::now()));
            let seq = first_seq.wrapping_add(i);
            pkt[1] = if i == 0 { 0x80 } else { 0 };
            pkt[2..4].copy_from_slice(&seq.to_be_bytes());
            pkt[4..8].copy_from_slice(&(u32::from(seq) * 160).to_be_bytes());
            let _ = self.rtp.send_to(&pkt, to);
        }
    }

    /// The next RTP packet within `limit` (zero: only one already received), and where it
    /// came from. Anything that is not RTP is skipped.
    pub fn recv_rtp(&self, limit: Duration) -> Option<(SocketAddr, Rtp)> {
        let deadline = Instant::now() + limit;
        let mut buf = [0u8; 2048];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let got = if left.is_zero() {
                self.rtp.set_nonblocking(true).unwrap();
                let got = self.rtp.recv_from(&mut buf);
                self.rtp.set_nonblocking(false).unwrap();
                got
            } else {
                self.rtp.set_read_timeout(Some(left)).unwrap();
                self.rtp.recv_from(&mut buf)
            };
            let (n, from) = got.ok()?;
            if let Some(rtp) = Rtp::parse(&buf[..n]) {
                return Some((from, rtp));
            }
        }
    }

    /// Counts RTP packets of payload type `pt` arriving from `from` within `limit`, up to
    /// `want`.
    pub fn count_rtp(&self, from: SocketAddr, pt: u8, want: usize, limit: Duration) -> usize {
        let deadline = Instant::now() + limit;
        let mut got = 0;
        while got < want {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match self.recv_rtp(left) {
                Some((src, rtp)) if src == from && rtp.pt == pt => got += 1,
                Some(_) => {}
                None => break,
            }
        }
        got
    }
}
