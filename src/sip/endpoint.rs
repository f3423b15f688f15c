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
use crate::sip::transaction::{
    RequestIds, ServerInvite, ServerInviteState, ServerKey, ServerNonInvite, ServerNonInviteState,
    Transaction, TransmitKind,
};
use crate::sip::transport::{Inbound, Kind, Target, Transports};

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
    Respond(Response),
}

/// Shared state of the endpoint.
struct Inner {
    transports: Transports,
    limits: Limits,
    timers: TimerSettings,
    /// Live server transactions, by key. Signalling path only; never held across `.await`.
    server_txs: Mutex<HashMap<ServerKey, mpsc::Sender<TxInput>>>,
    /// Transactions that must finish before a graceful shutdown may exit: those still
    /// waiting for the TU's final response or for the ACK of a non-2xx final.
    in_flight: AtomicUsize,
    in_flight_changed: tokio::sync::Notify,
    draining: watch::Receiver<bool>,
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
                in_flight: AtomicUsize::new(0),
                in_flight_changed: tokio::sync::Notify::new(),
                draining,
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
            // Answer from the header block when it holds a request we can reply to.
            match message::parse(&msg.data, &self.inner.limits) {
                Err(err) => self.reply_to_error(&msg, err).await,
                Ok(SipMessage::Request(req)) if req.method != Method::Ack && answerable(&req) => {
                    let resp = Response::for_request(
                        &req,
                        400,
                        cause_phrase(cause.cause()),
                        Some(&new_tag()),
                    );
                    self.send_stateless(&msg, resp).await;
                }
                Ok(_) => {}
            }
            return;
        }
        match message::parse(&msg.data, &self.inner.limits) {
            Err(err) => self.reply_to_error(&msg, err).await,
            Ok(SipMessage::Response(resp)) => {
                metrics::message_in(transport, &resp.status.to_string());
                // No client transactions are started yet, so every response is stray.
                metrics::drop("stray_response", transport);
                trace!(source = %msg.source, status = resp.status, "response matches no client transaction");
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
                    Some(tx) => {
                        self.deliver(&tx, TxInput::Ack, transport);
                    }
                    // An ACK for a 2xx goes to its dialog; there are none yet.
                    None => metrics::drop("stray_ack", transport),
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
                self.start_transaction(msg, key, req, Some(resp));
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
        let resp = if *self.inner.draining.borrow() {
            let mut resp = Response::for_request(
                &req,
                503,
                "Service Unavailable (shutting down)",
                Some(&new_tag()),
            );
            resp.headers.push("Retry-After", "30");
            resp
        } else {
            user_agent_core(&req)
        };
        self.start_transaction(msg, key, req, Some(resp));
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

    /// Creates a server transaction for `req`, spawns its task, and hands it the TU's
    /// first response (INVITEs get a 100 Trying before it).
    fn start_transaction(
        &self,
        msg: &Inbound,
        key: ServerKey,
        req: Request,
        resp: Option<Response>,
    ) {
        let (tx, rx) = mpsc::channel(16);
        {
            let mut table = lock(&self.inner.server_txs);
            if table.contains_key(&key) {
                return; // lost a race with a retransmission of the same request
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
        let holds_shutdown = !*self.inner.draining.borrow();
        let task = TxTask {
            endpoint: self.clone(),
            key,
            machine,
            target: response_target(msg),
            request: req,
            holds_shutdown,
            counted: false,
        };
        if is_invite {
            let trying = Response::for_request(&task.request, 100, "Trying", None);
            let _ = tx.try_send(TxInput::Respond(trying));
        }
        if let Some(resp) = resp {
            let _ = tx.try_send(TxInput::Respond(resp));
        }
        tokio::spawn(task.run(rx));
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

/// A request can be answered only if it carries what a response must copy.
fn answerable(req: &Request) -> bool {
    req.top_via().is_some()
        && req.headers.get("From").is_some()
        && req.headers.get("To").is_some()
        && req.headers.get("Call-ID").is_some()
        && req.cseq().is_some()
}

fn cause_phrase(cause: &str) -> &'static str {
    match cause {
        "too_large" => "Message Too Large",
        _ => "Bad Request",
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

/// The user-agent core's answer to a new request outside any dialog (RFC 3261 §8.2).
/// Checks run in the RFC's order: method, header inspection, content, then the
/// application (routing, which for now finds nobody: every INVITE gets 404).
fn user_agent_core(req: &Request) -> Response {
    let reject = |status: u16| {
        Response::for_request(
            req,
            status,
            message::reason_phrase(status),
            Some(&new_tag()),
        )
    };
    match &req.method {
        Method::Invite | Method::Options => {}
        // Dialog methods: with no dialog to match, the transaction does not exist.
        Method::Bye | Method::Update | Method::Info | Method::Prack => return reject(481),
        Method::Register
        | Method::Subscribe
        | Method::Notify
        | Method::Refer
        | Method::Message
        | Method::Publish => {
            let mut resp = reject(405);
            resp.headers.push("Allow", ALLOW);
            return resp;
        }
        Method::Other(_) => {
            let mut resp = reject(501);
            resp.headers.push("Allow", ALLOW);
            return resp;
        }
        // Handled before a transaction is made.
        Method::Ack | Method::Cancel => return reject(500),
    }
    // A request inside a dialog (To tag present) that matches none: RFC 3261 §12.2.2.
    if req.to_tag().is_some() {
        return reject(481);
    }
    let unsupported: Vec<&str> = req
        .headers
        .get_all("Require")
        .into_iter()
        .map(str::trim)
        .filter(|tag| !tag.is_empty() && !SUPPORTED.iter().any(|s| s.eq_ignore_ascii_case(tag)))
        .collect();
    if !unsupported.is_empty() {
        let mut resp = reject(420);
        resp.headers.push("Unsupported", unsupported.join(", "));
        return resp;
    }
    if !req.body.is_empty() {
        let content_type = req.headers.get("Content-Type").unwrap_or("");
        let mime = content_type.split(';').next().unwrap_or("").trim();
        if !mime.eq_ignore_ascii_case(ACCEPT) {
            let mut resp = reject(415);
            resp.headers.push("Accept", ACCEPT);
            return resp;
        }
    }
    if req.method == Method::Invite && !accepts_sdp(req) {
        let mut resp = reject(406);
        resp.headers.push(
            "Warning",
            "399 dialtone \"only application/sdp is offered\"",
        );
        return resp;
    }
    match req.method {
        Method::Options => {
            let mut resp = Response::for_request(req, 200, "OK", Some(&new_tag()));
            resp.headers.push("Allow", ALLOW);
            resp.headers.push("Accept", ACCEPT);
            resp.headers.push("Accept-Encoding", "identity");
            resp.headers.push("Accept-Language", "en");
            resp
        }
        _ => reject(404),
    }
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
    request: Request,
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
            if self.is_terminated() {
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
                if !self.final_sent() {
                    let resp = Response::for_request(
                        &self.request,
                        487,
                        "Request Terminated",
                        Some(&new_tag()),
                    );
                    self.respond(now, resp);
                }
            }
            TxInput::Respond(resp) => self.respond(now, resp),
        }
    }

    fn respond(&mut self, now: std::time::Instant, mut resp: Response) {
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
                call_id = self.request.call_id().unwrap_or(""),
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
