//! An INVITE to a user nobody routes yet gets 100 Trying, then 404 Not Found; the ACK for
//! the 404 is absorbed by the transaction: no answer to it, and no more 404s after it.

mod harness;

use std::time::Duration;

use harness::server::Server;
use harness::sip::{options_probe, Reply, Request, SipMsg, Transport, UdpClient};
use harness::sipp::Sipp;

#[test]
fn sipp_invite_over_udp_gets_404_and_ack_is_absorbed() {
    let server = Server::start();
    let run = Sipp::uac("sipp/invite_404.xml", server.sip_addr())
        .calls(3)
        .timeout(Duration::from_secs(20))
        .service("nobody")
        .run();
    run.assert_success();
}

#[test]
fn sipp_invite_over_tcp_gets_404() {
    let server = Server::start();
    let run = Sipp::uac("sipp/invite_404.xml", server.sip_addr())
        .transport("t1")
        .calls(3)
        .timeout(Duration::from_secs(20))
        .service("nobody")
        .run();
    run.assert_success();
}

#[test]
fn raw_udp_invite_gets_trying_then_404_and_nothing_after_ack() {
    let server = Server::start();
    let client = UdpClient::new(server.sip_addr());
    let invite = Request::invite("nobody", Transport::Udp, client.local());
    client.send_request(&invite);
    let (provisional, reply) = client.final_reply(Duration::from_secs(5));
    let mut codes: Vec<u16> = provisional.iter().map(SipMsg::code).collect();
    let Reply::Final(not_found) = reply else {
        panic!("expected 404 as the final answer, got {codes:?} then {reply:?}");
    };
    codes.push(not_found.code());
    assert_eq!(
        codes.last(),
        Some(&404),
        "expected 404 as the final answer, got {codes:?}"
    );
    assert!(
        codes[..codes.len() - 1].iter().all(|c| *c == 100),
        "only 100 Trying may precede the 404: {codes:?}"
    );
    assert!(not_found.to_tag().is_some(), "404 must carry a To tag");
    assert_eq!(not_found.cseq_method(), Some("INVITE"));

    client.send_request(&invite.ack_for(&not_found));
    // T1 is 500 ms: without the ACK the 404 would be retransmitted at 0.5 s and 1.5 s.
    if let Some(d) = client.recv(Duration::from_millis(1800)) {
        panic!(
            "nothing may follow the ACK, got: {}",
            String::from_utf8_lossy(&d)
        );
    }
    let m = server.metrics();
    assert!(
        m.sum("dialtone_sip_messages_in_total", &[("kind", "ACK")]) >= 1.0,
        "the ACK was received and counted:\n{}",
        m.text
    );
    server_still_answers(&server);
}

/// Without an ACK, the server retransmits the 404 on UDP (RFC 3261 §17.2.1, Timer G).
#[test]
fn unacknowledged_404_is_retransmitted_over_udp() {
    let server = Server::builder().env("DIALTONE__SIP__T1_MS", "200").start();
    let client = UdpClient::new(server.sip_addr());
    let invite = Request::invite("nobody", Transport::Udp, client.local());
    client.send_request(&invite);
    let first = client.final_response(Duration::from_secs(5));
    assert_eq!(first.code(), 404);
    let again = client
        .recv(Duration::from_secs(3))
        .and_then(|d| SipMsg::parse_response(&d))
        .expect("the 404 is retransmitted while no ACK arrives");
    assert_eq!(again.code(), 404);
    assert_eq!(
        again.to_tag(),
        first.to_tag(),
        "same To tag on retransmission"
    );
    client.send_request(&invite.ack_for(&first));
    let m = server.metrics();
    assert!(
        m.sum(
            "dialtone_sip_retransmissions_total",
            &[("direction", "sent")]
        ) >= 1.0,
        "retransmissions we sent are counted:\n{}",
        m.text
    );
}

fn server_still_answers(server: &Server) {
    assert_eq!(
        options_probe(Transport::Udp, server.sip_addr()).map(|r| r.code()),
        Some(200)
    );
}
