//! The outbound leg until it is answered: our INVITE, digest challenges, ringing with early
//! media, CANCEL when the ring time runs out (or the call is stopped, or an early-media
//! agent gives up), and the 2xx that makes the dialog. Every failure maps to its
//! `not_connected` reason ([`dial_failure`]).
//!
//! Early media (a 180/183 with SDP) is negotiated as it comes. It reaches the agent only
//! when the agent asked for it (`forward_early_media`): then the agent's socket opens at
//! the first early SDP and media starts in its early mode (nothing sent to the far end);
//! the 2xx turns it into the answered call. Otherwise the agent's socket opens at the
//! answer, as with Twilio's `<Connect><Stream>`, and the early media the RTP socket held
//! is thrown away.

use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use super::{accept, Action, AgentState, Ending, Leg, LegConfig, Phase, Side, Timer};
use crate::call::rejection::dial_failure;
use crate::model::DisconnectionReason;
use crate::sdp::{LocalMedia, Negotiated, Sdp};
use crate::sip::auth::Authenticator;
use crate::sip::dialog::Dialog;
use crate::sip::message::{Request, Response};
use crate::sip::transport::Target;

/// What an outbound leg starts from.
#[derive(Debug)]
pub struct Dial {
    /// Our INVITE, without Via (the endpoint adds it), carrying `offer`.
    pub request: Request,
    /// Where it goes: the dialog's flow once answered.
    pub target: Target,
    pub local: LocalMedia,
    pub offer: Sdp,
    /// The trunk's credentials, when it has any.
    pub auth: Option<Authenticator>,
    /// How long the far end may ring before we CANCEL.
    pub ring: Duration,
    /// The agent hears early media (see the module docs).
    pub forward_early_media: bool,
}

/// Why our INVITE got no final response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InviteFailure {
    /// Timer B: nothing came back within 64·T1.
    Timeout,
    /// The transport could not deliver it (connection refused, TLS failure, ...).
    Unreachable,
    /// It could not even be sent (the endpoint refused it as malformed: our bug).
    NotSent,
}

/// What an outbound leg carries on top of the common state.
#[derive(Debug)]
pub(super) struct Dialling {
    /// Our INVITE as last sent (a digest retry replaces it).
    request: Request,
    target: Target,
    offer: Sdp,
    auth: Option<Authenticator>,
    forward_early_media: bool,
    /// What the latest early SDP agreed: a 2xx without SDP falls back to it.
    early: Option<Negotiated>,
    /// The ACK of the 2xx, sent again for each retransmission of it.
    ack: Option<Request>,
    /// What the 2xx agreed, and its status, until media starts on it.
    pub(super) answered: Option<(Negotiated, u16)>,
}

impl Leg {
    /// An outbound leg: sends the INVITE and lets it ring for `dial.ring`.
    pub fn dial(now: Instant, cfg: LegConfig, dial: Dial) -> Leg {
        let request = dial.request.clone();
        let ring = dial.ring;
        let dialling = Dialling {
            request: dial.request,
            target: dial.target,
            offer: dial.offer,
            auth: dial.auth,
            forward_early_media: dial.forward_early_media,
            early: None,
            ack: None,
            answered: None,
        };
        let mut leg = Leg::new(cfg, Side::Outbound(Box::new(dialling)), dial.local);
        leg.phase = Phase::Dialling { cancelled: None };
        leg.timers.set(Timer::Ring, now + ring);
        leg.push(Action::SendInvite(request));
        leg
    }

    pub(super) fn dialling(&self) -> Option<&Dialling> {
        match &self.side {
            Side::Outbound(d) => Some(d),
            Side::Inbound { .. } => None,
        }
    }

    fn dialling_mut(&mut self) -> Option<&mut Dialling> {
        match &mut self.side {
            Side::Outbound(d) => Some(d),
            Side::Inbound { .. } => None,
        }
    }

    /// A response to our INVITE: provisionals (maybe with early SDP), challenges, the
    /// final answer, and every retransmission of a 2xx (each needs its ACK again).
    pub fn handle_response(&mut self, now: Instant, resp: &Response) {
        let Phase::Dialling { cancelled } = self.phase else {
            if (200..300).contains(&resp.status) {
                // A retransmitted 2xx: our ACK was lost.
                if let Some(ack) = self.dialling().and_then(|d| d.ack.clone()) {
                    self.push(Action::SendAck(ack));
                }
            }
            return;
        };
        match resp.status {
            100 => {}
            101..=199 => {
                info!(status = resp.status, "far end progress");
                if !resp.body.is_empty() && cancelled.is_none() {
                    self.early_sdp(resp);
                }
            }
            200..=299 => self.on_2xx(now, resp, cancelled),
            401 | 407 if cancelled.is_none() => self.answer_challenge(now, resp),
            status => {
                let reason = cancelled.unwrap_or_else(|| dial_failure(status));
                info!(
                    status,
                    reason = reason.as_str(),
                    "outbound call not connected"
                );
                self.end(now, Ending::quiet(reason, Some(status)));
            }
        }
    }

    /// Our INVITE got no final response at all.
    pub fn handle_invite_failed(&mut self, now: Instant, failure: InviteFailure) {
        let Phase::Dialling { cancelled } = self.phase else {
            return;
        };
        let reason = match failure {
            InviteFailure::Timeout | InviteFailure::NotSent => {
                cancelled.unwrap_or(DisconnectionReason::DialFailed)
            }
            InviteFailure::Unreachable => DisconnectionReason::TelephonyProviderUnavailable,
        };
        info!(
            ?failure,
            reason = reason.as_str(),
            "outbound call not connected"
        );
        self.end(now, Ending::quiet(reason, None));
    }

