//! The per-call media session: RTP/RTCP with the caller on one side, 20 ms frames of the
//! agent's audio format on the other.
//!
//! [`Session`] is the sans-IO core: it holds everything hot for one call (sequence
//! tracker, jitter buffer, codecs, resamplers, playout clock, SRTP contexts) and no
//! socket, channel, timer, clock or random source: time comes in as an
//! [`Instant`](std::time::Instant) with every input, the wall clock is derived from one
//! anchor taken at the start, and randomness from a seed. [`spawn`] runs it in a thin tokio task between the call's
//! RTP socket pair (from the [`ports`](crate::media::ports) pool) and the agent bridge's
//! channels ([`AgentLink`](crate::agent::AgentLink)). Nothing is shared with other calls
//! and nothing is locked per packet. Buffers are allocated when the session starts (or
//! when a re-INVITE changes the codec); the per-packet path does not allocate, except
//! that frames handed to the agent are `Bytes` split off a shared block, one block per 32
//! frames.
//!
//! The per-packet work lives in two plain structs the core drives and the benchmark
//! drives on its own: [`InboundPath`] (RTP → agent frames) and [`OutboundPath`] (agent
//! audio → RTP).
//!
//! # Policies
//! - **Symmetric RTP (latching).** Until the first valid RTP packet arrives we send to the
//!   SDP address. The source of the first packet that parses as RTP, carries a negotiated
//!   payload type and is accepted by the sequence tracker is latched, wherever it comes
//!   from (NAT often rewrites the SDP address); from then on we send there and drop (and
//!   count, `foreign_source`) datagrams from any other address. A re-INVITE that changes
//!   the SDP address unlatches. The first-packet race is the usual trade-off of latching:
//!   a spoofer that wins it gets the stream until the next re-INVITE.
//! - **RTCP.** Sent every ~5 s (randomised, [`RtcpTimer`](crate::media::rtcp::RtcpTimer)):
//!   SR when we sent RTP since the last report, else RR, with one report block once the
//!   caller's source is known, and SDES CNAME; SR + SDES + BYE when the session ends.
//!   Destination: the source of the caller's RTCP once seen (symmetric RTCP); else the RTP
//!   destination with rtcp-mux; else the latched RTP address' port + 1 when NAT moved it;
//!   else the SDP's RTCP address. RTCP is accepted on both ports (by
//!   [`is_rtcp`](crate::media::rtp::is_rtcp) on the RTP port) from the latched IP only.
//! - **Jitter.** Depth 2 packets (40 ms at 20 ms ptime) before playout starts, trimmed back
//!   to 5 (100 ms) when packets pile up: conversation wants low delay more than it wants
//!   to ride out rare long jitter. Inbound packets are released on a tick whose interval
//!   follows the caller's actual packet duration (payload length / 8 bytes per ms for all
//!   three codecs), and re-framed to exact 20 ms agent frames.
//! - **Loss.** A missing packet is replaced by silence of its length, and from the first
//!   frame on the agent receives exactly one frame per 20 ms (silence while the caller's
//!   stream is interrupted by DTMF, silence suppression or hold), so its timeline
//!   (`media.timestamp`) stays steady.
//! - **Hold.** While our direction does not allow sending or the caller holds us, we send
//!   no RTP. The playout clock keeps running (agent audio still plays out "into the void"
//!   and its marks are echoed), withheld frames take no sequence numbers, and the first
//!   packet after the hold carries the marker and a timestamp advanced by the hold's
//!   length, as after any silence. While the call is not two-way (our direction is not
//!   sendrecv, or the caller holds us) the no-audio and inactivity timeouts are suspended;
//!   they count again from the resume. Hold never hangs up.
//! - **Early media.** With [`SessionConfig::early`] the far end's audio reaches the agent
//!   but nothing is sent and no audio timeout runs until [`MediaCommand::Answered`], which
//!   latches afresh and tells the agent (`answered`).
//! - **Back-pressure.** Everything towards the agent is handed over without waiting: a
//!   full channel drops the message and counts it (`agent_backpressure`); a closed one
//!   ends the call.
//! - **Clock slips.** After a stall at most 3 overdue 20 ms slots run back to back in each
//!   direction; older ones are skipped and counted (`clock_slips_in`/`_out`).
//!
//! # Driving the session
//!
//! The task behind [`spawn`] does this; the tests do it on a virtual clock. As quinn-proto
//! documents for its `Connection`, the order matters:
//!
//! 1. **Create** the [`Session`] with the start instant, the wall-clock time at that
//!    instant, and a random seed.
//! 2. **Run the timers**: [`Session::handle_timeout`] with the current time. Do it before
//!    every flush, not only when [`Session::poll_timeout`] has passed: it is harmless when
//!    nothing is due, and a flood of datagrams then cannot starve the 20 ms clock.
//! 3. **Drain transmissions**: [`Session::poll_transmit`] with the same time until `None`;
//!    send each datagram from the port it names, and report the result with
//!    [`Session::handle_sent`] before polling again (it counts what went out). Outbound
//!    RTP is built here, on demand, from the playout clock, so this step is what paces
//!    our stream.
//! 4. **Drain events**: [`Session::poll_event`] until `None`; hand each
//!    [`Event::Agent`] message to the agent without waiting and report a full channel
//!    ([`Session::handle_agent_full`]) or a closed one ([`Session::handle_agent_closed`]).
//!    If anything was delivered, go back to step 3 (a closed channel ends the session,
//!    which queues the closing RTCP). [`Event::Ended`] is the last event: the session is
//!    over, with its [`MediaOutcome`].
//! 5. **Wait** until [`Session::poll_timeout`] (resetting the sleep only when the deadline
//!    changed) or an input: a datagram ([`Session::handle_rtp`], [`Session::handle_rtcp`]),
//!    a receive error ([`Session::handle_recv_error`]), a message from the agent
//!    ([`Session::handle_agent`], while [`Session::reads_agent`]; its end:
//!    [`Session::handle_agent_eof`]), a command ([`Session::handle_command`]; the handle
//!    dropped: [`Session::close`]). Then go back to step 2.
//!
//! Once the session has decided to end, inputs are ignored and [`Session::poll_timeout`]
//! is `None`: only its goodbyes are left to drain (steps 3 and 4).
//!
//! # Ending
//!
//! `Stop` (or the handle dropped) → reason `None`; agent `Hangup` → queued audio played
//! out (bounded by `hangup_drain_cap`) → `AgentHangup`; agent `Failed(r)` → `r`; agent
//! channels gone → `ErrorLlmWebsocketLostConnection`; no RTP within `no_audio_timeout` →
//! `ErrorNoAudioReceived`; RTP stopped for `inactivity_timeout` → `Inactivity`; 100
//! receive errors in a row → `ErrorUnknown`. In every case the frames already due go out,
//! then the caller gets an RTCP BYE (with SR or RR and SDES) and the agent
//! `ToAgent::Stop` (if it still listens), then [`Event::Ended`].
//!
//! # SRTP
//!
//! With SRTP keys in [`Negotiated`] every datagram is SRTP or SRTCP (`protection.rs`):
//! received ones are authenticated and decrypted in place before anything else looks at
//! them (so only an authentic packet can latch the source), sent ones are protected last,
//! in the buffer given to [`Session::poll_transmit`]. Packets that fail are dropped and
//! counted (`srtp_auth`, `srtp_replay`).

