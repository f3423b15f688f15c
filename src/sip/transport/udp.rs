//! SIP over UDP: one socket for receiving and sending.
//!
//! Each datagram is checked against the allowlist before anything else, then against the
//! size limit, and handed up without blocking the socket: when the core is behind,
//! datagrams are dropped (and counted) rather than queued without bound — UDP peers
//! retransmit.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::mpsc::error::TrySendError;
use tracing::{debug, warn};

use super::{Inbound, Kind, Shared, TransportError};
use crate::metrics;

const TRANSPORT: &str = "UDP";

/// Binds `addr` and spawns the receive loop; the socket is shared with the sender.
pub(crate) async fn start(
    addr: SocketAddr,
    shared: Arc<Shared>,
) -> Result<Arc<UdpSocket>, TransportError> {
    let socket = UdpSocket::bind(addr)
        .await
        .map_err(|source| TransportError::Bind {
            kind: TRANSPORT,
            addr,
            source,
        })?;
    let local = socket.local_addr().map_err(|source| TransportError::Bind {
        kind: TRANSPORT,
        addr,
        source,
    })?;
    let socket = Arc::new(socket);
    tracing::info!(%local, "SIP UDP listening");
    tokio::spawn(recv_loop(Arc::clone(&socket), local, shared));
    Ok(socket)
}

async fn recv_loop(socket: Arc<UdpSocket>, local: SocketAddr, shared: Arc<Shared>) {
    let max = shared.limits.max_message_bytes;
    // One byte over the limit, so an oversize datagram shows as `n > max` rather than
    // being silently truncated to a plausible message. Reused for every datagram.
    let mut buf = vec![0u8; max + 1];
    let mut shutdown = shared.shutdown.clone();
    loop {
        let received = tokio::select! {
            r = socket.recv_from(&mut buf) => r,
            _ = super::shutdown_signalled(&mut shutdown) => return,
        };
        let (n, source) = match received {
            Ok(r) => r,
            Err(e) => {
                // ICMP errors from earlier sends can surface here; they are not fatal.
                // Anything else may repeat at once: pause so the loop cannot spin.
                debug!(error = %e, "UDP receive error");
                if !matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionRefused
                ) {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                continue;
            }
        };
        if !shared.allow.allows(source.ip()) {
            metrics::drop("not_allowed", TRANSPORT);
            if let Some(suppressed) = shared.refusal_log.permit() {
                warn!(%source, transport = TRANSPORT, suppressed, "refused: source not in sip.allow");
            }
            continue;
        }
        if n > max {
            metrics::drop("too_large", TRANSPORT);
            debug!(%source, limit = max, "UDP datagram over sip.max_message_bytes dropped");
            continue;
        }
        let datagram = &buf[..n];
        if datagram.iter().all(|b| matches!(b, b'\r' | b'\n')) {
            // Empty or CRLF keep-alive datagrams carry no message.
            continue;
        }
        let inbound = Inbound {
            data: Bytes::copy_from_slice(datagram),
            kind: Kind::Udp,
            source,
            local,
            conn: None,
            framing_error: None,
        };
        match shared.inbound.try_send(inbound) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => metrics::drop("overload", TRANSPORT),
            Err(TrySendError::Closed(_)) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{next, nothing, settings, start};
    use super::super::{Kind, Target};
    use bytes::Bytes;
    use tokio::net::UdpSocket;

    const OPTIONS: &[u8] = b"OPTIONS sip:a@127.0.0.1 SIP/2.0\r\nContent-Length: 0\r\n\r\n";

    #[tokio::test]
    async fn allowed_datagram_arrives_and_reply_goes_back() {
        let mut t = start(&settings("udp = \"127.0.0.1:0\"", "")).await;
        let server = t.transports.local_addr(Kind::Udp).unwrap();
        assert!(t.transports.local_addr(Kind::Tcp).is_none());
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client.send_to(OPTIONS, server).await.unwrap();
        let m = next(&mut t.inbound).await;
        assert_eq!(&m.data[..], OPTIONS);
        assert_eq!(m.kind, Kind::Udp);
        assert_eq!(m.source, client.local_addr().unwrap());
        assert_eq!(m.local, server);
        assert!(m.conn.is_none() && m.framing_error.is_none());

        let target = Target {
            kind: Kind::Udp,
            addr: m.source,
            conn: None,
        };
        t.transports
            .send(target, Bytes::from_static(b"SIP/2.0 200 OK\r\n\r\n"))
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        let (n, from) = client.recv_from(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"SIP/2.0 200 OK\r\n\r\n");
        assert_eq!(from, server);
    }

    #[tokio::test]
    async fn source_outside_allowlist_never_arrives() {
        let mut t = start(&settings(
            "udp = \"127.0.0.1:0\"\nallow = [\"10.0.0.0/8\"]",
            "",
        ))
        .await;
        let server = t.transports.local_addr(Kind::Udp).unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client.send_to(OPTIONS, server).await.unwrap();
        nothing(&mut t.inbound).await;
    }

    #[tokio::test]
    async fn oversize_datagram_is_dropped() {
        let mut t = start(&settings(
            "udp = \"127.0.0.1:0\"\nmax_message_bytes = 1024",
            "",
        ))
        .await;
        let server = t.transports.local_addr(Kind::Udp).unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client.send_to(&[b'x'; 1025], server).await.unwrap();
        // Exactly at the limit still passes, and shows the oversize one was skipped.
        let mut at_limit = OPTIONS.to_vec();
        at_limit.resize(1024, b'y');
        client.send_to(&at_limit, server).await.unwrap();
        let m = next(&mut t.inbound).await;
        assert_eq!(m.data.len(), 1024);
        nothing(&mut t.inbound).await;
    }

    #[tokio::test]
    async fn shutdown_stops_receiving() {
        let mut t = start(&settings("udp = \"127.0.0.1:0\"", "")).await;
        let server = t.transports.local_addr(Kind::Udp).unwrap();
        t.shutdown.send(true).unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client.send_to(OPTIONS, server).await.unwrap();
        nothing(&mut t.inbound).await;
    }
}
