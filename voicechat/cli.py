"""The command line: `voicechat serve`, `voicechat ask`. Thin: parse flags, build objects, run.

Every option can also be set with a VOICECHAT_* environment variable (shown in --help).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from dataclasses import fields
from pathlib import Path
from typing import Annotated, Any

import typer

from voicechat.client.ask import EXIT_USAGE, ask
from voicechat.client.connection import DEFAULT_SERVER_URL
from voicechat.config import BackendOptions, ConfigError, build_llm, build_tts
from voicechat.pipeline import PipelineSettings
from voicechat.server import ServerConfig, VoiceChatServer

app = typer.Typer(
    name="voicechat",
    help="Speak an LLM's answer while the LLM is still writing it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

log = logging.getLogger("voicechat")


def _env(name: str) -> str:
    return f"VOICECHAT_{name}"


LlmOption = Annotated[
    str,
    typer.Option(
        "--llm",
        envvar=_env("LLM"),
        help="Chat back end: scripted[:PATH] (a JSON script of deltas; without PATH a demo).",
    ),
]
TtsOption = Annotated[
    str,
    typer.Option("--tts", envvar=_env("TTS"), help="TTS engine: tone (synthetic) or fish."),
]
ToneLatencyOption = Annotated[
    float,
    typer.Option(
        "--tone-latency-ms", envvar=_env("TONE_LATENCY_MS"), help="Simulated tone TTS delay."
    ),
]
ToneRtfOption = Annotated[
    float,
    typer.Option(
        "--tone-rtf",
        envvar=_env("TONE_RTF"),
        help="Simulated tone TTS real-time factor (synthesis time per second of audio).",
    ),
]
FishUrlOption = Annotated[
    str, typer.Option("--fish-url", envvar=_env("FISH_URL"), help="Fish Speech API server.")
]
FishKeyOption = Annotated[
    str | None,
    typer.Option("--fish-api-key", envvar=_env("FISH_API_KEY"), help="Fish Speech --api-key."),
]
FishReferenceOption = Annotated[
    str | None,
    typer.Option(
        "--fish-reference-id", envvar=_env("FISH_REFERENCE_ID"), help="A saved Fish voice."
    ),
]
FishStreamingOption = Annotated[
    bool,
    typer.Option(
        "--fish-streaming/--no-fish-streaming",
        envvar=_env("FISH_STREAMING"),
        help="Ask Fish Speech to stream each unit's audio.",
    ),
]
SystemPromptOption = Annotated[
    str | None,
    typer.Option(
        "--system-prompt", envvar=_env("SYSTEM_PROMPT"), help="Replace the system prompt."
    ),
]
LogLevelOption = Annotated[
    str,
    typer.Option("--log-level", envvar=_env("LOG_LEVEL"), help="debug, info, warning or error."),
]


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
    return BackendOptions(**{name: value for name, value in flags.items() if name in names})


def _build_server(options: BackendOptions, config: ServerConfig) -> VoiceChatServer:
    """Build the back ends once; a bad spec is a usage error with one clear line."""
    try:
        return VoiceChatServer(build_llm(options), build_tts(options), config)
    except ConfigError as exc:
        typer.echo(f"voicechat: {exc}", err=True)
        raise typer.Exit(EXIT_USAGE) from None


@app.command()
def serve(
    host: Annotated[str, typer.Option(envvar=_env("HOST"), help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar=_env("PORT"), help="Port to bind.")] = 8765,
    llm: LlmOption = "scripted",
    tts: TtsOption = "tone",
    tts_concurrency: Annotated[
        int,
        typer.Option(
            envvar=_env("TTS_CONCURRENCY"), min=1, max=16, help="TTS requests in flight per answer."
        ),
    ] = 2,
    tone_latency_ms: ToneLatencyOption = 0.0,
    tone_rtf: ToneRtfOption = 0.0,
    fish_url: FishUrlOption = "http://127.0.0.1:8080",
    fish_api_key: FishKeyOption = None,
    fish_reference_id: FishReferenceOption = None,
    fish_streaming: FishStreamingOption = True,
    system_prompt: SystemPromptOption = None,
    max_text_chars: Annotated[
        int,
        typer.Option(envvar=_env("MAX_TEXT_CHARS"), min=1, help="Longest user.message text."),
    ] = 4000,
    max_frame_bytes: Annotated[
        int,
        typer.Option(envvar=_env("MAX_FRAME_BYTES"), min=1024, help="Largest incoming frame."),
    ] = 256 * 1024,
    log_level: LogLevelOption = "info",
) -> None:
    """Run the voicechat WebSocket server (WS /v1/chat/stream, GET /healthz)."""
    _setup_logging(log_level)
    options = _backend_options(locals())
    config = ServerConfig(
        host=host,
        port=port,
        max_text_chars=max_text_chars,
        max_frame_bytes=max_frame_bytes,
        pipeline=PipelineSettings(tts_concurrency=tts_concurrency),
    )
    server = _build_server(options, config)
    try:
        asyncio.run(_serve_until_signal(server))
    except OSError as exc:
        typer.echo(f"voicechat: cannot listen on {host}:{port}: {exc.strerror or exc}", err=True)
        raise typer.Exit(1) from None


async def _serve_until_signal(server: VoiceChatServer) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    log.info(
        "serving %s (llm=%s, tts=%s); health at http://%s:%d/healthz",
        server.url,
        server.backend.name,
        server.tts.name,
        server.config.host,
        server.port,
    )
    await stop.wait()
    log.info("shutting down: finishing %d answer(s) in flight", server.responses_in_flight())
    await server.shutdown()
    log.info("stopped")


@app.command("ask")
def ask_command(
    text: Annotated[str, typer.Argument(help="The message; '-' reads it from standard input.")],
    server: Annotated[
        str, typer.Option(envvar=_env("SERVER"), help="Server WebSocket URL.")
    ] = DEFAULT_SERVER_URL,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write the answer's audio to this WAV file.")
    ] = None,
    json_lines: Annotated[
        bool, typer.Option("--json", help="Print every server message as one JSON line.")
    ] = False,
    embedded: Annotated[
        bool,
        typer.Option(
            "--embedded",
            help="Start a private server in this process with the back-end options below "
            "instead of connecting to --server.",
        ),
    ] = False,
    llm: LlmOption = "scripted",
    tts: TtsOption = "tone",
    tone_latency_ms: ToneLatencyOption = 0.0,
    tone_rtf: ToneRtfOption = 0.0,
    fish_url: FishUrlOption = "http://127.0.0.1:8080",
    fish_api_key: FishKeyOption = None,
    fish_reference_id: FishReferenceOption = None,
    fish_streaming: FishStreamingOption = True,
    system_prompt: SystemPromptOption = None,
) -> None:
    """Ask one question: text to stdout, audio to --out. Exit 0 ok, 1 failed, 3 unreachable."""
    if text == "-":
        text = sys.stdin.read()
    if not text.strip():
        typer.echo("voicechat: the message is empty", err=True)
        raise typer.Exit(EXIT_USAGE)
    embedded_server = None
    if embedded:
        logging.basicConfig(level=logging.WARNING)
        embedded_server = _build_server(_backend_options(locals()), ServerConfig(port=0))

    async def run() -> int:
        if embedded_server is None:
            return await ask(text, server_url=server, out=out, json_lines=json_lines)
        async with embedded_server:
            return await ask(text, server_url=embedded_server.url, out=out, json_lines=json_lines)

    try:
        code = asyncio.run(run())
    except KeyboardInterrupt:
        code = 130
    raise typer.Exit(code)


def main() -> None:
    app()
