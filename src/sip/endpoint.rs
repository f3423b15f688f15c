//! The SIP endpoint: the thin tokio layer between the transports and the transaction
//! machines, and the user-agent core that answers what this server serves.
//!
//! Each inbound message is parsed and validated, matched to a server transaction
//! (RFC 3261 §17.2.3), and either absorbed as a retransmission or handed to a new
//! transaction. Each transaction is one small task owning its sans-IO machine: it sleeps
//! until the machine's next timer, feeds it inputs from a channel, and writes what the
//! machine asks to transmit. Requests that cannot be parsed well enough for a transaction
//! are answered statelessly, or dropped and counted.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, info, trace, warn};

use crate::config::{SipLimits, TimerSettings};
use crate::metrics;
use crate::sip::message::{self, Limits, Method, ParseError, Request, Response, SipMessage};
use crate::sip::transaction::completed::{CompletedTable, Finished};
use crate::sip::transaction::{
    ClientInvite, ClientKey, ClientNonInvite, ClientNonInviteState, RequestIds, ServerInvite,
    ServerInviteState, ServerKey, ServerNonInvite, ServerNonInviteState, Transaction, TransmitKind,
};
use crate::sip::transport::{Inbound, Kind, Target, Transports};
use crate::sip::uri::host_for_uri;

/// Methods this server handles (in dialogs or out), advertised in `Allow`.
pub const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, INFO";
/// Bodies this server understands, advertised in `Accept`.
pub const ACCEPT: &str = "application/sdp";
/// Option tags this server supports; any other in `Require` gets 420.
const SUPPORTED: &[&str] = &[];
/// Sent in `Server` and `User-Agent`.
pub const PRODUCT: &str = concat!("dialtone/", env!("CARGO_PKG_VERSION"));

/// What a transaction task can be told.
#[derive(Debug)]
enum TxInput {
    /// The request arrived again.
    Retransmission,
    /// An ACK matched this INVITE transaction.
    Ack,
    /// A CANCEL matched this INVITE transaction: answer 487 unless a final was sent.
    Cancel,
    /// The transaction user's response.
    Respond(Box<Response>),
}

/// The transaction user that serves calls: the call engine. The endpoint has already
/// answered retransmissions, CANCEL and everything [`precheck`] rejects.
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

/// The transaction user's side of one server transaction.
pub struct ServerTxHandle {
    input: mpsc::Sender<TxInput>,
    cancelled: watch::Receiver<bool>,
    target: Target,
}

impl ServerTxHandle {
    /// Sends a response through the transaction (which retransmits it as the RFC says).
    /// A response after the transaction ended is dropped: its peer has gone.
    pub fn respond(&self, resp: Response) {
        if self
            .input
            .try_send(TxInput::Respond(Box::new(resp)))
            .is_err()
        {
            debug!("response for an ended or flooded transaction dropped");
        }
    }

    /// Resolves when a CANCEL has ended this (INVITE) transaction with 487.
    pub async fn cancelled(&mut self) {
        if self.cancelled.wait_for(|c| *c).await.is_err() {
            // The transaction ended without a CANCEL: never resolve.
            std::future::pending::<()>().await;
        }
    }

    /// Where responses go: the peer's address and connection.
    pub fn target(&self) -> Target {
        self.target
    }
}

/// Shared state of the endpoint.
struct Inner {
    transports: Transports,
    limits: Limits,
    timers: TimerSettings,
    /// Live server transactions, by key. Signalling path only; never held across `.await`.
    server_txs: Mutex<HashMap<ServerKey, mpsc::Sender<TxInput>>>,
    /// Finished non-INVITE transactions over UDP, waiting out Timer J without a task.
    completed: Mutex<CompletedTable>,
    /// Transactions that must finish before a graceful shutdown may exit: those still
    /// waiting for the TU's final response or for the ACK of a non-2xx final.
    in_flight: AtomicUsize,
    in_flight_changed: tokio::sync::Notify,
    draining: watch::Receiver<bool>,
    handler: std::sync::OnceLock<Arc<dyn Handler>>,
    /// Live client transactions, by key; each task gets the responses that match it.
    client_txs: Mutex<HashMap<ClientKey, mpsc::Sender<Response>>>,
    /// The host put in Via and Contact.
    public_host: String,
}

