//! Every path a call can take, in virtual time: the leg is fed what the network, the agent,
//! the media task and the API would do, and its actions are checked. No socket, no task,
//! no sleep: `now` moves by hand. The end-to-end twins of these tests (tests/call_teardown.rs,
//! tests/outbound_trunk.rs, tests/call_outbound_early_media.rs) prove the glue.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::*;
use crate::media::codec::Codec;
use crate::sdp::{Direction, LocalMedia};
use crate::sip::auth::{Authenticator, Credentials};
use crate::sip::message::{Headers, Method, Request, Response};
use crate::sip::transport::{Kind, Target};

const T1: Duration = Duration::from_millis(500);
const T2: Duration = Duration::from_secs(4);
const MAX: Duration = Duration::from_secs(3600);
const STOP_WAIT: Duration = Duration::from_secs(2);
const RING: Duration = Duration::from_secs(30);
const CONTACT: &str = "<sip:192.0.2.9:5060>";

fn cfg(reliable: bool) -> LegConfig {
    LegConfig {
        reliable,
        t1: T1,
        t2: T2,
        contact: CONTACT.to_string(),
        max_duration: MAX,
        media_stop_wait: STOP_WAIT,
    }
}

fn flow() -> Target {
    Target {
        kind: Kind::Udp,
        addr: "192.0.2.1:5060".parse().unwrap(),
        conn: None,
    }
}

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(192, 0, 2, last))
}

/// Our media description.
fn ours() -> LocalMedia {
    LocalMedia::new(ip(9), 40000, 7, 1)
}

/// An SDP body the far end would send: PCMU (and telephone-event), in `direction`.
fn their_sdp(version: u64, direction: Direction) -> Bytes {
    let mut theirs = LocalMedia::new(ip(1), 30000, 99, version);
    theirs.codecs = vec![Codec::Pcmu];
    theirs.direction = direction;
    Bytes::from(sdp::offer(&theirs).to_string())
}

fn headers(pairs: &[(&str, String)]) -> Headers {
    let mut h = Headers::default();
    for (name, value) in pairs {
        h.push(name, value.as_str());
    }
    h
}

/// A request from the caller, in the dialog once `in_dialog` (our tag in To).
fn caller_request(method: Method, cseq: u32, body: Bytes, in_dialog: bool) -> Request {
    let to = if in_dialog {
        "<sip:call_1@dialtone>;tag=ours".to_string()
    } else {
        "<sip:call_1@dialtone>".to_string()
    };
    let mut h = headers(&[
        (
            "Via",
            format!("SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK{method:?}{cseq}"),
        ),
        ("From", "<sip:+14155550100@trunk>;tag=caller".to_string()),
        ("To", to),
        ("Call-ID", "c1@trunk".to_string()),
        ("CSeq", format!("{cseq} {}", method.as_str())),
        ("Contact", "<sip:caller@192.0.2.1:5060>".to_string()),
    ]);
    if !body.is_empty() {
        h.push("Content-Type", "application/sdp");
    }
    Request {
        method,
        uri: "sip:call_1@dialtone".to_string(),
        headers: h,
        body,
    }
}

/// A leg under test and the clock it runs on.
struct Call {
    leg: Leg,
    now: Instant,
}

impl Call {
    /// Everything the leg asked for since the last look.
    fn actions(&mut self) -> Vec<Action> {
        std::iter::from_fn(|| self.leg.poll_action()).collect()
    }

    /// Moves the clock by `by`, running every timer that falls due on the way, one
    /// deadline at a time (as a driver sleeping until `poll_timeout` would).
    fn advance(&mut self, by: Duration) {
        let until = self.now + by;
        while let Some(at) = self.leg.poll_timeout().filter(|at| *at <= until) {
            self.now = at;
            self.leg.handle_timeout(at);
        }
        self.now = until;
    }

    fn request(&mut self, tx: TxId, req: &Request) -> Vec<Action> {
        self.leg.handle_request(self.now, tx, req);
        self.actions()
    }
}

/// An inbound call through the answer: `offer` in the INVITE (or none), ringing.
fn ringing(offer: Option<Bytes>, reliable: bool) -> Call {
    let invite = caller_request(Method::Invite, 1, offer.clone().unwrap_or_default(), false);
    let dialog = Dialog::from_invite(&invite, "ours", flow()).unwrap();
    let answer = offer.map(|body| sdp::answer(&Sdp::parse(&body).unwrap(), &ours()).unwrap());
    let leg = Leg::answer(cfg(reliable), invite, dialog, ours(), answer);
    Call {
        leg,
        now: Instant::now(),
    }
}

/// An inbound call whose 200 is out, waiting for the ACK.
fn answered(reliable: bool) -> Call {
    let mut call = ringing(Some(their_sdp(1, Direction::SendRecv)), reliable);
    call.actions();
    call.leg.handle_agent(call.now, true);
    call.actions();
    call
}

