"""The browser client's files as the server hands them out, and who may open the WebSocket.

Raw HTTP on a real loopback server: paths go on the wire exactly as written (an HTTP library
would normalise `..` before sending it).
"""

from __future__ import annotations

import asyncio

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from voicechat.server import origin_allowed
from voicechat.web import STATIC_DIR

from .conftest import running_server, scripted_backend
from .test_protocol_edges import http_exchange, read_to_eof, req

SCRIPT = ["Hello."]


async def raw_response(server: object, request: str) -> bytes:
    """The response's bytes as they came: headers as sent, duplicates included."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)  # type: ignore[attr-defined]
    try:
        writer.write(request.encode("ascii"))
        return await read_to_eof(reader)
    finally:
        writer.close()


async def test_the_page_is_served_at_the_root_with_a_strict_policy() -> None:
    async with running_server(scripted_backend(SCRIPT)) as server:
        status, headers, body = await http_exchange(server, req("GET", "/"))
        assert status == 200
        raw = await raw_response(server, req("GET", "/"))
        assert raw.lower().count(b"\r\ncontent-length:") == 1  # browsers refuse two
        assert body == (STATIC_DIR / "index.html").read_bytes()
        assert headers["content-type"] == "text/html; charset=utf-8"
        assert headers["cache-control"] == "no-cache" and headers["etag"]
        assert headers["x-content-type-options"] == "nosniff"
        policy = headers["content-security-policy"]
        assert "default-src 'none'" in policy and "script-src 'self'" in policy
        assert "frame-ancestors 'none'" in policy and "unsafe" not in policy
        # The page may open a WebSocket to the host it came from, and nowhere else.
        assert "connect-src 'self' ws://127.0.0.1 wss://127.0.0.1" in policy


@pytest.mark.parametrize(
    ("suffix", "content_type"),
    [
        (".html", "text/html; charset=utf-8"),
        (".js", "text/javascript; charset=utf-8"),
        (".css", "text/css; charset=utf-8"),
    ],
)
async def test_every_shipped_file_has_its_content_type(suffix: str, content_type: str) -> None:
    files = sorted(STATIC_DIR.glob(f"*{suffix}"))
    assert files, f"the package ships no {suffix} file"
    async with running_server(scripted_backend(SCRIPT)) as server:
        for file in files:
            status, headers, body = await http_exchange(server, req("GET", f"/{file.name}"))
            assert (status, headers["content-type"]) == (200, content_type), file.name
            assert body == file.read_bytes()
            assert "content-security-policy" in headers


async def test_an_unchanged_file_is_revalidated_with_304() -> None:
    async with running_server(scripted_backend(SCRIPT)) as server:
        _, headers, _ = await http_exchange(server, req("GET", "/"))
        etag = headers["etag"]
        status, again, body = await http_exchange(
            server, req("GET", "/", f"If-None-Match: {etag}\r\n")
        )
        assert (status, body, again["etag"]) == (304, b"", etag)
        status, _, body = await http_exchange(server, req("GET", "/", 'If-None-Match: "stale"\r\n'))
        assert status == 200 and body


@pytest.mark.parametrize(
    "path",
    [
        "/../pyproject.toml",
        "/..%2fpyproject.toml",
        "/%2e%2e/%2e%2e/pyproject.toml",
        "/%2E%2E%2F__init__.py",
        "/static/../index.html",
        "/./index.html",
        "//index.html",
        "/index.html/",
        "/index.html%00",
        "/__init__.py",  # beside the static folder, not in it
        "/static/index.html",
        "/etc/passwd",
        "/%2fetc%2fpasswd",
        "/....//....//etc/passwd",
        "/.%2e/.%2e/etc/passwd",
        "/index.html\\..\\..\\pyproject.toml",
    ],
)
async def test_paths_outside_the_static_folder_are_404(path: str) -> None:
    async with running_server(scripted_backend(SCRIPT)) as server:
        status, _, body = await http_exchange(server, req("GET", path))
        assert status == 404, path
        assert b"[project]" not in body and b"root:" not in body


async def test_the_page_answers_get_and_head_only() -> None:
    async with running_server(scripted_backend(SCRIPT)) as server:
        status, headers, body = await http_exchange(server, req("HEAD", "/"))
        assert status == 200 and body == b"" and int(headers["content-length"]) > 0
        status, headers, _ = await http_exchange(server, req("POST", "/", "Content-Length: 0\r\n"))
        assert (status, headers.get("allow")) == (405, "GET, HEAD")


@pytest.mark.parametrize(
    ("origin", "host", "allowed", "expected"),
    [
        (None, "127.0.0.1:8765", (), True),  # not a browser
        ("http://127.0.0.1:8765", "127.0.0.1:8765", (), True),  # the page's own origin
        ("http://localhost:8765", "localhost:8765", (), True),
        ("http://[::1]:8765", "[::1]:8765", (), True),
        ("https://10.0.0.5:8765", "10.0.0.5:8765", (), True),  # behind a TLS proxy
        ("http://127.0.0.1:9999", "127.0.0.1:8765", (), False),  # another port: another origin
        ("http://evil.example", "127.0.0.1:8765", (), False),
        ("http://evil.example:8765", "evil.example:8765", (), False),  # DNS rebinding
        ("http://mybox.lan:8765", "mybox.lan:8765", ("http://mybox.lan:8765",), True),
        ("http://evil.example", "127.0.0.1:8765", ("http://good.example",), False),
        ("null", "127.0.0.1:8765", (), False),  # a sandboxed or file: page
        ("http://127.0.0.1:8765", None, (), False),
    ],
)
def test_which_origins_may_connect(
    origin: str | None, host: str | None, allowed: tuple[str, ...], expected: bool
) -> None:
    assert origin_allowed(origin, host, allowed) is expected


async def test_the_page_origin_connects_and_a_foreign_one_gets_403() -> None:
    async with running_server(scripted_backend(SCRIPT)) as server:
        own = f"http://127.0.0.1:{server.port}"
        async with connect(server.url, origin=own) as ws:  # type: ignore[arg-type]
            assert "session.created" in str(await ws.recv())
        with pytest.raises(InvalidStatus) as refused:
            async with connect(server.url, origin="http://evil.example"):  # type: ignore[arg-type]
                pass
        assert refused.value.response.status_code == 403
        assert b"--allow-origin http://evil.example" in refused.value.response.body
        assert server.health()["disconnected"]["origin"] == 1


def test_every_module_and_worklet_the_page_loads_is_shipped() -> None:
    """The page's import graph (ES imports, modulepreload links, worklet modules) names only
    files the server hands out: a renamed or missing file would break the page, or the
    microphone, only in a browser."""
    import re

    from voicechat.web import load_static_files

    served = load_static_files()
    references: dict[str, set[str]] = {}
    for path in STATIC_DIR.glob("*.js"):
        text = path.read_text()
        names = set(re.findall(r'^import .* from "\./([\w.-]+)";$', text, re.M))
        names |= set(re.findall(r'addModule\("([\w.-]+)"\)', text))
        references[path.name] = names
    html = (STATIC_DIR / "index.html").read_text()
    references["index.html"] = set(re.findall(r'(?:src|href)="([\w.-]+\.(?:js|css|svg))"', html))
    assert "mic-worklet.js" in references["mic.js"]
    assert "mic.js" in references["app.js"] and "mic.js" in references["index.html"]
    for source, names in references.items():
        for name in names:
            assert f"/{name}" in served, f"{source} loads {name}, which is not served"
            assert (STATIC_DIR / name).is_file()


WS_UPGRADE = (
    "Upgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
)


@pytest.mark.parametrize("path", ["/", "/app.js", "/healthz", "/metrics", "/v1/chat/stream"])
async def test_several_host_headers_get_400_with_one_log_line(
    path: str, caplog: pytest.LogCaptureFixture
) -> None:
    """RFC 9112: more than one Host is a 400. The Origin check and the page's policy read Host,
    and which of two a proxy used is a guess (it was an HTTP 500 and a traceback)."""
    async with running_server(scripted_backend(SCRIPT)) as server:
        upgrade = WS_UPGRADE if path == "/v1/chat/stream" else ""
        request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: evil.example\r\n{upgrade}\r\n"
        status, _, body = await http_exchange(server, request)
        assert (status, body) == (400, b"several Host headers\n")
        assert server.health()["disconnected"]["bad_request"] == 1
        assert server.sessions == set()
    refusals = [r for r in caplog.records if "several Host headers" in r.getMessage()]
    assert len(refusals) == 1 and refusals[0].exc_info is None
    assert not [r for r in caplog.records if r.exc_info]  # no traceback anywhere


async def test_several_origin_headers_on_the_chat_path_get_403_counted_as_origin(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with running_server(scripted_backend(SCRIPT)) as server:
        own = f"http://127.0.0.1:{server.port}"
        request = req("GET", "/v1/chat/stream", f"Origin: {own}\r\nOrigin: {own}\r\n{WS_UPGRADE}")
        status, _, body = await http_exchange(server, request)
        assert (status, body) == (403, b"several Origin headers\n")
        assert server.health()["disconnected"]["origin"] == 1
        # A page's own files do not read Origin: several of them change nothing there.
        status, _, _ = await http_exchange(server, req("GET", "/", "Origin: a\r\nOrigin: b\r\n"))
        assert status == 200
    refusals = [r for r in caplog.records if "several Origin headers" in r.getMessage()]
    assert len(refusals) == 1 and not [r for r in caplog.records if r.exc_info]


async def test_if_none_match_over_several_header_lines_is_one_list() -> None:
    """If-None-Match is a list (RFC 9110), which a client or proxy may split over several
    lines: any entity tag in any line that names the file is a 304 (weak comparison); none, a
    200 with the file. Neither is an error (a duplicate was an HTTP 500)."""
    async with running_server(scripted_backend(SCRIPT)) as server:
        _, headers, _ = await http_exchange(server, req("GET", "/"))
        etag = headers["etag"]
        for lines in (
            f'If-None-Match: "other"\r\nIf-None-Match: {etag}\r\n',
            f'If-None-Match: "a", "b"\r\nIf-None-Match: W/{etag}\r\n',
            'If-None-Match: "a"\r\nIf-None-Match: *\r\n',
        ):
            status, headers, body = await http_exchange(server, req("GET", "/", lines))
            assert (status, body, headers["etag"]) == (304, b"", etag), lines
        lines = 'If-None-Match: "a"\r\nIf-None-Match: "b"\r\n'
        status, _, body = await http_exchange(server, req("GET", "/", lines))
        assert status == 200 and body == (STATIC_DIR / "index.html").read_bytes()
