//! The non-INVITE server transaction: RFC 3261 §17.2.2.
//!
//! ```text
//!            request (created)
//!                  │
//!            ┌─────▼────┐ retransmission: absorbed silently
//!            │  Trying  │
//!            └──┬────┬──┘
//!     1xx: send │    │ 200-699: send
//!       ┌───────▼──┐ │ retransmission: resend last 1xx
//!       │Proceeding├─┤
//!       └──────────┘ │ 200-699: send
//!            ┌───────▼───┐ retransmission: resend final
//!            │ Completed │ Timer J (64·T1 unreliable, at once reliable)
//!            └─────┬─────┘
//!                  ▼
//!             Terminated
//! ```

use std::mem;
use std::time::Instant;

use bytes::Bytes;

use super::{Core, Disposition, Event, StatusClass, TimerKind, Transaction, Transmit};
use super::{TransmitKind, TxError};
use crate::config::TimerSettings;

/// The states of [`ServerNonInvite`], named as in the RFC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerNonInviteState {
    /// Waiting for the TU's first response.
    Trying,
    /// Sent a provisional; waiting for the final response.
    Proceeding,
    /// Sent the final response; answering request retransmissions until Timer J.
    Completed,
    Terminated,
}

#[derive(Debug)]
enum Phase {
    Trying,
    Proceeding { last_provisional: Bytes },
    Completed { response: Bytes },
    Terminated,
}

/// One non-INVITE server transaction. See [`crate::sip::transaction`] for the driver's
/// call order.
#[derive(Debug)]
pub struct ServerNonInvite {
    phase: Phase,
    core: Core,
}

impl ServerNonInvite {
    /// A transaction for a request just received. No timer runs until the final response.
    /// `now` is taken for symmetry with the client machines.
    pub fn new(_now: Instant, reliable: bool, timers: TimerSettings) -> ServerNonInvite {
        ServerNonInvite {
            phase: Phase::Trying,
            core: Core::new(reliable, timers),
        }
    }

    pub fn state(&self) -> ServerNonInviteState {
        match self.phase {
            Phase::Trying => ServerNonInviteState::Trying,
            Phase::Proceeding { .. } => ServerNonInviteState::Proceeding,
            Phase::Completed { .. } => ServerNonInviteState::Completed,
            Phase::Terminated => ServerNonInviteState::Terminated,
        }
    }

    /// In Completed over an unreliable transport: the final response and when Timer J
    /// fires. All the transaction still does is resend that response until then, which
    /// the endpoint can do without the machine (see [`super::completed`]).
    pub fn completed(&self) -> Option<(Bytes, Instant)> {
        match &self.phase {
            Phase::Completed { response } => Some((response.clone(), self.poll_timeout()?)),
            _ => None,
        }
    }

    /// A retransmission of the request arrived. Always absorbed; in Proceeding and Completed
    /// the last response is sent again, in Trying there is nothing to send yet.
    pub fn on_request(&mut self, _now: Instant) -> Disposition {
        self.core.absorbed += 1;
        let answer = match &self.phase {
            Phase::Proceeding {
                last_provisional: response,
            }
            | Phase::Completed { response } => Some(response.clone()),
            Phase::Trying | Phase::Terminated => None,
        };
        if let Some(response) = answer {
            self.core.send(response, TransmitKind::Answer);
        }
        Disposition::Absorb
    }

    /// The TU sends a response: any number of provisionals, then one final. A response
    /// after the final is refused with a [`TxError`] and changes nothing.
    pub fn send_response(
        &mut self,
        now: Instant,
        status: u16,
        response: Bytes,
    ) -> Result<(), TxError> {
        let class = StatusClass::of(status).ok_or(TxError::InvalidStatus(status))?;
        let phase = mem::replace(&mut self.phase, Phase::Terminated);
        let (next, result) = match phase {
            Phase::Trying | Phase::Proceeding { .. } => {
                self.core.send(response.clone(), TransmitKind::First);
                if class == StatusClass::Provisional {
                    let last_provisional = response;
                    (Phase::Proceeding { last_provisional }, Ok(()))
                } else if self.core.reliable {
                    // Timer J is zero: no request retransmissions to wait for.
                    self.core.timers.stop_all();
                    (Phase::Terminated, Ok(()))
                } else {
                    self.core.arm(TimerKind::J, now, self.core.t1_x64());
                    (Phase::Completed { response }, Ok(()))
                }
            }
            Phase::Completed { .. } => (phase, Err(TxError::FinalAlreadySent(status))),
            Phase::Terminated => (phase, Err(TxError::Terminated(status))),
        };
        self.phase = next;
        result
    }

    fn on_timer(&mut self, _now: Instant, timer: TimerKind) {
        if let (TimerKind::J, Phase::Completed { .. }) = (timer, &self.phase) {
            self.terminate();
        }
    }
}

