//! Signalling from outside `[sip] allow` gets no answer at all: UDP is dropped before
//! parsing, TCP connections are refused or closed at accept. Drops are counted.

mod harness;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use harness::server::Server;
use harness::sip::{Request, Transport, UdpClient};

#[test]
fn source_outside_allowlist_gets_nothing_and_is_counted() {
    let server = Server::builder()
        .env("DIALTONE__SIP__ALLOW", "10.0.0.0/8")
        .start();

    // UDP from 127.0.0.1: silence.
    let client = UdpClient::new(server.sip_addr());
    client.send_request(&Request::options(Transport::Udp, client.local()));
    if let Some(d) = client.recv(Duration::from_millis(1200)) {
        panic!(
            "a disallowed source got an answer over UDP: {}",
            String::from_utf8_lossy(&d)
        );
    }

    // TCP from 127.0.0.1: refused, or accepted and closed without a byte.
    match TcpStream::connect_timeout(&server.sip_addr(), Duration::from_secs(2)) {
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "connect: {e}"),
        Ok(mut stream) => {
            stream
                .set_read_timeout(Some(Duration::from_secs(3)))
                .unwrap();
            let local = stream.local_addr().unwrap();
            // The write may already fail: the server closed the connection.
            let _ = stream.write_all(&Request::options(Transport::Tcp, local).to_bytes());
            let mut buf = [0u8; 1024];
            match stream.read(&mut buf) {
                Ok(0) => {}
                Ok(n) => panic!(
                    "a disallowed source got data over TCP: {}",
                    String::from_utf8_lossy(&buf[..n])
                ),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    panic!("the TCP connection from a disallowed source was kept open")
                }
                Err(_) => {} // reset: closed
            }
        }
    }

    server.get("/healthz"); // HTTP is not subject to the SIP allowlist
    let m = server.metrics();
    let udp = m.sum(
        "dialtone_sip_dropped_total",
        &[("cause", "not_allowed"), ("transport", "UDP")],
    );
    let tcp = m.sum(
        "dialtone_sip_dropped_total",
        &[("cause", "not_allowed"), ("transport", "TCP")],
    );
    assert!(udp >= 1.0, "UDP drop counted:\n{}", m.text);
    assert!(tcp >= 1.0, "TCP refusal counted:\n{}", m.text);
    assert_eq!(
        m.sum("dialtone_sip_messages_in_total", &[]),
        0.0,
        "nothing from a disallowed source is parsed:\n{}",
        m.text
    );
}

/// A bare address in the list admits exactly that host: 127.0.0.2 is answered, 127.0.0.1
/// (same machine, other address) is not.
#[test]
fn single_host_entry_admits_only_that_host() {
    let server = Server::builder()
        .env("DIALTONE__SIP__ALLOW", "127.0.0.2")
        .start();

    let allowed = UdpClient::bind("127.0.0.2:0".parse().unwrap(), server.sip_addr());
    let resp = allowed.request(&Request::options(Transport::Udp, allowed.local()));
    assert_eq!(resp.code(), 200, "{}", resp.text());

    let other = UdpClient::new(server.sip_addr());
    other.send_request(&Request::options(Transport::Udp, other.local()));
    if let Some(d) = other.recv(Duration::from_millis(1000)) {
        panic!(
            "127.0.0.1 is not in the list but got: {}",
            String::from_utf8_lossy(&d)
        );
    }
}