use std::time::Duration;

use crate::media::codec::Codec;
use crate::media::resample::Resampler;
use crate::model::{AudioEncoding, DisconnectionReason};
use crate::sdp::Negotiated;

mod core;
mod inbound;
mod outbound;
mod protection;
mod task;
mod ticker;

pub use self::core::{Event, Packet, Session, Socket, Transmit, MAX_TRANSMIT};
pub use inbound::{InboundPath, Received};
pub use outbound::{OutboundPath, Polled};
pub use task::{spawn, MediaHandle};

/// Our packetization bounds (the negotiated ptime is clamped into them).
const MIN_PTIME: u32 = 10;
const MAX_PTIME: u32 = 60;

/// What the engine gives a session.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub negotiated: Negotiated,
    pub agent_encoding: AudioEncoding,
    /// Ends the call (`error_no_audio_received`) when no RTP at all arrived this long
    /// after the start (or after a hold ended).
    pub no_audio_timeout: Duration,
    /// Ends the call (`inactivity`) when RTP stopped for this long (not while on hold).
    pub inactivity_timeout: Duration,
    /// Longest the agent's last words may play after it hangs up.
    pub hangup_drain_cap: Duration,
    /// Our RTP SSRC, random, chosen by the caller.
    pub ssrc: u32,
    /// RTCP CNAME (truncated to 255 bytes).
    pub cname: String,
    /// Outbound early media (a 18x with SDP, for an agent that asked for it): the far
    /// end's audio reaches the agent, but nothing is sent to it and no audio timeout runs
    /// until [`MediaCommand::Answered`].
    pub early: bool,
}

/// Signalling's instructions to a running session.
#[derive(Debug)]
pub enum MediaCommand {
    /// A re-INVITE or UPDATE settled: new remote address, codec, payload types, direction
    /// or hold. Applied without restarting the stream.
    Update(Negotiated),
    /// The far end answered (the 200's description): leave the early phase, start sending,
    /// start the audio timeouts, and tell the agent (`answered`).
    Answered(Negotiated),
    /// End the session (the caller hung up, the call is being torn down).
    Stop,
}

