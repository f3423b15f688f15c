//! SRTP and SRTCP (RFC 3711) keyed by SDES (RFC 4568), sans-IO: protect and unprotect
//! packets in place in the caller's buffer.
//!
//! Written on the RustCrypto primitives rather than taken from an SRTP crate because the
//! media path must not allocate per packet, and the SRTP crates at hand return a new
//! buffer for every packet. A context is one direction of one call: the sender's context
//! is keyed with our master key and protects, the receiver's with the peer's and
//! unprotects. Nothing is shared between calls and nothing locks.
//!
//! Supported: AES_CM_128_HMAC_SHA1_80 and _32 (SRTCP keeps its 80-bit tag under _32, RFC
//! 4568 §6.2.2) and AEAD_AES_128_GCM (RFC 7714); key_derivation_rate 0; no MKI (SDP
//! negotiation refuses crypto lines with one). Receiving keeps a 64-packet replay window
//! per source for SRTP and SRTCP; SRTP packet indexes are estimated from the sequence
//! number (RFC 3711 Appendix A), so the roll-over counter follows 65535 → 0.
//!
//! Errors are values ([`SrtpError`]): the session counts them as drops.

mod replay;
mod transform;

use aes::Aes128;
use aes_gcm::KeyInit;

use crate::sdp::SrtpSuite;
use replay::{Streams, Window};
use transform::{Transform, GCM_TAG_LEN};

/// Most bytes protecting adds to a packet: a 16-byte GCM tag plus the 4-byte SRTCP index.
/// Callers leave this much room after the packet in the buffer they protect in.
pub const MAX_OVERHEAD: usize = GCM_TAG_LEN + 4;

/// SRTCP's fixed part left in clear: the RTCP header and the sender's SSRC.
const RTCP_CLEAR: usize = 8;
/// The E flag of the SRTCP index word: the packet is encrypted.
const E_FLAG: u32 = 0x8000_0000;
/// SRTCP tag length for the AES-CM suites (80 bits under both, RFC 4568 §6.2.2).
const SRTCP_CM_TAG_LEN: usize = 10;

/// Why a packet could not be protected or unprotected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SrtpError {
    /// Shorter than its headers and tag, or not RTP/RTCP version 2.
    #[error("packet too short or malformed for SRTP")]
    TooShort,
    /// The authentication tag did not verify (wrong key, tampering, plain RTP).
    #[error("SRTP authentication failed")]
    Auth,
    /// The index was seen already, or is older than the replay window.
    #[error("SRTP replayed or too old")]
    Replay,
    /// The buffer has no room for the tag.
    #[error("no room in the buffer for the SRTP tag")]
    NoRoom,
    /// The master key||salt has the wrong length for the suite.
    #[error("SRTP master key has the wrong length for its suite")]
    KeyLength,
}

/// One direction of SRTP and SRTCP for one call. Debug output shows no keys.
pub struct SrtpContext {
    suite: SrtpSuite,
    rtp: Transform,
    rtcp: Transform,
    /// Receiving: replay windows per source; sending: the index of our last packets.
    rtp_streams: Streams,
    rtcp_streams: Streams,
    /// The next SRTCP index to send (31 bits).
    rtcp_index: u32,
}

impl std::fmt::Debug for SrtpContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SrtpContext")
            .field("suite", &self.suite)
            .finish_non_exhaustive()
    }
}

