//! The websocket bridge: opens the agent's socket, greets it as Twilio would (`connected`,
//! `start`), then one task owns the socket and moves messages between it and the media
//! task's [`AgentLink`].
//!
//! Decisions worth knowing:
//! - `media.timestamp` is the audio clock, not the wall clock: milliseconds of caller audio
//!   streamed before this chunk (so with 20 ms frames, `20 × (chunk − 1)`). It is exact and
//!   deterministic, and jitter on our side never makes it run backwards or skip.
//! - `sequenceNumber` counts every message this side sends after `connected` (which has
//!   none, as on Twilio): `start` is 1.
//! - The media task never waits on the agent: `to_agent` is bounded and fed with
//!   [`AgentLink::offer`], so a slow agent loses caller audio (counted in
//!   `dialtone_agent_frames_dropped_total`) rather than delaying the call.
//! - Agent → media task is a plain bounded channel: if the media task falls behind, the
//!   bridge stops reading the socket and TCP pushes back on the agent.
//! - How the socket ended decides the call's end: a close frame with code 1000 (or with no
//!   code at all, a deliberate close that only states no reason) is `agent_hangup`; any
//!   other code, or a websocket protocol violation, is `error_llm_websocket_runtime`; a
//!   connection that drops without a close frame is `error_llm_websocket_lost_connection`.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use rustls::ClientConfig;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue, Uri};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};
use tracing::Instrument;

use super::protocol::{
    self, AgentEvent, Counter, DtmfBody, FrameError, MarkBody, MediaBody, MediaFormat,
    ServerMessage, StartBody, StopBody, BASE64,
};
use super::{AgentLink, FromAgent, ToAgent};
use crate::model::{AudioEncoding, DisconnectionReason};

/// Capacity of `to_agent`: about 5 s of 20 ms frames, so a hiccup of the agent's socket
/// does not lose audio, while a stuck agent cannot make us buffer without bound.
pub const TO_AGENT_CAPACITY: usize = 256;
/// Capacity of `from_agent`.
pub const FROM_AGENT_CAPACITY: usize = 256;
/// This many frames in a row that are not understood end the call with
/// `error_llm_websocket_corrupt_payload`; fewer are logged and skipped.
pub const CORRUPT_RUN_LIMIT: u32 = 10;
/// How long to wait for the agent's half of the close handshake before dropping the TCP
/// connection anyway.
const CLOSE_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest agent message accepted. Agents send audio in chunks of any size (a 2 s payload
/// before hanging up is common); 16 MiB is minutes of audio, yet bounds memory per call.
const MAX_MESSAGE_BYTES: usize = 16 << 20;
/// At most one "frame not understood" warning per call in this interval.
const CORRUPT_WARN_INTERVAL: Duration = Duration::from_secs(5);
/// Upgrade request headers that the websocket handshake itself owns: a configured header
/// of one of these names would break the handshake, so it is skipped.
const RESERVED_HEADERS: [&str; 8] = [
    "host",
    "connection",
    "upgrade",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-extensions",
    "content-length",
    "transfer-encoding",
];

/// Where the agent is and how to talk to it (from the agent's `response_engine`).
#[derive(Clone)]
pub struct AgentConfig {
    /// `ws://` or `wss://` URL.
    pub url: String,
    /// Extra headers on the upgrade request (e.g. `Authorization`). Values may be secrets
    /// and are never logged.
    pub headers: BTreeMap<String, String>,
    pub encoding: AudioEncoding,
    /// Bound on opening the socket: DNS, TCP, TLS, upgrade, and the greeting.
    pub connect_timeout: Duration,
}

impl fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Header values and the URL's query may carry credentials.
        f.debug_struct("AgentConfig")
            .field("url", &redact_url(&self.url))
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("encoding", &self.encoding)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

/// The identity the `start` message announces.
#[derive(Debug, Clone, Default)]
pub struct StartInfo {
    /// Sent as `callSid`.
    pub call_id: String,
    /// `streamSid`; a fresh `MZ…` one is generated when empty.
    pub stream_sid: String,
    /// `accountSid`; a fresh `AC…` one is generated when empty.
    pub account_sid: String,
    /// `customParameters`: the call's identity and context, values already strings.
    pub custom_parameters: BTreeMap<String, String>,
}

/// The agent's socket could not be opened: the call is rejected with
/// `error_llm_websocket_open` (see [`OpenError::reason`]).
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("invalid agent URL: {0}")]
    InvalidUrl(String),
    /// Carries the header's name only: its value may be a secret.
    #[error("invalid agent header {0:?}")]
    InvalidHeader(String),
    #[error("agent websocket not open within {0:?}")]
    Timeout(Duration),
    #[error("agent refused the websocket upgrade with HTTP {0}")]
    Refused(u16),
    #[error("cannot reach the agent: {0}")]
    Connect(String),
    #[error("TLS with the agent failed: {0}")]
    Tls(String),
    #[error("websocket handshake with the agent failed: {0}")]
    Handshake(String),
}

