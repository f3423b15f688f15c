//! Parser, writer and offer/answer tests, on offers captured from real trunks and phones.

use super::negotiate::*;
use super::parse::*;
use super::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::net::{Ipv4Addr, Ipv6Addr};

/// Joins lines with CRLF, as a trunk would send them.
fn crlf(lines: &[&str]) -> String {
    let mut s = lines.join("\r\n");
    s.push_str("\r\n");
    s
}

fn parse(lines: &[&str]) -> Sdp {
    Sdp::parse(crlf(lines).as_bytes()).expect("fixture parses")
}

fn local() -> LocalMedia {
    LocalMedia::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 10)), 40000, 77, 1)
}

fn local_srtp(policy: fn(SrtpKeyMaterial) -> SrtpPolicy, seed: u8) -> LocalMedia {
    let mut key = [0u8; 30];
    for (i, b) in key.iter_mut().enumerate() {
        *b = seed.wrapping_add(i as u8);
    }
    LocalMedia {
        srtp: policy(SrtpKeyMaterial(key)),
        ..local()
    }
}

/// 30 bytes 100..130: a valid AES-CM key||salt.
const KEY_CM: &str = "ZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXp7fH1+f4CB";
/// 28 bytes 1..29: a valid AEAD_AES_128_GCM key||salt.
const KEY_GCM: &str = "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHA==";

const TWILIO: &[&str] = &[
    "v=0",
    "o=root 1592425512 1592425512 IN IP4 54.172.60.1",
    "s=Twilio Media Gateway",
    "c=IN IP4 54.172.60.1",
    "t=0 0",
    "m=audio 16584 RTP/AVP 0 101",
    "a=rtpmap:0 PCMU/8000",
    "a=rtpmap:101 telephone-event/8000",
    "a=fmtp:101 0-16",
    "a=ptime:20",
    "a=maxptime:150",
    "a=sendrecv",
];

const TELNYX: &[&str] = &[
    "v=0",
    "o=- 3916393211 3916393211 IN IP4 192.76.120.10",
    "s=Telnyx",
    "c=IN IP4 192.76.120.10",
    "t=0 0",
    "m=audio 31544 RTP/AVP 0 8 9 101",
    "a=rtpmap:0 PCMU/8000",
    "a=rtpmap:8 PCMA/8000",
    "a=rtpmap:9 G722/8000",
    "a=rtpmap:101 telephone-event/8000",
    "a=fmtp:101 0-16",
    "a=ptime:20",
    "a=sendrecv",
];

const FREESWITCH: &[&str] = &[
    "v=0",
    "o=FreeSWITCH 1707000000 1707000001 IN IP4 5.10.112.121",
    "s=FreeSWITCH",
    "c=IN IP4 5.10.112.121",
    "t=0 0",
    "m=audio 21474 RTP/AVP 9 0 8 101 13",
    "a=rtpmap:101 telephone-event/8000",
    "a=fmtp:101 0-16",
    "a=rtpmap:13 CN/8000",
    "a=ptime:20",
    "a=sendrecv",
    "a=rtcp:21475 IN IP4 5.10.112.121",
];

const ASTERISK: &[&str] = &[
    "v=0",
    "o=- 1234567 3 IN IP4 10.0.0.5",
    "s=Asterisk",
    "c=IN IP4 10.0.0.5",
    "t=0 0",
    "m=audio 10078 RTP/AVP 8 0 3 101",
    "a=rtpmap:8 PCMA/8000",
    "a=rtpmap:0 PCMU/8000",
    "a=rtpmap:3 GSM/8000",
    "a=rtpmap:101 telephone-event/8000",
    "a=fmtp:101 0-16",
    "a=ptime:20",
    "a=maxptime:150",
    "a=sendrecv",
];

const SIPP: &[&str] = &[
    "v=0",
    "o=user1 53655765 2353687637 IN IP4 127.0.0.1",
    "s=-",
    "c=IN IP4 127.0.0.1",
    "t=0 0",
    "m=audio 6000 RTP/AVP 0",
    "a=rtpmap:0 PCMU/8000",
];

const LINPHONE: &[&str] = &[
    "v=0",
    "o=alice 3012 1871 IN IP4 192.168.1.20",
    "s=Talk",
    "c=IN IP4 192.168.1.20",
    "t=0 0",
    "a=rtcp-xr:rcvr-rtt=all:10000 stat-summary=loss,dup,jitt,TTL voip-metrics",
    "m=audio 7078 RTP/AVP 9 96 0 8 102 101",
    "a=rtpmap:96 opus/48000/2",
    "a=fmtp:96 useinbandfec=1",
    "a=rtpmap:102 telephone-event/48000",
    "a=rtpmap:101 telephone-event/8000",
    "a=rtcp-fb:* trr-int 1000",
    "a=rtcp-fb:* ccm tmmbr",
];

fn baresip_savp() -> Vec<String> {
    vec![
        "v=0".into(),
        "o=- 1876213427 2105093516 IN IP4 192.168.1.30".into(),
        "s=-".into(),
        "c=IN IP4 192.168.1.30".into(),
        "t=0 0".into(),
        "m=audio 10374 RTP/SAVP 9 0 8 101".into(),
        "b=AS:72".into(),
        "a=rtpmap:9 G722/8000".into(),
        "a=rtpmap:0 PCMU/8000".into(),
        "a=rtpmap:8 PCMA/8000".into(),
        "a=rtpmap:101 telephone-event/8000".into(),
        "a=fmtp:101 0-15".into(),
        format!("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_CM}"),
        format!("a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:{KEY_CM}"),
        "a=sendrecv".into(),
        "a=label:1".into(),
        "a=rtcp-rsize".into(),
        "a=ssrc:1385623911 cname:3b6d1a0c-b9ae-4b5c".into(),
        "a=ptime:20".into(),
    ]
}

