//! The cryptographic transforms of one SRTP or SRTCP direction, keyed with session keys:
//! AES counter mode with HMAC-SHA1 (RFC 3711 §4.1.1, §4.2.1) and AES-GCM (RFC 7714), and
//! the key derivation that produces their session keys from a master key (§4.3).
//!
//! Everything works in place on the caller's buffer; the keyed cipher and MAC states are
//! built once per context and copied on the stack per packet.

use aes::Aes128;
use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes128Gcm, KeyInit};
use ctr::cipher::{InnerIvInit, StreamCipher};
use hmac::{Hmac, Mac};
use sha1::Sha1;

/// AES-128 counter mode whose 128-bit counter is the IV plus the block number.
type Aes128Ctr = ctr::Ctr128BE<Aes128>;
type HmacSha1 = Hmac<Sha1>;

/// The keystream generator for one counter start (a copy of the key schedule, no heap).
fn ctr_stream(cipher: &Aes128, iv: [u8; 16]) -> Aes128Ctr {
    Aes128Ctr::from_core(ctr::CtrCore::inner_iv_init(cipher.clone(), &iv.into()))
}

/// Key derivation labels (RFC 3711 §4.3.1).
pub const LABEL_RTP_ENCRYPTION: u8 = 0x00;
pub const LABEL_RTP_AUTH: u8 = 0x01;
pub const LABEL_RTP_SALT: u8 = 0x02;
pub const LABEL_RTCP_ENCRYPTION: u8 = 0x03;
pub const LABEL_RTCP_AUTH: u8 = 0x04;
pub const LABEL_RTCP_SALT: u8 = 0x05;

/// The AES-CM PRF of RFC 3711 §4.3.3 with key_derivation_rate 0: the label is XORed into
/// the master salt's eighth byte (the 48-bit `index DIV kdr` is zero), the result shifted
/// left 16 bits is the counter, and `out` receives the keystream. A 12-byte GCM salt is
/// padded with zeros to 14 bytes (RFC 7714 §11, as libsrtp does).
pub fn derive(master_key: &Aes128, master_salt: &[u8], label: u8, out: &mut [u8]) {
    let mut iv = [0u8; 16];
    let n = master_salt.len().min(14);
    iv[..n].copy_from_slice(&master_salt[..n]);
    iv[7] ^= label;
    out.fill(0);
    ctr_stream(master_key, iv).apply_keystream(out);
}

/// The AES-CM counter for one packet (RFC 3711 §4.1.1):
/// `(salt · 2^16) XOR (SSRC · 2^64) XOR (index · 2^16)`.
pub fn cm_iv(salt: &[u8; 14], ssrc: u32, index: u64) -> [u8; 16] {
    let mut iv = [0u8; 16];
    iv[..14].copy_from_slice(salt);
    for (b, s) in iv[4..8].iter_mut().zip(ssrc.to_be_bytes()) {
        *b ^= s;
    }
    for (b, i) in iv[8..14].iter_mut().zip(&index.to_be_bytes()[2..]) {
        *b ^= i;
    }
    iv
}

/// The GCM nonce (RFC 7714 §8.1, §9.1): `00 00 || SSRC || tail`, XOR the salt, where
/// `tail` is ROC || SEQ for RTP and `00 00 || SRTCP index` for RTCP.
pub fn gcm_nonce(salt: &[u8; 12], ssrc: u32, tail: [u8; 6]) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[2..6].copy_from_slice(&ssrc.to_be_bytes());
    n[6..].copy_from_slice(&tail);
    for (b, s) in n.iter_mut().zip(salt) {
        *b ^= s;
    }
    n
}

/// Session keys and state-free transform for one of SRTP or SRTCP in one direction.
pub enum Transform {
    /// AES_CM_128 with HMAC-SHA1 truncated to `tag_len` bytes.
    CmHmac {
        cipher: Aes128,
        salt: [u8; 14],
        mac: HmacSha1,
        tag_len: usize,
    },
    /// AEAD_AES_128_GCM with its 16-byte tag.
    Gcm { aead: Aes128Gcm, salt: [u8; 12] },
}

/// GCM's authentication tag length (RFC 7714 §12: AEAD_AES_128_GCM uses 16 octets).
pub const GCM_TAG_LEN: usize = 16;

impl Transform {
    /// Session keys for AES-CM/HMAC from the master key, with the given labels.
    pub fn cm_hmac(master: &Aes128, master_salt: &[u8], labels: [u8; 3], tag_len: usize) -> Self {
        let mut key = [0u8; 16];
        // The 160-bit auth key, zero-padded to SHA-1's 64-byte block as HMAC pads it.
        let mut auth = [0u8; 64];
        let mut salt = [0u8; 14];
        derive(master, master_salt, labels[0], &mut key);
        derive(master, master_salt, labels[1], &mut auth[..20]);
        derive(master, master_salt, labels[2], &mut salt);
        Transform::CmHmac {
            cipher: Aes128::new(&key.into()),
            salt,
            mac: <HmacSha1 as KeyInit>::new(&auth.into()),
            tag_len,
        }
    }

    /// Session keys for AES-GCM from the master key (encryption and salt labels only).
    pub fn gcm(master: &Aes128, master_salt: &[u8], labels: [u8; 2]) -> Self {
        let mut key = [0u8; 16];
        let mut salt = [0u8; 12];
        derive(master, master_salt, labels[0], &mut key);
        derive(master, master_salt, labels[1], &mut salt);
        Transform::Gcm {
            aead: Aes128Gcm::new(&key.into()),
            salt,
        }
    }

    /// Bytes this transform adds to a packet (the tag).
    pub fn tag_len(&self) -> usize {
        match self {
            Transform::CmHmac { tag_len, .. } => *tag_len,
            Transform::Gcm { .. } => GCM_TAG_LEN,
        }
    }

    /// XORs the AES-CM keystream for `iv` into `data`.
    pub fn cm_apply(cipher: &Aes128, iv: [u8; 16], data: &mut [u8]) {
        ctr_stream(cipher, iv).apply_keystream(data);
    }

    /// The full HMAC-SHA1 of `parts`, in order.
    pub fn hmac(mac: &HmacSha1, parts: &[&[u8]]) -> [u8; 20] {
        let mut m = mac.clone();
        for p in parts {
            m.update(p);
        }
        m.finalize().into_bytes().into()
    }

    /// Whether `tag` is the truncated HMAC of `parts` (constant-time comparison).
    pub fn hmac_verify(mac: &HmacSha1, parts: &[&[u8]], tag: &[u8]) -> bool {
        let mut m = mac.clone();
        for p in parts {
            m.update(p);
        }
        m.verify_truncated_left(tag).is_ok()
    }

    /// GCM encryption of `data` in place; returns the tag.
    pub fn gcm_seal(
        aead: &Aes128Gcm,
        nonce: [u8; 12],
        aad: &[u8],
        data: &mut [u8],
    ) -> Option<[u8; 16]> {
        aead.encrypt_in_place_detached(&nonce.into(), aad, data)
            .ok()
            .map(Into::into)
    }

    /// GCM decryption of `data` in place; false when the tag does not verify.
    pub fn gcm_open(
        aead: &Aes128Gcm,
        nonce: [u8; 12],
        aad: &[u8],
        data: &mut [u8],
        tag: &[u8],
    ) -> bool {
        let Ok(tag) = <[u8; GCM_TAG_LEN]>::try_from(tag) else {
            return false;
        };
        aead.decrypt_in_place_detached(&nonce.into(), aad, data, &tag.into())
            .is_ok()
    }
}
