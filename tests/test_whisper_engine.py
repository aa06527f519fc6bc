"""The Whisper engine's own decode: a turn is decoded over a short window (a second longer than
its audio, at least SHORT_WINDOW_S) and kept when Whisper is sure of it, else over the 30 s
window; the audio is padded with silence, not the log-mel with zeros. Long turns, unknown
languages and decodes that loop take faster-whisper's full path.

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


def test_the_first_window_is_the_audio_and_a_second_more_within_bounds() -> None:
    assert encoder_window_s(0.4) == whisper.SHORT_WINDOW_S == 10
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


def windows_decoded(engine: WhisperEngine, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the window of every decode `engine` makes from now on."""
    windows: list[int] = []
    decode = engine._transcribe_window

    def recorded(audio: np.ndarray, language: str, window_s: int) -> Any:
        windows.append(window_s)
        return decode(audio, language, window_s)

    monkeypatch.setattr(engine, "_transcribe_window", recorded)
    return windows


def test_spoken_questions_are_heard_on_the_short_window(
    engine: WhisperEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_full_path(*args: Any) -> Any:
        raise AssertionError("the full 30 s path ran")

    monkeypatch.setattr(engine, "_transcribe_full", no_full_path)
    windows = windows_decoded(engine, monkeypatch)
    heard = [
        engine.transcribe(as_float(pad(spoken_pcm(q), 0.2, 0.3)), "en", lambda: False)
        for q in QUESTIONS
    ]
    assert all(language == "en" for _, language in heard)
    assert corpus_wer([(q, text) for q, (text, _) in zip(QUESTIONS, heard, strict=True)]) <= 0.1
    assert windows == [whisper.SHORT_WINDOW_S] * len(QUESTIONS)  # sure of each: no 30 s decode


def test_the_audio_is_padded_with_silence_not_the_log_mel_with_zeros(
    engine: WhisperEngine,
) -> None:
    # With the log-mel frames padded with zeros (faster-whisper's pad_or_trim), the model reads
    # the padding as faint noise: on the 10 s window this rendering came back "... of friends?",
    # with confidence.
    speech = as_float(pad(spoken_pcm(QUESTIONS[0]), 0.2, 0.3))
    heard = engine._transcribe_window(speech, "en", whisper.SHORT_WINDOW_S)
    assert heard is not None and "capital of france" in heard.text.lower()
    assert heard.log_prob >= whisper.SURE_LOG_PROB


def test_a_transcript_whisper_is_unsure_of_is_redone_on_the_30_s_window(
    engine: WhisperEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    windows = windows_decoded(engine, monkeypatch)
    speech = as_float(pad(spoken_pcm(QUESTIONS[3]), 0.2, 0.3))
    monkeypatch.setattr(whisper, "SURE_LOG_PROB", 0.0)  # never sure: a log-probability is < 0
    text, _ = engine.transcribe(speech, "en", lambda: False)
    assert windows == [whisper.SHORT_WINDOW_S, whisper.WINDOW_S]
    assert "sky" in text.lower()
    windows.clear()
    monkeypatch.setattr(whisper, "SURE_LOG_PROB", -0.4)
    engine.transcribe(speech, "en", lambda: False)
    assert windows == [whisper.SHORT_WINDOW_S]


def test_other_languages_than_english_take_the_30_s_window_at_once(
    engine: WhisperEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The short window and its sureness were measured on English speech only.
    windows = windows_decoded(engine, monkeypatch)
    engine.transcribe(as_float(pad(spoken_pcm(QUESTIONS[3]), 0.2, 0.3)), "ko", lambda: False)
    assert windows == [whisper.WINDOW_S]


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
