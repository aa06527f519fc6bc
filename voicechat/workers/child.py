"""The worker process: `python -P -m voicechat.workers.child KIND SETTINGS PARENT_PID NICE`.

It loads one engine, checks it (a real inference), says "ready", then runs requests one at a
time in the main thread. A reader thread takes frames from stdin: a "cancel" marks a request so
the engine stops at its next step; EOF means the server is gone, and the process exits at once,
whatever the engine is doing.
"""

from __future__ import annotations

import ctypes
import importlib
import json
import logging
import os
import queue
import signal
import sys
import threading
from typing import Any, BinaryIO

from voicechat.workers import wire

log = logging.getLogger("voicechat.worker")

# KIND -> the class that runs inside the worker ("module:Class"; imported only here).
ENGINES = {
    "llm": "voicechat.engines.llama:LlamaEngine",
    "piper": "voicechat.engines.piper:PiperEngine",
    "espeak": "voicechat.engines.espeak:EspeakEngine",
    "whisper": "voicechat.engines.whisper:WhisperEngine",
    "vad": "voicechat.engines.silero:SileroEngine",
    "turn": "voicechat.engines.turn:EndOfTurnEngine",
}

_PR_SET_PDEATHSIG = 1
EXIT_FATAL = 3  # the engine could not load or failed its check (a Python error, reported first)
# Test aid: VOICECHAT_WORKER_STOP_AT=KIND:STAGE makes that worker SIGSTOP itself when it enters
# STAGE ("loading" or "self-check"), so a test can kill it there with a real signal.
STOP_AT_ENV = "VOICECHAT_WORKER_STOP_AT"


def die_with_parent(parent_pid: int, sig: int = signal.SIGKILL) -> None:
    """On Linux the kernel sends `sig` when the parent dies; elsewhere stdin EOF does it."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before the line above took effect
        os._exit(0)


class Channel:
    """Frames out to the server (one writer at a time) and the state of each request."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._lock = threading.Lock()
        self.cancelled: set[int] = set()
        self.jobs: queue.SimpleQueue[tuple[int, dict[str, Any]]] = queue.SimpleQueue()

    def send(self, message: dict[str, Any]) -> None:
        data = wire.encode(message)
        with self._lock:
            try:
                self._out.write(data)
                self._out.flush()
            except (BrokenPipeError, ValueError):
                os._exit(0)  # the server is gone

    def read_requests(self, stdin: BinaryIO) -> None:
        """Reader thread: queue runs, note cancels; exit the process when the server is gone."""
        while True:
            try:
                message = wire.read_sync(stdin)
            except wire.WireError as exc:
                log.error("bad frame from the server (%s); exiting", exc)
                message = None
            if message is None:
                os._exit(0)
            if message.get("op") == "cancel":
                self.cancelled.add(int(message["id"]))
            elif message.get("op") == "run":
                self.jobs.put((int(message["id"]), message.get("req") or {}))


def _stage(channel: Channel, kind: str, stage: str) -> None:
    channel.send({"t": "stage", "stage": stage})
    if os.environ.get(STOP_AT_ENV) == f"{kind}:{stage}":
        os.kill(os.getpid(), signal.SIGSTOP)


def main(argv: list[str]) -> int:
    kind, settings_json, parent_pid, nice = argv[0], argv[1], int(argv[2]), int(argv[3])
    die_with_parent(parent_pid)
    if nice:
        os.nice(nice)  # lower priority, before any thread starts: threads inherit it
    # Frames go out on a private copy of stdout; fd 1 then points at stderr, so anything a
    # native library prints cannot corrupt the frames.
    out = os.fdopen(os.dup(1), "wb")  # buffered: flush() writes a frame whole, even in pieces
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    # Ctrl+C, or a SIGTERM sent to the whole process group (systemd, `kill -TERM -PGID`), is for
    # the server, which drains its answers and then ends us by closing our stdin.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")  # the server
    # prefixes each line with its own time, the worker's kind and pid
    channel = Channel(out)
    threading.Thread(
        target=channel.read_requests, args=(sys.stdin.buffer,), daemon=True, name="requests"
    ).start()

    try:
        _stage(channel, kind, "loading")
        module_name, _, class_name = ENGINES[kind].partition(":")
        engine_class = getattr(importlib.import_module(module_name), class_name)
        engine = engine_class(**json.loads(settings_json))
        _stage(channel, kind, "self-check")
        engine.self_check()
    except Exception as exc:
        channel.send({"t": "fatal", "message": f"{type(exc).__name__}: {exc}"})
        return EXIT_FATAL
    channel.send({"t": "ready", "info": engine.info()})

    while True:
        request_id, request = channel.jobs.get()
        if request_id in channel.cancelled:
            channel.cancelled.discard(request_id)
            channel.send({"t": "end", "id": request_id})
            continue
        try:
            engine.run(
                request,
                lambda data, rid=request_id: channel.send({"t": "data", "id": rid, **data}),
                lambda rid=request_id: rid in channel.cancelled,
            )
        except Exception as exc:
            log.warning("request %d failed: %s: %s", request_id, type(exc).__name__, exc)
            channel.send(
                {"t": "error", "id": request_id, "message": f"{type(exc).__name__}: {exc}"}
            )
        else:
            channel.send({"t": "end", "id": request_id})
        # Requests run in id order: a cancel for this id or an older one is stale now.
        for stale in [i for i in list(channel.cancelled) if i <= request_id]:
            channel.cancelled.discard(stale)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
