"""The speech gate (voicechat/loop_guard.py): which units of an answer are spoken. Each case is
fed as the pipeline feeds it (raw text and the speech-text filter's output), whole, one
character at a time and in random splits: the outcome must not depend on the split."""

from __future__ import annotations

import random

import pytest

from voicechat.loop_guard import (
    MAX_SPEECH,
    REPETITION,
    SpeechGate,
    repeated_trigram_share,
    speech_seconds,
    words,
)
from voicechat.speech_text import SpeechTextFilter

# The issue's looping answer: SmolLM2-135M, "Tell me more about the first one.", cut by the
# 256-token limit mid-loop.
ISSUE_LOOP = (
    "The first one is a grilled chicken salad. It is light and fresh. You can serve it with "
    "a lemon dressing, but you could have it with a lighter option, but you could have it "
    "with a lighter option, but you could have it with a lighter option, but you could have"
)
# A loop written by the embedded model (scripts/bench_answers.py, before the guard).
MODEL_LOOP = (
    "Sure! Here are two ideas for dinner tonight. First, a vegetable stir fry with rice. "
    "Second, a pasta with tomato sauce and basil. The pasta is a great choice because it is "
    "easy to make and it is a great choice because it is easy to make and it is a great choice "
    "because it is easy to make and it is a great choice because"
)
LEGIT_LIST = (
    "You will need flour, sugar, butter and eggs. First, mix the flour and the sugar. Then add "
    "the butter. Then add the eggs. Then bake it for twenty minutes. Let it cool before you "
    "serve it."
)

# (text, units spoken, why it stopped, the text kept when it ended early)
CASES: list[tuple[str, list[str], str | None, str | None]] = [
    (
        ISSUE_LOOP,
        ["The first one is a grilled chicken salad.", "It is light and fresh."],
        REPETITION,
        "The first one is a grilled chicken salad. It is light and fresh.",
    ),
    (
        MODEL_LOOP,
        [
            "Sure!",
            "Here are two ideas for dinner tonight.",
            "First, a vegetable stir fry with rice.",
            "Second, a pasta with tomato sauce and basil.",
        ],
        REPETITION,
        "Sure! Here are two ideas for dinner tonight. First, a vegetable stir fry with rice. "
        "Second, a pasta with tomato sauce and basil.",
    ),
    # A sentence said again: the second copy is never spoken.
    (
        "Hi there. I can help with that. I can help with that. I can help with that.",
        ["Hi there.", "I can help with that."],
        REPETITION,
        "Hi there. I can help with that.",
    ),
    # A template said over and over with one word changed.
    (
        "You could have it with rice. You could have it with bread. You could have it with "
        "pasta. You could have it with salad.",
        ["You could have it with rice."],
        REPETITION,
        "You could have it with rice.",
    ),
    ("ha " * 30, [], REPETITION, ""),
    # Emoji floods: the issue's 80 flowers, alone or after a sentence.
    ("🌸" * 80, [], REPETITION, ""),
    ("Hello again! " + "🌸" * 80, ["Hello again!"], REPETITION, "Hello again!"),
    ("Hello friend! 🌸🌸 Nice day. 🌼", ["Hello friend!", "Nice day."], None, None),
    # Not loops: a list that repeats words, markdown steps, a short answer, other scripts.
    (
        LEGIT_LIST,
        [
            "You will need flour,",  # the first unit: cut at its first clause, for latency
            "sugar, butter and eggs.",
            "First, mix the flour and the sugar.",
            "Then add the butter.",
            "Then add the eggs.",
            "Then bake it for twenty minutes.",
            "Let it cool before you serve it.",
        ],
        None,
        None,
    ),
    (
        "Steps:\n1. Mix the flour.\n2. Add the eggs.\n3. Bake the cake.",
        ["Steps:", "Mix the flour.", "Add the eggs.", "Bake the cake."],
        None,
        None,
    ),
    ("Yes. Yes. Of course!", ["Yes.", "Yes.", "Of course!"], None, None),
    (
        "안녕하세요. 만나서 반갑습니다. 오늘은 날씨가 좋네요. 산책하기 좋은 날이에요.",
        ["안녕하세요.", "만나서 반갑습니다.", "오늘은 날씨가 좋네요.", "산책하기 좋은 날이에요."],
        None,
        None,
    ),
    (
        "좋아요. " + "정말 좋아요 " * 12,
        ["좋아요."],
        REPETITION,
        "좋아요.",
    ),
    (
        "我们可以一起去公园，我们可以一起去看电影。你觉得怎么样？",
        ["我们可以一起去公园，我们可以一起去看电影。", "你觉得怎么样？"],
        None,
        None,
    ),
    (
        "今日は晴れです。散歩に行きましょう。",
        ["今日は晴れです。", "散歩に行きましょう。"],
        None,
        None,
    ),
    ("好的。" + "哈" * 40, ["好的。"], REPETITION, "好的。"),
    # Code is not spoken (the speech filter drops it), and repeating code is no loop.
    (
        "Here it is:\n```\nx = 1\nx = 1\nx = 1\nx = 1\nx = 1\nx = 1\n```\nThat sets x.",
        ["Here it is:", "That sets x."],
        None,
        None,
    ),
]


