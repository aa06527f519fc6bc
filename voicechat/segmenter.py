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
* Quoted speech stays whole: a sentence end followed by a closing quote is not a cut when the
  first non-space character after the quote continues the outer sentence (``"Is anyone there?"
  and stepped``, ``"벌써 끝났어?"라고``, ``「寝なさい。」と``, ``"我们走吧。"他说``); see
  ``_continues`` and docs/segmenter.md for the exact rule, and ``_classify`` for how a quote
  mark is told from an opening quote or an apostrophe.
* Clause marks (``, ; :`` followed by a space, ``—``, CJK ``，、；：``) are optional cuts, taken for
  the first unit once it is ``first_clause_min_chars`` long (the first unit sets the latency the
  user hears), and for any unit once it is ``clause_min_chars`` long.
* A unit that reaches ``max_chars`` without a cut is force-cut at its last space (text without
  spaces, such as Chinese, at the limit). No unit is longer than ``max_chars``: a run of marks
  that would go past the limit is cut by the limit too. The first unit's limit is
  ``first_max_chars``: a long first sentence is not waited for whole (the LLM writes it and the
  voice speaks it before anything is heard); its cut prefers the space before a joining word
  (``and``, ``because``, ``which``, ...).
* A unit is emitted as soon as the first character that decides it has arrived: for a sentence
  end that is the first non-space character after it, never more look-ahead than that.
* Units are stripped; a unit without a letter or digit is joined to the next one (or, at the
  very end of the answer, dropped), so nothing unspeakable (a lone ``—``, ``...``) is returned.