impl SrtpContext {
    /// Derives the session keys from `master_key_salt` (master key || master salt, as
    /// carried in `a=crypto`).
    pub fn new(suite: SrtpSuite, master_key_salt: &[u8]) -> Result<Self, SrtpError> {
        if master_key_salt.len() != suite.key_salt_len() {
            return Err(SrtpError::KeyLength);
        }
        let (key, salt) = master_key_salt.split_at(suite.key_len());
        let master = Aes128::new_from_slice(key).map_err(|_| SrtpError::KeyLength)?;
        use transform::*;
        let (rtp, rtcp) = match suite {
            SrtpSuite::AesCm128HmacSha1_80 | SrtpSuite::AesCm128HmacSha1_32 => {
                let rtp_tag = if suite == SrtpSuite::AesCm128HmacSha1_80 {
                    10
                } else {
                    4
                };
                (
                    Transform::cm_hmac(
                        &master,
                        salt,
                        [LABEL_RTP_ENCRYPTION, LABEL_RTP_AUTH, LABEL_RTP_SALT],
                        rtp_tag,
                    ),
                    Transform::cm_hmac(
                        &master,
                        salt,
                        [LABEL_RTCP_ENCRYPTION, LABEL_RTCP_AUTH, LABEL_RTCP_SALT],
                        SRTCP_CM_TAG_LEN,
                    ),
                )
            }
            SrtpSuite::AeadAes128Gcm => (
                Transform::gcm(&master, salt, [LABEL_RTP_ENCRYPTION, LABEL_RTP_SALT]),
                Transform::gcm(&master, salt, [LABEL_RTCP_ENCRYPTION, LABEL_RTCP_SALT]),
            ),
        };
        Ok(SrtpContext {
            suite,
            rtp,
            rtcp,
            rtp_streams: Streams::default(),
            rtcp_streams: Streams::default(),
            rtcp_index: 0,
        })
    }

    pub fn suite(&self) -> SrtpSuite {
        self.suite
    }

    /// Turns the RTP packet in `buf[..len]` into SRTP in place, appending the tag; returns
    /// the new length. `buf` needs [`MAX_OVERHEAD`] bytes of room after the packet.
    pub fn protect_rtp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, SrtpError> {
        let tag_len = self.rtp.tag_len();
        if buf.len() < len + tag_len {
            return Err(SrtpError::NoRoom);
        }
        let header = rtp_header_len(&buf[..len]).ok_or(SrtpError::TooShort)?;
        let (ssrc, seq) = rtp_ids(buf);
        let window = self
            .rtp_streams
            .get(ssrc)
            .unwrap_or(Window::starting_at(u64::from(seq)));
        let index = window.estimate(seq).ok_or(SrtpError::Replay)?;
        let roc = (index >> 16) as u32;
        match &self.rtp {
            Transform::CmHmac {
                cipher, salt, mac, ..
            } => {
                Transform::cm_apply(
                    cipher,
                    transform::cm_iv(salt, ssrc, index),
                    &mut buf[header..len],
                );
                let full = Transform::hmac(mac, &[&buf[..len], &roc.to_be_bytes()]);
                buf[len..len + tag_len].copy_from_slice(&full[..tag_len]);
            }
            Transform::Gcm { aead, salt } => {
                let nonce = transform::gcm_nonce(salt, ssrc, rtp_tail(roc, seq));
                let (aad, data) = buf[..len].split_at_mut(header);
                let tag = Transform::gcm_seal(aead, nonce, aad, data).ok_or(SrtpError::TooShort)?;
                buf[len..len + tag_len].copy_from_slice(&tag);
            }
        }
        let mut window = window;
        window.accept(index);
        self.rtp_streams.put(ssrc, window);
        Ok(len + tag_len)
    }

