//! Outgoing webhooks: a small HTTP/1.1 client for JSON POSTs (http and https), the
//! inbound-call webhook of imported numbers (API.md, "Inbound webhook"), Retell's
//! `x-retell-signature`, and (in [`events`]) the agents' call-event webhooks.
//!
//! One request per connection (`Connection: close`), bounded in time and size, so a slow
//! or hostile webhook server can delay a call set-up by at most the timeout and never
//! exhaust memory.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{info, warn};

pub mod events;

/// Largest response body read.
const MAX_RESPONSE: usize = 1 << 20;
/// The inbound webhook's budget per try, and how many tries (API.md).
pub const INBOUND_TIMEOUT: Duration = Duration::from_secs(10);
pub const INBOUND_TRIES: u32 = 3;

/// Why a webhook call failed.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("'{0}' is not an http:// or https:// URL")]
    Url(String),
    #[error("cannot reach {host}: {reason}")]
    Connect { host: String, reason: String },
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("malformed HTTP response: {0}")]
    Response(&'static str),
    #[error("HTTP status {0}")]
    Status(u16),
    #[error("a header name or value holds a line break")]
    Header,
}

struct Url {
    tls: bool,
    host: String,
    port: u16,
    path: String,
}

fn parse_url(url: &str) -> Result<Url, WebhookError> {
    let bad = || WebhookError::Url(url.to_string());
    let (tls, rest) = if let Some(rest) = url.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (false, rest)
    } else {
        return Err(bad());
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.contains('@') || authority.is_empty() {
        return Err(bad());
    }
    let default = if tls { 443 } else { 80 };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(bad)?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| bad())?,
            None if after.is_empty() => default,
            None => return Err(bad()),
        };
        (host.to_string(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.parse().map_err(|_| bad())?),
            None => (authority.to_string(), default),
        }
    };
    if path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(bad());
    }
    Ok(Url {
        tls,
        host,
        port,
        path: path.to_string(),
    })
}

/// The header Retell's SDK checks (`Retell.verify`).
pub const SIGNATURE_HEADER: &str = "x-retell-signature";

/// `v=<unix ms>,d=<hex HMAC-SHA256(key, body + unix ms in decimal)>`: what the official
/// SDK's `Retell.verify(body, api_key, signature)` accepts (it also wants the time within
/// five minutes of its clock, so every try is signed afresh).
pub fn signature(key: &str, body: &str, unix_ms: u64) -> String {
    use hmac::{Hmac, Mac};
    // An HMAC key may have any length, so this cannot fail.
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(key.as_bytes())
        .expect("HMAC takes keys of any length");
    let stamp = unix_ms.to_string();
    mac.update(body.as_bytes());
    mac.update(stamp.as_bytes());
    let digest = mac.finalize().into_bytes();
    let mut hex = String::with_capacity(64);
    for b in digest {
        hex.push_str(&format!("{b:02x}"));
    }
    format!("v={stamp},d={hex}")
}

/// POSTs `body` as JSON to `url` and returns the status and the response body.
pub async fn post_json(
    url: &str,
    body: &Value,
    timeout: Duration,
) -> Result<(u16, Vec<u8>), WebhookError> {
    post_raw(url, body.to_string(), &[], timeout).await
}

