"""Send each unit to a voice that can speak its script.

An English neural voice turns Hangul or Han characters into noise, so a unit written mostly in
such a script goes to a voice for it (espeak-ng's Korean, Japanese or Mandarin); a unit in a script
no voice covers is skipped with a TTSError that the client sees.

A voice gets only what it can say: the letters of its scripts (and Latin) with the marks on them,
spaces, and common punctuation, digits and symbols (ASCII and Latin-1, general punctuation,
super- and subscripts, currency, letterlike symbols, number forms, arrows, mathematical
operators; CJK punctuation and fullwidth forms for the CJK voices). Anything else is left out
rather than mangled: other scripts' letters, and their marks, digits and signs, which espeak-ng
(Piper's phonemizer too) would read by their Unicode names ("Myanmar vowel sign aa", about 38
phonemes, or 2 s of speech, for one character).
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


# Non-letters every voice says briefly or not at all (code point ranges, inclusive).
_COMMON = ((0x0000, 0x024F), (0x2000, 0x22FF))
_CJK_COMMON = (*_COMMON, (0x3000, 0x303F), (0xFF00, 0xFFEF))
# The scripts each voice reads, besides Latin.
_VOICE_SCRIPTS = {"hangul": {"hangul"}, "kana": {"kana", "han"}, "han": {"han"}}


def speakable(text: str, script: str | None = LATIN) -> str:
    """The characters of `text` the voice for `script` (a unit's dominant script) can say."""
    scripts = {LATIN, *_VOICE_SCRIPTS.get(script or LATIN, ())}
    common = _COMMON if scripts == {LATIN} else _CJK_COMMON
    kept: list[str] = []
    on_letter = False  # the last character kept is a letter: a combining mark may follow it
    for char in text:
        letter_script = script_of(char)
        if letter_script is not None:
            on_letter = keep = letter_script in scripts
        elif unicodedata.category(char)[0] == "M":
            keep = on_letter
        else:
            on_letter = False
            code = ord(char)
            keep = char.isspace() or any(low <= code <= high for low, high in common)
        if keep:
            kept.append(char)
    return "".join(kept)


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
            engine = self.main
        elif script in self.others:
            engine = self.others[script]
        else:
            raise TTSError(f"skipped: no installed voice speaks {script} text")
        spoken = speakable(text, script)
        if not spoken.strip():
            return  # nothing the voice can say: no audio, and no error either
        async for pcm in engine.synthesize(spoken):
            yield pcm

    async def aclose(self) -> None:
        for engine in (self.main, *self.others.values()):
            await engine.aclose()
