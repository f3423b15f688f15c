//! Checks the end-to-end harness itself, without dialtone: the committed pcaps parse back
//! and decode (with the crate's codecs) to the tone they should carry, the detector
//! rejects what is not the tone, and each SIPp UAC scenario completes a call against a
//! SIPp UAS that echoes RTP (`-rtp_echo`), with the tone found in the captured echo. When
//! a `call_*` test fails, this one tells whether the harness or the server is at fault.

mod harness;

use std::time::Duration;

use dialtone::media::codec::Codec;
use harness::agent::{Mode, TestAgent};
use harness::audio::{
    decode_rtp, find_tone, sine, tone_fraction, write_tone_wav, HIGH_TONE_HZ, TONE_HZ,
};
use harness::baresip::Baresip;
use harness::capture::Capture;
use harness::pcap::{read_udp, rtp_only, split_rtp, telephone_event, Rtp};
use harness::ports::free_port_block;
use harness::sip::sdp_audio_payload_types;
use harness::sipp::{RunningSipp, Sipp};
use harness::tests_path;
use harness::uac::Uac;
use serde_json::json;

fn pcap_rtp(name: &str) -> (Vec<f64>, Vec<Rtp>) {
    let path = tests_path("e2e/pcap").join(name);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let udp = read_udp(&bytes).unwrap();
    let times = udp.iter().map(|p| p.time).collect();
    let rtp = udp
        .iter()
        .map(|p| Rtp::parse(&p.payload).expect("every packet is RTP"))
        .collect();
    (times, rtp)
}

#[test]
fn goertzel_finds_the_tone_and_only_the_tone() {
    let sine = |hz: f64| sine(8000, hz, 160);
    assert!(tone_fraction(&sine(1000.0), 8000, 1000.0) > 0.99);
    assert!(tone_fraction(&sine(1000.0), 8000, 1500.0) < 0.01);
    assert!(tone_fraction(&sine(700.0), 8000, 1000.0) < 0.05);
    assert_eq!(tone_fraction(&[0; 160], 8000, 1000.0), 0.0);
}

#[test]
fn pcaps_parse_back_and_carry_the_tone() {
    for (name, kind) in [
        ("pcmu.pcap", Codec::Pcmu),
        ("pcma.pcap", Codec::Pcma),
        ("g722.pcap", Codec::G722),
    ] {
        let (times, rtp) = pcap_rtp(name);
        assert_eq!(rtp.len(), 250, "{name}: 5 s of 20 ms packets");
        assert!(rtp[0].marker, "{name}: marker on the first packet");
        for (i, w) in rtp.windows(2).enumerate() {
            assert_eq!(w[1].pt, kind.payload_type(), "{name}");
            assert_eq!(w[1].seq, w[0].seq.wrapping_add(1), "{name}: seq");
            assert_eq!(
                w[1].timestamp,
                w[0].timestamp.wrapping_add(160),
                "{name}: ts"
            );
            assert_eq!(w[1].ssrc, w[0].ssrc, "{name}: ssrc");
            assert_eq!(w[1].payload.len(), 160, "{name}: 20 ms payload");
            let dt = times[i + 1] - times[i];
            assert!((dt - 0.020).abs() < 1e-6, "{name}: 20 ms pacing, got {dt}");
        }
        let pcm = decode_rtp(kind, &rtp);
        let rate = kind.sample_rate();
        assert_eq!(pcm.len(), 250 * kind.pcm_samples(20), "{name}");
        let tone = find_tone(&pcm, rate, TONE_HZ, 0.5, 300.0);
        // The G.722 decoder needs a few frames to adapt.
        assert!(
            tone.tone_frames >= 245,
            "{name}: 1 kHz in every frame: {tone:?}"
        );
        let wrong = find_tone(&pcm, rate, 700.0, 0.05, 300.0);
        assert_eq!(
            wrong.tone_frames, 0,
            "{name}: the detector must reject 700 Hz: {wrong:?}"
        );
        let high = find_tone(&pcm, rate, HIGH_TONE_HZ, 0.03, 300.0);
        if kind == Codec::G722 {
            assert!(high.tone_frames >= 245, "{name}: 5 kHz present: {high:?}");
        } else {
            assert_eq!(
                high.tone_frames, 0,
                "{name}: nothing at 5 kHz in narrowband"
            );
        }
    }
}

