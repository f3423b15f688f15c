//! One call leg as a sans-IO state machine: everything a call decides between its INVITE
//! and its record, with no socket, task, clock or store in sight.
//!
//! The engine ([`crate::call::engine`]) owns the I/O: it routes the INVITE, binds the RTP
//! port, opens the agent's websocket, runs the media task, sends what the leg asks for and
//! writes the record. The leg decides: what to answer and when, which timer runs, how the
//! call ends and with which `disconnection_reason`, and whether a BYE is owed. So every
//! path a call can take is testable here in virtual time (see `tests`).
//!
//! A leg is made for an inbound call once it is routed and claimed ([`Leg::answer`]), or
//! for an outbound call once its INVITE is built ([`Leg::dial`]). From then on:
//!
//! ```text
//! inbound:  Ringing ──agent open──► Answered ──ACK──► Connected ──► (StoppingMedia) ──► ByeSent ──► Done
//! outbound: Dialling ──2xx──► Connecting ──agent open──► Connected ──► ...
//!           (early media: Dialling runs the agent and media before the 2xx)
//! ```
//!
//! # Driving a leg
//!
//! The driver keeps to this order, as the transaction machines document for theirs:
//!
//! 1. **Create** the leg. It queues its first actions (the 180 and the agent socket for an
//!    inbound leg, the INVITE for an outbound one).
//! 2. **Drain actions**: call [`Leg::poll_action`] until `None` and carry out each, in
//!    order. Actions that take time (opening the agent socket, sending a BYE, recording
//!    the answer) run concurrently with step 3; their results come back as inputs.
//! 3. **Feed one input**: a request, ACK or CANCEL the endpoint routed to this call, a
//!    response to our INVITE, a stop from the API, the result of an action, the end of the
//!    media session, or, once the deadline from step 4 has passed, [`Leg::handle_timeout`].
//! 4. **Check for the end**: once [`Leg::is_done`] (after draining step 2: the last action
//!    is always [`Action::Finish`]), drop the leg and everything it asked for. Otherwise
//!    sleep until [`Leg::poll_timeout`] and go back to step 2.
//!
//! Inputs that do not fit the current phase are ignored (logged at debug), never an error:
//! the network reorders and duplicates, and the leg must not care.

mod dial;
mod in_dialog;

pub use dial::{Dial, InviteFailure};
mod timers;

#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::{debug, info, warn};

use crate::call::rejection::Rejection;
use crate::media::codec::Codec;
use crate::model::DisconnectionReason;
use crate::sdp::{self, Answer, LocalMedia, Negotiated, Sdp};
use crate::sip::dialog::{Dialog, DialogKey};
use crate::sip::message::{Method, Request, Response};
use crate::sip::ua::ALLOW;
use timers::{Timer, Timers};

/// Names a server transaction the leg answers through. The driver keeps the handles.
pub type TxId = u64;

/// The INVITE that created an inbound leg.
pub const INVITE_TX: TxId = 0;

/// What a leg needs to know about its surroundings.
#[derive(Debug, Clone)]
pub struct LegConfig {
    /// The dialog runs over TCP or TLS: nothing resends our 2xx but us, and over a
    /// reliable transport we need not.
    pub reliable: bool,
    pub t1: Duration,
    pub t2: Duration,
    /// Our Contact in this dialog.
    pub contact: String,
    /// The call ends (`max_duration_reached`) this long after its media started.
    pub max_duration: Duration,
    /// How long the media session may take to stop, so the agent hears `stop`, before
    /// the BYE goes without waiting further.
    pub media_stop_wait: Duration,
}

