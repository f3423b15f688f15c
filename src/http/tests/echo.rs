//! The built-in echo agent (`/agents/echo`), reached through the real router on a socket by
//! the agent bridge, as a call would reach it.

use std::collections::BTreeMap;

use bytes::Bytes;
use tokio::sync::watch;

use crate::agent::bridge::{connect, AgentConfig, StartInfo};
use crate::agent::echo::ECHO_DELAY;
use crate::agent::{FromAgent, ToAgent};
use crate::http::AppState;
use crate::model::AudioEncoding;
use std::time::{Duration, Instant};

/// The real HTTP router (no API keys at all: the echo route needs none) on a socket.
async fn serve() -> (String, watch::Sender<bool>) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .build_recorder()
        .handle();
    let services = crate::http::tests::services().await;
    let state = AppState::new(&[], handle, stop_rx.clone(), services);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/agents/echo", listener.local_addr().unwrap());
    tokio::spawn(crate::http::serve(listener, state, stop_rx));
    (url, stop_tx)
}

#[tokio::test]
async fn echoes_audio_byte_for_byte_with_marks() {
    let (url, _stop) = serve().await;
    let cfg = AgentConfig {
        url,
        headers: BTreeMap::new(),
        encoding: AudioEncoding::Mulaw8000,
        connect_timeout: Duration::from_secs(5),
    };
    let start = StartInfo {
        call_id: "call_echo".into(),
        ..StartInfo::default()
    };
    let mut link = connect(&cfg, start).await.unwrap();

    // 1.2 s of μ-law, every frame different, offered faster than real time.
    let frames: Vec<Vec<u8>> = (0..60u32)
        .map(|i| (0..160u32).map(|j| ((i * 7 + j) % 251) as u8).collect())
        .collect();
    let began = Instant::now();
    for frame in &frames {
        assert!(link.offer(ToAgent::Media(Bytes::from(frame.clone()))));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }

    let sent: Vec<u8> = frames.concat();
    let mut echoed = Vec::new();
    let mut marks = Vec::new();
    let mut first_echo_after = None;
    while echoed.len() < sent.len() {
        let event = tokio::time::timeout(Duration::from_secs(5), link.from_agent.recv())
            .await
            .expect("echo in time")
            .expect("bridge alive");
        match event {
            FromAgent::Media(audio) => {
                first_echo_after.get_or_insert(began.elapsed());
                echoed.extend_from_slice(&audio);
            }
            FromAgent::Mark(name) => marks.push((name, echoed.len())),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(echoed, sent, "audio comes back unchanged and in order");
    let delay = first_echo_after.unwrap();
    assert!(delay >= ECHO_DELAY - Duration::from_millis(20), "{delay:?}");
    // One second of μ-law is 8000 bytes: the mark follows exactly that much audio.
    assert_eq!(marks, vec![("echo-1".to_owned(), 8000)]);

    // Stop: the echo agent closes normally, and the bridge reports nothing more.
    assert!(link.offer(ToAgent::Stop));
    let rest = tokio::time::timeout(Duration::from_millis(500), link.from_agent.recv()).await;
    assert!(
        matches!(rest, Err(_) | Ok(None)),
        "nothing after stop: {rest:?}"
    );
}
