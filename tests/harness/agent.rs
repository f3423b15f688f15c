//! The test's own agent: a websocket server speaking the Twilio Media Streams dialect
//! (AGENT_PROTOCOL.md). It records everything the gateway sends it, so a test can check
//! `connected`, `start`, `media`, `dtmf` and `stop`; it echoes the caller's audio back so
//! the test can find it again in the RTP returning to the caller; and on the test's command
//! it hangs up, closes with any code or drops the connection. It can also refuse the
//! upgrade, or stall it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{http, Message};

/// How the agent treats a new connection.
#[derive(Clone, Copy, Debug)]
pub enum Mode {
    /// Accept and send every `media` payload straight back.
    Echo,
    /// Accept, but send nothing back.
    Listen,
    /// Answer the websocket upgrade with this HTTP status (e.g. 403): the agent refuses.
    Refuse(u16),
    /// Accept the TCP connection but never answer the upgrade request; just read until the
    /// peer closes (or this long passes).
    Stall(Duration),
}

/// Something the test tells one connection to do.
#[derive(Debug)]
pub enum AgentCmd {
    /// Send `{"event":"hangup"}`.
    Hangup,
    /// Close the websocket with this code.
    Close(u16),
    /// Drop the TCP connection without any close frame.
    Drop,
}

/// One message the agent received, with when.
#[derive(Clone, Debug)]
pub struct Received {
    pub at: Instant,
    pub msg: Value,
}

/// Everything one connection saw.
#[derive(Clone, Debug, Default)]
pub struct Connection {
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub refused: bool,
    pub events: Vec<Received>,
    pub binary_frames: usize,
    pub non_json_frames: usize,
    /// The code of the close frame the gateway sent first (not its reply to ours).
    pub close_code: Option<u16>,
    /// The agent sent a close frame (or dropped the connection) first.
    pub we_closed: bool,
    /// The connection is over (closed by either side or dropped).
    pub finished: bool,
    /// Media payloads echoed back.
    pub echoed: usize,
    /// [`Mode::Stall`]: bytes of the upgrade request read, and whether the gateway then
    /// closed the TCP connection.
    pub stalled_bytes: usize,
    pub stalled_peer_closed: bool,
    /// Commands to the live connection.
    cmds: Option<mpsc::UnboundedSender<AgentCmd>>,
}

/// The decoded payloads of the `media` messages among `events`, in order.
pub fn media_payloads(events: &[Received]) -> Vec<Vec<u8>> {
    events
        .iter()
        .map(|r| &r.msg)
        .filter(|m| m["event"] == "media")
        .map(|m| {
            let b64 = m["media"]["payload"].as_str().unwrap_or("");
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap_or_else(|e| panic!("media payload is not base64 ({e}): {m}"))
        })
        .collect()
}

impl Connection {
    /// The `event` names, in order.
    pub fn event_names(&self) -> Vec<String> {
        self.events
            .iter()
            .map(|r| r.msg["event"].as_str().unwrap_or("?").to_string())
            .collect()
    }

    /// The first message whose `event` is `name`.
    pub fn first(&self, name: &str) -> Option<&Value> {
        self.events
            .iter()
            .map(|r| &r.msg)
            .find(|m| m["event"] == name)
    }

    /// All messages whose `event` is `name`.
    pub fn all(&self, name: &str) -> Vec<&Value> {
        self.events
            .iter()
            .map(|r| &r.msg)
            .filter(|m| m["event"] == name)
            .collect()
    }

    /// The decoded payloads of the `media` messages, in order.
    pub fn media_payloads(&self) -> Vec<Vec<u8>> {
        media_payloads(&self.events)
    }

    /// The DTMF digits received, in order.
    pub fn digits(&self) -> String {
        self.all("dtmf")
            .into_iter()
            .map(|m| m["dtmf"]["digit"].as_str().unwrap_or("?").to_string())
            .collect()
    }

    /// A header of the upgrade request (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The call this connection streams (`start.callSid`).
    pub fn call_sid(&self) -> Option<&str> {
        self.first("start")
            .and_then(|m| m["start"]["callSid"].as_str())
    }

    /// A one-line summary for failure messages.
    pub fn describe(&self) -> String {
        let names = self.event_names();
        let media = names.iter().filter(|n| *n == "media").count();
        let others: Vec<&String> = names.iter().filter(|n| *n != "media").collect();
        format!(
            "events (non-media) {others:?}, {media} media, gateway close code {:?}, we closed \
             first: {}, finished: {}, refused: {}, stalled: {} bytes read, peer closed: {}",
            self.close_code,
            self.we_closed,
            self.finished,
            self.refused,
            self.stalled_bytes,
            self.stalled_peer_closed
        )
    }
}

