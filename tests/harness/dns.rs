//! A real DNS server for the tests: dnsmasq on a free loopback port, answering only the
//! records a test gives it. Killed on drop.

use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::ports::free_udp_port;
use super::require_tool;

pub struct Dns {
    child: Child,
    pub addr: SocketAddr,
}

impl Dns {
    /// Starts dnsmasq serving `records` (dnsmasq options such as `--srv-host=...`) and
    /// nothing else; waits (≤ 10 s) until it answers a query.
    pub fn start(records: &[String]) -> Dns {
        require_tool("dnsmasq");
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
            .expect("run dnsmasq");
        let dns = Dns {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
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
            probe.send_to(&query, dns.addr).unwrap();
            if probe.recv(&mut [0u8; 512]).is_ok() {
                return dns;
            }
            assert!(Instant::now() < deadline, "dnsmasq did not answer");
        }
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
