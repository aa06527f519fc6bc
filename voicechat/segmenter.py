"""The intelligent buffer: joins streamed LLM text into natural speech units.

``Segmenter().feed(delta)`` returns the units that became complete with that delta; ``flush()``
returns the rest at the end of the answer. Pure and synchronous: no I/O, no clock, so the same
text gives the same units however it is split into deltas.

Where a unit ends:

* Every sentence end is a cut: ``.`` ``!`` ``?`` ``…`` (runs such as ``?!`` or ``...`` stay
  together), CJK ``。！？``, and line breaks. Closing quotes and brackets stay with their sentence.
* An ASCII sentence mark only ends a sentence when whitespace follows it, so ``3.14``,
  ``example.com``, ``a@b.org``, ``main.py`` and ``?q=1`` are never cut. After a period the next
  non-space character decides: a lowercase letter means the sentence goes on (``e.g. this``,
  ``wait... what``); a title or abbreviation (``Mr.``, ``Dr.``, ``e.g.``, ``vs.``) or an initial
  (``J. R. R. Tolkien``, ``U.S.``) is not an end. ``a.m.``/``etc.``-style abbreviations end a
  sentence only before a capital letter. A bare list number (``1.``) never forms a unit.
* Clause marks (``, ; :`` followed by a space, ``—``, CJK ``，、；：``) are optional cuts, taken for
  the first unit once it is ``first_clause_min_chars`` long (the first unit sets the latency the
  user hears), and for any unit once it is ``clause_min_chars`` long.
* A unit that reaches ``max_chars`` without a cut is force-cut at its last space (text without
  spaces, such as Chinese, at the limit).
* A unit is emitted as soon as the first character that decides it has arrived: for a sentence
  end that is the first non-space character after it, never more look-ahead than that.
* Units are stripped; a unit without a letter or digit is joined to the next one (or, at the
  very end of the answer, dropped), so nothing unspeakable (a lone ``—``, ``...``) is returned.

Cost: a regular expression jumps from one candidate mark to the next, and the scan resumes where
it stopped, so each character is looked at a bounded number of times (no re-scan per delta).
"""

from __future__ import annotations

import re

# Candidate positions: every character that may end a unit.
_CANDIDATE = re.compile(r"[.!?…。！？．\n,;:—，、；：]")
_SENTENCE_ASCII = frozenset(".!?…")
_SENTENCE_CJK = frozenset("。！？．")
_CLAUSE_ASCII = frozenset(",;:")
_CLAUSE_NO_SPACE = frozenset("—，、；：")
_CLOSERS = frozenset("\"'”’)]}»」』）】》〉")
_RUN = _SENTENCE_ASCII | _SENTENCE_CJK | _CLOSERS
_OPENERS = "\"'“‘([{«「『（【《〈"

# A period after these never ends a sentence (a name or a continuation always follows).
_NEVER_END = frozenset(
    "mr mrs ms mx dr prof sr jr st rev fr gen col lt capt sgt cmdr mt ft gov sen rep pres "
    "hon fig figs eq vol ch sec pp p no nos vs cf e.g i.e viz approx ca est dept univ "
    "assn bros".split()
)
# A period after these ends a sentence only when a capital letter follows.
_END_BEFORE_CAPITAL = frozenset(
    "etc inc ltd co corp llc jan feb mar apr jun jul aug sep sept oct nov dec "
    "a.m p.m u.s u.k".split()
)
_DOTTED_INITIALS = re.compile(r"^(?:[A-Za-z]\.)*[A-Za-z]$")


def _is_cjk(ch: str) -> bool:
    """Hangul, kana and CJK ideographs: scripts where sentences need no space after them."""
    code = ord(ch)
    return (
        0xAC00 <= code <= 0xD7A3  # Hangul syllables
        or 0x1100 <= code <= 0x11FF  # Hangul jamo
        or 0x3130 <= code <= 0x318F  # Hangul compatibility jamo
        or 0x3040 <= code <= 0x30FF  # Hiragana, Katakana
        or 0x4E00 <= code <= 0x9FFF  # CJK unified ideographs
        or 0x3400 <= code <= 0x4DBF  # CJK extension A
    )


def _has_speech(text: str) -> bool:
    return any(ch.isalnum() for ch in text)


class _Wait(Exception):
    """Internal: the decision needs text that has not arrived yet."""


