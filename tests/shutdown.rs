//! Graceful shutdown: SIGTERM stops new transactions (503 to new INVITEs, 503 on /healthz),
//! lets the ones in flight finish within `shutdown.grace_period_ms`, and exits 0. SIGINT
//! exits at once.

mod harness;

use std::time::{Duration, Instant};

use harness::http::http_request;
use harness::server::Server;
use harness::sip::{Request, Transport, UdpClient};

/// Polls `/healthz` until it answers `status` (bounded).
fn wait_health(server: &Server, status: u16, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(r) = http_request(server.http_addr(), "GET", "/healthz", &[], None) {
            if r.status == status {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    false
}

#[test]
fn sigterm_refuses_new_invites_and_exits_once_in_flight_transactions_finish() {
    // A long grace, short timers: the exit must come from the work being done, not the grace.
    let mut server = Server::builder()
        .env("DIALTONE__SHUTDOWN__GRACE_PERIOD_MS", "30000")
        .env("DIALTONE__SIP__T4_MS", "500")
        .start();
    let client = UdpClient::new(server.sip_addr());

    let invite_a = Request::invite("alice", Transport::Udp, client.local());
    let resp_a = client.request(&invite_a);
    assert_eq!(resp_a.code(), 404, "{}", resp_a.text());
    // No ACK yet: transaction A stays in flight (Completed, waiting for the ACK).

    server.signal("TERM");
    assert!(
        wait_health(&server, 503, Duration::from_secs(5)),
        "/healthz must turn 503 while draining"
    );

    let invite_b = Request::invite("bob", Transport::Udp, client.local());
    let resp_b = client.request(&invite_b);
    assert_eq!(
        resp_b.code(),
        503,
        "a new INVITE while draining: {}",
        resp_b.text()
    );
    std::thread::sleep(Duration::from_millis(300));
    server.assert_alive("SIGTERM with a transaction in flight (it must wait for it)");

    let acked = Instant::now();
    client.send_request(&invite_a.ack_for(&resp_a));
    client.send_request(&invite_b.ack_for(&resp_b));
    let status = server
        .wait_exit(Duration::from_secs(10))
        .unwrap_or_else(|| {
            panic!("still running 10 s after the last transaction was acknowledged (grace is 30 s)")
        });
    assert!(
        status.success(),
        "SIGTERM must end with exit code 0: {status}"
    );
    assert!(
        acked.elapsed() < Duration::from_secs(10),
        "it stopped waiting once the work was done"
    );
}

#[test]
fn sigint_exits_promptly_even_with_transactions_in_flight() {
    let mut server = Server::builder()
        .env("DIALTONE__SHUTDOWN__GRACE_PERIOD_MS", "30000")
        .start();
    let client = UdpClient::new(server.sip_addr());
    let resp = client.request(&Request::invite("alice", Transport::Udp, client.local()));
    assert_eq!(resp.code(), 404);
    server.signal("INT");
    assert!(
        server.wait_exit(Duration::from_secs(2)).is_some(),
        "SIGINT must stop the process within 2 s"
    );
}

#[test]
fn sigterm_with_unfinished_transaction_exits_0_after_the_grace_period() {
    let mut server = Server::builder()
        .env("DIALTONE__SHUTDOWN__GRACE_PERIOD_MS", "1500")
        .start();
    let client = UdpClient::new(server.sip_addr());
    // Never acknowledged: with T1 = 500 ms, Timer H (32 s) outlives the grace period.
    let resp = client.request(&Request::invite("alice", Transport::Udp, client.local()));
    assert_eq!(resp.code(), 404);
    let signalled = Instant::now();
    server.signal("TERM");
    let status = server
        .wait_exit(Duration::from_secs(10))
        .expect("the grace period (1.5 s) bounds the shutdown; still running after 10 s");
    let took = signalled.elapsed();
    assert!(status.success(), "exit code 0 after the grace: {status}");
    assert!(
        took >= Duration::from_millis(1000),
        "it exited after {took:?}: it should have waited for the unacknowledged transaction \
         until the grace period (1.5 s) ran out"
    );
}

#[test]
fn sigterm_on_idle_server_exits_0_quickly() {
    let mut server = Server::builder()
        .env("DIALTONE__SHUTDOWN__GRACE_PERIOD_MS", "30000")
        .start();
    server.signal("TERM");
    let status = server
        .wait_exit(Duration::from_secs(10))
        .expect("an idle server has nothing to wait for, yet it is still running after 10 s");
    assert!(status.success(), "{status}");
}