fn parse_owned(lines: &[String]) -> Sdp {
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    parse(&refs)
}

fn answer_ok(sdp: &Sdp) -> Answer {
    answer(sdp, &local()).expect("negotiates")
}

/// Parses what we serialised, so every answer also proves it is well-formed SDP.
fn reparse(sdp: &Sdp) -> Sdp {
    let text = sdp.to_string();
    assert!(text.ends_with("\r\n"));
    assert!(
        !text.replace("\r\n", "").contains('\n'),
        "bare LF in {text}"
    );
    Sdp::parse(text.as_bytes()).expect("our own output parses")
}

// --- real-world offers ---------------------------------------------------------------

#[test]
fn twilio_pcmu_with_telephone_event() {
    let offer = parse(TWILIO);
    let a = answer_ok(&offer);
    let n = &a.negotiated;
    assert_eq!(n.codec, Codec::Pcmu);
    assert_eq!(n.payload_type, 0);
    assert_eq!(n.telephone_event, Some(101));
    assert_eq!(n.remote_rtp, "54.172.60.1:16584".parse().unwrap());
    assert_eq!(n.remote_rtcp, Some("54.172.60.1:16585".parse().unwrap()));
    assert_eq!(n.ptime, 20);
    assert_eq!(n.direction, Direction::SendRecv);
    assert!(!n.remote_hold);
    assert!(n.srtp.is_none());

    let text = a.sdp.to_string();
    assert!(text.contains("m=audio 40000 RTP/AVP 0 101\r\n"), "{text}");
    assert!(text.contains("c=IN IP4 203.0.113.10\r\n"));
    assert!(text.contains("o=dialtone 77 1 IN IP4 203.0.113.10\r\n"));
    assert!(text.contains("a=rtpmap:101 telephone-event/8000\r\n"));
    assert!(text.contains("a=fmtp:101 0-16\r\n"));
    assert!(text.contains("a=ptime:20\r\n"));
    assert!(text.contains("a=sendrecv\r\n"));
    assert_eq!(reparse(&a.sdp), a.sdp);
}

#[test]
fn telnyx_follows_caller_order_pcmu_first() {
    let n = answer_ok(&parse(TELNYX)).negotiated;
    assert_eq!((n.codec, n.payload_type), (Codec::Pcmu, 0));
}

#[test]
fn caller_order_wins_over_ours() {
    let local = LocalMedia {
        codecs: vec![Codec::G722, Codec::Pcmu],
        ..local()
    };
    let n = answer(&parse(TELNYX), &local).unwrap().negotiated;
    assert_eq!(n.codec, Codec::Pcmu);
}

#[test]
fn freeswitch_g722_first_static_without_rtpmap_and_rtcp_attribute() {
    let a = answer_ok(&parse(FREESWITCH));
    let n = &a.negotiated;
    assert_eq!((n.codec, n.payload_type), (Codec::G722, 9));
    assert_eq!(n.telephone_event, Some(101));
    assert_eq!(n.remote_rtcp, Some("5.10.112.121:21475".parse().unwrap()));
    assert!(a.sdp.to_string().contains("a=rtpmap:9 G722/8000\r\n"));
}

#[test]
fn asterisk_pcma_first() {
    let n = answer_ok(&parse(ASTERISK)).negotiated;
    assert_eq!((n.codec, n.payload_type), (Codec::Pcma, 8));
    assert_eq!(n.telephone_event, Some(101));
}

#[test]
fn pcma_only_offer() {
    let offer = parse(&[
        "v=0",
        "o=- 1 1 IN IP4 10.1.1.1",
        "s=-",
        "c=IN IP4 10.1.1.1",
        "t=0 0",
        "m=audio 4000 RTP/AVP 8",
    ]);
    let a = answer_ok(&offer);
    assert_eq!(a.negotiated.codec, Codec::Pcma);
    assert_eq!(a.negotiated.telephone_event, None);
    assert!(a.sdp.to_string().contains("m=audio 40000 RTP/AVP 8\r\n"));
}

#[test]
fn sipp_default_offer() {
    let a = answer_ok(&parse(SIPP));
    assert_eq!(a.negotiated.codec, Codec::Pcmu);
    assert_eq!(a.negotiated.remote_rtp, "127.0.0.1:6000".parse().unwrap());
    assert_eq!(a.negotiated.telephone_event, None);
}

#[test]
fn linphone_g722_first_with_telephone_event_at_matching_rate() {
    let a = answer_ok(&parse(LINPHONE));
    let n = &a.negotiated;
    assert_eq!((n.codec, n.payload_type), (Codec::G722, 9));
    // 102 is telephone-event/48000 (for opus); G.722's RTP clock is 8000.
    assert_eq!(n.telephone_event, Some(101));
    assert!(a
        .sdp
        .to_string()
        .contains("m=audio 40000 RTP/AVP 9 101\r\n"));
    // No fmtp offered: RFC 4733 default 0-15.
    assert!(a.sdp.to_string().contains("a=fmtp:101 0-15\r\n"));
}

#[test]
fn telephone_event_at_16000_only_is_not_used_with_8000_codec() {
    let offer = parse(&[
        "v=0",
        "o=- 1 1 IN IP4 10.1.1.1",
        "s=-",
        "c=IN IP4 10.1.1.1",
        "t=0 0",
        "m=audio 4000 RTP/AVP 9 100",
        "a=rtpmap:100 telephone-event/16000",
        "a=fmtp:100 0-15",
    ]);
    assert_eq!(answer_ok(&offer).negotiated.telephone_event, None);
}

