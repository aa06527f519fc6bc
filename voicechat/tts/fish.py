"""Fish Speech HTTP API client (`POST /v1/tts`), streaming by default.

Facts it relies on (see docs/tts.md): msgpack request bodies; a streamed body is raw int16 LE mono
44.1 kHz PCM without a header in current servers, but older ones sent a WAV header with zero sizes
first, so both are accepted; HTTP chunks may end in the middle of a sample, so an odd byte is kept
for the next piece; errors are JSON `{"statusCode", "message", "error"}` (422: a list).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncGenerator
from typing import Any

import httpx
import msgpack

from voicechat.audio.wav import WavError, decode_wav, parse_wav_header
from voicechat.tts.base import Pcm, TTSError

log = logging.getLogger(__name__)

FISH_SAMPLE_RATE = 44100
FAILURES_BEFORE_BACKOFF = 3  # consecutive failures of one worker before it is rested
BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)  # rest periods; the last one repeats
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
        # A worker that keeps failing is rested, not hammered: no request until `_down_until`.
        self._failures = dict.fromkeys(self.urls, 0)
        self._down_until = dict.fromkeys(self.urls, 0.0)
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
        """The least busy worker that is not resting; TTSError at once if all are."""
        self._turn += 1
        now = time.monotonic()
        count = len(self.urls)
        order = [self.urls[(self._turn + i) % count] for i in range(count)]
        ready = [url for url in order if self._down_until[url] <= now]
        if not ready:
            wait = min(self._down_until.values()) - now
            raise TTSError(f"Fish Speech resting after repeated failures; next try in {wait:.0f} s")
        return min(ready, key=self._busy.__getitem__)

    def _record(self, url: str, ok: bool) -> None:
        if ok:
            self._failures[url] = 0
            return
        if time.monotonic() < self._down_until[url]:
            return  # requests already in flight when it went down: one outage, not many
        self._failures[url] += 1
        extra = self._failures[url] - FAILURES_BEFORE_BACKOFF
        if extra >= 0:
            rest = BACKOFF_S[min(extra, len(BACKOFF_S) - 1)]
            self._down_until[url] = time.monotonic() + rest
            log.warning(
                "Fish Speech at %s failed %d times; resting it %.0f s",
                url,
                self._failures[url],
                rest,
            )

    async def synthesize(self, text: str) -> AsyncGenerator[Pcm, None]:
        url = self._pick_url()
        self._busy[url] += 1
        try:
            async for pcm in self._synthesize_at(url, text):
                yield pcm
        except TTSError as exc:
            self._record(url, ok=not exc.server_fault)
            raise
        else:
            self._record(url, ok=True)
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
                status = response.status_code
                if status != 200:
                    raise TTSError(
                        _describe_error(status, await response.aread()),
                        server_fault=status >= 500 or status == 429,
                    )
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
