//! Requests the far end sends inside the dialog: BYE, re-INVITE and UPDATE (hold, unhold,
//! codec or address changes; RFC 3264 offers in either direction), and anything else
//! (INFO, OPTIONS) answered 200. Our 2xx to a re-INVITE is resent until its ACK by the
//! same machinery as the first one ([`Leg::await_ack`]).

use std::time::Instant;

use bytes::Bytes;
use tracing::{debug, info, warn};

use super::{accept, Action, Ending, Leg, Phase, TxId, INVITE_TX};
use crate::call::rejection::Rejection;
use crate::model::DisconnectionReason;
use crate::sdp::{self, Sdp};
use crate::sip::message::{Method, Request, Response};
use crate::sip::ua::ALLOW;

impl Leg {
    /// A request inside the call's dialog, with the server transaction it came in.
    pub fn handle_request(&mut self, now: Instant, tx: TxId, req: &Request) {
        let bye = req.method == Method::Bye;
        match self.phase {
            Phase::Connected => self.while_connected(now, tx, req),
            Phase::Ringing if bye => {
                // RFC 3261 §15: a caller may end an early dialog with BYE; the INVITE
                // then gets 487 (§15.1.2).
                info!("caller hung up (BYE) while ringing");
                self.respond_final(tx, Response::for_request(req, 200, "OK", None));
                let terminated = self.invite_response(487, "Request Terminated");
                self.push(Action::Respond {
                    tx: INVITE_TX,
                    response: terminated,
                });
                self.reject(Rejection::Cancelled);
            }
            Phase::Answered | Phase::Connecting if bye => {
                info!("caller hung up before the call was up");
                self.respond_final(tx, Response::for_request(req, 200, "OK", None));
                self.end(now, Ending::quiet(DisconnectionReason::UserHangup, None));
            }
            // Our BYE crossed theirs, or the media is stopping: the dialog ends anyway.
            Phase::StoppingMedia | Phase::ByeSent if bye => {
                self.respond_final(tx, Response::for_request(req, 200, "OK", None))
            }
            // RFC 3261 §14.2: no new offer before the first offer/answer completes.
            Phase::Ringing | Phase::Answered | Phase::Connecting => {
                self.respond_final(tx, Response::for_request(req, 491, "Request Pending", None))
            }
            _ => self.respond_final(
                tx,
                Response::for_request(req, 481, "Call/Transaction Does Not Exist", None),
            ),
        }
    }

    fn while_connected(&mut self, now: Instant, tx: TxId, req: &Request) {
        if let (Some(cseq), Some(dialog)) = (req.cseq(), self.dialog.as_mut()) {
            if !dialog.accept_remote_cseq(cseq.seq) {
                let resp = Response::for_request(
                    req,
                    500,
                    "Server Internal Error (CSeq out of order)",
                    None,
                );
                return self.respond_final(tx, resp);
            }
        }
        match req.method {
            Method::Bye => {
                info!("far end hung up");
                self.respond_final(tx, Response::for_request(req, 200, "OK", None));
                self.end(now, Ending::quiet(DisconnectionReason::UserHangup, None));
            }
            Method::Invite | Method::Update => self.renegotiate(now, tx, req),
            _ => self.respond_final(tx, Response::for_request(req, 200, "OK", None)),
        }
    }

    /// A re-INVITE or UPDATE: answer its offer on the same port (hold and unhold included)
    /// and tell the media session. A re-INVITE without an offer gets ours (the answer comes
    /// in the ACK); an UPDATE without one just gets its 200.
    fn renegotiate(&mut self, now: Instant, tx: TxId, req: &Request) {
        let invite = req.method == Method::Invite;
        if invite && (self.unacked.is_some() || self.pending_offer.is_some()) {
            return self
                .respond_final(tx, Response::for_request(req, 491, "Request Pending", None));
        }
        let mut ok = Response::for_request(req, 200, "OK", None);
        ok.headers.push("Contact", self.cfg.contact.as_str());
        ok.headers.push("Allow", ALLOW);
        if !req.body.is_empty() {
            let answer = Sdp::parse(&req.body)
                .map_err(|e| e.to_string())
                .and_then(|offer| sdp::answer(&offer, &self.local).map_err(|e| e.to_string()));
            let answer = match answer {
                Ok(answer) => answer,
                Err(err) => {
                    debug!(%err, "re-offer not acceptable; keeping the current media");
                    let mut resp = Response::for_request(req, 488, "Not Acceptable Here", None);
                    resp.headers
                        .push("Warning", "304 dialtone \"offer not acceptable\"");
                    return self.respond_final(tx, resp);
                }
            };
            self.local.session_version += 1;
            info!(
                hold = answer.negotiated.remote_hold,
                codec = answer.negotiated.codec.encoding_name(),
                "media renegotiated"
            );
            ok.headers.push("Content-Type", "application/sdp");
            ok.body = Bytes::from(answer.sdp.to_string());
            self.push(Action::UpdateMedia(answer.negotiated.clone()));
            self.answer = Some(answer);
        } else if invite {
            self.local.session_version += 1;
            let offer = sdp::offer(&self.local);
            ok.headers.push("Content-Type", "application/sdp");
            ok.body = Bytes::from(offer.to_string());
            self.pending_offer = Some(offer);
        }
        if invite {
            let cseq = req.cseq().map_or(0, |c| c.seq);
            self.push(Action::Respond {
                tx,
                response: ok.clone(),
            });
            self.await_ack(now, tx, cseq, ok);
        } else {
            self.respond_final(tx, ok);
        }
    }

    /// The ACK of a re-INVITE we answered with an offer carries the answer: apply it.
    pub(super) fn answer_in_ack(&mut self, ack: &Request) {
        let Some(offer) = self.pending_offer.take() else {
            return;
        };
        match accept(&offer, &ack.body) {
            Ok(negotiated) => {
                info!(
                    hold = negotiated.remote_hold,
                    codec = negotiated.codec.encoding_name(),
                    "media renegotiated (answer in ACK)"
                );
                self.push(Action::RecordCodec(negotiated.codec));
                self.push(Action::UpdateMedia(negotiated));
            }
            Err(err) => {
                warn!(%err, "the answer in the ACK does not fit our offer; media unchanged")
            }
        }
    }

    /// A final response: the transaction is done with.
    pub(super) fn respond_final(&mut self, tx: TxId, response: Response) {
        self.push(Action::Respond { tx, response });
        self.push(Action::Release(tx));
    }
}
