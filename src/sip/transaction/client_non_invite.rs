//! The non-INVITE client transaction: RFC 3261 §17.1.2.
//!
//! ```text
//!              request sent (created)
//!                     │
//!               ┌─────▼────┐ Timer E (unreliable): resend, doubling up to T2
//!               │  Trying  │ Timer F: Timeout → Terminated
//!               └──┬────┬──┘
//!             1xx  │    │
//!       ┌──────────▼┐   │ 200-699: pass up
//!       │ Proceeding│   │
//!       └─────┬─────┘   │     Timer E: resend every T2; Timer F: Timeout
//!   200-699   │         │
//!            ┌▼─────────▼┐ final again: absorbed
//!            │ Completed │ Timer K (T4 unreliable, at once reliable)
//!            └─────┬─────┘
//!                  ▼
//!             Terminated
//! ```

use std::mem;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::TransmitKind;
use super::{Core, Disposition, Event, StatusClass, TimerKind, Transaction, Transmit};
use crate::config::TimerSettings;

/// The states of [`ClientNonInvite`], named as in the RFC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientNonInviteState {
    /// Request sent; waiting for any response.
    Trying,
    /// A provisional arrived; waiting for the final response, still retransmitting.
    Proceeding,
    /// The final response arrived; absorbing its retransmissions until Timer K.
    Completed,
    Terminated,
}

#[derive(Debug)]
enum Phase {
    Trying {
        request: Bytes,
        /// The wait before the next Timer E retransmission.
        retransmit_interval: Duration,
    },
    /// Timer E keeps running here, every T2 (§17.1.2.2).
    Proceeding {
        request: Bytes,
    },
    Completed,
    Terminated,
}

/// One non-INVITE client transaction. See [`crate::sip::transaction`] for the driver's call
/// order.
#[derive(Debug)]
pub struct ClientNonInvite {
    phase: Phase,
    core: Core,
}

impl ClientNonInvite {
    /// Starts the transaction: `request` is queued for transmission at once, Timer E (on
    /// unreliable transports) and Timer F start now.
    pub fn new(now: Instant, request: Bytes, reliable: bool, timers: TimerSettings) -> Self {
        let mut core = Core::new(reliable, timers);
        core.send(request.clone(), TransmitKind::First);
        let retransmit_interval = core.first_interval();
        if !reliable {
            core.arm(TimerKind::E, now, retransmit_interval);
        }
        core.arm(TimerKind::F, now, core.t1_x64());
        ClientNonInvite {
            phase: Phase::Trying {
                request,
                retransmit_interval,
            },
            core,
        }
    }

    pub fn state(&self) -> ClientNonInviteState {
        match self.phase {
            Phase::Trying { .. } => ClientNonInviteState::Trying,
            Phase::Proceeding { .. } => ClientNonInviteState::Proceeding,
            Phase::Completed => ClientNonInviteState::Completed,
            Phase::Terminated => ClientNonInviteState::Terminated,
        }
    }

    /// A response matched this transaction. Provisionals and the first final go up to the
    /// TU; retransmitted finals are absorbed. A 1xx after the final, or a status outside
    /// 100-699, is ignored and absorbed.
    pub fn on_response(&mut self, now: Instant, status: u16) -> Disposition {
        let Some(class) = StatusClass::of(status) else {
            return Disposition::Absorb;
        };
        let phase = mem::replace(&mut self.phase, Phase::Terminated);
        let (next, disposition) = match (phase, class) {
            (Phase::Trying { request, .. }, StatusClass::Provisional) => {
                // The pending Timer E keeps its deadline; later ones use T2.
                (Phase::Proceeding { request }, Disposition::PassToTu)
            }
            (phase @ Phase::Proceeding { .. }, StatusClass::Provisional) => {
                (phase, Disposition::PassToTu)
            }
            (Phase::Trying { .. } | Phase::Proceeding { .. }, _) => {
                self.core.timers.stop_all();
                if self.core.reliable {
                    // Timer K is zero: no response retransmissions to wait for.
                    (Phase::Terminated, Disposition::PassToTu)
                } else {
                    self.core.arm(TimerKind::K, now, self.core.settings.t4);
                    (Phase::Completed, Disposition::PassToTu)
                }
            }
            (Phase::Completed, StatusClass::Success | StatusClass::Failure) => {
                self.core.absorbed += 1;
                (Phase::Completed, Disposition::Absorb)
            }
            (phase, _) => (phase, Disposition::Absorb),
        };
        self.phase = next;
        disposition
    }

    fn on_timer(&mut self, now: Instant, timer: TimerKind) {
        match (timer, &mut self.phase) {
            (
                TimerKind::E,
                Phase::Trying {
                    request,
                    retransmit_interval,
                },
            ) => {
                self.core
                    .retransmit(TimerKind::E, now, request, retransmit_interval, true);
            }
            (TimerKind::E, Phase::Proceeding { request }) => {
                let request = request.clone();
                self.core.send(request, TransmitKind::Retransmit);
                self.core.arm(TimerKind::E, now, self.core.settings.t2);
            }
            (TimerKind::F, Phase::Trying { .. } | Phase::Proceeding { .. }) => {
                self.core.emit(Event::Timeout);
                self.terminate();
            }
            (TimerKind::K, Phase::Completed) => self.terminate(),
            // Transitions stop the timers of the state they leave; ignore any stray.
            _ => {}
        }
    }
}

