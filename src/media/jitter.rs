//! Inbound jitter buffer: reorders packets by extended sequence number and releases one
//! frame per 20 ms tick, reporting the gaps so the caller can conceal them.
//!
//! A fixed-depth buffer with two guards instead of a full adaptive estimator: it starts (and
//! restarts after an underrun) once `target_depth` frames are spanned, and it trims back to
//! `max_depth` when a burst or a fast sender clock piles frames up. Underrun-and-rebuffer
//! also absorbs silence suppression and telephone-event runs, which leave no audio for a
//! while. Storage is one ring of fixed slots allocated at construction; nothing allocates
//! per packet.
//!
//! Call order: for each audio packet the [`SeqTracker`] accepts, [`JitterBuffer::insert`]
//! (after [`JitterBuffer::reset`] if it reported a restart); on every 20 ms tick, exactly one
//! [`JitterBuffer::pop`]: decode a `Frame`, conceal a `Missing` (repeat or silence), and
//! play silence while `Buffering`. One packet is one tick: the negotiated ptime must match.
//!
//! [`SeqTracker`]: super::rtp::SeqTracker

/// Sizes of the buffer, in frames (packets) of one tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JitterConfig {
    /// Slots in the ring: the most that can be held (10 = 200 ms at 20 ms).
    pub capacity: usize,
    /// Frames spanned before playout (re)starts: the delay paid for smoothness.
    pub target_depth: usize,
    /// Frames above which the oldest are dropped at pop to bound latency.
    pub max_depth: usize,
    /// Largest payload accepted (G.711/G.722 at 20 ms are 160 bytes).
    pub max_payload: usize,
}

impl Default for JitterConfig {
    fn default() -> Self {
        Self {
            capacity: 10,
            target_depth: 3,
            max_depth: 8,
            max_payload: 512,
        }
    }
}

/// Counters for metrics; every packet not played is in exactly one of them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JitterStats {
    pub inserted: u64,
    /// Arrived after its turn to play had passed.
    pub late: u64,
    pub duplicate: u64,
    pub too_large: u64,
    /// Discarded because a packet far ahead forced the window forward.
    pub overflow: u64,
    /// Discarded at pop to bring the depth back under `max_depth`.
    pub trimmed: u64,
    /// Frames reported `Missing` (concealed by the caller).
    pub missing: u64,
    /// Times the buffer ran dry while playing and went back to buffering.
    pub underruns: u64,
}

/// What happened to an inserted packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Insert {
    Stored,
    Late,
    Duplicate,
    TooLarge,
}

/// The outcome of one tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pop<'a> {
    /// The frame due now.
    Frame {
        seq: u64,
        timestamp: u32,
        payload: &'a [u8],
    },
    /// The frame due now never arrived (later ones did): conceal it.
    Missing { seq: u64 },
    /// Not playing: waiting for the first frames, or refilling after an underrun.
    Buffering,
}

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    seq: u64,
    timestamp: u32,
    len: usize,
    full: bool,
}

#[derive(Debug, Clone)]
pub struct JitterBuffer {
    cfg: JitterConfig,
    slots: Vec<Slot>,
    data: Vec<u8>,
    /// Packets with a lower sequence are late. `None` until the first pop of a frame.
    floor: Option<u64>,
    playing: bool,
    count: usize,
    lowest: u64,
    highest: u64,
    stats: JitterStats,
}

impl JitterBuffer {
    /// Allocates all storage now; the sizes are clamped into a consistent configuration.
    pub fn new(mut cfg: JitterConfig) -> Self {
        cfg.capacity = cfg.capacity.max(1);
        cfg.max_depth = cfg.max_depth.clamp(1, cfg.capacity);
        cfg.target_depth = cfg.target_depth.clamp(1, cfg.max_depth);
        cfg.max_payload = cfg.max_payload.max(1);
        Self {
            slots: vec![Slot::default(); cfg.capacity],
            data: vec![0; cfg.capacity * cfg.max_payload],
            cfg,
            floor: None,
            playing: false,
            count: 0,
            lowest: 0,
            highest: 0,
            stats: JitterStats::default(),
        }
    }