#[test]
fn dynamic_payload_type_for_g711_is_echoed() {
    let offer = parse(&[
        "v=0",
        "o=- 1 1 IN IP4 10.1.1.1",
        "s=-",
        "c=IN IP4 10.1.1.1",
        "t=0 0",
        "m=audio 4000 RTP/AVP 18 112 96",
        "a=rtpmap:18 G729/8000",
        "a=rtpmap:112 pcmu/8000",
        "a=rtpmap:96 telephone-event/8000",
        "a=fmtp:96 0-11",
    ]);
    let a = answer_ok(&offer);
    assert_eq!(
        (a.negotiated.codec, a.negotiated.payload_type),
        (Codec::Pcmu, 112)
    );
    assert_eq!(a.negotiated.telephone_event, Some(96));
    let text = a.sdp.to_string();
    assert!(text.contains("m=audio 40000 RTP/AVP 112 96\r\n"), "{text}");
    assert!(text.contains("a=rtpmap:112 PCMU/8000\r\n"));
    assert!(text.contains("a=fmtp:96 0-11\r\n"));
}

#[test]
fn no_common_codec_is_488() {
    let offer = parse(&[
        "v=0",
        "o=- 1 1 IN IP4 10.1.1.1",
        "s=-",
        "c=IN IP4 10.1.1.1",
        "t=0 0",
        "m=audio 4000 RTP/AVP 18 96 101",
        "a=rtpmap:18 G729/8000",
        "a=rtpmap:96 opus/48000/2",
        "a=rtpmap:101 telephone-event/8000",
    ]);
    let err = answer(&offer, &local()).unwrap_err();
    assert_eq!(err, NegotiationError::NoCommonCodec);
    assert_eq!(err.sip_status(), 488);
}

#[test]
fn static_payload_type_remapped_by_rtpmap_is_not_taken_at_face_value() {
    // PT 0 redefined as stereo PCMU: not something we run.
    let offer = parse(&[
        "v=0",
        "o=- 1 1 IN IP4 10.1.1.1",
        "s=-",
        "c=IN IP4 10.1.1.1",
        "t=0 0",
        "m=audio 4000 RTP/AVP 0 8",
        "a=rtpmap:0 PCMU/8000/2",
    ]);
    assert_eq!(answer_ok(&offer).negotiated.codec, Codec::Pcma);
}

#[test]
fn telephone_event_fmtp_is_intersected_with_what_we_handle() {
    let ev = |p: &str| {
        common_events(Some(&Fmtp {
            format: "101".into(),
            params: p.into(),
        }))
    };
    assert_eq!(ev("0-15").as_deref(), Some("0-15"));
    assert_eq!(ev("0-16").as_deref(), Some("0-16"));
    assert_eq!(ev("0-255").as_deref(), Some("0-16"));
    assert_eq!(ev("0-9,11,16").as_deref(), Some("0-9,11,16"));
    assert_eq!(ev("32-40"), None);
    assert_eq!(ev("garbage").as_deref(), Some("0-15"));
    assert_eq!(common_events(None).as_deref(), Some("0-15"));
}

// --- hold ----------------------------------------------------------------------------

fn with_direction(base: &[&str], dir: &str) -> Sdp {
    let mut lines: Vec<&str> = base
        .iter()
        .copied()
        .filter(|l| *l != "a=sendrecv")
        .collect();
    lines.push(dir);
    parse(&lines)
}

#[test]
fn hold_sendonly_is_answered_recvonly() {
    let a = answer_ok(&with_direction(TWILIO, "a=sendonly"));
    assert_eq!(a.negotiated.direction, Direction::RecvOnly);
    assert!(a.negotiated.remote_hold);
    assert!(a.sdp.to_string().contains("a=recvonly\r\n"));
}

#[test]
fn hold_inactive_is_answered_inactive() {
    let a = answer_ok(&with_direction(TWILIO, "a=inactive"));
    assert_eq!(a.negotiated.direction, Direction::Inactive);
    assert!(a.negotiated.remote_hold);
    assert!(a.sdp.to_string().contains("a=inactive\r\n"));
}

#[test]
fn recvonly_offer_is_answered_sendonly() {
    let a = answer_ok(&with_direction(TWILIO, "a=recvonly"));
    assert_eq!(a.negotiated.direction, Direction::SendOnly);
    assert!(!a.negotiated.remote_hold);
}

#[test]
fn hold_with_zero_connection_address() {
    let lines: Vec<&str> = TWILIO
        .iter()
        .map(|l| {
            if l.starts_with("c=") {
                "c=IN IP4 0.0.0.0"
            } else {
                l
            }
        })
        .collect();
    let a = answer_ok(&parse(&lines));
    assert!(a.negotiated.remote_hold);
    assert_eq!(a.negotiated.direction, Direction::RecvOnly);
    assert!(a.negotiated.remote_rtp.ip().is_unspecified());
    assert!(a.sdp.to_string().contains("a=recvonly\r\n"));
}

#[test]
fn session_level_direction_applies_and_media_level_overrides() {
    let mut lines: Vec<&str> = SIPP.to_vec();
    lines.insert(5, "a=sendonly");
    let n = answer_ok(&parse(&lines)).negotiated;
    assert!(n.remote_hold);
    lines.push("a=sendrecv");
    let n = answer_ok(&parse(&lines)).negotiated;
    assert!(!n.remote_hold);
    assert_eq!(n.direction, Direction::SendRecv);
}

#[test]
fn reoffer_after_hold_resumes() {
    let held = answer_ok(&with_direction(TWILIO, "a=sendonly"));
    assert!(held.negotiated.remote_hold);
    let resumed = answer_ok(&with_direction(TWILIO, "a=sendrecv"));
    assert!(!resumed.negotiated.remote_hold);
    assert_eq!(resumed.negotiated.direction, Direction::SendRecv);
}

