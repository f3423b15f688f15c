//! What a session does to packets on the wire: nothing (plain RTP), or SRTP/SRTCP with one
//! [`SrtpContext`] per direction keyed from the negotiated SDES keys. Its failures are
//! [`DropCause`]s, counted like every other drop.

use super::{DropCause, DATAGRAM_BUF};
use crate::media::srtp::{SrtpContext, SrtpError};
use crate::sdp::SrtpKeys;

/// The session's packet protection.
pub(super) enum Protection {
    Plain,
    Srtp(Box<Contexts>),
    /// SRTP was negotiated but the keys could not be used. Nothing is sent or accepted:
    /// never plain RTP in place of SRTP. (SDP parsing checks key lengths, so this is not
    /// expected to happen.)
    Unusable,
}

pub(super) struct Contexts {
    keys: SrtpKeys,
    /// Keyed with our master key: protects what we send.
    tx: SrtpContext,
    /// Keyed with the peer's master key: unprotects what we receive.
    rx: SrtpContext,
    /// Outgoing RTP is protected here (the packet plus its tag), not in the playout's
    /// buffer, so the outbound path stays unaware of SRTP.
    scratch: Box<[u8]>,
}

impl Protection {
    pub fn new(keys: Option<&SrtpKeys>) -> Self {
        let Some(keys) = keys else {
            return Protection::Plain;
        };
        let contexts = SrtpContext::new(keys.suite, &keys.local_key_salt).and_then(|tx| {
            Ok(Contexts {
                keys: keys.clone(),
                tx,
                rx: SrtpContext::new(keys.suite, &keys.remote_key_salt)?,
                scratch: vec![0; DATAGRAM_BUF].into_boxed_slice(),
            })
        });
        match contexts {
            Ok(c) => {
                tracing::debug!(suite = keys.suite.name(), "SRTP on");
                Protection::Srtp(Box::new(c))
            }
            Err(e) => {
                tracing::error!(error = %e, "SRTP keys unusable; the call carries no media");
                Protection::Unusable
            }
        }
    }

    /// Applies a re-negotiation. Our context carries on while our key does (its roll-over
    /// counter must: restarting it under the same key would reuse keystream); the peer's
    /// is replaced when the peer sends a new key.
    pub fn update(&mut self, keys: Option<&SrtpKeys>) {
        match (&mut *self, keys) {
            (Protection::Plain, None) => {}
            (Protection::Srtp(c), Some(k))
                if c.keys.suite == k.suite && c.keys.local_key_salt == k.local_key_salt =>
            {
                if c.keys.remote_key_salt != k.remote_key_salt {
                    match SrtpContext::new(k.suite, &k.remote_key_salt) {
                        Ok(rx) => {
                            c.rx = rx;
                            c.keys = k.clone();
                        }
                        Err(_) => *self = Protection::Unusable,
                    }
                }
            }
            _ => *self = Protection::new(keys),
        }
    }

    /// The datagram to send for the RTP `packet`.
    pub fn outgoing_rtp<'a>(&'a mut self, packet: &'a [u8]) -> Result<&'a [u8], DropCause> {
        match self {
            Protection::Plain => Ok(packet),
            Protection::Srtp(c) => {
                let room = c
                    .scratch
                    .get_mut(..packet.len())
                    .ok_or(DropCause::SendFailed)?;
                room.copy_from_slice(packet);
                let n =
                    c.tx.protect_rtp(&mut c.scratch, packet.len())
                        .map_err(|_| DropCause::SendFailed)?;
                Ok(&c.scratch[..n])
            }
            Protection::Unusable => Err(DropCause::SendFailed),
        }
    }

    /// Protects the RTCP packet in `buf[..len]` in place; returns the length to send.
    pub fn outgoing_rtcp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, DropCause> {
        match self {
            Protection::Plain => Ok(len),
            Protection::Srtp(c) => {
                c.tx.protect_rtcp(buf, len)
                    .map_err(|_| DropCause::SendFailed)
            }
            Protection::Unusable => Err(DropCause::SendFailed),
        }
    }

    /// Unprotects a received RTP datagram in place; returns the plain packet's length.
    pub fn incoming_rtp(&mut self, buf: &mut [u8]) -> Result<usize, DropCause> {
        match self {
            Protection::Plain => Ok(buf.len()),
            Protection::Srtp(c) => c.rx.unprotect_rtp(buf).map_err(cause),
            Protection::Unusable => Err(DropCause::SrtpAuth),
        }
    }

    /// Unprotects a received RTCP datagram in place; returns the plain packet's length.
    pub fn incoming_rtcp(&mut self, buf: &mut [u8]) -> Result<usize, DropCause> {
        match self {
            Protection::Plain => Ok(buf.len()),
            Protection::Srtp(c) => c.rx.unprotect_rtcp(buf).map_err(cause),
            Protection::Unusable => Err(DropCause::SrtpAuth),
        }
    }
}

fn cause(e: SrtpError) -> DropCause {
    match e {
        SrtpError::Auth => DropCause::SrtpAuth,
        SrtpError::Replay => DropCause::SrtpReplay,
        SrtpError::TooShort | SrtpError::NoRoom | SrtpError::KeyLength => DropCause::Malformed,
    }
}
