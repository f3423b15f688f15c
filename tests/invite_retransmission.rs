//! A retransmitted INVITE (same branch) is absorbed by its server transaction: it gets the
//! same final response again (same To tag) and nothing is created twice; so is a
//! retransmitted OPTIONS after its transaction handed its 200 to the endpoint's table.

mod harness;

use std::time::Duration;

use harness::server::Server;
use harness::sip::{Request, SipMsg, TcpClient, Transport, UdpClient};
use harness::sipp::Sipp;

#[test]
fn raw_udp_retransmitted_invite_gets_same_404_and_is_absorbed() {
    let server = Server::start();
    let client = UdpClient::new(server.sip_addr());
    let invite = Request::invite("nobody", Transport::Udp, client.local());
    let bytes = invite.to_bytes();

    client.send(&bytes);
    let first = client.final_response(Duration::from_secs(5));
    assert_eq!(first.code(), 404, "{}", first.text());

    // Byte for byte the same request: a retransmission.
    client.send(&bytes);
    let second = client.final_response(Duration::from_secs(5));
    assert_eq!(second.code(), 404, "{}", second.text());
    assert!(first.to_tag().is_some());
    assert_eq!(
        first.to_tag(),
        second.to_tag(),
        "a retransmission must get the same response (same To tag)"
    );

    client.send_request(&invite.ack_for(&first));

    let m = server.metrics();
    let invites_in = m.sum(
        "dialtone_sip_messages_in_total",
        &[("kind", "INVITE"), ("transport", "UDP")],
    );
    let absorbed = m.sum(
        "dialtone_sip_retransmissions_total",
        &[("direction", "absorbed"), ("transport", "UDP")],
    );
    let not_found_out = m.sum(
        "dialtone_sip_messages_out_total",
        &[("kind", "404"), ("transport", "UDP")],
    );
    // Every parsed datagram is counted in messages_in; the copy is also counted as absorbed,
    // and the 404 was produced once (its resending counts as a retransmission, not a message).
    assert_eq!(
        invites_in, 2.0,
        "both INVITE datagrams counted:\n{}",
        m.text
    );
    assert!(absorbed >= 1.0, "the copy was absorbed:\n{}", m.text);
    assert_eq!(
        not_found_out, 1.0,
        "exactly one 404 produced (one transaction, not two):\n{}",
        m.text
    );
}

/// The same over TCP: a reliable transport has no retransmissions of its own, but a peer
/// may still resend; the transaction answers it from state.
#[test]
fn raw_tcp_repeated_invite_gets_same_404() {
    let server = Server::start();
    let mut client = TcpClient::connect(server.sip_addr()).unwrap();
    let local = client.local();
    let invite = Request::invite("nobody", Transport::Tcp, local);
    let first = client.request(&invite);
    assert_eq!(first.code(), 404);
    let second = client.request(&invite);
    assert_eq!(second.code(), 404);
    assert_eq!(first.to_tag(), second.to_tag(), "same To tag");
    client.send_request(&invite.ack_for(&first));
    let m = server.metrics();
    assert_eq!(
        m.sum(
            "dialtone_sip_messages_out_total",
            &[("kind", "404"), ("transport", "TCP")]
        ),
        1.0,
        "one transaction, one 404:\n{}",
        m.text
    );
}

/// SIPp sends the INVITE, gets the 404, sends the identical INVITE again (same branch) and
/// checks that the second 404 carries the same To tag before it ACKs.
#[test]
fn sipp_retransmitted_invite_gets_same_404() {
    let server = Server::start();
    let run = Sipp::uac("sipp/invite_retransmission.xml", server.sip_addr())
        .calls(2)
        .timeout(Duration::from_secs(20))
        .service("nobody")
        .run();
    run.assert_success();
    let m = server.metrics();
    assert!(
        m.sum(
            "dialtone_sip_retransmissions_total",
            &[("direction", "absorbed")]
        ) >= 2.0,
        "one absorbed retransmission per call:\n{}",
        m.text
    );
}

/// A copy that arrives before the server has answered (sent back to back, as SIPp's own
/// timer-driven retransmission would on a lossy path) still makes one transaction.
///
/// SIPp cannot be made to retransmit by itself here: the server answers on loopback before
/// any SIPp timer fires, so the SIPp scenario above resends explicitly instead.
#[test]
fn back_to_back_duplicate_invite_is_one_transaction() {
    let server = Server::start();
    let client = UdpClient::new(server.sip_addr());
    let invite = Request::invite("nobody", Transport::Udp, client.local());
    let bytes = invite.to_bytes();
    client.send(&bytes);
    client.send(&bytes);
    // Everything for a moment (bounded): 100s and 404s of one transaction only.
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    let mut finals: Vec<SipMsg> = Vec::new();
    while std::time::Instant::now() < deadline {
        let Some(d) = client.recv(Duration::from_millis(400)) else {
            break;
        };
        let r = SipMsg::parse_response(&d).expect("a SIP response");
        if r.code() >= 200 {
            assert_eq!(r.code(), 404, "{}", r.text());
            finals.push(r);
        }
    }
    assert!(!finals.is_empty(), "a 404 arrived");
    let tags: Vec<_> = finals.iter().map(SipMsg::to_tag).collect();
    assert!(
        tags.windows(2).all(|w| w[0] == w[1]),
        "every 404 has the same To tag: {tags:?}"
    );
    client.send_request(&invite.ack_for(&finals[0]));
    let m = server.metrics();
    assert_eq!(
        m.sum(
            "dialtone_sip_messages_out_total",
            &[("kind", "404"), ("transport", "UDP")]
        ),
        1.0,
        "one transaction, one 404:\n{}",
        m.text
    );
}

/// A finished OPTIONS over UDP no longer holds a transaction task for Timer J's 32 s: the
/// endpoint keeps its response in a table and answers the retransmission from there.
#[test]
fn retransmitted_options_after_its_200_gets_the_same_200_without_a_live_task() {
    let server = Server::start();
    let client = UdpClient::new(server.sip_addr());
    let options = Request::options(Transport::Udp, client.local());
    let bytes = options.to_bytes();
    client.send(&bytes);
    let first = client.final_response(Duration::from_secs(5));
    assert_eq!(first.code(), 200, "{}", first.text());
    std::thread::sleep(Duration::from_millis(300));
    let m = server.metrics();
    let live = m.sum(
        "dialtone_sip_transactions",
        &[("kind", "server_non_invite")],
    );
    assert_eq!(live, 0.0, "no task waits out Timer J:\n{}", m.text);

    client.send(&bytes);
    let second = client.final_response(Duration::from_secs(5));
    assert_eq!(second.code(), 200, "{}", second.text());
    assert_eq!(
        first.to_tag(),
        second.to_tag(),
        "the retransmission gets the same response"
    );
    let m = server.metrics();
    let absorbed = m.sum(
        "dialtone_sip_retransmissions_total",
        &[("direction", "absorbed"), ("transport", "UDP")],
    );
    let ok_out = m.sum(
        "dialtone_sip_messages_out_total",
        &[("kind", "200"), ("transport", "UDP")],
    );
    assert!(absorbed >= 1.0, "the copy was absorbed:\n{}", m.text);
    assert_eq!(ok_out, 1.0, "one 200 produced:\n{}", m.text);
}
