//! Audio: test tones and WAV files for the peers that play or record them, decoding RTP
//! payloads and agent media with the crate's own codecs, and finding a tone by Goertzel in
//! 20 ms frames.

use std::path::Path;

use dialtone::media::codec::{g711, Codec, Decoder};

use super::pcap::Rtp;

/// The test tone every pcap carries (scripts/make-test-audio.py).
pub const TONE_HZ: f64 = 1000.0;
/// The second tone in the G.722 pcap, above 4 kHz: it survives only a wideband path.
pub const HIGH_TONE_HZ: f64 = 5000.0;

/// Decodes the audio packets (payload type of `kind`) in arrival order, skipping others
/// (telephone-event, comfort noise).
pub fn decode_rtp(kind: Codec, packets: &[Rtp]) -> Vec<i16> {
    let mut dec = Decoder::new(kind);
    let mut out = Vec::new();
    let mut buf = vec![0i16; 4096];
    for p in packets.iter().filter(|p| p.pt == kind.payload_type()) {
        let n = dec.decode(&p.payload, &mut buf);
        out.extend_from_slice(&buf[..n]);
    }
    out
}

/// μ-law bytes to PCM.
pub fn ulaw_to_pcm(bytes: &[u8]) -> Vec<i16> {
    let mut out = vec![0i16; bytes.len()];
    let n = g711::decode_ulaw(bytes, &mut out);
    out.truncate(n);
    out
}

/// Signed 16-bit little-endian bytes to PCM.
pub fn l16le_to_pcm(bytes: &[u8]) -> Vec<i16> {
    bytes
        .chunks_exact(2)
        .map(|c| i16::from_le_bytes([c[0], c[1]]))
        .collect()
}

/// An agent's `audio_encoding`: the media type the gateway announces for it and its
/// sample rate.
pub fn agent_format(encoding: &str) -> (&'static str, u32) {
    match encoding {
        "mulaw_8000" => ("audio/x-mulaw", 8000),
        "pcm_16000" => ("audio/x-l16", 16000),
        "pcm_24000" => ("audio/x-l16", 24000),
        other => panic!("unknown audio_encoding {other}"),
    }
}

/// Bytes of 20 ms of audio in an agent's `audio_encoding` (μ-law: 1 per sample, L16: 2).
pub fn agent_bytes_per_20ms(encoding: &str) -> usize {
    let (media_type, rate) = agent_format(encoding);
    let width = if media_type == "audio/x-mulaw" { 1 } else { 2 };
    rate as usize / 50 * width
}

/// The agent's media payloads (per its `audio_encoding`) as PCM, and the sample rate.
pub fn agent_media_to_pcm(encoding: &str, payloads: &[Vec<u8>]) -> (Vec<i16>, u32) {
    let joined: Vec<u8> = payloads.concat();
    let (media_type, rate) = agent_format(encoding);
    let pcm = if media_type == "audio/x-mulaw" {
        ulaw_to_pcm(&joined)
    } else {
        l16le_to_pcm(&joined)
    };
    (pcm, rate)
}

/// Squared magnitude of the DFT of `x` at `hz` (Goertzel).
pub fn goertzel_power(x: &[i16], rate: u32, hz: f64) -> f64 {
    let w = 2.0 * std::f64::consts::PI * hz / rate as f64;
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &v in x {
        let s0 = v as f64 + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    s1 * s1 + s2 * s2 - coeff * s1 * s2
}

/// The share of a frame's energy that sits at `hz`: 1.0 for a pure tone of a whole
/// number of cycles, near 0 for silence, noise or another tone.
pub fn tone_fraction(frame: &[i16], rate: u32, hz: f64) -> f64 {
    let energy: f64 = frame.iter().map(|&v| (v as f64) * (v as f64)).sum();
    if energy <= 0.0 {
        return 0.0;
    }
    2.0 * goertzel_power(frame, rate, hz) / (frame.len() as f64 * energy)
}

/// Root mean square of a frame.
pub fn rms(frame: &[i16]) -> f64 {
    if frame.is_empty() {
        return 0.0;
    }
    let e: f64 = frame.iter().map(|&v| (v as f64) * (v as f64)).sum();
    (e / frame.len() as f64).sqrt()
}

/// Where a tone was found in 20 ms frames.
#[derive(Debug, Clone)]
pub struct ToneReport {
    pub frames: usize,
    /// Frames loud enough whose energy is mostly at the tone.
    pub tone_frames: usize,
    /// The longest run of consecutive tone frames.
    pub longest_run: usize,
    /// The first tone frame.
    pub first: Option<usize>,
    /// Mean tone fraction over the tone frames.
    pub mean_fraction: f64,
}

impl ToneReport {
    /// Seconds of audio with the tone in it.
    pub fn tone_seconds(&self) -> f64 {
        self.tone_frames as f64 * 0.02
    }
}

/// Finds `hz` in consecutive 20 ms frames of `pcm`: a frame counts when its RMS is at
/// least `min_rms` and at least `min_fraction` of its energy is at `hz`.
pub fn find_tone(pcm: &[i16], rate: u32, hz: f64, min_fraction: f64, min_rms: f64) -> ToneReport {
    let n = (rate / 50) as usize;
    let mut report = ToneReport {
        frames: 0,
        tone_frames: 0,
        longest_run: 0,
        first: None,
        mean_fraction: 0.0,
    };
    let mut run = 0;
    let mut sum = 0.0;
    for (i, frame) in pcm.chunks_exact(n).enumerate() {
        report.frames += 1;
        let frac = tone_fraction(frame, rate, hz);
        if rms(frame) >= min_rms && frac >= min_fraction {
            report.tone_frames += 1;
            report.first.get_or_insert(i);
            sum += frac;
            run += 1;
            report.longest_run = report.longest_run.max(run);
        } else {
            run = 0;
        }
    }
    if report.tone_frames > 0 {
        report.mean_fraction = sum / report.tone_frames as f64;
    }
    report
}

/// `n` samples of a sine at `hz` sampled at `rate`, amplitude 8000 (a quarter of full scale).
pub fn sine(rate: u32, hz: f64, n: usize) -> Vec<i16> {
    (0..n)
        .map(|i| {
            let t = i as f64 / f64::from(rate);
            (8000.0 * (2.0 * std::f64::consts::PI * hz * t).sin()) as i16
        })
        .collect()
}

/// Writes a mono 16-bit WAV file.
pub fn write_wav(path: &Path, rate: u32, samples: &[i16]) {
    let data_len = (samples.len() * 2) as u32;
    let mut out = Vec::with_capacity(44 + data_len as usize);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&rate.to_le_bytes());
    out.extend_from_slice(&(rate * 2).to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    for s in samples {
        out.extend_from_slice(&s.to_le_bytes());
    }
    std::fs::write(path, out).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Writes `seconds` of the 1 kHz test tone at `rate` (baresip's aufile microphone wants the
/// rate of the codec it sends: 8 kHz for G.711, 16 kHz for G.722).
pub fn write_tone_wav(path: &Path, rate: u32, seconds: usize) {
    write_wav(path, rate, &sine(rate, TONE_HZ, rate as usize * seconds));
}

/// Reads a mono 16-bit WAV file (such as baresip's sndfile recordings): samples and rate.
pub fn read_wav(path: &Path) -> (Vec<i16>, u32) {
    let raw = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let rate = u32::from_le_bytes(raw[24..28].try_into().unwrap());
    let data = raw
        .windows(4)
        .position(|w| w == b"data")
        .unwrap_or_else(|| panic!("{}: no data chunk", path.display()))
        + 8;
    (l16le_to_pcm(&raw[data..]), rate)
}
