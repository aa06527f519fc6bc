"""The command line: `serve`, `talk`, `ask`, `doctor`. Thin: parse flags, build objects, run.

Every option can also be set with a VOICECHAT_* environment variable. This module imports only
Typer and `voicechat.settings` at start-up: the back ends, the server and the audio stack are
imported when a command runs, so `--help`, `--version` and usage errors answer at once
(scripts/bench_cli.py measures it).
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import sys
from contextlib import AsyncExitStack, ExitStack, asynccontextmanager
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from voicechat.settings import (
    DEFAULT_SERVER_URL,
    EXIT_ENGINE,
    EXIT_USAGE,
    BackendOptions,
    InputAudioSettings,
    PipelineSettings,
    ServerConfig,
    exposure_problem,
    is_loopback,
)

if TYPE_CHECKING:
    from voicechat.audio.player import AudioPlayer
    from voicechat.tui.app import VoiceChatApp

# Besides letters and digits, what an HTTP token (a subprotocol name) may hold: the web page
# sends the server's token as the subprotocol `voicechat.token.<token>`.
SUBPROTOCOL_PUNCTUATION = frozenset("!#$%&'*+-.^_`|~")
ENV_NOTE = "Every option is also an environment variable: --max-tokens is VOICECHAT_MAX_TOKENS."


app = typer.Typer(
    name="voicechat",
    help="Speak an LLM's answer while the LLM is still writing it.",
    epilog="Start with `voicechat talk`; `voicechat doctor` checks what works on this machine.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"max_content_width": 120},
)

log = logging.getLogger("voicechat")

# Help panels, in the order they appear.
SERVER, CONNECTION, OUTPUT, AUDIO = "Server", "Connection", "Output", "Audio"
BACK_ENDS, LOCAL, FISH = "Back ends", "Local models", "Fish Speech"
SECURITY, LIMITS, TUNING = "Security", "Limits", "Tuning (rarely needed)"
SPEECH = "Speech input"


def _option(
    name: str,
    help: str,
    panel: str,
    metavar: str = "",
    *,
    env: bool = True,
    minimum: float | None = None,
    maximum: float | None = None,
    **kwargs: Any,
) -> Any:
    """A flag `--name` in a help panel, reading VOICECHAT_NAME too, with a short metavar.

    Bounds are checked by a parser, not Typer's `min=`, which prints `[x>=1]` beside the
    metavar: one more word in an 80-column help table.
    """
    if env:
        kwargs["envvar"] = "VOICECHAT_" + name.split("/")[0].lstrip("-").replace("-", "_").upper()
    if minimum is not None:
        kwargs["parser"] = _bounded(minimum, maximum)
    return typer.Option(
        name, help=help, rich_help_panel=panel, metavar=metavar, show_envvar=False, **kwargs
    )


def _bounded(minimum: float, maximum: float | None) -> Any:
    """A parser for a number within [minimum, maximum], with an error that says the range."""
    kind = int if isinstance(minimum, int) else float

    def parse(text: Any) -> Any:  # a str from the command line, the default otherwise
        try:
            value = kind(text)
        except ValueError:
            raise typer.BadParameter(f"{text!r} is not a number") from None
        if value < minimum or (maximum is not None and value > maximum):
            bounds = f"between {minimum} and {maximum}" if maximum else f"at least {minimum}"
            raise typer.BadParameter(f"it must be {bounds}, not {text}")
        return value

    return parse


def _sampling_spec(text: Any) -> str:
    """--sampling: checked here, so a typo is a usage error before anything starts."""
    from voicechat.settings import ConfigError, parse_sampling

    try:
        parse_sampling(str(text))
    except ConfigError as exc:
        raise typer.BadParameter(str(exc)) from None
    return str(text)


def _flag(name: str, help: str, panel: str, **kwargs: Any) -> Any:
    """An on/off flag: no metavar, no environment variable."""
    return _option(name, help, panel, env=False, **kwargs)


# --- flags shared by several commands ------------------------------------------------------------
Token = Annotated[
    str | None,
    _option(
        "--token", "Shared secret: the server requires it, clients send it.", SECURITY, "TOKEN"
    ),
]
ClientToken = Annotated[
    str | None,
    _option("--token", "Shared secret the server requires (sent as Bearer).", CONNECTION, "TOKEN"),
]
Device = Annotated[
    str | None,
    _option("--device", "Audio output: index or name (--list-devices), or null.", AUDIO, "DEV"),
]
ListDevices = Annotated[bool, _flag("--list-devices", "List audio outputs and exit.", AUDIO)]

# Back-end flags, shared by `serve`, `talk` and `ask --embedded` (names match BackendOptions).
Llm = Annotated[
    str, _option("--llm", "local, openai, graph:MODULE:ATTR or scripted[:PATH].", BACK_ENDS, "LLM")
]
Tts = Annotated[
    str, _option("--tts", "piper (embedded), fish, or tone (synthetic).", BACK_ENDS, "TTS")
]
Memory = Annotated[
    str, _option("--memory", "memory[:N], sqlite:PATH or postgres://...", BACK_ENDS, "WHERE")
]
OpenaiBaseUrl = Annotated[
    str | None,
    _option("--openai-base-url", "OpenAI-compatible server (--llm openai).", BACK_ENDS, "URL"),
]
OpenaiModel = Annotated[str, _option("--openai-model", "Its model name.", BACK_ENDS, "NAME")]
LlmModelPath = Annotated[
    Path | None, _option("--llm-model-path", "Another GGUF model (--llm local).", LOCAL, "PATH")
]
MaxTokens = Annotated[
    int, _option("--max-tokens", "Longest answer of the local model.", LOCAL, "N", minimum=1)
]
Sampling = Annotated[
    str,
    _option(
        "--sampling",
        "voice, plain or key=value,…",
        LOCAL,
        "SPEC",
        parser=lambda text: _sampling_spec(text),
    ),
]
SystemPrompt = Annotated[
    str | None, _option("--system-prompt", "Replace the system prompt.", LOCAL, "TEXT")
]
PiperModel = Annotated[
    Path | None, _option("--piper-model", "Another Piper .onnx voice.", LOCAL, "PATH")
]
SpeakingRate = Annotated[
    float,
    _option("--speaking-rate", "Piper's speed: 1.0 normal, 1.2 faster.", LOCAL, "X", minimum=0.1),
]
FishUrl = Annotated[
    list[str],
    _option("--fish-url", "Fish Speech API server; repeat for several.", FISH, "URL"),
]
FishApiKey = Annotated[str | None, _option("--fish-api-key", "Its --api-key.", FISH, "KEY")]
FishReferenceId = Annotated[
    str | None, _option("--fish-reference-id", "A saved Fish voice.", FISH, "ID")
]
FishStreaming = Annotated[
    bool,
    _option("--fish-streaming/--no-fish-streaming", "Stream each unit's audio.", FISH),
]
ToneLatency = Annotated[
    float, _option("--tone-latency-ms", "Tone voice: delay per unit.", TUNING, "MS", minimum=0.0)
]
ToneRtf = Annotated[
    float, _option("--tone-rtf", "Tone voice: time per audio second.", TUNING, "X", minimum=0.0)
]
LogLevel = Annotated[str, _option("--log-level", "debug, info, warning or error.", SERVER, "LEVEL")]
# Speech input (the server hears the user): shared by `serve`, `talk` and `ask` (embedded).
Stt = Annotated[str, _option("--stt", "whisper, openai or none.", SPEECH, "STT")]
SttModel = Annotated[str, _option("--stt-model", "tiny.en or base.", SPEECH, "NAME")]
SttLanguage = Annotated[
    str | None, _option("--stt-language", "en, ko, ... (default: en, or detect).", SPEECH, "CODE")
]
SttUrl = Annotated[
    str | None,
    _option("--stt-url", "Server for --stt openai (…/v1).", SPEECH, "URL"),
]
SttOpenaiModel = Annotated[str, _option("--stt-openai-model", "Its model name.", SPEECH, "NAME")]
SttApiKey = Annotated[
    str | None, _option("--stt-api-key", "Its key; else $OPENAI_API_KEY.", SPEECH, "KEY")
]

DEFAULTS = BackendOptions()
SERVER_DEFAULTS = ServerConfig()
INPUT_AUDIO = SERVER_DEFAULTS.input_audio
PIPELINE = PipelineSettings()


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"voicechat {version('voicechat')}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", help="Print the version and exit.", callback=_version, is_eager=True
        ),
    ] = False,
) -> None:
    """Speak an LLM's answer while the LLM is still writing it."""


