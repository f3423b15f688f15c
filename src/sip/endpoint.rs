//! The SIP endpoint: the receive loop between the transports and the transactions, and
//! the face the rest of the server sees of the SIP stack.
//!
//! Each inbound message is parsed, validated and dispatched: a response to the client
//! transaction it matches; a request to the server transaction it matches (RFC 3261
//! §17.2.3) as a retransmission, an ACK or a CANCEL, or to the table of finished ones; a
//! new request to a new server transaction, answered by the user-agent core
//! ([`crate::sip::ua`]) or handed to the [`Handler`]. What cannot be parsed well enough for
//! a transaction is answered statelessly, or dropped and counted. The transactions run in
//! [`crate::sip::driver`].

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, trace, warn};

use crate::config::{SipLimits, TimerSettings};
use crate::metrics;
use crate::sip::driver::server::server_key;
use crate::sip::driver::{ServerInput, Transactions};
use crate::sip::message::{self, Limits, Method, ParseError, Request, Response, SipMessage};
use crate::sip::transaction::{ClientKey, ServerKey};
use crate::sip::transport::{Inbound, Kind, Target, Transports};
use crate::sip::ua;

pub use crate::sip::driver::{InviteEvent, OutgoingInvite, RequestError, ServerTxHandle};

/// The transaction user that serves calls: the call engine. The endpoint has already
/// answered retransmissions, CANCEL and everything [`ua::precheck`] rejects.
pub trait Handler: Send + Sync + 'static {
    /// A new INVITE outside any dialog (100 Trying already sent). Answer through `tx`.
    fn on_invite(&self, req: Request, tx: ServerTxHandle, from: Inbound);
    /// A request inside a dialog (To tag present): BYE, re-INVITE, UPDATE, INFO, OPTIONS.
    /// Give it back when no dialog matches; the endpoint answers 481.
    // The Err path hands ownership back, at most once per request; boxing buys nothing.
    #[allow(clippy::result_large_err)]
    fn on_in_dialog(
        &self,
        req: Request,
        tx: ServerTxHandle,
        from: Inbound,
    ) -> Result<(), (Request, ServerTxHandle)>;
    /// An ACK that matched no transaction: the ACK of a 2xx, for its dialog.
    fn on_ack(&self, req: Request);
}

/// Shared state of the endpoint.
struct Inner {
    txs: Arc<Transactions>,
    limits: Limits,
    draining: watch::Receiver<bool>,
    handler: OnceLock<Arc<dyn Handler>>,
    /// The host put in Via and Contact.
    public_host: String,
}

/// The endpoint handle; cheap to clone.
#[derive(Clone)]
pub struct Endpoint {
    inner: Arc<Inner>,
}

impl Endpoint {
    pub fn new(
        transports: Transports,
        limits: &SipLimits,
        timers: TimerSettings,
        draining: watch::Receiver<bool>,
        public_host: String,
    ) -> Endpoint {
        Endpoint {
            inner: Arc::new(Inner {
                txs: Arc::new(Transactions::new(transports, timers)),
                limits: Limits {
                    max_message_bytes: limits.max_message_bytes,
                    max_headers: limits.max_headers,
                },
                draining,
                handler: OnceLock::new(),
                public_host,
            }),
        }
    }

