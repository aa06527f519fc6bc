"""The conversation-feel evaluation set (issue 22): what scripts/bench_conversation.py says to
the server, kept here so tests can use the same cases.

- CUTOFFS: a thought said in two parts with a pause between them; the first part alone is
  unfinished (the server should wait for the rest).
- BACKCHANNELS: acknowledgements said over a playing answer (it should play on).
- LONG_QUESTIONS: questions whose answers run long enough to talk over.
- INTERRUPTIONS: a real interruption said over a playing answer (it should stop).
"""

from __future__ import annotations

# (first part, unfinished; second part, which completes it). Spoken as two clips, so each part
# ends with the falling pitch of a clip's end: harder than a real hesitation, which keeps the pitch
# up. The sentences avoid words Whisper tiny.en often mishears in Piper's or espeak's voice.
CUTOFFS: list[tuple[str, str]] = [
    ("I need a name for my new", "puppy."),
    ("What is the capital of", "Australia?"),
    ("Can you tell me how to make", "pancakes?"),
    ("I was wondering if you could", "help me plan a trip."),
    ("How many days are there in", "a leap year?"),
    ("Tell me something interesting about", "octopuses."),
    ("What should I cook for dinner with", "chicken and rice?"),
    ("Could you recommend a good movie for", "a rainy evening?"),
    ("I'm trying to decide between", "a cat and a dog."),
    ("My favorite kind of music is", "jazz. What should I listen to?"),
]

BACKCHANNELS: list[str] = [
    "Yeah.",
    "Okay.",
    "Mm-hmm.",
    "Uh-huh.",
    "Right.",
    "I see.",
    "Okay, right.",
]

LONG_QUESTIONS: list[str] = [
    "Tell me a long story about a dragon.",
    "Explain how a car engine works in detail.",
]

INTERRUPTIONS: list[str] = [
    "Wait, stop. Tell me about dogs instead.",
]