impl OpenError {
    /// How a call whose agent could not be reached ends.
    pub fn reason(&self) -> DisconnectionReason {
        DisconnectionReason::ErrorLlmWebsocketOpen
    }
}

/// Opens the agent's websocket, sends `connected` and `start`, and spawns the task that
/// owns the socket from then on. The task ends once the socket is closed and every
/// `to_agent` sender is dropped.
pub async fn connect(cfg: &AgentConfig, start: StartInfo) -> Result<AgentLink, OpenError> {
    connect_with_tls(cfg, start, default_tls()?).await
}

type AgentSocket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// [`connect`] with a given TLS client configuration (tests trust their own CA).
async fn connect_with_tls(
    cfg: &AgentConfig,
    start: StartInfo,
    tls: Arc<ClientConfig>,
) -> Result<AgentLink, OpenError> {
    let request = upgrade_request(cfg)?;
    let shown_url = redact_url(&cfg.url);
    let stream_sid = non_empty_or(start.stream_sid, "MZ");
    let account_sid = non_empty_or(start.account_sid, "AC");
    let span = tracing::info_span!("agent_ws", call_id = %start.call_id, stream_sid = %stream_sid);
    let mut out = Outbound::new(stream_sid, account_sid, start.call_id, cfg.encoding);
    let ws_config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_MESSAGE_BYTES));

    let open = async {
        // Nagle off: audio frames are small and latency matters more than packet count.
        let (mut ws, _response) = tokio_tungstenite::connect_async_tls_with_config(
            request,
            Some(ws_config),
            true,
            Some(Connector::Rustls(tls)),
        )
        .await
        .map_err(open_error)?;
        let greeting = [
            protocol_json(&ServerMessage::connected()),
            out.start(start.custom_parameters),
        ];
        for text in greeting {
            ws.send(Message::text(text))
                .await
                .map_err(|e| OpenError::Handshake(e.to_string()))?;
        }
        Ok::<_, OpenError>(ws)
    };
    let ws = match tokio::time::timeout(cfg.connect_timeout, open)
        .instrument(span.clone())
        .await
    {
        Ok(Ok(ws)) => ws,
        Ok(Err(err)) => {
            span.in_scope(
                || tracing::warn!(url = %shown_url, cause = %err, "agent websocket not opened"),
            );
            return Err(err);
        }
        Err(_elapsed) => {
            let err = OpenError::Timeout(cfg.connect_timeout);
            span.in_scope(
                || tracing::warn!(url = %shown_url, cause = %err, "agent websocket not opened"),
            );
            return Err(err);
        }
    };
    span.in_scope(|| tracing::info!(url = %shown_url, "agent websocket open"));

    let (to_tx, to_rx) = mpsc::channel(TO_AGENT_CAPACITY);
    let (from_tx, from_rx) = mpsc::channel(FROM_AGENT_CAPACITY);
    tokio::spawn(run(ws, out, to_rx, from_tx).instrument(span));
    Ok(AgentLink {
        to_agent: to_tx,
        from_agent: from_rx,
    })
}

