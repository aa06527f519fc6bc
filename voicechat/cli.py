"""The command line: `voicechat serve`, `voicechat ask`. Thin: parse flags, build objects, run.

Every option can also be set with a VOICECHAT_* environment variable (shown in --help).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from contextlib import AsyncExitStack, ExitStack, asynccontextmanager
from dataclasses import fields
from pathlib import Path
from typing import Annotated, Any

import typer

from voicechat.audio.player import AudioPlayer, AudioUnavailable, list_output_devices
from voicechat.client.ask import EXIT_USAGE, ask
from voicechat.client.connection import DEFAULT_SERVER_URL
from voicechat.config import BackendOptions, ConfigError, open_backends
from voicechat.pipeline import PipelineSettings
from voicechat.server import ServerConfig, VoiceChatServer, exposure_problem, is_loopback
from voicechat.workers import WorkerStartError

EXIT_ENGINE = 4  # an embedded engine failed to load or crashed in its start-up self-check

app = typer.Typer(
    name="voicechat",
    help="Speak an LLM's answer while the LLM is still writing it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

log = logging.getLogger("voicechat")


def _option(name: str, help: str, **kwargs: Any) -> Any:
    """A flag `--name` that also reads VOICECHAT_NAME."""
    env = "VOICECHAT_" + name.split("/")[0].lstrip("-").replace("-", "_").upper()
    return typer.Option(name, envvar=env, help=help, **kwargs)


# Sent by the clients, required by the server when set (docs/security.md).
Token = Annotated[
    str | None,
    _option("--token", "Shared secret: the server requires it, clients send it (Bearer)."),
]

# Audio flags, shared by `ask --play` and `talk`.
Device = Annotated[
    str | None,
    _option("--device", "Audio output: an index or name from --list-devices, or null."),
]
ListDevices = Annotated[
    bool, typer.Option("--list-devices", help="List audio output devices and exit.")
]

# Back-end flags, shared by `serve` and `ask --embedded` (their names match BackendOptions).
Llm = Annotated[
    str,
    _option("--llm", "Chat back end: local, openai, graph:MODULE:ATTR or scripted[:PATH]."),
]
LlmModelPath = Annotated[Path | None, _option("--llm-model-path", "A GGUF model for --llm local.")]
MaxTokens = Annotated[int, _option("--max-tokens", "Longest answer, in tokens.", min=1)]
SystemPrompt = Annotated[str | None, _option("--system-prompt", "Replace the system prompt.")]
OpenaiBaseUrl = Annotated[
    str | None,
    _option("--openai-base-url", "OpenAI-compatible server, e.g. http://127.0.0.1:11434/v1."),
]
OpenaiModel = Annotated[str, _option("--openai-model", "Model name for --llm openai.")]
Memory = Annotated[
    str, _option("--memory", "Conversation memory: memory, sqlite:PATH or postgres://...")
]
Tts = Annotated[str, _option("--tts", "TTS engine: piper (embedded), fish or tone (synthetic).")]
PiperModel = Annotated[Path | None, _option("--piper-model", "Another Piper .onnx voice.")]
SpeakingRate = Annotated[
    float, _option("--speaking-rate", "Piper speaking rate (1.0 normal, 1.2 faster).")
]
ToneLatency = Annotated[float, _option("--tone-latency-ms", "Simulated tone TTS delay per unit.")]
ToneRtf = Annotated[float, _option("--tone-rtf", "Simulated tone TTS time per second of audio.")]
FishUrl = Annotated[
    list[str],
    _option("--fish-url", "Fish Speech API server; repeat for several workers (least busy first)."),
]
FishApiKey = Annotated[str | None, _option("--fish-api-key", "Fish Speech --api-key.")]
FishReferenceId = Annotated[str | None, _option("--fish-reference-id", "A saved Fish voice.")]
FishStreaming = Annotated[
    bool,
    _option("--fish-streaming/--no-fish-streaming", "Ask Fish Speech to stream each unit."),
]
LogLevel = Annotated[str, _option("--log-level", "debug, info, warning or error.")]

DEFAULTS = BackendOptions()
LIMITS = ServerConfig()
PIPELINE = PipelineSettings()


def _setup_logging(level: str) -> None:
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise typer.BadParameter(f"unknown log level {level!r}", param_hint="--log-level")
    logging.basicConfig(level=numeric, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The library logs every connection at INFO; our sessions already do, once.
    logging.getLogger("websockets").setLevel(max(numeric, logging.WARNING))


def _backend_options(flags: dict[str, Any]) -> BackendOptions:
    """The back-end options among a command's flags (commands share the flag names)."""
    names = {field.name for field in fields(BackendOptions)}
    return BackendOptions(
        **{
            name: tuple(value) if isinstance(value, list) else value
            for name, value in flags.items()
            if name in names
        }
    )


