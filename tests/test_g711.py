"""G.711 (the Realtime API's audio/pcmu and audio/pcma): the reference algorithm, every sample."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from voicechat.audio import g711

EVERY_SAMPLE = np.arange(-32768, 32768, dtype="<i2").tobytes()


def test_known_codes() -> None:
    silence = np.zeros(2, dtype="<i2").tobytes()
    assert g711.pcm16_to_ulaw(silence) == b"\xff\xff"
    assert g711.pcm16_to_alaw(silence) == b"\xd5\xd5"
    loudest = np.array([32767, -32768], dtype="<i2").tobytes()
    assert g711.pcm16_to_ulaw(loudest) == b"\x80\x00"
    assert g711.pcm16_to_alaw(loudest) == b"\xaa\x2a"


@pytest.mark.parametrize(
    ("encode", "decode"),
    [(g711.pcm16_to_ulaw, g711.ulaw_to_pcm16), (g711.pcm16_to_alaw, g711.alaw_to_pcm16)],
)
def test_round_trip_error_is_within_the_segment_step(encode, decode) -> None:
    pcm = np.frombuffer(EVERY_SAMPLE, dtype="<i2").astype(np.int32)
    back = np.frombuffer(decode(encode(EVERY_SAMPLE)), dtype="<i2").astype(np.int32)
    error = np.abs(back - pcm)
    # Logarithmic steps: at most 1/16 of the magnitude (plus the smallest step near zero).
    assert np.all(error <= np.abs(pcm) // 16 + 32)
    assert len(back) == len(pcm)


def test_same_bytes_as_audioop_where_python_still_has_it() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        audioop = pytest.importorskip("audioop")  # removed in Python 3.13
    assert g711.pcm16_to_ulaw(EVERY_SAMPLE) == audioop.lin2ulaw(EVERY_SAMPLE, 2)
    assert g711.pcm16_to_alaw(EVERY_SAMPLE) == audioop.lin2alaw(EVERY_SAMPLE, 2)
    codes = bytes(range(256))
    assert g711.ulaw_to_pcm16(codes) == audioop.ulaw2lin(codes, 2)
    assert g711.alaw_to_pcm16(codes) == audioop.alaw2lin(codes, 2)
