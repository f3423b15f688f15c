//! The call engine: the glue between the SIP endpoint (it is its transaction user), the
//! store, the agent bridge and the media tasks, around one sans-IO [`Leg`] per call.
//!
//! Inbound INVITEs are routed and claimed here ([`inbound`], [`route`]); outbound calls
//! are dialled through a number's trunk ([`outbound`]). Then one task per call
//! ([`driver`]) feeds its leg every request, ACK, CANCEL, response, stop and action result,
//! and carries out what the leg decides. The SIP side reaches a call through the dialog map
//! (in-dialog requests, the ACK of our 2xx), the HTTP API through [`CallControl`]. Every
//! path out of the task settles the record once (`finish_call` is idempotent: the first
//! reason wins) and frees the RTP port, the agent socket and the map entries.
//!
//! [`Leg`]: crate::call::leg::Leg

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{debug, info, warn, Instrument};

use crate::call::CallControl;
use crate::config::{CallSettings, TimerSettings};
use crate::media::ports::PortPool;
use crate::media::session::SessionConfig;
use crate::model::{Agent, Call, DisconnectionReason};
use crate::sdp::Negotiated;
use crate::sip::dialog::DialogKey;
use crate::sip::endpoint::{Endpoint, Handler, ServerTxHandle};
use crate::sip::message::Request;
use crate::sip::transport::Inbound;
use crate::store::Store;
use crate::sync::lock;
use crate::webhook::events::CallEvents;

mod driver;
mod inbound;
mod outbound;
mod route;
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

/// How long a media session may take to stop (so the agent hears `stop`) before the call
/// ends without waiting for it.
const MEDIA_STOP_WAIT: Duration = Duration::from_secs(2);

/// Keeps a call in the engine's maps while its task runs, and takes it out however the
/// task ends.
pub(super) struct Registration {
    engine: Engine,
    call_id: String,
    dialog: Option<DialogKey>,
}

impl Registration {
    fn new(engine: Engine, call_id: String) -> Registration {
        Registration {
            engine,
            call_id,
            dialog: None,
        }
    }

    /// Routes in-dialog requests and ACKs for `key` to the call, as its API input does.
    fn add_dialog(&mut self, key: DialogKey) {
        let input = lock(&self.engine.inner.live).get(&self.call_id).cloned();
        if let Some(input) = input {
            self.add_dialog_with(key, input);
        }
    }

    fn add_dialog_with(&mut self, key: DialogKey, input: mpsc::Sender<CallInput>) {
        lock(&self.engine.inner.dialogs).insert(key.clone(), input);
        self.dialog = Some(key);
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        lock(&self.engine.inner.live).remove(&self.call_id);
        if let Some(key) = &self.dialog {
            lock(&self.engine.inner.dialogs).remove(key);
        }
    }
}

impl Engine {
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

    /// How long a call with `agent` may last: the agent's limit, capped by the server's.
    fn max_duration(&self, agent: &Agent) -> Duration {
        Duration::from_millis(agent.max_call_duration_ms.max(1000) as u64)
            .min(self.inner.settings.calls.max_call_duration)
    }
}
