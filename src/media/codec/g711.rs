//! G.711 μ-law (PCMU) and A-law (PCMA), bit-exact with the classic Sun reference
//! conversion (the one behind CPython's `audioop` and most telephony stacks).
//!
//! Encoding is branch-light bit arithmetic (segment = position of the highest set bit),
//! decoding is a 256-entry table built at compile time. Slice functions write
//! `min(input.len(), output.len())` items and return that count; they never panic and
//! never allocate.

/// μ-law's encoder clips the 14-bit magnitude here (8159 + 33 bias = 2^13, the top of the
/// last segment). We clip one lower so the biased value stays inside segment 7; both give
/// the same code (0x7F before inversion).
const ULAW_CLIP: i32 = 8158;
/// μ-law bias (0x84 in 16-bit units) expressed in 14-bit units.
const ULAW_BIAS: i32 = 0x84 >> 2;

/// Encodes one linear sample to μ-law.
#[inline]
pub const fn linear_to_ulaw(sample: i16) -> u8 {
    // Work on the top 14 bits, flooring like an arithmetic shift (as the reference does).
    let v = (sample as i32) >> 2;
    let (mag, mask) = if v < 0 { (-v, 0x7F) } else { (v, 0xFF) };
    let mag = if mag > ULAW_CLIP { ULAW_CLIP } else { mag } + ULAW_BIAS;
    // mag is in 33..=8191: bits 5..=12 select segments 0..=7.
    let top = 31 - mag.leading_zeros() as i32;
    let seg = top - 5;
    let code = (seg << 4) | ((mag >> (seg + 1)) & 0x0F);
    (code ^ mask) as u8
}

/// Encodes one linear sample to A-law.
#[inline]
pub const fn linear_to_alaw(sample: i16) -> u8 {
    // A-law works on the top 13 bits; negative values use the one's complement magnitude.
    let v = (sample as i32) >> 3;
    let (mag, mask) = if v >= 0 { (v, 0xD5) } else { (-v - 1, 0x55) };
    // mag is in 0..=4095. Segment 0 covers 0..=31, then one segment per extra bit.
    let top = 31 - (mag | 1).leading_zeros() as i32;
    let seg = if top < 5 { 0 } else { top - 4 };
    let shift = if seg < 2 { 1 } else { seg };
    let code = (seg << 4) | ((mag >> shift) & 0x0F);
    (code ^ mask) as u8
}

/// Decodes one μ-law byte (the computation behind [`ulaw_to_linear`]'s table).
const fn ulaw_decode_calc(byte: u8) -> i16 {
    let u = !byte;
    let t = (((u & 0x0F) as i32) << 3) + 0x84;
    let t = t << ((u & 0x70) >> 4);
    (if u & 0x80 != 0 { 0x84 - t } else { t - 0x84 }) as i16
}

/// Decodes one A-law byte (the computation behind [`alaw_to_linear`]'s table).
const fn alaw_decode_calc(byte: u8) -> i16 {
    let a = byte ^ 0x55;
    let mut t = ((a & 0x0F) as i32) << 4;
    let seg = ((a & 0x70) >> 4) as i32;
    t += if seg == 0 { 8 } else { 0x108 };
    if seg > 1 {
        t <<= seg - 1;
    }
    (if a & 0x80 != 0 { t } else { -t }) as i16
}

const ULAW_TO_LINEAR: [i16; 256] = {
    let mut table = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = ulaw_decode_calc(i as u8);
        i += 1;
    }
    table
};

const ALAW_TO_LINEAR: [i16; 256] = {
    let mut table = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = alaw_decode_calc(i as u8);
        i += 1;
    }
    table
};

/// μ-law → A-law via the linear value; a table so transcoding is one lookup per byte.
const ULAW_TO_ALAW: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = linear_to_alaw(ULAW_TO_LINEAR[i]);
        i += 1;
    }
    table
};

/// A-law → μ-law via the linear value.
const ALAW_TO_ULAW: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = linear_to_ulaw(ALAW_TO_LINEAR[i]);
        i += 1;
    }
    table
};

/// Decodes one μ-law byte.
#[inline]
pub const fn ulaw_to_linear(byte: u8) -> i16 {
    ULAW_TO_LINEAR[byte as usize]
}

/// Decodes one A-law byte.
#[inline]
pub const fn alaw_to_linear(byte: u8) -> i16 {
    ALAW_TO_LINEAR[byte as usize]
}

/// Transcodes one μ-law byte to A-law; identical to decoding and re-encoding.
#[inline]
pub const fn ulaw_to_alaw(byte: u8) -> u8 {
    ULAW_TO_ALAW[byte as usize]
}

/// Transcodes one A-law byte to μ-law; identical to decoding and re-encoding.
#[inline]
pub const fn alaw_to_ulaw(byte: u8) -> u8 {
    ALAW_TO_ULAW[byte as usize]
}

/// μ-law silence (the code for linear 0).
pub const ULAW_SILENCE: u8 = linear_to_ulaw(0);
/// A-law silence (the code for linear 0).
pub const ALAW_SILENCE: u8 = linear_to_alaw(0);

/// Writes `f` of each input into `out`, as far as both go; returns how many. The one loop
/// every conversion here is, so the per-packet path never allocates or panics on odd sizes.
#[inline]
fn convert<A: Copy, B>(input: &[A], out: &mut [B], f: impl Fn(A) -> B) -> usize {
    let n = input.len().min(out.len());
    for (o, &x) in out[..n].iter_mut().zip(&input[..n]) {
        *o = f(x);
    }
    n
}

