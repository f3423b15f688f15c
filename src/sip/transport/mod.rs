//! SIP transports: UDP, TCP and TLS (optionally mutual TLS).
//!
//! Each listener checks the allowlist before reading a byte of SIP (UDP: per datagram,
//! before parsing; streams: at accept), frames stream input by Content-Length
//! ([`crate::sip::framing`]), and hands whole messages up as [`Inbound`]. Sending goes
//! through [`Transports::send`], which reuses the connection a request arrived on for its
//! responses, and an open connection to the same peer for new requests (RFC 3261 §18).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};

use crate::config::{Settings, SipLimits};

pub mod allow;
mod stream;
pub mod tcp;
pub mod tls;
pub mod udp;

use allow::{Allowlist, LogLimiter};
use stream::{ConnTable, WriteFailure};

/// Which transport a message travels on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Udp,
    Tcp,
    Tls,
}

impl Kind {
    /// As written in Via and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Udp => "UDP",
            Kind::Tcp => "TCP",
            Kind::Tls => "TLS",
        }
    }

    /// Reliable transports do not retransmit (RFC 3261 §17).
    pub fn is_reliable(self) -> bool {
        !matches!(self, Kind::Udp)
    }

    /// From a Via transport token or a `;transport=` URI parameter (any case).
    pub fn from_token(token: &str) -> Option<Kind> {
        match token.to_ascii_uppercase().as_str() {
            "UDP" => Some(Kind::Udp),
            "TCP" => Some(Kind::Tcp),
            "TLS" => Some(Kind::Tls),
            _ => None,
        }
    }
}

/// Identifies one stream connection for the life of the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// One whole message (datagram or stream frame) from an allowed peer.
#[derive(Debug, Clone)]
pub struct Inbound {
    pub data: Bytes,
    pub kind: Kind,
    pub source: SocketAddr,
    /// The local address it arrived on.
    pub local: SocketAddr,
    /// The stream connection it arrived on; `None` for UDP.
    pub conn: Option<ConnId>,
    /// Set when the stream could not be framed past this message: `data` holds only the
    /// header block; the connection is closed shortly after the answer is sent.
    pub framing_error: Option<crate::sip::framing::FrameError>,
}

/// Where to send a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub kind: Kind,
    pub addr: SocketAddr,
    /// Prefer this connection (the one a request arrived on); if it is gone, a stream
    /// transport falls back to any open connection to `addr`, then to a new one.
    pub conn: Option<ConnId>,
}

/// Errors from sending.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("{0} transport is not enabled")]
    NotEnabled(&'static str),
    #[error("cannot bind {kind} on {addr}: {source}")]
    Bind {
        kind: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot connect to {addr} over {kind}: {reason}")]
    Connect {
        kind: &'static str,
        addr: SocketAddr,
        reason: String,
    },
    #[error("send to {addr} over {kind} failed: {reason}")]
    Send {
        kind: &'static str,
        addr: SocketAddr,
        reason: String,
    },
    #[error("TLS configuration: {0}")]
    TlsConfig(String),
}

/// Time allowed to open an outbound TCP connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// State every listener and connection task shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub inbound: mpsc::Sender<Inbound>,
    pub limits: SipLimits,
    pub allow: Allowlist,
    pub table: Arc<ConnTable>,
    /// Refusals (allowlist, limits) and TLS handshake failures.
    pub refusal_log: LogLimiter,
    pub shutdown: watch::Receiver<bool>,
}

/// Resolves once shutdown is asked for. A dropped sender counts as shutdown too: nobody
/// is left who could ask for it, so the owner has gone.
pub(crate) async fn shutdown_signalled(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// The running transports. Cheap to clone; all clones share the sockets and connections.
#[derive(Clone, Debug)]
pub struct Transports {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    udp: Option<Arc<UdpSocket>>,
    tcp: Option<SocketAddr>,
    tls: Option<(SocketAddr, tokio_rustls::TlsConnector)>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transports")
            .field("udp", &self.udp.as_ref().and_then(|s| s.local_addr().ok()))
            .field("tcp", &self.tcp)
            .field("tls", &self.tls.as_ref().map(|(addr, _)| addr))
            .field("open_connections", &self.shared.table.open())
            .finish()
    }
}

