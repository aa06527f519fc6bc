"""Fish Speech HTTP API client (`POST /v1/tts`), streaming by default.

Facts it relies on (see docs/tts.md): msgpack request bodies; a streamed body is raw int16 LE mono
44.1 kHz PCM without a header in current servers, but older ones sent a WAV header with zero sizes
first, so both are accepted; HTTP chunks may end in the middle of a sample, so an odd byte is kept
for the next piece; errors are JSON `{"statusCode", "message", "error"}` (422: a list).
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from typing import Any

import httpx
import msgpack

from voicechat.audio.wav import WavError, decode_wav, parse_wav_header
from voicechat.tts.base import Pcm, TTSError

FISH_SAMPLE_RATE = 44100
_MIN_PIECE_BYTES = 2048  # forward audio in pieces of at least this size (except the last)


class FishSpeechTTS:
    """Async client of a Fish Speech server; one pooled `httpx.AsyncClient` for all units."""

    name = "fish"

    def __init__(
        self,
        url: str | list[str] = "http://127.0.0.1:8080",
        *,
        api_key: str | None = None,
        reference_id: str | None = None,
        streaming: bool = True,
        timeout_s: float = 30.0,
        connect_timeout_s: float = 5.0,
        max_connections: int = 16,
    ) -> None:
        urls = [url] if isinstance(url, str) else list(url)
        if not urls:
            raise ValueError("Fish Speech needs at least one URL")
        self.urls = [u.rstrip("/") for u in urls]
        self.url = self.urls[0]
        # Each Fish Speech worker serves one request at a time: send a unit to the least busy.
        self._busy = dict.fromkeys(self.urls, 0)
        self._turn = 0  # breaks ties in turn, so idle workers share the load
        self.reference_id = reference_id
        self.streaming = streaming
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s),
            limits=httpx.Limits(max_connections=max_connections),
        )

    def _request_body(self, text: str) -> bytes:
        body: dict[str, Any] = {
            "text": text,
            "format": "wav",
            "streaming": self.streaming,
            "normalize": True,
        }
        if self.reference_id:
            body["reference_id"] = self.reference_id
        return msgpack.packb(body)

    def _pick_url(self) -> str:
        self._turn += 1
        count = len(self.urls)
        order = [self.urls[(self._turn + i) % count] for i in range(count)]
        return min(order, key=self._busy.__getitem__)

    async def synthesize(self, text: str) -> AsyncGenerator[Pcm, None]:
        url = self._pick_url()
        self._busy[url] += 1
        try:
            async for pcm in self._synthesize_at(url, text):
                yield pcm
        finally:
            self._busy[url] -= 1

    async def _synthesize_at(self, url: str, text: str) -> AsyncGenerator[Pcm, None]:
        try:
            async with self._client.stream(
                "POST",
                f"{url}/v1/tts",
                content=self._request_body(text),
                headers={"Content-Type": "application/msgpack"},
            ) as response:
                if response.status_code != 200:
                    raise TTSError(_describe_error(response.status_code, await response.aread()))
                if self.streaming:
                    async for pcm in _pcm_pieces(response):
                        yield pcm
                else:
                    try:
                        data, rate = decode_wav(await response.aread())
                    except WavError as exc:
                        raise TTSError(f"Fish Speech sent unusable audio: {exc}") from None
                    yield Pcm(data, rate)
        except httpx.HTTPError as exc:
            raise TTSError(f"Fish Speech at {url}: {type(exc).__name__}: {exc}") from None

    async def aclose(self) -> None:
        await self._client.aclose()


async def _pcm_pieces(response: httpx.Response) -> AsyncGenerator[Pcm, None]:
    """A streamed body (headerless PCM, or legacy WAV header + PCM) as whole-sample pieces."""
    if "json" in response.headers.get("content-type", ""):
        raise TTSError(_describe_error(200, await response.aread()))
    pending = b""
    sample_rate: int | None = None
    async for chunk in response.aiter_bytes():
        pending += chunk
        if sample_rate is None:
            if len(pending) < 4:
                continue
            if pending.startswith(b"RIFF"):
                try:
                    header = parse_wav_header(pending)
                except WavError as exc:
                    raise TTSError(f"Fish Speech sent unusable audio: {exc}") from None
                if header is None:
                    continue
                offset, sample_rate = header
                pending = pending[offset:]
            else:
                sample_rate = FISH_SAMPLE_RATE
        if len(pending) >= _MIN_PIECE_BYTES:
            whole = len(pending) & ~1
            yield Pcm(pending[:whole], sample_rate)
            pending = pending[whole:]
    if sample_rate is None:
        raise TTSError("Fish Speech sent no audio")
    if len(pending) >= 2:
        whole = len(pending) & ~1
        yield Pcm(pending[:whole], sample_rate)


def _describe_error(status: int, body: bytes) -> str:
    """A one-line reason from Fish Speech's JSON error (a dict, or a 422 list)."""
    try:
        detail: Any = json.loads(body)
    except ValueError:
        detail = body[:200].decode("utf-8", "replace")
    if isinstance(detail, dict):
        detail = detail.get("message") or detail.get("error") or detail
    elif isinstance(detail, list) and detail and isinstance(detail[0], dict):
        detail = "; ".join(str(item.get("msg", item)) for item in detail[:3])
    return f"Fish Speech answered HTTP {status}: {detail}"
