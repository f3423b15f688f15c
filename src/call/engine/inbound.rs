//! An inbound INVITE up to its leg: route it, check its offer, bind an RTP port, claim the
//! registered call (or record the new one), fetch the agent and make the dialog. Whatever
//! fails on the way is refused from the rejection table; then a [`Leg`] takes over.

use std::collections::BTreeMap;

use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::driver::CallIo;
use super::route::Route;
use super::{now_ms, srtp, Engine, Registration};
use crate::agent::bridge::StartInfo;
use crate::call::leg::{Leg, LegConfig};
use crate::call::rejection::Rejection;
use crate::model::{Agent, Call};
use crate::sdp::{self, LocalMedia, Sdp};
use crate::sip::dialog::Dialog;
use crate::sip::endpoint::ServerTxHandle;
use crate::sip::message::{self, Request};
use crate::sip::transport::Inbound;
use crate::sip::ua::new_tag;
use crate::sip::uri::user_of;
use crate::store::Claim;
use crate::sync::lock;

/// Refuses an INVITE before (or without) a leg: the table's response, counted.
fn reject(tx: &ServerTxHandle, invite: &Request, rejection: Rejection, warning: Option<&str>) {
    rejection.count();
    tx.respond(rejection.response(invite, &new_tag(), warning));
}

impl Engine {
    /// The INVITE for a registered call or an imported number, from routing to the end
    /// of the call.
    pub(super) async fn inbound_call(self, invite: Request, tx: ServerTxHandle, from: Inbound) {
        let route = match self.route(&invite).await {
            Ok(route) => route,
            Err(rejection) => return reject(&tx, &invite, rejection, None),
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
                    return reject(&tx, &invite, Rejection::UnreadableSdp, None);
                }
            }
        };
        let socket = match self.inner.ports.bind().await {
            Ok(socket) => socket,
            Err(err) => {
                warn!(%err, "no RTP port for a new call");
                return reject(&tx, &invite, Rejection::NoMediaPorts, None);
            }
        };
        let session_id = rand::random::<u32>() as u64;
        let mut local = LocalMedia::new(self.media_ip(&from), socket.port(), session_id, 1);
        let srtp_mode = self.inner.settings.srtp;
        local.srtp = match srtp::policy(srtp_mode, from.kind) {
            Ok(policy) => policy,
            Err(why) => {
                let warning = format!("302 dialtone \"{why}\"");
                return reject(&tx, &invite, Rejection::OfferNotAcceptable, Some(&warning));
            }
        };
        let answer = match &offer {
            Some(offer) => match sdp::answer(offer, &local) {
                Ok(answer) => Some(answer),
                Err(err) => {
                    debug!(%err, "offer not acceptable");
                    let warning = srtp::warning(&err, srtp_mode, from.kind);
                    return reject(&tx, &invite, Rejection::OfferNotAcceptable, Some(&warning));
                }
            },
            None => None,
        };
        let call = match self.claim(route).await {
            Ok(call) => call,
            Err(rejection) => return reject(&tx, &invite, rejection, None),
        };
        info!(call_id = %call.call_id, agent_id = %call.agent_id, direction = call.direction.as_str(), "call routed");
        // From here on the call has a record: a refusal also settles it.
        let settle = |rejection: Rejection| {
            let engine = self.clone();
            let call_id = call.call_id.clone();
            async move {
                let row = rejection.row();
                if let Some(reason) = row.reason {
                    engine.finish(&call_id, reason, Some(row.status)).await;
                }
            }
        };
        let agent = match self.inner.store.get_agent(&call.agent_id).await {
            Ok(Some(agent)) => agent,
            Ok(None) | Err(_) => {
                warn!(agent_id = %call.agent_id, "agent of a routed call is gone");
                reject(&tx, &invite, Rejection::AgentMissing, None);
                return settle(Rejection::AgentMissing).await;
            }
        };
        let local_tag = new_tag();
        let dialog = match Dialog::from_invite(&invite, &local_tag, tx.target()) {
            Ok(dialog) => dialog,
            Err(err) => {
                debug!(%err, "INVITE cannot make a dialog");
                reject(&tx, &invite, Rejection::NoDialog, None);
                return settle(Rejection::NoDialog).await;
            }
        };
        let (input_tx, inputs) = mpsc::channel(32);
        lock(&self.inner.live).insert(call.call_id.clone(), input_tx.clone());
        let mut registration = Registration::new(self.clone(), call.call_id.clone());
        registration.add_dialog_with(dialog.key.clone(), input_tx);

        let cfg = LegConfig {
            reliable: from.kind.is_reliable(),
            t1: self.inner.settings.timers.t1,
            t2: self.inner.settings.timers.t2,
            contact: self.inner.endpoint.dialog_contact(from.kind, dialog.secure),
            max_duration: self.max_duration(&agent),
            media_stop_wait: super::MEDIA_STOP_WAIT,
        };
        let start = start_info(&invite, &call, &agent);
        let sip_call_id = invite.call_id().unwrap_or_default().to_string();
        let flow = dialog.flow;
        let leg = Leg::answer(cfg, invite, dialog, local, answer);
        let mut io = CallIo::new(
            self.clone(),
            call.call_id.clone(),
            agent,
            start,
            sip_call_id,
            flow,
            socket,
            inputs,
            registration,
        );
        io.invite_tx = Some(tx);
        io.run(leg).await;
    }

    /// Claims a registered call (one INVITE wins; the others are refused), or records a
    /// new one for an imported number.
    async fn claim(&self, route: Route) -> Result<Call, Rejection> {
        match route {
            Route::Registered(call) => {
                match self
                    .inner
                    .store
                    .claim_registered_call(&call.call_id, now_ms())
                    .await
                {
                    Ok(Claim::Claimed(call)) => Ok(*call),
                    Ok(Claim::Unknown) => Err(Rejection::RegistrationUnknown),
                    Ok(Claim::AlreadyClaimed) => Err(Rejection::AlreadyAnswered),
                    Ok(Claim::Expired) => Err(Rejection::RegistrationExpired),
                    Err(err) => {
                        warn!(%err, "store unavailable while claiming a call");
                        Err(Rejection::StoreUnavailable)
                    }
                }
            }
            Route::Number(call) => match self.inner.store.insert_call(&call).await {
                Ok(()) => Ok(call),
                Err(err) => {
                    warn!(%err, "could not record an inbound call");
                    Err(Rejection::StoreUnavailable)
                }
            },
        }
    }
}

