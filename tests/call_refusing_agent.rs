//! Issue 3, a refusing agent: when the agent's websocket cannot be opened, the INVITE
//! fails with a final error response (never 200) and the call ends as
//! `error` / `error_llm_websocket_open`. Two ways to refuse: the agent answers the
//! upgrade with 403, or nobody listens at the agent's address.

mod harness;

use std::time::Duration;

use harness::agent::{Mode, TestAgent};
use harness::ports::free_tcp_port;
use harness::server::Server;
use harness::uac::Uac;

fn invite_fails_and_call_errors(server: &Server, agent_url: &str) {
    let agent_id = server.create_agent(agent_url, "mulaw_8000");
    let call_id = server.register_call(&agent_id);
    let mut uac = Uac::new(server.sip_addr(), &call_id);
    let offer = uac.sdp(&[0, 8, 101], "sendrecv");
    let outcome = uac.invite(Some(&offer), Duration::from_secs(20));
    let status = outcome
        .final_status()
        .unwrap_or_else(|| panic!("no final response to the INVITE within 20 s: {outcome:?}"));
    assert!(
        (400..700).contains(&status),
        "the INVITE must fail with a 4xx/5xx/6xx when the agent refuses; got {status}: {:?}",
        outcome.final_response.map(|r| r.raw)
    );
    let call = server.wait_call_final(&call_id, Duration::from_secs(10));
    assert_eq!(call["call_status"], "error", "{call}");
    assert_eq!(
        call["disconnection_reason"], "error_llm_websocket_open",
        "{call}"
    );
    assert!(
        call["end_timestamp"].is_i64(),
        "an ended call has end_timestamp: {call}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_answering_403_fails_the_invite() {
    let server = Server::start();
    let agent = TestAgent::start(Mode::Refuse(403)).await;
    invite_fails_and_call_errors(&server, &agent.url());
    let conns = agent.connections();
    assert!(
        !conns.is_empty() && conns.iter().all(|c| c.refused),
        "dialtone should have tried the agent (and been refused): {conns:?}"
    );
    assert_eq!(
        conns[0].path, "/ws",
        "the upgrade goes to the agent URL's path"
    );
    assert_eq!(
        conns[0].header("x-e2e"),
        Some("yes"),
        "the agent's configured headers ride on the upgrade request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_nobody_listens_fails_the_invite() {
    let server = Server::start();
    // A port that was free a moment ago and that nothing listens on.
    let port = free_tcp_port();
    invite_fails_and_call_errors(&server, &format!("ws://127.0.0.1:{port}/ws"));
}
