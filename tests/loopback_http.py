"""A stdlib HTTP server on a free loopback port, served from a thread: the base of the HTTP
test doubles (fish_double.py, stt_double.py). It dies with the test process (daemon threads)."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class LoopbackHTTPServer:
    """`start()` binds 127.0.0.1 on a free port and serves `handler` in a thread; `stop()`
    ends it and closes the socket."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
