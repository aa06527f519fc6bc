"""What an answer speaks stays sane, whatever the model: no loops, no unfinished sentence, a
spoken length budget.

Small local models (SmolLM2-135M) fall into loops: the same clause over and over until the token
limit ("…but you could have it with a lighter option, but you could have it with a lighter
option, but you could have"), sentences copied from earlier in the answer, or a flood of emoji
with nothing to speak. `SpeechGate` sits where the speech text becomes speech units (between the
speech-text filter and TTS) and decides which units are spoken:

* **Loops end the answer** at the last whole sentence before them (`stopped == "repetition"`):
  - a repeating period in the word stream: the last `p` words equal the `p` before them, over
    at least `MIN_RUN` words (`p` up to `MAX_PERIOD`), e.g. a clause said twice in a row;
  - a unit that repeats the answer: the same words as an earlier unit, or at least half of its
    word trigrams (and two or more) already said in this answer;
  - a unit that would lift the answer's share of repeated word trigrams over `MAX_REPEAT_SHARE`;
  - a run of `SYMBOL_RUN` emoji or symbols with no letter or digit between (in the raw text:
    the speech filter drops emoji, so a flood of them is otherwise silence).
* **A spoken length budget** (`max_speech_s`): once the units spoken add up to it (estimated
  from their words, `WORDS_PER_SECOND`), the answer ends after that sentence
  (`stopped == "max_speech"`).
* **No unfinished sentence is spoken at a limit**: after the first unit (which starts at once,
  for latency), a unit cut at a clause mark (`,` `;` `:` `—`) waits for the end of its sentence
  before it is released; if the answer is cut first (a loop, a token limit: `cut()`), it is
  dropped with the rest of that sentence. A run-on sentence longer than `MAX_HELD_CHARS` is
  released anyway (a sentence that never ends would otherwise be silence).

`spoken` lists what was released, in order; `kept_text` is what the conversation should keep
(the spoken units joined) when something produced was not spoken, else None (the answer's text
stands). With `guard=False` the gate is the plain segmenter (for "before" measurements).

Pure and synchronous, like the segmenter: no I/O, no clock. Word tokens are letters and digits
(`don't` is one word); each CJK ideograph or kana is a word of its own, Hangul words are
space-separated as written. The cost per word is `MAX_PERIOD` comparisons.
"""

from __future__ import annotations

import bisect
import re
import unicodedata
from collections.abc import Iterable

from voicechat.segmenter import Segmenter, ends_sentence

MAX_PERIOD = 40  # longest repeating period looked for, in words
MIN_RUN = 8  # a period repeats over at least this many words (and one whole period) to be a loop
UNIT_REPEAT_SHARE = 0.5  # a unit with this share of its trigrams already said is a repeat…
UNIT_REPEAT_MIN = 2  # …when that is at least this many trigrams
MAX_REPEAT_SHARE = 0.15  # an answer's share of repeated trigrams may not pass this…
SHARE_MIN_TRIGRAMS = 12  # …once it has this many trigrams
SYMBOL_RUN = 12  # emoji or symbols in a row (spaces and punctuation between allowed)
MAX_HELD_CHARS = 400  # a sentence held back longer than this is spoken anyway
# Spoken English: Piper's en_US-joe-medium at rate 1.0 said 3.2-3.3 words a second over the
# answers of scripts/bench_answers.py (docs/performance.md).
WORDS_PER_SECOND = 3.2
CJK_PER_SECOND = 5.0  # CJK characters spoken per second

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_TOKEN = re.compile(rf"[{_CJK}]|[^\W_{_CJK}]+(?:['’][^\W_{_CJK}]+)*")
_CJK_CHAR = re.compile(f"[{_CJK}]")
_CLAUSE_END = frozenset(",;:—，、；：")

REPETITION, MAX_SPEECH = "repetition", "max_speech"


def words(text: str) -> list[str]:
    """The word tokens of `text`, case-folded (CJK: one token per character)."""
    return [_norm(match.group()) for match in _TOKEN.finditer(text)]


