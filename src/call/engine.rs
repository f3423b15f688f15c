//! The call engine: the transaction user that turns an INVITE for `sip:{call_id}@host`
//! into a call bridged to its agent, and ends it the right way whatever happens.
//!
//! One task per call owns its dialog, its media task handle and its record's fate. The
//! SIP side reaches it through the dialog map (in-dialog requests, the ACK of our 2xx); the
//! HTTP API through [`CallControl`]. Every path out of the task settles the record once
//! (`finish_call` is idempotent: the first reason wins) and frees the RTP port, the agent
//! socket and the map entries.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tracing::{debug, info, warn, Instrument};

use crate::agent::bridge::{self, AgentConfig, StartInfo};
use crate::call::CallControl;
use crate::config::{CallSettings, TimerSettings};
use crate::media::ports::PortPool;
use crate::media::session::{self, MediaCommand, MediaHandle, SessionConfig};
use crate::model::country;
use crate::model::{Agent, Call, DisconnectionReason};
use crate::sdp::{self, LocalMedia, Negotiated, Sdp};
use crate::sip::dialog::{Dialog, DialogKey};
use crate::sip::endpoint::{Endpoint, Handler, ServerTxHandle};
use crate::sip::message::{self, Method, Request, Response};
use crate::sip::transport::{Inbound, Kind};
use crate::sip::ua::{new_tag, ALLOW};
use crate::store::{Claim, Store};
use crate::webhook::events::CallEvents;

mod outbound;
mod srtp;

/// What a call task can be told.
#[derive(Debug)]
enum CallInput {
    /// A request inside the call's dialog, with its server transaction.
    Request(Request, ServerTxHandle),
    /// The ACK of our 2xx.
    Ack(Request),
    /// Stop the call through the API.
    Stop,
}

impl std::fmt::Debug for ServerTxHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTxHandle")
            .field("target", &self.target())
            .finish()
    }
}

/// Engine-wide settings taken from the configuration.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    pub calls: CallSettings,
    pub timers: TimerSettings,
    /// The address written into SDP; `None` means the address the INVITE arrived on.
    pub media_ip: Option<IpAddr>,
    /// `media.srtp`; applied per call by [`srtp::policy`].
    pub srtp: crate::config::SrtpMode,
}

struct Inner {
    endpoint: Endpoint,
    store: Store,
    ports: PortPool,
    settings: EngineSettings,
    /// `call_started` and `call_ended` for the agents' webhooks.
    events: CallEvents,
    /// Live calls by dialog, for in-dialog requests and ACKs.
    dialogs: Mutex<HashMap<DialogKey, mpsc::Sender<CallInput>>>,
    /// Live calls by call_id, for the API.
    live: Mutex<HashMap<String, mpsc::Sender<CallInput>>>,
}