/// A SIPp UAS answering one call with payload type `pt` and echoing RTP.
fn start_echo_uas(pt: u8) -> RunningSipp {
    Sipp::uas("e2e/sipp/uas_echo.xml")
        .args(&["-rtp_echo", "-key", "pt", &pt.to_string()])
        .timeout(Duration::from_secs(40))
        .start()
}

/// The SIPp UAS ended after its one call, which succeeded.
fn assert_uas_succeeded(uas: RunningSipp) {
    let run = uas.wait();
    assert!(
        run.ok(),
        "the SIPp UAS saw a failed call: {}",
        run.describe()
    );
}

/// SIPp UAC scenario against a SIPp UAS echoing RTP: the call completes and the tone
/// comes back in the capture.
async fn scenario_against_echo_uas(scenario: &str, pt: u8, kind: Codec) {
    let dir = tempfile::tempdir().unwrap();
    let uas = start_echo_uas(pt);

    let media_port = free_port_block(4);
    let capture = Capture::udp(dir.path(), (media_port, media_port)).await;
    let run = Sipp::uac(scenario, ([127, 0, 0, 1], uas.sip_port).into())
        .service("selftest")
        .media_port(media_port)
        .run();
    let packets = capture.stop().await;
    assert!(run.ok(), "{scenario}:\n{}", run.describe());
    assert_uas_succeeded(uas);
    assert_eq!(
        run.received_status_codes(),
        vec![180, 200, 200],
        "{}",
        run.describe()
    );

    let (sent, back) = split_rtp(&packets, (media_port, media_port));
    assert!(
        sent.len() >= 245,
        "{scenario}: SIPp played {} packets",
        sent.len()
    );
    let back = rtp_only(back);
    assert!(
        back.len() >= 245,
        "{scenario}: echo returned {} packets",
        back.len()
    );
    let pcm = decode_rtp(kind, &back);
    let tone = find_tone(&pcm, kind.sample_rate(), TONE_HZ, 0.5, 300.0);
    assert!(tone.tone_seconds() >= 4.5, "{scenario}: {tone:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pcmu_scenario_runs_against_an_echoing_sipp() {
    scenario_against_echo_uas("e2e/sipp/uac_pcap_pcmu.xml", 0, Codec::Pcmu).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pcma_scenario_runs_against_an_echoing_sipp() {
    scenario_against_echo_uas("e2e/sipp/uac_pcap_pcma.xml", 8, Codec::Pcma).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g722_scenario_runs_against_an_echoing_sipp() {
    scenario_against_echo_uas("e2e/sipp/uac_pcap_g722.xml", 9, Codec::G722).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preference_scenario_runs_against_an_echoing_sipp() {
    scenario_against_echo_uas("e2e/sipp/uac_pcap_prefer_pcma.xml", 8, Codec::Pcma).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_uac_completes_a_call_against_sipp() {
    let uas = start_echo_uas(0);
    let mut uac = Uac::new(([127, 0, 0, 1], uas.sip_port).into(), "selftest");
    let offer = uac.sdp(&[0, 8, 101], "sendrecv");
    let outcome = uac.invite(Some(&offer), Duration::from_secs(10));
    assert_eq!(outcome.provisional, vec![180]);
    assert_eq!(outcome.final_status(), Some(200));
    let ok = outcome.final_response.unwrap();
    assert_eq!(sdp_audio_payload_types(&ok.body), vec![0, 101]);
    uac.ack(1, None);
    uac.send_rtp(ok.sdp_media_addr().unwrap(), 0, 10);
    assert_eq!(uac.bye(), Some(200));
    assert_uas_succeeded(uas);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baresip_dials_g722_and_sends_rfc4733_digits() {
    let dir = tempfile::tempdir().unwrap();
    let uas = start_echo_uas(9);
    let wav = dir.path().join("tone.wav");
    write_tone_wav(&wav, 16_000, 10);
    let mut ua = Baresip::start(&dir.path().join("baresip"), &["g722"], &wav).await;
    let capture = Capture::udp(dir.path(), ua.rtp_ports).await;
    ua.dial(&format!("sip:selftest@127.0.0.1:{}", uas.sip_port))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for d in ["1", "2", "#"] {
        assert_eq!(ua.command("sndcode", d).await["ok"], true);
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    ua.hang_up().await;
    let packets = capture.stop().await;
    let sent = rtp_only(split_rtp(&packets, ua.rtp_ports).0);
    assert!(
        sent.iter().filter(|r| r.pt == 9).count() > 50,
        "G.722 audio sent"
    );
    // One event per press: count the distinct (event, RTP timestamp) pairs.
    let mut presses: Vec<(u8, u32)> = sent
        .iter()
        .filter(|r| r.pt == 101)
        .filter_map(|r| telephone_event(&r.payload).map(|e| (e.0, r.timestamp)))
        .collect();
    presses.dedup();
    let digits: Vec<u8> = presses.iter().map(|p| p.0).collect();
    assert_eq!(digits, vec![1, 2, 11], "RFC 4733 events for 1, 2, #");
    assert_uas_succeeded(uas);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_agent_records_and_echoes_and_refuses() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::Message;

    let agent = TestAgent::start(Mode::Echo).await;
    let tcp = tokio::net::TcpStream::connect(agent.addr).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(agent.url(), tcp)
        .await
        .unwrap();
    let msgs = [
        json!({"event":"connected","protocol":"Call","version":"1.0.0"}),
        json!({"event":"start","sequenceNumber":"1","streamSid":"MZ1","start":{"streamSid":"MZ1","callSid":"c1"}}),
        json!({"event":"media","sequenceNumber":"2","streamSid":"MZ1","media":{"track":"inbound","chunk":"1","timestamp":"0","payload":"AAEC"}}),
        json!({"event":"dtmf","sequenceNumber":"3","streamSid":"MZ1","dtmf":{"track":"inbound_track","digit":"7"}}),
        json!({"event":"stop","sequenceNumber":"4","streamSid":"MZ1"}),
    ];
    for m in &msgs {
        ws.send(Message::text(m.to_string())).await.unwrap();
    }
    let echoed = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let echoed: serde_json::Value = serde_json::from_str(echoed.to_text().unwrap()).unwrap();
    assert_eq!(
        echoed,
        json!({"event":"media","streamSid":"MZ1","media":{"payload":"AAEC"}})
    );
    ws.send(Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    })))
    .await
    .unwrap();
    let conns = agent
        .wait_until(Duration::from_secs(5), |c| c.len() == 1 && c[0].finished)
        .await;
    assert_eq!(conns.len(), 1);
    let c = &conns[0];
    assert_eq!(
        c.event_names(),
        vec!["connected", "start", "media", "dtmf", "stop"]
    );
    assert_eq!(c.digits(), "7");
    assert_eq!(c.media_payloads(), vec![vec![0u8, 1, 2]]);
    assert_eq!(c.close_code, Some(1000));
    assert_eq!(c.path, "/ws");

    let refusing = TestAgent::start(Mode::Refuse(403)).await;
    let tcp = tokio::net::TcpStream::connect(refusing.addr).await.unwrap();
    let err = tokio_tungstenite::client_async(refusing.url(), tcp)
        .await
        .expect_err("the refusing agent must refuse");
    assert!(err.to_string().contains("403"), "{err}");
    let conns = refusing
        .wait_until(Duration::from_secs(5), |c| c.len() == 1 && c[0].finished)
        .await;
    assert!(conns[0].refused);
}
