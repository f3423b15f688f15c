//! SIP over TLS, and mutual TLS: with `tls.client_ca` set, only clients presenting a
//! certificate signed by that CA are served. Certificates are made per test with the
//! harness (rcgen); the client is `openssl s_client`, an independent TLS implementation.

mod harness;

use std::time::Duration;

use harness::server::Server;
use harness::sip::{Request, SipMsg, StreamRead, TcpClient, Transport};
use harness::tls::{tls_exchange, Pki, TlsExchange, Usage};

/// Throwaway PKI: a CA with a server certificate (SAN 127.0.0.1 and localhost) and a client
/// certificate, plus an unrelated CA with its own client certificate.
fn pki() -> Pki {
    let mut pki = Pki::new();
    pki.ca("ca", "dialtone test CA");
    pki.ca("other-ca", "some other CA");
    pki.leaf(
        "server",
        "ca",
        "localhost",
        &["127.0.0.1", "localhost"],
        Usage::Server,
    );
    pki.leaf("client", "ca", "trunk.example.net", &[], Usage::Client);
    pki.leaf(
        "stranger",
        "other-ca",
        "stranger.example.net",
        &[],
        Usage::Client,
    );
    pki
}

fn tls_server(pki: &Pki, mutual: bool) -> Server {
    let mut b = Server::builder()
        .tls()
        .env("DIALTONE__TLS__CERT", pki.file("server.pem"))
        .env("DIALTONE__TLS__KEY", pki.file("server.key"));
    if mutual {
        b = b.env("DIALTONE__TLS__CLIENT_CA", pki.file("ca.pem"));
    }
    b.start()
}

/// An OPTIONS as a TLS client would send it (the Via address is nominal: responses go back
/// on the connection).
fn options_bytes() -> Vec<u8> {
    Request::options(Transport::Tls, "127.0.0.1:5061".parse().unwrap()).to_bytes()
}

/// s_client arguments that verify the server against our CA, by IP SAN.
fn verify_args(pki: &Pki) -> Vec<String> {
    vec![
        "-CAfile".into(),
        pki.file("ca.pem"),
        "-verify_return_error".into(),
        "-verify_ip".into(),
        "127.0.0.1".into(),
        "-servername".into(),
        "localhost".into(),
    ]
}

fn exchange(server: &Server, args: &[String]) -> TlsExchange {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    tls_exchange(
        server.tls_addr(),
        &args,
        &options_bytes(),
        Duration::from_secs(5),
    )
}

fn assert_served(x: &TlsExchange, who: &str) {
    match &x.response {
        Some(r) if r.code() == 200 => {}
        other => panic!(
            "{who}: expected 200 over TLS, got {:?}\n--- s_client stdout ---\n{}\n--- s_client stderr ---\n{}",
            other.as_ref().map(|r| r.code()),
            x.stdout,
            x.stderr
        ),
    }
}

fn assert_refused(x: &TlsExchange, who: &str) {
    assert!(
        x.response.is_none(),
        "{who}: must not be served, got {:?}",
        x.response.as_ref().map(|r| r.text())
    );
    assert!(
        x.closed,
        "{who}: the server must end the connection (handshake failure or close)\n--- s_client stderr ---\n{}",
        x.stderr
    );
}

#[test]
fn options_over_tls_gets_200_and_server_cert_verifies() {
    let pki = pki();
    let server = tls_server(&pki, false);
    let x = exchange(&server, &verify_args(&pki));
    assert_served(&x, "client without certificate, no client_ca configured");
    let m = server.metrics();
    assert!(
        m.sum(
            "dialtone_sip_messages_in_total",
            &[("kind", "OPTIONS"), ("transport", "TLS")]
        ) >= 1.0,
        "OPTIONS counted on TLS:\n{}",
        m.text
    );
}

#[test]
fn mutual_tls_serves_only_clients_signed_by_the_configured_ca() {
    let pki = pki();
    let server = tls_server(&pki, true);

    let none = exchange(&server, &verify_args(&pki));
    assert_refused(&none, "client without certificate");

    let mut good = verify_args(&pki);
    good.extend([
        "-cert".into(),
        pki.file("client.pem"),
        "-key".into(),
        pki.file("client.key"),
    ]);
    let x = exchange(&server, &good);
    assert_served(&x, "client with a certificate from the configured CA");

    let mut stranger = verify_args(&pki);
    stranger.extend([
        "-cert".into(),
        pki.file("stranger.pem"),
        "-key".into(),
        pki.file("stranger.key"),
    ]);
    let x = exchange(&server, &stranger);
    assert_refused(&x, "client with a certificate from another CA");

    // Refused handshakes do not take the listener down.
    let x = exchange(&server, &good);
    assert_served(&x, "client with a good certificate, after the refusals");
}

#[test]
fn plain_tcp_bytes_on_the_tls_port_do_not_get_sip_answers() {
    let pki = pki();
    let mut server = tls_server(&pki, false);
    let mut c = TcpClient::connect(server.tls_addr()).unwrap();
    let _ = c.send(&options_bytes());
    match c.read_message(Duration::from_secs(2)) {
        StreamRead::Message(m) => assert!(
            SipMsg::parse_response(&m).is_none(),
            "plaintext SIP answered on the TLS port: {}",
            String::from_utf8_lossy(&m)
        ),
        StreamRead::Timeout | StreamRead::Closed => {}
    }
    server.assert_alive("plaintext on the TLS port");
    let x = exchange(&server, &verify_args(&pki));
    assert_served(&x, "TLS client after a plaintext one");
}

#[test]
fn tls_client_outside_the_allowlist_is_not_served() {
    let pki = pki();
    let server = Server::builder()
        .tls()
        .env("DIALTONE__TLS__CERT", pki.file("server.pem"))
        .env("DIALTONE__TLS__KEY", pki.file("server.key"))
        .env("DIALTONE__SIP__ALLOW", "10.0.0.0/8")
        .start();
    let x = exchange(&server, &verify_args(&pki));
    assert_refused(&x, "TLS client from 127.0.0.1 with allow = 10.0.0.0/8");
    let m = server.metrics();
    assert!(
        m.sum(
            "dialtone_sip_dropped_total",
            &[("cause", "not_allowed"), ("transport", "TLS")]
        ) >= 1.0,
        "TLS refusal counted:\n{}",
        m.text
    );
}