/// The agent's `start` message for an inbound call: who calls whom, the call's metadata
/// and dynamic variables, and the caller's `X-` headers.
fn start_info(invite: &Request, call: &Call, agent: &Agent) -> StartInfo {
    let mut params = BTreeMap::new();
    params.insert("call_id".to_string(), call.call_id.clone());
    params.insert("agent_id".to_string(), agent.agent_id.clone());
    params.insert("direction".to_string(), call.direction.as_str().to_string());
    let from_user = invite
        .headers
        .get("From")
        .and_then(|f| message::NameAddr::parse(f).ok())
        .and_then(|f| user_of(&f.uri));
    if let Some(from) = call.from_number.clone().or(from_user) {
        params.insert("from_number".to_string(), from);
    }
    if let Some(to) = &call.to_number {
        params.insert("to_number".to_string(), to.clone());
    }
    if let Some(metadata) = &call.metadata {
        params.insert("metadata".to_string(), metadata.to_string());
    }
    if let Some(vars) = &call.retell_llm_dynamic_variables {
        for (k, v) in vars {
            params.insert(k.clone(), v.clone());
        }
    }
    for (name, value) in invite.headers.iter() {
        if name.len() > 2 && name[..2].eq_ignore_ascii_case("x-") {
            params.insert(name.to_string(), value.to_string());
        }
    }
    StartInfo {
        call_id: call.call_id.clone(),
        stream_sid: String::new(),
        account_sid: String::new(),
        custom_parameters: params,
    }
}
