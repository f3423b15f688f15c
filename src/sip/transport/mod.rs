//! SIP transports: UDP, TCP and TLS (optionally mutual TLS).
//!
//! Each listener checks the allowlist before reading a byte of SIP (UDP: per datagram,
//! before parsing; streams: at accept), frames stream input by Content-Length
//! ([`crate::sip::framing`]), and hands whole messages up as [`Inbound`]. Sending goes
//! through [`Transports::send`], which reuses the connection a request arrived on for its
//! responses, and an open connection to the same peer for new requests (RFC 3261 §18).

use std::net::SocketAddr;

use bytes::Bytes;

pub mod allow;
pub mod tcp;
pub mod tls;
pub mod udp;

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
