//! The call record: the call object of the API, with its status, direction and every way
//! a call can end. Field names and enumerations follow Retell's v2 call object, so the
//! official SDK reads a stored call unchanged.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::agent::Agent;

/// `call_status` of the call object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallStatus {
    Registered,
    NotConnected,
    Ongoing,
    Ended,
    Error,
}

impl CallStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CallStatus::Registered => "registered",
            CallStatus::NotConnected => "not_connected",
            CallStatus::Ongoing => "ongoing",
            CallStatus::Ended => "ended",
            CallStatus::Error => "error",
        }
    }

    pub fn parse(s: &str) -> Option<CallStatus> {
        Some(match s {
            "registered" => CallStatus::Registered,
            "not_connected" => CallStatus::NotConnected,
            "ongoing" => CallStatus::Ongoing,
            "ended" => CallStatus::Ended,
            "error" => CallStatus::Error,
            _ => return None,
        })
    }

    /// Whether the call is over (nothing will change it but update/delete through the API).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            CallStatus::NotConnected | CallStatus::Ended | CallStatus::Error
        )
    }
}

/// `disconnection_reason` of the call object: every way a call can end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DisconnectionReason {
    UserHangup,
    AgentHangup,
    CallTransfer,
    Inactivity,
    MaxDurationReached,
    ManualStopped,
    RegisteredCallTimeout,
    DialBusy,
    DialNoAnswer,
    DialFailed,
    InvalidDestination,
    TelephonyProviderPermissionDenied,
    TelephonyProviderUnavailable,
    SipRoutingError,
    UserDeclined,
    ConcurrencyLimitReached,
    ErrorLlmWebsocketOpen,
    ErrorLlmWebsocketLostConnection,
    ErrorLlmWebsocketRuntime,
    ErrorLlmWebsocketCorruptPayload,
    ErrorNoAudioReceived,
    ErrorUnknown,
}

impl DisconnectionReason {
    pub const ALL: [DisconnectionReason; 22] = [
        DisconnectionReason::UserHangup,
        DisconnectionReason::AgentHangup,
        DisconnectionReason::CallTransfer,
        DisconnectionReason::Inactivity,
        DisconnectionReason::MaxDurationReached,
        DisconnectionReason::ManualStopped,
        DisconnectionReason::RegisteredCallTimeout,
        DisconnectionReason::DialBusy,
        DisconnectionReason::DialNoAnswer,
        DisconnectionReason::DialFailed,
        DisconnectionReason::InvalidDestination,
        DisconnectionReason::TelephonyProviderPermissionDenied,
        DisconnectionReason::TelephonyProviderUnavailable,
        DisconnectionReason::SipRoutingError,
        DisconnectionReason::UserDeclined,
        DisconnectionReason::ConcurrencyLimitReached,
        DisconnectionReason::ErrorLlmWebsocketOpen,
        DisconnectionReason::ErrorLlmWebsocketLostConnection,
        DisconnectionReason::ErrorLlmWebsocketRuntime,
        DisconnectionReason::ErrorLlmWebsocketCorruptPayload,
        DisconnectionReason::ErrorNoAudioReceived,
        DisconnectionReason::ErrorUnknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DisconnectionReason::UserHangup => "user_hangup",
            DisconnectionReason::AgentHangup => "agent_hangup",
            DisconnectionReason::CallTransfer => "call_transfer",
            DisconnectionReason::Inactivity => "inactivity",
            DisconnectionReason::MaxDurationReached => "max_duration_reached",
            DisconnectionReason::ManualStopped => "manual_stopped",
            DisconnectionReason::RegisteredCallTimeout => "registered_call_timeout",
            DisconnectionReason::DialBusy => "dial_busy",
            DisconnectionReason::DialNoAnswer => "dial_no_answer",
            DisconnectionReason::DialFailed => "dial_failed",
            DisconnectionReason::InvalidDestination => "invalid_destination",
            DisconnectionReason::TelephonyProviderPermissionDenied => {
                "telephony_provider_permission_denied"
            }
            DisconnectionReason::TelephonyProviderUnavailable => "telephony_provider_unavailable",
            DisconnectionReason::SipRoutingError => "sip_routing_error",
            DisconnectionReason::UserDeclined => "user_declined",
            DisconnectionReason::ConcurrencyLimitReached => "concurrency_limit_reached",
            DisconnectionReason::ErrorLlmWebsocketOpen => "error_llm_websocket_open",
            DisconnectionReason::ErrorLlmWebsocketLostConnection => {
                "error_llm_websocket_lost_connection"
            }
            DisconnectionReason::ErrorLlmWebsocketRuntime => "error_llm_websocket_runtime",
            DisconnectionReason::ErrorLlmWebsocketCorruptPayload => {
                "error_llm_websocket_corrupt_payload"
            }
            DisconnectionReason::ErrorNoAudioReceived => "error_no_audio_received",
            DisconnectionReason::ErrorUnknown => "error_unknown",
        }
    }

    pub fn parse(s: &str) -> Option<DisconnectionReason> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// The `call_status` a call ending this way has (API.md's table).
    pub fn call_status(self) -> CallStatus {
        use DisconnectionReason::*;
        match self {
            UserHangup
            | AgentHangup
            | CallTransfer
            | Inactivity
            | MaxDurationReached
            | ManualStopped
            | RegisteredCallTimeout => CallStatus::Ended,
            DialBusy
            | DialNoAnswer
            | DialFailed
            | InvalidDestination
            | TelephonyProviderPermissionDenied
            | TelephonyProviderUnavailable
            | SipRoutingError
            | UserDeclined => CallStatus::NotConnected,
            ConcurrencyLimitReached
            | ErrorLlmWebsocketOpen
            | ErrorLlmWebsocketLostConnection
            | ErrorLlmWebsocketRuntime
            | ErrorLlmWebsocketCorruptPayload
            | ErrorNoAudioReceived
            | ErrorUnknown => CallStatus::Error,
        }
    }
}

