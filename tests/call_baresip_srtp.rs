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

mod harness;

use std::path::Path;
use std::time::Duration;

use dialtone::media::codec::Codec;
use harness::agent::{Mode, TestAgent};
use harness::api::assert_ended_by_caller;
use harness::audio::{
    agent_media_to_pcm, decode_rtp, find_tone, read_wav, write_tone_wav, ToneReport, TONE_HZ,
};
use harness::baresip::Baresip;
use harness::capture::Capture;
use harness::now_ms;
use harness::pcap::{split_rtp, Rtp, UdpPacket};
use harness::server::Server;
use harness::tls::{Pki, Usage};
use serde_json::json;

/// A self-signed certificate for 127.0.0.1/localhost (`cert.pem`, `cert.key`): dialtone's
/// TLS identity and, as its own CA, baresip's trust anchor.
fn certificate() -> Pki {
    let mut pki = Pki::new();
    pki.self_signed("cert", &["127.0.0.1", "localhost"]);
    pki
}

/// dialtone with SIP over UDP and TLS (its certificate from `pki`), and the given
/// `media.srtp`.
fn dialtone_with_tls(pki: &Pki, srtp: &str) -> Server {
    Server::builder()
        .tls()
        .env("DIALTONE__TLS__CERT", pki.file("cert.pem"))
        .env("DIALTONE__TLS__KEY", pki.file("cert.key"))
        .env("DIALTONE__MEDIA__SRTP", srtp)
        .start()
}

