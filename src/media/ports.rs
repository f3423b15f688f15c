//! The RTP port pool: hands each call an even RTP port and the RTCP port above it
//! (RFC 3550 §11), and takes them back when the call's [`RtpSocket`] is dropped.
//!
//! Both ports are always bound, even when the peer offers rtcp-mux: it costs one socket and
//! keeps the pair reserved, so a peer that ignores rtcp-mux (or answers without it after a
//! re-INVITE) still reaches us, and no other call can take the RTCP port from under us.
//!
//! The pool is a queue of free even ports, rotated to a random start so restarts and
//! several nodes on one host spread over the range. Binding takes the front; a port
//! that fails with "address in use" (another process holds it) goes to the back and the
//! next is tried. Freed ports also go to the back, so a port rests as long as possible
//! before reuse and stray packets of an old call rarely reach a new one. The lock is held
//! only while taking or returning a port, never per packet.

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::{Arc, Mutex};

use rand::Rng;
use tokio::net::UdpSocket;

use crate::sync::lock;

/// Why media could not be set up for a call.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// Every port of the range is taken (by our calls or by other processes).
    #[error("no free RTP port pair in {lo}-{hi}")]
    PortsExhausted { lo: u16, hi: u16 },
    /// Binding failed for a reason other than the port being taken (e.g. the bind address
    /// is not local): trying more ports would not help.
    #[error("cannot bind RTP socket on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}

impl MediaError {
    /// The SIP status to answer an INVITE with: we are out of capacity, try elsewhere.
    pub fn sip_status(&self) -> u16 {
        503
    }
}

#[derive(Debug)]
struct Free {
    ports: VecDeque<u16>,
}

/// A pool of RTP port pairs shared by all calls (cheap to clone).
#[derive(Debug, Clone)]
pub struct PortPool {
    free: Arc<Mutex<Free>>,
    range: (u16, u16),
    bind_ip: IpAddr,
}

impl PortPool {
    /// A pool over the even ports `p` with `lo <= p` and `p + 1 <= hi` (so RTCP fits).
    /// An empty or inverted range yields a pool that is always exhausted.
    pub fn new(range: (u16, u16), bind_ip: IpAddr) -> Self {
        let (lo, hi) = range;
        let first = lo.saturating_add(lo % 2);
        let mut ports: VecDeque<u16> = (u32::from(first)..u32::from(hi))
            .step_by(2)
            // p < hi <= u16::MAX, so p fits.
            .filter_map(|p| u16::try_from(p).ok())
            .collect();
        if !ports.is_empty() {
            let start = rand::rng().random_range(0..ports.len());
            ports.rotate_left(start);
        }
        Self {
            free: Arc::new(Mutex::new(Free { ports })),
            range,
            bind_ip,
        }
    }

    /// Free pairs right now.
    pub fn available(&self) -> usize {
        lock(&self.free).ports.len()
    }

    /// Binds a free pair (RTP on the even port, RTCP on the next).
    ///
    /// Async so a future implementation may wait for a port; today binding never blocks.
    pub async fn bind(&self) -> Result<RtpSocket, MediaError> {
        let (lo, hi) = self.range;
        let attempts = self.available();
        for _ in 0..attempts {
            let Some(port) = lock(&self.free).ports.pop_front() else {
                break;
            };
            match self.bind_pair(port) {
                Ok((rtp, rtcp)) => {
                    return Ok(RtpSocket {
                        rtp,
                        rtcp,
                        lease: Lease {
                            port,
                            pool: Arc::clone(&self.free),
                        },
                    })
                }
                Err((_, e)) if e.kind() == io::ErrorKind::AddrInUse => {
                    tracing::debug!(port, "RTP port in use by another socket; skipped");
                    lock(&self.free).ports.push_back(port);
                }
                Err((addr, source)) => {
                    lock(&self.free).ports.push_back(port);
                    return Err(MediaError::Bind { addr, source });
                }
            }
        }
        Err(MediaError::PortsExhausted { lo, hi })
    }

    fn bind_pair(&self, port: u16) -> Result<(Half, Half), (SocketAddr, io::Error)> {
        let rtp = self.bind_one(port)?;
        let rtcp = self.bind_one(port.saturating_add(1))?;
        Ok((rtp, rtcp))
    }

    fn bind_one(&self, port: u16) -> Result<Half, (SocketAddr, io::Error)> {
        let addr = SocketAddr::new(self.bind_ip, port);
        let wrap = |e| (addr, e);
        let sock = StdUdpSocket::bind(addr).map_err(wrap)?;
        sock.set_nonblocking(true).map_err(wrap)?;
        let tx = sock.try_clone().map_err(wrap)?;
        Ok(Half {
            rx: UdpSocket::from_std(sock).map_err(wrap)?,
            tx,
        })
    }
}

/// Returns the port to the pool when dropped. Declared after the sockets in
/// [`RtpSocket`], so they are closed before the port is offered to another call.
#[derive(Debug)]
struct Lease {
    port: u16,
    pool: Arc<Mutex<Free>>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        lock(&self.pool).ports.push_back(self.port);
    }
}

/// One bound port: the tokio socket we receive on, and a duplicate handle of the same
/// non-blocking socket we send on. Sending straight through the handle skips tokio's
/// readiness tracking, which reports "would block" until the reactor has seen the
/// socket's first writable event; a UDP send only blocks when the kernel buffer is full,
/// and then the packet is better dropped than waited for.
#[derive(Debug)]
struct Half {
    rx: UdpSocket,
    tx: StdUdpSocket,
}

