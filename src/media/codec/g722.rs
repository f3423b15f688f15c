//! ITU-T G.722 at 64 kbit/s: 16 kHz PCM split by a 24-tap QMF into two 8 kHz sub-bands,
//! the lower band coded with 6-bit ADPCM and the higher band with 2-bit ADPCM, one byte
//! per pair of input samples (`ihigh << 6 | ilow`).
//!
//! Written from the algorithm description in ITU-T G.722 (blocks 1L–6L, 1H–6H and the
//! transmit/receive QMF). All arithmetic is the standard's fixed-point arithmetic, so the
//! output is bit-exact with the ITU reference and libg722 (tested against libg722 1.2.8
//! vectors). Both step sizes start at their minimum (`det` = 32 low, 8 high), as the
//! standard's reset state requires.
//!
//! State is carried across calls, so a call's audio can be coded in any chunking (an odd
//! trailing sample given to the encoder is ignored: the caller should feed whole frames).

/// Even-indexed QMF coefficients h(0), h(2), …, h(22). The odd ones are these reversed
/// (the 24-tap filter is symmetric), so twelve numbers describe the whole filter.
const QMF: [i32; 12] = [3, -11, 12, 32, -210, 951, 3876, -805, 362, -156, 53, -11];

/// Block 1L: decision levels of the 6-bit lower-band quantizer, in units of `det / 4096`.
const Q6_LEVELS: [i32; 30] = [
    0, 35, 72, 110, 150, 190, 233, 276, 323, 370, 422, 473, 530, 587, 650, 714, 786, 858, 940,
    1023, 1121, 1219, 1339, 1458, 1612, 1765, 1980, 2195, 2557, 2919,
];
/// Block 1L: 6-bit code for interval `mi` (index) of a negative difference.
const ILN: [u8; 31] = [
    0, 63, 62, 31, 30, 29, 28, 27, 26, 25, 24, 23, 22, 21, 20, 19, 18, 17, 16, 15, 14, 13, 12, 11,
    10, 9, 8, 7, 6, 5, 4,
];
/// Block 1L: 6-bit code for interval `mi` (index) of a non-negative difference.
const ILP: [u8; 31] = [
    0, 61, 60, 59, 58, 57, 56, 55, 54, 53, 52, 51, 50, 49, 48, 47, 46, 45, 44, 43, 42, 41, 40, 39,
    38, 37, 36, 35, 34, 33, 32,
];
/// Block 2L: 4-bit inverse quantizer (the embedded core the predictor runs on), ×8.
const QM4: [i32; 16] = [
    0, -20456, -12896, -8968, -6288, -4240, -2584, -1200, 20456, 12896, 8968, 6288, 4240, 2584,
    1200, 0,
];
/// Block 5L: 6-bit inverse quantizer used for the 64 kbit/s decoder output, ×8.
const QM6: [i32; 64] = [
    -136, -136, -136, -136, -24808, -21904, -19008, -16704, -14984, -13512, -12280, -11192, -10232,
    -9360, -8576, -7856, -7192, -6576, -6000, -5456, -4944, -4464, -4008, -3576, -3168, -2776,
    -2400, -2032, -1688, -1360, -1040, -728, 24808, 21904, 19008, 16704, 14984, 13512, 12280,
    11192, 10232, 9360, 8576, 7856, 7192, 6576, 6000, 5456, 4944, 4464, 4008, 3576, 3168, 2776,
    2400, 2032, 1688, 1360, 1040, 728, 432, 136, -432, -136,
];
/// Block 3L: 4-bit code → magnitude class for the log scale factor update.
const RL42: [usize; 16] = [0, 7, 6, 5, 4, 3, 2, 1, 7, 6, 5, 4, 3, 2, 1, 0];
/// Block 3L: log scale factor multipliers per magnitude class.
const WL: [i32; 8] = [-60, -30, 58, 172, 334, 538, 1198, 3042];
/// Blocks 3L/3H: 2^(i/32) × 2048, the mantissa of the linear step size.
const ILB: [i32; 32] = [
    2048, 2093, 2139, 2186, 2233, 2282, 2332, 2383, 2435, 2489, 2543, 2599, 2656, 2714, 2774, 2834,
    2896, 2960, 3025, 3091, 3158, 3228, 3298, 3371, 3444, 3520, 3597, 3676, 3756, 3838, 3922, 4008,
];
/// Block 2H: 2-bit inverse quantizer, ×8.
const QM2: [i32; 4] = [-7408, -1616, 7408, 1616];
/// Block 3H: 2-bit code → magnitude class, and the multipliers per class.
const RH2: [usize; 4] = [2, 1, 2, 1];
const WH: [i32; 3] = [0, -214, 798];

