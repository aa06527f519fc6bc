"""Send each unit to a voice that can speak its script.

An English neural voice turns Hangul or Han characters into noise, so a unit written mostly in
such a script goes to a voice for it (espeak-ng's Korean, Japanese or Mandarin); a unit in a script
no voice covers is skipped with a TTSError that the client sees. Characters of other scripts
inside a unit spoken by the main voice are left out rather than mangled.
"""

from __future__ import annotations

import unicodedata
from collections.abc import AsyncGenerator

from voicechat.tts.base import Pcm, TTSEngine, TTSError

LATIN = "latin"
# Scripts the English voice cannot speak -> the espeak-ng voice that can.
ESPEAK_VOICES = {"hangul": "ko", "kana": "ja", "han": "cmn"}


def script_of(char: str) -> str | None:
    """A coarse script name for a letter; None for digits, punctuation and spaces."""
    if not char.isalpha():
        return None
    code = ord(char)
    if 0xAC00 <= code <= 0xD7A3 or 0x1100 <= code <= 0x11FF or 0x3130 <= code <= 0x318F:
        return "hangul"
    if 0x3040 <= code <= 0x30FF:
        return "kana"
    if 0x4E00 <= code <= 0x9FFF or 0x3400 <= code <= 0x4DBF:
        return "han"
    name = unicodedata.name(char, "")
    return LATIN if name.startswith("LATIN") else name.split(" ")[0].lower() or "unknown"


def dominant_script(text: str) -> str | None:
    """The script most letters of `text` are in (kana wins over han: that is Japanese)."""
    counts: dict[str, int] = {}
    for char in text:
        script = script_of(char)
        if script is not None:
            counts[script] = counts.get(script, 0) + 1
    if not counts:
        return None
    if counts.get("kana") and "han" in counts:
        counts["kana"] += counts.pop("han")
    return max(counts, key=lambda script: counts[script])


class ScriptRouter:
    """A TTSEngine that picks, per unit, the voice for the unit's dominant script."""

    def __init__(self, main: TTSEngine, others: dict[str, TTSEngine]) -> None:
        self.main = main
        self.others = others
        self.name = main.name

    async def synthesize(self, text: str) -> AsyncGenerator[Pcm, None]:
        script = dominant_script(text)
        if script in (None, LATIN):
            spoken = "".join(c for c in text if script_of(c) in (None, LATIN))
            engine = self.main
        elif script in self.others:
            spoken, engine = text, self.others[script]
        else:
            raise TTSError(f"skipped: no installed voice speaks {script} text")
        async for pcm in engine.synthesize(spoken):
            yield pcm

    async def aclose(self) -> None:
        for engine in (self.main, *self.others.values()):
            await engine.aclose()
