//! Methods the server knows but does not serve get 405, unknown methods get 501; both
//! carry `Allow` (RFC 3261 §8.2.1).

mod harness;

use harness::server::Server;
use harness::sip::{Request, TcpClient, Transport, UdpClient};

fn check(server: &Server, method: &str, expected: u16) {
    let client = UdpClient::new(server.sip_addr());
    let req = Request::new(method, "probe", Transport::Udp, client.local());
    let resp = client.request(&req);
    assert_eq!(resp.code(), expected, "{method}: {}", resp.text());
    assert!(
        !resp.header_values("allow").is_empty(),
        "{method}: {expected} must carry Allow: {}",
        resp.text()
    );
    assert_eq!(resp.cseq_method(), Some(method), "{method}: CSeq echoed");
}

#[test]
fn known_methods_not_served_get_405_with_allow() {
    let server = Server::start();
    for method in ["REGISTER", "SUBSCRIBE", "PUBLISH"] {
        check(&server, method, 405);
    }
}

#[test]
fn unknown_methods_get_501_with_allow() {
    let server = Server::start();
    for method in ["FROBNICATE", "XYZZY"] {
        check(&server, method, 501);
    }
}

#[test]
fn unknown_method_over_tcp_gets_501() {
    let server = Server::start();
    let mut client = TcpClient::connect(server.sip_addr()).unwrap();
    let local = client.local();
    let resp = client.request(&Request::new("FROBNICATE", "probe", Transport::Tcp, local));
    assert_eq!(resp.code(), 501, "{}", resp.text());
}