    /// Checks and decrypts the SRTP packet in `buf` in place; returns the length of the
    /// plain RTP packet at its start. Nothing is remembered unless the tag verifies.
    pub fn unprotect_rtp(&mut self, buf: &mut [u8]) -> Result<usize, SrtpError> {
        let tag_len = self.rtp.tag_len();
        let len = buf.len().checked_sub(tag_len).ok_or(SrtpError::TooShort)?;
        let header = rtp_header_len(&buf[..len]).ok_or(SrtpError::TooShort)?;
        let (ssrc, seq) = rtp_ids(buf);
        let mut window = self
            .rtp_streams
            .get(ssrc)
            .unwrap_or(Window::starting_at(u64::from(seq)));
        let index = window.estimate(seq).ok_or(SrtpError::Replay)?;
        if !window.check(index) {
            return Err(SrtpError::Replay);
        }
        let roc = (index >> 16) as u32;
        let (packet, tag) = buf.split_at_mut(len);
        match &self.rtp {
            Transform::CmHmac {
                cipher, salt, mac, ..
            } => {
                if !Transform::hmac_verify(mac, &[packet, &roc.to_be_bytes()], tag) {
                    return Err(SrtpError::Auth);
                }
                Transform::cm_apply(
                    cipher,
                    transform::cm_iv(salt, ssrc, index),
                    &mut packet[header..],
                );
            }
            Transform::Gcm { aead, salt } => {
                let nonce = transform::gcm_nonce(salt, ssrc, rtp_tail(roc, seq));
                let (aad, data) = packet.split_at_mut(header);
                if !Transform::gcm_open(aead, nonce, aad, data, tag) {
                    return Err(SrtpError::Auth);
                }
            }
        }
        window.accept(index);
        self.rtp_streams.put(ssrc, window);
        Ok(len)
    }

    /// Turns the RTCP compound packet in `buf[..len]` into SRTCP in place (encrypted, E
    /// flag set), appending the index and tag; returns the new length. `buf` needs
    /// [`MAX_OVERHEAD`] bytes of room after the packet.
    pub fn protect_rtcp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, SrtpError> {
        let tag_len = self.rtcp.tag_len();
        if len < RTCP_CLEAR || buf[0] >> 6 != 2 {
            return Err(SrtpError::TooShort);
        }
        if buf.len() < len + 4 + tag_len {
            return Err(SrtpError::NoRoom);
        }
        let index = self.rtcp_index;
        self.rtcp_index = (index + 1) & !E_FLAG;
        let word = (E_FLAG | index).to_be_bytes();
        let ssrc = rtcp_ssrc(buf);
        match &self.rtcp {
            Transform::CmHmac {
                cipher, salt, mac, ..
            } => {
                let iv = transform::cm_iv(salt, ssrc, u64::from(index));
                Transform::cm_apply(cipher, iv, &mut buf[RTCP_CLEAR..len]);
                buf[len..len + 4].copy_from_slice(&word);
                let full = Transform::hmac(mac, &[&buf[..len + 4]]);
                buf[len + 4..len + 4 + tag_len].copy_from_slice(&full[..tag_len]);
                Ok(len + 4 + tag_len)
            }
            Transform::Gcm { aead, salt } => {
                let nonce = transform::gcm_nonce(salt, ssrc, rtcp_tail(index));
                let aad = rtcp_gcm_aad(&buf[..RTCP_CLEAR], word);
                let tag = Transform::gcm_seal(aead, nonce, &aad, &mut buf[RTCP_CLEAR..len])
                    .ok_or(SrtpError::TooShort)?;
                buf[len..len + tag_len].copy_from_slice(&tag);
                buf[len + tag_len..len + tag_len + 4].copy_from_slice(&word);
                Ok(len + tag_len + 4)
            }
        }
    }

