//! RFC 4733 telephone-events (DTMF) over RTP: a receiver that turns event packets into one
//! digit per key press, and a sender that turns a digit string into packets on a 20 ms tick.
//!
//! Receive side: the sender repeats each event in several packets that share one RTP
//! timestamp (the event's start), with the marker bit on the first, a growing duration, and
//! typically three copies of the final "end" packet. The timestamp therefore identifies the
//! key press. [`DtmfReceiver`] reports a digit on the *first* packet it sees with a new
//! timestamp, whichever packet that is: the caller's agent hears about the digit as soon as
//! possible (no waiting for the end, which may be lost too), a lost start packet does not
//! lose the digit, and the repeated updates and end packets are recognised as the same
//! press. Two presses of the same key differ in timestamp and give two digits.
//!
//! Call order (receive): for each RTP packet whose payload type is the negotiated
//! telephone-event type, after the sequence tracker accepted it, call
//! [`DtmfReceiver::handle`]; forward any digit returned. Call [`DtmfReceiver::reset`] when
//! the tracker reports a restart (new timestamp space).
//!
//! Call order (send): [`DtmfSender::queue`] the digits; then on every 20 ms media tick call
//! [`DtmfSender::tick`] with that tick's RTP timestamp *before* sending audio: when it
//! returns a packet, send it (telephone-event payload type, the tick's sequence number)
//! instead of the audio frame; when it returns `None`, send audio as usual.

/// Telephone-event payload length (RFC 4733 §2.3).
pub const EVENT_LEN: usize = 4;
/// Event code of hook flash, which is not a digit and is ignored by the receiver.
pub const EVENT_FLASH: u8 = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DtmfError {
    #[error("telephone-event payload shorter than 4 bytes")]
    TooShort,
    #[error("{0:?} is not a DTMF digit")]
    InvalidDigit(char),
    #[error("too many digits queued")]
    QueueFull,
}

/// The DTMF character for an event code: 0–9, `*`, `#`, A–D. Other events (flash, the
/// fax and modem tones of RFC 4734) have no digit.
pub fn digit_for_event(event: u8) -> Option<char> {
    match event {
        0..=9 => Some(char::from(b'0' + event)),
        10 => Some('*'),
        11 => Some('#'),
        12..=15 => Some(char::from(b'A' + event - 12)),
        _ => None,
    }
}

/// The event code for a DTMF character (letters in either case).
pub fn event_for_digit(digit: char) -> Option<u8> {
    match digit {
        '0'..='9' => Some(digit as u8 - b'0'),
        '*' => Some(10),
        '#' => Some(11),
        'A'..='D' => Some(digit as u8 - b'A' + 12),
        'a'..='d' => Some(digit as u8 - b'a' + 12),
        _ => None,
    }
}

/// One telephone-event payload (RFC 4733 §2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TelephoneEvent {
    pub event: u8,
    pub end: bool,
    /// Power level in -dBm0 (0–63).
    pub volume: u8,
    /// Duration so far, in timestamp units.
    pub duration: u16,
}

impl TelephoneEvent {
    /// Reads the first event; extra bytes (not used without RFC 2198 redundancy) are ignored.
    pub fn parse(payload: &[u8]) -> Result<Self, DtmfError> {
        let b = payload.get(..EVENT_LEN).ok_or(DtmfError::TooShort)?;
        Ok(Self {
            event: b[0],
            end: b[1] & 0x80 != 0,
            volume: b[1] & 0x3f,
            duration: u16::from_be_bytes([b[2], b[3]]),
        })
    }

    pub fn to_bytes(&self) -> [u8; EVENT_LEN] {
        let d = self.duration.to_be_bytes();
        [
            self.event,
            (u8::from(self.end) << 7) | (self.volume & 0x3f),
            d[0],
            d[1],
        ]
    }
}

/// A key press recognised by the receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DtmfDigit {
    pub digit: char,
    pub event: u8,
    /// RTP timestamp of the event's start.
    pub timestamp: u32,
}

#[derive(Debug, Clone, Copy)]
struct Current {
    timestamp: u32,
    event: u8,
    ended: bool,
    duration: u16,
}