/// An inbound call with media running.
fn connected() -> Call {
    let mut call = answered(false);
    call.leg.handle_answer_recorded(call.now, true);
    let ack = caller_request(Method::Ack, 1, Bytes::new(), true);
    call.leg.handle_ack(call.now, &ack);
    let actions = call.actions();
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, Action::StartMedia { early: false, .. })),
        "{actions:?}"
    );
    call
}

fn statuses(actions: &[Action]) -> Vec<(TxId, u16)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Respond { tx, response } => Some((*tx, response.status)),
            _ => None,
        })
        .collect()
}

fn finish(actions: &[Action]) -> Option<(DisconnectionReason, Option<u16>)> {
    actions.iter().find_map(|a| match a {
        Action::Finish { reason, status } => Some((*reason, *status)),
        _ => None,
    })
}

fn bye(actions: &[Action]) -> Option<&Request> {
    actions.iter().find_map(|a| match a {
        Action::SendBye(bye) => Some(bye),
        _ => None,
    })
}

fn has(actions: &[Action], want: &Action) -> bool {
    actions.iter().any(|a| a == want)
}

/// Ends a connected call whose end was decided: the media stops, the BYE goes out and is
/// answered 200. Returns the BYE and the finish.
fn hang_up(call: &mut Call, decided: Vec<Action>) -> (Request, (DisconnectionReason, Option<u16>)) {
    assert!(has(&decided, &Action::StopMedia), "{decided:?}");
    assert!(
        bye(&decided).is_none(),
        "the BYE waits for the media to stop"
    );
    call.leg.handle_media_ended(call.now, None);
    let actions = call.actions();
    let bye = bye(&actions).expect("a BYE").clone();
    call.leg.handle_bye_done(Some(200));
    let actions = call.actions();
    assert!(call.leg.is_done());
    (bye, finish(&actions).expect("finished"))
}

// ---------------------------------------------------------------------------------------
// Inbound set-up

#[test]
fn rings_then_answers_when_the_agent_opens_and_starts_media_at_the_ack() {
    let mut call = ringing(Some(their_sdp(1, Direction::SendRecv)), false);
    let actions = call.actions();
    assert_eq!(statuses(&actions), [(INVITE_TX, 180)]);
    assert!(has(&actions, &Action::ConnectAgent { early: false }));
    let Action::Respond { response, .. } = &actions[0] else {
        panic!("{actions:?}")
    };
    assert_eq!(response.headers.get("Contact"), Some(CONTACT));
    assert!(response.headers.get("To").unwrap().ends_with(";tag=ours"));

    call.advance(Duration::from_secs(3)); // the agent takes its time; nothing happens
    assert!(call.actions().is_empty());
    call.leg.handle_agent(call.now, true);
    let actions = call.actions();
    assert_eq!(statuses(&actions), [(INVITE_TX, 200)]);
    let Action::Respond { response: ok, .. } = &actions[0] else {
        panic!("{actions:?}")
    };
    assert_eq!(ok.headers.get("Content-Type"), Some("application/sdp"));
    assert!(std::str::from_utf8(&ok.body)
        .unwrap()
        .contains("m=audio 40000 RTP/AVP 0"));
    assert!(has(
        &actions,
        &Action::RecordAnswered {
            codec: Some(Codec::Pcmu),
            status: 200
        }
    ));

    let ack = caller_request(Method::Ack, 1, Bytes::new(), true);
    call.leg.handle_ack(call.now, &ack);
    let actions = call.actions();
    assert!(has(&actions, &Action::Release(INVITE_TX)));
    let Some(Action::StartMedia { negotiated, early }) = actions.last() else {
        panic!("{actions:?}")
    };
    assert!(!early);
    assert_eq!(negotiated.codec, Codec::Pcmu);
    assert_eq!(negotiated.remote_rtp, "192.0.2.1:30000".parse().unwrap());
    // Acknowledged: no resends, and only the maximum duration is left to run.
    assert_eq!(call.leg.poll_timeout(), Some(call.now + MAX));
}

#[test]
fn stop_while_ringing_refuses_the_invite_and_ends_manual_stopped() {
    let mut call = ringing(Some(their_sdp(1, Direction::SendRecv)), false);
    call.actions();
    call.leg.handle_stop(call.now);
    let actions = call.actions();
    assert_eq!(statuses(&actions), [(INVITE_TX, 480)]);
    assert!(has(&actions, &Action::Rejected(Rejection::Stopped)));
    assert_eq!(
        finish(&actions),
        Some((DisconnectionReason::ManualStopped, Some(480)))
    );
    assert!(call.leg.is_done());
    // Nothing follows the finish, whatever comes late.
    call.leg.handle_agent(call.now, true);
    assert!(call.actions().is_empty());
}

#[test]
fn cancel_while_the_agent_stalls_ends_user_hangup_487() {
    let mut call = ringing(Some(their_sdp(1, Direction::SendRecv)), false);
    call.actions();
    call.advance(Duration::from_secs(1));
    call.leg.handle_cancel();
    let actions = call.actions();
    // The transaction answered the 487 itself: the leg only counts and records.
    assert!(statuses(&actions).is_empty(), "{actions:?}");
    assert!(has(&actions, &Action::Rejected(Rejection::Cancelled)));
    assert_eq!(
        finish(&actions),
        Some((DisconnectionReason::UserHangup, Some(487)))
    );
}

