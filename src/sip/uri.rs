//! SIP, SIPS and tel URIs: the one grammar that message parsing, routing, the numbers API
//! and the call engine share (RFC 3261 §19.1 and §25.1; RFC 3966 only as far as the number).
//!
//! Strict where RFC 4475 asks (no whitespace, `%HH` escapes only where the grammar allows
//! them, no empty parameters, ports of at most five digits) and tolerant where real peers
//! stray: `_` in host names, any escape in the user part (even `%00`). Parts are kept as
//! written, escapes included, so `Display` writes back what was read (the scheme in lower
//! case and IPv6 addresses in canonical form aside); [`Uri::user_unescaped`] decodes.
//!
//! Digest authentication (`sip::auth`) takes no URI apart: it hashes the Request-URI
//! exactly as it goes on the wire, since a re-rendered URI would change the hash.

use std::borrow::Cow;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::model::number::Transport;
use crate::sip::lex::{is_ws, trim_end_ws, trim_start_ws, trim_ws};

/// The schemes this grammar reads. Any other is [`UriError::UnsupportedScheme`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Sip,
    Sips,
    Tel,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Sip => "sip",
            Scheme::Sips => "sips",
            Scheme::Tel => "tel",
        }
    }

    /// Schemes are case-insensitive (RFC 3261 §19.1.4).
    fn from_name(name: &str) -> Option<Scheme> {
        [Scheme::Sip, Scheme::Sips, Scheme::Tel]
            .into_iter()
            .find(|s| name.eq_ignore_ascii_case(s.as_str()))
    }
}

/// The host of a SIP URI or Via sent-by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// A host name as written (compared case-insensitively, RFC 3261 §19.1.4).
    Name(String),
    V4(Ipv4Addr),
    /// Written in brackets in a URI (`[2001:db8::1]`).
    V6(Ipv6Addr),
}

impl Host {
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            Host::Name(_) => None,
            Host::V4(ip) => Some(IpAddr::V4(*ip)),
            Host::V6(ip) => Some(IpAddr::V6(*ip)),
        }
    }

    /// The host without IPv6 brackets, as DNS and `IpAddr::from_str` want it.
    pub fn unbracketed(&self) -> String {
        match self {
            Host::Name(name) => name.clone(),
            Host::V4(ip) => ip.to_string(),
            Host::V6(ip) => ip.to_string(),
        }
    }

    /// Whether this is an address or a DNS name of dot-separated labels of letters, digits
    /// and inner hyphens (RFC 3261's `hostname` to the letter). The parser lets `_` and
    /// edge hyphens through, as peers send them; what we store for dialling is held to this.
    pub fn is_dns_name(&self) -> bool {
        let Host::Name(name) = self else {
            return true;
        };
        let name = name.strip_suffix('.').unwrap_or(name);
        !name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|label| {
                (1..=63).contains(&label.len())
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            })
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(name) => f.write_str(name),
            Host::V4(ip) => write!(f, "{ip}"),
            Host::V6(ip) => write!(f, "[{ip}]"),
        }
    }
}

/// A `sip:`, `sips:` or `tel:` URI. Parts are as written, escapes included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uri {
    pub scheme: Scheme,
    /// sip/sips: the user part; tel: the number (`+1-415-555-0100`, separators kept).
    pub user: Option<String>,
    /// Only sip/sips; may be empty (`sip:u:@h`).
    pub password: Option<String>,
    /// Always there for sip/sips, never for tel.
    pub host: Option<Host>,
    pub port: Option<u16>,
    /// URI parameters in order (`transport`, `user`, `lr`, ...; for tel `phone-context`,
    /// ...). Names compare case-insensitively, see [`Uri::param`].
    pub params: Vec<(String, Option<String>)>,
    /// `?name=value&...` headers, in order.
    pub headers: Vec<(String, String)>,
}

/// What is wrong with a URI. Displayed after the thing it is about
/// (`"Request-URI has a bad port '99999'"`), so each message reads as a predicate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UriError {
    #[error("has no valid scheme")]
    NoScheme,
    /// A well-formed scheme other than sip, sips and tel.
    #[error("has scheme '{0}', not sip, sips or tel")]
    UnsupportedScheme(String),
    #[error("contains whitespace or control characters")]
    Whitespace,
    #[error("has an invalid user part '{0}'")]
    User(String),
    /// The password itself is not repeated.
    #[error("has an invalid password")]
    Password,
    #[error("has no host")]
    NoHost,
    #[error("has an invalid host '{0}'")]
    Host(String),
    #[error("has a bad port '{0}'")]
    Port(String),
    #[error("has an invalid parameter '{0}'")]
    Param(String),
    #[error("has an invalid header '{0}'")]
    Header(String),
    #[error("has an invalid telephone number '{0}'")]
    Number(String),
    /// A URI of another scheme that is not even an opaque `absoluteURI`.
    #[error("is not a well-formed '{0}:' URI")]
    Opaque(String),
}