/// Turns telephone-event packets into one [`DtmfDigit`] per key press. See the module docs.
#[derive(Debug, Clone, Default)]
pub struct DtmfReceiver {
    current: Option<Current>,
    /// Events seen that are not digits (flash, RFC 4734 tones).
    pub ignored: u64,
}

impl DtmfReceiver {
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets the current event; call when the source's timestamps restart.
    pub fn reset(&mut self) {
        self.current = None;
    }

    /// Feeds one telephone-event packet; returns a digit on the first packet of a new press.
    pub fn handle(
        &mut self,
        marker: bool,
        timestamp: u32,
        payload: &[u8],
    ) -> Result<Option<DtmfDigit>, DtmfError> {
        let ev = TelephoneEvent::parse(payload)?;
        if let Some(cur) = &mut self.current {
            // Serial-number comparison: a timestamp behind the current one is a late
            // packet of an earlier press (e.g. a delayed retransmitted end).
            let delta = timestamp.wrapping_sub(cur.timestamp);
            if delta == 0 {
                cur.ended |= ev.end;
                cur.duration = cur.duration.max(ev.duration);
                return Ok(None);
            }
            if (delta as i32) < 0 {
                return Ok(None);
            }
            // RFC 4733 §2.5.1.3: an event longer than the 16-bit duration continues under a
            // new timestamp (old + old duration), without the marker. Same press.
            let continues = !marker
                && !cur.ended
                && ev.event == cur.event
                && cur.duration >= 0xF000
                && delta <= 0x1_0000;
            if continues {
                *cur = Current {
                    timestamp,
                    event: ev.event,
                    ended: ev.end,
                    duration: ev.duration,
                };
                return Ok(None);
            }
        }
        self.current = Some(Current {
            timestamp,
            event: ev.event,
            ended: ev.end,
            duration: ev.duration,
        });
        match digit_for_event(ev.event) {
            Some(digit) => Ok(Some(DtmfDigit {
                digit,
                event: ev.event,
                timestamp,
            })),
            None => {
                self.ignored += 1;
                Ok(None)
            }
        }
    }
}

/// Timing of sent digits, in packets of one tick (20 ms) each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DtmfSenderConfig {
    /// Timestamp units per tick of the telephone-event clock (160 at 8 kHz / 20 ms; the
    /// telephone-event clock is 8000 even with G.722).
    pub ts_per_packet: u16,
    /// Tone length in ticks (5 = 100 ms, comfortably above the 40 ms detectors need).
    pub tone_packets: u16,
    /// Silence between digits, in ticks.
    pub gap_packets: u16,
    /// Length of a `w` pause, in ticks (25 = 500 ms, as Twilio's `sendDigits`).
    pub pause_packets: u16,
    /// Power level in -dBm0.
    pub volume: u8,
    /// Copies of the end packet (RFC 4733 §2.5.1.4 recommends three).
    pub end_repeats: u8,
}

impl Default for DtmfSenderConfig {
    fn default() -> Self {
        Self {
            ts_per_packet: 160,
            tone_packets: 5,
            gap_packets: 3,
            pause_packets: 25,
            volume: 10,
            end_repeats: 3,
        }
    }
}

/// One packet to send: give it to the RTP writer with the telephone-event payload type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DtmfPacket {
    pub payload: [u8; EVENT_LEN],
    /// The event's start timestamp (the same for every packet of one digit).
    pub timestamp: u32,
    /// Set on the first packet of each digit.
    pub marker: bool,
    pub end: bool,
}

/// Queue entries: an event code, or a pause.
const PAUSE: u8 = 0xFF;
/// Digits that may wait at once; the agent's `send_dtmf` strings are short.
pub const SENDER_QUEUE: usize = 64;

#[derive(Debug, Clone, Copy)]
enum SendState {
    Idle,
    Event {
        event: u8,
        start_ts: u32,
        /// Packet number within the event (u32: tone length + repeats can exceed u16).
        index: u32,
    },
    Gap {
        left: u16,
    },
}

/// Plays queued digits as RFC 4733 packets, one per tick. See the module docs.
#[derive(Debug, Clone)]
pub struct DtmfSender {
    cfg: DtmfSenderConfig,
    queue: [u8; SENDER_QUEUE],
    head: usize,
    len: usize,
    state: SendState,
}

