//! SIP over TCP: the accept loop with its admission checks, and outbound connections.
//! Everything after the stream exists is shared with TLS (`stream.rs`).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

use super::stream::{spawn_connection, ConnHandle, Slot};
use super::{Kind, Shared, TransportError};
use crate::metrics;

/// Binds a stream listener; shared by TCP and TLS.
pub(crate) async fn bind(kind: Kind, addr: SocketAddr) -> Result<TcpListener, TransportError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| TransportError::Bind {
            kind: kind.as_str(),
            addr,
            source,
        })
}

/// Binds `addr` and spawns the accept loop; returns the bound address.
pub(crate) async fn start(
    addr: SocketAddr,
    shared: Arc<Shared>,
) -> Result<SocketAddr, TransportError> {
    let listener = bind(Kind::Tcp, addr).await?;
    let local = listener
        .local_addr()
        .map_err(|source| TransportError::Bind {
            kind: "TCP",
            addr,
            source,
        })?;
    tracing::info!(%local, "SIP TCP listening");
    let accept_shared = Arc::clone(&shared);
    tokio::spawn(accept_loop(
        listener,
        Kind::Tcp,
        accept_shared,
        move |stream, slot, shared| {
            plain_connection(stream, slot, shared);
        },
    ));
    Ok(local)
}

fn plain_connection(stream: TcpStream, slot: Slot, shared: Arc<Shared>) {
    match stream.local_addr() {
        Ok(local) => {
            spawn_connection(stream, slot, local, shared);
        }
        Err(e) => debug!(error = %e, "accepted TCP connection already gone"),
    }
}

/// Accepts until shutdown; admits each connection (allowlist, per-IP and total limits)
/// before `serve` gets it. Refused connections are closed at once.
pub(crate) async fn accept_loop<F>(listener: TcpListener, kind: Kind, shared: Arc<Shared>, serve: F)
where
    F: Fn(TcpStream, Slot, Arc<Shared>),
{
    let transport = kind.as_str();
    let mut shutdown = shared.shutdown.clone();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = super::shutdown_signalled(&mut shutdown) => return,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                if let Some(suppressed) = shared.refusal_log.permit() {
                    warn!(transport, error = %e, suppressed, "accept failed");
                }
                // Out of descriptors and the like: back off rather than spin.
                if !is_per_connection_error(&e) {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                continue;
            }
        };
        let cause = if shared.allow.allows(peer.ip()) {
            match shared.table.admit(kind, peer, &shared.limits) {
                Ok(slot) => {
                    if let Err(e) = stream.set_nodelay(true) {
                        debug!(%peer, error = %e, "cannot set TCP_NODELAY");
                    }
                    serve(stream, slot, Arc::clone(&shared));
                    continue;
                }
                Err(cause) => cause,
            }
        } else {
            "not_allowed"
        };
        metrics::drop(cause, transport);
        if let Some(suppressed) = shared.refusal_log.permit() {
            warn!(%peer, transport, cause, suppressed, "connection refused");
        }
        drop(stream);
    }
}

/// Errors that concern one connection only (the peer gave up before accept finished).
fn is_per_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    )
}