    /// Handles inbound messages until shutdown, or until the transports close the channel.
    pub async fn run(
        self,
        mut inbound: mpsc::Receiver<Inbound>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                msg = inbound.recv() => match msg {
                    Some(msg) => self.handle_inbound(msg).await,
                    None => break,
                },
                // A dropped sender also means shutdown.
                changed = shutdown.changed() => if changed.is_err() || *shutdown.borrow() {
                    break;
                },
            }
        }
    }

    /// Number of transactions a graceful shutdown waits for.
    pub fn in_flight(&self) -> usize {
        self.inner.txs.in_flight()
    }

    /// Resolves once no transaction is in flight.
    pub async fn wait_idle(&self) {
        self.inner.txs.wait_idle().await
    }

    /// Number of live server transactions (in flight or lingering to absorb retransmissions).
    pub fn live_transactions(&self) -> usize {
        self.inner.txs.live_server()
    }

    /// Installs the transaction user that serves INVITEs and dialogs. Once only.
    pub fn set_handler(&self, handler: Arc<dyn Handler>) {
        if self.inner.handler.set(handler).is_err() {
            warn!("endpoint handler installed twice; keeping the first");
        }
    }

    fn handler(&self) -> Option<Arc<dyn Handler>> {
        self.inner.handler.get().cloned()
    }

    async fn handle_inbound(&self, msg: Inbound) {
        let transport = msg.kind.as_str();
        if let Some(cause) = msg.framing_error {
            metrics::drop(cause.cause(), transport);
            debug!(source = %msg.source, %cause, "stream framing error; closing connection");
            // Answer from the header block when it holds a request we can reply to. The body
            // never arrived, so the block itself may fail to parse; what it held still counts.
            let req = match message::parse(&msg.data, &self.inner.limits) {
                Ok(SipMessage::Request(req)) => Some(req),
                Ok(SipMessage::Response(_)) => None,
                Err(err) => err.request.map(|r| *r),
            };
            if let Some(resp) = req.and_then(|req| ua::framing_error_answer(cause, &req)) {
                self.send_stateless(&msg, resp).await;
            }
            return;
        }
        match message::parse(&msg.data, &self.inner.limits) {
            Err(err) => self.reply_to_error(&msg, err).await,
            Ok(SipMessage::Response(resp)) => {
                let status = resp.status;
                metrics::message_in(transport, &status.to_string());
                if !self.inner.txs.deliver_response(resp, transport) {
                    metrics::drop("stray_response", transport);
                    trace!(source = %msg.source, status, "response matches no client transaction");
                }
            }
            Ok(SipMessage::Request(mut req)) => {
                metrics::message_in(transport, req.method.as_str());
                req.stamp_received(msg.source);
                if let Err(err) = req.validate() {
                    let err = ParseError {
                        request: Some(Box::new(req)),
                        ..err
                    };
                    self.reply_to_error(&msg, err).await;
                    return;
                }
                self.handle_request(&msg, req).await;
            }
        }
    }

    /// Answers a message that failed to parse or validate: statelessly when it was a
    /// request complete enough to answer (never an ACK), otherwise dropped and counted.
    async fn reply_to_error(&self, msg: &Inbound, err: ParseError) {
        let transport = msg.kind.as_str();
        metrics::drop(err.cause, transport);
        debug!(source = %msg.source, transport, cause = err.cause, reason = %err.reason, "rejected SIP message");
        if let Some(resp) = ua::parse_error_answer(&err) {
            self.send_stateless(msg, resp).await;
        }
    }

    async fn handle_request(&self, msg: &Inbound, req: Request) {
        let transport = msg.kind.as_str();
        let txs = &self.inner.txs;
        let Some(key) = server_key(&req) else {
            metrics::drop("no_transaction_key", transport);
            return;
        };
        match req.method {
            Method::Ack => {
                if !txs.deliver(&key, ServerInput::Ack, transport) {
                    // The ACK of a 2xx is a transaction of its own: it goes to its dialog.
                    match self.handler() {
                        Some(handler) if req.to_tag().is_some() => handler.on_ack(req),
                        _ => metrics::drop("stray_ack", transport),
                    }
                }
                return;
            }
            Method::Cancel => {
                // A retransmitted CANCEL: its own transaction answers again.
                if txs.deliver(&key, ServerInput::Retransmission, transport) {
                    metrics::retransmission("absorbed", transport);
                    return;
                }
                let matched = key
                    .cancel_target()
                    .is_some_and(|invite| txs.deliver(&invite, ServerInput::Cancel, transport));
                self.answer(msg, key, &req, ua::cancel_answer(&req, matched));
                return;
            }
            _ => {}
        }
        if txs.deliver(&key, ServerInput::Retransmission, transport) {
            metrics::retransmission("absorbed", transport);
            trace!(source = %msg.source, method = req.method.as_str(), "retransmission absorbed");
            return;
        }
        let now = tokio::time::Instant::now().into_std();
        if let Some(finished) = txs.finished(&key, now) {
            metrics::retransmission("absorbed", transport);
            trace!(source = %msg.source, method = req.method.as_str(), "retransmission of a finished request answered");
            self.reply(finished.target, finished.response).await;
            return;
        }
        let in_dialog = req.to_tag().is_some();
        // In-dialog requests keep flowing while draining, so live calls can end properly.
        if *self.inner.draining.borrow() && !in_dialog {
            self.answer(msg, key, &req, ua::shutting_down(&req));
            return;
        }
        if let Some(resp) = ua::precheck(&req) {
            self.answer(msg, key, &req, resp);
            return;
        }
        let handler = self.handler();
        let Some(handle) = self.start_transaction(msg, key, &req) else {
            return;
        };
        match handler {
            Some(handler) if in_dialog => {
                if let Err((req, handle)) = handler.on_in_dialog(req, handle, msg.clone()) {
                    handle.respond(ua::no_dialog(&req));
                }
            }
            Some(handler) if req.method == Method::Invite => {
                handler.on_invite(req, handle, msg.clone())
            }
            _ => handle.respond(ua::unserved(&req)),
        }
    }

    /// Creates a server transaction for `req` and spawns its task. `None` when a
    /// retransmission of the same request won the race and already made one.
    fn start_transaction(
        &self,
        msg: &Inbound,
        key: ServerKey,
        req: &Request,
    ) -> Option<ServerTxHandle> {
        // Transactions begun while draining do not hold the shutdown up.
        let holds_shutdown = !*self.inner.draining.borrow();
        self.inner
            .txs
            .start_server(key, req, response_target(msg), holds_shutdown)
    }

    /// Starts a transaction for `req` and answers it with `resp` right away.
    fn answer(&self, msg: &Inbound, key: ServerKey, req: &Request, resp: Response) {
        if let Some(handle) = self.start_transaction(msg, key, req) {
            handle.respond(resp);
        }
    }

    /// Sends a response outside any transaction, to where `msg` came from.
    async fn send_stateless(&self, msg: &Inbound, mut resp: Response) {
        resp.headers.push("Server", ua::PRODUCT);
        metrics::message_out(msg.kind.as_str(), &resp.status.to_string());
        self.reply(response_target(msg), resp.to_bytes()).await;
    }

    /// The one place the receive loop itself writes to the wire: stateless responses and
    /// the answers of finished transactions to retransmissions.
    async fn reply(&self, target: Target, data: Bytes) {
        if let Err(err) = self.inner.txs.transports().send(target, data).await {
            debug!(%err, "response not sent");
        }
    }

    /// The transports, for callers that must know what is enabled.
    pub fn transports(&self) -> Transports {
        self.inner.txs.transports().clone()
    }

    /// The host put in Via and Contact.
    pub fn public_host(&self) -> &str {
        &self.inner.public_host
    }

    /// The port we listen on over `kind`, or `default` when it is not enabled.
    fn port(&self, kind: Kind, default: u16) -> u16 {
        self.inner
            .txs
            .transports()
            .local_addr(kind)
            .map(|a| a.port())
            .unwrap_or(default)
    }

    /// Our Via for a request sent over `kind`, with a fresh branch, and that branch.
    pub fn via(&self, kind: Kind) -> (String, String) {
        let branch = ua::new_branch();
        let via = ua::via(
            kind,
            &self.inner.public_host,
            self.port(kind, 5060),
            &branch,
        );
        (via, branch)
    }

    /// Our Contact in a dialog: `sips:` when the dialog is secure (RFC 3261 §8.1.1.8),
    /// else as [`Self::contact`].
    pub fn dialog_contact(&self, kind: Kind, secure: bool) -> String {
        if !secure {
            return self.contact(kind);
        }
        ua::sips_contact(&self.inner.public_host, self.port(kind, 5061))
    }

    /// Our Contact URI for dialogs over `kind` (see [`ua::contact`] on TLS).
    pub fn contact(&self, kind: Kind) -> String {
        ua::contact(kind, &self.inner.public_host, self.port(kind, 5060))
    }

    /// Sends a non-INVITE request (BYE, ...) in its own client transaction and waits for
    /// its final response. Adds our Via; the caller sets everything else. The transaction
    /// runs on in its own task after the final (Timer K), and if the caller stops waiting.
    pub async fn request(
        &self,
        mut req: Request,
        target: Target,
    ) -> Result<Response, RequestError> {
        let cseq = req.cseq().ok_or(RequestError::Malformed("CSeq"))?;
        let (via, branch) = self.via(target.kind);
        ua::stamp_request(&mut req, via);
        let key = ClientKey::new(&branch, cseq.method.as_str());
        self.inner
            .txs
            .start_client_non_invite(key, req, target)
            .await
    }

    /// Sends the ACK of a 2xx: outside any transaction (RFC 3261 §17.1.1.3), with a fresh
    /// Via. The TU resends it for each 2xx retransmission.
    pub async fn send_ack(&self, mut ack: Request, target: Target) {
        let (via, _) = self.via(target.kind);
        ua::stamp_request(&mut ack, via);
        metrics::message_out(target.kind.as_str(), "ACK");
        if let Err(err) = self
            .inner
            .txs
            .transports()
            .send(target, ack.to_bytes())
            .await
        {
            debug!(%err, "ACK not sent");
        }
    }

    /// Sends an INVITE in a client INVITE transaction (RFC 3261 §17.1.1 with RFC 6026).
    /// Every response the TU must see (provisionals, the final, 2xx retransmissions) comes
    /// out of the returned handle's `events`; the ACK of a non-2xx is the transaction's,
    /// the ACK of a 2xx the TU's. Adds our Via.
    pub fn invite(&self, mut req: Request, target: Target) -> Result<OutgoingInvite, RequestError> {
        let cseq = req.cseq().ok_or(RequestError::Malformed("CSeq"))?;
        if cseq.method != Method::Invite {
            return Err(RequestError::Malformed("INVITE CSeq"));
        }
        let (via, branch) = self.via(target.kind);
        ua::stamp_request(&mut req, via.clone());
        Ok(self.inner.txs.start_client_invite(req, target, via, branch))
    }
}

