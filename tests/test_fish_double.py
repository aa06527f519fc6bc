"""The Fish Speech test double itself answers as the real server does (FISH_SPEECH_API.md)."""

from __future__ import annotations

import io
import json
import wave

import httpx
import msgpack
import pytest

from .fish_double import FishDouble, pcm_for_text

MSGPACK = {"Content-Type": "application/msgpack"}


def _tts(client: httpx.Client, body: dict, **kwargs) -> httpx.Response:
    return client.post("/v1/tts", content=msgpack.packb(body), headers=MSGPACK, **kwargs)


@pytest.fixture
def client():
    with FishDouble(max_text_length=50) as fish, httpx.Client(base_url=fish.url) as http:
        yield http


def test_health_both_methods_and_unknown_paths(client: httpx.Client) -> None:
    assert client.get("/v1/health").json() == {"status": "ok"}
    assert client.post("/v1/health").json() == {"status": "ok"}
    assert client.get("/nope").status_code == 404
    assert client.get("/v1/tts").status_code == 405


def test_body_types_and_validation(client: httpx.Client) -> None:
    assert (
        client.post(
            "/v1/tts", content=b"text=hi", headers={"Content-Type": "text/plain"}
        ).status_code
        == 415
    )
    missing = _tts(client, {"format": "wav"})
    assert missing.status_code == 422
    assert missing.json()[0]["loc"] == ["body", "text"]
    assert _tts(client, {"text": "hi", "top_p": "0.5"}).status_code == 422
    assert (
        _tts(client, {"text": "x" * 51}).json()["message"] == "Text is too long, max length is 50"
    )
    bad_stream = _tts(client, {"text": "hi", "streaming": True, "format": "mp3"})
    assert bad_stream.status_code == 400
    assert bad_stream.json() == {
        "statusCode": 400,
        "message": "Streaming only supports WAV format",
        "error": "Bad Request",
    }
    ok_json = client.post(
        "/v1/tts",
        content=json.dumps({"text": "hi", "unknown": 1}),
        headers={"Content-Type": "application/json"},
    )
    assert ok_json.status_code == 200


def test_non_streaming_is_a_complete_wav_and_streaming_is_raw_pcm(client: httpx.Client) -> None:
    whole = _tts(client, {"text": "Hello."})
    assert whole.headers["content-type"] == "audio/wav"
    assert whole.headers["transfer-encoding"] == "chunked"
    with wave.open(io.BytesIO(whole.content)) as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (44100, 1, 2)
        assert wav.readframes(wav.getnframes()) == pcm_for_text("Hello.")
    streamed = _tts(client, {"text": "Hello.", "streaming": True})
    assert streamed.content == pcm_for_text("Hello.")


def test_auth_is_checked_before_the_body() -> None:
    with FishDouble(api_key="k") as fish, httpx.Client(base_url=fish.url) as http:
        missing = http.post("/v1/tts", content=b"garbage", headers=MSGPACK)
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"] == "Bearer"
        wrong = http.get("/v1/health", headers={"Authorization": "Bearer nope"})
        assert (wrong.status_code, wrong.json()["message"]) == (401, "Invalid token")
        good = http.get("/v1/health", headers={"Authorization": "Bearer k"})
        assert good.status_code == 200
        assert len([r for r in fish.requests if r.path == "/v1/tts"]) == 0  # body never parsed


def test_legacy_header_and_truncation() -> None:
    with FishDouble() as fish, httpx.Client(base_url=fish.url) as http:
        fish.legacy_wav_header = True
        legacy = _tts(http, {"text": "Hi.", "streaming": True}).content
        assert legacy[:4] == b"RIFF" and legacy[44:] == pcm_for_text("Hi.")
        fish.legacy_wav_header, fish.truncate_after_bytes = False, 100
        with pytest.raises(httpx.RemoteProtocolError):
            _tts(http, {"text": "Hi there.", "streaming": True})
