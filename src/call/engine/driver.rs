//! The task that runs one call: it feeds a [`Leg`] everything that happens to the call and
//! carries out what the leg decides, in the order `leg`'s module docs give. It owns the
//! call's I/O: the server transactions the leg answers through, our INVITE, the agent's
//! socket while it opens, the media task, the BYE in flight, and the record.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::time::Instant;

use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::{now_ms, CallInput, Engine, Registration};
use crate::agent::bridge::{self, AgentConfig, OpenError, StartInfo};
use crate::agent::{AgentLink, ToAgent};
use crate::call::leg::{Action, InviteFailure, Leg, TxId, INVITE_TX};
use crate::media::ports::RtpSocket;
use crate::media::session::{self, MediaCommand, MediaHandle};
use crate::model::{Agent, DisconnectionReason};
use crate::sip::endpoint::{InviteEvent, OutgoingInvite, ServerTxHandle};
use crate::sip::transport::Target;

type Opening = Pin<Box<dyn Future<Output = Result<AgentLink, OpenError>> + Send>>;
type ByeInFlight = Pin<Box<dyn Future<Output = Option<u16>> + Send>>;

/// Everything a call's task holds besides its leg.
pub(super) struct CallIo {
    pub engine: Engine,
    pub call_id: String,
    pub agent: Agent,
    /// The agent's `start` message (`customParameters` and all).
    pub start: StartInfo,
    /// The SIP Call-ID recorded as the call's `telephony_identifier`.
    pub sip_call_id: String,
    /// Where in-dialog requests (our BYE) go.
    pub flow: Target,
    /// The RTP socket, until a media session takes it.
    pub socket: Option<RtpSocket>,
    /// Requests from the endpoint and the API.
    pub inputs: mpsc::Receiver<CallInput>,
    /// Keeps the call in the engine's maps until the task ends.
    pub registration: Registration,
    /// The inbound INVITE's transaction ([`INVITE_TX`]), until the leg releases it.
    pub invite_tx: Option<ServerTxHandle>,
    txs: HashMap<TxId, ServerTxHandle>,
    next_tx: TxId,
    opening: Option<Opening>,
    link: Option<AgentLink>,
    media: Option<MediaHandle>,
    outgoing: Option<OutgoingInvite>,
    bye: Option<ByeInFlight>,
}

/// What woke the task.
enum Wake {
    Input(Option<CallInput>),
    Cancelled,
    Agent(Result<AgentLink, OpenError>),
    MediaEnded(Option<DisconnectionReason>),
    ByeDone(Option<u16>),
    Invite(Option<InviteEvent>),
    Timeout,
}

