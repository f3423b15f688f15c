//! The built-in demo agent at `GET /agents/echo`: it plays the caller's audio back to the
//! caller after a short delay, so a fresh install can place a real call end to end before
//! any AI agent exists. It speaks the agent side of the Twilio dialect, so it also
//! exercises the bridge the way a real bot does, marks included.
//!
//! It is public (no API key): it returns only the audio it is sent. Its cost is bounded
//! instead: few concurrent sessions, small messages, a short queue, idle timeouts.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::ws::{close_code, CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use tokio::time::Instant;

use super::protocol::{AgentMediaBody, AgentMessage, MarkBody, MediaFormat, ServerMessage, BASE64};

/// How long the caller's audio takes to come back: long enough to tell the echo from
/// sidetone, short enough to stay conversational.
pub const ECHO_DELAY: Duration = Duration::from_millis(200);
/// Echo sessions open at once; further upgrades get 503.
const MAX_SESSIONS: usize = 64;
/// Largest message accepted: a 20 ms frame at 24 kHz is about 1.3 KB of JSON.
const MAX_MESSAGE_BYTES: usize = 64 << 10;
/// Frames waiting to be echoed (2 s of 20 ms frames); more are dropped.
const MAX_QUEUE: usize = 100;
/// `connected` and `start` must arrive within this.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// A session with no message from the server for this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

static SESSIONS: AtomicUsize = AtomicUsize::new(0);

/// Holds one of the [`MAX_SESSIONS`] slots until dropped.
struct Slot;

impl Slot {
    fn take() -> Option<Slot> {
        SESSIONS
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_SESSIONS).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        SESSIONS.fetch_sub(1, Ordering::AcqRel);
    }
}

/// `GET /agents/echo`: upgrades to the echo agent.
pub async fn handler(upgrade: WebSocketUpgrade) -> Response {
    let Some(slot) = Slot::take() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "echo agent busy").into_response();
    };
    upgrade
        .max_message_size(MAX_MESSAGE_BYTES)
        .max_frame_size(MAX_MESSAGE_BYTES)
        .on_upgrade(move |socket| async move {
            session(socket).await;
            drop(slot);
        })
}

/// One echoed stream, once `start` has told us its identity and format.
struct Echo {
    stream_sid: String,
    /// Audio bytes per second, to place a mark after each second of echoed audio.
    bytes_per_second: usize,
    /// Payloads (base64, as received) with when they are due and their decoded length.
    queue: VecDeque<(Instant, String, usize)>,
    echoed_since_mark: usize,
    marks_sent: u64,
}

impl Echo {
    fn new(stream_sid: String, format: &MediaFormat<'_>) -> Echo {
        let bytes_per_sample = if format.encoding == "audio/x-l16" {
            2
        } else {
            1
        };
        let bytes_per_second =
            format.sample_rate as usize * format.channels.max(1) as usize * bytes_per_sample;
        Echo {
            stream_sid,
            bytes_per_second: bytes_per_second.max(1),
            queue: VecDeque::new(),
            echoed_since_mark: 0,
            marks_sent: 0,
        }
    }

    fn push(&mut self, payload: String) {
        let Ok(audio) = BASE64.decode(payload.as_bytes()) else {
            tracing::debug!("echo agent: media payload is not base64, skipped");
            return;
        };
        if self.queue.len() >= MAX_QUEUE {
            tracing::debug!("echo agent: queue full, frame dropped");
            return;
        }
        self.queue
            .push_back((Instant::now() + ECHO_DELAY, payload, audio.len()));
    }

