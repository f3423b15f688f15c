//! Issue 3: an INVITE to a call_id that was never registered is answered 404, and no agent
//! is contacted; each refusal is counted in `dialtone_inbound_calls_rejected_total`.

mod common_call;

use std::time::Duration;

use common_call::agent::{Mode, TestAgent};
use common_call::sip::Uac;
use common_call::Dialtone;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invite_to_an_unregistered_call_id_gets_404() {
    let server = Dialtone::start().await;
    let agent = TestAgent::start(Mode::Echo).await;
    // A real agent and a real registered call exist, so the 404 is about the id alone.
    let agent_id = server.create_agent(&agent.url(), "mulaw_8000").await;
    let registered = server.register_call(&agent_id).await;
    let real_id = registered["call_id"].as_str().unwrap().to_string();

    for user in [
        "call_0000000000000000000000000000".to_string(),
        format!("{real_id}x"),
        "nosuchcall".to_string(),
    ] {
        let mut uac = Uac::new(server.sip).await;
        let sent = uac.send_invite(&user, &[0]).await;
        let outcome = uac.await_final(sent, Duration::from_secs(10)).await;
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
    let metrics = server.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l == "dialtone_inbound_calls_rejected_total{cause=\"no_route\"} 3"),
        "{metrics}"
    );
    // The registered call is untouched.
    let call = server.get_call(&real_id).await;
    assert_eq!(call["call_status"], "registered", "{call}");
}
