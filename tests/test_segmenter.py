"""The intelligent buffer: a table of cases, each fed whole, per character and in random splits."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from voicechat.segmenter import Segmenter

from .hostile import BENCH, hostile_text

CASES: list[tuple[str, list[str]]] = [
    ("Hello world. How are you? I am fine!", ["Hello world.", "How are you?", "I am fine!"]),
    # numbers, money, decimals, thousands
    (
        "Mr. Smith paid $100.00 for 3.14 kg. Then he left.",
        ["Mr. Smith paid $100.00 for 3.14 kg.", "Then he left."],
    ),
    ("It costs 1,000 dollars. Cheap!", ["It costs 1,000 dollars.", "Cheap!"]),
    ("Version 2.5.1 is out. Update now.", ["Version 2.5.1 is out.", "Update now."]),
    # URLs, emails, file names
    (
        "Visit example.com/a?b=1 or mail a@b.org. Thanks!",
        ["Visit example.com/a?b=1 or mail a@b.org.", "Thanks!"],
    ),
    ("Open config.yaml. Then edit main.py now.", ["Open config.yaml.", "Then edit main.py now."]),
    ("See https://x.org/a.b?c=d! It helps.", ["See https://x.org/a.b?c=d!", "It helps."]),
    # abbreviations and initials
    ("Dr. Who met Prof. X today. Nice.", ["Dr. Who met Prof. X today.", "Nice."]),
    (
        "Use tools, e.g. Python or i.e. Rust. Done.",
        ["Use tools, e.g. Python or i.e. Rust.", "Done."],
    ),
    (
        "J. R. R. Tolkien wrote it. So did I. Fine.",
        ["J. R. R. Tolkien wrote it.", "So did I.", "Fine."],
    ),
    (
        "He lived in the U.S. for years. Then left.",
        ["He lived in the U.S. for years.", "Then left."],
    ),
    (
        "It was 5 p.m. Then we ate. It was 5 p.m. and dark.",
        ["It was 5 p.m.", "Then we ate.", "It was 5 p.m. and dark."],
    ),
    ("We ate pears etc. All fruit.", ["We ate pears etc.", "All fruit."]),
    # ellipses and runs of marks
    ("Wait... what? Really?! Yes.", ["Wait... what?", "Really?!", "Yes."]),
    ("Hmm… Let me think. Okay!!! Go.", ["Hmm…", "Let me think.", "Okay!!!", "Go."]),
    # closing quotes and brackets stay with their sentence
    ('He said "Stop." Then he left.', ['He said "Stop."', "Then he left."]),
    ("(This is an aside.) Back to it.", ["(This is an aside.)", "Back to it."]),
    ("She asked, “Why?” Nobody knew.", ["She asked, “Why?”", "Nobody knew."]),
    # newlines and list numbers
    ("1. First item\n2. Second item", ["1. First item", "2. Second item"]),
    ("Title\n\nBody text here.\n", ["Title", "Body text here."]),
    # Korean, Chinese, Japanese
    (
        "안녕하세요. 만나서 반갑습니다! 잘 지내요?",
        ["안녕하세요.", "만나서 반갑습니다!", "잘 지내요?"],
    ),
    ("좋아요.그럼 갑시다.", ["좋아요.", "그럼 갑시다."]),
    ("你好。我很好！谢谢？", ["你好。", "我很好！", "谢谢？"]),
    ("今日は晴れです。「本当？」と聞いた。", ["今日は晴れです。", "「本当？」と聞いた。"]),
    # quoted speech stays whole when the outer sentence goes on after the closing quote
    # English: a lowercase word after the quote; straight, curly and single quotes
    (
        'She whispered "Is anyone there?" and stepped inside. Then silence.',
        ['She whispered "Is anyone there?" and stepped inside.', "Then silence."],
    ),
    ("He shouted 'Wait!' and ran after the bus.", ["He shouted 'Wait!' and ran after the bus."]),
    (
        "She asked “Why not?” and smiled. He agreed.",
        ["She asked “Why not?” and smiled.", "He agreed."],
    ),
    ("He said ‘Stop!’ and froze.", ["He said ‘Stop!’ and froze."]),
    (
        '"Really?!" she asked. "Yes." he said.',
        ['"Really?!" she asked.', '"Yes." he said.'],
    ),
    # nested quotes, and apostrophes inside quotes (they neither open nor close a quote)
    (
        "He said \"She told me 'Run!' and left.\" and smiled. Then he slept.",
        ["He said \"She told me 'Run!' and left.\" and smiled.", "Then he slept."],
    ),
    (
        "He said \"She yelled 'Run!'\" and left. Then he slept.",
        ["He said \"She yelled 'Run!'\" and left.", "Then he slept."],
    ),
    (
        "He said 'I can't!' and left. The dogs' bowls were empty. It's late.",
        ["He said 'I can't!' and left.", "The dogs' bowls were empty.", "It's late."],
    ),
    ("She said ‘it’s late!’ and left.", ["She said ‘it’s late!’ and left."]),
    # English: a new sentence after the quote is still a cut
    ('He said "No." Then he left.', ['He said "No."', "Then he left."]),
    ("He yelled 'Stop!' The car stopped.", ["He yelled 'Stop!'", "The car stopped."]),
    ('She called him "Dr." Then she laughed.', ['She called him "Dr."', "Then she laughed."]),
    ("She said “Hi!”\nand left.", ["She said “Hi!”", "and left."]),
    # "No." is a sentence; "No. 5" is an abbreviation
    ("No. Then he left. See No. 5 now.", ["No.", "Then he left.", "See No. 5 now."]),
    # the last mark of a run decides, as before: "...?" is a question
    ("Wait...? what now. Ok.", ["Wait...?", "what now.", "Ok."]),
    # Korean: any syllable attached to the closing quote is a particle or ending; after a
    # space only 하다 (하고, 했다) goes on
    (
        '민수는 "벌써 끝났어?"라고 물었다. 그리고 웃었다.',
        ['민수는 "벌써 끝났어?"라고 물었다.', "그리고 웃었다."],
    ),
    ('엄마가 "밥 먹자."고 하셨어요.', ['엄마가 "밥 먹자."고 하셨어요.']),
    ('그는 "어머나!"하고 놀랐다.', ['그는 "어머나!"하고 놀랐다.']),
    ('그는 "어머나!" 하고 놀랐다.', ['그는 "어머나!" 하고 놀랐다.']),
    ('그녀는 "괜찮아."며 웃었다.', ['그녀는 "괜찮아."며 웃었다.']),
    ('그는 "내일 보자!"라며 떠났다.', ['그는 "내일 보자!"라며 떠났다.']),
    ('그는 "좋은 아침!"이라고 인사했다.', ['그는 "좋은 아침!"이라고 인사했다.']),
    ("그는 ‘이제 시작이다.’라고 생각했다.", ["그는 ‘이제 시작이다.’라고 생각했다."]),
    ("그는 '됐어!'라고 말했다.", ["그는 '됐어!'라고 말했다."]),
    ('"좋아!" 그녀가 웃었다.', ['"좋아!"', "그녀가 웃었다."]),
    ("“정말요?” 민수가 물었다.", ["“정말요?”", "민수가 물었다."]),
    # Japanese: と and って go on; kanji or other kana after 」 start a new sentence
    ("母は「早く寝なさい。」と言った。", ["母は「早く寝なさい。」と言った。"]),
    ("彼は「無理だ！」って言った。", ["彼は「無理だ！」って言った。"]),
    ("『行こう。』と彼女は言った。", ["『行こう。』と彼女は言った。"]),
    ('母は"早く寝なさい。"と言った。', ['母は"早く寝なさい。"と言った。']),
    ("「おはよう。」母が言った。", ["「おはよう。」", "母が言った。"]),
    ("「はい。」それから帰った。", ["「はい。」", "それから帰った。"]),
    # Chinese: a Han character right after the closing quote goes on
    ('"我们走吧。"他说。', ['"我们走吧。"他说。']),
    ("“我们走吧。”他说。", ["“我们走吧。”他说。"]),
    ("「我們走吧。」他說。", ["「我們走吧。」他說。"]),
    # Chinese: an opening quote, or a space, after the sentence end is still a cut
    ('天黑了。"我们走吧。"他说。', ["天黑了。", '"我们走吧。"他说。']),
    ('"好的。""谢谢。"', ['"好的。"', '"谢谢。"']),
    ("“好的。”“谢谢。”", ["“好的。”", "“谢谢。”"]),
    ('"我们走吧。" 然后他们走了。', ['"我们走吧。"', "然后他们走了。"]),
    # an apostrophe earlier in the answer does not open a quote, so "。'我" still opens one
    ("It's dark. 天黑了。'我们走吧。'他说。", ["It's dark.", "天黑了。", "'我们走吧。'他说。"]),
    (
        "The dogs' bowls are empty. 天黑了。'我们走吧。'他说。",
        ["The dogs' bowls are empty.", "天黑了。", "'我们走吧。'他说。"],
    ),
    (
        "In the '90s it was 'cool!' to say. 天黑了。'我们走吧。'他说。",
        ["In the '90s it was 'cool!' to say.", "天黑了。", "'我们走吧。'他说。"],
    ),
    # first-unit clause cut (latency), later clauses only when long
    (
        "The moon is our only natural satellite, and it is big. It orbits us, slowly.",
        ["The moon is our only natural satellite,", "and it is big.", "It orbits us, slowly."],
    ),
    ("Well, yes. Sure.", ["Well, yes.", "Sure."]),
    ("Time is 10:30, roughly. Ok.", ["Time is 10:30,", "roughly.", "Ok."]),
    # nothing unspeakable on its own, no whitespace units
    ("   ", []),
    ("... Hello there.", ["... Hello there."]),
    ("Done. —", ["Done."]),
    ("Yes — and no.", ["Yes — and no."]),
    ("", []),
]


def _feed_split(text: str, cuts: list[int]) -> list[str]:
    seg = Segmenter()
    units: list[str] = []
    previous = 0
    for cut in [*sorted(cuts), len(text)]:
        units += seg.feed(text[previous:cut])
        previous = cut
    return units + seg.flush()


def _random_splits(text: str, seed: int) -> list[int]:
    rng = random.Random(seed)
    return rng.sample(range(1, len(text)), k=min(len(text) - 1, rng.randint(0, 12))) if text else []


def _squash(text: str) -> str:
    return "".join(text.split())


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_units_are_the_same_whatever_the_split(text: str, expected: list[str]) -> None:
    assert _feed_split(text, []) == expected
    assert _feed_split(text, list(range(1, len(text)))) == expected
    for seed in range(20):
        assert _feed_split(text, _random_splits(text, seed)) == expected


def test_a_sentence_is_emitted_as_soon_as_the_next_character_arrives() -> None:
    seg = Segmenter()
    assert seg.feed("Hello world.") == []  # "." at the end is ambiguous (3.14? e.g.?)
    assert seg.feed("  ") == []  # still ambiguous: an abbreviation or a lowercase word may follow
    assert seg.feed("N") == ["Hello world."]
    assert seg.feed("ext one") == []
    assert seg.flush() == ["Next one"]


def test_a_cjk_sentence_end_needs_no_space() -> None:
    seg = Segmenter()
    assert seg.feed("你好。") == []  # a closing quote could still follow
    assert seg.feed("我") == ["你好。"]


def test_quoted_speech_is_decided_by_the_first_character_after_the_quote() -> None:
    seg = Segmenter()
    assert seg.feed('He said "No."') == []
    assert seg.feed(" ") == []
    assert seg.feed("T") == ['He said "No."']  # a capital: a new sentence
    seg = Segmenter()
    assert seg.feed('She whispered "Is anyone there?" ') == []
    assert seg.feed("a") == []  # lowercase: the sentence goes on
    assert seg.feed("nd stepped inside. N") == [
        'She whispered "Is anyone there?" and stepped inside.'
    ]
    seg = Segmenter()
    assert seg.feed('"좋아!" ') == []
    assert seg.feed("그") == ['"좋아!"']
    seg = Segmenter()
    assert seg.feed('민수는 "벌써 끝났어?"') == []
    assert seg.feed("라") == []
    assert seg.feed("고 물었다.") == []
    assert seg.flush() == ['민수는 "벌써 끝났어?"라고 물었다.']
    seg = Segmenter()
    assert seg.feed('天黑了。"') == []  # an opening or a closing quote? The next character says.
    assert seg.feed("我") == ["天黑了。"]


def test_korean_syllables_split_across_tokens_are_joined() -> None:
    seg = Segmenter()
    deltas = ["안녕하세", "요. 만나서", " 반갑습니다."]
    units = [unit for delta in deltas for unit in seg.feed(delta)]
    units += seg.flush()
    assert units == ["안녕하세요.", "만나서 반갑습니다."]


def test_a_run_on_answer_is_force_cut_at_a_space_within_the_limit() -> None:
    text = " ".join(["word"] * 120)  # 599 characters, no punctuation
    seg = Segmenter(max_chars=50)
    units = seg.feed(text) + seg.flush()
    assert all(len(unit) <= 50 for unit in units)
    assert all(not unit.startswith("ord") for unit in units)  # never inside a word
    assert " ".join(units) == text


def test_text_without_spaces_is_cut_at_the_limit() -> None:
    text = "的" * 450
    units = _feed_split(text, list(range(1, len(text), 7)))
    assert [len(unit) for unit in units] == [60, 200, 190]  # the first unit's limit, then 200


FIRST_UNIT_CASES = [
    # A long first sentence: cut before the last joining word within 60 characters.
    (
        "Grapes grow on tall green vines in warm sunny places and they have a sweet taste. "
        "Apples are red.",
        [
            "Grapes grow on tall green vines in warm sunny places",
            "and they have a sweet taste.",
            "Apples are red.",
        ],
    ),
    # No joining word: the last space within 60 characters.
    (
        "The sky blue is a result of the Earth's atmosphere scattering sunlight in many ways.",
        ["The sky blue is a result of the Earth's atmosphere", "scattering sunlight in many ways."],
    ),
    # A joining word too early to stand alone before it ("Yes and" is no phrase): the last space.
    (
        "Bees and wasps collect nectar from many flowers on sunny afternoons across meadows.",
        ["Bees and wasps collect nectar from many flowers on sunny", "afternoons across meadows."],
    ),
    # A first sentence within 60 characters, and long later ones: whole sentences.
    (
        "The capital of France is Paris. It has been the capital for a very long time and it is "
        "home to the Louvre and the Eiffel Tower.",
        [
            "The capital of France is Paris.",
            "It has been the capital for a very long time and it "
            "is home to the Louvre and the Eiffel Tower.",
        ],
    ),
]


@pytest.mark.parametrize(("text", "expected"), FIRST_UNIT_CASES)
def test_a_long_first_sentence_is_not_waited_for_whole(text: str, expected: list[str]) -> None:
    assert _feed_split(text, []) == expected
    assert _feed_split(text, list(range(1, len(text)))) == expected  # however it streams in


def test_force_cut_starts_speaking_a_long_first_sentence_early() -> None:
    seg = Segmenter(max_chars=40)
    units = seg.feed("a " * 25)
    assert units and len(units[0]) <= 40


def test_flush_resets_the_segmenter_for_reuse() -> None:
    seg = Segmenter()
    assert seg.feed("One, two three four five. Six") == ["One, two three four five."]
    assert seg.flush() == ["Six"]
    assert seg.feed("Again, one. Two") == ["Again, one."]


_ALPHABET = st.sampled_from(
    [
        *"abcXYZ019 .,!?;:…—\"')(\n",
        *["Mr", "e.g", "3.1", "www.a.b", "안녕", "요", "。", "你"],
        # quotes: curly, CJK, apostrophes, particles and kana that continue after a quote
        *"“”‘’「」『』？",
        *["라고", "と", "って", "No", "don't", "s' "],
    ]
)


@settings(max_examples=300, deadline=None)
@given(
    parts=st.lists(st.lists(_ALPHABET, max_size=6).map("".join), max_size=40),
    max_chars=st.integers(min_value=10, max_value=80),
)
def test_no_text_lost_or_reordered_and_split_invariant(parts: list[str], max_chars: int) -> None:
    text = "".join(parts)
    seg = Segmenter(max_chars=max_chars)
    streamed = [unit for part in parts for unit in seg.feed(part)] + seg.flush()
    whole_seg = Segmenter(max_chars=max_chars)
    whole = whole_seg.feed(text) + whole_seg.flush()
    assert streamed == whole
    spoken, original = _squash("".join(streamed)), _squash(text)
    # Nothing speakable lost or reordered; only unspeakable marks (a lone "—") may be dropped.
    assert [c for c in spoken if c.isalnum()] == [c for c in original if c.isalnum()]
    remaining = iter(original)
    assert all(ch in remaining for ch in spoken)  # the units are the text, in order
    assert all(unit.strip() == unit and unit for unit in streamed)
    assert all(any(ch.isalnum() for ch in unit) for unit in streamed)


# --- hostile input ------------------------------------------------------------------------------
# The adversarial generators of scripts/bench_segmenter.py (long runs of each punctuation class
# and of each mark, their mixes, quote and bracket runs, digits with dots, URL-, email- and
# markdown-like runs, alternations of any two classes): --worst measures their cost, these tests
# check the units they give. No timing here (speed is measured by the script, never asserted).


HOSTILE_TEXT = hostile_text(_ALPHABET)


def _units(
    text: str, cuts: list[int], max_chars: int, first_max_chars: int | None = None
) -> list[str]:
    seg = Segmenter(max_chars=max_chars, first_max_chars=first_max_chars or max_chars)
    units: list[str] = []
    previous = 0
    for cut in [*sorted(set(cuts)), len(text)]:
        units += seg.feed(text[previous:cut])
        previous = cut
    return units + seg.flush()


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    text=HOSTILE_TEXT,
    max_chars=st.sampled_from([10, 23, 80, 200]),
    first_max_chars=st.sampled_from([10, 23, 60, 200]),
    data=st.data(),
)
def test_hostile_input_keeps_the_text_for_any_split(
    text: str, max_chars: int, first_max_chars: int, data: st.DataObject
) -> None:
    whole = _units(text, [], max_chars, first_max_chars)
    assert _units(text, list(range(1, len(text))), max_chars, first_max_chars) == whole
    if len(text) > 1:
        cuts = data.draw(st.lists(st.integers(1, len(text) - 1), max_size=30), label="cuts")
        assert _units(text, cuts, max_chars, first_max_chars) == whole
    # Every letter and digit is spoken once, in order; a unit is a stripped piece of the text,
    # in order, with something to say, and never longer than max_chars.
    assert [c for c in "".join(whole) if c.isalnum()] == [c for c in text if c.isalnum()]
    position = 0
    for unit in whole:
        found = text.find(unit, position)
        assert found >= 0, (unit, text)
        position = found + len(unit)
    assert all(unit and unit == unit.strip() for unit in whole)
    assert all(any(c.isalnum() for c in unit) for unit in whole)
    assert all(len(unit) <= max_chars for unit in whole)
    assert not whole or len(whole[0]) <= min(first_max_chars, max_chars)


def test_marks_without_speech_past_the_first_limit_are_cut_by_that_limit() -> None:
    # Found by the hostile tests: a run of marks with nothing to say, longer than the first
    # unit's limit, was dropped by the 200-character limit when it arrived in one piece and by
    # the first unit's when it streamed in, so the units depended on the split.
    text = "，「、」；『：』" * 26 + "h"
    whole = _units(text, [], 200, 60)
    assert whole == [text[3 * 60 :]]  # dropped 60 characters at a time, then the letter's unit
    assert _units(text, list(range(1, len(text))), 200, 60) == whole
    assert _units(text, [201], 200, 60) == whole


@pytest.mark.parametrize("name", sorted(BENCH.HOSTILE))
def test_each_hostile_generator_keeps_a_bounded_buffer(name: str) -> None:
    """A deterministic guard for linearity: what the segmenter keeps (the unit in progress, its
    look-ahead) stays bounded however long the run, so no step can re-read a growing text. Fed
    one character at a time; the units are the same as whole."""
    text = BENCH.HOSTILE[name](1500)
    seg = Segmenter(max_chars=80, first_max_chars=80)
    units: list[str] = []
    for char in text:
        units += seg.feed(char)
        assert len(seg._buf) <= 3 * 80
    units += seg.flush()
    assert units == _units(text, [], 80)
    assert all(len(unit) <= 80 for unit in units)


def test_a_run_of_marks_never_makes_a_unit_longer_than_max_chars() -> None:
    # A run that goes past the length limit is cut by the limit (it once made a unit of up to
    # twice max_chars: "Hi" + 500 "!" gave a 202-character unit).
    # (the rest of the run, with nothing to say, is dropped up to the limit, as before).
    assert _units("Hi" + "!" * 500 + " Next", [], 200) == ["Hi" + "!" * 198, "!" * 102 + " Next"]
    units = _units("a" * 150 + "," + ")" * 300 + " b", [], 200)
    assert units == ["a" * 150 + "," + ")" * 49, ")" * 51 + " b"]
    for text in ("Wait" + "." * 30 + " what", "「はい" + "。」" * 20 + "と"):
        for cuts in ([], list(range(1, len(text)))):
            assert all(len(unit) <= 10 for unit in _units(text, cuts, 10))
    # A run that reaches past the limit is decided again, whole, in the next unit: its closing
    # quote still closes, so the quoted sentence still goes on ("と").
    for cuts in ([], list(range(1, 13))):
        assert _units('x "abc de．"と', cuts, 10) == ['x "abc', 'de．"と']
    # Runs that end just before, at and just after the limit, then a cut.
    for max_chars in (10, 23):
        for word in range(1, max_chars + 1):
            for run in range(1, 4):
                for mark, after in (("!", " Next"), (".", " Then"), ("。", "好"), (",", ") b")):
                    text = "a" * word + mark * run + after
                    units = _units(text, [], max_chars)
                    assert all(len(unit) <= max_chars for unit in units), (text, units)