impl Uri {
    /// Parses a sip, sips or tel URI.
    pub fn parse(uri: &str) -> Result<Uri, UriError> {
        let (name, rest) = match uri.split_once(':') {
            Some((name, rest)) if is_scheme(name) => (name, rest),
            _ => return Err(UriError::NoScheme),
        };
        if rest.bytes().any(|c| c <= b' ' || c == 0x7f) {
            return Err(UriError::Whitespace);
        }
        match Scheme::from_name(name) {
            Some(Scheme::Tel) => parse_tel(rest),
            Some(scheme) => parse_sip(scheme, rest),
            None => Err(UriError::UnsupportedScheme(name.to_string())),
        }
    }

    /// A trunk address as the numbers API stores it: a `sip:`/`sips:` URI, or the same
    /// without its scheme (`host`, `host:port`, `host;transport=tcp`, `user@host`), which
    /// is read as `sip:`.
    pub fn parse_trunk(address: &str) -> Result<Uri, UriError> {
        let has_scheme = address.split_once(':').is_some_and(|(name, _)| {
            matches!(Scheme::from_name(name), Some(Scheme::Sip | Scheme::Sips))
        });
        if has_scheme {
            Uri::parse(address)
        } else {
            Uri::parse(&format!("sip:{address}"))
        }
    }

    /// The user part with escapes decoded (lossily, for routing and display). For tel the
    /// number without its visual separators (`-.()`), as trunks route on it:
    /// `tel:+1-415-555-0100;phone-context=x` gives `+14155550100`.
    pub fn user_unescaped(&self) -> Option<String> {
        let user = self.user.as_deref()?;
        match self.scheme {
            Scheme::Tel => {
                let number: String = user
                    .chars()
                    .filter(|c| !matches!(c, '-' | '.' | '(' | ')'))
                    .collect();
                (!number.is_empty()).then_some(number)
            }
            Scheme::Sip | Scheme::Sips => Some(unescape(user)),
        }
    }

    /// Value of URI parameter `name` (case-insensitive), `Some("")` for one without value.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_deref().unwrap_or(""))
    }

    /// `host[:port]` as written in a URI (IPv6 in brackets); empty for tel.
    pub fn hostport(&self) -> String {
        let Some(host) = &self.host else {
            return String::new();
        };
        match self.port {
            Some(port) => format!("{host}:{port}"),
            None => host.to_string(),
        }
    }
}

impl fmt::Display for Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.scheme.as_str())?;
        if let Some(user) = &self.user {
            f.write_str(user)?;
            if let Some(password) = &self.password {
                write!(f, ":{password}")?;
            }
            if self.host.is_some() {
                f.write_str("@")?;
            }
        }
        f.write_str(&self.hostport())?;
        for (name, value) in &self.params {
            write!(f, ";{name}")?;
            if let Some(value) = value {
                write!(f, "={value}")?;
            }
        }
        for (i, (name, value)) in self.headers.iter().enumerate() {
            let sep = if i == 0 { '?' } else { '&' };
            write!(f, "{sep}{name}={value}")?;
        }
        Ok(())
    }
}

/// The user part of a sip, sips or tel URI, unescaped ([`Uri::user_unescaped`]); `None`
/// when the URI is malformed or has no user.
pub fn user_of(uri: &str) -> Option<String> {
    Uri::parse(uri).ok()?.user_unescaped()
}

/// A URI as found in From, To or Contact: sip, sips and tel by [`Uri::parse`], any other
/// scheme as an opaque `absoluteURI` (RFC 4475 unksm2 must parse).
pub fn check(uri: &str) -> Result<(), UriError> {
    match Uri::parse(uri) {
        Ok(_) => Ok(()),
        Err(UriError::UnsupportedScheme(name)) => {
            // Whitespace and controls were already refused.
            let rest = &uri[name.len() + 1..];
            let bad = rest.is_empty()
                || rest
                    .bytes()
                    .any(|c| c >= 0x7f || matches!(c, b'<' | b'>' | b'"'));
            if bad {
                Err(UriError::Opaque(name))
            } else {
                Ok(())
            }
        }
        Err(e) => Err(e),
    }
}

