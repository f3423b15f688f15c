//! Outbound calls through an imported number's trunk, with SIPp as the trunk (UAS):
//! digest authentication, stop-call sending BYE, and final failures mapped to their
//! `disconnection_reason`s; a trunk that never answers ends as `dial_failed` (Timer B); one
//! that refuses TCP, or presents a TLS certificate nobody signed, as
//! `telephony_provider_unavailable`. The trunk's host is found through a real DNS server
//! (dnsmasq: SRV, then A records).
//! A number's `allowed_outbound_country_list` lets calls to listed countries through and
//! refuses the others with 400, before anything is dialled or recorded.

mod harness;

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use harness::dns::Dns;
use harness::ports::free_tcp_port;
use harness::server::Server;
use harness::sipp::Sipp;
use harness::tls::{Pki, TlsServer};
use serde_json::{json, Value};

/// Imports `number` with its trunk at `termination` (UDP), bound to the echo agent.
fn import(server: &Server, number: &str, termination: &str, auth: bool) {
    let mut body = json!({
        "phone_number": number,
        "termination_uri": termination,
        "transport": "UDP",
        "outbound_agent_id": "echo",
    });
    if auth {
        body["sip_trunk_auth_username"] = json!("trunkuser");
        body["sip_trunk_auth_password"] = json!("trunkpass");
    }
    server.import_number(body);
}

fn dial(server: &Server, from: &str) -> String {
    let call = server.create_phone_call(json!({
        "from_number": from, "to_number": "+14155550199",
        "custom_sip_headers": {"X-Campaign": "spring"},
    }));
    assert_eq!(call["direction"], "outbound");
    call["call_id"].as_str().unwrap().to_owned()
}

/// Dials from `from` and waits until the call is `not_connected`; returns the call.
fn dial_not_connected(server: &Server, from: &str) -> Value {
    let call_id = dial(server, from);
    wait_call(server, &call_id, |c| c["call_status"] == "not_connected")
}

/// Polls the call until `done` holds (at most 20 s); returns the last call object.
fn wait_call(server: &Server, call_id: &str, done: impl Fn(&Value) -> bool) -> Value {
    server.wait_call(call_id, Duration::from_secs(20), done)
}

#[test]
fn trunk_challenge_is_answered_and_stop_call_sends_bye() {
    let server = Server::start();
    let trunk = Sipp::uas("sipp/trunk_auth.xml").start();
    import(
        &server,
        "+14155550111",
        &format!("127.0.0.1:{}", trunk.sip_port),
        true,
    );
    let call_id = dial(&server, "+14155550111");
    let call = wait_call(&server, &call_id, |c| c["call_status"] != "registered");
    assert_eq!(call["call_status"], "ongoing", "{call}");
    assert_eq!(call["codec"], "PCMU", "{call}");
    let (status, _) = server.api("POST", &format!("/v2/stop-call/{call_id}"), None);
    assert_eq!(status, 204);
    let call = wait_call(&server, &call_id, |c| c["call_status"] == "ended");
    assert_eq!(call["disconnection_reason"], "manual_stopped", "{call}");
    assert!(call["end_timestamp"].as_i64() >= call["start_timestamp"].as_i64());
    // SIPp exits 0 only if its digest check passed (else it answers 403 and the call never
    // connects) and it received our BYE.
    assert_eq!(
        trunk.wait().code,
        Some(0),
        "the trunk scenario did not complete"
    );
}

#[test]
fn wrong_credentials_end_as_permission_denied() {
    let server = Server::start();
    let trunk = Sipp::uas("sipp/trunk_auth.xml").start();
    // Same trunk, wrong password: the second INVITE fails verifyauth and gets 403.
    let body = json!({
        "phone_number": "+14155550112",
        "termination_uri": format!("127.0.0.1:{}", trunk.sip_port),
        "transport": "UDP",
        "outbound_agent_id": "echo",
        "sip_trunk_auth_username": "trunkuser",
        "sip_trunk_auth_password": "not-the-password",
    });
    server.import_number(body);
    let call = dial_not_connected(&server, "+14155550112");
    assert_eq!(
        call["disconnection_reason"], "telephony_provider_permission_denied",
        "{call}"
    );
}

