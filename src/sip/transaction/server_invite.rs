//! The INVITE server transaction: RFC 3261 §17.2.1 as updated by RFC 6026 §8.
//!
//! ```text
//!              INVITE (created)
//!                    │
//!              ┌─────▼──────┐ 1xx from TU: send; INVITE retransmission: resend last 1xx
//!              │ Proceeding │
//!              └──┬──────┬──┘
//!  2xx from TU:   │      │  300-699 from TU: send
//!  send, Timer L  │      │  Timer G (unreliable), Timer H
//!         ┌───────▼┐    ┌▼──────────┐ Timer G: resend;  INVITE retransmission: resend
//!         │Accepted│    │ Completed │ Timer H: NoAck → Terminated
//!         └───┬────┘    └─────┬─────┘
//!   Timer L   │       ACK     │  Timer I (T4 unreliable, at once reliable)
//!             │         ┌─────▼─────┐
//!             │         │ Confirmed │──Timer I──┐
//!             │         └───────────┘           │
//!             └──────────► Terminated ◄─────────┘
//! ```
//!
//! In Accepted, INVITE retransmissions are absorbed without an answer (the TU retransmits
//! its 2xx itself, through [`ServerInvite::send_response`]) and ACKs go up to the TU.

use std::mem;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{Core, Disposition, Event, StatusClass, TimerKind, Transaction, Transmit};
use super::{TransmitKind, TxError};
use crate::config::TimerSettings;

/// The states of [`ServerInvite`], named as in the RFC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerInviteState {
    /// Waiting for the TU's final response.
    Proceeding,
    /// Sent a 2xx; waiting out INVITE retransmissions and passing ACKs up (RFC 6026).
    Accepted,
    /// Sent a 300-699; waiting for its ACK.
    Completed,
    /// ACK received; absorbing its retransmissions.
    Confirmed,
    Terminated,
}

/// A phase and the data only it needs.
#[derive(Debug)]
enum Phase {
    Proceeding {
        /// Answer to INVITE retransmissions, once the TU has sent a provisional.
        last_provisional: Option<Bytes>,
    },
    Accepted,
    Completed {
        response: Bytes,
        /// The wait before the next Timer G retransmission.
        retransmit_interval: Duration,
    },
    Confirmed,
    Terminated,
}

/// One INVITE server transaction. See the module docs of [`crate::sip::transaction`] for
/// the order in which a driver calls it.
#[derive(Debug)]
pub struct ServerInvite {
    phase: Phase,
    core: Core,
}

impl ServerInvite {
    /// A transaction for an INVITE just received. No timer runs until the TU answers; the TU
    /// should send 100 (Trying) at once (§17.2.1). `now` is taken for symmetry with the
    /// client machines.
    pub fn new(_now: Instant, reliable: bool, timers: TimerSettings) -> ServerInvite {
        ServerInvite {
            phase: Phase::Proceeding {
                last_provisional: None,
            },
            core: Core::new(reliable, timers),
        }
    }

    pub fn state(&self) -> ServerInviteState {
        match self.phase {
            Phase::Proceeding { .. } => ServerInviteState::Proceeding,
            Phase::Accepted => ServerInviteState::Accepted,
            Phase::Completed { .. } => ServerInviteState::Completed,
            Phase::Confirmed => ServerInviteState::Confirmed,
            Phase::Terminated => ServerInviteState::Terminated,
        }
    }

    /// A retransmission of the INVITE arrived. Always absorbed; in Proceeding (once a
    /// provisional went out) and Completed the last response is sent again.
    pub fn on_request(&mut self, _now: Instant) -> Disposition {
        self.core.absorbed += 1;
        let answer = match &self.phase {
            Phase::Proceeding {
                last_provisional: Some(response),
            }
            | Phase::Completed { response, .. } => Some(response.clone()),
            _ => None,
        };
        if let Some(response) = answer {
            self.core.send(response, TransmitKind::Answer);
        }
        Disposition::Absorb
    }

