//! The sans-IO session core. See the [session docs](super) for its policies and for the
//! order in which a driver calls it.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::inbound::{InboundPath, Received};
use super::outbound::{OutboundPath, Polled};
use super::protection::Protection;
use super::ticker::Ticker;
use super::{
    DropCause, MediaCommand, MediaOutcome, MediaStats, SessionConfig, StreamParams, MAX_PTIME,
};
use crate::agent::{FromAgent, ToAgent};
use crate::media::codec::Codec;
use crate::media::rtcp::{
    ntp_from_unix, parse_compound, RtcpPacket, RtcpTimer, RtcpWriter, SenderInfo,
};
use crate::media::rtp::{is_rtcp, RtpPacket, FIXED_HEADER_LEN};
use crate::media::srtp::MAX_OVERHEAD as SRTP_OVERHEAD;
use crate::metrics;
use crate::model::DisconnectionReason;
use crate::sdp::{Direction, Negotiated};

/// Room the closing RTCP needs before protection: SR with one block (52 bytes), SDES with
/// a 255-byte CNAME (268), BYE (8).
const RTCP_ROOM: usize = 400;

/// The smallest buffer [`Session::poll_transmit`] can always write into: the largest RTP
/// packet we send (60 ms of any codec), or the closing RTCP, plus SRTP's overhead.
pub const MAX_TRANSMIT: usize = {
    let rtp = FIXED_HEADER_LEN + Codec::G722.payload_len(MAX_PTIME);
    let largest = if rtp > RTCP_ROOM { rtp } else { RTCP_ROOM };
    largest + SRTP_OVERHEAD
};

/// Consecutive socket receive errors after which the session gives up.
const MAX_RECV_ERRORS: u32 = 100;

/// Which of the call's two ports a datagram leaves from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Socket {
    Rtp,
    /// The RTCP port (RTP + 1). Multiplexed RTCP leaves from [`Socket::Rtp`].
    Rtcp,
}

/// What a datagram carries, so [`Session::handle_sent`] counts it in the right place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packet {
    Rtp,
    Rtcp,
}

/// One datagram to send, written at the start of the buffer given to
/// [`Session::poll_transmit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transmit {
    pub destination: SocketAddr,
    pub socket: Socket,
    pub packet: Packet,
    /// Bytes written.
    pub len: usize,
}

/// What the driver must act on, other than datagrams.
#[derive(Debug)]
pub enum Event {
    /// Hand this to the agent without waiting; report a full or closed channel back. The
    /// last message, [`ToAgent::Stop`], may wait a little for room.
    Agent(ToAgent),
    /// The session is over, and nothing follows: every datagram and message it had for
    /// the caller and the agent was handed out before.
    Ended(MediaOutcome),
}

/// Pre-resolved metric handles, so the hot path never looks a series up.
struct Meters {
    drops: [::metrics::Counter; DropCause::ALL.len()],
    packets_in: ::metrics::Counter,
    packets_out: ::metrics::Counter,
    rtp_to_agent: ::metrics::Histogram,
    slips_in: ::metrics::Counter,
    slips_out: ::metrics::Counter,
    overflow_ms: ::metrics::Counter,
}

impl Meters {
    fn new() -> Self {
        Self {
            drops: DropCause::ALL.map(|c| metrics::media_drop_counter(c.label())),
            packets_in: metrics::media_packets_counter("in"),
            packets_out: metrics::media_packets_counter("out"),
            rtp_to_agent: metrics::media_rtp_to_agent_histogram(),
            slips_in: metrics::media_clock_slips_counter("in"),
            slips_out: metrics::media_clock_slips_counter("out"),
            overflow_ms: metrics::media_agent_overflow_counter(),
        }
    }
}

/// How far a session that decided to end has got with its goodbyes.
#[derive(Debug, Clone, Copy)]
struct Ending {
    /// `None` when stopped ([`MediaCommand::Stop`], [`Session::close`]).
    reason: Option<DisconnectionReason>,
    /// The closing RTCP (with BYE) was handed out, or there was nowhere to send it.
    bye_done: bool,
    /// `ToAgent::Stop` was handed out, or the agent no longer listens.
    stop_done: bool,
    /// [`Event::Ended`] was handed out.
    ended: bool,
}

