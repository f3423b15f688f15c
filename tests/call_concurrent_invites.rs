//! Issue 3, concurrency: two INVITEs for the same call_id, with different Call-IDs and
//! branches from different ports, sent at the same instant. Exactly one is answered 200;
//! the other gets a final error (any 4xx/6xx, or 5xx); the agent sees exactly one
//! websocket for the call. Repeated over several calls to give the race a chance.

mod harness;

use std::thread;
use std::time::Duration;

use harness::agent::{Mode, TestAgent};
use harness::server::Server;
use harness::uac::Uac;

const ROUNDS: usize = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_invites_for_one_call_id_exactly_one_wins() {
    let server = Server::start();
    let agent = TestAgent::start(Mode::Echo).await;
    let agent_id = server.create_agent(&agent.url(), "mulaw_8000");

    for round in 0..ROUNDS {
        let call_id = server.register_call(&agent_id);
        let mut a = Uac::new(server.sip_addr(), &call_id);
        let mut b = Uac::new(server.sip_addr(), &call_id);
        let offer_a = a.sdp(&[0, 101], "sendrecv");
        let offer_b = b.sdp(&[0, 101], "sendrecv");
        let sent_a = a.send_invite(Some(&offer_a));
        let sent_b = b.send_invite(Some(&offer_b));
        let (out_a, out_b) = thread::scope(|s| {
            let wait_a = s.spawn(|| a.await_final(sent_a, Duration::from_secs(20)));
            let wait_b = s.spawn(|| b.await_final(sent_b, Duration::from_secs(20)));
            (wait_a.join().unwrap(), wait_b.join().unwrap())
        });
        let codes = (out_a.final_status(), out_b.final_status());
        let (winner, winner_ok) = match codes {
            (Some(200), Some(c)) if c >= 400 => (&mut a, out_a.final_response.unwrap()),
            (Some(c), Some(200)) if c >= 400 => (&mut b, out_b.final_response.unwrap()),
            _ => panic!(
                "round {round}: expected exactly one 200 and one final error, got {codes:?}\n\
                 A: {:?}\nB: {:?}",
                out_a.final_response.map(|r| r.raw),
                out_b.final_response.map(|r| r.raw)
            ),
        };
        winner.ack(1, None);
        let media = winner_ok.sdp_media_addr().expect("SDP in the 200");
        winner.send_rtp(media, 0, 25);
        assert_eq!(winner.bye(), Some(200), "round {round}: BYE");
        let call = server.wait_call_final(&call_id, Duration::from_secs(10));
        assert_eq!(call["call_status"], "ended", "round {round}: {call}");
        assert_eq!(
            call["disconnection_reason"], "user_hangup",
            "round {round}: the loser must not end the winner's call: {call}"
        );

        let conns = agent
            .wait_until(Duration::from_secs(5), |c| c.iter().all(|c| c.finished))
            .await;
        let for_this_call = conns
            .iter()
            .filter(|c| {
                c.first("start")
                    .is_some_and(|s| s["start"]["callSid"] == call_id.as_str())
            })
            .count();
        assert_eq!(
            for_this_call, 1,
            "round {round}: the agent must see exactly one websocket for the call"
        );
        assert_eq!(
            conns.len(),
            round + 1,
            "round {round}: one connection per call in total, no stray attempts: {:?}",
            conns.iter().map(|c| c.event_names()).collect::<Vec<_>>()
        );
    }
}
