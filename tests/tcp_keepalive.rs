//! RFC 5626 §4.4.1 keep-alive on a stream: a CRLF CRLF ping is answered by a CRLF pong, and
//! the connection keeps working for SIP afterwards.

mod harness;

use std::time::Duration;

use harness::server::Server;
use harness::sip::{Request, TcpClient, Transport};

#[test]
fn double_crlf_ping_gets_crlf_pong_and_connection_stays_usable() {
    let server = Server::start();
    let mut client = TcpClient::connect(server.sip_addr()).unwrap();
    for round in 0..2 {
        client.send(b"\r\n\r\n").unwrap();
        let pong = client.read_raw(Duration::from_secs(3));
        assert_eq!(pong, b"\r\n", "round {round}: pong must be exactly CRLF");
    }
    let local = client.local();
    let resp = client.request(&Request::options(Transport::Tcp, local));
    assert_eq!(resp.code(), 200, "{}", resp.text());
}
