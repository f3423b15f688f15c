//! The bridge against real sockets on 127.0.0.1: a small tokio-tungstenite server plays
//! the agent and checks every message on the wire.

// The handshake callback signature is tokio-tungstenite's, large error and all.
#![allow(clippy::result_large_err)]

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::server::{
    ErrorResponse, Request as HsRequest, Response as HsResponse,
};
use tokio_tungstenite::tungstenite::http::{HeaderMap, StatusCode};

use super::*;

type ServerWs<S = TcpStream> = WebSocketStream<S>;

const SECRET: &str = "Bearer sekrit-123";
const ACCOUNT: &str = "AC0123456789abcdef0123456789abcdef";

fn config(url: &str, encoding: AudioEncoding) -> AgentConfig {
    AgentConfig {
        url: url.to_owned(),
        headers: BTreeMap::from([
            ("Authorization".to_owned(), SECRET.to_owned()),
            ("X-Tenant".to_owned(), "acme".to_owned()),
        ]),
        encoding,
        connect_timeout: Duration::from_secs(5),
    }
}

fn start_info() -> StartInfo {
    StartInfo {
        call_id: "call_abc".to_owned(),
        stream_sid: String::new(),
        account_sid: ACCOUNT.to_owned(),
        custom_parameters: BTreeMap::from([
            ("call_id".to_owned(), "call_abc".to_owned()),
            ("from_number".to_owned(), "+14155550100".to_owned()),
            ("metadata".to_owned(), r#"{"a":1}"#.to_owned()),
        ]),
    }
}

async fn listen() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/agent?token=t", listener.local_addr().unwrap());
    (listener, url)
}

/// Accepts one websocket, returning it with the upgrade request's headers.
async fn accept(listener: &TcpListener) -> (ServerWs, HeaderMap) {
    let (tcp, _) = listener.accept().await.unwrap();
    let seen = Arc::new(Mutex::new(HeaderMap::new()));
    let seen2 = seen.clone();
    let ws = tokio_tungstenite::accept_hdr_async(
        tcp,
        move |req: &HsRequest, resp: HsResponse| -> Result<HsResponse, ErrorResponse> {
            *seen2.lock().unwrap() = req.headers().clone();
            Ok(resp)
        },
    )
    .await
    .unwrap();
    let headers = seen.lock().unwrap().clone();
    (ws, headers)
}

/// The next text frame as JSON (pings and pongs skipped); panics on anything else.
async fn recv_json<S>(ws: &mut ServerWs<S>) -> Value
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a message in time")
            .expect("socket open")
            .expect("no error");
        match msg {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// Expects a close frame with `code`, then the end of the stream; then drops the TCP
/// connection, as a server does once the close handshake is over.
async fn expect_close<S>(mut ws: ServerWs<S>, code: CloseCode)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("close in time");
    match msg {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, code),
        other => panic!("expected close {code:?}, got {other:?}"),
    }
    // Our close reply is flushed; the bridge then ends the connection.
    let rest = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("end in time");
    assert!(
        matches!(
            rest,
            None | Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed))
        ),
        "{rest:?}"
    );
}

fn is_stream_sid(s: &str) -> bool {
    s.len() == 34
        && s.starts_with("MZ")
        && s[2..]
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
}

/// Reads `connected` and `start`, checks their shapes, returns the stream sid.
async fn greeting<S>(ws: &mut ServerWs<S>, encoding: AudioEncoding) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    assert_eq!(
        recv_json(ws).await,
        json!({"event":"connected","protocol":"Call","version":"1.0.0"})
    );
    let start = recv_json(ws).await;
    let sid = start["streamSid"].as_str().unwrap().to_owned();
    assert!(is_stream_sid(&sid), "{sid}");
    let (name, rate) = match encoding {
        AudioEncoding::Mulaw8000 => ("audio/x-mulaw", 8000),
        AudioEncoding::Pcm16000 => ("audio/x-l16", 16000),
        AudioEncoding::Pcm24000 => ("audio/x-l16", 24000),
    };
    assert_eq!(
        start,
        json!({"event":"start","sequenceNumber":"1","streamSid":sid,"start":{
            "accountSid":ACCOUNT,"streamSid":sid,"callSid":"call_abc","tracks":["inbound"],
            "customParameters":{"call_id":"call_abc","from_number":"+14155550100","metadata":"{\"a\":1}"},
            "mediaFormat":{"encoding":name,"sampleRate":rate,"channels":1}}})
    );
    sid
}