@asynccontextmanager
async def running_server(options: BackendOptions, config: ServerConfig) -> Any:
    """Load the back ends (before accepting anyone), serve, and release everything after."""
    async with AsyncExitStack() as stack:
        backends = await open_backends(options, stack)
        server = VoiceChatServer(backends.chat, backends.tts, config, backends.workers)
        await server.start()
        try:
            yield server
        finally:
            await server.shutdown()


def _run(main: Any) -> int:
    """Run a coroutine; configuration errors become one line and exit code 2, an embedded
    engine that cannot start (or crashes in its self-check) one line and exit code 4."""
    try:
        return int(asyncio.run(main) or 0)
    except ConfigError as exc:
        typer.echo(f"voicechat: {exc}", err=True)
        return EXIT_USAGE
    except WorkerStartError as exc:
        typer.echo(f"voicechat: {exc}", err=True)
        return EXIT_ENGINE


@app.command()
def serve(
    host: Annotated[str, _option("--host", "Address to bind.")] = "127.0.0.1",
    port: Annotated[int, _option("--port", "Port to bind.")] = 8765,
    llm: Llm = DEFAULTS.llm,
    llm_model_path: LlmModelPath = None,
    max_tokens: MaxTokens = DEFAULTS.max_tokens,
    system_prompt: SystemPrompt = None,
    openai_base_url: OpenaiBaseUrl = None,
    openai_model: OpenaiModel = DEFAULTS.openai_model,
    memory: Memory = DEFAULTS.memory,
    tts: Tts = DEFAULTS.tts,
    piper_model: PiperModel = None,
    speaking_rate: SpeakingRate = DEFAULTS.speaking_rate,
    tone_latency_ms: ToneLatency = 0.0,
    tone_rtf: ToneRtf = 0.0,
    fish_url: FishUrl = list(DEFAULTS.fish_url),  # noqa: B006
    fish_api_key: FishApiKey = None,
    fish_reference_id: FishReferenceId = None,
    fish_streaming: FishStreaming = True,
    tts_concurrency: Annotated[
        int, _option("--tts-concurrency", "TTS requests in flight per answer.", min=1, max=16)
    ] = 2,
    max_text_chars: Annotated[
        int, _option("--max-text-chars", "Longest user.message text.", min=1)
    ] = 4000,
    max_frame_bytes: Annotated[
        int,
        _option(
            "--max-frame-bytes", "Largest incoming frame (bytes); over it: close 1009.", min=1024
        ),
    ] = LIMITS.max_frame_bytes,
    max_connections: Annotated[
        int, _option("--max-connections", "Open connections; over it: HTTP 503.", min=1)
    ] = LIMITS.max_connections,
    max_handshakes: Annotated[
        int,
        _option("--max-handshakes", "Connections still in the handshake; past it: drop.", min=1),
    ] = LIMITS.max_handshakes,
    handshake_timeout: Annotated[
        float, _option("--handshake-timeout", "Seconds to finish the handshake.", min=0.1)
    ] = LIMITS.handshake_timeout_s,
    messages_per_minute: Annotated[
        int, _option("--messages-per-minute", "Per connection (bursts of 20).", min=1)
    ] = LIMITS.messages_per_minute,
    idle_timeout: Annotated[
        float, _option("--idle-timeout", "Seconds without a message or an answer: close.", min=1)
    ] = LIMITS.idle_timeout_s,
    ping_interval: Annotated[
        float, _option("--ping-interval", "Keepalive ping every N s; no pong in N s: drop.", min=1)
    ] = 20.0,
    slow_client_timeout: Annotated[
        float,
        _option("--slow-client-timeout", "Seconds a client may leave its queue full.", min=0.1),
    ] = LIMITS.slow_client_timeout_s,
    max_answer_tokens: Annotated[
        int, _option("--max-answer-tokens", "Longest answer in LLM tokens, any back end.", min=1)
    ] = PIPELINE.max_answer_tokens,
    max_answer_audio: Annotated[
        float, _option("--max-answer-audio", "Longest answer in seconds of audio.", min=1)
    ] = PIPELINE.max_answer_audio_s,
    token: Token = None,
    allow_origin: Annotated[
        list[str],
        _option("--allow-origin", "A browser origin allowed to connect; repeat for several."),
    ] = [],  # noqa: B006
    insecure: Annotated[
        bool,
        typer.Option("--insecure", help="Allow a non-loopback --host without a --token."),
    ] = False,
    log_level: LogLevel = "info",
) -> None:
    """Run the voicechat WebSocket server (WS /v1/chat/stream, GET /healthz)."""
    _setup_logging(log_level)
    if problem := exposure_problem(host, token, insecure):
        typer.echo(f"voicechat: {problem}", err=True)
        raise typer.Exit(EXIT_USAGE)
    if token and (len(token) < 16 or not token.isascii() or not token.isprintable()):
        typer.echo("voicechat: --token needs 16 or more printable ASCII characters", err=True)
        raise typer.Exit(EXIT_USAGE)
    options = _backend_options(locals())
    config = ServerConfig(
        host=host,
        port=port,
        max_text_chars=max_text_chars,
        max_frame_bytes=max_frame_bytes,
        max_connections=max_connections,
        max_handshakes=max_handshakes,
        handshake_timeout_s=handshake_timeout,
        messages_per_minute=messages_per_minute,
        idle_timeout_s=idle_timeout,
        ping_interval_s=ping_interval,
        ping_timeout_s=ping_interval,
        slow_client_timeout_s=slow_client_timeout,
        token=token or None,
        allow_origins=tuple(allow_origin),
        pipeline=PipelineSettings(
            tts_concurrency=tts_concurrency,
            max_answer_tokens=max_answer_tokens,
            max_answer_audio_s=max_answer_audio,
        ),
    )
    if not is_loopback(host) and not token:
        log.warning("serving on %s without a token (--insecure)", host)
    try:
        code = _run(_serve_until_signal(options, config))
    except OSError as exc:
        typer.echo(f"voicechat: cannot listen on {host}:{port}: {exc.strerror or exc}", err=True)
        code = 1
    raise typer.Exit(code)


