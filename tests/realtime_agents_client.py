"""openai-agents' realtime client for tests/test_realtime_clients.py, run in .venv-agents.

openai-agents 0.24.0 requires websockets<17 and voicechat's server needs websockets>=17, so the
two cannot share an environment: the test starts the server in its own process and runs this
script with the Python of .venv-agents (made by `bash scripts/setup.sh test` from
tests/agents-requirements.txt), as a user's app would run the client. Only the standard library
and openai-agents are imported here.

It connects to URL, does one turn (a typed message, or the 24 kHz PCM16 of --audio sent in
100 ms appends as a microphone would), and prints one JSON object a line for every session event
up to and including the turn's agent_end: {"type": ...} with what the test asserts on (the model
event's type, the server event's type, transcripts, errors, audio byte counts). The answer's
audio goes to --audio-out. The first line gives the versions in use. Exit code 0 once agent_end
came; 1 if the session ended first or the turn took longer than --timeout seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import sys
from pathlib import Path
from typing import Any, BinaryIO

from agents.realtime import RealtimeAgent, RealtimeRunner, RealtimeSession

RATE = 24000  # openai-agents sends and expects PCM16 at 24 kHz
CHUNK_BYTES = RATE // 10 * 2  # 100 ms an append


def emit(line: dict[str, Any]) -> None:
    print(json.dumps(line), flush=True)


def describe(event: Any, audio_out: BinaryIO) -> dict[str, Any]:
    """One session event as a JSON object; its audio goes to `audio_out`."""
    line: dict[str, Any] = {"type": event.type}
    if event.type == "audio":
        audio_out.write(event.audio.data)
        line["bytes"] = len(event.audio.data)
    elif event.type == "error":
        line["error"] = repr(event.error)
    elif event.type == "history_updated":
        line["assistant"] = [
            [getattr(part, "transcript", None) for part in item.content]
            for item in event.history
            if getattr(item, "role", None) == "assistant"
        ]
    elif event.type == "raw_model_event":
        data = event.data
        line["model"] = data.type
        if data.type == "raw_server_event":
            line["server"] = data.data["type"]
            session = data.data.get("session") if isinstance(data.data, dict) else None
            if isinstance(session, dict):  # session.created, session.updated
                output = session.get("audio", {}).get("output", {})
                line["output_format"] = output.get("format")
        elif data.type == "transcript_delta":
            line["delta"] = data.delta
        elif data.type == "input_audio_transcription_completed":
            line["transcript"] = data.transcript
        elif data.type == "error":
            line["error"] = repr(data.error)
        elif data.type == "exception":
            line["error"] = f"{data.context}: {data.exception!r}"
    return line


async def turn(session: RealtimeSession, args: argparse.Namespace, audio_out: BinaryIO) -> bool:
    """Does the turn; True once agent_end came, False if the session ended first."""
    if args.audio is None:
        await session.send_message(args.message)
    else:
        audio = args.audio.read_bytes()
        for start in range(0, len(audio), CHUNK_BYTES):
            await session.send_audio(audio[start : start + CHUNK_BYTES])
    async for event in session:
        emit(describe(event, audio_out))
        if event.type == "agent_end":
            return True
    return False


async def main(args: argparse.Namespace) -> int:
    emit(
        {
            "type": "versions",
            **{
                name: importlib.metadata.version(name)
                for name in ("openai-agents", "openai", "websockets")
            },
        }
    )
    runner = RealtimeRunner(RealtimeAgent(name="voice", instructions="Be brief."))
    with args.audio_out.open("wb") as audio_out:
        try:
            async with asyncio.timeout(args.timeout):
                session = await runner.run(model_config={"url": args.url, "api_key": "sk-local"})
                async with session:
                    ended = await turn(session, args, audio_out)
        except TimeoutError:
            emit({"type": "client_error", "error": f"no agent_end within {args.timeout} s"})
            return 1
    if not ended:
        emit({"type": "client_error", "error": "the session ended before agent_end"})
        return 1
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="ws://HOST:PORT/v1/realtime")
    parser.add_argument("--message", default="Say hello.", help="the typed turn's text")
    parser.add_argument("--audio", type=Path, help="a spoken turn instead: 24 kHz PCM16 mono")
    parser.add_argument(
        "--audio-out", type=Path, required=True, help="where the answer's audio goes"
    )
    parser.add_argument("--timeout", type=float, default=20.0, help="bound on the whole turn, s")
    sys.exit(asyncio.run(main(parser.parse_args())))
