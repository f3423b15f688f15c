//! Outbound calls through an imported number's trunk: the INVITE to its termination URI
//! (RFC 3263 target, digest authentication on 401/407), ringing with early media, CANCEL
//! when the ring time runs out or the call is stopped, and on answer the agent bridge and
//! media as for any call. Every way it can fail maps to a `not_connected` reason.
//!
//! Early media (a 180/183 with SDP) is negotiated as it comes. It reaches the agent only
//! when the agent asked for it (`forward_early_media`): then the agent socket opens at the
//! first early SDP, nothing is sent to the far end before the answer, and the agent gets an
//! `answered` event when the 200 arrives. Otherwise the agent socket opens at the answer,
//! like a Twilio `<Connect><Stream>`, and what the socket held of the early media is
//! dropped, so the agent hears only the answered call.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::{lock, now_ms, CallInput, Ending, Engine, Live, Registration};
use crate::agent::bridge::{self, AgentConfig, StartInfo};
use crate::media::ports::RtpSocket;
use crate::media::session::{self, MediaCommand, MediaHandle};
use crate::model::number::PhoneNumber;
use crate::model::{Agent, Call, DisconnectionReason};
use crate::sdp::{self, LocalMedia, Negotiated, Sdp};
use crate::sip::dialog::Dialog;
use crate::sip::endpoint::{InviteEvent, OutgoingInvite};
use crate::sip::message::{self, Method, Request, Response};
use crate::sip::transport::Target;
use crate::sip::ua::{new_tag, ALLOW};

/// The reason an outbound call ends with when its INVITE fails with `status` (API.md).
fn dial_failure(status: u16) -> DisconnectionReason {
    use DisconnectionReason::*;
    match status {
        486 | 600 => DialBusy,
        408 | 480 | 487 => DialNoAnswer,
        404 | 410 | 416 | 484 => InvalidDestination,
        401 | 403 | 407 => TelephonyProviderPermissionDenied,
        482 | 483 => SipRoutingError,
        603 => UserDeclined,
        500..=599 => TelephonyProviderUnavailable,
        _ => DialFailed,
    }
}

/// How one INVITE attempt ended.
enum Attempt {
    Answered(Response, OutgoingInvite),
    Challenged(Response),
    Failed(u16),
    /// Timer B: no response at all.
    NoResponse,
    Unreachable,
}

/// How dialling ended.
enum Dialled {
    /// With the reason we had already cancelled for, when the answer crossed our CANCEL.
    Answered(Box<(Response, OutgoingInvite)>, Option<DisconnectionReason>),
    NotConnected(DisconnectionReason, Option<u16>),
}

/// The request URI for `to` at the trunk: the termination URI may be a bare host,
/// host:port, carry `;transport=`, or be a whole URI.
fn trunk_uri(number: &PhoneNumber, to: &str) -> String {
    let host = number.termination_uri.trim();
    let host = host
        .strip_prefix("sips:")
        .or_else(|| host.strip_prefix("sip:"))
        .unwrap_or(host);
    let host = host.rsplit_once('@').map(|(_, h)| h).unwrap_or(host);
    let mut uri = format!("sip:{to}@{host}");
    if !host.to_ascii_lowercase().contains("transport=") {
        uri.push_str(";transport=");
        uri.push_str(&number.transport.as_str().to_ascii_lowercase());
    }
    uri
}

/// The far end's SDP answer (in a 18x or the 200) to our offer.
fn accept(offer: &Sdp, body: &[u8]) -> Result<Negotiated, String> {
    Sdp::parse(body)
        .map_err(|e| e.to_string())
        .and_then(|answer| sdp::accept_answer(offer, &answer).map_err(|e| e.to_string()))
}

/// The call's media and agent from the first early SDP or the answer, whichever opens
/// them, to the connected phase.
struct Leg {
    engine: Engine,
    agent: Agent,
    call_id: String,
    offer: Sdp,
    /// Until a media session takes it.
    socket: Option<RtpSocket>,
    /// Until the agent socket opens.
    start: Option<StartInfo>,
    /// What the latest early SDP agreed: a 200 without SDP falls back to it.
    early: Option<Negotiated>,
    /// The media session, once running (early, for an agent that asked for early media).
    media: Option<MediaHandle>,
}