impl Transports {
    /// Binds the listeners the configuration enables (and nothing else) and spawns their
    /// tasks. Every task ends once `shutdown` becomes `true` (or its sender is dropped).
    pub async fn start(
        settings: &Settings,
        inbound: mpsc::Sender<Inbound>,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Transports, TransportError> {
        let sip = &settings.sip;
        let allow = Allowlist::new(sip.allow.clone());
        if allow.is_empty() {
            tracing::warn!("sip.allow is empty: every SIP source will be refused");
        }
        // Fail on bad TLS files before binding anything.
        let tls_configs = match sip.tls {
            Some(_) => {
                let tls = settings.tls.as_ref().ok_or_else(|| {
                    TransportError::TlsConfig("sip.tls is set but [tls] is not".into())
                })?;
                Some((tls::server_config(tls)?, tls::client_config(tls)?))
            }
            None => None,
        };
        let shared = Arc::new(Shared {
            inbound,
            limits: sip.limits,
            allow,
            table: Arc::new(ConnTable::default()),
            refusal_log: LogLimiter::default(),
            shutdown,
        });

        let udp = match sip.udp {
            Some(addr) => Some(udp::start(addr, Arc::clone(&shared)).await?),
            None => None,
        };
        let tcp = match sip.tcp {
            Some(addr) => Some(tcp::start(addr, Arc::clone(&shared)).await?),
            None => None,
        };
        let tls = match (sip.tls, tls_configs) {
            (Some(addr), Some((server, client))) => {
                let local = tls::start(addr, server, Arc::clone(&shared)).await?;
                Some((local, tokio_rustls::TlsConnector::from(client)))
            }
            _ => None,
        };
        Ok(Transports {
            inner: Arc::new(Inner {
                shared,
                udp,
                tcp,
                tls,
            }),
        })
    }

    /// The bound address of a transport, `None` when it is not enabled.
    pub fn local_addr(&self, kind: Kind) -> Option<SocketAddr> {
        match kind {
            Kind::Udp => self.inner.udp.as_ref().and_then(|s| s.local_addr().ok()),
            Kind::Tcp => self.inner.tcp,
            Kind::Tls => self.inner.tls.as_ref().map(|(addr, _)| *addr),
        }
    }

    /// Open stream connections (TCP and TLS, both directions, handshakes excluded).
    pub fn open_connections(&self) -> usize {
        self.inner.shared.table.open()
    }

    /// Sends one whole message. Streams use `target.conn` while it is open, else any open
    /// connection of that kind to `target.addr` (RFC 3261 §18), else a new connection,
    /// which then also reads like an accepted one. A new TLS connection verifies the
    /// server certificate against the peer's IP address; see
    /// [`Transports::send_to_host`] for a name.
    ///
    /// Returns once the bytes are handed to the socket. Two sends racing to a peer with no
    /// open connection may each open one; both are then usable and reused.
    pub async fn send(&self, target: Target, data: Bytes) -> Result<(), TransportError> {
        self.send_inner(target, None, data).await
    }

    /// Like [`Transports::send`], but a new TLS connection uses `host` for SNI and server
    /// certificate verification (a trunk's domain name).
    pub async fn send_to_host(
        &self,
        target: Target,
        host: &str,
        data: Bytes,
    ) -> Result<(), TransportError> {
        self.send_inner(target, Some(host), data).await
    }

    async fn send_inner(
        &self,
        target: Target,
        host: Option<&str>,
        data: Bytes,
    ) -> Result<(), TransportError> {
        let kind = target.kind;
        let send_error = |reason: String| TransportError::Send {
            kind: kind.as_str(),
            addr: target.addr,
            reason,
        };
        let connector = match kind {
            Kind::Udp => {
                let socket = self
                    .inner
                    .udp
                    .as_ref()
                    .ok_or(TransportError::NotEnabled("UDP"))?;
                socket
                    .send_to(&data, target.addr)
                    .await
                    .map_err(|e| send_error(e.to_string()))?;
                return Ok(());
            }
            Kind::Tcp if self.inner.tcp.is_none() => return Err(TransportError::NotEnabled("TCP")),
            Kind::Tcp => None,
            Kind::Tls => match &self.inner.tls {
                Some((_, connector)) => Some(connector),
                None => return Err(TransportError::NotEnabled("TLS")),
            },
        };

        let shared = &self.inner.shared;
        for conn in shared.table.candidates(kind, target.addr, target.conn) {
            match conn.write(data.clone()).await {
                Ok(()) => return Ok(()),
                // Closed meanwhile, or died writing: try the next way to reach the peer.
                Err(WriteFailure::Gone) => {}
                Err(WriteFailure::Failed(reason)) => {
                    tracing::debug!(conn = conn.id.0, peer = %conn.peer, reason, "write failed; trying another connection");
                }
            }
        }

        let conn = match connector {
            None => tcp::connect(target.addr, Arc::clone(shared)).await?,
            Some(connector) => {
                tls::connect(target.addr, host, connector, Arc::clone(shared)).await?
            }
        };
        conn.write(data).await.map_err(|e| match e {
            WriteFailure::Gone => send_error("connection closed at once".into()),
            WriteFailure::Failed(reason) => send_error(reason),
        })
    }
}

/// Opens a TCP connection with [`CONNECT_TIMEOUT`] and Nagle off.
pub(crate) async fn connect_tcp(
    kind: Kind,
    addr: SocketAddr,
) -> Result<tokio::net::TcpStream, TransportError> {
    let error = |reason: String| TransportError::Connect {
        kind: kind.as_str(),
        addr,
        reason,
    };
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| error("timed out".into()))?
        .map_err(|e| error(e.to_string()))?;
    stream.set_nodelay(true).map_err(|e| error(e.to_string()))?;
    Ok(stream)
}