/// The upgrade request: the URL plus the configured headers (marked sensitive).
fn upgrade_request(
    cfg: &AgentConfig,
) -> Result<tokio_tungstenite::tungstenite::handshake::client::Request, OpenError> {
    let mut request = cfg
        .url
        .as_str()
        .into_client_request()
        .map_err(|e| OpenError::InvalidUrl(format!("{}: {e}", redact_url(&cfg.url))))?;
    match request.uri().scheme_str() {
        Some("ws") | Some("wss") => {}
        _ => {
            return Err(OpenError::InvalidUrl(format!(
                "{}: scheme must be ws or wss",
                redact_url(&cfg.url)
            )))
        }
    }
    for (name, value) in &cfg.headers {
        let header = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| OpenError::InvalidHeader(name.clone()))?;
        if RESERVED_HEADERS.contains(&header.as_str()) {
            tracing::warn!(header = %header, "agent header skipped: the websocket handshake sets it");
            continue;
        }
        let mut value =
            HeaderValue::from_str(value).map_err(|_| OpenError::InvalidHeader(name.clone()))?;
        value.set_sensitive(true);
        request.headers_mut().insert(header, value);
    }
    Ok(request)
}

fn open_error(err: WsError) -> OpenError {
    match err {
        WsError::Http(response) => OpenError::Refused(response.status().as_u16()),
        WsError::Io(e) => OpenError::Connect(e.to_string()),
        WsError::Tls(e) => OpenError::Tls(e.to_string()),
        WsError::Url(e) => OpenError::InvalidUrl(e.to_string()),
        other => OpenError::Handshake(other.to_string()),
    }
}

/// The TLS client configuration for `wss://`: the ring provider (the process links no
/// other) and the Mozilla roots from `webpki-roots`, so verification does not depend on
/// the host's certificate store. Built once.
pub(crate) fn default_tls() -> Result<Arc<ClientConfig>, OpenError> {
    static CONFIG: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    if let Some(config) = CONFIG.get() {
        return Ok(config.clone());
    }
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let config = tls_with_roots(roots)?;
    Ok(CONFIG.get_or_init(|| config).clone())
}

fn tls_with_roots(roots: rustls::RootCertStore) -> Result<Arc<ClientConfig>, OpenError> {
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| OpenError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok(Arc::new(config))
}

fn non_empty_or(value: String, sid_prefix: &str) -> String {
    if value.is_empty() {
        protocol::new_sid(sid_prefix)
    } else {
        value
    }
}

/// The URL without credentials or query (either may hold a token), for logs.
fn redact_url(url: &str) -> String {
    match url.parse::<Uri>() {
        Ok(uri) => {
            let scheme = uri.scheme_str().unwrap_or("?");
            let host = uri.host().unwrap_or("?");
            let port = uri.port_u16().map(|p| format!(":{p}")).unwrap_or_default();
            format!("{scheme}://{host}{port}{}", uri.path())
        }
        Err(_) => "<unparseable URL>".to_owned(),
    }
}

/// Serializes a server message.
fn protocol_json(msg: &ServerMessage<'_>) -> String {
    // cannot fail: every field is a string, a number, a list of strings or a map with
    // string keys, all of which JSON can represent.
    serde_json::to_string(msg).expect("server message serializes")
}

/// The sending half's state: identity, counters, and a reusable base64 buffer.
struct Outbound {
    stream_sid: String,
    account_sid: String,
    call_sid: String,
    encoding: AudioEncoding,
    /// Last `sequenceNumber` sent.
    sequence: u64,
    /// Last `chunk` sent.
    chunk: u64,
    /// Caller audio bytes sent so far: the media clock for `timestamp`.
    audio_bytes: u64,
    base64: String,
}

impl Outbound {
    fn new(
        stream_sid: String,
        account_sid: String,
        call_sid: String,
        encoding: AudioEncoding,
    ) -> Outbound {
        Outbound {
            stream_sid,
            account_sid,
            call_sid,
            encoding,
            sequence: 0,
            chunk: 0,
            audio_bytes: 0,
            base64: String::new(),
        }
    }

    fn next_sequence(&mut self) -> Counter {
        self.sequence += 1;
        Counter(self.sequence)
    }

