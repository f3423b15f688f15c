//! The INVITE client transaction: RFC 3261 §17.1.1 as updated by RFC 6026 §8.
//!
//! ```text
//!                INVITE sent (created)
//!                      │
//!                ┌─────▼────┐ Timer A (unreliable): resend, doubling
//!                │  Calling │ Timer B: Timeout → Terminated
//!                └─┬──┬──┬──┘
//!             1xx  │  │  │
//!       ┌──────────▼┐ │  │  1xx: pass up
//!       │ Proceeding│ │  │
//!       └──┬──────┬─┘ │  │
//!     2xx  │      │   │  │ 300-699: send ACK, pass up
//!      ┌───▼──────┴───▼┐ └─────────────► ┌───────────┐ 300-699 again: resend ACK
//!      │   Accepted    │                 │ Completed │ Timer D (32 s unreliable,
//!      └───────┬───────┘                 └─────┬─────┘   at once reliable)
//!   2xx: pass up; Timer M                      │
//!              └────────► Terminated ◄─────────┘
//! ```
//!
//! In Accepted every 2xx goes up to the TU (RFC 6026 §8.4): each may come from a different
//! fork, and retransmissions are the TU's cue to resend its ACK.

use std::mem;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::TransmitKind;
use super::{Core, Disposition, Event, StatusClass, TimerKind, Transaction, Transmit};
use crate::config::TimerSettings;

/// Timer D on unreliable transports. RFC 3261 Table 4 asks for at least 32 s, enough to
/// outlast a server's Timer H at the default T1.
const TIMER_D: Duration = Duration::from_secs(32);

/// The states of [`ClientInvite`], named as in the RFC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientInviteState {
    /// INVITE sent; waiting for any response.
    Calling,
    /// A provisional arrived; waiting for the final response. No timer runs here.
    Proceeding,
    /// A 2xx arrived; passing further 2xx up until Timer M.
    Accepted,
    /// A 300-699 arrived and was ACKed; absorbing its retransmissions until Timer D.
    Completed,
    Terminated,
}

#[derive(Debug)]
enum Phase {
    Calling {
        request: Bytes,
        /// The wait before the next Timer A retransmission.
        retransmit_interval: Duration,
    },
    Proceeding,
    Accepted,
    Completed {
        /// Resent for every retransmission of the final response.
        ack: Bytes,
    },
    Terminated,
}

/// One INVITE client transaction. See [`crate::sip::transaction`] for the driver's call
/// order.
#[derive(Debug)]
pub struct ClientInvite {
    phase: Phase,
    core: Core,
}

impl ClientInvite {
    /// Starts the transaction: `request` is queued for transmission at once, Timer A (on
    /// unreliable transports) and Timer B start now.
    pub fn new(now: Instant, request: Bytes, reliable: bool, timers: TimerSettings) -> Self {
        let mut core = Core::new(reliable, timers);
        core.send(request.clone(), TransmitKind::First);
        let retransmit_interval = core.first_interval();
        if !reliable {
            core.arm(TimerKind::A, now, retransmit_interval);
        }
        core.arm(TimerKind::B, now, core.t1_x64());
        ClientInvite {
            phase: Phase::Calling {
                request,
                retransmit_interval,
            },
            core,
        }
    }

    pub fn state(&self) -> ClientInviteState {
        match self.phase {
            Phase::Calling { .. } => ClientInviteState::Calling,
            Phase::Proceeding => ClientInviteState::Proceeding,
            Phase::Accepted => ClientInviteState::Accepted,
            Phase::Completed { .. } => ClientInviteState::Completed,
            Phase::Terminated => ClientInviteState::Terminated,
        }
    }

    /// Whether a CANCEL may be sent now: only once a provisional has arrived and no final
    /// has (RFC 3261 §9.1). Before that the TU must wait; after, there is nothing to cancel.
    pub fn can_cancel(&self) -> bool {
        matches!(self.phase, Phase::Proceeding)
    }