#[test]
fn our_direction_limits_the_answer() {
    let local = LocalMedia {
        direction: Direction::SendOnly,
        ..local()
    };
    let n = answer(&parse(TWILIO), &local).unwrap().negotiated;
    assert_eq!(n.direction, Direction::SendOnly);
}

// --- other media, transports ---------------------------------------------------------

#[test]
fn video_is_rejected_with_port_zero_in_order() {
    let offer = parse(&[
        "v=0",
        "o=- 1 1 IN IP4 10.1.1.1",
        "s=-",
        "c=IN IP4 10.1.1.1",
        "t=0 0",
        "m=video 5002 RTP/AVP 96",
        "a=rtpmap:96 H264/90000",
        "m=audio 5000 RTP/AVP 0",
        "m=image 5004 udptl t38",
    ]);
    let a = answer_ok(&offer);
    assert_eq!(a.negotiated.media_index, 1);
    let m = &a.sdp.media;
    assert_eq!(m.len(), 3);
    assert_eq!((m[0].media.as_str(), m[0].port), ("video", 0));
    assert_eq!(m[0].formats, vec!["96"]);
    assert_eq!((m[1].media.as_str(), m[1].port), ("audio", 40000));
    assert_eq!((m[2].media.as_str(), m[2].port), ("image", 0));
    assert_eq!(m[2].protocol, Protocol::Other("udptl".into()));
    let text = a.sdp.to_string();
    assert!(text.contains("m=video 0 RTP/AVP 96\r\n"));
    assert!(text.contains("m=image 0 udptl t38\r\n"));
    assert_eq!(reparse(&a.sdp), a.sdp);
}

#[test]
fn second_audio_stream_is_rejected() {
    let mut lines = SIPP.to_vec();
    lines.push("m=audio 6002 RTP/AVP 8");
    let a = answer_ok(&parse(&lines));
    assert_eq!(a.negotiated.media_index, 0);
    assert_eq!(a.sdp.media[1].port, 0);
}

#[test]
fn disabled_audio_is_skipped_for_the_next_one() {
    let offer = parse(&[
        "v=0",
        "o=- 1 1 IN IP4 10.1.1.1",
        "s=-",
        "c=IN IP4 10.1.1.1",
        "t=0 0",
        "m=audio 0 RTP/AVP 0",
        "m=audio 5000 RTP/AVP 8",
    ]);
    let a = answer_ok(&offer);
    assert_eq!(a.negotiated.media_index, 1);
    assert_eq!(a.negotiated.codec, Codec::Pcma);
    assert_eq!(a.sdp.media[0].port, 0);
}

#[test]
fn no_audio_at_all() {
    let offer = parse(&[
        "v=0",
        "o=- 1 1 IN IP4 10.1.1.1",
        "s=-",
        "c=IN IP4 10.1.1.1",
        "t=0 0",
        "m=video 5002 RTP/AVP 96",
    ]);
    assert_eq!(answer(&offer, &local()), Err(NegotiationError::NoAudio));
}

#[test]
fn dtls_srtp_is_unsupported() {
    let offer = parse(&[
        "v=0",
        "o=- 1 1 IN IP4 10.1.1.1",
        "s=-",
        "c=IN IP4 10.1.1.1",
        "t=0 0",
        "m=audio 5000 UDP/TLS/RTP/SAVP 0",
    ]);
    assert_eq!(
        answer(&offer, &local()),
        Err(NegotiationError::UnsupportedTransport(
            "UDP/TLS/RTP/SAVP".into()
        ))
    );
}

#[test]
fn media_level_connection_overrides_session_level() {
    let mut lines = SIPP.to_vec();
    lines.push("c=IN IP4 198.51.100.7");
    let n = answer_ok(&parse(&lines)).negotiated;
    assert_eq!(n.remote_rtp, "198.51.100.7:6000".parse().unwrap());
}

#[test]
fn missing_connection_address_is_a_negotiation_error() {
    let offer = parse(&["v=0", "o=- 1 1 IN IP4 h", "s=-", "m=audio 5000 RTP/AVP 0"]);
    assert_eq!(
        answer(&offer, &local()),
        Err(NegotiationError::NoConnectionAddress)
    );
}

#[test]
fn ipv6_connection() {
    let offer = parse(&[
        "v=0",
        "o=- 1 1 IN IP6 2001:db8::5",
        "s=-",
        "c=IN IP6 2001:db8::5",
        "t=0 0",
        "m=audio 5000 RTP/AVP 0",
    ]);
    let local = LocalMedia::new(
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 9)),
        4000,
        1,
        1,
    );
    let a = answer(&offer, &local).unwrap();
    assert_eq!(
        a.negotiated.remote_rtp,
        "[2001:db8::5]:5000".parse().unwrap()
    );
    let text = a.sdp.to_string();
    assert!(text.contains("c=IN IP6 2001:db8::9\r\n"), "{text}");
    assert!(text.contains("o=dialtone 1 1 IN IP6 2001:db8::9\r\n"));
    assert_eq!(reparse(&a.sdp), a.sdp);
}

#[test]
fn rtcp_mux_only_when_both_support_it() {
    let mut lines = TWILIO.to_vec();
    lines.push("a=rtcp-mux");
    let offer = parse(&lines);
    let n = answer_ok(&offer).negotiated;
    assert!(!n.rtcp_mux);
    assert!(n.remote_rtcp.is_some());
    let local = LocalMedia {
        rtcp_mux: true,
        ..local()
    };
    let a = answer(&offer, &local).unwrap();
    assert!(a.negotiated.rtcp_mux);
    assert_eq!(a.negotiated.remote_rtcp, None);
    assert!(a.sdp.to_string().contains("a=rtcp-mux\r\n"));
}

