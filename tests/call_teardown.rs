//! Issue 3, every way a call ends: "Each of these ends the call … Every path stores the
//! right disconnection_reason, end_timestamp and duration, and frees its port, task and
//! socket".
//!
//! The paths: stop-call through the API, the agent's `hangup` event, the agent closing with
//! 1000 and with 1011, CANCEL before the answer, no RTP at all, an INVITE without SDP (offer
//! in our 200, answer in the ACK) ended by the caller's BYE, a re-INVITE hold and unhold
//! (hold must not end the call, even with a short no-audio timeout), and the RTP port range
//! being reusable after calls end.
//!
//! The caller is the harness's raw-UDP leg (CANCEL, re-INVITE, UPDATE, an INVITE without
//! SDP and an ACK with SDP); the agent is the harness's, told to hang up, close with any
//! code or drop the connection, or set to stall the handshake.

mod harness;

use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use harness::agent::{AgentCmd, Connection, Mode, TestAgent};
use harness::api::assert_call_final;
use harness::ports::free_port_block;
use harness::server::Server;
use harness::sip::{sdp_audio_payload_types, sdp_media_addr, SipMsg};
use harness::uac::Uac;
use harness::{now_ms, unique};
use serde_json::{json, Value};

/// What the caller offers: PCMU and telephone-event.
const PCMU: &[u8] = &[0, 101];

// ---------------------------------------------------------------------------------------
// Shared steps and checks
// ---------------------------------------------------------------------------------------

/// Waits for the call object to be final and checks it ([`assert_call_final`]).
fn expect_final(
    server: &Server,
    call_id: &str,
    status: &str,
    reason: &str,
    t0: i64,
    answered: bool,
) -> Value {
    let call = server.wait_call_final(call_id, Duration::from_secs(15));
    eprintln!("call {call_id} final: {call}");
    assert_call_final(&call, status, reason, t0, answered);
    call
}

/// Waits for the gateway's BYE to the caller (answered 200 by the leg).
fn expect_bye(leg: &mut Uac, limit: Duration, why: &str) -> SipMsg {
    leg.wait_request("BYE", limit).unwrap_or_else(|| {
        panic!(
            "{why}: the caller got no BYE within {limit:?}; requests seen: {:?}",
            leg.requests
                .iter()
                .map(|r| r.first_line.clone())
                .collect::<Vec<_>>()
        )
    })
}

/// Waits (≤ 5 s) until the agent's connection for `call_id` is over; returns it.
async fn agent_closed(agent: &TestAgent, call_id: &str) -> Connection {
    agent
        .wait_conn(call_id, Duration::from_secs(5), "socket closed", |conn| {
            conn.finished
        })
        .await;
    agent.connection_for(call_id)
}

/// The agent got `stop` (`why`: when), then the gateway closed its socket with 1000.
fn assert_stopped_then_closed(conn: &Connection, why: &str) {
    let names = conn.event_names();
    assert!(names.iter().any(|n| n == "stop"), "{why}; got {names:?}");
    assert_eq!(
        conn.close_code,
        Some(1000),
        "{why}: then the gateway closes the agent socket with 1000"
    );
}

/// The `dialtone_media_sessions` gauge from `/metrics` (None when not exported yet).
fn media_sessions(server: &Server) -> Option<f64> {
    let metrics = server.metrics();
    let name = "dialtone_media_sessions";
    metrics.has(name).then(|| metrics.sum(name, &[]))
}

/// After the calls ended, their media tasks are gone: the live media-session gauge reads 0.
fn assert_media_tasks_freed(server: &Server) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = media_sessions(server);
        // Absent: no media session was ever started (the call ended before the ACK).
        if now.is_none() || now == Some(0.0) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "dialtone_media_sessions is {now:?} 5 s after every call ended (expected 0): a \
             media task outlived its call"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// A server, an echo agent, and an answered call with some RTP sent.
struct Answered {
    server: Server,
    agent: TestAgent,
    call_id: String,
    leg: Uac,
    media: SocketAddr,
    t0: i64,
}

async fn answered_call(env: &[(&str, &str)], send_rtp: bool) -> Answered {
    let server = Server::start_with(env);
    let agent = TestAgent::start(Mode::Echo).await;
    let agent_id = server.create_agent(&agent.url(), "mulaw_8000");
    let call_id = server.register_call(&agent_id);
    let t0 = now_ms();
    let mut leg = Uac::new(server.sip_addr(), &call_id);
    let ok = leg.answered_call(&server);
    let media = ok
        .sdp_media_addr()
        .unwrap_or_else(|| panic!("the 200 carries no usable SDP:\n{}", ok.raw));
    if send_rtp {
        leg.send_rtp(media, 1, 25);
    }
    agent
        .wait_conn(&call_id, Duration::from_secs(5), "`start`", |_| true)
        .await;
    Answered {
        server,
        agent,
        call_id,
        leg,
        media,
        t0,
    }
}