    pub fn config(&self) -> &JitterConfig {
        &self.cfg
    }

    pub fn stats(&self) -> JitterStats {
        self.stats
    }

    /// Packets held.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Empties the buffer and forgets the sequence space (source restarted); keeps stats.
    pub fn reset(&mut self) {
        self.slots.iter_mut().for_each(|s| s.full = false);
        self.floor = None;
        self.playing = false;
        self.count = 0;
    }

    fn index(&self, seq: u64) -> usize {
        // The remainder is below capacity, which is a usize.
        (seq % self.cfg.capacity as u64) as usize
    }

    /// Recomputes the lowest/highest held after a removal.
    fn rescan(&mut self) {
        let mut lo = u64::MAX;
        let mut hi = 0;
        for s in self.slots.iter().filter(|s| s.full) {
            lo = lo.min(s.seq);
            hi = hi.max(s.seq);
        }
        self.lowest = lo;
        self.highest = hi;
    }

    /// Drops every held packet below `seq`, counting them in `counter`.
    fn drop_below(&mut self, seq: u64, trimmed: bool) {
        let mut dropped = 0;
        for s in self.slots.iter_mut().filter(|s| s.full && s.seq < seq) {
            s.full = false;
            dropped += 1;
        }
        self.count -= dropped;
        if trimmed {
            self.stats.trimmed += dropped as u64;
        } else {
            self.stats.overflow += dropped as u64;
        }
        self.rescan();
    }

    /// Stores one packet by its extended sequence number (from the tracker).
    pub fn insert(&mut self, seq: u64, timestamp: u32, payload: &[u8]) -> Insert {
        if payload.len() > self.cfg.max_payload {
            self.stats.too_large += 1;
            return Insert::TooLarge;
        }
        if self.floor.is_some_and(|f| seq < f) {
            self.stats.late += 1;
            return Insert::Late;
        }
        let cap = self.cfg.capacity as u64;
        if self.count > 0 {
            if seq < self.lowest && self.highest - seq >= cap {
                // Older than anything the ring can still hold next to what is buffered.
                self.stats.late += 1;
                return Insert::Late;
            }
            let window_start = match (self.playing, self.floor) {
                (true, Some(f)) => f,
                _ => self.lowest,
            };
            if seq >= window_start.saturating_add(cap) {
                // Far ahead: move the window so this packet fits, dropping the oldest.
                let new_start = seq - cap + 1;
                self.drop_below(new_start, false);
                if self.floor.is_some() {
                    self.floor = Some(new_start);
                }
            }
        }
        let i = self.index(seq);
        let slot = self.slots[i];
        if slot.full {
            if slot.seq == seq {
                self.stats.duplicate += 1;
                return Insert::Duplicate;
            }
            // Unreachable given the window checks; replace rather than trust that.
            self.count -= 1;
            self.stats.overflow += 1;
        }
        let at = i * self.cfg.max_payload;
        self.data[at..at + payload.len()].copy_from_slice(payload);
        self.slots[i] = Slot {
            seq,
            timestamp,
            len: payload.len(),
            full: true,
        };
        if self.count == 0 {
            self.lowest = seq;
            self.highest = seq;
        } else {
            self.lowest = self.lowest.min(seq);
            self.highest = self.highest.max(seq);
        }
        self.count += 1;
        self.stats.inserted += 1;
        Insert::Stored
    }

