//! Free loopback ports. A port free now may be taken by another process before it is
//! bound; [`super::server::ServerBuilder::start`] retries with new ports when the
//! server cannot bind. Ports handed out once are never handed out again by this process,
//! so two tests of one crate never get the same.

use std::collections::HashSet;
use std::net::{TcpListener, UdpSocket};
use std::sync::Mutex;

static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// Records `ports` as handed out; false if any of them already was.
fn claim(ports: &[u16]) -> bool {
    let mut guard = HANDED_OUT.lock().unwrap();
    let set = guard.get_or_insert_with(HashSet::new);
    if ports.iter().any(|p| set.contains(p)) {
        return false;
    }
    set.extend(ports.iter().copied());
    true
}

/// A port the kernel picks for `bind` that also passes `usable`, claimed.
fn pick(what: &str, bind: impl Fn() -> u16, usable: impl Fn(u16) -> bool) -> u16 {
    for _ in 0..200 {
        let port = bind();
        if usable(port) && claim(&[port]) {
            return port;
        }
    }
    panic!("no free {what} port on loopback after 200 tries");
}

fn kernel_udp_port() -> u16 {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind UDP on loopback");
    s.local_addr().unwrap().port()
}

fn kernel_tcp_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind TCP on loopback");
    l.local_addr().unwrap().port()
}

/// A loopback port free for UDP right now.
pub fn free_udp_port() -> u16 {
    pick("UDP", kernel_udp_port, |_| true)
}

/// A loopback port free for TCP right now.
pub fn free_tcp_port() -> u16 {
    pick("TCP", kernel_tcp_port, |_| true)
}

/// A loopback port free for both UDP and TCP right now (SIP uses one number for both).
pub fn free_udp_tcp_port() -> u16 {
    pick("UDP and TCP", kernel_tcp_port, |p| {
        UdpSocket::bind(("127.0.0.1", p)).is_ok()
    })
}

/// `len` consecutive loopback ports, starting at an even number, all free for UDP and TCP
/// right now. Drawn at random below the kernel's ephemeral range (32768+), so that
/// parallel test processes rarely collide and the kernel never hands them out itself.
pub fn free_port_block(len: u16) -> u16 {
    for _ in 0..500 {
        let base = rand::random_range(10_000u16..32_000) & !1;
        let ports: Vec<u16> = (base..base + len).collect();
        let all_free = ports.iter().all(|&p| {
            UdpSocket::bind(("127.0.0.1", p)).is_ok() && TcpListener::bind(("127.0.0.1", p)).is_ok()
        });
        if all_free && claim(&ports) {
            return base;
        }
    }
    panic!("no block of {len} free ports after 500 tries");
}