/// Limits to the 16-bit range, as every ITU fixed-point add does.
#[inline]
fn sat(v: i32) -> i32 {
    v.clamp(i16::MIN as i32, i16::MAX as i32)
}

/// The adaptive part shared by both sub-bands: step size (blocks 3L/3H) and the
/// pole-zero predictor (block 4).
#[derive(Clone, Debug)]
struct Band {
    /// Predicted signal (SL/SH).
    s: i32,
    /// Zero-section part of the prediction (SZL/SZH).
    sz: i32,
    /// Reconstructed signal, one and two samples ago.
    r: [i32; 2],
    /// Partially reconstructed signal (sz + d), one and two samples ago.
    p: [i32; 2],
    /// Pole coefficients a1, a2.
    a: [i32; 2],
    /// Quantized differences, one to six samples ago.
    d: [i32; 6],
    /// Zero coefficients b1..b6.
    b: [i32; 6],
    /// Log scale factor (NBL/NBH).
    nb: i32,
    /// Linear step size (DETL/DETH).
    det: i32,
}

impl Band {
    const fn new(det: i32) -> Self {
        Band {
            s: 0,
            sz: 0,
            r: [0; 2],
            p: [0; 2],
            a: [0; 2],
            d: [0; 6],
            b: [0; 6],
            nb: 0,
            det,
        }
    }

    /// Blocks 3L/3H (LOGSCL/SCALEL, LOGSCH/SCALEH): leak the log scale factor, add the
    /// code's multiplier, clamp, and convert back to a linear step size. `base` is 8 for
    /// the lower band and 10 for the higher one (their minimum steps are 32 and 8).
    #[inline]
    fn adapt_scale(&mut self, multiplier: i32, nb_max: i32, base: i32) {
        let nb = ((self.nb * 127) >> 7) + multiplier;
        self.nb = nb.clamp(0, nb_max);
        let mantissa = ILB[((self.nb >> 6) & 31) as usize];
        let shift = base - (self.nb >> 11);
        let det = if shift < 0 {
            mantissa << -shift
        } else {
            mantissa >> shift
        };
        self.det = det << 2;
    }

    /// Block 4: reconstruct, adapt the predictor with the quantized difference `dq`, and
    /// compute the next prediction.
    fn adapt_predictor(&mut self, dq: i32) {
        // RECONS and PARREC.
        let r0 = sat(self.s + dq);
        let p0 = sat(self.sz + dq);
        let neg0 = p0 < 0;
        let same1 = neg0 == (self.p[0] < 0);
        let same2 = neg0 == (self.p[1] < 0);

        // UPPOL2: second pole coefficient.
        let wd1 = sat(self.a[0] << 2);
        let wd2 = if same1 { -wd1 } else { wd1 }.min(i16::MAX as i32);
        let a2 = (if same2 { 128 } else { -128 } + (wd2 >> 7) + ((self.a[1] * 32512) >> 15))
            .clamp(-12288, 12288);

        // UPPOL1: first pole coefficient, kept inside the stability triangle.
        let a1 = sat(if same1 { 192 } else { -192 } + ((self.a[0] * 32640) >> 15));
        let limit = sat(15360 - a2);
        let a1 = a1.clamp(-limit, limit);

        // UPZERO: sign-sign update of the six zero coefficients.
        let step = if dq == 0 { 0 } else { 128 };
        let dneg = dq < 0;
        for (b, &d) in self.b.iter_mut().zip(&self.d) {
            let w = if (d < 0) == dneg { step } else { -step };
            *b = sat(w + ((*b * 32640) >> 15));
        }

        // DELAYA.
        self.d.copy_within(0..5, 1);
        self.d[0] = dq;
        self.r = [r0, self.r[0]];
        self.p = [p0, self.p[0]];
        self.a = [a1, a2];

        // FILTEP, FILTEZ and PREDIC.
        let sp = sat(((a1 * sat(self.r[0] * 2)) >> 15) + ((a2 * sat(self.r[1] * 2)) >> 15));
        let mut sz = 0;
        for (&b, &d) in self.b.iter().zip(&self.d) {
            sz += (b * sat(d * 2)) >> 15;
        }
        self.sz = sat(sz);
        self.s = sat(sp + self.sz);
    }

