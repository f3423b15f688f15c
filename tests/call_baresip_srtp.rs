//! SRTP end to end with baresip (its srtp module: libre's own SRTP, not libsrtp) as the
//! caller, over SIP/TLS with a throwaway self-signed certificate that baresip trusts.
//!
//! - `srtp-mand` over TLS: the call is SRTP both ways. The agent hears baresip's tone,
//!   baresip decrypts and records the echo (its sndfile module), and neither direction
//!   on the wire decodes as G.722 to the tone.
//! - A plain RTP/AVP offer over TLS with `media.srtp = "optional"` still works, in clear.
//! - An RTP/SAVP offer over UDP is refused with 488: its keys would travel in clear.
//! - Outbound, baresip as the trunk: `create-phone-call` with `media.srtp = "required"`
//!   dials it over TLS (its certificate from a test CA that `tls.client_ca` names), the
//!   offer is RTP/SAVP, baresip (`srtp-mand`, auto-answer) plays the tone, and the call is
//!   SRTP both ways until stop-call ends it `manual_stopped`.

mod common_call;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common_call::agent::{Mode, TestAgent};
use common_call::audio::{agent_media_to_pcm, decode_rtp, find_tone, ToneReport, TONE_HZ};
use common_call::baresip::{write_tone_wav, write_tone_wav_at, Baresip};
use common_call::capture::Capture;
use common_call::pcap::{Rtp, UdpPacket};
use common_call::Dialtone;
use dialtone::media::codec::Codec;

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

/// After a call between baresip (`srtp-mand`, sndfile recording into `dumps`) and the echo
/// agent: baresip keyed SRTP and decrypted everything, the agent heard baresip's tone
/// (dialtone decrypted it), neither direction on the wire is the tone in clear `codec`,
/// and baresip heard the echo (it decrypted dialtone's SRTP).
async fn assert_srtp_both_ways(
    ua: &Baresip,
    agent: &TestAgent,
    encoding: &str,
    packets: &[UdpPacket],
    codec: Codec,
    dumps: &Path,
) {
    let log = ua.log();
    assert!(
        log.contains("SRTP is Enabled"),
        "baresip keyed SRTP:\n{log}"
    );
    assert!(
        !log.contains("failed to decrypt"),
        "baresip decrypted everything:\n{log}"
    );
    let heard = agent_heard(agent, encoding).await;
    assert!(
        heard.tone_seconds() >= 2.0,
        "the agent should hear the tone: {heard:?}"
    );
    let (sent, clear) = wire_tone(packets, ua.rtp_ports, true, codec);
    assert!(sent >= 100, "baresip sent its audio ({sent} packets)");
    assert_eq!(
        clear.tone_frames, 0,
        "baresip → dialtone is not plain {codec:?}: {clear:?}"
    );
    let (back, clear) = wire_tone(packets, ua.rtp_ports, false, codec);
    assert!(back >= 100, "dialtone sent the echo ({back} packets)");
    assert_eq!(
        clear.tone_frames, 0,
        "dialtone → baresip is not plain {codec:?}: {clear:?}"
    );
    let echoed = baresip_heard(dumps, &log);
    eprintln!(
        "SRTP {codec:?}: agent heard {:.2} s of tone, baresip {:.2} s; on the wire {sent} + \
         {back} packets, none of them the tone in clear",
        heard.tone_seconds(),
        echoed.tone_seconds()
    );
    assert!(
        echoed.tone_seconds() >= 2.0,
        "the echoed tone should reach baresip's speaker: {echoed:?}"
    );
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

/// The tone in baresip's sndfile recording of what it received (decrypted, decoded).
fn baresip_heard(dumps: &Path, log: &str) -> ToneReport {
    let dec = std::fs::read_dir(dumps)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.to_string_lossy().ends_with("-dec.wav"))
        .unwrap_or_else(|| panic!("no sndfile dump of received audio in {dumps:?}:\n{log}"));
    let (pcm, rate) = read_wav(&dec);
    find_tone(&pcm, rate, TONE_HZ, 0.5, 300.0)
}

