"""Speech input: the server hears the user.

The client streams microphone audio (`input_audio.append`, PCM16 16 kHz). Per session a
`Listener` (listener.py) runs it through Silero VAD (vad.py, in a worker process), the turn
rules (turns.py: start, pause, end, barge-in over a playing answer), the end of a turn by
meaning (semantic.py: SmolLM2 in a worker process reads the words so far), speech recognition
(stt.py: Whisper in a worker process, or an OpenAI-compatible server), then hands the
transcript to the session as the user's turn. Model files come from pip packages (models.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from voicechat.speech.semantic import EndOfTurnModel
    from voicechat.speech.stt import SpeechToText
    from voicechat.speech.vad import SileroVAD


@dataclass
class SpeechInput:
    """What the server hears with: one VAD and one recognizer shared by every session."""

    vad: SileroVAD
    stt: SpeechToText
    language: str | None  # the default; a session may change it (session.update)
    end_of_turn: EndOfTurnModel | None = None  # None: silence alone ends a turn