    /// A response matched this transaction. `make_ack` builds the ACK for a non-2xx final
    /// (same branch as the INVITE, the response's To tag; §17.1.1.3); it is called at most
    /// once, on the first non-2xx, and that ACK is resent for each retransmission of it.
    ///
    /// Out-of-order responses (a 1xx after a final, a 2xx after a non-2xx or the reverse, a
    /// status outside 100-699) are ignored and absorbed.
    pub fn on_response(
        &mut self,
        now: Instant,
        status: u16,
        make_ack: impl FnOnce() -> Bytes,
    ) -> Disposition {
        let Some(class) = StatusClass::of(status) else {
            return Disposition::Absorb;
        };
        let phase = mem::replace(&mut self.phase, Phase::Terminated);
        let (next, disposition) = match (phase, class) {
            (Phase::Calling { .. } | Phase::Proceeding, StatusClass::Provisional) => {
                // §17.1.1.2: no more retransmissions, and Timer B covers Calling only.
                self.core.timers.stop(TimerKind::A);
                self.core.timers.stop(TimerKind::B);
                (Phase::Proceeding, Disposition::PassToTu)
            }
            (Phase::Calling { .. } | Phase::Proceeding, StatusClass::Success) => {
                self.core.timers.stop_all();
                self.core.arm(TimerKind::M, now, self.core.t1_x64());
                (Phase::Accepted, Disposition::PassToTu)
            }
            (Phase::Calling { .. } | Phase::Proceeding, StatusClass::Failure) => {
                self.core.timers.stop_all();
                let ack = make_ack();
                self.core.send(ack.clone(), TransmitKind::First);
                if self.core.reliable {
                    // Timer D is zero: no response retransmissions to wait for.
                    (Phase::Terminated, Disposition::PassToTu)
                } else {
                    self.core.arm(TimerKind::D, now, TIMER_D);
                    (Phase::Completed { ack }, Disposition::PassToTu)
                }
            }
            (Phase::Accepted, StatusClass::Success) => (Phase::Accepted, Disposition::PassToTu),
            (Phase::Completed { ack }, StatusClass::Failure) => {
                self.core.absorbed += 1;
                self.core.send(ack.clone(), TransmitKind::Answer);
                (Phase::Completed { ack }, Disposition::Absorb)
            }
            (phase, _) => (phase, Disposition::Absorb),
        };
        self.phase = next;
        disposition
    }

    fn on_timer(&mut self, now: Instant, timer: TimerKind) {
        match (timer, &mut self.phase) {
            (
                TimerKind::A,
                Phase::Calling {
                    request,
                    retransmit_interval,
                },
            ) => {
                self.core
                    .retransmit(TimerKind::A, now, request, retransmit_interval, false);
            }
            (TimerKind::B, Phase::Calling { .. }) => {
                self.core.emit(Event::Timeout);
                self.terminate();
            }
            (TimerKind::D, Phase::Completed { .. }) | (TimerKind::M, Phase::Accepted) => {
                self.terminate();
            }
            // Transitions stop the timers of the state they leave; ignore any stray.
            _ => {}
        }
    }
}