#[test]
fn an_agent_that_does_not_open_fails_the_invite_with_480() {
    let mut call = ringing(Some(their_sdp(1, Direction::SendRecv)), false);
    call.actions();
    call.leg.handle_agent(call.now, false);
    let actions = call.actions();
    assert_eq!(statuses(&actions), [(INVITE_TX, 480)]);
    let Action::Respond { response, .. } = &actions[0] else {
        panic!()
    };
    assert_eq!(
        response.reason,
        "Temporarily Unavailable (agent unreachable)"
    );
    assert_eq!(
        finish(&actions),
        Some((DisconnectionReason::ErrorLlmWebsocketOpen, Some(480)))
    );
}

#[test]
fn bye_while_ringing_ends_the_early_dialog_with_487() {
    let mut call = ringing(Some(their_sdp(1, Direction::SendRecv)), false);
    call.actions();
    let bye = caller_request(Method::Bye, 2, Bytes::new(), true);
    let actions = call.request(5, &bye);
    assert_eq!(statuses(&actions), [(5, 200), (INVITE_TX, 487)]);
    assert_eq!(
        finish(&actions),
        Some((DisconnectionReason::UserHangup, Some(487)))
    );
}

#[test]
fn requests_before_the_ack_get_491() {
    let mut call = answered(false);
    let reinvite = caller_request(Method::Invite, 2, their_sdp(2, Direction::SendOnly), true);
    let actions = call.request(3, &reinvite);
    assert_eq!(statuses(&actions), [(3, 491)]);
    assert!(has(&actions, &Action::Release(3)));
}

#[test]
fn the_200_is_resent_over_udp_doubling_to_t2_until_the_ack() {
    let mut call = answered(false);
    let mut resent_at = Vec::new();
    let start = call.now;
    for _ in 0..40 {
        call.advance(Duration::from_millis(100));
        for a in call.actions() {
            if let Action::Respond { tx, response } = a {
                assert_eq!((tx, response.status), (INVITE_TX, 200));
                resent_at.push(call.now - start);
            }
        }
    }
    let ms: Vec<u128> = resent_at.iter().map(|d| d.as_millis()).collect();
    // T1 = 500 ms: after 0.5, 1.5 (+1), 3.5 (+2), then every T2 = 4 s.
    assert_eq!(ms, [500, 1500, 3500]);
    call.advance(Duration::from_secs(4));
    assert_eq!(statuses(&call.actions()), [(INVITE_TX, 200)]);
    let ack = caller_request(Method::Ack, 1, Bytes::new(), true);
    call.leg.handle_ack(call.now, &ack);
    call.actions();
    call.advance(Duration::from_secs(30));
    assert!(
        statuses(&call.actions()).is_empty(),
        "no resend after the ACK"
    );
}

#[test]
fn over_tcp_the_200_is_not_resent_but_a_missing_ack_still_ends_the_call() {
    let mut call = answered(true);
    call.advance(T1 * 63);
    assert!(call.actions().is_empty());
    call.advance(T1);
    let actions = call.actions();
    assert!(has(&actions, &Action::Release(INVITE_TX)));
    assert!(has(&actions, &Action::StopAgent), "{actions:?}");
    assert!(bye(&actions).is_some());
    call.leg.handle_bye_done(Some(200));
    assert_eq!(
        finish(&call.actions()),
        Some((DisconnectionReason::ErrorUnknown, Some(200)))
    );
}

#[test]
fn missing_ack_ends_the_call_with_bye_after_64_t1() {
    let mut call = answered(false);
    call.advance(T1 * 64 - Duration::from_millis(1));
    assert!(bye(&call.actions()).is_none());
    call.advance(Duration::from_millis(1));
    let actions = call.actions();
    let bye = bye(&actions).expect("BYE after 64*T1");
    assert_eq!(
        bye.headers.get("Reason"),
        Some("SIP;cause=200;text=\"error_unknown\"")
    );
    assert_eq!(
        bye.headers.get("To"),
        Some("<sip:+14155550100@trunk>;tag=caller")
    );
    call.leg.handle_bye_done(None);
    assert_eq!(
        finish(&call.actions()),
        Some((DisconnectionReason::ErrorUnknown, None))
    );
}

#[test]
fn bye_before_the_ack_ends_user_hangup_without_a_bye_of_ours() {
    let mut call = answered(false);
    let bye_req = caller_request(Method::Bye, 2, Bytes::new(), true);
    let actions = call.request(4, &bye_req);
    assert_eq!(statuses(&actions), [(4, 200)]);
    assert!(has(&actions, &Action::StopAgent));
    assert!(bye(&actions).is_none());
    assert_eq!(
        finish(&actions),
        Some((DisconnectionReason::UserHangup, None))
    );
}

