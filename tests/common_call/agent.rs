//! The test's own agent: a websocket server speaking the Twilio Media Streams dialect
//! (AGENT_PROTOCOL.md). It records everything the gateway sends it, so a test can check
//! `connected`, `start`, `media`, `dtmf` and `stop`, and it echoes the caller's audio
//! back so the test can find it again in the RTP returning to the caller.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::{http, Message};

/// How the agent treats a connection.
#[derive(Clone, Copy, Debug)]
pub enum Mode {
    /// Accept and send every `media` payload straight back.
    Echo,
    /// Answer the websocket upgrade with this HTTP status (e.g. 403): the agent refuses.
    Refuse(u16),
    /// Accept, but send nothing back.
    Listen,
}

/// One message the agent received, with when.
#[derive(Clone, Debug)]
pub struct Received {
    pub at: Instant,
    pub msg: Value,
}

/// Everything one websocket connection saw.
#[derive(Clone, Debug, Default)]
pub struct Connection {
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub refused: bool,
    pub events: Vec<Received>,
    pub binary_frames: usize,
    pub non_json_frames: usize,
    /// The close code the gateway sent, if it sent a close frame.
    pub close_code: Option<u16>,
    /// The connection is over (closed by either side or dropped).
    pub finished: bool,
    /// Media payloads echoed back.
    pub echoed: usize,
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
        self.all("media")
            .into_iter()
            .map(|m| {
                let b64 = m["media"]["payload"].as_str().unwrap_or("");
                base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .unwrap_or_else(|e| panic!("media payload is not base64 ({e}): {m}"))
            })
            .collect()
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
}

/// A running test agent; stops when dropped.
pub struct TestAgent {
    pub addr: SocketAddr,
    conns: Arc<Mutex<Vec<Connection>>>,
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
        let conns: Arc<Mutex<Vec<Connection>>> = Arc::default();
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

    /// Connections that completed the websocket handshake.
    pub fn accepted(&self) -> Vec<Connection> {
        self.connections()
            .into_iter()
            .filter(|c| !c.refused)
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
}

// The handshake callback's error type is tungstenite's, not ours to shrink.
#[allow(clippy::result_large_err)]
async fn serve(
    stream: tokio::net::TcpStream,
    mode: Mode,
    conns: Arc<Mutex<Vec<Connection>>>,
    index: usize,
) {
    let record = |f: &mut dyn FnMut(&mut Connection)| {
        let mut all = conns.lock().unwrap();
        f(&mut all[index]);
    };
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
        if refused {
            c.finished = true;
        }
    });
    let Ok(Ok(mut ws)) = accepted else {
        return;
    };
    let mut stream_sid = String::new();
    while let Some(frame) = ws.next().await {
        let frame = match frame {
            Ok(f) => f,
            Err(_) => break,
        };
        match frame {
            Message::Text(text) => {
                let parsed: Result<Value, _> = serde_json::from_str(text.as_str());
                let Ok(msg) = parsed else {
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
                    c.events.push(Received {
                        at: Instant::now(),
                        msg: msg.clone(),
                    })
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
                record(&mut |c| c.close_code = code);
                // Complete the closing handshake.
                let _ = ws.close(None).await;
                break;
            }
            _ => {}
        }
    }
    record(&mut |c| c.finished = true);
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
