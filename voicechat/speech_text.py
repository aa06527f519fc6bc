"""LLM text -> speakable text, streaming: markdown, code, URLs and emoji become plain speech.

``SpeechTextFilter().feed(delta)`` returns the speakable text that is now certain; ``flush()``
returns the rest at the end of an answer and resets the filter. However the input is split into
deltas, the output is the same (``to_speech_text(text) == feed(text) + flush()``).

What it does
------------
* Fenced code blocks (a line starting with ```` ``` ```` or ``~~~``, indented or not, language
  tag optional) are dropped, fences included, up to a closing fence of the same character at least
  as long; an unterminated block drops to the end. A line that starts with three backticks always
  opens a block (CommonMark's "no backtick in the info string" exception is not made).
* Inline code keeps its content without the backticks; inside it ``* _ ~ [ < \\`` mean nothing.
  Only URLs are still shortened and emoji still removed there. It ends at the end of its line.
* Line-start markers go (indentation before them too): headings ``#``..``######``, bullets
  ``- * +``, ordered ``1.``/``1)`` (1-3 digits), blockquotes ``>`` (nested ones as well; what
  follows is read as a new line start, so ``> - x`` -> ``x``). Horizontal rules (three or more of
  the same ``- * _``, spaces allowed) and table separator lines (only ``| - :`` with at least one
  ``|`` and one ``-``) are dropped with their newline. A line starting with ``|`` is a table row:
  its cells are trimmed and joined with ``", "`` (``| a | b |`` -> ``a, b``). Indentation of other
  lines is kept. A task box after a bullet goes too (``- [x] done`` -> ``done``); emoji right after
  a marker go with their spaces (``## 🚀 Start`` -> ``Start``).
* Emphasis: ``*`` and ``~~`` runs are deleted wherever they are (they are not paired, so an
  unclosed marker never holds text back). A ``*`` run with whitespace (or a line edge) on both
  sides is no emphasis and stays (``2 * 3``, ``a ** b``); it is not turned into "times". A single
  ``~`` stays (``~5 km``). A ``_`` run is deleted at a word edge and kept as it is between two
  letters or digits (``snake_case`` and ``1_000`` stay, ``_x_`` and ``__x__`` -> x; hence a bare
  ``__init__`` reads as ``init``; in backticks it stays).
* ``[text](url)`` reads as its text and ``![alt](url)`` as its alt text. Bare URLs
  (``http://``, ``https://``, ``www.``, any case, at a word start) and autolinks ``<https://...>``
  read as their host without ``www.`` (``https://docs.python.org/3/x?y=1`` -> ``docs.python.org``).
  A URL is ASCII and ends at whitespace, at a non-ASCII character and at one of ``<>"`*[]{}|\\^``;
  trailing ``. , ! ? ; : '`` and an unbalanced ``)`` are not part of it and are kept. Email
  addresses are no URLs and stay as they are.
* HTML tags (a fixed list of lowercase names: ``<br>``, ``<b>``, ``</p>``, ``<a href="x">`` ...)
  go; ``<br>`` and block tags become a newline, ``<td>``/``<th>`` a space. Anything else with ``<``
  stays (``x < 5``, ``List<String>``, ``i <3 u``).
* A backslash before ASCII punctuation is a markdown escape: ``\\*`` -> ``*``.
* Emoji and pictographs go (emoji blocks, dingbats, variation selectors, ZWJ, skin tones, keycaps,
  regional indicators, tag characters), and so do symbols with no word of their own, which a
  voice would read by their Unicode names: technical symbols, enclosed alphanumerics (``①``),
  box drawing and geometric shapes, braille, CJK radicals and strokes, enclosed CJK and CJK
  compatibility symbols (``㊗ ㎏``), hexagrams, musical symbols, SignWriting. Every script and
  all other punctuation and symbols (Hangul, CJK, accents, ``… — “ ” ° © € ≤``, arrows) pass
  unchanged; so does everything not named here, and newlines are kept one for one. (Which
  characters each voice can say is the TTS router's business: tts/router.py.)

Design
------
One left-to-right scanner over the undecided tail of the input. Every decision depends only on the
text (never on where a delta ended): when a rule needs characters that have not arrived yet, the
scanner stops there and keeps the tail from that point for the next ``feed``; ``flush`` decides
the same rules with "end of text" instead. Constructs whose end is far away keep their state in
fields instead of re-reading the text: a URL's host and its trailing punctuation, an emphasis run,
a link's converted text, the cell spacing of a table row, the scan position of a line that may be
a rule, how far the scan of a possible HTML tag got (``_TagScan``). Where a decision needs a long
look ahead (a possible rule line, a possible tag), it is defined on at most 300 characters, so it
never depends on how much has arrived yet, and its scan resumes where it stopped: a construct
that arrives one character at a time is read once, not once per character. The kept tail is
therefore at most about 300 characters, a feed re-reads at most a few characters of it (a
possible URL prefix, a line marker), and the cost is linear in the input whatever its shape
(about 0.3 µs per character for prose in 4-character deltas; hostile input, such as long runs of
one mark, is measured by ``scripts/bench_segmenter.py --worst``).

Holdback (why output can lag input) happens only where a construct may be incomplete:

* the start of a line, until its first character that cannot be a marker (``- ``, ``1.``,
  ``##``); a line made only of ``- * _ | :`` and spaces until it ends or reaches 300 characters
  (it may be a rule);
* a word that may start a URL (``h``, ``ht``, ``www``, ``https:/``: at most 8 characters), then a
  URL until its host is complete (the rest of it is dropped as it comes);
* a run of ``* _ ~ ` !`` until the next character (it decides edge, code toggle or ``![``);
* ``[`` until ``](`` (then the link text is spoken at once and the destination is dropped up to
  its balanced ``)`` or the line end), a newline or 300 characters (then the ``[`` and the text
  after it pass through literally);
* ``<`` until it is known to be a tag or autolink or not (at most 300 characters);
* in a table row, spaces until the next character shows whether a ``|`` follows them.

Plain prose passes through at once (a word starting with ``h``/``w`` waits for up to 8 characters).
"""