def _setup_logging(level: str, who: str = "") -> None:
    """`who` names the process of `serve --workers N` a line comes from ("[worker 1]")."""
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise typer.BadParameter(
            f"{level!r} is not a log level: debug, info, warning or error", param_hint="--log-level"
        )
    logging.basicConfig(
        level=numeric, format=f"%(asctime)s %(levelname)s %(name)s{who}: %(message)s"
    )
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
async def running_server(options: BackendOptions, config: ServerConfig, tally: Any = None) -> Any:
    """Load the back ends (before accepting anyone), serve, and release everything after.

    `tally`: the session count shared by the processes of `serve --workers N`."""
    from voicechat.config import open_backends
    from voicechat.server import VoiceChatServer

    async with AsyncExitStack() as stack:
        backends = await open_backends(options, stack)
        server = VoiceChatServer(
            backends.chat, backends.tts, config, backends.workers, tally, backends.speech
        )
        await server.start()
        try:
            yield server
        finally:
            await server.shutdown()


def _run(main: Any) -> int:
    """Run a coroutine; configuration errors become one line and exit code 2, an embedded
    engine that cannot start (or crashes in its self-check) one line and exit code 4."""
    import asyncio

    from voicechat.settings import ConfigError
    from voicechat.workers import WorkerStartError

    try:
        return int(asyncio.run(main) or 0)
    except ConfigError as exc:
        typer.echo(f"voicechat: {exc}", err=True)
        return EXIT_USAGE
    except WorkerStartError as exc:
        typer.echo(f"voicechat: {exc}", err=True)
        return EXIT_ENGINE


