"""The Whisper engine's own decode: a turn is decoded over a window of MIN_WINDOW_S or just
longer than its audio; long turns, unknown languages and decodes that loop take
faster-whisper's full path.

The real tiny.en model in the test process (the server runs it in its worker), on Piper speech.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from tests.speech_fixtures import QUESTIONS, SPEECH_RATE, corpus_wer, pad, spoken_pcm
from voicechat.engines import whisper
from voicechat.engines.whisper import WhisperEngine, encoder_window_s, repeats_a_sentence


@pytest.fixture(scope="module")
def engine() -> WhisperEngine:
    return WhisperEngine("tiny.en", "en")


def as_float(samples: np.ndarray) -> np.ndarray:
    return samples.astype(np.float32) / 32768.0


def test_the_window_is_the_audio_and_a_second_more_within_bounds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert encoder_window_s(0.4) == whisper.MIN_WINDOW_S
    monkeypatch.setattr(whisper, "MIN_WINDOW_S", 10)
    assert encoder_window_s(0.4) == 10
    assert encoder_window_s(15.2) == 17
    assert encoder_window_s(29.5) == 30
    assert encoder_window_s(45.0) == 30


@pytest.mark.parametrize(
    ("text", "loops"),
    [
        ("What is the capital of France? What is the capital of France? What is", True),
        ("Tell me more. tell me   more!", True),
        ("Why is the sky blue?", False),
        ("No. No. I said no.", False),  # one-word sentences repeat in real speech
        ("", False),
    ],
)
def test_a_repeated_sentence_is_a_loop(text: str, loops: bool) -> None:
    assert repeats_a_sentence(text) is loops


def test_spoken_questions_take_the_short_window(
    engine: WhisperEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_full_path(*args: Any) -> Any:
        raise AssertionError("the full 30 s path ran")

    monkeypatch.setattr(engine, "_transcribe_full", no_full_path)
    heard = [
        engine.transcribe(as_float(pad(spoken_pcm(q), 0.2, 0.3)), "en", lambda: False)
        for q in QUESTIONS
    ]
    assert all(language == "en" for _, language in heard)
    assert corpus_wer([(q, text) for q, (text, _) in zip(QUESTIONS, heard, strict=True)]) <= 0.1


def test_a_turn_over_29_s_and_an_unknown_language_take_the_full_path(
    engine: WhisperEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[float] = []

    def full_path(audio: np.ndarray, language: str | None, cancelled: Any) -> tuple[str, str]:
        calls.append(len(audio) / SPEECH_RATE)
        return "full", "en"

    monkeypatch.setattr(engine, "_transcribe_full", full_path)
    monkeypatch.setattr(engine, "language", None)
    speech = as_float(spoken_pcm(QUESTIONS[0]))
    assert engine.transcribe(speech, None, lambda: False) == ("full", "en")
    long_turn = as_float(pad(spoken_pcm(QUESTIONS[0]), 0.0, 28.5))
    assert engine.transcribe(long_turn, "en", lambda: False) == ("full", "en")
    assert engine.transcribe(speech, "en", lambda: False)[0] != "full"
    assert len(calls) == 2 and calls[1] > 29


def test_a_decode_that_loops_is_redone_by_the_full_path(
    engine: WhisperEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As if the short window had looped (tiny.en does on 3-8 s windows).
    seen: list[str] = []

    def looped(text: str) -> bool:
        seen.append(text)
        return True

    monkeypatch.setattr(whisper, "repeats_a_sentence", looped)
    monkeypatch.setattr(engine, "_transcribe_full", lambda *args: ("from the full path", "en"))
    speech = as_float(spoken_pcm(QUESTIONS[0]))
    assert engine.transcribe(speech, "en", lambda: False) == ("from the full path", "en")
    assert seen and "capital" in seen[0]  # the short window's words were checked first