/// Opens an outbound TCP connection, registered and read like an accepted one.
pub(crate) async fn connect(
    addr: SocketAddr,
    shared: Arc<Shared>,
) -> Result<ConnHandle, TransportError> {
    let stream = super::connect_tcp(Kind::Tcp, addr).await?;
    let local = stream.local_addr().map_err(|e| TransportError::Connect {
        kind: "TCP",
        addr,
        reason: e.to_string(),
    })?;
    let slot = shared.table.reserve_outbound(Kind::Tcp, addr);
    Ok(spawn_connection(stream, slot, local, shared))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::super::testutil::{eventually, next, nothing, settings, start, Running};
    use super::super::{Kind, Target};
    use crate::sip::framing::FrameError;

    const A: &[u8] = b"OPTIONS sip:a@127.0.0.1 SIP/2.0\r\nContent-Length: 5\r\n\r\nhello";
    const B: &[u8] = b"OPTIONS sip:b@127.0.0.1 SIP/2.0\r\nl: 0\r\n\r\n";

    async fn tcp(extra: &str) -> Running {
        start(&settings(&format!("tcp = \"127.0.0.1:0\"\n{extra}"), "")).await
    }

    fn server(t: &Running) -> std::net::SocketAddr {
        t.transports.local_addr(Kind::Tcp).unwrap()
    }

    /// Reads until `want` bytes arrived (or fails after two seconds).
    async fn read_exact(s: &mut TcpStream, want: usize) -> Vec<u8> {
        let mut buf = vec![0u8; want];
        tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut buf))
            .await
            .expect("read timed out")
            .unwrap();
        buf
    }

    /// Whether the server closed the connection within `within`.
    async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
        let mut buf = [0u8; 256];
        loop {
            match tokio::time::timeout(within, s.read(&mut buf)).await {
                Err(_) => return false,
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue,
            }
        }
    }

    #[tokio::test]
    async fn byte_by_byte_and_coalesced_frames_arrive_exactly() {
        let mut t = tcp("").await;
        let mut c = TcpStream::connect(server(&t)).await.unwrap();
        for b in A {
            c.write_all(&[*b]).await.unwrap();
            c.flush().await.unwrap();
        }
        let m = next(&mut t.inbound).await;
        assert_eq!(&m.data[..], A);
        assert_eq!(m.kind, Kind::Tcp);
        assert_eq!(m.source, c.local_addr().unwrap());
        assert!(m.conn.is_some());

        let mut both = B.to_vec();
        both.extend_from_slice(b"\r\n");
        both.extend_from_slice(A);
        c.write_all(&both).await.unwrap();
        assert_eq!(&next(&mut t.inbound).await.data[..], B);
        assert_eq!(&next(&mut t.inbound).await.data[..], A);
        nothing(&mut t.inbound).await;
    }

    #[tokio::test]
    async fn ping_gets_pong() {
        let t = tcp("").await;
        let mut c = TcpStream::connect(server(&t)).await.unwrap();
        c.write_all(b"\r\n\r\n").await.unwrap();
        assert_eq!(read_exact(&mut c, 2).await, b"\r\n");
    }

    #[tokio::test]
    async fn response_goes_back_on_the_same_connection_and_reuse_needs_no_accept() {
        let mut t = tcp("").await;
        let mut c = TcpStream::connect(server(&t)).await.unwrap();
        c.write_all(A).await.unwrap();
        let m = next(&mut t.inbound).await;
        let reply = Bytes::from_static(b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n");
        let target = Target {
            kind: Kind::Tcp,
            addr: m.source,
            conn: m.conn,
        };
        t.transports.send(target, reply.clone()).await.unwrap();
        assert_eq!(read_exact(&mut c, reply.len()).await, reply);

        // No `conn`: the open connection to that address is reused. The client does not
        // listen, so a new connection could not have been made.
        let target = Target {
            conn: None,
            ..target
        };
        t.transports.send(target, reply.clone()).await.unwrap();
        assert_eq!(read_exact(&mut c, reply.len()).await, reply);
        assert_eq!(t.transports.open_connections(), 1);
    }

    #[tokio::test]
    async fn outbound_connection_is_registered_and_read() {
        let mut t = tcp("").await;
        let peer = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = Target {
            kind: Kind::Tcp,
            addr: peer.local_addr().unwrap(),
            conn: None,
        };
        t.transports
            .send(target, Bytes::from_static(B))
            .await
            .unwrap();
        let (mut s, _) = peer.accept().await.unwrap();
        assert_eq!(read_exact(&mut s, B.len()).await, B);
        assert_eq!(t.transports.open_connections(), 1);

        // The second send reuses it, and what the peer writes back comes up.
        t.transports
            .send(target, Bytes::from_static(B))
            .await
            .unwrap();
        assert_eq!(read_exact(&mut s, B.len()).await, B);
        s.write_all(A).await.unwrap();
        let m = next(&mut t.inbound).await;
        assert_eq!(&m.data[..], A);
        assert_eq!(m.source, target.addr);

        drop(s);
        eventually(|| t.transports.open_connections() == 0).await;
    }

    #[tokio::test]
    async fn per_ip_limit_refuses_the_extra_connection() {
        let mut t = tcp("max_connections_per_ip = 1").await;
        let mut first = TcpStream::connect(server(&t)).await.unwrap();
        eventually(|| t.transports.open_connections() == 1).await;
        let mut second = TcpStream::connect(server(&t)).await.unwrap();
        let _ = second.write_all(B).await;
        assert!(closed_within(&mut second, Duration::from_secs(2)).await);
        first.write_all(A).await.unwrap();
        assert_eq!(&next(&mut t.inbound).await.data[..], A);
        nothing(&mut t.inbound).await;
        assert_eq!(t.transports.open_connections(), 1);
    }

    #[tokio::test]
    async fn our_own_connections_do_not_use_the_per_ip_allowance() {
        let mut t = tcp("max_connections_per_ip = 1").await;
        let peer = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = Target {
            kind: Kind::Tcp,
            addr: peer.local_addr().unwrap(),
            conn: None,
        };
        t.transports
            .send(target, Bytes::from_static(B))
            .await
            .unwrap();
        let mut c = TcpStream::connect(server(&t)).await.unwrap();
        c.write_all(A).await.unwrap();
        assert_eq!(&next(&mut t.inbound).await.data[..], A);
        assert_eq!(t.transports.open_connections(), 2);
    }

    #[tokio::test]
    async fn total_limit_refuses_the_extra_connection() {
        let t = tcp("max_connections = 1").await;
        let _first = TcpStream::connect(server(&t)).await.unwrap();
        eventually(|| t.transports.open_connections() == 1).await;
        let mut second = TcpStream::connect(server(&t)).await.unwrap();
        assert!(closed_within(&mut second, Duration::from_secs(2)).await);
    }

    #[tokio::test]
    async fn peer_outside_allowlist_is_closed_unread() {
        let mut t = tcp("allow = [\"10.0.0.0/8\"]").await;
        let mut c = TcpStream::connect(server(&t)).await.unwrap();
        let _ = c.write_all(A).await;
        assert!(closed_within(&mut c, Duration::from_secs(2)).await);
        nothing(&mut t.inbound).await;
        assert_eq!(t.transports.open_connections(), 0);
    }

    #[tokio::test]
    async fn bad_content_length_is_reported_then_the_connection_closes() {
        let mut t = tcp("").await;
        let mut c = TcpStream::connect(server(&t)).await.unwrap();
        let head = b"OPTIONS sip:a@127.0.0.1 SIP/2.0\r\nContent-Length: abc\r\n\r\n";
        c.write_all(head).await.unwrap();
        c.write_all(B).await.unwrap();
        let m = next(&mut t.inbound).await;
        assert_eq!(m.framing_error, Some(FrameError::BadContentLength));
        assert_eq!(&m.data[..], head);

        // The answer still gets out during the grace period.
        let reply = Bytes::from_static(b"SIP/2.0 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
        let target = Target {
            kind: Kind::Tcp,
            addr: m.source,
            conn: m.conn,
        };
        t.transports.send(target, reply.clone()).await.unwrap();
        assert_eq!(read_exact(&mut c, reply.len()).await, reply);
        assert!(closed_within(&mut c, Duration::from_secs(4)).await);
        nothing(&mut t.inbound).await;
        eventually(|| t.transports.open_connections() == 0).await;
    }

    #[tokio::test]
    async fn oversize_stream_without_headers_closes() {
        let mut t = tcp("max_message_bytes = 1024").await;
        let mut c = TcpStream::connect(server(&t)).await.unwrap();
        let _ = c.write_all(&[b'x'; 4096]).await;
        assert!(closed_within(&mut c, Duration::from_secs(2)).await);
        nothing(&mut t.inbound).await;
    }

    #[tokio::test]
    async fn open_count_returns_to_zero_after_clients_leave() {
        let t = tcp("").await;
        let a = TcpStream::connect(server(&t)).await.unwrap();
        let b = TcpStream::connect(server(&t)).await.unwrap();
        eventually(|| t.transports.open_connections() == 2).await;
        drop(a);
        drop(b);
        eventually(|| t.transports.open_connections() == 0).await;
    }

    #[tokio::test]
    async fn idle_connection_is_closed() {
        let t = tcp("idle_connection_timeout_ms = 200").await;
        let mut c = TcpStream::connect(server(&t)).await.unwrap();
        assert!(closed_within(&mut c, Duration::from_secs(2)).await);
        eventually(|| t.transports.open_connections() == 0).await;
    }

    #[tokio::test]
    async fn shutdown_closes_listener_and_connections() {
        let t = tcp("").await;
        let addr = server(&t);
        let mut c = TcpStream::connect(addr).await.unwrap();
        eventually(|| t.transports.open_connections() == 1).await;
        t.shutdown.send(true).unwrap();
        assert!(closed_within(&mut c, Duration::from_secs(2)).await);
        eventually(|| t.transports.open_connections() == 0).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(TcpStream::connect(addr).await.is_err());
    }

    #[tokio::test]
    async fn disabled_transports_refuse_to_send() {
        let t = tcp("").await;
        let target = Target {
            kind: Kind::Udp,
            addr: "127.0.0.1:9".parse().unwrap(),
            conn: None,
        };
        assert!(t.transports.send(target, Bytes::new()).await.is_err());
        let target = Target {
            kind: Kind::Tls,
            ..target
        };
        assert!(t.transports.send(target, Bytes::new()).await.is_err());
    }
}