// ---------------------------------------------------------------------------------------
// 1. stop-call
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_call_sends_bye_stops_the_agent_and_ends_manual_stopped() {
    let mut c = answered_call(&[], true).await;
    c.agent
        .wait_conn(&c.call_id, Duration::from_secs(5), "media", |conn| {
            conn.event_names().iter().any(|n| n == "media")
        })
        .await;
    let (status, body) = c.server.stop_call(&c.call_id);
    assert!(
        (200..300).contains(&status),
        "stop-call of a live call: {status} {body}"
    );
    let bye = expect_bye(&mut c.leg, Duration::from_secs(5), "stop-call");
    assert_eq!(
        bye.header("call-id"),
        Some(c.leg.call_id.as_str()),
        "the BYE belongs to our dialog:\n{}",
        bye.raw
    );
    let conn = agent_closed(&c.agent, &c.call_id).await;
    assert_stopped_then_closed(&conn, "the agent must receive `stop` on stop-call");
    let call = expect_final(&c.server, &c.call_id, "ended", "manual_stopped", c.t0, true);
    // A second stop of an ended call is refused, not a second ending.
    let (again, body) = c.server.stop_call(&c.call_id);
    assert_eq!(again, 409, "stop-call of an ended call: {body}");
    let after = c.server.get_call(&c.call_id);
    assert_eq!(
        after["end_timestamp"], call["end_timestamp"],
        "the ending is recorded once: {after}"
    );
    assert_media_tasks_freed(&c.server);
}