    /// The TU sends a response. In Proceeding any status is accepted; in Accepted only
    /// further 2xx (the TU's own retransmissions, RFC 6026 §8.5). Anything else is refused
    /// with a [`TxError`] and changes nothing.
    pub fn send_response(
        &mut self,
        now: Instant,
        status: u16,
        response: Bytes,
    ) -> Result<(), TxError> {
        let class = StatusClass::of(status).ok_or(TxError::InvalidStatus(status))?;
        let phase = mem::replace(&mut self.phase, Phase::Terminated);
        let (next, result) = match (phase, class) {
            (Phase::Proceeding { .. }, StatusClass::Provisional) => {
                self.core.send(response.clone(), TransmitKind::First);
                let last_provisional = Some(response);
                (Phase::Proceeding { last_provisional }, Ok(()))
            }
            (Phase::Proceeding { .. }, StatusClass::Success) => {
                self.core.send(response, TransmitKind::First);
                self.core.arm(TimerKind::L, now, self.core.t1_x64());
                (Phase::Accepted, Ok(()))
            }
            (Phase::Proceeding { .. }, StatusClass::Failure) => {
                self.core.send(response.clone(), TransmitKind::First);
                let retransmit_interval = self.core.first_interval();
                if !self.core.reliable {
                    self.core.arm(TimerKind::G, now, retransmit_interval);
                }
                self.core.arm(TimerKind::H, now, self.core.t1_x64());
                let completed = Phase::Completed {
                    response,
                    retransmit_interval,
                };
                (completed, Ok(()))
            }
            (Phase::Accepted, StatusClass::Success) => {
                self.core.send(response, TransmitKind::Retransmit);
                (Phase::Accepted, Ok(()))
            }
            (Phase::Terminated, _) => (Phase::Terminated, Err(TxError::Terminated(status))),
            (phase, _) => (phase, Err(TxError::FinalAlreadySent(status))),
        };
        self.phase = next;
        result
    }

    /// An ACK matched this transaction. In Completed it confirms the non-2xx (and is
    /// absorbed); in Accepted it is the ACK for the 2xx and goes up to the TU (RFC 6026
    /// §8.7). In Confirmed it is a retransmission. Before any final response it is out of
    /// order and ignored.
    pub fn on_ack(&mut self, now: Instant) -> Disposition {
        match self.phase {
            Phase::Completed { .. } => {
                self.core.timers.stop(TimerKind::G);
                self.core.timers.stop(TimerKind::H);
                if self.core.reliable {
                    self.terminate();
                } else {
                    self.core.arm(TimerKind::I, now, self.core.settings.t4);
                    self.phase = Phase::Confirmed;
                }
                Disposition::Absorb
            }
            Phase::Accepted => Disposition::PassToTu,
            Phase::Confirmed => {
                self.core.absorbed += 1;
                Disposition::Absorb
            }
            Phase::Proceeding { .. } | Phase::Terminated => Disposition::Absorb,
        }
    }

    fn on_timer(&mut self, now: Instant, timer: TimerKind) {
        match (timer, &mut self.phase) {
            (
                TimerKind::G,
                Phase::Completed {
                    response,
                    retransmit_interval,
                },
            ) => {
                self.core
                    .retransmit(TimerKind::G, now, response, retransmit_interval, true);
            }
            (TimerKind::H, Phase::Completed { .. }) => {
                self.core.emit(Event::NoAck);
                self.terminate();
            }
            (TimerKind::I, Phase::Confirmed) | (TimerKind::L, Phase::Accepted) => {
                self.terminate();
            }
            // A timer left over from another state cannot be set (transitions stop them);
            // ignore it rather than fail.
            _ => {}
        }
    }
}

