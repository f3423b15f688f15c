//! Call-event delivery against a local webhook server that answers as each test scripts
//! it. Tests that read metrics run on a current-thread runtime inside a local recorder, so
//! the counts made in spawned delivery tasks are seen.

use std::collections::BTreeMap;
use std::time::Instant;

use metrics_exporter_prometheus::PrometheusBuilder;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;
use crate::model::{Agent, AudioEncoding, Call, ResponseEngine};

const KEY: &str = "hook-key-0123456789";

/// One request the webhook server received, and when it answered.
#[derive(Debug, Clone)]
struct Seen {
    headers: String,
    body: String,
    answered: Instant,
    arrived: Instant,
}

impl Seen {
    fn header(&self, name: &str) -> Option<String> {
        self.headers.split("\r\n").find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap()
    }
}

/// A webhook server answering its n-th request with `statuses[n]` (the last one after
/// that) once `hold` has passed; it records every request.
async fn hook(statuses: Vec<u16>, hold: Duration) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        let mut n = 0usize;
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let status = statuses[n.min(statuses.len() - 1)];
            n += 1;
            let record = record.clone();
            tokio::spawn(async move {
                let mut raw = Vec::new();
                let mut buf = [0u8; 4096];
                let (head_end, length) = loop {
                    let k = s.read(&mut buf).await.unwrap();
                    assert!(k > 0, "request cut short");
                    raw.extend_from_slice(&buf[..k]);
                    if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&raw[..end]).to_lowercase();
                        let length: usize = head
                            .split("\r\n")
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .unwrap()
                            .trim()
                            .parse()
                            .unwrap();
                        break (end, length);
                    }
                };
                while raw.len() < head_end + 4 + length {
                    let k = s.read(&mut buf).await.unwrap();
                    raw.extend_from_slice(&buf[..k]);
                }
                let arrived = Instant::now();
                tokio::time::sleep(hold).await;
                let reply = format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n");
                let _ = s.write_all(reply.as_bytes()).await;
                let _ = s.shutdown().await;
                record.lock().unwrap().push(Seen {
                    headers: String::from_utf8_lossy(&raw[..head_end]).into_owned(),
                    body: String::from_utf8_lossy(&raw[head_end + 4..]).into_owned(),
                    answered: Instant::now(),
                    arrived,
                });
            });
        }
    });
    (url, seen)
}

fn settings(max_attempts: u32, max_pending: usize) -> WebhookSettings {
    WebhookSettings {
        signing_key: Some(KEY.to_owned()),
        max_attempts,
        timeout: Duration::from_secs(5),
        max_pending,
    }
}

/// A store holding one agent (with `webhook_url`) and one ongoing call; returns its id.
async fn store_with_call(webhook_url: Option<&str>) -> (Store, String) {
    let store = Store::connect("sqlite::memory:").await.unwrap();
    let agent = Agent {
        agent_id: "agent_hook".to_owned(),
        agent_name: None,
        version: 0,
        response_engine: ResponseEngine {
            kind: "audio-websocket".to_owned(),
            url: "ws://127.0.0.1:9/ws".to_owned(),
            audio_encoding: AudioEncoding::Mulaw8000,
            headers: BTreeMap::new(),
        },
        webhook_url: webhook_url.map(str::to_owned),
        max_call_duration_ms: 3_600_000,
        end_call_after_silence_ms: 600_000,
        ring_duration_ms: 30_000,
        forward_early_media: false,
        last_modification_timestamp: 1,
    };
    store.create_agent(&agent).await.unwrap();
    // The fields an ongoing call has; every other one is absent (None).
    let call: Call = serde_json::from_value(serde_json::json!({
        "call_id": crate::store::new_id("call_"),
        "call_type": "phone_call",
        "agent_id": agent.agent_id,
        "agent_version": 0,
        "call_status": "ongoing",
        "direction": "inbound",
        "from_number": "+15550001111",
        "start_timestamp": 1_000,
        "created_timestamp": 1_000,
    }))
    .unwrap();
    store.insert_call(&call).await.unwrap();
    (store, call.call_id)
}

/// Runs `f` on a current-thread runtime under a local recorder; returns `f`'s result
/// and the Prometheus text.
fn with_metrics<T>(f: impl std::future::Future<Output = T>) -> (T, String) {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let out = metrics::with_local_recorder(&recorder, || rt.block_on(f));
    (out, handle.render())
}

async fn wait_for(seen: &Arc<Mutex<Vec<Seen>>>, n: usize) -> Vec<Seen> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = seen.lock().unwrap().clone();
        if got.len() >= n || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[test]
