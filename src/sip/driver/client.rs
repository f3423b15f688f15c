//! Client transactions (RFC 3261 §17.1) in the driver: the adapters that run a
//! [`ClientInvite`] or a [`ClientNonInvite`], and the transaction user's handles on them.
//!
//! A non-INVITE request's caller waits for the final response only; the transaction then
//! lingers in its own task to absorb retransmitted finals (Timer K). An INVITE's TU gets
//! every response it must see through [`OutgoingInvite::events`] and may ask for a CANCEL
//! at any time; it goes out once a provisional arrived (§9.1).

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use super::{drive, now, Adapter, Next, Transactions};
use crate::metrics;
use crate::sip::message::{Method, Request, Response};
use crate::sip::transaction::{ClientInvite, ClientKey, ClientNonInvite, Disposition, Event};
use crate::sip::transport::Target;
use crate::sip::ua;
use crate::sync::lock;

/// Responses a non-INVITE client transaction's queue holds.
const NON_INVITE_QUEUE: usize = 8;
/// Inputs an INVITE client transaction's queue holds: provisionals come in bursts.
const INVITE_QUEUE: usize = 16;
/// Events an outgoing INVITE can hold for a TU that is slow to read them.
const EVENTS: usize = 16;

/// What a client transaction can be told.
#[derive(Debug)]
pub enum ClientInput {
    /// A response matched it.
    Response(Response),
    /// The TU wants the INVITE cancelled (only an [`OutgoingInvite`] can ask).
    Cancel,
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
    cancel: mpsc::Sender<ClientInput>,
    /// The INVITE as sent (with our Via): dialogs and ACKs of 2xx are built from it.
    pub request: Request,
}

impl OutgoingInvite {
    /// Asks for a CANCEL: sent at once if a provisional arrived, else as soon as one does
    /// (RFC 3261 §9.1); nothing once a final response is in.
    pub fn cancel(&self) {
        let _ = self.cancel.try_send(ClientInput::Cancel);
    }
}

/// The client transaction key of a response: its top Via's branch and its CSeq method.
pub fn client_key(resp: &Response) -> Option<ClientKey> {
    let branch = resp.top_via()?.branch?;
    Some(ClientKey::new(&branch, resp.cseq()?.method.as_str()))
}

impl Transactions {
    /// Sends a non-INVITE request, already stamped with our Via, in a client transaction
    /// keyed `key`. The transaction starts at once; the returned future resolves with its
    /// final response (or why there was none) and may be dropped without stopping it.
    pub fn start_client_non_invite(
        self: &Arc<Self>,
        key: ClientKey,
        req: Request,
        target: Target,
    ) -> impl Future<Output = Result<Response, RequestError>> + Send + 'static {
        let (input, inputs) = mpsc::channel(NON_INVITE_QUEUE);
        lock(&self.client).insert(key.clone(), input);
        metrics::message_out(target.kind.as_str(), req.method.as_str());
        let machine = ClientNonInvite::new(
            now(),
            req.to_bytes(),
            target.kind.is_reliable(),
            self.timers,
        );
        let (outcome_tx, outcome) = oneshot::channel();
        let tx = ClientNonInviteTx {
            txs: self.clone(),
            key,
            machine,
            outcome: Some(outcome_tx),
        };
        tokio::spawn(drive(tx, inputs, self.transports.clone(), target));
        // The sender goes only with a reported outcome or with the task, which never ends
        // before its machine reported a final response, a timeout or a transport error.
        async move { outcome.await.unwrap_or(Err(RequestError::Timeout)) }
    }

    /// Sends an INVITE, already stamped with `via` (whose branch is `branch`), in a client
    /// INVITE transaction (RFC 3261 §17.1.1 with RFC 6026).
    pub fn start_client_invite(
        self: &Arc<Self>,
        req: Request,
        target: Target,
        via: String,
        branch: String,
    ) -> OutgoingInvite {
        let key = ClientKey::new(&branch, Method::Invite.as_str());
        let (input, inputs) = mpsc::channel(INVITE_QUEUE);
        lock(&self.client).insert(key.clone(), input.clone());
        let (events_tx, events) = mpsc::channel(EVENTS);
        metrics::message_out(target.kind.as_str(), Method::Invite.as_str());
        let machine = ClientInvite::new(
            now(),
            req.to_bytes(),
            target.kind.is_reliable(),
            self.timers,
        );
        let tx = ClientInviteTx {
            txs: self.clone(),
            key,
            machine,
            target,
            request: req.clone(),
            via,
            branch,
            events: events_tx,
            cancel_pending: false,
        };
        tokio::spawn(drive(tx, inputs, self.transports.clone(), target));
        OutgoingInvite {
            events,
            cancel: input,
            request: req,
        }
    }
}