#[test]
fn ptime_follows_the_peer_within_maxptime() {
    let mut lines = SIPP.to_vec();
    lines.push("a=ptime:30");
    assert_eq!(answer_ok(&parse(&lines)).negotiated.ptime, 30);
    lines.push("a=maxptime:20");
    assert_eq!(answer_ok(&parse(&lines)).negotiated.ptime, 20);
    let mut odd = SIPP.to_vec();
    odd.push("a=ptime:17");
    assert_eq!(answer_ok(&parse(&odd)).negotiated.ptime, 20);
}

// --- SRTP ----------------------------------------------------------------------------

#[test]
fn savp_with_crypto_gets_crypto_in_answer() {
    let offer = parse_owned(&baresip_savp());
    let local = local_srtp(SrtpPolicy::Allowed, 1);
    let a = answer(&offer, &local).unwrap();
    let keys = a.negotiated.srtp.clone().expect("srtp agreed");
    assert_eq!(keys.suite, SrtpSuite::AesCm128HmacSha1_80);
    assert_eq!(keys.remote_key_salt, (100u8..130).collect::<Vec<_>>());
    assert_eq!(keys.local_key_salt, (1u8..31).collect::<Vec<_>>());
    assert_eq!(a.negotiated.codec, Codec::G722);
    let text = a.sdp.to_string();
    assert!(text.contains("m=audio 40000 RTP/SAVP 9 101\r\n"), "{text}");
    assert!(
        text.contains("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0e\r\n"),
        "{text}"
    );
    assert_eq!(text.matches("a=crypto").count(), 1);
    assert_eq!(reparse(&a.sdp), a.sdp);
}

#[test]
fn first_usable_crypto_in_offer_order_is_taken() {
    let mut lines = baresip_savp();
    lines.retain(|l| !l.starts_with("a=crypto"));
    // Unknown suite, then MKI (unsupported), then GCM.
    lines.push("a=crypto:1 AES_256_CM_HMAC_SHA1_80 inline:AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyAhIiMkJSYnKCkqKywtLg==".into());
    lines.push(format!(
        "a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:{KEY_CM}|2^20|1:4"
    ));
    lines.push(format!("a=crypto:3 AEAD_AES_128_GCM inline:{KEY_GCM}"));
    let offer = parse_owned(&lines);
    let a = answer(&offer, &local_srtp(SrtpPolicy::Required, 0)).unwrap();
    let keys = a.negotiated.srtp.unwrap();
    assert_eq!(keys.suite, SrtpSuite::AeadAes128Gcm);
    assert_eq!(keys.local_key_salt.len(), 28);
    assert_eq!(keys.remote_key_salt, (1u8..29).collect::<Vec<_>>());
    assert!(a
        .sdp
        .to_string()
        .contains("a=crypto:3 AEAD_AES_128_GCM inline:"));
}

#[test]
fn savp_without_usable_crypto() {
    let mut lines = baresip_savp();
    lines.retain(|l| !l.starts_with("a=crypto"));
    let offer = parse_owned(&lines);
    let local = local_srtp(SrtpPolicy::Allowed, 0);
    assert_eq!(
        answer(&offer, &local),
        Err(NegotiationError::NoUsableCrypto)
    );
    lines.push(format!(
        "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_CM}|2^20|1:4"
    ));
    lines.push(format!(
        "a=crypto:2 AES_CM_128_HMAC_SHA1_80 inline:{KEY_CM};inline:{KEY_CM}"
    ));
    lines.push(format!(
        "a=crypto:3 AES_CM_128_HMAC_SHA1_80 inline:{KEY_CM} UNENCRYPTED_SRTP"
    ));
    let offer = parse_owned(&lines);
    assert_eq!(
        answer(&offer, &local),
        Err(NegotiationError::NoUsableCrypto)
    );
}

#[test]
fn savp_when_srtp_not_allowed() {
    let offer = parse_owned(&baresip_savp());
    assert_eq!(
        answer(&offer, &local()),
        Err(NegotiationError::SrtpNotAllowed)
    );
}

#[test]
fn plain_rtp_when_srtp_required() {
    let local = local_srtp(SrtpPolicy::Required, 0);
    assert_eq!(
        answer(&parse(TWILIO), &local),
        Err(NegotiationError::SrtpRequired)
    );
}

#[test]
fn plain_rtp_accepted_when_srtp_only_allowed() {
    let local = local_srtp(SrtpPolicy::Allowed, 0);
    assert!(answer(&parse(TWILIO), &local)
        .unwrap()
        .negotiated
        .srtp
        .is_none());
}

#[test]
fn crypto_key_with_wrong_length_is_a_parse_error() {
    let mut lines = baresip_savp();
    lines.push(format!("a=crypto:3 AEAD_AES_128_GCM inline:{KEY_CM}"));
    let text = lines.join("\r\n");
    let err = Sdp::parse(text.as_bytes()).unwrap_err();
    assert!(matches!(err, SdpError::Line { line: 20, .. }), "{err}");
    assert!(err.to_string().contains("wrong length"));
    assert!(!err.to_string().contains(KEY_CM), "{err}");
    assert!(
        err.to_string().contains("AEAD_AES_128_GCM <redacted>"),
        "{err}"
    );
}

#[test]
fn debug_output_hides_keys() {
    let offer = parse_owned(&baresip_savp());
    let a = answer(&offer, &local_srtp(SrtpPolicy::Allowed, 0)).unwrap();
    let dbg = format!("{offer:?} {a:?} {:?}", local_srtp(SrtpPolicy::Allowed, 0));
    assert!(!dbg.contains(KEY_CM));
    assert!(!dbg.contains("AAECAwQF"));
    assert!(!dbg.contains("100, 101, 102"));
}