#[test]
fn stop_before_the_ack_sends_bye_and_ends_manual_stopped() {
    let mut call = answered(false);
    call.leg.handle_stop(call.now);
    let actions = call.actions();
    assert!(has(&actions, &Action::StopAgent));
    assert!(bye(&actions).is_some());
    call.leg.handle_bye_done(Some(200));
    assert_eq!(
        finish(&call.actions()),
        Some((DisconnectionReason::ManualStopped, Some(200)))
    );
}

#[test]
fn a_call_settled_through_the_api_while_answering_is_hung_up() {
    let mut call = answered(false);
    call.leg.handle_answer_recorded(call.now, false);
    let actions = call.actions();
    assert!(has(&actions, &Action::StopAgent));
    assert!(bye(&actions).is_some());
    call.leg.handle_bye_done(Some(200));
    assert_eq!(
        finish(&call.actions()),
        Some((DisconnectionReason::ManualStopped, Some(200)))
    );
}

#[test]
fn invite_without_sdp_gets_our_offer_in_the_200_and_the_answer_in_the_ack() {
    let mut call = ringing(None, false);
    call.actions();
    call.leg.handle_agent(call.now, true);
    let actions = call.actions();
    let Action::Respond { response: ok, .. } = &actions[0] else {
        panic!("{actions:?}")
    };
    let offer = Sdp::parse(&ok.body).expect("our offer in the 200");
    assert_eq!(offer.media.len(), 1);
    assert!(has(
        &actions,
        &Action::RecordAnswered {
            codec: None,
            status: 200
        }
    ));
    // The ACK's SDP answers our offer: the codec is recorded and media starts on it.
    let answer = sdp::answer(&offer, &{
        let mut theirs = LocalMedia::new(ip(1), 30002, 5, 1);
        theirs.codecs = vec![Codec::Pcma];
        theirs
    })
    .unwrap();
    let ack = caller_request(Method::Ack, 1, Bytes::from(answer.sdp.to_string()), true);
    call.leg.handle_ack(call.now, &ack);
    let actions = call.actions();
    assert!(
        has(&actions, &Action::RecordCodec(Codec::Pcma)),
        "{actions:?}"
    );
    let Some(Action::StartMedia { negotiated, .. }) = actions.last() else {
        panic!("{actions:?}")
    };
    assert_eq!(negotiated.codec, Codec::Pcma);
    assert_eq!(negotiated.remote_rtp.port(), 30002);
}

#[test]
fn an_ack_without_the_answer_our_offer_needs_ends_the_call() {
    let mut call = ringing(None, false);
    call.actions();
    call.leg.handle_agent(call.now, true);
    call.actions();
    let ack = caller_request(Method::Ack, 1, Bytes::new(), true);
    call.leg.handle_ack(call.now, &ack);
    let actions = call.actions();
    assert!(bye(&actions).is_some(), "{actions:?}");
    assert!(has(&actions, &Action::StopAgent));
    call.leg.handle_bye_done(Some(200));
    assert_eq!(
        finish(&call.actions()),
        Some((DisconnectionReason::ErrorUnknown, Some(200)))
    );
}

// ---------------------------------------------------------------------------------------
// Connected: every way a call ends

#[test]
fn stop_call_stops_media_then_sends_bye_and_ends_manual_stopped() {
    let mut call = connected();
    call.leg.handle_stop(call.now);
    let decided = call.actions();
    let (bye, end) = hang_up(&mut call, decided);
    assert_eq!(bye.method, Method::Bye);
    assert_eq!(bye.uri, "sip:caller@192.0.2.1:5060");
    assert_eq!(
        bye.headers.get("Reason"),
        Some("SIP;cause=200;text=\"manual_stopped\"")
    );
    assert_eq!(end, (DisconnectionReason::ManualStopped, Some(200)));
}

#[test]
fn the_media_session_ending_ends_the_call_with_its_reason() {
    use DisconnectionReason::*;
    for reason in [
        AgentHangup,
        ErrorLlmWebsocketRuntime,
        ErrorLlmWebsocketLostConnection,
        ErrorNoAudioReceived,
        Inactivity,
    ] {
        let mut call = connected();
        call.advance(Duration::from_secs(5));
        call.leg.handle_media_ended(call.now, Some(reason));
        let actions = call.actions();
        assert!(!has(&actions, &Action::StopMedia), "it already stopped");
        let bye = bye(&actions).expect("BYE").clone();
        assert_eq!(
            bye.headers.get("Reason"),
            Some(format!("SIP;cause=200;text=\"{}\"", reason.as_str()).as_str())
        );
        call.leg.handle_bye_done(Some(200));
        assert_eq!(finish(&call.actions()), Some((reason, Some(200))));
    }
}

#[test]
fn bye_from_the_caller_is_answered_and_the_call_ends_user_hangup() {
    let mut call = connected();
    let bye_req = caller_request(Method::Bye, 2, Bytes::new(), true);
    let actions = call.request(7, &bye_req);
    assert_eq!(statuses(&actions), [(7, 200)]);
    assert!(has(&actions, &Action::StopMedia));
    call.leg.handle_media_ended(call.now, None);
    let actions = call.actions();
    assert!(bye(&actions).is_none(), "no BYE back");
    assert_eq!(
        finish(&actions),
        Some((DisconnectionReason::UserHangup, None))
    );
}

