//! The transaction driver: the one tokio loop that runs any of the four sans-IO machines of
//! [`crate::sip::transaction`], and the tables through which the endpoint finds the live
//! ones.
//!
//! Every live transaction is one task running [`drive`] over its machine. The loop keeps
//! the call order the machines document: write what [`Transaction::poll_transmit`] gives to
//! the transport (a failed write is the machine's `transport_error`), hand what
//! [`Transaction::poll_event`] gives to the transaction user (TU), stop once the machine is
//! terminated, else sleep until [`Transaction::poll_timeout`] (the sleep is reset only when
//! that deadline changes) while waiting for the next input from the task's channel.
//!
//! What differs between the kinds is small and lives in an [`Adapter`] per kind: which
//! inputs the machine takes and what the TU learns ([`server`] for both server machines,
//! [`client`] for both client machines), plus a hook after each round for bookkeeping
//! (in-flight accounting, a held CANCEL, the hand-off of a finished non-INVITE).

pub mod client;
pub mod server;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use tokio::sync::{mpsc, Notify};
use tracing::debug;

use crate::config::TimerSettings;
use crate::metrics;
use crate::sip::message::Response;
use crate::sip::transaction::completed::{CompletedTable, Finished};
use crate::sip::transaction::{ClientKey, Event, ServerKey, Transaction, TransmitKind};
use crate::sip::transport::{Target, Transports};
use crate::sync::lock;

pub use client::{ClientInput, InviteEvent, OutgoingInvite, RequestError};
pub use server::{ServerInput, ServerTxHandle};

/// Whether a transaction's task goes on after a round of transmissions and events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Run,
    /// The task may end before its machine terminates: what is left of the transaction
    /// was handed to someone else.
    End,
}

/// What one kind of transaction adds to the loop in [`drive`]. Every method but
/// [`Adapter::report`] is synchronous, so tests call them directly, without the loop.
pub trait Adapter: Send + 'static {
    type Machine: Transaction + Send;
    /// What the endpoint or the TU can tell the transaction.
    type Input: Send + 'static;
    /// What the TU learns from the transaction.
    type Report: Send;
    /// The `kind` label of the live-transactions gauge.
    const KIND: &'static str;

    fn machine(&mut self) -> &mut Self::Machine;
    /// Feeds one input to the machine at `now`: what the TU must learn from it, if anything.
    fn on_input(&mut self, now: std::time::Instant, input: Self::Input) -> Option<Self::Report>;
    /// What the TU must learn from a machine event, if anything.
    fn on_event(&mut self, event: Event) -> Option<Self::Report>;
    /// Runs after each round of transmissions and events, before the end is checked.
    fn settle(&mut self, now: std::time::Instant) -> Next;
    /// Tells the TU. May wait for the TU to make room.
    fn report(&mut self, report: Self::Report) -> impl Future<Output = ()> + Send;
}

/// Runs one transaction to its end: until its machine terminates, its adapter hands it
/// off, or its input channel closes. Its messages go to `target`.
pub async fn drive<A: Adapter>(
    mut adapter: A,
    mut inputs: mpsc::Receiver<A::Input>,
    transports: Transports,
    target: Target,
) {
    let _live = LiveGauge::new(A::KIND);
    let transport = target.kind.as_str();
    let timer = tokio::time::sleep_until(tokio::time::Instant::now());
    tokio::pin!(timer);
    // The deadline the timer is set to; `None` while it is not.
    let mut armed = None;
    loop {
        while let Some(transmit) = adapter.machine().poll_transmit() {
            if transmit.kind == TransmitKind::Retransmit {
                metrics::retransmission("sent", transport);
            }
            if let Err(err) = transports.send(target, transmit.payload).await {
                debug!(%err, kind = A::KIND, "transaction message not sent");
                adapter.machine().transport_error(now());
            }
        }
        while let Some(event) = adapter.machine().poll_event() {
            if let Some(report) = adapter.on_event(event) {
                adapter.report(report).await;
            }
        }
        if adapter.settle(now()) == Next::End || adapter.machine().is_terminated() {
            break;
        }
        let deadline = adapter.machine().poll_timeout();
        if deadline != armed {
            armed = deadline;
            if let Some(at) = deadline {
                timer.as_mut().reset(tokio::time::Instant::from_std(at));
            }
        }
        tokio::select! {
            input = inputs.recv() => {
                let Some(input) = input else { break };
                if let Some(report) = adapter.on_input(now(), input) {
                    adapter.report(report).await;
                }
            }
            () = &mut timer, if armed.is_some() => {
                // A fired timer is set again even for the same deadline.
                armed = None;
                adapter.machine().handle_timeout(now());
            }
        }
    }
}

/// Now, from tokio's clock (which tests may pause), as the machines take it.
fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