    fn start(&mut self, custom_parameters: BTreeMap<String, String>) -> String {
        let sequence_number = self.next_sequence();
        protocol_json(&ServerMessage::Start {
            sequence_number,
            stream_sid: self.stream_sid.as_str().into(),
            start: StartBody {
                account_sid: self.account_sid.as_str().into(),
                stream_sid: self.stream_sid.as_str().into(),
                call_sid: self.call_sid.as_str().into(),
                tracks: vec![protocol::INBOUND_TRACK.into()],
                custom_parameters,
                media_format: MediaFormat::of(self.encoding),
            },
        })
    }

    fn media(&mut self, audio: &[u8]) -> String {
        let sequence_number = self.next_sequence();
        self.chunk += 1;
        // Bytes per millisecond is a whole number for every encoding (8, 32, 48).
        let bytes_per_ms = (self.encoding.bytes_per_20ms() / 20).max(1) as u64;
        let timestamp = self.audio_bytes / bytes_per_ms;
        self.audio_bytes += audio.len() as u64;
        self.base64.clear();
        BASE64.encode_string(audio, &mut self.base64);
        protocol_json(&ServerMessage::Media {
            sequence_number,
            stream_sid: self.stream_sid.as_str().into(),
            media: MediaBody {
                track: protocol::INBOUND_TRACK.into(),
                chunk: Counter(self.chunk),
                timestamp: Counter(timestamp),
                payload: self.base64.as_str().into(),
            },
        })
    }

    fn dtmf(&mut self, digit: char) -> String {
        let sequence_number = self.next_sequence();
        let mut buf = [0u8; 4];
        protocol_json(&ServerMessage::Dtmf {
            sequence_number,
            stream_sid: self.stream_sid.as_str().into(),
            dtmf: DtmfBody {
                track: protocol::DTMF_TRACK.into(),
                digit: (&*digit.encode_utf8(&mut buf)).into(),
            },
        })
    }

    fn mark(&mut self, name: &str) -> String {
        let sequence_number = self.next_sequence();
        protocol_json(&ServerMessage::Mark {
            sequence_number,
            stream_sid: self.stream_sid.as_str().into(),
            mark: MarkBody { name: name.into() },
        })
    }

    fn answered(&mut self) -> String {
        let sequence_number = self.next_sequence();
        protocol_json(&ServerMessage::Answered {
            sequence_number,
            stream_sid: self.stream_sid.as_str().into(),
        })
    }

    fn stop(&mut self) -> String {
        let sequence_number = self.next_sequence();
        protocol_json(&ServerMessage::Stop {
            sequence_number,
            stream_sid: self.stream_sid.as_str().into(),
            stop: StopBody {
                account_sid: self.account_sid.as_str().into(),
                call_sid: self.call_sid.as_str().into(),
            },
        })
    }
}

/// What to do with one frame from the agent.
enum Step {
    Forward(FromAgent),
    Skip,
    /// Too many frames in a row not understood.
    Corrupt,
}

/// The receiving half's state.
#[derive(Default)]
struct Inbound {
    /// Frames not understood since the last one that was.
    corrupt_run: u32,
    last_warning: Option<Instant>,
    warnings_suppressed: u32,
    /// A `Hangup` was already forwarded (the `hangup` event, then a close 1000, must not
    /// end the call twice).
    hangup_sent: bool,
}

impl Inbound {
    fn text(&mut self, text: &str) -> Step {
        let event = match protocol::parse_agent_frame(text) {
            Ok(event) => event,
            Err(err) => return self.corrupt(err),
        };
        self.corrupt_run = 0;
        match event {
            AgentEvent::Media(audio) => Step::Forward(FromAgent::Media(audio)),
            AgentEvent::Mark(name) => Step::Forward(FromAgent::Mark(name)),
            AgentEvent::Clear => Step::Forward(FromAgent::Clear),
            AgentEvent::Hangup => Step::Forward(FromAgent::Hangup),
            AgentEvent::SendDtmf(digits) => {
                if protocol::valid_dtmf_digits(&digits) {
                    Step::Forward(FromAgent::SendDtmf(digits))
                } else {
                    tracing::warn!(
                        digits = %truncated(&digits, 32),
                        "agent send_dtmf skipped: digits must be 0-9, *, #, A-D"
                    );
                    Step::Skip
                }
            }
            AgentEvent::Transfer { .. } => {
                // The destination is a phone number: not logged.
                tracing::info!("agent asked for a transfer, which is not supported yet: ignored");
                Step::Skip
            }
            AgentEvent::Unknown(name) => {
                tracing::debug!(event = %truncated(&name, 64), "unknown agent event skipped");
                Step::Skip
            }
        }
    }

