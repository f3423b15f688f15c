//! The inbound clock: when to release the next caller packet towards the agent.

use std::time::{Duration, Instant};

/// Most overdue inbound ticks run back to back after a stall; older ones are skipped.
const TICK_BURST: u64 = 3;

/// Steady clock for inbound ticks: slot k is due at `start + k × interval`, computed from
/// the start rather than accumulated, so it never drifts.
#[derive(Debug)]
pub(super) struct Ticker {
    start: Instant,
    interval: Duration,
    next: u64,
    /// Ticks passed over after stalls.
    skipped: u64,
}

impl Ticker {
    /// The first tick is due at `start`.
    pub fn new(start: Instant, interval: Duration) -> Self {
        Self {
            start,
            interval,
            next: 0,
            skipped: 0,
        }
    }

    fn due(&self, slot: u64) -> Instant {
        let slot = u32::try_from(slot).unwrap_or(u32::MAX);
        self.start + self.interval * slot
    }

    pub fn next_due(&self) -> Instant {
        self.due(self.next)
    }

    /// Ticks passed over after stalls (each a 20 ms slot of caller audio never delivered).
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// True when a tick is due at `now`; after a stall at most [`TICK_BURST`] run.
    pub fn poll(&mut self, now: Instant) -> bool {
        if now < self.next_due() {
            return false;
        }
        let elapsed = now.duration_since(self.start).as_nanos();
        let due_count =
            u64::try_from(elapsed / self.interval.as_nanos().max(1) + 1).unwrap_or(u64::MAX);
        if due_count - self.next > TICK_BURST {
            self.skipped += due_count - TICK_BURST - self.next;
            self.next = due_count - TICK_BURST;
        }
        self.next += 1;
        true
    }

    /// Changes the interval from the next tick on.
    pub fn set_interval(&mut self, interval: Duration) {
        if interval != self.interval {
            self.start = self.next_due();
            self.next = 0;
            self.interval = interval;
        }
    }
}
