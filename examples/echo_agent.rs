//! A standalone echo agent for load tests (benches/call_load.sh): a websocket server
//! speaking the Twilio Media Streams dialect that sends every `media` payload straight back
//! on the same stream. No session limit, one task per connection, nothing else.
//!
//!     cargo run --release --example echo_agent -- 127.0.0.1:9100
//!
//! Then point an agent's `response_engine.url` at `ws://127.0.0.1:9100/ws`.

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

#[tokio::main]
async fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9100".to_string());
    let listener = TcpListener::bind(&addr)
        .await
        .unwrap_or_else(|e| panic!("echo_agent: cannot listen on {addr}: {e}"));
    eprintln!("echo_agent: listening on ws://{addr}/");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                return;
            };
            let mut stream_sid = String::new();
            while let Some(Ok(frame)) = ws.next().await {
                match frame {
                    Message::Text(text) => {
                        let Ok(msg) = serde_json::from_str::<Value>(text.as_str()) else {
                            continue;
                        };
                        match msg["event"].as_str() {
                            Some("start") => {
                                stream_sid = msg["streamSid"].as_str().unwrap_or("").to_string();
                            }
                            Some("media") => {
                                let reply = json!({
                                    "event": "media",
                                    "streamSid": stream_sid,
                                    "media": {"payload": msg["media"]["payload"]},
                                });
                                if ws.send(Message::text(reply.to_string())).await.is_err() {
                                    break;
                                }
                            }
                            _ => {}
                        }
                    }
                    Message::Close(_) => {
                        let _ = ws.close(None).await;
                        break;
                    }
                    _ => {}
                }
            }
        });
    }
}
