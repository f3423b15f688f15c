//! RFC 3261 §17 transactions (with RFC 6026's Accepted states) as sans-IO state machines.
//!
//! There is one machine per transaction kind: [`ClientInvite`] (§17.1.1), [`ClientNonInvite`]
//! (§17.1.2), [`ServerInvite`] (§17.2.1) and [`ServerNonInvite`] (§17.2.2). None of them
//! touches a socket, a clock or a runtime: time comes in as an [`Instant`], and what must be
//! sent or told to the transaction user (TU) is polled out. Messages are opaque here: the
//! machines hold already-serialised [`Bytes`] to (re)transmit and learn only status codes,
//! so every timer is testable in virtual time and the module does not depend on the message
//! types. [`key`] builds the matching keys the endpoint uses to find a transaction.
//!
//! # Driving a machine
//!
//! A driver (one small tokio task per transaction, [`crate::sip::driver`]) owns the machine
//! and must keep to this order, as quinn-proto's `Connection` documents for its `poll_*` calls:
//!
//! 1. **Create** the machine. Client machines queue the request for transmission at once.
//! 2. **Feed one input**: a message the endpoint matched to this transaction
//!    (`on_request`, `on_ack`, `on_response`), a TU action (`send_response`), a transport
//!    failure ([`Transaction::transport_error`]), or, when the deadline from step 5 has
//!    passed, [`Transaction::handle_timeout`]. Inputs returning a [`Disposition`] tell the
//!    driver whether to hand the message up to the TU or drop it.
//! 3. **Drain transmissions**: call [`Transaction::poll_transmit`] until it returns `None`
//!    and write each payload to the transport, in order.
//! 4. **Drain events**: call [`Transaction::poll_event`] until `None` and deliver each to
//!    the TU.
//! 5. **Check for the end**: if [`Transaction::is_terminated`], drop the machine (after steps
//!    3 and 4: on reliable transports a machine may queue its last message, such as the ACK
//!    of a non-2xx or a non-INVITE final response, in the same step that terminates it).
//!    Otherwise take [`Transaction::poll_timeout`], sleep until it (resetting the sleep only
//!    when the deadline changed), and go back to step 2.
//!
//! Calling `handle_timeout` early is harmless (nothing is due, nothing happens), and any
//! input that is out of order for the current state is ignored rather than treated as an
//! error; only TU misuse (e.g. two final responses) is reported, as a [`TxError`].
//!
//! # What the TU still owns
//!
//! - The 100 (Trying) of an INVITE server transaction (§17.2.1 asks for it within 200 ms):
//!   the machine cannot build messages, so the TU sends it through `send_response`.
//! - Retransmitting a 2xx to INVITE (RFC 6026 §8.5): through `send_response` again while the
//!   server machine is Accepted.
//! - Giving up on an INVITE client transaction stuck in Proceeding (no timer covers it once
//!   a provisional arrived): the TU sends CANCEL in its own client transaction.
//! - The ACK for a 2xx, which is a transaction of its own (RFC 3261 §13.2.2.4).

/// The [`Transaction`] side of a machine, the same for all four: the machine's `core`
/// holds its timers and outboxes; the machine supplies `on_timer` and a `phase` with a
/// `Terminated` state. Defined before the machines' modules so they see it.
macro_rules! transaction_via_core {
    ($machine:ty) => {
        impl $machine {
            /// Ends the transaction: nothing more is sent, no timer runs.
            fn terminate(&mut self) {
                self.phase = Phase::Terminated;
                self.core.timers.stop_all();
            }
        }

        impl Transaction for $machine {
            fn handle_timeout(&mut self, now: Instant) {
                while let Some(timer) = self.core.timers.pop_expired(now) {
                    self.on_timer(now, timer);
                }
            }

            fn poll_timeout(&self) -> Option<Instant> {
                self.core.timers.next()
            }

            fn poll_transmit(&mut self) -> Option<Transmit> {
                self.core.poll_transmit()
            }

            fn poll_event(&mut self) -> Option<Event> {
                self.core.poll_event()
            }

            fn transport_error(&mut self, _now: Instant) {
                if !self.is_terminated() {
                    self.core.emit(Event::TransportError);
                    self.terminate();
                }
            }

            fn is_terminated(&self) -> bool {
                matches!(self.phase, Phase::Terminated)
            }

            fn retransmissions_absorbed(&self) -> u64 {
                self.core.absorbed
            }
        }
    };
}

