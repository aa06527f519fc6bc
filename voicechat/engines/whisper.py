"""Whisper (faster-whisper on CTranslate2, int8), inside the speech-recognition worker process.

One request is one finished turn: 16 kHz PCM16 in, its text out. Decoding is greedy (beam 1)
without timestamps: on two cores a 2 s question takes ~0.34 s, most of it the encoder's 30 s
window (see MIN_WINDOW_S). The weights come from pip packages and are checked by sha256 before
CTranslate2 reads them (`voicechat.speech.models`).
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from voicechat.speech.models import load_files

SELF_CHECK_SECONDS = 1.0
SAMPLE_RATE = 16000
# Whisper's encoder reads a 30 s window (the audio padded with silence) in faster-whisper's
# transcribe(), whatever its chunk_length: ~260 ms of a 2 s question's ~340 ms here. The path
# below can encode a window a little longer than the audio instead (whisper.cpp's audio_ctx:
# ~0.12 s for the whole decode on a 10 s window), but tiny.en then mishears more: "What is the
# capital of France?" came back "... of friends?" in 1 of 5 runs of the web page's microphone
# test and in 3 tests of one CI run (0 of 6 on 30 s). So the window stays 30 s: MIN_WINDOW_S
# is where a shorter one would start (docs/performance.md, "Conversation feel").
MIN_WINDOW_S = 30
FRAMES_PER_S = 100  # log-mel frames (hop of 160 samples at 16 kHz)
# Whisper's own guards against hallucinated text, as faster-whisper applies them: a window
# that is probably no speech and decoded without confidence is dropped; a decode that repeats
# itself (compressible text, or one that ran to its token cap) is redone by the full path,
# which falls back to sampling at higher temperatures.
NO_SPEECH_THRESHOLD = 0.6
LOG_PROB_THRESHOLD = -1.0
COMPRESSION_RATIO_THRESHOLD = 2.4
TOKENS_PER_S = 10  # the most tokens a second of speech can need (fast speech is ~6), ...
TOKENS_BASE = 16  # ... plus this: the short path's cap on a decode


def encoder_window_s(audio_s: float) -> int:
    """The encoder's window for `audio_s` of audio: the audio and a second more, at least
    MIN_WINDOW_S, at most 30 s."""
    return max(MIN_WINDOW_S, min(30, math.ceil(audio_s) + 1))


def repeats_a_sentence(text: str) -> bool:
    """Whisper's loop on a short window: the same sentence of two words or more, twice."""
    sentences = [" ".join(part.lower().split()) for part in re.split(r"[.?!]+", text)]
    said = [sentence for sentence in sentences if len(sentence.split()) >= 2]
    return len(said) != len(set(said))


class WhisperEngine:
    """Inside the STT worker: one Whisper model; transcribes one turn at a time."""

    def __init__(self, model: str, language: str | None = None, threads: int = 0) -> None:
        from faster_whisper import WhisperModel  # only the worker loads CTranslate2

        started = time.perf_counter()
        self.model_name = model
        self.language = language
        files = load_files(model)  # raises ModelFileError on a missing package or a bad sha256
        self._model: Any = WhisperModel(
            model,
            device="cpu",
            compute_type="int8",
            cpu_threads=threads or min(2, os.cpu_count() or 1),
            files=files,
        )
        self.load_seconds = time.perf_counter() - started

    def info(self) -> dict[str, Any]:
        return {
            "model": self.model_name,
            "language": self.language,
            "load_seconds": round(self.load_seconds, 3),
        }

    def self_check(self) -> None:
        # A real inference on one second of quiet noise: it proves the model decodes.
        noise = np.random.default_rng(0).normal(0, 0.001, 16000 * int(SELF_CHECK_SECONDS))
        self.transcribe(noise.astype(np.float32), self.language, lambda: False)

    def transcribe(
        self, audio: np.ndarray, language: str | None, cancelled: Callable[[], bool]
    ) -> tuple[str, str]:
        language = language or self.language
        audio_s = len(audio) / SAMPLE_RATE
        if language is not None and math.ceil(audio_s) + 1 < 30:
            text = self._transcribe_window(audio, language)
            if text is not None:
                return text, language
        return self._transcribe_full(audio, language, cancelled)

    def _transcribe_window(self, audio: np.ndarray, language: str) -> str | None:
        """One greedy decode over a window just longer than the audio; None: it repeated
        itself, so the full path should decide."""
        from faster_whisper.audio import pad_or_trim
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_compression_ratio, get_suppressed_tokens

        model = self._model
        frames = encoder_window_s(len(audio) / SAMPLE_RATE) * FRAMES_PER_S
        features = pad_or_trim(model.feature_extractor(audio), frames)
        tokenizer = Tokenizer(
            model.hf_tokenizer, model.model.is_multilingual, task="transcribe", language=language
        )
        prompt = model.get_prompt(tokenizer, [], without_timestamps=True)
        cap = TOKENS_BASE + math.ceil(TOKENS_PER_S * len(audio) / SAMPLE_RATE)
        result = model.model.generate(
            model.encode(features),
            [prompt],
            beam_size=1,
            max_length=len(prompt) + cap,
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=get_suppressed_tokens(tokenizer, [-1]),
        )[0]
        tokens = result.sequences_ids[0]
        text = str(tokenizer.decode(tokens)).strip()
        if (
            len(tokens) >= cap
            or get_compression_ratio(text) > COMPRESSION_RATIO_THRESHOLD
            or repeats_a_sentence(text)
        ):
            return None
        avg_logprob = result.scores[0] * len(tokens) / (len(tokens) + 1)
        if result.no_speech_prob > NO_SPEECH_THRESHOLD and avg_logprob < LOG_PROB_THRESHOLD:
            return ""
        return text

    def _transcribe_full(
        self, audio: np.ndarray, language: str | None, cancelled: Callable[[], bool]
    ) -> tuple[str, str]:
        """faster-whisper's own decode: a 30 s window per segment, language detection and
        temperature fallback; for long turns, unknown languages and decodes that looped."""
        segments, info = self._model.transcribe(
            audio,
            language=language,
            beam_size=1,
            without_timestamps=True,
            condition_on_previous_text=False,
            vad_filter=False,  # our VAD already cut the turn
        )
        parts = []
        for segment in segments:  # decoding happens while iterating: a cancel stops it here
            if cancelled():
                break
            parts.append(segment.text)
        return "".join(parts).strip(), str(info.language)

    def run(
        self,
        request: dict[str, Any],
        emit: Callable[[dict[str, Any]], None],
        cancelled: Callable[[], bool],
    ) -> None:
        started = time.perf_counter()
        pcm = np.frombuffer(request["pcm"], dtype="<i2").astype(np.float32) / 32768.0
        text, language = self.transcribe(pcm, request.get("language"), cancelled)
        if cancelled():
            return
        emit(
            {
                "text": text,
                "language": language,
                "seconds": round(time.perf_counter() - started, 4),
            }
        )