/// Why a request we sent got no final response.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RequestError {
    #[error("no final response within 64*T1 (timer F)")]
    Timeout,
    #[error("transport failure: {0}")]
    Transport(String),
    #[error("request is missing {0}")]
    Malformed(&'static str),
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
                transports,
                limits: Limits {
                    max_message_bytes: limits.max_message_bytes,
                    max_headers: limits.max_headers,
                },
                timers,
                server_txs: Mutex::new(HashMap::new()),
                completed: Mutex::new(CompletedTable::default()),
                in_flight: AtomicUsize::new(0),
                in_flight_changed: tokio::sync::Notify::new(),
                draining,
                handler: std::sync::OnceLock::new(),
                client_txs: Mutex::new(HashMap::new()),
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
        self.inner.in_flight.load(Ordering::Acquire)
    }

    /// Resolves once no transaction is in flight.
    pub async fn wait_idle(&self) {
        loop {
            let changed = self.inner.in_flight_changed.notified();
            tokio::pin!(changed);
            // Register before checking, so a change in between is not missed.
            changed.as_mut().enable();
            if self.in_flight() == 0 {
                return;
            }
            changed.await;
        }
    }

    /// Number of live server transactions (in flight or lingering to absorb retransmissions).
    pub fn live_transactions(&self) -> usize {
        lock(&self.inner.server_txs).len()
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
            if let Some(req) = req.filter(|r| r.method != Method::Ack && answerable(r)) {
                let (status, reason) = framing_answer(cause);
                let resp = Response::for_request(&req, status, reason, Some(&new_tag()));
                self.send_stateless(&msg, resp).await;
            }
            return;
        }
        match message::parse(&msg.data, &self.inner.limits) {
            Err(err) => self.reply_to_error(&msg, err).await,
            Ok(SipMessage::Response(resp)) => {
                metrics::message_in(transport, &resp.status.to_string());
                let key = match (resp.top_via().and_then(|v| v.branch), resp.cseq()) {
                    (Some(branch), Some(cseq)) => {
                        Some(ClientKey::new(&branch, cseq.method.as_str()))
                    }
                    _ => None,
                };
                let tx = key.and_then(|key| lock(&self.inner.client_txs).get(&key).cloned());
                match tx {
                    Some(tx) => {
                        if tx.try_send(resp).is_err() {
                            metrics::drop("transaction_busy", transport);
                        }
                    }
                    None => {
                        metrics::drop("stray_response", transport);
                        trace!(source = %msg.source, status = resp.status, "response matches no client transaction");
                    }
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
        let (Some(status), Some(req)) = (err.reply, err.request.as_deref()) else {
            return;
        };
        if req.method == Method::Ack || !answerable(req) {
            return;
        }
        let mut resp = Response::for_request(
            req,
            status,
            message::reason_phrase(status),
            Some(&new_tag()),
        );
        if status == 400 {
            // Say what was wrong (RFC 3261 §21.4.1 lets the reason phrase carry it).
            resp.reason = format!("Bad Request ({})", err.cause);
        }
        if status == 416 || status == 505 {
            resp.headers.push("Allow", ALLOW);
        }
        self.send_stateless(msg, resp).await;
    }

    async fn handle_request(&self, msg: &Inbound, req: Request) {
        let transport = msg.kind.as_str();
        let Some(key) = server_key(&req) else {
            metrics::drop("no_transaction_key", transport);
            return;
        };
        match req.method {
            Method::Ack => {
                match self.lookup(&key) {
                    Some(tx) => self.deliver(&tx, TxInput::Ack, transport),
                    // The ACK of a 2xx is a transaction of its own: it goes to its dialog.
                    None => match self.handler() {
                        Some(handler) if req.to_tag().is_some() => handler.on_ack(req),
                        _ => metrics::drop("stray_ack", transport),
                    },
                }
                return;
            }
            Method::Cancel => {
                if let Some(tx) = self.lookup(&key) {
                    // A retransmitted CANCEL: its own transaction answers again.
                    self.deliver(&tx, TxInput::Retransmission, transport);
                    metrics::retransmission("absorbed", transport);
                    return;
                }
                let status = match key.cancel_target().and_then(|invite| self.lookup(&invite)) {
                    Some(invite_tx) => {
                        self.deliver(&invite_tx, TxInput::Cancel, transport);
                        200
                    }
                    None => 481,
                };
                let resp = Response::for_request(
                    &req,
                    status,
                    message::reason_phrase(status),
                    Some(&new_tag()),
                );
                self.answer(msg, key, &req, resp);
                return;
            }
            _ => {}
        }
        if let Some(tx) = self.lookup(&key) {
            metrics::retransmission("absorbed", transport);
            trace!(source = %msg.source, method = req.method.as_str(), "retransmission absorbed");
            self.deliver(&tx, TxInput::Retransmission, transport);
            return;
        }
        let finished = lock(&self.inner.completed).get(&key, Instant::now().into_std());
        if let Some(finished) = finished {
            metrics::retransmission("absorbed", transport);
            trace!(source = %msg.source, method = req.method.as_str(), "retransmission of a finished request answered");
            if let Err(err) = self
                .inner
                .transports
                .send(finished.target, finished.response)
                .await
            {
                debug!(%err, "response not sent");
            }
            return;
        }
        let in_dialog = req.to_tag().is_some();
        // In-dialog requests keep flowing while draining, so live calls can end properly.
        if *self.inner.draining.borrow() && !in_dialog {
            let mut resp = Response::for_request(
                &req,
                503,
                "Service Unavailable (shutting down)",
                Some(&new_tag()),
            );
            resp.headers.push("Retry-After", "30");
            self.answer(msg, key, &req, resp);
            return;
        }
        if let Some(resp) = precheck(&req) {
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
                    handle.respond(Response::for_request(
                        &req,
                        481,
                        message::reason_phrase(481),
                        None,
                    ));
                }
            }
            Some(handler) if req.method == Method::Invite => {
                handler.on_invite(req, handle, msg.clone())
            }
            _ => handle.respond(user_agent_core(&req)),
        }
    }

    /// The transports, for callers that must know what is enabled.
    pub fn transports(&self) -> Transports {
        self.inner.transports.clone()
    }

    /// The host put in Via and Contact.
    pub fn public_host(&self) -> &str {
        &self.inner.public_host
    }

    /// Our Via for a request sent over `kind`, with a fresh branch.
    pub fn via(&self, kind: Kind) -> (String, String) {
        let branch = format!(
            "z9hG4bK{:016x}{:08x}",
            rand::random::<u64>(),
            rand::random::<u32>()
        );
        let port = self
            .inner
            .transports
            .local_addr(kind)
            .map(|a| a.port())
            .unwrap_or(5060);
        let via = format!(
            "SIP/2.0/{} {}:{};branch={};rport",
            kind.as_str(),
            host_for_uri(&self.inner.public_host),
            port,
            branch
        );
        (via, branch)
    }

    /// Our Contact in a dialog: `sips:` when the dialog is secure (RFC 3261 §8.1.1.8),
    /// else as [`Self::contact`].
    pub fn dialog_contact(&self, kind: Kind, secure: bool) -> String {
        if !secure {
            return self.contact(kind);
        }
        let port = self
            .inner
            .transports
            .local_addr(kind)
            .map(|a| a.port())
            .unwrap_or(5061);
        format!("<sips:{}:{port}>", host_for_uri(&self.inner.public_host))
    }

    /// Our Contact URI for dialogs over `kind`. Over TLS it is `sip:…;transport=tls`, not
    /// `sips:`: peers dial us and trunks are dialled with `sip:` URIs (a `sips:` Contact is
    /// only required when the Request-URI was `sips:`, RFC 3261 §8.1.1.8), and baresip
    /// 1.0 (libre) ends a dialog whose remote target is `sips:` ("Function not
    /// implemented") right after the 200.
    pub fn contact(&self, kind: Kind) -> String {
        let port = self
            .inner
            .transports
            .local_addr(kind)
            .map(|a| a.port())
            .unwrap_or(5060);
        let host = host_for_uri(&self.inner.public_host);
        match kind {
            Kind::Udp => format!("<sip:{host}:{port}>"),
            Kind::Tcp => format!("<sip:{host}:{port};transport=tcp>"),
            Kind::Tls => format!("<sip:{host}:{port};transport=tls>"),
        }
    }

    /// Sends a non-INVITE request (BYE, ...) in its own client transaction and waits for
    /// its final response. Adds our Via; the caller sets everything else.
    pub async fn request(&self, req: Request, target: Target) -> Result<Response, RequestError> {
        let (via, branch) = self.via(target.kind);
        self.request_on_branch(req, target, via, branch).await
    }

    /// Puts our Via (and Max-Forwards, User-Agent) on a request we originate.
    fn stamp_request(req: &mut Request, via: String) {
        req.headers.remove("Via");
        let mut headers = message::Headers::default();
        headers.push("Via", via);
        for (name, value) in req.headers.iter() {
            headers.push(name, value);
        }
        if headers.get("Max-Forwards").is_none() {
            headers.push("Max-Forwards", "70");
        }
        if headers.get("User-Agent").is_none() {
            headers.push("User-Agent", PRODUCT);
        }
        req.headers = headers;
    }

    /// [`Endpoint::request`] with a given Via and branch: a CANCEL reuses its INVITE's.
    async fn request_on_branch(
        &self,
        mut req: Request,
        target: Target,
        via: String,
        branch: String,
    ) -> Result<Response, RequestError> {
        let cseq = req.cseq().ok_or(RequestError::Malformed("CSeq"))?;
        Self::stamp_request(&mut req, via);
        let key = ClientKey::new(&branch, cseq.method.as_str());
        let (tx, mut rx) = mpsc::channel(8);
        lock(&self.inner.client_txs).insert(key.clone(), tx);
        let bytes = req.to_bytes();
        let transport = target.kind.as_str();
        metrics::message_out(transport, req.method.as_str());
        let mut machine = ClientNonInvite::new(
            Instant::now().into_std(),
            bytes,
            target.kind.is_reliable(),
            self.inner.timers,
        );
        let result = loop {
            while let Some(t) = machine.poll_transmit() {
                if t.kind == TransmitKind::Retransmit {
                    metrics::retransmission("sent", transport);
                }
                if let Err(err) = self.inner.transports.send(target, t.payload).await {
                    machine.transport_error(Instant::now().into_std());
                    debug!(%err, "request not sent");
                }
            }
            let mut failed = None;
            while let Some(event) = machine.poll_event() {
                failed = Some(match event.equivalent_status() {
                    Some(503) => RequestError::Transport("send failed".into()),
                    _ => RequestError::Timeout,
                });
            }
            if let Some(err) = failed {
                break Err(err);
            }
            if machine.is_terminated() {
                break Err(RequestError::Timeout);
            }
            let deadline = machine.poll_timeout();
            tokio::select! {
                resp = rx.recv() => {
                    let Some(resp) = resp else { break Err(RequestError::Timeout) };
                    let now = Instant::now().into_std();
                    let pass = machine.on_response(now, resp.status);
                    if pass == crate::sip::transaction::Disposition::PassToTu && resp.status >= 200 {
                        break Ok(resp);
                    }
                }
                _ = sleep_until_opt(deadline) => machine.handle_timeout(Instant::now().into_std()),
            }
        };
        // Linger to absorb retransmitted finals (Timer K) without holding the caller.
        if result.is_ok() && machine.state() != ClientNonInviteState::Terminated {
            let endpoint = self.clone();
            let key = key.clone();
            tokio::spawn(async move {
                while !machine.is_terminated() {
                    let deadline = machine.poll_timeout();
                    tokio::select! {
                        resp = rx.recv() => match resp {
                            Some(resp) => { let _ = machine.on_response(Instant::now().into_std(), resp.status); }
                            None => break,
                        },
                        _ = sleep_until_opt(deadline) => machine.handle_timeout(Instant::now().into_std()),
                    }
                }
                lock(&endpoint.inner.client_txs).remove(&key);
            });
        } else {
            lock(&self.inner.client_txs).remove(&key);
        }
        result
    }

    /// Sends the ACK of a 2xx: outside any transaction (RFC 3261 §17.1.1.3), with a fresh
    /// Via. The TU resends it for each 2xx retransmission.
    pub async fn send_ack(&self, mut ack: Request, target: Target) {
        let (via, _) = self.via(target.kind);
        Self::stamp_request(&mut ack, via);
        metrics::message_out(target.kind.as_str(), "ACK");
        if let Err(err) = self.inner.transports.send(target, ack.to_bytes()).await {
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
        Self::stamp_request(&mut req, via.clone());
        let key = ClientKey::new(&branch, "INVITE");
        let (resp_tx, resp_rx) = mpsc::channel(16);
        lock(&self.inner.client_txs).insert(key.clone(), resp_tx);
        let (events_tx, events_rx) = mpsc::channel(16);
        let (cancel_tx, cancel_rx) = mpsc::channel(1);
        let machine = ClientInvite::new(
            Instant::now().into_std(),
            req.to_bytes(),
            target.kind.is_reliable(),
            self.inner.timers,
        );
        metrics::message_out(target.kind.as_str(), "INVITE");
        let task = ClientInviteTask {
            endpoint: self.clone(),
            key,
            machine,
            target,
            request: req.clone(),
            via,
            branch,
            events: events_tx,
            cancel_pending: false,
        };
        tokio::spawn(task.run(resp_rx, cancel_rx));
        Ok(OutgoingInvite {
            events: events_rx,
            cancel: cancel_tx,
            request: req,
        })
    }

    fn handler(&self) -> Option<Arc<dyn Handler>> {
        self.inner.handler.get().cloned()
    }

    /// Installs the transaction user that serves INVITEs and dialogs. Once only.
    pub fn set_handler(&self, handler: Arc<dyn Handler>) {
        if self.inner.handler.set(handler).is_err() {
            warn!("endpoint handler installed twice; keeping the first");
        }
    }

    /// Hands an input to a transaction task without waiting: a task whose queue is full is
    /// already flooded with retransmissions, and one more can be dropped (and counted).
    fn deliver(&self, tx: &mpsc::Sender<TxInput>, input: TxInput, transport: &'static str) {
        if tx.try_send(input).is_err() {
            metrics::drop("transaction_busy", transport);
        }
    }

    fn lookup(&self, key: &ServerKey) -> Option<mpsc::Sender<TxInput>> {
        lock(&self.inner.server_txs).get(key).cloned()
    }

    /// Creates a server transaction for `req` and spawns its task; INVITEs get a 100 Trying
    /// at once (RFC 3261 §8.2.6.1). `None` when a retransmission of the same request won
    /// the race and already made one.
    fn start_transaction(
        &self,
        msg: &Inbound,
        key: ServerKey,
        req: &Request,
    ) -> Option<ServerTxHandle> {
        let (tx, rx) = mpsc::channel(16);
        {
            let mut table = lock(&self.inner.server_txs);
            if table.contains_key(&key) {
                return None;
            }
            table.insert(key.clone(), tx.clone());
        }
        let now = Instant::now().into_std();
        let reliable = msg.kind.is_reliable();
        let is_invite = req.method == Method::Invite;
        let machine = if is_invite {
            ServerTx::Invite(ServerInvite::new(now, reliable, self.inner.timers))
        } else {
            ServerTx::NonInvite(ServerNonInvite::new(now, reliable, self.inner.timers))
        };
        let (cancelled_tx, cancelled_rx) = watch::channel(false);
        let task = TxTask {
            endpoint: self.clone(),
            key,
            machine,
            target: response_target(msg),
            // Kept for INVITEs only: a CANCEL's 487 is built from it.
            invite: is_invite.then(|| Box::new(req.clone())),
            cancelled: cancelled_tx,
            to_tag: None,
            holds_shutdown: !*self.inner.draining.borrow(),
            counted: false,
        };
        if is_invite {
            let trying = Response::for_request(req, 100, "Trying", None);
            let _ = tx.try_send(TxInput::Respond(Box::new(trying)));
        }
        tokio::spawn(task.run(rx));
        Some(ServerTxHandle {
            input: tx,
            cancelled: cancelled_rx,
            target: response_target(msg),
        })
    }

    /// Starts a transaction for `req` and answers it with `resp` right away.
    fn answer(&self, msg: &Inbound, key: ServerKey, req: &Request, resp: Response) {
        if let Some(handle) = self.start_transaction(msg, key, req) {
            handle.respond(resp);
        }
    }

    async fn send_stateless(&self, msg: &Inbound, mut resp: Response) {
        resp.headers.push("Server", PRODUCT);
        let kind = msg.kind.as_str();
        metrics::message_out(kind, &resp.status.to_string());
        if let Err(err) = self
            .inner
            .transports
            .send(response_target(msg), resp.to_bytes())
            .await
        {
            debug!(%err, "stateless response not sent");
        }
    }
}