from __future__ import annotations

import re
import string
import sys

_MAX_HOLD = 300  # an unclosed [ or < longer than this is plain text after all

# Line modes.
_LINE = 0  # at a line start: markers not decided yet
_BODY = 1  # in the text of a line
_CODE_LINE = 2  # at the start of a line inside a code block: may be the closing fence
_SKIP = 3  # dropping the rest of a fence line or a code line (then _CODE_LINE)
_DROP = 4  # dropping the rest of a long rule line (then _LINE)

# Link states.
_NO_LINK = 0
_LINK_TEXT = 1  # after "[": the converted text is held in `_link_out`

# Emoji, and symbols that have no word of their own: a voice would read them by their Unicode
# name or code ("symbol two six zero five", "Japanese congratulation button", "braille dots one
# two three"), up to 45 phonemes a character (scripts/bench_speech_symbols.py).
_EMOJI_CHARS = (
    "\U0001f000-\U0001fbff"  # emoticons, pictographs, flags, skin tones, legacy computing, ...
    "\u2600-\u27bf"  # miscellaneous symbols and dingbats (☀ ✂ ✅ ❤)
    "\u2b00-\u2bff"  # symbols and arrows with emoji forms (⬆ ⭐ ⭕)
    "\u2300-\u23ff"  # technical symbols (⌘ ⏩ ⌚)
    "\u2400-\u24ff"  # control pictures, OCR, enclosed alphanumerics (① ⓐ)
    "\u2500-\u25ff"  # box drawing, block elements, geometric shapes (─ █ ■ ▶)
    "\u2800-\u28ff"  # braille patterns
    "\u2e80-\u2fff"  # CJK and Kangxi radicals, ideographic description characters
    "\u31c0-\u31ef"  # CJK strokes
    "\u3200-\u33ff"  # enclosed CJK letters and months (㊗ ㈱), CJK compatibility (㎏ ㍿)
    "\u4dc0-\u4dff"  # Yijing hexagrams
    "\ua490-\ua4cf"  # Yi radicals
    "\U0001cf00-\U0001d24f"  # musical symbols (Znamenny, Byzantine, Western, Greek)
    "\U0001d300-\U0001d35f"  # Tai Xuan Jing symbols
    "\U0001d800-\U0001daaf"  # SignWriting
    "\ufe0e\ufe0f"  # variation selectors (text / emoji presentation)
    "\u200d"  # zero-width joiner of emoji sequences
    "\u20e3"  # combining enclosing keycap
    "\U000e0020-\U000e007f"  # tag characters of subdivision flags
)
_EMOJI = re.compile(f"[{_EMOJI_CHARS}]")

# A URL may start at h/H/w/W unless a letter, digit or URL character comes right before it
# ("ahttp://", "me@www.x"). The regular expressions only find candidates; `_prev` decides.
_NO_URL_AFTER = frozenset("/.@-+%&=?#$\\")
_URL_CANDIDATE = r"(?<![A-Za-z0-9/.@\-+%&=?#$\\])[hHwW]"
_SPECIAL = re.compile(rf"[\n*_~`!\[\]<\\{_EMOJI_CHARS}]|{_URL_CANDIDATE}")
_SPECIAL_TABLE = re.compile(rf"[\s*_~`!\[\]<\\|{_EMOJI_CHARS}]|{_URL_CANDIDATE}")
_SPECIAL_CODE = re.compile(rf"[\n`{_EMOJI_CHARS}]|{_URL_CANDIDATE}")
_SPECIAL_CODE_TABLE = re.compile(rf"[\s`|{_EMOJI_CHARS}]|{_URL_CANDIDATE}")