fn failed_tries_are_retried_then_delivered_signed() {
    let (seen, text) = with_metrics(async {
        let (url, seen) = hook(vec![500, 500, 200], Duration::ZERO).await;
        let (store, call_id) = store_with_call(Some(&url)).await;
        let events = CallEvents::build(store, &settings(3, 10), Duration::from_millis(20));
        events.call_started(&call_id);
        assert!(events.drain(Duration::from_secs(10)).await);
        let seen = wait_for(&seen, 3).await;
        (seen, call_id)
    });
    let (seen, call_id) = seen;
    assert_eq!(seen.len(), 3, "{seen:?}");
    for s in &seen {
        assert!(
            s.headers.starts_with("POST /hook HTTP/1.1"),
            "{}",
            s.headers
        );
        assert_eq!(s.json()["event"], "call_started");
        assert_eq!(s.json()["call"]["call_id"], call_id.as_str());
        assert_eq!(s.json()["call"]["call_status"], "ongoing");
        let sig = s.header("x-retell-signature").expect("signed");
        let stamp: u64 = sig
            .strip_prefix("v=")
            .and_then(|r| r.split(',').next())
            .and_then(|v| v.parse().ok())
            .unwrap();
        assert!(stamp.abs_diff(unix_ms()) < 60_000, "{sig}");
        assert_eq!(sig, crate::webhook::signature(KEY, &s.body, stamp));
    }
    // The waits between tries grow.
    let first_gap = seen[1].arrived - seen[0].answered;
    let second_gap = seen[2].arrived - seen[1].answered;
    assert!(first_gap >= Duration::from_millis(20), "{first_gap:?}");
    assert!(second_gap >= Duration::from_millis(40), "{second_gap:?}");
    let line = |outcome: &str, n: u32| {
        format!("dialtone_webhook_events_total{{event=\"call_started\",outcome=\"{outcome}\"}} {n}")
    };
    assert!(text.contains(&line("retried", 2)), "{text}");
    assert!(text.contains(&line("delivered", 1)), "{text}");
    assert!(!text.contains("outcome=\"failed\""), "{text}");
}

#[test]
fn an_unreachable_webhook_is_given_up_after_max_attempts() {
    let (pending, text) = with_metrics(async {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}/");
        let (store, call_id) = store_with_call(Some(&url)).await;
        let events = CallEvents::build(store, &settings(2, 10), Duration::from_millis(5));
        events.call_ended(&call_id);
        assert!(events.drain(Duration::from_secs(10)).await);
        events.pending()
    });
    assert_eq!(pending, 0);
    let prefix = "dialtone_webhook_events_total{event=\"call_ended\",outcome=";
    assert!(text.contains(&format!("{prefix}\"retried\"}} 1")), "{text}");
    assert!(text.contains(&format!("{prefix}\"failed\"}} 1")), "{text}");
}

#[test]
fn a_full_queue_drops_and_counts() {
    let (pending, text) = with_metrics(async {
        // The server holds its answer, so the first event keeps the only slot.
        let (url, _seen) = hook(vec![200], Duration::from_secs(2)).await;
        let (store, call_id) = store_with_call(Some(&url)).await;
        let events = CallEvents::build(store, &settings(1, 1), Duration::from_millis(5));
        events.call_started(&call_id);
        events.call_ended(&call_id);
        events.call_ended(&call_id);
        let pending = events.pending();
        assert!(events.drain(Duration::from_secs(10)).await);
        pending
    });
    assert_eq!(pending, 1);
    assert!(
        text.contains("dialtone_webhook_events_total{event=\"call_ended\",outcome=\"dropped\"} 2"),
        "{text}"
    );
    assert!(
        text.contains(
            "dialtone_webhook_events_total{event=\"call_started\",outcome=\"delivered\"} 1"
        ),
        "{text}"
    );
}

#[tokio::test]
async fn call_ended_waits_for_call_started() {
    // call_started's answer takes 300 ms; call_ended, enqueued at once, must not arrive
    // before it.
    let (url, seen) = hook(vec![200], Duration::from_millis(300)).await;
    let (store, call_id) = store_with_call(Some(&url)).await;
    let events = CallEvents::build(store, &settings(1, 10), Duration::from_millis(5));
    events.call_started(&call_id);
    events.call_ended(&call_id);
    assert!(events.drain(Duration::from_secs(10)).await);
    let seen = wait_for(&seen, 2).await;
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0].json()["event"], "call_started");
    assert_eq!(seen[1].json()["event"], "call_ended");
    assert!(seen[1].arrived >= seen[0].answered, "{seen:?}");
    assert!(lock(&events.inner.as_ref().unwrap().started).is_empty());
}

#[tokio::test]
async fn agents_without_webhook_url_get_nothing() {
    let (store, call_id) = store_with_call(None).await;
    let events = CallEvents::build(store, &settings(3, 10), Duration::from_millis(5));
    events.call_started(&call_id);
    events.call_ended(&call_id);
    events.call_ended("call_unknown");
    assert!(events.drain(Duration::from_secs(5)).await);
    assert!(lock(&events.inner.as_ref().unwrap().started).is_empty());
    let disabled = CallEvents::disabled();
    disabled.call_ended(&call_id);
    assert_eq!(disabled.pending(), 0);
}
