"""The Fish Speech test double (tests/fish_double.py) as a process of its own, for benchmarks.

    python scripts/fish_standin.py [--latency-ms 80]

Prints `listening http://127.0.0.1:PORT` on stdout once it accepts connections, then serves
until SIGTERM/SIGINT. `--latency-ms` is the double's `first_byte_delay_s`: each /v1/tts request
waits that long, then the audio streams at once (pcm_for_text: 30 ms of 44.1 kHz audio per
character, at least 100 ms; no time per audio second). The double is a thread per connection
(stdlib ThreadingHTTPServer); its listen backlog is raised here from socketserver's 5 so that a
burst of new connections is not dropped and retried a second later, and a client resetting
its kept-alive connection prints no traceback.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository: tests/
from tests.fish_double import FishDouble, pcm_for_text

__all__ = ["FishDouble", "first_audio_ms", "pcm_for_text"]

_default_handle_error = ThreadingHTTPServer.handle_error


def first_audio_ms(latency_ms: float) -> float:
    """How long after a request the double's first audio bytes leave: its delay, nothing per
    audio second (the whole unit's PCM is computed and written at once)."""
    return latency_ms


def quiet_handle_error(self: ThreadingHTTPServer, request: object, address: object) -> None:
    """A client that resets its kept-alive connection (a server being stopped) is no error."""
    if not isinstance(sys.exc_info()[1], ConnectionError):
        _default_handle_error(self, request, address)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--latency-ms", type=float, default=0.0)
    args = parser.parse_args()
    ThreadingHTTPServer.request_queue_size = 1024
    ThreadingHTTPServer.handle_error = quiet_handle_error  # type: ignore[method-assign]
    double = FishDouble()
    double.first_byte_delay_s = args.latency_ms / 1000
    double.start()  # a free port on loopback
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    print(f"listening {double.url}", flush=True)
    while not stop.wait(1.0):
        double.requests.clear()  # a benchmark sends thousands: keep memory flat
    double.stop()


if __name__ == "__main__":
    main()
