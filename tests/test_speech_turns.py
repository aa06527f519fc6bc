"""The turn rules (voicechat/speech/turns.py), fed plain probabilities: no audio, no model."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from voicechat.speech.listener import is_backchannel, is_echo
from voicechat.speech.turns import (
    PENDING,
    WINDOW_MS,
    Candidate,
    Held,
    Paused,
    Released,
    Resumed,
    Started,
    Stopped,
    TurnDetector,
    TurnRules,
)

SPEECH, SILENCE, BETWEEN = 0.9, 0.05, 0.4  # BETWEEN: under the start, over the end threshold


def windows(ms: int) -> int:
    return ms // WINDOW_MS


def run(detector: TurnDetector, *parts: tuple[float, int], guarded: bool = False) -> list:
    """Feed (probability, milliseconds) parts; return (time, event) pairs."""
    events = []
    for probability, ms in parts:
        for _ in range(windows(ms)):
            for event in detector.feed(probability, guarded=guarded):
                events.append((detector.now_ms, event))
    return events


def test_a_turn_starts_where_the_speech_began_and_ends_after_the_silence() -> None:
    detector = TurnDetector(TurnRules(silence_ms=640))
    events = run(detector, (SILENCE, 320), (SPEECH, 1600), (SILENCE, 1000))
    assert [e for _, e in events] == [Started(320), Paused(1920), Stopped(1920)]
    stopped_at = events[-1][0]
    assert stopped_at == 1920 + 640  # reported once the silence rule is met
    assert detector.state == "idle"


def test_one_window_of_speech_is_not_a_turn() -> None:
    detector = TurnDetector()
    assert run(detector, (SILENCE, 320), (SPEECH, 32), (SILENCE, 1000)) == []


def test_hysteresis_between_the_thresholds_is_still_speech() -> None:
    detector = TurnDetector(TurnRules(silence_ms=320))
    events = run(detector, (SPEECH, 320), (BETWEEN, 960), (SILENCE, 640))
    assert [e for _, e in events][-1] == Stopped(1280)


def test_a_pause_shorter_than_the_silence_rule_resumes_the_same_turn() -> None:
    detector = TurnDetector(TurnRules(silence_ms=640, pause_ms=160))
    events = [e for _, e in run(detector, (SPEECH, 640), (SILENCE, 320), (SPEECH, 640))]
    assert events == [Started(0), Paused(640), Resumed()]
    assert detector.state == "speaking"


def test_a_turn_at_the_limit_ends_there_truncated_and_the_rest_is_a_new_turn() -> None:
    detector = TurnDetector(TurnRules(max_turn_ms=3200))
    events = [e for _, e in run(detector, (SPEECH, 4000))]
    assert events == [Started(0), Stopped(3200, truncated=True), Started(3200)]


def test_over_a_playing_answer_a_short_sound_is_not_a_turn() -> None:
    detector = TurnDetector(TurnRules(barge_in_ms=500))
    events = run(detector, (SPEECH, 128), (SILENCE, 800), guarded=True)
    assert [e for _, e in events] == [Held(0), Released()]  # playback held, then resumed
    assert detector.state == "idle"


def test_over_a_playing_answer_a_commas_pause_does_not_release_the_hold() -> None:
    # "Wait, stop.": Piper says "Wait," in ~200 ms, then pauses ~300 ms. Released there, the
    # answer played on over "stop ..." (speech right after a resume is taken for its echo).
    detector = TurnDetector(TurnRules(barge_in_ms=512))
    events = run(detector, (SPEECH, 192), (SILENCE, 288), (SPEECH, 32), guarded=True)
    assert [e for _, e in events] == [Held(0), Candidate(0, 512)]


def test_over_a_playing_answer_long_speech_is_a_candidate_judged_by_the_caller() -> None:
    detector = TurnDetector(TurnRules(barge_in_ms=512))
    events = run(detector, (SILENCE, 64), (SPEECH, 512), guarded=True)
    assert [e for _, e in events] == [Held(64), Candidate(64, 576)]
    with pytest.raises(RuntimeError):
        detector.feed(SPEECH, guarded=True)  # a decision is owed first
    assert detector.accept() == [Started(64)]
    assert detector.state == "speaking"


def test_rejected_speech_is_ignored_then_judged_again_while_it_goes_on() -> None:
    detector = TurnDetector(TurnRules(barge_in_ms=512, echo_recheck_ms=1024))
    run(detector, (SPEECH, 512), guarded=True)
    detector.reject()
    events = [e for _, e in run(detector, (SPEECH, 1024), guarded=True)]
    assert events == [Candidate(0, 1536)]  # judged again on all of it (up to the last 3 s)
    for at_ms in (2560, 3584):  # judged at each, on up to the last 3 s
        detector.reject()
        events = [e for _, e in run(detector, (SPEECH, 1024), guarded=True)]
        assert events == [Candidate(max(0, at_ms - 3000), at_ms)]
    detector.reject()
    assert run(detector, (SILENCE, 320), guarded=True) == []
    assert detector.state == "idle"


def test_when_the_answer_stops_playing_held_speech_becomes_a_turn() -> None:
    detector = TurnDetector(TurnRules(barge_in_ms=1000))
    run(detector, (SPEECH, 320), guarded=True)
    assert detector.feed(SPEECH, guarded=False) == [Started(0)]


def test_commit_ends_a_turn_at_once_and_does_nothing_when_idle() -> None:
    detector = TurnDetector()
    assert detector.end_now() is None
    run(detector, (SPEECH, 320))
    assert detector.end_now() == Stopped(320)
    assert detector.state == "idle"


@given(st.lists(st.floats(min_value=0, max_value=1), max_size=400), st.booleans())
def test_turns_are_well_formed_for_any_probabilities(probabilities: list[float], guarded: bool):
    """Started and Stopped alternate, times never go backwards, a turn ends after it began."""
    detector = TurnDetector(TurnRules(max_turn_ms=2000))
    open_turn: int | None = None
    for probability in probabilities:
        events = detector.feed(probability, guarded=guarded)
        if any(isinstance(e, Candidate) for e in events):
            events += detector.accept()
        for event in events:
            if isinstance(event, Started):
                assert open_turn is None
                assert event.start_ms <= detector.now_ms
                open_turn = event.start_ms
            elif isinstance(event, Stopped):
                assert open_turn is not None and open_turn <= event.end_ms <= detector.now_ms
                open_turn = None
            elif isinstance(event, Paused | Resumed):
                assert open_turn is not None


@pytest.mark.parametrize(
    ("heard", "answer", "echo"),
    [
        ("the capital of France is Paris", "The capital of France is Paris. It is big.", True),
        ("France is Paris", "The capital of France is Paris.", True),
        ("stop, wait a moment", "The capital of France is Paris.", False),
        ("what about Germany", "The capital of France is Paris.", False),
        ("", "The capital of France is Paris.", True),
    ],
)
def test_echo_is_speech_made_of_the_answers_own_words(heard: str, answer: str, echo: bool):
    assert is_echo(heard, answer) is echo


# --- the semantic rule: a verdict on each pause sets how much silence ends the turn ------------

SEMANTIC = TurnRules(semantic=True, silence_ms=640, complete_ms=256, incomplete_ms=2496)


@pytest.mark.parametrize(
    ("verdict", "judged_after_ms", "ends_after_ms"),
    [
        (True, 320, 320),  # a finished thought judged late: the turn ends at the verdict
        (True, 160, 256),  # judged early: the turn ends after complete_ms of silence
        (False, 320, 2496),  # unfinished: the most a pause may last
        (None, 320, 640),  # cannot judge (another language): the silence rule
        (PENDING, 320, 2496),  # never judged (the recognizer is busy): the most, then it ends
    ],
)
def test_a_pause_ends_the_turn_after_the_silence_its_verdict_sets(
    verdict: bool | str | None, judged_after_ms: int, ends_after_ms: int
) -> None:
    detector = TurnDetector(SEMANTIC)
    events = [e for _, e in run(detector, (SPEECH, 640), (SILENCE, judged_after_ms))]
    assert events == [Started(0), Paused(640)]
    if verdict != PENDING:
        events = detector.judge(640, verdict)  # type: ignore[arg-type]
        if ends_after_ms <= judged_after_ms:
            assert events == [Stopped(640)]
            return
        assert events == []
    stopped = [(at, e) for at, e in run(detector, (SILENCE, 3200)) if isinstance(e, Stopped)]
    assert stopped[0][1] == Stopped(640)
    assert stopped[0][0] == 640 + ends_after_ms


def test_a_verdict_on_a_pause_the_speech_resumed_from_is_ignored() -> None:
    detector = TurnDetector(SEMANTIC)
    run(detector, (SPEECH, 640), (SILENCE, 320), (SPEECH, 640), (SILENCE, 320))
    assert detector.judge(640, True) == []  # the first pause: stale
    assert detector.wait_ms() == 2496  # the second pause has no verdict yet
    assert detector.judge(1600, True) == [Stopped(1600)]


def test_an_unfinished_thought_keeps_the_turn_through_a_long_pause() -> None:
    """ "I need a name for my new ... (1.2 s) puppy": one turn, not two."""
    detector = TurnDetector(SEMANTIC)
    run(detector, (SPEECH, 1600), (SILENCE, 320))
    assert detector.judge(1600, False) == []
    events = [e for _, e in run(detector, (SILENCE, 896), (SPEECH, 640), (SILENCE, 320))]
    assert events == [Resumed(), Paused(3456)]
    assert detector.judge(3456, True) == [Stopped(3456)]


@pytest.mark.parametrize(
    ("heard_text", "backchannel"),
    [
        ("Yeah.", True),
        ("Mm-hmm.", True),
        ("MMMM.", True),  # how Whisper spells Piper's "Mm-hmm.", as often as not
        ("NMM", True),
        ("N.M.", True),
        ("Mhmm, okay.", True),
        ("Hmmm, wait.", False),
        ("Uh-huh.", True),
        ("Okay, right.", True),
        ("I see.", True),
        ("네.", True),
        ("Yeah, but what about dogs?", False),
        ("Okay stop.", False),
        ("Wait.", False),
        ("", False),  # no words: a noise (judged apart)
        ("Yeah yeah yeah okay right.", False),  # five words: more than an acknowledgement
    ],
)
def test_a_backchannel_is_a_few_acknowledging_words(heard_text: str, backchannel: bool) -> None:
    assert is_backchannel(heard_text) is backchannel