/// A call's bound RTP/RTCP pair. Dropping it closes both and frees the ports.
#[derive(Debug)]
pub struct RtpSocket {
    rtp: Half,
    rtcp: Half,
    // Must stay the last field: fields drop in declaration order.
    lease: Lease,
}

impl RtpSocket {
    /// The RTP port (even); RTCP is `port() + 1`.
    pub fn port(&self) -> u16 {
        self.lease.port
    }

    /// The RTCP port.
    pub fn rtcp_port(&self) -> u16 {
        self.lease.port.saturating_add(1)
    }

    /// The RTP socket's local address (the bind IP, which may be unspecified: SDP should
    /// advertise `media.public_ip` or the interface address instead).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.rtp.rx.local_addr()
    }

    /// The RTP socket, to receive on.
    pub fn rtp(&self) -> &UdpSocket {
        &self.rtp.rx
    }

    /// The RTCP socket, to receive on.
    pub fn rtcp(&self) -> &UdpSocket {
        &self.rtcp.rx
    }

    /// Reads and drops every datagram already queued on both ports (early media nobody
    /// listened to), so a session started now sees only what comes next. Returns how many.
    pub fn discard_pending(&self) -> usize {
        let mut buf = [0u8; 2048];
        let mut n = 0;
        for socket in [&self.rtp.rx, &self.rtcp.rx] {
            // Bounded: a socket flooded faster than we read cannot keep us here.
            while n < 100_000 && socket.try_recv_from(&mut buf).is_ok() {
                n += 1;
            }
        }
        n
    }

    /// Sends a datagram from the RTP port without waiting (`WouldBlock` when the socket
    /// buffer is full: drop the packet).
    pub fn send_rtp(&self, buf: &[u8], dest: SocketAddr) -> io::Result<usize> {
        self.rtp.tx.send_to(buf, dest)
    }

    /// Sends a datagram from the RTCP port without waiting.
    pub fn send_rtcp(&self, buf: &[u8], dest: SocketAddr) -> io::Result<usize> {
        self.rtcp.tx.send_to(buf, dest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    #[tokio::test]
    async fn discard_pending_empties_both_ports_and_leaves_later_datagrams() {
        let pool = PortPool::new((47200, 47299), LOCAL);
        let socket = pool.bind().await.unwrap();
        let peer = std::net::UdpSocket::bind((LOCAL, 0)).unwrap();
        let rtp = SocketAddr::new(LOCAL, socket.port());
        let rtcp = SocketAddr::new(LOCAL, socket.rtcp_port());
        for _ in 0..3 {
            peer.send_to(b"early", rtp).unwrap();
        }
        peer.send_to(b"report", rtcp).unwrap();
        socket.rtp().readable().await.unwrap();
        socket.rtcp().readable().await.unwrap();
        assert_eq!(socket.discard_pending(), 4);
        assert_eq!(socket.discard_pending(), 0);
        peer.send_to(b"answered", rtp).unwrap();
        let mut buf = [0u8; 16];
        let (n, _) = socket.rtp().recv_from(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"answered");
    }

    #[tokio::test]
    async fn binds_even_pairs_and_exhausts_with_a_clear_error() {
        // 3 pairs: 47100, 47102, 47104 (47106 would need 47107 > hi).
        let pool = PortPool::new((47099, 47106), LOCAL);
        assert_eq!(pool.available(), 3);
        let mut held = Vec::new();
        while let Ok(s) = pool.bind().await {
            assert_eq!(s.port() % 2, 0);
            assert!((47100..=47104).contains(&s.port()));
            assert_eq!(s.local_addr().unwrap().port(), s.port());
            assert_eq!(s.rtcp().local_addr().unwrap().port(), s.port() + 1);
            held.push(s);
        }
        // Some may be held by other processes; none may be handed out twice.
        let mut ports: Vec<u16> = held.iter().map(|s| s.port()).collect();
        ports.dedup();
        assert_eq!(ports.len(), held.len());
        let err = pool.bind().await.unwrap_err();
        assert!(matches!(
            err,
            MediaError::PortsExhausted {
                lo: 47099,
                hi: 47106
            }
        ));
        assert_eq!(err.sip_status(), 503);
        drop(held);
        assert_eq!(pool.available(), 3);
    }

    #[tokio::test]
    async fn skips_ports_taken_by_another_socket_and_frees_on_drop() {
        let pool = PortPool::new((47120, 47123), LOCAL);
        // Someone else holds 47122's RTCP port: that pair is unusable.
        let squatter = StdUdpSocket::bind((LOCAL, 47123));
        let a = pool.bind().await.unwrap();
        if squatter.is_ok() {
            assert_eq!(a.port(), 47120);
            assert!(pool.bind().await.is_err());
        }
        let port = a.port();
        drop(a);
        // The port comes back and can be bound again at once.
        let b = pool.bind().await.unwrap();
        assert_eq!(b.port(), port);
    }

    #[tokio::test]
    async fn empty_and_inverted_ranges_are_exhausted() {
        for range in [(5000, 5000), (6001, 6001), (7000, 6000)] {
            let pool = PortPool::new(range, LOCAL);
            assert_eq!(pool.available(), 0);
            assert!(matches!(
                pool.bind().await,
                Err(MediaError::PortsExhausted { .. })
            ));
        }
    }

    #[tokio::test]
    async fn unusable_bind_address_fails_fast() {
        // TEST-NET-1 is not assigned to any local interface.
        let pool = PortPool::new((47140, 47199), IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)));
        assert!(matches!(pool.bind().await, Err(MediaError::Bind { .. })));
        assert_eq!(pool.available(), 30);
    }
}