    fn corrupt(&mut self, err: FrameError) -> Step {
        crate::metrics::agent_corrupt_frame();
        self.corrupt_run += 1;
        let now = Instant::now();
        let quiet = self
            .last_warning
            .is_some_and(|at| now.duration_since(at) < CORRUPT_WARN_INTERVAL);
        if quiet {
            self.warnings_suppressed += 1;
        } else {
            tracing::warn!(
                cause = %err,
                in_a_row = self.corrupt_run,
                suppressed = self.warnings_suppressed,
                "agent frame not understood: skipped"
            );
            self.last_warning = Some(now);
            self.warnings_suppressed = 0;
        }
        if self.corrupt_run >= CORRUPT_RUN_LIMIT {
            Step::Corrupt
        } else {
            Step::Skip
        }
    }
}

fn truncated(s: &str, max_chars: usize) -> &str {
    match s.char_indices().nth(max_chars) {
        Some((at, _)) => &s[..at],
        None => s,
    }
}

/// The task that owns the socket.
async fn run(
    mut ws: AgentSocket,
    mut out: Outbound,
    mut to_agent: mpsc::Receiver<ToAgent>,
    from_agent: mpsc::Sender<FromAgent>,
) {
    let mut inbound = Inbound::default();
    // Each way out of the loop tells the media task first (if the agent side ended the
    // session), then finishes with the socket, so a slow close handshake never delays
    // the end of the call.
    loop {
        tokio::select! {
            msg = to_agent.recv() => {
                let text = match msg {
                    Some(ToAgent::Media(audio)) => out.media(&audio),
                    Some(ToAgent::Dtmf(digit)) => {
                        if !protocol::valid_dtmf_digit(digit) {
                            tracing::debug!(?digit, "not a DTMF key: not sent to the agent");
                            continue;
                        }
                        out.dtmf(digit)
                    }
                    Some(ToAgent::MarkPlayed(name)) => out.mark(&name),
                    Some(ToAgent::Answered) => out.answered(),
                    Some(ToAgent::Stop) | None => {
                        if msg.is_none() {
                            tracing::debug!("media task went away without Stop: stopping anyway");
                        }
                        close(&mut ws, &mut out, &mut to_agent, CloseCode::Normal, "").await;
                        tracing::info!("agent websocket closed: call over");
                        break;
                    }
                };
                if let Err(err) = ws.send(Message::text(text)).await {
                    let reason = read_error_reason(&err);
                    tracing::warn!(cause = %err, reason = reason.as_str(), "agent websocket write failed");
                    report(&from_agent, &mut inbound, FromAgent::Failed(reason)).await;
                    break;
                }
            }
            frame = ws.next() => {
                let step = match frame {
                    Some(Ok(Message::Text(text))) => inbound.text(text.as_str()),
                    Some(Ok(Message::Binary(_))) => inbound.corrupt(FrameError::Binary),
                    // Pings are answered by tungstenite on the next read or write.
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => Step::Skip,
                    Some(Ok(Message::Close(frame))) => {
                        report(&from_agent, &mut inbound, close_reason(frame.as_ref())).await;
                        finish_close_handshake(&mut ws, &mut to_agent).await;
                        break;
                    }
                    Some(Err(err)) => {
                        let reason = read_error_reason(&err);
                        tracing::warn!(cause = %err, reason = reason.as_str(), "agent websocket failed");
                        report(&from_agent, &mut inbound, FromAgent::Failed(reason)).await;
                        break;
                    }
                    None => {
                        tracing::warn!("agent websocket ended without a close frame");
                        let reason = DisconnectionReason::ErrorLlmWebsocketLostConnection;
                        report(&from_agent, &mut inbound, FromAgent::Failed(reason)).await;
                        break;
                    }
                };
                match step {
                    Step::Forward(event) => report(&from_agent, &mut inbound, event).await,
                    Step::Skip => {}
                    Step::Corrupt => {
                        tracing::warn!(
                            limit = CORRUPT_RUN_LIMIT,
                            "too many agent frames in a row not understood: closing"
                        );
                        let reason = DisconnectionReason::ErrorLlmWebsocketCorruptPayload;
                        report(&from_agent, &mut inbound, FromAgent::Failed(reason)).await;
                        close(&mut ws, &mut out, &mut to_agent, CloseCode::Invalid, "corrupt payload").await;
                        break;
                    }
                }
            }
        }
    }
    drop(from_agent);
    drop(ws);
    // The socket is gone; whatever the media task still offers is accepted and dropped,
    // so it never sees a closed channel mid-call.
    while to_agent.recv().await.is_some() {}
}