    /// The messages to send now: the due frame, and a mark after each full second.
    fn pop_due(&mut self) -> Vec<String> {
        let Some((_, payload, len)) = self.queue.pop_front() else {
            return Vec::new();
        };
        let mut out = vec![json(&AgentMessage::Media {
            stream_sid: Cow::Borrowed(&self.stream_sid),
            media: AgentMediaBody {
                payload: payload.into(),
            },
        })];
        self.echoed_since_mark += len;
        while self.echoed_since_mark >= self.bytes_per_second {
            self.echoed_since_mark -= self.bytes_per_second;
            self.marks_sent += 1;
            out.push(json(&AgentMessage::Mark {
                stream_sid: Cow::Borrowed(&self.stream_sid),
                mark: MarkBody {
                    name: format!("echo-{}", self.marks_sent).into(),
                },
            }));
        }
        out
    }
}

fn json(msg: &AgentMessage<'_>) -> String {
    // cannot fail: agent messages hold only strings.
    serde_json::to_string(msg).expect("agent message serializes")
}

async fn session(mut socket: WebSocket) {
    let Some(mut echo) = wait_for_start(&mut socket).await else {
        return;
    };
    tracing::debug!(stream_sid = %echo.stream_sid, "echo agent: stream started");
    loop {
        let due = echo.queue.front().map(|(at, _, _)| *at);
        let next_due = async move {
            match due {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            received = tokio::time::timeout(IDLE_TIMEOUT, socket.recv()) => {
                let msg = match received {
                    Err(_idle) => {
                        tracing::debug!("echo agent: idle, closing");
                        close(&mut socket).await;
                        return;
                    }
                    Ok(None | Some(Err(_))) => return,
                    Ok(Some(Ok(Message::Close(_)))) => {
                        // Reading on flushes the automatic close reply.
                        drain(&mut socket).await;
                        return;
                    }
                    Ok(Some(Ok(msg))) => msg,
                };
                let Message::Text(text) = msg else { continue };
                match serde_json::from_str::<ServerMessage<'_>>(text.as_str()) {
                    Ok(ServerMessage::Media { media, .. }) => echo.push(media.payload.into_owned()),
                    Ok(ServerMessage::Stop { .. }) => {
                        close(&mut socket).await;
                        return;
                    }
                    // Marks, DTMF and anything unexpected: nothing to echo.
                    _ => {}
                }
            }
            () = next_due => {
                for text in echo.pop_due() {
                    if socket.send(Message::text(text)).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

/// Reads until `start`, skipping `connected` (and anything else); `None` if the socket
/// ends or `start` takes too long.
async fn wait_for_start(socket: &mut WebSocket) -> Option<Echo> {
    let wait = async {
        loop {
            let Message::Text(text) = socket.recv().await?.ok()? else {
                continue;
            };
            if let Ok(ServerMessage::Start { start, .. }) =
                serde_json::from_str::<ServerMessage<'_>>(text.as_str())
            {
                return Some(Echo::new(
                    start.stream_sid.into_owned(),
                    &start.media_format,
                ));
            }
        }
    };
    tokio::time::timeout(START_TIMEOUT, wait)
        .await
        .ok()
        .flatten()
}

/// Closes with 1000 and waits briefly for the other side's close.
async fn close(socket: &mut WebSocket) {
    let frame = CloseFrame {
        code: close_code::NORMAL,
        reason: "".into(),
    };
    if socket.send(Message::Close(Some(frame))).await.is_ok() {
        drain(socket).await;
    }
}

/// Reads until the socket ends (bounded), completing the close handshake.
async fn drain(socket: &mut WebSocket) {
    let rest = async { while let Some(Ok(_)) = socket.recv().await {} };
    let _ = tokio::time::timeout(Duration::from_secs(2), rest).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::AudioEncoding;

    #[test]
    fn marks_follow_the_format() {
        let wide = MediaFormat::of(AudioEncoding::Pcm16000);
        assert_eq!(Echo::new("MZ".into(), &wide).bytes_per_second, 32000);
        let narrow = MediaFormat::of(AudioEncoding::Mulaw8000);
        assert_eq!(Echo::new("MZ".into(), &narrow).bytes_per_second, 8000);
    }
}
