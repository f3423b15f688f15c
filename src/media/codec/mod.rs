//! Telephony codecs and the per-call encoder/decoder state a media task holds.
//!
//! [`Codec`] carries what SDP and RTP need to know about a codec; [`Encoder`] and
//! [`Decoder`] wrap the state of one direction of one call. All coding works on
//! caller-provided buffers and returns how much it wrote, so the per-packet path never
//! allocates and never panics on odd sizes.

pub mod g711;
pub mod g722;

pub use g722::{G722Decoder, G722Encoder};

/// The golden vectors in `tests/data/codecs` (see its README), for the codec tests.
#[cfg(test)]
mod golden {
    const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/codecs/");

    pub fn read(name: &str) -> Vec<u8> {
        std::fs::read(format!("{DIR}{name}")).expect("golden vector present")
    }

    pub fn s16le(bytes: &[u8]) -> Vec<i16> {
        bytes
            .chunks_exact(2)
            .map(|c| i16::from_le_bytes([c[0], c[1]]))
            .collect()
    }
}

/// A codec we offer and accept on the RTP side.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Codec {
    /// G.711 μ-law.
    Pcmu,
    /// G.711 A-law.
    Pcma,
    /// G.722 at 64 kbit/s (wideband).
    G722,
}

impl Codec {
    /// Every supported codec, in our default order of preference for offers (G.711 first:
    /// every trunk runs it, and the agent side is narrowband by default).
    pub const ALL: [Codec; 3] = [Codec::Pcmu, Codec::Pcma, Codec::G722];

    /// The static RTP payload type (RFC 3551 table 4).
    pub const fn payload_type(self) -> u8 {
        match self {
            Codec::Pcmu => 0,
            Codec::Pcma => 8,
            Codec::G722 => 9,
        }
    }

    /// The codec for a static payload type, if we support it.
    pub const fn from_payload_type(pt: u8) -> Option<Self> {
        match pt {
            0 => Some(Codec::Pcmu),
            8 => Some(Codec::Pcma),
            9 => Some(Codec::G722),
            _ => None,
        }
    }

    /// The encoding name in `a=rtpmap` (RFC 3551, RFC 4856).
    pub const fn encoding_name(self) -> &'static str {
        match self {
            Codec::Pcmu => "PCMU",
            Codec::Pcma => "PCMA",
            Codec::G722 => "G722",
        }
    }

    /// The codec with this encoding name, in any case (`PCMU`, `pcma`, `G722`).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.encoding_name().eq_ignore_ascii_case(name))
    }

    /// The codec named in an `a=rtpmap` line. Encoding names are case-insensitive
    /// (RFC 4855 §3); the clock rate must be the one RFC 3551 assigns.
    pub fn from_rtpmap(name: &str, clock_rate: u32) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.encoding_name().eq_ignore_ascii_case(name) && k.clock_rate() == clock_rate)
    }

    /// The RTP clock rate, as advertised in SDP. G.722 says 8000 although it samples at
    /// 16 kHz: an erratum frozen into RFC 1890 and kept by RFC 3551 §4.5.2.
    pub const fn clock_rate(self) -> u32 {
        8000
    }

    /// The rate of the PCM the codec encodes from and decodes to.
    pub const fn sample_rate(self) -> u32 {
        match self {
            Codec::Pcmu | Codec::Pcma => 8000,
            Codec::G722 => 16000,
        }
    }

    /// PCM samples (at [`sample_rate`](Self::sample_rate)) in `ms` milliseconds.
    pub const fn pcm_samples(self, ms: u32) -> usize {
        (self.sample_rate() / 1000 * ms) as usize
    }

    /// Payload bytes in `ms` milliseconds: all three run at 64 kbit/s, 8 bytes per ms.
    pub const fn payload_len(self, ms: u32) -> usize {
        (8 * ms) as usize
    }

    /// How far the RTP timestamp advances in `ms` milliseconds (clock rate, not sample
    /// rate: 160 per 20 ms for G.722 too).
    pub const fn timestamp_increment(self, ms: u32) -> u32 {
        self.clock_rate() / 1000 * ms
    }

    /// The payload byte that decodes to (near) silence, for filling gaps without encoding.
    /// G.722 has no such constant byte (it is adaptive), so it has none.
    pub const fn silence_byte(self) -> Option<u8> {
        match self {
            Codec::Pcmu => Some(g711::ULAW_SILENCE),
            Codec::Pcma => Some(g711::ALAW_SILENCE),
            Codec::G722 => None,
        }
    }
}

/// Encoder state for one direction of one call. G.722's state is boxed so the enum stays
/// small; the box is made once per call, never per packet.
#[derive(Clone, Debug)]
pub enum Encoder {
    Pcmu,
    Pcma,
    G722(Box<G722Encoder>),
}

impl Encoder {
    /// A fresh encoder for `kind`.
    pub fn new(kind: Codec) -> Self {
        match kind {
            Codec::Pcmu => Encoder::Pcmu,
            Codec::Pcma => Encoder::Pcma,
            Codec::G722 => Encoder::G722(Box::default()),
        }
    }

    /// Which codec this encodes.
    pub fn kind(&self) -> Codec {
        match self {
            Encoder::Pcmu => Codec::Pcmu,
            Encoder::Pcma => Codec::Pcma,
            Encoder::G722(_) => Codec::G722,
        }
    }

    /// Encodes PCM at the codec's sample rate into `out`; returns the bytes written
    /// (limited by either buffer; 160 for a 20 ms frame of any of the three codecs).
    pub fn encode(&mut self, pcm: &[i16], out: &mut [u8]) -> usize {
        match self {
            Encoder::Pcmu => g711::encode_ulaw(pcm, out),
            Encoder::Pcma => g711::encode_alaw(pcm, out),
            Encoder::G722(enc) => enc.encode(pcm, out),
        }
    }
}