/// POSTs an already serialised JSON `body` (signatures cover its exact bytes) with extra
/// `headers`, bounded by `timeout`.
pub async fn post_raw(
    url: &str,
    body: String,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> Result<(u16, Vec<u8>), WebhookError> {
    let url = parse_url(url)?;
    let mut extra = String::new();
    for (name, value) in headers {
        // A header split across lines would let a value inject more of them.
        if [name, value]
            .iter()
            .any(|s| s.bytes().any(|b| b == b'\r' || b == b'\n'))
        {
            return Err(WebhookError::Header);
        }
        extra.push_str(&format!("{name}: {value}\r\n"));
    }
    tokio::time::timeout(timeout, exchange(&url, &extra, body))
        .await
        .map_err(|_| WebhookError::Timeout(timeout))?
}

async fn exchange(url: &Url, extra: &str, body: String) -> Result<(u16, Vec<u8>), WebhookError> {
    let connect_err = |reason: String| WebhookError::Connect {
        host: url.host.clone(),
        reason,
    };
    let tcp = TcpStream::connect((url.host.as_str(), url.port))
        .await
        .map_err(|e| connect_err(e.to_string()))?;
    let host_header = if url.host.contains(':') {
        format!("[{}]:{}", url.host, url.port)
    } else {
        format!("{}:{}", url.host, url.port)
    };
    let request = format!(
        "POST {} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: {}\r\nContent-Type: application/json\r\n\
         Accept: application/json\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        url.path,
        crate::sip::ua::PRODUCT,
        body.len()
    );
    if url.tls {
        let config = crate::agent::bridge::default_tls().map_err(|e| connect_err(e.to_string()))?;
        let name = rustls_pki_types::ServerName::try_from(url.host.clone())
            .map_err(|e| connect_err(e.to_string()))?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| connect_err(e.to_string()))?;
        roundtrip(tls, request).await
    } else {
        roundtrip(tcp, request).await
    }
}

async fn roundtrip<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    request: String,
) -> Result<(u16, Vec<u8>), WebhookError> {
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|_| WebhookError::Response("write failed"))?;
    let mut raw = Vec::new();
    let mut limited = (&mut stream).take(MAX_RESPONSE as u64 + 16 * 1024);
    // A server may close without TLS close_notify; what was read still counts.
    let _ = limited.read_to_end(&mut raw).await;
    parse_response(&raw)
}

/// Status and body of a complete HTTP/1.x response (Content-Length, chunked, or to EOF).
fn parse_response(raw: &[u8]) -> Result<(u16, Vec<u8>), WebhookError> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or(WebhookError::Response("no end of headers"))?;
    let head = std::str::from_utf8(&raw[..end])
        .map_err(|_| WebhookError::Response("headers are not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .filter(|s| (100..600).contains(s))
        .ok_or(WebhookError::Response("bad status line"))?;
    let mut chunked = false;
    let mut length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if name.eq_ignore_ascii_case("transfer-encoding")
            && value.to_ascii_lowercase().contains("chunked")
        {
            chunked = true;
        }
        if name.eq_ignore_ascii_case("content-length") {
            length = value.trim().parse::<usize>().ok();
        }
    }
    let rest = &raw[end + 4..];
    let body = if chunked {
        dechunk(rest).ok_or(WebhookError::Response("bad chunked body"))?
    } else if let Some(n) = length {
        rest.get(..n)
            .ok_or(WebhookError::Response("body shorter than Content-Length"))?
            .to_vec()
    } else {
        rest.to_vec()
    };
    if body.len() > MAX_RESPONSE {
        return Err(WebhookError::Response("body too large"));
    }
    Ok((status, body))
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
        if out.len() > MAX_RESPONSE {
            return None;
        }
    }
}