transaction_via_core!(ClientNonInvite);

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    fn client(reliable: bool) -> Harness<ClientNonInvite> {
        let start = Instant::now();
        Harness::new(
            start,
            ClientNonInvite::new(start, msg("OPTIONS"), reliable, timers()),
        )
    }

    impl Harness<ClientNonInvite> {
        fn response(&mut self, status: u16) -> Disposition {
            let d = self.tx.on_response(self.now, status);
            self.drain();
            d
        }
    }

    #[test]
    fn timer_e_doubles_capped_at_t2_and_timer_f_times_out_unreliable() {
        let mut h = client(false);
        h.run();
        // T1, +2·T1, +4·T1, then +T2 (= 8·T1) until F at 64·T1.
        assert_eq!(
            h.trace.times(TransmitKind::Retransmit),
            t1s(&[1, 3, 7, 15, 23, 31, 39, 47, 55, 63])
        );
        assert!(h.trace.sends.iter().all(|(_, _, b)| *b == msg("OPTIONS")));
        assert_eq!(h.trace.events, vec![(T1 * 64, Event::Timeout)]);
        assert_eq!(h.trace.terminated_at, Some(T1 * 64));
    }

    #[test]
    fn timer_f_without_retransmissions_reliable() {
        let mut h = client(true);
        assert_eq!(h.tx.poll_timeout(), Some(h.start + T1 * 64), "only F runs");
        h.run();
        assert_eq!(h.trace.sends.len(), 1);
        assert_eq!(h.trace.events, vec![(T1 * 64, Event::Timeout)]);
    }

    #[test]
    fn timer_e_continues_at_t2_in_proceeding_until_timer_f() {
        let mut h = client(false);
        h.run_until(T1 * 2); // retransmission at T1; next E due at 3·T1
        assert_eq!(h.response(100), Disposition::PassToTu);
        assert_eq!(h.tx.state(), ClientNonInviteState::Proceeding);
        assert_eq!(
            h.tx.poll_timeout(),
            Some(h.start + T1 * 3),
            "E keeps its deadline"
        );
        assert_eq!(h.response(183), Disposition::PassToTu);
        h.run();
        // 3·T1, then every T2 (8·T1): 11, 19, ..., 59; 67 would pass F.
        assert_eq!(
            h.trace.times(TransmitKind::Retransmit),
            t1s(&[1, 3, 11, 19, 27, 35, 43, 51, 59])
        );
        assert_eq!(h.trace.events, vec![(T1 * 64, Event::Timeout)]);
    }

    #[test]
    fn final_stops_e_and_f_and_timer_k_absorbs_retransmissions_unreliable() {
        let mut h = client(false);
        h.run_until(T1 * 2);
        assert_eq!(h.response(200), Disposition::PassToTu);
        assert_eq!(h.tx.state(), ClientNonInviteState::Completed);
        assert_eq!(h.tx.poll_timeout(), Some(h.now + T4));
        h.wait(ms(100));
        assert_eq!(h.response(200), Disposition::Absorb);
        assert_eq!(h.response(180), Disposition::Absorb, "1xx after the final");
        h.run();
        assert_eq!(h.trace.times(TransmitKind::Retransmit), t1s(&[1]));
        assert!(
            h.trace.times(TransmitKind::Answer).is_empty(),
            "no ACK here"
        );
        assert!(h.trace.events.is_empty());
        assert_eq!(h.trace.terminated_at, Some(T1 * 2 + T4));
        assert_eq!(h.tx.retransmissions_absorbed(), 1);
    }

    #[test]
    fn final_terminates_at_once_reliable() {
        let mut h = client(true);
        h.wait(ms(30));
        assert_eq!(h.response(100), Disposition::PassToTu);
        assert_eq!(h.tx.poll_timeout(), Some(h.start + T1 * 64), "F still runs");
        assert_eq!(h.response(481), Disposition::PassToTu);
        assert_eq!(h.tx.state(), ClientNonInviteState::Terminated);
        assert_eq!(h.tx.poll_timeout(), None, "Timer K is zero");
        assert_eq!(h.response(481), Disposition::Absorb);
    }

    #[test]
    fn out_of_order_input_is_ignored() {
        let mut h = client(false);
        assert_eq!(h.response(0), Disposition::Absorb);
        h.tx.handle_timeout(h.now + ms(499));
        h.drain();
        assert_eq!(h.trace.sends.len(), 1, "E not due yet");
        assert_eq!(h.tx.state(), ClientNonInviteState::Trying);
    }

    #[test]
    fn transport_error_terminates_once() {
        let mut h = client(false);
        h.tx.transport_error(h.now);
        h.tx.transport_error(h.now);
        h.drain();
        assert_eq!(h.trace.events, vec![(ms(0), Event::TransportError)]);
        assert!(h.tx.is_terminated());
        assert_eq!(h.tx.poll_timeout(), None);
    }
}
