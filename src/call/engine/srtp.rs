//! Which SRTP a call may use, from `media.srtp` and the transport its signalling uses.
//!
//! SDES (RFC 4568) puts the SRTP master keys in the SDP in clear, so SRTP keyed that way
//! is exactly as confidential as the signalling that carries it. Over UDP or TCP anyone
//! who can see the media can also read its keys: answering an RTP/SAVP offer there would
//! promise encryption while giving none, and a caller who asked for SRTP had better learn
//! it did not get it. So SRTP is offered and accepted only when the SIP messages travel
//! over TLS (RFC 4568 §8.3 requires a secure channel), and an RTP/SAVP offer over UDP or
//! TCP is refused with 488 and a Warning saying why, rather than downgraded to plain RTP
//! (an offerer that insists on SAVP could not accept AVP in the answer anyway, RFC 3264
//! §6). With `required`, calls whose signalling is not TLS are refused outright.

use crate::config::SrtpMode;
use crate::sdp::{NegotiationError, SrtpKeyMaterial, SrtpPolicy};
use crate::sip::transport::Kind;

/// Why a call cannot have the media `media.srtp` demands on this transport: the text of
/// the Warning sent with the 488 (or logged, outbound).
pub(super) const REQUIRED_NEEDS_TLS: &str =
    "SRTP is required here, and SRTP is only used with TLS signalling (sips:, transport=tls)";

/// The policy for one call whose signalling uses `signalling`, with fresh random keys
/// when SRTP may be used. `Err` is a warning text: the call cannot be made at all.
pub(super) fn policy(mode: SrtpMode, signalling: Kind) -> Result<SrtpPolicy, &'static str> {
    let tls = signalling == Kind::Tls;
    Ok(match (mode, tls) {
        (SrtpMode::Off, _) | (SrtpMode::Optional, false) => SrtpPolicy::Disabled,
        (SrtpMode::Required, false) => return Err(REQUIRED_NEEDS_TLS),
        (SrtpMode::Optional, true) => SrtpPolicy::Allowed(fresh_keys()),
        (SrtpMode::Required, true) => SrtpPolicy::Required(fresh_keys()),
    })
}

/// 30 bytes from the thread's CSPRNG (ChaCha, seeded by the OS): one master key||salt
/// per call, never logged (`SrtpKeyMaterial`'s Debug is redacted).
fn fresh_keys() -> SrtpKeyMaterial {
    SrtpKeyMaterial(rand::random())
}

/// The Warning (RFC 3261 §20.43) for a 488 refusing an offer: what was wrong with it.
pub(super) fn warning(err: &NegotiationError, mode: SrtpMode, signalling: Kind) -> String {
    let text = match err {
        NegotiationError::SrtpNotAllowed if mode == SrtpMode::Off => {
            "SRTP (RTP/SAVP) is disabled here; offer RTP/AVP"
        }
        NegotiationError::SrtpNotAllowed if signalling != Kind::Tls => {
            "SRTP (RTP/SAVP) is only accepted over TLS signalling: SDES keys must not travel in clear"
        }
        NegotiationError::SrtpRequired => "SRTP is required: offer RTP/SAVP with a=crypto",
        NegotiationError::NoUsableCrypto => {
            "no usable a=crypto (AES_CM_128_HMAC_SHA1_80, AES_CM_128_HMAC_SHA1_32 or AEAD_AES_128_GCM; one key, no MKI)"
        }
        NegotiationError::UnsupportedTransport(_) => "unsupported media transport",
        _ => "no common codec",
    };
    // 302 Incompatible transport protocol for the SRTP cases, 304/305 for formats.
    let code = match err {
        NegotiationError::SrtpNotAllowed
        | NegotiationError::SrtpRequired
        | NegotiationError::NoUsableCrypto
        | NegotiationError::UnsupportedTransport(_) => 302,
        _ => 304,
    };
    format!("{code} dialtone \"{text}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn srtp_is_only_ever_keyed_over_tls() {
        for kind in [Kind::Udp, Kind::Tcp] {
            assert_eq!(policy(SrtpMode::Optional, kind), Ok(SrtpPolicy::Disabled));
            assert_eq!(policy(SrtpMode::Off, kind), Ok(SrtpPolicy::Disabled));
            assert_eq!(policy(SrtpMode::Required, kind), Err(REQUIRED_NEEDS_TLS));
        }
        assert_eq!(policy(SrtpMode::Off, Kind::Tls), Ok(SrtpPolicy::Disabled));
        assert!(matches!(
            policy(SrtpMode::Optional, Kind::Tls),
            Ok(SrtpPolicy::Allowed(_))
        ));
        let (Ok(SrtpPolicy::Required(a)), Ok(SrtpPolicy::Required(b))) = (
            policy(SrtpMode::Required, Kind::Tls),
            policy(SrtpMode::Required, Kind::Tls),
        ) else {
            panic!("required over TLS keys SRTP");
        };
        assert_ne!(a, b, "fresh keys per call");
    }

    #[test]
    fn the_warning_says_why_an_offer_was_refused() {
        let w = warning(
            &NegotiationError::SrtpNotAllowed,
            SrtpMode::Optional,
            Kind::Udp,
        );
        assert!(
            w.starts_with("302 dialtone \"") && w.contains("only accepted over TLS"),
            "{w}"
        );
        let w = warning(
            &NegotiationError::SrtpRequired,
            SrtpMode::Required,
            Kind::Tls,
        );
        assert!(w.contains("SRTP is required"), "{w}");
        let w = warning(
            &NegotiationError::NoCommonCodec,
            SrtpMode::Optional,
            Kind::Tls,
        );
        assert_eq!(w, "304 dialtone \"no common codec\"");
    }
}