/// One non-INVITE client transaction, as [`drive`] runs it.
pub struct ClientNonInviteTx {
    txs: Arc<Transactions>,
    key: ClientKey,
    machine: ClientNonInvite,
    /// Where the final response (or why there was none) goes; taken when sent.
    outcome: Option<oneshot::Sender<Result<Response, RequestError>>>,
}

impl Adapter for ClientNonInviteTx {
    type Machine = ClientNonInvite;
    type Input = ClientInput;
    type Report = Result<Response, RequestError>;
    const KIND: &'static str = "client_non_invite";

    fn machine(&mut self) -> &mut ClientNonInvite {
        &mut self.machine
    }

    fn on_input(&mut self, now: Instant, input: ClientInput) -> Option<Self::Report> {
        // Nothing holds a non-INVITE's queue but the table, so a Cancel cannot come.
        let ClientInput::Response(resp) = input else {
            return None;
        };
        let pass = self.machine.on_response(now, resp.status);
        (pass == Disposition::PassToTu && resp.status >= 200).then_some(Ok(resp))
    }

    fn on_event(&mut self, event: Event) -> Option<Self::Report> {
        Some(Err(match event.equivalent_status() {
            Some(503) => RequestError::Transport("send failed".into()),
            _ => RequestError::Timeout,
        }))
    }

    fn settle(&mut self, _now: Instant) -> Next {
        Next::Run
    }

    async fn report(&mut self, report: Self::Report) {
        if let Some(outcome) = self.outcome.take() {
            // The caller may have stopped waiting; the transaction still runs its course.
            let _ = outcome.send(report);
        }
    }
}

impl Drop for ClientNonInviteTx {
    fn drop(&mut self) {
        self.txs.remove_client(&self.key);
    }
}

/// One INVITE client transaction, as [`drive`] runs it.
pub struct ClientInviteTx {
    txs: Arc<Transactions>,
    key: ClientKey,
    machine: ClientInvite,
    target: Target,
    /// The INVITE as sent: the ACK of a non-2xx and the CANCEL are built from it.
    request: Request,
    /// The INVITE's Via, which its CANCEL carries too (RFC 3261 §9.1).
    via: String,
    branch: String,
    events: mpsc::Sender<InviteEvent>,
    /// The TU asked for a CANCEL before any provisional arrived.
    cancel_pending: bool,
}

impl ClientInviteTx {
    /// The CANCEL to send now, if the TU asked for one and a provisional arrived since.
    fn cancel_due(&mut self) -> Option<Request> {
        if !(self.cancel_pending && self.machine.can_cancel()) {
            return None;
        }
        self.cancel_pending = false;
        let mut cancel = ua::cancel_for(&self.request);
        ua::stamp_request(&mut cancel, self.via.clone());
        Some(cancel)
    }
}

impl Adapter for ClientInviteTx {
    type Machine = ClientInvite;
    type Input = ClientInput;
    type Report = InviteEvent;
    const KIND: &'static str = "client_invite";

    fn machine(&mut self) -> &mut ClientInvite {
        &mut self.machine
    }

    fn on_input(&mut self, now: Instant, input: ClientInput) -> Option<InviteEvent> {
        match input {
            ClientInput::Response(resp) => {
                let invite = &self.request;
                let ack = || ua::ack_for_failure(invite, &resp).to_bytes();
                let disposition = self.machine.on_response(now, resp.status, ack);
                (disposition == Disposition::PassToTu).then_some(InviteEvent::Response(resp))
            }
            ClientInput::Cancel => {
                self.cancel_pending = true;
                None
            }
        }
    }

    fn on_event(&mut self, event: Event) -> Option<InviteEvent> {
        Some(match event.equivalent_status() {
            Some(503) => InviteEvent::TransportError,
            _ => InviteEvent::Timeout,
        })
    }

