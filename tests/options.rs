//! OPTIONS is answered 200 with `Allow` and `Accept`, over UDP and TCP, as driven by SIPp
//! (a real, independent SIP implementation) and by hand-made requests.

mod harness;

use std::time::Duration;

use harness::server::Server;
use harness::sip::{param, Request, Transport, UdpClient};
use harness::sipp::Sipp;

#[test]
fn sipp_options_over_udp_gets_200_with_allow_and_accept() {
    let server = Server::start();
    let run = Sipp::uac("sipp/options.xml", server.sip_addr())
        .calls(5)
        .timeout(Duration::from_secs(20))
        .run();
    run.assert_success();
}

#[test]
fn sipp_options_over_tcp_gets_200_with_allow_and_accept() {
    let server = Server::start();
    let run = Sipp::uac("sipp/options.xml", server.sip_addr())
        .transport("t1")
        .calls(5)
        .timeout(Duration::from_secs(20))
        .run();
    run.assert_success();
}

/// The answer mirrors the request's transaction identifiers and lists what the server does.
#[test]
fn raw_options_response_echoes_transaction_headers() {
    let server = Server::start();
    let client = UdpClient::new(server.sip_addr());
    let req = Request::options(Transport::Udp, client.local());
    let resp = client.request(&req);
    assert_eq!(resp.code(), 200, "{}", resp.text());

    let via = resp.header("via").expect("Via in response");
    assert!(
        via.contains(&format!("branch={}", req.branch)),
        "Via must carry our branch: {via}"
    );
    assert_eq!(resp.header("call-id"), Some(req.call_id.as_str()));
    assert_eq!(resp.header("cseq"), Some("1 OPTIONS"));
    let from = resp.header("from").expect("From in response");
    assert_eq!(
        param(from, "tag"),
        Some(req.from_tag.as_str()),
        "From tag echoed: {from}"
    );
    assert!(resp.to_tag().is_some(), "a final response carries a To tag");

    let allow = resp.header_values("allow");
    for m in ["INVITE", "ACK", "BYE", "CANCEL", "OPTIONS"] {
        assert!(allow.iter().any(|a| a == m), "Allow lacks {m}: {allow:?}");
    }
    let accept = resp.header_values("accept");
    assert!(
        accept
            .iter()
            .any(|a| a.eq_ignore_ascii_case("application/sdp")),
        "Accept lacks application/sdp: {accept:?}"
    );
    let cl = resp.header("content-length").expect("Content-Length");
    assert_eq!(cl.trim().parse::<usize>().unwrap(), resp.body.len());
}