/// Encodes PCM to μ-law; returns the number of bytes written.
pub fn encode_ulaw(pcm: &[i16], out: &mut [u8]) -> usize {
    convert(pcm, out, linear_to_ulaw)
}

/// Encodes PCM to A-law; returns the number of bytes written.
pub fn encode_alaw(pcm: &[i16], out: &mut [u8]) -> usize {
    convert(pcm, out, linear_to_alaw)
}

/// Decodes μ-law to PCM; returns the number of samples written.
pub fn decode_ulaw(data: &[u8], out: &mut [i16]) -> usize {
    convert(data, out, |b| ULAW_TO_LINEAR[b as usize])
}

/// Decodes A-law to PCM; returns the number of samples written.
pub fn decode_alaw(data: &[u8], out: &mut [i16]) -> usize {
    convert(data, out, |b| ALAW_TO_LINEAR[b as usize])
}

/// Transcodes μ-law to A-law without a PCM buffer; returns the number of bytes written.
pub fn transcode_ulaw_to_alaw(data: &[u8], out: &mut [u8]) -> usize {
    convert(data, out, |b| ULAW_TO_ALAW[b as usize])
}

/// Transcodes A-law to μ-law without a PCM buffer; returns the number of bytes written.
pub fn transcode_alaw_to_ulaw(data: &[u8], out: &mut [u8]) -> usize {
    convert(data, out, alaw_to_ulaw)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::media::codec::golden::{read, s16le};

    fn all_int16() -> Vec<i16> {
        (i16::MIN..=i16::MAX).collect()
    }

    #[test]
    fn ulaw_encode_matches_reference_for_every_int16() {
        let want = read("pcmu_encode_all_int16.bin");
        let pcm = all_int16();
        let mut got = vec![0u8; pcm.len()];
        assert_eq!(encode_ulaw(&pcm, &mut got), 65536);
        let bad: Vec<_> = (0..pcm.len()).filter(|&i| got[i] != want[i]).collect();
        assert!(
            bad.is_empty(),
            "{} mismatches, first at {}",
            bad.len(),
            pcm[bad[0]]
        );
    }

    #[test]
    fn alaw_encode_matches_reference_for_every_int16() {
        let want = read("pcma_encode_all_int16.bin");
        let pcm = all_int16();
        let mut got = vec![0u8; pcm.len()];
        assert_eq!(encode_alaw(&pcm, &mut got), 65536);
        let bad: Vec<_> = (0..pcm.len()).filter(|&i| got[i] != want[i]).collect();
        assert!(
            bad.is_empty(),
            "{} mismatches, first at {}",
            bad.len(),
            pcm[bad[0]]
        );
    }

    #[test]
    fn ulaw_decode_matches_reference_for_every_byte() {
        let want = s16le(&read("pcmu_decode_all_bytes_s16le.raw"));
        let bytes: Vec<u8> = (0..=255).collect();
        let mut got = [0i16; 256];
        assert_eq!(decode_ulaw(&bytes, &mut got), 256);
        assert_eq!(&got[..], &want[..]);
    }

    #[test]
    fn alaw_decode_matches_reference_for_every_byte() {
        let want = s16le(&read("pcma_decode_all_bytes_s16le.raw"));
        let bytes: Vec<u8> = (0..=255).collect();
        let mut got = [0i16; 256];
        assert_eq!(decode_alaw(&bytes, &mut got), 256);
        assert_eq!(&got[..], &want[..]);
    }

    #[test]
    fn decode_then_encode_is_identity_except_negative_zero() {
        for b in 0..=255u8 {
            let u = linear_to_ulaw(ulaw_to_linear(b));
            // μ-law has two zeros (0x7F and 0xFF); both decode to 0, which encodes to 0xFF.
            if b == 0x7F {
                assert_eq!(u, 0xFF);
            } else {
                assert_eq!(u, b, "ulaw {b:#04x}");
            }
            assert_eq!(linear_to_alaw(alaw_to_linear(b)), b, "alaw {b:#04x}");
        }
    }

    #[test]
    fn transcoding_equals_decode_then_encode() {
        let bytes: Vec<u8> = (0..=255).collect();
        let mut a = [0u8; 256];
        let mut u = [0u8; 256];
        transcode_ulaw_to_alaw(&bytes, &mut a);
        transcode_alaw_to_ulaw(&bytes, &mut u);
        for b in 0..=255u8 {
            assert_eq!(a[b as usize], linear_to_alaw(ulaw_to_linear(b)));
            assert_eq!(u[b as usize], linear_to_ulaw(alaw_to_linear(b)));
        }
        assert_eq!(ulaw_to_alaw(ULAW_SILENCE), ALAW_SILENCE);
        assert_eq!(ULAW_SILENCE, 0xFF);
        assert_eq!(ALAW_SILENCE, 0xD5);
    }

    #[test]
    fn short_output_buffers_write_what_fits() {
        let pcm = [0i16; 10];
        let mut out = [0u8; 4];
        assert_eq!(encode_ulaw(&pcm, &mut out), 4);
        assert_eq!(encode_alaw(&pcm, &mut []), 0);
        let mut pcm_out = [0i16; 3];
        assert_eq!(decode_alaw(&[0xD5; 8], &mut pcm_out), 3);
        assert_eq!(decode_ulaw(&[], &mut pcm_out), 0);
        assert_eq!(transcode_ulaw_to_alaw(&[0xFF; 2], &mut out), 2);
    }
}