#[test]
fn proxy_challenge_is_answered_with_proxy_authorization() {
    let server = Server::start();
    let trunk = Sipp::uas("sipp/trunk_proxy_auth.xml").start();
    import(
        &server,
        "+14155550114",
        &format!("127.0.0.1:{}", trunk.sip_port),
        true,
    );
    let call = dial_not_connected(&server, "+14155550114");
    // 486 comes only after SIPp found a SHA-256 Proxy-Authorization on the retried INVITE.
    assert_eq!(call["disconnection_reason"], "dial_busy", "{call}");
    assert_eq!(
        trunk.wait().code,
        Some(0),
        "the retried INVITE lacked a proper Proxy-Authorization"
    );
}

#[test]
fn final_failures_map_to_their_reasons() {
    let server = Server::start();
    let cases = [
        ("486", "dial_busy"),
        ("603", "user_declined"),
        ("404", "invalid_destination"),
        ("503", "telephony_provider_unavailable"),
        ("480", "dial_no_answer"),
    ];
    for (i, (status, reason)) in cases.iter().enumerate() {
        let trunk = Sipp::uas("sipp/trunk_reject.xml")
            .replace("status", status)
            .start();
        let number = format!("+1415555020{i}");
        import(
            &server,
            &number,
            &format!("127.0.0.1:{}", trunk.sip_port),
            false,
        );
        let call = dial_not_connected(&server, &number);
        assert_eq!(
            call["disconnection_reason"], *reason,
            "status {status}: {call}"
        );
        assert_eq!(call["sip_status"].as_u64(), status.parse().ok(), "{call}");
        assert_eq!(
            trunk.wait().code,
            Some(0),
            "status {status}: the trunk never got its ACK"
        );
    }
}

#[test]
fn trunk_that_never_answers_ends_as_dial_failed() {
    // T1 = 50 ms makes Timer B (64*T1) fire after 3.2 s.
    let server = Server::start_with(&[("DIALTONE__SIP__T1_MS", "50")]);
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr: SocketAddr = silent.local_addr().unwrap();
    import(&server, "+14155550113", &addr.to_string(), false);
    let call = dial_not_connected(&server, "+14155550113");
    assert_eq!(call["disconnection_reason"], "dial_failed", "{call}");
    // The INVITE was really sent (and retransmitted by Timer A).
    let mut buf = [0u8; 4096];
    silent
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let n = silent.recv(&mut buf).unwrap();
    let invite = String::from_utf8_lossy(&buf[..n]);
    assert!(invite.starts_with("INVITE sip:+14155550199@"), "{invite}");
    assert!(invite.contains("X-Campaign: spring"), "{invite}");
}

#[test]
fn unknown_caller_id_is_an_api_error() {
    let server = Server::start();
    let (status, body) = server.api(
        "POST",
        "/v2/create-phone-call",
        Some(json!({"from_number": "+14155550999", "to_number": "+14155550199"})),
    );
    assert_eq!(status, 404, "{body}");
    let (status, body) = server.api(
        "POST",
        "/v2/create-phone-call",
        Some(json!({"from_number": "+14155550999", "to_number": "not-e164"})),
    );
    assert_eq!(status, 400, "{body}");
}