// --- our offers and their answers ----------------------------------------------------

#[test]
fn our_offer_lists_our_codecs() {
    let sdp = offer(&local());
    let text = sdp.to_string();
    assert!(text.starts_with("v=0\r\no=dialtone 77 1 IN IP4 203.0.113.10\r\ns=dialtone\r\nc=IN IP4 203.0.113.10\r\nt=0 0\r\n"), "{text}");
    assert!(text.contains("m=audio 40000 RTP/AVP 0 8 9 101\r\n"));
    assert!(text.contains("a=fmtp:101 0-16\r\n"));
    assert!(!text.contains("crypto"));
    assert_eq!(reparse(&sdp), sdp);
}

#[test]
fn offer_then_answer_then_accept_agree() {
    let us = local_srtp(SrtpPolicy::Required, 1);
    let our_offer = reparse(&offer(&us));
    assert_eq!(our_offer.media[0].crypto.len(), 3);
    let them = LocalMedia {
        codecs: vec![Codec::G722, Codec::Pcma],
        address: IpAddr::V4(Ipv4Addr::new(198, 51, 100, 2)),
        rtp_port: 30000,
        ..local_srtp(SrtpPolicy::Allowed, 50)
    };
    let their_answer = answer(&our_offer, &them).unwrap();
    let wire = reparse(&their_answer.sdp);
    let ours = accept_answer(&our_offer, &wire).unwrap();
    let theirs = their_answer.negotiated;
    // Our order was PCMU, PCMA, G722; they run G722 and PCMA and follow ours: PCMA.
    assert_eq!(ours.codec, Codec::Pcma);
    assert_eq!(theirs.codec, Codec::Pcma);
    assert_eq!(ours.remote_rtp, "198.51.100.2:30000".parse().unwrap());
    assert_eq!(theirs.remote_rtp, "203.0.113.10:40000".parse().unwrap());
    assert_eq!(ours.telephone_event, Some(101));
    let (a, b) = (ours.srtp.unwrap(), theirs.srtp.unwrap());
    assert_eq!(a.suite, SrtpSuite::AesCm128HmacSha1_80);
    assert_eq!(a.local_key_salt, b.remote_key_salt);
    assert_eq!(a.remote_key_salt, b.local_key_salt);
    assert_ne!(a.local_key_salt, a.remote_key_salt);
}

#[test]
fn accept_answer_from_a_trunk() {
    let our_offer = offer(&local());
    let ans = parse(&[
        "v=0",
        "o=root 1 1 IN IP4 54.172.60.1",
        "s=Twilio Media Gateway",
        "c=IN IP4 54.172.60.1",
        "t=0 0",
        "m=audio 17000 RTP/AVP 8 100",
        "a=rtpmap:100 telephone-event/8000",
        "a=fmtp:100 0-16",
        "a=ptime:20",
        "a=sendonly",
    ]);
    let n = accept_answer(&our_offer, &ans).unwrap();
    assert_eq!((n.codec, n.payload_type), (Codec::Pcma, 8));
    // They renumbered telephone-event; we send with their number.
    assert_eq!(n.telephone_event, Some(100));
    assert_eq!(n.direction, Direction::RecvOnly);
    assert!(n.remote_hold);
    assert_eq!(n.remote_rtp, "54.172.60.1:17000".parse().unwrap());
}

#[test]
fn accept_answer_rejections() {
    let our_offer = offer(&local());
    let mut ans = answer_ok(&parse(TWILIO)).sdp;
    assert!(accept_answer(&our_offer, &ans).is_ok());

    let mut rejected = ans.clone();
    rejected.media[0].port = 0;
    assert_eq!(
        accept_answer(&our_offer, &rejected),
        Err(NegotiationError::AudioRejected)
    );

    let mut extra = ans.clone();
    extra.media.push(rejected.media[0].clone());
    assert_eq!(
        accept_answer(&our_offer, &extra),
        Err(NegotiationError::MediaCountMismatch {
            offered: 1,
            answered: 2
        })
    );

    ans.media[0].formats = vec!["18".into()];
    ans.media[0].rtpmaps.clear();
    assert_eq!(
        accept_answer(&our_offer, &ans),
        Err(NegotiationError::NoCommonCodec)
    );

    let mut savp = ans.clone();
    savp.media[0].protocol = Protocol::RtpSavp;
    assert_eq!(
        accept_answer(&our_offer, &savp),
        Err(NegotiationError::MediaMismatch { index: 0 })
    );
}

#[test]
fn accept_answer_checks_crypto_tag() {
    let us = local_srtp(SrtpPolicy::Required, 1);
    let our_offer = offer(&us);
    let mut ans = answer(&our_offer, &local_srtp(SrtpPolicy::Allowed, 9))
        .unwrap()
        .sdp;
    ans.media[0].crypto[0].tag = 9;
    assert_eq!(
        accept_answer(&our_offer, &ans),
        Err(NegotiationError::CryptoMismatch)
    );
    ans.media[0].crypto.clear();
    assert_eq!(
        accept_answer(&our_offer, &ans),
        Err(NegotiationError::CryptoMismatch)
    );
}

// --- parser behaviour ----------------------------------------------------------------

#[test]
fn lf_only_and_crlf_parse_the_same() {
    let lf = TWILIO.join("\n");
    let crlf_text = crlf(TWILIO);
    assert_eq!(
        Sdp::parse(lf.as_bytes()).unwrap(),
        Sdp::parse(crlf_text.as_bytes()).unwrap()
    );
}

