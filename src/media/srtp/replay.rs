//! Packet index bookkeeping for one direction: the RFC 3711 §3.3.1 / Appendix A estimate
//! of a packet's 48-bit index from its 16-bit sequence number, and the 64-packet replay
//! window (§3.3.2). Kept per SSRC in a small fixed table, so no packet allocates.

/// Packets remembered behind the highest index (RFC 3711 §3.3.2 asks for at least 64).
pub const WINDOW: u64 = 64;

/// Sources tracked per direction. A call has one, sometimes two (early media then the
/// answer, or a re-INVITE that changes SSRC); four leaves room and keeps lookups trivial.
const STREAMS: usize = 4;

/// The highest index seen from one source and which of the 64 below it were seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    highest: u64,
    /// Bit k set: index `highest - k` was accepted. Zero for a stream not yet accepted.
    seen: u64,
}

impl Window {
    /// A window whose first packet will be `index`.
    pub fn starting_at(index: u64) -> Self {
        Window {
            highest: index,
            seen: 0,
        }
    }

    #[cfg(test)]
    pub fn highest(&self) -> u64 {
        self.highest
    }

    /// The index of an SRTP packet with sequence number `seq`: the candidate closest to
    /// the highest index so far (RFC 3711 Appendix A). `None` for a packet from before
    /// index 0 (a guessed roll-over counter of -1), which can only be a stale packet.
    pub fn estimate(&self, seq: u16) -> Option<u64> {
        let roc = self.highest >> 16;
        let s_l = (self.highest & 0xffff) as i64;
        let seq_i = i64::from(seq);
        let v = if s_l < 32768 {
            if seq_i - s_l > 32768 {
                roc.checked_sub(1)?
            } else {
                roc
            }
        } else if s_l - 32768 > seq_i {
            roc + 1
        } else {
            roc
        };
        Some((v << 16) | u64::from(seq))
    }

    /// Whether `index` may still be accepted (new, or inside the window and unseen).
    pub fn check(&self, index: u64) -> bool {
        if index > self.highest {
            return true;
        }
        let behind = self.highest - index;
        behind < WINDOW && self.seen & (1 << behind) == 0
    }

    /// Records `index` as accepted (after authentication succeeded).
    pub fn accept(&mut self, index: u64) {
        if index > self.highest {
            let ahead = index - self.highest;
            self.seen = if ahead >= WINDOW {
                0
            } else {
                self.seen << ahead
            };
            self.seen |= 1;
            self.highest = index;
        } else {
            self.seen |= 1 << (self.highest - index);
        }
    }
}

/// Windows for up to [`STREAMS`] sources; the least recently used one makes room.
#[derive(Debug, Default)]
pub struct Streams {
    slots: [Option<(u32, Window, u64)>; STREAMS],
    clock: u64,
}

impl Streams {
    pub fn get(&self, ssrc: u32) -> Option<Window> {
        self.slots
            .iter()
            .flatten()
            .find(|(s, _, _)| *s == ssrc)
            .map(|(_, w, _)| *w)
    }

    /// Stores the window of `ssrc`, evicting the least recently used source if full.
    pub fn put(&mut self, ssrc: u32, window: Window) {
        self.clock += 1;
        let clock = self.clock;
        let slot = match self
            .slots
            .iter()
            .position(|s| s.is_some_and(|(x, _, _)| x == ssrc))
        {
            Some(i) => i,
            None => self
                .slots
                .iter()
                .position(Option::is_none)
                .unwrap_or_else(|| self.least_recent()),
        };
        self.slots[slot] = Some((ssrc, window, clock));
    }

    fn least_recent(&self) -> usize {
        let mut oldest = 0;
        for (i, slot) in self.slots.iter().enumerate() {
            if let (Some((_, _, t)), Some((_, _, o))) = (slot, self.slots[oldest]) {
                if *t < o {
                    oldest = i;
                }
            }
        }
        oldest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_estimate_follows_the_sequence_across_a_wrap_both_ways() {
        let w = Window::starting_at(65_530);
        assert_eq!(w.estimate(65_531), Some(65_531));
        assert_eq!(w.estimate(2), Some(65_536 + 2));
        let w = Window::starting_at(65_536 + 3);
        // A late packet from before the wrap belongs to the previous roll-over.
        assert_eq!(w.estimate(65_534), Some(65_534));
        assert_eq!(w.estimate(4), Some(65_536 + 4));
        // Before index 0 there is nothing.
        assert_eq!(Window::starting_at(3).estimate(60_000), None);
    }

    #[test]
    fn the_window_accepts_each_index_once_and_nothing_older_than_64() {
        let mut w = Window::starting_at(100);
        assert!(w.check(100));
        w.accept(100);
        assert!(!w.check(100));
        assert!(w.check(99), "a late packet inside the window");
        w.accept(99);
        assert!(!w.check(99));
        w.accept(200);
        assert!(w.check(137) && !w.check(136), "64 behind the highest");
        assert!(w.check(201));
    }

    #[test]
    fn the_table_keeps_the_four_most_recent_sources() {
        let mut s = Streams::default();
        for ssrc in 1..=5 {
            s.put(ssrc, Window::starting_at(u64::from(ssrc)));
        }
        assert_eq!(s.get(1), None);
        assert!((2..=5).all(|ssrc| s.get(ssrc).is_some()));
        s.put(2, Window::starting_at(9));
        s.put(6, Window::starting_at(6));
        assert_eq!(s.get(2).map(|w| w.highest()), Some(9));
        assert_eq!(s.get(3), None);
    }
}
