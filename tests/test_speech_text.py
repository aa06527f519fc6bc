"""The speech-text filter: markdown, code, URLs, emoji -> speakable text, for any split."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voicechat.speech_text import SpeechTextFilter, to_speech_text

CASES: list[tuple[str, str]] = [
    ("Hello there, my friend. How are you?", "Hello there, my friend. How are you?"),
    ("# Title\n## Sub title\nText.", "Title\nSub title\nText."),
    ("- one\n* two\n+ three\n1. four\n2) five", "one\ntwo\nthree\nfour\nfive"),
    ("> quoted\n>> nested", "quoted\nnested"),
    (
        "Some **bold**, *italic*, __strong__ and _em_ text.",
        "Some bold, italic, strong and em text.",
    ),
    ("snake_case_name stays", "snake_case_name stays"),
    ("~~struck~~ but ~5 km stays", "struck but ~5 km stays"),
    ("Code:\n```python\nprint('x')\n```\nDone.", "Code:\nDone."),
    ("~~~\nraw\n~~~\nafter", "after"),
    ("Unterminated:\n```\ncode forever", "Unterminated:\n"),
    ("Inline `print()` call.", "Inline print() call."),
    ("See [the docs](https://x.org/a) now.", "See the docs now."),
    ("An ![image alt](pic.png) here.", "An image alt here."),
    ("Go to https://docs.python.org/3/library/asyncio.html.", "Go to docs.python.org."),
    ("Try www.example.com, or <https://a.b/c>!", "Try example.com, or a.b!"),
    ("(see https://x.y/z)", "(see x.y)"),
    ("Mail me@example.org today.", "Mail me@example.org today."),
    ("Great 🎉👍🏽 job! ❤️", "Great  job! "),
    ("안녕하세요. 만나서 반갑습니다!", "안녕하세요. 만나서 반갑습니다!"),
    ("你好。今日は。Café — naïve…", "你好。今日は。Café — naïve…"),
    ("| a | b |\n|---|:-:|\n| 1 | 2 |", "a , b \n1 , 2 "),
    ("Above\n---\nBelow", "Above\nBelow"),
    ("x < 5 and y > 3", "x < 5 and y > 3"),
    ("Line<br>break and <b>tag</b>", "Line break and tag"),
    ("Unclosed [bracket stays", "Unclosed [bracket stays"),
    ("[not a link] here", "[not a link] here"),
    ("1990 was a year.", "1990 was a year."),
    ("**Bold** start", "Bold start"),
    ("Wow!!! Really?!", "Wow!!! Really?!"),
    ("", ""),
]


def _feed(text: str, cuts: list[int]) -> str:
    speech, out, previous = SpeechTextFilter(), "", 0
    for cut in [*sorted(cuts), len(text)]:
        out += speech.feed(text[previous:cut])
        previous = cut
    return out + speech.flush()


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_output_is_the_same_whatever_the_split(text: str, expected: str) -> None:
    assert to_speech_text(text) == expected
    assert _feed(text, list(range(1, len(text)))) == expected
    for seed in range(30):
        rng = random.Random(seed)
        cuts = (
            rng.sample(range(1, len(text)), k=min(len(text) - 1, rng.randint(0, 10)))
            if text
            else []
        )
        assert _feed(text, cuts) == expected


def test_plain_prose_passes_with_almost_no_delay() -> None:
    speech = SpeechTextFilter()
    assert speech.feed("Hello there, my friend. How ar").startswith("Hello there, my friend. How")


def test_a_url_is_held_until_its_word_ends() -> None:
    speech = SpeechTextFilter()
    assert speech.feed("Visit https://exa") == "Visit "
    assert speech.feed("mple.com/x now") == "example.com now"


def test_a_link_is_held_until_it_closes() -> None:
    speech = SpeechTextFilter()
    assert speech.feed("A [link") == "A "
    assert speech.feed("](http://x") == ""
    assert speech.feed(") here") == "link here"


def test_flush_resets_for_the_next_answer() -> None:
    speech = SpeechTextFilter()
    speech.feed("```\ninside a block")
    assert speech.flush() == ""
    assert speech.feed("# Fresh\n") == "Fresh\n"


_ALPHABET = st.sampled_from(
    [*"*_`#[]()!<>-|~\n .:/ahwtp0", "안", "녕", "🎉", "```", "http://", "www.", "1. "]
)


@settings(max_examples=1000, deadline=None)
@given(parts=st.lists(st.lists(_ALPHABET, max_size=5).map("".join), max_size=30))
def test_split_invariance_on_random_markdown(parts: list[str]) -> None:
    text = "".join(parts)
    speech = SpeechTextFilter()
    streamed = "".join(speech.feed(part) for part in parts) + speech.flush()
    assert streamed == to_speech_text(text)
    assert "`" not in streamed and "🎉" not in streamed