#[test]
fn media_slow_to_stop_does_not_hold_the_bye() {
    let mut call = connected();
    call.leg.handle_stop(call.now);
    call.actions();
    call.advance(STOP_WAIT - Duration::from_millis(1));
    assert!(bye(&call.actions()).is_none());
    call.advance(Duration::from_millis(1));
    assert!(bye(&call.actions()).is_some());
    // The late end of the media changes nothing.
    call.leg
        .handle_media_ended(call.now, Some(DisconnectionReason::AgentHangup));
    assert!(call.actions().is_empty());
    call.leg.handle_bye_done(Some(481));
    assert_eq!(
        finish(&call.actions()),
        Some((DisconnectionReason::ManualStopped, Some(481)))
    );
}

#[test]
fn maximum_duration_ends_with_bye() {
    let mut call = connected();
    call.advance(MAX - Duration::from_secs(1));
    assert!(call.actions().is_empty());
    call.advance(Duration::from_secs(1));
    let decided = call.actions();
    let (_, end) = hang_up(&mut call, decided);
    assert_eq!(end, (DisconnectionReason::MaxDurationReached, Some(200)));
}

#[test]
fn the_first_ending_wins() {
    let mut call = connected();
    call.leg.handle_stop(call.now);
    call.actions();
    let bye_req = caller_request(Method::Bye, 2, Bytes::new(), true);
    // Their BYE crosses our stop: answered, but the reason stays.
    let actions = call.request(8, &bye_req);
    assert_eq!(statuses(&actions), [(8, 200)]);
    call.leg.handle_media_ended(call.now, None);
    assert!(bye(&call.actions()).is_some());
    call.leg.handle_bye_done(Some(200));
    assert_eq!(
        finish(&call.actions()).map(|f| f.0),
        Some(DisconnectionReason::ManualStopped)
    );
}

// ---------------------------------------------------------------------------------------
// Connected: renegotiation

fn answer_body(actions: &[Action]) -> Sdp {
    let ok = actions
        .iter()
        .find_map(|a| match a {
            Action::Respond { response, .. } if response.status == 200 => Some(response),
            _ => None,
        })
        .expect("a 200");
    Sdp::parse(&ok.body).expect("SDP in the 200")
}

#[test]
fn reinvite_hold_and_unhold_update_the_media_and_resend_until_acked() {
    let mut call = connected();
    let hold = caller_request(Method::Invite, 2, their_sdp(2, Direction::SendOnly), true);
    let actions = call.request(10, &hold);
    assert_eq!(statuses(&actions), [(10, 200)]);
    assert_eq!(
        answer_body(&actions).media[0].direction,
        Some(Direction::RecvOnly)
    );
    let Some(Action::UpdateMedia(n)) = actions.iter().find(|a| matches!(a, Action::UpdateMedia(_)))
    else {
        panic!("{actions:?}")
    };
    assert!(n.remote_hold);
    assert!(!has(&actions, &Action::Release(10)), "kept until its ACK");

    call.advance(T1);
    assert_eq!(statuses(&call.actions()), [(10, 200)], "resent over UDP");
    let ack = caller_request(Method::Ack, 2, Bytes::new(), true);
    call.leg.handle_ack(call.now, &ack);
    assert!(has(&call.actions(), &Action::Release(10)));
    call.advance(Duration::from_secs(10));
    assert!(call.actions().is_empty());

    let unhold = caller_request(Method::Invite, 3, their_sdp(3, Direction::SendRecv), true);
    let actions = call.request(11, &unhold);
    let Some(Action::UpdateMedia(n)) = actions.iter().find(|a| matches!(a, Action::UpdateMedia(_)))
    else {
        panic!("{actions:?}")
    };
    assert!(!n.remote_hold);
    assert_eq!(
        answer_body(&actions).media[0].direction,
        Some(Direction::SendRecv)
    );
}

#[test]
fn a_reinvite_200_never_acked_ends_the_call() {
    let mut call = connected();
    let hold = caller_request(Method::Invite, 2, their_sdp(2, Direction::SendOnly), true);
    call.request(10, &hold);
    call.advance(T1 * 64);
    let decided = call.actions();
    assert!(has(&decided, &Action::Release(10)));
    let (_, end) = hang_up(&mut call, decided);
    assert_eq!(end, (DisconnectionReason::ErrorUnknown, Some(200)));
}

#[test]
fn update_hold_and_unhold_answer_at_once_without_resends() {
    let mut call = connected();
    let hold = caller_request(Method::Update, 2, their_sdp(2, Direction::Inactive), true);
    let actions = call.request(12, &hold);
    assert_eq!(statuses(&actions), [(12, 200)]);
    assert!(has(&actions, &Action::Release(12)));
    assert_eq!(
        answer_body(&actions).media[0].direction,
        Some(Direction::Inactive)
    );
    call.advance(Duration::from_secs(10));
    assert!(call.actions().is_empty(), "an UPDATE's 200 is not resent");
    // An UPDATE without SDP (a session refresh) is a plain 200.
    let refresh = caller_request(Method::Update, 3, Bytes::new(), true);
    let actions = call.request(13, &refresh);
    assert_eq!(statuses(&actions), [(13, 200)]);
    assert!(!actions.iter().any(|a| matches!(a, Action::UpdateMedia(_))));
}

