//! Outbound playout (agent → caller): re-frames agent audio of any chunk size into exact
//! frames on a steady clock, fills gaps with silence, numbers the RTP packets, and releases
//! the agent's marks only when the audio before them has actually been played.
//!
//! Audio arrives already decoded and resampled to the caller's codec rate (i16 samples); the
//! caller encodes each returned frame and writes the RTP packet with its sequence number,
//! timestamp and marker. Frame `k` is due at `start + k × interval`, computed from the start
//! rather than accumulated, so the clock never drifts. After a stall (a starved task, a
//! suspended VM) at most `max_burst` overdue frames are released back to back; older ones
//! are skipped: their RTP timestamps are passed over, but no queued audio is lost.
//!
//! The marker bit is set on the first packet of the stream and on the first packet of every
//! talk-spurt (a frame with agent audio after a silence frame, a clear or a skip), per
//! RFC 3551 §4.1, so the far end's jitter buffer can resynchronise.
//!
//! Call order, one task per call:
//! 1. Agent events, whenever they arrive: [`Playout::push`] (media), [`Playout::mark`],
//!    [`Playout::clear`].
//! 2. When the timer fires (and after agent events): `while let Some(frame) = poll(now)`,
//!    encode and send each frame (or let the DTMF sender substitute it).
//! 3. `while let Some(name) = poll_mark()`, echo the mark to the agent.
//! 4. Sleep until [`Playout::poll_timeout`].
//!
//! At end of call, keep running the loop until [`Playout::is_drained`] or
//! [`Playout::drain_time`] (capped) has passed, then send BYE.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Sizes and starting values for one outbound stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlayoutConfig {
    /// Samples per frame at the codec's rate: 160 (PCMU/PCMA), 320 (G.722 at 16 kHz).
    pub samples_per_frame: usize,
    /// RTP timestamp increment per frame: 160 for all three codecs (G.722's RTP clock is
    /// 8000 although it samples at 16 kHz, RFC 3551 §4.5.2).
    pub ts_per_frame: u32,
    pub frame_interval: Duration,
    /// Most samples held; audio beyond it is dropped and counted.
    pub max_queue_samples: usize,
    /// Most overdue frames released back to back after a stall.
    pub max_burst: u32,
    /// Most marks outstanding.
    pub max_marks: usize,
    /// Random starting values (RFC 3550 §5.1), chosen by the caller.
    pub initial_sequence: u16,
    pub initial_timestamp: u32,
}

impl PlayoutConfig {
    /// 20 ms frames, a 60 s queue, bursts of 3 frames, 1024 marks; sequence and timestamp
    /// start at zero, so set them to random values.
    pub fn new(samples_per_frame: usize, ts_per_frame: u32) -> Self {
        Self {
            samples_per_frame,
            ts_per_frame,
            frame_interval: Duration::from_millis(20),
            max_queue_samples: samples_per_frame * 50 * 60,
            max_burst: 3,
            max_marks: 1024,
            initial_sequence: 0,
            initial_timestamp: 0,
        }
    }
}

