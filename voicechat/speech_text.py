"""LLM text -> speakable text, streaming: markdown, code, URLs and emoji become plain speech.

``SpeechTextFilter().feed(delta)`` returns the text that is now certain; ``flush()`` the rest.
The same input gives the same output however it is split into deltas.

What it does:

* Fenced code blocks (```` ``` ```` or ``~~~``) are dropped, fences included; inline code keeps
  its text without backticks.
* Line-start markers go: headings ``#``, bullets ``- * +``, ordered ``1.``/``1)``, quotes ``>``;
  horizontal rules and table separator lines are dropped; table pipes become commas.
* Emphasis markers ``*``, ``**``, ``~~`` and ``_``/``__`` at word edges go (``snake_case`` stays).
* ``[text](url)`` reads as its text, ``![alt](url)`` as its alt text, and bare or ``<...>`` URLs
  as their host name (``https://docs.python.org/3/x`` -> ``docs.python.org``), so speech names
  the site instead of spelling a path. Email addresses stay.
* Emoji and pictographs go; every other script (Hangul, CJK, accents, …, —) passes unchanged.

Holdback (why output can lag input): only where a construct may be incomplete — the start of a
line until its marker is decided, an unclosed ``[``/``<`` (until it closes, the line ends or 300
characters pass), a last word that may be a URL (``h``, ``ww``, ``https://x``), and a trailing
run of ``! _ ~ * ``` whose meaning depends on the next character. Plain prose passes through
with no delay. Only the undecided tail is kept, so the cost is linear in the input.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

_MAX_HOLD = 300  # an unclosed [ or < longer than this is plain text after all
_URL_PREFIXES = ("http://", "https://", "www.")

_FENCE = re.compile(r"[ \t]*(```|~~~)")
_HEADING = re.compile(r"[ \t]*#{1,6}[ \t]+")
_LIST = re.compile(r"[ \t]*(?:[-*+]|\d{1,3}[.)])[ \t]+")
_QUOTE = re.compile(r"[ \t]*(?:>[ \t]?)+")
_TABLE_START = re.compile(r"[ \t]*\|[ \t]*")
_RULE_LINE = re.compile(
    r"[ \t]*(?:(?:[-*_][ \t]*){3,}|\|?[ \t]*:?-+:?[ \t]*(?:\|[ \t]*:?-+:?[ \t]*)*\|?)[ \t]*"
)
# A line start that may still become a marker once more characters arrive.
_MAYBE_MARKER = re.compile(
    r"[ \t]*(?:`{1,2}|~{1,2}|#{1,6}|[-*+_]|\d{1,3}[.)]?|[-*_ \t|:]*|>[ \t>]*)"
)

_IMAGE_OR_LINK = re.compile(r"!?\[([^\[\]\n]*)\]\(([^)\n]*)\)")
_AUTOLINK = re.compile(r"<((?:https?://|www\.)[^>\s]+)>")
_HTML_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)
_HTML_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9]*(?:\s[^<>]*)?/?>")
_URL_OPENERS = "(<>[\"'*_`~"
# A URL starts at a word start and ends before whitespace; trailing punctuation is not part of it.
# "\x00" marks the end of an unfinished piece of a line: there the word may go on.
_BARE_URL = re.compile(
    r"(?<![^\s(<>\[\"'_*`~])(?:https?://|www\.)[^\s<>()\[\]\x00*`]+?"
    r"(?=[.,!?;:'\")\]*`~_]*(?:\s|\Z))"
)
_EMOJI = re.compile(
    "[\U0001f000-\U0001faff\U0001f1e6-\U0001f1ff\u2600-\u27bf\u2b00-\u2bff"
    "\u2300-\u23ff\ufe0e\ufe0f\u200d\u20e3\U000e0020-\U000e007f]"
)
_PIPES = re.compile(r"\|[ \t]*")
_LAST_PIPE = re.compile(r"\|[ \t]*$")
_TRAILING_PIPES = re.compile(r"[ \t|*`_~!]*$")


def _host(url: str) -> str:
    """The site a URL names, without `www.` (what a person would say)."""
    if url.startswith("www."):
        url = "http://" + url
    try:
        host = urlsplit(url).hostname or url
    except ValueError:  # "http://[" and other malformed hosts: say nothing of it
        return ""
    return host.removeprefix("www.")


def _edge_underscores(text: str, before: str) -> str:
    """Drop `_` at word edges (emphasis), keep it between letters or digits (snake_case)."""
    if "_" not in text:
        return text
    out = []
    for index, char in enumerate(text):
        if char == "_":
            prev = text[index - 1] if index else before
            nxt = text[index + 1] if index + 1 < len(text) else ""
            if not (prev.isalnum() and nxt.isalnum()):
                continue
        out.append(char)
    return "".join(out)


def _may_hold_url(word: str, starts_word: bool) -> bool:
    """Does this last, unfinished word hold a URL, or the start of one, where _BARE_URL would
    look for one (at the word start, or after an opening bracket, quote or emphasis mark)?"""
    for start in range(len(word)):
        if (start == 0 and not starts_word) or (start > 0 and word[start - 1] not in _URL_OPENERS):
            continue
        rest = word[start:]
        if any(rest.startswith(p) or p.startswith(rest) for p in _URL_PREFIXES):
            return True
    return False


def _inline(text: str, before: str, *, word_ends: bool) -> str:
    """Speakable form of a piece of one line whose constructs are all complete.

    `before` is the character just before the piece on its line ("" at the line start).
    """
    mid_word = bool(before) and not before.isspace() and before not in _URL_OPENERS
    if not word_ends:
        text += "\x00"  # the last word goes on in the next piece
    text = _IMAGE_OR_LINK.sub(lambda m: m.group(1), text)
    text = _AUTOLINK.sub(lambda m: _host(m.group(1)), text)
    text = _HTML_BREAK.sub(" ", text)
    text = _HTML_TAG.sub("", text)
    if mid_word:  # "x" + "http://...": a guard stops a URL from starting at the piece's start
        text = _BARE_URL.sub(lambda m: _host(m.group(0)), "\x01" + text)[1:]
    else:
        text = _BARE_URL.sub(lambda m: _host(m.group(0)), text)
    text = _edge_underscores(text.removesuffix("\x00"), before)
    text = text.replace("`", "").replace("*", "").replace("~~", "")
    return _EMOJI.sub("", text)


class SpeechTextFilter:
    """Streaming LLM-text -> speakable-text converter (pure, synchronous, no I/O)."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._pending = ""  # text not yet decided
        self._line_start = True  # `_pending` begins at the start of a line
        self._fence: str | None = None  # inside a code block opened by this fence
        self._table_row = False  # the current line is a table row
        self._last = ""  # the last character emitted on this line (for word edges)

    def feed(self, delta: str) -> str:
        self._pending += delta
        return self._process(final=False)

    def flush(self) -> str:
        out = self._process(final=True)
        self._reset()  # ready for the next answer
        return out

    # --- internals --------------------------------------------------------------------------

    def _process(self, *, final: bool) -> str:
        out: list[str] = []
        while self._pending:
            if self._fence is not None:
                if not self._skip_code_line(final):
                    break
            elif self._line_start:
                if not self._strip_line_marker(final):
                    break
            elif not self._emit_body(out, final):
                break
        return "".join(out)

    def _skip_code_line(self, final: bool) -> bool:
        """Drop one line of a code block; False when the line is not complete yet."""
        newline = self._pending.find("\n")
        if newline < 0:
            if final:
                self._pending = ""
            return False
        line = self._pending[:newline]
        self._pending = self._pending[newline + 1 :]
        if line.strip().startswith(self._fence or ""):
            self._fence = None
            self._line_start = True
        return True

    def _strip_line_marker(self, final: bool) -> bool:
        """Decide the start of a line; False when more text is needed to decide."""
        pending = self._pending
        newline = pending.find("\n")
        line = pending if newline < 0 else pending[:newline]
        complete = newline >= 0 or final
        if not complete and _MAYBE_MARKER.fullmatch(line):
            return False  # "#", "1", "``", "--", "|" ... could still become a marker
        fence = _FENCE.match(line)
        if fence:
            if not complete:
                return False  # wait for the whole fence line (language tag)
            self._fence = fence.group(1)
            self._pending = pending[newline + 1 :] if newline >= 0 else ""
            return True
        if complete and line.strip() and _RULE_LINE.fullmatch(line):
            self._pending = pending[newline + 1 :] if newline >= 0 else ""
            return True  # a horizontal rule or a table separator: nothing to say
        marker = _HEADING.match(line) or _LIST.match(line) or _QUOTE.match(line)
        table = _TABLE_START.match(line)
        cut = marker.end() if marker else table.end() if table else len(line) - len(line.lstrip())
        if not complete and not line[cut:].strip():
            return False  # more spaces may follow the marker: they all go with it
        self._pending = pending[cut:]
        self._table_row = table is not None
        self._line_start = False
        self._last = ""
        return True

    def _hold_from(self, segment: str) -> int:
        """Where the undecided tail of an unfinished line begins (len(segment): none)."""
        hold = len(segment)
        bracket = segment.find("[", max(0, len(segment) - _MAX_HOLD))
        while bracket >= 0:
            close = segment.find("]", bracket)
            unresolved = (
                close < 0
                or close == len(segment) - 1
                or (segment[close + 1] == "(" and segment.find(")", close) < 0)
            )
            if unresolved:  # may still become a link: wait for it
                hold = bracket - 1 if bracket > 0 and segment[bracket - 1] == "!" else bracket
                break
            bracket = segment.find("[", bracket + 1)
        angle = segment.rfind("<")
        after_angle = segment[angle + 1 : angle + 2]
        if (
            angle >= 0
            and (not after_angle or after_angle.isalpha() or after_angle == "/")
            and segment.find(">", angle) < 0
            and len(segment) - angle <= _MAX_HOLD
        ):
            hold = min(hold, angle)  # maybe a tag or an autolink; "x < 5" is not held
        space = max(segment.rfind(" "), segment.rfind("\t"))
        starts_word = space >= 0 or not self._last.strip() or self._last in _URL_OPENERS
        if _may_hold_url(segment[space + 1 :], starts_word):
            hold = min(hold, space + 1)
        edge = len(segment)
        while edge > 0 and segment[edge - 1] in "!_~*`":
            edge -= 1  # "![", "__x", "~~", "~*~": the next character decides
        hold = min(hold, edge)
        if self._table_row:
            trailing = _TRAILING_PIPES.search(segment)
            if trailing:
                hold = min(hold, trailing.start())  # spaces and pipes around a cell
        if 0 < hold < len(segment) and not segment[hold - 1].isspace():
            start = max(segment.rfind(" ", 0, hold), segment.rfind("\t", 0, hold))
            end = hold
            while end < len(segment) and not segment[end].isspace():
                end += 1
            if _may_hold_url(segment[start + 1 : end], start >= 0 or starts_word):
                hold = start + 1  # never split a word that holds a URL
        for pattern in (_IMAGE_OR_LINK, _AUTOLINK, _HTML_TAG):
            for construct in pattern.finditer(segment, 0, hold + _MAX_HOLD):
                if construct.start() < hold < construct.end():
                    hold = construct.start()  # never split a complete link or tag
        return hold

    def _emit_body(self, out: list[str], final: bool) -> bool:
        """Emit the decided part of the current line; False when the rest must wait."""
        newline = self._pending.find("\n")
        if newline >= 0 or final:
            segment = self._pending if newline < 0 else self._pending[:newline]
            self._pending = "" if newline < 0 else self._pending[newline + 1 :]
            out.append(self._speakable(segment, line_end=True) + ("\n" if newline >= 0 else ""))
            self._line_start = True
            return True
        hold = self._hold_from(self._pending)
        if hold > 0:
            word_ends = self._pending[hold : hold + 1].isspace()  # held part starts with a space
            out.append(self._speakable(self._pending[:hold], line_end=False, word_ends=word_ends))
            self._pending = self._pending[hold:]
        return False

    def _speakable(self, segment: str, *, line_end: bool, word_ends: bool = True) -> str:
        text = _inline(segment, self._last, word_ends=line_end or word_ends)
        if self._table_row:
            if line_end:
                text = _LAST_PIPE.sub("", text)  # the row's closing pipe says nothing
            text = _PIPES.sub(", ", text)
        if segment:
            self._last = segment[-1]
        return text


def to_speech_text(text: str) -> str:
    """The whole text at once: the same as feed(text) + flush() on a fresh filter."""
    speech = SpeechTextFilter()
    return speech.feed(text) + speech.flush()
