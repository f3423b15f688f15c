//! A webhook receiver: a small HTTP server that records every request the server under test
//! makes to it (call webhooks, a number's inbound webhook) and answers each with the status
//! and body the test chose.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One request received: the head (request line and headers) and the body.
#[derive(Debug, Clone)]
pub struct Hooked {
    pub head: String,
    pub body: String,
}

impl Hooked {
    /// A header's value (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.split("\r\n").skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }

    /// The body as JSON; panics when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    /// The body's `event`.
    pub fn event(&self) -> String {
        self.json()["event"].as_str().unwrap_or("").to_owned()
    }

    /// The whole request as text.
    pub fn text(&self) -> String {
        format!("{}\r\n\r\n{}", self.head, self.body)
    }
}

/// A running receiver; it stops with the test's runtime.
pub struct WebhookServer {
    /// `http://127.0.0.1:port{path}`.
    pub url: String,
    seen: Arc<Mutex<Vec<Hooked>>>,
}

impl WebhookServer {
    /// Listens on a free loopback port; answers its n-th request with `replies[n]` (status,
    /// JSON body or empty), then with the last one.
    pub async fn start(path: &str, replies: &[(u16, &str)]) -> WebhookServer {
        assert!(!replies.is_empty(), "the receiver needs at least one reply");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}{path}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let replies: Vec<(u16, String)> =
            replies.iter().map(|(s, b)| (*s, b.to_string())).collect();
        tokio::spawn(async move {
            let mut n = 0;
            while let Ok((mut s, _)) = listener.accept().await {
                let (status, body) = &replies[n.min(replies.len() - 1)];
                n += 1;
                let Some((head, received)) = read_request(&mut s).await else {
                    continue;
                };
                // Recorded before answering: the order seen is the order sent.
                record.lock().unwrap().push(Hooked {
                    head,
                    body: received,
                });
                let content_type = if body.is_empty() {
                    ""
                } else {
                    "Content-Type: application/json\r\n"
                };
                let reply = format!(
                    "HTTP/1.1 {status} Test\r\n{content_type}Content-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(reply.as_bytes()).await;
                let _ = s.shutdown().await;
            }
        });
        WebhookServer { url, seen }
    }

    /// Every request so far.
    pub fn seen(&self) -> Vec<Hooked> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits (bounded) until `n` requests came in; returns all of them.
    pub async fn wait_for(&self, n: usize, limit: Duration) -> Vec<Hooked> {
        let deadline = Instant::now() + limit;
        loop {
            let seen = self.seen();
            if seen.len() >= n || Instant::now() > deadline {
                return seen;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Head and body of one HTTP/1.1 request with Content-Length; `None` if it is cut short.
async fn read_request(s: &mut TcpStream) -> Option<(String, String)> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    let read = async {
        loop {
            if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&raw[..end]).into_owned();
                let length: usize = head
                    .split("\r\n")
                    .find_map(|l| {
                        let (n, v) = l.split_once(':')?;
                        n.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().ok())?
                    })
                    .unwrap_or(0);
                if raw.len() >= end + 4 + length {
                    let body = String::from_utf8(raw[end + 4..end + 4 + length].to_vec()).ok()?;
                    return Some((head, body));
                }
            }
            let k = s.read(&mut buf).await.ok()?;
            if k == 0 {
                return None;
            }
            raw.extend_from_slice(&buf[..k]);
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .ok()
        .flatten()
}