/// What an inbound webhook may decide about a call.
#[derive(Debug, Default, Deserialize, PartialEq)]
pub struct InboundOverride {
    #[serde(default)]
    pub override_agent_id: Option<String>,
    #[serde(default)]
    pub metadata: Option<Value>,
    #[serde(default)]
    pub dynamic_variables: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
struct InboundReply {
    #[serde(default)]
    call_inbound: Option<InboundOverride>,
}

/// Asks a number's inbound webhook about a call before it is routed: up to
/// [`INBOUND_TRIES`] tries of [`INBOUND_TIMEOUT`] each. `None` when every try failed (the
/// caller falls back to the number's bound agent).
pub async fn inbound(
    url: &str,
    agent_id: Option<&str>,
    from: Option<&str>,
    to: &str,
) -> Option<InboundOverride> {
    let body = json!({
        "event": "call_inbound",
        "call_inbound": {"agent_id": agent_id, "from_number": from, "to_number": to},
    });
    for attempt in 1..=INBOUND_TRIES {
        match post_json(url, &body, INBOUND_TIMEOUT).await {
            Ok((status, reply)) if (200..300).contains(&status) => {
                return match serde_json::from_slice::<InboundReply>(&reply) {
                    Ok(reply) => Some(reply.call_inbound.unwrap_or_default()),
                    // An empty or non-JSON 2xx: the webhook has nothing to change.
                    Err(_) => Some(InboundOverride::default()),
                };
            }
            Ok((status, _)) => warn!(attempt, status, to, "inbound webhook refused"),
            Err(err) => warn!(attempt, %err, to, "inbound webhook failed"),
        }
    }
    info!(
        to,
        "inbound webhook gave no answer; using the number's own agent"
    );
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = parse_url("https://hooks.example.com/a/b?x=1").unwrap();
        assert!(u.tls);
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("hooks.example.com", 443, "/a/b?x=1")
        );
        let u = parse_url("http://127.0.0.1:8081").unwrap();
        assert_eq!((u.port, u.path.as_str()), (8081, "/"));
        let u = parse_url("http://[::1]:9/x").unwrap();
        assert_eq!(u.host, "::1");
        for bad in [
            "ftp://x",
            "http://",
            "http://u:p@h/",
            "http://h:99999/",
            "http://h/a b",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn signature_matches_the_sdk_algorithm() {
        // Fixed vector, computed with Python's hmac, and equal to the SDK's own
        // `retell.lib.webhook_auth.symmetric["sign"](body, key, 1700000000000)`:
        //   hmac.new(b"test-key-12345678", b'{"event":"call_started"}' + b"1700000000000",
        //            hashlib.sha256).hexdigest()
        assert_eq!(
            signature(
                "test-key-12345678",
                r#"{"event":"call_started"}"#,
                1_700_000_000_000
            ),
            "v=1700000000000,d=b56168e0730d3d506de077df182b62a9e8da11975194d439459d53499ea580cd"
        );
        let sig = signature("k", "", 1);
        let (v, d) = sig.split_once(',').unwrap();
        assert_eq!(v, "v=1");
        let d = d.strip_prefix("d=").unwrap();
        assert_eq!(d.len(), 64);
        assert!(d
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    }

    #[tokio::test]
    async fn header_values_with_line_breaks_are_refused() {
        let err = post_raw(
            "http://127.0.0.1:9/",
            "{}".into(),
            &[("x-a", "b\r\nx-evil: 1")],
            Duration::from_secs(1),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, WebhookError::Header), "{err}");
    }

    #[test]
    fn responses() {
        let (s, b) = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}junk").unwrap();
        assert_eq!((s, b.as_slice()), (200, &b"{}"[..]));
        let (s, b) =
            parse_response(b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
                .unwrap();
        assert_eq!((s, b.as_slice()), (201, &b"abcde"[..]));
        let (s, b) = parse_response(b"HTTP/1.0 204 No Content\r\n\r\n").unwrap();
        assert_eq!((s, b.len()), (204, 0));
        assert!(parse_response(b"garbage").is_err());
        assert!(parse_response(b"HTTP/1.1 999 X\r\n\r\n").is_err());
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").is_err()
        );
    }

    #[tokio::test]
    async fn inbound_webhook_retries_then_reads_the_override() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move {
            // First try: 500. Second: the override.
            for reply in [
                "HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n".to_string(),
                {
                    let body = r#"{"call_inbound":{"override_agent_id":"agent_x","metadata":{"k":1},"dynamic_variables":{"name":"Ann"}}}"#;
                    format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len())
                },
            ] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = vec![0u8; 4096];
                let n = s.read(&mut buf).await.unwrap();
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                assert!(req.starts_with("POST /hook HTTP/1.1"), "{req}");
                assert!(req.contains("\"event\":\"call_inbound\""), "{req}");
                s.write_all(reply.as_bytes()).await.unwrap();
            }
        });
        let got = inbound(&url, Some("agent_a"), Some("+15550001"), "+15550002")
            .await
            .unwrap();
        assert_eq!(got.override_agent_id.as_deref(), Some("agent_x"));
        assert_eq!(got.metadata, Some(json!({"k": 1})));
        assert_eq!(got.dynamic_variables.unwrap()["name"], "Ann");
    }

    #[tokio::test]
    async fn unreachable_webhook_gives_none_after_its_tries() {
        // A port nobody listens on: every try fails at once.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        assert!(
            inbound(&format!("http://127.0.0.1:{port}/"), None, None, "+1")
                .await
                .is_none()
        );
    }
}
