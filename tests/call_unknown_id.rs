//! Issue 3: an INVITE to a call_id that was never registered is answered 404, and no agent
//! is contacted; each refusal is counted in `dialtone_inbound_calls_rejected_total`.

mod harness;

use std::time::Duration;

use harness::agent::{Mode, TestAgent};
use harness::server::Server;
use harness::uac::Uac;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invite_to_an_unregistered_call_id_gets_404() {
    let server = Server::start();
    let agent = TestAgent::start(Mode::Echo).await;
    // A real agent and a real registered call exist, so the 404 is about the id alone.
    let agent_id = server.create_agent(&agent.url(), "mulaw_8000");
    let real_id = server.register_call(&agent_id);

    for user in [
        "call_0000000000000000000000000000".to_string(),
        format!("{real_id}x"),
        "nosuchcall".to_string(),
    ] {
        let mut uac = Uac::new(server.sip_addr(), &user);
        let offer = uac.sdp(&[0, 101], "sendrecv");
        let outcome = uac.invite(Some(&offer), Duration::from_secs(10));
        assert_eq!(
            outcome.final_status(),
            Some(404),
            "INVITE sip:{user}@…: {:?}",
            outcome.final_response.map(|r| r.raw)
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        agent.connections().is_empty(),
        "no agent websocket for an unknown id"
    );
    // Each refusal is counted.
    let metrics = server.metrics().text;
    assert!(
        metrics
            .lines()
            .any(|l| l == "dialtone_inbound_calls_rejected_total{cause=\"no_route\"} 3"),
        "{metrics}"
    );
    // The registered call is untouched.
    let call = server.get_call(&real_id);
    assert_eq!(call["call_status"], "registered", "{call}");
}
