//! Media for a call, as sans-IO cores the per-call media task drives: RTP and RTCP
//! packets, the codecs and sample-rate conversion between the caller's codec and the
//! agent's audio format, RFC 4733 DTMF, the inbound jitter buffer and the outbound
//! playout clock.
//!
//! Per 20 ms packet the media task decodes the payload to PCM at the codec's native rate
//! ([`codec::Decoder`]), resamples it to the agent's rate ([`resample::Resampler`]) and
//! the reverse for agent audio. Every core works on caller-provided buffers and keeps its
//! state per call, so the per-packet path never allocates. Where caller and agent are
//! both μ-law 8 kHz no transcoding is needed; PCMA ↔ μ-law is a table lookup per byte
//! ([`codec::g711::transcode_alaw_to_ulaw`]).
//!
//! [`session`] is the per-call task that drives all of these between the call's RTP socket
//! pair (from the [`ports`] pool) and the agent bridge's channels.

pub mod codec;
pub mod dtmf;
pub mod jitter;
pub mod playout;
pub mod ports;
pub mod resample;
pub mod rtcp;
pub mod rtp;
pub mod session;
pub mod srtp;
