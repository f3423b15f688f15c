//! Outbound calls through an imported number's trunk, up to their leg: the trunk's
//! address (RFC 3263), an RTP port, our offer in the number's codec order, the INVITE
//! with the call's `X-` headers, and the trunk's digest credentials. The leg
//! ([`crate::call::leg`], `dial`) does the rest: ringing, early media, CANCEL, the answer.
//! A call that cannot even be dialled ends `not_connected` with the reason that says why.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::driver::CallIo;
use super::{Engine, Registration};
use crate::agent::bridge::StartInfo;
use crate::call::leg::{Dial, Leg, LegConfig};
use crate::media::ports::RtpSocket;
use crate::model::number::PhoneNumber;
use crate::model::{Agent, Call, DisconnectionReason};
use crate::sdp::{self, LocalMedia, Sdp};
use crate::sip::auth::{Authenticator, Credentials};
use crate::sip::message::{self, Method, Request};
use crate::sip::route::Destination;
use crate::sip::transport::Target;
use crate::sip::ua::{new_tag, ALLOW};
use crate::sip::uri::{host_for_uri, trunk_request_uri, Uri};
use crate::sync::lock;

/// An outbound call ready to dial.
struct Ready {
    agent: Agent,
    start: StartInfo,
    sip_call_id: String,
    target: Target,
    socket: RtpSocket,
    cfg: LegConfig,
    dial: Dial,
}

impl Engine {
    /// An outbound call through a trunk: everything the leg needs, then the leg until
    /// the call ends. A call that cannot even be dialled ends with the reason saying why.
    pub(super) async fn outbound_call(self, call: Call, number: PhoneNumber) {
        let (input_tx, inputs) = mpsc::channel(32);
        lock(&self.inner.live).insert(call.call_id.clone(), input_tx);
        let registration = Registration::new(self.clone(), call.call_id.clone());
        let call_id = call.call_id.clone();
        match self.prepare(&call, &number).await {
            Ok(ready) => {
                let leg = Leg::dial(Instant::now(), ready.cfg, ready.dial);
                let io = CallIo::new(
                    self.clone(),
                    call_id,
                    ready.agent,
                    ready.start,
                    ready.sip_call_id,
                    ready.target,
                    ready.socket,
                    inputs,
                    registration,
                );
                io.run(leg).await;
            }
            Err(reason) => self.finish(&call_id, reason, None).await,
        }
    }

    /// Everything an outbound leg starts from, or the reason the call cannot be dialled.
    async fn prepare(
        &self,
        call: &Call,
        number: &PhoneNumber,
    ) -> Result<Ready, DisconnectionReason> {
        let agent = match self.inner.store.get_agent(&call.agent_id).await {
            Ok(Some(agent)) => agent,
            _ => {
                warn!(agent_id = %call.agent_id, "agent of an outbound call is gone");
                return Err(DisconnectionReason::ErrorUnknown);
            }
        };
        let to = call.to_number.clone().unwrap_or_default();
        let from = call.from_number.clone().unwrap_or_default();
        let uri =
            trunk_request_uri(&number.termination_uri, number.transport, &to).map_err(|err| {
                warn!(%err, "termination URI unusable");
                DisconnectionReason::TelephonyProviderUnavailable
            })?;
        let target = self
            .trunk_target(&uri)
            .await
            .ok_or(DisconnectionReason::TelephonyProviderUnavailable)?;
        let socket = self.inner.ports.bind().await.map_err(|err| {
            warn!(%err, "no RTP port for an outbound call");
            DisconnectionReason::ErrorUnknown
        })?;
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
        local.srtp = super::srtp::policy(self.inner.settings.srtp, target.kind).map_err(|why| {
            warn!(
                kind = target.kind.as_str(),
                why, "outbound call not dialled"
            );
            DisconnectionReason::DialFailed
        })?;
        let offer = sdp::offer(&local);
        let request = self.trunk_invite(call, &uri, &from, target, &offer);
        let auth = match (
            &number.sip_trunk_auth_username,
            &number.sip_trunk_auth_password,
        ) {
            (Some(user), Some(password)) => Some(Authenticator::new(Credentials::new(
                user.clone(),
                password.expose().to_string(),
            ))),
            _ => None,
        };
        let start = StartInfo {
            call_id: call.call_id.clone(),
            stream_sid: String::new(),
            account_sid: String::new(),
            custom_parameters: start_parameters(call, &agent, &from, &to),
        };
        let sip_call_id = request.call_id().unwrap_or_default().to_string();
        let cfg = LegConfig {
            reliable: target.kind.is_reliable(),
            t1: self.inner.settings.timers.t1,
            t2: self.inner.settings.timers.t2,
            // Trunk Request-URIs are `sip:`, so the dialog is never `sips:`-secure.
            contact: self.inner.endpoint.dialog_contact(target.kind, false),
            max_duration: self.max_duration(&agent),
            media_stop_wait: super::MEDIA_STOP_WAIT,
        };
        let dial = Dial {
            request,
            target,
            local,
            offer,
            auth,
            ring: Duration::from_millis(agent.ring_duration_ms.max(1000) as u64),
            forward_early_media: agent.forward_early_media,
        };
        info!(%uri, target = %target.addr, kind = target.kind.as_str(), "dialling");
        Ok(Ready {
            agent,
            start,
            sip_call_id,
            target,
            socket,
            cfg,
            dial,
        })
    }

    /// Where to send the INVITE: RFC 3263 on the URI, first target over an enabled
    /// transport. `None` (logged) when there is none.
    async fn trunk_target(&self, uri: &Uri) -> Option<Target> {
        let dest = match Destination::of(uri) {
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
        uri: &Uri,
        from: &str,
        target: Target,
        offer: &Sdp,
    ) -> Request {
        let contact = self.inner.endpoint.contact(target.kind);
        let public_host = host_for_uri(self.inner.endpoint.public_host()).into_owned();
        let mut headers = message::Headers::default();
        headers.push(
            "From",
            format!("<sip:{from}@{public_host}>;tag={}", new_tag()),
        );
        // The dialled number, escaped as in the Request-URI, at the trunk's host.
        let to = uri.user.as_deref().unwrap_or_default();
        headers.push("To", format!("<sip:{to}@{}>", uri.hostport()));
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