impl Leg {
    /// Opens the agent socket and starts the media session on `negotiated`.
    async fn start_media(
        &mut self,
        negotiated: Negotiated,
        early: bool,
    ) -> Result<MediaHandle, DisconnectionReason> {
        let (Some(socket), Some(mut start)) = (self.socket.take(), self.start.take()) else {
            warn!("media already started once for this call");
            return Err(DisconnectionReason::ErrorUnknown);
        };
        if early {
            start
                .custom_parameters
                .insert("early_media".to_string(), "true".to_string());
        }
        let engine = &self.agent.response_engine;
        let config = AgentConfig {
            url: engine.url.clone(),
            headers: engine.headers.clone(),
            encoding: engine.audio_encoding,
            connect_timeout: self.engine.inner.settings.calls.agent_connect_timeout,
        };
        let link = bridge::connect(&config, start).await.map_err(|err| {
            warn!(%err, "agent websocket did not open");
            DisconnectionReason::ErrorLlmWebsocketOpen
        })?;
        let session = self
            .engine
            .session_config(&self.agent, &self.call_id, negotiated, early);
        Ok(session::spawn(socket, session, link))
    }

    /// A provisional response with SDP: early media. It reaches the agent only when the
    /// agent asked for it; otherwise it is only remembered. An unusable SDP is ignored
    /// (the 200 must carry the answer anyway); a failing agent socket ends the call.
    async fn on_early_sdp(&mut self, resp: &Response) -> Result<(), DisconnectionReason> {
        let negotiated = match accept(&self.offer, &resp.body) {
            Ok(n) => n,
            Err(err) => {
                info!(status = resp.status, %err, "early SDP unusable: ignored");
                return Ok(());
            }
        };
        info!(
            status = resp.status,
            codec = negotiated.codec.encoding_name(),
            remote = %negotiated.remote_rtp,
            to_agent = self.agent.forward_early_media,
            "early media"
        );
        if let Some(media) = &self.media {
            let _ = media
                .commands
                .try_send(MediaCommand::Update(negotiated.clone()));
        } else if self.agent.forward_early_media {
            self.media = Some(self.start_media(negotiated.clone(), true).await?);
        }
        self.early = Some(negotiated);
        Ok(())
    }

    /// The 200: its SDP (or, without one, the early media's) settles the media. Starts the
    /// agent and media now unless early media already did.
    async fn on_answer(
        &mut self,
        resp: &Response,
    ) -> Result<(MediaHandle, Negotiated), DisconnectionReason> {
        let negotiated = if resp.body.is_empty() {
            match self.early.clone() {
                Some(n) => {
                    info!("2xx without SDP: the early media's answer stands");
                    n
                }
                None => {
                    warn!("2xx without an SDP answer to our offer");
                    return Err(DisconnectionReason::ErrorUnknown);
                }
            }
        } else {
            accept(&self.offer, &resp.body).map_err(|err| {
                warn!(%err, "the trunk's SDP answer is unusable");
                DisconnectionReason::ErrorUnknown
            })?
        };
        if let Some(media) = self.media.take() {
            let _ = media
                .commands
                .try_send(MediaCommand::Answered(negotiated.clone()));
            return Ok((media, negotiated));
        }
        if self.early.is_some() {
            if let Some(socket) = &self.socket {
                let dropped = socket.discard_pending();
                debug!(dropped, "early media the agent did not ask for: dropped");
            }
        }
        let media = self.start_media(negotiated.clone(), false).await?;
        Ok((media, negotiated))
    }

    /// The call was not connected: an early session ends (the agent gets `stop`).
    async fn stop(&mut self) {
        if let Some(mut media) = self.media.take() {
            let _ = media.commands.try_send(MediaCommand::Stop);
            let _ = tokio::time::timeout(Duration::from_secs(2), &mut media.done).await;
        }
    }
}

