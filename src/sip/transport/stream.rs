//! What TCP and TLS share once the byte stream exists: the connection table with its
//! limits, and the per-connection reader (framing, pings) and writer (whole messages, in
//! order, from many senders).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::debug;

use super::{ConnId, Inbound, Kind, Shared};
use crate::config::SipLimits;
use crate::metrics;
use crate::sip::framing::{next_frame, Frame};

/// Messages queued for one connection's writer before senders wait.
const WRITE_QUEUE: usize = 64;
/// A single message write that takes longer means the peer stopped reading.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection stays open after a framing error, so the 400 can be written.
const FRAMING_ERROR_GRACE: Duration = Duration::from_secs(2);
/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 8 * 1024;
/// Time allowed for a TCP FIN / TLS close_notify at the end.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// One whole message for a connection's writer, with an optional report of the write.
pub(crate) struct Outgoing {
    data: Bytes,
    ack: Option<oneshot::Sender<Result<(), String>>>,
}

/// A way to write to one open connection.
#[derive(Clone, Debug)]
pub(crate) struct ConnHandle {
    pub id: ConnId,
    pub kind: Kind,
    pub peer: SocketAddr,
    tx: mpsc::Sender<Outgoing>,
}

/// Why a write through a handle did not happen.
pub(crate) enum WriteFailure {
    /// The connection had already closed; nothing was written.
    Gone,
    /// The write was attempted and failed; the connection is closing.
    Failed(String),
}

impl ConnHandle {
    /// Queues `data` and waits until it is written to the socket (or fails).
    pub async fn write(&self, data: Bytes) -> Result<(), WriteFailure> {
        let (ack, done) = oneshot::channel();
        if self
            .tx
            .send(Outgoing {
                data,
                ack: Some(ack),
            })
            .await
            .is_err()
        {
            return Err(WriteFailure::Gone);
        }
        match done.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(WriteFailure::Failed(reason)),
            Err(_) => Err(WriteFailure::Failed(
                "connection closed before the message was written".into(),
            )),
        }
    }
}

/// Open stream connections, by id and by (transport, peer), with the counts the limits need.
#[derive(Debug, Default)]
pub(crate) struct ConnTable {
    next_id: AtomicU64,
    inner: Mutex<TableInner>,
}

#[derive(Debug, Default)]
struct TableInner {
    by_id: HashMap<ConnId, ConnHandle>,
    /// Newest last, so reuse prefers the most recent connection to a peer.
    by_peer: HashMap<(Kind, SocketAddr), Vec<ConnId>>,
    /// Accepted slots (handshaking or open) per canonical source IP, and all slots.
    per_ip: HashMap<IpAddr, usize>,
    total: usize,
}

