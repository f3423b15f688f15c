//! The source allowlist (`sip.allow`) and a bounded logger for refusals.
//!
//! The allowlist is checked before any SIP byte is looked at: per datagram on UDP, at
//! accept on streams. Refusals are always counted; their log lines are rate limited so a
//! scan or a flood of spoofed datagrams cannot fill the log.

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ipnet::IpNet;

/// Networks allowed to send SIP. An empty list allows nothing: the server is closed until
/// the operator names its peers.
#[derive(Debug, Clone, Default)]
pub struct Allowlist {
    nets: Vec<IpNet>,
}

impl Allowlist {
    pub fn new(nets: Vec<IpNet>) -> Allowlist {
        let nets = nets.into_iter().map(canonical_net).collect();
        Allowlist { nets }
    }

    /// Whether `ip` may talk to us. IPv4-mapped IPv6 sources (dual-stack sockets) are
    /// compared as the IPv4 address they carry.
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.nets.iter().any(|net| net.contains(&ip))
    }

    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }
}

/// An IPv4-mapped IPv6 entry (`::ffff:10.0.0.0/104`) as the IPv4 network it means, since
/// sources are compared in canonical form.
fn canonical_net(net: IpNet) -> IpNet {
    if let IpNet::V6(v6) = net {
        if let (Some(v4), true) = (v6.network().to_ipv4_mapped(), v6.prefix_len() >= 96) {
            if let Ok(n) = ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96) {
                return IpNet::V4(n);
            }
        }
    }
    net
}

/// Lets through at most `burst` log lines per `interval` across all sources, and reports how
/// many were held back. Global rather than per source: per-source state would let spoofed
/// UDP sources grow a map without bound.
#[derive(Debug)]
pub struct LogLimiter {
    interval: Duration,
    burst: u32,
    state: Mutex<LimiterState>,
}

#[derive(Debug)]
struct LimiterState {
    window_start: Instant,
    used: u32,
    suppressed: u64,
}

impl LogLimiter {
    pub fn new(interval: Duration, burst: u32) -> LogLimiter {
        LogLimiter {
            interval,
            burst,
            state: Mutex::new(LimiterState {
                window_start: Instant::now(),
                used: 0,
                suppressed: 0,
            }),
        }
    }

    /// `Some(n)` when a line may be written now, `n` being the lines suppressed since the
    /// last one let through; `None` when this line should be dropped (it is counted).
    pub fn permit(&self) -> Option<u64> {
        let mut s = crate::sync::lock(&self.state);
        let now = Instant::now();
        if now.duration_since(s.window_start) >= self.interval {
            s.window_start = now;
            s.used = 0;
        }
        if s.used < self.burst {
            s.used += 1;
            Some(std::mem::take(&mut s.suppressed))
        } else {
            s.suppressed += 1;
            None
        }
    }
}

impl Default for LogLimiter {
    /// Ten lines per ten seconds: enough to see who is knocking, not enough to flood.
    fn default() -> LogLimiter {
        LogLimiter::new(Duration::from_secs(10), 10)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(nets: &[&str]) -> Allowlist {
        Allowlist::new(nets.iter().map(|n| n.parse().unwrap()).collect())
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv4_networks() {
        let a = list(&["10.0.0.0/8", "192.0.2.7/32"]);
        assert!(a.allows(ip("10.1.2.3")));
        assert!(a.allows(ip("192.0.2.7")));
        assert!(!a.allows(ip("192.0.2.8")));
        assert!(!a.allows(ip("11.0.0.1")));
    }

    #[test]
    fn ipv6_networks() {
        let a = list(&["2001:db8::/32", "::1/128"]);
        assert!(a.allows(ip("2001:db8:1::5")));
        assert!(a.allows(ip("::1")));
        assert!(!a.allows(ip("2001:db9::1")));
        assert!(!a.allows(ip("127.0.0.1")));
    }

    #[test]
    fn mapped_ipv4_matches_ipv4_entries() {
        let a = list(&["10.0.0.0/8"]);
        assert!(a.allows(ip("::ffff:10.1.2.3")));
        assert!(!a.allows(ip("::ffff:11.1.2.3")));
        let mapped_entry = list(&["::ffff:10.0.0.0/104"]);
        assert!(mapped_entry.allows(ip("10.9.9.9")));
        assert!(!mapped_entry.allows(ip("11.9.9.9")));
    }

    #[test]
    fn empty_list_allows_nothing() {
        let a = Allowlist::new(Vec::new());
        assert!(a.is_empty());
        assert!(!a.allows(ip("127.0.0.1")));
        assert!(!a.allows(ip("::1")));
    }

    #[test]
    fn limiter_lets_a_burst_through_then_counts() {
        let l = LogLimiter::new(Duration::from_millis(50), 2);
        assert_eq!(l.permit(), Some(0));
        assert_eq!(l.permit(), Some(0));
        assert_eq!(l.permit(), None);
        assert_eq!(l.permit(), None);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(l.permit(), Some(2));
    }
}