type Conns = Arc<Mutex<Vec<Connection>>>;

/// A running test agent; stops when dropped.
pub struct TestAgent {
    pub addr: SocketAddr,
    conns: Conns,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestAgent {
    /// Starts an agent on a free loopback port.
    pub async fn start(mode: Mode) -> TestAgent {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind agent");
        let addr = listener.local_addr().unwrap();
        let conns: Conns = Arc::default();
        let shared = conns.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let index = {
                    let mut all = shared.lock().unwrap();
                    all.push(Connection::default());
                    all.len() - 1
                };
                tokio::spawn(serve(stream, mode, shared.clone(), index));
            }
        });
        TestAgent { addr, conns, task }
    }

    /// The URL to put in the agent's `response_engine.url`.
    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// A snapshot of every connection so far.
    pub fn connections(&self) -> Vec<Connection> {
        self.conns.lock().unwrap().clone()
    }

    /// Every connection, one line each, for failure messages.
    pub fn describe_all(&self) -> String {
        self.connections()
            .iter()
            .enumerate()
            .map(|(i, c)| format!("  #{i}: {}\n", c.describe()))
            .collect()
    }

    /// Waits until `pred` holds for the connection list, or `limit` passes; returns the
    /// last snapshot either way.
    pub async fn wait_until(
        &self,
        limit: Duration,
        pred: impl Fn(&[Connection]) -> bool,
    ) -> Vec<Connection> {
        let deadline = Instant::now() + limit;
        loop {
            let snap = self.connections();
            if pred(&snap) || Instant::now() >= deadline {
                return snap;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `pred` holds for the connection list; panics saying that `what` did not
    /// happen after `limit`.
    pub async fn assert_within(
        &self,
        limit: Duration,
        what: &str,
        pred: impl Fn(&[Connection]) -> bool,
    ) {
        let snap = self.wait_until(limit, &pred).await;
        assert!(
            pred(&snap),
            "agent: {what} did not happen within {limit:?}; connections:\n{}",
            self.describe_all()
        );
    }

    /// Waits until `pred` holds for the connection that streams `call_id`; panics naming
    /// `what` after `limit`.
    pub async fn wait_conn(
        &self,
        call_id: &str,
        limit: Duration,
        what: &str,
        pred: impl Fn(&Connection) -> bool,
    ) {
        let what = format!("{what} for call {call_id}");
        self.assert_within(limit, &what, |all| {
            all.iter().any(|c| c.call_sid() == Some(call_id) && pred(c))
        })
        .await;
    }

    /// The connection that streams `call_id`.
    pub fn connection_for(&self, call_id: &str) -> Connection {
        self.connections()
            .into_iter()
            .find(|c| c.call_sid() == Some(call_id))
            .unwrap_or_else(|| panic!("agent: no connection for call {call_id}"))
    }

    /// Tells the connection streaming `call_id` to do something.
    pub fn command(&self, call_id: &str, cmd: AgentCmd) {
        self.connection_for(call_id)
            .cmds
            .unwrap_or_else(|| panic!("agent: the connection for call {call_id} is over"))
            .send(cmd)
            .expect("agent connection gone");
    }
}

// The handshake callback's error type is tungstenite's, not ours to shrink.
#[allow(clippy::result_large_err)]
async fn serve(mut stream: TcpStream, mode: Mode, conns: Conns, index: usize) {
    let record = |f: &mut dyn FnMut(&mut Connection)| f(&mut conns.lock().unwrap()[index]);
    if let Mode::Stall(limit) = mode {
        // Read the upgrade request and whatever follows, never answering, until the
        // gateway gives up on us (EOF / reset) or the limit passes.
        let mut buf = [0u8; 4096];
        let _ = tokio::time::timeout(limit, async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => {
                        record(&mut |c| c.stalled_peer_closed = true);
                        return;
                    }
                    Ok(n) => record(&mut |c| c.stalled_bytes += n),
                }
            }
        })
        .await;
        record(&mut |c| c.finished = true);
        return;
    }
    let mut seen_path = String::new();
    let mut seen_headers = Vec::new();
    let callback = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        seen_path = req.uri().path().to_string();
        seen_headers = req
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        match mode {
            Mode::Refuse(status) => Err(http::Response::builder()
                .status(status)
                .body(Some("the test agent refuses this call".to_string()))
                .unwrap()),
            _ => Ok(resp),
        }
    };
    let accepted = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::accept_hdr_async(stream, callback),
    )
    .await;
    let refused = !matches!(accepted, Ok(Ok(_)));
    record(&mut |c| {
        c.path = std::mem::take(&mut seen_path);
        c.headers = std::mem::take(&mut seen_headers);
        c.refused = refused;
        c.finished = refused;
    });
    let Ok(Ok(mut ws)) = accepted else {
        return;
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    // The connection record holds the only sender, so `recv` never ends while it lives.
    record(&mut |c| c.cmds = Some(tx.clone()));
    drop(tx);
    let mut stream_sid = String::new();
    loop {
        tokio::select! {
            cmd = rx.recv() => match cmd {
                Some(AgentCmd::Hangup) => {
                    let text = json!({"event": "hangup"}).to_string();
                    if ws.send(Message::text(text)).await.is_err() {
                        break;
                    }
                }
                Some(AgentCmd::Close(code)) => {
                    record(&mut |c| c.we_closed = true);
                    let frame = CloseFrame { code: CloseCode::from(code), reason: "test agent".into() };
                    let _ = ws.close(Some(frame)).await;
                    // Keep reading: the gateway's reply completes the handshake.
                }
                Some(AgentCmd::Drop) => {
                    record(&mut |c| c.we_closed = true);
                    break;
                }
                None => {}
            },
            frame = ws.next() => {
                let Some(Ok(frame)) = frame else { break };
                match frame {
                    Message::Text(text) => {
                        let Ok(msg) = serde_json::from_str::<Value>(text.as_str()) else {
                            record(&mut |c| c.non_json_frames += 1);
                            continue;
                        };
                        if msg["event"] == "start" {
                            stream_sid = msg["streamSid"]
                                .as_str()
                                .or_else(|| msg["start"]["streamSid"].as_str())
                                .unwrap_or("")
                                .to_string();
                        }
                        let echo = matches!(mode, Mode::Echo) && msg["event"] == "media";
                        let reply = echo.then(|| {
                            json!({
                                "event": "media",
                                "streamSid": stream_sid,
                                "media": {"payload": msg["media"]["payload"].clone()},
                            })
                            .to_string()
                        });
                        record(&mut |c| {
                            c.events.push(Received { at: Instant::now(), msg: msg.clone() })
                        });
                        if let Some(reply) = reply {
                            if ws.send(Message::text(reply)).await.is_err() {
                                break;
                            }
                            record(&mut |c| c.echoed += 1);
                        }
                    }
                    Message::Binary(_) => record(&mut |c| c.binary_frames += 1),
                    Message::Close(frame) => {
                        let code = frame.map(|f| u16::from(f.code));
                        record(&mut |c| {
                            if !c.we_closed {
                                c.close_code = code;
                            }
                        });
                        // Complete the closing handshake, then drain until the stream
                        // ends (bounded).
                        let _ = ws.close(None).await;
                        let _ = tokio::time::timeout(Duration::from_secs(2), async {
                            while let Some(Ok(_)) = ws.next().await {}
                        })
                        .await;
                        break;
                    }
                    _ => {}
                }
            }
        }
    }
    record(&mut |c| {
        c.finished = true;
        c.cmds = None;
    });
}