def splits(text: str, seed: int) -> list[list[str]]:
    rng = random.Random(seed)
    pieces, at = [], 0
    while at < len(text):
        step = rng.randint(1, 12)
        pieces.append(text[at : at + step])
        at += step
    return [[text], list(text), pieces]


def run(pieces: list[str], gate: SpeechGate, *, cut: bool = False) -> list[str]:
    """Feed `pieces` the way the pipeline does; stop at `gate.stopped` as it does."""
    speech_filter = SpeechTextFilter()
    spoken: list[str] = []
    for piece in pieces:
        spoken += gate.feed(piece, speech_filter.feed(piece))
        if gate.stopped:
            return spoken + gate.cut(speech_filter.flush())
    rest = speech_filter.flush()
    return spoken + (gate.cut(rest) if cut else gate.finish(rest))


@pytest.mark.parametrize(("text", "units", "stopped", "kept"), CASES)
def test_gate_speaks_what_a_listener_should_hear(
    text: str, units: list[str], stopped: str | None, kept: str | None
) -> None:
    for pieces in splits(text, seed=len(text)):
        gate = SpeechGate()
        assert run(pieces, gate) == units, pieces[:3]
        assert gate.spoken == units
        assert gate.stopped == stopped
        assert gate.kept_text == kept


def test_without_the_guard_everything_is_spoken_as_before() -> None:
    gate = SpeechGate(guard=False)
    spoken = run([ISSUE_LOOP], gate)
    assert gate.stopped is None and gate.kept_text is None
    assert " ".join(spoken).endswith("but you could have")  # the loop, spoken to the end
    assert len(spoken) > 3


def test_a_limit_drops_the_unfinished_sentence_held_back_at_a_clause() -> None:
    # The second sentence is long: the segmenter cuts it at a comma after 100 characters; that
    # part waits for its sentence to end, and a limit that comes first drops it unspoken.
    text = (
        "Here is the plan. We start early in the morning and walk along the river, past the "
        "farms and the fields, to the old mill by the bridge, then we climb the hill behind the "
        "village"
    )
    for pieces in splits(text, seed=7):
        gate = SpeechGate()
        assert run(pieces, gate, cut=True) == ["Here is the plan."]
        assert gate.kept_text == "Here is the plan."
        gate = SpeechGate()
        assert run(pieces, gate)[-1] == "then we climb the hill behind the village"  # its end


def test_the_first_unit_is_never_held() -> None:
    gate = SpeechGate()
    assert gate.feed("Well, ", "Well, ") == []
    assert gate.feed("let me think about it. ", "let me think about it. ") == []
    assert gate.feed("And", "And") == ["Well, let me think about it."]


def test_the_speech_budget_ends_the_answer_after_a_whole_sentence() -> None:
    text = "One two three four five six. Seven eight nine ten eleven twelve. Thirteen fourteen."
    for pieces in splits(text, seed=3):
        gate = SpeechGate(max_speech_s=3.0)  # 6 words: 1.9 s; 12 words: 3.75 s
        spoken = run(pieces, gate)
        assert spoken == ["One two three four five six.", "Seven eight nine ten eleven twelve."]
        assert gate.stopped == MAX_SPEECH
        assert gate.kept_text == " ".join(spoken)
        assert gate.spoken_s >= 3.0


def test_the_budget_waits_for_the_end_of_a_sentence() -> None:
    text = "One two three four five six seven eight nine ten, eleven twelve thirteen. Fourteen."
    gate = SpeechGate(max_speech_s=1.0)
    # The first unit is cut at its comma (and spoken at once); the budget is spent, but the
    # answer ends only with its sentence.
    assert run([text], gate) == [
        "One two three four five six seven eight nine ten,",
        "eleven twelve thirteen.",
    ]


def test_an_answer_that_ends_by_itself_keeps_its_text() -> None:
    gate = SpeechGate(max_speech_s=100.0)
    assert run(["Short answer. Done."], gate) == ["Short answer.", "Done."]
    assert gate.stopped is None and gate.kept_text is None
    # The budget reached by the last words, with nothing after them: not cut either.
    gate = SpeechGate(max_speech_s=1.0)
    assert run(["One two three four five six."], gate) == ["One two three four five six."]
    assert gate.stopped is None and gate.kept_text is None


@pytest.mark.parametrize(
    ("text", "share"),
    [
        ("", 0.0),
        ("one two", 0.0),
        ("a b c a b c", 0.25),  # trigrams: abc bca cab abc -> one repeat of four
        (LEGIT_LIST, 1 / 34),  # "then add the", once
        ("我们可以我们可以", 0.0),  # CJK trigrams are not counted
    ],
)
def test_repeated_trigram_share(text: str, share: float) -> None:
    assert repeated_trigram_share(text) == pytest.approx(share)


def test_the_issue_loop_repeats_far_more_than_the_limit() -> None:
    assert repeated_trigram_share(ISSUE_LOOP) > 0.3


def test_words_and_speech_seconds() -> None:
    assert words("Don’t STOP, it's 3.14!") == ["don't", "stop", "it's", "3", "14"]
    assert words("我们走") == ["我", "们", "走"]
    assert speech_seconds(" ".join(["word"] * 16)) == pytest.approx(5.0)  # 3.2 words a second
    assert speech_seconds("我们走吧。") == pytest.approx(0.8)  # 5 characters a second