impl ConnTable {
    fn lock(&self) -> MutexGuard<'_, TableInner> {
        // A panic while holding this lock leaves plain counters and maps; carry on.
        crate::sync::lock(&self.inner)
    }

    /// Takes a slot for an accepted connection, or names the limit that refuses it (a
    /// metrics cause). Slots are taken before any TLS handshake so handshakes count too.
    pub fn admit(
        self: &Arc<Self>,
        kind: Kind,
        peer: SocketAddr,
        limits: &SipLimits,
    ) -> Result<Slot, &'static str> {
        let ip = peer.ip().to_canonical();
        let mut t = self.lock();
        if t.per_ip.get(&ip).copied().unwrap_or(0) >= limits.max_connections_per_ip {
            return Err("connection_limit_per_ip");
        }
        if t.total >= limits.max_connections {
            return Err("connection_limit");
        }
        *t.per_ip.entry(ip).or_insert(0) += 1;
        Ok(self.take_slot(&mut t, kind, peer, true))
    }

    /// Takes a slot for a connection we open. Our own connections are never refused, and
    /// do not use up the peer's per-IP allowance for connecting to us.
    pub fn reserve_outbound(self: &Arc<Self>, kind: Kind, peer: SocketAddr) -> Slot {
        let mut t = self.lock();
        self.take_slot(&mut t, kind, peer, false)
    }

    fn take_slot(
        self: &Arc<Self>,
        t: &mut TableInner,
        kind: Kind,
        peer: SocketAddr,
        inbound: bool,
    ) -> Slot {
        t.total += 1;
        Slot {
            table: Arc::clone(self),
            id: ConnId(self.next_id.fetch_add(1, Ordering::Relaxed) + 1),
            kind,
            peer,
            inbound,
            registered: false,
        }
    }

    fn register(&self, slot: &mut Slot, handle: ConnHandle) {
        let mut t = self.lock();
        t.by_peer
            .entry((handle.kind, handle.peer))
            .or_default()
            .push(handle.id);
        t.by_id.insert(handle.id, handle);
        slot.registered = true;
        metrics::connections_open(slot.kind.as_str(), 1.0);
    }

    /// Connections to try for `kind`/`addr`, best first: `preferred` when it is still open
    /// and of that kind, then others to the same peer, newest first.
    pub fn candidates(
        &self,
        kind: Kind,
        addr: SocketAddr,
        preferred: Option<ConnId>,
    ) -> Vec<ConnHandle> {
        let t = self.lock();
        let mut out = Vec::new();
        if let Some(h) = preferred.and_then(|id| t.by_id.get(&id)) {
            if h.kind == kind {
                out.push(h.clone());
            }
        }
        if let Some(ids) = t.by_peer.get(&(kind, addr)) {
            for id in ids.iter().rev() {
                if Some(*id) != preferred {
                    if let Some(h) = t.by_id.get(id) {
                        out.push(h.clone());
                    }
                }
            }
        }
        out
    }

    /// Established connections (handshakes in progress are not counted).
    pub fn open(&self) -> usize {
        self.lock().by_id.len()
    }
}

/// A place in the connection table. Dropping it (on every exit path of a connection task)
/// frees the limits, removes the connection and keeps the open-connections gauge exact.
#[derive(Debug)]
pub(crate) struct Slot {
    table: Arc<ConnTable>,
    id: ConnId,
    kind: Kind,
    peer: SocketAddr,
    /// Accepted (counts in `per_ip`) rather than opened by us.
    inbound: bool,
    registered: bool,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut t = self.table.lock();
        let ip = self.peer.ip().to_canonical();
        if self.inbound {
            if let Some(n) = t.per_ip.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    t.per_ip.remove(&ip);
                }
            }
        }
        t.total = t.total.saturating_sub(1);
        if self.registered {
            t.by_id.remove(&self.id);
            let key = (self.kind, self.peer);
            if let Some(ids) = t.by_peer.get_mut(&key) {
                ids.retain(|id| *id != self.id);
                if ids.is_empty() {
                    t.by_peer.remove(&key);
                }
            }
            metrics::connections_open(self.kind.as_str(), -1.0);
        }
    }
}

/// Registers a connected (and, for TLS, handshaken) stream and spawns its task. The
/// returned handle can be written to at once.
pub(crate) fn spawn_connection<S>(
    stream: S,
    mut slot: Slot,
    local: SocketAddr,
    shared: Arc<Shared>,
) -> ConnHandle
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (tx, rx) = mpsc::channel(WRITE_QUEUE);
    let handle = ConnHandle {
        id: slot.id,
        kind: slot.kind,
        peer: slot.peer,
        tx,
    };
    shared.table.register(&mut slot, handle.clone());
    debug!(conn = handle.id.0, peer = %handle.peer, transport = handle.kind.as_str(), "connection open");
    let me = handle.clone();
    tokio::spawn(async move {
        let _slot = slot;
        run(stream, me, local, rx, shared).await;
    });
    handle
}

/// Milliseconds since the connection started at which bytes last moved, shared by the
/// reader, writer and idle timer of one connection.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

async fn run<S>(
    stream: S,
    me: ConnHandle,
    local: SocketAddr,
    rx: mpsc::Receiver<Outgoing>,
    shared: Arc<Shared>,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut reader, mut writer) = tokio::io::split(stream);
    let activity = Activity {
        start: Instant::now(),
        last_ms: AtomicU64::new(0),
    };
    let mut shutdown = shared.shutdown.clone();
    let idle = shared.limits.idle_connection_timeout;
    let reason = tokio::select! {
        r = read_loop(&mut reader, &me, local, &shared, &activity) => r,
        r = write_loop(&mut writer, rx, &activity) => r,
        r = idle_timer(&activity, idle) => r,
        _ = super::shutdown_signalled(&mut shutdown) => "shutdown",
    };
    debug!(conn = me.id.0, peer = %me.peer, transport = me.kind.as_str(), reason, "connection closed");
    // A polite close (FIN, TLS close_notify), bounded so a stuck peer cannot hold the task.
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, writer.shutdown()).await;
}

