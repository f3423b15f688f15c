//! Every way a call can be refused or fail to connect, in one table each: what the caller
//! is told (SIP status and reason phrase), what is counted (the metric's `cause`), and what
//! the call record says (`disconnection_reason`).
//!
//! [`Rejection`] covers an inbound INVITE refused before it was answered; [`dial_failure`]
//! maps the final response to one of our outbound INVITEs to the record's reason.

use crate::model::DisconnectionReason;
use crate::sip::message::{Request, Response};

/// Why an inbound INVITE is refused rather than answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// No registered call or imported number with an agent matches the Request-URI.
    NoRoute,
    /// The store could not be read or written while routing or claiming.
    StoreUnavailable,
    /// The caller's country is not on the number's `allowed_inbound_country_list`.
    CountryNotAllowed,
    /// The registered call does not exist (any more).
    RegistrationUnknown,
    /// The registered call was already answered once (a second INVITE for it).
    AlreadyAnswered,
    /// The registered call's window to be dialled has closed.
    RegistrationExpired,
    /// The body is not SDP we can read.
    UnreadableSdp,
    /// Every RTP port is in use.
    NoMediaPorts,
    /// The offer cannot be accepted (codecs, SRTP policy, transport): a 488 whose Warning
    /// says why (see the engine's `srtp::warning`).
    OfferNotAcceptable,
    /// The INVITE lacks what a dialog needs (Call-ID, tags, Contact).
    NoDialog,
    /// The call's agent was deleted before the call came in.
    AgentMissing,
    /// The agent's websocket did not open.
    AgentUnreachable,
    /// Stopped through the API while ringing.
    Stopped,
    /// The caller cancelled (the endpoint already answered 487).
    Cancelled,
}

/// One row of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row {
    pub status: u16,
    pub phrase: &'static str,
    /// `cause` of `dialtone_inbound_calls_rejected_total`.
    pub cause: &'static str,
    /// The record's reason, when a record exists by the time of the rejection; `None` for
    /// rejections before routing made one (no record is written).
    pub reason: Option<DisconnectionReason>,
}

impl Rejection {
    pub const ALL: [Rejection; 14] = [
        Rejection::NoRoute,
        Rejection::StoreUnavailable,
        Rejection::CountryNotAllowed,
        Rejection::RegistrationUnknown,
        Rejection::AlreadyAnswered,
        Rejection::RegistrationExpired,
        Rejection::UnreadableSdp,
        Rejection::NoMediaPorts,
        Rejection::OfferNotAcceptable,
        Rejection::NoDialog,
        Rejection::AgentMissing,
        Rejection::AgentUnreachable,
        Rejection::Stopped,
        Rejection::Cancelled,
    ];

    /// The table.
    pub const fn row(self) -> Row {
        use DisconnectionReason as R;
        let (status, phrase, cause, reason) = match self {
            Rejection::NoRoute => (404, "Not Found", "no_route", None),
            Rejection::StoreUnavailable => (503, "Service Unavailable", "store_unavailable", None),
            Rejection::CountryNotAllowed => (
                403,
                "Forbidden (caller country not allowed)",
                "country_not_allowed",
                None,
            ),
            Rejection::RegistrationUnknown => (404, "Not Found", "registration_unknown", None),
            Rejection::AlreadyAnswered => (
                486,
                "Busy Here (call already answered)",
                "already_answered",
                None,
            ),
            Rejection::RegistrationExpired => (
                404,
                "Not Found (registration expired)",
                "registration_expired",
                None,
            ),
            Rejection::UnreadableSdp => (400, "Bad Request (SDP)", "unreadable_sdp", None),
            Rejection::NoMediaPorts => (
                503,
                "Service Unavailable (no media ports)",
                "no_media_ports",
                None,
            ),
            Rejection::OfferNotAcceptable => {
                (488, "Not Acceptable Here", "offer_not_acceptable", None)
            }
            Rejection::NoDialog => (
                400,
                "Bad Request (no dialog)",
                "no_dialog",
                Some(R::ErrorUnknown),
            ),
            Rejection::AgentMissing => (
                480,
                "Temporarily Unavailable (no agent)",
                "agent_missing",
                Some(R::ErrorLlmWebsocketOpen),
            ),
            Rejection::AgentUnreachable => (
                480,
                "Temporarily Unavailable (agent unreachable)",
                "agent_unreachable",
                Some(R::ErrorLlmWebsocketOpen),
            ),
            Rejection::Stopped => (
                480,
                "Temporarily Unavailable (stopped)",
                "stopped",
                Some(R::ManualStopped),
            ),
            Rejection::Cancelled => (487, "Request Terminated", "cancelled", Some(R::UserHangup)),
        };
        Row {
            status,
            phrase,
            cause,
            reason,
        }
    }

    /// The final response refusing `invite`, with our To tag. `warning` (RFC 3261 §20.43)
    /// says why an offer was not acceptable.
    pub fn response(self, invite: &Request, to_tag: &str, warning: Option<&str>) -> Response {
        let row = self.row();
        let mut resp = Response::for_request(invite, row.status, row.phrase, Some(to_tag));
        if let Some(warning) = warning {
            resp.headers.push("Warning", warning);
        }
        resp
    }

    /// Counts the rejection in `dialtone_inbound_calls_rejected_total`.
    pub fn count(self) {
        crate::metrics::inbound_call_rejected(self.row().cause);
    }
}

/// The reason an outbound call ends with when its INVITE fails with `status`.
pub fn dial_failure(status: u16) -> DisconnectionReason {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rejection_is_a_final_error_with_its_own_cause() {
        let mut causes = std::collections::BTreeSet::new();
        for r in Rejection::ALL {
            let row = r.row();
            assert!((400..700).contains(&row.status), "{r:?}");
            assert!(!row.phrase.is_empty());
            assert!(causes.insert(row.cause), "cause {} used twice", row.cause);
            assert!(
                row.cause
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{}",
                row.cause
            );
        }
        // Only rejections after a record exists say how it ended.
        assert_eq!(Rejection::NoRoute.row().reason, None);
        assert_eq!(
            Rejection::Cancelled.row().reason,
            Some(DisconnectionReason::UserHangup)
        );
    }

    #[test]
    fn dial_failures_map_to_api_reasons() {
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
