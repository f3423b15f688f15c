//! Media processing for a call: the RTP codecs and the sample-rate conversion between
//! the caller's codec and the agent's audio format.
//!
//! Per 20 ms packet the media task decodes the payload to PCM at the codec's native rate
//! ([`codec::Decoder`]), resamples it to the agent's rate ([`resample::Resampler`]) and
//! the reverse for agent audio. Both sides work on caller-provided buffers and keep their
//! state per call, so the per-packet path never allocates. Where caller and agent are
//! both μ-law 8 kHz nothing here is needed; PCMA ↔ μ-law is a table lookup per byte
//! ([`codec::g711::transcode_alaw_to_ulaw`]).

pub mod codec;
pub mod resample;