def _fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    typer.echo(f"voicechat: {message}", err=True)
    return typer.Exit(code)


@app.command(epilog=ENV_NOTE)
def serve(
    host: Annotated[str, _option("--host", "Address to bind.", SERVER, "HOST")] = "127.0.0.1",
    port: Annotated[int, _option("--port", "Port to bind.", SERVER, "PORT")] = 8765,
    workers: Annotated[
        str, _option("--workers", "Server processes on the port: N or auto.", SERVER, "N")
    ] = "1",
    log_level: LogLevel = "info",
    llm: Llm = DEFAULTS.llm,
    tts: Tts = DEFAULTS.tts,
    memory: Memory = DEFAULTS.memory,
    openai_base_url: OpenaiBaseUrl = None,
    openai_model: OpenaiModel = DEFAULTS.openai_model,
    llm_model_path: LlmModelPath = None,
    max_tokens: MaxTokens = DEFAULTS.max_tokens,
    sampling: Sampling = DEFAULTS.sampling,
    system_prompt: SystemPrompt = None,
    piper_model: PiperModel = None,
    speaking_rate: SpeakingRate = DEFAULTS.speaking_rate,
    fish_url: FishUrl = list(DEFAULTS.fish_url),  # noqa: B006
    fish_api_key: FishApiKey = None,
    fish_reference_id: FishReferenceId = None,
    fish_streaming: FishStreaming = True,
    stt: Stt = DEFAULTS.stt,
    stt_model: SttModel = DEFAULTS.stt_model,
    stt_language: SttLanguage = None,
    stt_url: SttUrl = None,
    stt_openai_model: SttOpenaiModel = DEFAULTS.stt_openai_model,
    stt_api_key: SttApiKey = None,
    silence_ms: Annotated[
        int,
        _option(
            "--silence-ms",
            "Silence ending a turn.",
            SPEECH,
            "MS",
            minimum=200,
            maximum=3000,
        ),
    ] = INPUT_AUDIO.silence_ms,
    barge_in_ms: Annotated[
        int,
        _option(
            "--barge-in-ms",
            "Speech to interrupt.",
            SPEECH,
            "MS",
            minimum=0,
            maximum=5000,
        ),
    ] = INPUT_AUDIO.barge_in_ms,
    token: Token = None,
    allow_origin: Annotated[
        list[str],
        _option("--allow-origin", "A browser origin allowed in; repeatable.", SECURITY, "ORIGIN"),
    ] = [],  # noqa: B006
    insecure: Annotated[
        bool, _flag("--insecure", "Allow a non-loopback --host without --token.", SECURITY)
    ] = False,
    max_connections: Annotated[
        int, _option("--max-connections", "Open connections (then 503).", LIMITS, "N", minimum=1)
    ] = SERVER_DEFAULTS.max_connections,
    max_text_chars: Annotated[
        int, _option("--max-text-chars", "Longest message, characters.", LIMITS, "N", minimum=1)
    ] = SERVER_DEFAULTS.max_text_chars,
    messages_per_minute: Annotated[
        int,
        _option("--messages-per-minute", "Per connection; bursts of 20.", LIMITS, "N", minimum=1),
    ] = SERVER_DEFAULTS.messages_per_minute,
    idle_timeout: Annotated[
        float,
        _option("--idle-timeout", "Seconds of silence, then close.", LIMITS, "S", minimum=1.0),
    ] = SERVER_DEFAULTS.idle_timeout_s,
    max_answer_tokens: Annotated[
        int, _option("--max-answer-tokens", "Longest answer, any LLM.", LIMITS, "N", minimum=1)
    ] = PIPELINE.max_answer_tokens,
    max_answer_audio: Annotated[
        float,
        _option(
            "--max-answer-audio", "Longest answer, seconds of audio.", LIMITS, "S", minimum=1.0
        ),
    ] = PIPELINE.max_answer_audio_s,
    max_speech_seconds: Annotated[
        float,
        _option(
            "--max-speech-seconds",
            "Speech budget, 0: none.",
            LIMITS,
            "S",
            minimum=0.0,
        ),
    ] = PIPELINE.max_speech_s,
    no_loop_guard: Annotated[
        bool, _flag("--no-loop-guard", "Speak loops too (to compare).", TUNING)
    ] = not PIPELINE.loop_guard,
    tts_concurrency: Annotated[
        int,
        _option(
            "--tts-concurrency",
            "TTS requests per answer (1-16).",
            TUNING,
            "N",
            minimum=1,
            maximum=16,
        ),
    ] = PIPELINE.tts_concurrency,
    max_frame_bytes: Annotated[
        int,
        _option("--max-frame-bytes", "Largest frame in (then 1009).", TUNING, "N", minimum=1024),
    ] = SERVER_DEFAULTS.max_frame_bytes,
    max_handshakes: Annotated[
        int, _option("--max-handshakes", "Handshakes in progress.", TUNING, "N", minimum=1)
    ] = SERVER_DEFAULTS.max_handshakes,
    handshake_timeout: Annotated[
        float,
        _option("--handshake-timeout", "Seconds to finish one.", TUNING, "S", minimum=0.1),
    ] = SERVER_DEFAULTS.handshake_timeout_s,
    ping_interval: Annotated[
        float,
        _option("--ping-interval", "Keepalive ping; no pong: drop.", TUNING, "S", minimum=1.0),
    ] = 20.0,
    slow_client_timeout: Annotated[
        float,
        _option(
            "--slow-client-timeout", "A full queue this long: close.", TUNING, "S", minimum=0.1
        ),
    ] = SERVER_DEFAULTS.slow_client_timeout_s,
    tone_latency_ms: ToneLatency = 0.0,
    tone_rtf: ToneRtf = 0.0,
) -> None:
    """Run the server: WS /v1/chat/stream, GET /, GET /healthz."""
    from voicechat import serve_workers

    role = serve_workers.child_role()
    _setup_logging(log_level, "" if role is None else f"[worker {role.index}]")
    try:
        count = serve_workers.worker_count(workers)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    if problem := exposure_problem(host, token, insecure):
        raise _fail(problem)
    if token and (len(token) < 16 or not token.isascii() or not token.isprintable()):
        raise _fail("--token needs 16 or more printable ASCII characters")
    options = _backend_options(locals())
    if role is None and count > 1:
        if port == 0:
            raise _fail("--workers needs a fixed --port: every process listens on the same one")
        if memory.startswith("memory"):
            log.warning(
                "--workers %d with --memory %s: each process keeps its own conversations, so a "
                "client that reconnects to another process gets unknown_session; use "
                "--memory sqlite:PATH or postgres://... to share them",
                count,
                memory,
            )
        try:
            code = serve_workers.run(count, host, port)
        except OSError as exc:
            raise _fail(_listen_problem(host, port, exc), 1) from None
        raise typer.Exit(code)
    if role is not None:  # a child of `serve --workers N`: it drains if the supervisor dies
        from voicechat.workers.child import die_with_parent

        die_with_parent(int(os.environ["VOICECHAT_SERVE_PARENT"]), signal.SIGTERM)
    config = ServerConfig(
        host=host,
        port=port,
        worker_index=None if role is None else role.index,
        reuse_port=role is not None,
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
            max_speech_s=max_speech_seconds,
            loop_guard=not no_loop_guard,
        ),
        input_audio=InputAudioSettings(silence_ms=silence_ms, barge_in_ms=barge_in_ms),
    )
    if not is_loopback(host) and not token:
        log.warning("serving on %s without a token (--insecure)", host)
    if token and not all(ch.isalnum() or ch in SUBPROTOCOL_PUNCTUATION for ch in token):
        log.warning(
            "the token has characters a browser cannot send as a WebSocket subprotocol: the web "
            "page cannot use it (clients with an Authorization header can). Use letters, digits "
            "and -._~ (secrets.token_urlsafe makes such tokens)"
        )
    try:
        code = _run(_serve_until_signal(options, config))
    except OSError as exc:
        raise _fail(_listen_problem(host, port, exc), 1) from None
    raise typer.Exit(code)


