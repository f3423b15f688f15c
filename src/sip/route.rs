//! Where an outbound request goes: the transport, host and port a SIP URI names
//! (RFC 3261 §18.1.1 and RFC 3263 §4 for the parts that need no DNS).
//!
//! `;transport=` is honoured (any case); `sips:` means TLS; without a port the default is
//! 5060, or 5061 for TLS. A literal IP skips name resolution; a host name is resolved by the
//! caller (`sip::resolve`). The URI itself is read by [`crate::sip::uri`].

use std::net::SocketAddr;

use crate::sip::transport::Kind;
use crate::sip::uri::{Scheme, Uri, UriError};

/// The destination named by a URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub kind: Kind,
    /// Host as written, without IPv6 brackets.
    pub host: String,
    /// The explicit port, if the URI had one.
    pub port: Option<u16>,
    /// Whether `;transport=` or `sips:` fixed the transport (otherwise RFC 3263 may pick).
    pub transport_explicit: bool,
}

impl Destination {
    /// The destination of a parsed URI.
    pub fn of(uri: &Uri) -> Result<Destination, RouteError> {
        Destination::named(uri, &uri.to_string())
    }

    /// The port to use when none was given.
    pub fn port_or_default(&self) -> u16 {
        self.port.unwrap_or(match self.kind {
            Kind::Tls => 5061,
            Kind::Udp | Kind::Tcp => 5060,
        })
    }

    /// The socket address when the host is a literal IP (no DNS needed).
    pub fn literal_addr(&self) -> Option<SocketAddr> {
        let ip = self.host.parse().ok()?;
        Some(SocketAddr::new(ip, self.port_or_default()))
    }

    /// [`Destination::of`], with errors naming the URI as `shown`.
    fn named(uri: &Uri, shown: &str) -> Result<Destination, RouteError> {
        let malformed = |error| RouteError::Uri {
            uri: shown.into(),
            error,
        };
        let secure = match uri.scheme {
            Scheme::Sip => false,
            Scheme::Sips => true,
            Scheme::Tel => return Err(RouteError::Scheme(shown.into())),
        };
        let host = uri
            .host
            .as_ref()
            .ok_or_else(|| malformed(UriError::NoHost))?;
        if uri.port == Some(0) {
            return Err(malformed(UriError::Port("0".into())));
        }
        let (kind, explicit) = match uri.param("transport") {
            None => (if secure { Kind::Tls } else { Kind::Udp }, secure),
            Some(value) => {
                let requested = Kind::from_token(value).ok_or_else(|| RouteError::Transport {
                    uri: shown.into(),
                    transport: value.into(),
                })?;
                let kind = match (secure, requested) {
                    (true, Kind::Udp) => return Err(RouteError::SipsOverUdp(shown.into())),
                    // sips: over TCP means TLS (RFC 3261 §26.2.2).
                    (true, _) => Kind::Tls,
                    (false, k) => k,
                };
                (kind, true)
            }
        };
        Ok(Destination {
            kind,
            host: host.unbracketed(),
            port: uri.port,
            transport_explicit: explicit,
        })
    }
}

/// Why a URI names no usable destination.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("'{0}' is not a sip: or sips: URI")]
    Scheme(String),
    /// Malformed, or a part that cannot be dialled (port 0).
    #[error("'{uri}' {error}")]
    Uri { uri: String, error: UriError },
    #[error("'{uri}' asks for transport '{transport}', which is not supported")]
    Transport { uri: String, transport: String },
    #[error("'{0}' asks for TLS with transport=udp")]
    SipsOverUdp(String),
}