/// dialtone with TLS (`media.srtp = "optional"`), an echo agent, a registered call and
/// baresip with `modules`, `account_params` and `extra_config` (its microphone: the
/// tone). Returns them with the call id.
async fn call_setup(
    pki: &Pki,
    modules: &[&str],
    account_params: &str,
    extra_config: &str,
) -> (Server, TestAgent, String, Baresip) {
    let server = dialtone_with_tls(pki, "optional");
    let agent = TestAgent::start(Mode::Echo).await;
    let agent_id = server.create_agent(&agent.url(), "pcm_16000");
    let call_id = server.register_call(&agent_id);
    let wav = server.dir().join("tone16k.wav");
    write_tone_wav(&wav, 16_000, 20);
    let ua = Baresip::start_with(
        &server.dir().join("baresip"),
        modules,
        &wav,
        account_params,
        extra_config,
    )
    .await;
    (server, agent, call_id, ua)
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
    let (sent, received) = split_rtp(packets, ports);
    let rtp: Vec<Rtp> = if from_baresip { sent } else { received }
        .into_iter()
        .map(|(_, r)| r)
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
    let capture = Capture::udp(dir, ua.rtp_ports).await;
    ua.dial(target).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    ua.hang_up().await;
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
    let pki = certificate();
    let dumps = tempfile::tempdir().unwrap();
    let (server, agent, call_id, mut ua) = call_setup(
        &pki,
        &["g722", "srtp", "sndfile"],
        ";mediaenc=srtp-mand",
        &format!(
            "sip_cafile {}\nsnd_path {}\n",
            pki.file("cert.pem"),
            dumps.path().display()
        ),
    )
    .await;

    let t0 = now_ms();
    let target = format!("sip:{call_id}@{};transport=tls", server.tls_addr());
    let packets = call_and_hang_up(&mut ua, &target, server.dir()).await;
    assert_srtp_both_ways(
        &ua,
        &agent,
        "pcm_16000",
        &packets,
        Codec::G722,
        dumps.path(),
    )
    .await;

    let call = server.wait_call_final(&call_id, Duration::from_secs(10));
    assert_ended_by_caller(&call, t0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_offer_over_tls_still_gets_plain_rtp_when_srtp_is_optional() {
    let pki = certificate();
    let sip_cafile = format!("sip_cafile {}\n", pki.file("cert.pem"));
    let (server, agent, call_id, mut ua) = call_setup(&pki, &["g722"], "", &sip_cafile).await;
    let t0 = now_ms();
    let target = format!("sip:{call_id}@{};transport=tls", server.tls_addr());
    let packets = call_and_hang_up(&mut ua, &target, server.dir()).await;

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
    let call = server.wait_call_final(&call_id, Duration::from_secs(10));
    assert_ended_by_caller(&call, t0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_srtp_offer_over_udp_is_refused_with_488() {
    let pki = certificate();
    let (server, agent, call_id, mut ua) =
        call_setup(&pki, &["g722", "srtp"], ";mediaenc=srtp-mand", "").await;
    let target = format!("sip:{call_id}@{}", server.sip_addr());
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
    assert_eq!(server.get_call(&call_id)["call_status"], "registered");
    assert!(
        agent.connections().is_empty(),
        "no agent websocket for a refused offer"
    );
}

/// The number the trunk test dials: baresip answers calls for this user only.
const CALLEE: &str = "+14155550199";

/// Outbound: dialtone (`media.srtp = "required"`) dials baresip, the trunk, over TLS with
/// a certificate from the CA that `tls.client_ca` names; baresip insists on SRTP
/// (`srtp-mand`), answers by itself and plays the tone; the echo agent sends it back.
/// The call is SRTP both ways, PCMU; stop-call ends it `manual_stopped`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_call_to_a_tls_trunk_with_srtp_required_is_encrypted_both_ways() {
    let dumps = tempfile::tempdir().unwrap();
    // A throwaway CA and two certificates it signed, for 127.0.0.1 and localhost: one for
    // dialtone, one for baresip (the trunk).
    let mut pki = Pki::new();
    pki.ca("ca", "dialtone test CA");
    for name in ["dialtone", "trunk"] {
        pki.leaf(name, "ca", name, &["127.0.0.1", "localhost"], Usage::Any);
    }
    let server = Server::builder()
        .tls()
        .env("DIALTONE__TLS__CERT", pki.file("dialtone.pem"))
        .env("DIALTONE__TLS__KEY", pki.file("dialtone.key"))
        // The trunk's CA, for dialling it; callers are not asked for certificates.
        .env("DIALTONE__TLS__TRUNK_CA", pki.file("ca.pem"))
        .env("DIALTONE__MEDIA__SRTP", "required")
        .start();
    let agent = TestAgent::start(Mode::Echo).await;
    let agent_id = server.create_agent(&agent.url(), "mulaw_8000");

    let wav = server.dir().join("tone8k.wav");
    write_tone_wav(&wav, 8000, 20);
    // baresip wants its certificate and key in one PEM (`sip_certificate`).
    let mut ua = Baresip::start_account(
        &server.dir().join("baresip"),
        &["g711", "srtp", "sndfile"],
        &wav,
        &format!("<sip:{CALLEE}@127.0.0.1>;regint=0;answermode=auto;mediaenc=srtp-mand"),
        &format!(
            "sip_certificate {}\nsip_cafile {}\nsnd_path {}\n",
            pki.bundle("trunk"),
            pki.file("ca.pem"),
            dumps.path().display()
        ),
    )
    .await;
    // baresip listens for TLS on its SIP port + 1.
    let trunk_tls = ua.sip_port + 1;
    server.import_number(json!({
        "phone_number": "+14155550140",
        "termination_uri": format!("127.0.0.1:{trunk_tls}"),
        "transport": "TLS",
        "outbound_agent_id": agent_id,
    }));

    let capture = Capture::udp(server.dir(), ua.rtp_ports).await;
    let call =
        server.create_phone_call(json!({"from_number": "+14155550140", "to_number": CALLEE}));
    let call_id = call["call_id"].as_str().unwrap().to_string();
    let call = server.wait_call_status(
        &call_id,
        &["ongoing", "ended", "error", "not_connected"],
        Duration::from_secs(15),
    );
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
    let (status, body) = server.stop_call(&call_id);
    assert_eq!(status, 204, "stop-call: {body}");
    assert!(
        ua.wait_event("CALL_CLOSED", Duration::from_secs(5))
            .await
            .is_some(),
        "baresip did not see our BYE: {:?}",
        ua.events
    );
    let packets = capture.stop().await;
    let call = server.wait_call_final(&call_id, Duration::from_secs(10));
    assert_eq!(call["call_status"], "ended", "{call}");
    assert_eq!(call["disconnection_reason"], "manual_stopped", "{call}");

    assert_srtp_both_ways(
        &ua,
        &agent,
        "mulaw_8000",
        &packets,
        Codec::Pcmu,
        dumps.path(),
    )
    .await;
}