/// Where responses go: back over the connection a request came on, or for UDP to the
/// address it came from (symmetric response routing, as if `rport` were always asked for:
/// trunks and softphones behind NAT need it, and the allowlist already vouches for the source).
fn response_target(msg: &Inbound) -> Target {
    Target {
        kind: msg.kind,
        addr: msg.source,
        conn: msg.conn,
    }
}

/// Logs where the endpoint listens.
pub fn log_listening(transports: &Transports) {
    let addr = |k| {
        transports
            .local_addr(k)
            .map(|a: SocketAddr| a.to_string())
            .unwrap_or_else(|| "off".into())
    };
    info!(udp = %addr(Kind::Udp), tcp = %addr(Kind::Tcp), tls = %addr(Kind::Tls), "SIP listening");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::driver::testutil::settings;
    use std::sync::Mutex;
    use std::time::Duration;

    /// An endpoint on its own UDP port on loopback, with its transports.
    async fn endpoint() -> (Endpoint, watch::Sender<bool>, SocketAddr) {
        let settings = settings(&[
            ("DIALTONE__SIP__UDP", "127.0.0.1:0"),
            ("DIALTONE__SIP__T1_MS", "50"),
        ]);
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let (draining_tx, draining_rx) = watch::channel(false);
        std::mem::forget(draining_tx);
        let (in_tx, in_rx) = mpsc::channel(64);
        let transports = Transports::start(&settings, in_tx, shutdown_rx.clone())
            .await
            .unwrap();
        let addr = transports.local_addr(Kind::Udp).unwrap();
        let ep = Endpoint::new(
            transports,
            &settings.sip.limits,
            settings.sip.timers,
            draining_rx,
            "127.0.0.1".into(),
        );
        tokio::spawn(ep.clone().run(in_rx, shutdown_rx));
        (ep, shutdown_tx, addr)
    }

    fn invite_to(addr: SocketAddr) -> Request {
        let mut headers = message::Headers::default();
        headers.push("From", "<sip:a@127.0.0.1>;tag=fromtag");
        headers.push("To", format!("<sip:b@{addr}>"));
        headers.push("Call-ID", format!("{:x}@test", rand::random::<u64>()));
        headers.push("CSeq", "1 INVITE");
        headers.push("Contact", "<sip:a@127.0.0.1>");
        Request {
            method: Method::Invite,
            uri: format!("sip:b@{addr}"),
            headers,
            body: bytes::Bytes::new(),
        }
    }

    fn udp(addr: SocketAddr) -> Target {
        Target {
            kind: Kind::Udp,
            addr,
            conn: None,
        }
    }

    async fn next_status(inv: &mut OutgoingInvite) -> Option<u16> {
        match tokio::time::timeout(Duration::from_secs(5), inv.events.recv()).await {
            Ok(Some(InviteEvent::Response(r))) => Some(r.status),
            _ => None,
        }
    }

    #[tokio::test]
    async fn invite_failure_is_acked_by_the_transaction() {
        let (a, _stop_a, _) = endpoint().await;
        let (b, _stop_b, b_addr) = endpoint().await;
        let mut inv = a.invite(invite_to(b_addr), udp(b_addr)).unwrap();
        assert_eq!(next_status(&mut inv).await, Some(100));
        assert_eq!(next_status(&mut inv).await, Some(404));
        // B's INVITE transaction stops waiting once A's ACK arrives (Completed -> Confirmed).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while b.in_flight() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(b.in_flight(), 0, "the 404 was never acknowledged");
    }

    /// Answers every INVITE with 180 and never more, keeping the transaction open.
    struct Ringer(Mutex<Vec<ServerTxHandle>>);

    impl Handler for Ringer {
        fn on_invite(&self, req: Request, tx: ServerTxHandle, _from: Inbound) {
            tx.respond(Response::for_request(&req, 180, "Ringing", Some("ringtag")));
            self.0.lock().unwrap().push(tx);
        }
        fn on_in_dialog(
            &self,
            req: Request,
            tx: ServerTxHandle,
            _from: Inbound,
        ) -> Result<(), (Request, ServerTxHandle)> {
            Err((req, tx))
        }
        fn on_ack(&self, _req: Request) {}
    }

    #[tokio::test]
    async fn cancel_after_ringing_ends_the_invite_with_487() {
        let (a, _stop_a, _) = endpoint().await;
        let (b, _stop_b, b_addr) = endpoint().await;
        b.set_handler(Arc::new(Ringer(Mutex::new(Vec::new()))));
        let mut inv = a.invite(invite_to(b_addr), udp(b_addr)).unwrap();
        inv.cancel(); // before any provisional: held until one arrives
        let mut statuses = Vec::new();
        while let Some(status) = next_status(&mut inv).await {
            statuses.push(status);
            if status >= 200 {
                break;
            }
        }
        assert_eq!(statuses.last(), Some(&487), "{statuses:?}");
        assert!(statuses.contains(&180), "{statuses:?}");
    }

    #[tokio::test]
    async fn bye_outside_a_dialog_gets_481() {
        let (a, _stop_a, _) = endpoint().await;
        let (_b, _stop_b, b_addr) = endpoint().await;
        let mut bye = invite_to(b_addr);
        bye.method = Method::Bye;
        bye.headers
            .set("To", format!("<sip:b@{b_addr}>;tag=nosuchdialog"));
        bye.headers.set("CSeq", "2 BYE");
        let resp = a.request(bye, udp(b_addr)).await.unwrap();
        assert_eq!(resp.status, 481);
    }

    #[tokio::test]
    async fn invite_to_nobody_times_out_with_timer_b() {
        let (a, _stop_a, _) = endpoint().await;
        // A bound socket that never answers.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = silent.local_addr().unwrap();
        let mut inv = a.invite(invite_to(addr), udp(addr)).unwrap();
        // T1 = 50 ms in these tests, so Timer B fires after 3.2 s.
        let event = tokio::time::timeout(Duration::from_secs(10), inv.events.recv()).await;
        assert!(matches!(event, Ok(Some(InviteEvent::Timeout))), "{event:?}");
    }
}