mod client_invite;
mod client_non_invite;
pub mod completed;
pub mod key;
mod server_invite;
mod server_non_invite;

pub use client_invite::{ClientInvite, ClientInviteState};
pub use client_non_invite::{ClientNonInvite, ClientNonInviteState};
pub use key::{ClientKey, RequestIds, ServerKey};
pub use server_invite::{ServerInvite, ServerInviteState};
pub use server_non_invite::{ServerNonInvite, ServerNonInviteState};

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::config::TimerSettings;

/// The output side every machine shares, so one generic driver can run any of them.
/// Inputs differ per machine and are inherent methods.
pub trait Transaction {
    /// Runs every timer due at `now`. Timers not yet due are left alone.
    fn handle_timeout(&mut self, now: Instant);
    /// The soonest deadline at which [`Transaction::handle_timeout`] must be called, or
    /// `None` when no timer runs (terminated, or waiting on the TU or the peer only).
    fn poll_timeout(&self) -> Option<Instant>;
    /// The next message to write to the transport.
    fn poll_transmit(&mut self) -> Option<Transmit>;
    /// The next thing the TU must learn.
    fn poll_event(&mut self) -> Option<Event>;
    /// The transport failed to deliver (RFC 3261 §17.1.4, §17.2.4): the TU is told with
    /// [`Event::TransportError`] and the transaction terminates. Ignored once terminated.
    fn transport_error(&mut self, now: Instant);
    /// True once the machine has nothing left to do but be drained and dropped.
    fn is_terminated(&self) -> bool;
    /// How many peer retransmissions this transaction absorbed (whether or not it had a
    /// message to answer them with), for the `absorbed` retransmission metric.
    fn retransmissions_absorbed(&self) -> u64;
}

/// What the TU must learn that is not a message routed to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Timer B (INVITE) or F (non-INVITE) fired: no final response within 64·T1.
    Timeout,
    /// Timer H fired: a non-2xx final response to INVITE was never acknowledged.
    NoAck,
    /// The driver reported a transport failure while the transaction was live.
    TransportError,
}

impl Event {
    /// The response a client TU should act as if it had received (RFC 3261 §8.1.3.1: a
    /// timeout is a 408, a transport error a 503). `None` for server-side events.
    pub fn equivalent_status(self) -> Option<u16> {
        match self {
            Event::Timeout => Some(408),
            Event::TransportError => Some(503),
            Event::NoAck => None,
        }
    }
}

/// Whether a message the endpoint matched to a transaction goes up to the TU.
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// New to the TU: deliver it.
    PassToTu,
    /// A retransmission or a stray: the transaction has dealt with it; drop it.
    Absorb,
}

/// One message to write, and why, so the driver can count first sends and retransmissions
/// apart (`crate::metrics::message_out` versus `crate::metrics::retransmission`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub payload: Bytes,
    pub kind: TransmitKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransmitKind {
    /// The first transmission of this message.
    First,
    /// Resent on our own initiative: a retransmission timer (A, E, G) fired, or the TU
    /// resent a 2xx through an Accepted INVITE server transaction.
    Retransmit,
    /// Resent in answer to a peer retransmission that was absorbed.
    Answer,
}

/// Misuse of a machine by the TU. Never a panic: the machine is left as it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TxError {
    #[error("status {0} is not a SIP response code (100-699)")]
    InvalidStatus(u16),
    #[error("status {0} refused: a final response was already sent")]
    FinalAlreadySent(u16),
    #[error("status {0} refused: the transaction is terminated")]
    Terminated(u16),
}

