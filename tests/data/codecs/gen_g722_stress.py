"""Generates the G.722 stress vectors with libg722 (PyPI `G722` 1.2.8) as the oracle.

The shared speech vectors never reach saturation, so these cover the clamps: full-scale
squares, full-scale noise, a loud 7 kHz tone, a Nyquist-rate alternation, silence after
loud input, and a decoder fed arbitrary bytes (every code in every state).

Run: python3 gen_g722_stress.py  (writes the four files next to this script)
"""
import math
import os
import struct
from array import array

import G722

HERE = os.path.dirname(os.path.abspath(__file__))


def lcg(seed):
    while True:
        seed = (seed * 1103515245 + 12345) & 0x7FFFFFFF
        yield seed >> 8


def stress_input():
    rnd = lcg(1)
    pcm = []
    for i in range(800):  # square waves, full scale, 1 kHz then 4 kHz
        period = 16 if i < 400 else 4
        pcm.append(32767 if (i // (period // 2)) % 2 == 0 else -32768)
    for _ in range(800):  # full-scale white noise
        pcm.append((next(rnd) & 0xFFFF) - 32768)
    for i in range(800):  # 7 kHz tone at -0.1 dBFS
        pcm.append(int(round(32400 * math.sin(2 * math.pi * 7000 * i / 16000))))
    for i in range(800):  # Nyquist-rate alternation
        pcm.append(32767 if i % 2 == 0 else -32768)
    pcm.extend([0] * 800)  # silence after loud input
    for i in range(800):  # speech-band tone with a DC offset near the rails
        pcm.append(max(-32768, min(32767, 20000 + int(12000 * math.sin(i * 0.3)))))
    return pcm


def main():
    pcm = stress_input()
    encoded = G722.G722(16000, 64000).encode(array("h", pcm))
    decoded = G722.G722(16000, 64000).decode(encoded)
    rnd = lcg(7)
    noise_bytes = bytes(next(rnd) & 0xFF for _ in range(2400))
    noise_decoded = G722.G722(16000, 64000).decode(noise_bytes)
    files = {
        "g722_stress_input_16k_s16le.raw": struct.pack("<%dh" % len(pcm), *pcm),
        "g722_stress_encoded.bin": bytes(encoded),
        "g722_stress_decoded_16k_s16le.raw": struct.pack("<%dh" % len(decoded), *decoded),
        "g722_random_bytes.bin": noise_bytes,
        "g722_random_bytes_decoded_16k_s16le.raw": struct.pack(
            "<%dh" % len(noise_decoded), *noise_decoded
        ),
    }
    for name, data in files.items():
        with open(os.path.join(HERE, name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main()