_URL_PREFIXES = ("https://", "http://", "www.")
_URL_STOP = frozenset('<>"`*[]{}|\\^')  # never part of a URL
_URL_PUNCT = frozenset(".,!?;:'")  # part of a URL only when more URL follows
_NOT_HOST = re.compile(r"[^A-Za-z0-9.-]")
_ESCAPABLE = frozenset(string.punctuation)

_RULE_CHARS = re.compile(r"[-*_|: \t\r]*")  # what a rule or table separator line is made of
_INDENT = re.compile(r"[ \t]*")
_HASHES = re.compile(r"#{1,7}")
_DIGITS = re.compile(r"[0-9]{1,4}")
_FENCE_RUN = {"`": re.compile(r"`{1,300}"), "~": re.compile(r"~{1,300}")}
# What a closing fence line is made of; in a block opened inside a quote, its ">" markers too.
_FENCE_LINE_CHARS = {
    ("`", False): re.compile(r"[ \t\r`]*"),
    ("~", False): re.compile(r"[ \t\r~]*"),
    ("`", True): re.compile(r"[ \t\r>`]*"),
    ("~", True): re.compile(r"[ \t\r>~]*"),
}
_CLOSING_FENCE = {
    False: re.compile(r"[ \t\r]*(`+|~+)[ \t\r]*"),
    True: re.compile(r"[ \t\r>]*(`+|~+)[ \t\r]*"),
}
_DEST_STOP = re.compile(r"[()\n]")

_NEWLINE_TAGS = frozenset(
    "br hr p div li ul ol tr table thead tbody blockquote pre details summary "
    "h1 h2 h3 h4 h5 h6".split()
)
_SPACE_TAGS = frozenset(("td", "th"))
_TAGS = (
    _NEWLINE_TAGS
    | _SPACE_TAGS
    | frozenset(
        "a abbr b big center cite code del em font i img ins kbd mark q s small span strike strong "
        "sub sup tt u var".split()
    )
)


def _run_end(pattern: re.Pattern[str], text: str, pos: int, endpos: int = sys.maxsize) -> int:
    """Where the run of `pattern` at `pos` ends (`pos` when there is none)."""
    found = pattern.match(text, pos, endpos)
    return found.end() if found else pos


def _is_space(char: str) -> bool:
    """Whitespace or a line edge ("")."""
    return not char or char.isspace()


def _is_rule(line: str) -> bool:
    """A horizontal rule or a table separator line: nothing to say."""
    marks = line.replace(" ", "").replace("\t", "").replace("\r", "")
    if len(marks) >= 3 and marks[0] in "-*_" and marks == marks[0] * len(marks):
        return True
    return "|" in marks and "-" in marks and not marks.strip("|-:")


def _task_box(text: str, pos: int, final: bool) -> int | None:
    """Length of the task-list box ("[ ]", "[x]") at `pos` (0: none); None if not known yet."""
    box = text[pos : pos + 4]
    for index, allowed in enumerate(("[", " xX", "]", " \t\r\n")):
        if index == len(box):
            return (3 if index == 3 else 0) if final else None
        if box[index] not in allowed:
            return 0
    return 3


# The HTML tag scanner's states (see _scan_tag).
_TAG_START = 0  # after "<"
_TAG_SLASH = 1  # after "</"
_TAG_NAME_RUN = 2  # in the tag name
_TAG_GAP = 3  # after the name or an attribute: whitespace, then ">", "/>" or an attribute
_TAG_ATTR = 4  # in an attribute's name
_TAG_EQUALS = 5  # after an attribute's name: whitespace, then "="
_TAG_VALUE = 6  # after "=": whitespace, then the value
_TAG_QUOTED = 7  # in a quoted value (the quote is in `_TagScan.quote`)
_TAG_UNQUOTED = 8  # in an unquoted value
_NO_TAG = (0, "")
_TAG_NAME_CHARS = re.compile(r"[a-z0-9]*")
_ATTR = re.compile(r"""[A-Za-z_:][-\w:.]*[ \t]*=[ \t]*(?:"[^"\n]*"|'[^'\n]*'|[^\s"'=<>`]+)""")
_ATTR_NAME_START = re.compile(r"[A-Za-z_:]")
_ATTR_NAME_CHARS = re.compile(r"[-\w:.]*")
_UNQUOTED_VALUE = re.compile(r"""[^\s"'=<>`]*""")
_QUOTED_END = {'"': re.compile('["\n]'), "'": re.compile("['\n]")}