async fn idle_timer(activity: &Activity, idle: Duration) -> &'static str {
    loop {
        let deadline = activity.last() + idle;
        if Instant::now() >= deadline {
            return "idle";
        }
        tokio::time::sleep_until(deadline).await;
    }
}

async fn write_loop<S: AsyncWrite>(
    writer: &mut WriteHalf<S>,
    mut rx: mpsc::Receiver<Outgoing>,
    activity: &Activity,
) -> &'static str {
    // The table keeps a sender alive while the connection is open, so `None` only
    // happens once everything is being torn down.
    while let Some(out) = rx.recv().await {
        let result = tokio::time::timeout(WRITE_TIMEOUT, async {
            writer.write_all(&out.data).await?;
            writer.flush().await
        })
        .await;
        let (ack, reason) = match result {
            Ok(Ok(())) => (Ok(()), None),
            Ok(Err(e)) => (Err(e.to_string()), Some("write error")),
            Err(_) => (Err("write timed out".to_string()), Some("write timeout")),
        };
        if let Some(tx) = out.ack {
            let _ = tx.send(ack);
        }
        if let Some(reason) = reason {
            return reason;
        }
        activity.touch();
    }
    "writer closed"
}

async fn read_loop<S: AsyncRead>(
    reader: &mut ReadHalf<S>,
    me: &ConnHandle,
    local: SocketAddr,
    shared: &Shared,
    activity: &Activity,
) -> &'static str {
    let max = shared.limits.max_message_bytes;
    let transport = me.kind.as_str();
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    loop {
        // Take every whole frame the buffer holds before reading more.
        loop {
            match next_frame(&buf, max) {
                Frame::Incomplete => break,
                Frame::Ping(n) => {
                    buf.advance(n);
                    // RFC 5626 §4.4.1: answer a CRLFCRLF ping with one CRLF. If the write
                    // queue is full the peer is being sent to anyway; skipping is harmless.
                    let _ = me.tx.try_send(Outgoing {
                        data: Bytes::from_static(b"\r\n"),
                        ack: None,
                    });
                }
                Frame::Skip(n) => buf.advance(n),
                Frame::Message(n) => {
                    let inbound = Inbound {
                        data: buf.split_to(n).freeze(),
                        kind: me.kind,
                        source: me.peer,
                        local,
                        conn: Some(me.id),
                        framing_error: None,
                    };
                    // Backpressure: a busy core slows this peer's reads, nothing is lost.
                    if shared.inbound.send(inbound).await.is_err() {
                        return "receiver gone";
                    }
                }
                Frame::Invalid { cause, header_len } => {
                    metrics::drop(cause.cause(), transport);
                    debug!(conn = me.id.0, peer = %me.peer, transport, %cause, "stream cannot be framed");
                    let Some(header_len) = header_len else {
                        // No header block to answer: nothing more can be done here.
                        return "framing error";
                    };
                    let inbound = Inbound {
                        data: buf.split_to(header_len).freeze(),
                        kind: me.kind,
                        source: me.peer,
                        local,
                        conn: Some(me.id),
                        framing_error: Some(cause),
                    };
                    if shared.inbound.send(inbound).await.is_err() {
                        return "receiver gone";
                    }
                    // Stop reading; the writer stays up long enough to send the 400.
                    tokio::time::sleep(FRAMING_ERROR_GRACE).await;
                    return "framing error";
                }
            }
        }
        // `next_frame` refuses a buffer past `max`, so this stays within max + READ_CHUNK.
        buf.reserve(READ_CHUNK);
        match reader.read_buf(&mut buf).await {
            Ok(0) => return "closed by peer",
            Ok(_) => activity.touch(),
            Err(e) => {
                debug!(conn = me.id.0, peer = %me.peer, transport, error = %e, "read failed");
                return "read error";
            }
        }
    }
}