    /// Releases the frame due at this tick. Call exactly once per tick.
    pub fn pop(&mut self) -> Pop<'_> {
        if !self.playing {
            if self.count == 0 || self.highest - self.lowest < self.cfg.target_depth as u64 - 1 {
                return Pop::Buffering;
            }
            // Start (or restart after an underrun) at the oldest frame held; a gap before it
            // is time that passed while nothing played, not something to conceal.
            self.playing = true;
            self.floor = Some(self.lowest);
        }
        if self.count == 0 {
            self.playing = false;
            self.stats.underruns += 1;
            return Pop::Buffering;
        }
        // `floor` is always set while playing.
        let mut next = self.floor.unwrap_or(self.lowest);
        let max_depth = self.cfg.max_depth as u64;
        if self.highest.saturating_sub(next) >= max_depth {
            next = self.highest - (max_depth - 1);
            self.drop_below(next, true);
        }
        self.floor = Some(next.saturating_add(1));
        let i = self.index(next);
        let slot = self.slots[i];
        if !(slot.full && slot.seq == next) {
            self.stats.missing += 1;
            return Pop::Missing { seq: next };
        }
        self.slots[i].full = false;
        self.count -= 1;
        if self.count > 0 && next == self.lowest {
            self.rescan();
        }
        let at = i * self.cfg.max_payload;
        Pop::Frame {
            seq: next,
            timestamp: slot.timestamp,
            payload: &self.data[at..at + slot.len],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buf(capacity: usize, target: usize, max_depth: usize) -> JitterBuffer {
        JitterBuffer::new(JitterConfig {
            capacity,
            target_depth: target,
            max_depth,
            max_payload: 16,
        })
    }

    fn put(j: &mut JitterBuffer, seq: u64) -> Insert {
        j.insert(seq, (seq as u32).wrapping_mul(160), &[seq as u8; 4])
    }

    /// Pops one tick and renders it: `F<seq>`, `M<seq>` or `B`.
    fn tick(j: &mut JitterBuffer) -> String {
        match j.pop() {
            Pop::Frame {
                seq,
                timestamp,
                payload,
            } => {
                assert_eq!(timestamp, (seq as u32).wrapping_mul(160));
                assert_eq!(payload, &[seq as u8; 4]);
                format!("F{seq}")
            }
            Pop::Missing { seq } => format!("M{seq}"),
            Pop::Buffering => "B".into(),
        }
    }

    fn ticks(j: &mut JitterBuffer, n: usize) -> String {
        (0..n).map(|_| tick(j)).collect::<Vec<_>>().join(" ")
    }

    #[test]
    fn reorders_after_prefetch() {
        let mut j = buf(10, 3, 8);
        assert_eq!(put(&mut j, 102), Insert::Stored);
        assert_eq!(ticks(&mut j, 1), "B");
        put(&mut j, 100);
        // 100..=102 spanned: playout starts even though 101 is still in flight.
        put(&mut j, 101);
        assert_eq!(ticks(&mut j, 3), "F100 F101 F102");
        assert_eq!(ticks(&mut j, 1), "B");
        assert_eq!(j.stats().underruns, 1);
    }

    #[test]
    fn late_and_duplicate_are_discarded() {
        let mut j = buf(10, 2, 8);
        put(&mut j, 1);
        put(&mut j, 2);
        assert_eq!(put(&mut j, 2), Insert::Duplicate);
        put(&mut j, 3);
        assert_eq!(ticks(&mut j, 1), "F1");
        assert_eq!(put(&mut j, 1), Insert::Late);
        assert_eq!(put(&mut j, 0), Insert::Late);
        assert_eq!(ticks(&mut j, 2), "F2 F3");
        let s = j.stats();
        assert_eq!((s.late, s.duplicate, s.inserted), (2, 1, 3));
    }

    #[test]
    fn missing_frames_are_reported_in_place() {
        let mut j = buf(10, 3, 8);
        for s in [1, 2, 4, 6] {
            put(&mut j, s);
        }
        assert_eq!(ticks(&mut j, 6), "F1 F2 M3 F4 M5 F6");
        // 3 arriving after its turn is late.
        assert_eq!(put(&mut j, 3), Insert::Late);
        assert_eq!(j.stats().missing, 2);
    }

    #[test]
    fn underrun_rebuffers_and_skips_the_silent_gap() {
        let mut j = buf(10, 2, 8);
        put(&mut j, 1);
        put(&mut j, 2);
        assert_eq!(ticks(&mut j, 4), "F1 F2 B B");
        // The source paused (silence suppression or a DTMF run used seqs 3..=9).
        put(&mut j, 10);
        assert_eq!(ticks(&mut j, 1), "B");
        put(&mut j, 11);
        assert_eq!(ticks(&mut j, 3), "F10 F11 B");
        assert_eq!(j.stats().missing, 0);
        // Before resuming, anything older than what was played stays late.
        assert_eq!(put(&mut j, 5), Insert::Late);
    }

    #[test]
    fn far_ahead_packet_moves_the_window() {
        let mut j = buf(10, 3, 10);
        for s in 1..=3 {
            put(&mut j, s);
        }
        assert_eq!(ticks(&mut j, 1), "F1");
        // 14 does not fit with 2 as the next to play: window moves to 5..=14.
        assert_eq!(put(&mut j, 14), Insert::Stored);
        assert_eq!(j.stats().overflow, 2);
        assert_eq!(j.len(), 1);
        assert_eq!(put(&mut j, 4), Insert::Late);
        assert_eq!(ticks(&mut j, 2), "M5 M6");
        // While buffering, a packet too old to share the ring is late.
        let mut j = buf(4, 4, 4);
        put(&mut j, 20);
        assert_eq!(put(&mut j, 16), Insert::Late);
        assert_eq!(put(&mut j, 17), Insert::Stored);
    }

    #[test]
    fn burst_is_trimmed_to_max_depth() {
        let mut j = buf(10, 2, 4);
        for s in 1..=9 {
            put(&mut j, s);
        }
        // Nine frames arrived at once: keep only the newest four.
        assert_eq!(ticks(&mut j, 5), "F6 F7 F8 F9 B");
        assert_eq!(j.stats().trimmed, 5);
    }

    #[test]
    fn oversize_and_reset() {
        let mut j = buf(4, 1, 4);
        assert_eq!(j.insert(1, 0, &[0; 17]), Insert::TooLarge);
        put(&mut j, 1);
        assert_eq!(ticks(&mut j, 1), "F1");
        j.reset();
        // After a restart, low numbers are welcome again.
        assert_eq!(put(&mut j, 0), Insert::Stored);
        assert_eq!(ticks(&mut j, 1), "F0");
        // Nonsense sizes are clamped, not trusted.
        let j = JitterBuffer::new(JitterConfig {
            capacity: 0,
            target_depth: 9,
            max_depth: 0,
            max_payload: 0,
        });
        assert_eq!(j.config().capacity, 1);
        assert_eq!(j.config().target_depth, 1);
    }

    #[test]
    fn random_traffic_keeps_invariants() {
        let mut rng = crate::media::rtp::tests::XorShift(99);
        let mut j = buf(10, 3, 8);
        let mut base = 1000u64;
        for _ in 0..100_000 {
            let r = rng.next();
            if r % 3 == 0 {
                let _ = j.pop();
                base += 1;
            } else {
                // Mostly near the playout point, sometimes wildly off.
                let seq = if r % 97 == 0 {
                    r >> 20
                } else {
                    (base + (r >> 8) % 16).saturating_sub(4)
                };
                let _ = j.insert(seq, r as u32, &[0; 8]);
            }
            let held = j.slots.iter().filter(|s| s.full).count();
            assert_eq!(held, j.len());
            assert!(j.len() <= 10);
        }
        let s = j.stats();
        assert!(s.inserted > 0 && s.late > 0);
    }

    #[test]
    fn extreme_sequence_numbers_do_not_overflow() {
        let mut j = buf(4, 1, 4);
        for seq in [u64::MAX, 0, u64::MAX - 1, u64::MAX] {
            let _ = put(&mut j, seq);
            let _ = j.pop();
        }
        let _ = put(&mut j, u64::MAX);
        let _ = j.pop();
    }
}