#[test]
fn reinvite_without_sdp_gets_our_offer_and_its_answer_in_the_ack_applies() {
    let mut call = connected();
    let reinvite = caller_request(Method::Invite, 2, Bytes::new(), true);
    let actions = call.request(14, &reinvite);
    let offer = answer_body(&actions);
    let mut theirs = LocalMedia::new(ip(1), 30000, 99, 2);
    theirs.direction = Direction::SendOnly;
    let answer = sdp::answer(&offer, &theirs).unwrap();
    let ack = caller_request(Method::Ack, 2, Bytes::from(answer.sdp.to_string()), true);
    call.leg.handle_ack(call.now, &ack);
    let actions = call.actions();
    assert!(has(&actions, &Action::Release(14)));
    assert!(
        has(&actions, &Action::RecordCodec(Codec::Pcmu)),
        "{actions:?}"
    );
    let Some(Action::UpdateMedia(n)) = actions.last() else {
        panic!("{actions:?}")
    };
    assert!(n.remote_hold, "they answered sendonly: we are held");
}

#[test]
fn one_offer_at_a_time_and_bad_offers_keep_the_media() {
    let mut call = connected();
    let first = caller_request(Method::Invite, 2, their_sdp(2, Direction::SendOnly), true);
    call.request(20, &first);
    let second = caller_request(Method::Invite, 3, their_sdp(3, Direction::SendRecv), true);
    assert_eq!(statuses(&call.request(21, &second)), [(21, 491)]);
    let ack = caller_request(Method::Ack, 2, Bytes::new(), true);
    call.leg.handle_ack(call.now, &ack);
    call.actions();
    let garbage = caller_request(
        Method::Invite,
        4,
        Bytes::from_static(b"v=0\r\nbogus\r\n"),
        true,
    );
    let actions = call.request(22, &garbage);
    assert_eq!(statuses(&actions), [(22, 488)]);
    assert!(!actions.iter().any(|a| matches!(a, Action::UpdateMedia(_))));
}

#[test]
fn stale_cseq_gets_500_and_other_requests_200() {
    let mut call = connected();
    let info = caller_request(Method::Info, 5, Bytes::new(), true);
    assert_eq!(statuses(&call.request(30, &info)), [(30, 200)]);
    let stale = caller_request(Method::Info, 4, Bytes::new(), true);
    let actions = call.request(31, &stale);
    assert_eq!(statuses(&actions), [(31, 500)]);
    assert!(has(&actions, &Action::Release(31)));
}

// ---------------------------------------------------------------------------------------
// Outbound

/// Our INVITE to a trunk, as the engine builds it.
fn our_invite() -> Request {
    let body = sdp::offer(&ours()).to_string();
    Request {
        method: Method::Invite,
        uri: "sip:+14155550199@trunk.example;transport=udp".to_string(),
        headers: headers(&[
            ("From", "<sip:+14155550100@dialtone>;tag=us".to_string()),
            ("To", "<sip:+14155550199@trunk.example>".to_string()),
            ("Call-ID", "out1@dialtone".to_string()),
            ("CSeq", "1 INVITE".to_string()),
            ("Contact", CONTACT.to_string()),
            ("Content-Type", "application/sdp".to_string()),
        ]),
        body: Bytes::from(body),
    }
}

fn dialling(forward_early_media: bool, auth: Option<Authenticator>) -> Call {
    let now = Instant::now();
    let request = our_invite();
    let offer = Sdp::parse(&request.body).unwrap();
    let dial = Dial {
        request,
        target: flow(),
        local: ours(),
        offer,
        auth,
        ring: RING,
        forward_early_media,
    };
    let mut call = Call {
        leg: Leg::dial(now, cfg(false), dial),
        now,
    };
    let actions = call.actions();
    assert!(
        matches!(actions.as_slice(), [Action::SendInvite(_)]),
        "{actions:?}"
    );
    call
}

/// The trunk's response to the INVITE last sent.
fn trunk_response(invite: &Request, status: u16, body: Bytes) -> Response {
    let mut resp = Response::for_request(invite, status, "Whatever", Some("far"));
    if status > 100 && status < 300 {
        resp.headers.push("Contact", "<sip:gw@198.51.100.7:5060>");
    }
    if !body.is_empty() {
        resp.headers.push("Content-Type", "application/sdp");
        resp.body = body;
    }
    resp
}

/// The trunk's SDP answer to our offer.
fn trunk_answer(port: u16) -> Bytes {
    let offer = Sdp::parse(&our_invite().body).unwrap();
    let mut theirs = LocalMedia::new(ip(7), port, 3, 1);
    theirs.codecs = vec![Codec::Pcmu];
    Bytes::from(sdp::answer(&offer, &theirs).unwrap().sdp.to_string())
}

