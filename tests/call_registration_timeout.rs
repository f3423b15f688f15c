//! Issue 3: a registered call that nobody dials ends as `registered_call_timeout` once the
//! registration window (here 1.5 s) closes, and dialling it afterwards is rejected. A call
//! dialled in time is not cut by that timer.

mod harness;

use std::time::Duration;

use harness::agent::{Mode, TestAgent};
use harness::now_ms;
use harness::server::Server;
use harness::uac::Uac;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undialled_call_times_out_and_cannot_be_dialled_later() {
    let server = Server::start_with(&[("DIALTONE__CALLS__REGISTERED_CALL_TIMEOUT_MS", "1500")]);
    let agent = TestAgent::start(Mode::Echo).await;
    let agent_id = server.create_agent(&agent.url(), "mulaw_8000");

    let registered_at_ms = now_ms();
    let idle = server.register_call(&agent_id);
    let dialled = server.register_call(&agent_id);

    // Dial the second one at once and hold it well past the window.
    let mut uac = Uac::new(server.sip_addr(), &dialled);
    let offer = uac.sdp(&[0, 101], "sendrecv");
    let outcome = uac.invite(Some(&offer), Duration::from_secs(10));
    assert_eq!(
        outcome.final_status(),
        Some(200),
        "dialled in time: {:?}",
        outcome.final_response.as_ref().map(|r| &r.raw)
    );
    let ok = outcome.final_response.unwrap();
    uac.ack(1, None);
    let media_to = ok.sdp_media_addr().expect("SDP in the 200");
    uac.send_rtp(media_to, 0, 150); // 3 s of caller audio

    // Meanwhile the idle one timed out.
    let call = server.wait_call_final(&idle, Duration::from_secs(8));
    assert_eq!(
        call["disconnection_reason"], "registered_call_timeout",
        "{call}"
    );
    assert!(
        call["call_status"] == "ended" || call["call_status"] == "error",
        "{call}"
    );
    // When it ended, by the server's own clock (same machine): not before the 1.5 s
    // window closed, and within a few seconds of it.
    let ended_after = call["end_timestamp"]
        .as_i64()
        .unwrap_or_else(|| panic!("a timed-out call has end_timestamp: {call}"))
        - registered_at_ms;
    assert!(
        (1400..=6000).contains(&ended_after),
        "the registration should expire 1.5 s after registering (a few seconds at most); \
         it ended {ended_after} ms after: {call}"
    );

    // The held call is still up, past the window.
    let live = server.get_call(&dialled);
    assert_eq!(
        live["call_status"], "ongoing",
        "a dialled call is not cut by the registration timer: {live}"
    );
    assert_eq!(uac.bye(), Some(200));
    let ended = server.wait_call_final(&dialled, Duration::from_secs(10));
    assert_eq!(ended["disconnection_reason"], "user_hangup", "{ended}");

    // Dialling the timed-out call is refused, and reaches no agent.
    let before = agent.connections().len();
    let mut late = Uac::new(server.sip_addr(), &idle);
    let offer = late.sdp(&[0, 101], "sendrecv");
    let outcome = late.invite(Some(&offer), Duration::from_secs(10));
    let status = outcome.final_status().expect("a final response");
    assert!(
        (400..700).contains(&status),
        "dialling an expired registration must fail; got {status}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        agent.connections().len(),
        before,
        "no agent for an expired call"
    );
    let after = server.get_call(&idle);
    assert_eq!(
        after["disconnection_reason"], "registered_call_timeout",
        "the expired call keeps its reason: {after}"
    );
}
