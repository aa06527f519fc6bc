"""`GET /metrics`: the server's numbers in Prometheus' text format (`prometheus-client`).

Two kinds of numbers:

- events, counted where they happen: answers by status, time to first audio and voice to voice
  (histograms), refusals by reason, open sessions;
- states, read from the server's `health()` (the same data as `/healthz`) when they are
  published: the engines' worker processes by state, their restarts and queue depths.

One process (`voicechat serve`): every number lives in the process, in a registry of its own
(several servers in one test process do not mix), and the states are read at scrape time.

`serve --workers N`: the kernel hands a scrape to any of the N processes, so each must answer
for all. The supervisor gives its children one directory (PROMETHEUS_MULTIPROC_DIR, in
/dev/shm) and the library's multiprocess mode keeps every number in a small memory-mapped file
per process there; the process that gets the scrape adds them up (MultiProcessCollector).
Counters and histograms of a process that died stay in the sums (what it answered before it
died still happened); its gauges are removed by the supervisor (mark_process_dead), so a
killed process's sessions stop counting at once. Every process publishes its states once a
second (METRICS_REFRESH_S), and the one answering a scrape publishes its own right then: the
other processes' states are at most that old.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

from voicechat.serve_workers import MULTIPROC_ENV

METRICS_PATH = "/metrics"
# The classic text format: every Prometheus version reads it (the library's newest, 1.0.0, is
# the same text for names like ours, but older servers do not know the version).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
METRICS_REFRESH_S = 1.0  # `serve --workers N`: how often each process publishes its states

ANSWER_STATUSES = ("completed", "cancelled", "failed")
# Why a connection, a request or a message was turned away (or a session closed by a limit).
REFUSAL_REASONS = (
    "origin",  # a browser Origin not allowed (a duplicated Origin header too)
    "auth",  # missing or wrong token
    "full",  # --max-connections
    "handshake",  # the cap on connections in the opening handshake dropped one
    "bad_request",  # a malformed request the server answers 400 (a duplicated Host header)
    "slow",  # a client that stopped reading, disconnected
    "idle",  # --idle-timeout, disconnected
    "message_rate",  # --messages-per-minute: a message dropped
    "audio_rate",  # the microphone audio limit (2 x real time): a frame dropped
    "speech_behind",  # speech input behind (the recognizer busy): a frame or command dropped
)
WORKER_STATES = ("starting", "ready", "restarting", "stopped")
# voicechat_speech_queue's queues, from these fields of health()["speech"].
SPEECH_QUEUES = {"queued": "stt_queued", "in_flight": "stt_in_flight"}
# Worker health fields that are not queue depths.
NOT_QUEUES = frozenset({"state", "pid", "restarts"})

# Seconds. Typed: a scripted or remote LLM with a fast voice answers in tens of milliseconds,
# the embedded stack in about half a second. Spoken: the end-of-turn silence is in it (0.6 s by
# default), so it starts higher.
FIRST_AUDIO_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
VOICE_TO_VOICE_BUCKETS = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 5.0, 10.0, 20.0)


def multiprocess_dir(worker_index: int | None) -> str | None:
    """The shared directory of `serve --workers N` (None in a single `voicechat serve`)."""
    path = os.environ.get(MULTIPROC_ENV)
    return path if worker_index is not None and path else None


class ServerMetrics:
    """The metrics of one `VoiceChatServer`; `render()` answers a scrape."""

    def __init__(self, worker_index: int | None = None, *, restarted: bool = False) -> None:
        disable_created_metrics()  # no *_created series: noise to a scrape (process-wide)
        self.shared_dir = multiprocess_dir(worker_index)
        # Multiprocess mode: the values live in files, never in a registry of this process.
        self.registry = None if self.shared_dir else CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.processes = Gauge(
            "voicechat_server_processes",
            "Server processes whose numbers are in this scrape (serve --workers N: N when all "
            "are up)",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.processes.set(1)
        self.server_restarts = Counter(
            "voicechat_server_restarts",
            "Server processes of serve --workers N that died and were started again",
            registry=registry,
        )
        if restarted:
            self.server_restarts.inc()
        self.sessions = Gauge(
            "voicechat_sessions",
            "Open sessions (WebSocket connections past the handshake)",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.max_connections = Gauge(
            "voicechat_max_connections",
            "The --max-connections cap in force (for the whole server)",
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.responses_in_flight = Gauge(
            "voicechat_responses_in_flight",
            "Answers being made now",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.answers = Counter(
            "voicechat_answers",
            "Answers by how they ended (the status of response.done)",
            ["status"],
            registry=registry,
        )
        self.first_audio = Histogram(
            "voicechat_first_audio_seconds",
            "Typed turns: from the user's message arriving to the answer's first audio sent",
            buckets=FIRST_AUDIO_BUCKETS,
            registry=registry,
        )
        self.voice_to_voice = Histogram(
            "voicechat_voice_to_voice_seconds",
            "Spoken turns: from the end of the user's speech to the answer's first audio sent",
            buckets=VOICE_TO_VOICE_BUCKETS,
            registry=registry,
        )
        self.refusals = Counter(
            "voicechat_refusals",
            "Connections, requests or messages turned away, and sessions closed, by a limit",
            ["reason"],
            registry=registry,
        )
        self.engine_workers = Gauge(
            "voicechat_engine_workers",
            "The engines' worker processes (llm, piper, espeak, vad, whisper) by state",
            ["engine", "state"],
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.engine_restarts = Counter(
            "voicechat_engine_restarts",
            "Restarts of the engines' worker processes (a crash, a stuck worker)",
            ["engine"],
            registry=registry,
        )
        self.engine_queue = Gauge(
            "voicechat_engine_queue",
            "Requests an engine's worker holds, by queue (in_flight: sent, not answered yet)",
            ["engine", "queue"],
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.speech_queue = Gauge(
            "voicechat_speech_queue",
            "Speech recognition jobs (spoken turns to transcribe) by queue: queued (the backlog, "
            "waiting for the recognizer) and in_flight",
            ["queue"],
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.speech_listening = Gauge(
            "voicechat_speech_listening",
            "Sessions that have sent microphone audio (a listener each)",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.speech_shed = Counter(
            "voicechat_speech_shed",
            "Spoken turns not transcribed because the backlog was full (the client got an error)",
            registry=registry,
        )
        for status in ANSWER_STATUSES:  # present at 0, so rate() sees the first one
            self.answers.labels(status)
        for reason in REFUSAL_REASONS:
            self.refusals.labels(reason)
        self._restarts_seen: dict[str, int] = {}
        self._shed_seen = 0
        self._states_seen: dict[str, set[str]] = {}
        self._queues_seen: dict[str, set[str]] = {}

    def answer_done(self, status: str, first_audio_s: float | None, *, spoken: bool) -> None:
        """One answer ended (its response.done was queued)."""
        self.answers.labels(status).inc()
        if first_audio_s is not None:
            histogram = self.voice_to_voice if spoken else self.first_audio
            histogram.observe(first_audio_s)

    def refused(self, reason: str) -> None:
        self.refusals.labels(reason).inc()

    def publish(self, health: Mapping[str, Any]) -> None:
        """Set the gauges read from the server's health() (the data of /healthz)."""
        self.sessions.set(health.get("sessions", 0))
        self.max_connections.set(health.get("max_connections", 0))
        self.responses_in_flight.set(health.get("responses_in_flight", 0))
        for engine, worker in health.get("workers", {}).items():
            self._publish_worker(engine, worker)
        if (speech := health.get("speech")) is not None:  # speech input on
            self._publish_speech(speech)

    def _publish_speech(self, speech: Mapping[str, Any]) -> None:
        """The recognizer's backlog, from health()["speech"] (speech/scheduler.py)."""
        for queue, field in SPEECH_QUEUES.items():
            self.speech_queue.labels(queue).set(speech.get(field, 0))
        self.speech_listening.set(speech.get("listening", 0))
        shed = int(speech.get("stt_shed", 0))
        if shed > self._shed_seen:
            self.speech_shed.inc(shed - self._shed_seen)
        self._shed_seen = shed

    def _publish_worker(self, engine: str, worker: Mapping[str, Any]) -> None:
        state = str(worker.get("state", "stopped"))
        states = self._states_seen.setdefault(engine, set(WORKER_STATES))
        states.add(state)
        for each in states:  # one 1, the others 0: a state left is not left behind at 1
            self.engine_workers.labels(engine, each).set(1 if each == state else 0)
        restarts = int(worker.get("restarts", 0))
        new = restarts - self._restarts_seen.get(engine, 0)
        counter = self.engine_restarts.labels(engine)  # present at 0 before the first one
        if new > 0:
            counter.inc(new)
        self._restarts_seen[engine] = restarts
        queues = self._queues_seen.setdefault(engine, set())
        depths = dict(_queue_depths(worker))
        queues.update(depths)
        for queue in queues:
            self.engine_queue.labels(engine, queue).set(depths.get(queue, 0))

    def render(self, health: Mapping[str, Any]) -> tuple[bytes, str]:
        """A scrape: this process's states published now, then every number, as text."""
        self.publish(health)
        registry = self.registry
        if registry is None:  # serve --workers N: the sum over every process's files
            registry = CollectorRegistry()
            MultiProcessCollector(registry, self.shared_dir)
        return generate_latest(registry), CONTENT_TYPE


def _queue_depths(worker: Mapping[str, Any]) -> Iterable[tuple[str, float]]:
    """The numeric fields of a worker's health that are queue depths (in_flight, a backlog)."""
    for name, value in worker.items():
        if (
            name not in NOT_QUEUES
            and isinstance(value, int | float)
            and not isinstance(value, bool)
        ):
            yield name, float(value)
