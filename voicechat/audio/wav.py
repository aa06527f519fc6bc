"""WAV packing and unpacking (pure, no I/O): 16-bit PCM mono for the wire, and a reader of the
WAV files people record (any integer width, float, any channels, any rate) for speech input."""

from __future__ import annotations

import io
import struct
import wave

import numpy as np

from voicechat.protocol import INPUT_RATE

_HEADER = struct.Struct("<4sI4s4sIHHIIHH4sI")

SPEECH_INPUT_RATE = INPUT_RATE  # protocol v1's input_audio: PCM16 little-endian mono 16 kHz
_PCM, _FLOAT, _EXTENSIBLE = 1, 3, 0xFFFE  # WAVE format tags


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


def read_wav(data: bytes) -> tuple[np.ndarray, int]:
    """(float32 samples shaped (frames, channels), within [-1, 1]; sample rate) of a WAV file.

    Integer PCM of 8 (unsigned), 16, 24 or 32 bits and IEEE float of 32 or 64 bits, any number
    of channels, any rate, WAVE_FORMAT_EXTENSIBLE included. A truncated last frame is dropped.
    WavError when the bytes are not such a file or hold no samples.
    """
    try:
        with wave.open(io.BytesIO(data), "rb") as reader:
            width, channels = reader.getsampwidth(), reader.getnchannels()
            rate, raw = reader.getframerate(), reader.readframes(reader.getnframes())
            fmt = _PCM
    except wave.Error as exc:
        # Python's wave reads only plain integer PCM (3.11 not even WAVE_FORMAT_EXTENSIBLE).
        if not str(exc).startswith("unknown format"):
            raise WavError(f"not a WAV file ({exc})") from None
        fmt, channels, rate, width, raw = _read_riff(data)
    except (EOFError, struct.error) as exc:
        raise WavError(f"not a WAV file ({str(exc) or 'it is too short'})") from None
    if channels < 1 or rate < 1:
        raise WavError(f"a WAV file with {channels} channels at {rate} Hz")
    frame = width * channels
    raw = raw[: len(raw) - len(raw) % frame]
    if not raw:
        raise WavError("the WAV file holds no audio")
    return _samples(raw, fmt, width).reshape(-1, channels), rate


def _read_riff(data: bytes) -> tuple[int, int, int, int, bytes]:
    """(format tag, channels, rate, bytes per sample, sample bytes) of the formats `wave` refuses:
    IEEE float and WAVE_FORMAT_EXTENSIBLE."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise WavError("not a WAV file (no RIFF/WAVE header)")
    offset, fmt = 12, None
    while offset + 8 <= len(data):
        chunk_id, size = struct.unpack_from("<4sI", data, offset)
        body = offset + 8
        if chunk_id == b"fmt ":
            if size < 16 or body + size > len(data):
                raise WavError("not a WAV file (its fmt chunk is too short)")
            tag, channels, rate, _, _, bits = struct.unpack_from("<HHIIHH", data, body)
            if tag == _EXTENSIBLE and size >= 40:
                tag = struct.unpack_from("<H", data, body + 24)[0]  # the sub-format GUID's head
            fmt = (tag, channels, rate, bits)
        elif chunk_id == b"data":
            if fmt is None:
                raise WavError("not a WAV file (its data chunk comes before its fmt chunk)")
            tag, channels, rate, bits = fmt
            supported = (tag == _PCM and bits in (8, 16, 24, 32)) or (
                tag == _FLOAT and bits in (32, 64)
            )
            if not supported:
                kind = {_PCM: "integer", _FLOAT: "float"}.get(tag, f"format {tag:#x}")
                raise WavError(f"unsupported WAV encoding: {kind}, {bits}-bit")
            return tag, channels, rate, bits // 8, data[body : body + size]  # size may be bogus
        offset = body + size + (size & 1)
    raise WavError("not a WAV file (no fmt and data chunks)")


def _samples(raw: bytes, fmt: int, width: int) -> np.ndarray:
    """Interleaved sample bytes as float32 within [-1, 1]."""
    if fmt == _FLOAT:
        return np.frombuffer(raw, "<f4" if width == 4 else "<f8").astype(np.float32)
    if width == 1:  # 8-bit WAV is unsigned
        return (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0
    if width == 3:
        triples = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
        value = triples[:, 0] | (triples[:, 1] << 8) | (triples[:, 2] << 16)
        value = np.where(value >= 1 << 23, value - (1 << 24), value)
        return value.astype(np.float32) / float(1 << 23)
    if width not in (2, 4):
        raise WavError(f"unsupported WAV encoding: integer, {8 * width}-bit")
    kind = "<i2" if width == 2 else "<i4"
    return (np.frombuffer(raw, kind).astype(np.float64) / float(1 << (8 * width - 1))).astype(
        np.float32
    )


def speech_input_pcm(
    samples: np.ndarray, sample_rate: int, to_rate: int = SPEECH_INPUT_RATE
) -> bytes:
    """What speech input sends: `read_wav`'s samples mixed down to mono, resampled with libsoxr
    to `to_rate`, as PCM16 little-endian."""
    import soxr

    mono = samples.mean(axis=1, dtype=np.float64) if samples.ndim == 2 else samples
    mono = np.asarray(mono, np.float32)
    if sample_rate != to_rate:
        mono = soxr.resample(mono, sample_rate, to_rate, quality="HQ")
    mono = np.nan_to_num(mono, nan=0.0, posinf=1.0, neginf=-1.0)
    return (np.clip(mono, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()