/// Checks the opening of a stream as the protocol requires: `connected` first, then
/// `start` naming this call with the agent's media format. Returns the `start` message.
pub fn assert_stream_opening(
    conn: &Connection,
    call_id: &str,
    agent_id: &str,
    encoding: &str,
    sample_rate: u64,
) -> Value {
    let names = conn.event_names();
    assert!(
        names.len() >= 2 && names[0] == "connected" && names[1] == "start",
        "the agent must get `connected` then `start` first; it got {:?}",
        &names[..names.len().min(5)]
    );
    assert_eq!(conn.binary_frames, 0, "the gateway sent binary frames");
    let start = conn.events[1].msg.clone();
    let s = &start["start"];
    assert_eq!(s["callSid"], call_id, "start.callSid: {start}");
    assert!(
        start["streamSid"].as_str().is_some_and(|x| !x.is_empty()),
        "start.streamSid missing: {start}"
    );
    assert_eq!(
        s["streamSid"], start["streamSid"],
        "start.streamSid differs from the top-level streamSid: {start}"
    );
    assert_eq!(
        s["mediaFormat"]["encoding"], encoding,
        "mediaFormat: {start}"
    );
    assert_eq!(
        s["mediaFormat"]["sampleRate"], sample_rate,
        "mediaFormat: {start}"
    );
    assert_eq!(s["mediaFormat"]["channels"], 1, "mediaFormat: {start}");
    let params = &s["customParameters"];
    assert_eq!(params["call_id"], call_id, "customParameters: {start}");
    assert_eq!(params["agent_id"], agent_id, "customParameters: {start}");
    assert_eq!(params["direction"], "inbound", "customParameters: {start}");
    start
}