transaction_via_core!(ClientInvite);

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;
    use std::cell::Cell;

    fn client(reliable: bool) -> Harness<ClientInvite> {
        let start = Instant::now();
        Harness::new(
            start,
            ClientInvite::new(start, msg("INVITE"), reliable, timers()),
        )
    }

    impl Harness<ClientInvite> {
        /// Feeds a response; counts how often the ACK builder ran.
        fn response(&mut self, status: u16, acks_built: &Cell<u32>) -> Disposition {
            let d = self.tx.on_response(self.now, status, || {
                acks_built.set(acks_built.get() + 1);
                msg("ACK")
            });
            self.drain();
            d
        }
    }

    #[test]
    fn timer_a_doubles_without_cap_and_timer_b_times_out_unreliable() {
        let mut h = client(false);
        assert_eq!(
            h.trace.sends,
            vec![(ms(0), TransmitKind::First, msg("INVITE"))]
        );
        h.run();
        assert_eq!(
            h.trace.times(TransmitKind::Retransmit),
            t1s(&[1, 3, 7, 15, 31, 63]),
            "A is not capped by T2"
        );
        assert_eq!(h.trace.events, vec![(T1 * 64, Event::Timeout)]);
        assert_eq!(h.trace.terminated_at, Some(T1 * 64));
        assert_eq!(h.tx.state(), ClientInviteState::Terminated);
    }

    #[test]
    fn timer_b_without_retransmissions_reliable() {
        let mut h = client(true);
        assert_eq!(h.tx.poll_timeout(), Some(h.start + T1 * 64), "only B runs");
        h.run();
        assert_eq!(h.trace.sends.len(), 1);
        assert_eq!(h.trace.events, vec![(T1 * 64, Event::Timeout)]);
    }

    #[test]
    fn timers_follow_the_configured_t1() {
        let start = Instant::now();
        let settings = TimerSettings {
            t1: ms(100),
            ..timers()
        };
        let mut h = Harness::new(start, ClientInvite::new(start, msg("I"), false, settings));
        h.run();
        let expected: Vec<_> = [1, 3, 7, 15, 31, 63].iter().map(|n| ms(100) * *n).collect();
        assert_eq!(h.trace.times(TransmitKind::Retransmit), expected);
        assert_eq!(h.trace.events, vec![(ms(6400), Event::Timeout)]);
    }

    #[test]
    fn provisional_stops_a_and_b_and_allows_cancel() {
        let acks = Cell::new(0);
        let mut h = client(false);
        assert!(!h.tx.can_cancel(), "no CANCEL before a provisional");
        h.run_until(T1 * 2); // one retransmission at T1
        assert_eq!(h.response(180, &acks), Disposition::PassToTu);
        assert_eq!(h.tx.state(), ClientInviteState::Proceeding);
        assert!(h.tx.can_cancel());
        assert_eq!(h.tx.poll_timeout(), None, "no timer in Proceeding");
        assert_eq!(h.response(183, &acks), Disposition::PassToTu);
        assert_eq!(h.trace.times(TransmitKind::Retransmit), t1s(&[1]));
    }

    #[test]
    fn non_2xx_is_acked_once_per_final_and_timer_d_runs_32s_unreliable() {
        let acks = Cell::new(0);
        let mut h = client(false);
        h.wait(ms(200));
        assert_eq!(h.response(100, &acks), Disposition::PassToTu);
        h.wait(ms(300));
        assert_eq!(h.response(486, &acks), Disposition::PassToTu);
        assert_eq!(h.tx.state(), ClientInviteState::Completed);
        assert!(!h.tx.can_cancel());
        assert_eq!(h.tx.poll_timeout(), Some(h.now + Duration::from_secs(32)));

        // The server's Timer G resends its final; each copy is answered with the same ACK.
        h.wait(T1);
        assert_eq!(h.response(486, &acks), Disposition::Absorb);
        h.wait(T1 * 2);
        assert_eq!(h.response(486, &acks), Disposition::Absorb);
        h.run();

        assert_eq!(acks.get(), 1, "the ACK is built once");
        assert_eq!(
            h.trace.sends,
            vec![
                (ms(0), TransmitKind::First, msg("INVITE")),
                (ms(500), TransmitKind::First, msg("ACK")),
                (ms(1000), TransmitKind::Answer, msg("ACK")),
                (ms(2000), TransmitKind::Answer, msg("ACK")),
            ],
            "no INVITE retransmission once a response arrived before Timer A"
        );
        assert_eq!(h.tx.retransmissions_absorbed(), 2);
        assert_eq!(
            h.trace.terminated_at,
            Some(ms(500) + Duration::from_secs(32))
        );
        assert!(h.trace.events.is_empty());
    }

    #[test]
    fn non_2xx_is_acked_and_timer_d_is_zero_reliable() {
        let acks = Cell::new(0);
        let mut h = client(true);
        h.wait(ms(40));
        assert_eq!(h.response(603, &acks), Disposition::PassToTu);
        assert_eq!(h.tx.state(), ClientInviteState::Terminated);
        assert_eq!(h.tx.poll_timeout(), None);
        assert_eq!(
            h.trace.sends.last(),
            Some(&(ms(40), TransmitKind::First, msg("ACK")))
        );
        assert_eq!(acks.get(), 1);
    }

    #[test]
    fn every_2xx_passes_up_in_accepted_until_timer_m() {
        for reliable in [false, true] {
            let acks = Cell::new(0);
            let mut h = client(reliable);
            h.wait(ms(100));
            assert_eq!(h.response(180, &acks), Disposition::PassToTu);
            h.wait(ms(100));
            assert_eq!(h.response(200, &acks), Disposition::PassToTu);
            assert_eq!(h.tx.state(), ClientInviteState::Accepted);
            assert_eq!(h.tx.poll_timeout(), Some(h.now + T1 * 64));
            h.wait(T1);
            assert_eq!(
                h.response(200, &acks),
                Disposition::PassToTu,
                "retransmission"
            );
            assert_eq!(
                h.response(202, &acks),
                Disposition::PassToTu,
                "another fork"
            );
            h.run();
            assert_eq!(acks.get(), 0, "the TU ACKs a 2xx itself");
            assert_eq!(h.trace.sends.len(), 1, "reliable={reliable}");
            assert!(h.trace.events.is_empty());
            assert_eq!(h.trace.terminated_at, Some(ms(200) + T1 * 64));
        }
    }

    #[test]
    fn out_of_order_responses_are_absorbed() {
        let acks = Cell::new(0);
        let mut h = client(false);
        assert_eq!(h.response(99, &acks), Disposition::Absorb);
        assert_eq!(h.response(700, &acks), Disposition::Absorb);
        assert_eq!(h.tx.state(), ClientInviteState::Calling);
        h.tx.handle_timeout(h.now + ms(499)); // not due
        h.drain();
        assert_eq!(h.trace.sends.len(), 1);

        assert_eq!(h.response(200, &acks), Disposition::PassToTu);
        assert_eq!(h.response(180, &acks), Disposition::Absorb, "1xx after 2xx");
        assert_eq!(
            h.response(486, &acks),
            Disposition::Absorb,
            "non-2xx after 2xx"
        );
        assert_eq!(h.tx.state(), ClientInviteState::Accepted);

        let mut h = client(false);
        assert_eq!(h.response(404, &acks), Disposition::PassToTu);
        assert_eq!(
            h.response(180, &acks),
            Disposition::Absorb,
            "1xx after final"
        );
        assert_eq!(
            h.response(200, &acks),
            Disposition::Absorb,
            "2xx after non-2xx"
        );
        assert_eq!(h.tx.state(), ClientInviteState::Completed);
        h.run();
        assert_eq!(h.response(404, &acks), Disposition::Absorb, "after the end");
        assert_eq!(h.trace.times(TransmitKind::Answer).len(), 0);
    }

    #[test]
    fn transport_error_terminates_once() {
        let mut h = client(false);
        h.tx.transport_error(h.now);
        h.tx.transport_error(h.now);
        h.drain();
        assert_eq!(h.trace.events, vec![(ms(0), Event::TransportError)]);
        assert_eq!(h.tx.poll_timeout(), None);
        assert!(h.tx.is_terminated());
    }
}