    /// Lower-band adaptation after code `ilow` (6 bits) was sent or received: only the
    /// 4-bit core drives the predictor, so 48/56/64 kbit/s decoders stay in step.
    #[inline]
    fn update_low(&mut self, ilow: usize) {
        let core = ilow >> 2;
        let dq = (self.det * QM4[core]) >> 15;
        self.adapt_scale(WL[RL42[core]], 18432, 8);
        self.adapt_predictor(dq);
    }

    /// Higher-band adaptation after 2-bit code `ihigh`; returns the quantized difference.
    #[inline]
    fn update_high(&mut self, ihigh: usize) -> i32 {
        let dq = (self.det * QM2[ihigh]) >> 15;
        self.adapt_scale(WH[RH2[ihigh]], 22528, 10);
        self.adapt_predictor(dq);
        dq
    }
}

/// G.722 64 kbit/s encoder for one direction of one call.
#[derive(Clone, Debug)]
pub struct G722Encoder {
    /// Last 24 input samples, oldest first.
    qmf: [i32; 24],
    low: Band,
    high: Band,
}

impl Default for G722Encoder {
    fn default() -> Self {
        Self::new()
    }
}

impl G722Encoder {
    /// A fresh encoder in the standard's reset state.
    pub const fn new() -> Self {
        G722Encoder {
            qmf: [0; 24],
            low: Band::new(32),
            high: Band::new(8),
        }
    }

    /// Encodes 16 kHz PCM, two samples per output byte. Returns the number of bytes
    /// written: `min(pcm16k.len() / 2, out.len())`. A trailing odd sample is ignored.
    pub fn encode(&mut self, pcm16k: &[i16], out: &mut [u8]) -> usize {
        let mut n = 0;
        for (o, pair) in out.iter_mut().zip(pcm16k.chunks_exact(2)) {
            *o = self.encode_pair(pair[0], pair[1]);
            n += 1;
        }
        n
    }

    fn encode_pair(&mut self, x0: i16, x1: i16) -> u8 {
        // Transmit QMF: split into lower and higher band, one sample each per pair.
        self.qmf.copy_within(2..24, 0);
        self.qmf[22] = x0 as i32;
        self.qmf[23] = x1 as i32;
        let (mut even, mut odd) = (0i32, 0i32);
        for (i, &h) in QMF.iter().enumerate() {
            even += self.qmf[2 * i + 1] * QMF[11 - i];
            odd += self.qmf[2 * i] * h;
        }
        let xlow = (even + odd) >> 14;
        let xhigh = (even - odd) >> 14;

        // Block 1L: quantize the lower-band prediction error to 6 bits.
        let el = sat(xlow - self.low.s);
        let mag = if el >= 0 { el } else { -(el + 1) };
        let mut mi = 1;
        while mi < 30 && mag >= (Q6_LEVELS[mi] * self.low.det) >> 12 {
            mi += 1;
        }
        let ilow = if el < 0 { ILN[mi] } else { ILP[mi] };
        self.low.update_low(ilow as usize);

        // Block 1H: quantize the higher-band prediction error to 2 bits.
        let eh = sat(xhigh - self.high.s);
        let mag = if eh >= 0 { eh } else { -(eh + 1) };
        let large = mag >= (564 * self.high.det) >> 12;
        let ihigh: u8 = match (eh < 0, large) {
            (true, true) => 0,
            (true, false) => 1,
            (false, true) => 2,
            (false, false) => 3,
        };
        self.high.update_high(ihigh as usize);

        (ihigh << 6) | ilow
    }
}