class Segmenter:
    """Streaming sentence/clause splitter tuned for speech. One instance per answer."""

    def __init__(
        self,
        *,
        max_chars: int = 200,
        first_clause_min_chars: int = 12,
        clause_min_chars: int = 100,
    ) -> None:
        if max_chars < 10:
            raise ValueError("max_chars must be at least 10")
        self.max_chars = max_chars
        self.first_clause_min_chars = first_clause_min_chars
        self.clause_min_chars = clause_min_chars
        self._buf = ""  # the current unit and whatever has arrived after it
        self._scan = 0  # where the search for the next candidate resumes
        self._emitted = 0  # units returned so far (the first unit gets early clause cuts)

    def feed(self, delta: str) -> list[str]:
        """Add streamed text; return the units it completed, in order."""
        # The buffer never starts with whitespace, so limits count the same for any split.
        self._buf = self._buf + delta if self._buf else delta.lstrip()
        if not self._buf:
            return []
        return self._drain(final=False)

    def flush(self) -> list[str]:
        """End of the answer: return every remaining unit and reset for reuse."""
        units = self._drain(final=True)
        rest = self._buf.strip()
        if _has_speech(rest):
            units.append(rest)
        self._buf, self._scan, self._emitted = "", 0, 0
        return units

    # --- internals --------------------------------------------------------------------------

    def _drain(self, *, final: bool) -> list[str]:
        units: list[str] = []
        while True:
            match = _CANDIDATE.search(self._buf, self._scan)
            if match is None or match.start() >= self.max_chars:
                if len(self._buf) > self.max_chars:
                    self._cut(self._force_cut_point(), units)
                    continue
                self._scan = len(self._buf) if match is None else match.start()
                return units
            pos = match.start()
            try:
                end = self._decide(pos, final)
            except _Wait:
                self._scan = pos
                return units
            if end is None or not _has_speech(self._buf[:end]):
                self._scan = pos + 1
            else:
                self._cut(end, units)

    def _cut(self, end: int, units: list[str]) -> None:
        unit = self._buf[:end].strip()
        if _has_speech(unit):  # only a forced cut through pure punctuation can fail this
            units.append(unit)
            self._emitted += 1
        self._buf = self._buf[end:].lstrip()
        self._scan = 0

    def _force_cut_point(self) -> int:
        """Last whitespace within the limit, else the limit itself (text without spaces)."""
        head = self._buf[: self.max_chars + 1]
        for index in range(len(head) - 1, 0, -1):
            if head[index].isspace() and _has_speech(head[:index]):
                return index
        return self.max_chars

    def _decide(self, pos: int, final: bool) -> int | None:
        """Where the unit ends if the mark at `pos` is a cut; None if it is not; _Wait if unsure."""
        buf = self._buf
        mark = buf[pos]
        if mark == "\n":
            return pos
        if mark in _SENTENCE_ASCII or mark in _SENTENCE_CJK:
            return self._decide_sentence(pos, final)
        # Clause marks: optional, and only where they help.
        if pos < self.clause_min_chars and (self._emitted > 0 or pos < self.first_clause_min_chars):
            return None
        end = pos + 1
        while end < len(buf) and buf[end] in _CLOSERS:
            end += 1
        if end == len(buf):
            if final:
                return end
            raise _Wait
        if mark in _CLAUSE_NO_SPACE:
            return end
        return end if buf[end].isspace() else None

    def _decide_sentence(self, pos: int, final: bool) -> int | None:
        buf = self._buf
        end = pos
        while end < len(buf) and buf[end] in _RUN:
            end += 1
        if end == len(buf):
            if final:
                return end
            raise _Wait
        run = buf[pos:end]
        after = buf[end]
        before = buf[pos - 1] if pos > 0 else ""
        if not after.isspace():
            # "3.14", "example.com", "?q=": no space, no sentence end, except in CJK text,
            # where sentences follow each other without a space.
            if any(ch in _SENTENCE_CJK for ch in run) or (
                before != "" and _is_cjk(before) and _is_cjk(after)
            ):
                return end
            return None
        # Whitespace follows: find the first character of what comes next.
        nxt = end
        while nxt < len(buf) and buf[nxt].isspace():
            if buf[nxt] == "\n":
                return end
            nxt += 1
        if nxt == len(buf):
            if final:
                return end
            raise _Wait
        following = buf[nxt]
        if any(ch in _SENTENCE_CJK for ch in run):
            return end
        if "." in run or "…" in run:
            if following.islower():
                return None  # "e.g. this", "wait... what": the sentence goes on
            if run.rstrip("".join(_CLOSERS)) == "." and self._is_abbreviation(pos, following):
                return None
        return end

    def _is_abbreviation(self, pos: int, following: str) -> bool:
        """Is the word before the period at `pos` an abbreviation, an initial or a list number?"""
        start = pos
        while start > 0 and not self._buf[start - 1].isspace():
            start -= 1
        word = self._buf[start:pos].lstrip(_OPENERS)
        if not word:
            return False
        lowered = word.lower()
        if lowered in _NEVER_END:
            return True
        if lowered in _END_BEFORE_CAPITAL:
            return not following.isupper()
        if _DOTTED_INITIALS.match(word) and word != "I":
            # "J." "U.S." are initials; "a.m"-like lowercase forms end before a capital.
            return word[0].isupper() or not following.isupper()
        # "1." alone at the start of a unit is a list marker, not a sentence.
        return word.isdigit() and not self._buf[:start].strip()