    fn settle(&mut self, _now: Instant) -> Next {
        if let Some(cancel) = self.cancel_due() {
            let key = ClientKey::new(&self.branch, Method::Cancel.as_str());
            let outcome = self.txs.start_client_non_invite(key, cancel, self.target);
            tokio::spawn(async move {
                if let Err(err) = outcome.await {
                    debug!(%err, "CANCEL got no final response");
                }
            });
        }
        Next::Run
    }

    async fn report(&mut self, event: InviteEvent) {
        // The TU may have gone; the transaction still runs its course.
        let _ = self.events.send(event).await;
    }
}

impl Drop for ClientInviteTx {
    fn drop(&mut self) {
        self.txs.remove_client(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::transactions;
    use super::*;
    use crate::sip::message;
    use crate::sip::transaction::{ClientInviteState, Transaction};
    use crate::sip::transport::Kind;

    const VIA: &str = "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKclient;rport";

    fn invite() -> Request {
        let mut headers = message::Headers::default();
        headers.push("Via", VIA);
        headers.push("From", "<sip:a@192.0.2.1>;tag=fromtag");
        headers.push("To", "<sip:b@192.0.2.9>");
        headers.push("Call-ID", "client-test@192.0.2.1");
        headers.push("CSeq", "4 INVITE");
        headers.push("Route", "<sip:proxy.example.com;lr>");
        Request {
            method: Method::Invite,
            uri: "sip:b@192.0.2.9".into(),
            headers,
            body: bytes::Bytes::new(),
        }
    }

    fn target() -> Target {
        Target {
            kind: Kind::Udp,
            addr: "192.0.2.9:5060".parse().unwrap(),
            conn: None,
        }
    }

    fn response(req: &Request, status: u16) -> Response {
        Response::for_request(req, status, message::reason_phrase(status), Some("peer"))
    }

    async fn invite_tx() -> (ClientInviteTx, mpsc::Receiver<InviteEvent>) {
        let txs = transactions().await;
        let req = invite();
        let machine = ClientInvite::new(now(), req.to_bytes(), false, txs.timers);
        let (events_tx, events) = mpsc::channel(EVENTS);
        let tx = ClientInviteTx {
            txs,
            key: ClientKey::new("z9hG4bKclient", "INVITE"),
            machine,
            target: target(),
            request: req,
            via: VIA.into(),
            branch: "z9hG4bKclient".into(),
            events: events_tx,
            cancel_pending: false,
        };
        (tx, events)
    }

    fn status(event: Option<InviteEvent>) -> Option<u16> {
        match event {
            Some(InviteEvent::Response(r)) => Some(r.status),
            _ => None,
        }
    }

    #[test]
    fn responses_are_matched_by_branch_and_cseq_method() {
        let mut resp = response(&invite(), 180);
        assert_eq!(
            client_key(&resp),
            Some(ClientKey::new("z9hG4bKclient", "INVITE"))
        );
        resp.headers.set("CSeq", "4 CANCEL");
        assert_eq!(
            client_key(&resp),
            Some(ClientKey::new("z9hG4bKclient", "CANCEL"))
        );
        resp.headers.remove("Via");
        assert_eq!(client_key(&resp), None);
    }

    #[tokio::test]
    async fn a_failure_is_passed_up_and_acknowledged_by_the_transaction() {
        let (mut tx, _events) = invite_tx().await;
        let _first = tx.machine().poll_transmit();
        let req = tx.request.clone();
        assert_eq!(
            status(tx.on_input(now(), ClientInput::Response(response(&req, 100)))),
            Some(100)
        );
        assert_eq!(
            status(tx.on_input(now(), ClientInput::Response(response(&req, 486)))),
            Some(486)
        );
        let ack = tx.machine().poll_transmit().expect("the ACK of the 486");
        let ack = String::from_utf8_lossy(&ack.payload).into_owned();
        assert!(ack.starts_with("ACK sip:b@192.0.2.9 SIP/2.0\r\n"), "{ack}");
        for line in [
            &format!("Via: {VIA}"),
            "To: <sip:b@192.0.2.9>;tag=peer",
            "CSeq: 4 ACK",
            "Route: <sip:proxy.example.com;lr>",
            "Call-ID: client-test@192.0.2.1",
        ] {
            assert!(
                ack.contains(&format!("{line}\r\n")),
                "{line} missing from\n{ack}"
            );
        }
        // The retransmitted 486 is absorbed, answered with the same ACK.
        assert_eq!(
            status(tx.on_input(now(), ClientInput::Response(response(&req, 486)))),
            None
        );
        assert!(tx.machine().poll_transmit().is_some());
    }

    #[tokio::test]
    async fn a_cancel_waits_for_a_provisional_and_goes_once() {
        let (mut tx, _events) = invite_tx().await;
        let req = tx.request.clone();
        assert!(tx.on_input(now(), ClientInput::Cancel).is_none());
        assert!(
            tx.cancel_due().is_none(),
            "nothing to cancel before a provisional"
        );
        let _ = tx.on_input(now(), ClientInput::Response(response(&req, 180)));
        let cancel = tx.cancel_due().expect("due after the 180");
        assert_eq!(cancel.method, Method::Cancel);
        assert_eq!(cancel.headers.get("Via"), Some(VIA), "the INVITE's branch");
        assert_eq!(cancel.headers.get("CSeq"), Some("4 CANCEL"));
        assert!(tx.cancel_due().is_none(), "once");
    }

    #[tokio::test]
    async fn no_cancel_after_the_final() {
        let (mut tx, _events) = invite_tx().await;
        let req = tx.request.clone();
        let _ = tx.on_input(now(), ClientInput::Response(response(&req, 200)));
        let _ = tx.on_input(now(), ClientInput::Cancel);
        assert_eq!(tx.machine().state(), ClientInviteState::Accepted);
        assert!(tx.cancel_due().is_none());
        // Every 2xx goes up: each one needs the TU's ACK.
        assert_eq!(
            status(tx.on_input(now(), ClientInput::Response(response(&req, 200)))),
            Some(200)
        );
    }

    #[tokio::test]
    async fn invite_events_become_timeouts_and_transport_errors() {
        let (mut tx, _events) = invite_tx().await;
        assert!(matches!(
            tx.on_event(Event::Timeout),
            Some(InviteEvent::Timeout)
        ));
        assert!(matches!(
            tx.on_event(Event::TransportError),
            Some(InviteEvent::TransportError)
        ));
    }

    #[tokio::test]
    async fn a_non_invite_reports_its_first_final_only() {
        let txs = transactions().await;
        let mut bye = invite();
        bye.method = Method::Bye;
        let machine = ClientNonInvite::new(now(), bye.to_bytes(), false, txs.timers);
        let mut tx = ClientNonInviteTx {
            txs,
            key: ClientKey::new("z9hG4bKclient", "BYE"),
            machine,
            outcome: None,
        };
        let resp = |s| ClientInput::Response(response(&bye, s));
        assert!(
            tx.on_input(now(), resp(100)).is_none(),
            "provisionals stay here"
        );
        assert!(matches!(tx.on_input(now(), resp(200)), Some(Ok(r)) if r.status == 200));
        assert!(
            tx.on_input(now(), resp(200)).is_none(),
            "a retransmission is absorbed"
        );
        assert!(!tx.machine().is_terminated(), "Timer K runs over UDP");
        assert!(matches!(
            tx.on_event(Event::TransportError),
            Some(Err(RequestError::Transport(_)))
        ));
        assert!(matches!(
            tx.on_event(Event::Timeout),
            Some(Err(RequestError::Timeout))
        ));
    }

    #[tokio::test]
    async fn a_request_that_cannot_be_sent_fails_and_leaves_the_table() {
        let txs = transactions().await;
        let mut bye = invite();
        bye.method = Method::Bye;
        let key = ClientKey::new("z9hG4bKclient", "BYE");
        // UDP is off in these tests: the first send fails.
        let outcome = txs.start_client_non_invite(key, bye.clone(), target());
        let outcome = tokio::time::timeout(std::time::Duration::from_secs(5), outcome).await;
        assert!(
            matches!(outcome, Ok(Err(RequestError::Transport(_)))),
            "{outcome:?}"
        );
        assert!(!txs.deliver_response(response(&bye, 200), "UDP"));
    }

    #[tokio::test]
    async fn an_invite_that_cannot_be_sent_tells_its_tu() {
        let txs = transactions().await;
        let mut inv =
            txs.start_client_invite(invite(), target(), VIA.into(), "z9hG4bKclient".into());
        let event =
            tokio::time::timeout(std::time::Duration::from_secs(5), inv.events.recv()).await;
        assert!(
            matches!(event, Ok(Some(InviteEvent::TransportError))),
            "{event:?}"
        );
        // The task ended with it: the CANCEL goes nowhere and nothing panics.
        inv.cancel();
    }
}
