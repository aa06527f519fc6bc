"""Native engines in worker processes: a crash in llama.cpp, onnxruntime or espeak-ng costs the
answers that were using it, never the server.

Each worker is a child Python process (`python -P -m voicechat.workers.child KIND`) that owns one
engine (`voicechat/engines/`: the local LLM, the Piper voice, or espeak-ng) and serves one request
at a time. Requests and their streamed replies are length-prefixed msgpack frames over the child's
stdin and stdout (`wire.py`). The server side (`supervisor.py`) reads them on the event loop,
notices a death at once (EOF on the pipe, then the exit status) or a stall (it owes answers and
has sent no frame for 30 s: it kills the worker), fails the requests in flight, logs the
signal, and starts a fresh worker with backoff. A worker whose parent dies exits too: its stdin
reaches EOF, and on Linux the kernel also sends it SIGKILL (PR_SET_PDEATHSIG).
"""

from voicechat.workers.supervisor import Worker, WorkerDied, WorkerError, WorkerStartError

__all__ = ["Worker", "WorkerDied", "WorkerError", "WorkerStartError"]
