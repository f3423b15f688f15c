//! Where an outbound request goes: the transport, host and port a SIP URI names
//! (RFC 3261 §18.1.1 and RFC 3263 §4 for the parts that need no DNS).
//!
//! `;transport=` is honoured (any case); `sips:` means TLS; without a port the default is
//! 5060, or 5061 for TLS. A literal IP skips name resolution; a host name is resolved by the
//! caller (SRV and A/AAAA arrive with outbound trunks).

use std::net::{IpAddr, SocketAddr};

use crate::sip::transport::Kind;

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
    /// The port to use when none was given.
    pub fn port_or_default(&self) -> u16 {
        self.port.unwrap_or(match self.kind {
            Kind::Tls => 5061,
            Kind::Udp | Kind::Tcp => 5060,
        })
    }

    /// The socket address when the host is a literal IP (no DNS needed).
    pub fn literal_addr(&self) -> Option<SocketAddr> {
        let ip: IpAddr = self.host.parse().ok()?;
        Some(SocketAddr::new(ip, self.port_or_default()))
    }
}

/// Why a URI names no usable destination.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("'{0}' is not a sip: or sips: URI")]
    Scheme(String),
    #[error("'{0}' has no host")]
    NoHost(String),
    #[error("'{uri}' has a bad port '{port}'")]
    Port { uri: String, port: String },
    #[error("'{uri}' asks for transport '{transport}', which is not supported")]
    Transport { uri: String, transport: String },
    #[error("'{0}' asks for TLS with transport=udp")]
    SipsOverUdp(String),
}

/// Reads the destination out of a SIP URI such as
/// `sip:+14155550100@trunk.example.com:5080;transport=TCP` or `sips:[2001:db8::1]`.
pub fn destination(uri: &str) -> Result<Destination, RouteError> {
    let raw = uri.trim().trim_start_matches('<').trim_end_matches('>');
    let (scheme, rest) = raw
        .split_once(':')
        .ok_or_else(|| RouteError::Scheme(uri.into()))?;
    let secure = match scheme.to_ascii_lowercase().as_str() {
        "sip" => false,
        "sips" => true,
        _ => return Err(RouteError::Scheme(uri.into())),
    };
    // Headers (`?…`) never affect routing.
    let rest = rest.split('?').next().unwrap_or("");
    // The user part may hold ';' (RFC 4475 semiuri), so drop it up to the last '@' first.
    let hostpart = rest.rsplit_once('@').map(|(_, h)| h).unwrap_or(rest);
    let mut parts = hostpart.split(';');
    let hostport = parts.next().unwrap_or("");
    let (host, port) = split_host_port(hostport).ok_or_else(|| RouteError::NoHost(uri.into()))?;
    let port = match port {
        None => None,
        Some(p) => {
            Some(
                // Digits only: Rust's integer parser would also take a leading '+'.
                Some(p)
                    .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|p| p.parse::<u16>().ok())
                    .filter(|p| *p != 0)
                    .ok_or_else(|| RouteError::Port {
                        uri: uri.into(),
                        port: p.into(),
                    })?,
            )
        }
    };
    let mut kind = if secure { Kind::Tls } else { Kind::Udp };
    let mut explicit = secure;
    for param in parts {
        let (name, value) = param.split_once('=').unwrap_or((param, ""));
        if name.trim().eq_ignore_ascii_case("transport") {
            let value = value.trim();
            let requested = Kind::from_token(value).ok_or_else(|| RouteError::Transport {
                uri: uri.into(),
                transport: value.into(),
            })?;
            kind = match (secure, requested) {
                (true, Kind::Udp) => return Err(RouteError::SipsOverUdp(uri.into())),
                // sips: over TCP means TLS (RFC 3261 §26.2.2).
                (true, _) => Kind::Tls,
                (false, k) => k,
            };
            explicit = true;
        }
    }
    Ok(Destination {
        kind,
        host: host.to_string(),
        port,
        transport_explicit: explicit,
    })
}

/// Splits `host[:port]`, where host may be a bracketed IPv6 reference.
fn split_host_port(s: &str) -> Option<(&str, Option<&str>)> {
    if let Some(v6) = s.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?),
        };
        return (!host.is_empty()).then_some((host, port));
    }
    let (host, port) = match s.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (s, None),
    };
    (!host.is_empty()).then_some((host, port))
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
        assert!(matches!(
            destination("tel:+14155550100"),
            Err(RouteError::Scheme(_))
        ));
        assert!(matches!(
            destination("sip:bob@"),
            Err(RouteError::NoHost(_))
        ));
        assert!(matches!(
            destination("sip:bob@h:99999"),
            Err(RouteError::Port { .. })
        ));
        assert!(matches!(
            destination("sip:bob@h:0"),
            Err(RouteError::Port { .. })
        ));
        assert!(matches!(
            destination("sip:tel:+1"),
            Err(RouteError::Port { .. })
        ));
        assert!(matches!(
            destination("sip:bob@h;transport=sctp"),
            Err(RouteError::Transport { .. })
        ));
        assert!(matches!(
            destination("sip:bob@[::1"),
            Err(RouteError::NoHost(_))
        ));
    }

    #[test]
    fn headers_and_user_params_do_not_confuse_the_host() {
        let d = destination("sip:user;par=u%40example.net@example.com:5070?Subject=x").unwrap();
        assert_eq!((d.host.as_str(), d.port), ("example.com", Some(5070)));
    }
}