#[test]
fn outbound_country_list_dials_listed_countries_only() {
    let server = Server::start();
    let trunk = Sipp::uas("sipp/trunk_reject.xml")
        .replace("status", "486")
        .start();
    let body = json!({
        "phone_number": "+14155550115",
        "termination_uri": format!("127.0.0.1:{}", trunk.sip_port),
        "transport": "UDP",
        "outbound_agent_id": "echo",
        "allowed_outbound_country_list": ["CA"],
    });
    let (status, reply) = server.api("POST", "/import-phone-number", Some(body));
    assert_eq!(status, 201, "{reply}");
    let call = |to: &str| {
        let body = json!({"from_number": "+14155550115", "to_number": to});
        server.api("POST", "/v2/create-phone-call", Some(body))
    };

    // A US callee: refused, nothing dialled or recorded.
    let (status, refused) = call("+14155550199");
    assert_eq!(status, 400, "{refused}");
    assert_eq!(refused["field"], "to_number", "{refused}");
    let message = refused["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("US") && message.contains("[CA]"),
        "{message}"
    );

    // A Toronto callee: dialled through the trunk, which answers 486.
    let (status, placed) = call("+14165550199");
    assert_eq!(status, 201, "{placed}");
    let call_id = placed["call_id"].as_str().unwrap();
    let ended = wait_call(&server, call_id, |c| c["call_status"] == "not_connected");
    assert_eq!(ended["disconnection_reason"], "dial_busy", "{ended}");
    assert_eq!(trunk.wait().code, Some(0), "the trunk never got the INVITE");

    let (status, calls) = server.api("POST", "/v3/list-calls", Some(json!({})));
    assert_eq!(status, 200, "{calls}");
    let ids: Vec<&str> = calls["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["call_id"].as_str())
        .collect();
    assert_eq!(ids, [call_id], "only the allowed call exists");
}

#[test]
fn trunk_refusing_tcp_ends_as_provider_unavailable() {
    let server = Server::start();
    // Nothing listens there: the connection is refused.
    let closed = free_tcp_port();
    let body = json!({
        "phone_number": "+14155550115",
        "termination_uri": format!("127.0.0.1:{closed}"),
        "transport": "TCP",
        "outbound_agent_id": "echo",
    });
    server.import_number(body);
    let call = dial_not_connected(&server, "+14155550115");
    assert_eq!(
        call["disconnection_reason"], "telephony_provider_unavailable",
        "{call}"
    );
}

#[test]
fn trunk_failing_tls_ends_as_provider_unavailable() {
    let mut pki = Pki::new();
    pki.self_signed("dialtone", &["127.0.0.1"]);
    pki.self_signed("trunk", &["127.0.0.1"]);
    let server = Server::builder()
        .tls()
        .env("DIALTONE__TLS__CERT", pki.file("dialtone.pem"))
        .env("DIALTONE__TLS__KEY", pki.file("dialtone.key"))
        .start();
    // A real TLS server (openssl s_server) whose certificate nobody signed: dialtone must
    // refuse the handshake, not send the INVITE in the clear or wait for Timer B.
    let trunk = TlsServer::start(&pki.file("trunk.pem"), &pki.file("trunk.key"));
    let body = json!({
        "phone_number": "+14155550116",
        "termination_uri": trunk.addr.to_string(),
        "transport": "TLS",
        "outbound_agent_id": "echo",
    });
    server.import_number(body);
    let call = dial_not_connected(&server, "+14155550116");
    // (Timer B would have ended it as dial_failed.)
    assert_eq!(
        call["disconnection_reason"], "telephony_provider_unavailable",
        "{call}"
    );
}

#[test]
fn trunk_host_is_found_through_srv_then_a_records() {
    // Two trunks; DNS is the only thing that says where they are.
    let busy = Sipp::uas("sipp/trunk_reject.xml")
        .replace("status", "486")
        .start();
    let declining = Sipp::uas("sipp/trunk_reject.xml")
        .replace("status", "603")
        .start();
    let dns = Dns::start(&[
        // RFC 3263: no port in the URI, so SRV _sip._udp names the host and the port.
        format!(
            "--srv-host=_sip._udp.trunk.test,gw1.trunk.test,{},10,100",
            busy.sip_port
        ),
        "--host-record=gw1.trunk.test,127.0.0.1".to_string(),
        // With a port, only the host's A record is asked for.
        "--host-record=gw2.trunk.test,127.0.0.1".to_string(),
    ]);
    let server = Server::start_with(&[("DIALTONE__SIP__DNS_SERVERS", &dns.addr.to_string())]);
    import(&server, "+14155550117", "trunk.test", false);
    let call = dial_not_connected(&server, "+14155550117");
    assert_eq!(call["disconnection_reason"], "dial_busy", "{call}");
    assert_eq!(
        busy.wait().code,
        Some(0),
        "the SRV target never got the INVITE"
    );

    let termination = format!("gw2.trunk.test:{}", declining.sip_port);
    import(&server, "+14155550118", &termination, false);
    let call = dial_not_connected(&server, "+14155550118");
    assert_eq!(call["disconnection_reason"], "user_declined", "{call}");
    assert_eq!(
        declining.wait().code,
        Some(0),
        "the A record's host never got the INVITE"
    );

    // A name DNS does not know: the trunk cannot be reached.
    import(&server, "+14155550119", "nowhere.trunk.test", false);
    let call = dial_not_connected(&server, "+14155550119");
    assert_eq!(
        call["disconnection_reason"], "telephony_provider_unavailable",
        "{call}"
    );
}