/// The Request-URI for dialling `number` through a trunk at `termination_uri` (any form
/// [`Uri::parse_trunk`] takes): `sip:` with the number as user, the trunk's host, port and
/// parameters, and `;transport=` from `transport` unless the trunk names one. Headers and
/// any user or password of the termination URI are dropped. The host to put in the To
/// header is [`Uri::hostport`] of the result.
pub fn trunk_request_uri(
    termination_uri: &str,
    transport: Transport,
    number: &str,
) -> Result<Uri, UriError> {
    let trunk = Uri::parse_trunk(termination_uri.trim())?;
    if number.is_empty() {
        return Err(UriError::User(String::new()));
    }
    let named = trunk.param("transport").is_some();
    let mut params = trunk.params;
    if !named {
        params.push((
            "transport".to_string(),
            Some(transport.as_str().to_ascii_lowercase()),
        ));
    }
    Ok(Uri {
        scheme: Scheme::Sip,
        user: Some(escape_user(number)),
        password: None,
        host: trunk.host,
        port: trunk.port,
        params,
        headers: Vec::new(),
    })
}

/// `host` as it goes into a URI: an IPv6 address in brackets, anything else as it is.
pub fn host_for_uri(host: &str) -> Cow<'_, str> {
    if host.parse::<Ipv6Addr>().is_ok() {
        Cow::Owned(format!("[{host}]"))
    } else {
        Cow::Borrowed(host)
    }
}

