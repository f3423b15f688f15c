//! Outbound calls through an imported number's trunk, with SIPp as the trunk (UAS):
//! digest authentication, stop-call sending BYE, and final failures mapped to their
//! `disconnection_reason`s; a trunk that never answers ends as `dial_failed` (Timer B); one
//! that refuses TCP, or presents a TLS certificate nobody signed, as
//! `telephony_provider_unavailable`. The trunk's host is found through a real DNS server
//! (dnsmasq: SRV, then A records).
//! A number's `allowed_outbound_country_list` lets calls to listed countries through and
//! refuses the others with 400, before anything is dialled or recorded.

mod common_api;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common_api::Server;
use serde_json::{json, Value};

/// One HTTP/1.1 request with the server's key; returns status and JSON body (or Null).
fn api(server: &Server, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut stream = TcpStream::connect(server.http).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        server.key,
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).unwrap();
    let status: u16 = out[9..12].parse().unwrap();
    let json = out
        .split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str(b).ok())
        .unwrap_or(Value::Null);
    (status, json)
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A SIPp trunk running `scenario` on a free UDP port; killed on drop.
struct Trunk {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Trunk {
    /// `keys` replace `[name]` in the scenario before SIPp reads it (SIPp checks status
    /// codes when it loads a scenario, so they cannot be `-key` parameters).
    fn start(scenario: &str, keys: &[(&str, &str)]) -> Trunk {
        let port = free_udp_port();
        let dir = tempfile::tempdir().unwrap();
        let source = format!("{}/tests/sipp/{scenario}", env!("CARGO_MANIFEST_DIR"));
        let mut text = std::fs::read_to_string(source).unwrap();
        for (k, v) in keys {
            text = text.replace(&format!("[{k}]"), v);
        }
        let path = dir.path().join(scenario);
        std::fs::write(&path, text).unwrap();
        let mut cmd = Command::new("sipp");
        cmd.arg("-sf")
            .arg(&path)
            .args(["-i", "127.0.0.1", "-p", &port.to_string(), "-m", "1"])
            .args(["-mp", &free_udp_port().to_string()])
            .args(["-nostdin", "-timeout", "30"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd.spawn().expect("sipp (apt-get install sip-tester)");
        // Give SIPp a moment to bind its port.
        std::thread::sleep(Duration::from_millis(300));
        Trunk {
            child,
            port,
            _dir: dir,
        }
    }

    /// SIPp's exit status: 0 when every scenario step happened.
    fn wait(mut self) -> i32 {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code().unwrap_or(-1);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        -1
    }
}

impl Drop for Trunk {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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
    let (status, reply) = api(server, "POST", "/import-phone-number", Some(body));
    assert_eq!(status, 201, "{reply}");
}

fn dial(server: &Server, from: &str) -> String {
    let (status, call) = api(
        server,
        "POST",
        "/v2/create-phone-call",
        Some(json!({"from_number": from, "to_number": "+14155550199",
                    "custom_sip_headers": {"X-Campaign": "spring"}})),
    );
    assert_eq!(status, 201, "{call}");
    assert_eq!(call["direction"], "outbound");
    call["call_id"].as_str().unwrap().to_owned()
}

/// Dials from `from` and waits until the call is `not_connected`; returns the call.
fn dial_not_connected(server: &Server, from: &str) -> Value {
    let call_id = dial(server, from);
    wait_call(server, &call_id, |c| c["call_status"] == "not_connected")
}

/// Imports a number with this body, which must succeed.
fn import_body(server: &Server, body: Value) {
    let (status, reply) = api(server, "POST", "/import-phone-number", Some(body));
    assert_eq!(status, 201, "{reply}");
}

/// Polls the call until `done` holds (bounded); returns the last call object.
fn wait_call(server: &Server, call_id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, call) = api(server, "GET", &format!("/v2/get-call/{call_id}"), None);
        if done(&call) || Instant::now() > deadline {
            return call;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn trunk_challenge_is_answered_and_stop_call_sends_bye() {
    let server = Server::start();
    let trunk = Trunk::start("trunk_auth.xml", &[]);
    import(
        &server,
        "+14155550111",
        &format!("127.0.0.1:{}", trunk.port),
        true,
    );
    let call_id = dial(&server, "+14155550111");
    let call = wait_call(&server, &call_id, |c| c["call_status"] != "registered");
    assert_eq!(call["call_status"], "ongoing", "{call}");
    assert_eq!(call["codec"], "PCMU", "{call}");
    let (status, _) = api(&server, "POST", &format!("/v2/stop-call/{call_id}"), None);
    assert_eq!(status, 204);
    let call = wait_call(&server, &call_id, |c| c["call_status"] == "ended");
    assert_eq!(call["disconnection_reason"], "manual_stopped", "{call}");
    assert!(call["end_timestamp"].as_i64() >= call["start_timestamp"].as_i64());
    // SIPp exits 0 only if its digest check passed (else it answers 403 and the call never
    // connects) and it received our BYE.
    assert_eq!(trunk.wait(), 0, "the trunk scenario did not complete");
}

#[test]
fn wrong_credentials_end_as_permission_denied() {
    let server = Server::start();
    let trunk = Trunk::start("trunk_auth.xml", &[]);
    // Same trunk, wrong password: the second INVITE fails verifyauth and gets 403.
    let body = json!({
        "phone_number": "+14155550112",
        "termination_uri": format!("127.0.0.1:{}", trunk.port),
        "transport": "UDP",
        "outbound_agent_id": "echo",
        "sip_trunk_auth_username": "trunkuser",
        "sip_trunk_auth_password": "not-the-password",
    });
    import_body(&server, body);
    let call = dial_not_connected(&server, "+14155550112");
    assert_eq!(
        call["disconnection_reason"], "telephony_provider_permission_denied",
        "{call}"
    );
}

#[test]
fn proxy_challenge_is_answered_with_proxy_authorization() {
    let server = Server::start();
    let trunk = Trunk::start("trunk_proxy_auth.xml", &[]);
    import(
        &server,
        "+14155550114",
        &format!("127.0.0.1:{}", trunk.port),
        true,
    );
    let call = dial_not_connected(&server, "+14155550114");
    // 486 comes only after SIPp found a SHA-256 Proxy-Authorization on the retried INVITE.
    assert_eq!(call["disconnection_reason"], "dial_busy", "{call}");
    assert_eq!(
        trunk.wait(),
        0,
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
        let trunk = Trunk::start("trunk_reject.xml", &[("status", status)]);
        let number = format!("+1415555020{i}");
        import(
            &server,
            &number,
            &format!("127.0.0.1:{}", trunk.port),
            false,
        );
        let call = dial_not_connected(&server, &number);
        assert_eq!(
            call["disconnection_reason"], *reason,
            "status {status}: {call}"
        );
        assert_eq!(call["sip_status"].as_u64(), status.parse().ok(), "{call}");
        assert_eq!(
            trunk.wait(),
            0,
            "status {status}: the trunk never got its ACK"
        );
    }
}

#[test]
fn trunk_that_never_answers_ends_as_dial_failed() {
    // T1 = 50 ms makes Timer B (64*T1) fire after 3.2 s.
    let server = Server::start_env(&[("DIALTONE__SIP__T1_MS", "50")]);
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
    let (status, body) = api(
        &server,
        "POST",
        "/v2/create-phone-call",
        Some(json!({"from_number": "+14155550999", "to_number": "+14155550199"})),
    );
    assert_eq!(status, 404, "{body}");
    let (status, body) = api(
        &server,
        "POST",
        "/v2/create-phone-call",
        Some(json!({"from_number": "+14155550999", "to_number": "not-e164"})),
    );
    assert_eq!(status, 400, "{body}");
}

#[test]
fn outbound_country_list_dials_listed_countries_only() {
    let server = Server::start();
    let trunk = Trunk::start("trunk_reject.xml", &[("status", "486")]);
    let body = json!({
        "phone_number": "+14155550115",
        "termination_uri": format!("127.0.0.1:{}", trunk.port),
        "transport": "UDP",
        "outbound_agent_id": "echo",
        "allowed_outbound_country_list": ["CA"],
    });
    let (status, reply) = api(&server, "POST", "/import-phone-number", Some(body));
    assert_eq!(status, 201, "{reply}");
    let call = |to: &str| {
        let body = json!({"from_number": "+14155550115", "to_number": to});
        api(&server, "POST", "/v2/create-phone-call", Some(body))
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
    assert_eq!(trunk.wait(), 0, "the trunk never got the INVITE");

    let (status, calls) = api(&server, "POST", "/v3/list-calls", Some(json!({})));
    assert_eq!(status, 200, "{calls}");
    let ids: Vec<&str> = calls["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["call_id"].as_str())
        .collect();
    assert_eq!(ids, [call_id], "only the allowed call exists");
}

/// A self-signed certificate and its key, as PEM files in `dir`.
fn self_signed(dir: &std::path::Path, name: &str) -> (String, String) {
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let cert = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.key_pair.serialize_pem()).unwrap();
    (cert.display().to_string(), key.display().to_string())
}

fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn trunk_refusing_tcp_ends_as_provider_unavailable() {
    let tcp = format!("127.0.0.1:{}", free_tcp_port());
    let server = Server::start_env(&[("DIALTONE__SIP__TCP", &tcp)]);
    // Nothing listens there: the connection is refused.
    let closed = free_tcp_port();
    let body = json!({
        "phone_number": "+14155550115",
        "termination_uri": format!("127.0.0.1:{closed}"),
        "transport": "TCP",
        "outbound_agent_id": "echo",
    });
    import_body(&server, body);
    let call = dial_not_connected(&server, "+14155550115");
    assert_eq!(
        call["disconnection_reason"], "telephony_provider_unavailable",
        "{call}"
    );
}

#[test]
fn trunk_failing_tls_ends_as_provider_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path(), "dialtone");
    let tls = format!("127.0.0.1:{}", free_tcp_port());
    let server = Server::start_env(&[
        ("DIALTONE__SIP__TLS", &tls),
        ("DIALTONE__TLS__CERT", &cert),
        ("DIALTONE__TLS__KEY", &key),
    ]);
    // A real TLS server (openssl s_server) whose certificate nobody signed: dialtone must
    // refuse the handshake, not send the INVITE in the clear or wait for Timer B.
    let (trunk_cert, trunk_key) = self_signed(dir.path(), "trunk");
    let port = free_tcp_port();
    let mut trunk = Command::new("openssl")
        .args(["s_server", "-quiet", "-accept"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["-cert", &trunk_cert, "-key", &trunk_key])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl s_server");
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "openssl s_server did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
    let body = json!({
        "phone_number": "+14155550116",
        "termination_uri": format!("127.0.0.1:{port}"),
        "transport": "TLS",
        "outbound_agent_id": "echo",
    });
    import_body(&server, body);
    let call = dial_not_connected(&server, "+14155550116");
    let _ = trunk.kill();
    let _ = trunk.wait();
    // (Timer B would have ended it as dial_failed.)
    assert_eq!(
        call["disconnection_reason"], "telephony_provider_unavailable",
        "{call}"
    );
}

/// dnsmasq on a free loopback port serving `records` (dnsmasq options such as
/// `--srv-host=...`) and nothing else; killed on drop.
struct Dns {
    child: Child,
    addr: SocketAddr,
}

impl Dns {
    fn start(records: &[String]) -> Dns {
        let port = free_udp_port();
        let child = Command::new("dnsmasq")
            .args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--pid-file=",
            ])
            .args(["--no-resolv", "--no-hosts", "--bind-interfaces"])
            .args(["--listen-address=127.0.0.1", "--user=root"])
            .arg(format!("--port={port}"))
            .args(records)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq (apt-get install dnsmasq-base)");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        // Ready once it answers a query (any answer will do).
        let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
        probe
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let query = [
            0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 4, b't', b'e', b's', b't', 0, 0, 1, 0, 1,
        ];
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            probe.send_to(&query, addr).unwrap();
            if probe.recv(&mut [0u8; 512]).is_ok() {
                break;
            }
            assert!(Instant::now() < deadline, "dnsmasq did not answer");
        }
        Dns { child, addr }
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn trunk_host_is_found_through_srv_then_a_records() {
    // Two trunks; DNS is the only thing that says where they are.
    let busy = Trunk::start("trunk_reject.xml", &[("status", "486")]);
    let declining = Trunk::start("trunk_reject.xml", &[("status", "603")]);
    let dns = Dns::start(&[
        // RFC 3263: no port in the URI, so SRV _sip._udp names the host and the port.
        format!(
            "--srv-host=_sip._udp.trunk.test,gw1.trunk.test,{},10,100",
            busy.port
        ),
        "--host-record=gw1.trunk.test,127.0.0.1".to_string(),
        // With a port, only the host's A record is asked for.
        "--host-record=gw2.trunk.test,127.0.0.1".to_string(),
    ]);
    let server = Server::start_env(&[("DIALTONE__SIP__DNS_SERVERS", &dns.addr.to_string())]);
    import(&server, "+14155550117", "trunk.test", false);
    let call = dial_not_connected(&server, "+14155550117");
    assert_eq!(call["disconnection_reason"], "dial_busy", "{call}");
    assert_eq!(busy.wait(), 0, "the SRV target never got the INVITE");

    let termination = format!("gw2.trunk.test:{}", declining.port);
    import(&server, "+14155550118", &termination, false);
    let call = dial_not_connected(&server, "+14155550118");
    assert_eq!(call["disconnection_reason"], "user_declined", "{call}");
    assert_eq!(
        declining.wait(),
        0,
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