impl DtmfSender {
    /// Clamps the configuration so the final duration fits the 16-bit field.
    pub fn new(mut cfg: DtmfSenderConfig) -> Self {
        cfg.ts_per_packet = cfg.ts_per_packet.max(1);
        cfg.tone_packets = cfg.tone_packets.clamp(1, u16::MAX / cfg.ts_per_packet);
        cfg.end_repeats = cfg.end_repeats.max(1);
        cfg.volume = cfg.volume.min(63);
        Self {
            cfg,
            queue: [0; SENDER_QUEUE],
            head: 0,
            len: 0,
            state: SendState::Idle,
        }
    }

    /// Queues digits (`0-9 * # A-D`, and `w` for a pause). All or nothing: an invalid
    /// character or a full queue rejects the whole string. Returns the count queued.
    pub fn queue(&mut self, digits: &str) -> Result<usize, DtmfError> {
        let mut n = 0;
        for c in digits.chars() {
            if !matches!(c, 'w' | 'W') && event_for_digit(c).is_none() {
                return Err(DtmfError::InvalidDigit(c));
            }
            n += 1;
        }
        if self.len + n > SENDER_QUEUE {
            return Err(DtmfError::QueueFull);
        }
        for c in digits.chars() {
            let code = event_for_digit(c).unwrap_or(PAUSE);
            self.queue[(self.head + self.len) % SENDER_QUEUE] = code;
            self.len += 1;
        }
        Ok(n)
    }

    /// True while a digit, gap or queued digit remains.
    pub fn is_active(&self) -> bool {
        self.len > 0 || !matches!(self.state, SendState::Idle)
    }

    /// Drops queued digits; a digit already sounding still ends with its end packets, so
    /// the far end does not hear a stuck tone.
    pub fn cancel(&mut self) {
        self.len = 0;
    }

    fn pop(&mut self) -> Option<u8> {
        if self.len == 0 {
            return None;
        }
        let code = self.queue[self.head];
        self.head = (self.head + 1) % SENDER_QUEUE;
        self.len -= 1;
        Some(code)
    }

