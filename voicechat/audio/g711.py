"""G.711 μ-law and A-law (8 kHz telephony audio) to and from 16-bit PCM.

The OpenAI Realtime API accepts `audio/pcmu` and `audio/pcma` for telephony bridges. Python's
audioop did this until 3.13; these are the ITU-T G.711 reference algorithms, vectorised.
Decoding goes through a 256-entry table; encoding is computed per sample.
"""

from __future__ import annotations

import numpy as np

_ULAW_BIAS = 0x84
_ULAW_CLIP = 8159  # in 14 bits


def _ulaw_decode_table() -> np.ndarray:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    magnitude = (((mantissa << 3) + _ULAW_BIAS) << exponent) - _ULAW_BIAS
    return np.where(u & 0x80, -magnitude, magnitude).astype(np.int16)


def _alaw_decode_table() -> np.ndarray:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    segment = (a & 0x70) >> 4
    value = (a & 0x0F) << 4
    value = np.where(segment == 0, value + 8, value + 0x108)
    value = np.where(segment > 1, value << np.maximum(segment - 1, 0), value)
    return np.where(a & 0x80, value, -value).astype(np.int16)


_ULAW_TO_PCM = _ulaw_decode_table()
_ALAW_TO_PCM = _alaw_decode_table()


def ulaw_to_pcm16(data: bytes) -> bytes:
    return _ULAW_TO_PCM[np.frombuffer(data, dtype=np.uint8)].astype("<i2").tobytes()


def alaw_to_pcm16(data: bytes) -> bytes:
    return _ALAW_TO_PCM[np.frombuffer(data, dtype=np.uint8)].astype("<i2").tobytes()


# The last value of each μ-law segment, for 14-bit magnitudes (plus the bias).
_ULAW_SEGMENT_ENDS = np.array(
    [0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF], dtype=np.int32
)


def pcm16_to_ulaw(data: bytes) -> bytes:
    pcm = np.frombuffer(data, dtype="<i2").astype(np.int32) >> 2  # 14 bits
    mask = np.where(pcm < 0, 0x7F, 0xFF)
    magnitude = np.minimum(np.abs(pcm), _ULAW_CLIP) + (_ULAW_BIAS >> 2)
    segment = np.searchsorted(_ULAW_SEGMENT_ENDS, magnitude, side="left")
    value = (np.minimum(segment, 7) << 4) | ((magnitude >> (segment + 1)) & 0x0F)
    value = np.where(segment >= 8, 0x7F, value)
    return ((value ^ mask) & 0xFF).astype(np.uint8).tobytes()


# The last value of each A-law segment, for 13-bit magnitudes.
_ALAW_SEGMENT_ENDS = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF], dtype=np.int32)


def pcm16_to_alaw(data: bytes) -> bytes:
    pcm = np.frombuffer(data, dtype="<i2").astype(np.int32) >> 3  # 13 bits
    mask = np.where(pcm >= 0, 0xD5, 0x55)
    magnitude = np.where(pcm >= 0, pcm, -pcm - 1)
    segment = np.searchsorted(_ALAW_SEGMENT_ENDS, magnitude, side="left")
    shift = np.where(segment < 2, 1, segment)
    value = (np.minimum(segment, 7) << 4) | ((magnitude >> shift) & 0x0F)
    value = np.where(segment >= 8, 0x7F, value)
    return ((value ^ mask) & 0xFF).astype(np.uint8).tobytes()