transaction_via_core!(ServerInvite);

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    fn server(reliable: bool) -> Harness<ServerInvite> {
        let start = Instant::now();
        Harness::new(start, ServerInvite::new(start, reliable, timers()))
    }

    impl Harness<ServerInvite> {
        fn respond(&mut self, status: u16, text: &'static str) {
            self.tx.send_response(self.now, status, msg(text)).unwrap();
            self.drain();
        }
        fn retransmitted_invite(&mut self) -> Disposition {
            let d = self.tx.on_request(self.now);
            self.drain();
            d
        }
        fn ack(&mut self) -> Disposition {
            let d = self.tx.on_ack(self.now);
            self.drain();
            d
        }
    }

    #[test]
    fn invite_retransmission_before_any_response_is_absorbed_silently() {
        let mut h = server(false);
        assert_eq!(h.tx.poll_timeout(), None, "no timer before the TU answers");
        assert_eq!(h.retransmitted_invite(), Disposition::Absorb);
        assert!(h.trace.sends.is_empty());
        assert_eq!(h.tx.retransmissions_absorbed(), 1);
    }

    #[test]
    fn invite_retransmission_in_proceeding_resends_last_provisional() {
        let mut h = server(false);
        h.respond(100, "100");
        h.respond(180, "180");
        h.wait(T1);
        assert_eq!(h.retransmitted_invite(), Disposition::Absorb);
        assert_eq!(h.tx.state(), ServerInviteState::Proceeding);
        let answers: Vec<_> = h
            .trace
            .sends
            .iter()
            .map(|(_, k, b)| (*k, b.clone()))
            .collect();
        assert_eq!(
            answers,
            vec![
                (TransmitKind::First, msg("100")),
                (TransmitKind::First, msg("180")),
                (TransmitKind::Answer, msg("180")),
            ]
        );
        assert_eq!(h.tx.poll_timeout(), None, "provisionals start no timer");
    }

    #[test]
    fn timer_g_doubles_to_t2_until_timer_h_gives_up_unreliable() {
        let mut h = server(false);
        h.respond(486, "486");
        assert_eq!(h.tx.state(), ServerInviteState::Completed);
        h.run();
        // T1, then +2·T1, +4·T1, then +T2 (= 8·T1) until H at 64·T1.
        assert_eq!(
            h.trace.times(TransmitKind::Retransmit),
            t1s(&[1, 3, 7, 15, 23, 31, 39, 47, 55, 63])
        );
        assert!(h.trace.sends.iter().all(|(_, _, b)| *b == msg("486")));
        assert_eq!(h.trace.events, vec![(T1 * 64, Event::NoAck)]);
        assert_eq!(h.trace.terminated_at, Some(T1 * 64));
        assert_eq!(h.tx.state(), ServerInviteState::Terminated);
        assert_eq!(h.tx.poll_timeout(), None);
    }

    #[test]
    fn timer_h_without_retransmissions_reliable() {
        let mut h = server(true);
        h.respond(503, "503");
        assert_eq!(h.tx.poll_timeout(), Some(h.start + T1 * 64), "only H runs");
        h.run();
        assert!(h.trace.times(TransmitKind::Retransmit).is_empty());
        assert_eq!(h.trace.events, vec![(T1 * 64, Event::NoAck)]);
        assert_eq!(h.trace.terminated_at, Some(T1 * 64));
    }

    #[test]
    fn invite_retransmission_in_completed_resends_final() {
        let mut h = server(true);
        h.respond(180, "180");
        h.respond(404, "404");
        h.wait(ms(100));
        assert_eq!(h.retransmitted_invite(), Disposition::Absorb);
        assert_eq!(h.retransmitted_invite(), Disposition::Absorb);
        assert_eq!(
            h.trace.sends.last(),
            Some(&(ms(100), TransmitKind::Answer, msg("404")))
        );
        assert_eq!(h.trace.times(TransmitKind::Answer).len(), 2);
        assert_eq!(h.tx.retransmissions_absorbed(), 2);
    }

    #[test]
    fn ack_confirms_and_timer_i_runs_t4_unreliable() {
        let mut h = server(false);
        h.respond(486, "486");
        h.run_until(T1 * 4); // G fired at T1 and 3·T1
        assert_eq!(h.ack(), Disposition::Absorb);
        assert_eq!(h.tx.state(), ServerInviteState::Confirmed);
        assert_eq!(
            h.tx.poll_timeout(),
            Some(h.now + T4),
            "G and H stopped, I armed"
        );
        // ACK retransmissions are absorbed quietly; INVITE retransmissions too.
        h.wait(ms(200));
        assert_eq!(h.ack(), Disposition::Absorb);
        assert_eq!(h.retransmitted_invite(), Disposition::Absorb);
        h.run();
        assert_eq!(h.trace.times(TransmitKind::Retransmit), t1s(&[1, 3]));
        assert!(h.trace.times(TransmitKind::Answer).is_empty());
        assert!(h.trace.events.is_empty(), "no NoAck after an ACK");
        assert_eq!(h.trace.terminated_at, Some(T1 * 4 + T4));
        assert_eq!(h.tx.retransmissions_absorbed(), 2);
    }

    #[test]
    fn ack_terminates_at_once_reliable() {
        let mut h = server(true);
        h.respond(486, "486");
        h.wait(ms(50));
        assert_eq!(h.ack(), Disposition::Absorb);
        assert_eq!(h.tx.state(), ServerInviteState::Terminated);
        assert_eq!(h.tx.poll_timeout(), None, "Timer I is zero");
        assert!(h.trace.events.is_empty());
    }

    #[test]
    fn accepted_absorbs_invites_passes_acks_and_timer_l_ends_it() {
        for reliable in [false, true] {
            let mut h = server(reliable);
            h.respond(180, "180");
            h.respond(200, "200");
            assert_eq!(h.tx.state(), ServerInviteState::Accepted);
            assert_eq!(h.tx.poll_timeout(), Some(h.start + T1 * 64));

            h.wait(T1);
            // The TU retransmits its 2xx itself; the machine only forwards it.
            h.respond(200, "200");
            assert_eq!(h.retransmitted_invite(), Disposition::Absorb);
            assert_eq!(h.ack(), Disposition::PassToTu, "RFC 6026: ACK goes up");
            assert_eq!(h.ack(), Disposition::PassToTu);
            assert_eq!(h.tx.state(), ServerInviteState::Accepted);
            h.run();

            assert_eq!(
                h.trace.sends,
                vec![
                    (ms(0), TransmitKind::First, msg("180")),
                    (ms(0), TransmitKind::First, msg("200")),
                    (T1, TransmitKind::Retransmit, msg("200")),
                ],
                "INVITE retransmissions in Accepted get no answer (reliable={reliable})"
            );
            assert!(h.trace.events.is_empty());
            assert_eq!(h.trace.terminated_at, Some(T1 * 64));
            assert_eq!(h.tx.retransmissions_absorbed(), 1);
        }
    }

    #[test]
    fn misuse_is_refused_and_changes_nothing() {
        let mut h = server(false);
        let now = h.now;
        assert_eq!(
            h.tx.send_response(now, 99, msg("x")),
            Err(TxError::InvalidStatus(99))
        );
        assert_eq!(
            h.tx.send_response(now, 700, msg("x")),
            Err(TxError::InvalidStatus(700))
        );
        h.respond(486, "486");
        let deadline = h.tx.poll_timeout();
        for status in [180, 200, 500] {
            assert_eq!(
                h.tx.send_response(now, status, msg("x")),
                Err(TxError::FinalAlreadySent(status))
            );
        }
        assert_eq!(h.tx.state(), ServerInviteState::Completed);
        assert_eq!(h.tx.poll_timeout(), deadline);
        h.drain();
        assert_eq!(h.trace.sends.len(), 1);

        let mut h = server(false);
        h.respond(200, "200");
        assert_eq!(
            h.tx.send_response(now, 486, msg("x")),
            Err(TxError::FinalAlreadySent(486))
        );
        assert_eq!(
            h.tx.send_response(now, 183, msg("x")),
            Err(TxError::FinalAlreadySent(183))
        );
        h.run();
        assert_eq!(
            h.tx.send_response(h.now, 200, msg("x")),
            Err(TxError::Terminated(200))
        );
    }

    #[test]
    fn out_of_order_input_is_ignored() {
        let mut h = server(false);
        assert_eq!(h.ack(), Disposition::Absorb, "ACK before any response");
        assert_eq!(h.tx.state(), ServerInviteState::Proceeding);
        h.respond(486, "486");
        h.tx.handle_timeout(h.now + ms(1)); // not due yet
        h.drain();
        assert_eq!(h.trace.sends.len(), 1);
        assert_eq!(h.tx.poll_timeout(), Some(h.start + T1));
        h.run();
        assert_eq!(h.ack(), Disposition::Absorb, "ACK after termination");
        h.tx.handle_timeout(h.now + T1 * 1000);
        assert_eq!(h.tx.state(), ServerInviteState::Terminated);
    }

    #[test]
    fn transport_error_terminates_once() {
        let mut h = server(false);
        h.respond(486, "486");
        h.tx.transport_error(h.now);
        h.tx.transport_error(h.now);
        h.drain();
        assert_eq!(h.trace.events, vec![(ms(0), Event::TransportError)]);
        assert!(h.tx.is_terminated());
        assert_eq!(h.tx.poll_timeout(), None);
    }
}