    /// Checks and (when its E flag is set) decrypts the SRTCP packet in `buf` in place;
    /// returns the length of the plain RTCP compound packet at its start.
    pub fn unprotect_rtcp(&mut self, buf: &mut [u8]) -> Result<usize, SrtpError> {
        let tag_len = self.rtcp.tag_len();
        let len = buf
            .len()
            .checked_sub(tag_len + 4)
            .filter(|l| *l >= RTCP_CLEAR && buf[0] >> 6 == 2)
            .ok_or(SrtpError::TooShort)?;
        let ssrc = rtcp_ssrc(buf);
        let word_at = match self.rtcp {
            Transform::CmHmac { .. } => len,
            Transform::Gcm { .. } => len + tag_len,
        };
        let mut word = [0u8; 4];
        word.copy_from_slice(&buf[word_at..word_at + 4]);
        let raw = u32::from_be_bytes(word);
        let (encrypted, index) = (raw & E_FLAG != 0, raw & !E_FLAG);
        let mut window = self
            .rtcp_streams
            .get(ssrc)
            .unwrap_or(Window::starting_at(u64::from(index)));
        if !window.check(u64::from(index)) {
            return Err(SrtpError::Replay);
        }
        match &self.rtcp {
            Transform::CmHmac {
                cipher, salt, mac, ..
            } => {
                let (signed, tag) = buf.split_at_mut(len + 4);
                if !Transform::hmac_verify(mac, &[signed], tag) {
                    return Err(SrtpError::Auth);
                }
                if encrypted {
                    let iv = transform::cm_iv(salt, ssrc, u64::from(index));
                    Transform::cm_apply(cipher, iv, &mut signed[RTCP_CLEAR..len]);
                }
            }
            Transform::Gcm { aead, salt } => {
                // An authenticated-only GCM packet (E clear) authenticates its whole body
                // as associated data; no peer we know sends one, so it is refused.
                if !encrypted {
                    return Err(SrtpError::Auth);
                }
                let nonce = transform::gcm_nonce(salt, ssrc, rtcp_tail(index));
                let aad = rtcp_gcm_aad(&buf[..RTCP_CLEAR], word);
                let (body, tag) = buf[..len + tag_len].split_at_mut(len);
                if !Transform::gcm_open(aead, nonce, &aad, &mut body[RTCP_CLEAR..], tag) {
                    return Err(SrtpError::Auth);
                }
            }
        }
        window.accept(u64::from(index));
        self.rtcp_streams.put(ssrc, window);
        Ok(len)
    }
}

/// The GCM nonce's last six bytes for RTP: ROC || SEQ.
fn rtp_tail(roc: u32, seq: u16) -> [u8; 6] {
    let mut t = [0u8; 6];
    t[..4].copy_from_slice(&roc.to_be_bytes());
    t[4..].copy_from_slice(&seq.to_be_bytes());
    t
}

/// The GCM nonce's last six bytes for RTCP: `00 00 || 0 || SRTCP index`.
fn rtcp_tail(index: u32) -> [u8; 6] {
    let mut t = [0u8; 6];
    t[2..].copy_from_slice(&index.to_be_bytes());
    t
}

/// SRTCP GCM associated data: the 8 clear bytes and the E||index word (RFC 7714 §9.1).
fn rtcp_gcm_aad(clear: &[u8], word: [u8; 4]) -> [u8; 12] {
    let mut aad = [0u8; 12];
    aad[..RTCP_CLEAR].copy_from_slice(clear);
    aad[RTCP_CLEAR..].copy_from_slice(&word);
    aad
}

/// Length of the RTP header (fixed part, CSRCs, extension): what SRTP leaves in clear.
/// `None` when it is not version 2 or does not fit in `packet`.
fn rtp_header_len(packet: &[u8]) -> Option<usize> {
    let first = *packet.first()?;
    if first >> 6 != 2 || packet.len() < 12 {
        return None;
    }
    let mut len = 12 + 4 * usize::from(first & 0x0f);
    if first & 0x10 != 0 {
        let ext = packet.get(len + 2..len + 4)?;
        len += 4 + 4 * usize::from(u16::from_be_bytes([ext[0], ext[1]]));
    }
    (len <= packet.len()).then_some(len)
}

/// SSRC and sequence number of an RTP packet already checked by [`rtp_header_len`].
fn rtp_ids(buf: &[u8]) -> (u32, u16) {
    (
        u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]),
        u16::from_be_bytes([buf[2], buf[3]]),
    )
}

/// The sender SSRC of an RTCP packet at least [`RTCP_CLEAR`] bytes long.
fn rtcp_ssrc(buf: &[u8]) -> u32 {
    u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]])
}

#[cfg(test)]
mod tests;