impl CallIo {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        engine: Engine,
        call_id: String,
        agent: Agent,
        start: StartInfo,
        sip_call_id: String,
        flow: Target,
        socket: RtpSocket,
        inputs: mpsc::Receiver<CallInput>,
        registration: Registration,
    ) -> CallIo {
        CallIo {
            engine,
            call_id,
            agent,
            start,
            sip_call_id,
            flow,
            socket: Some(socket),
            inputs,
            registration,
            invite_tx: None,
            txs: HashMap::new(),
            next_tx: INVITE_TX + 1,
            opening: None,
            link: None,
            media: None,
            outgoing: None,
            bye: None,
        }
    }

    /// Runs the call to its end.
    pub async fn run(mut self, mut leg: Leg) {
        let sleep = tokio::time::sleep(std::time::Duration::ZERO);
        tokio::pin!(sleep);
        let mut armed: Option<Instant> = None;
        loop {
            while let Some(action) = leg.poll_action() {
                self.carry_out(&mut leg, action).await;
            }
            if leg.is_done() {
                break;
            }
            let deadline = leg.poll_timeout();
            if let Some(at) = deadline.filter(|at| armed != Some(*at)) {
                sleep.as_mut().reset(at.into());
            }
            armed = deadline;
            let wake = tokio::select! {
                input = self.inputs.recv() => Wake::Input(input),
                () = cancelled(&mut self.invite_tx), if self.invite_tx.is_some() => Wake::Cancelled,
                link = opened(&mut self.opening), if self.opening.is_some() => Wake::Agent(link),
                reason = media_ended(&mut self.media), if self.media.is_some() => Wake::MediaEnded(reason),
                status = bye_done(&mut self.bye), if self.bye.is_some() => Wake::ByeDone(status),
                event = invite_event(&mut self.outgoing), if self.outgoing.is_some() => Wake::Invite(event),
                () = &mut sleep, if deadline.is_some() => Wake::Timeout,
            };
            let now = Instant::now();
            match wake {
                Wake::Input(Some(CallInput::Request(req, tx))) => {
                    let id = self.next_tx;
                    self.next_tx += 1;
                    self.txs.insert(id, tx);
                    leg.handle_request(now, id, &req);
                }
                Wake::Input(Some(CallInput::Ack(ack))) => leg.handle_ack(now, &ack),
                // The engine's handle is gone only when the server is going away: stop.
                Wake::Input(Some(CallInput::Stop) | None) => leg.handle_stop(now),
                Wake::Cancelled => {
                    self.invite_tx = None;
                    leg.handle_cancel();
                }
                Wake::Agent(result) => {
                    self.opening = None;
                    match result {
                        Ok(link) => {
                            self.link = Some(link);
                            leg.handle_agent(now, true);
                        }
                        Err(err) => {
                            warn!(%err, "agent websocket did not open");
                            leg.handle_agent(now, false);
                        }
                    }
                }
                Wake::MediaEnded(reason) => {
                    self.media = None;
                    leg.handle_media_ended(now, reason);
                }
                Wake::ByeDone(status) => {
                    self.bye = None;
                    leg.handle_bye_done(status);
                }
                Wake::Invite(Some(InviteEvent::Response(resp))) => leg.handle_response(now, &resp),
                Wake::Invite(Some(InviteEvent::Timeout) | None) => {
                    self.outgoing = None;
                    leg.handle_invite_failed(now, InviteFailure::Timeout);
                }
                Wake::Invite(Some(InviteEvent::TransportError)) => {
                    self.outgoing = None;
                    leg.handle_invite_failed(now, InviteFailure::Unreachable);
                }
                Wake::Timeout => {
                    armed = None;
                    leg.handle_timeout(now);
                }
            }
        }
        // Whatever still runs (a media task slow to stop, an agent socket still opening)
        // goes with its handle; the registration leaves the engine's maps.
    }

    async fn carry_out(&mut self, leg: &mut Leg, action: Action) {
        let engine = self.engine.clone();
        let inner = &engine.inner;
        match action {
            Action::Respond { tx, response } => match self.tx(tx) {
                Some(handle) => handle.respond(response),
                None => debug!(
                    tx,
                    status = response.status,
                    "response for a released transaction dropped"
                ),
            },
            Action::Release(tx) => {
                if tx == INVITE_TX {
                    self.invite_tx = None;
                } else {
                    self.txs.remove(&tx);
                }
            }
            Action::Rejected(rejection) => rejection.count(),
            Action::ConnectAgent { early } => {
                let mut start = self.start.clone();
                if early {
                    start
                        .custom_parameters
                        .insert("early_media".to_string(), "true".to_string());
                }
                let engine_cfg = &self.agent.response_engine;
                let config = AgentConfig {
                    url: engine_cfg.url.clone(),
                    headers: engine_cfg.headers.clone(),
                    encoding: engine_cfg.audio_encoding,
                    connect_timeout: inner.settings.calls.agent_connect_timeout,
                };
                self.opening = Some(Box::pin(
                    async move { bridge::connect(&config, start).await },
                ));
            }
            Action::StopAgent => {
                if let Some(link) = self.link.take() {
                    let _ = link.to_agent.try_send(ToAgent::Stop);
                }
            }
            Action::StartMedia { negotiated, early } => {
                match (self.socket.take(), self.link.take()) {
                    (Some(socket), Some(link)) => {
                        let cfg =
                            engine.session_config(&self.agent, &self.call_id, negotiated, early);
                        self.media = Some(session::spawn(socket, cfg, link));
                    }
                    _ => {
                        warn!("media started twice, or without an agent socket");
                        leg.handle_media_ended(
                            Instant::now(),
                            Some(DisconnectionReason::ErrorUnknown),
                        );
                    }
                }
            }
            Action::UpdateMedia(negotiated) => self.command(MediaCommand::Update(negotiated)),
            Action::MediaAnswered(negotiated) => self.command(MediaCommand::Answered(negotiated)),
            Action::StopMedia => match &self.media {
                Some(_) => self.command(MediaCommand::Stop),
                None => leg.handle_media_ended(Instant::now(), None),
            },
            Action::DiscardEarlyMedia => {
                if let Some(socket) = &self.socket {
                    let dropped = socket.discard_pending();
                    debug!(dropped, "early media the agent did not ask for: dropped");
                }
            }
            Action::RecordAnswered { codec, status } => {
                let telephony_id = serde_json::json!({ "sip_call_id": self.sip_call_id });
                let codec = codec.map_or("", |c| c.encoding_name());
                let live = match inner
                    .store
                    .mark_ongoing(
                        &self.call_id,
                        now_ms(),
                        codec,
                        Some(&telephony_id),
                        Some(status),
                    )
                    .await
                {
                    Ok(true) => {
                        inner.events.call_started(&self.call_id);
                        true
                    }
                    Ok(false) => false,
                    Err(err) => {
                        warn!(%err, "could not record the answer");
                        true
                    }
                };
                leg.handle_answer_recorded(Instant::now(), live);
            }
            Action::RecordCodec(codec) => {
                if let Err(err) = inner
                    .store
                    .set_codec(&self.call_id, codec.encoding_name())
                    .await
                {
                    warn!(%err, "could not record the codec");
                }
            }
            Action::Dialog(key) => self.registration.add_dialog(key),
            Action::SendInvite(request) => match inner.endpoint.invite(request, self.flow) {
                Ok(invite) => self.outgoing = Some(invite),
                Err(err) => {
                    warn!(%err, "INVITE not sent");
                    leg.handle_invite_failed(Instant::now(), InviteFailure::NotSent);
                }
            },
            Action::CancelInvite => {
                if let Some(invite) = &self.outgoing {
                    invite.cancel();
                }
            }
            Action::SendAck(ack) => inner.endpoint.send_ack(ack, self.flow).await,
            Action::SendBye(bye) => {
                let endpoint = inner.endpoint.clone();
                let flow = self.flow;
                self.bye = Some(Box::pin(async move {
                    match endpoint.request(bye, flow).await {
                        Ok(resp) => Some(resp.status),
                        Err(err) => {
                            debug!(%err, "BYE got no final response");
                            None
                        }
                    }
                }));
            }
            Action::Finish { reason, status } => engine.finish(&self.call_id, reason, status).await,
        }
    }

    fn tx(&self, tx: TxId) -> Option<&ServerTxHandle> {
        if tx == INVITE_TX {
            self.invite_tx.as_ref()
        } else {
            self.txs.get(&tx)
        }
    }

    fn command(&self, cmd: MediaCommand) {
        if let Some(media) = &self.media {
            if media.commands.try_send(cmd).is_err() {
                debug!("media command dropped: the session is ending");
            }
        }
    }
}

async fn cancelled(tx: &mut Option<ServerTxHandle>) {
    match tx {
        Some(tx) => tx.cancelled().await,
        None => std::future::pending().await,
    }
}

async fn opened(opening: &mut Option<Opening>) -> Result<AgentLink, OpenError> {
    match opening {
        Some(fut) => fut.await,
        None => std::future::pending().await,
    }
}

async fn media_ended(media: &mut Option<MediaHandle>) -> Option<DisconnectionReason> {
    match media {
        Some(media) => match (&mut media.done).await {
            Ok(outcome) => outcome.reason,
            Err(err) => {
                warn!(%err, "media task failed");
                Some(DisconnectionReason::ErrorUnknown)
            }
        },
        None => std::future::pending().await,
    }
}

async fn bye_done(bye: &mut Option<ByeInFlight>) -> Option<u16> {
    match bye {
        Some(fut) => fut.await,
        None => std::future::pending().await,
    }
}

async fn invite_event(outgoing: &mut Option<OutgoingInvite>) -> Option<InviteEvent> {
    match outgoing {
        Some(invite) => invite.events.recv().await,
        None => std::future::pending().await,
    }
}