/// The RFC 3261 timers (Table 4) plus RFC 6026's L and M. Each machine uses a few of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimerKind {
    /// INVITE request retransmission (client, unreliable only).
    A,
    /// INVITE transaction timeout (client).
    B,
    /// Wait time for response retransmissions after a non-2xx (client INVITE).
    D,
    /// Non-INVITE request retransmission (client, unreliable only).
    E,
    /// Non-INVITE transaction timeout (client).
    F,
    /// INVITE non-2xx response retransmission (server, unreliable only).
    G,
    /// Wait time for the ACK of a non-2xx (server INVITE).
    H,
    /// Wait time for ACK retransmissions (server INVITE).
    I,
    /// Wait time for non-INVITE request retransmissions (server).
    J,
    /// Wait time for non-INVITE response retransmissions (client).
    K,
    /// Wait time for INVITE retransmissions after a 2xx (server, RFC 6026).
    L,
    /// Wait time for 2xx retransmissions (client INVITE, RFC 6026).
    M,
}

impl TimerKind {
    const COUNT: usize = 12;
    const ALL: [TimerKind; TimerKind::COUNT] = [
        TimerKind::A,
        TimerKind::B,
        TimerKind::D,
        TimerKind::E,
        TimerKind::F,
        TimerKind::G,
        TimerKind::H,
        TimerKind::I,
        TimerKind::J,
        TimerKind::K,
        TimerKind::L,
        TimerKind::M,
    ];

    fn index(self) -> usize {
        self as usize
    }
}

/// Deadlines indexed by timer, as data: the machine sets and stops slots, the driver only
/// ever sees the soonest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TimerTable {
    slots: [Option<Instant>; TimerKind::COUNT],
}

impl TimerTable {
    pub fn set(&mut self, timer: TimerKind, at: Instant) {
        self.slots[timer.index()] = Some(at);
    }

    pub fn get(&self, timer: TimerKind) -> Option<Instant> {
        self.slots[timer.index()]
    }

    pub fn stop(&mut self, timer: TimerKind) {
        self.slots[timer.index()] = None;
    }

    pub fn stop_all(&mut self) {
        self.slots = [None; TimerKind::COUNT];
    }

    /// The soonest deadline of any running timer.
    pub fn next(&self) -> Option<Instant> {
        self.slots.iter().flatten().min().copied()
    }

    /// Stops and returns the soonest timer due at `now` (ties go to the earlier letter), so a
    /// machine can run its expired timers one at a time, in deadline order.
    pub fn pop_expired(&mut self, now: Instant) -> Option<TimerKind> {
        let (timer, _) = TimerKind::ALL
            .iter()
            .filter_map(|&t| self.get(t).map(|at| (t, at)))
            .filter(|&(_, at)| at <= now)
            .min_by_key(|&(_, at)| at)?;
        self.stop(timer);
        Some(timer)
    }
}

/// How a status code moves a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StatusClass {
    Provisional,
    Success,
    Failure,
}

impl StatusClass {
    fn of(status: u16) -> Option<StatusClass> {
        match status {
            100..=199 => Some(StatusClass::Provisional),
            200..=299 => Some(StatusClass::Success),
            300..=699 => Some(StatusClass::Failure),
            _ => None,
        }
    }
}

/// Floor for retransmission intervals (see [`Core::first_interval`]).
const MIN_RETRANSMIT_INTERVAL: Duration = Duration::from_millis(1);

/// State every machine carries besides its phase: configuration, timers and the outboxes.
#[derive(Debug)]
struct Core {
    reliable: bool,
    settings: TimerSettings,
    timers: TimerTable,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    absorbed: u64,
}