/// Counts a task in the live-transactions gauge for as long as it exists.
struct LiveGauge(&'static str);

impl LiveGauge {
    fn new(kind: &'static str) -> LiveGauge {
        metrics::transactions_live(kind, 1.0);
        LiveGauge(kind)
    }
}

impl Drop for LiveGauge {
    fn drop(&mut self) {
        metrics::transactions_live(self.0, -1.0);
    }
}

/// The live transactions, by key, and what their tasks share with the endpoint. The maps
/// are on the signalling path only, and no lock is held across `.await`.
pub struct Transactions {
    transports: Transports,
    timers: TimerSettings,
    server: Mutex<HashMap<ServerKey, mpsc::Sender<ServerInput>>>,
    client: Mutex<HashMap<ClientKey, mpsc::Sender<ClientInput>>>,
    /// Finished non-INVITE transactions over UDP, waiting out Timer J without a task.
    completed: Mutex<CompletedTable>,
    /// Transactions that must finish before a graceful shutdown may exit: those still
    /// waiting for the TU's final response or for the ACK of a non-2xx final.
    in_flight: AtomicUsize,
    in_flight_changed: Notify,
}

impl Transactions {
    pub fn new(transports: Transports, timers: TimerSettings) -> Transactions {
        Transactions {
            transports,
            timers,
            server: Mutex::new(HashMap::new()),
            client: Mutex::new(HashMap::new()),
            completed: Mutex::new(CompletedTable::default()),
            in_flight: AtomicUsize::new(0),
            in_flight_changed: Notify::new(),
        }
    }

    pub fn transports(&self) -> &Transports {
        &self.transports
    }

    /// Number of transactions a graceful shutdown waits for.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Resolves once no transaction is in flight.
    pub async fn wait_idle(&self) {
        loop {
            let changed = self.in_flight_changed.notified();
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
    pub fn live_server(&self) -> usize {
        lock(&self.server).len()
    }

    /// Hands `input` to the live server transaction `key`, if there is one. Never waits: a
    /// task whose queue is full is already flooded with retransmissions, and one more can be
    /// dropped (and counted).
    pub fn deliver(&self, key: &ServerKey, input: ServerInput, transport: &'static str) -> bool {
        let Some(tx) = lock(&self.server).get(key).cloned() else {
            return false;
        };
        if tx.try_send(input).is_err() {
            metrics::drop("transaction_busy", transport);
        }
        true
    }

    /// Hands a response to the client transaction it matches, if there is one (see
    /// [`Transactions::deliver`] on a full queue).
    pub fn deliver_response(&self, resp: Response, transport: &'static str) -> bool {
        let Some(key) = client::client_key(&resp) else {
            return false;
        };
        let Some(tx) = lock(&self.client).get(&key).cloned() else {
            return false;
        };
        if tx.try_send(ClientInput::Response(resp)).is_err() {
            metrics::drop("transaction_busy", transport);
        }
        true
    }

    /// The response of a finished non-INVITE transaction `key`, for its retransmission.
    pub fn finished(&self, key: &ServerKey, now: std::time::Instant) -> Option<Finished> {
        lock(&self.completed).get(key, now)
    }

    fn remove_server(&self, key: &ServerKey) {
        lock(&self.server).remove(key);
    }

    fn remove_client(&self, key: &ClientKey) {
        lock(&self.client).remove(key);
    }

    /// Counts one transaction in or out of [`Transactions::in_flight`].
    fn count_in_flight(&self, busy: bool) {
        if busy {
            self.in_flight.fetch_add(1, Ordering::AcqRel);
        } else {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            self.in_flight_changed.notify_waiters();
        }
    }
}

#[cfg(test)]
pub(crate) mod testutil {
    //! Settings and transactions for the SIP stack's unit tests.

    use super::*;
    use crate::config::Settings;
    use std::sync::Arc;

    /// The default configuration with no HTTP listener, no SIP listener but those `sip`
    /// enables (`DIALTONE__SIP__UDP` and the like), and the other `sip` overrides.
    pub fn settings(sip: &[(&str, &str)]) -> Settings {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/default.toml");
        let off = [
            ("DIALTONE__SIP__UDP", ""),
            ("DIALTONE__SIP__TCP", ""),
            ("DIALTONE__HTTP__LISTEN", ""),
        ];
        let env = off
            .iter()
            .chain(sip)
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::load_with_env(&path, Some(env)).unwrap()
    }

    /// Transactions over transports that are all disabled: every send fails at once, which
    /// is all the adapter and driver tests need from a network.
    pub async fn transactions() -> Arc<Transactions> {
        let settings = settings(&[]);
        let (inbound, _) = mpsc::channel(1);
        let (_, shutdown) = tokio::sync::watch::channel(false);
        let transports = Transports::start(&settings, inbound, shutdown)
            .await
            .unwrap();
        Arc::new(Transactions::new(transports, settings.sip.timers))
    }
}