    /// Advances one tick. `timestamp` is the RTP timestamp this tick's audio would carry.
    pub fn tick(&mut self, timestamp: u32) -> Option<DtmfPacket> {
        loop {
            match self.state {
                SendState::Idle => match self.pop() {
                    None => return None,
                    Some(PAUSE) => {
                        self.state = SendState::Gap {
                            left: self.cfg.pause_packets,
                        }
                    }
                    Some(event) => {
                        self.state = SendState::Event {
                            event,
                            start_ts: timestamp,
                            index: 0,
                        }
                    }
                },
                SendState::Gap { left: 0 } => self.state = SendState::Idle,
                SendState::Gap { left } => {
                    self.state = SendState::Gap { left: left - 1 };
                    return None;
                }
                SendState::Event {
                    event,
                    start_ts,
                    index,
                } => {
                    let tone = u32::from(self.cfg.tone_packets);
                    let last = tone - 1 + u32::from(self.cfg.end_repeats);
                    // Updates carry the time elapsed so far; end packets the full length,
                    // which `new` clamped to fit 16 bits.
                    let ticks = (index + 1).min(tone);
                    let end = index + 1 >= tone;
                    let duration = ticks * u32::from(self.cfg.ts_per_packet);
                    let pkt = TelephoneEvent {
                        event,
                        end,
                        volume: self.cfg.volume,
                        duration: u16::try_from(duration).unwrap_or(u16::MAX),
                    };
                    self.state = if index + 1 >= last {
                        SendState::Gap {
                            left: self.cfg.gap_packets,
                        }
                    } else {
                        SendState::Event {
                            event,
                            start_ts,
                            index: index + 1,
                        }
                    };
                    return Some(DtmfPacket {
                        payload: pkt.to_bytes(),
                        timestamp: start_ts,
                        marker: index == 0,
                        end,
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(event: u8, end: bool, duration: u16) -> [u8; 4] {
        TelephoneEvent {
            event,
            end,
            volume: 10,
            duration,
        }
        .to_bytes()
    }

    /// A typical press as sent by phones: start, updates, three end packets.
    fn press(event: u8, ts: u32) -> Vec<(bool, u32, [u8; 4])> {
        let mut v = vec![(true, ts, ev(event, false, 160))];
        for d in [320, 480, 640] {
            v.push((false, ts, ev(event, false, d)));
        }
        for _ in 0..3 {
            v.push((false, ts, ev(event, true, 800)));
        }
        v
    }

    fn digits(rx: &mut DtmfReceiver, packets: &[(bool, u32, [u8; 4])]) -> String {
        packets
            .iter()
            .filter_map(|(m, ts, p)| rx.handle(*m, *ts, p).unwrap())
            .map(|d| d.digit)
            .collect()
    }

    #[test]
    fn one_digit_per_press_with_three_end_packets() {
        let mut rx = DtmfReceiver::new();
        let got = rx.handle(true, 1000, &ev(5, false, 160)).unwrap();
        assert_eq!(
            got,
            Some(DtmfDigit {
                digit: '5',
                event: 5,
                timestamp: 1000
            })
        );
        assert_eq!(digits(&mut rx, &press(5, 1000)[1..]), "");
        assert_eq!(digits(&mut DtmfReceiver::new(), &press(11, 7)), "#");
    }

    #[test]
    fn lost_start_packet_still_one_digit() {
        let mut rx = DtmfReceiver::new();
        assert_eq!(digits(&mut rx, &press(1, 5000)[1..]), "1");
        // Only the end packets survived.
        let mut rx = DtmfReceiver::new();
        assert_eq!(digits(&mut rx, &press(1, 5000)[4..]), "1");
    }

    #[test]
    fn two_presses_of_the_same_key() {
        let mut rx = DtmfReceiver::new();
        let mut pkts = press(7, 1000);
        pkts.extend(press(7, 3000));
        assert_eq!(digits(&mut rx, &pkts), "77");
    }

    #[test]
    fn late_end_of_previous_press_is_ignored() {
        let mut rx = DtmfReceiver::new();
        let mut pkts = press(2, u32::MAX - 100); // across the timestamp wrap
        let late = pkts.pop().unwrap();
        pkts.extend(press(3, 1500));
        pkts.push(late);
        assert_eq!(digits(&mut rx, &pkts), "23");
    }

    #[test]
    fn all_digits_map_and_flash_is_ignored() {
        let mut rx = DtmfReceiver::new();
        let mut pkts = Vec::new();
        for (i, e) in (0..=16u8).enumerate() {
            pkts.extend(press(e, i as u32 * 2000));
        }
        assert_eq!(digits(&mut rx, &pkts), "0123456789*#ABCD");
        assert_eq!(rx.ignored, 1);
        for c in "0123456789*#ABCD".chars() {
            assert_eq!(digit_for_event(event_for_digit(c).unwrap()), Some(c));
        }
        assert_eq!(event_for_digit('b'), Some(13));
        assert_eq!(event_for_digit('x'), None);
    }

    #[test]
    fn long_event_segments_are_one_press() {
        let mut rx = DtmfReceiver::new();
        assert!(rx.handle(true, 0, &ev(9, false, 160)).unwrap().is_some());
        assert!(rx
            .handle(false, 0, &ev(9, false, 0xFFFF))
            .unwrap()
            .is_none());
        // Next segment: new timestamp, no marker, same event.
        assert!(rx
            .handle(false, 0xFFFF, &ev(9, false, 160))
            .unwrap()
            .is_none());
        assert!(rx
            .handle(false, 0xFFFF, &ev(9, true, 800))
            .unwrap()
            .is_none());
        // A fresh press after the end is a new digit.
        assert!(rx
            .handle(true, 0x2_0000, &ev(9, false, 160))
            .unwrap()
            .is_some());
    }

    #[test]
    fn hostile_payloads() {
        let mut rx = DtmfReceiver::new();
        assert_eq!(rx.handle(true, 0, &[1, 2, 3]), Err(DtmfError::TooShort));
        let mut rng = crate::media::rtp::tests::XorShift(3);
        for _ in 0..10_000 {
            let r = rng.next();
            let bytes = r.to_be_bytes();
            let _ = rx.handle(r & 1 == 0, (r >> 32) as u32 % 4, &bytes[..(r % 9) as usize]);
        }
    }

    #[test]
    fn sender_packet_sequence() {
        let mut tx = DtmfSender::new(DtmfSenderConfig::default());
        assert_eq!(tx.queue("1#"), Ok(2));
        assert!(tx.is_active());
        let mut out = Vec::new();
        for tick in 0..40u32 {
            out.push(tx.tick(10_000 + tick * 160));
        }
        assert!(!tx.is_active());
        let expect = |event: u8, ts: u32| {
            let mut v = Vec::new();
            for (i, d) in [160u16, 320, 480, 640].into_iter().enumerate() {
                v.push(Some(DtmfPacket {
                    payload: ev(event, false, d),
                    timestamp: ts,
                    marker: i == 0,
                    end: false,
                }));
            }
            for _ in 0..3 {
                v.push(Some(DtmfPacket {
                    payload: ev(event, true, 800),
                    timestamp: ts,
                    marker: false,
                    end: true,
                }));
            }
            v.extend([None; 3]); // inter-digit gap
            v
        };
        let mut want = expect(1, 10_000);
        want.extend(expect(11, 10_000 + 10 * 160));
        want.resize(40, None);
        assert_eq!(out, want);
    }

    #[test]
    fn sender_output_decodes_to_the_same_digits() {
        let mut tx = DtmfSender::new(DtmfSenderConfig::default());
        tx.queue("1234567890*#abcd").unwrap();
        let mut rx = DtmfReceiver::new();
        let mut got = String::new();
        for tick in 0..400u32 {
            if let Some(p) = tx.tick(tick.wrapping_mul(160).wrapping_add(u32::MAX - 5000)) {
                if let Some(d) = rx.handle(p.marker, p.timestamp, &p.payload).unwrap() {
                    got.push(d.digit);
                }
            }
        }
        assert_eq!(got, "1234567890*#ABCD");
    }

    #[test]
    fn sender_pause_validation_and_cancel() {
        let mut tx = DtmfSender::new(DtmfSenderConfig::default());
        assert_eq!(tx.queue("12x"), Err(DtmfError::InvalidDigit('x')));
        assert!(!tx.is_active());
        assert_eq!(tx.queue(&"1".repeat(65)), Err(DtmfError::QueueFull));
        tx.queue("w1").unwrap();
        // 25 silent ticks of pause, then the digit's first packet.
        for t in 0..25 {
            assert_eq!(tx.tick(t), None);
        }
        assert!(tx.tick(25).unwrap().marker);
        tx.queue("999").unwrap();
        tx.cancel();
        let rest: Vec<_> = (26..60).filter_map(|t| tx.tick(t)).collect();
        assert_eq!(rest.len(), 6); // the sounding digit still ends: 3 updates + 3 ends
        assert!(rest.last().unwrap().end);
        assert!(!tx.is_active());
    }

    #[test]
    fn sender_single_packet_tone_and_clamping() {
        let mut tx = DtmfSender::new(DtmfSenderConfig {
            tone_packets: 1,
            gap_packets: 0,
            ..DtmfSenderConfig::default()
        });
        tx.queue("5").unwrap();
        let first = tx.tick(0).unwrap();
        assert!(first.marker && first.end);
        assert!(tx.tick(160).unwrap().end);
        assert!(tx.tick(320).unwrap().end);
        assert_eq!(tx.tick(480), None);
        // A tone too long for the 16-bit duration is clamped.
        let mut tx = DtmfSender::new(DtmfSenderConfig {
            tone_packets: 1000,
            ..DtmfSenderConfig::default()
        });
        tx.queue("5").unwrap();
        let last_end = (0..1000).filter_map(|t| tx.tick(t)).last().unwrap();
        let d = TelephoneEvent::parse(&last_end.payload).unwrap().duration;
        assert_eq!(d, 409 * 160);
        // Extreme settings do not overflow.
        let mut tx = DtmfSender::new(DtmfSenderConfig {
            ts_per_packet: 1,
            tone_packets: u16::MAX,
            end_repeats: u8::MAX,
            ..DtmfSenderConfig::default()
        });
        tx.queue("1").unwrap();
        let n = (0..70_000).filter_map(|t| tx.tick(t)).count();
        assert_eq!(n, 65534 + 255);
    }
}
