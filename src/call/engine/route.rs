//! Where an inbound INVITE goes: a registered call (`sip:{call_id}@host`), or else an
//! imported number (the Request-URI user, then the To user), whose inbound agent is picked
//! by weight, after the caller's country is checked and the number's webhook is asked.

use std::collections::BTreeMap;

use tracing::{debug, info, warn};

use super::{now_ms, Engine};
use crate::call::rejection::Rejection;
use crate::model::country;
use crate::model::number::pick_agent;
use crate::model::{Call, Direction};
use crate::sip::message::{self, Request};
use crate::sip::uri::user_of;
use crate::store::StoreError;

/// How an INVITE found its call.
pub(super) enum Route {
    /// `sip:{call_id}@host` for a call registered through the API: it must be claimed.
    Registered(Call),
    /// A trunk call to an imported number: a new call record.
    Number(Call),
}

fn unavailable(err: StoreError) -> Rejection {
    warn!(%err, "store unavailable while routing an INVITE");
    Rejection::StoreUnavailable
}

impl Engine {
    /// Finds the call an INVITE is for, or the rejection to send. Nothing is claimed or
    /// written yet.
    pub(super) async fn route(&self, invite: &Request) -> Result<Route, Rejection> {
        let Some(user) = invite.uri_user() else {
            return Err(Rejection::NoRoute);
        };
        let registered = self
            .inner
            .store
            .get_call(&user)
            .await
            .map_err(unavailable)?;
        match registered {
            Some(call) => Ok(Route::Registered(call)),
            None => match self.route_to_number(invite, &user).await {
                Err(Rejection::NoRoute) => {
                    debug!(%user, "no registered call or imported number with an agent: 404");
                    Err(Rejection::NoRoute)
                }
                routed => routed.map(Route::Number),
            },
        }
    }

    /// An inbound trunk call to an imported number: the Request-URI user names it, or else
    /// the To user. Refuses callers from countries the number does not allow, before its
    /// webhook or any agent is asked. Picks the inbound agent by weight.
    async fn route_to_number(&self, invite: &Request, uri_user: &str) -> Result<Call, Rejection> {
        let to_user = invite
            .headers
            .get("To")
            .and_then(|to| message::NameAddr::parse(to).ok())
            .and_then(|to| user_of(&to.uri));
        let mut number = self
            .inner
            .store
            .find_number_for_inbound(uri_user)
            .await
            .map_err(unavailable)?;
        if number.is_none() {
            if let Some(to_user) = to_user.as_deref() {
                number = self
                    .inner
                    .store
                    .find_number_for_inbound(to_user)
                    .await
                    .map_err(unavailable)?;
            }
        }
        let Some(number) = number else {
            return Err(Rejection::NoRoute);
        };
        let bound = pick_agent(&number.inbound_agents, rand::random::<f64>()).map(str::to_owned);
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
            return Err(Rejection::CountryNotAllowed);
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
            agent = self.inner.store.get_agent(id).await.map_err(unavailable)?;
            if agent.is_none() {
                warn!(number = %number.phone_number, agent_id = id, "inbound webhook named an unknown agent");
            }
        }
        if agent.is_none() {
            if let Some(id) = bound.as_deref() {
                agent = self.inner.store.get_agent(id).await.map_err(unavailable)?;
            }
        }
        let Some(agent) = agent else {
            info!(number = %number.phone_number, "inbound call to a number with no usable inbound agent");
            return Err(Rejection::NoRoute);
        };
        let custom: BTreeMap<String, String> = invite
            .headers
            .iter()
            .filter(|(name, _)| name.len() > 2 && name[..2].eq_ignore_ascii_case("x-"))
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        Ok(Call {
            from_number,
            to_number: Some(number.phone_number.clone()),
            metadata: hook.metadata.filter(|m| !m.is_null()),
            retell_llm_dynamic_variables: hook.dynamic_variables,
            custom_sip_headers: (!custom.is_empty()).then_some(custom),
            ..Call::new(
                crate::store::new_id("call_"),
                &agent,
                Direction::Inbound,
                now_ms(),
            )
        })
    }
}