/// The call engine handle; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Maps with single inserts and removes stay consistent even after a panic elsewhere.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Engine {
    pub fn new(
        endpoint: Endpoint,
        store: Store,
        ports: PortPool,
        settings: EngineSettings,
        events: CallEvents,
    ) -> Engine {
        Engine {
            inner: Arc::new(Inner {
                endpoint,
                store,
                ports,
                settings,
                events,
                dialogs: Mutex::new(HashMap::new()),
                live: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Calls currently being set up or connected.
    pub fn live_calls(&self) -> usize {
        lock(&self.inner.live).len()
    }
}

impl Handler for Engine {
    fn on_invite(&self, req: Request, tx: ServerTxHandle, from: Inbound) {
        let span = tracing::info_span!("call", sip_call_id = req.call_id().unwrap_or(""));
        let engine = self.clone();
        tokio::spawn(async move { engine.inbound_call(req, tx, from).await }.instrument(span));
    }

    fn on_in_dialog(
        &self,
        req: Request,
        tx: ServerTxHandle,
        _from: Inbound,
    ) -> Result<(), (Request, ServerTxHandle)> {
        let Some(key) = DialogKey::of_request(&req) else {
            return Err((req, tx));
        };
        let call = lock(&self.inner.dialogs).get(&key).cloned();
        match call {
            Some(call) => match call.try_send(CallInput::Request(req, tx)) {
                Ok(()) => Ok(()),
                Err(mpsc::error::TrySendError::Full(CallInput::Request(req, tx)))
                | Err(mpsc::error::TrySendError::Closed(CallInput::Request(req, tx))) => {
                    Err((req, tx))
                }
                Err(_) => Ok(()),
            },
            None => Err((req, tx)),
        }
    }

    fn on_ack(&self, req: Request) {
        let Some(key) = DialogKey::of_request(&req) else {
            return;
        };
        let call = lock(&self.inner.dialogs).get(&key).cloned();
        match call {
            Some(call) => {
                let _ = call.try_send(CallInput::Ack(req));
            }
            None => debug!("ACK for no live dialog dropped"),
        }
    }
}

impl CallControl for Engine {
    fn dial(&self, call: Call, number: crate::model::number::PhoneNumber) -> bool {
        let span = tracing::info_span!("call", call_id = %call.call_id, direction = "outbound");
        let engine = self.clone();
        tokio::spawn(async move { engine.outbound_call(call, number).await }.instrument(span));
        true
    }

    fn stop(&self, call_id: &str) -> bool {
        let call = lock(&self.inner.live).get(call_id).cloned();
        match call {
            Some(call) => call.try_send(CallInput::Stop).is_ok(),
            None => false,
        }
    }
}

/// How an INVITE found its call.
enum Route {
    /// `sip:{call_id}@host` for a call registered through the API: it must be claimed.
    Registered(Call),
    /// A trunk call to an imported number: a new call record.
    Number(Call),
}

/// Why an INVITE to an imported number gets no call (and no call record, as with any
/// rejection before routing).
enum NoRoute {
    /// No number matches, or it has no usable inbound agent: 404.
    NotFound,
    /// The caller's country is not on the number's `allowed_inbound_country_list`: 403.
    CountryNotAllowed,
    Store(crate::store::StoreError),
}

impl From<crate::store::StoreError> for NoRoute {
    fn from(err: crate::store::StoreError) -> NoRoute {
        NoRoute::Store(err)
    }
}

/// The user part of a `sip:`/`sips:`/`tel:` URI, unescaped.
fn user_of(uri: &str) -> Option<String> {
    if let Some(number) = uri.strip_prefix("tel:") {
        let number = number.split(';').next().unwrap_or("");
        return (!number.is_empty()).then(|| number.to_string());
    }
    message::SipUri::parse(uri)?
        .user
        .map(|u| message::unescape(&u))
}

/// A rejection sent before the call was claimed: the registration stays usable.
fn reject(tx: &ServerTxHandle, req: &Request, status: u16, reason: &str) {
    tx.respond(Response::for_request(req, status, reason, Some(&new_tag())));
}

/// A 488 for an offer we cannot accept, with a Warning saying why.
fn refuse_offer(tx: &ServerTxHandle, req: &Request, warning: &str) {
    let mut resp = Response::for_request(req, 488, "Not Acceptable Here", Some(&new_tag()));
    resp.headers.push("Warning", warning);
    tx.respond(resp);
}

/// Removes a call from the engine's maps when its task ends, however it ends.
struct Registration {
    engine: Engine,
    call_id: String,
    dialog: Option<DialogKey>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        lock(&self.engine.inner.live).remove(&self.call_id);
        if let Some(key) = &self.dialog {
            lock(&self.engine.inner.dialogs).remove(key);
        }
    }
}

/// How a connected call ended, and whether we still owe the caller a BYE.
struct Ending {
    reason: DisconnectionReason,
    send_bye: bool,
}

impl Engine {
    /// The INVITE for `sip:{call_id}@host`: find the registration, negotiate, claim it,
    /// ring while the agent's socket opens, answer, and run the call to its end.
    async fn inbound_call(self, invite: Request, tx: ServerTxHandle, from: Inbound) {
        let Some(user) = invite.uri_user() else {
            crate::metrics::inbound_call_rejected("no_route");
            return reject(&tx, &invite, 404, "Not Found");
        };
        // A registered call's id, or else an imported number (Request-URI user, then To user).
        let registered = match self.inner.store.get_call(&user).await {
            Ok(found) => found,
            Err(err) => {
                crate::metrics::inbound_call_rejected("store_unavailable");
                warn!(%err, "store unavailable while routing an INVITE");
                return reject(&tx, &invite, 503, "Service Unavailable");
            }
        };
        let route = match registered {
            Some(call) => Route::Registered(call),
            None => match self.route_to_number(&invite, &user).await {
                Ok(call) => Route::Number(call),
                Err(NoRoute::NotFound) => {
                    crate::metrics::inbound_call_rejected("no_route");
                    debug!(%user, "no registered call or imported number with an agent: 404");
                    return reject(&tx, &invite, 404, "Not Found");
                }
                Err(NoRoute::CountryNotAllowed) => {
                    return reject(&tx, &invite, 403, "Forbidden (caller country not allowed)")
                }
                Err(NoRoute::Store(err)) => {
                    crate::metrics::inbound_call_rejected("store_unavailable");
                    warn!(%err, "store unavailable while routing an INVITE");
                    return reject(&tx, &invite, 503, "Service Unavailable");
                }
            },
        };
        // Check the offer before claiming, so a caller with no common codec does not burn
        // the registration.
        let offer = if invite.body.is_empty() {
            None
        } else {
            match Sdp::parse(&invite.body) {
                Ok(offer) => Some(offer),
                Err(err) => {
                    debug!(%err, "unreadable SDP offer");
                    return reject(&tx, &invite, 400, "Bad Request (SDP)");
                }
            }
        };
        let socket = match self.inner.ports.bind().await {
            Ok(socket) => socket,
            Err(err) => {
                warn!(%err, "no RTP port for a new call");
                return reject(&tx, &invite, 503, "Service Unavailable (no media ports)");
            }
        };
        let media_ip = self.media_ip(&from);
        let session_id = rand::random::<u32>() as u64;
        let mut local = LocalMedia::new(media_ip, socket.port(), session_id, 1);
        let srtp_mode = self.inner.settings.srtp;
        local.srtp = match srtp::policy(srtp_mode, from.kind) {
            Ok(policy) => policy,
            Err(why) => return refuse_offer(&tx, &invite, &format!("302 dialtone \"{why}\"")),
        };
        let answer = match &offer {
            Some(offer) => match sdp::answer(offer, &local) {
                Ok(answer) => Some(answer),
                Err(err) => {
                    debug!(%err, "offer not acceptable");
                    let warning = srtp::warning(&err, srtp_mode, from.kind);
                    return refuse_offer(&tx, &invite, &warning);
                }
            },
            None => None,
        };
        let call = match route {
            Route::Registered(call) => match self
                .inner
                .store
                .claim_registered_call(&call.call_id, now_ms())
                .await
            {
                Ok(Claim::Claimed(call)) => *call,
                Ok(Claim::Unknown) => return reject(&tx, &invite, 404, "Not Found"),
                Ok(Claim::AlreadyClaimed) => {
                    return reject(&tx, &invite, 486, "Busy Here (call already answered)")
                }
                Ok(Claim::Expired) => {
                    return reject(&tx, &invite, 404, "Not Found (registration expired)")
                }
                Err(err) => {
                    warn!(%err, "store unavailable while claiming a call");
                    return reject(&tx, &invite, 503, "Service Unavailable");
                }
            },
            Route::Number(call) => {
                if let Err(err) = self.inner.store.insert_call(&call).await {
                    warn!(%err, "could not record an inbound call");
                    return reject(&tx, &invite, 503, "Service Unavailable");
                }
                call
            }
        };
        info!(call_id = %call.call_id, agent_id = %call.agent_id, direction = call.direction.as_str(), "call routed");
        let (input_tx, input_rx) = mpsc::channel(32);
        let local_tag = new_tag();
        let dialog = match Dialog::from_invite(&invite, &local_tag, tx.target()) {
            Ok(dialog) => dialog,
            Err(err) => {
                reject(&tx, &invite, 400, "Bad Request (no dialog)");
                debug!(%err, "INVITE cannot make a dialog");
                self.finish(&call.call_id, DisconnectionReason::ErrorUnknown, Some(400))
                    .await;
                return;
            }
        };
        lock(&self.inner.live).insert(call.call_id.clone(), input_tx.clone());
        lock(&self.inner.dialogs).insert(dialog.key.clone(), input_tx);
        let registration = Registration {
            engine: self.clone(),
            call_id: call.call_id.clone(),
            dialog: Some(dialog.key.clone()),
        };
        let setup = CallSetup {
            invite,
            tx,
            offer_sent: None,
            socket: Some(socket),
            live: Live {
                dialog,
                local,
                answer,
                pending_offer: None,
                call,
                kind: from.kind,
            },
        };
        setup.run(self.clone(), input_rx).await;
        drop(registration);
    }

    /// An inbound trunk call to an imported number: the Request-URI user names it, or else
    /// the To user. Refuses callers from countries the number does not allow, before its
    /// webhook or any agent is asked. Picks the inbound agent by weight.
    async fn route_to_number(&self, invite: &Request, uri_user: &str) -> Result<Call, NoRoute> {
        let to_user = invite
            .headers
            .get("To")
            .and_then(|to| message::NameAddr::parse(to).ok())
            .and_then(|to| user_of(&to.uri));
        let mut number = self.inner.store.find_number_for_inbound(uri_user).await?;
        if number.is_none() {
            if let Some(to_user) = to_user.as_deref() {
                number = self.inner.store.find_number_for_inbound(to_user).await?;
            }
        }
        let Some(number) = number else {
            return Err(NoRoute::NotFound);
        };
        let bound = crate::model::number::pick_agent(&number.inbound_agents, rand::random::<f64>())
            .map(str::to_owned);
        let from_number = invite
            .headers
            .get("From")
            .and_then(|f| message::NameAddr::parse(f).ok())
            .and_then(|f| user_of(&f.uri));
        let caller_country = from_number.as_deref().and_then(country::country_of);
        let allowed = number.allowed_inbound_country_list.as_deref();
        if !country::admits(allowed, caller_country) {
            info!(
                number = %number.phone_number,
                caller_country = caller_country.unwrap_or("unknown"),
                "inbound call refused: caller country not allowed"
            );
            crate::metrics::inbound_call_rejected("country_not_allowed");
            return Err(NoRoute::CountryNotAllowed);
        }
        // The number's webhook may pick the agent and add context before we answer.
        let hook = match number.inbound_webhook_url.as_deref() {
            Some(url) => {
                crate::webhook::inbound(
                    url,
                    bound.as_deref(),
                    from_number.as_deref(),
                    &number.phone_number,
                )
                .await
            }
            None => None,
        };
        let hook = hook.unwrap_or_default();
        let mut agent = None;
        if let Some(id) = hook.override_agent_id.as_deref() {
            agent = self.inner.store.get_agent(id).await?;
            if agent.is_none() {
                warn!(number = %number.phone_number, agent_id = id, "inbound webhook named an unknown agent");
            }
        }
        if agent.is_none() {
            if let Some(id) = bound.as_deref() {
                agent = self.inner.store.get_agent(id).await?;
            }
        }
        let Some(agent) = agent else {
            info!(number = %number.phone_number, "inbound call to a number with no usable inbound agent");
            return Err(NoRoute::NotFound);
        };
        let custom: BTreeMap<String, String> = invite
            .headers
            .iter()
            .filter(|(name, _)| name.len() > 2 && name[..2].eq_ignore_ascii_case("x-"))
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        Ok(Call {
            call_id: crate::store::new_id("call_"),
            call_type: "phone_call".to_string(),
            agent_id: agent.agent_id.clone(),
            agent_name: agent.agent_name.clone(),
            agent_version: agent.version,
            call_status: crate::model::CallStatus::Registered,
            direction: crate::model::Direction::Inbound,
            from_number,
            to_number: Some(number.phone_number.clone()),
            metadata: hook.metadata.filter(|m| !m.is_null()),
            retell_llm_dynamic_variables: hook.dynamic_variables,
            custom_sip_headers: (!custom.is_empty()).then_some(custom),
            start_timestamp: None,
            end_timestamp: None,
            duration_ms: None,
            disconnection_reason: None,
            telephony_identifier: None,
            transfer_destination: None,
            sip_uri: None,
            codec: None,
            sip_status: None,
            registered_until: None,
            created_timestamp: now_ms(),
        })
    }

    /// The media session's settings for a call with `agent`.
    fn session_config(
        &self,
        agent: &Agent,
        call_id: &str,
        negotiated: Negotiated,
        early: bool,
    ) -> SessionConfig {
        let calls = &self.inner.settings.calls;
        SessionConfig {
            negotiated,
            agent_encoding: agent.response_engine.audio_encoding,
            no_audio_timeout: calls.no_audio_timeout,
            inactivity_timeout: Duration::from_millis(
                agent.end_call_after_silence_ms.max(1000) as u64
            ),
            hangup_drain_cap: calls.hangup_drain,
            ssrc: rand::random(),
            cname: format!("dialtone-{call_id}"),
            early,
        }
    }

    fn media_ip(&self, from: &Inbound) -> IpAddr {
        if let Some(ip) = self.inner.settings.media_ip {
            return ip;
        }
        let local = from.local.ip();
        if local.is_unspecified() {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            local
        }
    }

    async fn finish(&self, call_id: &str, reason: DisconnectionReason, sip_status: Option<u16>) {
        match self
            .inner
            .store
            .finish_call(call_id, reason, now_ms(), sip_status)
            .await
        {
            Ok(ended) => {
                info!(call_id, reason = reason.as_str(), "call ended");
                if ended {
                    self.inner.events.call_ended(call_id);
                }
            }
            Err(err) => {
                warn!(%err, call_id, reason = reason.as_str(), "could not record the end of a call")
            }
        }
    }
}

/// One answered call's state, whichever side dialled: what the connected phase needs.
struct Live {
    dialog: Dialog,
    local: LocalMedia,
    /// The current answer, when the far end made the offer (renegotiations update it).
    answer: Option<sdp::Answer>,
    /// Our offer in the 200 to a re-INVITE without SDP: the ACK carries the answer.
    pending_offer: Option<Sdp>,
    call: Call,
    kind: Kind,
}

/// Our 2xx to a re-INVITE, resent over an unreliable transport until its ACK.
struct Unacked {
    ok: Response,
    tx: ServerTxHandle,
    cseq: u32,
    interval: Duration,
    next: tokio::time::Instant,
    give_up: tokio::time::Instant,
}

/// One inbound call from INVITE to its end.
struct CallSetup {
    invite: Request,
    tx: ServerTxHandle,
    /// Our offer in the 200, when the INVITE carried none (the answer comes in the ACK).
    offer_sent: Option<Sdp>,
    socket: Option<crate::media::ports::RtpSocket>,
    live: Live,
}

impl CallSetup {
    fn response(&self, status: u16, reason: &str, contact: &str) -> Response {
        let mut resp = Response::for_request(
            &self.invite,
            status,
            reason,
            Some(&self.live.dialog.key.local_tag),
        );
        if status > 100 && status < 300 {
            resp.headers.push("Contact", contact);
        }
        resp
    }

    async fn run(mut self, engine: Engine, mut inputs: mpsc::Receiver<CallInput>) {
        let contact = engine
            .inner
            .endpoint
            .dialog_contact(self.live.kind, self.live.dialog.secure);
        self.tx.respond(self.response(180, "Ringing", &contact));

        let agent = match engine.inner.store.get_agent(&self.live.call.agent_id).await {
            Ok(Some(agent)) => agent,
            Ok(None) | Err(_) => {
                warn!(agent_id = %self.live.call.agent_id, "agent of a registered call is gone");
                self.tx
                    .respond(self.response(480, "Temporarily Unavailable (no agent)", &contact));
                engine
                    .finish(
                        &self.live.call.call_id,
                        DisconnectionReason::ErrorLlmWebsocketOpen,
                        Some(480),
                    )
                    .await;
                return;
            }
        };
        // Open the agent's socket while the caller hears ringing; a CANCEL or a stop-call
        // can end this wait.
        let start = self.start_info(&agent);
        let config = AgentConfig {
            url: agent.response_engine.url.clone(),
            headers: agent.response_engine.headers.clone(),
            encoding: agent.response_engine.audio_encoding,
            connect_timeout: engine.inner.settings.calls.agent_connect_timeout,
        };
        let link = tokio::select! {
            link = bridge::connect(&config, start) => link,
            _ = self.tx.cancelled() => {
                engine.finish(&self.live.call.call_id, DisconnectionReason::UserHangup, Some(487)).await;
                return;
            }
            stop = wait_for_stop(&mut inputs) => {
                if stop {
                    self.tx.respond(self.response(480, "Temporarily Unavailable (stopped)", &contact));
                    engine.finish(&self.live.call.call_id, DisconnectionReason::ManualStopped, Some(480)).await;
                }
                return;
            }
        };
        let link = match link {
            Ok(link) => link,
            Err(err) => {
                warn!(%err, "agent websocket did not open; refusing the call");
                self.tx.respond(self.response(
                    480,
                    "Temporarily Unavailable (agent unreachable)",
                    &contact,
                ));
                engine
                    .finish(
                        &self.live.call.call_id,
                        DisconnectionReason::ErrorLlmWebsocketOpen,
                        Some(480),
                    )
                    .await;
                return;
            }
        };

        // Answer.
        let body = match &self.live.answer {
            Some(answer) => answer.sdp.to_string(),
            None => {
                let offer = sdp::offer(&self.live.local);
                let text = offer.to_string();
                self.offer_sent = Some(offer);
                text
            }
        };
        let mut ok = self.response(200, "OK", &contact);
        ok.headers.push("Allow", ALLOW);
        ok.headers.push("Content-Type", "application/sdp");
        ok.body = Bytes::from(body);
        self.tx.respond(ok.clone());
        let answered_at = now_ms();
        let codec = self
            .live
            .answer
            .as_ref()
            .map(|a| a.negotiated.codec.encoding_name())
            .unwrap_or("");
        let telephony_id = self
            .invite
            .call_id()
            .map(|c| serde_json::json!({ "sip_call_id": c }));
        match engine
            .inner
            .store
            .mark_ongoing(
                &self.live.call.call_id,
                answered_at,
                codec,
                telephony_id.as_ref(),
                Some(200),
            )
            .await
        {
            Ok(true) => engine.inner.events.call_started(&self.live.call.call_id),
            // Stopped or ended through the API while it was being set up.
            Ok(false) => {
                let _ = link.to_agent.try_send(crate::agent::ToAgent::Stop);
                let ending = Ending {
                    reason: DisconnectionReason::ManualStopped,
                    send_bye: true,
                };
                self.live.end(&engine, ending).await;
                return;
            }
            Err(err) => warn!(%err, "could not record the answer"),
        }

        // Wait for the ACK, retransmitting the 2xx over UDP (RFC 3261 §13.3.1.4). The
        // caller may hang up before it comes.
        let negotiated = match self.wait_for_ack(&engine, &mut inputs, ok).await {
            Ok(negotiated) if codec.is_empty() => {
                // Our offer went in the 200: the ACK's answer settled the codec.
                let name = negotiated.codec.encoding_name();
                if let Err(err) = engine
                    .inner
                    .store
                    .set_codec(&self.live.call.call_id, name)
                    .await
                {
                    warn!(%err, "could not record the codec");
                }
                negotiated
            }
            Ok(negotiated) => negotiated,
            Err(ending) => {
                let _ = link.to_agent.try_send(crate::agent::ToAgent::Stop);
                self.live.end(&engine, ending).await;
                return;
            }
        };

        let Some(socket) = self.socket.take() else {
            return;
        };
        let media = session::spawn(
            socket,
            engine.session_config(&agent, &self.live.call.call_id, negotiated, false),
            link,
        );
        let max_duration = Duration::from_millis(agent.max_call_duration_ms.max(1000) as u64)
            .min(engine.inner.settings.calls.max_call_duration);
        let ending = self
            .live
            .connected(&engine, &mut inputs, media, max_duration)
            .await;
        self.live.end(&engine, ending).await;
    }

    fn start_info(&self, agent: &Agent) -> StartInfo {
        let mut params = BTreeMap::new();
        params.insert("call_id".to_string(), self.live.call.call_id.clone());
        params.insert("agent_id".to_string(), agent.agent_id.clone());
        params.insert(
            "direction".to_string(),
            self.live.call.direction.as_str().to_string(),
        );
        let from_user = self
            .invite
            .headers
            .get("From")
            .and_then(|f| message::NameAddr::parse(f).ok())
            .and_then(|f| message::SipUri::parse(&f.uri))
            .and_then(|u| u.user);
        if let Some(from) = self.live.call.from_number.clone().or(from_user) {
            params.insert("from_number".to_string(), from);
        }
        if let Some(to) = &self.live.call.to_number {
            params.insert("to_number".to_string(), to.clone());
        }
        if let Some(metadata) = &self.live.call.metadata {
            params.insert("metadata".to_string(), metadata.to_string());
        }
        if let Some(vars) = &self.live.call.retell_llm_dynamic_variables {
            for (k, v) in vars {
                params.insert(k.clone(), v.clone());
            }
        }
        for (name, value) in self.invite.headers.iter() {
            if name.len() > 2 && name[..2].eq_ignore_ascii_case("x-") {
                params.insert(name.to_string(), value.to_string());
            }
        }
        StartInfo {
            call_id: self.live.call.call_id.clone(),
            stream_sid: String::new(),
            account_sid: String::new(),
            custom_parameters: params,
        }
    }

    /// Retransmits our 2xx until its ACK (T1 doubling to T2, over UDP only) and gives up
    /// after 64·T1. Returns the media description to start with.
    async fn wait_for_ack(
        &mut self,
        engine: &Engine,
        inputs: &mut mpsc::Receiver<CallInput>,
        ok: Response,
    ) -> Result<Negotiated, Ending> {
        let timers = engine.inner.settings.timers;
        let reliable = self.live.kind.is_reliable();
        let give_up = tokio::time::Instant::now() + timers.t1 * 64;
        let mut interval = timers.t1;
        let mut next = tokio::time::Instant::now() + interval;
        loop {
            tokio::select! {
                input = inputs.recv() => match input {
                    Some(CallInput::Ack(ack)) => return self.media_after_ack(&ack),
                    Some(CallInput::Request(req, tx)) if req.method == Method::Bye => {
                        tx.respond(Response::for_request(&req, 200, "OK", None));
                        return Err(Ending { reason: DisconnectionReason::UserHangup, send_bye: false });
                    }
                    Some(CallInput::Request(req, tx)) => {
                        // RFC 3261 §14.2: no new offer before the first completes.
                        tx.respond(Response::for_request(&req, 491, "Request Pending", None));
                    }
                    Some(CallInput::Stop) => {
                        return Err(Ending { reason: DisconnectionReason::ManualStopped, send_bye: true });
                    }
                    None => return Err(Ending { reason: DisconnectionReason::ErrorUnknown, send_bye: true }),
                },
                _ = tokio::time::sleep_until(next), if !reliable => {
                    if tokio::time::Instant::now() >= give_up {
                        warn!("no ACK for our 200 within 64*T1; ending the call");
                        return Err(Ending { reason: DisconnectionReason::ErrorUnknown, send_bye: true });
                    }
                    self.tx.respond(ok.clone());
                    interval = (interval * 2).min(timers.t2);
                    next = tokio::time::Instant::now() + interval;
                }
                // Its own branch, so giving up does not wait for the next resend (which
                // may be up to T2 away).
                _ = tokio::time::sleep_until(give_up) => {
                    warn!("no ACK for our 200 within 64*T1; ending the call");
                    return Err(Ending { reason: DisconnectionReason::ErrorUnknown, send_bye: true });
                }
            }
        }
    }

    /// The negotiated media once the ACK is in: our answer's, or the one the ACK's answer
    /// to our offer gives.
    fn media_after_ack(&mut self, ack: &Request) -> Result<Negotiated, Ending> {
        if let Some(answer) = &self.live.answer {
            return Ok(answer.negotiated.clone());
        }
        let fail = Ending {
            reason: DisconnectionReason::ErrorUnknown,
            send_bye: true,
        };
        let Some(offer) = &self.offer_sent else {
            return Err(fail);
        };
        let answer = Sdp::parse(&ack.body).map_err(|err| {
            warn!(%err, "ACK carried no usable SDP answer");
            Ending {
                reason: DisconnectionReason::ErrorUnknown,
                send_bye: true,
            }
        })?;
        sdp::accept_answer(offer, &answer).map_err(|err| {
            warn!(%err, "SDP answer in the ACK does not fit our offer");
            fail
        })
    }
}

impl Live {
    /// The connected call: media runs in its own task; this waits for whatever ends it.
    async fn connected(
        &mut self,
        engine: &Engine,
        inputs: &mut mpsc::Receiver<CallInput>,
        mut media: MediaHandle,
        max_duration: Duration,
    ) -> Ending {
        let deadline = tokio::time::sleep(max_duration);
        tokio::pin!(deadline);
        // Our 2xx to a re-INVITE waiting for its ACK.
        let mut unacked: Option<Unacked> = None;
        let far = tokio::time::Instant::now() + Duration::from_secs(86_400 * 365);
        loop {
            let resend_at = unacked.as_ref().map_or(far, |u| u.next.min(u.give_up));
            tokio::select! {
                () = tokio::time::sleep_until(resend_at), if unacked.is_some() => {
                    let Some(u) = unacked.as_mut() else { continue };
                    let now = tokio::time::Instant::now();
                    if now >= u.give_up {
                        // RFC 3261 §13.3.1.4: the session ends with a BYE.
                        warn!("no ACK for our 200 to a re-INVITE within 64*T1; ending the call");
                        self.stop_media(&mut media).await;
                        return Ending { reason: DisconnectionReason::ErrorUnknown, send_bye: true };
                    }
                    u.tx.respond(u.ok.clone());
                    u.interval = (u.interval * 2).min(engine.inner.settings.timers.t2);
                    u.next = now + u.interval;
                }
                outcome = &mut media.done => {
                    let reason = match outcome {
                        Ok(outcome) => outcome.reason.unwrap_or(DisconnectionReason::ErrorUnknown),
                        Err(err) => {
                            warn!(%err, "media task failed");
                            DisconnectionReason::ErrorUnknown
                        }
                    };
                    return Ending { reason, send_bye: true };
                }
                _ = &mut deadline => {
                    self.stop_media(&mut media).await;
                    return Ending { reason: DisconnectionReason::MaxDurationReached, send_bye: true };
                }
                input = inputs.recv() => match input {
                    Some(CallInput::Stop) | None => {
                        self.stop_media(&mut media).await;
                        return Ending { reason: DisconnectionReason::ManualStopped, send_bye: true };
                    }
                    Some(CallInput::Ack(ack)) => {
                        if unacked.as_ref().is_some_and(|u| Some(u.cseq) == ack.cseq().map(|c| c.seq)) {
                            unacked = None;
                        }
                        self.answer_in_ack(&ack, &media, engine).await
                    }
                    Some(CallInput::Request(req, tx)) => {
                        if let Some(cseq) = req.cseq() {
                            if !self.dialog.accept_remote_cseq(cseq.seq) {
                                tx.respond(Response::for_request(&req, 500, "Server Internal Error (CSeq out of order)", None));
                                continue;
                            }
                        }
                        match req.method {
                            Method::Bye => {
                                tx.respond(Response::for_request(&req, 200, "OK", None));
                                self.stop_media(&mut media).await;
                                return Ending { reason: DisconnectionReason::UserHangup, send_bye: false };
                            }
                            Method::Invite | Method::Update => {
                                let ok = self.renegotiate(engine, &req, &tx, &media).await;
                                // Over UDP nothing below us resends a 2xx to an INVITE: we do,
                                // until its ACK (RFC 3261 §13.3.1.4).
                                if let (Some(ok), Method::Invite, false) = (ok, &req.method, self.kind.is_reliable()) {
                                    let t1 = engine.inner.settings.timers.t1;
                                    let now = tokio::time::Instant::now();
                                    unacked = Some(Unacked {
                                        ok,
                                        tx,
                                        cseq: req.cseq().map(|c| c.seq).unwrap_or(0),
                                        interval: t1,
                                        next: now + t1,
                                        give_up: now + t1 * 64,
                                    });
                                }
                            }
                            _ => tx.respond(Response::for_request(&req, 200, "OK", None)),
                        }
                    }
                }
            }
        }
    }

    /// A re-INVITE or UPDATE: answer its offer on the same port (hold and unhold included)
    /// and tell the media task. Without an offer, our current description is the answer.
    /// Returns the 2xx sent, if one was.
    async fn renegotiate(
        &mut self,
        engine: &Engine,
        req: &Request,
        tx: &ServerTxHandle,
        media: &MediaHandle,
    ) -> Option<Response> {
        self.local.session_version += 1;
        let contact = engine
            .inner
            .endpoint
            .dialog_contact(self.kind, self.dialog.secure);
        let mut ok = Response::for_request(req, 200, "OK", None);
        ok.headers.push("Contact", contact.as_str());
        ok.headers.push("Allow", ALLOW);
        if req.body.is_empty() {
            ok.headers.push("Content-Type", "application/sdp");
            let offer = sdp::offer(&self.local);
            ok.body = Bytes::from(offer.to_string());
            tx.respond(ok.clone());
            self.pending_offer = Some(offer);
            return Some(ok);
        }
        let answer = Sdp::parse(&req.body)
            .map_err(|e| e.to_string())
            .and_then(|offer| sdp::answer(&offer, &self.local).map_err(|e| e.to_string()));
        match answer {
            Ok(answer) => {
                ok.headers.push("Content-Type", "application/sdp");
                ok.body = Bytes::from(answer.sdp.to_string());
                tx.respond(ok.clone());
                info!(
                    hold = answer.negotiated.remote_hold,
                    codec = answer.negotiated.codec.encoding_name(),
                    "media renegotiated"
                );
                let _ = media
                    .commands
                    .try_send(MediaCommand::Update(answer.negotiated.clone()));
                self.answer = Some(answer);
                Some(ok)
            }
            Err(err) => {
                debug!(%err, "re-offer not acceptable; keeping the current media");
                let mut resp = Response::for_request(req, 488, "Not Acceptable Here", None);
                resp.headers
                    .push("Warning", "304 dialtone \"offer not acceptable\"");
                tx.respond(resp);
                None
            }
        }
    }

    /// The ACK of a re-INVITE we answered with an offer carries the answer: apply it.
    async fn answer_in_ack(&mut self, ack: &Request, media: &MediaHandle, engine: &Engine) {
        let Some(offer) = self.pending_offer.take() else {
            return;
        };
        let negotiated = Sdp::parse(&ack.body)
            .map_err(|e| e.to_string())
            .and_then(|answer| sdp::accept_answer(&offer, &answer).map_err(|e| e.to_string()));
        match negotiated {
            Ok(negotiated) => {
                info!(
                    hold = negotiated.remote_hold,
                    codec = negotiated.codec.encoding_name(),
                    "media renegotiated (answer in ACK)"
                );
                let codec = negotiated.codec.encoding_name();
                if let Err(err) = engine
                    .inner
                    .store
                    .set_codec(&self.call.call_id, codec)
                    .await
                {
                    warn!(%err, "could not record the codec");
                }
                let _ = media.commands.try_send(MediaCommand::Update(negotiated));
            }
            Err(err) => {
                warn!(%err, "the answer in the ACK does not fit our offer; media unchanged")
            }
        }
    }

    async fn stop_media(&self, media: &mut MediaHandle) {
        let _ = media.commands.try_send(MediaCommand::Stop);
        // The media task sends `stop` to the agent and closes; give it a moment.
        let _ = tokio::time::timeout(Duration::from_secs(2), &mut media.done).await;
    }

    /// Sends BYE when we still owe one, and records the end.
    async fn end(&mut self, engine: &Engine, ending: Ending) {
        let mut status = None;
        if ending.send_bye {
            let contact = engine
                .inner
                .endpoint
                .dialog_contact(self.kind, self.dialog.secure);
            let mut bye = self.dialog.request(Method::Bye, &contact, None);
            bye.headers.push(
                "Reason",
                format!("SIP;cause=200;text=\"{}\"", ending.reason.as_str()),
            );
            match engine.inner.endpoint.request(bye, self.dialog.flow).await {
                Ok(resp) => status = Some(resp.status),
                Err(err) => debug!(%err, "BYE got no final response"),
            }
        }
        engine
            .finish(&self.call.call_id, ending.reason, status)
            .await;
    }
}

/// Resolves true on a stop-call, false when the channel closed; ignores other input
/// (nothing else can arrive before the dialog is confirmed).
async fn wait_for_stop(inputs: &mut mpsc::Receiver<CallInput>) -> bool {
    loop {
        match inputs.recv().await {
            Some(CallInput::Stop) => return true,
            Some(CallInput::Request(req, tx)) => {
                tx.respond(Response::for_request(&req, 491, "Request Pending", None));
            }
            Some(CallInput::Ack(_)) => {}
            None => return false,
        }
    }
}
