"""WAV packing and unpacking for 16-bit PCM mono (pure, no I/O)."""

from __future__ import annotations

import io
import struct
import wave

import numpy as np

_HEADER = struct.Struct("<4sI4s4sIHHIIHH4sI")


class WavError(ValueError):
    """Bytes that are not a 16-bit PCM WAV file this project can use."""


def encode_wav(pcm: bytes, sample_rate: int) -> bytes:
    """A complete 44-byte-header WAV file around int16 mono `pcm`."""
    header = _HEADER.pack(
        b"RIFF", 36 + len(pcm), b"WAVE", b"fmt ", 16, 1, 1,
        sample_rate, sample_rate * 2, 2, 16, b"data", len(pcm),
    )  # fmt: skip
    return header + pcm


def decode_wav(data: bytes) -> tuple[bytes, int]:
    """(int16 mono little-endian samples, sample rate) of a WAV file; WavError if unusable."""
    try:
        with wave.open(io.BytesIO(data), "rb") as reader:
            if reader.getsampwidth() != 2 or reader.getnchannels() != 1:
                raise WavError(
                    f"expected 16-bit mono, got {8 * reader.getsampwidth()}-bit "
                    f"{reader.getnchannels()}-channel audio"
                )
            return reader.readframes(reader.getnframes()), reader.getframerate()
    except (wave.Error, EOFError, struct.error) as exc:
        raise WavError(f"not a WAV file: {exc}") from None


def parse_wav_header(data: bytes) -> tuple[int, int] | None:
    """For a streamed WAV: (offset of the first sample, sample rate), or None if it needs more.

    Streaming servers write zero or bogus sizes in the header, so the sizes are ignored.
    Raises WavError when the bytes are not a RIFF/WAVE stream of 16-bit mono PCM.
    """
    if len(data) < 12:
        return None
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise WavError("stream does not start with a RIFF/WAVE header")
    offset, sample_rate = 12, 0
    while True:
        if len(data) < offset + 8:
            return None
        chunk_id, size = struct.unpack_from("<4sI", data, offset)
        body = offset + 8
        if chunk_id == b"data":
            if not sample_rate:
                raise WavError("WAV data chunk before its fmt chunk")
            return body, sample_rate
        if len(data) < body + size:
            return None
        if chunk_id == b"fmt ":
            if size < 16:
                raise WavError("WAV fmt chunk too short")
            fmt, channels, sample_rate, _, _, bits = struct.unpack_from("<HHIIHH", data, body)
            if fmt != 1 or channels != 1 or bits != 16:
                raise WavError(f"unsupported WAV format {fmt}, {channels} ch, {bits} bit")
        offset = body + size + (size & 1)


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """High-quality int16 resampling (libsoxr), for chunks at another rate than the output."""
    import soxr

    if from_rate == to_rate:
        return samples
    return soxr.resample(samples.astype(np.int16), from_rate, to_rate)
