"""`voicechat ask`: one prompt, the answer's text to stdout, its audio to a WAV file or speakers.

Exit codes (docs/cli.md): 0 the answer completed; 1 it failed or was cancelled; 2 usage error;
3 the server cannot be reached or went away.
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from voicechat.audio.player import AudioPlayer
from voicechat.audio.wav import decode_wav, encode_wav, resample
from voicechat.client.connection import ChatConnection, ConnectionLost, ServerUnavailable
from voicechat.settings import EXIT_ANSWER_FAILED, EXIT_OK, EXIT_UNREACHABLE


class AudioCollector:
    """Joins audio.chunk frames into one PCM stream at the first chunk's sample rate."""

    def __init__(self) -> None:
        self.sample_rate: int | None = None
        self._parts: list[bytes] = []

    def add(self, event: dict[str, Any]) -> None:
        data, rate = decode_wav(base64.b64decode(event["audio"]))
        if self.sample_rate is None:
            self.sample_rate = rate
        elif rate != self.sample_rate:
            data = resample(np.frombuffer(data, "<i2"), rate, self.sample_rate).tobytes()
        self._parts.append(data)

    @property
    def pcm(self) -> bytes:
        return b"".join(self._parts)

    def write(self, path: Path) -> None:
        path.write_bytes(encode_wav(self.pcm, self.sample_rate or 22050))


async def ask(
    text: str,
    *,
    server_url: str,
    out: Path | None = None,
    json_lines: bool = False,
    player: AudioPlayer | None = None,
    token: str | None = None,
    stdout: TextIO = sys.stdout,
    stderr: TextIO = sys.stderr,
) -> int:
    """Send one message, stream the answer; return the exit code.

    With a `player`, chunks play as they arrive; the call returns once the last one was heard,
    and with `json_lines` a last `playback` line reports samples played and underruns.
    """
    audio = AudioCollector()
    status = "failed"
    try:
        async with ChatConnection(server_url, token=token) as connection:
            if json_lines:
                print(json.dumps(connection.session), file=stdout, flush=True)
            await connection.send_user_message(text)
            async for event in connection.events():
                if json_lines:
                    print(json.dumps(event, ensure_ascii=False), file=stdout, flush=True)
                kind = event.get("type")
                if kind == "text.delta":
                    if not json_lines:
                        print(event["text"], end="", file=stdout, flush=True)
                elif kind == "audio.chunk":
                    audio.add(event)
                    if player is not None:
                        player.enqueue_wav(base64.b64decode(event["audio"]), event["segment"])
                elif kind == "error":
                    print(f"voicechat: {event['code']}: {event['message']}", file=stderr)
                    if event.get("response_id") is None:
                        return EXIT_ANSWER_FAILED
                elif kind == "response.done":
                    status = event["status"]
                    break
    except ServerUnavailable as exc:
        print(f"voicechat: {exc}", file=stderr)
        return EXIT_UNREACHABLE
    except ConnectionLost as exc:
        print(f"\nvoicechat: {exc}", file=stderr)
        return EXIT_UNREACHABLE
    finally:
        if out is not None and audio.sample_rate is not None:
            audio.write(out)
        if player is not None:
            player.finish()
    if player is not None:
        await player.wait_drained()
        if json_lines:
            report = {
                "type": "playback",
                "sample_rate": player.sample_rate,
                **player.stats.as_dict(),
            }
            print(json.dumps(report), file=stdout, flush=True)
    if not json_lines:
        print(file=stdout)
    if out is not None and audio.sample_rate is None:
        print("voicechat: the answer had no audio; no WAV written", file=stderr)
    return EXIT_OK if status == "completed" else EXIT_ANSWER_FAILED
