#!/usr/bin/env python3
"""Generate the RTP captures that SIPp replays with <exec play_pcap_audio=...>.

Each file is a classic libpcap capture (link type Ethernet) of RTP over UDP/IPv4,
one 20 ms packet every 20 ms (the record timestamps are what SIPp paces by):

  pcmu.pcap  PT 0, 1 kHz sine, G.711 mu-law (8 kHz)
  pcma.pcap  PT 8, 1 kHz sine, G.711 A-law (8 kHz)
  g722.pcap  PT 9, 1 kHz + 5 kHz sines at 16 kHz, G.722 64 kbit/s (encoded by the
             PyPI package G722, i.e. libg722, independent of dialtone's own codec)
  ringback.pcap  PT 0, 440 Hz, 2 s: a trunk's early media (183), told apart from the
             answered call's 1 kHz; same SSRC as pcmu.pcap with the sequence numbers just
             before it, like a gateway that keeps one stream from 183 to 200

SIPp rewrites the addresses and ports when it replays, so the ones written here are
placeholders (127.0.0.1:6000 -> 127.0.0.1:6002). G.711 is encoded here from the
ITU-T G.711 definitions; nothing is copied from elsewhere.

Usage: make-test-audio.py [--out DIR] [--seconds S] [--only pcmu|pcma|g722]
"""

import argparse
import math
import os
import struct
import sys

TONE_HZ = 1000.0
HIGH_TONE_HZ = 5000.0  # G.722 only: proves the wideband band survives
RINGBACK_HZ = 440.0
RINGBACK_SECONDS = 2.0
FRAME_MS = 20


def ulaw_encode(sample):
    """G.711 mu-law of one signed 16-bit sample."""
    bias = 0x84
    clip = 32635
    sign = 0x80 if sample < 0 else 0
    if sample < 0:
        sample = -sample
    sample = min(sample, clip) + bias
    exponent = 7
    mask = 0x4000
    while exponent > 0 and not (sample & mask):
        exponent -= 1
        mask >>= 1
    mantissa = (sample >> (exponent + 3)) & 0x0F
    return (~(sign | (exponent << 4) | mantissa)) & 0xFF


def alaw_encode(sample):
    """G.711 A-law of one signed 16-bit sample."""
    if sample >= 0:
        sign = 0x80
    else:
        sign = 0
        sample = -sample - 1
    sample = min(sample, 32767) >> 3  # 13-bit magnitude
    if sample < 32:
        code = sample >> 1
    else:
        exponent = 1
        while sample >= (64 << (exponent - 1)) and exponent < 7:
            exponent += 1
        mantissa = (sample >> exponent) & 0x0F
        code = (exponent << 4) | mantissa
    return (sign | code) ^ 0x55


def sine(rate, seconds, parts):
    n = int(rate * seconds)
    out = []
    for i in range(n):
        v = 0.0
        for hz, amp in parts:
            v += amp * math.sin(2 * math.pi * hz * i / rate)
        out.append(max(-32768, min(32767, int(round(v * 32767)))))
    return out


def ip_checksum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def frame(src, dst, sport, dport, payload, ident):
    udp_len = 8 + len(payload)
    pseudo = src + dst + struct.pack("!BBH", 0, 17, udp_len)
    udp_nock = struct.pack("!HHHH", sport, dport, udp_len, 0)
    ck = ip_checksum(pseudo + udp_nock + payload) or 0xFFFF
    udp = struct.pack("!HHHH", sport, dport, udp_len, ck)
    total = 20 + udp_len
    ip_nock = struct.pack("!BBHHHBBH4s4s", 0x45, 0xB8, total, ident & 0xFFFF, 0x4000, 64, 17, 0, src, dst)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0xB8, total, ident & 0xFFFF, 0x4000, 64, 17, ip_checksum(ip_nock), src, dst)
    eth = b"\x00\x00\x00\x00\x00\x02" + b"\x00\x00\x00\x00\x00\x01" + b"\x08\x00"
    return eth + ip + udp + payload


def write_pcap(path, pt, ssrc, payloads, seq0=None):
    src = bytes([127, 0, 0, 1])
    dst = bytes([127, 0, 0, 1])
    if seq0 is None:
        seq0 = 4000 + pt  # arbitrary but fixed, so regeneration is byte-identical
    ts0 = 160000
    t0 = 1_700_000_000
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for i, payload in enumerate(payloads):
            marker = 0x80 if i == 0 else 0
            rtp = struct.pack("!BBHII", 0x80, marker | pt, (seq0 + i) & 0xFFFF, (ts0 + 160 * i) & 0xFFFFFFFF, ssrc)
            pkt = frame(src, dst, 6000, 6002, rtp + payload, i)
            usec = i * FRAME_MS * 1000
            f.write(struct.pack("<IIII", t0 + usec // 1_000_000, usec % 1_000_000, len(pkt), len(pkt)))
            f.write(pkt)


def chunks(seq, size):
    return [seq[i:i + size] for i in range(0, len(seq) - size + 1, size)]


def make(codec, out_dir, seconds):
    path = os.path.join(out_dir, codec + ".pcap")
    if codec in ("pcmu", "pcma"):
        pcm = sine(8000, seconds, [(TONE_HZ, 0.3)])
        enc = ulaw_encode if codec == "pcmu" else alaw_encode
        payloads = [bytes(enc(s) for s in c) for c in chunks(pcm, 160)]
        write_pcap(path, 0 if codec == "pcmu" else 8, 0x5EED0000 if codec == "pcmu" else 0x5EED0008, payloads)
    elif codec == "g722":
        try:
            import G722  # PyPI package "G722" (libg722)
        except ImportError:
            sys.exit("make-test-audio: pip install G722 (see tests/e2e/requirements.txt)")
        pcm = sine(16000, seconds, [(TONE_HZ, 0.3), (HIGH_TONE_HZ, 0.15)])
        codec_state = G722.G722(16000, 64000)
        payloads = [bytes(codec_state.encode(c)) for c in chunks(pcm, 320)]
        assert all(len(p) == 160 for p in payloads)
        write_pcap(path, 9, 0x5EED0009, payloads)
    elif codec == "ringback":
        pcm = sine(8000, RINGBACK_SECONDS, [(RINGBACK_HZ, 0.3)])
        payloads = [bytes(ulaw_encode(s) for s in c) for c in chunks(pcm, 160)]
        write_pcap(path, 0, 0x5EED0000, payloads, seq0=3900)
    else:
        raise ValueError(codec)
    return path


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(here, "..", "tests", "e2e", "pcap"))
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--only", choices=["pcmu", "pcma", "g722", "ringback"])
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    for codec in [args.only] if args.only else ["pcmu", "pcma", "g722", "ringback"]:
        print(make(codec, args.out, args.seconds))


if __name__ == "__main__":
    main()