class _TagScan:
    """How far the scan of the "<" at input position `at` got: it resumes there, so a tag that
    arrives one character at a time is read once, not once per character."""

    __slots__ = ("at", "gap", "index", "name", "name_at", "quote", "state")

    def __init__(self, at: int = -1) -> None:
        self.at = at  # input position of the "<" (-1: none)
        self.state = _TAG_START
        self.index = 1  # where the scan resumes, from the "<"
        self.name = ""
        self.name_at = 0
        self.gap = False  # whitespace since the name or the last attribute
        self.quote = ""


def _scan_tag(buf: str, pos: int, final: bool, scan: _TagScan) -> tuple[int, str] | None:
    """(length, name) of the HTML tag at ``buf[pos]`` (a "<"); (0, "") when it is none, None when
    the text ends before that is known (`scan` then remembers where to resume). Only _MAX_HOLD
    characters count: a longer "tag" is plain text, so the answer never depends on how much has
    arrived.

    A tag is ``<`` or ``</``, a name of the fixed list (lowercase ASCII letters and digits), then
    attributes, each after whitespace (``name = "value"``, ``'value'`` or ``value``; a quoted
    value does not span lines), then optional whitespace and ``>`` or ``/>``."""
    end = len(buf)
    if end - pos >= _MAX_HOLD:
        end, final = pos + _MAX_HOLD, True
    state, index, gap = scan.state, pos + scan.index, scan.gap
    while index < end:
        char = buf[index]
        if state == _TAG_START or state == _TAG_SLASH:
            if char == "/" and state == _TAG_START:
                state = _TAG_SLASH
            elif "a" <= char <= "z":
                state, scan.name_at = _TAG_NAME_RUN, index - pos
            else:
                return _NO_TAG
            index += 1
        elif state == _TAG_NAME_RUN:
            index = _TAG_NAME_CHARS.match(buf, index, end).end()
            if index == end:
                break  # the name may go on
            scan.name = buf[pos + scan.name_at : index]
            if scan.name not in _TAGS:
                return _NO_TAG
            state, gap = _TAG_GAP, False
        elif state == _TAG_GAP:
            if char in " \t":
                gap = True
                index = _INDENT.match(buf, index, end).end()
            elif char == ">":
                return (index + 1 - pos, scan.name)
            elif char == "/":
                if index + 1 == end:
                    break
                return (index + 2 - pos, scan.name) if buf[index + 1] == ">" else _NO_TAG
            elif gap and _ATTR_NAME_START.match(char):
                # An attribute (it must follow whitespace): a whole one at once if it is there,
                # else one step at a time, resumed by the next feed.
                whole = _ATTR.match(buf, index, end)
                if whole and whole.end() < end:
                    gap, index = False, whole.end()
                else:
                    state = _TAG_ATTR
                    index += 1
            else:
                return _NO_TAG  # "<b and c>": bare words are not attributes (and not HTML)
        elif state == _TAG_ATTR:
            index = _ATTR_NAME_CHARS.match(buf, index, end).end()
            if index < end:
                state = _TAG_EQUALS
        elif state == _TAG_EQUALS or state == _TAG_VALUE:
            if char in " \t":
                index += 1
            elif state == _TAG_EQUALS:
                if char != "=":
                    return _NO_TAG
                state = _TAG_VALUE
                index += 1
            elif char == '"' or char == "'":
                state, scan.quote = _TAG_QUOTED, char
                index += 1
            elif _UNQUOTED_VALUE.match(char).end():
                state = _TAG_UNQUOTED
                index += 1
            else:
                return _NO_TAG
        elif state == _TAG_QUOTED:
            found = _QUOTED_END[scan.quote].search(buf, index, end)
            if found is None:
                index = end
                break
            if buf[found.start()] == "\n":
                return _NO_TAG
            state, gap, index = _TAG_GAP, False, found.end()
        else:  # _TAG_UNQUOTED
            index = _UNQUOTED_VALUE.match(buf, index, end).end()
            if index < end:
                state, gap = _TAG_GAP, False
    if final:
        return _NO_TAG
    scan.state, scan.index, scan.gap = state, index - pos, gap
    return None