fn respond(call: &mut Call, status: u16, body: Bytes) -> Vec<Action> {
    let resp = trunk_response(&our_invite(), status, body);
    call.leg.handle_response(call.now, &resp);
    call.actions()
}

#[test]
fn an_answered_outbound_call_acks_opens_the_agent_and_starts_media() {
    let mut call = dialling(false, None);
    assert!(respond(&mut call, 100, Bytes::new()).is_empty());
    assert!(respond(&mut call, 180, Bytes::new()).is_empty());
    let actions = respond(&mut call, 200, trunk_answer(31000));
    let Some(Action::SendAck(ack)) = actions.first() else {
        panic!("{actions:?}")
    };
    assert_eq!(ack.uri, "sip:gw@198.51.100.7:5060");
    assert_eq!(ack.headers.get("CSeq"), Some("1 ACK"));
    assert!(actions
        .iter()
        .any(|a| matches!(a, Action::Dialog(k) if k.local_tag == "us")));
    assert!(has(&actions, &Action::ConnectAgent { early: false }));
    call.leg.handle_agent(call.now, true);
    let actions = call.actions();
    let Some(Action::StartMedia {
        negotiated,
        early: false,
    }) = actions.first()
    else {
        panic!("{actions:?}")
    };
    assert_eq!(negotiated.remote_rtp.port(), 31000);
    assert!(has(
        &actions,
        &Action::RecordAnswered {
            codec: Some(Codec::Pcmu),
            status: 200
        }
    ));
    // A retransmitted 2xx gets the same ACK again.
    let again = respond(&mut call, 200, trunk_answer(31000));
    assert!(
        matches!(again.as_slice(), [Action::SendAck(a)] if a == ack),
        "{again:?}"
    );
    // The ring timer is gone; the call is up until its maximum duration.
    assert_eq!(call.leg.poll_timeout(), Some(call.now + MAX));
    call.leg.handle_stop(call.now);
    let decided = call.actions();
    let (bye, end) = hang_up(&mut call, decided);
    assert_eq!(bye.uri, "sip:gw@198.51.100.7:5060");
    assert_eq!(end, (DisconnectionReason::ManualStopped, Some(200)));
}

#[test]
fn final_failures_map_to_their_reasons() {
    use DisconnectionReason::*;
    for (status, reason) in [
        (486, DialBusy),
        (603, UserDeclined),
        (404, InvalidDestination),
        (503, TelephonyProviderUnavailable),
        (480, DialNoAnswer),
    ] {
        let mut call = dialling(false, None);
        respond(&mut call, 180, Bytes::new());
        let actions = respond(&mut call, status, Bytes::new());
        assert_eq!(finish(&actions), Some((reason, Some(status))), "{status}");
        assert!(bye(&actions).is_none());
    }
}

#[test]
fn no_response_and_transport_failure_end_not_connected() {
    let mut call = dialling(false, None);
    call.leg
        .handle_invite_failed(call.now, InviteFailure::Timeout);
    assert_eq!(
        finish(&call.actions()),
        Some((DisconnectionReason::DialFailed, None))
    );
    let mut call = dialling(false, None);
    call.leg
        .handle_invite_failed(call.now, InviteFailure::Unreachable);
    assert_eq!(
        finish(&call.actions()),
        Some((DisconnectionReason::TelephonyProviderUnavailable, None))
    );
}

#[test]
fn a_challenge_is_answered_once_with_credentials() {
    let auth = Authenticator::with_cnonce(Credentials::new("alice", "secret"), || "c".into());
    let mut call = dialling(false, Some(auth));
    let mut challenge = trunk_response(&our_invite(), 401, Bytes::new());
    challenge.headers.push(
        "WWW-Authenticate",
        "Digest realm=\"trunk\", nonce=\"n1\", algorithm=MD5, qop=\"auth\"",
    );
    call.leg.handle_response(call.now, &challenge);
    let actions = call.actions();
    let Some(Action::SendInvite(retry)) = actions.first() else {
        panic!("{actions:?}")
    };
    assert_eq!(retry.cseq().unwrap().seq, 2);
    assert!(retry
        .headers
        .get("Authorization")
        .unwrap()
        .contains("username=\"alice\""));
    // Challenged again with the same nonce: the credentials are wrong.
    let mut again = trunk_response(retry, 401, Bytes::new());
    again.headers.push(
        "WWW-Authenticate",
        "Digest realm=\"trunk\", nonce=\"n1\", algorithm=MD5, qop=\"auth\"",
    );
    call.leg.handle_response(call.now, &again);
    assert_eq!(
        finish(&call.actions()),
        Some((
            DisconnectionReason::TelephonyProviderPermissionDenied,
            Some(401)
        ))
    );
    // Without credentials a challenge is the end at once.
    let mut call = dialling(false, None);
    let actions = respond(&mut call, 407, Bytes::new());
    assert_eq!(
        finish(&actions),
        Some((
            DisconnectionReason::TelephonyProviderPermissionDenied,
            Some(407)
        ))
    );
}

