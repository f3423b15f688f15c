//! Server transactions (RFC 3261 §17.2) in the driver: the adapter that runs a
//! [`ServerInvite`] or a [`ServerNonInvite`], and the transaction user's handle on one.
//!
//! Besides feeding the machine, the adapter keeps the promises the endpoint makes around
//! it: a CANCEL ends an unanswered INVITE with 487 under the To tag already sent (§9.2),
//! in-flight transactions hold a graceful shutdown, and a non-INVITE that finished over UDP
//! leaves its response in the [`crate::sip::transaction::completed`] table rather than
//! keeping a task alive for Timer J.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

use super::{drive, now, Adapter, Next, Transactions};
use crate::config::TimerSettings;
use crate::metrics;
use crate::sip::message::{self, Method, Request, Response};
use crate::sip::transaction::completed::Finished;
use crate::sip::transaction::{
    Disposition, Event, RequestIds, ServerInvite, ServerInviteState, ServerKey, ServerNonInvite,
    ServerNonInviteState, Transaction, TxError,
};
use crate::sip::transport::Target;
use crate::sip::ua;
use crate::sync::lock;

/// Inputs a server transaction's queue holds: enough for a burst of retransmissions
/// besides the TU's responses.
const QUEUE: usize = 16;

/// What a server transaction can be told.
#[derive(Debug)]
pub enum ServerInput {
    /// The request arrived again.
    Retransmission,
    /// An ACK matched this INVITE transaction.
    Ack,
    /// A CANCEL matched this INVITE transaction: answer 487 unless a final was sent.
    Cancel,
    /// The transaction user's response.
    Respond(Box<Response>),
}