// ---------------------------------------------------------------------------------------
// 2. agent hangup: the `hangup` event, and a close with 1000
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_hangup_event_sends_bye_and_ends_agent_hangup() {
    let mut c = answered_call(&[("DIALTONE__CALLS__HANGUP_DRAIN_MS", "1000")], true).await;
    c.agent.command(&c.call_id, AgentCmd::Hangup);
    expect_bye(&mut c.leg, Duration::from_secs(8), "agent `hangup`");
    expect_final(&c.server, &c.call_id, "ended", "agent_hangup", c.t0, true);
    let conn = agent_closed(&c.agent, &c.call_id).await;
    assert_stopped_then_closed(&conn, "after `hangup` the agent still gets `stop`");
    assert_media_tasks_freed(&c.server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_close_1000_sends_bye_and_ends_agent_hangup() {
    let mut c = answered_call(&[("DIALTONE__CALLS__HANGUP_DRAIN_MS", "1000")], true).await;
    c.agent.command(&c.call_id, AgentCmd::Close(1000));
    expect_bye(&mut c.leg, Duration::from_secs(8), "agent close 1000");
    expect_final(&c.server, &c.call_id, "ended", "agent_hangup", c.t0, true);
    agent_closed(&c.agent, &c.call_id).await;
    assert_media_tasks_freed(&c.server);
}

// ---------------------------------------------------------------------------------------
// 3. agent abnormal close
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_close_1011_sends_bye_and_ends_websocket_runtime_error() {
    let mut c = answered_call(&[], true).await;
    c.agent.command(&c.call_id, AgentCmd::Close(1011));
    expect_bye(&mut c.leg, Duration::from_secs(8), "agent close 1011");
    expect_final(
        &c.server,
        &c.call_id,
        "error",
        "error_llm_websocket_runtime",
        c.t0,
        true,
    );
    agent_closed(&c.agent, &c.call_id).await;
    assert_media_tasks_freed(&c.server);
}

// ---------------------------------------------------------------------------------------
// 4. CANCEL before the answer
// ---------------------------------------------------------------------------------------

/// A server, an agent that stalls its websocket upgrade, and a call ringing while the
/// gateway waits on that agent.
struct Ringing {
    server: Server,
    agent: TestAgent,
    call_id: String,
    leg: Uac,
    t0: i64,
}

async fn ringing_on_a_stalled_agent() -> Ringing {
    let server = Server::start_with(&[("DIALTONE__CALLS__AGENT_CONNECT_TIMEOUT_MS", "15000")]);
    let agent = TestAgent::start(Mode::Stall(Duration::from_secs(30))).await;
    let agent_id = server.create_agent(&agent.url(), "mulaw_8000");
    let call_id = server.register_call(&agent_id);
    let t0 = now_ms();
    let mut leg = Uac::new(server.sip_addr(), &call_id);
    let offer = leg.sdp(PCMU, "sendrecv");
    if let Some(early) = leg.invite_until_ringing(Some(&offer)) {
        panic!(
            "the INVITE got a final response before ringing (the agent never answers its \
             upgrade):\n{}",
            early.raw
        );
    }
    // The gateway is now waiting on the stalled agent: make sure it really reached it.
    agent
        .assert_within(
            Duration::from_secs(5),
            "the gateway sending the agent its upgrade request",
            |all| all.iter().any(|c| c.stalled_bytes > 0),
        )
        .await;
    Ringing {
        server,
        agent,
        call_id,
        leg,
        t0,
    }
}

/// The half-open agent connection is given up after `why`, not left hanging.
async fn assert_stalled_agent_released(agent: &TestAgent, why: &str) {
    agent
        .assert_within(
            Duration::from_secs(5),
            &format!("the gateway closing the stalled agent connection after {why}"),
            |all| all.iter().all(|c| c.stalled_peer_closed),
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_while_agent_stalls_gets_487_and_ends_user_hangup() {
    let mut r = ringing_on_a_stalled_agent().await;
    let (cancel_status, invite_final) = r.leg.cancel(Duration::from_secs(8));
    assert_eq!(cancel_status, Some(200), "the CANCEL is answered 200");
    let invite_final = invite_final.expect("no final response to the INVITE after CANCEL");
    assert_eq!(
        invite_final.status(),
        Some(487),
        "a cancelled INVITE ends with 487:\n{}",
        invite_final.raw
    );
    expect_final(&r.server, &r.call_id, "ended", "user_hangup", r.t0, false);
    assert_stalled_agent_released(&r.agent, "the CANCEL").await;
    // Nothing more arrives for this call: no 200, no BYE.
    let late = r.leg.recv(Duration::from_millis(1500));
    if let Some(m) = late {
        assert!(
            m.cseq_method() != Some("INVITE") && m.method() != Some("BYE"),
            "after the 487 and its ACK, the gateway sent (a retransmitted 487 means the ACK \
             was not matched to the INVITE transaction):\n{}",
            m.raw
        );
    }
}

// ---------------------------------------------------------------------------------------
// 5. no RTP
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_rtp_at_all_ends_with_bye_and_no_audio_error() {
    let mut c = answered_call(&[("DIALTONE__CALLS__NO_AUDIO_TIMEOUT_MS", "1500")], false).await;
    expect_bye(&mut c.leg, Duration::from_secs(10), "no RTP");
    expect_final(
        &c.server,
        &c.call_id,
        "error",
        "error_no_audio_received",
        c.t0,
        true,
    );
    let conn = agent_closed(&c.agent, &c.call_id).await;
    assert_stopped_then_closed(
        &conn,
        "the agent gets `stop` when the call ends for no audio",
    );
    assert_media_tasks_freed(&c.server);
}

// ---------------------------------------------------------------------------------------
// 6. INVITE without SDP: our offer in the 200, the answer in the ACK
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invite_without_sdp_offer_in_200_answer_in_ack_then_bye() {
    let server = Server::start();
    let agent = TestAgent::start(Mode::Echo).await;
    let agent_id = server.create_agent(&agent.url(), "mulaw_8000");
    let call_id = server.register_call(&agent_id);
    let t0 = now_ms();
    let mut leg = Uac::new(server.sip_addr(), &call_id);
    let outcome = leg.invite(None, Duration::from_secs(15));
    let (prov, fin) = (outcome.provisional, outcome.final_response);
    let ok = fin.unwrap_or_else(|| panic!("no final response (provisional {prov:?})"));
    assert_eq!(
        ok.status(),
        Some(200),
        "an INVITE without SDP is answered:\n{}",
        ok.raw
    );
    assert!(
        ok.header("content-type")
            .is_some_and(|t| t.eq_ignore_ascii_case("application/sdp")),
        "the 200 carries our offer as application/sdp:\n{}",
        ok.raw
    );
    let offered = sdp_audio_payload_types(&ok.body);
    assert!(
        offered.contains(&0),
        "our offer must include PCMU (0); it offers {offered:?}:\n{}",
        ok.body
    );
    let media = sdp_media_addr(&ok.body)
        .unwrap_or_else(|| panic!("the offer has no c=/m=audio:\n{}", ok.body));
    let answer = leg.sdp(&[0], "sendrecv");
    leg.ack(1, Some(&answer));
    leg.send_rtp(media, 1, 25);
    let got = leg.count_rtp(media, 0, 5, Duration::from_secs(5));
    assert!(
        got >= 5,
        "the caller should receive PCMU RTP (PT 0) from {media} after answering in the ACK; \
         got {got} packets"
    );
    agent
        .wait_conn(&call_id, Duration::from_secs(5), "caller media", |conn| {
            conn.event_names().iter().any(|n| n == "media")
        })
        .await;
    assert!(
        leg.requests.iter().all(|r| r.method() != Some("BYE")),
        "the gateway hung up a call answered in the ACK"
    );
    assert_eq!(leg.bye(), Some(200), "the caller's BYE is answered 200");
    let call = expect_final(&server, &call_id, "ended", "user_hangup", t0, true);
    assert_media_tasks_freed(&server);
    // The call object's negotiated codec is the one the ACK's answer chose.
    assert_eq!(
        call["codec"], "PCMU",
        "the codec negotiated through the ACK's answer is recorded on the call: {call}"
    );
}

// ---------------------------------------------------------------------------------------
// 7. re-INVITE hold and unhold
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reinvite_hold_pauses_the_no_audio_timeout_and_unhold_resumes() {
    // No RTP at all: without the hold the call would end after 2 s (error_no_audio_received).
    let mut c = answered_call(&[("DIALTONE__CALLS__NO_AUDIO_TIMEOUT_MS", "2000")], false).await;
    let hold = c.leg.sdp(PCMU, "sendonly");
    let held = c.leg.reinvite(&hold);
    assert_eq!(held.status(), Some(200), "hold re-INVITE:\n{}", held.raw);
    assert!(
        held.body.contains("a=recvonly"),
        "a sendonly offer is answered recvonly:\n{}",
        held.body
    );
    // Held for more than twice the no-audio timeout: no BYE.
    if let Some(bye) = c.leg.wait_request("BYE", Duration::from_secs(5)) {
        panic!(
            "the gateway hung up a held call (hold must pause the no-audio timeout):\n{}\n\
             call object: {}",
            bye.raw,
            c.server.get_call(&c.call_id)
        );
    }
    let call = c.server.get_call(&c.call_id);
    assert_eq!(
        call["call_status"], "ongoing",
        "a held call is ongoing: {call}"
    );

    let resume = c.leg.sdp(PCMU, "sendrecv");
    let resumed = c.leg.reinvite(&resume);
    assert_eq!(
        resumed.status(),
        Some(200),
        "unhold re-INVITE:\n{}",
        resumed.raw
    );
    assert!(
        resumed.body.contains("a=sendrecv"),
        "a sendrecv offer is answered sendrecv:\n{}",
        resumed.body
    );
    let media = resumed.sdp_media_addr().unwrap_or(c.media);
    assert_eq!(
        media, c.media,
        "the media address stays the same across hold"
    );
    c.leg.send_rtp(media, 100, 15);
    let got = c.leg.count_rtp(media, 0, 5, Duration::from_secs(3));
    assert!(
        got >= 5,
        "RTP flows to the caller again after unhold; got {got}"
    );
    assert!(
        c.leg.requests.iter().all(|r| r.method() != Some("BYE")),
        "the gateway hung up around the unhold"
    );
    assert_eq!(c.leg.bye(), Some(200), "the caller's BYE is answered 200");
    expect_final(&c.server, &c.call_id, "ended", "user_hangup", c.t0, true);
    assert_media_tasks_freed(&c.server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_hold_and_unhold_keep_the_call_up() {
    let mut c = answered_call(&[("DIALTONE__CALLS__NO_AUDIO_TIMEOUT_MS", "2000")], false).await;
    let hold = c.leg.sdp(PCMU, "sendonly");
    let held = c.leg.update(&hold);
    assert_eq!(held.status(), Some(200), "hold UPDATE:\n{}", held.raw);
    assert!(
        held.body.contains("a=recvonly"),
        "a sendonly offer in UPDATE is answered recvonly:\n{}",
        held.body
    );
    if let Some(bye) = c.leg.wait_request("BYE", Duration::from_secs(4)) {
        panic!("the gateway hung up a call held by UPDATE:\n{}", bye.raw);
    }
    let resume = c.leg.sdp(PCMU, "sendrecv");
    let resumed = c.leg.update(&resume);
    assert_eq!(
        resumed.status(),
        Some(200),
        "unhold UPDATE:\n{}",
        resumed.raw
    );
    assert!(
        resumed.body.contains("a=sendrecv"),
        "a sendrecv offer in UPDATE is answered sendrecv:\n{}",
        resumed.body
    );
    assert_eq!(c.leg.bye(), Some(200), "the caller's BYE is answered 200");
    expect_final(&c.server, &c.call_id, "ended", "user_hangup", c.t0, true);
    assert_media_tasks_freed(&c.server);
}

/// Sends a re-INVITE (keeping the media as it is) and returns its CSeq and final
/// response, without ACKing it.
fn reinvite_without_ack(leg: &mut Uac) -> (u32, SipMsg) {
    leg.cseq += 1;
    let cseq = leg.cseq;
    let offer = leg.sdp(PCMU, "sendrecv");
    let req = leg.in_dialog("INVITE", cseq, Some(&offer));
    let (_, fin) = leg.transaction(&req, Duration::from_secs(10));
    let fin = fin.expect("no final response to the re-INVITE within 10 s");
    assert_eq!(fin.status(), Some(200), "re-INVITE:\n{}", fin.raw);
    (cseq, fin)
}

/// Counts the 200s to INVITE `cseq` received during `span`; fails on a BYE.
fn count_resent_200(leg: &mut Uac, cseq: u32, span: Duration) -> usize {
    let until = Instant::now() + span;
    let mut n = 0;
    while let Some(msg) = leg.recv(until.saturating_duration_since(Instant::now())) {
        assert_ne!(
            msg.method(),
            Some("BYE"),
            "the gateway hung up:\n{}",
            msg.raw
        );
        if msg.status() == Some(200)
            && msg.cseq_method() == Some("INVITE")
            && msg.cseq_number() == Some(cseq)
        {
            n += 1;
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reinvite_200_is_resent_over_udp_until_its_ack() {
    // T1 = 100 ms: resends at 100, 300, 700 ms, ... after the 200.
    let mut c = answered_call(&[("DIALTONE__SIP__T1_MS", "100")], true).await;
    let (cseq, _) = reinvite_without_ack(&mut c.leg);
    let resent = count_resent_200(&mut c.leg, cseq, Duration::from_millis(1000));
    assert!(
        resent >= 2,
        "the 200 must be resent until the ACK; saw {resent}"
    );
    c.leg.ack(cseq, None);
    // What was already on its way may still land; after that, silence.
    count_resent_200(&mut c.leg, cseq, Duration::from_millis(300));
    let after = count_resent_200(&mut c.leg, cseq, Duration::from_millis(2500));
    assert_eq!(after, 0, "the 200 kept coming after its ACK");
    let call = c.server.get_call(&c.call_id);
    assert_eq!(call["call_status"], "ongoing", "{call}");
    assert_eq!(c.leg.bye(), Some(200));
    expect_final(&c.server, &c.call_id, "ended", "user_hangup", c.t0, true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reinvite_200_never_acked_ends_the_call_with_bye() {
    // T1 = 50 ms: given up after 64*T1 = 3.2 s (RFC 3261 §13.3.1.4).
    let mut c = answered_call(&[("DIALTONE__SIP__T1_MS", "50")], true).await;
    let (_, _) = reinvite_without_ack(&mut c.leg);
    let bye = expect_bye(
        &mut c.leg,
        Duration::from_secs(10),
        "after an unacknowledged re-INVITE 200",
    );
    assert_eq!(bye.header("call-id"), Some(c.leg.call_id.as_str()));
    expect_final(&c.server, &c.call_id, "error", "error_unknown", c.t0, true);
    assert_media_tasks_freed(&c.server);
}

// ---------------------------------------------------------------------------------------
// 8. ports are freed
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtp_ports_are_freed_by_every_ending() {
    // Two port pairs: room for exactly two calls at once.
    let lo = free_port_block(4);
    let range = format!("{}-{}", lo, lo + 3);
    let server = Server::start_with(&[
        ("DIALTONE__MEDIA__RTP_PORTS", range.as_str()),
        ("DIALTONE__CALLS__HANGUP_DRAIN_MS", "500"),
        // These calls send no RTP; they must not end for it while the test runs.
        ("DIALTONE__CALLS__NO_AUDIO_TIMEOUT_MS", "120000"),
    ]);
    let agent = TestAgent::start(Mode::Echo).await;
    let agent_id = server.create_agent(&agent.url(), "mulaw_8000");
    let in_range = |ok: &SipMsg| {
        let port = ok.sdp_media_addr().expect("SDP in the 200").port();
        assert!(
            (lo..=lo + 3).contains(&port),
            "media port {port} outside the configured range {range}"
        );
        port
    };

    // A and B take both pairs.
    let a_id = server.register_call(&agent_id);
    let mut a = Uac::new(server.sip_addr(), &a_id);
    let a_port = in_range(&a.answered_call(&server));
    let b_id = server.register_call(&agent_id);
    let mut b = Uac::new(server.sip_addr(), &b_id);
    let b_port = in_range(&b.answered_call(&server));
    assert_ne!(a_port, b_port, "two live calls share an RTP port");

    // C finds the range full: refused before its registration is claimed.
    let c_id = server.register_call(&agent_id);
    let mut c = Uac::new(server.sip_addr(), &c_id);
    let offer = c.sdp(PCMU, "sendrecv");
    let fin = c
        .invite(Some(&offer), Duration::from_secs(10))
        .final_response;
    let fin = fin.expect("no final response for the third concurrent call");
    assert_eq!(
        fin.status(),
        Some(503),
        "with both port pairs taken the third call is refused 503:\n{}",
        fin.raw
    );
    let still = server.get_call(&c_id);
    assert_eq!(
        still["call_status"], "registered",
        "a call refused for lack of ports stays dialable: {still}"
    );

    // A ends by the caller's BYE: C (same registration, new dialog) now gets its port.
    let t0 = now_ms();
    assert_eq!(a.bye(), Some(200));
    expect_final(&server, &a_id, "ended", "user_hangup", t0, true);
    let mut c = Uac::new(server.sip_addr(), &c_id);
    let c_port = in_range(&c.answered_call(&server));
    assert_eq!(c_port, a_port, "C takes the pair A freed");

    // B ends by stop-call; D gets B's pair.
    let (status, body) = server.stop_call(&b_id);
    assert!((200..300).contains(&status), "stop-call: {status} {body}");
    expect_bye(&mut b, Duration::from_secs(5), "stop-call of B");
    expect_final(&server, &b_id, "ended", "manual_stopped", t0, true);
    let d_id = server.register_call(&agent_id);
    let mut d = Uac::new(server.sip_addr(), &d_id);
    assert_eq!(in_range(&d.answered_call(&server)), b_port);

    // C ends by the agent hanging up; E gets C's pair.
    agent
        .wait_conn(&c_id, Duration::from_secs(5), "`start`", |_| true)
        .await;
    agent.command(&c_id, AgentCmd::Hangup);
    expect_bye(&mut c, Duration::from_secs(8), "agent hangup of C");
    expect_final(&server, &c_id, "ended", "agent_hangup", t0, true);
    let e_id = server.register_call(&agent_id);
    let mut e = Uac::new(server.sip_addr(), &e_id);
    assert_eq!(in_range(&e.answered_call(&server)), c_port);

    // Three more in sequence through the same two pairs, after D and E end.
    assert_eq!(d.bye(), Some(200));
    assert_eq!(e.bye(), Some(200));
    expect_final(&server, &d_id, "ended", "user_hangup", t0, true);
    expect_final(&server, &e_id, "ended", "user_hangup", t0, true);
    for round in 0..3 {
        let id = server.register_call(&agent_id);
        let mut leg = Uac::new(server.sip_addr(), &id);
        let offer = leg.sdp(PCMU, "sendrecv");
        let fin = leg
            .invite(Some(&offer), Duration::from_secs(10))
            .final_response;
        let fin = fin.unwrap_or_else(|| panic!("round {round}: no final response"));
        assert_eq!(
            fin.status(),
            Some(200),
            "round {round}: a sequential call is answered after the others freed their \
             ports:\n{}",
            fin.raw
        );
        in_range(&fin);
        leg.ack(1, None);
        assert_eq!(leg.bye(), Some(200), "round {round}: BYE");
        expect_final(&server, &id, "ended", "user_hangup", t0, true);
    }
    assert!(
        server.log().contains("call ended"),
        "the server logs each ending"
    );
    assert_media_tasks_freed(&server);
}

// ---------------------------------------------------------------------------------------
// More endings: the agent's connection dropping, stop-call while ringing, BYE before the
// ACK, an ACK that never comes, RTP that stops (inactivity)
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_connection_dropped_without_close_ends_lost_connection() {
    let mut c = answered_call(&[], true).await;
    c.agent.command(&c.call_id, AgentCmd::Drop);
    expect_bye(&mut c.leg, Duration::from_secs(8), "agent TCP dropped");
    expect_final(
        &c.server,
        &c.call_id,
        "error",
        "error_llm_websocket_lost_connection",
        c.t0,
        true,
    );
    assert_media_tasks_freed(&c.server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_call_while_ringing_refuses_the_invite_and_ends_manual_stopped() {
    let mut r = ringing_on_a_stalled_agent().await;
    let (status, body) = r.server.stop_call(&r.call_id);
    assert!(
        (200..300).contains(&status),
        "stop-call of a ringing call: {status} {body}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    let fin = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = r
            .leg
            .recv(left)
            .expect("no final response to the INVITE within 5 s of stop-call");
        if msg.cseq_method() == Some("INVITE") && msg.status().is_some_and(|s| s >= 200) {
            break msg;
        }
    };
    let code = fin.status().unwrap();
    assert!(
        (400..700).contains(&code),
        "a call stopped while ringing is refused, never answered; got:\n{}",
        fin.raw
    );
    r.leg.ack_non_2xx(&fin);
    expect_final(
        &r.server,
        &r.call_id,
        "ended",
        "manual_stopped",
        r.t0,
        false,
    );
    assert_stalled_agent_released(&r.agent, "stop-call").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bye_before_the_ack_ends_user_hangup() {
    let server = Server::start();
    let agent = TestAgent::start(Mode::Echo).await;
    let agent_id = server.create_agent(&agent.url(), "mulaw_8000");
    let call_id = server.register_call(&agent_id);
    let t0 = now_ms();
    let mut leg = Uac::new(server.sip_addr(), &call_id);
    let offer = leg.sdp(PCMU, "sendrecv");
    let fin = leg
        .invite(Some(&offer), Duration::from_secs(15))
        .final_response;
    let ok = fin.expect("no final response to the INVITE");
    assert_eq!(ok.status(), Some(200), "{}", ok.raw);
    // No ACK: hang up at once.
    assert_eq!(leg.bye(), Some(200), "a BYE before the ACK is answered 200");
    expect_final(&server, &call_id, "ended", "user_hangup", t0, true);
    let conn = agent_closed(&agent, &call_id).await;
    assert_stopped_then_closed(&conn, "the agent gets `stop`");
    assert_media_tasks_freed(&server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_ack_ends_the_call_with_bye_after_64_t1() {
    // T1 = 100 ms: the 200 is retransmitted, and the call given up after 6.4 s.
    let server = Server::start_with(&[("DIALTONE__SIP__T1_MS", "100")]);
    let agent = TestAgent::start(Mode::Echo).await;
    let agent_id = server.create_agent(&agent.url(), "mulaw_8000");
    let call_id = server.register_call(&agent_id);
    let t0 = now_ms();
    let mut leg = Uac::new(server.sip_addr(), &call_id);
    let offer = leg.sdp(PCMU, "sendrecv");
    let fin = leg
        .invite(Some(&offer), Duration::from_secs(15))
        .final_response;
    let ok = fin.expect("no final response to the INVITE");
    assert_eq!(ok.status(), Some(200), "{}", ok.raw);
    let mut retransmitted = 0;
    let deadline = Instant::now() + Duration::from_secs(15);
    let bye = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(msg) = leg.recv(left) else {
            panic!(
                "no BYE within 15 s of an unacknowledged 200 ({retransmitted} 200 \
                 retransmissions seen)"
            );
        };
        if msg.status() == Some(200) && msg.cseq_method() == Some("INVITE") {
            retransmitted += 1;
        }
        if msg.method() == Some("BYE") {
            break msg;
        }
    };
    assert!(
        retransmitted >= 2,
        "the 200 must be retransmitted while no ACK comes; saw {retransmitted}"
    );
    assert_eq!(bye.header("call-id"), Some(leg.call_id.as_str()));
    let call = server.wait_call_final(&call_id, Duration::from_secs(10));
    eprintln!("call {call_id} final: {call}");
    assert_call_final(&call, "error", "error_unknown", t0, true);
    assert_media_tasks_freed(&server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtp_that_stops_ends_the_call_for_inactivity() {
    let server = Server::start();
    let agent = TestAgent::start(Mode::Echo).await;
    let (status, body) = server.api(
        "POST",
        "/create-agent",
        Some(json!({
            "agent_name": unique("td-silence-"),
            "end_call_after_silence_ms": 10_000,
            "response_engine": {
                "type": "audio-websocket",
                "url": agent.url(),
                "audio_encoding": "mulaw_8000",
            },
        })),
    );
    assert!(
        (200..300).contains(&status),
        "create-agent: {status} {body}"
    );
    let agent_id = body["agent_id"].as_str().expect("agent_id").to_string();
    let call_id = server.register_call(&agent_id);
    let t0 = now_ms();
    let mut leg = Uac::new(server.sip_addr(), &call_id);
    let ok = leg.answered_call(&server);
    let media = ok.sdp_media_addr().expect("SDP in the 200");
    leg.send_rtp(media, 1, 25);
    // Then silence at the RTP level: after 10 s of it the gateway hangs up.
    expect_bye(&mut leg, Duration::from_secs(20), "RTP stopped");
    expect_final(&server, &call_id, "ended", "inactivity", t0, true);
    assert_media_tasks_freed(&server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_call_before_the_ack_sends_bye_and_ends_manual_stopped() {
    let server = Server::start();
    let agent = TestAgent::start(Mode::Echo).await;
    let agent_id = server.create_agent(&agent.url(), "mulaw_8000");
    let call_id = server.register_call(&agent_id);
    let t0 = now_ms();
    let mut leg = Uac::new(server.sip_addr(), &call_id);
    let offer = leg.sdp(PCMU, "sendrecv");
    let fin = leg
        .invite(Some(&offer), Duration::from_secs(15))
        .final_response;
    let ok = fin.expect("no final response to the INVITE");
    assert_eq!(ok.status(), Some(200), "{}", ok.raw);
    // The 200 is not ACKed yet: stop the call through the API.
    let (status, body) = server.stop_call(&call_id);
    assert!(
        (200..300).contains(&status),
        "stop-call of an answered, unacknowledged call: {status} {body}"
    );
    expect_bye(&mut leg, Duration::from_secs(8), "stop-call before the ACK");
    expect_final(&server, &call_id, "ended", "manual_stopped", t0, true);
    let conn = agent_closed(&agent, &call_id).await;
    assert_stopped_then_closed(&conn, "the agent gets `stop`");
    assert_media_tasks_freed(&server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reinvite_without_sdp_hold_answered_in_the_ack_keeps_the_call_up() {
    // A delayed-offer re-INVITE: no SDP in it, our offer in the 200, the caller's answer
    // (a hold: sendonly) in the ACK. No RTP at all: if the ACK's answer were ignored the
    // call would end after 2 s for no audio.
    let mut c = answered_call(&[("DIALTONE__CALLS__NO_AUDIO_TIMEOUT_MS", "2000")], false).await;
    c.leg.cseq += 1;
    let cseq = c.leg.cseq;
    let req = c.leg.in_dialog("INVITE", cseq, None);
    let (_, fin) = c.leg.transaction(&req, Duration::from_secs(10));
    let ok = fin.expect("no final response to the re-INVITE without SDP");
    assert_eq!(ok.status(), Some(200), "{}", ok.raw);
    assert!(
        sdp_audio_payload_types(&ok.body).contains(&0),
        "the 200 to a re-INVITE without SDP carries an offer with PCMU:\n{}",
        ok.body
    );
    let hold_answer = c.leg.sdp(&[0], "sendonly");
    c.leg.ack(cseq, Some(&hold_answer));
    if let Some(bye) = c.leg.wait_request("BYE", Duration::from_secs(5)) {
        panic!(
            "the gateway hung up a call held through the ACK's answer (the answer in the \
             ACK of a re-INVITE must apply):\n{}\ncall object: {}",
            bye.raw,
            c.server.get_call(&c.call_id)
        );
    }
    let resume = c.leg.sdp(PCMU, "sendrecv");
    let resumed = c.leg.reinvite(&resume);
    assert_eq!(resumed.status(), Some(200), "unhold:\n{}", resumed.raw);
    c.leg.send_rtp(c.media, 200, 15);
    assert_eq!(c.leg.bye(), Some(200), "the caller's BYE is answered 200");
    expect_final(&c.server, &c.call_id, "ended", "user_hangup", c.t0, true);
    assert_media_tasks_freed(&c.server);
}

// ---------------------------------------------------------------------------------------
// The configured maximum call length
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maximum_call_duration_ends_with_bye() {
    // The agent allows an hour; the server's ceiling is 2 s. RTP keeps flowing, so only the
    // duration limit can end the call.
    let mut c = answered_call(&[("DIALTONE__CALLS__MAX_CALL_DURATION_MS", "2000")], true).await;
    expect_bye(&mut c.leg, Duration::from_secs(10), "maximum duration");
    expect_final(
        &c.server,
        &c.call_id,
        "ended",
        "max_duration_reached",
        c.t0,
        true,
    );
    assert_media_tasks_freed(&c.server);
}