transaction_via_core!(ServerNonInvite);

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;

    fn server(reliable: bool) -> Harness<ServerNonInvite> {
        let start = Instant::now();
        Harness::new(start, ServerNonInvite::new(start, reliable, timers()))
    }

    impl Harness<ServerNonInvite> {
        fn respond(&mut self, status: u16, text: &'static str) {
            self.tx.send_response(self.now, status, msg(text)).unwrap();
            self.drain();
        }
        fn retransmitted_request(&mut self) -> Disposition {
            let d = self.tx.on_request(self.now);
            self.drain();
            d
        }
    }

    #[test]
    fn retransmission_in_trying_is_absorbed_silently() {
        let mut h = server(false);
        assert_eq!(h.retransmitted_request(), Disposition::Absorb);
        assert_eq!(h.tx.state(), ServerNonInviteState::Trying);
        assert!(h.trace.sends.is_empty());
        assert_eq!(h.tx.poll_timeout(), None);
        assert_eq!(h.tx.retransmissions_absorbed(), 1);
    }

    #[test]
    fn retransmission_in_proceeding_resends_last_provisional() {
        let mut h = server(false);
        h.respond(100, "100");
        h.respond(183, "183");
        assert_eq!(h.tx.state(), ServerNonInviteState::Proceeding);
        h.wait(T1);
        assert_eq!(h.retransmitted_request(), Disposition::Absorb);
        assert_eq!(
            h.trace.sends.last(),
            Some(&(T1, TransmitKind::Answer, msg("183")))
        );
    }

    #[test]
    fn timer_j_holds_completed_for_64_t1_unreliable() {
        let mut h = server(false);
        h.respond(100, "100");
        h.respond(200, "200");
        assert_eq!(h.tx.state(), ServerNonInviteState::Completed);
        assert_eq!(h.tx.poll_timeout(), Some(h.start + T1 * 64));
        h.wait(T1 * 10);
        assert_eq!(h.retransmitted_request(), Disposition::Absorb);
        assert_eq!(h.retransmitted_request(), Disposition::Absorb);
        h.run();
        assert_eq!(
            h.trace.sends,
            vec![
                (ms(0), TransmitKind::First, msg("100")),
                (ms(0), TransmitKind::First, msg("200")),
                (T1 * 10, TransmitKind::Answer, msg("200")),
                (T1 * 10, TransmitKind::Answer, msg("200")),
            ],
            "no timer-driven retransmission on the server side"
        );
        assert_eq!(h.trace.terminated_at, Some(T1 * 64));
        assert!(h.trace.events.is_empty());
    }

    #[test]
    fn timer_j_is_zero_reliable_but_the_final_still_goes_out() {
        let mut h = server(true);
        h.respond(404, "404");
        assert_eq!(h.tx.state(), ServerNonInviteState::Terminated);
        assert_eq!(h.tx.poll_timeout(), None);
        assert_eq!(
            h.trace.sends,
            vec![(ms(0), TransmitKind::First, msg("404"))]
        );
        assert_eq!(h.trace.terminated_at, Some(ms(0)));
    }

    #[test]
    fn misuse_is_refused_and_changes_nothing() {
        let mut h = server(false);
        let now = h.now;
        assert_eq!(
            h.tx.send_response(now, 42, msg("x")),
            Err(TxError::InvalidStatus(42))
        );
        assert_eq!(h.tx.state(), ServerNonInviteState::Trying);
        h.respond(200, "200");
        assert_eq!(
            h.tx.send_response(now, 100, msg("x")),
            Err(TxError::FinalAlreadySent(100))
        );
        assert_eq!(
            h.tx.send_response(now, 500, msg("x")),
            Err(TxError::FinalAlreadySent(500))
        );
        assert_eq!(h.tx.state(), ServerNonInviteState::Completed);
        h.drain();
        assert_eq!(h.trace.sends.len(), 1);
        h.run();
        assert_eq!(
            h.tx.send_response(h.now, 500, msg("x")),
            Err(TxError::Terminated(500))
        );
    }

    #[test]
    fn early_timeout_and_late_input_are_ignored() {
        let mut h = server(false);
        h.respond(200, "200");
        h.tx.handle_timeout(h.now + T1);
        assert_eq!(h.tx.state(), ServerNonInviteState::Completed);
        h.run();
        assert_eq!(h.retransmitted_request(), Disposition::Absorb);
        assert_eq!(h.trace.sends.len(), 1, "nothing resent once terminated");
    }

    #[test]
    fn transport_error_terminates_once() {
        let mut h = server(false);
        h.respond(180, "180");
        h.tx.transport_error(h.now);
        h.tx.transport_error(h.now);
        h.drain();
        assert_eq!(h.trace.events, vec![(ms(0), Event::TransportError)]);
        assert!(h.tx.is_terminated());
    }
}