/// Counters of one session, returned when it ends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MediaStats {
    /// RTP packets accepted from the caller (audio and telephone-events).
    pub packets_in: u64,
    /// RTP packets sent to the caller.
    pub packets_out: u64,
    /// Caller packets never received (RFC 3550 cumulative loss, per source, summed).
    pub packets_lost: u64,
    /// Datagrams discarded: malformed, wrong payload type, foreign source, late, ...
    pub packets_dropped: u64,
    pub rtcp_in: u64,
    pub rtcp_out: u64,
    /// 20 ms frames handed to the agent channel.
    pub frames_to_agent: u64,
    /// Messages to the agent dropped because its channel was full.
    pub agent_dropped: u64,
    /// Frames of caller audio replaced by silence (loss, gaps).
    pub concealed_frames: u64,
    pub dtmf_in: u64,
    /// 20 ms slots passed over because the task fell behind the clock: caller frames the
    /// agent never got (`in`), packets never sent to the caller (`out`).
    pub clock_slips_in: u64,
    pub clock_slips_out: u64,
    /// Agent audio dropped because too much was queued ahead of real time, in ms.
    pub agent_overflow_ms: u64,
}

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediaOutcome {
    /// `None` when stopped by [`MediaCommand::Stop`] (or the handle was dropped).
    pub reason: Option<DisconnectionReason>,
    pub stats: MediaStats,
}

/// Why a datagram (or a message to the agent) was dropped; the metric's `cause` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropCause {
    /// Not parseable as RTP (or as RTCP on the RTCP path, or a bad event payload).
    Malformed,
    /// RTP with a payload type that was not negotiated.
    PayloadType,
    /// From an address other than the latched source.
    ForeignSource,
    /// Rejected by the sequence tracker (probation, a big unconfirmed jump, stale).
    Sequence,
    /// Rejected by the jitter buffer (late, duplicate, too large).
    Late,
    /// A message to the agent found its channel full.
    AgentBackpressure,
    /// The socket refused an outgoing datagram (or it could not be protected).
    SendFailed,
    /// SRTP/SRTCP whose authentication tag did not verify (or plain RTP where SRTP was
    /// negotiated).
    SrtpAuth,
    /// SRTP/SRTCP replayed, or older than the replay window.
    SrtpReplay,
}

impl DropCause {
    pub(super) const ALL: [DropCause; 9] = [
        DropCause::Malformed,
        DropCause::PayloadType,
        DropCause::ForeignSource,
        DropCause::Sequence,
        DropCause::Late,
        DropCause::AgentBackpressure,
        DropCause::SendFailed,
        DropCause::SrtpAuth,
        DropCause::SrtpReplay,
    ];

    pub fn label(self) -> &'static str {
        match self {
            DropCause::Malformed => "malformed",
            DropCause::PayloadType => "payload_type",
            DropCause::ForeignSource => "foreign_source",
            DropCause::Sequence => "sequence",
            DropCause::Late => "late",
            DropCause::AgentBackpressure => "agent_backpressure",
            DropCause::SendFailed => "send_failed",
            DropCause::SrtpAuth => "srtp_auth",
            DropCause::SrtpReplay => "srtp_replay",
        }
    }
}

/// The caller-side stream parameters both paths need, from [`Negotiated`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamParams {
    pub codec: Codec,
    pub payload_type: u8,
    pub telephone_event: Option<u8>,
    /// Our packetization in ms, clamped to 10..=60 and rounded down to 10 ms.
    pub ptime: u32,
}

impl StreamParams {
    pub fn new(codec: Codec, payload_type: u8, telephone_event: Option<u8>, ptime: u32) -> Self {
        Self {
            codec,
            payload_type,
            telephone_event,
            ptime: (ptime.clamp(MIN_PTIME, MAX_PTIME) / 10) * 10,
        }
    }

    pub fn from_negotiated(n: &Negotiated) -> Self {
        Self::new(n.codec, n.payload_type, n.telephone_event, n.ptime)
    }
}

/// A resampler between two of our rates (8, 16, 24 kHz), `None` when they are equal.
fn resampler(from: u32, to: u32) -> Option<Resampler> {
    if from == to {
        return None;
    }
    // Every ratio between 8, 16 and 24 kHz is supported (resample.rs tests them all), so
    // this only fails for rates we never pass; then audio passes unresampled, never panics.
    Resampler::new(from, to).ok()
}

#[cfg(test)]
mod tests;