/// Decoder state for one direction of one call.
#[derive(Clone, Debug)]
pub enum Decoder {
    Pcmu,
    Pcma,
    G722(Box<G722Decoder>),
}

impl Decoder {
    /// A fresh decoder for `kind`.
    pub fn new(kind: Codec) -> Self {
        match kind {
            Codec::Pcmu => Decoder::Pcmu,
            Codec::Pcma => Decoder::Pcma,
            Codec::G722 => Decoder::G722(Box::default()),
        }
    }

    /// Which codec this decodes.
    pub fn kind(&self) -> Codec {
        match self {
            Decoder::Pcmu => Codec::Pcmu,
            Decoder::Pcma => Codec::Pcma,
            Decoder::G722(_) => Codec::G722,
        }
    }

    /// Decodes one RTP payload to PCM at the codec's sample rate; returns the samples
    /// written (limited by either buffer; 160 or 320 for a 20 ms frame).
    pub fn decode(&mut self, payload: &[u8], out: &mut [i16]) -> usize {
        match self {
            Decoder::Pcmu => g711::decode_ulaw(payload, out),
            Decoder::Pcma => g711::decode_alaw(payload, out),
            Decoder::G722(dec) => dec.decode(payload, out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_in_any_case() {
        assert_eq!(Codec::from_name("pcmu"), Some(Codec::Pcmu));
        assert_eq!(Codec::from_name("g722"), Some(Codec::G722));
        assert_eq!(Codec::from_name("opus"), None);
        assert_eq!(Codec::from_rtpmap("pcma", 8000), Some(Codec::Pcma));
        assert_eq!(Codec::from_rtpmap("PCMA", 16000), None);
    }

    #[test]
    fn sdp_and_rtp_facts() {
        let facts: Vec<_> = Codec::ALL
            .iter()
            .map(|k| {
                (
                    k.payload_type(),
                    k.encoding_name(),
                    k.clock_rate(),
                    k.sample_rate(),
                    k.pcm_samples(20),
                    k.payload_len(20),
                    k.timestamp_increment(20),
                )
            })
            .collect();
        assert_eq!(
            facts,
            [
                (0, "PCMU", 8000, 8000, 160, 160, 160),
                (8, "PCMA", 8000, 8000, 160, 160, 160),
                (9, "G722", 8000, 16000, 320, 160, 160),
            ]
        );
        for k in Codec::ALL {
            assert_eq!(Codec::from_payload_type(k.payload_type()), Some(k));
            assert_eq!(Codec::from_rtpmap(k.encoding_name(), 8000), Some(k));
        }
        assert_eq!(Codec::from_rtpmap("g722", 8000), Some(Codec::G722));
        assert_eq!(Codec::from_rtpmap("G722", 16000), None);
        assert_eq!(Codec::from_rtpmap("opus", 48000), None);
        assert_eq!(Codec::from_payload_type(18), None);
    }

    #[test]
    fn twenty_ms_frames_round_trip_through_every_codec() {
        for kind in Codec::ALL {
            let mut enc = Encoder::new(kind);
            let mut dec = Decoder::new(kind);
            assert_eq!((enc.kind(), dec.kind()), (kind, kind));
            let n = kind.pcm_samples(20);
            let rate = kind.sample_rate() as f64;
            let mut pcm = [0i16; 320];
            let mut payload = [0u8; 160];
            let mut back = [0i16; 320];
            let mut err = 0f64;
            let mut sig = 0f64;
            for frame in 0..25 {
                for (i, s) in pcm[..n].iter_mut().enumerate() {
                    let t = (frame * n + i) as f64 / rate;
                    *s = (8000.0 * (2.0 * std::f64::consts::PI * 440.0 * t).sin()) as i16;
                }
                assert_eq!(enc.encode(&pcm[..n], &mut payload), 160);
                assert_eq!(dec.decode(&payload, &mut back), n);
                if frame >= 5 && kind != Codec::G722 {
                    for i in 0..n {
                        err += (pcm[i] as f64 - back[i] as f64).powi(2);
                        sig += (pcm[i] as f64).powi(2);
                    }
                }
            }
            if kind != Codec::G722 {
                // G.711 is ~38 dB SNR for a mid-level tone.
                assert!(10.0 * (sig / err).log10() > 30.0, "{kind:?}");
            }
        }
    }

    #[test]
    fn silence_bytes_decode_to_near_zero() {
        for kind in [Codec::Pcmu, Codec::Pcma] {
            let byte = kind.silence_byte().expect("G.711 has a silence byte");
            let mut out = [1i16; 4];
            assert_eq!(Decoder::new(kind).decode(&[byte; 4], &mut out), 4);
            // A-law has no exact zero: its quietest level is ±8.
            assert!(out.iter().all(|s| s.abs() <= 8), "{kind:?} {out:?}");
        }
        assert_eq!(Codec::G722.silence_byte(), None);
    }

    #[test]
    fn short_buffers_return_what_was_written() {
        for kind in Codec::ALL {
            let mut out = [0u8; 10];
            assert!(Encoder::new(kind).encode(&[0; 7], &mut out) <= 7);
            let mut pcm = [0i16; 3];
            assert!(Decoder::new(kind).decode(&[0x55; 160], &mut pcm) <= 3);
            assert_eq!(Decoder::new(kind).decode(&[], &mut pcm), 0);
        }
    }
}