impl Core {
    fn new(reliable: bool, settings: TimerSettings) -> Core {
        Core {
            reliable,
            settings,
            timers: TimerTable::default(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            absorbed: 0,
        }
    }

    fn send(&mut self, payload: Bytes, kind: TransmitKind) {
        self.transmits.push_back(Transmit { payload, kind });
    }

    fn emit(&mut self, event: Event) {
        self.events.push_back(event);
    }

    /// Starts `timer` to fire `after` from `now`. A deadline too far to represent never
    /// fires, rather than overflowing.
    fn arm(&mut self, timer: TimerKind, now: Instant, after: Duration) {
        match now.checked_add(after) {
            Some(at) => self.timers.set(timer, at),
            None => self.timers.stop(timer),
        }
    }

    /// 64·T1: Timers B, F, H, J (unreliable), L and M.
    fn t1_x64(&self) -> Duration {
        self.settings.t1.saturating_mul(64)
    }

    /// The first retransmission interval (Timers A, E, G): T1, but never zero, so a
    /// hand-built zero T1 cannot make `handle_timeout` re-arm at `now` forever.
    fn first_interval(&self) -> Duration {
        self.settings.t1.max(MIN_RETRANSMIT_INTERVAL)
    }

    /// The next retransmission interval after `current`: doubled, capped at T2 when `capped`
    /// (Timers E and G; Timer A is not capped), and never zero.
    fn backoff(&self, current: Duration, capped: bool) -> Duration {
        let doubled = current.saturating_mul(2);
        let next = if capped {
            doubled.min(self.settings.t2)
        } else {
            doubled
        };
        next.max(MIN_RETRANSMIT_INTERVAL)
    }

    /// Timer A, E or G fired: `payload` again, and the timer re-armed at the next
    /// interval (doubled, capped at T2 when `capped`), which `interval` keeps.
    fn retransmit(
        &mut self,
        timer: TimerKind,
        now: Instant,
        payload: &Bytes,
        interval: &mut Duration,
        capped: bool,
    ) {
        *interval = self.backoff(*interval, capped);
        self.send(payload.clone(), TransmitKind::Retransmit);
        self.arm(timer, now, *interval);
    }

    fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }
}

#[cfg(test)]
mod testutil {
    //! Virtual-time helpers shared by the machines' tests.

    use super::*;

    pub const T1: Duration = Duration::from_millis(500);
    pub const T2: Duration = Duration::from_secs(4);
    pub const T4: Duration = Duration::from_secs(5);

    pub fn timers() -> TimerSettings {
        TimerSettings {
            t1: T1,
            t2: T2,
            t4: T4,
        }
    }

    pub fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    pub fn msg(text: &'static str) -> Bytes {
        Bytes::from_static(text.as_bytes())
    }

    /// Everything a machine did, stamped with its offset from the start of the test.
    #[derive(Debug, Default)]
    pub struct Trace {
        pub sends: Vec<(Duration, TransmitKind, Bytes)>,
        pub events: Vec<(Duration, Event)>,
        pub terminated_at: Option<Duration>,
    }

    impl Trace {
        /// Offsets of transmissions of the given kind.
        pub fn times(&self, kind: TransmitKind) -> Vec<Duration> {
            self.sends
                .iter()
                .filter(|(_, k, _)| *k == kind)
                .map(|(at, _, _)| *at)
                .collect()
        }
    }

    /// A virtual clock wrapped around one machine: steps `now` to `poll_timeout()`, calls
    /// `handle_timeout`, and records everything polled out.
    pub struct Harness<T> {
        pub tx: T,
        pub start: Instant,
        pub now: Instant,
        pub trace: Trace,
    }

    impl<T: Transaction> Harness<T> {
        pub fn new(start: Instant, tx: T) -> Self {
            let mut h = Harness {
                tx,
                start,
                now: start,
                trace: Trace::default(),
            };
            h.drain();
            h
        }

        pub fn elapsed(&self) -> Duration {
            self.now - self.start
        }

        /// Moves the clock forward by `d` without running timers (input arrives then).
        pub fn wait(&mut self, d: Duration) {
            self.now += d;
        }

        /// Moves the clock to an offset from the start without running timers.
        pub fn at(&mut self, offset: Duration) {
            assert!(self.start + offset >= self.now, "time runs forward");
            self.now = self.start + offset;
        }

        /// Polls everything out into the trace.
        pub fn drain(&mut self) {
            let at = self.elapsed();
            while let Some(t) = self.tx.poll_transmit() {
                self.trace.sends.push((at, t.kind, t.payload));
            }
            while let Some(e) = self.tx.poll_event() {
                self.trace.events.push((at, e));
            }
            if self.tx.is_terminated() && self.trace.terminated_at.is_none() {
                self.trace.terminated_at = Some(at);
            }
        }