/// The server transaction key of a request (RFC 3261 §17.2.3, with the RFC 2543 fallback).
/// `None` without a Via: such a request cannot be answered either.
pub fn server_key(req: &Request) -> Option<ServerKey> {
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

/// The transaction user's side of one server transaction.
pub struct ServerTxHandle {
    input: mpsc::Sender<ServerInput>,
    cancelled: watch::Receiver<bool>,
    target: Target,
}

impl ServerTxHandle {
    /// Sends a response through the transaction (which retransmits it as the RFC says).
    /// A response after the transaction ended is dropped: its peer has gone.
    pub fn respond(&self, resp: Response) {
        if self
            .input
            .try_send(ServerInput::Respond(Box::new(resp)))
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

impl Transactions {
    /// Creates a server transaction for `req`, which came from `target`, and spawns its
    /// task; an INVITE's gets a 100 Trying at once (RFC 3261 §8.2.6.1). `holds_shutdown`:
    /// whether a graceful shutdown waits for it while it is in flight. `None` when a
    /// retransmission of the same request won the race and already made one.
    pub fn start_server(
        self: &Arc<Self>,
        key: ServerKey,
        req: &Request,
        target: Target,
        holds_shutdown: bool,
    ) -> Option<ServerTxHandle> {
        let (input, inputs) = mpsc::channel(QUEUE);
        {
            let mut table = lock(&self.server);
            if table.contains_key(&key) {
                return None;
            }
            table.insert(key.clone(), input.clone());
        }
        let (cancelled_tx, cancelled) = watch::channel(false);
        let handle = ServerTxHandle {
            input,
            cancelled,
            target,
        };
        let transports = self.transports.clone();
        if req.method == Method::Invite {
            let invite = Some(Box::new(req.clone()));
            let tx = ServerTx::<ServerInvite>::new(
                self.clone(),
                key,
                target,
                invite,
                cancelled_tx,
                holds_shutdown,
            );
            handle.respond(Response::for_request(req, 100, "Trying", None));
            tokio::spawn(drive(tx, inputs, transports, target));
        } else {
            let tx = ServerTx::<ServerNonInvite>::new(
                self.clone(),
                key,
                target,
                None,
                cancelled_tx,
                holds_shutdown,
            );
            tokio::spawn(drive(tx, inputs, transports, target));
        }
        Some(handle)
    }
}

/// What the server adapter needs of a machine besides [`Transaction`], so one adapter
/// serves both.
pub trait ServerMachine: Transaction + Send + 'static {
    const KIND: &'static str;
    fn start(now: Instant, reliable: bool, timers: TimerSettings) -> Self;
    fn on_request(&mut self, now: Instant) -> Disposition;
    fn on_ack(&mut self, now: Instant) -> Disposition;
    fn send_response(&mut self, now: Instant, status: u16, response: Bytes) -> Result<(), TxError>;
    /// Whether the final response went out (a CANCEL then changes nothing).
    fn final_sent(&self) -> bool;
    /// In flight: no final response yet, or an INVITE's final still awaiting its ACK.
    fn busy(&self) -> bool;
    /// The final response and Timer J's deadline, once that is all that is left to do.
    fn completed(&self) -> Option<(Bytes, Instant)>;
}

impl ServerMachine for ServerInvite {
    const KIND: &'static str = "server_invite";

    fn start(now: Instant, reliable: bool, timers: TimerSettings) -> Self {
        ServerInvite::new(now, reliable, timers)
    }

    fn on_request(&mut self, now: Instant) -> Disposition {
        ServerInvite::on_request(self, now)
    }

    fn on_ack(&mut self, now: Instant) -> Disposition {
        ServerInvite::on_ack(self, now)
    }

    fn send_response(&mut self, now: Instant, status: u16, response: Bytes) -> Result<(), TxError> {
        ServerInvite::send_response(self, now, status, response)
    }

    fn final_sent(&self) -> bool {
        self.state() != ServerInviteState::Proceeding
    }

    fn busy(&self) -> bool {
        matches!(
            self.state(),
            ServerInviteState::Proceeding
                | ServerInviteState::Completed
                | ServerInviteState::Accepted
        )
    }

    fn completed(&self) -> Option<(Bytes, Instant)> {
        // Completed waits for an ACK, and a retransmitted INVITE is answered by the task.
        None
    }
}

impl ServerMachine for ServerNonInvite {
    const KIND: &'static str = "server_non_invite";

    fn start(now: Instant, reliable: bool, timers: TimerSettings) -> Self {
        ServerNonInvite::new(now, reliable, timers)
    }

    fn on_request(&mut self, now: Instant) -> Disposition {
        ServerNonInvite::on_request(self, now)
    }

    fn on_ack(&mut self, _now: Instant) -> Disposition {
        // An ACK matches INVITE transactions only.
        Disposition::Absorb
    }

    fn send_response(&mut self, now: Instant, status: u16, response: Bytes) -> Result<(), TxError> {
        ServerNonInvite::send_response(self, now, status, response)
    }

    fn final_sent(&self) -> bool {
        matches!(
            self.state(),
            ServerNonInviteState::Completed | ServerNonInviteState::Terminated
        )
    }

    fn busy(&self) -> bool {
        matches!(
            self.state(),
            ServerNonInviteState::Trying | ServerNonInviteState::Proceeding
        )
    }

    fn completed(&self) -> Option<(Bytes, Instant)> {
        ServerNonInvite::completed(self)
    }
}

/// One server transaction, as [`drive`] runs it.
pub struct ServerTx<M> {
    txs: Arc<Transactions>,
    key: ServerKey,
    machine: M,
    target: Target,
    /// The INVITE, which a CANCEL's 487 is built from; `None` for other methods.
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

impl<M: ServerMachine> ServerTx<M> {
    fn new(
        txs: Arc<Transactions>,
        key: ServerKey,
        target: Target,
        invite: Option<Box<Request>>,
        cancelled: watch::Sender<bool>,
        holds_shutdown: bool,
    ) -> Self {
        let machine = M::start(now(), target.kind.is_reliable(), txs.timers);
        ServerTx {
            txs,
            key,
            machine,
            target,
            invite,
            cancelled,
            to_tag: None,
            holds_shutdown,
            counted: false,
        }
    }

    fn respond(&mut self, now: Instant, mut resp: Response) {
        if self.to_tag.is_none() && resp.status > 100 {
            self.to_tag = resp
                .headers
                .get("To")
                .and_then(|to| message::NameAddr::parse(to).ok())
                .and_then(|to| to.param("tag").map(str::to_owned));
        }
        resp.headers.push("Server", ua::PRODUCT);
        let status = resp.status;
        match self.machine.send_response(now, status, resp.to_bytes()) {
            Ok(()) => metrics::message_out(self.target.kind.as_str(), &status.to_string()),
            Err(err) => warn!(%err, status, "transaction refused a response"),
        }
    }

    /// A CANCEL matched: answer 487 with the To tag of what was sent so far, unless a
    /// final response already went out, and tell the TU.
    fn cancel(&mut self, now: Instant) {
        if self.machine.final_sent() {
            return;
        }
        let Some(invite) = self.invite.as_deref() else {
            return;
        };
        let tag = self.to_tag.clone().unwrap_or_else(ua::new_tag);
        let resp = Response::for_request(invite, 487, "Request Terminated", Some(&tag));
        self.respond(now, resp);
        let _ = self.cancelled.send(true);
    }

    /// A non-INVITE transaction that sent its final response over UDP only waits for
    /// request retransmissions until Timer J: leave that to the endpoint's table (entered
    /// before this transaction's own entry goes, so no retransmission finds neither).
    fn hand_off_completed(&mut self, now: Instant) -> bool {
        let Some((response, expires)) = self.machine.completed() else {
            return false;
        };
        let finished = Finished {
            response,
            target: self.target,
        };
        lock(&self.txs.completed).insert(self.key.clone(), finished, expires, now);
        true
    }

    fn update_in_flight(&mut self) {
        let busy = self.holds_shutdown && self.machine.busy();
        if busy != self.counted {
            self.counted = busy;
            self.txs.count_in_flight(busy);
        }
    }
}

impl<M: ServerMachine> Adapter for ServerTx<M> {
    type Machine = M;
    type Input = ServerInput;
    /// A server transaction's TU learns nothing from it: it gave the request already.
    type Report = Infallible;
    const KIND: &'static str = M::KIND;

    fn machine(&mut self) -> &mut M {
        &mut self.machine
    }

    fn on_input(&mut self, now: Instant, input: ServerInput) -> Option<Infallible> {
        // Dispositions are ignored: a server transaction's retransmissions and the ACK of a
        // non-2xx never go further up, and there are no dialogs yet for a 2xx's ACK.
        match input {
            ServerInput::Retransmission => {
                let _ = self.machine.on_request(now);
            }
            ServerInput::Ack => {
                let _ = self.machine.on_ack(now);
            }
            ServerInput::Cancel => self.cancel(now),
            ServerInput::Respond(resp) => self.respond(now, *resp),
        }
        None
    }

    fn on_event(&mut self, event: Event) -> Option<Infallible> {
        debug!(
            ?event,
            transport = self.target.kind.as_str(),
            call_id = self.invite.as_ref().and_then(|r| r.call_id()).unwrap_or(""),
            "transaction event"
        );
        None
    }

    fn settle(&mut self, now: Instant) -> Next {
        self.update_in_flight();
        if self.hand_off_completed(now) {
            Next::End
        } else {
            Next::Run
        }
    }

    async fn report(&mut self, report: Infallible) {
        match report {}
    }
}

impl<M> Drop for ServerTx<M> {
    fn drop(&mut self) {
        self.txs.remove_server(&self.key);
        if self.counted {
            self.txs.count_in_flight(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::transactions;
    use super::*;
    use crate::sip::message::{Limits, SipMessage};
    use crate::sip::transport::Kind;

    fn request(method: &str) -> Request {
        let text = format!(
            "{method} sip:b@192.0.2.1 SIP/2.0\r\n\
             Via: SIP/2.0/UDP 192.0.2.9:5060;branch=z9hG4bK{:x}\r\n\
             From: <sip:a@192.0.2.9>;tag=fromtag\r\n\
             To: <sip:b@192.0.2.1>\r\n\
             Call-ID: driver-test@192.0.2.9\r\n\
             CSeq: 1 {method}\r\n\
             Content-Length: 0\r\n\r\n",
            rand::random::<u64>()
        );
        let limits = Limits {
            max_message_bytes: 65_535,
            max_headers: 100,
        };
        match message::parse(text.as_bytes(), &limits) {
            Ok(SipMessage::Request(req)) => req,
            other => panic!("test request did not parse: {other:?}"),
        }
    }

    fn target(kind: Kind) -> Target {
        Target {
            kind,
            addr: "192.0.2.9:5060".parse().unwrap(),
            conn: None,
        }
    }

    /// A server transaction for `req` outside any task, and what its TU would watch.
    fn server<M: ServerMachine>(
        txs: &Arc<Transactions>,
        req: &Request,
        kind: Kind,
        holds_shutdown: bool,
    ) -> (ServerTx<M>, watch::Receiver<bool>) {
        let (cancelled_tx, cancelled) = watch::channel(false);
        let invite = (req.method == Method::Invite).then(|| Box::new(req.clone()));
        let key = server_key(req).unwrap();
        let tx = ServerTx::<M>::new(
            txs.clone(),
            key,
            target(kind),
            invite,
            cancelled_tx,
            holds_shutdown,
        );
        (tx, cancelled)
    }

    fn respond<A: Adapter<Input = ServerInput>>(tx: &mut A, resp: Response) {
        let _ = tx.on_input(now(), ServerInput::Respond(Box::new(resp)));
    }

    /// The status lines and To headers of everything the machine wants sent.
    fn sent<M: Transaction>(machine: &mut M) -> Vec<(String, String)> {
        let mut out = Vec::new();
        while let Some(t) = machine.poll_transmit() {
            let text = String::from_utf8_lossy(&t.payload).into_owned();
            let status = text.lines().next().unwrap_or("").to_string();
            let to = text
                .lines()
                .find_map(|l| l.strip_prefix("To: "))
                .unwrap_or("")
                .to_string();
            assert!(text.contains(&format!("Server: {}", ua::PRODUCT)), "{text}");
            out.push((status, to));
        }
        out
    }

    #[tokio::test]
    async fn cancel_ends_a_ringing_invite_with_487_under_the_same_to_tag() {
        let txs = transactions().await;
        let invite = request("INVITE");
        let (mut tx, cancelled) = server::<ServerInvite>(&txs, &invite, Kind::Udp, true);
        respond(
            &mut tx,
            Response::for_request(&invite, 180, "Ringing", Some("ring")),
        );
        let _ = tx.on_input(now(), ServerInput::Cancel);
        let sent = sent(tx.machine());
        assert_eq!(sent.len(), 2, "{sent:?}");
        assert_eq!(sent[1].0, "SIP/2.0 487 Request Terminated");
        assert_eq!(sent[1].1, "<sip:b@192.0.2.1>;tag=ring");
        assert!(*cancelled.borrow(), "the TU hears of the CANCEL");
    }

    #[tokio::test]
    async fn cancel_after_the_final_changes_nothing() {
        let txs = transactions().await;
        let invite = request("INVITE");
        let (mut tx, cancelled) = server::<ServerInvite>(&txs, &invite, Kind::Udp, true);
        respond(
            &mut tx,
            Response::for_request(&invite, 200, "OK", Some("ok")),
        );
        let _ = tx.on_input(now(), ServerInput::Cancel);
        assert_eq!(sent(tx.machine()).len(), 1);
        assert!(!*cancelled.borrow());
        // A CANCEL before any response makes up a To tag of its own.
        let other = request("INVITE");
        let (mut tx, _cancelled) = server::<ServerInvite>(&txs, &other, Kind::Udp, true);
        let _ = tx.on_input(now(), ServerInput::Cancel);
        let sent = sent(tx.machine());
        assert!(sent[0].1.starts_with("<sip:b@192.0.2.1>;tag="), "{sent:?}");
    }

    #[tokio::test]
    async fn an_invite_holds_shutdown_until_its_failure_is_acknowledged() {
        let txs = transactions().await;
        let invite = request("INVITE");
        let (mut tx, _) = server::<ServerInvite>(&txs, &invite, Kind::Udp, true);
        assert_eq!(tx.settle(now()), Next::Run);
        assert_eq!(txs.in_flight(), 1);
        respond(
            &mut tx,
            Response::for_request(&invite, 486, "Busy Here", Some("b")),
        );
        assert_eq!(tx.settle(now()), Next::Run);
        assert_eq!(txs.in_flight(), 1, "the 486 awaits its ACK");
        let _ = tx.on_input(now(), ServerInput::Ack);
        assert_eq!(tx.settle(now()), Next::Run, "Confirmed waits out Timer I");
        assert_eq!(txs.in_flight(), 0);
    }

    #[tokio::test]
    async fn transactions_begun_while_draining_do_not_hold_shutdown() {
        let txs = transactions().await;
        let invite = request("INVITE");
        let (mut tx, _) = server::<ServerInvite>(&txs, &invite, Kind::Udp, false);
        tx.settle(now());
        assert_eq!(txs.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_dropped_transaction_is_counted_out() {
        let txs = transactions().await;
        let req = request("OPTIONS");
        let (mut tx, _) = server::<ServerNonInvite>(&txs, &req, Kind::Udp, true);
        tx.settle(now());
        assert_eq!(txs.in_flight(), 1);
        drop(tx);
        assert_eq!(txs.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_started_transaction_is_found_until_its_task_ends() {
        let txs = transactions().await;
        let req = request("OPTIONS");
        let key = server_key(&req).unwrap();
        let handle = txs
            .start_server(key.clone(), &req, target(Kind::Udp), true)
            .unwrap();
        let again = txs.start_server(key.clone(), &req, target(Kind::Udp), true);
        assert!(
            again.is_none(),
            "a retransmission makes no second transaction"
        );
        assert!(txs.deliver(&key, ServerInput::Retransmission, "UDP"));
        // UDP is off, so the 200 cannot be sent: the transaction fails and its task ends.
        handle.respond(Response::for_request(&req, 200, "OK", Some("t")));
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while txs.live_server() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(txs.live_server(), 0);
        assert_eq!(txs.in_flight(), 0);
        assert!(!txs.deliver(&key, ServerInput::Retransmission, "UDP"));
        assert!(
            txs.finished(&key, now()).is_none(),
            "nothing was sent to resend"
        );
    }

    #[tokio::test]
    async fn a_non_invite_finished_over_udp_is_handed_to_the_completed_table() {
        let txs = transactions().await;
        let req = request("OPTIONS");
        let key = server_key(&req).unwrap();
        let (mut tx, _) = server::<ServerNonInvite>(&txs, &req, Kind::Udp, true);
        respond(&mut tx, Response::for_request(&req, 200, "OK", Some("t")));
        let sent = sent(tx.machine());
        assert_eq!(tx.settle(now()), Next::End);
        let finished = txs.finished(&key, now()).unwrap();
        assert!(String::from_utf8_lossy(&finished.response).starts_with(&sent[0].0));
        assert_eq!(finished.target, target(Kind::Udp));
    }

    #[tokio::test]
    async fn a_non_invite_over_a_stream_terminates_instead() {
        let txs = transactions().await;
        let req = request("OPTIONS");
        let key = server_key(&req).unwrap();
        let (mut tx, _) = server::<ServerNonInvite>(&txs, &req, Kind::Tcp, true);
        respond(&mut tx, Response::for_request(&req, 200, "OK", Some("t")));
        assert_eq!(tx.settle(now()), Next::Run);
        assert!(tx.machine().is_terminated());
        assert!(txs.finished(&key, now()).is_none());
    }

    #[tokio::test]
    async fn a_second_final_is_refused_and_not_sent() {
        let txs = transactions().await;
        let req = request("OPTIONS");
        let (mut tx, _) = server::<ServerNonInvite>(&txs, &req, Kind::Udp, true);
        respond(&mut tx, Response::for_request(&req, 200, "OK", Some("t")));
        respond(&mut tx, Response::for_request(&req, 500, "Oops", Some("t")));
        assert_eq!(sent(tx.machine()).len(), 1);
    }
}
