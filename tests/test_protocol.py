"""The protocol codec, without sockets: every frame either parses or raises ProtocolError."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voicechat import protocol
from voicechat.protocol import CancelResponse, ProtocolError, UserMessage, parse_client_message

LIMIT = 50


def test_a_user_message_parses_with_and_without_id() -> None:
    assert parse_client_message('{"type":"user.message","text":"hi"}', max_text_chars=LIMIT) == (
        UserMessage(text="hi", id=None)
    )
    frame = '{"type":"user.message","text":"hi","id":"a1","extra":1}'
    assert parse_client_message(frame, max_text_chars=LIMIT) == UserMessage(text="hi", id="a1")


def test_cancel_parses() -> None:
    assert parse_client_message('{"type":"response.cancel"}', max_text_chars=LIMIT) == (
        CancelResponse()
    )


def test_text_at_the_limit_is_accepted_and_one_more_character_is_too_large() -> None:
    at_limit = json.dumps({"type": "user.message", "text": "x" * LIMIT})
    assert isinstance(parse_client_message(at_limit, max_text_chars=LIMIT), UserMessage)
    with pytest.raises(ProtocolError) as error:
        parse_client_message(at_limit.replace('x"', 'xx"'), max_text_chars=LIMIT)
    assert error.value.code == protocol.TOO_LARGE


def test_deeply_nested_json_is_bad_json_not_a_crash() -> None:
    with pytest.raises(ProtocolError) as error:
        parse_client_message("[" * 100_000 + "]" * 100_000, max_text_chars=LIMIT)
    assert error.value.code in {protocol.BAD_JSON, protocol.BAD_MESSAGE}


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(["type", "text", "id", "x"]), children, max_size=4)
    ),
    max_leaves=12,
)
_frames = (
    st.text(max_size=80)
    | st.binary(max_size=80)
    | _json.map(json.dumps)
    | st.fixed_dictionaries(
        {"type": st.sampled_from(["user.message", "response.cancel", "x"])},
        optional={"text": _json, "id": _json},
    ).map(json.dumps)
)


@settings(max_examples=2000, deadline=None)
@given(frame=_frames)
def test_any_frame_parses_or_raises_a_protocol_error_with_a_known_code(frame: str | bytes) -> None:
    try:
        message = parse_client_message(frame, max_text_chars=LIMIT)
    except ProtocolError as error:
        assert error.code in {
            protocol.BAD_JSON,
            protocol.BAD_MESSAGE,
            protocol.UNKNOWN_TYPE,
            protocol.TOO_LARGE,
        }
        assert error.message
    else:
        assert isinstance(message, UserMessage | CancelResponse)
        if isinstance(message, UserMessage):
            assert message.text.strip() and len(message.text) <= LIMIT


def test_server_frames_are_compact_json() -> None:
    frame = protocol.encode(protocol.text_delta("r1", "안녕"))
    assert frame == '{"type":"text.delta","response_id":"r1","text":"안녕"}'


def test_an_audio_chunk_frame_is_the_same_json_as_the_slow_path() -> None:
    import base64

    chunk = protocol.audio_chunk(
        "r1", seq=3, segment=1, text="Hé \"q\"", sample_rate=22050, samples=2,
        audio_b64=base64.b64encode(bytes(range(256))).decode(),
    )  # fmt: skip
    frame = protocol.encode(chunk)
    assert json.loads(frame) == chunk
    assert frame.startswith('{"type":"audio.chunk",')
