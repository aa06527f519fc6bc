"""The frames between the server and a worker: a 4-byte big-endian length, then msgpack.

Server -> worker: {"op": "run", "id": N, "req": {...}}, {"op": "cancel", "id": N}.
Worker -> server: {"t": "stage", "stage": "loading"|"self-check"}, {"t": "ready", "info": {...}},
{"t": "fatal", "message": ...} (then it exits), and per request {"t": "data", "id": N, ...},
{"t": "error", "id": N, "message": ...}, {"t": "end", "id": N}.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any, BinaryIO

import msgpack

MAX_FRAME_BYTES = 64 * 1024 * 1024  # far above one unit's audio; a larger length is corruption
_HEADER = struct.Struct(">I")


class WireError(Exception):
    """The other side sent something that is not a frame: treat the worker as broken."""


def encode(message: dict[str, Any]) -> bytes:
    body = msgpack.packb(message, use_bin_type=True)
    return _HEADER.pack(len(body)) + body


def _decode(body: bytes) -> dict[str, Any]:
    try:
        message = msgpack.unpackb(body, raw=False)
    except (ValueError, msgpack.UnpackException) as exc:
        raise WireError(f"undecodable frame: {exc}") from None
    if not isinstance(message, dict):
        raise WireError("a frame that is not a map")
    return message


def _length(header: bytes) -> int:
    (length,) = _HEADER.unpack(header)
    if length > MAX_FRAME_BYTES:
        raise WireError(f"frame of {length} bytes")
    return int(length)


async def read_async(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    """The next frame, or None at a clean EOF (the worker is gone)."""
    try:
        header = await reader.readexactly(_HEADER.size)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise WireError("the pipe ended inside a frame header") from None
        return None
    try:
        return _decode(await reader.readexactly(_length(header)))
    except asyncio.IncompleteReadError:
        raise WireError("the pipe ended inside a frame") from None


def read_sync(stream: BinaryIO) -> dict[str, Any] | None:
    """The worker's side of `read_async`: blocking, None at EOF (the server is gone)."""
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    length = _length(header)
    body = stream.read(length)
    if len(body) < length:
        return None
    return _decode(body)