/// Reads the destination out of a SIP URI such as
/// `sip:+14155550100@trunk.example.com:5080;transport=TCP` or `sips:[2001:db8::1]`, also
/// when written as in a header, `<...>`. Headers (`?...`) never affect routing.
pub fn destination(uri: &str) -> Result<Destination, RouteError> {
    let raw = uri.trim();
    let raw = raw
        .strip_prefix('<')
        .and_then(|r| r.strip_suffix('>'))
        .unwrap_or(raw);
    let parsed = Uri::parse(raw).map_err(|error| match error {
        UriError::NoScheme | UriError::UnsupportedScheme(_) => RouteError::Scheme(uri.into()),
        error => RouteError::Uri {
            uri: uri.into(),
            error,
        },
    })?;
    Destination::named(&parsed, uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_to_udp_5060() {
        let d = destination("sip:trunk.example.com").unwrap();
        assert_eq!(
            (d.kind, d.host.as_str(), d.port_or_default()),
            (Kind::Udp, "trunk.example.com", 5060)
        );
        assert!(!d.transport_explicit);
        assert!(d.literal_addr().is_none());
    }

    #[test]
    fn transport_parameter_in_any_case() {
        for (uri, kind) in [
            ("sip:+14155550100@10.0.0.1:5080;transport=TCP", Kind::Tcp),
            ("sip:+14155550100@10.0.0.1:5080;transport=tcp", Kind::Tcp),
            ("sip:a@10.0.0.1;lr;transport=tls", Kind::Tls),
            ("<sip:a@10.0.0.1;transport=udp>", Kind::Udp),
        ] {
            let d = destination(uri).unwrap();
            assert_eq!(d.kind, kind, "{uri}");
            assert!(d.transport_explicit);
        }
        let d = destination("sip:+14155550100@10.0.0.1:5080;transport=TCP").unwrap();
        assert_eq!(d.literal_addr(), Some("10.0.0.1:5080".parse().unwrap()));
    }

    #[test]
    fn sips_means_tls_on_5061() {
        let d = destination("sips:bob@[2001:db8::1]").unwrap();
        assert_eq!(d.kind, Kind::Tls);
        assert_eq!(
            d.literal_addr(),
            Some("[2001:db8::1]:5061".parse().unwrap())
        );
        assert_eq!(
            destination("sips:bob@h;transport=tcp").unwrap().kind,
            Kind::Tls
        );
        assert!(matches!(
            destination("sips:bob@h;transport=udp"),
            Err(RouteError::SipsOverUdp(_))
        ));
    }

    #[test]
    fn bad_uris_say_what_is_wrong() {
        let err = |uri: &str| destination(uri).unwrap_err();
        assert_eq!(
            err("tel:+14155550100"),
            RouteError::Scheme("tel:+14155550100".into())
        );
        assert!(matches!(err("http://x"), RouteError::Scheme(_)));
        assert_eq!(err("sip:bob@").to_string(), "'sip:bob@' has no host");
        assert_eq!(
            err("sip:bob@h:99999").to_string(),
            "'sip:bob@h:99999' has a bad port '99999'"
        );
        assert_eq!(
            err("sip:bob@h:0").to_string(),
            "'sip:bob@h:0' has a bad port '0'"
        );
        assert_eq!(
            err("sip:tel:+1").to_string(),
            "'sip:tel:+1' has a bad port '+1'"
        );
        assert!(matches!(
            err("sip:bob@h;transport=sctp"),
            RouteError::Transport { .. }
        ));
        assert!(matches!(
            err("sip:bob@h;transport"),
            RouteError::Transport { .. }
        ));
        assert!(matches!(
            err("sip:bob@[::1"),
            RouteError::Uri {
                error: UriError::Host(_),
                ..
            }
        ));
        assert!(matches!(
            err("sip:bob@bad!host"),
            RouteError::Uri {
                error: UriError::Host(_),
                ..
            }
        ));
        assert!(matches!(
            Destination::of(&Uri::parse("tel:+1").unwrap()),
            Err(RouteError::Scheme(_))
        ));
    }

    #[test]
    fn headers_and_user_params_do_not_confuse_the_host() {
        let d = destination("sip:user;par=u%40example.net@example.com:5070?Subject=x").unwrap();
        assert_eq!((d.host.as_str(), d.port), ("example.com", Some(5070)));
    }
}