Cost: every character is looked at a bounded number of times, whatever the text (long runs of
any mark, quote or space included: scripts/bench_segmenter.py --worst). A regular expression
jumps from one candidate mark to the next and the scan resumes where it stopped; the look-ahead
of an undecided mark (its run of marks and closers, the spaces after it) is remembered across
deltas instead of being walked again, and never goes past the unit's length limit; the quote
tracker and the search for the unit's first letter also resume where they stopped; while the
unit has no letter or digit yet, no mark is decided at all (none could cut); positions are
offsets into one buffer, which is trimmed only when a delta arrives, so a long delta is not
copied once per unit. "Not yet" is a return value (None), not an exception: fed one character
at a time, raising one cost more than the rest of the work.
"""

from __future__ import annotations

import re

# Candidate positions: every character that may end a unit.
_CANDIDATE = re.compile(r"[.!?…。！？．\n,;:—，、；：]")
_SENTENCE_ASCII = frozenset(".!?…")
_SENTENCE_CJK = frozenset("。！？．")
_SENTENCE = _SENTENCE_ASCII | _SENTENCE_CJK
_CLAUSE_NO_SPACE = frozenset("—，、；：")
# Quote marks. ``"`` ``'`` ``’`` are ambiguous (opening or closing quote, or an apostrophe) and
# are classified in context; the others always open or always close.
_QUOTE_OPEN = frozenset("“‘「『")
_QUOTE_CLOSE = frozenset("”」』")
_QUOTE_AMBIGUOUS = frozenset("\"'’")
_BRACKET_CLOSERS = frozenset(")]}»）】》〉")
_CLOSERS = _BRACKET_CLOSERS | _QUOTE_CLOSE | _QUOTE_AMBIGUOUS
_RUN = _SENTENCE | _CLOSERS
_OPENERS = "\"'“‘([{«「『（【《〈"
# After these (or whitespace, or the start of the text) a straight quote opens.
_OPEN_CONTEXT = frozenset("([{«（【《〈“‘「『")
# Which open quotes each closing mark closes (LLMs sometimes mix straight and curly quotes).
_CLOSES = {'"': '"“', "”": '“"', "'": "'‘", "’": "‘'", "」": "「", "』": "『"}
_CLOSES_SET = {mark: frozenset(opens) for mark, opens in _CLOSES.items()}
_MAX_OPEN_QUOTES = 8
# The quote tracker visits quote marks and line breaks, and kana until the first one is seen.
_QUOTE_SCAN = re.compile("[\"'“”‘’「」『』\n]")
_QUOTE_OR_KANA_SCAN = re.compile("[\"'“”‘’「」『』\n\u3041-\u3096\u30a1-\u30fa]")
_ALNUM = re.compile(r"[^\W_]")  # what str.isalnum() accepts
# Words a long first sentence may be cut before (the space in front of them is the cut).
_JOINING_WORD = re.compile(
    r"\s(?=(?:and|but|or|so|because|which|that|who|where|when|while|although|though|since|"
    r"with|using|until|unless|after|before)\s)"
)
# After a closing quote: kana that continue a Japanese sentence (と言った, って) and the Hangul
# syllables that continue a Korean one even after a space (하고/하며/하는, 했다: the verb 하다).
_KANA_CONTINUE = frozenset("とっ")
_HANGUL_CONTINUE_SPACED = frozenset("하했")

# A period after these never ends a sentence (a name or a continuation always follows).
_NEVER_END = frozenset(
    "mr mrs ms mx dr prof sr jr st rev fr gen col lt capt sgt cmdr mt ft gov sen rep pres "
    "hon fig figs eq vol ch sec pp p vs cf e.g i.e viz approx ca est dept univ "
    "assn bros".split()
)
# A period after these ends a sentence unless a digit follows ("No. 5", but "He said no. Then").
_BEFORE_NUMBER = frozenset(("no", "nos"))
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


def _is_han(ch: str) -> bool:
    code = ord(ch)
    return 0x4E00 <= code <= 0x9FFF or 0x3400 <= code <= 0x4DBF


def _is_hangul_syllable(ch: str) -> bool:
    return 0xAC00 <= ord(ch) <= 0xD7A3


def _has_speech(text: str) -> bool:
    return _ALNUM.search(text) is not None


def ends_sentence(unit: str) -> bool:
    """Does this unit end with a sentence mark (closing quotes and brackets after it allowed)?
    A unit cut at a clause mark, a line break or the length limit does not."""
    end = len(unit.rstrip())
    while end and unit[end - 1] in _CLOSERS:
        end -= 1
    return end > 0 and unit[end - 1] in _SENTENCE


# A decision: the mark's run goes on past the unit's length limit (see Segmenter._settle).
_OVER_LIMIT = (False, -1)


class _Look:
    """The look-ahead of an undecided mark, kept across deltas so it is never walked twice."""

    __slots__ = ("cjk", "done", "dot", "end", "nxt", "pos", "quoted", "single_period")

    def __init__(self, pos: int, mark: str) -> None:
        self.pos = pos
        self.end = pos + 1  # the run of marks and closers walked so far ends here
        self.done = False  # the run is complete
        self.cjk = mark in _SENTENCE_CJK  # a CJK sentence mark in the run
        self.dot = mark in ".…"  # the run's last sentence mark is a period or an ellipsis
        self.single_period = mark == "."  # the run is one period and closers
        self.quoted = False  # a closing quote in the run
        self.nxt = 0  # the spaces after the run were walked up to here


class Segmenter:
    """Streaming sentence/clause splitter tuned for speech. One instance per answer."""

    def __init__(
        self,
        *,
        max_chars: int = 200,
        first_max_chars: int = 60,
        first_clause_min_chars: int = 12,
        clause_min_chars: int = 100,
    ) -> None:
        if min(max_chars, first_max_chars) < 10:
            raise ValueError("max_chars and first_max_chars must be at least 10")
        self.max_chars = max_chars
        self.first_max_chars = min(first_max_chars, max_chars)
        self.first_clause_min_chars = first_clause_min_chars
        self.clause_min_chars = clause_min_chars
        self._reset()

    def _reset(self) -> None:
        self._buf = ""  # text not yet emitted, plus at most one character before it
        self._start = 0  # where the current unit starts in _buf
        self._scan = 0  # where the search for the next candidate resumes
        self._emitted = 0  # units returned so far (the first unit gets early clause cuts)
        self._look: _Look | None = None  # the undecided mark at _scan, if any
        self._alnum_at = -1  # the unit's first letter or digit, once found
        self._alnum_scan = 0  # _buf[_start:_alnum_scan] has no letter or digit
        self._quotes: list[str] = []  # the open quotes, innermost last
        self._qpos = 0  # quote marks before this position have been classified
        self._japanese = False  # kana seen in this answer

    def feed(self, delta: str) -> list[str]:
        """Add streamed text; return the units it completed, in order."""
        if self._start > self.max_chars:
            self._trim()
        self._buf += delta
        return self._drain(final=False)

    def flush(self) -> list[str]:
        """End of the answer: return every remaining unit and reset for reuse."""
        units = self._drain(final=True)
        rest = self._buf[self._start :].strip()
        if _has_speech(rest):
            units.append(rest)
        self._reset()
        return units

    # --- internals --------------------------------------------------------------------------

    def _trim(self) -> None:
        """Drop emitted text (called once there is more than a unit of it), keeping one character
        of context before what is still needed. Positions are offsets into _buf, so a long delta
        is drained without copying it once per unit."""
        start = self._start
        if self._qpos < start:
            # Quote marks in emitted text are classified now (each needs the character after).
            self._advance_quotes(min(start, len(self._buf) - 1), final=False)
        keep = min(start, self._qpos) - 1
        self._buf = self._buf[keep:]
        self._start -= keep
        self._scan -= keep
        self._qpos -= keep
        self._alnum_scan = max(self._alnum_scan - keep, 0)
        if self._alnum_at >= 0:
            self._alnum_at -= keep
        if self._look is not None:
            self._look.pos -= keep
            self._look.end -= keep
            self._look.nxt = max(self._look.nxt - keep, 0)

    def _drain(self, *, final: bool) -> list[str]:
        units: list[str] = []
        buf = self._buf
        size = len(buf)
        if self._start < size and buf[self._start].isspace():
            self._skip_space()  # the unit never starts with whitespace (a delta may start with it)
        while True:
            if self._look is not None:
                # A mark whose look-ahead waited for more text: it is the next candidate.
                pos = self._look.pos
                decision = self._decide(pos, final)
                if decision is None:
                    return units
                self._settle(pos, decision, units)
                continue
            limit = self._start + self._unit_max_chars()
            match = _CANDIDATE.search(buf, self._scan, limit)
            if match is None:
                if size > limit:
                    if self._scan < limit:
                        self._scan = limit  # searched: no candidate before the limit
                    self._cut(self._force_cut_point(), units)
                    continue
                self._scan = size
                return units
            pos = match.start()
            if self._alnum_at < 0 and not self._speech_before(size):
                # No letter or digit since the unit started: no mark can cut (a unit needs one),
                # so none is decided now; only the length limit cuts (text that is dropped). The
                # marks are skipped for good: any decision about them would be "no cut". Quote
                # marks are still classified in order, when a later run or _trim needs it.
                while size > self._start + self._unit_max_chars():
                    self._cut(self._start + self._unit_max_chars(), units)
                self._scan = size
                return units
            if pos + 1 == size and not final and buf[pos] != "\n":
                self._scan = pos  # every mark but a line break needs the next character
                return units
            decision = self._decide(pos, final)
            if decision is None:  # it needs text that has not arrived yet
                self._scan = pos
                return units
            if decision[0] or decision[1] < 0:
                self._settle(pos, decision, units)
            else:  # the common case, no cut: the whole run is decided, its marks are no candidates
                self._look = None
                self._scan = decision[1]

    def _settle(self, pos: int, decision: tuple[bool, int], units: list[str]) -> None:
        """Act on the decision about the mark at `pos`."""
        self._look = None
        cut, end = decision
        if end < 0:
            # Its run goes on past the length limit: the limit cuts, and the run is decided
            # afresh, whole, in the next unit (unless the cut falls inside it: no space before).
            self._scan = pos
            self._cut(self._force_cut_point(), units)
        elif cut and self._speech_before(end):
            self._cut(end, units, True)
        else:
            self._scan = end  # the whole run is decided: its other marks are not candidates

    def _cut(self, end: int, units: list[str], speech: bool = False) -> None:
        """End the unit at `end`; emit it if it has a letter or digit (`speech`: known to)."""
        buf = self._buf
        unit = buf[self._start : end].strip()
        if speech or _has_speech(unit):  # only a forced cut through punctuation can fail this
            units.append(unit)
            self._emitted += 1
        self._start = end
        if self._scan < end:
            self._scan = end
        if self._alnum_at < end:
            self._alnum_at = -1
            if self._alnum_scan < end:
                self._alnum_scan = end
        if end < len(buf) and buf[end].isspace():
            self._skip_space()

    def _unit_max_chars(self) -> int:
        """The current unit's length limit: the first unit's is shorter (it sets the latency)."""
        return self.first_max_chars if self._emitted == 0 else self.max_chars

    def _skip_space(self) -> None:
        buf = self._buf
        start = self._start
        if start < len(buf) and buf[start].isspace():
            while start < len(buf) and buf[start].isspace():
                start += 1
            self._start = start
            self._scan = max(self._scan, start)
            self._alnum_scan = max(self._alnum_scan, start)

    def _speech_before(self, end: int) -> bool:
        """Does the unit have a letter or digit before `end`? Resumes where it stopped."""
        if self._alnum_at < 0:
            match = _ALNUM.search(self._buf, self._alnum_scan, end)
            if match is None:
                self._alnum_scan = max(self._alnum_scan, end)
                return False
            self._alnum_at = match.start()
        return self._alnum_at < end

    def _force_cut_point(self) -> int:
        """Last whitespace within the limit, else the limit itself (text without spaces). The
        first unit prefers the last space before a joining word ("... on trees | and they"),
        where a speaker would take a breath, if its words so far are long enough to stand."""
        buf = self._buf
        limit = self._start + self._unit_max_chars()
        head_end = min(len(buf), limit + 1)
        if self._speech_before(head_end):
            if self._emitted == 0:
                joins = list(_JOINING_WORD.finditer(buf, self._start, head_end))
                if joins and joins[-1].start() - self._start >= self.first_clause_min_chars:
                    return joins[-1].start()
            for index in range(head_end - 1, self._alnum_at, -1):
                if buf[index].isspace():
                    return index
        return limit

    # --- quotes -----------------------------------------------------------------------------

    def _advance_quotes(self, target: int, final: bool) -> None:
        """Classify every quote mark before `target` not yet seen, in order."""
        buf = self._buf
        index = self._qpos
        quotes = self._quotes
        pattern = _QUOTE_SCAN if self._japanese else _QUOTE_OR_KANA_SCAN
        while index < target:
            match = pattern.search(buf, index, target)
            if match is None:
                break
            index = match.start()
            ch = buf[index]
            if ch == "\n":
                quotes.clear()  # a quote does not run on past a paragraph
            elif ch in _CLOSES or ch in _QUOTE_OPEN:
                self._qpos = index
                kind = self._classify(index, final)
                if kind == "open" or (kind == "close" and quotes):
                    self._apply(ch, kind)
            else:
                self._japanese = True
                pattern = _QUOTE_SCAN
            index += 1
        if self._qpos < target:
            self._qpos = target

    def _quote_kind(self, index: int, final: bool) -> str | None:
        """Classify the quote mark at `index` (the next one due) and update the open quotes;
        None if that needs the next character and it has not arrived."""
        if self._qpos < index:
            self._advance_quotes(index, final)
        kind = self._classify(index, final)
        if kind is None:
            return None
        self._apply(self._buf[index], kind)
        self._qpos = index + 1
        return kind

    def _classify(self, index: int, final: bool) -> str | None:
        """'open', 'close', or '' (an apostrophe or a stray mark) for the quote mark at `index`;
        None if that depends on the next character and it has not arrived yet.

        “ ‘ 「 『 always open and ” 」 』 always close. A straight quote opens after whitespace, the
        start of the text or an opening bracket or quote; otherwise it closes a matching open
        quote, and with none open it opens if a letter follows it (``。"我``) and closes if not
        (``5" screen``, ``Wait!" and``). ``'`` and ``’`` right after a letter or digit of an
        alphabetic script are apostrophes (``don't``, ``the dogs' bowls``, ``it’s``), except a
        ``'``/``’`` that closes an open single quote and is not followed by a letter
        (``'go' and``); so is a ``'`` before a digit at the start of a word (``'90s``). ``’``
        never opens.
        """
        buf = self._buf
        ch = buf[index]
        if ch in _QUOTE_OPEN:
            return "open"
        if ch in _QUOTE_CLOSE:
            return "close"
        prev = buf[index - 1] if index > 0 else " "
        # The next character: "" at the end of the answer, None if it has not arrived yet.
        after = buf[index + 1] if index + 1 < len(buf) else "" if final else None
        is_open = not _CLOSES_SET[ch].isdisjoint(self._quotes)
        if ch != '"' and prev.isalnum() and not _is_cjk(prev):
            if not is_open:
                return ""  # "dogs' bowls", "don't"
            if after is None:
                return None
            return "" if after.isalnum() else "close"
        if prev.isspace() or prev in _OPEN_CONTEXT:
            if ch == "’":
                return ""  # "’90s"
            if ch == "'":
                if after is None:
                    return None
                if after.isdigit():
                    return ""  # "'90s"
            return "open"
        if is_open or ch == "’":
            return "close"
        if after is None:
            return None
        return "open" if after.isalnum() else "close"

    def _apply(self, ch: str, kind: str) -> None:
        quotes = self._quotes
        if kind == "open":
            if len(quotes) >= _MAX_OPEN_QUOTES:
                del quotes[0]
            quotes.append(ch)
        elif kind == "close":
            opens = _CLOSES[ch]
            for depth in range(len(quotes) - 1, -1, -1):
                if quotes[depth] in opens:
                    del quotes[depth:]
                    break

    def _continues(self, ch: str, *, spaced: bool) -> bool:
        """After a sentence end and a closing quote, does `ch` continue the outer sentence?"""
        if ch.islower() or ch in _KANA_CONTINUE:
            return True  # 'and stepped inside', 'と言った', 'って'
        if _is_hangul_syllable(ch):
            # Attached to the quote, Hangul is a particle or ending (라고, 고, 며, 하고, 이라고,
            # 는, 를...): Korean puts a space before a new sentence. After a space, only 하다.
            return not spaced or ch in _HANGUL_CONTINUE_SPACED
        # Chinese: '"我们走吧。"他说' (in Japanese, kanji after 」 starts a new sentence).
        return not spaced and _is_han(ch) and not self._japanese

    # --- decisions --------------------------------------------------------------------------

    def _decide(self, pos: int, final: bool) -> tuple[bool, int] | None:
        """(is the mark at `pos` a cut, where its unit or run ends); _OVER_LIMIT if its run goes
        on past the unit's length limit; None if that needs text that has not arrived yet (a
        return value, not an exception: raising one costs more than the rest of a feed of one
        character)."""
        buf = self._buf
        mark = buf[pos]
        if mark == "\n":
            return True, pos + 1
        if mark in _SENTENCE:
            return self._decide_sentence(pos, final)
        # Clause marks: optional, and only where they help.
        offset = pos - self._start
        if offset < self.clause_min_chars and (
            self._emitted > 0 or offset < self.first_clause_min_chars
        ):
            return False, pos + 1
        if pos + 1 < len(buf) and buf[pos + 1] not in _CLOSERS:
            end = pos + 1  # the common case, no closer after the mark: nothing to walk
        else:
            look = self._walk_run(pos, final, False)
            if look is None:
                return None
            end = look.end
        if end - self._start > self._unit_max_chars():
            return _OVER_LIMIT
        if end == len(buf):
            return True, end  # only when final: _walk_run waits otherwise
        if mark in _CLAUSE_NO_SPACE:
            return True, end
        return buf[end].isspace(), end

    def _walk_run(self, pos: int, final: bool, sentence: bool) -> _Look | None:
        """The run of sentence marks (if `sentence`) and closers from `pos`, resumed if waiting;
        None while it reaches the end of the text so far."""
        look = self._look
        if look is None or look.pos != pos:
            look = self._look = _Look(pos, self._buf[pos])
        if look.done:
            return look
        buf = self._buf
        size = len(buf)
        # A unit never grows past the length limit: the walk stops one character after it (then
        # the run goes on past the limit, and the limit cuts).
        cap = self._start + self._unit_max_chars()
        index = look.end
        # Before the end of the answer, a run character at the very end of the text leaves the
        # run open whatever it is (a quote there, closing or not, needs the next character to
        # tell), so the walk stops before it and looks at it once, when more text has come.
        stop = min(size if final else size - 1, cap + 1)
        while index < stop:
            ch = buf[index]
            if sentence and ch in _SENTENCE:
                look.cjk = look.cjk or ch in _SENTENCE_CJK
                look.dot = ch in ".…"  # the last mark decides: "Wait...? what" is a cut
                look.single_period = False
            elif ch in _BRACKET_CLOSERS:
                pass
            elif ch in _CLOSES:
                look.end = index
                if index < self._qpos:
                    # Classified by an earlier walk of this run, one that went past the length
                    # limit (see _settle): that walk went on past the quote, so it closes.
                    kind = "close"
                else:
                    if pos <= self._qpos:
                        # Only marks and closers of this run since the last quote: nothing to
                        # track before this one.
                        self._qpos = index
                    kind = self._quote_kind(index, final)
                    if kind is None:
                        return None  # resumed here, at the quote, when the next character comes
                if kind != "close":
                    break
                look.quoted = True
            else:
                break
            index += 1
        else:
            if index <= cap and not final and buf[index] in (_RUN if sentence else _CLOSERS):
                look.end = index
                return None  # resumed here when the next character arrives
        look.end = index
        look.done = True
        return look

    def _decide_sentence(self, pos: int, final: bool) -> tuple[bool, int] | None:
        buf = self._buf
        size = len(buf)
        look = self._look if self._look is not None and self._look.pos == pos else None
        mark = buf[pos]
        if look is None and pos + 1 < size and buf[pos + 1] not in _RUN:
            # The common case, a lone mark: nothing to remember unless spaces make it wait.
            end, nxt, cjk, quoted = pos + 1, pos + 1, mark in _SENTENCE_CJK, False
            dot, single_period = mark in ".…", mark == "."
        else:
            look = self._walk_run(pos, final, True)
            if look is None:
                return None
            end, nxt, cjk, quoted = look.end, max(look.nxt, look.end), look.cjk, look.quoted
            dot, single_period = look.dot, look.single_period
        if end - self._start > self._unit_max_chars():
            return _OVER_LIMIT
        if end == size:
            return True, end  # the end of the answer
        after = buf[end]
        if not after.isspace():
            if quoted and self._continues(after, spaced=False):
                return False, end  # '"벌써 끝났어?"라고', '"我们走吧。"他说'
            # "3.14", "example.com", "?q=": no space, no sentence end, except in CJK text,
            # where sentences follow each other without a space.
            before = buf[pos - 1] if pos > self._start else ""
            return cjk or (before != "" and _is_cjk(before) and _is_cjk(after)), end
        # Whitespace follows: find the first character of what comes next.
        while nxt < size and buf[nxt].isspace():
            if buf[nxt] == "\n" or nxt - end >= self.max_chars:
                return True, end
            nxt += 1
        if nxt == size:
            if final:
                return True, end
            if look is None:
                look = self._look = _Look(pos, mark)
                look.end, look.done = end, True
            look.nxt = nxt
            return None
        following = buf[nxt]
        if quoted and self._continues(following, spaced=True):
            return False, end  # '"Is anyone there?" and stepped inside'
        if cjk:
            return True, end
        if dot:
            if following.islower():
                return False, end  # "e.g. this", "wait... what": the sentence goes on
            # A period inside a closing quote ends the quoted sentence: '"No." Then' is a cut.
            if single_period and not quoted and self._is_abbreviation(pos, following):
                return False, end
        return True, end

    def _is_abbreviation(self, pos: int, following: str) -> bool:
        """Is the word before the period at `pos` an abbreviation, an initial or a list number?"""
        buf = self._buf
        start = pos
        while start > self._start and not buf[start - 1].isspace():
            start -= 1
        word = buf[start:pos].lstrip(_OPENERS)
        if not word:
            return False
        lowered = word.lower()
        if lowered in _NEVER_END:
            return True
        if lowered in _BEFORE_NUMBER:
            return following.isdigit()
        if lowered in _END_BEFORE_CAPITAL:
            return not following.isupper()
        if _DOTTED_INITIALS.match(word) and word != "I":
            # "J." "U.S." are initials; "a.m"-like lowercase forms end before a capital.
            return word[0].isupper() or not following.isupper()
        # "1." alone at the start of a unit is a list marker, not a sentence.
        return word.isdigit() and start == self._start