impl Engine {
    /// An outbound call through a trunk: INVITE to the termination URI (digest auth on
    /// 401/407), ring for the agent's `ring_duration_ms`, then the agent and media as for
    /// any call. Every failure maps to its `not_connected` reason.
    pub(super) async fn outbound_call(self, call: Call, number: PhoneNumber) {
        let (input_tx, mut inputs) = mpsc::channel(32);
        lock(&self.inner.live).insert(call.call_id.clone(), input_tx);
        let mut registration = Registration {
            engine: self.clone(),
            call_id: call.call_id.clone(),
            dialog: None,
        };
        let call_id = call.call_id.clone();
        let agent = match self.inner.store.get_agent(&call.agent_id).await {
            Ok(Some(agent)) => agent,
            _ => {
                return self
                    .finish(&call_id, DisconnectionReason::ErrorUnknown, None)
                    .await
            }
        };
        let to = call.to_number.clone().unwrap_or_default();
        let from = call.from_number.clone().unwrap_or_default();
        let uri = trunk_uri(&number, &to);
        let Some(target) = self.trunk_target(&uri).await else {
            return self
                .finish(
                    &call_id,
                    DisconnectionReason::TelephonyProviderUnavailable,
                    None,
                )
                .await;
        };
        let socket = match self.inner.ports.bind().await {
            Ok(socket) => socket,
            Err(err) => {
                warn!(%err, "no RTP port for an outbound call");
                return self
                    .finish(&call_id, DisconnectionReason::ErrorUnknown, None)
                    .await;
            }
        };
        let transports = self.inner.endpoint.transports();
        let media_ip = self
            .inner
            .settings
            .media_ip
            .or_else(|| {
                transports
                    .local_addr(target.kind)
                    .map(|a| a.ip())
                    .filter(|ip| !ip.is_unspecified())
            })
            .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        let mut local = LocalMedia::new(media_ip, socket.port(), rand::random::<u32>() as u64, 1);
        let codecs: Vec<sdp::Codec> = number
            .codecs
            .iter()
            .filter_map(|c| sdp::Codec::from_name(c))
            .collect();
        if !codecs.is_empty() {
            local.codecs = codecs;
        }
        local.srtp = match super::srtp::policy(self.inner.settings.srtp, target.kind) {
            Ok(policy) => policy,
            Err(why) => {
                warn!(
                    kind = target.kind.as_str(),
                    why, "outbound call not dialled"
                );
                return self
                    .finish(&call_id, DisconnectionReason::DialFailed, None)
                    .await;
            }
        };
        let offer = sdp::offer(&local);
        let request = self.trunk_invite(&call, &uri, &from, &to, target, &offer);
        let start = StartInfo {
            call_id: call.call_id.clone(),
            stream_sid: String::new(),
            account_sid: String::new(),
            custom_parameters: start_parameters(&call, &agent, &from, &to),
        };
        let mut leg = Leg {
            engine: self.clone(),
            agent,
            call_id: call_id.clone(),
            offer,
            socket: Some(socket),
            start: Some(start),
            early: None,
            media: None,
        };
        info!(%uri, target = %target.addr, kind = target.kind.as_str(), "dialling");
        let (resp, mut invite, cancelled) = match self
            .dial(request, target, &number, &mut leg, &mut inputs)
            .await
        {
            Dialled::Answered(answered, cancelled) => {
                let (resp, invite) = *answered;
                (resp, invite, cancelled)
            }
            Dialled::NotConnected(reason, status) => {
                leg.stop().await;
                info!(
                    ?status,
                    reason = reason.as_str(),
                    "outbound call not connected"
                );
                return self.finish(&call_id, reason, status).await;
            }
        };
        let answered_at = now_ms();
        // Answered: ACK it (and every retransmission of it), then bridge.
        let invite_cseq = invite.request.cseq().map(|c| c.seq).unwrap_or(1);
        let dialog = match Dialog::from_response(&invite.request, &resp, target) {
            Ok(dialog) => dialog,
            Err(err) => {
                warn!(%err, "2xx without what a dialog needs");
                leg.stop().await;
                return self
                    .finish(
                        &call_id,
                        DisconnectionReason::ErrorUnknown,
                        Some(resp.status),
                    )
                    .await;
            }
        };
        let ack = dialog.ack(invite_cseq);
        self.inner.endpoint.send_ack(ack.clone(), target).await;
        {
            let endpoint = self.inner.endpoint.clone();
            tokio::spawn(async move {
                while let Some(event) = invite.events.recv().await {
                    if matches!(&event, InviteEvent::Response(r) if (200..300).contains(&r.status))
                    {
                        endpoint.send_ack(ack.clone(), target).await;
                    }
                }
            });
        }
        let input_tx = lock(&self.inner.live).get(&call.call_id).cloned();
        if let Some(input_tx) = input_tx {
            lock(&self.inner.dialogs).insert(dialog.key.clone(), input_tx);
            registration.dialog = Some(dialog.key.clone());
        }
        let mut live = Live {
            dialog,
            local,
            answer: None,
            pending_offer: None,
            call,
            kind: target.kind,
        };
        if let Some(reason) = cancelled {
            // The answer crossed our CANCEL: it got its ACK; now the BYE.
            info!(
                reason = reason.as_str(),
                "answered after we cancelled; hanging up"
            );
            leg.stop().await;
            let ending = Ending {
                reason,
                send_bye: true,
            };
            return live.end(&self, ending).await;
        }
        let (media, negotiated) = match leg.on_answer(&resp).await {
            Ok(started) => started,
            Err(reason) => {
                leg.stop().await;
                let ending = Ending {
                    reason,
                    send_bye: true,
                };
                return live.end(&self, ending).await;
            }
        };
        let telephony_id = invite
            .request
            .call_id()
            .map(|c| serde_json::json!({ "sip_call_id": c }));
        match self
            .inner
            .store
            .mark_ongoing(
                &live.call.call_id,
                answered_at,
                negotiated.codec.encoding_name(),
                telephony_id.as_ref(),
                Some(resp.status),
            )
            .await
        {
            Ok(true) => self.inner.events.call_started(&live.call.call_id),
            Ok(false) => {}
            Err(err) => warn!(%err, "could not record the answer"),
        }
        let max_duration = Duration::from_millis(leg.agent.max_call_duration_ms.max(1000) as u64)
            .min(self.inner.settings.calls.max_call_duration);
        let ending = live
            .connected(&self, &mut inputs, media, max_duration)
            .await;
        live.end(&self, ending).await;
        drop(registration);
    }