/// The tone in the `codec` audio carried by `packets` from baresip's `ports` (or to them).
fn wire_tone(
    packets: &[UdpPacket],
    ports: (u16, u16),
    from_baresip: bool,
    codec: Codec,
) -> (usize, ToneReport) {
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
        .filter(|r| r.pt == codec.payload_type())
        .collect();
    (
        rtp.len(),
        find_tone(
            &decode_rtp(codec, &rtp),
            codec.sample_rate(),
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

/// The tone in the agent's single accepted stream (media in `encoding`).
async fn agent_heard(agent: &TestAgent, encoding: &str) -> ToneReport {
    let conns = agent
        .wait_until(Duration::from_secs(5), |c| c.iter().all(|c| c.finished))
        .await;
    let accepted: Vec<_> = conns.iter().filter(|c| !c.refused).collect();
    assert_eq!(accepted.len(), 1, "one agent websocket: {conns:?}");
    let (pcm, rate) = agent_media_to_pcm(encoding, &accepted[0].media_payloads());
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
    assert_srtp_both_ways(&ua, &agent, "pcm_16000", &packets, Codec::G722, &dumps).await;

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

    let heard = agent_heard(&agent, "pcm_16000").await;
    assert!(
        heard.tone_seconds() >= 2.0,
        "the agent should hear the tone: {heard:?}"
    );
    let (_, clear) = wire_tone(&packets, ua.rtp_ports, false, Codec::G722);
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

/// A throwaway CA and two leaf certificates it signed, for 127.0.0.1 and localhost: one
/// for dialtone, one for baresip (the trunk). Returns (ca, dialtone cert, dialtone key,
/// baresip's cert and key in one PEM, as its `sip_certificate` wants).
fn ca_and_leaves(dir: &Path) -> (PathBuf, PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "dialtone test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf = |cn: &str| {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let ca_path = write("ca.pem", &ca.pem());
    let (cert, key) = leaf("dialtone");
    let (cert, key) = (write("dialtone.pem", &cert), write("dialtone.key", &key));
    let (trunk_cert, trunk_key) = leaf("trunk");
    let trunk = write("trunk.pem", &format!("{trunk_cert}{trunk_key}"));
    (ca_path, cert, key, trunk)
}

/// The number the trunk test dials: baresip answers calls for this user only.
const CALLEE: &str = "+14155550199";

/// Outbound: dialtone (`media.srtp = "required"`) dials baresip, the trunk, over TLS with
/// a certificate from the CA that `tls.client_ca` names; baresip insists on SRTP
/// (`srtp-mand`), answers by itself and plays the tone; the echo agent sends it back.
/// The call is SRTP both ways, PCMU; stop-call ends it `manual_stopped`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_call_to_a_tls_trunk_with_srtp_required_is_encrypted_both_ways() {
    let certs = tempfile::tempdir().unwrap();
    let dumps = certs.path().join("dumps");
    std::fs::create_dir_all(&dumps).unwrap();
    let (ca, cert, key, trunk_cert) = ca_and_leaves(certs.path());
    let server = Dialtone::start_with(&[
        (
            "DIALTONE__SIP__TLS",
            &format!("127.0.0.1:{}", common_call::free_tcp_port()),
        ),
        ("DIALTONE__TLS__CERT", &cert.display().to_string()),
        ("DIALTONE__TLS__KEY", &key.display().to_string()),
        // The trunk's CA, for dialling it; callers are not asked for certificates.
        ("DIALTONE__TLS__TRUNK_CA", &ca.display().to_string()),
        ("DIALTONE__MEDIA__SRTP", "required"),
    ])
    .await;
    let agent = TestAgent::start(Mode::Echo).await;
    let agent_id = server.create_agent(&agent.url(), "mulaw_8000").await;

    let wav = server.dir.path().join("tone8k.wav");
    write_tone_wav_at(&wav, 8000, 20);
    let mut ua = Baresip::start_account(
        &server.dir.path().join("baresip"),
        &["g711", "srtp", "sndfile"],
        &wav,
        &format!("<sip:{CALLEE}@127.0.0.1>;regint=0;answermode=auto;mediaenc=srtp-mand"),
        &format!(
            "sip_certificate {}\nsip_cafile {}\nsnd_path {}\n",
            trunk_cert.display(),
            ca.display(),
            dumps.display()
        ),
    )
    .await;
    // baresip listens for TLS on its SIP port + 1.
    let trunk_tls = ua.sip_port + 1;
    let (status, number) = server
        .api(
            "POST",
            "/import-phone-number",
            Some(serde_json::json!({
                "phone_number": "+14155550140",
                "termination_uri": format!("127.0.0.1:{trunk_tls}"),
                "transport": "TLS",
                "outbound_agent_id": agent_id,
            })),
        )
        .await;
    assert_eq!(status, 201, "{number}");

    let capture = Capture::start(
        server.dir.path(),
        "trunk-rtp",
        &format!("udp and portrange {}-{}", ua.rtp_ports.0, ua.rtp_ports.1),
    )
    .await;
    let (status, call) = server
        .api(
            "POST",
            "/v2/create-phone-call",
            Some(serde_json::json!({"from_number": "+14155550140", "to_number": CALLEE})),
        )
        .await;
    assert_eq!(status, 201, "{call}");
    let call_id = call["call_id"].as_str().unwrap().to_string();
    let call = server
        .wait_call_status(
            &call_id,
            &["ongoing", "ended", "error", "not_connected"],
            Duration::from_secs(15),
        )
        .await;
    assert_eq!(
        call["call_status"],
        "ongoing",
        "the trunk call should connect: {call}\n{}",
        ua.log()
    );
    assert_eq!(call["direction"], "outbound", "{call}");
    assert_eq!(call["codec"], "PCMU", "{call}");
    assert!(
        ua.wait_event("CALL_ESTABLISHED", Duration::from_secs(5))
            .await
            .is_some(),
        "baresip did not establish the call: {:?}\n{}",
        ua.events,
        ua.log()
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (status, body) = server
        .api("POST", &format!("/v2/stop-call/{call_id}"), None)
        .await;
    assert_eq!(status, 204, "stop-call: {body}");
    assert!(
        ua.wait_event("CALL_CLOSED", Duration::from_secs(5))
            .await
            .is_some(),
        "baresip did not see our BYE: {:?}",
        ua.events
    );
    let packets = capture.stop().await;
    let call = server
        .wait_call_final(&call_id, Duration::from_secs(10))
        .await;
    assert_eq!(call["call_status"], "ended", "{call}");
    assert_eq!(call["disconnection_reason"], "manual_stopped", "{call}");

    assert_srtp_both_ways(&ua, &agent, "mulaw_8000", &packets, Codec::Pcmu, &dumps).await;
}