async def _serve_until_signal(options: BackendOptions, config: ServerConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info(
        "loading back ends: llm=%s, tts=%s, memory=%s", options.llm, options.tts, options.memory
    )
    async with running_server(options, config) as server:
        log.info(
            "serving %s (llm=%s, tts=%s); health at http://%s:%d/healthz",
            server.url,
            server.backend.name,
            server.tts.name,
            config.host,
            server.port,
        )
        await stop.wait()
        log.info("shutting down: finishing %d answer(s) in flight", server.responses_in_flight())
    log.info("stopped")


@app.command("ask")
def ask_command(
    text: Annotated[
        str | None, typer.Argument(help="The message; '-' reads it from standard input.")
    ] = None,
    server: Annotated[str, _option("--server", "Server WebSocket URL.")] = DEFAULT_SERVER_URL,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write the answer's audio to this WAV file.")
    ] = None,
    json_lines: Annotated[
        bool, typer.Option("--json", help="Print every server message as one JSON line.")
    ] = False,
    play: Annotated[
        bool, typer.Option("--play", help="Play the answer on the speakers as it arrives.")
    ] = False,
    device: Device = None,
    list_devices: ListDevices = False,
    token: Token = None,
    embedded: Annotated[
        bool,
        typer.Option(
            "--embedded",
            help="Start a private server in this process with the back-end options below "
            "instead of connecting to --server.",
        ),
    ] = False,
    llm: Llm = DEFAULTS.llm,
    llm_model_path: LlmModelPath = None,
    max_tokens: MaxTokens = DEFAULTS.max_tokens,
    system_prompt: SystemPrompt = None,
    openai_base_url: OpenaiBaseUrl = None,
    openai_model: OpenaiModel = DEFAULTS.openai_model,
    memory: Memory = DEFAULTS.memory,
    tts: Tts = DEFAULTS.tts,
    piper_model: PiperModel = None,
    speaking_rate: SpeakingRate = DEFAULTS.speaking_rate,
    tone_latency_ms: ToneLatency = 0.0,
    tone_rtf: ToneRtf = 0.0,
    fish_url: FishUrl = list(DEFAULTS.fish_url),  # noqa: B006
    fish_api_key: FishApiKey = None,
    fish_reference_id: FishReferenceId = None,
    fish_streaming: FishStreaming = True,
) -> None:
    """Ask one question: text to stdout, audio to --out. Exit 0 ok, 1 failed, 3 unreachable."""
    if list_devices:
        _print_devices()
    if text == "-":
        text = sys.stdin.read()
    if not text or not text.strip():
        typer.echo("voicechat: the message is empty", err=True)
        raise typer.Exit(EXIT_USAGE)
    options = _backend_options(locals())

    async def run(player: AudioPlayer | None) -> int:
        kwargs: dict[str, Any] = {
            "out": out, "json_lines": json_lines, "player": player, "token": token
        }  # fmt: skip
        if not embedded:
            return await ask(text, server_url=server, **kwargs)
        logging.basicConfig(level=logging.ERROR)  # the answer's own errors are printed by ask
        async with running_server(options, ServerConfig(port=0, token=token)) as private:
            return await ask(text, server_url=private.url, **kwargs)

    try:
        with ExitStack() as stack:
            player = stack.enter_context(_open_player(device)) if play else None
            code = _run(run(player))
    except AudioUnavailable as exc:
        typer.echo(f"voicechat: {exc} (see --list-devices)", err=True)
        code = EXIT_USAGE
    except KeyboardInterrupt:
        code = 130
    raise typer.Exit(code)


