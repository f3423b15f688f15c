#!/usr/bin/env python3
"""libsrtp (through pylibsrtp) as the reference for dialtone's SRTP layer.

    libsrtp_oracle.py protect|unprotect SUITE MASTER_KEY_SALT_HEX

Reads lines `rtp HEX` or `rtcp HEX` on stdin and writes one line of hex per input line:
the packet protected (or unprotected) by one libsrtp session keyed with the given master
key||salt, in order, so sequence numbers and the SRTCP index advance as in a call.
A packet libsrtp refuses is written as `error <reason>`.
"""
import sys

import pylibsrtp

PROFILES = {
    "AES_CM_128_HMAC_SHA1_80": pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
    "AES_CM_128_HMAC_SHA1_32": pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_32,
    "AEAD_AES_128_GCM": pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM,
}


def main() -> None:
    mode, suite, key = sys.argv[1], sys.argv[2], bytes.fromhex(sys.argv[3])
    ssrc_type = (
        pylibsrtp.Policy.SSRC_ANY_OUTBOUND if mode == "protect" else pylibsrtp.Policy.SSRC_ANY_INBOUND
    )
    session = pylibsrtp.Session(
        policy=pylibsrtp.Policy(key=key, ssrc_type=ssrc_type, srtp_profile=PROFILES[suite])
    )
    for line in sys.stdin:
        kind, data = line.split()
        packet = bytes.fromhex(data)
        try:
            if mode == "protect":
                out = session.protect(packet) if kind == "rtp" else session.protect_rtcp(packet)
            else:
                out = session.unprotect(packet) if kind == "rtp" else session.unprotect_rtcp(packet)
        except pylibsrtp.Error as e:
            print("error", str(e).replace(" ", "_"))
            continue
        print(out.hex())


if __name__ == "__main__":
    main()
