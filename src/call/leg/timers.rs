//! The leg's timers as data: one optional deadline per kind, as quinn's `TimerTable` does.
//! The driver sleeps until [`Timers::next`]; the leg asks [`Timers::expired`] which ran out.

use std::time::Instant;

/// Every timer a leg runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Timer {
    /// Resend our 2xx to an INVITE (unreliable transports only): T1, doubling to T2
    /// (RFC 3261 §13.3.1.4).
    Resend2xx,
    /// Give up on the ACK of our 2xx after 64·T1 and end the call.
    AckWait,
    /// The call's maximum duration, from the moment media runs.
    MaxDuration,
    /// Outbound: how long the far end may ring before we CANCEL.
    Ring,
    /// How long the media session may take to stop (so the agent hears `stop`) before
    /// the call ends without it.
    MediaStop,
}

impl Timer {
    const ALL: [Timer; 5] = [
        Timer::Resend2xx,
        Timer::AckWait,
        Timer::MaxDuration,
        Timer::Ring,
        Timer::MediaStop,
    ];
}

#[derive(Debug, Default)]
pub(super) struct Timers([Option<Instant>; Timer::ALL.len()]);

impl Timers {
    pub(super) fn set(&mut self, timer: Timer, at: Instant) {
        self.0[timer as usize] = Some(at);
    }

    pub(super) fn clear(&mut self, timer: Timer) {
        self.0[timer as usize] = None;
    }

    /// The soonest deadline, if any timer runs.
    pub(super) fn next(&self) -> Option<Instant> {
        self.0.iter().flatten().min().copied()
    }

    /// The earliest timer due at `now`, cleared; call until `None`.
    pub(super) fn expired(&mut self, now: Instant) -> Option<Timer> {
        let (timer, _) = Timer::ALL
            .into_iter()
            .filter_map(|t| self.0[t as usize].map(|at| (t, at)))
            .filter(|&(_, at)| at <= now)
            .min_by_key(|&(_, at)| at)?;
        self.clear(timer);
        Some(timer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn expire_in_deadline_order_and_only_when_due() {
        let t0 = Instant::now();
        let mut timers = Timers::default();
        assert_eq!(timers.next(), None);
        timers.set(Timer::MaxDuration, t0 + Duration::from_secs(10));
        timers.set(Timer::Resend2xx, t0 + Duration::from_secs(2));
        timers.set(Timer::AckWait, t0 + Duration::from_secs(1));
        assert_eq!(timers.next(), Some(t0 + Duration::from_secs(1)));
        assert_eq!(timers.expired(t0), None);
        let later = t0 + Duration::from_secs(5);
        assert_eq!(timers.expired(later), Some(Timer::AckWait));
        assert_eq!(timers.expired(later), Some(Timer::Resend2xx));
        assert_eq!(timers.expired(later), None);
        assert_eq!(timers.next(), Some(t0 + Duration::from_secs(10)));
        timers.clear(Timer::MaxDuration);
        assert_eq!(timers.next(), None);
    }
}