        /// Runs the next timer deadline, if any. Returns false when none is set.
        pub fn step(&mut self) -> bool {
            let Some(deadline) = self.tx.poll_timeout() else {
                return false;
            };
            assert!(deadline >= self.now, "deadline in the past");
            self.now = deadline;
            self.tx.handle_timeout(self.now);
            self.drain();
            true
        }

        /// Runs timers until the deadline passes `offset` (exclusive) or none is left.
        pub fn run_until(&mut self, offset: Duration) {
            while let Some(deadline) = self.tx.poll_timeout() {
                if deadline >= self.start + offset {
                    break;
                }
                self.step();
            }
            self.at(offset);
        }

        /// Runs timers until the machine has none left.
        pub fn run(&mut self) {
            let mut guard = 0;
            while self.step() {
                guard += 1;
                assert!(guard < 1000, "timers never settle");
            }
        }
    }

    /// `n·T1` for each n, for readable expected schedules.
    pub fn t1s(multiples: &[u32]) -> Vec<Duration> {
        multiples.iter().map(|&n| T1 * n).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timer_table_gives_soonest_and_pops_in_deadline_order() {
        let now = Instant::now();
        let mut table = TimerTable::default();
        assert_eq!(table.next(), None);
        table.set(TimerKind::H, now + Duration::from_secs(32));
        table.set(TimerKind::G, now + Duration::from_millis(500));
        table.set(TimerKind::A, now + Duration::from_secs(40));
        assert_eq!(table.next(), Some(now + Duration::from_millis(500)));

        assert_eq!(table.pop_expired(now), None, "nothing due yet");
        let late = now + Duration::from_secs(33);
        assert_eq!(table.pop_expired(late), Some(TimerKind::G));
        assert_eq!(table.pop_expired(late), Some(TimerKind::H));
        assert_eq!(table.pop_expired(late), None, "A is not due");
        assert_eq!(table.next(), Some(now + Duration::from_secs(40)));
        table.stop_all();
        assert_eq!(table.next(), None);
    }

    #[test]
    fn ties_go_to_the_earlier_letter() {
        let now = Instant::now();
        let mut table = TimerTable::default();
        table.set(TimerKind::B, now);
        table.set(TimerKind::A, now);
        assert_eq!(table.pop_expired(now), Some(TimerKind::A));
        assert_eq!(table.pop_expired(now), Some(TimerKind::B));
    }

    #[test]
    fn unrepresentable_deadline_never_fires() {
        let now = Instant::now();
        let mut core = Core::new(false, TimerSettings::default());
        core.arm(TimerKind::B, now, Duration::MAX);
        assert_eq!(core.timers.next(), None);
    }

    #[test]
    fn zero_timer_settings_cannot_spin() {
        let start = Instant::now();
        let zero = TimerSettings {
            t1: Duration::ZERO,
            t2: Duration::ZERO,
            t4: Duration::ZERO,
        };
        let mut tx = ClientNonInvite::new(start, Bytes::from_static(b"R"), false, zero);
        // F is due at once (64·0); E is floored to 1 ms and so cannot loop at `now`.
        tx.handle_timeout(start);
        assert!(tx.is_terminated());
        assert_eq!(tx.poll_event(), Some(Event::Timeout));
    }

    #[test]
    fn status_classes() {
        assert_eq!(StatusClass::of(99), None);
        assert_eq!(StatusClass::of(100), Some(StatusClass::Provisional));
        assert_eq!(StatusClass::of(299), Some(StatusClass::Success));
        assert_eq!(StatusClass::of(699), Some(StatusClass::Failure));
        assert_eq!(StatusClass::of(700), None);
    }

    #[test]
    fn events_map_to_client_statuses() {
        assert_eq!(Event::Timeout.equivalent_status(), Some(408));
        assert_eq!(Event::TransportError.equivalent_status(), Some(503));
        assert_eq!(Event::NoAck.equivalent_status(), None);
    }
}