/// Decodes `%HH` escapes; a `%` not followed by two hex digits is kept as is. Bytes that
/// do not form UTF-8 are replaced (lossy): the result is for routing and display.
pub fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            if let (Some(h), Some(l)) = (
                b.get(i + 1).and_then(|c| hex_val(*c)),
                b.get(i + 2).and_then(|c| hex_val(*c)),
            ) {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `s` as a URI user part: characters the grammar does not allow there become `%HH`.
fn escape_user(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &c in s.as_bytes() {
        if is_unreserved(c) || is_user_unreserved(c) {
            out.push(char::from(c));
        } else {
            out.push_str(&format!("%{c:02X}"));
        }
    }
    out
}

/// `[user[:password]@]hostport[;params][?headers]` after `sip:`/`sips:`. The user part
/// ends at the first `@`: `@` cannot appear unescaped in it, and `;` or `?` can (RFC 4475
/// semiuri, intmeth).
fn parse_sip(scheme: Scheme, rest: &str) -> Result<Uri, UriError> {
    let (userinfo, hostpart) = match rest.split_once('@') {
        Some((userinfo, hostpart)) => (Some(userinfo), hostpart),
        None => (None, rest),
    };
    let (mut user, mut password) = (None, None);
    if let Some(userinfo) = userinfo {
        let (u, p) = match userinfo.split_once(':') {
            Some((u, p)) => (u, Some(p)),
            None => (userinfo, None),
        };
        if u.is_empty() || !check_escaped(u, is_user_unreserved) {
            return Err(UriError::User(u.to_string()));
        }
        if let Some(p) = p {
            if !check_escaped(p, is_password_extra) {
                return Err(UriError::Password);
            }
            password = Some(p.to_string());
        }
        user = Some(u.to_string());
    }
    let (before_headers, headers) = match hostpart.split_once('?') {
        Some((before, headers)) => (before, Some(headers)),
        None => (hostpart, None),
    };
    let (hostport, params) = match before_headers.split_once(';') {
        Some((hostport, params)) => (hostport, Some(params)),
        None => (before_headers, None),
    };
    let (host, port) = parse_hostport(hostport, false)?;
    let params = match params {
        Some(params) => params
            .split(';')
            .map(sip_param)
            .collect::<Result<Vec<_>, _>>()?,
        None => Vec::new(),
    };
    let headers = match headers {
        Some(headers) => headers
            .split('&')
            .map(header)
            .collect::<Result<Vec<_>, _>>()?,
        None => Vec::new(),
    };
    Ok(Uri {
        scheme,
        user,
        password,
        host: Some(host),
        port,
        params,
        headers,
    })
}

/// `pname["=" pvalue]`, both non-empty `paramchar`s.
fn sip_param(p: &str) -> Result<(String, Option<String>), UriError> {
    let (name, value) = match p.split_once('=') {
        Some((name, value)) => (name, Some(value)),
        None => (p, None),
    };
    let name_ok = !name.is_empty() && check_escaped(name, is_param_unreserved);
    let value_ok = value.is_none_or(|v| !v.is_empty() && check_escaped(v, is_param_unreserved));
    if name_ok && value_ok {
        Ok((name.to_string(), value.map(str::to_string)))
    } else {
        Err(UriError::Param(p.to_string()))
    }
}

/// `hname "=" hvalue`, the name non-empty.
fn header(h: &str) -> Result<(String, String), UriError> {
    match h.split_once('=') {
        Some((name, value))
            if !name.is_empty()
                && check_escaped(name, is_hnv_unreserved)
                && check_escaped(value, is_hnv_unreserved) =>
        {
            Ok((name.to_string(), value.to_string()))
        }
        _ => Err(UriError::Header(h.to_string())),
    }
}

/// The body of a tel URI (RFC 3966), loosely: a number of digits and visual separators
/// (global `+...` or local, hex digits, `*`, `#`), then `;`-separated parameters.
fn parse_tel(rest: &str) -> Result<Uri, UriError> {
    let mut parts = rest.split(';');
    let number = parts.next().unwrap_or("");
    let digits = number.strip_prefix('+').unwrap_or(number);
    let number_ok = digits.bytes().any(|c| c.is_ascii_hexdigit())
        && digits
            .bytes()
            .all(|c| c.is_ascii_hexdigit() || matches!(c, b'*' | b'#' | b'-' | b'.' | b'(' | b')'));
    if !number_ok {
        return Err(UriError::Number(number.to_string()));
    }
    let params = parts
        .map(|p| {
            if p.is_empty() || !check_escaped(p, |c| is_param_unreserved(c) || c == b'=') {
                return Err(UriError::Param(p.to_string()));
            }
            Ok(match p.split_once('=') {
                Some((name, value)) => (name.to_string(), Some(value.to_string())),
                None => (p.to_string(), None),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Uri {
        scheme: Scheme::Tel,
        user: Some(number.to_string()),
        password: None,
        host: None,
        port: None,
        params,
        headers: Vec::new(),
    })
}

/// `host [":" port]`; with `lws`, whitespace is allowed around the colon (Via's sent-by).
/// Host names may use `_` (seen in the wild); all-numeric hosts must be IPv4 addresses.
pub(crate) fn parse_hostport(s: &str, lws: bool) -> Result<(Host, Option<u16>), UriError> {
    let (host, after) = if let Some(r) = s.strip_prefix('[') {
        let (inner, after) = r
            .split_once(']')
            .ok_or_else(|| UriError::Host(s.to_string()))?;
        let ip: Ipv6Addr = inner
            .parse()
            .map_err(|_| UriError::Host(format!("[{inner}]")))?;
        (Host::V6(ip), after)
    } else {
        let end = s.find(':').unwrap_or(s.len());
        let name = if lws {
            trim_end_ws(&s[..end])
        } else {
            &s[..end]
        };
        if name.is_empty() {
            return Err(UriError::NoHost);
        }
        let chars_ok = name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_'));
        if !chars_ok {
            return Err(UriError::Host(name.to_string()));
        }
        let host = if name.bytes().all(|c| c.is_ascii_digit() || c == b'.') {
            Host::V4(name.parse().map_err(|_| UriError::Host(name.to_string()))?)
        } else {
            Host::Name(name.to_string())
        };
        (host, &s[end..])
    };
    let after = if lws { trim_start_ws(after) } else { after };
    if after.is_empty() {
        return Ok((host, None));
    }
    let Some(port) = after.strip_prefix(':') else {
        return Err(UriError::Host(s.to_string()));
    };
    if !lws && port.bytes().any(is_ws) {
        return Err(UriError::Port(port.to_string()));
    }
    let port = parse_port(port).ok_or_else(|| UriError::Port(port.to_string()))?;
    Ok((host, Some(port)))
}

/// `1*DIGIT` within 0..=65535, surrounding whitespace ignored.
pub(crate) fn parse_port(s: &str) -> Option<u16> {
    let s = trim_ws(s);
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// An IP address, IPv6 with or without brackets (Via `received`).
pub(crate) fn parse_ip(s: &str) -> Option<IpAddr> {
    let inner = s
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(s);
    inner.parse().ok()
}

/// `ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )`
pub(crate) fn is_scheme(s: &str) -> bool {
    let b = s.as_bytes();
    b.first().is_some_and(u8::is_ascii_alphabetic)
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.'))
}

fn is_unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(
            c,
            b'-' | b'_' | b'.' | b'!' | b'~' | b'*' | b'\'' | b'(' | b')'
        )
}

fn is_user_unreserved(c: u8) -> bool {
    matches!(c, b'&' | b'=' | b'+' | b'$' | b',' | b';' | b'?' | b'/')
}

fn is_password_extra(c: u8) -> bool {
    matches!(c, b'&' | b'=' | b'+' | b'$' | b',')
}

fn is_param_unreserved(c: u8) -> bool {
    matches!(c, b'[' | b']' | b'/' | b':' | b'&' | b'+' | b'$')
}

fn is_hnv_unreserved(c: u8) -> bool {
    matches!(c, b'[' | b']' | b'/' | b'?' | b':' | b'+' | b'$')
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Every byte is unreserved, allowed by `extra`, or part of a valid `%HH` escape.
fn check_escaped(s: &str, extra: fn(u8) -> bool) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'%' {
            let ok = b.get(i + 1).and_then(|c| hex_val(*c)).is_some()
                && b.get(i + 2).and_then(|c| hex_val(*c)).is_some();
            if !ok {
                return false;
            }
            i += 3;
        } else if is_unreserved(c) || extra(c) {
            i += 1;
        } else {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests;