/// Connects the bridge to a fresh test server and completes the greeting.
async fn session(encoding: AudioEncoding) -> (AgentLink, ServerWs, String) {
    let (listener, url) = listen().await;
    let cfg = config(&url, encoding);
    let (link, (mut ws, headers)) = tokio::join!(connect(&cfg, start_info()), accept(&listener));
    let link = link.unwrap();
    assert_eq!(headers["authorization"], SECRET);
    assert_eq!(headers["x-tenant"], "acme");
    let sid = greeting(&mut ws, encoding).await;
    (link, ws, sid)
}

async fn next_event(link: &mut AgentLink) -> Option<FromAgent> {
    next_from(&mut link.from_agent).await
}

async fn next_from(from_agent: &mut mpsc::Receiver<FromAgent>) -> Option<FromAgent> {
    tokio::time::timeout(Duration::from_secs(5), from_agent.recv())
        .await
        .expect("an event in time")
}

async fn send_text(ws: &mut ServerWs, text: impl Into<String>) {
    ws.send(Message::text(text.into())).await.unwrap();
}

#[tokio::test]
async fn full_session_both_ways() {
    let (mut link, mut ws, sid) = session(AudioEncoding::Mulaw8000).await;

    // Caller → agent.
    for i in 0..3u8 {
        assert!(link.offer(ToAgent::Media(Bytes::from(vec![i; 160]))));
    }
    assert!(link.offer(ToAgent::Dtmf('5')));
    assert!(link.offer(ToAgent::MarkPlayed("greeting-done".into())));
    for i in 0..3u64 {
        let m = recv_json(&mut ws).await;
        let payload = BASE64.encode(vec![i as u8; 160]);
        assert_eq!(
            m,
            json!({"event":"media","sequenceNumber":(i + 2).to_string(),"streamSid":sid,
                   "media":{"track":"inbound","chunk":(i + 1).to_string(),
                            "timestamp":(20 * i).to_string(),"payload":payload}})
        );
    }
    assert_eq!(
        recv_json(&mut ws).await,
        json!({"event":"dtmf","sequenceNumber":"5","streamSid":sid,
               "dtmf":{"track":"inbound_track","digit":"5"}})
    );
    assert_eq!(
        recv_json(&mut ws).await,
        json!({"event":"mark","sequenceNumber":"6","streamSid":sid,
               "mark":{"name":"greeting-done"}})
    );

    // Agent → caller, with noise the bridge must skip.
    let sid_json = json!(sid);
    send_text(&mut ws, json!({"event":"media","streamSid":sid_json,"media":{"payload":BASE64.encode([1u8, 2, 3])}}).to_string()).await;
    send_text(
        &mut ws,
        json!({"event":"mark","streamSid":sid_json,"mark":{"name":"m1"}}).to_string(),
    )
    .await;
    send_text(
        &mut ws,
        json!({"event":"clear","streamSid":sid_json}).to_string(),
    )
    .await;
    send_text(&mut ws, r#"{"event":"send_dtmf","dtmf":{"digits":"12#"}}"#).await;
    send_text(&mut ws, r#"{"event":"send_dtmf","dtmf":{"digits":"xyz"}}"#).await;
    send_text(
        &mut ws,
        r#"{"event":"transfer","transfer":{"to":"+14155550123"}}"#,
    )
    .await;
    send_text(&mut ws, r#"{"event":"some_future_event","x":{"y":1}}"#).await;
    send_text(&mut ws, "this is not json").await;
    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    send_text(&mut ws, r#"{"event":"hangup"}"#).await;
    send_text(&mut ws, r#"{"event":"mark","mark":{"name":"after"}}"#).await;

    assert_eq!(
        next_event(&mut link).await,
        Some(FromAgent::Media(vec![1, 2, 3]))
    );
    assert_eq!(
        next_event(&mut link).await,
        Some(FromAgent::Mark("m1".into()))
    );
    assert_eq!(next_event(&mut link).await, Some(FromAgent::Clear));
    assert_eq!(
        next_event(&mut link).await,
        Some(FromAgent::SendDtmf("12#".into()))
    );
    assert_eq!(next_event(&mut link).await, Some(FromAgent::Hangup));
    assert_eq!(
        next_event(&mut link).await,
        Some(FromAgent::Mark("after".into()))
    );

    // The caller's side ends the call: stop, then close 1000.
    assert!(link.offer(ToAgent::Stop));
    assert_eq!(
        recv_json(&mut ws).await,
        json!({"event":"stop","sequenceNumber":"7","streamSid":sid,
               "stop":{"accountSid":ACCOUNT,"callSid":"call_abc"}})
    );
    expect_close(ws, CloseCode::Normal).await;
    // Nothing more from the agent, and late offers are harmless.
    assert!(link.offer(ToAgent::Media(Bytes::from_static(&[0; 160]))));
    assert_eq!(next_event(&mut link).await, None);
}

#[tokio::test]
async fn start_announces_each_encoding_and_timestamps_follow_audio() {
    for encoding in [AudioEncoding::Pcm16000, AudioEncoding::Pcm24000] {
        let (link, mut ws, _sid) = session(encoding).await;
        let frame = encoding.bytes_per_20ms();
        for _ in 0..3 {
            assert!(link.offer(ToAgent::Media(Bytes::from(vec![7u8; frame]))));
        }
        for i in 0..3u64 {
            let m = recv_json(&mut ws).await;
            assert_eq!(m["media"]["chunk"], json!((i + 1).to_string()));
            assert_eq!(m["media"]["timestamp"], json!((20 * i).to_string()));
        }
        drop(link);
        // The media task went away without Stop: stop and a normal close all the same.
        assert_eq!(recv_json(&mut ws).await["event"], "stop");
        expect_close(ws, CloseCode::Normal).await;
    }
}

#[tokio::test]
async fn close_codes_map_to_reasons() {
    let cases = [
        (Some(CloseCode::Normal), FromAgent::Hangup),
        (None, FromAgent::Hangup),
        (
            Some(CloseCode::Away),
            FromAgent::Failed(DisconnectionReason::ErrorLlmWebsocketRuntime),
        ),
        (
            Some(CloseCode::Error),
            FromAgent::Failed(DisconnectionReason::ErrorLlmWebsocketRuntime),
        ),
    ];
    for (code, want) in cases {
        let (mut link, mut ws, _) = session(AudioEncoding::Mulaw8000).await;
        let frame = code.map(|code| CloseFrame {
            code,
            reason: "bye".into(),
        });
        ws.close(frame).await.unwrap();
        assert_eq!(next_event(&mut link).await, Some(want), "close {code:?}");
        // The server's close was answered.
        let end = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap();
        assert!(!matches!(end, Some(Ok(Message::Text(_)))), "{end:?}");
        drop(ws);
        // The bridge keeps swallowing the media task's messages until it lets go.
        for _ in 0..(TO_AGENT_CAPACITY * 2) {
            assert!(link.offer(ToAgent::Media(Bytes::from_static(&[0; 160]))));
            tokio::task::yield_now().await;
        }
        assert!(link.offer(ToAgent::Stop));
        let AgentLink {
            to_agent,
            mut from_agent,
        } = link;
        drop(to_agent);
        assert_eq!(next_from(&mut from_agent).await, None);
    }
}

#[tokio::test]
async fn hangup_event_then_close_ends_the_call_once() {
    let (mut link, mut ws, _) = session(AudioEncoding::Mulaw8000).await;
    send_text(&mut ws, r#"{"event":"hangup"}"#).await;
    ws.close(None).await.unwrap();
    assert_eq!(next_event(&mut link).await, Some(FromAgent::Hangup));
    drop(ws);
    let AgentLink {
        to_agent,
        mut from_agent,
    } = link;
    drop(to_agent);
    assert_eq!(next_from(&mut from_agent).await, None);
}

#[tokio::test]
async fn dropped_connection_is_lost_connection() {
    let (mut link, ws, _) = session(AudioEncoding::Mulaw8000).await;
    drop(ws); // TCP FIN with no close frame.
    assert_eq!(
        next_event(&mut link).await,
        Some(FromAgent::Failed(
            DisconnectionReason::ErrorLlmWebsocketLostConnection
        ))
    );
    assert!(link.offer(ToAgent::Media(Bytes::from_static(&[0; 160]))));
    assert!(link.offer(ToAgent::Stop));
}

#[tokio::test]
async fn ten_corrupt_frames_in_a_row_fail_the_call() {
    let (mut link, mut ws, _) = session(AudioEncoding::Mulaw8000).await;
    for i in 0..CORRUPT_RUN_LIMIT {
        if i % 2 == 0 {
            send_text(&mut ws, format!("garbage {i}")).await;
        } else {
            send_text(&mut ws, r#"{"event":"media","media":{"payload":"%%%"}}"#).await;
        }
    }
    assert_eq!(
        next_event(&mut link).await,
        Some(FromAgent::Failed(
            DisconnectionReason::ErrorLlmWebsocketCorruptPayload
        ))
    );
    // The agent is told: stop, then close 1007 (invalid payload data).
    assert_eq!(recv_json(&mut ws).await["event"], "stop");
    expect_close(ws, CloseCode::Invalid).await;
}

#[tokio::test]
async fn nine_corrupt_frames_then_a_good_one_do_not() {
    let (mut link, mut ws, _) = session(AudioEncoding::Mulaw8000).await;
    for round in 0..3 {
        for _ in 0..(CORRUPT_RUN_LIMIT - 1) {
            send_text(&mut ws, "{not json").await;
        }
        send_text(
            &mut ws,
            format!(r#"{{"event":"mark","mark":{{"name":"r{round}"}}}}"#),
        )
        .await;
    }
    for round in 0..3 {
        assert_eq!(
            next_event(&mut link).await,
            Some(FromAgent::Mark(format!("r{round}")))
        );
    }
    ws.close(None).await.unwrap();
    assert_eq!(next_event(&mut link).await, Some(FromAgent::Hangup));
}

#[tokio::test]
async fn nobody_listening_is_an_open_error() {
    let (listener, url) = listen().await;
    drop(listener);
    let err = connect(&config(&url, AudioEncoding::Mulaw8000), start_info())
        .await
        .err()
        .expect("refused");
    assert!(matches!(err, OpenError::Connect(_)), "{err:?}");
    assert_eq!(err.reason(), DisconnectionReason::ErrorLlmWebsocketOpen);
}

#[tokio::test]
async fn refused_upgrade_is_an_open_error() {
    let (listener, url) = listen().await;
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let refuse = |_: &HsRequest, _: HsResponse| -> Result<HsResponse, ErrorResponse> {
            let mut resp = ErrorResponse::new(Some("no".to_owned()));
            *resp.status_mut() = StatusCode::FORBIDDEN;
            Err(resp)
        };
        let _ = tokio_tungstenite::accept_hdr_async(tcp, refuse).await;
    });
    let err = connect(&config(&url, AudioEncoding::Mulaw8000), start_info())
        .await
        .err()
        .expect("refused");
    assert!(matches!(err, OpenError::Refused(403)), "{err:?}");
    server.await.unwrap();
}

#[tokio::test]
async fn silent_server_times_out() {
    // The kernel completes the TCP handshake from the backlog; nobody ever answers.
    let (listener, url) = listen().await;
    let mut cfg = config(&url, AudioEncoding::Mulaw8000);
    cfg.connect_timeout = Duration::from_millis(300);
    let began = Instant::now();
    let err = connect(&cfg, start_info()).await.err().expect("timeout");
    let took = began.elapsed();
    assert!(matches!(err, OpenError::Timeout(_)), "{err:?}");
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(2),
        "{took:?}"
    );
    drop(listener);
}

#[tokio::test]
async fn bad_urls_and_headers_are_open_errors() {
    let mut cfg = config("http://127.0.0.1:1/", AudioEncoding::Mulaw8000);
    let err = connect(&cfg, start_info()).await.err().expect("bad scheme");
    assert!(matches!(err, OpenError::InvalidUrl(_)), "{err:?}");
    cfg.url = "ws://127.0.0.1:1/".into();
    cfg.headers.insert("X-Bad".into(), "line\r\nbreak".into());
    let err = connect(&cfg, start_info()).await.err().expect("bad header");
    assert!(
        matches!(&err, OpenError::InvalidHeader(name) if name == "X-Bad"),
        "{err:?}"
    );
    assert!(
        !err.to_string().contains("line"),
        "header values are never shown"
    );
}

#[test]
fn debug_and_logs_hide_secrets() {
    let cfg = config(
        "wss://user:pw@agent.example.com:8443/ws?token=abc",
        AudioEncoding::Mulaw8000,
    );
    let shown = format!("{cfg:?}");
    assert!(!shown.contains("sekrit"), "{shown}");
    assert!(!shown.contains("token=abc"), "{shown}");
    assert!(!shown.contains("pw"), "{shown}");
    assert!(shown.contains("wss://agent.example.com:8443/ws"), "{shown}");
}

/// A TLS websocket server with a certificate for 127.0.0.1 from a throwaway CA-less
/// self-signed key; returns its URL and the certificate to trust.
async fn tls_server() -> (
    TcpListener,
    tokio_rustls::TlsAcceptor,
    String,
    rustls_pki_types::CertificateDer<'static>,
) {
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let der = cert.cert.der().clone();
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(rustls_pki_types::PrivatePkcs8KeyDer::from(
        cert.key_pair.serialize_der(),
    ));
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![der.clone()], key)
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("wss://{}/agent", listener.local_addr().unwrap());
    (
        listener,
        tokio_rustls::TlsAcceptor::from(Arc::new(server)),
        url,
        der,
    )
}

#[tokio::test]
async fn wss_verifies_certificates() {
    // Untrusted certificate: refused with the default (webpki) roots.
    let (listener, acceptor, url, der) = tls_server().await;
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        assert!(
            acceptor.accept(tcp).await.is_err(),
            "client must reject the cert"
        );
        (listener, acceptor)
    });
    let cfg = config(&url, AudioEncoding::Mulaw8000);
    let err = connect(&cfg, start_info()).await.err().expect("untrusted");
    assert!(
        matches!(err, OpenError::Tls(_) | OpenError::Connect(_)),
        "{err:?}"
    );
    let (listener, acceptor) = server.await.unwrap();

    // The same server, trusted: a full greeting over TLS.
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let tls = acceptor.accept(tcp).await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(tls).await.unwrap();
        greeting(&mut ws, AudioEncoding::Mulaw8000).await;
        assert_eq!(recv_json(&mut ws).await["event"], "stop");
        expect_close(ws, CloseCode::Normal).await;
    });
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der).unwrap();
    let link = connect_with_tls(&cfg, start_info(), tls_with_roots(roots).unwrap())
        .await
        .unwrap();
    assert!(link.offer(ToAgent::Stop));
    server.await.unwrap();
}

#[tokio::test]
async fn a_slow_agent_loses_audio_not_control() {
    // The server accepts and greets, then reads nothing: the socket's buffers fill and
    // the bridge blocks on its write; the media task must not.
    let (link, ws, _) = session(AudioEncoding::Pcm24000).await;
    let frame = Bytes::from(vec![0u8; 960]);
    let began = Instant::now();
    let mut dropped = 0;
    for _ in 0..5000 {
        if !link.offer(ToAgent::Media(frame.clone())) {
            dropped += 1;
        }
    }
    assert!(
        began.elapsed() < Duration::from_secs(1),
        "offer never waits"
    );
    assert!(dropped > 0, "a stuck agent must lose audio");
    // The reserve still takes control messages.
    assert!(link.offer(ToAgent::Dtmf('1')));
    assert!(link.offer(ToAgent::Stop));
    drop(ws);
}