    /// Where to send the INVITE: RFC 3263 on the URI, first target over an enabled
    /// transport. `None` (logged) when there is none.
    async fn trunk_target(&self, uri: &str) -> Option<Target> {
        let dest = match crate::sip::route::destination(uri) {
            Ok(dest) => dest,
            Err(err) => {
                warn!(%err, "termination URI unusable");
                return None;
            }
        };
        let transports = self.inner.endpoint.transports();
        let target = match crate::sip::resolve::resolve(&dest).await {
            Ok(targets) => targets
                .into_iter()
                .find(|t| transports.local_addr(t.kind).is_some()),
            Err(err) => {
                warn!(%err, "termination host did not resolve");
                None
            }
        };
        let Some(target) = target else {
            warn!(host = %dest.host, kind = dest.kind.as_str(), "no reachable target for the trunk (is that transport enabled?)");
            return None;
        };
        Some(Target {
            kind: target.kind,
            addr: target.addr,
            conn: None,
        })
    }

    /// The first INVITE to the trunk, with the call's `X-` headers and our offer.
    fn trunk_invite(
        &self,
        call: &Call,
        uri: &str,
        from: &str,
        to: &str,
        target: Target,
        offer: &Sdp,
    ) -> Request {
        let contact = self.inner.endpoint.contact(target.kind);
        let public_host = self.inner.endpoint.public_host().to_string();
        let to_host = uri
            .split_once('@')
            .map(|(_, h)| h.split(';').next().unwrap_or(h))
            .unwrap_or("");
        let mut headers = message::Headers::default();
        headers.push(
            "From",
            format!("<sip:{from}@{public_host}>;tag={}", new_tag()),
        );
        headers.push("To", format!("<sip:{to}@{to_host}>"));
        headers.push("Call-ID", format!("{}@{public_host}", new_tag()));
        headers.push("CSeq", "1 INVITE");
        headers.push("Contact", contact.as_str());
        headers.push("Allow", ALLOW);
        for (name, value) in call.custom_sip_headers.iter().flatten() {
            headers.push(name, value.as_str());
        }
        headers.push("Content-Type", "application/sdp");
        Request {
            method: Method::Invite,
            uri: uri.to_string(),
            headers,
            body: Bytes::from(offer.to_string()),
        }
    }