@app.command()
def talk(
    server: Annotated[
        str | None,
        _option("--server", "Connect to this server instead of starting an embedded one."),
    ] = None,
    device: Device = None,
    list_devices: ListDevices = False,
    token: Token = None,
    llm: Llm = DEFAULTS.llm,
    llm_model_path: LlmModelPath = None,
    max_tokens: MaxTokens = DEFAULTS.max_tokens,
    system_prompt: SystemPrompt = None,
    openai_base_url: OpenaiBaseUrl = None,
    openai_model: OpenaiModel = DEFAULTS.openai_model,
    memory: Memory = DEFAULTS.memory,
    tts: Tts = DEFAULTS.tts,
    piper_model: PiperModel = None,
    speaking_rate: SpeakingRate = DEFAULTS.speaking_rate,
    tone_latency_ms: ToneLatency = 0.0,
    tone_rtf: ToneRtf = 0.0,
    fish_url: FishUrl = list(DEFAULTS.fish_url),  # noqa: B006
    fish_api_key: FishApiKey = None,
    fish_reference_id: FishReferenceId = None,
    fish_streaming: FishStreaming = True,
) -> None:
    """Chat and hear the answers: Enter sends, Esc stops speaking, Ctrl+T mutes, Ctrl+Q quits.

    Without --server, an embedded server with the back-end options below runs inside this
    process on a free loopback port, and stops when you quit.
    """
    from textual.logging import TextualHandler

    from voicechat.tui.app import VoiceChatApp

    if list_devices:
        _print_devices()
    options = _backend_options(locals())

    async def run() -> int:
        if server is not None:
            await _app(server).run_async()
            return 0
        # The embedded engines start and pass their self-check before the prompt appears.
        typer.echo("voicechat: starting the embedded server…", err=True)
        logging.basicConfig(level=logging.ERROR)  # until the UI takes over the terminal
        async with running_server(options, ServerConfig(port=0, token=token)) as embedded:
            await _app(embedded.url).run_async()
        return 0

    def _app(url: str) -> VoiceChatApp:
        logging.basicConfig(level=logging.WARNING, handlers=[TextualHandler()], force=True)
        return VoiceChatApp(url, device=_parse_device(device), token=token)

    raise typer.Exit(_run(run()))


def _parse_device(device: str | None) -> int | str | None:
    """A device index ("3") or a name ("pulse", "null")."""
    if device is None or device == "":
        return None
    return int(device) if device.isdigit() else device


def _open_player(device: str | None) -> AudioPlayer:
    return AudioPlayer(_parse_device(device))


def _print_devices() -> None:
    """--list-devices: print the output devices and exit."""
    try:
        devices = list_output_devices()
    except OSError as exc:
        typer.echo(f"voicechat: PortAudio is not available ({exc})", err=True)
        raise typer.Exit(1) from None
    for dev in devices:
        mark = "*" if dev["default"] else " "
        typer.echo(
            f"{mark} {dev['index']:>3}  {dev['name']}  ({dev['hostapi']}, "
            f"{dev['channels']} ch, {dev['sample_rate']} Hz)"
        )
    typer.echo("  null  (no sound: a silent output paced like a sound card)")
    raise typer.Exit(0)


def main() -> None:
    app()