/// One call's media, without I/O: see the [session docs](super).
pub struct Session {
    negotiated: Negotiated,
    no_audio_timeout: Duration,
    inactivity_timeout: Duration,
    hangup_drain_cap: Duration,
    ssrc: u32,
    cname: String,
    inbound: InboundPath,
    outbound: OutboundPath,
    in_clock: Ticker,
    /// Messages for the agent, in order, until [`Session::poll_event`] hands them out.
    /// Bounded by what one round of inputs produces; it keeps its capacity.
    events: VecDeque<ToAgent>,
    /// The agent channel is closed: nothing more reaches the agent.
    agent_lost: bool,
    /// Early media: see [`SessionConfig::early`].
    early: bool,
    /// Still reading from the agent (false after its hang-up or its end).
    agent_open: bool,
    latched: Option<SocketAddr>,
    /// Where the caller's RTCP comes from, and whether it came on the RTP port.
    rtcp_latched: Option<(SocketAddr, bool)>,
    rtcp_timer: RtcpTimer,
    /// A regular report is due: the next [`Session::poll_transmit`] writes it.
    rtcp_due: bool,
    /// Packets we had sent at the last report (SR only if we sent since).
    packets_at_report: u64,
    /// Start of the session, or the end of the last hold.
    activity_since: Instant,
    last_rtp: Option<Instant>,
    /// Hang-up drain deadline.
    draining: Option<Instant>,
    recv_errors: u32,
    /// Plain RTP or SRTP, as negotiated.
    protection: Protection,
    /// The wall-clock time at one instant, for the NTP timestamps of our SRs.
    wall_anchor: (Instant, SystemTime),
    /// Seeded by the driver: initial sequence number and timestamp, RTCP intervals.
    rng: SmallRng,
    ending: Option<Ending>,
    stats: MediaStats,
    meters: Meters,
}

fn usable(addr: SocketAddr) -> Option<SocketAddr> {
    (!addr.ip().is_unspecified() && addr.port() != 0).then_some(addr)
}

impl Session {
    /// A session starting at `now`, when the wall clock read `wall_now`. `seed` feeds
    /// every random choice (RFC 3550 wants the first sequence number and timestamp, and
    /// the RTCP intervals, random); give it a fresh random value.
    pub fn new(cfg: SessionConfig, now: Instant, wall_now: SystemTime, seed: u64) -> Self {
        let mut rng = SmallRng::seed_from_u64(seed);
        let params = StreamParams::from_negotiated(&cfg.negotiated);
        let outbound = OutboundPath::new(
            params,
            cfg.agent_encoding,
            cfg.ssrc,
            rng.random(),
            rng.random(),
            now,
        );
        let rtcp_timer = RtcpTimer::new(now, RtcpTimer::DEFAULT_INTERVAL, rng.random());
        Self {
            protection: Protection::new(cfg.negotiated.srtp.as_ref()),
            inbound: InboundPath::new(params, cfg.agent_encoding, now),
            outbound,
            in_clock: Ticker::new(now, Duration::from_millis(u64::from(params.ptime))),
            negotiated: cfg.negotiated,
            no_audio_timeout: cfg.no_audio_timeout,
            inactivity_timeout: cfg.inactivity_timeout,
            hangup_drain_cap: cfg.hangup_drain_cap,
            ssrc: cfg.ssrc,
            cname: cfg.cname,
            events: VecDeque::with_capacity(64),
            agent_lost: false,
            early: cfg.early,
            agent_open: true,
            latched: None,
            rtcp_latched: None,
            rtcp_timer,
            rtcp_due: false,
            packets_at_report: 0,
            activity_since: now,
            last_rtp: None,
            draining: None,
            recv_errors: 0,
            wall_anchor: (now, wall_now),
            rng,
            ending: None,
            stats: MediaStats::default(),
            meters: Meters::new(),
        }
    }

    // ---- inputs ----

    /// Runs everything due at `now`: inbound ticks (jitter pop → decode → resample →
    /// encode → agent frames), the RTCP timer, the hang-up drain deadline and the
    /// no-audio/inactivity timeouts. Harmless when nothing is due. Outbound RTP is not
    /// built here but in [`Session::poll_transmit`].
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.ending.is_some() {
            return;
        }
        while self.in_clock.poll(now) {
            self.inbound.tick();
            while let Some((frame, arrival)) = self.inbound.pop_frame() {
                self.stats.frames_to_agent += 1;
                self.events.push_back(ToAgent::Media(frame));
                if let Some(at) = arrival {
                    let waited = now.saturating_duration_since(at);
                    self.meters.rtp_to_agent.record(waited.as_secs_f64());
                }
            }
            self.in_clock.set_interval(self.inbound.packet_interval());
        }