    /// A 401/407: the INVITE again with credentials, once per challenge.
    fn answer_challenge(&mut self, now: Instant, resp: &Response) {
        let retried = self.dialling_mut().and_then(|d| {
            let auth = d.auth.as_mut()?;
            Some(auth.retry(&d.request, resp))
        });
        match retried {
            Some(Ok(next)) => {
                if let Some(d) = self.dialling_mut() {
                    d.request = next.clone();
                }
                self.push(Action::SendInvite(next));
            }
            refused => {
                let why = match refused {
                    Some(Err(err)) => err.to_string(),
                    _ => "no credentials for this trunk".to_string(),
                };
                warn!(status = resp.status, %why, "trunk refused our credentials (or none are set)");
                self.end(
                    now,
                    Ending::quiet(
                        DisconnectionReason::TelephonyProviderPermissionDenied,
                        Some(resp.status),
                    ),
                );
            }
        }
    }

    /// A provisional with SDP: early media. The agent hears it only when it asked to.
    fn early_sdp(&mut self, resp: &Response) {
        let Some(d) = self.dialling() else { return };
        let negotiated = match accept(&d.offer, &resp.body) {
            Ok(n) => n,
            Err(err) => {
                info!(status = resp.status, %err, "early SDP unusable: ignored");
                return;
            }
        };
        let forward = d.forward_early_media;
        info!(
            status = resp.status,
            codec = negotiated.codec.encoding_name(),
            remote = %negotiated.remote_rtp,
            to_agent = forward,
            "early media"
        );
        if self.media {
            self.push(Action::UpdateMedia(negotiated.clone()));
        } else if forward && self.agent == AgentState::Idle {
            self.open_agent(true);
        }
        if let Some(d) = self.dialling_mut() {
            d.early = Some(negotiated);
        }
    }

    /// The agent's socket opened for early media: start it on the latest early SDP.
    pub(super) fn start_early_media(&mut self) {
        match self.dialling().and_then(|d| d.early.clone()) {
            Some(negotiated) => self.start_media(negotiated, true),
            None => {
                self.agent = AgentState::Gone;
                self.push(Action::StopAgent);
            }
        }
    }

    /// The far end answered: ACK, the dialog, then the agent and media (or, when we had
    /// cancelled and the answer crossed our CANCEL, a BYE).
    fn on_2xx(&mut self, now: Instant, resp: &Response, cancelled: Option<DisconnectionReason>) {
        let Some(d) = self.dialling() else { return };
        let dialog = match Dialog::from_response(&d.request, resp, d.target) {
            Ok(dialog) => dialog,
            Err(err) => {
                warn!(%err, "2xx without what a dialog needs");
                return self.end(
                    now,
                    Ending::quiet(DisconnectionReason::ErrorUnknown, Some(resp.status)),
                );
            }
        };
        let cseq = d.request.cseq().map_or(1, |c| c.seq);
        let ack = dialog.ack(cseq);
        let negotiated = if resp.body.is_empty() {
            d.early
                .clone()
                .ok_or_else(|| "2xx without an SDP answer to our offer".to_string())
        } else {
            accept(&d.offer, &resp.body)
        };
        // Early media nobody listened to, and nobody will: the agent did not ask for it.
        let discard = d.early.is_some() && !d.forward_early_media;
        self.push(Action::SendAck(ack.clone()));
        self.push(Action::Dialog(dialog.key.clone()));
        self.dialog = Some(dialog);
        if let Some(d) = self.dialling_mut() {
            d.ack = Some(ack);
        }
        if let Some(reason) = cancelled {
            info!(
                reason = reason.as_str(),
                "answered after we cancelled; hanging up"
            );
            return self.end(now, Ending::bye(reason));
        }
        let negotiated = match negotiated {
            Ok(n) => n,
            Err(err) => {
                warn!(%err, "the trunk's SDP answer is unusable");
                return self.end(now, Ending::bye(DisconnectionReason::ErrorUnknown));
            }
        };
        if resp.body.is_empty() {
            info!("2xx without SDP: the early media's answer stands");
        }
        if self.media {
            // The early session carries on as the answered call.
            self.push(Action::MediaAnswered(negotiated.clone()));
            self.connected(now);
            self.push(Action::RecordAnswered {
                codec: Some(negotiated.codec),
                status: resp.status,
            });
            return;
        }
        if discard {
            debug!("early media the agent did not ask for: dropped");
            self.push(Action::DiscardEarlyMedia);
        }
        if let Some(d) = self.dialling_mut() {
            d.answered = Some((negotiated, resp.status));
        }
        self.phase = Phase::Connecting;
        self.timers.clear(Timer::Ring);
        if self.agent == AgentState::Idle {
            self.open_agent(false);
        }
    }

    /// Gives up on the INVITE: CANCEL, and end with `reason` whatever comes back.
    pub(super) fn cancel(&mut self, reason: DisconnectionReason) {
        if let Phase::Dialling { cancelled: None } = self.phase {
            self.phase = Phase::Dialling {
                cancelled: Some(reason),
            };
            self.timers.clear(Timer::Ring);
            self.push(Action::CancelInvite);
        }
    }

    pub(super) fn ring_timeout(&mut self) {
        if let Phase::Dialling { cancelled: None } = self.phase {
            info!("no answer within the ring time; cancelling");
            self.cancel(DisconnectionReason::DialNoAnswer);
        }
    }
}