def _norm(token: str) -> str:
    return token.casefold().replace("’", "'")


def _is_cjk(token: str) -> bool:
    return len(token) == 1 and _CJK_CHAR.match(token) is not None


def repeated_trigram_share(text: str) -> float:
    """The share of word trigrams in `text` that repeat an earlier one (0.0 with none; trigrams
    with a CJK character are not counted)."""
    stream = WordStream()
    stream.feed(text, final=True)
    repeated, counted = stream.repeats_in(0, len(stream.tokens))
    return repeated / counted if counted else 0.0


def speech_seconds(text: str) -> float:
    """About how long `text` takes to say: words at WORDS_PER_SECOND, CJK at CJK_PER_SECOND."""
    tokens = words(text)
    cjk = sum(1 for token in tokens if _is_cjk(token))
    return (len(tokens) - cjk) / WORDS_PER_SECOND + cjk / CJK_PER_SECOND


def is_symbol(char: str) -> bool:
    """An emoji, pictograph or other non-ASCII symbol (Unicode So/Sk)."""
    return not char.isascii() and unicodedata.category(char) in ("So", "Sk")


class WordStream:
    """Words of streamed text with their offsets, trigram repeats and the periodic-loop check."""

    def __init__(self) -> None:
        self.tokens: list[str] = []
        self.starts: list[int] = []  # offset of each token in the text fed so far
        self.ends: list[int] = []
        # Per token: the word trigram ending here was seen before; it counts (trigrams with a CJK
        # character do not: one character is no word, and its trigrams recur in plain prose).
        self._repeats = [0]  # repeated trigrams among the first i tokens (prefix sums)
        self._counted = [0]
        self._seen: set[tuple[str, str, str]] = set()
        self._runs = [0] * (MAX_PERIOD + 1)  # per period p: matching words in a row so far
        self._pending = ""  # a word that may go on in the next piece
        self._offset = 0  # offset of _pending in the text fed so far
        self.loop_at: int | None = None  # offset where the repeated part of a loop begins

    def feed(self, text: str, *, final: bool = False) -> None:
        """Add text; complete words are checked at once (`final`: the last word too)."""
        buf = self._pending + text
        keep_from = len(buf)
        for match in _TOKEN.finditer(buf):
            token = match.group()
            if match.end() == len(buf) and not final and not _is_cjk(token):
                keep_from = match.start()  # may go on in the next piece
                break
            self._add(_norm(token), self._offset + match.start(), self._offset + match.end())
        self._pending = buf[keep_from:]
        self._offset += keep_from

    def _add(self, token: str, start: int, end: int) -> None:
        tokens = self.tokens
        n = len(tokens)
        tokens.append(token)
        self.starts.append(start)
        self.ends.append(end)
        gram = (tokens[n - 2], tokens[n - 1], token) if n >= 2 else None
        counted = gram is not None and not any(_is_cjk(word) for word in gram)
        repeated = counted and gram in self._seen
        if counted:
            self._seen.add(gram)  # type: ignore[arg-type]
        self._repeats.append(self._repeats[-1] + repeated)
        self._counted.append(self._counted[-1] + counted)
        runs = self._runs
        for period in range(1, min(MAX_PERIOD, n) + 1):
            if tokens[n - period] == token:
                runs[period] += 1
                run = runs[period]
                # A CJK character is about half a word: its run must be twice as long.
                min_run = 2 * MIN_RUN if _is_cjk(token) else MIN_RUN
                if run >= period and run >= min_run and self.loop_at is None:
                    self.loop_at = self.starts[n - run + 1]
            else:
                runs[period] = 0

    def span(self, start: int, end: int) -> tuple[int, int]:
        """The token indices [a, b) inside the text [start, end)."""
        return bisect.bisect_left(self.starts, start), bisect.bisect_right(self.ends, end)

    def repeats_in(self, a: int, b: int) -> tuple[int, int]:
        """(repeated, counted) trigrams among those ending at tokens a..b-1."""
        a = min(max(a, 0), b)
        return self._repeats[b] - self._repeats[a], self._counted[b] - self._counted[a]


