"""The native inference engines, each of which runs inside a worker process, never the server.

llama.cpp (`llama.py`), Piper on onnxruntime (`piper.py`) and libespeak-ng (`espeak.py`) can
crash in native code; `voicechat.workers` runs each in a child process of its own. Every engine
has the same three methods: `info()`, `self_check()` (a real inference at start-up) and
`run(request, emit, cancelled)`. Importing this package is cheap (the child starts fast): each
engine imports its native library only when it is created.
"""