/// A request can be answered only if a response can be routed: it needs a top Via. What
/// else a response copies (From, To, Call-ID, CSeq) is copied when present.
fn answerable(req: &Request) -> bool {
    req.top_via().is_some()
}

fn framing_answer(cause: crate::sip::framing::FrameError) -> (u16, &'static str) {
    match cause {
        crate::sip::framing::FrameError::TooLarge => (513, "Message Too Large"),
        crate::sip::framing::FrameError::BadContentLength => {
            (400, "Bad Request (bad_content_length)")
        }
        crate::sip::framing::FrameError::ConflictingContentLength => {
            (400, "Bad Request (conflicting_content_length)")
        }
    }
}

/// The server transaction key of a request (RFC 3261 §17.2.3, with the RFC 2543 fallback).
fn server_key(req: &Request) -> Option<ServerKey> {
    let via = req.top_via()?;
    let sent_by = match via.port {
        Some(port) => format!("{}:{}", via.host, port),
        None => via.host.clone(),
    };
    let from_tag = req.from_tag();
    let to_tag = req.to_tag();
    let ids = RequestIds {
        method: req.method.as_str(),
        branch: via.branch.as_deref(),
        sent_by: &sent_by,
        request_uri: &req.uri,
        from_tag: from_tag.as_deref(),
        to_tag: to_tag.as_deref(),
        call_id: req.call_id().unwrap_or(""),
        cseq: req.cseq().map(|c| c.seq).unwrap_or(0),
        top_via: req.headers.get("Via").unwrap_or(""),
    };
    Some(ServerKey::from_request(&ids))
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

/// RFC 3261 §8.2's checks before a request reaches its handler, in the RFC's order:
/// method, header inspection (dialog, Require), content (Content-Type, Accept).
/// `Some` is the rejection to send.
fn precheck(req: &Request) -> Option<Response> {
    let reject = |status: u16| {
        Response::for_request(
            req,
            status,
            message::reason_phrase(status),
            Some(&new_tag()),
        )
    };
    let in_dialog = req.to_tag().is_some();
    match &req.method {
        Method::Invite | Method::Options => {}
        // Dialog methods outside a dialog: the transaction does not exist.
        Method::Bye | Method::Update | Method::Info | Method::Prack if !in_dialog => {
            return Some(reject(481))
        }
        Method::Bye | Method::Update | Method::Info | Method::Prack => {}
        Method::Register
        | Method::Subscribe
        | Method::Notify
        | Method::Refer
        | Method::Message
        | Method::Publish => {
            let mut resp = reject(405);
            resp.headers.push("Allow", ALLOW);
            return Some(resp);
        }
        Method::Other(_) => {
            let mut resp = reject(501);
            resp.headers.push("Allow", ALLOW);
            return Some(resp);
        }
        // Handled before a transaction is made.
        Method::Ack | Method::Cancel => return Some(reject(500)),
    }
    let unsupported: Vec<&str> = req
        .headers
        .get_all("Require")
        .into_iter()
        .map(str::trim)
        .filter(|tag| !tag.is_empty() && !SUPPORTED.iter().any(|s| s.eq_ignore_ascii_case(tag)))
        .collect();
    if !unsupported.is_empty() && req.method != Method::Bye {
        let mut resp = reject(420);
        resp.headers.push("Unsupported", unsupported.join(", "));
        return Some(resp);
    }
    if !req.body.is_empty()
        && matches!(
            req.method,
            Method::Invite | Method::Update | Method::Options
        )
    {
        let content_type = req.headers.get("Content-Type").unwrap_or("");
        let mime = content_type.split(';').next().unwrap_or("").trim();
        if !mime.eq_ignore_ascii_case(ACCEPT) {
            let mut resp = reject(415);
            resp.headers.push("Accept", ACCEPT);
            return Some(resp);
        }
    }
    if req.method == Method::Invite && !accepts_sdp(req) {
        let mut resp = reject(406);
        resp.headers.push(
            "Warning",
            "399 dialtone \"only application/sdp is offered\"",
        );
        return Some(resp);
    }
    None
}

/// The answer to a request that passed [`precheck`] when no handler serves it: OPTIONS
/// gets 200 (trunks use it as a ping), an INVITE finds nobody (404), in-dialog requests
/// find no dialog (481).
fn user_agent_core(req: &Request) -> Response {
    match req.method {
        _ if req.to_tag().is_some() => {
            Response::for_request(req, 481, message::reason_phrase(481), None)
        }
        Method::Options => options_response(req),
        _ => Response::for_request(req, 404, message::reason_phrase(404), Some(&new_tag())),
    }
}

/// 200 to OPTIONS, with what this server can do.
pub fn options_response(req: &Request) -> Response {
    let mut resp = Response::for_request(req, 200, "OK", Some(&new_tag()));
    resp.headers.push("Allow", ALLOW);
    resp.headers.push("Accept", ACCEPT);
    resp.headers.push("Accept-Encoding", "identity");
    resp.headers.push("Accept-Language", "en");
    resp
}

/// Whether the request's `Accept` (absent means `application/sdp`, RFC 3261 §20.1) allows SDP.
fn accepts_sdp(req: &Request) -> bool {
    let accept = req.headers.get_all("Accept");
    if accept.is_empty() {
        return true;
    }
    accept.iter().any(|range| {
        let mime = range.split(';').next().unwrap_or("").trim();
        mime.eq_ignore_ascii_case(ACCEPT)
            || mime == "*/*"
            || mime.eq_ignore_ascii_case("application/*")
    })
}

/// A fresh tag for To headers (RFC 3261 §19.3: at least 32 bits of randomness).
pub fn new_tag() -> String {
    format!("{:016x}", rand::random::<u64>())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding this lock cannot leave the map inconsistent (single inserts
    // and removes), so recover the guard rather than propagate the poison.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Either kind of server transaction machine.
enum ServerTx {
    Invite(ServerInvite),
    NonInvite(ServerNonInvite),
}

/// One server transaction's task.
struct TxTask {
    endpoint: Endpoint,
    key: ServerKey,
    machine: ServerTx,
    target: Target,
    invite: Option<Box<Request>>,
    /// Tells the TU that a CANCEL arrived.
    cancelled: watch::Sender<bool>,
    /// The To tag of the responses sent so far, reused by a 487 (RFC 3261 §9.2).
    to_tag: Option<String>,
    /// Whether this transaction delays a graceful shutdown while in flight.
    holds_shutdown: bool,
    /// Whether it is currently counted in `in_flight`.
    counted: bool,
}

impl TxTask {
    async fn run(mut self, mut rx: mpsc::Receiver<TxInput>) {
        let transport = self.target.kind.as_str();
        let kind = if matches!(self.machine, ServerTx::Invite(_)) {
            "server_invite"
        } else {
            "server_non_invite"
        };
        metrics::transactions_live(kind, 1.0);
        self.update_in_flight();
        loop {
            self.flush(transport).await;
            self.update_in_flight();
            if self.is_terminated() || self.hand_off_completed() {
                break;
            }
            let deadline = self.poll_timeout();
            tokio::select! {
                input = rx.recv() => {
                    let Some(input) = input else { break };
                    self.input(input);
                }
                _ = sleep_until_opt(deadline) => {
                    self.handle_timeout();
                }
            }
        }
        lock(&self.endpoint.inner.server_txs).remove(&self.key);
        self.holds_shutdown = false;
        self.update_in_flight();
        metrics::transactions_live(kind, -1.0);
    }

    fn machine(&mut self) -> &mut dyn Transaction {
        match &mut self.machine {
            ServerTx::Invite(m) => m,
            ServerTx::NonInvite(m) => m,
        }
    }

    fn input(&mut self, input: TxInput) {
        let now = Instant::now().into_std();
        // Dispositions are ignored: a server transaction's retransmissions and the ACK of a
        // non-2xx never go further up, and there are no dialogs yet for a 2xx's ACK.
        match input {
            TxInput::Retransmission => {
                let _ = match &mut self.machine {
                    ServerTx::Invite(m) => m.on_request(now),
                    ServerTx::NonInvite(m) => m.on_request(now),
                };
            }
            TxInput::Ack => {
                if let ServerTx::Invite(m) = &mut self.machine {
                    let _ = m.on_ack(now);
                }
            }
            TxInput::Cancel => {
                if let Some(invite) = self.invite.as_deref().filter(|_| !self.final_sent()) {
                    let tag = self.to_tag.clone().unwrap_or_else(new_tag);
                    let resp = Response::for_request(invite, 487, "Request Terminated", Some(&tag));
                    self.respond(now, resp);
                    let _ = self.cancelled.send(true);
                }
            }
            TxInput::Respond(resp) => self.respond(now, *resp),
        }
    }

    fn respond(&mut self, now: std::time::Instant, mut resp: Response) {
        if self.to_tag.is_none() && resp.status > 100 {
            self.to_tag = resp
                .headers
                .get("To")
                .and_then(|to| message::NameAddr::parse(to).ok())
                .and_then(|to| to.param("tag").map(str::to_owned));
        }
        resp.headers.push("Server", PRODUCT);
        let status = resp.status;
        let bytes = resp.to_bytes();
        let result = match &mut self.machine {
            ServerTx::Invite(m) => m.send_response(now, status, bytes),
            ServerTx::NonInvite(m) => m.send_response(now, status, bytes),
        };
        match result {
            Ok(()) => metrics::message_out(self.target.kind.as_str(), &status.to_string()),
            Err(err) => warn!(%err, status, "transaction refused a response"),
        }
    }

    /// Writes everything the machine wants on the wire, and logs its events. First sends
    /// were counted by `respond`; answers to absorbed retransmissions by the endpoint.
    async fn flush(&mut self, transport: &'static str) {
        let transports = self.endpoint.inner.transports.clone();
        while let Some(transmit) = self.machine().poll_transmit() {
            if transmit.kind == TransmitKind::Retransmit {
                metrics::retransmission("sent", transport);
            }
            if let Err(err) = transports.send(self.target, transmit.payload).await {
                debug!(%err, "response not sent");
                self.machine().transport_error(Instant::now().into_std());
            }
        }
        while let Some(event) = self.machine().poll_event() {
            debug!(
                ?event,
                transport,
                call_id = self.invite.as_ref().and_then(|r| r.call_id()).unwrap_or(""),
                "transaction event"
            );
        }
    }

    fn handle_timeout(&mut self) {
        self.machine().handle_timeout(Instant::now().into_std());
    }

    fn poll_timeout(&mut self) -> Option<std::time::Instant> {
        self.machine().poll_timeout()
    }

    /// A non-INVITE transaction that sent its final response over UDP only waits for
    /// request retransmissions until Timer J: leave that to the endpoint's table (entered
    /// before the task's own entry goes, so no retransmission finds neither) and end.
    fn hand_off_completed(&mut self) -> bool {
        let ServerTx::NonInvite(m) = &self.machine else {
            return false;
        };
        let Some((response, expires)) = m.completed() else {
            return false;
        };
        let finished = Finished {
            response,
            target: self.target,
        };
        let now = Instant::now().into_std();
        lock(&self.endpoint.inner.completed).insert(self.key.clone(), finished, expires, now);
        true
    }

    fn is_terminated(&mut self) -> bool {
        self.machine().is_terminated()
    }

    fn final_sent(&self) -> bool {
        match &self.machine {
            ServerTx::Invite(m) => m.state() != ServerInviteState::Proceeding,
            ServerTx::NonInvite(m) => {
                matches!(
                    m.state(),
                    ServerNonInviteState::Completed | ServerNonInviteState::Terminated
                )
            }
        }
    }

    /// In flight = no final response yet, or an INVITE's final still awaiting its ACK.
    fn busy(&self) -> bool {
        match &self.machine {
            ServerTx::Invite(m) => matches!(
                m.state(),
                ServerInviteState::Proceeding
                    | ServerInviteState::Completed
                    | ServerInviteState::Accepted
            ),
            ServerTx::NonInvite(m) => {
                matches!(
                    m.state(),
                    ServerNonInviteState::Trying | ServerNonInviteState::Proceeding
                )
            }
        }
    }

    fn update_in_flight(&mut self) {
        let busy = self.holds_shutdown && self.busy();
        if busy != self.counted {
            self.counted = busy;
            if busy {
                self.endpoint.inner.in_flight.fetch_add(1, Ordering::AcqRel);
            } else {
                self.endpoint.inner.in_flight.fetch_sub(1, Ordering::AcqRel);
                self.endpoint.inner.in_flight_changed.notify_waiters();
            }
        }
    }
}

async fn sleep_until_opt(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(Instant::from_std(at)).await,
        None => std::future::pending().await,
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

/// What an outgoing INVITE reports to its TU.
#[derive(Debug)]
pub enum InviteEvent {
    /// A response for the TU: provisionals, the final, and every 2xx (retransmissions too,
    /// each needing the TU's ACK).
    Response(Response),
    /// Timer B: no final response within 64·T1 (act as on a 408).
    Timeout,
    /// The request could not be sent (act as on a 503).
    TransportError,
}

/// The TU's side of an outgoing INVITE.
pub struct OutgoingInvite {
    pub events: mpsc::Receiver<InviteEvent>,
    cancel: mpsc::Sender<()>,
    /// The INVITE as sent (with our Via): dialogs and ACKs of 2xx are built from it.
    pub request: Request,
}

impl OutgoingInvite {
    /// Asks for a CANCEL: sent at once if a provisional arrived, else as soon as one does
    /// (RFC 3261 §9.1); nothing once a final response is in.
    pub fn cancel(&self) {
        let _ = self.cancel.try_send(());
    }
}

/// The ACK of a non-2xx final (RFC 3261 §17.1.1.3): the INVITE's Request-URI, top Via and
/// Route set, the response's To (with its tag).
fn ack_for_failure(invite: &Request, resp: &Response) -> Request {
    let mut headers = message::Headers::default();
    if let Some(via) = invite.headers.get("Via") {
        headers.push("Via", via);
    }
    headers.push("Max-Forwards", "70");
    for (name, value) in invite.headers.iter() {
        if name.eq_ignore_ascii_case("From")
            || name.eq_ignore_ascii_case("Call-ID")
            || name.eq_ignore_ascii_case("Route")
        {
            headers.push(name, value);
        }
    }
    if let Some(to) = resp.headers.get("To") {
        headers.push("To", to);
    }
    let seq = invite.cseq().map(|c| c.seq).unwrap_or(1);
    headers.push("CSeq", format!("{seq} ACK"));
    Request {
        method: Method::Ack,
        uri: invite.uri.clone(),
        headers,
        body: bytes::Bytes::new(),
    }
}

/// The CANCEL of an INVITE (RFC 3261 §9.1): same Request-URI, Call-ID, From, To, Route and
/// CSeq number; its Via (the same branch) is added when it is sent.
fn cancel_for(invite: &Request) -> Request {
    let mut headers = message::Headers::default();
    for (name, value) in invite.headers.iter() {
        if ["From", "To", "Call-ID", "Route"]
            .iter()
            .any(|n| name.eq_ignore_ascii_case(n))
        {
            headers.push(name, value);
        }
    }
    let seq = invite.cseq().map(|c| c.seq).unwrap_or(1);
    headers.push("CSeq", format!("{seq} CANCEL"));
    Request {
        method: Method::Cancel,
        uri: invite.uri.clone(),
        headers,
        body: bytes::Bytes::new(),
    }
}

struct ClientInviteTask {
    endpoint: Endpoint,
    key: ClientKey,
    machine: ClientInvite,
    target: Target,
    request: Request,
    via: String,
    branch: String,
    events: mpsc::Sender<InviteEvent>,
    cancel_pending: bool,
}

impl ClientInviteTask {
    async fn run(
        mut self,
        mut responses: mpsc::Receiver<Response>,
        mut cancel: mpsc::Receiver<()>,
    ) {
        let transport = self.target.kind.as_str();
        let mut cancel_open = true;
        loop {
            while let Some(t) = self.machine.poll_transmit() {
                if t.kind == TransmitKind::Retransmit {
                    metrics::retransmission("sent", transport);
                }
                if let Err(err) = self
                    .endpoint
                    .inner
                    .transports
                    .send(self.target, t.payload)
                    .await
                {
                    debug!(%err, "INVITE not sent");
                    self.machine.transport_error(Instant::now().into_std());
                }
            }
            while let Some(event) = self.machine.poll_event() {
                let event = match event.equivalent_status() {
                    Some(503) => InviteEvent::TransportError,
                    _ => InviteEvent::Timeout,
                };
                let _ = self.events.send(event).await;
            }
            if self.machine.is_terminated() {
                break;
            }
            if self.cancel_pending && self.machine.can_cancel() {
                self.cancel_pending = false;
                self.send_cancel();
            }
            let deadline = self.machine.poll_timeout();
            tokio::select! {
                resp = responses.recv() => {
                    let Some(resp) = resp else { break };
                    let now = Instant::now().into_std();
                    let invite = &self.request;
                    let disposition = self.machine.on_response(now, resp.status, || ack_for_failure(invite, &resp).to_bytes());
                    if disposition == crate::sip::transaction::Disposition::PassToTu {
                        // The TU may have gone; the transaction still runs its course.
                        let _ = self.events.send(InviteEvent::Response(resp)).await;
                    }
                }
                c = cancel.recv(), if cancel_open && !self.cancel_pending => match c {
                    Some(()) => self.cancel_pending = true,
                    // The TU dropped its handle: no CANCEL can come any more.
                    None => cancel_open = false,
                },
                _ = sleep_until_opt(deadline) => self.machine.handle_timeout(Instant::now().into_std()),
            }
        }
        lock(&self.endpoint.inner.client_txs).remove(&self.key);
    }

    fn send_cancel(&self) {
        let endpoint = self.endpoint.clone();
        let cancel = cancel_for(&self.request);
        let (target, via, branch) = (self.target, self.via.clone(), self.branch.clone());
        tokio::spawn(async move {
            if let Err(err) = endpoint
                .request_on_branch(cancel, target, via, branch)
                .await
            {
                debug!(%err, "CANCEL got no final response");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;
    use std::collections::HashMap as Map;
    use std::time::Duration;

    /// An endpoint on its own UDP port on loopback, with its transports.
    async fn endpoint() -> (Endpoint, watch::Sender<bool>, SocketAddr) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/default.toml");
        let env: Map<String, String> = [
            ("DIALTONE__SIP__UDP", "127.0.0.1:0"),
            ("DIALTONE__SIP__TCP", ""),
            ("DIALTONE__HTTP__LISTEN", ""),
            ("DIALTONE__SIP__T1_MS", "50"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let settings = Settings::load_with_env(&path, Some(env)).unwrap();
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
            lock(&self.0).push(tx);
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