    /// Sends the INVITE and follows it to a final answer: digest challenges answered once
    /// per attempt, 18x logged (with early media), CANCEL at the ring time, on stop-call, or
    /// when an early-media agent ends the call.
    async fn dial(
        &self,
        mut request: Request,
        target: Target,
        number: &PhoneNumber,
        leg: &mut Leg,
        inputs: &mut mpsc::Receiver<CallInput>,
    ) -> Dialled {
        let mut auth = match (
            &number.sip_trunk_auth_username,
            &number.sip_trunk_auth_password,
        ) {
            (Some(user), Some(password)) => Some(crate::sip::auth::Authenticator::new(
                crate::sip::auth::Credentials::new(user.clone(), password.expose().to_string()),
            )),
            _ => None,
        };
        let ring = Duration::from_millis(leg.agent.ring_duration_ms.max(1000) as u64);
        let ring_deadline = tokio::time::Instant::now() + ring;
        let mut cancelled: Option<DisconnectionReason> = None;
        loop {
            let mut inv = match self.inner.endpoint.invite(request.clone(), target) {
                Ok(inv) => inv,
                Err(err) => {
                    warn!(%err, "INVITE not sent");
                    return Dialled::NotConnected(DisconnectionReason::DialFailed, None);
                }
            };
            let attempt = loop {
                let early_end = async {
                    match leg.media.as_mut() {
                        Some(media) => (&mut media.done).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    event = inv.events.recv() => match event {
                        Some(InviteEvent::Response(r)) if r.status < 200 => {
                            info!(status = r.status, "far end progress");
                            if r.status > 100 && !r.body.is_empty() && cancelled.is_none() {
                                if let Err(reason) = leg.on_early_sdp(&r).await {
                                    cancelled = Some(reason);
                                    inv.cancel();
                                }
                            }
                        }
                        Some(InviteEvent::Response(r)) if r.status < 300 => break Attempt::Answered(r, inv),
                        Some(InviteEvent::Response(r)) if (r.status == 401 || r.status == 407) && cancelled.is_none() => break Attempt::Challenged(r),
                        Some(InviteEvent::Response(r)) => break Attempt::Failed(r.status),
                        Some(InviteEvent::Timeout) | None => break Attempt::NoResponse,
                        Some(InviteEvent::TransportError) => break Attempt::Unreachable,
                    },
                    _ = tokio::time::sleep_until(ring_deadline), if cancelled.is_none() => {
                        info!("no answer within the ring time; cancelling");
                        cancelled = Some(DisconnectionReason::DialNoAnswer);
                        inv.cancel();
                    }
                    input = inputs.recv(), if cancelled.is_none() => {
                        if matches!(input, Some(CallInput::Stop) | None) {
                            cancelled = Some(DisconnectionReason::ManualStopped);
                            inv.cancel();
                        }
                    }
                    outcome = early_end, if cancelled.is_none() => {
                        // The early-media agent hung up (or its socket failed) before the
                        // answer: the task is over, so drop its handle and cancel.
                        leg.media = None;
                        let reason = outcome
                            .ok()
                            .and_then(|o| o.reason)
                            .unwrap_or(DisconnectionReason::ErrorUnknown);
                        info!(reason = reason.as_str(), "agent ended the call during early media; cancelling");
                        cancelled = Some(reason);
                        inv.cancel();
                    }
                }
            };
            match attempt {
                Attempt::Answered(resp, inv) => {
                    return Dialled::Answered(Box::new((resp, inv)), cancelled)
                }
                Attempt::Challenged(resp) => {
                    let retried = auth
                        .as_mut()
                        .ok_or(None)
                        .and_then(|a| a.retry(&request, &resp).map_err(Some));
                    match retried {
                        Ok(next) => request = next,
                        Err(err) => {
                            warn!(status = resp.status, error = ?err.map(|e| e.to_string()), "trunk refused our credentials (or none are set)");
                            return Dialled::NotConnected(
                                DisconnectionReason::TelephonyProviderPermissionDenied,
                                Some(resp.status),
                            );
                        }
                    }
                }
                Attempt::Failed(status) => {
                    let reason = cancelled.unwrap_or_else(|| dial_failure(status));
                    return Dialled::NotConnected(reason, Some(status));
                }
                Attempt::NoResponse => {
                    let reason = cancelled.unwrap_or(DisconnectionReason::DialFailed);
                    return Dialled::NotConnected(reason, None);
                }
                Attempt::Unreachable => {
                    return Dialled::NotConnected(
                        DisconnectionReason::TelephonyProviderUnavailable,
                        None,
                    );
                }
            }
        }
    }
}

/// The agent's `customParameters` for an outbound call.
fn start_parameters(call: &Call, agent: &Agent, from: &str, to: &str) -> BTreeMap<String, String> {
    let mut params = BTreeMap::new();
    params.insert("call_id".to_string(), call.call_id.clone());
    params.insert("agent_id".to_string(), agent.agent_id.clone());
    params.insert("direction".to_string(), "outbound".to_string());
    params.insert("from_number".to_string(), from.to_string());
    params.insert("to_number".to_string(), to.to_string());
    if let Some(metadata) = &call.metadata {
        params.insert("metadata".to_string(), metadata.to_string());
    }
    for (k, v) in call.retell_llm_dynamic_variables.iter().flatten() {
        params.insert(k.clone(), v.clone());
    }
    params
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_map_to_api_reasons() {
        use DisconnectionReason::*;
        for (status, reason) in [
            (486, DialBusy),
            (600, DialBusy),
            (408, DialNoAnswer),
            (480, DialNoAnswer),
            (404, InvalidDestination),
            (484, InvalidDestination),
            (403, TelephonyProviderPermissionDenied),
            (482, SipRoutingError),
            (603, UserDeclined),
            (503, TelephonyProviderUnavailable),
            (500, TelephonyProviderUnavailable),
            (488, DialFailed),
        ] {
            assert_eq!(dial_failure(status), reason, "{status}");
        }
    }
}