/// `direction` of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    #[default]
    Inbound,
    Outbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// A call record: the call object of the API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Call {
    pub call_id: String,
    pub call_type: String,
    pub agent_id: String,
    pub agent_name: Option<String>,
    pub agent_version: i64,
    pub call_status: CallStatus,
    pub direction: Direction,
    pub from_number: Option<String>,
    pub to_number: Option<String>,
    pub metadata: Option<serde_json::Value>,
    pub retell_llm_dynamic_variables: Option<BTreeMap<String, String>>,
    pub custom_sip_headers: Option<BTreeMap<String, String>>,
    pub start_timestamp: Option<i64>,
    pub end_timestamp: Option<i64>,
    pub duration_ms: Option<i64>,
    pub disconnection_reason: Option<DisconnectionReason>,
    /// The SIP Call-ID of the caller's leg.
    pub telephony_identifier: Option<serde_json::Value>,
    pub transfer_destination: Option<String>,
    /// This server's own: the URI to dial for a registered call.
    pub sip_uri: Option<String>,
    /// This server's own: the negotiated codec (`PCMU`, `PCMA`, `G722`).
    pub codec: Option<String>,
    /// This server's own: the last SIP status of the call (e.g. 200, 486).
    pub sip_status: Option<u16>,
    /// When the registration window closes (Unix ms); registered calls only.
    pub registered_until: Option<i64>,
    pub created_timestamp: i64,
}

impl Call {
    /// A new call with `agent`, not yet connected (`registered`), with nothing known
    /// about it yet: what every call starts as, whichever way it came in or goes out.
    pub fn new(
        call_id: String,
        agent: &Agent,
        direction: Direction,
        created_timestamp: i64,
    ) -> Call {
        Call {
            call_id,
            call_type: "phone_call".to_owned(),
            agent_id: agent.agent_id.clone(),
            agent_name: agent.agent_name.clone(),
            agent_version: agent.version,
            call_status: CallStatus::Registered,
            direction,
            from_number: None,
            to_number: None,
            metadata: None,
            retell_llm_dynamic_variables: None,
            custom_sip_headers: None,
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
            created_timestamp,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_round_trip_and_map_to_statuses() {
        for r in DisconnectionReason::ALL {
            assert_eq!(DisconnectionReason::parse(r.as_str()), Some(r));
            let json = serde_json::to_string(&r).unwrap();
            assert_eq!(json, format!("\"{}\"", r.as_str()));
        }
        assert_eq!(
            DisconnectionReason::UserHangup.call_status(),
            CallStatus::Ended
        );
        assert_eq!(
            DisconnectionReason::DialBusy.call_status(),
            CallStatus::NotConnected
        );
        assert_eq!(
            DisconnectionReason::ErrorLlmWebsocketOpen.call_status(),
            CallStatus::Error
        );
    }
}