/// G.722 64 kbit/s decoder for one direction of one call.
#[derive(Clone, Debug)]
pub struct G722Decoder {
    /// Last 12 (sum, difference) pairs of the sub-band signals, interleaved, oldest first.
    qmf: [i32; 24],
    low: Band,
    high: Band,
}

impl Default for G722Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl G722Decoder {
    /// A fresh decoder in the standard's reset state.
    pub const fn new() -> Self {
        G722Decoder {
            qmf: [0; 24],
            low: Band::new(32),
            high: Band::new(8),
        }
    }

    /// Decodes G.722 bytes to 16 kHz PCM, two samples per byte. Returns the number of
    /// samples written: `2 * min(data.len(), out.len() / 2)`.
    pub fn decode(&mut self, data: &[u8], out: &mut [i16]) -> usize {
        let mut n = 0;
        for (pair, &code) in out.chunks_exact_mut(2).zip(data) {
            let (y0, y1) = self.decode_byte(code);
            pair[0] = y0;
            pair[1] = y1;
            n += 2;
        }
        n
    }

    fn decode_byte(&mut self, code: u8) -> (i16, i16) {
        let ilow = (code & 0x3F) as usize;
        let ihigh = (code >> 6) as usize;

        // Blocks 5L/6L: lower-band output from the full 6-bit code, then adaptation.
        let rlow = (self.low.s + ((self.low.det * QM6[ilow]) >> 15)).clamp(-16384, 16383);
        self.low.update_low(ilow);

        // Blocks 5H/6H: higher-band output and adaptation.
        let predicted = self.high.s;
        let dq = self.high.update_high(ihigh);
        let rhigh = (predicted + dq).clamp(-16384, 16383);

        // Receive QMF: interleave sum and difference, filter, upsample to 16 kHz.
        self.qmf.copy_within(2..24, 0);
        self.qmf[22] = rlow + rhigh;
        self.qmf[23] = rlow - rhigh;
        let (mut first, mut second) = (0i32, 0i32);
        for (i, &h) in QMF.iter().enumerate() {
            first += self.qmf[2 * i + 1] * QMF[11 - i];
            second += self.qmf[2 * i] * h;
        }
        (sat(first >> 11) as i16, sat(second >> 11) as i16)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::media::codec::golden::{read, s16le};

    fn first_difference<T: PartialEq>(a: &[T], b: &[T]) -> Option<usize> {
        a.iter().zip(b).position(|(x, y)| x != y)
    }

    #[test]
    fn encoder_matches_libg722_in_20ms_frames() {
        let pcm = s16le(&read("g722_input_16k_s16le.raw"));
        let want = read("g722_64000_encoded.bin");
        assert_eq!(pcm.len(), want.len() * 2);
        let mut enc = G722Encoder::new();
        let mut got = vec![0u8; want.len()];
        for (frame_in, frame_out) in pcm.chunks(320).zip(got.chunks_mut(160)) {
            assert_eq!(enc.encode(frame_in, frame_out), 160);
        }
        assert_eq!(first_difference(&got, &want), None);
    }

    #[test]
    fn decoder_matches_libg722_in_20ms_frames() {
        let data = read("g722_64000_encoded.bin");
        let want = s16le(&read("g722_64000_decoded_16k_s16le.raw"));
        let mut dec = G722Decoder::new();
        let mut got = vec![0i16; want.len()];
        for (frame_in, frame_out) in data.chunks(160).zip(got.chunks_mut(320)) {
            assert_eq!(dec.decode(frame_in, frame_out), 320);
        }
        assert_eq!(first_difference(&got, &want), None);
    }

    /// Saturation paths (full-scale squares, noise, Nyquist) against libg722, made by
    /// `tests/data/codecs/gen_g722_stress.py`.
    #[test]
    fn stress_vectors_match_libg722() {
        let pcm = s16le(&read("g722_stress_input_16k_s16le.raw"));
        let want = read("g722_stress_encoded.bin");
        let mut got = vec![0u8; want.len()];
        assert_eq!(G722Encoder::new().encode(&pcm, &mut got), want.len());
        assert_eq!(first_difference(&got, &want), None);

        let want = s16le(&read("g722_stress_decoded_16k_s16le.raw"));
        let mut pcm_out = vec![0i16; want.len()];
        G722Decoder::new().decode(&got, &mut pcm_out);
        assert_eq!(first_difference(&pcm_out, &want), None);
    }

    /// Arbitrary bytes exercise every code in every decoder state, including the unused
    /// lower-band codes 0–3 and outputs at both rails.
    #[test]
    fn random_bytes_decode_like_libg722() {
        let data = read("g722_random_bytes.bin");
        let want = s16le(&read("g722_random_bytes_decoded_16k_s16le.raw"));
        let mut got = vec![0i16; want.len()];
        assert_eq!(G722Decoder::new().decode(&data, &mut got), want.len());
        assert_eq!(first_difference(&got, &want), None);
    }

    #[test]
    fn chunking_does_not_change_the_result() {
        let pcm = s16le(&read("g722_input_16k_s16le.raw"));
        let pcm = &pcm[..16000];
        let mut whole = vec![0u8; 8000];
        G722Encoder::new().encode(pcm, &mut whole);
        let mut enc = G722Encoder::new();
        let mut pieces = vec![0u8; 8000];
        let mut at = 0;
        for chunk in pcm.chunks(14) {
            at += enc.encode(chunk, &mut pieces[at..]);
        }
        assert_eq!(at, 8000);
        assert_eq!(whole, pieces);

        let mut whole_pcm = vec![0i16; 16000];
        G722Decoder::new().decode(&whole, &mut whole_pcm);
        let mut dec = G722Decoder::new();
        let mut pieces_pcm = vec![0i16; 16000];
        let mut at = 0;
        for chunk in whole.chunks(3) {
            at += dec.decode(chunk, &mut pieces_pcm[at..]);
        }
        assert_eq!(at, 16000);
        assert_eq!(whole_pcm, pieces_pcm);
    }

    #[test]
    fn odd_lengths_and_short_buffers_never_panic() {
        let mut enc = G722Encoder::new();
        let mut out = [0u8; 2];
        assert_eq!(enc.encode(&[1, 2, 3], &mut out), 1);
        assert_eq!(enc.encode(&[0; 10], &mut out), 2);
        assert_eq!(enc.encode(&[0; 10], &mut []), 0);
        assert_eq!(enc.encode(&[], &mut out), 0);
        let mut dec = G722Decoder::new();
        let mut pcm = [0i16; 5];
        assert_eq!(dec.decode(&[0xFF; 4], &mut pcm), 4);
        assert_eq!(dec.decode(&[0xFF; 4], &mut pcm[..1]), 0);
        assert_eq!(dec.decode(&[], &mut pcm), 0);
    }

    #[test]
    fn extreme_inputs_stay_in_range() {
        // Full-scale square waves and every code drive saturation paths; nothing may panic
        // and a decoded full-scale tone must come back loud.
        let mut enc = G722Encoder::new();
        let mut dec = G722Decoder::new();
        let pcm: Vec<i16> = (0..3200)
            .map(|i| if (i / 8) % 2 == 0 { i16::MAX } else { i16::MIN })
            .collect();
        let mut coded = vec![0u8; 1600];
        assert_eq!(enc.encode(&pcm, &mut coded), 1600);
        let mut back = vec![0i16; 3200];
        assert_eq!(dec.decode(&coded, &mut back), 3200);
        let peak = back[1600..].iter().map(|&s| (s as i32).abs()).max();
        assert!(peak > Some(20000), "peak {peak:?}");
        let every: Vec<u8> = (0..=255).cycle().take(4096).collect();
        let mut out = vec![0i16; 8192];
        assert_eq!(G722Decoder::new().decode(&every, &mut out), 8192);
    }
}