#[test]
fn missing_t_and_s_are_tolerated_and_trailing_space_ignored() {
    let sdp = parse(&[
        "v=0",
        "o=- 1 1 IN IP4 10.1.1.1 ",
        "c=IN IP4 10.1.1.1",
        "m=audio 5000 RTP/AVP 0 ",
        "",
        "a=rtpmap:0 PCMU/8000  ",
    ]);
    assert_eq!(sdp.timing, (0, 0));
    assert_eq!(sdp.session_name, "-");
    assert_eq!(sdp.media[0].formats, vec!["0"]);
    assert!(sdp.to_string().contains("t=0 0\r\n"));
}

#[test]
fn unknown_attributes_and_lines_are_kept() {
    let sdp = parse(LINPHONE);
    assert_eq!(sdp.attributes[0].name, "rtcp-xr");
    let m = &sdp.media[0];
    assert_eq!(m.attributes.len(), 2);
    assert_eq!(m.attributes[0].value.as_deref(), Some("* trr-int 1000"));
    assert_eq!(m.fmtp("96").unwrap().params, "useinbandfec=1");
    assert_eq!(m.rtpmap(96).unwrap().channels, Some(2));
}

#[test]
fn round_trip_parse_serialise_parse() {
    let mut fixtures: Vec<String> = [TWILIO, TELNYX, FREESWITCH, ASTERISK, SIPP, LINPHONE]
        .iter()
        .map(|f| crlf(f))
        .collect();
    fixtures.push(baresip_savp().join("\n"));
    fixtures.push(crlf(&[
        "v=0",
        "o=- 1 2 IN IP4 host.example.com",
        "s=x",
        "i=info",
        "u=http://example.com",
        "e=a@example.com",
        "c=IN IP4 10.0.0.1",
        "b=CT:128",
        "t=10 20",
        "r=7d 1h 0 25h",
        "a=recvonly",
        "m=audio 5000/2 RTP/AVPF 0",
        "i=media info",
        "c=IN IP6 ::1",
        "b=AS:64",
        "a=maxptime:40",
        "a=rtcp:5001",
        "a=rtcp-mux",
        "a=x-flag",
        "m=video 0 RTP/AVP",
    ]));
    for text in fixtures {
        let first = Sdp::parse(text.as_bytes()).unwrap();
        let second = reparse(&first);
        assert_eq!(first, second, "{text}");
        assert_eq!(first.to_string(), second.to_string());
    }
}

fn parse_err(text: &str) -> SdpError {
    Sdp::parse(text.as_bytes()).unwrap_err()
}

fn line_no(err: &SdpError) -> usize {
    match err {
        SdpError::Line { line, .. } => *line,
        other => panic!("expected a line error, got {other}"),
    }
}

#[test]
fn structural_errors_name_the_line() {
    let base = "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nc=IN IP4 1.2.3.4\r\nt=0 0\r\n";
    let cases = [
        ("m=audio 70000 RTP/AVP 0", "port"),
        ("m=audio 99999999999999999999 RTP/AVP 0", "port"),
        ("m=audio 5000 RTP/AVP", "no formats"),
        ("m=audio", "m= needs"),
        ("m=audio 5000 RTP/AVP 200", "payload type"),
        ("m=audio 5000 RTP/AVP zero", "payload type"),
        ("c=IN IP4 ::1", "address type"),
        ("c=IN IP4 example.com", "IP literal"),
        ("c=IN IP4 224.2.1.1/127", "multicast"),
        ("c=ATM NSAP 1", "IN network"),
        ("c=IN IP4 1.2.3.4", "duplicate c="),
        ("x=whatever", "unknown line type"),
        ("garbage", "not a <type>=<value>"),
        ("a=", "attribute name"),
        ("o=- 1 1 IN IP4 1.2.3.4", "duplicate o="),
        ("v=0", "duplicate v="),
    ];
    for (line, reason) in cases {
        let err = parse_err(&format!("{base}{line}\r\n"));
        assert_eq!(line_no(&err), 6, "{line}: {err}");
        assert!(err.to_string().contains(reason), "{line}: {err}");
        assert_eq!(err.sip_status(), 400);
    }
    let media = format!("{base}m=audio 5000 RTP/AVP 0 101\r\n");
    let cases = [
        ("a=rtpmap:101", "rtpmap"),
        ("a=rtpmap:101 telephone-event", "rtpmap"),
        ("a=rtpmap:101 telephone-event/0", "rtpmap"),
        ("a=rtpmap:300 x/8000", "rtpmap"),
        ("a=ptime:abc", "ptime"),
        ("a=ptime:0", "ptime"),
        ("a=rtcp:99999", "rtcp"),
        ("a=crypto:1 AES_CM_128_HMAC_SHA1_80", "crypto"),
        ("a=crypto:1 AES_CM_128_HMAC_SHA1_80 key:abc", "inline"),
        ("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:!!!!", "base64"),
        ("a=crypto:x AES_CM_128_HMAC_SHA1_80 inline:AAAA", "tag"),
        ("a=sendonly\r\na=recvonly", "conflicting"),
        ("a=rtpmap:0 PCMU/8000\r\na=rtpmap:0 PCMU/8000", "duplicate"),
        ("s=late", "inside a media section"),
    ];
    for (line, reason) in cases {
        let err = parse_err(&format!("{media}{line}\r\n"));
        assert!((7..=8).contains(&line_no(&err)), "{line}: {err}");
        assert!(err.to_string().contains(reason), "{line}: {err}");
    }
}