class SpeechTextFilter:
    """Streaming LLM-text -> speakable-text converter (pure, synchronous, no I/O)."""

    def __init__(self) -> None:
        self._reset()

    def feed(self, delta: str) -> str:
        """Take the next delta; return the speakable text that no later delta can change."""
        self._buf += delta
        return self._process(final=False)

    def flush(self) -> str:
        """End of the answer: decide everything held back, and reset for the next answer."""
        out = self._process(final=True)
        self._reset()
        return out

    # --- state --------------------------------------------------------------------------------

    def _reset(self) -> None:
        self._buf = ""  # the undecided tail of the input
        self._base = 0  # how many input characters came before `_buf` (for the 300 limit)
        self._out: list[str] = []
        self._final = False  # the text ends where `_buf` ends
        self._need = False  # the scanner stopped: it needs more text
        self._mode = _LINE
        self._scanned = 0  # line start: characters of `_buf` already known to be rule characters
        self._quoted = False  # the line start follows a ">": its text loses its indentation
        self._fence = ""  # the opening fence of the code block we are in
        self._fence_quoted = False  # ... which was opened inside a blockquote
        self._tag = _TagScan()  # the scan of a "<" that may be an HTML tag
        self._reset_line()

    def _reset_line(self) -> None:
        """Body state, valid within one line."""
        self._prev = ""  # the raw character before the current one ("" at the line start)
        self._skip_ws = False  # drop spaces (after a line marker)
        self._code = 0  # inside inline code opened by this many backticks
        self._run = ""  # a held run of * _ ~ ` ! ...
        self._run_len = 0
        self._run_before = ""  # ... and the character before it
        self._bang = False  # the "!" of "![" came right before this "["
        self._link = _NO_LINK
        self._link_prefix = ""  # "[" or "![": said if the link turns out not to be one
        self._link_out: list[str] = []
        self._link_start = 0  # input position of the "["
        self._dest = False  # dropping a link destination "(...)"
        self._dest_depth = 0
        self._url = False  # inside a URL
        self._url_host: list[str] = []  # the authority (host, port, user) so far
        self._url_in_host = False
        self._url_strip_www = False
        self._url_angle = False  # an autolink: its ">" goes too
        self._url_depth = 0  # open "(" in the URL (wikipedia/Foo_(bar))
        self._url_punct: list[str] = []  # punctuation that ends the URL unless more URL follows
        self._table = False  # this line is a table row
        self._row_content = False  # a cell of this row said something
        self._cell_sep = False  # a ", " is owed before the next content
        self._ws_hold: list[str] = []  # spaces that go only if no "|" follows

    # --- driver -------------------------------------------------------------------------------

    def _process(self, *, final: bool) -> str:
        self._final = final
        buf, pos = self._buf, 0
        while pos < len(buf):
            self._need = False
            if self._mode == _BODY:
                pos = self._body(buf, pos)
            elif self._mode == _LINE:
                pos = self._line_start(buf, pos)
            elif self._mode == _CODE_LINE:
                pos = self._code_line_start(buf, pos)
            else:
                pos = self._skip_line(buf, pos, _CODE_LINE if self._mode == _SKIP else _LINE)
            if self._need:
                break
        self._base += pos
        self._buf = buf[pos:]
        if final:
            self._end_line()
        out = "".join(self._out)
        self._out = []
        return out

    def _wait(self, pos: int) -> int:
        """Stop here until more text arrives."""
        self._need = True
        return pos

    # --- line starts and code blocks ------------------------------------------------------------

    def _line_start(self, buf: str, pos: int) -> int:
        """Strip the markers of the line at `pos` (or drop it); return where its text begins."""
        if buf[pos] == "\n":  # a blank line: kept as it is, and the next line is a line start
            self._quoted = False
            self._out.append("\n")
            return pos + 1
        size, limit = len(buf), pos + _MAX_HOLD
        end = _run_end(_RULE_CHARS, buf, pos + self._scanned, limit)
        if end == size < limit and not self._final:
            self._scanned = end - pos  # resume there: no re-scan of a long "-----" line
            return self._wait(pos)
        self._scanned = 0
        # The line ends here, or its first 300 characters could all belong to a rule: decide.
        if (end == size or end == limit or buf[end] == "\n") and _is_rule(buf[pos:end]):
            self._quoted = False
            self._mode = _DROP
            return end
        mark = _run_end(_INDENT, buf, pos)
        text = mark if self._quoted else pos  # where the line's text begins if it has no marker
        char = buf[mark] if mark < size else "\n"

        def need() -> int:
            self._scanned = end - pos
            return self._wait(pos)

        if char in "\r\n":
            return self._start_body(text)  # blank line: kept as it is
        if char == "#":
            stop = _run_end(_HASHES, buf, mark)
            if stop == size and stop - mark <= 6 and not self._final:
                return need()
            after = buf[stop] if stop < size else "\n"
            if stop - mark <= 6 and after in " \t":
                return self._start_body(stop + 1, skip_ws=True)
            if stop - mark <= 6 and after in "\r\n":
                return self._start_body(stop)  # an empty heading
            return self._start_body(text)
        if char == ">":
            self._quoted = True
            return mark + 1  # what follows a quote marker is a line start again
        if char in "`~":
            stop = _run_end(_FENCE_RUN[char], buf, mark)
            if stop == size and not self._final:
                return need()
            if stop - mark >= 3:
                self._fence = buf[mark:stop]
                self._fence_quoted, self._quoted = self._quoted, False
                self._mode = _SKIP  # the info string goes with the fence
                return stop
            return self._start_body(text)
        if char in "-*+" or char in string.digits:
            stop = mark + 1 if char in "-*+" else _run_end(_DIGITS, buf, mark)
            if char in string.digits:
                if stop - mark > 3:
                    return self._start_body(text)  # "2024." is a year, not a list
                if stop == size and not self._final:
                    return need()
                if stop == size or buf[stop] not in ".)":
                    return self._start_body(text)
                stop += 1
            if stop == size and not self._final:
                return need()
            after = buf[stop] if stop < size else "\n"
            if after in " \t":
                box = _task_box(buf, stop + 1, self._final) if char in "-*+" else 0
                if box is None:
                    return need()
                return self._start_body(stop + 1 + box, skip_ws=True)
            if after in "\r\n":
                return self._start_body(stop)  # an empty item
            return self._start_body(text)  # "-x", "*bold*", "1.5"
        if char == "|":
            return self._start_body(mark + 1, skip_ws=True, table=True)
        return self._start_body(text)

    def _start_body(self, pos: int, *, skip_ws: bool = False, table: bool = False) -> int:
        # The body state is already reset: only a line's body changes it, and _end_line resets
        # it when the line ends.
        self._mode = _BODY
        self._quoted = False
        self._skip_ws = skip_ws
        self._table = table
        return pos

    def _code_line_start(self, buf: str, pos: int) -> int:
        """A line inside a code block: the closing fence ends the block, any other line goes."""
        size, limit = len(buf), pos + _MAX_HOLD
        chars = _FENCE_LINE_CHARS[self._fence[0], self._fence_quoted]
        end = _run_end(chars, buf, pos + self._scanned, limit)
        if end == size < limit and not self._final:
            self._scanned = end - pos
            return self._wait(pos)
        self._scanned = 0
        if end == limit or (end < size and buf[end] != "\n"):
            self._mode = _SKIP
            return end
        fence = _CLOSING_FENCE[self._fence_quoted].fullmatch(buf, pos, end)
        run = fence.group(1) if fence else ""
        if run[:1] == self._fence[0] and len(run) >= len(self._fence):
            self._mode = _LINE
            self._fence = ""
        return end + 1 if end < size else end

    def _skip_line(self, buf: str, pos: int, then: int) -> int:
        """Drop the rest of the line; the next one starts in mode `then`."""
        newline = buf.find("\n", pos)
        if newline < 0:
            return len(buf)
        self._mode = then
        return newline + 1

    # --- the text of a line ----------------------------------------------------------------------

    def _body(self, buf: str, pos: int) -> int:
        """Convert the text of the current line from `pos`; return where it stopped."""
        size = len(buf)
        while pos < size:
            end = size
            if self._link == _LINK_TEXT:
                end = self._link_start + _MAX_HOLD - self._base
                if end <= pos:
                    self._link_fallback()  # 300 characters and no "](": not a link
                    end = size
                end = min(end, size)
            if self._url:
                pos = self._url_run(buf, pos, end)
                continue
            if self._dest:
                pos = self._dest_run(buf, pos)
                continue
            char = buf[pos]
            if char == "\n":
                self._end_line()
                self._out.append("\n")
                self._mode = _LINE
                return pos + 1
            if self._skip_ws:
                if char in " \t" or _EMOJI.match(char):  # "## 🚀 Start" -> "Start"
                    pos += 1
                    continue
                self._skip_ws = False
            if self._run:
                if char == self._run:
                    self._run_len += 1
                    self._prev = char
                    pos += 1
                    continue
                self._resolve_run(char)
            if self._code:
                special = _SPECIAL_CODE_TABLE if self._table else _SPECIAL_CODE
            else:
                special = _SPECIAL_TABLE if self._table else _SPECIAL
            found = special.search(buf, pos, end)
            stop = found.start() if found else end
            if stop > pos:
                self._emit(buf[pos:stop])
                self._prev = buf[stop - 1]
                pos = stop
                continue
            pos = self._special(buf, pos, char)
            if self._need:
                return pos
        return pos

    def _special(self, buf: str, pos: int, char: str) -> int:
        """Handle the character at `pos` that may start a construct (one that the `_SPECIAL`
        expressions find)."""
        if char in "*_~`!":
            self._run, self._run_len, self._run_before = char, 1, self._prev
            self._prev = char
            return pos + 1
        if char in "hHwW":
            return self._word_start(buf, pos, char)
        if char == "<":
            return self._angle(buf, pos)
        if char == "[":
            return self._open_link(pos)
        if char == "]":
            return self._close_bracket(buf, pos)
        if char == "|":  # table rows only
            self._ws_hold = []
            self._cell_sep = self._row_content
            self._prev = char
            return pos + 1
        if char.isspace():  # table rows only: trailing spaces of a cell go
            self._ws_hold.append(char)
            self._prev = char
            return pos + 1
        if char == "\\":
            return self._escape(buf, pos)
        self._prev = char  # an emoji: it goes
        return pos + 1

    def _emit(self, text: str) -> None:
        """Say `text` (into the held link text while a "[" is open)."""
        if not text:
            return
        if self._table:
            text = self._table_gap() + text
        (self._link_out if self._link == _LINK_TEXT else self._out).append(text)

    def _table_gap(self) -> str:
        """What goes before new content in a table row: ", " after a "|", else held spaces."""
        gap = ", " if self._cell_sep else "".join(self._ws_hold)
        self._cell_sep = False
        self._ws_hold = []
        self._row_content = True
        return gap

    def _end_line(self) -> None:
        """The line ends (newline or end of text): decide everything that was held."""
        if self._url:
            self._end_url()
        if self._run:
            self._resolve_run("")
        if self._link == _LINK_TEXT:
            self._link_fallback()
        self._reset_line()

    # --- emphasis, code and other runs ------------------------------------------------------------

    def _resolve_run(self, after: str) -> None:
        """A run of one of * _ ~ ` ! ended; `after` is the next character ("" at a line end)."""
        char, count, before = self._run, self._run_len, self._run_before
        self._run = ""
        if char == "*":
            keep = _is_space(before) and _is_space(after)  # 2 * 3: not emphasis
        elif char == "_":
            keep = before.isalnum() and after.isalnum()  # snake_case
        elif char == "~":
            keep = count == 1  # ~5 km
        elif char == "!":
            keep = True
            if after == "[":
                self._bang = True  # the last "!" belongs to the image "!["
                count -= 1
        else:
            keep = False  # backticks: toggle inline code
            if not self._code:
                self._code = count
            elif count == self._code:
                self._code = 0
        if keep:
            self._emit(char * count)

    def _escape(self, buf: str, pos: int) -> int:
        """A backslash: before ASCII punctuation, a markdown escape (say the punctuation)."""
        if pos + 1 == len(buf) and not self._final:
            return self._wait(pos)
        after = buf[pos + 1 : pos + 2]
        if after and after in _ESCAPABLE:
            self._emit(after)
            self._prev = after
            return pos + 2
        self._emit("\\")
        self._prev = "\\"
        return pos + 1

    # --- links ----------------------------------------------------------------------------------

    def _open_link(self, pos: int) -> int:
        if self._link == _LINK_TEXT:
            self._link_fallback()  # "[a [b](c)": only the inner one is a link
        if self._table:
            self._out.append(self._table_gap())
        self._link = _LINK_TEXT
        self._link_prefix = "![" if self._bang else "["
        self._bang = False
        self._link_out = []
        self._link_start = self._base + pos
        self._prev = "["
        return pos + 1

    def _close_bracket(self, buf: str, pos: int) -> int:
        if self._link != _LINK_TEXT:
            self._emit("]")
            self._prev = "]"
            return pos + 1
        if pos + 1 == len(buf) and not self._final:
            return self._wait(pos)
        if buf[pos + 1 : pos + 2] == "(":  # a link: say its text, drop its destination
            text = "".join(self._link_out)
            self._link, self._link_out = _NO_LINK, []
            self._out.append(text)
            self._dest, self._dest_depth = True, 0
            self._prev = "("
            return pos + 2
        self._link_fallback("]")
        self._prev = "]"
        return pos + 1

    def _link_fallback(self, suffix: str = "") -> None:
        """The "[" was no link: say it, and what came after it, literally."""
        self._emit(suffix)
        text = self._link_prefix + "".join(self._link_out)
        self._link, self._link_out = _NO_LINK, []
        self._out.append(text)

    def _dest_run(self, buf: str, pos: int) -> int:
        """Drop a link destination up to its ")" (balanced) or the line end."""
        found = _DEST_STOP.search(buf, pos)
        if not found:
            return len(buf)
        stop = found.start()
        char = buf[stop]
        if char == "\n":
            self._dest = False
            return stop
        if char == "(":
            self._dest_depth += 1
        elif self._dest_depth:
            self._dest_depth -= 1
        else:
            self._dest = False
            self._prev = ")"
        return stop + 1

    # --- URLs and HTML --------------------------------------------------------------------------

    def _word_start(self, buf: str, pos: int, char: str) -> int:
        """An h or w: the start of a URL if a URL prefix and a host character follow."""
        before = self._prev
        length: int | None = 0
        if not before or not ((before.isascii() and before.isalnum()) or before in _NO_URL_AFTER):
            length = self._url_prefix(buf, pos)
            if length is None:
                return self._wait(pos)
        if not length:
            self._emit(char)
            self._prev = char
            return pos + 1
        self._start_url(buf[pos : pos + length], angle=False)
        return pos + length

    def _url_prefix(self, buf: str, pos: int) -> int | None:
        """Length of the URL prefix at `pos` (0: none), None when that is not known yet."""
        if pos >= len(buf):
            return 0 if self._final else None
        if buf[pos] not in "hHwW":
            return 0  # the common case: no prefix starts with it
        wait = False
        for prefix in _URL_PREFIXES:
            seen = buf[pos : pos + len(prefix)]
            if seen.lower() == prefix:
                host = buf[pos + len(prefix) : pos + len(prefix) + 1]
                if not host:
                    wait = True
                elif host.isascii() and host.isalnum():
                    return len(prefix)
            elif len(seen) < len(prefix) and prefix.startswith(seen.lower()):
                wait = True  # the text ends inside the prefix
        return None if wait and not self._final else 0

    def _start_url(self, prefix: str, *, angle: bool) -> None:
        self._url = True
        self._url_host = []
        self._url_in_host = True
        self._url_strip_www = not prefix.lower().startswith("www.")  # "www." itself is gone
        self._url_angle = angle
        self._url_depth = 0
        self._url_punct = []
        self._prev = prefix[-1]

    def _url_run(self, buf: str, pos: int, end: int) -> int:
        """Consume URL characters up to `end`; at the URL's end, say its host."""
        while pos < end:
            char = buf[pos]
            if char in _URL_STOP or char.isspace() or not char.isascii():
                closes = self._url_angle and char == ">"
                self._end_url()
                if closes:
                    self._prev = char
                    return pos + 1
                return pos
            self._prev = char
            pos += 1
            if char in _URL_PUNCT or (char == ")" and not self._url_depth):
                self._url_punct.append(char)
                continue
            for held in self._url_punct:  # more URL follows: the punctuation was part of it
                self._url_char(held)
            self._url_punct = []
            if char == "(":
                self._url_depth += 1
            elif char == ")":
                self._url_depth -= 1
            self._url_char(char)
        return pos

    def _url_char(self, char: str) -> None:
        if self._url_in_host:
            if char in "/?#":
                self._emit_host()  # the path and query are never said
            else:
                self._url_host.append(char)

    def _emit_host(self) -> None:
        """Say the host of the authority ("user:pw@www.host.org:8080" -> "host.org")."""
        authority = "".join(self._url_host).rpartition("@")[2]
        host = _NOT_HOST.split(authority, maxsplit=1)[0].rstrip(".")
        self._url_host, self._url_in_host = [], False
        if self._url_strip_www and host[:4].lower() == "www.":
            host = host[4:]
        self._emit(host)

    def _end_url(self) -> None:
        if self._url_in_host:
            self._emit_host()
        self._url = False
        self._emit("".join(self._url_punct))  # "see https://x.y/z." keeps its "."
        self._url_punct = []

    def _angle(self, buf: str, pos: int) -> int:
        """A "<": an autolink, an HTML tag, or just "<"."""
        length = self._url_prefix(buf, pos + 1)
        if length is None:
            return self._wait(pos)
        if length:
            self._start_url(buf[pos + 1 : pos + 1 + length], angle=True)
            return pos + 1 + length
        if pos + 1 < len(buf) and buf[pos + 1] != "/" and not "a" <= buf[pos + 1] <= "z":
            tag: tuple[int, str] | None = _NO_TAG  # "x < 5", "<3": no tag name follows
        else:
            at = self._base + pos
            if self._tag.at != at:
                self._tag = _TagScan(at)
            tag = _scan_tag(buf, pos, self._final, self._tag)
        if tag is None:
            return self._wait(pos)
        length, name = tag
        if not length:
            self._emit("<")
            self._prev = "<"
            return pos + 1
        self._emit("\n" if name in _NEWLINE_TAGS else " " if name in _SPACE_TAGS else "")
        self._prev = ">"
        return pos + length


def to_speech_text(text: str) -> str:
    """The whole text at once: the same as feed(text) + flush() on a fresh filter."""
    speech = SpeechTextFilter()
    return speech.feed(text) + speech.flush()