        if now >= self.rtcp_timer.poll_timeout()
            && self.rtcp_timer.on_timeout(now, self.rng.random())
        {
            self.rtcp_due = true;
        }
        if self.draining.is_some_and(|d| now >= d) {
            return self.end(Some(DisconnectionReason::AgentHangup));
        }
        if let Some((t, reason)) = self.media_deadline() {
            if now >= t {
                self.end(Some(reason));
            }
        }
    }

    /// A datagram that arrived on the RTP port from `src`: RTP, or multiplexed RTCP.
    /// Decrypted in place with SRTP.
    pub fn handle_rtp(&mut self, now: Instant, src: SocketAddr, datagram: &mut [u8]) {
        if self.ending.is_some() {
            return;
        }
        self.recv_errors = 0;
        if self.latched.is_some_and(|l| l != src) {
            if is_rtcp(datagram) && self.latched.is_some_and(|l| l.ip() == src.ip()) {
                self.on_rtcp(now, src, datagram, true);
            } else {
                self.dropped(DropCause::ForeignSource);
            }
            return;
        }
        if is_rtcp(datagram) {
            self.on_rtcp(now, src, datagram, true);
            return;
        }
        let len = match self.protection.incoming_rtp(datagram) {
            Ok(len) => len,
            Err(cause) => return self.dropped(cause),
        };
        let pkt = match RtpPacket::parse(&datagram[..len]) {
            Ok(p) => p,
            Err(_) => return self.dropped(DropCause::Malformed),
        };
        match self.inbound.on_packet(&pkt, now) {
            Ok(received) => {
                if self.latched.is_none() {
                    tracing::debug!(%src, sdp = %self.negotiated.remote_rtp, "RTP source latched");
                    self.latched = Some(src);
                }
                self.last_rtp = Some(now);
                self.stats.packets_in += 1;
                self.meters.packets_in.increment(1);
                if let Received::Dtmf(digit) = received {
                    self.stats.dtmf_in += 1;
                    self.events.push_back(ToAgent::Dtmf(digit));
                }
            }
            Err(cause) => self.dropped(cause),
        }
    }

    /// A datagram that arrived on the RTCP port from `src`. Decrypted in place with SRTCP.
    pub fn handle_rtcp(&mut self, now: Instant, src: SocketAddr, datagram: &mut [u8]) {
        if self.ending.is_none() {
            self.on_rtcp(now, src, datagram, false);
        }
    }

    /// A socket failed to receive. Many in a row (without an RTP datagram between) end
    /// the session with `ErrorUnknown`.
    pub fn handle_recv_error(&mut self) {
        if self.ending.is_some() {
            return;
        }
        self.recv_errors += 1;
        if self.recv_errors >= MAX_RECV_ERRORS {
            self.end(Some(DisconnectionReason::ErrorUnknown));
        }
    }

    /// A message from the agent.
    pub fn handle_agent(&mut self, now: Instant, msg: FromAgent) {
        if self.ending.is_some() {
            return;
        }
        match msg {
            FromAgent::Media(bytes) => self.outbound.push_agent(&bytes),
            FromAgent::Mark(name) => {
                if let Some(name) = self.outbound.mark(name) {
                    self.events.push_back(ToAgent::MarkPlayed(name));
                }
            }
            // The marks it releases are echoed by the next poll_transmit.
            FromAgent::Clear => self.outbound.clear(),
            FromAgent::SendDtmf(digits) => {
                if let Err(why) = self.outbound.send_dtmf(&digits) {
                    tracing::info!(%digits, why, "agent's send_dtmf ignored");
                }
            }
            FromAgent::Hangup => {
                self.agent_open = false;
                let left = self.outbound.drain_time(now, self.hangup_drain_cap);
                self.draining = Some(now + left);
            }
            FromAgent::Failed(reason) => self.end(Some(reason)),
        }
    }

    /// The agent's messages ended (its channel closed): the call is lost, unless the
    /// agent had hung up and its last words are playing out.
    pub fn handle_agent_eof(&mut self) {
        self.agent_open = false;
        if self.ending.is_none() && self.draining.is_none() {
            self.end(Some(DisconnectionReason::ErrorLlmWebsocketLostConnection));
        }
    }

    /// An [`Event::Agent`] message found the agent's channel full and was dropped.
    pub fn handle_agent_full(&mut self) {
        self.stats.agent_dropped += 1;
        self.dropped(DropCause::AgentBackpressure);
    }

    /// The agent's channel is closed: nobody listens any more, and the call is lost.
    pub fn handle_agent_closed(&mut self) {
        self.agent_lost = true;
        if self.ending.is_none() {
            self.end(Some(DisconnectionReason::ErrorLlmWebsocketLostConnection));
        }
    }

    /// An instruction from signalling.
    pub fn handle_command(&mut self, now: Instant, cmd: MediaCommand) {
        if self.ending.is_some() {
            return;
        }
        match cmd {
            MediaCommand::Update(n) => self.update(n, now),
            MediaCommand::Answered(n) => {
                self.update(n, now);
                if std::mem::take(&mut self.early) {
                    // The answered stream may come from elsewhere (another SSRC, even
                    // another address): latch afresh, and time the audio from now.
                    self.latched = None;
                    self.rtcp_latched = None;
                    self.activity_since = now;
                    self.events.push_back(ToAgent::Answered);
                }
            }
            MediaCommand::Stop => self.close(),
        }
    }

    /// Ends the session with no reason (as [`MediaCommand::Stop`] does): the frames
    /// already due, the closing RTCP and the agent's `Stop` are queued, then
    /// [`Event::Ended`]. Does nothing once the session is ending.
    pub fn close(&mut self) {
        self.end(None);
    }

    /// What became of a [`Transmit`]: counts it as sent, or as dropped (`send_failed`).
    pub fn handle_sent(&mut self, transmit: &Transmit, result: io::Result<usize>) {
        let dest = transmit.destination;
        match (transmit.packet, result) {
            (Packet::Rtp, Ok(_)) => {
                self.stats.packets_out += 1;
                self.meters.packets_out.increment(1);
            }
            (Packet::Rtp, Err(e)) => {
                tracing::trace!(%dest, error = %e, "RTP send failed");
                self.dropped(DropCause::SendFailed);
            }
            (Packet::Rtcp, Ok(_)) => self.stats.rtcp_out += 1,
            (Packet::Rtcp, Err(e)) => tracing::trace!(%dest, error = %e, "RTCP send failed"),
        }
    }

    // ---- outputs ----

    /// The next datagram to send, written into `buf` (at least [`MAX_TRANSMIT`] bytes;
    /// a packet that does not fit is dropped as `send_failed`). Builds our RTP packets as
    /// the playout clock makes them due at `now` (none while we may not send: the clock
    /// still advances), then a regular RTCP report if one is due, then, when the session
    /// ends, the closing RTCP with BYE.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        if self.ending.is_some_and(|e| e.bye_done) {
            return None;
        }
        let send = self.sending();
        let dest = self.rtp_dest();
        loop {
            let failed = match self.outbound.poll(now, send && dest.is_some()) {
                Polled::Idle => break,
                Polled::Withheld => continue,
                Polled::Packet(p) => match (dest, self.protection.outgoing_rtp(p, buf)) {
                    (Some(destination), Ok(len)) => {
                        return Some(Transmit {
                            destination,
                            socket: Socket::Rtp,
                            packet: Packet::Rtp,
                            len,
                        })
                    }
                    (_, Err(cause)) => cause,
                    // Not built: the path withholds packets when told there is no
                    // destination.
                    (None, Ok(_)) => continue,
                },
            };
            self.dropped(failed);
        }
        self.account_losses();
        while let Some(name) = self.outbound.poll_mark() {
            self.events.push_back(ToAgent::MarkPlayed(name));
        }
        if std::mem::take(&mut self.rtcp_due) {
            if let Some(t) = self.write_rtcp(now, buf, false) {
                return Some(t);
            }
        }
        let ending = self.ending.as_mut()?;
        ending.bye_done = true;
        self.write_rtcp(now, buf, true)
    }

    /// The next thing the driver must act on: messages for the agent in order, then, once
    /// the session ended and its closing RTCP went out, `Stop` and [`Event::Ended`].
    pub fn poll_event(&mut self) -> Option<Event> {
        if self.agent_lost {
            self.events.clear();
        }
        if let Some(msg) = self.events.pop_front() {
            return Some(Event::Agent(msg));
        }
        let ending = self.ending.as_mut()?;
        if !ending.bye_done || ending.ended {
            return None;
        }
        if !std::mem::replace(&mut ending.stop_done, true) && !self.agent_lost {
            return Some(Event::Agent(ToAgent::Stop));
        }
        ending.ended = true;
        let reason = ending.reason;
        Some(Event::Ended(self.outcome(reason)))
    }

    /// When [`Session::handle_timeout`] must run next; `None` once the session is ending
    /// (only its goodbyes are left to poll).
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.ending.is_some() {
            return None;
        }
        let mut d = self
            .in_clock
            .next_due()
            .min(self.outbound.poll_timeout())
            .min(self.rtcp_timer.poll_timeout());
        if let Some(drain) = self.draining {
            d = d.min(drain);
        }
        if let Some((t, _)) = self.media_deadline() {
            d = d.min(t);
        }
        Some(d)
    }

    /// The counters so far (what [`Event::Ended`] will carry, as of now).
    pub fn stats(&self) -> MediaStats {
        self.outcome(None).stats
    }

    /// Whether the driver should still read the agent's messages (not after its hang-up,
    /// its end, or the session's).
    pub fn reads_agent(&self) -> bool {
        self.agent_open && self.ending.is_none()
    }

    // ---- internals ----

    fn end(&mut self, reason: Option<DisconnectionReason>) {
        if self.ending.is_some() {
            return;
        }
        tracing::debug!(reason = ?reason.map(|r| r.as_str()), "media session ending");
        self.ending = Some(Ending {
            reason,
            bye_done: false,
            stop_done: false,
            ended: false,
        });
    }

    fn outcome(&self, reason: Option<DisconnectionReason>) -> MediaOutcome {
        let mut stats = self.stats;
        stats.packets_lost = self.inbound.packets_lost();
        stats.concealed_frames = self.inbound.concealed_frames();
        MediaOutcome { reason, stats }
    }

    fn dropped(&mut self, cause: DropCause) {
        self.stats.packets_dropped += u64::from(cause != DropCause::AgentBackpressure);
        // ALL lists every variant in declaration order.
        self.meters.drops[cause as usize].increment(1);
    }

    /// Whether we may send RTP: our direction allows it and the caller does not hold us.
    fn sending(&self) -> bool {
        !self.early && self.negotiated.direction.sends() && !self.negotiated.remote_hold
    }

    /// Whether caller audio is expected (timeouts apply): a two-way, unheld call.
    fn expecting(&self) -> bool {
        !self.early
            && self.negotiated.direction == Direction::SendRecv
            && !self.negotiated.remote_hold
    }

    fn rtp_dest(&self) -> Option<SocketAddr> {
        self.latched.or_else(|| usable(self.negotiated.remote_rtp))
    }

    fn rtcp_dest(&self) -> Option<(SocketAddr, bool)> {
        if let Some(latched) = self.rtcp_latched {
            return Some(latched);
        }
        if self.negotiated.rtcp_mux {
            return self.rtp_dest().map(|a| (a, true));
        }
        match self.latched {
            Some(l) if l != self.negotiated.remote_rtp => {
                let port = l.port().checked_add(1)?;
                Some((SocketAddr::new(l.ip(), port), false))
            }
            _ => self
                .negotiated
                .remote_rtcp
                .and_then(usable)
                .map(|a| (a, false)),
        }
    }

    /// The wall-clock time at `now`, since the Unix epoch, from the anchor.
    fn wall_clock(&self, now: Instant) -> Duration {
        let (at, wall) = self.wall_anchor;
        let wall = match now.checked_duration_since(at) {
            Some(ahead) => wall.checked_add(ahead),
            None => wall.checked_sub(at.duration_since(now)),
        }
        .unwrap_or(wall);
        wall.duration_since(UNIX_EPOCH).unwrap_or_default()
    }

    /// Brings the slip and overflow counters up to date: audio lost to a late task or to
    /// an agent far ahead of real time is counted, never silent. A few compares per tick.
    fn account_losses(&mut self) {
        let slips_in = self.in_clock.skipped();
        let (slips_out, overflow_ms) = self.outbound.losses();
        let stats = &mut self.stats;
        if slips_in > stats.clock_slips_in {
            self.meters
                .slips_in
                .increment(slips_in - stats.clock_slips_in);
            stats.clock_slips_in = slips_in;
        }
        if slips_out > stats.clock_slips_out {
            self.meters
                .slips_out
                .increment(slips_out - stats.clock_slips_out);
            stats.clock_slips_out = slips_out;
        }
        if overflow_ms > stats.agent_overflow_ms {
            self.meters
                .overflow_ms
                .increment(overflow_ms - stats.agent_overflow_ms);
            stats.agent_overflow_ms = overflow_ms;
        }
    }

    /// The no-audio or inactivity deadline, with the reason it would end the call.
    fn media_deadline(&self) -> Option<(Instant, DisconnectionReason)> {
        if !self.expecting() {
            return None;
        }
        Some(match self.last_rtp {
            None => (
                self.activity_since + self.no_audio_timeout,
                DisconnectionReason::ErrorNoAudioReceived,
            ),
            Some(t) => (
                t.max(self.activity_since) + self.inactivity_timeout,
                DisconnectionReason::Inactivity,
            ),
        })
    }

    fn update(&mut self, n: Negotiated, now: Instant) {
        let was_expecting = self.expecting();
        if n.remote_rtp != self.negotiated.remote_rtp {
            // The caller moved: latch afresh onto whatever comes next.
            self.latched = None;
            self.rtcp_latched = None;
        }
        self.protection.update(n.srtp.as_ref());
        let params = StreamParams::from_negotiated(&n);
        self.inbound.reconfigure(params);
        for name in self.outbound.reconfigure(params) {
            self.events.push_back(ToAgent::MarkPlayed(name));
        }
        tracing::debug!(
            codec = ?n.codec, pt = n.payload_type, direction = ?n.direction,
            remote_hold = n.remote_hold, remote = %n.remote_rtp, "media updated"
        );
        self.negotiated = n;
        if !was_expecting && self.expecting() {
            self.activity_since = now;
        }
    }

    fn on_rtcp(&mut self, now: Instant, src: SocketAddr, datagram: &mut [u8], muxed: bool) {
        if self.latched.is_some_and(|l| l.ip() != src.ip()) {
            return self.dropped(DropCause::ForeignSource);
        }
        let len = match self.protection.incoming_rtcp(datagram) {
            Ok(len) => len,
            Err(cause) => return self.dropped(cause),
        };
        let Ok(compound) = parse_compound(&datagram[..len]) else {
            return self.dropped(DropCause::Malformed);
        };
        self.stats.rtcp_in += 1;
        // Latch RTCP only once RTP is latched, so the source IP was checked above.
        if self.rtcp_latched.is_none() && self.latched.is_some() {
            self.rtcp_latched = Some((src, muxed));
        }
        for packet in compound {
            match packet {
                RtcpPacket::SenderReport { ssrc, info, .. } => {
                    self.inbound.on_sender_report(ssrc, info.ntp, now);
                }
                RtcpPacket::Bye { .. } => tracing::debug!("caller sent RTCP BYE"),
                _ => {}
            }
        }
    }

    /// Writes a report (SR or RR, SDES CNAME), with BYE at the end of the session, into
    /// `buf`. `None` when there is nowhere to send it or it could not be written.
    fn write_rtcp(&mut self, now: Instant, buf: &mut [u8], bye: bool) -> Option<Transmit> {
        let (destination, muxed) = self.rtcp_dest()?;
        let block = self.inbound.report_block(now);
        let blocks = block.as_slice();
        let (packets, octets) = self.outbound.sent();
        let room = buf.len().min(RTCP_ROOM);
        let mut w = RtcpWriter::new(&mut buf[..room]);
        let report = if packets > self.packets_at_report {
            let info = SenderInfo {
                ntp: ntp_from_unix(self.wall_clock(now)),
                rtp_timestamp: self.outbound.rtp_timestamp_at(now),
                // The wire fields are 32 bits and wrap, as RFC 3550 intends.
                packet_count: packets as u32,
                octet_count: octets as u32,
            };
            w.sender_report(self.ssrc, &info, blocks)
        } else {
            w.receiver_report(self.ssrc, blocks)
        };
        self.packets_at_report = packets;
        let cname = self.cname.as_bytes();
        let cname = &cname[..cname.len().min(255)];
        let written = report
            .and_then(|()| w.sdes_cname(self.ssrc, cname))
            .and_then(|()| {
                if bye {
                    w.bye(&[self.ssrc], None)
                } else {
                    Ok(())
                }
            });
        // RTCP_ROOM holds SR + one block + SDES(255) + BYE: only a short `buf` fails.
        written.ok()?;
        let len = w.len();
        let len = self.protection.outgoing_rtcp(buf, len).ok()?;
        Some(Transmit {
            destination,
            socket: if muxed { Socket::Rtp } else { Socket::Rtcp },
            packet: Packet::Rtcp,
            len,
        })
    }
}
