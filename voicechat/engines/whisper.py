"""Whisper (faster-whisper on CTranslate2, int8), inside the speech-recognition worker process.

One request is one finished turn: 16 kHz PCM16 in, its text out. Decoding is greedy (beam 1)
without timestamps. Most of the time is the encoder's, and it grows with its window: a 2 s
question takes ~0.14 s on a 10 s window and ~0.43 s on Whisper's own 30 s one (2 cores). So a
turn is decoded on the short window first and kept when Whisper is sure of it; otherwise the
30 s window decides (SHORT_WINDOW_S, SURE_LOG_PROB). The weights come from pip packages and are
checked by sha256 before CTranslate2 reads them (`voicechat.speech.models`).
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from voicechat.speech.models import load_files

SELF_CHECK_SECONDS = 1.0
SAMPLE_RATE = 16000
# The encoder's time grows with its window, faster than linearly (attention): Whisper's own
# 30 s window costs ~0.43 s for a 2 s question on 2 slow cores, a 10 s one ~0.14 s (at least
# 10 s: below that tiny.en loops). A turn is first decoded on a window a second longer than its
# audio, at least SHORT_WINDOW_S, and that transcript is kept when Whisper is sure of it (its
# mean log-probability per token at least SURE_LOG_PROB); otherwise the 30 s window decides.
# Either way the audio is padded with silence, as Whisper was trained (OpenAI's reference pads
# the samples), not the log-mel frames with zeros (faster-whisper's pad_or_trim), which the
# model reads as faint noise: padded so, the 10 s window heard "What is the capital of France?"
# as "... of friends?" with confidence. Measured on 24 sentences x 6 renderings per voice
# (python scripts/bench_stt_window.py; docs/performance.md, "Conversation feel"). English only:
# other languages go to the 30 s window at once.
SHORT_WINDOW_S = 10
SURE_LOG_PROB = -0.4
SHORT_WINDOW_LANGUAGES = frozenset({"en"})  # measured on English only: others take 30 s
WINDOW_S = 30  # Whisper's own
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
    """The first window for `audio_s` of audio: the audio and a second more, at least
    SHORT_WINDOW_S, at most WINDOW_S."""
    return max(SHORT_WINDOW_S, min(WINDOW_S, math.ceil(audio_s) + 1))


class Heard(NamedTuple):
    text: str
    log_prob: float  # mean log-probability per token: how sure Whisper is of `text`


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
        if language is not None and math.ceil(audio_s) + 1 < WINDOW_S:
            if language in SHORT_WINDOW_LANGUAGES:  # the short window first: kept when sure
                heard = self._transcribe_window(audio, language, encoder_window_s(audio_s))
                if heard is not None and heard.log_prob >= SURE_LOG_PROB:
                    return heard.text, language
                if cancelled():
                    return "", language
            heard = self._transcribe_window(audio, language, WINDOW_S)
            if heard is not None:
                return heard.text, language
        return self._transcribe_full(audio, language, cancelled)

    def _transcribe_window(self, audio: np.ndarray, language: str, window_s: int) -> Heard | None:
        """One greedy decode of the audio padded with silence to `window_s`; None: it repeated
        itself, so the full path should decide."""
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import get_compression_ratio, get_suppressed_tokens

        model = self._model
        silence = np.zeros(window_s * SAMPLE_RATE - len(audio), dtype=np.float32)
        frames = window_s * FRAMES_PER_S  # (the extractor's extra frame is cut)
        features = model.feature_extractor(np.concatenate([audio, silence]))[:, :frames]
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
        log_prob = result.scores[0] * len(tokens) / (len(tokens) + 1)
        if result.no_speech_prob > NO_SPEECH_THRESHOLD and log_prob < LOG_PROB_THRESHOLD:
            return Heard("", log_prob)
        return Heard(text, log_prob)

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