def _listen_problem(host: str, port: int, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        reason = (
            f"port {port} is in use (another voicechat serve? try --port {port + 1}; "
            f"`voicechat doctor --port {port}` says what listens there)"
        )
    else:
        reason = exc.strerror or str(exc)
    return f"cannot listen on {host}:{port}: {reason}"


async def _serve_until_signal(options: BackendOptions, config: ServerConfig) -> None:
    import asyncio

    from voicechat import serve_workers

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info(
        "loading back ends: llm=%s, tts=%s, memory=%s", options.llm, options.tts, options.memory
    )
    role = serve_workers.child_role()
    tally = None if role is None else serve_workers.session_tally(role)
    async with running_server(options, config, tally) as server:
        log.info("serving %s (llm=%s, tts=%s)", server.url, server.backend.name, server.tts.name)
        page = server.page_url
        log.info("the web client: open %s in a browser; health at %shealthz", page, page)
        serve_workers.announce_ready()
        await stop.wait()
        log.info("shutting down: finishing %d answer(s) in flight", server.responses_in_flight())
    log.info("stopped")


@app.command("ask", epilog=ENV_NOTE)
def ask_command(
    text: Annotated[
        str | None,
        typer.Argument(help="The message; '-' reads it from standard input.", metavar="TEXT"),
    ] = None,
    audio: Annotated[
        Path | None,
        _option(
            "--audio", "Ask by voice: a WAV file instead of TEXT.", "Question", "WAV", env=False
        ),
    ] = None,
    realtime: Annotated[
        bool, _flag("--realtime", "Send --audio at 1x, as a microphone would.", "Question")
    ] = False,
    out: Annotated[
        Path | None,
        _option("--out", "Write the answer's audio to a WAV file.", OUTPUT, "WAV", env=False),
    ] = None,
    json_lines: Annotated[
        bool, _flag("--json", "Print every server message as a JSON line.", OUTPUT)
    ] = False,
    play: Annotated[bool, _flag("--play", "Play the answer as it arrives.", OUTPUT)] = False,
    server: Annotated[
        str, _option("--server", "The server's WebSocket URL.", CONNECTION, "URL")
    ] = DEFAULT_SERVER_URL,
    token: ClientToken = None,
    embedded: Annotated[
        bool,
        _flag("--embedded", "Run a private server with the back ends below.", CONNECTION),
    ] = False,
    device: Device = None,
    list_devices: ListDevices = False,
    llm: Llm = DEFAULTS.llm,
    tts: Tts = DEFAULTS.tts,
    memory: Memory = DEFAULTS.memory,
    openai_base_url: OpenaiBaseUrl = None,
    openai_model: OpenaiModel = DEFAULTS.openai_model,
    llm_model_path: LlmModelPath = None,
    max_tokens: MaxTokens = DEFAULTS.max_tokens,
    sampling: Sampling = DEFAULTS.sampling,
    system_prompt: SystemPrompt = None,
    piper_model: PiperModel = None,
    speaking_rate: SpeakingRate = DEFAULTS.speaking_rate,
    fish_url: FishUrl = list(DEFAULTS.fish_url),  # noqa: B006
    fish_api_key: FishApiKey = None,
    fish_reference_id: FishReferenceId = None,
    fish_streaming: FishStreaming = True,
    stt: Stt = DEFAULTS.stt,
    stt_model: SttModel = DEFAULTS.stt_model,
    stt_language: SttLanguage = None,
    stt_url: SttUrl = None,
    stt_openai_model: SttOpenaiModel = DEFAULTS.stt_openai_model,
    tone_latency_ms: ToneLatency = 0.0,
    tone_rtf: ToneRtf = 0.0,
) -> None:
    """Ask one question, typed or spoken (--audio): text to stdout, audio to --out or speakers.

    Exit codes: 0 answered, 1 failed or no speech heard, 2 usage, 3 unreachable, 4 engine failed.
    """
    if list_devices:
        _print_devices()
    if audio is not None and text is not None:
        raise _fail("ask with TEXT or with --audio FILE, not both")
    if realtime and audio is None:
        raise _fail("--realtime paces the sending of --audio FILE; give --audio")
    if text == "-":
        text = sys.stdin.read()
    if audio is None and (not text or not text.strip()):
        raise _fail(
            "the message is empty: `voicechat ask \"Hello\"`, '-' to read stdin, "
            "or --audio FILE.wav to ask by voice"
        )
    import dataclasses

    from voicechat.audio.player import AudioUnavailable
    from voicechat.client.ask import SpeechFileError, ask, load_speech

    speech = None
    if audio is not None:
        try:
            speech = load_speech(audio, realtime=realtime)
        except SpeechFileError as exc:
            raise _fail(str(exc)) from None
    options = _backend_options(locals())
    if speech is None:  # a text question: the private server needs no speech recognizer
        options = dataclasses.replace(options, stt="none")

    async def run(player: AudioPlayer | None) -> int:
        kwargs: dict[str, Any] = {
            "speech": speech, "out": out, "json_lines": json_lines, "player": player,
            "token": token,
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
        raise _fail(f"{exc}; see `voicechat ask --list-devices` and `voicechat doctor`") from None
    except KeyboardInterrupt:
        code = 130
    raise typer.Exit(code)


@app.command(epilog=ENV_NOTE)
def talk(
    server: Annotated[
        str | None,
        _option("--server", "Use this server instead of an embedded one.", CONNECTION, "URL"),
    ] = None,
    token: ClientToken = None,
    device: Device = None,
    mic: Annotated[bool, _flag("--mic", "Speak as well as type (hands-free).", AUDIO)] = False,
    push_to_talk: Annotated[
        bool, _flag("--push-to-talk", "Speak with --mic: F5 starts a turn, F5 sends it.", AUDIO)
    ] = False,
    input_device: Annotated[
        str | None,
        _option("--input-device", "Microphone: index or name (--list-devices).", AUDIO, "DEV"),
    ] = None,
    list_devices: Annotated[
        bool, _flag("--list-devices", "List audio outputs and inputs, and exit.", AUDIO)
    ] = False,
    llm: Llm = DEFAULTS.llm,
    tts: Tts = DEFAULTS.tts,
    memory: Memory = DEFAULTS.memory,
    openai_base_url: OpenaiBaseUrl = None,
    openai_model: OpenaiModel = DEFAULTS.openai_model,
    llm_model_path: LlmModelPath = None,
    max_tokens: MaxTokens = DEFAULTS.max_tokens,
    sampling: Sampling = DEFAULTS.sampling,
    system_prompt: SystemPrompt = None,
    piper_model: PiperModel = None,
    speaking_rate: SpeakingRate = DEFAULTS.speaking_rate,
    fish_url: FishUrl = list(DEFAULTS.fish_url),  # noqa: B006
    fish_api_key: FishApiKey = None,
    fish_reference_id: FishReferenceId = None,
    fish_streaming: FishStreaming = True,
    stt: Stt = DEFAULTS.stt,
    stt_model: SttModel = DEFAULTS.stt_model,
    stt_language: SttLanguage = None,
    stt_url: SttUrl = None,
    stt_openai_model: SttOpenaiModel = DEFAULTS.stt_openai_model,
    stt_api_key: SttApiKey = None,
    tone_latency_ms: ToneLatency = 0.0,
    tone_rtf: ToneRtf = 0.0,
) -> None:
    """Chat and hear the answers: Enter sends, Esc stops, Ctrl+T mutes, Ctrl+Q quits.

    --mic: speak as well (the server hears each turn); --push-to-talk: F5 starts and sends one.

    Without --server, an embedded server with the back ends below runs in this process on a
    free loopback port and stops when you quit.
    """
    if list_devices:
        try:
            _print_devices()  # the outputs; it ends the command
        except typer.Exit as done:
            if done.exit_code == 0:  # PortAudio works: the inputs too
                from voicechat.audio.devices import describe
                from voicechat.audio.mic import list_input_devices

                typer.echo("inputs (--input-device):")
                inputs = list_input_devices()
                for device in inputs:
                    typer.echo(describe(device))
                if not inputs:
                    typer.echo("  (no microphone found; `voicechat doctor` says why)")
            raise
    mic = mic or push_to_talk
    options = _backend_options(locals())
    if not mic:  # nothing to hear: the embedded server needs no speech recognizer
        import dataclasses

        options = dataclasses.replace(options, stt="none")

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
        from textual.logging import TextualHandler

        from voicechat.tui.app import VoiceChatApp

        logging.basicConfig(level=logging.WARNING, handlers=[TextualHandler()], force=True)
        return VoiceChatApp(
            url,
            device=_parse_device(device),
            token=token,
            mic=mic,
            input_device=_parse_device(input_device),
            push_to_talk=push_to_talk,
        )

    raise typer.Exit(_run(run()))


@app.command()
def doctor(
    server: Annotated[
        str | None, _option("--server", "Also check this server.", CONNECTION, "URL")
    ] = None,
    token: ClientToken = None,
    port: Annotated[int, _option("--port", "The port `serve` would use.", SERVER, "PORT")] = 8765,
    llm_model_path: LlmModelPath = None,
    piper_model: PiperModel = None,
    json_output: Annotated[bool, _flag("--json", "One JSON object, for scripts.", OUTPUT)] = False,
) -> None:
    """Check what works on this machine: one line each, OK, WARN or FAIL with the fix.

    Exit 0 when everything the defaults need works, 1 otherwise.
    """
    from voicechat import doctor as checks

    results = checks.run_checks(
        llm_model_path=llm_model_path,
        piper_model=piper_model,
        port=port,
        server=server,
        token=token,
    )
    if json_output:
        typer.echo(checks.as_json(results))
    else:
        typer.echo(checks.render(results, width=_terminal_width()))
    raise typer.Exit(checks.exit_code(results))


def _terminal_width() -> int:
    import shutil

    return min(shutil.get_terminal_size((80, 24)).columns, 120)


def _parse_device(device: str | None) -> int | str | None:
    """A device index ("3") or a name ("pulse", "null")."""
    if device is None or device == "":
        return None
    return int(device) if device.isdigit() else device


def _open_player(device: str | None) -> AudioPlayer:
    from voicechat.audio.player import AudioPlayer

    return AudioPlayer(_parse_device(device))


def _print_devices() -> None:
    """--list-devices: print the output devices and exit."""
    from voicechat.audio.devices import describe
    from voicechat.audio.player import list_output_devices

    try:
        devices = list_output_devices()
    except OSError as exc:
        raise _fail(
            f"PortAudio is not installed, so there is no audio ({exc}); "
            "install it with `apt-get install libportaudio2`",
            1,
        ) from None
    for device in devices:
        typer.echo(describe(device))
    if not devices:
        typer.echo("  (no audio output device found; `voicechat doctor` says why)")
    typer.echo("  null  (no sound: a silent output paced like a sound card)")
    raise typer.Exit(0)


def main() -> None:
    app(prog_name="voicechat")