#[cfg(test)]
pub(crate) mod testutil {
    //! Settings and helpers for the transport tests.

    use std::io::Write;
    use std::path::Path;
    use std::time::Duration;

    use tokio::sync::{mpsc, watch};

    use super::{Inbound, Transports};
    use crate::config::Settings;

    /// Settings from a TOML `[sip]` body (and optional `[tls]` section); anything not named
    /// is off or default.
    pub fn settings(sip: &str, tls: &str) -> Settings {
        let mut text = String::from("[sip]\n");
        for key in ["udp", "tcp", "tls"] {
            if !sip.lines().any(|l| l.starts_with(key)) {
                text.push_str(&format!("{key} = \"\"\n"));
            }
        }
        text.push_str(&format!("{sip}\n[tls]\n{tls}\n[http]\nlisten = \"\"\n"));
        let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        Settings::load_with_env(f.path(), Some(Default::default())).unwrap()
    }

    /// A started set of transports with its inbound queue and shutdown switch.
    pub struct Running {
        pub transports: Transports,
        pub inbound: mpsc::Receiver<Inbound>,
        pub shutdown: watch::Sender<bool>,
    }

    pub async fn start(settings: &Settings) -> Running {
        let (tx, inbound) = mpsc::channel(16);
        let (shutdown, rx) = watch::channel(false);
        let transports = Transports::start(settings, tx, rx).await.unwrap();
        Running {
            transports,
            inbound,
            shutdown,
        }
    }

    /// The next inbound message, failing the test after two seconds.
    pub async fn next(rx: &mut mpsc::Receiver<Inbound>) -> Inbound {
        tokio::time::timeout(Duration::from_secs(2), rx.recv())
            .await
            .expect("no inbound message in time")
            .expect("inbound channel closed")
    }

    /// Asserts nothing arrives for a while.
    pub async fn nothing(rx: &mut mpsc::Receiver<Inbound>) {
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(400), rx.recv()).await {
            panic!("unexpected inbound message {:?}", m.data);
        }
    }

    /// Waits until `cond` holds, failing after three seconds.
    pub async fn eventually(mut cond: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while !cond() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "condition never held"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[allow(dead_code)]
    pub fn write_file(dir: &Path, name: &str, text: &str) -> String {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }
}