/// One frame to encode and send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// Exactly `samples_per_frame` samples; zeros where there was no agent audio.
    pub samples: &'a [i16],
    /// False for a pure silence fill (the caller may send comfort noise instead).
    pub speech: bool,
    pub sequence: u16,
    pub timestamp: u32,
    pub marker: bool,
    /// When the frame was due; `poll(now)` returns it at or after this.
    pub due: Instant,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PlayoutStats {
    pub frames: u64,
    pub silence_frames: u64,
    /// Frame slots passed over while catching up after a stall.
    pub skipped_frames: u64,
    /// Agent samples dropped because the queue was full.
    pub overflow_samples: u64,
    /// Agent samples dropped by `clear`.
    pub cleared_samples: u64,
    /// Marks refused because too many were outstanding.
    pub rejected_marks: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlayoutError {
    /// The mark is handed back so the caller can decide (e.g. echo it at once).
    #[error("too many marks outstanding; refused {0:?}")]
    TooManyMarks(String),
}

/// The playout core for one call leg. See the module docs for the call order.
#[derive(Debug)]
pub struct Playout {
    cfg: PlayoutConfig,
    start: Instant,
    /// Clock slot of the next frame (slot k is due at start + k × interval).
    next_slot: u64,
    /// Packets emitted, for sequence numbers.
    sent: u64,
    queue: VecDeque<i16>,
    frame: Vec<i16>,
    /// Samples ever accepted, and ever taken out (played or cleared): marks sit between.
    enqueued: u64,
    consumed: u64,
    marks: VecDeque<(u64, String)>,
    /// Whether the previous frame carried speech (no marker needed on the next).
    talking: bool,
    stats: PlayoutStats,
}

impl Playout {
    /// Allocates the frame buffer and a 2 s queue now; the queue grows only when agent audio
    /// reaches a new high-water mark, and nothing allocates per frame. The first frame is
    /// due at `start`.
    pub fn new(mut cfg: PlayoutConfig, start: Instant) -> Self {
        cfg.samples_per_frame = cfg.samples_per_frame.max(1);
        cfg.frame_interval = cfg.frame_interval.max(Duration::from_millis(1));
        cfg.max_burst = cfg.max_burst.max(1);
        Self {
            // Grows on push up to the bound (a full 60 s ring per call would cost megabytes
            // of resident memory once the ring wrapped); `poll` never allocates.
            queue: VecDeque::with_capacity(cfg.max_queue_samples.min(cfg.samples_per_frame * 100)),
            frame: vec![0; cfg.samples_per_frame],
            marks: VecDeque::with_capacity(cfg.max_marks.min(64)),
            cfg,
            start,
            next_slot: 0,
            sent: 0,
            enqueued: 0,
            consumed: 0,
            talking: false,
            stats: PlayoutStats::default(),
        }
    }

    pub fn config(&self) -> &PlayoutConfig {
        &self.cfg
    }

    pub fn stats(&self) -> PlayoutStats {
        self.stats
    }

    /// Queues agent audio; returns how many samples were accepted (the rest overflowed).
    pub fn push(&mut self, samples: &[i16]) -> usize {
        let room = self.cfg.max_queue_samples.saturating_sub(self.queue.len());
        let n = samples.len().min(room);
        self.queue.extend(&samples[..n]);
        self.enqueued += n as u64;
        self.stats.overflow_samples += (samples.len() - n) as u64;
        n
    }

    /// Records a mark after everything queued so far.
    pub fn mark(&mut self, name: String) -> Result<(), PlayoutError> {
        if self.marks.len() >= self.cfg.max_marks {
            self.stats.rejected_marks += 1;
            return Err(PlayoutError::TooManyMarks(name));
        }
        self.marks.push_back((self.enqueued, name));
        Ok(())
    }

    /// Drops all queued audio (barge-in); every pending mark becomes ready at once.
    /// Returns the number of samples dropped.
    pub fn clear(&mut self) -> usize {
        let dropped = self.queue.len();
        self.queue.clear();
        self.consumed = self.enqueued;
        self.stats.cleared_samples += dropped as u64;
        self.talking = false;
        dropped
    }

    /// The next mark whose audio has all been played (or cleared), in order.
    pub fn poll_mark(&mut self) -> Option<String> {
        match self.marks.front() {
            Some((at, _)) if *at <= self.consumed => self.marks.pop_front().map(|(_, n)| n),
            _ => None,
        }
    }

    /// Samples waiting to be played.
    pub fn queued_samples(&self) -> usize {
        self.queue.len()
    }

    /// True when no agent audio is waiting.
    pub fn is_drained(&self) -> bool {
        self.queue.is_empty()
    }

    fn due(&self, slot: u64) -> Option<Instant> {
        let nanos = self
            .cfg
            .frame_interval
            .as_nanos()
            .checked_mul(u128::from(slot))?;
        self.start
            .checked_add(Duration::from_nanos(u64::try_from(nanos).ok()?))
    }

    /// When the next frame is due: sleep until then. (Far future on arithmetic overflow,
    /// which would take centuries of playout.)
    pub fn poll_timeout(&self) -> Instant {
        self.due(self.next_slot)
            .unwrap_or(self.start + Duration::from_secs(86400 * 365))
    }

    /// How long from `now` until the queued audio has been played out (its last frame sent
    /// and one frame interval for it to sound), at most `cap`. Zero when nothing is queued.
    pub fn drain_time(&self, now: Instant, cap: Duration) -> Duration {
        if self.queue.is_empty() {
            return Duration::ZERO;
        }
        let frames = self.queue.len().div_ceil(self.cfg.samples_per_frame) as u64;
        let Some(last) = self.due(self.next_slot + frames) else {
            return cap;
        };
        last.max(now).duration_since(now).min(cap)
    }

    /// Returns the next frame if it is due at `now`. Call until it returns `None`.
    pub fn poll(&mut self, now: Instant) -> Option<Frame<'_>> {
        if now < self.start {
            return None;
        }
        let interval = self.cfg.frame_interval.as_nanos();
        let elapsed = now.duration_since(self.start).as_nanos();
        // Slots 0..due_count are due by now.
        let due_count = u64::try_from(elapsed / interval + 1).unwrap_or(u64::MAX);
        if due_count <= self.next_slot {
            return None;
        }
        let backlog = due_count - self.next_slot;
        let max_burst = u64::from(self.cfg.max_burst);
        if backlog > max_burst {
            let skip = backlog - max_burst;
            self.next_slot += skip;
            self.stats.skipped_frames += skip;
            // The timestamp jumps: the next speech starts a new talk-spurt.
            self.talking = false;
        }
        let slot = self.next_slot;
        let due = self.due(slot)?;
        self.next_slot += 1;

        let spf = self.cfg.samples_per_frame;
        let n = self.queue.len().min(spf);
        let speech = n > 0;
        let (a, b) = self.queue.as_slices();
        let from_a = n.min(a.len());
        self.frame[..from_a].copy_from_slice(&a[..from_a]);
        self.frame[from_a..n].copy_from_slice(&b[..n - from_a]);
        self.frame[n..].fill(0);
        self.queue.drain(..n);
        self.consumed += n as u64;

        let marker = (speech && !self.talking) || self.sent == 0;
        self.talking = speech;
        let sequence = self.cfg.initial_sequence.wrapping_add(self.sent as u16);
        // Wrapping arithmetic modulo 2^32 is what RTP timestamps do.
        let timestamp = self
            .cfg
            .initial_timestamp
            .wrapping_add((slot as u32).wrapping_mul(self.cfg.ts_per_frame));
        self.sent += 1;
        self.stats.frames += 1;
        if !speech {
            self.stats.silence_frames += 1;
        }
        Some(Frame {
            samples: &self.frame,
            speech,
            sequence,
            timestamp,
            marker,
            due,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// What a returned frame looked like, owned, with the virtual time it was returned at.
    #[derive(Debug, Clone)]
    struct Sent {
        at: Duration,
        samples: Vec<i16>,
        speech: bool,
        seq: u16,
        ts: u32,
        marker: bool,
    }

    fn poll_all(p: &mut Playout, t0: Instant, at: Duration, out: &mut Vec<Sent>) {
        let spf = p.config().samples_per_frame;
        while let Some(f) = p.poll(t0 + at) {
            assert_eq!(f.samples.len(), spf);
            out.push(Sent {
                at,
                samples: f.samples.to_vec(),
                speech: f.speech,
                seq: f.sequence,
                ts: f.timestamp,
                marker: f.marker,
            });
        }
    }

    fn ramp(from: usize, len: usize) -> Vec<i16> {
        (from..from + len)
            .map(|i| (i % 30_000) as i16 + 1)
            .collect()
    }

    #[test]
    fn irregular_chunks_become_exact_frames_at_exact_spacing() {
        let t0 = Instant::now();
        let mut cfg = PlayoutConfig::new(160, 160);
        cfg.initial_sequence = 65530;
        cfg.initial_timestamp = u32::MAX - 400;
        let mut p = Playout::new(cfg, t0);
        let mut out = Vec::new();
        // Chunks of 40 ms, 2 s and one sample, arriving at awkward times.
        let chunks = [(0u64, 320usize), (7, 16_000), (33, 1), (95, 320)];
        let mut fed = 0;
        let mut pushed = Vec::new();
        for ms in 0..3000u64 {
            for &(at, len) in &chunks {
                if at == ms {
                    let c = ramp(fed, len);
                    fed += len;
                    p.push(&c);
                    pushed.extend(c);
                }
            }
            poll_all(&mut p, t0, MS * ms as u32, &mut out);
        }
        assert_eq!(out.len(), 150); // slots 0..=149 due within 0..3000 ms
        for (k, f) in out.iter().enumerate() {
            assert_eq!(f.at, 20 * k as u32 * MS, "frame {k} late");
            assert_eq!(f.seq, 65530u16.wrapping_add(k as u16));
            assert_eq!(f.ts, (u32::MAX - 400).wrapping_add(160 * k as u32));
        }
        // The audio comes out unchanged and contiguous, then silence.
        let played: Vec<i16> = out.iter().flat_map(|f| f.samples.clone()).collect();
        assert_eq!(&played[..pushed.len()], &pushed[..]);
        assert!(played[pushed.len()..].iter().all(|&s| s == 0));
        // 16641 samples = 104 frames + 1 sample: frame 104 is partial speech.
        assert!(out[104].speech && !out[105].speech);
        assert_eq!(p.stats().silence_frames, 150 - 105);
    }

    #[test]
    fn silence_fill_and_markers() {
        let t0 = Instant::now();
        let mut p = Playout::new(PlayoutConfig::new(160, 160), t0);
        let mut out = Vec::new();
        for ms in 0..=60u64 {
            poll_all(&mut p, t0, MS * ms as u32, &mut out);
        }
        assert_eq!(out.len(), 4);
        assert!(out
            .iter()
            .all(|f| !f.speech && f.samples.iter().all(|&s| s == 0)));
        // The stream's first packet carries the marker; silence after it does not.
        assert!(out[0].marker && !out[1].marker);
        p.push(&[5; 400]); // 2.5 frames: a talk-spurt of three frames
        for ms in 61..=200u64 {
            poll_all(&mut p, t0, MS * ms as u32, &mut out);
        }
        let talk: Vec<_> = out.iter().map(|f| (f.speech, f.marker)).collect();
        assert_eq!(
            talk[4..8],
            [(true, true), (true, false), (true, false), (false, false)]
        );
        p.push(&[5; 160]);
        poll_all(&mut p, t0, 220 * MS, &mut out);
        assert!(out.last().unwrap().marker);
    }

    #[test]
    fn g722_frames_are_320_samples_with_160_timestamp_steps() {
        let t0 = Instant::now();
        let mut p = Playout::new(PlayoutConfig::new(320, 160), t0);
        p.push(&ramp(0, 640));
        let mut out = Vec::new();
        for ms in 0..=40u64 {
            poll_all(&mut p, t0, MS * ms as u32, &mut out);
        }
        assert_eq!(out.len(), 3);
        assert_eq!(out[1].ts - out[0].ts, 160);
        assert_eq!(out[0].samples, ramp(0, 320));
        assert_eq!(out[1].samples, ramp(320, 320));
        assert!(!out[2].speech);
    }

    #[test]
    fn mark_is_released_after_play_not_when_queued() {
        let t0 = Instant::now();
        let mut p = Playout::new(PlayoutConfig::new(160, 160), t0);
        // With nothing queued, a mark is ready at once.
        p.mark("empty".into()).unwrap();
        assert_eq!(p.poll_mark().as_deref(), Some("empty"));
        p.push(&[1; 1000]); // 6.25 frames
        p.mark("greeting-done".into()).unwrap();
        p.push(&[2; 160]);
        p.mark("second".into()).unwrap();
        let mut out = Vec::new();
        for k in 0..6u64 {
            poll_all(&mut p, t0, 20 * k as u32 * MS, &mut out);
            assert_eq!(p.poll_mark(), None, "after frame {k}");
        }
        poll_all(&mut p, t0, 120 * MS, &mut out); // frame 6 holds the last 40 samples
        assert_eq!(p.poll_mark().as_deref(), Some("greeting-done"));
        assert_eq!(p.poll_mark(), None);
        poll_all(&mut p, t0, 140 * MS, &mut out);
        assert_eq!(p.poll_mark().as_deref(), Some("second"));
    }

    #[test]
    fn clear_releases_marks_at_once_and_empties_the_queue() {
        let t0 = Instant::now();
        let mut p = Playout::new(PlayoutConfig::new(160, 160), t0);
        p.push(&[7; 16_000]);
        p.mark("m1".into()).unwrap();
        p.push(&[7; 8000]);
        p.mark("m2".into()).unwrap();
        let mut out = Vec::new();
        poll_all(&mut p, t0, Duration::ZERO, &mut out);
        assert_eq!(p.poll_mark(), None);
        assert_eq!(p.clear(), 24_000 - 160);
        assert_eq!(p.poll_mark().as_deref(), Some("m1"));
        assert_eq!(p.poll_mark().as_deref(), Some("m2"));
        assert_eq!(p.queued_samples(), 0);
        assert!(p.is_drained());
        poll_all(&mut p, t0, 20 * MS, &mut out);
        assert!(!out[1].speech);
        // The next utterance after a barge-in starts a talk-spurt.
        p.push(&[3; 160]);
        poll_all(&mut p, t0, 40 * MS, &mut out);
        assert!(out[2].speech && out[2].marker);
        assert_eq!(p.stats().cleared_samples, 23_840);
    }

    #[test]
    fn catch_up_after_stall_is_bounded_and_does_not_drift() {
        let t0 = Instant::now();
        let mut p = Playout::new(PlayoutConfig::new(160, 160), t0);
        p.push(&ramp(0, 160 * 20));
        let mut out = Vec::new();
        poll_all(&mut p, t0, Duration::ZERO, &mut out);
        assert_eq!(out.len(), 1);
        // The task stalls for a second: only max_burst (3) frames come out back to back.
        poll_all(&mut p, t0, 1000 * MS + 5 * MS, &mut out);
        assert_eq!(out.len(), 4);
        assert_eq!(p.stats().skipped_frames, 47);
        // Sequence numbers stay contiguous; timestamps jump over the skipped slots.
        let seqs: Vec<u16> = out.iter().map(|f| f.seq).collect();
        assert_eq!(seqs, [0, 1, 2, 3]);
        let tss: Vec<u32> = out.iter().map(|f| f.ts).collect();
        assert_eq!(tss, [0, 48 * 160, 49 * 160, 50 * 160]);
        // No audio was lost to the stall, and the jump starts a new talk-spurt.
        assert_eq!(out[1].samples, ramp(160, 160));
        assert!(out[1].marker && !out[2].marker);
        // The clock stays on the original grid.
        assert_eq!(p.poll_timeout(), t0 + 1020 * MS);
        assert!(p.poll(t0 + 1019 * MS).is_none());
        assert!(p.poll(t0 + 1020 * MS).is_some());
        assert!(p.poll(t0 + 1020 * MS).is_none());
    }

    #[test]
    fn long_run_has_no_drift() {
        let t0 = Instant::now();
        let mut p = Playout::new(PlayoutConfig::new(160, 160), t0);
        let mut n = 0u64;
        // Wake up slightly late every time, as a real timer does.
        let mut now = t0;
        while n < 180_000 {
            while let Some(f) = p.poll(now) {
                assert_eq!(f.due, t0 + 20 * MS * n as u32);
                n += 1;
            }
            now = p.poll_timeout() + Duration::from_micros(700);
        }
        assert_eq!(p.stats().skipped_frames, 0);
        assert_eq!(p.poll_timeout(), t0 + Duration::from_secs(3600));
    }

    #[test]
    fn bounded_queue_and_marks() {
        let t0 = Instant::now();
        let mut cfg = PlayoutConfig::new(160, 160);
        cfg.max_queue_samples = 1000;
        cfg.max_marks = 2;
        let mut p = Playout::new(cfg, t0);
        assert_eq!(p.push(&[1; 600]), 600);
        assert_eq!(p.push(&[1; 600]), 400);
        assert_eq!(p.stats().overflow_samples, 200);
        assert_eq!(p.queued_samples(), 1000);
        p.mark("a".into()).unwrap();
        p.mark("b".into()).unwrap();
        assert_eq!(
            p.mark("c".into()),
            Err(PlayoutError::TooManyMarks("c".into()))
        );
        // The default queue holds 60 s.
        let d = PlayoutConfig::new(160, 160);
        assert_eq!(d.max_queue_samples, 8000 * 60);
    }

    #[test]
    fn drain_time_is_capped() {
        let t0 = Instant::now();
        let mut p = Playout::new(PlayoutConfig::new(160, 160), t0);
        assert_eq!(p.drain_time(t0, Duration::from_secs(5)), Duration::ZERO);
        p.push(&[1; 8000]); // 1 s = 50 frames: last sent at 980 ms, sounds until 1000 ms
        assert_eq!(p.drain_time(t0, Duration::from_secs(5)), 1000 * MS);
        let mut out = Vec::new();
        for ms in 0..=100u32 {
            poll_all(&mut p, t0, MS * ms, &mut out);
        }
        assert_eq!(
            p.drain_time(t0 + 110 * MS, Duration::from_secs(5)),
            890 * MS
        );
        p.push(&[1; 8000 * 30]);
        assert_eq!(
            p.drain_time(t0 + 110 * MS, Duration::from_secs(5)),
            Duration::from_secs(5)
        );
    }

    #[test]
    fn nothing_before_start() {
        let t0 = Instant::now() + Duration::from_secs(1);
        let mut p = Playout::new(PlayoutConfig::new(160, 160), t0);
        assert!(p.poll(t0 - MS).is_none());
        assert_eq!(p.poll_timeout(), t0);
        assert!(p.poll(t0).is_some());
    }
}
