//! SRTP end to end with baresip (its srtp module: libre's own SRTP, not libsrtp) as the
//! caller, over SIP/TLS with a throwaway self-signed certificate that baresip trusts.
//!
//! - `srtp-mand` over TLS: the call is SRTP both ways. The agent hears baresip's tone,
//!   baresip decrypts and records the echo (its sndfile module), and neither direction
//!   on the wire decodes as G.722 to the tone.
//! - A plain RTP/AVP offer over TLS with `media.srtp = "optional"` still works, in clear.
//! - An RTP/SAVP offer over UDP is refused with 488: its keys would travel in clear.

mod common_call;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common_call::agent::{Mode, TestAgent};
use common_call::audio::{agent_media_to_pcm, decode_rtp, find_tone, ToneReport, TONE_HZ};
use common_call::baresip::{write_tone_wav, Baresip};
use common_call::capture::Capture;
use common_call::pcap::{Rtp, UdpPacket};
use common_call::Dialtone;
use dialtone::media::codec::CodecKind;

/// A self-signed certificate for 127.0.0.1/localhost: dialtone's TLS identity and, as its
/// own CA, baresip's trust anchor. Returns (cert, key).
fn certificate(dir: &Path) -> (PathBuf, PathBuf) {
    common_call::require_tool("openssl");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .args(["-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl");
    assert!(out.status.success(), "openssl: {out:?}");
    (cert, key)
}

/// dialtone with SIP over UDP and TLS, and the given `media.srtp`.
async fn dialtone_with_tls(certs: &Path, srtp: &str) -> (Dialtone, u16) {
    let (cert, key) = certificate(certs);
    let tls_port = common_call::free_tcp_port();
    let server = Dialtone::start_with(&[
        ("DIALTONE__SIP__TLS", &format!("127.0.0.1:{tls_port}")),
        ("DIALTONE__TLS__CERT", &cert.display().to_string()),
        ("DIALTONE__TLS__KEY", &key.display().to_string()),
        ("DIALTONE__MEDIA__SRTP", srtp),
    ])
    .await;
    (server, tls_port)
}

/// dialtone with TLS (`media.srtp = "optional"`), an echo agent, a registered call and
/// baresip with `modules`, `account_params` and `extra_config` (its microphone: the
/// tone). Returns them with dialtone's TLS port and the call id.
async fn call_setup(
    certs: &Path,
    modules: &[&str],
    account_params: &str,
    extra_config: &str,
) -> (Dialtone, u16, TestAgent, String, Baresip) {
    let (server, tls_port) = dialtone_with_tls(certs, "optional").await;
    let agent = TestAgent::start(Mode::Echo).await;
    let agent_id = server.create_agent(&agent.url(), "pcm_16000").await;
    let call_id = server.register_call(&agent_id).await["call_id"]
        .as_str()
        .unwrap()
        .to_string();
    let wav = server.dir.path().join("tone16k.wav");
    write_tone_wav(&wav, 20);
    let ua = Baresip::start_with(
        &server.dir.path().join("baresip"),
        modules,
        &wav,
        account_params,
        extra_config,
    )
    .await;
    (server, tls_port, agent, call_id, ua)
}

/// Reads a 16-bit mono WAV file (baresip's sndfile dumps): samples and rate.
fn read_wav(path: &Path) -> (Vec<i16>, u32) {
    let raw = std::fs::read(path).unwrap();
    let rate = u32::from_le_bytes(raw[24..28].try_into().unwrap());
    let data = raw
        .windows(4)
        .position(|w| w == b"data")
        .expect("data chunk")
        + 8;
    let pcm = raw[data..]
        .chunks_exact(2)
        .map(|c| i16::from_le_bytes([c[0], c[1]]))
        .collect();
    (pcm, rate)
}

/// The tone in the G.722 carried by `packets` from `from_ports` (or to them).
fn wire_tone(packets: &[UdpPacket], ports: (u16, u16), from_baresip: bool) -> (usize, ToneReport) {
    let rtp: Vec<Rtp> = packets
        .iter()
        .filter(|p| {
            let port = if from_baresip {
                p.src.port()
            } else {
                p.dst.port()
            };
            let other = if from_baresip {
                p.dst.port()
            } else {
                p.src.port()
            };
            (ports.0..=ports.1).contains(&port) && !(ports.0..=ports.1).contains(&other)
        })
        .filter_map(|p| Rtp::parse(&p.payload))
        .filter(|r| r.pt == 9)
        .collect();
    (
        rtp.len(),
        find_tone(
            &decode_rtp(CodecKind::G722, &rtp),
            16000,
            TONE_HZ,
            0.5,
            300.0,
        ),
    )
}

/// Dials dialtone from baresip, talks for 4 s, hangs up; returns what the wire carried.
async fn call_and_hang_up(ua: &mut Baresip, target: &str, dir: &Path) -> Vec<UdpPacket> {
    let capture = Capture::start(
        dir,
        "baresip-rtp",
        &format!("udp and portrange {}-{}", ua.rtp_ports.0, ua.rtp_ports.1),
    )
    .await;
    let resp = ua.command("dial", target).await;
    assert_eq!(resp["ok"], true, "baresip dial: {resp}");
    let established = ua
        .wait_event("CALL_ESTABLISHED", Duration::from_secs(10))
        .await;
    assert!(
        established.is_some(),
        "the call was not established; baresip events: {:?}\n{}",
        ua.events,
        ua.log()
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    let resp = ua.command("hangup", "").await;
    assert_eq!(resp["ok"], true, "hangup: {resp}");
    assert!(
        ua.wait_event("CALL_CLOSED", Duration::from_secs(5))
            .await
            .is_some(),
        "baresip did not see the call close: {:?}",
        ua.events
    );
    capture.stop().await
}

/// The agent's single accepted stream, as 16 kHz PCM.
async fn agent_heard(agent: &TestAgent) -> ToneReport {
    let conns = agent
        .wait_until(Duration::from_secs(5), |c| c.iter().all(|c| c.finished))
        .await;
    let accepted: Vec<_> = conns.iter().filter(|c| !c.refused).collect();
    assert_eq!(accepted.len(), 1, "one agent websocket: {conns:?}");
    let (pcm, rate) = agent_media_to_pcm("pcm_16000", &accepted[0].media_payloads());
    find_tone(&pcm, rate, TONE_HZ, 0.5, 300.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baresip_srtp_mandatory_over_tls_is_encrypted_both_ways() {
    let certs = tempfile::tempdir().unwrap();
    let dumps = certs.path().join("dumps");
    std::fs::create_dir_all(&dumps).unwrap();
    let (server, tls_port, agent, call_id, mut ua) = call_setup(
        certs.path(),
        &["g722", "srtp", "sndfile"],
        ";mediaenc=srtp-mand",
        &format!(
            "sip_cafile {}\nsnd_path {}\n",
            certs.path().join("cert.pem").display(),
            dumps.display()
        ),
    )
    .await;

    let t0 = common_call::now_ms();
    let target = format!("sip:{call_id}@127.0.0.1:{tls_port};transport=tls");
    let packets = call_and_hang_up(&mut ua, &target, server.dir.path()).await;
    let log = ua.log();
    assert!(
        log.contains("SRTP is Enabled"),
        "baresip keyed SRTP:\n{log}"
    );
    assert!(
        !log.contains("failed to decrypt"),
        "baresip decrypted everything:\n{log}"
    );

    // The agent heard the caller: dialtone decrypted baresip's SRTP.
    let heard = agent_heard(&agent).await;
    assert!(
        heard.tone_seconds() >= 2.0,
        "the agent should hear the tone: {heard:?}"
    );

    // Nothing on the wire is the tone in clear, either way.
    let (sent, clear) = wire_tone(&packets, ua.rtp_ports, true);
    assert!(sent >= 100, "baresip sent its audio ({sent} packets)");
    assert_eq!(
        clear.tone_frames, 0,
        "baresip → dialtone is not plain G.722: {clear:?}"
    );
    let (back, clear) = wire_tone(&packets, ua.rtp_ports, false);
    assert!(back >= 100, "dialtone sent the echo ({back} packets)");
    assert_eq!(
        clear.tone_frames, 0,
        "dialtone → baresip is not plain G.722: {clear:?}"
    );

    // baresip decrypted and decoded the echo: its recording of what it received.
    let dec = std::fs::read_dir(&dumps)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.to_string_lossy().ends_with("-dec.wav"))
        .unwrap_or_else(|| panic!("no sndfile dump of received audio in {dumps:?}:\n{log}"));
    let (pcm, rate) = read_wav(&dec);
    let echoed = find_tone(&pcm, rate, TONE_HZ, 0.5, 300.0);
    assert!(
        echoed.tone_seconds() >= 2.0,
        "the echoed tone should reach baresip's speaker: {echoed:?}"
    );

    let call = server
        .wait_call_final(&call_id, Duration::from_secs(10))
        .await;
    common_call::assert_ended_by_caller(&call, t0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_offer_over_tls_still_gets_plain_rtp_when_srtp_is_optional() {
    let certs = tempfile::tempdir().unwrap();
    let sip_cafile = format!("sip_cafile {}\n", certs.path().join("cert.pem").display());
    let (server, tls_port, agent, call_id, mut ua) =
        call_setup(certs.path(), &["g722"], "", &sip_cafile).await;
    let t0 = common_call::now_ms();
    let target = format!("sip:{call_id}@127.0.0.1:{tls_port};transport=tls");
    let packets = call_and_hang_up(&mut ua, &target, server.dir.path()).await;

    let heard = agent_heard(&agent).await;
    assert!(
        heard.tone_seconds() >= 2.0,
        "the agent should hear the tone: {heard:?}"
    );
    let (_, clear) = wire_tone(&packets, ua.rtp_ports, false);
    assert!(
        clear.tone_seconds() >= 2.0,
        "the echo travels as plain G.722: {clear:?}"
    );
    let call = server
        .wait_call_final(&call_id, Duration::from_secs(10))
        .await;
    common_call::assert_ended_by_caller(&call, t0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_srtp_offer_over_udp_is_refused_with_488() {
    let certs = tempfile::tempdir().unwrap();
    let (server, _, agent, call_id, mut ua) =
        call_setup(certs.path(), &["g722", "srtp"], ";mediaenc=srtp-mand", "").await;
    let target = format!("sip:{call_id}@127.0.0.1:{}", server.sip.port());
    let resp = ua.command("dial", &target).await;
    assert_eq!(resp["ok"], true, "baresip dial: {resp}");
    let closed = ua
        .wait_event("CALL_CLOSED", Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("no CALL_CLOSED: {:?}\n{}", ua.events, ua.log()));
    assert!(
        closed["param"].as_str().unwrap_or("").contains("488"),
        "refused with 488: {closed}"
    );
    assert!(
        ua.events.iter().all(|e| e["type"] != "CALL_ESTABLISHED"),
        "{:?}",
        ua.events
    );
    // The registration was not burnt: the caller may try again over TLS.
    assert_eq!(server.get_call(&call_id).await["call_status"], "registered");
    assert!(
        agent.connections().is_empty(),
        "no agent websocket for a refused offer"
    );
}