/// What the leg asks its driver to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Send a response through a server transaction.
    Respond { tx: TxId, response: Response },
    /// The transaction will not be answered again: its handle may go.
    Release(TxId),
    /// The inbound INVITE was refused (its response is already queued, or for
    /// [`Rejection::Cancelled`] sent by the transaction): count it.
    Rejected(Rejection),
    /// Open the agent's websocket; answer with [`Leg::handle_agent`]. `early`: for early
    /// media (the agent is told so in `customParameters`).
    ConnectAgent { early: bool },
    /// The agent's socket is open but will never carry this call's media: send `stop`.
    StopAgent,
    /// Start the media session on the open agent socket.
    StartMedia { negotiated: Negotiated, early: bool },
    /// A renegotiation (re-INVITE, UPDATE, a new early SDP) changed the media.
    UpdateMedia(Negotiated),
    /// The early media session now carries the answered call.
    MediaAnswered(Negotiated),
    /// Stop the media session; answer with [`Leg::handle_media_ended`].
    StopMedia,
    /// Throw away what the RTP socket holds: early media nobody listened to.
    DiscardEarlyMedia,
    /// Record the answer (`ongoing`, start time, codec, SIP status); answer with
    /// [`Leg::handle_answer_recorded`], then `call_started` goes out.
    RecordAnswered { codec: Option<Codec>, status: u16 },
    /// Record the codec settled after the answer (our offer's answer came in the ACK).
    RecordCodec(Codec),
    /// Route in-dialog requests with this key to the leg (outbound, once answered).
    Dialog(DialogKey),
    /// Send our INVITE (the first, or one answering a digest challenge) in a new client
    /// transaction; its responses come back through [`Leg::handle_response`].
    SendInvite(Request),
    /// CANCEL our INVITE (sent as soon as a provisional allows).
    CancelInvite,
    /// Send the ACK of a 2xx to our INVITE.
    SendAck(Request),
    /// Send a BYE in a client transaction; its outcome comes back through
    /// [`Leg::handle_bye_done`].
    SendBye(Request),
    /// The leg is over: record how it ended. Always the last action.
    Finish {
        reason: DisconnectionReason,
        status: Option<u16>,
    },
}

/// How a call ends, decided where it happens and carried out by [`Leg::end`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ending {
    reason: DisconnectionReason,
    /// We still owe the far end a BYE.
    send_bye: bool,
    /// The SIP status to record when no BYE is sent (a failed dial's final response).
    status: Option<u16>,
}

impl Ending {
    fn bye(reason: DisconnectionReason) -> Ending {
        Ending {
            reason,
            send_bye: true,
            status: None,
        }
    }