class SpeechGate:
    """Speech text in, speech units out: the segmenter plus the rules in the module docstring."""

    def __init__(
        self,
        *,
        guard: bool = True,
        max_speech_s: float | None = None,
        segmenter: Segmenter | None = None,
    ) -> None:
        self.guard = guard
        self.max_speech_s = max_speech_s or None
        self.segmenter = segmenter or Segmenter()
        self.words = WordStream()
        self.stopped: str | None = None  # REPETITION or MAX_SPEECH once the answer must end
        self.spoken: list[str] = []
        self.dropped = False  # text with speech in it was produced but not spoken
        self.spoken_s = 0.0
        # The speech text from where the next unit is searched for (units are located in it);
        # `_base` is its offset in all the speech text fed so far.
        self._text = ""
        self._base = 0
        self._held: list[tuple[str, int, int, int]] = []  # (unit, end, first token, end token)
        self._ended = False  # stopped, or cut by the caller's limit
        self._unit_words: set[tuple[str, ...]] = set()
        self._symbols = 0  # emoji or symbols since the last letter or digit (raw text)

    @property
    def kept_text(self) -> str | None:
        """What the conversation keeps of an answer that was ended early (a loop, the budget, a
        limit) with part of it unspoken: the units spoken. None when everything produced was
        spoken (its text stands), and without the guard at a limit (all spoken, as before)."""
        return " ".join(self.spoken) if self._ended and self.dropped else None

    def feed(self, raw: str, speech: str) -> list[str]:
        """The next piece of the answer: its raw text (for symbol runs) and its speech text
        (the filter's output for it). Returns the units to speak now, in order."""
        if self._ended:
            return []
        if not self.guard:
            return self._release_all(self.segmenter.feed(speech))
        out: list[str] = []
        if self._symbol_run(raw):
            self._feed_speech(speech, out)
            if not self._ended:
                self.dropped = True  # the symbols: not spoken, and not kept either
                self._stop(REPETITION, out, keep_whole=True)
            return out
        self._feed_speech(speech, out)
        return out

    def finish(self, speech: str = "") -> list[str]:
        """The answer ended by itself: `speech` is the filter's flush; everything left is spoken."""
        if self._ended:
            return []
        if not self.guard:
            return self._release_all(self.segmenter.feed(speech) + self.segmenter.flush())
        out: list[str] = []
        self._feed_speech(speech, out)
        if self._ended:
            return out
        self.words.feed("", final=True)
        self._take(self.segmenter.flush(), out, final=True)
        if not self._ended:
            out.extend(self._release_held())
        if self.stopped == MAX_SPEECH and not self.dropped:
            self.stopped = None  # the budget was reached by the answer's last words: not cut
        self._ended = True
        return out

    def cut(self, speech: str = "") -> list[str]:
        """A hard limit ended the answer (tokens): what is left is spoken up to its last whole
        sentence (without the guard: all of it, as before)."""
        if self._ended:
            self.dropped = self.dropped or any(char.isalnum() for char in speech)
            return []
        if not self.guard:
            out = self.finish(speech)
            self._ended = True
            return out
        out = []
        self._feed_speech(speech, out)
        if not self._ended:
            self.words.feed("", final=True)
            self._stop(None, out, keep_whole=True)
        return out

    # --- internals --------------------------------------------------------------------------

    def _release_all(self, units: list[str]) -> list[str]:
        """Without the guard: every unit is spoken; only the budget applies."""
        out: list[str] = []
        for unit in units:
            if self._ended:
                self.dropped = True
                continue
            self._speak(unit, out)
            if self.max_speech_s and self.spoken_s >= self.max_speech_s and ends_sentence(unit):
                self.stopped = MAX_SPEECH
                self._ended = True
                self.dropped = self.dropped or bool(self.segmenter.flush())
        return out

    def _symbol_run(self, raw: str) -> bool:
        for char in raw:
            if char.isalnum():
                self._symbols = 0
            elif is_symbol(char):
                self._symbols += 1
                if self._symbols >= SYMBOL_RUN:
                    return True
        return False

    def _feed_speech(self, speech: str, out: list[str]) -> None:
        if not speech:
            return
        start = self._base + len(self._text)
        self._text += speech
        self.words.feed(speech)
        loop_at = self.words.loop_at
        if loop_at is None:
            self._take(self.segmenter.feed(speech), out)
            return
        # A loop: the text before it goes on as usual, then the answer ends before it.
        self.dropped = True
        self._take(self.segmenter.feed(speech[: max(0, loop_at - start)]), out)
        if not self._ended:
            self._stop(REPETITION, out, keep_whole=True, limit=loop_at)

    def _locate(self, unit: str) -> tuple[int, int, int]:
        """(end offset, first token, end token) of the next unit in the text. The text up to
        it is dropped: units come in order, so it is never searched again."""
        found = self._text.find(unit)
        at = max(found, 0)  # not found cannot happen (units are stripped slices of the text)
        self._text = self._text[at + len(unit) :]
        start = self._base + at
        end = start + len(unit)
        self._base = end
        a, b = self.words.span(start, end)
        return end, a, b

    def _is_repeat(self, a: int, b: int) -> bool:
        """Does the unit with tokens [a, b) repeat this answer?"""
        tokens = tuple(self.words.tokens[a:b])
        if len(tokens) >= 3 and tokens in self._unit_words:
            return True
        self._unit_words.add(tokens)
        repeated, inner = self.words.repeats_in(a + 2, b)  # trigrams inside the unit
        if repeated >= UNIT_REPEAT_MIN and repeated >= UNIT_REPEAT_SHARE * inner:
            return True
        repeated, total = self.words.repeats_in(0, b)  # the answer up to this unit
        return total >= SHARE_MIN_TRIGRAMS and repeated > MAX_REPEAT_SHARE * total

    def _take(self, units: Iterable[str], out: list[str], *, final: bool = False) -> None:
        for unit in units:
            if self._ended:
                self.dropped = True
                continue
            end, a, b = self._locate(unit)
            if self._is_repeat(a, b):
                self.dropped = True
                self._stop(REPETITION, out, keep_whole=False)
                continue
            first = not self.spoken and not self._held
            held_chars = sum(len(held[0]) for held in self._held) + len(unit)
            if not first and not final and unit[-1] in _CLAUSE_END and held_chars <= MAX_HELD_CHARS:
                self._held.append((unit, end, a, b))
                continue
            out.extend(self._release_held())
            self._speak(unit, out)
            if self.max_speech_s and self.spoken_s >= self.max_speech_s and ends_sentence(unit):
                self._stop(MAX_SPEECH, out, keep_whole=False)

    def _release_held(self) -> list[str]:
        out: list[str] = []
        for unit, *_ in self._held:
            self._speak(unit, out)
        self._held.clear()
        return out

    def _speak(self, unit: str, out: list[str]) -> None:
        self.spoken.append(unit)
        self.spoken_s += speech_seconds(unit)
        out.append(unit)

    def _stop(
        self, reason: str | None, out: list[str], *, keep_whole: bool, limit: int | None = None
    ) -> None:
        """End the answer. `keep_whole`: the held units and the segmenter's rest are spoken up
        to their last whole sentence (before `limit`, where a loop begins); else all dropped."""
        self.stopped = reason
        self._ended = True
        candidates = self._held
        self._held = []
        candidates += [(unit, *self._locate(unit)) for unit in self.segmenter.flush()]
        if limit is not None:
            within = [held for held in candidates if held[1] <= limit]
            self.dropped = self.dropped or len(within) < len(candidates)
            candidates = within
        keep: list[str] = []
        if keep_whole:
            for unit, _, a, b in candidates:
                if self._is_repeat(a, b):
                    break
                keep.append(unit)
            while keep and not ends_sentence(keep[-1]):
                keep.pop()
        if len(keep) < len(candidates):
            self.dropped = True
        for unit in keep:
            self._speak(unit, out)