#[test]
fn ringing_too_long_cancels_and_ends_dial_no_answer() {
    let mut call = dialling(false, None);
    respond(&mut call, 180, Bytes::new());
    call.advance(RING - Duration::from_millis(1));
    assert!(call.actions().is_empty());
    call.advance(Duration::from_millis(1));
    assert_eq!(call.actions(), [Action::CancelInvite]);
    let actions = respond(&mut call, 487, Bytes::new());
    assert_eq!(
        finish(&actions),
        Some((DisconnectionReason::DialNoAnswer, Some(487)))
    );
}

#[test]
fn stop_while_dialling_cancels_and_an_answer_crossing_the_cancel_gets_ack_and_bye() {
    let mut call = dialling(false, None);
    respond(&mut call, 180, Bytes::new());
    call.leg.handle_stop(call.now);
    assert_eq!(call.actions(), [Action::CancelInvite]);
    // A second stop sends no second CANCEL.
    call.leg.handle_stop(call.now);
    assert!(call.actions().is_empty());
    let actions = respond(&mut call, 200, trunk_answer(31000));
    assert!(
        matches!(actions.first(), Some(Action::SendAck(_))),
        "{actions:?}"
    );
    assert!(!actions
        .iter()
        .any(|a| matches!(a, Action::ConnectAgent { .. })));
    assert!(bye(&actions).is_some());
    call.leg.handle_bye_done(Some(200));
    assert_eq!(
        finish(&call.actions()),
        Some((DisconnectionReason::ManualStopped, Some(200)))
    );
}

#[test]
fn an_agent_that_asked_hears_early_media_then_the_answer() {
    let mut call = dialling(true, None);
    let actions = respond(&mut call, 183, trunk_answer(31000));
    assert_eq!(actions, [Action::ConnectAgent { early: true }]);
    call.leg.handle_agent(call.now, true);
    let actions = call.actions();
    let [Action::StartMedia {
        negotiated,
        early: true,
    }] = actions.as_slice()
    else {
        panic!("{actions:?}")
    };
    assert_eq!(negotiated.remote_rtp.port(), 31000);
    // A new early SDP updates the running session.
    let actions = respond(&mut call, 183, trunk_answer(31002));
    assert!(matches!(actions.as_slice(), [Action::UpdateMedia(n)] if n.remote_rtp.port() == 31002));
    // The answer without SDP: the early media's description stands.
    let actions = respond(&mut call, 200, Bytes::new());
    assert!(matches!(actions.first(), Some(Action::SendAck(_))));
    assert!(actions
        .iter()
        .any(|a| matches!(a, Action::MediaAnswered(n) if n.remote_rtp.port() == 31002)));
    assert!(has(
        &actions,
        &Action::RecordAnswered {
            codec: Some(Codec::Pcmu),
            status: 200
        }
    ));
    assert!(!actions
        .iter()
        .any(|a| matches!(a, Action::ConnectAgent { .. })));
}

#[test]
fn early_media_is_kept_from_an_agent_that_did_not_ask() {
    let mut call = dialling(false, None);
    assert!(respond(&mut call, 183, trunk_answer(31000)).is_empty());
    let actions = respond(&mut call, 200, Bytes::new());
    assert!(has(&actions, &Action::DiscardEarlyMedia), "{actions:?}");
    assert!(has(&actions, &Action::ConnectAgent { early: false }));
    call.leg.handle_agent(call.now, true);
    let actions = call.actions();
    assert!(
        matches!(actions.first(), Some(Action::StartMedia { negotiated, early: false }) if negotiated.remote_rtp.port() == 31000)
    );
}

#[test]
fn an_early_media_agent_hanging_up_cancels_the_call() {
    let mut call = dialling(true, None);
    respond(&mut call, 183, trunk_answer(31000));
    call.leg.handle_agent(call.now, true);
    call.actions();
    call.leg
        .handle_media_ended(call.now, Some(DisconnectionReason::AgentHangup));
    assert_eq!(call.actions(), [Action::CancelInvite]);
    let actions = respond(&mut call, 487, Bytes::new());
    assert_eq!(
        finish(&actions),
        Some((DisconnectionReason::AgentHangup, Some(487)))
    );
}

#[test]
fn an_agent_that_does_not_open_after_the_answer_hangs_up() {
    let mut call = dialling(false, None);
    respond(&mut call, 200, trunk_answer(31000));
    call.leg.handle_agent(call.now, false);
    let actions = call.actions();
    assert!(bye(&actions).is_some(), "{actions:?}");
    call.leg.handle_bye_done(Some(200));
    assert_eq!(
        finish(&call.actions()),
        Some((DisconnectionReason::ErrorLlmWebsocketOpen, Some(200)))
    );
}

#[test]
fn a_2xx_that_cannot_make_a_dialog_ends_the_call() {
    let mut call = dialling(false, None);
    let mut resp = trunk_response(&our_invite(), 200, trunk_answer(31000));
    resp.headers.remove("Contact");
    call.leg.handle_response(call.now, &resp);
    assert_eq!(
        finish(&call.actions()),
        Some((DisconnectionReason::ErrorUnknown, Some(200)))
    );
}