    fn quiet(reason: DisconnectionReason, status: Option<u16>) -> Ending {
        Ending {
            reason,
            send_bye: false,
            status,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Inbound: 180 sent; the agent's socket is opening.
    Ringing,
    /// Inbound: 200 sent; waiting for its ACK.
    Answered,
    /// Outbound: our INVITE is out. `cancelled` once we asked for a CANCEL, with the
    /// reason the call ends with whatever answer comes.
    Dialling {
        cancelled: Option<DisconnectionReason>,
    },
    /// Outbound: answered and ACKed; the agent's socket is opening.
    Connecting,
    /// Media runs: the call is up.
    Connected,
    /// Ending: the media session is stopping (bounded by `media_stop_wait`).
    StoppingMedia,
    /// Our BYE is out; its final response (or timeout) ends the leg.
    ByeSent,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AgentState {
    Idle,
    Opening {
        early: bool,
    },
    /// Open, media not started on it.
    Open,
    /// Handed to the media session, or stopped.
    Gone,
}

/// Our 2xx to an INVITE, resent until its ACK (RFC 3261 §13.3.1.4).
#[derive(Debug, Clone)]
struct Unacked {
    tx: TxId,
    cseq: u32,
    ok: Response,
    interval: Duration,
}

/// Which side dialled, and what only that side needs.
#[derive(Debug)]
enum Side {
    /// We answer `invite`; `tag` is our To tag in every response to it.
    Inbound {
        invite: Box<Request>,
        tag: String,
    },
    Outbound(Box<dial::Dialling>),
}

/// One call leg. See the module docs for how to drive it.
#[derive(Debug)]
pub struct Leg {
    cfg: LegConfig,
    side: Side,
    phase: Phase,
    timers: Timers,
    actions: VecDeque<Action>,
    local: LocalMedia,
    /// The dialog, once there is one (inbound: from the start; outbound: at the 2xx).
    dialog: Option<Dialog>,
    /// The current answer, when the far end made the offer (renegotiations update it).
    answer: Option<Answer>,
    /// Our offer whose answer is still to come: in the 200 to an INVITE without SDP, or
    /// in the 200 to a re-INVITE without SDP. The ACK carries the answer.
    pending_offer: Option<Sdp>,
    unacked: Option<Unacked>,
    agent: AgentState,
    /// A media session runs (or is stopping).
    media: bool,
    /// Set once the call's end is decided.
    ending: Option<Ending>,
}

impl Leg {
    /// An inbound leg for a routed, claimed INVITE: rings (180) and opens the agent's
    /// socket. `answer` is ours to the INVITE's offer; `None` when it carried no SDP (our
    /// offer then goes in the 200 and the answer comes in the ACK).
    pub fn answer(
        cfg: LegConfig,
        invite: Request,
        dialog: Dialog,
        local: LocalMedia,
        answer: Option<Answer>,
    ) -> Leg {
        let side = Side::Inbound {
            invite: Box::new(invite),
            tag: dialog.key.local_tag.clone(),
        };
        let mut leg = Leg::new(cfg, side, local);
        leg.dialog = Some(dialog);
        leg.answer = answer;
        leg.phase = Phase::Ringing;
        let ringing = leg.invite_response(180, "Ringing");
        leg.push(Action::Respond {
            tx: INVITE_TX,
            response: ringing,
        });
        leg.open_agent(false);
        leg
    }

    fn new(cfg: LegConfig, side: Side, local: LocalMedia) -> Leg {
        Leg {
            cfg,
            side,
            phase: Phase::Done,
            timers: Timers::default(),
            actions: VecDeque::new(),
            local,
            dialog: None,
            answer: None,
            pending_offer: None,
            unacked: None,
            agent: AgentState::Idle,
            media: false,
            ending: None,
        }
    }

    // -----------------------------------------------------------------------------------
    // Outputs

    /// The next thing to do. Drain after every input.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`Leg::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    /// True once the leg has finished ([`Action::Finish`] queued).
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    fn push(&mut self, action: Action) {
        self.actions.push_back(action);
    }

    // -----------------------------------------------------------------------------------
    // Inputs

    /// Runs the timers due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(timer) = self.timers.expired(now) {
            match timer {
                Timer::Resend2xx => self.resend_2xx(now),
                Timer::AckWait => {
                    if let Some(unacked) = self.unacked.take() {
                        warn!(
                            cseq = unacked.cseq,
                            "no ACK for our 200 within 64*T1; ending the call"
                        );
                        self.timers.clear(Timer::Resend2xx);
                        self.push(Action::Release(unacked.tx));
                        self.end(now, Ending::bye(DisconnectionReason::ErrorUnknown));
                    }
                }
                Timer::MaxDuration => {
                    if self.phase == Phase::Connected {
                        info!("maximum call duration reached");
                        self.end(now, Ending::bye(DisconnectionReason::MaxDurationReached));
                    }
                }
                Timer::Ring => self.ring_timeout(),
                Timer::MediaStop => {
                    if self.phase == Phase::StoppingMedia {
                        debug!("media session slow to stop; ending without it");
                        self.media = false;
                        self.after_media();
                    }
                }
            }
        }
    }

    /// The API stopped the call.
    pub fn handle_stop(&mut self, now: Instant) {
        match self.phase {
            Phase::Ringing => self.reject(Rejection::Stopped),
            Phase::Dialling { cancelled: None } => self.cancel(DisconnectionReason::ManualStopped),
            Phase::Answered | Phase::Connecting | Phase::Connected => {
                self.end(now, Ending::bye(DisconnectionReason::ManualStopped))
            }
            _ => debug!(phase = ?self.phase, "stop ignored"),
        }
    }

    /// A CANCEL ended the INVITE transaction (the endpoint answered 487).
    pub fn handle_cancel(&mut self) {
        if self.phase == Phase::Ringing {
            info!("caller cancelled while ringing");
            self.reject(Rejection::Cancelled);
        }
    }

    /// The agent's socket opened (`true`) or could not (`false`).
    pub fn handle_agent(&mut self, now: Instant, opened: bool) {
        let AgentState::Opening { early } = self.agent else {
            return;
        };
        if self.is_done() {
            // The driver drops whatever it was still opening with the leg.
            return;
        }
        self.agent = if opened {
            AgentState::Open
        } else {
            AgentState::Idle
        };
        match (self.phase, opened) {
            (Phase::Ringing, true) => self.send_200(now),
            (Phase::Ringing, false) => self.reject(Rejection::AgentUnreachable),
            (Phase::Dialling { cancelled: None }, true) if early => self.start_early_media(),
            (Phase::Dialling { cancelled: None }, false) => {
                warn!("agent websocket did not open for early media");
                self.cancel(DisconnectionReason::ErrorLlmWebsocketOpen);
            }
            (Phase::Connecting, true) => {
                let negotiated = self.dialling().and_then(|d| d.answered.clone());
                match negotiated {
                    Some((negotiated, status)) => {
                        // Opened for early media that the answer overtook: it still
                        // learns that the call was answered.
                        self.start_media(negotiated.clone(), early);
                        if early {
                            self.push(Action::MediaAnswered(negotiated.clone()));
                        }
                        self.connected(now);
                        self.push(Action::RecordAnswered {
                            codec: Some(negotiated.codec),
                            status,
                        });
                    }
                    None => self.end(now, Ending::bye(DisconnectionReason::ErrorUnknown)),
                }
            }
            (Phase::Connecting, false) => {
                warn!("agent websocket did not open; hanging up");
                self.end(now, Ending::bye(DisconnectionReason::ErrorLlmWebsocketOpen));
            }
            // Opened for nothing: the call moved on while it opened.
            (_, true) => {
                self.agent = AgentState::Gone;
                self.push(Action::StopAgent);
            }
            (_, false) => {}
        }
    }

    /// The answer was recorded; `live` is false when the API had already settled the
    /// record (stopped, or ended some other way) while the call was being set up.
    pub fn handle_answer_recorded(&mut self, now: Instant, live: bool) {
        if !live && matches!(self.phase, Phase::Answered | Phase::Connected) {
            info!("the call was settled through the API while being answered; hanging up");
            self.end(now, Ending::bye(DisconnectionReason::ManualStopped));
        }
    }

    /// The media session ended on its own (`Some(reason)`: the agent hung up after its
    /// last words played, the agent's socket failed, no audio...), or after
    /// [`Action::StopMedia`] (`None`).
    pub fn handle_media_ended(&mut self, now: Instant, reason: Option<DisconnectionReason>) {
        if !self.media {
            return;
        }
        self.media = false;
        match self.phase {
            Phase::StoppingMedia => self.after_media(),
            Phase::Connected => {
                let reason = reason.unwrap_or(DisconnectionReason::ErrorUnknown);
                info!(reason = reason.as_str(), "media session ended the call");
                self.end(now, Ending::bye(reason));
            }
            Phase::Dialling { cancelled: None } => {
                let reason = reason.unwrap_or(DisconnectionReason::ErrorUnknown);
                info!(
                    reason = reason.as_str(),
                    "agent ended the call during early media; cancelling"
                );
                self.cancel(reason);
            }
            _ => {}
        }
    }

    /// The final response to our BYE arrived (`None`: none did, or it could not be sent).
    pub fn handle_bye_done(&mut self, status: Option<u16>) {
        if self.phase != Phase::ByeSent {
            return;
        }
        let reason = self
            .ending
            .map_or(DisconnectionReason::ErrorUnknown, |e| e.reason);
        self.finish(reason, status);
    }

    // -----------------------------------------------------------------------------------
    // Inbound set-up

    fn inbound_invite(&self) -> Option<&Request> {
        match &self.side {
            Side::Inbound { invite, .. } => Some(invite),
            Side::Outbound(_) => None,
        }
    }

    /// A response to the inbound INVITE, with our tag (and Contact on 101–299). Only an
    /// inbound leg answers an INVITE; on an outbound one this is an empty response.
    fn invite_response(&self, status: u16, reason: &str) -> Response {
        let mut resp = match &self.side {
            Side::Inbound { invite, tag } => {
                Response::for_request(invite, status, reason, Some(tag))
            }
            Side::Outbound(_) => Response {
                status,
                reason: reason.to_string(),
                headers: Default::default(),
                body: Bytes::new(),
            },
        };
        if status > 100 && status < 300 {
            resp.headers.push("Contact", self.cfg.contact.as_str());
        }
        resp
    }

    /// The agent's socket is open: answer with our SDP (the answer, or our offer when the
    /// INVITE had none), record the answer, and wait for the ACK.
    fn send_200(&mut self, now: Instant) {
        let body = match &self.answer {
            Some(answer) => answer.sdp.to_string(),
            None => {
                let offer = sdp::offer(&self.local);
                let text = offer.to_string();
                self.pending_offer = Some(offer);
                text
            }
        };
        let mut ok = self.invite_response(200, "OK");
        ok.headers.push("Allow", ALLOW);
        ok.headers.push("Content-Type", "application/sdp");
        ok.body = Bytes::from(body);
        let cseq = self
            .inbound_invite()
            .and_then(|i| i.cseq())
            .map_or(0, |c| c.seq);
        self.phase = Phase::Answered;
        self.push(Action::Respond {
            tx: INVITE_TX,
            response: ok.clone(),
        });
        self.push(Action::RecordAnswered {
            codec: self.answer.as_ref().map(|a| a.negotiated.codec),
            status: 200,
        });
        self.await_ack(now, INVITE_TX, cseq, ok);
    }

    /// The ACK of our 200 to the INVITE: media starts on what offer and answer agreed.
    fn on_first_ack(&mut self, now: Instant, ack: &Request) {
        let negotiated = match (&self.answer, self.pending_offer.take()) {
            (Some(answer), _) => Ok(answer.negotiated.clone()),
            (None, Some(offer)) => accept(&offer, &ack.body).inspect(|n| {
                self.push(Action::RecordCodec(n.codec));
            }),
            (None, None) => Err("no offer or answer to start media with".to_string()),
        };
        match negotiated {
            Ok(negotiated) => {
                self.start_media(negotiated, false);
                self.connected(now);
            }
            Err(err) => {
                warn!(%err, "ACK carried no usable SDP answer");
                self.end(now, Ending::bye(DisconnectionReason::ErrorUnknown));
            }
        }
    }

    /// Refuses the inbound INVITE as the rejection table says, and finishes.
    fn reject(&mut self, rejection: Rejection) {
        if rejection != Rejection::Cancelled {
            if let Side::Inbound { invite, tag } = &self.side {
                let response = rejection.response(invite, tag, None);
                self.push(Action::Respond {
                    tx: INVITE_TX,
                    response,
                });
            }
        }
        self.push(Action::Rejected(rejection));
        self.push(Action::Release(INVITE_TX));
        if self.agent == AgentState::Open {
            self.agent = AgentState::Gone;
            self.push(Action::StopAgent);
        }
        let row = rejection.row();
        self.finish(
            row.reason.unwrap_or(DisconnectionReason::ErrorUnknown),
            Some(row.status),
        );
    }

    // -----------------------------------------------------------------------------------
    // Both sides

    fn open_agent(&mut self, early: bool) {
        self.agent = AgentState::Opening { early };
        self.push(Action::ConnectAgent { early });
    }

    fn start_media(&mut self, negotiated: Negotiated, early: bool) {
        self.agent = AgentState::Gone;
        self.media = true;
        self.push(Action::StartMedia { negotiated, early });
    }

    /// Media runs: the call is up until something ends it.
    fn connected(&mut self, now: Instant) {
        self.phase = Phase::Connected;
        self.timers
            .set(Timer::MaxDuration, now + self.cfg.max_duration);
    }

    /// Resends `ok` (unreliable transports) until the ACK of `cseq` comes, and gives up
    /// after 64·T1.
    fn await_ack(&mut self, now: Instant, tx: TxId, cseq: u32, ok: Response) {
        if !self.cfg.reliable {
            self.timers.set(Timer::Resend2xx, now + self.cfg.t1);
        }
        self.timers.set(Timer::AckWait, now + self.cfg.t1 * 64);
        self.unacked = Some(Unacked {
            tx,
            cseq,
            ok,
            interval: self.cfg.t1,
        });
    }

    fn resend_2xx(&mut self, now: Instant) {
        let Some(unacked) = self.unacked.as_mut() else {
            return;
        };
        let again = Action::Respond {
            tx: unacked.tx,
            response: unacked.ok.clone(),
        };
        unacked.interval = (unacked.interval * 2).min(self.cfg.t2);
        let next = now + unacked.interval;
        self.push(again);
        self.timers.set(Timer::Resend2xx, next);
    }

    /// An ACK for the dialog: it confirms our 2xx when the CSeq matches.
    pub fn handle_ack(&mut self, now: Instant, ack: &Request) {
        let cseq = ack.cseq().map(|c| c.seq);
        let matches = self.unacked.as_ref().is_some_and(|u| Some(u.cseq) == cseq);
        let first = self.phase == Phase::Answered;
        if matches || first {
            if let Some(unacked) = self.unacked.take() {
                self.timers.clear(Timer::Resend2xx);
                self.timers.clear(Timer::AckWait);
                self.push(Action::Release(unacked.tx));
            }
        }
        if first {
            self.on_first_ack(now, ack);
        } else if matches && self.phase == Phase::Connected {
            self.answer_in_ack(ack);
        }
    }

    /// Ends the call: stops its media (waiting a moment, so the agent hears `stop`), then
    /// sends the BYE we owe, then finishes. The first ending decided wins.
    fn end(&mut self, now: Instant, ending: Ending) {
        if self.ending.is_some() || self.phase == Phase::Done {
            return;
        }
        self.ending = Some(ending);
        self.timers.clear(Timer::MaxDuration);
        self.timers.clear(Timer::Ring);
        if let Some(unacked) = self.unacked.take() {
            self.timers.clear(Timer::Resend2xx);
            self.timers.clear(Timer::AckWait);
            self.push(Action::Release(unacked.tx));
        }
        if self.agent == AgentState::Open {
            self.agent = AgentState::Gone;
            self.push(Action::StopAgent);
        }
        if self.media {
            self.phase = Phase::StoppingMedia;
            self.push(Action::StopMedia);
            self.timers
                .set(Timer::MediaStop, now + self.cfg.media_stop_wait);
        } else {
            self.after_media();
        }
    }

    /// The media session is gone: BYE if we owe one, else the end.
    fn after_media(&mut self) {
        self.timers.clear(Timer::MediaStop);
        let Some(ending) = self.ending else {
            return;
        };
        match self.dialog.as_mut().filter(|_| ending.send_bye) {
            Some(dialog) => {
                let mut bye = dialog.request(Method::Bye, &self.cfg.contact, None);
                bye.headers.push(
                    "Reason",
                    format!("SIP;cause=200;text=\"{}\"", ending.reason.as_str()),
                );
                self.phase = Phase::ByeSent;
                self.push(Action::SendBye(bye));
            }
            None => self.finish(ending.reason, ending.status),
        }
    }

    fn finish(&mut self, reason: DisconnectionReason, status: Option<u16>) {
        self.timers = Timers::default();
        self.phase = Phase::Done;
        self.push(Action::Finish { reason, status });
    }
}

/// What an SDP answer in `body` to our `offer` agrees, or why it does not.
fn accept(offer: &Sdp, body: &[u8]) -> Result<Negotiated, String> {
    Sdp::parse(body)
        .map_err(|e| e.to_string())
        .and_then(|answer| sdp::accept_answer(offer, &answer).map_err(|e| e.to_string()))
}