#[test]
fn whole_body_errors() {
    assert_eq!(parse_err(""), SdpError::Empty);
    assert_eq!(parse_err("\r\n\r\n"), SdpError::Empty);
    assert_eq!(parse_err("v=0\r\ns=-\r\n"), SdpError::Missing('o'));
    assert_eq!(line_no(&parse_err("o=- 1 1 IN IP4 h\r\n")), 1);
    assert_eq!(line_no(&parse_err("v=1\r\n")), 1);
    assert_eq!(line_no(&parse_err("v=0\r\no=- x 1 IN IP4 h\r\n")), 2);
    assert_eq!(line_no(&parse_err("v=0\r\no=- 1 1 IN IP4\r\n")), 2);
    assert_eq!(
        Sdp::parse(b"v=0\r\no=- 1 1 IN IP4 h\r\ns=\xff\xfe\r\n"),
        Err(SdpError::NotUtf8)
    );
}

#[test]
fn hostile_sizes_are_bounded() {
    let mut many = String::from("v=0\r\no=- 1 1 IN IP4 h\r\ns=-\r\n");
    for _ in 0..10_000 {
        many.push_str("a=x\r\n");
    }
    assert_eq!(parse_err(&many), SdpError::TooManyLines { max: MAX_LINES });

    // Exactly MAX_LINES lines, newline-terminated, is fine.
    let mut exact = String::from("v=0\r\no=- 1 1 IN IP4 h\r\ns=-\r\n");
    for _ in 3..MAX_LINES {
        exact.push_str("a=x\r\n");
    }
    assert_eq!(
        Sdp::parse(exact.as_bytes()).unwrap().attributes.len(),
        MAX_LINES - 3
    );

    let huge = format!("v=0\r\ns={}\r\n", "x".repeat(MAX_SDP_BYTES));
    assert!(matches!(parse_err(&huge), SdpError::TooLarge { .. }));

    let long_line = format!("v=0\r\no=- 1 1 IN IP4 h\r\nq={}\r\n", "y".repeat(5000));
    match parse_err(&long_line) {
        SdpError::Line { text, .. } => assert!(text.chars().count() <= MAX_QUOTED_CHARS),
        other => panic!("{other}"),
    }

    let mut media = String::from("v=0\r\no=- 1 1 IN IP4 h\r\ns=-\r\n");
    for _ in 0..=MAX_MEDIA {
        media.push_str("m=audio 0 RTP/AVP 0\r\n");
    }
    assert!(parse_err(&media).to_string().contains("too many media"));

    let formats: Vec<String> = (0..=MAX_FORMATS).map(|i| (i % 128).to_string()).collect();
    let fmts = format!(
        "v=0\r\no=- 1 1 IN IP4 h\r\ns=-\r\nm=audio 1 RTP/AVP {}\r\n",
        formats.join(" ")
    );
    assert!(parse_err(&fmts).to_string().contains("too many formats"));
}

#[test]
fn base64_round_trip_and_rejects() {
    for len in 0..40u8 {
        let data: Vec<u8> = (0..len).map(|i| i.wrapping_mul(37)).collect();
        let enc = base64_encode(&data);
        assert_eq!(base64_decode(&enc).unwrap(), data);
        assert_eq!(base64_decode(enc.trim_end_matches('=')).unwrap(), data);
    }
    assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
    assert_eq!(base64_encode(b"fo"), "Zm8=");
    assert_eq!(base64_decode("Zm8"), Some(b"fo".to_vec()));
    assert_eq!(base64_decode("Z"), None);
    assert_eq!(base64_decode("Zm8==="), None);
    assert_eq!(base64_decode("Zm-8"), None);
    assert_eq!(base64_decode(&"A".repeat(1000)), None);
}

/// Random byte and line mutations of valid offers: parsing, answering and serialising
/// must never panic, and whatever parses must survive a round trip.
#[test]
fn random_mutations_never_panic() {
    let mut rng = StdRng::seed_from_u64(0x5D9);
    let seeds: Vec<String> = vec![
        crlf(TWILIO),
        crlf(LINPHONE),
        crlf(FREESWITCH),
        baresip_savp().join("\r\n"),
    ];
    let tokens: &[&[u8]] = &[
        b"\r\n",
        b"\n",
        b"=",
        b":",
        b"/",
        b" ",
        b"0",
        b"65536",
        b"m=audio 0 RTP/SAVP 0\r\n",
        b"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:",
        b"c=IN IP6 ::\r\n",
        b"a=inactive\r\n",
        b"\xff",
        b"-",
    ];
    let srtp = local_srtp(SrtpPolicy::Allowed, 3);
    let mut parsed = 0;
    for i in 0..4000 {
        let mut bytes = seeds[i % seeds.len()].clone().into_bytes();
        for _ in 0..rng.random_range(1..6) {
            let len = bytes.len();
            let at = rng.random_range(0..=len);
            match rng.random_range(0..6) {
                0 if at < len => {
                    bytes.remove(at);
                }
                1 => bytes.insert(at, rng.random()),
                2 if at < len => bytes[at] = rng.random(),
                3 => {
                    let t = tokens[rng.random_range(0..tokens.len())];
                    bytes.splice(at..at, t.iter().copied());
                }
                4 => bytes.truncate(at),
                _ => {
                    let end = rng.random_range(at..=len);
                    let chunk = bytes[at..end].to_vec();
                    bytes.splice(at..at, chunk);
                }
            }
        }
        if let Ok(sdp) = Sdp::parse(&bytes) {
            parsed += 1;
            assert_eq!(reparse(&sdp), sdp);
            for local in [&local(), &srtp] {
                if let Ok(a) = answer(&sdp, local) {
                    assert_eq!(a.sdp.media.len(), sdp.media.len());
                    let _ = accept_answer(&reparse(&a.sdp), &sdp);
                }
            }
        }
    }
    // The mutations must not be so destructive that nothing parses.
    assert!(parsed > 200, "only {parsed} mutants parsed");
}
