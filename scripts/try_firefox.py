#!/usr/bin/env python3
"""Try the web page in headless Firefox ESR (Debian's firefox-esr), driven over WebDriver BiDi,
which Firefox speaks itself (no geckodriver): start `voicechat serve`, open the page, click into
the message box, type a question, press Enter, wait until the answer has finished playing, and
print the page's own counters (`window.voicechat.state()`).

    python3 scripts/try_firefox.py [--llm scripted] [--tts tone]     e.g. --llm local --tts piper

Headless Firefox starts its AudioContext only when it can reach a sound server: run it with
PULSE_SERVER pointing at one (a private PulseAudio null sink is enough). Without one, the page
says "sound paused by the browser (no output device?)" and nothing plays.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import websockets

ENTER = "\ue007"  # WebDriver's key code for Enter
QUESTION = "Tell me about the moon."
AUTOPLAY_PREFS = 'user_pref("media.autoplay.default", 0);\n'


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Bidi:
    """Just enough of WebDriver BiDi: send a command, wait for its answer."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.ids = itertools.count(1)

    async def __call__(self, method: str, **params: Any) -> dict[str, Any]:
        my_id = next(self.ids)
        await self.ws.send(json.dumps({"id": my_id, "method": method, "params": params}))
        while True:
            message = json.loads(await self.ws.recv())
            if message.get("id") == my_id:
                if message.get("type") == "error":
                    raise RuntimeError(f"{method}: {message.get('message')}")
                return dict(message["result"])


async def connect_bidi(port: int) -> Any:
    for _ in range(150):  # Firefox takes a few seconds to start
        try:
            return await websockets.connect(f"ws://127.0.0.1:{port}/session", max_size=None)
        except OSError:
            await asyncio.sleep(0.2)
    raise RuntimeError("Firefox did not open its WebDriver BiDi port")


async def try_page(page_url: str, bidi_port: int) -> dict[str, Any]:
    async with await connect_bidi(bidi_port) as ws:
        cmd = Bidi(ws)
        await cmd("session.new", capabilities={})
        context = (await cmd("browsingContext.getTree"))["contexts"][0]["context"]
        await cmd("browsingContext.navigate", context=context, url=page_url, wait="complete")

        async def evaluate(expression: str) -> Any:
            target = {"context": context}
            return (await cmd("script.evaluate", expression=expression, target=target,
                              awaitPromise=False))["result"]  # fmt: skip

        async def state() -> dict[str, Any]:
            return json.loads((await evaluate("JSON.stringify(window.voicechat.state())"))["value"])

        async def until(condition: Any, what: str, timeout_s: float = 120.0) -> dict[str, Any]:
            for _ in range(int(timeout_s / 0.2)):
                if condition(current := await state()):
                    return current
                await asyncio.sleep(0.2)
            raise RuntimeError(f"timed out waiting for {what}")

        await until(lambda s: s["connection"]["state"] == "connected", "the connection")
        box = (await evaluate("document.getElementById('message')"))["sharedId"]
        click = [
            {"type": "pointerMove", "x": 0, "y": 0,
             "origin": {"type": "element", "element": {"sharedId": box}}},
            {"type": "pointerDown", "button": 0},
            {"type": "pointerUp", "button": 0},
        ]  # fmt: skip
        keys = [
            {"type": kind, "value": key}
            for key in [*QUESTION, ENTER]
            for kind in ("keyDown", "keyUp")
        ]
        # One call each: the sources of one call act in parallel, so keys would beat the click.
        pointer = {"type": "pointer", "id": "mouse", "actions": click}
        await cmd("input.performActions", context=context, actions=[pointer])
        keyboard = {"type": "key", "id": "keyboard", "actions": keys}
        await cmd("input.performActions", context=context, actions=[keyboard])

        def answered(s: dict[str, Any]) -> bool:
            turns = [turn for turn in s["turns"] if turn["role"] == "assistant"]
            ended = bool(turns) and turns[-1]["status"] in ("completed", "failed", "cancelled")
            return ended and not s["player"]["queued"]

        return await until(answered, "the answer to finish playing")


def wait_for_server(port: int, timeout_s: float = 120.0) -> None:
    """The embedded engines load and pass their self-check before the server listens."""
    for _ in range(int(timeout_s / 0.2)):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("voicechat serve did not come up")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--llm", default="scripted")
    parser.add_argument("--tts", default="tone")
    args = parser.parse_args()
    port, bidi_port = free_port(), free_port()
    profile = Path(tempfile.mkdtemp(prefix="voicechat-firefox-"))
    (profile / "user.js").write_text(AUTOPLAY_PREFS)
    server = subprocess.Popen(
        [sys.executable, "-m", "voicechat", "serve", "--port", str(port),
         "--llm", args.llm, "--tts", args.tts, "--log-level", "warning"]
    )  # fmt: skip
    firefox = subprocess.Popen(
        ["firefox-esr", "--headless", "--no-remote", "--profile", str(profile),
         f"--remote-debugging-port={bidi_port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for_server(port)
        final = asyncio.run(try_page(f"http://127.0.0.1:{port}/", bidi_port))
    finally:
        firefox.terminate()
        server.terminate()
        firefox.wait(timeout=30)
        server.wait(timeout=30)
    answer = [turn for turn in final["turns"] if turn["role"] == "assistant"][-1]
    player = final["player"]
    print(f"answer ({answer['status']}): {answer['text'][:100]}…")
    print(f"metrics: {final['metrics']}")
    print(
        f"player: {player['kind']}, context {player['state']} at {player['contextRate']} Hz; "
        f"samples sent {sum(a.get('sent', 0) for a in player['answers'].values())}, "
        f"received {player['received']}, played {player['played']}, "
        f"underruns {player['underruns']}"
    )
    print(f"banner: {final['banner']!r}; notices: {final['notices']}")
    return 0 if answer["status"] == "completed" and player["played"] else 1


if __name__ == "__main__":
    sys.exit(main())
