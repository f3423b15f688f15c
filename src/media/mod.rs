//! Media: RTP/RTCP, DTMF, jitter buffer and playout (temporary module file for the `rtp`
//! branch; the codec branch owns the real one).

pub mod dtmf;
pub mod jitter;
pub mod playout;
pub mod rtcp;
pub mod rtp;