/// Hands `event` to the media task; a second `Hangup` (the `hangup` event, then a close
/// 1000) is swallowed so the call does not end twice.
async fn report(from_agent: &mpsc::Sender<FromAgent>, inbound: &mut Inbound, event: FromAgent) {
    if event == FromAgent::Hangup {
        if inbound.hangup_sent {
            return;
        }
        inbound.hangup_sent = true;
    }
    // An error means the media task no longer listens: the call is ending anyway, and
    // its Stop (or dropped sender) ends this task.
    let _ = from_agent.send(event).await;
}

/// The end of the call as the agent's close frame states it.
fn close_reason(frame: Option<&CloseFrame>) -> FromAgent {
    match frame {
        None => {
            tracing::info!("agent closed the websocket (no close code)");
            FromAgent::Hangup
        }
        Some(frame) => {
            let code = u16::from(frame.code);
            let reason = truncated(frame.reason.as_str(), 120);
            if frame.code == CloseCode::Normal {
                tracing::info!(code, reason, "agent closed the websocket");
                FromAgent::Hangup
            } else {
                tracing::warn!(code, reason, "agent closed the websocket abnormally");
                FromAgent::Failed(DisconnectionReason::ErrorLlmWebsocketRuntime)
            }
        }
    }
}

/// The reason for a read or write error: the connection vanished, or the agent broke the
/// websocket protocol.
fn read_error_reason(err: &WsError) -> DisconnectionReason {
    match err {
        WsError::Io(_)
        | WsError::ConnectionClosed
        | WsError::AlreadyClosed
        | WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
            DisconnectionReason::ErrorLlmWebsocketLostConnection
        }
        _ => DisconnectionReason::ErrorLlmWebsocketRuntime,
    }
}

/// Sends `stop` and a close frame, then waits (bounded) for the agent's close reply.
async fn close(
    ws: &mut AgentSocket,
    out: &mut Outbound,
    to_agent: &mut mpsc::Receiver<ToAgent>,
    code: CloseCode,
    reason: &'static str,
) {
    let stop = out.stop();
    if let Err(err) = ws.send(Message::text(stop)).await {
        tracing::debug!(cause = %err, "stop not sent");
    }
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    if let Err(err) = ws.close(Some(frame)).await {
        tracing::debug!(cause = %err, "close frame not sent");
        return;
    }
    finish_close_handshake(ws, to_agent).await;
}

/// Reads until the socket ends, so that a close frame is answered (or our own is
/// acknowledged) and the TCP connection shuts down cleanly; bounded in time. Meanwhile
/// the media task's messages are discarded, so its queue never fills.
async fn finish_close_handshake(ws: &mut AgentSocket, to_agent: &mut mpsc::Receiver<ToAgent>) {
    let mut media_task_gone = false;
    let drain = async {
        loop {
            tokio::select! {
                frame = ws.next() => if !matches!(frame, Some(Ok(_))) { break },
                msg = to_agent.recv(), if !media_task_gone => media_task_gone = msg.is_none(),
            }
        }
    };
    if tokio::time::timeout(CLOSE_HANDSHAKE_TIMEOUT, drain)
        .await
        .is_err()
    {
        tracing::debug!("agent did not finish the close handshake in time");
    }
}

#[cfg(test)]
mod tests;
