"""The speech-text filter: markdown, code, URLs, emoji -> speakable text, for any split."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from voicechat.segmenter import Segmenter
from voicechat.speech_text import SpeechTextFilter, to_speech_text
from voicechat.tts.router import LATIN, speakable

from .hostile import BENCH, hostile_text

CASES: list[tuple[str, str]] = [
    # plain prose, any script, passes unchanged
    ("Hello there, my friend. How are you?", "Hello there, my friend. How are you?"),
    (
        "안녕하세요. 만나서 반갑습니다! 오늘 날씨가 좋네요.",
        "안녕하세요. 만나서 반갑습니다! 오늘 날씨가 좋네요.",
    ),
    ("你好。今日は。Café — naïve… “quoted” → ©", "你好。今日は。Café — naïve… “quoted” → ©"),
    ("1990 was a year.\n1.5 million\n2024. Done", "1990 was a year.\n1.5 million\n2024. Done"),
    ("Wow!!! Really?! what, how, when", "Wow!!! Really?! what, how, when"),
    (
        "x < 5 and y > 3, a<b and c>d, List<String>, i <3 u",
        "x < 5 and y > 3, a<b and c>d, List<String>, i <3 u",
    ),
    ("   indented text\n\n\nblank lines", "   indented text\n\n\nblank lines"),
    ("Windows\r\nline ends\r\n", "Windows\r\nline ends\r\n"),
    # line-start markers
    (
        "# Title\n## Sub title\n###### Six\n####### seven\n#hashtag",
        "Title\nSub title\nSix\n####### seven\n#hashtag",
    ),
    (
        "- one\n* two\n+ three\n1. four\n22) five\n-not a bullet",
        "one\ntwo\nthree\nfour\nfive\n-not a bullet",
    ),
    ("  - nested\n    1. deeper\n\t* tabbed", "nested\ndeeper\ntabbed"),
    ("> quoted\n>> nested\n> > spaced\n> - quoted item", "quoted\nnested\nspaced\nquoted item"),
    (
        "## 🚀 Quick start\n- [ ] todo\n- [x] done\n- [link](u) stays",
        "Quick start\ntodo\ndone\nlink stays",
    ),
    ("Above\n---\nMiddle\n* * *\n___\nBelow", "Above\nMiddle\nBelow"),
    # tables
    ("| a | b |\n|---|:-:|\n| 1 | 2 |", "a, b\n1, 2"),
    ("|Name|Age|\n| :--- | ---: |\n|**Kim**|30|", "Name, Age\nKim, 30"),
    ("a | b stays", "a | b stays"),
    # emphasis
    (
        "Some **bold**, *italic*, __strong__ and _em_ text.",
        "Some bold, italic, strong and em text.",
    ),
    ("snake_case_name and 1_000_000 stay", "snake_case_name and 1_000_000 stay"),
    ("~~struck~~ but ~5 km stays", "struck but ~5 km stays"),
    ("2 * 3 = 6 and a ** b", "2 * 3 = 6 and a ** b"),
    ("**unclosed bold and *nested* text", "unclosed bold and nested text"),
    ("**Bold** start\n***both***", "Bold start\nboth"),
    # code
    ("Code:\n```python\nprint('x')\n```\nDone.", "Code:\nDone."),
    ("~~~\nraw **text**\n~~~\nafter", "after"),
    ("Unterminated:\n```\ncode forever\n# not a heading", "Unterminated:\n"),
    ("````md\n```\ninner\n```\n````\nout", "out"),
    ("  ```js\n  x = 1\n  ```\nafter", "after"),
    ("> Quote:\n> ```\n> code\n> ```\n> after", "Quote:\nafter"),
    (
        "Inline `print()` call and `__init__` and ``a ` b``.",
        "Inline print() call and __init__ and a  b.",
    ),
    # links, images, URLs
    ("See [the docs](https://x.org/a) now.", "See the docs now."),
    ('An ![image alt](pic.png "title") here.', "An image alt here."),
    ("[link](http://a.b/c(d)) and [**bold** link](u)", "link and bold link"),
    ("Go to https://docs.python.org/3/x?y=1.", "Go to docs.python.org."),
    ("Try www.example.com, or <https://a.b/c>!", "Try example.com, or a.b!"),
    (
        "(see https://x.y/z) and https://en.wikipedia.org/wiki/Foo_(bar)?",
        "(see x.y) and en.wikipedia.org?",
    ),
    ("HTTP://WWW.X.COM/Y and http://localhost:8000/docs", "X.COM and localhost"),
    (
        "문서(https://docs.python.org/3)를 보세요. https://x.y를",
        "문서(docs.python.org)를 보세요. x.y를",
    ),
    ("[https://a.com/x](https://a.com/x) and `https://b.org/y`", "a.com and b.org"),
    ("Mail me@example.org or x@www.foo.com today.", "Mail me@example.org or x@www.foo.com today."),
    ("ahttp://x.com and http:// alone", "ahttp://x.com and http:// alone"),
    # brackets that are no links
    ("Unclosed [bracket stays", "Unclosed [bracket stays"),
    ("[not a link] here [1]", "[not a link] here [1]"),
    ("[a [b](c) d", "[a b d"),
    ("Broken [link](http://x\nnext", "Broken link\nnext"),
    # emoji
    ("Great 🎉👍🏽 job! ❤️ 👨‍👩‍👧 🇰🇷 1️⃣ ✅", "Great  job!    1 "),
    ("이모지😀없이", "이모지없이"),
    # symbols a voice would read by their Unicode name go like emoji (issue 24: ㊗, braille)
    ("Congratulations ㊗ on ⠁⠃⠉ braille!", "Congratulations  on  braille!"),
    ("㊗㊗㊗ ⠿⠿⠿", " "),
    ("Steps ① ② and ⓐ; ㈱ ㎏ ㍿ ⺀ ⼀ ㇀ ䷀ ꒐ end", "Steps   and ;         end"),
    ("Box ┌─┐ █▓ ■ ▶ ⌘ ⏎ ␀ 𝄞 𝌆 𝠀 🬀 🯰", "Box" + " " * 12),
    # ... while symbols with a word of their own stay
    (
        "25 °C, © 2024, ™, € 5, ± 1, x ≤ y → z, § 3, ½, №",
        "25 °C, © 2024, ™, € 5, ± 1, x ≤ y → z, § 3, ½, №",
    ),
    # HTML, escapes
    ('Line<br>break and <b>tag</b> <a href="x">y</a>', "Line\nbreak and tag y"),
    (r"\*not emphasis\* and \_x\_ and C:\Users", "*not emphasis* and _x_ and C:\\Users"),
    # everything at once
    (
        "## Steps\n1. Install with `pip install x` 🚀\n2. Read **[the guide](https://www.x.io/g)**.",
        "Steps\nInstall with pip install x \nRead the guide.",
    ),
    ("", ""),
]


def _feed(text: str, cuts: list[int]) -> str:
    speech, out, previous = SpeechTextFilter(), "", 0
    for cut in [*sorted(cuts), len(text)]:
        out += speech.feed(text[previous:cut])
        previous = cut
    return out + speech.flush()


def _random_cuts(text: str, rng: random.Random) -> list[int]:
    if len(text) < 2:
        return []
    return rng.sample(range(1, len(text)), k=rng.randint(1, min(len(text) - 1, 12)))


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_output_is_the_same_whatever_the_split(text: str, expected: str) -> None:
    assert to_speech_text(text) == expected
    assert _feed(text, []) == expected
    assert _feed(text, list(range(1, len(text)))) == expected  # one character at a time
    for seed in range(25):
        assert _feed(text, _random_cuts(text, random.Random(seed))) == expected


def test_a_url_split_across_many_deltas() -> None:
    speech = SpeechTextFilter()
    deltas = "Visit |h|tt|ps|:|/|/do|cs.py|thon.org|/3/|x?y|=1|.| ok".split("|")
    out = [speech.feed(delta) for delta in deltas]
    assert out[0] == "Visit "
    assert "".join(out[:9]) == "Visit "  # the host may go on
    assert "".join(out[:10]) == "Visit docs.python.org"  # a "/" ends the host: said at once
    assert "".join(out) + speech.flush() == "Visit docs.python.org. ok"


@pytest.mark.parametrize(
    "deltas",
    [
        ["Look:\n", "`", "`", "`python\n", "print(1)\n", "``", "`\n", "Done."],
        ["Look:\n", "`", "``", "`python\n", "print(1)\n```\n", "``", "``\n", "Done."],
        ["Look:\n``", "`", "\n", "x\n`", "``", "\nDone", "."],
    ],
)
def test_a_fence_split_into_pieces(deltas: list[str]) -> None:
    speech = SpeechTextFilter()
    out = [speech.feed(delta) for delta in deltas]
    assert "".join(out) + speech.flush() == "Look:\nDone."
    assert to_speech_text("".join(deltas)) == "Look:\nDone."


def test_plain_prose_passes_with_almost_no_delay() -> None:
    speech = SpeechTextFilter()
    assert speech.feed("Hello there, my friend. How ar").startswith("Hello there, my friend. How")
    speech = SpeechTextFilter()
    out = ""
    for char in "The quick brown fox jumps over the lazy dog while we wait.":
        out += speech.feed(char)
    assert out == "The quick brown fox jumps over the lazy dog while we wait."
    speech = SpeechTextFilter()
    assert speech.feed("한국어 문장도 바로 나옵니다") == "한국어 문장도 바로 나옵니다"


def test_only_a_possible_url_start_is_held() -> None:
    speech = SpeechTextFilter()
    assert speech.feed("see h") == "see "
    assert speech.feed("t") == ""
    assert speech.feed("e") == "hte"  # "hte" is no URL prefix
    assert speech.feed(" www") == " "
    assert speech.feed("x") == "wwwx"


def test_a_line_start_is_held_until_its_first_text_character() -> None:
    speech = SpeechTextFilter()
    assert speech.feed("- ") == ""
    assert speech.feed("item") == "item"
    assert speech.feed("\n1") == "\n"
    assert speech.feed(".") == ""
    assert speech.feed("5") == "1.5"


def test_unclosed_emphasis_does_not_hold_text_back() -> None:
    speech = SpeechTextFilter()
    assert speech.feed("So **very") == "So very"
    assert speech.feed(" important") == " important"
    assert speech.feed(" ~~gone") == " gone"
    assert speech.feed(" _edge") == " edge"


def test_a_link_is_held_until_its_destination_starts() -> None:
    speech = SpeechTextFilter()
    assert speech.feed("A [link") == "A "
    assert speech.feed(" text]") == ""
    assert speech.feed("(http://x") == "link text"
    assert speech.feed(".y/z) here") == " here"


def test_an_unclosed_bracket_passes_literally_after_300_characters() -> None:
    speech = SpeechTextFilter()
    assert speech.feed("Note [") == "Note "
    words = "word " * 59  # 295 characters: still held
    assert speech.feed(words) == ""
    out = speech.feed("more text")
    assert out.startswith("[" + words)
    assert out + speech.flush() == "[" + words + "more text"


def test_an_unclosed_bracket_passes_literally_at_the_line_end() -> None:
    speech = SpeechTextFilter()
    assert speech.feed("Pick [a or b") == "Pick "
    assert speech.feed("\nNext") == "[a or b\nNext"


def test_flush_resets_for_the_next_answer() -> None:
    speech = SpeechTextFilter()
    speech.feed("```\ninside a block")
    assert speech.flush() == ""
    assert speech.feed("# Fresh\n") == "Fresh\n"
    assert speech.feed("| a [b https://x") + speech.flush() == "a [b x"
    assert speech.feed("plain") + speech.flush() == "plain"


@pytest.mark.parametrize(
    "unit",
    [
        "Hello there my friend. ",
        "[a ",
        "<a ",
        "_x_ ",
        "http://a.b/c ",
        "| a | b ",
        "** ",
        "!",
        "-",
        "h w ",
    ],
)
def test_only_a_bounded_tail_is_kept(unit: str) -> None:
    """No re-scan of everything seen: the undecided tail stays small (speed: bench_segmenter)."""
    text = (unit * (40_000 // len(unit) + 1))[:40_000]
    speech = SpeechTextFilter()
    for index in range(0, len(text), 2):
        speech.feed(text[index : index + 2])
        assert len(speech._buf) <= 2 * 300
    speech.flush()
    assert speech._buf == ""


_ALPHABET = st.sampled_from(
    [
        *"*_`#[]()!<>-|~\n .:/ahwtp0",
        "안",
        "녕",
        "🎉",
        "```",
        "http://",
        "www.",
        "1. ",
        "](",
        "<br>",
        "[x] ",
        "> ",
        "<b>",
        "H",
    ]
)


@settings(max_examples=1500, deadline=None)
@given(parts=st.lists(st.lists(_ALPHABET, max_size=6).map("".join), max_size=30))
def test_split_invariance_on_random_markdown(parts: list[str]) -> None:
    text = "".join(parts)
    expected = to_speech_text(text)
    speech = SpeechTextFilter()
    streamed = "".join(speech.feed(part) for part in parts) + speech.flush()
    assert streamed == expected
    # flush() left no state: the same filter works again as a fresh one
    again = "".join(speech.feed(char) for char in text) + speech.flush()
    assert again == expected
    assert "`" not in streamed and "🎉" not in streamed


@settings(max_examples=300, deadline=None)
@given(prose=st.text(alphabet="abcdefghstwxyz .,?'안녕하세요", min_size=1))
def test_plain_prose_is_unchanged_and_at_most_a_few_characters_behind(prose: str) -> None:
    prose = "A" + prose  # a line that starts with spaces may be held (indentation of a marker)
    assert to_speech_text(prose) == prose
    speech, out = SpeechTextFilter(), ""
    for index, char in enumerate(prose, start=1):
        out += speech.feed(char)
        assert prose.startswith(out)
        assert index - len(out) <= 5  # at most "https" of a possible URL is held
    assert out + speech.flush() == prose


# --- hostile input ------------------------------------------------------------------------------
# The adversarial generators of scripts/bench_segmenter.py (long runs of each punctuation class
# and of each mark, their mixes, quote and bracket runs, digits with dots, URL-, email- and
# markdown-like runs, alternations of any two classes): --worst measures their cost through the
# filter and the segmenter, these tests check the output. No timing here.


HOSTILE_TEXT = hostile_text(_ALPHABET)


def _stream(text: str, cuts: list[int]) -> tuple[str, list[str]]:
    """The filter's output and the segmenter's units on it, for `text` fed in these pieces."""
    speech, seg = SpeechTextFilter(), Segmenter()
    out: list[str] = []
    units: list[str] = []
    previous = 0
    for cut in [*sorted(set(cuts)), len(text)]:
        out.append(speech.feed(text[previous:cut]))
        units += seg.feed(out[-1])
        previous = cut
    out.append(speech.flush())
    units += seg.feed(out[-1]) + seg.flush()
    return "".join(out), units


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=HOSTILE_TEXT, data=st.data())
def test_hostile_input_gives_the_same_output_for_any_split(text: str, data: st.DataObject) -> None:
    expected = to_speech_text(text)
    whole, units = _stream(text, [])
    assert whole == expected
    assert _stream(text, list(range(1, len(text)))) == (expected, units)
    if len(text) > 1:
        cuts = data.draw(st.lists(st.integers(1, len(text) - 1), max_size=30), label="cuts")
        assert _stream(text, cuts) == (expected, units)
    # The segmenter on the filter's output: every letter and digit of it, once, in order.
    assert [c for c in "".join(units) if c.isalnum()] == [c for c in expected if c.isalnum()]
    assert all(len(unit) <= 200 for unit in units)


@pytest.mark.parametrize("name", sorted(BENCH.HOSTILE))
def test_each_hostile_generator_keeps_a_bounded_tail(name: str) -> None:
    """A deterministic guard for linearity: the undecided tail the filter keeps stays bounded
    however long the run, so no feed can re-read a growing text. Fed one character at a time;
    the output is the same as whole."""
    text = BENCH.HOSTILE[name](1500)
    speech = SpeechTextFilter()
    out = []
    for char in text:
        out.append(speech.feed(char))
        assert len(speech._buf) <= 300
    out.append(speech.flush())
    assert speech._buf == ""
    assert "".join(out) == to_speech_text(text)


# What each voice is sent of a unit (tts/router.py): other scripts' letters and their marks,
# digits and signs go; they would be read by their Unicode names.
SPEAKABLE = [
    ("Hello ါ world", LATIN, "Hello  world"),  # a Myanmar vowel sign on its own
    ("Hello ကါ ၊ ၃ world.", LATIN, "Hello    world."),  # letter, sign, section mark, digit
    ("Namaste नमस्ते, ok", LATIN, "Namaste , ok"),  # Devanagari letters with their marks
    ("Café naïve e\u0301 ÀÉ", LATIN, "Café naïve e\u0301 ÀÉ"),  # Latin marks stay
    ("25 °C, © 2024, € 5, x ≤ y → z, ½ “quoted” — ok…", LATIN, None),  # all stays
    ("안녕하세요. 「인용」 ABC ၊ १२", "hangul", "안녕하세요. 「인용」 ABC  "),
    ("日本語のテキスト、ですね。ㇰ", "kana", "日本語のテキスト、ですね。"),
    ("中文，好！ ক", "han", "中文，好！ "),
]


@pytest.mark.parametrize(("text", "script", "expected"), SPEAKABLE)
def test_a_voice_is_sent_only_what_it_can_say(text: str, script: str, expected: str | None) -> None:
    assert speakable(text, script) == (text if expected is None else expected)
