//! What a session does to packets on the wire: nothing (plain RTP), or SRTP/SRTCP with one
//! [`SrtpContext`] per direction keyed from the negotiated SDES keys. Its failures are
//! [`DropCause`]s, counted like every other drop.

use super::DropCause;
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

    /// Writes the datagram to send for the RTP `packet` into `out` (the packet, protected
    /// there with SRTP, so the outbound path's own buffer stays plain); returns its
    /// length. Fails when `out` has no room for it.
    pub fn outgoing_rtp(&mut self, packet: &[u8], out: &mut [u8]) -> Result<usize, DropCause> {
        let copy = |out: &mut [u8]| match out.get_mut(..packet.len()) {
            Some(room) => {
                room.copy_from_slice(packet);
                Ok(packet.len())
            }
            None => Err(DropCause::SendFailed),
        };
        match self {
            Protection::Plain => copy(out),
            Protection::Srtp(c) => {
                let len = copy(out)?;
                c.tx.protect_rtp(out, len)
                    .map_err(|_| DropCause::SendFailed)
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
